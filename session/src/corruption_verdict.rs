//! The verdict on an app that broke its shared memory.
//!
//! Everything the stack reads from an app's queues and fifos is checked on
//! use. The first invalid value a stack thread finds is a verdict on the
//! app: that thread stops serving the app's queue and resets the session
//! at once, and reports here; the control thread then detaches the app
//! (every session reset, its segments dropped when the last one goes, its
//! app socket closed), counts it and logs it once. The app's neighbours
//! share none of its memory and never notice.

use hoststack_app_proto::handle::AppIndex;

/// What a stack thread found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptionVerdict {
    /// The offender.
    pub app: AppIndex,
    /// The stack thread that found it.
    pub thread: u32,
    /// What was invalid.
    pub what: String,
}

/// How many apps were detached for it, and the last reason (for `show app`
/// and the metrics).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CorruptionRecord {
    /// Apps detached after a verdict.
    pub apps_detached: u64,
    /// The most recent: (app name, what was invalid).
    pub last: Option<(String, String)>,
}
