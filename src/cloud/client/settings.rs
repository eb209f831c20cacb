//! What the client is built from: [`CloudSettings`], plain values with their defaults.
//! The config layer fills them in, and its own defaults for the same keys are these.

use super::*;

/// `cloud.connect_timeout`'s default (the config's default is this one).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// `cloud.timeout`'s default: the whole request.
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(10);
/// `cloud.task_timeout`'s default: how long a task is followed before it is
/// re-described instead.
pub const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(600);

/// Everything the client needs, as plain values; the config layer fills it in.
#[derive(Debug, Clone)]
pub struct CloudSettings {
    /// Which protocol carries the release and its task (listing is always API 3.0).
    pub protocol: Protocol,
    /// `X-TC-Region` / legacy `Region`, e.g. `ap-guangzhou`.
    pub region: String,
    /// This CVM instance (the `attachment.instance-id` filter).
    pub instance_id: String,
    /// Default `https://vpc.tencentcloudapi.com`.
    pub v3_endpoint: String,
    /// Further API 3.0 endpoints of the same region, tried in order after
    /// `v3_endpoint` only when a request could not be sent (DNS, connect or TLS
    /// failure; docs/endpoint-failover.md). Default none.
    pub v3_fallbacks: Vec<String>,
    /// Default `https://vpc.api.qcloud.com/v2/index.php`.
    pub legacy_endpoint: String,
    /// Default `HmacSHA256`.
    pub legacy_sign_method: LegacySignMethod,
    /// Default [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// Whole request, default [`DEFAULT_TOTAL_TIMEOUT`].
    pub total_timeout: Duration,
    /// A PEM file of extra CA certificates to trust besides the system's (a TLS-inspecting
    /// proxy, a private endpoint).
    pub extra_ca_file: Option<PathBuf>,
    /// Client-side calls per second, per action.
    pub rates: Rates,
    /// Backoff between retries of a `RetryLater` answer.
    pub backoff: Backoff,
    /// Sends per call before a `RetryLater` answer is returned (at least 1).
    pub max_attempts: u32,
    /// First wait before polling a task; doubled up to `task_poll_cap`.
    pub task_poll_start: Duration,
    pub task_poll_cap: Duration,
    /// How long [`Cloud::wait_task`] follows a task before returning `Running`; default
    /// [`DEFAULT_TASK_TIMEOUT`].
    pub task_cap: Duration,
    /// How long a `list_enis` answer is reused (invalidated by an unassign and when a
    /// task ends).
    pub describe_cache_ttl: Duration,
    /// Accept `http://` endpoints (tests and the demo only).
    pub allow_plain_http: bool,
}

impl CloudSettings {
    /// The defaults, for one region and instance.
    pub fn new(region: impl Into<String>, instance_id: impl Into<String>) -> Self {
        Self {
            protocol: Protocol::V3,
            region: region.into(),
            instance_id: instance_id.into(),
            v3_endpoint: super::super::DEFAULT_V3_ENDPOINT.to_owned(),
            v3_fallbacks: Vec::new(),
            legacy_endpoint: super::super::DEFAULT_LEGACY_ENDPOINT.to_owned(),
            legacy_sign_method: LegacySignMethod::HmacSha256,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            total_timeout: DEFAULT_TOTAL_TIMEOUT,
            extra_ca_file: None,
            rates: Rates::default(),
            backoff: Backoff {
                base: Duration::from_millis(200),
                cap: Duration::from_secs(10),
            },
            max_attempts: 4,
            task_poll_start: Duration::from_millis(500),
            task_poll_cap: Duration::from_secs(5),
            task_cap: DEFAULT_TASK_TIMEOUT,
            describe_cache_ttl: Duration::from_secs(2),
            allow_plain_http: false,
        }
    }
}
