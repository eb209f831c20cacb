//! Signature verification for both API protocols, with `enisync::cloud::sign` (the fake
//! has no signing code of its own).
//!
//! Checks, in order: the request carries a credential of the expected shape; the
//! SecretId is known; the timestamp is within the window of the fake's clock; the
//! signature matches; a temporary key comes with its token and has not expired.

use std::collections::BTreeMap;

use enisync::cloud::sign::{
    LegacySignMethod, TC3_SIGNED_HEADERS, Tc3Request, constant_time_eq, legacy_sign,
    legacy_string_to_sign, parse_tc3_authorization, tc3_sign,
};

use crate::state::{Key, World};

/// The path the legacy API is served (and signed) at.
pub const LEGACY_PATH: &str = "/v2/index.php";
/// The signing scope's service name.
pub const SERVICE: &str = "vpc";

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No or unparsable credential.
    InvalidAuthorization(String),
    SecretIdNotFound,
    SignatureExpire(String),
    SignatureFailure(String),
    TokenFailure(String),
}

impl AuthError {
    /// The API 3.0 code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidAuthorization(_) => "AuthFailure.InvalidAuthorization",
            Self::SecretIdNotFound => "AuthFailure.SecretIdNotFound",
            Self::SignatureExpire(_) => "AuthFailure.SignatureExpire",
            Self::SignatureFailure(_) => "AuthFailure.SignatureFailure",
            Self::TokenFailure(_) => "AuthFailure.TokenFailure",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::SecretIdNotFound => "the SecretId is not found".to_string(),
            Self::InvalidAuthorization(m)
            | Self::SignatureExpire(m)
            | Self::SignatureFailure(m)
            | Self::TokenFailure(m) => m.clone(),
        }
    }
}

/// What a TC3 request presents.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tc3Input<'a> {
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub token: Option<&'a str>,
    pub body: &'a [u8],
}

/// Verifies a TC3-HMAC-SHA256 request; returns the SecretId.
pub(crate) fn verify_tc3(world: &World, req: &Tc3Input<'_>) -> Result<String, AuthError> {
    let header = req.authorization.ok_or_else(|| {
        AuthError::InvalidAuthorization("missing Authorization header".to_string())
    })?;
    let auth = parse_tc3_authorization(header).ok_or_else(|| {
        AuthError::InvalidAuthorization("Authorization is not a TC3-HMAC-SHA256 header".into())
    })?;
    let timestamp: i64 = req
        .timestamp
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| {
            AuthError::InvalidAuthorization("missing or invalid X-TC-Timestamp".to_string())
        })?;
    let key = world
        .keys
        .get(auth.secret_id)
        .ok_or(AuthError::SecretIdNotFound)?;
    check_window(world, timestamp)?;
    if auth.signed_headers != TC3_SIGNED_HEADERS {
        return Err(AuthError::SignatureFailure(format!(
            "the fake verifies SignedHeaders={TC3_SIGNED_HEADERS} only, got {}",
            auth.signed_headers
        )));
    }
    if auth.service != SERVICE {
        return Err(AuthError::SignatureFailure(format!(
            "credential scope names service {:?}, expected {SERVICE:?}",
            auth.service
        )));
    }
    let expected = tc3_sign(
        &Tc3Request {
            method: req.method,
            host: req.host.unwrap_or(""),
            query: req.query,
            content_type: req.content_type.unwrap_or(""),
            payload: req.body,
            service: SERVICE,
            timestamp,
        },
        &key.secret_key,
    );
    if auth.date != expected.date {
        return Err(AuthError::SignatureFailure(format!(
            "credential date {} is not the UTC date {} of X-TC-Timestamp",
            auth.date, expected.date
        )));
    }
    if !constant_time_eq(auth.signature, &expected.signature) {
        return Err(AuthError::SignatureFailure(
            "the provided signature does not match".to_string(),
        ));
    }
    check_token(world, key, req.token)?;
    Ok(auth.secret_id.to_string())
}

/// Verifies a legacy (API 2.0) request; returns the SecretId. `params` are all received
/// parameters, `Signature` included.
pub(crate) fn verify_legacy(
    world: &World,
    method: &str,
    host: Option<&str>,
    params: &BTreeMap<String, String>,
) -> Result<String, AuthError> {
    let secret_id = params
        .get("SecretId")
        .ok_or_else(|| AuthError::InvalidAuthorization("missing SecretId".to_string()))?;
    let signature = params
        .get("Signature")
        .ok_or_else(|| AuthError::InvalidAuthorization("missing Signature".to_string()))?;
    let timestamp: i64 = params
        .get("Timestamp")
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| AuthError::InvalidAuthorization("missing or invalid Timestamp".into()))?;
    if params.get("Nonce").is_none_or(|n| n.is_empty()) {
        return Err(AuthError::InvalidAuthorization("missing Nonce".to_string()));
    }
    let key = world
        .keys
        .get(secret_id)
        .ok_or(AuthError::SecretIdNotFound)?;
    check_window(world, timestamp)?;
    let sign_method =
        LegacySignMethod::from_param(params.get("SignatureMethod").map(String::as_str));
    let string_to_sign = legacy_string_to_sign(method, host.unwrap_or(""), LEGACY_PATH, params);
    let expected = legacy_sign(&string_to_sign, &key.secret_key, sign_method);
    if !constant_time_eq(signature, &expected) {
        return Err(AuthError::SignatureFailure(
            "the provided signature does not match".to_string(),
        ));
    }
    check_token(world, key, params.get("Token").map(String::as_str))?;
    Ok(secret_id.clone())
}

fn check_window(world: &World, timestamp: i64) -> Result<(), AuthError> {
    let now = world.now_s();
    if now.abs_diff(timestamp) > world.signature_window_s.unsigned_abs() {
        return Err(AuthError::SignatureExpire(format!(
            "timestamp {timestamp} is more than {} s from server time {now}",
            world.signature_window_s
        )));
    }
    Ok(())
}

fn check_token(world: &World, key: &Key, given: Option<&str>) -> Result<(), AuthError> {
    let Some(expected) = &key.token else {
        return Ok(());
    };
    match given {
        None | Some("") => Err(AuthError::TokenFailure(
            "a temporary key needs its token".to_string(),
        )),
        Some(token) if !constant_time_eq(token, expected) => Err(AuthError::TokenFailure(
            "the token does not belong to this key".to_string(),
        )),
        Some(_) if key.expires_ms.is_some_and(|exp| world.now_ms() >= exp) => Err(
            AuthError::TokenFailure("the temporary key has expired".to_string()),
        ),
        Some(_) => Ok(()),
    }
}
