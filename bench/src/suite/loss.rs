//! TCP goodput under packet loss: nftables in the lab's namespace drops a
//! share of the packets each way (the data the peer sends and the ACKs it
//! receives), one stream and 8 streams, offloads off on both ends so both
//! sides lose the same MTU-sized frames.

use std::net::SocketAddr;

use anyhow::Result;
use hoststack_lab::Lab;

use super::sides::{self, BULK_PORT, Config, Mode, Service, Side};
use super::{Outcome, Row, Settings, ip4};
use crate::kernel::{self, BulkResult};

/// Loss each way, per mille (0, 0.5, 1, 2 and 5 %).
const LOSS_PER_MILLE: [u32; 5] = [0, 5, 10, 20, 50];
/// Concurrent streams.
const STREAMS: [usize; 2] = [1, 8];

/// `n` bulk streams at once from the namespace: total bytes over the time
/// the slowest took (until its server side closed).
fn streams(s: &Settings, lab: &Lab, n: usize) -> Result<BulkResult> {
    let (load_core, _) = s.cores();
    let dst = SocketAddr::new(ip4(lab).0, BULK_PORT);
    let threads = (0..n)
        .map(|i| {
            let (d, stop) = (s.bulk_duration, s.interrupted.clone());
            kernel::spawn_in(
                &format!("loss-bulk-{i}"),
                Some(&lab.netns),
                load_core,
                move || kernel::tcp_bulk(dst, d, &stop),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut total = BulkResult {
        bytes: 0,
        elapsed: Default::default(),
    };
    for t in threads {
        let r = kernel::join(t)?;
        total.bytes += r.bytes;
        total.elapsed = total.elapsed.max(r.elapsed);
    }
    Ok(total)
}

/// Every loss rate and stream count against one server, in order.
fn sweep(s: &Settings, lab: &Lab) -> Result<Vec<BulkResult>> {
    let mut out = Vec::new();
    for pm in LOSS_PER_MILLE {
        lab.set_loss_per_mille(pm)?;
        for n in STREAMS {
            s.check()?;
            out.push(streams(s, lab, n)?);
        }
    }
    lab.set_loss_per_mille(0)?;
    Ok(out)
}

fn percent(pm: u32) -> String {
    let p = f64::from(pm) / 10.0;
    if pm % 10 == 0 {
        format!("{p:.0}")
    } else {
        format!("{p:.1}")
    }
}

pub(super) fn loss_sweep(s: &Settings) -> Result<Outcome> {
    const B: &str = "loss-sweep";
    let configs = [Side::External(Mode::Poll), Side::Kernel, Side::KernelBusy]
        .map(|side| Config::plain(side).offloads_off());
    let results = sides::alternate(
        s,
        B,
        &configs,
        Service::TcpDiscard,
        |s, lab, _| sweep(s, lab),
        |r| {
            let mut parts = Vec::new();
            for (i, pm) in LOSS_PER_MILLE.iter().enumerate() {
                for (j, n) in STREAMS.iter().enumerate() {
                    let g = r[i * STREAMS.len() + j].gbps();
                    parts.push(format!("{}% x{n}: {g:.3}", percent(*pm)));
                }
            }
            format!("{} Gbps", parts.join(", "))
        },
    )?;
    let mut rows = Vec::new();
    for (j, n) in STREAMS.iter().enumerate() {
        for (i, pm) in LOSS_PER_MILLE.iter().enumerate() {
            let k = i * STREAMS.len() + j;
            let pct = percent(*pm);
            let streams = if *n == 1 {
                "1 stream".to_string()
            } else {
                format!("{n} streams")
            };
            rows.push(
                Row::of(
                    B,
                    &format!("TCP goodput, {streams}, {pct} % loss each way, offloads off"),
                    "Gbps",
                    true,
                    &results,
                    sides::all,
                    move |r| r[k].gbps(),
                )
                .labelled(&format!("{B} {pct}% x{n}"))
                .plotted(
                    &format!("TCP goodput against loss each way, {streams}, offloads off"),
                    "loss each way, %",
                    f64::from(*pm) / 10.0,
                ),
            );
        }
    }
    Ok(Outcome {
        rows,
        notes: vec![format!(
            "{B}: loss from nftables rules in the namespace (`numgen random mod 1000 < N drop` in its input and output hooks: the peer's data and the ACKs it receives); each stream writes for --bulk-duration, goodput = all streams' bytes over the time until the slowest stream's server side closed"
        )],
    })
}
