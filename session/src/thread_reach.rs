//! Which stack threads can reach a remote address, for outgoing connects.
//!
//! Each stack thread serves one queue of one interface. With several
//! interfaces, a connect must go to a thread whose interface reaches the
//! remote: one with the remote inside one of its subnets, else one with a
//! default route of the remote's family. Among those, connects take turns.
//! An interface belongs to one table (FIB index); an app namespace's
//! sessions only use the threads of its table's interfaces.

use std::net::IpAddr;

/// What one stack thread's interface reaches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadReach {
    /// The interface's subnets: (address, prefix length).
    pub subnets: Vec<(IpAddr, u8)>,
    /// It has an IPv4 default route.
    pub gateway_v4: bool,
    /// It has an IPv6 default route.
    pub gateway_v6: bool,
    /// The FIB (table) index its interface belongs to.
    pub table: u32,
}

impl ThreadReach {
    /// Whether `ip` is inside one of the subnets.
    pub fn on_link(&self, ip: IpAddr) -> bool {
        self.subnets
            .iter()
            .any(|&(net, len)| same_prefix(net, ip, len))
    }

    /// Whether a default route of `ip`'s family leaves through here.
    pub fn has_gateway_for(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.gateway_v4,
            IpAddr::V6(_) => self.gateway_v6,
        }
    }
}

fn same_prefix(a: IpAddr, b: IpAddr, len: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let len = u32::from(len.min(32));
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let len = u32::from(len.min(128));
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// Threads whose interface belongs to table `table`; every thread when no
/// reach is recorded.
pub fn threads_in_table(reach: &[ThreadReach], threads: usize, table: u32) -> Vec<usize> {
    if reach.is_empty() {
        return (0..threads).collect();
    }
    (0..threads)
        .filter(|&t| reach.get(t).is_some_and(|r| r.table == table))
        .collect()
}

/// The thread for the `turn`-th connect to `remote` from an app namespace
/// using table `table`: round robin over that table's threads on the
/// remote's link, else over those with a default route for it, else over
/// all of the table's threads (the transport then reports the remote
/// unreachable). None when no thread serves the table.
pub fn select_connect_thread(
    reach: &[ThreadReach],
    threads: usize,
    table: u32,
    remote: IpAddr,
    turn: usize,
) -> Option<usize> {
    let pool = threads_in_table(reach, threads, table);
    let on_link: Vec<usize> = pool
        .iter()
        .copied()
        .filter(|&t| reach.get(t).is_some_and(|r| r.on_link(remote)))
        .collect();
    let candidates = if on_link.is_empty() {
        pool.iter()
            .copied()
            .filter(|&t| reach.get(t).is_some_and(|r| r.has_gateway_for(remote)))
            .collect()
    } else {
        on_link
    };
    let from = if candidates.is_empty() {
        &pool
    } else {
        &candidates
    };
    (!from.is_empty()).then(|| from[turn % from.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(subnets: &[(&str, u8)], gw4: bool, table: u32) -> ThreadReach {
        ThreadReach {
            subnets: subnets
                .iter()
                .map(|&(a, l)| (a.parse().unwrap(), l))
                .collect(),
            gateway_v4: gw4,
            gateway_v6: false,
            table,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connects_go_to_the_threads_of_the_interface_on_the_remote_link() {
        // Threads 0-1: interface A (10.1.0.0/24); 2-3: B (10.2.0.0/24, fd02::/64).
        let a = reach(&[("10.1.0.1", 24)], false, 0);
        let b = reach(&[("10.2.0.1", 24), ("fd02::1", 64)], true, 0);
        let r = vec![a.clone(), a, b.clone(), b];
        let picks: Vec<Option<usize>> = (0..4)
            .map(|turn| select_connect_thread(&r, 4, 0, ip("10.1.0.9"), turn))
            .collect();
        assert_eq!(picks, vec![Some(0), Some(1), Some(0), Some(1)]);
        assert_eq!(
            select_connect_thread(&r, 4, 0, ip("10.2.0.200"), 1),
            Some(3)
        );
        assert_eq!(select_connect_thread(&r, 4, 0, ip("fd02::5"), 0), Some(2));
    }

    #[test]
    fn off_link_remotes_use_a_thread_with_a_default_route() {
        let r = vec![
            reach(&[("10.1.0.1", 24)], false, 0),
            reach(&[("10.2.0.1", 24)], true, 0),
        ];
        for turn in 0..4 {
            assert_eq!(
                select_connect_thread(&r, 2, 0, ip("192.0.2.1"), turn),
                Some(1)
            );
        }
        // No IPv6 route anywhere: every thread takes turns (and fails).
        assert_eq!(
            select_connect_thread(&r, 2, 0, ip("2001:db8::1"), 3),
            Some(1)
        );
        assert_eq!(
            select_connect_thread(&r, 2, 0, ip("2001:db8::1"), 4),
            Some(0)
        );
    }

    #[test]
    fn a_table_only_uses_its_own_interfaces() {
        // Thread 0 in table 0, thread 1 in table 7, both on the same subnet.
        let r = vec![
            reach(&[("10.1.0.1", 24)], true, 0),
            reach(&[("10.1.0.1", 24)], true, 7),
        ];
        assert_eq!(threads_in_table(&r, 2, 7), vec![1]);
        for turn in 0..3 {
            assert_eq!(
                select_connect_thread(&r, 2, 0, ip("10.1.0.5"), turn),
                Some(0)
            );
            assert_eq!(
                select_connect_thread(&r, 2, 7, ip("192.0.2.1"), turn),
                Some(1)
            );
        }
        assert_eq!(select_connect_thread(&r, 2, 3, ip("10.1.0.5"), 0), None);
        assert!(threads_in_table(&r, 2, 3).is_empty());
    }

    #[test]
    fn without_reach_every_thread_takes_turns() {
        let picks: Vec<Option<usize>> = (0..5)
            .map(|t| select_connect_thread(&[], 3, 0, ip("10.0.0.1"), t))
            .collect();
        assert_eq!(picks, vec![Some(0), Some(1), Some(2), Some(0), Some(1)]);
        assert_eq!(threads_in_table(&[], 2, 9), vec![0, 1]);
        assert_eq!(select_connect_thread(&[], 0, 0, ip("10.0.0.1"), 7), None);
    }

    #[test]
    fn prefixes_compare_only_their_bits_and_never_mix_families() {
        let r = reach(&[("10.1.0.1", 23), ("fd00::1", 0)], false, 0);
        assert!(r.on_link(ip("10.1.1.255")));
        assert!(!r.on_link(ip("10.1.2.0")));
        assert!(r.on_link(ip("2001:db8::9")));
        let host = reach(&[("10.1.0.1", 32)], false, 0);
        assert!(host.on_link(ip("10.1.0.1")) && !host.on_link(ip("10.1.0.2")));
        let v4_only = reach(&[("0.0.0.0", 0)], false, 0);
        assert!(!v4_only.on_link(ip("::1")));
    }
}
