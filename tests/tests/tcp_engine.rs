//! hoststack's own TCP engine against the Linux kernel across a veth pair:
//! byte-exact echoes through nftables loss each way, a fresh client served
//! during a spoofed SYN flood, IPv6. Each test builds its own lab and
//! removes it, pass or fail. Needs root, nftables and hping3 (ci/setup).

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hoststack_tests::{
    Lab, LabConfig, Proc, add_nft_loss_per_mille, last_json, peer, require_root, start_echo_server,
    unique_lab_name,
};

/// Two kernel connections each echo 4 MiB through hoststack's echo server
/// while nftables drops `per_mille` ‰ of the packets each way; returns the
/// server's final report.
fn echo_through_loss(tag: &str, per_mille: u32) -> Result<serde_json::Value> {
    require_root();
    let lab = Lab::up(LabConfig::new(&unique_lab_name(tag)))?;
    add_nft_loss_per_mille(&lab, per_mille)?;
    let pct = f64::from(per_mille) / 10.0;
    let server = start_echo_server(&lab, &[])?;
    let host = lab.cfg.host4.addr.to_string();
    let t = Instant::now();
    let v = peer(&lab, &["many", &host, "7", "2", &(4u64 << 20).to_string()])?;
    assert_eq!(v["ok"], true, "{pct} % loss: {v}");
    let secs = t.elapsed().as_secs_f64();
    let (ok, out) = server.terminate()?;
    assert!(ok, "{out}");
    let report = last_json(&out)?;
    let tcp = &report["tcp_engine"];
    eprintln!(
        "{pct} % loss each way: 2 x 4 MiB echoed in {secs:.2} s; retransmits {}, fast recoveries {}, TLP {}, RTOs {}",
        tcp["retransmits"], tcp["fast_recoveries"], tcp["tlp_probes"], tcp["rto_timeouts"]
    );
    // The loss happened and the engine repaired it.
    assert!(tcp["retransmits"].as_u64() > Some(0), "{report}");
    Ok(report)
}

#[test]
fn two_connections_echo_4mib_byte_exact_through_half_a_percent_loss_each_way() -> Result<()> {
    echo_through_loss("l0", 5).map(|_| ())
}

#[test]
fn two_connections_echo_4mib_byte_exact_through_2_percent_loss_each_way() -> Result<()> {
    echo_through_loss("l2", 20).map(|_| ())
}

#[test]
fn two_connections_echo_4mib_byte_exact_through_5_percent_loss_each_way() -> Result<()> {
    let r = echo_through_loss("l5", 50)?;
    // Tail and burst losses at 5 % are repaired by SACK recovery and
    // probes, not by waiting out retransmission timeouts one by one.
    let tcp = &r["tcp_engine"];
    assert!(
        tcp["fast_recoveries"].as_u64().unwrap_or(0) + tcp["tlp_probes"].as_u64().unwrap_or(0)
            > tcp["rto_timeouts"].as_u64().unwrap_or(0),
        "{r}"
    );
    Ok(())
}

/// Resident memory of process `pid`, bytes.
fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

#[test]
fn a_fresh_client_echoes_1mib_within_a_second_during_a_spoofed_syn_flood() -> Result<()> {
    require_root();
    let lab = Lab::up(LabConfig::new(&unique_lab_name("sf")))?;
    let server = start_echo_server(&lab, &[])?;
    let pid = server.pid().context("server pid")?;
    let host = lab.cfg.host4.addr.to_string();
    let before = rss(pid)?;
    let flood = Proc::spawn("hping3", {
        let mut c = lab.command("hping3");
        c.args(["-S", "--flood", "--rand-source", "-p", "7", "-q", &host])
            .stderr(std::process::Stdio::null());
        c
    })?;
    // Let the SYN queue fill and cookies take over.
    std::thread::sleep(Duration::from_secs(2));
    let v = peer(&lab, &["stream", &host, "7", &(1u64 << 20).to_string()]);
    let during = rss(pid)?;
    // `ip netns exec` became hping3 itself.
    flood.kill9();
    let v = v?;
    // The client's own clock, from connect() to the last echoed byte: the
    // python start-up in the namespace is not the stack's.
    let took = Duration::from_secs_f64(
        v["connect_seconds"].as_f64().unwrap_or(1e6) + v["seconds"].as_f64().unwrap_or(1e6),
    );
    let (ok, out) = server.terminate()?;
    assert!(ok, "{out}");
    let report = last_json(&out)?;
    let tcp = &report["tcp_engine"];
    eprintln!(
        "during the flood: 1 MiB echoed in {:.3} s; SYN cookies sent {}, accepted {}, half-open timeouts {}; RSS {} -> {} MB",
        took.as_secs_f64(),
        tcp["syn_cookies_sent"],
        tcp["syn_cookies_accepted"],
        tcp["half_open_timeouts"],
        before >> 20,
        during >> 20
    );
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        took < Duration::from_secs(1),
        "took {took:?} during the flood"
    );
    assert!(
        tcp["syn_cookies_sent"].as_u64() > Some(0),
        "the flood never filled the SYN queue: {report}"
    );
    assert!(
        during < before + (64 << 20),
        "memory grew from {before} to {during} bytes during the flood"
    );
    Ok(())
}

#[test]
fn a_kernel_client_echoes_16mib_over_ipv6_byte_exact() -> Result<()> {
    require_root();
    let lab = Lab::up(LabConfig::new(&unique_lab_name("v6")))?;
    let _server = start_echo_server(&lab, &[])?;
    let host = lab.cfg.host6.addr.to_string();
    let v = peer(&lab, &["stream", &host, "7", &(16u64 << 20).to_string()])?;
    assert_eq!(v["ok"], true, "{v}");
    Ok(())
}
