//! The kernel's process events connector, followed by a thread of its own.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::super::netlink::{ProcEvent, ProcEventSocket};
use super::proc_fs::read_stat;
use super::{
    MAX_REMEMBERED, REMEMBER_EXITED, TICK_SLACK, clock_ns, initial_namespace_candidates,
    ns_to_ticks, ticks_per_second,
};

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
    /// `CLOCK_MONOTONIC` of its fork event, and of its exit event: what an exit
    /// record's elapsed time is checked against (see `exits.rs`).
    pub fork_ns: Option<u64>,
    pub exit_ns: Option<u64>,
}

impl Seen {
    /// Whether nothing more is to be learnt of it: its name was read after its exec,
    /// or it exited (without an exec since its fork, its name is its parent's; an exec
    /// read too late leaves no name, and the exit event then brings its parent).
    pub(super) fn settled(&self) -> bool {
        (self.execd && self.comm.is_some()) || self.exited.is_some()
    }
}

#[derive(Debug, Default)]
pub(super) struct Memory {
    procs: HashMap<u32, Seen>,
    /// Exited pids in exit order, to forget them after [`REMEMBER_EXITED`].
    exited: VecDeque<(Instant, u32)>,
}

/// The kernel's process events, followed by a thread of their own, and what they
/// taught us: every process forked or executed since the start, and those that exited
/// in the last [`REMEMBER_EXITED`].
#[derive(Debug)]
pub struct ProcessEvents {
    pub(super) memory: Mutex<Memory>,
    pub(super) changed: Condvar,
    /// Where the subscription was made (see [`ProcEventSocket::open`]).
    pub namespace: String,
    /// False once the reader thread has stopped (socket error).
    pub(super) running: AtomicBool,
    pub overruns: AtomicU64,
    pub(super) proc_root: PathBuf,
    pub(super) hz: u64,
    /// `CLOCK_BOOTTIME - CLOCK_MONOTONIC`: event timestamps are monotonic, stat start
    /// times count from boot.
    pub(super) boot_offset_ns: u64,
    /// Process names whose exec or fork is signalled on `watched_started` (the known
    /// adders, see the module's docs).
    pub(super) watched: Mutex<Vec<String>>,
    pub(super) watched_started: tokio::sync::Notify,
}

impl ProcessEvents {
    /// Subscribes (see [`ProcEventSocket::open`]) and starts the reader thread.
    pub fn start() -> io::Result<Arc<Self>> {
        let proc_root = PathBuf::from("/proc");
        let elsewhere = initial_namespace_candidates(&proc_root);
        let mut socket = ProcEventSocket::open(super::SOCKET_RCVBUF, &elsewhere)?;
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
            watched: Mutex::default(),
            watched_started: tokio::sync::Notify::new(),
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

    /// Resolves once a process named in `watched` has exec'd or forked since the last
    /// time it resolved (it may open netlink sockets now).
    pub async fn watched_started(&self) {
        self.watched_started.notified().await;
    }

    fn is_watched(&self, comm: Option<&String>) -> bool {
        let Some(comm) = comm else {
            return false;
        };
        self.watched.lock().is_ok_and(|w| {
            w.iter()
                .any(|n| n == comm || (comm.len() == 15 && n.starts_with(comm.as_str())))
        })
    }

    pub(super) fn take(&self, batch: &[ProcEvent]) {
        let Ok(mut mem) = self.memory.lock() else {
            return;
        };
        let now = Instant::now();
        let mut watched_started = false;
        for event in batch {
            match *event {
                ProcEvent::Fork {
                    parent,
                    child,
                    at_ns,
                } => {
                    // The child runs the parent's program until it execs.
                    let comm = mem.procs.get(&parent).and_then(|p| p.comm.clone());
                    watched_started |= self.is_watched(comm.as_ref());
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
                            fork_ns: Some(at_ns),
                            exit_ns: None,
                        },
                    );
                }
                ProcEvent::Exec { pid, .. } => {
                    // Read now: an `ip addr del` is gone a millisecond later.
                    if let Ok(Some(stat)) = read_stat(&self.proc_root, pid) {
                        watched_started |= self.is_watched(Some(&stat.comm));
                        let forked_by = mem.procs.get(&pid).and_then(|s| s.forked_by);
                        let fork_ns = mem.procs.get(&pid).and_then(|s| s.fork_ns);
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
                                fork_ns,
                                exit_ns: None,
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
                        seen.exit_ns = Some(at_ns);
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
                                fork_ns: None,
                                exit_ns: Some(at_ns),
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
        if watched_started {
            self.watched_started.notify_one();
        }
    }

    /// What the connector saw of `pid` once its name is final (see [`Seen::settled`]),
    /// waiting up to `timeout` for the reader to catch up; after that, whatever it saw.
    pub fn wait_for(&self, pid: u32, timeout: Duration) -> Option<Seen> {
        self.wait_until(pid, timeout, Seen::settled)
    }

    /// What the connector saw of `pid` once `done` holds of it, waiting up to
    /// `timeout`; after that, whatever it saw.
    pub(super) fn wait_until(
        &self,
        pid: u32,
        timeout: Duration,
        done: fn(&Seen) -> bool,
    ) -> Option<Seen> {
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

    pub(super) fn get(&self, pid: u32) -> Option<Seen> {
        self.memory.lock().ok()?.procs.get(&pid).cloned()
    }

    /// Checks that events arrive: runs a child (this binary's `--version`) and waits
    /// for its exit to be reported.
    pub fn probe(&self, timeout: Duration) -> Result<(), String> {
        let pid = super::run_probe_child()?;
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
