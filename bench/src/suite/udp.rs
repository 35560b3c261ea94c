//! UDP through each side's stack and an app: request/response, and the
//! echo rate with the client sending flat out (or paced, for the CPU row).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use anyhow::Result;
use hoststack_lab::Lab;

use super::rr::{rr_rows, show_rr};
use super::sides::{self, ECHO_PORT, Mode, Server, Service, Side};
use super::{Outcome, Row, Settings, ip4};
use crate::cpu::{ServerCpu, ServerMeter};
use crate::env;
use crate::kernel::{self, RrResult};
use crate::stats::Spread;

/// The sides of the UDP rows: both hoststack apps, both kernel variants.
const UDP_SIDES: [Side; 4] = [
    Side::Builtin(Mode::Poll),
    Side::External(Mode::Poll),
    Side::Kernel,
    Side::KernelBusy,
];

/// 64-byte frames: 60 bytes before the FCS, 42 of them headers.
const PAYLOAD_64: usize = 18;

fn udp_rr_client(s: &Settings, lab: &Lab) -> Result<RrResult> {
    let (load_core, _) = s.cores();
    let (host, _) = ip4(lab);
    let (w, d, stop) = (s.warmup, s.duration, s.interrupted.clone());
    let t = kernel::spawn_in("udp-rr-client", Some(&lab.netns), load_core, move || {
        kernel::udp_rr(SocketAddr::new(host, ECHO_PORT), 64, w, d, &stop)
    })?;
    kernel::join(t)
}

pub(super) fn udp_rr_64(s: &Settings) -> Result<Outcome> {
    const B: &str = "udp-rr-64";
    let results = sides::alternate(
        s,
        B,
        &sides::plain_and_tap(&UDP_SIDES),
        Service::UdpEcho,
        |s, lab, _| udp_rr_client(s, lab),
        show_rr,
    )?;
    let lost = sides::total(&results, |r| r.lost);
    let mut notes = Vec::new();
    if lost > 0 {
        notes.push(format!(
            "udp-rr-64: {lost} datagram(s) got no echo within 200 ms over all runs (each counted lost and sent again)"
        ));
    }
    Ok(Outcome {
        rows: rr_rows(B, "UDP 64-byte", &results),
        notes,
    })
}

/// A window of the UDP echo flood.
#[derive(Debug, Clone, Copy)]
pub(super) struct Flood {
    /// Datagrams/s the client's kernel accepted.
    pub(super) offered: f64,
    /// Echoes/s that reached the peer interface.
    pub(super) echoed: f64,
    /// The server's CPU over the window, when metered.
    pub(super) cpu: Option<ServerCpu>,
}

impl Flood {
    /// Echoes per server CPU-second.
    pub(super) fn per_cpu_second(&self) -> f64 {
        self.cpu
            .map_or(0.0, |c| self.echoed * c.wall_s / c.total_s().max(1e-9))
    }
}

/// Drops the echoes at the peer's ingress, so the client's socket never
/// costs anything: they are counted at the interface.
pub(super) fn drop_echoes(lab: &Lab) -> Result<()> {
    env::peer_ingress_drop(lab, &format!("udp sport {ECHO_PORT}"))
}

/// Sends 64-byte datagrams to the server (paced to `rate`, or flat out),
/// warms up, then counts echoes at the peer over the window, metering the
/// server's CPU when `meter`.
pub(super) fn flood(
    s: &Settings,
    lab: &Lab,
    server: &Server,
    rate: Option<f64>,
    meter: bool,
) -> Result<Flood> {
    let (load_core, test_core) = s.cores();
    let (host, _) = ip4(lab);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (st, se) = (stop.clone(), sent.clone());
    let dst = SocketAddr::new(host, ECHO_PORT);
    let t = kernel::spawn_in("udp-flood", Some(&lab.netns), load_core, move || {
        kernel::udp_sendmmsg(dst, PAYLOAD_64, 64, rate, &st, &se)
    })?;
    let measured = (|| {
        let echoes = || env::link_stats(Some(&lab.netns), &lab.peer_if).map(|l| l.rx_packets);
        s.sleep(s.warmup)?;
        let m = meter
            .then(|| ServerMeter::start(&server.pids(), test_core))
            .transpose()?;
        let (e0, s0, t0) = (echoes()?, sent.load(Relaxed), Instant::now());
        s.sleep(s.duration)?;
        let (e1, s1) = (echoes()?, sent.load(Relaxed));
        let wall = t0.elapsed().as_secs_f64();
        let cpu = m.map(ServerMeter::finish).transpose()?;
        Ok(Flood {
            offered: s1.saturating_sub(s0) as f64 / wall,
            echoed: e1.saturating_sub(e0) as f64 / wall,
            cpu,
        })
    })();
    stop.store(true, Relaxed);
    kernel::join(t)?;
    measured
}

pub(super) fn udp_echo_64(s: &Settings) -> Result<Outcome> {
    const B: &str = "udp-echo-64";
    let results = sides::alternate(
        s,
        B,
        &sides::plain_and_tap(&UDP_SIDES),
        Service::UdpEcho,
        |s, lab, server| {
            drop_echoes(lab)?;
            flood(s, lab, server, None, false)
        },
        |f| {
            format!(
                "{:.3} Mpps echoed ({:.3} Mpps offered)",
                f.echoed / 1e6,
                f.offered / 1e6
            )
        },
    )?;
    let offered: Vec<String> = results
        .iter()
        .map(|(c, v)| {
            let o: Vec<f64> = v.iter().map(|(f, _)| f.offered / 1e6).collect();
            format!("{:.3} with {}", Spread::of(&o).median, c.short())
        })
        .collect();
    Ok(Outcome {
        rows: vec![Row::of(
            B,
            "UDP echo, 64-byte frames, client flat out",
            "Mpps",
            true,
            &results,
            sides::all,
            |f| f.echoed / 1e6,
        )],
        notes: vec![format!(
            "udp-echo-64: the client's sendmmsg offered (median Mpps) {}; on a veth the receive path of the server's traffic runs on the sender's core",
            offered.join(", ")
        )],
    })
}
