//! Hostile and broken answers from the cloud side, against
//! the fake cloud over HTTP on loopback: an endless or huge body, a redirect, a listing
//! that never ends, the legacy busy code; and the plain-HTTP opt-in's warning at start
//! (that one in a sandbox namespace, as root).
//!
//! What must hold: each becomes a classified error, promptly, having read no more than
//! the cap, sent nothing anywhere but the configured endpoint, and released nothing.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

#[path = "common/loopback_cloud.rs"]
mod loopback_cloud;
#[path = "common/sandbox.rs"]
mod sandbox;

use std::time::Duration;

use enisync::backoff::Backoff;
use enisync::cloud::client::{CloudSettings, MAX_DESCRIBE_PAGES, TencentCloud};
use enisync::cloud::metadata::{MetadataClient, MetadataError, MetadataSettings};
use enisync::cloud::retry::Rates;
use enisync::cloud::{Cloud, ErrorClass, MAX_API_BODY};
use enisync::task::Protocol;
use enisync_fakecloud::{FakeCloud, FakeServer, Fault, Surface};
use loopback_cloud::{ENI, INSTANCE, VPC, config_keys, ip, serve};

const SECRET_ID: &str = "AKIDhostileexample";
const SECRET_KEY: &str = "the-hostile-test-secret-key";
const DESCRIBE: &str = "DescribeNetworkInterfaces";
const UNASSIGN: &str = "UnassignPrivateIpAddresses";
/// The answer of the reproduction (RSS went to 840 MB on it).
const HUGE: u64 = 400_000_000;
/// What a capped reader may have made the fake produce: the cap, plus what the
/// loopback socket buffers and the HTTP stack hold in flight. Far below [`HUGE`].
const PRODUCED_AT_MOST: u64 = 64 << 20;

fn fake() -> FakeCloud {
    loopback_cloud::fake(15, SECRET_ID, SECRET_KEY)
}

/// One send per call (no retries to muddle the counts), a generous timeout: a huge body
/// must be cut by the cap, not by the clock.
fn client(server: &FakeServer, protocol: Protocol) -> TencentCloud {
    TencentCloud::new(
        CloudSettings {
            protocol,
            v3_endpoint: server.v3_endpoint(),
            legacy_endpoint: server.legacy_endpoint(),
            total_timeout: Duration::from_secs(20),
            rates: Rates {
                unassign: 1000.0,
                unassign_ipv6: 1000.0,
                describe: 1000.0,
                task_result: 1000.0,
                migrate: 1000.0,
                assign: 1000.0,
            },
            backoff: Backoff {
                base: Duration::from_millis(1),
                cap: Duration::from_millis(5),
            },
            max_attempts: 1,
            allow_plain_http: true,
            ..CloudSettings::new("ap-guangzhou", INSTANCE)
        },
        config_keys(SECRET_ID, SECRET_KEY),
    )
    .unwrap()
}

fn metadata_client(server: &FakeServer) -> MetadataClient {
    MetadataClient::new(&MetadataSettings {
        base_url: server.metadata_endpoint(),
        total_timeout: Duration::from_secs(20),
        attempts: 1,
        ..MetadataSettings::default()
    })
    .unwrap()
}

/// Item 5: a 400 MB answer, announced by `Content-Length` or streamed chunked without
/// one, to the ENI listing (API 3.0), to the legacy unassign and to the metadata
/// service: refused as too large, with at most the cap (and what is in flight) read.
#[tokio::test]
async fn a_huge_answer_is_refused_after_at_most_the_cap() {
    for chunked in [false, true] {
        let fake = fake();
        let server = serve(&fake);

        fake.inject_on(Surface::V3, DESCRIBE, Fault::huge_body(HUGE, chunked), 1);
        let err = client(&server, Protocol::V3).list_enis().await.unwrap_err();
        assert_eq!(
            (err.code.as_str(), err.class),
            ("Response.TooLarge", ErrorClass::RetryLater),
            "chunked={chunked}: {err}"
        );
        let produced = fake.streamed_bytes();
        assert!(
            produced < PRODUCED_AT_MOST,
            "chunked={chunked}: the fake produced {produced} bytes for a capped reader"
        );

        fake.inject_on(
            Surface::Legacy,
            UNASSIGN,
            Fault::huge_body(HUGE, chunked),
            1,
        );
        let err = client(&server, Protocol::Legacy)
            .unassign(ENI, VPC, &[ip(11).into()], &|| true)
            .await
            .unwrap_err();
        assert_eq!(
            (err.code.as_str(), err.class),
            ("Response.TooLarge", ErrorClass::RetryLater),
            "legacy, chunked={chunked}: {err}"
        );
        assert!(fake.streamed_bytes() - produced < PRODUCED_AT_MOST);
        let produced = fake.streamed_bytes();

        fake.inject_on(
            Surface::Metadata,
            "instance-id",
            Fault::huge_body(HUGE, chunked),
            1,
        );
        let err = metadata_client(&server).instance_id().await.unwrap_err();
        assert!(
            matches!(err, MetadataError::TooLarge { .. }),
            "metadata, chunked={chunked}: {err}"
        );
        assert!(fake.streamed_bytes() - produced < PRODUCED_AT_MOST);
        // Nothing was released on the way.
        assert_eq!(fake.ips_of(ENI).len(), 6, "chunked={chunked}");
    }
}

/// Item 5: a body just under the cap is still read (the cap is a bound, not a guess at
/// the size of a good answer); it is then an unusable reply, classified as malformed.
#[tokio::test]
async fn an_answer_under_the_cap_is_read_and_classified() {
    let fake = fake();
    let server = serve(&fake);
    let size = u64::try_from(MAX_API_BODY).unwrap() - 1024;
    fake.inject_on(Surface::V3, DESCRIBE, Fault::huge_body(size, true), 1);
    let err = client(&server, Protocol::V3).list_enis().await.unwrap_err();
    assert_eq!(err.code, "Response.Malformed", "{err}");
    assert_eq!(fake.streamed_bytes(), size);
}

/// Item 5: no redirect is followed, on any surface: the API 3.0 listing (a 307 would
/// re-send the signed request, `X-TC-Token` included, to another host), the legacy
/// unassign (a 308 would re-send the signed body; also from a 302) and the metadata
/// service. The 3xx itself is the classified answer; the other host hears nothing.
#[tokio::test]
async fn redirects_are_never_followed() {
    let fake = fake();
    let server = serve(&fake);
    // Another host (port) that would accept anything it is sent: it logs every call.
    let elsewhere_cloud = fake_elsewhere();
    let elsewhere = serve(&elsewhere_cloud);

    for status in [301, 302, 307, 308] {
        fake.inject_on(
            Surface::V3,
            DESCRIBE,
            Fault::redirect(status, elsewhere.v3_endpoint()),
            1,
        );
        let err = client(&server, Protocol::V3).list_enis().await.unwrap_err();
        assert_eq!(err.code, format!("Http.{status}"), "{err}");
        assert_eq!(err.class, ErrorClass::RetryLater);

        fake.inject_on(
            Surface::Legacy,
            UNASSIGN,
            Fault::redirect(status, elsewhere.legacy_endpoint()),
            1,
        );
        let err = client(&server, Protocol::Legacy)
            .unassign(ENI, VPC, &[ip(11).into()], &|| true)
            .await
            .unwrap_err();
        assert_eq!(err.code, format!("Http.{status}"), "{err}");

        fake.inject_on(
            Surface::Metadata,
            "instance-id",
            Fault::redirect(
                status,
                format!("{}instance-id", elsewhere.metadata_endpoint()),
            ),
            1,
        );
        let err = metadata_client(&server).instance_id().await.unwrap_err();
        assert!(
            matches!(err, MetadataError::Status { status: s, .. } if s == status),
            "{err}"
        );
    }
    let followed = elsewhere_cloud.calls();
    assert!(followed.is_empty(), "redirects were followed: {followed:?}");
    assert_eq!(fake.ips_of(ENI).len(), 6, "nothing was released");
}

/// A second fake that knows the same instance and key: had a redirect been followed, it
/// would have answered (and logged) the call.
fn fake_elsewhere() -> FakeCloud {
    fake()
}

/// Item 5: a listing whose `TotalCount` never ends (every page full, whatever the
/// offset) stops at the page cap with a classified error, instead of paging (and
/// growing) forever.
#[tokio::test]
async fn an_endless_listing_stops_at_the_page_cap() {
    let fake = fake();
    let server = serve(&fake);
    fake.inject_on(Surface::V3, DESCRIBE, Fault::EndlessListing, 100_000);
    let cloud = client(&server, Protocol::V3);
    let result = tokio::time::timeout(Duration::from_secs(10), cloud.list_enis())
        .await
        .expect("the listing must end, not page forever");
    let err = result.unwrap_err();
    assert_eq!(
        (err.code.as_str(), err.class),
        ("Response.TooManyPages", ErrorClass::RetryLater),
        "{err}"
    );
    assert_eq!(fake.calls_of(DESCRIBE).len(), MAX_DESCRIBE_PAGES);

    // A listing that does end is unaffected.
    fake.clear_faults();
    let enis = client(&server, Protocol::V3).list_enis().await.unwrap();
    assert_eq!(enis.len(), 1);
}

/// Item 9: the legacy API's `ActionLocked` (the resource is busy with another
/// operation) is retried later, not parked as a refusal; the next try goes through.
#[tokio::test]
async fn legacy_action_locked_is_retried() {
    let fake = fake();
    let server = serve(&fake);
    fake.inject_on(Surface::Legacy, UNASSIGN, Fault::error("ActionLocked"), 1);
    let cloud = client(&server, Protocol::Legacy);
    let err = cloud
        .unassign(ENI, VPC, &[ip(11).into()], &|| true)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::RetryLater, "{err}");
    assert!(err.code.contains("ActionLocked"), "{err}");
    assert!(fake.ips_of(ENI).contains(&ip(11)));

    let task = cloud
        .unassign(ENI, VPC, &[ip(11).into()], &|| true)
        .await
        .unwrap();
    assert_eq!(task.protocol, Protocol::Legacy);
}

/// Item 4: a start with `cloud.allow_plain_http` (the sandbox's fake is plain HTTP)
/// logs the warning, naming the endpoint keys and never a URL.
#[test]
fn a_start_with_plain_http_warns() {
    let mut sb = sandbox::Sandbox::new("plainhttp", sandbox::Layout::default());
    sb.start();
    let log = sb.log_text();
    let warning = log
        .lines()
        .find(|l| l.contains("cloud.allow_plain_http = true"))
        .unwrap_or_else(|| panic!("no plain-http warning at start:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("cloud.endpoint") && warning.contains("cloud.v3_endpoint"),
        "{warning}"
    );
    assert!(!warning.contains("http://"), "a URL in the log: {warning}");
    sb.stop();
}
