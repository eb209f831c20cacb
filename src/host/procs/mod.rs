//! Who removed an address: the netlink port id of an `RTM_DELADDR` resolved to the
//! process that owns the socket, and that process's ancestors.
//!
//! Four sources, in this order:
//!
//! 1. **The socket.** `/proc/thread-self/net/netlink` (this network namespace) gives the port's
//!    socket inode; the process holding `socket:[inode]` in `/proc/<pid>/fd` owns it.
//!    The port is usually the owner's pid (the kernel gives a process's first netlink
//!    socket its pid), which is checked first; other ports (keepalived's event socket,
//!    any second socket) are found by a scan of every process's descriptors, cached per
//!    port and checked again (same inode, same process start time) on the next use.
//! 2. **The process events connector** ([`ProcessEvents`]): every fork, exec and exit,
//!    with the name read at exec. A short-lived remover (`ip addr del`) has usually
//!    closed its socket and exited by the time its notification is read; what the
//!    connector saw of it is used then ("exited").
//! 3. **Taskstats exit records** ([`TaskStats`]; the socket and the record parser are in
//!    `host/netlink/taskstats.rs`): the kernel sends one
//!    for every exiting task, carrying its `comm`, parent and elapsed time. They name
//!    a remover that exec'd and exited before the connector's reader could read its
//!    name; each record is joined to what the connector saw of the same pid (same
//!    parent, start time consistent) before it is believed (`exits.rs`).
//! 4. **Our own earlier answer** for the same port (the cache of 1.), for a process
//!    that was read while alive and has exited since.
//!
//! **Known adders** (`warm.rs`): the sockets of the processes named in `claim.adders`
//! are resolved to their ports ahead of use (at start, shortly after such a process
//! starts, and periodically), into the same cache, so that the addition of a claimed
//! address through keepalived's event socket is identified without the scan. A warmed
//! entry is checked on use as every entry is and falls back to the scan when stale; it
//! never names the owner of a socket that is gone (4. uses only owners a lookup read).
//! See docs/design.md, "Claims", "Known adders, resolved ahead".
//!
//! Anything else is **unknown**: a bare `ENOENT` says nothing (the port may not be a
//! pid, the process may sit in another PID namespace, `/proc` may be hidden). A failure
//! of enisync itself (`EMFILE`, `ENFILE`, `ENOMEM`, a read error) is reported as such.
//! The engine holds both kinds; this module only says what it found.
//!
//! Every step up the process tree is checked by start time: the parent started no
//! later than its child, and the remover no later than the notification was read. A
//! mismatch (a reused pid) or a parent that differs from the one the connector saw fork
//! the child (reparenting) ends the chain as unknown. PID 1 is never part of a chain.

//!
//! Layout: `proc_fs` reads `/proc`, `events` follows the connector, `exits` follows exit
//! records (read through `host::netlink`'s taskstats socket), `identify` puts them
//! together. Every socket is in `host::netlink`; this module decides what to believe.

use std::path::PathBuf;
use std::time::Duration;

mod events;
mod exits;
mod identify;
mod proc_fs;
#[cfg(test)]
mod tests;
mod warm;

pub use events::{ProcessEvents, Seen};
pub use exits::{Exit, TaskStats};
pub use identify::Identifier;
pub use proc_fs::{Stat, parse_netlink_table, parse_stat, read_stat};

/// Receive buffer of the connector's and the taskstats socket, bytes: both get a burst
/// per fork storm, and a full socket drops what it cannot queue.
const SOCKET_RCVBUF: usize = 4 * 1024 * 1024;

/// How long the start-up checks wait for the connector's, or the taskstats socket's,
/// report of a probe process.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest chain walked (a remover and its ancestors).
const MAX_DEPTH: usize = 64;

/// Cached port owners; the cache is cleared when it grows past this.
const MAX_OWNERS: usize = 4096;

/// How long an exited process is remembered.
pub const REMEMBER_EXITED: Duration = Duration::from_secs(10);

/// At most this many processes are remembered (alive or exited); the oldest exited
/// ones go first.
const MAX_REMEMBERED: usize = 65_536;

/// How long identification waits for the connector to report a process it has not
/// seen yet: the exec of a remover was reported before it asked for the removal, so
/// only the reader thread's own lag is waited for.
const CATCH_UP: Duration = Duration::from_millis(250);

/// Start times are in clock ticks (`/proc/<pid>/stat`); two starts this close are
/// taken as equal (a fork event's nanoseconds and a stat's ticks round differently).
const TICK_SLACK: u64 = 1;

/// Runs this binary with `--version` and waits for it to end: the short-lived process
/// whose exit the readiness probes of the process events and the exit records wait for.
/// Returns its pid.
fn run_probe_child() -> Result<u32, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating our binary: {e}"))?;
    let mut child = std::process::Command::new(exe)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("starting a probe process: {e}"))?;
    let pid = child.id();
    let _ = child.wait();
    Ok(pid)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call, and the
    // clocks we ask for (BOOTTIME, MONOTONIC) always exist on Linux.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Clock ticks per second (`/proc/<pid>/stat` start times are in these).
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|h| *h > 0).unwrap_or(100)
}

/// `CLOCK_BOOTTIME` nanoseconds as stat ticks.
fn ns_to_ticks(ns: u64, hz: u64) -> u64 {
    ns / (1_000_000_000 / hz.max(1))
}

/// Where to subscribe when this network namespace refuses (the connector and the
/// TASKSTATS family answer only in the initial one): PID 1's network namespace, then,
/// when PID 1 is not ours to inspect (a container's supervisor with more capabilities
/// than ours), our ancestors' (a test's daemon runs under `ip netns exec`, started
/// from the initial namespace).
fn initial_namespace_candidates(proc_root: &std::path::Path) -> Vec<PathBuf> {
    let mut elsewhere = vec![proc_root.join("1/ns/net")];
    let mut pid = std::process::id();
    for _ in 0..MAX_DEPTH {
        match read_stat(proc_root, pid) {
            Ok(Some(stat)) if stat.ppid > 1 => {
                elsewhere.push(proc_root.join(format!("{}/ns/net", stat.ppid)));
                pid = stat.ppid;
            }
            _ => break,
        }
    }
    elsewhere
}
