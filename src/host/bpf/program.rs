//! The probe's programs, assembled here instruction by instruction (docs/design.md,
//! "IPv6": why no compiler and no ELF object). Four small programs, one per hook:
//!
//! - at the entry of `inet6_rtm_deladdr` and of `addrconf_del_ifaddr` (fentry): one
//!   [`super::record`] entry record (kind, tgid, tid, the socket's network namespace,
//!   time, `comm`, and the request's bytes: the netlink message, or the `in6_ifreq`);
//! - at their return (fexit): one exit record with the return value, so that a request
//!   the kernel refused (no such address) is not taken for the remover of a later one.
//!
//! A record the ring has no room for is counted in the `lost` array map instead.
//!
//! The instructions as loaded into the kernel are offered under the GPL-2.0 as well as
//! the crate's license: the kernel lets only GPL-compatible programs call the helpers
//! used here (`bpf_probe_read_kernel`, `bpf_probe_read_user`).

use super::record::{self, Hook};

// Helper ids (include/uapi/linux/bpf.h, `___BPF_FUNC_MAPPER`).
const MAP_LOOKUP_ELEM: i32 = 1;
const KTIME_GET_NS: i32 = 5;
const GET_CURRENT_PID_TGID: i32 = 14;
const GET_CURRENT_COMM: i32 = 16;
const PROBE_READ_USER: i32 = 112;
const PROBE_READ_KERNEL: i32 = 113;
const RINGBUF_RESERVE: i32 = 131;
const RINGBUF_SUBMIT: i32 = 132;

// Registers.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R6: u8 = 6;
const R7: u8 = 7;
const R10: u8 = 10;

/// Byte offsets, found in the running kernel's BTF, of what the entry programs follow
/// to the request's network namespace.
#[derive(Debug, Clone, Copy)]
pub struct Offsets {
    /// `sk_buff.sk`
    pub skb_sk: i32,
    /// `sock.__sk_common.skc_net.net`
    pub sock_net: i32,
    /// `net.ns.inum`
    pub net_inum: i32,
}

/// A tiny assembler: instructions as `u64` words (the kernel's `struct bpf_insn`,
/// little end first on the hosts enisync supports), with forward jumps to labels.
struct Asm {
    insns: Vec<u64>,
    /// (instruction index, label) of jumps to patch.
    fixups: Vec<(usize, usize)>,
    labels: Vec<Option<usize>>,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let b = [code, dst | (src << 4)];
    let off = off.to_le_bytes();
    let imm = imm.to_le_bytes();
    u64::from_le_bytes([b[0], b[1], off[0], off[1], imm[0], imm[1], imm[2], imm[3]])
}

fn off16(v: i32) -> i16 {
    i16::try_from(v).unwrap_or(i16::MAX)
}

impl Asm {
    fn new() -> Self {
        Self {
            insns: Vec::new(),
            fixups: Vec::new(),
            labels: Vec::new(),
        }
    }
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.insns.len());
    }
    fn push(&mut self, i: u64) -> &mut Self {
        self.insns.push(i);
        self
    }
    fn mov_imm(&mut self, dst: u8, imm: i32) -> &mut Self {
        self.push(insn(0xb7, dst, 0, 0, imm))
    }
    fn mov(&mut self, dst: u8, src: u8) -> &mut Self {
        self.push(insn(0xbf, dst, src, 0, 0))
    }
    fn add_imm(&mut self, dst: u8, imm: i32) -> &mut Self {
        self.push(insn(0x07, dst, 0, 0, imm))
    }
    fn rsh_imm(&mut self, dst: u8, imm: i32) -> &mut Self {
        self.push(insn(0x77, dst, 0, 0, imm))
    }
    fn ldx_dw(&mut self, dst: u8, src: u8, off: i32) -> &mut Self {
        self.push(insn(0x79, dst, src, off16(off), 0))
    }
    fn stx_dw(&mut self, dst: u8, off: i32, src: u8) -> &mut Self {
        self.push(insn(0x7b, dst, src, off16(off), 0))
    }
    fn stx_w(&mut self, dst: u8, off: i32, src: u8) -> &mut Self {
        self.push(insn(0x63, dst, src, off16(off), 0))
    }
    fn st_w(&mut self, dst: u8, off: i32, imm: i32) -> &mut Self {
        self.push(insn(0x62, dst, 0, off16(off), imm))
    }
    fn st_dw(&mut self, dst: u8, off: i32, imm: i32) -> &mut Self {
        self.push(insn(0x7a, dst, 0, off16(off), imm))
    }
    /// `lock *(u64 *)(dst + off) += src`
    fn atomic_add_dw(&mut self, dst: u8, off: i32, src: u8) -> &mut Self {
        self.push(insn(0xdb, dst, src, off16(off), 0))
    }
    /// Loads a map's descriptor (BPF_PSEUDO_MAP_FD); the kernel replaces it with the map.
    fn ld_map(&mut self, dst: u8, fd: i32) -> &mut Self {
        self.push(insn(0x18, dst, 1, 0, fd))
            .push(insn(0, 0, 0, 0, 0))
    }
    fn call(&mut self, helper: i32) -> &mut Self {
        self.push(insn(0x85, 0, 0, 0, helper))
    }
    fn exit(&mut self) -> &mut Self {
        self.push(insn(0x95, 0, 0, 0, 0))
    }
    fn jump(&mut self, code: u8, dst: u8, imm: i32, label: usize) -> &mut Self {
        self.fixups.push((self.insns.len(), label));
        self.push(insn(code, dst, 0, 0, imm))
    }
    fn jeq_imm(&mut self, dst: u8, imm: i32, label: usize) -> &mut Self {
        self.jump(0x15, dst, imm, label)
    }
    fn jne_imm(&mut self, dst: u8, imm: i32, label: usize) -> &mut Self {
        self.jump(0x55, dst, imm, label)
    }
    fn ja(&mut self, label: usize) -> &mut Self {
        self.jump(0x05, 0, 0, label)
    }
    fn finish(mut self) -> Vec<u64> {
        for &(at, label) in &self.fixups {
            let target = self.labels[label].unwrap_or(at + 1);
            let delta = i64::try_from(target).unwrap_or(0) - i64::try_from(at).unwrap_or(0) - 1;
            let off = i16::try_from(delta).unwrap_or(0).to_le_bytes();
            let mut bytes = self.insns[at].to_le_bytes();
            bytes[2] = off[0];
            bytes[3] = off[1];
            self.insns[at] = u64::from_le_bytes(bytes);
        }
        self.insns
    }
}

fn size(v: usize) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Reserves a record in the ring (into r7) and fills the common head; a full ring
/// counts one loss and ends the program. Expects the context in r6.
fn head(a: &mut Asm, ring: i32, lost: i32, hook: Hook, lost_label: usize) {
    a.ld_map(R1, ring)
        .mov_imm(R2, size(record::SIZE))
        .mov_imm(R3, 0)
        .call(RINGBUF_RESERVE)
        .jeq_imm(R0, 0, lost_label)
        .mov(R7, R0)
        .st_w(R7, size(record::KIND), i32::from(hook as u8))
        .call(GET_CURRENT_PID_TGID)
        .stx_w(R7, size(record::TID), R0)
        .rsh_imm(R0, 32)
        .stx_w(R7, size(record::TGID), R0)
        .call(KTIME_GET_NS)
        .stx_dw(R7, size(record::KTIME), R0)
        .mov(R1, R7)
        .add_imm(R1, size(record::COMM))
        .mov_imm(R2, size(record::COMM_LEN))
        .call(GET_CURRENT_COMM)
        // Everything else starts zeroed: the ring's memory is not.
        .st_w(R7, size(record::NETNS), 0)
        .st_dw(R7, size(record::RET), 0)
        .st_w(R7, size(record::READ), 0)
        .st_w(R7, size(record::NETNS_READ), 0);
    let _ = lost;
}

/// Submits r7 and returns 0; then the lost path: one more in `lost[0]`.
fn tail(a: &mut Asm, lost: i32, lost_label: usize) {
    let out = a.label();
    a.mov(R1, R7)
        .mov_imm(R2, 0)
        .call(RINGBUF_SUBMIT)
        .mov_imm(R0, 0)
        .exit();
    a.bind(lost_label);
    a.st_w(R10, -4, 0)
        .ld_map(R1, lost)
        .mov(R2, R10)
        .add_imm(R2, -4)
        .call(MAP_LOOKUP_ELEM)
        .jeq_imm(R0, 0, out)
        .mov_imm(R1, 1)
        .atomic_add_dw(R0, 0, R1);
    a.bind(out);
    a.mov_imm(R0, 0).exit();
}

/// `probe_read_kernel(record + at, len, r3)`; the result goes to `record + result`.
fn read_into(a: &mut Asm, helper: i32, at: usize, len: usize, result: usize) {
    a.mov(R1, R7)
        .add_imm(R1, size(at))
        .mov_imm(R2, size(len))
        .call(helper)
        .stx_w(R7, size(result), R0);
}

/// Follows pointers from r3 by `steps` (offset, then a read of 8 bytes, except the
/// last read, of 4 bytes, into `NETNS`); any failed read stores its error in
/// `NETNS_READ` and leaves `NETNS` 0.
fn netns(a: &mut Asm, steps: &[i32]) {
    let fail = a.label();
    let done = a.label();
    for (i, &off) in steps.iter().enumerate() {
        let last = i + 1 == steps.len();
        a.add_imm(R3, off)
            .mov(R1, R7)
            .add_imm(R1, size(if last { record::NETNS } else { record::RET }))
            .mov_imm(R2, if last { 4 } else { 8 })
            .call(PROBE_READ_KERNEL)
            .jne_imm(R0, 0, fail);
        if !last {
            a.ldx_dw(R3, R7, size(record::RET));
        }
    }
    a.ja(done);
    a.bind(fail);
    a.stx_w(R7, size(record::NETNS_READ), R0)
        .st_w(R7, size(record::NETNS), 0);
    a.bind(done);
    a.st_dw(R7, size(record::RET), 0);
}

/// The fentry program of `hook` (an entry hook).
pub fn entry(hook: Hook, ring: i32, lost: i32, offsets: Offsets) -> Vec<u64> {
    let mut a = Asm::new();
    let lost_label = a.label();
    a.mov(R6, R1);
    head(&mut a, ring, lost, hook, lost_label);
    match hook {
        Hook::NetlinkEntry | Hook::NetlinkExit => {
            // inet6_rtm_deladdr(skb, nlh, extack): the message's first bytes.
            a.ldx_dw(R3, R6, 8);
            read_into(
                &mut a,
                PROBE_READ_KERNEL,
                record::PAYLOAD,
                record::PAYLOAD_LEN,
                record::READ,
            );
            // skb->sk->__sk_common.skc_net.net->ns.inum
            a.ldx_dw(R3, R6, 0);
            netns(
                &mut a,
                &[offsets.skb_sk, offsets.sock_net, offsets.net_inum],
            );
        }
        Hook::IoctlEntry | Hook::IoctlExit => {
            // addrconf_del_ifaddr(net, arg): arg is the caller's struct in6_ifreq.
            a.ldx_dw(R3, R6, 8);
            read_into(
                &mut a,
                PROBE_READ_USER,
                record::PAYLOAD,
                record::IN6_IFREQ_LEN,
                record::READ,
            );
            a.ldx_dw(R3, R6, 0);
            netns(&mut a, &[offsets.net_inum]);
        }
    }
    tail(&mut a, lost, lost_label);
    a.finish()
}

/// The fexit program of `hook` (an exit hook) of a function of `args` arguments: its
/// return value follows them in the context.
pub fn exit(hook: Hook, ring: i32, lost: i32, args: usize) -> Vec<u64> {
    let mut a = Asm::new();
    let lost_label = a.label();
    a.mov(R6, R1);
    head(&mut a, ring, lost, hook, lost_label);
    a.ldx_dw(R1, R6, size(args * 8))
        .stx_dw(R7, size(record::RET), R1);
    tail(&mut a, lost, lost_label);
    a.finish()
}
