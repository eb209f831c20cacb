//! The cloud client against the fake Tencent Cloud (a real HTTP server on loopback):
//! the client's acceptance tests. Every test binds its own fake to `127.0.0.1:0` and uses
//! sub-second backoffs and task durations.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

#[path = "common/loopback_cloud.rs"]
mod loopback_cloud;

use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use enisync::cloud::client::{CloudSettings, TencentCloud};
use enisync::cloud::clock::{ServerClock, SystemClock};
use enisync::cloud::credentials::{CredentialProvider, CredentialSources};
use enisync::cloud::failover::FailoverObserver;
use enisync::cloud::metadata::{MetadataClient, MetadataSettings};
use enisync::cloud::release::{IpOutcome, ReleasePolicy, release_batch, release_in_batches};
use enisync::cloud::retry::Rates;
use enisync::cloud::sign::LegacySignMethod;
use enisync::cloud::{Cloud, ErrorClass};
use enisync::task::Protocol;
use enisync_fakecloud::{FakeCloud, FakeServer, Fault, Surface};
use loopback_cloud::{ENI, INSTANCE, VPC, config_keys, ip, serve};

const SECRET_ID: &str = "AKIDlongtermexample";
const SECRET_KEY: &str = "the-long-term-secret-key-NEVER-LOGGED";
const UNASSIGN: &str = "UnassignPrivateIpAddresses";
const TASK_RESULT: &str = "DescribeVpcTaskResult";

/// A fake with secondaries .11–.40 and the long-term key.
fn fake() -> FakeCloud {
    loopback_cloud::fake(40, SECRET_ID, SECRET_KEY)
}

fn settings(server: &FakeServer, protocol: Protocol) -> CloudSettings {
    CloudSettings {
        protocol,
        ..loopback_cloud::settings(server)
    }
}

fn client(server: &FakeServer, protocol: Protocol) -> TencentCloud {
    loopback_cloud::client(settings(server, protocol), SECRET_ID, SECRET_KEY)
}

/// What the engine does with a `RetryLater` release (after its backoff and a fresh
/// check of the host, both left out here): run the procedure again. At most `rounds`
/// times; returns the last outcome and how many rounds it took.
async fn release_until_settled(
    cloud: &TencentCloud,
    ips: &[IpAddr],
    rounds: usize,
) -> (enisync::cloud::release::ReleaseOutcome, usize) {
    let mut n = 0;
    loop {
        n += 1;
        let out = release_batch(cloud, ENI, VPC, ips, policy()).await;
        if n >= rounds || !matches!(out.common(), Some(IpOutcome::RetryLater { .. })) {
            return (out, n);
        }
    }
}

fn policy() -> ReleasePolicy {
    ReleasePolicy::default()
}

// ----- releases run to SUCCESS on both protocols --------------------------------------

/// An IPv4 API 3.0 release is confirmed by listing from its first task (docs/design.md,
/// "Fleet scale"): its IPs gone from the ENI, no `DescribeVpcTaskResult`.
#[tokio::test]
async fn api3_unassign_is_confirmed_by_listing_and_the_ip_is_gone() {
    let fake = fake();
    let server = serve(&fake);
    let cloud = client(&server, Protocol::V3);

    let out = release_batch(&cloud, ENI, VPC, &[ip(11).into(), ip(12).into()], policy()).await;

    assert_eq!(out.common(), Some(&IpOutcome::Released), "{out:?}");
    let ips = fake.ips_of(ENI);
    assert!(!ips.contains(&ip(11)) && !ips.contains(&ip(12)), "{ips:?}");
    assert!(ips.contains(&ip(13)));
    let unassigns = fake.calls_of(UNASSIGN);
    assert_eq!(unassigns.len(), 1);
    assert_eq!(unassigns[0].surface, Surface::V3);
    assert_eq!(unassigns[0].answer, "Success");
    assert!(
        fake.calls_of(TASK_RESULT).is_empty(),
        "{:?}",
        fake.calls_of(TASK_RESULT)
    );
    let listed_after = fake
        .calls_of("DescribeNetworkInterfaces")
        .iter()
        .filter(|c| c.seq > unassigns[0].seq)
        .count();
    assert!(listed_after >= 1, "confirmed by a listing after the call");
    assert_eq!(out.tasks[0].request_id, unassigns[0].request_id);
}

#[tokio::test]
async fn legacy_unassign_runs_to_task_success_with_both_sign_methods() {
    let fake = fake();
    let server = serve(&fake);
    for (method, target) in [
        (LegacySignMethod::HmacSha256, ip(11)),
        (LegacySignMethod::HmacSha1, ip(12)),
    ] {
        let cloud = TencentCloud::new(
            CloudSettings {
                legacy_sign_method: method,
                ..settings(&server, Protocol::Legacy)
            },
            config_keys(SECRET_ID, SECRET_KEY),
        )
        .unwrap();
        let out = release_batch(&cloud, ENI, VPC, &[target.into()], policy()).await;
        assert_eq!(
            out.common(),
            Some(&IpOutcome::Released),
            "{method:?}: {out:?}"
        );
        assert!(!fake.ips_of(ENI).contains(&target));
        assert_eq!(out.tasks[0].protocol, Protocol::Legacy);
    }
    let calls = fake.calls();
    let legacy: Vec<_> = calls
        .iter()
        .filter(|c| c.action == UNASSIGN || c.action == TASK_RESULT)
        .collect();
    assert!(legacy.iter().all(|c| c.surface == Surface::Legacy));
    assert_eq!(
        legacy
            .iter()
            .filter(|c| c.action == UNASSIGN && c.answer == "Success")
            .count(),
        2
    );
}

#[tokio::test]
async fn list_enis_uses_api3_even_with_the_legacy_protocol() {
    let fake = fake();
    let server = serve(&fake);
    let cloud = client(&server, Protocol::Legacy);
    let enis = cloud.list_enis().await.unwrap();
    assert_eq!(enis.len(), 1);
    assert_eq!(enis[0].id, ENI);
    assert_eq!(enis[0].ips.len(), 31);
    assert!(enis[0].ip(ip(10).into()).unwrap().primary);
    let describe = fake.calls_of("DescribeNetworkInterfaces");
    assert_eq!(describe[0].surface, Surface::V3);
}

#[tokio::test]
async fn twenty_three_ips_become_three_calls() {
    let fake = fake();
    let server = serve(&fake);
    let cloud = client(&server, Protocol::V3);
    let ips: Vec<IpAddr> = (11..34).map(|n| ip(n).into()).collect();

    let out = release_in_batches(&cloud, ENI, VPC, &ips, policy()).await;

    assert_eq!(out.ips.len(), 23);
    assert!(
        out.ips.values().all(|o| *o == IpOutcome::Released),
        "{out:?}"
    );
    let sizes: Vec<_> = fake
        .calls_of(UNASSIGN)
        .iter()
        .map(|c| c.ips.len())
        .collect();
    assert_eq!(sizes, [10, 10, 3]);
    let left = fake.ips_of(ENI);
    assert!(
        ips.iter()
            .all(|ip| !left.iter().any(|l| IpAddr::V4(*l) == *ip))
    );
    assert_eq!(left.len(), 31 - 23);
}

// ----- each outcome class, from a fault or a state --------------------------------------

#[tokio::test]
async fn an_ip_not_on_the_eni_is_already_gone_on_both_protocols() {
    let fake = fake();
    let server = serve(&fake);
    for protocol in [Protocol::V3, Protocol::Legacy] {
        let cloud = client(&server, protocol);
        let out = release_batch(&cloud, ENI, VPC, &[ip(99).into()], policy()).await;
        assert_eq!(
            out.common(),
            Some(&IpOutcome::AlreadyGone),
            "{protocol:?}: {out:?}"
        );
    }
    assert!(
        fake.calls_of("DescribeNetworkInterfaces").len() >= 2,
        "confirmed by a describe"
    );
}

#[tokio::test]
async fn a_primary_ip_is_refused_with_its_code_on_both_protocols() {
    let fake = fake();
    let server = serve(&fake);
    for (protocol, code) in [
        (Protocol::V3, "UnsupportedOperation.PrimaryIp"),
        (Protocol::Legacy, "InvalidPrivateip.IsPrimary"),
    ] {
        let cloud = client(&server, protocol);
        let out = release_batch(&cloud, ENI, VPC, &[ip(10).into()], policy()).await;
        let Some(IpOutcome::Refused { reason, .. }) = out.common() else {
            panic!("{protocol:?}: {out:?}")
        };
        assert!(reason.contains(code), "{reason}");
    }
    assert!(fake.ips_of(ENI).contains(&ip(10)));
    assert_eq!(fake.calls_of(UNASSIGN).len(), 2, "a refusal is not retried");
}

#[tokio::test]
async fn permission_errors_are_refused_without_retries() {
    let fake = fake();
    let server = serve(&fake);
    fake.inject(UNASSIGN, Fault::error("UnauthorizedOperation"), 1);
    let out = release_batch(
        &client(&server, Protocol::V3),
        ENI,
        VPC,
        &[ip(11).into()],
        policy(),
    )
    .await;
    assert!(
        matches!(out.common(), Some(IpOutcome::Refused { .. })),
        "{out:?}"
    );
    assert_eq!(fake.calls_of(UNASSIGN).len(), 1);
    assert!(fake.ips_of(ENI).contains(&ip(11)));
}

#[tokio::test]
async fn persistent_server_errors_end_as_retry_later_after_one_send() {
    let fake = fake();
    let server = serve(&fake);
    fake.inject(UNASSIGN, Fault::Http { status: 503 }, 10);
    let out = release_batch(
        &client(&server, Protocol::V3),
        ENI,
        VPC,
        &[ip(11).into()],
        policy(),
    )
    .await;
    let Some(IpOutcome::RetryLater { reason, .. }) = out.common() else {
        panic!("{out:?}")
    };
    assert!(reason.contains("Http.503"), "{reason}");
    // One send: the engine re-checks the host before the next (client.rs).
    assert_eq!(
        fake.calls_of(UNASSIGN).len(),
        1,
        "never re-sent by the client"
    );
    assert!(fake.ips_of(ENI).contains(&ip(11)));
}

#[tokio::test]
async fn malformed_bodies_timeouts_and_a_busy_eni_are_retried_to_success() {
    let fake = fake();
    let server = serve(&fake);
    let cloud = client(&server, Protocol::V3);
    for fault in [
        Fault::Malformed,
        Fault::timeout(Duration::from_millis(800)),
        Fault::error("UnsupportedOperation.MutexOperationTaskRunning"),
        Fault::error("InternalError"),
    ] {
        fake.clear_calls();
        fake.inject(UNASSIGN, fault.clone(), 1);
        let target = ip(11 + u8::try_from(fake.tasks().len()).unwrap());
        let (out, rounds) = release_until_settled(&cloud, &[target.into()], 5).await;
        assert_eq!(
            out.common(),
            Some(&IpOutcome::Released),
            "{fault:?}: {out:?}"
        );
        assert_eq!(rounds, 2, "{fault:?}: RetryLater once, then released");
        assert_eq!(fake.calls_of(UNASSIGN).len(), 2, "{fault:?}: one retry");
    }
}

#[tokio::test]
async fn a_failed_task_is_retried_and_one_that_always_fails_is_refused() {
    let fake = fake();
    let server = serve(&fake);
    let cloud = client(&server, Protocol::V3);

    fake.fail_next_task(UNASSIGN);
    let out = release_batch(&cloud, ENI, VPC, &[ip(11).into()], policy()).await;
    assert_eq!(out.common(), Some(&IpOutcome::Released), "{out:?}");
    assert_eq!(out.tasks.len(), 2);

    fake.inject(UNASSIGN, Fault::TaskFails, 10);
    let out = release_batch(&cloud, ENI, VPC, &[ip(12).into()], policy()).await;
    assert_eq!(
        out.common(),
        Some(&IpOutcome::Refused {
            reason: "task failed 3 times".into(),
            code: None,
        })
    );
    assert!(fake.ips_of(ENI).contains(&ip(12)));
}

#[tokio::test]
async fn a_task_still_running_at_the_cap_is_retry_later() {
    let fake = fake();
    let server = serve(&fake);
    fake.set_task_duration(Duration::from_secs(30));
    let cloud = TencentCloud::new(
        CloudSettings {
            task_cap: Duration::from_millis(200),
            ..settings(&server, Protocol::V3)
        },
        config_keys(SECRET_ID, SECRET_KEY),
    )
    .unwrap();
    let out = release_batch(&cloud, ENI, VPC, &[ip(11).into()], policy()).await;
    assert!(
        matches!(out.common(), Some(IpOutcome::RetryLater { .. })),
        "{out:?}"
    );
    assert_eq!(out.tasks.len(), 1, "the task is reported for the journal");
}

#[tokio::test]
async fn a_rejected_token_refreshes_and_retries_once() {
    let fake = fake();
    let server = serve(&fake);
    let cloud = client(&server, Protocol::V3);
    fake.inject(UNASSIGN, Fault::error("AuthFailure.TokenFailure"), 1);
    let out = release_batch(&cloud, ENI, VPC, &[ip(11).into()], policy()).await;
    assert_eq!(out.common(), Some(&IpOutcome::Released), "{out:?}");
    assert_eq!(fake.calls_of(UNASSIGN).len(), 2);

    fake.inject(UNASSIGN, Fault::error("AuthFailure.TokenFailure"), 5);
    let out = release_batch(&cloud, ENI, VPC, &[ip(12).into()], policy()).await;
    assert!(
        matches!(out.common(), Some(IpOutcome::Refused { .. })),
        "{out:?}"
    );
    assert_eq!(fake.calls_of(UNASSIGN).len(), 4, "exactly one retry");
}

// ----- throttling -------------------------------------------------------------------

#[tokio::test]
async fn throttling_recovers_without_losing_the_release() {
    let fake = fake();
    let server = serve(&fake);
    for protocol in [Protocol::V3, Protocol::Legacy] {
        fake.clear_calls();
        let target = if protocol == Protocol::V3 {
            ip(11)
        } else {
            ip(12)
        };
        fake.inject(UNASSIGN, Fault::Throttle, 2);
        fake.inject(UNASSIGN, Fault::ActionLimited, 1);
        fake.inject(TASK_RESULT, Fault::Throttle, 3);
        let (out, rounds) =
            release_until_settled(&client(&server, protocol), &[target.into()], 8).await;
        assert_eq!(
            out.common(),
            Some(&IpOutcome::Released),
            "{protocol:?}: {out:?}"
        );
        assert_eq!(rounds, 4, "three throttled sends, each back to the engine");
        assert!(!fake.ips_of(ENI).contains(&target));
        let answers: Vec<_> = fake
            .calls_of(UNASSIGN)
            .into_iter()
            .map(|c| c.answer)
            .collect();
        assert_eq!(answers.len(), 4, "{protocol:?}: {answers:?}");
        assert_eq!(answers.last().map(String::as_str), Some("Success"));
        // Every unassign fault was met. A refused poll of an API 3.0 release switches
        // to confirming by listing, so its later poll faults may be left over.
        assert!(
            fake.faults()
                .iter()
                .all(|rule| rule.remaining == 0 || rule.action == TASK_RESULT),
            "{:?}",
            fake.faults()
        );
        fake.clear_faults();
    }
}

#[tokio::test]
async fn the_client_side_rate_limit_spaces_calls() {
    let fake = fake();
    let server = serve(&fake);
    let cloud = TencentCloud::new(
        CloudSettings {
            rates: Rates {
                unassign: 100.0,
                unassign_ipv6: 100.0,
                describe: 10.0,
                task_result: 100.0,
                migrate: 100.0,
                assign: 100.0,
            },
            describe_cache_ttl: Duration::ZERO,
            ..settings(&server, Protocol::V3)
        },
        config_keys(SECRET_ID, SECRET_KEY),
    )
    .unwrap();
    let start = std::time::Instant::now();
    for _ in 0..15 {
        cloud.list_enis().await.unwrap();
    }
    // A burst of 10, then 10 per second: the last 5 take about half a second.
    assert!(
        start.elapsed() >= Duration::from_millis(450),
        "{:?}",
        start.elapsed()
    );
}

// ----- credentials ------------------------------------------------------------------

#[tokio::test]
async fn cam_role_keys_rotate_and_are_fetched_once_per_rotation() {
    let fake = fake();
    let server = serve(&fake);
    fake.set_cam_role(INSTANCE, Some("enisync-role")).unwrap();
    fake.set_cam_rotation(Duration::from_secs(3600));
    // Keys overlap their successor by ten minutes, as real temporary keys do.
    fake.set_cam_key_lifetime(Duration::from_secs(4200));
    let clock = Arc::new(ServerClock::new(Arc::new(SystemClock)));
    let cloud = cam_client(&server, Arc::clone(&clock));

    let rounds = 3;
    let mut secret_ids = Vec::new();
    for round in 0..rounds {
        // Both clocks jump past the refresh point (issue + 4200 − 300 s) of the previous
        // key, which the fake has rotated (issue + 3600 s).
        fake.set_clock_offset_secs(round * 4000);
        clock.set_offset(round * 4000);
        // Key expiry runs on tokio's clock (the provider turns the cloud's expiry into a
        // deadline when it fetches the keys), so it makes the same jump. Paused only for
        // the step: the fake answers over real sockets while the clock runs.
        if round > 0 {
            tokio::time::pause();
            tokio::time::advance(Duration::from_secs(4000)).await;
            tokio::time::resume();
        }
        for target in 0..2 {
            let target = ip(11 + u8::try_from(round * 2 + target).unwrap());
            let out = release_batch(&cloud, ENI, VPC, &[target.into()], policy()).await;
            assert_eq!(
                out.common(),
                Some(&IpOutcome::Released),
                "round {round}: {out:?}"
            );
        }
        secret_ids.push(fake.cam_key(INSTANCE).unwrap().secret_id);
    }
    let rounds = u64::try_from(rounds).unwrap();
    assert_eq!(fake.metadata_credential_fetches(), rounds);
    assert_eq!(cloud.credentials().metadata_fetches(), rounds);
    secret_ids.dedup();
    assert_eq!(secret_ids.len(), 3, "a new key each round");
    let calls = fake.calls();
    let api_calls: Vec<_> = calls.iter().filter(|c| c.surface == Surface::V3).collect();
    assert!(
        api_calls.iter().all(|c| c.answer == "Success"),
        "{api_calls:#?}"
    );
    for id in &secret_ids {
        assert!(api_calls.iter().any(|c| c.secret_id.as_ref() == Some(id)));
    }
}

fn cam_client(server: &FakeServer, clock: Arc<ServerClock>) -> TencentCloud {
    let metadata = MetadataClient::new(&MetadataSettings {
        base_url: server.metadata_endpoint(),
        ..MetadataSettings::default()
    })
    .unwrap();
    let sources = CredentialSources {
        systemd_dir: None,
        config_keys: None,
        env: Box::new(|_| None),
        metadata: Some(metadata),
    };
    let credentials = Arc::new(CredentialProvider::new(sources, clock).unwrap());
    TencentCloud::new(settings(server, Protocol::V3), credentials).unwrap()
}

#[tokio::test]
async fn a_request_signed_with_a_wrong_key_is_rejected() {
    let fake = fake();
    let server = serve(&fake);
    for protocol in [Protocol::V3, Protocol::Legacy] {
        let cloud = TencentCloud::new(
            settings(&server, protocol),
            config_keys(SECRET_ID, "not-the-right-key"),
        )
        .unwrap();
        let error = cloud
            .unassign(ENI, VPC, &[ip(11).into()], &|| true)
            .await
            .unwrap_err();
        assert_eq!(error.class, ErrorClass::Refused, "{protocol:?}: {error}");
        assert!(
            error.code.contains("AuthFailure.SignatureFailure"),
            "{error}"
        );
    }
    let error = TencentCloud::new(
        settings(&server, Protocol::V3),
        config_keys("AKIDunknown", SECRET_KEY),
    )
    .unwrap()
    .unassign(ENI, VPC, &[ip(11).into()], &|| true)
    .await
    .unwrap_err();
    assert_eq!(error.code, "AuthFailure.SecretIdNotFound");
    assert!(fake.ips_of(ENI).contains(&ip(11)));
    assert!(
        fake.calls_of(UNASSIGN)
            .iter()
            .all(|c| c.answer.starts_with("AuthFailure"))
    );
}

// ----- no secret in any log line --------------------------------------------------

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_key_or_token_appears_in_any_log_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // A callsite first reached by a parallel test while this dispatcher was being
    // registered can keep a cached "never" interest: rebuild it with this one known.
    tracing::callsite::rebuild_interest_cache();

    let fake = fake();
    let server = serve(&fake);
    let mut texts = Vec::new();

    // Long-term keys, both protocols, with errors, retries and refreshes on the way.
    for protocol in [Protocol::V3, Protocol::Legacy] {
        fake.inject(UNASSIGN, Fault::Throttle, 1);
        fake.inject(UNASSIGN, Fault::error("AuthFailure.TokenFailure"), 1);
        fake.inject(UNASSIGN, Fault::error("AuthFailure.SignatureExpire"), 1);
        let cloud = client(&server, protocol);
        let target = if protocol == Protocol::V3 {
            ip(11)
        } else {
            ip(12)
        };
        let (out, _) =
            release_until_settled(&cloud, &[target.into(), ip(10).into(), ip(99).into()], 5).await;
        texts.push(format!("{out:?} {cloud:?}"));
    }
    let wrong = TencentCloud::new(
        settings(&server, Protocol::Legacy),
        config_keys(SECRET_ID, "wrong-key-also-secret"),
    )
    .unwrap();
    let error = wrong
        .unassign(ENI, VPC, &[ip(13).into()], &|| true)
        .await
        .unwrap_err();
    texts.push(format!("{error} {error:?} {wrong:?}"));

    // CAM role keys with session tokens, on both protocols, across a rotation.
    fake.set_cam_role(INSTANCE, Some("enisync-role")).unwrap();
    fake.set_cam_rotation(Duration::from_secs(3600));
    fake.set_cam_key_lifetime(Duration::from_secs(4200));
    let clock = Arc::new(ServerClock::new(Arc::new(SystemClock)));
    let cam = cam_client(&server, Arc::clone(&clock));
    let mut cam_keys = Vec::new();
    for round in 0..2 {
        fake.set_clock_offset_secs(round * 4000);
        clock.set_offset(round * 4000);
        fake.inject(UNASSIGN, Fault::error("AuthFailure.TokenFailure"), 1);
        let target = ip(20 + u8::try_from(round).unwrap());
        let out = release_batch(&cam, ENI, VPC, &[target.into()], policy()).await;
        assert_eq!(out.common(), Some(&IpOutcome::Released), "{out:?}");
        cam_keys.push(fake.cam_key(INSTANCE).unwrap());
        texts.push(format!("{out:?} {cam:?}"));
    }

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("unassign sent"), "the capture works: {logs}");
    assert!(logs.contains("fetched temporary API keys"));
    assert!(logs.contains("check this host's clock"));
    let mut secrets = vec![SECRET_KEY.to_owned(), "wrong-key-also-secret".to_owned()];
    for key in &cam_keys {
        secrets.push(key.secret_key.clone());
        secrets.push(key.token.clone());
    }
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret is in the logs");
        for text in &texts {
            assert!(
                !text.contains(secret.as_str()),
                "a secret is in an error or Debug output"
            );
        }
    }
}

// ----- endpoint failover (docs/endpoint-failover.md) ------------------------------------

/// A name the resolver refuses without asking anyone: a label over 63 bytes is refused
/// by glibc before any query is made, and `.invalid` (RFC 2606) could never resolve
/// anyway, so this test sends no packet off the host.
fn unresolvable_endpoint() -> String {
    format!("http://{}.enisync-test.invalid", "x".repeat(64))
}

/// A loopback port nobody listens on: bound and held, never listening, so a connection
/// is refused. Held rather than bound and closed: a closed port is free for the next
/// `bind` to port 0, and once it was the very fake the test then served as `b`, so the
/// "closed" endpoint answered and nothing failed over (CI, `connect: []`).
fn closed_port_endpoint() -> (String, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (format!("http://127.0.0.1:{port}"), socket)
}

/// The fake's test certificate (fakecloud/tests/data), whose CA the client does not
/// trust: the TLS handshake fails.
fn untrusted_tls_server(fake: &FakeCloud) -> FakeServer {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakecloud/tests/data");
    let tls = enisync_fakecloud::TlsConfig::from_pem_files(
        &data.join("tls-server.pem"),
        &data.join("tls-server.key"),
    )
    .unwrap();
    fake.serve_tls(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), &tls)
        .unwrap()
}

/// A listener that accepts, reads the request (headers and the announced body) and
/// closes without answering: the request went out and may have been executed. Returns
/// its URL and what it read.
fn read_and_close_endpoint() -> (String, Arc<Mutex<Vec<u8>>>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            stream
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Until the body announced in Content-Length is in, or the read times out.
            while let Ok(n) = stream.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_lowercase();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= length {
                        break;
                    }
                }
            }
            log.lock().unwrap().extend_from_slice(&buf);
            // Dropping the stream closes it without an answer.
        }
    });
    (url, seen)
}

/// `enisync check-config --config <path>`, run.
fn check_config(path: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_enisync"))
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

/// The `(from, to)` failovers a client reported.
type Failovers = Arc<Mutex<Vec<(String, String)>>>;

/// A client whose `cloud.endpoints` is `[a, b]` (b: the fake), and the failovers it
/// reports.
fn failover_client(server: &FakeServer, a: String) -> (TencentCloud, Failovers) {
    let failovers = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&failovers);
    let cloud = TencentCloud::new(
        CloudSettings {
            v3_endpoint: a,
            v3_fallbacks: vec![server.v3_endpoint()],
            ..settings(server, Protocol::V3)
        },
        config_keys(SECRET_ID, SECRET_KEY),
    )
    .unwrap()
    .with_failover_observer(FailoverObserver(Arc::new(move |from: &str, to: &str| {
        seen.lock().unwrap().push((from.to_owned(), to.to_owned()));
    })));
    (cloud, failovers)
}

#[tokio::test]
async fn a_request_that_cannot_be_sent_fails_over_to_the_next_endpoint() {
    // `a` fails at each stage before sending: DNS, TCP connect, TLS handshake.
    let other = fake();
    let tls = untrusted_tls_server(&other);
    let (closed, _held) = closed_port_endpoint();
    for (stage, a) in [
        ("dns", unresolvable_endpoint()),
        ("connect", closed),
        ("tls", tls.v3_endpoint()),
    ] {
        let fake = fake();
        let server = serve(&fake);
        let (cloud, failovers) = failover_client(&server, a.clone());

        let out = release_batch(&cloud, ENI, VPC, &[ip(11).into()], policy()).await;

        assert_eq!(out.common(), Some(&IpOutcome::Released), "{stage}: {out:?}");
        let unassigns = fake.calls_of(UNASSIGN);
        assert_eq!(unassigns.len(), 1, "{stage}: one unassign, on b");
        assert_eq!(
            unassigns[0].answer, "Success",
            "{stage}: signed for b's Host"
        );
        assert!(!fake.ips_of(ENI).contains(&ip(11)), "{stage}");
        // The first request switched to b; every later one went to b first.
        let failovers = failovers.lock().unwrap().clone();
        let b_host = server.addr().to_string();
        assert_eq!(failovers.len(), 1, "{stage}: {failovers:?}");
        assert_eq!(failovers[0].1, b_host, "{stage}");
        assert_ne!(failovers[0].0, b_host, "{stage}");
    }
    assert!(
        other.calls().is_empty(),
        "nothing got through the TLS failure"
    );
}

#[tokio::test]
async fn a_request_that_was_sent_does_not_fail_over() {
    let fake = fake();
    let server = serve(&fake);
    let (a, seen) = read_and_close_endpoint();
    let (cloud, failovers) = failover_client(&server, a);

    let error = cloud
        .unassign(ENI, VPC, &[ip(11).into()], &|| true)
        .await
        .unwrap_err();

    assert_eq!(error.class, ErrorClass::RetryLater, "{error}");
    let request = String::from_utf8_lossy(&seen.lock().unwrap()).to_lowercase();
    assert!(
        request.contains("x-tc-action: unassignprivateipaddresses"),
        "a read the request: {request}"
    );
    assert!(fake.calls().is_empty(), "no call on b: {:?}", fake.calls());
    assert!(failovers.lock().unwrap().is_empty());
    assert!(fake.ips_of(ENI).contains(&ip(11)));
}

#[tokio::test]
async fn an_endpoint_of_another_region_is_refused() {
    let other = "https://vpc.ap-shanghai.tencentcloudapi.com";
    // The client (what `run` builds) refuses it for the instance's region.
    let error = TencentCloud::new(
        CloudSettings {
            v3_endpoint: "https://vpc.ap-guangzhou.tencentcloudapi.com".into(),
            v3_fallbacks: vec![other.into()],
            ..CloudSettings::new("ap-guangzhou", INSTANCE)
        },
        config_keys(SECRET_ID, SECRET_KEY),
    )
    .unwrap_err();
    assert!(error.to_string().contains("ap-shanghai"), "{error}");

    // And `check-config`, naming the key.
    let dir = std::env::temp_dir().join(format!("enisync-endpoints-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("enisync.toml");
    for (region_line, refused) in [("region = \"ap-guangzhou\"\n", true), ("", true)] {
        std::fs::write(
            &path,
            format!(
                "[cloud]\n{region_line}endpoints = [\"https://vpc.ap-guangzhou.tencentcloudapi.com\", \"{other}\"]\n"
            ),
        )
        .unwrap();
        let out = check_config(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(!out.status.success(), refused, "{region_line:?}: {stderr}");
        assert!(
            stderr.contains("`cloud.endpoints`"),
            "names the key: {stderr}"
        );
        assert!(stderr.contains("ap-shanghai"), "{stderr}");
    }
    // The same region, and the region-less domain, pass.
    std::fs::write(
        &path,
        "[cloud]\nregion = \"ap-guangzhou\"\nendpoints = [\"https://vpc.ap-guangzhou.tencentcloudapi.com\", \"https://vpc.tencentcloudapi.com\"]\n",
    )
    .unwrap();
    let out = check_config(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
