//! The legacy VPC API (API 2.0, `docs/cloud-api.md`, "The legacy API"): the release and its task only.
//!
//! Requests are sent as POST with a form-encoded body and signed with method `POST`.
//! POST rather than the SDK's default GET keeps the signature, the SecretId and the token
//! out of URLs, so no log line or error that prints a URL can carry them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde_json::{Map, Value};

use super::classify::TencentCode;
use super::clock::ServerClock;
use super::credentials::Credentials;
use super::sign::{LegacySignMethod, legacy_sign, legacy_string_to_sign};
use super::transport::{Endpoint, exchange};
use super::v3::{TASK_RESULT, UNASSIGN};
use super::{CloudError, TaskStatus};
use crate::task::{Protocol, TaskRef};

/// A legacy API client for one endpoint and region.
#[derive(Debug, Clone)]
pub(crate) struct LegacyApi {
    http: reqwest::Client,
    endpoint: Endpoint,
    region: String,
    sign_method: LegacySignMethod,
    /// Receives the `Date` of every answer (clock-skew correction).
    clock: Option<std::sync::Arc<ServerClock>>,
}

impl LegacyApi {
    pub fn new(
        http: reqwest::Client,
        endpoint: Endpoint,
        region: String,
        sign_method: LegacySignMethod,
    ) -> Self {
        Self {
            http,
            endpoint,
            region,
            sign_method,
            clock: None,
        }
    }

    /// Hands the `Date` of every answer to `clock`.
    pub fn with_clock(mut self, clock: std::sync::Arc<ServerClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Starts an unassign; returns the legacy `taskId` to poll.
    pub async fn unassign(
        &self,
        creds: &Credentials,
        timestamp: i64,
        vpc_id: &str,
        eni_id: &str,
        ips: &[Ipv4Addr],
    ) -> Result<TaskRef, CloudError> {
        let mut params = BTreeMap::from([
            ("vpcId".to_owned(), vpc_id.to_owned()),
            ("networkInterfaceId".to_owned(), eni_id.to_owned()),
        ]);
        // Lists are flattened with 0-based dotted indices.
        for (i, ip) in ips.iter().enumerate() {
            params.insert(format!("privateIpAddress.{i}"), ip.to_string());
        }
        parse_unassign(&self.call(UNASSIGN, params, creds, timestamp).await?)
    }

    /// The status of a legacy task (see [`parse_task_status`]).
    pub async fn task_status(
        &self,
        creds: &Credentials,
        timestamp: i64,
        task_id: &str,
    ) -> Result<TaskStatus, CloudError> {
        let params = BTreeMap::from([("taskId".to_owned(), task_id.to_owned())]);
        parse_task_status(&self.call(TASK_RESULT, params, creds, timestamp).await?)
    }

    /// Adds the common parameters, signs, sends; returns the body of the 200 answer.
    async fn call(
        &self,
        action: &'static str,
        mut params: BTreeMap<String, String>,
        creds: &Credentials,
        timestamp: i64,
    ) -> Result<Vec<u8>, CloudError> {
        params.insert("Action".to_owned(), action.to_owned());
        params.insert("Region".to_owned(), self.region.clone());
        params.insert("Timestamp".to_owned(), timestamp.to_string());
        params.insert("Nonce".to_owned(), fastrand::u32(1..).to_string());
        params.insert("SecretId".to_owned(), creds.secret_id.expose().to_owned());
        params.insert(
            "SignatureMethod".to_owned(),
            self.sign_method.as_str().to_owned(),
        );
        if let Some(token) = &creds.token {
            // A signed parameter here, unlike API 3.0's unsigned header.
            params.insert("Token".to_owned(), token.expose().to_owned());
        }
        let string_to_sign = legacy_string_to_sign(
            "POST",
            &self.endpoint.host,
            self.endpoint.url.path(),
            &params,
        );
        let signature = legacy_sign(&string_to_sign, creds.secret_key.expose(), self.sign_method);
        params.insert("Signature".to_owned(), signature);
        let request = self
            .http
            .post(self.endpoint.url.clone())
            .header("Host", &self.endpoint.host)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form_encode(&params));
        exchange(action, request, self.clock.as_deref()).await
    }
}

/// The answer to the legacy unassign: its `taskId`.
pub(crate) fn parse_unassign(body: &[u8]) -> Result<TaskRef, CloudError> {
    let reply = parse_reply(UNASSIGN, body)?;
    let task_id =
        task_id(&reply).ok_or_else(|| malformed(UNASSIGN, "no taskId in the reply".to_owned()))?;
    Ok(TaskRef {
        request_id: None,
        task_id,
        protocol: Protocol::Legacy,
    })
}

/// The legacy `DescribeVpcTaskResult`: `data.status` 0 success, 1 failed, 2 running.
pub(crate) fn parse_task_status(body: &[u8]) -> Result<TaskStatus, CloudError> {
    let reply = parse_reply(TASK_RESULT, body)?;
    let status = reply
        .get("data")
        .and_then(|data| data.get("status"))
        .and_then(integer);
    match status {
        Some(0) => Ok(TaskStatus::Success),
        Some(1) => Ok(TaskStatus::Failed),
        Some(2) => Ok(TaskStatus::Running),
        other => Err(malformed(
            TASK_RESULT,
            format!("unexpected data.status {other:?}"),
        )),
    }
}

/// Parses a legacy reply: a JSON object whose `code` is 0 on success; otherwise an error
/// classified from `code` and `codeDesc`.
pub(crate) fn parse_reply(
    action: &'static str,
    body: &[u8],
) -> Result<Map<String, Value>, CloudError> {
    let Ok(Value::Object(reply)) = serde_json::from_slice::<Value>(body) else {
        return Err(malformed(
            action,
            "the body is not a JSON object".to_owned(),
        ));
    };
    let Some(code) = reply.get("code").and_then(integer) else {
        return Err(malformed(action, "no numeric code".to_owned()));
    };
    if code == 0 {
        return Ok(reply);
    }
    let text = |name: &str| reply.get(name).and_then(Value::as_str).unwrap_or("");
    Err(CloudError::new(
        action,
        TencentCode::Legacy {
            code,
            code_desc: text("codeDesc"),
        },
        text("message"),
        None,
    ))
}

/// `data.taskId`, or a top-level `taskId` (Tencent's own page shows both); a number or a
/// string.
fn task_id(reply: &Map<String, Value>) -> Option<String> {
    let value = reply
        .get("data")
        .and_then(|data| data.get("taskId"))
        .or_else(|| reply.get("taskId"))?;
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// An integer given as a JSON number or a numeric string.
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn malformed(action: &'static str, message: String) -> CloudError {
    CloudError::local(action, "Response.Malformed", message)
}

/// `application/x-www-form-urlencoded`: unreserved bytes as they are, every other byte
/// as `%XX`. (`%20` for a space is valid form encoding; no value here has one anyway.)
fn form_encode(params: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (name, value) in params {
        if !out.is_empty() {
            out.push('&');
        }
        percent_encode(&mut out, name);
        out.push('=');
        percent_encode(&mut out, value);
    }
    out
}

fn percent_encode(out: &mut String, text: &str) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use super::super::ErrorClass;
    use super::super::credentials::{CredentialSource, Secret};
    use super::super::test_http::TestServer;
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            secret_id: Secret::new("AKIDtest"),
            secret_key: Secret::new("the-secret-key"),
            token: Some(Secret::new("tok+/=")),
            expires_at: Some(1),
            source: CredentialSource::Config,
        }
    }

    /// Decodes what [`form_encode`] produced (the test's own decoder, kept trivial).
    fn form_decode(body: &[u8]) -> BTreeMap<String, String> {
        let decode = |s: &str| {
            let bytes = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).unwrap()
        };
        std::str::from_utf8(body)
            .unwrap()
            .split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap();
                (decode(k), decode(v))
            })
            .collect()
    }

    async fn api(answer: &'static str, method: LegacySignMethod) -> (LegacyApi, TestServer) {
        let server = TestServer::start(move |_| (200, answer.to_owned())).await;
        let endpoint = Endpoint::parse(&format!("{}/v2/index.php", server.base), true).unwrap();
        let api = LegacyApi::new(
            crate::cloud::http_client_builder().build().expect("client"),
            endpoint,
            "ap-guangzhou".into(),
            method,
        );
        (api, server)
    }

    #[tokio::test]
    async fn unassign_sends_signed_form_params_and_reads_data_task_id() {
        for method in [LegacySignMethod::HmacSha256, LegacySignMethod::HmacSha1] {
            let (api, server) = api(
                r#"{"code":0,"message":"","codeDesc":"Success","data":{"taskId":16284}}"#,
                method,
            )
            .await;
            let ips = [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)];
            let task = api
                .unassign(&creds(), 1_465_185_768, "vpc-1", "eni-1", &ips)
                .await
                .unwrap();
            assert_eq!(task.task_id, "16284");
            assert_eq!(task.protocol, Protocol::Legacy);

            let req = &server.requests()[0];
            assert_eq!(req.method, "POST");
            assert_eq!(req.path, "/v2/index.php");
            let mut params = form_decode(&req.body);
            assert_eq!(params["Action"], UNASSIGN);
            assert_eq!(params["privateIpAddress.0"], "10.0.0.2");
            assert_eq!(params["privateIpAddress.1"], "10.0.0.3");
            assert_eq!(params["vpcId"], "vpc-1");
            assert_eq!(params["networkInterfaceId"], "eni-1");
            assert_eq!(params["Token"], "tok+/=");
            assert_eq!(params["SignatureMethod"], method.as_str());
            assert!(params["Nonce"].parse::<u32>().unwrap() > 0);
            let signature = params.remove("Signature").unwrap();
            let sts = legacy_string_to_sign("POST", &req.headers["host"], "/v2/index.php", &params);
            assert_eq!(signature, legacy_sign(&sts, "the-secret-key", method));
        }
    }

    #[test]
    fn task_id_may_be_top_level_or_a_string() {
        let reply = parse_reply(UNASSIGN, br#"{"code":0,"taskId":"77"}"#).unwrap();
        assert_eq!(task_id(&reply).as_deref(), Some("77"));
        let reply = parse_reply(UNASSIGN, br#"{"code":"0","data":{"taskId":78}}"#).unwrap();
        assert_eq!(task_id(&reply).as_deref(), Some("78"));
        let reply = parse_reply(UNASSIGN, br#"{"code":0,"data":{}}"#).unwrap();
        assert_eq!(task_id(&reply), None);
    }

    #[test]
    fn errors_are_classified_by_code_desc_then_number() {
        let err = parse_reply(
            UNASSIGN,
            br#"{"code":4000,"message":"primary","codeDesc":"InvalidPrivateip.IsPrimary"}"#,
        )
        .unwrap_err();
        assert_eq!(err.class, ErrorClass::Refused);
        assert_eq!(err.code, "InvalidPrivateip.IsPrimary (4000)");
        let err = parse_reply(UNASSIGN, br#"{"code":5100,"message":"busy"}"#).unwrap_err();
        assert_eq!(err.class, ErrorClass::RetryLater);
        let err = parse_reply(UNASSIGN, br#"{"code":4500,"codeDesc":""}"#).unwrap_err();
        assert_eq!(err.class, ErrorClass::RefreshCredentials);
    }

    #[test]
    fn malformed_replies_are_transient_and_never_panic() {
        for body in [
            &b""[..],
            b"[]",
            b"{}",
            br#"{"code":null}"#,
            br#"{"code":"x"}"#,
            br#"{"code":1.5}"#,
            b"\xff",
        ] {
            let err = parse_reply(UNASSIGN, body).unwrap_err();
            assert_eq!(err.code, "Response.Malformed");
            assert_eq!(err.class, ErrorClass::RetryLater);
        }
    }

    #[tokio::test]
    async fn task_status_maps_0_1_2() {
        for (answer, expected) in [
            (
                r#"{"code":0,"data":{"status":0}}"#,
                Some(TaskStatus::Success),
            ),
            (
                r#"{"code":0,"data":{"status":1}}"#,
                Some(TaskStatus::Failed),
            ),
            (
                r#"{"code":0,"data":{"status":"2"}}"#,
                Some(TaskStatus::Running),
            ),
            (r#"{"code":0,"data":{"status":9}}"#, None),
            (r#"{"code":0}"#, None),
        ] {
            let (api, server) = api(answer, LegacySignMethod::HmacSha256).await;
            let got = api.task_status(&creds(), 1, "42").await.ok();
            assert_eq!(got, expected, "{answer}");
            assert_eq!(form_decode(&server.requests()[0].body)["taskId"], "42");
        }
    }

    #[test]
    fn form_encoding_escapes_reserved_bytes() {
        let params = BTreeMap::from([("a.0".to_owned(), "x+/= y&".to_owned())]);
        assert_eq!(form_encode(&params), "a.0=x%2B%2F%3D%20y%26");
    }
}
