//! End to end: the real `enisync` binary, the real kernel in a network namespace of the
//! test's own, and the fake Tencent Cloud (a real HTTP server) inside that namespace.
//! Letters name the acceptance items of the daemon issue; each test names the clause of
//! the trigger rule (docs/design.md) it proves.

#[path = "common/sandbox.rs"]
mod sandbox;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use enisync_fakecloud::{Call, Surface};
use sandbox::{ENI1, Layout, Sandbox, aux};

/// Longer than grace + coalescing + a task: a release that was going to happen has.
const QUIET: Duration = Duration::from_millis(2500);
const SOON: Duration = Duration::from_secs(20);

fn names_ip(call: &Call, ip: &str) -> bool {
    call.ips.iter().any(|i| i == ip)
}

fn layout(f: impl FnOnce(&mut Layout)) -> Layout {
    let mut l = Layout::default();
    f(&mut l);
    l
}

/// (a) One aux IP deleted: exactly one API 3.0 unassign with the right ENI and IP, its
/// task confirmed by listing (docs/design.md, "Fleet scale"), the IP gone from the
/// cloud, and its `from` rule gone.
#[test]
fn a_v3_one_removal_one_call_task_success_rule_gone() {
    let mut sb = Sandbox::new("a", Layout::default());
    sb.ip("rule add from 10.0.1.12/32 lookup 3501 pref 3500");
    sb.ip("rule add from 10.0.1.13/32 lookup 3501 pref 3500");
    sb.start();
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    let calls = sb.wait_unassigns(1, SOON);
    assert_eq!(calls[0].surface, Surface::V3);
    assert_eq!(calls[0].eni.as_deref(), Some(ENI1));
    assert_eq!(calls[0].ips, vec!["10.0.1.12".to_string()]);
    sb.wait_log("IPs returned to the VPC", SOON);
    sb.wait_log("confirmed by listing", SOON);
    let polls = sb.fake.calls_of("DescribeVpcTaskResult");
    assert!(
        polls.is_empty(),
        "confirmed by listing, not polled: {polls:?}"
    );
    assert!(!sb.ips_in_cloud().contains(&aux(12)));
    assert!(sb.ips_in_cloud().contains(&aux(13)));
    sb.wait_log("stale rules of released IPs removed", SOON);
    let rules = sb.ip("rule show");
    assert!(!rules.contains("10.0.1.12"), "stale rule removed: {rules}");
    assert!(
        rules.contains("10.0.1.13"),
        "other rules untouched: {rules}"
    );
    std::thread::sleep(QUIET);
    assert_eq!(sb.unassigns().len(), 1, "exactly one call");
}

/// (b) The same through the legacy API; listing still goes through API 3.0.
#[test]
fn b_legacy_one_removal_one_call_task_success_rule_gone() {
    let mut sb = Sandbox::new("b", layout(|l| l.legacy = true));
    sb.ip("rule add from 10.0.1.12/32 lookup 3501 pref 3500");
    sb.start();
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    let calls = sb.wait_unassigns(1, SOON);
    assert_eq!(calls[0].surface, Surface::Legacy);
    assert_eq!(calls[0].eni.as_deref(), Some(ENI1));
    assert!(names_ip(&calls[0], "10.0.1.12"));
    assert_eq!(calls[0].params["vpcId"], "vpc-sandbox");
    assert_eq!(calls[0].params["privateIpAddress.0"], "10.0.1.12");
    sb.wait_log("IPs returned to the VPC", SOON);
    assert!(
        sb.fake
            .calls_of("DescribeVpcTaskResult")
            .iter()
            .any(|c| c.surface == Surface::Legacy),
        "the legacy task query was used"
    );
    assert!(
        sb.fake
            .calls_of("DescribeNetworkInterfaces")
            .iter()
            .all(|c| c.surface == Surface::V3),
        "listing always through API 3.0"
    );
    assert!(!sb.ips_in_cloud().contains(&aux(12)));
    sb.wait_log("stale rules of released IPs removed", SOON);
    assert!(!sb.ip("rule show").contains("10.0.1.12"));
    std::thread::sleep(QUIET);
    assert_eq!(sb.unassigns().len(), 1);
}

/// (c) Clause 4: removed and re-added within the grace period, on the same link, on
/// another link, or with another prefix: no call.
#[test]
fn c_readded_within_grace_anywhere_is_not_released() {
    let mut sb = Sandbox::new(
        "c",
        layout(|l| l.release = vec!["grace = \"1500ms\"".into()]),
    );
    sb.start();
    sb.ip("addr del 10.0.1.11/24 dev eth1");
    sb.ip("addr add 10.0.1.11/24 dev eth1");
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.ip("addr add 10.0.1.12/24 dev eth0");
    sb.ip("addr del 10.0.1.13/24 dev eth1");
    sb.ip("addr add 10.0.1.13/32 dev eth1");
    sb.assert_no_unassign_for(QUIET + Duration::from_millis(1500));
    assert!(
        sb.log_text()
            .contains("back on the host within the grace period")
    );
}

/// (d) Clause 3 and the primary rule: the subnet's primary removed with aux IPs inside
/// its prefix, under both `promote_secondaries` settings: no call at all.
#[test]
fn d_primary_removed_sweeps_nothing_into_a_release() {
    for promote in ["0", "1"] {
        let mut sb = Sandbox::new("d", Layout::default());
        sb.exec(&format!(
            "sysctl -qw net.ipv4.conf.eth1.promote_secondaries={promote}"
        ));
        sb.start();
        sb.ip("addr del 10.0.1.10/24 dev eth1");
        sb.assert_no_unassign_for(QUIET);
        let log = sb.log_text();
        assert!(
            log.contains("a primary IP is never released"),
            "promote={promote}: {log}"
        );
        if promote == "0" {
            assert!(
                log.contains("swept away with its subnet's primary address"),
                "{log}"
            );
        }
    }
}

/// (e) Clause 5: an aux IP deleted and then, within the grace period, its link set
/// down, deleted, or moved to another namespace: no call.
#[test]
fn e_link_down_deleted_or_moved_within_grace_is_not_released() {
    let grace = |l: &mut Layout| l.release = vec!["grace = \"1s\"".into()];
    let mut sb = Sandbox::new("e1", layout(grace));
    sb.start();
    sb.ip("addr del 10.0.1.11/24 dev eth1");
    sb.ip("link set eth1 down");
    sb.assert_no_unassign_for(QUIET);
    assert!(sb.log_text().contains("its link went down"));

    let mut sb = Sandbox::new("e2", layout(grace));
    sb.start();
    sb.ip("addr del 10.0.1.11/24 dev eth1");
    sb.ip("link del eth1");
    sb.assert_no_unassign_for(QUIET);
    assert_link_cancel(&sb);

    let mut sb = Sandbox::new("e3", layout(grace));
    let other = format!("{}-away", sb.ns);
    sandbox::sh(Command::new("ip").args(["netns", "add", &other]));
    sb.start();
    sb.ip("addr del 10.0.1.11/24 dev eth1");
    sb.ip(&format!("link set eth1 netns {other}"));
    sb.assert_no_unassign_for(QUIET);
    let _ = Command::new("ip").args(["netns", "del", &other]).status();
    assert_link_cancel(&sb);
}

/// The kernel reports a deleted or moved link as down first, then gone: either reason
/// cancels the release.
fn assert_link_cancel(sb: &Sandbox) {
    let log = sb.log_text();
    assert!(
        log.contains("release cancelled")
            && (log.contains("its link went down") || log.contains("deleted or moved")),
        "{log}"
    );
}

/// (f) Clause 7: an aux IP the cloud does not list on the ENI, one MIGRATING, one with
/// an EIP bound: no call; the MIGRATING one is released once AVAILABLE, still absent.
#[test]
fn f_cloud_checks_at_send_time() {
    let mut sb = Sandbox::new(
        "f",
        layout(|l| {
            l.release = vec!["not_listed_recheck = \"1s\"".into()];
        }),
    );
    sb.ip("addr add 10.0.1.50/24 dev eth1");
    sb.fake.set_ip_state(aux(13), "MIGRATING").expect("state");
    sb.fake
        .bind_eip(aux(14), "eip-sandbox1", None)
        .expect("eip");
    sb.start();
    sb.ip("addr del 10.0.1.50/24 dev eth1");
    sb.ip("addr del 10.0.1.13/24 dev eth1");
    sb.ip("addr del 10.0.1.14/24 dev eth1");
    sb.assert_no_unassign_for(QUIET + Duration::from_secs(1));
    let log = sb.log_text();
    assert!(
        log.contains("the cloud does not list this IP on the ENI"),
        "{log}"
    );
    assert!(log.contains("IP state MIGRATING"), "{log}");
    assert!(log.contains("an EIP (eip-sandbox1) is bound"), "{log}");
    sb.fake.set_ip_state(aux(13), "AVAILABLE").expect("state");
    let calls = sb.wait_unassigns(1, SOON);
    assert_eq!(calls[0].ips, vec!["10.0.1.13".to_string()]);
    std::thread::sleep(QUIET);
    assert_eq!(sb.unassigns().len(), 1);
    assert!(
        sb.ips_in_cloud().contains(&aux(14)),
        "the EIP-bound IP stays"
    );
}

/// (g) Clause 5 and the filters: a link outside `interfaces`, an IP outside `include`
/// or inside `exclude`, a macvlan child sharing the ENI's MAC: no call.
#[test]
fn g_filters_and_children_are_not_released() {
    let mut sb = Sandbox::new(
        "g1",
        layout(|l| l.release = vec!["interfaces = [\"eth0\"]".into()]),
    );
    sb.start();
    sb.ip("addr del 10.0.1.11/24 dev eth1");
    sb.assert_no_unassign_for(QUIET);
    assert!(sb.log_text().contains("link outside release.interfaces"));

    let mut sb = Sandbox::new(
        "g2",
        layout(|l| {
            l.release = vec![
                "include = [\"10.0.1.12/31\"]".into(),
                "exclude = [\"10.0.1.12/32\"]".into(),
            ];
        }),
    );
    sb.start();
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.ip("addr del 10.0.1.14/24 dev eth1");
    sb.assert_no_unassign_for(QUIET);
    let log = sb.log_text();
    assert!(
        log.contains("IP inside release.exclude") && log.contains("IP outside release.include"),
        "{log}"
    );

    let mut sb = Sandbox::new("g3", Layout::default());
    sb.fake.add_secondary_ip(ENI1, aux(40)).expect("cloud ip");
    // passthru: the macvlan takes the lower link's MAC, the ENI's.
    sb.ip("link add mv0 link eth1 type macvlan mode passthru");
    sb.ip("link set mv0 up");
    assert!(
        sb.ip("link show mv0").contains("52:54:00:12:34:56"),
        "shares the ENI's MAC"
    );
    sb.ip("addr add 10.0.1.40/24 dev mv0");
    sb.start();
    sb.ip("addr del 10.0.1.40/24 dev mv0");
    sb.assert_no_unassign_for(QUIET);
    assert!(sb.log_text().contains("not a physical link"));
}

/// (h) Dry run: every check, no call, no rule change, and the would-be call logged.
#[test]
fn h_dry_run_mutates_nothing_and_logs_the_call() {
    let mut sb = Sandbox::new("h", layout(|l| l.release = vec!["dry_run = true".into()]));
    sb.ip("rule add from 10.0.1.12/32 lookup 3501 pref 3500");
    sb.start();
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.wait_log("would call UnassignPrivateIpAddresses", SOON);
    sb.assert_no_unassign_for(QUIET);
    let log = sb.log_text();
    assert!(
        log.contains("NetworkInterfaceId=eni-second01") && log.contains("10.0.1.12"),
        "{log}"
    );
    assert!(
        sb.ip("rule show").contains("10.0.1.12"),
        "no rule change in dry run"
    );
    assert!(sb.ips_in_cloud().contains(&aux(12)));
    assert!(
        !sb.fake.calls_of("DescribeNetworkInterfaces").is_empty(),
        "checks still run"
    );
}

/// (i) 25 aux IPs of one ENI deleted at once with one `ip -batch`, burst limit raised:
/// exactly 3 calls, all 25 released.
#[test]
fn i_twenty_five_at_once_become_three_calls() {
    let mut sb = Sandbox::new(
        "i",
        layout(|l| {
            l.aux = (11..=35).collect();
            l.release = vec!["burst_limit = 100".into()];
        }),
    );
    sb.start();
    sb.ip_batch(
        &(11..=35)
            .map(|n| format!("addr del 10.0.1.{n}/24 dev eth1"))
            .collect::<Vec<_>>(),
    );
    let calls = sb.wait_unassigns(3, SOON);
    sb.wait_log("IPs returned to the VPC", SOON);
    std::thread::sleep(QUIET);
    let calls_after = sb.unassigns();
    assert_eq!(calls_after.len(), 3, "{calls:?}");
    let mut sizes: Vec<usize> = calls_after.iter().map(|c| c.ips.len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![5, 10, 10]);
    let deadline = std::time::Instant::now() + SOON;
    while sb
        .ips_in_cloud()
        .iter()
        .any(|ip| (11..=35).contains(&ip.octets()[3]))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "all 25 released: {:?}",
            sb.ips_in_cloud()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (j) Manage mode: a table and `from` rules for the IPs present; the released IP's rule
/// goes, the others stay, foreign rules and tables are untouched, and an owned rule that
/// someone deletes comes back.
#[test]
fn j_manage_mode_keeps_owned_routing_and_leaves_foreign_alone() {
    let mut sb = Sandbox::new("j", layout(|l| l.routing_mode = "manage"));
    sb.ip("rule add from 10.0.9.9/32 lookup 300 pref 200");
    sb.ip("route add 10.9.0.0/16 via 10.0.0.1 table 300");
    sb.start();
    // "enisync ready" comes before the engine's first turn, which installs the owned
    // rules one by one: wait for that turn (bounded) rather than race it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let rules = loop {
        let rules = sb.ip("rule show");
        let all = (10..=15).all(|n| rules.contains(&format!("from 10.0.1.{n} lookup 3501")));
        if all || std::time::Instant::now() >= deadline {
            break rules;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for n in 10..=15 {
        assert!(
            rules.contains(&format!("from 10.0.1.{n} lookup 3501")),
            "rule for .{n}: {rules}"
        );
    }
    let table = sb.ip("route show table 3501");
    assert!(table.contains("default via 10.0.1.1 dev eth1"), "{table}");
    assert!(table.contains("10.0.1.0/24 dev eth1"), "{table}");

    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.wait_unassigns(1, SOON);
    sb.wait_log("stale rules of released IPs removed", SOON);
    let rules = sb.ip("rule show");
    assert!(!rules.contains("from 10.0.1.12 "), "{rules}");
    assert!(rules.contains("from 10.0.1.13 lookup 3501"), "{rules}");
    assert!(
        rules.contains("from 10.0.9.9 lookup 300"),
        "foreign rule untouched: {rules}"
    );
    assert!(
        sb.ip("route show table 300")
            .contains("10.9.0.0/16 via 10.0.0.1"),
        "foreign table untouched"
    );

    sb.ip("rule del from 10.0.1.14/32 lookup 3501");
    let deadline = std::time::Instant::now() + SOON;
    while !sb.ip("rule show").contains("from 10.0.1.14 lookup 3501") {
        assert!(
            std::time::Instant::now() < deadline,
            "the deleted owned rule comes back:\n{}",
            sb.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (l) Clause 2: a removal by a process in `ignore_removers` is not released.
#[test]
fn l_ignored_remover_is_not_released() {
    let mut sb = Sandbox::new(
        "l",
        layout(|l| l.release = vec!["ignore_removers = [\"ip\"]".into()]),
    );
    sb.start();
    // A long-lived `ip -batch -` stays alive while the event is read, so its name is
    // known (a one-shot `ip` may have exited by then: its removal counts as a user's).
    let mut ip = Command::new("ip")
        .args(["-n", &sb.ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("ip -batch");
    let mut stdin = ip.stdin.take().expect("stdin");
    writeln!(stdin, "addr del 10.0.1.12/24 dev eth1").expect("write");
    stdin.flush().expect("flush");
    sb.wait_log("removed by ignored process ip", SOON);
    drop(stdin);
    let _ = ip.wait();
    sb.assert_no_unassign_for(QUIET);
}

/// (m) Clause 6: more than `burst_limit` aux IPs leaving within a second are held, not
/// released, and the hold is in the log.
#[test]
fn m_a_burst_is_held() {
    let mut sb = Sandbox::new("m", layout(|l| l.aux = (11..=20).collect()));
    sb.start();
    sb.ip_batch(
        &(11..=20)
            .map(|n| format!("addr del 10.0.1.{n}/24 dev eth1"))
            .collect::<Vec<_>>(),
    );
    sb.wait_log("held until an operator confirms", SOON);
    sb.assert_no_unassign_for(QUIET);
}

/// Clause 6 across a restart: a held burst stays held (it is journaled as held), so a
/// restart is no way around the operator's confirmation.
#[test]
fn m_a_held_burst_stays_held_across_a_restart() {
    let mut sb = Sandbox::new("m2", layout(|l| l.release = vec!["burst_limit = 2".into()]));
    sb.start();
    sb.ip_batch(
        &(11..=14)
            .map(|n| format!("addr del 10.0.1.{n}/24 dev eth1"))
            .collect::<Vec<_>>(),
    );
    sb.wait_log("held until an operator confirms", SOON);
    assert_eq!(sb.stop().and_then(|s| s.code()), Some(0), "graceful stop");
    sb.start();
    sb.assert_no_unassign_for(QUIET);
    assert_eq!(
        sb.log_text()
            .matches("resuming a journaled release")
            .count(),
        4,
        "{}",
        sb.log_text()
    );
}

/// Dry run in manage mode: routing is planned and logged, never changed.
#[test]
fn h_dry_run_in_manage_mode_changes_no_routing() {
    let mut sb = Sandbox::new(
        "h2",
        layout(|l| {
            l.routing_mode = "manage";
            l.release = vec!["dry_run = true".into()];
        }),
    );
    let before = (sb.ip("rule show"), sb.ip("route show table all"));
    sb.start();
    sb.wait_log("dry run: routing not changed", SOON);
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.wait_log("would call UnassignPrivateIpAddresses", SOON);
    std::thread::sleep(QUIET);
    let after = (sb.ip("rule show"), sb.ip("route show table all"));
    assert_eq!(before.0, after.0, "rules unchanged");
    assert!(
        !after.1.contains("proto 212"),
        "no route of ours: {}",
        after.1
    );
    assert!(sb.unassigns().is_empty());
}

/// (n) Clause 1: an aux IP already absent when enisync starts is never released.
#[test]
fn n_absent_at_start_is_not_released() {
    let mut sb = Sandbox::new("n", Layout::default());
    sb.ip("addr del 10.0.1.13/24 dev eth1");
    sb.start();
    sb.assert_no_unassign_for(QUIET);
    assert!(sb.ips_in_cloud().contains(&aux(13)));
}

/// (o) An IPv6 address the cloud does not list on the ENI is never released (only an
/// address in the ENI's `Ipv6AddressSet` is a candidate). Before IPv6 releases this
/// test said "IPv6 is ignored"; the IPv6 behaviour is in `tests/e2e_ipv6.rs`.
#[test]
fn o_ipv6_not_listed_by_the_cloud_is_not_released() {
    let mut sb = Sandbox::new("o", Layout::default());
    sb.start();
    sb.ip("-6 addr add fd00::11/64 dev eth1 nodad");
    sb.ip("-6 addr del fd00::11/64 dev eth1");
    sb.assert_no_unassign_for(QUIET);
    assert!(sb.unassigns6().is_empty(), "{:?}", sb.unassigns6());
}

/// One enisync per host: a second one on the same state directory refuses to start.
#[test]
fn a_second_instance_refuses_to_start() {
    let mut sb = Sandbox::new("lock", Layout::default());
    sb.start();
    let out = sb.run_to_exit();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another enisync holds the lock"), "{err}");
}

/// Manage mode refuses to start, naming the table, when a table it would manage already
/// holds routes it does not own.
#[test]
fn manage_mode_refuses_a_table_with_foreign_routes() {
    let sb = Sandbox::new("tbl", layout(|l| l.routing_mode = "manage"));
    sb.ip("route add 10.7.0.0/16 via 10.0.1.1 table 3501");
    let out = sb.run_to_exit();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3501"), "names the table: {err}");
    assert!(
        sb.ip("route show table 3501").contains("10.7.0.0/16"),
        "left alone"
    );
}
