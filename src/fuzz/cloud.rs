//! The cloud's answers: API 3.0, legacy, metadata.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{bytes, fuzz};
use crate::cloud::classify::{TencentCode, classify};
use crate::cloud::{CloudError, ErrorClass, legacy, metadata, v3};

/// A JSON value built from the names the parsers look for, nested a few levels.
fn json_value(names: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        proptest::sample::select(WORDS).prop_map(|w| json!(w)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(names), inner), 0..6).prop_map(
                |fields| {
                    Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }
            ),
        ]
    })
}

/// Values a parser might give meaning to.
const WORDS: &[&str] = &[
    "",
    "SUCCESS",
    "FAILED",
    "RUNNING",
    "Success",
    "AVAILABLE",
    "10.0.1.11",
    "10.0.1.256",
    "::1",
    "2402:4e00:1::11",
    "2402:4E00:0001:0000:0000:0000:0000:0011",
    "fe80::1%eth0",
    "2402::g",
    "52:54:00:12:34:56",
    "52:54:00:12:34",
    "zz:zz:zz:zz:zz:zz",
    "eni-1",
    "ins-1",
    "0",
    "2",
    "-1",
    "18446744073709551616",
    "LimitExceeded.ActionLimited",
    "ActionLocked",
    "InvalidPrivateip.IsPrimary",
    "AuthFailure.TokenFailure",
    "ResourceNotFound",
];

const V3_NAMES: &[&str] = &[
    "Response",
    "Error",
    "Code",
    "Message",
    "RequestId",
    "TotalCount",
    "NetworkInterfaceSet",
    "NetworkInterfaceId",
    "MacAddress",
    "VpcId",
    "SubnetId",
    "State",
    "Primary",
    "Attachment",
    "InstanceId",
    "DeviceIndex",
    "PrivateIpAddressSet",
    "PrivateIpAddress",
    "AddressId",
    "Ipv6AddressSet",
    "Address",
    "AddressType",
    "PublicIpAddress",
    "Status",
];

const LEGACY_NAMES: &[&str] = &[
    "code", "codeDesc", "message", "data", "taskId", "status", "output",
];

/// An API answer: raw bytes, a structured JSON value, or a well-formed one with one
/// field replaced.
fn api_body(names: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(256),
        json_value(names).prop_map(|v| v.to_string().into_bytes()),
        json_value(names).prop_map(|v| json!({ "Response": v }).to_string().into_bytes()),
        (json_value(names), proptest::sample::select(names)).prop_map(|(v, name)| {
            let mut good = json!({"Response": {"RequestId": "r", "TotalCount": 1, "Status": "SUCCESS",
                "NetworkInterfaceSet": [{"NetworkInterfaceId": "eni-1", "MacAddress": "52:54:00:12:34:56",
                "VpcId": "vpc-1", "SubnetId": "s", "PrivateIpAddressSet": [{"PrivateIpAddress": "10.0.1.11"}],
                "Ipv6AddressSet": [{"Address": "2402:4e00:1::11"}]}],
                "code": 0, "data": {"taskId": 7, "status": 2}}});
            good["Response"][name] = v;
            good.to_string().into_bytes()
        }),
    ]
}

/// A classified cloud error: the class is the table's for the code, and a reply we
/// could not use is `Response.Malformed`, retried later.
fn classified(err: &CloudError) -> Result<(), TestCaseError> {
    prop_assert!(!err.code.is_empty(), "an error without a code: {err}");
    if err.code == "Response.Malformed" {
        prop_assert_eq!(err.class, ErrorClass::RetryLater);
    }
    Ok(())
}

#[test]
fn fuzz_v3_answers() {
    fuzz(2, &[], api_body(V3_NAMES), |body| {
        for result in [
            v3::parse_unassign(body).map(|_| 0),
            v3::parse_task_status(body).map(|_| 0),
            v3::parse_eni_page(body).map(|(enis, _)| enis.len()),
        ] {
            match result {
                // No ENI or IP comes from nowhere: each took bytes of the body.
                Ok(n) => prop_assert!(n <= body.len() / 8),
                Err(err) => {
                    classified(&err)?;
                    // API 3.0 codes are classified by the one table, from the code alone.
                    prop_assert_eq!(err.class, classify(TencentCode::Code(&err.code)));
                }
            }
        }
        if let Ok((enis, _)) = v3::parse_eni_page(body) {
            let ips: usize = enis.iter().map(|e| e.ips.len()).sum();
            prop_assert!(ips <= body.len() / 8);
        }
        Ok(())
    });
}

#[test]
fn fuzz_legacy_answers() {
    fuzz(2, &[], api_body(LEGACY_NAMES), |body| {
        for result in [
            legacy::parse_unassign(body).map(|t| t.task_id.len()),
            legacy::parse_task_status(body).map(|_| 0),
        ] {
            match result {
                Ok(n) => prop_assert!(n <= body.len()),
                Err(err) => classified(&err)?,
            }
        }
        // A legacy error is classified from its number and business name.
        if let Ok(Value::Object(reply)) = serde_json::from_slice::<Value>(body)
            && let Some(code) = reply.get("code").and_then(Value::as_i64)
            && code != 0
        {
            let desc = reply.get("codeDesc").and_then(Value::as_str).unwrap_or("");
            let err = legacy::parse_task_status(body).unwrap_err();
            prop_assert_eq!(
                err.class,
                classify(TencentCode::Legacy {
                    code,
                    code_desc: desc
                })
            );
        }
        Ok(())
    });
}

#[test]
fn fuzz_metadata_answers() {
    let body = prop_oneof![
        bytes(512).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        proptest::collection::vec(proptest::sample::select(WORDS), 0..8)
            .prop_map(|lines| lines.join("/\n")),
        json_value(&[
            "Code",
            "TmpSecretId",
            "TmpSecretKey",
            "Token",
            "ExpiredTime",
            "Expiration",
        ])
        .prop_map(|v| v.to_string()),
    ];
    fuzz(2, &[], body, |body| {
        let lines = body.lines().count();
        match metadata::parse_macs(Some(body.clone())) {
            Ok(macs) => prop_assert!(macs.len() <= lines),
            Err(e) => {
                let malformed = matches!(e, metadata::MetadataError::Malformed { .. });
                prop_assert!(malformed, "{}", e);
            }
        }
        match metadata::parse_ip_listing("p", Some(body.clone())) {
            Ok(ips) => prop_assert!(ips.len() <= lines),
            Err(e) => {
                // The value is shown cut short, never a whole answer.
                prop_assert!(e.to_string().chars().count() <= 800, "{}", e);
            }
        }
        let _ = metadata::parse_ip("p", body);
        let _ = crate::net::MacAddr::parse(body);
        match crate::cloud::credentials::parse_role_document("role", Some(body)) {
            Ok(keys) => prop_assert!(!keys.secret_key.expose().is_empty()),
            Err(e) => {
                // Never the body: it may hold keys.
                let text = e.to_string();
                prop_assert!(body.len() < 8 || !text.contains(body.as_str()), "{}", text);
            }
        }
        Ok(())
    });
}
