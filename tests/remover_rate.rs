//! How often a plain one-shot `ip addr del` is identified by name (issue 11, item 2):
//! 1 000 removals, each by its own `ip` process, read by the watcher with the daemon's
//! identification (process events and `/proc`), inside a network namespace and in the
//! initial namespace (on a veth pair of its own, whose MACs are no ENI of anything).
//!
//! With process events, every removal must be judged: `ip` named (its name read at exec
//! or at exit), or seen exiting with its name lost and its parent (this test process)
//! on record, `(exited pid N) ← <this test> ← …`. None may be held, none misnamed.
//!
//! Each run also counts the `/proc`-only identifier (no process events), which is what
//! a daemon gets when the connector is unavailable: every miss there is unknown (held),
//! never another name. See docs/security-notes-remover.md for the figures.
//! `REMOVER_RATE_N=n` changes the count. Needs root.

#[path = "common/hostns.rs"]
mod hostns;

use std::process::Command;
use std::time::Duration;

use enisync::host::procs::{Identifier, ProcessEvents};
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
    /// Named `ip` (alive, or exited with its name read).
    named: usize,
    /// Exited, name not read in time: `(exited pid N) ← <this test> ← …`.
    chained: usize,
    /// Unknown or failed: held.
    held: usize,
    /// Anything else (a wrong name, a wrong chain): must stay empty.
    other: Vec<String>,
}

fn our_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("our comm")
        .trim_end()
        .to_string()
}

async fn measure(link: &str, n: usize, identifier: Identifier) -> Counts {
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
            let status = Command::new("ip")
                .args([
                    "addr",
                    "del",
                    &format!("10.213.{}.{}/32", i / 250, i % 250 + 1),
                    "dev",
                    &link_name,
                ])
                .status()
                .expect("run ip");
            assert!(status.success());
        }
    });
    let mut c = Counts::default();
    let me = our_comm();
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
            (Identity::Alive | Identity::Exited, Some("ip"))
                if r.ancestors.first() == Some(&me) =>
            {
                c.named += 1;
            }
            (Identity::Exited, Some(p))
                if p == exited_placeholder && r.ancestors.first() == Some(&me) =>
            {
                c.chained += 1;
            }
            (Identity::Unknown(why) | Identity::Failed(why), _) => {
                if c.held < 3 {
                    println!("  held: {why}");
                }
                c.held += 1;
            }
            _ => c.other.push(format!("{r:?}")),
        }
    }
    deleter.join().expect("deleter");
    c
}

fn report(place: &str, n: usize, with: Counts, without: Counts) {
    println!(
        "{place}: one-shot `ip addr del`, {n} removals: with process events named {} / \
         exited with chain {} / held {}; /proc only named {} / exited with chain {} / held {}",
        with.named, with.chained, with.held, without.named, without.chained, without.held
    );
    assert!(
        with.other.is_empty() && without.other.is_empty(),
        "misnamed: {with:?} {without:?}"
    );
    assert_eq!(without.chained, 0, "no exit is seen without process events");
    assert_eq!(
        without.named + without.held,
        n,
        "identified or held, never wrong"
    );
    // With process events every removal is judged: named, or seen exiting with its
    // parent (this test) on record.
    assert_eq!(
        with.named + with.chained,
        n,
        "with process events nothing is held: {with:?}"
    );
}

#[test]
fn one_shot_removals_are_identified_inside_a_namespace() {
    hostns::in_netns(|| async {
        let n = count();
        hostns::veth("rr0", "rr1");
        let events = ProcessEvents::start().expect("process events (from the initial namespace)");
        let with = measure("rr0", n, Identifier::new(Some(events))).await;
        let without = measure("rr0", n, Identifier::new(None)).await;
        report("inside a namespace", n, with, without);
    });
}

/// The initial namespace: a veth pair of this test's own (its addresses are /32s in
/// 10.213.0.0/16, deleted as they are added), removed at the end.
#[test]
fn one_shot_removals_are_identified_in_the_initial_namespace() {
    struct Veth(String);
    impl Drop for Veth {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }
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
        let with = measure(&a, n, Identifier::new(Some(events))).await;
        let without = measure(&a, n, Identifier::new(None)).await;
        report("initial namespace", n, with, without);
    });
}
