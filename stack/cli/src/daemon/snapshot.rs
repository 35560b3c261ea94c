//! Builds the `show` views from a running stack.
//!
//! The layer functions run on the main thread under the layer's lock (the
//! caller passes them to `ControlPlane::call`). They copy numbers and names
//! out and hold nothing. The worker functions read atomics only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use hoststack_app_proto::app_rx_queue::rx_queue_slots;
use hoststack_drivers::counters::DriverCounters;
use hoststack_drivers::{DeviceInfo, Offloads};
use hoststack_session::app_worker::EventSink;
use hoststack_session::application::Application;
use hoststack_session::session_info::SessionInfo;
use hoststack_session::session_layer::SessionLayer;
use hoststack_session::session_worker::SessionWorkerStats;

use crate::daemon::show::{
    AppDetail, AppSummary, AppWorkerView, CertView, DropsView, HandOffView, InterfaceView,
    ListenerView, NamespaceView, OffloadView, QueueView, SessionView, TcpView, ThreadSessions,
    WorkerView,
};
use hoststack_stack::queue_group::QueueGroup;
use hoststack_stack::runtime::WorkerHandle;
use hoststack_stack::worker::{WorkerMode, WorkerStats};

/// What the daemon keeps of one worker to report on it.
#[derive(Debug, Clone)]
pub(crate) struct WorkerProbe {
    /// Its queue.
    pub(crate) info: DeviceInfo,
    /// Driver counters.
    pub(crate) counters: Arc<DriverCounters>,
    /// The offloads its device has on.
    pub(crate) offloads: Offloads,
    /// Loop counters.
    pub(crate) stats: Arc<WorkerStats>,
    /// Session-layer counters.
    pub(crate) session_stats: Arc<SessionWorkerStats>,
    /// The core it was pinned to.
    pub(crate) core: Option<usize>,
    /// Configured mode.
    pub(crate) mode: WorkerMode,
    /// The table (FIB index) of its interface.
    pub(crate) table: u32,
    /// What its interface's workers share.
    pub(crate) group: Option<Arc<QueueGroup>>,
}

impl WorkerProbe {
    /// A probe of a running worker.
    pub(crate) fn of(
        w: &WorkerHandle,
        core: Option<usize>,
        mode: WorkerMode,
        table: u32,
        group: Option<Arc<QueueGroup>>,
    ) -> Self {
        Self {
            group,
            info: w.info.clone(),
            counters: w.counters.clone(),
            offloads: w.offloads,
            stats: w.stats.clone(),
            session_stats: w.session_stats.clone(),
            core,
            mode,
            table,
        }
    }
}

fn summary(l: &SessionLayer, a: &Application) -> AppSummary {
    let api_client = a
        .workers
        .values()
        .filter_map(|wi| l.app_worker(*wi).and_then(|w| w.api_client()))
        .min();
    AppSummary {
        index: a.index.0,
        name: a.name().to_string(),
        namespace: l
            .namespaces
            .get(a.namespace)
            .map_or_else(|| "?".to_string(), |n| n.id().to_string()),
        namespace_index: a.namespace.0,
        api_client,
        builtin: a.is_builtin(),
        pid: a.peer.map(|p| p.pid),
        uid: a.peer.map(|p| p.uid),
        gid: a.peer.map(|p| p.gid),
    }
}

fn sorted_apps(l: &SessionLayer) -> Vec<&Application> {
    let mut apps: Vec<&Application> = l.apps().collect();
    apps.sort_by_key(|a| a.index);
    apps
}

/// Every app, by index.
pub(crate) fn app_summaries(l: &SessionLayer) -> Vec<AppSummary> {
    sorted_apps(l).into_iter().map(|a| summary(l, a)).collect()
}

/// Whether app `index` exists.
pub(crate) fn app_exists(l: &SessionLayer, index: u32) -> bool {
    l.apps().any(|a| a.index.0 == index)
}

/// Names of every app, by index (to label sessions).
pub(crate) fn app_names(l: &SessionLayer) -> HashMap<u32, String> {
    l.apps()
        .map(|a| (a.index.0, a.name().to_string()))
        .collect()
}

/// Listeners of every app (or of app `only`), by app then endpoint.
pub(crate) fn listeners(l: &SessionLayer, only: Option<u32>) -> Vec<ListenerView> {
    let mut out: Vec<ListenerView> = l
        .listeners()
        .filter(|(_, e)| only.is_none_or(|i| e.listener.app().0 == i))
        .map(|(h, e)| {
            let app = l.app(e.listener.app()).ok();
            ListenerView {
                app: e.listener.app().0,
                app_name: app.map_or_else(|| "?".into(), |a| a.name().to_string()),
                workers: e.listener.workers().iter().map(|w| w.0).collect(),
                proto: e.listener.proto().to_string(),
                endpoint: e.listener.endpoint().to_string(),
                handle: h.as_u64(),
                local: e.local,
                global: e.global,
                api_client: app.and_then(|a| summary(l, a).api_client),
            }
        })
        .collect();
    out.sort_by(|a, b| (a.app, &a.endpoint, &a.proto).cmp(&(b.app, &b.endpoint, &b.proto)));
    out
}

/// Every app in detail; `connects` are the sessions apps connected (from
/// [`session_views`]).
pub(crate) fn app_details(l: &SessionLayer, connects: &[SessionView]) -> Vec<AppDetail> {
    sorted_apps(l)
        .into_iter()
        .map(|a| {
            let mut workers: Vec<AppWorkerView> = a
                .workers
                .iter()
                .filter_map(|(m, wi)| {
                    let w = l.app_worker(*wi)?;
                    let (segments, fifos, bytes_in_use) = w.share.segment_totals();
                    let c = w.counters();
                    let postponed = match w.sink() {
                        EventSink::Queue(q) => Some(q.counters()),
                        EventSink::Builtin(_) => None,
                    };
                    Some(AppWorkerView {
                        index: wi.0,
                        map_index: m.0,
                        api_client: w.api_client(),
                        segments,
                        cut_through_segments: l.cut_through_segment_count(*wi),
                        fifos,
                        bytes_in_use,
                        sessions: w.share.sessions(),
                        listeners: w.listeners.len(),
                        accepted: c.accepted.load(Relaxed),
                        connected: c.connected.load(Relaxed),
                        closed: c.closed.load(Relaxed),
                        events: c.events.load(Relaxed),
                        events_dropped: c.events_dropped.load(Relaxed),
                        events_postponed: postponed.map_or(0, |p| p.postponed.load(Relaxed)),
                        postponed_max_wait_us: postponed
                            .map_or(0, |p| p.max_wait_ns.load(Relaxed) / 1000),
                    })
                })
                .collect();
            workers.sort_by_key(|w| w.map_index);
            let o = &a.options;
            AppDetail {
                summary: summary(l, a),
                scope_local: a.scope.local,
                scope_global: a.scope.global,
                segment_size: o.segment_size as u64,
                add_segment_size: o.add_segment_size as u64,
                rx_fifo_size: o.rx_fifo_size,
                tx_fifo_size: o.tx_fifo_size,
                event_queue_size: o.event_queue_size,
                rx_queues: a.external.as_ref().map(|e| e.rx_info.queues.len() as u32),
                workers,
                listeners: listeners(l, Some(a.index.0)),
                connects: connects
                    .iter()
                    .filter(|s| s.app == a.index.0)
                    .cloned()
                    .collect(),
            }
        })
        .collect()
}

/// Message queues of every app (or of app `only`): each worker's event
/// queue, then the app's rx queues (one per stack thread, the main
/// thread's last).
pub(crate) fn queues(l: &SessionLayer, only: Option<u32>) -> Vec<QueueView> {
    let mut out = Vec::new();
    for a in sorted_apps(l) {
        if only.is_some_and(|i| i != a.index.0) {
            continue;
        }
        let mut maps: Vec<_> = a.workers.iter().collect();
        maps.sort_by_key(|(m, _)| m.0);
        for (m, wi) in maps {
            let Some(w) = l.app_worker(*wi) else { continue };
            if let EventSink::Queue(eq) = w.sink() {
                let (q, c) = (eq.queue(), eq.counters());
                out.push(QueueView {
                    app: a.index.0,
                    kind: "event".into(),
                    index: m.0,
                    main_thread: false,
                    slots: q.capacity() as u64,
                    used: Some(q.len() as u64),
                    eventfd: q.eventfd().is_some(),
                    postponed: c.postponed.load(Relaxed),
                    waiting: c.waiting.load(Relaxed),
                    max_wait_us: c.max_wait_ns.load(Relaxed) / 1000,
                });
            }
        }
        if let Some(ext) = &a.external {
            let n = ext.rx_info.queues.len();
            let slots = rx_queue_slots(a.options.event_queue_size);
            for t in 0..n {
                out.push(QueueView {
                    app: a.index.0,
                    kind: "rx".into(),
                    index: t as u32,
                    main_thread: t + 1 == n,
                    // Both rings: io events and control requests.
                    slots: ext.rx_watch.get(t).map_or(u64::from(slots), |q| {
                        (q.io_capacity() + q.control_capacity()) as u64
                    }),
                    used: ext.rx_watch.get(t).map(|q| q.len() as u64),
                    eventfd: true,
                    postponed: 0,
                    waiting: 0,
                    max_wait_us: 0,
                });
            }
        }
    }
    out
}

/// The cert/key store.
pub(crate) fn certs(l: &SessionLayer) -> Vec<CertView> {
    let mut v: Vec<CertView> = l
        .certs
        .iter()
        .map(|c| CertView {
            index: c.index().0,
            cert_len: c.cert().len(),
            key_len: c.key().len(),
            default: c.is_default(),
            interested_apps: c.interested_apps().iter().map(|a| a.0).collect(),
        })
        .collect();
    v.sort_by_key(|c| c.index);
    v
}

/// The namespaces; `sockets` maps namespace ids to their app sockets.
pub(crate) fn namespaces(
    l: &SessionLayer,
    sockets: &HashMap<String, PathBuf>,
) -> Vec<NamespaceView> {
    l.namespaces
        .iter()
        .map(|n| NamespaceView {
            index: n.index().0,
            id: n.id().to_string(),
            secret_set: n.secret() != 0,
            interface: n.interface().map(|b| b.name.clone()),
            table: n.fib_index().0,
            apps: l.apps().filter(|a| a.namespace == n.index()).count(),
            app_socket: sockets.get(n.id()).map(|p| p.display().to_string()),
        })
        .collect()
}

/// Sessions as each thread reported them, labelled with app names.
pub(crate) fn session_views(
    raw: Vec<(u32, Vec<SessionInfo>)>,
    names: &HashMap<u32, String>,
) -> Vec<ThreadSessions> {
    raw.into_iter()
        .map(|(thread, list)| {
            let mut sessions: Vec<SessionView> = list
                .into_iter()
                .map(|s| SessionView {
                    thread: s.handle.thread(),
                    index: s.handle.index(),
                    handle: s.handle.as_u64(),
                    proto: s.proto.to_string(),
                    local: s.local.to_string(),
                    remote: s.remote.to_string(),
                    state: s.state.to_string(),
                    rx_fill: s.rx_fill,
                    tx_fill: s.tx_fill,
                    app: s.app.0,
                    app_name: names.get(&s.app.0).cloned().unwrap_or_else(|| "?".into()),
                    app_worker: s.app_worker.0,
                    cut_through: s.cut_through,
                    listener: s.listener.map(|h| h.as_u64()),
                    transport: s
                        .transport
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                })
                .collect();
            sessions.sort_by_key(|s| s.index);
            ThreadSessions { thread, sessions }
        })
        .collect()
}

/// Sessions the apps connected (not accepted, not the server half of a
/// cut-through pair).
pub(crate) fn connects(threads: &[ThreadSessions]) -> Vec<SessionView> {
    threads
        .iter()
        .flat_map(|t| t.sessions.iter())
        .filter(|s| s.listener.is_none())
        .cloned()
        .collect()
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Every queue with its counters.
pub(crate) fn interfaces(workers: &[WorkerProbe], capturing: &[String]) -> Vec<InterfaceView> {
    workers
        .iter()
        .map(|w| {
            let c = w.counters.snapshot();
            let h = &w.stats.handoff;
            InterfaceView {
                name: w.info.name.clone(),
                queue: w.info.queue,
                mac: mac(&w.info.mac),
                mtu: w.info.mtu,
                mode: w.info.mode.clone(),
                rx_frames: c.rx_frames,
                rx_bytes: c.rx_bytes,
                tx_frames: c.tx_frames,
                tx_bytes: c.tx_bytes,
                drops: DropsView {
                    kernel: c.rx_kernel_drops,
                    malformed: c.rx_malformed,
                    bad_checksum: c.rx_bad_checksum,
                    tx_ring_full: c.tx_ring_full,
                    handoff: h.dropped.load(Relaxed),
                    injected: w.stats.injected_dropped.load(Relaxed),
                    bad_offload: c.rx_bad_offload,
                    no_buffers: c.rx_no_buffers,
                    tx_errors: c.tx_errors,
                },
                offload: w.offloads.vnet_hdr.then(|| OffloadView {
                    on: w.offloads.describe(),
                    rx_gso_frames: c.rx_gso_frames,
                    rx_gso_segments: c.rx_gso_segments,
                    tx_gso_frames: c.tx_gso_frames,
                    tx_gso_segments: c.tx_gso_segments,
                    rx_gso_split: c.rx_gso_split,
                    rx_csum_partial: c.rx_csum_partial,
                    rx_csum_device_verified: c.rx_csum_device_verified,
                    tx_csum_offloaded: c.tx_csum_offloaded,
                }),
                rx_checksum_unverified: c.rx_checksum_unverified,
                capturing: capturing.contains(&w.info.name),
                table: w.table,
                tcp: tcp_view(&w.stats),
                handoff: HandOffView {
                    sent: h.sent.load(Relaxed),
                    received: h.received.load(Relaxed),
                    wakeups: h.wakeups.load(Relaxed),
                },
                neighbors: w.group.as_ref().map_or(0, |g| g.neighbors.len() as u64),
                flows: w.group.as_ref().map_or(0, |g| g.directory.len() as u64),
            }
        })
        .collect()
}

/// A worker's TCP engine, if it runs hoststack's.
fn tcp_view(stats: &WorkerStats) -> Option<TcpView> {
    let snap = stats
        .tcp
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()?;
    Some(TcpView {
        connections: snap.connections as u64,
        half_open: snap.half_open as u64,
        time_wait: snap.time_wait as u64,
        buffer_chunks: snap.buffer_chunks as u64,
        frames_in: stats.tcp_segments_in.load(Relaxed),
        frames_out: stats.tcp_segments_out.load(Relaxed),
        frames_resolving: stats.tcp_segments_resolving.load(Relaxed),
        frames_unsent: stats.tcp_segments_unsent.load(Relaxed),
        counters: snap
            .counters
            .fields()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    })
}

/// Every worker with its loop and session counters.
pub(crate) fn workers(workers: &[WorkerProbe]) -> Vec<WorkerView> {
    workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let s = &w.stats;
            let ss = &w.session_stats;
            WorkerView {
                index: i as u32,
                interface: w.info.name.clone(),
                queue: w.info.queue,
                core: w.core,
                mode: w.mode.to_string(),
                state: if s.interrupt_state.load(Relaxed) == 1 {
                    "interrupt".into()
                } else {
                    "polling".into()
                },
                loops: s.loops.load(Relaxed),
                sleeps: s.sleeps.load(Relaxed),
                wakeups: s.wakeups.load(Relaxed),
                app_queues: ss.app_queues.load(Relaxed),
                pending_queues: ss.pending_queues.load(Relaxed),
                app_messages: ss.app_messages.load(Relaxed),
                batches: ss.batches.load(Relaxed),
                handoff_sent: s.handoff.sent.load(Relaxed),
                handoff_received: s.handoff.received.load(Relaxed),
                handoff_dropped: s.handoff.dropped.load(Relaxed),
                neighbor_answers: s.neighbor_answers.load(Relaxed),
            }
        })
        .collect()
}
