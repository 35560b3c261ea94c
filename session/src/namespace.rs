//! App namespaces: which apps may attach where, and which addresses they
//! may bind.
//!
//! A namespace has an id, a secret an app must present to attach to it, an
//! optional binding to an interface (whose addresses are the only ones its
//! apps may bind), the FIB its global sessions are looked up in, and a local
//! table for local-scope listeners (keyed in
//! [`SessionLookup`](crate::lookup::SessionLookup) by the namespace's own
//! index).
//!
//! The default namespace exists from the start with index 0 and id
//! `"default"`; an empty id names it too. **It checks no secret**: VPP gives
//! it secret 0 and skips the check when an app names no namespace, and here
//! the explicit id `"default"` behaves the same, so the two spellings of one
//! namespace never disagree. Its secret therefore stays 0: an update that
//! sets another one is refused. It cannot be deleted.
//!
//! Indices of deleted namespaces are reused. That is safe because a
//! namespace that apps still use cannot be deleted.

use std::net::IpAddr;

use hashbrown::HashMap;
use slab::Slab;

use hoststack_app_proto::endpoint::{Endpoint, IpFamily};
use hoststack_app_proto::error::{SessionError, SessionResult};
use hoststack_app_proto::handle::{FibIndex, NamespaceIndex};

/// An interface a namespace is bound to and the addresses it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceBinding {
    /// The interface's name (e.g. `eth0`).
    pub name: String,
    /// Its addresses, in the order they were configured; the first of a
    /// family is the one a zero-address bind of that family resolves to.
    pub addrs: Vec<IpAddr>,
}

impl InterfaceBinding {
    /// A binding from a name and addresses.
    pub fn new(name: impl Into<String>, addrs: Vec<IpAddr>) -> Self {
        Self {
            name: name.into(),
            addrs,
        }
    }

    /// Whether the interface has this address.
    pub fn has_addr(&self, ip: &IpAddr) -> bool {
        self.addrs.contains(ip)
    }

    /// The first address of a family, if it has one.
    pub fn first_addr(&self, family: IpFamily) -> Option<IpAddr> {
        self.addrs
            .iter()
            .copied()
            .find(|ip| IpFamily::of(ip) == family)
    }

    fn validate(&self) -> SessionResult<()> {
        if self.name.is_empty() {
            return Err(SessionError::InvalidValue("empty interface name".into()));
        }
        for (i, ip) in self.addrs.iter().enumerate() {
            if ip.is_unspecified() {
                return Err(SessionError::InvalidValue(format!(
                    "interface {} cannot have the zero address {ip}",
                    self.name
                )));
            }
            if self.addrs[..i].contains(ip) {
                return Err(SessionError::InvalidValue(format!(
                    "interface {} lists {ip} twice",
                    self.name
                )));
            }
        }
        Ok(())
    }
}

/// What `add` and `update` set on a namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceConfig {
    /// The secret apps must present to attach (must be 0 for the default
    /// namespace).
    pub secret: u64,
    /// The interface the namespace is bound to, if any.
    pub interface: Option<InterfaceBinding>,
    /// The FIB global sessions of the namespace are looked up in.
    pub fib_index: FibIndex,
}

/// One app namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppNamespace {
    index: NamespaceIndex,
    id: String,
    secret: u64,
    interface: Option<InterfaceBinding>,
    fib_index: FibIndex,
}

impl AppNamespace {
    /// The namespace's index.
    pub fn index(&self) -> NamespaceIndex {
        self.index
    }

    /// The namespace's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret apps must present (not checked for the default).
    pub fn secret(&self) -> u64 {
        self.secret
    }

    /// The interface the namespace is bound to, if any.
    pub fn interface(&self) -> Option<&InterfaceBinding> {
        self.interface.as_ref()
    }

    /// The FIB global sessions are looked up in.
    pub fn fib_index(&self) -> FibIndex {
        self.fib_index
    }

    /// The key of the namespace's local table in
    /// [`SessionLookup`](crate::lookup::SessionLookup): its own index.
    pub fn local_table(&self) -> NamespaceIndex {
        self.index
    }

    /// Whether this is the default namespace.
    pub fn is_default(&self) -> bool {
        self.index == NamespaceIndex::DEFAULT
    }
}

/// The table of app namespaces.
#[derive(Debug, Clone)]
pub struct AppNamespaces {
    pool: Slab<AppNamespace>,
    by_id: HashMap<String, NamespaceIndex>,
}

impl Default for AppNamespaces {
    fn default() -> Self {
        Self::new()
    }
}

impl AppNamespaces {
    /// The id of the default namespace.
    pub const DEFAULT_ID: &'static str = "default";

    /// A table holding only the default namespace (no interface, FIB 0).
    pub fn new() -> Self {
        let mut pool = Slab::new();
        let key = pool.insert(AppNamespace {
            index: NamespaceIndex::DEFAULT,
            id: Self::DEFAULT_ID.to_owned(),
            secret: 0,
            interface: None,
            fib_index: FibIndex::DEFAULT,
        });
        debug_assert_eq!(key, NamespaceIndex::DEFAULT.as_usize());
        let mut by_id = HashMap::new();
        by_id.insert(Self::DEFAULT_ID.to_owned(), NamespaceIndex::DEFAULT);
        Self { pool, by_id }
    }

    /// Adds a namespace. An empty id, or one already in use (including
    /// `"default"`), is [`SessionError::InvalidValue`], as is a malformed
    /// interface binding (empty name, zero or repeated address).
    pub fn add(&mut self, id: &str, config: NamespaceConfig) -> SessionResult<NamespaceIndex> {
        if id.is_empty() {
            return Err(SessionError::InvalidValue(
                "empty namespace id (it names the default namespace, which exists)".into(),
            ));
        }
        if self.by_id.contains_key(id) {
            return Err(SessionError::InvalidValue(format!(
                "namespace {id} already exists"
            )));
        }
        if let Some(interface) = &config.interface {
            interface.validate()?;
        }
        let entry = self.pool.vacant_entry();
        let Some(index) = NamespaceIndex::from_usize(entry.key()) else {
            return Err(SessionError::InvalidValue("namespace table full".into()));
        };
        entry.insert(AppNamespace {
            index,
            id: id.to_owned(),
            secret: config.secret,
            interface: config.interface,
            fib_index: config.fib_index,
        });
        self.by_id.insert(id.to_owned(), index);
        Ok(index)
    }

    /// Replaces the secret, interface binding and FIB of an existing
    /// namespace (an empty id names the default). Unknown id is
    /// [`SessionError::InvalidNamespace`]; a non-zero secret for the
    /// default namespace or a malformed binding is
    /// [`SessionError::InvalidValue`].
    pub fn update(&mut self, id: &str, config: NamespaceConfig) -> SessionResult<NamespaceIndex> {
        let index = self
            .index_of(id)
            .ok_or_else(|| SessionError::InvalidNamespace(id.to_owned()))?;
        if index == NamespaceIndex::DEFAULT && config.secret != 0 {
            return Err(SessionError::InvalidValue(
                "the default namespace checks no secret; its secret stays 0".into(),
            ));
        }
        if let Some(interface) = &config.interface {
            interface.validate()?;
        }
        let ns = self
            .pool
            .get_mut(index.as_usize())
            .ok_or_else(|| SessionError::InvalidNamespace(id.to_owned()))?;
        ns.secret = config.secret;
        ns.interface = config.interface;
        ns.fib_index = config.fib_index;
        Ok(index)
    }

    /// Deletes a namespace and returns it (the caller drops its local
    /// table). `users` is asked how many apps are attached to it; if any
    /// are, the delete is refused with [`SessionError::NamespaceInUse`].
    /// The default namespace cannot be deleted
    /// ([`SessionError::InvalidValue`]); an unknown id is
    /// [`SessionError::InvalidNamespace`].
    pub fn del(
        &mut self,
        id: &str,
        users: impl FnOnce(NamespaceIndex) -> usize,
    ) -> SessionResult<AppNamespace> {
        let index = self
            .index_of(id)
            .ok_or_else(|| SessionError::InvalidNamespace(id.to_owned()))?;
        if index == NamespaceIndex::DEFAULT {
            return Err(SessionError::InvalidValue(
                "the default namespace cannot be deleted".into(),
            ));
        }
        let apps = users(index);
        if apps > 0 {
            return Err(SessionError::NamespaceInUse {
                id: id.to_owned(),
                apps,
            });
        }
        let ns = self
            .pool
            .try_remove(index.as_usize())
            .ok_or_else(|| SessionError::InvalidNamespace(id.to_owned()))?;
        self.by_id.remove(ns.id.as_str());
        Ok(ns)
    }

    /// The index of a namespace by id; the empty id is the default.
    pub fn index_of(&self, id: &str) -> Option<NamespaceIndex> {
        if id.is_empty() {
            return Some(NamespaceIndex::DEFAULT);
        }
        self.by_id.get(id).copied()
    }

    /// A namespace by index.
    pub fn get(&self, index: NamespaceIndex) -> Option<&AppNamespace> {
        self.pool.get(index.as_usize())
    }

    /// The namespace an app attaching with `id` and `secret` lands in.
    /// Unknown id is [`SessionError::InvalidNamespace`]; a secret that does
    /// not match is [`SessionError::WrongNamespaceSecret`]. The default
    /// namespace (empty id or `"default"`) accepts any secret.
    pub fn lookup_for_attach(&self, id: &str, secret: u64) -> SessionResult<NamespaceIndex> {
        let index = self
            .index_of(id)
            .ok_or_else(|| SessionError::InvalidNamespace(id.to_owned()))?;
        if index == NamespaceIndex::DEFAULT {
            return Ok(index);
        }
        let ns = self
            .get(index)
            .ok_or_else(|| SessionError::InvalidNamespace(id.to_owned()))?;
        if ns.secret != secret {
            return Err(SessionError::WrongNamespaceSecret(id.to_owned()));
        }
        Ok(index)
    }

    /// The endpoint an app of namespace `ns` really binds when it asks for
    /// `endpoint`. In a namespace bound to an interface, a zero address
    /// becomes the interface's first address of the same family, and a
    /// non-zero address must be one of the interface's; otherwise (or when
    /// the interface has no address of that family) it is
    /// [`SessionError::EndpointNotOnInterface`]. A namespace with no
    /// binding returns the endpoint unchanged. Unknown `ns` is
    /// [`SessionError::InvalidNamespace`].
    ///
    /// Local-scope listeners keep the zero address: callers put the
    /// endpoint as asked in the local table and only resolve the global one.
    pub fn resolve_bind(&self, ns: NamespaceIndex, endpoint: Endpoint) -> SessionResult<Endpoint> {
        let namespace = self
            .get(ns)
            .ok_or_else(|| SessionError::InvalidNamespace(format!("index {ns}")))?;
        let Some(interface) = &namespace.interface else {
            return Ok(endpoint);
        };
        if endpoint.is_zero_ip() {
            return interface
                .first_addr(endpoint.family())
                .map(|ip| Endpoint::new(ip, endpoint.port))
                .ok_or_else(|| {
                    SessionError::EndpointNotOnInterface(format!(
                        "{endpoint} (interface {} has no {} address)",
                        interface.name,
                        endpoint.family()
                    ))
                });
        }
        if interface.has_addr(&endpoint.ip) {
            Ok(endpoint)
        } else {
            Err(SessionError::EndpointNotOnInterface(format!(
                "{endpoint} (interface {})",
                interface.name
            )))
        }
    }

    /// Every namespace, by ascending index (the default first).
    pub fn iter(&self) -> impl Iterator<Item = &AppNamespace> + '_ {
        self.pool.iter().map(|(_, ns)| ns)
    }

    /// How many namespaces exist (at least 1, the default).
    pub fn len(&self) -> usize {
        self.pool.len()
    }

    /// Always false: the default namespace always exists.
    pub fn is_empty(&self) -> bool {
        self.pool.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn ep(s: &str, port: u16) -> Endpoint {
        Endpoint::new(ip(s), port)
    }

    fn bound(secret: u64, addrs: &[&str]) -> NamespaceConfig {
        NamespaceConfig {
            secret,
            interface: Some(InterfaceBinding::new(
                "eth1",
                addrs.iter().map(|s| ip(s)).collect(),
            )),
            fib_index: FibIndex(3),
        }
    }

    fn secret_only(secret: u64) -> NamespaceConfig {
        NamespaceConfig {
            secret,
            ..NamespaceConfig::default()
        }
    }

    #[test]
    fn default_namespace_exists_from_the_start() {
        let t = AppNamespaces::new();
        assert_eq!(t.len(), 1);
        let d = t.get(NamespaceIndex::DEFAULT).expect("default");
        assert_eq!(d.id(), "default");
        assert_eq!(d.secret(), 0);
        assert!(d.is_default());
        assert_eq!(t.index_of(""), Some(NamespaceIndex::DEFAULT));
        assert_eq!(t.index_of("default"), Some(NamespaceIndex::DEFAULT));
    }

    #[test]
    fn empty_id_attaches_to_default_with_any_secret() {
        let t = AppNamespaces::new();
        assert_eq!(t.lookup_for_attach("", 0), Ok(NamespaceIndex::DEFAULT));
        assert_eq!(t.lookup_for_attach("", 1234), Ok(NamespaceIndex::DEFAULT));
        assert_eq!(
            t.lookup_for_attach("default", 99),
            Ok(NamespaceIndex::DEFAULT)
        );
    }

    #[test]
    fn unknown_id_is_invalid_namespace() {
        let t = AppNamespaces::new();
        assert!(matches!(
            t.lookup_for_attach("nope", 0),
            Err(SessionError::InvalidNamespace(id)) if id == "nope"
        ));
    }

    #[test]
    fn wrong_secret_is_wrong_namespace_secret() {
        let mut t = AppNamespaces::new();
        let idx = t.add("blue", secret_only(42)).expect("add");
        assert_eq!(t.lookup_for_attach("blue", 42), Ok(idx));
        assert!(matches!(
            t.lookup_for_attach("blue", 41),
            Err(SessionError::WrongNamespaceSecret(id)) if id == "blue"
        ));
        assert!(matches!(
            t.lookup_for_attach("blue", 0),
            Err(SessionError::WrongNamespaceSecret(_))
        ));
    }

    #[test]
    fn adding_an_existing_or_empty_id_is_invalid_value() {
        let mut t = AppNamespaces::new();
        t.add("blue", secret_only(1)).expect("add");
        assert!(matches!(
            t.add("blue", secret_only(2)),
            Err(SessionError::InvalidValue(_))
        ));
        assert!(matches!(
            t.add("default", secret_only(0)),
            Err(SessionError::InvalidValue(_))
        ));
        assert!(matches!(
            t.add("", secret_only(0)),
            Err(SessionError::InvalidValue(_))
        ));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn malformed_interface_binding_is_invalid_value() {
        let mut t = AppNamespaces::new();
        for cfg in [
            bound(1, &["0.0.0.0"]),
            bound(1, &["10.0.0.1", "10.0.0.1"]),
            NamespaceConfig {
                interface: Some(InterfaceBinding::new("", vec![])),
                ..NamespaceConfig::default()
            },
        ] {
            assert!(matches!(
                t.add("x", cfg),
                Err(SessionError::InvalidValue(_))
            ));
        }
        assert_eq!(t.index_of("x"), None);
    }

    #[test]
    fn update_replaces_secret_interface_and_fib() {
        let mut t = AppNamespaces::new();
        let idx = t.add("blue", secret_only(1)).expect("add");
        assert_eq!(t.update("blue", bound(7, &["10.0.0.1"])), Ok(idx));
        let ns = t.get(idx).expect("ns");
        assert_eq!(ns.secret(), 7);
        assert_eq!(ns.fib_index(), FibIndex(3));
        assert_eq!(ns.interface().map(|i| i.name.as_str()), Some("eth1"));
        assert!(matches!(
            t.lookup_for_attach("blue", 1),
            Err(SessionError::WrongNamespaceSecret(_))
        ));
    }

    #[test]
    fn updating_unknown_id_is_invalid_namespace() {
        let mut t = AppNamespaces::new();
        assert!(matches!(
            t.update("nope", secret_only(0)),
            Err(SessionError::InvalidNamespace(_))
        ));
    }

    #[test]
    fn default_namespace_may_be_bound_but_keeps_secret_zero() {
        let mut t = AppNamespaces::new();
        assert_eq!(
            t.update("", bound(0, &["10.0.0.1"])),
            Ok(NamespaceIndex::DEFAULT)
        );
        assert!(matches!(
            t.update("default", bound(5, &["10.0.0.1"])),
            Err(SessionError::InvalidValue(_))
        ));
        assert_eq!(t.get(NamespaceIndex::DEFAULT).map(|n| n.secret()), Some(0));
    }

    #[test]
    fn default_namespace_cannot_be_deleted() {
        let mut t = AppNamespaces::new();
        for id in ["", "default"] {
            assert!(matches!(
                t.del(id, |_| 0),
                Err(SessionError::InvalidValue(_))
            ));
        }
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn deleting_a_namespace_in_use_is_refused() {
        let mut t = AppNamespaces::new();
        let idx = t.add("blue", secret_only(1)).expect("add");
        let mut asked = None;
        let err = t
            .del("blue", |ns| {
                asked = Some(ns);
                2
            })
            .expect_err("in use");
        assert_eq!(asked, Some(idx));
        assert_eq!(
            err,
            SessionError::NamespaceInUse {
                id: "blue".into(),
                apps: 2
            }
        );
        assert_eq!(t.lookup_for_attach("blue", 1), Ok(idx));
    }

    #[test]
    fn deleting_an_unused_namespace_frees_its_id() {
        let mut t = AppNamespaces::new();
        let idx = t.add("blue", secret_only(1)).expect("add");
        let ns = t.del("blue", |_| 0).expect("del");
        assert_eq!(ns.index(), idx);
        assert_eq!(ns.local_table(), idx);
        assert_eq!(t.index_of("blue"), None);
        assert!(t.get(idx).is_none());
        assert!(matches!(
            t.lookup_for_attach("blue", 1),
            Err(SessionError::InvalidNamespace(_))
        ));
        assert!(matches!(
            t.del("blue", |_| 0),
            Err(SessionError::InvalidNamespace(_))
        ));
        assert!(t.add("blue", secret_only(3)).is_ok());
    }

    #[test]
    fn unbound_namespace_binds_endpoint_unchanged() {
        let t = AppNamespaces::new();
        for e in [
            ep("0.0.0.0", 80),
            ep("192.0.2.1", 80),
            ep("::", 80),
            ep("2001:db8::1", 80),
        ] {
            assert_eq!(t.resolve_bind(NamespaceIndex::DEFAULT, e), Ok(e));
        }
    }

    #[test]
    fn zero_address_binds_first_interface_address_of_same_family() {
        let mut t = AppNamespaces::new();
        let idx = t
            .add(
                "blue",
                bound(1, &["2001:db8::1", "10.0.0.1", "10.0.0.2", "2001:db8::2"]),
            )
            .expect("add");
        assert_eq!(
            t.resolve_bind(idx, Endpoint::zero(IpFamily::V4, 80)),
            Ok(Endpoint::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 80))
        );
        assert_eq!(
            t.resolve_bind(idx, Endpoint::zero(IpFamily::V6, 443)),
            Ok(Endpoint::new(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                443
            ))
        );
    }

    #[test]
    fn address_on_bound_interface_binds_unchanged() {
        let mut t = AppNamespaces::new();
        let idx = t
            .add("blue", bound(1, &["10.0.0.1", "10.0.0.2", "2001:db8::2"]))
            .expect("add");
        for e in [ep("10.0.0.2", 80), ep("2001:db8::2", 80)] {
            assert_eq!(t.resolve_bind(idx, e), Ok(e));
        }
    }

    #[test]
    fn address_not_on_bound_interface_is_endpoint_not_on_interface() {
        let mut t = AppNamespaces::new();
        let idx = t.add("blue", bound(1, &["10.0.0.1"])).expect("add");
        for e in [ep("10.0.0.9", 80), ep("2001:db8::1", 80)] {
            assert!(matches!(
                t.resolve_bind(idx, e),
                Err(SessionError::EndpointNotOnInterface(_))
            ));
        }
    }

    #[test]
    fn zero_address_of_family_the_interface_lacks_is_endpoint_not_on_interface() {
        let mut t = AppNamespaces::new();
        let idx = t.add("blue", bound(1, &["10.0.0.1"])).expect("add");
        assert!(matches!(
            t.resolve_bind(idx, Endpoint::zero(IpFamily::V6, 80)),
            Err(SessionError::EndpointNotOnInterface(_))
        ));
    }

    #[test]
    fn resolve_bind_in_unknown_namespace_is_invalid_namespace() {
        let t = AppNamespaces::new();
        assert!(matches!(
            t.resolve_bind(NamespaceIndex(9), ep("10.0.0.1", 1)),
            Err(SessionError::InvalidNamespace(_))
        ));
    }

    #[test]
    fn iteration_lists_default_first_then_by_index() {
        let mut t = AppNamespaces::new();
        t.add("blue", secret_only(1)).expect("add");
        t.add("red", secret_only(2)).expect("add");
        let ids: Vec<_> = t.iter().map(|n| n.id().to_owned()).collect();
        assert_eq!(ids, ["default", "blue", "red"]);
        let idx: Vec<_> = t.iter().map(|n| n.index()).collect();
        assert_eq!(
            idx,
            [NamespaceIndex(0), NamespaceIndex(1), NamespaceIndex(2)]
        );
    }
}
