//! The process's hoststack state: its app worker, the hoststack sockets
//! and the epoll instances that watch them, behind one lock.
//!
//! # Readiness
//!
//! Every socket lists the epoll registrations and the waiting threads that
//! watch it. The worker's events (data, room, accepts, connects, closes)
//! are taken by whichever thread holds the lock next ([`Inner::pump`]) and
//! each one *touches* its socket: the socket's registrations join their
//! epoll's ready list (as the kernel's `ep_poll_callback` does) and a
//! sleeping epoll or thread is woken through an eventfd of its own.
//! `epoll_wait` then checks each listed registration against the socket's
//! real state ([`Sock::readiness`]), so readiness is exact: an entry whose
//! condition no longer holds leaves the list; a level-triggered one that
//! still holds stays at the back; an edge-triggered or one-shot one leaves
//! once reported. The cost is per event, never per registered socket.
//!
//! # Sleeping
//!
//! A thread that blocks (in `epoll_wait`, `poll`, `select` or a blocking
//! call) puts the worker's event-queue eventfd in its kernel wait.
//! `sleepers` counts such threads: the first announces the sleep to the
//! stack (which then writes the eventfd on the queue's next empty to
//! non-empty edge), the last to wake withdraws it. A thread that takes
//! events for others wakes them through their own eventfds, so one queue
//! serves every thread and no wakeup is lost.
//!
//! # Processes
//!
//! A forked child gets a copy of this state but not its parent's worker:
//! it forgets the parent's app objects (never touching their queues) and
//! joins the app as a worker of its own over its own connection, the
//! first time it needs the stack ([`App::join`]). Listeners inherited from
//! the parent start taking connections in the child when the child first
//! waits on them; sessions inherited from the parent stay the parent's (a
//! close in the child closes only the child's fd).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hashbrown::HashMap;
use hoststack_app::{App, AppOptions, Event, ListenerHandle, Session, SessionError, Worker};

pub use hoststack_app::Endpoint;
use slab::Slab;

use crate::config::{Config, Fallback};
use crate::sys::{self, Errno};

/// The state, once the process has a hoststack socket.
pub static STATE: Mutex<Option<Inner>> = Mutex::new(None);

/// Locks the state, creating it on first use.
pub fn lock() -> MutexGuard<'static, Option<Inner>> {
    let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if g.is_none() {
        *g = Some(Inner::new());
        sys::register_atfork(prepare_fork, parent_after_fork, child_after_fork);
    }
    g
}

thread_local! {
    /// The state's lock, held by the forking thread from the prepare
    /// handler until fork returns in the parent and in the child.
    static FORK_GUARD: std::cell::RefCell<Option<MutexGuard<'static, Option<Inner>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Before fork: no other thread may be inside the state while the
/// address space is copied.
extern "C" fn prepare_fork() {
    let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(st) = g.as_mut() {
        st.before_fork();
    }
    FORK_GUARD.with(|f| *f.borrow_mut() = Some(g));
}

extern "C" fn parent_after_fork() {
    FORK_GUARD.with(|f| f.borrow_mut().take());
}

extern "C" fn child_after_fork() {
    FORK_GUARD.with(|f| {
        if let Some(mut g) = f.borrow_mut().take() {
            if let Some(st) = g.as_mut() {
                st.after_fork_child();
            }
        }
    });
}

/// Epoll event bits as `u32`.
pub mod ev {
    #![allow(missing_docs)]
    pub const IN: u32 = libc::EPOLLIN as u32;
    pub const OUT: u32 = libc::EPOLLOUT as u32;
    pub const PRI: u32 = libc::EPOLLPRI as u32;
    pub const ERR: u32 = libc::EPOLLERR as u32;
    pub const HUP: u32 = libc::EPOLLHUP as u32;
    pub const RDHUP: u32 = libc::EPOLLRDHUP as u32;
    pub const RDNORM: u32 = libc::EPOLLRDNORM as u32;
    pub const WRNORM: u32 = libc::EPOLLWRNORM as u32;
    pub const ET: u32 = libc::EPOLLET as u32;
    pub const ONESHOT: u32 = libc::EPOLLONESHOT as u32;
    pub const EXCLUSIVE: u32 = libc::EPOLLEXCLUSIVE as u32;
    pub const WAKEUP: u32 = libc::EPOLLWAKEUP as u32;
}

/// An eventfd that wakes one sleeper (an epoll instance's or a thread's).
#[derive(Debug)]
pub struct Waker {
    fd: RawFd,
}

impl Waker {
    /// A new one.
    pub fn new() -> Result<Self, Errno> {
        Ok(Self {
            fd: sys::eventfd()?,
        })
    }
    /// Its fd (for a kernel wait).
    pub fn fd(&self) -> RawFd {
        self.fd
    }
    /// Wakes the sleeper.
    pub fn wake(&self) {
        sys::eventfd_signal(self.fd);
    }
    /// Clears a wakeup.
    pub fn clear(&self) {
        sys::eventfd_drain(self.fd);
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        let _ = sys::close(self.fd);
    }
}

/// A listening socket.
#[derive(Debug)]
pub struct Listener {
    /// The stack's handle.
    pub handle: ListenerHandle,
    /// Where it listens.
    pub endpoint: SocketAddr,
    /// This process's worker is on the listener at the stack.
    pub active: bool,
    /// This process waited on it (accept, epoll, poll) since it became
    /// active here.
    pub used: bool,
    /// An ancestor's worker that listened and never used it: taken off
    /// the listener when this process starts using it (a prefork master).
    pub parent_worker: Option<u32>,
    /// Sessions accepted by the stack, waiting for `accept` (with what
    /// happened to them meanwhile).
    pub backlog: VecDeque<Stream>,
    /// SO_REUSEPORT was set when it started listening: other such socks
    /// of the process on the endpoint share its stack listener.
    pub reuseport: bool,
    /// The stack went away: `accept` fails with `ECONNABORTED` (and the
    /// listener never polls ready).
    pub dead: bool,
}

/// A connected stream.
#[derive(Debug)]
pub struct Stream {
    /// The session (None once closed towards the stack).
    pub session: Option<Session>,
    /// The peer closed (FIN): reads end after the data.
    pub peer_closed: bool,
    /// The peer reset the connection.
    pub reset: bool,
    /// The reset was reported to a read or write already.
    pub reset_reported: bool,
    /// shutdown(SHUT_RD).
    pub shut_rd: bool,
    /// shutdown(SHUT_WR): the session was closed towards the stack.
    pub shut_wr: bool,
    /// A tx-space notification is requested.
    pub want_tx: bool,
}

impl Stream {
    /// A connected stream over `s`.
    pub fn new(s: Session) -> Self {
        Self {
            session: Some(s),
            peer_closed: false,
            reset: false,
            reset_reported: false,
            shut_rd: false,
            shut_wr: false,
            want_tx: false,
        }
    }
}

/// What a hoststack socket is.
#[derive(Debug)]
pub enum Kind {
    /// Created (and maybe bound), not yet listening or connected.
    Fresh,
    /// Listening.
    Listener(Listener),
    /// A connect is under way (its request id).
    Connecting(u32),
    /// Connected.
    Stream(Stream),
    /// Its connect failed (`so_error` says why).
    Failed,
    /// A session or listener that belongs to the parent process.
    Inherited,
    /// A bound UDP socket.
    Dgram(Dgram),
}

/// A bound datagram socket: a UDP listener at the stack and its
/// datagram sessions (one per stack thread).
#[derive(Debug)]
pub struct Dgram {
    /// The stack's listener.
    pub handle: ListenerHandle,
    /// Where it is bound.
    pub local: SocketAddr,
    /// Its sessions, as the stack hands them over.
    pub sessions: Vec<Session>,
    /// connect(2)ed: the default destination and the only accepted source.
    pub peer: Option<SocketAddr>,
    /// Datagrams of this socket's family that arrived on a sibling's
    /// session (a port bound on 0.0.0.0 and on [::]: the stack's UDP
    /// socket for the port takes both families).
    pub pending: VecDeque<(Vec<u8>, hoststack_app::Datagram)>,
}

/// A hoststack socket.
#[derive(Debug)]
pub struct Sock {
    /// fds of this process that refer to it.
    pub refs: u32,
    /// AF_INET or AF_INET6.
    pub family: i32,
    /// A datagram (UDP) socket.
    pub dgram: bool,
    /// O_NONBLOCK (shared by its fds, as the open file description's).
    pub nonblock: bool,
    /// What it is.
    pub kind: Kind,
    /// The bound address.
    pub bound: Option<SocketAddr>,
    /// SO_RCVTIMEO.
    pub rcv_timeout: Option<Duration>,
    /// SO_SNDTIMEO.
    pub snd_timeout: Option<Duration>,
    /// Pending SO_ERROR.
    pub so_error: Errno,
    /// Epoll registrations watching it: (epoll, fd).
    pub watchers: Vec<(u32, RawFd)>,
    /// Threads waiting on it in poll/select or a blocking call.
    pub wakers: Vec<Arc<Waker>>,
}

impl Sock {
    /// A fresh socket.
    pub fn new(family: i32, nonblock: bool) -> Self {
        Self {
            refs: 1,
            family,
            dgram: false,
            nonblock,
            kind: Kind::Fresh,
            bound: None,
            rcv_timeout: None,
            snd_timeout: None,
            so_error: 0,
            watchers: Vec::new(),
            wakers: Vec::new(),
        }
    }

    /// What a poll would report now (epoll bits), as Linux reports it for
    /// a TCP socket in the same state.
    pub fn readiness(&self) -> u32 {
        match &self.kind {
            // An unbound UDP socket can send (it binds on the way).
            Kind::Fresh if self.dgram => ev::OUT | ev::WRNORM,
            // An unconnected TCP socket: writable and hung up.
            Kind::Fresh => ev::OUT | ev::HUP,
            Kind::Dgram(d) => {
                let mut r = 0;
                if !d.pending.is_empty() || d.sessions.iter().any(|s| s.readable() > 0) {
                    r |= ev::IN | ev::RDNORM;
                }
                if d.sessions.first().is_some_and(|s| s.write_space() > 0) {
                    r |= ev::OUT | ev::WRNORM;
                }
                r
            }
            Kind::Listener(l) => {
                // A dead listener (the stack went away) stays unready: an
                // event loop must not spin on it; accept says ECONNABORTED.
                if l.dead || l.backlog.is_empty() {
                    0
                } else {
                    ev::IN | ev::RDNORM
                }
            }
            Kind::Connecting(_) => 0,
            Kind::Failed => ev::OUT | ev::ERR | ev::HUP,
            Kind::Inherited => 0,
            Kind::Stream(s) => {
                if s.reset {
                    return ev::IN | ev::OUT | ev::ERR | ev::HUP | ev::RDHUP;
                }
                let mut r = 0;
                let (readable, space) = match &s.session {
                    Some(sess) => (sess.readable() > 0, sess.write_space() > 0),
                    None => (false, false),
                };
                if readable || s.peer_closed || s.shut_rd {
                    r |= ev::IN | ev::RDNORM;
                }
                if s.peer_closed {
                    r |= ev::RDHUP;
                }
                if s.shut_wr || s.session.is_none() {
                    if s.peer_closed {
                        r |= ev::HUP;
                    }
                    // Linux: a write-shut socket still polls writable.
                    r |= ev::OUT | ev::WRNORM;
                } else if space {
                    r |= ev::OUT | ev::WRNORM;
                }
                r
            }
        }
    }

    /// The stream, if connected.
    pub fn stream(&mut self) -> Option<&mut Stream> {
        match &mut self.kind {
            Kind::Stream(s) => Some(s),
            _ => None,
        }
    }
}

/// One registration of an fd in an epoll instance.
#[derive(Debug, Clone, Copy)]
pub struct Reg {
    /// Requested events and flags.
    pub events: u32,
    /// The user's data.
    pub data: u64,
    /// On the ready list.
    pub queued: bool,
    /// A one-shot registration that fired (until EPOLL_CTL_MOD).
    pub disabled: bool,
}

/// An epoll instance that watches hoststack sockets.
#[derive(Debug)]
pub struct Epoll {
    /// fds of this process that refer to it.
    pub fds: Vec<RawFd>,
    /// Wakes its sleepers when one of its sockets is touched.
    pub waker: Waker,
    /// Kernel event data that marks our own fds in the kernel set
    /// (`cookie` our waker, `cookie | 1` the worker's eventfd, `cookie | 2`
    /// the app socket); never
    /// equal to a user's data (re-chosen when a user's collides).
    pub cookie: u64,
    /// The worker eventfd registered in the kernel set, if any.
    pub worker_fd: Option<RawFd>,
    /// The app socket registered in the kernel set (`cookie | 2`), if any.
    pub socket_fd: Option<RawFd>,
    /// Registrations of hoststack sockets: (sock, fd) -> reg.
    pub regs: HashMap<(u32, RawFd), Reg>,
    /// Registrations that may be ready.
    pub ready: VecDeque<(u32, RawFd)>,
    /// Threads in epoll_wait on it.
    pub waiters: u32,
    /// Its waker was written and not yet cleared.
    pub woken: bool,
}

impl Epoll {
    /// A kernel fd of this instance.
    pub fn kfd(&self) -> RawFd {
        self.fds.first().copied().unwrap_or(-1)
    }

    /// Puts a registration on the ready list.
    pub fn queue(&mut self, key: (u32, RawFd)) {
        if let Some(r) = self.regs.get_mut(&key) {
            if !r.queued && !r.disabled {
                r.queued = true;
                self.ready.push_back(key);
            }
        }
    }

    /// Whether `data` could be mistaken for one of our cookies.
    pub fn collides(&self, data: u64) -> bool {
        data & !3 == self.cookie
    }
}

/// The process's connection to the stack.
pub struct Attached {
    /// The app (this process's connection).
    pub app: App,
    /// This process's worker.
    pub worker: Worker,
    /// Its eventfd.
    pub efd: RawFd,
    /// The app socket (it hangs up when the daemon goes away).
    pub sock_fd: RawFd,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("worker", &self.worker.index())
            .finish()
    }
}

/// The process's state.
#[derive(Debug)]
pub struct Inner {
    /// Settings.
    pub cfg: Config,
    /// The attachment, once made.
    pub attached: Option<Attached>,
    /// (app index, share token) to join as a forked child.
    pub join: Option<(u32, u64)>,
    /// A forked child's connection to the app socket, made at fork (while
    /// the child still has its parent's credentials), used when it joins.
    pub join_conn: Option<std::os::unix::net::UnixStream>,
    /// Attaching failed and the fallback is the kernel: pass through.
    pub disabled: bool,
    /// Attaching failed and was reported (fallback `fail`).
    pub failed: bool,
    /// Sockets.
    pub socks: Slab<Sock>,
    /// Epoll instances.
    pub epolls: Slab<Epoll>,
    /// Session handle -> sock.
    pub by_session: HashMap<u64, u32>,
    /// Listener handle -> the socks on it in this process (several with
    /// SO_REUSEPORT), in order.
    pub by_listener: HashMap<u64, Vec<u32>>,
    /// Round robin over a handle's SO_REUSEPORT socks.
    pub next_reuseport: usize,
    /// Connect request -> sock.
    pub connecting: HashMap<u32, u32>,
    /// Threads asleep with the worker's eventfd in their wait.
    pub sleepers: u32,
    /// The daemon closed the app socket.
    pub stack_dead: bool,
    /// The pid the state belongs to.
    pub pid: i32,
}

/// Maps a stack error to the errno a kernel socket would give.
pub fn errno_of(e: &SessionError) -> Errno {
    match e {
        SessionError::AlreadyListening(_) => libc::EADDRINUSE,
        SessionError::EndpointNotOnInterface(_) => libc::EADDRNOTAVAIL,
        SessionError::InvalidRemoteIp(_) => libc::ENETUNREACH,
        SessionError::NoSpace(_) | SessionError::QueueFull => libc::ENOBUFS,
        SessionError::InvalidValue(_) => libc::EINVAL,
        SessionError::Transport(s) if s.contains("refused") || s.contains("reset") => {
            libc::ECONNREFUSED
        }
        SessionError::Transport(s) if s.contains("timed out") || s.contains("timeout") => {
            libc::ETIMEDOUT
        }
        SessionError::Transport(s) if s.contains("unreachable") || s.contains("no route") => {
            libc::EHOSTUNREACH
        }
        SessionError::Transport(_) => libc::ECONNREFUSED,
        _ => libc::EIO,
    }
}

impl Inner {
    fn new() -> Self {
        Self {
            cfg: Config::from_env(),
            attached: None,
            join: None,
            join_conn: None,
            disabled: false,
            failed: false,
            socks: Slab::new(),
            epolls: Slab::new(),
            by_session: HashMap::new(),
            by_listener: HashMap::new(),
            next_reuseport: 0,
            connecting: HashMap::new(),
            sleepers: 0,
            stack_dead: false,
            pid: sys::getpid(),
        }
    }

    fn debug(&self, msg: &str) {
        if self.cfg.debug {
            sys::stderr(&format!("hoststack-preload[{}]: {msg}\n", self.pid));
        }
    }

    /// Attaches (or, in a forked child, joins) if not yet done. `Err` is
    /// the errno for the call that needed it; with the kernel fallback the
    /// state is then `disabled`.
    pub fn ensure_attached(&mut self) -> Result<(), Errno> {
        if self.attached.is_some() {
            return Ok(());
        }
        if self.disabled || self.failed {
            return Err(libc::ECONNREFUSED);
        }
        let r = match self.join {
            Some((app, token)) => match self.join_conn.take() {
                Some(c) => App::join_over(c, app, token),
                None => App::join(&self.cfg.app_socket, app, token),
            },
            None => {
                let name = self.cfg.app_name.clone().unwrap_or_else(|| {
                    let prog = std::env::args()
                        .next()
                        .and_then(|a| a.rsplit('/').next().map(str::to_owned))
                        .unwrap_or_else(|| "app".into());
                    format!("{prog}-{}", self.pid)
                });
                let opts = AppOptions {
                    use_eventfd: true,
                    scope_global: true,
                    scope_local: self.cfg.local_scope,
                    namespace_id: self.cfg.namespace.clone(),
                    namespace_secret: self.cfg.secret,
                    rx_fifo_size: self.cfg.rx_fifo,
                    tx_fifo_size: self.cfg.tx_fifo,
                    ..AppOptions::default()
                };
                App::attach(&self.cfg.app_socket, &name, opts)
            }
        };
        let mut app = match r {
            Ok(a) => a,
            Err(e) => {
                let how = match self.cfg.fallback {
                    Fallback::Kernel => {
                        self.disabled = true;
                        "using kernel sockets (HOSTSTACK_FALLBACK=kernel)"
                    }
                    Fallback::Fail => {
                        self.failed = true;
                        "failing its socket calls (set HOSTSTACK_FALLBACK=kernel to use kernel sockets instead)"
                    }
                };
                sys::stderr(&format!(
                    "hoststack-preload[{}]: cannot use the hoststack daemon at {} ({e}); {how}\n",
                    self.pid,
                    self.cfg.app_socket.display()
                ));
                return Err(if self.disabled {
                    libc::EAGAIN
                } else {
                    libc::ECONNREFUSED
                });
            }
        };
        let Some(worker) = app.worker() else {
            return Err(libc::EIO);
        };
        if self.join.is_none() {
            match app.share_token() {
                Ok(t) => self.join = Some((app.index(), t)),
                Err(e) => self.debug(&format!(
                    "no share token ({e}): forked children cannot join"
                )),
            }
        }
        let efd = worker.eventfd().map(|f| f.as_raw_fd()).ok_or(libc::EIO)?;
        self.debug(&format!(
            "attached as worker {} of app {}",
            worker.index(),
            app.index()
        ));
        let sock_fd = app.socket_fd();
        self.attached = Some(Attached {
            app,
            worker,
            efd,
            sock_fd,
        });
        Ok(())
    }

    /// The worker's eventfd, if attached.
    pub fn worker_fd(&self) -> Option<RawFd> {
        self.attached.as_ref().map(|a| a.efd)
    }

    /// The app socket to watch for a hang-up, while the stack is there.
    pub fn app_socket_fd(&self) -> Option<RawFd> {
        self.attached
            .as_ref()
            .filter(|_| !self.stack_dead)
            .map(|a| a.sock_fd)
    }

    /// A wait saw the app socket hang up: if the daemon is gone, every
    /// session is reset (its next call fails with `ECONNRESET`) and its
    /// sleepers are woken.
    pub fn stack_hung_up(&mut self) {
        let Some(a) = self.attached.as_ref() else {
            return;
        };
        if let Err(e) = a.app.check_stack() {
            self.stack_dead = true;
            self.stack_gone(&e);
        }
    }

    /// Takes the worker's waiting events and applies them.
    pub fn pump(&mut self) {
        loop {
            let Some(a) = self.attached.as_mut() else {
                return;
            };
            let evs = match a.worker.poll() {
                Ok(e) => e,
                Err(e) => {
                    self.stack_gone(&e);
                    return;
                }
            };
            if evs.is_empty() {
                return;
            }
            for e in evs {
                self.dispatch(e);
            }
        }
    }

    /// The stack went away: every session is reset.
    pub fn stack_gone(&mut self, e: &SessionError) {
        self.debug(&format!("the stack went away: {e}"));
        let ids: Vec<u32> = self.by_session.values().copied().collect();
        for sid in ids {
            if let Some(s) = self.socks.get_mut(sid as usize).and_then(Sock::stream) {
                s.reset = true;
            }
            self.touch(sid);
        }
        // Listeners: no connection will come; the next accept says so.
        let listeners: Vec<u32> = self.by_listener.values().flatten().copied().collect();
        for sid in listeners {
            if let Some(Kind::Listener(l)) = self.socks.get_mut(sid as usize).map(|s| &mut s.kind) {
                l.dead = true;
            }
        }
    }

    fn dispatch(&mut self, e: Event) {
        match e {
            Event::Accepted(s) => {
                let named = s
                    .listener()
                    .and_then(|l| self.by_listener.get(&l.as_u64()).cloned())
                    .unwrap_or_default();
                // A UDP listener's datagram session.
                if let Some(&d) = named.first() {
                    if let Some(Kind::Dgram(g)) =
                        self.socks.get_mut(d as usize).map(|x| &mut x.kind)
                    {
                        self.by_session.insert(s.handle().as_u64(), d);
                        g.sessions.push(s);
                        self.touch(d);
                        return;
                    }
                }
                let sid = self.listener_for(&named, s.local());
                let Some(sid) = sid else {
                    let _ = s.close();
                    return;
                };
                if let Some(Kind::Listener(l)) =
                    self.socks.get_mut(sid as usize).map(|s| &mut s.kind)
                {
                    self.by_session.insert(s.handle().as_u64(), sid);
                    l.backlog.push_back(Stream::new(s));
                    self.touch(sid);
                } else {
                    let _ = s.close();
                }
            }
            Event::Connected(req, r) => {
                let Some(sid) = self.connecting.remove(&req) else {
                    if let Ok(s) = r {
                        let _ = s.close();
                    }
                    return;
                };
                let Some(sock) = self.socks.get_mut(sid as usize) else {
                    return;
                };
                match r {
                    Ok(s) => {
                        self.by_session.insert(s.handle().as_u64(), sid);
                        sock.kind = Kind::Stream(Stream::new(s));
                    }
                    Err(e) => {
                        sock.so_error = errno_of(&e);
                        sock.kind = Kind::Failed;
                    }
                }
                self.touch(sid);
            }
            Event::Readable(h) | Event::Writable(h) => {
                if let Some(&sid) = self.by_session.get(&h.as_u64()) {
                    if matches!(e, Event::Readable(_)) {
                        self.sort_datagrams(sid);
                    }
                    if let Some(s) = self.stream_of(sid, h.as_u64()) {
                        if matches!(e, Event::Writable(_)) {
                            s.want_tx = false;
                        }
                    }
                    self.touch(sid);
                }
            }
            Event::Closed(h) | Event::Reset(h) | Event::Gone(h) => {
                let key = h.as_u64();
                let Some(&sid) = self.by_session.get(&key) else {
                    return;
                };
                if let Some(s) = self.stream_of(sid, key) {
                    match e {
                        Event::Reset(_) => s.reset = true,
                        _ => s.peer_closed = true,
                    }
                }
                if matches!(e, Event::Gone(_)) {
                    self.by_session.remove(&key);
                }
                self.touch(sid);
            }
            // Nothing was lost, only late: the program read its events
            // too slowly for the event queue.
            Event::FellBehind {
                postponed,
                max_wait,
            } => self.debug(&format!(
                "the event queue was full: {postponed} events waited up to {max_wait:?}"
            )),
        }
    }

    /// The listening sock an accepted session belongs to. The stack names
    /// its listener, but one port's listeners on 0.0.0.0 and on [::] may
    /// share that name (its TCP listen pools are per port): the session's
    /// own address family decides, as the kernel's two sockets would. An
    /// IPv4 session may go to an AF_INET6 listener (v4-mapped) when no
    /// AF_INET one takes it; an IPv6 one never goes to an AF_INET one.
    fn listener_for(&mut self, named: &[u32], local: Endpoint) -> Option<u32> {
        let want_v6 = local.ip.is_ipv6();
        let fits = |socks: &Slab<Sock>, sid: u32, exact_family: bool| {
            let Some(sock) = socks.get(sid as usize) else {
                return false;
            };
            let Kind::Listener(l) = &sock.kind else {
                return false;
            };
            let family_ok = if exact_family {
                (sock.family == libc::AF_INET6) == want_v6
            } else {
                sock.family == libc::AF_INET6 || !want_v6
            };
            family_ok
                && l.endpoint.port() == local.port
                && (l.endpoint.ip().is_unspecified() || l.endpoint.ip() == local.ip)
        };
        // SO_REUSEPORT siblings share a handle: the ones the process waits
        // on take turns.
        let used = |socks: &Slab<Sock>, sid: u32| matches!(socks.get(sid as usize).map(|s| &s.kind), Some(Kind::Listener(l)) if l.used);
        let exact: Vec<u32> = named
            .iter()
            .copied()
            .filter(|&n| fits(&self.socks, n, true))
            .collect();
        if !exact.is_empty() {
            let waited: Vec<u32> = exact
                .iter()
                .copied()
                .filter(|&n| used(&self.socks, n))
                .collect();
            let pool = if waited.is_empty() { &exact } else { &waited };
            self.next_reuseport = self.next_reuseport.wrapping_add(1);
            return Some(pool[self.next_reuseport % pool.len()]);
        }
        let mut ids: Vec<u32> = self.by_listener.values().flatten().copied().collect();
        ids.sort_unstable();
        ids.iter()
            .copied()
            .find(|&i| fits(&self.socks, i, true))
            .or_else(|| named.iter().copied().find(|&n| fits(&self.socks, n, false)))
            .or_else(|| ids.iter().copied().find(|&i| fits(&self.socks, i, false)))
    }

    /// When UDP sock `sid` shares its port with a sock of the other address
    /// family, moves each datagram its sessions hold to the sock of the
    /// datagram's family (as the kernel's two sockets would each get
    /// theirs). A no-op for a port with one sock.
    pub fn sort_datagrams(&mut self, sid: u32) {
        let Some(sock) = self.socks.get(sid as usize) else {
            return;
        };
        let Kind::Dgram(d) = &sock.kind else {
            return;
        };
        let port = d.local.port();
        let find = |family: i32| {
            self.by_listener.values().flatten().copied().find(|&o| {
                self.socks.get(o as usize).is_some_and(|x| {
                    x.family == family
                        && matches!(&x.kind, Kind::Dgram(g) if g.local.port() == port)
                })
            })
        };
        let (v4, v6) = (find(libc::AF_INET), find(libc::AF_INET6));
        let (Some(v4), Some(v6)) = (v4, v6) else {
            return;
        };
        let mut moved: Vec<(u32, Vec<u8>, hoststack_app::Datagram)> = Vec::new();
        if let Some(Kind::Dgram(d)) = self.socks.get_mut(sid as usize).map(|x| &mut x.kind) {
            let mut buf = vec![0u8; 65536];
            for sess in &mut d.sessions {
                while let Ok(Some((n, dg))) = sess.recv_datagram(&mut buf) {
                    let to = if dg.remote.ip.is_ipv6() { v6 } else { v4 };
                    moved.push((to, buf[..n].to_vec(), dg));
                }
            }
        }
        for (to, data, dg) in moved {
            if let Some(Kind::Dgram(d)) = self.socks.get_mut(to as usize).map(|x| &mut x.kind) {
                d.pending.push_back((data, dg));
            }
            self.touch(to);
        }
    }

    /// Records that listening sock `sid` is on stack listener `h`.
    pub fn listener_add(&mut self, h: ListenerHandle, sid: u32) {
        let v = self.by_listener.entry(h.as_u64()).or_default();
        if !v.contains(&sid) {
            v.push(sid);
        }
    }

    /// Forgets `sid` on `h`; true when another sock of the process is
    /// still active on it (a SO_REUSEPORT sibling).
    fn listener_remove(&mut self, h: ListenerHandle, sid: u32) -> bool {
        let Some(v) = self.by_listener.get_mut(&h.as_u64()) else {
            return false;
        };
        v.retain(|&x| x != sid);
        let others = v.iter().any(|&x| {
            matches!(self.socks.get(x as usize).map(|s| &s.kind), Some(Kind::Listener(l)) if l.active)
        });
        if v.is_empty() {
            self.by_listener.remove(&h.as_u64());
        }
        others
    }

    /// An active SO_REUSEPORT listener of this process on `endpoint` with
    /// `family`, whose stack listener another such sock may share.
    pub fn reuseport_sibling(&self, endpoint: SocketAddr, family: i32) -> Option<ListenerHandle> {
        self.by_listener.values().flatten().find_map(|&sid| {
            let sock = self.socks.get(sid as usize)?;
            match &sock.kind {
                Kind::Listener(l)
                    if l.active
                        && l.reuseport
                        && l.endpoint == endpoint
                        && sock.family == family =>
                {
                    Some(l.handle)
                }
                _ => None,
            }
        })
    }

    /// The stream of session `key` on sock `sid`: the sock's own, or one
    /// waiting in its backlog.
    fn stream_of(&mut self, sid: u32, key: u64) -> Option<&mut Stream> {
        match &mut self.socks.get_mut(sid as usize)?.kind {
            Kind::Stream(s) => Some(s),
            Kind::Listener(l) => l.backlog.iter_mut().find(|s| {
                s.session
                    .as_ref()
                    .is_some_and(|x| x.handle().as_u64() == key)
            }),
            _ => None,
        }
    }

    /// Something changed on `sid`: its registrations may be ready, and its
    /// sleepers are woken.
    pub fn touch(&mut self, sid: u32) {
        let Some(sock) = self.socks.get(sid as usize) else {
            return;
        };
        for &(eid, fd) in &sock.watchers {
            if let Some(ep) = self.epolls.get_mut(eid as usize) {
                ep.queue((sid, fd));
                if ep.waiters > 0 && !ep.woken {
                    ep.woken = true;
                    ep.waker.wake();
                }
            }
        }
        for w in &sock.wakers {
            w.wake();
        }
    }

    /// Before a kernel wait that includes the worker's eventfd: false when
    /// events wait (pump and look again instead of sleeping).
    pub fn begin_sleep(&mut self) -> bool {
        let Some(a) = self.attached.as_ref() else {
            return true;
        };
        if self.sleepers == 0 && !a.worker.announce_sleep() {
            return false;
        }
        self.sleepers += 1;
        true
    }

    /// The longest a kernel wait may last, in milliseconds, given the one
    /// its caller wants (-1: forever): a few while notifications the
    /// stack's full queue refused wait in the app library, so the next
    /// poll posts them soon.
    pub fn sleep_ms(&self, wanted: i32) -> i32 {
        const RETRY_MS: i32 = 5;
        match &self.attached {
            Some(a) if a.worker.has_unposted() && !(0..=RETRY_MS).contains(&wanted) => RETRY_MS,
            _ => wanted,
        }
    }

    /// After that wait; `fired` when the wait saw the worker's eventfd.
    pub fn end_sleep(&mut self, fired: bool) {
        self.sleepers = self.sleepers.saturating_sub(1);
        let Some(a) = self.attached.as_ref() else {
            return;
        };
        if self.sleepers == 0 {
            let _ = a.worker.end_sleep();
        } else if fired {
            let _ = a.worker.drain_eventfd();
        }
    }

    /// After a blocking call into the app library (which sleeps on the
    /// worker's queue itself and withdraws the sleep announcement): if
    /// threads still sleep, announce again, or wake them all when events
    /// wait.
    pub fn rearm(&mut self) {
        let Some(a) = self.attached.as_ref() else {
            return;
        };
        if self.sleepers > 0 && !a.worker.announce_sleep() {
            sys::eventfd_signal(a.efd);
        }
    }

    /// Makes sure this process's worker is on listener `sid` and marks it
    /// used (the process waits on it).
    pub fn use_listener(&mut self, sid: u32) {
        let Some(Kind::Listener(l)) = self.socks.get(sid as usize).map(|s| &s.kind) else {
            return;
        };
        if l.active {
            if let Some(Kind::Listener(l)) = self.socks.get_mut(sid as usize).map(|s| &mut s.kind) {
                l.used = true;
            }
            return;
        }
        let (endpoint, reuseport) = (l.endpoint, l.reuseport);
        let family = self.socks.get(sid as usize).map_or(0, |s| s.family);
        if reuseport {
            if let Some(h) = self.reuseport_sibling(endpoint, family) {
                if let Some(Kind::Listener(l)) =
                    self.socks.get_mut(sid as usize).map(|s| &mut s.kind)
                {
                    l.handle = h;
                    l.active = true;
                    l.used = true;
                }
                self.listener_add(h, sid);
                return;
            }
        }
        if self.ensure_attached().is_err() {
            return;
        }
        let Some(a) = self.attached.as_mut() else {
            return;
        };
        let r = a.worker.listen(endpoint);
        self.rearm();
        let Some(a) = self.attached.as_mut() else {
            return;
        };
        match r {
            Ok(h) => {
                let Some(Kind::Listener(l)) = self.socks.get_mut(sid as usize).map(|s| &mut s.kind)
                else {
                    return;
                };
                l.handle = h;
                l.active = true;
                l.used = true;
                if let Some(pw) = l.parent_worker.take() {
                    let _ = a.worker.remove_listener_worker(pw, h);
                }
                self.listener_add(h, sid);
                let msg = format!("listening on {endpoint} from this process's worker");
                self.debug(&msg);
            }
            Err(e) => {
                // Always said: connections would go to a process that
                // never accepts them.
                sys::stderr(&format!(
                    "hoststack-preload[{}]: cannot take over the listener on {endpoint}: {e}\n",
                    self.pid
                ));
            }
        }
    }

    /// Drops one fd's reference to `sid`; the last one closes it.
    pub fn release(&mut self, sid: u32) {
        let Some(sock) = self.socks.get_mut(sid as usize) else {
            return;
        };
        sock.refs = sock.refs.saturating_sub(1);
        if sock.refs > 0 {
            return;
        }
        let sock = self.socks.remove(sid as usize);
        for (eid, fd) in &sock.watchers {
            if let Some(ep) = self.epolls.get_mut(*eid as usize) {
                ep.regs.remove(&(sid, *fd));
            }
        }
        match sock.kind {
            Kind::Listener(l) => {
                let sibling_active = self.listener_remove(l.handle, sid);
                for s in l.backlog.into_iter().filter_map(|s| s.session) {
                    self.by_session.remove(&s.handle().as_u64());
                    let _ = s.close();
                }
                if l.active && !sibling_active {
                    if let Some(a) = self.attached.as_mut() {
                        let _ = a.worker.unlisten(l.handle);
                    }
                    self.rearm();
                }
            }
            Kind::Stream(s) => {
                if let Some(sess) = s.session {
                    self.by_session.remove(&sess.handle().as_u64());
                    let _ = sess.close();
                }
            }
            Kind::Connecting(req) => {
                // Its session, if it comes, is closed when it does.
                self.connecting.remove(&req);
            }
            Kind::Dgram(d) => {
                self.listener_remove(d.handle, sid);
                for x in &d.sessions {
                    self.by_session.remove(&x.handle().as_u64());
                }
                // The stack frees a UDP listener's sessions with it.
                drop(d.sessions);
                if let Some(a) = self.attached.as_mut() {
                    let _ = a.worker.unlisten(d.handle);
                }
                self.rearm();
            }
            Kind::Fresh | Kind::Failed | Kind::Inherited => {}
        }
    }

    /// In a forked child, right after fork: forget the parent's worker and
    /// sessions (they stay the parent's) and keep listeners to share.
    pub fn after_fork_child(&mut self) {
        self.pid = sys::getpid();
        if let Some(a) = self.attached.take() {
            // The parent's connection, queues and mappings: never touched
            // here, never closed (closing the connection's fd copy would
            // be harmless, but the sessions' memory must stay mapped).
            std::mem::forget(a);
        }
        self.sleepers = 0;
        // The parent's own unused connection (closing our copy leaves it
        // the parent's).
        drop(self.join_conn.take());
        if self.join.is_some() {
            // Connect now: a server child may drop privileges before it
            // first needs the stack (nginx workers become `nobody`).
            self.join_conn = std::os::unix::net::UnixStream::connect(&self.cfg.app_socket).ok();
        }
        self.connecting.clear();
        self.by_session.clear();
        self.by_listener.clear();
        for (_, sock) in self.socks.iter_mut() {
            sock.wakers.clear();
            let kind = std::mem::replace(&mut sock.kind, Kind::Inherited);
            sock.kind = match kind {
                Kind::Listener(mut l) => {
                    for s in l.backlog.drain(..) {
                        std::mem::forget(s);
                    }
                    l.active = false;
                    l.used = false;
                    Kind::Listener(l)
                }
                Kind::Stream(s) => {
                    std::mem::forget(s);
                    Kind::Inherited
                }
                Kind::Dgram(d) => {
                    std::mem::forget(d);
                    Kind::Inherited
                }
                Kind::Fresh => Kind::Fresh,
                Kind::Failed => Kind::Failed,
                Kind::Connecting(_) | Kind::Inherited => Kind::Inherited,
            };
        }
        for (_, ep) in self.epolls.iter_mut() {
            ep.worker_fd = None;
            ep.socket_fd = None;
            ep.waiters = 0;
            ep.woken = false;
        }
    }

    /// Before fork, in the parent: note which listeners the child should
    /// take from this process's worker when it starts using them.
    pub fn before_fork(&mut self) {
        let me = self.attached.as_ref().map(|a| a.worker.index());
        for (_, sock) in self.socks.iter_mut() {
            if let Kind::Listener(l) = &mut sock.kind {
                if l.active {
                    l.parent_worker = if l.used { None } else { me };
                }
            }
        }
    }
}
