//! The cert/key store and the crypto-engine registry.
//!
//! [`CertKeyStore`] holds certificate/key pairs for TLS-capable transports.
//! Index 0 is the default pair: it exists from the start (empty until an
//! operator fills it), is shown as `DEFAULT` and cannot be deleted. An app
//! may register interest in a pair; when the pair is deleted the store
//! returns every interested app, each exactly once, so the caller can call
//! each one back.
//!
//! Deliberate difference from the reference: VPP's
//! `vnet_app_add_cert_key_interest` appends the app only when it is
//! *already* registered (an inverted `vec_search` check), so no app is ever
//! called back. Here an app is registered on its first request and a
//! repeated request is a no-op.
//!
//! [`CryptoEngines`] lists the engines a TLS transport may use, by index
//! and name. Only `"none"` is built in; no real engine is listed until one
//! exists. Engines are registered at run time and never removed, so an
//! index stays valid for the life of the registry.

use std::fmt;

use slab::Slab;

use hoststack_app_proto::error::{SessionError, SessionResult};
use hoststack_app_proto::handle::{AppIndex, CertKeyIndex, CryptoEngineIndex};

/// A certificate, its key, and the apps to call back when it is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyPair {
    index: CertKeyIndex,
    cert: Vec<u8>,
    key: Vec<u8>,
    interested: Vec<AppIndex>,
}

impl CertKeyPair {
    /// The pair's index in the store.
    pub fn index(&self) -> CertKeyIndex {
        self.index
    }

    /// The certificate (PEM or DER, as the app gave it).
    pub fn cert(&self) -> &[u8] {
        &self.cert
    }

    /// The private key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The apps registered for a callback on delete, in registration
    /// order, each once.
    pub fn interested_apps(&self) -> &[AppIndex] {
        &self.interested
    }

    /// Whether this is the default pair (index 0).
    pub fn is_default(&self) -> bool {
        self.index == CertKeyIndex::DEFAULT
    }
}

/// `DEFAULT (cert:N, key:M)` for the default pair, `I (cert:N, key:M)`
/// otherwise, with N and M the lengths in bytes: one line of
/// `show app certificate`.
impl fmt::Display for CertKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_default() {
            f.write_str("DEFAULT")?;
        } else {
            write!(f, "{}", self.index)?;
        }
        write!(f, " (cert:{}, key:{})", self.cert.len(), self.key.len())
    }
}

/// The store of cert/key pairs.
#[derive(Debug, Clone)]
pub struct CertKeyStore {
    pairs: Slab<CertKeyPair>,
}

impl Default for CertKeyStore {
    fn default() -> Self {
        Self::new()
    }
}

impl CertKeyStore {
    /// A store holding only the (empty) default pair.
    pub fn new() -> Self {
        let mut pairs = Slab::new();
        let key = pairs.insert(CertKeyPair {
            index: CertKeyIndex::DEFAULT,
            cert: Vec::new(),
            key: Vec::new(),
            interested: Vec::new(),
        });
        debug_assert_eq!(key, CertKeyIndex::DEFAULT.as_usize());
        Self { pairs }
    }

    /// Stores a pair and returns its index (never 0). An empty cert or key
    /// is [`SessionError::InvalidValue`]. Indices of deleted pairs are
    /// reused.
    pub fn add(&mut self, cert: Vec<u8>, key: Vec<u8>) -> SessionResult<CertKeyIndex> {
        if cert.is_empty() {
            return Err(SessionError::InvalidValue("empty certificate".into()));
        }
        if key.is_empty() {
            return Err(SessionError::InvalidValue("empty key".into()));
        }
        let entry = self.pairs.vacant_entry();
        let Some(index) = CertKeyIndex::from_usize(entry.key()) else {
            return Err(SessionError::InvalidValue("cert/key store full".into()));
        };
        entry.insert(CertKeyPair {
            index,
            cert,
            key,
            interested: Vec::new(),
        });
        Ok(index)
    }

    /// A pair by index.
    pub fn get(&self, index: CertKeyIndex) -> Option<&CertKeyPair> {
        self.pairs.get(index.as_usize())
    }

    /// Deletes a pair and returns every app that registered interest in it,
    /// each once, in registration order, for the caller to call back. The
    /// default pair and unknown indices are [`SessionError::InvalidValue`].
    pub fn del(&mut self, index: CertKeyIndex) -> SessionResult<Vec<AppIndex>> {
        if index == CertKeyIndex::DEFAULT {
            return Err(SessionError::InvalidValue(
                "the default cert/key pair cannot be deleted".into(),
            ));
        }
        self.pairs
            .try_remove(index.as_usize())
            .map(|pair| pair.interested)
            .ok_or_else(|| SessionError::InvalidValue(format!("no cert/key pair {index}")))
    }

    /// Registers `app` for a callback when pair `index` is deleted. A second
    /// registration of the same app is a no-op. Unknown index is
    /// [`SessionError::InvalidValue`]. Interest in the default pair is
    /// accepted but never called back, since it is never deleted.
    pub fn add_interest(&mut self, index: CertKeyIndex, app: AppIndex) -> SessionResult<()> {
        let pair = self
            .pairs
            .get_mut(index.as_usize())
            .ok_or_else(|| SessionError::InvalidValue(format!("no cert/key pair {index}")))?;
        if !pair.interested.contains(&app) {
            pair.interested.push(app);
        }
        Ok(())
    }

    /// Removes `app` from every pair's interest list (when it detaches, so
    /// a later delete never calls back an app index that was reused);
    /// returns how many lists it was on.
    pub fn forget_app(&mut self, app: AppIndex) -> usize {
        let mut n = 0;
        for (_, pair) in self.pairs.iter_mut() {
            let before = pair.interested.len();
            pair.interested.retain(|a| *a != app);
            n += before - pair.interested.len();
        }
        n
    }

    /// Every pair, by ascending index (the default first).
    pub fn iter(&self) -> impl Iterator<Item = &CertKeyPair> + '_ {
        self.pairs.iter().map(|(_, p)| p)
    }

    /// How many pairs are stored, the default included.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Always false: the default pair always exists.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// One crypto engine: an index and a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoEngine {
    index: CryptoEngineIndex,
    name: String,
}

impl CryptoEngine {
    /// The engine's index.
    pub fn index(&self) -> CryptoEngineIndex {
        self.index
    }

    /// The engine's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for CryptoEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// The registry of crypto engines.
#[derive(Debug, Clone)]
pub struct CryptoEngines {
    /// Index `i` holds engine `i`; engines are never removed.
    engines: Vec<CryptoEngine>,
}

impl Default for CryptoEngines {
    fn default() -> Self {
        Self::new()
    }
}

impl CryptoEngines {
    /// The name of the built-in engine at index 0, meaning "no crypto
    /// engine chosen".
    pub const NONE_NAME: &'static str = "none";

    /// A registry holding only `"none"`.
    pub fn new() -> Self {
        Self {
            engines: vec![CryptoEngine {
                index: CryptoEngineIndex::NONE,
                name: Self::NONE_NAME.to_owned(),
            }],
        }
    }

    /// Registers an engine and returns its index. Names are matched
    /// exactly (case-sensitive). An empty name, a name with whitespace (it
    /// could not be typed on the CLI) or a name already registered is
    /// [`SessionError::InvalidValue`]: a duplicate is a bad value, not an
    /// attach, so `AlreadyAttached` is not used.
    pub fn register(&mut self, name: &str) -> SessionResult<CryptoEngineIndex> {
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err(SessionError::InvalidValue(format!(
                "bad crypto engine name {name:?}"
            )));
        }
        if self.by_name(name).is_some() {
            return Err(SessionError::InvalidValue(format!(
                "crypto engine {name} already registered"
            )));
        }
        let index = CryptoEngineIndex::from_usize(self.engines.len())
            .ok_or_else(|| SessionError::InvalidValue("crypto engine registry full".into()))?;
        self.engines.push(CryptoEngine {
            index,
            name: name.to_owned(),
        });
        Ok(index)
    }

    /// An engine by index.
    pub fn get(&self, index: CryptoEngineIndex) -> Option<&CryptoEngine> {
        self.engines.get(index.as_usize())
    }

    /// An engine by exact name.
    pub fn by_name(&self, name: &str) -> Option<&CryptoEngine> {
        self.engines.iter().find(|e| e.name == name)
    }

    /// Every engine, by ascending index (`"none"` first).
    pub fn iter(&self) -> impl Iterator<Item = &CryptoEngine> + '_ {
        self.engines.iter()
    }

    /// How many engines are registered, `"none"` included.
    pub fn len(&self) -> usize {
        self.engines.len()
    }

    /// Always false: `"none"` is always registered.
    pub fn is_empty(&self) -> bool {
        self.engines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_pair() -> (CertKeyStore, CertKeyIndex) {
        let mut s = CertKeyStore::new();
        let i = s.add(b"CERT".to_vec(), b"KEY!!".to_vec()).expect("add");
        (s, i)
    }

    #[test]
    fn default_pair_exists_at_index_zero() {
        let s = CertKeyStore::new();
        assert_eq!(s.len(), 1);
        let d = s.get(CertKeyIndex::DEFAULT).expect("default");
        assert!(d.is_default());
        assert_eq!(d.to_string(), "DEFAULT (cert:0, key:0)");
    }

    #[test]
    fn added_pairs_get_nonzero_indices_and_display_their_lengths() {
        let (s, i) = store_with_pair();
        assert_eq!(i, CertKeyIndex(1));
        let p = s.get(i).expect("pair");
        assert_eq!((p.cert(), p.key()), (&b"CERT"[..], &b"KEY!!"[..]));
        assert_eq!(p.to_string(), "1 (cert:4, key:5)");
        let lines: Vec<String> = s.iter().map(ToString::to_string).collect();
        assert_eq!(lines, ["DEFAULT (cert:0, key:0)", "1 (cert:4, key:5)"]);
    }

    #[test]
    fn empty_cert_or_key_is_invalid_value() {
        let mut s = CertKeyStore::new();
        assert!(matches!(
            s.add(vec![], b"k".to_vec()),
            Err(SessionError::InvalidValue(_))
        ));
        assert!(matches!(
            s.add(b"c".to_vec(), vec![]),
            Err(SessionError::InvalidValue(_))
        ));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn default_pair_cannot_be_deleted() {
        let mut s = CertKeyStore::new();
        assert!(matches!(
            s.del(CertKeyIndex::DEFAULT),
            Err(SessionError::InvalidValue(_))
        ));
        assert!(s.get(CertKeyIndex::DEFAULT).is_some());
    }

    #[test]
    fn deleting_an_unknown_pair_is_invalid_value() {
        let (mut s, i) = store_with_pair();
        assert!(matches!(
            s.del(CertKeyIndex(7)),
            Err(SessionError::InvalidValue(_))
        ));
        assert_eq!(s.del(i), Ok(vec![]));
        assert!(matches!(s.del(i), Err(SessionError::InvalidValue(_))));
        assert!(s.get(i).is_none());
    }

    /// Fails on the reference's inverted `vec_search (...) != ~0` check,
    /// which never registers an app and so never calls one back.
    #[test]
    fn app_registered_once_is_called_back_exactly_once_on_delete() {
        let (mut s, i) = store_with_pair();
        s.add_interest(i, AppIndex(4)).expect("register");
        assert_eq!(
            s.get(i).map(CertKeyPair::interested_apps),
            Some(&[AppIndex(4)][..])
        );
        assert_eq!(s.del(i), Ok(vec![AppIndex(4)]));
    }

    #[test]
    fn second_registration_of_the_same_app_is_a_no_op() {
        let (mut s, i) = store_with_pair();
        s.add_interest(i, AppIndex(4)).expect("first");
        s.add_interest(i, AppIndex(4)).expect("second");
        s.add_interest(i, AppIndex(2)).expect("other app");
        s.add_interest(i, AppIndex(4)).expect("third");
        assert_eq!(s.del(i), Ok(vec![AppIndex(4), AppIndex(2)]));
    }

    #[test]
    fn interest_in_an_unknown_pair_is_invalid_value() {
        let (mut s, i) = store_with_pair();
        assert!(matches!(
            s.add_interest(CertKeyIndex(9), AppIndex(1)),
            Err(SessionError::InvalidValue(_))
        ));
        s.del(i).expect("del");
        assert!(matches!(
            s.add_interest(i, AppIndex(1)),
            Err(SessionError::InvalidValue(_))
        ));
    }

    #[test]
    fn forgotten_app_is_not_called_back() {
        let (mut s, i) = store_with_pair();
        let j = s.add(b"c2".to_vec(), b"k2".to_vec()).expect("add");
        for pair in [i, j, CertKeyIndex::DEFAULT] {
            s.add_interest(pair, AppIndex(1)).expect("register 1");
        }
        s.add_interest(i, AppIndex(2)).expect("register 2");
        assert_eq!(s.forget_app(AppIndex(1)), 3);
        assert_eq!(s.forget_app(AppIndex(1)), 0);
        assert_eq!(s.del(i), Ok(vec![AppIndex(2)]));
        assert_eq!(s.del(j), Ok(vec![]));
    }

    #[test]
    fn none_engine_is_built_in_at_index_zero() {
        let e = CryptoEngines::new();
        assert_eq!(e.len(), 1);
        let none = e.get(CryptoEngineIndex::NONE).expect("none");
        assert_eq!(none.name(), "none");
        assert_eq!(
            e.by_name("none").map(CryptoEngine::index),
            Some(CryptoEngineIndex::NONE)
        );
        assert!(
            e.by_name("rustls").is_none(),
            "no engine is listed before it exists"
        );
    }

    #[test]
    fn registered_engines_get_the_next_index_and_are_enumerable() {
        let mut e = CryptoEngines::new();
        assert_eq!(e.register("alpha"), Ok(CryptoEngineIndex(1)));
        assert_eq!(e.register("beta"), Ok(CryptoEngineIndex(2)));
        let names: Vec<&str> = e.iter().map(CryptoEngine::name).collect();
        assert_eq!(names, ["none", "alpha", "beta"]);
        assert_eq!(
            e.by_name("beta").map(CryptoEngine::index),
            Some(CryptoEngineIndex(2))
        );
        assert_eq!(
            e.get(CryptoEngineIndex(1)).map(ToString::to_string),
            Some("alpha".into())
        );
        assert!(e.get(CryptoEngineIndex(3)).is_none());
    }

    #[test]
    fn duplicate_or_malformed_engine_name_is_invalid_value() {
        let mut e = CryptoEngines::new();
        e.register("alpha").expect("first");
        for bad in ["alpha", "none", "", "two words"] {
            assert!(
                matches!(e.register(bad), Err(SessionError::InvalidValue(_))),
                "{bad:?}"
            );
        }
        assert_eq!(e.len(), 2);
        assert_eq!(
            e.register("Alpha"),
            Ok(CryptoEngineIndex(2)),
            "names are case-sensitive"
        );
    }
}
