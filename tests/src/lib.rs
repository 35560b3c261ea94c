//! Shared helpers for hoststack's integration tests: unique lab names, the
//! `hoststack` binary, processes that are always stopped, and the root
//! check for the tests that need network namespaces.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
pub mod daemon;
pub mod hostile;
pub mod memscan;

pub use daemon::Daemon;
pub use hoststack_lab::{Lab, LabConfig};
use hoststack_stack::AddrPrefix;

/// The lab's host-end addresses as a stack config takes them.
pub fn stack_addresses(lab: &Lab) -> Vec<AddrPrefix> {
    lab.host_addresses()
        .into_iter()
        .map(|a| AddrPrefix {
            addr: a.addr,
            prefix: a.prefix,
        })
        .collect()
}

/// A lab name unique to this process and call: `t` + 4 pid digits + a
/// counter (fits the 11-character limit).
pub fn unique_lab_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tag: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(2)
        .collect();
    format!("t{}{}{}", std::process::id() % 10000, tag, n)
}

/// Fails the test unless running as root (the netns tests need it; CI runs
/// them as root).
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test builds network namespaces and AF_XDP sockets: run it as root (CI does)"
    );
}

/// Path of the `hoststack` binary built alongside the test binary.
pub fn hoststack_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/hoststack
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("hoststack");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --release --bins)",
        bin.display()
    );
    bin
}

/// Path of a binary of the `hoststack-lab` crate (the kernel-side tools,
/// e.g. `kernel_conns`), built with the workspace's binaries.
pub fn lab_bin(name: &str) -> PathBuf {
    let bin = hoststack_bin().with_file_name(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --release --bins)",
        bin.display()
    );
    bin
}

/// Runs `kernel_conns` in the lab's namespace with `args` and returns its
/// first JSON line (the one it prints once every connection is done).
pub fn kernel_conns(lab: &Lab, args: &[&str], timeout: Duration) -> Result<serde_json::Value> {
    let mut cmd = lab.command(lab_bin("kernel_conns").to_str().context("path")?);
    cmd.args(args);
    let (_, out) = Proc::spawn("kernel_conns", cmd)?.wait(timeout)?;
    last_json(&out)
}

/// Path of a `hoststack-app` example built alongside the tests
/// (`cargo build --release --examples -p hoststack-app`).
pub fn example_bin(name: &str) -> PathBuf {
    let bin = hoststack_bin().with_file_name("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --release --examples -p hoststack-app)",
        bin.display()
    );
    bin
}

/// A child process that is killed (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    stdout: Option<BufReader<ChildStdout>>,
    name: String,
}

impl Proc {
    /// Spawns `cmd` with stdout piped.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Self {
            child: Some(child),
            stdout,
            name: name.into(),
        })
    }

    /// Waits for a stdout line starting with `prefix`.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let out = self.stdout.as_mut().context("stdout not piped")?;
        let mut line = String::new();
        loop {
            line.clear();
            // Reads block; the processes we wait on print their ready line
            // promptly or exit, which ends the read with EOF.
            let n = out.read_line(&mut line)?;
            if n == 0 {
                let status = self.child.as_mut().and_then(|c| c.wait().ok());
                bail!(
                    "{} exited ({status:?}) before printing '{prefix}'",
                    self.name
                );
            }
            if line.starts_with(prefix) {
                return Ok(line.trim().to_string());
            }
            if Instant::now() > deadline {
                bail!("{} did not print '{prefix}' within {timeout:?}", self.name);
            }
        }
    }

    /// Sends SIGTERM, waits for exit, returns (success, rest of stdout).
    pub fn terminate(mut self) -> Result<(bool, String)> {
        let mut child = self.child.take().context("already stopped")?;
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = String::new();
        if let Some(mut out) = self.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        }
        Ok((status.success(), rest))
    }

    /// Reads and drops the rest of stdout on a thread of its own, for a
    /// process that keeps printing while nobody reads: a full pipe would
    /// block it.
    pub fn discard_stdout(&mut self) {
        if let Some(mut out) = self.stdout.take() {
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        }
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Reads stdout lines until `pred` says stop or `timeout` passes;
    /// returns the lines read.
    pub fn read_lines_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let out = self.stdout.as_mut().context("stdout not piped")?;
        let mut lines = Vec::new();
        let mut line = String::new();
        while Instant::now() < deadline {
            line.clear();
            if out.read_line(&mut line)? == 0 {
                break;
            }
            let done = pred(line.trim());
            lines.push(line.trim().to_string());
            if done {
                break;
            }
        }
        Ok(lines)
    }

    /// Waits for the process to exit by itself; returns (success, stdout).
    pub fn wait(mut self, timeout: Duration) -> Result<(bool, String)> {
        let mut child = self.child.take().context("already stopped")?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not finish within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = String::new();
        if let Some(mut out) = self.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        }
        Ok((status.success(), rest))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Set to `smoltcp` (or `hoststack`) to run [`start_echo_server`]'s
/// servers on that TCP engine.
pub const TCP_ENGINE_ENV: &str = "HOSTSTACK_TEST_TCP_ENGINE";

/// What a test's lab hands hoststack: a veth end (AF_XDP) or a TAP in the
/// lab's namespace (io_uring), so one test body runs on either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    /// A veth pair; hoststack drives the host end with AF_XDP.
    Veth,
    /// A TAP (`--driver uring-tap`) with these offloads (`auto`, `csum`
    /// or `off`) and queues (above 1: a multi-queue TAP).
    Tap {
        /// `--offload`.
        offload: &'static str,
        /// TAP queues, one worker each.
        queues: u32,
    },
}

impl Medium {
    /// A one-queue TAP with the offloads the kernel has.
    pub const TAP: Medium = Medium::Tap {
        offload: "auto",
        queues: 1,
    };

    /// A lab of this medium (removed when dropped).
    pub fn lab(self, tag: &str) -> Result<Lab> {
        require_root();
        let mut cfg = LabConfig::new(&unique_lab_name(tag));
        if let Medium::Tap { queues, .. } = self {
            cfg.tap = true;
            cfg.queues = queues;
        }
        Ok(Lab::up(cfg)?)
    }

    /// The arguments a `hoststack` command (echo-server, tcp-client, ...)
    /// needs to run on `lab` over this medium.
    pub fn stack_args(self, lab: &Lab) -> Vec<String> {
        match self {
            Medium::Veth => Vec::new(),
            Medium::Tap { offload, queues } => [
                "--driver",
                "uring-tap",
                "--netns",
                &lab.netns,
                "--offload",
                offload,
                "--queues",
                &queues.to_string(),
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// Two tests of the body `fn $name(Medium) -> anyhow::Result<()>`:
/// `$name::veth` runs it on a veth pair, `$name::tap` on a one-queue TAP
/// ([`Medium::TAP`]).
#[macro_export]
macro_rules! on_veth_and_tap {
    ($name:ident) => {
        mod $name {
            #[test]
            fn veth() -> anyhow::Result<()> {
                super::$name($crate::Medium::Veth)
            }

            #[test]
            fn tap() -> anyhow::Result<()> {
                super::$name($crate::Medium::TAP)
            }
        }
    };
}

/// `hoststack echo-server` on the lab's host end with `extra` arguments;
/// returns once it printed its ready line.
pub fn start_echo_server(lab: &Lab, extra: &[&str]) -> Result<Proc> {
    start_echo_server_on(Medium::Veth, lab, extra)
}

/// [`start_echo_server`] over `medium`.
pub fn start_echo_server_on(medium: Medium, lab: &Lab, extra: &[&str]) -> Result<Proc> {
    let mut cmd = Command::new(hoststack_bin());
    cmd.args(["echo-server", "--interface", &lab.host_if]);
    cmd.args(medium.stack_args(lab));
    // CI runs the datapath tests a second time on smoltcp's TCP.
    if let Ok(engine) = std::env::var(TCP_ENGINE_ENV) {
        cmd.args(["--tcp-engine", &engine]);
    }
    for a in lab.host_addresses() {
        cmd.args(["--address", &a.to_string()]);
    }
    cmd.args(extra);
    let mut p = Proc::spawn("hoststack echo-server", cmd)?;
    p.wait_for_line("ready", Duration::from_secs(30))?;
    Ok(p)
}

/// Fails unless no XDP program is attached to the lab's host end (every
/// stack detaches its program when its last queue closes).
pub fn assert_no_xdp(lab: &Lab) -> Result<()> {
    let out = Command::new("ip")
        .args(["link", "show", "dev", &lab.host_if])
        .output()?;
    let link = String::from_utf8_lossy(&out.stdout);
    if link.contains("xdp") {
        bail!("an XDP program is still attached after shutdown: {link}");
    }
    Ok(())
}

/// Parses the last line of `out` as JSON.
pub fn last_json(out: &str) -> Result<serde_json::Value> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("no JSON line")?;
    serde_json::from_str(line).with_context(|| format!("parsing '{line}'"))
}

/// Runs a kernel-side peer mode and returns its JSON, failing on a non-zero
/// exit.
pub fn peer(lab: &Lab, args: &[&str]) -> Result<serde_json::Value> {
    let out = lab.run_peer(args)?;
    last_json(&out)
}

/// nftables rules in the lab namespace dropping `pct` % of packets each way.
pub fn add_nft_loss(lab: &Lab, pct: u32) -> Result<()> {
    add_nft_loss_per_mille(lab, pct * 10)
}

/// nftables rules in the lab namespace dropping `per_mille` ‰ of packets
/// each way (5 is half a percent).
pub fn add_nft_loss_per_mille(lab: &Lab, per_mille: u32) -> Result<()> {
    Ok(lab.set_loss_per_mille(per_mille)?)
}
