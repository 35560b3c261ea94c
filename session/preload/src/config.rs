//! Settings from the environment, read once when the library first needs
//! the stack.

use std::path::PathBuf;

/// What to do when the daemon cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Fail the call (after one clear message on stderr).
    Fail,
    /// Use kernel sockets for this process from then on.
    Kernel,
}

/// The library's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HOSTSTACK_APP_SOCKET`: the daemon's app socket.
    pub app_socket: PathBuf,
    /// `HOSTSTACK_APP_NAME`: the app's name (default: program name and pid).
    pub app_name: Option<String>,
    /// `HOSTSTACK_NAMESPACE`: app namespace id (default: the socket's).
    pub namespace: String,
    /// `HOSTSTACK_NAMESPACE_SECRET`.
    pub secret: u64,
    /// `HOSTSTACK_RX_FIFO_SIZE` (or `HOSTSTACK_FIFO_SIZE`), bytes; 0 = the stack's default.
    pub rx_fifo: u32,
    /// `HOSTSTACK_TX_FIFO_SIZE` (or `HOSTSTACK_FIFO_SIZE`), bytes; 0 = the stack's default.
    pub tx_fifo: u32,
    /// `HOSTSTACK_FALLBACK`: `fail` (default) or `kernel`.
    pub fallback: Fallback,
    /// `HOSTSTACK_LOCAL_SCOPE=1`: also local scope (cut-through between
    /// apps of the namespace).
    pub local_scope: bool,
    /// `HOSTSTACK_DEBUG=1`: one line on stderr per notable event.
    pub debug: bool,
    /// `HOSTSTACK_SPIN_US`: how long an `epoll_wait` with nothing ready
    /// keeps looking at the worker's queue before it sleeps (0: sleep at
    /// once). Saves the sleep and the wakeup under load, costs CPU when
    /// the load stops.
    pub spin: std::time::Duration,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn size(name: &str) -> Option<u32> {
    let v = var(name)?;
    let (num, mul) = match v.as_bytes().last() {
        Some(b'k' | b'K') => (&v[..v.len() - 1], 1 << 10),
        Some(b'm' | b'M') => (&v[..v.len() - 1], 1 << 20),
        _ => (v.as_str(), 1),
    };
    num.parse::<u32>().ok().map(|n| n.saturating_mul(mul))
}

impl Config {
    /// Reads the environment.
    pub fn from_env() -> Self {
        let both = size("HOSTSTACK_FIFO_SIZE").unwrap_or(0);
        Self {
            app_socket: var("HOSTSTACK_APP_SOCKET")
                .unwrap_or_else(|| "/run/hoststack/app.sock".into())
                .into(),
            app_name: var("HOSTSTACK_APP_NAME"),
            namespace: var("HOSTSTACK_NAMESPACE").unwrap_or_default(),
            secret: var("HOSTSTACK_NAMESPACE_SECRET")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            rx_fifo: size("HOSTSTACK_RX_FIFO_SIZE").unwrap_or(both),
            tx_fifo: size("HOSTSTACK_TX_FIFO_SIZE").unwrap_or(both),
            fallback: match var("HOSTSTACK_FALLBACK").as_deref() {
                Some("kernel") => Fallback::Kernel,
                _ => Fallback::Fail,
            },
            local_scope: var("HOSTSTACK_LOCAL_SCOPE").is_some_and(|v| v == "1"),
            debug: var("HOSTSTACK_DEBUG").is_some_and(|v| v == "1"),
            spin: std::time::Duration::from_micros(
                var("HOSTSTACK_SPIN_US")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            ),
        }
    }
}
