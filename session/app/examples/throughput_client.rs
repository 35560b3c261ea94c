//! An external client on hoststack: connect, stream a seeded byte pattern
//! to an echo server, verify every byte that comes back, print a JSON line.
//!
//! `throughput_client --socket PATH --connect IP:PORT [--bytes N]
//!  [--local-scope] [--one-way] [--fifo-size BYTES] [--name NAME] [--hold PATH]`
//!
//! With `--one-way` it only writes (to a discarding server) and reports how
//! fast the bytes left: the data is not verified.
//!
//! With `--hold PATH` it keeps the verified session open until PATH exists
//! (printing `{"holding": true}` first, so a test can look at its memory),
//! then closes it, prints `{"closed": true}` and goes on serving its events
//! (segment removals among them) until PATH is gone.

use std::net::SocketAddr;
use std::time::Instant;

use hoststack_app::{App, AppOptions, Event, SessionResult};
use hoststack_app_proto::pattern::PatternStream;

const USAGE: &str = "usage: throughput_client --socket PATH --connect IP:PORT [--bytes N] \
[--local-scope] [--one-way] [--fifo-size BYTES] [--name NAME] [--hold PATH]";

/// Bad command line: the reason and the usage on stderr, exit status 2.
fn usage_error(why: &str) -> ! {
    eprintln!("throughput_client: {why}\n{USAGE}");
    std::process::exit(2)
}

fn parsed<T: std::str::FromStr>(flag: &str, v: String) -> T {
    v.parse()
        .unwrap_or_else(|_| usage_error(&format!("{flag}: cannot parse {v:?}")))
}

fn main() -> SessionResult<()> {
    let mut socket = String::new();
    let mut connect: Option<SocketAddr> = None;
    let mut total: u64 = 64 << 20;
    let mut local = false;
    let mut one_way = false;
    let mut fifo_size: u32 = 1 << 20;
    let mut name = "throughput-client".to_string();
    let mut hold: Option<std::path::PathBuf> = None;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || {
            it.next()
                .unwrap_or_else(|| usage_error(&format!("{k} needs a value")))
        };
        match k.as_str() {
            "--socket" => socket = v(),
            "--connect" => connect = Some(parsed(&k, v())),
            "--bytes" => total = parsed(&k, v()),
            "--fifo-size" => fifo_size = parsed(&k, v()),
            "--name" => name = v(),
            "--hold" => hold = Some(v().into()),
            "--local-scope" => local = true,
            "--one-way" => one_way = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            _ => usage_error(&format!("unknown argument {k}")),
        }
    }
    let remote = connect.unwrap_or_else(|| usage_error("--connect IP:PORT is required"));
    let opts = AppOptions {
        scope_local: local,
        scope_global: true,
        use_eventfd: true,
        rx_fifo_size: fifo_size,
        tx_fifo_size: fifo_size,
        ..AppOptions::default()
    };
    let mut app = App::attach(&socket, &name, opts)?;
    let mut w = app.worker().expect("first worker");
    let started = Instant::now();
    let mut s = w.connect(remote)?;
    let (mut tx, mut rx) = (PatternStream::new(5), PatternStream::new(5));
    let (mut sent, mut verified) = (0u64, 0u64);
    // 64 KiB writes: many writes per fifo's worth, as an app would do.
    let mut out = vec![0u8; 64 * 1024];
    let mut back = vec![0u8; 256 * 1024];
    let mut expect = vec![0u8; 256 * 1024];
    let mut error = None;
    if one_way {
        // Nothing comes back: count what the peer has taken as verified.
        let capacity = s.write_space();
        while sent < total {
            let room = s.write_space().min(out.len()).min((total - sent) as usize);
            if room == 0 {
                if !s.want_writable()? {
                    w.wait(Some(std::time::Duration::from_millis(100)))?;
                }
                continue;
            }
            sent += s.write(&out[..room])? as u64;
        }
        while s.write_space() < capacity {
            if !s.want_writable()? {
                w.wait(Some(std::time::Duration::from_millis(100)))?;
            }
        }
        verified = sent;
    }
    'run: while verified < total {
        // Write what fits, read what came, then wait only when neither moved.
        let mut moved = false;
        let room = s.write_space().min(out.len()).min((total - sent) as usize);
        if room > 0 {
            tx.fill(&mut out[..room]);
            let n = s.write(&out[..room])?;
            assert_eq!(n, room, "the fifo took less than it said it had room for");
            sent += n as u64;
            moved = true;
        }
        loop {
            let n = s.read(&mut back)?;
            if n == 0 {
                break;
            }
            rx.fill(&mut expect[..n]);
            if back[..n] != expect[..n] {
                error = Some(format!("echo differs near byte {verified}"));
                break 'run;
            }
            verified += n as u64;
            moved = true;
        }
        if !moved {
            if sent < total {
                s.want_writable()?;
            }
            for ev in w.wait(Some(std::time::Duration::from_millis(100)))? {
                if let Event::Closed(_) | Event::Reset(_) = ev {
                    if s.readable() == 0 && verified < total {
                        error = Some(format!("peer closed after {verified} of {total} bytes"));
                        break 'run;
                    }
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let h = s.handle();
    let pause = std::time::Duration::from_millis(50);
    if let Some(path) = &hold {
        println!("{{\"holding\": true}}");
        while !path.exists() {
            w.wait(Some(pause))?;
        }
    }
    s.close()?;
    if let Some(path) = &hold {
        println!("{{\"closed\": true}}");
        while path.exists() {
            w.wait(Some(pause))?;
        }
    }
    let st = app.stats();
    println!(
        "{{\"bytes\": {total}, \"verified\": {verified}, \"seconds\": {secs:.6}, \"gbytes_per_s\": {:.4}, \"writes\": {}, \"reads\": {}, \"notifications\": {}, \"data_path_syscalls\": {}, \"wait_syscalls\": {}, \"ok\": {}, \"error\": {:?}, \"session\": \"{h}\"}}",
        verified as f64 / secs / 1e9,
        st.writes,
        st.reads,
        st.notifications,
        st.data_path_syscalls,
        st.wait_syscalls,
        error.is_none() && verified == total,
        error.unwrap_or_default()
    );
    let _ = app.detach();
    Ok(())
}
