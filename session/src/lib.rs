//! hoststack's session layer, modelled on FD.io VPP's host stack.
//!
//! It owns everything between a transport and an application: applications
//! and their workers, app namespaces, app listeners and the round-robin choice
//! of the worker that gets a new session, the lookup tables (established
//! sessions by 5/6-tuple, listeners by endpoint, per-namespace local tables),
//! shared-memory segments (memfd) with the fifos and message queues that live
//! in them, cut-through sessions between two local apps, the cert/key store
//! and the crypto-engine registry.
//!
//! It must never touch packets, smoltcp or a driver: transports plug in from
//! `hoststack-stack` through the transport trait. The decision logic here is
//! plain data with unit tests; only the modules that own a shared-memory
//! layout (`fifo`, `message_queue`, `segment`) or a kernel object
//! (`eventfd`) use `unsafe`, each unsafe block with a safety comment.

#![deny(unsafe_code)]

pub mod app_client;
pub mod app_event;
pub mod app_listener;
pub mod app_rx_queue;
pub mod app_socket;
pub mod app_wire;
pub mod app_worker;
pub mod application;
pub mod builtin_apps;
pub mod cert;
pub mod control;
pub mod endpoint;
pub mod error;
pub mod eventfd;
pub mod fd_passing;
pub mod fifo;
pub mod handle;
pub mod lookup;
pub mod message_queue;
pub mod namespace;
pub mod pending_rx_queues;
pub mod segment;
pub mod segment_manager;
pub mod session;
pub mod session_layer;
pub mod session_worker;
pub mod thread_reach;
pub mod transport;

pub use error::{SessionError, SessionResult};
