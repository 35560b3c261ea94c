//! The benchmark's surroundings: the veth lab, interface facts and
//! counters read through iproute2, offload switches, an ingress drop on
//! the peer, and child processes that are always stopped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hoststack_drivers::MacAddr;
use hoststack_lab::{Lab, LabConfig};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Runs a command, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(netns: Option<&str>) -> Command {
    let mut c = Command::new("ip");
    if let Some(ns) = netns {
        c.args(["-n", ns]);
    }
    c
}

fn link_json(netns: Option<&str>, ifname: &str) -> Result<serde_json::Value> {
    let out = run(ip(netns).args(["-j", "-s", "link", "show", "dev", ifname]))?;
    let v: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("parsing `ip -j link` for {ifname}"))?;
    v.get(0)
        .cloned()
        .with_context(|| format!("no link {ifname}"))
}

/// An interface's Ethernet address.
pub fn mac_of(netns: Option<&str>, ifname: &str) -> Result<MacAddr> {
    let v = link_json(netns, ifname)?;
    let s = v["address"].as_str().context("link without an address")?;
    crate::frames::parse_mac(s)
}

/// Kernel counters of an interface.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkStats {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames dropped on receive.
    pub rx_dropped: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Frames dropped on transmit.
    pub tx_dropped: u64,
}

/// Reads an interface's counters.
pub fn link_stats(netns: Option<&str>, ifname: &str) -> Result<LinkStats> {
    let v = link_json(netns, ifname)?;
    let s = &v["stats64"];
    let n = |a: &str, b: &str| s[a][b].as_u64().unwrap_or(0);
    Ok(LinkStats {
        rx_packets: n("rx", "packets"),
        rx_bytes: n("rx", "bytes"),
        rx_dropped: n("rx", "dropped"),
        tx_packets: n("tx", "packets"),
        tx_dropped: n("tx", "dropped"),
    })
}

/// Turns TSO, GSO and GRO on or off.
pub fn set_offloads(lab: &Lab, peer: bool, on: bool) -> Result<()> {
    let v = if on { "on" } else { "off" };
    let mut c = if peer {
        lab.command("ethtool")
    } else {
        Command::new("ethtool")
    };
    let ifname = if peer { &lab.peer_if } else { &lab.host_if };
    run(c.args(["-K", ifname, "tso", v, "gso", v, "gro", v]))?;
    Ok(())
}

/// Gives the host end the address hoststack would own, so the kernel can
/// serve on it (only while hoststack is not attached).
pub fn kernel_owns_host_end(lab: &Lab) -> Result<()> {
    run(Command::new("ip").args([
        "addr",
        "add",
        &lab.cfg.host4.to_string(),
        "dev",
        &lab.host_if,
    ]))?;
    Ok(())
}

/// Makes the kernel peer drop UDP frames matching `what` (an nftables
/// match such as `udp dport 9`) at its interface's ingress (netdev hook),
/// after the frame was counted and before the IP stack: on a veth the
/// receiver's work runs on the sender's core, and a sink should not bill
/// the sender for routing, socket lookups and ICMP errors.
pub fn peer_ingress_drop(lab: &Lab, what: &str) -> Result<()> {
    run(lab
        .command("nft")
        .args(["add", "table", "netdev", "hsbench"]))?;
    let chain = format!(
        "{{ type filter hook ingress device {} priority 0; policy accept; }}",
        lab.peer_if
    );
    run(lab
        .command("nft")
        .args(["add", "chain", "netdev", "hsbench", "sink", &chain]))?;
    run(lab
        .command("nft")
        .args(["add", "rule", "netdev", "hsbench", "sink"])
        .args(what.split_whitespace())
        .arg("drop"))?;
    Ok(())
}

/// Sets a sysctl inside the lab's namespace.
pub fn sysctl_in_lab(lab: &Lab, key: &str, value: &str) -> Result<()> {
    run(lab
        .command("sysctl")
        .args(["-q", "-w", &format!("{key}={value}")]))?;
    Ok(())
}

/// Builds a fresh lab (removed when dropped).
pub fn fresh_lab(name: &str, subnet: u8, mtu: Option<usize>) -> Result<Lab> {
    fresh_lab_queues(name, subnet, mtu, 1)
}

/// Builds a fresh lab whose veth ends have `queues` queues each.
pub fn fresh_lab_queues(name: &str, subnet: u8, mtu: Option<usize>, queues: u32) -> Result<Lab> {
    let mut cfg = LabConfig::new(name).with_subnet(subnet);
    cfg.mtu = mtu;
    cfg.queues = queues;
    Lab::up(cfg).with_context(|| format!("building lab {name}"))
}

/// Builds a fresh TAP lab (removed when dropped): the TAP lives in the
/// namespace beside the kernel peer's addresses.
pub fn fresh_tap_lab(name: &str, subnet: u8, mtu: Option<usize>) -> Result<Lab> {
    let mut cfg = LabConfig::new(name).with_subnet(subnet);
    cfg.mtu = mtu;
    cfg.tap = true;
    Lab::up(cfg).with_context(|| format!("building TAP lab {name}"))
}

/// The `hoststack` binary: `explicit`, else next to this executable, else
/// in the workspace's target/release.
pub fn hoststack_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.exists() {
            return Ok(p.to_path_buf());
        }
        bail!("{} does not exist", p.display());
    }
    let exe = std::env::current_exe()?;
    let mut candidates = Vec::new();
    for dir in exe.ancestors().skip(1).take(3) {
        candidates.push(dir.join("hoststack"));
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/hoststack"));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .context("cannot find the hoststack binary: build it (cargo build --release --bin hoststack) or pass --hoststack PATH")
}

/// A binary built beside `hoststack` (the lab's `kernel_conns`), checked.
pub fn tool_beside(hoststack: &Path, name: &str) -> Result<PathBuf> {
    let p = hoststack.with_file_name(name);
    if !p.is_file() {
        bail!(
            "{} is missing: build the workspace's binaries (cargo build --release --workspace --bins)",
            p.display()
        );
    }
    Ok(p)
}

/// The directory of the workspace's examples next to `hoststack`
/// (`target/release/examples`).
pub fn examples_dir(hoststack: &Path) -> PathBuf {
    hoststack
        .parent()
        .map_or_else(|| PathBuf::from("examples"), |d| d.join("examples"))
}

/// A child process whose output lines are collected, that is always
/// stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Managed {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl Managed {
    /// Spawns `cmd` and, unless `ready` is empty, waits up to 30 s for a
    /// stdout line starting with it.
    pub fn start(mut cmd: Command, what: &str, ready: &str) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().context("stdout")?;
        let err = child.stderr.take().context("stderr")?;
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {l}"));
            }
        });
        let mut me = Self {
            child: Some(child),
            lines,
            what: what.into(),
        };
        if ready.is_empty() {
            return Ok(me);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match me.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(ready) => return Ok(me),
                Ok(l) => said.push(l),
                Err(_) => {
                    let status = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                    bail!(
                        "{what} did not print '{ready}' ({}): {}",
                        status.map_or("still running".into(), |s| s.to_string()),
                        said.join(" | ")
                    );
                }
            }
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The lines it printed since they were last read (stderr's marked).
    pub fn said(&self) -> String {
        self.lines.try_iter().collect::<Vec<_>>().join(" | ")
    }

    fn finish(&mut self, status: std::process::ExitStatus) -> Result<Option<serde_json::Value>> {
        let mut json = None;
        let mut said = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            if l.starts_with('{') {
                json = serde_json::from_str(&l).ok();
            } else {
                said.push(l);
            }
        }
        if !status.success() {
            bail!("{} exited with {status}: {}", self.what, said.join(" | "));
        }
        Ok(json)
    }

    /// SIGTERM, wait, and return its last JSON line.
    pub fn stop(mut self) -> Result<Option<serde_json::Value>> {
        let mut child = self.child.take().context("already stopped")?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.finish(status)
    }

    /// SIGTERM and wait, for a process that has no handler and dies of the
    /// signal (the session examples): any exit is fine.
    pub fn terminate(mut self) -> Result<()> {
        let mut child = self.child.take().context("already stopped")?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Waits up to `timeout` for it to exit by itself; returns its last
    /// JSON line.
    pub fn wait(mut self, timeout: Duration) -> Result<Option<serde_json::Value>> {
        let mut child = self.child.take().context("already stopped")?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not finish within {timeout:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.finish(status)
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The machine the figures come from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Online cores.
    pub cores: usize,
    /// Kernel release.
    pub kernel: String,
    /// Memory, GiB.
    pub memory_gib: u64,
}

impl Machine {
    /// Reads /proc.
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(|| "unknown".into(), |s| s.trim().to_string());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|k| k.parse::<u64>().ok())
            })
            .map_or(0, |kb| (kb + (1 << 19)) >> 20);
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            kernel,
            memory_gib,
        }
    }
}
