//! A `hoststack run` daemon on a lab of its own, for the tests that drive
//! it through its control socket and app sockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::{Lab, LabConfig, Proc, example_bin, hoststack_bin, require_root, unique_lab_name};
use hoststack_lab::enter_netns;

/// A daemon under test on its own lab; stopped and cleaned up when dropped
/// (fields drop in order: the daemon before the lab).
pub struct Daemon {
    proc: Option<Proc>,
    dir: PathBuf,
    config: PathBuf,
    /// Its stderr goes to [`log_path`](Self::log_path).
    logged: bool,
    /// The control socket.
    pub control: PathBuf,
    /// The metrics endpoint, when the config has one.
    pub metrics: Option<SocketAddr>,
    /// Its lab.
    pub lab: Lab,
}

impl Daemon {
    /// A lab and a daemon on it; `extra(lab)` is appended to the config.
    pub fn start(tag: &str, extra: impl Fn(&Lab) -> String) -> Result<Self> {
        Self::start_with(tag, extra, false)
    }

    /// [`Daemon::start`] with the daemon's log (its stderr) in the file
    /// [`Daemon::log_path`] names, for tests that count its lines.
    pub fn start_logged(tag: &str, extra: impl Fn(&Lab) -> String) -> Result<Self> {
        Self::start_with(tag, extra, true)
    }

    fn start_with(tag: &str, extra: impl Fn(&Lab) -> String, logged: bool) -> Result<Self> {
        require_root();
        Self::start_lab(LabConfig::new(&unique_lab_name(tag)), extra, logged)
    }

    /// A daemon on a lab built from `cfg` (e.g. with several queues).
    pub fn start_on(cfg: LabConfig, extra: impl Fn(&Lab) -> String) -> Result<Self> {
        Self::start_lab(cfg, extra, false)
    }

    fn start_lab(cfg: LabConfig, extra: impl Fn(&Lab) -> String, logged: bool) -> Result<Self> {
        require_root();
        let lab = Lab::up(cfg)?;
        let dir = std::env::temp_dir().join(format!("hs-daemon-{}", lab.cfg.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("hoststack.toml");
        std::fs::write(
            &config,
            format!(
                "[daemon]\nruntime_dir = \"{}\"\nmetrics_port = 0\n\n[[interface]]\nname = \"{}\"\naddresses = [\"{}\", \"{}\"]\n\n{}",
                dir.display(),
                lab.host_if,
                lab.cfg.host4,
                lab.cfg.host6,
                extra(&lab)
            ),
        )?;
        let mut d = Self {
            proc: None,
            control: dir.join("control.sock"),
            dir,
            config,
            logged,
            metrics: None,
            lab,
        };
        d.launch()?;
        Ok(d)
    }

    /// Runs `hoststack run` on the config and waits for its ready line.
    fn launch(&mut self) -> Result<()> {
        let mut cmd = Command::new(hoststack_bin());
        cmd.arg("run").arg("--config").arg(&self.config);
        if self.logged {
            cmd.stderr(std::fs::File::create(self.log_path())?);
        }
        let mut p = Proc::spawn("hoststack run", cmd)?;
        let ready = p.wait_for_line("ready", Duration::from_secs(30))?;
        self.metrics = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("metrics="))
            .and_then(|a| a.parse().ok());
        self.proc = Some(p);
        Ok(())
    }

    /// Starts the daemon again on the same config after
    /// [`terminate`](Self::terminate).
    pub fn restart(&mut self) -> Result<()> {
        ensure!(self.proc.is_none(), "the daemon is still running");
        self.launch()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref()?.pid()
    }

    /// Where [`Daemon::start_logged`] puts the daemon's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// Lines in the daemon's log so far (0 when it is not logged to a file).
    pub fn log_lines(&self) -> usize {
        std::fs::read(self.log_path()).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
    }

    /// A file of its runtime directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs `hoststack ARGS --control SOCKET`.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(hoststack_bin())
            .args(args)
            .arg("--control")
            .arg(&self.control)
            .output()?)
    }

    /// `hoststack show WORDS`, which must succeed; its text.
    pub fn show(&self, words: &str) -> Result<String> {
        let mut args = vec!["show"];
        args.extend(words.split_whitespace());
        let out = self.cli(&args)?;
        ensure!(
            out.status.success(),
            "show {words} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `hoststack show WORDS --json`, parsed.
    pub fn show_json(&self, words: &str) -> Result<Value> {
        let text = self.show(&format!("{words} --json"))?;
        serde_json::from_str(&text).with_context(|| format!("show {words} --json: {text}"))
    }

    /// A command that must fail: (exit code, stderr).
    pub fn fails(&self, args: &[&str]) -> Result<(i32, String)> {
        let out = self.cli(args)?;
        ensure!(!out.status.success(), "{args:?} succeeded");
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The external echo server example on the default app socket.
    pub fn echo_server(&self) -> Result<Proc> {
        self.echo_app("app.sock", &["--listen", "0.0.0.0:7", "--workers", "2"])
    }

    /// The echo server example on app socket `socket` (in the runtime
    /// directory) with `args`, once it is ready.
    pub fn echo_app(&self, socket: &str, args: &[&str]) -> Result<Proc> {
        let mut cmd = Command::new(example_bin("echo_server"));
        cmd.arg("--socket").arg(self.path(socket)).args(args);
        let mut p = Proc::spawn("external echo server", cmd)?;
        p.wait_for_line("ready", Duration::from_secs(20))?;
        Ok(p)
    }

    /// A kernel TCP connection from the lab's namespace to hoststack port
    /// `port`, with one echoed exchange done; kept open by the caller.
    pub fn kernel_connection(&self, port: u16) -> Result<TcpStream> {
        let ns = self.lab.netns.clone();
        let to = SocketAddr::new(self.lab.cfg.host4.addr, port);
        std::thread::spawn(move || -> Result<TcpStream> {
            enter_netns(&ns)?;
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"hello")?;
            let mut back = [0u8; 5];
            s.read_exact(&mut back)?;
            ensure!(&back == b"hello", "echo differs");
            Ok(s)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?
    }

    /// The host end's Ethernet address, as the kernel has it.
    pub fn lab_mac(&self) -> Result<String> {
        let p = format!("/sys/class/net/{}/address", self.lab.host_if);
        Ok(std::fs::read_to_string(p)?.trim().to_string())
    }

    /// SIGKILL, as a crash would end it.
    pub fn kill9(&mut self) -> Result<()> {
        self.proc.take().context("not running")?.kill9();
        Ok(())
    }

    /// SIGTERM; returns whether the daemon exited cleanly.
    pub fn terminate(&mut self) -> Result<bool> {
        let p = self.proc.take().context("not running")?;
        Ok(p.terminate()?.0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            let _ = p.terminate();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
