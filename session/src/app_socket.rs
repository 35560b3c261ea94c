//! The app socket: where external app processes attach.
//!
//! One Unix stream socket per app namespace (mode 0600 by default; the
//! namespace secret is still required). A connection carries, in the
//! `app_wire` format: attach, detach, add worker, delete worker, and their
//! replies with the fds the app must map (segments, eventfds) as
//! SCM_RIGHTS; later, unsolicited, the fds of segments added to the app's
//! workers. Everything else — listen, unlisten, connect, disconnect, and
//! all io notifications — travels through the app's rx queues in shared
//! memory; this server serves the queue of the main thread, running each
//! control message on the main thread and answering on the worker's event
//! queue. An app the stack gave no private rx queues (`private_rx_queues`
//! off) sends those same messages over this socket instead
//! ([`AppRequest::Post`]), one system call each.
//!
//! A garbage, truncated, oversized or out-of-order message gets an error
//! reply and the connection is closed; other apps never notice. A client
//! whose socket closes — exit, crash, `kill -9` — is detached: its workers,
//! listeners, sessions and segments are freed.

use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::app_socket_outbox::AppSocketOutbox;
use crate::application::PeerCred;
use crate::control::ControlPlane;
use crate::stalled_queues::{StallCheck, StalledQueues};
use hoststack_app_proto::app_event::AppEvent;
use hoststack_app_proto::app_rx_queue::{AppRxQueue, ControlMessage, RxMessage};
use hoststack_app_proto::app_wire::{AppReply, AppRequest, FrameReader, encode_reply};
use hoststack_app_proto::error::ErrorCode;
use hoststack_app_proto::error::{SessionError, SessionResult};
use hoststack_app_proto::handle::{AppIndex, ListenerHandle, SessionHandle, WorkerMapIndex};
use hoststack_app_proto::options::AppOptions;
use hoststack_shm::ShmError;
use hoststack_shm::fd_passing::{recv_with_fds, send_with_fds};
use hoststack_shm::message_queue::HeadState;

/// Settings of one app socket.
#[derive(Debug, Clone)]
pub struct AppSocketConfig {
    /// Where the socket lives.
    pub path: PathBuf,
    /// The app namespace it serves ("" or "default" for the default).
    pub namespace: String,
    /// File mode of the socket.
    pub mode: u32,
    /// Owner (uid) to give the socket file; `None` keeps the daemon's.
    pub owner: Option<u32>,
    /// Group (gid) to give the socket file; `None` keeps the daemon's.
    pub group: Option<u32>,
}

impl AppSocketConfig {
    /// The default namespace's socket at `path`, mode 0600.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            namespace: String::new(),
            mode: 0o600,
            owner: None,
            group: None,
        }
    }
}

/// Api client indices are unique across every app socket of the process.
static NEXT_CLIENT: AtomicU32 = AtomicU32::new(1);

/// Control messages taken from one app's main queue per round.
const CONTROL_BATCH: usize = 64;

/// How long an idle server sleeps: everything that needs it (a connection,
/// a client's bytes, a main queue's eventfd, the outbox) wakes it earlier;
/// the tick only bounds how late it sees a stop or a stalled main queue.
const IDLE_TICK: Duration = Duration::from_millis(100);

/// How long a listen waits for the stack threads to open the transport
/// listener before it is undone and refused: they run the command within
/// a loop iteration, so only a stuck thread takes this long.
const LISTEN_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// A running app socket.
#[derive(Debug)]
pub struct AppSocketServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Client {
    id: u32,
    stream: UnixStream,
    reader: FrameReader,
    app: Option<AppIndex>,
    main_queue: Option<AppRxQueue>,
    closed: bool,
    /// The connecting process (SO_PEERCRED, as of its connect).
    peer: Option<PeerCred>,
}

impl AppSocketServer {
    /// Binds the socket and starts serving it on its own thread. A socket
    /// file left by a dead server is replaced; a live one is an error.
    pub fn start(cfg: AppSocketConfig, control: ControlPlane) -> SessionResult<Self> {
        if cfg.path.exists() {
            if UnixStream::connect(&cfg.path).is_ok() {
                return Err(SessionError::InvalidValue(format!(
                    "{} is in use by another hoststack (stop it, or pick another app socket path)",
                    cfg.path.display()
                )));
            }
            std::fs::remove_file(&cfg.path)
                .map_err(|e| SessionError::os("removing a stale app socket", &e))?;
        }
        if let Some(dir) = cfg.path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| SessionError::os("creating the app socket directory", &e))?;
            }
        }
        let listener = UnixListener::bind(&cfg.path)
            .map_err(|e| SessionError::os("binding the app socket", &e))?;
        if cfg.owner.is_some() || cfg.group.is_some() {
            std::os::unix::fs::chown(&cfg.path, cfg.owner, cfg.group)
                .map_err(|e| SessionError::os("setting the app socket's owner and group", &e))?;
        }
        std::fs::set_permissions(&cfg.path, std::fs::Permissions::from_mode(cfg.mode))
            .map_err(|e| SessionError::os("setting the app socket's mode", &e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| SessionError::os("app socket", &e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let namespace = cfg.namespace.clone();
        let thread = std::thread::Builder::new()
            .name("hs-app-socket".into())
            .spawn(move || serve(listener, namespace, control, st))
            .map_err(|e| SessionError::os("spawning the app socket thread", &e))?;
        info!(path = %cfg.path.display(), "app socket listening");
        Ok(Self {
            path: cfg.path,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving: every attached client is detached, the socket file
    /// removed.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for AppSocketServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn serve(listener: UnixListener, namespace: String, control: ControlPlane, stop: Arc<AtomicBool>) {
    let mut clients: Vec<Client> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let outbox = match control.call(|l| l.outbox()) {
        Ok(o) => o,
        Err(e) => {
            warn!("app socket: no control plane: {e}");
            return;
        }
    };
    let outbox_wake = outbox.subscribe();
    let mut stalled = StalledQueues::default();
    while !stop.load(Ordering::SeqCst) {
        // Apps write a main queue's eventfd only while we announce a sleep.
        let idle = clients
            .iter()
            .all(|c| c.main_queue.as_ref().is_none_or(|q| q.empty_before_sleep()));
        let timeout = if idle { IDLE_TICK } else { Duration::ZERO };
        let ready = wait(&listener, &clients, outbox_wake.fd(), timeout);
        for c in &clients {
            if let Some(q) = &c.main_queue {
                q.awake();
            }
        }
        if ready.0 {
            accept_all(&listener, &mut clients);
        }
        for (i, c) in clients.iter_mut().enumerate() {
            if ready.1.get(i).copied().unwrap_or(false) {
                read_client(c, &namespace, &control, &mut buf);
            }
            if !c.closed {
                serve_main_queue(c, &control, &mut stalled);
            }
        }
        outbox_wake.drain();
        send_segment_fds(&mut clients, &outbox);
        for id in outbox.take_closing(|id| clients.iter().any(|c| c.id == id)) {
            if let Some(c) = clients.iter_mut().find(|c| c.id == id) {
                info!(
                    client = id,
                    "closing the connection of an app the stack detached"
                );
                c.closed = true;
            }
        }
        clients.retain_mut(|c| {
            if c.closed {
                drop_client(c, &control);
                outbox.forget_client(c.id);
                stalled.forget(c.id);
                false
            } else {
                true
            }
        });
    }
    for c in &mut clients {
        drop_client(c, &control);
    }
}

/// Waits for the listener, a client socket or a main queue; returns
/// (listener ready, per-client ready).
fn wait(
    listener: &UnixListener,
    clients: &[Client],
    outbox: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> (bool, Vec<bool>) {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(1 + 2 * clients.len());
    fds.push(PollFd::new(listener, PollFlags::IN));
    for c in clients {
        fds.push(PollFd::new(&c.stream, PollFlags::IN));
    }
    for c in clients {
        if let Some(q) = &c.main_queue {
            fds.push(PollFd::new(q.eventfd(), PollFlags::IN));
        }
    }
    // Segment fds to send wake the server; they are looked for every turn.
    if let Some(fd) = &outbox {
        fds.push(PollFd::new(fd, PollFlags::IN));
    }
    let ts = Timespec {
        tv_sec: 0,
        tv_nsec: timeout.as_nanos() as i64,
    };
    if rustix::event::poll(&mut fds, Some(&ts)).is_err() {
        return (false, vec![false; clients.len()]);
    }
    let any = |f: &PollFd<'_>| !f.revents().is_empty();
    let listener_ready = any(&fds[0]);
    let per_client = (0..clients.len()).map(|i| any(&fds[1 + i])).collect();
    (listener_ready, per_client)
}

fn accept_all(listener: &UnixListener, clients: &mut Vec<Client>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let id = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
                let peer = rustix::net::sockopt::socket_peercred(&stream)
                    .ok()
                    .map(|c| PeerCred {
                        pid: c.pid.as_raw_nonzero().get() as u32,
                        uid: c.uid.as_raw(),
                        gid: c.gid.as_raw(),
                    });
                debug!(client = id, ?peer, "app connected");
                clients.push(Client {
                    id,
                    stream,
                    reader: FrameReader::new(),
                    app: None,
                    main_queue: None,
                    closed: false,
                    peer,
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => {
                warn!("app socket accept: {e}");
                return;
            }
        }
    }
}

fn reply(c: &mut Client, id: u32, r: &AppReply, fds: &[OwnedFd]) {
    let bytes = encode_reply(id, r);
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    if let Err(e) = send_with_fds(&c.stream, &bytes, &borrowed) {
        debug!(client = c.id, "reply failed, closing: {e}");
        c.closed = true;
    }
}

fn read_client(c: &mut Client, namespace: &str, control: &ControlPlane, buf: &mut [u8]) {
    let mut fds = Vec::new();
    loop {
        match recv_with_fds(&c.stream, buf, &mut fds) {
            Ok(0) => {
                c.closed = true;
                return;
            }
            Ok(n) => c.reader.push(&buf[..n]),
            Err(ShmError::Os {
                kind: ErrorKind::WouldBlock,
                ..
            }) => break,
            Err(e) => {
                debug!(client = c.id, "app socket read: {e}");
                c.closed = true;
                return;
            }
        }
        // Apps send no fds; whatever came is closed here.
        fds.clear();
        loop {
            match c.reader.next_request() {
                Ok(Some((id, req))) => handle_request(c, id, req, namespace, control),
                Ok(None) => break,
                Err(e) => {
                    crate::warn_limited!(
                        "bad message on the app socket",
                        client = c.id,
                        "bad message on the app socket, closing: {e}"
                    );
                    let id = c.reader.failed_request_id().unwrap_or(0);
                    reply(c, id, &AppReply::from_error(&e), &[]);
                    c.closed = true;
                    return;
                }
            }
            if c.closed {
                return;
            }
        }
    }
}

fn handle_request(
    c: &mut Client,
    id: u32,
    req: AppRequest,
    namespace: &str,
    control: &ControlPlane,
) {
    let result = match (req, c.app) {
        (AppRequest::Attach { name, options }, None) => {
            attach(c, &name, options, namespace, control)
        }
        (AppRequest::Join { app, token }, None) => join(c, AppIndex(app), token, control),
        (AppRequest::Attach { .. } | AppRequest::Join { .. }, Some(_)) => Err(
            SessionError::AlreadyAttached("this connection already attached an app".into()),
        ),
        (_, None) => Err(SessionError::InvalidValue("attach first".into())),
        (AppRequest::Detach, Some(app)) => control.detach(app).map(|()| {
            c.app = None;
            c.main_queue = None;
            (AppReply::Done, Vec::new())
        }),
        (AppRequest::AddWorker, Some(app)) => {
            let client = c.id;
            control.add_worker(app, Some(client)).and_then(|m| {
                let (info, fds) = control.call(move |l| {
                    let wi = l.app_worker_of(app, m)?;
                    l.worker_info(wi)
                })??;
                Ok((AppReply::WorkerAdded(info), fds))
            })
        }
        (AppRequest::DelWorker { worker }, Some(app)) => control
            .del_worker(app, WorkerMapIndex(worker))
            .map(|()| (AppReply::Done, Vec::new())),
        (AppRequest::ShareToken, Some(app)) => control
            .call(move |l| l.app(app).map(|a| a.share_token))
            .and_then(|t| t)
            .map(|token| (AppReply::ShareToken { token }, Vec::new())),
        (AppRequest::Post { thread, message }, Some(app)) => {
            // Never answered, like a message on a queue.
            post(app, thread, message, control);
            return;
        }
    };
    match result {
        Ok((r, fds)) => reply(c, id, &r, &fds),
        Err(e) => reply(c, id, &AppReply::from_error(&e), &[]),
    }
}

fn attach(
    c: &mut Client,
    name: &str,
    mut options: AppOptions,
    socket_namespace: &str,
    control: &ControlPlane,
) -> SessionResult<(AppReply, Vec<OwnedFd>)> {
    let same = |a: &str, b: &str| {
        a == b || (a.is_empty() || a == "default") && (b.is_empty() || b == "default")
    };
    if options.namespace_id.is_empty() {
        options.namespace_id = socket_namespace.to_owned();
    }
    if !same(&options.namespace_id, socket_namespace) {
        return Err(SessionError::InvalidNamespace(format!(
            "{} (this app socket serves namespace '{socket_namespace}')",
            options.namespace_id
        )));
    }
    let r = control.attach_external(c.id, name, options)?;
    let (app, wi) = (r.app, r.worker);
    let peer = c.peer;
    let (info, fds, main) = control.call(move |l| {
        if let Some(p) = peer {
            l.set_peer(app, p);
        }
        let (info, fds) = l.attach_info(app, wi)?;
        Ok::<_, SessionError>((info, fds, l.take_main_queue(app)))
    })??;
    c.app = Some(app);
    c.main_queue = main;
    debug!(client = c.id, app = app.0, "external app attached");
    Ok((AppReply::Attached(info), fds))
}

/// A forked child of an app process joins its app: one more worker, owned
/// by this connection (so it goes when the child does), and the same
/// attach reply an attach gets. The app's main queue stays with the
/// connection that attached.
fn join(
    c: &mut Client,
    app: AppIndex,
    token: u64,
    control: &ControlPlane,
) -> SessionResult<(AppReply, Vec<OwnedFd>)> {
    let client = c.id;
    let (info, fds) = control.call(move |l| {
        let (_, wi) = l.join(app, token, client)?;
        l.attach_info(app, wi)
    })??;
    c.app = Some(app);
    debug!(
        client = c.id,
        app = app.0,
        worker = info.worker.worker,
        "joined an app"
    );
    Ok((AppReply::Attached(info), fds))
}

/// Serves a client's main queue, a bounded batch. When nothing is ready,
/// its head is judged: broken is a verdict at once, a head slot claimed and
/// left unpublished one once that has lasted past the limit.
fn serve_main_queue(c: &mut Client, control: &ControlPlane, stalled: &mut StalledQueues) {
    let (Some(app), Some(q)) = (c.app, c.main_queue.as_mut()) else {
        return;
    };
    let _ = q.eventfd().drain();
    for _ in 0..CONTROL_BATCH {
        match q.recv() {
            Ok(Some(RxMessage::Control(m))) => control_message(app, m, control),
            Ok(Some(RxMessage::Io(io))) => {
                debug!(app = app.0, "io message {io:?} on the main queue; ignored")
            }
            Ok(None) => break,
            Err(e) => {
                condemn_main_queue(c, app, control, e.to_string());
                return;
            }
        }
    }
    let fault = match q.head_state() {
        HeadState::Corrupted(what) => Some(what),
        HeadState::Unpublished(p) => match stalled.observe(c.id, Some(p), Instant::now()) {
            StallCheck::Stalled(d) => Some(format!(
                "head slot {p} claimed and not published for {} ms",
                d.as_millis()
            )),
            StallCheck::Fine => None,
        },
        HeadState::Ready | HeadState::Empty => {
            if !stalled.is_empty() {
                stalled.observe(c.id, None, Instant::now());
            }
            None
        }
    };
    if let Some(what) = fault {
        stalled.forget(c.id);
        condemn_main_queue(c, app, control, what);
    }
}

/// The main queue is not served again: the verdict detaches the app and
/// closes this connection.
fn condemn_main_queue(c: &mut Client, app: AppIndex, control: &ControlPlane, what: String) {
    c.main_queue = None;
    let what = format!("main rx queue: {what}");
    let _ = control.call(move |l| l.condemn(app, u32::MAX, what));
}

/// A message an app without private rx queues sent over the socket: runs
/// control requests here, as from its main queue, and hands io messages to
/// their stack thread. A bad one is logged and dropped.
fn post(app: AppIndex, thread: u32, message: RxMessage, control: &ControlPlane) {
    match message {
        RxMessage::Control(m) => control_message(app, m, control),
        io => {
            // Only a hand-over to the stack thread: the main thread has no
            // part in it, and control requests above return once run.
            let layer = control.layer().lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = layer.post_app_message(app, thread, io) {
                crate::warn_limited!(
                    "io message over the app socket dropped",
                    app = app.0,
                    thread,
                    "io message over the app socket dropped: {e}"
                );
            }
        }
    }
}

fn control_message(app: AppIndex, m: ControlMessage, control: &ControlPlane) {
    let worker = WorkerMapIndex(m.worker());
    let request = m.request();
    let (result, answer_success) = match m {
        ControlMessage::Listen {
            proto, endpoint, ..
        } => (
            control
                .listen_confirmed(app, worker, proto, endpoint, LISTEN_CONFIRM_TIMEOUT)
                .map(|h| h.as_u64()),
            true,
        ),
        ControlMessage::Unlisten { listener, .. } => (
            control
                .unlisten(app, worker, ListenerHandle::from_u64(listener))
                .map(|()| 0),
            true,
        ),
        // A connect succeeds with its connected event; only a refusal is
        // answered here.
        ControlMessage::Connect {
            proto,
            endpoint,
            opaque,
            ..
        } => (
            control
                .connect(app, worker, proto, endpoint, opaque)
                .map(|()| 0),
            false,
        ),
        ControlMessage::Disconnect { session, .. } => (
            control
                .disconnect(app, SessionHandle::from_u64(session))
                .map(|()| 0),
            true,
        ),
    };
    let event = match result {
        Ok(_) if !answer_success => return,
        Ok(handle) => AppEvent::Reply {
            request,
            error: 0,
            handle,
        },
        Err(e) => AppEvent::Reply {
            request,
            error: ErrorCode::of(&e) as u32,
            handle: 0,
        },
    };
    let _ = control.call(move |l| l.post_to_worker(app, worker, &event));
}

fn send_segment_fds(clients: &mut [Client], outbox: &AppSocketOutbox) {
    let pending = outbox.take_for(|id| clients.iter().any(|c| c.id == id && !c.closed));
    for p in pending {
        debug!(client = p.client, segment = p.index, "sending a segment fd");
        if let Some(c) = clients.iter_mut().find(|c| c.id == p.client && !c.closed) {
            let r = AppReply::SegmentFd {
                worker: p.worker,
                index: p.index,
                size: p.size,
            };
            reply(c, 0, &r, std::slice::from_ref(&p.fd));
        }
    }
}

fn drop_client(c: &mut Client, control: &ControlPlane) {
    let id = c.id;
    match control.call(move |l| l.client_gone(id)) {
        Ok(n) if n > 0 => info!(
            client = id,
            workers = n,
            "app went away; its workers are detached"
        ),
        _ => {}
    }
    c.main_queue = None;
}
