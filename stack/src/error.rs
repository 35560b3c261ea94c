//! The stack's one error type.

use thiserror::Error;

/// Result of a stack operation.
pub type StackResult<T> = Result<T, StackError>;

/// Why a stack could not start or run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StackError {
    /// The driver could not be opened or failed.
    #[error(transparent)]
    Driver(#[from] hoststack_drivers::DriverError),
    /// A configuration value is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The stack would leave queues of an interface unserved.
    #[error("{0}")]
    UnservedQueues(String),
    /// A socket operation was refused.
    #[error("{0}")]
    Socket(String),
    /// The lab (namespaces, veth) could not be set up.
    #[error("lab: {0}")]
    Lab(String),
    /// A worker thread died.
    #[error("worker {0} stopped unexpectedly")]
    WorkerDied(usize),
    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Os {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl StackError {
    /// Wraps an OS error with what was being done.
    pub fn os(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Os {
            context: context.into(),
            source,
        }
    }
}
