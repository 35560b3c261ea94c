//! A running stack: one pinned worker thread per queue, the session layer
//! they share, and the main (control) thread that runs control operations.
//!
//! [`Stack::start`] opens each queue inside its own worker thread (an
//! AF_XDP socket is best created on the core that will use it), waits until
//! every worker reports ready or one fails, and returns handles to stop the
//! workers, reach the session layer's control plane, and read counters.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hoststack_drivers::afxdp::{XdpConfig, XdpQueue};
use hoststack_drivers::counters::{DriverCounters, DriverCountersSnapshot};
use hoststack_drivers::rss::Rss;
use hoststack_drivers::uring_tap::{TapConfig, TapOffload, TapQueue};
use hoststack_drivers::{DeviceInfo, Offloads, PacketIo};
use hoststack_session::app_socket::{AppSocketConfig, AppSocketServer};
use hoststack_session::control::{ControlPlane, control_plane};
use hoststack_session::session_layer::{SessionLayer, ThreadPort, WorkerCommand};
use hoststack_session::session_worker::{SessionWorker, SessionWorkerStats};
use hoststack_session::thread_reach::ThreadReach;
use tracing::{error, info};

use crate::config::{DriverKind, StackConfig, TcpEngineKind};
use crate::error::{StackError, StackResult};
use crate::handoff::HandOffPort;
use crate::pcap::Capture;
use crate::queue_group::{QueueGroup, QueueShare};
use crate::worker::{Worker, WorkerControl, WorkerMode, WorkerStats};

/// What a caller sees of one running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    /// The worker's queue.
    pub info: DeviceInfo,
    /// Its driver counters.
    pub counters: Arc<DriverCounters>,
    /// The offloads its device has on.
    pub offloads: Offloads,
    /// Its loop counters.
    pub stats: Arc<WorkerStats>,
    /// Its session layer counters (app messages, pings).
    pub session_stats: Arc<SessionWorkerStats>,
    control: Arc<WorkerControl>,
    thread: Option<JoinHandle<StackResult<()>>>,
}

/// A running stack.
#[derive(Debug)]
pub struct Stack {
    workers: Vec<WorkerHandle>,
    control: ControlPlane,
    main_stop: Arc<AtomicBool>,
    main: Option<JoinHandle<()>>,
    /// One per interface, by name.
    captures: Vec<(String, Arc<Capture>)>,
    /// What each interface's workers share, in interface order.
    groups: Vec<Arc<QueueGroup>>,
}

/// A worker's report: its thread index, its queue, its counters, its
/// offloads.
type Ready = StackResult<(usize, DeviceInfo, Arc<DriverCounters>, Offloads)>;

/// A worker thread that has not reported ready yet.
type PendingWorker = (
    Arc<WorkerControl>,
    Arc<WorkerStats>,
    Arc<SessionWorkerStats>,
    JoinHandle<StackResult<()>>,
);

/// What a worker thread gets besides its driver.
struct WorkerSetup {
    index: usize,
    cfg: StackConfig,
    mode: WorkerMode,
    session: SessionWorker,
    control: Arc<WorkerControl>,
    stats: Arc<WorkerStats>,
    ready: mpsc::Sender<Ready>,
    capture: Arc<Capture>,
    share: QueueShare,
}

/// Queue `q` of a TAP as `cfg` asks for it: one fd and ring per queue,
/// multi-queue when there are several. smoltcp's TCP gets no super-frames
/// (it takes segments of one MTU).
fn tap_config(cfg: &StackConfig, q: u32) -> TapConfig {
    let mut t = TapConfig::new(&cfg.interface);
    t.queue = q;
    t.queues = cfg.queues.unwrap_or(1);
    t.rx_mode = cfg.tap_rx;
    t.offload = match (cfg.tcp.engine, cfg.tap_offload) {
        (TcpEngineKind::Smoltcp, TapOffload::Auto) => TapOffload::Checksum,
        (_, o) => o,
    };
    t
}

/// Builds the worker over `driver`, reports ready (or the error), runs it.
fn run_worker<D: PacketIo>(driver: StackResult<D>, setup: WorkerSetup) -> StackResult<()> {
    let WorkerSetup {
        index,
        cfg,
        mode,
        session,
        control,
        stats,
        ready,
        capture,
        share,
    } = setup;
    let worker = driver.and_then(|d| {
        let info = d.info().clone();
        let counters = d.counters().clone();
        let offloads = d.offloads();
        let mut w = Worker::new(index, d, &cfg, mode, session, control, stats, share)?;
        w.device_mut().set_capture(capture);
        Ok((w, info, counters, offloads))
    });
    match worker {
        Ok((w, info, counters, offloads)) => {
            let _ = ready.send(Ok((index, info, counters, offloads)));
            w.run()
        }
        Err(e) => {
            let msg = e.to_string();
            let _ = ready.send(Err(e));
            Err(StackError::Config(msg))
        }
    }
}

/// The session layer of a stack: the shared layer, each worker's control
/// block and command inbox.
struct SessionSetup {
    layer: Arc<Mutex<SessionLayer>>,
    controls: Vec<Arc<WorkerControl>>,
    inboxes: Vec<Receiver<WorkerCommand>>,
}

/// One stack thread per entry of `threads` (the interface config it
/// serves), sharing one session layer that knows every interface's
/// addresses and what each thread reaches.
fn session_setup(threads: &[&StackConfig]) -> StackResult<SessionSetup> {
    let mut controls = Vec::new();
    let mut inboxes = Vec::new();
    let mut ports = Vec::new();
    for _ in threads {
        let control = Arc::new(WorkerControl::new()?);
        let (tx, rx) = mpsc::channel();
        let c = control.clone();
        ports.push(ThreadPort::new(tx, Arc::new(move || c.wake())));
        controls.push(control);
        inboxes.push(rx);
    }
    let mut layer = SessionLayer::new(ports);
    let mut addrs: Vec<IpAddr> = Vec::new();
    for cfg in threads {
        for a in &cfg.addresses {
            if !addrs.contains(&a.addr) {
                addrs.push(a.addr);
            }
        }
    }
    layer.set_local_addresses(addrs);
    layer.set_thread_reach(
        threads
            .iter()
            .map(|cfg| ThreadReach {
                subnets: cfg.addresses.iter().map(|a| (a.addr, a.prefix)).collect(),
                gateway_v4: cfg.gateway.is_some_and(|g| g.is_ipv4()),
                gateway_v6: cfg.gateway.is_some_and(|g| g.is_ipv6()),
                table: cfg.table,
            })
            .collect(),
    );
    Ok(SessionSetup {
        layer: Arc::new(Mutex::new(layer)),
        controls,
        inboxes,
    })
}

impl Stack {
    /// Opens the configured interface's queues and starts one worker per
    /// queue; apps attach through [`control`](Self::control).
    pub fn start(cfg: &StackConfig, mode: WorkerMode) -> StackResult<Self> {
        Self::start_interfaces(std::slice::from_ref(cfg), mode)
    }

    /// Opens the queues of every interface in `cfgs` and starts one worker
    /// per queue, all under one session layer. Threads are numbered
    /// interface by interface, queue by queue; without configured cores,
    /// thread t runs on core t modulo the number of cores.
    pub fn start_interfaces(cfgs: &[StackConfig], mode: WorkerMode) -> StackResult<Self> {
        if cfgs.is_empty() {
            return Err(StackError::Config("no interface to run on".into()));
        }
        for (i, cfg) in cfgs.iter().enumerate() {
            cfg.validate()?;
            if cfgs[..i].iter().any(|c| c.interface == cfg.interface) {
                return Err(StackError::Config(format!(
                    "interface {} is configured twice",
                    cfg.interface
                )));
            }
        }
        // Every queue of every interface, unless told otherwise.
        let served = cfgs
            .iter()
            .map(crate::queues::resolve)
            .collect::<StackResult<Vec<u32>>>()?;
        let threads: Vec<(usize, u32)> = served
            .iter()
            .enumerate()
            .flat_map(|(i, &n)| (0..n).map(move |q| (i, q)))
            .collect();
        let per_thread: Vec<&StackConfig> = threads.iter().map(|&(i, _)| &cfgs[i]).collect();
        let captures: Vec<Arc<Capture>> = cfgs.iter().map(|_| Arc::default()).collect();
        let (tx, rx) = mpsc::channel::<Ready>();
        let core_ids = core_affinity::get_core_ids().unwrap_or_default();
        let setup = session_setup(&per_thread)?;
        let all_stats: Vec<Arc<WorkerStats>> = threads.iter().map(|_| Arc::default()).collect();
        // The workers of one interface share its neighbours, flows, rings
        // and TCP secret.
        let mut groups = Vec::new();
        for (i, cfg) in cfgs.iter().enumerate() {
            let ports = threads
                .iter()
                .enumerate()
                .filter(|(_, (iface, _))| *iface == i)
                .map(|(t, _)| {
                    let c = setup.controls[t].clone();
                    HandOffPort {
                        wake: Arc::new(move || c.wake()),
                        counters: all_stats[t].handoff.clone(),
                    }
                })
                .collect();
            let rss = match (cfg.driver, served[i]) {
                (DriverKind::AfXdp, n) if n > 1 => {
                    let rss = Rss::read(&cfg.interface).filter(|r| r.spreads_over(n));
                    match &rss {
                        Some(_) => info!(
                            interface = %cfg.interface,
                            "Toeplitz RSS read: connects pick source ports whose replies land on their own queue"
                        ),
                        None => info!(
                            interface = %cfg.interface,
                            "no Toeplitz RSS to read (a veth, or another hash): replies to connects land where the peer or NIC puts them, and are handed to their worker"
                        ),
                    }
                    rss
                }
                _ => None,
            };
            groups.push(QueueGroup::new(
                &cfg.interface,
                ports,
                cfg.tcp_secret()?,
                rss,
            ));
        }
        let mut pending = Vec::new();
        for (t, (control, inbox)) in setup.controls.into_iter().zip(setup.inboxes).enumerate() {
            let (iface, q) = threads[t];
            let cfg = &cfgs[iface];
            let stats = all_stats[t].clone();
            let share = QueueShare {
                group: groups[iface].clone(),
                pos: q as usize,
            };
            let core = match cfg.cores.get(q as usize) {
                Some(&c) => core_ids
                    .iter()
                    .find(|id| id.id == c)
                    .copied()
                    .ok_or_else(|| {
                        StackError::Config(format!(
                            "core {c} does not exist ({} cores)",
                            core_ids.len()
                        ))
                    })?,
                None => match core_ids.get(t % core_ids.len().max(1)) {
                    Some(&c) => c,
                    None => core_affinity::CoreId { id: 0 },
                },
            };
            let session = SessionWorker::new(t as u32, setup.layer.clone(), inbox);
            let session_stats = session.stats();
            let ws = WorkerSetup {
                index: t,
                cfg: cfg.clone(),
                mode,
                session,
                control: control.clone(),
                stats: stats.clone(),
                ready: tx.clone(),
                capture: captures[iface].clone(),
                share,
            };
            let thread = std::thread::Builder::new()
                .name(format!("hs-worker-{t}"))
                .spawn(move || {
                    core_affinity::set_for_current(core);
                    match ws.cfg.driver {
                        DriverKind::AfXdp => {
                            let mut x = XdpConfig::new(&ws.cfg.interface, q);
                            x.attach = ws.cfg.xdp_mode;
                            x.copy = ws.cfg.xdp_copy;
                            run_worker(XdpQueue::open(&x).map_err(StackError::from), ws)
                        }
                        DriverKind::UringTap => {
                            let t = tap_config(&ws.cfg, q);
                            run_worker(TapQueue::open(&t).map_err(StackError::from), ws)
                        }
                    }
                })
                .map_err(|e| StackError::os("spawning a worker thread", e))?;
            pending.push((control, stats, session_stats, thread));
        }
        drop(tx);
        let captures = cfgs
            .iter()
            .map(|c| c.interface.clone())
            .zip(captures)
            .collect();
        Self::collect(pending, rx, setup.layer, captures, groups)
    }

    /// Starts one worker over an already-open driver queue (the in-memory
    /// pair, or a queue opened by the caller).
    pub fn start_with_driver<D: PacketIo + 'static>(
        driver: D,
        cfg: &StackConfig,
        mode: WorkerMode,
    ) -> StackResult<Self> {
        let (tx, rx) = mpsc::channel::<Ready>();
        let setup = session_setup(&[cfg])?;
        let capture = Arc::<Capture>::default();
        let (control, inbox) = setup
            .controls
            .into_iter()
            .zip(setup.inboxes)
            .next()
            .expect("one thread");
        let stats = Arc::new(WorkerStats::default());
        let session = SessionWorker::new(0, setup.layer.clone(), inbox);
        let session_stats = session.stats();
        let share = QueueShare::single(&cfg.interface, cfg.tcp_secret()?);
        let group = share.group.clone();
        let ws = WorkerSetup {
            index: 0,
            cfg: cfg.clone(),
            mode,
            session,
            control: control.clone(),
            stats: stats.clone(),
            ready: tx,
            capture: capture.clone(),
            share,
        };
        let thread = std::thread::Builder::new()
            .name("hs-worker-0".into())
            .spawn(move || run_worker(Ok(driver), ws))
            .map_err(|e| StackError::os("spawning a worker thread", e))?;
        Self::collect(
            vec![(control, stats, session_stats, thread)],
            rx,
            setup.layer,
            vec![(cfg.interface.clone(), capture)],
            vec![group],
        )
    }

    fn collect(
        pending: Vec<PendingWorker>,
        rx: mpsc::Receiver<Ready>,
        layer: Arc<Mutex<SessionLayer>>,
        captures: Vec<(String, Arc<Capture>)>,
        groups: Vec<Arc<QueueGroup>>,
    ) -> StackResult<Self> {
        let mut readies = Vec::new();
        let mut first_err = None;
        for _ in 0..pending.len() {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Ok(r)) => readies.push(r),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(StackError::Config(
                        "a worker did not start within 30 s".into(),
                    ));
                    break;
                }
            }
        }
        if let Some(e) = first_err {
            for (control, _, _, thread) in pending {
                control.request_stop();
                let _ = thread.join();
            }
            return Err(e);
        }
        // Workers report in any order; match them back by thread.
        readies.sort_by_key(|(t, ..)| *t);
        let workers = pending
            .into_iter()
            .zip(readies)
            .map(
                |((control, stats, session_stats, thread), (_, info, counters, offloads))| {
                    info!(queue = info.queue, mode = %info.mode, "worker running on {}", info.name);
                    WorkerHandle {
                        info,
                        counters,
                        offloads,
                        stats,
                        session_stats,
                        control,
                        thread: Some(thread),
                    }
                },
            )
            .collect();
        let (control, runner) = control_plane(layer);
        let main_stop = Arc::new(AtomicBool::new(false));
        let stop = main_stop.clone();
        let main = std::thread::Builder::new()
            .name("hs-main".into())
            .spawn(move || {
                if let Err(e) = runner.run(|| stop.load(Ordering::SeqCst)) {
                    error!("control thread: {e}");
                }
            })
            .map_err(|e| StackError::os("spawning the control thread", e))?;
        Ok(Self {
            workers,
            control,
            main_stop,
            main: Some(main),
            captures,
            groups,
        })
    }

    /// What the workers of each interface share (neighbours, flow
    /// directory, hand-off rings), in interface order.
    pub fn queue_groups(&self) -> &[Arc<QueueGroup>] {
        &self.groups
    }

    /// The workers.
    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    /// The session layer's control plane (attach, listen, connect, ...).
    pub fn control(&self) -> &ControlPlane {
        &self.control
    }

    /// The packet capture switch of interface `name`.
    pub fn capture(&self, name: &str) -> Option<&Arc<Capture>> {
        self.captures
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
    }

    /// Starts serving external apps on a Unix socket; the server stops (and
    /// its socket file goes) when the returned value is dropped.
    pub fn serve_apps(&self, cfg: AppSocketConfig) -> StackResult<AppSocketServer> {
        AppSocketServer::start(cfg, self.control.clone())
            .map_err(|e| StackError::Socket(e.to_string()))
    }

    /// Driver counters summed over every queue.
    pub fn totals(&self) -> DriverCountersSnapshot {
        let mut t = DriverCountersSnapshot::default();
        for w in &self.workers {
            t.add(&w.counters.snapshot());
        }
        t
    }

    /// True when a worker thread has exited (finished or failed).
    pub fn any_worker_exited(&self) -> bool {
        self.workers
            .iter()
            .any(|w| w.thread.as_ref().is_none_or(|t| t.is_finished()))
    }

    /// Stops every worker and waits for them; returns the first error.
    pub fn stop(mut self) -> StackResult<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> StackResult<()> {
        for w in &self.workers {
            w.control.request_stop();
        }
        let mut result = Ok(());
        for (i, w) in self.workers.iter_mut().enumerate() {
            if let Some(t) = w.thread.take() {
                match t.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        error!(worker = i, "worker failed: {e}");
                        if result.is_ok() {
                            result = Err(e);
                        }
                    }
                    Err(_) => {
                        if result.is_ok() {
                            result = Err(StackError::WorkerDied(i));
                        }
                    }
                }
            }
        }
        self.main_stop.store(true, Ordering::SeqCst);
        if let Some(m) = self.main.take() {
            let _ = m.join();
        }
        result
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}
