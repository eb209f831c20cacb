//! The claim calls of the cloud client against the fake Tencent Cloud on loopback: the
//! holder lookup, Migrate and Assign, each request signed and checked by the fake, and
//! each failure read as a claim needs it (docs/cloud-api.md, "Claims").

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

#[path = "common/loopback_cloud.rs"]
mod loopback_cloud;

use std::time::Duration;

use enisync::cloud::Cloud;
use enisync::cloud::TaskStatus;
use enisync::cloud::client::{ClaimFailure, ClientToken, CloudSettings, TencentCloud};
use enisync::cloud::retry::Rates;
use enisync_fakecloud::{FakeCloud, FakeEni, FakeInstance, FakeServer};
use loopback_cloud::{ENI, INSTANCE, VPC, config_keys, ip, serve};

const SECRET_ID: &str = "AKIDclaimexample";
const SECRET_KEY: &str = "the-claim-secret-key-NEVER-LOGGED";
/// The peer's ENI, same subnet as ours, holding the VIP 10.0.1.100.
const PEER_ENI: &str = "eni-peer";
/// Another VPC reusing 10.0.1.100.
const OTHER_VPC_ENI: &str = "eni-othervpc";

fn fake() -> FakeCloud {
    let fake = loopback_cloud::fake(12, SECRET_ID, SECRET_KEY);
    fake.add_instance(FakeInstance::new("ins-peer", "ap-guangzhou"))
        .unwrap();
    fake.add_eni(
        FakeEni::new(
            PEER_ENI,
            "52:54:00:12:34:99",
            VPC,
            "subnet-1",
            "10.0.1.0/24",
            ip(20),
        )
        .attached("ins-peer", 1)
        .secondaries([ip(100)]),
    )
    .unwrap();
    fake.add_eni(
        FakeEni::new(
            OTHER_VPC_ENI,
            "52:54:00:12:34:98",
            "vpc-other",
            "subnet-o",
            "10.0.1.0/24",
            ip(30),
        )
        .secondaries([ip(100), ip(101)]),
    )
    .unwrap();
    fake
}

fn client(server: &FakeServer) -> TencentCloud {
    loopback_cloud::client(loopback_cloud::settings(server), SECRET_ID, SECRET_KEY)
}

/// Every call the fake saw was signed with our key and accepted by its checks (no
/// `AuthFailure`, no parameter error other than the ones the test provoked).
fn assert_signed(fake: &FakeCloud) {
    for call in fake.calls() {
        assert_eq!(call.secret_id.as_deref(), Some(SECRET_ID), "{call:?}");
        assert!(!call.answer.starts_with("AuthFailure"), "{call:?}");
        assert!(!call.answer.starts_with("MissingParameter"), "{call:?}");
        assert!(!call.answer.starts_with("InvalidParameter"), "{call:?}");
    }
}

#[tokio::test]
async fn a_migrate_moves_the_vip_and_a_stale_second_one_is_source_gone() {
    let fake = fake();
    let server = serve(&fake);
    let cloud = client(&server);

    let holders = cloud.claim_holders(VPC, ip(100)).await.unwrap();
    assert_eq!(
        holders.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [PEER_ENI]
    );
    let peer = &holders[0];
    assert_eq!(
        peer.attachment.as_ref().map(|a| a.instance_id.as_str()),
        Some("ins-peer")
    );

    let task = cloud
        .claim_migrate(PEER_ENI, ENI, ip(100), &|| true)
        .await
        .unwrap();
    assert_eq!(cloud.wait_task(&task).await.unwrap(), TaskStatus::Success);
    assert!(fake.eni(ENI).unwrap().ip(ip(100)).is_some());
    assert!(fake.eni(PEER_ENI).unwrap().ip(ip(100)).is_none());
    let holders = cloud.claim_holders(VPC, ip(100)).await.unwrap();
    assert_eq!(
        holders.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [ENI]
    );
    // The other VPC's 10.0.1.100 was never touched.
    assert!(fake.eni(OTHER_VPC_ENI).unwrap().ip(ip(100)).is_some());

    // The same Migrate again names a source that no longer holds the address.
    let err = cloud
        .claim_migrate(PEER_ENI, ENI, ip(100), &|| true)
        .await
        .unwrap_err();
    assert_eq!(ClaimFailure::of(&err), ClaimFailure::SourceGone, "{err}");
    assert_eq!(fake.calls_of("MigratePrivateIpAddress").len(), 2);
    assert_signed(&fake);
}

#[tokio::test]
async fn an_assign_takes_a_free_vip_once_under_its_client_token() {
    let fake = fake();
    let server = serve(&fake);
    let cloud = client(&server);

    // 10.0.1.101 is held in another VPC only: nobody holds it in ours.
    assert!(cloud.claim_holders(VPC, ip(101)).await.unwrap().is_empty());
    let token = ClientToken::for_claim(ENI, ip(101), 1).unwrap();
    let task = cloud
        .claim_assign(ENI, ip(101), &token, &|| true)
        .await
        .unwrap();
    assert_eq!(cloud.wait_task(&task).await.unwrap(), TaskStatus::Success);
    // The same attempt again (a lost answer re-sent): the same result, nothing new.
    let again = cloud
        .claim_assign(ENI, ip(101), &token, &|| true)
        .await
        .unwrap();
    assert_eq!(cloud.wait_task(&again).await.unwrap(), TaskStatus::Success);
    let ours = fake.eni(ENI).unwrap();
    assert_eq!(ours.ips.iter().filter(|i| i.addr == ip(101)).count(), 1);

    // A new attempt (new token) for an address held by the peer: taken.
    let token = ClientToken::for_claim(ENI, ip(100), 2).unwrap();
    let err = cloud
        .claim_assign(ENI, ip(100), &token, &|| true)
        .await
        .unwrap_err();
    assert_eq!(ClaimFailure::of(&err), ClaimFailure::Taken, "{err}");
    assert!(fake.eni(PEER_ENI).unwrap().ip(ip(100)).is_some());
    assert!(fake.eni(ENI).unwrap().ip(ip(100)).is_none());
    assert_signed(&fake);
}

#[tokio::test]
async fn a_primary_ip_or_another_subnet_is_refused() {
    let fake = fake();
    let server = serve(&fake);
    let cloud = client(&server);
    let err = cloud
        .claim_migrate(PEER_ENI, ENI, ip(20), &|| true)
        .await
        .unwrap_err();
    assert_eq!(ClaimFailure::of(&err), ClaimFailure::Refused, "{err}");
    let err = cloud
        .claim_migrate(OTHER_VPC_ENI, ENI, ip(101), &|| true)
        .await
        .unwrap_err();
    assert_eq!(ClaimFailure::of(&err), ClaimFailure::Refused, "{err}");
    assert_eq!(fake.owner_of(ip(20)).as_deref(), Some(PEER_ENI));
}

/// A client with the fake's documented limits on, and low client-side rates for the
/// listing and the unassign so that callers queue for their tokens.
fn budget_client(server: &FakeServer) -> std::sync::Arc<TencentCloud> {
    std::sync::Arc::new(
        TencentCloud::new(
            CloudSettings {
                v3_endpoint: server.v3_endpoint(),
                total_timeout: Duration::from_secs(2),
                rates: Rates {
                    unassign: 0.5,
                    describe: 2.0,
                    ..Rates::default()
                },
                describe_cache_ttl: Duration::ZERO,
                task_poll_start: Duration::from_millis(20),
                task_poll_cap: Duration::from_millis(50),
                allow_plain_http: true,
                ..CloudSettings::new("ap-guangzhou", INSTANCE)
            },
            config_keys(SECRET_ID, SECRET_KEY),
        )
        .unwrap(),
    )
}

/// Twelve send-time listings of releases, each waiting for a listing token.
fn release_listings(cloud: &std::sync::Arc<TencentCloud>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..12)
        .map(|_| {
            let cloud = std::sync::Arc::clone(cloud);
            tokio::spawn(async move {
                cloud.list_enis().await.unwrap();
            })
        })
        .collect()
}

/// Where the claim's holder lookup is among the listings the fake saw.
fn lookup_position(fake: &FakeCloud) -> usize {
    fake.calls_of("DescribeNetworkInterfaces")
        .iter()
        .position(|c| c.params.to_string().contains("address-ip"))
        .unwrap()
}

/// The account's budget covers claims too, and claims go first (docs/design.md, "Fleet
/// scale"): with the fake's limits on and releases queued for `DescribeNetworkInterfaces`
/// and `UnassignPrivateIpAddresses` tokens, a claim's lookup takes the next listing
/// token ahead of them, whether it started waiting after them or before them, and its
/// Migrate spends a budget of its own, not the unassigns'.
#[tokio::test]
async fn claims_go_ahead_of_releases_waiting_for_the_same_budget() {
    // The claim arrives while releases wait.
    let fake = fake();
    fake.set_rate_limits(Some(enisync_fakecloud::RateLimits::documented()));
    let server = serve(&fake);
    let cloud = budget_client(&server);
    let mut releases = release_listings(&cloud);
    for last in [11, 12] {
        let cloud = std::sync::Arc::clone(&cloud);
        releases.push(tokio::spawn(async move {
            cloud
                .unassign(ENI, VPC, &[ip(last).into()], &|| true)
                .await
                .unwrap();
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let describes_before = fake.calls_of("DescribeNetworkInterfaces").len();
    let unassigns_before = fake.calls_of("UnassignPrivateIpAddresses").len();
    assert!(
        describes_before < 12 && unassigns_before < 2,
        "the releases must be waiting for tokens: {describes_before} listings, \
         {unassigns_before} unassigns sent"
    );
    // A task of its own, as the engine's calls are: the test's own future is polled
    // ahead of spawned tasks, which would favour the claim by itself.
    let claim = {
        let cloud = std::sync::Arc::clone(&cloud);
        tokio::spawn(async move {
            let holders = cloud.claim_holders(VPC, ip(100)).await.unwrap();
            assert_eq!(holders.len(), 1);
            cloud
                .claim_migrate(PEER_ENI, ENI, ip(100), &|| true)
                .await
                .unwrap()
        })
    };
    let task = claim.await.unwrap();
    assert_eq!(
        lookup_position(&fake),
        describes_before,
        "the claim's lookup waited behind releases"
    );
    assert!(
        fake.calls_of("UnassignPrivateIpAddresses").len() < 2,
        "the Migrate waited for the unassigns' budget"
    );
    assert_eq!(cloud.wait_task(&task).await.unwrap(), TaskStatus::Success);
    assert!(fake.eni(ENI).unwrap().ip(ip(100)).is_some());
    // The releases are delayed, not dropped; nothing was refused by the account.
    for release in releases {
        release.await.unwrap();
    }
    assert!(
        fake.calls()
            .iter()
            .all(|c| c.answer != "RequestLimitExceeded"),
        "{:?}",
        fake.limit_refusals()
    );
    assert_signed(&fake);

    // The claim waits first, and releases queue after it: it still goes first.
    let fake = fake_with_limits();
    let server = serve(&fake);
    let cloud = budget_client(&server);
    for _ in 0..2 {
        cloud.list_enis().await.unwrap(); // the bucket's burst, spent
    }
    let claim = {
        let cloud = std::sync::Arc::clone(&cloud);
        tokio::spawn(async move { cloud.claim_holders(VPC, ip(100)).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let releases = release_listings(&cloud);
    assert_eq!(claim.await.unwrap().len(), 1);
    for release in releases {
        release.await.unwrap();
    }
    assert_eq!(
        lookup_position(&fake),
        2,
        "a release took the claim's token"
    );
    assert_signed(&fake);
}

fn fake_with_limits() -> FakeCloud {
    let fake = fake();
    fake.set_rate_limits(Some(enisync_fakecloud::RateLimits::documented()));
    fake
}
