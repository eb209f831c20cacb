//! What `/proc` says of a process and of a netlink socket.

use std::io::{self, Read};
use std::path::Path;

/// A process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    /// `comm`: at most 15 bytes (the kernel cuts longer names).
    pub comm: String,
    pub ppid: u32,
    /// Clock ticks after boot (field 22).
    pub start: u64,
}

/// Parses `/proc/<pid>/stat`. `comm` is between the first `(` and the *last* `)`: a
/// name may hold spaces and parentheses.
pub fn parse_stat(pid: u32, text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // After comm: state (3), ppid (4), … starttime (22).
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some(Stat {
        pid,
        comm,
        ppid,
        start,
    })
}

/// Whether an error means "that process is not there (for us)" rather than a failure
/// of our own: gone, or hidden (`hidepid`, another PID namespace).
pub(super) fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ESRCH | libc::EACCES | libc::EPERM)
    )
}

/// `/proc/<pid>/stat`; `Ok(None)` when the process is not there.
pub fn read_stat(proc_root: &Path, pid: u32) -> io::Result<Option<Stat>> {
    let mut buf = [0u8; 1024];
    let mut file = match std::fs::File::open(proc_root.join(pid.to_string()).join("stat")) {
        Ok(f) => f,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let n = match file.read(&mut buf) {
        Ok(n) => n,
        // A process reaped between open and read.
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let text = String::from_utf8_lossy(&buf[..n]);
    parse_stat(pid, &text)
        .map(Some)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("/proc/{pid}/stat")))
}

/// The inode of the `NETLINK_ROUTE` socket bound to `port` in this network namespace.
pub(super) fn netlink_inode(proc_root: &Path, port: u32) -> io::Result<Option<u64>> {
    // thread-self: the caller's network namespace, which need not be the thread group
    // leader's (`/proc/net` is `/proc/self/net`, the leader's).
    let text = std::fs::read_to_string(proc_root.join("thread-self/net/netlink"))?;
    Ok(parse_netlink_table(&text, port))
}

/// Finds `port`'s row in `/proc/net/netlink` (`sk Eth Pid Groups Rmem Wmem Dump Locks
/// Drops Inode`; `Eth` is the protocol, 0 for `NETLINK_ROUTE`, `Pid` the port id).
pub fn parse_netlink_table(text: &str, port: u32) -> Option<u64> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1)? == &"0" && f.get(2)?.parse::<u32>().ok()? == port)
            .then(|| f.get(9)?.parse().ok())
            .flatten()
    })
}

/// Every `NETLINK_ROUTE` row of `/proc/net/netlink` (see [`parse_netlink_table`]):
/// socket inode to port id.
pub(super) fn netlink_ports(text: &str) -> std::collections::HashMap<u64, u32> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(1)? != &"0" {
                return None;
            }
            Some((f.get(9)?.parse().ok()?, f.get(2)?.parse().ok()?))
        })
        .collect()
}

/// The inodes of the sockets `pid` holds; empty when its descriptors cannot be read
/// (gone, hidden, not ours to read).
pub(super) fn socket_inodes(proc_root: &Path, pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
        return Vec::new();
    };
    dir.filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

#[cfg(test)]
thread_local! {
    /// Scans of every process's descriptors made by this thread (tests count them).
    pub(super) static SCANS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Whether `pid` holds `socket:[inode]`; `Ok(None)` when its descriptors cannot be
/// read (gone, or not ours to read without `CAP_SYS_PTRACE`).
pub(super) fn holds_socket(proc_root: &Path, pid: u32, inode: u64) -> io::Result<Option<bool>> {
    let want = format!("socket:[{inode}]");
    let dir = match std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) {
        Ok(d) => d,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    for entry in dir {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        match std::fs::read_link(entry.path()) {
            Ok(target) if target.as_os_str() == want.as_str() => return Ok(Some(true)),
            Ok(_) => {}
            // A descriptor closed while we read the directory.
            Err(e) if is_absent(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(false))
}

/// The process holding `socket:[inode]`, by a scan of every process's descriptors.
pub(super) fn find_socket_owner(proc_root: &Path, inode: u64) -> io::Result<Option<u32>> {
    #[cfg(test)]
    SCANS.with(|s| s.set(s.get() + 1));
    for entry in std::fs::read_dir(proc_root)? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if holds_socket(proc_root, pid, inode)? == Some(true) {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}
