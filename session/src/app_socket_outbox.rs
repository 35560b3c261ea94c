//! What other threads leave for the app socket servers: segment fds on
//! their way to external apps, and connections to close.
//!
//! A segment added to an external app's worker is announced on its event
//! queue; its fd travels over the app's socket, which only the app socket
//! server thread writes. Whoever adds the segment (a stack thread on
//! accept, the control thread) leaves the fd here and wakes the servers;
//! each server takes the fds of its own clients and sends them. The app
//! waits for the fd when the event names a segment it lacks, so the fd
//! must never wait for a server's idle timeout or go to the wrong server.
//! An app detached for corrupting its shared memory has its connection
//! closed the same way, by the server that holds it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use hoststack_shm::eventfd::EventFd;
use tracing::warn;

/// A segment added to an external app worker, whose fd the app socket
/// must pass to the app.
#[derive(Debug)]
pub struct PendingSegmentFd {
    /// The api client of the worker.
    pub client: u32,
    /// The worker's map index.
    pub worker: u32,
    /// Segment index.
    pub index: u32,
    /// Its size.
    pub size: u64,
    /// The segment's fd.
    pub fd: OwnedFd,
}

/// The fds waiting for app socket servers, and the servers' wake-ups.
#[derive(Debug, Default)]
pub struct AppSocketOutbox {
    pending: Mutex<Vec<PendingSegmentFd>>,
    /// Api clients whose connection must be closed.
    closing: Mutex<Vec<u32>>,
    /// One eventfd per server, so that one server draining its wake-up
    /// does not swallow another's.
    servers: Mutex<Vec<Weak<EventFd>>>,
}

/// A server's wake-up: readable when an fd was left since it last drained.
#[derive(Debug)]
pub struct OutboxWake {
    /// None when no eventfd could be made: the server then finds fds at
    /// its next idle timeout.
    eventfd: Option<Arc<EventFd>>,
}

impl OutboxWake {
    /// The fd to poll.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.eventfd.as_deref().map(|e| e.as_fd())
    }

    /// Resets the wake-up. Drain before taking: an fd left after the take
    /// wakes the server again.
    pub fn drain(&self) {
        if let Some(e) = &self.eventfd {
            let _ = e.drain();
        }
    }
}

impl AppSocketOutbox {
    fn lock(&self) -> MutexGuard<'_, Vec<PendingSegmentFd>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A wake-up for one more server.
    pub fn subscribe(&self) -> OutboxWake {
        let eventfd = match EventFd::new() {
            Ok(e) => Some(Arc::new(e)),
            Err(e) => {
                warn!("app socket without a wake-up for segment fds: {e}");
                None
            }
        };
        if let Some(e) = &eventfd {
            let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
            servers.retain(|w| w.strong_count() > 0);
            servers.push(Arc::downgrade(e));
        }
        OutboxWake { eventfd }
    }

    /// Leaves `fd` for its client's server and wakes the servers.
    pub fn push(&self, fd: PendingSegmentFd) {
        tracing::debug!(
            client = fd.client,
            segment = fd.index,
            "segment fd left for the app socket"
        );
        self.lock().push(fd);
        self.wake_servers();
    }

    /// Asks the server holding api client `client` to close its connection.
    pub fn close_client(&self, client: u32) {
        self.closing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(client);
        self.wake_servers();
    }

    /// Takes the close orders for the clients `mine` accepts.
    pub fn take_closing(&self, mine: impl Fn(u32) -> bool) -> Vec<u32> {
        let mut closing = self.closing.lock().unwrap_or_else(|p| p.into_inner());
        if closing.is_empty() {
            return Vec::new();
        }
        let (taken, left): (Vec<_>, Vec<_>) = closing.drain(..).partition(|&c| mine(c));
        *closing = left;
        taken
    }

    fn wake_servers(&self) {
        let servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        for e in servers.iter().filter_map(Weak::upgrade) {
            // A failed wake-up only delays the fd to the idle timeout.
            let _ = e.notify();
        }
    }

    /// Takes the fds of the clients `mine` accepts; the others stay for
    /// their own servers.
    pub fn take_for(&self, mine: impl Fn(u32) -> bool) -> Vec<PendingSegmentFd> {
        let mut pending = self.lock();
        if pending.is_empty() {
            return Vec::new();
        }
        let (taken, left): (Vec<_>, Vec<_>) = pending.drain(..).partition(|p| mine(p.client));
        *pending = left;
        taken
    }

    /// Drops the fds of a client that went away.
    pub fn forget_client(&self, client: u32) {
        self.lock().retain(|p| p.client != client);
        self.closing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&c| c != client);
    }

    /// Fds waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(client: u32, index: u32) -> PendingSegmentFd {
        let fd = EventFd::new().unwrap().into_owned_fd();
        PendingSegmentFd {
            client,
            worker: 0,
            index,
            size: 4096,
            fd,
        }
    }

    #[test]
    fn a_server_takes_only_its_own_clients_fds() {
        let o = AppSocketOutbox::default();
        o.push(pending(1, 10));
        o.push(pending(2, 11));
        o.push(pending(1, 12));
        let mine = o.take_for(|c| c == 1);
        assert_eq!(
            mine.iter().map(|p| p.index).collect::<Vec<_>>(),
            vec![10, 12]
        );
        assert_eq!(o.len(), 1);
        let theirs = o.take_for(|c| c == 2);
        assert_eq!(theirs.len(), 1);
        assert!(o.is_empty());
    }

    fn woken(w: &OutboxWake) -> bool {
        w.eventfd
            .as_ref()
            .unwrap()
            .wait(Some(std::time::Duration::ZERO))
            .unwrap()
    }

    #[test]
    fn leaving_an_fd_wakes_every_server_until_each_drains() {
        let o = AppSocketOutbox::default();
        let (a, b) = (o.subscribe(), o.subscribe());
        assert!(!woken(&a) && !woken(&b));
        o.push(pending(3, 1));
        assert!(woken(&a) && woken(&b));
        a.drain();
        assert!(!woken(&a));
        assert!(
            woken(&b),
            "one server's drain must not hide the fd from another"
        );
        b.drain();
        drop(a);
        o.push(pending(3, 2));
        assert!(woken(&b));
        assert_eq!(o.servers.lock().unwrap().len(), 2);
        let _c = o.subscribe();
        // The gone server's slot was dropped when the next subscribed.
        assert_eq!(o.servers.lock().unwrap().len(), 2);
    }

    #[test]
    fn close_orders_wake_the_servers_and_go_to_the_one_holding_the_client() {
        let o = AppSocketOutbox::default();
        let w = o.subscribe();
        o.close_client(7);
        o.close_client(8);
        assert!(woken(&w));
        assert_eq!(o.take_closing(|c| c == 8), vec![8]);
        assert_eq!(o.take_closing(|_| true), vec![7]);
        o.close_client(9);
        o.forget_client(9);
        assert!(o.take_closing(|_| true).is_empty());
    }

    #[test]
    fn a_gone_clients_fds_are_dropped() {
        let o = AppSocketOutbox::default();
        o.push(pending(4, 1));
        o.push(pending(5, 2));
        o.forget_client(4);
        assert_eq!(o.take_for(|_| true).len(), 1);
    }
}
