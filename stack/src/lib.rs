//! hoststack's stack: per-core workers, each owning one NIC queue, one
//! smoltcp interface (Ethernet, ARP, IPv4, IPv6 with neighbour discovery,
//! TCP, UDP), the transports that plug smoltcp into the session layer, the
//! listener pools, the sleeper of interrupt mode, packet capture and the
//! builtin apps.
//!
//! The workers of one interface form a queue group ([`queue_group`]): which
//! queues are served ([`queues`]: all by default), a shared neighbour table
//! ([`neighbors`], kept in each smoltcp's cache by [`neighbor_answers`]),
//! the directory of which worker holds which TCP flow ([`flow_directory`]),
//! the hand-off rings between workers ([`handoff`]) and the routing of what
//! lands on another queue than its owner's ([`steering`]), none of it tied
//! to a driver.
//!
//! It drives `hoststack-drivers` and never touches a NIC ring itself, and it
//! never touches an app process's memory except through the session layer.
//! The command line, the daemon and the demo are the `hoststack` binary's;
//! the veth lab is `hoststack-lab`'s. The only `unsafe` is in [`sleeper`],
//! which owns the io_uring a sleeping worker waits in.

#![deny(unsafe_code)]

pub mod builtin_apps;
pub mod config;
pub mod device;
pub mod error;
pub mod fault_injection;
pub mod flow_directory;
pub mod handoff;
pub mod neighbor_answers;
pub mod neighbors;
pub mod pcap;
pub mod queue_group;
pub mod queues;
pub mod runtime;
pub mod sleeper;
pub mod steering;
mod sys;
pub mod tcp_frames;
pub mod tcp_listener;
pub mod tcp_transport;
pub mod transport;
pub mod worker;
pub mod zero_window;

pub use config::{AddrPrefix, DriverKind, StackConfig, TcpEngineKind, TcpTuning};
pub use error::{StackError, StackResult};
pub use runtime::Stack;
pub use worker::WorkerMode;
