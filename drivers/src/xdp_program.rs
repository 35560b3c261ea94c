//! One XDP program and one XSK map per interface, shared by the AF_XDP
//! sockets of all its queues.
//!
//! The program is six instructions built here: it redirects each frame to
//! the socket the map holds at the frame's receive queue index and passes
//! frames of a queue without a socket to the kernel
//! (`bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS)`). It is loaded
//! with `bpf(BPF_PROG_LOAD)` and attached through a BPF link
//! (`BPF_LINK_CREATE`, `BPF_XDP`), so nothing needs a mounted bpffs (no
//! libxdp dispatcher), and the kernel detaches it when the link's last fd
//! closes, also when the process dies.
//!
//! Within one process, the queues of one interface (keyed by network
//! namespace and ifindex) share one [`XskProgram`]: the first queue loads
//! and attaches it, every queue puts its socket into the map at its index,
//! and the last one to go detaches it. The registry lock serialises attach,
//! map updates and detach, so a queue opening while the last one closes
//! never races the detach.

#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use tracing::{debug, info};

use crate::error::{DriverError, DriverResult};

/// How the XDP program is attached to the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpAttachMode {
    /// Native (driver) mode where the driver has it, generic otherwise.
    #[default]
    Auto,
    /// Driver mode; fails where the driver lacks XDP.
    Native,
    /// Generic (SKB) mode; works everywhere, slower.
    Generic,
}

impl std::str::FromStr for XdpAttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" | "drv" | "driver" => Ok(Self::Native),
            "generic" | "skb" => Ok(Self::Generic),
            _ => Err(format!(
                "unknown XDP mode '{s}' (expected auto, native or generic)"
            )),
        }
    }
}

/// The program's name, as `bpftool prog` and `ip link` show it.
pub const PROGRAM_NAME: &str = "hs_xsk_redirect";
const PROGRAM_NAME_C: &CStr = c"hs_xsk_redirect";
const MAP_NAME_C: &CStr = c"hs_xsks";
const LICENSE_C: &CStr = c"Dual BSD/GPL";

/// `struct xdp_md`'s `rx_queue_index`, in bytes.
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;
const XDP_PASS: i32 = 2;

// Opcodes (linux/bpf_common.h, linux/bpf.h).
const BPF_LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const BPF_LD_IMM64: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW
const BPF_MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const BPF_CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
const BPF_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> libbpf_sys::bpf_insn {
    let mut i = libbpf_sys::bpf_insn {
        code,
        off,
        imm,
        ..Default::default()
    };
    i.set_dst_reg(dst);
    i.set_src_reg(src);
    i
}

/// The redirect program over the XSK map `map_fd`.
pub fn program(map_fd: RawFd) -> Vec<libbpf_sys::bpf_insn> {
    vec![
        // r2 = ctx->rx_queue_index
        insn(BPF_LDX_MEM_W, 2, 1, XDP_MD_RX_QUEUE_INDEX, 0),
        // r1 = the map (a 64-bit immediate over two slots)
        insn(
            BPF_LD_IMM64,
            1,
            libbpf_sys::BPF_PSEUDO_MAP_FD as u8,
            0,
            map_fd,
        ),
        insn(0, 0, 0, 0, 0),
        // r3 = XDP_PASS: the verdict when the map has no socket there
        insn(BPF_MOV64_IMM, 3, 0, 0, XDP_PASS),
        // r0 = bpf_redirect_map(r1, r2, r3)
        insn(BPF_CALL, 0, 0, 0, libbpf_sys::BPF_FUNC_redirect_map as i32),
        insn(BPF_EXIT, 0, 0, 0, 0),
    ]
}

/// A negative libbpf return as an io::Error (libbpf returns -errno).
fn libbpf_err(ret: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(-ret)
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: `fd` is a fresh descriptor a successful libbpf call returned;
    // nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Identity of the network namespace the calling thread is in.
fn netns_id() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino() ^ (m.dev() << 32))
        .unwrap_or(0)
}

/// What is attached to an interface, per `bpf_xdp_query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedProgram {
    /// `native`, `generic`, `offload` or `multi`.
    pub mode: &'static str,
    /// The program's id.
    pub id: u32,
    /// Its name, when it can be read.
    pub name: Option<String>,
}

/// The XDP program attached to `ifindex`, if any.
pub fn attached(ifindex: u32) -> Option<AttachedProgram> {
    let mut opts = libbpf_sys::bpf_xdp_query_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_xdp_query_opts>() as _,
        ..Default::default()
    };
    // SAFETY: `opts` is a live, correctly sized bpf_xdp_query_opts.
    let ret = unsafe { libbpf_sys::bpf_xdp_query(ifindex as i32, 0, &mut opts) };
    if ret < 0 {
        return None;
    }
    let mode = match u32::from(opts.attach_mode) {
        libbpf_sys::XDP_ATTACHED_DRV => "native",
        libbpf_sys::XDP_ATTACHED_SKB => "generic",
        libbpf_sys::XDP_ATTACHED_HW => "offload",
        libbpf_sys::XDP_ATTACHED_MULTI => "multi",
        _ => return None,
    };
    let id = [
        opts.prog_id,
        opts.drv_prog_id,
        opts.skb_prog_id,
        opts.hw_prog_id,
    ]
    .into_iter()
    .find(|&i| i != 0)
    .unwrap_or(0);
    Some(AttachedProgram {
        mode,
        id,
        name: program_name(id),
    })
}

fn program_name(id: u32) -> Option<String> {
    if id == 0 {
        return None;
    }
    // SAFETY: plain syscall wrapper; a non-negative result is a new fd.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return None;
    }
    let fd = owned(fd);
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: `info` is writable for `len` bytes.
    let ret = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if ret < 0 {
        return None;
    }
    let bytes: Vec<u8> = info
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The loaded program, its map and its link on one interface.
#[derive(Debug)]
struct Entry {
    netns: u64,
    ifindex: u32,
    ifname: String,
    requested: XdpAttachMode,
    mode: &'static str,
    users: usize,
    // Drop order: the link (detaches), then the program, then the map.
    link: OwnedFd,
    _prog: OwnedFd,
    map: OwnedFd,
    max_queues: u32,
}

static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A queue's share of its interface's program; the program is detached
/// when the last share is dropped.
#[derive(Debug)]
pub struct XskProgram {
    netns: u64,
    ifindex: u32,
    queue: Option<u32>,
    mode: &'static str,
}

fn modes_agree(have: XdpAttachMode, want: XdpAttachMode, attached: &str) -> bool {
    match want {
        XdpAttachMode::Auto => true,
        XdpAttachMode::Native => attached == "native" || have == XdpAttachMode::Native,
        XdpAttachMode::Generic => attached == "generic" || have == XdpAttachMode::Generic,
    }
}

fn load(
    ifname: &str,
    ifindex: u32,
    max_queues: u32,
    mode: XdpAttachMode,
) -> DriverResult<(OwnedFd, OwnedFd, OwnedFd)> {
    let max_queues = max_queues.max(1);
    // SAFETY: the names are NUL-terminated; no options are passed.
    let map = unsafe {
        libbpf_sys::bpf_map_create(
            libbpf_sys::BPF_MAP_TYPE_XSKMAP,
            MAP_NAME_C.as_ptr(),
            4,
            4,
            max_queues,
            std::ptr::null(),
        )
    };
    if map < 0 {
        return Err(DriverError::os(
            format!("creating the XSK map of '{ifname}'"),
            libbpf_err(map),
        ));
    }
    let map = owned(map);
    let insns = program(map.as_raw_fd());
    let mut log = vec![0 as std::ffi::c_char; 4096];
    let mut opts = libbpf_sys::bpf_prog_load_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_prog_load_opts>() as _,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr(),
        ..Default::default()
    };
    // SAFETY: `insns` holds `insns.len()` instructions, the names are
    // NUL-terminated, and `opts` (with its log buffer) outlives the call.
    let prog = unsafe {
        libbpf_sys::bpf_prog_load(
            libbpf_sys::BPF_PROG_TYPE_XDP,
            PROGRAM_NAME_C.as_ptr(),
            LICENSE_C.as_ptr(),
            insns.as_ptr(),
            insns.len() as _,
            &mut opts,
        )
    };
    if prog < 0 {
        let verifier: Vec<u8> = log
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        debug!(ifname, verifier = %String::from_utf8_lossy(&verifier), "XDP program refused");
        return Err(DriverError::os(
            format!("loading the XDP program for '{ifname}'"),
            libbpf_err(prog),
        ));
    }
    let prog = owned(prog);
    let flags = match mode {
        XdpAttachMode::Auto => 0,
        XdpAttachMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
        XdpAttachMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
    };
    // SAFETY: an all-zero bpf_link_create_opts is its documented default.
    let mut lopts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
    lopts.sz = std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _;
    lopts.flags = flags;
    // SAFETY: `lopts` is a live, correctly sized option struct.
    let link = unsafe {
        libbpf_sys::bpf_link_create(
            prog.as_raw_fd(),
            ifindex as i32,
            libbpf_sys::BPF_XDP,
            &lopts,
        )
    };
    if link < 0 {
        let err = libbpf_err(link);
        return Err(match err.raw_os_error() {
            Some(libc::EBUSY) | Some(libc::EEXIST) => match attached(ifindex) {
                Some(p) if p.name.as_deref() == Some(PROGRAM_NAME) => DriverError::InterfaceBusy {
                    ifname: ifname.into(),
                },
                other => DriverError::XdpProgramPresent {
                    ifname: ifname.into(),
                    program: other.map_or_else(
                        || "an XDP program".to_string(),
                        |p| {
                            format!(
                                "XDP program {} ({}, {} mode)",
                                p.id,
                                p.name.as_deref().unwrap_or("?"),
                                p.mode
                            )
                        },
                    ),
                },
            },
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) if mode == XdpAttachMode::Native => {
                DriverError::XdpModeUnsupported {
                    ifname: ifname.into(),
                    mode: "native".into(),
                    detail: err.to_string(),
                }
            }
            _ => DriverError::os(format!("attaching the XDP program to '{ifname}'"), err),
        });
    }
    Ok((owned(link), prog, map))
}

impl XskProgram {
    /// The program of interface `ifname` (index `ifindex`, `max_queues`
    /// receive queues) in this thread's network namespace: attached now in
    /// `mode` if no queue of this process has it yet, else shared.
    pub fn acquire(
        ifname: &str,
        ifindex: u32,
        max_queues: u32,
        mode: XdpAttachMode,
    ) -> DriverResult<Self> {
        let netns = netns_id();
        let mut reg = registry();
        if let Some(e) = reg
            .iter_mut()
            .find(|e| e.netns == netns && e.ifindex == ifindex)
        {
            if !modes_agree(e.requested, mode, e.mode) {
                return Err(DriverError::InvalidConfig(format!(
                    "'{ifname}' already runs its XDP program in {} mode for other queues of this process",
                    e.mode
                )));
            }
            e.users += 1;
            return Ok(Self {
                netns,
                ifindex,
                queue: None,
                mode: e.mode,
            });
        }
        let (link, prog, map) = load(ifname, ifindex, max_queues, mode)?;
        let attached_mode = attached(ifindex).map_or(
            match mode {
                XdpAttachMode::Generic => "generic",
                _ => "native",
            },
            |p| p.mode,
        );
        info!(
            ifname,
            mode = attached_mode,
            queues = max_queues,
            "XDP program attached (one for every queue of the interface)"
        );
        reg.push(Entry {
            netns,
            ifindex,
            ifname: ifname.into(),
            requested: mode,
            mode: attached_mode,
            users: 1,
            link,
            _prog: prog,
            map,
            max_queues: max_queues.max(1),
        });
        Ok(Self {
            netns,
            ifindex,
            queue: None,
            mode: attached_mode,
        })
    }

    /// How the program is attached: `native`, `generic` or `offload`.
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    /// Puts `socket` (a bound AF_XDP socket) into the map at `queue`: the
    /// queue's frames go to it from now on.
    pub fn insert(&mut self, queue: u32, socket: RawFd) -> DriverResult<()> {
        let reg = registry();
        let e = reg
            .iter()
            .find(|e| e.netns == self.netns && e.ifindex == self.ifindex)
            .ok_or_else(|| DriverError::InvalidConfig("the XDP program went away".into()))?;
        if queue >= e.max_queues {
            return Err(DriverError::InvalidConfig(format!(
                "queue {queue} is beyond the {} queues the XSK map of '{}' was made for",
                e.max_queues, e.ifname
            )));
        }
        let key = queue;
        let value = socket as u32;
        // SAFETY: key and value are 4-byte values living across the call,
        // matching the map's key and value sizes.
        let ret = unsafe {
            libbpf_sys::bpf_map_update_elem(
                e.map.as_raw_fd(),
                (&raw const key).cast(),
                (&raw const value).cast(),
                0,
            )
        };
        if ret < 0 {
            return Err(DriverError::os(
                format!(
                    "adding queue {queue}'s socket to the XSK map of '{}'",
                    e.ifname
                ),
                libbpf_err(ret),
            ));
        }
        self.queue = Some(queue);
        Ok(())
    }
}

impl Drop for XskProgram {
    fn drop(&mut self) {
        let mut reg = registry();
        let Some(at) = reg
            .iter()
            .position(|e| e.netns == self.netns && e.ifindex == self.ifindex)
        else {
            return;
        };
        if let Some(q) = self.queue {
            let key = q;
            // SAFETY: a 4-byte key living across the call. (The kernel also
            // drops a closed socket from the map; this makes it immediate.)
            let _ = unsafe {
                libbpf_sys::bpf_map_delete_elem(reg[at].map.as_raw_fd(), (&raw const key).cast())
            };
        }
        reg[at].users -= 1;
        if reg[at].users == 0 {
            let e = reg.swap_remove(at);
            debug!(ifname = %e.ifname, link = e.link.as_raw_fd(), "detaching the XDP program");
            drop(e);
            info!(
                ifindex = self.ifindex,
                "XDP program detached (last queue closed)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_six_slots_ending_in_exit() {
        let p = program(7);
        assert_eq!(p.len(), 6);
        assert_eq!(
            (p[0].code, p[0].dst_reg(), p[0].src_reg(), p[0].off),
            (0x61, 2, 1, 16)
        );
        assert_eq!(
            (p[1].code, p[1].dst_reg(), p[1].src_reg(), p[1].imm),
            (0x18, 1, 1, 7)
        );
        assert_eq!((p[3].dst_reg(), p[3].imm), (3, XDP_PASS));
        assert_eq!((p[4].code, p[4].imm), (0x85, 51));
        assert_eq!(p[5].code, 0x95);
    }

    #[test]
    fn explicit_modes_must_match_what_is_attached() {
        assert!(modes_agree(
            XdpAttachMode::Auto,
            XdpAttachMode::Auto,
            "native"
        ));
        assert!(modes_agree(
            XdpAttachMode::Native,
            XdpAttachMode::Auto,
            "native"
        ));
        assert!(modes_agree(
            XdpAttachMode::Auto,
            XdpAttachMode::Native,
            "native"
        ));
        assert!(!modes_agree(
            XdpAttachMode::Auto,
            XdpAttachMode::Generic,
            "native"
        ));
        assert!(!modes_agree(
            XdpAttachMode::Native,
            XdpAttachMode::Generic,
            "native"
        ));
        assert!(modes_agree(
            XdpAttachMode::Generic,
            XdpAttachMode::Generic,
            "generic"
        ));
    }
}
