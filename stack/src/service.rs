//! What runs on a worker above smoltcp: a [`Service`] gets the worker's
//! interface and sockets once per loop iteration.
//!
//! Services are how the built-in echo servers and transfer clients run
//! directly on the stack; the session layer drives its transports through
//! the same hooks.

use smoltcp::iface::{Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::IpEndpoint;

use crate::config::TcpTuning;
use crate::error::{StackError, StackResult};
use crate::tcp_listener::new_tcp_socket;

/// The worker state a service may use during one call.
pub struct ServiceContext<'a> {
    /// Current time.
    pub now: Instant,
    /// The worker's interface.
    pub iface: &'a mut Interface,
    /// The worker's sockets.
    pub sockets: &'a mut SocketSet<'static>,
    /// Index of the worker (== its queue).
    pub worker: usize,
    /// TCP tuning for new sockets.
    pub tuning: &'a TcpTuning,
    /// Ephemeral local ports for outgoing connections.
    pub ports: &'a mut EphemeralPorts,
}

impl ServiceContext<'_> {
    /// Opens a TCP connection to `remote` from an ephemeral port.
    pub fn connect_tcp(&mut self, remote: IpEndpoint) -> StackResult<smoltcp::iface::SocketHandle> {
        let mut s = new_tcp_socket(self.tuning);
        let port = self.ports.next(self.sockets);
        s.connect(self.iface.context(), remote, port)
            .map_err(|e| StackError::Socket(format!("connect to {remote}: {e}")))?;
        Ok(self.sockets.add(s))
    }
}

/// Something that runs on a worker.
pub trait Service: Send {
    /// Short name for logs.
    fn name(&self) -> &str;

    /// Called once on the worker before the first packet.
    fn start(&mut self, cx: &mut ServiceContext<'_>) -> StackResult<()>;

    /// TCP ports this service listens on, for the SYN pre-scan.
    fn listen_ports(&self) -> Vec<u16> {
        Vec::new()
    }

    /// Called before a burst is processed with the number of SYNs found in
    /// it per port (as listed by [`listen_ports`](Self::listen_ports)).
    fn before_ingress(
        &mut self,
        _syns: &[(u16, usize)],
        _cx: &mut ServiceContext<'_>,
    ) -> StackResult<()> {
        Ok(())
    }

    /// Called after every smoltcp poll; returns true when it did any work.
    fn poll(&mut self, cx: &mut ServiceContext<'_>) -> bool;

    /// True when the service has nothing more to do (a finished client).
    fn finished(&self) -> bool {
        false
    }

    /// Called once when the worker stops: close sockets.
    fn stop(&mut self, cx: &mut ServiceContext<'_>);
}

/// Ephemeral TCP/UDP source ports of one worker.
#[derive(Debug)]
pub struct EphemeralPorts {
    state: u64,
}

/// The IANA dynamic range.
const EPHEMERAL_LOW: u16 = 49152;

impl EphemeralPorts {
    /// Seeds the choice.
    pub fn new(seed: u64) -> Self {
        Self { state: seed | 1 }
    }

    /// A port in 49152..=65535 no TCP socket of `sockets` uses locally.
    pub fn next(&mut self, sockets: &SocketSet<'static>) -> u16 {
        loop {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let port =
                EPHEMERAL_LOW + (self.state % u64::from(u16::MAX - EPHEMERAL_LOW + 1)) as u16;
            let used = sockets.iter().any(|(_, s)| match s {
                smoltcp::socket::Socket::Tcp(t) => {
                    t.local_endpoint().map(|e| e.port) == Some(port)
                        || t.listen_endpoint().port == port
                }
                _ => false,
            });
            if !used {
                return port;
            }
        }
    }
}

/// Whether a TCP socket is finished and can be removed.
pub fn tcp_is_done(s: &tcp::Socket<'_>) -> bool {
    matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait)
}
