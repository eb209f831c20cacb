//! Puts the sources together: the socket's owner, the connector's memory, the exit
//! records, and our own earlier answers; then the chain of ancestors.

use std::collections::HashMap;
use std::io;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::sync::Arc;

use super::super::bpf::{Attribution, DeletionProbe, Deletions, IPV6_NO_SENDER};
use super::super::{Identity, Remover};
use super::events::{ProcessEvents, Seen};
use super::exits::{TaskStats, same_process};
use super::proc_fs::{Stat, find_socket_owner, holds_socket, netlink_inode, read_stat};
use super::{CATCH_UP, MAX_DEPTH, MAX_OWNERS, TICK_SLACK, clock_ns, ns_to_ticks, ticks_per_second};

/// A port's owner as last resolved, with the chain found then.
#[derive(Debug, Clone)]
pub(super) struct Owner {
    pub(super) inode: u64,
    pub(super) pid: u32,
    pub(super) start: u64,
    pub(super) names: Vec<String>,
    /// Put here ahead of use by [`Identifier::warm`], never confirmed by a lookup: it
    /// spares the scan of a live owner (validated as any entry is), but never names
    /// the owner of a socket that is gone (`gone_owner`), as a learnt entry does.
    pub(super) warmed: bool,
}

/// Resolves removers; owned by the watcher.
#[derive(Debug)]
pub struct Identifier {
    pub(super) proc_root: PathBuf,
    pub(super) events: Option<Arc<ProcessEvents>>,
    /// Taskstats exit records: the names of removers gone before the connector's
    /// reader could read them.
    exits: Option<Arc<TaskStats>>,
    pub(super) owners: HashMap<u32, Owner>,
    /// Set when the start-up probe failed: every remover is then a failure of ours.
    pub(super) disarmed: Option<String>,
    /// The process names whose sockets [`Identifier::warm`] resolves ahead of use.
    pub(super) warm_names: Vec<String>,
    hz: u64,
    /// The IPv6 deletion probe and the requests read from it; `None` when it could not
    /// be loaded (IPv6 removals are then unknown, as the notifications name nobody).
    ipv6: Option<(DeletionProbe, Deletions)>,
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
            exits: None,
            owners: HashMap::new(),
            disarmed: None,
            warm_names: Vec::new(),
            hz: ticks_per_second(),
            ipv6: None,
        }
    }

    /// Also names the removers of IPv6 addresses, by the probe's records of the
    /// deletion requests made in network namespace `netns` (its inode).
    #[must_use]
    pub fn with_ipv6_probe(mut self, probe: DeletionProbe, netns: u32) -> Self {
        self.ipv6 = Some((probe, Deletions::new(netns)));
        self
    }

    /// Who asked for the removal of `ip` from `link`, just read from a notification
    /// (which names nobody for IPv6). `physical`: only a physical link's removals are
    /// worth naming the process (as for IPv4); the request is consumed either way.
    pub fn identify_ipv6(&mut self, link: u32, ip: Ipv6Addr, physical: bool) -> Remover {
        let Some((probe, deletions)) = &mut self.ipv6 else {
            return Remover::unknown(0, IPV6_NO_SENDER.into());
        };
        // Every record written before the notification was sent is in the ring now.
        let drained = probe.drain();
        let now = clock_ns(libc::CLOCK_MONOTONIC);
        deletions.add(drained, now);
        match deletions.attribute(link, ip, now) {
            Attribution::Kernel => Remover::kernel(),
            Attribution::Unknown(why) => Remover::unknown(0, why),
            Attribution::Process { tgid, .. } if !physical => {
                Remover::unknown(tgid, "not resolved: not a physical link".into())
            }
            Attribution::Process { tgid, tid, comm } => self.task(tgid, tid, &comm),
        }
    }

    /// The time to pass to [`Identifier::forget_ipv6_before`] (CLOCK_MONOTONIC).
    pub fn now_ns() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC)
    }

    /// Forgets the IPv6 deletion requests made before `before` (see
    /// [`Identifier::now_ns`]): their notifications may have been lost.
    pub fn forget_ipv6_before(&mut self, before: u64) {
        if let Some((probe, deletions)) = &mut self.ipv6 {
            let drained = probe.drain();
            deletions.add(drained, clock_ns(libc::CLOCK_MONOTONIC));
            deletions.forget_before(before);
        }
    }

    /// Process `tgid`, which asked for a removal as `comm` (from thread `tid`): its
    /// chain, like a netlink port's owner (the port then is its pid).
    pub(super) fn task(&mut self, tgid: u32, tid: u32, comm: &str) -> Remover {
        if let Some(why) = &self.disarmed {
            return Remover::failed(tgid, why.clone());
        }
        let notified = ns_to_ticks(clock_ns(libc::CLOCK_BOOTTIME), self.hz) + TICK_SLACK;
        let found = match read_stat(&self.proc_root, tgid) {
            Err(e) => return Remover::failed(tgid, format!("reading process {tgid}: {e}")),
            Ok(Some(stat)) => self.chain(tgid, Step::Alive(stat), notified, Identity::Alive),
            Ok(None) => match self.gone_process(tgid, notified) {
                Some(found) => found,
                None => {
                    return Remover::unknown(
                        tgid,
                        format!("{comm} ({tgid}) exited and no exit was seen for it"),
                    );
                }
            },
        };
        // The name the kernel recorded at the request is the remover's; another name
        // now (the pid reused, or the process exec'd since) breaks the chain. A thread
        // may carry its own name, so only a single-threaded request is checked.
        match found.process.as_deref() {
            Some(name) if name.starts_with("(exited pid ") => Remover {
                process: Some(comm.to_owned()),
                ..found
            },
            Some(name) if tid == tgid && name != comm => Remover::unknown(
                tgid,
                format!("process {tgid} asked as {comm} but is {name} now"),
            ),
            _ => found,
        }
    }

    /// Also names exited removers by their taskstats exit records.
    #[must_use]
    pub fn with_exits(mut self, exits: Option<Arc<TaskStats>>) -> Self {
        self.exits = exits;
        self
    }

    /// Whether exit records are used (and their reader still runs).
    pub fn has_exits(&self) -> bool {
        self.exits.as_ref().is_some_and(|e| e.is_running())
    }

    /// Every remover is reported as unidentifiable from now on, with this reason.
    pub fn disarm(&mut self, why: String) {
        self.disarmed = Some(why);
    }

    /// The start-up check: a root process's `/proc/<pid>/stat` (PID 1's) can be read,
    /// and, when used, process events arrive. Exit records are checked by
    /// [`Identifier::probe_exits`]: without them identification still works, as before.
    pub fn probe(&self) -> Result<(), String> {
        match read_stat(&self.proc_root, 1) {
            Ok(Some(_)) => {}
            Ok(None) => return Err("cannot read /proc/1/stat (is /proc hidden?)".into()),
            Err(e) => return Err(format!("reading /proc/1/stat: {e}")),
        }
        if let Some(events) = &self.events {
            events.probe(super::PROBE_TIMEOUT)?;
        }
        Ok(())
    }

    /// Checks that exit records arrive; on failure they are no longer used (the
    /// connector alone names removers, as without them).
    pub fn probe_exits(&mut self) -> Result<(), String> {
        let Some(exits) = &self.exits else {
            return Ok(());
        };
        let result = exits.probe(super::PROBE_TIMEOUT);
        if result.is_err() {
            self.exits = None;
        }
        result
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
                            warmed: false,
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
        // A warmed entry is confirmed here (cheaply: it spares the scan).
        if self
            .owners
            .get(&port)
            .is_some_and(|o| o.inode == inode && !o.warmed)
        {
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

    /// The socket is gone: what the connector saw of process `port` (named by its
    /// exit record when the connector lost its name), else its exit record alone, else
    /// what we read of this port's owner before.
    fn gone(&mut self, port: u32, notified: u64) -> Remover {
        // Ports above the largest possible pid (2^22) are never a process's number.
        if port <= 1 << 22
            && let Some(found) = self.gone_process(port, notified)
        {
            return found;
        }
        self.gone_owner(port)
    }

    /// Process `pid`, gone: what the connector saw of it (named by its exit record
    /// when the connector lost its name), else its exit record alone.
    fn gone_process(&mut self, pid: u32, notified: u64) -> Option<Remover> {
        // Seen exiting, or named at its exec: exited, not unknown. Its name may have
        // been lost (it exec'd and exited before the reader thread read it): its exit
        // record names it, or else its parent starts the chain (see `chain`).
        let seen = self.events.as_ref().map(|e| e.wait_for(pid, CATCH_UP));
        match seen {
            Some(Some(seen)) if seen.settled() => {
                let seen = self.named(pid, seen);
                Some(self.chain(pid, Step::Seen(pid, seen), notified, Identity::Exited))
            }
            // The connector never saw it (an overrun, or no connector): its exit record
            // alone, if it has one.
            Some(None) | None => {
                let seen = self.exit_alone(pid)?;
                Some(self.chain(pid, Step::Seen(pid, seen), notified, Identity::Exited))
            }
            Some(Some(_)) => None,
        }
    }

    /// What we read of `port`'s owner before, if anything.
    fn gone_owner(&mut self, port: u32) -> Remover {
        if let Some(owner) = self.owners.get(&port).filter(|o| !o.warmed) {
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

    /// `seen`, exited with its name lost, named by its exit record if that record is
    /// believed to be its end (see `exits.rs`); otherwise unchanged.
    fn named(&self, pid: u32, mut seen: Seen) -> Seen {
        let Some(exits) = &self.exits else {
            return seen;
        };
        if seen.comm.is_some() || seen.exited.is_none() {
            return seen;
        }
        // The connector's exit event has been read: the record, queued before it, has
        // been read once the socket is found empty after now.
        let barrier = clock_ns(libc::CLOCK_MONOTONIC);
        if let Some(exit) = exits
            .exit_of(pid, barrier, CATCH_UP)
            .filter(|e| same_process(&seen, e))
        {
            seen.comm = Some(exit.comm);
            seen.execd = true;
        }
        seen
    }

    /// Process `pid`, which the connector never saw, as its exit record alone says:
    /// its name and parent, its start bounded by the record's read time less its
    /// elapsed time (judged like an exit event alone). Only a record that says it was
    /// the process, of a pid that no live process has.
    fn exit_alone(&self, pid: u32) -> Option<Seen> {
        let exits = self.exits.as_ref()?;
        // Gone first, then the barrier: a process gone before the barrier had its
        // record queued before it.
        if !matches!(read_stat(&self.proc_root, pid), Ok(None)) {
            return None;
        }
        let barrier = clock_ns(libc::CLOCK_MONOTONIC);
        let exit = exits
            .exit_of(pid, barrier, CATCH_UP)
            .filter(|e| e.tgid_known && e.ppid != 0)?;
        let boot_offset =
            clock_ns(libc::CLOCK_BOOTTIME).saturating_sub(clock_ns(libc::CLOCK_MONOTONIC));
        let start = exit
            .read_ns
            .saturating_sub(exit.etime_ns)
            .saturating_add(boot_offset);
        Some(Seen {
            comm: Some(exit.comm),
            parent: exit.ppid,
            start: ns_to_ticks(start, self.hz),
            start_exact: false,
            exited: Some(exit.at),
            exit_parent: Some(exit.ppid),
            forked_by: None,
            execd: true,
            fork_ns: None,
            exit_ns: None,
        })
    }

    /// The parent of `pid` (started at `start`), which is exiting and whose stat no
    /// longer names its parent: the exit event's, else the fork event's. Reparented
    /// (the two differ) or not seen is an error.
    pub(super) fn exiting_parent(&self, pid: u32, start: u64) -> Result<u32, String> {
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
                    .map(|s| self.named(ppid, s))
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
