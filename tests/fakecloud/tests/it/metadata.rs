//! The metadata service: the tree, answering by source address, CAM role keys.

use std::net::IpAddr;
use std::time::Duration;

use enisync_fakecloud::{FakeEni, FakeInstance};
use serde_json::{Value, json};

use crate::common::*;

fn addr(text: &str) -> IpAddr {
    text.parse().expect("address")
}

#[tokio::test]
async fn the_tree_of_a_single_instance() {
    let env = env().await;
    let get = |path: &'static str| {
        let env = &env;
        async move { env.meta(path, None).await }
    };
    assert_eq!(get("instance-id").await, (200, INSTANCE.to_string()));
    assert_eq!(get("placement/region").await, (200, REGION.to_string()));
    assert_eq!(
        get("placement/zone").await,
        (200, "ap-guangzhou-3".to_string())
    );
    assert_eq!(get("mac").await, (200, "52:54:00:00:00:01".to_string()));
    assert_eq!(get("local-ipv4").await, (200, "10.0.0.10".to_string()));
    assert_eq!(
        get("network/interfaces/macs/").await,
        (
            200,
            "52:54:00:00:00:01/\n52:54:00:12:34:56/\n52:54:00:AB:CD:EF/".to_string()
        )
    );
    let m = "network/interfaces/macs/52:54:00:12:34:56/";
    assert_eq!(
        env.meta(&format!("{m}mac"), None).await.1,
        "52:54:00:12:34:56"
    );
    assert_eq!(
        env.meta(&format!("{m}primary-local-ipv4"), None).await.1,
        "10.0.1.10"
    );
    assert_eq!(env.meta(&format!("{m}vpc-id"), None).await.1, VPC);
    assert_eq!(env.meta(&format!("{m}subnet-id"), None).await.1, "subnet-a");
    assert_eq!(
        env.meta(&format!("{m}local-ipv4s/"), None).await.1,
        "10.0.1.10/\n10.0.1.11/\n10.0.1.12/\n10.0.1.13/\n10.0.1.14/\n10.0.1.15/"
    );
    assert_eq!(
        env.meta(&format!("{m}local-ipv4s/10.0.1.12/gateway"), None)
            .await
            .1,
        "10.0.1.1"
    );
    assert_eq!(
        env.meta(&format!("{m}local-ipv4s/10.0.1.12/subnet-mask"), None)
            .await
            .1,
        "255.255.255.0"
    );
    assert_eq!(
        env.meta(&format!("{m}local-ipv4s/10.0.1.12/local-ipv4"), None)
            .await
            .1,
        "10.0.1.12"
    );
    // Paths are case-sensitive, unknown ones are 404.
    assert_eq!(
        get("network/interfaces/macs/52:54:00:ab:cd:ef/mac").await.0,
        404
    );
    assert_eq!(
        env.meta(&format!("{m}local-ipv4s/10.0.1.99/gateway"), None)
            .await
            .0,
        404
    );
    assert_eq!(get("no/such/key").await.0, 404);
    // No role bound.
    assert_eq!(get("cam/security-credentials/").await.0, 404);

    // The listing follows the cloud: an unassigned IP disappears from it.
    env.cloud.finish_running_tasks();
    let r = env
        .v3(
            "UnassignPrivateIpAddresses",
            json!({"NetworkInterfaceId": ENI_A, "PrivateIpAddresses": [{"PrivateIpAddress": "10.0.1.11"}]}),
        )
        .await;
    env.wait_v3_task(r["RequestId"].as_str().expect("id")).await;
    assert!(
        !env.meta(&format!("{m}local-ipv4s/"), None)
            .await
            .1
            .contains("10.0.1.11/")
    );

    let calls = env.cloud.calls_of("instance-id");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].answer, "Success");
    assert_eq!(env.cloud.calls_of("no/such/key")[0].answer, "NotFound");
}

#[tokio::test]
async fn two_instances_are_told_apart_by_source_address() {
    let cloud = standard_cloud();
    cloud
        .add_instance(FakeInstance::new("ins-bbbb0002", "ap-shanghai").source_ip(addr("127.0.0.2")))
        .expect("second instance");
    cloud
        .add_eni(
            FakeEni::new(
                "eni-cccc0001",
                "52:54:00:99:99:99",
                "vpc-sh",
                "subnet-sh",
                "172.16.0.0/24",
                ip("172.16.0.5"),
            )
            .attached("ins-bbbb0002", 0)
            .primary_eni(),
        )
        .expect("eni");
    // With two instances, the first one must be registered with its address too.
    let env = env_with(cloud);
    assert_eq!(
        env.meta("instance-id", Some(addr("127.0.0.1"))).await.0,
        404
    );
    env.cloud
        .add_source_ip(INSTANCE, addr("127.0.0.1"))
        .expect("source");

    assert_eq!(
        env.meta("instance-id", Some(addr("127.0.0.1"))).await.1,
        INSTANCE
    );
    assert_eq!(
        env.meta("instance-id", Some(addr("127.0.0.2"))).await.1,
        "ins-bbbb0002"
    );
    assert_eq!(
        env.meta("placement/region", Some(addr("127.0.0.2")))
            .await
            .1,
        "ap-shanghai"
    );
    assert_eq!(
        env.meta("local-ipv4", Some(addr("127.0.0.2"))).await.1,
        "172.16.0.5"
    );
    assert_eq!(
        env.meta("network/interfaces/macs/", Some(addr("127.0.0.2")))
            .await
            .1,
        "52:54:00:99:99:99/"
    );
    // An instance sees only its own ENIs.
    assert_eq!(
        env.meta(
            "network/interfaces/macs/52:54:00:12:34:56/mac",
            Some(addr("127.0.0.2"))
        )
        .await
        .0,
        404
    );
    // A stranger gets nothing.
    assert_eq!(
        env.meta("instance-id", Some(addr("127.0.0.3"))).await.0,
        404
    );

    let sources: Vec<String> = env
        .cloud
        .calls_of("instance-id")
        .iter()
        .map(|c| c.source.ip().to_string())
        .collect();
    assert_eq!(
        sources,
        ["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.3"]
    );
}

#[tokio::test]
async fn cam_role_keys_rotate_and_work() {
    let env = env().await;
    env.cloud
        .set_cam_role(INSTANCE, Some("enisync-role"))
        .expect("role");
    env.cloud.set_cam_rotation(Duration::from_millis(1200));
    assert_eq!(
        env.meta("cam/security-credentials/", None).await,
        (200, "enisync-role".to_string())
    );
    assert_eq!(
        env.meta("cam/security-credentials/other-role", None)
            .await
            .0,
        404
    );

    let fetch = || async {
        let (status, text) = env
            .meta("cam/security-credentials/enisync-role", None)
            .await;
        assert_eq!(status, 200);
        serde_json::from_str::<Value>(&text).expect("credential JSON")
    };
    let before = wall_now();
    let first = fetch().await;
    assert_eq!(first["Code"], "Success");
    let expired = first["ExpiredTime"].as_i64().expect("ExpiredTime");
    assert!(
        (before + 1..=before + 3).contains(&expired),
        "{expired} vs {before}"
    );
    assert!(
        first["Expiration"]
            .as_str()
            .expect("Expiration")
            .ends_with('Z')
    );
    let again = fetch().await;
    assert_eq!(again["TmpSecretId"], first["TmpSecretId"]);
    assert_eq!(env.cloud.metadata_credential_fetches(), 2);

    // The role key signs API calls, with its token.
    let role_creds = |doc: &Value, with_token: bool| Creds {
        id: doc["TmpSecretId"].as_str().expect("id").to_string(),
        key: doc["TmpSecretKey"].as_str().expect("key").to_string(),
        token: with_token.then(|| doc["Token"].as_str().expect("token").to_string()),
    };
    let mut req = V3::new("DescribeNetworkInterfaces", &json!({}));
    req.creds = role_creds(&first, true);
    assert_eq!(code(&env.v3_req(&req).await), "Success");
    req.creds = role_creds(&first, false);
    assert_eq!(code(&env.v3_req(&req).await), "AuthFailure.TokenFailure");

    tokio::time::sleep(Duration::from_millis(1300)).await;
    let rotated = fetch().await;
    assert_ne!(rotated["TmpSecretId"], first["TmpSecretId"]);
    assert_ne!(rotated["Token"], first["Token"]);
    assert!(rotated["ExpiredTime"].as_i64() > Some(expired - 1));
    assert_eq!(env.cloud.metadata_credential_fetches(), 3);
    // The old key has expired, the new one works.
    req.creds = role_creds(&first, true);
    assert_eq!(code(&env.v3_req(&req).await), "AuthFailure.TokenFailure");
    req.creds = role_creds(&rotated, true);
    assert_eq!(code(&env.v3_req(&req).await), "Success");
    assert_eq!(
        env.cloud.cam_key(INSTANCE).map(|k| k.secret_id),
        rotated["TmpSecretId"].as_str().map(str::to_string)
    );
}

#[tokio::test]
async fn an_old_cam_key_outlives_its_rotation_when_asked() {
    let env = env().await;
    env.cloud.set_cam_role(INSTANCE, Some("r")).expect("role");
    env.cloud.set_cam_rotation(Duration::from_millis(300));
    env.cloud.set_cam_key_lifetime(Duration::from_secs(60));
    let (_, text) = env.meta("cam/security-credentials/r", None).await;
    let first: Value = serde_json::from_str(&text).expect("json");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, text) = env.meta("cam/security-credentials/r", None).await;
    let second: Value = serde_json::from_str(&text).expect("json");
    assert_ne!(first["TmpSecretId"], second["TmpSecretId"]);
    let mut req = V3::new("DescribeNetworkInterfaces", &json!({}));
    req.creds = Creds {
        id: first["TmpSecretId"].as_str().expect("id").into(),
        key: first["TmpSecretKey"].as_str().expect("key").into(),
        token: first["Token"].as_str().map(str::to_string),
    };
    assert_eq!(code(&env.v3_req(&req).await), "Success");
}
