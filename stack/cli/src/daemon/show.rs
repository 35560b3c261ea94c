//! `show` commands: their grammar, the views they report and how those
//! views are printed.
//!
//! This module has no I/O. [`parse_show`] turns the words after `show`
//! into a [`ShowRequest`], or into the operator-facing error
//! (`unknown input 'X'`). The `render_*` functions turn views into
//! fixed-width text tables in the manner of VPP's CLI. The daemon fills
//! the views ([`crate::daemon::snapshot`]), and both the text and the JSON
//! (`--json`) come from the same values.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::daemon::config::format_size;
use hoststack_session::corruption_verdict::CorruptionRecord;

/// What `show` was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "kebab-case")]
pub(crate) enum ShowRequest {
    /// `show app [INDEX] [server|client] [mq] [verbose]`.
    App(ShowApp),
    /// `show app certificate`.
    AppCertificate,
    /// `show session [verbose]`.
    Session {
        /// More columns.
        verbose: bool,
    },
    /// `show interface`.
    Interface,
    /// `show worker`.
    Worker,
    /// `show namespace`.
    Namespace,
}

/// The flags of `show app`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct ShowApp {
    /// One app, by index.
    pub(crate) index: Option<u32>,
    /// Listeners (per app worker).
    pub(crate) server: bool,
    /// Connects (sessions the apps opened).
    pub(crate) client: bool,
    /// Message queues.
    pub(crate) mq: bool,
    /// More columns.
    pub(crate) verbose: bool,
}

/// What `show app` prints, decided from its flags the way VPP's
/// `show app` decides it: message queues first, then listeners, then
/// connects, then one app in detail, else the list of apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppView {
    /// Message queues, of one app or of all.
    Mq(Option<u32>),
    /// Listeners, of one app or of all.
    Server(Option<u32>),
    /// Connects, of one app or of all.
    Client(Option<u32>),
    /// One app in detail.
    Detail(u32),
    /// Every app, one line each.
    List,
}

impl ShowApp {
    /// Which view the flags ask for.
    pub(crate) fn view(&self) -> AppView {
        if self.mq {
            AppView::Mq(self.index)
        } else if self.server {
            AppView::Server(self.index)
        } else if self.client {
            AppView::Client(self.index)
        } else if let Some(i) = self.index {
            AppView::Detail(i)
        } else {
            AppView::List
        }
    }
}

/// A `show` the operator got wrong, or that names something absent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum ShowError {
    /// A word the grammar does not have.
    #[error("unknown input '{0}'")]
    UnknownInput(String),
    /// `show` with nothing after it.
    #[error("show what? (app, session, interface, worker, namespace)")]
    Nothing,
    /// An app index that names no app.
    #[error("No app with index {0}")]
    NoApp(u32),
}

/// Parses the words after `show`.
pub(crate) fn parse_show<S: AsRef<str>>(words: &[S]) -> Result<ShowRequest, ShowError> {
    let mut it = words.iter().map(AsRef::as_ref);
    let Some(first) = it.next() else {
        return Err(ShowError::Nothing);
    };
    let rest: Vec<&str> = it.collect();
    let flags_only = |allowed: &[&str]| -> Result<Vec<&str>, ShowError> {
        for w in &rest {
            if !allowed.contains(w) {
                return Err(ShowError::UnknownInput((*w).to_string()));
            }
        }
        Ok(rest.clone())
    };
    match first {
        "app" => parse_show_app(&rest),
        "session" => {
            let f = flags_only(&["verbose"])?;
            Ok(ShowRequest::Session {
                verbose: !f.is_empty(),
            })
        }
        "interface" => flags_only(&[]).map(|_| ShowRequest::Interface),
        "worker" => flags_only(&[]).map(|_| ShowRequest::Worker),
        "namespace" => flags_only(&[]).map(|_| ShowRequest::Namespace),
        other => Err(ShowError::UnknownInput(other.to_string())),
    }
}

fn parse_show_app(words: &[&str]) -> Result<ShowRequest, ShowError> {
    if words.first() == Some(&"certificate") {
        if let Some(extra) = words.get(1) {
            return Err(ShowError::UnknownInput((*extra).to_string()));
        }
        return Ok(ShowRequest::AppCertificate);
    }
    let mut a = ShowApp::default();
    for &w in words {
        match w {
            "server" => a.server = true,
            "client" => a.client = true,
            "mq" => a.mq = true,
            "verbose" => a.verbose = true,
            _ => match w.parse::<u32>() {
                Ok(i) if a.index.is_none() => a.index = Some(i),
                _ => return Err(ShowError::UnknownInput(w.to_string())),
            },
        }
    }
    Ok(ShowRequest::App(a))
}

// ---- views ---------------------------------------------------------------

/// One app, as `show app` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppSummary {
    /// App index.
    pub(crate) index: u32,
    /// Name.
    pub(crate) name: String,
    /// Namespace id.
    pub(crate) namespace: String,
    /// Namespace index.
    pub(crate) namespace_index: u32,
    /// Api client (external apps).
    pub(crate) api_client: Option<u32>,
    /// In-process app.
    pub(crate) builtin: bool,
    /// The process that attached it over an app socket (SO_PEERCRED at
    /// its connect); none for builtin apps.
    #[serde(default)]
    pub(crate) pid: Option<u32>,
    /// Its user id.
    #[serde(default)]
    pub(crate) uid: Option<u32>,
    /// Its group id.
    #[serde(default)]
    pub(crate) gid: Option<u32>,
}

/// An app in detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppDetail {
    /// What the list shows.
    #[serde(flatten)]
    pub(crate) summary: AppSummary,
    /// Local scope.
    pub(crate) scope_local: bool,
    /// Global scope.
    pub(crate) scope_global: bool,
    /// First segment size.
    pub(crate) segment_size: u64,
    /// Additional segment size.
    pub(crate) add_segment_size: u64,
    /// rx fifo size.
    pub(crate) rx_fifo_size: u32,
    /// tx fifo size.
    pub(crate) tx_fifo_size: u32,
    /// Event queue slots.
    pub(crate) event_queue_size: u32,
    /// An external app's private rx queues (one per stack thread; 0 when
    /// its requests come over the app socket); None for builtin apps.
    pub(crate) rx_queues: Option<u32>,
    /// Its workers.
    pub(crate) workers: Vec<AppWorkerView>,
    /// Its listeners.
    pub(crate) listeners: Vec<ListenerView>,
    /// Sessions it connected.
    pub(crate) connects: Vec<SessionView>,
}

/// One worker of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppWorkerView {
    /// Global app-worker index.
    pub(crate) index: u32,
    /// Index inside the app.
    pub(crate) map_index: u32,
    /// Api client that registered it.
    pub(crate) api_client: Option<u32>,
    /// Segments.
    pub(crate) segments: usize,
    /// Segments of its cut-through sessions (shared with each peer
    /// worker, one set per pair), besides its own.
    #[serde(default)]
    pub(crate) cut_through_segments: usize,
    /// Fifos allocated.
    pub(crate) fifos: usize,
    /// Bytes of fifos in use.
    pub(crate) bytes_in_use: usize,
    /// Sessions it owns.
    pub(crate) sessions: usize,
    /// Listeners it is part of.
    pub(crate) listeners: usize,
    /// Sessions accepted.
    pub(crate) accepted: u64,
    /// Connects completed.
    pub(crate) connected: u64,
    /// Sessions ended.
    pub(crate) closed: u64,
    /// Events delivered.
    pub(crate) events: u64,
    /// Events dropped (the backlog overflowed or the queue is corrupted).
    pub(crate) events_dropped: u64,
    /// Events that found the event queue full and waited in the stack.
    #[serde(default)]
    pub(crate) events_postponed: u64,
    /// The longest such wait, microseconds.
    #[serde(default)]
    pub(crate) postponed_max_wait_us: u64,
}

/// A listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ListenerView {
    /// Owning app.
    pub(crate) app: u32,
    /// Its name.
    pub(crate) app_name: String,
    /// Map indices of the app workers sessions go to.
    pub(crate) workers: Vec<u32>,
    /// "TCP" or "UDP".
    pub(crate) proto: String,
    /// Listened endpoint.
    pub(crate) endpoint: String,
    /// Listener handle.
    pub(crate) handle: u64,
    /// In the namespace's local table.
    pub(crate) local: bool,
    /// Through the transport.
    pub(crate) global: bool,
    /// Api client of the app.
    pub(crate) api_client: Option<u32>,
}

/// A message queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QueueView {
    /// App index.
    pub(crate) app: u32,
    /// "event" (stack to app worker) or "rx" (app to a stack thread).
    pub(crate) kind: String,
    /// App worker map index (event queues) or stack thread (rx queues).
    pub(crate) index: u32,
    /// Whether the rx queue is the main (control) thread's.
    pub(crate) main_thread: bool,
    /// Slots.
    pub(crate) slots: u64,
    /// Slots in use, when known.
    pub(crate) used: Option<u64>,
    /// Signals an eventfd.
    pub(crate) eventfd: bool,
    /// Event queues: events that found it full and waited in the stack.
    #[serde(default)]
    pub(crate) postponed: u64,
    /// Event queues: events waiting now.
    #[serde(default)]
    pub(crate) waiting: u64,
    /// Event queues: the longest any event waited, microseconds.
    #[serde(default)]
    pub(crate) max_wait_us: u64,
}

/// A session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionView {
    /// Stack thread.
    pub(crate) thread: u32,
    /// Index in the thread's pool.
    pub(crate) index: u32,
    /// Handle.
    pub(crate) handle: u64,
    /// "TCP" or "UDP".
    pub(crate) proto: String,
    /// Our end.
    pub(crate) local: String,
    /// The peer.
    pub(crate) remote: String,
    /// State.
    pub(crate) state: String,
    /// Bytes waiting in the rx fifo.
    pub(crate) rx_fill: u32,
    /// Bytes waiting in the tx fifo.
    pub(crate) tx_fill: u32,
    /// Owning app.
    pub(crate) app: u32,
    /// Its name.
    pub(crate) app_name: String,
    /// Owning app worker (global index).
    pub(crate) app_worker: u32,
    /// Cut-through.
    pub(crate) cut_through: bool,
    /// Listener it was accepted on (None: the app connected it).
    pub(crate) listener: Option<u64>,
    /// The transport's view (state, cwnd, srtt, rto, ...) with
    /// `show session verbose`.
    #[serde(default)]
    pub(crate) transport: Vec<(String, String)>,
}

/// The sessions of one stack thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ThreadSessions {
    /// Thread index.
    pub(crate) thread: u32,
    /// Its sessions.
    pub(crate) sessions: Vec<SessionView>,
}

/// A cert/key pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CertView {
    /// Index (0 is the reserved default).
    pub(crate) index: u32,
    /// Certificate bytes.
    pub(crate) cert_len: usize,
    /// Key bytes.
    pub(crate) key_len: usize,
    /// The reserved default pair.
    pub(crate) default: bool,
    /// Apps called back when it is deleted.
    pub(crate) interested_apps: Vec<u32>,
}

/// Drops by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct DropsView {
    /// Dropped by the kernel (ring full, too large).
    pub(crate) kernel: u64,
    /// Malformed frames.
    pub(crate) malformed: u64,
    /// Bad L4 checksums.
    pub(crate) bad_checksum: u64,
    /// Transmit ring full.
    pub(crate) tx_ring_full: u64,
    /// Handed to this queue's worker by another and dropped: its hand-off
    /// ring was full.
    #[serde(default)]
    pub(crate) handoff: u64,
    /// Frames for smoltcp that no queue received (hand-offs, neighbour
    /// answers) dropped because too many waited.
    #[serde(default)]
    pub(crate) injected: u64,
    /// Frames whose offload header was malformed.
    #[serde(default)]
    pub(crate) bad_offload: u64,
    /// No receive buffer (or no frame for a datagram of a UDP train).
    #[serde(default)]
    pub(crate) no_buffers: u64,
    /// Writes the device refused.
    #[serde(default)]
    pub(crate) tx_errors: u64,
}

/// What a device with offloads (a TAP with vnet headers) does for the
/// queue, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OffloadView {
    /// The offloads on (`csum tso4 tso6 uso`, or `none`).
    pub(crate) on: String,
    /// GSO super-frames received.
    pub(crate) rx_gso_frames: u64,
    /// Wire segments they stood for.
    pub(crate) rx_gso_segments: u64,
    /// GSO super-frames sent.
    pub(crate) tx_gso_frames: u64,
    /// Wire segments they became.
    pub(crate) tx_gso_segments: u64,
    /// UDP datagrams cut out of received UDP trains.
    pub(crate) rx_gso_split: u64,
    /// Received partial checksums (checked by seed and place).
    pub(crate) rx_csum_partial: u64,
    /// Received checksums the kernel had verified.
    pub(crate) rx_csum_device_verified: u64,
    /// Frames sent with a partial checksum for the device to complete.
    pub(crate) tx_csum_offloaded: u64,
}

/// Packets between a queue's worker and the interface's other workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct HandOffView {
    /// Packets that arrived here for a flow another worker holds, handed
    /// there.
    pub(crate) sent: u64,
    /// Packets another queue received for a flow this worker holds.
    pub(crate) received: u64,
    /// Times a hand-off woke this worker.
    pub(crate) wakeups: u64,
}

/// One interface queue and its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InterfaceView {
    /// Interface name.
    pub(crate) name: String,
    /// Queue.
    pub(crate) queue: u32,
    /// Ethernet address.
    pub(crate) mac: String,
    /// MTU.
    pub(crate) mtu: usize,
    /// How the queue runs (driver, attach mode, copy mode).
    pub(crate) mode: String,
    /// Frames received.
    pub(crate) rx_frames: u64,
    /// Bytes received.
    pub(crate) rx_bytes: u64,
    /// Frames sent.
    pub(crate) tx_frames: u64,
    /// Bytes sent.
    pub(crate) tx_bytes: u64,
    /// Drops by reason.
    pub(crate) drops: DropsView,
    /// Frames whose L4 checksum was accepted unverified (veth partial).
    pub(crate) rx_checksum_unverified: u64,
    /// The device's offloads and their counters (a TAP with vnet headers;
    /// absent elsewhere).
    #[serde(default)]
    pub(crate) offload: Option<OffloadView>,
    /// A packet capture is running.
    pub(crate) capturing: bool,
    /// The table (FIB index) the interface belongs to.
    pub(crate) table: u32,
    /// hoststack's TCP engine on this queue (absent with smoltcp's TCP).
    #[serde(default)]
    pub(crate) tcp: Option<TcpView>,
    /// Hand-offs to and from the interface's other queues' workers.
    #[serde(default)]
    pub(crate) handoff: HandOffView,
    /// Next hops in the interface's shared neighbour table.
    #[serde(default)]
    pub(crate) neighbors: u64,
    /// TCP flows in the interface's flow directory (0 with one queue: the
    /// directory is used only when queues share an interface).
    #[serde(default)]
    pub(crate) flows: u64,
}

/// A queue's TCP engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TcpView {
    /// Established and closing connections.
    pub(crate) connections: u64,
    /// Half-open entries.
    pub(crate) half_open: u64,
    /// TIME-WAIT entries.
    pub(crate) time_wait: u64,
    /// Buffer chunks in use.
    pub(crate) buffer_chunks: u64,
    /// Segments from the wire handed to the engine.
    pub(crate) frames_in: u64,
    /// Segments sent in frames built by the worker.
    pub(crate) frames_out: u64,
    /// Segments sent through smoltcp while their next hop resolved.
    pub(crate) frames_resolving: u64,
    /// Segments dropped unsent (no route, resolution queue full).
    pub(crate) frames_unsent: u64,
    /// Every engine counter by name (drops and refusals by reason,
    /// retransmissions, recoveries, cookies...).
    pub(crate) counters: std::collections::BTreeMap<String, u64>,
}

/// One worker thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WorkerView {
    /// Worker index.
    pub(crate) index: u32,
    /// Its queue's interface.
    pub(crate) interface: String,
    /// Its queue.
    pub(crate) queue: u32,
    /// Core it is pinned to.
    pub(crate) core: Option<usize>,
    /// Configured mode: poll, interrupt, adaptive.
    pub(crate) mode: String,
    /// What it does now: polling or interrupt (sleeping when idle).
    pub(crate) state: String,
    /// Loop iterations.
    pub(crate) loops: u64,
    /// Times it slept.
    pub(crate) sleeps: u64,
    /// Times it woke up.
    pub(crate) wakeups: u64,
    /// App rx queues it serves.
    pub(crate) app_queues: u64,
    /// App rx queues pending (postponed) after its last round.
    pub(crate) pending_queues: u64,
    /// App messages handled.
    pub(crate) app_messages: u64,
    /// Pending-list batches served.
    pub(crate) batches: u64,
    /// Packets handed to other workers of the interface.
    #[serde(default)]
    pub(crate) handoff_sent: u64,
    /// Packets other workers handed to this one.
    #[serde(default)]
    pub(crate) handoff_received: u64,
    /// Packets for this worker dropped on a full hand-off ring.
    #[serde(default)]
    pub(crate) handoff_dropped: u64,
    /// smoltcp ARP requests and neighbour solicitations answered from the
    /// interface's shared neighbour table.
    #[serde(default)]
    pub(crate) neighbor_answers: u64,
}

/// An app namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NamespaceView {
    /// Index.
    pub(crate) index: u32,
    /// Id.
    pub(crate) id: String,
    /// Whether apps must present a secret.
    pub(crate) secret_set: bool,
    /// Bound interface.
    pub(crate) interface: Option<String>,
    /// FIB (table) index.
    pub(crate) table: u32,
    /// Apps attached.
    pub(crate) apps: usize,
    /// Its app socket.
    pub(crate) app_socket: Option<String>,
}

// ---- text ----------------------------------------------------------------

/// Drops the padding that fixed-width columns leave at line ends.
fn tidy(s: String) -> String {
    let mut out = String::with_capacity(s.len());
    for line in s.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |x| x.to_string())
}

fn proto_short(proto: &str) -> &str {
    match proto {
        "TCP" => "T",
        "UDP" => "U",
        other => other,
    }
}

/// `[T] 10.77.0.1:7->10.77.0.2:40000`.
fn connection(s: &SessionView) -> String {
    format!("[{}] {}->{}", proto_short(&s.proto), s.local, s.remote)
}

/// `show app`: one line per app.
pub(crate) fn render_app_list(apps: &[AppSummary], corruption: &CorruptionRecord) -> String {
    let mut s = if apps.is_empty() {
        "No active apps\n".to_string()
    } else {
        let mut s = format!(
            "{:<10}{:<20}{:<40}{:<10}{:<10}{:<10}\n",
            "Index", "Name", "Namespace", "Pid", "Uid", "Gid"
        );
        let id = |v: Option<u32>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        for a in apps {
            let _ = writeln!(
                s,
                "{:<10}{:<20}{:<40}{:<10}{:<10}{:<10}",
                a.index,
                a.name,
                a.namespace,
                id(a.pid),
                id(a.uid),
                id(a.gid)
            );
        }
        tidy(s)
    };
    if let Some((name, what)) = &corruption.last {
        let _ = writeln!(
            s,
            "{} app(s) detached for corrupting their shared memory; last: {name} ({what})",
            corruption.apps_detached
        );
    }
    s
}

/// `show app INDEX`: the app, its workers, listeners and connects.
pub(crate) fn render_app_detail(a: &AppDetail) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "app-name {} app-index {} ns-index {} ({}) api-client {} scope {}{}",
        a.summary.name,
        a.summary.index,
        a.summary.namespace_index,
        a.summary.namespace,
        opt(a.summary.api_client),
        if a.scope_local { "local" } else { "" },
        match (a.scope_local, a.scope_global) {
            (true, true) => "+global",
            (false, true) => "global",
            _ => "",
        }
    );
    let _ = writeln!(
        s,
        "seg-size {} add-seg-size {} rx-fifo-size {} tx-fifo-size {} event-queue-size {}",
        format_size(a.segment_size),
        format_size(a.add_segment_size),
        format_size(a.rx_fifo_size.into()),
        format_size(a.tx_fifo_size.into()),
        a.event_queue_size
    );
    match a.rx_queues {
        Some(0) => {
            let _ = writeln!(s, "rx-queues none (requests come over the app socket)");
        }
        Some(n) => {
            let _ = writeln!(s, "rx-queues {n} private (one per stack thread)");
        }
        None => {}
    }
    let _ = writeln!(s, "workers:");
    for w in &a.workers {
        let _ = writeln!(
            s,
            "  wrk-index {} map-index {} api-client {}: segments {} cut-through-segments {} fifos {} in-use {} sessions {} listeners {}",
            w.index,
            w.map_index,
            opt(w.api_client),
            w.segments,
            w.cut_through_segments,
            w.fifos,
            w.bytes_in_use,
            w.sessions,
            w.listeners
        );
        let _ = writeln!(
            s,
            "    accepted {} connected {} closed {} events {} events-postponed {} (longest wait {} us) events-dropped {}",
            w.accepted,
            w.connected,
            w.closed,
            w.events,
            w.events_postponed,
            w.postponed_max_wait_us,
            w.events_dropped
        );
    }
    if a.listeners.is_empty() {
        let _ = writeln!(s, "listeners: none");
    } else {
        let _ = writeln!(s, "listeners:");
        for l in &a.listeners {
            let _ = writeln!(
                s,
                "  [{}] {} workers {:?}{}{}",
                proto_short(&l.proto),
                l.endpoint,
                l.workers,
                if l.local { " local" } else { "" },
                if l.global { " global" } else { "" }
            );
        }
    }
    if a.connects.is_empty() {
        let _ = writeln!(s, "connects: none");
    } else {
        let _ = writeln!(s, "connects:");
        for c in &a.connects {
            let _ = writeln!(s, "  {} {}", connection(c), c.state);
        }
    }
    tidy(s)
}

/// `show app server`: every listener, by app worker.
pub(crate) fn render_listeners(listeners: &[ListenerView], verbose: bool) -> String {
    if listeners.is_empty() {
        return "No active server bindings\n".into();
    }
    let mut s = if verbose {
        format!(
            "{:<40}{:<20}{:<10}{:<12}{:<20}{:<8}\n",
            "Connection", "App", "Wrk", "API Client", "ListenerID", "Scope"
        )
    } else {
        format!("{:<40}{:<20}{:<10}\n", "Connection", "App", "Wrk")
    };
    for l in listeners {
        let conn = format!("[{}] {}", proto_short(&l.proto), l.endpoint);
        let wrk = l
            .workers
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if verbose {
            let scope = match (l.local, l.global) {
                (true, true) => "both",
                (true, false) => "local",
                _ => "global",
            };
            let _ = writeln!(
                s,
                "{:<40}{:<20}{:<10}{:<12}{:<20}{:<8}",
                conn,
                l.app_name,
                wrk,
                opt(l.api_client),
                format!("{:#x}", l.handle),
                scope
            );
        } else {
            let _ = writeln!(s, "{:<40}{:<20}{:<10}", conn, l.app_name, wrk);
        }
    }
    tidy(s)
}

/// `show app client`: sessions apps connected.
pub(crate) fn render_connects(connects: &[SessionView], verbose: bool) -> String {
    if connects.is_empty() {
        return "No active client sessions\n".into();
    }
    let mut s = if verbose {
        format!(
            "{:<50}{:<20}{:<10}{:<20}{:<18}\n",
            "Connection", "App", "Wrk", "Handle", "State"
        )
    } else {
        format!("{:<50}{:<20}{:<10}\n", "Connection", "App", "Wrk")
    };
    for c in connects {
        if verbose {
            let _ = writeln!(
                s,
                "{:<50}{:<20}{:<10}{:<20}{:<18}",
                connection(c),
                c.app_name,
                c.app_worker,
                format!("{:#x}", c.handle),
                c.state
            );
        } else {
            let _ = writeln!(
                s,
                "{:<50}{:<20}{:<10}",
                connection(c),
                c.app_name,
                c.app_worker
            );
        }
    }
    tidy(s)
}

/// `show app mq`: event queues (`[A<app>][<worker>]`) and rx queues
/// (`[A<app>][R<thread>]`).
pub(crate) fn render_queues(queues: &[QueueView]) -> String {
    if queues.is_empty() {
        return "No app message queues\n".into();
    }
    let mut s = String::new();
    for q in queues {
        let (label, what) = if q.kind == "event" {
            (
                format!("[A{}][{}]", q.app, q.index),
                "event queue".to_string(),
            )
        } else if q.main_thread {
            (
                format!("[A{}][R{}]", q.app, q.index),
                "rx queue, main thread".to_string(),
            )
        } else {
            (
                format!("[A{}][R{}]", q.app, q.index),
                format!("rx queue, thread {}", q.index),
            )
        };
        let used = q.used.map_or(String::new(), |u| format!(", {u} used"));
        let efd = if q.eventfd { ", eventfd" } else { "" };
        let postponed = if q.postponed > 0 || q.waiting > 0 {
            format!(
                ", {} postponed ({} waiting, longest wait {} us)",
                q.postponed, q.waiting, q.max_wait_us
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "{label:<12} {what}: {} slots{used}{efd}{postponed}",
            q.slots
        );
    }
    tidy(s)
}

/// `show app certificate`.
pub(crate) fn render_certs(certs: &[CertView]) -> String {
    let mut s = String::new();
    for c in certs {
        if c.default {
            let _ = writeln!(s, "DEFAULT (cert:{}, key:{})", c.cert_len, c.key_len);
        } else {
            let _ = writeln!(s, "{} (cert:{}, key:{})", c.index, c.cert_len, c.key_len);
        }
    }
    tidy(s)
}

/// Sessions of one thread that `show session` lists without `verbose`;
/// past it, it prints counts.
pub(crate) const SESSION_LIST_LIMIT: usize = 200;

/// `show session [verbose]`: per stack thread.
pub(crate) fn render_sessions(threads: &[ThreadSessions], verbose: bool) -> String {
    let mut s = String::new();
    for t in threads {
        if t.sessions.is_empty() {
            let _ = writeln!(s, "Thread {}: no sessions", t.thread);
            continue;
        }
        let n = t.sessions.len();
        let plural = if n == 1 { "" } else { "s" };
        let _ = writeln!(s, "Thread {}: {n} active session{plural}", t.thread);
        if !verbose && n > SESSION_LIST_LIMIT {
            // A summary, not 100,000 lines.
            let mut counts: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
            for x in &t.sessions {
                let kind = if x.cut_through {
                    "cut-through"
                } else {
                    x.proto.as_str()
                };
                *counts.entry((kind, x.state.as_str())).or_default() += 1;
            }
            for ((kind, state), c) in counts {
                let _ = writeln!(s, "    {c:>8} {kind} {state}");
            }
            let _ = writeln!(
                s,
                "    (more than {SESSION_LIST_LIMIT}: `show session verbose` lists them, `--json` gives them all)"
            );
            continue;
        }
        if verbose {
            let _ = writeln!(
                s,
                "{:<52}{:<19}{:<10}{:<10}{:<20}{:<6}{:<20}{:<4}",
                "Connection", "State", "Rx-f", "Tx-f", "App", "Wrk", "Handle", "Kind"
            );
        } else {
            let _ = writeln!(
                s,
                "{:<52}{:<19}{:<10}{:<10}{:<3}",
                "Connection", "State", "Rx-f", "Tx-f", "App"
            );
        }
        for x in &t.sessions {
            let conn = format!("[{}:{}]{}", x.thread, x.index, connection(x));
            if verbose {
                let kind = if x.cut_through {
                    "cut-through"
                } else if x.listener.is_some() {
                    "accepted"
                } else {
                    "connected"
                };
                let _ = writeln!(
                    s,
                    "{:<52}{:<19}{:<10}{:<10}{:<20}{:<6}{:<20}{}",
                    conn,
                    x.state,
                    x.rx_fill,
                    x.tx_fill,
                    x.app_name,
                    x.app_worker,
                    format!("{:#x}", x.handle),
                    kind
                );
                if !x.transport.is_empty() {
                    let details: Vec<String> = x
                        .transport
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect();
                    let _ = writeln!(s, "    {}", details.join(", "));
                }
            } else {
                let _ = writeln!(
                    s,
                    "{:<52}{:<19}{:<10}{:<10}{}",
                    conn, x.state, x.rx_fill, x.tx_fill, x.app_name
                );
            }
        }
    }
    if s.is_empty() {
        s.push_str("No stack threads answered\n");
    }
    tidy(s)
}

/// `show interface`: each queue and its counters.
pub(crate) fn render_interfaces(ifs: &[InterfaceView]) -> String {
    let mut s = format!(
        "{:<16}{:<7}{:<19}{:<7}{}\n",
        "Interface", "Queue", "MAC", "MTU", "Mode"
    );
    for i in ifs {
        let _ = writeln!(
            s,
            "{:<16}{:<7}{:<19}{:<7}{}{}{}",
            i.name,
            i.queue,
            i.mac,
            i.mtu,
            i.mode,
            if i.table == 0 {
                String::new()
            } else {
                format!(", table {}", i.table)
            },
            if i.capturing { " (capturing)" } else { "" }
        );
        let _ = writeln!(
            s,
            "    rx {} frames {} bytes, tx {} frames {} bytes",
            i.rx_frames, i.rx_bytes, i.tx_frames, i.tx_bytes
        );
        let _ = writeln!(
            s,
            "    drops: kernel {} malformed {} bad-checksum {} tx-ring-full {} hand-off {} injected {}; checksum unverified {}",
            i.drops.kernel,
            i.drops.malformed,
            i.drops.bad_checksum,
            i.drops.tx_ring_full,
            i.drops.handoff,
            i.drops.injected,
            i.rx_checksum_unverified
        );
        let _ = writeln!(
            s,
            "    hand-off: sent {} received {} wakeups {}; interface: {} neighbours, {} flows in the directory",
            i.handoff.sent, i.handoff.received, i.handoff.wakeups, i.neighbors, i.flows
        );
        if let Some(o) = &i.offload {
            let _ = writeln!(
                s,
                "    offloads: {}; super-frames rx {} ({} segments) tx {} ({} segments); UDP trains split into {} datagrams",
                o.on,
                o.rx_gso_frames,
                o.rx_gso_segments,
                o.tx_gso_frames,
                o.tx_gso_segments,
                o.rx_gso_split
            );
            let _ = writeln!(
                s,
                "    checksums: rx partial {} kernel-verified {}, tx partial {}; drops: bad-offload {} no-buffer {} tx-error {}",
                o.rx_csum_partial,
                o.rx_csum_device_verified,
                o.tx_csum_offloaded,
                i.drops.bad_offload,
                i.drops.no_buffers,
                i.drops.tx_errors
            );
        }
        if let Some(t) = &i.tcp {
            let _ = writeln!(
                s,
                "    tcp: {} connections, {} half-open, {} time-wait, {} buffer chunks; segments in {} out {} resolving {} unsent {}",
                t.connections,
                t.half_open,
                t.time_wait,
                t.buffer_chunks,
                t.frames_in,
                t.frames_out,
                t.frames_resolving,
                t.frames_unsent
            );
            // The counters that moved, a few to a line.
            let moved: Vec<String> = t
                .counters
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{} {v}", k.replace('_', "-")))
                .collect();
            for line in moved.chunks(6) {
                let _ = writeln!(s, "      {}", line.join(", "));
            }
        }
    }
    tidy(s)
}

/// `show worker`.
pub(crate) fn render_workers(ws: &[WorkerView]) -> String {
    let mut s = format!(
        "{:<8}{:<16}{:<7}{:<6}{:<11}{:<11}{:<14}{:<10}{:<10}{:<8}{:<9}{:<10}{:<10}{:<10}{:<10}{:<10}{}\n",
        "Worker",
        "Interface",
        "Queue",
        "Core",
        "Mode",
        "State",
        "Loops",
        "Sleeps",
        "Wakeups",
        "AppQs",
        "Pending",
        "AppMsgs",
        "Batches",
        "HandOut",
        "HandIn",
        "HandDrop",
        "NbrAns"
    );
    for w in ws {
        let _ = writeln!(
            s,
            "{:<8}{:<16}{:<7}{:<6}{:<11}{:<11}{:<14}{:<10}{:<10}{:<8}{:<9}{:<10}{:<10}{:<10}{:<10}{:<10}{}",
            w.index,
            w.interface,
            w.queue,
            opt(w.core),
            w.mode,
            w.state,
            w.loops,
            w.sleeps,
            w.wakeups,
            w.app_queues,
            w.pending_queues,
            w.app_messages,
            w.batches,
            w.handoff_sent,
            w.handoff_received,
            w.handoff_dropped,
            w.neighbor_answers
        );
    }
    tidy(s)
}

/// `show namespace`.
pub(crate) fn render_namespaces(ns: &[NamespaceView]) -> String {
    let mut s = format!(
        "{:<7}{:<20}{:<8}{:<16}{:<7}{:<6}{}\n",
        "Index", "Id", "Secret", "Interface", "Table", "Apps", "App socket"
    );
    for n in ns {
        let _ = writeln!(
            s,
            "{:<7}{:<20}{:<8}{:<16}{:<7}{:<6}{}",
            n.index,
            n.id,
            if n.secret_set { "yes" } else { "no" },
            n.interface.as_deref().unwrap_or("-"),
            n.table,
            n.apps,
            n.app_socket.as_deref().unwrap_or("-")
        );
    }
    tidy(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ShowRequest, ShowError> {
        let words: Vec<&str> = s.split_whitespace().collect();
        parse_show(&words)
    }

    fn app(s: &str) -> ShowApp {
        match parse(s).unwrap() {
            ShowRequest::App(a) => a,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn show_app_takes_its_words_in_any_order() {
        assert_eq!(app("app"), ShowApp::default());
        let a = app("app verbose 3 mq");
        assert_eq!(a.index, Some(3));
        assert!(a.mq && a.verbose && !a.server && !a.client);
        assert!(app("app server").server);
        assert!(app("app client verbose").client);
    }

    #[test]
    fn show_app_picks_its_view_like_vpp() {
        assert_eq!(app("app").view(), AppView::List);
        assert_eq!(app("app 2").view(), AppView::Detail(2));
        assert_eq!(app("app 2 verbose").view(), AppView::Detail(2));
        assert_eq!(app("app mq").view(), AppView::Mq(None));
        assert_eq!(app("app 1 mq server").view(), AppView::Mq(Some(1)));
        assert_eq!(app("app server client").view(), AppView::Server(None));
        assert_eq!(app("app client 4").view(), AppView::Client(Some(4)));
    }

    #[test]
    fn unknown_words_are_named_in_the_error() {
        let e = parse("app bogus").unwrap_err();
        assert_eq!(e, ShowError::UnknownInput("bogus".into()));
        assert_eq!(e.to_string(), "unknown input 'bogus'");
        assert_eq!(
            parse("app 1 2").unwrap_err(),
            ShowError::UnknownInput("2".into())
        );
        assert_eq!(
            parse("app -1").unwrap_err(),
            ShowError::UnknownInput("-1".into())
        );
        assert_eq!(
            parse("session fast").unwrap_err(),
            ShowError::UnknownInput("fast".into())
        );
        assert_eq!(
            parse("interface x").unwrap_err(),
            ShowError::UnknownInput("x".into())
        );
        assert_eq!(
            parse("frobnicate").unwrap_err(),
            ShowError::UnknownInput("frobnicate".into())
        );
        assert_eq!(parse("").unwrap_err(), ShowError::Nothing);
        assert_eq!(
            parse("app certificate verbose").unwrap_err(),
            ShowError::UnknownInput("verbose".into())
        );
        assert_eq!(ShowError::NoApp(9).to_string(), "No app with index 9");
    }

    #[test]
    fn the_other_shows_parse() {
        assert_eq!(
            parse("app certificate").unwrap(),
            ShowRequest::AppCertificate
        );
        assert_eq!(
            parse("session").unwrap(),
            ShowRequest::Session { verbose: false }
        );
        assert_eq!(
            parse("session verbose").unwrap(),
            ShowRequest::Session { verbose: true }
        );
        assert_eq!(parse("interface").unwrap(), ShowRequest::Interface);
        assert_eq!(parse("worker").unwrap(), ShowRequest::Worker);
        assert_eq!(parse("namespace").unwrap(), ShowRequest::Namespace);
    }

    #[test]
    fn requests_travel_as_json_and_come_back_equal() {
        for s in [
            "app 3 mq verbose",
            "app certificate",
            "session verbose",
            "worker",
        ] {
            let r = parse(s).unwrap();
            let j = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<ShowRequest>(&j).unwrap(), r, "{j}");
        }
    }

    fn summary(index: u32, name: &str) -> AppSummary {
        AppSummary {
            index,
            name: name.into(),
            namespace: "default".into(),
            namespace_index: 0,
            api_client: Some(7),
            builtin: false,
            pid: Some(4242),
            uid: Some(1000),
            gid: Some(100),
        }
    }

    fn session(thread: u32, index: u32, listener: Option<u64>) -> SessionView {
        SessionView {
            thread,
            index,
            handle: (u64::from(thread) << 32) | u64::from(index),
            proto: "TCP".into(),
            local: "10.77.0.1:7".into(),
            remote: "10.77.0.2:40000".into(),
            state: "READY".into(),
            rx_fill: 12,
            tx_fill: 0,
            app: 0,
            app_name: "echo".into(),
            app_worker: 0,
            cut_through: false,
            listener,
            transport: Vec::new(),
        }
    }

    #[test]
    fn many_sessions_are_summarised_and_verbose_lists_them_with_transport_details() {
        let mut sessions: Vec<SessionView> = (0..500).map(|i| session(0, i, Some(1))).collect();
        sessions[3].state = "CLOSING".into();
        sessions[4].transport = vec![
            ("cwnd".into(), "14480".into()),
            ("srtt".into(), "90us".into()),
        ];
        let threads = [ThreadSessions {
            thread: 0,
            sessions,
        }];
        let short = render_sessions(&threads, false);
        assert!(short.contains("Thread 0: 500 active sessions"), "{short}");
        assert!(short.contains("     499 TCP READY"), "{short}");
        assert!(short.contains("       1 TCP CLOSING"), "{short}");
        assert!(short.lines().count() < 10, "{short}");
        let long = render_sessions(&threads, true);
        assert_eq!(long.lines().filter(|l| l.starts_with("[0:")).count(), 500);
        assert!(long.contains("    cwnd 14480, srtt 90us"), "{long}");
    }

    #[test]
    fn the_app_list_has_vpp_columns() {
        let none = CorruptionRecord::default();
        let t = render_app_list(&[summary(0, "echo"), summary(1, "client")], &none);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0].trim_end(),
            "Index     Name                Namespace                               Pid       Uid       Gid"
        );
        assert_eq!(
            lines[1].trim_end(),
            "0         echo                default                                 4242      1000      100"
        );
        assert_eq!(lines.len(), 3);
        assert_eq!(render_app_list(&[], &none), "No active apps\n");
        let bad = CorruptionRecord {
            apps_detached: 2,
            last: Some(("evil".into(), "rx queue: corrupted".into())),
        };
        assert!(
            render_app_list(&[], &bad).ends_with(
                "2 app(s) detached for corrupting their shared memory; last: evil (rx queue: corrupted)\n"
            ),
            "{}",
            render_app_list(&[], &bad)
        );
    }

    #[test]
    fn an_app_in_detail_shows_sizes_workers_listeners_and_connects() {
        let d = AppDetail {
            summary: summary(0, "echo"),
            scope_local: false,
            scope_global: true,
            segment_size: 32 << 20,
            add_segment_size: 32 << 20,
            rx_fifo_size: 512 << 10,
            tx_fifo_size: 64 << 10,
            event_queue_size: 2048,
            rx_queues: Some(0),
            workers: vec![AppWorkerView {
                index: 4,
                map_index: 0,
                api_client: Some(7),
                segments: 1,
                cut_through_segments: 2,
                fifos: 2,
                bytes_in_use: 4096,
                sessions: 1,
                listeners: 1,
                accepted: 3,
                connected: 0,
                closed: 2,
                events: 10,
                events_dropped: 0,
                events_postponed: 4,
                postponed_max_wait_us: 90,
            }],
            listeners: vec![ListenerView {
                app: 0,
                app_name: "echo".into(),
                workers: vec![0],
                proto: "TCP".into(),
                endpoint: "0.0.0.0:7".into(),
                handle: 1,
                local: false,
                global: true,
                api_client: Some(7),
            }],
            connects: vec![session(0, 1, None)],
        };
        let t = render_app_detail(&d);
        assert!(
            t.contains("app-name echo app-index 0 ns-index 0 (default)"),
            "{t}"
        );
        assert!(t.contains("seg-size 32M"), "{t}");
        assert!(
            t.contains("rx-queues none (requests come over the app socket)"),
            "{t}"
        );
        assert!(t.contains("rx-fifo-size 512K tx-fifo-size 64K"), "{t}");
        assert!(t.contains("wrk-index 4 map-index 0 api-client 7"), "{t}");
        assert!(
            t.contains("segments 1 cut-through-segments 2 fifos 2"),
            "{t}"
        );
        assert!(t.contains("accepted 3 connected 0 closed 2"), "{t}");
        assert!(t.contains("[T] 0.0.0.0:7 workers [0] global"), "{t}");
        assert!(t.contains("[T] 10.77.0.1:7->10.77.0.2:40000 READY"), "{t}");
    }

    #[test]
    fn sessions_are_listed_per_thread_with_fifo_fill() {
        let t = render_sessions(
            &[
                ThreadSessions {
                    thread: 0,
                    sessions: vec![session(0, 3, Some(1))],
                },
                ThreadSessions {
                    thread: 1,
                    sessions: vec![],
                },
            ],
            false,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "Thread 0: 1 active session");
        assert!(lines[1].starts_with("Connection"));
        assert!(
            lines[2].starts_with("[0:3][T] 10.77.0.1:7->10.77.0.2:40000"),
            "{t}"
        );
        let cols: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(cols[2..], ["READY", "12", "0", "echo"]);
        assert_eq!(lines[3], "Thread 1: no sessions");
        let v = render_sessions(
            &[ThreadSessions {
                thread: 0,
                sessions: vec![session(0, 3, Some(1)), session(0, 4, None)],
            }],
            true,
        );
        assert!(v.contains("accepted") && v.contains("connected"), "{v}");
        assert!(v.contains("0x3"), "{v}");
    }

    #[test]
    fn listeners_connects_queues_and_certs_render() {
        assert_eq!(render_listeners(&[], false), "No active server bindings\n");
        assert_eq!(render_connects(&[], false), "No active client sessions\n");
        let c = render_connects(&[session(1, 2, None)], false);
        assert!(
            c.lines()
                .nth(1)
                .unwrap()
                .starts_with("[T] 10.77.0.1:7->10.77.0.2:40000"),
            "{c}"
        );
        let q = render_queues(&[
            QueueView {
                app: 1,
                kind: "event".into(),
                index: 0,
                main_thread: false,
                slots: 2048,
                used: Some(3),
                eventfd: true,
                postponed: 70,
                waiting: 6,
                max_wait_us: 150,
            },
            QueueView {
                app: 1,
                kind: "rx".into(),
                index: 1,
                main_thread: true,
                slots: 3072,
                used: Some(0),
                eventfd: true,
                postponed: 0,
                waiting: 0,
                max_wait_us: 0,
            },
        ]);
        assert!(
            q.contains("[A1][0]      event queue: 2048 slots, 3 used, eventfd, 70 postponed (6 waiting, longest wait 150 us)"),
            "{q}"
        );
        assert!(
            q.contains("[A1][R1]     rx queue, main thread: 3072 slots, 0 used, eventfd"),
            "{q}"
        );
        let certs = render_certs(&[
            CertView {
                index: 0,
                cert_len: 0,
                key_len: 0,
                default: true,
                interested_apps: vec![],
            },
            CertView {
                index: 1,
                cert_len: 1200,
                key_len: 240,
                default: false,
                interested_apps: vec![],
            },
        ]);
        assert_eq!(certs, "DEFAULT (cert:0, key:0)\n1 (cert:1200, key:240)\n");
    }

    #[test]
    fn interfaces_workers_and_namespaces_render() {
        let i = render_interfaces(&[InterfaceView {
            name: "veth0".into(),
            queue: 0,
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
            mode: "af_xdp native".into(),
            rx_frames: 10,
            rx_bytes: 1000,
            tx_frames: 9,
            tx_bytes: 900,
            drops: DropsView {
                kernel: 1,
                malformed: 2,
                bad_checksum: 3,
                tx_ring_full: 4,
                handoff: 6,
                injected: 0,
                bad_offload: 7,
                no_buffers: 0,
                tx_errors: 0,
            },
            rx_checksum_unverified: 5,
            offload: Some(OffloadView {
                on: "csum tso4 tso6".into(),
                rx_gso_frames: 3,
                rx_gso_segments: 90,
                tx_gso_frames: 4,
                tx_gso_segments: 120,
                rx_gso_split: 0,
                rx_csum_partial: 10,
                rx_csum_device_verified: 2,
                tx_csum_offloaded: 8,
            }),
            capturing: true,
            table: 3,
            tcp: Some(TcpView {
                connections: 2,
                half_open: 0,
                time_wait: 1,
                buffer_chunks: 6,
                frames_in: 40,
                frames_out: 41,
                frames_resolving: 1,
                frames_unsent: 0,
                counters: [
                    ("retransmits".to_string(), 3),
                    ("syn_cookies_sent".to_string(), 0),
                ]
                .into_iter()
                .collect(),
            }),
            handoff: HandOffView {
                sent: 11,
                received: 12,
                wakeups: 1,
            },
            neighbors: 2,
            flows: 5,
        }]);
        assert!(
            i.contains(
                "offloads: csum tso4 tso6; super-frames rx 3 (90 segments) tx 4 (120 segments)"
            ),
            "{i}"
        );
        assert!(i.contains("bad-offload 7"), "{i}");
        assert!(
            i.contains(
                "veth0           0      02:00:00:00:00:01  1500   af_xdp native, table 3 (capturing)"
            ),
            "{i}"
        );
        assert!(
            i.contains("rx 10 frames 1000 bytes, tx 9 frames 900 bytes"),
            "{i}"
        );
        assert!(
            i.contains("tcp: 2 connections, 0 half-open, 1 time-wait, 6 buffer chunks; segments in 40 out 41 resolving 1 unsent 0"),
            "{i}"
        );
        assert!(
            i.contains("      retransmits 3\n"),
            "only counters that moved: {i}"
        );
        assert!(
            i.contains("kernel 1 malformed 2 bad-checksum 3 tx-ring-full 4 hand-off 6 injected 0; checksum unverified 5"),
            "{i}"
        );
        assert!(
            i.contains("hand-off: sent 11 received 12 wakeups 1; interface: 2 neighbours, 5 flows in the directory"),
            "{i}"
        );
        let w = render_workers(&[WorkerView {
            index: 0,
            interface: "veth0".into(),
            queue: 0,
            core: Some(1),
            mode: "interrupt".into(),
            state: "interrupt".into(),
            loops: 100,
            sleeps: 7,
            wakeups: 6,
            app_queues: 2,
            pending_queues: 0,
            app_messages: 40,
            batches: 12,
            handoff_sent: 3,
            handoff_received: 4,
            handoff_dropped: 0,
            neighbor_answers: 1,
        }]);
        let row: Vec<&str> = w.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            [
                "0",
                "veth0",
                "0",
                "1",
                "interrupt",
                "interrupt",
                "100",
                "7",
                "6",
                "2",
                "0",
                "40",
                "12",
                "3",
                "4",
                "0",
                "1"
            ]
        );
        let n = render_namespaces(&[NamespaceView {
            index: 1,
            id: "blue".into(),
            secret_set: true,
            interface: Some("veth0".into()),
            table: 0,
            apps: 2,
            app_socket: Some("/run/hoststack/app-blue.sock".into()),
        }]);
        let row: Vec<&str> = n.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            [
                "1",
                "blue",
                "yes",
                "veth0",
                "0",
                "2",
                "/run/hoststack/app-blue.sock"
            ]
        );
    }
}
