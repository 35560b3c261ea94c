//! The app library: how a separate process uses hoststack (the role of
//! VPP's VCL).
//!
//! # An echo server in ten lines
//!
//! The README's example, compiled by `cargo test`:
//!
//! ```no_run
//! # use std::collections::HashMap;
//! use hoststack_app::{App, AppOptions, Event};
//! # fn main() -> hoststack_app::SessionResult<()> {
//! let mut app = App::attach("/tmp/hs.sock", "echo", AppOptions { use_eventfd: true, ..Default::default() })?;
//! let mut w = app.worker().unwrap();
//! w.listen("0.0.0.0:7".parse().unwrap())?;
//! let (mut sessions, mut buf) = (HashMap::new(), vec![0u8; 65536]);
//! loop { for ev in w.wait(None)? { match ev {
//!     Event::Accepted(s) => { sessions.insert(s.handle(), s); }
//!     Event::Readable(h) => { let s = sessions.get_mut(&h).unwrap(); let n = s.read(&mut buf[..s.write_space()])?; s.write(&buf[..n])?; }
//!     Event::Closed(h) | Event::Reset(h) => { if let Some(s) = sessions.remove(&h) { s.close()?; } }
//!     _ => {} } } }
//! # }
//! ```
//!
//! # What it does
//!
//! [`App::attach`] connects to the stack's app socket, attaches, and maps
//! what the stack hands over: the first worker's segment and event queue,
//! and the app's rx queues (one per stack thread). Each [`Worker`] (one per
//! thread of the app) listens, connects and waits for its events; each
//! [`Session`] reads and writes its fifos directly in shared memory. The
//! data path makes no system call per read or write: a write posts a
//! notification to the stack only when the tx fifo had none pending, and
//! that notification writes an eventfd only when the stack thread sleeps on
//! an empty queue. [`App::stats`] counts both.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use hoststack_app_proto::app_event::{AppEvent, FifoLocation};
use hoststack_app_proto::app_rx_queue::{
    AppRxQueue, AppRxQueues, ControlMessage, IoMessage, RxMessage,
};
use hoststack_app_proto::app_wire::{
    AppReply, AppRequest, FrameReader, WorkerInfo, encode_request,
};
use hoststack_app_proto::datagram::{read_datagram, write_datagram};
use hoststack_app_proto::error::ErrorCode;
use hoststack_shm::ShmError;

pub use hoststack_app_proto::endpoint::{Endpoint, TransportProto};
pub use hoststack_app_proto::handle::{ListenerHandle, SessionHandle};
pub use hoststack_app_proto::options::{AppOptions, SegmentKind};
pub use hoststack_app_proto::{SessionError, SessionResult};
use hoststack_shm::eventfd::EventFd;
use hoststack_shm::fd_passing::{recv_with_fds, send_with_fds};
use hoststack_shm::fifo::{Fifo, FifoConsumer, FifoProducer};
use hoststack_shm::message_queue::MessageQueue;
use hoststack_shm::segment::{Segment, SharedRegion};

/// The addresses and length of a datagram [`Session::recv_datagram`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// Its whole payload length (more than was copied when truncated).
    pub len: usize,
    /// Where it came from.
    pub remote: Endpoint,
    /// The address it arrived on.
    pub local: Endpoint,
}

/// Counters of the library's data path.
#[derive(Debug, Default)]
pub struct AppStats {
    /// Successful `Session::write` calls.
    pub writes: AtomicU64,
    /// Successful `Session::read` calls.
    pub reads: AtomicU64,
    /// Notifications posted to the stack (shared-memory messages, no
    /// system call by themselves).
    pub notifications: AtomicU64,
    /// Eventfd reads the library made while waiting for events.
    pub eventfd_reads: AtomicU64,
    /// Messages sent over the app socket because the stack gave this app
    /// no private rx queues (one system call each).
    pub socket_posts: AtomicU64,
}

/// A copy of [`AppStats`] plus the eventfd writes of the rx queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppStatsSnapshot {
    /// Successful writes.
    pub writes: u64,
    /// Successful reads.
    pub reads: u64,
    /// Notifications posted to the stack.
    pub notifications: u64,
    /// System calls reads and writes made: eventfd writes, only when a
    /// notification found a stack thread asleep on an empty queue, or one
    /// socket send per notification when the app has no private rx queues.
    pub data_path_syscalls: u64,
    /// System calls made while waiting for events (eventfd reads after a
    /// sleep): the cost of idling, not of moving data.
    pub wait_syscalls: u64,
}

/// How long a message waits for room in a full stack queue before the
/// stack thread counts as stuck.
const QUEUE_FULL_PATIENCE: Duration = Duration::from_secs(5);

/// Sends with `send`, waiting while the queue is full: a full queue means
/// the stack thread is behind (a burst of closes, say), which a close or a
/// notification must outlast, as a socket call would block. `QueueFull`
/// only after [`QUEUE_FULL_PATIENCE`].
fn send_patiently(
    patience: Duration,
    mut send: impl FnMut() -> SessionResult<()>,
) -> SessionResult<()> {
    let mut waited = None;
    let mut pause = Duration::from_micros(1);
    loop {
        match send() {
            Err(SessionError::QueueFull) => {
                let since = *waited.get_or_insert_with(Instant::now);
                if since.elapsed() >= patience {
                    return Err(SessionError::QueueFull);
                }
                // Yield first (the stack thread may be on this core), then
                // sleep longer and longer, up to a millisecond.
                if pause < Duration::from_micros(50) {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(pause);
                }
                pause = (pause * 2).min(Duration::from_millis(1));
            }
            r => return r,
        }
    }
}

struct Conn {
    stream: UnixStream,
    reader: FrameReader,
    fds: VecDeque<OwnedFd>,
}

struct Shared {
    conn: Mutex<Conn>,
    app: u32,
    threads: u32,
    rx: Vec<AppRxQueue>,
    segments: Mutex<HashMap<u32, SharedRegion>>,
    next_request: AtomicU32,
    stats: AppStats,
    /// How long a notification waits for room in a full stack queue
    /// before it is left for a later call.
    patience: Duration,
    unposted: Mutex<Unposted>,
    /// Whether `unposted` holds anything (read without the lock).
    has_unposted: std::sync::atomic::AtomicBool,
    /// None when the stack gave the app no private rx queues.
    _rx_segment: Option<Segment>,
}

/// Notifications the stack has not taken yet, for a later call to post.
///
/// A write whose bytes went into the fifo has succeeded, whatever befalls
/// its notification: one that finds the stack's queue full past the
/// patience waits here (oldest first; later ones queue behind it, so a
/// session's close never overtakes its data) and is posted again by the
/// app's next write, read or poll; one that fails for good leaves its
/// error here for the next call to return.
#[derive(Debug, Default)]
struct Unposted {
    messages: VecDeque<(SessionHandle, IoMessage)>,
    error: Option<SessionError>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn request_id(&self) -> u32 {
        loop {
            let id = self.next_request.fetch_add(1, Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// The main thread's rx queue (control messages).
    fn main_queue(&self) -> SessionResult<&AppRxQueue> {
        self.rx
            .last()
            .ok_or_else(|| SessionError::InvalidValue("the stack gave no rx queues".into()))
    }

    fn thread_queue(&self, session: SessionHandle) -> SessionResult<&AppRxQueue> {
        self.rx
            .get(session.thread() as usize)
            .filter(|_| session.thread() + 1 < self.threads)
            .ok_or(SessionError::NoSession(session.as_u64()))
    }

    /// True when the stack gave the app no private rx queues: messages go
    /// over the app socket.
    fn posts_over_socket(&self) -> bool {
        self.rx.is_empty()
    }

    /// Sends what would go through stack thread `thread`'s rx queue over
    /// the app socket instead (never answered).
    fn post_over_socket(&self, thread: u32, message: RxMessage) -> SessionResult<()> {
        let id = self.request_id();
        let conn = lock(&self.conn);
        send_with_fds(
            &conn.stream,
            &encode_request(id, &AppRequest::Post { thread, message }),
            &[],
        )?;
        self.stats.socket_posts.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Posts `m` (waiting up to `patience` for room).
    fn post_io(
        &self,
        session: SessionHandle,
        m: &IoMessage,
        patience: Duration,
    ) -> SessionResult<()> {
        if self.posts_over_socket() {
            if session.thread() + 1 >= self.threads {
                return Err(SessionError::NoSession(session.as_u64()));
            }
            self.post_over_socket(session.thread(), RxMessage::Io(*m))?;
            self.stats.notifications.fetch_add(1, Relaxed);
            return Ok(());
        }
        let q = self.thread_queue(session)?;
        send_patiently(patience, || q.send_io(m))?;
        self.stats.notifications.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Tells the stack `m` about `session`, for something already done
    /// (bytes enqueued or taken, a close): never fails. What the stack
    /// cannot take now is left in [`Unposted`] for a later call.
    fn notify(&self, session: SessionHandle, m: IoMessage) {
        if self.has_unposted.load(Relaxed) {
            let mut u = lock(&self.unposted);
            if !u.messages.is_empty() {
                u.messages.push_back((session, m));
                self.flush(&mut u);
                return;
            }
        }
        let r = self.post_io(session, &m, self.patience);
        if let Err(e) = r {
            let mut u = lock(&self.unposted);
            match e {
                SessionError::QueueFull => u.messages.push_back((session, m)),
                e => {
                    u.error.get_or_insert(e);
                }
            }
            self.has_unposted.store(true, Relaxed);
        }
    }

    /// Posts the notifications left unposted, oldest first, without
    /// waiting: those the queue still has no room for stay; an error met
    /// for good is kept for the next call.
    fn flush(&self, u: &mut Unposted) {
        while let Some(&(session, m)) = u.messages.front() {
            match self.post_io(session, &m, Duration::ZERO) {
                Ok(()) => {
                    u.messages.pop_front();
                }
                Err(SessionError::QueueFull) => break,
                Err(e) => {
                    u.messages.pop_front();
                    u.error.get_or_insert(e);
                }
            }
        }
        self.has_unposted
            .store(!u.messages.is_empty() || u.error.is_some(), Relaxed);
    }

    /// Posts what earlier calls left unposted (see [`Shared::flush`]);
    /// `Err` with the error a notification met for good, once.
    fn retry_unposted(&self) -> SessionResult<()> {
        if !self.has_unposted.load(Relaxed) {
            return Ok(());
        }
        let mut u = lock(&self.unposted);
        self.flush(&mut u);
        let e = u.error.take();
        self.has_unposted.store(!u.messages.is_empty(), Relaxed);
        e.map_or(Ok(()), Err)
    }

    fn region(&self, segment: u32) -> SessionResult<SharedRegion> {
        if let Some(r) = lock(&self.segments).get(&segment) {
            return Ok(r.clone());
        }
        // Its fd may still be on its way over the socket.
        self.pump_socket(Some(segment), Duration::from_secs(5))?;
        lock(&self.segments).get(&segment).cloned().ok_or_else(|| {
            SessionError::Corrupted(format!("segment {segment} was never announced"))
        })
    }

    /// Reads unsolicited messages (segment fds) until `want` is mapped or
    /// `timeout` passes; with no `want`, reads what is there.
    fn pump_socket(&self, want: Option<u32>, timeout: Duration) -> SessionResult<()> {
        let end = Instant::now() + timeout;
        let mut conn = lock(&self.conn);
        loop {
            while let Some((_, reply)) = conn.reader.next_reply()? {
                self.take_unsolicited(&mut conn, reply)?;
            }
            if want.is_some_and(|w| lock(&self.segments).contains_key(&w)) {
                return Ok(());
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return if want.is_some() {
                    Err(SessionError::Transport(
                        "timed out waiting for a segment".into(),
                    ))
                } else {
                    Ok(())
                };
            }
            read_some(&mut conn, Some(left.min(Duration::from_millis(50))))?;
            if want.is_none() {
                while let Some((_, reply)) = conn.reader.next_reply()? {
                    self.take_unsolicited(&mut conn, reply)?;
                }
                return Ok(());
            }
        }
    }

    fn take_unsolicited(&self, conn: &mut Conn, reply: AppReply) -> SessionResult<()> {
        let fds = take_fds(conn, reply.fd_count())?;
        if let AppReply::SegmentFd { index, size, .. } = reply {
            let fd = fds
                .into_iter()
                .next()
                .ok_or_else(|| SessionError::Corrupted("segment without its fd".into()))?;
            let seg = Segment::map(fd, size as usize)?;
            lock(&self.segments).insert(index, seg.region().clone());
        }
        Ok(())
    }

    /// Fails when the stack has closed the app socket (it stopped or
    /// detached every app), so an app waiting for events learns it is
    /// alone. Skipped while another thread holds the connection.
    fn check_stack(&self) -> SessionResult<()> {
        use rustix::event::{PollFd, PollFlags, Timespec};
        let Ok(conn) = self.conn.try_lock() else {
            return Ok(());
        };
        let mut fds = [PollFd::new(&conn.stream, PollFlags::RDHUP)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let hung_up = rustix::event::poll(&mut fds, Some(&zero)).is_ok()
            && fds[0]
                .revents()
                .intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR);
        if hung_up {
            return Err(SessionError::Transport(
                "the stack closed the app socket".into(),
            ));
        }
        Ok(())
    }

    /// Sends a request and waits for its reply.
    fn call(&self, req: &AppRequest) -> SessionResult<(AppReply, Vec<OwnedFd>)> {
        req.validate()?;
        let id = self.request_id();
        let mut conn = lock(&self.conn);
        send_with_fds(&conn.stream, &encode_request(id, req), &[])?;
        call_wait(&mut conn, id, |c, r| self.take_unsolicited(c, r))
    }
}

fn take_fds(conn: &mut Conn, n: usize) -> SessionResult<Vec<OwnedFd>> {
    if conn.fds.len() < n {
        return Err(SessionError::Corrupted(format!(
            "a reply promised {n} fds, {} came",
            conn.fds.len()
        )));
    }
    Ok(conn.fds.drain(..n).collect())
}

fn read_some(conn: &mut Conn, timeout: Option<Duration>) -> SessionResult<()> {
    conn.stream
        .set_read_timeout(timeout)
        .map_err(|e| SessionError::os("app socket", &e))?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut fds = Vec::new();
    match recv_with_fds(&conn.stream, &mut buf, &mut fds) {
        Ok(0) => Err(SessionError::Transport(
            "the stack closed the app socket".into(),
        )),
        Ok(n) => {
            conn.reader.push(&buf[..n]);
            conn.fds.extend(fds);
            Ok(())
        }
        Err(ShmError::Os {
            kind: std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut,
            ..
        }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn call_wait(
    conn: &mut Conn,
    id: u32,
    mut unsolicited: impl FnMut(&mut Conn, AppReply) -> SessionResult<()>,
) -> SessionResult<(AppReply, Vec<OwnedFd>)> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        while let Some((rid, reply)) = conn.reader.next_reply()? {
            if rid == id {
                if let Some(e) = reply.to_session_error() {
                    return Err(e);
                }
                let fds = take_fds(conn, reply.fd_count())?;
                return Ok((reply, fds));
            }
            if rid == 0 {
                if let Some(e) = reply.to_session_error() {
                    return Err(e);
                }
                unsolicited(conn, reply)?;
            }
        }
        if Instant::now() > end {
            return Err(SessionError::Transport(
                "the stack did not answer within 30 s".into(),
            ));
        }
        read_some(conn, Some(Duration::from_millis(200)))?;
    }
}

/// An attached application.
pub struct App {
    shared: Arc<Shared>,
    first: Option<Worker>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("app", &self.shared.app)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Connects to the app socket at `path` and attaches as `name`.
    pub fn attach(path: impl AsRef<Path>, name: &str, options: AppOptions) -> SessionResult<Self> {
        Self::connect_with(path.as_ref(), &AppRequest::attach(name, &options))
    }

    /// Joins app `app` as one more worker over a connection of its own:
    /// what a forked child of an app process does, with the token its
    /// parent got from [`App::share_token`]. The child must not use its
    /// parent's `App` (their connection and event queue are the parent's);
    /// the new worker, its listeners and sessions go away when this `App`'s
    /// connection closes (the child exits), the rest of the app stays.
    /// A wrong token or a gone app is `NoApp`.
    pub fn join(path: impl AsRef<Path>, app: u32, token: u64) -> SessionResult<Self> {
        Self::connect_with(path.as_ref(), &AppRequest::Join { app, token })
    }

    /// [`App::join`] over a connection to the app socket made earlier
    /// (e.g. right after `fork`, before the child drops privileges that
    /// the socket's mode requires).
    pub fn join_over(stream: UnixStream, app: u32, token: u64) -> SessionResult<Self> {
        Self::attach_over(stream, &AppRequest::Join { app, token })
    }

    /// The app's share token, for [`App::join`] in another process.
    pub fn share_token(&self) -> SessionResult<u64> {
        match self.shared.call(&AppRequest::ShareToken)?.0 {
            AppReply::ShareToken { token } => Ok(token),
            _ => Err(SessionError::Corrupted(
                "share token answered with something else".into(),
            )),
        }
    }

    fn connect_with(path: &Path, req: &AppRequest) -> SessionResult<Self> {
        let stream = UnixStream::connect(path).map_err(|e| {
            SessionError::os("connecting to the app socket (is hoststack running?)", &e)
        })?;
        Self::attach_over(stream, req)
    }

    fn attach_over(stream: UnixStream, req: &AppRequest) -> SessionResult<Self> {
        let mut conn = Conn {
            stream,
            reader: FrameReader::new(),
            fds: VecDeque::new(),
        };
        req.validate()?;
        send_with_fds(&conn.stream, &encode_request(1, req), &[])?;
        let mut early = Vec::new();
        let (reply, fds) = call_wait(&mut conn, 1, |c, r| {
            let n = r.fd_count();
            early.push((r, take_fds(c, n)?));
            Ok(())
        })?;
        let AppReply::Attached(info) = reply else {
            return Err(SessionError::Corrupted(
                "attach answered with something else".into(),
            ));
        };
        let mut fds = fds.into_iter();
        let (worker_seg, worker_efd) = worker_fds(&info.worker, &mut fds)?;
        // No queues: the stack wants messages over this socket.
        let (rx_segment, rx) = if info.rx_queues.queues.is_empty() {
            (None, Vec::new())
        } else {
            let rx_seg_fd = fds
                .next()
                .ok_or_else(|| SessionError::Corrupted("no rx-queue segment fd".into()))?;
            let rx_segment = Segment::map(rx_seg_fd, info.rx_queues.segment_size as usize)?;
            let rx = AppRxQueues::attach(rx_segment, &info.rx_queues, fds.collect())?;
            let (rx_segment, rx) = rx.into_parts();
            (Some(rx_segment), rx)
        };
        let shared = Arc::new(Shared {
            conn: Mutex::new(conn),
            app: info.app,
            threads: info.threads,
            rx,
            segments: Mutex::new(HashMap::new()),
            next_request: AtomicU32::new(2),
            stats: AppStats::default(),
            patience: QUEUE_FULL_PATIENCE,
            unposted: Mutex::default(),
            has_unposted: std::sync::atomic::AtomicBool::new(false),
            _rx_segment: rx_segment,
        });
        for (r, fds) in early {
            let mut conn = lock(&shared.conn);
            conn.fds.extend(fds);
            shared.take_unsolicited(&mut conn, r)?;
        }
        let first = Worker::new(shared.clone(), &info.worker, worker_seg, worker_efd)?;
        Ok(Self {
            shared,
            first: Some(first),
        })
    }

    /// The app's index in the stack.
    pub fn index(&self) -> u32 {
        self.shared.app
    }

    /// The first worker (once).
    pub fn worker(&mut self) -> Option<Worker> {
        self.first.take()
    }

    /// Registers one more worker (for another thread of the app).
    pub fn add_worker(&self) -> SessionResult<Worker> {
        let (reply, fds) = self.shared.call(&AppRequest::AddWorker)?;
        let AppReply::WorkerAdded(info) = reply else {
            return Err(SessionError::Corrupted(
                "add worker answered with something else".into(),
            ));
        };
        let mut fds = fds.into_iter();
        let (seg, efd) = worker_fds(&info, &mut fds)?;
        Worker::new(self.shared.clone(), &info, seg, efd)
    }

    /// Posts a ping to stack thread `thread`: the thread counts it and how
    /// long it waited (`QueueFull` when its queue is full).
    pub fn ping(&self, thread: u32) -> SessionResult<()> {
        let ping = IoMessage::Ping {
            sent_ns: hoststack_app_proto::app_rx_queue::monotonic_ns(),
        };
        if self.shared.posts_over_socket() {
            if thread + 1 >= self.shared.threads {
                return Err(SessionError::InvalidValue(format!(
                    "no stack thread {thread}"
                )));
            }
            return self.shared.post_over_socket(thread, RxMessage::Io(ping));
        }
        let q = self
            .shared
            .rx
            .get(thread as usize)
            .filter(|_| thread + 1 < self.shared.threads)
            .ok_or_else(|| SessionError::InvalidValue(format!("no stack thread {thread}")))?;
        q.send_io(&ping)
    }

    /// Detaches: the stack frees every worker, listener, session and
    /// segment of the app.
    pub fn detach(self) -> SessionResult<()> {
        self.shared.call(&AppRequest::Detach).map(|_| ())
    }

    /// The app socket's fd, to watch for the stack going away (it hangs
    /// up: poll for `POLLRDHUP`, not for input, which the library reads
    /// itself), e.g. in a poll set that also holds the worker's eventfd.
    pub fn socket_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        lock(&self.shared.conn).stream.as_raw_fd()
    }

    /// Fails when the stack has closed the app socket (it stopped, or
    /// detached the app).
    pub fn check_stack(&self) -> SessionResult<()> {
        self.shared.check_stack()
    }

    /// The data path's counters.
    pub fn stats(&self) -> AppStatsSnapshot {
        let s = &self.shared.stats;
        let eventfd_writes: u64 = self.shared.rx.iter().map(AppRxQueue::notifications).sum();
        AppStatsSnapshot {
            writes: s.writes.load(Relaxed),
            reads: s.reads.load(Relaxed),
            notifications: s.notifications.load(Relaxed),
            data_path_syscalls: eventfd_writes + s.socket_posts.load(Relaxed),
            wait_syscalls: s.eventfd_reads.load(Relaxed),
        }
    }
}

fn worker_fds(
    info: &WorkerInfo,
    fds: &mut impl Iterator<Item = OwnedFd>,
) -> SessionResult<(Segment, Option<EventFd>)> {
    let seg_fd = fds
        .next()
        .ok_or_else(|| SessionError::Corrupted("no worker segment fd".into()))?;
    let seg = Segment::map(seg_fd, info.segment_size as usize)?;
    let efd = if info.event_queue_eventfd {
        let fd = fds
            .next()
            .ok_or_else(|| SessionError::Corrupted("no event queue eventfd".into()))?;
        Some(EventFd::from_owned_fd(fd)?)
    } else {
        None
    };
    Ok((seg, efd))
}

/// What a worker's [`wait`](Worker::wait) reports.
#[derive(Debug)]
pub enum Event {
    /// A session arrived on a listener; it is yours.
    Accepted(Session),
    /// A connect finished: the session, or why not, with the connect's
    /// request id.
    Connected(u32, SessionResult<Session>),
    /// Data is waiting.
    Readable(SessionHandle),
    /// The tx fifo has room again (after [`Session::want_writable`] or a
    /// write that did not fit).
    Writable(SessionHandle),
    /// The peer closed: read what is left, then close.
    Closed(SessionHandle),
    /// The peer reset the session; close it.
    Reset(SessionHandle),
    /// The stack forgot the session; its handle is dead.
    Gone(SessionHandle),
    /// The worker fell behind: its event queue was full and `postponed`
    /// events waited in the stack (for up to `max_wait`) before reaching
    /// it. None was lost; a bigger event queue or faster reading avoids it.
    FellBehind {
        /// Events that waited.
        postponed: u32,
        /// The longest wait.
        max_wait: Duration,
    },
}

/// One worker of an app: its event queue and its sessions.
pub struct Worker {
    shared: Arc<Shared>,
    index: u32,
    events: MessageQueue,
    eventfd: Option<EventFd>,
    backlog: VecDeque<AppEvent>,
    rx_fifos: HashMap<u64, Fifo>,
    /// Connects started with `start_connect`, by request id.
    pending_connects: HashMap<u32, TransportProto>,
    _segment: Segment,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Worker {
    fn new(
        shared: Arc<Shared>,
        info: &WorkerInfo,
        segment: Segment,
        eventfd: Option<EventFd>,
    ) -> SessionResult<Self> {
        let efd_for_queue = match &eventfd {
            Some(e) => Some(e.try_clone()?),
            None => None,
        };
        let events = MessageQueue::attach(
            segment.region(),
            info.event_queue_offset as usize,
            efd_for_queue,
        )?;
        lock(&shared.segments).insert(info.segment_index, segment.region().clone());
        Ok(Self {
            shared,
            index: info.worker,
            events,
            eventfd,
            backlog: VecDeque::new(),
            rx_fifos: HashMap::new(),
            pending_connects: HashMap::new(),
            _segment: segment,
        })
    }

    /// The worker's number in the app.
    pub fn index(&self) -> u32 {
        self.index
    }

    fn send_control(&self, m: &ControlMessage) -> SessionResult<()> {
        if self.shared.posts_over_socket() {
            let main = self.shared.threads - 1;
            return self.shared.post_over_socket(main, RxMessage::Control(*m));
        }
        let q = self.shared.main_queue()?;
        send_patiently(QUEUE_FULL_PATIENCE, || q.send_control(m))
    }

    fn next_event(&mut self) -> SessionResult<Option<AppEvent>> {
        let mut buf = [0u8; hoststack_app_proto::app_event::APP_EVENT_SIZE];
        match self.events.try_recv(&mut buf)? {
            Some(n) => Ok(Some(AppEvent::decode(&buf[..n])?)),
            None => Ok(None),
        }
    }

    fn sleep(&mut self, timeout: Duration) -> SessionResult<()> {
        match &self.eventfd {
            Some(e) => {
                if self.events.empty_before_sleep() {
                    let r = e.wait(Some(timeout));
                    self.events.awake();
                    r?;
                    if e.drain()? > 0 {
                        self.shared.stats.eventfd_reads.fetch_add(1, Relaxed);
                    }
                }
            }
            None => std::thread::sleep(timeout.min(Duration::from_micros(200))),
        }
        Ok(())
    }

    /// Waits for the reply to control request `request`, keeping other
    /// events for [`wait`](Self::wait).
    fn wait_reply(&mut self, request: u32, connect: bool) -> SessionResult<AppEvent> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            while let Some(ev) = self.next_event()? {
                match &ev {
                    AppEvent::Reply { request: r, .. } if *r == request => return Ok(ev),
                    AppEvent::Connected { opaque, .. }
                        if connect && *opaque == u64::from(request) =>
                    {
                        return Ok(ev);
                    }
                    _ => self.backlog.push_back(ev),
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SessionError::Transport(
                    "no answer from the stack within 30 s".into(),
                ));
            }
            self.shared.pump_socket(None, Duration::ZERO)?;
            // A stack that closed the socket will never answer.
            self.shared.check_stack()?;
            self.sleep(left.min(Duration::from_millis(10)))?;
        }
    }

    /// Listens for TCP connections on `endpoint`.
    pub fn listen(&mut self, endpoint: SocketAddr) -> SessionResult<ListenerHandle> {
        self.listen_proto(TransportProto::Tcp, endpoint)
    }

    /// Listens on `endpoint` with `proto`.
    pub fn listen_proto(
        &mut self,
        proto: TransportProto,
        endpoint: SocketAddr,
    ) -> SessionResult<ListenerHandle> {
        let request = self.shared.request_id();
        let endpoint = Endpoint {
            ip: endpoint.ip(),
            port: endpoint.port(),
        };
        self.send_control(&ControlMessage::Listen {
            worker: self.index,
            request,
            proto,
            endpoint,
        })?;
        match self.wait_reply(request, false)? {
            AppEvent::Reply {
                error: 0, handle, ..
            } => Ok(ListenerHandle::from_u64(handle)),
            AppEvent::Reply { error, .. } => Err(error_of(error, &endpoint.to_string())),
            _ => Err(SessionError::Corrupted(
                "listen answered with something else".into(),
            )),
        }
    }

    /// Stops listening.
    pub fn unlisten(&mut self, listener: ListenerHandle) -> SessionResult<()> {
        let request = self.shared.request_id();
        self.send_control(&ControlMessage::Unlisten {
            worker: self.index,
            request,
            listener: listener.as_u64(),
        })?;
        match self.wait_reply(request, false)? {
            AppEvent::Reply { error: 0, .. } => Ok(()),
            AppEvent::Reply { error, .. } => Err(error_of(error, &listener.to_string())),
            _ => Err(SessionError::Corrupted(
                "unlisten answered with something else".into(),
            )),
        }
    }

    /// Connects over TCP and waits for the result.
    pub fn connect(&mut self, remote: SocketAddr) -> SessionResult<Session> {
        self.connect_proto(TransportProto::Tcp, remote)
    }

    /// Connects with `proto` and waits for the result.
    pub fn connect_proto(
        &mut self,
        proto: TransportProto,
        remote: SocketAddr,
    ) -> SessionResult<Session> {
        let request = self.shared.request_id();
        let endpoint = Endpoint {
            ip: remote.ip(),
            port: remote.port(),
        };
        self.send_control(&ControlMessage::Connect {
            worker: self.index,
            request,
            proto,
            endpoint,
            opaque: u64::from(request),
        })?;
        match self.wait_reply(request, true)? {
            AppEvent::Reply { error, .. } => Err(error_of(error, &endpoint.to_string())),
            AppEvent::Connected {
                error: 0,
                session,
                local,
                remote,
                fifos,
                ..
            } => self.open_session(session, proto, local, remote, fifos, None),
            AppEvent::Connected { error, .. } => Err(error_of(error, &endpoint.to_string())),
            _ => Err(SessionError::Corrupted(
                "connect answered with something else".into(),
            )),
        }
    }

    /// Starts a connect with `proto` and returns at once with its request
    /// id; the result comes later from [`wait`](Self::wait) or
    /// [`poll`](Self::poll) as `Event::Connected(id, ..)` (a refusal too).
    pub fn start_connect(
        &mut self,
        proto: TransportProto,
        remote: SocketAddr,
    ) -> SessionResult<u32> {
        let request = self.shared.request_id();
        self.send_control(&ControlMessage::Connect {
            worker: self.index,
            request,
            proto,
            endpoint: Endpoint {
                ip: remote.ip(),
                port: remote.port(),
            },
            opaque: u64::from(request),
        })?;
        self.pending_connects.insert(request, proto);
        Ok(request)
    }

    /// Takes worker `worker` of this app (another process's, e.g. the
    /// parent that listened before forking and never accepts) off
    /// `listener`, without waiting: its answer goes to that worker's
    /// event queue. Sessions already handed to it stay there.
    pub fn remove_listener_worker(
        &self,
        worker: u32,
        listener: ListenerHandle,
    ) -> SessionResult<()> {
        let request = self.shared.request_id();
        self.send_control(&ControlMessage::Unlisten {
            worker,
            request,
            listener: listener.as_u64(),
        })
    }

    /// The events that are waiting, without sleeping (empty when none).
    pub fn poll(&mut self) -> SessionResult<Vec<Event>> {
        self.wait(Some(Duration::ZERO))
    }

    /// Before the caller sleeps on [`eventfd`](Self::eventfd) in a poll
    /// set of its own: announces the sleep to the stack and returns true
    /// if no event waits (sleeping is safe: the next event writes the
    /// eventfd), false if one does (poll it instead; nothing announced).
    /// After the sleep, call [`end_sleep`](Self::end_sleep).
    /// Notifications left unposted are tried again first; while some
    /// remain ([`has_unposted`](Self::has_unposted)), sleep a few
    /// milliseconds at most.
    pub fn announce_sleep(&self) -> bool {
        if self.shared.has_unposted.load(Relaxed) {
            self.shared.flush(&mut lock(&self.shared.unposted));
        }
        self.backlog.is_empty() && self.events.empty_before_sleep()
    }

    /// True while notifications the stack's full queue could not take wait
    /// in the library: the next write, read or poll posts them, so a
    /// caller sleeping on a poll set of its own should wake within a few
    /// milliseconds and poll.
    pub fn has_unposted(&self) -> bool {
        self.shared.has_unposted.load(Relaxed)
    }

    /// After a sleep announced with [`announce_sleep`](Self::announce_sleep):
    /// the stack stops writing the eventfd; reads what it wrote.
    pub fn end_sleep(&self) -> SessionResult<()> {
        self.events.awake();
        self.drain_eventfd()
    }

    /// Reads the eventfd's count (without blocking) so it stops being
    /// readable; events are then taken with [`poll`](Self::poll).
    pub fn drain_eventfd(&self) -> SessionResult<()> {
        if let Some(e) = &self.eventfd {
            if e.drain()? > 0 {
                self.shared.stats.eventfd_reads.fetch_add(1, Relaxed);
            }
        }
        Ok(())
    }

    /// Closes a session through the control path and waits for the
    /// stack's answer (ownership is checked: another app's session is
    /// `NotOwner`).
    pub fn disconnect(&mut self, session: SessionHandle) -> SessionResult<()> {
        let request = self.shared.request_id();
        self.send_control(&ControlMessage::Disconnect {
            worker: self.index,
            request,
            session: session.as_u64(),
        })?;
        match self.wait_reply(request, false)? {
            AppEvent::Reply { error: 0, .. } => Ok(()),
            AppEvent::Reply { error, .. } => {
                Err(error_of(error, &format!("{:#x}", session.as_u64())))
            }
            _ => Err(SessionError::Corrupted(
                "disconnect answered with something else".into(),
            )),
        }
    }

    fn open_session(
        &mut self,
        handle: SessionHandle,
        proto: TransportProto,
        local: Endpoint,
        remote: Endpoint,
        fifos: FifoLocation,
        listener: Option<ListenerHandle>,
    ) -> SessionResult<Session> {
        let region = self.shared.region(fifos.segment)?;
        let rx = Fifo::attach(&region, fifos.rx_offset as usize)?;
        let tx = Fifo::attach(&region, fifos.tx_offset as usize)?;
        self.rx_fifos.insert(handle.as_u64(), rx.clone());
        Ok(Session {
            shared: self.shared.clone(),
            handle,
            proto,
            local,
            remote,
            rx: rx.consumer(),
            tx: tx.producer(),
            closed: false,
            listener,
        })
    }

    fn translate(&mut self, ev: AppEvent, out: &mut Vec<Event>) -> SessionResult<()> {
        match ev {
            AppEvent::Accepted {
                session,
                listener,
                proto,
                local,
                remote,
                fifos,
            } => {
                out.push(Event::Accepted(self.open_session(
                    session,
                    proto,
                    local,
                    remote,
                    fifos,
                    Some(listener),
                )?));
            }
            AppEvent::Connected {
                session,
                opaque,
                error,
                local,
                remote,
                fifos,
            } => {
                let proto = self
                    .pending_connects
                    .remove(&(opaque as u32))
                    .unwrap_or(TransportProto::Tcp);
                let r = if error == 0 {
                    self.open_session(session, proto, local, remote, fifos, None)
                } else {
                    Err(error_of(error, &remote.to_string()))
                };
                out.push(Event::Connected(opaque as u32, r));
            }
            AppEvent::Rx { session } => {
                // Clear before the app reads, so data arriving after the
                // read raises a new event.
                if let Some(f) = self.rx_fifos.get(&session.as_u64()) {
                    f.clear_event();
                }
                out.push(Event::Readable(session));
            }
            AppEvent::TxSpace { session } => out.push(Event::Writable(session)),
            AppEvent::Disconnected { session } => out.push(Event::Closed(session)),
            AppEvent::Reset { session } => out.push(Event::Reset(session)),
            AppEvent::Cleanup { session } => {
                self.rx_fifos.remove(&session.as_u64());
                out.push(Event::Gone(session));
            }
            AppEvent::SegmentAdded { index, .. } => {
                self.shared.region(index)?;
            }
            AppEvent::SegmentRemoved { index } => {
                lock(&self.shared.segments).remove(&index);
            }
            AppEvent::Reply { request, error, .. } => {
                // A connect started with `start_connect` that the stack
                // refused at once: its only answer.
                if error != 0 && self.pending_connects.remove(&request).is_some() {
                    out.push(Event::Connected(request, Err(error_of(error, "connect"))));
                }
            }
            AppEvent::Backlog {
                postponed,
                max_wait_us,
            } => out.push(Event::FellBehind {
                postponed,
                max_wait: Duration::from_micros(u64::from(max_wait_us)),
            }),
        }
        Ok(())
    }

    /// Waits up to `timeout` (forever with `None`) for events and returns
    /// them; an idle app sleeps on its eventfd and uses no CPU.
    pub fn wait(&mut self, timeout: Option<Duration>) -> SessionResult<Vec<Event>> {
        let end = timeout.map(|t| Instant::now() + t);
        let mut out = Vec::new();
        let mut last_check = Instant::now();
        loop {
            // What the stack's full queue could not take before goes now.
            self.shared.retry_unposted()?;
            while let Some(ev) = self.backlog.pop_front() {
                self.translate(ev, &mut out)?;
            }
            while out.len() < 256 {
                match self.next_event()? {
                    Some(ev) => self.translate(ev, &mut out)?,
                    None => break,
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
            let left = match end {
                Some(e) => {
                    let l = e.saturating_duration_since(Instant::now());
                    if l.is_zero() {
                        return Ok(out);
                    }
                    l
                }
                None => Duration::from_millis(100),
            };
            self.sleep(left.min(Duration::from_millis(100)))?;
            // An idle app looks at its socket once a second: a stack that
            // went away ends the wait with an error instead of a hang.
            if last_check.elapsed() >= Duration::from_secs(1) {
                last_check = Instant::now();
                self.shared.check_stack()?;
            }
        }
    }

    /// The event queue's eventfd, to put in your own poll set.
    pub fn eventfd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.eventfd.as_ref().map(|e| e.as_fd())
    }
}

fn error_of(code: u32, detail: &str) -> SessionError {
    ErrorCode::to_error(code, detail.to_string())
        .unwrap_or_else(|| SessionError::Transport("unknown error".into()))
}

/// One session: its fifos, read and written in place.
pub struct Session {
    shared: Arc<Shared>,
    handle: SessionHandle,
    proto: TransportProto,
    local: Endpoint,
    remote: Endpoint,
    rx: FifoConsumer,
    tx: FifoProducer,
    closed: bool,
    listener: Option<ListenerHandle>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("handle", &self.handle)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Its handle.
    pub fn handle(&self) -> SessionHandle {
        self.handle
    }

    /// Protocol.
    pub fn proto(&self) -> TransportProto {
        self.proto
    }

    /// Our end.
    pub fn local(&self) -> Endpoint {
        self.local
    }

    /// The peer.
    pub fn remote(&self) -> Endpoint {
        self.remote
    }

    /// The listener an accepted session arrived on (`None` for a session
    /// this app connected).
    pub fn listener(&self) -> Option<ListenerHandle> {
        self.listener
    }

    /// Bytes waiting to be read.
    pub fn readable(&self) -> usize {
        self.rx.max_dequeue().unwrap_or(0) as usize
    }

    /// Room for writing.
    pub fn write_space(&self) -> usize {
        self.tx.max_enqueue().unwrap_or(0) as usize
    }

    /// Counts a read and tells the stack when it asked to hear of one.
    fn after_read(&mut self) {
        self.shared.stats.reads.fetch_add(1, Relaxed);
        if self.rx.take_dequeue_notification_request() {
            self.shared.notify(
                self.handle,
                IoMessage::DequeueNotify {
                    session: self.handle.as_u64(),
                },
            );
        }
    }

    /// Reads up to `buf.len()` bytes; 0 when nothing waits.
    pub fn read(&mut self, buf: &mut [u8]) -> SessionResult<usize> {
        self.shared.retry_unposted()?;
        let n = self.rx.dequeue(buf)?;
        if n > 0 {
            self.after_read();
        }
        Ok(n)
    }

    /// Copies bytes at `offset` into the rx data without consuming them.
    pub fn peek(&self, offset: u32, buf: &mut [u8]) -> SessionResult<usize> {
        Ok(self.rx.peek(offset, buf)?)
    }

    /// Consumes `n` bytes (after a peek).
    pub fn consume(&mut self, n: u32) -> SessionResult<u32> {
        self.shared.retry_unposted()?;
        let n = self.rx.drop_bytes(n)?;
        if n > 0 {
            self.after_read();
        }
        Ok(n)
    }

    /// Writes as much of `data` as fits; returns how much. The stack hears
    /// of it through shared memory, at most once per batch. Bytes that went
    /// into the fifo are never reported as a failed write: a notification
    /// the stack cannot take now is posted by a later call (see
    /// [`Unposted`]), and an `Err` means nothing was written.
    pub fn write(&mut self, data: &[u8]) -> SessionResult<usize> {
        if self.closed {
            return Err(SessionError::NoSession(self.handle.as_u64()));
        }
        self.shared.retry_unposted()?;
        let n = self.tx.enqueue(data)?;
        if n > 0 {
            self.notify_tx();
        }
        Ok(n)
    }

    /// Counts a write and tells the stack, once per batch: only the write
    /// that sets the fifo's event flag posts.
    fn notify_tx(&mut self) {
        self.shared.stats.writes.fetch_add(1, Relaxed);
        if self.tx.fifo().set_event() {
            self.shared.notify(
                self.handle,
                IoMessage::Tx {
                    session: self.handle.as_u64(),
                },
            );
        }
    }

    /// Takes the next datagram of a UDP session: copies up to `buf.len()`
    /// bytes of its payload (a longer one is truncated, as `recvfrom` does)
    /// and returns how many, with its addresses. `Ok(None)` when none waits.
    pub fn recv_datagram(&mut self, buf: &mut [u8]) -> SessionResult<Option<(usize, Datagram)>> {
        self.shared.retry_unposted()?;
        let Some((n, h)) = read_datagram(&mut self.rx, buf)? else {
            return Ok(None);
        };
        self.after_read();
        let d = Datagram {
            len: usize::from(h.len),
            remote: h.remote,
            local: h.local,
        };
        Ok(Some((n, d)))
    }

    /// Queues one datagram to `remote` from `local` (the zero endpoint lets
    /// the stack choose); `Ok(false)` when the tx fifo lacks room for all of
    /// it, and nothing was queued.
    pub fn send_datagram(
        &mut self,
        remote: Endpoint,
        local: Endpoint,
        payload: &[u8],
    ) -> SessionResult<bool> {
        if self.closed {
            return Err(SessionError::NoSession(self.handle.as_u64()));
        }
        self.shared.retry_unposted()?;
        if !write_datagram(&mut self.tx, &remote, &local, payload)? {
            return Ok(false);
        }
        self.notify_tx();
        Ok(true)
    }

    /// Asks for a [`Event::Writable`] when room appears; returns true when
    /// there already is room (no event will come for it).
    pub fn want_writable(&mut self) -> SessionResult<bool> {
        Ok(self.tx.request_dequeue_notification()? > 0)
    }

    /// Closes the session (queued data is sent first). A close the
    /// stack's full queue cannot take now is posted by a later call, after
    /// the notifications before it.
    pub fn close(mut self) -> SessionResult<()> {
        self.closed = true;
        self.shared.notify(
            self.handle,
            IoMessage::Disconnect {
                session: self.handle.as_u64(),
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A library with one stack thread over queues made here, its patience
    /// short; the stack's side of the thread's queue; a session on a fifo
    /// pair of a segment made here, and the stack's side of its tx fifo.
    fn one_session() -> (Session, AppRxQueue, FifoConsumer) {
        let queues = AppRxQueues::create("hs-lib-test-rxq", 2, 8).unwrap();
        let stack_side = queues.queues()[0].try_clone().unwrap();
        let (rx_segment, rx) = queues.into_parts();
        let (stream, _) = UnixStream::pair().unwrap();
        let shared = Arc::new(Shared {
            conn: Mutex::new(Conn {
                stream,
                reader: FrameReader::new(),
                fds: VecDeque::new(),
            }),
            app: 0,
            threads: 2,
            rx,
            segments: Mutex::default(),
            next_request: AtomicU32::new(2),
            stats: AppStats::default(),
            patience: Duration::from_millis(5),
            unposted: Mutex::default(),
            has_unposted: std::sync::atomic::AtomicBool::new(false),
            _rx_segment: Some(rx_segment),
        });
        let size = 4096;
        let mut seg = Segment::create("hs-lib-test-fifos", 4 * size as usize).unwrap();
        let mut fifo = || {
            let at = seg
                .allocate(hoststack_shm::fifo::fifo_required_size(size))
                .unwrap();
            Fifo::init_at(seg.region(), at, size).unwrap()
        };
        let (rx, tx) = (fifo(), fifo());
        let stack_tx = tx.consumer();
        let s = Session {
            shared,
            handle: SessionHandle::new(0, 1),
            proto: TransportProto::Tcp,
            local: Endpoint {
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                port: 1,
            },
            remote: Endpoint {
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                port: 2,
            },
            rx: rx.consumer(),
            tx: tx.producer(),
            closed: false,
            listener: None,
        };
        (s, stack_side, stack_tx)
    }

    /// Everything waiting in the stack's side of the queue.
    fn drain(q: &mut AppRxQueue) -> Vec<IoMessage> {
        let mut out = Vec::new();
        while let Some(m) = q.recv().unwrap() {
            if let RxMessage::Io(m) = m {
                out.push(m);
            }
        }
        out
    }

    #[test]
    fn a_write_whose_notification_finds_the_queue_full_counts_its_bytes_and_notifies_once_later() {
        let (mut s, mut stack, mut stack_tx) = one_session();
        let other = IoMessage::Tx { session: 99 };
        let mut filler = 0;
        while s.shared.rx[0].send_io(&other).is_ok() {
            filler += 1;
        }
        assert!(filler > 0);
        // The queue stays full past the patience: the bytes went, the write
        // says so, and the notification waits in the library.
        assert_eq!(s.write(b"hello").unwrap(), 5);
        assert_eq!(s.write(b" world").unwrap(), 6);
        assert_eq!(s.shared.stats.notifications.load(Relaxed), 0);
        assert_eq!(drain(&mut stack).len(), filler);
        // The next call posts it, once.
        assert_eq!(s.write(b"!").unwrap(), 1);
        let mine = IoMessage::Tx {
            session: s.handle.as_u64(),
        };
        assert_eq!(drain(&mut stack), vec![mine]);
        assert_eq!(s.shared.stats.notifications.load(Relaxed), 1);
        let mut buf = [0u8; 64];
        let n = stack_tx.dequeue(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello world!");
        // A poll-like call with nothing left posts nothing more.
        s.shared.retry_unposted().unwrap();
        assert!(drain(&mut stack).is_empty());
    }

    #[test]
    fn a_close_behind_an_unposted_notification_never_overtakes_it() {
        let (mut s, mut stack, _) = one_session();
        while s.shared.rx[0]
            .send_io(&IoMessage::Tx { session: 99 })
            .is_ok()
        {}
        assert_eq!(s.write(b"data").unwrap(), 4);
        let shared = s.shared.clone();
        let h = s.handle.as_u64();
        s.close().unwrap();
        drain(&mut stack);
        shared.retry_unposted().unwrap();
        assert_eq!(
            drain(&mut stack),
            vec![
                IoMessage::Tx { session: h },
                IoMessage::Disconnect { session: h }
            ]
        );
    }

    #[test]
    fn a_notification_that_fails_for_good_is_reported_once_by_the_next_call() {
        let (mut s, _stack, _) = one_session();
        // A handle on a thread the app has no queue for.
        s.handle = SessionHandle::new(5, 1);
        assert_eq!(s.write(b"x").unwrap(), 1);
        assert!(matches!(s.write(b"y"), Err(SessionError::NoSession(_))));
        // Reported once; the write after it goes (its flag is still set,
        // so no new notification is tried).
        assert_eq!(s.write(b"y").unwrap(), 1);
    }

    #[test]
    fn a_full_queue_is_waited_out() {
        let mut full_for = 20;
        let r = send_patiently(Duration::from_secs(5), || {
            if full_for == 0 {
                return Ok(());
            }
            full_for -= 1;
            Err(SessionError::QueueFull)
        });
        assert_eq!(r, Ok(()));
        assert_eq!(full_for, 0);
    }

    #[test]
    fn a_queue_full_for_longer_than_the_patience_is_an_error() {
        let t = Instant::now();
        let mut tries = 0;
        let r = send_patiently(Duration::from_millis(30), || {
            tries += 1;
            Err(SessionError::QueueFull)
        });
        assert_eq!(r, Err(SessionError::QueueFull));
        assert!(t.elapsed() >= Duration::from_millis(30));
        // Backed off: not a busy spin for 30 ms.
        assert!(tries < 1000, "{tries} tries");
    }

    #[test]
    fn other_errors_are_not_retried() {
        let mut tries = 0;
        let r = send_patiently(Duration::from_secs(5), || {
            tries += 1;
            Err(SessionError::NoSession(7))
        });
        assert_eq!(r, Err(SessionError::NoSession(7)));
        assert_eq!(tries, 1);
    }
}
