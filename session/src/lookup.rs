//! Lookup tables: which session a packet belongs to, which listener a new
//! connection or a listen request meets.
//!
//! - A [`SessionTable`] per FIB holds established sessions keyed by their
//!   6-tuple ([`SessionKey`]: the 5-tuple plus the FIB, so two FIBs never
//!   collide) and global-scope listeners keyed by (transport, ip, port). A
//!   listener lookup tries the exact ip, then the wildcard address of the
//!   same family (`0.0.0.0` or `::`) on the same port.
//! - A [`LocalTable`] per namespace holds local-scope listeners. They bind
//!   the zero address only, so the table is keyed by (transport, family,
//!   port): the family is part of the key so that an app may listen locally
//!   on `0.0.0.0:80` and `[::]:80` at once, as VPP's separate v4/v6 tables
//!   allow. Any address of the family matches.
//! - [`SessionLookup`] owns both kinds, creates a table the first time its
//!   FIB or namespace is used, and applies the scope rule in
//!   [`SessionLookup::lookup_listener`].
//!
//! Errors: a duplicate listener is [`SessionError::AlreadyListening`]; a
//! duplicate session key is [`SessionError::InvalidValue`] (the transport
//! made a tuple that is in use); deleting what is not there is
//! [`SessionError::NoListener`] / [`SessionError::NoSession`]. Lookups
//! return `Option`: a miss is normal traffic, not an error.

use hashbrown::HashMap;

use hoststack_app_proto::endpoint::{Endpoint, IpFamily, SessionKey, TransportProto};
use hoststack_app_proto::error::{SessionError, SessionResult};
use hoststack_app_proto::handle::{FibIndex, ListenerHandle, NamespaceIndex, SessionHandle};

/// The sessions and global-scope listeners of one FIB.
#[derive(Debug, Clone)]
pub struct SessionTable {
    fib: FibIndex,
    sessions: HashMap<SessionKey, SessionHandle>,
    listeners: HashMap<(TransportProto, Endpoint), ListenerHandle>,
}

impl SessionTable {
    /// An empty table for a FIB.
    pub fn new(fib: FibIndex) -> Self {
        Self {
            fib,
            sessions: HashMap::new(),
            listeners: HashMap::new(),
        }
    }

    /// The FIB this table serves.
    pub fn fib(&self) -> FibIndex {
        self.fib
    }

    /// Adds an established session. A key of another FIB, or a key already
    /// in the table, is [`SessionError::InvalidValue`].
    pub fn add_session(&mut self, key: SessionKey, handle: SessionHandle) -> SessionResult<()> {
        if key.fib != self.fib {
            return Err(SessionError::InvalidValue(format!(
                "session {key} does not belong in the table of fib {}",
                self.fib
            )));
        }
        match self.sessions.entry(key) {
            hashbrown::hash_map::Entry::Occupied(e) => Err(SessionError::InvalidValue(format!(
                "session {key} already maps to {}",
                e.get()
            ))),
            hashbrown::hash_map::Entry::Vacant(e) => {
                e.insert(handle);
                Ok(())
            }
        }
    }

    /// Removes a session's entry. The entry must map to `handle`: a missing
    /// entry, or one that maps to another session, is
    /// [`SessionError::NoSession`] and is left alone.
    pub fn del_session(&mut self, key: &SessionKey, handle: SessionHandle) -> SessionResult<()> {
        match self.sessions.get(key) {
            Some(found) if *found == handle => {
                self.sessions.remove(key);
                Ok(())
            }
            _ => Err(SessionError::NoSession(handle.as_u64())),
        }
    }

    /// The session with this exact key.
    pub fn lookup_session(&self, key: &SessionKey) -> Option<SessionHandle> {
        self.sessions.get(key).copied()
    }

    /// Adds a listener on `endpoint` (a zero ip is the wildcard of its
    /// family). One already there is [`SessionError::AlreadyListening`].
    pub fn add_listener(
        &mut self,
        proto: TransportProto,
        endpoint: Endpoint,
        handle: ListenerHandle,
    ) -> SessionResult<()> {
        match self.listeners.entry((proto, endpoint)) {
            hashbrown::hash_map::Entry::Occupied(_) => Err(SessionError::AlreadyListening(
                format!("{proto} {endpoint} (fib {})", self.fib),
            )),
            hashbrown::hash_map::Entry::Vacant(e) => {
                e.insert(handle);
                Ok(())
            }
        }
    }

    /// Removes the listener on exactly `endpoint` and returns its handle;
    /// none there is [`SessionError::NoListener`].
    pub fn del_listener(
        &mut self,
        proto: TransportProto,
        endpoint: Endpoint,
    ) -> SessionResult<ListenerHandle> {
        self.listeners.remove(&(proto, endpoint)).ok_or_else(|| {
            SessionError::NoListener(format!("{proto} {endpoint} (fib {})", self.fib))
        })
    }

    /// The listener on exactly `endpoint`, without wildcard fallback (what
    /// a listen request checks against).
    pub fn lookup_listener_exact(
        &self,
        proto: TransportProto,
        endpoint: Endpoint,
    ) -> Option<ListenerHandle> {
        self.listeners.get(&(proto, endpoint)).copied()
    }

    /// The listener `endpoint` meets: the one on that exact ip and port,
    /// else the one on the wildcard address of the same family and port.
    pub fn lookup_listener(
        &self,
        proto: TransportProto,
        endpoint: Endpoint,
    ) -> Option<ListenerHandle> {
        self.lookup_listener_exact(proto, endpoint).or_else(|| {
            if endpoint.is_zero_ip() {
                None
            } else {
                self.lookup_listener_exact(proto, endpoint.to_wildcard())
            }
        })
    }

    /// Every session entry, in no particular order.
    pub fn sessions(&self) -> impl Iterator<Item = (&SessionKey, SessionHandle)> + '_ {
        self.sessions.iter().map(|(k, h)| (k, *h))
    }

    /// Every listener entry, in no particular order.
    pub fn listeners(
        &self,
    ) -> impl Iterator<Item = (TransportProto, Endpoint, ListenerHandle)> + '_ {
        self.listeners.iter().map(|((p, e), h)| (*p, *e, *h))
    }

    /// How many sessions the table holds.
    pub fn n_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// How many listeners the table holds.
    pub fn n_listeners(&self) -> usize {
        self.listeners.len()
    }

    /// Whether the table holds nothing.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.listeners.is_empty()
    }
}

/// The local-scope listeners of one namespace (zero-address binds only).
#[derive(Debug, Clone)]
pub struct LocalTable {
    ns: NamespaceIndex,
    listeners: HashMap<(TransportProto, IpFamily, u16), ListenerHandle>,
}

impl LocalTable {
    /// An empty local table for a namespace.
    pub fn new(ns: NamespaceIndex) -> Self {
        Self {
            ns,
            listeners: HashMap::new(),
        }
    }

    /// The namespace this table serves.
    pub fn namespace(&self) -> NamespaceIndex {
        self.ns
    }

    fn key(proto: TransportProto, endpoint: Endpoint) -> (TransportProto, IpFamily, u16) {
        (proto, endpoint.family(), endpoint.port)
    }

    /// Adds a local listener. A non-zero ip is
    /// [`SessionError::InvalidValue`] (local scope binds the zero address
    /// only); a listener already on that transport, family and port is
    /// [`SessionError::AlreadyListening`].
    pub fn add_listener(
        &mut self,
        proto: TransportProto,
        endpoint: Endpoint,
        handle: ListenerHandle,
    ) -> SessionResult<()> {
        if !endpoint.is_zero_ip() {
            return Err(SessionError::InvalidValue(format!(
                "local scope binds the zero address only, not {endpoint}"
            )));
        }
        match self.listeners.entry(Self::key(proto, endpoint)) {
            hashbrown::hash_map::Entry::Occupied(_) => Err(SessionError::AlreadyListening(
                format!("{proto} {endpoint} (local table of namespace {})", self.ns),
            )),
            hashbrown::hash_map::Entry::Vacant(e) => {
                e.insert(handle);
                Ok(())
            }
        }
    }

    /// Removes the local listener on `endpoint` (which must be a zero
    /// address) and returns its handle; none there is
    /// [`SessionError::NoListener`].
    pub fn del_listener(
        &mut self,
        proto: TransportProto,
        endpoint: Endpoint,
    ) -> SessionResult<ListenerHandle> {
        let removed = if endpoint.is_zero_ip() {
            self.listeners.remove(&Self::key(proto, endpoint))
        } else {
            None
        };
        removed.ok_or_else(|| {
            SessionError::NoListener(format!(
                "{proto} {endpoint} (local table of namespace {})",
                self.ns
            ))
        })
    }

    /// The local listener `endpoint` meets: the one on the zero address of
    /// its family and its port, whatever its ip.
    pub fn lookup_listener(
        &self,
        proto: TransportProto,
        endpoint: Endpoint,
    ) -> Option<ListenerHandle> {
        self.listeners.get(&Self::key(proto, endpoint)).copied()
    }

    /// Every listener entry (with its zero-address endpoint), in no
    /// particular order.
    pub fn listeners(
        &self,
    ) -> impl Iterator<Item = (TransportProto, Endpoint, ListenerHandle)> + '_ {
        self.listeners
            .iter()
            .map(|((p, fam, port), h)| (*p, Endpoint::zero(*fam, *port), *h))
    }

    /// How many listeners the table holds.
    pub fn n_listeners(&self) -> usize {
        self.listeners.len()
    }

    /// Whether the table holds nothing.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }
}

/// Which table a listener lookup matched in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerScope {
    /// The namespace's local table (cut-through).
    Local,
    /// The global table of the endpoint's FIB (through a transport).
    Global,
}

/// A listener lookup that found something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerMatch {
    /// The table it was found in.
    pub scope: ListenerScope,
    /// The listen session.
    pub handle: ListenerHandle,
}

/// What [`SessionLookup::lookup_listener`] looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerQuery {
    /// The transport.
    pub proto: TransportProto,
    /// The endpoint looked for.
    pub endpoint: Endpoint,
    /// The FIB of the endpoint (the global table searched).
    pub fib: FibIndex,
    /// The app's namespace (the local table searched).
    pub ns: NamespaceIndex,
    /// Whether the app has local scope.
    pub app_has_local_scope: bool,
    /// Whether the endpoint is local (a zero or loopback address, as in
    /// VPP): only then is the local table searched.
    pub endpoint_is_local: bool,
}

/// Entry counts over every table of a [`SessionLookup`], to prove that a
/// detach left nothing behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookupCounters {
    /// Global (per-FIB) tables created so far.
    pub global_tables: usize,
    /// Established sessions in all global tables.
    pub sessions: usize,
    /// Listeners in all global tables.
    pub global_listeners: usize,
    /// Local (per-namespace) tables created so far.
    pub local_tables: usize,
    /// Listeners in all local tables.
    pub local_listeners: usize,
}

impl LookupCounters {
    /// All entries, sessions and listeners, global and local.
    pub fn entries(&self) -> usize {
        self.sessions + self.global_listeners + self.local_listeners
    }
}

/// Every lookup table: one [`SessionTable`] per FIB, one [`LocalTable`] per
/// namespace, each created the first time it is written.
#[derive(Debug, Clone, Default)]
pub struct SessionLookup {
    global: HashMap<FibIndex, SessionTable>,
    local: HashMap<NamespaceIndex, LocalTable>,
}

impl SessionLookup {
    /// No tables yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The global table of a FIB, if it was ever written.
    pub fn global_table(&self, fib: FibIndex) -> Option<&SessionTable> {
        self.global.get(&fib)
    }

    /// The global table of a FIB, created empty if needed.
    pub fn global_table_mut(&mut self, fib: FibIndex) -> &mut SessionTable {
        self.global
            .entry(fib)
            .or_insert_with(|| SessionTable::new(fib))
    }

    /// The local table of a namespace, if it was ever written.
    pub fn local_table(&self, ns: NamespaceIndex) -> Option<&LocalTable> {
        self.local.get(&ns)
    }

    /// The local table of a namespace, created empty if needed.
    pub fn local_table_mut(&mut self, ns: NamespaceIndex) -> &mut LocalTable {
        self.local.entry(ns).or_insert_with(|| LocalTable::new(ns))
    }

    /// Drops a namespace's local table (when the namespace is deleted) and
    /// returns it, with whatever it still held.
    pub fn remove_local_table(&mut self, ns: NamespaceIndex) -> Option<LocalTable> {
        self.local.remove(&ns)
    }

    /// Adds an established session to the table of its key's FIB.
    pub fn add_session(&mut self, key: SessionKey, handle: SessionHandle) -> SessionResult<()> {
        self.global_table_mut(key.fib).add_session(key, handle)
    }

    /// Removes an established session's entry (see
    /// [`SessionTable::del_session`]).
    pub fn del_session(&mut self, key: &SessionKey, handle: SessionHandle) -> SessionResult<()> {
        match self.global.get_mut(&key.fib) {
            Some(table) => table.del_session(key, handle),
            None => Err(SessionError::NoSession(handle.as_u64())),
        }
    }

    /// The established session with this key.
    pub fn lookup_session(&self, key: &SessionKey) -> Option<SessionHandle> {
        self.global.get(&key.fib)?.lookup_session(key)
    }

    /// Adds a global-scope listener to a FIB's table.
    pub fn add_global_listener(
        &mut self,
        fib: FibIndex,
        proto: TransportProto,
        endpoint: Endpoint,
        handle: ListenerHandle,
    ) -> SessionResult<()> {
        self.global_table_mut(fib)
            .add_listener(proto, endpoint, handle)
    }

    /// Removes a global-scope listener from a FIB's table.
    pub fn del_global_listener(
        &mut self,
        fib: FibIndex,
        proto: TransportProto,
        endpoint: Endpoint,
    ) -> SessionResult<ListenerHandle> {
        match self.global.get_mut(&fib) {
            Some(table) => table.del_listener(proto, endpoint),
            None => Err(SessionError::NoListener(format!(
                "{proto} {endpoint} (fib {fib})"
            ))),
        }
    }

    /// Adds a local-scope listener to a namespace's local table.
    pub fn add_local_listener(
        &mut self,
        ns: NamespaceIndex,
        proto: TransportProto,
        endpoint: Endpoint,
        handle: ListenerHandle,
    ) -> SessionResult<()> {
        self.local_table_mut(ns)
            .add_listener(proto, endpoint, handle)
    }

    /// Removes a local-scope listener from a namespace's local table.
    pub fn del_local_listener(
        &mut self,
        ns: NamespaceIndex,
        proto: TransportProto,
        endpoint: Endpoint,
    ) -> SessionResult<ListenerHandle> {
        match self.local.get_mut(&ns) {
            Some(table) => table.del_listener(proto, endpoint),
            None => Err(SessionError::NoListener(format!(
                "{proto} {endpoint} (local table of namespace {ns})"
            ))),
        }
    }

    /// The listener a query meets: first the namespace's local table, when
    /// the app has local scope and the endpoint is local; then the global
    /// table of the endpoint's FIB (exact ip, then wildcard).
    pub fn lookup_listener(&self, query: &ListenerQuery) -> Option<ListenerMatch> {
        if query.app_has_local_scope && query.endpoint_is_local {
            let local = self
                .local
                .get(&query.ns)
                .and_then(|t| t.lookup_listener(query.proto, query.endpoint));
            if let Some(handle) = local {
                return Some(ListenerMatch {
                    scope: ListenerScope::Local,
                    handle,
                });
            }
        }
        self.global
            .get(&query.fib)?
            .lookup_listener(query.proto, query.endpoint)
            .map(|handle| ListenerMatch {
                scope: ListenerScope::Global,
                handle,
            })
    }

    /// Entry counts over every table.
    pub fn counters(&self) -> LookupCounters {
        let mut c = LookupCounters {
            global_tables: self.global.len(),
            local_tables: self.local.len(),
            ..LookupCounters::default()
        };
        for t in self.global.values() {
            c.sessions += t.n_sessions();
            c.global_listeners += t.n_listeners();
        }
        for t in self.local.values() {
            c.local_listeners += t.n_listeners();
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoststack_app_proto::endpoint::FiveTuple;

    const TCP: TransportProto = TransportProto::Tcp;
    const UDP: TransportProto = TransportProto::Udp;

    fn ep(s: &str, port: u16) -> Endpoint {
        Endpoint::new(s.parse().expect("test address"), port)
    }

    fn key(fib: u32, local: Endpoint, remote: Endpoint) -> SessionKey {
        SessionKey::new(
            FibIndex(fib),
            FiveTuple::new(TCP, local, remote).expect("same family"),
        )
    }

    fn lh(i: u32) -> ListenerHandle {
        ListenerHandle::new(0, i)
    }

    fn query(endpoint: Endpoint, local_scope: bool, is_local: bool) -> ListenerQuery {
        ListenerQuery {
            proto: TCP,
            endpoint,
            fib: FibIndex(0),
            ns: NamespaceIndex(1),
            app_has_local_scope: local_scope,
            endpoint_is_local: is_local,
        }
    }

    #[test]
    fn sessions_are_found_by_exact_tuple_in_ipv4_and_ipv6() {
        let mut l = SessionLookup::new();
        let k4 = key(0, ep("10.0.0.1", 80), ep("10.0.0.2", 5000));
        let k6 = key(0, ep("2001:db8::1", 80), ep("2001:db8::2", 5000));
        l.add_session(k4, SessionHandle::new(1, 1)).expect("add v4");
        l.add_session(k6, SessionHandle::new(2, 1)).expect("add v6");
        assert_eq!(l.lookup_session(&k4), Some(SessionHandle::new(1, 1)));
        assert_eq!(l.lookup_session(&k6), Some(SessionHandle::new(2, 1)));
        assert_eq!(
            l.lookup_session(&key(0, ep("10.0.0.1", 80), ep("10.0.0.2", 5001))),
            None
        );
        assert_eq!(
            l.lookup_session(&SessionKey::new(FibIndex(0), k4.tuple.reversed())),
            None
        );
    }

    #[test]
    fn duplicate_session_key_is_invalid_value() {
        let mut l = SessionLookup::new();
        let k = key(0, ep("10.0.0.1", 80), ep("10.0.0.2", 5000));
        l.add_session(k, SessionHandle::new(1, 1)).expect("add");
        assert!(matches!(
            l.add_session(k, SessionHandle::new(1, 2)),
            Err(SessionError::InvalidValue(_))
        ));
        assert_eq!(l.lookup_session(&k), Some(SessionHandle::new(1, 1)));
    }

    #[test]
    fn session_key_of_another_fib_is_refused_by_a_table() {
        let mut t = SessionTable::new(FibIndex(1));
        let k = key(2, ep("10.0.0.1", 80), ep("10.0.0.2", 5000));
        assert!(matches!(
            t.add_session(k, SessionHandle::new(0, 0)),
            Err(SessionError::InvalidValue(_))
        ));
        assert!(t.is_empty());
    }

    #[test]
    fn deleting_a_session_needs_its_own_handle() {
        let mut l = SessionLookup::new();
        let k = key(0, ep("10.0.0.1", 80), ep("10.0.0.2", 5000));
        let h = SessionHandle::new(1, 1);
        let other = SessionHandle::new(1, 2);
        l.add_session(k, h).expect("add");
        assert_eq!(
            l.del_session(&k, other),
            Err(SessionError::NoSession(other.as_u64()))
        );
        assert_eq!(l.lookup_session(&k), Some(h));
        assert_eq!(l.del_session(&k, h), Ok(()));
        assert_eq!(
            l.del_session(&k, h),
            Err(SessionError::NoSession(h.as_u64()))
        );
        let k9 = key(9, ep("10.0.0.1", 80), ep("10.0.0.2", 5000));
        assert_eq!(
            l.del_session(&k9, h),
            Err(SessionError::NoSession(h.as_u64()))
        );
    }

    #[test]
    fn same_tuple_in_two_fibs_is_isolated() {
        let mut l = SessionLookup::new();
        let k0 = key(0, ep("10.0.0.1", 80), ep("10.0.0.2", 5000));
        let k1 = SessionKey::new(FibIndex(1), k0.tuple);
        l.add_session(k0, SessionHandle::new(1, 10)).expect("fib 0");
        l.add_session(k1, SessionHandle::new(1, 11))
            .expect("fib 1, same tuple");
        assert_eq!(l.lookup_session(&k0), Some(SessionHandle::new(1, 10)));
        assert_eq!(l.lookup_session(&k1), Some(SessionHandle::new(1, 11)));
        l.add_global_listener(FibIndex(0), TCP, ep("0.0.0.0", 80), lh(1))
            .expect("fib 0");
        l.add_global_listener(FibIndex(1), TCP, ep("0.0.0.0", 80), lh(2))
            .expect("fib 1");
        let mut q = query(ep("10.0.0.1", 80), false, false);
        assert_eq!(l.lookup_listener(&q).map(|m| m.handle), Some(lh(1)));
        q.fib = FibIndex(1);
        assert_eq!(l.lookup_listener(&q).map(|m| m.handle), Some(lh(2)));
        q.fib = FibIndex(2);
        assert_eq!(l.lookup_listener(&q), None);
    }

    #[test]
    fn listener_lookup_falls_back_to_wildcard_of_same_family() {
        let mut t = SessionTable::new(FibIndex(0));
        t.add_listener(TCP, ep("0.0.0.0", 80), lh(4))
            .expect("v4 wildcard");
        t.add_listener(TCP, ep("::", 80), lh(6))
            .expect("v6 wildcard");
        assert_eq!(t.lookup_listener(TCP, ep("10.0.0.1", 80)), Some(lh(4)));
        assert_eq!(t.lookup_listener(TCP, ep("2001:db8::1", 80)), Some(lh(6)));
        assert_eq!(t.lookup_listener(TCP, ep("10.0.0.1", 81)), None);
        assert_eq!(t.lookup_listener(UDP, ep("10.0.0.1", 80)), None);
        assert_eq!(t.lookup_listener_exact(TCP, ep("10.0.0.1", 80)), None);
    }

    #[test]
    fn wildcard_of_other_family_does_not_match() {
        let mut t = SessionTable::new(FibIndex(0));
        t.add_listener(TCP, ep("::", 80), lh(6))
            .expect("v6 wildcard");
        assert_eq!(t.lookup_listener(TCP, ep("10.0.0.1", 80)), None);
        let mut t = SessionTable::new(FibIndex(0));
        t.add_listener(TCP, ep("0.0.0.0", 80), lh(4))
            .expect("v4 wildcard");
        assert_eq!(t.lookup_listener(TCP, ep("2001:db8::1", 80)), None);
    }

    #[test]
    fn exact_listener_beats_wildcard() {
        let mut t = SessionTable::new(FibIndex(0));
        t.add_listener(TCP, ep("0.0.0.0", 80), lh(1))
            .expect("wildcard");
        t.add_listener(TCP, ep("10.0.0.1", 80), lh(2))
            .expect("exact");
        t.add_listener(TCP, ep("::", 80), lh(3))
            .expect("v6 wildcard");
        t.add_listener(TCP, ep("2001:db8::1", 80), lh(4))
            .expect("v6 exact");
        assert_eq!(t.lookup_listener(TCP, ep("10.0.0.1", 80)), Some(lh(2)));
        assert_eq!(t.lookup_listener(TCP, ep("10.0.0.2", 80)), Some(lh(1)));
        assert_eq!(t.lookup_listener(TCP, ep("2001:db8::1", 80)), Some(lh(4)));
        assert_eq!(t.lookup_listener(TCP, ep("2001:db8::2", 80)), Some(lh(3)));
    }

    #[test]
    fn duplicate_listener_is_already_listening() {
        let mut l = SessionLookup::new();
        l.add_global_listener(FibIndex(0), TCP, ep("10.0.0.1", 80), lh(1))
            .expect("add");
        assert!(matches!(
            l.add_global_listener(FibIndex(0), TCP, ep("10.0.0.1", 80), lh(2)),
            Err(SessionError::AlreadyListening(_))
        ));
        l.add_global_listener(FibIndex(0), UDP, ep("10.0.0.1", 80), lh(3))
            .expect("other transport is another listener");
        l.add_local_listener(NamespaceIndex(1), TCP, ep("::", 80), lh(4))
            .expect("local");
        assert!(matches!(
            l.add_local_listener(NamespaceIndex(1), TCP, ep("::", 80), lh(5)),
            Err(SessionError::AlreadyListening(_))
        ));
    }

    #[test]
    fn deleting_a_missing_listener_is_no_listener() {
        let mut l = SessionLookup::new();
        assert!(matches!(
            l.del_global_listener(FibIndex(0), TCP, ep("10.0.0.1", 80)),
            Err(SessionError::NoListener(_))
        ));
        assert!(matches!(
            l.del_local_listener(NamespaceIndex(0), TCP, ep("0.0.0.0", 80)),
            Err(SessionError::NoListener(_))
        ));
        l.add_global_listener(FibIndex(0), TCP, ep("0.0.0.0", 80), lh(1))
            .expect("add");
        assert!(matches!(
            l.del_global_listener(FibIndex(0), TCP, ep("10.0.0.1", 80)),
            Err(SessionError::NoListener(_))
        ));
        assert_eq!(
            l.del_global_listener(FibIndex(0), TCP, ep("0.0.0.0", 80)),
            Ok(lh(1))
        );
    }

    #[test]
    fn local_table_binds_zero_address_only() {
        let mut t = LocalTable::new(NamespaceIndex(1));
        for e in [ep("10.0.0.1", 80), ep("127.0.0.1", 80), ep("::1", 80)] {
            assert!(matches!(
                t.add_listener(TCP, e, lh(1)),
                Err(SessionError::InvalidValue(_))
            ));
        }
        assert!(t.is_empty());
        assert!(matches!(
            t.del_listener(TCP, ep("10.0.0.1", 80)),
            Err(SessionError::NoListener(_))
        ));
    }

    #[test]
    fn local_table_keeps_families_apart_and_matches_any_ip_of_family() {
        let mut t = LocalTable::new(NamespaceIndex(1));
        t.add_listener(TCP, ep("0.0.0.0", 80), lh(4)).expect("v4");
        t.add_listener(TCP, ep("::", 80), lh(6))
            .expect("v6 on the same port");
        assert_eq!(t.lookup_listener(TCP, ep("127.0.0.1", 80)), Some(lh(4)));
        assert_eq!(t.lookup_listener(TCP, ep("0.0.0.0", 80)), Some(lh(4)));
        assert_eq!(t.lookup_listener(TCP, ep("::1", 80)), Some(lh(6)));
        assert_eq!(t.lookup_listener(UDP, ep("::1", 80)), None);
        assert_eq!(t.lookup_listener(TCP, ep("::1", 81)), None);
        let mut all: Vec<_> = t.listeners().collect();
        all.sort();
        assert_eq!(
            all,
            [(TCP, ep("0.0.0.0", 80), lh(4)), (TCP, ep("::", 80), lh(6))]
        );
    }

    #[test]
    fn local_scope_is_searched_first_when_app_has_it_and_endpoint_is_local() {
        let mut l = SessionLookup::new();
        l.add_local_listener(NamespaceIndex(1), TCP, ep("0.0.0.0", 80), lh(1))
            .expect("local");
        l.add_global_listener(FibIndex(0), TCP, ep("0.0.0.0", 80), lh(2))
            .expect("global");
        assert_eq!(
            l.lookup_listener(&query(ep("127.0.0.1", 80), true, true)),
            Some(ListenerMatch {
                scope: ListenerScope::Local,
                handle: lh(1)
            })
        );
    }

    #[test]
    fn global_table_is_used_without_local_scope_or_local_endpoint() {
        let mut l = SessionLookup::new();
        l.add_local_listener(NamespaceIndex(1), TCP, ep("0.0.0.0", 80), lh(1))
            .expect("local");
        l.add_global_listener(FibIndex(0), TCP, ep("0.0.0.0", 80), lh(2))
            .expect("global");
        let global = Some(ListenerMatch {
            scope: ListenerScope::Global,
            handle: lh(2),
        });
        assert_eq!(
            l.lookup_listener(&query(ep("127.0.0.1", 80), false, true)),
            global
        );
        assert_eq!(
            l.lookup_listener(&query(ep("10.0.0.1", 80), true, false)),
            global
        );
    }

    #[test]
    fn local_miss_falls_through_to_global() {
        let mut l = SessionLookup::new();
        l.add_local_listener(NamespaceIndex(2), TCP, ep("::", 80), lh(1))
            .expect("other ns");
        l.add_global_listener(FibIndex(0), TCP, ep("::", 80), lh(2))
            .expect("global");
        let m = l.lookup_listener(&query(ep("::1", 80), true, true));
        assert_eq!(
            m,
            Some(ListenerMatch {
                scope: ListenerScope::Global,
                handle: lh(2)
            })
        );
        assert_eq!(l.lookup_listener(&query(ep("::1", 81), true, true)), None);
    }

    #[test]
    fn counters_return_to_zero_when_everything_is_deleted() {
        let mut l = SessionLookup::new();
        let k4 = key(0, ep("10.0.0.1", 80), ep("10.0.0.2", 5000));
        let k6 = key(1, ep("2001:db8::1", 80), ep("2001:db8::2", 5000));
        l.add_session(k4, SessionHandle::new(1, 1)).expect("v4");
        l.add_session(k6, SessionHandle::new(1, 2)).expect("v6");
        l.add_global_listener(FibIndex(0), TCP, ep("10.0.0.1", 80), lh(1))
            .expect("g4");
        l.add_global_listener(FibIndex(1), TCP, ep("::", 80), lh(2))
            .expect("g6");
        l.add_local_listener(NamespaceIndex(1), TCP, ep("0.0.0.0", 80), lh(3))
            .expect("l4");
        let c = l.counters();
        assert_eq!(
            c,
            LookupCounters {
                global_tables: 2,
                sessions: 2,
                global_listeners: 2,
                local_tables: 1,
                local_listeners: 1,
            }
        );
        assert_eq!(c.entries(), 5);
        assert_eq!(
            l.global_table(FibIndex(1)).map(SessionTable::n_sessions),
            Some(1)
        );

        l.del_session(&k4, SessionHandle::new(1, 1))
            .expect("del v4");
        l.del_session(&k6, SessionHandle::new(1, 2))
            .expect("del v6");
        l.del_global_listener(FibIndex(0), TCP, ep("10.0.0.1", 80))
            .expect("del g4");
        l.del_global_listener(FibIndex(1), TCP, ep("::", 80))
            .expect("del g6");
        l.del_local_listener(NamespaceIndex(1), TCP, ep("0.0.0.0", 80))
            .expect("del l4");
        assert_eq!(l.counters().entries(), 0);
        assert!(
            l.global_table(FibIndex(0))
                .is_some_and(SessionTable::is_empty)
        );
        assert!(
            l.remove_local_table(NamespaceIndex(1))
                .is_some_and(|t| t.is_empty())
        );
        assert_eq!(l.counters().local_tables, 0);
    }
}
