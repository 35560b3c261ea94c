//! A listen's confirmation by the stack threads that open it.
//!
//! The session layer registers a listener at once, but each stack thread
//! opens the transport listener when it runs the command, a moment later.
//! An app that answers "listening" to its own peers before that moment
//! would see their connections refused, and a transport that refuses the
//! listen would leave the app believing it listens. So the answer to an
//! app waits for every thread's result: [`ListenAck`] counts them.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use hoststack_app_proto::error::SessionError;

/// What the threads opening one listener reported.
#[derive(Debug)]
pub struct ListenAck {
    state: Mutex<AckState>,
    done: Condvar,
}

#[derive(Debug)]
struct AckState {
    outstanding: usize,
    failure: Option<SessionError>,
}

/// How a wait for a [`ListenAck`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenOutcome {
    /// Every thread opened its transport listener.
    Open,
    /// A thread's transport refused it (the first refusal).
    Refused(SessionError),
    /// Not every thread answered in time.
    TimedOut {
        /// Threads that had not answered.
        outstanding: usize,
    },
}

impl ListenAck {
    /// Expects `threads` answers.
    pub fn new(threads: usize) -> Self {
        Self {
            state: Mutex::new(AckState {
                outstanding: threads,
                failure: None,
            }),
            done: Condvar::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AckState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One thread's result; the first failure is kept.
    pub fn report(&self, result: Result<(), SessionError>) {
        let mut s = self.state();
        s.outstanding = s.outstanding.saturating_sub(1);
        if let Err(e) = result {
            s.failure.get_or_insert(e);
        }
        if s.outstanding == 0 || s.failure.is_some() {
            self.done.notify_all();
        }
    }

    /// Waits until every thread answered or one refused, at most `timeout`.
    pub fn wait(&self, timeout: Duration) -> ListenOutcome {
        let deadline = Instant::now() + timeout;
        let mut s = self.state();
        loop {
            if let Some(e) = &s.failure {
                return ListenOutcome::Refused(e.clone());
            }
            if s.outstanding == 0 {
                return ListenOutcome::Open;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return ListenOutcome::TimedOut {
                    outstanding: s.outstanding,
                };
            }
            s = self
                .done
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn open_once_every_thread_answered() {
        let ack = Arc::new(ListenAck::new(2));
        ack.report(Ok(()));
        assert_eq!(
            ack.wait(Duration::from_millis(1)),
            ListenOutcome::TimedOut { outstanding: 1 }
        );
        let a = ack.clone();
        let t = std::thread::spawn(move || a.report(Ok(())));
        assert_eq!(ack.wait(Duration::from_secs(5)), ListenOutcome::Open);
        t.join().unwrap();
    }

    #[test]
    fn the_first_refusal_ends_the_wait() {
        let ack = ListenAck::new(3);
        ack.report(Err(SessionError::AlreadyListening("port taken".into())));
        ack.report(Err(SessionError::Transport("second".into())));
        assert_eq!(
            ack.wait(Duration::from_secs(5)),
            ListenOutcome::Refused(SessionError::AlreadyListening("port taken".into()))
        );
    }

    #[test]
    fn no_threads_is_open_at_once() {
        assert_eq!(ListenAck::new(0).wait(Duration::ZERO), ListenOutcome::Open);
    }
}
