//! Who owns the sessions of one stack thread.
//!
//! A session is born and dies on its stack thread, which records its owner
//! here; the control plane reads it to check that a disconnect or a wake
//! names a session of the calling app. Each thread has its own table and
//! lock, so no thread ever waits for another, or for the control plane
//! except while it checks one session.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use hashbrown::HashMap;
use hoststack_app_proto::handle::{AppWorkerIndex, SessionHandle};

/// The owners of one thread's sessions, and its established-table size.
#[derive(Debug, Default)]
pub struct SessionOwners {
    owners: Mutex<HashMap<SessionHandle, AppWorkerIndex>>,
    established: AtomicUsize,
}

impl SessionOwners {
    fn lock(&self) -> MutexGuard<'_, HashMap<SessionHandle, AppWorkerIndex>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `session` belongs to app worker `wi`.
    pub fn insert(&self, session: SessionHandle, wi: AppWorkerIndex) {
        self.lock().insert(session, wi);
    }

    /// Forgets `session`.
    pub fn remove(&self, session: SessionHandle) {
        self.lock().remove(&session);
    }

    /// The app worker owning `session`.
    pub fn owner(&self, session: SessionHandle) -> Option<AppWorkerIndex> {
        self.lock().get(&session).copied()
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the thread has none.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Sets the thread's established-table size (for the layer's counters).
    pub fn set_established(&self, n: usize) {
        self.established.store(n, Ordering::Relaxed);
    }

    /// The thread's established-table size.
    pub fn established(&self) -> usize {
        self.established.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_recorded_and_forgotten() {
        let o = SessionOwners::default();
        let s = SessionHandle::new(1, 7);
        o.insert(s, AppWorkerIndex(3));
        assert_eq!(o.owner(s), Some(AppWorkerIndex(3)));
        assert_eq!(o.len(), 1);
        o.remove(s);
        assert_eq!(o.owner(s), None);
        assert!(o.is_empty());
    }
}
