//! hoststack's TCP engine: RFC 9293 TCP as a sans-IO state machine.
//!
//! The engine owns every TCP connection of one stack worker and nothing else: no threads, no
//! sockets, no clock, no logging on the data path. The stack hands it TCP segments (header and
//! payload, plus the IP addresses for the pseudo-header checksum) and the time, and pulls
//! complete TCP segments and application events back out. IP, ARP/ND, ICMP and UDP stay in
//! smoltcp; this crate parses and emits through smoltcp's `wire` types.
//!
//! # Layers
//!
//! - [`TcpEndpoint`] (`endpoint`): the tables. A hash map from [`FlowTuple`] (table index
//!   and both socket addresses) to a connection, a half-open entry or a TIME-WAIT entry;
//!   listeners by address (specific, then wildcard); a hierarchical timer wheel (`wheel`)
//!   with one entry per connection; a ready list of connections with something to send; a
//!   bounded queue of stateless replies (RSTs, challenge ACKs, SYN-ACKs). Nothing scans all
//!   connections.
//! - `listener` and `time_wait`: the lightweight entries. A SYN creates a half-open
//!   "request" (no buffers), promoted to a connection by the final ACK; when the SYN queue is
//!   full the listener answers with a SYN cookie (`cookie`, RFC 4987) and keeps nothing.
//!   TIME-WAIT keeps only what it needs to answer and to judge a new SYN (RFC 6191).
//! - `conn`: one connection's control block and state machine (`input`, `output`,
//!   `timer`), with RFC 5961 protections, RFC 7323 window scaling, timestamps and PAWS.
//! - The parts a connection composes, each a small module with its own tests: `seqnum`
//!   (sequence arithmetic as a type), `buffer` and `reassembly` (chunked send and receive
//!   buffers from an engine-wide pool, out-of-order reassembly, SACK block generation),
//!   `scoreboard` (RFC 6675 retransmission queue and SACK scoreboard), `rack` (RFC 8985
//!   RACK-TLP), `rtt` (RFC 6298), `congestion` (CUBIC and NewReno), `secret` and `cookie`
//!   (RFC 6528 ISNs and cookies from a keyed SipHash), `counters`.
//!
//! # Calling convention
//!
//! As in quinn-proto: inputs are `handle_*` ([`TcpEndpoint::handle_segment`],
//! [`TcpEndpoint::handle_timeout`]); application commands act on [`ConnHandle`]s and
//! [`ListenerId`]s (`listen`, `accept`, `connect`, `send`, `recv`, `close`, `abort`, ...);
//! outputs are `poll_*`: after any input or command, call
//! [`TcpEndpoint::poll_transmit`] until `None`, then [`TcpEndpoint::poll_event`] until
//! `None`, then wait until [`TcpEndpoint::poll_timeout`] (or the next segment). Time is a
//! monotonic [`Instant`] passed in by the caller; it must never go backwards.
//!
//! ```
//! use hoststack_tcp::{ChecksumMode, ConnOptions, ListenOptions, TcpConfig, TcpEndpoint};
//! use smoltcp::time::Instant;
//!
//! let now = Instant::from_millis(0);
//! let mut server = TcpEndpoint::new(TcpConfig::default(), now);
//! let mut client = TcpEndpoint::new(TcpConfig::default(), now);
//! let listener = server
//!     .listen(0, "10.0.0.2:80".parse().unwrap(), ListenOptions::default())
//!     .unwrap();
//! let conn = client
//!     .connect(now, 0, "10.0.0.1:40000".parse().unwrap(), "10.0.0.2:80".parse().unwrap(),
//!              ConnOptions::default())
//!     .unwrap();
//! // Shuttle segments both ways until both sides are quiet.
//! let mut buf = [0u8; 1500];
//! for _ in 0..4 {
//!     while let Some(t) = client.poll_transmit(now, &mut buf) {
//!         server.handle_segment(now, t.table, t.src, t.dst, &buf[..t.len], ChecksumMode::Verify);
//!     }
//!     while let Some(t) = server.poll_transmit(now, &mut buf) {
//!         client.handle_segment(now, t.table, t.src, t.dst, &buf[..t.len], ChecksumMode::Verify);
//!     }
//! }
//! assert!(server.accept(listener).unwrap().is_some());
//! assert!(client.info(conn).unwrap().state == hoststack_tcp::TcpState::Established);
//! ```
//!
//! [`Instant`]: smoltcp::time::Instant

#![forbid(unsafe_code)]

mod arena;
mod buffer;
mod config;
mod congestion;
mod conn;
mod cookie;
mod counters;
mod endpoint;
mod error;
mod event;
mod info;
mod listener;
mod rack;
mod ranges;
mod ratelimit;
mod reassembly;
mod rtt;
mod scoreboard;
mod secret;
mod segment;
mod seqnum;
mod time_wait;
mod wheel;

pub use config::{
    CongestionAlgorithmKind, ConnOptions, KeepaliveConfig, ListenOptions, TcpConfig, TxChecksum,
};
pub use counters::TcpCounters;
pub use endpoint::{ChecksumMode, TcpEndpoint, Transmit};
pub use error::TcpError;
pub use event::{ConnHandle, ConnectFailure, ListenerId, ResetReason, TcpEvent};
pub use info::{ConnInfo, FlowTuple, TcpState};
pub use seqnum::SeqNum;
pub use smoltcp::time::{Duration, Instant};
