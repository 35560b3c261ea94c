//! Sequence numbers as a type.
//!
//! TCP sequence space is a 32-bit circle (RFC 9293 §3.4): "before" and "after" are defined
//! by the sign of the wrapping difference, so two numbers more than 2^31 apart have no useful
//! order. Keeping them in their own type means no raw `u32` comparison sneaks into the engine.

use core::fmt;
use core::ops::{Add, AddAssign, Sub};

use smoltcp::wire::TcpSeqNumber;

/// A position in a connection's 32-bit sequence space.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNum(u32);

impl SeqNum {
    /// Wraps a raw sequence number.
    pub const fn new(raw: u32) -> Self {
        Self(raw)
    }

    /// The raw 32-bit value.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Signed distance `self - other`; positive when `self` is after `other`.
    pub const fn diff(self, other: SeqNum) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }

    /// `self` comes strictly before `other`.
    pub const fn before(self, other: SeqNum) -> bool {
        self.diff(other) < 0
    }

    /// `self` comes before or is `other`.
    pub const fn before_eq(self, other: SeqNum) -> bool {
        self.diff(other) <= 0
    }

    /// `self` comes strictly after `other`.
    pub const fn after(self, other: SeqNum) -> bool {
        self.diff(other) > 0
    }

    /// `self` comes after or is `other`.
    pub const fn after_eq(self, other: SeqNum) -> bool {
        self.diff(other) >= 0
    }

    /// `start <= self < end` on the circle.
    pub const fn within(self, start: SeqNum, end: SeqNum) -> bool {
        self.after_eq(start) && self.before(end)
    }

    /// The later of two numbers.
    pub const fn latest(self, other: SeqNum) -> SeqNum {
        if self.after(other) { self } else { other }
    }

    /// The earlier of two numbers.
    pub const fn earliest(self, other: SeqNum) -> SeqNum {
        if self.before(other) { self } else { other }
    }

    /// Bytes from `earlier` up to `self`, or 0 when `self` is not after `earlier`.
    pub const fn distance_from(self, earlier: SeqNum) -> u32 {
        let d = self.diff(earlier);
        if d > 0 { d as u32 } else { 0 }
    }
}

impl Add<u32> for SeqNum {
    type Output = SeqNum;
    fn add(self, rhs: u32) -> SeqNum {
        SeqNum(self.0.wrapping_add(rhs))
    }
}

impl AddAssign<u32> for SeqNum {
    fn add_assign(&mut self, rhs: u32) {
        self.0 = self.0.wrapping_add(rhs);
    }
}

impl Sub<u32> for SeqNum {
    type Output = SeqNum;
    fn sub(self, rhs: u32) -> SeqNum {
        SeqNum(self.0.wrapping_sub(rhs))
    }
}

impl From<TcpSeqNumber> for SeqNum {
    fn from(value: TcpSeqNumber) -> Self {
        SeqNum(value.0 as u32)
    }
}

impl From<SeqNum> for TcpSeqNumber {
    fn from(value: SeqNum) -> Self {
        TcpSeqNumber(value.0 as i32)
    }
}

impl fmt::Debug for SeqNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for SeqNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_holds_across_the_wrap() {
        let near_top = SeqNum::new(u32::MAX - 5);
        let wrapped = near_top + 10;
        assert_eq!(wrapped.get(), 4);
        assert!(near_top.before(wrapped));
        assert!(wrapped.after(near_top));
        assert_eq!(wrapped.diff(near_top), 10);
        assert_eq!(near_top.diff(wrapped), -10);
        assert_eq!(wrapped.distance_from(near_top), 10);
        assert_eq!(near_top.distance_from(wrapped), 0);
    }

    #[test]
    fn within_is_half_open() {
        let start = SeqNum::new(u32::MAX - 1);
        let end = start + 4;
        assert!(start.within(start, end));
        assert!((start + 3).within(start, end));
        assert!(!end.within(start, end));
        assert!(!(start - 1).within(start, end));
    }

    #[test]
    fn latest_and_earliest_follow_the_circle() {
        let a = SeqNum::new(0xFFFF_FFF0);
        let b = SeqNum::new(0x10);
        assert_eq!(a.latest(b), b);
        assert_eq!(a.earliest(b), a);
    }

    #[test]
    fn converts_to_and_from_smoltcp() {
        let s = SeqNum::new(0x8000_0001);
        let t: TcpSeqNumber = s.into();
        assert_eq!(SeqNum::from(t), s);
    }
}
