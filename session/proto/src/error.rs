//! The session layer's errors as apps see them: [`SessionError`], and the
//! [`ErrorCode`] numbers that carry it in events and replies.
//!
//! One type serves both sides of the app socket: the session layer returns
//! it, the wire carries its code and detail, and the app library rebuilds
//! the same variant, so an app matches on `SessionError::AlreadyListening`
//! whether it runs in-process or in another process.

use hoststack_shm::ShmError;
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

impl From<ShmError> for SessionError {
    fn from(e: ShmError) -> Self {
        match e {
            ShmError::InvalidValue(s) => Self::InvalidValue(s),
            ShmError::Corrupted(s) => Self::Corrupted(s),
            ShmError::NoSpace(s) => Self::NoSpace(s),
            ShmError::QueueFull => Self::QueueFull,
            ShmError::Os { context, kind } => Self::Os { context, kind },
            other => Self::Corrupted(other.to_string()),
        }
    }
}

/// Error codes carried in events and replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// Success.
    Ok = 0,
    /// See [`SessionError::InvalidValue`].
    InvalidValue = 1,
    /// See [`SessionError::AlreadyAttached`].
    AlreadyAttached = 2,
    /// See [`SessionError::UnsupportedConfig`].
    UnsupportedConfig = 3,
    /// See [`SessionError::InvalidNamespace`].
    InvalidNamespace = 4,
    /// See [`SessionError::WrongNamespaceSecret`].
    WrongNamespaceSecret = 5,
    /// See [`SessionError::NoApp`].
    NoApp = 6,
    /// See [`SessionError::NoListener`].
    NoListener = 7,
    /// See [`SessionError::NotOwner`].
    NotOwner = 8,
    /// See [`SessionError::InvalidAppWorker`].
    InvalidAppWorker = 9,
    /// See [`SessionError::NoSession`].
    NoSession = 10,
    /// See [`SessionError::InvalidRemoteIp`].
    InvalidRemoteIp = 11,
    /// See [`SessionError::AlreadyListening`].
    AlreadyListening = 12,
    /// See [`SessionError::EndpointNotOnInterface`].
    EndpointNotOnInterface = 13,
    /// See [`SessionError::NoSpace`].
    NoSpace = 14,
    /// See [`SessionError::Corrupted`].
    Corrupted = 15,
    /// See [`SessionError::QueueFull`].
    QueueFull = 16,
    /// See [`SessionError::Transport`] (connect refused, timed out...).
    Transport = 17,
    /// Anything else.
    Other = 18,
}

impl ErrorCode {
    /// The code for an error.
    pub fn of(e: &SessionError) -> Self {
        match e {
            SessionError::InvalidValue(_) => Self::InvalidValue,
            SessionError::AlreadyAttached(_) => Self::AlreadyAttached,
            SessionError::UnsupportedConfig(_) => Self::UnsupportedConfig,
            SessionError::InvalidNamespace(_) => Self::InvalidNamespace,
            SessionError::WrongNamespaceSecret(_) => Self::WrongNamespaceSecret,
            SessionError::NoApp(_) => Self::NoApp,
            SessionError::NoListener(_) => Self::NoListener,
            SessionError::NotOwner(_) => Self::NotOwner,
            SessionError::InvalidAppWorker(_) => Self::InvalidAppWorker,
            SessionError::NoSession(_) => Self::NoSession,
            SessionError::InvalidRemoteIp(_) => Self::InvalidRemoteIp,
            SessionError::AlreadyListening(_) => Self::AlreadyListening,
            SessionError::EndpointNotOnInterface(_) => Self::EndpointNotOnInterface,
            SessionError::NoSpace(_) => Self::NoSpace,
            SessionError::Corrupted(_) => Self::Corrupted,
            SessionError::QueueFull => Self::QueueFull,
            SessionError::Transport(_) => Self::Transport,
            _ => Self::Other,
        }
    }

    /// Rebuilds an error from a code and a detail string.
    pub fn to_error(code: u32, detail: String) -> Option<SessionError> {
        Some(match code {
            0 => return None,
            1 => SessionError::InvalidValue(detail),
            2 => SessionError::AlreadyAttached(detail),
            3 => SessionError::UnsupportedConfig(detail),
            4 => SessionError::InvalidNamespace(detail),
            5 => SessionError::WrongNamespaceSecret(detail),
            6 => SessionError::NoApp(detail.parse().unwrap_or(0)),
            7 => SessionError::NoListener(detail),
            8 => SessionError::NotOwner(
                u64::from_str_radix(detail.trim_start_matches("0x"), 16).unwrap_or(0),
            ),
            9 => SessionError::InvalidAppWorker(detail.parse().unwrap_or(0)),
            10 => SessionError::NoSession(
                u64::from_str_radix(detail.trim_start_matches("0x"), 16).unwrap_or(0),
            ),
            11 => SessionError::InvalidRemoteIp(detail),
            12 => SessionError::AlreadyListening(detail),
            13 => SessionError::EndpointNotOnInterface(detail),
            14 => SessionError::NoSpace(detail),
            15 => SessionError::Corrupted(detail),
            16 => SessionError::QueueFull,
            _ => SessionError::Transport(detail),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_for_the_typed_errors() {
        let e = SessionError::NotOwner(0xabc);
        let back = ErrorCode::to_error(ErrorCode::of(&e) as u32, "0xabc".into()).unwrap();
        assert_eq!(back, e);
        assert_eq!(ErrorCode::to_error(0, String::new()), None);
    }
}
