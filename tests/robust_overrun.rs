//! Overrun recovery under load: the real daemon with a deliberately
//! small netlink receive buffer, thousands of address changes from one `ip -batch`; the
//! watcher overruns, resyncs, and still nothing is lost: every aux IP that stayed
//! removed is either released or held, the held ones are released by `release --held`,
//! each exactly once, and nothing that came back is released.
//!
//! Removals found by a resync carry no remover (nobody knows who asked): clause 2 holds
//! them as unknown (`held_unknown_remover`) until an operator confirms, since a network
//! manager's flush that overran the socket looks exactly like this.

#[path = "common/sandbox.rs"]
mod sandbox;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use enisync_fakecloud::FakeTaskStatus;
use sandbox::{Layout, Sandbox, aux};

const SOON: Duration = Duration::from_secs(60);

#[test]
fn thousands_of_changes_overrun_the_watcher_and_every_lasting_removal_is_released_once() {
    let pool: Vec<u8> = (11..=210).collect();
    let mut sb = Sandbox::new(
        "ovr",
        Layout {
            aux: pool.clone(),
            release: vec!["grace = \"800ms\"".into(), "burst_limit = 100000".into()],
            extra_config: "\n[netlink]\nreceive_buffer = 4096\n".into(),
            ..Layout::default()
        },
    );
    sb.start();
    // 12 rounds of delete + re-add of every aux IP (4 800 changes), then a last round
    // that deletes every third one for good, and re-adds nothing.
    let mut lines = Vec::new();
    for _ in 0..12 {
        for n in &pool {
            lines.push(format!("addr del 10.0.1.{n}/24 dev eth1"));
            lines.push(format!("addr add 10.0.1.{n}/24 dev eth1"));
        }
    }
    let gone: BTreeSet<u8> = pool.iter().copied().filter(|n| n % 3 == 0).collect();
    for n in &gone {
        lines.push(format!("addr del 10.0.1.{n}/24 dev eth1"));
    }
    let changes = lines.len();
    let started = Instant::now();
    sb.ip_batch(&lines);
    let batch_took = started.elapsed();
    // Every lasting removal is released or held, and whatever a resync found is held.
    // An IP is held when its last removal was (an earlier one may have been held and
    // then cancelled by the re-add).
    let held_lines = || {
        let mut last = std::collections::BTreeMap::<u8, bool>::new();
        for l in sb.log_lines() {
            let held = l.contains("reason=\"held_unknown_remover\"");
            if !held && !l.contains("decision=\"pending\"") {
                continue;
            }
            if let Some(n) = l
                .split(" ip=10.0.1.")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<u8>().ok())
            {
                last.insert(n, held);
            }
        }
        last.into_iter()
            .filter_map(|(n, held)| held.then_some(n))
            .collect::<BTreeSet<u8>>()
    };
    sb.wait_for("every lasting removal released or held", SOON, || {
        let cloud = sb.ips_in_cloud();
        let held = held_lines();
        gone.iter()
            .all(|n| !cloud.contains(&aux(*n)) || held.contains(n))
    });
    // Past the grace period of the last ones: nothing held was released.
    std::thread::sleep(Duration::from_secs(3));
    let held_resync = held_lines();
    let log = sb.log_text();
    assert!(
        sb.log_lines()
            .iter()
            .filter(|l| l.contains("unknown (resync)"))
            .all(|l| l.contains("held_unknown_remover")),
        "a removal found by a resync was not held:\n{log}"
    );
    let cloud = sb.ips_in_cloud();
    for n in &held_resync {
        assert!(
            cloud.contains(&aux(*n)),
            "10.0.1.{n} was held, yet released before an operator confirmed"
        );
    }
    let confirmed = sb.cli(&["release", "--held"]);
    assert!(confirmed.status.success(), "{confirmed:?}");
    sb.wait_for("every lasting removal released", SOON, || {
        let cloud = sb.ips_in_cloud();
        gone.iter().all(|n| !cloud.contains(&aux(*n)))
    });
    std::thread::sleep(Duration::from_secs(3));
    let cloud = sb.ips_in_cloud();
    for n in &pool {
        let want_gone = gone.contains(n);
        assert_eq!(
            !cloud.contains(&aux(*n)),
            want_gone,
            "10.0.1.{n}: released iff it stayed removed"
        );
    }
    // Exactly once: one successful unassign task per lasting removal, none for others.
    let mut released = std::collections::BTreeMap::<u8, usize>::new();
    for task in sb.fake.tasks() {
        if task.status == FakeTaskStatus::Success {
            for ip in task.ips {
                *released.entry(ip.octets()[3]).or_default() += 1;
            }
        }
    }
    assert!(released.values().all(|c| *c == 1), "{released:?}");
    assert_eq!(released.keys().copied().collect::<BTreeSet<_>>(), gone);

    let via_resync = sb
        .log_lines()
        .iter()
        .filter(|l| l.contains("held_unknown_remover") && l.contains("unknown (resync)"))
        .count();
    assert!(
        via_resync >= 1,
        "the overrun left removals only a resync found (else this test proves nothing \
         about them):\n{log}"
    );
    let overruns = sb.count_log("netlink event socket overran");
    assert!(overruns >= 1, "the small buffer overran:\n{log}");
    let resync_ms: Vec<u64> = sb
        .log_lines()
        .iter()
        .filter(|l| l.contains("resync after overrun complete"))
        .filter_map(|l| {
            l.split("resync_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(!resync_ms.is_empty(), "{log}");
    let worst = resync_ms.iter().max().copied().unwrap_or(0);
    assert!(worst < 5000, "an overrun resync took {worst} ms");
    println!(
        "overrun: {changes} address changes in {batch_took:?}; {overruns} overruns, \
         {} resyncs, worst overrun-to-complete-resync {worst} ms; {} lasting removals \
         released exactly once ({via_resync} came from a resync, remover unknown, held \
         until release --held), {} unassign calls",
        resync_ms.len(),
        gone.len(),
        sb.unassigns().len()
    );
}
