//! Operating enisync: metrics, health, status and plan, the control socket and its
//! permissions, the audit record, and the blast-radius controls; against the real binary
//! in a namespace with the fake cloud.

#[path = "common/sandbox.rs"]
mod sandbox;

use std::process::Command;
use std::time::{Duration, Instant};

use enisync_fakecloud::Fault;
use sandbox::{Layout, SECRET_KEY, Sandbox};

const SOON: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_millis(2500);
const METRICS_PORT: u16 = 9469;

fn layout(f: impl FnOnce(&mut Layout)) -> Layout {
    let mut l = Layout::default();
    f(&mut l);
    l
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn metrics_move_after_a_release() {
    let mut sb = Sandbox::new("met", Layout::default());
    sb.start();
    let (status, before) = sb.http_get(METRICS_PORT, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        metric(&before, "enisync_releases_total{outcome=\"released\""),
        None
    );
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.wait_unassigns(1, SOON);
    sb.wait_log("IPs returned to the VPC", SOON);
    let (_, after) = sb.http_get(METRICS_PORT, "/metrics");
    assert_eq!(
        metric(
            &after,
            "enisync_releases_total{outcome=\"released\",reason=\"\"}"
        ),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        metric(
            &after,
            "enisync_cloud_calls_total{action=\"UnassignPrivateIpAddresses\",code=\"Success\"}"
        ),
        Some(1.0),
        "{after}"
    );
    assert!(
        metric(
            &after,
            "enisync_cloud_calls_total{action=\"DescribeNetworkInterfaces\",code=\"Success\"}"
        )
        .unwrap_or(0.0)
            // The start-up inventory, and the listing that confirmed the release (its
            // task is not polled: docs/design.md, "Fleet scale").
            >= 2.0
    );
    assert!(
        metric(&after, "enisync_netlink_events_total").unwrap_or(0.0) >= 1.0,
        "{after}"
    );
    assert!(
        after.contains("enisync_cloud_call_duration_seconds_bucket{le="),
        "{after}"
    );
    assert!(metric(&after, "enisync_route_changes_total").is_some());
    assert!(after.contains("enisync_build_info{version=\""));
    assert!(!after.contains(SECRET_KEY));
    assert_eq!(sb.http_get(METRICS_PORT, "/healthz").0, 200);
}

#[test]
fn readyz_turns_ready_only_after_the_inventory() {
    let mut sb = Sandbox::new("rdy", Layout::default());
    sb.fake
        .inject("DescribeNetworkInterfaces", Fault::Http { status: 503 }, 12);
    sb.spawn();
    let deadline = Instant::now() + SOON;
    let mut saw_not_ready = false;
    loop {
        assert!(Instant::now() < deadline, "never ready:\n{}", sb.log_text());
        let got = sb.try_http_get(METRICS_PORT, "/readyz");
        match got {
            Some((503, body)) => {
                assert!(body.contains("not ready"));
                saw_not_ready = true;
            }
            Some((200, _)) => break,
            _ => {} // not listening yet
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        saw_not_ready,
        "/readyz said 503 while the inventory could not be loaded"
    );
    // The log arrives through a pipe and a reader thread: wait, do not race it.
    sb.wait_log("inventory loaded", SOON);
    assert!(
        sb.fake.calls_of("DescribeNetworkInterfaces").len() > 1,
        "it retried"
    );
}

#[test]
fn status_and_plan_tables_and_json() {
    let mut sb = Sandbox::new("st", layout(|l| l.release = vec!["grace = \"30s\"".into()]));
    sb.start();
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.wait_log("release pending its grace period", SOON);

    let out = sb.cli(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    for needle in [
        "enisync: running, releases armed",
        "LINK  STATE  MAC                ENI           VPC          PRIMARY    AUX IPS",
        "eth1  up     52:54:00:12:34:56  eni-second01  vpc-sandbox  10.0.1.10  10.0.1.11 10.0.1.13 10.0.1.14 10.0.1.15",
        "eth0  up     52:54:00:00:00:01  eni-primary0  vpc-sandbox  10.0.0.10  -",
        "PENDING RELEASES",
        "10.0.1.12  eth1  eni-second01  pending",
    ] {
        assert!(table.contains(needle), "missing {needle:?} in\n{table}");
    }

    let out = sb.cli(&["status", "--json"]);
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    for key in ["links", "intents", "recent", "alarms", "errors"] {
        assert!(doc[key].is_array(), "{key} is an array: {doc}");
    }
    assert!(doc["counters"]["released"].is_u64());
    assert!(doc["paused"].is_boolean() && doc["dry_run"].is_boolean());
    let intent = &doc["intents"][0];
    assert_eq!(intent["ip"], "10.0.1.12");
    assert_eq!(intent["eni_id"], "eni-second01");
    assert_eq!(intent["phase"]["phase"], "pending");
    assert!(
        intent["due_in_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 20_000 && ms <= 30_000),
        "{intent}"
    );
    assert!(intent["observed_unix_ms"].is_u64());
    let link = doc["links"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == "eth1"))
        .expect("eth1");
    assert_eq!(link["eni_id"], "eni-second01");
    assert!(
        link["cloud_ips"]
            .as_array()
            .is_some_and(|ips| ips.len() == 5)
    );

    let out = sb.cli(&["plan"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = stdout(&out);
    assert!(plan.contains("WOULD RELEASE NOW\nnone"), "{plan}");
    assert!(
        plan.contains("10.0.1.12  eth1  eni-second01") && plan.contains("grace period"),
        "{plan}"
    );
    let out = sb.cli(&["plan", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan --json is JSON");
    for key in ["would_release", "not_yet", "held", "routing"] {
        assert!(doc[key].is_array(), "{key}: {doc}");
    }
    assert!(sb.unassigns().is_empty(), "status and plan change nothing");
}

#[test]
fn the_socket_refuses_other_users_and_a_stopped_daemon_is_named() {
    let mut sb = Sandbox::new("perm", Layout::default());
    sb.start();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_enisync"),
            "status",
            "--socket",
        ])
        .arg(sb.socket())
        .output()
        .expect("setpriv");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("permission denied") && err.contains("root"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    sb.stop();
    let out = sb.cli(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("enisync is not running"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_audit_record_of_a_release_has_ids_and_clauses_and_no_secret() {
    let mut sb = Sandbox::new("aud", Layout::default());
    sb.start();
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    let call = sb.wait_unassigns(1, SOON).remove(0);
    sb.wait_log("IPs returned to the VPC", SOON);
    let log = sb.log_text();
    let request_id = call.request_id.expect("the fake answered with a RequestId");
    let released = log
        .lines()
        .find(|l| l.contains("decision=\"released\""))
        .expect("released record");
    assert!(
        released.contains(&format!("request_id={request_id}")),
        "{released}"
    );
    assert!(released.contains("task_id="), "{released}");
    assert!(released.contains("duration_ms="), "{released}");
    let allowed = log
        .lines()
        .find(|l| l.contains("decision=\"allowed\""))
        .expect("allowed record");
    for field in [
        "c1_observed",
        "c2_remover",
        "c3_collateral",
        "c4_absent",
        "c5_link",
        "c6_burst",
        "c7_cloud",
        "grace_ms",
        "removed_unix_ms",
        "remover=",
    ] {
        assert!(allowed.contains(field), "{field} in {allowed}");
    }
    assert!(!log.contains(SECRET_KEY), "no secret in the log");
}

#[test]
fn pause_resume_cancel_and_release_held() {
    let mut sb = Sandbox::new(
        "ctl",
        layout(|l| {
            l.aux = (11..=20).collect();
            l.release = vec!["burst_limit = 3".into(), "grace = \"500ms\"".into()];
        }),
    );
    sb.start();
    // Paused: nothing goes out; resumed: it does.
    assert!(sb.cli(&["pause"]).status.success());
    sb.ip("addr del 10.0.1.11/24 dev eth1");
    sb.assert_no_unassign_for(QUIET);
    assert!(stdout(&sb.cli(&["status"])).contains("enisync: paused"));
    assert!(sb.cli(&["resume"]).status.success());
    sb.wait_unassigns(1, SOON);

    // Cancel a pending release.
    sb.fake.clear_calls();
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    let out = sb.cli(&["cancel", "10.0.1.12"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(QUIET);
    assert!(sb.unassigns().is_empty(), "cancelled");
    let out = sb.cli(&["cancel", "10.0.1.99"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no pending release of 10.0.1.99"));

    // A held burst goes out only when confirmed.
    sb.ip_batch(
        &(15..=19)
            .map(|n| format!("addr del 10.0.1.{n}/24 dev eth1"))
            .collect::<Vec<_>>(),
    );
    sb.wait_log("held until an operator confirms", SOON);
    sb.assert_no_unassign_for(QUIET);
    let doc: serde_json::Value =
        serde_json::from_slice(&sb.cli(&["status", "--json"]).stdout).expect("json");
    assert_eq!(
        doc["intents"]
            .as_array()
            .map(|i| i.iter().filter(|i| i["phase"]["phase"] == "held").count()),
        Some(5)
    );
    let out = sb.cli(&["release", "--held"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let calls = sb.wait_unassigns(1, SOON);
    let deadline = Instant::now() + SOON;
    while sb.unassigns().iter().map(|c| c.ips.len()).sum::<usize>() < 5 {
        assert!(Instant::now() < deadline, "{calls:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_per_host_limit_caps_releases_per_window() {
    let mut sb = Sandbox::new(
        "lim",
        layout(|l| {
            l.release = vec![
                "host_limit = 2".into(),
                "host_limit_window = \"10m\"".into(),
            ];
        }),
    );
    sb.start();
    for n in 11..=14 {
        sb.ip(&format!("addr del 10.0.1.{n}/24 dev eth1"));
    }
    sb.wait_log("per-host release limit reached", SOON);
    std::thread::sleep(QUIET);
    let released: usize = sb.unassigns().iter().map(|c| c.ips.len()).sum();
    assert_eq!(released, 2, "{:?}", sb.unassigns());
    let (_, metrics) = sb.http_get(METRICS_PORT, "/metrics");
    assert_eq!(
        metric(&metrics, "enisync_host_limit_waits_total"),
        Some(2.0),
        "{metrics}"
    );
}

#[test]
fn an_ip_back_after_release_raises_the_alarm_in_status_metrics_and_log() {
    let mut sb = Sandbox::new("alm", Layout::default());
    sb.start();
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.wait_unassigns(1, SOON);
    sb.wait_log("IPs returned to the VPC", SOON);
    sb.ip("addr add 10.0.1.12/24 dev eth1");
    sb.wait_log("came back on the host after the VPC released it", SOON);
    let doc: serde_json::Value =
        serde_json::from_slice(&sb.cli(&["status", "--json"]).stdout).expect("json");
    assert!(
        doc["alarms"][0]
            .as_str()
            .is_some_and(|a| a.contains("10.0.1.12")),
        "{doc}"
    );
    assert!(stdout(&sb.cli(&["status"])).contains("ALARMS\n10.0.1.12 came back"));
    let (_, metrics) = sb.http_get(METRICS_PORT, "/metrics");
    assert_eq!(
        metric(&metrics, "enisync_alarms_total"),
        Some(1.0),
        "{metrics}"
    );
}

#[test]
fn no_secret_in_status_plan_or_metrics() {
    let mut sb = Sandbox::new("sec", Layout::default());
    sb.start();
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.wait_unassigns(1, SOON);
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["plan"],
        &["plan", "--json"],
    ] {
        let out = sb.cli(args);
        assert!(out.status.success());
        assert!(!stdout(&out).contains(SECRET_KEY), "{args:?}");
    }
    let (_, metrics) = sb.http_get(METRICS_PORT, "/metrics");
    assert!(!metrics.contains(SECRET_KEY));
}

#[test]
fn json_log_lines_carry_the_audit_fields() {
    let mut sb = Sandbox::new("jsn", layout(|l| l.log_format = Some("json")));
    sb.start();
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.wait_log("IPs returned to the VPC", SOON);
    let released = sb
        .log_lines()
        .into_iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|v| v["decision"] == "released")
        .expect("a JSON record with decision=released");
    assert_eq!(released["target"], "audit");
    // Each released IP has a record of its own with the IP as a field (under journald:
    // `journalctl -u enisync IP=10.0.1.12`).
    assert_eq!(released["ip"], "10.0.1.12", "{released}");
    assert!(
        released["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{released}"
    );
    assert!(released["task_id"].is_string());
    assert!(released["duration_ms"].is_u64());
}
