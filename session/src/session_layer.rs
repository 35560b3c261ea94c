//! The session layer's shared state and its control operations: attach,
//! detach, workers, listen, unlisten, connect, disconnect, and the
//! bookkeeping stack threads do when a session is born or dies.
//!
//! One `SessionLayer` exists per stack, shared behind a mutex. Control
//! operations run on the main (control) thread — [`crate::control`]
//! forwards calls from other threads there — and never wait for a stack
//! thread: what a thread must do (listen on its interface, connect, close an
//! app's sessions) is sent to it as a [`WorkerCommand`] and done in its next
//! loop. Stack threads never lock the layer: what they need to give a
//! session to an app worker (the worker's share, the listener's workers)
//! reaches them in commands, and a session's birth and death touch only
//! the thread's own tables (see `app_worker` and `session_owners`).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use hashbrown::HashMap;
use slab::Slab;
use tracing::{debug, warn};

use crate::app_callbacks::{AppCallbacks, Deferred};
use crate::app_event_queue::{AppEventQueue, Backlogs};
use crate::app_listener::AppListener;
use crate::app_socket_outbox::AppSocketOutbox;
use crate::app_worker::{AppWorker, AppWorkerShare, AppWorkerSpec, EventSink, OwnedPair};
use crate::application::{AppIdentity, Application};
use crate::cert::{CertKeyStore, CryptoEngines};
use crate::corruption_verdict::{CorruptionRecord, CorruptionVerdict};
use crate::cut_through_segments::CutThroughSegments;
use crate::listen_ack::ListenAck;
use crate::lookup::{ListenerQuery, ListenerScope, SessionLookup};
use crate::namespace::AppNamespaces;
use crate::segment_manager::{SegmentManager, SegmentManagerConfig};
use crate::session_owners::SessionOwners;
use hoststack_app_proto::app_event::{APP_EVENT_SIZE, AppEvent, FifoLocation};

use hoststack_app_proto::endpoint::{Endpoint, IpFamily, TransportProto};
use hoststack_app_proto::error::{SessionError, SessionResult};
use hoststack_app_proto::handle::{
    AppIndex, AppWorkerIndex, CertKeyIndex, ListenerHandle, NamespaceIndex, SessionHandle,
    WorkerMapIndex,
};
use hoststack_app_proto::options::AppOptions;
use hoststack_shm::eventfd::EventFd;
use hoststack_shm::fifo::Fifo;
use hoststack_shm::message_queue::MessageQueue;

/// What a stack thread is asked to do by the control plane.
#[derive(Debug)]
pub enum WorkerCommand {
    /// Open the transport listener.
    Listen {
        /// The listener.
        listener: ListenerHandle,
        /// Protocol.
        proto: TransportProto,
        /// Where.
        endpoint: Endpoint,
        /// The app workers its sessions go to, by map index.
        workers: Vec<Arc<AppWorkerShare>>,
        /// Where the thread reports whether its transport opened it.
        ack: Arc<ListenAck>,
    },
    /// The app workers a listener's sessions go to changed.
    ListenerWorkers {
        /// The listener.
        listener: ListenerHandle,
        /// Its workers, by map index.
        workers: Vec<Arc<AppWorkerShare>>,
    },
    /// Close the transport listener.
    Unlisten {
        /// The listener.
        listener: ListenerHandle,
        /// Protocol.
        proto: TransportProto,
    },
    /// Open a transport connection for an app worker.
    Connect {
        /// Who asked.
        share: Arc<AppWorkerShare>,
        /// Protocol.
        proto: TransportProto,
        /// Where to.
        remote: Endpoint,
        /// Handed back in the connected event.
        opaque: u64,
    },
    /// Create both halves of a cut-through session.
    CutThrough(Box<CutThroughPlan>),
    /// Close a session (the owner was checked).
    Disconnect {
        /// The session.
        session: SessionHandle,
    },
    /// Raise rx and tx events for a session, so an app that paused can
    /// continue without new data arriving.
    WakeSession {
        /// The session.
        session: SessionHandle,
    },
    /// A message an external app without private rx queues sent over its
    /// app socket for this thread.
    AppMessage {
        /// The app.
        app: AppIndex,
        /// What it sent.
        message: hoststack_app_proto::app_rx_queue::RxMessage,
    },
    /// Serve an external app's rx queue on this thread.
    AddAppQueue {
        /// The app.
        app: AppIndex,
        /// Its queue for this thread.
        queue: Box<hoststack_app_proto::app_rx_queue::AppRxQueue>,
    },
    /// Stop serving an app's rx queue (the app is detaching).
    RemoveAppQueue {
        /// The app.
        app: AppIndex,
    },
    /// Report this thread's sessions (for `show session`).
    ShowSessions {
        /// With each connection's transport details.
        details: bool,
        /// Where the answer goes: the thread index and its sessions.
        reply: Sender<(u32, Vec<crate::session_info::SessionInfo>)>,
    },
    /// Reset every session of an app that is detaching or whose workers
    /// are deleted.
    CloseAppWorkerSessions {
        /// The app worker.
        app_worker: AppWorkerIndex,
    },
}

/// Everything a thread needs to build a cut-through pair.
#[derive(Debug)]
pub struct CutThroughPlan {
    /// Protocol.
    pub proto: TransportProto,
    /// The listener connected to.
    pub listener: ListenerHandle,
    /// Server app worker (owns the fifos).
    pub server: NewSessionParts,
    /// Client app worker.
    pub client: NewSessionParts,
    /// Endpoint the client asked for (server side's local end).
    pub server_endpoint: Endpoint,
    /// Client's connect opaque.
    pub opaque: u64,
}

/// How a stack thread reaches one app worker and where a new session's
/// fifos are.
#[derive(Debug)]
pub struct NewSessionParts {
    /// The app worker.
    pub share: Arc<AppWorkerShare>,
    /// (rx, tx) seen from this side.
    pub fifos: (Fifo, Fifo),
    /// Where they are, for an external app.
    pub location: FifoLocation,
    /// The pair to free with the session (None for the client half of a
    /// cut-through pair).
    pub owned_pair: Option<OwnedPair>,
}

/// A stack thread as the control plane sees it.
pub struct ThreadPort {
    /// Its command inbox.
    pub commands: Sender<WorkerCommand>,
    /// Wakes it if it sleeps.
    pub wake: Arc<dyn Fn() + Send + Sync>,
    /// Who owns its sessions.
    pub owners: Arc<SessionOwners>,
}

impl ThreadPort {
    /// A thread reached through `commands`, woken by `wake`.
    pub fn new(commands: Sender<WorkerCommand>, wake: Arc<dyn Fn() + Send + Sync>) -> Self {
        Self {
            commands,
            wake,
            owners: Arc::default(),
        }
    }
}

impl std::fmt::Debug for ThreadPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadPort")
    }
}

/// A listener as the control plane keeps it.
#[derive(Debug)]
pub struct ListenerEntry {
    /// App, endpoint and the workers sessions go to.
    pub listener: AppListener,
    /// Namespace of the app.
    pub namespace: NamespaceIndex,
    /// Entered in the namespace's local table.
    pub local: bool,
    /// Listening through the transport.
    pub global: bool,
}

/// What attach hands back.
#[derive(Debug)]
pub struct AttachReply {
    /// The app's index.
    pub app: AppIndex,
    /// Its first worker (map index 0).
    pub worker: AppWorkerIndex,
}

/// Counts of everything the layer holds, to prove detach frees it all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerCounters {
    /// Attached apps.
    pub apps: usize,
    /// App workers.
    pub app_workers: usize,
    /// Listeners.
    pub listeners: usize,
    /// Live sessions.
    pub sessions: usize,
    /// Segments of all app workers.
    pub segments: usize,
    /// Fifos allocated.
    pub fifos: usize,
    /// Lookup table entries.
    pub table_entries: usize,
    /// Apps detached for corrupting their shared memory.
    pub apps_detached_corrupt: u64,
    /// Warnings held back by the log rate limiter.
    pub log_lines_suppressed: u64,
}

/// The shared state of the session layer.
pub struct SessionLayer {
    /// App namespaces.
    pub namespaces: AppNamespaces,
    apps: Slab<Application>,
    app_ids: HashMap<AppIdentity, AppIndex>,
    app_workers: Slab<AppWorker>,
    listeners: Slab<ListenerEntry>,
    /// Lookup tables.
    pub lookup: SessionLookup,
    /// Cert/key store.
    pub certs: CertKeyStore,
    /// Crypto engines.
    pub engines: CryptoEngines,
    /// Sizes an app that asks for 0 gets (a daemon's configured defaults).
    pub app_defaults: hoststack_app_proto::options::AppSizeDefaults,
    /// Whether external apps get an rx message queue per stack thread in
    /// shared memory (true, the default). Without, their control requests
    /// and io notifications come over the app socket, one system call each.
    pub private_rx_queues: bool,
    threads: Vec<ThreadPort>,
    next_thread: usize,
    reach: Vec<crate::thread_reach::ThreadReach>,
    local_addrs: Vec<IpAddr>,
    no_lookup: [bool; 2],
    segment_seq: u64,
    deferred: Vec<Deferred>,
    outbox: Arc<AppSocketOutbox>,
    segment_ids: Arc<std::sync::atomic::AtomicU32>,
    /// The segments of each (server worker, client worker) pair that has
    /// had a cut-through session; an entry goes when either worker does.
    cut_through: HashMap<(AppWorkerIndex, AppWorkerIndex), Arc<CutThroughSegments>>,
    /// Pairs whose worker went while a session of theirs lives on (the
    /// peer has not closed its half yet): counted until their segments go,
    /// out of the table, whose worker indices may be reused.
    cut_through_retired: Vec<Arc<CutThroughSegments>>,
    backlogs: Arc<Backlogs>,
    /// Dying app workers whose last session just ended, sent by the stack
    /// thread that ended it.
    reaps: (Sender<AppWorkerIndex>, Receiver<AppWorkerIndex>),
    verdicts: (Sender<CorruptionVerdict>, Receiver<CorruptionVerdict>),
    corruption: CorruptionRecord,
}

impl std::fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLayer")
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

fn proto_slot(p: TransportProto) -> usize {
    match p {
        TransportProto::Tcp => 0,
        TransportProto::Udp => 1,
    }
}

impl SessionLayer {
    /// An empty layer serving `threads` stack threads.
    pub fn new(threads: Vec<ThreadPort>) -> Self {
        Self {
            namespaces: AppNamespaces::new(),
            apps: Slab::new(),
            app_ids: HashMap::new(),
            app_workers: Slab::new(),
            listeners: Slab::new(),
            lookup: SessionLookup::new(),
            certs: CertKeyStore::new(),
            engines: CryptoEngines::new(),
            app_defaults: hoststack_app_proto::options::AppSizeDefaults::default(),
            private_rx_queues: true,
            threads,
            next_thread: 0,
            reach: Vec::new(),
            local_addrs: Vec::new(),
            no_lookup: [false; 2],
            segment_seq: 0,
            deferred: Vec::new(),
            outbox: Arc::default(),
            segment_ids: Arc::default(),
            cut_through: HashMap::new(),
            cut_through_retired: Vec::new(),
            backlogs: Arc::default(),
            reaps: channel(),
            verdicts: channel(),
            corruption: CorruptionRecord::default(),
        }
    }

    /// Where stack threads leave the fds of segments they added.
    pub fn outbox(&self) -> Arc<AppSocketOutbox> {
        self.outbox.clone()
    }

    /// Where a stack thread says a dying app worker's last session ended.
    pub fn reaper(&self) -> Sender<AppWorkerIndex> {
        self.reaps.0.clone()
    }

    /// Who owns stack thread `thread`'s sessions.
    pub fn owners(&self, thread: usize) -> Option<Arc<SessionOwners>> {
        self.threads.get(thread).map(|t| t.owners.clone())
    }

    /// Where a stack thread reports an app that broke its shared memory.
    pub fn verdict_sink(&self) -> Sender<CorruptionVerdict> {
        self.verdicts.0.clone()
    }

    /// Acts on what stack threads reported: frees the dying app workers
    /// whose last session ended, detaches the apps found corrupting their
    /// shared memory.
    pub fn handle_thread_reports(&mut self) {
        while let Ok(wi) = self.reaps.1.try_recv() {
            self.reap_worker(wi);
        }
        while let Ok(v) = self.verdicts.1.try_recv() {
            self.condemn(v.app, v.thread, v.what);
        }
    }

    /// Detaches app `app`, found writing invalid values into its shared
    /// memory by stack thread `thread` (`u32::MAX`: the control side);
    /// counted and logged once per app.
    pub fn condemn(&mut self, app: AppIndex, thread: u32, what: String) {
        let v = CorruptionVerdict { app, thread, what };
        let Some(a) = self.apps.get(v.app.as_usize()) else {
            return;
        };
        if a.detaching {
            return;
        }
        let name = a.identity.name().to_string();
        let clients: Vec<u32> = a
            .workers
            .values()
            .filter_map(|wi| self.app_workers.get(wi.as_usize())?.api_client())
            .collect();
        crate::warn_limited!(
            "app detached for corrupting its shared memory",
            app = v.app.0,
            name = %name,
            thread = v.thread,
            "app detached: {}",
            v.what
        );
        self.corruption.apps_detached += 1;
        self.corruption.last = Some((name, v.what));
        if let Err(e) = self.detach(v.app) {
            debug!(app = v.app.0, "detaching a corrupting app: {e}");
        }
        for c in clients {
            self.outbox.close_client(c);
        }
    }

    /// Records who attached app `app` over an app socket.
    pub fn set_peer(&mut self, app: AppIndex, peer: crate::application::PeerCred) {
        if let Some(a) = self.apps.get_mut(app.as_usize()) {
            a.peer = Some(peer);
        }
    }

    /// Apps detached for corrupting their shared memory.
    pub fn corruption(&self) -> &CorruptionRecord {
        &self.corruption
    }

    /// The event queues with postponed events, which stack threads retry.
    pub fn backlogs(&self) -> Arc<Backlogs> {
        self.backlogs.clone()
    }

    /// Callbacks queued while the lock was held; run them after releasing
    /// it.
    pub fn take_deferred(&mut self) -> Vec<Deferred> {
        std::mem::take(&mut self.deferred)
    }

    /// Addresses of the stack's interfaces: a connect to one of them (or to
    /// loopback) is "local" and may be cut through.
    pub fn set_local_addresses(&mut self, addrs: Vec<IpAddr>) {
        self.local_addrs = addrs;
    }

    /// What each stack thread's interface reaches, in thread order: connects
    /// go to a thread that reaches the remote (see `thread_reach`). Unset,
    /// connects take every thread in turn.
    pub fn set_thread_reach(&mut self, reach: Vec<crate::thread_reach::ThreadReach>) {
        self.reach = reach;
    }

    /// Marks a transport as one whose listeners skip the global table.
    pub fn set_no_lookup(&mut self, proto: TransportProto, no_lookup: bool) {
        self.no_lookup[proto_slot(proto)] = no_lookup;
    }

    /// Stack threads.
    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// Queues `cmd` for stack thread `thread` and wakes it; false if that
    /// thread is gone.
    fn send(&self, thread: usize, cmd: WorkerCommand) -> bool {
        let Some(t) = self.threads.get(thread) else {
            return false;
        };
        if t.commands.send(cmd).is_ok() {
            (t.wake)();
            true
        } else {
            warn!(thread, "stack thread is gone; command dropped");
            false
        }
    }

    fn broadcast(&self, mk: impl Fn() -> WorkerCommand) {
        for t in 0..self.threads.len() {
            self.send(t, mk());
        }
    }

    // ---- applications ------------------------------------------------

    /// Attaches an app. Builtin apps bring callbacks; external apps an api
    /// client index.
    pub fn attach(
        &mut self,
        identity: AppIdentity,
        options: AppOptions,
        callbacks: Option<AppCallbacks>,
    ) -> SessionResult<AttachReply> {
        if identity.name().is_empty() {
            return Err(SessionError::InvalidValue(
                "an app needs a name or an api client".into(),
            ));
        }
        if self.app_ids.contains_key(&identity)
            || self.app_ids.keys().any(|k| k.name() == identity.name())
        {
            return Err(SessionError::AlreadyAttached(identity.name().to_string()));
        }
        let mut options = options;
        self.app_defaults.fill(&mut options);
        let scope = options.validate()?;
        let namespace = self
            .namespaces
            .lookup_for_attach(&options.namespace_id, options.namespace_secret)?;
        let callbacks = match (&identity, callbacks) {
            (AppIdentity::Builtin(name), cbs) => {
                let cbs = cbs.unwrap_or_default();
                let missing = cbs.missing();
                if !missing.is_empty() {
                    warn!(app = %name, "builtin app attached without callbacks: {}", missing.join(", "));
                }
                Some(Arc::new(cbs))
            }
            (AppIdentity::External { .. }, Some(_)) => {
                return Err(SessionError::InvalidValue(
                    "external apps cannot register callbacks".into(),
                ));
            }
            (AppIdentity::External { .. }, None) => None,
        };
        let entry = self.apps.vacant_entry();
        let index = AppIndex(entry.key() as u32);
        entry.insert(Application {
            index,
            identity: identity.clone(),
            options,
            scope,
            namespace,
            callbacks,
            workers: HashMap::new(),
            listeners: HashMap::new(),
            next_map_index: 0,
            detaching: false,
            external: None,
            share_token: match identity {
                AppIdentity::External { .. } => random_token(),
                AppIdentity::Builtin(_) => 0,
            },
            peer: None,
        });
        self.app_ids.insert(identity.clone(), index);
        if matches!(identity, AppIdentity::External { .. }) {
            if let Err(e) = self.create_rx_queues(index) {
                self.app_ids.remove(&identity);
                self.apps.remove(index.as_usize());
                return Err(e);
            }
        }
        let api_client = match identity {
            AppIdentity::External { client, .. } => Some(client),
            AppIdentity::Builtin(_) => None,
        };
        match self.add_worker(index, api_client) {
            Ok((_, worker)) => {
                debug!(app = index.0, "attached");
                Ok(AttachReply { app: index, worker })
            }
            Err(e) => {
                self.app_ids.remove(&identity);
                self.apps.remove(index.as_usize());
                Err(e)
            }
        }
    }

    /// Creates an external app's rx queues (one per stack thread and one
    /// for the main thread, last) and hands each stack thread its own; with
    /// `private_rx_queues` off, records that the app has none.
    fn create_rx_queues(&mut self, app: AppIndex) -> SessionResult<()> {
        if !self.private_rx_queues {
            let a = self
                .apps
                .get_mut(app.as_usize())
                .ok_or(SessionError::NoApp(app.0))?;
            a.external = Some(crate::application::ExternalParts {
                rx_info: hoststack_app_proto::app_rx_queue::RxQueuesInfo {
                    segment_size: 0,
                    queues: Vec::new(),
                },
                rx_segment: None,
                rx_watch: Vec::new(),
                main_queue: None,
            });
            return Ok(());
        }
        let a = self
            .apps
            .get(app.as_usize())
            .ok_or(SessionError::NoApp(app.0))?;
        let slots = hoststack_app_proto::app_rx_queue::rx_queue_slots(a.options.event_queue_size);
        let name = format!("hs-{}-rxq", a.name());
        let threads = self.threads.len() as u32 + 1;
        let queues = hoststack_app_proto::app_rx_queue::AppRxQueues::create(&name, threads, slots)?;
        let rx_info = queues.info();
        let rx_watch = queues
            .queues()
            .iter()
            .map(hoststack_app_proto::app_rx_queue::AppRxQueue::try_clone)
            .collect::<SessionResult<Vec<_>>>()?;
        let (rx_segment, mut list) = queues.into_parts();
        let main_queue = list.pop();
        for (t, q) in list.into_iter().enumerate() {
            self.send(
                t,
                WorkerCommand::AddAppQueue {
                    app,
                    queue: Box::new(q),
                },
            );
        }
        if let Some(a) = self.apps.get_mut(app.as_usize()) {
            a.external = Some(crate::application::ExternalParts {
                rx_info,
                rx_segment: Some(rx_segment),
                rx_watch,
                main_queue,
            });
        }
        Ok(())
    }

    /// The main thread's rx queue of an external app (once).
    pub fn take_main_queue(
        &mut self,
        app: AppIndex,
    ) -> Option<hoststack_app_proto::app_rx_queue::AppRxQueue> {
        self.apps
            .get_mut(app.as_usize())?
            .external
            .as_mut()?
            .main_queue
            .take()
    }

    /// What an app worker's process needs to map its segment and event
    /// queue, and the fds that go with it (segment, then eventfd if any).
    pub fn worker_info(
        &self,
        wi: AppWorkerIndex,
    ) -> SessionResult<(
        hoststack_app_proto::app_wire::WorkerInfo,
        Vec<std::os::fd::OwnedFd>,
    )> {
        let w = self
            .app_workers
            .get(wi.as_usize())
            .ok_or(SessionError::InvalidAppWorker(wi.0))?;
        let sm = w.share.first_segments();
        let EventSink::Queue(q) = w.sink() else {
            return Err(SessionError::InvalidValue(
                "a builtin app worker has no event queue".into(),
            ));
        };
        let q = q.queue();
        let mut fds = vec![sm.first_segment().try_clone_fd()?];
        if let Some(e) = q.eventfd() {
            fds.push(e.try_clone()?.into_owned_fd());
        }
        let info = hoststack_app_proto::app_wire::WorkerInfo {
            worker: w.map_index().0,
            segment_index: sm.first_segment_index(),
            segment_size: sm.first_segment().size() as u64,
            event_queue_offset: sm.event_queue_offset().unwrap_or(0) as u64,
            event_queue_slots: q.capacity() as u32,
            event_queue_slot_size: q.slot_size() as u32,
            event_queue_eventfd: q.eventfd().is_some(),
        };
        Ok((info, fds))
    }

    /// The attach reply of an external app and its fds, in wire order.
    pub fn attach_info(
        &self,
        app: AppIndex,
        wi: AppWorkerIndex,
    ) -> SessionResult<(
        hoststack_app_proto::app_wire::AttachInfo,
        Vec<std::os::fd::OwnedFd>,
    )> {
        let (worker, mut fds) = self.worker_info(wi)?;
        let a = self.app(app)?;
        let ext = a
            .external
            .as_ref()
            .ok_or_else(|| SessionError::InvalidValue("not an external app".into()))?;
        if let Some(seg) = &ext.rx_segment {
            fds.push(seg.try_clone_fd()?);
        }
        for q in &ext.rx_watch {
            fds.push(q.eventfd().try_clone()?.into_owned_fd());
        }
        let info = hoststack_app_proto::app_wire::AttachInfo {
            app: app.0,
            worker,
            threads: self.threads.len() as u32 + 1,
            rx_queues: ext.rx_info.clone(),
        };
        Ok((info, fds))
    }

    /// Hands a message an external app sent over its app socket (it has no
    /// private rx queues) to stack thread `thread`, as if it had come
    /// through the thread's rx queue.
    pub fn post_app_message(
        &self,
        app: AppIndex,
        thread: u32,
        message: hoststack_app_proto::app_rx_queue::RxMessage,
    ) -> SessionResult<()> {
        self.app(app)?;
        if thread as usize >= self.threads.len() {
            return Err(SessionError::InvalidValue(format!(
                "no stack thread {thread} (there are {})",
                self.threads.len()
            )));
        }
        self.send(thread as usize, WorkerCommand::AppMessage { app, message });
        Ok(())
    }

    /// Posts an event to app `app`'s worker `map_index` (external apps).
    pub fn post_to_worker(
        &self,
        app: AppIndex,
        map_index: WorkerMapIndex,
        event: &AppEvent,
    ) -> SessionResult<()> {
        let wi = self.app_worker_of(app, map_index)?;
        let w = self
            .app_workers
            .get(wi.as_usize())
            .ok_or(SessionError::InvalidAppWorker(wi.0))?;
        w.sink().post(event, w.counters())
    }

    /// The app with index `app`.
    pub fn app(&self, app: AppIndex) -> SessionResult<&Application> {
        self.apps
            .get(app.as_usize())
            .ok_or(SessionError::NoApp(app.0))
    }

    /// Every attached app.
    pub fn apps(&self) -> impl Iterator<Item = &Application> {
        self.apps.iter().map(|(_, a)| a)
    }

    /// An app by builtin name or client.
    pub fn app_by_name(&self, name: &str) -> Option<AppIndex> {
        self.app_ids
            .iter()
            .find(|(k, _)| k.name() == name)
            .map(|(_, v)| *v)
    }

    /// Detaches an app: its listeners go now; its sessions are reset on
    /// their threads, and workers, segments and the app itself are freed as
    /// the last session goes.
    pub fn detach(&mut self, app: AppIndex) -> SessionResult<()> {
        let a = self
            .apps
            .get_mut(app.as_usize())
            .ok_or(SessionError::NoApp(app.0))?;
        if a.detaching {
            return Ok(());
        }
        a.detaching = true;
        let external = a.external.is_some();
        let workers: Vec<WorkerMapIndex> = a.workers.keys().copied().collect();
        for w in workers {
            self.del_worker_inner(app, w)?;
        }
        if external {
            self.broadcast(|| WorkerCommand::RemoveAppQueue { app });
        }
        Ok(())
    }

    /// Adds a worker to an app; returns its map index and global index.
    pub fn add_worker(
        &mut self,
        app: AppIndex,
        api_client: Option<u32>,
    ) -> SessionResult<(WorkerMapIndex, AppWorkerIndex)> {
        let seq = self.segment_seq;
        self.segment_seq += 1;
        let a = self
            .apps
            .get_mut(app.as_usize())
            .ok_or(SessionError::NoApp(app.0))?;
        if a.detaching {
            return Err(SessionError::NoApp(app.0));
        }
        let map_index = WorkerMapIndex(a.next_map_index);
        let name = format!("hs-{}-{}", a.name(), seq);
        let mut sm = SegmentManager::with_ids(
            &name,
            SegmentManagerConfig::for_app(&a.options),
            Some(self.segment_ids.clone()),
        )?;
        let sink = match &a.callbacks {
            Some(cbs) => EventSink::Builtin(cbs.clone()),
            None => {
                let offset = sm.event_queue_offset().ok_or_else(|| {
                    SessionError::NoSpace("no room for the event queue in the first segment".into())
                })?;
                let efd = if a.options.use_eventfd {
                    Some(EventFd::new()?)
                } else {
                    None
                };
                let q = MessageQueue::init_at(
                    sm.first_segment().region(),
                    offset,
                    a.options.event_queue_size,
                    APP_EVENT_SIZE as u32,
                    efd,
                )?;
                EventSink::Queue(AppEventQueue::new(q, self.backlogs.clone()))
            }
        };
        let _ = sm.take_events();
        a.next_map_index += 1;
        let fib = self
            .namespaces
            .get(a.namespace)
            .map(|n| n.fib_index())
            .unwrap_or_default();
        let watermarks = (a.options.high_watermark, a.options.low_watermark);
        let entry = self.app_workers.vacant_entry();
        let index = AppWorkerIndex(entry.key() as u32);
        let share = AppWorkerShare::new(AppWorkerSpec {
            index,
            app,
            map_index,
            fib,
            sink,
            api_client,
            first: sm,
            threads: self.threads.len(),
            name,
            segment_ids: self.segment_ids.clone(),
            watermarks,
        });
        entry.insert(AppWorker {
            share,
            listeners: Vec::new(),
        });
        a.workers.insert(map_index, index);
        Ok((map_index, index))
    }

    /// Deletes worker `map_index` of an app. Deleting an unknown map index
    /// is `InvalidValue`; deleting the last worker frees the app.
    pub fn del_worker(&mut self, app: AppIndex, map_index: WorkerMapIndex) -> SessionResult<()> {
        let a = self
            .apps
            .get(app.as_usize())
            .ok_or(SessionError::NoApp(app.0))?;
        if !a.workers.contains_key(&map_index) {
            return Err(SessionError::InvalidValue(format!(
                "app {} has no worker {}",
                app.0, map_index.0
            )));
        }
        self.del_worker_inner(app, map_index)
    }

    fn del_worker_inner(&mut self, app: AppIndex, map_index: WorkerMapIndex) -> SessionResult<()> {
        let a = self
            .apps
            .get_mut(app.as_usize())
            .ok_or(SessionError::NoApp(app.0))?;
        let Some(wi) = a.workers.remove(&map_index) else {
            return Err(SessionError::InvalidValue(format!(
                "app {} has no worker {}",
                app.0, map_index.0
            )));
        };
        let last = a.workers.is_empty();
        let external = a.external.is_some();
        if last {
            a.detaching = true;
        }
        // Listeners: this worker leaves each. A listener it was the only
        // worker of moves to another worker of the app (the lowest-numbered
        // one left); with none left, it goes away.
        let successor = a
            .workers
            .iter()
            .min_by_key(|(m, _)| m.0)
            .map(|(m, wi)| (*m, *wi));
        if last && external {
            self.broadcast(|| WorkerCommand::RemoveAppQueue { app });
        }
        let listeners = self
            .app_workers
            .get(wi.as_usize())
            .map(|w| w.listeners.clone())
            .unwrap_or_default();
        for lh in listeners {
            let only_worker = match self.listeners.get(lh.index() as usize) {
                Some(l) => l.listener.n_workers() == 1 && l.listener.workers().is_set(map_index),
                None => continue,
            };
            match (only_worker, successor) {
                (true, Some((to, to_wi))) => {
                    if let Some(l) = self.listeners.get_mut(lh.index() as usize) {
                        l.listener.move_to_worker(map_index, to)?;
                    }
                    self.sync_listener(lh);
                    if let Some(w) = self.app_workers.get_mut(to_wi.as_usize()) {
                        if !w.listeners.contains(&lh) {
                            w.listeners.push(lh);
                        }
                    }
                    debug!(app = app.0, listener = %lh, from = map_index.0, to = to.0, "listener moved to another worker");
                }
                _ => {
                    let gone = match self.listeners.get_mut(lh.index() as usize) {
                        Some(l) => l.listener.remove_worker(map_index),
                        None => false,
                    };
                    if gone {
                        self.remove_listener(lh);
                    } else {
                        self.sync_listener(lh);
                    }
                }
            }
        }
        if let Some(w) = self.app_workers.get_mut(wi.as_usize()) {
            w.listeners.clear();
            if !w.share.mark_dying() {
                self.broadcast(|| WorkerCommand::CloseAppWorkerSessions { app_worker: wi });
            }
        }
        self.reap_worker(wi);
        Ok(())
    }

    /// Frees a dying app worker once it has no session, and its app once it
    /// has no worker left.
    fn reap_worker(&mut self, wi: AppWorkerIndex) {
        let Some(w) = self.app_workers.get(wi.as_usize()) else {
            return;
        };
        if !w.share.is_dying() || w.share.sessions() > 0 {
            return;
        }
        let app = w.app();
        self.app_workers.remove(wi.as_usize());
        self.retire_cut_through();
        let Some(a) = self.apps.get(app.as_usize()) else {
            return;
        };
        let still_referenced = self.app_workers.iter().any(|(_, w)| w.app() == app);
        if a.workers.is_empty() && !still_referenced {
            let a = self.apps.remove(app.as_usize());
            self.app_ids.remove(&a.identity);
            self.certs.forget_app(app);
            debug!(app = app.0, "app freed");
        }
    }

    /// Adds a worker owned by api client `client` to external app `app`,
    /// which that client proves it may join with the app's share token (a
    /// forked child of the app's process). An unknown app, a builtin one
    /// or a wrong token is `NoApp`: the answer says nothing about which.
    pub fn join(
        &mut self,
        app: AppIndex,
        token: u64,
        client: u32,
    ) -> SessionResult<(WorkerMapIndex, AppWorkerIndex)> {
        let a = self
            .apps
            .get(app.as_usize())
            .ok_or(SessionError::NoApp(app.0))?;
        if a.share_token == 0 || a.share_token != token || a.external.is_none() {
            return Err(SessionError::NoApp(app.0));
        }
        self.add_worker(app, Some(client))
    }

    /// Removes every worker an api client registered (the client is gone).
    pub fn client_gone(&mut self, client: u32) -> usize {
        let victims: Vec<(AppIndex, WorkerMapIndex)> = self
            .app_workers
            .iter()
            .filter(|(_, w)| w.api_client() == Some(client) && !w.share.is_dying())
            .map(|(_, w)| (w.app(), w.map_index()))
            .collect();
        for (app, m) in &victims {
            let _ = self.del_worker_inner(*app, *m);
        }
        victims.len()
    }

    /// The app worker with global index `wi`.
    pub fn app_worker(&self, wi: AppWorkerIndex) -> Option<&AppWorker> {
        self.app_workers.get(wi.as_usize())
    }

    /// The app worker with global index `wi`, mutably.
    pub fn app_worker_mut(&mut self, wi: AppWorkerIndex) -> Option<&mut AppWorker> {
        self.app_workers.get_mut(wi.as_usize())
    }

    /// The global index of app `app`'s worker `map_index`.
    pub fn app_worker_of(
        &self,
        app: AppIndex,
        map_index: WorkerMapIndex,
    ) -> SessionResult<AppWorkerIndex> {
        let a = self.app(app)?;
        a.workers
            .get(&map_index)
            .copied()
            .ok_or(SessionError::InvalidAppWorker(map_index.0))
    }

    // ---- listeners ---------------------------------------------------

    /// Listens for app `app`'s worker `map_index` on `endpoint`. The stack
    /// threads open the transport listener a moment later; see
    /// [`listen_acked`](Self::listen_acked) to wait for them.
    pub fn listen(
        &mut self,
        app: AppIndex,
        map_index: WorkerMapIndex,
        proto: TransportProto,
        endpoint: Endpoint,
    ) -> SessionResult<ListenerHandle> {
        self.listen_acked(app, map_index, proto, endpoint)
            .map(|(lh, _)| lh)
    }

    /// [`listen`](Self::listen), with the ack the stack threads that open
    /// the transport listener report to (none are asked for a listener
    /// that exists already or has local scope only: the ack expects zero).
    pub fn listen_acked(
        &mut self,
        app: AppIndex,
        map_index: WorkerMapIndex,
        proto: TransportProto,
        endpoint: Endpoint,
    ) -> SessionResult<(ListenerHandle, Arc<ListenAck>)> {
        let wi = self.app_worker_of(app, map_index)?;
        let a = self.app(app)?;
        if a.detaching {
            return Err(SessionError::NoApp(app.0));
        }
        if endpoint.port == 0 {
            return Err(SessionError::InvalidValue("cannot listen on port 0".into()));
        }
        let (ns, scope) = (a.namespace, a.scope);
        let endpoint = self.namespaces.resolve_bind(ns, endpoint)?;
        let fib = self
            .namespaces
            .get(ns)
            .map(|n| n.fib_index())
            .unwrap_or_default();
        // The same app listening again adds the worker to its listener.
        if let Some(&li) = a.listeners.get(&(proto, endpoint)) {
            let lh = ListenerHandle::new(0, li);
            let entry = self
                .listeners
                .get_mut(li as usize)
                .ok_or_else(|| SessionError::NoListener(endpoint.to_string()))?;
            if !entry.listener.add_worker(map_index)? {
                return Err(SessionError::AlreadyListening(endpoint.to_string()));
            }
            if let Some(w) = self.app_workers.get_mut(wi.as_usize()) {
                w.listeners.push(lh);
            }
            self.sync_listener(lh);
            return Ok((lh, Arc::new(ListenAck::new(0))));
        }
        // Another app on the endpoint?
        let taken_global = scope.global
            && self
                .lookup
                .global_table(fib)
                .and_then(|t| t.lookup_listener_exact(proto, endpoint))
                .is_some();
        let local_ep = Endpoint {
            ip: IpFamily::of(&endpoint.ip).zero_addr(),
            port: endpoint.port,
        };
        let taken_local = scope.local
            && self
                .lookup
                .local_table(ns)
                .and_then(|t| t.lookup_listener(proto, local_ep))
                .is_some();
        if taken_global || taken_local {
            return Err(SessionError::AlreadyListening(endpoint.to_string()));
        }
        let entry = self.listeners.vacant_entry();
        let li = entry.key() as u32;
        let lh = ListenerHandle::new(0, li);
        let mut listener = AppListener::new(app, proto, endpoint);
        listener.add_worker(map_index)?;
        let mut ack = Arc::new(ListenAck::new(0));
        entry.insert(ListenerEntry {
            listener,
            namespace: ns,
            local: false,
            global: false,
        });
        if scope.local {
            if let Err(e) = self.lookup.add_local_listener(ns, proto, local_ep, lh) {
                self.listeners.remove(li as usize);
                return Err(e);
            }
            self.listeners[li as usize].local = true;
            self.listeners[li as usize]
                .listener
                .set_local_listener(Some(lh));
        }
        if scope.global {
            if !self.no_lookup[proto_slot(proto)] {
                if let Err(e) = self.lookup.add_global_listener(fib, proto, endpoint, lh) {
                    if scope.local {
                        let _ = self.lookup.del_local_listener(ns, proto, local_ep);
                    }
                    self.listeners.remove(li as usize);
                    return Err(e);
                }
            }
            self.listeners[li as usize].global = true;
            self.listeners[li as usize]
                .listener
                .set_global_listener(Some(lh));
            // Only the interfaces of the namespace's table carry it.
            let workers = self.listener_workers(lh);
            let threads =
                crate::thread_reach::threads_in_table(&self.reach, self.threads.len(), fib.0);
            ack = Arc::new(ListenAck::new(threads.len()));
            for t in threads {
                let sent = self.send(
                    t,
                    WorkerCommand::Listen {
                        listener: lh,
                        proto,
                        endpoint,
                        workers: workers.clone(),
                        ack: ack.clone(),
                    },
                );
                if !sent {
                    ack.report(Err(SessionError::Transport(format!(
                        "stack thread {t} is gone"
                    ))));
                }
            }
        }
        if let Some(a) = self.apps.get_mut(app.as_usize()) {
            a.listeners.insert((proto, endpoint), li);
        }
        if let Some(w) = self.app_workers.get_mut(wi.as_usize()) {
            w.listeners.push(lh);
        }
        debug!(app = app.0, %endpoint, ?proto, "listening");
        Ok((lh, ack))
    }

    /// Stops app `app`'s worker `map_index` listening on `listener`; the
    /// listener goes when its last worker leaves.
    pub fn unlisten(
        &mut self,
        app: AppIndex,
        map_index: WorkerMapIndex,
        listener: ListenerHandle,
    ) -> SessionResult<()> {
        let wi = self.app_worker_of(app, map_index)?;
        let entry = self
            .listeners
            .get_mut(listener.index() as usize)
            .ok_or_else(|| SessionError::NoListener(listener.to_string()))?;
        if entry.listener.app() != app {
            return Err(SessionError::NotOwner(listener.as_u64()));
        }
        if !entry.listener.workers().is_set(map_index) {
            return Err(SessionError::InvalidAppWorker(map_index.0));
        }
        let gone = entry.listener.remove_worker(map_index);
        if let Some(w) = self.app_workers.get_mut(wi.as_usize()) {
            w.listeners.retain(|l| *l != listener);
        }
        if gone {
            self.remove_listener(listener);
        } else {
            self.sync_listener(listener);
        }
        Ok(())
    }

    /// The shares of listener `lh`'s app workers, by map index.
    fn listener_workers(&self, lh: ListenerHandle) -> Vec<Arc<AppWorkerShare>> {
        let Some(entry) = self.listeners.get(lh.index() as usize) else {
            return Vec::new();
        };
        let app = entry.listener.app();
        entry
            .listener
            .workers()
            .iter()
            .filter_map(|m| self.app_worker_of(app, m).ok())
            .filter_map(|wi| self.app_workers.get(wi.as_usize()))
            .map(|w| w.share.clone())
            .collect()
    }

    /// Tells the stack threads which app workers listener `lh`'s sessions
    /// go to now.
    fn sync_listener(&self, lh: ListenerHandle) {
        let Some(entry) = self.listeners.get(lh.index() as usize) else {
            return;
        };
        if !entry.global {
            return;
        }
        let workers = self.listener_workers(lh);
        self.broadcast(|| WorkerCommand::ListenerWorkers {
            listener: lh,
            workers: workers.clone(),
        });
    }

    fn remove_listener(&mut self, lh: ListenerHandle) {
        let li = lh.index() as usize;
        if !self.listeners.contains(li) {
            return;
        }
        let entry = self.listeners.remove(li);
        let (proto, endpoint, app) = (
            entry.listener.proto(),
            entry.listener.endpoint(),
            entry.listener.app(),
        );
        if entry.local {
            let local_ep = Endpoint {
                ip: IpFamily::of(&endpoint.ip).zero_addr(),
                port: endpoint.port,
            };
            let _ = self
                .lookup
                .del_local_listener(entry.namespace, proto, local_ep);
        }
        if entry.global {
            let fib = self
                .namespaces
                .get(entry.namespace)
                .map(|n| n.fib_index())
                .unwrap_or_default();
            if !self.no_lookup[proto_slot(proto)] {
                let _ = self.lookup.del_global_listener(fib, proto, endpoint);
            }
            self.broadcast(|| WorkerCommand::Unlisten {
                listener: lh,
                proto,
            });
        }
        if let Some(a) = self.apps.get_mut(app.as_usize()) {
            a.listeners.remove(&(proto, endpoint));
        }
        for (_, w) in self.app_workers.iter_mut() {
            w.listeners.retain(|l| *l != lh);
        }
    }

    /// A listener.
    pub fn listener(&self, lh: ListenerHandle) -> Option<&ListenerEntry> {
        self.listeners.get(lh.index() as usize)
    }

    /// Every listener.
    pub fn listeners(&self) -> impl Iterator<Item = (ListenerHandle, &ListenerEntry)> {
        self.listeners
            .iter()
            .map(|(i, l)| (ListenerHandle::new(0, i as u32), l))
    }

    /// Moves every listener of app worker `from` to app worker `to` of the
    /// same app (when `from` dies and another worker takes over).
    pub fn move_listeners(
        &mut self,
        app: AppIndex,
        from: WorkerMapIndex,
        to: WorkerMapIndex,
    ) -> SessionResult<usize> {
        let from_wi = self.app_worker_of(app, from)?;
        let to_wi = self.app_worker_of(app, to)?;
        let hs = self
            .app_workers
            .get(from_wi.as_usize())
            .map(|w| w.listeners.clone())
            .unwrap_or_default();
        for lh in &hs {
            if let Some(l) = self.listeners.get_mut(lh.index() as usize) {
                l.listener.move_to_worker(from, to)?;
            }
            self.sync_listener(*lh);
        }
        if let Some(w) = self.app_workers.get_mut(from_wi.as_usize()) {
            w.listeners.clear();
        }
        if let Some(w) = self.app_workers.get_mut(to_wi.as_usize()) {
            for lh in &hs {
                if !w.listeners.contains(lh) {
                    w.listeners.push(*lh);
                }
            }
        }
        Ok(hs.len())
    }

    // ---- connect / disconnect ---------------------------------------

    fn is_local(&self, ip: &IpAddr) -> bool {
        ip.is_loopback() || self.local_addrs.contains(ip)
    }

    /// Connects app `app`'s worker `map_index` to `remote`. The result
    /// arrives as a connected event (callback or event queue) carrying
    /// `opaque`. A local-scope app connecting to a local endpoint its
    /// namespace has a listener on is cut through.
    pub fn connect(
        &mut self,
        app: AppIndex,
        map_index: WorkerMapIndex,
        proto: TransportProto,
        remote: Endpoint,
        opaque: u64,
    ) -> SessionResult<()> {
        let wi = self.app_worker_of(app, map_index)?;
        let a = self.app(app)?;
        if a.detaching {
            return Err(SessionError::NoApp(app.0));
        }
        if remote.is_zero_ip() {
            return Err(SessionError::InvalidRemoteIp(remote.to_string()));
        }
        if remote.port == 0 {
            return Err(SessionError::InvalidValue(format!(
                "connect to port 0 of {}",
                remote.ip
            )));
        }
        let (ns, scope) = (a.namespace, a.scope);
        if self.threads.is_empty() {
            return Err(SessionError::InvalidValue(
                "the session layer has no thread to run sessions on".into(),
            ));
        }
        let fib = self
            .namespaces
            .get(ns)
            .map(|n| n.fib_index())
            .unwrap_or_default();
        let query = ListenerQuery {
            proto,
            endpoint: remote,
            fib,
            ns,
            app_has_local_scope: scope.local,
            endpoint_is_local: self.is_local(&remote.ip) || !scope.global,
        };
        if let Some(m) = self.lookup.lookup_listener(&query) {
            if m.scope == ListenerScope::Local {
                return self.plan_cut_through(wi, proto, m.handle, remote, opaque);
            }
        }
        if !scope.global {
            return Err(SessionError::NoListener(format!(
                "no local listener on {remote}"
            )));
        }
        let thread = crate::thread_reach::select_connect_thread(
            &self.reach,
            self.threads.len(),
            fib.0,
            remote.ip,
            self.next_thread,
        )
        .ok_or_else(|| {
            SessionError::InvalidValue(format!(
                "no interface serves table {} (the app's namespace), so nothing reaches {remote}",
                fib.0
            ))
        })?;
        self.next_thread = self.next_thread.wrapping_add(1);
        let share = self.share_of(wi)?;
        self.send(
            thread,
            WorkerCommand::Connect {
                share,
                proto,
                remote,
                opaque,
            },
        );
        Ok(())
    }

    fn plan_cut_through(
        &mut self,
        client_wi: AppWorkerIndex,
        proto: TransportProto,
        lh: ListenerHandle,
        remote: Endpoint,
        opaque: u64,
    ) -> SessionResult<()> {
        let entry = self
            .listeners
            .get_mut(lh.index() as usize)
            .ok_or_else(|| SessionError::NoListener(remote.to_string()))?;
        let server_app = entry.listener.app();
        let server_map = entry
            .listener
            .select_worker()
            .ok_or_else(|| SessionError::NoListener(remote.to_string()))?;
        let server_wi = self.app_worker_of(server_app, server_map)?;
        // The pair lives in segments of this (server worker, client
        // worker) pair alone: neither app maps the other's own segments.
        let server_share = self.share_of(server_wi)?;
        let client_share = self.share_of(client_wi)?;
        let ids = self.segment_ids.clone();
        let ct = self
            .cut_through
            .entry((server_wi, client_wi))
            .or_insert_with(|| CutThroughSegments::new(&server_share, &client_share, ids))
            .clone();
        let f = ct.alloc_fifos(&self.outbox, &mut self.deferred)?;
        server_share.session_started();
        client_share.session_started();
        // The client reads what the server writes and the other way round.
        let client = NewSessionParts {
            share: client_share,
            fifos: (f.fifos.1.clone(), f.fifos.0.clone()),
            location: FifoLocation {
                segment: f.location.segment,
                rx_offset: f.location.tx_offset,
                tx_offset: f.location.rx_offset,
            },
            owned_pair: None,
        };
        let server = NewSessionParts {
            share: server_share,
            fifos: f.fifos,
            location: f.location,
            owned_pair: Some(f.owned),
        };
        let thread = self.next_thread % self.threads.len();
        self.next_thread = self.next_thread.wrapping_add(1);
        let plan = CutThroughPlan {
            proto,
            listener: lh,
            server,
            client,
            server_endpoint: remote,
            opaque,
        };
        self.send(thread, WorkerCommand::CutThrough(Box::new(plan)));
        Ok(())
    }

    /// Asks every stack thread for its sessions; collect the answers from
    /// the returned receiver (one message per thread) after releasing the
    /// lock.
    pub fn request_sessions(
        &self,
        details: bool,
    ) -> (
        std::sync::mpsc::Receiver<(u32, Vec<crate::session_info::SessionInfo>)>,
        usize,
    ) {
        let (tx, rx) = std::sync::mpsc::channel();
        for t in 0..self.threads.len() {
            self.send(
                t,
                WorkerCommand::ShowSessions {
                    details,
                    reply: tx.clone(),
                },
            );
        }
        (rx, self.threads.len())
    }

    /// Checks that `session` belongs to `app` and asks its thread to close
    /// it.
    pub fn disconnect(&mut self, app: AppIndex, session: SessionHandle) -> SessionResult<()> {
        self.check_owner(app, session)?;
        self.send(
            session.thread() as usize,
            WorkerCommand::Disconnect { session },
        );
        Ok(())
    }

    /// Asks `session`'s thread to raise rx and tx events for it (the app
    /// owns it).
    pub fn wake_session(&mut self, app: AppIndex, session: SessionHandle) -> SessionResult<()> {
        self.check_owner(app, session)?;
        self.send(
            session.thread() as usize,
            WorkerCommand::WakeSession { session },
        );
        Ok(())
    }

    /// Checks that `session` exists and belongs to `app`.
    pub fn check_owner(
        &self,
        app: AppIndex,
        session: SessionHandle,
    ) -> SessionResult<AppWorkerIndex> {
        self.app(app)?;
        let wi = self
            .threads
            .get(session.thread() as usize)
            .and_then(|t| t.owners.owner(session))
            .ok_or(SessionError::NoSession(session.as_u64()))?;
        let owner = self.app_workers.get(wi.as_usize()).map(|w| w.app());
        if owner != Some(app) {
            return Err(SessionError::NotOwner(session.as_u64()));
        }
        Ok(wi)
    }

    // ---- certificates ------------------------------------------------

    /// Registers app interest in a cert/key pair (once per app).
    pub fn add_cert_interest(&mut self, app: AppIndex, cert: CertKeyIndex) -> SessionResult<()> {
        self.app(app)?;
        self.certs.add_interest(cert, app)
    }

    /// Deletes a cert/key pair; every app that registered interest is
    /// called back (deferred until the lock is released). Returns them.
    pub fn del_cert(&mut self, cert: CertKeyIndex) -> SessionResult<Vec<AppIndex>> {
        let apps = self.certs.del(cert)?;
        for app in &apps {
            if let Some(cb) = self
                .apps
                .get(app.as_usize())
                .and_then(|a| a.callbacks.clone())
            {
                if let Some(f) = cb.cert_deleted.clone() {
                    let idx = cert.0;
                    self.deferred.push(Box::new(move || f(idx)));
                }
            }
        }
        Ok(apps)
    }

    // ---- stack-thread bookkeeping ------------------------------------

    /// Allocates a fifo pair in app worker `wi`'s first segment (a control
    /// operation's session: `thread` None) or in its segments for stack
    /// thread `thread`, and describes the new session's side; segment
    /// changes become deferred callbacks (and events for external apps).
    pub fn alloc_session_parts(
        &mut self,
        wi: AppWorkerIndex,
        thread: Option<usize>,
    ) -> SessionResult<NewSessionParts> {
        let share = self.share_of(wi)?;
        let f = share.alloc_fifos(thread, &self.outbox, &mut self.deferred)?;
        share.session_started();
        Ok(NewSessionParts {
            share,
            fifos: f.fifos,
            location: f.location,
            owned_pair: Some(f.owned),
        })
    }

    /// The cut-through segments of each (server worker, client worker)
    /// pair known: the pair and the indices of its segments (none while
    /// it has no session).
    pub fn cut_through_segments(&self) -> Vec<((AppWorkerIndex, AppWorkerIndex), Vec<u32>)> {
        self.all_cut_through()
            .map(|ct| (ct.workers(), ct.segment_indices()))
            .collect()
    }

    /// Segments of app worker `wi`'s cut-through sessions, over every
    /// peer worker.
    pub fn cut_through_segment_count(&self, wi: AppWorkerIndex) -> usize {
        self.all_cut_through()
            .filter(|ct| ct.workers().0 == wi || ct.workers().1 == wi)
            .map(|ct| ct.totals().0)
            .sum()
    }

    /// Takes the pairs of workers that are gone out of the table; those
    /// with a session left are kept aside until it goes.
    fn retire_cut_through(&mut self) {
        let retired = &mut self.cut_through_retired;
        retired.retain(|ct| !ct.is_empty());
        self.cut_through.retain(|_, ct| {
            if !ct.is_dead() {
                return true;
            }
            if !ct.is_empty() {
                retired.push(ct.clone());
            }
            false
        });
    }

    /// Every pair's segments, retired ones included.
    fn all_cut_through(&self) -> impl Iterator<Item = &Arc<CutThroughSegments>> {
        self.cut_through.values().chain(&self.cut_through_retired)
    }

    /// What the stack threads hold of app worker `wi`.
    fn share_of(&self, wi: AppWorkerIndex) -> SessionResult<Arc<AppWorkerShare>> {
        self.app_workers
            .get(wi.as_usize())
            .map(|w| w.share.clone())
            .ok_or(SessionError::InvalidAppWorker(wi.0))
    }

    /// Counts of everything held.
    pub fn counters(&self) -> LayerCounters {
        let (mut segments, mut fifos) = (0, 0);
        for (_, w) in self.app_workers.iter() {
            let (s, f, _) = w.share.segment_totals();
            segments += s;
            fifos += f;
        }
        for ct in self.all_cut_through() {
            let (s, f, _) = ct.totals();
            segments += s;
            fifos += f;
        }
        LayerCounters {
            apps: self.apps.len(),
            app_workers: self.app_workers.len(),
            listeners: self.listeners.len(),
            sessions: self.threads.iter().map(|t| t.owners.len()).sum(),
            segments,
            fifos,
            table_entries: self.lookup.counters().entries()
                + self
                    .threads
                    .iter()
                    .map(|t| t.owners.established())
                    .sum::<usize>(),
            apps_detached_corrupt: self.corruption.apps_detached,
            log_lines_suppressed: crate::log_limit::suppressed_total(),
        }
    }
}

/// A share token: 8 random bytes from the kernel, never 0.
fn random_token() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    let from_kernel = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    let t = match from_kernel {
        Ok(()) => u64::from_le_bytes(b),
        // No /dev/urandom: still unguessable enough from outside the
        // process (a random SipHash key), and never a constant.
        Err(_) => {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(monotonic_nanos());
            h.finish()
        }
    };
    t.max(1)
}

fn monotonic_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
