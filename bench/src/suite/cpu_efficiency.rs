//! Work per CPU-second on the server side: the UDP echo at a fixed
//! offered rate below every side's maximum, then flat out.

use anyhow::Result;

use super::sides::{self, Mode, Service, Side};
use super::udp::{Flood, drop_echoes, flood};
use super::{Outcome, Row, Settings};
use crate::stats::Spread;

const SIDES: [Side; 4] = [
    Side::External(Mode::Poll),
    Side::External(Mode::Interrupt),
    Side::Kernel,
    Side::KernelBusy,
];

fn show(f: &Flood) -> String {
    let cpu = f.cpu.map_or(0.0, |c| c.percent());
    format!(
        "{:.0}/s echoed, server CPU {cpu:.0} % of a core, {:.0} echoes per CPU-second",
        f.echoed,
        f.per_cpu_second()
    )
}

pub(super) fn cpu_efficiency(s: &Settings) -> Result<Outcome> {
    const B: &str = "cpu-efficiency";
    let load = s.cpu_load;
    let results = sides::alternate(
        s,
        B,
        &sides::plain(&SIDES),
        Service::UdpEcho,
        |s, lab, server| {
            drop_echoes(lab)?;
            let fixed = flood(s, lab, server, Some(load), true)?;
            let max = flood(s, lab, server, None, true)?;
            Ok((fixed, max))
        },
        |(a, b)| format!("fixed: {}; flat out: {}", show(a), show(b)),
    )?;
    let k = |v: f64| v / 1000.0;
    let mut notes = Vec::new();
    for (c, runs) in &results {
        let fixed: Vec<f64> = runs.iter().map(|((f, _), _)| f.echoed).collect();
        let med = Spread::of(&fixed).median;
        if med < 0.95 * load {
            notes.push(format!(
                "cpu-efficiency: {} echoed {med:.0}/s of the {load:.0}/s offered: the fixed load is not below its maximum",
                c.label()
            ));
        }
        let core: Vec<f64> = runs
            .iter()
            .filter_map(|((f, _), _)| f.cpu.map(|c| 100.0 * c.server_core_interrupts_s / c.wall_s))
            .collect();
        let all: Vec<f64> = runs
            .iter()
            .filter_map(|((f, _), _)| f.cpu.map(|c| 100.0 * c.interrupts_s / c.wall_s))
            .collect();
        notes.push(format!(
            "cpu-efficiency: {}: irq+softirq at the fixed load {:.1} % of a core on all CPUs, {:.1} % on the server's core (medians)",
            c.label(),
            Spread::of(&all).median,
            Spread::of(&core).median
        ));
    }
    Ok(Outcome {
        rows: vec![
            Row::of(
                B,
                &format!("UDP 64-byte echoes per server CPU-second, {load:.0}/s offered"),
                "k/CPU-s",
                true,
                &results,
                sides::all,
                |(f, _)| k(f.per_cpu_second()),
            )
            .labelled("cpu-efficiency fixed load"),
            Row::of(
                B,
                &format!("server CPU, {load:.0}/s offered"),
                "% of a core",
                false,
                &results,
                sides::all,
                |(f, _)| f.cpu.map_or(0.0, |c| c.percent()),
            )
            .unchart(),
            Row::of(
                B,
                "UDP 64-byte echoes per server CPU-second, client flat out",
                "k/CPU-s",
                true,
                &results,
                sides::all,
                |(_, f)| k(f.per_cpu_second()),
            )
            .labelled("cpu-efficiency flat out"),
            Row::of(
                B,
                "UDP 64-byte echo rate, client flat out (same runs)",
                "Mpps",
                true,
                &results,
                sides::all,
                |(_, f)| f.echoed / 1e6,
            )
            .unchart(),
        ],
        notes,
    })
}
