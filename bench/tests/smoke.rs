//! Smoke test of `hoststack-bench run`: every available benchmark once
//! with `--quick` (0.3-second windows, 1,000 idle connections at most;
//! about a minute and a half in all: the unmodified servers' load
//! generators run whole seconds, the loss sweep ten streams per side),
//! checking that each row has hoststack and kernel lines with figures, that ratios are
//! taken against a marked kernel line, that the JSON parses with every
//! benchmark's description, that the chart is a PNG, that the busy-poll
//! sysctls are back to their values, and that the quiet-machine check
//! refuses to run when told nothing may run beside it. Not a timing
//! assertion: it passes `--allow-busy`, since CI machines are rarely
//! quiet. Needs root (network namespaces, AF_XDP); the lab is removed
//! even when the test fails.

#![forbid(unsafe_code)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hoststack_tests::{Lab, hoststack_bin, require_root, unique_lab_name};

/// Removes the lab by name when dropped, whatever happened to the run.
struct LabGuard(String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Lab::down(&self.0);
    }
}

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hoststack-bench"))
}

fn busy_poll_sysctls() -> String {
    ["busy_read", "busy_poll"]
        .map(|k| std::fs::read_to_string(format!("/proc/sys/net/core/{k}")).unwrap_or_default())
        .join(",")
}

/// Runs `cmd` with a deadline (SIGTERM first, so it removes its lab);
/// returns its exit status and stdout.
fn run_with_deadline(
    mut cmd: Command,
    limit: Duration,
) -> Result<(std::process::ExitStatus, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting hoststack-bench")?;
    let mut out = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            std::thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            let _ = child.wait();
            bail!("hoststack-bench did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ok((status, reader.join().unwrap_or_default()))
}

#[test]
fn every_available_benchmark_produces_both_sides_and_valid_json() -> Result<()> {
    require_root();
    let lab = unique_lab_name("bn");
    let _guard = LabGuard(lab.clone());
    let dir = std::env::temp_dir().join(format!("hoststack-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (json, chart) = (dir.join("bench.json"), dir.join("bench.png"));
    let sysctls = busy_poll_sysctls();
    let mut cmd = bench();
    // --quick: one run per side, 0.3 s windows and bulk streams, 0.1 s
    // warm-up, a 0.2 s quiet check, 1,000 idle connections at most.
    cmd.args(["run", "--quick", "--allow-busy"])
        .args(["--lab", &lab, "--subnet", "178"])
        .arg("--hoststack")
        .arg(hoststack_bin())
        .arg("--json")
        .arg(&json)
        .arg("--chart")
        .arg(&chart);
    let (status, table) = run_with_deadline(cmd, Duration::from_secs(480))?;
    println!("{table}");
    assert!(
        status.success(),
        "hoststack-bench run failed ({status}):\n{table}"
    );
    assert_eq!(
        busy_poll_sysctls(),
        sysctls,
        "net.core.busy_read/busy_poll were not restored"
    );

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)
        .context("the JSON report does not parse")?;
    let rows = report["rows"].as_array().context("no rows")?;
    let list = bench().arg("list").output()?;
    let names: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|l| !l.contains("not possible yet"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(names.len() >= 12, "benchmark list: {names:?}");
    let described = report["benchmarks"].as_array().context("no benchmarks")?;
    for name in &names {
        let d = described
            .iter()
            .find(|b| b["name"] == name.as_str())
            .with_context(|| format!("{name} is not described in the JSON"))?;
        for k in ["hoststack", "kernel", "measured"] {
            assert!(
                d[k].as_str().is_some_and(|s| !s.is_empty()),
                "{name}: no {k}"
            );
        }
        let mine: Vec<_> = rows
            .iter()
            .filter(|r| r["bench"] == name.as_str())
            .collect();
        assert!(!mine.is_empty(), "{name} produced no rows:\n{table}");
        assert!(
            table.contains(name.as_str()),
            "{name} missing from the table"
        );
        for r in &mine {
            let lines = r["lines"].as_array().context("no lines")?;
            let kernel: Vec<_> = lines.iter().filter(|l| l["kernel"] == true).collect();
            let hs: Vec<_> = lines.iter().filter(|l| l["kernel"] == false).collect();
            assert!(
                !kernel.is_empty() && !hs.is_empty(),
                "{name}: a row without both sides: {r}"
            );
            assert_eq!(
                kernel.iter().filter(|l| l["base"] == true).count(),
                1,
                "{name}: not exactly one base kernel line: {r}"
            );
            for l in lines {
                let v = l["runs"]["median"].as_f64().unwrap_or(-1.0);
                assert!(v.is_finite() && v >= 0.0, "{name}: no figure in {l}");
            }
            for l in &hs {
                let ratio = &l["ratio"];
                assert!(
                    ratio.is_null() || ratio.as_f64().is_some_and(|x| x.is_finite() && x >= 0.0),
                    "{name}: bad ratio in {l}"
                );
            }
        }
        // Idle CPU may be zero; every benchmark measures something on both
        // sides.
        assert!(
            mine.iter().any(|r| {
                let lines = r["lines"].as_array().cloned().unwrap_or_default();
                let pos = |k: bool| {
                    lines
                        .iter()
                        .any(|l| l["kernel"] == k && l["runs"]["median"].as_f64() > Some(0.0))
                };
                pos(true) && pos(false)
            }),
            "{name}: no row with figures on both sides"
        );
    }
    // Every latency and rate row of the echo benchmarks has both kernel
    // variants.
    for r in rows.iter().filter(|r| r["bench"] == "tcp-rr-64") {
        let sides: Vec<&str> = r["lines"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["side"].as_str())
            .collect();
        assert!(
            sides.iter().any(|s| s.contains("busy-polling"))
                && sides.contains(&"kernel: epoll server"),
            "tcp-rr-64 without both kernel variants: {sides:?}"
        );
    }
    assert_eq!(report["failed"].as_array().map(Vec::len), Some(0));
    assert!(report["busy"].is_array());
    assert!(report["not_available"].is_array());
    assert!(table.contains("base"));
    let png = std::fs::read(&chart).context("no chart written")?;
    assert!(png.starts_with(b"\x89PNG"), "the chart is not a PNG");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn a_busy_machine_is_refused_without_allow_busy() -> Result<()> {
    require_root();
    let lab = unique_lab_name("bq");
    let _guard = LabGuard(lab.clone());
    // A threshold below zero: any machine is too busy.
    let mut cmd = bench();
    cmd.args([
        "run",
        "tcp-rr-64",
        "--runs",
        "1",
        "--quiet-window",
        "0.2",
        "--busy-threshold=-1",
    ])
    .args(["--lab", &lab, "--subnet", "179"])
    .arg("--hoststack")
    .arg(hoststack_bin())
    .stderr(Stdio::null());
    let (status, table) = run_with_deadline(cmd, Duration::from_secs(30))?;
    assert!(
        !status.success(),
        "a busy machine was not refused:\n{table}"
    );
    assert!(
        table.contains("FAILED tcp-rr-64: refused: other processes used"),
        "{table}"
    );
    assert!(
        !table.contains("hoststack: external app"),
        "it measured anyway:\n{table}"
    );
    Ok(())
}
