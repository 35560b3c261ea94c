//! The io_uring TAP datapath against the kernel on the TAP's other side:
//! echo over TCP and UDP, IPv4 and IPv6, with the vnet_hdr offloads on and
//! off (super-frames counted each way, or none at all), partial checksums
//! the kernel gets wrong caught, and a two-queue TAP whose queues both
//! carry flows. Every test builds its own lab and removes it, also when it
//! fails. Needs root.

#![forbid(unsafe_code)]

use anyhow::{Context, Result, bail};
use hoststack_tests::{Lab, Medium, last_json, peer, start_echo_server_on};

const MIB: u64 = 1 << 20;

/// Kernel UDP client sending trains with `UDP_SEGMENT` (one `send` of
/// several datagrams, a USO super-frame when the TAP takes them) and
/// checking every datagram comes back whole. Args: host, port, trains.
const UDP_GSO_CLIENT: &str = r#"
import json, os, socket, struct, sys
host, port, trains = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seg, per = 1000, 6
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_UDP, 103, seg)  # UDP_SEGMENT
s.settimeout(2.0)
s.connect((host, port))
ok = lost = 0
for t in range(trains):
    want = [struct.pack("!II", t, k) + os.urandom(seg - 8) for k in range(per)]
    for _ in range(3):
        s.send(b"".join(want))
        left = set(want)
        try:
            while left:
                d = s.recv(65536)
                if d not in left and d not in want:
                    raise SystemExit("train %d: a datagram of %d bytes came back wrong" % (t, len(d)))
                left.discard(d)
        except socket.timeout:
            continue
        ok += 1
        break
    else:
        lost += 1
print(json.dumps({"trains": trains, "echoed": ok, "lost": lost, "ok": ok == trains}))
"#;

/// Sends, from the kernel's side of the TAP, TCP and UDP segments over
/// IPv4 and IPv6 whose checksums are left partial (a packet socket with
/// `PACKET_VNET_HDR` asking for `NEEDS_CSUM`) with a seed that is not their
/// pseudo-header sum. With checksum offload on the TAP hands them over
/// partial, as they are; without, the kernel completes the sum from the
/// wrong seed. Either way the checksum is wrong and must be caught. A TCP
/// connection open across them must come through byte-exact. Args: TAP,
/// hoststack's IPv4 and IPv6 address, the kernel's.
const BAD_PARTIAL_CHECKSUMS: &str = r#"
import json, os, socket, struct, subprocess, sys
ifname, h4, h6, p4, p6 = sys.argv[1:6]
live = socket.create_connection((h4, 7), timeout=10)
def exchange():
    msg = os.urandom(64 << 10)
    live.sendall(msg)
    got = b""
    while len(got) < len(msg):
        d = live.recv(len(msg) - len(got))
        if not d:
            raise SystemExit("the live connection closed")
        got += d
    if got != msg:
        raise SystemExit("the live connection's echo came back different")
exchange()
def mac_of(ip):
    out = subprocess.run(["ip", "neigh", "show", ip, "dev", ifname], capture_output=True, text=True).stdout.split()
    if "lladdr" not in out:
        raise SystemExit("no neighbour entry for %s: %s" % (ip, out))
    return bytes.fromhex(out[out.index("lladdr") + 1].replace(":", ""))
def fold(b):
    if len(b) % 2:
        b += b"\0"
    c = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while c >> 16:
        c = (c & 0xffff) + (c >> 16)
    return c
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.setsockopt(263, 15, 1)  # SOL_PACKET, PACKET_VNET_HDR
s.bind((ifname, 0))
src_mac = s.getsockname()[4]
sent = 0
for v6 in (False, True):
    dst = mac_of(h6 if v6 else h4)
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    sa, da = socket.inet_pton(fam, p6 if v6 else p4), socket.inet_pton(fam, h6 if v6 else h4)
    for proto in (6, 17):
        for i in range(3):
            if proto == 6:
                l4 = struct.pack("!HHIIBBHHH", 41000 + i, 7, 1000 + i, 0, 5 << 4, 0x02, 65535, 0, 0)
                field = 16
            else:
                body = b"a bad partial checksum"
                l4 = struct.pack("!HHHH", 41000 + i, 7, 8 + len(body), 0) + body
                field = 6
            if v6:
                pseudo = sa + da + struct.pack("!IxxxB", len(l4), proto)
                l3 = struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + sa + da
                eth_type = 0x86dd
            else:
                pseudo = sa + da + struct.pack("!xBH", proto, len(l4))
                h = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), 7 + i, 0, 64, proto, 0) + sa + da
                l3 = h[:10] + struct.pack("!H", ~fold(h) & 0xffff) + h[12:]
                eth_type = 0x0800
            # The seed a sender leaves for the device, off by a few bits.
            seed = fold(pseudo) ^ 0x0f0f
            l4 = l4[:field] + struct.pack("!H", seed) + l4[field + 2:]
            start = 14 + len(l3)
            vnet = struct.pack("<BBHHHH", 1, 0, 0, 0, start, field)  # NEEDS_CSUM
            s.send(vnet + dst + src_mac + struct.pack("!H", eth_type) + l3 + l4)
            sent += 1
exchange()
live.close()
print(json.dumps({"sent": sent, "ok": True}))
"#;

fn python(lab: &Lab, script: &str, args: &[&str]) -> Result<serde_json::Value> {
    let out = lab
        .command("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "python3 in {} failed: {} {}",
            lab.netns,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    last_json(&String::from_utf8_lossy(&out.stdout))
}

/// What the kernel's end of the TAP offers (`ethtool -k`), for messages.
fn kernel_offloads(lab: &Lab) -> String {
    lab.command("ethtool")
        .args(["-k", &lab.peer_if])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains("segmentation") || l.contains("checksumming"))
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

fn u(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key].as_u64().unwrap_or(0)
}

/// TCP and UDP echo over IPv4 and IPv6 on a one-queue TAP with `offload`,
/// byte-exact, with bad partial checksums sent from the kernel's side in
/// the middle of a connection; returns the echo server's final report and
/// the kernel side's offloads.
fn echo_both_families_with_offloads(offload: &'static str) -> Result<(serde_json::Value, String)> {
    let medium = Medium::Tap { offload, queues: 1 };
    let lab = medium.lab("of")?;
    let server = start_echo_server_on(medium, &lab, &[])?;
    let (h4, h6) = (
        lab.cfg.host4.addr.to_string(),
        lab.cfg.host6.addr.to_string(),
    );
    for host in [&h4, &h6] {
        let v = peer(&lab, &["stream", host, "7", &(8 * MIB).to_string()])?;
        assert_eq!(v["ok"], true, "{host}: {v}");
        let v = peer(&lab, &["udp", host, "7", "120"])?;
        assert_eq!(v["ok"], true, "{host}: {v}");
        let v = python(&lab, UDP_GSO_CLIENT, &[host, "7", "40"])?;
        assert_eq!(v["ok"], true, "{host}: {v}");
    }
    // The bad checksums are dropped; a connection open meanwhile goes on.
    let (p4, p6) = (
        lab.cfg.peer4.addr.to_string(),
        lab.cfg.peer6.addr.to_string(),
    );
    let bad = python(
        &lab,
        BAD_PARTIAL_CHECKSUMS,
        &[&lab.peer_if, &h4, &h6, &p4, &p6],
    )?;
    assert_eq!(bad["sent"].as_u64(), Some(12), "{bad}");
    // After them, new connections and datagrams too.
    let v = peer(&lab, &["stream", &h4, "7", &MIB.to_string()])?;
    assert_eq!(v["ok"], true, "{v}");
    let v = peer(&lab, &["udp", &h6, "7", "30"])?;
    assert_eq!(v["ok"], true, "{v}");
    let (ok, out) = server.terminate()?;
    assert!(ok, "echo server exited with an error: {out}");
    let stats = last_json(&out)?;
    let kernel = kernel_offloads(&lab);
    eprintln!(
        "offload {offload}: kernel side [{kernel}]; rx_gso_frames {} rx_gso_segments {} tx_gso_frames {} tx_gso_segments {} rx_gso_split {} rx_csum_partial {} rx_bad_checksum {} rx_bad_offload {}",
        u(&stats, "rx_gso_frames"),
        u(&stats, "rx_gso_segments"),
        u(&stats, "tx_gso_frames"),
        u(&stats, "tx_gso_segments"),
        u(&stats, "rx_gso_split"),
        u(&stats, "rx_csum_partial"),
        u(&stats, "rx_bad_checksum"),
        u(&stats, "rx_bad_offload"),
    );
    assert!(u(&stats, "tcp_bytes") >= 2 * 8 * MIB + MIB, "{stats}");
    // Every bad checksum caught, and nothing else refused.
    assert!(u(&stats, "rx_bad_checksum") >= 12, "{stats}");
    assert_eq!(u(&stats, "rx_malformed"), 0, "{stats}");
    assert_eq!(u(&stats, "rx_bad_offload"), 0, "{stats}");
    Ok((stats, kernel))
}

#[test]
fn tap_echo_with_offloads_on_takes_and_sends_super_frames_and_catches_bad_partial_checksums()
-> Result<()> {
    let (stats, kernel) = echo_both_families_with_offloads("auto")?;
    // The kernel's side of the TAP segments nothing itself: it hands over
    // super-frames.
    assert!(kernel.contains("tcp-segmentation-offload: on"), "{kernel}");
    for key in [
        "rx_gso_frames",
        "rx_gso_segments",
        "tx_gso_frames",
        "tx_gso_segments",
        "rx_gso_split",
        "rx_csum_partial",
        "tx_csum_offloaded",
    ] {
        assert!(u(&stats, key) > 0, "{key} did not move: {stats}");
    }
    // A super-frame stands for more than one wire segment.
    assert!(u(&stats, "rx_gso_segments") > u(&stats, "rx_gso_frames"));
    assert!(u(&stats, "tx_gso_segments") > u(&stats, "tx_gso_frames"));
    Ok(())
}

#[test]
fn tap_echo_with_offloads_off_sees_no_super_frames_and_catches_bad_checksums() -> Result<()> {
    let (stats, kernel) = echo_both_families_with_offloads("off")?;
    assert!(kernel.contains("tcp-segmentation-offload: off"), "{kernel}");
    for key in [
        "rx_gso_frames",
        "tx_gso_frames",
        "rx_gso_split",
        "rx_csum_partial",
        "tx_csum_offloaded",
    ] {
        assert_eq!(u(&stats, key), 0, "{key} moved without offloads: {stats}");
    }
    Ok(())
}

#[test]
fn tap_echo_with_checksum_offload_only_gets_partial_checksums_but_no_super_frames() -> Result<()> {
    let (stats, _) = echo_both_families_with_offloads("csum")?;
    assert!(u(&stats, "rx_csum_partial") > 0, "{stats}");
    assert!(u(&stats, "tx_csum_offloaded") > 0, "{stats}");
    for key in ["rx_gso_frames", "tx_gso_frames", "rx_gso_split"] {
        assert_eq!(u(&stats, key), 0, "{key} moved without TSO/USO: {stats}");
    }
    Ok(())
}

#[test]
fn a_two_queue_tap_carries_flows_on_both_queues_byte_exact() -> Result<()> {
    let medium = Medium::Tap {
        offload: "auto",
        queues: 2,
    };
    let lab = medium.lab("q2")?;
    let server = start_echo_server_on(medium, &lab, &[])?;
    let (h4, h6) = (
        lab.cfg.host4.addr.to_string(),
        lab.cfg.host6.addr.to_string(),
    );
    let v = peer(&lab, &["many", &h4, "7", "16", &MIB.to_string()])?;
    assert_eq!(v["ok"], true, "{v}");
    let v = peer(&lab, &["many", &h6, "7", "8", &MIB.to_string()])?;
    assert_eq!(v["ok"], true, "{v}");
    let v = peer(&lab, &["udp-many", &h4, "7", "16", "40"])?;
    assert_eq!(v["ok"], true, "{v}");
    let (ok, out) = server.terminate()?;
    assert!(ok, "echo server exited with an error: {out}");
    let stats = last_json(&out)?;
    let queues = stats["per_queue"].as_array().context("per_queue")?;
    assert_eq!(queues.len(), 2, "{stats}");
    eprintln!("two-queue TAP: {}", stats["per_queue"]);
    for q in queues {
        for key in ["rx_frames", "tx_frames", "rx_gso_frames"] {
            assert!(
                u(q, key) > 0,
                "queue {}: {key} did not move: {stats}",
                q["queue"]
            );
        }
    }
    assert_eq!(u(&stats, "tcp_connections"), 24, "{stats}");
    Ok(())
}
