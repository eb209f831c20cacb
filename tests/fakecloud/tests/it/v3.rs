//! API 3.0: signature verification, ENI listing, the task model.

use std::time::Duration;

use enisync_fakecloud::{Surface, ip_state};
use serde_json::json;

use crate::common::*;

fn unassign_body(eni: &str, ips: &[&str]) -> serde_json::Value {
    json!({
        "NetworkInterfaceId": eni,
        "PrivateIpAddresses": ips.iter().map(|ip| json!({"PrivateIpAddress": ip})).collect::<Vec<_>>(),
    })
}

#[tokio::test]
async fn a_correctly_signed_request_is_accepted() {
    let env = env().await;
    let r = env
        .v3(
            "DescribeNetworkInterfaces",
            json!({"Filters": [{"Name": "attachment.instance-id", "Values": [INSTANCE]}], "Limit": 100}),
        )
        .await;
    assert_eq!(code(&r), "Success", "{r}");
    assert_eq!(r["TotalCount"], 3);
    let set = r["NetworkInterfaceSet"].as_array().expect("set");
    let a = set
        .iter()
        .find(|e| e["NetworkInterfaceId"] == ENI_A)
        .expect("eni a listed");
    assert_eq!(a["MacAddress"], "52:54:00:12:34:56".to_uppercase());
    assert_eq!(a["VpcId"], VPC);
    assert_eq!(a["SubnetId"], "subnet-a");
    assert_eq!(a["Primary"], false);
    assert_eq!(a["State"], "AVAILABLE");
    assert_eq!(a["Attachment"]["InstanceId"], INSTANCE);
    assert_eq!(a["Attachment"]["DeviceIndex"], 1);
    let ips = a["PrivateIpAddressSet"].as_array().expect("ips");
    assert_eq!(ips.len(), 6);
    assert_eq!(ips[0]["PrivateIpAddress"], "10.0.1.10");
    assert_eq!(ips[0]["Primary"], true);
    assert_eq!(ips[1]["Primary"], false);
    assert_eq!(ips[1]["State"], "AVAILABLE");
    assert_eq!(ips[1]["AddressId"], "");
    assert_eq!(ips[1]["PublicIpAddress"], "");
    let p = set
        .iter()
        .find(|e| e["NetworkInterfaceId"] == ENI_P)
        .expect("primary eni listed");
    assert_eq!(p["Primary"], true);

    let calls = env.cloud.calls_of("DescribeNetworkInterfaces");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].surface, Surface::V3);
    assert_eq!(calls[0].answer, "Success");
    assert_eq!(calls[0].secret_id.as_deref(), Some(ID));
    assert_eq!(calls[0].source.ip().to_string(), "127.0.0.1");
    assert_eq!(calls[0].params["Limit"], 100);
}

#[tokio::test]
async fn signatures_are_really_checked() {
    let env = env().await;
    let body = json!({"Limit": 10});

    let mut wrong_key = V3::new("DescribeNetworkInterfaces", &body);
    wrong_key.creds.key = "not-the-key".to_string();
    assert_eq!(
        code(&env.v3_req(&wrong_key).await),
        "AuthFailure.SignatureFailure"
    );

    let mut unknown_id = V3::new("DescribeNetworkInterfaces", &body);
    unknown_id.creds.id = "AKIDunknown".to_string();
    assert_eq!(
        code(&env.v3_req(&unknown_id).await),
        "AuthFailure.SecretIdNotFound"
    );

    let mut tampered = V3::new("DescribeNetworkInterfaces", &body);
    tampered.tamper_body = Some(json!({"Limit": 11}).to_string());
    assert_eq!(
        code(&env.v3_req(&tampered).await),
        "AuthFailure.SignatureFailure"
    );

    let mut old = V3::new("DescribeNetworkInterfaces", &body);
    old.timestamp -= 400;
    assert_eq!(code(&env.v3_req(&old).await), "AuthFailure.SignatureExpire");
    let mut almost = V3::new("DescribeNetworkInterfaces", &body);
    almost.timestamp -= 250;
    assert_eq!(code(&env.v3_req(&almost).await), "Success");

    // The fake's clock runs ahead: a correct client is now out of the window.
    env.cloud.set_clock_offset_secs(600);
    let fresh = V3::new("DescribeNetworkInterfaces", &body);
    assert_eq!(
        code(&env.v3_req(&fresh).await),
        "AuthFailure.SignatureExpire"
    );
    env.cloud.set_clock_offset_secs(0);
    assert_eq!(code(&env.v3_req(&fresh).await), "Success");

    // No request that failed authentication reached an action.
    let answers: Vec<String> = env.cloud.calls().iter().map(|c| c.answer.clone()).collect();
    assert_eq!(
        answers,
        [
            "AuthFailure.SignatureFailure",
            "AuthFailure.SecretIdNotFound",
            "AuthFailure.SignatureFailure",
            "AuthFailure.SignatureExpire",
            "Success",
            "AuthFailure.SignatureExpire",
            "Success",
        ]
    );
}

#[tokio::test]
async fn temporary_keys_need_their_token() {
    let env = env().await;
    env.cloud
        .add_temporary_key("AKIDtemp", "tempkey", "tok-1", Duration::from_secs(60));
    env.cloud
        .add_temporary_key("AKIDgone", "gonekey", "tok-2", Duration::ZERO);
    let body = json!({});
    let temp = |id: &str, key: &str, token: Option<&str>| {
        let mut req = V3::new("DescribeNetworkInterfaces", &body);
        req.creds = Creds {
            id: id.to_string(),
            key: key.to_string(),
            token: token.map(str::to_string),
        };
        req
    };
    assert_eq!(
        code(&env.v3_req(&temp("AKIDtemp", "tempkey", None)).await),
        "AuthFailure.TokenFailure"
    );
    assert_eq!(
        code(
            &env.v3_req(&temp("AKIDtemp", "tempkey", Some("tok-x")))
                .await
        ),
        "AuthFailure.TokenFailure"
    );
    assert_eq!(
        code(
            &env.v3_req(&temp("AKIDtemp", "tempkey", Some("tok-1")))
                .await
        ),
        "Success"
    );
    assert_eq!(
        code(
            &env.v3_req(&temp("AKIDgone", "gonekey", Some("tok-2")))
                .await
        ),
        "AuthFailure.TokenFailure"
    );
}

#[tokio::test]
async fn malformed_requests_get_error_answers() {
    let env = env().await;
    // Unsigned garbage.
    let resp = env
        .http
        .post(env.server.v3_endpoint())
        .body("not json at all")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(
        v["Response"]["Error"]["Code"],
        "AuthFailure.InvalidAuthorization"
    );

    // An absurd timestamp is refused, not a crash.
    let resp = env
        .http
        .post(env.server.v3_endpoint())
        .header("Content-Type", "application/json")
        .header(
            "Authorization",
            format!("TC3-HMAC-SHA256 Credential={ID}/2023-01-01/vpc/tc3_request, SignedHeaders=content-type;host, Signature=00"),
        )
        .header("X-TC-Timestamp", i64::MIN.to_string())
        .header("X-TC-Action", "DescribeNetworkInterfaces")
        .body("{}")
        .send()
        .await
        .expect("send");
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(
        v["Response"]["Error"]["Code"],
        "AuthFailure.SignatureExpire"
    );

    // Signed, but not JSON.
    let mut req = V3::new("DescribeNetworkInterfaces", &json!({}));
    req.body = "{not json".to_string();
    assert_eq!(code(&env.v3_req(&req).await), "InvalidParameter");

    let r = env
        .v3("DescribeNetworkInterfaces", json!({"Filters": "x"}))
        .await;
    assert_eq!(code(&r), "InvalidParameter.FilterNotDict");
    let r = env
        .v3(
            "DescribeNetworkInterfaces",
            json!({"Filters": [{"Name": "bogus", "Values": []}]}),
        )
        .await;
    assert_eq!(code(&r), "InvalidParameter.FilterInvalidKey");
    let r = env
        .v3("DescribeNetworkInterfaces", json!({"Limit": "ten"}))
        .await;
    assert_eq!(code(&r), "InvalidParameter");
    let r = env
        .v3(
            "UnassignPrivateIpAddresses",
            json!({"PrivateIpAddresses": 7}),
        )
        .await;
    assert_eq!(code(&r), "MissingParameter");
    let r = env
        .v3("UnassignPrivateIpAddresses", json!({"NetworkInterfaceId": ENI_A, "PrivateIpAddresses": [{"PrivateIpAddress": "10.0.1.300"}]}))
        .await;
    assert_eq!(code(&r), "InvalidParameterValue.Malformed");
    let r = env.v3("RebootInstances", json!({})).await;
    assert_eq!(code(&r), "InvalidAction");

    let mut other_region = V3::new("DescribeNetworkInterfaces", &json!({}));
    other_region.region = "ap-nowhere".to_string();
    assert_eq!(code(&env.v3_req(&other_region).await), "UnsupportedRegion");

    // Unknown paths are 404, and the server is still fine.
    let resp = env
        .http
        .get(format!("{}/nothing/here", env.server.base_url()))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 404);
    let r = env.v3("DescribeNetworkInterfaces", json!({})).await;
    assert_eq!(code(&r), "Success");
}

#[tokio::test]
async fn describe_filters_and_pages() {
    let env = env().await;
    let ids = |r: &serde_json::Value| -> Vec<String> {
        r["NetworkInterfaceSet"]
            .as_array()
            .expect("set")
            .iter()
            .map(|e| e["NetworkInterfaceId"].as_str().expect("id").to_string())
            .collect()
    };
    let r = env
        .v3(
            "DescribeNetworkInterfaces",
            json!({"Filters": [{"Name": "network-interface-id", "Values": [ENI_B]}]}),
        )
        .await;
    assert_eq!(ids(&r), [ENI_B]);
    let r = env
        .v3(
            "DescribeNetworkInterfaces",
            json!({"Filters": [{"Name": "address-ip", "Values": ["10.0.1.13"]}, {"Name": "ip-exact-match", "Values": ["true"]}]}),
        )
        .await;
    assert_eq!(ids(&r), [ENI_A]);
    let r = env
        .v3(
            "DescribeNetworkInterfaces",
            json!({"Filters": [{"Name": "attachment.instance-id", "Values": ["ins-other"]}]}),
        )
        .await;
    assert_eq!(r["TotalCount"], 0);

    let first = env
        .v3("DescribeNetworkInterfaces", json!({"Limit": 2}))
        .await;
    let second = env
        .v3(
            "DescribeNetworkInterfaces",
            json!({"Limit": 2, "Offset": 2}),
        )
        .await;
    assert_eq!(first["TotalCount"], 3);
    assert_eq!(second["TotalCount"], 3);
    let mut all = ids(&first);
    all.extend(ids(&second));
    all.sort();
    assert_eq!(all, [ENI_A, ENI_B, ENI_P]);

    let r = env
        .v3("DescribeNetworkInterfaces", json!({"NetworkInterfaceIds": [ENI_A], "Filters": [{"Name": "vpc-id", "Values": [VPC]}]}))
        .await;
    assert_eq!(code(&r), "InvalidParameter.Coexist");
    let r = env
        .v3("DescribeNetworkInterfaces", json!({"Limit": 101}))
        .await;
    assert_eq!(code(&r), "InvalidParameterValue.Range");
}

#[tokio::test]
async fn unassign_runs_as_a_task_and_removes_ips_on_success() {
    let env = env().await;
    env.cloud.set_task_duration(Duration::from_millis(300));
    env.cloud
        .bind_eip(ip("10.0.1.12"), "eip-0001", Some(ip("203.0.113.12")))
        .expect("bind");
    let r = env
        .v3(
            "UnassignPrivateIpAddresses",
            unassign_body(ENI_A, &["10.0.1.11", "10.0.1.12"]),
        )
        .await;
    assert_eq!(code(&r), "Success", "{r}");
    let task = r["RequestId"].as_str().expect("id").to_string();

    let running = env
        .v3("DescribeVpcTaskResult", json!({"TaskId": task}))
        .await;
    assert_eq!(running["Status"], "RUNNING");
    let eni = env.cloud.eni(ENI_A).expect("eni");
    assert_eq!(
        eni.ip(ip("10.0.1.11")).expect("still there").state,
        ip_state::DELETING
    );
    assert_eq!(env.cloud.owner_of(ip("10.0.1.12")).as_deref(), Some(ENI_A));

    let done = env.wait_v3_task(&task).await;
    assert_eq!(done["Status"], "SUCCESS");
    assert_eq!(done["Output"], "SUCCESS");
    assert_eq!(
        env.cloud.ips_of(ENI_A),
        [
            ip("10.0.1.10"),
            ip("10.0.1.13"),
            ip("10.0.1.14"),
            ip("10.0.1.15")
        ]
    );
    assert_eq!(env.cloud.owner_of(ip("10.0.1.12")), None);

    let calls = env.cloud.calls_of("UnassignPrivateIpAddresses");
    assert_eq!(calls[0].eni.as_deref(), Some(ENI_A));
    assert_eq!(calls[0].ips, ["10.0.1.11", "10.0.1.12"]);
    assert_eq!(calls[0].task.as_deref(), Some(task.as_str()));
    let polls = env.cloud.calls_of("DescribeVpcTaskResult");
    assert_eq!(polls[0].task_status.as_deref(), Some("RUNNING"));
    assert_eq!(
        polls.last().and_then(|c| c.task_status.as_deref()),
        Some("SUCCESS")
    );

    let r = env
        .v3("DescribeVpcTaskResult", json!({"TaskId": "no-such-task"}))
        .await;
    assert_eq!(code(&r), "ResourceNotFound");
}

#[tokio::test]
async fn unassign_refuses_primary_foreign_and_too_many() {
    let env = env().await;
    let r = env
        .v3(
            "UnassignPrivateIpAddresses",
            unassign_body(ENI_A, &["10.0.1.10"]),
        )
        .await;
    assert_eq!(code(&r), "UnsupportedOperation.PrimaryIp");
    let r = env
        .v3(
            "UnassignPrivateIpAddresses",
            unassign_body(ENI_A, &["10.0.1.20"]),
        )
        .await;
    assert_eq!(code(&r), "ResourceNotFound");
    let r = env
        .v3(
            "UnassignPrivateIpAddresses",
            unassign_body("eni-nothere", &["10.0.1.11"]),
        )
        .await;
    assert_eq!(code(&r), "ResourceNotFound");
    let eleven: Vec<String> = (11..=21).map(|i| format!("10.0.1.{i}")).collect();
    let eleven: Vec<&str> = eleven.iter().map(String::as_str).collect();
    let r = env
        .v3("UnassignPrivateIpAddresses", unassign_body(ENI_A, &eleven))
        .await;
    assert_eq!(code(&r), "InvalidParameterValue.LimitExceeded");
    let r = env
        .v3(
            "UnassignPrivateIpAddresses",
            unassign_body(ENI_A, &["10.0.1.11", "10.0.1.11"]),
        )
        .await;
    assert_eq!(code(&r), "InvalidParameterValue.DuplicatePara");

    env.cloud
        .set_ip_state(ip("10.0.1.13"), ip_state::PENDING)
        .expect("state");
    let r = env
        .v3(
            "UnassignPrivateIpAddresses",
            unassign_body(ENI_A, &["10.0.1.13"]),
        )
        .await;
    assert_eq!(code(&r), "UnsupportedOperation.InvalidState");
    env.cloud.set_eni_state(ENI_A, "DETACHING").expect("state");
    let r = env
        .v3(
            "UnassignPrivateIpAddresses",
            unassign_body(ENI_A, &["10.0.1.14"]),
        )
        .await;
    assert_eq!(code(&r), "UnsupportedOperation.InvalidState");

    assert!(env.cloud.tasks().is_empty());
    assert_eq!(env.cloud.ips_of(ENI_A).len(), 6);
}

#[tokio::test]
async fn a_second_mutation_during_a_task_is_refused() {
    let env = env().await;
    env.cloud.set_task_duration(Duration::from_millis(400));
    let first = env
        .v3(
            "UnassignPrivateIpAddresses",
            unassign_body(ENI_A, &["10.0.1.11"]),
        )
        .await;
    assert_eq!(code(&first), "Success");
    let second = env
        .v3(
            "UnassignPrivateIpAddresses",
            unassign_body(ENI_A, &["10.0.1.12"]),
        )
        .await;
    assert_eq!(
        code(&second),
        "UnsupportedOperation.MutexOperationTaskRunning"
    );
    // Another ENI is not locked.
    let other = env
        .v3("AssignPrivateIpAddresses", json!({"NetworkInterfaceId": ENI_B, "PrivateIpAddresses": [{"PrivateIpAddress": "10.0.1.30"}]}))
        .await;
    assert_eq!(code(&other), "Success");

    env.wait_v3_task(first["RequestId"].as_str().expect("id"))
        .await;
    let third = env
        .v3(
            "UnassignPrivateIpAddresses",
            unassign_body(ENI_A, &["10.0.1.12"]),
        )
        .await;
    assert_eq!(code(&third), "Success");
}

#[tokio::test]
async fn a_task_can_be_made_to_fail() {
    let env = env().await;
    env.cloud.fail_next_task("UnassignPrivateIpAddresses");
    let r = env
        .v3(
            "UnassignPrivateIpAddresses",
            unassign_body(ENI_A, &["10.0.1.11"]),
        )
        .await;
    assert_eq!(code(&r), "Success");
    let done = env.wait_v3_task(r["RequestId"].as_str().expect("id")).await;
    assert_eq!(done["Status"], "FAILED");
    let eni = env.cloud.eni(ENI_A).expect("eni");
    assert_eq!(
        eni.ip(ip("10.0.1.11")).expect("kept").state,
        ip_state::AVAILABLE
    );
    // Only the next one.
    let r = env
        .v3(
            "UnassignPrivateIpAddresses",
            unassign_body(ENI_A, &["10.0.1.11"]),
        )
        .await;
    let done = env.wait_v3_task(r["RequestId"].as_str().expect("id")).await;
    assert_eq!(done["Status"], "SUCCESS");
    assert_eq!(env.cloud.owner_of(ip("10.0.1.11")), None);
}

#[tokio::test]
async fn assign_and_migrate_follow_the_task_model() {
    let env = env().await;
    let r = env
        .v3("AssignPrivateIpAddresses", json!({"NetworkInterfaceId": ENI_A, "PrivateIpAddresses": [{"PrivateIpAddress": "10.0.1.40"}]}))
        .await;
    assert_eq!(code(&r), "Success", "{r}");
    assert_eq!(r["PrivateIpAddressSet"][0]["State"], "PENDING");
    assert_eq!(env.cloud.owner_of(ip("10.0.1.40")).as_deref(), Some(ENI_A));
    env.wait_v3_task(r["RequestId"].as_str().expect("id")).await;
    let eni = env.cloud.eni(ENI_A).expect("eni");
    assert_eq!(
        eni.ip(ip("10.0.1.40")).expect("assigned").state,
        ip_state::AVAILABLE
    );

    let r = env
        .v3("AssignPrivateIpAddresses", json!({"NetworkInterfaceId": ENI_B, "PrivateIpAddresses": [{"PrivateIpAddress": "10.0.1.40"}]}))
        .await;
    assert_eq!(code(&r), "ResourceInUse");
    let r = env
        .v3("AssignPrivateIpAddresses", json!({"NetworkInterfaceId": ENI_B, "PrivateIpAddresses": [{"PrivateIpAddress": "10.0.9.40"}]}))
        .await;
    assert_eq!(code(&r), "InvalidParameterValue.Range");

    // The keepalived takeover: the peer moves 10.0.1.40 to ENI B.
    let migrate = json!({"SourceNetworkInterfaceId": ENI_A, "DestinationNetworkInterfaceId": ENI_B, "PrivateIpAddress": "10.0.1.40"});
    let r = env.v3("MigratePrivateIpAddress", migrate.clone()).await;
    assert_eq!(code(&r), "Success", "{r}");
    assert_eq!(
        env.cloud
            .eni(ENI_A)
            .and_then(|e| e.ip(ip("10.0.1.40")).map(|i| i.state.clone()))
            .as_deref(),
        Some(ip_state::MIGRATING)
    );
    let done = env.wait_v3_task(r["RequestId"].as_str().expect("id")).await;
    assert_eq!(done["Status"], "SUCCESS");
    assert_eq!(env.cloud.owner_of(ip("10.0.1.40")).as_deref(), Some(ENI_B));

    // …and whoever comes second loses: the IP is not on the source any more.
    let r = env.v3("MigratePrivateIpAddress", migrate).await;
    assert_eq!(code(&r), "ResourceNotFound");
    let r = env
        .v3(
            "UnassignPrivateIpAddresses",
            unassign_body(ENI_A, &["10.0.1.40"]),
        )
        .await;
    assert_eq!(code(&r), "ResourceNotFound");

    let r = env
        .v3("MigratePrivateIpAddress", json!({"SourceNetworkInterfaceId": ENI_A, "DestinationNetworkInterfaceId": ENI_B, "PrivateIpAddress": "10.0.1.10"}))
        .await;
    assert_eq!(code(&r), "UnsupportedOperation.PrimaryIp");
    let r = env
        .v3("MigratePrivateIpAddress", json!({"SourceNetworkInterfaceId": ENI_A, "DestinationNetworkInterfaceId": ENI_P, "PrivateIpAddress": "10.0.1.11"}))
        .await;
    assert_eq!(code(&r), "UnsupportedOperation.ResourceMismatch");
}

/// IPv6: `Ipv6AddressSet` lists an ENI's IPv6 addresses in the spelling
/// given; `UnassignIpv6Addresses` is signed and checked like every call, answers its
/// documented errors, and starts a task that `DescribeVpcTaskResult` follows.
#[tokio::test]
async fn ipv6_addresses_are_listed_and_unassigned_with_their_errors() {
    use enisync_fakecloud::FakeIpv6;
    let cloud = standard_cloud();
    let v6 = |s: &str| -> std::net::Ipv6Addr { s.parse().expect("ipv6") };
    let mut primary = FakeIpv6::new(v6("2402:4e00:1::10"));
    primary.primary = true;
    cloud.add_ipv6(ENI_A, primary).expect("primary");
    let mut long = FakeIpv6::new(v6("2402:4e00:1::11"));
    long.spelling = Some("2402:4e00:0001:0000:0000:0000:0000:0011".into());
    cloud.add_ipv6(ENI_A, long).expect("aux");
    cloud
        .add_ipv6(ENI_A, FakeIpv6::new(v6("2402:4e00:1::12")))
        .expect("aux");
    let env = env_with(cloud);

    let r = env
        .v3(
            "DescribeNetworkInterfaces",
            json!({"NetworkInterfaceIds": [ENI_A]}),
        )
        .await;
    let set = r["NetworkInterfaceSet"][0]["Ipv6AddressSet"]
        .as_array()
        .expect("set")
        .clone();
    assert_eq!(set.len(), 3, "{r}");
    assert_eq!(set[0]["Primary"], true);
    assert_eq!(set[1]["Address"], "2402:4e00:0001:0000:0000:0000:0000:0011");
    assert_eq!(set[1]["AddressType"], "GUA");
    assert_eq!(set[1]["AddressId"], "");

    let body = |eni: &str, addrs: &[&str]| {
        json!({"NetworkInterfaceId": eni,
            "Ipv6Addresses": addrs.iter().map(|a| json!({"Address": a})).collect::<Vec<_>>()})
    };
    let mut wrong_key = V3::new("UnassignIpv6Addresses", &body(ENI_A, &["2402:4e00:1::11"]));
    wrong_key.creds.key = "not-the-key".to_string();
    assert_eq!(
        code(&env.v3_req(&wrong_key).await),
        "AuthFailure.SignatureFailure"
    );
    for (eni, addrs, want) in [
        (
            ENI_A,
            vec!["2402:4e00:1::10"],
            "UnauthorizedOperation.PrimaryIp",
        ),
        (ENI_A, vec!["2402:4e00:1::99"], "ResourceNotFound"),
        ("eni-nothere", vec!["2402:4e00:1::11"], "ResourceNotFound"),
        (
            ENI_A,
            vec!["2402:4e00:1::g"],
            "InvalidParameterValue.Malformed",
        ),
        (
            ENI_A,
            vec!["2402:4e00:1::11", "2402:4e00:1:0::11"],
            "InvalidParameterValue.DuplicatePara",
        ),
        (
            ENI_A,
            vec!["2402:4e00:1::11"; 11],
            "InvalidParameterValue.LimitExceeded",
        ),
        (ENI_A, vec![], "MissingParameter"),
    ] {
        let r = env.v3("UnassignIpv6Addresses", body(eni, &addrs)).await;
        assert_eq!(code(&r), want, "{addrs:?}: {r}");
    }

    // The long spelling is the same address: unassigned by its canonical form.
    let r = env
        .v3("UnassignIpv6Addresses", body(ENI_A, &["2402:4e00:1::11"]))
        .await;
    assert_eq!(code(&r), "Success", "{r}");
    let task = r["RequestId"].as_str().expect("request id").to_string();
    let busy = env
        .v3("UnassignIpv6Addresses", body(ENI_A, &["2402:4e00:1::12"]))
        .await;
    assert_eq!(
        code(&busy),
        "UnsupportedOperation.MutexOperationTaskRunning",
        "{busy}"
    );
    assert_eq!(env.wait_v3_task(&task).await["Status"], "SUCCESS");
    let left: Vec<_> = env.cloud.ipv6_of(ENI_A);
    assert_eq!(left, vec![v6("2402:4e00:1::10"), v6("2402:4e00:1::12")]);
    let calls = env.cloud.calls_of("UnassignIpv6Addresses");
    assert_eq!(calls.last().expect("call").ips, vec!["2402:4e00:1::12"]);
    assert_eq!(
        env.cloud.task(&task).expect("task").ipv6,
        vec![v6("2402:4e00:1::11")]
    );
}
