//! A deterministic simulated network for two endpoints (in the spirit of quinn-proto's test
//! `Pair`): a virtual clock that jumps to the next deadline or delivery, and one link per
//! direction with seeded loss, duplication, reordering, delay and a rate limit. `run_until`
//! is bounded so a livelock fails the test instead of hanging it.

#![allow(dead_code, unreachable_pub)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hoststack_tcp::{
    ChecksumMode, ConnHandle, ConnOptions, Duration, Instant, ListenOptions, ListenerId, TcpConfig,
    TcpEndpoint, TcpEvent,
};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpAddress, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, TcpTimestampRepr};

pub const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
pub const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
pub const SERVER_PORT: u16 = 80;

pub fn server_addr() -> SocketAddr {
    SocketAddr::new(SERVER_IP, SERVER_PORT)
}

pub fn client_addr(port: u16) -> SocketAddr {
    SocketAddr::new(CLIENT_IP, port)
}

/// xorshift64*: small, seeded, good enough for a simulator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// One direction of the simulated path.
#[derive(Debug, Clone)]
pub struct Link {
    pub delay: Duration,
    pub loss: f64,
    pub duplicate: f64,
    /// Probability a packet is held back by `reorder_delay`.
    pub reorder: f64,
    pub reorder_delay: Duration,
    /// Bits per second; `None` is infinitely fast.
    pub rate: Option<u64>,
    /// Packets queued for the rate limiter before tail drop.
    pub queue_limit: usize,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(5),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(3),
            rate: None,
            queue_limit: 1000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Packet {
    /// When it entered the link.
    pub at: Instant,
    pub table: u32,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub bytes: Vec<u8>,
}

impl Packet {
    pub fn repr(&self) -> TcpRepr<'_> {
        parse(&self.bytes, self.src, self.dst)
    }
}

/// Decides the fate of a packet: `false` drops it. Sees every packet, in order.
pub type Filter = Box<dyn FnMut(&Packet) -> bool>;

/// Extra delay for one packet (to reorder a chosen one).
pub type Delayer = Box<dyn FnMut(&Packet) -> Duration>;

struct Channel {
    link: Link,
    in_flight: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    slots: Vec<Option<Packet>>,
    busy_until: Instant,
    filter: Option<Filter>,
    delayer: Option<Delayer>,
    /// Copies of everything that entered the link, for inspection.
    log: Vec<Packet>,
    logging: bool,
    sent: u64,
    dropped: u64,
}

impl Channel {
    fn new(link: Link) -> Self {
        Self {
            link,
            in_flight: BinaryHeap::new(),
            slots: Vec::new(),
            busy_until: Instant::ZERO,
            filter: None,
            delayer: None,
            log: Vec::new(),
            logging: false,
            sent: 0,
            dropped: 0,
        }
    }

    fn push(&mut self, now: Instant, packet: Packet, rng: &mut Rng, seq: &mut u64) {
        self.sent += 1;
        let mut packet = packet;
        packet.at = now;
        if self.logging {
            self.log.push(packet.clone());
        }
        if let Some(filter) = &mut self.filter {
            if !filter(&packet) {
                self.dropped += 1;
                return;
            }
        }
        if rng.chance(self.link.loss) {
            self.dropped += 1;
            return;
        }
        let copies = if rng.chance(self.link.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut at = now + self.link.delay;
            if let Some(rate) = self.link.rate {
                let start = self.busy_until.max(now);
                let queued = (start - now).total_micros() * rate / 8 / 1_000_000;
                if queued as usize > self.link.queue_limit * 1500 {
                    self.dropped += 1;
                    continue;
                }
                let tx = Duration::from_micros(packet.bytes.len() as u64 * 8 * 1_000_000 / rate);
                self.busy_until = start + tx;
                at = self.busy_until + self.link.delay;
            }
            if rng.chance(self.link.reorder) {
                at += self.link.reorder_delay;
            }
            if let Some(delayer) = &mut self.delayer {
                at += delayer(&packet);
            }
            *seq += 1;
            self.slots.push(Some(packet.clone()));
            self.in_flight
                .push(Reverse((at, *seq, self.slots.len() - 1)));
        }
    }

    fn next_at(&self) -> Option<Instant> {
        self.in_flight.peek().map(|r| r.0.0)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Packet> {
        let Reverse((at, _, slot)) = *self.in_flight.peek()?;
        if at > now {
            return None;
        }
        self.in_flight.pop();
        let packet = self.slots[slot].take();
        if self.in_flight.is_empty() {
            self.slots.clear();
        }
        packet
    }
}

/// Two endpoints joined by two links.
pub struct Pair {
    pub client: TcpEndpoint,
    pub server: TcpEndpoint,
    pub now: Instant,
    to_server: Channel,
    to_client: Channel,
    pub rng: Rng,
    seq: u64,
    pub client_events: Vec<TcpEvent>,
    pub server_events: Vec<TcpEvent>,
    pub steps: u64,
    buf: Vec<u8>,
}

pub fn start_time() -> Instant {
    Instant::from_secs(10_000)
}

impl Pair {
    pub fn new(client: TcpConfig, server: TcpConfig, seed: u64) -> Self {
        let now = start_time();
        Self {
            client: TcpEndpoint::new(client, now),
            server: TcpEndpoint::new(server, now),
            now,
            to_server: Channel::new(Link::default()),
            to_client: Channel::new(Link::default()),
            rng: Rng::new(seed),
            seq: 0,
            client_events: Vec::new(),
            server_events: Vec::new(),
            steps: 0,
            buf: vec![0u8; 65_536 + 100],
        }
    }

    pub fn default_pair() -> Self {
        Self::new(TcpConfig::default(), TcpConfig::default(), 1)
    }

    pub fn set_links(&mut self, to_server: Link, to_client: Link) {
        self.to_server.link = to_server;
        self.to_client.link = to_client;
    }

    pub fn link_to_server(&mut self) -> &mut Link {
        &mut self.to_server.link
    }

    pub fn link_to_client(&mut self) -> &mut Link {
        &mut self.to_client.link
    }

    pub fn filter_to_server(&mut self, f: Option<Filter>) {
        self.to_server.filter = f;
    }

    pub fn delay_to_server(&mut self, f: Option<Delayer>) {
        self.to_server.delayer = f;
    }

    pub fn filter_to_client(&mut self, f: Option<Filter>) {
        self.to_client.filter = f;
    }

    pub fn log(&mut self, on: bool) {
        self.to_server.logging = on;
        self.to_client.logging = on;
    }

    pub fn sent_to_server(&self) -> &[Packet] {
        &self.to_server.log
    }

    pub fn sent_to_client(&self) -> &[Packet] {
        &self.to_client.log
    }

    pub fn clear_logs(&mut self) {
        self.to_server.log.clear();
        self.to_client.log.clear();
    }

    pub fn dropped(&self) -> (u64, u64) {
        (self.to_server.dropped, self.to_client.dropped)
    }

    /// Emits everything both endpoints want to send now, then collects their events.
    pub fn flush(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        for _ in 0..100_000 {
            let Some(t) = self.client.poll_transmit(self.now, &mut buf) else {
                break;
            };
            assert!(t.len <= buf.len());
            for packet in split_tso(t, &buf) {
                self.to_server
                    .push(self.now, packet, &mut self.rng, &mut self.seq);
            }
        }
        for _ in 0..100_000 {
            let Some(t) = self.server.poll_transmit(self.now, &mut buf) else {
                break;
            };
            for packet in split_tso(t, &buf) {
                self.to_client
                    .push(self.now, packet, &mut self.rng, &mut self.seq);
            }
        }
        self.buf = buf;
        while let Some(e) = self.client.poll_event() {
            self.client_events.push(e);
        }
        while let Some(e) = self.server.poll_event() {
            self.server_events.push(e);
        }
    }

    /// The next instant anything happens.
    pub fn next_time(&self) -> Option<Instant> {
        [
            self.to_server.next_at(),
            self.to_client.next_at(),
            self.client.poll_timeout(),
            self.server.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// One step: flush, jump the clock to the next event, deliver and fire what is due.
    /// Returns false when nothing is left to happen.
    pub fn step(&mut self) -> bool {
        self.steps += 1;
        self.flush();
        let Some(next) = self.next_time() else {
            return false;
        };
        if next > self.now {
            self.now = next;
        }
        while let Some(p) = self.to_server.pop_due(self.now) {
            self.server.handle_segment(
                self.now,
                p.table,
                p.src,
                p.dst,
                &p.bytes,
                ChecksumMode::Verify,
            );
        }
        while let Some(p) = self.to_client.pop_due(self.now) {
            self.client.handle_segment(
                self.now,
                p.table,
                p.src,
                p.dst,
                &p.bytes,
                ChecksumMode::Verify,
            );
        }
        if self.client.poll_timeout().is_some_and(|t| t <= self.now) {
            self.client.handle_timeout(self.now);
        }
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now);
        }
        self.flush();
        true
    }

    /// Steps until `done` holds; panics after `max_steps` (a livelock) .
    pub fn run_until(&mut self, max_steps: u64, mut done: impl FnMut(&mut Pair) -> bool) {
        for _ in 0..max_steps {
            if done(self) {
                return;
            }
            if !self.step() && !done(self) {
                panic!(
                    "simulation went idle before the condition held at {}",
                    self.now
                );
            }
        }
        assert!(
            done(self),
            "no progress after {max_steps} steps (livelock?) at {}",
            self.now
        );
    }

    /// Steps until both sides are idle except for long timers (deadline beyond `horizon`).
    pub fn settle(&mut self, horizon: Duration) {
        let limit = self.now + horizon;
        for _ in 0..100_000 {
            self.flush();
            match self.next_time() {
                Some(t) if t <= limit => {
                    self.step();
                }
                _ => return,
            }
        }
        panic!("did not settle");
    }

    /// Jumps the clock forward, running everything due on the way.
    pub fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        for _ in 0..1_000_000 {
            self.flush();
            match self.next_time() {
                Some(t) if t <= until => {
                    self.step();
                }
                _ => {
                    self.now = until;
                    self.client.handle_timeout(self.now);
                    self.server.handle_timeout(self.now);
                    self.flush();
                    return;
                }
            }
        }
        panic!("advance did not finish");
    }

    pub fn listen(&mut self, opts: ListenOptions) -> ListenerId {
        self.server.listen(0, server_addr(), opts).unwrap()
    }

    pub fn connect(&mut self, port: u16) -> ConnHandle {
        self.client
            .connect(
                self.now,
                0,
                client_addr(port),
                server_addr(),
                ConnOptions::default(),
            )
            .unwrap()
    }

    /// Listens, connects, runs the handshake and accepts: (client, server) handles.
    pub fn established(&mut self) -> (ConnHandle, ConnHandle) {
        let listener = self.listen(ListenOptions::default());
        let client = self.connect(40_000);
        let mut server = None;
        self.run_until(1000, |p| {
            if server.is_none() {
                server = p.server.accept(listener).unwrap();
            }
            server.is_some()
                && p.client_events
                    .contains(&TcpEvent::Connected { conn: client })
        });
        (client, server.unwrap())
    }

    pub fn client_saw(&self, event: TcpEvent) -> bool {
        self.client_events.contains(&event)
    }

    pub fn server_saw(&self, event: TcpEvent) -> bool {
        self.server_events.contains(&event)
    }
}

/// Splits a TSO burst the way a device would: same header, payload cut at `segment_size`,
/// sequence numbers advanced, checksums recomputed.
fn split_tso(t: hoststack_tcp::Transmit, buf: &[u8]) -> Vec<Packet> {
    let bytes = &buf[..t.len];
    let Some(size) = t.segment_size else {
        return vec![Packet {
            at: Instant::ZERO,
            table: t.table,
            src: t.src,
            dst: t.dst,
            bytes: bytes.to_vec(),
        }];
    };
    let packet = TcpPacket::new_checked(bytes).unwrap();
    let header_len = usize::from(packet.header_len());
    let payload = &bytes[header_len..];
    let mut out = Vec::new();
    let mut seq = packet.seq_number();
    let chunks: Vec<&[u8]> = payload.chunks(usize::from(size)).collect();
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let mut seg = bytes[..header_len].to_vec();
        seg.extend_from_slice(chunk);
        let mut p = TcpPacket::new_unchecked(&mut seg[..]);
        p.set_seq_number(seq);
        if i != last {
            p.set_fin(false);
            p.set_psh(false);
        }
        p.fill_checksum(&IpAddress::from(t.src), &IpAddress::from(t.dst));
        seq += chunk.len();
        out.push(Packet {
            at: Instant::ZERO,
            table: t.table,
            src: t.src,
            dst: t.dst,
            bytes: seg,
        });
    }
    out
}

/// Parses a segment the engine emitted.
pub fn parse(bytes: &[u8], src: IpAddr, dst: IpAddr) -> TcpRepr<'_> {
    let packet = TcpPacket::new_checked(bytes).expect("engine emitted a malformed segment");
    TcpRepr::parse(
        &packet,
        &IpAddress::from(src),
        &IpAddress::from(dst),
        &ChecksumCapabilities::default(),
    )
    .expect("engine emitted a segment that does not parse or has a bad checksum")
}

/// A hand-made segment, for playing a peer (or an attacker).
#[derive(Debug, Clone)]
pub struct Craft {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: Option<u32>,
    pub control: TcpControl,
    pub window: u16,
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub sack: [Option<(u32, u32)>; 3],
    pub timestamp: Option<(u32, u32)>,
    pub payload: Vec<u8>,
}

impl Craft {
    pub fn new(src: SocketAddr, dst: SocketAddr) -> Self {
        Self {
            src,
            dst,
            seq: 0,
            ack: None,
            control: TcpControl::None,
            window: 65535,
            mss: None,
            window_scale: None,
            sack_permitted: false,
            sack: [None; 3],
            timestamp: None,
            payload: Vec::new(),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let repr = TcpRepr {
            src_port: self.src.port(),
            dst_port: self.dst.port(),
            control: self.control,
            seq_number: TcpSeqNumber(self.seq as i32),
            ack_number: self.ack.map(|a| TcpSeqNumber(a as i32)),
            window_len: self.window,
            window_scale: self.window_scale,
            max_seg_size: self.mss,
            sack_permitted: self.sack_permitted,
            sack_ranges: self.sack,
            timestamp: self.timestamp.map(|(v, e)| TcpTimestampRepr::new(v, e)),
            payload: &self.payload,
        };
        let mut bytes = vec![0u8; repr.buffer_len()];
        let mut packet = TcpPacket::new_unchecked(&mut bytes[..]);
        repr.emit(
            &mut packet,
            &IpAddress::from(self.src.ip()),
            &IpAddress::from(self.dst.ip()),
            &ChecksumCapabilities::default(),
        );
        bytes
    }

    /// Feeds this segment to `ep` at `now`.
    pub fn send_to(&self, ep: &mut TcpEndpoint, now: Instant) {
        ep.handle_segment(
            now,
            0,
            self.src.ip(),
            self.dst.ip(),
            &self.bytes(),
            ChecksumMode::Verify,
        );
    }
}

/// Hands everything `from` wants to send now straight to `to`.
pub fn deliver(from: &mut TcpEndpoint, to: &mut TcpEndpoint, now: Instant, buf: &mut [u8]) {
    while let Some(t) = from.poll_transmit(now, buf) {
        to.handle_segment(
            now,
            t.table,
            t.src,
            t.dst,
            &buf[..t.len],
            ChecksumMode::Verify,
        );
    }
}

/// Everything `ep` wants to send now, parsed into owned (repr fields, payload) form.
pub fn drain(ep: &mut TcpEndpoint, now: Instant) -> Vec<Packet> {
    let mut buf = vec![0u8; 70_000];
    let mut out = Vec::new();
    while let Some(t) = ep.poll_transmit(now, &mut buf) {
        out.extend(split_tso(t, &buf));
    }
    out
}

pub fn events(ep: &mut TcpEndpoint) -> Vec<TcpEvent> {
    std::iter::from_fn(|| ep.poll_event()).collect()
}

/// Deterministic test data.
pub fn pattern(len: usize, salt: u64) -> Vec<u8> {
    let mut rng = Rng::new(salt);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// Moves `data` from `from` to `to` across the pair, byte-exact; returns the virtual time it
/// took. Panics if it needs more than `max_steps` steps.
pub fn transfer(
    pair: &mut Pair,
    from_client: bool,
    sender: ConnHandle,
    receiver: ConnHandle,
    data: &[u8],
    max_steps: u64,
) -> Duration {
    let start = pair.now;
    let mut sent = 0;
    let mut received = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 64 * 1024];
    pair.run_until(max_steps, |p| {
        let (tx, rx) = if from_client {
            (&mut p.client, &mut p.server)
        } else {
            (&mut p.server, &mut p.client)
        };
        if sent < data.len() {
            sent += tx.send(sender, &data[sent..]).unwrap();
        }
        loop {
            let n = rx.recv(receiver, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
        }
        received.len() >= data.len()
    });
    assert_eq!(received.len(), data.len());
    assert!(received == data, "data corrupted in transit");
    pair.now - start
}
