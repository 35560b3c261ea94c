//! Sorted, disjoint ranges of sequence space.
//!
//! The receiver's out-of-order map: each range holds data that arrived ahead of RCV.NXT.
//! Ranges are merged on insert (touching ranges merge too), so there is never more than one
//! range per hole; a small vector keeps them because holes are few in practice.

use crate::seqnum::SeqNum;

/// Half-open `[start, end)` ranges, ascending and never touching.
#[derive(Debug, Default, Clone)]
pub(crate) struct SeqRanges {
    ranges: Vec<(SeqNum, SeqNum)>,
}

impl SeqRanges {
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ranges.len()
    }

    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = (SeqNum, SeqNum)> + '_ {
        self.ranges.iter().copied()
    }

    pub(crate) fn clear(&mut self) {
        self.ranges.clear();
    }

    /// Highest end, if any.
    pub(crate) fn last_end(&self) -> Option<SeqNum> {
        self.ranges.last().map(|r| r.1)
    }

    /// Adds `[start, end)` and returns the merged range that now contains it.
    pub(crate) fn insert(&mut self, start: SeqNum, end: SeqNum) -> (SeqNum, SeqNum) {
        if !start.before(end) {
            return (start, end);
        }
        // First range whose end reaches our start (it touches or overlaps or lies after).
        let first = self.ranges.partition_point(|r| r.1.before(start));
        let mut merged = (start, end);
        let mut last = first;
        while last < self.ranges.len() && self.ranges[last].0.before_eq(merged.1) {
            merged.0 = merged.0.earliest(self.ranges[last].0);
            merged.1 = merged.1.latest(self.ranges[last].1);
            last += 1;
        }
        if last == first {
            self.ranges.insert(first, merged);
        } else {
            self.ranges[first] = merged;
            self.ranges.drain(first + 1..last);
        }
        merged
    }

    /// Removes the first range if it starts at or before `point`, returning its end.
    pub(crate) fn pop_reaching(&mut self, point: SeqNum) -> Option<SeqNum> {
        match self.ranges.first() {
            Some(&(start, end)) if start.before_eq(point) => {
                self.ranges.remove(0);
                Some(end)
            }
            _ => None,
        }
    }

    /// The range containing `point`.
    pub(crate) fn containing(&self, point: SeqNum) -> Option<(SeqNum, SeqNum)> {
        let i = self.ranges.partition_point(|r| r.1.before_eq(point));
        self.ranges
            .get(i)
            .copied()
            .filter(|r| point.within(r.0, r.1))
    }

    /// Drops memory held for ranges once empty and oversized.
    pub(crate) fn shrink_if_idle(&mut self) {
        if self.ranges.is_empty() && self.ranges.capacity() > 8 {
            self.ranges = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: u32) -> SeqNum {
        SeqNum::new(v)
    }

    fn all(r: &SeqRanges) -> Vec<(u32, u32)> {
        r.iter().map(|(a, b)| (a.get(), b.get())).collect()
    }

    #[test]
    fn inserts_merge_overlapping_and_touching_ranges() {
        let mut r = SeqRanges::default();
        r.insert(s(10), s(20));
        r.insert(s(30), s(40));
        assert_eq!(all(&r), vec![(10, 20), (30, 40)]);
        assert_eq!(r.insert(s(20), s(30)), (s(10), s(40)));
        assert_eq!(all(&r), vec![(10, 40)]);
        r.insert(s(50), s(60));
        r.insert(s(5), s(8));
        assert_eq!(all(&r), vec![(5, 8), (10, 40), (50, 60)]);
        assert_eq!(r.insert(s(7), s(55)), (s(5), s(60)));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn works_across_the_wrap() {
        let mut r = SeqRanges::default();
        let top = u32::MAX - 10;
        r.insert(s(top), s(top) + 5);
        r.insert(s(top) + 20, s(top) + 30);
        r.insert(s(top) + 5, s(top) + 20);
        assert_eq!(all(&r), vec![(top, (s(top) + 30).get())]);
        assert_eq!(r.containing(s(2)), Some((s(top), s(top) + 30)));
        assert_eq!(r.pop_reaching(s(top)), Some(s(top) + 30));
        assert!(r.is_empty());
    }

    #[test]
    fn pop_only_when_reached() {
        let mut r = SeqRanges::default();
        r.insert(s(100), s(200));
        assert_eq!(r.pop_reaching(s(99)), None);
        assert_eq!(r.pop_reaching(s(150)), Some(s(200)));
        assert_eq!(r.containing(s(150)), None);
    }
}
