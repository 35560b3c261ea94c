//! Where the frames the stack builds itself go: the next hop of a
//! destination ([`Routes`], from the interface's subnets and gateway) and
//! that next hop's Ethernet address ([`Neighbors`]).
//!
//! smoltcp resolves addresses (ARP, neighbour discovery) for what it sends
//! and keeps its cache to itself; the TCP engine's segments do not pass
//! through it. So the stack learns next hops' addresses from the frames it
//! receives: the sender of an ARP request or reply, the link-layer option of
//! a neighbour solicitation or advertisement, and the source of any IP frame
//! whose source address is on one of the interface's subnets (an off-link
//! source's frame comes from the gateway, whose address ARP provides). A
//! segment whose next hop is not known yet goes to smoltcp as an IP packet,
//! and smoltcp resolves it; the answer passes through here on its way in.
//!
//! Only on-link addresses are learned, so the table's size is bounded by the
//! subnets (and capped at [`MAX_NEIGHBORS`] for IPv6's large ones), never by
//! what random source addresses a flood uses.
//!
//! The workers of one interface share one table ([`SharedNeighbors`]): an
//! ARP reply lands on whatever queue the peer's hash picks, not necessarily
//! the one whose worker asked. Each worker looks through a [`NeighborView`],
//! a private copy filled from the shared table on a miss and emptied when an
//! entry of the shared one changes address, so a frame whose sender is
//! already known touches nothing shared, and neither does a transmission to
//! a known next hop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hashbrown::HashMap;
use hoststack_drivers::MacAddr;

use crate::config::AddrPrefix;

/// Entries kept at most.
pub const MAX_NEIGHBORS: usize = 4096;

/// The interface's subnets and gateways.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    subnets: Vec<AddrPrefix>,
    gateway4: Option<Ipv4Addr>,
    gateway6: Option<Ipv6Addr>,
}

fn in_prefix(a: IpAddr, p: &AddrPrefix) -> bool {
    match (a, p.addr) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let bits = u32::from(p.prefix.min(32));
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let bits = u32::from(p.prefix.min(128));
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl Routes {
    /// Routes over `addresses` (their subnets are on-link) and `gateway`.
    pub fn new(addresses: &[AddrPrefix], gateway: Option<IpAddr>) -> Self {
        let (mut gateway4, mut gateway6) = (None, None);
        match gateway {
            Some(IpAddr::V4(g)) => gateway4 = Some(g),
            Some(IpAddr::V6(g)) => gateway6 = Some(g),
            None => {}
        }
        Self {
            subnets: addresses.to_vec(),
            gateway4,
            gateway6,
        }
    }

    /// Whether `a` is on one of the interface's subnets.
    pub fn on_link(&self, a: IpAddr) -> bool {
        self.subnets.iter().any(|p| in_prefix(a, p))
    }

    /// Whether `a` is one of the interface's own addresses.
    pub fn is_local(&self, a: IpAddr) -> bool {
        self.subnets.iter().any(|p| p.addr == a)
    }

    /// The address a frame to `dst` is sent to: `dst` itself when it is on
    /// link, else the gateway of its family; `None` when unreachable.
    pub fn next_hop(&self, dst: IpAddr) -> Option<IpAddr> {
        if self.on_link(dst) {
            return Some(dst);
        }
        match dst {
            IpAddr::V4(_) => self.gateway4.map(IpAddr::V4),
            IpAddr::V6(_) => self.gateway6.map(IpAddr::V6),
        }
    }

    /// Our address to send from to `remote`: the one on its subnet, else
    /// the first of its family.
    pub fn source_for(&self, remote: IpAddr) -> Option<IpAddr> {
        self.subnets
            .iter()
            .find(|p| in_prefix(remote, p))
            .or_else(|| {
                self.subnets
                    .iter()
                    .find(|p| p.addr.is_ipv4() == remote.is_ipv4())
            })
            .map(|p| p.addr)
    }
}

/// On-link addresses and their Ethernet addresses.
#[derive(Debug, Default)]
pub struct Neighbors {
    table: HashMap<IpAddr, MacAddr>,
    /// Entries replaced by a different address (a host that moved, or a
    /// forged announcement).
    pub changes: u64,
}

const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;

impl Neighbors {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The Ethernet address of next hop `ip`, if known.
    pub fn lookup(&self, ip: IpAddr) -> Option<MacAddr> {
        self.table.get(&ip).copied()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Records that on-link `ip` is at `mac`; returns what changed.
    pub fn learn(&mut self, routes: &Routes, ip: IpAddr, mac: MacAddr) -> Learned {
        if !learnable(routes, ip, mac) {
            return Learned::Refused;
        }
        self.insert(ip, mac)
    }

    fn insert(&mut self, ip: IpAddr, mac: MacAddr) -> Learned {
        match self.table.get_mut(&ip) {
            Some(m) if *m == mac => Learned::Known,
            Some(m) => {
                *m = mac;
                self.changes += 1;
                Learned::Changed
            }
            None => {
                if self.table.len() >= MAX_NEIGHBORS {
                    // Full (a huge IPv6 subnet): drop one entry rather than
                    // grow; it is learned again from its next frame.
                    if let Some(k) = self.table.keys().next().copied() {
                        self.table.remove(&k);
                    }
                }
                self.table.insert(ip, mac);
                Learned::New
            }
        }
    }

    /// Learns what `frame` (a received Ethernet frame) reveals: its IP
    /// sender's address when on link, an ARP sender, a neighbour
    /// solicitation's or advertisement's link-layer option.
    pub fn observe(&mut self, routes: &Routes, frame: &[u8]) {
        observe(frame, |ip, mac| {
            self.learn(routes, ip, mac);
        });
    }
}

/// What [`Neighbors::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Not an address to keep (off link, ours, multicast).
    Refused,
    /// Already known at that address.
    Known,
    /// A new entry.
    New,
    /// An entry moved to another address.
    Changed,
}

fn learnable(routes: &Routes, ip: IpAddr, mac: MacAddr) -> bool {
    routes.on_link(ip) && !routes.is_local(ip) && mac[0] & 1 == 0 && mac != [0; 6]
}

/// Calls `learn` with each (address, Ethernet address) pair `frame` (a
/// received Ethernet frame) reveals: its IP sender, an ARP sender, a
/// neighbour solicitation's or advertisement's link-layer option.
pub fn observe(frame: &[u8], mut learn: impl FnMut(IpAddr, MacAddr)) {
    if frame.len() < ETH_HEADER {
        return;
    }
    let mut src_mac = [0u8; 6];
    src_mac.copy_from_slice(&frame[6..12]);
    let payload = &frame[ETH_HEADER..];
    match u16::from_be_bytes([frame[12], frame[13]]) {
        ETHERTYPE_IPV4 if payload.len() >= 20 && payload[0] >> 4 == 4 => {
            let src = Ipv4Addr::new(payload[12], payload[13], payload[14], payload[15]);
            learn(IpAddr::V4(src), src_mac);
        }
        ETHERTYPE_IPV6 if payload.len() >= 40 && payload[0] >> 4 == 6 => {
            let src = ipv6_at(payload, 8);
            if !src.is_unspecified() {
                learn(IpAddr::V6(src), src_mac);
            }
            observe_ndp(payload, &mut learn);
        }
        // Ethernet/IPv4 ARP: sender hardware address at 8, sender
        // protocol address at 14.
        ETHERTYPE_ARP
            if payload.len() >= 28
                && payload[0..2] == [0, 1]
                && payload[2..4] == [8, 0]
                && payload[4] == 6 =>
        {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&payload[8..14]);
            let ip = Ipv4Addr::new(payload[14], payload[15], payload[16], payload[17]);
            if !ip.is_unspecified() {
                learn(IpAddr::V4(ip), mac);
            }
        }
        _ => {}
    }
}

/// A neighbour advertisement names its target's link-layer address; a
/// solicitation names its sender's.
fn observe_ndp(ip6: &[u8], learn: &mut impl FnMut(IpAddr, MacAddr)) {
    const ICMPV6: u8 = 58;
    const NS: u8 = 135;
    const NA: u8 = 136;
    if ip6[6] != ICMPV6 || ip6.len() < 40 + 24 {
        return;
    }
    let icmp = &ip6[40..];
    let (who, want_opt) = match icmp[0] {
        NS => (ipv6_at(ip6, 8), 1),
        NA => (ipv6_at(icmp, 8), 2),
        _ => return,
    };
    let mut opts = &icmp[24..];
    while opts.len() >= 8 {
        let (kind, len) = (opts[0], usize::from(opts[1]) * 8);
        if len == 0 || len > opts.len() {
            return;
        }
        if kind == want_opt && len >= 8 && !who.is_unspecified() {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&opts[2..8]);
            learn(IpAddr::V6(who), mac);
        }
        opts = &opts[len..];
    }
}

/// Entries added or moved that a view can still catch up on; one further
/// behind gets no news of the older ones (its smoltcp asks again, and the
/// answer comes from the table then).
const RECENT: usize = 1024;

#[derive(Debug, Default)]
struct SharedTable {
    table: Neighbors,
    /// (version, address) of the latest additions and moves.
    recent: std::collections::VecDeque<(u64, IpAddr)>,
}

/// The neighbour table of one interface, shared by its workers.
#[derive(Debug, Default)]
pub struct SharedNeighbors {
    inner: Mutex<SharedTable>,
    /// Bumped whenever an entry is added or changes address.
    version: AtomicU64,
    /// Bumped whenever an entry changes address: views drop their copies.
    moves: AtomicU64,
}

impl SharedNeighbors {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SharedTable> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().table.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries that changed address since the start.
    pub fn changes(&self) -> u64 {
        self.lock().table.changes
    }

    /// Changes since the start: a view that saw another value may find new
    /// entries.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

/// One worker's view of its interface's [`SharedNeighbors`].
#[derive(Debug)]
pub struct NeighborView {
    shared: Arc<SharedNeighbors>,
    local: HashMap<IpAddr, MacAddr>,
    moves_seen: u64,
    version_seen: u64,
}

impl NeighborView {
    /// A view of `shared`.
    pub fn new(shared: Arc<SharedNeighbors>) -> Self {
        let moves_seen = shared.moves.load(Ordering::Acquire);
        let version_seen = shared.version();
        Self {
            shared,
            local: HashMap::new(),
            moves_seen,
            version_seen,
        }
    }

    /// Appends the entries added or moved (by any worker) since the last
    /// call: one atomic load when there are none.
    pub fn take_fresh(&mut self, out: &mut Vec<(IpAddr, MacAddr)>) {
        let version = self.shared.version();
        if version == self.version_seen {
            return;
        }
        let seen = self.version_seen;
        let inner = self.shared.lock();
        for &(v, ip) in inner.recent.iter().filter(|(v, _)| *v > seen) {
            if let Some(mac) = inner.table.lookup(ip) {
                if !out.iter().any(|(i, _)| *i == ip) {
                    out.push((ip, mac));
                }
            }
            self.version_seen = self.version_seen.max(v);
        }
        self.version_seen = self.version_seen.max(version);
    }

    /// The table seen.
    pub fn shared(&self) -> &Arc<SharedNeighbors> {
        &self.shared
    }

    /// Drops the private copy when an entry moved since the last call
    /// (one atomic load; call once per loop).
    pub fn refresh(&mut self) {
        let moves = self.shared.moves.load(Ordering::Acquire);
        if moves != self.moves_seen {
            self.moves_seen = moves;
            self.local.clear();
        }
    }

    /// Records that on-link `ip` is at `mac` (in the shared table unless
    /// this view already knows exactly that).
    pub fn learn(&mut self, routes: &Routes, ip: IpAddr, mac: MacAddr) {
        if self.local.get(&ip) == Some(&mac) || !learnable(routes, ip, mac) {
            return;
        }
        {
            let mut inner = self.shared.lock();
            let learned = inner.table.insert(ip, mac);
            if matches!(learned, Learned::New | Learned::Changed) {
                let v = self.shared.version.fetch_add(1, Ordering::AcqRel) + 1;
                if inner.recent.len() >= RECENT {
                    inner.recent.pop_front();
                }
                inner.recent.push_back((v, ip));
                if learned == Learned::Changed {
                    self.shared.moves.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        if self.local.len() >= MAX_NEIGHBORS {
            self.local.clear();
        }
        self.local.insert(ip, mac);
    }

    /// Learns what a received frame reveals (see [`observe`]).
    pub fn observe(&mut self, routes: &Routes, frame: &[u8]) {
        observe(frame, |ip, mac| self.learn(routes, ip, mac));
    }

    /// The Ethernet address of next hop `ip`, if any worker learned it.
    pub fn lookup(&mut self, ip: IpAddr) -> Option<MacAddr> {
        if let Some(&m) = self.local.get(&ip) {
            return Some(m);
        }
        let m = self.shared.lock().table.lookup(ip)?;
        if self.local.len() >= MAX_NEIGHBORS {
            self.local.clear();
        }
        self.local.insert(ip, m);
        Some(m)
    }
}

fn ipv6_at(b: &[u8], at: usize) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        Routes::new(
            &[
                "10.77.0.1/24".parse().unwrap(),
                "fd77::1/64".parse().unwrap(),
            ],
            Some("10.77.0.254".parse().unwrap()),
        )
    }

    fn ipv4_frame(src_mac: MacAddr, src: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20];
        f[6..12].copy_from_slice(&src_mac);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[14 + 12..14 + 16].copy_from_slice(&src);
        f
    }

    #[test]
    fn next_hops_are_on_link_destinations_or_the_gateway() {
        let r = routes();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(r.next_hop(ip("10.77.0.2")), Some(ip("10.77.0.2")));
        assert_eq!(r.next_hop(ip("192.0.2.1")), Some(ip("10.77.0.254")));
        assert_eq!(r.next_hop(ip("fd77::2")), Some(ip("fd77::2")));
        assert_eq!(r.next_hop(ip("2001:db8::1")), None, "no IPv6 gateway");
        assert_eq!(r.source_for(ip("10.77.0.9")), Some(ip("10.77.0.1")));
        assert_eq!(r.source_for(ip("2001:db8::1")), Some(ip("fd77::1")));
    }

    #[test]
    fn only_on_link_senders_are_learned() {
        let r = routes();
        let mut n = Neighbors::new();
        let mac = [2, 0, 0, 0, 0, 9];
        n.observe(&r, &ipv4_frame(mac, [10, 77, 0, 2]));
        n.observe(&r, &ipv4_frame(mac, [198, 51, 100, 7]));
        n.observe(&r, &ipv4_frame([1, 0, 0, 0, 0, 1], [10, 77, 0, 3]));
        assert_eq!(n.lookup("10.77.0.2".parse().unwrap()), Some(mac));
        assert_eq!(n.len(), 1, "off-link and multicast senders are not kept");
    }

    #[test]
    fn arp_and_neighbour_advertisements_teach_addresses() {
        let r = routes();
        let mut n = Neighbors::new();
        let mut arp = vec![0u8; 14 + 28];
        arp[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        arp[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        arp[22..28].copy_from_slice(&[2, 0, 0, 0, 0, 0xfe]);
        arp[28..32].copy_from_slice(&[10, 77, 0, 254]);
        n.observe(&r, &arp);
        assert_eq!(
            n.lookup("10.77.0.254".parse().unwrap()),
            Some([2, 0, 0, 0, 0, 0xfe])
        );
        // A neighbour advertisement for fd77::2 with its target link-layer
        // option, sent from a link-local address.
        let mut na = vec![0u8; 14 + 40 + 24 + 8];
        na[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let ip6 = &mut na[14..];
        ip6[0] = 0x60;
        ip6[6] = 58;
        ip6[8..24].copy_from_slice(&"fe80::2".parse::<Ipv6Addr>().unwrap().octets());
        let icmp = &mut ip6[40..];
        icmp[0] = 136;
        icmp[8..24].copy_from_slice(&"fd77::2".parse::<Ipv6Addr>().unwrap().octets());
        icmp[24..32].copy_from_slice(&[2, 1, 2, 0, 0, 0, 0, 7]);
        n.observe(&r, &na);
        assert_eq!(
            n.lookup("fd77::2".parse().unwrap()),
            Some([2, 0, 0, 0, 0, 7])
        );
    }

    #[test]
    fn a_changed_address_replaces_the_old_one_and_is_counted() {
        let r = routes();
        let mut n = Neighbors::new();
        let ip: IpAddr = "10.77.0.2".parse().unwrap();
        n.learn(&r, ip, [2, 0, 0, 0, 0, 1]);
        n.learn(&r, ip, [2, 0, 0, 0, 0, 1]);
        n.learn(&r, ip, [2, 0, 0, 0, 0, 2]);
        assert_eq!((n.lookup(ip), n.changes), (Some([2, 0, 0, 0, 0, 2]), 1));
    }

    #[test]
    fn workers_share_what_one_of_them_learned_and_drop_moved_entries() {
        let r = routes();
        let shared = Arc::new(SharedNeighbors::new());
        let (mut a, mut b) = (
            NeighborView::new(shared.clone()),
            NeighborView::new(shared.clone()),
        );
        let ip: IpAddr = "10.77.0.2".parse().unwrap();
        assert_eq!(b.lookup(ip), None);
        let v0 = shared.version();
        a.observe(&r, &ipv4_frame([2, 0, 0, 0, 0, 1], [10, 77, 0, 2]));
        assert!(shared.version() > v0, "a new entry bumps the version");
        assert_eq!(b.lookup(ip), Some([2, 0, 0, 0, 0, 1]));
        // Seen again: nothing shared changes.
        let v1 = shared.version();
        a.observe(&r, &ipv4_frame([2, 0, 0, 0, 0, 1], [10, 77, 0, 2]));
        assert_eq!(shared.version(), v1);
        // The host moves: b's copy goes on its next refresh.
        a.learn(&r, ip, [2, 0, 0, 0, 0, 2]);
        b.refresh();
        assert_eq!(b.lookup(ip), Some([2, 0, 0, 0, 0, 2]));
        assert_eq!((shared.len(), shared.changes()), (1, 1));
        // b hears of both: the new entry and its move (once, latest address).
        let mut fresh = Vec::new();
        b.take_fresh(&mut fresh);
        assert_eq!(fresh, vec![(ip, [2, 0, 0, 0, 0, 2])]);
        fresh.clear();
        b.take_fresh(&mut fresh);
        assert!(fresh.is_empty(), "nothing new since");
        // Off-link senders stay out of the shared table too.
        b.observe(&r, &ipv4_frame([2, 0, 0, 0, 0, 3], [198, 51, 100, 1]));
        assert_eq!(shared.len(), 1);
    }

    #[test]
    fn the_table_never_grows_past_its_cap() {
        let r = Routes::new(&["fd00::1/64".parse().unwrap()], None);
        let mut n = Neighbors::new();
        for i in 0..(MAX_NEIGHBORS as u128 + 100) {
            let ip = IpAddr::V6(Ipv6Addr::from(0xfd00_u128 << 112 | (i + 2)));
            n.learn(&r, ip, [2, 0, 0, 0, 0, 1]);
        }
        assert_eq!(n.len(), MAX_NEIGHBORS);
    }
}
