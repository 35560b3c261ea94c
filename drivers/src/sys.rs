//! The few raw syscalls the drivers make outside `xsk-rs` and `io-uring`:
//! interface ioctls (ethtool driver info and TSO, interface flags) and the
//! TAP attach. Every call goes through [`check`], which turns -1 into the
//! OS error.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
const ETHTOOL_GTSO: u32 = 0x0000_001e;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the union reduced to the members used here.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: IfReqData,
}

#[repr(C)]
union IfReqData {
    flags: libc::c_short,
    ptr: *mut libc::c_void,
    _pad: [u8; 24],
}

fn ifreq(name: &str) -> io::Result<IfReq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: IfReqData { _pad: [0; 24] },
    };
    for (d, s) in req.name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a valid fd is owned by us.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ethtool(name: &str, data: *mut libc::c_void) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = ifreq(name)?;
    req.data.ptr = data;
    // SAFETY: `req` is a properly laid out ifreq whose data pointer points at
    // an ethtool command struct the caller keeps alive for this call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) })?;
    Ok(())
}

/// The kernel driver's name for the interface (`veth`, `tun`, `ixgbe`, ...).
pub(crate) fn driver_name(ifname: &str) -> io::Result<String> {
    // SAFETY: EthtoolDrvinfo is plain old data; all-zero is a valid value.
    let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    ethtool(ifname, (&raw mut info).cast())?;
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Whether TCP segmentation offload is on for the interface.
pub(crate) fn tso_enabled(ifname: &str) -> io::Result<bool> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_GTSO,
        data: 0,
    };
    ethtool(ifname, (&raw mut v).cast())?;
    Ok(v.data != 0)
}

const ETHTOOL_GCHANNELS: u32 = 0x0000_003c;

#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// Receive queues in use (rx or combined channels), when the driver says.
pub(crate) fn rx_channels(ifname: &str) -> io::Result<u32> {
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    ethtool(ifname, (&raw mut ch).cast())?;
    Ok(ch.rx_count.max(ch.combined_count))
}

/// The interface's hardware address and MTU, read with ioctls (sysfs shows
/// the namespace it was mounted in, not the one this thread is in).
pub(crate) fn hwaddr_and_mtu(ifname: &str) -> io::Result<([u8; 6], usize)> {
    let sock = control_socket()?;
    let mut req = ifreq(ifname)?;
    // SAFETY: `req` is a valid ifreq; SIOCGIFHWADDR fills a sockaddr in the
    // union, which the padding covers.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) })?;
    // SAFETY: the kernel wrote a sockaddr (family u16, then 14 data bytes)
    // at the start of the union.
    let raw = unsafe { req.data._pad };
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    if family != libc::ARPHRD_ETHER {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "not an Ethernet interface",
        ));
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&raw[2..8]);
    let mut req = ifreq(ifname)?;
    // SAFETY: as above; SIOCGIFMTU writes an int at the start of the union.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) })?;
    // SAFETY: the kernel wrote `ifr_mtu`, an int at the start of the union.
    let raw = unsafe { req.data._pad };
    let mtu = i32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    Ok((mac, mtu.max(0) as usize))
}

/// Sets IFF_UP on the interface.
pub(crate) fn set_up(ifname: &str) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = ifreq(ifname)?;
    // SAFETY: `req` is a valid ifreq; SIOCGIFFLAGS fills `flags`.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the kernel just wrote the flags member of the union.
    let flags = unsafe { req.data.flags };
    req.data.flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS reads `flags`.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) })?;
    Ok(())
}

/// The interface's index, or None when it does not exist.
pub(crate) fn ifindex(ifname: &str) -> Option<u32> {
    let c = CString::new(ifname).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the whole call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// `IFF_VNET_HDR`: frames carry a `virtio_net_hdr`.
pub(crate) const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETVNETLE: libc::c_ulong = 0x4004_54dc;

/// Opens `/dev/net/tun` non-blocking and attaches it to TAP device `ifname`
/// (creating it when absent) without packet information headers; with
/// `multi_queue` as one more queue of a multi-queue device, with
/// `vnet_hdr` with a `virtio_net_hdr` in front of every frame.
pub(crate) fn open_tap(ifname: &str, multi_queue: bool, vnet_hdr: bool) -> io::Result<OwnedFd> {
    let path = c"/dev/net/tun";
    // SAFETY: `path` is a valid C string; open(2) returns an fd or -1.
    let fd = check(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(ifname)?;
    let mut flags = IFF_TAP | IFF_NO_PI;
    if multi_queue {
        flags |= IFF_MULTI_QUEUE;
    }
    if vnet_hdr {
        flags |= IFF_VNET_HDR;
    }
    req.data.flags = flags;
    // SAFETY: `req` is a valid ifreq with the TAP flags set.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) })?;
    Ok(fd)
}

/// Sets the offloads (`TUN_F_*`) the TAP may use toward this process.
pub(crate) fn tun_set_offload(fd: &OwnedFd, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no pointer.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, libc::c_ulong::from(flags)) })?;
    Ok(())
}

/// Sets the vnet header size and its byte order (little-endian, as virtio
/// 1.0 defines it).
pub(crate) fn tun_set_vnet_hdr(fd: &OwnedFd, size: usize) -> io::Result<()> {
    let size = libc::c_int::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "vnet header size"))?;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
    // points at a live local.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &raw const size) })?;
    let le: libc::c_int = 1;
    // SAFETY: as above, TUNSETVNETLE reads one int.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETLE, &raw const le) })?;
    Ok(())
}

/// The running kernel's release string (`6.18.0-1-amd64`).
pub(crate) fn kernel_release() -> io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string())
}

/// Waits up to `timeout_ms` for `fd` to become readable.
#[cfg(test)]
pub(crate) fn poll_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = check(unsafe { libc::poll(&mut p, 1, timeout_ms) })?;
    Ok(n > 0)
}

/// A non-blocking eventfd.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd(2) takes no pointers.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: `fd` was just returned by eventfd(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd; a counter already at its maximum is still
/// signalled, so EAGAIN is success.
pub(crate) fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64.
    let _ = unsafe { libc::write(fd, (&raw const one).cast(), 8) };
}

/// Clears an eventfd.
pub(crate) fn eventfd_drain(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64.
    let _ = unsafe { libc::read(fd, (&raw mut v).cast(), 8) };
}

const ETHTOOL_GRSSH: u32 = 0x0000_0046;
const ETHTOOL_GRXFH: u32 = 0x0000_0029;
/// `struct ethtool_rxfh` up to its flexible `rss_config`, in u32 words.
const RXFH_HEADER_WORDS: usize = 6;

/// The RSS indirection table, hash key, hash function bits and input
/// transform of the interface's default context (`ethtool -x`).
pub(crate) fn rss_config(ifname: &str) -> io::Result<(Vec<u32>, Vec<u8>, u8, u8)> {
    let mut probe = [0u32; RXFH_HEADER_WORDS];
    probe[0] = ETHTOOL_GRSSH;
    ethtool(ifname, probe.as_mut_ptr().cast())?;
    let (indir_size, key_size) = (probe[2] as usize, probe[3] as usize);
    if indir_size > 1 << 16 || key_size > 1 << 10 {
        return Err(io::Error::other("implausible RSS table sizes"));
    }
    let mut buf = vec![0u32; RXFH_HEADER_WORDS + indir_size + key_size.div_ceil(4)];
    buf[0] = ETHTOOL_GRSSH;
    buf[2] = indir_size as u32;
    buf[3] = key_size as u32;
    // The buffer holds the header, `indir_size` words and `key_size` bytes.
    ethtool(ifname, buf.as_mut_ptr().cast())?;
    let [hfunc, input_xfrm, _, _] = buf[4].to_ne_bytes();
    let indir = buf[RXFH_HEADER_WORDS..RXFH_HEADER_WORDS + indir_size].to_vec();
    let key: Vec<u8> = buf[RXFH_HEADER_WORDS + indir_size..]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .take(key_size)
        .collect();
    Ok((indir, key, hfunc, input_xfrm))
}

/// The header fields the NIC hashes for `flow_type` (`ethtool -n IF
/// rx-flow-hash tcp4`): RXH_* bits.
pub(crate) fn rss_hash_fields(ifname: &str, flow_type: u32) -> io::Result<u64> {
    #[repr(C)]
    struct RxnfcHead {
        cmd: u32,
        flow_type: u32,
        data: u64,
    }
    // For ETHTOOL_GRXFH the kernel reads and writes only these fields.
    let mut head = RxnfcHead {
        cmd: ETHTOOL_GRXFH,
        flow_type,
        data: 0,
    };
    ethtool(ifname, (&raw mut head).cast())?;
    Ok(head.data)
}
