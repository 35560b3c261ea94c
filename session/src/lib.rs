//! hoststack's session layer core, modelled on FD.io VPP's host stack.
//!
//! It owns everything between a transport and an application: applications
//! and their workers, app namespaces, app listeners and the round-robin choice
//! of the worker that gets a new session, the lookup tables (established
//! sessions by 5/6-tuple, listeners by endpoint, per-namespace local tables),
//! each app worker's segment manager (which fifos live where), cut-through
//! sessions between two local apps, the cert/key store and the crypto-engine
//! registry, and the app socket server external apps attach through.
//!
//! It must never touch packets, smoltcp or a driver: transports plug in from
//! `hoststack-stack` through the [`transport`] trait. It never touches raw
//! memory either: segments, fifos and message queues come from
//! `hoststack-shm`, and what apps and the stack say to each other (options,
//! handles, events, messages, errors) from `hoststack-app-proto`. The
//! decision logic here is plain data with unit tests.

#![forbid(unsafe_code)]

pub mod app_callbacks;
pub mod app_event_queue;
pub mod app_listener;
pub mod app_socket;
pub mod app_socket_outbox;
pub mod app_worker;
pub mod application;
pub mod cert;
pub mod control;
pub mod corruption_verdict;
pub mod cut_through_segments;
pub mod dirty_sessions;
pub mod listen_ack;
pub mod log_limit;
pub mod lookup;
pub mod namespace;
pub mod pending_rx_queues;
pub mod segment_manager;
pub mod session;
pub mod session_info;
pub mod session_layer;
pub mod session_owners;
pub mod session_worker;
pub mod stalled_queues;
pub mod thread_reach;
pub mod transport;
