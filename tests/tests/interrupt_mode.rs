//! Interrupt mode: workers that sleep until work arrives, lose no wakeup,
//! serve app queues fairly, cost no CPU when idle, and still run TCP's
//! timers while asleep.

#![forbid(unsafe_code)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hoststack_app::App;
use hoststack_app_proto::endpoint::{Endpoint, TransportProto};
use hoststack_app_proto::error::SessionError;
use hoststack_app_proto::options::AppOptions;
use hoststack_drivers::memory_pair::{MemoryPairConfig, memory_pair};
use hoststack_session::app_socket::{AppSocketConfig, AppSocketServer};
use hoststack_stack::builtin_apps::EchoServer;
use hoststack_stack::{Stack, StackConfig, WorkerMode};
use hoststack_tests::{
    Lab, LabConfig, Medium, Proc, add_nft_loss, peer, require_root, stack_addresses,
    start_echo_server, start_echo_server_on, unique_lab_name,
};

/// A one-worker stack on an in-memory port (nobody on the other end), in
/// `mode`, serving apps on a socket.
fn memory_stack(
    mode: WorkerMode,
    tag: &str,
) -> Result<(Stack, AppSocketServer, std::path::PathBuf)> {
    let (a, _b) = memory_pair(MemoryPairConfig::default())?;
    let cfg = StackConfig::new(
        "mem0",
        vec!["10.8.0.1/24".parse().map_err(anyhow::Error::msg)?],
    );
    let stack = Stack::start_with_driver(a, &cfg, mode)?;
    let path = std::env::temp_dir().join(format!("hs-{tag}-{}.sock", std::process::id()));
    let apps = stack.serve_apps(AppSocketConfig::new(&path))?;
    Ok((stack, apps, path))
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Posts one ping, retrying while the queue is full.
fn ping(app: &App) -> Result<()> {
    loop {
        match app.ping(0) {
            Ok(()) => return Ok(()),
            Err(SessionError::QueueFull) => std::thread::yield_now(),
            Err(e) => bail!("ping: {e}"),
        }
    }
}

#[test]
fn eight_apps_posting_bursts_for_20_seconds_lose_no_wakeup() -> Result<()> {
    let (stack, _apps, path) = memory_stack(WorkerMode::Interrupt, "lw")?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut apps = Vec::new();
    for i in 0..8u64 {
        let app = Arc::new(App::attach(
            &path,
            &format!("burst-{i}"),
            AppOptions::default(),
        )?);
        apps.push(app.clone());
        let st = stop.clone();
        threads.push(std::thread::spawn(move || -> Result<u64> {
            let mut x = 0x9e37_79b9_7f4a_7c15 ^ (i + 1);
            let mut sent = 0;
            while !st.load(Ordering::Relaxed) {
                for _ in 0..1 + xorshift(&mut x) % 100 {
                    ping(&app)?;
                    sent += 1;
                }
                // Mostly short gaps, sometimes long enough for the worker to
                // fall asleep between bursts.
                let gap = match xorshift(&mut x) % 10 {
                    0 => 20_000,
                    1..=3 => 2_000,
                    _ => xorshift(&mut x) % 300,
                };
                std::thread::sleep(Duration::from_micros(gap));
            }
            Ok(sent)
        }));
    }
    std::thread::sleep(Duration::from_secs(20));
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<u64> = threads
        .into_iter()
        .map(|t| t.join().expect("sender thread"))
        .collect::<Result<_>>()?;
    let w = &stack.workers()[0];
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let handled: Vec<u64> = apps
            .iter()
            .map(|a| w.session_stats.pings_of(a.index()).count)
            .collect();
        if handled == sent {
            break;
        }
        if Instant::now() > end {
            bail!("messages were lost: sent {sent:?}, handled {handled:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let max_wait = apps
        .iter()
        .map(|a| w.session_stats.pings_of(a.index()).max_wait_ns)
        .max()
        .unwrap_or(0);
    let sleeps = w.stats.sleeps.load(Ordering::Relaxed);
    eprintln!(
        "{} messages, max wait {:.2} ms, {sleeps} sleeps",
        sent.iter().sum::<u64>(),
        max_wait as f64 / 1e6
    );
    assert!(
        sleeps > 100,
        "the worker hardly slept ({sleeps}): interrupt mode was not exercised"
    );
    // The worker's own timer wakes it at least every second: a lost wakeup
    // shows up as a wait near that; a healthy one is far below.
    assert!(
        max_wait < 500_000_000,
        "a message waited {:.1} ms: a stuck queue",
        max_wait as f64 / 1e6
    );
    Ok(())
}

#[test]
fn a_flooding_app_cannot_starve_one_that_sends_every_millisecond() -> Result<()> {
    let (stack, _apps, path) = memory_stack(WorkerMode::Interrupt, "fair")?;
    let flood = App::attach(&path, "flood", AppOptions::default())?;
    let calm = App::attach(&path, "calm", AppOptions::default())?;
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let flooded = Arc::new(AtomicU64::new(0));
    let fl = flooded.clone();
    let flooder = std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            if flood.ping(0).is_ok() {
                fl.fetch_add(1, Ordering::Relaxed);
            }
        }
        flood
    });
    let mut calm_sent = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        ping(&calm)?;
        calm_sent += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    let flood = flooder.join().expect("flooder");
    let w = &stack.workers()[0];
    let end = Instant::now() + Duration::from_secs(5);
    while w.session_stats.pings_of(calm.index()).count < calm_sent && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let c = w.session_stats.pings_of(calm.index());
    let f = w.session_stats.pings_of(flood.index());
    eprintln!(
        "flood: {} handled of {} sent; calm: {} of {calm_sent}, max wait {:.2} ms, mean {:.3} ms",
        f.count,
        flooded.load(Ordering::Relaxed),
        c.count,
        c.max_wait_ns as f64 / 1e6,
        c.total_wait_ns as f64 / c.count.max(1) as f64 / 1e6
    );
    assert_eq!(c.count, calm_sent, "the calm app lost messages");
    assert!(
        f.count > 10 * calm_sent,
        "the flood did not flood ({} messages)",
        f.count
    );
    // Without postponement the calm app would wait until the flood
    // stopped: seconds. One flood batch ahead of it is microseconds.
    assert!(
        c.max_wait_ns < 50_000_000,
        "the calm app waited {:.1} ms behind the flood",
        c.max_wait_ns as f64 / 1e6
    );
    Ok(())
}

/// CPU time (user + system, in clock ticks) of this process's threads whose
/// name starts with `prefix`.
fn thread_cpu_ticks(prefix: &str) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let dir = entry?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.trim().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat"))?;
        // Fields after the ")" that closes the command name.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat; 12 and 13 here.
        total += f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    }
    Ok(total)
}

fn idle_cpu_share(mode: WorkerMode) -> Result<f64> {
    let lab = Lab::up(LabConfig::new(&unique_lab_name("id")))?;
    let cfg = StackConfig::new(&lab.host_if, stack_addresses(&lab));
    let stack = Stack::start(&cfg, mode)?;
    let echo = EchoServer::attach(stack.control(), "idle-echo", AppOptions::default(), 1)?;
    echo.listen(
        stack.control(),
        TransportProto::Tcp,
        Endpoint {
            ip: lab.cfg.host4.addr,
            port: 7,
        },
    )?;
    // A kernel client opens a session and says nothing for a while.
    let host = lab.cfg.host4.addr.to_string();
    let script = format!(
        "import socket,time; s=socket.create_connection(('{host}',7)); print('connected', flush=True); time.sleep(8)"
    );
    let mut client = Proc::spawn("idle client", {
        let mut c = lab.command("python3");
        c.arg("-c").arg(script);
        c
    })?;
    client.wait_for_line("connected", Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));
    let hz = 100.0; // USER_HZ
    let before = thread_cpu_ticks("hs-worker")?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let used = (thread_cpu_ticks("hs-worker")? - before) as f64 / hz;
    let share = used / t.elapsed().as_secs_f64();
    drop(client);
    stack.stop()?;
    Ok(share)
}

#[test]
fn an_idle_interrupt_mode_worker_uses_under_2_percent_cpu_and_a_polling_one_near_100() -> Result<()>
{
    require_root();
    let interrupt = idle_cpu_share(WorkerMode::Interrupt)?;
    let poll = idle_cpu_share(WorkerMode::Poll)?;
    eprintln!(
        "idle worker CPU: interrupt {:.2} %, poll {:.1} %",
        interrupt * 100.0,
        poll * 100.0
    );
    assert!(
        interrupt < 0.02,
        "interrupt mode used {:.2} % of a core while idle",
        interrupt * 100.0
    );
    // A polling worker spins a whole core; on a busy 2-core machine it may
    // get less, but never anywhere near the interrupt-mode figure.
    assert!(
        poll > 0.3,
        "poll mode used only {:.1} %: the measurement cannot tell",
        poll * 100.0
    );
    Ok(())
}

#[test]
fn tcp_timers_fire_while_asleep_a_transfer_with_1_percent_loss_each_way_completes() -> Result<()> {
    require_root();
    let lab = Lab::up(LabConfig::new(&unique_lab_name("ls")))?;
    add_nft_loss(&lab, 1)?;
    let server = start_echo_server(&lab, &["--mode", "interrupt", "--inject-loss", "1"])?;
    let host = lab.cfg.host4.addr.to_string();
    let t = Instant::now();
    let v = peer(&lab, &["stream", &host, "7", &(4u64 << 20).to_string()])?;
    assert_eq!(v["ok"], true, "{v}");
    eprintln!(
        "4 MiB echoed through 1 % loss each way (plus 1 % on the stack side) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (ok, out) = server.terminate()?;
    assert!(ok, "{out}");
    let stats = hoststack_tests::last_json(&out)?;
    // Loss really happened, on both sides and both ways.
    let ruleset = Command::new("ip")
        .args(["netns", "exec", &lab.netns, "nft", "list", "ruleset"])
        .output()?;
    let ruleset = String::from_utf8_lossy(&ruleset.stdout).into_owned();
    let nft_drops: Vec<u64> = ruleset
        .split("counter packets ")
        .skip(1)
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        nft_drops.len() == 2 && nft_drops.iter().all(|&n| n > 0),
        "nftables dropped nothing in one direction: {ruleset}"
    );
    for key in ["injected_rx_drops", "injected_tx_drops"] {
        assert!(stats[key].as_u64() > Some(0), "{key}: {stats}");
    }
    eprintln!(
        "dropped: nftables {nft_drops:?} (out, in), stack side {} rx / {} tx",
        stats["injected_rx_drops"], stats["injected_tx_drops"]
    );
    assert!(stats["tcp_bytes"].as_u64() >= Some(4 << 20), "{stats}");
    Ok(())
}

fn echo_in_mode(medium: Medium, mode: &str) -> Result<()> {
    let lab = medium.lab(&mode[..2])?;
    let server = start_echo_server_on(medium, &lab, &["--mode", mode])?;
    let host = lab.cfg.host4.addr.to_string();
    let v = peer(&lab, &["stream", &host, "7", &(64u64 << 20).to_string()])?;
    assert_eq!(v["ok"], true, "{mode}: {v}");
    let v = peer(&lab, &["rr", &host, "7", "20000", "64"])?;
    assert_eq!(v["ok"], true, "{mode}: {v}");
    eprintln!(
        "{mode}: {:.0} round trips/s, p99 {:.0} us",
        v["rate"].as_f64().unwrap_or(0.0),
        v["p99_us"].as_f64().unwrap_or(0.0)
    );
    for h in [
        lab.cfg.host4.addr.to_string(),
        lab.cfg.host6.addr.to_string(),
    ] {
        let v = peer(&lab, &["udp", &h, "7", "200"])?;
        assert_eq!(v["ok"], true, "{mode} {h}: {v}");
    }
    let v = peer(&lab, &["many", &host, "7", "100", "16384"])?;
    assert_eq!(v["ok"], true, "{mode}: {v}");
    let (ok, out) = server.terminate()?;
    assert!(ok, "{out}");
    Ok(())
}

#[test]
fn echo_tests_pass_in_poll_mode() -> Result<()> {
    echo_in_mode(Medium::Veth, "poll")
}

#[test]
fn echo_tests_pass_in_interrupt_mode() -> Result<()> {
    echo_in_mode(Medium::Veth, "interrupt")
}

#[test]
fn echo_tests_pass_in_adaptive_mode() -> Result<()> {
    echo_in_mode(Medium::Veth, "adaptive")
}

/// The TAP's sleeper wakes on its read completions (poll mode runs in the
/// other TAP tests).
#[test]
fn echo_tests_pass_on_a_tap_in_interrupt_and_adaptive_mode() -> Result<()> {
    for mode in ["interrupt", "adaptive"] {
        echo_in_mode(Medium::TAP, mode)?;
    }
    Ok(())
}
