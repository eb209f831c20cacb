//! The IPv6 deletion probe: who asked the kernel to delete an IPv6 address, which the
//! kernel's notifications do not say (docs/design.md, "IPv6").
//!
//! User space deletes an IPv6 address through exactly two kernel functions, both run
//! by the requesting task: `inet6_rtm_deladdr` (an `RTM_DELADDR` netlink request) and
//! `addrconf_del_ifaddr` (`ioctl(SIOCDIFADDR)`). The kernel's own removals (link down
//! or deleted, `disable_ipv6`, DAD, lifetimes) never pass through them. Four tracing
//! programs (fentry and fexit of each; `program.rs`, assembled here) write one record
//! per call into a ring buffer map (`ring.rs`, `record.rs`); the watcher drains it when
//! it reads an IPv6 removal and [`Deletions`] (`attribute.rs`) says who asked.
//!
//! Loading needs BTF (`/sys/kernel/btf/vmlinux`), a kernel with fentry (trampolines),
//! CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), and no lockdown of BPF reads. Anything
//! missing is a [`ProbeError`]: the daemon logs it once, shows it in `status`, and IPv6
//! removals stay held as unknown, as they were without the probe.

use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};

mod attribute;
mod btf;
mod program;
pub mod record;
mod ring;
mod sys;
#[cfg(test)]
mod tests;

pub use attribute::{Attribution, Deletions, WINDOW};
pub use btf::{Btf, BtfError};
use record::Hook;

/// Why an IPv6 removal has no remover without the probe: `inet6_ifa_notify` (net/ipv6/addrconf.c) fills
/// every RTM_NEWADDR/RTM_DELADDR of IPv6 with port id 0, for `ip -6 addr del` as for the
/// kernel's own removals, so the port names nobody.
pub const IPV6_NO_SENDER: &str =
    "IPv6 address notifications carry no sender (the kernel sends them all with port 0)";

/// Data bytes of the ring: about 800 records. Records are written only for IPv6
/// deletion requests (of any namespace) and read at every IPv6 removal; a full ring
/// loses records, which holds the removals of the next [`WINDOW`] as unknown.
const RING_SIZE: usize = 256 * 1024;

/// Most records taken per drain (the ring holds fewer).
const MAX_READ: usize = 4096;

/// Why the probe is not running; the text is the operator's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError(pub String);

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The loaded, attached programs and the ring they write to. Dropping it detaches
/// them (the links close) and frees the maps.
#[derive(Debug)]
pub struct DeletionProbe {
    ring: ring::Ring,
    lost: OwnedFd,
    /// Held for their effect: a closed link detaches its program.
    _links: Vec<OwnedFd>,
    /// What `lost[0]` said at the last drain.
    lost_seen: u64,
}

/// What one drain of the ring found.
#[derive(Debug, Default)]
pub struct Drained {
    pub records: Vec<record::Record>,
    /// Records may be missing: the ring was full (counted by the programs), a record
    /// was still being written or could not be parsed, or the loss counter could not
    /// be read. The text says which.
    pub incomplete: Option<String>,
}

fn why(what: &str, e: impl fmt::Display) -> ProbeError {
    ProbeError(format!("{what}: {e}"))
}

impl DeletionProbe {
    /// Loads and attaches the programs. Fails cleanly (nothing stays attached) on any
    /// kernel that lacks what they need.
    pub fn start() -> Result<Self, ProbeError> {
        let btf = Btf::vmlinux().map_err(|e| why("kernel type information", e))?;
        let (rtm, rtm_params) = btf
            .function("inet6_rtm_deladdr")
            .map_err(|e| why("kernel type information", e))?;
        let (ioctl, ioctl_params) = btf
            .function("addrconf_del_ifaddr")
            .map_err(|e| why("kernel type information", e))?;
        // The programs read these arguments as these types: another signature (a
        // kernel that changed them) is refused rather than misread.
        let want = |params: &[Option<String>], names: &[&str]| {
            params.len() == names.len()
                && params
                    .iter()
                    .zip(names)
                    .all(|(p, n)| n.is_empty() || p.as_deref() == Some(*n))
        };
        if !want(&rtm_params, &["sk_buff", "nlmsghdr", "netlink_ext_ack"]) {
            return Err(ProbeError(format!(
                "inet6_rtm_deladdr has an unexpected signature ({rtm_params:?})"
            )));
        }
        if !want(&ioctl_params, &["net", "void"]) {
            return Err(ProbeError(format!(
                "addrconf_del_ifaddr has an unexpected signature ({ioctl_params:?})"
            )));
        }
        let offset = |outer: &str, path: &[&str]| -> Result<i32, ProbeError> {
            let at = btf
                .offset_of(outer, path)
                .map_err(|e| why("kernel type information", e))?;
            i32::try_from(at).map_err(|e| why("kernel type information", e))
        };
        let offsets = program::Offsets {
            skb_sk: offset("sk_buff", &["sk"])?,
            sock_net: offset("sock", &["__sk_common", "skc_net", "net"])?,
            net_inum: offset("net", &["ns", "inum"])?,
        };
        drop(btf);
        // The kernel's BTF (5 MiB, some 150 000 types) is freed here. It is read into one
        // buffer with an index of where each type starts (btf.rs); when the parser still
        // copied every type (~20 MiB of small allocations), about 8 MiB of them stayed in
        // the heap as resident memory for the daemon's life (BENCHMARKS.md, "Fleet":
        // per-node RSS). Whatever the heap keeps of it now is handed back too.
        // SAFETY: malloc_trim only releases free heap memory; it touches no live
        // allocation and is safe to call at any time from any thread.
        unsafe { libc::malloc_trim(0) };

        let size = u32::try_from(RING_SIZE).unwrap_or(u32::MAX);
        let ring = sys::map_create(sys::MAP_TYPE_RINGBUF, 0, 0, size)
            .map_err(|e| why("creating the ring buffer map (needs CAP_BPF)", e))?;
        let lost = sys::map_create(sys::MAP_TYPE_ARRAY, 4, 8, 1)
            .map_err(|e| why("creating the loss counter map", e))?;
        let (ring_fd, lost_fd) = (ring.as_raw_fd(), lost.as_raw_fd());
        let programs = [
            (
                "enisync_rtm_in",
                Hook::NetlinkEntry,
                rtm,
                program::entry(Hook::NetlinkEntry, ring_fd, lost_fd, offsets),
            ),
            (
                "enisync_ioc_in",
                Hook::IoctlEntry,
                ioctl,
                program::entry(Hook::IoctlEntry, ring_fd, lost_fd, offsets),
            ),
            (
                "enisync_rtm_out",
                Hook::NetlinkExit,
                rtm,
                program::exit(Hook::NetlinkExit, ring_fd, lost_fd, 3),
            ),
            (
                "enisync_ioc_out",
                Hook::IoctlExit,
                ioctl,
                program::exit(Hook::IoctlExit, ring_fd, lost_fd, 2),
            ),
        ];
        let ring =
            ring::Ring::new(ring, RING_SIZE).map_err(|e| why("mapping the ring buffer", e))?;
        let mut links = Vec::new();
        // Exits first: an entry record is then always followed by its exit record.
        for (name, hook, func, insns) in programs.iter().rev() {
            let attach_type = match hook {
                Hook::NetlinkEntry | Hook::IoctlEntry => sys::TRACE_FENTRY,
                Hook::NetlinkExit | Hook::IoctlExit => sys::TRACE_FEXIT,
            };
            let prog = sys::prog_load(&sys::ProgLoad {
                insns,
                name,
                attach_type,
                attach_btf_id: *func,
            })
            .map_err(|e| {
                let hint = if e.raw_os_error() == Some(libc::EPERM) {
                    " (refused: without CAP_BPF and CAP_PERFMON, or on a kernel that does \
                     not attach fentry programs)"
                } else {
                    ""
                };
                why(&format!("loading {name}{hint}"), e)
            })?;
            links.push(sys::attach(&prog).map_err(|e| why(&format!("attaching {name}"), e))?);
        }
        let lost_seen =
            sys::lookup_u64(&lost, 0).map_err(|e| why("reading the loss counter", e))?;
        Ok(Self {
            ring,
            lost,
            _links: links,
            lost_seen,
        })
    }

    /// Every record submitted so far, oldest first. Called after a removal's
    /// notification was read: its request's record, written before the notification
    /// was sent, is among them (or was lost, which `incomplete` then says).
    pub fn drain(&mut self) -> Drained {
        let mut read = self.ring.read(MAX_READ);
        // A record reserved on another CPU is submitted within microseconds: wait for
        // it (up to about a millisecond) rather than call the drain incomplete.
        for _ in 0..100 {
            if !read.busy || read.records.len() >= MAX_READ {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(10));
            let more = self.ring.read(MAX_READ - read.records.len());
            read.records.extend(more.records);
            read.busy = more.busy;
            read.corrupt |= more.corrupt;
        }
        let mut out = Drained::default();
        let mut problems = Vec::new();
        if read.busy {
            problems.push("a record was still being written".to_owned());
        }
        if read.corrupt {
            problems.push("the ring held a record of impossible length".to_owned());
        }
        for raw in &read.records {
            match record::parse(raw) {
                Ok(r) => out.records.push(r),
                Err(e) => problems.push(format!("unreadable record: {e}")),
            }
        }
        match sys::lookup_u64(&self.lost, 0) {
            Ok(n) if n != self.lost_seen => {
                problems.push(format!(
                    "{} records lost (the ring was full)",
                    n - self.lost_seen
                ));
                self.lost_seen = n;
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("reading the loss counter: {e}")),
        }
        if !problems.is_empty() {
            out.incomplete = Some(problems.join("; "));
        }
        out
    }
}

/// The inode of this thread's network namespace, which the programs record as the
/// request's (`net->ns.inum`).
pub fn own_netns() -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    u32::try_from(ino).map_err(std::io::Error::other)
}
