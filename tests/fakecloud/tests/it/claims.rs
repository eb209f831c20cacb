//! The calls a claim makes (docs/cloud-api.md, "Claims"): `MigratePrivateIpAddress`,
//! `AssignPrivateIpAddresses` with a `ClientToken`, and the exact holder lookup. Each
//! documented rule gets its own test; every request is signed and checked.

use std::net::Ipv4Addr;

use enisync_fakecloud::{FakeCloud, FakeEni, FakeTaskStatus, MAX_CLIENT_TOKEN_LEN, ip_state};
use serde_json::{Value, json};

use crate::common::*;

/// ENI A's subnet, another VPC: reuses 10.0.1.11 (an IP is unique per VPC only).
const ENI_OTHER_VPC: &str = "eni-othervpc1";
/// Same VPC as ENI A, another subnet (10.0.2.0/24).
const ENI_OTHER_SUBNET: &str = "eni-othersub1";

fn cloud() -> FakeCloud {
    let cloud = standard_cloud();
    cloud
        .add_eni(
            FakeEni::new(
                ENI_OTHER_VPC,
                "52:54:00:00:99:01",
                "vpc-other001",
                "subnet-o",
                "10.0.1.0/24",
                ip("10.0.1.50"),
            )
            .secondaries([ip("10.0.1.11")]),
        )
        .expect("other vpc");
    cloud
        .add_eni(FakeEni::new(
            ENI_OTHER_SUBNET,
            "52:54:00:00:99:02",
            VPC,
            "subnet-b",
            "10.0.2.0/24",
            ip("10.0.2.10"),
        ))
        .expect("other subnet");
    cloud
}

fn migrate(src: &str, dst: &str, addr: &str) -> Value {
    json!({"SourceNetworkInterfaceId": src, "DestinationNetworkInterfaceId": dst, "PrivateIpAddress": addr})
}

fn assign(eni: &str, addr: &str, token: Option<&str>) -> Value {
    let mut body =
        json!({"NetworkInterfaceId": eni, "PrivateIpAddresses": [{"PrivateIpAddress": addr}]});
    if let Some(token) = token {
        body["ClientToken"] = json!(token);
    }
    body
}

fn holders(cloud: &FakeCloud, addr: Ipv4Addr) -> Vec<String> {
    [ENI_P, ENI_A, ENI_B, ENI_OTHER_VPC, ENI_OTHER_SUBNET]
        .iter()
        .filter(|id| cloud.eni(id).is_some_and(|e| e.ip(addr).is_some()))
        .map(|id| (*id).to_string())
        .collect()
}

#[tokio::test]
async fn migrate_is_signed_and_checked_like_every_call() {
    let env = env_with(cloud());
    let mut wrong_key = V3::new(
        "MigratePrivateIpAddress",
        &migrate(ENI_A, ENI_B, "10.0.1.11"),
    );
    wrong_key.creds.key = "not-the-key".to_string();
    assert_eq!(
        code(&env.v3_req(&wrong_key).await),
        "AuthFailure.SignatureFailure"
    );
    let mut tampered = V3::new(
        "AssignPrivateIpAddresses",
        &assign(ENI_B, "10.0.1.60", None),
    );
    tampered.tamper_body = Some(assign(ENI_B, "10.0.1.61", None).to_string());
    assert_eq!(
        code(&env.v3_req(&tampered).await),
        "AuthFailure.SignatureFailure"
    );
    // Nothing moved, nothing was created.
    assert_eq!(holders(&env.cloud, ip("10.0.1.11")), [ENI_A, ENI_OTHER_VPC]);
    assert!(holders(&env.cloud, ip("10.0.1.60")).is_empty());
    assert!(env.cloud.tasks().is_empty());
}

#[tokio::test]
async fn migrate_needs_the_same_subnet() {
    let env = env_with(cloud());
    let r = env
        .v3(
            "MigratePrivateIpAddress",
            migrate(ENI_A, ENI_OTHER_SUBNET, "10.0.1.11"),
        )
        .await;
    assert_eq!(code(&r), "UnsupportedOperation.ResourceMismatch", "{r}");
    // Same CIDR, another VPC: still not the same subnet.
    let r = env
        .v3(
            "MigratePrivateIpAddress",
            migrate(ENI_A, ENI_OTHER_VPC, "10.0.1.12"),
        )
        .await;
    assert_eq!(code(&r), "UnsupportedOperation.ResourceMismatch", "{r}");
    assert_eq!(holders(&env.cloud, ip("10.0.1.12")), [ENI_A]);
}

#[tokio::test]
async fn migrate_refuses_a_primary_ip() {
    let env = env_with(cloud());
    let r = env
        .v3(
            "MigratePrivateIpAddress",
            migrate(ENI_B, ENI_A, "10.0.1.20"),
        )
        .await;
    assert_eq!(code(&r), "UnsupportedOperation.PrimaryIp", "{r}");
    assert_eq!(holders(&env.cloud, ip("10.0.1.20")), [ENI_B]);
}

#[tokio::test]
async fn migrate_runs_as_a_task_holding_both_enis() {
    let env = env_with(cloud());
    let r = env
        .v3(
            "MigratePrivateIpAddress",
            migrate(ENI_A, ENI_B, "10.0.1.11"),
        )
        .await;
    assert_eq!(code(&r), "Success", "{r}");
    let task = r["RequestId"].as_str().expect("task id").to_string();
    assert_eq!(
        env.cloud
            .eni(ENI_A)
            .and_then(|e| e.ip(ip("10.0.1.11")).map(|i| i.state.clone()))
            .as_deref(),
        Some(ip_state::MIGRATING)
    );
    // The mutex: both the source and the destination are busy while it runs.
    let r = env
        .v3(
            "UnassignPrivateIpAddresses",
            json!({"NetworkInterfaceId": ENI_A, "PrivateIpAddresses": [{"PrivateIpAddress": "10.0.1.12"}]}),
        )
        .await;
    assert_eq!(
        code(&r),
        "UnsupportedOperation.MutexOperationTaskRunning",
        "{r}"
    );
    let r = env
        .v3("AssignPrivateIpAddresses", assign(ENI_B, "10.0.1.61", None))
        .await;
    assert_eq!(
        code(&r),
        "UnsupportedOperation.MutexOperationTaskRunning",
        "{r}"
    );
    let r = env
        .v3(
            "MigratePrivateIpAddress",
            migrate(ENI_A, ENI_B, "10.0.1.12"),
        )
        .await;
    assert_eq!(
        code(&r),
        "UnsupportedOperation.MutexOperationTaskRunning",
        "{r}"
    );
    let done = env.wait_v3_task(&task).await;
    assert_eq!(done["Status"], "SUCCESS");
    assert_eq!(holders(&env.cloud, ip("10.0.1.11")), [ENI_B, ENI_OTHER_VPC]);
    assert_eq!(
        env.cloud
            .eni(ENI_B)
            .and_then(|e| e.ip(ip("10.0.1.11")).map(|i| i.state.clone()))
            .as_deref(),
        Some(ip_state::AVAILABLE)
    );
}

#[tokio::test]
async fn migrate_from_an_eni_that_no_longer_holds_the_ip_fails() {
    let env = env_with(cloud());
    // The other node already took it: the source named is stale.
    let r = env
        .v3(
            "MigratePrivateIpAddress",
            migrate(ENI_A, ENI_B, "10.0.1.13"),
        )
        .await;
    env.wait_v3_task(r["RequestId"].as_str().expect("id")).await;
    let r = env
        .v3(
            "MigratePrivateIpAddress",
            migrate(ENI_A, ENI_B, "10.0.1.13"),
        )
        .await;
    assert_eq!(code(&r), "ResourceNotFound", "{r}");
    // An address nobody holds cannot be migrated either.
    let r = env
        .v3(
            "MigratePrivateIpAddress",
            migrate(ENI_A, ENI_B, "10.0.1.99"),
        )
        .await;
    assert_eq!(code(&r), "ResourceNotFound", "{r}");
    assert_eq!(holders(&env.cloud, ip("10.0.1.13")), [ENI_B]);
}

#[tokio::test]
async fn migrate_with_a_failed_task_leaves_the_ip_where_it_was() {
    let env = env_with(cloud());
    env.cloud.fail_next_task("MigratePrivateIpAddress");
    let r = env
        .v3(
            "MigratePrivateIpAddress",
            migrate(ENI_A, ENI_B, "10.0.1.14"),
        )
        .await;
    let done = env.wait_v3_task(r["RequestId"].as_str().expect("id")).await;
    assert_eq!(done["Status"], "FAILED");
    assert_eq!(holders(&env.cloud, ip("10.0.1.14")), [ENI_A]);
    assert_eq!(
        env.cloud
            .eni(ENI_A)
            .and_then(|e| e.ip(ip("10.0.1.14")).map(|i| i.state.clone()))
            .as_deref(),
        Some(ip_state::AVAILABLE)
    );
}

#[tokio::test]
async fn assign_refuses_an_ip_held_elsewhere_in_the_vpc() {
    let env = env_with(cloud());
    // A secondary of another ENI, and the primary of another ENI.
    for held in ["10.0.1.11", "10.0.1.20"] {
        let r = env
            .v3("AssignPrivateIpAddresses", assign(ENI_B, held, None))
            .await;
        assert_eq!(code(&r), "ResourceInUse", "{held}: {r}");
    }
    // 10.0.1.50 is held in another VPC only: free here.
    let r = env
        .v3("AssignPrivateIpAddresses", assign(ENI_B, "10.0.1.50", None))
        .await;
    assert_eq!(code(&r), "Success", "{r}");
    env.wait_v3_task(r["RequestId"].as_str().expect("id")).await;
    assert_eq!(holders(&env.cloud, ip("10.0.1.50")), [ENI_B, ENI_OTHER_VPC]);
}

#[tokio::test]
async fn assign_client_token_is_idempotent() {
    let env = env_with(cloud());
    let token = "claim-10.0.1.70-1";
    let first = env
        .v3(
            "AssignPrivateIpAddresses",
            assign(ENI_B, "10.0.1.70", Some(token)),
        )
        .await;
    assert_eq!(code(&first), "Success", "{first}");
    let first_task = first["RequestId"].as_str().expect("id").to_string();

    // Same token, same parameters, first task still running.
    let r = env
        .v3(
            "AssignPrivateIpAddresses",
            assign(ENI_B, "10.0.1.70", Some(token)),
        )
        .await;
    assert_eq!(code(&r), "UnsupportedOperation.IdempotentProcessing", "{r}");
    // Same token, other parameters.
    let r = env
        .v3(
            "AssignPrivateIpAddresses",
            assign(ENI_B, "10.0.1.71", Some(token)),
        )
        .await;
    assert_eq!(
        code(&r),
        "UnsupportedOperation.IdempotentParameterMismatch",
        "{r}"
    );

    assert_eq!(env.wait_v3_task(&first_task).await["Status"], "SUCCESS");
    // Replayed after the end: the first answer again, no second IP, an ended task.
    let again = env
        .v3(
            "AssignPrivateIpAddresses",
            assign(ENI_B, "10.0.1.70", Some(token)),
        )
        .await;
    assert_eq!(code(&again), "Success", "{again}");
    assert_eq!(
        again["PrivateIpAddressSet"][0]["PrivateIpAddress"],
        "10.0.1.70"
    );
    let replay_task = again["RequestId"].as_str().expect("id");
    assert_ne!(replay_task, first_task);
    assert_eq!(
        env.cloud.task(replay_task).map(|t| t.status),
        Some(FakeTaskStatus::Success)
    );
    let eni_b = env.cloud.eni(ENI_B).expect("eni b");
    assert_eq!(
        eni_b
            .ips
            .iter()
            .filter(|i| i.addr == ip("10.0.1.70"))
            .count(),
        1
    );
    // Without a token the same request is a new one, refused: the IP is in use.
    let r = env
        .v3("AssignPrivateIpAddresses", assign(ENI_B, "10.0.1.70", None))
        .await;
    assert_eq!(code(&r), "ResourceInUse", "{r}");
}

#[tokio::test]
async fn assign_client_token_of_a_refused_call_can_be_used_again() {
    let env = env_with(cloud());
    // Refused (in use): the token is not spent.
    let r = env
        .v3(
            "AssignPrivateIpAddresses",
            assign(ENI_B, "10.0.1.11", Some("tok-a")),
        )
        .await;
    assert_eq!(code(&r), "ResourceInUse", "{r}");
    let r = env
        .v3(
            "AssignPrivateIpAddresses",
            assign(ENI_B, "10.0.1.72", Some("tok-a")),
        )
        .await;
    assert_eq!(code(&r), "Success", "{r}");
    // Malformed tokens.
    let long = "x".repeat(MAX_CLIENT_TOKEN_LEN + 1);
    for bad in [long.as_str(), "", "tök"] {
        let r = env
            .v3(
                "AssignPrivateIpAddresses",
                assign(ENI_A, "10.0.1.73", Some(bad)),
            )
            .await;
        assert_eq!(code(&r), "InvalidParameterValue.Malformed", "{bad:?}: {r}");
    }
}

#[tokio::test]
async fn holder_lookup_by_exact_address_in_one_vpc() {
    let env = env_with(cloud());
    let lookup = |filters: Value| json!({"Filters": filters, "Limit": 100});
    let ids = |r: &Value| -> Vec<String> {
        r["NetworkInterfaceSet"]
            .as_array()
            .expect("set")
            .iter()
            .map(|e| e["NetworkInterfaceId"].as_str().expect("id").to_string())
            .collect()
    };
    // One value without ip-exact-match is a suffix match: "0.1.11" also finds .11.
    let r = env
        .v3(
            "DescribeNetworkInterfaces",
            lookup(json!([{"Name": "address-ip", "Values": ["0.1.11"]}])),
        )
        .await;
    assert_eq!(ids(&r), [ENI_A, ENI_OTHER_VPC], "{r}");
    let r = env
        .v3(
            "DescribeNetworkInterfaces",
            lookup(json!([
                {"Name": "address-ip", "Values": ["0.1.11"]},
                {"Name": "ip-exact-match", "Values": ["true"]},
            ])),
        )
        .await;
    assert!(ids(&r).is_empty(), "{r}");
    // Exact, and the same address of another VPC is filtered out by vpc-id.
    let r = env
        .v3(
            "DescribeNetworkInterfaces",
            lookup(json!([
                {"Name": "vpc-id", "Values": [VPC]},
                {"Name": "address-ip", "Values": ["10.0.1.11"]},
                {"Name": "ip-exact-match", "Values": ["TRUE"]},
            ])),
        )
        .await;
    assert_eq!(ids(&r), [ENI_A], "{r}");
    assert_eq!(r["TotalCount"], 1);
    assert_eq!(
        r["NetworkInterfaceSet"][0]["Attachment"]["InstanceId"],
        INSTANCE
    );
}
