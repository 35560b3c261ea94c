//! hoststack's benchmarks and pktgen, always beside the Linux kernel.
//!
//! - [`pktgen`]: UDP frames over AF_XDP (transmit from pre-built frames,
//!   receive and count, latency probes), built on [`frames`];
//! - [`kernel`]: the kernel's side of every comparison (`sendmmsg`,
//!   `recvmmsg`, TCP servers and clients), in Rust;
//! - [`suite`]: the side-by-side benchmarks on a veth lab;
//! - [`servers`]: unmodified nginx, redis and memcached through the
//!   LD_PRELOAD library beside the same servers on the kernel;
//! - [`report`]: the table, the JSON file and the chart;
//! - [`env`]: lab helpers, interface counters, the `hoststack` server
//!   process; [`stats`]: medians and percentiles.
//!
//! The crate uses no `unsafe`: packet I/O goes through `hoststack-drivers`,
//! system calls through `nix` and the standard library.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod env;
pub mod frames;
pub mod kernel;
pub mod pktgen;
pub mod report;
pub mod servers;
pub mod stats;
pub mod suite;
