//! hoststack's app protocol: what an app and the stack say to each other,
//! in-process or across a process boundary.
//!
//! - [`endpoint`] and [`handle`]: addresses, 5-tuples and the typed handles
//!   (sessions, listeners, apps, workers) both sides name things by.
//! - [`options`]: the attach options and the rules that check them.
//! - [`error`]: [`SessionError`] and the [`error::ErrorCode`] that carries it.
//! - [`app_wire`]: the app socket's frames (attach, workers, fd passing).
//! - [`app_event`]: the stack -> app events of a worker's event queue.
//! - [`datagram`]: datagrams, header and payload, in a session's fifos.
//! - [`app_rx_queue`]: the app -> stack io and control messages and the
//!   per-thread queues that carry them.
//! - [`pattern`]: the byte stream transfer apps send and verify.
//!
//! Meaning lives here, memory does not: the rings, fifos and segments these
//! messages travel in belong to `hoststack-shm`. Every decoder takes bytes
//! an untrusted peer wrote and answers garbage with a typed error, never a
//! panic. The session layer and the app library both build on this crate;
//! it knows neither.

#![forbid(unsafe_code)]

pub mod app_event;
pub mod app_rx_queue;
pub mod app_wire;
pub mod datagram;
pub mod endpoint;
pub mod error;
pub mod handle;
pub mod options;
pub mod pattern;

pub use error::{SessionError, SessionResult};
