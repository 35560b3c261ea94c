//! The shared-memory layer's one error type.

use thiserror::Error;

/// Result of a shared-memory operation.
pub type ShmResult<T> = Result<T, ShmError>;

/// Every way a segment, fifo, message queue, eventfd or fd-passing call can
/// fail. Values read from shared memory that fail a check are `Corrupted`:
/// the peer that shares the memory wrote them, so they are never trusted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShmError {
    /// A size, offset or argument is out of range.
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// A shared-memory structure failed a bounds or consistency check.
    #[error("corrupted shared memory: {0}")]
    Corrupted(String),
    /// No room left in a segment.
    #[error("segment out of memory: {0}")]
    NoSpace(String),
    /// A message queue is full.
    #[error("message queue full")]
    QueueFull,
    /// An operating-system call failed.
    #[error("{context}: {kind:?}")]
    Os {
        /// What was being done.
        context: &'static str,
        /// The error kind the OS gave.
        kind: std::io::ErrorKind,
    },
}

impl ShmError {
    /// Wraps an OS error with what was being done.
    pub fn os(context: &'static str, err: &std::io::Error) -> Self {
        Self::Os {
            context,
            kind: err.kind(),
        }
    }
}
