//! Output of a benchmark run: the table on stdout, the JSON file and the
//! PNG chart of the ratios.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use serde::Serialize;

use crate::cpu::BusyNote;
use crate::env::Machine;
use crate::suite::{Bench, NOT_YET, Row};

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
    /// What both sides of each benchmark that ran do.
    pub benchmarks: Vec<Bench>,
    /// Every figure beside the kernel's.
    pub rows: Vec<Row>,
    /// Extra facts.
    pub notes: Vec<String>,
    /// Other processes found using the CPUs before a benchmark or during
    /// a measurement (`--allow-busy`); empty on a quiet machine.
    pub busy: Vec<BusyNote>,
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

/// The table, as text (also the README's): one group of lines per row,
/// hoststack's lines first with their ratio, then the kernel's with the
/// one the ratios are taken against marked `base`.
pub fn table(r: &Report) -> String {
    let head = [
        "benchmark",
        "metric",
        "unit",
        "side",
        "median (min-max)",
        "ratio",
    ];
    let mut rows: Vec<[String; 6]> = Vec::new();
    for x in &r.rows {
        for (i, l) in x.lines.iter().enumerate() {
            let first = i == 0;
            let keep = |s: &str| if first { s.to_string() } else { String::new() };
            let ratio = if l.kernel {
                if l.base { "base".into() } else { String::new() }
            } else {
                l.ratio.map_or_else(|| "n/a".into(), |v| format!("{v:.2}x"))
            };
            rows.push([
                keep(&x.bench),
                keep(&x.metric),
                keep(&x.unit),
                l.side.clone(),
                spread(&l.runs),
                ratio,
            ]);
        }
    }
    let mut w = head.map(str::len);
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "hoststack-bench at {}, runs per side: {}; {}, {} cores, {} GiB, Linux {}",
        r.settings["commit"].as_str().unwrap_or("an unknown commit"),
        r.settings["runs"],
        r.machine.cpu,
        r.machine.cores,
        r.machine.memory_gib,
        r.machine.kernel
    );
    for b in &r.busy {
        let _ = writeln!(
            out,
            "WARNING: TAKEN ON A BUSY MACHINE: {} {}: other processes used {}",
            b.bench,
            b.when,
            b.activity.summary()
        );
    }
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
    let mut last_bench = None;
    for (row, cells) in r
        .rows
        .iter()
        .flat_map(|x| x.lines.iter().map(move |_| x))
        .zip(&rows)
    {
        if !cells[0].is_empty() && last_bench.is_some_and(|b: &str| b != row.bench) {
            out.push('\n');
        }
        last_bench = Some(&row.bench);
        line(
            &mut out,
            &cells.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }
    out.push_str("ratio: each hoststack line against the better kernel line (base): hoststack/kernel for rates, kernel/hoststack for latencies and CPU; above 1 means hoststack is better\n");
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    for f in &r.failed {
        let _ = writeln!(out, "FAILED {}: {}", f.name, f.error);
    }
    for n in &r.not_available {
        let _ = writeln!(out, "not yet: {}: {}", n.name, n.why);
    }
    if !r.benchmarks.is_empty() {
        out.push_str("\nwhat each benchmark runs (load on core 0 in the lab namespace, side under test on core 1):\n");
        for b in &r.benchmarks {
            let _ = writeln!(
                out,
                "{}: {}\n  hoststack: {}\n  kernel: {}\n  load: {}",
                b.name, b.title, b.hoststack, b.kernel, b.measured
            );
        }
    }
    out
}

/// Creates the directory `path` goes in.
fn parent_dir(path: &Path) -> Result<()> {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))
        }
        _ => Ok(()),
    }
}

/// Writes the JSON file.
pub fn write_json(r: &Report, path: &Path) -> Result<()> {
    parent_dir(path)?;
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

/// Powers of two from 1/`hi` to `hi`: the log axis's labels.
fn ticks(hi: f64) -> Vec<f64> {
    let n = hi.log2().floor() as i32;
    (-n..=n).map(|e| 2f64.powi(e)).collect()
}

/// Draws the ratios as horizontal bars from the parity line at 1, on a
/// log axis.
pub fn write_chart(r: &Report, path: &Path) -> Result<()> {
    register_font()?;
    parent_dir(path)?;
    let rows: Vec<(String, f64)> = r
        .rows
        .iter()
        .filter(|x| x.chart)
        .flat_map(|x| {
            x.lines
                .iter()
                .filter(|l| !l.kernel)
                .filter_map(move |l| l.ratio.map(|v| (format!("{} ({})", x.label, l.short), v)))
                .filter(|(_, v)| *v > 0.0)
        })
        .collect();
    if rows.is_empty() {
        bail!("nothing to chart");
    }
    let n = rows.len();
    let plots = line_plots(r);
    let bars_height = 140 + 34 * n as u32;
    let height = bars_height + PLOT_HEIGHT * plots.len() as u32;
    let whole = BitMapBackend::new(path, (1150, height)).into_drawing_area();
    whole.fill(&WHITE)?;
    let (root, below) = whole.split_vertically(bars_height);
    for (plot, area) in plots
        .iter()
        .zip(below.split_evenly((plots.len().max(1), 1)))
    {
        draw_line_plot(plot, &area)?;
    }
    // A log axis: 2x better and 2x worse are the same distance from the
    // parity line, and one wild ratio does not flatten the others.
    let (lo, hi) = rows
        .iter()
        .fold((1.0f64, 1.0f64), |(lo, hi), x| (lo.min(x.1), hi.max(x.1)));
    // Symmetric about 1.
    let hi = (hi * 1.6).max(1.3 / lo).max(2.0);
    let lo = 1.0 / hi;
    // First row on top.
    let labels: Vec<String> = rows.iter().rev().map(|x| x.0.clone()).collect();
    let at = |i: usize| n - 1 - i;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "hoststack vs Linux kernel's better configuration (ratio of medians; >1: hoststack better)",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(430)
        // An integer range is inclusive in plotters: 0..n-1 is n segments.
        .build_cartesian_2d(
            (lo..hi).log_scale().with_key_points(ticks(hi)),
            (0..n - 1).into_segmented(),
        )?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_formatter(&|v| format!("{v:.2}x"))
        .x_desc("ratio (log scale)")
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
                (1.0, SegmentValue::Exact(at(i))),
                (ratio, SegmentValue::Exact(at(i) + 1)),
            ],
            color.filled(),
        );
        bar.set_margin(5, 5, 0, 0);
        bar
    }))?;
    chart.draw_series(rows.iter().enumerate().map(|(i, &(_, ratio))| {
        Text::new(
            format!("{ratio:.2}x"),
            (ratio.max(1.0) * 1.03, SegmentValue::CenterOf(at(i))),
            ("sans-serif", 15).into_font(),
        )
    }))?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Last)],
        BLACK.stroke_width(2),
    )))?;
    whole
        .present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

const PLOT_HEIGHT: u32 = 460;

/// A line plot gathered from the rows that are its points: one series per
/// side, the medians against x.
struct LinePlot {
    title: String,
    x_label: String,
    unit: String,
    /// Every x, ascending.
    xs: Vec<f64>,
    /// (side, points (x, median)).
    series: Vec<(String, Vec<(f64, f64)>)>,
}

fn line_plots(r: &Report) -> Vec<LinePlot> {
    let mut plots: Vec<LinePlot> = Vec::new();
    for row in &r.rows {
        let Some(p) = &row.plot else { continue };
        let i = match plots.iter().position(|x| x.title == p.title) {
            Some(i) => i,
            None => {
                plots.push(LinePlot {
                    title: p.title.clone(),
                    x_label: p.x_label.clone(),
                    unit: row.unit.clone(),
                    xs: Vec::new(),
                    series: Vec::new(),
                });
                plots.len() - 1
            }
        };
        let plot = &mut plots[i];
        if !plot.xs.contains(&p.x) {
            plot.xs.push(p.x);
        }
        for l in &row.lines {
            let at = match plot.series.iter().position(|(s, _)| *s == l.short) {
                Some(at) => at,
                None => {
                    plot.series.push((l.short.clone(), Vec::new()));
                    plot.series.len() - 1
                }
            };
            plot.series[at].1.push((p.x, l.runs.median));
        }
    }
    for plot in &mut plots {
        plot.xs.sort_by(f64::total_cmp);
        for (_, points) in &mut plot.series {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }
    plots
}

const SERIES_COLORS: [RGBColor; 6] = [
    RGBColor(46, 125, 50),
    RGBColor(21, 101, 192),
    RGBColor(198, 40, 40),
    RGBColor(239, 108, 0),
    RGBColor(106, 27, 154),
    RGBColor(0, 131, 143),
];

/// Draws `plot` on `area`: x at evenly spaced positions labelled with the
/// counts (they span decades), y from 0.
fn draw_line_plot<DB: DrawingBackend>(
    plot: &LinePlot,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let values = plot.series.iter().flat_map(|(_, p)| p.iter().map(|x| x.1));
    let hi = values.fold(0.0f64, f64::max).max(1.0) * 1.25;
    let last = plot.xs.len().saturating_sub(1).max(1);
    let xs = plot.xs.clone();
    let mut chart = ChartBuilder::on(area)
        .caption(&plot.title, ("sans-serif", 20))
        .margin(16)
        .margin_right(48)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..last as f64, 0f64..hi)?;
    chart
        .configure_mesh()
        .x_labels(xs.len().max(2))
        .x_label_formatter(&|v| {
            let i = v.round() as usize;
            if (v - i as f64).abs() < 1e-6 {
                xs.get(i)
                    .map(|x| {
                        if x.fract() == 0.0 {
                            format!("{x:.0}")
                        } else {
                            format!("{x}")
                        }
                    })
                    .unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_labels(8)
        .x_desc(plot.x_label.as_str())
        .y_desc(plot.unit.as_str())
        .label_style(("sans-serif", 15))
        .draw()?;
    for (k, (side, points)) in plot.series.iter().enumerate() {
        let color = SERIES_COLORS[k % SERIES_COLORS.len()];
        // Evenly spaced: x's position among the plot's xs.
        let at = |x: f64| xs.iter().position(|y| *y == x).unwrap_or(0) as f64;
        let pts: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.1 > 0.0)
            .map(|&(x, v)| (at(x), v))
            .collect();
        chart
            .draw_series(std::iter::once(PathElement::new(
                pts.clone(),
                color.stroke_width(2),
            )))?
            .label(side.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}
