//! Many connections: 64-byte round trips on one connection while N others
//! sit idle (the connection-count sweep), the time to open them, and what
//! each established connection costs in memory on both sides.
//!
//! The idle connections come from `kernel_conns --hold` processes in the
//! lab's namespace ([`hoststack_lab::HeldConns`], as the scale test
//! opens its 100,000): a process may hold about 20,000 files here, so at
//! most [`PER_CLIENT`] connections per process, each process from its own
//! source address. The kernel's server is held to the same limit, so it
//! runs as several processes sharing the port through SO_REUSEPORT.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Result, bail};
use hoststack_lab::{HeldConns, Lab};

use super::rr::{rr_client, rr_figures, show_rr};
use super::sides::{self, Config, ECHO_PORT, Mode, Results, Server, Service, Side, Tuning};
use super::{Outcome, Row, Settings, ip4};
use crate::env;
use crate::kernel::RrResult;
use crate::kserver;
use crate::memory;
use crate::stats::Spread;

/// Connections per `kernel_conns` process (the limit is 20,000 files).
const PER_CLIENT: usize = 15_000;

/// hoststack's per-connection sizes for these rows: 16 KiB of TCP buffer
/// and 4 KiB fifos, as the scale test runs it (the defaults, 1 MiB and 512
/// KiB, are sized for bulk transfers).
const TCP_BUFFER: &str = "16384";
const FIFO_SIZE: &str = "4096";

/// One step of the sweep: the idle connections open, then round trips.
#[derive(Debug, Clone)]
pub(super) struct Step {
    /// Idle connections open during the round trips.
    conns: usize,
    /// Seconds this step took to open its new connections (all clients
    /// at once).
    open_secs: f64,
    rr: RrResult,
}

/// Memory before the first idle connection and with all of them open.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Memory {
    /// Connections open at the second reading.
    conns: usize,
    /// Growth of the server processes' proportional set, bytes.
    pss: f64,
    /// Growth of their resident set, bytes (shared segments counted in
    /// every process mapping them).
    rss: f64,
    /// Shared-memory segments resident in the stack's process at the
    /// second reading, bytes (hoststack only).
    segments: f64,
    /// Growth of the kernel's slab, bytes (the whole machine: the
    /// clients' sockets too).
    slab: f64,
    /// Growth of the TCP socket buffers, bytes (the whole machine).
    sockets: f64,
}

impl Memory {
    fn per_conn(&self, bytes: f64) -> f64 {
        bytes / self.conns.max(1) as f64
    }
}

/// One run of one side.
#[derive(Debug, Clone)]
pub(super) struct Sweep {
    steps: Vec<Step>,
    memory: Memory,
}

struct Reading {
    pss: u64,
    rss: u64,
    slab: u64,
    sockets: u64,
}

fn read_memory(server: &Server) -> Result<Reading> {
    let mut r = Reading {
        pss: 0,
        rss: 0,
        slab: memory::slab()?,
        sockets: memory::tcp_socket_memory()?,
    };
    for pid in server.pids() {
        r.pss += memory::pss(pid)?;
        r.rss += memory::rss(pid)?;
    }
    Ok(r)
}

fn grown(a: u64, b: u64) -> f64 {
    b as f64 - a as f64
}

/// The sweep against one running server: for each count, open the
/// connections it adds (every client process at once), check they all
/// echoed, then the round-trip client on a connection of its own.
fn sweep(s: &Settings, lab: &Lab, server: &Server) -> Result<Sweep> {
    let counts = &s.idle_conns;
    // Every step's clients, planned first: each needs a source address.
    let mut plan = Vec::new();
    let mut open = 0;
    for &c in counts {
        let mut add = c.saturating_sub(open);
        let mut step = Vec::new();
        while add > 0 {
            let n = add.min(PER_CLIENT);
            step.push(n);
            add -= n;
        }
        plan.push(step);
        open = open.max(c);
    }
    let sources = lab.add_client_sources(plan.iter().map(Vec::len).sum())?;
    let program = env::tool_beside(&s.hoststack, "kernel_conns")?;
    let target = SocketAddr::new(ip4(lab).0, ECHO_PORT);
    let before = read_memory(server)?;
    let mut clients: Vec<HeldConns> = Vec::new();
    let mut steps = Vec::new();
    let mut next_source = sources.iter();
    let extra = ["--bytes", "64", "--concurrency", "250", "--timeout", "200"];
    for (&c, step) in counts.iter().zip(&plan) {
        s.check()?;
        let t = Instant::now();
        let first = clients.len();
        for &n in step {
            let src = *next_source.next().expect("a source per client");
            clients.push(HeldConns::start(lab, &program, target, src, n, &extra)?);
        }
        for cl in &mut clients[first..] {
            let r = cl.report()?;
            if r["failed"].as_u64() != Some(0) || r["verified"] != r["conns"] {
                bail!("opening {c} connections: a client reported {r}");
            }
        }
        let open_secs = t.elapsed().as_secs_f64();
        let rr = rr_client(s, lab)?;
        steps.push(Step {
            conns: c,
            open_secs,
            rr,
        });
    }
    let after = read_memory(server)?;
    // The stack's process maps the segments (the kernel server none).
    let segments = match server.pids().first() {
        Some(p) => memory::memfd_resident(*p)? as f64,
        None => 0.0,
    };
    let memory = Memory {
        conns: counts.iter().copied().max().unwrap_or(0),
        pss: grown(before.pss, after.pss),
        rss: grown(before.rss, after.rss),
        segments,
        slab: grown(before.slab, after.slab),
        sockets: grown(before.sockets, after.sockets),
    };
    // Dropping the clients kills them; the kernel closes their sockets.
    drop(clients);
    Ok(Sweep { steps, memory })
}

/// Kernel server processes for `conns` connections under this machine's
/// open-file limit.
fn kernel_processes(conns: usize) -> usize {
    let per = kserver::open_files_hard_limit()
        .map_or(usize::MAX, |l| (l as usize).saturating_sub(256) * 3 / 4)
        .max(1);
    conns.div_ceil(per).max(1)
}

const CONFIGS: [Config; 3] = [
    Config {
        side: Side::External(Mode::Poll),
        offloads_off: false,
        tap: false,
    },
    Config {
        side: Side::Kernel,
        offloads_off: false,
        tap: false,
    },
    Config {
        side: Side::KernelBusy,
        offloads_off: false,
        tap: false,
    },
];

/// The last sweep measured in this process, for mem-per-conn (the same
/// connections, not opened twice).
static LAST: Mutex<Option<(Vec<usize>, Results<Sweep>)>> = Mutex::new(None);

fn measure(s: &Settings, bench: &str) -> Result<Results<Sweep>> {
    let top = s.idle_conns.iter().copied().max().unwrap_or(0);
    let tuning = Tuning {
        stack: vec!["--tcp-buffer".into(), TCP_BUFFER.into()],
        app: vec!["--fifo-size".into(), FIFO_SIZE.into()],
        builtin: Vec::new(),
        kernel_processes: kernel_processes(top + 1),
        queues: None,
    };
    // Several busy-polling server processes would take turns spinning on
    // the one core under test: that is no configuration a user would
    // choose, so with more than one process the kernel runs by default
    // only.
    let configs: Vec<Config> = CONFIGS
        .into_iter()
        .filter(|c| tuning.kernel_processes <= 1 || c.side != Side::KernelBusy)
        .collect();
    let results =
        sides::alternate_with(s, bench, &configs, Service::TcpEcho, &tuning, sweep, |r| {
            r.steps
                .iter()
                .map(|st| format!("{} idle: {}", st.conns, show_rr(&st.rr)))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
    *LAST.lock().unwrap_or_else(|p| p.into_inner()) = Some((s.idle_conns.clone(), results.clone()));
    Ok(results)
}

fn notes_on_sides(s: &Settings) -> Vec<String> {
    let top = s.idle_conns.iter().copied().max().unwrap_or(0);
    let k = kernel_processes(top + 1);
    let limit = kserver::open_files_hard_limit().map_or("no open-file limit".into(), |l| {
        format!("a hard limit of {l} open files per process")
    });
    vec![format!(
        "idle connections: from kernel_conns processes in the namespace (at most {PER_CLIENT} each, one source address each; {limit}); hoststack runs with --tcp-buffer {TCP_BUFFER} and the app's --fifo-size {FIFO_SIZE}; the kernel server runs as {k} process(es) (SO_REUSEPORT when more than one), each raising RLIMIT_NOFILE to the hard limit{}",
        if k > 1 {
            "; with several processes only the default (blocking) kernel server runs: several busy-polling processes would take turns spinning on the one core under test"
        } else {
            ""
        }
    )]
}

pub(super) fn idle_conn_sweep(s: &Settings) -> Result<Outcome> {
    const B: &str = "idle-conn-sweep";
    if s.idle_conns.is_empty() {
        bail!("--idle-conns is empty");
    }
    let results = measure(s, B)?;
    let mut rows = Vec::new();
    for (i, &c) in s.idle_conns.iter().enumerate() {
        let fig = |k: usize| move |r: &Sweep| rr_figures(&r.steps[i].rr)[k];
        let what = format!("TCP 64-byte round trips, {c} idle connections open");
        rows.push(
            Row::of(B, &what, "trans/s", true, &results, sides::all, fig(0))
                .labelled(&format!("{B} {c} trans/s")),
        );
        rows.push(
            Row::of(
                B,
                &format!("{what}, p50"),
                "us",
                false,
                &results,
                sides::all,
                fig(1),
            )
            .labelled(&format!("{B} {c} p50"))
            .plotted(
                "64-byte round trip p50 against idle connections",
                "idle connections",
                c as f64,
            ),
        );
        rows.push(
            Row::of(
                B,
                &format!("{what}, p99"),
                "us",
                false,
                &results,
                sides::all,
                fig(2),
            )
            .labelled(&format!("{B} {c} p99"))
            .unchart(),
        );
    }
    let top = s.idle_conns.iter().copied().max().unwrap_or(0);
    rows.push(
        Row::of(
            B,
            &format!("time to open {top} connections (each echoes 64 bytes, checked)"),
            "s",
            false,
            &results,
            sides::all,
            |r| r.steps.iter().map(|st| st.open_secs).sum(),
        )
        .labelled(&format!("{B} open {top}")),
    );
    let mut notes = notes_on_sides(s);
    notes.push(format!(
        "{B}: the sweep opens the connections in steps ({}), each step's clients at once; the time to open is the sum over the steps",
        s.idle_conns
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(Outcome { rows, notes })
}

pub(super) fn mem_per_conn(s: &Settings) -> Result<Outcome> {
    const B: &str = "mem-per-conn";
    let cached = LAST
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .filter(|(counts, _)| *counts == s.idle_conns);
    let mut notes = Vec::new();
    let results = match cached {
        Some((_, r)) => {
            notes.push(format!(
                "{B}: measured in idle-conn-sweep's runs of this invocation (the same connections)"
            ));
            r
        }
        None => {
            let top = s.idle_conns.iter().copied().max().unwrap_or(0);
            let only_top = Settings {
                idle_conns: vec![top],
                ..s.clone()
            };
            notes.extend(notes_on_sides(&only_top));
            measure(&only_top, B)?
        }
    };
    let n = results
        .first()
        .and_then(|(_, runs)| runs.first())
        .map_or(0, |(r, _)| r.memory.conns);
    // The whole machine's growth on each side holds the clients' kernel
    // sockets too; the hoststack runs' slab and socket growth is theirs
    // alone (hoststack keeps its connections in its own memory), and is
    // taken off the kernel's to leave its server side.
    let kernel_mem = |m: &Memory| m.slab + m.sockets;
    let client_share: Vec<f64> = results
        .iter()
        .filter(|(c, _)| !c.side.is_kernel())
        .flat_map(|(_, runs)| {
            runs.iter()
                .map(|(r, _)| r.memory.per_conn(kernel_mem(&r.memory)))
        })
        .collect();
    let client = Spread::of(&client_share).median;
    let hs_or_kernel = |c: &Config, r: &Sweep| {
        let m = &r.memory;
        if c.side.is_kernel() {
            (m.per_conn(m.pss + kernel_mem(m)) - client).max(0.0)
        } else {
            m.per_conn(m.pss).max(0.0)
        }
    };
    let figures = results
        .iter()
        .map(|(c, runs)| super::Figure {
            side: c.label(),
            short: c.short(),
            kernel: c.side.is_kernel(),
            values: runs.iter().map(|(r, _)| hs_or_kernel(c, r)).collect(),
        })
        .collect();
    let whole = Row::of(
        B,
        &format!("memory growth of the whole machine per connection, {n} established (server processes' PSS + slab + TCP socket memory; the clients' sockets included on both sides)"),
        "bytes/conn",
        false,
        &results,
        sides::all,
        |r| {
            r.memory
                .per_conn(r.memory.pss + kernel_mem(&r.memory))
                .max(0.0)
        },
    )
    .labelled(&format!("{B} whole machine"));
    let server = Row::new(
        B,
        &format!("server-side memory per established connection, {n} open (hoststack: its processes' PSS growth, segments included; kernel: slab + TCP socket memory growth less the clients' share measured in hoststack's runs, + its server processes' PSS growth)"),
        "bytes/conn",
        false,
        figures,
    )
    .labelled(&format!("{B} server side"));
    for (c, runs) in &results {
        let per = |f: fn(&Memory) -> f64| {
            Spread::of(
                &runs
                    .iter()
                    .map(|(r, _)| r.memory.per_conn(f(&r.memory)))
                    .collect::<Vec<_>>(),
            )
            .median
        };
        // On hoststack's side the kernel holds only the clients' sockets.
        let whose = if c.side.is_kernel() {
            "server's and clients'"
        } else {
            "clients'"
        };
        notes.push(format!(
            "{B}: {} (medians per connection): PSS {:.0} B, RSS {:.0} B, shared-memory segments resident {:.0} B; slab ({whose} sockets) {:.0} B, TCP socket memory {:.0} B",
            c.label(),
            per(|m| m.pss),
            per(|m| m.rss),
            per(|m| m.segments),
            per(|m| m.slab),
            per(|m| m.sockets)
        ));
    }
    Ok(Outcome {
        rows: vec![server, whole],
        notes,
    })
}
