//! The packet-generator row: pre-built 64-byte UDP frames out of the host
//! end, no IP stack on either side: pktgen over AF_XDP against an
//! AF_PACKET socket with `PACKET_QDISC_BYPASS` and `sendmmsg`. Also the
//! pktgen helpers the medium ceiling of tcp-bulk uses.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use anyhow::Result;
use hoststack_lab::Lab;

use super::{Figure, Outcome, Row, Settings, ip4, progress};
use crate::frames::{self, FlowSpec, SizeMix};
use crate::pktgen::{self, FlowTemplate, QueueOpts, RxOpts, TxOpts};
use crate::{afpacket, env, kernel};

/// The port the generated frames go to.
pub(super) const UDP_PORT: u16 = 9;

/// AF_XDP queue 0 of `ifname`, pinned to `core`.
pub(super) fn queue(ifname: &str, netns: Option<&str>, core: Option<usize>) -> QueueOpts {
    let mut q = QueueOpts::new(ifname);
    q.netns = netns.map(str::to_string);
    q.cores = core.into_iter().collect();
    q
}

/// One flow from `src` to `dst`, port 9000 to 9.
pub(super) fn udp_flow(src: IpAddr, dst: IpAddr) -> FlowTemplate {
    FlowTemplate {
        src_ip: src,
        src_ip_count: 1,
        dst_ip: dst,
        src_port: 9000,
        src_port_count: 1,
        dst_port: UDP_PORT,
    }
}

/// A pktgen receiver on the host end counting UDP to [`UDP_PORT`].
pub(super) fn host_receiver(lab: &Lab, core: Option<usize>) -> Result<pktgen::Running> {
    pktgen::start_rx(&RxOpts {
        queues: queue(&lab.host_if, None, core),
        udp_port: Some(UDP_PORT),
        count: None,
        duration: None,
    })
}

/// The pktgen sender inside the lab namespace, towards the host end.
pub(super) fn namespace_sender(lab: &Lab, s: &Settings, size: usize) -> Result<pktgen::Running> {
    let (load_core, _) = s.cores();
    let (host, peer) = ip4(lab);
    pktgen::start_tx(&TxOpts {
        queues: queue(&lab.peer_if, Some(&lab.netns), load_core),
        dst_mac: env::mac_of(None, &lab.host_if)?,
        flows: udp_flow(peer, host),
        sizes: SizeMix::Fixed(size),
        rate: None,
        count: None,
        duration: None,
    })
}

fn peer_rx(lab: &Lab) -> Result<u64> {
    Ok(env::link_stats(Some(&lab.netns), &lab.peer_if)?.rx_packets)
}

pub(super) fn pktgen_tx_64(s: &Settings) -> Result<Outcome> {
    const B: &str = "pktgen-tx-64";
    let (_, test_core) = s.cores();
    let (mut hs, mut k) = (Vec::new(), Vec::new());
    for run in 1..=s.runs {
        s.check()?;
        s.guarded(B, &format!("run {run} of pktgen"), || {
            let lab = s.lab()?;
            env::peer_ingress_drop(&lab, &format!("udp dport {UDP_PORT}"))?;
            let (host, peer) = ip4(&lab);
            let sender = pktgen::start_tx(&TxOpts {
                queues: queue(&lab.host_if, None, test_core),
                dst_mac: env::mac_of(Some(&lab.netns), &lab.peer_if)?,
                flows: udp_flow(host, peer),
                sizes: SizeMix::Fixed(64),
                rate: None,
                count: None,
                duration: None,
            })?;
            let rate = s.window(|| peer_rx(&lab));
            sender.stop()?;
            let mpps = rate? / 1e6;
            progress(
                B,
                run,
                s.runs,
                "pktgen, AF_XDP",
                &format!("{mpps:.3} Mpps at the peer"),
            );
            hs.push(mpps);
            Ok(())
        })?;
        s.check()?;
        s.guarded(B, &format!("run {run} of AF_PACKET"), || {
            let lab = s.lab()?;
            env::peer_ingress_drop(&lab, &format!("udp dport {UDP_PORT}"))?;
            let (host, peer) = ip4(&lab);
            let spec = FlowSpec {
                src_mac: env::mac_of(None, &lab.host_if)?,
                dst_mac: env::mac_of(Some(&lab.netns), &lab.peer_if)?,
                src_ip: host,
                src_ip_count: 1,
                dst_ip: peer,
                src_port: 9000,
                src_port_count: 1,
                dst_port: UDP_PORT,
            };
            let frame = frames::build_frame(&spec, (host, 9000), 64)?;
            let fd = afpacket::open(&lab.host_if, true)?;
            let stop = Arc::new(AtomicBool::new(false));
            let sent = Arc::new(AtomicU64::new(0));
            let (st, se) = (stop.clone(), sent.clone());
            let t = kernel::spawn_in("af-packet", None, test_core, move || {
                afpacket::send_loop(&fd, &[frame], 64, &st, &se)
            })?;
            let rate = s.window(|| peer_rx(&lab));
            stop.store(true, Relaxed);
            kernel::join(t)?;
            let mpps = rate? / 1e6;
            progress(
                B,
                run,
                s.runs,
                "kernel AF_PACKET + PACKET_QDISC_BYPASS + sendmmsg",
                &format!("{mpps:.3} Mpps at the peer"),
            );
            k.push(mpps);
            Ok(())
        })?;
    }
    Ok(Outcome {
        rows: vec![
            Row::new(
                B,
                "64-byte UDP frames, pre-built, counted at the peer",
                "Mpps",
                true,
                vec![
                    Figure {
                        side: "hoststack: pktgen, AF_XDP, bursts of 256".into(),
                        short: "pktgen AF_XDP".into(),
                        kernel: false,
                        values: hs,
                    },
                    Figure {
                        side: "kernel: AF_PACKET, PACKET_QDISC_BYPASS, sendmmsg batch 64".into(),
                        short: "AF_PACKET".into(),
                        kernel: true,
                        values: k,
                    },
                ],
            )
            .labelled("pktgen-tx-64 Mpps"),
        ],
        notes: Vec::new(),
    })
}
