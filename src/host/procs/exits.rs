//! Exit records followed by a thread of their own, remembered for a while, and the
//! rules by which one is believed to be the end of a given process.
//!
//! A record is believed only when nothing newer can be missing: the reader notes when
//! it last found the socket empty ([`TaskStats::exit_of`] waits until that is later
//! than the moment the process was known to be gone; a process's record is queued
//! before it closes its files and before its connector exit event). Then the newest
//! record of a pid is the process that last had it. It must also agree with what the
//! connector saw of that pid ([`same_process`]): same parent, and a start (the
//! connector's exit time minus the record's elapsed time) at its fork.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::super::netlink::{Received, TaskStatsRecord, TaskStatsSocket};
use super::events::Seen;
use super::{MAX_REMEMBERED, REMEMBER_EXITED, clock_ns, initial_namespace_candidates};

/// How far the start a record implies may fall before the connector's fork event
/// (the task's start is stamped before the fork is reported) and after it (the
/// connector's exit event is stamped after the task has released its memory and
/// files, which takes longer for a big process).
const START_BEFORE_FORK: u64 = 10_000_000;
const START_AFTER_FORK: u64 = 100_000_000;

/// One process's exit, as its record said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub comm: String,
    /// Its parent's tgid when it exited.
    pub ppid: u32,
    pub uid: u32,
    /// Microseconds from its start to its exit, in nanoseconds.
    pub etime_ns: u64,
    /// `CLOCK_MONOTONIC` when the record was read (after the exit).
    pub read_ns: u64,
    /// Whether the record said it was the process, not another of its threads
    /// (version 12 on); without that, it is only believed with a fork event.
    pub tgid_known: bool,
    pub(super) at: Instant,
}

#[derive(Debug, Default)]
struct ExitMemory {
    exits: HashMap<u32, Exit>,
    order: VecDeque<(Instant, u32)>,
    /// `CLOCK_MONOTONIC` before the last read that found the socket empty: every
    /// record queued before it has been taken.
    drained_ns: u64,
}

/// Taskstats exit records, followed by a thread of their own: what every process
/// that exited in the last [`REMEMBER_EXITED`] was called, and its parent.
#[derive(Debug)]
pub struct TaskStats {
    memory: Mutex<ExitMemory>,
    changed: Condvar,
    /// Where the registration was made (see [`TaskStatsSocket::open`]).
    pub namespace: String,
    running: AtomicBool,
    pub overruns: AtomicU64,
    /// The `struct taskstats` version last seen (0: none yet).
    pub version: AtomicU16,
    /// Written to wake the reader, which then reads the socket until it is empty.
    wake: Option<OwnedFd>,
}

impl TaskStats {
    /// Registers (see [`TaskStatsSocket::open`]) and starts the reader thread.
    pub fn start() -> io::Result<Arc<Self>> {
        Self::start_near(None)
    }

    /// As [`TaskStats::start`], where the process events connector subscribed
    /// (`ProcessEvents::namespace`), if it did: the namespace that answered it is the
    /// initial one, and when it was not ours, ours is not worth the half second it
    /// takes to find that no record arrives here.
    pub fn start_near(connector: Option<&str>) -> io::Result<Arc<Self>> {
        let mut elsewhere = initial_namespace_candidates(&PathBuf::from("/proc"));
        let try_here = match connector {
            Some(ns) if ns != "this network namespace" => {
                elsewhere.retain(|p| p.as_os_str() != ns);
                elsewhere.insert(0, PathBuf::from(ns));
                false
            }
            _ => true,
        };
        let mut socket = TaskStatsSocket::open(super::SOCKET_RCVBUF, try_here, &elsewhere)?;
        // SAFETY: eventfd(2) has no memory preconditions; a non-negative result is a
        // new descriptor that nothing else owns, handed to the OwnedFd.
        let wake = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `wake` was just returned by eventfd and is owned by nobody else.
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        let wake_fd = wake.as_raw_fd();
        let stats = Arc::new(Self {
            namespace: std::mem::take(&mut socket.namespace),
            wake: Some(wake),
            ..Self::unstarted()
        });
        let reader = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("enisync-exits".into())
            .spawn(move || {
                loop {
                    let before = clock_ns(libc::CLOCK_MONOTONIC);
                    let got = socket.recv().and_then(|r| match r {
                        Received::Empty => {
                            reader.drained(before);
                            socket.wait_readable(Some(wake_fd), 1000).map(|()| r)
                        }
                        r => Ok(r),
                    });
                    match got {
                        Ok(Received::Records(records)) => {
                            reader.take(records, clock_ns(libc::CLOCK_MONOTONIC));
                        }
                        Ok(Received::Overrun) => reader.overrun(),
                        Ok(Received::Empty) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "taskstats: the socket failed; removers that exit before their removal is read may go unnamed (held)");
                            reader.running.store(false, Ordering::Relaxed);
                            reader.changed.notify_all();
                            return;
                        }
                    }
                }
            })?;
        Ok(stats)
    }

    /// A memory with no socket (fed by hand in tests).
    pub(super) fn unstarted() -> Self {
        Self {
            memory: Mutex::default(),
            changed: Condvar::new(),
            namespace: String::new(),
            running: AtomicBool::new(true),
            overruns: AtomicU64::new(0),
            version: AtomicU16::new(0),
            wake: None,
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Keeps the exits of processes; another thread's exit says nothing of a process.
    pub(super) fn take(&self, records: Vec<TaskStatsRecord>, read_ns: u64) {
        let Ok(mut mem) = self.memory.lock() else {
            return;
        };
        let now = Instant::now();
        for r in records {
            self.version.store(r.version, Ordering::Relaxed);
            if r.is_process() == Some(false) {
                continue;
            }
            mem.exits.insert(
                r.pid,
                Exit {
                    tgid_known: r.is_process().is_some(),
                    comm: r.comm,
                    ppid: r.ppid,
                    uid: r.uid,
                    etime_ns: r.etime_us.saturating_mul(1000),
                    read_ns,
                    at: now,
                },
            );
            mem.order.push_back((now, r.pid));
        }
        while let Some((at, pid)) = mem.order.front().copied() {
            if now.duration_since(at) < REMEMBER_EXITED && mem.order.len() <= MAX_REMEMBERED {
                break;
            }
            mem.order.pop_front();
            if mem.exits.get(&pid).is_some_and(|e| e.at == at) {
                mem.exits.remove(&pid);
            }
        }
        drop(mem);
        self.changed.notify_all();
    }

    /// Records were dropped: any pid's newest record may be among them, so none of
    /// the older ones is believed any more.
    pub(super) fn overrun(&self) {
        self.overruns.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("taskstats overran: some exits were not seen");
        if let Ok(mut mem) = self.memory.lock() {
            mem.exits.clear();
            mem.order.clear();
        }
    }

    pub(super) fn drained(&self, before_ns: u64) {
        if let Ok(mut mem) = self.memory.lock() {
            mem.drained_ns = mem.drained_ns.max(before_ns);
        }
        self.changed.notify_all();
    }

    fn wake_reader(&self) {
        if let Some(fd) = &self.wake {
            let one = 1u64.to_ne_bytes();
            // SAFETY: `fd` is our open eventfd; the buffer is 8 valid bytes, the size
            // an eventfd write takes. A full counter (EAGAIN) still wakes the reader.
            let _ = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }

    /// The newest exit of process `pid` once every record queued before `barrier_ns`
    /// (`CLOCK_MONOTONIC`, a moment the process was known to be gone) has been read;
    /// `None` if it exited unseen, or the reader could not catch up within `timeout`.
    pub fn exit_of(&self, pid: u32, barrier_ns: u64, timeout: Duration) -> Option<Exit> {
        let deadline = Instant::now() + timeout;
        let mut mem = self.memory.lock().ok()?;
        loop {
            if mem.drained_ns >= barrier_ns {
                return mem.exits.get(&pid).cloned();
            }
            if !self.is_running() {
                return None;
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.wake_reader();
            mem = self
                .changed
                .wait_timeout(mem, left.min(Duration::from_millis(5)))
                .ok()?
                .0;
        }
    }

    /// Checks that records arrive: runs a child (this binary's `--version`) and waits
    /// for its exit record.
    pub fn probe(&self, timeout: Duration) -> Result<(), String> {
        let pid = super::run_probe_child()?;
        let barrier = clock_ns(libc::CLOCK_MONOTONIC);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .exit_of(pid, barrier, Duration::from_millis(50))
                .is_some()
            {
                return Ok(());
            }
            if !self.is_running() {
                return Err("the taskstats reader stopped".into());
            }
        }
        Err(format!(
            "no taskstats exit record for the probe process {pid} within {timeout:?}"
        ))
    }
}

/// Whether `exit` is the end of the process the connector saw as `seen` (same pid):
/// the parent both name agrees, and the start the record implies (the connector's exit
/// time minus the elapsed time) is at the connector's fork. Seen only exiting (its fork
/// went unseen), the parent must agree and the record must say it was the process.
/// Not seen exiting: not believed (the connector decides).
pub(super) fn same_process(seen: &Seen, exit: &Exit) -> bool {
    if seen.exit_parent.is_some_and(|p| p != exit.ppid) {
        return false;
    }
    match (seen.fork_ns, seen.exit_ns) {
        (Some(fork), Some(ended)) => {
            let start = ended.saturating_sub(exit.etime_ns);
            start.saturating_add(START_BEFORE_FORK) >= fork
                && start <= fork.saturating_add(START_AFTER_FORK)
        }
        (None, Some(_)) => exit.tgid_known && seen.exit_parent.is_some(),
        _ => false,
    }
}
