//! Which worker of an interface holds which TCP flow.
//!
//! Each worker's TCP engine holds the flows it created: the connections
//! whose SYN arrived on its queue, and the connects it made. The NIC (or a
//! veth peer) may still deliver a flow's segment on another queue: a veth
//! picks the queue from the sender's hash, which a kernel peer changes
//! after a retransmission timeout, and the replies to a connect land
//! wherever the peer's hash puts them. The receiving worker then finds the
//! flow's owner here and hands the segment over.
//!
//! The directory is touched only when a flow starts or ends and when a
//! segment misses its receiving worker's own table; a segment that arrives
//! at its owner never looks here. A worker *claims* a tuple before its
//! engine may create a flow for it (a connect, or a segment no worker
//! holds), so two workers never both hold one tuple, and releases the claim
//! when its engine holds the tuple no more.
//!
//! Sharded by hash, each shard behind its own lock: workers contend only
//! when they touch the same shard at the same moment.

use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::DefaultHashBuilder;
use hashbrown::HashMap;
use hoststack_tcp::FlowTuple;

const SHARDS: usize = 64;

/// What [`FlowDirectory::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The tuple is now (or already was) the caller's.
    Mine,
    /// Another worker holds it.
    Owner(u16),
}

/// The flows of one interface's workers, by owner.
#[derive(Debug)]
pub struct FlowDirectory {
    hasher: DefaultHashBuilder,
    shards: Box<[Mutex<HashMap<FlowTuple, u16>>]>,
    /// Claims refused because another worker held the tuple.
    pub conflicts: AtomicU64,
}

impl Default for FlowDirectory {
    fn default() -> Self {
        Self::new()
    }
}

impl FlowDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self {
            hasher: DefaultHashBuilder::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            conflicts: AtomicU64::new(0),
        }
    }

    fn shard(&self, t: &FlowTuple) -> std::sync::MutexGuard<'_, HashMap<FlowTuple, u16>> {
        let i = self.hasher.hash_one(t) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `t` worker `me`'s unless another worker holds it.
    pub fn claim(&self, t: &FlowTuple, me: u16) -> Claim {
        let mut s = self.shard(t);
        match s.get(t) {
            Some(&o) if o != me => {
                self.conflicts.fetch_add(1, Ordering::Relaxed);
                Claim::Owner(o)
            }
            Some(_) => Claim::Mine,
            None => {
                s.insert(*t, me);
                Claim::Mine
            }
        }
    }

    /// Who holds `t`, if anyone.
    pub fn owner(&self, t: &FlowTuple) -> Option<u16> {
        self.shard(t).get(t).copied()
    }

    /// Drops `t` if worker `me` holds it.
    pub fn release(&self, t: &FlowTuple, me: u16) {
        let mut s = self.shard(t);
        if s.get(t) == Some(&me) {
            s.remove(t);
        }
    }

    /// Tuples held (locks every shard: for `show`, not the data path).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether no tuple is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(port: u16) -> FlowTuple {
        FlowTuple {
            table: 0,
            local: "10.0.0.1:7".parse().unwrap(),
            remote: format!("10.0.0.2:{port}").parse().unwrap(),
        }
    }

    #[test]
    fn the_first_claim_wins_and_only_the_owner_releases() {
        let d = FlowDirectory::new();
        assert_eq!(d.claim(&t(1), 0), Claim::Mine);
        assert_eq!(d.claim(&t(1), 0), Claim::Mine);
        assert_eq!(d.claim(&t(1), 1), Claim::Owner(0));
        assert_eq!(d.conflicts.load(Ordering::Relaxed), 1);
        d.release(&t(1), 1);
        assert_eq!(d.owner(&t(1)), Some(0));
        d.release(&t(1), 0);
        assert_eq!(d.owner(&t(1)), None);
        assert_eq!(d.claim(&t(1), 1), Claim::Mine);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn many_tuples_spread_over_shards_and_are_all_found() {
        let d = FlowDirectory::new();
        for p in 0..10_000 {
            assert_eq!(d.claim(&t(p), p % 3), Claim::Mine);
        }
        assert_eq!(d.len(), 10_000);
        for p in 0..10_000 {
            assert_eq!(d.owner(&t(p)), Some(p % 3));
            d.release(&t(p), p % 3);
        }
        assert!(d.is_empty());
    }
}
