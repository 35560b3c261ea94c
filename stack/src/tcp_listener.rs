//! A TCP listen backlog on top of smoltcp.
//!
//! smoltcp has one socket per connection and no backlog: a SYN that finds
//! no socket in `Listen` on its port is answered with a RST. A
//! [`TcpListenerPool`] keeps a set of listening sockets on one port, hands
//! over the ones that left `Listen` (accepted connections), and is topped up
//! before each burst is processed by the number of SYNs for its port found
//! in that burst ([`count_syns`]), so a flood of concurrent connects never
//! meets an empty pool.

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::IpListenEndpoint;

use crate::config::TcpTuning;
use crate::error::{StackError, StackResult};

/// Creates a TCP socket with the stack's tuning.
pub fn new_tcp_socket(tuning: &TcpTuning) -> tcp::Socket<'static> {
    let rx = tcp::SocketBuffer::new(vec![0u8; tuning.buffer]);
    let tx = tcp::SocketBuffer::new(vec![0u8; tuning.buffer]);
    let mut s = tcp::Socket::new(rx, tx);
    s.set_nagle_enabled(tuning.nagle);
    s.set_ack_delay(
        tuning
            .ack_delay
            .map(|d| smoltcp::time::Duration::from_micros(d.as_micros() as u64)),
    );
    s
}

/// Closed TCP sockets kept for reuse. A new connection takes one instead of
/// allocating two fresh buffers, which at `TcpTuning::buffer` (1 MiB by
/// default) means an mmap, page faults and an munmap each; smoltcp's
/// `listen` and `connect` reset everything but the buffers and the tuning.
#[derive(Debug, Default)]
pub struct SpareTcpSockets {
    sockets: Vec<tcp::Socket<'static>>,
}

impl SpareTcpSockets {
    /// Sockets kept at most (each holds two buffers).
    pub const MAX: usize = 16;

    /// A closed socket with the stack's tuning: a spare one, or a new one.
    pub fn take(&mut self, tuning: &TcpTuning) -> tcp::Socket<'static> {
        self.sockets.pop().unwrap_or_else(|| new_tcp_socket(tuning))
    }

    /// Removes `h` from the set and keeps it if it is a TCP socket and
    /// there is room.
    pub fn recycle(&mut self, sockets: &mut SocketSet<'static>, h: SocketHandle) {
        if let smoltcp::socket::Socket::Tcp(mut s) = sockets.remove(h) {
            if self.sockets.len() < Self::MAX {
                // Out of the set nothing it would still send can leave.
                s.abort();
                self.sockets.push(s);
            }
        }
    }

    /// Sockets waiting for reuse.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

/// Listening sockets on one endpoint.
#[derive(Debug)]
pub struct TcpListenerPool {
    endpoint: IpListenEndpoint,
    listening: Vec<SocketHandle>,
    spare: usize,
    max: usize,
}

impl TcpListenerPool {
    /// Opens `tuning.listen_spare` listening sockets on `endpoint`.
    pub fn open(
        endpoint: IpListenEndpoint,
        tuning: &TcpTuning,
        sockets: &mut SocketSet<'static>,
        spares: &mut SpareTcpSockets,
    ) -> StackResult<Self> {
        if endpoint.port == 0 {
            return Err(StackError::Socket("cannot listen on port 0".into()));
        }
        let mut pool = Self {
            endpoint,
            listening: Vec::new(),
            spare: tuning.listen_spare,
            max: tuning.listen_max,
        };
        pool.top_up(0, tuning, sockets, spares)?;
        Ok(pool)
    }

    /// The port listened on.
    pub fn port(&self) -> u16 {
        self.endpoint.port
    }

    /// Sockets currently in `Listen`.
    pub fn listening(&self) -> usize {
        self.listening.len()
    }

    /// Makes sure `incoming_syns` SYNs plus the spare find a listening
    /// socket, up to the pool's maximum.
    pub fn top_up(
        &mut self,
        incoming_syns: usize,
        tuning: &TcpTuning,
        sockets: &mut SocketSet<'static>,
        spares: &mut SpareTcpSockets,
    ) -> StackResult<()> {
        let want = (incoming_syns + self.spare).min(self.max);
        while self.listening.len() < want {
            let mut s = spares.take(tuning);
            s.listen(self.endpoint).map_err(|e| {
                StackError::Socket(format!("listen on port {}: {e}", self.endpoint.port))
            })?;
            self.listening.push(sockets.add(s));
        }
        Ok(())
    }

    /// Moves sockets that left `Listen` (a SYN arrived) to `accepted`.
    pub fn take_accepted(
        &mut self,
        sockets: &mut SocketSet<'static>,
        accepted: &mut Vec<SocketHandle>,
    ) {
        self.listening.retain(|&h| {
            let s = sockets.get::<tcp::Socket<'_>>(h);
            if s.state() == tcp::State::Listen {
                true
            } else {
                accepted.push(h);
                false
            }
        });
    }

    /// Closes every listening socket.
    pub fn close(&mut self, sockets: &mut SocketSet<'static>, spares: &mut SpareTcpSockets) {
        for h in self.listening.drain(..) {
            spares.recycle(sockets, h);
        }
    }
}

/// Counts TCP SYNs (without ACK) per destination port in a burst of
/// Ethernet frames. `counts` holds `(port, n)` for the ports of interest;
/// frames that are not well-formed are skipped (the stack drops them).
pub fn count_syns<'a>(frames: impl Iterator<Item = &'a [u8]>, counts: &mut [(u16, usize)]) {
    if counts.is_empty() {
        return;
    }
    for f in frames {
        let Some(port) = syn_port(f) else { continue };
        if let Some(c) = counts.iter_mut().find(|(p, _)| *p == port) {
            c.1 += 1;
        }
    }
}

/// The destination port of a TCP SYN (no ACK), or None.
fn syn_port(f: &[u8]) -> Option<u16> {
    let ethertype = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    let l4 = match ethertype {
        0x0800 => {
            let ihl = usize::from(f.get(14)? & 0x0f) * 4;
            if *f.get(14 + 9)? != 6 {
                return None;
            }
            14 + ihl
        }
        0x86dd => {
            if *f.get(14 + 6)? != 6 {
                return None;
            }
            14 + 40
        }
        _ => return None,
    };
    let flags = *f.get(l4 + 13)?;
    if flags & 0x02 == 0 || flags & 0x10 != 0 {
        return None;
    }
    Some(u16::from_be_bytes([*f.get(l4 + 2)?, *f.get(l4 + 3)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_frame(flags: u8, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12] = 0x08;
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[34 + 2..34 + 4].copy_from_slice(&dport.to_be_bytes());
        f[34 + 13] = flags;
        f
    }

    #[test]
    fn only_bare_syns_on_watched_ports_are_counted() {
        let frames = [
            tcp_frame(0x02, 7),
            tcp_frame(0x02, 7),
            tcp_frame(0x12, 7), // SYN-ACK
            tcp_frame(0x10, 7), // ACK
            tcp_frame(0x02, 80),
            vec![0u8; 5], // truncated
        ];
        let mut counts = [(7u16, 0usize)];
        count_syns(frames.iter().map(|f| f.as_slice()), &mut counts);
        assert_eq!(counts, [(7, 2)]);
    }

    #[test]
    fn pool_tops_up_to_syns_plus_spare_and_caps_at_max() {
        let tuning = TcpTuning {
            buffer: 4096,
            listen_spare: 2,
            listen_max: 5,
            ..Default::default()
        };
        let mut sockets = SocketSet::new(Vec::new());
        let mut spares = SpareTcpSockets::default();
        let mut pool = TcpListenerPool::open(
            IpListenEndpoint {
                addr: None,
                port: 7,
            },
            &tuning,
            &mut sockets,
            &mut spares,
        )
        .unwrap();
        assert_eq!(pool.listening(), 2);
        pool.top_up(2, &tuning, &mut sockets, &mut spares).unwrap();
        assert_eq!(pool.listening(), 4);
        pool.top_up(100, &tuning, &mut sockets, &mut spares)
            .unwrap();
        assert_eq!(pool.listening(), 5);
        pool.close(&mut sockets, &mut spares);
        assert_eq!(sockets.iter().count(), 0);
        assert_eq!(spares.len(), 5, "closed listeners are kept for reuse");
    }

    #[test]
    fn spare_sockets_are_reused_reset_and_capped() {
        let tuning = TcpTuning {
            buffer: 4096,
            listen_spare: 1,
            listen_max: 64,
            ..Default::default()
        };
        let ep = |port| IpListenEndpoint { addr: None, port };
        let mut sockets = SocketSet::new(Vec::new());
        let mut spares = SpareTcpSockets::default();
        let mut pool = TcpListenerPool::open(ep(7), &tuning, &mut sockets, &mut spares).unwrap();
        pool.close(&mut sockets, &mut spares);
        assert_eq!(spares.len(), 1);
        // The spare comes back listening on another port, in a fresh state.
        let mut pool = TcpListenerPool::open(ep(9), &tuning, &mut sockets, &mut spares).unwrap();
        assert!(spares.is_empty());
        let (_, s) = sockets.iter().next().unwrap();
        let smoltcp::socket::Socket::Tcp(t) = s else {
            panic!("not a TCP socket")
        };
        assert_eq!(t.state(), tcp::State::Listen);
        assert_eq!(t.listen_endpoint().port, 9);
        assert_eq!(t.recv_capacity(), 4096);
        pool.top_up(60, &tuning, &mut sockets, &mut spares).unwrap();
        pool.close(&mut sockets, &mut spares);
        assert_eq!(spares.len(), SpareTcpSockets::MAX);
    }

    #[test]
    fn port_zero_is_refused() {
        let mut sockets = SocketSet::new(Vec::new());
        let err = TcpListenerPool::open(
            IpListenEndpoint {
                addr: None,
                port: 0,
            },
            &TcpTuning::default(),
            &mut sockets,
            &mut SpareTcpSockets::default(),
        );
        assert!(err.is_err());
    }
}
