//! Claims end to end (docs/design.md, "Claims"): the real binary in a namespace, the
//! real kernel, the fake cloud. A peer instance's ENI (same subnet) holds the floating
//! IP 10.0.1.100; `ip addr add` on eth1 (the adder, listed in `claim.adders` here, as
//! keepalived is by default) makes enisync claim it.
//!
//! Needs root; fails, never skips, without it.

#[path = "common/sandbox.rs"]
mod sandbox;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use enisync_fakecloud::FakeEni;
use sandbox::{ENI1, Layout, Sandbox};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);
const PEER: &str = "ins-peer0001";
const PEER_ENI: &str = "eni-peer0001";

/// A sandbox with claims on for the VIP (`settle`, `startup_holdoff`), re-verified every
/// 5 s, and the peer's ENI holding it.
fn sandbox(tag: &str, settle: &str, holdoff: &str) -> Sandbox {
    let layout = Layout {
        extra_config: format!(
            "\n[claim]\ncidrs = [\"{VIP}/32\"]\npeers = [\"{PEER}\"]\nadders = [\"ip\"]\n\
             settle = \"{settle}\"\nstartup_holdoff = \"{holdoff}\"\nreverify_interval = \"5s\"\n\
             contest_backoff = \"1s\"\ncontest_backoff_max = \"4s\"\nmax_migrations_per_minute = 3\n"
        ),
        ..Layout::default()
    };
    let sb = Sandbox::new(tag, layout);
    sb.fake
        .add_eni(
            FakeEni::new(
                PEER_ENI,
                "52:54:00:99:00:01",
                "vpc-sandbox",
                "subnet-1",
                "10.0.1.0/24",
                Ipv4Addr::new(10, 0, 1, 20),
            )
            .attached(PEER, 0)
            .secondaries([VIP]),
        )
        .expect("peer eni");
    sb
}

fn bound_to(sb: &Sandbox, eni: &str) -> bool {
    sb.fake.owner_of(VIP).as_deref() == Some(eni)
        && sb
            .fake
            .eni(eni)
            .is_some_and(|e| e.ip(VIP).is_some_and(|i| i.state == "AVAILABLE"))
}

fn migrates(sb: &Sandbox) -> Vec<enisync_fakecloud::Call> {
    sb.fake.calls_of("MigratePrivateIpAddress")
}

/// Holder lookups: listings filtered on the VIP.
fn lookups(sb: &Sandbox) -> usize {
    sb.fake
        .calls_of("DescribeNetworkInterfaces")
        .iter()
        .filter(|c| c.params.to_string().contains("ip-exact-match"))
        .count()
}

/// Added on the host, it stays for `settle`: one Migrate from the peer's ENI (signed
/// and accepted by the fake), the task followed, the binding moved. When it leaves the
/// host it is never released.
#[test]
fn an_added_vip_is_migrated_here_once_and_never_released() {
    let mut sb = sandbox("cm", "1s", "0s");
    sb.start();
    let added = Instant::now();
    sb.ip(&format!("addr add {VIP}/24 dev eth1"));
    sb.wait_for(
        "the VIP bound to eth1's ENI",
        Duration::from_secs(20),
        || bound_to(&sb, ENI1),
    );
    let took = added.elapsed();
    let calls = migrates(&sb);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].answer, "Success");
    assert_eq!(
        calls[0].eni.as_deref(),
        Some(&*format!("{PEER_ENI}->{ENI1}"))
    );
    assert!(took >= Duration::from_secs(1), "not before the settle time");
    sb.wait_log("decision=\"claimed\"", Duration::from_secs(10));
    assert!(
        sb.log_text().contains("adder=\"ip"),
        "the adder is named:\n{}",
        sb.log_text()
    );

    // Every decision is a metric too.
    let (code, metrics) = sb.http_get(9469, "/metrics");
    assert_eq!(code, 200);
    for line in [
        "enisync_claims_total{decision=\"claimed\",reason=\"held_here\"} 1",
        "enisync_claims_total{decision=\"claim_sent\",reason=\"migrate\"} 1",
        "enisync_claimed_ips 1",
        "enisync_contested_ips 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }

    sb.ip(&format!("addr del {VIP}/24 dev eth1"));
    sb.assert_no_unassign_for(Duration::from_secs(4));
    assert!(bound_to(&sb, ENI1));
    assert_eq!(migrates(&sb).len(), 1);
    sb.wait_log("reason=IP inside claim.cidrs", Duration::from_secs(5));
}

/// A VIP that stays less than `claim.settle` (a backup master for a moment) makes no
/// lookup and no Migrate, however often it comes and goes.
#[test]
fn a_vip_held_for_less_than_settle_makes_no_migrate() {
    let mut sb = sandbox("cs", "4s", "0s");
    sb.start();
    for _ in 0..3 {
        sb.ip(&format!("addr add {VIP}/24 dev eth1"));
        std::thread::sleep(Duration::from_millis(1500));
        sb.ip(&format!("addr del {VIP}/24 dev eth1"));
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(6));
    assert!(migrates(&sb).is_empty(), "{:?}", migrates(&sb));
    assert_eq!(lookups(&sb), 0);
    assert!(bound_to(&sb, PEER_ENI));
    assert!(
        sb.log_text().contains("reason=\"removed_within_settle\""),
        "{}",
        sb.log_text()
    );
}

/// Present at start counts as added at start; no Migrate within the start-up hold-off.
#[test]
fn a_vip_present_at_start_is_not_migrated_within_the_holdoff() {
    let mut sb = sandbox("ch", "1s", "8s");
    sb.ip(&format!("addr add {VIP}/24 dev eth1"));
    let started = Instant::now();
    sb.start();
    std::thread::sleep(Duration::from_secs(6));
    assert!(migrates(&sb).is_empty(), "a Migrate within the hold-off");
    sb.wait_log("reason=\"startup_holdoff\"", Duration::from_secs(5));
    sb.wait_for(
        "the VIP bound here after the hold-off",
        Duration::from_secs(20),
        || bound_to(&sb, ENI1),
    );
    assert!(started.elapsed() >= Duration::from_secs(8));
    assert_eq!(migrates(&sb).len(), 1);
}

/// Split brain: the peer keeps taking the VIP back while this host keeps it. enisync
/// does not fight: `contested` (audit, `status` ALARMS), backoff, and never more than
/// `max_migrations_per_minute` (3) Migrates in a minute.
#[test]
fn a_contested_vip_alarms_and_migrations_stay_bounded() {
    let mut sb = sandbox("cc", "1s", "0s");
    sb.start();
    sb.ip(&format!("addr add {VIP}/24 dev eth1"));
    sb.wait_for("claimed", Duration::from_secs(20), || bound_to(&sb, ENI1));
    let first = Instant::now();
    // The other node takes it back whenever it is here, for 40 s.
    while first.elapsed() < Duration::from_secs(40) {
        if bound_to(&sb, ENI1) {
            sb.fake.move_ip(VIP, PEER_ENI).expect("move");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let calls = migrates(&sb);
    assert!(
        calls.len() <= 3,
        "{} Migrates within a minute: {calls:?}",
        calls.len()
    );
    assert!(calls.len() >= 2, "claimed again after the backoff");
    assert!(calls.iter().all(|c| c.answer == "Success"), "{calls:?}");
    sb.wait_log("decision=\"contested\"", Duration::from_secs(5));
    let status = sb.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("ALARMS") && text.contains("contested"),
        "status shows the alarm:\n{text}"
    );
    assert!(text.contains("CLAIMS"), "status lists the claim:\n{text}");
}

/// `enisync release <ip>`: refused while the VIP is on the host, and for an address
/// outside `claim.cidrs` (exit code 1, one line saying why); once keepalived's VIP has
/// left the host while still bound here, released by hand: one Unassign of the VIP from
/// eth1's ENI (signed and accepted by the fake), its task followed, the claim ended.
#[test]
fn an_orphaned_vip_is_released_by_hand_and_refused_while_on_the_host() {
    let mut sb = sandbox("crh", "1s", "0s");
    sb.start();
    sb.ip(&format!("addr add {VIP}/24 dev eth1"));
    sb.wait_for("claimed", Duration::from_secs(20), || bound_to(&sb, ENI1));
    sb.wait_log("decision=\"claimed\"", Duration::from_secs(10));

    let vip = VIP.to_string();
    let refused = |args: &[&str], why: &str| {
        let out = sb.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    };
    refused(&["release", &vip], "is on the host (link eth1)");
    refused(&["release", "10.0.1.11"], "is not a claim address");

    sb.ip(&format!("addr del {VIP}/24 dev eth1"));
    sb.assert_no_unassign_for(Duration::from_secs(3));
    assert!(bound_to(&sb, ENI1), "an orphan: bound here, on no link");
    let out = sb.cli(&["release", &vip]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("releasing {VIP} from {ENI1}")),
        "{said}"
    );
    sb.wait_for(
        "the VIP released from eth1's ENI",
        Duration::from_secs(20),
        || sb.fake.owner_of(VIP).is_none(),
    );
    let calls = sb.fake.calls_of("UnassignPrivateIpAddresses");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].answer, "Success", "{calls:?}");
    assert_eq!(calls[0].eni.as_deref(), Some(ENI1));
    assert!(calls[0].params.to_string().contains(&vip), "{calls:?}");
    sb.wait_log(
        "decision=\"claim_released\" reason=\"operator\"",
        Duration::from_secs(10),
    );
    let (_, metrics) = sb.http_get(9469, "/metrics");
    for line in [
        "enisync_claims_total{decision=\"claim_release_pending\",reason=\"operator\"} 1",
        "enisync_claims_total{decision=\"claim_released\",reason=\"operator\"} 1",
        "enisync_claimed_ips 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    // Nothing is bound here any more: asked again, refused.
    refused(
        &["release", &vip],
        "is not bound to an ENI of this instance",
    );
    assert_eq!(migrates(&sb).len(), 1, "no claim again");
}
