use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};

use super::super::Identity;
use super::super::netlink::{ProcEvent, TaskStatsRecord};
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
        watched: Mutex::default(),
        watched_started: tokio::sync::Notify::new(),
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

// ===== taskstats exit records =====

/// A record as a version-13 kernel sends it for a single-threaded process.
fn record(pid: u32, comm: &str, ppid: u32, etime_us: u64) -> TaskStatsRecord {
    TaskStatsRecord {
        version: 13,
        pid,
        tgid: Some(pid),
        comm: comm.into(),
        ppid,
        uid: 0,
        flags: 0,
        btime: 1_700_000_000,
        etime_us,
    }
}

/// The connector saw our child fork, exec and exit, its name lost (read too late);
/// the child's exit record says what it was.
fn lost_name(me: u32, fork_ns: u64, exit_ns: u64) -> Arc<ProcessEvents> {
    fed(&[
        ProcEvent::Fork {
            parent: me,
            child: GONE,
            at_ns: fork_ns,
        },
        ProcEvent::Exec {
            pid: GONE,
            at_ns: fork_ns,
        },
        ProcEvent::Exit {
            pid: GONE,
            parent: Some(me),
            at_ns: exit_ns,
        },
    ])
}

fn exits_of(records: Vec<TaskStatsRecord>) -> Arc<TaskStats> {
    let exits = Arc::new(TaskStats::unstarted());
    exits.take(records, clock_ns(libc::CLOCK_MONOTONIC));
    exits.drained(u64::MAX);
    exits
}

#[test]
fn an_exited_remover_whose_name_was_lost_is_named_by_its_exit_record() {
    let me = std::process::id();
    let fork_ns = clock_ns(libc::CLOCK_MONOTONIC);
    let exit_ns = fork_ns + 2_000_000;
    let us = read_stat(Path::new("/proc"), me)
        .expect("read")
        .expect("us");
    let r = Identifier::new(Some(lost_name(me, fork_ns, exit_ns)))
        .with_exits(Some(exits_of(vec![record(GONE, "ip", me, 2_000)])))
        .identify(GONE);
    assert_eq!(r.identity, Identity::Exited, "{r:?}");
    assert_eq!(r.process.as_deref(), Some("ip"), "{r:?}");
    assert_eq!(r.ancestors.first(), Some(&us.comm), "{r:?}");
}

/// A record that does not fit what the connector saw of the pid is another process's
/// (a pid reused, a record of an earlier holder): not believed, the name stays lost.
#[test]
fn an_exit_record_of_another_holder_of_the_pid_names_nobody() {
    let me = std::process::id();
    let fork_ns = clock_ns(libc::CLOCK_MONOTONIC);
    let exit_ns = fork_ns + 2_000_000;
    let placeholder = format!("(exited pid {GONE})");
    for (why, rec) in [
        // Ran for a second: started long before this process's fork.
        ("started before", record(GONE, "sshd", me, 1_000_000)),
        // Exited under another parent.
        ("other parent", record(GONE, "sshd", me + 1, 2_000)),
        // Another thread of some process whose tid is that pid.
        (
            "a thread",
            TaskStatsRecord {
                tgid: Some(GONE + 1),
                ..record(GONE, "sshd", me, 2_000)
            },
        ),
    ] {
        let r = Identifier::new(Some(lost_name(me, fork_ns, exit_ns)))
            .with_exits(Some(exits_of(vec![rec])))
            .identify(GONE);
        assert_eq!(
            r.process.as_deref(),
            Some(placeholder.as_str()),
            "{why}: {r:?}"
        );
    }
}

/// A thread's exit leaves no trace; a later record of the same pid replaces an earlier
/// one; an overrun forgets everything (a newer record may have been lost).
#[test]
fn exit_records_keep_processes_only_and_forget_after_an_overrun() {
    let thread = TaskStatsRecord {
        tgid: Some(GONE + 1),
        ..record(GONE, "worker", 1, 5)
    };
    let exits = exits_of(vec![thread]);
    assert_eq!(exits.exit_of(GONE, 0, Duration::ZERO), None);
    exits.take(
        vec![record(GONE, "first", 1, 5), record(GONE, "second", 1, 5)],
        clock_ns(libc::CLOCK_MONOTONIC),
    );
    let got = exits.exit_of(GONE, 0, Duration::ZERO).expect("kept");
    assert_eq!(got.comm, "second");
    exits.overrun();
    assert_eq!(exits.exit_of(GONE, 0, Duration::ZERO), None);
}

/// Nothing is believed before every record queued by then has been read.
#[test]
fn an_exit_record_waits_for_the_reader_to_catch_up() {
    let exits = Arc::new(TaskStats::unstarted());
    exits.take(vec![record(GONE, "ip", 1, 5)], 0);
    let barrier = clock_ns(libc::CLOCK_MONOTONIC);
    assert_eq!(
        exits.exit_of(GONE, barrier, Duration::from_millis(20)),
        None
    );
    exits.drained(barrier);
    assert!(exits.exit_of(GONE, barrier, Duration::ZERO).is_some());
}

/// The connector never saw it (an overrun): the record alone names it, judged by the
/// chain from its parent; an old record without ac_tgid is not used alone.
#[test]
fn an_exit_record_alone_names_a_remover_the_connector_missed() {
    let me = std::process::id();
    let r = Identifier::new(Some(fed(&[])))
        .with_exits(Some(exits_of(vec![record(GONE, "ip", me, 2_000)])))
        .identify(GONE);
    assert_eq!(r.identity, Identity::Exited, "{r:?}");
    assert_eq!(r.process.as_deref(), Some("ip"), "{r:?}");
    assert!(!r.ancestors.is_empty(), "{r:?}");
    let old = TaskStatsRecord {
        version: 11,
        tgid: None,
        ..record(GONE, "ip", me, 2_000)
    };
    let r = Identifier::new(Some(fed(&[])))
        .with_exits(Some(exits_of(vec![old])))
        .identify(GONE);
    assert!(matches!(r.identity, Identity::Unknown(_)), "{r:?}");
}

/// The real thing (needs root, as CI runs, and CONFIG_TASKSTATS: fails without them):
/// a child's exit is recorded with its name and parent.
#[test]
fn a_real_child_exit_is_recorded() {
    let exits = TaskStats::start().expect("taskstats (needs root and CONFIG_TASKSTATS)");
    let mut child = std::process::Command::new("true").spawn().expect("true");
    let pid = child.id();
    child.wait().expect("wait");
    let exit = exits
        .exit_of(pid, clock_ns(libc::CLOCK_MONOTONIC), Duration::from_secs(2))
        .expect("a record of our child");
    assert_eq!(exit.comm, "true");
    assert_eq!(exit.ppid, std::process::id());
    assert!(exit.tgid_known);
}

/// An IPv6 requester named by the deletion probe (a tgid and the `comm` it had): alive,
/// it is read from `/proc` with its chain; under another name now (a pid reused, an
/// exec since) or gone without a trace, it is unknown; a thread's own name is not
/// held against its process.
#[test]
fn a_probe_named_requester_is_checked_against_proc() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep");
    let pid = child.id();
    let mut id = Identifier::default();
    let r = id.task(pid, pid, "sleep");
    assert_eq!(r.process.as_deref(), Some("sleep"), "{r:?}");
    assert_eq!(r.identity, Identity::Alive, "{r:?}");
    assert_eq!(r.port_id, pid);
    assert!(!r.ancestors.is_empty(), "{r:?}");
    let r = id.task(pid, pid, "ip");
    assert!(matches!(r.identity, Identity::Unknown(_)), "{r:?}");
    let r = id.task(pid, pid + 1, "worker");
    assert_eq!(r.identity, Identity::Alive, "{r:?}");
    child.kill().expect("kill");
    child.wait().expect("wait");
    let r = id.task(pid, pid, "sleep");
    assert!(matches!(r.identity, Identity::Unknown(_)), "{r:?}");
}

/// A fake `/proc`: `thread-self/net/netlink` and, per process, `stat` and `fd/`
/// symlinks to `socket:[inode]`.
struct FakeProc {
    root: PathBuf,
}

impl Drop for FakeProc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl FakeProc {
    fn new(tag: &str) -> Self {
        let root = std::env::temp_dir().join(format!("enisync-proc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("thread-self/net")).expect("mkdir");
        Self { root }
    }

    fn path(&self) -> &Path {
        &self.root
    }

    /// The netlink table: `(port, inode)` rows of `NETLINK_ROUTE` sockets.
    fn sockets(&self, rows: &[(u32, u64)]) {
        let mut text = "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n".to_owned();
        for (port, inode) in rows {
            text.push_str(&format!(
                "0000000000000000 0   {port} 00000000 0        0        0     2        0        {inode}\n"
            ));
        }
        std::fs::write(self.path().join("thread-self/net/netlink"), text).expect("write");
    }

    /// Process `pid` named `comm`, child of PID 1, started at `start`, holding the
    /// sockets `inodes` (replaces what was there).
    fn process(&self, pid: u32, comm: &str, start: u64, inodes: &[u64]) {
        let dir = self.path().join(pid.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("fd")).expect("mkdir");
        std::fs::write(
            dir.join("stat"),
            format!(
                "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0"
            ),
        )
        .expect("write");
        for (fd, inode) in inodes.iter().enumerate() {
            std::os::unix::fs::symlink(
                format!("socket:[{inode}]"),
                dir.join("fd").join((fd + 3).to_string()),
            )
            .expect("symlink");
        }
    }

    fn identifier(&self, names: &[&str]) -> Identifier {
        let mut id =
            Identifier::default().with_warm_names(names.iter().map(|n| (*n).to_owned()).collect());
        id.proc_root = self.path().to_path_buf();
        id
    }
}

fn scans() -> usize {
    proc_fs::SCANS.with(std::cell::Cell::get)
}

/// keepalived's event socket: a port that is not its pid.
const KEEPALIVED_PORT: u32 = 3_079_057_432;

#[test]
fn a_warmed_adder_socket_is_identified_without_a_scan() {
    let fake = FakeProc::new("t1");
    fake.sockets(&[(KEEPALIVED_PORT, 9001), (600, 9100)]);
    fake.process(500, "keepalived", 100, &[9002, 9001]);
    fake.process(600, "other", 100, &[9100]);
    // Without warming, the port is found by the scan.
    let mut cold = fake.identifier(&["keepalived"]);
    let before = scans();
    let r = cold.identify(KEEPALIVED_PORT);
    assert_eq!(r.process.as_deref(), Some("keepalived"), "{r:?}");
    assert_eq!(scans(), before + 1, "a cold lookup scans");
    // Warmed: only keepalived's sockets (not other's), answered without a scan.
    let mut warm = fake.identifier(&["keepalived"]);
    assert_eq!(warm.warm(), 1);
    let before = scans();
    let r = warm.identify(KEEPALIVED_PORT);
    assert_eq!(r.process.as_deref(), Some("keepalived"), "{r:?}");
    assert_eq!(r.identity, Identity::Alive, "{r:?}");
    assert_eq!(scans(), before, "a warmed lookup does not scan");
    // Nothing to warm without names.
    assert_eq!(fake.identifier(&[]).warm(), 0);
}

#[test]
fn a_stale_warm_entry_is_not_believed() {
    let fake = FakeProc::new("t2");
    fake.sockets(&[(KEEPALIVED_PORT, 9001)]);
    fake.process(500, "keepalived", 100, &[9001]);
    let mut id = fake.identifier(&["keepalived"]);
    assert_eq!(id.warm(), 1);
    // Its pid reused by another process that holds the same socket inode number: the
    // start differs, so the scan decides.
    fake.process(500, "impostor", 200, &[9001]);
    let before = scans();
    let r = id.identify(KEEPALIVED_PORT);
    assert_eq!(r.process.as_deref(), Some("impostor"), "{r:?}");
    assert_eq!(scans(), before + 1, "a stale entry falls back to the scan");

    // The port now names another socket (closed and bound again by someone else).
    let mut id = fake.identifier(&["keepalived"]);
    fake.process(500, "keepalived", 100, &[9001]);
    assert_eq!(id.warm(), 1);
    fake.sockets(&[(KEEPALIVED_PORT, 9005)]);
    fake.process(700, "intruder", 300, &[9005]);
    let before = scans();
    let r = id.identify(KEEPALIVED_PORT);
    assert_eq!(r.process.as_deref(), Some("intruder"), "{r:?}");
    assert_eq!(scans(), before + 1);
}

/// A warmed entry spares a scan of a live owner; it never names the owner of a socket
/// that is gone, as an owner read by a lookup does.
#[test]
fn a_warm_entry_never_names_the_owner_of_a_gone_socket() {
    let fake = FakeProc::new("t3");
    fake.sockets(&[(KEEPALIVED_PORT, 9001)]);
    fake.process(500, "keepalived", 100, &[9001]);
    let mut id = fake.identifier(&["keepalived"]);
    assert_eq!(id.warm(), 1);
    fake.sockets(&[]);
    let r = id.identify(KEEPALIVED_PORT);
    assert!(matches!(r.identity, Identity::Unknown(_)), "{r:?}");
    assert_eq!(r.process, None, "{r:?}");
    // Confirmed by a lookup while the socket was open (an addition through it): named.
    fake.sockets(&[(KEEPALIVED_PORT, 9001)]);
    let mut id = fake.identifier(&["keepalived"]);
    assert_eq!(id.warm(), 1);
    id.learn(KEEPALIVED_PORT);
    fake.sockets(&[]);
    let r = id.identify(KEEPALIVED_PORT);
    assert_eq!(r.process.as_deref(), Some("keepalived"), "{r:?}");
}

/// A name cut to 15 bytes by the kernel is warmed for its full configured name.
#[test]
fn a_truncated_name_is_warmed() {
    let fake = FakeProc::new("t4");
    fake.sockets(&[(KEEPALIVED_PORT, 9001)]);
    fake.process(500, "systemd-network", 100, &[9001]);
    assert_eq!(fake.identifier(&["systemd-networkd"]).warm(), 1);
    assert_eq!(fake.identifier(&["systemd-netw"]).warm(), 0);
}

/// The real kernel and `/proc`: this test process, long-lived, holds a second netlink
/// socket (a port that is not its pid, as keepalived's event socket); warmed for its
/// name, the port is answered without a scan.
#[test]
fn a_real_second_socket_of_a_named_process_is_warmed() {
    let me = read_stat(Path::new("/proc"), std::process::id())
        .expect("read")
        .expect("us");
    let mut first =
        rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE).expect("socket");
    let _ = first.bind_auto().expect("bind");
    let mut second =
        rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE).expect("socket");
    let port = second.bind_auto().expect("bind").port_number();
    assert_ne!(port, std::process::id());
    let mut id = Identifier::default().with_warm_names(vec![me.comm.clone()]);
    assert!(id.warm() >= 1, "our sockets are warmed");
    let before = scans();
    let r = id.identify(port);
    assert_eq!(r.process.as_deref(), Some(me.comm.as_str()), "{r:?}");
    assert_eq!(r.identity, Identity::Alive, "{r:?}");
    assert_eq!(scans(), before, "answered from the warmed entry");
}
