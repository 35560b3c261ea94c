//! The veth lab: a network namespace holding the kernel peer, and a veth
//! pair whose host end hoststack drives. A fresh machine has no spare NIC;
//! the lab gives it one. Everything is made with iproute2 and removed on
//! drop (unless kept), so tests and the demo never leave a namespace or a
//! veth behind.
//!
//! Names derive from the lab name: namespace `hs-NAME`, host end
//! `hsNAMEh`, peer end `hsNAMEp` (TAP variant: `hsNAMEt` inside the
//! namespace).

use std::process::{Command, Output, Stdio};

use tracing::{debug, warn};

use crate::config::AddrPrefix;
use crate::error::{StackError, StackResult};

/// The kernel-side peer script (python3), run inside the lab namespace.
pub const PEER_SCRIPT: &str = include_str!("../peers/peer.py");

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Lab name (letters, digits and `-`, at most 11 characters).
    pub name: String,
    /// hoststack's IPv4 address (on the host end, owned by hoststack).
    pub host4: AddrPrefix,
    /// The kernel peer's IPv4 address.
    pub peer4: AddrPrefix,
    /// hoststack's IPv6 address.
    pub host6: AddrPrefix,
    /// The kernel peer's IPv6 address.
    pub peer6: AddrPrefix,
    /// MTU of both ends (None keeps 1500).
    pub mtu: Option<usize>,
    /// Turn TSO off on the peer (needed for generic XDP).
    pub peer_tso_off: bool,
    /// veth queues per end.
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
            host4: "10.77.0.1/24".parse().expect("valid default"),
            peer4: "10.77.0.2/24".parse().expect("valid default"),
            host6: "fd77::1/64".parse().expect("valid default"),
            peer6: "fd77::2/64".parse().expect("valid default"),
            mtu: None,
            peer_tso_off: false,
            queues: 1,
            tap: false,
        }
    }

    /// The same lab on another /24 and /64, so labs can run side by side:
    /// subnet `n` uses 10.77.n.0/24 and fd77:n::/64.
    pub fn with_subnet(mut self, n: u8) -> Self {
        let p = |s: String| s.parse().expect("valid generated address");
        self.host4 = p(format!("10.77.{n}.1/24"));
        self.peer4 = p(format!("10.77.{n}.2/24"));
        self.host6 = p(format!("fd77:{n:x}::1/64"));
        self.peer6 = p(format!("fd77:{n:x}::2/64"));
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

fn run(args: &[&str]) -> StackResult<Output> {
    debug!("lab: {}", args.join(" "));
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            StackError::Lab(format!(
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
        return Err(StackError::Lab(format!(
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

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 11
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl Lab {
    /// Builds the lab; on any failure removes what was made.
    pub fn up(cfg: LabConfig) -> StackResult<Self> {
        if !valid_name(&cfg.name) {
            return Err(StackError::Lab(format!(
                "lab name '{}' must be 1-11 letters, digits or '-'",
                cfg.name
            )));
        }
        let (netns, host, peer, tap) = lab_names(&cfg.name);
        if std::path::Path::new(&format!("/run/netns/{netns}")).exists() {
            return Err(StackError::Lab(format!(
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

    fn build(&self) -> StackResult<()> {
        let c = &self.cfg;
        let ns = self.netns.as_str();
        run(&["ip", "netns", "add", ns])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        let mtu = c.mtu.map(|m| m.to_string());
        if c.tap {
            run(&[
                "ip",
                "-n",
                ns,
                "tuntap",
                "add",
                "dev",
                &self.peer_if,
                "mode",
                "tap",
            ])?;
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
    pub fn down(name: &str) -> StackResult<bool> {
        if !valid_name(name) {
            return Err(StackError::Lab(format!("lab name '{name}' is not valid")));
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
    pub fn run_peer(&self, args: &[&str]) -> StackResult<String> {
        let out =
            self.peer(args).stdin(Stdio::null()).output().map_err(|e| {
                StackError::Lab(format!("cannot run python3 in {}: {e}", self.netns))
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            return Err(StackError::Lab(format!(
                "peer {} failed: {} {}",
                args.join(" "),
                stdout,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(stdout)
    }

    /// The address hoststack owns, as `ADDR/LEN` strings (v4, v6).
    pub fn host_addresses(&self) -> Vec<AddrPrefix> {
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
