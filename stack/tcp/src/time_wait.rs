//! TIME-WAIT as a small entry instead of a connection.
//!
//! A connection that reaches TIME-WAIT with nothing left for the application to read gives
//! up its buffers and control block and leaves this entry: enough to re-acknowledge a
//! retransmitted FIN, to refuse old duplicates (PAWS), and to decide whether a new SYN for the
//! same 4-tuple is newer than the old connection (RFC 6191: by timestamp, else by sequence
//! number) and may reuse it.

use smoltcp::time::Instant;

use crate::conn::{Timestamps, ts_clock};
use crate::info::FlowTuple;
use crate::segment::{Header, Segment};
use crate::seqnum::SeqNum;
use crate::wheel::TimerId;

#[derive(Debug)]
pub(crate) struct TimeWait {
    pub(crate) tuple: FlowTuple,
    pub(crate) snd_nxt: SeqNum,
    pub(crate) rcv_nxt: SeqNum,
    pub(crate) ts: Option<Timestamps>,
    pub(crate) window: u16,
    pub(crate) timer: Option<TimerId>,
}

/// What to do with a segment that hit a TIME-WAIT entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeWaitAction {
    Drop,
    /// Answer with an ACK (rate-limited unless it re-acknowledges a FIN).
    Ack {
        fin: bool,
    },
    /// Refused by PAWS.
    Paws,
    /// A newer SYN: end the entry and hand the SYN to the listener.
    Reuse,
}

/// ISN distance for a reused 4-tuple: far ahead of anything the old connection sent.
pub(crate) const REUSE_ISN_GAP: u32 = 1 << 17;

impl TimeWait {
    pub(crate) fn classify(&self, seg: &Segment<'_>) -> TimeWaitAction {
        if seg.rst {
            // RFC 1337: a RST must not cut TIME-WAIT short.
            return TimeWaitAction::Drop;
        }
        let tsval = seg.timestamp.map(|t| SeqNum::new(t.0));
        if seg.syn && seg.ack.is_none() {
            let newer = match (self.ts, tsval) {
                (Some(ts), Some(tsval)) => tsval.after(SeqNum::new(ts.recent)),
                _ => seg.seq.after(self.rcv_nxt),
            };
            return if newer {
                TimeWaitAction::Reuse
            } else {
                TimeWaitAction::Ack { fin: false }
            };
        }
        if let (Some(ts), Some(tsval)) = (self.ts, tsval) {
            if tsval.before(SeqNum::new(ts.recent)) {
                return TimeWaitAction::Paws;
            }
        }
        if seg.fin {
            TimeWaitAction::Ack { fin: true }
        } else if seg.seq_len() > 0 {
            TimeWaitAction::Ack { fin: false }
        } else {
            TimeWaitAction::Drop
        }
    }

    pub(crate) fn ack(&self, now: Instant) -> Header {
        Header {
            src_port: self.tuple.local.port(),
            dst_port: self.tuple.remote.port(),
            seq: self.snd_nxt,
            ack: Some(self.rcv_nxt),
            window: self.window,
            timestamp: self.ts.map(|ts| (ts_clock(now, ts.offset), ts.recent)),
            ..Header::default()
        }
    }
}
