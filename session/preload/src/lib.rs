//! `libhoststack_preload.so`: runs unmodified socket programs (nginx,
//! redis, memcached, a tokio or python server) on hoststack with
//! `LD_PRELOAD` — the role of FD.io VPP's LDP.
//!
//! The library interposes the socket, fd and readiness calls of the C
//! library. TCP and UDP sockets over IPv4 and IPv6 become hoststack
//! sessions of one app worker per process (attached to the daemon over its app
//! socket on first use, or joined as a new worker in a forked child);
//! everything else goes to the C library untouched. Each hoststack socket
//! keeps a real kernel fd — an unbound kernel socket of the same type —
//! so fd numbers never collide with the process's files, `dup`, `close`,
//! `FD_CLOEXEC` and `O_NONBLOCK` keep their meaning, and options the
//! library does not use are kept (and validated) by the kernel.
//!
//! # Layers
//!
//! - [`exports`]: the `extern "C"` symbols. Each asks [`fdtable`]
//!   (lock-free) whether the fd is ours; a kernel fd goes straight to
//!   the real function found with `dlsym(RTLD_NEXT)` in [`sys`], with no
//!   allocation and no lock (safe in early init and in signal handlers,
//!   and never recursing into the library).
//! - [`ops`]: every call on a hoststack fd, in safe Rust, returning the
//!   errno a kernel socket would.
//! - [`state`]: the process's worker, sockets and epoll instances behind
//!   one lock, the event pump and exact readiness (see its doc).
//!
//! # Why this crate has `unsafe`
//!
//! hoststack forbids `unsafe` outside the modules that own a kernel ring
//! or shared memory. An LD_PRELOAD library cannot avoid it: it must
//! export C functions, read the C caller's pointers and call the next
//! definition of each symbol. Those are exactly the two modules that
//! allow it, [`sys`] (the real functions and a few system calls) and
//! [`exports`] (the C ABI); the crate denies `unsafe` everywhere else and
//! every block carries its safety argument.

#![deny(unsafe_code)]

pub mod config;
pub mod exports;
pub mod fdtable;
pub mod ops;
pub mod sockaddr;
pub mod state;
pub mod sys;
