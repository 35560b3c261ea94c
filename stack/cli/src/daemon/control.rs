//! The control socket: how `hoststack show`, `namespace`, `cert` and
//! `pcap` talk to a running daemon.
//!
//! The transport is a Unix stream socket with mode 0600, so only root (or
//! whoever runs the daemon) can use it. A client writes one JSON
//! [`Request`] per line and reads back one JSON [`Response`] per line, and
//! may send several requests on the same connection. Each connection is
//! served on its own thread, at most [`MAX_CONNECTIONS`] at once. A line
//! over [`MAX_LINE`] bytes, or one that does not parse, gets an error
//! response and the connection is closed.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::daemon::show::ShowRequest;
use hoststack_stack::error::{StackError, StackResult};

/// Connections served at once; more are answered "busy" and closed.
pub(crate) const MAX_CONNECTIONS: usize = 16;

/// Longest request line (a certificate travels in one).
pub(crate) const MAX_LINE: usize = 4 << 20;

/// How long a connection may stay silent before it is closed.
const IDLE: Duration = Duration::from_secs(30);

/// What a client asks the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub(crate) enum Request {
    /// A `show` command.
    Show {
        /// What to show.
        show: ShowRequest,
    },
    /// Adds an app namespace and starts its app socket.
    NamespaceAdd {
        /// Its id.
        id: String,
        /// The secret apps present.
        secret: u64,
        /// Bind it to the daemon's interface (must be its name).
        interface: Option<String>,
        /// FIB (table) index.
        table: u32,
        /// Where its app socket goes (default: `<runtime dir>/app-<id>.sock`).
        app_socket: Option<PathBuf>,
    },
    /// Deletes an app namespace (refused while apps use it).
    NamespaceDel {
        /// Its id.
        id: String,
    },
    /// Adds a cert/key pair.
    CertAdd {
        /// Certificate bytes.
        cert: Vec<u8>,
        /// Key bytes.
        key: Vec<u8>,
    },
    /// Deletes a cert/key pair.
    CertDel {
        /// Its index.
        index: u32,
    },
    /// Starts a packet capture.
    PcapStart {
        /// Interface (the daemon's).
        interface: String,
        /// Output file (absolute).
        file: PathBuf,
        /// Frames to keep at most (0: no limit).
        max: u64,
    },
    /// Stops the packet capture.
    PcapStop {
        /// Interface (the daemon's).
        interface: String,
    },
    /// The Prometheus text the metrics port serves.
    Metrics,
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Response {
    /// Whether the request succeeded.
    pub(crate) ok: bool,
    /// What to print (text form).
    pub(crate) text: String,
    /// The same as data, for `--json`.
    pub(crate) data: serde_json::Value,
    /// Why it failed, when it did.
    pub(crate) error: Option<String>,
}

impl Response {
    /// A success.
    pub(crate) fn ok(text: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            ok: true,
            text: text.into(),
            data,
            error: None,
        }
    }

    /// A failure.
    pub(crate) fn err(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            text: String::new(),
            data: serde_json::Value::Null,
            error: Some(message.into()),
        }
    }
}

/// Handles one request.
pub(crate) type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// A running control socket.
pub(crate) struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// True when a live server answers on `path`.
pub(crate) fn socket_in_use(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}

impl ControlServer {
    /// Binds `path` (replacing a stale socket file, refusing a live one)
    /// and serves `handler` on it.
    pub(crate) fn start(path: &Path, handler: Handler) -> StackResult<Self> {
        if path.exists() {
            if socket_in_use(path) {
                return Err(StackError::Socket(format!(
                    "control socket {} is in use by another hoststack daemon (stop it, or set daemon.control_socket)",
                    path.display()
                )));
            }
            std::fs::remove_file(path).map_err(|e| {
                StackError::os(format!("removing the stale socket {}", path.display()), e)
            })?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StackError::os(format!("creating {}", dir.display()), e))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| {
            StackError::os(format!("binding the control socket {}", path.display()), e)
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StackError::os("setting the control socket's mode", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| StackError::os("control socket", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("hs-control".into())
            .spawn(move || accept_loop(listener, handler, st))
            .map_err(|e| StackError::os("spawning the control thread", e))?;
        info!(path = %path.display(), "control socket listening");
        Ok(Self {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, handler: Handler, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    let _ = reply(&stream, &Response::err("the daemon is busy; try again"));
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let (h, a, st) = (handler.clone(), active.clone(), stop.clone());
                let spawned = std::thread::Builder::new()
                    .name("hs-control-conn".into())
                    .spawn(move || {
                        serve_connection(stream, &h, &st);
                        a.fetch_sub(1, Ordering::SeqCst);
                    });
                if let Err(e) = spawned {
                    warn!("control connection thread: {e}");
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => wait_for_accept(&listener),
            Err(e) => {
                debug!("control accept: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Sleeps until a listener has a connection to accept, or a quarter of a
/// second (how late the caller sees its stop flag): an idle daemon's accept
/// loops cost a wakeup four times a second, not fifty.
pub(crate) fn wait_for_accept(listener: &impl std::os::fd::AsFd) {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(listener, PollFlags::IN)];
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 250_000_000,
    };
    let _ = rustix::event::poll(&mut fds, Some(&tick));
}

fn reply(mut stream: &UnixStream, r: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// Largest answer a client reads: the daemon is trusted, and `show session
/// --json` with 100,000 sessions is tens of megabytes.
pub(crate) const MAX_ANSWER: usize = 1 << 30;

/// Reads a line of at most [`MAX_LINE`] bytes; `None` at end of stream.
fn read_line(r: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    read_line_max(r, MAX_LINE)
}

/// Reads a line of at most `max` bytes; `None` at end of stream.
fn read_line_max(r: &mut impl BufRead, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = r.take(max as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.len() > max {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("line longer than {max} bytes"),
        ));
    }
    Ok(Some(line))
}

fn serve_connection(stream: UnixStream, handler: &Handler, stop: &AtomicBool) {
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(IDLE)).is_err() {
        return;
    }
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    while !stop.load(Ordering::SeqCst) {
        let line = match read_line(&mut reader) {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                let _ = reply(&stream, &Response::err(format!("bad request: {e}")));
                return;
            }
        };
        let response = match serde_json::from_slice::<Request>(&line) {
            Ok(req) => handler(req),
            Err(e) => {
                let _ = reply(&stream, &Response::err(format!("bad request: {e}")));
                return;
            }
        };
        if reply(&stream, &response).is_err() {
            return;
        }
    }
}

/// Why a client could not get an answer.
#[derive(Debug, Error)]
pub(crate) enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "cannot reach the hoststack daemon at {path}: {cause} (is `hoststack run` running? pass --control PATH)"
    )]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The connection broke or the answer was not understood.
    #[error("talking to the daemon at {path}: {message}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Sends one request to the daemon at `path` and returns its answer.
pub(crate) fn request(
    path: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(path).map_err(|cause| ClientError::Unreachable {
        path: path.to_path_buf(),
        cause,
    })?;
    let proto = |message: String| ClientError::Protocol {
        path: path.to_path_buf(),
        message,
    };
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| proto(e.to_string()))?;
    let mut line = serde_json::to_vec(req).map_err(|e| proto(e.to_string()))?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(|e| proto(format!("sending: {e}")))?;
    let mut reader = BufReader::new(&stream);
    match read_line_max(&mut reader, MAX_ANSWER) {
        Ok(Some(l)) => serde_json::from_slice(&l).map_err(|e| proto(format!("bad answer: {e}"))),
        Ok(None) => Err(proto("the daemon closed the connection".into())),
        Err(e) => Err(proto(format!("no answer: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_socket(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("hs-ctl-{}-{tag}.sock", std::process::id()))
    }

    #[test]
    fn a_request_is_answered_and_the_socket_goes_with_the_server() {
        let path = temp_socket("a");
        let handler: Handler = Arc::new(|r| match r {
            Request::CertDel { index } => {
                Response::ok(format!("deleted {index}"), serde_json::json!(index))
            }
            _ => Response::err("no"),
        });
        let server = ControlServer::start(&path, handler).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let r = request(
            &path,
            &Request::CertDel { index: 3 },
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r, Response::ok("deleted 3", serde_json::json!(3)));
        let r = request(&path, &Request::Metrics, Duration::from_secs(5)).unwrap();
        assert_eq!(r.error.as_deref(), Some("no"));
        // A second server on the same path is refused while the first lives.
        let e = ControlServer::start(&path, Arc::new(|_| Response::err("x"))).unwrap_err();
        assert!(
            e.to_string().contains("in use by another hoststack daemon"),
            "{e}"
        );
        drop(server);
        assert!(!path.exists(), "socket file left behind");
        let e = request(&path, &Request::Metrics, Duration::from_secs(1)).unwrap_err();
        assert!(
            e.to_string().contains("cannot reach the hoststack daemon"),
            "{e}"
        );
    }

    #[test]
    fn garbage_gets_an_error_line_and_a_closed_connection() {
        let path = temp_socket("b");
        let server = ControlServer::start(
            &path,
            Arc::new(|_| Response::ok("", serde_json::Value::Null)),
        )
        .unwrap();
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{\"op\":\"nonsense\"}\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let r: Response = serde_json::from_str(out.trim()).unwrap();
        assert!(!r.ok);
        assert!(r.error.unwrap().contains("bad request"));
        drop(server);
    }

    #[test]
    fn a_stale_socket_file_is_replaced() {
        let path = temp_socket("c");
        {
            let _dead = UnixListener::bind(&path).unwrap();
        }
        assert!(path.exists());
        let server = ControlServer::start(
            &path,
            Arc::new(|_| Response::ok("up", serde_json::Value::Null)),
        )
        .unwrap();
        let r = request(&path, &Request::Metrics, Duration::from_secs(5)).unwrap();
        assert_eq!(r.text, "up");
        drop(server);
    }
}
