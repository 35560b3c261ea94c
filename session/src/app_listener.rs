//! App listeners and the round-robin choice of the worker that gets a new
//! session.
//!
//! An app has one [`AppListener`] per endpoint it listens on, however many
//! of its workers listen there: the first listen creates it, a listen on
//! the same endpoint from another worker of the same app adds that worker
//! to its [`WorkerBitmap`]. The listener remembers its listen sessions: a
//! local-scope one (in the namespace's local table) and a global-scope one
//! (through the transport), either of which may be absent.
//!
//! Incoming sessions go to the listener's workers in turn:
//! [`AppListener::select_worker`] picks the next worker number set after
//! the one chosen last, wrapping to the lowest. Because the rotation
//! remembers a worker *number* rather than a position in a list, workers
//! may join or leave between two choices and the rotation still continues
//! from the right place.

use hoststack_app_proto::endpoint::{Endpoint, TransportProto};
use hoststack_app_proto::error::{SessionError, SessionResult};
use hoststack_app_proto::handle::{AppIndex, ListenerHandle, WorkerMapIndex};

const WORD_BITS: u32 = u64::BITS;

/// A set of worker numbers, one bit each, any number of workers up to
/// [`WorkerBitmap::MAX_WORKERS`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerBitmap {
    /// Bit `i % 64` of word `i / 64` is worker `i`. No trailing zero word
    /// is kept, so equal sets compare equal.
    words: Vec<u64>,
}

impl WorkerBitmap {
    /// One more than the highest worker number a bitmap accepts. Worker
    /// numbers are small pool indices; the bound keeps a bogus number from
    /// growing the bitmap without limit.
    pub const MAX_WORKERS: u32 = 1 << 16;

    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    fn split(worker: WorkerMapIndex) -> (usize, u64) {
        (
            (worker.0 / WORD_BITS) as usize,
            1u64 << (worker.0 % WORD_BITS),
        )
    }

    /// Adds a worker; returns whether it was not there before. A number of
    /// [`Self::MAX_WORKERS`] or more is [`SessionError::InvalidAppWorker`].
    pub fn set(&mut self, worker: WorkerMapIndex) -> SessionResult<bool> {
        if worker.0 >= Self::MAX_WORKERS {
            return Err(SessionError::InvalidAppWorker(worker.0));
        }
        let (word, bit) = Self::split(worker);
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        let was_set = self.words[word] & bit != 0;
        self.words[word] |= bit;
        Ok(!was_set)
    }

    /// Removes a worker; returns whether it was there.
    pub fn clear(&mut self, worker: WorkerMapIndex) -> bool {
        let (word, bit) = Self::split(worker);
        let Some(w) = self.words.get_mut(word) else {
            return false;
        };
        let was_set = *w & bit != 0;
        *w &= !bit;
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
        was_set
    }

    /// Whether a worker is in the set.
    pub fn is_set(&self, worker: WorkerMapIndex) -> bool {
        let (word, bit) = Self::split(worker);
        self.words.get(word).is_some_and(|w| w & bit != 0)
    }

    /// How many workers are in the set.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The lowest worker in the set.
    pub fn first_set(&self) -> Option<WorkerMapIndex> {
        self.next_set_from(0)
    }

    /// The lowest worker in the set whose number is `from` or more.
    pub fn next_set_from(&self, from: u32) -> Option<WorkerMapIndex> {
        let mut word = (from / WORD_BITS) as usize;
        let mut bits = self.words.get(word)? & (u64::MAX << (from % WORD_BITS));
        loop {
            if bits != 0 {
                // word < words.len() <= MAX_WORKERS / 64, so this fits in u32.
                let base = u32::try_from(word).ok()? * WORD_BITS;
                return Some(WorkerMapIndex(base + bits.trailing_zeros()));
            }
            word += 1;
            bits = *self.words.get(word)?;
        }
    }

    /// The workers in the set, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = WorkerMapIndex> + '_ {
        std::iter::successors(self.first_set(), |w| {
            w.0.checked_add(1).and_then(|n| self.next_set_from(n))
        })
    }
}

/// One app's listener on one endpoint: its workers, its rotation state and
/// its listen sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppListener {
    app: AppIndex,
    proto: TransportProto,
    endpoint: Endpoint,
    workers: WorkerBitmap,
    last_chosen: Option<WorkerMapIndex>,
    local_listener: Option<ListenerHandle>,
    global_listener: Option<ListenerHandle>,
}

impl AppListener {
    /// A listener of `app` on `endpoint`, with no worker and no listen
    /// session yet.
    pub fn new(app: AppIndex, proto: TransportProto, endpoint: Endpoint) -> Self {
        Self {
            app,
            proto,
            endpoint,
            workers: WorkerBitmap::new(),
            last_chosen: None,
            local_listener: None,
            global_listener: None,
        }
    }

    /// The app that owns the listener.
    pub fn app(&self) -> AppIndex {
        self.app
    }

    /// The transport.
    pub fn proto(&self) -> TransportProto {
        self.proto
    }

    /// The endpoint listened on.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// The workers that listen.
    pub fn workers(&self) -> &WorkerBitmap {
        &self.workers
    }

    /// How many workers listen.
    pub fn n_workers(&self) -> usize {
        self.workers.count()
    }

    /// The worker chosen last, if any was (it may have left since).
    pub fn last_chosen(&self) -> Option<WorkerMapIndex> {
        self.last_chosen
    }

    /// The local-scope listen session, if any.
    pub fn local_listener(&self) -> Option<ListenerHandle> {
        self.local_listener
    }

    /// The global-scope listen session, if any.
    pub fn global_listener(&self) -> Option<ListenerHandle> {
        self.global_listener
    }

    /// Sets (or with `None` clears) the local-scope listen session; returns
    /// the previous one.
    pub fn set_local_listener(&mut self, handle: Option<ListenerHandle>) -> Option<ListenerHandle> {
        std::mem::replace(&mut self.local_listener, handle)
    }

    /// Sets (or with `None` clears) the global-scope listen session;
    /// returns the previous one.
    pub fn set_global_listener(
        &mut self,
        handle: Option<ListenerHandle>,
    ) -> Option<ListenerHandle> {
        std::mem::replace(&mut self.global_listener, handle)
    }

    /// The handle the app is given for this listener: the global listen
    /// session if there is one, else the local one (as in VPP, where the
    /// global session is set up last and its handle wins).
    pub fn handle(&self) -> Option<ListenerHandle> {
        self.global_listener.or(self.local_listener)
    }

    /// Adds a worker; returns whether it was not listening already. See
    /// [`WorkerBitmap::set`] for the error.
    pub fn add_worker(&mut self, worker: WorkerMapIndex) -> SessionResult<bool> {
        self.workers.set(worker)
    }

    /// Removes a worker (a no-op if it was not listening); returns whether
    /// the listener is now workerless, in which case the caller frees it.
    /// The rotation is left where it was, so it continues after the removed
    /// worker's number.
    pub fn remove_worker(&mut self, worker: WorkerMapIndex) -> bool {
        self.workers.clear(worker);
        self.workers.is_empty()
    }

    /// Hands `from`'s place to `to` (when `from` dies and its listener
    /// moves on). `from` not listening is
    /// [`SessionError::InvalidAppWorker`]; so is a `to` the bitmap cannot
    /// hold, and then nothing changes. `to` may already be listening.
    pub fn move_to_worker(
        &mut self,
        from: WorkerMapIndex,
        to: WorkerMapIndex,
    ) -> SessionResult<()> {
        if !self.workers.is_set(from) {
            return Err(SessionError::InvalidAppWorker(from.0));
        }
        if from == to {
            return Ok(());
        }
        self.workers.set(to)?;
        self.workers.clear(from);
        Ok(())
    }

    /// The worker that gets the next incoming session: the lowest worker
    /// number above the one chosen last, wrapping to the lowest worker;
    /// the very first choice is the lowest worker. `None` when no worker
    /// listens.
    pub fn select_worker(&mut self) -> Option<WorkerMapIndex> {
        let after = self
            .last_chosen
            .and_then(|w| w.0.checked_add(1))
            .and_then(|n| self.workers.next_set_from(n));
        let chosen = after.or_else(|| self.workers.first_set())?;
        self.last_chosen = Some(chosen);
        Some(chosen)
    }
}

/// A stack thread's copy of a listener's workers: the thread picks the
/// worker of each session it accepts itself, round robin by the same rule
/// as [`AppListener::select_worker`], without asking the control plane.
/// The control plane sends a new worker list whenever the set changes; the
/// rotation goes on from the worker chosen last.
#[derive(Debug)]
pub struct ThreadListener<W> {
    /// (map index, worker), by map index.
    workers: Vec<(WorkerMapIndex, W)>,
    last_chosen: Option<WorkerMapIndex>,
}

impl<W> ThreadListener<W> {
    /// A listener whose sessions go to `workers` (any order).
    pub fn new(workers: Vec<(WorkerMapIndex, W)>) -> Self {
        let mut l = Self {
            workers: Vec::new(),
            last_chosen: None,
        };
        l.set_workers(workers);
        l
    }

    /// Replaces the workers.
    pub fn set_workers(&mut self, mut workers: Vec<(WorkerMapIndex, W)>) {
        workers.sort_by_key(|(m, _)| m.0);
        self.workers = workers;
    }

    /// The worker that gets the next session: the lowest map index above
    /// the one chosen last, wrapping to the lowest; `None` without workers.
    pub fn select(&mut self) -> Option<&W> {
        let i = match self.last_chosen {
            Some(last) => self
                .workers
                .iter()
                .position(|(m, _)| m.0 > last.0)
                .unwrap_or(0),
            None => 0,
        };
        let (m, w) = self.workers.get(i)?;
        self.last_chosen = Some(*m);
        Some(w)
    }

    /// Workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::net::{IpAddr, Ipv4Addr};

    fn w(i: u32) -> WorkerMapIndex {
        WorkerMapIndex(i)
    }

    fn listener(workers: &[u32]) -> AppListener {
        let mut al = AppListener::new(
            AppIndex(1),
            TransportProto::Tcp,
            Endpoint::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 80),
        );
        for &i in workers {
            assert_eq!(al.add_worker(w(i)), Ok(true));
        }
        al
    }

    fn picks(al: &mut AppListener, n: usize) -> Vec<u32> {
        (0..n)
            .map(|_| al.select_worker().map_or(u32::MAX, |w| w.0))
            .collect()
    }

    #[test]
    fn bitmap_set_clear_is_set_count() {
        let mut b = WorkerBitmap::new();
        assert!(b.is_empty());
        assert_eq!(b.set(w(3)), Ok(true));
        assert_eq!(b.set(w(3)), Ok(false));
        assert_eq!(b.set(w(200)), Ok(true));
        assert!(b.is_set(w(3)) && b.is_set(w(200)) && !b.is_set(w(4)) && !b.is_set(w(9999)));
        assert_eq!(b.count(), 2);
        assert!(b.clear(w(200)));
        assert!(!b.clear(w(200)));
        assert!(!b.clear(w(70_000)));
        assert_eq!(b.count(), 1);
        assert!(b.clear(w(3)));
        assert!(b.is_empty());
        assert_eq!(b, WorkerBitmap::new());
    }

    #[test]
    fn bitmap_iterates_lowest_first_across_words() {
        let mut b = WorkerBitmap::new();
        for i in [130, 0, 63, 64, 5] {
            b.set(w(i)).expect("in range");
        }
        let all: Vec<u32> = b.iter().map(|w| w.0).collect();
        assert_eq!(all, [0, 5, 63, 64, 130]);
        assert_eq!(b.next_set_from(6), Some(w(63)));
        assert_eq!(b.next_set_from(65), Some(w(130)));
        assert_eq!(b.next_set_from(131), None);
        assert_eq!(b.next_set_from(u32::MAX), None);
    }

    #[test]
    fn worker_number_beyond_max_is_invalid_app_worker() {
        let mut b = WorkerBitmap::new();
        let max = WorkerBitmap::MAX_WORKERS;
        assert_eq!(b.set(w(max)), Err(SessionError::InvalidAppWorker(max)));
        assert_eq!(
            b.set(w(u32::MAX)),
            Err(SessionError::InvalidAppWorker(u32::MAX))
        );
        assert_eq!(b.set(w(max - 1)), Ok(true));
        assert_eq!(b.iter().collect::<Vec<_>>(), [w(max - 1)]);
    }

    #[test]
    fn no_worker_selects_none() {
        let mut al = listener(&[]);
        assert_eq!(al.select_worker(), None);
        assert_eq!(al.last_chosen(), None);
    }

    #[test]
    fn one_worker_is_always_chosen() {
        let mut al = listener(&[0]);
        assert_eq!(picks(&mut al, 5), [0, 0, 0, 0, 0]);
        let mut al = listener(&[7]);
        assert_eq!(picks(&mut al, 3), [7, 7, 7]);
    }

    #[test]
    fn three_workers_rotate_from_the_lowest() {
        let mut al = listener(&[0, 1, 2]);
        assert_eq!(picks(&mut al, 7), [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn round_robin_wraps_after_last_set_bit() {
        let mut al = listener(&[2, 4]);
        assert_eq!(picks(&mut al, 5), [2, 4, 2, 4, 2]);
    }

    #[test]
    fn sixty_four_workers_rotate_through_every_bit() {
        let all: Vec<u32> = (0..64).collect();
        let mut al = listener(&all);
        let got = picks(&mut al, 128);
        let want: Vec<u32> = all.iter().chain(all.iter()).copied().collect();
        assert_eq!(got, want);
    }

    #[test]
    fn rotation_crosses_word_boundaries() {
        let mut al = listener(&[1, 63, 64, 190]);
        assert_eq!(picks(&mut al, 6), [1, 63, 64, 190, 1, 63]);
    }

    #[test]
    fn gaps_between_workers_are_skipped() {
        let mut al = listener(&[0, 5, 9]);
        assert_eq!(picks(&mut al, 7), [0, 5, 9, 0, 5, 9, 0]);
    }

    #[test]
    fn worker_leaving_mid_rotation_continues_after_it() {
        let mut al = listener(&[0, 1, 2, 3]);
        assert_eq!(picks(&mut al, 2), [0, 1]);
        assert!(!al.remove_worker(w(1)));
        assert_eq!(picks(&mut al, 4), [2, 3, 0, 2]);
        assert!(!al.remove_worker(w(3)));
        assert_eq!(picks(&mut al, 3), [0, 2, 0]);
    }

    #[test]
    fn next_worker_leaving_is_skipped() {
        let mut al = listener(&[0, 5, 9]);
        assert_eq!(picks(&mut al, 1), [0]);
        al.remove_worker(w(5));
        assert_eq!(picks(&mut al, 3), [9, 0, 9]);
    }

    #[test]
    fn highest_worker_leaving_after_its_turn_wraps_to_lowest() {
        let mut al = listener(&[0, 5, 9]);
        assert_eq!(picks(&mut al, 3), [0, 5, 9]);
        al.remove_worker(w(9));
        assert_eq!(picks(&mut al, 3), [0, 5, 0]);
    }

    #[test]
    fn worker_joining_mid_rotation_gets_its_turn() {
        let mut al = listener(&[0, 9]);
        assert_eq!(picks(&mut al, 1), [0]);
        assert_eq!(al.add_worker(w(4)), Ok(true));
        assert_eq!(al.add_worker(w(4)), Ok(false));
        assert_eq!(picks(&mut al, 4), [4, 9, 0, 4]);
    }

    #[test]
    fn four_workers_share_400_selections_within_one() {
        let mut al = listener(&[1, 3, 6, 7]);
        let mut counts = [0usize; 8];
        for _ in 0..400 {
            let chosen = al.select_worker().expect("has workers");
            counts[chosen.as_usize()] += 1;
        }
        let used: Vec<usize> = [1, 3, 6, 7].iter().map(|&i| counts[i]).collect();
        let (min, max) = (used.iter().min(), used.iter().max());
        assert!(
            matches!((min, max), (Some(a), Some(b)) if b - a <= 1),
            "{used:?}"
        );
        assert_eq!(used.iter().sum::<usize>(), 400);
    }

    #[test]
    fn removing_the_last_worker_reports_workerless() {
        let mut al = listener(&[2, 3]);
        assert!(!al.remove_worker(w(2)));
        assert!(!al.remove_worker(w(8)), "absent worker: no-op");
        assert!(al.remove_worker(w(3)));
        assert_eq!(al.n_workers(), 0);
        assert_eq!(al.select_worker(), None);
    }

    #[test]
    fn move_to_worker_hands_the_dead_workers_place_over() {
        let mut al = listener(&[0, 1]);
        assert_eq!(al.move_to_worker(w(1), w(5)), Ok(()));
        assert_eq!(al.workers().iter().collect::<Vec<_>>(), [w(0), w(5)]);
        assert_eq!(
            al.move_to_worker(w(5), w(0)),
            Ok(()),
            "to may already listen"
        );
        assert_eq!(al.workers().iter().collect::<Vec<_>>(), [w(0)]);
        assert_eq!(al.move_to_worker(w(0), w(0)), Ok(()));
        assert_eq!(al.n_workers(), 1);
    }

    #[test]
    fn moving_from_a_worker_not_listening_is_invalid_app_worker() {
        let mut al = listener(&[0]);
        assert_eq!(
            al.move_to_worker(w(3), w(1)),
            Err(SessionError::InvalidAppWorker(3))
        );
        let max = WorkerBitmap::MAX_WORKERS;
        assert_eq!(
            al.move_to_worker(w(0), w(max)),
            Err(SessionError::InvalidAppWorker(max))
        );
        assert_eq!(
            al.workers().iter().collect::<Vec<_>>(),
            [w(0)],
            "nothing changed"
        );
    }

    #[test]
    fn handle_prefers_global_listen_session_over_local() {
        let mut al = listener(&[0]);
        assert_eq!(al.handle(), None);
        assert_eq!(al.set_local_listener(Some(ListenerHandle::new(0, 1))), None);
        assert_eq!(al.handle(), Some(ListenerHandle::new(0, 1)));
        al.set_global_listener(Some(ListenerHandle::new(0, 2)));
        assert_eq!(al.handle(), Some(ListenerHandle::new(0, 2)));
        assert_eq!(
            al.set_global_listener(None),
            Some(ListenerHandle::new(0, 2))
        );
        assert_eq!(al.handle(), Some(ListenerHandle::new(0, 1)));
    }

    #[test]
    fn rotation_matches_a_naive_model_under_random_churn() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut al = listener(&[]);
        let mut model: Vec<bool> = vec![false; 140];
        let mut last: Option<usize> = None;
        for _ in 0..20_000 {
            match rng.random_range(0..4) {
                0 => {
                    let i = rng.random_range(0..140);
                    model[i] = true;
                    al.add_worker(w(i as u32)).expect("in range");
                }
                1 => {
                    let i = rng.random_range(0..140);
                    model[i] = false;
                    let empty = al.remove_worker(w(i as u32));
                    assert_eq!(empty, !model.contains(&true));
                }
                _ => {
                    let start = last.map_or(0, |l| l + 1);
                    let want = (start..model.len())
                        .find(|&i| model[i])
                        .or_else(|| model.iter().position(|&s| s));
                    if want.is_some() {
                        last = want;
                    }
                    let got = al.select_worker().map(|w| w.as_usize());
                    assert_eq!(got, want);
                }
            }
        }
    }

    #[test]
    fn a_thread_listener_chooses_round_robin_like_the_control_plane() {
        let mut control = listener(&[0, 2, 5]);
        let mut thread = ThreadListener::new(vec![(w(5), 'c'), (w(0), 'a'), (w(2), 'b')]);
        let mut picked = Vec::new();
        for _ in 0..7 {
            let m = control.select_worker().unwrap();
            let t = *thread.select().unwrap();
            picked.push(t);
            assert_eq!(t, ['a', 'x', 'b', 'x', 'x', 'c'][m.0 as usize]);
        }
        assert_eq!(picked, vec!['a', 'b', 'c', 'a', 'b', 'c', 'a']);
    }

    #[test]
    fn a_thread_listener_goes_on_from_the_last_choice_when_its_workers_change() {
        let mut t = ThreadListener::new(vec![(w(0), 0), (w(1), 1), (w(2), 2)]);
        assert_eq!(t.select(), Some(&0));
        assert_eq!(t.select(), Some(&1));
        t.set_workers(vec![(w(0), 0), (w(2), 2), (w(3), 3)]);
        assert_eq!(t.select(), Some(&2));
        assert_eq!(t.select(), Some(&3));
        assert_eq!(t.select(), Some(&0));
        t.set_workers(Vec::new());
        assert_eq!(t.select(), None);
    }
}
