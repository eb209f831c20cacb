//! Cloud faults against the real daemon: the real `enisync` binary in a
//! sandbox namespace, the fake Tencent Cloud injecting one kind of trouble per test.
//!
//! Every test ends with the same proof: the aux IP that was removed is gone from the
//! cloud, exactly one unassign took effect (one task ended SUCCESS for it), and the
//! number of calls stayed bounded while the cloud misbehaved.

#[path = "common/sandbox.rs"]
mod sandbox;

use std::net::Ipv4Addr;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use enisync_fakecloud::{FakeTaskStatus, Fault, Surface};
use sandbox::{ENI1, INSTANCE, Layout, Sandbox, aux};

const SOON: Duration = Duration::from_secs(20);
/// Longer than grace + coalescing + a task: whatever was going to be sent has been.
const QUIET: Duration = Duration::from_millis(2000);

/// The client reuses a describe this long (`describe_cache_ttl`).
const DESCRIBE_CACHE: Duration = Duration::from_millis(2100);
const UNASSIGN: &str = "UnassignPrivateIpAddresses";
const DESCRIBE: &str = "DescribeNetworkInterfaces";

fn layout(f: impl FnOnce(&mut Layout)) -> Layout {
    let mut l = Layout::default();
    f(&mut l);
    l
}

/// Waits until the cloud no longer lists `ip` on ENI1.
fn wait_released(sb: &Sandbox, ip: Ipv4Addr, timeout: Duration) {
    sb.wait_for(&format!("{ip} released in the cloud"), timeout, || {
        !sb.ips_in_cloud().contains(&ip)
    });
}

/// Exactly one unassign task for `ip` ended SUCCESS: the release took effect once.
fn assert_released_once(sb: &Sandbox, ip: Ipv4Addr) {
    let ip_s = ip.to_string();
    let accepted: Vec<_> = sb
        .accepted_unassigns()
        .into_iter()
        .filter(|c| c.ips.contains(&ip_s))
        .collect();
    let succeeded = accepted
        .iter()
        .filter(|c| {
            c.task
                .as_deref()
                .and_then(|t| sb.fake.task(t))
                .is_some_and(|t| t.status == FakeTaskStatus::Success)
        })
        .count();
    assert_eq!(
        succeeded,
        1,
        "{ip}: exactly one successful unassign task; accepted calls: {accepted:?}\nlog:\n{}",
        sb.log_text()
    );
    assert!(!sb.ips_in_cloud().contains(&ip), "{ip} gone from the cloud");
}

/// API calls (3.0 and legacy) since `since_seq`.
fn api_calls_since(sb: &Sandbox, since_seq: u64) -> Vec<enisync_fakecloud::Call> {
    sb.fake
        .calls()
        .into_iter()
        .filter(|c| c.seq > since_seq && c.surface != Surface::Metadata)
        .collect()
}

fn last_seq(sb: &Sandbox) -> u64 {
    sb.fake.calls().last().map_or(0, |c| c.seq)
}

/// A throttling storm on every action: the daemon backs off (the call rate stays far
/// below the cloud's limits and falls as the storm lasts), and releases once it ends.
#[test]
fn throttling_storm_is_ridden_out_with_a_bounded_call_rate() {
    let mut sb = Sandbox::new("thr", Layout::default());
    sb.start();
    let seq = last_seq(&sb);
    sb.fake.inject("*", Fault::Throttle, 100_000);
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    let storm = Duration::from_secs(5);
    std::thread::sleep(storm);
    let during = api_calls_since(&sb, seq);
    assert!(
        during.iter().all(|c| c.answer == "RequestLimitExceeded"),
        "{during:?}"
    );
    // The client sends a call at most 4 times (jittered 0–200, 0–400, 0–800 ms apart),
    // then the engine waits 0.5–1 s, 1–2 s, 2–4 s… before the next round: in 5 s that
    // is at most 3 rounds.
    assert!(
        during.len() >= 4 && during.len() <= 12,
        "{} calls in {storm:?} of throttling: {:?}",
        during.len(),
        during.iter().map(|c| c.summary()).collect::<Vec<_>>()
    );
    // Backoff grows: the last gap between calls is longer than the first.
    let gaps: Vec<i64> = during.windows(2).map(|w| w[1].at_ms - w[0].at_ms).collect();
    let longest = gaps.iter().copied().max().unwrap_or(0);
    assert!(
        longest >= 400,
        "the engine backed off between rounds: {gaps:?}"
    );
    sb.fake.clear_faults();
    wait_released(&sb, aux(12), SOON);
    assert_released_once(&sb, aux(12));
    println!(
        "throttling storm: {} throttled calls in {storm:?}, gaps {gaps:?} ms",
        during.len()
    );
}

/// HTTP 5xx on the describe and the unassign: retried, released once.
#[test]
fn server_errors_are_retried() {
    let mut sb = Sandbox::new("5xx", Layout::default());
    sb.start();
    // Past the describe cache (2 s) of the start-up inventory, so the check describes.
    std::thread::sleep(DESCRIBE_CACHE);
    sb.fake.inject(DESCRIBE, Fault::Http { status: 500 }, 2);
    sb.fake.inject(UNASSIGN, Fault::Http { status: 503 }, 2);
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    wait_released(&sb, aux(12), SOON);
    std::thread::sleep(QUIET);
    assert_released_once(&sb, aux(12));
    let answers: Vec<_> = sb.unassigns().into_iter().map(|c| c.answer).collect();
    assert_eq!(answers, ["HTTP 503", "HTTP 503", "Success"], "{answers:?}");
    assert!(sb.fake.faults().is_empty(), "every injected fault was hit");
}

/// A call that times out client-side (not processed), and one whose answer is lost
/// although the cloud did the work: both end with the IP released exactly once.
#[test]
fn timeouts_and_lost_answers_release_exactly_once() {
    let mut sb = Sandbox::new("tmo", layout(|l| l.cloud = vec!["timeout = \"1s\"".into()]));
    sb.start();
    sb.fake
        .inject(UNASSIGN, Fault::timeout(Duration::from_millis(3000)), 1);
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    wait_released(&sb, aux(12), SOON);
    assert_released_once(&sb, aux(12));
    sb.wait_log("Transport.Timeout", SOON);

    // The cloud processes the unassign, but its answer arrives after our timeout: the
    // retry finds the ENI busy or the IP gone, and only a describe decides.
    sb.fake
        .inject(UNASSIGN, Fault::late_answer(Duration::from_millis(3000)), 1);
    sb.ip("addr del 10.0.1.13/24 dev eth1");
    wait_released(&sb, aux(13), SOON);
    sb.wait_log("10.0.1.13", SOON);
    std::thread::sleep(QUIET);
    assert_released_once(&sb, aux(13));
    let after: Vec<_> = sb
        .unassigns()
        .into_iter()
        .filter(|c| c.ips.contains(&"10.0.1.13".to_string()))
        .map(|c| c.answer)
        .collect();
    assert!(
        after.len() <= 5,
        "bounded retries after a lost answer: {after:?}"
    );
    // The engine accounted for it (released or already gone), and nothing is pending.
    sb.wait_for("the intent for .13 finished", SOON, || {
        sb.journal_text()
            .lines()
            .any(|l| l.contains("10.0.1.13") && l.contains("finished"))
    });
}

/// Malformed JSON answers are transient: retried, released once.
#[test]
fn malformed_answers_are_retried() {
    let mut sb = Sandbox::new("mal", Layout::default());
    sb.start();
    std::thread::sleep(DESCRIBE_CACHE);
    sb.fake.inject(DESCRIBE, Fault::Malformed, 1);
    sb.fake.inject(UNASSIGN, Fault::Malformed, 2);
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    wait_released(&sb, aux(12), SOON);
    std::thread::sleep(QUIET);
    assert_released_once(&sb, aux(12));
    assert!(sb.fake.faults().is_empty());
}

/// `MutexOperationTaskRunning` (another task holds the ENI): back off and retry.
#[test]
fn a_busy_eni_is_waited_for() {
    let mut sb = Sandbox::new("mtx", Layout::default());
    sb.start();
    sb.fake.inject(
        UNASSIGN,
        Fault::error("UnsupportedOperation.MutexOperationTaskRunning"),
        3,
    );
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    wait_released(&sb, aux(12), SOON);
    std::thread::sleep(QUIET);
    assert_released_once(&sb, aux(12));
    // Each busy answer goes back to the engine, which re-checks before the next send.
    assert_eq!(sb.unassigns().len(), 4, "three busy answers, then success");
}

/// A task that ends FAILED restores the IP; the release is tried again and succeeds.
/// Three failures in a row park it instead (no endless retries).
#[test]
fn failed_tasks_are_retried_then_parked() {
    let mut sb = Sandbox::new("fail", Layout::default());
    sb.start();
    sb.fake.fail_next_task(UNASSIGN);
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    wait_released(&sb, aux(12), SOON);
    std::thread::sleep(QUIET);
    assert_released_once(&sb, aux(12));
    assert_eq!(sb.accepted_unassigns().len(), 2, "failed once, then done");

    sb.fake.inject(UNASSIGN, Fault::TaskFails, 3);
    sb.ip("addr del 10.0.1.13/24 dev eth1");
    sb.wait_log("task failed 3 times", SOON);
    sb.wait_log("parked", SOON);
    std::thread::sleep(QUIET);
    assert!(
        sb.ips_in_cloud().contains(&aux(13)),
        "restored after each failure"
    );
    assert_eq!(sb.accepted_unassigns().len(), 5, "no fourth attempt");
}

/// A task stuck RUNNING: followed until `cloud.task_timeout`, then re-described (never
/// a second unassign while it runs); when it finally ends, the release is done.
#[test]
fn a_stuck_task_is_capped_and_never_doubled() {
    let mut sb = Sandbox::new(
        "stuck",
        layout(|l| {
            l.task_ms = 600_000;
            l.cloud = vec!["task_timeout = \"1s\"".into()];
        }),
    );
    sb.start();
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.wait_log("task still running at the cap", SOON);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sb.unassigns().len(), 1, "one unassign while the task runs");
    let polls_before = sb.fake.calls_of("DescribeVpcTaskResult").len();
    sb.fake.finish_running_tasks();
    wait_released(&sb, aux(12), SOON);
    sb.wait_for("the intent finished", SOON, || {
        sb.journal_text()
            .lines()
            .any(|l| l.contains("10.0.1.12") && l.contains("finished"))
    });
    std::thread::sleep(QUIET);
    assert_released_once(&sb, aux(12));
    assert_eq!(sb.unassigns().len(), 1);
    // Polls were spaced out (task_poll doubles to 5 s): a few, not a storm.
    assert!(
        polls_before <= 8,
        "{polls_before} polls of one stuck task in ~4 s"
    );
}

/// Temporary (CAM role) keys the cloud already considers expired while this host still
/// trusts them (the fake's clock runs 100 s ahead and its keys live 2 s): the token is
/// rejected, keys are refreshed once, and the call goes through.
#[test]
fn expired_temporary_keys_are_refreshed() {
    let mut sb = Sandbox::new("exp", layout(|l| l.config_keys = false));
    sb.fake
        .set_cam_role(INSTANCE, Some("enisync-role"))
        .expect("role");
    sb.fake.set_cam_rotation(Duration::from_secs(2));
    sb.fake.set_clock_offset_secs(100);
    sb.start();
    std::thread::sleep(Duration::from_millis(2500));
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    wait_released(&sb, aux(12), SOON);
    std::thread::sleep(QUIET);
    assert_released_once(&sb, aux(12));
    let rejected = sb
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.answer == "AuthFailure.TokenFailure")
        .count();
    assert!(rejected >= 1, "the expired key was used once and rejected");
    assert!(
        sb.log_text()
            .contains("session token rejected; refreshing keys"),
        "{}",
        sb.log_text()
    );
    assert!(
        sb.fake.metadata_credential_fetches() >= 2,
        "keys were fetched again"
    );
}

/// Clock skew: the cloud answers `AuthFailure.SignatureExpire`; the daemon says so
/// plainly (how far off, which way), takes the cloud's time from the answer's `Date`
/// header, and the retry is signed right. Then the other way round.
#[test]
fn clock_skew_is_reported_and_corrected_from_the_date_header() {
    let mut sb = Sandbox::new("skew", Layout::default());
    sb.start();
    sb.fake.set_clock_offset_secs(900);
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    wait_released(&sb, aux(12), SOON);
    std::thread::sleep(QUIET);
    assert_released_once(&sb, aux(12));
    let log = sb.log_text();
    assert!(
        log.contains("the cloud rejected our request timestamp: this host's clock is")
            && log.contains("behind the cloud's")
            && log.contains("new_offset_s=9"),
        "{log}"
    );
    let expired = |sb: &Sandbox| {
        sb.fake
            .calls()
            .iter()
            .filter(|c| c.answer == "AuthFailure.SignatureExpire")
            .count()
    };
    assert_eq!(expired(&sb), 1, "one rejection, then corrected");

    sb.fake.set_clock_offset_secs(-700);
    sb.ip("addr del 10.0.1.13/24 dev eth1");
    wait_released(&sb, aux(13), SOON);
    std::thread::sleep(QUIET);
    assert_released_once(&sb, aux(13));
    assert_eq!(expired(&sb), 2);
    assert!(sb.log_text().contains("ahead of the cloud's"));
}

/// Permission refused: parked (no retry storm), and released after a reload once the
/// permission is granted.
#[test]
fn a_refusal_is_parked_then_released_after_a_reload() {
    let mut sb = Sandbox::new("perm", Layout::default());
    sb.start();
    sb.fake
        .inject(UNASSIGN, Fault::error("UnauthorizedOperation"), 100_000);
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.wait_log("parked", SOON);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sb.unassigns().len(), 1, "a refusal is not retried blindly");
    assert!(sb.ips_in_cloud().contains(&aux(12)));
    // The operator grants the permission and reloads.
    sb.fake.clear_faults();
    sb.signal("HUP");
    sb.wait_log("configuration reloaded", SOON);
    wait_released(&sb, aux(12), SOON);
    std::thread::sleep(QUIET);
    assert_released_once(&sb, aux(12));
    assert_eq!(sb.unassigns().len(), 2);
}

/// The metadata service is down when the daemon starts: it keeps running and retrying
/// (with backoff: a bounded number of requests), is not ready meanwhile (no READY=1 to
/// systemd), and becomes ready, and works, when the service returns.
#[test]
fn metadata_down_at_start_then_back() {
    let mut sb = Sandbox::new("meta", Layout::default());
    let notify_path = sb.dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify.set_nonblocking(true).expect("nonblocking");
    sb.env.push((
        "NOTIFY_SOCKET".into(),
        notify_path.to_string_lossy().into_owned(),
    ));
    sb.fake
        .inject_on(Surface::Metadata, "*", Fault::Http { status: 503 }, 100_000);
    sb.spawn();
    let down = Duration::from_secs(4);
    std::thread::sleep(down);
    assert!(sb.try_exit().is_none(), "still running:\n{}", sb.log_text());
    assert_eq!(sb.count_log("enisync ready"), 0);
    assert!(
        sb.count_log("metadata service not usable yet") >= 3,
        "{}",
        sb.log_text()
    );
    let meta_calls = sb
        .fake
        .calls()
        .iter()
        .filter(|c| c.surface == Surface::Metadata)
        .count();
    // 4 s of backoff from 200 ms doubling: ~5 rounds of up to 3 attempts each.
    assert!(
        (3..=20).contains(&meta_calls),
        "{meta_calls} metadata requests in {down:?}"
    );
    // READY=1 is sent before the metadata wait (the start is over; releases are not
    // armed until the inventory is in), and STATUS= says what it waits for.
    let messages = drain(&notify);
    assert!(
        messages.iter().any(|m| m.contains("READY=1")),
        "READY=1 once the host is dumped: {messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("STATUS=waiting for the metadata service")),
        "STATUS names the wait: {messages:?}"
    );
    let back = Instant::now();
    sb.fake.clear_faults();
    sb.wait_log("enisync ready", SOON);
    let waited = back.elapsed();
    assert!(
        waited < Duration::from_secs(8),
        "ready {waited:?} after metadata returned"
    );
    sb.wait_for("STATUS=watching sent", SOON, || {
        drain(&notify).iter().any(|m| m.contains("STATUS=watching"))
    });
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    wait_released(&sb, aux(12), SOON);
    assert_released_once(&sb, aux(12));
    assert_eq!(sb.fake.ips_of(ENI1).len(), 5, "only .12 left");
}

fn drain(socket: &UnixDatagram) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..1000 {
        match socket.recv(&mut buf) {
            Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    out
}

/// Clause 4 "again at the moment the call is sent", under a transient failure: the
/// first unassign times out (not processed), the IP comes back on the host meanwhile,
/// and the next send is preceded by a fresh check, so it is not released. (A client
/// that re-sent on its own after its backoff released it while in use.)
#[test]
fn no_resend_without_a_fresh_check_after_a_transient_failure() {
    let mut sb = Sandbox::new(
        "resend",
        layout(|l| l.cloud = vec!["timeout = \"1s\"".into()]),
    );
    sb.start();
    sb.fake
        .inject(UNASSIGN, Fault::timeout(Duration::from_millis(2500)), 1);
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.wait_for("the first unassign reached the cloud", SOON, || {
        !sb.unassigns().is_empty()
    });
    sb.ip("addr add 10.0.1.12/24 dev eth1");
    sb.wait_log("back on the host", SOON);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sb.accepted_unassigns().len(), 0, "{:?}", sb.unassigns());
    assert!(sb.ips_in_cloud().contains(&aux(12)));
}
