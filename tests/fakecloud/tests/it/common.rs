//! A small signing client and a standard world for the tests.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use enisync::cloud::sign::{
    LegacySignMethod, Tc3Request, legacy_sign, legacy_string_to_sign, tc3_sign,
};
use enisync_fakecloud::{FakeCloud, FakeEni, FakeInstance, FakeServer};
use serde_json::Value;

pub const ID: &str = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE";
pub const KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE";
pub const REGION: &str = "ap-guangzhou";
pub const INSTANCE: &str = "ins-aaaa0001";
/// Primary ENI (eth0), 10.0.0.10 in 10.0.0.0/24.
pub const ENI_P: &str = "eni-prim0001";
/// Secondary ENI, 52:54:00:12:34:56, primary 10.0.1.10, secondaries .11–.15.
pub const ENI_A: &str = "eni-aaaa0001";
/// Another ENI of the same subnet, primary 10.0.1.20 (migrate target).
pub const ENI_B: &str = "eni-bbbb0001";
pub const VPC: &str = "vpc-test0001";

pub fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("test IP")
}

pub fn wall_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        .try_into()
        .expect("fits")
}

/// One instance with three ENIs, one long-term key, 150 ms tasks.
pub fn standard_cloud() -> FakeCloud {
    let cloud = FakeCloud::new();
    cloud
        .add_instance(FakeInstance::new(INSTANCE, REGION).zone("ap-guangzhou-3"))
        .expect("instance");
    cloud
        .add_eni(
            FakeEni::new(
                ENI_P,
                "52:54:00:00:00:01",
                VPC,
                "subnet-p",
                "10.0.0.0/24",
                ip("10.0.0.10"),
            )
            .attached(INSTANCE, 0)
            .primary_eni(),
        )
        .expect("eni p");
    cloud
        .add_eni(
            FakeEni::new(
                ENI_A,
                "52:54:00:12:34:56",
                VPC,
                "subnet-a",
                "10.0.1.0/24",
                ip("10.0.1.10"),
            )
            .attached(INSTANCE, 1)
            .secondaries((11..=15).map(|i| Ipv4Addr::new(10, 0, 1, i))),
        )
        .expect("eni a");
    cloud
        .add_eni(
            FakeEni::new(
                ENI_B,
                "52:54:00:ab:cd:ef",
                VPC,
                "subnet-a",
                "10.0.1.0/24",
                ip("10.0.1.20"),
            )
            .attached(INSTANCE, 2),
        )
        .expect("eni b");
    cloud.add_key(ID, KEY);
    cloud.set_task_duration(Duration::from_millis(150));
    cloud
}

#[derive(Debug, Clone)]
pub struct Creds {
    pub id: String,
    pub key: String,
    pub token: Option<String>,
}

impl Creds {
    pub fn long_term() -> Self {
        Self {
            id: ID.to_string(),
            key: KEY.to_string(),
            token: None,
        }
    }
}

/// One API 3.0 request, before signing.
#[derive(Debug, Clone)]
pub struct V3 {
    pub action: String,
    pub body: String,
    pub creds: Creds,
    pub timestamp: i64,
    pub region: String,
    /// Sent instead of `body` (which is still what gets signed).
    pub tamper_body: Option<String>,
}

impl V3 {
    pub fn new(action: &str, body: &Value) -> Self {
        Self {
            action: action.to_string(),
            body: body.to_string(),
            creds: Creds::long_term(),
            timestamp: wall_now(),
            region: REGION.to_string(),
            tamper_body: None,
        }
    }
}

pub struct Env {
    pub cloud: FakeCloud,
    pub server: FakeServer,
    pub http: reqwest::Client,
}

pub async fn env() -> Env {
    env_with(standard_cloud())
}

pub fn env_with(cloud: FakeCloud) -> Env {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let server = cloud.serve(listener).expect("serve");
    Env {
        cloud,
        server,
        http: enisync::cloud::http_client_builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client"),
    }
}

impl Env {
    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    pub async fn send_v3(&self, req: &V3) -> (u16, String) {
        self.send_v3_with(&self.http, req).await
    }

    pub async fn send_v3_with(&self, http: &reqwest::Client, req: &V3) -> (u16, String) {
        let host = self.host();
        let sig = tc3_sign(
            &Tc3Request {
                method: "POST",
                host: &host,
                query: "",
                content_type: "application/json",
                payload: req.body.as_bytes(),
                service: "vpc",
                timestamp: req.timestamp,
            },
            &req.creds.key,
        );
        let mut builder = http
            .post(self.server.v3_endpoint())
            .header("Content-Type", "application/json")
            .header("Authorization", sig.authorization(&req.creds.id, "vpc"))
            .header("X-TC-Action", &req.action)
            .header("X-TC-Version", "2017-03-12")
            .header("X-TC-Timestamp", req.timestamp.to_string())
            .header("X-TC-Region", &req.region);
        if let Some(token) = &req.creds.token {
            builder = builder.header("X-TC-Token", token);
        }
        let body = req.tamper_body.clone().unwrap_or_else(|| req.body.clone());
        let resp = builder.body(body).send().await.expect("send");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    /// Sends a signed API 3.0 request; returns `Response`.
    pub async fn v3_req(&self, req: &V3) -> Value {
        let (status, text) = self.send_v3(req).await;
        assert_eq!(status, 200, "{text}");
        let value: Value = serde_json::from_str(&text).expect("JSON answer");
        let response = value["Response"].clone();
        assert!(response["RequestId"].is_string(), "{text}");
        response
    }

    pub async fn v3(&self, action: &str, body: Value) -> Value {
        self.v3_req(&V3::new(action, &body)).await
    }

    /// Polls DescribeVpcTaskResult until the task leaves RUNNING.
    pub async fn wait_v3_task(&self, task_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = self
                .v3(
                    "DescribeVpcTaskResult",
                    serde_json::json!({"TaskId": task_id}),
                )
                .await;
            if r["Status"] != "RUNNING" || Instant::now() > deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// Sends a signed legacy request; `params` may pre-set any common parameter.
    pub async fn legacy(
        &self,
        method: &str,
        mut params: BTreeMap<String, String>,
        creds: &Creds,
        sign_method: LegacySignMethod,
    ) -> Value {
        let defaults = [
            ("Timestamp", wall_now().to_string()),
            ("Nonce", "11886".to_string()),
            ("Region", REGION.to_string()),
            ("SecretId", creds.id.clone()),
            ("SignatureMethod", sign_method.as_str().to_string()),
        ];
        for (k, v) in defaults {
            params.entry(k.to_string()).or_insert(v);
        }
        if let Some(token) = &creds.token {
            params.insert("Token".to_string(), token.clone());
        }
        let sts = legacy_string_to_sign(method, &self.host(), "/v2/index.php", &params);
        params.insert(
            "Signature".to_string(),
            legacy_sign(&sts, &creds.key, sign_method),
        );
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        let url = self.server.legacy_endpoint();
        let resp = match method {
            "GET" => self.http.get(format!("{url}?{encoded}")).send().await,
            _ => {
                self.http
                    .post(url)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(encoded)
                    .send()
                    .await
            }
        }
        .expect("send");
        assert_eq!(resp.status().as_u16(), 200);
        resp.json().await.expect("legacy JSON")
    }

    /// GET a metadata path, from `from` (bound as the client's source address).
    pub async fn meta(&self, path: &str, from: Option<IpAddr>) -> (u16, String) {
        let mut builder = enisync::cloud::http_client_builder().timeout(Duration::from_secs(5));
        if let Some(from) = from {
            builder = builder.local_address(from);
        }
        let client = builder.build().expect("client");
        let resp = client
            .get(format!("{}{path}", self.server.metadata_endpoint()))
            .send()
            .await
            .expect("metadata request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }
}

pub fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn code(response: &Value) -> &str {
    response["Error"]["Code"].as_str().unwrap_or("Success")
}
