//! Machine settings a side's configuration asks for, held for one
//! measurement and always undone: idle CPUs kept in their polling state
//! (`/dev/cpu_dma_latency` held open with 0 written, so a waking thread
//! does not wait for a halted vCPU), and the kernel's socket busy polling
//! (`net.core.busy_read`, `net.core.busy_poll`; both are global, not per
//! network namespace, so they are set in the root namespace and restored).
//!
//! Changed sysctls are first written to a file under /run, so a run killed
//! before it could restore them is undone by the next one
//! ([`restore_leftovers`]).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Microseconds a socket read (busy_read) or poll (busy_poll) spins on
/// the device queue before sleeping: the value the kernel's documentation
/// suggests to start from.
pub const BUSY_POLL_US: &str = "50";

const SYSCTLS: [&str; 2] = ["net.core.busy_read", "net.core.busy_poll"];

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

fn saved_file() -> PathBuf {
    PathBuf::from("/run/hoststack-bench/sysctl.saved")
}

fn write_sysctl(key: &str, value: &str) -> Result<()> {
    std::fs::write(sysctl_path(key), value).with_context(|| format!("setting {key}={value}"))
}

fn read_sysctl(key: &str) -> Result<String> {
    Ok(std::fs::read_to_string(sysctl_path(key))
        .with_context(|| format!("reading {key}"))?
        .trim()
        .to_string())
}

/// Idle CPUs kept polling while this is alive.
#[derive(Debug)]
pub struct IdlePoll(#[allow(dead_code)] File);

impl IdlePoll {
    /// Opens `/dev/cpu_dma_latency` and writes 0: no idle state with any
    /// exit latency may be entered until the file is closed.
    pub fn hold() -> Result<Self> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .context("opening /dev/cpu_dma_latency")?;
        f.write_all(&0i32.to_ne_bytes())
            .context("writing 0 to /dev/cpu_dma_latency")?;
        Ok(Self(f))
    }
}

/// `net.core.busy_read` and `net.core.busy_poll` set to [`BUSY_POLL_US`]
/// while this is alive; the old values come back on drop.
#[derive(Debug)]
pub struct BusyPollSysctls {
    saved: Vec<(&'static str, String)>,
}

impl BusyPollSysctls {
    /// Saves the current values (in memory and under /run) and sets them.
    pub fn set() -> Result<Self> {
        let mut saved = Vec::new();
        for key in SYSCTLS {
            saved.push((key, read_sysctl(key)?));
        }
        let file = saved_file();
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text: String = saved.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        let me = Self { saved };
        for key in SYSCTLS {
            write_sysctl(key, BUSY_POLL_US)?;
        }
        Ok(me)
    }
}

impl Drop for BusyPollSysctls {
    fn drop(&mut self) {
        for (k, v) in &self.saved {
            if let Err(e) = write_sysctl(k, v) {
                eprintln!("hoststack-bench: could not restore {k}={v}: {e:#}");
                return;
            }
        }
        let _ = std::fs::remove_file(saved_file());
    }
}

/// Restores sysctls a killed run left changed; says what it did.
pub fn restore_leftovers() -> Result<Option<String>> {
    let file = saved_file();
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Ok(None);
    };
    let mut done = Vec::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            if SYSCTLS.contains(&k) {
                write_sysctl(k, v)?;
                done.push(line.to_string());
            }
        }
    }
    std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
    Ok(Some(done.join(", ")))
}

/// What one side's configuration holds while it is measured.
#[derive(Debug, Default)]
pub struct Held {
    _idle: Option<IdlePoll>,
    _busy: Option<BusyPollSysctls>,
}

impl Held {
    /// Idle CPUs polling when `idle_poll`; socket busy polling too when
    /// `busy_poll`.
    pub fn new(idle_poll: bool, busy_poll: bool) -> Result<Self> {
        Ok(Self {
            _idle: idle_poll.then(IdlePoll::hold).transpose()?,
            _busy: busy_poll.then(BusyPollSysctls::set).transpose()?,
        })
    }
}
