//! A running daemon: the stack, its app sockets, the control socket, the
//! metrics endpoint, and the interface lock, brought up in order and torn
//! down in reverse.
//!
//! The daemon starts in this order: refuse sockets that a live daemon
//! already serves, take the interface lock, set the MTU, enter the network
//! namespace, start the stack, configure the session layer (size defaults,
//! namespaces), open the app sockets, then the control socket and the
//! metrics port.
//!
//! It stops in this order: close the control socket and the metrics port,
//! detach every app (their sessions are reset, so peers see RSTs and apps
//! see their sessions go), close the app sockets (apps see the stack go),
//! stop the workers (XDP programs are detached as their sockets close),
//! and finally release the lock. Every socket file the daemon made is
//! removed along the way.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hoststack_app_proto::handle::{AppIndex, CertKeyIndex, FibIndex};
use hoststack_session::app_socket::{AppSocketConfig, AppSocketServer};
use hoststack_session::control::ControlPlane;
use hoststack_session::namespace::{InterfaceBinding, NamespaceConfig};
use serde_json::json;
use tracing::{info, warn};

use crate::daemon::config::DaemonConfig;
use crate::daemon::control::{ControlServer, Request, Response, socket_in_use};
use crate::daemon::lock::{InterfaceLock, LOCK_DIR};
use crate::daemon::metrics::{self, MetricsServer, MetricsSnapshot};
use crate::daemon::show::{self, AppView, ShowError, ShowRequest, ThreadSessions};
use crate::daemon::snapshot::{self, WorkerProbe};
use hoststack_lab::enter_netns;
use hoststack_stack::config::StackConfig;
use hoststack_stack::error::{StackError, StackResult};
use hoststack_stack::pcap::Capture;
use hoststack_stack::runtime::Stack;

/// How long `show session` waits for the stack threads.
const SESSIONS_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a stop waits for detached apps' sessions to close.
const DETACH_GRACE: Duration = Duration::from_secs(2);

/// The id the default namespace goes by.
const DEFAULT_NS: &str = "default";

/// What the control socket and the metrics port work on.
pub(crate) struct DaemonCtx {
    control: ControlPlane,
    workers: Vec<WorkerProbe>,
    interfaces: Vec<CtxInterface>,
    runtime_dir: PathBuf,
    sockets: Mutex<BTreeMap<String, AppSocketServer>>,
}

/// One interface as the control socket sees it.
struct CtxInterface {
    name: String,
    addresses: Vec<IpAddr>,
    capture: Arc<Capture>,
}

impl std::fmt::Debug for DaemonCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.interfaces.iter().map(|i| i.name.as_str()).collect();
        f.debug_struct("DaemonCtx")
            .field("interfaces", &names)
            .finish_non_exhaustive()
    }
}

/// What a stop did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct StopReport {
    /// Apps that were still attached and were detached.
    pub(crate) apps_detached: usize,
    /// Sessions open when the stop began.
    pub(crate) sessions: usize,
    /// Sessions still open when the workers were stopped (reset by them).
    pub(crate) sessions_left: usize,
}

/// A running daemon.
#[derive(Debug)]
pub(crate) struct Daemon {
    ctx: Arc<DaemonCtx>,
    stack: Option<Stack>,
    control_server: Option<ControlServer>,
    metrics: Option<MetricsServer>,
    locks: Vec<InterfaceLock>,
    control_socket: PathBuf,
    app_socket: PathBuf,
}

fn session_err(e: hoststack_app_proto::SessionError) -> StackError {
    StackError::Config(e.to_string())
}

/// Sets `interface`'s MTU with `ip link` (inside `netns` if given).
fn set_mtu(netns: Option<&str>, interface: &str, mtu: u32) -> StackResult<()> {
    let mut cmd = std::process::Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mtu_s = mtu.to_string();
    cmd.args(["link", "set", "dev", interface, "mtu", &mtu_s]);
    let out = cmd
        .output()
        .map_err(|e| StackError::os("running ip link (is iproute2 installed?)", e))?;
    if !out.status.success() {
        return Err(StackError::Config(format!(
            "setting the MTU of {interface} to {mtu}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The core thread `t` runs on when none is configured, as
/// `Stack::start_interfaces` picks it.
fn default_core(t: usize) -> Option<usize> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    ids.get(t % ids.len().max(1)).map(|c| c.id)
}

impl Daemon {
    /// Brings the daemon up; on error, whatever was started is stopped.
    pub(crate) fn start(cfg: &DaemonConfig) -> StackResult<Self> {
        if socket_in_use(&cfg.control_socket) {
            return Err(StackError::Socket(format!(
                "control socket {} is in use by another hoststack daemon (stop it, or set daemon.control_socket)",
                cfg.control_socket.display()
            )));
        }
        for p in cfg.socket_paths().iter().skip(1) {
            if socket_in_use(p) {
                return Err(StackError::Socket(format!(
                    "app socket {} is in use by another hoststack daemon (stop it, or configure another path)",
                    p.display()
                )));
            }
        }
        let mut locks = Vec::new();
        for i in &cfg.interfaces {
            locks.push(InterfaceLock::acquire(
                Path::new(LOCK_DIR),
                cfg.netns.as_deref(),
                &i.stack.interface,
                &cfg.control_socket,
            )?);
        }
        for i in &cfg.interfaces {
            if let Some(mtu) = i.mtu {
                set_mtu(cfg.netns.as_deref(), &i.stack.interface, mtu)?;
            }
        }
        if let Some(ns) = &cfg.netns {
            enter_netns(ns).map_err(|e| StackError::Config(format!("netns {ns}: {e}")))?;
        }
        let stacks: Vec<StackConfig> = cfg.interfaces.iter().map(|i| i.stack.clone()).collect();
        let stack = Stack::start_interfaces(&stacks, cfg.mode)?;
        // Threads run interface by interface, queue by queue.
        let workers = stack
            .workers()
            .iter()
            .enumerate()
            .map(|(t, w)| {
                let (core, table) = stacks
                    .iter()
                    .find(|c| c.interface == w.info.name)
                    .map_or((None, 0), |c| {
                        (c.cores.get(w.info.queue as usize).copied(), c.table)
                    });
                let group = stack
                    .queue_groups()
                    .iter()
                    .find(|g| g.interface == w.info.name)
                    .cloned();
                WorkerProbe::of(w, core.or_else(|| default_core(t)), cfg.mode, table, group)
            })
            .collect();
        let interfaces = stacks
            .iter()
            .map(|c| CtxInterface {
                name: c.interface.clone(),
                addresses: c.addresses.iter().map(|a| a.addr).collect(),
                capture: stack.capture(&c.interface).cloned().unwrap_or_default(),
            })
            .collect();
        let ctx = Arc::new(DaemonCtx {
            control: stack.control().clone(),
            workers,
            interfaces,
            runtime_dir: cfg.runtime_dir.clone(),
            sockets: Mutex::new(BTreeMap::new()),
        });
        let mut daemon = Self {
            ctx: ctx.clone(),
            stack: Some(stack),
            control_server: None,
            metrics: None,
            locks,
            control_socket: cfg.control_socket.clone(),
            app_socket: cfg.app_socket.clone(),
        };
        // From here on, dropping `daemon` undoes everything.
        let defaults = cfg.app_defaults;
        let private_rx_queues = cfg.private_rx_queues;
        let specs = cfg.namespaces.clone();
        let bindings: Vec<(String, Vec<IpAddr>)> = ctx
            .interfaces
            .iter()
            .map(|i| (i.name.clone(), i.addresses.clone()))
            .collect();
        ctx.control
            .call(move |l| {
                l.app_defaults = defaults;
                l.private_rx_queues = private_rx_queues;
                for ns in &specs {
                    let interface = ns.bind_interface.as_ref().and_then(|name| {
                        bindings
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(n, a)| InterfaceBinding::new(n.clone(), a.clone()))
                    });
                    l.namespaces.add(
                        &ns.id,
                        NamespaceConfig {
                            secret: ns.secret,
                            interface,
                            fib_index: FibIndex(ns.table),
                        },
                    )?;
                }
                Ok(())
            })
            .map_err(session_err)?
            .map_err(session_err)?;
        let stack = daemon.stack.as_ref().expect("just started");
        let server = stack.serve_apps(cfg.app_socket_access.socket_config(&cfg.app_socket, ""))?;
        ctx.lock_sockets().insert(DEFAULT_NS.into(), server);
        for ns in &cfg.namespaces {
            let server = AppSocketServer::start(
                ns.access.socket_config(&ns.app_socket, &ns.id),
                ctx.control.clone(),
            )
            .map_err(|e| StackError::Socket(format!("app socket of namespace {}: {e}", ns.id)))?;
            ctx.lock_sockets().insert(ns.id.clone(), server);
        }
        let handler_ctx = ctx.clone();
        daemon.control_server = Some(ControlServer::start(
            &cfg.control_socket,
            Arc::new(move |req| handler_ctx.handle(req)),
        )?);
        if let Some(addr) = cfg.metrics {
            let metrics_ctx = ctx.clone();
            daemon.metrics = Some(MetricsServer::start(
                addr,
                Arc::new(move || metrics_ctx.metrics_text()),
            )?);
        }
        info!(interfaces = ?stacks.iter().map(|c| &c.interface).collect::<Vec<_>>(), "daemon running");
        Ok(daemon)
    }

    /// The stack.
    pub(crate) fn stack(&self) -> &Stack {
        self.stack.as_ref().expect("running until stopped")
    }

    /// The control socket's path.
    pub(crate) fn control_socket(&self) -> &Path {
        &self.control_socket
    }

    /// The default namespace's app socket.
    pub(crate) fn app_socket(&self) -> &Path {
        &self.app_socket
    }

    /// Where metrics are served, if they are.
    pub(crate) fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// Stops everything in order (see the module doc).
    pub(crate) fn stop(mut self) -> StackResult<StopReport> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> StackResult<StopReport> {
        let Some(stack) = self.stack.take() else {
            return Ok(StopReport::default());
        };
        self.control_server.take();
        self.metrics.take();
        let control = self.ctx.control.clone();
        let mut report = StopReport::default();
        let apps = control
            .call(|l| {
                let apps: Vec<AppIndex> = l.apps().map(|a| a.index).collect();
                (apps, l.counters().sessions)
            })
            .unwrap_or_default();
        report.sessions = apps.1;
        for app in apps.0 {
            match control.detach(app) {
                Ok(()) => report.apps_detached += 1,
                Err(e) => warn!(app = app.0, "detach at stop: {e}"),
            }
        }
        let deadline = Instant::now() + DETACH_GRACE;
        loop {
            let left = control.call(|l| l.counters().sessions).unwrap_or(0);
            if left == 0 || Instant::now() > deadline {
                report.sessions_left = left;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let servers = std::mem::take(&mut *self.ctx.lock_sockets());
        drop(servers);
        let result = stack.stop();
        self.locks.clear();
        info!(?report, "daemon stopped");
        result.map(|()| report)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            warn!("stopping the daemon: {e}");
        }
    }
}

/// A stack error's message without the "configuration:" prefix.
fn plain(e: StackError) -> String {
    match e {
        StackError::Config(m) => m,
        other => other.to_string(),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

impl DaemonCtx {
    fn lock_sockets(&self) -> MutexGuard<'_, BTreeMap<String, AppSocketServer>> {
        self.sockets.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn socket_paths(&self) -> HashMap<String, PathBuf> {
        self.lock_sockets()
            .iter()
            .map(|(id, s)| (id.clone(), s.path().to_path_buf()))
            .collect()
    }

    /// Answers one control request.
    pub(crate) fn handle(&self, req: Request) -> Response {
        let r = match req {
            Request::Show { show } => self.show(&show),
            Request::NamespaceAdd {
                id,
                secret,
                interface,
                table,
                app_socket,
            } => self.namespace_add(id, secret, interface, table, app_socket),
            Request::NamespaceDel { id } => self.namespace_del(&id),
            Request::CertAdd { cert, key } => self.cert_add(cert, key),
            Request::CertDel { index } => self.cert_del(index),
            Request::PcapStart {
                interface,
                file,
                max,
            } => self.pcap_start(&interface, &file, max),
            Request::PcapStop { interface } => self.pcap_stop(&interface),
            Request::Metrics => Ok((self.metrics_text(), serde_json::Value::Null)),
        };
        match r {
            Ok((text, data)) => Response::ok(text, data),
            Err(e) => Response::err(e),
        }
    }

    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut hoststack_session::session_layer::SessionLayer) -> R + Send + 'static,
    ) -> Result<R, String> {
        self.control.call(f).map_err(|e| e.to_string())
    }

    fn sessions(&self) -> Result<Vec<ThreadSessions>, String> {
        self.sessions_with(false)
    }

    /// The sessions, with their transport details when `details`.
    fn sessions_with(&self, details: bool) -> Result<Vec<ThreadSessions>, String> {
        let raw = self
            .control
            .sessions(SESSIONS_TIMEOUT, details)
            .map_err(|e| e.to_string())?;
        let names = self.call(|l| snapshot::app_names(l))?;
        Ok(snapshot::session_views(raw, &names))
    }

    fn check_app(&self, index: Option<u32>) -> Result<(), String> {
        if let Some(i) = index {
            if !self.call(move |l| snapshot::app_exists(l, i))? {
                return Err(ShowError::NoApp(i).to_string());
            }
        }
        Ok(())
    }

    fn show(&self, req: &ShowRequest) -> Result<(String, serde_json::Value), String> {
        match req {
            ShowRequest::App(a) => match a.view() {
                AppView::List => {
                    let (apps, corruption) =
                        self.call(|l| (snapshot::app_summaries(l), l.corruption().clone()))?;
                    Ok((show::render_app_list(&apps, &corruption), to_json(&apps)))
                }
                AppView::Detail(i) => {
                    self.check_app(Some(i))?;
                    let connects = snapshot::connects(&self.sessions()?);
                    let detail = self
                        .call(move |l| snapshot::app_details(l, &connects))?
                        .into_iter()
                        .find(|d| d.summary.index == i)
                        .ok_or_else(|| ShowError::NoApp(i).to_string())?;
                    Ok((show::render_app_detail(&detail), to_json(&detail)))
                }
                AppView::Server(i) => {
                    self.check_app(i)?;
                    let ls = self.call(move |l| snapshot::listeners(l, i))?;
                    Ok((show::render_listeners(&ls, a.verbose), to_json(&ls)))
                }
                AppView::Client(i) => {
                    self.check_app(i)?;
                    let cs: Vec<_> = snapshot::connects(&self.sessions()?)
                        .into_iter()
                        .filter(|s| i.is_none_or(|i| s.app == i))
                        .collect();
                    Ok((show::render_connects(&cs, a.verbose), to_json(&cs)))
                }
                AppView::Mq(i) => {
                    self.check_app(i)?;
                    let qs = self.call(move |l| snapshot::queues(l, i))?;
                    Ok((show::render_queues(&qs), to_json(&qs)))
                }
            },
            ShowRequest::AppCertificate => {
                let certs = self.call(|l| snapshot::certs(l))?;
                Ok((show::render_certs(&certs), to_json(&certs)))
            }
            ShowRequest::Session { verbose } => {
                let threads = self.sessions_with(*verbose)?;
                Ok((show::render_sessions(&threads, *verbose), to_json(&threads)))
            }
            ShowRequest::Interface => {
                let ifs = snapshot::interfaces(&self.workers, &self.capturing());
                Ok((show::render_interfaces(&ifs), to_json(&ifs)))
            }
            ShowRequest::Worker => {
                let ws = snapshot::workers(&self.workers);
                Ok((show::render_workers(&ws), to_json(&ws)))
            }
            ShowRequest::Namespace => {
                let paths = self.socket_paths();
                let ns = self.call(move |l| snapshot::namespaces(l, &paths))?;
                Ok((show::render_namespaces(&ns), to_json(&ns)))
            }
        }
    }

    fn namespace_add(
        &self,
        id: String,
        secret: u64,
        interface: Option<String>,
        table: u32,
        app_socket: Option<PathBuf>,
    ) -> Result<(String, serde_json::Value), String> {
        if id.is_empty() || id == DEFAULT_NS {
            return Err("the default namespace always exists; name another".into());
        }
        if id.len() > 64 || id.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(format!(
                "'{id}' is not a namespace id (1-64 characters, no spaces or '/')"
            ));
        }
        let bind = match interface {
            Some(i) => Some(self.interface(&i)?),
            None => None,
        };
        let path = app_socket.unwrap_or_else(|| self.runtime_dir.join(format!("app-{id}.sock")));
        if self.lock_sockets().values().any(|s| s.path() == path) || socket_in_use(&path) {
            return Err(format!("{} is already in use", path.display()));
        }
        let binding = bind.map(|i| (i.name.clone(), i.addresses.clone()));
        let nid = id.clone();
        let index = self
            .call(move |l| {
                let interface = binding.map(|(name, addrs)| InterfaceBinding::new(name, addrs));
                l.namespaces.add(
                    &nid,
                    NamespaceConfig {
                        secret,
                        interface,
                        fib_index: FibIndex(table),
                    },
                )
            })?
            .map_err(|e| e.to_string())?;
        let server = AppSocketServer::start(
            AppSocketConfig {
                namespace: id.clone(),
                ..AppSocketConfig::new(&path)
            },
            self.control.clone(),
        );
        match server {
            Ok(s) => {
                self.lock_sockets().insert(id.clone(), s);
                Ok((
                    format!(
                        "namespace {id} added (index {}), app socket {}\n",
                        index.0,
                        path.display()
                    ),
                    json!({ "id": id, "index": index.0, "app_socket": path }),
                ))
            }
            Err(e) => {
                let nid = id.clone();
                let _ = self.call(move |l| l.namespaces.del(&nid, |_| 0));
                Err(format!("starting the app socket of namespace {id}: {e}"))
            }
        }
    }

    fn namespace_del(&self, id: &str) -> Result<(String, serde_json::Value), String> {
        if id.is_empty() || id == DEFAULT_NS {
            return Err("the default namespace cannot be deleted".into());
        }
        let nid = id.to_string();
        let index = self
            .call(move |l| {
                let users = l
                    .namespaces
                    .index_of(&nid)
                    .map_or(0, |ix| l.apps().filter(|a| a.namespace == ix).count());
                let ns = l.namespaces.del(&nid, |_| users)?;
                l.lookup.remove_local_table(ns.index());
                Ok::<_, hoststack_app_proto::SessionError>(ns.index())
            })?
            .map_err(|e| e.to_string())?;
        let server = self.lock_sockets().remove(id);
        drop(server);
        Ok((
            format!("namespace {id} deleted\n"),
            json!({ "id": id, "index": index.0 }),
        ))
    }

    fn cert_add(&self, cert: Vec<u8>, key: Vec<u8>) -> Result<(String, serde_json::Value), String> {
        let (cl, kl) = (cert.len(), key.len());
        let index = self
            .call(move |l| l.certs.add(cert, key))?
            .map_err(|e| e.to_string())?;
        Ok((
            format!(
                "cert/key pair {} added (cert {cl} bytes, key {kl} bytes)\n",
                index.0
            ),
            json!({ "index": index.0, "cert_len": cl, "key_len": kl }),
        ))
    }

    fn cert_del(&self, index: u32) -> Result<(String, serde_json::Value), String> {
        let apps = self
            .call(move |l| l.del_cert(CertKeyIndex(index)))?
            .map_err(|e| e.to_string())?;
        let apps: Vec<u32> = apps.iter().map(|a| a.0).collect();
        Ok((
            format!(
                "cert/key pair {index} deleted ({} apps called back)\n",
                apps.len()
            ),
            json!({ "index": index, "apps_called_back": apps }),
        ))
    }

    /// The daemon's interface `name`.
    fn interface(&self, name: &str) -> Result<&CtxInterface, String> {
        self.interfaces
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.interfaces.iter().map(|i| i.name.as_str()).collect();
                format!(
                    "no interface {name} in this daemon (it runs {})",
                    names.join(", ")
                )
            })
    }

    /// Interfaces with a capture running.
    fn capturing(&self) -> Vec<String> {
        self.interfaces
            .iter()
            .filter(|i| i.capture.is_active())
            .map(|i| i.name.clone())
            .collect()
    }

    fn pcap_start(
        &self,
        interface: &str,
        file: &Path,
        max: u64,
    ) -> Result<(String, serde_json::Value), String> {
        let capture = &self.interface(interface)?.capture;
        if !file.is_absolute() {
            return Err(format!("{} is not an absolute path", file.display()));
        }
        capture.start(file, max).map_err(plain)?;
        let limit = if max == 0 {
            "no limit".to_string()
        } else {
            format!("at most {max} frames")
        };
        Ok((
            format!("capturing {interface} to {} ({limit})\n", file.display()),
            json!({ "interface": interface, "file": file, "max": max }),
        ))
    }

    fn pcap_stop(&self, interface: &str) -> Result<(String, serde_json::Value), String> {
        let s = self.interface(interface)?.capture.stop().map_err(plain)?;
        Ok((
            format!(
                "capture stopped: {} frames written to {}\n",
                s.frames,
                s.path.display()
            ),
            json!({ "interface": interface, "file": s.path, "frames": s.frames }),
        ))
    }

    /// Every counter as Prometheus text.
    pub(crate) fn metrics_text(&self) -> String {
        let (apps, layer) = self
            .control
            .call(|l| (snapshot::app_details(l, &[]), l.counters()))
            .unwrap_or_default();
        metrics::render(&MetricsSnapshot {
            interfaces: snapshot::interfaces(&self.workers, &self.capturing()),
            workers: snapshot::workers(&self.workers),
            apps,
            layer,
        })
    }
}
