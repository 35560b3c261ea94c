//! Which queue of a multi-queue TAP the kernel hands each frame to.
//!
//! Left to itself, the TUN driver remembers for each flow the queue its
//! last frame was written from and answers on that queue. That fails the
//! stack in two ways: the entry is made only after the frame was delivered,
//! and the kernel answers a SYN synchronously inside the write, so the
//! first reply of every connection the stack opens lands on a queue picked
//! by a hash no one outside the kernel can compute (its seed is random);
//! and entries expire after three idle seconds, after which the same
//! happens to any packet of the flow. A worker that gets a segment of
//! another worker's connection answers it with a RST, which also moves the
//! flow to the wrong queue for good.
//!
//! So a multi-queue TAP gets a steering program (`TUNSETSTEERINGEBPF`, a
//! socket filter whose return value, modulo the queue count, is the queue):
//! TCP and UDP by a symmetric hash of addresses and ports that
//! [`FlowSteering::queue_of`] computes the same way, so a connection the
//! stack opens picks a local port whose packets land on its own worker;
//! other IP traffic by addresses; ARP and ICMPv6 (neighbour discovery) to
//! the queue that last asked for an address, read from a one-entry map the
//! driver sets before it sends an ARP request or a neighbour solicitation,
//! so the answer reaches the worker that waits for it.
//!
//! The kernel numbers a device's queues in the order their fds attached,
//! and that number is what the program's answer picks. So the first queue
//! of a device to open attaches every queue's fd, in order, and each queue
//! takes its own from there. One program and map serve every queue; the
//! last queue to close detaches the program, so a later user of a
//! persistent TAP finds the device as it was.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};

use crate::error::{DriverError, DriverResult};

/// Where a flow's packets arrive on a steered multi-queue device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSteering {
    /// This queue.
    pub queue: u32,
    /// Queues of the device.
    pub queues: u32,
}

const PROTO_TCP: u8 = 6;
/// The 32-bit golden ratio, the hash's multiplier.
const MIX: u32 = 0x9e37_79b1;
const PROTO_UDP: u8 = 17;

fn addr_words(a: IpAddr) -> u32 {
    match a {
        IpAddr::V4(a) => u32::from_be_bytes(a.octets()),
        IpAddr::V6(a) => a
            .octets()
            .chunks_exact(4)
            .fold(0, |h, w| h ^ u32::from_be_bytes([w[0], w[1], w[2], w[3]])),
    }
}

impl FlowSteering {
    /// The queue the device gives packets of the flow between `a` and `b`
    /// (either way round) of IP protocol `proto`, as the steering program
    /// computes it for unfragmented packets.
    pub fn queue_of(&self, a: SocketAddr, b: SocketAddr, proto: u8) -> u32 {
        let mut h = addr_words(a.ip()) ^ addr_words(b.ip());
        if proto == PROTO_TCP || proto == PROTO_UDP {
            h ^= u32::from(a.port() ^ b.port());
        }
        // Multiplicative mixing: Linux picks connect() ports of one parity,
        // so the low bits alone would put every such flow on one queue.
        (h.wrapping_mul(MIX) >> 16) % self.queues.max(1)
    }

    /// True when the flow lands on this queue.
    pub fn is_ours(&self, local: SocketAddr, remote: SocketAddr, proto: u8) -> bool {
        self.queue_of(local, remote, proto) == self.queue
    }
}

// eBPF encoding (linux/bpf.h).
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const ALU: u8 = 0x04;
const ALU64: u8 = 0x07;
const JMP: u8 = 0x05;
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
const DW: u8 = 0x18;
const IMM: u8 = 0x00;
const ABS: u8 = 0x20;
const IND: u8 = 0x40;
const MEM: u8 = 0x60;
const K: u8 = 0x00;
const X: u8 = 0x08;
const ADD: u8 = 0x00;
const MUL: u8 = 0x20;
const AND: u8 = 0x50;
const LSH: u8 = 0x60;
const RSH: u8 = 0x70;
const XOR: u8 = 0xa0;
const MOV: u8 = 0xb0;
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JNE: u8 = 0x50;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
const PSEUDO_MAP_FD: u8 = 1;
const FUNC_MAP_LOOKUP_ELEM: i32 = 1;

/// One instruction, `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// A program under construction, with forward jumps to named places.
#[derive(Default)]
struct Asm {
    code: Vec<Insn>,
    labels: HashMap<&'static str, usize>,
    jumps: Vec<(usize, &'static str)>,
}

impl Asm {
    fn op(&mut self, i: Insn) -> &mut Self {
        self.code.push(i);
        self
    }
    fn mov_reg(&mut self, dst: u8, src: u8) -> &mut Self {
        self.op(insn(ALU64 | MOV | X, dst, src, 0, 0))
    }
    fn alu_imm(&mut self, op: u8, dst: u8, imm: i32) -> &mut Self {
        self.op(insn(ALU64 | op | K, dst, 0, 0, imm))
    }
    fn xor_reg(&mut self, dst: u8, src: u8) -> &mut Self {
        self.op(insn(ALU64 | XOR | X, dst, src, 0, 0))
    }
    /// r0 = the packet's big-endian value at `at` (`size` B, H or W).
    fn load_abs(&mut self, size: u8, at: i32) -> &mut Self {
        self.op(insn(LD | ABS | size, 0, 0, 0, at))
    }
    fn jump_if(&mut self, op: u8, reg: u8, imm: i32, to: &'static str) -> &mut Self {
        self.jumps.push((self.code.len(), to));
        self.op(insn(JMP | op | K, reg, 0, 0, imm))
    }
    fn goto(&mut self, to: &'static str) -> &mut Self {
        self.jump_if(JA, 0, 0, to)
    }
    fn label(&mut self, name: &'static str) -> &mut Self {
        self.labels.insert(name, self.code.len());
        self
    }
    fn exit(&mut self) -> &mut Self {
        self.op(insn(JMP | EXIT, 0, 0, 0, 0))
    }
    fn finish(mut self) -> Vec<Insn> {
        for (at, to) in std::mem::take(&mut self.jumps) {
            let target = self.labels[to];
            self.code[at].off = (target as isize - at as isize - 1) as i16;
        }
        self.code
    }
}

/// The steering program, its map (one u32: the queue that asked last) at
/// `map_fd`. Registers: r6 the packet (for the packet loads), r7 the hash,
/// r8 the L4 protocol, r9 the IPv4 header length.
fn program(map_fd: i32) -> Vec<Insn> {
    let mut a = Asm::default();
    a.mov_reg(6, 1)
        .load_abs(H, 12)
        .jump_if(JEQ, 0, 0x0800, "ipv4")
        .jump_if(JEQ, 0, 0x86dd, "ipv6")
        .goto("asked");
    a.label("ipv4")
        .load_abs(W, 26)
        .mov_reg(7, 0)
        .load_abs(W, 30)
        .xor_reg(7, 0)
        .load_abs(B, 23)
        .mov_reg(8, 0)
        // A fragment has no ports (or all of them): addresses only.
        .load_abs(H, 20)
        .alu_imm(AND, 0, 0x3fff)
        .jump_if(JNE, 0, 0, "fold")
        .jump_if(JEQ, 8, i32::from(PROTO_TCP), "ports4")
        .jump_if(JEQ, 8, i32::from(PROTO_UDP), "ports4")
        .goto("fold");
    a.label("ports4")
        .load_abs(B, 14)
        .alu_imm(AND, 0, 0x0f)
        .alu_imm(LSH, 0, 2)
        .mov_reg(9, 0)
        .op(insn(LD | IND | W, 0, 9, 0, 14))
        .goto("ports");
    a.label("ipv6")
        .load_abs(B, 20)
        .mov_reg(8, 0)
        .jump_if(JEQ, 8, 58, "asked")
        .load_abs(W, 22)
        .mov_reg(7, 0);
    for at in [26, 30, 34, 38, 42, 46, 50] {
        a.load_abs(W, at).xor_reg(7, 0);
    }
    a.jump_if(JEQ, 8, i32::from(PROTO_TCP), "ports6")
        .jump_if(JEQ, 8, i32::from(PROTO_UDP), "ports6")
        .goto("fold");
    a.label("ports6").load_abs(W, 54);
    // r0 holds source port << 16 | destination port: fold in their xor.
    a.label("ports")
        .mov_reg(1, 0)
        .alu_imm(RSH, 1, 16)
        .alu_imm(AND, 0, 0xffff)
        .xor_reg(0, 1)
        .xor_reg(7, 0);
    // The top 16 bits of the 32-bit product with MIX.
    a.label("fold")
        .mov_reg(0, 7)
        .op(insn(ALU | MUL | K, 0, 0, 0, MIX as i32))
        .alu_imm(RSH, 0, 16)
        .exit();
    a.label("asked")
        .op(insn(ST | MEM | W, 10, 0, -4, 0))
        .mov_reg(2, 10)
        .alu_imm(ADD, 2, -4)
        .op(insn(LD | DW | IMM, 1, PSEUDO_MAP_FD, 0, map_fd))
        .op(insn(0, 0, 0, 0, 0))
        .op(insn(JMP | CALL, 0, 0, 0, FUNC_MAP_LOOKUP_ELEM))
        .jump_if(JEQ, 0, 0, "none")
        .op(insn(LDX | MEM | W, 0, 0, 0, 0))
        .exit();
    a.label("none").alu_imm(MOV, 0, 0).exit();
    a.finish()
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const MAP_TYPE_ARRAY: u32 = 2;
const PROG_TYPE_SOCKET_FILTER: u32 = 1;
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;

/// `union bpf_attr`, as bytes: every command reads its leading fields and
/// wants the rest zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn u32_at(&mut self, at: usize, v: u32) -> &mut Self {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64_at(&mut self, at: usize, v: u64) -> &mut Self {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, 8-aligned, zero-padded bpf_attr of the size
    // passed; every pointer stored in it points at memory the caller keeps
    // alive for this call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the bpf syscall returned a new fd that nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// The program, the map and the queue fds of one device.
#[derive(Debug)]
pub(crate) struct Steering {
    ifname: String,
    queues: u32,
    map: OwnedFd,
    _prog: OwnedFd,
    /// Queue fds, attached in order, until their queue takes them.
    fds: Mutex<Vec<Option<OwnedFd>>>,
}

fn registry() -> &'static Mutex<HashMap<String, Weak<Steering>>> {
    static REGISTRY: std::sync::OnceLock<Mutex<HashMap<String, Weak<Steering>>>> =
        std::sync::OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

fn set_steering(tap: &OwnedFd, prog: i32) -> io::Result<()> {
    let fd: libc::c_int = prog;
    // SAFETY: TUNSETSTEERINGEBPF reads one int (a program fd, or -1 to
    // detach) through the pointer, which points at a live local.
    let r = unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETSTEERINGEBPF, &raw const fd) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn load(ifname: &str) -> DriverResult<(OwnedFd, OwnedFd)> {
    let err = |what: &str| {
        let what = format!("{what} for the multi-queue TAP '{ifname}'");
        move |e| DriverError::os(what, e)
    };
    let mut attr = Attr::new();
    attr.u32_at(0, MAP_TYPE_ARRAY)
        .u32_at(4, 4)
        .u32_at(8, 4)
        .u32_at(12, 1);
    let map = owned(bpf(BPF_MAP_CREATE, &mut attr).map_err(err("creating the steering map"))?);
    let insns = program(map.as_raw_fd());
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = Attr::new();
    attr.u32_at(0, PROG_TYPE_SOCKET_FILTER)
        .u32_at(4, insns.len() as u32)
        .u64_at(8, insns.as_ptr() as u64)
        .u64_at(16, license.as_ptr() as u64)
        .u32_at(24, 1)
        .u32_at(28, log.len() as u32)
        .u64_at(32, log.as_mut_ptr() as u64);
    let prog = bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        DriverError::os(
            format!(
                "loading the steering program for the multi-queue TAP '{ifname}' (verifier: {})",
                String::from_utf8_lossy(&log[..end]).trim()
            ),
            e,
        )
    })?;
    Ok((map, owned(prog)))
}

impl Steering {
    /// Queue `queue`'s fd of multi-queue TAP `ifname` of `queues` queues,
    /// and the device's steering. The first queue to ask attaches all the
    /// fds with `open`, in queue order, and the program through queue 0.
    pub(crate) fn queue_fd(
        ifname: &str,
        queues: u32,
        queue: u32,
        mut open: impl FnMut() -> DriverResult<OwnedFd>,
    ) -> DriverResult<(OwnedFd, Arc<Self>)> {
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        let s = match reg.get(ifname).and_then(Weak::upgrade) {
            Some(s) if s.queues == queues => s,
            Some(s) => {
                return Err(DriverError::InvalidConfig(format!(
                    "TAP '{ifname}' is open with {} queues here already, not {queues}",
                    s.queues
                )));
            }
            None => {
                let fds = (0..queues)
                    .map(|_| open().map(Some))
                    .collect::<DriverResult<Vec<_>>>()?;
                let (map, prog) = load(ifname)?;
                let first = fds[0].as_ref().expect("queue 0 was just opened");
                set_steering(first, prog.as_raw_fd()).map_err(|e| {
                    DriverError::os(
                        format!("attaching the steering program to the multi-queue TAP '{ifname}'"),
                        e,
                    )
                })?;
                let s = Arc::new(Self {
                    ifname: ifname.into(),
                    queues,
                    map,
                    _prog: prog,
                    fds: Mutex::new(fds),
                });
                reg.insert(ifname.into(), Arc::downgrade(&s));
                s
            }
        };
        let fd = s
            .fds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(queue as usize)
            .and_then(Option::take)
            .ok_or_else(|| {
                DriverError::InvalidConfig(format!(
                    "queue {queue} of TAP '{ifname}' is open here already"
                ))
            })?;
        Ok((fd, s))
    }

    /// Sends ARP and neighbour discovery answers to `queue` from now on.
    pub(crate) fn asked_by(&self, queue: u32) -> io::Result<()> {
        let key: u32 = 0;
        let mut attr = Attr::new();
        attr.u32_at(0, self.map.as_raw_fd() as u32)
            .u64_at(8, (&raw const key) as u64)
            .u64_at(16, (&raw const queue) as u64);
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }

    /// Drops queue `tap`'s hold; the last one detaches the program from the
    /// device through its own fd, before that fd closes.
    pub(crate) fn release(this: Arc<Self>, tap: &OwnedFd) {
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&this) == 1 {
            reg.remove(&this.ifname);
            let _ = set_steering(tap, -1);
        }
        drop(this);
    }

    /// Queues of the device.
    pub(crate) fn queues(&self) -> u32 {
        self.queues
    }
}

/// True for a frame that asks for an address: an ARP request, or an IPv6
/// neighbour solicitation (ICMPv6 type 135 right after the IPv6 header).
pub(crate) fn asks_for_address(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x06]) => frame.get(20..22) == Some(&[0, 1]),
        Some([0x86, 0xdd]) => frame.get(20) == Some(&58) && frame.get(54) == Some(&135),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_hash_is_symmetric_and_spreads_ports_over_queues() {
        let s = FlowSteering {
            queue: 0,
            queues: 2,
        };
        let (a, b) = (sa("10.77.0.1:40000"), sa("10.77.0.2:7"));
        assert_eq!(s.queue_of(a, b, 6), s.queue_of(b, a, 6));
        let (a6, b6) = (sa("[fd77::1]:40000"), sa("[fd77::2]:7"));
        assert_eq!(s.queue_of(a6, b6, 17), s.queue_of(b6, a6, 17));
        let on_zero = (40000..40100)
            .filter(|&p| s.queue_of(sa(&format!("10.77.0.1:{p}")), b, 6) == 0)
            .count();
        assert!((30..=70).contains(&on_zero), "{on_zero} of 100 on queue 0");
        // Linux connects from even ports only: they spread too.
        let even = (40000..40200)
            .step_by(2)
            .filter(|&p| s.queue_of(sa(&format!("10.77.0.2:{p}")), a, 6) == 0)
            .count();
        assert!(
            (30..=70).contains(&even),
            "{even} of 100 even ports on queue 0"
        );
        // Other protocols go by addresses alone.
        assert_eq!(
            s.queue_of(sa("10.77.0.1:1"), b, 1),
            s.queue_of(sa("10.77.0.1:2"), b, 1)
        );
        let one = FlowSteering {
            queue: 0,
            queues: 1,
        };
        assert!(one.is_ours(a, b, 6));
    }

    #[test]
    fn the_program_resolves_every_jump_inside_itself() {
        let p = program(3);
        assert!(p.len() < 100);
        for (i, ins) in p.iter().enumerate() {
            let jump = ins.code & 0x07 == JMP && ins.code & 0xf0 != CALL && ins.code & 0xf0 != EXIT;
            if jump {
                let to = i as isize + 1 + ins.off as isize;
                assert!((0..p.len() as isize).contains(&to), "jump at {i} to {to}");
            }
        }
        assert_eq!(p.last().map(|i| i.code), Some(JMP | EXIT));
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }

    #[test]
    fn address_requests_are_recognised() {
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        arp[20..22].copy_from_slice(&[0, 1]);
        assert!(asks_for_address(&arp));
        arp[21] = 2;
        assert!(!asks_for_address(&arp), "a reply asks nothing");
        let mut ns = vec![0u8; 86];
        ns[12..14].copy_from_slice(&[0x86, 0xdd]);
        ns[20] = 58;
        ns[54] = 135;
        assert!(asks_for_address(&ns));
        ns[54] = 128;
        assert!(!asks_for_address(&ns), "an echo request asks nothing");
        assert!(!asks_for_address(&[0u8; 10]));
    }
}
