//! hoststack's worker modes against both kernel variants: CPU while idle,
//! then TCP round trips.

use anyhow::Result;

use super::rr::{rr_client, rr_figures, show_rr};
use super::sides::{self, Mode, Service, Side};
use super::{Outcome, Row, Settings};
use crate::cpu::ServerMeter;
use crate::kernel::RrResult;

const SIDES: [Side; 5] = [
    Side::External(Mode::Poll),
    Side::External(Mode::Interrupt),
    Side::External(Mode::Adaptive),
    Side::Kernel,
    Side::KernelBusy,
];

pub(super) fn worker_modes(s: &Settings) -> Result<Outcome> {
    const B: &str = "worker-modes";
    let (_, core) = s.cores();
    let results = sides::alternate(
        s,
        B,
        &sides::plain(&SIDES),
        Service::TcpEcho,
        |s, lab, server| -> Result<(f64, RrResult)> {
            s.sleep(s.warmup)?;
            let m = ServerMeter::start(&server.pids(), core)?;
            s.sleep(s.duration)?;
            let c = m.finish()?;
            let idle = 100.0 * c.process_s / c.wall_s.max(1e-9);
            Ok((idle, rr_client(s, lab)?))
        },
        |(idle, r)| format!("idle {idle:.1} % of a core; {}", show_rr(r)),
    )?;
    let fig = |i: usize| move |(_, r): &(f64, RrResult)| rr_figures(r)[i];
    Ok(Outcome {
        rows: vec![
            Row::of(
                B,
                "server CPU with no traffic",
                "% of a core",
                false,
                &results,
                sides::all,
                |(idle, _)| *idle,
            )
            .unchart(),
            Row::of(
                B,
                "TCP 64-byte round trip, p50",
                "us",
                false,
                &results,
                sides::all,
                fig(1),
            )
            .labelled("worker-modes p50"),
            Row::of(
                B,
                "TCP 64-byte round trip, p99",
                "us",
                false,
                &results,
                sides::all,
                fig(2),
            )
            .labelled("worker-modes p99"),
            Row::of(
                B,
                "TCP 64-byte request/response",
                "trans/s",
                true,
                &results,
                sides::all,
                fig(0),
            )
            .unchart(),
        ],
        notes: vec![
            "worker-modes: idle CPU is the server processes' user+system time over the window with no traffic (hoststack: serve and the app), from /proc in 10 ms ticks; the busy-polling kernel spins by design".into(),
        ],
    })
}
