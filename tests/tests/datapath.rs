//! The datapath against the real Linux stack: hoststack on one end of a
//! veth pair (AF_XDP) or a TAP (io_uring), kernel sockets in a network
//! namespace on the other. Every test builds its own lab and removes it,
//! also when it fails. Needs root.

#![forbid(unsafe_code)]

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use hoststack_tests::{
    Lab, LabConfig, Medium, Proc, TCP_ENGINE_ENV, assert_no_xdp, hoststack_bin, last_json,
    on_veth_and_tap, peer, require_root, start_echo_server, start_echo_server_on, unique_lab_name,
};

const MIB: u64 = 1 << 20;

fn lab(tag: &str) -> Result<Lab> {
    require_root();
    Ok(Lab::up(LabConfig::new(&unique_lab_name(tag)))?)
}

/// Stops the server and checks it saw no malformed input and left no
/// program on the interface.
fn finish(lab: &Lab, server: Proc) -> Result<serde_json::Value> {
    let (ok, out) = server.terminate()?;
    assert!(ok, "echo server exited with an error: {out}");
    let stats = last_json(&out)?;
    if !lab.cfg.tap {
        assert_no_xdp(lab)?;
    }
    // The TCP engine asked for is the one that ran: hoststack's reports
    // its counters, smoltcp's has none.
    let engine_ran = stats["tcp_engine"]
        .as_object()
        .is_some_and(|m| !m.is_empty());
    let smoltcp = std::env::var(TCP_ENGINE_ENV).is_ok_and(|e| e == "smoltcp");
    assert_eq!(engine_ran, !smoltcp, "{stats}");
    Ok(stats)
}

fn stream_64mib(medium: Medium, lab: &Lab, server_args: &[&str]) -> Result<()> {
    let server = start_echo_server_on(medium, lab, server_args)?;
    let host = lab.cfg.host4.addr.to_string();
    let v = peer(lab, &["stream", &host, "7", &(64 * MIB).to_string()])?;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["received"].as_u64(), Some(64 * MIB));
    let stats = finish(lab, server)?;
    assert!(stats["tcp_bytes"].as_u64() >= Some(64 * MIB), "{stats}");
    Ok(())
}

#[test]
fn kernel_client_streams_64mib_through_tcp_echo_native_mode_default_offloads() -> Result<()> {
    let lab = lab("nt")?;
    stream_64mib(Medium::Veth, &lab, &["--xdp-mode", "native"])
}

#[test]
fn kernel_client_streams_64mib_through_tcp_echo_generic_mode_peer_tso_off() -> Result<()> {
    require_root();
    let mut cfg = LabConfig::new(&unique_lab_name("ge"));
    cfg.peer_tso_off = true;
    let lab = Lab::up(cfg)?;
    stream_64mib(Medium::Veth, &lab, &["--xdp-mode", "generic"])
}

#[test]
fn kernel_client_streams_64mib_through_tcp_echo_on_a_tap() -> Result<()> {
    let lab = Medium::TAP.lab("tp")?;
    stream_64mib(Medium::TAP, &lab, &[])
}

on_veth_and_tap!(hoststack_client_sends_16mib_to_kernel_echo_server_and_verifies_it);

fn hoststack_client_sends_16mib_to_kernel_echo_server_and_verifies_it(
    medium: Medium,
) -> Result<()> {
    let lab = medium.lab("out")?;
    let mut server = Proc::spawn("kernel echo server", lab.peer(&["echo-server", "9007"]))?;
    server.wait_for_line("{\"listening\"", Duration::from_secs(10))?;
    let mut cmd = Command::new(hoststack_bin());
    cmd.args([
        "tcp-client",
        "--interface",
        &lab.host_if,
        "--address",
        &lab.cfg.host4.to_string(),
    ]);
    cmd.args(medium.stack_args(&lab));
    cmd.args([
        "--connect",
        &format!("{}:9007", lab.cfg.peer4.addr),
        "--bytes",
        &(16 * MIB).to_string(),
    ]);
    let (ok, out) = Proc::spawn("hoststack tcp-client", cmd)?.wait(Duration::from_secs(120))?;
    let v = last_json(&out)?;
    assert!(ok, "{v}");
    assert_eq!(v["verified"].as_u64(), Some(16 * MIB), "{v}");
    Ok(())
}

#[test]
fn two_hundred_concurrent_kernel_clients_spread_round_robin_over_two_app_workers() -> Result<()> {
    let lab = lab("cc")?;
    let server = start_echo_server(&lab, &["--app-workers", "2", "--udp-port", "0"])?;
    let host = lab.cfg.host4.addr.to_string();
    let v = peer(&lab, &["many", &host, "7", "200", "65536"])?;
    assert_eq!(v["ok"], true, "{v}");
    let stats = finish(&lab, server)?;
    assert_eq!(stats["tcp_connections"].as_u64(), Some(200), "{stats}");
    // Every connection went through listener -> session -> app worker,
    // alternating between the two workers.
    let per_worker: Vec<u64> = stats["accepted_per_app_worker"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_u64())
        .collect();
    assert_eq!(per_worker, vec![100, 100], "{stats}");
    Ok(())
}

on_veth_and_tap!(udp_echo_keeps_datagram_boundaries_over_ipv4_and_ipv6);

fn udp_echo_keeps_datagram_boundaries_over_ipv4_and_ipv6(medium: Medium) -> Result<()> {
    let lab = medium.lab("ud")?;
    let server = start_echo_server_on(medium, &lab, &[])?;
    for host in [
        lab.cfg.host4.addr.to_string(),
        lab.cfg.host6.addr.to_string(),
    ] {
        let v = peer(&lab, &["udp", &host, "7", "500"])?;
        assert_eq!(v["ok"], true, "{host}: {v}");
    }
    finish(&lab, server)?;
    Ok(())
}

#[test]
fn hoststack_udp_client_exchanges_datagrams_with_kernel_udp_echo() -> Result<()> {
    let lab = lab("uc")?;
    let mut server = Proc::spawn("kernel udp echo", lab.peer(&["udp-echo-server", "9008"]))?;
    server.wait_for_line("{\"listening\"", Duration::from_secs(10))?;
    for (addr, remote) in [
        (lab.cfg.host4, format!("{}:9008", lab.cfg.peer4.addr)),
        (lab.cfg.host6, format!("[{}]:9008", lab.cfg.peer6.addr)),
    ] {
        let mut cmd = Command::new(hoststack_bin());
        cmd.args([
            "udp-client",
            "--interface",
            &lab.host_if,
            "--address",
            &addr.to_string(),
        ]);
        // Its own deadline before the test's: a stall prints its report.
        cmd.args(["--connect", &remote, "--count", "600", "--timeout", "30"]);
        let (ok, out) = Proc::spawn("hoststack udp-client", cmd)?.wait(Duration::from_secs(60))?;
        let v = last_json(&out)?;
        assert!(ok, "{remote}: {v}");
        assert_eq!(v["echoed"].as_u64(), Some(600), "{v}");
    }
    Ok(())
}

#[test]
fn two_hundred_thousand_64_byte_round_trips_on_one_connection() -> Result<()> {
    let lab = lab("rr")?;
    let server = start_echo_server(&lab, &[])?;
    let host = lab.cfg.host4.addr.to_string();
    let v = peer(&lab, &["rr", &host, "7", "200000", "64"])?;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["count"].as_u64(), Some(200_000));
    finish(&lab, server)?;
    Ok(())
}

#[test]
fn missing_interface_is_a_one_line_error_naming_it() -> Result<()> {
    let out = Command::new(hoststack_bin())
        .args([
            "echo-server",
            "--interface",
            "hs-nonexist0",
            "--address",
            "10.77.0.1/24",
        ])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("hoststack:"))
        .unwrap_or_default();
    assert!(
        line.contains("hs-nonexist0") && line.contains("not found"),
        "{err}"
    );
    Ok(())
}

#[test]
fn unprivileged_user_gets_a_one_line_permission_error() -> Result<()> {
    let lab = lab("np")?;
    let bin = hoststack_bin();
    // The binary must be reachable by `nobody`; the repository may not be.
    let copy = std::env::temp_dir().join(format!("hoststack-np-{}", std::process::id()));
    std::fs::copy(&bin, &copy)?;
    let out = {
        use std::os::unix::process::CommandExt;
        Command::new(&copy)
            .args([
                "echo-server",
                "--interface",
                &lab.host_if,
                "--address",
                "10.77.0.1/24",
            ])
            .uid(65534)
            .gid(65534)
            .output()?
    };
    let _ = std::fs::remove_file(&copy);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs root"), "{err}");
    Ok(())
}

#[test]
fn a_second_stack_on_a_bound_queue_says_the_queue_is_busy() -> Result<()> {
    let lab = lab("bz")?;
    let first = start_echo_server(&lab, &[])?;
    let mut cmd = Command::new(hoststack_bin());
    cmd.args([
        "echo-server",
        "--interface",
        &lab.host_if,
        "--address",
        &lab.cfg.host4.to_string(),
    ]);
    let out = cmd.output()?;
    assert!(
        !out.status.success(),
        "the second stack started on a bound queue"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("busy") || err.contains("in use"), "{err}");
    finish(&lab, first)?;
    Ok(())
}

#[test]
fn garbage_frames_from_the_wire_are_dropped_and_counted_and_tcp_still_works() -> Result<()> {
    let lab = lab("gb")?;
    let server = start_echo_server(&lab, &[])?;
    let host_mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", lab.host_if))?;
    // Raw frames from the kernel side: truncated headers, a bad TCP
    // checksum, random bytes, a lying IPv4 length.
    let script = format!(
        r#"
import os, socket, struct
dst = bytes.fromhex("{mac}".replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("{ifname}", 0))
src = s.getsockname()[4]
eth = dst + src
def ip4(payload, proto=6, total=None):
    total = total if total is not None else 20 + len(payload)
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, proto, 0, bytes([10,77,0,2]), bytes([10,77,0,1]))
    c = sum(struct.unpack("!10H", h)); c = (c & 0xffff) + (c >> 16); c = (c & 0xffff) + (c >> 16)
    return h[:10] + struct.pack("!H", ~c & 0xffff) + h[12:] + payload
tcp = struct.pack("!HHIIBBHHH", 40000, 7, 1, 0, 5 << 4, 0x02, 65535, 0xdead, 0)
frames = [eth + b"\x08\x00", eth + b"\x08\x00" + b"\x45\x00", eth + b"\x08\x00" + ip4(tcp),
          eth + b"\x08\x00" + ip4(tcp, total=1400), eth + b"\x86\xdd" + b"\x60" + os.urandom(10)]
for i in range(200):
    frames.append(eth + b"\x08\x00" + os.urandom(40 + i))
for f in frames:
    s.send(f.ljust(14, b"\0"))
print('{{"sent": %d, "ok": true}}' % len(frames))
"#,
        mac = host_mac.trim(),
        ifname = lab.peer_if
    );
    let out = lab.command("python3").arg("-c").arg(&script).output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = lab.cfg.host4.addr.to_string();
    let v = peer(&lab, &["stream", &host, "7", &MIB.to_string()])?;
    assert_eq!(v["ok"], true, "{v}");
    let stats = finish(&lab, server)?;
    let dropped = stats["rx_malformed"].as_u64().unwrap_or(0)
        + stats["rx_bad_checksum"].as_u64().unwrap_or(0);
    assert!(dropped >= 3, "bad frames were not counted: {stats}");
    Ok(())
}
