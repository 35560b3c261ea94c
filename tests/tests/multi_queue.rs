//! Every queue of an interface served: hoststack on the host end of a
//! two-queue veth pair, one pinned worker per queue, kernel peers in the
//! lab's namespace. A veth delivers each frame on the queue numbered like
//! the transmit queue the kernel picked from its flow hash, so flows spread
//! over both queues by themselves; giving the kernel's end one transmit
//! queue (`ethtool -L PEER tx 1`) sends everything to queue 0, which moves
//! flows between queues on purpose. Each test builds its own lab and
//! removes it. Needs root.

#![forbid(unsafe_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use hoststack_tests::{
    Daemon, Lab, LabConfig, Proc, assert_no_xdp, hoststack_bin, last_json, peer, require_root,
    unique_lab_name,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn lab(tag: &str) -> Result<Lab> {
    require_root();
    let mut cfg = LabConfig::new(&unique_lab_name(tag));
    cfg.queues = 2;
    Ok(Lab::up(cfg)?)
}

/// `hoststack CMD` on the lab's host end with both addresses and `extra`.
fn hoststack(lab: &Lab, cmd: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(hoststack_bin());
    c.args([cmd, "--interface", &lab.host_if]);
    for a in lab.host_addresses() {
        c.args(["--address", &a.to_string()]);
    }
    c.args(extra);
    c
}

/// The echo server on every queue (the default), once ready.
fn echo_server(lab: &Lab, extra: &[&str]) -> Result<Proc> {
    let mut p = Proc::spawn(
        "hoststack echo-server",
        hoststack(lab, "echo-server", extra),
    )?;
    p.wait_for_line("ready", Duration::from_secs(30))?;
    Ok(p)
}

/// Stops the echo server; its final report, with no XDP program left.
fn finish(lab: &Lab, server: Proc) -> Result<Value> {
    let (ok, out) = server.terminate()?;
    ensure!(ok, "echo server exited with an error: {out}");
    assert_no_xdp(lab)?;
    last_json(&out)
}

/// A per-queue counter of a report, queue by queue.
fn per_queue(report: &Value, key: &str) -> Vec<u64> {
    report["per_queue"]
        .as_array()
        .map(|qs| qs.iter().filter_map(|q| q[key].as_u64()).collect())
        .unwrap_or_default()
}

/// `hoststack tcp-client` or `udp-client` to `remote` with `extra`; its
/// report, which must say ok.
fn client(lab: &Lab, cmd: &str, remote: &str, extra: &[&str]) -> Result<Value> {
    let mut c = hoststack(lab, cmd, &["--connect", remote]);
    c.args(extra);
    let (ok, out) = Proc::spawn(cmd, c)?.wait(Duration::from_secs(120))?;
    let v = last_json(&out)?;
    ensure!(ok && v["ok"] == true, "{cmd} to {remote}: {v}");
    Ok(v)
}

#[test]
fn sixteen_kernel_connections_spread_over_both_queues_each_echo_4mib() -> Result<()> {
    let lab = lab("sp")?;
    let server = echo_server(&lab, &[])?;
    let host = lab.cfg.host4.addr.to_string();
    let v = peer(&lab, &["many", &host, "7", "16", &(4 * MIB).to_string()])?;
    assert_eq!(v["ok"], true, "{v}");
    let stats = finish(&lab, server)?;
    assert_eq!(stats["tcp_connections"].as_u64(), Some(16), "{stats}");
    assert!(stats["tcp_bytes"].as_u64() >= Some(64 * MIB), "{stats}");
    // Both queues carried connections: the kernel's flow hash spread them.
    let segments = per_queue(&stats, "tcp_segments_in");
    assert_eq!(segments.len(), 2, "{stats}");
    assert!(segments.iter().all(|&n| n > 1000), "{stats}");
    let rx = per_queue(&stats, "rx_frames");
    assert!(rx.iter().all(|&n| n > 1000), "{stats}");
    Ok(())
}

#[test]
fn udp_echo_from_many_source_ports_spreads_over_both_queues() -> Result<()> {
    let lab = lab("um")?;
    let server = echo_server(&lab, &[])?;
    for host in [
        lab.cfg.host4.addr.to_string(),
        lab.cfg.host6.addr.to_string(),
    ] {
        let v = peer(&lab, &["udp-many", &host, "7", "64", "50"])?;
        assert_eq!(v["ok"], true, "{host}: {v}");
        // smoltcp on each worker resolves the kernel's address through the
        // shared table: nothing waits for an answer that landed elsewhere.
        assert_eq!(v["resent"], 0, "{host}: {v}");
    }
    let stats = finish(&lab, server)?;
    assert!(
        stats["udp_datagrams"].as_u64() >= Some(2 * 64 * 50),
        "{stats}"
    );
    let rx = per_queue(&stats, "rx_frames");
    assert!(rx.len() == 2 && rx.iter().all(|&n| n > 500), "{stats}");
    Ok(())
}

#[test]
fn hoststack_connects_to_a_kernel_server_16mib_both_ways_each_on_both_queues() -> Result<()> {
    let lab = lab("co")?;
    let mut server = Proc::spawn("kernel echo server", lab.peer(&["echo-server", "9007"]))?;
    server.wait_for_line("{\"listening\"", Duration::from_secs(10))?;
    let v4 = format!("{}:9007", lab.cfg.peer4.addr);
    let v6 = format!("[{}]:9007", lab.cfg.peer6.addr);
    let bytes = (16 * MIB).to_string();
    // The kernel's replies land wherever its hash puts them.
    for remote in [&v4, &v6] {
        let v = client(
            &lab,
            "tcp-client",
            remote,
            &["--bytes", &bytes, "--connections", "4"],
        )?;
        assert_eq!(v["verified"].as_u64(), Some(64 * MIB), "{v}");
    }
    // Every reply on queue 0: worker 1's connections hear only through the
    // hand-off ring, and still move their 16 MiB each way.
    lab.set_peer_tx_queues(1)?;
    let v = client(
        &lab,
        "tcp-client",
        &v4,
        &["--bytes", &bytes, "--connections", "4"],
    )?;
    assert_eq!(v["verified"].as_u64(), Some(64 * MIB), "{v}");
    let received = per_queue(&v, "handoff_received");
    let sent = per_queue(&v, "handoff_sent");
    assert!(received[1] > 1000 && sent[0] >= received[1], "{v}");
    assert_eq!(per_queue(&v, "handoff_dropped"), vec![0, 0], "{v}");
    assert!(
        per_queue(&v, "rx_frames")[1] < 10,
        "queue 1 got no replies: {v}"
    );
    Ok(())
}

#[test]
fn hoststack_udp_sessions_get_their_datagrams_from_the_other_queue() -> Result<()> {
    let lab = lab("us")?;
    let mut server = Proc::spawn("kernel udp echo", lab.peer(&["udp-echo-server", "9008"]))?;
    server.wait_for_line("{\"listening\"", Duration::from_secs(10))?;
    lab.set_peer_tx_queues(1)?;
    for remote in [
        format!("{}:9008", lab.cfg.peer4.addr),
        format!("[{}]:9008", lab.cfg.peer6.addr),
    ] {
        let v = client(
            &lab,
            "udp-client",
            &remote,
            // Its own deadline before the test's: a stall prints its report.
            &["--count", "300", "--connections", "4", "--timeout", "20"],
        )
        .map_err(|e| {
            // Where the kernel side dropped datagrams, if it did.
            let snmp = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &lab.netns,
                    "cat",
                    "/proc/net/snmp",
                    "/proc/net/snmp6",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp")).collect();
            anyhow::anyhow!("{e}\nthe namespace's UDP counters: {udp:?}")
        })?;
        assert_eq!(v["echoed"].as_u64(), Some(1200), "{v}");
        // Two of the four sessions live on worker 1; all their replies came
        // in on queue 0, and none was lost on the way over. (The client
        // resends what the kernel's echo server dropped: its socket buffer
        // overflows now and then on a busy machine.)
        assert!(per_queue(&v, "handoff_received")[1] >= 600, "{v}");
        assert_eq!(per_queue(&v, "handoff_dropped"), [0, 0], "{v}");
    }
    Ok(())
}

#[test]
fn connects_on_a_sleeping_worker_are_woken_by_hand_offs() -> Result<()> {
    let lab = lab("iw")?;
    let mut server = Proc::spawn("kernel echo server", lab.peer(&["echo-server", "9007"]))?;
    server.wait_for_line("{\"listening\"", Duration::from_secs(10))?;
    lab.set_peer_tx_queues(1)?;
    let v = client(
        &lab,
        "tcp-client",
        &format!("{}:9007", lab.cfg.peer4.addr),
        &[
            "--mode",
            "interrupt",
            "--bytes",
            &(4 * MIB).to_string(),
            "--connections",
            "2",
        ],
    )?;
    assert_eq!(v["verified"].as_u64(), Some(8 * MIB), "{v}");
    assert!(per_queue(&v, "handoff_received")[1] > 100, "{v}");
    Ok(())
}

#[test]
fn serving_one_queue_of_two_is_refused_unless_traffic_is_steered() -> Result<()> {
    let lab = lab("q1")?;
    let out = hoststack(&lab, "echo-server", &["--queues", "1"]).output()?;
    assert!(!out.status.success(), "one queue of two was served");
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("hoststack:"))
        .unwrap_or_default();
    assert!(
        line.contains(&format!(
            "'{}' delivers to 2 receive queues but --queues 1 serves only queue 0",
            lab.host_if
        )) && line.contains("on queue 1 ")
            && line.contains("--traffic-steered"),
        "{err}"
    );
    // Steered for real (the kernel sends on one queue), it runs and serves.
    lab.set_peer_tx_queues(1)?;
    let server = echo_server(&lab, &["--queues", "1", "--traffic-steered"])?;
    let host = lab.cfg.host4.addr.to_string();
    let v = peer(&lab, &["stream", &host, "7", &MIB.to_string()])?;
    assert_eq!(v["ok"], true, "{v}");
    let stats = finish(&lab, server)?;
    assert_eq!(per_queue(&stats, "rx_frames").len(), 1, "{stats}");
    Ok(())
}

/// The daemon's view of each queue (`show interface --json`).
fn queues(d: &Daemon) -> Result<Vec<Value>> {
    Ok(d.show_json("interface")?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn daemon_on_two_queues(tag: &str) -> Result<Daemon> {
    let mut cfg = LabConfig::new(&unique_lab_name(tag));
    cfg.queues = 2;
    Daemon::start_on(cfg, |_| String::new())
}

#[test]
fn flows_that_change_queue_midway_are_handed_to_their_owner() -> Result<()> {
    let d = daemon_on_two_queues("mv")?;
    let echo = d.echo_server()?;
    let host = d.lab.cfg.host4.addr.to_string();
    let mut many = Proc::spawn(
        "kernel clients",
        d.lab
            .peer(&["many", &host, "7", "16", &(16 * MIB).to_string()]),
    )?;
    // Once both queues' workers hold connections, send everything to
    // queue 0: worker 1's flows keep going through the hand-off ring.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let qs = queues(&d)?;
        let held: Vec<u64> = qs
            .iter()
            .map(|q| q["tcp"]["connections"].as_u64().unwrap_or(0))
            .collect();
        if held.len() == 2 && held.iter().all(|&n| n > 0) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "connections never spread: {qs:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.lab.set_peer_tx_queues(1)?;
    many.discard_stdout();
    let (ok, _) = many.wait(Duration::from_secs(180))?;
    ensure!(ok, "a kernel client's echo differed or failed");
    let qs = queues(&d)?;
    assert!(
        qs[1]["handoff"]["received"].as_u64().unwrap_or(0) > 100,
        "{qs:?}"
    );
    assert_eq!(qs[1]["drops"]["handoff"], 0, "{qs:?}");
    // The connections ended: the flow directory empties with them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while queues(&d)?[0]["flows"].as_u64() != Some(0) {
        ensure!(
            Instant::now() < deadline,
            "flows left in the directory: {:?}",
            queues(&d)?
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // show worker and the metrics carry the hand-offs too.
    let ws = d.show_json("worker")?;
    assert!(ws[1]["handoff_received"].as_u64() > Some(100), "{ws}");
    let t = d.show("interface")?;
    assert!(t.contains("hand-off: sent"), "{t}");
    drop(echo);
    Ok(())
}

#[test]
fn the_daemon_stops_and_starts_five_times_on_a_two_queue_lab() -> Result<()> {
    let mut d = daemon_on_two_queues("rs")?;
    let host = d.lab.cfg.host4.addr.to_string();
    for round in 0..5 {
        let qs = queues(&d)?;
        ensure!(qs.len() == 2, "round {round}: {qs:?}");
        let echo = d.echo_server()?;
        let v = peer(&d.lab, &["many", &host, "7", "4", &MIB.to_string()])?;
        ensure!(v["ok"] == true, "round {round}: {v}");
        drop(echo);
        ensure!(
            d.terminate()?,
            "round {round}: the daemon did not stop cleanly"
        );
        assert_no_xdp(&d.lab).with_context(|| format!("round {round}"))?;
        // Straight back up: both queues bind again (the kernel keeps a queue
        // busy for a moment after its socket closed; the bind retries).
        d.restart().with_context(|| format!("round {round}"))?;
    }
    Ok(())
}
