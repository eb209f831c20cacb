//! Fault injection: each kind, and that counts run down.

use std::time::Duration;

use enisync::cloud::sign::LegacySignMethod;
use enisync_fakecloud::{Fault, Surface};
use serde_json::json;

use crate::common::*;

fn describe() -> V3 {
    V3::new("DescribeNetworkInterfaces", &json!({}))
}

fn unassign_11() -> V3 {
    V3::new(
        "UnassignPrivateIpAddresses",
        &json!({"NetworkInterfaceId": ENI_A, "PrivateIpAddresses": [{"PrivateIpAddress": "10.0.1.11"}]}),
    )
}

#[tokio::test]
async fn throttling_counts_down() {
    let env = env().await;
    env.cloud
        .inject("DescribeNetworkInterfaces", Fault::Throttle, 2);
    env.cloud
        .inject("UnassignPrivateIpAddresses", Fault::ActionLimited, 1);
    assert_eq!(env.cloud.faults().len(), 2);

    // Other actions are untouched.
    let r = env
        .v3("DescribeVpcTaskResult", json!({"TaskId": "x"}))
        .await;
    assert_eq!(code(&r), "ResourceNotFound");

    assert_eq!(code(&env.v3_req(&describe()).await), "RequestLimitExceeded");
    assert_eq!(env.cloud.faults()[0].remaining, 1);
    assert_eq!(code(&env.v3_req(&describe()).await), "RequestLimitExceeded");
    assert_eq!(code(&env.v3_req(&describe()).await), "Success");

    assert_eq!(
        code(&env.v3_req(&unassign_11()).await),
        "LimitExceeded.ActionLimited"
    );
    assert!(
        env.cloud.tasks().is_empty(),
        "a throttled call does nothing"
    );
    assert_eq!(code(&env.v3_req(&unassign_11()).await), "Success");
    assert!(env.cloud.faults().is_empty());

    // An unauthenticated request does not consume a fault.
    env.cloud.inject("*", Fault::Throttle, 1);
    let mut bad = describe();
    bad.creds.key = "wrong".into();
    assert_eq!(
        code(&env.v3_req(&bad).await),
        "AuthFailure.SignatureFailure"
    );
    assert_eq!(env.cloud.faults()[0].remaining, 1);
}

#[tokio::test]
async fn http_errors_malformed_bodies_and_arbitrary_codes() {
    let env = env().await;
    env.cloud
        .inject("DescribeNetworkInterfaces", Fault::Http { status: 503 }, 1);
    env.cloud
        .inject("DescribeNetworkInterfaces", Fault::Malformed, 1);
    env.cloud.inject(
        "DescribeNetworkInterfaces",
        Fault::error("UnauthorizedOperation"),
        1,
    );
    env.cloud.inject(
        "DescribeNetworkInterfaces",
        Fault::error("AuthFailure.TokenFailure"),
        1,
    );

    let (status, _) = env.send_v3(&describe()).await;
    assert_eq!(status, 503);
    let (status, text) = env.send_v3(&describe()).await;
    assert_eq!(status, 200);
    assert!(
        serde_json::from_str::<serde_json::Value>(&text).is_err(),
        "{text}"
    );
    assert_eq!(
        code(&env.v3_req(&describe()).await),
        "UnauthorizedOperation"
    );
    assert_eq!(
        code(&env.v3_req(&describe()).await),
        "AuthFailure.TokenFailure"
    );
    assert_eq!(code(&env.v3_req(&describe()).await), "Success");

    let answers: Vec<String> = env.cloud.calls().iter().map(|c| c.answer.clone()).collect();
    assert_eq!(
        answers,
        [
            "HTTP 503",
            "Malformed",
            "UnauthorizedOperation",
            "AuthFailure.TokenFailure",
            "Success"
        ]
    );

    // The legacy surface gets the same code as codeDesc, with a legacy number.
    env.cloud.inject_on(
        Surface::Legacy,
        "DescribeVpcTaskResult",
        Fault::error("UnsupportedOperation.InvalidState"),
        1,
    );
    let r = env
        .legacy(
            "GET",
            params(&[("Action", "DescribeVpcTaskResult"), ("taskId", "1")]),
            &Creds::long_term(),
            LegacySignMethod::HmacSha256,
        )
        .await;
    assert_eq!(r["codeDesc"], "UnsupportedOperation.InvalidState");
    assert_eq!(r["code"], 5100);
}

#[tokio::test]
async fn timeouts_and_late_answers() {
    let env = env().await;
    let impatient = enisync::cloud::http_client_builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");

    // A timeout does nothing: the client gives up and the IP stays.
    env.cloud.inject(
        "UnassignPrivateIpAddresses",
        Fault::timeout(Duration::from_secs(2)),
        1,
    );
    let host = env.host();
    let sig = enisync::cloud::sign::tc3_sign(
        &enisync::cloud::sign::Tc3Request {
            method: "POST",
            host: &host,
            query: "",
            content_type: "application/json",
            payload: unassign_11().body.as_bytes(),
            service: "vpc",
            timestamp: unassign_11().timestamp,
        },
        KEY,
    );
    let sent = impatient
        .post(env.server.v3_endpoint())
        .header("Content-Type", "application/json")
        .header("Authorization", sig.authorization(ID, "vpc"))
        .header("X-TC-Action", "UnassignPrivateIpAddresses")
        .header("X-TC-Version", "2017-03-12")
        .header("X-TC-Timestamp", unassign_11().timestamp.to_string())
        .header("X-TC-Region", REGION)
        .body(unassign_11().body)
        .send()
        .await;
    assert!(sent.is_err_and(|e| e.is_timeout()));
    assert!(env.cloud.tasks().is_empty());
    assert_eq!(
        env.cloud.calls_of("UnassignPrivateIpAddresses")[0].answer,
        "Timeout"
    );

    // A late answer: the call took effect although the client never heard of it.
    env.cloud.set_task_duration(Duration::from_secs(2));
    env.cloud.inject(
        "UnassignPrivateIpAddresses",
        Fault::late_answer(Duration::from_secs(2)),
        1,
    );
    let sent = tokio::time::timeout(Duration::from_millis(300), env.send_v3(&unassign_11())).await;
    assert!(sent.is_err(), "the answer should be late");
    assert_eq!(env.cloud.tasks().len(), 1);
    // The retry finds the ENI busy.
    assert_eq!(
        code(&env.v3_req(&unassign_11()).await),
        "UnsupportedOperation.MutexOperationTaskRunning"
    );
    // Once the task is done, a retry learns the IP is gone.
    env.cloud.finish_running_tasks();
    assert_eq!(code(&env.v3_req(&unassign_11()).await), "ResourceNotFound");
}

#[tokio::test]
async fn metadata_faults() {
    let env = env().await;
    env.cloud
        .set_cam_role(INSTANCE, Some("role"))
        .expect("role");
    env.cloud.inject_on(
        Surface::Metadata,
        "cam/security-credentials/",
        Fault::Http { status: 500 },
        2,
    );
    assert_eq!(env.meta("instance-id", None).await.0, 200);
    assert_eq!(env.meta("cam/security-credentials/", None).await.0, 500);
    assert_eq!(env.meta("cam/security-credentials/role", None).await.0, 500);
    assert_eq!(env.meta("cam/security-credentials/role", None).await.0, 200);
    assert_eq!(env.cloud.metadata_credential_fetches(), 1);
    // API faults do not touch metadata.
    env.cloud.inject("*", Fault::Throttle, 1);
    assert_eq!(env.meta("instance-id", None).await.0, 200);
    assert_eq!(env.cloud.faults().len(), 1);
}

#[test]
fn serves_from_its_own_thread_without_a_runtime() {
    let cloud = standard_cloud();
    let server = cloud
        .serve_in_thread(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .expect("serve");
    let url = format!("{}instance-id", server.metadata_endpoint());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let body = runtime.block_on(async {
        reqwest::get(url)
            .await
            .expect("get")
            .text()
            .await
            .expect("text")
    });
    assert_eq!(body, INSTANCE);
    drop(server);
}
