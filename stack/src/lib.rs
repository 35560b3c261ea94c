//! hoststack's stack: per-core workers, each owning one NIC queue, one
//! smoltcp interface (Ethernet, ARP, IPv4, IPv6 with neighbour discovery,
//! TCP, UDP) and the services that run on it; plus the veth lab and the
//! `hoststack` command line.
//!
//! It drives `hoststack-drivers` and never touches a NIC ring itself; it
//! uses no `unsafe` (system calls go through rustix).

#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod device;
pub mod error;
pub mod fault_injection;
pub mod lab;
pub mod pcap;
pub mod runtime;
pub mod sleeper;
mod sys;
pub mod tcp_listener;
pub mod transport;
pub mod worker;
pub mod zero_window;

pub use config::{AddrPrefix, DriverKind, StackConfig, TcpTuning};
pub use error::{StackError, StackResult};
pub use runtime::Stack;
pub use worker::WorkerMode;
