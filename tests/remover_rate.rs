//! How often a plain one-shot `ip addr del` is identified by name:
//! 1 000 removals, each by its own `ip` process, read by the watcher with the daemon's
//! identification (process events, taskstats exit records and `/proc`), inside a
//! network namespace and in the initial namespace (on a veth pair of its own, whose MACs
//! are no ENI of anything).
//!
//! Each removal is counted as one of: named alive (`ip` read while it ran), named
//! exited (`ip`, gone by the time its notification was read), exited unnamed (`(exited
//! pid N)`, judged by its parent chain), held (unknown or failed), misnamed (anything
//! else: a wrong name or chain).
//!
//! With process events and exit records (what the daemon runs with), every removal must
//! be named: no exited-unnamed, none held, none misnamed. Taskstats must be available
//! (root, CONFIG_TASKSTATS): the test fails without it, it never skips.
//!
//! Each run also counts the connector alone (what a daemon gets when taskstats is
//! unavailable: some names lost, judged by the chain, none held) and `/proc` alone (no
//! process events: every miss is held, never another name). See docs/security.md,
//! "Remover identification, measured". `REMOVER_RATE_N=n` changes the count. Needs root.

#[path = "common/hostns.rs"]
mod hostns;

use std::process::Command;
use std::time::Duration;

use std::sync::Arc;

use enisync::host::procs::{Identifier, ProcessEvents, TaskStats};
use enisync::host::watch::{self, WatchOptions};
use enisync::host::{HostEvent, Identity};

fn count() -> usize {
    std::env::var("REMOVER_RATE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// What `n` one-shot deletions were identified as.
#[derive(Debug, Default)]
struct Counts {
    /// Named `ip`, read while it was alive.
    named: usize,
    /// Named `ip` after it exited (process events or its exit record).
    exited_named: usize,
    /// Exited, name lost: `(exited pid N) ← <this test> ← …`.
    exited_unnamed: usize,
    /// Unknown or failed: held.
    held: usize,
    /// Anything else (a wrong name, a wrong chain): must stay empty.
    misnamed: Vec<String>,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "named {} / exited-named {} / exited-unnamed {} / held {} / misnamed {}",
            self.named,
            self.exited_named,
            self.exited_unnamed,
            self.held,
            self.misnamed.len()
        )
    }
}

fn our_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("our comm")
        .trim_end()
        .to_string()
}

/// Who removes each address.
#[derive(Debug, Clone, Copy)]
enum Remover {
    /// `ip addr del`, one process each.
    Ip,
    /// This test binary run as a multi-threaded helper (see [`remover_helper`]): a
    /// thread with a name of its own sends the removal and ends the process.
    Threads,
}

async fn measure(link: &str, n: usize, identifier: Identifier) -> Counts {
    measure_with(link, n, identifier, Remover::Ip).await
}

async fn measure_with(link: &str, n: usize, identifier: Identifier, who: Remover) -> Counts {
    let index = hostns::ifindex(link);
    let lines: String = (0..n)
        .map(|i| {
            format!(
                "addr add 10.213.{}.{}/32 dev {link}\n",
                i / 250,
                i % 250 + 1
            )
        })
        .collect();
    hostns::ip_batch(&lines);
    let (_, _handle, mut rx) = watch::start_with(WatchOptions::default(), identifier)
        .await
        .expect("watcher");
    let link_name = link.to_string();
    // The deletions run on a thread of their own, each `ip` a process of its own, while
    // this runtime reads the notifications as the daemon would.
    let deleter = std::thread::spawn(move || {
        for i in 0..n {
            let addr = format!("10.213.{}.{}", i / 250, i % 250 + 1);
            let status = match who {
                Remover::Ip => Command::new("ip")
                    .args(["addr", "del", &format!("{addr}/32"), "dev", &link_name])
                    .status(),
                Remover::Threads => Command::new(std::env::current_exe().expect("our binary"))
                    .args([
                        "--exact",
                        "remover_helper",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env(HELPER, format!("{index} {addr}"))
                    .stdout(std::process::Stdio::null())
                    .status(),
            }
            .expect("run the remover");
            assert!(status.success());
        }
    });
    let mut c = Counts::default();
    let me = our_comm();
    // The helper is this binary: its process is called what we are; its thread
    // ("nl-worker") must never be taken for it.
    let expected = match who {
        Remover::Ip => "ip".to_string(),
        Remover::Threads => me.clone(),
    };
    let mut seen = 0;
    while seen < n {
        let event = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("a removal within 30 s")
            .expect("watcher alive");
        let HostEvent::AddrRemoved { addr, remover } = event else {
            continue;
        };
        if addr.link != index {
            continue;
        }
        seen += 1;
        let r = remover.expect("from a notification");
        let exited_placeholder = format!("(exited pid {})", r.port_id);
        match (&r.identity, r.process.as_deref()) {
            (Identity::Alive, Some(p)) if p == expected && r.ancestors.first() == Some(&me) => {
                c.named += 1;
            }
            (Identity::Exited, Some(p)) if p == expected && r.ancestors.first() == Some(&me) => {
                c.exited_named += 1;
            }
            (Identity::Exited, Some(p))
                if p == exited_placeholder && r.ancestors.first() == Some(&me) =>
            {
                c.exited_unnamed += 1;
            }
            (Identity::Unknown(why) | Identity::Failed(why), _) => {
                if c.held < 3 {
                    println!("  held: {why}");
                }
                c.held += 1;
            }
            _ => c.misnamed.push(format!("{r:?}")),
        }
    }
    deleter.join().expect("deleter");
    c
}

/// The daemon's identifier: process events and exit records, both required here.
fn full(events: &Arc<ProcessEvents>, exits: &Arc<TaskStats>) -> Identifier {
    let mut id = Identifier::new(Some(Arc::clone(events))).with_exits(Some(Arc::clone(exits)));
    id.probe().expect("process events arrive");
    id.probe_exits().expect("taskstats exit records arrive");
    assert!(id.has_exits());
    id
}

fn report(place: &str, n: usize, full: &Counts, connector: &Counts, proc_only: &Counts) {
    println!("{place}: one-shot `ip addr del`, {n} removals:");
    println!("  process events + taskstats: {full}");
    println!("  process events alone:       {connector}");
    println!("  /proc alone:                {proc_only}");
    for c in [full, connector, proc_only] {
        assert!(c.misnamed.is_empty(), "misnamed: {:?}", c.misnamed);
        assert_eq!(
            c.named + c.exited_named + c.exited_unnamed + c.held,
            n,
            "{c}"
        );
    }
    assert_eq!(
        proc_only.exited_named + proc_only.exited_unnamed,
        0,
        "no exit is seen without process events"
    );
    assert_eq!(
        connector.held, 0,
        "with process events nothing is held: {connector}"
    );
    // What the daemon runs with: every remover named, even one gone before its
    // notification was read.
    assert_eq!(full.held, 0, "held with taskstats: {full}");
    assert_eq!(
        full.exited_unnamed, 0,
        "exited unnamed with taskstats: {full}"
    );
}

#[test]
fn one_shot_removals_are_identified_inside_a_namespace() {
    hostns::in_netns(|| async {
        let n = count();
        hostns::veth("rr0", "rr1");
        let events = ProcessEvents::start().expect("process events (from the initial namespace)");
        let exits =
            TaskStats::start().expect("taskstats exit records (needs root and CONFIG_TASKSTATS)");
        // Registered here, the kernel would send nothing: it must have moved.
        assert_ne!(exits.namespace, "this network namespace");
        let with = measure("rr0", n, full(&events, &exits)).await;
        let connector = measure("rr0", n, Identifier::new(Some(events))).await;
        let without = measure("rr0", n, Identifier::new(None)).await;
        report("inside a namespace", n, &with, &connector, &without);
    });
}

/// A veth pair made in the initial namespace, deleted (both ends) when dropped.
struct Veth(String);

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// The initial namespace: a veth pair of this test's own (its addresses are /32s in
/// 10.213.0.0/16, deleted as they are added), removed at the end.
#[test]
fn one_shot_removals_are_identified_in_the_initial_namespace() {
    let a = format!("rra{}", std::process::id() % 100_000);
    let b = format!("rrb{}", std::process::id() % 100_000);
    hostns::veth(&a, &b);
    let _guard = Veth(a.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let n = count();
        let events = ProcessEvents::start().expect("process events");
        assert_eq!(events.namespace, "this network namespace");
        let exits =
            TaskStats::start().expect("taskstats exit records (needs root and CONFIG_TASKSTATS)");
        assert_eq!(exits.namespace, "this network namespace");
        let with = measure(&a, n, full(&events, &exits)).await;
        let connector = measure(&a, n, Identifier::new(Some(events))).await;
        let without = measure(&a, n, Identifier::new(None)).await;
        report("initial namespace", n, &with, &connector, &without);
    });
}

/// The helper's job, in its environment: "<ifindex> <address>".
const HELPER: &str = "REMOVER_RATE_HELPER";

/// Not a test of its own: does nothing unless this binary was started as the
/// multi-threaded remover of [`a_multithreaded_remover_is_named_by_its_process`]. Then a
/// thread named `nl-worker` opens the process's first netlink socket (its port is the
/// process's pid), removes the address, and ends the whole process from that thread:
/// the leader and the test harness's thread exit with it, each with an exit record of
/// its own under another name.
#[test]
fn remover_helper() {
    use netlink_packet_route::address::{AddressAttribute, AddressMessage};
    use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
    use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
    use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

    let Ok(job) = std::env::var(HELPER) else {
        return;
    };
    let (index, addr) = job.split_once(' ').expect("job");
    let index: u32 = index.parse().expect("ifindex");
    let addr: std::net::Ipv4Addr = addr.parse().expect("address");
    std::thread::Builder::new()
        .name("nl-worker".into())
        .spawn(move || {
            let mut socket = Socket::new(NETLINK_ROUTE).expect("socket");
            socket.bind_auto().expect("bind");
            let mut msg = AddressMessage::default();
            msg.header.family = AddressFamily::Inet;
            msg.header.prefix_len = 32;
            msg.header.index = index;
            msg.attributes.push(AddressAttribute::Local(addr.into()));
            msg.attributes.push(AddressAttribute::Address(addr.into()));
            let mut packet = NetlinkMessage::from(RouteNetlinkMessage::DelAddress(msg));
            packet.header.flags = NLM_F_REQUEST | NLM_F_ACK;
            packet.header.sequence_number = 1;
            packet.finalize();
            let mut buf = vec![0; packet.buffer_len()];
            packet.serialize(&mut buf);
            socket
                .send_to(&buf, &SocketAddr::new(0, 0), 0)
                .expect("send");
            let mut reply = Vec::with_capacity(8192);
            socket.recv(&mut reply, 0).expect("ack");
            let ack = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply).expect("parse");
            let NetlinkPayload::Error(e) = ack.payload else {
                panic!("not an ack: {ack:?}");
            };
            assert!(e.code.is_none(), "removal refused: {e:?}");
            // The whole process ends here, from this thread.
            std::process::exit(0);
        })
        .expect("thread")
        .join()
        .expect("worker");
    unreachable!("the worker ends the process");
}

/// A multi-threaded remover whose removal was sent by a thread with another name, and
/// which exited (from that thread) before most notifications were read: named by its
/// process (this binary's name), never by the thread's name, in the initial namespace.
#[test]
fn a_multithreaded_remover_is_named_by_its_process() {
    let a = format!("rta{}", std::process::id() % 100_000);
    let b = format!("rtb{}", std::process::id() % 100_000);
    hostns::veth(&a, &b);
    let _guard = Veth(a.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let n = count() / 5;
        let events = ProcessEvents::start().expect("process events");
        let exits =
            TaskStats::start().expect("taskstats exit records (needs root and CONFIG_TASKSTATS)");
        let c = measure_with(&a, n, full(&events, &exits), Remover::Threads).await;
        println!("multi-threaded remover, {n} removals: {c}");
        assert!(c.misnamed.is_empty(), "misnamed: {:?}", c.misnamed);
        assert_eq!((c.held, c.exited_unnamed), (0, 0), "{c}");
        assert_eq!(c.named + c.exited_named, n, "{c}");
    });
}
