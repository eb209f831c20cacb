//! The bpf(2) calls the probe makes, as raw syscalls (no libbpf; the packaged binary
//! links against glibc 2.28, which has no wrapper anyway). Each returns an owned
//! descriptor or the kernel's errno.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;

pub const MAP_TYPE_ARRAY: u32 = 2;
pub const MAP_TYPE_RINGBUF: u32 = 27;
const PROG_TYPE_TRACING: u32 = 26;
/// BTF tracepoints: used by the tests to run the programs past the verifier.
#[cfg(test)]
pub const TRACE_RAW_TP: u32 = 23;
pub const TRACE_FENTRY: u32 = 24;
pub const TRACE_FEXIT: u32 = 25;

/// `union bpf_attr`, as 8-byte words so that the pointer fields are aligned. 128 bytes
/// cover every field used here; the kernel accepts a shorter attr whose tail it zeroes,
/// and checks that bytes it does not know are zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn u32(&mut self, at: usize, v: u32) -> &mut Self {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, at: usize, v: u64) -> &mut Self {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

/// bpf(cmd, attr): a descriptor on success.
fn bpf_fd(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    let rc = bpf(cmd, attr)?;
    let fd = i32::try_from(rc).map_err(|_| io::Error::other("bpf(2) returned no descriptor"))?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, writable 128-byte buffer for the duration of the call,
    // and its size is passed with it; the kernel reads (and for some commands writes)
    // only within that size. Pointers inside it are set by the callers to buffers they
    // keep alive across this call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// BPF_MAP_CREATE.
pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.u32(0, map_type)
        .u32(4, key_size)
        .u32(8, value_size)
        .u32(12, max_entries);
    bpf_fd(BPF_MAP_CREATE, &mut attr)
}

/// BPF_MAP_LOOKUP_ELEM of an array map with u32 keys and u64 values.
pub fn lookup_u64(map: &OwnedFd, key: u32) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut value = 0u64;
    let mut attr = Attr::new();
    attr.u32(0, u32::try_from(map.as_raw_fd()).unwrap_or(u32::MAX))
        .u64(8, std::ptr::addr_of!(key) as u64)
        .u64(16, std::ptr::addr_of_mut!(value) as u64);
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
    Ok(value)
}

/// A program to load: its instructions (8 bytes each) and where it attaches.
pub struct ProgLoad<'a> {
    pub insns: &'a [u64],
    pub name: &'a str,
    pub attach_type: u32,
    pub attach_btf_id: u32,
}

/// BPF_PROG_LOAD of a tracing program; on refusal, the verifier's log (its last
/// lines) is in the error.
pub fn prog_load(p: &ProgLoad<'_>) -> io::Result<OwnedFd> {
    // The instructions of this file's programs are GPL-licensed as the kernel sees them
    // (docs/design.md, "IPv6": why the probe declares GPL).
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut name = [0u8; 16];
    let len = p.name.len().min(15);
    name[..len].copy_from_slice(&p.name.as_bytes()[..len]);
    let mut attr = Attr::new();
    attr.u32(0, PROG_TYPE_TRACING)
        .u32(4, u32::try_from(p.insns.len()).unwrap_or(u32::MAX))
        .u64(8, p.insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1)
        .u32(28, u32::try_from(log.len()).unwrap_or(0))
        .u64(32, log.as_mut_ptr() as u64)
        .u32(68, p.attach_type)
        .u32(108, p.attach_btf_id);
    attr.0[48..64].copy_from_slice(&name);
    match bpf_fd(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            if tail.is_empty() {
                Err(e)
            } else {
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Err(io::Error::new(
                    e.kind(),
                    format!("{e}; verifier: {}", tail.join(" | ")),
                ))
            }
        }
    }
}

/// BPF_RAW_TRACEPOINT_OPEN with no name: attaches a tracing program at the function
/// it was loaded for. The returned link detaches when closed.
pub fn attach(prog: &OwnedFd) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let mut attr = Attr::new();
    attr.u32(8, u32::try_from(prog.as_raw_fd()).unwrap_or(u32::MAX));
    bpf_fd(BPF_RAW_TRACEPOINT_OPEN, &mut attr)
}
