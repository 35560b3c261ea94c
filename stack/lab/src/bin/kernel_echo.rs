//! `kernel_echo`: the Linux kernel's side of an echo comparison, written as
//! a careful user writes one: non-blocking sockets in one epoll loop per
//! thread, `SO_REUSEPORT` listeners (one per thread), `TCP_NODELAY`, each
//! thread pinned to its core.
//!
//! ```text
//! kernel_echo --listen IP:PORT [--threads N] [--cores 0,1]
//! ```
//!
//! Prints `ready` once every thread listens, then echoes until killed. For
//! the kernel's busy-polling receive, set `net.core.busy_read` and
//! `net.core.busy_poll` in its namespace.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use hashbrown::HashMap;
use rustix::buffer::spare_capacity;
use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};

const USAGE: &str = "usage: kernel_echo --listen IP:PORT [--threads N] [--cores 0,1]";

fn usage_error(why: &str) -> ! {
    eprintln!("kernel_echo: {why}\n{USAGE}");
    std::process::exit(2)
}

struct Args {
    listen: SocketAddr,
    threads: usize,
    cores: Vec<usize>,
}

fn args() -> Args {
    let mut a = Args {
        listen: SocketAddr::from(([0, 0, 0, 0], 0)),
        threads: 1,
        cores: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it
            .next()
            .unwrap_or_else(|| usage_error(&format!("{k} needs a value")));
        fn parsed<T: std::str::FromStr>(k: &str, v: &str) -> T {
            v.parse()
                .unwrap_or_else(|_| usage_error(&format!("{k}: cannot parse {v:?}")))
        }
        match k.as_str() {
            "--listen" => a.listen = parsed(&k, &v),
            "--threads" => a.threads = parsed(&k, &v),
            "--cores" => a.cores = v.split(',').map(|c| parsed(&k, c)).collect(),
            _ => usage_error(&format!("unknown argument {k}")),
        }
    }
    if a.listen.port() == 0 || a.threads == 0 {
        usage_error("--listen IP:PORT is required, and at least one thread");
    }
    a
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("kernel_echo: {what}: {e}");
    std::process::exit(1)
}

fn listener(a: &Args) -> OwnedFd {
    let family = if a.listen.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )
    .unwrap_or_else(|e| fail("socket", e));
    let _ = sockopt::set_socket_reuseaddr(&fd, true);
    sockopt::set_socket_reuseport(&fd, true).unwrap_or_else(|e| fail("SO_REUSEPORT", e));
    rustix::net::bind(&fd, &a.listen).unwrap_or_else(|e| fail("bind", e));
    rustix::net::listen(&fd, 4096).unwrap_or_else(|e| fail("listen", e));
    fd
}

const LISTENER: u64 = u64::MAX;

fn serve(lfd: OwnedFd) {
    let poll = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap_or_else(|e| fail("epoll", e));
    epoll::add(
        &poll,
        &lfd,
        epoll::EventData::new_u64(LISTENER),
        epoll::EventFlags::IN,
    )
    .unwrap_or_else(|e| fail("epoll add", e));
    let mut conns: HashMap<u64, OwnedFd> = HashMap::new();
    let mut next = 0u64;
    let mut events: Vec<epoll::Event> = Vec::with_capacity(1024);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        events.clear();
        match epoll::wait(&poll, spare_capacity(&mut events), None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => fail("epoll_wait", e),
        }
        for ev in &events {
            let key = ev.data.u64();
            if key == LISTENER {
                loop {
                    match rustix::net::accept_with(
                        &lfd,
                        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                    ) {
                        Ok(c) => {
                            let _ = sockopt::set_tcp_nodelay(&c, true);
                            next += 1;
                            if epoll::add(
                                &poll,
                                &c,
                                epoll::EventData::new_u64(next),
                                epoll::EventFlags::IN,
                            )
                            .is_ok()
                            {
                                conns.insert(next, c);
                            }
                        }
                        Err(Errno::AGAIN) => break,
                        Err(_) => break,
                    }
                }
                continue;
            }
            let Some(c) = conns.get(&key) else { continue };
            let mut close = false;
            loop {
                match rustix::io::read(c, &mut buf) {
                    Ok(0) => {
                        close = true;
                        break;
                    }
                    Ok(n) => {
                        if !write_all(c.as_fd(), &buf[..n]) {
                            close = true;
                            break;
                        }
                    }
                    Err(Errno::AGAIN) => break,
                    Err(_) => {
                        close = true;
                        break;
                    }
                }
            }
            if close {
                conns.remove(&key);
            }
        }
    }
}

/// Writes everything, waiting out a full send buffer: an echo server's
/// peer reads what it sent, so the buffer drains.
fn write_all(fd: std::os::fd::BorrowedFd<'_>, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::AGAIN) => {
                let mut p = [rustix::event::PollFd::new(
                    &fd,
                    rustix::event::PollFlags::OUT,
                )];
                let _ = rustix::event::poll(&mut p, None);
            }
            Err(_) => return false,
        }
    }
    true
}

fn main() {
    let a = args();
    let threads: Vec<_> = (0..a.threads)
        .map(|i| {
            let lfd = listener(&a);
            let core = a.cores.get(i).copied();
            std::thread::spawn(move || {
                if let Some(c) = core {
                    core_affinity::set_for_current(core_affinity::CoreId { id: c });
                }
                serve(lfd)
            })
        })
        .collect();
    println!("ready");
    for t in threads {
        let _ = t.join();
    }
}
