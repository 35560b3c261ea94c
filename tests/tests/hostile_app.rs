//! A hostile app against `hoststack run` in interrupt mode (issue 16).
//!
//! Two external echo servers attach to the daemon over the same app socket:
//! an honest one, which echoes a kernel client in the lab's namespace for
//! the whole test, and an offender. For each attack a fresh offender
//! attaches, gets two sessions from the kernel, is stopped (SIGSTOP, so it
//! cannot trip over its own garbage) and the test writes into its memfd
//! mappings through /proc/PID/mem: one field of every message queue or fifo
//! header it has, or random bytes over everything. The kernel then sends a
//! few bytes on the offender's sessions (so the stack touches its fifos),
//! while the honest client keeps echoing.
//!
//! After each attack: the daemon is up; the offender is detached within a
//! second (for the attacks that are corruption); the honest echo stayed
//! byte-exact on one connection (no reset); once idle, the daemon uses
//! under 1 % of a core; its log grew by at most 20 lines. A table of the
//! figures is printed at the end (`--nocapture` shows it).
//!
//! Needs root (a veth lab).

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};

use hoststack_app_proto::app_rx_queue::{CONTROL_SLOT_SIZE, IO_SLOT_SIZE};
use hoststack_tests::Daemon;
use hoststack_tests::hostile::{
    FIFO_DATA_OFFSET, FIFO_FLAGS, FIFO_HEAD, FIFO_MAGIC, FIFO_SIZE, FIFO_TAIL, HEADER_SIZE,
    MQ_HEAD, MQ_MAGIC, MQ_SLOT_SIZE, MQ_SLOTS, MQ_TAIL, ProcMem, SharedState,
};

/// The most log lines one attack may add.
const LOG_LINES_PER_ATTACK: usize = 20;

/// How soon an offender must be detached.
const DETACH_WITHIN: Duration = Duration::from_secs(1);

/// One attack: its name, whether it is corruption the stack must catch (a
/// verdict), and the writes.
struct Attack {
    name: &'static str,
    verdict: bool,
    apply: fn(&ProcMem, &SharedState, &mut StdRng) -> Result<()>,
}

/// Address of the slot holding position `pos` of the queue at `q`.
fn slot(q: u64, slots: u32, slot_size: u32, pos: u64) -> u64 {
    let stride = (16 + u64::from(slot_size)).next_multiple_of(64);
    q + HEADER_SIZE + (pos % u64::from(slots)) * stride
}

/// Each queue's (address, slots, slot size, head).
fn queue_heads(m: &ProcMem, st: &SharedState) -> Result<Vec<(u64, u32, u32, u64)>> {
    st.queues
        .iter()
        .map(|&(q, n, size)| Ok((q, n, size, m.u64_at(q + MQ_HEAD)?)))
        .collect()
}

/// Each fifo's (address, size, head, tail).
fn fifo_indices(m: &ProcMem, st: &SharedState) -> Result<Vec<(u64, u32, u32, u32)>> {
    st.fifos
        .iter()
        .map(|&(f, size)| Ok((f, size, m.u32_at(f + FIFO_HEAD)?, m.u32_at(f + FIFO_TAIL)?)))
        .collect()
}

/// The app's event queues (the stack produces into them): the queues whose
/// slots are not the app rx queues' (those have an io ring and a control
/// ring, with slots of their own sizes).
fn event_queues(st: &SharedState) -> Vec<(u64, u32, u32)> {
    st.queues
        .iter()
        .copied()
        .filter(|&(_, _, size)| size != IO_SLOT_SIZE && size != CONTROL_SLOT_SIZE)
        .collect()
}

const ATTACKS: &[Attack] = &[
    // Message queues (the app's rx queues, which the stack consumes, and
    // its event queue, which the stack produces into).
    Attack {
        name: "queue tail past head, slot unpublished",
        verdict: true,
        apply: |m, st, _| {
            for (q, _, _, head) in queue_heads(m, st)? {
                m.put_u64(q + MQ_TAIL, head + 1)?;
            }
            Ok(())
        },
    },
    Attack {
        name: "queue tail far past the end",
        verdict: true,
        apply: |m, st, _| {
            for &(q, ..) in &st.queues {
                m.put_u64(q + MQ_TAIL, u64::MAX - 3)?;
            }
            Ok(())
        },
    },
    Attack {
        name: "queue head past tail",
        verdict: true,
        apply: |m, st, _| {
            for &(q, ..) in &st.queues {
                let tail = m.u64_at(q + MQ_TAIL)?;
                m.put_u64(q + MQ_HEAD, tail + 7)?;
            }
            Ok(())
        },
    },
    Attack {
        name: "queue wrong sequence at head",
        verdict: true,
        apply: |m, st, _| {
            for (q, n, size, head) in queue_heads(m, st)? {
                m.put_u64(slot(q, n, size, head), head + 12_345)?;
            }
            Ok(())
        },
    },
    Attack {
        name: "queue message longer than its slot",
        verdict: true,
        apply: |m, st, _| {
            for (q, n, size, head) in queue_heads(m, st)? {
                let s = slot(q, n, size, head);
                m.put_u32(s + 8, size + 1)?;
                m.put_u64(s, head + 1)?;
                m.put_u64(q + MQ_TAIL, head + 1)?;
            }
            Ok(())
        },
    },
    Attack {
        name: "queue slot count changed",
        verdict: true,
        apply: |m, st, _| {
            for &(q, n, ..) in &st.queues {
                m.put_u32(q + MQ_SLOTS, n * 2 + 1)?;
            }
            Ok(())
        },
    },
    Attack {
        name: "queue slot size changed",
        verdict: true,
        apply: |m, st, _| {
            for &(q, _, size) in &st.queues {
                m.put_u32(q + MQ_SLOT_SIZE, size / 2)?;
            }
            Ok(())
        },
    },
    Attack {
        name: "queue magic destroyed",
        verdict: true,
        apply: |m, st, _| {
            for &(q, ..) in &st.queues {
                m.put_u32(q + MQ_MAGIC, 0xdead_beef)?;
            }
            Ok(())
        },
    },
    // The event queue alone (the app's rx queues untouched): the stack as
    // its producer finds a sequence no consumer could have written when
    // it posts the next event.
    Attack {
        name: "event queue sequence ahead of tail",
        verdict: true,
        apply: |m, st, _| {
            let queues = event_queues(st);
            ensure!(!queues.is_empty(), "no event queue found");
            for (q, n, size) in queues {
                let tail = m.u64_at(q + MQ_TAIL)?;
                m.put_u64(slot(q, n, size, tail), tail + 5)?;
            }
            Ok(())
        },
    },
    // Not corruption: a queue whose next slot still holds last lap's
    // message is a full queue, what an app that stopped draining it (a
    // stopped process) leaves. The stack postpones its events; it must
    // not spin on them nor log per event.
    Attack {
        name: "event queue full for ever (no verdict)",
        verdict: false,
        apply: |m, st, _| {
            for (q, n, size) in event_queues(st) {
                let tail = m.u64_at(q + MQ_TAIL)?;
                m.put_u64(slot(q, n, size, tail), tail.wrapping_sub(u64::from(n)))?;
            }
            Ok(())
        },
    },
    // Fifos (every session's rx and tx fifo).
    Attack {
        name: "fifo head past the end",
        verdict: true,
        apply: |m, st, _| {
            for &(f, size) in &st.fifos {
                m.put_u32(f + FIFO_HEAD, 2 * size + 5)?;
            }
            Ok(())
        },
    },
    Attack {
        name: "fifo tail more than size past head",
        verdict: true,
        apply: |m, st, _| {
            for (f, size, head, _) in fifo_indices(m, st)? {
                m.put_u32(f + FIFO_TAIL, (head + size + 1) % (2 * size))?;
            }
            Ok(())
        },
    },
    Attack {
        name: "fifo head past tail",
        verdict: true,
        apply: |m, st, _| {
            for (f, size, _, tail) in fifo_indices(m, st)? {
                m.put_u32(f + FIFO_HEAD, (tail + 1) % (2 * size))?;
            }
            Ok(())
        },
    },
    Attack {
        name: "fifo size changed",
        verdict: true,
        apply: |m, st, _| {
            for &(f, size) in &st.fifos {
                m.put_u32(f + FIFO_SIZE, size / 2)?;
            }
            Ok(())
        },
    },
    Attack {
        name: "fifo data offset changed",
        verdict: true,
        apply: |m, st, _| {
            for &(f, _) in &st.fifos {
                let off = m.u64_at(f + FIFO_DATA_OFFSET)?;
                m.put_u64(f + FIFO_DATA_OFFSET, off + 4096)?;
            }
            Ok(())
        },
    },
    Attack {
        name: "fifo magic destroyed",
        verdict: true,
        apply: |m, st, _| {
            for &(f, _) in &st.fifos {
                m.put_u32(f + FIFO_MAGIC, 0)?;
            }
            Ok(())
        },
    },
    // Not corruption: flags and watermarks are hints both sides may set
    // (the worst they do is cost the app events it asked for or miss
    // some), and data bytes are the app's own stream. No verdict is
    // needed; only that nothing else breaks.
    Attack {
        name: "fifo flags and watermarks (no verdict)",
        verdict: false,
        apply: |m, st, rng| {
            for &(f, _) in &st.fifos {
                for k in 0..3 {
                    m.put_u32(f + FIFO_FLAGS + 4 * k, rng.random())?;
                }
            }
            Ok(())
        },
    },
    Attack {
        name: "fifo data bytes (no verdict)",
        verdict: false,
        apply: |m, st, rng| {
            for &(f, size) in &st.fifos {
                let base = st
                    .mappings
                    .iter()
                    .find(|map| (map.start..map.end).contains(&f))
                    .context("fifo outside the mappings")?
                    .start;
                let mut junk = vec![0u8; size.min(64 * 1024) as usize];
                rng.fill_bytes(&mut junk);
                m.write(base + m.u64_at(f + FIFO_DATA_OFFSET)?, &junk)?;
            }
            Ok(())
        },
    },
    Attack {
        name: "random bytes over every mapping",
        verdict: true,
        apply: |m, st, rng| {
            for map in &st.mappings {
                let mut junk = vec![0u8; (map.end - map.start) as usize];
                rng.fill_bytes(&mut junk);
                m.write(map.start, &junk)?;
            }
            Ok(())
        },
    },
];

/// One echoed round on the honest connection: random bytes out, the same
/// back.
fn echo(c: &mut TcpStream, rng: &mut StdRng) -> Result<()> {
    let mut out = vec![0u8; rng.random_range(1..=8192)];
    rng.fill_bytes(&mut out);
    c.write_all(&out).context("honest echo: write")?;
    let mut back = vec![0u8; out.len()];
    c.read_exact(&mut back).context("honest echo: read")?;
    ensure!(back == out, "honest echo differs");
    Ok(())
}

/// The app names `show app` lists (its footer names detached ones too,
/// after "last:").
fn apps(d: &Daemon) -> Result<Vec<String>> {
    let text = d.show("app")?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()) && !l.contains("detached"))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect())
}

/// Nanoseconds all the process's threads have run.
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let p = t?.path().join("schedstat");
        // A thread that ended in between has no file any more.
        if let Ok(s) = std::fs::read_to_string(p) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// Each thread's name and nanoseconds run.
fn thread_cpu(pid: u32) -> Vec<(String, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|t| {
        let p = t.ok()?.path();
        let name = std::fs::read_to_string(p.join("comm")).ok()?;
        let ns = std::fs::read_to_string(p.join("schedstat")).ok()?;
        let ns = ns.split_whitespace().next()?.parse().ok()?;
        Some((
            format!("{}/{}", name.trim(), p.file_name()?.to_string_lossy()),
            ns,
        ))
    })
    .collect()
}

/// Which threads ran how long over `window` (for a failure message).
fn cpu_by_thread(pid: u32, window: Duration) -> String {
    let before = thread_cpu(pid);
    std::thread::sleep(window);
    let after = thread_cpu(pid);
    after
        .iter()
        .map(|(n, ns)| {
            let was = before.iter().find(|(m, _)| m == n).map_or(0, |b| b.1);
            format!(
                "{n} {:.2} %",
                (ns - was) as f64 / window.as_nanos() as f64 * 100.0
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The daemon's CPU use over `window`, in percent of one core.
fn idle_cpu(pid: u32, window: Duration) -> Result<f64> {
    let (t0, c0) = (Instant::now(), cpu_ns(pid)?);
    std::thread::sleep(window);
    let (c1, dt) = (cpu_ns(pid)?, t0.elapsed());
    Ok((c1 - c0) as f64 / dt.as_nanos() as f64 * 100.0)
}

fn signal(pid: u32, sig: rustix::process::Signal) -> Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).context("pid")?;
    rustix::process::kill_process(pid, sig)?;
    Ok(())
}

/// Polls `show app` (echoing on the honest connection meanwhile) until
/// `name` is gone or `limit` passes; how long it took.
fn wait_gone(
    d: &Daemon,
    name: &str,
    limit: Duration,
    honest: &mut TcpStream,
    rng: &mut StdRng,
) -> Result<Option<Duration>> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        echo(honest, rng)?;
        if !apps(d)?.iter().any(|a| a == name) {
            return Ok(Some(t0.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(None)
}

#[test]
fn a_hostile_app_is_detached_and_its_neighbour_never_notices() -> Result<()> {
    // HOSTSTACK_HOSTILE_MODE=poll|adaptive runs the attacks on another
    // worker mode (by hand: a polling daemon's CPU is not checked).
    let mode = std::env::var("HOSTSTACK_HOSTILE_MODE").unwrap_or_else(|_| "interrupt".into());
    let d = Daemon::start_logged("ha", |_| format!("[session]\nworker_mode = \"{mode}\"\n"))?;
    let daemon_pid = d.pid().context("daemon pid")?;
    let mut honest_app = d.echo_app("app.sock", &["--listen", "0.0.0.0:7", "--name", "honest"])?;
    honest_app.discard_stdout();
    let mut honest = d.kernel_connection(7)?;
    let mut rng = StdRng::seed_from_u64(16);
    let mut rows = Vec::new();
    // HOSTSTACK_HOSTILE_ATTACK=WORDS runs only the attacks whose name
    // contains them (to look at one by hand).
    let only = std::env::var("HOSTSTACK_HOSTILE_ATTACK").unwrap_or_default();
    for (i, attack) in ATTACKS.iter().enumerate() {
        if !attack.name.contains(only.as_str()) {
            continue;
        }
        let name = format!("evil{i}");
        let mut evil = d.echo_app("app.sock", &["--listen", "0.0.0.0:8", "--name", &name])?;
        evil.discard_stdout();
        let pid = evil.pid().context("offender pid")?;
        let mut sessions = vec![d.kernel_connection(8)?, d.kernel_connection(8)?];
        echo(&mut honest, &mut rng)?;
        ensure!(apps(&d)?.contains(&name), "{name} is not attached");

        signal(pid, rustix::process::Signal::STOP)?;
        let mem = ProcMem::open(pid)?;
        let state = mem.shared_state()?;
        ensure!(
            !state.queues.is_empty() && !state.fifos.is_empty(),
            "{}: no queue or fifo found in the offender's mappings",
            attack.name
        );
        let lines_before = d.log_lines();
        (attack.apply)(&mem, &state, &mut rng)?;
        // Bytes from the network make the stack touch the offender's fifos
        // (its rx queues it judges on its own).
        for s in &mut sessions {
            let _ = s.write_all(b"poke");
        }
        let limit = if attack.verdict {
            DETACH_WITHIN
        } else {
            Duration::from_millis(300)
        };
        let detached = wait_gone(&d, &name, limit, &mut honest, &mut rng)?;
        if attack.verdict && detached.is_none() {
            let log = std::fs::read_to_string(d.log_path()).unwrap_or_default();
            eprintln!("daemon log:\n{log}");
            bail!(
                "{}: the offender was not detached within {DETACH_WITHIN:?}",
                attack.name
            );
        }
        // Idle, the offender still stopped (detached, or, for the attacks
        // that are no corruption, still attached with what it wrote):
        // the first 1 s window under the bound within 3 s (the idle
        // daemon's own ticks are about 0.3 % of a core).
        std::thread::sleep(Duration::from_millis(300));
        let mut cpu = f64::MAX;
        for _ in 0..3 {
            cpu = idle_cpu(daemon_pid, Duration::from_secs(1))?;
            if cpu < 1.0 {
                break;
            }
        }
        let lines = d.log_lines() - lines_before;
        // A stopped offender the stack had no reason to detach goes the
        // ordinary way.
        evil.kill9();
        drop(sessions);
        ensure!(
            wait_gone(&d, &name, Duration::from_secs(5), &mut honest, &mut rng)?.is_some(),
            "{}: the killed offender is still attached",
            attack.name
        );
        echo(&mut honest, &mut rng)?;
        ensure!(
            std::path::Path::new(&format!("/proc/{daemon_pid}")).exists(),
            "{}: the daemon died",
            attack.name
        );
        ensure!(
            apps(&d)?.contains(&"honest".to_string()),
            "{}: the honest app went",
            attack.name
        );
        echo(&mut honest, &mut rng)?;
        let detach = detached.map_or("-".to_string(), |t| format!("{} ms", t.as_millis()));
        println!(
            "{:<42} detached {:>8}  idle cpu {cpu:5.2} %  log +{lines}",
            attack.name, detach
        );
        rows.push((attack.name, detach, cpu, lines));
        ensure!(
            cpu < 1.0 || mode != "interrupt",
            "{}: the idle daemon uses {cpu:.2} % of a core (then, by thread: {})",
            attack.name,
            cpu_by_thread(daemon_pid, Duration::from_secs(1))
        );
        ensure!(
            lines <= LOG_LINES_PER_ATTACK,
            "{}: the log grew by {lines} lines",
            attack.name
        );
    }
    println!("\n| attack | time to detach | idle CPU after | log lines added |");
    println!("|---|---|---|---|");
    for (name, detach, cpu, lines) in rows {
        println!("| {name} | {detach} | {cpu:.2} % | {lines} |");
    }
    Ok(())
}
