//! Counters as Prometheus text, and the tiny HTTP responder that serves
//! them on `GET /metrics`.
//!
//! [`render`] is a pure function of the same views that `show` prints.
//! [`MetricsServer`] is a single std-only thread. It answers one request
//! per connection and closes the connection, which is all a Prometheus
//! scraper needs.

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hoststack_session::session_layer::LayerCounters;
use tracing::{debug, info};

use crate::daemon::show::{AppDetail, AppWorkerView, InterfaceView, TcpView, WorkerView};
use hoststack_stack::error::{StackError, StackResult};

/// Everything the metrics report, taken at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct MetricsSnapshot {
    /// Interface queues.
    pub(crate) interfaces: Vec<InterfaceView>,
    /// Workers.
    pub(crate) workers: Vec<WorkerView>,
    /// Apps with their workers' counters.
    pub(crate) apps: Vec<AppDetail>,
    /// What the session layer holds.
    pub(crate) layer: LayerCounters,
}

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes metric families: each `# HELP`/`# TYPE` once, then its samples.
struct Families {
    out: String,
}

impl Families {
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            if labels.is_empty() {
                let _ = writeln!(self.out, "{name} {v}");
            } else {
                let _ = writeln!(self.out, "{name}{{{labels}}} {v}");
            }
        }
    }
}

/// One metric family drawn from a list of views: name, type, help, value.
type Family<T> = (&'static str, &'static str, &'static str, fn(&T) -> u64);

/// The Prometheus text exposition of a snapshot.
pub(crate) fn render(m: &MetricsSnapshot) -> String {
    let mut f = Families { out: String::new() };
    let q = |i: &InterfaceView| format!("interface=\"{}\",queue=\"{}\"", label(&i.name), i.queue);
    let per_queue = |get: fn(&InterfaceView) -> u64| -> Vec<(String, u64)> {
        m.interfaces.iter().map(|i| (q(i), get(i))).collect()
    };
    let queue_counters: [Family<InterfaceView>; 4] = [
        (
            "hoststack_interface_rx_frames_total",
            "counter",
            "Frames received per interface queue.",
            |i| i.rx_frames,
        ),
        (
            "hoststack_interface_rx_bytes_total",
            "counter",
            "Bytes received per interface queue.",
            |i| i.rx_bytes,
        ),
        (
            "hoststack_interface_tx_frames_total",
            "counter",
            "Frames sent per interface queue.",
            |i| i.tx_frames,
        ),
        (
            "hoststack_interface_tx_bytes_total",
            "counter",
            "Bytes sent per interface queue.",
            |i| i.tx_bytes,
        ),
    ];
    for (name, kind, help, get) in queue_counters {
        f.family(name, kind, help, &per_queue(get));
    }
    let mut drops = Vec::new();
    for i in &m.interfaces {
        for (reason, v) in [
            ("kernel", i.drops.kernel),
            ("malformed", i.drops.malformed),
            ("bad_checksum", i.drops.bad_checksum),
            ("tx_ring_full", i.drops.tx_ring_full),
            ("handoff", i.drops.handoff),
            ("injected", i.drops.injected),
        ] {
            drops.push((format!("{},reason=\"{reason}\"", q(i)), v));
        }
    }
    f.family(
        "hoststack_interface_drops_total",
        "counter",
        "Frames dropped per interface queue, by reason.",
        &drops,
    );
    f.family(
        "hoststack_interface_rx_checksum_unverified_total",
        "counter",
        "Frames whose L4 checksum was accepted unverified (veth partial checksums).",
        &per_queue(|i| i.rx_checksum_unverified),
    );
    let handoff: [Family<InterfaceView>; 3] = [
        (
            "hoststack_interface_handoff_sent_total",
            "counter",
            "Packets that arrived on a queue for a flow another queue's worker holds, handed there.",
            |i| i.handoff.sent,
        ),
        (
            "hoststack_interface_handoff_received_total",
            "counter",
            "Packets other queues received for flows this queue's worker holds.",
            |i| i.handoff.received,
        ),
        (
            "hoststack_interface_handoff_wakeups_total",
            "counter",
            "Times a hand-off woke a queue's sleeping worker.",
            |i| i.handoff.wakeups,
        ),
    ];
    for (name, kind, help, get) in handoff {
        f.family(name, kind, help, &per_queue(get));
    }
    // Interface-wide, from the first queue of each interface.
    let mut seen = Vec::new();
    let mut neighbors = Vec::new();
    let mut flows = Vec::new();
    for i in &m.interfaces {
        if seen.contains(&&i.name) {
            continue;
        }
        seen.push(&i.name);
        let l = format!("interface=\"{}\"", label(&i.name));
        neighbors.push((l.clone(), i.neighbors));
        flows.push((l, i.flows));
    }
    f.family(
        "hoststack_interface_neighbors",
        "gauge",
        "Next hops in an interface's neighbour table, shared by its queues' workers.",
        &neighbors,
    );
    f.family(
        "hoststack_interface_flows",
        "gauge",
        "TCP flows in an interface's flow directory (which queue's worker holds each).",
        &flows,
    );
    let tcp_queues: Vec<(&InterfaceView, &TcpView)> = m
        .interfaces
        .iter()
        .filter_map(|i| i.tcp.as_ref().map(|t| (i, t)))
        .collect();
    if !tcp_queues.is_empty() {
        let tcp_gauges: [Family<TcpView>; 4] = [
            (
                "hoststack_tcp_connections",
                "gauge",
                "TCP connections per interface queue (hoststack's engine).",
                |t| t.connections,
            ),
            (
                "hoststack_tcp_half_open",
                "gauge",
                "Half-open (SYN-RECEIVED) entries per interface queue.",
                |t| t.half_open,
            ),
            (
                "hoststack_tcp_time_wait",
                "gauge",
                "TIME-WAIT entries per interface queue.",
                |t| t.time_wait,
            ),
            (
                "hoststack_tcp_buffer_chunks",
                "gauge",
                "Send and receive buffer chunks in use per interface queue.",
                |t| t.buffer_chunks,
            ),
        ];
        for (name, kind, help, get) in tcp_gauges {
            let v: Vec<(String, u64)> = tcp_queues.iter().map(|(i, t)| (q(i), get(t))).collect();
            f.family(name, kind, help, &v);
        }
        // Every engine counter, one family each, named after the counter.
        for &(counter, help) in hoststack_tcp::TcpCounters::descriptions() {
            let v: Vec<(String, u64)> = tcp_queues
                .iter()
                .map(|(i, t)| (q(i), t.counters.get(counter).copied().unwrap_or(0)))
                .collect();
            f.family(
                &format!("hoststack_tcp_{counter}_total"),
                "counter",
                help.trim(),
                &v,
            );
        }
    }

    let worker_families: [Family<WorkerView>; 12] = [
        (
            "hoststack_worker_loops_total",
            "counter",
            "Worker loop iterations.",
            |x| x.loops,
        ),
        (
            "hoststack_worker_sleeps_total",
            "counter",
            "Times a worker went to sleep.",
            |x| x.sleeps,
        ),
        (
            "hoststack_worker_wakeups_total",
            "counter",
            "Times a worker woke up.",
            |x| x.wakeups,
        ),
        (
            "hoststack_worker_interrupt",
            "gauge",
            "1 while a worker is in interrupt behaviour, 0 while it polls.",
            |x| u64::from(x.state == "interrupt"),
        ),
        (
            "hoststack_worker_app_queues",
            "gauge",
            "App rx queues a worker serves.",
            |x| x.app_queues,
        ),
        (
            "hoststack_worker_pending_queues",
            "gauge",
            "App rx queues left pending after a worker's last round.",
            |x| x.pending_queues,
        ),
        (
            "hoststack_worker_app_messages_total",
            "counter",
            "App messages a worker handled.",
            |x| x.app_messages,
        ),
        (
            "hoststack_worker_batches_total",
            "counter",
            "Pending-list batches a worker served.",
            |x| x.batches,
        ),
        (
            "hoststack_worker_handoff_sent_total",
            "counter",
            "Packets a worker handed to another worker of its interface.",
            |x| x.handoff_sent,
        ),
        (
            "hoststack_worker_handoff_received_total",
            "counter",
            "Packets other workers of its interface handed to a worker.",
            |x| x.handoff_received,
        ),
        (
            "hoststack_worker_handoff_dropped_total",
            "counter",
            "Packets for a worker dropped because its hand-off ring was full.",
            |x| x.handoff_dropped,
        ),
        (
            "hoststack_worker_neighbor_answers_total",
            "counter",
            "smoltcp address requests a worker answered from the shared neighbour table.",
            |x| x.neighbor_answers,
        ),
    ];
    for (name, kind, help, get) in worker_families {
        let values: Vec<(String, u64)> = m
            .workers
            .iter()
            .map(|x| (format!("worker=\"{}\"", x.index), get(x)))
            .collect();
        f.family(name, kind, help, &values);
    }

    let app_families: [Family<AppWorkerView>; 8] = [
        (
            "hoststack_app_accepted_total",
            "counter",
            "Sessions an app worker accepted.",
            |w| w.accepted,
        ),
        (
            "hoststack_app_connected_total",
            "counter",
            "Connects an app worker completed.",
            |w| w.connected,
        ),
        (
            "hoststack_app_closed_total",
            "counter",
            "Sessions of an app worker that ended.",
            |w| w.closed,
        ),
        (
            "hoststack_app_events_total",
            "counter",
            "Events delivered to an app worker.",
            |w| w.events,
        ),
        (
            "hoststack_app_events_dropped_total",
            "counter",
            "Events dropped: the backlog of a full event queue overflowed, or the queue is corrupted.",
            |w| w.events_dropped,
        ),
        (
            "hoststack_app_events_postponed_total",
            "counter",
            "Events that found an app worker's event queue full and waited in the stack.",
            |w| w.events_postponed,
        ),
        (
            "hoststack_app_events_postponed_max_wait_microseconds",
            "gauge",
            "The longest an event waited for room in an app worker's event queue.",
            |w| w.postponed_max_wait_us,
        ),
        (
            "hoststack_app_sessions",
            "gauge",
            "Sessions an app worker owns.",
            |w| w.sessions as u64,
        ),
    ];
    for (name, kind, help, get) in app_families {
        let mut values = Vec::new();
        for a in &m.apps {
            for wk in &a.workers {
                let l = format!(
                    "app=\"{}\",name=\"{}\",worker=\"{}\"",
                    a.summary.index,
                    label(&a.summary.name),
                    wk.map_index
                );
                values.push((l, get(wk)));
            }
        }
        f.family(name, kind, help, &values);
    }
    let c = &m.layer;
    for (name, help, v) in [
        ("hoststack_apps", "Attached apps.", c.apps),
        ("hoststack_app_workers", "App workers.", c.app_workers),
        ("hoststack_listeners", "Listeners.", c.listeners),
        ("hoststack_sessions", "Live sessions.", c.sessions),
        (
            "hoststack_segments",
            "Shared-memory segments of app workers.",
            c.segments,
        ),
        ("hoststack_fifos", "Fifos allocated.", c.fifos),
    ] {
        f.family(name, "gauge", help, &[(String::new(), v as u64)]);
    }
    for (name, help, v) in [
        (
            "hoststack_apps_detached_corrupt_total",
            "Apps detached for writing invalid values into their shared memory.",
            c.apps_detached_corrupt,
        ),
        (
            "hoststack_log_lines_suppressed_total",
            "Warnings an app or the network triggered that the rate limiter held back.",
            c.log_lines_suppressed,
        ),
    ] {
        f.family(name, "counter", help, &[(String::new(), v)]);
    }
    f.out
}

/// Status, content type and body for one request head.
pub(crate) fn respond(head: &str, body: impl FnOnce() -> String) -> (u16, &'static str, String) {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return (400, "text/plain", "bad request\n".into());
    };
    if !version.starts_with("HTTP/") {
        return (400, "text/plain", "bad request\n".into());
    }
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => (200, "text/plain; version=0.0.4; charset=utf-8", body()),
        ("GET", _) => (404, "text/plain", "not found: try /metrics\n".into()),
        _ => (405, "text/plain", "only GET is served\n".into()),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    }
}

/// Produces the metrics text when a scrape comes.
pub(crate) type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// A running metrics endpoint.
pub(crate) struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks one) and serves `source` on it.
    pub(crate) fn start(addr: SocketAddr, source: MetricsSource) -> StackResult<Self> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| StackError::os(format!("binding the metrics port {addr}"), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| StackError::os("metrics listener", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StackError::os("metrics listener", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("hs-metrics".into())
            .spawn(move || serve(listener, source, st))
            .map_err(|e| StackError::os("spawning the metrics thread", e))?;
        info!(%addr, "metrics on http://{addr}/metrics");
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: TcpListener, source: MetricsSource, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = answer(stream, &source) {
                    debug!(%peer, "metrics request: {e}");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                super::control::wait_for_accept(&listener);
            }
            Err(e) => {
                debug!("metrics accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Reads one request head (at most 8 KiB, 2 s) and answers it.
fn answer(mut stream: TcpStream, source: &MetricsSource) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        if Instant::now() > deadline {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
    let (status, ctype, body) = respond(&String::from_utf8_lossy(&head), || source());
    let reply = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    );
    stream.write_all(reply.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::show::{AppSummary, AppWorkerView, DropsView, HandOffView};

    fn snapshot() -> MetricsSnapshot {
        MetricsSnapshot {
            interfaces: vec![InterfaceView {
                name: "veth0".into(),
                queue: 0,
                mac: "02:00:00:00:00:01".into(),
                mtu: 1500,
                mode: "x".into(),
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
                    bad_offload: 0,
                    no_buffers: 0,
                    tx_errors: 0,
                },
                rx_checksum_unverified: 5,
                offload: None,
                capturing: false,
                table: 0,
                tcp: Some(TcpView {
                    connections: 3,
                    half_open: 1,
                    time_wait: 2,
                    buffer_chunks: 4,
                    frames_in: 20,
                    frames_out: 21,
                    frames_resolving: 1,
                    frames_unsent: 0,
                    counters: [("syn_cookies_sent".to_string(), 7)].into_iter().collect(),
                }),
                handoff: HandOffView {
                    sent: 8,
                    received: 9,
                    wakeups: 0,
                },
                neighbors: 1,
                flows: 3,
            }],
            workers: vec![WorkerView {
                index: 0,
                interface: "veth0".into(),
                queue: 0,
                core: None,
                mode: "interrupt".into(),
                state: "interrupt".into(),
                loops: 77,
                sleeps: 3,
                wakeups: 2,
                app_queues: 1,
                pending_queues: 0,
                app_messages: 5,
                batches: 4,
                handoff_sent: 2,
                handoff_received: 1,
                handoff_dropped: 0,
                neighbor_answers: 0,
            }],
            apps: vec![AppDetail {
                summary: AppSummary {
                    index: 2,
                    name: "echo \"x\"".into(),
                    namespace: "default".into(),
                    namespace_index: 0,
                    api_client: None,
                    builtin: true,
                    pid: None,
                    uid: None,
                    gid: None,
                },
                scope_local: false,
                scope_global: true,
                segment_size: 0,
                add_segment_size: 0,
                rx_fifo_size: 0,
                tx_fifo_size: 0,
                event_queue_size: 0,
                rx_queues: None,
                workers: vec![AppWorkerView {
                    index: 0,
                    map_index: 1,
                    api_client: None,
                    segments: 1,
                    cut_through_segments: 0,
                    fifos: 0,
                    bytes_in_use: 0,
                    sessions: 6,
                    listeners: 0,
                    accepted: 8,
                    connected: 0,
                    closed: 2,
                    events: 30,
                    events_dropped: 0,
                    events_postponed: 0,
                    postponed_max_wait_us: 0,
                }],
                listeners: vec![],
                connects: vec![],
            }],
            layer: LayerCounters {
                apps: 1,
                sessions: 6,
                ..LayerCounters::default()
            },
        }
    }

    #[test]
    fn counters_render_as_prometheus_text_with_labels() {
        let t = render(&snapshot());
        assert!(
            t.contains("# TYPE hoststack_interface_rx_frames_total counter\n"),
            "{t}"
        );
        assert!(
            t.contains("hoststack_interface_rx_frames_total{interface=\"veth0\",queue=\"0\"} 10\n")
        );
        assert!(t.contains("hoststack_interface_drops_total{interface=\"veth0\",queue=\"0\",reason=\"bad_checksum\"} 3\n"));
        assert!(t.contains("hoststack_tcp_connections{interface=\"veth0\",queue=\"0\"} 3\n"));
        assert!(
            t.contains("hoststack_tcp_syn_cookies_sent_total{interface=\"veth0\",queue=\"0\"} 7\n")
        );
        assert!(t.contains("hoststack_tcp_retransmits_total{interface=\"veth0\",queue=\"0\"} 0\n"));
        assert!(t.contains("hoststack_worker_loops_total{worker=\"0\"} 77\n"));
        assert!(t.contains("hoststack_worker_handoff_sent_total{worker=\"0\"} 2\n"));
        assert!(t.contains(
            "hoststack_interface_handoff_received_total{interface=\"veth0\",queue=\"0\"} 9\n"
        ));
        assert!(t.contains("hoststack_interface_drops_total{interface=\"veth0\",queue=\"0\",reason=\"handoff\"} 6\n"));
        assert!(t.contains("hoststack_interface_flows{interface=\"veth0\"} 3\n"));
        assert!(t.contains("hoststack_worker_interrupt{worker=\"0\"} 1\n"));
        assert!(
            t.contains(
                "hoststack_app_accepted_total{app=\"2\",name=\"echo \\\"x\\\"\",worker=\"1\"} 8\n"
            ),
            "{t}"
        );
        assert!(t.contains("hoststack_sessions 6\n"));
        // Every sample line belongs to a family announced before it.
        let mut typed = std::collections::HashSet::new();
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(typed.contains(name), "{name} has no TYPE line");
            }
        }
    }

    #[test]
    fn only_get_metrics_is_served() {
        let ok = respond("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", || {
            "m 1\n".into()
        });
        assert_eq!((ok.0, ok.2.as_str()), (200, "m 1\n"));
        assert!(ok.1.starts_with("text/plain; version=0.0.4"));
        assert_eq!(
            respond("GET /metrics?x=1 HTTP/1.0\r\n\r\n", String::new).0,
            200
        );
        assert_eq!(respond("GET / HTTP/1.1\r\n\r\n", String::new).0, 404);
        assert_eq!(
            respond("POST /metrics HTTP/1.1\r\n\r\n", String::new).0,
            405
        );
        assert_eq!(respond("garbage", String::new).0, 400);
        assert_eq!(respond("", String::new).0, 400);
    }

    #[test]
    fn the_server_answers_a_scrape_over_tcp() {
        let s = MetricsServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(|| "hoststack_up 1\n".to_string()),
        )
        .unwrap();
        let mut c = TcpStream::connect(s.local_addr()).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nhoststack_up 1\n"), "{out}");
        drop(s);
    }
}
