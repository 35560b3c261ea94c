//! hoststack's benchmarks and pktgen, always beside the Linux kernel.
//!
//! - [`pktgen`]: UDP frames over AF_XDP (transmit from pre-built frames,
//!   receive and count, latency probes), built on [`frames`];
//! - [`kserver`]: the kernel's servers (epoll, default and busy-polling);
//!   [`afpacket`]: the kernel's raw-frame sender for the packet-generator
//!   row; [`kernel`]: the clients that drive either side;
//! - [`suite`]: the registry of side-by-side benchmarks on a veth lab and
//!   the sides they compare;
//! - [`report`]: the table, the JSON file and the chart;
//! - [`cpu`]: CPU time from /proc and the quiet-machine check;
//!   [`tuning`]: idle-CPU polling and busy-poll sysctls, always undone;
//!   [`env`]: lab helpers, interface counters, child processes;
//!   [`stats`]: medians and percentiles; [`memory`]: process and kernel
//!   memory from /proc.
//!
//! The crate uses no `unsafe`: packet I/O goes through `hoststack-drivers`,
//! system calls through `nix`, `rustix` and the standard library (one
//! socket option nix lacks is defined with nix's own `sockopt_impl!`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod afpacket;
pub mod cpu;
pub mod env;
pub mod frames;
pub mod kernel;
pub mod kserver;
pub mod memory;
pub mod pktgen;
pub mod report;
pub mod servers;
pub mod stats;
pub mod suite;
pub mod tuning;
