//! Crashes, graceful stops, journal replay and alarms against the real daemon.
//!
//! Crash cycles: `kill -9` at a chosen point of a release (after the intent is written,
//! after the call reached the cloud, while its task runs, during the route fix), then a
//! restart in the same boot. After each restart: the IP that stayed removed is released
//! exactly once in effect (one task ended SUCCESS for it), its stale rule is gone, its
//! intent is finished in the journal; an IP that was pending and re-added while the
//! daemon was dead is not released.

#[path = "common/sandbox.rs"]
mod sandbox;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use enisync_fakecloud::{FakeTaskStatus, Fault};
use sandbox::{Layout, Sandbox, aux};

const SOON: Duration = Duration::from_secs(20);
const UNASSIGN: &str = "UnassignPrivateIpAddresses";
/// Cycles per crash point (four points: 20 cycles in all).
const CYCLES: u8 = 5;

fn layout(f: impl FnOnce(&mut Layout)) -> Layout {
    let mut l = Layout::default();
    f(&mut l);
    l
}

/// The latest journal record per address (of any generation), as (state, full JSON).
fn journal_latest(sb: &Sandbox) -> BTreeMap<String, serde_json::Value> {
    let mut latest = BTreeMap::new();
    for line in sb.journal_text().lines() {
        let Some((_, json)) = line.split_once(' ') else {
            continue;
        };
        let Ok(rec) = serde_json::from_str::<serde_json::Value>(json) else {
            continue;
        };
        if let Some(ip) = rec["addr"].as_str() {
            latest.insert(ip.to_owned(), rec);
        }
    }
    latest
}

fn journal_state(sb: &Sandbox, ip: Ipv4Addr) -> Option<String> {
    journal_latest(sb)
        .get(&ip.to_string())
        .and_then(|r| r["state"]["state"].as_str().map(str::to_owned))
}

/// Successful unassign tasks that carried `ip`.
fn successful_tasks(sb: &Sandbox, ip: Ipv4Addr) -> usize {
    sb.fake
        .tasks()
        .iter()
        .filter(|t| t.action == UNASSIGN && t.ips.contains(&ip))
        .filter(|t| t.status == FakeTaskStatus::Success)
        .count()
}

fn calls_naming(sb: &Sandbox, ip: Ipv4Addr) -> usize {
    let ip = ip.to_string();
    sb.unassigns()
        .iter()
        .filter(|c| c.ips.contains(&ip))
        .count()
}

fn has_rule(sb: &Sandbox, ip: Ipv4Addr) -> bool {
    sb.ip("rule show")
        .contains(&format!("from {ip} lookup 3501"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    /// The removal is journaled; the grace period runs.
    IntentWritten,
    /// The cloud processed the unassign; its answer has not come back.
    CallSent,
    /// The unassign was accepted and journaled; its task runs.
    TaskRunning,
    /// The task ended; the stale rules are being removed.
    RouteFix,
}

/// One crash cycle: `x` is removed for good, `y` is removed later and re-added while
/// the daemon is dead. Returns whether the kill landed before `x`'s rule was removed.
fn crash_cycle(sb: &mut Sandbox, point: Point, x: Ipv4Addr, y: Ipv4Addr) -> bool {
    sb.ip(&format!("rule add from {x}/32 lookup 3501 pref 3500"));
    sb.start();
    let del = |sb: &Sandbox, ip: Ipv4Addr| sb.ip(&format!("addr del {ip}/24 dev eth1"));
    let pending = |ip: Ipv4Addr| format!("ip={ip}");
    match point {
        Point::IntentWritten => {
            del(sb, y);
            sb.wait_log(&pending(y), SOON);
            sb.arm_kill_on(&["release pending its grace period", &pending(x)]);
            del(sb, x);
            sb.wait_dead(SOON);
            assert!(journal_state(sb, x).as_deref() == Some("observed"));
        }
        Point::CallSent => {
            sb.fake
                .inject(UNASSIGN, Fault::late_answer(Duration::from_secs(3)), 1);
            del(sb, x);
            sb.wait_for("the unassign reached the cloud", SOON, || {
                calls_naming(sb, x) == 1
            });
            del(sb, y);
            sb.wait_log(&pending(y), SOON);
            sb.kill9();
            assert_eq!(
                journal_state(sb, x).as_deref(),
                Some("observed"),
                "the answer never came: only the intent (about to send) is journaled"
            );
        }
        Point::TaskRunning => {
            sb.fake.set_task_duration(Duration::from_secs(3));
            del(sb, x);
            sb.wait_log("UnassignPrivateIpAddresses accepted", SOON);
            del(sb, y);
            sb.wait_log(&pending(y), SOON);
            sb.kill9();
            assert_eq!(journal_state(sb, x).as_deref(), Some("sent"));
            assert_eq!(
                sb.fake
                    .tasks()
                    .iter()
                    .filter(|t| t.ips.contains(&x) && t.status == FakeTaskStatus::Running)
                    .count(),
                1,
                "killed while the task runs"
            );
        }
        Point::RouteFix => {
            sb.fake.set_task_duration(Duration::from_millis(600));
            del(sb, x);
            sb.wait_log("UnassignPrivateIpAddresses accepted", SOON);
            del(sb, y);
            sb.wait_log(&pending(y), SOON);
            sb.arm_kill_on(&["IPs returned to the VPC"]);
            sb.wait_dead(SOON);
        }
    }
    let rule_left = has_rule(sb, x);
    sb.fake.set_task_duration(Duration::from_millis(150));
    // Meanwhile the operator puts `y` back.
    sb.ip(&format!("addr add {y}/24 dev eth1"));
    sb.start();
    // Finished, or already compacted away: a kill that lands late (the log reader runs
    // behind a loaded machine) lets the daemon write `finished` first, and the restart's
    // compaction then drops the finished intents from the file altogether.
    let done = |ip| matches!(journal_state(sb, ip).as_deref(), Some("finished") | None);
    sb.wait_for(&format!("{x} finished in the journal"), SOON, || {
        done(x) && done(y)
    });
    sb.wait_for(&format!("{x} gone from the cloud"), SOON, || {
        !sb.ips_in_cloud().contains(&x)
    });
    sb.wait_for(&format!("the stale rule of {x} removed"), SOON, || {
        !has_rule(sb, x)
    });
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        successful_tasks(sb, x),
        1,
        "{point:?}: {x} released exactly once in effect; calls {:?}\nlog:\n{}",
        sb.unassigns(),
        sb.all_log_text()
    );
    assert!(
        calls_naming(sb, x) <= 2,
        "{point:?}: at most one repeat (after a lost answer): {:?}",
        sb.unassigns()
    );
    assert_eq!(
        calls_naming(sb, y),
        0,
        "{point:?}: {y} re-added: never sent"
    );
    assert!(sb.ips_in_cloud().contains(&y));
    let (status, _) = sb.stop_within(Duration::from_secs(5));
    assert!(status.success());
    rule_left
}

fn crash_cycles(tag: &str, point: Point) {
    let mut sb = Sandbox::new(tag, layout(|l| l.aux = (11..11 + 2 * CYCLES).collect()));
    // Foreign rules make the route fix's rule dump longer, so a kill lands inside it
    // more often; they must survive every cycle.
    sb.ip_batch(
        &(0..400)
            .map(|i| {
                format!(
                    "rule add from 10.9.{}.{}/32 lookup 300 pref 200",
                    i / 200,
                    i % 200
                )
            })
            .collect::<Vec<_>>(),
    );
    let mut before_fix = 0;
    let started = Instant::now();
    for c in 0..CYCLES {
        let (x, y) = (aux(11 + 2 * c), aux(12 + 2 * c));
        if crash_cycle(&mut sb, point, x, y) {
            before_fix += 1;
        }
    }
    let foreign = sb.ip("rule show").matches("lookup 300").count();
    assert_eq!(foreign, 400, "foreign rules untouched");
    println!(
        "{point:?}: {CYCLES} crash cycles in {:?}; kill landed before the rule was removed in {before_fix}",
        started.elapsed()
    );
}

#[test]
fn crash_after_the_intent_is_written() {
    crash_cycles("kiw", Point::IntentWritten);
}

#[test]
fn crash_after_the_call_reached_the_cloud() {
    crash_cycles("kcs", Point::CallSent);
}

#[test]
fn crash_while_the_task_runs() {
    crash_cycles("ktr", Point::TaskRunning);
}

#[test]
fn crash_during_the_route_fix() {
    crash_cycles("krf", Point::RouteFix);
}

/// SIGTERM with releases pending in their grace period and one in flight: exits 0 within
/// a bounded time, takes no new work, keeps everything journaled; a restart in the same
/// boot follows the in-flight one (no second call) and resumes the pending ones under
/// the whole rule: their grace period starts again, and one that is back by then is not
/// released.
#[test]
fn graceful_stop_journals_and_a_restart_resumes_under_the_rule() {
    let grace = Duration::from_millis(1500);
    let mut sb = Sandbox::new(
        "term",
        layout(|l| {
            l.aux = (11..=16).collect();
            l.release = vec!["grace = \"1500ms\"".into()];
        }),
    );
    sb.start();
    sb.fake.set_task_duration(Duration::from_secs(4));
    sb.ip("addr del 10.0.1.11/24 dev eth1");
    sb.wait_log("UnassignPrivateIpAddresses accepted", SOON);
    for n in [12, 13, 14] {
        sb.ip(&format!("addr del 10.0.1.{n}/24 dev eth1"));
    }
    sb.wait_log("ip=10.0.1.14", SOON);
    let (status, took) = sb.stop_within(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "exit 0:\n{}", sb.log_text());
    assert!(took < Duration::from_secs(3), "stopped in {took:?}");
    // The last lines may still be in the pipe to the log reader.
    sb.wait_log("pending releases stay journaled", SOON);
    assert_eq!(journal_state(&sb, aux(11)).as_deref(), Some("sent"));
    for n in [12, 13, 14] {
        assert_eq!(journal_state(&sb, aux(n)).as_deref(), Some("observed"));
    }
    // Stopped means stopped: a removal now is not observed, so never released.
    sb.ip("addr del 10.0.1.15/24 dev eth1");
    // .13 comes back while enisync is down.
    sb.ip("addr add 10.0.1.13/24 dev eth1");
    sb.fake.set_task_duration(Duration::from_millis(150));
    let restart_ms = sb.fake.now_unix() * 1000;
    sb.start();
    assert!(sb.log_text().contains("following a journaled release task"));
    assert_eq!(
        sb.count_log("resuming a journaled release"),
        2,
        "{}",
        sb.log_text()
    );
    sb.wait_for(".11, .12, .14 released", SOON, || {
        let ips = sb.ips_in_cloud();
        ![11, 12, 14].iter().any(|n| ips.contains(&aux(*n)))
    });
    std::thread::sleep(Duration::from_secs(2));
    for n in [11, 12, 14] {
        assert_eq!(successful_tasks(&sb, aux(n)), 1, ".{n} released once");
    }
    assert_eq!(
        calls_naming(&sb, aux(11)),
        1,
        "in flight: followed, not re-sent"
    );
    for n in [13, 15] {
        assert_eq!(calls_naming(&sb, aux(n)), 0, ".{n} never released");
    }
    let first_12 = sb
        .unassigns()
        .into_iter()
        .find(|c| c.ips.contains(&"10.0.1.12".to_string()))
        .expect(".12 sent");
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    assert!(
        first_12.at_ms >= restart_ms + grace_ms - 1000,
        "the grace period started again at the restart: sent {} ms after",
        first_12.at_ms - restart_ms
    );
    let (status, _) = sb.stop_within(Duration::from_secs(5));
    assert!(status.success());
}

/// Journal replay across a (simulated) reboot: an intent of an earlier boot that was
/// never sent is dropped; one that was sent is followed to its end.
#[test]
fn journal_replay_across_a_reboot() {
    let mut sb = Sandbox::new(
        "boot",
        layout(|l| l.release = vec!["grace = \"3s\"".into()]),
    );
    sb.env
        .push(("ENISYNC_BOOT_ID_OVERRIDE".into(), "test-boot-a".into()));
    sb.ip("rule add from 10.0.1.11/32 lookup 3501 pref 3500");
    sb.start();
    sb.fake.set_task_duration(Duration::from_secs(5));
    sb.ip("addr del 10.0.1.11/24 dev eth1");
    sb.wait_log(
        "UnassignPrivateIpAddresses accepted",
        Duration::from_secs(10),
    );
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.wait_log("ip=10.0.1.12", SOON);
    sb.kill9();
    assert_eq!(journal_state(&sb, aux(11)).as_deref(), Some("sent"));
    assert_eq!(journal_state(&sb, aux(12)).as_deref(), Some("observed"));
    // "Reboot": another boot id.
    sb.env[0].1 = "test-boot-b".into();
    sb.fake.set_task_duration(Duration::from_millis(150));
    sb.start();
    assert!(sb.log_text().contains("following a journaled release task"));
    sb.wait_for(".11 finished", SOON, || {
        journal_state(&sb, aux(11)).as_deref() == Some("finished")
    });
    sb.wait_for(".11's rule removed", SOON, || !has_rule(&sb, aux(11)));
    let latest = journal_latest(&sb);
    assert_eq!(latest["10.0.1.12"]["state"]["state"], "finished");
    assert_eq!(
        latest["10.0.1.12"]["state"]["outcome"]["reason"], "earlier_boot",
        "{latest:?}"
    );
    std::thread::sleep(Duration::from_secs(4)); // past the 3 s grace
    assert_eq!(
        calls_naming(&sb, aux(12)),
        0,
        "earlier boot, never sent: dropped"
    );
    assert_eq!(calls_naming(&sb, aux(11)), 1);
    assert_eq!(successful_tasks(&sb, aux(11)), 1);

    // A value without the test- prefix is ignored (the kernel's id is used).
    sb.stop();
    sb.env[0].1 = "not-a-test-id".into();
    sb.start();
    assert!(sb.log_text().contains("ENISYNC_BOOT_ID_OVERRIDE ignored"));
}

/// A torn or corrupted journal tail: every good record is kept (and resumed), the bad
/// lines are reported, nothing panics.
#[test]
fn a_corrupt_journal_tail_keeps_every_good_record() {
    let mut sb = Sandbox::new(
        "torn",
        layout(|l| l.release = vec!["grace = \"2s\"".into()]),
    );
    sb.start();
    sb.ip("addr del 10.0.1.11/24 dev eth1");
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.wait_log("ip=10.0.1.12", SOON);
    sb.kill9();
    let path = sb.dir.join("state").join("intents.journal");
    let mut text = std::fs::read_to_string(&path).expect("journal");
    text.push_str("0123456789abcdef {\"v\":1,\"ip\":\"10.0.1.13\",\"boot_id\":\"x\",\"at\n");
    text.push_str("\u{0}\u{0}garbage");
    std::fs::write(&path, text).expect("write");
    sb.start();
    assert!(
        sb.log_text()
            .contains("journal lines failed their checksum"),
        "{}",
        sb.log_text()
    );
    assert_eq!(sb.count_log("resuming a journaled release"), 2);
    sb.wait_for(".11 and .12 released", SOON, || {
        let ips = sb.ips_in_cloud();
        !ips.contains(&aux(11)) && !ips.contains(&aux(12))
    });
    assert!(sb.ips_in_cloud().contains(&aux(13)));
    assert!(!sb.log_text().contains("panicked"));
}

/// Alarms: an IP that comes back while its release is in flight, and one that comes
/// back after it was released, raise an alarm; their rules are left alone while they
/// are present.
#[test]
fn a_released_or_releasing_ip_coming_back_raises_an_alarm_and_keeps_its_rules() {
    let mut sb = Sandbox::new("alarm", Layout::default());
    sb.start();
    // Released, then back.
    sb.ip("addr del 10.0.1.11/24 dev eth1");
    sb.wait_log("IPs returned to the VPC", SOON);
    sb.ip("addr add 10.0.1.11/24 dev eth1");
    sb.ip("rule add from 10.0.1.11/32 lookup 3501 pref 3500");
    sb.wait_log("came back on the host after the VPC released it", SOON);
    // Releasing (task running), then back, with a rule.
    sb.fake.set_task_duration(Duration::from_secs(2));
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.wait_for(".12 accepted", SOON, || {
        sb.count_log("UnassignPrivateIpAddresses accepted") == 2
    });
    sb.ip("addr add 10.0.1.12/24 dev eth1");
    sb.ip("rule add from 10.0.1.12/32 lookup 3501 pref 3500");
    sb.wait_log("came back on the host while its release is in flight", SOON);
    sb.wait_for(".12's release finished", SOON, || {
        sb.count_log("IPs returned to the VPC") >= 2
    });
    // Another release runs the route fix while both are present.
    sb.fake.set_task_duration(Duration::from_millis(150));
    sb.ip("rule add from 10.0.1.13/32 lookup 3501 pref 3500");
    sb.ip("addr del 10.0.1.13/24 dev eth1");
    sb.wait_for(".13's rule removed", SOON, || !has_rule(&sb, aux(13)));
    std::thread::sleep(Duration::from_millis(500));
    assert!(has_rule(&sb, aux(11)), "present: rule left alone");
    assert!(has_rule(&sb, aux(12)), "present: rule left alone");
    assert_eq!(sb.count_log("decision=\"alarm\""), 2, "{}", sb.log_text());
}
