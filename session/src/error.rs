//! The session layer's one error type.

use thiserror::Error;

/// Result of a session-layer operation.
pub type SessionResult<T> = Result<T, SessionError>;

/// Every way a session-layer call can fail. Variants mirror the errors
/// VPP's session layer returns, so an app author who knows one knows the
/// other.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// A value in the request is missing or out of range.
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// The app name or api client is already attached.
    #[error("application already attached: {0}")]
    AlreadyAttached(String),
    /// The combination of options cannot be honoured.
    #[error("unsupported configuration: {0}")]
    UnsupportedConfig(String),
    /// No namespace with that id.
    #[error("invalid namespace: {0}")]
    InvalidNamespace(String),
    /// The namespace exists but the secret does not match.
    #[error("wrong secret for namespace {0}")]
    WrongNamespaceSecret(String),
    /// No application with that index.
    #[error("no application with index {0}")]
    NoApp(u32),
    /// No listener for that handle or endpoint.
    #[error("no listener: {0}")]
    NoListener(String),
    /// The handle exists but belongs to another application.
    #[error("handle {0:#x} is not owned by the calling application")]
    NotOwner(u64),
    /// The app worker index is not one of the app's workers.
    #[error("invalid app worker {0}")]
    InvalidAppWorker(u32),
    /// No session with that handle.
    #[error("no session with handle {0:#x}")]
    NoSession(u64),
    /// A connect to the zero address, or to an address of the wrong family.
    #[error("invalid remote ip: {0}")]
    InvalidRemoteIp(String),
    /// Another application already listens on the endpoint.
    #[error("already listening on {0}")]
    AlreadyListening(String),
    /// The endpoint's ip is not on the namespace's interface.
    #[error("endpoint {0} is not on the namespace's interface")]
    EndpointNotOnInterface(String),
    /// The namespace cannot be deleted while apps are attached to it.
    #[error("namespace {id} is in use by {apps} app(s)")]
    NamespaceInUse {
        /// The namespace's id.
        id: String,
        /// How many apps are attached to it.
        apps: usize,
    },
    /// No memory left in the app's segments and no new segment may be added.
    #[error("segment manager out of memory: {0}")]
    NoSpace(String),
    /// A shared-memory structure failed a bounds or consistency check.
    #[error("corrupted shared memory: {0}")]
    Corrupted(String),
    /// A message queue is full.
    #[error("message queue full")]
    QueueFull,
    /// The transport refused the operation.
    #[error("transport error: {0}")]
    Transport(String),
    /// An operating-system call failed.
    #[error("{context}: {kind:?}")]
    Os {
        /// What was being done.
        context: &'static str,
        /// The error kind the OS gave.
        kind: std::io::ErrorKind,
    },
}

impl SessionError {
    /// Wraps an OS error with what was being done.
    pub fn os(context: &'static str, err: &std::io::Error) -> Self {
        Self::Os {
            context,
            kind: err.kind(),
        }
    }
}
