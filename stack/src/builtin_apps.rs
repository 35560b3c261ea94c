//! Builtin apps: in-process applications on the session layer, reached
//! through their callbacks on the session's stack thread.
//!
//! - [`EchoServer`]: echoes TCP streams and UDP datagrams on any number of
//!   app workers (sessions spread over them round robin).
//! - [`StreamClient`]: connects, sends a seeded pseudo-random stream, and
//!   verifies every byte of the echo.
//! - [`DatagramClient`]: sends numbered datagrams of varied sizes and checks
//!   each comes back whole.
//!
//! They are what `hoststack echo-server`, the demo, the cut-through tests
//! and the flow-control tests run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hoststack_app_proto::endpoint::{Endpoint, TransportProto};
use hoststack_app_proto::error::{SessionError, SessionResult};
use hoststack_app_proto::handle::{AppIndex, ListenerHandle, SessionHandle, WorkerMapIndex};
use hoststack_app_proto::options::AppOptions;
use hoststack_app_proto::pattern::PatternStream;
use hoststack_session::app_callbacks::{AppCallbacks, AppContext};
use hoststack_session::control::ControlPlane;
use hoststack_session::session_info::SessionState;
use hoststack_session::transport::DatagramMeta;

/// How a client run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferReport {
    /// Bytes (stream) or datagrams sent.
    pub sent: u64,
    /// Bytes (stream) or datagrams that came back intact.
    pub verified: u64,
    /// Time from the connect request to the end.
    pub elapsed: Duration,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Datagrams sent again because no echo came back in time (0 for
    /// streams).
    pub resent: u64,
}

/// A slot a client reports into.
pub type ReportSlot = Arc<Mutex<Option<TransferReport>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn report(slot: &ReportSlot, r: TransferReport) {
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
}

/// Waits up to `timeout` for a report.
pub fn wait_report(slot: &ReportSlot, timeout: Duration) -> Option<TransferReport> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(r) = slot.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Some(r);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---- echo server ---------------------------------------------------------

/// Counters of an echo server app.
#[derive(Debug, Default)]
pub struct EchoStats {
    /// Discard instead of echoing (a sink for one-way benchmarks).
    pub discard: bool,
    /// Stream (TCP) sessions accepted.
    pub streams: AtomicU64,
    /// Stream bytes echoed.
    pub bytes: AtomicU64,
    /// Datagrams echoed.
    pub datagrams: AtomicU64,
    /// Datagrams dropped for want of tx room.
    pub dropped: AtomicU64,
}

/// Moves as much of a stream session's rx fifo into its tx fifo as fits;
/// asks for a tx-space event when it could not move everything. Once the
/// peer has closed and every byte it sent is echoed, closes too.
fn echo_stream(cx: &mut dyn AppContext, s: SessionHandle, stats: &EchoStats) {
    if stats.discard {
        while let Ok(avail) = cx.rx_available(s) {
            if avail == 0 {
                break;
            }
            let n = cx
                .consume(s, avail.min(u32::MAX as usize) as u32)
                .unwrap_or(0);
            stats.bytes.fetch_add(u64::from(n), Relaxed);
            if n == 0 {
                break;
            }
        }
        if cx
            .info(s)
            .is_ok_and(|i| i.state == SessionState::RemoteClosed)
        {
            let _ = cx.disconnect(s);
        }
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    loop {
        let (Ok(avail), Ok(space)) = (cx.rx_available(s), cx.tx_space(s)) else {
            return;
        };
        let n = avail.min(space).min(buf.len());
        if n == 0 {
            if avail > 0 {
                let _ = cx.want_tx_space(s);
            } else if cx
                .info(s)
                .is_ok_and(|i| i.state == SessionState::RemoteClosed)
            {
                let _ = cx.disconnect(s);
            }
            return;
        }
        let Ok(got) = cx.read(s, &mut buf[..n]) else {
            return;
        };
        let _ = cx.write(s, &buf[..got]);
        stats.bytes.fetch_add(got as u64, Relaxed);
    }
}

fn echo_datagrams(cx: &mut dyn AppContext, s: SessionHandle, stats: &EchoStats) {
    let mut buf = vec![0u8; 65536];
    while let Ok(Some((n, meta))) = cx.recv_datagram(s, &mut buf) {
        if stats.discard {
            stats.datagrams.fetch_add(1, Relaxed);
            continue;
        }
        let back = DatagramMeta {
            remote: meta.remote,
            local: meta.local,
        };
        match cx.send_datagram(s, back, &buf[..n]) {
            Ok(true) => stats.datagrams.fetch_add(1, Relaxed),
            _ => stats.dropped.fetch_add(1, Relaxed),
        };
    }
}

/// The echo server app.
#[derive(Debug)]
pub struct EchoServer {
    /// Its app index.
    pub app: AppIndex,
    /// Worker map indices (0..workers).
    pub workers: Vec<WorkerMapIndex>,
    /// Counters.
    pub stats: Arc<EchoStats>,
}

impl EchoServer {
    /// The callbacks of an echo server counting into `stats`.
    pub fn callbacks(stats: Arc<EchoStats>) -> AppCallbacks {
        let rx_stats = stats.clone();
        let tx_stats = stats.clone();
        let rx = move |cx: &mut dyn AppContext, s: SessionHandle| match cx.info(s).map(|i| i.proto)
        {
            Ok(TransportProto::Udp) => echo_datagrams(cx, s, &rx_stats),
            Ok(TransportProto::Tcp) => echo_stream(cx, s, &rx_stats),
            Err(_) => {}
        };
        let accept_stats = stats.clone();
        let disc_stats = stats.clone();
        AppCallbacks {
            accept: Some(Arc::new(move |cx, s| {
                if matches!(cx.info(s).map(|i| i.proto), Ok(TransportProto::Tcp)) {
                    accept_stats.streams.fetch_add(1, Relaxed);
                }
            })),
            connected: Some(Arc::new(|_, _, _| {})),
            // Echo what is still buffered, then close (echo_stream closes
            // once the rx fifo is empty; datagram sessions just close).
            disconnect: Some(Arc::new(move |cx, s| match cx.info(s).map(|i| i.proto) {
                Ok(TransportProto::Tcp) => echo_stream(cx, s, &disc_stats),
                _ => {
                    let _ = cx.disconnect(s);
                }
            })),
            reset: Some(Arc::new(|_, _| {})),
            rx: Some(Arc::new(rx)),
            tx: Some(Arc::new(move |cx, s| echo_stream(cx, s, &tx_stats))),
            ..Default::default()
        }
    }

    /// Attaches an echo server named `name` with `workers` app workers.
    pub fn attach(
        control: &ControlPlane,
        name: &str,
        options: AppOptions,
        workers: u32,
    ) -> SessionResult<Self> {
        Self::attach_with(control, name, options, workers, false)
    }

    /// Like [`attach`](Self::attach); with `discard` the app swallows what
    /// it receives instead of echoing it.
    pub fn attach_with(
        control: &ControlPlane,
        name: &str,
        options: AppOptions,
        workers: u32,
        discard: bool,
    ) -> SessionResult<Self> {
        if workers == 0 {
            return Err(SessionError::InvalidValue(
                "an app needs at least one worker".into(),
            ));
        }
        let stats = Arc::new(EchoStats {
            discard,
            ..EchoStats::default()
        });
        let reply = control.attach_builtin(name, options, Self::callbacks(stats.clone()))?;
        let mut ws = vec![WorkerMapIndex(0)];
        for _ in 1..workers {
            ws.push(control.add_worker(reply.app, None)?);
        }
        Ok(Self {
            app: reply.app,
            workers: ws,
            stats,
        })
    }

    /// Sessions accepted by each worker, in worker order.
    pub fn accepted_per_worker(&self, control: &ControlPlane) -> SessionResult<Vec<u64>> {
        let app = self.app;
        let ws = self.workers.clone();
        control.call(move |l| {
            let a = l.app(app)?;
            Ok(ws
                .iter()
                .map(|m| {
                    a.workers
                        .get(m)
                        .and_then(|wi| l.app_worker(*wi))
                        .map_or(0, |w| w.counters().accepted.load(Relaxed))
                })
                .collect())
        })?
    }

    /// Listens on `endpoint` from every worker.
    pub fn listen(
        &self,
        control: &ControlPlane,
        proto: TransportProto,
        endpoint: Endpoint,
    ) -> SessionResult<ListenerHandle> {
        let mut handle = None;
        for &w in &self.workers {
            handle = Some(control.listen(self.app, w, proto, endpoint)?);
        }
        handle.ok_or_else(|| SessionError::InvalidValue("no worker".into()))
    }
}

// ---- stream client -------------------------------------------------------

struct StreamState {
    total: u64,
    sent: u64,
    verified: u64,
    tx: PatternStream,
    rx: PatternStream,
    started: Instant,
    session: Option<SessionHandle>,
    slot: ReportSlot,
    done: bool,
    /// Stop reading (to test flow control) while set.
    paused: Arc<AtomicBool>,
}

impl StreamState {
    fn finish(&mut self, error: Option<String>) {
        if self.done {
            return;
        }
        self.done = true;
        report(
            &self.slot,
            TransferReport {
                sent: self.sent,
                verified: self.verified,
                elapsed: self.started.elapsed(),
                error,
                resent: 0,
            },
        );
    }

    fn pump_tx(&mut self, cx: &mut dyn AppContext, s: SessionHandle) {
        let mut buf = [0u8; 32 * 1024];
        while self.sent < self.total {
            let Ok(space) = cx.tx_space(s) else { return };
            let n = space.min(buf.len()).min((self.total - self.sent) as usize);
            if n == 0 {
                let _ = cx.want_tx_space(s);
                return;
            }
            self.tx.fill(&mut buf[..n]);
            match cx.write(s, &buf[..n]) {
                Ok(w) if w == n => self.sent += n as u64,
                Ok(_) | Err(_) => {
                    self.finish(Some("tx fifo refused a write it had room for".into()));
                    return;
                }
            }
        }
    }

    fn pump_rx(&mut self, cx: &mut dyn AppContext, s: SessionHandle) {
        if self.paused.load(Relaxed) {
            return;
        }
        let mut buf = [0u8; 32 * 1024];
        let mut expect = [0u8; 32 * 1024];
        loop {
            let n = match cx.read(s, &mut buf) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            self.rx.fill(&mut expect[..n]);
            if buf[..n] != expect[..n] {
                let at = buf[..n]
                    .iter()
                    .zip(&expect[..n])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                let offset = self.verified + at as u64;
                let _ = cx.disconnect(s);
                self.finish(Some(format!("echo differs at byte {offset}")));
                return;
            }
            self.verified += n as u64;
        }
        if self.verified >= self.total {
            let _ = cx.disconnect(s);
            self.finish(None);
        }
    }
}

/// A client that streams `total` seeded bytes to an echo server and
/// verifies the echo.
pub struct StreamClient {
    /// Its app index.
    pub app: AppIndex,
    /// Where the report lands.
    pub report: ReportSlot,
    /// While true the client stops reading its rx fifo (flow-control tests).
    pub paused: Arc<AtomicBool>,
    state: Arc<Mutex<StreamState>>,
    control: ControlPlane,
}

impl std::fmt::Debug for StreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamClient")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

impl StreamClient {
    /// Attaches the client app and connects it to `remote`.
    pub fn start(
        control: &ControlPlane,
        name: &str,
        options: AppOptions,
        remote: Endpoint,
        total: u64,
        seed: u64,
    ) -> SessionResult<Self> {
        Self::start_with(control, name, options, remote, total, seed, false)
    }

    /// As [`start`](Self::start), with reading paused from the first byte
    /// on (until [`resume`](Self::resume)), so the session stays open.
    pub fn start_paused(
        control: &ControlPlane,
        name: &str,
        options: AppOptions,
        remote: Endpoint,
        total: u64,
        seed: u64,
    ) -> SessionResult<Self> {
        Self::start_with(control, name, options, remote, total, seed, true)
    }

    fn start_with(
        control: &ControlPlane,
        name: &str,
        options: AppOptions,
        remote: Endpoint,
        total: u64,
        seed: u64,
        paused: bool,
    ) -> SessionResult<Self> {
        let slot: ReportSlot = Arc::default();
        let paused = Arc::new(AtomicBool::new(paused));
        let state = Arc::new(Mutex::new(StreamState {
            total,
            sent: 0,
            verified: 0,
            tx: PatternStream::new(seed),
            rx: PatternStream::new(seed),
            started: Instant::now(),
            session: None,
            slot: slot.clone(),
            done: false,
            paused: paused.clone(),
        }));
        let (c, r, t, d, x) = (
            state.clone(),
            state.clone(),
            state.clone(),
            state.clone(),
            state.clone(),
        );
        let cbs = AppCallbacks {
            accept: Some(Arc::new(|_, _| {})),
            connected: Some(Arc::new(move |cx, res, _| {
                let mut st = lock(&c);
                match res {
                    Ok(s) => {
                        st.session = Some(s);
                        st.pump_tx(cx, s);
                    }
                    Err(e) => st.finish(Some(format!("connect failed: {e}"))),
                }
            })),
            rx: Some(Arc::new(move |cx, s| {
                let mut st = lock(&r);
                st.pump_rx(cx, s);
                st.pump_tx(cx, s);
            })),
            tx: Some(Arc::new(move |cx, s| lock(&t).pump_tx(cx, s))),
            disconnect: Some(Arc::new(move |cx, s| {
                let mut st = lock(&d);
                st.pump_rx(cx, s);
                let _ = cx.disconnect(s);
                let (v, total) = (st.verified, st.total);
                st.finish((v < total).then(|| format!("peer closed after {v} of {total} bytes")));
            })),
            reset: Some(Arc::new(move |_, _| {
                let mut st = lock(&x);
                let (v, total) = (st.verified, st.total);
                st.finish(Some(format!("connection reset after {v} of {total} bytes")));
            })),
            ..Default::default()
        };
        let reply = control.attach_builtin(name, options, cbs)?;
        lock(&state).started = Instant::now();
        control.connect(reply.app, WorkerMapIndex(0), TransportProto::Tcp, remote, 0)?;
        Ok(Self {
            app: reply.app,
            report: slot,
            paused,
            state,
            control: control.clone(),
        })
    }

    /// Resumes reading after [`paused`](Self::paused) was set: the session's
    /// thread is asked for an rx event, since no new data may arrive to
    /// raise one while the window is closed.
    pub fn resume(&self) -> SessionResult<()> {
        self.paused.store(false, Relaxed);
        let session = self.state.lock().unwrap_or_else(|p| p.into_inner()).session;
        match session {
            Some(s) => {
                let app = self.app;
                self.control.call(move |l| l.wake_session(app, s))?
            }
            None => Ok(()),
        }
    }
}

// ---- datagram client -----------------------------------------------------

/// Datagram sizes cycled through (all fit one IPv6 packet at MTU 1500).
pub const DATAGRAM_SIZES: [usize; 6] = [8, 13, 64, 512, 1000, 1452];

/// How long the oldest unanswered datagram waits before the client sends
/// what is still unanswered again: UDP loses datagrams (a kernel peer's
/// full socket buffer, say), and a client that never resent would stall.
pub const DATAGRAM_RESEND_AFTER: Duration = Duration::from_millis(200);

struct DatagramState {
    count: u64,
    next: u64,
    echoed: u64,
    seen: Vec<bool>,
    /// The lowest sequence number not echoed yet.
    oldest: u64,
    resent: u64,
    last_progress: Instant,
    remote: Endpoint,
    window: u64,
    started: Instant,
    slot: ReportSlot,
    done: bool,
}

fn datagram_payload(seq: u64) -> Vec<u8> {
    let size = DATAGRAM_SIZES[(seq as usize) % DATAGRAM_SIZES.len()];
    let mut p = vec![0u8; size];
    PatternStream::new(seq ^ 0xd47a).fill(&mut p);
    p[..8].copy_from_slice(&seq.to_le_bytes());
    p
}

impl DatagramState {
    fn finish(&mut self, error: Option<String>) {
        if self.done {
            return;
        }
        self.done = true;
        report(
            &self.slot,
            TransferReport {
                sent: self.next,
                verified: self.echoed,
                elapsed: self.started.elapsed(),
                error,
                resent: self.resent,
            },
        );
    }

    fn send_one(&self, cx: &mut dyn AppContext, s: SessionHandle, seq: u64) -> bool {
        let meta = DatagramMeta {
            remote: self.remote,
            local: Endpoint {
                ip: hoststack_app_proto::endpoint::IpFamily::of(&self.remote.ip).zero_addr(),
                port: 0,
            },
        };
        matches!(cx.send_datagram(s, meta, &datagram_payload(seq)), Ok(true))
    }

    fn send_more(&mut self, cx: &mut dyn AppContext, s: SessionHandle) {
        while self.next < self.count && self.next - self.echoed < self.window {
            if !self.send_one(cx, s, self.next) {
                return;
            }
            self.next += 1;
        }
    }

    /// Sends every unanswered datagram again once nothing came back for
    /// [`DATAGRAM_RESEND_AFTER`].
    fn resend_stale(&mut self, cx: &mut dyn AppContext, s: SessionHandle) {
        if self.done
            || self.echoed == self.next
            || self.last_progress.elapsed() < DATAGRAM_RESEND_AFTER
        {
            return;
        }
        self.last_progress = Instant::now();
        for seq in self.oldest..self.next {
            if self.seen[seq as usize] {
                continue;
            }
            if !self.send_one(cx, s, seq) {
                return;
            }
            self.resent += 1;
        }
    }

    fn receive(&mut self, cx: &mut dyn AppContext, s: SessionHandle) {
        let mut buf = vec![0u8; 65536];
        while let Ok(Some((n, meta))) = cx.recv_datagram(s, &mut buf) {
            if meta.remote != self.remote || n < 8 {
                continue;
            }
            let seq = u64::from_le_bytes(buf[..8].try_into().unwrap_or([0; 8]));
            if seq >= self.count || buf[..n] != datagram_payload(seq)[..] {
                self.finish(Some(format!(
                    "datagram {seq}: {n} bytes came back different"
                )));
                return;
            }
            if !self.seen[seq as usize] {
                self.seen[seq as usize] = true;
                self.echoed += 1;
                self.last_progress = Instant::now();
                while self.oldest < self.next && self.seen[self.oldest as usize] {
                    self.oldest += 1;
                }
            }
        }
        if self.echoed == self.count {
            let _ = cx.disconnect(s);
            self.finish(None);
        }
    }
}

/// A client that exchanges `count` numbered datagrams with a UDP echo
/// server, at most `window` in flight; what goes unanswered is sent again
/// when the client is [kicked](Self::kick) after [`DATAGRAM_RESEND_AFTER`].
#[derive(Debug)]
pub struct DatagramClient {
    /// Its app index.
    pub app: AppIndex,
    /// Where the report lands.
    pub report: ReportSlot,
    session: Arc<Mutex<Option<SessionHandle>>>,
}

impl DatagramClient {
    /// Attaches the client app and connects it to `remote`.
    pub fn start(
        control: &ControlPlane,
        name: &str,
        options: AppOptions,
        remote: Endpoint,
        count: u64,
    ) -> SessionResult<Self> {
        let slot: ReportSlot = Arc::default();
        let state = Arc::new(Mutex::new(DatagramState {
            count,
            next: 0,
            echoed: 0,
            seen: vec![false; count as usize],
            remote,
            window: 32,
            oldest: 0,
            resent: 0,
            last_progress: Instant::now(),
            started: Instant::now(),
            slot: slot.clone(),
            done: false,
        }));
        let session: Arc<Mutex<Option<SessionHandle>>> = Arc::default();
        let (c, r, t, x) = (state.clone(), state.clone(), state.clone(), state.clone());
        let connected_session = session.clone();
        let cbs = AppCallbacks {
            accept: Some(Arc::new(|_, _| {})),
            connected: Some(Arc::new(move |cx, res, _| {
                let mut st = lock(&c);
                match res {
                    Ok(s) => {
                        *lock(&connected_session) = Some(s);
                        st.last_progress = Instant::now();
                        st.send_more(cx, s);
                    }
                    Err(e) => st.finish(Some(format!("connect failed: {e}"))),
                }
            })),
            rx: Some(Arc::new(move |cx, s| {
                let mut st = lock(&r);
                st.receive(cx, s);
                st.resend_stale(cx, s);
                st.send_more(cx, s);
            })),
            // Room in the tx fifo, or a kick.
            tx: Some(Arc::new(move |cx, s| {
                let mut st = lock(&t);
                st.resend_stale(cx, s);
                st.send_more(cx, s);
            })),
            disconnect: Some(Arc::new(|_, _| {})),
            reset: Some(Arc::new(move |_, _| {
                lock(&x).finish(Some("session reset".into()))
            })),
            ..Default::default()
        };
        let reply = control.attach_builtin(name, options, cbs)?;
        control.connect(reply.app, WorkerMapIndex(0), TransportProto::Udp, remote, 0)?;
        Ok(Self {
            app: reply.app,
            report: slot,
            session,
        })
    }

    /// Wakes the client's session on its stack thread, where it sends
    /// again what went unanswered for [`DATAGRAM_RESEND_AFTER`]: call it
    /// about that often while waiting for the report.
    pub fn kick(&self, control: &ControlPlane) {
        let Some(s) = *lock(&self.session) else {
            return;
        };
        let app = self.app;
        let _ = control.call(move |l| l.wake_session(app, s));
    }
}
