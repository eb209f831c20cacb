//! The systemd contract, tested against a notify socket the test owns (PID 1 here is
//! not systemd): READY once the host is dumped, STATUS naming what start waits for,
//! watchdog pings from the main loop, STOPPING on SIGTERM; and SIGHUP reloads. The real
//! unit under a real systemd: `tests/packaging/systemd_real.sh`.

#[path = "common/sandbox.rs"]
mod sandbox;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use enisync_fakecloud::Fault;
use sandbox::{Layout, Sandbox};

const SOON: Duration = Duration::from_secs(20);

/// A notify socket and the messages received on it, with arrival times.
struct Notify {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl Notify {
    fn new(sb: &Sandbox) -> Self {
        let path = sb.dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        Self { socket, path }
    }

    /// Messages until `until` returns true for one (inclusive) or the deadline passes.
    fn collect(
        &self,
        deadline: Duration,
        mut until: impl FnMut(&str) -> bool,
    ) -> Vec<(Instant, String)> {
        let end = Instant::now() + deadline;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = until(&text);
                out.push((Instant::now(), text));
                if done {
                    break;
                }
            }
        }
        out
    }
}

fn spawn_with_notify(
    sb: &Sandbox,
    notify: &Notify,
    watchdog_usec: Option<u64>,
) -> std::process::Child {
    let mut cmd = sb.run_command();
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match watchdog_usec {
        Some(usec) => cmd.env("WATCHDOG_USEC", usec.to_string()),
        None => cmd.env_remove("WATCHDOG_USEC"),
    };
    cmd.spawn().expect("spawn enisync")
}

/// READY=1 comes once the host is dumped, before the cloud answers: the daemon holds its
/// place and answers while it waits, and STATUS= says what for (a start that waits for
/// the cloud must never run into `TimeoutStartSec=` and a restart loop). STATUS= says
/// "watching" once the inventory is loaded.
#[test]
fn ready_after_the_dump_status_names_the_wait_then_watchdog_then_stopping() {
    let sb = Sandbox::new("ntf", Layout::default());
    sb.fake
        .inject("DescribeNetworkInterfaces", Fault::Http { status: 503 }, 8);
    let notify = Notify::new(&sb);
    let mut child = spawn_with_notify(&sb, &notify, Some(400_000));
    let before_ready = notify.collect(SOON, |m| m.contains("READY=1"));
    let (ready_at, ready) = before_ready.last().cloned().expect("a message");
    assert!(ready.contains("READY=1"), "never READY: {before_ready:?}");
    let until_watching = notify.collect(SOON, |m| m.contains("STATUS=watching"));
    assert!(
        until_watching
            .iter()
            .any(|(_, m)| m.contains("STATUS=loading the ENI inventory")),
        "STATUS said what start waited for: {until_watching:?}"
    );
    assert!(
        until_watching
            .last()
            .is_some_and(|(_, m)| m.contains("STATUS=watching")),
        "STATUS says watching once the inventory is in: {until_watching:?}"
    );
    assert!(
        !until_watching
            .iter()
            .any(|(_, m)| m.contains("EXTEND_TIMEOUT_USEC")),
        "no start-timeout extension: the start is over at READY=1: {until_watching:?}"
    );
    let listings = sb.fake.calls_of("DescribeNetworkInterfaces");
    assert!(
        listings.iter().any(|c| c.answer == "Success"),
        "STATUS=watching came before a successful inventory: {listings:?}"
    );
    // WATCHDOG_USEC = 400 ms: a ping at least every 200 ms from the main loop.
    let pings: Vec<_> = notify
        .collect(Duration::from_secs(2), |_| false)
        .into_iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .collect();
    assert!(
        pings.len() >= 5,
        "{} pings in 2 s after READY (at {ready_at:?})",
        pings.len()
    );
    let gaps = pings.windows(2).map(|w| w[1].0.duration_since(w[0].0));
    assert!(
        gaps.clone().all(|g| g < Duration::from_millis(400)),
        "a gap reached the watchdog period: {:?}",
        gaps.collect::<Vec<_>>()
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stopping = notify.collect(Duration::from_secs(5), |m| m.contains("STOPPING=1"));
    assert!(
        stopping.iter().any(|(_, m)| m.contains("STOPPING=1")),
        "{stopping:?}"
    );
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit 0 on SIGTERM: {status:?}");
}

#[test]
fn no_watchdog_pings_without_watchdog_usec() {
    let sb = Sandbox::new("nwd", Layout::default());
    let notify = Notify::new(&sb);
    let mut child = spawn_with_notify(&sb, &notify, None);
    let _ = notify.collect(SOON, |m| m.contains("READY=1"));
    let later = notify.collect(Duration::from_secs(1), |_| false);
    assert!(
        !later.iter().any(|(_, m)| m.contains("WATCHDOG=1")),
        "{later:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn sighup_applies_a_valid_config_keeps_pending_releases_and_rejects_a_bad_one() {
    let mut sb = Sandbox::new(
        "hup",
        Layout {
            release: vec!["grace = \"2s\"".into()],
            ..Layout::default()
        },
    );
    sb.start();
    let pid = sb.pid().expect("enisync runs");
    // A release is pending when the new config arrives.
    sb.ip("addr del 10.0.1.11/24 dev eth1");
    sb.wait_log("release pending its grace period", SOON);
    let original = std::fs::read_to_string(&sb.config_path).expect("config");
    std::fs::write(
        &sb.config_path,
        original.replace("[release]\n", "[release]\nexclude = [\"10.0.1.13/32\"]\n"),
    )
    .expect("write");
    let _ = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status();
    sb.wait_log("configuration reloaded", SOON);
    sb.ip("addr del 10.0.1.13/24 dev eth1");
    sb.wait_log("IP inside release.exclude", SOON);
    let calls = sb.wait_unassigns(1, SOON);
    assert_eq!(
        calls[0].ips,
        vec!["10.0.1.11".to_string()],
        "the pending release survived the reload"
    );

    // A bad file is rejected with the reason; the running config stays.
    std::fs::write(
        &sb.config_path,
        original.replace("[release]\n", "[release]\ngrase = \"1s\"\n"),
    )
    .expect("write");
    let _ = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status();
    sb.wait_log("reload rejected", SOON);
    assert!(
        sb.log_text().contains("release.grase"),
        "the reason names the key"
    );
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    let deadline = Instant::now() + SOON;
    while !sb
        .unassigns()
        .iter()
        .any(|c| c.ips.contains(&"10.0.1.12".to_string()))
    {
        assert!(
            Instant::now() < deadline,
            "still running on the old config:\n{}",
            sb.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
