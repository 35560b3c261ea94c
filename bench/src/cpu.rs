//! CPU time from /proc: per CPU (`/proc/stat`), per process
//! (`/proc/PID/stat`), the server side's CPU over a measured window, and
//! the check that nothing else is using the CPUs before a benchmark.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

/// Clock ticks per second in /proc (USER_HZ is 100 on every Linux ABI).
pub const USER_HZ: f64 = 100.0;

/// One CPU's (or all CPUs') time, in ticks, from a `/proc/stat` line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice.
    pub user: u64,
    /// system.
    pub system: u64,
    /// idle + iowait.
    pub idle: u64,
    /// Hardware interrupts.
    pub irq: u64,
    /// Softirqs (the network receive path runs here).
    pub softirq: u64,
    /// Stolen by the hypervisor.
    pub steal: u64,
}

impl CpuTimes {
    fn parse(fields: &[u64]) -> Self {
        let f = |i: usize| fields.get(i).copied().unwrap_or(0);
        Self {
            user: f(0) + f(1),
            system: f(2),
            idle: f(3) + f(4),
            irq: f(5),
            softirq: f(6),
            steal: f(7),
        }
    }

    /// Ticks doing anything but idling (steal excluded: that is the
    /// hypervisor's).
    pub fn busy(&self) -> u64 {
        self.user + self.system + self.irq + self.softirq
    }

    /// irq + softirq ticks.
    pub fn interrupts(&self) -> u64 {
        self.irq + self.softirq
    }

    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            idle: self.idle.saturating_sub(earlier.idle),
            irq: self.irq.saturating_sub(earlier.irq),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }
}

/// `/proc/stat`: all CPUs together, and each CPU by its number.
#[derive(Debug, Clone, Default)]
pub struct Stat {
    /// The `cpu` line.
    pub all: CpuTimes,
    /// The `cpuN` lines, by N.
    pub per_cpu: HashMap<usize, CpuTimes>,
}

impl Stat {
    /// Reads `/proc/stat`.
    pub fn read() -> Result<Self> {
        Ok(Self::parse(
            &std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?,
        ))
    }

    /// Parses the text of `/proc/stat`.
    pub fn parse(text: &str) -> Self {
        let mut s = Self::default();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let Some(name) = it.next() else { continue };
            let Some(rest) = name.strip_prefix("cpu") else {
                continue;
            };
            let fields: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
            let t = CpuTimes::parse(&fields);
            if rest.is_empty() {
                s.all = t;
            } else if let Ok(n) = rest.parse() {
                s.per_cpu.insert(n, t);
            }
        }
        s
    }
}

/// One process from `/proc/PID/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Its id.
    pub pid: u32,
    /// Its parent's id.
    pub ppid: u32,
    /// Its command name.
    pub comm: String,
    /// utime + stime of all its threads, ticks.
    pub ticks: u64,
}

impl Process {
    /// Parses the text of `/proc/PID/stat`.
    pub fn parse(text: &str) -> Option<Self> {
        let (head, rest) = text.rsplit_once(')')?;
        let (pid, comm) = head.split_once(" (")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the command: state, ppid, ... utime (14th field of the
        // line, 12th here) and stime.
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        Some(Self {
            pid: pid.trim().parse().ok()?,
            ppid: u32::try_from(n(1)?).ok()?,
            comm: comm.to_string(),
            ticks: n(11)? + n(12)?,
        })
    }

    /// Reads `/proc/PID/stat`.
    pub fn read(pid: u32) -> Result<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        Self::parse(&text).with_context(|| format!("malformed /proc/{pid}/stat"))
    }

    /// Every process now.
    pub fn all() -> Vec<Self> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| Self::read(pid).ok())
            .collect()
    }
}

/// CPU time (user + system, all threads) process `pid` has used, seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    Ok(Process::read(pid)?.ticks as f64 / USER_HZ)
}

/// What the server side used over a window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ServerCpu {
    /// Length of the window, s.
    pub wall_s: f64,
    /// The server processes' user + system time, s.
    pub process_s: f64,
    /// irq + softirq time of every CPU, s.
    pub interrupts_s: f64,
    /// irq + softirq time of the server's core alone, s.
    pub server_core_interrupts_s: f64,
}

impl ServerCpu {
    /// Everything counted against the server: its processes and the
    /// interrupt work of all CPUs, s.
    pub fn total_s(&self) -> f64 {
        self.process_s + self.interrupts_s
    }

    /// `total_s` as % of one core.
    pub fn percent(&self) -> f64 {
        100.0 * self.total_s() / self.wall_s.max(1e-9)
    }
}

/// Measures the server side's CPU between `start` and `finish`.
#[derive(Debug)]
pub struct ServerMeter {
    pids: Vec<u32>,
    core: Option<usize>,
    ticks: u64,
    stat: Stat,
    at: Instant,
}

impl ServerMeter {
    /// Starts counting the processes `pids` (and interrupts; the server's
    /// core is `core`).
    pub fn start(pids: &[u32], core: Option<usize>) -> Result<Self> {
        let ticks = Self::ticks(pids)?;
        Ok(Self {
            pids: pids.to_vec(),
            core,
            ticks,
            stat: Stat::read()?,
            at: Instant::now(),
        })
    }

    fn ticks(pids: &[u32]) -> Result<u64> {
        pids.iter()
            .map(|p| Process::read(*p).map(|x| x.ticks))
            .sum()
    }

    /// What was used since `start`.
    pub fn finish(self) -> Result<ServerCpu> {
        let ticks = Self::ticks(&self.pids)?;
        let stat = Stat::read()?;
        let wall_s = self.at.elapsed().as_secs_f64();
        let core = |s: &Stat| {
            self.core
                .and_then(|c| s.per_cpu.get(&c).copied())
                .unwrap_or_default()
        };
        Ok(ServerCpu {
            wall_s,
            process_s: ticks.saturating_sub(self.ticks) as f64 / USER_HZ,
            interrupts_s: stat.all.since(&self.stat.all).interrupts() as f64 / USER_HZ,
            server_core_interrupts_s: core(&stat).since(&core(&self.stat)).interrupts() as f64
                / USER_HZ,
        })
    }
}

/// A process that used the CPUs while the machine should have been quiet.
#[derive(Debug, Clone, Serialize)]
pub struct Busy {
    /// Its id.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// % of one core over the window.
    pub percent: f64,
}

/// How much CPU everything but this process and its children used over a
/// short window.
#[derive(Debug, Clone, Serialize)]
pub struct Activity {
    /// The window, s.
    pub window_s: f64,
    /// CPU used by everything else (processes, interrupts, kernel
    /// threads, processes that came and went), % of one core.
    pub foreign_percent: f64,
    /// The biggest other users, most first.
    pub top: Vec<Busy>,
}

impl Activity {
    /// One line: "85 % of a core (rustc 60 %, cc 20 %)".
    pub fn summary(&self) -> String {
        let top: Vec<String> = self
            .top
            .iter()
            .take(5)
            .map(|b| format!("{} (pid {}) {:.0} %", b.comm, b.pid, b.percent))
            .collect();
        if top.is_empty() {
            format!("{:.0} % of a core", self.foreign_percent)
        } else {
            format!(
                "{:.0} % of a core: {}",
                self.foreign_percent,
                top.join(", ")
            )
        }
    }
}

/// `me` and its descendants among `procs`.
pub fn tree_of(me: u32, procs: &[Process]) -> HashSet<u32> {
    let mut tree = HashSet::from([me]);
    loop {
        let before = tree.len();
        for p in procs {
            if tree.contains(&p.ppid) {
                tree.insert(p.pid);
            }
        }
        if tree.len() == before {
            return tree;
        }
    }
}

/// Measures over `window` how much CPU everything except this process and
/// its children used: the whole machine's busy time from `/proc/stat`
/// minus this process tree's from `/proc/*/stat`.
pub fn foreign_activity(window: Duration) -> Result<Activity> {
    let me = std::process::id();
    let (p0, s0, t0) = (Process::all(), Stat::read()?, Instant::now());
    std::thread::sleep(window);
    let (p1, s1) = (Process::all(), Stat::read()?);
    let wall = t0.elapsed().as_secs_f64();
    let mut mine = tree_of(me, &p0);
    mine.extend(tree_of(me, &p1));
    let before: HashMap<u32, u64> = p0.iter().map(|p| (p.pid, p.ticks)).collect();
    let delta = |p: &Process| {
        p.ticks
            .saturating_sub(before.get(&p.pid).copied().unwrap_or(0))
    };
    let own: u64 = p1.iter().filter(|p| mine.contains(&p.pid)).map(delta).sum();
    let pct = |ticks: u64| 100.0 * ticks as f64 / USER_HZ / wall.max(1e-9);
    let foreign = s1.all.since(&s0.all).busy().saturating_sub(own);
    let mut top: Vec<Busy> = p1
        .iter()
        // A process that started in the window counts from zero.
        .filter(|p| !mine.contains(&p.pid))
        .map(|p| Busy {
            pid: p.pid,
            comm: p.comm.clone(),
            percent: pct(delta(p)),
        })
        .filter(|b| b.percent >= 1.0)
        .collect();
    top.sort_by(|a, b| b.percent.total_cmp(&a.percent));
    Ok(Activity {
        window_s: wall,
        foreign_percent: pct(foreign),
        top,
    })
}

/// Other work found on the machine around a benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BusyNote {
    /// The benchmark.
    pub bench: String,
    /// When: before it started, or during which measurement.
    pub when: String,
    /// What was using the CPUs.
    pub activity: Activity,
}

/// The error of a measurement refused because the machine was busy.
#[derive(Debug, Clone)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// What to do when other processes use the CPUs, and what was found.
#[derive(Debug, Clone)]
pub struct BusyPolicy {
    /// % of one core others may use.
    pub threshold: f64,
    /// Carry on (and note it) instead of refusing.
    pub allow: bool,
    /// Everything found above the threshold.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<BusyNote>>>,
}

impl BusyPolicy {
    /// Records `activity` when it is above the threshold; an error when
    /// that is not allowed.
    pub fn judge(&self, bench: &str, when: &str, activity: Activity) -> Result<()> {
        if activity.foreign_percent <= self.threshold {
            return Ok(());
        }
        let summary = activity.summary();
        if !self.allow {
            return Err(anyhow::Error::new(Refused(format!(
                "refused: other processes used {summary} {when} (over {:.1} s; threshold {:.0} % of a core); wait for a quiet machine, or pass --allow-busy to run anyway and have the table say so",
                activity.window_s, self.threshold
            ))));
        }
        eprintln!("[{bench}] warning: the machine is busy {when}: {summary}");
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(BusyNote {
                bench: bench.into(),
                when: when.into(),
                activity,
            });
        Ok(())
    }

    /// Everything recorded so far.
    pub fn notes(&self) -> Vec<BusyNote> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Watches other user-space processes while a measurement runs: the
/// machine's total cannot tell them from the measurement's own softirq
/// work, so this counts only processes outside this process's tree that
/// are not kernel threads (children of kthreadd, pid 2).
#[derive(Debug)]
pub struct Watch {
    before: HashMap<u32, u64>,
    at: Instant,
}

impl Watch {
    /// Takes the first snapshot.
    pub fn start() -> Self {
        Self {
            before: Process::all()
                .into_iter()
                .map(|p| (p.pid, p.ticks))
                .collect(),
            at: Instant::now(),
        }
    }

    /// What others used since [`Watch::start`].
    pub fn finish(self) -> Activity {
        let now = Process::all();
        let wall = self.at.elapsed().as_secs_f64();
        let mine = tree_of(std::process::id(), &now);
        let pct = |ticks: u64| 100.0 * ticks as f64 / USER_HZ / wall.max(1e-9);
        let mut top: Vec<Busy> = now
            .iter()
            .filter(|p| !mine.contains(&p.pid) && p.pid != 2 && p.ppid != 2)
            .map(|p| Busy {
                pid: p.pid,
                comm: p.comm.clone(),
                percent: pct(p
                    .ticks
                    .saturating_sub(self.before.get(&p.pid).copied().unwrap_or(0))),
            })
            .filter(|b| b.percent > 0.0)
            .collect();
        top.sort_by(|a, b| b.percent.total_cmp(&a.percent));
        Activity {
            window_s: wall,
            foreign_percent: top.iter().map(|b| b.percent).sum(),
            top: top.into_iter().filter(|b| b.percent >= 1.0).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_lines() {
        let s = Stat::parse(
            "cpu  10 1 20 300 4 5 6 7 0 0\ncpu0 5 0 10 150 2 2 3 3 0 0\ncpu1 5 1 10 150 2 3 3 4 0 0\nintr 1 2\n",
        );
        assert_eq!(s.all.user, 11);
        assert_eq!(s.all.idle, 304);
        assert_eq!(s.all.busy(), 11 + 20 + 5 + 6);
        assert_eq!(s.per_cpu[&1].softirq, 3);
        assert_eq!(s.per_cpu.len(), 2);
    }

    #[test]
    fn parses_process_stat_with_spaces_in_the_name() {
        let p = Process::parse(
            "42 (a (b) c) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3",
        )
        .expect("parses");
        assert_eq!(
            (p.pid, p.ppid, p.comm.as_str(), p.ticks),
            (42, 7, "a (b) c", 300)
        );
    }

    #[test]
    fn the_tree_holds_children_and_grandchildren_only() {
        let p = |pid, ppid| Process {
            pid,
            ppid,
            comm: String::new(),
            ticks: 0,
        };
        let procs = [p(1, 0), p(10, 1), p(11, 10), p(12, 11), p(20, 1)];
        assert_eq!(tree_of(10, &procs), HashSet::from([10, 11, 12]));
    }

    #[test]
    fn activity_of_a_quiet_window_is_measured() {
        let a = foreign_activity(Duration::from_millis(50)).expect("reads /proc");
        assert!(a.window_s >= 0.05);
        assert!(a.foreign_percent >= 0.0);
    }
}
