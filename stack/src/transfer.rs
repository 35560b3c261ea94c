//! A TCP client that sends a seeded pseudo-random stream to an echo server
//! and verifies every byte that comes back: the "hoststack connects out"
//! half of the datapath tests and the demo's outbound leg.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpEndpoint;

use crate::error::StackResult;
use crate::service::{Service, ServiceContext, tcp_is_done};

/// A reproducible byte stream: the same seed gives the same bytes.
#[derive(Debug, Clone)]
pub struct PatternStream {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl PatternStream {
    /// Starts the stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            word: [0; 8],
            used: 8,
        }
    }

    /// Fills `out` with the next bytes of the stream.
    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.used == 8 {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                self.word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferReport {
    /// Bytes sent.
    pub sent: u64,
    /// Bytes received and verified.
    pub verified: u64,
    /// Time from connect to the last byte verified.
    pub elapsed: Duration,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Sends `total` bytes to `remote` and verifies the echo.
pub struct TcpTransferClient {
    remote: IpEndpoint,
    total: u64,
    tx_pattern: PatternStream,
    rx_pattern: PatternStream,
    handle: Option<SocketHandle>,
    sent: u64,
    verified: u64,
    started: Option<StdInstant>,
    buf: Vec<u8>,
    expect: Vec<u8>,
    result: Arc<Mutex<Option<TransferReport>>>,
    done: bool,
}

impl TcpTransferClient {
    /// A client for `total` bytes of stream `seed`; the report lands in
    /// `result` when it finishes.
    pub fn new(
        remote: IpEndpoint,
        total: u64,
        seed: u64,
        result: Arc<Mutex<Option<TransferReport>>>,
    ) -> Self {
        Self {
            remote,
            total,
            tx_pattern: PatternStream::new(seed),
            rx_pattern: PatternStream::new(seed),
            handle: None,
            sent: 0,
            verified: 0,
            started: None,
            buf: vec![0; 64 * 1024],
            expect: vec![0; 64 * 1024],
            result,
            done: false,
        }
    }

    fn finish(&mut self, error: Option<String>) {
        let report = TransferReport {
            sent: self.sent,
            verified: self.verified,
            elapsed: self.started.map_or(Duration::ZERO, |t| t.elapsed()),
            error,
        };
        *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
        self.done = true;
    }
}

impl Service for TcpTransferClient {
    fn name(&self) -> &str {
        "tcp-transfer"
    }

    fn start(&mut self, cx: &mut ServiceContext<'_>) -> StackResult<()> {
        self.handle = Some(cx.connect_tcp(self.remote)?);
        self.started = Some(StdInstant::now());
        Ok(())
    }

    fn poll(&mut self, cx: &mut ServiceContext<'_>) -> bool {
        if self.done {
            return false;
        }
        let Some(h) = self.handle else { return false };
        let s = cx.sockets.get_mut::<tcp::Socket<'_>>(h);
        let mut work = false;
        while self.sent < self.total && s.can_send() {
            let room = s.send_capacity() - s.send_queue();
            let n = room
                .min(self.buf.len())
                .min((self.total - self.sent) as usize);
            if n == 0 {
                break;
            }
            self.tx_pattern.fill(&mut self.buf[..n]);
            let _ = s.send_slice(&self.buf[..n]);
            self.sent += n as u64;
            work = true;
        }
        while s.can_recv() {
            let n = match s.recv_slice(&mut self.buf) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            work = true;
            self.rx_pattern.fill(&mut self.expect[..n]);
            if self.buf[..n] != self.expect[..n] {
                let at = self.buf[..n]
                    .iter()
                    .zip(&self.expect[..n])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                s.abort();
                let offset = self.verified + at as u64;
                self.finish(Some(format!("echo differs at byte {offset}")));
                return true;
            }
            self.verified += n as u64;
        }
        if self.verified >= self.total {
            s.close();
            if tcp_is_done(s)
                || s.state() == tcp::State::FinWait2
                || s.state() == tcp::State::Closing
            {
                self.finish(None);
            }
            return true;
        }
        if tcp_is_done(s)
            || (!s.is_active() && self.started.is_some() && s.state() == tcp::State::Closed)
        {
            let state = s.state();
            self.finish(Some(format!(
                "connection ended in {state} after {} of {} bytes",
                self.verified, self.total
            )));
            return true;
        }
        work
    }

    fn finished(&self) -> bool {
        self.done
    }

    fn stop(&mut self, cx: &mut ServiceContext<'_>) {
        if let Some(h) = self.handle.take() {
            let s = cx.sockets.get_mut::<tcp::Socket<'_>>(h);
            s.abort();
            if !self.done {
                self.finish(Some("stopped before the transfer finished".into()));
            }
        }
    }
}

/// How a UDP exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpReport {
    /// Datagrams sent (first tries).
    pub sent: u64,
    /// Datagrams that came back intact.
    pub echoed: u64,
    /// Datagrams resent after a timeout.
    pub retries: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Sends `count` datagrams of varied sizes to a UDP echo server one at a
/// time, each tagged with its sequence number, and checks that every one
/// comes back whole (datagram boundaries preserved).
pub struct UdpTransferClient {
    remote: IpEndpoint,
    count: u64,
    handle: Option<SocketHandle>,
    next: u64,
    outstanding: Option<(u64, StdInstant, u32)>,
    echoed: u64,
    retries: u64,
    pattern: PatternStream,
    payload: Vec<u8>,
    buf: Vec<u8>,
    result: Arc<Mutex<Option<UdpReport>>>,
    done: bool,
}

/// Datagram sizes cycled through (all fit one IPv6 packet at MTU 1500).
const UDP_SIZES: [usize; 6] = [8, 13, 64, 512, 1000, 1452];
const UDP_RETRY: Duration = Duration::from_millis(500);
const UDP_MAX_TRIES: u32 = 6;

impl UdpTransferClient {
    /// A client for `count` datagrams; the report lands in `result`.
    pub fn new(remote: IpEndpoint, count: u64, result: Arc<Mutex<Option<UdpReport>>>) -> Self {
        Self {
            remote,
            count,
            handle: None,
            next: 0,
            outstanding: None,
            echoed: 0,
            retries: 0,
            pattern: PatternStream::new(0x5eed),
            payload: Vec::new(),
            buf: vec![0; 65536],
            result,
            done: false,
        }
    }

    fn finish(&mut self, error: Option<String>) {
        let report = UdpReport {
            sent: self.next,
            echoed: self.echoed,
            retries: self.retries,
            error,
        };
        *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
        self.done = true;
    }
}

impl Service for UdpTransferClient {
    fn name(&self) -> &str {
        "udp-transfer"
    }

    fn start(&mut self, cx: &mut ServiceContext<'_>) -> StackResult<()> {
        let meta = || vec![smoltcp::socket::udp::PacketMetadata::EMPTY; 64];
        let rx = smoltcp::socket::udp::PacketBuffer::new(meta(), vec![0; 256 * 1024]);
        let tx = smoltcp::socket::udp::PacketBuffer::new(meta(), vec![0; 256 * 1024]);
        let mut s = smoltcp::socket::udp::Socket::new(rx, tx);
        let port = cx.ports.next(cx.sockets);
        s.bind(port).map_err(|e| {
            crate::error::StackError::Socket(format!("UDP bind to port {port}: {e}"))
        })?;
        self.handle = Some(cx.sockets.add(s));
        Ok(())
    }

    fn poll(&mut self, cx: &mut ServiceContext<'_>) -> bool {
        use smoltcp::socket::udp;
        if self.done {
            return false;
        }
        let Some(h) = self.handle else { return false };
        let s = cx.sockets.get_mut::<udp::Socket<'_>>(h);
        let mut work = false;
        while let Ok((len, meta)) = s.recv_slice(&mut self.buf) {
            work = true;
            let Some((seq, _, _)) = self.outstanding else {
                continue;
            };
            if meta.endpoint != self.remote || self.buf[..len] != self.payload[..] {
                // A late copy of an earlier datagram after a retry is fine;
                // anything else is an error.
                let tag = self
                    .buf
                    .get(..8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
                if tag.is_some_and(|t| t < seq) && meta.endpoint == self.remote {
                    continue;
                }
                self.finish(Some(format!(
                    "datagram {seq}: {len} bytes came back different"
                )));
                return true;
            }
            self.echoed += 1;
            self.outstanding = None;
        }
        match self.outstanding {
            None if self.next < self.count => {
                let seq = self.next;
                let size = UDP_SIZES[(seq as usize) % UDP_SIZES.len()];
                self.payload.resize(size, 0);
                self.pattern.fill(&mut self.payload);
                self.payload[..8].copy_from_slice(&seq.to_le_bytes());
                if s.send_slice(&self.payload, self.remote).is_ok() {
                    self.outstanding = Some((seq, StdInstant::now(), 1));
                    self.next += 1;
                    work = true;
                }
            }
            None => {
                self.finish(None);
                return true;
            }
            Some((seq, at, tries)) if at.elapsed() > UDP_RETRY => {
                if tries >= UDP_MAX_TRIES {
                    self.finish(Some(format!(
                        "datagram {seq} never came back after {tries} tries"
                    )));
                    return true;
                }
                if s.send_slice(&self.payload, self.remote).is_ok() {
                    self.retries += 1;
                    self.outstanding = Some((seq, StdInstant::now(), tries + 1));
                }
            }
            Some(_) => {}
        }
        work
    }

    fn finished(&self) -> bool {
        self.done
    }

    fn stop(&mut self, cx: &mut ServiceContext<'_>) {
        if let Some(h) = self.handle.take() {
            cx.sockets.remove(h);
        }
        if !self.done {
            self.finish(Some("stopped before the exchange finished".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_in_any_chunking() {
        let mut a = PatternStream::new(42);
        let mut whole = vec![0u8; 1000];
        a.fill(&mut whole);
        let mut b = PatternStream::new(42);
        let mut pieces = Vec::new();
        for len in [1, 7, 8, 9, 100, 875] {
            let mut p = vec![0u8; len];
            b.fill(&mut p);
            pieces.extend_from_slice(&p);
        }
        assert_eq!(whole, pieces);
        let mut c = PatternStream::new(43);
        let mut other = vec![0u8; 1000];
        c.fill(&mut other);
        assert_ne!(whole, other);
    }
}
