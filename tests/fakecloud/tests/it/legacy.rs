//! The legacy API: signatures (both methods, GET and POST), unassign and its task.

use std::time::{Duration, Instant};

use enisync::cloud::sign::LegacySignMethod;
use enisync_fakecloud::Surface;
use serde_json::Value;

use crate::common::*;

fn unassign(vpc: &str, eni: &str, ips: &[&str]) -> std::collections::BTreeMap<String, String> {
    let mut p = params(&[
        ("Action", "UnassignPrivateIpAddresses"),
        ("vpcId", vpc),
        ("networkInterfaceId", eni),
    ]);
    for (i, ip) in ips.iter().enumerate() {
        p.insert(format!("privateIpAddress.{i}"), ip.to_string());
    }
    p
}

async fn wait_legacy_task(env: &Env, task: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = env
            .legacy(
                "GET",
                params(&[
                    ("Action", "DescribeVpcTaskResult"),
                    ("taskId", &task.to_string()),
                ]),
                &Creds::long_term(),
                LegacySignMethod::HmacSha256,
            )
            .await;
        if r["data"]["status"] != 2 || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test]
async fn unassign_by_get_and_post_with_both_methods() {
    let env = env().await;
    let creds = Creds::long_term();
    let cases = [
        ("GET", LegacySignMethod::HmacSha256, "10.0.1.11"),
        ("POST", LegacySignMethod::HmacSha256, "10.0.1.12"),
        ("GET", LegacySignMethod::HmacSha1, "10.0.1.13"),
        ("POST", LegacySignMethod::HmacSha1, "10.0.1.14"),
    ];
    for (method, sign, target) in cases {
        let r = env
            .legacy(method, unassign(VPC, ENI_A, &[target]), &creds, sign)
            .await;
        assert_eq!(r["code"], 0, "{method} {sign:?}: {r}");
        assert_eq!(r["codeDesc"], "Success");
        let task = r["data"]["taskId"].as_i64().expect("numeric taskId");
        let running = wait_legacy_task(&env, task).await;
        assert_eq!(running["code"], 0, "{running}");
        assert_eq!(running["data"]["status"], 0, "{running}");
        assert_eq!(env.cloud.owner_of(ip(target)), None);
    }
    assert_eq!(env.cloud.ips_of(ENI_A), [ip("10.0.1.10"), ip("10.0.1.15")]);
    let calls = env.cloud.calls_of("UnassignPrivateIpAddresses");
    assert_eq!(calls.len(), 4);
    assert!(
        calls
            .iter()
            .all(|c| c.surface == Surface::Legacy && c.answer == "Success")
    );
    assert_eq!(calls[0].ips, ["10.0.1.11"]);
    assert!(calls[0].params.get("Signature").is_none());
}

#[tokio::test]
async fn task_status_is_running_then_done() {
    let env = env().await;
    env.cloud.set_task_duration(Duration::from_millis(300));
    let r = env
        .legacy(
            "GET",
            unassign(VPC, ENI_A, &["10.0.1.11", "10.0.1.12"]),
            &Creds::long_term(),
            LegacySignMethod::HmacSha256,
        )
        .await;
    let task = r["data"]["taskId"].as_i64().expect("taskId");
    let now = env
        .legacy(
            "GET",
            params(&[
                ("Action", "DescribeVpcTaskResult"),
                ("taskId", &task.to_string()),
            ]),
            &Creds::long_term(),
            LegacySignMethod::HmacSha256,
        )
        .await;
    assert_eq!(now["data"]["status"], 2, "{now}");
    // The mutex holds on the legacy surface too.
    let busy = env
        .legacy(
            "GET",
            unassign(VPC, ENI_A, &["10.0.1.13"]),
            &Creds::long_term(),
            LegacySignMethod::HmacSha256,
        )
        .await;
    assert_eq!(
        busy["codeDesc"],
        "UnsupportedOperation.MutexOperationTaskRunning"
    );
    assert_ne!(busy["code"], 0);
    assert_eq!(wait_legacy_task(&env, task).await["data"]["status"], 0);

    env.cloud.fail_next_task("UnassignPrivateIpAddresses");
    let r = env
        .legacy(
            "GET",
            unassign(VPC, ENI_A, &["10.0.1.13"]),
            &Creds::long_term(),
            LegacySignMethod::HmacSha256,
        )
        .await;
    let task = r["data"]["taskId"].as_i64().expect("taskId");
    assert_eq!(wait_legacy_task(&env, task).await["data"]["status"], 1);
    assert_eq!(env.cloud.owner_of(ip("10.0.1.13")).as_deref(), Some(ENI_A));
}

#[tokio::test]
async fn business_errors() {
    let env = env().await;
    let creds = Creds::long_term();
    let sha = LegacySignMethod::HmacSha256;
    let r = env
        .legacy("GET", unassign(VPC, ENI_A, &["10.0.1.10"]), &creds, sha)
        .await;
    assert_eq!(r["codeDesc"], "InvalidPrivateip.IsPrimary", "{r}");
    assert_eq!(r["code"], 5100);
    let r = env
        .legacy(
            "GET",
            unassign("vpc-nothere", ENI_A, &["10.0.1.11"]),
            &creds,
            sha,
        )
        .await;
    assert_eq!(r["codeDesc"], "InvalidVpc.NotFound");
    assert_eq!(r["code"], 5000);
    let r = env
        .legacy(
            "GET",
            unassign(VPC, "eni-nothere", &["10.0.1.11"]),
            &creds,
            sha,
        )
        .await;
    assert_eq!(r["codeDesc"], "InvalidNetworkInterface.NotFound");
    let r = env
        .legacy("GET", unassign(VPC, ENI_A, &["10.0.1.20"]), &creds, sha)
        .await;
    assert_eq!(r["codeDesc"], "InvalidPrivateip.NotFound");
    let eleven: Vec<String> = (11..=21).map(|i| format!("10.0.1.{i}")).collect();
    let eleven: Vec<&str> = eleven.iter().map(String::as_str).collect();
    let r = env
        .legacy("GET", unassign(VPC, ENI_A, &eleven), &creds, sha)
        .await;
    assert_eq!(r["codeDesc"], "InvalidParameterValue.LimitExceeded");
    assert_eq!(r["code"], 4000);
    let r = env
        .legacy(
            "GET",
            params(&[("Action", "DescribeVpcTaskResult"), ("taskId", "x")]),
            &creds,
            sha,
        )
        .await;
    assert_eq!(r["codeDesc"], "InvalidParameter");
    let r = env
        .legacy("GET", params(&[("Action", "DeleteVpc")]), &creds, sha)
        .await;
    assert_eq!(r["codeDesc"], "InvalidAction");
    assert!(env.cloud.tasks().is_empty());
}

#[tokio::test]
async fn legacy_auth_failures_have_legacy_codes() {
    let env = env().await;
    let sha = LegacySignMethod::HmacSha256;
    let body = || params(&[("Action", "DescribeVpcTaskResult"), ("taskId", "1")]);

    let mut wrong = Creds::long_term();
    wrong.key = "wrong".to_string();
    let r = env.legacy("GET", body(), &wrong, sha).await;
    assert_eq!(
        (r["code"].as_i64(), r["codeDesc"].as_str()),
        (Some(4100), Some("AuthFailure.SignatureFailure"))
    );

    let mut unknown = Creds::long_term();
    unknown.id = "AKIDnobody".to_string();
    let r = env.legacy("GET", body(), &unknown, sha).await;
    assert_eq!(r["code"], 4104);

    let mut old = body();
    old.insert("Timestamp".into(), (wall_now() - 400).to_string());
    let r = env.legacy("POST", old, &Creds::long_term(), sha).await;
    assert_eq!(
        (r["code"].as_i64(), r["codeDesc"].as_str()),
        (Some(4500), Some("AuthFailure.SignatureExpire"))
    );

    env.cloud
        .add_temporary_key("AKIDtemp", "tempkey", "tok", Duration::from_secs(60));
    let no_token = Creds {
        id: "AKIDtemp".into(),
        key: "tempkey".into(),
        token: None,
    };
    let r = env.legacy("GET", body(), &no_token, sha).await;
    assert_eq!(
        (r["code"].as_i64(), r["codeDesc"].as_str()),
        (Some(4105), Some("AuthFailure.TokenFailure"))
    );
    let with_token = Creds {
        token: Some("tok".into()),
        ..no_token
    };
    let r = env.legacy("GET", body(), &with_token, sha).await;
    // Authenticated: now it is only the task that does not exist.
    assert_eq!(r["codeDesc"], "ResourceNotFound", "{r}");

    // A signature over SHA-1 claimed as SHA-256 fails.
    let mut mixed = body();
    mixed.insert("SignatureMethod".into(), "HmacSHA256".into());
    let r = env
        .legacy(
            "GET",
            mixed,
            &Creds::long_term(),
            LegacySignMethod::HmacSha1,
        )
        .await;
    assert_eq!(r["code"], 4100);
}
