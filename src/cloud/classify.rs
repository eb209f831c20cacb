//! One mapping from whatever Tencent (or our own transport) answered to an [`ErrorClass`].
//!
//! The engine decides on the class only, so every code the cloud reference lists
//! (`docs/cloud-api.md`: the legacy envelope and actions, and API 3.0's actions and common codes) has a row in the test table below.
//! What is not known is [`ErrorClass::Refused`]: an unknown answer is parked for an
//! operator, never retried blindly and never taken for success.
//!
//! Local codes (not Tencent's) share the string namespace so that they go through the same
//! function: `Transport.*`, `Http.<status>`, `Response.Malformed` are transient;
//! `Client.*` (a request we refuse to send) and `Credentials.Missing` are refusals.

use std::fmt;

use super::ErrorClass;

/// An error code as the cloud (or our transport layer) reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TencentCode<'a> {
    /// An API 3.0 `Response.Error.Code` (`LimitExceeded.ActionLimited`), or a local code
    /// (`Transport.Timeout`, `Http.503`, `Response.Malformed`, `Client.TooManyIps`).
    Code(&'a str),
    /// A legacy (API 2.0) answer: the numeric `code` and the business name in `codeDesc`
    /// (may be empty).
    Legacy { code: i64, code_desc: &'a str },
}

impl fmt::Display for TencentCode<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => f.write_str(code),
            Self::Legacy {
                code,
                code_desc: "",
            } => write!(f, "{code}"),
            Self::Legacy { code, code_desc } => write!(f, "{code_desc} ({code})"),
        }
    }
}

/// The class of an error code. See the module documentation for the principle and the
/// test table for every listed code.
pub fn classify(code: TencentCode<'_>) -> ErrorClass {
    match code {
        TencentCode::Code(code) => classify_name(code).unwrap_or(ErrorClass::Refused),
        // A business name is more precise than the number, so it wins when we know it
        // (`InvalidPrivateip.IsPrimary` comes with a generic number).
        TencentCode::Legacy { code, code_desc } => classify_name(code_desc)
            .or_else(|| classify_legacy_number(code))
            .unwrap_or(ErrorClass::Refused),
    }
}

/// Whether an answer code is a refusal by the cloud's rate limiter (the account-wide
/// budget shared by every node): `RequestLimitExceeded` and its variants, and
/// `LimitExceeded.ActionLimited`. Counted apart on `/metrics` for a fleet's dashboard.
pub fn is_rate_limit(code: &str) -> bool {
    code == "LimitExceeded.ActionLimited" || code.starts_with("RequestLimitExceeded")
}

/// API 3.0 names, legacy business names and local codes; `None` when unknown.
fn classify_name(code: &str) -> Option<ErrorClass> {
    use ErrorClass::*;
    let class = match code {
        // The IP or the ENI is not there (any more). The caller confirms with a describe
        // before it counts the release as done.
        "ResourceNotFound"
        | "UnsupportedOperation.AttachmentNotFound"
        | "InvalidNetworkInterface.NotFound" => AlreadyGone,
        c if c.starts_with("ResourceNotFound.") => AlreadyGone,

        // Throttled, busy, or server trouble: back off and try again.
        "LimitExceeded.ActionLimited"
        | "ServiceUnavailable"
        | "ResourceUnavailable"
        | "UnsupportedOperation.MutexOperationTaskRunning"
        | "UnsupportedOperation.InvalidState"
        // An assign with our ClientToken is still being processed: ask again later
        // (docs/cloud-api.md, "Claims").
        | "UnsupportedOperation.IdempotentProcessing"
        // The legacy VPC API's "the resource is being operated on: wait for the running
        // operation to end" (a server-side code of its error list).
        | "ActionLocked"
        // A reply we could not use (see `transport` and the client's page cap): nothing
        // was learnt, so it is asked again later, never taken for an answer.
        | "Response.Malformed"
        | "Response.TooLarge"
        | "Response.TooManyPages" => RetryLater,
        c if c.starts_with("RequestLimitExceeded")
            || c.starts_with("InternalError")
            || c.starts_with("ResourceUnavailable.")
            || c.starts_with("Transport.")
            || c.starts_with("Http.") =>
        {
            RetryLater
        }

        // Temporary keys expired, or our clock is off: refresh, retry once.
        "AuthFailure.TokenFailure" | "AuthFailure.SignatureExpire" => RefreshCredentials,

        // The primary IP can never be released; the rest are configuration, permission or
        // programming errors an operator must see.
        "InvalidPrivateip.IsPrimary"
        | "UnsupportedOperation.PrimaryIp"
        | "UnauthorizedOperation.PrimaryIp"
        | "InvalidVpc.NotFound"
        | "ActionOffline"
        | "DryRunOperation"
        | "FailedOperation"
        | "InvalidAction"
        | "InvalidParameter"
        | "InvalidParameterValue"
        | "InvalidRequest"
        | "IpInBlacklist"
        | "IpNotInWhitelist"
        | "LimitExceeded"
        | "MissingParameter"
        | "NoSuchProduct"
        | "NoSuchVersion"
        | "RequestSizeLimitExceeded"
        | "ResourceInUse"
        | "ResourceInsufficient"
        | "ResponseSizeLimitExceeded"
        | "UnauthorizedOperation"
        | "UnknownParameter"
        | "UnsupportedOperation"
        | "UnsupportedProtocol"
        | "UnsupportedRegion" => Refused,
        c if c.starts_with("AuthFailure.")
            || c.starts_with("InvalidParameter.")
            || c.starts_with("InvalidParameterValue.")
            || c.starts_with("Client.")
            || c.starts_with("Credentials.") =>
        {
            Refused
        }
        _ => return None,
    };
    Some(class)
}

/// Legacy numeric codes (`docs/cloud-api.md`, "The legacy API"); `None` when unknown.
fn classify_legacy_number(code: i64) -> Option<ErrorClass> {
    use ErrorClass::*;
    let class = match code {
        // "Resource does not exist".
        5000 => AlreadyGone,
        // "Resource operation failed": the legacy busy answer (a resource locked by a
        // running task); calling the legacy unassign rapidly is known to produce it.
        5100 => RetryLater,
        // Request-count quota (the CVM legacy page describes 4400 as "the number of
        // requests exceeded the quota"): a throttle, so back off.
        4400 => RetryLater,
        // Request expired (4200) and replay/timestamp window (4500): a clock problem, or a
        // nonce that collided; a fresh timestamp and nonce fix both.
        4200 | 4500 => RefreshCredentials,
        // Parameters (4000), signature (4100), CAM/key/token/MFA (4101–4106, 4110), access
        // denied (4300), HTTPS only (4600), purchase failed (5200).
        4000 | 4100..=4106 | 4110 | 4300 | 4600 | 5200 => Refused,
        _ => return None,
    };
    Some(class)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use super::*;
    use ErrorClass::*;

    /// Every API 3.0 code `docs/cloud-api.md` lists for the three actions and the common
    /// table (and the primary-IP codes it mentions), each with the class it is given there.
    const V3_TABLE: &[(&str, ErrorClass)] = &[
        // UnassignPrivateIpAddresses
        ("InvalidParameterValue.DuplicatePara", Refused),
        ("InvalidParameterValue.LimitExceeded", Refused),
        ("InvalidParameterValue.Malformed", Refused),
        ("LimitExceeded.ActionLimited", RetryLater),
        ("ResourceNotFound", AlreadyGone),
        ("UnsupportedOperation", Refused),
        ("UnsupportedOperation.AttachmentNotFound", AlreadyGone),
        ("UnsupportedOperation.InvalidState", RetryLater),
        ("UnsupportedOperation.MutexOperationTaskRunning", RetryLater),
        // DescribeVpcTaskResult
        ("InternalError.ModuleError", RetryLater),
        ("InvalidParameterValue", Refused),
        ("UnauthorizedOperation", Refused),
        // common codes
        ("ActionOffline", Refused),
        ("AuthFailure.InvalidAuthorization", Refused),
        ("AuthFailure.InvalidSecretId", Refused),
        ("AuthFailure.MFAFailure", Refused),
        ("AuthFailure.SecretIdNotFound", Refused),
        ("AuthFailure.SignatureExpire", RefreshCredentials),
        ("AuthFailure.SignatureFailure", Refused),
        ("AuthFailure.TokenFailure", RefreshCredentials),
        ("AuthFailure.UnauthorizedOperation", Refused),
        ("DryRunOperation", Refused),
        ("FailedOperation", Refused),
        ("InternalError", RetryLater),
        ("InvalidAction", Refused),
        ("InvalidParameter", Refused),
        ("InvalidRequest", Refused),
        ("IpInBlacklist", Refused),
        ("IpNotInWhitelist", Refused),
        ("LimitExceeded", Refused),
        ("MissingParameter", Refused),
        ("NoSuchProduct", Refused),
        ("NoSuchVersion", Refused),
        ("RequestLimitExceeded", RetryLater),
        (
            "RequestLimitExceeded.GlobalRegionUinLimitExceeded",
            RetryLater,
        ),
        ("RequestLimitExceeded.IPLimitExceeded", RetryLater),
        ("RequestLimitExceeded.UinLimitExceeded", RetryLater),
        ("RequestSizeLimitExceeded", Refused),
        ("ResourceInUse", Refused),
        ("ResourceInsufficient", Refused),
        ("ResourceUnavailable", RetryLater),
        ("ResponseSizeLimitExceeded", Refused),
        ("ServiceUnavailable", RetryLater),
        ("UnknownParameter", Refused),
        ("UnsupportedProtocol", Refused),
        ("UnsupportedRegion", Refused),
        // MigratePrivateIpAddress and AssignPrivateIpAddresses (claims)
        ("UnsupportedOperation.IdempotentProcessing", RetryLater),
        ("UnsupportedOperation.IdempotentParameterMismatch", Refused),
        ("UnsupportedOperation.ResourceMismatch", Refused),
        ("InvalidParameterValue.Range", Refused),
        ("InvalidParameterValue.Reserved", Refused),
        ("ResourceInsufficient.Subnet", Refused),
        ("FailedOperation.NetDetectTimeOut", Refused),
        // primary-IP codes
        ("UnsupportedOperation.PrimaryIp", Refused),
        ("UnauthorizedOperation.PrimaryIp", Refused),
        // Local codes of our own transport layer.
        ("Http.503", RetryLater),
        ("Http.500", RetryLater),
        ("Http.404", RetryLater),
        ("Transport.Timeout", RetryLater),
        ("Transport.Connect", RetryLater),
        ("Response.Malformed", RetryLater),
        ("Response.TooLarge", RetryLater),
        ("Response.TooManyPages", RetryLater),
        ("Http.302", RetryLater),
        ("Http.307", RetryLater),
        ("Client.TooManyIps", Refused),
        ("Credentials.Missing", Refused),
        // Unknown codes are refused, never retried or taken for success.
        ("SomethingNew.NeverSeen", Refused),
        ("", Refused),
    ];

    /// Legacy answers: numeric common codes, business names of the legacy unassign, and
    /// the legacy task query (which adds none).
    const LEGACY_TABLE: &[(i64, &str, ErrorClass)] = &[
        // numeric common codes
        (4000, "", Refused),
        (4100, "", Refused),
        (4101, "", Refused),
        (4102, "", Refused),
        (4103, "", Refused),
        (4104, "", Refused),
        (4105, "", Refused),
        (4106, "", Refused),
        (4110, "", Refused),
        (4200, "", RefreshCredentials),
        (4300, "", Refused),
        (4400, "", RetryLater),
        (4500, "", RefreshCredentials),
        (4600, "", Refused),
        (5000, "", AlreadyGone),
        (5100, "", RetryLater),
        (5200, "", Refused),
        // business errors: the name wins over the number.
        (4000, "InvalidVpc.NotFound", Refused),
        (5000, "InvalidVpc.NotFound", Refused),
        (4000, "InvalidNetworkInterface.NotFound", AlreadyGone),
        (4000, "InvalidPrivateip.IsPrimary", Refused),
        (5100, "InvalidPrivateip.IsPrimary", Refused),
        // The legacy busy code: retried, whatever number comes with it.
        (4000, "ActionLocked", RetryLater),
        (5100, "ActionLocked", RetryLater),
        (9999, "ActionLocked", RetryLater),
        // An unknown name falls back to the number; unknown both ways is refused.
        (5100, "ResourceBusy.SomethingNew", RetryLater),
        (9999, "", Refused),
        (9999, "SomethingNew", Refused),
    ];

    #[test]
    fn every_listed_v3_code_has_its_class() {
        for &(code, expected) in V3_TABLE {
            assert_eq!(classify(TencentCode::Code(code)), expected, "code {code:?}");
        }
    }

    #[test]
    fn every_listed_legacy_code_has_its_class() {
        for &(code, code_desc, expected) in LEGACY_TABLE {
            assert_eq!(
                classify(TencentCode::Legacy { code, code_desc }),
                expected,
                "legacy {code} {code_desc:?}"
            );
        }
    }

    #[test]
    fn display_names_the_code_a_person_would_search_for() {
        assert_eq!(
            TencentCode::Code("ResourceNotFound").to_string(),
            "ResourceNotFound"
        );
        assert_eq!(
            TencentCode::Legacy {
                code: 4000,
                code_desc: "InvalidPrivateip.IsPrimary"
            }
            .to_string(),
            "InvalidPrivateip.IsPrimary (4000)"
        );
        assert_eq!(
            TencentCode::Legacy {
                code: 5100,
                code_desc: ""
            }
            .to_string(),
            "5100"
        );
    }

    #[test]
    fn rate_limit_codes_are_told_apart() {
        for code in [
            "RequestLimitExceeded",
            "RequestLimitExceeded.UinLimitExceeded",
            "RequestLimitExceeded.GlobalRegionUinLimitExceeded",
            "RequestLimitExceeded.IPLimitExceeded",
            "LimitExceeded.ActionLimited",
        ] {
            assert!(is_rate_limit(code), "{code}");
            assert_eq!(classify(TencentCode::Code(code)), ErrorClass::RetryLater);
        }
        for code in [
            "Success",
            "LimitExceeded",
            "InvalidParameterValue.LimitExceeded",
            "UnsupportedOperation.MutexOperationTaskRunning",
        ] {
            assert!(!is_rate_limit(code), "{code}");
        }
    }
}
