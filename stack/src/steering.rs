//! How a worker of a multi-queue interface routes what arrives on its queue
//! to the worker that owns it.
//!
//! - A TCP segment belongs to the worker whose engine holds its flow. The
//!   receiving worker's own table answers first; on a miss the interface's
//!   [`FlowDirectory`](crate::flow_directory::FlowDirectory) names the
//!   owner, and the segment goes there through the hand-off ring. A
//!   segment no worker holds (a new SYN, a SYN cookie's ACK, a stray
//!   segment that earns a RST) is claimed by the receiving worker before
//!   its engine sees it; the claim is released when the engine keeps no
//!   flow for it, and whenever a flow of its engine goes away.
//! - A UDP datagram to an ephemeral port no socket of this worker is bound
//!   to goes, as a whole frame, to the worker whose ephemeral ports that
//!   port is one of (ports are partitioned by position, see
//!   [`EphemeralPorts`]): the reply to a connected UDP session lands
//!   wherever the peer's hash puts it. Listening sockets exist on every
//!   worker, so datagrams to them stay where they arrive.
//! - Everything else (ARP, neighbour discovery, ICMP) stays: the neighbour
//!   table is shared, and smoltcp on each worker answers for itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use hoststack_drivers::MacAddr;
use hoststack_tcp::{FlowTuple, TcpEndpoint};

use crate::flow_directory::Claim;
use crate::handoff::{Batch, Item, Outbox, Packet};
use crate::neighbors::Routes;
use crate::queue_group::{QueueGroup, QueueShare};
use crate::transport::SmolTransportState;

/// Times a packet may be handed on (an owner that lost the flow meanwhile
/// hands it to the new one); past that it is handled where it is.
pub const MAX_HOPS: u8 = 2;

/// Where a TCP segment goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This worker's engine; `claimed` when it claimed the tuple for it.
    Local {
        /// The tuple was claimed for this segment.
        claimed: bool,
    },
    /// Worker `0` holds the flow.
    To(usize),
}

/// The flow tuple of a segment from `src` to `dst` in `table`, when the
/// segment is long enough to carry ports.
pub fn tcp_tuple(table: u32, src: IpAddr, dst: IpAddr, segment: &[u8]) -> Option<FlowTuple> {
    if segment.len() < 4 {
        return None;
    }
    let sport = u16::from_be_bytes([segment[0], segment[1]]);
    let dport = u16::from_be_bytes([segment[2], segment[3]]);
    Some(FlowTuple {
        table,
        local: SocketAddr::new(dst, dport),
        remote: SocketAddr::new(src, sport),
    })
}

/// The destination port of an unfragmented UDP datagram in `frame` sent to
/// one of our addresses at our Ethernet address.
pub fn udp_dst_port(frame: &[u8], our_mac: &MacAddr, routes: &Routes) -> Option<u16> {
    const ETH: usize = 14;
    const UDP: u8 = 17;
    if frame.len() < ETH + 20 || frame[0..6] != our_mac[..] {
        return None;
    }
    let ip = &frame[ETH..];
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != UDP || frag & 0x3fff != 0 {
                return None;
            }
            let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
            let udp = ip.get(ihl..ihl + 4)?;
            routes
                .is_local(dst)
                .then(|| u16::from_be_bytes([udp[2], udp[3]]))
        }
        0x86dd => {
            if ip.len() < 44 || ip[0] >> 4 != 6 || ip[6] != UDP {
                return None;
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&ip[24..40]);
            routes
                .is_local(IpAddr::V6(Ipv6Addr::from(a)))
                .then(|| u16::from_be_bytes([ip[42], ip[43]]))
        }
        _ => None,
    }
}

/// Routing decisions of one worker, with its outbox.
#[derive(Debug)]
pub struct Router<'a> {
    group: &'a QueueGroup,
    me: u16,
    outbox: &'a mut Outbox,
}

impl Router<'_> {
    /// Where the segment of `tuple` goes (claiming the tuple when no worker
    /// holds it).
    pub fn route_tcp(&self, engine: &TcpEndpoint, tuple: &FlowTuple) -> Route {
        if engine.has_flow(tuple) {
            return Route::Local { claimed: false };
        }
        match self.group.directory.claim(tuple, self.me) {
            Claim::Mine => Route::Local { claimed: true },
            Claim::Owner(o) => Route::To(usize::from(o)),
        }
    }

    /// After the engine handled a segment routed with `claimed`: gives the
    /// claim back when the engine kept no flow.
    pub fn settle(&self, engine: &TcpEndpoint, tuple: &FlowTuple, claimed: bool) {
        if claimed && !engine.has_flow(tuple) {
            self.group.directory.release(tuple, self.me);
        }
    }

    /// The worker a UDP datagram in `frame` belongs to, when not this one.
    pub fn udp_owner(
        &self,
        frame: &[u8],
        mac: &MacAddr,
        routes: &Routes,
        transport: &SmolTransportState,
    ) -> Option<usize> {
        let port = udp_dst_port(frame, mac, routes)?;
        if transport.udp_bound(port) {
            return None;
        }
        let owner = transport.port_owner(port)?;
        (owner != self.me).then_some(usize::from(owner))
    }

    /// Queues a packet for worker `to`.
    pub fn hand_off(&mut self, to: usize, packet: Packet, hops: u8, bytes: &[u8]) {
        self.outbox.push(to, packet, hops, bytes);
    }
}

/// One worker's steering state.
#[derive(Debug)]
pub struct Steering {
    share: QueueShare,
    outbox: Outbox,
    scratch: Batch,
    removed: Vec<FlowTuple>,
}

impl Steering {
    /// Steering for the worker at `share.pos`.
    pub fn new(share: QueueShare) -> Self {
        let n = share.group.workers();
        Self {
            outbox: Outbox::new(share.pos, n),
            share,
            scratch: Batch::default(),
            removed: Vec::new(),
        }
    }

    /// This worker's position.
    pub fn pos(&self) -> usize {
        self.share.pos
    }

    /// The group.
    pub fn group(&self) -> &Arc<QueueGroup> {
        &self.share.group
    }

    fn me(&self) -> u16 {
        self.share.pos as u16
    }

    /// The routing view for one burst.
    pub fn router(&mut self) -> Router<'_> {
        Router {
            group: &self.share.group,
            me: self.share.pos as u16,
            outbox: &mut self.outbox,
        }
    }

    /// Claims `tuple` for a connect this worker is about to make; false when
    /// another worker holds it.
    pub fn claim_connect(&self, tuple: &FlowTuple) -> bool {
        self.share.group.directory.claim(tuple, self.me()) == Claim::Mine
    }

    /// Publishes the queued hand-offs.
    pub fn flush(&mut self) {
        self.outbox.flush(&self.share.group.handoff);
    }

    /// Hands what other workers sent to `each` (with a router for what must
    /// go on); returns how many packets.
    pub fn drain(&mut self, mut each: impl FnMut(&mut Router<'_>, &Item, &[u8])) -> usize {
        let group = self.share.group.clone();
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut router = Router {
            group: &group,
            me: self.share.pos as u16,
            outbox: &mut self.outbox,
        };
        let n = group
            .handoff
            .drain(self.share.pos, &mut scratch, |item, bytes| {
                each(&mut router, item, bytes)
            });
        self.scratch = scratch;
        n
    }

    /// Whether hand-offs wait for this worker.
    pub fn has_waiting(&self) -> bool {
        self.share.group.handoff.has_waiting(self.share.pos)
    }

    /// Releases the directory entries of flows `engine` no longer holds.
    pub fn sync_removed(&mut self, engine: &mut TcpEndpoint) {
        engine.take_removed_flows(&mut self.removed);
        if self.removed.is_empty() {
            return;
        }
        let me = self.me();
        for t in self.removed.drain(..) {
            if !engine.has_flow(&t) {
                self.share.group.directory.release(&t, me);
            }
        }
    }

    /// About to sleep: true when nothing waits (a producer then wakes us).
    pub fn prepare_sleep(&self) -> bool {
        self.share.group.handoff.prepare_sleep(self.share.pos)
    }

    /// Awake again.
    pub fn awake(&self) {
        self.share.group.handoff.awake(self.share.pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: MacAddr = [2, 0, 0, 0, 0, 1];

    fn routes() -> Routes {
        Routes::new(
            &[
                "10.77.0.1/24".parse().unwrap(),
                "fd77::1/64".parse().unwrap(),
            ],
            None,
        )
    }

    fn udp4(dst: [u8; 4], port: u16, frag: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[0..6].copy_from_slice(&US);
        f[12..14].copy_from_slice(&[8, 0]);
        f[14] = 0x45;
        f[14 + 6..14 + 8].copy_from_slice(&frag.to_be_bytes());
        f[14 + 9] = 17;
        f[14 + 16..14 + 20].copy_from_slice(&dst);
        f[14 + 22..14 + 24].copy_from_slice(&port.to_be_bytes());
        f
    }

    #[test]
    fn udp_ports_are_read_from_our_unfragmented_datagrams_only() {
        let r = routes();
        assert_eq!(
            udp_dst_port(&udp4([10, 77, 0, 1], 50_001, 0), &US, &r),
            Some(50_001)
        );
        // DF alone is no fragment.
        assert_eq!(
            udp_dst_port(&udp4([10, 77, 0, 1], 50_001, 0x4000), &US, &r),
            Some(50_001)
        );
        assert_eq!(
            udp_dst_port(&udp4([10, 77, 0, 1], 50_001, 0x2000), &US, &r),
            None,
            "a first fragment stays (its followers carry no port)"
        );
        assert_eq!(
            udp_dst_port(&udp4([10, 77, 0, 9], 50_001, 0), &US, &r),
            None
        );
        let mut six = vec![0u8; 14 + 40 + 8];
        six[0..6].copy_from_slice(&US);
        six[12..14].copy_from_slice(&[0x86, 0xdd]);
        six[14] = 0x60;
        six[14 + 6] = 17;
        six[14 + 24..14 + 40].copy_from_slice(&"fd77::1".parse::<Ipv6Addr>().unwrap().octets());
        six[14 + 42..14 + 44].copy_from_slice(&60_000u16.to_be_bytes());
        assert_eq!(udp_dst_port(&six, &US, &r), Some(60_000));
    }

    #[test]
    fn segments_carry_their_tuple() {
        let seg = [0x9c, 0x40, 0, 7, 0, 0, 0, 0];
        let t = tcp_tuple(
            3,
            "10.77.0.2".parse().unwrap(),
            "10.77.0.1".parse().unwrap(),
            &seg,
        )
        .unwrap();
        assert_eq!(t.table, 3);
        assert_eq!(t.local, "10.77.0.1:7".parse().unwrap());
        assert_eq!(t.remote, "10.77.0.2:40000".parse().unwrap());
        assert!(tcp_tuple(0, t.remote.ip(), t.local.ip(), &seg[..3]).is_none());
    }
}
