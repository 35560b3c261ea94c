//! The veth lab: a network namespace holding the kernel peer, and a veth
//! pair whose host end hoststack drives. A fresh machine has no spare NIC;
//! the lab gives it one. Everything is made with iproute2 and removed on
//! drop (unless kept), so tests and the demo never leave a namespace or a
//! veth behind.
//!
//! Names derive from the lab name: namespace `hs-NAME`, host end
//! `hsNAMEh`, peer end `hsNAMEp` (TAP variant: `hsNAMEt` inside the
//! namespace).
//!
//! The lab is test and demo infrastructure for the `hoststack` binary, the
//! benchmarks and the tests; the stack itself never depends on it.

#![forbid(unsafe_code)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output, Stdio};

use thiserror::Error;
use tracing::{debug, warn};

mod load;

pub use load::HeldConns;

/// Why a lab could not be built, used or removed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LabError {
    /// A lab command failed or its input was wrong.
    #[error("lab: {0}")]
    Lab(String),
    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Os {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Result of a lab operation.
pub type LabResult<T> = Result<T, LabError>;

/// An address with its prefix length (`10.77.0.1/24`, `fd77::1/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabAddr {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl LabAddr {
    /// Lab subnet `n`'s IPv4 address `10.77.n.host/24`.
    fn v4(n: u8, host: u8) -> Self {
        Self {
            addr: IpAddr::V4(Ipv4Addr::new(10, 77, n, host)),
            prefix: 24,
        }
    }

    /// Lab subnet `n`'s IPv6 address `fd77:n::host/64`.
    fn v6(n: u8, host: u16) -> Self {
        Self {
            addr: IpAddr::V6(Ipv6Addr::new(0xfd77, u16::from(n), 0, 0, 0, 0, 0, host)),
            prefix: 64,
        }
    }
}

impl fmt::Display for LabAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Moves the calling thread (and the threads it starts afterwards) into
/// network namespace `name`.
pub fn enter_netns(name: &str) -> LabResult<()> {
    let path = format!("/run/netns/{name}");
    let f = std::fs::File::open(&path).map_err(|e| LabError::Os {
        context: format!("opening {path} (does `ip netns list` show {name}?)"),
        source: e,
    })?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&f),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| LabError::Os {
        context: format!("entering network namespace {name}"),
        source: e.into(),
    })
}

/// The kernel-side peer script (python3), run inside the lab namespace.
pub const PEER_SCRIPT: &str = include_str!("../peers/peer.py");

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Lab name (letters, digits and `-`, at most 11 characters).
    pub name: String,
    /// hoststack's IPv4 address (on the host end, owned by hoststack).
    pub host4: LabAddr,
    /// The kernel peer's IPv4 address.
    pub peer4: LabAddr,
    /// hoststack's IPv6 address.
    pub host6: LabAddr,
    /// The kernel peer's IPv6 address.
    pub peer6: LabAddr,
    /// MTU of both ends (None keeps 1500).
    pub mtu: Option<usize>,
    /// Turn TSO off on the peer (needed for generic XDP).
    pub peer_tso_off: bool,
    /// veth queues per end; for a TAP, more than one makes it a
    /// multi-queue device (one fd per queue).
    pub queues: u32,
    /// Build a TAP in the namespace instead of a veth pair.
    pub tap: bool,
}

impl LabConfig {
    /// Defaults for lab `name`: 10.77.0.1/24 (hoststack) and 10.77.0.2/24
    /// (kernel), fd77::1/64 and fd77::2/64.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            host4: LabAddr::v4(0, 1),
            peer4: LabAddr::v4(0, 2),
            host6: LabAddr::v6(0, 1),
            peer6: LabAddr::v6(0, 2),
            mtu: None,
            peer_tso_off: false,
            queues: 1,
            tap: false,
        }
    }

    /// The same lab on another /24 and /64, so labs can run side by side:
    /// subnet `n` uses 10.77.n.0/24 and fd77:n::/64.
    pub fn with_subnet(mut self, n: u8) -> Self {
        self.host4 = LabAddr::v4(n, 1);
        self.peer4 = LabAddr::v4(n, 2);
        self.host6 = LabAddr::v6(n, 1);
        self.peer6 = LabAddr::v6(n, 2);
        self
    }
}

/// A lab that exists.
#[derive(Debug)]
pub struct Lab {
    /// Its config.
    pub cfg: LabConfig,
    /// Namespace of the kernel peer.
    pub netns: String,
    /// The interface hoststack drives (host end, or the TAP's name).
    pub host_if: String,
    /// The kernel's interface (peer end, or the TAP seen from the kernel).
    pub peer_if: String,
    keep: bool,
}

fn run(args: &[&str]) -> LabResult<Output> {
    debug!("lab: {}", args.join(" "));
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            LabError::Lab(format!(
                "cannot run {}: {e} (is iproute2 installed? run ci/setup)",
                args[0]
            ))
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let hint = if err.contains("Operation not permitted") {
            " (the lab needs root)"
        } else {
            ""
        };
        return Err(LabError::Lab(format!(
            "`{}` failed: {}{hint}",
            args.join(" "),
            err.trim()
        )));
    }
    Ok(out)
}

/// Names of lab `name`: (namespace, host end, peer end, TAP).
pub fn lab_names(name: &str) -> (String, String, String, String) {
    (
        format!("hs-{name}"),
        format!("hs{name}h"),
        format!("hs{name}p"),
        format!("hs{name}t"),
    )
}

/// Packets the kernel peer's qdisc holds while hoststack's end is busy.
const PEER_TX_QUEUE_LEN: u32 = 10_000;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 11
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl Lab {
    /// Builds the lab; on any failure removes what was made.
    pub fn up(cfg: LabConfig) -> LabResult<Self> {
        if !valid_name(&cfg.name) {
            return Err(LabError::Lab(format!(
                "lab name '{}' must be 1-11 letters, digits or '-'",
                cfg.name
            )));
        }
        let (netns, host, peer, tap) = lab_names(&cfg.name);
        if std::path::Path::new(&format!("/run/netns/{netns}")).exists() {
            return Err(LabError::Lab(format!(
                "namespace {netns} already exists (remove it with `hoststack lab down --name {}`)",
                cfg.name
            )));
        }
        let (host_if, peer_if) = if cfg.tap {
            (tap.clone(), tap)
        } else {
            (host, peer)
        };
        let lab = Self {
            cfg,
            netns,
            host_if,
            peer_if,
            keep: false,
        };
        // From here on, Drop cleans up whatever exists.
        lab.build()?;
        Ok(lab)
    }

    fn build(&self) -> LabResult<()> {
        let c = &self.cfg;
        let ns = self.netns.as_str();
        run(&["ip", "netns", "add", ns])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        let mtu = c.mtu.map(|m| m.to_string());
        if c.tap {
            let mut args = vec![
                "ip",
                "-n",
                ns,
                "tuntap",
                "add",
                "dev",
                &self.peer_if,
                "mode",
                "tap",
            ];
            // One fd per queue needs a multi-queue device.
            if c.queues > 1 {
                args.push("multi_queue");
            }
            run(&args)?;
        } else {
            let q = c.queues.to_string();
            run(&[
                "ip",
                "link",
                "add",
                &self.host_if,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "type",
                "veth",
                "peer",
                "name",
                &self.peer_if,
                "netns",
                ns,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
            ])?;
            // The host end belongs to hoststack: keep the kernel off it.
            let _ = std::fs::write(
                format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.host_if),
                "1",
            );
            if let Some(m) = &mtu {
                run(&["ip", "link", "set", &self.host_if, "mtu", m])?;
            }
            run(&["ip", "link", "set", &self.host_if, "up"])?;
        }
        if let Some(m) = &mtu {
            run(&["ip", "-n", ns, "link", "set", &self.peer_if, "mtu", m])?;
        }
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &c.peer4.to_string(),
            "dev",
            &self.peer_if,
        ])?;
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &c.peer6.to_string(),
            "dev",
            &self.peer_if,
            "nodad",
        ])?;
        run(&["ip", "-n", ns, "link", "set", &self.peer_if, "up"])?;
        if !c.tap {
            // A veth comes without a qdisc, so when the XDP end's ring is
            // full the kernel peer's transmits fail outright (its TCP counts
            // them as TCPRetransFail and, for closed sockets, gives up
            // silently). A real NIC has a queue that holds a burst back;
            // veth pushes back into one when it exists.
            run(&[
                "ip",
                "-n",
                ns,
                "link",
                "set",
                &self.peer_if,
                "txqueuelen",
                &PEER_TX_QUEUE_LEN.to_string(),
            ])?;
            let root = if c.queues > 1 { "mq" } else { "pfifo_fast" };
            run(&[
                "tc",
                "-n",
                ns,
                "qdisc",
                "replace",
                "dev",
                &self.peer_if,
                "root",
                root,
            ])?;
        }
        if c.peer_tso_off && !c.tap {
            run(&[
                "ip",
                "netns",
                "exec",
                ns,
                "ethtool",
                "-K",
                &self.peer_if,
                "tso",
                "off",
            ])?;
        }
        Ok(())
    }

    /// Keeps the lab after this value is dropped (for `lab up`).
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// Removes lab `name` (namespace and host end), ignoring what is absent.
    pub fn down(name: &str) -> LabResult<bool> {
        if !valid_name(name) {
            return Err(LabError::Lab(format!("lab name '{name}' is not valid")));
        }
        let (netns, host, _, _) = lab_names(name);
        let mut removed = false;
        if std::path::Path::new(&format!("/sys/class/net/{host}")).exists() {
            run(&["ip", "link", "del", &host])?;
            removed = true;
        }
        if std::path::Path::new(&format!("/run/netns/{netns}")).exists() {
            run(&["ip", "netns", "del", &netns])?;
            removed = true;
        }
        Ok(removed)
    }

    /// A command run inside the lab's namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, program]);
        c
    }

    /// The kernel peer script with `args`, run inside the namespace.
    pub fn peer(&self, args: &[&str]) -> Command {
        let mut c = self.command("python3");
        c.arg("-c").arg(PEER_SCRIPT).args(args);
        c
    }

    /// Runs the peer script and returns its JSON line (error when it fails).
    pub fn run_peer(&self, args: &[&str]) -> LabResult<String> {
        let out = self
            .peer(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| LabError::Lab(format!("cannot run python3 in {}: {e}", self.netns)))?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            return Err(LabError::Lab(format!(
                "peer {} failed: {} {}",
                args.join(" "),
                stdout,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(stdout)
    }

    /// Gives the kernel's end `n` transmit queues (`ethtool -L PEER tx N`).
    /// A veth delivers each frame on the receive queue numbered like the
    /// transmit queue its sender picked, so with one peer transmit queue
    /// everything the kernel sends lands on hoststack's queue 0; with the
    /// lab's full count the kernel's flow hash spreads it again.
    pub fn set_peer_tx_queues(&self, n: u32) -> LabResult<()> {
        if self.cfg.tap {
            return Err(LabError::Lab("a TAP lab has no veth peer".into()));
        }
        let n = n.to_string();
        run(&[
            "ip",
            "netns",
            "exec",
            &self.netns,
            "ethtool",
            "-L",
            &self.peer_if,
            "tx",
            &n,
        ])?;
        Ok(())
    }

    /// The address hoststack owns, as `ADDR/LEN` strings (v4, v6).
    pub fn host_addresses(&self) -> Vec<LabAddr> {
        vec![self.cfg.host4, self.cfg.host6]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = Lab::down(&self.cfg.name) {
            warn!("lab teardown: {e}");
        }
    }
}
