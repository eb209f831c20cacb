//! Request signing for both Tencent Cloud protocols.
//!
//! Pure functions over explicit inputs (time, nonce, secrets are parameters, never read
//! here), so the same code signs in the client and verifies in the fake cloud, and the
//! unit tests reproduce the official SDKs' vectors in `tests/data/signing.json`.
//!
//! - API 3.0: TC3-HMAC-SHA256 over a canonical request (`docs/cloud-api.md`, "API 3.0").
//! - Legacy API 2.0: HmacSHA1 / HmacSHA256 over `METHOD host path ? sorted k=v&…` (`docs/cloud-api.md`, "The legacy API").

use std::collections::BTreeMap;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::wallclock::utc_date;

/// The algorithm name that opens a TC3 `Authorization` header.
pub const TC3_ALGORITHM: &str = "TC3-HMAC-SHA256";
/// Only these two headers are signed; both SDKs do the same.
pub const TC3_SIGNED_HEADERS: &str = "content-type;host";

/// Everything a TC3 signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Tc3Request<'a> {
    /// `POST` or `GET`, upper case.
    pub method: &'a str,
    /// The `Host` header exactly as sent (with `:port` when not the default).
    pub host: &'a str,
    /// The query string after `?` (empty for POST).
    pub query: &'a str,
    /// The `Content-Type` header exactly as sent.
    pub content_type: &'a str,
    /// The body bytes exactly as sent.
    pub payload: &'a [u8],
    /// Service name of the signing scope (`vpc`).
    pub service: &'a str,
    /// `X-TC-Timestamp`, Unix seconds.
    pub timestamp: i64,
}

/// The intermediate and final values of one TC3 signature; tests compare each step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tc3Signature {
    pub canonical_request: String,
    pub string_to_sign: String,
    /// Lower-case hex.
    pub signature: String,
    /// `YYYY-MM-DD` (UTC) of the timestamp; part of the credential scope.
    pub date: String,
}

impl Tc3Signature {
    /// The `Authorization` header value for `secret_id`.
    pub fn authorization(&self, secret_id: &str, service: &str) -> String {
        format!(
            "{TC3_ALGORITHM} Credential={secret_id}/{}/{service}/tc3_request, SignedHeaders={TC3_SIGNED_HEADERS}, Signature={}",
            self.date, self.signature
        )
    }
}

/// Signs a request with TC3-HMAC-SHA256.
pub fn tc3_sign(req: &Tc3Request<'_>, secret_key: &str) -> Tc3Signature {
    let canonical_request = format!(
        "{}\n/\n{}\ncontent-type:{}\nhost:{}\n\n{TC3_SIGNED_HEADERS}\n{}",
        req.method,
        req.query,
        req.content_type,
        req.host,
        hex::encode(Sha256::digest(req.payload)),
    );
    let date = utc_date(req.timestamp);
    let string_to_sign = format!(
        "{TC3_ALGORITHM}\n{}\n{date}/{}/tc3_request\n{}",
        req.timestamp,
        req.service,
        hex::encode(Sha256::digest(canonical_request.as_bytes())),
    );
    let secret_date = hmac_sha256(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let secret_service = hmac_sha256(&secret_date, req.service.as_bytes());
    let secret_signing = hmac_sha256(&secret_service, b"tc3_request");
    let signature = hex::encode(hmac_sha256(&secret_signing, string_to_sign.as_bytes()));
    Tc3Signature {
        canonical_request,
        string_to_sign,
        signature,
        date,
    }
}

/// The parts of a TC3 `Authorization` header, for verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tc3Authorization<'a> {
    pub secret_id: &'a str,
    pub date: &'a str,
    pub service: &'a str,
    pub signed_headers: &'a str,
    pub signature: &'a str,
}

/// Parses `TC3-HMAC-SHA256 Credential=ID/DATE/SERVICE/tc3_request, SignedHeaders=…, Signature=…`.
/// Returns `None` when the header is not of that exact shape.
pub fn parse_tc3_authorization(header: &str) -> Option<Tc3Authorization<'_>> {
    let rest = header.strip_prefix(TC3_ALGORITHM)?.strip_prefix(' ')?;
    let mut parts = rest.split(", ");
    let credential = parts.next()?.strip_prefix("Credential=")?;
    let signed_headers = parts.next()?.strip_prefix("SignedHeaders=")?;
    let signature = parts.next()?.strip_prefix("Signature=")?;
    if parts.next().is_some() {
        return None;
    }
    let mut scope = credential.split('/');
    let auth = Tc3Authorization {
        secret_id: scope.next()?,
        date: scope.next()?,
        service: scope.next()?,
        signed_headers,
        signature,
    };
    (scope.next()? == "tc3_request" && scope.next().is_none()).then_some(auth)
}

/// Legacy (API 2.0) signature methods; `SignatureMethod` itself is a signed parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
pub enum LegacySignMethod {
    #[serde(rename = "HmacSHA1")]
    HmacSha1,
    #[default]
    #[serde(rename = "HmacSHA256")]
    HmacSha256,
}

impl LegacySignMethod {
    /// The wire name (`HmacSHA1`, `HmacSHA256`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha1 => "HmacSHA1",
            Self::HmacSha256 => "HmacSHA256",
        }
    }

    /// As the server reads it: SHA-256 only for the exact string `HmacSHA256`.
    pub fn from_param(value: Option<&str>) -> Self {
        match value {
            Some("HmacSHA256") => Self::HmacSha256,
            _ => Self::HmacSha1,
        }
    }
}

/// The string a legacy signature covers: `METHODhostpath?k=v&…`, names sorted by byte
/// order, values raw (not percent-encoded). `Signature` itself is never part of it.
pub fn legacy_string_to_sign(
    method: &str,
    host: &str,
    path: &str,
    params: &BTreeMap<String, String>,
) -> String {
    let mut out = format!("{method}{host}{path}?");
    let mut first = true;
    for (name, value) in params
        .iter()
        .filter(|(name, _)| name.as_str() != "Signature")
    {
        if !first {
            out.push('&');
        }
        first = false;
        // The SDK signs `_` in names as `.`; we only ever send dotted names, but the fake
        // cloud must verify what an SDK would send.
        out.push_str(&name.replace('_', "."));
        out.push('=');
        out.push_str(value);
    }
    out
}

/// Signs a legacy request; returns the standard Base64 of the HMAC digest.
pub fn legacy_sign(string_to_sign: &str, secret_key: &str, method: LegacySignMethod) -> String {
    let digest = match method {
        LegacySignMethod::HmacSha1 => {
            let mut mac = Hmac::<Sha1>::new_from_slice(secret_key.as_bytes())
                .expect("HMAC accepts keys of any length");
            mac.update(string_to_sign.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        LegacySignMethod::HmacSha256 => {
            hmac_sha256(secret_key.as_bytes(), string_to_sign.as_bytes())
        }
    };
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Compares two signatures in time independent of where they first differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Vectors {
        tc3: Vec<Tc3Vector>,
        legacy: Vec<LegacyVector>,
    }

    #[derive(Deserialize)]
    struct Tc3Vector {
        action: String,
        method: String,
        host: String,
        service: String,
        timestamp: i64,
        query: String,
        content_type: String,
        payload: String,
        secret_id: String,
        secret_key: String,
        canonical_request: String,
        string_to_sign: String,
        signature: String,
        headers: BTreeMap<String, String>,
    }

    #[derive(Deserialize)]
    struct LegacyVector {
        method: String,
        host: String,
        path: String,
        secret_key: String,
        sign_method: String,
        params: BTreeMap<String, String>,
        string_to_sign: String,
        signature: String,
    }

    /// The vectors computed by the official Python SDKs (`about` in the file names
    /// them), kept in the repository at `tests/data/signing.json`.
    fn vectors() -> Vectors {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/signing.json");
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("signing vectors at {path}: {e}"));
        serde_json::from_str(&text).expect("signing.json parses")
    }

    #[test]
    fn tc3_reproduces_every_sdk_vector() {
        let vectors = vectors().tc3;
        assert!(vectors.len() >= 8, "expected the full tc3 list");
        for v in &vectors {
            let sig = tc3_sign(
                &Tc3Request {
                    method: &v.method,
                    host: &v.host,
                    query: &v.query,
                    content_type: &v.content_type,
                    payload: v.payload.as_bytes(),
                    service: &v.service,
                    timestamp: v.timestamp,
                },
                &v.secret_key,
            );
            assert_eq!(sig.canonical_request, v.canonical_request, "{}", v.action);
            assert_eq!(sig.string_to_sign, v.string_to_sign, "{}", v.action);
            assert_eq!(
                sig.signature, v.signature,
                "{} at {}",
                v.action, v.timestamp
            );
            assert_eq!(
                sig.authorization(&v.secret_id, &v.service),
                v.headers["Authorization"],
                "{}",
                v.action
            );
            let parsed = parse_tc3_authorization(&v.headers["Authorization"]).expect("parses");
            assert_eq!(parsed.signature, v.signature);
            assert_eq!(parsed.secret_id, v.secret_id);
        }
    }

    #[test]
    fn legacy_reproduces_every_sdk_vector() {
        let vectors = vectors().legacy;
        assert!(vectors.len() >= 10, "expected the full legacy list");
        for v in &vectors {
            let sts = legacy_string_to_sign(&v.method, &v.host, &v.path, &v.params);
            assert_eq!(sts, v.string_to_sign);
            let method = LegacySignMethod::from_param(Some(&v.sign_method));
            assert_eq!(method.as_str(), v.sign_method);
            assert_eq!(
                legacy_sign(&sts, &v.secret_key, method),
                v.signature,
                "{sts}"
            );
        }
    }

    #[test]
    fn tencent_published_tc3_vector() {
        // Tencent's own documentation example of a TC3 signature.
        let body = r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
        let sig = tc3_sign(
            &Tc3Request {
                method: "POST",
                host: "cvm.tencentcloudapi.com",
                query: "",
                content_type: "application/json; charset=utf-8",
                payload: body.as_bytes(),
                service: "cvm",
                timestamp: 1_551_113_065,
            },
            "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
        );
        assert_eq!(
            sig.signature,
            "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
    }

    #[test]
    fn authorization_parser_rejects_other_shapes() {
        assert!(parse_tc3_authorization("TC3-HMAC-SHA256 Credential=a/b/c/tc3_request").is_none());
        assert!(
            parse_tc3_authorization(
                "HMAC Credential=a/b/c/tc3_request, SignedHeaders=x, Signature=y"
            )
            .is_none()
        );
        assert!(
            parse_tc3_authorization(
                "TC3-HMAC-SHA256 Credential=a/b/c/other, SignedHeaders=x, Signature=y"
            )
            .is_none()
        );
    }

    #[test]
    fn constant_time_eq_matches_eq() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
