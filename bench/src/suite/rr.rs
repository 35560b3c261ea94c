//! TCP request/response and connection rate.

use std::net::SocketAddr;

use anyhow::Result;
use hoststack_lab::Lab;

use super::sides::{self, ECHO_PORT, Mode, Results, Service, Side};
use super::{Outcome, Row, Settings, ip4};
use crate::env;
use crate::kernel::{self, RrResult};
use crate::stats::percentile;

/// The sides of the TCP echo rows: the external app first (what a user's
/// program gets), the builtin app second, and both kernel variants.
pub(super) const TCP_SIDES: [Side; 4] = [
    Side::External(Mode::Poll),
    Side::Builtin(Mode::Poll),
    Side::Kernel,
    Side::KernelBusy,
];

/// The 64-byte TCP round-trip client against the lab's host end.
pub(super) fn rr_client(s: &Settings, lab: &Lab) -> Result<RrResult> {
    let (load_core, _) = s.cores();
    let (host, _) = ip4(lab);
    let (w, d, stop) = (s.warmup, s.duration, s.interrupted.clone());
    let t = kernel::spawn_in("rr-client", Some(&lab.netns), load_core, move || {
        kernel::tcp_rr(SocketAddr::new(host, ECHO_PORT), 64, w, d, &stop)
    })?;
    kernel::join(t)
}

/// Transactions/s, p50 and p99 in µs.
pub(super) fn rr_figures(r: &RrResult) -> [f64; 3] {
    [
        r.count as f64 / r.elapsed.as_secs_f64().max(1e-9),
        percentile(&r.samples, 0.50) as f64 / 1000.0,
        percentile(&r.samples, 0.99) as f64 / 1000.0,
    ]
}

/// "N trans/s, p50 X us, p99 Y us".
pub(super) fn show_rr(r: &RrResult) -> String {
    let f = rr_figures(r);
    let lost = if r.lost > 0 {
        format!(", {} lost", r.lost)
    } else {
        String::new()
    };
    format!(
        "{:.0} trans/s, p50 {:.1} us, p99 {:.1} us{lost}",
        f[0], f[1], f[2]
    )
}

/// The three rows of a request/response benchmark.
pub(super) fn rr_rows(b: &str, what: &str, results: &Results<RrResult>) -> Vec<Row> {
    vec![
        Row::of(
            b,
            &format!("{what} request/response, one at a time"),
            "trans/s",
            true,
            results,
            sides::all,
            |r| rr_figures(r)[0],
        ),
        Row::of(
            b,
            &format!("{what} round trip, p50"),
            "us",
            false,
            results,
            sides::all,
            |r| rr_figures(r)[1],
        )
        .labelled(&format!("{b} p50")),
        Row::of(
            b,
            &format!("{what} round trip, p99"),
            "us",
            false,
            results,
            sides::all,
            |r| rr_figures(r)[2],
        )
        .labelled(&format!("{b} p99")),
    ]
}

pub(super) fn tcp_rr_64(s: &Settings) -> Result<Outcome> {
    const B: &str = "tcp-rr-64";
    let results = sides::alternate(
        s,
        B,
        &sides::plain_and_tap(&TCP_SIDES),
        Service::TcpEcho,
        |s, lab, _| rr_client(s, lab),
        show_rr,
    )?;
    Ok(Outcome {
        rows: rr_rows(B, "TCP 64-byte", &results),
        notes: Vec::new(),
    })
}

fn connrate_client(s: &Settings, lab: &Lab) -> Result<kernel::ConnResult> {
    // The client closes first; without TIME_WAIT buckets its ports are
    // free again at once (the FIN exchange still happens in full).
    env::sysctl_in_lab(lab, "net.ipv4.tcp_max_tw_buckets", "0")?;
    env::sysctl_in_lab(lab, "net.ipv4.ip_local_port_range", "1024 65535")?;
    let (load_core, _) = s.cores();
    let (host, _) = ip4(lab);
    let (d, stop) = (s.duration, s.interrupted.clone());
    let t = kernel::spawn_in("conn-client", Some(&lab.netns), load_core, move || {
        kernel::tcp_connrate(SocketAddr::new(host, ECHO_PORT), 64, d, &stop)
    })?;
    kernel::join(t)
}

pub(super) fn tcp_connrate(s: &Settings) -> Result<Outcome> {
    const B: &str = "tcp-connrate";
    let rate = |r: &kernel::ConnResult| r.ok as f64 / r.elapsed.as_secs_f64().max(1e-9);
    let results = sides::alternate(
        s,
        B,
        &sides::plain_and_tap(&TCP_SIDES),
        Service::TcpEcho,
        |s, lab, _| connrate_client(s, lab),
        |r| format!("{:.0} conn/s ({} failed)", rate(r), r.failed),
    )?;
    let failures = sides::total(&results, |r| r.failed);
    let mut notes = Vec::new();
    if failures > 0 {
        notes.push(format!(
            "tcp-connrate: {failures} connection(s) failed over all runs"
        ));
    }
    Ok(Outcome {
        rows: vec![Row::of(
            B,
            "TCP connect + 64-byte exchange + close",
            "conn/s",
            true,
            &results,
            sides::all,
            rate,
        )],
        notes,
    })
}
