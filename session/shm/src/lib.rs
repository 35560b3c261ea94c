//! hoststack's shared memory: the objects an external app process and the
//! stack both map or hold, and every `unsafe` block of the session side.
//!
//! - [`segment`]: a sealed memfd mapped `MAP_SHARED`, with a process-private
//!   offset allocator; the only place an offset becomes a pointer.
//! - [`fifo`]: single-producer single-consumer byte fifos inside a segment,
//!   with the has-event and want-notification flags of VPP's svm fifos.
//! - [`message_queue`]: fixed-slot SPSC message rings inside a segment,
//!   optionally signalled through an eventfd.
//! - [`eventfd`]: the eventfd(2) wakeup object.
//! - [`fd_passing`]: `SCM_RIGHTS` over a Unix stream socket.
//!
//! Layout and synchronisation live here; meaning does not: what a message
//! says, which fifo belongs to which session and who may read what is the
//! business of `hoststack-app-proto` and the session layer above. A value
//! read from shared memory is checked before it is used and a bad one is
//! [`ShmError::Corrupted`], never a panic or an out-of-bounds access: the
//! peer process may have written anything.

#![deny(unsafe_code)]

pub mod error;
pub mod eventfd;
pub mod fd_passing;
pub mod fifo;
pub mod message_queue;
pub mod segment;

pub use error::{ShmError, ShmResult};
