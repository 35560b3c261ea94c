//! Command-line pieces shared by the `hoststack` subcommands: the stack
//! options every datapath command takes, the shutdown signal, and entering a
//! network namespace.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use hoststack_drivers::afxdp::{XdpAttachMode, XdpCopyMode};
use hoststack_drivers::uring_tap::{RxMode, TapOffload};

use hoststack_stack::config::{AddrPrefix, DriverKind, StackConfig, TcpEngineKind, TcpTuning};
use hoststack_stack::error::{StackError, StackResult};
use hoststack_stack::worker::WorkerMode;

/// Options that say which interface the stack runs on and how.
#[derive(Debug, Clone, Args)]
pub(crate) struct StackArgs {
    /// Interface to run on (a NIC, a veth end, or a TAP name).
    #[arg(long, short = 'i')]
    pub(crate) interface: String,
    /// Address the stack owns, ADDR/LEN; repeat for IPv4 and IPv6.
    #[arg(long, short = 'a', required = true)]
    pub(crate) address: Vec<AddrPrefix>,
    /// Default gateway.
    #[arg(long)]
    pub(crate) gateway: Option<std::net::IpAddr>,
    /// Datapath: afxdp or uring-tap.
    #[arg(long, default_value = "afxdp")]
    pub(crate) driver: DriverKind,
    /// XDP attach mode: auto (native where the driver has it), native or generic.
    #[arg(long, default_value = "auto")]
    pub(crate) xdp_mode: XdpAttachMode,
    /// AF_XDP copy mode: auto (zero-copy where supported), copy or zerocopy.
    #[arg(long, default_value = "auto")]
    pub(crate) xdp_copy: XdpCopyMode,
    /// TAP offloads (uring-tap): auto (checksums and TCP super-frames both
    /// ways, UDP trains in), csum (checksums only) or off (no vnet header).
    #[arg(long, default_value = "auto")]
    pub(crate) offload: TapOffload,
    /// TAP reads (uring-tap): auto (multishot where the kernel has it),
    /// multishot or single.
    #[arg(long, default_value = "auto")]
    pub(crate) tap_read: RxMode,
    /// NIC queues to serve (0..N), one pinned worker each; default: every
    /// receive queue of the interface. Fewer is refused unless
    /// --traffic-steered.
    #[arg(long)]
    pub(crate) queues: Option<u32>,
    /// Traffic is steered away from the queues not served (RSS
    /// indirection, ntuple rules, a veth peer with fewer tx queues), so
    /// --queues may be less than the interface's queue count.
    #[arg(long)]
    pub(crate) traffic_steered: bool,
    /// Cores for the workers, comma-separated (default: queue q on core q).
    #[arg(long, value_delimiter = ',')]
    pub(crate) cores: Vec<usize>,
    /// Worker mode: poll (busy loop) or interrupt (sleep when idle).
    #[arg(long, default_value = "poll")]
    pub(crate) mode: WorkerMode,
    /// TCP send and receive buffer per connection, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub(crate) tcp_buffer: usize,
    /// TCP engine: hoststack (its own) or smoltcp.
    #[arg(long, default_value = "hoststack")]
    pub(crate) tcp_engine: TcpEngineKind,
    /// Enter this network namespace (from `ip netns`) before opening the interface.
    #[arg(long)]
    pub(crate) netns: Option<String>,
    /// Drop this percentage of frames in each direction on purpose (testing),
    /// through smoltcp's FaultInjector (interface MTU 1522 or less).
    #[arg(long, default_value_t = 0)]
    pub(crate) inject_loss: u8,
    /// Serve external apps on this Unix socket (the default app namespace).
    #[arg(long)]
    pub(crate) app_socket: Option<std::path::PathBuf>,
}

impl StackArgs {
    /// The validated stack config.
    pub(crate) fn config(&self) -> StackResult<StackConfig> {
        let c = StackConfig {
            interface: self.interface.clone(),
            driver: self.driver,
            xdp_mode: self.xdp_mode,
            xdp_copy: self.xdp_copy,
            tap_offload: self.offload,
            tap_rx: self.tap_read,
            queues: self.queues,
            traffic_steered: self.traffic_steered,
            cores: self.cores.clone(),
            addresses: self.address.clone(),
            gateway: self.gateway,
            tcp: TcpTuning {
                engine: self.tcp_engine,
                buffer: self.tcp_buffer,
                ..TcpTuning::default()
            },
            seed: 0,
            inject_loss: self.inject_loss,
            table: 0,
        };
        c.validate()?;
        Ok(c)
    }
}

/// Set by SIGINT or SIGTERM.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// Installs the handlers.
    pub(crate) fn install() -> StackResult<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, flag.clone())
                .map_err(|e| StackError::os("installing a signal handler", e))?;
        }
        Ok(Self(flag))
    }

    /// True once a signal arrived.
    pub(crate) fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`, returning early (true) when a signal arrives.
    pub(crate) fn wait(&self, d: Duration) -> bool {
        let end = std::time::Instant::now() + d;
        while std::time::Instant::now() < end {
            if self.requested() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.requested()
    }
}
