//! The cloud client in a fleet: the account's rate limits (the fake's limiter) make the
//! client slow down; releases are confirmed by listing (from the first task on),
//! falling back to the task when a listing cannot tell (a FAILED task keeps its IPs).

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

#[path = "common/loopback_cloud.rs"]
mod loopback_cloud;

use std::net::IpAddr;
use std::time::Duration;

use enisync::cloud::client::{CloudSettings, TencentCloud};
use enisync::cloud::{Cloud, TaskStatus};
use enisync_fakecloud::{FakeCloud, FakeServer, RateLimits};
use loopback_cloud::{ENI, VPC, ip, serve};

const SECRET_ID: &str = "AKIDlongtermexample";
const SECRET_KEY: &str = "the-long-term-secret-key-NEVER-LOGGED";
const TASK_RESULT: &str = "DescribeVpcTaskResult";
const DESCRIBE: &str = "DescribeNetworkInterfaces";

/// Polls spaced as a 300 ms task needs, the default request timeout, and long enough a
/// cap to outlast the fake's limiter.
fn client(server: &FakeServer) -> TencentCloud {
    let settings = CloudSettings {
        total_timeout: enisync::cloud::client::DEFAULT_TOTAL_TIMEOUT,
        task_poll_start: Duration::from_millis(100),
        task_poll_cap: Duration::from_millis(400),
        task_cap: Duration::from_secs(20),
        ..loopback_cloud::settings(server)
    };
    loopback_cloud::client(settings, SECRET_ID, SECRET_KEY)
}

fn fake() -> FakeCloud {
    let fake = loopback_cloud::fake(40, SECRET_ID, SECRET_KEY);
    fake.set_task_duration(Duration::from_millis(300));
    fake
}

/// Spends the poll budget: the fake allows one `DescribeVpcTaskResult` a second and
/// the first release's polls get refused, which cuts the client's poll rate.
async fn contend(cloud: &TencentCloud, fake: &FakeCloud) {
    fake.set_rate_limits(Some(RateLimits::documented().limit(TASK_RESULT, Some(1))));
    let task = cloud
        .unassign(ENI, VPC, &[ip(11).into()], &|| true)
        .await
        .unwrap();
    // The first wait confirms by listing (and forgets the release); the next ones poll.
    // Polls in a burst: the second one of a second is refused. Two polls may straddle a
    // second's boundary on a loaded machine, so poll until one is refused (a few tries).
    let refused = |fake: &FakeCloud| {
        fake.calls_of(TASK_RESULT)
            .iter()
            .any(|c| c.answer == "RequestLimitExceeded")
    };
    for _ in 0..8 {
        let _ = cloud.wait_task(&task).await;
        if refused(fake) {
            break;
        }
    }
    assert!(refused(fake), "the setup did not get a poll refused");
}

#[tokio::test]
async fn while_polls_are_refused_a_release_is_confirmed_by_listing() {
    let fake = fake();
    let server = serve(&fake);
    let cloud = client(&server);
    contend(&cloud, &fake).await;
    fake.clear_calls();

    let ips: Vec<IpAddr> = vec![ip(12).into(), ip(13).into()];
    let task = cloud.unassign(ENI, VPC, &ips, &|| true).await.unwrap();
    let status = cloud.wait_task(&task).await.unwrap();
    assert_eq!(status, TaskStatus::Success);
    assert!(
        fake.calls_of(TASK_RESULT).is_empty(),
        "confirmed by polling: {:?}",
        fake.calls_of(TASK_RESULT)
    );
    assert!(!fake.calls_of(DESCRIBE).is_empty());
    assert!(!fake.ips_of(ENI).contains(&ip(12)));

    // The listing that confirmed it serves the next send-time check: read after the
    // task ended, under the cache's TTL, so no new listing is made for it.
    let listings = fake.calls_of(DESCRIBE).len();
    let enis = cloud.list_enis().await.unwrap();
    assert_eq!(fake.calls_of(DESCRIBE).len(), listings);
    let listed = &enis.iter().find(|e| e.id == ENI).unwrap().ips;
    assert!(listed.iter().all(|i| !ips.contains(&i.addr)));
}

#[tokio::test]
async fn a_failed_task_is_still_told_by_its_poll_after_two_task_times() {
    let fake = fake();
    let server = serve(&fake);
    let cloud = client(&server);
    contend(&cloud, &fake).await;
    fake.set_rate_limits(None);
    fake.clear_calls();

    fake.fail_next_task("UnassignPrivateIpAddresses");
    let started = std::time::Instant::now();
    let task = cloud
        .unassign(ENI, VPC, &[ip(14).into()], &|| true)
        .await
        .unwrap();
    let status = cloud.wait_task(&task).await.unwrap();
    assert_eq!(status, TaskStatus::Failed, "a listing cannot show FAILED");
    assert!(
        started.elapsed() >= enisync::cloud::client::CONFIRM_WINDOW,
        "fell back before two task-times: {:?}",
        started.elapsed()
    );
    assert!(!fake.calls_of(TASK_RESULT).is_empty());
    assert!(fake.ips_of(ENI).contains(&ip(14)));
}

/// Without any refusal too: the first task of a node is confirmed by listing (waiting
/// for a refused poll first cost every node of a burst one refused call).
#[tokio::test]
async fn without_refusals_releases_are_confirmed_by_listing_too() {
    let fake = fake();
    let server = serve(&fake);
    let cloud = client(&server);
    let task = cloud
        .unassign(ENI, VPC, &[ip(15).into()], &|| true)
        .await
        .unwrap();
    assert_eq!(cloud.wait_task(&task).await.unwrap(), TaskStatus::Success);
    assert!(fake.calls_of(TASK_RESULT).is_empty());
    assert!(!fake.calls_of(DESCRIBE).is_empty());
    assert!(!fake.ips_of(ENI).contains(&ip(15)));
}
