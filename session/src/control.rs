//! Control operations run on the main thread.
//!
//! Attach, detach, worker changes, listen, unlisten, connect and disconnect
//! change tables every stack thread reads, so they all run on one thread,
//! in order: the one running [`ControlThread::run`]. A call made on that
//! thread runs at once; a call from any other thread (an app's worker, a
//! builtin app's callback on a stack thread, the app socket) is forwarded to
//! it as a job and the caller waits for the answer. Callbacks queued while
//! the layer lock was held run after it is released, on the main thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::ThreadId;
use std::time::Duration;

use crate::app_callbacks::AppCallbacks;
use crate::application::AppIdentity;
use crate::listen_ack::ListenOutcome;
use crate::session_layer::{AttachReply, SessionLayer};
use hoststack_app_proto::endpoint::{Endpoint, TransportProto};
use hoststack_app_proto::error::{SessionError, SessionResult};
use hoststack_app_proto::handle::{AppIndex, ListenerHandle, SessionHandle, WorkerMapIndex};
use hoststack_app_proto::options::AppOptions;

/// A forwarded call: runs under the lock and returns the reply to send
/// once the callbacks it queued have run.
type Job = Box<dyn FnOnce(&mut SessionLayer) -> Box<dyn FnOnce() + Send> + Send>;

struct Shared {
    layer: Arc<Mutex<SessionLayer>>,
    jobs: Mutex<Sender<Job>>,
    main: OnceLock<ThreadId>,
    forwarded: AtomicU64,
    direct: AtomicU64,
}

/// A handle to call control operations from any thread. Cheap to clone.
#[derive(Clone)]
pub struct ControlPlane {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("main", &self.shared.main.get())
            .finish_non_exhaustive()
    }
}

/// The main thread's side: runs forwarded jobs.
pub struct ControlThread {
    shared: Arc<Shared>,
    jobs: Receiver<Job>,
}

impl std::fmt::Debug for ControlThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlThread")
    }
}

fn lock(layer: &Mutex<SessionLayer>) -> MutexGuard<'_, SessionLayer> {
    layer.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` on the layer under its lock, then the callbacks it queued.
fn run_locked<R>(layer: &Mutex<SessionLayer>, f: impl FnOnce(&mut SessionLayer) -> R) -> R {
    let (r, deferred) = {
        let mut l = lock(layer);
        // Workers whose last session ended on a stack thread since.
        l.handle_thread_reports();
        let r = f(&mut l);
        (r, l.take_deferred())
    };
    for d in deferred {
        d();
    }
    r
}

/// A control plane over `layer`: the handle, and the runner the main thread
/// drives.
pub fn control_plane(layer: Arc<Mutex<SessionLayer>>) -> (ControlPlane, ControlThread) {
    let (tx, rx) = channel();
    let shared = Arc::new(Shared {
        layer,
        jobs: Mutex::new(tx),
        main: OnceLock::new(),
        forwarded: AtomicU64::new(0),
        direct: AtomicU64::new(0),
    });
    (
        ControlPlane {
            shared: shared.clone(),
        },
        ControlThread { shared, jobs: rx },
    )
}

impl ControlThread {
    /// Claims the calling thread as the main thread.
    pub fn claim(&self) -> SessionResult<()> {
        let me = std::thread::current().id();
        let main = *self.shared.main.get_or_init(|| me);
        if main != me {
            return Err(SessionError::InvalidValue(
                "another thread is already the control thread".into(),
            ));
        }
        Ok(())
    }

    /// Runs forwarded jobs for up to `timeout`; returns how many ran.
    /// Returns early once every [`ControlPlane`] handle is gone.
    pub fn serve(&self, timeout: Duration) -> SessionResult<usize> {
        self.claim()?;
        let mut n = 0;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.jobs.recv_timeout(left) {
                Ok(job) => {
                    let reply = run_locked(&self.shared.layer, job);
                    reply();
                    n += 1;
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return Ok(n);
                }
            }
        }
    }

    /// Runs jobs until `stop` returns true (checked at least every 50 ms).
    pub fn run(&self, stop: impl Fn() -> bool) -> SessionResult<()> {
        self.claim()?;
        while !stop() {
            match self.jobs.recv_timeout(Duration::from_millis(50)) {
                Ok(job) => run_locked(&self.shared.layer, job)(),
                Err(RecvTimeoutError::Timeout) => run_locked(&self.shared.layer, |_| ()),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(())
    }
}

impl ControlPlane {
    /// The shared layer (for reading counters, `show` commands).
    pub fn layer(&self) -> &Arc<Mutex<SessionLayer>> {
        &self.shared.layer
    }

    /// Calls forwarded to the main thread so far.
    pub fn forwarded_calls(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Calls run directly on the main thread so far.
    pub fn direct_calls(&self) -> u64 {
        self.shared.direct.load(Ordering::Relaxed)
    }

    /// The main thread, once one has claimed the role.
    pub fn main_thread(&self) -> Option<ThreadId> {
        self.shared.main.get().copied()
    }

    /// Runs `f` on the main thread and returns its result.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut SessionLayer) -> R + Send + 'static,
    ) -> SessionResult<R> {
        if self.shared.main.get() == Some(&std::thread::current().id()) {
            self.shared.direct.fetch_add(1, Ordering::Relaxed);
            return Ok(run_locked(&self.shared.layer, f));
        }
        let (tx, rx) = channel();
        let job: Job = Box::new(move |l| {
            let r = f(l);
            Box::new(move || {
                let _ = tx.send(r);
            })
        });
        self.shared
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| SessionError::InvalidValue("the control thread is gone".into()))?;
        self.shared.forwarded.fetch_add(1, Ordering::Relaxed);
        rx.recv()
            .map_err(|_| SessionError::InvalidValue("the control thread dropped the call".into()))
    }

    /// Attaches a builtin app.
    pub fn attach_builtin(
        &self,
        name: &str,
        options: AppOptions,
        callbacks: AppCallbacks,
    ) -> SessionResult<AttachReply> {
        let name = name.to_string();
        self.call(move |l| l.attach(AppIdentity::Builtin(name), options, Some(callbacks)))?
    }

    /// Attaches an external app for api client `client`.
    pub fn attach_external(
        &self,
        client: u32,
        name: &str,
        options: AppOptions,
    ) -> SessionResult<AttachReply> {
        let name = name.to_string();
        self.call(move |l| l.attach(AppIdentity::External { client, name }, options, None))?
    }

    /// Detaches an app.
    pub fn detach(&self, app: AppIndex) -> SessionResult<()> {
        self.call(move |l| l.detach(app))?
    }

    /// Adds a worker to an app.
    pub fn add_worker(
        &self,
        app: AppIndex,
        api_client: Option<u32>,
    ) -> SessionResult<WorkerMapIndex> {
        self.call(move |l| l.add_worker(app, api_client).map(|(m, _)| m))?
    }

    /// Deletes a worker of an app.
    pub fn del_worker(&self, app: AppIndex, worker: WorkerMapIndex) -> SessionResult<()> {
        self.call(move |l| l.del_worker(app, worker))?
    }

    /// Listens.
    pub fn listen(
        &self,
        app: AppIndex,
        worker: WorkerMapIndex,
        proto: TransportProto,
        endpoint: Endpoint,
    ) -> SessionResult<ListenerHandle> {
        self.call(move |l| l.listen(app, worker, proto, endpoint))?
    }

    /// Listens and waits (outside the layer lock) until every stack thread
    /// opened the transport listener, so that the caller's "listening" is
    /// true the moment it hears it; a refusal, or threads that do not
    /// answer within `timeout`, undo the listen and are the error. Not for
    /// a stack thread: it would wait for itself.
    pub fn listen_confirmed(
        &self,
        app: AppIndex,
        worker: WorkerMapIndex,
        proto: TransportProto,
        endpoint: Endpoint,
        timeout: Duration,
    ) -> SessionResult<ListenerHandle> {
        let (lh, ack) = self.call(move |l| l.listen_acked(app, worker, proto, endpoint))??;
        let error = match ack.wait(timeout) {
            ListenOutcome::Open => return Ok(lh),
            ListenOutcome::Refused(e) => e,
            ListenOutcome::TimedOut { outstanding } => SessionError::Transport(format!(
                "listen on {endpoint}: {outstanding} stack thread(s) did not open it within {timeout:?}"
            )),
        };
        let _ = self.unlisten(app, worker, lh);
        Err(error)
    }

    /// Stops listening.
    pub fn unlisten(
        &self,
        app: AppIndex,
        worker: WorkerMapIndex,
        listener: ListenerHandle,
    ) -> SessionResult<()> {
        self.call(move |l| l.unlisten(app, worker, listener))?
    }

    /// Connects; the result comes as a connected event.
    pub fn connect(
        &self,
        app: AppIndex,
        worker: WorkerMapIndex,
        proto: TransportProto,
        remote: Endpoint,
        opaque: u64,
    ) -> SessionResult<()> {
        self.call(move |l| l.connect(app, worker, proto, remote, opaque))?
    }

    /// Every session of every stack thread, by thread (threads that do not
    /// answer within `timeout` are left out).
    pub fn sessions(
        &self,
        timeout: Duration,
        details: bool,
    ) -> SessionResult<Vec<(u32, Vec<crate::session_info::SessionInfo>)>> {
        let (rx, n) = self.call(move |l| l.request_sessions(details))?;
        let end = std::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(r) => out.push(r),
                Err(_) => break,
            }
        }
        out.sort_by_key(|(t, _)| *t);
        Ok(out)
    }

    /// Disconnects a session the app owns.
    pub fn disconnect(&self, app: AppIndex, session: SessionHandle) -> SessionResult<()> {
        self.call(move |l| l.disconnect(app, session))?
    }
}
