//! One record of the deletion probe's ring, as [`super::program`] writes it, and its
//! bounded parser (fuzzed in `src/fuzz/bpf.rs`).
//!
//! Layout (host byte order; every record is [`SIZE`] bytes):
//!
//! | at  | size | what |
//! |-----|------|------|
//! | 0   | 4    | kind ([`Hook`]) |
//! | 4   | 4    | tgid (the process) |
//! | 8   | 4    | tid (the thread) |
//! | 12  | 4    | inode of the request's network namespace (entries; 0 if unread) |
//! | 16  | 8    | `bpf_ktime_get_ns` (CLOCK_MONOTONIC) |
//! | 24  | 8    | return value (exits; an `int`, so the low 4 bytes) |
//! | 32  | 4    | result of reading the request (entries; 0 = read) |
//! | 36  | 4    | result of reading the namespace (entries; 0 = read) |
//! | 40  | 16   | `comm` |
//! | 56  | 256  | the request: the netlink message's first bytes, or the `in6_ifreq` |

use std::net::Ipv6Addr;

pub const KIND: usize = 0;
pub const TGID: usize = 4;
pub const TID: usize = 8;
pub const NETNS: usize = 12;
pub const KTIME: usize = 16;
pub const RET: usize = 24;
pub const READ: usize = 32;
pub const NETNS_READ: usize = 36;
pub const COMM: usize = 40;
pub const COMM_LEN: usize = 16;
pub const PAYLOAD: usize = 56;
/// Enough for `ip -6 addr del`'s message (header, `ifaddrmsg`, IFA_LOCAL and
/// IFA_ADDRESS take 64 bytes); a longer message is not parsed (its address attribute
/// may lie past what was copied) and its record counts as unreadable.
pub const PAYLOAD_LEN: usize = 256;
/// `struct in6_ifreq`: the address, the prefix length, the interface index.
pub const IN6_IFREQ_LEN: usize = 24;
pub const SIZE: usize = PAYLOAD + PAYLOAD_LEN;

/// Where a record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Hook {
    /// Entry of `inet6_rtm_deladdr` (an `RTM_DELADDR` request).
    NetlinkEntry = 1,
    /// Entry of `addrconf_del_ifaddr` (`ioctl(SIOCDIFADDR)`).
    IoctlEntry = 2,
    /// Return of `inet6_rtm_deladdr`.
    NetlinkExit = 3,
    /// Return of `addrconf_del_ifaddr`.
    IoctlExit = 4,
}

/// What an entry record asked to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub link: u32,
    pub ip: Ipv6Addr,
}

/// What a record says beyond who and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A deletion asked for: in network namespace `netns` (`None` when it could not be
    /// read), of `target` (`None` when the request could not be read or parsed).
    Entry {
        netns: Option<u32>,
        target: Option<Target>,
    },
    /// The function returned `ret` (0: deleted).
    Exit { ret: i64 },
}

/// One parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub hook: Hook,
    pub tgid: u32,
    pub tid: u32,
    /// CLOCK_MONOTONIC, nanoseconds.
    pub ktime: u64,
    pub comm: String,
    pub body: Body,
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record of {0} bytes, expected {SIZE}")]
    Size(usize),
    #[error("unknown record kind {0}")]
    Kind(u32),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(w)
}

/// Parses one record. Only the record's size and kind can refuse it; an entry whose
/// request or namespace could not be read is a record that says so.
pub fn parse(b: &[u8]) -> Result<Record, RecordError> {
    if b.len() != SIZE {
        return Err(RecordError::Size(b.len()));
    }
    let kind = u32_at(b, KIND);
    let hook = match kind {
        1 => Hook::NetlinkEntry,
        2 => Hook::IoctlEntry,
        3 => Hook::NetlinkExit,
        4 => Hook::IoctlExit,
        other => return Err(RecordError::Kind(other)),
    };
    let comm = &b[COMM..COMM + COMM_LEN];
    let end = comm.iter().position(|&c| c == 0).unwrap_or(COMM_LEN);
    let comm = String::from_utf8_lossy(&comm[..end]).into_owned();
    let payload = &b[PAYLOAD..PAYLOAD + PAYLOAD_LEN];
    let read = u32_at(b, READ) == 0;
    let netns = match (u32_at(b, NETNS_READ), u32_at(b, NETNS)) {
        (0, ns) if ns != 0 => Some(ns),
        _ => None,
    };
    let body = match hook {
        Hook::NetlinkEntry => Body::Entry {
            netns,
            target: if read { netlink_target(payload) } else { None },
        },
        Hook::IoctlEntry => Body::Entry {
            netns,
            target: if read { ioctl_target(payload) } else { None },
        },
        // Both functions return `int`: the register's upper half is not theirs to set
        // (x86-64 leaves it undefined), so only the low 32 bits are the value.
        Hook::NetlinkExit | Hook::IoctlExit => Body::Exit {
            ret: i64::from(i32::from_ne_bytes(u32_at(b, RET).to_ne_bytes())),
        },
    };
    Ok(Record {
        hook,
        tgid: u32_at(b, TGID),
        tid: u32_at(b, TID),
        ktime: u64_at(b, KTIME),
        comm,
        body,
    })
}

/// The netlink request, if all of it was copied and it parses.
fn netlink_target(payload: &[u8]) -> Option<Target> {
    let len = usize::try_from(u32_at(payload, 0)).ok()?;
    let msg = payload.get(..len)?;
    let (link, ip) = crate::host::netlink::parse_deladdr6_request(msg)?;
    Some(Target { link, ip })
}

/// `struct in6_ifreq { struct in6_addr addr; u32 prefixlen; int ifindex; }`
fn ioctl_target(payload: &[u8]) -> Option<Target> {
    let mut addr = [0u8; 16];
    addr.copy_from_slice(payload.get(..16)?);
    let link = u32_at(payload, 20);
    Some(Target {
        link,
        ip: Ipv6Addr::from(addr),
    })
}

/// A record as the programs write it (for tests and the fuzzer).
#[cfg(test)]
pub fn encode(r: &Record, netns_read: i32, read: i32, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; SIZE];
    b[KIND..KIND + 4].copy_from_slice(&u32::from(r.hook as u8).to_ne_bytes());
    b[TGID..TGID + 4].copy_from_slice(&r.tgid.to_ne_bytes());
    b[TID..TID + 4].copy_from_slice(&r.tid.to_ne_bytes());
    b[KTIME..KTIME + 8].copy_from_slice(&r.ktime.to_ne_bytes());
    let comm = r.comm.as_bytes();
    let n = comm.len().min(COMM_LEN - 1);
    b[COMM..COMM + n].copy_from_slice(&comm[..n]);
    match &r.body {
        Body::Entry { netns, .. } => {
            b[NETNS..NETNS + 4].copy_from_slice(&netns.unwrap_or(0).to_ne_bytes());
        }
        Body::Exit { ret } => b[RET..RET + 8].copy_from_slice(&ret.to_ne_bytes()),
    }
    b[READ..READ + 4].copy_from_slice(&read.to_ne_bytes());
    b[NETNS_READ..NETNS_READ + 4].copy_from_slice(&netns_read.to_ne_bytes());
    let n = payload.len().min(PAYLOAD_LEN);
    b[PAYLOAD..PAYLOAD + n].copy_from_slice(&payload[..n]);
    b
}
