//! An external echo server on hoststack: attach over the app socket, listen,
//! echo every session, one thread per app worker.
//!
//! `echo_server --socket PATH [--listen 0.0.0.0:7] [--udp IP:PORT]
//!  [--workers N] [--local-scope] [--discard] [--fifo-size BYTES]
//!  [--event-queue-size SLOTS] [--prealloc-fifo-pairs N] [--name NAME]
//!  [--quiet]`
//!
//! With `--udp` it also echoes UDP datagrams on that endpoint, each back to
//! its sender.
//!
//! With `--prealloc-fifo-pairs N` every worker's fifos come from its first
//! segment (N pairs made there up front), the one holding its event queue.
//!
//! With `--discard` it is a sink: what arrives is read (copied out, as an
//! app would) and dropped, never sent back.
//!
//! Prints `ready` once every worker listens, then one line per accepted
//! session: `accepted worker=W total=N` (not with `--quiet`, as a
//! benchmark runs it: a line per connection costs a write each).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hoststack_app::{
    App, AppOptions, Datagram, Event, Session, SessionHandle, SessionResult, TransportProto, Worker,
};

struct Args {
    socket: String,
    listen: SocketAddr,
    udp: Option<SocketAddr>,
    workers: u32,
    local: bool,
    discard: bool,
    fifo_size: u32,
    event_queue_size: u32,
    prealloc_fifo_pairs: u32,
    name: String,
    quiet: bool,
}

const USAGE: &str = "usage: echo_server --socket PATH [--listen IP:PORT] [--udp IP:PORT] \
[--workers N] [--local-scope] [--discard] [--fifo-size BYTES] [--event-queue-size SLOTS] \
[--prealloc-fifo-pairs N] [--name NAME] [--quiet]";

/// Bad command line: the reason and the usage on stderr, exit status 2.
fn usage_error(why: &str) -> ! {
    eprintln!("echo_server: {why}\n{USAGE}");
    std::process::exit(2)
}

fn parsed<T: std::str::FromStr>(flag: &str, v: String) -> T {
    v.parse()
        .unwrap_or_else(|_| usage_error(&format!("{flag}: cannot parse {v:?}")))
}

fn args() -> Args {
    let mut a = Args {
        socket: String::new(),
        listen: "0.0.0.0:7".parse().expect("valid"),
        udp: None,
        workers: 1,
        local: false,
        discard: false,
        fifo_size: 512 << 10,
        event_queue_size: 0,
        prealloc_fifo_pairs: 0,
        name: "echo-server".into(),
        quiet: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || {
            it.next()
                .unwrap_or_else(|| usage_error(&format!("{k} needs a value")))
        };
        match k.as_str() {
            "--socket" => a.socket = v(),
            "--listen" => a.listen = parsed(&k, v()),
            "--udp" => a.udp = Some(parsed(&k, v())),
            "--workers" => a.workers = parsed(&k, v()),
            "--fifo-size" => a.fifo_size = parsed(&k, v()),
            "--event-queue-size" => a.event_queue_size = parsed(&k, v()),
            "--prealloc-fifo-pairs" => a.prealloc_fifo_pairs = parsed(&k, v()),
            "--name" => a.name = v(),
            "--local-scope" => a.local = true,
            "--discard" => a.discard = true,
            "--quiet" => a.quiet = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            _ => usage_error(&format!("unknown argument {k}")),
        }
    }
    if a.socket.is_empty() {
        usage_error("--socket PATH is required");
    }
    a
}

/// Echoes what fits (or, discarding, drops everything); true when the
/// session still has unsent bytes.
fn echo(s: &mut Session, buf: &mut [u8], discard: bool) -> SessionResult<bool> {
    if discard {
        while s.read(buf)? > 0 {}
        return Ok(false);
    }
    loop {
        let n = s.readable().min(s.write_space()).min(buf.len());
        if n == 0 {
            return Ok(s.readable() > 0);
        }
        let got = s.read(&mut buf[..n])?;
        s.write(&buf[..got])?;
    }
}

/// Echoes every waiting datagram back to its sender; a datagram that finds
/// the tx fifo full waits in `held` until the session is writable again.
fn echo_datagrams(
    s: &mut Session,
    held: &mut HashMap<SessionHandle, (Datagram, Vec<u8>)>,
    buf: &mut [u8],
    discard: bool,
) -> SessionResult<()> {
    if let Some((d, payload)) = held.remove(&s.handle()) {
        if !s.send_datagram(d.remote, d.local, &payload)? {
            held.insert(s.handle(), (d, payload));
            s.want_writable()?;
            return Ok(());
        }
    }
    while let Some((n, d)) = s.recv_datagram(buf)? {
        if discard {
            continue;
        }
        if !s.send_datagram(d.remote, d.local, &buf[..n])? {
            held.insert(s.handle(), (d, buf[..n].to_vec()));
            s.want_writable()?;
            break;
        }
    }
    Ok(())
}

fn serve(
    mut w: Worker,
    listen: SocketAddr,
    udp: Option<SocketAddr>,
    (discard, quiet): (bool, bool),
    total: Arc<AtomicU64>,
    ready: std::sync::mpsc::Sender<()>,
) -> SessionResult<()> {
    w.listen(listen)?;
    if let Some(u) = udp {
        w.listen_proto(TransportProto::Udp, u)?;
    }
    let _ = ready.send(());
    let mut sessions: HashMap<_, Session> = HashMap::new();
    let mut held = HashMap::new();
    // Sessions whose peer closed: closed once everything is echoed.
    let mut closing = std::collections::HashSet::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        for ev in w.wait(None)? {
            match ev {
                Event::Accepted(s) => {
                    let n = total.fetch_add(1, Ordering::Relaxed) + 1;
                    if !quiet {
                        println!("accepted worker={} total={n}", w.index());
                    }
                    sessions.insert(s.handle(), s);
                }
                Event::Readable(h) | Event::Writable(h) | Event::Closed(h) => {
                    if matches!(ev, Event::Closed(_)) {
                        closing.insert(h);
                    }
                    let Some(s) = sessions.get_mut(&h) else {
                        continue;
                    };
                    if s.proto() == TransportProto::Udp {
                        echo_datagrams(s, &mut held, &mut buf, discard)?;
                        continue;
                    }
                    let mut left = echo(s, &mut buf, discard)?;
                    if left && s.want_writable()? {
                        left = echo(s, &mut buf, discard)?;
                    }
                    if !left && closing.remove(&h) {
                        if let Some(s) = sessions.remove(&h) {
                            s.close()?;
                        }
                    }
                }
                Event::Reset(h) | Event::Gone(h) => {
                    sessions.remove(&h);
                    closing.remove(&h);
                    held.remove(&h);
                }
                Event::FellBehind {
                    postponed,
                    max_wait,
                } => {
                    eprintln!(
                        "worker {} fell behind: {postponed} events waited up to {max_wait:?}",
                        w.index()
                    );
                }
                Event::Connected(..) => {}
            }
        }
    }
}

fn main() -> SessionResult<()> {
    let a = args();
    let opts = AppOptions {
        scope_local: a.local,
        scope_global: true,
        use_eventfd: true,
        rx_fifo_size: a.fifo_size,
        tx_fifo_size: a.fifo_size,
        // 0: the stack's default.
        event_queue_size: a.event_queue_size,
        prealloc_fifo_pairs: a.prealloc_fifo_pairs,
        ..AppOptions::default()
    };
    let mut app = App::attach(&a.socket, &a.name, opts)?;
    let mut workers = vec![app.worker().expect("first worker")];
    for _ in 1..a.workers {
        workers.push(app.add_worker()?);
    }
    let total = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let threads: Vec<_> = workers
        .into_iter()
        .map(|w| {
            let (t, tx) = (total.clone(), tx.clone());
            let (listen, udp, flags) = (a.listen, a.udp, (a.discard, a.quiet));
            std::thread::spawn(move || serve(w, listen, udp, flags, t, tx))
        })
        .collect();
    for _ in 0..a.workers {
        rx.recv().expect("a worker failed to listen");
    }
    println!("ready");
    for t in threads {
        t.join().expect("worker thread")?;
    }
    drop(app);
    Ok(())
}
