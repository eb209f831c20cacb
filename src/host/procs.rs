//! Who removed an address: the netlink port id of an `RTM_DELADDR` resolved to the
//! process that owns the socket, and that process's ancestors.
//!
//! Three sources, in this order:
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
//! 3. **Our own earlier answer** for the same port (the cache of 1.), for a process
//!    that was read while alive and has exited since.
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

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::netlink::{ProcEvent, ProcEventSocket};
use super::{Identity, Remover};

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
fn is_absent(e: &io::Error) -> bool {
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
fn netlink_inode(proc_root: &Path, port: u32) -> io::Result<Option<u64>> {
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

/// Whether `pid` holds `socket:[inode]`; `Ok(None)` when its descriptors cannot be
/// read (gone, or not ours to read without `CAP_SYS_PTRACE`).
fn holds_socket(proc_root: &Path, pid: u32, inode: u64) -> io::Result<Option<bool>> {
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
fn find_socket_owner(proc_root: &Path, inode: u64) -> io::Result<Option<u32>> {
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

/// A process as the connector reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Read from `/proc` at exec (or at fork, before an exec); `None` when the process
    /// was gone before it could be read.
    pub comm: Option<String>,
    /// The parent that forked it (from the fork event), or the stat's ppid.
    pub parent: u32,
    /// Start time in stat ticks; when `start_exact` is false, only an upper bound (its
    /// exit time: the process was first seen exiting, its fork and exec unseen).
    pub start: u64,
    pub start_exact: bool,
    /// Set by its exit event.
    pub exited: Option<Instant>,
    /// Its parent when it exited, from the exit event (`real_parent`'s tgid).
    pub exit_parent: Option<u32>,
    /// The parent the fork event named; reparenting shows as a stat ppid that differs.
    pub forked_by: Option<u32>,
    /// Its exec was seen: `comm` is its own, not its parent's (a forked child runs the
    /// parent's program until it execs).
    pub execd: bool,
}

impl Seen {
    /// Whether nothing more is to be learnt of it: its name was read after its exec,
    /// or it exited (without an exec since its fork, its name is its parent's; an exec
    /// read too late leaves no name, and the exit event then brings its parent).
    fn settled(&self) -> bool {
        (self.execd && self.comm.is_some()) || self.exited.is_some()
    }
}

#[derive(Debug, Default)]
struct Memory {
    procs: HashMap<u32, Seen>,
    /// Exited pids in exit order, to forget them after [`REMEMBER_EXITED`].
    exited: VecDeque<(Instant, u32)>,
}

/// The kernel's process events, followed by a thread of their own, and what they
/// taught us: every process forked or executed since the start, and those that exited
/// in the last [`REMEMBER_EXITED`].
#[derive(Debug)]
pub struct ProcessEvents {
    memory: Mutex<Memory>,
    changed: Condvar,
    /// Where the subscription was made (see [`ProcEventSocket::open`]).
    pub namespace: String,
    /// False once the reader thread has stopped (socket error).
    running: AtomicBool,
    pub overruns: AtomicU64,
    proc_root: PathBuf,
    hz: u64,
    /// `CLOCK_BOOTTIME - CLOCK_MONOTONIC`: event timestamps are monotonic, stat start
    /// times count from boot.
    boot_offset_ns: u64,
}

impl ProcessEvents {
    /// Subscribes (see [`ProcEventSocket::open`]) and starts the reader thread.
    pub fn start() -> io::Result<Arc<Self>> {
        let proc_root = PathBuf::from("/proc");
        // The initial network namespace, where the connector answers: PID 1's, or,
        // when PID 1 is not ours to inspect (a container's supervisor with more
        // capabilities than ours), our ancestors' (a test's daemon runs under
        // `ip netns exec`, started from the initial namespace).
        let mut elsewhere = vec![proc_root.join("1/ns/net")];
        let mut pid = std::process::id();
        for _ in 0..MAX_DEPTH {
            match read_stat(&proc_root, pid) {
                Ok(Some(stat)) if stat.ppid > 1 => {
                    elsewhere.push(proc_root.join(format!("{}/ns/net", stat.ppid)));
                    pid = stat.ppid;
                }
                _ => break,
            }
        }
        let mut socket = ProcEventSocket::open(4 * 1024 * 1024, &elsewhere)?;
        let events = Arc::new(Self {
            memory: Mutex::default(),
            changed: Condvar::new(),
            namespace: std::mem::take(&mut socket.namespace),
            running: AtomicBool::new(true),
            overruns: AtomicU64::new(0),
            proc_root,
            hz: ticks_per_second(),
            boot_offset_ns: clock_ns(libc::CLOCK_BOOTTIME)
                .saturating_sub(clock_ns(libc::CLOCK_MONOTONIC)),
        });
        let reader = Arc::clone(&events);
        std::thread::Builder::new()
            .name("enisync-procs".into())
            .spawn(move || {
                loop {
                    match socket.recv() {
                        Ok(batch) => reader.take(&batch),
                        Err(e) => {
                            tracing::error!(error = %e, "process events: the connector socket failed; short-lived removers will be unknown (held)");
                            reader.running.store(false, Ordering::Relaxed);
                            reader.changed.notify_all();
                            return;
                        }
                    }
                }
            })?;
        Ok(events)
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    fn take(&self, batch: &[ProcEvent]) {
        let Ok(mut mem) = self.memory.lock() else {
            return;
        };
        let now = Instant::now();
        for event in batch {
            match *event {
                ProcEvent::Fork {
                    parent,
                    child,
                    at_ns,
                } => {
                    // The child runs the parent's program until it execs.
                    let comm = mem.procs.get(&parent).and_then(|p| p.comm.clone());
                    mem.procs.insert(
                        child,
                        Seen {
                            comm,
                            parent,
                            start: ns_to_ticks(at_ns.saturating_add(self.boot_offset_ns), self.hz),
                            start_exact: true,
                            exited: None,
                            exit_parent: None,
                            forked_by: Some(parent),
                            execd: false,
                        },
                    );
                }
                ProcEvent::Exec { pid, .. } => {
                    // Read now: an `ip addr del` is gone a millisecond later.
                    if let Ok(Some(stat)) = read_stat(&self.proc_root, pid) {
                        let forked_by = mem.procs.get(&pid).and_then(|s| s.forked_by);
                        mem.procs.insert(
                            pid,
                            Seen {
                                comm: Some(stat.comm),
                                parent: forked_by.unwrap_or(stat.ppid),
                                start: stat.start,
                                start_exact: true,
                                exited: None,
                                exit_parent: None,
                                forked_by,
                                execd: true,
                            },
                        );
                    } else if let Some(seen) = mem.procs.get_mut(&pid) {
                        // Exec'd and gone before we could read it: its old name is wrong.
                        seen.comm = None;
                        seen.execd = true;
                    }
                }
                ProcEvent::Exit { pid, parent, at_ns } => {
                    // A zombie still shows its stat until its parent reaps it: a last
                    // chance for a name the exec read missed.
                    let late = mem
                        .procs
                        .get(&pid)
                        .is_some_and(|s| s.comm.is_none())
                        .then(|| read_stat(&self.proc_root, pid).ok().flatten())
                        .flatten();
                    if let Some(seen) = mem.procs.get_mut(&pid) {
                        if let Some(stat) =
                            late.filter(|st| st.start.abs_diff(seen.start) <= TICK_SLACK)
                        {
                            seen.comm = Some(stat.comm);
                        }
                        seen.exited = Some(now);
                        seen.exit_parent = parent;
                    } else {
                        // Its fork and exec went unseen (before we subscribed, or lost
                        // in an overrun): its exit time bounds its start, its parent
                        // is the exit event's, its name is unknown.
                        mem.procs.insert(
                            pid,
                            Seen {
                                comm: None,
                                parent: parent.unwrap_or(0),
                                start: ns_to_ticks(
                                    at_ns.saturating_add(self.boot_offset_ns),
                                    self.hz,
                                ),
                                start_exact: false,
                                exited: Some(now),
                                exit_parent: parent,
                                forked_by: None,
                                execd: false,
                            },
                        );
                    }
                    mem.exited.push_back((now, pid));
                }
                ProcEvent::Overrun => {
                    self.overruns.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("process events overran: some processes were not seen");
                }
            }
        }
        // Forget exited processes after a while, and bound the memory.
        while let Some((at, pid)) = mem.exited.front().copied() {
            if now.duration_since(at) < REMEMBER_EXITED && mem.procs.len() <= MAX_REMEMBERED {
                break;
            }
            mem.exited.pop_front();
            if mem.procs.get(&pid).is_some_and(|s| s.exited == Some(at)) {
                mem.procs.remove(&pid);
            }
        }
        if mem.procs.len() > MAX_REMEMBERED {
            // Only processes whose exit was lost (an overrun) can pile up here.
            mem.procs.retain(|_, s| s.exited.is_some());
        }
        drop(mem);
        self.changed.notify_all();
    }

    /// What the connector saw of `pid` once its name is final (see [`Seen::settled`]),
    /// waiting up to `timeout` for the reader to catch up; after that, whatever it saw.
    pub fn wait_for(&self, pid: u32, timeout: Duration) -> Option<Seen> {
        self.wait_until(pid, timeout, Seen::settled)
    }

    /// What the connector saw of `pid` once `done` holds of it, waiting up to
    /// `timeout`; after that, whatever it saw.
    fn wait_until(&self, pid: u32, timeout: Duration, done: fn(&Seen) -> bool) -> Option<Seen> {
        let deadline = Instant::now() + timeout;
        let mut mem = self.memory.lock().ok()?;
        loop {
            let seen = mem.procs.get(&pid);
            if let Some(seen) = seen.filter(|s| done(s)) {
                return Some(seen.clone());
            }
            if Instant::now() >= deadline {
                return seen.cloned();
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if !self.is_running() {
                return None;
            }
            mem = self.changed.wait_timeout(mem, left).ok()?.0;
        }
    }

    fn get(&self, pid: u32) -> Option<Seen> {
        self.memory.lock().ok()?.procs.get(&pid).cloned()
    }

    /// Checks that events arrive: runs a child (this binary's `--version`) and waits
    /// for its exit to be reported.
    pub fn probe(&self, timeout: Duration) -> Result<(), String> {
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
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.get(pid).is_some_and(|s| s.exited.is_some()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(format!(
            "no process event for the probe process {pid} within {timeout:?}"
        ))
    }
}

/// A port's owner as last resolved, with the chain found then.
#[derive(Debug, Clone)]
struct Owner {
    inode: u64,
    pid: u32,
    start: u64,
    names: Vec<String>,
}

/// Resolves removers; owned by the watcher.
#[derive(Debug)]
pub struct Identifier {
    proc_root: PathBuf,
    events: Option<Arc<ProcessEvents>>,
    owners: HashMap<u32, Owner>,
    /// Set when the start-up probe failed: every remover is then a failure of ours.
    disarmed: Option<String>,
    hz: u64,
}

impl Default for Identifier {
    fn default() -> Self {
        Self::new(None)
    }
}

/// Where one step of a chain came from.
enum Step {
    Alive(Stat),
    Seen(u32, Seen),
}

impl Identifier {
    pub fn new(events: Option<Arc<ProcessEvents>>) -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            events,
            owners: HashMap::new(),
            disarmed: None,
            hz: ticks_per_second(),
        }
    }

    /// Every remover is reported as unidentifiable from now on, with this reason.
    pub fn disarm(&mut self, why: String) {
        self.disarmed = Some(why);
    }

    /// The start-up check: a root process's `/proc/<pid>/stat` (PID 1's) can be read,
    /// and, when used, process events arrive.
    pub fn probe(&self) -> Result<(), String> {
        match read_stat(&self.proc_root, 1) {
            Ok(Some(_)) => {}
            Ok(None) => return Err("cannot read /proc/1/stat (is /proc hidden?)".into()),
            Err(e) => return Err(format!("reading /proc/1/stat: {e}")),
        }
        if let Some(events) = &self.events {
            events.probe(Duration::from_secs(2))?;
        }
        Ok(())
    }

    /// Whether another process's descriptors can be read (needed to resolve ports that
    /// are not pids); `Err` names why not.
    pub fn can_read_descriptors(&self) -> Result<(), String> {
        match std::fs::read_dir(self.proc_root.join("1/fd")) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("/proc/1/fd: {e}")),
        }
    }

    /// Who asked for a removal from netlink port `port`.
    pub fn identify(&mut self, port: u32) -> Remover {
        if port == 0 {
            return Remover::kernel();
        }
        if let Some(why) = &self.disarmed {
            return Remover::failed(port, why.clone());
        }
        let notified = ns_to_ticks(clock_ns(libc::CLOCK_BOOTTIME), self.hz) + TICK_SLACK;
        match self.socket_owner(port) {
            Err(e) => Remover::failed(port, format!("resolving netlink port {port}: {e}")),
            Ok(Some((inode, stat))) => {
                let pid = stat.pid;
                let start = stat.start;
                let found = self.chain(port, Step::Alive(stat), notified, Identity::Alive);
                if matches!(found.identity, Identity::Alive) {
                    if self.owners.len() >= MAX_OWNERS {
                        self.owners.clear();
                    }
                    self.owners.insert(
                        port,
                        Owner {
                            inode,
                            pid,
                            start,
                            names: found.names().map(str::to_owned).collect(),
                        },
                    );
                }
                found
            }
            Ok(None) => self.gone(port, notified),
        }
    }

    /// Reads the owner of `port` while its socket is open (an address added through
    /// it), so that a later removal through the same port is identified even if the
    /// process has exited by then. Never waits; failures are left for `identify`.
    pub fn learn(&mut self, port: u32) {
        if self.disarmed.is_some() || port == 0 {
            return;
        }
        let Ok(Some(inode)) = netlink_inode(&self.proc_root, port) else {
            return;
        };
        if self.owners.get(&port).is_some_and(|o| o.inode == inode) {
            return;
        }
        let _ = self.identify(port);
    }

    /// The socket bound to `port` and the live process holding it; `None` when no such
    /// socket exists now (closed, its process gone).
    fn socket_owner(&self, port: u32) -> io::Result<Option<(u64, Stat)>> {
        let root = &self.proc_root;
        let Some(inode) = netlink_inode(root, port)? else {
            return Ok(None);
        };
        if let Some(o) = self.owners.get(&port)
            && o.inode == inode
            && let Some(stat) = read_stat(root, o.pid)?
            && stat.start == o.start
            && holds_socket(root, o.pid, inode)? != Some(false)
        {
            return Ok(Some((inode, stat)));
        }
        if let Some(stat) = read_stat(root, port)? {
            match holds_socket(root, port, inode)? {
                Some(true) => return Ok(Some((inode, stat))),
                // Its descriptors are not ours to read (no CAP_SYS_PTRACE): the socket
                // bound to a pid's number is that process's first socket, which the
                // kernel numbered after it; the start-time checks still apply.
                None => return Ok(Some((inode, stat))),
                Some(false) => {}
            }
        }
        match find_socket_owner(root, inode)? {
            Some(pid) => Ok(read_stat(root, pid)?.map(|stat| (inode, stat))),
            None => Ok(None),
        }
    }

    /// The socket is gone: what the connector saw of process `port`, or what we read of
    /// this port's owner before.
    fn gone(&mut self, port: u32, notified: u64) -> Remover {
        // Ports above the largest possible pid (2^22) are never a process's number.
        if let Some(events) = self.events.as_ref().filter(|_| port <= 1 << 22) {
            // Seen exiting, or named at its exec: exited, not unknown. Its name may have
            // been lost (it exec'd and exited before the reader thread read it); its
            // parent then starts the chain (see `chain`).
            let seen = events.wait_for(port, CATCH_UP);
            if let Some(seen) = seen.filter(|s| s.settled()) {
                return self.chain(port, Step::Seen(port, seen), notified, Identity::Exited);
            }
        }
        if let Some(owner) = self.owners.get(&port) {
            let now = read_stat(&self.proc_root, owner.pid).ok().flatten();
            let alive = now.as_ref().is_some_and(|s| s.start == owner.start);
            if now.is_some() && !alive {
                // Its pid belongs to another process now: whoever that is may have
                // sent this removal from a socket numbered after it.
                return Remover::unknown(
                    port,
                    format!(
                        "the process {} that owned port {port} is gone and its pid reused",
                        owner.pid
                    ),
                );
            }
            let mut names = owner.names.clone().into_iter();
            return Remover {
                port_id: port,
                process: names.next(),
                ancestors: names.collect(),
                identity: if alive {
                    Identity::Alive
                } else {
                    Identity::Exited
                },
            };
        }
        let how = match &self.events {
            Some(e) if e.is_running() => "and process events never showed a process with that pid",
            Some(_) => "and process events have stopped",
            None => "and process events are not available",
        };
        Remover::unknown(
            port,
            format!("no socket has port {port} any more (its process exited?), {how}"),
        )
    }

    /// The parent of `pid` (started at `start`), which is exiting and whose stat no
    /// longer names its parent: the exit event's, else the fork event's. Reparented
    /// (the two differ) or not seen is an error.
    fn exiting_parent(&self, pid: u32, start: u64) -> Result<u32, String> {
        let events = self
            .events
            .as_ref()
            .ok_or("its parent is no longer readable and process events are not available")?;
        let seen = events
            .wait_until(pid, CATCH_UP, |s| s.exited.is_some())
            .filter(|s| {
                if s.start_exact {
                    s.start.abs_diff(start) <= TICK_SLACK
                } else {
                    start <= s.start + TICK_SLACK
                }
            })
            .ok_or("process events never showed it")?;
        match (seen.forked_by, seen.exit_parent) {
            (Some(forked_by), Some(at_exit)) if forked_by != at_exit => Err(format!(
                "reparented from {forked_by} to {at_exit} before it exited"
            )),
            (forked_by, at_exit) => at_exit
                .or(forked_by)
                .ok_or_else(|| "process events never named its parent".to_string()),
        }
    }

    /// Walks from the remover up to (not including) PID 1.
    fn chain(&self, port: u32, first: Step, notified: u64, identity: Identity) -> Remover {
        let mut names = Vec::new();
        let mut unknown = None;
        let mut step = first;
        let (first_start, first_pid) = match &step {
            Step::Alive(s) => (s.start, s.pid),
            // Only its exit was seen: its start is not known, only bounded by the exit,
            // which may follow the notification.
            Step::Seen(_, s) if !s.start_exact => (0, 0),
            Step::Seen(pid, s) => (s.start, *pid),
        };
        // A remover whose name was never read: `(exited pid N)`, judged by its chain.
        let mut nameless = false;
        if first_start > notified {
            unknown = Some(format!(
                "process {first_pid} started after the removal was read (pid reused)"
            ));
        }
        for _ in 0..MAX_DEPTH {
            if unknown.is_some() {
                break;
            }
            let (pid, comm, ppid, start) = match &step {
                Step::Alive(s) => (s.pid, Some(s.comm.clone()), s.ppid, s.start),
                // Its parent when it exited, else the one that forked it.
                Step::Seen(pid, s) => (
                    *pid,
                    s.comm.clone(),
                    s.exit_parent.unwrap_or(s.parent),
                    s.start,
                ),
            };
            // Reparented before it exited: the exit event names another parent than
            // the fork event did.
            if let Step::Seen(_, s) = &step
                && let (Some(forked_by), Some(at_exit)) = (s.forked_by, s.exit_parent)
                && forked_by != at_exit
            {
                unknown = Some(format!(
                    "process {pid} was reparented from {forked_by} to {at_exit} before it exited"
                ));
                break;
            }
            let comm = match (comm, &step) {
                (Some(comm), _) => comm,
                // The remover itself, seen exiting: exited, its name lost; the chain
                // from its parent decides.
                (None, Step::Seen(_, s)) if names.is_empty() && s.exited.is_some() => {
                    nameless = true;
                    format!("(exited pid {pid})")
                }
                (None, _) => {
                    unknown = Some(format!("process {pid} exited before its name was read"));
                    break;
                }
            };
            names.push(comm.clone());
            // A process being reaped still shows its stat, with ppid 0 (its parent can
            // no longer be read): its parent is the one its exit event named.
            let ppid = match &step {
                Step::Alive(_) if ppid == 0 && pid > 2 => match self.exiting_parent(pid, start) {
                    Ok(parent) => parent,
                    Err(why) => {
                        unknown = Some(format!("{comm} ({pid}) is exiting: {why}"));
                        break;
                    }
                },
                _ => ppid,
            };
            // Reparenting: the connector saw another process fork this one.
            let seen = self.events.as_ref().and_then(|e| e.get(pid));
            if let Step::Alive(_) = step
                && let Some(forked_by) = seen
                    .filter(|s| s.start.abs_diff(start) <= TICK_SLACK)
                    .and_then(|s| s.forked_by)
                && forked_by != ppid
            {
                unknown = Some(format!(
                    "{comm} ({pid}) was reparented from {forked_by} to {ppid}"
                ));
                break;
            }
            if ppid <= 1 {
                break;
            }
            let parent = match read_stat(&self.proc_root, ppid) {
                Err(e) => {
                    return Remover {
                        port_id: port,
                        process: names.first().cloned(),
                        ancestors: names.get(1..).unwrap_or_default().to_vec(),
                        identity: Identity::Failed(format!("reading process {ppid}: {e}")),
                    };
                }
                Ok(Some(stat)) if stat.start <= start + TICK_SLACK => Step::Alive(stat),
                // A live process with the parent's pid that is younger than the child
                // is not its parent: what the connector saw, if anything, is.
                Ok(_) => match self
                    .events
                    .as_ref()
                    .and_then(|e| e.get(ppid))
                    .filter(|s| s.start <= start + TICK_SLACK)
                {
                    Some(seen) => Step::Seen(ppid, seen),
                    None => {
                        unknown = Some(format!(
                            "the parent {ppid} of {comm} ({pid}) is gone or younger than its child"
                        ));
                        break;
                    }
                },
            };
            step = parent;
        }
        if nameless && unknown.is_none() && names.len() < 2 {
            // No chain at all: its parent is unknown, PID 1, or gone unseen.
            unknown = Some(format!(
                "process {port} exited before its name was read, and its parent is unknown or gone"
            ));
        }
        let mut names = names.into_iter();
        Remover {
            port_id: port,
            process: names.next(),
            ancestors: names.collect(),
            identity: match unknown {
                Some(why) => Identity::Unknown(why),
                None => identity,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parentheses_in_comm() {
        let text = "4242 (a b) (c)) S 17 4242 4242 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 98765 0 0";
        let s = parse_stat(4242, text).expect("parses");
        assert_eq!(s.comm, "a b) (c)");
        assert_eq!(s.ppid, 17);
        assert_eq!(s.start, 98765);
    }

    #[test]
    fn netlink_table_row_of_a_route_socket() {
        let text = "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n\
                    0000000000000000 0   3079057432 00000000 0        0        0     2        0        77001\n\
                    0000000000000000 9   3079057432 00000000 0        0        0     2        0        77002\n\
                    0000000000000000 0   812        00000551 0        0        0     2        0        77003\n";
        assert_eq!(parse_netlink_table(text, 3_079_057_432), Some(77001));
        assert_eq!(parse_netlink_table(text, 812), Some(77003));
        assert_eq!(parse_netlink_table(text, 813), None);
    }

    /// A long-lived child of ours (a `sleep` run under the name we give it) holds no
    /// netlink socket; a real socket opened here is resolved to this test process.
    #[test]
    fn a_port_resolves_to_the_process_holding_the_socket() {
        let mut socket =
            rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE).expect("socket");
        let addr = socket.bind_auto().expect("bind");
        let port = addr.port_number();
        let mut id = Identifier::default();
        let r = id.identify(port);
        let me = read_stat(Path::new("/proc"), std::process::id())
            .expect("read")
            .expect("us");
        assert_eq!(r.process.as_deref(), Some(me.comm.as_str()), "{r:?}");
        assert_eq!(r.identity, Identity::Alive, "{r:?}");
        assert_eq!(r.ancestors.is_empty(), me.ppid <= 1, "{r:?}");
        // A second socket of the same process gets a port that is not a pid: resolved
        // through the descriptor scan.
        let mut second =
            rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE).expect("socket");
        let port2 = second.bind_auto().expect("bind").port_number();
        assert_ne!(port2, std::process::id());
        let r2 = id.identify(port2);
        assert_eq!(r2.process.as_deref(), Some(me.comm.as_str()), "{r2:?}");
        assert_eq!(r2.identity, Identity::Alive);
        // Closed: what we read before answers, as an exited owner would be answered.
        drop(second);
        let r3 = id.identify(port2);
        assert_eq!(r3.process.as_deref(), Some(me.comm.as_str()), "{r3:?}");
    }

    #[test]
    fn a_port_nobody_holds_and_nobody_saw_is_unknown_not_exited() {
        let mut id = Identifier::default();
        let r = id.identify(4_000_000_001);
        assert!(matches!(r.identity, Identity::Unknown(_)), "{r:?}");
        assert_eq!(r.process, None);
    }

    /// A connector memory fed by hand (no socket, no reader thread).
    fn fed(batch: &[ProcEvent]) -> Arc<ProcessEvents> {
        let events = Arc::new(ProcessEvents {
            memory: Mutex::default(),
            changed: Condvar::new(),
            namespace: "test".into(),
            running: AtomicBool::new(true),
            overruns: AtomicU64::new(0),
            proc_root: PathBuf::from("/proc"),
            hz: ticks_per_second(),
            boot_offset_ns: clock_ns(libc::CLOCK_BOOTTIME)
                .saturating_sub(clock_ns(libc::CLOCK_MONOTONIC)),
        });
        events.take(batch);
        events
    }

    /// A pid no process has (above any default `pid_max` in use here, below 2^22).
    const GONE: u32 = 4_194_000;

    /// An `ip` forked by us that exec'd and exited before its name could be read:
    /// exited, named `(exited pid N)`, judged by the chain from us.
    #[test]
    fn an_exited_remover_whose_name_was_lost_is_judged_by_its_parents() {
        let me = std::process::id();
        let at_ns = clock_ns(libc::CLOCK_MONOTONIC);
        let events = fed(&[
            ProcEvent::Fork {
                parent: me,
                child: GONE,
                at_ns,
            },
            ProcEvent::Exec { pid: GONE, at_ns },
            ProcEvent::Exit {
                pid: GONE,
                parent: Some(me),
                at_ns,
            },
        ]);
        let r = Identifier::new(Some(events)).identify(GONE);
        let us = read_stat(Path::new("/proc"), me)
            .expect("read")
            .expect("us");
        assert_eq!(r.identity, Identity::Exited, "{r:?}");
        assert_eq!(
            r.process.as_deref(),
            Some(format!("(exited pid {GONE})").as_str())
        );
        assert_eq!(r.ancestors.first(), Some(&us.comm), "{r:?}");
    }

    /// Only its exit was seen (fork and exec before we subscribed): its exit bounds its
    /// start, and the exit event's parent starts the chain.
    #[test]
    fn an_exit_alone_gives_the_parent() {
        let me = std::process::id();
        let at_ns = clock_ns(libc::CLOCK_MONOTONIC);
        let events = fed(&[ProcEvent::Exit {
            pid: GONE,
            parent: Some(me),
            at_ns,
        }]);
        let r = Identifier::new(Some(events)).identify(GONE);
        assert_eq!(r.identity, Identity::Exited, "{r:?}");
        assert_eq!(r.ancestors.len() + 1, r.names().count());
        assert!(!r.ancestors.is_empty(), "{r:?}");
    }

    /// Exited with no chain: parent unknown (an old kernel's short event), PID 1, or a
    /// parent gone unseen. Held as unknown.
    #[test]
    fn an_exited_remover_without_a_chain_is_unknown() {
        let at_ns = clock_ns(libc::CLOCK_MONOTONIC);
        for parent in [None, Some(1), Some(GONE + 1)] {
            let events = fed(&[ProcEvent::Exit {
                pid: GONE,
                parent,
                at_ns,
            }]);
            let r = Identifier::new(Some(events)).identify(GONE);
            assert!(
                matches!(r.identity, Identity::Unknown(_)),
                "{parent:?}: {r:?}"
            );
        }
    }

    /// Reparented before it exited (the fork and the exit name different parents): its
    /// parent at exit is not who ran it. Unknown.
    #[test]
    fn an_exited_remover_reparented_before_its_exit_is_unknown() {
        let me = std::process::id();
        let at_ns = clock_ns(libc::CLOCK_MONOTONIC);
        let events = fed(&[
            ProcEvent::Fork {
                parent: GONE + 1,
                child: GONE,
                at_ns,
            },
            ProcEvent::Exit {
                pid: GONE,
                parent: Some(me),
                at_ns,
            },
        ]);
        let r = Identifier::new(Some(events)).identify(GONE);
        assert!(matches!(r.identity, Identity::Unknown(_)), "{r:?}");
    }

    /// A parent on record that is younger than its child is a reused pid. Unknown.
    #[test]
    fn an_exited_remover_whose_parent_pid_was_reused_is_unknown() {
        let me = std::process::id();
        let us = read_stat(Path::new("/proc"), me)
            .expect("read")
            .expect("us");
        let hz = ticks_per_second();
        // Exited (by its events' clock) well before we started.
        let boot = clock_ns(libc::CLOCK_BOOTTIME).saturating_sub(clock_ns(libc::CLOCK_MONOTONIC));
        let before_us = (us.start.saturating_sub(10) * (1_000_000_000 / hz)).saturating_sub(boot);
        let events = fed(&[ProcEvent::Exit {
            pid: GONE,
            parent: Some(me),
            at_ns: before_us,
        }]);
        let r = Identifier::new(Some(events)).identify(GONE);
        assert!(matches!(r.identity, Identity::Unknown(_)), "{r:?}");
    }

    /// A process being reaped reads ppid 0 in its stat: its parent comes from its exit
    /// event (or fork event); reparented or never seen is not a parent. Before, the
    /// chain ended there, naming `ip` with no ancestors.
    #[test]
    fn an_exiting_process_gets_its_parent_from_its_exit_event() {
        let me = std::process::id();
        let at_ns = clock_ns(libc::CLOCK_MONOTONIC);
        let hz = ticks_per_second();
        let boot = clock_ns(libc::CLOCK_BOOTTIME).saturating_sub(clock_ns(libc::CLOCK_MONOTONIC));
        let start = ns_to_ticks(at_ns + boot, hz);
        let fork = ProcEvent::Fork {
            parent: me,
            child: GONE,
            at_ns,
        };
        let exit = |parent| ProcEvent::Exit {
            pid: GONE,
            parent: Some(parent),
            at_ns,
        };
        let id = |batch: &[ProcEvent]| Identifier::new(Some(fed(batch)));
        assert_eq!(id(&[fork, exit(me)]).exiting_parent(GONE, start), Ok(me));
        assert_eq!(id(&[exit(me)]).exiting_parent(GONE, start), Ok(me));
        assert!(id(&[fork, exit(1)]).exiting_parent(GONE, start).is_err());
        assert!(id(&[]).exiting_parent(GONE, start).is_err());
        assert!(Identifier::new(None).exiting_parent(GONE, start).is_err());
    }

    #[test]
    fn a_disarmed_identifier_fails_every_remover_but_the_kernel() {
        let mut id = Identifier::default();
        id.disarm("probe failed".into());
        assert!(matches!(id.identify(1234).identity, Identity::Failed(_)));
        assert!(id.identify(0).is_kernel());
    }
}
