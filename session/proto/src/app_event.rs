//! Events the session layer sends to an app worker, and their fixed-size
//! wire form for the shared-memory event queue of external apps.
//!
//! Builtin apps get the same events as callback calls; external apps read
//! them from their worker's event queue with [`AppEvent::decode`], which
//! checks every field (the queue lives in memory the app can scribble on,
//! but also the other way round: the library must not trust the stack's
//! bytes blindly either).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::endpoint::{Endpoint, TransportProto};
use crate::error::{SessionError, SessionResult};
use crate::handle::{ListenerHandle, SessionHandle};

/// Bytes of one encoded event (the event queue's slot size).
pub const APP_EVENT_SIZE: usize = 96;

/// Where a session's fifos live, for an app in another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FifoLocation {
    /// Segment index (as announced by a segment-added event or at attach).
    pub segment: u32,
    /// Offset of the rx fifo header in the segment.
    pub rx_offset: u32,
    /// Offset of the tx fifo header in the segment.
    pub tx_offset: u32,
}

/// One event for an app worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppEvent {
    /// A session arrived on a listener.
    Accepted {
        /// The new session.
        session: SessionHandle,
        /// The listener.
        listener: ListenerHandle,
        /// Protocol.
        proto: TransportProto,
        /// Our end.
        local: Endpoint,
        /// The peer.
        remote: Endpoint,
        /// Its fifos.
        fifos: FifoLocation,
    },
    /// A connect finished.
    Connected {
        /// The session (meaningless when `error` is set).
        session: SessionHandle,
        /// The value the connect carried.
        opaque: u64,
        /// 0 on success, else an [`ErrorCode`](crate::error::ErrorCode).
        error: u32,
        /// Our end.
        local: Endpoint,
        /// The peer.
        remote: Endpoint,
        /// Its fifos.
        fifos: FifoLocation,
    },
    /// The peer closed the session.
    Disconnected {
        /// The session.
        session: SessionHandle,
    },
    /// The peer reset the session.
    Reset {
        /// The session.
        session: SessionHandle,
    },
    /// The session is gone on the stack side; its handle is dead.
    Cleanup {
        /// The session.
        session: SessionHandle,
    },
    /// Data is waiting in the rx fifo.
    Rx {
        /// The session.
        session: SessionHandle,
    },
    /// The tx fifo has room again.
    TxSpace {
        /// The session.
        session: SessionHandle,
    },
    /// A segment was added; map it (its fd travels on the app socket).
    SegmentAdded {
        /// Segment index.
        index: u32,
        /// Bytes.
        size: u64,
    },
    /// A segment was removed; unmap it.
    SegmentRemoved {
        /// Segment index.
        index: u32,
    },
    /// The answer to a control message the app sent on its rx queue
    /// (listen, unlisten, connect, disconnect).
    Reply {
        /// The request id the app chose.
        request: u32,
        /// 0 on success, else an [`ErrorCode`](crate::error::ErrorCode).
        error: u32,
        /// A listener handle (listen) or 0.
        handle: u64,
    },
    /// The queue was full and events waited in the stack before reaching
    /// it (none was dropped); sent once they all got through.
    Backlog {
        /// Events that waited.
        postponed: u32,
        /// The longest wait, microseconds.
        max_wait_us: u32,
    },
}

const KIND_ACCEPTED: u8 = 1;
const KIND_CONNECTED: u8 = 2;
const KIND_DISCONNECTED: u8 = 3;
const KIND_RESET: u8 = 4;
const KIND_CLEANUP: u8 = 5;
const KIND_RX: u8 = 6;
const KIND_TX_SPACE: u8 = 7;
const KIND_SEGMENT_ADDED: u8 = 8;
const KIND_SEGMENT_REMOVED: u8 = 9;
const KIND_REPLY: u8 = 10;
const KIND_BACKLOG: u8 = 11;

/// Bytes of an encoded endpoint: family (1), port (2), address (16).
const ENDPOINT_LEN: usize = 19;

struct Writer<'a> {
    buf: &'a mut [u8; APP_EVENT_SIZE],
    at: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn endpoint(&mut self, e: &Endpoint) {
        let (fam, addr) = match e.ip {
            IpAddr::V4(a) => (4u8, a.to_ipv6_mapped().octets()),
            IpAddr::V6(a) => (6u8, a.octets()),
        };
        self.u8(fam);
        self.bytes(&e.port.to_le_bytes());
        self.bytes(&addr);
    }
    fn fifos(&mut self, f: &FifoLocation) {
        self.u32(f.segment);
        self.u32(f.rx_offset);
        self.u32(f.tx_offset);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

fn bad(what: &str) -> SessionError {
    SessionError::Corrupted(format!("app event: {what}"))
}

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> SessionResult<&[u8]> {
        let b = self
            .buf
            .get(self.at..self.at + n)
            .ok_or_else(|| bad("truncated"))?;
        self.at += n;
        Ok(b)
    }
    fn u8(&mut self) -> SessionResult<u8> {
        Ok(self.bytes(1)?[0])
    }
    fn u32(&mut self) -> SessionResult<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> SessionResult<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn endpoint(&mut self) -> SessionResult<Endpoint> {
        let fam = self.u8()?;
        let p = self.bytes(2)?;
        let port = u16::from_le_bytes([p[0], p[1]]);
        let mut a = [0u8; 16];
        a.copy_from_slice(self.bytes(16)?);
        let v6 = Ipv6Addr::from(a);
        let ip = match fam {
            4 => IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED)),
            6 => IpAddr::V6(v6),
            _ => return Err(bad("bad address family")),
        };
        Ok(Endpoint { ip, port })
    }
    fn fifos(&mut self) -> SessionResult<FifoLocation> {
        Ok(FifoLocation {
            segment: self.u32()?,
            rx_offset: self.u32()?,
            tx_offset: self.u32()?,
        })
    }
    fn proto(&mut self) -> SessionResult<TransportProto> {
        match self.u8()? {
            0 => Ok(TransportProto::Tcp),
            1 => Ok(TransportProto::Udp),
            _ => Err(bad("bad protocol")),
        }
    }
}

fn proto_code(p: TransportProto) -> u8 {
    match p {
        TransportProto::Tcp => 0,
        TransportProto::Udp => 1,
    }
}

impl AppEvent {
    /// The session the event is about, if any.
    pub fn session(&self) -> Option<SessionHandle> {
        match self {
            Self::Accepted { session, .. }
            | Self::Connected { session, .. }
            | Self::Disconnected { session }
            | Self::Reset { session }
            | Self::Cleanup { session }
            | Self::Rx { session }
            | Self::TxSpace { session } => Some(*session),
            _ => None,
        }
    }

    /// Encodes into one event-queue slot.
    pub fn encode(&self) -> [u8; APP_EVENT_SIZE] {
        let mut buf = [0u8; APP_EVENT_SIZE];
        let mut w = Writer {
            buf: &mut buf,
            at: 0,
        };
        match self {
            Self::Accepted {
                session,
                listener,
                proto,
                local,
                remote,
                fifos,
            } => {
                w.u8(KIND_ACCEPTED);
                w.u64(session.as_u64());
                w.u64(listener.as_u64());
                w.u8(proto_code(*proto));
                w.endpoint(local);
                w.endpoint(remote);
                w.fifos(fifos);
            }
            Self::Connected {
                session,
                opaque,
                error,
                local,
                remote,
                fifos,
            } => {
                w.u8(KIND_CONNECTED);
                w.u64(session.as_u64());
                w.u64(*opaque);
                w.u32(*error);
                w.endpoint(local);
                w.endpoint(remote);
                w.fifos(fifos);
            }
            Self::Disconnected { session } => {
                w.u8(KIND_DISCONNECTED);
                w.u64(session.as_u64());
            }
            Self::Reset { session } => {
                w.u8(KIND_RESET);
                w.u64(session.as_u64());
            }
            Self::Cleanup { session } => {
                w.u8(KIND_CLEANUP);
                w.u64(session.as_u64());
            }
            Self::Rx { session } => {
                w.u8(KIND_RX);
                w.u64(session.as_u64());
            }
            Self::TxSpace { session } => {
                w.u8(KIND_TX_SPACE);
                w.u64(session.as_u64());
            }
            Self::SegmentAdded { index, size } => {
                w.u8(KIND_SEGMENT_ADDED);
                w.u32(*index);
                w.u64(*size);
            }
            Self::SegmentRemoved { index } => {
                w.u8(KIND_SEGMENT_REMOVED);
                w.u32(*index);
            }
            Self::Reply {
                request,
                error,
                handle,
            } => {
                w.u8(KIND_REPLY);
                w.u32(*request);
                w.u32(*error);
                w.u64(*handle);
            }
            Self::Backlog {
                postponed,
                max_wait_us,
            } => {
                w.u8(KIND_BACKLOG);
                w.u32(*postponed);
                w.u32(*max_wait_us);
            }
        }
        debug_assert!(w.at <= APP_EVENT_SIZE, "event does not fit its slot");
        buf
    }

    /// Decodes one slot; garbage gives `Corrupted`, never a panic.
    pub fn decode(buf: &[u8]) -> SessionResult<Self> {
        let mut r = Reader { buf, at: 0 };
        let handle = |v: u64| SessionHandle::from_u64(v);
        Ok(match r.u8()? {
            KIND_ACCEPTED => Self::Accepted {
                session: handle(r.u64()?),
                listener: ListenerHandle::from_u64(r.u64()?),
                proto: r.proto()?,
                local: r.endpoint()?,
                remote: r.endpoint()?,
                fifos: r.fifos()?,
            },
            KIND_CONNECTED => Self::Connected {
                session: handle(r.u64()?),
                opaque: r.u64()?,
                error: r.u32()?,
                local: r.endpoint()?,
                remote: r.endpoint()?,
                fifos: r.fifos()?,
            },
            KIND_DISCONNECTED => Self::Disconnected {
                session: handle(r.u64()?),
            },
            KIND_RESET => Self::Reset {
                session: handle(r.u64()?),
            },
            KIND_CLEANUP => Self::Cleanup {
                session: handle(r.u64()?),
            },
            KIND_RX => Self::Rx {
                session: handle(r.u64()?),
            },
            KIND_TX_SPACE => Self::TxSpace {
                session: handle(r.u64()?),
            },
            KIND_SEGMENT_ADDED => Self::SegmentAdded {
                index: r.u32()?,
                size: r.u64()?,
            },
            KIND_SEGMENT_REMOVED => Self::SegmentRemoved { index: r.u32()? },
            KIND_REPLY => Self::Reply {
                request: r.u32()?,
                error: r.u32()?,
                handle: r.u64()?,
            },
            KIND_BACKLOG => Self::Backlog {
                postponed: r.u32()?,
                max_wait_us: r.u32()?,
            },
            k => return Err(bad(&format!("unknown kind {k}"))),
        })
    }
}

/// Size of the header in front of each datagram in a datagram session's
/// fifos: payload length (2), remote endpoint, local endpoint.
pub const DGRAM_HEADER_SIZE: usize = 2 + 2 * ENDPOINT_LEN;

/// Encodes a datagram header.
pub fn encode_dgram_header(
    len: u16,
    remote: &Endpoint,
    local: &Endpoint,
) -> [u8; DGRAM_HEADER_SIZE] {
    let mut full = [0u8; APP_EVENT_SIZE];
    let mut w = Writer {
        buf: &mut full,
        at: 0,
    };
    w.bytes(&len.to_le_bytes());
    w.endpoint(remote);
    w.endpoint(local);
    let mut out = [0u8; DGRAM_HEADER_SIZE];
    out.copy_from_slice(&full[..DGRAM_HEADER_SIZE]);
    out
}

/// Decodes a datagram header: (payload length, remote, local).
pub fn decode_dgram_header(buf: &[u8]) -> SessionResult<(u16, Endpoint, Endpoint)> {
    let mut r = Reader { buf, at: 0 };
    let l = r.bytes(2)?;
    let len = u16::from_le_bytes([l[0], l[1]]);
    Ok((len, r.endpoint()?, r.endpoint()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        let sa: std::net::SocketAddr = s.parse().unwrap();
        Endpoint {
            ip: sa.ip(),
            port: sa.port(),
        }
    }

    #[test]
    fn every_event_round_trips_through_its_slot() {
        let s = SessionHandle::new(2, 77);
        let f = FifoLocation {
            segment: 3,
            rx_offset: 4096,
            tx_offset: 8192,
        };
        let events = [
            AppEvent::Accepted {
                session: s,
                listener: ListenerHandle::new(0, 5),
                proto: TransportProto::Tcp,
                local: ep("10.0.0.1:80"),
                remote: ep("[fd00::2]:40000"),
                fifos: f,
            },
            AppEvent::Connected {
                session: s,
                opaque: 99,
                error: 0,
                local: ep("1.2.3.4:5"),
                remote: ep("5.6.7.8:9"),
                fifos: f,
            },
            AppEvent::Disconnected { session: s },
            AppEvent::Reset { session: s },
            AppEvent::Cleanup { session: s },
            AppEvent::Rx { session: s },
            AppEvent::TxSpace { session: s },
            AppEvent::SegmentAdded {
                index: 1,
                size: 1 << 30,
            },
            AppEvent::SegmentRemoved { index: 1 },
            AppEvent::Reply {
                request: 7,
                error: 12,
                handle: 0x1_0000_0002,
            },
            AppEvent::Backlog {
                postponed: 70_000,
                max_wait_us: 1234,
            },
        ];
        for e in events {
            assert_eq!(AppEvent::decode(&e.encode()).unwrap(), e);
        }
    }

    #[test]
    fn garbage_slots_decode_to_corrupted_not_panics() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..10_000 {
            let mut buf = [0u8; APP_EVENT_SIZE];
            for b in &mut buf {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let _ = AppEvent::decode(&buf);
            let _ = AppEvent::decode(&buf[..(x % 40) as usize]);
        }
        assert!(AppEvent::decode(&[200]).is_err());
    }

    #[test]
    fn dgram_headers_round_trip() {
        let h = encode_dgram_header(1400, &ep("[fd00::9]:53"), &ep("[fd00::1]:5353"));
        assert_eq!(
            decode_dgram_header(&h).unwrap(),
            (1400, ep("[fd00::9]:53"), ep("[fd00::1]:5353"))
        );
    }
}
