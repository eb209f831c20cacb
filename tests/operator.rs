//! The operator's path through the daemon, in a network namespace against the fake
//! cloud: what an operator does between `dpkg -i` and a running, armed agent (arming by
//! reload, pausing across restarts, signals and `status` while the metadata service is
//! still away, starting without it). The same path under a real systemd with the real
//! package is `tests/packaging/systemd_real.sh`.

#[path = "common/sandbox.rs"]
mod sandbox;

use std::time::{Duration, Instant};

use enisync_fakecloud::{Fault, Surface};
use sandbox::{ENI0, ENI1, Layout, MAC0, MAC1, Sandbox, aux};

const SOON: Duration = Duration::from_secs(20);

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The metadata service answers nothing (503 to every request) until `clear_faults`.
fn metadata_down(sb: &Sandbox) {
    sb.fake.inject_on(
        Surface::Metadata,
        "*",
        Fault::Http { status: 503 },
        1_000_000,
    );
}

/// (h, 4) While start waits for the metadata service: SIGHUP is handled (the process
/// stays, and says so), `status` says what it waits for, `pause` works and is kept,
/// `/readyz` names the wait, and SIGTERM stops it at once.
#[test]
fn signals_status_and_pause_are_answered_while_waiting_for_metadata() {
    let mut sb = Sandbox::new("opwait", Layout::default());
    metadata_down(&sb);
    sb.spawn();
    sb.wait_log("metadata service not usable yet", SOON);

    sb.signal("HUP");
    sb.wait_log("reload received while starting", SOON);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        sb.try_exit().is_none(),
        "a SIGHUP while waiting must not end the process:\n{}",
        sb.log_text()
    );

    let status = sb.cli(&["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(
        stdout(&status).contains("STARTING: waiting for the metadata service"),
        "{}",
        stdout(&status)
    );
    let plan = sb.cli(&["plan"]);
    assert!(!plan.status.success(), "plan has nothing to show yet");
    assert!(
        stderr(&plan).contains("still starting"),
        "{}",
        stderr(&plan)
    );

    let pause = sb.cli(&["pause"]);
    assert!(pause.status.success(), "{}", stderr(&pause));
    let status = stdout(&sb.cli(&["status"]));
    assert!(
        status.contains("paused since") && status.contains("by uid 0"),
        "{status}"
    );

    let (code, body) = sb.http_get(9469, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("waiting for the metadata service"),
        "/readyz says what start waits for: {body}"
    );
    let (code, _) = sb.http_get(9469, "/healthz");
    assert_eq!(code, 200, "alive while waiting");

    // Metadata comes back: the engine starts paused, as asked while it waited.
    sb.fake.clear_faults();
    sb.wait_log("enisync ready", SOON);
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.assert_no_unassign_for(Duration::from_secs(2));
    let resume = sb.cli(&["resume"]);
    assert!(resume.status.success(), "{}", stderr(&resume));
    sb.wait_unassigns(1, SOON);

    let (status, took) = sb.stop_within(Duration::from_secs(5));
    assert!(status.success(), "{status:?} after {took:?}");
}

/// SIGTERM while waiting for the metadata service: a clean exit 0, promptly.
#[test]
fn sigterm_while_waiting_for_metadata_exits_cleanly() {
    let mut sb = Sandbox::new("opterm", Layout::default());
    metadata_down(&sb);
    sb.spawn();
    sb.wait_log("metadata service not usable yet", SOON);
    let (status, took) = sb.stop_within(Duration::from_secs(5));
    assert!(
        status.success(),
        "{status:?} after {took:?}:\n{}",
        sb.log_text()
    );
    assert!(
        sb.log_text().contains("enisync stopped"),
        "{}",
        sb.log_text()
    );
}

/// (e) A pause is kept in `state.dir`: a restart (here a `kill -9`, as the watchdog or
/// the OOM killer would do it) comes back paused, `status` says since when and by
/// which uid, and only `resume` clears it.
#[test]
fn a_pause_survives_a_restart_and_says_since_when_and_by_whom() {
    let mut sb = Sandbox::new("oppause", Layout::default());
    sb.start();
    let pause = sb.cli(&["pause"]);
    assert!(pause.status.success(), "{}", stderr(&pause));
    sb.wait_log("decision=\"paused\"", SOON);
    assert!(sb.log_text().contains("by_uid=0"), "{}", sb.log_text());
    sb.kill9();

    sb.start();
    let status = stdout(&sb.cli(&["status"]));
    assert!(
        status.contains("paused since 20") && status.contains("by uid 0"),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&sb.cli(&["status", "--json"]))).expect("status json");
    assert_eq!(json["paused"], true, "{json}");
    assert_eq!(json["paused_by_uid"], 0, "{json}");
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.assert_no_unassign_for(Duration::from_secs(2));

    let resume = sb.cli(&["resume"]);
    assert!(resume.status.success(), "{}", stderr(&resume));
    let calls = sb.wait_unassigns(1, SOON);
    assert_eq!(calls[0].ips, vec![aux(12).to_string()]);
    assert!(
        !sb.dir.join("state").join("paused").exists(),
        "resume removed the pause file"
    );
}

/// (c) The packaged config is dry-run; an operator arms it with `dry_run = false` and a
/// reload. Releases and routing are armed together: the stale rule of the released IP
/// goes. And a key that only a restart applies is named by the reload.
#[test]
fn arming_by_reload_arms_routing_and_names_what_needs_a_restart() {
    let mut sb = Sandbox::new(
        "oparm",
        Layout {
            release: vec!["dry_run = true".into()],
            ..Layout::default()
        },
    );
    sb.ip("rule add from 10.0.1.12/32 lookup 3501 pref 3500");
    sb.start();
    sb.edit_config(|t| {
        t.replace("dry_run = true", "dry_run = false")
            .replace("mode = \"cleanup\"", "mode = \"off\"")
    });
    sb.signal("HUP");
    sb.wait_log("configuration reloaded", SOON);
    sb.wait_log("settings reloaded", SOON);
    let reload = sb
        .log_lines()
        .into_iter()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap_or_default();
    assert!(
        reload.contains("need a restart") && reload.contains("routing.mode"),
        "the reload names routing.mode as needing a restart: {reload}"
    );

    sb.ip("addr del 10.0.1.12/24 dev eth1");
    let calls = sb.wait_unassigns(1, SOON);
    assert_eq!(calls[0].ips, vec![aux(12).to_string()]);
    sb.wait_log("stale rules of released IPs removed", SOON);
    let rules = sb.ip("rule show");
    assert!(
        !rules.contains("10.0.1.12"),
        "routing was armed by the reload (and kept mode cleanup until a restart): {rules}"
    );
}

/// (3) `cloud.instance_id` with `cloud.region` and `[[interface]]` mappings: enisync
/// starts and releases with no metadata service at all.
#[test]
fn instance_id_region_and_interfaces_start_without_the_metadata_service() {
    let layout = Layout {
        cloud: vec![format!("instance_id = \"{}\"", sandbox::INSTANCE)],
        extra_config: format!(
            "\n[[interface]]\nmac = \"{MAC0}\"\neni = \"{ENI0}\"\nvpc = \"vpc-sandbox\"\n\n\
             [[interface]]\nmac = \"{MAC1}\"\neni = \"{ENI1}\"\nvpc = \"vpc-sandbox\"\ndevice_index = 1\n"
        ),
        ..Layout::default()
    };
    let mut sb = Sandbox::new("opnometa", layout);
    metadata_down(&sb);
    let started = Instant::now();
    sb.start();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "ready without waiting for metadata"
    );
    assert!(
        sb.log_text().contains("metadata service is not needed"),
        "{}",
        sb.log_text()
    );
    assert_eq!(
        sb.fake
            .calls()
            .iter()
            .filter(|c| c.surface == Surface::Metadata)
            .count(),
        0,
        "no metadata request at all"
    );
    sb.ip("addr del 10.0.1.13/24 dev eth1");
    let calls = sb.wait_unassigns(1, SOON);
    assert_eq!(calls[0].eni.as_deref(), Some(ENI1));
    assert_eq!(calls[0].ips, vec![aux(13).to_string()]);
}
