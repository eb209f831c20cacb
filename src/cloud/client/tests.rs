#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::collections::VecDeque;

use super::super::clock::{ServerClock, SystemClock};
use super::super::credentials::{CredentialSources, Secret};
use super::super::test_http::{Recorded, TestServer};
use super::*;

fn provider() -> Arc<CredentialProvider> {
    let sources = CredentialSources {
        systemd_dir: None,
        config_keys: Some((Secret::new("AKIDtest"), Secret::new("the-key"))),
        env: Box::new(|_| None),
        metadata: None,
    };
    let clock = Arc::new(ServerClock::new(Arc::new(SystemClock)));
    Arc::new(CredentialProvider::new(sources, clock).unwrap())
}

fn settings(base: &str) -> CloudSettings {
    CloudSettings {
        v3_endpoint: format!("{base}/"),
        legacy_endpoint: format!("{base}/v2/index.php"),
        backoff: Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
        },
        rates: Rates {
            unassign: 1000.0,
            unassign_ipv6: 1000.0,
            describe: 1000.0,
            task_result: 1000.0,
            migrate: 1000.0,
            assign: 1000.0,
        },
        task_poll_start: Duration::from_millis(1),
        task_poll_cap: Duration::from_millis(5),
        allow_plain_http: true,
        ..CloudSettings::new("ap-guangzhou", "ins-1")
    }
}

/// A server answering successive requests from a script (the last answer repeats).
async fn scripted(answers: &[&str]) -> TestServer {
    let script = StdMutex::new(
        answers
            .iter()
            .map(|a| (*a).to_owned())
            .collect::<VecDeque<_>>(),
    );
    TestServer::start(move |_: &Recorded| {
        let mut script = script.lock().unwrap();
        let answer = if script.len() > 1 {
            script.pop_front().unwrap()
        } else {
            script[0].clone()
        };
        (200, answer)
    })
    .await
}

fn cloud(server: &TestServer, f: impl FnOnce(&mut CloudSettings)) -> TencentCloud {
    let mut settings = settings(&server.base);
    f(&mut settings);
    TencentCloud::new(settings, provider()).unwrap()
}

const THROTTLED: &str =
    r#"{"Response":{"Error":{"Code":"RequestLimitExceeded","Message":"slow"},"RequestId":"r"}}"#;
const TOKEN_FAILURE: &str =
    r#"{"Response":{"Error":{"Code":"AuthFailure.TokenFailure","Message":"bad"},"RequestId":"r"}}"#;
const UNASSIGNED: &str = r#"{"Response":{"RequestId":"task-1"}}"#;

fn ip(last: u8) -> IpAddr {
    Ipv4Addr::new(10, 0, 0, last).into()
}

#[tokio::test]
async fn retry_later_is_retried_up_to_max_attempts() {
    let listing = page(&[], 0);
    let server = scripted(&[THROTTLED, THROTTLED, &listing]).await;
    assert!(cloud(&server, |_| {}).list_enis().await.unwrap().is_empty());
    assert_eq!(server.requests().len(), 3);

    let server = scripted(&[THROTTLED]).await;
    let err = cloud(&server, |s| s.max_attempts = 3)
        .list_enis()
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::RetryLater);
    assert_eq!(server.requests().len(), 3);
}

/// The engine re-checks the host before every unassign, so the client never re-sends
/// one on its own after a transient failure.
#[tokio::test]
async fn an_unassign_is_sent_once_whatever_the_transient_answer() {
    let server = scripted(&[THROTTLED, UNASSIGNED]).await;
    let err = cloud(&server, |_| {})
        .unassign("eni-1", "vpc-1", &[ip(2)], &|| true)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::RetryLater);
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn refresh_credentials_retries_exactly_once() {
    let server = scripted(&[TOKEN_FAILURE, UNASSIGNED]).await;
    let c = cloud(&server, |_| {});
    assert!(
        c.unassign("eni-1", "vpc-1", &[ip(2)], &|| true)
            .await
            .is_ok()
    );
    assert_eq!(server.requests().len(), 2);

    let server = scripted(&[TOKEN_FAILURE]).await;
    let err = cloud(&server, |_| {})
        .unassign("eni-1", "vpc-1", &[ip(2)], &|| true)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::RefreshCredentials);
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn batches_outside_1_to_10_are_refused_without_a_request() {
    let server = scripted(&[UNASSIGNED]).await;
    let c = cloud(&server, |_| {});
    let eleven: Vec<_> = (2..13).map(ip).collect();
    for ips in [&eleven[..], &[]] {
        let err = c
            .unassign("eni-1", "vpc-1", ips, &|| true)
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Refused);
    }
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn plain_http_endpoints_need_the_explicit_setting() {
    let err = TencentCloud::new(
        CloudSettings {
            v3_endpoint: "http://127.0.0.1:1/".into(),
            ..CloudSettings::new("r", "i")
        },
        provider(),
    )
    .unwrap_err();
    assert!(
        matches!(err, SetupError::Endpoint(EndpointError::PlainHttp { .. })),
        "{err}"
    );
    let err = TencentCloud::new(
        CloudSettings {
            extra_ca_file: Some("/nonexistent/ca.pem".into()),
            ..CloudSettings::new("r", "i")
        },
        provider(),
    )
    .unwrap_err();
    assert!(matches!(err, SetupError::CaFile { .. }), "{err}");
}

fn page(ids: &[&str], total: usize) -> String {
    let set: Vec<String> = ids
        .iter()
        .map(|id| {
            format!(
                r#"{{"NetworkInterfaceId":"{id}","MacAddress":"02:00:00:00:00:01","VpcId":"v","SubnetId":"s","PrivateIpAddressSet":[]}}"#
            )
        })
        .collect();
    format!(
        r#"{{"Response":{{"TotalCount":{total},"NetworkInterfaceSet":[{}],"RequestId":"r"}}}}"#,
        set.join(",")
    )
}

#[tokio::test]
async fn list_enis_pages_to_total_count_and_caches_until_an_unassign() {
    let (first, second) = (page(&["eni-1"], 2), page(&["eni-2"], 2));
    let server = scripted(&[&first, &second, UNASSIGNED, &first, &second]).await;
    let c = cloud(&server, |_| {});
    let enis = c.list_enis().await.unwrap();
    assert_eq!(
        enis.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["eni-1", "eni-2"]
    );
    let offsets: Vec<u64> = server
        .requests()
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["Offset"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(offsets, [0, 1]);
    c.list_enis().await.unwrap();
    assert_eq!(server.requests().len(), 2, "served from the cache");
    c.unassign("eni-1", "vpc-1", &[ip(2)], &|| true)
        .await
        .unwrap();
    c.list_enis().await.unwrap();
    assert_eq!(
        server.requests().len(),
        5,
        "the unassign invalidated the cache"
    );
}

#[tokio::test]
async fn wait_task_follows_to_the_end_or_the_cap() {
    let running = r#"{"Response":{"Status":"RUNNING","RequestId":"r"}}"#;
    let success = r#"{"Response":{"Status":"SUCCESS","RequestId":"r"}}"#;
    let task = TaskRef {
        request_id: Some("t".into()),
        task_id: "t".into(),
        protocol: Protocol::V3,
    };
    let server = scripted(&[running, THROTTLED, running, success]).await;
    let status = cloud(&server, |s| s.max_attempts = 1)
        .wait_task(&task)
        .await
        .unwrap();
    assert_eq!(status, TaskStatus::Success);
    assert_eq!(
        server.requests().len(),
        4,
        "a throttled poll does not end the wait"
    );

    let server = scripted(&[running]).await;
    let status = cloud(&server, |s| s.task_cap = Duration::from_millis(30))
        .wait_task(&task)
        .await
        .unwrap();
    assert_eq!(status, TaskStatus::Running);
}

#[tokio::test]
async fn legacy_protocol_releases_over_legacy_and_lists_over_v3() {
    let server = TestServer::start(|req: &Recorded| match req.path.as_str() {
        "/v2/index.php" => {
            let body = String::from_utf8_lossy(&req.body);
            let reply = if body.contains("Action=UnassignPrivateIpAddresses") {
                r#"{"code":0,"codeDesc":"Success","data":{"taskId":7}}"#
            } else {
                r#"{"code":0,"data":{"status":0}}"#
            };
            (200, reply.to_owned())
        }
        _ => (200, page(&[], 0)),
    })
    .await;
    let c = cloud(&server, |s| s.protocol = Protocol::Legacy);
    let task = c
        .unassign("eni-1", "vpc-1", &[ip(2)], &|| true)
        .await
        .unwrap();
    assert_eq!(
        (task.task_id.as_str(), task.protocol),
        ("7", Protocol::Legacy)
    );
    assert_eq!(c.wait_task(&task).await.unwrap(), TaskStatus::Success);
    c.list_enis().await.unwrap();
    let paths: Vec<_> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/v2/index.php", "/v2/index.php", "/"]);
}

/// IPv6 (docs/cloud-api.md, "IPv6"): `UnassignIpv6Addresses` over API 3.0 also with
/// `api = "legacy"`, its task polled over API 3.0; a mixed batch is refused without
/// a request; and the IPv6 bucket is its own (an IPv6 call waits for an IPv6 token
/// only).
#[tokio::test]
async fn ipv6_goes_over_api_3_with_its_own_bucket_and_never_mixed() {
    let server = TestServer::start(|req: &Recorded| match req.path.as_str() {
        "/v2/index.php" => (
            200,
            r#"{"code":0,"codeDesc":"Success","data":{"taskId":7}}"#.to_owned(),
        ),
        _ => {
            let action = req.headers.get("x-tc-action").cloned().unwrap_or_default();
            let reply = if action == "DescribeVpcTaskResult" {
                r#"{"Response":{"Status":"SUCCESS","RequestId":"p"}}"#
            } else {
                r#"{"Response":{"RequestId":"task-v6"}}"#
            };
            (200, reply.to_owned())
        }
    })
    .await;
    let c = cloud(&server, |s| {
        s.protocol = Protocol::Legacy;
        s.rates.unassign_ipv6 = 2.0;
    });
    let v6: IpAddr = "2402:4e00:1::11".parse().unwrap();
    let task = c.unassign("eni-1", "vpc-1", &[v6], &|| true).await.unwrap();
    assert_eq!(
        (task.task_id.as_str(), task.protocol),
        ("task-v6", Protocol::V3)
    );
    assert_eq!(c.wait_task(&task).await.unwrap(), TaskStatus::Success);
    let requests = server.requests();
    assert_eq!(requests[0].path, "/");
    assert_eq!(requests[0].headers["x-tc-action"], "UnassignIpv6Addresses");
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"NetworkInterfaceId": "eni-1",
            "Ipv6Addresses": [{"Address": "2402:4e00:1::11"}]})
    );
    assert_eq!(requests[1].headers["x-tc-action"], "DescribeVpcTaskResult");

    let before = server.requests().len();
    let err = c
        .unassign("eni-1", "vpc-1", &[ip(2), v6], &|| true)
        .await
        .unwrap_err();
    assert_eq!(err.code, "Client.MixedFamilies");
    assert_eq!(
        server.requests().len(),
        before,
        "no request for a mixed batch"
    );

    // The IPv6 bucket (2/s, burst 2) is spent by two calls; IPv4 calls still go at
    // once, since theirs is another bucket.
    c.unassign("eni-1", "vpc-1", &[v6], &|| true).await.unwrap();
    let started = Instant::now();
    for _ in 0..3 {
        c.unassign("eni-1", "vpc-1", &[ip(2)], &|| true)
            .await
            .unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "IPv4 not slowed"
    );
    let started = Instant::now();
    c.unassign("eni-1", "vpc-1", &[v6], &|| true).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the third IPv6 call waited for its own bucket: {:?}",
        started.elapsed()
    );
}

/// The pause gate is asked after the rate token (and the keys), right before the
/// request: an unassign that waited for a token while the operator paused is not sent.
#[tokio::test]
async fn an_unassign_waiting_for_its_rate_token_is_not_sent_after_a_pause() {
    let server = scripted(&[UNASSIGNED]).await;
    let c = Arc::new(cloud(&server, |s| s.rates.unassign = 2.0));
    // Spend the bucket (2/s, burst 2): the next call waits about half a second.
    for _ in 0..2 {
        c.unassign("eni-1", "vpc-1", &[ip(2)], &|| true)
            .await
            .unwrap();
    }
    let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let waiting = {
        let (c, open) = (Arc::clone(&c), Arc::clone(&open));
        tokio::spawn(async move {
            let may_send = move || open.load(std::sync::atomic::Ordering::SeqCst);
            c.unassign("eni-1", "vpc-1", &[ip(3)], &may_send).await
        })
    };
    // The call is now waiting for its token; the operator pauses.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.requests().len(), 2, "still waiting for its token");
    open.store(false, std::sync::atomic::Ordering::SeqCst);
    let err = waiting.await.unwrap().unwrap_err();
    assert_eq!(err.class, ErrorClass::NotSent);
    assert_eq!(server.requests().len(), 2, "nothing sent after the pause");
}

mod claims;
