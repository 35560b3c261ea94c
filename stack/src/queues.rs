//! Which queues of an interface a stack serves.
//!
//! An interface delivers frames on every one of its receive queues (a NIC
//! spreads flows by its RSS hash, a veth by the queue its peer sent on),
//! and a frame on a queue nobody serves is never seen: ARP replies, SYNs
//! and datagrams vanish without a trace. So a stack serves every queue by
//! default, and serving fewer is refused with an error naming the unserved
//! queues, unless the user says the traffic is steered away from them
//! (`--traffic-steered`, `traffic_steered = true`).
//!
//! The check is plain data ([`check_served`]); where the count comes from is
//! the driver's business ([`delivering_queues`]), so the TAP driver's queues
//! use the same rule.

use hoststack_drivers::netdev::Netdev;

pub use crate::config::MAX_QUEUES;
use crate::config::{DriverKind, StackConfig, TcpEngineKind};
use crate::error::{StackError, StackResult};

/// How many receive queues `cfg`'s interface delivers to, as the kernel
/// reports them (ethtool channels, else sysfs).
pub fn delivering_queues(cfg: &StackConfig) -> StackResult<u32> {
    match cfg.driver {
        DriverKind::AfXdp => Ok(Netdev::lookup(&cfg.interface)?.rx_queues.max(1)),
        // One TAP fd is one queue: the driver opens as many as it is asked
        // for, so what is asked for is what is delivered to.
        DriverKind::UringTap => Ok(cfg.queues.unwrap_or(1).max(1)),
    }
}

/// `0, 1, 3` style list of queues.
fn list(qs: impl Iterator<Item = u32>) -> String {
    qs.map(|q| q.to_string()).collect::<Vec<_>>().join(", ")
}

/// Refuses to serve `served` of the `delivering` queues of `ifname` when
/// that leaves queues unserved, unless `steered`. `veth` adds how a veth is
/// steered.
pub fn check_served(
    ifname: &str,
    delivering: u32,
    served: u32,
    steered: bool,
    veth: bool,
) -> StackResult<()> {
    if served == 0 || served > MAX_QUEUES {
        return Err(StackError::Config(format!(
            "--queues {served} is outside 1..={MAX_QUEUES}"
        )));
    }
    if served > delivering {
        return Err(StackError::Config(format!(
            "'{ifname}' has {delivering} receive queue(s); --queues {served} asks for more (leave --queues out to serve all {delivering})"
        )));
    }
    if served == delivering || steered {
        return Ok(());
    }
    let unserved = served..delivering;
    let (s, them) = if delivering - served == 1 {
        ("", "it")
    } else {
        ("s", "them")
    };
    let how = if veth {
        format!(
            "a veth receives on the queue its peer sent on: `ethtool -L PEER tx {served}` in the peer's namespace"
        )
    } else {
        format!("`ethtool -L {ifname} combined {served}` or `ethtool -X {ifname} equal {served}`")
    };
    Err(StackError::UnservedQueues(format!(
        "'{ifname}' delivers to {delivering} receive queues but --queues {served} serves only queue{} {}: what arrives on queue{s} {} (ARP replies, connects, datagrams) would never be seen. Serve every queue (leave --queues out, or queues = {delivering}), or steer traffic away from {them} ({how}) and pass --traffic-steered (config: traffic_steered = true)",
        if served == 1 { "" } else { "s" },
        list(0..served),
        list(unserved),
    )))
}

/// The number of queues `cfg` serves: every queue of the interface unless
/// `cfg.queues` says fewer (and the check allows it).
pub fn resolve(cfg: &StackConfig) -> StackResult<u32> {
    let delivering = delivering_queues(cfg)?;
    let served = cfg.queues.unwrap_or(delivering);
    let veth = cfg.driver == DriverKind::AfXdp
        && Netdev::lookup(&cfg.interface).is_ok_and(|d| d.is_veth());
    check_served(
        &cfg.interface,
        delivering,
        served,
        cfg.traffic_steered,
        veth,
    )?;
    if served > 1 && cfg.tcp.engine == TcpEngineKind::Smoltcp {
        return Err(StackError::Config(format!(
            "smoltcp's TCP runs on one queue only (its sockets cannot take a segment another queue received), and '{}' is served on {served}: use the hoststack TCP engine (the default), or --queues 1 with the traffic steered to queue 0 (--traffic-steered)",
            cfg.interface
        )));
    }
    if !cfg.cores.is_empty() && cfg.cores.len() != served as usize {
        return Err(StackError::Config(format!(
            "{} cores given for the {served} queues of '{}' (one core per queue)",
            cfg.cores.len(),
            cfg.interface
        )));
    }
    Ok(served)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_served_passes() {
        assert!(check_served("eth0", 4, 4, false, false).is_ok());
        assert!(check_served("eth0", 1, 1, false, false).is_ok());
    }

    #[test]
    fn fewer_queues_name_the_unserved_ones_and_the_fix() {
        let e = check_served("hsmqh", 2, 1, false, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'hsmqh' delivers to 2 receive queues"), "{e}");
        assert!(e.contains("serves only queue 0:"), "{e}");
        assert!(e.contains("on queue 1 "), "{e}");
        assert!(e.contains("--traffic-steered"), "{e}");
        assert!(e.contains("ethtool -L PEER tx 1"), "{e}");
        let e = check_served("eth0", 4, 2, false, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("queues 0, 1:") && e.contains("queues 2, 3 "),
            "{e}"
        );
        assert!(e.contains("ethtool -L eth0 combined 2"), "{e}");
    }

    #[test]
    fn steered_traffic_allows_fewer_but_never_more_or_none() {
        assert!(check_served("eth0", 4, 1, true, false).is_ok());
        assert!(check_served("eth0", 2, 3, true, false).is_err());
        assert!(check_served("eth0", 2, 0, true, false).is_err());
    }
}
