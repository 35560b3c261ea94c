//! One worker: a thread pinned to a core that owns one NIC queue, one
//! smoltcp interface and its sockets, and the session layer's sessions of
//! that thread.
//!
//! Each loop iteration: pull a burst from the driver, count the SYNs in it
//! so listener pools can grow first, let smoltcp process the burst, turn
//! socket changes into transport events, let the session worker move data
//! between sockets and fifos and call apps, let smoltcp emit, flush the
//! transmit burst. A worker
//! in polling mode loops without pause; in interrupt mode it sleeps after a
//! run of idle iterations until the queue's fd, its control eventfd or the
//! transports' next timer wakes it.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant as StdInstant};

use hoststack_drivers::PacketIo;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress};
use tracing::{debug, warn};

use crate::config::{StackConfig, TcpTuning};
use crate::device::StackDevice;
use crate::error::{StackError, StackResult};
use crate::tcp_listener::count_syns;
use crate::transport::{EphemeralPorts, SmolTransportState, SmolTransports};
use hoststack_session::session_worker::SessionWorker;

/// How a worker waits for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerMode {
    /// Busy loop: lowest latency, one core at 100 %.
    #[default]
    Poll,
    /// Sleep on the queue fd and timers after a run of idle loops.
    Interrupt,
}

impl std::str::FromStr for WorkerMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "poll" | "polling" => Ok(Self::Poll),
            "interrupt" => Ok(Self::Interrupt),
            _ => Err(format!(
                "unknown worker mode '{s}' (expected poll or interrupt)"
            )),
        }
    }
}

/// Idle loops before an interrupt-mode worker goes to sleep.
const IDLE_LOOPS_BEFORE_SLEEP: u32 = 256;

/// Counters of one worker, readable from any thread.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Loop iterations.
    pub loops: AtomicU64,
    /// Times the worker went to sleep.
    pub sleeps: AtomicU64,
    /// Times it woke up.
    pub wakeups: AtomicU64,
    /// Segments handed to smoltcp as bare ACKs while our window was zero
    /// (see `zero_window`).
    pub zero_window_acks: AtomicU64,
}

/// What other threads use to talk to a worker.
#[derive(Debug)]
pub struct WorkerControl {
    stop: AtomicBool,
    wake: OwnedFd,
}

impl WorkerControl {
    /// A control block with its eventfd.
    pub fn new() -> StackResult<Self> {
        Ok(Self {
            stop: AtomicBool::new(false),
            wake: crate::sys::eventfd()?,
        })
    }

    /// Asks the worker to stop and wakes it.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Wakes the worker if it sleeps.
    pub fn wake(&self) {
        crate::sys::eventfd_signal(&self.wake);
    }

    /// True once a stop was requested.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// A worker and everything it owns.
pub struct Worker<D: PacketIo> {
    index: usize,
    device: StackDevice<D>,
    iface: Interface,
    sockets: SocketSet<'static>,
    tuning: TcpTuning,
    ports: EphemeralPorts,
    syn_counts: Vec<(u16, usize)>,
    transport: SmolTransportState,
    session: SessionWorker,
    mode: WorkerMode,
    control: Arc<WorkerControl>,
    stats: Arc<WorkerStats>,
}

impl<D: PacketIo> Worker<D> {
    /// Builds the worker's interface over `driver` with the config's
    /// addresses.
    pub fn new(
        index: usize,
        driver: D,
        cfg: &StackConfig,
        mode: WorkerMode,
        session: SessionWorker,
        control: Arc<WorkerControl>,
        stats: Arc<WorkerStats>,
    ) -> StackResult<Self> {
        let mac = driver.info().mac;
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(StackError::Config(format!(
                "interface address {mac:02x?} is not a unicast Ethernet address"
            )));
        }
        let mut device = StackDevice::new(driver);
        let seed = if cfg.seed != 0 {
            cfg.seed.wrapping_add(index as u64)
        } else {
            StdInstant::now().elapsed().as_nanos() as u64
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
                ^ ((index as u64) << 48)
        };
        let mut icfg = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        icfg.random_seed = seed;
        let mut iface = Interface::new(icfg, &mut device, Instant::now());
        let mut too_many = false;
        iface.update_ip_addrs(|addrs| {
            for a in &cfg.addresses {
                if addrs.push(a.cidr()).is_err() {
                    too_many = true;
                }
            }
        });
        if too_many {
            return Err(StackError::Config(
                "too many addresses for one interface".into(),
            ));
        }
        if let Some(gw) = cfg.gateway {
            let res = match IpAddress::from(gw) {
                IpAddress::Ipv4(v4) => iface.routes_mut().add_default_ipv4_route(v4).map(|_| ()),
                IpAddress::Ipv6(v6) => iface.routes_mut().add_default_ipv6_route(v6).map(|_| ()),
            };
            res.map_err(|_| StackError::Config(format!("cannot add default route via {gw}")))?;
        }
        Ok(Self {
            index,
            device,
            iface,
            sockets: SocketSet::new(Vec::new()),
            tuning: cfg.tcp.clone(),
            ports: EphemeralPorts::new(seed),
            syn_counts: Vec::new(),
            transport: SmolTransportState::default(),
            session,
            mode,
            control,
            stats,
        })
    }

    /// The driver queue.
    pub fn device(&self) -> &StackDevice<D> {
        &self.device
    }

    /// One loop iteration; returns true when anything happened.
    pub fn poll_once(&mut self) -> StackResult<bool> {
        let now = Instant::now();
        let received = self.device.receive_burst()?;
        if received > 0 {
            self.prescan_syns();
        }
        self.device.stock_tx();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        let mut work = received > 0;
        self.transport.scan(&mut self.sockets, &self.tuning);
        let mut tp = SmolTransports::new(
            &mut self.transport,
            &mut self.sockets,
            &mut self.iface,
            &self.tuning,
            &mut self.ports,
        );
        work |= self.session.poll(&mut tp);
        if work {
            self.iface
                .poll_egress(now, &mut self.device, &mut self.sockets);
        }
        let sent = self.device.flush()?;
        self.stats.loops.fetch_add(1, Ordering::Relaxed);
        Ok(work || sent > 0 || self.device.tx_backlog() > 0)
    }

    /// Counts the SYNs of the waiting burst per listened port and grows the
    /// listener pools before smoltcp sees them.
    fn prescan_syns(&mut self) {
        self.transport.tcp_listen_ports(&mut self.syn_counts);
        if self.syn_counts.is_empty() {
            return;
        }
        count_syns(self.device.pending_frames(), &mut self.syn_counts);
        if self.syn_counts.iter().any(|c| c.1 > 0) {
            self.transport
                .top_up_listeners(&self.syn_counts, &self.tuning, &mut self.sockets);
        }
    }

    fn log_state(&mut self) {
        debug!(worker = self.index, driver = %self.device.driver_mut().debug_state(), rx_pending = self.device.rx_pending(), tx_backlog = self.device.tx_backlog(), "queue");
        for (h, s) in self.sockets.iter() {
            if let smoltcp::socket::Socket::Tcp(t) = s {
                if t.state() != smoltcp::socket::tcp::State::Listen {
                    debug!(worker = self.index, socket = %h, state = %t.state(), recv_queue = t.recv_queue(), send_queue = t.send_queue(), "tcp");
                }
            }
        }
        for i in self.session.session_infos() {
            debug!(worker = self.index, session = %i.handle, state = %i.state, rx_fill = i.rx_fill, tx_fill = i.tx_fill, "session");
        }
    }

    /// Sleeps until the queue, the control eventfd or the next transport
    /// timer needs the worker.
    fn sleep(&mut self) -> StackResult<()> {
        let now = Instant::now();
        let delay = self
            .iface
            .poll_delay(now, &self.sockets)
            .map_or(Duration::from_millis(1000), |d| {
                Duration::from_micros(d.total_micros())
            })
            .min(Duration::from_millis(1000));
        if delay.is_zero() {
            return Ok(());
        }
        self.device.driver_mut().prepare_sleep()?;
        if self.device.rx_pending() > 0 {
            return Ok(());
        }
        self.stats.sleeps.fetch_add(1, Ordering::Relaxed);
        let fds = [self.device.driver().poll_fd(), self.control.wake.as_fd()];
        let woke = crate::sys::poll_readable(&fds, delay)?;
        crate::sys::eventfd_drain(&self.control.wake);
        if woke {
            self.stats.wakeups.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Runs until a stop is requested, then closes every socket.
    pub fn run(mut self) -> StackResult<()> {
        let mut idle = 0u32;
        let mut last_stats = StdInstant::now();
        let result = loop {
            if self.control.stop_requested() {
                break Ok(());
            }
            match self.poll_once() {
                Ok(true) => idle = 0,
                Ok(false) => idle = idle.saturating_add(1),
                Err(e) => break Err(e),
            }
            if last_stats.elapsed() >= Duration::from_secs(1) {
                self.device.driver_mut().refresh_stats();
                self.stats
                    .zero_window_acks
                    .store(self.device.zero_window_acks(), Ordering::Relaxed);
                last_stats = StdInstant::now();
                if tracing::enabled!(tracing::Level::DEBUG) {
                    self.log_state();
                }
            }
            if self.mode == WorkerMode::Interrupt && idle >= IDLE_LOOPS_BEFORE_SLEEP {
                if let Err(e) = self.sleep() {
                    break Err(e);
                }
                idle = 0;
            }
        };
        if let Err(e) = &result {
            warn!(worker = self.index, "worker stopping on error: {e}");
        }
        self.transport.shutdown(&mut self.sockets);
        // Let aborts (RSTs) and closes go out before the queue closes.
        for _ in 0..4 {
            self.iface
                .poll(Instant::now(), &mut self.device, &mut self.sockets);
            let _ = self.device.flush();
        }
        self.device.driver_mut().refresh_stats();
        self.stats
            .zero_window_acks
            .store(self.device.zero_window_acks(), Ordering::Relaxed);
        debug!(worker = self.index, "worker stopped");
        result
    }
}
