//! TCP and UDP echo servers running directly on a worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::IpListenEndpoint;

use crate::error::{StackError, StackResult};
use crate::service::{Service, ServiceContext, tcp_is_done};
use crate::tcp_listener::TcpListenerPool;

/// Counters of an echo server, shared with whoever wants to read them.
#[derive(Debug, Default)]
pub struct EchoStats {
    /// Connections accepted (TCP) or datagrams received (UDP).
    pub accepted: AtomicU64,
    /// Connections finished (TCP).
    pub closed: AtomicU64,
    /// Bytes echoed.
    pub bytes: AtomicU64,
    /// Datagrams dropped because the send buffer was full (UDP).
    pub dropped: AtomicU64,
}

/// A TCP echo server on one port of one worker.
pub struct TcpEchoServer {
    port: u16,
    pool: Option<TcpListenerPool>,
    conns: Vec<SocketHandle>,
    scratch: Vec<SocketHandle>,
    buf: Vec<u8>,
    stats: Arc<EchoStats>,
}

impl TcpEchoServer {
    /// An echo server for `port`, counting into `stats`.
    pub fn new(port: u16, stats: Arc<EchoStats>) -> Self {
        Self {
            port,
            pool: None,
            conns: Vec::new(),
            scratch: Vec::new(),
            buf: vec![0; 64 * 1024],
            stats,
        }
    }
}

/// Moves what `s` received into its send buffer as far as both allow;
/// returns the bytes moved.
fn echo_tcp(s: &mut tcp::Socket<'_>, buf: &mut [u8]) -> usize {
    let mut moved = 0;
    while s.can_recv() && s.can_send() {
        let room = s.send_capacity() - s.send_queue();
        let want = room.min(buf.len());
        let n = match s.recv_slice(&mut buf[..want]) {
            Ok(n) if n > 0 => n,
            _ => break,
        };
        // `room` bytes are free, so the whole slice fits.
        let _ = s.send_slice(&buf[..n]);
        moved += n;
    }
    // The peer finished sending and everything it sent is echoed.
    if s.state() == tcp::State::CloseWait && s.recv_queue() == 0 {
        s.close();
    }
    moved
}

impl Service for TcpEchoServer {
    fn name(&self) -> &str {
        "tcp-echo"
    }

    fn start(&mut self, cx: &mut ServiceContext<'_>) -> StackResult<()> {
        let ep = IpListenEndpoint {
            addr: None,
            port: self.port,
        };
        self.pool = Some(TcpListenerPool::open(ep, cx.tuning, cx.sockets)?);
        Ok(())
    }

    fn listen_ports(&self) -> Vec<u16> {
        vec![self.port]
    }

    fn before_ingress(
        &mut self,
        syns: &[(u16, usize)],
        cx: &mut ServiceContext<'_>,
    ) -> StackResult<()> {
        let n = syns
            .iter()
            .find(|(p, _)| *p == self.port)
            .map_or(0, |(_, n)| *n);
        match &mut self.pool {
            Some(pool) => pool.top_up(n, cx.tuning, cx.sockets),
            None => Err(StackError::Socket("echo server not started".into())),
        }
    }

    fn poll(&mut self, cx: &mut ServiceContext<'_>) -> bool {
        let Some(pool) = &mut self.pool else {
            return false;
        };
        self.scratch.clear();
        pool.take_accepted(cx.sockets, &mut self.scratch);
        let accepted = self.scratch.len();
        if accepted > 0 {
            self.stats.accepted.fetch_add(accepted as u64, Relaxed);
            self.conns.extend_from_slice(&self.scratch);
            // Keep the pool ready for the next SYNs that arrive.
            let _ = pool.top_up(0, cx.tuning, cx.sockets);
        }
        let mut moved = 0;
        let mut closed = 0;
        let buf = &mut self.buf;
        self.conns.retain(|&h| {
            let s = cx.sockets.get_mut::<tcp::Socket<'_>>(h);
            moved += echo_tcp(s, buf);
            if tcp_is_done(s) {
                cx.sockets.remove(h);
                closed += 1;
                false
            } else {
                true
            }
        });
        if moved > 0 {
            self.stats.bytes.fetch_add(moved as u64, Relaxed);
        }
        if closed > 0 {
            self.stats.closed.fetch_add(closed, Relaxed);
        }
        accepted > 0 || moved > 0 || closed > 0
    }

    fn stop(&mut self, cx: &mut ServiceContext<'_>) {
        if let Some(pool) = &mut self.pool {
            pool.close(cx.sockets);
        }
        for h in self.conns.drain(..) {
            cx.sockets.get_mut::<tcp::Socket<'_>>(h).abort();
        }
    }
}

/// A UDP echo server on one port of one worker.
pub struct UdpEchoServer {
    port: u16,
    handle: Option<SocketHandle>,
    buf: Vec<u8>,
    stats: Arc<EchoStats>,
}

impl UdpEchoServer {
    /// An echo server for `port`, counting into `stats`.
    pub fn new(port: u16, stats: Arc<EchoStats>) -> Self {
        Self {
            port,
            handle: None,
            buf: vec![0; 65536],
            stats,
        }
    }
}

impl Service for UdpEchoServer {
    fn name(&self) -> &str {
        "udp-echo"
    }

    fn start(&mut self, cx: &mut ServiceContext<'_>) -> StackResult<()> {
        let meta = || vec![udp::PacketMetadata::EMPTY; 1024];
        let rx = udp::PacketBuffer::new(meta(), vec![0; 1 << 20]);
        let tx = udp::PacketBuffer::new(meta(), vec![0; 1 << 20]);
        let mut s = udp::Socket::new(rx, tx);
        s.bind(self.port)
            .map_err(|e| StackError::Socket(format!("UDP bind to port {}: {e}", self.port)))?;
        self.handle = Some(cx.sockets.add(s));
        Ok(())
    }

    fn poll(&mut self, cx: &mut ServiceContext<'_>) -> bool {
        let Some(h) = self.handle else { return false };
        let s = cx.sockets.get_mut::<udp::Socket<'_>>(h);
        let (mut n, mut bytes, mut dropped) = (0u64, 0u64, 0u64);
        while s.can_send() {
            let Ok((len, meta)) = s.recv_slice(&mut self.buf) else {
                break;
            };
            n += 1;
            let reply = udp::UdpMetadata {
                endpoint: meta.endpoint,
                local_address: meta.local_address,
                meta: Default::default(),
            };
            match s.send_slice(&self.buf[..len], reply) {
                Ok(()) => bytes += len as u64,
                Err(_) => dropped += 1,
            }
        }
        self.stats.accepted.fetch_add(n, Relaxed);
        self.stats.bytes.fetch_add(bytes, Relaxed);
        self.stats.dropped.fetch_add(dropped, Relaxed);
        n > 0
    }

    fn stop(&mut self, cx: &mut ServiceContext<'_>) {
        if let Some(h) = self.handle.take() {
            cx.sockets.remove(h);
        }
    }
}
