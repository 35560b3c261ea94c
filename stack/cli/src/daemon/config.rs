//! The daemon's configuration file, what `hoststack run --config FILE`
//! reads.
//!
//! The file is TOML. Every table is closed (`deny_unknown_fields`) and every
//! value is checked. A mistake becomes a [`ConfigError`] that names the
//! file, the line and column, the key (`session.worker_mode`) and the
//! expected form, and quotes the offending line. Everything except the
//! interface's name and addresses has a default, so a file with a single
//! `[[interface]]` table is a complete config. `hoststack.toml.example` at
//! the repository root documents every key.
//!
//! A daemon runs one or more interfaces (`[[interface]]` tables, all in
//! one network namespace). All their queues share one session layer, so
//! every app sees all of them; an outgoing connect leaves through the
//! interface whose subnet (or, failing that, default route) reaches the
//! remote.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use hoststack_app_proto::options::AppSizeDefaults;
use hoststack_drivers::afxdp::{XdpAttachMode, XdpCopyMode};
use hoststack_drivers::uring_tap::{RxMode, TapOffload};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use hoststack_stack::config::{AddrPrefix, DriverKind, StackConfig, TcpEngineKind, TcpTuning};
use hoststack_stack::worker::WorkerMode;

/// Where sockets go when the file does not say.
pub(crate) const DEFAULT_RUNTIME_DIR: &str = "/run/hoststack";

/// The control socket `hoststack show` and friends use by default.
pub(crate) const DEFAULT_CONTROL_SOCKET: &str = "/run/hoststack/control.sock";

/// The longest interface name Linux accepts.
const IFNAME_MAX: usize = 15;

/// The longest app namespace id (what the app wire format carries).
const NAMESPACE_ID_MAX: usize = 64;

// ---- the file's schema -------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    daemon: DaemonSection,
    #[serde(default)]
    interface: Vec<Spanned<InterfaceSection>>,
    #[serde(default)]
    workers: WorkersSection,
    #[serde(default)]
    session: SessionSection,
    #[serde(default)]
    tcp: TcpSection,
    #[serde(default)]
    namespace: Vec<Spanned<NamespaceSection>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonSection {
    runtime_dir: Option<PathBuf>,
    control_socket: Option<Spanned<PathBuf>>,
    log: Option<Spanned<String>>,
    metrics_port: Option<u16>,
    metrics_address: Option<IpAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InterfaceSection {
    name: Spanned<String>,
    driver: Option<Parse<DriverKind>>,
    queues: Option<Spanned<u32>>,
    traffic_steered: Option<bool>,
    xdp_mode: Option<Parse<XdpAttachMode>>,
    xdp_copy: Option<Parse<XdpCopyMode>>,
    offload: Option<Parse<TapOffload>>,
    tap_read: Option<Parse<RxMode>>,
    addresses: Option<Spanned<Vec<Parse<AddrPrefix>>>>,
    gateway: Option<IpAddr>,
    mtu: Option<Spanned<u32>>,
    netns: Option<String>,
    table: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkersSection {
    cores: Option<Spanned<Vec<usize>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionSection {
    worker_mode: Option<Parse<WorkerMode>>,
    private_rx_queues: Option<Spanned<bool>>,
    rx_fifo_size: Option<Spanned<ByteSize>>,
    tx_fifo_size: Option<Spanned<ByteSize>>,
    segment_size: Option<Spanned<ByteSize>>,
    add_segment_size: Option<Spanned<ByteSize>>,
    event_queue_size: Option<Spanned<u32>>,
    app_socket: Option<Spanned<PathBuf>>,
    app_socket_mode: Option<Spanned<FileMode>>,
    app_socket_owner: Option<Spanned<IdOrName>>,
    app_socket_group: Option<Spanned<IdOrName>>,
}

/// Who may use an app socket, as the file says it (`app_socket_mode`,
/// `app_socket_owner`, `app_socket_group`, in `[session]` for the default
/// namespace and in each `[[namespace]]`).
struct AccessKeys<'a> {
    app_socket_mode: &'a Option<Spanned<FileMode>>,
    app_socket_owner: &'a Option<Spanned<IdOrName>>,
    app_socket_group: &'a Option<Spanned<IdOrName>>,
}

/// A file mode: a TOML number (`0o660`) or an octal string (`"0660"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileMode {
    Number(i64),
    Text(String),
}

/// A user or group: a number, or a name from /etc/passwd or /etc/group.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum IdOrName {
    Id(u32),
    Name(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpSection {
    engine: Option<Parse<TcpEngineKind>>,
    buffer: Option<Spanned<ByteSize>>,
    rto_min_ms: Option<Spanned<u64>>,
    syn_backlog: Option<Spanned<u32>>,
    accept_backlog: Option<Spanned<u32>>,
    congestion: Option<Parse<hoststack_tcp::CongestionAlgorithmKind>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceSection {
    id: Spanned<String>,
    #[serde(default)]
    secret: u64,
    interface: Option<Spanned<String>>,
    #[serde(default)]
    table: u32,
    app_socket: Option<Spanned<PathBuf>>,
    app_socket_mode: Option<Spanned<FileMode>>,
    app_socket_owner: Option<Spanned<IdOrName>>,
    app_socket_group: Option<Spanned<IdOrName>>,
}

/// A value written as a string and parsed with `T`'s `FromStr`, whose error
/// says what was expected.
#[derive(Debug, Clone, Copy)]
struct Parse<T>(T);

impl<'de, T> Deserialize<'de> for Parse<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Parse).map_err(de::Error::custom)
    }
}

/// A size in bytes: a plain number, or a string with a binary unit
/// (`"64K"`, `"4M"`, `"1G"`, `"512KiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("'{s}' is not a byte size (expected e.g. 65536, \"64K\", \"4M\")")
        })?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            other => {
                return Err(format!(
                    "unknown unit '{other}' in '{s}' (expected K, M or G)"
                ));
            }
        };
        n.checked_mul(1 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("'{s}' is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a byte size: a number of bytes or a string such as \"64K\", \"4M\", \"1G\"",
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative (expected a byte size)")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

/// `65536` as `64K`, `33554432` as `32M`; sizes that are not a whole
/// number of KiB stay in bytes.
pub(crate) fn format_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 3] = [(30, "G"), (20, "M"), (10, "K")];
    for (shift, unit) in UNITS {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

// ---- the validated config ----------------------------------------------

/// An app namespace the daemon creates at start, with its app socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamespaceSpec {
    /// Its id.
    pub(crate) id: String,
    /// The secret apps present to attach.
    pub(crate) secret: u64,
    /// Bound to the daemon's interface: its apps may only bind the
    /// interface's addresses.
    pub(crate) bind_interface: Option<String>,
    /// FIB (table) index of its global sessions.
    pub(crate) table: u32,
    /// Where its apps attach.
    pub(crate) app_socket: PathBuf,
    /// Who may.
    pub(crate) access: SocketAccess,
}

/// Who may use an app socket: its file's mode, owner and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SocketAccess {
    /// Permission bits (0o600 unless the file says).
    pub(crate) mode: u32,
    /// Owner uid; `None`: the daemon's.
    pub(crate) owner: Option<u32>,
    /// Group gid; `None`: the daemon's.
    pub(crate) group: Option<u32>,
}

impl Default for SocketAccess {
    fn default() -> Self {
        Self {
            mode: 0o600,
            owner: None,
            group: None,
        }
    }
}

impl SocketAccess {
    /// The app socket at `path` for namespace `namespace` with this access.
    pub(crate) fn socket_config(
        &self,
        path: &Path,
        namespace: &str,
    ) -> hoststack_session::app_socket::AppSocketConfig {
        hoststack_session::app_socket::AppSocketConfig {
            path: path.to_path_buf(),
            namespace: namespace.to_string(),
            mode: self.mode,
            owner: self.owner,
            group: self.group,
        }
    }
}

/// The id `name` has in `db` (`/etc/passwd` or `/etc/group`: name in the
/// first field, id in the third).
fn id_of(db: &str, name: &str) -> Option<u32> {
    std::fs::read_to_string(db).ok()?.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
    })
}

/// Checks one table's access keys; `prefix` is its table's key (`session.`,
/// `namespace[0].`).
fn socket_access(
    src: &Source<'_>,
    prefix: &str,
    a: AccessKeys<'_>,
) -> Result<SocketAccess, ConfigError> {
    let mut access = SocketAccess::default();
    if let Some(m) = a.app_socket_mode {
        let key = format!("{prefix}app_socket_mode");
        let bits = match m.get_ref() {
            FileMode::Number(n) => u32::try_from(*n).ok(),
            FileMode::Text(t) => u32::from_str_radix(t.strip_prefix("0o").unwrap_or(t), 8).ok(),
        };
        access.mode = match bits {
            Some(b) if b <= 0o777 => b,
            _ => {
                return Err(src.at(
                    m,
                    &key,
                    "not a file mode (expected permission bits up to 0o777: 0o660 or \"0660\")",
                ));
            }
        };
    }
    let resolve = |v: &Option<Spanned<IdOrName>>, what: &str, db: &str| match v {
        None => Ok(None),
        Some(s) => match s.get_ref() {
            IdOrName::Id(id) => Ok(Some(*id)),
            IdOrName::Name(name) => id_of(db, name).map(Some).ok_or_else(|| {
                src.at(
                    s,
                    &format!("{prefix}app_socket_{what}"),
                    format!(
                        "no {} '{name}' in {db} (expected a name there or a number)",
                        if what == "owner" { "user" } else { "group" }
                    ),
                )
            }),
        },
    };
    access.owner = resolve(a.app_socket_owner, "owner", "/etc/passwd")?;
    access.group = resolve(a.app_socket_group, "group", "/etc/group")?;
    Ok(access)
}

/// One interface of a daemon.
#[derive(Debug, Clone)]
pub(crate) struct DaemonInterface {
    /// The interface, its queues, their cores, addresses and TCP tuning.
    pub(crate) stack: StackConfig,
    /// MTU to set on the interface before opening it.
    pub(crate) mtu: Option<u32>,
}

/// An `[[interface]]` table, checked on its own.
struct CheckedInterface {
    name: String,
    driver: DriverKind,
    xdp_mode: XdpAttachMode,
    xdp_copy: XdpCopyMode,
    /// None: every queue of the interface (counted when the daemon starts).
    queues: Option<u32>,
    traffic_steered: bool,
    offload: TapOffload,
    tap_read: RxMode,
    addresses: Vec<AddrPrefix>,
    gateway: Option<IpAddr>,
    mtu: Option<u32>,
    netns: Option<String>,
    table: u32,
}

/// Checks the `i`-th `[[interface]]` table.
fn check_interface(
    src: &Source<'_>,
    i: usize,
    iface: &Spanned<InterfaceSection>,
) -> Result<CheckedInterface, ConfigError> {
    let key = |k: &str| format!("interface[{i}].{k}");
    let iface = iface.get_ref();
    let name = iface.name.get_ref().clone();
    if !valid_ifname(&name) {
        return Err(src.at(
            &iface.name,
            &key("name"),
            format!("'{name}' is not an interface name (1-{IFNAME_MAX} characters, no '/', ':' or spaces)"),
        ));
    }
    let addresses: Vec<AddrPrefix> = match &iface.addresses {
        Some(a) if !a.get_ref().is_empty() => a.get_ref().iter().map(|p| p.0).collect(),
        Some(a) => {
            return Err(src.at(
                a,
                &key("addresses"),
                "no address: list at least one, e.g. [\"10.77.0.1/24\"]",
            ));
        }
        None => {
            return Err(src.at(
                &iface.name,
                &key("addresses"),
                "missing: the addresses hoststack owns on the interface, e.g. addresses = [\"10.77.0.1/24\", \"fd77::1/64\"]",
            ));
        }
    };
    let driver = iface.driver.as_ref().map_or(DriverKind::AfXdp, |d| d.0);
    let queues = match &iface.queues {
        Some(q) => Some(in_range(
            src,
            q,
            &key("queues"),
            1,
            64,
            "one worker per queue",
        )?),
        None => None,
    };
    let mtu = match &iface.mtu {
        Some(m) => Some(in_range(src, m, &key("mtu"), 576, 9216, "bytes")?),
        None => None,
    };
    Ok(CheckedInterface {
        name,
        driver,
        xdp_mode: iface.xdp_mode.as_ref().map_or(XdpAttachMode::Auto, |m| m.0),
        xdp_copy: iface.xdp_copy.as_ref().map_or(XdpCopyMode::Auto, |m| m.0),
        offload: iface.offload.as_ref().map_or(TapOffload::Auto, |m| m.0),
        tap_read: iface.tap_read.as_ref().map_or(RxMode::Auto, |m| m.0),
        queues,
        traffic_steered: iface.traffic_steered.unwrap_or(false),
        addresses,
        gateway: iface.gateway,
        mtu,
        netns: iface.netns.clone(),
        table: iface.table.unwrap_or(0),
    })
}

/// A checked daemon configuration.
#[derive(Debug, Clone)]
pub(crate) struct DaemonConfig {
    /// The interfaces, in file order: queues, workers and TCP tuning each.
    pub(crate) interfaces: Vec<DaemonInterface>,
    /// How workers wait for work.
    pub(crate) mode: WorkerMode,
    /// Network namespace to enter before opening the interfaces.
    pub(crate) netns: Option<String>,
    /// Directory of the default socket paths.
    pub(crate) runtime_dir: PathBuf,
    /// The control socket.
    pub(crate) control_socket: PathBuf,
    /// The default namespace's app socket.
    pub(crate) app_socket: PathBuf,
    /// Who may use it.
    pub(crate) app_socket_access: SocketAccess,
    /// Namespaces besides the default one.
    pub(crate) namespaces: Vec<NamespaceSpec>,
    /// Sizes an app gets when it asks for 0.
    pub(crate) app_defaults: AppSizeDefaults,
    /// External apps get an rx message queue per stack thread (true), or
    /// send their requests over the app socket (false).
    pub(crate) private_rx_queues: bool,
    /// Log filter, when the file sets one.
    pub(crate) log: Option<String>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub(crate) metrics: Option<SocketAddr>,
}

/// A mistake in a config file: where it is, which key, what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
    /// The file (or a label for generated text).
    pub(crate) origin: String,
    /// 1-based line; 0 when the mistake has no place (a missing table).
    pub(crate) line: usize,
    /// 1-based column.
    pub(crate) column: usize,
    /// Dotted key (`session.worker_mode`, `interface[0].queues`); empty
    /// for syntax errors.
    pub(crate) key: String,
    /// What is wrong and what was expected.
    pub(crate) message: String,
    /// The line as written.
    pub(crate) source_line: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        write!(f, ": ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(src) = &self.source_line {
            let num = self.line.to_string();
            write!(f, "\n  {num} | {src}")?;
            let pad = " ".repeat(self.column.saturating_sub(1));
            write!(f, "\n  {} | {pad}^", " ".repeat(num.len()))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Checks and errors against one file's text.
struct Source<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Source<'_> {
    /// An error at byte `span` of the text (or nowhere).
    fn error(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column, source_line) = match span {
            Some(s) => {
                let start = s.start.min(self.text.len());
                let before = &self.text[..start];
                let line = before.matches('\n').count() + 1;
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let column = self.text[line_start..start].chars().count() + 1;
                let src = self.text[line_start..]
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                (line, column, Some(src))
            }
            None => (0, 0, None),
        };
        ConfigError {
            origin: self.origin.to_string(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
            source_line,
        }
    }

    fn at<T>(&self, v: &Spanned<T>, key: &str, message: impl Into<String>) -> ConfigError {
        self.error(Some(v.span()), key, message)
    }
}

/// serde_path_to_error's path without the private segments `Spanned`
/// adds.
fn clean_path(path: &str) -> String {
    if path == "." {
        return String::new();
    }
    path.split('.')
        .filter(|seg| !seg.starts_with("$__"))
        .collect::<Vec<_>>()
        .join(".")
}

fn in_range<T: PartialOrd + Copy + fmt::Display>(
    src: &Source<'_>,
    v: &Spanned<T>,
    key: &str,
    lo: T,
    hi: T,
    what: &str,
) -> Result<T, ConfigError> {
    let x = *v.get_ref();
    if x < lo || x > hi {
        return Err(src.at(v, key, format!("{x} is outside {lo}..={hi} ({what})")));
    }
    Ok(x)
}

fn size_in_range(
    src: &Source<'_>,
    v: &Option<Spanned<ByteSize>>,
    key: &str,
    default: u64,
    lo: u64,
    hi: u64,
) -> Result<u64, ConfigError> {
    let Some(v) = v else {
        return Ok(default);
    };
    let x = v.get_ref().0;
    if x < lo || x > hi {
        return Err(src.at(
            v,
            key,
            format!(
                "{} is outside {}..={} (a byte size such as \"64K\")",
                format_size(x),
                format_size(lo),
                format_size(hi)
            ),
        ));
    }
    Ok(x)
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != ':')
}

impl DaemonConfig {
    /// Reads and checks a config file.
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
            source_line: None,
        })?;
        Self::parse(&text, &origin)
    }

    /// Parses and checks config text; `origin` names it in errors.
    pub(crate) fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let src = Source { text, origin };
        let file: FileConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let key = clean_path(&e.path().to_string());
                let inner = e.into_inner();
                src.error(
                    inner.span(),
                    &key,
                    inner.message().trim().replace('\n', "; "),
                )
            })?;
        Self::check(&src, file)
    }

    fn check(src: &Source<'_>, file: FileConfig) -> Result<Self, ConfigError> {
        if file.interface.is_empty() {
            return Err(src.error(
                None,
                "interface",
                "no [[interface]] table: a daemon needs one interface (name and addresses)",
            ));
        }
        let mut ifaces: Vec<CheckedInterface> = Vec::new();
        for (i, iface) in file.interface.iter().enumerate() {
            let checked = check_interface(src, i, iface)?;
            if ifaces.iter().any(|c| c.name == checked.name) {
                return Err(src.at(
                    &iface.get_ref().name,
                    &format!("interface[{i}].name"),
                    format!("interface {} is configured twice", checked.name),
                ));
            }
            if i > 0 && checked.netns != ifaces[0].netns {
                return Err(src.at(
                    iface,
                    &format!("interface[{i}].netns"),
                    "every interface of a daemon lives in the same network namespace (expected the netns of interface[0])",
                ));
            }
            ifaces.push(checked);
        }
        let cores = match &file.workers.cores {
            Some(c) => {
                let list = c.get_ref().clone();
                // Without queues on every interface the count is the
                // interfaces' own, known only when the daemon starts.
                let Some(total_queues) = ifaces.iter().map(|c| c.queues).sum::<Option<u32>>()
                else {
                    return Err(src.at(
                        c,
                        "workers.cores",
                        "cores are listed per queue: set queues on every [[interface]] (they default to the interface's receive queue count, which is known only when the daemon starts)",
                    ));
                };
                if list.len() != total_queues as usize {
                    return Err(src.at(
                        c,
                        "workers.cores",
                        format!(
                            "{} cores for {total_queues} queues (expected one core per queue, interface by interface)",
                            list.len()
                        ),
                    ));
                }
                let available = core_affinity::get_core_ids()
                    .map(|ids| ids.iter().map(|i| i.id).collect::<Vec<_>>())
                    .unwrap_or_default();
                if !available.is_empty() {
                    if let Some(bad) = list.iter().find(|c| !available.contains(c)) {
                        return Err(src.at(
                            c,
                            "workers.cores",
                            format!(
                                "core {bad} does not exist (this machine has cores {available:?})"
                            ),
                        ));
                    }
                }
                list
            }
            None => Vec::new(),
        };

        let s = &file.session;
        let mode = s.worker_mode.map_or(WorkerMode::Poll, |m| m.0);
        let private_rx_queues = s.private_rx_queues.as_ref().is_none_or(|p| *p.get_ref());
        let base = AppSizeDefaults::default();
        let rx = size_in_range(
            src,
            &s.rx_fifo_size,
            "session.rx_fifo_size",
            base.rx_fifo_size.into(),
            4 << 10,
            1 << 30,
        )?;
        let tx = size_in_range(
            src,
            &s.tx_fifo_size,
            "session.tx_fifo_size",
            base.tx_fifo_size.into(),
            4 << 10,
            1 << 30,
        )?;
        let segment = size_in_range(
            src,
            &s.segment_size,
            "session.segment_size",
            base.segment_size as u64,
            1 << 20,
            64 << 30,
        )?;
        let add_segment = size_in_range(
            src,
            &s.add_segment_size,
            "session.add_segment_size",
            base.add_segment_size as u64,
            1 << 20,
            64 << 30,
        )?;
        if segment < rx + tx {
            let at = s.segment_size.as_ref().map(|v| v.span());
            return Err(src.error(
                at,
                "session.segment_size",
                format!(
                    "{} cannot hold one rx ({}) and one tx ({}) fifo (expected at least {})",
                    format_size(segment),
                    format_size(rx),
                    format_size(tx),
                    format_size(rx + tx)
                ),
            ));
        }
        let event_queue_size = match &s.event_queue_size {
            Some(q) => in_range(
                src,
                q,
                "session.event_queue_size",
                2,
                1 << 20,
                "event queue slots",
            )?,
            None => base.event_queue_size,
        };
        let tcp = {
            let t = &file.tcp;
            let d = TcpTuning::default();
            let backlog = |v: &Option<Spanned<u32>>, key: &str, default: u32| match v {
                Some(v) => in_range(src, v, key, 1, 1 << 20, "connections"),
                None => Ok(default),
            };
            TcpTuning {
                engine: t.engine.as_ref().map_or(d.engine, |e| e.0),
                buffer: size_in_range(
                    src,
                    &t.buffer,
                    "tcp.buffer",
                    d.buffer as u64,
                    4 << 10,
                    1 << 30,
                )? as usize,
                rto_min: match &t.rto_min_ms {
                    Some(v) => Duration::from_millis(in_range(
                        src,
                        v,
                        "tcp.rto_min_ms",
                        1,
                        60_000,
                        "milliseconds",
                    )?),
                    None => d.rto_min,
                },
                syn_backlog: backlog(&t.syn_backlog, "tcp.syn_backlog", d.syn_backlog)?,
                accept_backlog: backlog(&t.accept_backlog, "tcp.accept_backlog", d.accept_backlog)?,
                congestion: t.congestion.as_ref().map_or(d.congestion, |c| c.0),
                ..d
            }
        };

        let d = &file.daemon;
        let runtime_dir = d
            .runtime_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR));
        let control_socket = d
            .control_socket
            .as_ref()
            .map_or_else(|| runtime_dir.join("control.sock"), |p| p.get_ref().clone());
        let app_socket = s
            .app_socket
            .as_ref()
            .map_or_else(|| runtime_dir.join("app.sock"), |p| p.get_ref().clone());
        if app_socket == control_socket {
            let at = s.app_socket.as_ref().map(|p| p.span());
            return Err(src.error(
                at,
                "session.app_socket",
                format!(
                    "{} is also the control socket (expected another path)",
                    app_socket.display()
                ),
            ));
        }
        let log = match &d.log {
            Some(l) => {
                if let Err(e) = tracing_subscriber::EnvFilter::try_new(l.get_ref()) {
                    return Err(src.at(
                        l,
                        "daemon.log",
                        format!(
                            "{e} (expected error, warn, info, debug, trace or a tracing filter)"
                        ),
                    ));
                }
                Some(l.get_ref().clone())
            }
            None => None,
        };
        let metrics = d.metrics_port.map(|port| {
            SocketAddr::new(
                d.metrics_address.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                port,
            )
        });

        let app_socket_access = socket_access(
            src,
            "session.",
            AccessKeys {
                app_socket_mode: &s.app_socket_mode,
                app_socket_owner: &s.app_socket_owner,
                app_socket_group: &s.app_socket_group,
            },
        )?;
        let mut namespaces: Vec<NamespaceSpec> = Vec::new();
        let mut paths = vec![control_socket.clone(), app_socket.clone()];
        for (i, ns) in file.namespace.iter().enumerate() {
            let ns = ns.get_ref();
            let key = |k: &str| format!("namespace[{i}].{k}");
            let id = ns.id.get_ref().clone();
            if id.is_empty() || id == "default" {
                return Err(src.at(
                    &ns.id,
                    &key("id"),
                    "the default namespace always exists; name another (its app socket is session.app_socket)",
                ));
            }
            if id.len() > NAMESPACE_ID_MAX || id.chars().any(|c| c.is_whitespace() || c == '/') {
                return Err(src.at(
                    &ns.id,
                    &key("id"),
                    format!("'{id}' is not a namespace id (1-{NAMESPACE_ID_MAX} characters, no spaces or '/')"),
                ));
            }
            if namespaces.iter().any(|n| n.id == id) {
                return Err(src.at(
                    &ns.id,
                    &key("id"),
                    format!("namespace '{id}' is configured twice"),
                ));
            }
            let bind_interface = match &ns.interface {
                Some(b) if ifaces.iter().any(|c| c.name == *b.get_ref()) => {
                    Some(b.get_ref().clone())
                }
                Some(b) => {
                    let names: Vec<&str> = ifaces.iter().map(|c| c.name.as_str()).collect();
                    return Err(src.at(
                        b,
                        &key("interface"),
                        format!(
                            "'{}' is not one of this daemon's interfaces (expected one of {names:?})",
                            b.get_ref()
                        ),
                    ));
                }
                None => None,
            };
            let path = ns.app_socket.as_ref().map_or_else(
                || runtime_dir.join(format!("app-{id}.sock")),
                |p| p.get_ref().clone(),
            );
            if paths.contains(&path) {
                let at = ns.app_socket.as_ref().map_or(ns.id.span(), |p| p.span());
                return Err(src.error(
                    Some(at),
                    &key("app_socket"),
                    format!(
                        "{} is already used by another socket (expected a path of its own)",
                        path.display()
                    ),
                ));
            }
            paths.push(path.clone());
            let access = socket_access(
                src,
                &key(""),
                AccessKeys {
                    app_socket_mode: &ns.app_socket_mode,
                    app_socket_owner: &ns.app_socket_owner,
                    app_socket_group: &ns.app_socket_group,
                },
            )?;
            namespaces.push(NamespaceSpec {
                id,
                secret: ns.secret,
                bind_interface,
                table: ns.table,
                app_socket: path,
                access,
            });
        }

        let mut interfaces = Vec::new();
        let mut next_core = 0;
        let netns = ifaces[0].netns.clone();
        for (i, c) in ifaces.into_iter().enumerate() {
            let stack = StackConfig {
                interface: c.name,
                driver: c.driver,
                xdp_mode: c.xdp_mode,
                xdp_copy: c.xdp_copy,
                tap_offload: c.offload,
                tap_rx: c.tap_read,
                queues: c.queues,
                traffic_steered: c.traffic_steered,
                cores: c
                    .queues
                    .and_then(|q| cores.get(next_core..next_core + q as usize))
                    .map(<[usize]>::to_vec)
                    .unwrap_or_default(),
                addresses: c.addresses,
                gateway: c.gateway,
                tcp: tcp.clone(),
                seed: 0,
                inject_loss: 0,
                table: c.table,
            };
            next_core += c.queues.unwrap_or(0) as usize;
            // What is left to check is the stack's own rules.
            stack
                .validate()
                .map_err(|e| src.error(Some(0..0), &format!("interface[{i}]"), e.to_string()))?;
            interfaces.push(DaemonInterface { stack, mtu: c.mtu });
        }
        Ok(Self {
            interfaces,
            mode,
            netns,
            runtime_dir,
            control_socket,
            app_socket,
            app_socket_access,
            namespaces,
            app_defaults: AppSizeDefaults {
                segment_size: segment as usize,
                add_segment_size: add_segment as usize,
                rx_fifo_size: rx as u32,
                tx_fifo_size: tx as u32,
                event_queue_size,
            },
            private_rx_queues,
            log,
            metrics,
        })
    }

    /// Every socket path the daemon creates (control, then app sockets).
    pub(crate) fn socket_paths(&self) -> Vec<PathBuf> {
        let mut v = vec![self.control_socket.clone(), self.app_socket.clone()];
        v.extend(self.namespaces.iter().map(|n| n.app_socket.clone()));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[[interface]]\nname = \"veth0\"\naddresses = [\"10.77.0.1/24\"]\n";

    fn err(text: &str) -> ConfigError {
        DaemonConfig::parse(text, "t.toml").expect_err("config was accepted")
    }

    #[test]
    fn one_interface_is_a_complete_config_with_defaults() {
        let c = DaemonConfig::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(c.interfaces[0].stack.interface, "veth0");
        assert_eq!(c.interfaces[0].stack.queues, None);
        assert_eq!(c.interfaces[0].stack.driver, DriverKind::AfXdp);
        assert_eq!(c.mode, WorkerMode::Poll);
        assert_eq!(c.control_socket, Path::new(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.app_socket, Path::new("/run/hoststack/app.sock"));
        assert_eq!(c.app_defaults, AppSizeDefaults::default());
        assert!(c.namespaces.is_empty());
        assert!(c.metrics.is_none());
        assert!(c.log.is_none());
    }

    #[test]
    fn the_example_config_in_the_repository_parses() {
        let text = include_str!("../../../../hoststack.toml.example");
        let c = DaemonConfig::parse(text, "hoststack.toml.example").unwrap();
        assert_eq!(c.namespaces.len(), 1);
        assert_eq!(c.mode, WorkerMode::Interrupt);
        assert!(c.metrics.is_some());
    }

    #[test]
    fn every_key_is_read() {
        let text = r#"
[daemon]
runtime_dir = "/tmp/hs"
control_socket = "/tmp/hs/ctl.sock"
log = "info"
metrics_port = 9273
metrics_address = "0.0.0.0"

[[interface]]
name = "eth1"
driver = "afxdp"
queues = 2
traffic_steered = true
xdp_mode = "generic"
xdp_copy = "copy"
addresses = ["10.0.0.1/24", "fd00::1/64"]
gateway = "10.0.0.254"
mtu = 1500
netns = "lab"

[workers]
cores = [0, 0]

[session]
worker_mode = "adaptive"
private_rx_queues = true
rx_fifo_size = "128K"
tx_fifo_size = 262144
segment_size = "64M"
add_segment_size = "16M"
event_queue_size = 4096
app_socket = "/tmp/hs/app.sock"

[tcp]
buffer = "2M"

[[namespace]]
id = "blue"
secret = 42
interface = "eth1"
table = 3
"#;
        let c = DaemonConfig::parse(text, "t.toml").unwrap();
        assert_eq!(c.interfaces[0].stack.queues, Some(2));
        assert!(c.interfaces[0].stack.traffic_steered);
        assert_eq!(c.interfaces[0].stack.xdp_mode, XdpAttachMode::Generic);
        assert_eq!(c.interfaces[0].stack.xdp_copy, XdpCopyMode::Copy);
        assert_eq!(c.interfaces[0].stack.cores, vec![0, 0]);
        assert_eq!(
            c.interfaces[0].stack.gateway,
            Some("10.0.0.254".parse().unwrap())
        );
        assert_eq!(c.interfaces[0].stack.tcp.buffer, 2 << 20);
        assert_eq!(c.mode, WorkerMode::Adaptive);
        assert_eq!(c.interfaces[0].mtu, Some(1500));
        assert_eq!(c.netns.as_deref(), Some("lab"));
        assert_eq!(c.control_socket, Path::new("/tmp/hs/ctl.sock"));
        assert_eq!(c.log.as_deref(), Some("info"));
        assert_eq!(c.metrics, Some("0.0.0.0:9273".parse().unwrap()));
        assert_eq!(
            c.app_defaults,
            AppSizeDefaults {
                segment_size: 64 << 20,
                add_segment_size: 16 << 20,
                rx_fifo_size: 128 << 10,
                tx_fifo_size: 256 << 10,
                event_queue_size: 4096,
            }
        );
        assert_eq!(
            c.namespaces,
            vec![NamespaceSpec {
                id: "blue".into(),
                secret: 42,
                bind_interface: Some("eth1".into()),
                table: 3,
                app_socket: "/tmp/hs/app-blue.sock".into(),
                access: SocketAccess::default(),
            }]
        );
    }

    #[test]
    fn tcp_keys_choose_the_engine_and_tune_it_and_bad_values_are_named() {
        let c = DaemonConfig::parse(
            &format!(
                "{MINIMAL}[tcp]\nengine = \"smoltcp\"\nrto_min_ms = 50\nsyn_backlog = 16\n\
                 accept_backlog = 8\ncongestion = \"newreno\"\n"
            ),
            "t.toml",
        )
        .unwrap();
        let t = &c.interfaces[0].stack.tcp;
        assert_eq!(t.engine, TcpEngineKind::Smoltcp);
        assert_eq!(t.rto_min, Duration::from_millis(50));
        assert_eq!((t.syn_backlog, t.accept_backlog), (16, 8));
        assert_eq!(
            t.congestion,
            hoststack_tcp::CongestionAlgorithmKind::NewReno
        );
        let d = DaemonConfig::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(d.interfaces[0].stack.tcp.engine, TcpEngineKind::Hoststack);
        let e = err(&format!("{MINIMAL}[tcp]\nengine = \"quantum\"\n"));
        assert_eq!(e.key, "tcp.engine");
        assert!(e.message.contains("hoststack or smoltcp"), "{e}");
        let e = err(&format!("{MINIMAL}[tcp]\nrto_min_ms = 0\n"));
        assert_eq!(e.key, "tcp.rto_min_ms");
        let e = err(&format!("{MINIMAL}[tcp]\ncongestion = \"bbr\"\n"));
        assert_eq!(e.key, "tcp.congestion");
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line_and_the_keys_expected() {
        let e = err(&format!("{MINIMAL}\n[session]\nworker_mod = \"poll\"\n"));
        assert_eq!((e.line, e.column), (6, 1));
        assert_eq!(e.key, "session.worker_mod");
        assert!(e.message.contains("unknown field `worker_mod`"), "{e}");
        assert!(e.message.contains("worker_mode"), "{e}");
        let shown = e.to_string();
        assert!(
            shown.starts_with("t.toml:6:1: session.worker_mod: unknown field"),
            "{shown}"
        );
        assert!(shown.contains("6 | worker_mod = \"poll\""), "{shown}");
    }

    #[test]
    fn a_bad_value_names_key_line_and_expected_form() {
        let e = err(&format!("{MINIMAL}[session]\nworker_mode = \"fast\"\n"));
        assert_eq!(e.line, 5);
        assert_eq!(e.key, "session.worker_mode");
        assert!(
            e.message.contains("expected poll, interrupt or adaptive"),
            "{e}"
        );

        let e = err("[[interface]]\nname = \"veth0\"\naddresses = [\"10.77.0.1\"]\n");
        assert_eq!(e.line, 3);
        assert!(e.key.starts_with("interface[0].addresses"), "{}", e.key);
        assert!(e.message.contains("ADDRESS/PREFIX"), "{e}");

        let e = err(&format!("{MINIMAL}[session]\nrx_fifo_size = \"12Q\"\n"));
        assert_eq!(e.key, "session.rx_fifo_size");
        assert!(e.message.contains("expected K, M or G"), "{e}");

        let e = err(&format!("{MINIMAL}[session]\nrx_fifo_size = true\n"));
        assert!(e.message.contains("a byte size"), "{e}");

        let e = err(
            "[[interface]]\nname = \"veth0\"\ndriver = \"dpdk\"\naddresses = [\"10.0.0.1/8\"]\n",
        );
        assert_eq!((e.line, e.key.as_str()), (3, "interface[0].driver"));
        assert!(e.message.contains("expected afxdp or uring-tap"), "{e}");
    }

    #[test]
    fn values_out_of_range_are_refused_at_their_line() {
        let e = err("[[interface]]\nname = \"veth0\"\nqueues = 0\naddresses = [\"10.0.0.1/8\"]\n");
        assert_eq!((e.line, e.key.as_str()), (3, "interface[0].queues"));
        assert!(e.message.contains("1..=64"), "{e}");

        let e = err(&format!(
            "{MINIMAL}queues = 2\n[workers]\ncores = [0, 1, 0]\n"
        ));
        assert_eq!((e.line, e.key.as_str()), (6, "workers.cores"));
        assert!(e.message.contains("one core per queue"), "{e}");
        // Without queues, the count is the interface's, unknown until start.
        let e = err(&format!("{MINIMAL}[workers]\ncores = [0, 1]\n"));
        assert_eq!((e.line, e.key.as_str()), (5, "workers.cores"));
        assert!(e.message.contains("set queues on every"), "{e}");

        let e = err(&format!(
            "{MINIMAL}[session]\nsegment_size = \"1M\"\nrx_fifo_size = \"1M\"\n"
        ));
        assert_eq!(e.key, "session.segment_size");
        assert_eq!(e.line, 5);

        let e = err(&format!("{MINIMAL}[session]\nevent_queue_size = 1\n"));
        assert_eq!(e.key, "session.event_queue_size");
    }

    #[test]
    fn private_rx_queues_default_to_true_and_can_be_turned_off() {
        let parse = |extra: &str| DaemonConfig::parse(&format!("{MINIMAL}{extra}"), "t").unwrap();
        assert!(parse("").private_rx_queues);
        assert!(parse("[session]\nprivate_rx_queues = true\n").private_rx_queues);
        assert!(!parse("[session]\nprivate_rx_queues = false\n").private_rx_queues);
        let e = err(&format!("{MINIMAL}[session]\nprivate_rx_queues = 1\n"));
        assert_eq!((e.line, e.key.as_str()), (5, "session.private_rx_queues"));
    }

    #[test]
    fn several_interfaces_share_the_cores_in_order_and_none_is_refused() {
        let two = format!(
            "{MINIMAL}queues = 1\n[[interface]]\nname = \"veth1\"\nqueues = 1\naddresses = [\"10.1.0.1/24\"]\ngateway = \"10.1.0.254\"\nmtu = 1400\n[workers]\ncores = [1, 0]\n[[namespace]]\nid = \"red\"\nsecret = 1\ninterface = \"veth1\"\n"
        );
        let c = DaemonConfig::parse(&two, "t").unwrap();
        let names: Vec<&str> = c
            .interfaces
            .iter()
            .map(|i| i.stack.interface.as_str())
            .collect();
        assert_eq!(names, ["veth0", "veth1"]);
        assert_eq!(c.interfaces[0].stack.cores, vec![1]);
        assert_eq!(c.interfaces[1].stack.cores, vec![0]);
        assert_eq!(c.interfaces[1].mtu, Some(1400));
        assert_eq!(
            c.interfaces[1].stack.gateway,
            Some("10.1.0.254".parse().unwrap())
        );
        assert_eq!(c.namespaces[0].bind_interface.as_deref(), Some("veth1"));
        // Mistakes in the second table name it.
        let e = err(&format!(
            "{MINIMAL}[[interface]]\nname = \"veth1\"\naddresses = []\n"
        ));
        assert_eq!((e.line, e.key.as_str()), (6, "interface[1].addresses"));
        let e = err(&format!(
            "{MINIMAL}[[interface]]\nname = \"veth0\"\naddresses = [\"10.1.0.1/24\"]\n"
        ));
        assert_eq!((e.line, e.key.as_str()), (5, "interface[1].name"));
        assert!(e.message.contains("configured twice"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[[interface]]\nname = \"veth1\"\naddresses = [\"10.1.0.1/24\"]\nnetns = \"other\"\n"
        ));
        assert_eq!(e.key, "interface[1].netns");
        let e = err(&format!(
            "{MINIMAL}queues = 1\n[[interface]]\nname = \"veth1\"\nqueues = 1\naddresses = [\"10.1.0.1/24\"]\n[workers]\ncores = [0]\n"
        ));
        assert_eq!(e.key, "workers.cores");
        assert!(e.message.contains("1 cores for 2 queues"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[[namespace]]\nid = \"red\"\nsecret = 1\ninterface = \"veth9\"\n"
        ));
        assert_eq!(e.key, "namespace[0].interface");
        let e = err("[session]\nworker_mode = \"poll\"\n");
        assert_eq!(e.line, 0);
        assert!(
            e.to_string()
                .starts_with("t.toml: interface: no [[interface]]"),
            "{e}"
        );
    }

    #[test]
    fn namespaces_are_checked() {
        let ns = |body: &str| format!("{MINIMAL}[[namespace]]\n{body}\n");
        let e = err(&ns("id = \"default\""));
        assert_eq!((e.line, e.key.as_str()), (5, "namespace[0].id"));
        let e = err(&ns("id = \"a\"\ninterface = \"eth9\""));
        assert_eq!((e.line, e.key.as_str()), (6, "namespace[0].interface"));
        assert!(e.message.contains("expected one of [\"veth0\"]"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[[namespace]]\nid = \"a\"\n[[namespace]]\nid = \"a\"\n"
        ));
        assert_eq!((e.line, e.key.as_str()), (7, "namespace[1].id"));
        let e = err(&ns(
            "id = \"a\"\napp_socket = \"/run/hoststack/control.sock\"",
        ));
        assert_eq!(e.key, "namespace[0].app_socket");
        let e = err(&ns("id = \"a\"\nsecret = -1"));
        assert_eq!((e.line, e.key.as_str()), (6, "namespace[0].secret"));
    }

    #[test]
    fn app_socket_access_is_set_per_namespace_and_checked() {
        let c = DaemonConfig::parse(
            &format!(
                "{MINIMAL}[session]\napp_socket_mode = 0o660\napp_socket_owner = \"root\"\napp_socket_group = 0\n[[namespace]]\nid = \"red\"\napp_socket_mode = \"0606\"\napp_socket_group = \"root\"\n[[namespace]]\nid = \"blue\"\n"
            ),
            "t",
        )
        .unwrap();
        assert_eq!(
            c.app_socket_access,
            SocketAccess {
                mode: 0o660,
                owner: Some(0),
                group: Some(0)
            }
        );
        assert_eq!(
            c.namespaces[0].access,
            SocketAccess {
                mode: 0o606,
                owner: None,
                group: Some(0)
            }
        );
        assert_eq!(c.namespaces[1].access, SocketAccess::default());
        let e = err(&format!("{MINIMAL}[session]\napp_socket_mode = 660\n"));
        assert_eq!((e.line, e.key.as_str()), (5, "session.app_socket_mode"));
        assert!(e.message.contains("0o777"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[session]\napp_socket_mode = \"rw-rw----\"\n"
        ));
        assert_eq!(e.key, "session.app_socket_mode");
        let e = err(&format!(
            "{MINIMAL}[[namespace]]\nid = \"red\"\napp_socket_owner = \"no-such-user-hs\"\n"
        ));
        assert_eq!(
            (e.line, e.key.as_str()),
            (6, "namespace[0].app_socket_owner")
        );
        assert!(e.message.contains("no user 'no-such-user-hs'"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[[namespace]]\nid = \"red\"\napp_socket_group = \"no-such-group-hs\"\n"
        ));
        assert_eq!(e.key, "namespace[0].app_socket_group");
        assert!(e.message.contains("no group 'no-such-group-hs'"), "{e}");
    }

    #[test]
    fn syntax_errors_carry_their_line() {
        let e = err("[[interface]\nname = 1\n");
        assert_eq!(e.line, 1);
        let e = err(&format!(
            "{MINIMAL}[daemon]\nlog = \"info\"\nlog = \"debug\"\n"
        ));
        assert_eq!(e.line, 6);
    }

    #[test]
    fn byte_sizes_parse_and_print() {
        assert_eq!("64K".parse::<ByteSize>().unwrap(), ByteSize(64 << 10));
        assert_eq!("4 MiB".parse::<ByteSize>().unwrap(), ByteSize(4 << 20));
        assert_eq!("1g".parse::<ByteSize>().unwrap(), ByteSize(1 << 30));
        assert_eq!("100".parse::<ByteSize>().unwrap(), ByteSize(100));
        assert!("K".parse::<ByteSize>().is_err());
        assert!("99999999999999999999G".parse::<ByteSize>().is_err());
        assert_eq!(format_size(64 << 10), "64K");
        assert_eq!(format_size(32 << 20), "32M");
        assert_eq!(format_size(3 << 30), "3G");
        assert_eq!(format_size(1000), "1000");
    }
}
