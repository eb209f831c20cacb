//! The cloud side: what the engine may ask of Tencent Cloud, and the two protocols that
//! carry it.
//!
//! The engine sees only [`Cloud`]. Its three operations are the whole contract: list this
//! instance's ENIs (for the inventory and the send-time checks), unassign a batch of at most
//! [`MAX_IPS_PER_CALL`] IPs from one ENI, and follow the resulting task to its end. Every
//! answer is classified ([`ErrorClass`]) so the engine decides on a class, never on a
//! string.
//!
//! Layers, bottom up: [`sign`] (pure signatures), [`clock`] (wall time as the cloud sees
//! it), `transport` (one HTTP exchange),
//! [`v3`] and [`legacy`] (one request each), [`client`] (policy: rate limits, retries,
//! credential refresh, the describe cache), [`release`] (the
//! procedure the engine runs). [`credentials`] and [`metadata`] supply keys and instance
//! facts; [`classify`] is the one mapping from answers to [`ErrorClass`].

pub mod classify;
pub mod client;
pub mod clock;
pub mod credentials;
pub mod failover;
pub mod legacy;
pub mod metadata;
pub mod release;
pub mod retry;
pub mod sign;
#[cfg(test)]
mod test_http;
mod transport;
pub mod v3;

pub use transport::{EndpointError, MAX_API_BODY, http_client_builder};
// Plain identifiers the cloud speaks in, defined in leaf modules so that `host`, `journal`
// and `config` need not import `cloud` (see docs/design.md, "Layering").

/// The public API 3.0 endpoint. The one source of this default: `config` re-exports it.
pub const DEFAULT_V3_ENDPOINT: &str = "https://vpc.tencentcloudapi.com";
/// The legacy API (retired by Tencent; the release and its task only).
pub const DEFAULT_LEGACY_ENDPOINT: &str = "https://vpc.api.qcloud.com/v2/index.php";
/// The instance metadata service, plain HTTP from inside the instance.
pub const DEFAULT_METADATA_ENDPOINT: &str = "http://metadata.tencentyun.com/latest/meta-data/";

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::net::MacAddr;
use crate::task::TaskRef;

/// Tencent accepts at most ten IPs per `UnassignPrivateIpAddresses`, on both protocols,
/// and ten per `UnassignIpv6Addresses`.
/// Larger sets are split by the engine; the client refuses to send more.
pub const MAX_IPS_PER_CALL: usize = 10;

/// One ENI of this instance as `DescribeNetworkInterfaces` reports it: what the
/// inventory and the send-time checks of the trigger rule need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eni {
    pub id: String,
    pub mac: MacAddr,
    pub vpc_id: String,
    pub subnet_id: String,
    /// `PENDING`, `AVAILABLE`, `ATTACHING`, `DETACHING`, `DELETING`.
    pub state: String,
    /// Whether this is the instance's primary ENI.
    pub primary: bool,
    pub attachment: Option<Attachment>,
    pub ips: Vec<EniIp>,
}

impl Eni {
    /// The IP entry for `ip`, if the cloud lists it on this ENI. IPv6 addresses compare
    /// as 128-bit values (parsed from `Ipv6AddressSet`), never as strings.
    pub fn ip(&self, ip: IpAddr) -> Option<&EniIp> {
        self.ips.iter().find(|entry| entry.addr == ip)
    }
}

/// `Attachment` of an ENI: which instance holds it, at which device index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub instance_id: String,
    pub device_index: u32,
}

/// One private IP of an ENI: an entry of `PrivateIpAddressSet` (IPv4) or of
/// `Ipv6AddressSet` (IPv6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniIp {
    pub addr: IpAddr,
    pub primary: bool,
    /// `PENDING`, `MIGRATING`, `DELETING`, `AVAILABLE`.
    pub state: String,
    /// The `AddressId` of a bound EIP (IPv4) or of the public access bound to an IPv6
    /// address; unassigning silently unbinds it.
    pub eip: Option<String>,
}

/// An address family: IPv4 and IPv6 releases are different actions, so never share a
/// call; each has its own rate budget (docs/cloud-api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::Ipv4,
            IpAddr::V6(_) => Self::Ipv6,
        }
    }

    /// The release action of this family.
    pub fn unassign_action(self) -> &'static str {
        match self {
            Self::Ipv4 => v3::UNASSIGN,
            Self::Ipv6 => v3::UNASSIGN_IPV6,
        }
    }

    /// The label value (`family="ipv6"`).
    pub fn key(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }
}

/// How a finished task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    Success,
    Failed,
    Running,
}

/// The class of a failed cloud answer: the engine acts on this, never on a code string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorClass {
    /// The IP or the ENI is not there any more; the caller confirms with a describe and
    /// then counts the release as done.
    AlreadyGone,
    /// Throttled, busy ENI, server trouble, transport failure, malformed reply.
    RetryLater,
    /// Temporary credentials or the clock are off: refresh credentials, retry once.
    RefreshCredentials,
    /// Primary IP, authentication, permission, unknown codes: parked, never retried blindly.
    Refused,
    /// Not sent: the caller's gate (the operator's pause) closed while the call waited
    /// for a rate token or for keys. Nothing reached the cloud; never retried here.
    NotSent,
}

/// A failed cloud call, with its context. Never carries a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{action}: {class:?}: {code}: {message}{}", request_id.as_ref().map(|r| format!(" (RequestId {r})")).unwrap_or_default())]
pub struct CloudError {
    pub action: &'static str,
    pub class: ErrorClass,
    /// The Tencent error code (`LimitExceeded.ActionLimited`), or a local one
    /// (`Transport.Timeout`, `Http.503`, `Response.Malformed`).
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
}

impl CloudError {
    /// An error whose code is classified by [`classify::classify`].
    pub fn new(
        action: &'static str,
        code: classify::TencentCode<'_>,
        message: impl Into<String>,
        request_id: Option<String>,
    ) -> Self {
        Self {
            action,
            class: classify::classify(code),
            code: code.to_string(),
            message: message.into(),
            request_id,
        }
    }

    /// An error found on our side (transport, HTTP status, malformed body, a request we
    /// refuse to send), with a local code such as `Transport.Timeout`, classified by the
    /// same table as Tencent's codes.
    pub fn local(action: &'static str, code: &str, message: impl Into<String>) -> Self {
        Self::new(action, classify::TencentCode::Code(code), message, None)
    }

    /// The request was not written: the caller's [`MaySend`] said no right before it.
    pub fn not_sent(action: &'static str) -> Self {
        Self {
            action,
            class: ErrorClass::NotSent,
            code: "Client.NotSent".to_owned(),
            message: "not sent: paused before the request went out".to_owned(),
            request_id: None,
        }
    }
}

/// Asked right before an unassign's request is written (after its rate token and its
/// keys), whether it may still go out: the engine's pause gate. A call can wait seconds
/// for a token; a pause answered in that time must still stop it.
pub type MaySend<'a> = &'a (dyn Fn() -> bool + Sync);

/// The three things the engine asks of the cloud.
///
/// Implementations retry what is retryable inside a call only as far as their own
/// policy says (backoff, token bucket); anything else comes back
/// classified.
pub trait Cloud: Send + Sync + 'static {
    /// This instance's ENIs, with every IP. Always API 3.0 (the legacy API has no
    /// usable listing).
    fn list_enis(&self) -> impl Future<Output = Result<Vec<Eni>, CloudError>> + Send;

    /// Starts `UnassignPrivateIpAddresses` (IPv4) or `UnassignIpv6Addresses` (IPv6) for
    /// at most [`MAX_IPS_PER_CALL`] IPs of one ENI, all of one family.
    /// `may_send` is asked right before the request is written; when it says no, the
    /// answer is [`ErrorClass::NotSent`] and nothing reaches the cloud.
    fn unassign(
        &self,
        eni_id: &str,
        vpc_id: &str,
        ips: &[IpAddr],
        may_send: MaySend<'_>,
    ) -> impl Future<Output = Result<TaskRef, CloudError>> + Send;

    /// Polls the task until it leaves RUNNING or the cap passes (then `Running`).
    fn wait_task(
        &self,
        task: &TaskRef,
    ) -> impl Future<Output = Result<TaskStatus, CloudError>> + Send;

    /// Claims (docs/design.md, "Claims"): the ENIs of `vpc_id` holding exactly `ip`.
    /// A cloud without claim calls refuses.
    fn claim_holders(
        &self,
        _vpc_id: &str,
        _ip: std::net::Ipv4Addr,
    ) -> impl Future<Output = Result<Vec<Eni>, CloudError>> + Send {
        async { Err(no_claims("DescribeNetworkInterfaces")) }
    }

    /// Claims: starts moving `ip` from `src_eni` to `dst_eni` (sent once, never retried).
    /// `may_send` as for [`Cloud::unassign`].
    fn claim_migrate(
        &self,
        _src_eni: &str,
        _dst_eni: &str,
        _ip: std::net::Ipv4Addr,
        _may_send: MaySend<'_>,
    ) -> impl Future<Output = Result<TaskRef, CloudError>> + Send {
        async { Err(no_claims("MigratePrivateIpAddress")) }
    }

    /// Claims: starts assigning `ip` to `eni_id` under `token`; `may_send` as for
    /// [`Cloud::unassign`], asked before every send.
    fn claim_assign(
        &self,
        _eni_id: &str,
        _ip: std::net::Ipv4Addr,
        _token: &client::ClientToken,
        _may_send: MaySend<'_>,
    ) -> impl Future<Output = Result<TaskRef, CloudError>> + Send {
        async { Err(no_claims("AssignPrivateIpAddresses")) }
    }
}

/// The refusal of a cloud that makes no claim calls.
fn no_claims(action: &'static str) -> CloudError {
    CloudError::local(action, "Client.NoClaims", "this cloud makes no claim calls")
}
