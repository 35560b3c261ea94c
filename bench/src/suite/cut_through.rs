//! Cut-through between two processes on one machine: hoststack's local
//! sessions (fifos in a segment both apps map) against a Unix socket pair
//! and TCP over loopback.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::sides::{example, kernel_server, pinned};
use super::{Figure, Outcome, Row, Settings, progress};
use crate::env::Managed;
use crate::kernel;

fn gbytes(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e9
}

/// Fifo size of both cut-through apps, and the Unix socket's send buffer:
/// with less, a reader faster than its writer empties the fifo after every
/// few writes and each refill costs a wakeup through the stack's worker.
const CUT_THROUGH_BUFFER: usize = 4 << 20;
const CUT_THROUGH_BUFFER_ARG: &str = "4194304";

/// Bytes of each one-way stream: 2 GiB per second of --duration, at least
/// 64 MiB.
fn stream_bytes(s: &Settings) -> u64 {
    ((s.duration.as_secs_f64() * 2.0 * f64::from(1u32 << 30)) as u64).max(64 << 20)
}

/// One run of a kernel stream: the reader (`hoststack-bench kernel-server`
/// with `server_args`, discarding) on the core under test, `client` on
/// the load core; GB/s.
fn kernel_stream(
    s: &Settings,
    run: usize,
    what: &str,
    server_args: &[&str],
    client: impl FnOnce() -> Result<Duration> + Send + 'static,
) -> Result<f64> {
    const B: &str = "cut-through";
    let (load_core, test_core) = s.cores();
    s.check()?;
    s.guarded(B, &format!("run {run} of {what}"), || {
        let server = kernel_server(test_core, server_args)?;
        let t = kernel::spawn_in("stream-client", None, load_core, client)?;
        let d = kernel::join(t);
        server.stop()?;
        let v = gbytes(stream_bytes(s), d?);
        progress(B, run, s.runs, what, &format!("{v:.2} GB/s"));
        Ok(v)
    })
}

pub(super) fn cut_through(s: &Settings) -> Result<Outcome> {
    const B: &str = "cut-through";
    let (load_core, test_core) = s.cores();
    let bytes = stream_bytes(s);
    let (sink_bin, client_bin) = (example(s, "echo_server")?, example(s, "throughput_client")?);
    let tmp = std::env::temp_dir();
    let id = format!("{}-{}", std::process::id(), s.lab);
    let (mut hs, mut unix, mut tcp) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=s.runs {
        s.check()?;
        s.guarded(
            B,
            &format!("run {run} of hoststack cut-through"),
            || -> Result<()> {
                // Two external apps in one app namespace with local scope: the
                // fifos sit in a segment both map, the stack only relays
                // notifications (its worker sleeps in interrupt mode).
                let lab = s.lab()?;
                let sock = tmp.join(format!("hsbench-{id}.sock"));
                let sock_s = sock.display().to_string();
                let mut cmd = std::process::Command::new(&s.hoststack);
                cmd.args([
                    "serve",
                    "--interface",
                    &lab.host_if,
                    "--address",
                    &lab.cfg.host4.to_string(),
                ])
                .args(["--app-socket", &sock_s, "--mode", "interrupt"]);
                if let Some(c) = test_core {
                    cmd.args(["--cores", &c.to_string()]);
                }
                let serve = Managed::start(cmd, "hoststack serve", "ready")?;
                let sink = Managed::start(
                    pinned(
                        test_core,
                        &sink_bin,
                        &[
                            "--socket",
                            &sock_s,
                            "--listen",
                            "0.0.0.0:9",
                            "--local-scope",
                            "--discard",
                            "--fifo-size",
                            CUT_THROUGH_BUFFER_ARG,
                        ],
                    ),
                    "the echo_server example (discarding)",
                    "ready",
                )?;
                let client = Managed::start(
                    pinned(
                        load_core,
                        &client_bin,
                        &[
                            "--socket",
                            &sock_s,
                            "--connect",
                            "127.0.0.1:9",
                            "--local-scope",
                            "--one-way",
                            "--bytes",
                            &bytes.to_string(),
                            "--fifo-size",
                            CUT_THROUGH_BUFFER_ARG,
                        ],
                    ),
                    "the throughput_client example",
                    "",
                )?;
                let report = client
                    .wait(Duration::from_secs(300))?
                    .context("throughput_client printed no JSON")?;
                sink.terminate()?;
                serve.stop()?;
                if report["ok"] != true {
                    bail!("the cut-through transfer failed: {report}");
                }
                let v = report["gbytes_per_s"].as_f64().context("no gbytes_per_s")?;
                progress(
                    B,
                    run,
                    s.runs,
                    "hoststack cut-through",
                    &format!("{v:.2} GB/s"),
                );
                hs.push(v);
                Ok(())
            },
        )?;
        let path = tmp.join(format!("hsbench-{id}-unix.sock"));
        let unix_arg = path.display().to_string();
        unix.push(kernel_stream(
            s,
            run,
            "kernel Unix socket",
            &["--unix", &unix_arg],
            move || {
                let c = std::os::unix::net::UnixStream::connect(&path)
                    .context("connecting to the Unix socket")?;
                // A Unix stream queues on the sender's buffer: give it what
                // the fifos get (the kernel caps it at wmem_max, then doubles).
                nix::sys::socket::setsockopt(
                    &c,
                    nix::sys::socket::sockopt::SndBuf,
                    &CUT_THROUGH_BUFFER,
                )
                .context("setting SO_SNDBUF on the Unix socket")?;
                kernel::stream_one_way(c, bytes, |c| c.shutdown(std::net::Shutdown::Write))
            },
        )?);
        let addr: SocketAddr = "127.0.0.1:47091".parse().expect("valid address");
        tcp.push(kernel_stream(
            s,
            run,
            "kernel TCP over 127.0.0.1",
            &["--tcp", &addr.to_string()],
            move || {
                let c = kernel::connect(addr)?;
                kernel::stream_one_way(c, bytes, |c| c.shutdown(std::net::Shutdown::Write))
            },
        )?);
    }
    let metric = "one-way stream between two processes";
    Ok(Outcome {
        rows: vec![
            Row::new(
                B,
                metric,
                "GB/s",
                true,
                vec![
                    Figure {
                        side: "hoststack: two external apps, local scope, shared fifos".into(),
                        short: "cut-through".into(),
                        kernel: false,
                        values: hs,
                    },
                    Figure {
                        side: "kernel: Unix socket pair".into(),
                        short: "Unix socket".into(),
                        kernel: true,
                        values: unix,
                    },
                    Figure {
                        side: "kernel: TCP over 127.0.0.1".into(),
                        short: "TCP loopback".into(),
                        kernel: true,
                        values: tcp,
                    },
                ],
            )
            .labelled("cut-through GB/s"),
        ],
        notes: vec![format!(
            "cut-through: {} MiB per run in 64 KiB writes, {} MiB fifos and Unix send buffer; hoststack = the throughput_client and echo_server --discard examples attached with local scope to `hoststack serve --mode interrupt`",
            bytes >> 20,
            CUT_THROUGH_BUFFER >> 20
        )],
    })
}
