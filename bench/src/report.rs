//! Output of a benchmark run: the table on stdout, the JSON file and the
//! PNG chart of the ratios.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use serde::Serialize;

use crate::env::Machine;
use crate::suite::{NOT_YET, Row};

/// Everything one `run` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Seconds since the Unix epoch when the run ended.
    pub finished_unix: u64,
    /// Where.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// Runs per side, windows, lab.
    pub settings: serde_json::Value,
    /// Every figure beside the kernel's.
    pub rows: Vec<Row>,
    /// Extra facts.
    pub notes: Vec<String>,
    /// Benchmarks that cannot run yet.
    pub not_available: Vec<NotAvailable>,
    /// Benchmarks that failed in this run.
    pub failed: Vec<Failed>,
}

/// A benchmark the issue asks for that cannot run yet.
#[derive(Debug, Clone, Serialize)]
pub struct NotAvailable {
    /// Its name.
    pub name: String,
    /// Why.
    pub why: String,
}

/// A benchmark that failed.
#[derive(Debug, Clone, Serialize)]
pub struct Failed {
    /// Its name.
    pub name: String,
    /// The error.
    pub error: String,
}

impl Report {
    /// The not-yet-possible list.
    pub fn not_yet() -> Vec<NotAvailable> {
        NOT_YET
            .iter()
            .map(|(n, w)| NotAvailable {
                name: (*n).into(),
                why: (*w).into(),
            })
            .collect()
    }
}

fn fig(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn spread(s: &crate::stats::Spread) -> String {
    format!("{} ({}-{})", fig(s.median), fig(s.min), fig(s.max))
}

/// The table, as text (also the README's).
pub fn table(r: &Report) -> String {
    let head = [
        "benchmark",
        "metric",
        "unit",
        "hoststack median (min-max)",
        "kernel median (min-max)",
        "kernel side",
        "ratio",
    ];
    let rows: Vec<[String; 7]> = r
        .rows
        .iter()
        .map(|x| {
            [
                x.bench.clone(),
                x.metric.clone(),
                x.unit.clone(),
                spread(&x.hoststack),
                spread(&x.kernel),
                x.kernel_label.clone(),
                x.ratio.map_or_else(|| "n/a".into(), |r| format!("{r:.2}x")),
            ]
        })
        .collect();
    let mut w = head.map(str::len);
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(out, "{c:<width$}  ", width = w[i]);
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(&mut out, &head);
    let rule: Vec<String> = w.iter().map(|n| "-".repeat(*n)).collect();
    line(
        &mut out,
        &rule.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    for row in &rows {
        line(
            &mut out,
            &row.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }
    out.push_str("ratio: hoststack/kernel for rates, kernel/hoststack for latencies and CPU; above 1 means hoststack is better\n");
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    for f in &r.failed {
        let _ = writeln!(out, "FAILED {}: {}", f.name, f.error);
    }
    for n in &r.not_available {
        let _ = writeln!(out, "not yet: {}: {}", n.name, n.why);
    }
    out
}

/// Writes the JSON file.
pub fn write_json(r: &Report, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(r)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a TrueType font for the chart's text (plotters' ab_glyph
/// backend reads no system font configuration). `HOSTSTACK_BENCH_FONT`
/// overrides; Debian's fonts-dejavu-core (ci/setup installs it) provides
/// the default.
fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let mut paths: Vec<String> = FONT_PATHS.iter().map(|s| (*s).to_string()).collect();
        if let Ok(p) = std::env::var("HOSTSTACK_BENCH_FONT") {
            paths.insert(0, p);
        }
        let bytes = paths
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or_else(|| {
                format!(
                    "no font for the chart (looked in {}); install fonts-dejavu-core (ci/setup does) or set HOSTSTACK_BENCH_FONT",
                    paths.join(", ")
                )
            })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "the chart font is not a valid TrueType file".to_string())
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Draws the ratios as horizontal bars, with the parity line at 1.
pub fn write_chart(r: &Report, path: &Path) -> Result<()> {
    register_font()?;
    let rows: Vec<(&Row, f64)> = r
        .rows
        .iter()
        .filter(|x| x.chart)
        .filter_map(|x| x.ratio.map(|v| (x, v)))
        .collect();
    if rows.is_empty() {
        bail!("nothing to chart");
    }
    let n = rows.len();
    let height = 140 + 46 * n as u32;
    let root = BitMapBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = rows
        .iter()
        .map(|x| x.1)
        .fold(1.0f64, f64::max)
        .mul_add(1.15, 0.0)
        .max(1.5);
    // First row on top.
    let labels: Vec<String> = rows.iter().rev().map(|x| x.0.label.clone()).collect();
    let at = |i: usize| n - 1 - i;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "hoststack vs Linux kernel (ratio of medians; >1: hoststack better)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(300)
        // An integer range is inclusive in plotters: 0..n-1 is n segments.
        .build_cartesian_2d(0f64..max, (0..n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("ratio")
        .light_line_style(WHITE)
        .label_style(("sans-serif", 15))
        .draw()?;
    chart.draw_series(rows.iter().enumerate().map(|(i, &(_, ratio))| {
        let color = if ratio >= 1.0 {
            RGBColor(46, 125, 50)
        } else {
            RGBColor(198, 40, 40)
        };
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(at(i))),
                (ratio, SegmentValue::Exact(at(i) + 1)),
            ],
            color.filled(),
        );
        bar.set_margin(6, 6, 0, 0);
        bar
    }))?;
    chart.draw_series(rows.iter().enumerate().map(|(i, &(_, ratio))| {
        Text::new(
            format!("{ratio:.2}x"),
            (ratio + max * 0.01, SegmentValue::CenterOf(at(i))),
            ("sans-serif", 15).into_font(),
        )
    }))?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Last)],
        BLACK.stroke_width(2),
    )))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
