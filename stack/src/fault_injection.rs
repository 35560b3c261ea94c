//! Frame loss on purpose (`--inject-loss PCT`), through smoltcp's own
//! fault-injecting device, for testing retransmission timers.
//!
//! smoltcp's `FaultInjector` owns the device it wraps and gives it back only
//! by value, while a worker needs its [`StackDevice`] between polls (bursts,
//! flushes, counters). So the injector wraps a borrow of the device for the
//! length of one poll, seeded from a generator that lives across polls. Two
//! [`Tally`] layers, one on each side of the injector, count the frames it
//! swallowed in each direction.

use hoststack_drivers::PacketIo;
use smoltcp::iface::{Interface, PollResult, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, FaultInjector};
use smoltcp::time::Instant;

use crate::device::StackDevice;
use crate::error::{StackError, StackResult};

/// The largest Ethernet frame smoltcp's `FaultInjector` holds: it caps the
/// MTU it reports there and drops larger received frames.
pub const FAULT_INJECTOR_MAX_FRAME: usize = 1536;

/// Seeded random loss in both directions, applied poll by poll.
#[derive(Debug)]
pub struct FaultInjection {
    drop_pct: u8,
    rng: u64,
    rx_dropped: u64,
    tx_dropped: u64,
}

impl FaultInjection {
    /// Drops `drop_pct` % of the frames each way on a device whose IP MTU
    /// is `mtu`; refuses an MTU whose frames the injector cannot hold.
    pub fn new(drop_pct: u8, seed: u64, mtu: usize) -> StackResult<Self> {
        if drop_pct > 100 {
            return Err(StackError::Config(format!(
                "loss injection of {drop_pct} % is above 100 %"
            )));
        }
        if mtu + 14 > FAULT_INJECTOR_MAX_FRAME {
            return Err(StackError::Config(format!(
                "loss injection uses smoltcp's FaultInjector, which holds frames of at most \
                 {FAULT_INJECTOR_MAX_FRAME} bytes; the interface MTU {mtu} is too large \
                 (use an MTU of {} or less)",
                FAULT_INJECTOR_MAX_FRAME - 14
            )));
        }
        Ok(Self {
            drop_pct,
            // xorshift never leaves zero.
            rng: seed | 1,
            rx_dropped: 0,
            tx_dropped: 0,
        })
    }

    /// Whether to drop one frame that bypasses smoltcp (hoststack's TCP
    /// engine's), received (`rx`) or sent, from the same generator and into
    /// the same counters as smoltcp's frames.
    pub fn drop_frame(&mut self, rx: bool) -> bool {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let drop = (self.rng % 100) < u64::from(self.drop_pct);
        if drop {
            if rx {
                self.rx_dropped += 1;
            } else {
                self.tx_dropped += 1;
            }
        }
        drop
    }

    /// Frames dropped so far: (received, transmitted).
    pub fn dropped(&self) -> (u64, u64) {
        (self.rx_dropped, self.tx_dropped)
    }

    /// `Interface::poll` through the injector.
    pub fn poll<D: PacketIo>(
        &mut self,
        iface: &mut Interface,
        now: Instant,
        device: &mut StackDevice<D>,
        sockets: &mut SocketSet<'_>,
    ) -> PollResult {
        self.through(device, |dev| iface.poll(now, dev, sockets))
    }

    /// `Interface::poll_egress` through the injector.
    pub fn poll_egress<D: PacketIo>(
        &mut self,
        iface: &mut Interface,
        now: Instant,
        device: &mut StackDevice<D>,
        sockets: &mut SocketSet<'_>,
    ) -> PollResult {
        self.through(device, |dev| iface.poll_egress(now, dev, sockets))
    }

    /// Runs `f` with `device` behind a freshly seeded injector, then counts
    /// what it dropped.
    fn through<'a, D: PacketIo, R>(
        &mut self,
        device: &'a mut StackDevice<D>,
        f: impl FnOnce(&mut Injected<'a, D>) -> R,
    ) -> R {
        let mut injector = FaultInjector::new(Tally::new(Borrowed(device)), self.next_seed());
        injector.set_drop_chance(self.drop_pct);
        let mut dev = Tally::new(injector);
        let r = f(&mut dev);
        let (out_rx, out_tx) = (dev.rx, dev.tx);
        let inner = dev.inner.into_inner();
        // Received: taken from the device but never handed to smoltcp.
        // Sent: filled by smoltcp but never reaching the device.
        self.rx_dropped += inner.rx.saturating_sub(out_rx);
        self.tx_dropped += out_tx.saturating_sub(inner.tx);
        r
    }

    fn next_seed(&mut self) -> u32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        // smoltcp's xorshift32 would stay at zero (and drop everything).
        (self.rng >> 32) as u32 | 1
    }
}

/// The device stack smoltcp polls while loss is injected.
type Injected<'a, D> = Tally<FaultInjector<Tally<Borrowed<'a, D>>>>;

/// A worker's device lent to smoltcp for one poll.
struct Borrowed<'a, D: PacketIo>(&'a mut StackDevice<D>);

impl<D: PacketIo> Device for Borrowed<'_, D> {
    type RxToken<'b>
        = <StackDevice<D> as Device>::RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = <StackDevice<D> as Device>::TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        self.0.receive(now)
    }

    fn transmit(&mut self, now: Instant) -> Option<Self::TxToken<'_>> {
        self.0.transmit(now)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.0.capabilities()
    }
}

/// Counts the frames that pass through a device: received tokens handed
/// out (smoltcp consumes every one) and transmit tokens filled.
struct Tally<T> {
    inner: T,
    rx: u64,
    tx: u64,
}

impl<T> Tally<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            rx: 0,
            tx: 0,
        }
    }
}

struct TallyTx<'a, Tx> {
    token: Tx,
    filled: &'a mut u64,
}

impl<Tx: phy::TxToken> phy::TxToken for TallyTx<'_, Tx> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        *self.filled += 1;
        self.token.consume(len, f)
    }

    fn set_meta(&mut self, meta: phy::PacketMeta) {
        self.token.set_meta(meta);
    }
}

impl<T: Device> Device for Tally<T> {
    type RxToken<'a>
        = T::RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TallyTx<'a, T::TxToken<'a>>
    where
        Self: 'a;

    fn receive(&mut self, now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let (rx, tx) = self.inner.receive(now)?;
        self.rx += 1;
        Some((
            rx,
            TallyTx {
                token: tx,
                filled: &mut self.tx,
            },
        ))
    }

    fn transmit(&mut self, now: Instant) -> Option<Self::TxToken<'_>> {
        let tx = self.inner.transmit(now)?;
        Some(TallyTx {
            token: tx,
            filled: &mut self.tx,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mtu_whose_frames_the_injector_cannot_hold_is_refused() {
        assert!(FaultInjection::new(1, 7, 1500).is_ok());
        assert!(FaultInjection::new(1, 7, 1522).is_ok());
        let err = FaultInjection::new(1, 7, 3000).unwrap_err().to_string();
        assert!(err.contains("MTU 3000") && err.contains("1522"), "{err}");
        assert!(FaultInjection::new(101, 7, 1500).is_err());
    }

    #[test]
    fn seeds_are_never_zero() {
        let mut f = FaultInjection::new(1, 0, 1500).unwrap();
        for _ in 0..10_000 {
            assert_ne!(f.next_seed(), 0);
        }
    }
}
