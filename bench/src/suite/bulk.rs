//! One TCP stream into the server, and the AF_XDP medium's own ceiling
//! measured in the same run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use anyhow::{Result, bail};
use hoststack_lab::Lab;

use super::pktgen_row::{UDP_PORT, host_receiver, namespace_sender};
use super::sides::{self, BULK_PORT, Config, Mode, Service, Side};
use super::{Outcome, Row, Settings, ip4, progress};
use crate::env;
use crate::kernel;
use crate::stats::Spread;

fn bulk_client(s: &Settings, lab: &Lab) -> Result<kernel::BulkResult> {
    let (load_core, _) = s.cores();
    let (host, _) = ip4(lab);
    let (d, stop) = (s.bulk_duration, s.interrupted.clone());
    let t = kernel::spawn_in("bulk-client", Some(&lab.netns), load_core, move || {
        kernel::tcp_bulk(SocketAddr::new(host, BULK_PORT), d, &stop)
    })?;
    kernel::join(t)
}

/// The medium: full-size frames from the namespace into an AF_XDP
/// receiver on the host end (the path TCP data takes to hoststack), sent
/// by pktgen, then by the kernel's cheapest sender (UDP GSO), since
/// copy-mode AF_XDP transmit may be the slower end. Gbps of IP packets.
fn ceilings(s: &Settings, run: usize) -> Result<(f64, f64)> {
    const B: &str = "tcp-bulk";
    let (load_core, test_core) = s.cores();
    let mtu = s.mtu.unwrap_or(1500);
    let lab = s.lab()?;
    let rx = host_receiver(&lab, test_core)?;
    let matched = rx.matched.clone();
    let sender = namespace_sender(&lab, s, mtu + 18)?;
    let rate = s.window(|| Ok(matched.load(Relaxed)));
    sender.stop()?;
    let pktgen = rate? * mtu as f64 * 8.0 / 1e9;
    progress(
        B,
        run,
        s.runs,
        "medium ceiling, pktgen -> AF_XDP",
        &format!("{pktgen:.2} Gbps of IP packets"),
    );
    // The kernel cannot resolve the host end while AF_XDP takes every
    // frame: give it the neighbour entry.
    let mac = env::mac_of(None, &lab.host_if)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    env::run(lab.command("ip").args([
        "neigh",
        "replace",
        &lab.cfg.host4.addr.to_string(),
        "lladdr",
        &mac,
        "dev",
        &lab.peer_if,
    ]))?;
    let (host, _) = ip4(&lab);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (st, se) = (stop.clone(), sent.clone());
    let t = kernel::spawn_in("gso-sender", Some(&lab.netns), load_core, move || {
        kernel::udp_gso_sender(SocketAddr::new(host, UDP_PORT), mtu - 28, 44, &st, &se)
    })?;
    let rate = s.window(|| Ok(matched.load(Relaxed)));
    stop.store(true, Relaxed);
    kernel::join(t)?;
    rx.stop()?;
    let gso = rate? * mtu as f64 * 8.0 / 1e9;
    progress(
        B,
        run,
        s.runs,
        "medium ceiling, kernel UDP GSO -> AF_XDP",
        &format!("{gso:.2} Gbps of IP packets"),
    );
    Ok((pktgen, gso))
}

pub(super) fn tcp_bulk(s: &Settings) -> Result<Outcome> {
    const B: &str = "tcp-bulk";
    let (mut pktgen, mut gso) = (Vec::new(), Vec::new());
    for run in 1..=s.runs {
        s.check()?;
        let (p, g) = s.guarded(B, &format!("run {run} of the medium ceiling"), || {
            ceilings(s, run)
        })?;
        pktgen.push(p);
        gso.push(g);
    }
    let off = |side| Config::plain(side).offloads_off();
    let configs = [
        Config::plain(Side::External(Mode::Poll)),
        Config::plain(Side::Builtin(Mode::Poll)),
        Config::tap(Side::External(Mode::Poll)),
        Config::tap(Side::Builtin(Mode::Poll)),
        Config::tap(Side::External(Mode::Poll)).offloads_off(),
        Config::plain(Side::Kernel),
        Config::plain(Side::KernelBusy),
        off(Side::Kernel),
        off(Side::KernelBusy),
    ];
    let results = sides::alternate(
        s,
        B,
        &configs,
        Service::TcpDiscard,
        |s, lab, _| bulk_client(s, lab),
        |r| format!("{:.2} Gbps", r.gbps()),
    )?;
    for (c, runs) in &results {
        for (r, json) in runs {
            let got = json
                .as_ref()
                .and_then(|j| j.get("tcp_bytes").or_else(|| j.get("bytes")))
                .and_then(serde_json::Value::as_u64);
            if let Some(got) = got {
                if got < r.bytes {
                    bail!(
                        "{} counted {got} bytes of the {} the client sent",
                        c.label(),
                        r.bytes
                    );
                }
            }
        }
    }
    let hs = |c: &Config| !c.side.is_kernel();
    // The TAP's lines go beside the kernel with the same offloads; the
    // AF_XDP lines (no XSK frame carries a super-frame) beside both.
    let beside_on = |c: &Config| !c.offloads_off;
    let beside_off = |c: &Config| c.offloads_off || (hs(c) && !c.tap);
    let mtu = s.mtu.unwrap_or(1500);
    let (p, g) = (Spread::of(&pktgen), Spread::of(&gso));
    let h: Vec<f64> = results[0].1.iter().map(|(r, _)| r.gbps()).collect();
    let h = Spread::of(&h).median;
    let pct = |x: f64, of: f64| 100.0 * x / of.max(f64::MIN_POSITIVE);
    Ok(Outcome {
        rows: vec![
            Row::of(
                B,
                "TCP bulk, 1 stream, goodput; kernel with the veth's default offloads",
                "Gbps",
                true,
                &results,
                beside_on,
                kernel::BulkResult::gbps,
            )
            .labelled("tcp-bulk vs kernel offloads on"),
            Row::of(
                B,
                "TCP bulk, 1 stream, goodput; kernel with TSO/GSO/GRO off",
                "Gbps",
                true,
                &results,
                beside_off,
                kernel::BulkResult::gbps,
            )
            .labelled("tcp-bulk vs kernel offloads off"),
        ],
        notes: vec![format!(
            "tcp-bulk: medium ceiling (MTU {mtu}, {}-byte frames from the namespace into AF_XDP copy mode on the host end, Gbps of IP packets): {:.2} ({:.2}-{:.2}) with pktgen sending, {:.2} ({:.2}-{:.2}) with a kernel UDP GSO sender; the external app's TCP goodput is {:.0} % and {:.0} % of them",
            mtu + 14,
            p.median,
            p.min,
            p.max,
            g.median,
            g.min,
            g.max,
            pct(h, p.median),
            pct(h, g.median),
        )],
    })
}
