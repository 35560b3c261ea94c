//! Command-line pieces shared by the `hoststack` subcommands: the stack
//! options every datapath command takes, the shutdown signal, and entering a
//! network namespace.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use hoststack_drivers::afxdp::{XdpAttachMode, XdpCopyMode};

use crate::config::{AddrPrefix, DriverKind, StackConfig, TcpTuning};
use crate::error::{StackError, StackResult};
use crate::worker::WorkerMode;

/// Options that say which interface the stack runs on and how.
#[derive(Debug, Clone, Args)]
pub struct StackArgs {
    /// Interface to run on (a NIC, a veth end, or a TAP name).
    #[arg(long, short = 'i')]
    pub interface: String,
    /// Address the stack owns, ADDR/LEN; repeat for IPv4 and IPv6.
    #[arg(long, short = 'a', required = true)]
    pub address: Vec<AddrPrefix>,
    /// Default gateway.
    #[arg(long)]
    pub gateway: Option<std::net::IpAddr>,
    /// Datapath: afxdp or uring-tap.
    #[arg(long, default_value = "afxdp")]
    pub driver: DriverKind,
    /// XDP attach mode: auto (native where the driver has it), native or generic.
    #[arg(long, default_value = "auto")]
    pub xdp_mode: XdpAttachMode,
    /// AF_XDP copy mode: auto (zero-copy where supported), copy or zerocopy.
    #[arg(long, default_value = "auto")]
    pub xdp_copy: XdpCopyMode,
    /// NIC queues to use, one pinned worker each.
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    /// Cores for the workers, comma-separated (default: queue q on core q).
    #[arg(long, value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// Worker mode: poll (busy loop) or interrupt (sleep when idle).
    #[arg(long, default_value = "poll")]
    pub mode: WorkerMode,
    /// TCP send and receive buffer per connection, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub tcp_buffer: usize,
    /// Enter this network namespace (from `ip netns`) before opening the interface.
    #[arg(long)]
    pub netns: Option<String>,
    /// Drop this percentage of frames in each direction on purpose (testing),
    /// through smoltcp's FaultInjector (interface MTU 1522 or less).
    #[arg(long, default_value_t = 0)]
    pub inject_loss: u8,
    /// Serve external apps on this Unix socket (the default app namespace).
    #[arg(long)]
    pub app_socket: Option<std::path::PathBuf>,
}

impl StackArgs {
    /// The validated stack config.
    pub fn config(&self) -> StackResult<StackConfig> {
        let c = StackConfig {
            interface: self.interface.clone(),
            driver: self.driver,
            xdp_mode: self.xdp_mode,
            xdp_copy: self.xdp_copy,
            queues: self.queues,
            cores: self.cores.clone(),
            addresses: self.address.clone(),
            gateway: self.gateway,
            tcp: TcpTuning {
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

/// Moves the calling thread (and the threads it starts afterwards) into
/// network namespace `name`.
pub fn enter_netns(name: &str) -> StackResult<()> {
    let path = format!("/run/netns/{name}");
    let f = std::fs::File::open(&path).map_err(|e| {
        StackError::os(
            format!("opening {path} (does `ip netns list` show {name}?)"),
            e,
        )
    })?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&f),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| StackError::os(format!("entering network namespace {name}"), e.into()))
}

/// Set by SIGINT or SIGTERM.
#[derive(Debug, Clone)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// Installs the handlers.
    pub fn install() -> StackResult<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, flag.clone())
                .map_err(|e| StackError::os("installing a signal handler", e))?;
        }
        Ok(Self(flag))
    }

    /// True once a signal arrived.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`, returning early (true) when a signal arrives.
    pub fn wait(&self, d: Duration) -> bool {
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
