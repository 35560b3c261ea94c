//! Initial sequence numbers (RFC 6528) and SYN cookies (RFC 4987).
//!
//! An ISN is a 4 µs clock plus a keyed hash of the 4-tuple, so each flow gets its own
//! sequence space that still advances over time. A SYN cookie is an ISN that carries, in a
//! form only this endpoint can check, what a SYN-RECEIVED entry would have remembered: the
//! MSS (as an index into a small table) and, when the peer sent timestamps, its window scale
//! and SACK permission in the low bits of our TSval, as Linux does. The cookie's top byte is
//! a 64-second counter, so cookies expire after two counter ticks.

use core::net::SocketAddr;

use smoltcp::time::Instant;

use crate::secret::SipKey;
use crate::seqnum::SeqNum;

/// MSS values a cookie can carry for IPv4 (the common sizes, smallest first).
const MSS_TABLE_V4: [u16; 4] = [536, 1300, 1440, 1460];
/// The same for IPv6.
const MSS_TABLE_V6: [u16; 4] = [1220, 1340, 1400, 1440];
/// Cookie counter ticks this many seconds.
const COUNTER_SECS: i64 = 64;
/// A cookie older than this many counter ticks is refused.
const MAX_AGE: u32 = 2;
const LOW_MASK: u32 = 0x00FF_FFFF;
/// Low TSval bits used for options.
const TS_OPT_BITS: u32 = 6;
const TS_OPT_MASK: u32 = (1 << TS_OPT_BITS) - 1;
const TS_WSCALE_NONE: u32 = 0xF;
const TS_SACK: u32 = 1 << 4;

/// Makes ISNs, timestamp offsets and cookies from one secret.
#[derive(Clone, Debug)]
pub(crate) struct SequenceSecret {
    key: SipKey,
}

fn counter(now: Instant) -> u32 {
    (now.total_millis().max(0) / 1000 / COUNTER_SECS) as u32
}

fn mss_table(local: SocketAddr) -> &'static [u16; 4] {
    if local.is_ipv4() {
        &MSS_TABLE_V4
    } else {
        &MSS_TABLE_V6
    }
}

impl SequenceSecret {
    pub(crate) fn new(seed: u128) -> Self {
        Self {
            key: SipKey::new(seed as u64, (seed >> 64) as u64),
        }
    }

    /// RFC 6528: M + F(localip, localport, remoteip, remoteport, secretkey).
    pub(crate) fn isn(&self, now: Instant, local: SocketAddr, remote: SocketAddr) -> SeqNum {
        let clock = (now.total_micros().max(0) / 4) as u32;
        SeqNum::new(clock.wrapping_add(self.key.hash_flow(local, remote, 0) as u32))
    }

    /// Per-flow offset added to our timestamp clock, so TSvals leak no uptime; deterministic so
    /// that a cookie's TSval and the connection it becomes agree.
    pub(crate) fn ts_offset(&self, local: SocketAddr, remote: SocketAddr) -> u32 {
        self.key.hash_flow(local, remote, 1) as u32
    }

    /// Where the ephemeral port search starts for this local address and remote.
    pub(crate) fn port_offset(&self, local: SocketAddr, remote: SocketAddr) -> u32 {
        self.key.hash_flow(local, remote, 4) as u32
    }

    fn cookie_hashes(&self, local: SocketAddr, remote: SocketAddr, count: u32) -> (u32, u32) {
        let h1 = self.key.hash_flow(local, remote, 2) as u32;
        let h2 = self.key.hash_flow(local, remote, 3 ^ (count << 8)) as u32;
        (h1, h2)
    }

    /// A cookie ISN for a SYN with `peer_isn` offering `peer_mss`; returns it with the MSS
    /// it encodes (the largest table entry not above what the peer offered).
    pub(crate) fn make_cookie(
        &self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        peer_isn: SeqNum,
        peer_mss: u16,
    ) -> (SeqNum, u16) {
        let table = mss_table(local);
        let index = table.iter().rposition(|&m| m <= peer_mss).unwrap_or(0);
        let count = counter(now);
        let (h1, h2) = self.cookie_hashes(local, remote, count);
        let cookie = h1
            .wrapping_add(peer_isn.get())
            .wrapping_add((count & 0xFF) << 24)
            .wrapping_add(h2.wrapping_add(index as u32) & LOW_MASK);
        (SeqNum::new(cookie), table[index])
    }

    /// Checks the cookie echoed in an ACK (`ack - 1`) for a flow whose SYN carried
    /// `peer_isn` (`seq - 1`); returns the MSS it carried.
    pub(crate) fn check_cookie(
        &self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        peer_isn: SeqNum,
        cookie: SeqNum,
    ) -> Option<u16> {
        let now_count = counter(now);
        let h1 = self.key.hash_flow(local, remote, 2) as u32;
        let value = cookie.get().wrapping_sub(h1).wrapping_sub(peer_isn.get());
        let age = (now_count & 0xFF).wrapping_sub(value >> 24) & 0xFF;
        if age > MAX_AGE {
            return None;
        }
        let count = now_count.wrapping_sub(age);
        let (_, h2) = self.cookie_hashes(local, remote, count);
        let index = (value & LOW_MASK).wrapping_sub(h2) & LOW_MASK;
        mss_table(local).get(index as usize).copied()
    }
}

/// Our TSval for a cookie SYN-ACK: the clock with its low bits replaced by the options, never
/// ahead of the clock (so the connection's later TSvals stay monotonic).
pub(crate) fn cookie_tsval(ts_now: u32, window_scale: Option<u8>, sack_permitted: bool) -> u32 {
    let mut opts = window_scale.map_or(TS_WSCALE_NONE, |w| u32::from(w.min(14)));
    if sack_permitted {
        opts |= TS_SACK;
    }
    let tsval = (ts_now & !TS_OPT_MASK) | opts;
    if SeqNum::new(tsval).after(SeqNum::new(ts_now)) {
        tsval.wrapping_sub(TS_OPT_MASK + 1)
    } else {
        tsval
    }
}

/// Reads the options back from the TSecr of the returning ACK.
pub(crate) fn cookie_ts_options(tsecr: u32) -> (Option<u8>, bool) {
    let wscale = tsecr & 0xF;
    let window_scale = (wscale != TS_WSCALE_NONE).then_some(wscale.min(14) as u8);
    (window_scale, tsecr & TS_SACK != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> (SocketAddr, SocketAddr) {
        (
            "192.0.2.1:80".parse().unwrap(),
            "198.51.100.7:40000".parse().unwrap(),
        )
    }

    #[test]
    fn isn_depends_on_the_flow_and_advances_with_time() {
        let secret = SequenceSecret::new(42);
        let (local, remote) = addrs();
        let other: SocketAddr = "198.51.100.7:40001".parse().unwrap();
        let t = Instant::from_secs(5);
        assert_ne!(secret.isn(t, local, remote), secret.isn(t, local, other));
        let later = secret.isn(Instant::from_millis(5_004), local, remote);
        assert_eq!(later.diff(secret.isn(t, local, remote)), 1000);
        assert_ne!(
            SequenceSecret::new(43).isn(t, local, remote),
            secret.isn(t, local, remote)
        );
    }

    #[test]
    fn cookie_round_trips_its_mss() {
        let secret = SequenceSecret::new(7);
        let (local, remote) = addrs();
        let now = Instant::from_secs(1000);
        for (offered, want) in [(1460, 1460), (1400, 1300), (9000, 1460), (100, 536)] {
            let peer_isn = SeqNum::new(0xdead_beef);
            let (cookie, mss) = secret.make_cookie(now, local, remote, peer_isn, offered);
            assert_eq!(mss, want);
            assert_eq!(
                secret.check_cookie(now, local, remote, peer_isn, cookie),
                Some(want)
            );
        }
    }

    #[test]
    fn cookie_is_refused_when_old_forged_or_for_another_flow() {
        let secret = SequenceSecret::new(7);
        let (local, remote) = addrs();
        let now = Instant::from_secs(1000);
        let peer_isn = SeqNum::new(12345);
        let (cookie, _) = secret.make_cookie(now, local, remote, peer_isn, 1460);
        let later = now + smoltcp::time::Duration::from_secs(100);
        assert!(
            secret
                .check_cookie(later, local, remote, peer_isn, cookie)
                .is_some()
        );
        let much_later = now + smoltcp::time::Duration::from_secs(300);
        assert!(
            secret
                .check_cookie(much_later, local, remote, peer_isn, cookie)
                .is_none()
        );
        assert!(
            secret
                .check_cookie(now, local, remote, peer_isn, cookie + 1)
                .is_none()
        );
        let other: SocketAddr = "198.51.100.8:40000".parse().unwrap();
        assert!(
            secret
                .check_cookie(now, local, other, peer_isn, cookie)
                .is_none()
        );
        assert!(
            SequenceSecret::new(8)
                .check_cookie(now, local, remote, peer_isn, cookie)
                .is_none()
        );
    }

    #[test]
    fn timestamp_carries_window_scale_and_sack() {
        for ts_now in [0u32, 5, 0x40, 0xFFFF_FFFF, 1234567] {
            for ws in [None, Some(0), Some(7), Some(14)] {
                for sack in [false, true] {
                    let tsval = cookie_tsval(ts_now, ws, sack);
                    assert!(SeqNum::new(tsval).before_eq(SeqNum::new(ts_now)));
                    assert_eq!(cookie_ts_options(tsval), (ws, sack));
                }
            }
        }
    }
}
