//! The kernel's fastest way to put pre-built frames on a link without its
//! IP stack, for the packet-generator row: an `AF_PACKET` raw socket bound
//! to the interface, `PACKET_QDISC_BYPASS` on (frames go straight to the
//! driver, as AF_XDP's do), `sendmmsg` in batches of frames built once.
//!
//! Everything goes through `nix`: the socket, `getifaddrs` for the
//! interface's `sockaddr_ll` (so no address is built by hand), `bind`, and
//! `sendmmsg`. nix has no `PACKET_QDISC_BYPASS`; its `sockopt_impl!` macro,
//! nix's documented way to add an option, defines it (the one `setsockopt`
//! call lives in nix's expansion).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, LinkAddr, MsgFlags, MultiHeaders, SockFlag, SockType, bind,
    getsockopt, sendmmsg, setsockopt, socket,
};

// The macro expands to itself, `setsockopt_impl!` and `getsockopt_impl!`,
// unqualified.
use nix::{getsockopt_impl, setsockopt_impl, sockopt_impl};

sockopt_impl!(
    /// `PACKET_QDISC_BYPASS`: frames skip the qdisc layer and go to the
    /// driver's transmit routine directly.
    PacketQdiscBypass,
    Both,
    libc::SOL_PACKET,
    libc::PACKET_QDISC_BYPASS,
    bool
);

/// The `sockaddr_ll` of `ifname` (in the calling thread's namespace).
fn link_addr(ifname: &str) -> Result<LinkAddr> {
    nix::ifaddrs::getifaddrs()
        .context("getifaddrs")?
        .filter(|a| a.interface_name == ifname)
        .find_map(|a| a.address.and_then(|s| s.as_link_addr().copied()))
        .with_context(|| format!("no link-layer address for interface {ifname}"))
}

/// A send-only raw packet socket on `ifname` (protocol 0: it receives
/// nothing), with the qdisc bypassed when `bypass_qdisc`.
pub fn open(ifname: &str, bypass_qdisc: bool) -> Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("opening an AF_PACKET socket")?;
    let addr = link_addr(ifname)?;
    bind(fd.as_raw_fd(), &addr).with_context(|| format!("binding AF_PACKET to {ifname}"))?;
    if bypass_qdisc {
        setsockopt(&fd, PacketQdiscBypass, &true).context("setting PACKET_QDISC_BYPASS")?;
        if !getsockopt(&fd, PacketQdiscBypass).context("reading PACKET_QDISC_BYPASS")? {
            bail!("PACKET_QDISC_BYPASS did not stay set");
        }
    }
    Ok(fd)
}

/// Sends `frames` round and round, `batch` per `sendmmsg`, until `stop`;
/// counts the frames the kernel took in `sent`.
pub fn send_loop(
    fd: &OwnedFd,
    frames: &[Vec<u8>],
    batch: usize,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<()> {
    if frames.is_empty() || batch == 0 {
        bail!("nothing to send");
    }
    let iovs: Vec<[IoSlice<'_>; 1]> = (0..batch)
        .map(|i| [IoSlice::new(&frames[i % frames.len()])])
        .collect();
    let addrs: Vec<Option<LinkAddr>> = vec![None; batch];
    let mut hdrs = MultiHeaders::<LinkAddr>::preallocate(batch, None);
    let cmsgs: [ControlMessage<'_>; 0] = [];
    while !stop.load(Relaxed) {
        match sendmmsg(
            fd.as_raw_fd(),
            &mut hdrs,
            &iovs,
            &addrs,
            cmsgs,
            MsgFlags::empty(),
        ) {
            Ok(r) => {
                sent.fetch_add(r.count() as u64, Relaxed);
            }
            // The driver's queue is full: try again.
            Err(Errno::ENOBUFS | Errno::EAGAIN | Errno::ENETDOWN) => {}
            Err(e) => return Err(anyhow!(e).context("sendmmsg on AF_PACKET")),
        }
    }
    Ok(())
}
