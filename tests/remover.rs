//! Who removed an address (clause 2 and its "also required" points): the
//! real daemon in a sandbox namespace, with real process trees.
//!
//! - A script named `dhclient-script`, run by a process named `dhclient`, runs
//!   `ip addr flush dev eth1`: nothing is released, and the audit names the chain.
//! - With `/proc/1` hidden from the daemon, the start-up probe fails: `/readyz` says
//!   why, and a removal is held as unknown (releases disarmed) until an operator
//!   confirms it.
//! - Without the capabilities to read other users' `/proc/<pid>/fd` (the packaged
//!   unit's default), `status` says that keepalived's removals cannot be named and are
//!   held, pointing to the drop-in, and `/readyz` stays ready.
//! - Without taskstats, `status` says so and `/readyz` stays ready.
//!
//! Needs root (namespaces, mounts): fails, never skips, without it.

#[path = "common/sandbox.rs"]
mod sandbox;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use sandbox::{Layout, Sandbox, aux};

const SOON: Duration = Duration::from_secs(20);
const METRICS_PORT: u16 = 9469;

fn script(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// The `ip` that dhclient-script runs for dhclient is dhclient's removal (the default
/// `ignore_removers`): the old code matched only the remover's own name (`ip`) and
/// released the aux IPs of the flush.
#[test]
fn a_flush_by_dhclient_script_under_dhclient_is_not_released_and_the_audit_names_the_chain() {
    let mut sb = Sandbox::new(
        "dhc",
        Layout {
            release: vec!["grace = \"1s\"".into()],
            ..Layout::default()
        },
    );
    sb.start();
    let bin = sb.dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    script(
        &bin,
        "dhclient-script",
        "exec_ip() { ip \"$@\"; }\nexec_ip addr flush dev eth1",
    );
    // `dhclient` waits for its script, as the real one does.
    let dhclient = script(
        &bin,
        "dhclient",
        &format!("{}/dhclient-script\nexit 0", bin.display()),
    );
    sb.exec(&dhclient.display().to_string());
    // The remover is `ip`, named even when it exited before its notification was read
    // (its taskstats exit record names it), judged by its chain.
    sb.wait_log(" ← dhclient-script ← dhclient", SOON);
    // Past the grace period and the checks: nothing was released.
    sb.assert_no_unassign_for(Duration::from_secs(4));
    let log = sb.log_text();
    for n in 11..=15 {
        let ip = aux(n).to_string();
        let line = sb
            .log_lines()
            .into_iter()
            .find(|l| l.contains("not_released") && l.contains(&format!("ip={ip} ")))
            .unwrap_or_else(|| panic!("no decision for {ip}:\n{log}"));
        assert!(
            line.contains("remover=\"ip ← dhclient-script ← dhclient"),
            "the audit names the remover and its chain: {line}"
        );
    }
    assert_eq!(sb.count_log("decision=\"pending\""), 0, "{log}");
}

/// The start-up probe reads a root process's `/proc/<pid>/stat`; with `/proc/1` hidden
/// (a tmpfs over it in the daemon's mount namespace) it fails: `/readyz` answers 503
/// with the reason, and a plain user removal is held as unknown (releases disarmed)
/// until `release --held`. The old code had no probe: ready, and it released.
#[test]
fn without_proc_the_daemon_is_not_ready_and_holds_every_removal() {
    let mut sb = Sandbox::new(
        "nrd",
        Layout {
            release: vec!["grace = \"500ms\"".into()],
            ..Layout::default()
        },
    );
    sb.wrap = vec![
        "unshare".into(),
        "-m".into(),
        "--propagation".into(),
        "private".into(),
        "sh".into(),
        "-c".into(),
        "mount -t tmpfs -o ro tmpfs /proc/1 && exec \"$@\"".into(),
        "sh".into(),
    ];
    sb.start();
    let (code, body) = sb.http_get(METRICS_PORT, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("remover identification unavailable") && body.contains("/proc/1/stat"),
        "{body}"
    );
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.wait_log("reason=\"held_unknown_remover\"", SOON);
    sb.assert_no_unassign_for(Duration::from_secs(3));
    let status = sb.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("held_unknown_remover") && text.contains("held (unknown remover)"),
        "{text}"
    );
    let (_, metrics) = sb.http_get(METRICS_PORT, "/metrics");
    assert!(
        metrics.contains("enisync_held_unknown_remover_releases 1"),
        "{metrics}"
    );
    let confirmed = sb.cli(&["release", "--held"]);
    assert!(confirmed.status.success(), "{confirmed:?}");
    let calls = sb.wait_unassigns(1, SOON);
    assert_eq!(calls.len(), 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sb.unassigns().len(), 1, "released exactly once");
}

/// The packaged unit runs with CAP_NET_ADMIN alone: another user's `/proc/<pid>/fd`
/// cannot be listed, so a remover whose netlink port is not a pid (keepalived's) cannot
/// be named. Here the daemon's `/proc/1/fd` is covered by a directory it may not read
/// and the capabilities that would override that (CAP_DAC_*) are dropped. CAP_SYS_PTRACE
/// stays: this daemon runs in a namespace and opens PID 1's network namespace for
/// process events and taskstats (the packaged one runs in the initial namespace), which
/// a process with fewer capabilities than PID 1 may only do with it. One warning in the
/// log, one `status` line naming keepalived, `release --held` and the drop-in; ready.
#[test]
fn without_reading_descriptors_status_says_keepalived_is_held_and_the_daemon_stays_ready() {
    let mut sb = Sandbox::new("nfd", Layout::default());
    sb.wrap = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs -o ro,mode=000,uid=65534 tmpfs /proc/1/fd && \
         exec setpriv --inh-caps=-dac_read_search,-dac_override \
         --bounding-set=-dac_read_search,-dac_override \"$@\"",
        "sh",
    ]
    .map(String::from)
    .to_vec();
    sb.start();
    let (code, body) = sb.http_get(METRICS_PORT, "/readyz");
    assert_eq!(code, 200, "not a failure: {body}");
    let status = sb.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("keepalived")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    let line = lines[0];
    for needle in [
        "WARNING: ",
        "netlink port is not a pid",
        "cannot be named",
        "held until `enisync release --held`",
        "/usr/share/doc/enisync/examples/name-removers.conf",
    ] {
        assert!(line.contains(needle), "{needle:?} missing: {line}");
    }
    assert_eq!(sb.count_log("cannot be named"), 1, "{}", sb.log_text());
    // Taskstats works here (root in the initial PID namespace): no line about it.
    assert!(!text.contains("taskstats"), "{text}");
}

/// Taskstats cannot be registered (here: the daemon runs in a network namespace and,
/// without CAP_SYS_PTRACE, may not open PID 1's or its ancestors' to register there;
/// the connector is refused for the same reason): not a failure. One warning in the
/// log, one `status` line, `/readyz` ready; identification goes on without it.
#[test]
fn without_taskstats_status_says_so_and_the_daemon_stays_ready() {
    let mut sb = Sandbox::new("nts", Layout::default());
    sb.wrap = [
        "setpriv",
        "--inh-caps=-sys_ptrace",
        "--bounding-set=-sys_ptrace",
    ]
    .map(String::from)
    .to_vec();
    sb.start();
    let (code, body) = sb.http_get(METRICS_PORT, "/readyz");
    assert_eq!(code, 200, "not a failure: {body}");
    let status = sb.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("taskstats exit records unavailable"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].starts_with("WARNING: "), "{text}");
    assert_eq!(
        sb.count_log("taskstats exit records unavailable"),
        1,
        "{}",
        sb.log_text()
    );
}

/// A one-shot `ip addr del`, the most common removal, is named (process events
/// remember it after it exits, and its taskstats exit record names it when the
/// connector's reader missed its name) and released.
#[test]
fn a_one_shot_ip_addr_del_is_identified_and_released() {
    let mut sb = Sandbox::new(
        "one",
        Layout {
            release: vec!["grace = \"500ms\"".into()],
            ..Layout::default()
        },
    );
    sb.start();
    sb.ip("addr del 10.0.1.13/24 dev eth1");
    sb.wait_unassigns(1, SOON);
    let pending = sb
        .log_lines()
        .into_iter()
        .find(|l| l.contains("decision=\"pending\"") && l.contains("ip=10.0.1.13 "))
        .unwrap_or_else(|| panic!("no pending line:\n{}", sb.log_text()));
    // Named, even when it exited before its notification was read (its exit record
    // names it): never `(exited pid N)` with taskstats, which the daemon has here.
    assert!(pending.contains("remover=\"ip ← "), "{pending}");
}
