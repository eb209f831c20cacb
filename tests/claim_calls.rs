//! The claim calls of the cloud client against the fake Tencent Cloud on loopback: the
//! holder lookup, Migrate and Assign, each request signed and checked by the fake, and
//! each failure read as a claim needs it (docs/cloud-api.md, "Claims").

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

#[path = "common/loopback_cloud.rs"]
mod loopback_cloud;

use std::time::Duration;

use enisync::backoff::Backoff;
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
    TencentCloud::new(
        CloudSettings {
            v3_endpoint: server.v3_endpoint(),
            legacy_endpoint: server.legacy_endpoint(),
            total_timeout: Duration::from_millis(500),
            rates: Rates {
                unassign: 100.0,
                unassign_ipv6: 100.0,
                describe: 100.0,
                task_result: 100.0,
            },
            backoff: Backoff {
                base: Duration::from_millis(5),
                cap: Duration::from_millis(50),
            },
            max_attempts: 4,
            task_poll_start: Duration::from_millis(20),
            task_poll_cap: Duration::from_millis(50),
            task_cap: Duration::from_secs(3),
            allow_plain_http: true,
            ..CloudSettings::new("ap-guangzhou", INSTANCE)
        },
        config_keys(SECRET_ID, SECRET_KEY),
    )
    .unwrap()
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
