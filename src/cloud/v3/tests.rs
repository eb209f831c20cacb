#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use super::super::ErrorClass;
use super::super::credentials::{CredentialSource, Secret};
use super::super::sign::parse_tc3_authorization;
use super::super::test_http::TestServer;
use super::*;

fn creds(token: Option<&str>) -> Credentials {
    Credentials {
        secret_id: Secret::new("AKIDtest"),
        secret_key: Secret::new("the-secret-key"),
        token: token.map(Secret::new),
        expires_at: None,
        source: CredentialSource::Config,
    }
}

async fn api(answer: &'static str) -> (V3Api, TestServer) {
    let server = TestServer::start(move |_| (200, answer.to_owned())).await;
    let endpoint = Endpoint::parse(&format!("{}/", server.base), true).unwrap();
    let api = V3Api::new(
        crate::cloud::http_client_builder().build().expect("client"),
        endpoint,
        "ap-guangzhou".to_owned(),
    );
    (api, server)
}

#[tokio::test]
async fn unassign_sends_signed_headers_and_returns_the_request_id_as_task() {
    let (api, server) = api(r#"{"Response":{"RequestId":"req-1"}}"#).await;
    let ips = [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)];
    let task = api
        .unassign(&creds(Some("tok")), 1_700_000_000, "eni-1", &ips)
        .await
        .unwrap();
    assert_eq!(task.task_id, "req-1");
    assert_eq!(task.request_id.as_deref(), Some("req-1"));
    assert_eq!(task.protocol, Protocol::V3);

    let req = &server.requests()[0];
    let h = &req.headers;
    assert_eq!(req.method, "POST");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["x-tc-action"], UNASSIGN);
    assert_eq!(h["x-tc-version"], VERSION);
    assert_eq!(h["x-tc-timestamp"], "1700000000");
    assert_eq!(h["x-tc-region"], "ap-guangzhou");
    assert_eq!(h["x-tc-token"], "tok");
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body,
        json!({"NetworkInterfaceId":"eni-1","PrivateIpAddresses":[
            {"PrivateIpAddress":"10.0.0.2"},{"PrivateIpAddress":"10.0.0.3"}]})
    );
    // The signature covers exactly the Host header and bytes that were sent.
    let expected = tc3_sign(
        &Tc3Request {
            method: "POST",
            host: &h["host"],
            query: "",
            content_type: &h["content-type"],
            payload: &req.body,
            service: SERVICE,
            timestamp: 1_700_000_000,
        },
        "the-secret-key",
    );
    let auth = parse_tc3_authorization(&h["authorization"]).unwrap();
    assert_eq!(auth.signature, expected.signature);
    assert_eq!(auth.secret_id, "AKIDtest");
    assert_eq!(h["host"], api.endpoints.get(0).host);
}

#[tokio::test]
async fn describe_parses_enis_and_sends_the_instance_filter() {
    let (api, server) = api(
        r#"{"Response":{"TotalCount":1,"RequestId":"r","NetworkInterfaceSet":[{
            "NetworkInterfaceId":"eni-1","MacAddress":"20:90:6F:F5:34:C7","VpcId":"vpc-1",
            "SubnetId":"subnet-1","State":"AVAILABLE","Primary":false,
            "Attachment":{"InstanceId":"ins-1","DeviceIndex":1},
            "PrivateIpAddressSet":[
              {"PrivateIpAddress":"10.0.0.5","Primary":true,"State":"AVAILABLE","AddressId":""},
              {"PrivateIpAddress":"10.0.0.6","Primary":false,"State":"AVAILABLE","AddressId":"eip-1"}]}]}}"#,
    )
    .await;
    let (enis, total) = api
        .describe_enis(&creds(None), 1, "ins-1", 0)
        .await
        .unwrap();
    assert_eq!(total, 1);
    let eni = &enis[0];
    assert_eq!(eni.mac, MacAddr::parse("20:90:6f:f5:34:c7").unwrap());
    assert_eq!(
        eni.attachment,
        Some(Attachment {
            instance_id: "ins-1".into(),
            device_index: 1
        })
    );
    assert!(eni.ips[0].primary && eni.ips[0].eip.is_none());
    assert_eq!(eni.ips[1].eip.as_deref(), Some("eip-1"));
    let req = &server.requests()[0];
    assert!(!req.headers.contains_key("x-tc-token"));
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["Filters"][0]["Name"], "attachment.instance-id");
    assert_eq!(body["Filters"][0]["Values"][0], "ins-1");
    assert_eq!(body["Limit"], 100);
    assert_eq!(body["Offset"], 0);
}

/// `Ipv6AddressSet`: any spelling of an address is the same 128-bit value, public
/// access (`AddressId`) is an EIP, a null set is none, and an address that does not
/// parse makes the answer malformed (a classified error, never a panic).
#[test]
fn ipv6_address_set_parses_to_128_bit_values() {
    let page = |set: &str| {
        format!(
            r#"{{"Response":{{"TotalCount":1,"RequestId":"r","NetworkInterfaceSet":[{{
            "NetworkInterfaceId":"eni-1","MacAddress":"20:90:6F:F5:34:C7","VpcId":"vpc-1",
            "SubnetId":"subnet-1","PrivateIpAddressSet":[],"Ipv6AddressSet":{set}}}]}}}}"#
        )
    };
    let (enis, _) = parse_eni_page(
        page(
            r#"[{"Address":"2402:4E00:0001:0000:0000:0000:0000:0011","Primary":false,
               "State":"AVAILABLE","AddressId":"","PublicIpAddress":"","AddressType":"GUA"},
              {"Address":"2402:4e00:1::10","Primary":true,"State":"AVAILABLE"},
              {"Address":"2402:4e00:1::12","AddressId":"eip-v6","State":"AVAILABLE"}]"#,
        )
        .as_bytes(),
    )
    .unwrap();
    let eni = &enis[0];
    let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
    let entry = eni.ip(v6("2402:4e00:1::11")).expect("found by value");
    assert!(!entry.primary && entry.eip.is_none() && entry.state == "AVAILABLE");
    assert!(eni.ip(v6("2402:4e00:1::10")).unwrap().primary);
    assert_eq!(
        eni.ip(v6("2402:4e00:1::12")).unwrap().eip.as_deref(),
        Some("eip-v6")
    );
    assert!(
        parse_eni_page(page("null").as_bytes()).unwrap().0[0]
            .ips
            .is_empty()
    );
    for bad in [
        r#"[{"Address":"2402:4e00:1::g"}]"#,
        r#"[{"Address":"10.0.0.1"}]"#,
        r#"[{"Address":"fe80::1%eth0"}]"#,
        r#"[{"Address":42}]"#,
        r#"[{}]"#,
    ] {
        let err = parse_eni_page(page(bad).as_bytes()).unwrap_err();
        assert_eq!(err.code, "Response.Malformed", "{bad}");
        assert_eq!(err.class, ErrorClass::RetryLater, "{bad}");
    }
}

#[test]
fn errors_are_classified_and_keep_the_request_id() {
    let err = parse_response::<RequestOnly>(
        UNASSIGN,
        br#"{"Response":{"Error":{"Code":"LimitExceeded.ActionLimited","Message":"slow down"},"RequestId":"r-9"}}"#,
    )
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::RetryLater);
    assert_eq!(err.code, "LimitExceeded.ActionLimited");
    assert_eq!(err.request_id.as_deref(), Some("r-9"));
    let err = parse_response::<RequestOnly>(
        UNASSIGN,
        br#"{"Response":{"Error":{"Code":"UnsupportedOperation.PrimaryIp","Message":""}}}"#,
    )
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::Refused);
}

#[test]
fn no_reply_shape_panics_and_all_are_malformed() {
    let bodies: &[&[u8]] = &[
        b"",
        b"<html>",
        b"null",
        b"[]",
        b"{}",
        br#"{"Response":null}"#,
        br#"{"Response":"x"}"#,
        br#"{"Response":{}}"#,
        br#"{"Response":{"RequestId":42}}"#,
        br#"{"Response":{"Error":{}}}"#,
        br#"{"Response":{"Error":"boom"}}"#,
        br#"{"Response":{"TotalCount":-1}}"#,
        br#"{"Response":{"TotalCount":1,"NetworkInterfaceSet":[{"MacAddress":"zz"}]}}"#,
        b"\xff\xfe",
    ];
    for body in bodies {
        let a = parse_response::<RequestOnly>(UNASSIGN, body).unwrap_err();
        let b = parse_response::<EniPage>(DESCRIBE_ENIS, body);
        assert_eq!(
            a.code,
            "Response.Malformed",
            "{:?}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(a.class, ErrorClass::RetryLater);
        if let Err(b) = b {
            assert_eq!(b.class, ErrorClass::RetryLater);
        }
    }
}

#[tokio::test]
async fn an_unknown_task_status_is_malformed() {
    let (api, _server) = api(r#"{"Response":{"Status":"WEIRD","RequestId":"r"}}"#).await;
    let err = api.task_status(&creds(None), 1, "t").await.unwrap_err();
    assert_eq!(err.code, "Response.Malformed");
}

#[tokio::test]
async fn non_200_and_dead_endpoints_are_transient() {
    let server = TestServer::start(|_| (503, "down".to_owned())).await;
    let api = V3Api::new(
        crate::cloud::http_client_builder().build().expect("client"),
        Endpoint::parse(&server.base, true).unwrap(),
        "r".into(),
    );
    let err = api.task_status(&creds(None), 1, "t").await.unwrap_err();
    assert_eq!(
        (err.code.as_str(), err.class),
        ("Http.503", ErrorClass::RetryLater)
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = V3Api::new(
        crate::cloud::http_client_builder().build().expect("client"),
        Endpoint::parse(&format!("http://127.0.0.1:{port}/"), true).unwrap(),
        "r".into(),
    );
    let err = api.task_status(&creds(None), 1, "t").await.unwrap_err();
    assert_eq!(
        (err.code.as_str(), err.class),
        ("Transport.Connect", ErrorClass::RetryLater)
    );
}
