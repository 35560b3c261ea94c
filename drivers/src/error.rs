//! The drivers' one error type. Every variant names the cause and, where
//! there is one, the fix.

use thiserror::Error;

/// Result of a driver operation.
pub type DriverResult<T> = Result<T, DriverError>;

/// Why a driver could not be opened or could not move frames.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The interface does not exist in this network namespace.
    #[error("interface '{0}' not found (check `ip link`, or create one with `hoststack lab up`)")]
    NoSuchInterface(String),
    /// The process lacks a capability the backend needs.
    #[error("{what} needs root (CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF): run as root or with sudo")]
    PermissionDenied {
        /// What was being opened.
        what: String,
    },
    /// The queue is bound by another socket and stayed busy.
    #[error(
        "queue {queue} of '{ifname}' is busy: another AF_XDP socket is bound to it (stop the other hoststack, or pick another queue)"
    )]
    QueueBusy {
        /// Interface name.
        ifname: String,
        /// Queue index.
        queue: u32,
    },
    /// Another hoststack's XDP program is attached to the interface.
    #[error(
        "'{ifname}' is busy: another hoststack's XDP program is attached to it (stop the other hoststack first)"
    )]
    InterfaceBusy {
        /// Interface name.
        ifname: String,
    },
    /// Some other XDP program is attached to the interface.
    #[error(
        "'{ifname}' already has {program} attached; hoststack attaches its own: remove it with `ip link set dev {ifname} xdp off` (or `xdpgeneric off`)"
    )]
    XdpProgramPresent {
        /// Interface name.
        ifname: String,
        /// What is attached.
        program: String,
    },
    /// The interface has fewer queues than asked for.
    #[error(
        "'{ifname}' has {available} queue(s); queue {queue} does not exist (use --queues {available} or fewer)"
    )]
    NoSuchQueue {
        /// Interface name.
        ifname: String,
        /// Requested queue.
        queue: u32,
        /// Queues the interface has.
        available: u32,
    },
    /// The requested XDP attach mode is not available on this interface.
    #[error("XDP {mode} mode is not supported on '{ifname}': {detail} (try --xdp-mode generic)")]
    XdpModeUnsupported {
        /// Interface name.
        ifname: String,
        /// The mode asked for.
        mode: String,
        /// What the kernel said.
        detail: String,
    },
    /// The interface's MTU does not fit one frame buffer.
    #[error(
        "MTU {mtu} of '{ifname}' does not fit a {frame}-byte frame (lower it: ip link set {ifname} mtu {max})"
    )]
    MtuTooLarge {
        /// Interface name.
        ifname: String,
        /// Its MTU.
        mtu: usize,
        /// Frame buffer size.
        frame: usize,
        /// Largest MTU that fits.
        max: usize,
    },
    /// A configuration value is out of range.
    #[error("invalid driver configuration: {0}")]
    InvalidConfig(String),
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

impl DriverError {
    /// Wraps an OS error with what was being done, turning EPERM/EACCES into
    /// [`DriverError::PermissionDenied`].
    pub fn os(context: impl Into<String>, source: std::io::Error) -> Self {
        let context = context.into();
        match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => Self::PermissionDenied { what: context },
            _ => Self::Os { context, source },
        }
    }
}
