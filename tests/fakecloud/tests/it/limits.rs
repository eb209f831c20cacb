//! Fleet behaviour over real HTTP: account-wide rate limits answered as the API answers
//! them, tasks that end by time (not by being polled).

use std::time::Duration;

use enisync_fakecloud::{LimitScope, LimitWindow, RateLimits, Scenario};
use serde_json::{Value, json};

use crate::common::*;

fn task_poll(id: &str) -> Value {
    json!({ "TaskId": id })
}

#[tokio::test]
async fn over_the_limit_answers_request_limit_exceeded_like_the_api() {
    let env = env().await;
    env.cloud.set_rate_limits(Some(RateLimits::documented()));
    // DescribeVpcTaskResult is documented at 20/s: 40 calls at once cross it (a fixed
    // second; if the burst straddles a second boundary, at most 40 - 20 = 20 more pass).
    let mut refused = Vec::new();
    for _ in 0..40 {
        let (status, text) = env
            .send_v3(&V3::new("DescribeVpcTaskResult", &task_poll("none")))
            .await;
        assert_eq!(status, 200, "the API answers limits with HTTP 200: {text}");
        let value: Value = serde_json::from_str(&text).expect("JSON");
        let response = &value["Response"];
        if response["Error"]["Code"] == "RequestLimitExceeded" {
            refused.push(response.clone());
        }
    }
    assert!(
        (1..=20).contains(&refused.len()),
        "{} of 40 refused",
        refused.len()
    );
    let first = &refused[0];
    assert!(first["RequestId"].is_string(), "{first}");
    let message = first["Error"]["Message"].as_str().expect("message");
    assert!(
        message.contains("exceeds the frequency limit `20` for a second"),
        "{message}"
    );
    // enisync's client takes the code for "retry later", as the SDKs do.
    assert_eq!(
        enisync::cloud::classify::classify(enisync::cloud::classify::TencentCode::Code(
            "RequestLimitExceeded"
        )),
        enisync::cloud::ErrorClass::RetryLater
    );
    let log = env.cloud.calls_of("DescribeVpcTaskResult");
    assert_eq!(
        log.iter()
            .filter(|c| c.answer == "RequestLimitExceeded")
            .count(),
        refused.len()
    );
    assert_eq!(
        env.cloud.limit_refusals().get("DescribeVpcTaskResult"),
        Some(&(refused.len() as u64))
    );
    // Another action has its own budget.
    let other = env
        .v3(
            "DescribeNetworkInterfaces",
            json!({"NetworkInterfaceIds": [ENI_A]}),
        )
        .await;
    assert_eq!(code(&other), "Success");
}

#[tokio::test]
async fn scope_window_and_code_are_configurable() {
    let env = env().await;
    env.cloud.set_rate_limits(Some(
        RateLimits::documented()
            .window(LimitWindow::TokenBucket)
            .code("LimitExceeded.ActionLimited")
            .limit("DescribeVpcTaskResult", Some(3)),
    ));
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(code(&env.v3("DescribeVpcTaskResult", task_poll("none")).await).to_string());
    }
    let limited = codes
        .iter()
        .filter(|c| *c == "LimitExceeded.ActionLimited")
        .count();
    assert!((2..=3).contains(&limited), "{codes:?}");
    // A bucket refills: a third of a second later one token (3/s) is back.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_ne!(
        code(&env.v3("DescribeVpcTaskResult", task_poll("none")).await),
        "LimitExceeded.ActionLimited"
    );

    // Per source address: the test client is one address, so its own budget is spent,
    // whatever other addresses do.
    env.cloud.set_rate_limits(Some(
        RateLimits::documented()
            .scope(LimitScope::SourceIp)
            .limit("DescribeVpcTaskResult", Some(1)),
    ));
    let a = code(&env.v3("DescribeVpcTaskResult", task_poll("none")).await).to_string();
    let b = code(&env.v3("DescribeVpcTaskResult", task_poll("none")).await).to_string();
    assert!(
        a == "RequestLimitExceeded" || b == "RequestLimitExceeded",
        "{a} {b}"
    );
}

#[tokio::test]
async fn a_throttle_refuses_hard_for_its_period() {
    let env = env().await;
    env.cloud.set_rate_limits(Some(RateLimits::documented()));
    env.cloud.throttle(0.0, Duration::from_millis(300));
    let r = env
        .v3(
            "DescribeNetworkInterfaces",
            json!({"NetworkInterfaceIds": [ENI_A]}),
        )
        .await;
    assert_eq!(code(&r), "RequestLimitExceeded");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let r = env
        .v3(
            "DescribeNetworkInterfaces",
            json!({"NetworkInterfaceIds": [ENI_A]}),
        )
        .await;
    assert_eq!(code(&r), "Success");
}

#[tokio::test]
async fn tasks_end_by_time_without_being_polled() {
    let env = env().await;
    env.cloud.set_task_duration(Duration::from_millis(300));
    let started = env.cloud.now_unix() * 1000;
    let r = env
        .v3(
            "UnassignPrivateIpAddresses",
            json!({"NetworkInterfaceId": ENI_A, "PrivateIpAddresses": [{"PrivateIpAddress": "10.0.1.11"}]}),
        )
        .await;
    let id = r["RequestId"].as_str().expect("id").to_string();
    // Nobody asks for 1.5 s: no request reaches the fake meanwhile.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ended = env.cloud.task_ended_ms(&id).expect("ended by itself");
    let call_ms = env.cloud.calls_of("UnassignPrivateIpAddresses")[0].at_ms;
    let took = ended - call_ms;
    assert!(
        (300..700).contains(&took),
        "ended {took} ms after the call (started ~{started}), not when next looked at"
    );
}

#[test]
fn a_scenario_names_its_limits() {
    let s = Scenario::from_json(
        r#"{"rate_limits": {"scope": "source_ip", "window": "token_bucket",
             "code": "RequestLimitExceeded.UinLimitExceeded"}}"#,
    )
    .expect("parses");
    let limits = s.rate_limits.expect("limits");
    assert_eq!(limits.scope, LimitScope::SourceIp);
    assert_eq!(limits.window, LimitWindow::TokenBucket);
    assert_eq!(limits.per_second.get("DescribeVpcTaskResult"), Some(&20));
    assert_eq!(limits.per_second.get("MigratePrivateIpAddress"), Some(&50));
    assert!(Scenario::from_json(r#"{"rate_limits": {"windw": "x"}}"#).is_err());
}
