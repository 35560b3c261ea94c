//! Smoke test of `hoststack-bench run`: every available benchmark for
//! about a second, one run each, checking that each produces numbers for
//! hoststack and the kernel and that the JSON file and the chart are
//! written. Not a timing assertion. Needs root (network namespaces,
//! AF_XDP); the lab is removed even when the test fails.

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

#[test]
fn every_available_benchmark_produces_numbers_and_valid_json() -> Result<()> {
    require_root();
    let lab = unique_lab_name("bn");
    let _guard = LabGuard(lab.clone());
    let dir = std::env::temp_dir().join(format!("hoststack-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (json, chart) = (dir.join("bench.json"), dir.join("bench.png"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoststack-bench"))
        .args([
            "run",
            "--runs",
            "1",
            "--duration",
            "1",
            "--bulk-duration",
            "1",
            "--warmup",
            "0.2",
        ])
        .args(["--lab", &lab, "--subnet", "178"])
        .arg("--hoststack")
        .arg(hoststack_bin())
        .arg("--json")
        .arg(&json)
        .arg("--chart")
        .arg(&chart)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting hoststack-bench")?;
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            // SIGTERM first so it removes its lab itself.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            std::thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            let _ = child.wait();
            bail!("hoststack-bench run did not finish within 240 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut table = String::new();
    if let Some(mut out) = child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut table)?;
    }
    println!("{table}");
    assert!(
        status.success(),
        "hoststack-bench run failed ({status}):\n{table}"
    );

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)
        .context("the JSON report does not parse")?;
    let rows = report["rows"].as_array().context("no rows")?;
    let list = Command::new(env!("CARGO_BIN_EXE_hoststack-bench"))
        .arg("list")
        .output()?;
    let names: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|l| !l.contains("not possible yet"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(names.len(), 10, "benchmark list: {names:?}");
    for name in &names {
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
            for side in ["hoststack", "kernel"] {
                let v = r[side]["median"].as_f64().unwrap_or(-1.0);
                assert!(v.is_finite() && v >= 0.0, "{name} {side}: no figure in {r}");
            }
            // A ratio (0 when only the kernel's figure is zero, as for idle
            // CPU), or null when only hoststack's is.
            let ratio = &r["ratio"];
            assert!(
                ratio.is_null() || ratio.as_f64().is_some_and(|x| x.is_finite() && x >= 0.0),
                "{name}: bad ratio in {r}"
            );
        }
        // Idle CPU may be zero; every benchmark measures something on both sides.
        assert!(
            mine.iter()
                .any(|r| r["hoststack"]["median"].as_f64() > Some(0.0)
                    && r["kernel"]["median"].as_f64() > Some(0.0)),
            "{name}: no row with figures on both sides"
        );
    }
    assert_eq!(report["failed"].as_array().map(Vec::len), Some(0));
    assert!(report["not_available"].is_array());
    let png = std::fs::read(&chart).context("no chart written")?;
    assert!(png.starts_with(b"\x89PNG"), "the chart is not a PNG");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
