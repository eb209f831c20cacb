//! Typed configuration: defaults, parsing, validation with messages that name the key.
//!
//! Decisions recorded here:
//! - Unknown keys are errors (`deny_unknown_fields` everywhere): a typo must not silently
//!   fall back to a default on a daemon that calls a destructive API.
//! - Parse errors are rebuilt from the parser's message and position, never from its
//!   default rendering, because that quotes the offending line, which may hold a secret.
//! - Keys in the file are accepted only when the file is not readable by group or others.
//! - A plain `http://` API endpoint is accepted only with `cloud.allow_plain_http = true`
//!   (tests, the demo): a dropped "s" must not send tokens and signatures in clear, nor
//!   trust forged answers to the send-time checks. The metadata endpoint is plain HTTP by
//!   nature (link-local) and needs no opt-in.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::cloud::credentials::Secret;
use crate::cloud::sign::LegacySignMethod;
use crate::net::{Cidr, MacAddr};
use crate::task::Protocol;

mod claim;
mod defaults;
mod parse;
mod validate;

pub use claim::{CLAIM_MAX_MIGRATIONS_BOUND, CLAIM_WIDEST_PREFIX, ClaimConfig};
use defaults::*;
pub use defaults::{DRIFT_FRESH_READ_MIN, default_ignore_removers};
pub use parse::parse_duration;
use parse::{de_cidrs, de_duration, is_plain_http, parse_error};
pub use validate::check_log_level;

pub const DEFAULT_PATH: &str = "/etc/enisync/enisync.toml";
/// `control.socket`: the control socket the CLI talks to (`enisync status`, `pause`, ...).
/// The one source of this default; `ops::control` and the CLI read it here.
pub const DEFAULT_SOCKET: &str = "/run/enisync/enisync.sock";
pub use crate::cloud::{DEFAULT_LEGACY_ENDPOINT, DEFAULT_METADATA_ENDPOINT, DEFAULT_V3_ENDPOINT};
pub use crate::host::routes::{DEFAULT_RULE_PRIORITY, DEFAULT_TABLE_BASE};

/// A configuration problem: which key, and why. Exit code 1 at start and in
/// `check-config`; on reload the old configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: `{key}`{}: {reason}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        key: String,
        line: Option<usize>,
        reason: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub cloud: CloudConfig,
    #[serde(default)]
    pub metadata: MetadataConfig,
    #[serde(default)]
    pub release: ReleaseConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub netlink: NetlinkConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub drift: DriftConfig,
    /// Floating IPs claimed when added on the host (off by default).
    #[serde(default)]
    pub claim: ClaimConfig,
    /// Static ENI mappings for hosts that cannot reach the metadata service.
    #[serde(default, rename = "interface")]
    pub interfaces: Vec<StaticInterface>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// `v3` (TC3-HMAC-SHA256, the default) or `legacy`.
    #[serde(default)]
    pub api: Protocol,
    /// Default: the metadata service's `placement/region`.
    pub region: Option<String>,
    /// Default: the metadata service's `instance-id`. With `region` and `[[interface]]`
    /// mappings set, enisync starts without the metadata service.
    pub instance_id: Option<String>,
    /// The endpoint that releases: API 3.0 or the legacy URL, per `api`.
    pub endpoint: Option<String>,
    /// The API 3.0 endpoint used for listing ENIs (always API 3.0). Default: `endpoint`
    /// when `api = "v3"`, else the public API 3.0 endpoint.
    pub v3_endpoint: Option<String>,
    /// The ordered API 3.0 endpoints, all of one region: the first serves, the next ones
    /// only when a request could not be sent (docs/endpoint-failover.md). Replaces
    /// `v3_endpoint`, and `endpoint` when `api = "v3"` (both are the one-entry spellings
    /// kept for existing files; set together with it they are refused, as either
    /// winning would be a guess).
    pub endpoints: Option<Vec<String>>,
    #[serde(default)]
    pub legacy_sign_method: LegacySignMethod,
    pub secret_id: Option<Secret>,
    pub secret_key: Option<Secret>,
    /// Extra CA certificate (PEM) to trust, e.g. a TLS-intercepting proxy's.
    pub ca_file: Option<PathBuf>,
    #[serde(default = "d_cloud_connect", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    #[serde(default = "d_cloud_total", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// A task still RUNNING after this is re-described instead of polled forever.
    #[serde(default = "d_task_timeout", deserialize_with = "de_duration")]
    pub task_timeout: Duration,
    /// Client-side rate limit for mutating calls, per second (the documented 100/s is
    /// per account and shared by the fleet).
    #[serde(default = "d_rate")]
    pub max_calls_per_second: f64,
    /// The same for `UnassignIpv6Addresses`, its own budget (documented 20/s per account).
    #[serde(default = "d_rate_ipv6")]
    pub max_ipv6_calls_per_second: f64,
    /// Accept a plain `http://` `endpoint` or `v3_endpoint` (keys and signatures in
    /// clear): a test or a demo against a fake. Every start with it logs a warning.
    #[serde(default)]
    pub allow_plain_http: bool,
}

impl Default for CloudConfig {
    fn default() -> Self {
        Self {
            api: Protocol::V3,
            region: None,
            instance_id: None,
            endpoint: None,
            v3_endpoint: None,
            endpoints: None,
            legacy_sign_method: LegacySignMethod::default(),
            secret_id: None,
            secret_key: None,
            ca_file: None,
            connect_timeout: d_cloud_connect(),
            timeout: d_cloud_total(),
            task_timeout: d_task_timeout(),
            max_calls_per_second: d_rate(),
            max_ipv6_calls_per_second: d_rate_ipv6(),
            allow_plain_http: false,
        }
    }
}

impl CloudConfig {
    /// The endpoint that carries releases.
    pub fn release_endpoint(&self) -> &str {
        self.endpoint.as_deref().unwrap_or(match self.api {
            Protocol::V3 => DEFAULT_V3_ENDPOINT,
            Protocol::Legacy => DEFAULT_LEGACY_ENDPOINT,
        })
    }

    /// The API 3.0 endpoint used to list ENIs (the first of `endpoints` when set).
    pub fn describe_endpoint(&self) -> &str {
        match (&self.endpoints, &self.v3_endpoint, self.api) {
            (Some(list), _, _) if !list.is_empty() => &list[0],
            (_, Some(e), _) => e,
            (_, None, Protocol::V3) => self.release_endpoint(),
            (_, None, Protocol::Legacy) => DEFAULT_V3_ENDPOINT,
        }
    }

    /// The API 3.0 endpoints in order: `endpoints`, or the one endpoint the older keys
    /// give (docs/endpoint-failover.md).
    pub fn v3_endpoints(&self) -> Vec<&str> {
        match &self.endpoints {
            Some(list) if !list.is_empty() => list.iter().map(String::as_str).collect(),
            _ => vec![self.describe_endpoint()],
        }
    }

    /// The endpoints set to plain `http://`, with their keys (the defaults are https).
    /// Non-empty only with `allow_plain_http`: validation refuses them otherwise.
    pub fn plain_http_endpoints(&self) -> Vec<(&'static str, &str)> {
        [
            ("cloud.endpoint", self.endpoint.as_deref()),
            ("cloud.v3_endpoint", self.v3_endpoint.as_deref()),
        ]
        .into_iter()
        .chain(
            self.endpoints
                .iter()
                .flatten()
                .map(|url| ("cloud.endpoints", Some(url.as_str()))),
        )
        .filter_map(|(key, url)| url.filter(|u| is_plain_http(u)).map(|u| (key, u)))
        .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataConfig {
    #[serde(default = "d_metadata")]
    pub endpoint: String,
    #[serde(default = "d_metadata_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        Self {
            endpoint: d_metadata(),
            timeout: d_metadata_timeout(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseConfig {
    /// A removal must last this long before it is released (the cooldown comparable
    /// agents use is 30 s).
    #[serde(default = "d_30s", deserialize_with = "de_duration")]
    pub grace: Duration,
    #[serde(default)]
    pub dry_run: bool,
    /// Link-name globs (`*`, `?`); empty: every physical link whose MAC is an ENI of
    /// this instance.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// CIDRs; empty: everything.
    #[serde(default, deserialize_with = "de_cidrs")]
    pub include: Vec<Cidr>,
    #[serde(default, deserialize_with = "de_cidrs")]
    pub exclude: Vec<Cidr>,
    /// Process names whose removals are never released: they drop addresses they did
    /// not configure whenever they reconfigure a link.
    #[serde(default = "d_ignore_removers")]
    pub ignore_removers: Vec<String>,
    /// More aux IPs than this leaving within `burst_window` are held for an operator.
    #[serde(default = "d_burst_limit")]
    pub burst_limit: usize,
    #[serde(default = "d_1s", deserialize_with = "de_duration")]
    pub burst_window: Duration,
    /// Release IPs that have an EIP bound (Unassign silently unbinds it).
    #[serde(default)]
    pub with_eip: bool,
    /// How long a due release waits for other removals of the same ENI about to come
    /// due, so they share one call.
    #[serde(default = "d_20ms", deserialize_with = "de_duration")]
    pub coalesce: Duration,
    /// An IP the cloud does not list on the ENI is re-checked for this long (the cloud's
    /// view lags) before the release is cancelled.
    #[serde(default = "d_3m", deserialize_with = "de_duration")]
    pub not_listed_recheck: Duration,
    /// At most this many IPs released per `host_limit_window` on this host; 0: no limit.
    #[serde(default = "d_host_limit")]
    pub host_limit: usize,
    #[serde(default = "d_10m", deserialize_with = "de_duration")]
    pub host_limit_window: Duration,
}

impl Default for ReleaseConfig {
    fn default() -> Self {
        Self {
            grace: d_30s(),
            dry_run: false,
            interfaces: Vec::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            ignore_removers: d_ignore_removers(),
            burst_limit: d_burst_limit(),
            burst_window: d_1s(),
            with_eip: false,
            coalesce: d_20ms(),
            not_listed_recheck: d_3m(),
            host_limit: d_host_limit(),
            host_limit_window: d_10m(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    /// Delete stale `from <released ip>/32` rules and routes enisync owns for that IP.
    #[default]
    Cleanup,
    /// Also keep a table and `from` rules for every secondary ENI.
    Manage,
    Off,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    #[serde(default)]
    pub mode: RoutingMode,
    /// An ENI's table is `table_base + DeviceIndex`. The default stays clear of the
    /// numbers other agents use (Calico 65–99, 1000+ifindex, TKE 2003–2005, 10000+).
    #[serde(default = "d_table_base")]
    pub table_base: u32,
    #[serde(default = "d_rule_priority")]
    pub rule_priority: u32,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            mode: RoutingMode::default(),
            table_base: d_table_base(),
            rule_priority: d_rule_priority(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    #[serde(default = "d_state_dir")]
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self { dir: d_state_dir() }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Native journald records when run under systemd (`JOURNAL_STREAM` set), else
    /// plain text.
    #[default]
    Auto,
    Plain,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter (`info`, `enisync=debug`); `RUST_LOG` overrides it.
    #[serde(default = "d_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: d_log_level(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetlinkConfig {
    /// Receive buffer of the event socket, bytes. Larger buffers overrun less; an
    /// overrun is recovered by a resync either way.
    #[serde(default = "d_rcvbuf")]
    pub receive_buffer: usize,
    /// Full re-dump as a safety net.
    #[serde(default = "d_resync", deserialize_with = "de_duration")]
    pub resync_interval: Duration,
}

impl Default for NetlinkConfig {
    fn default() -> Self {
        Self {
            receive_buffer: d_rcvbuf(),
            resync_interval: d_resync(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics`, `/healthz`, `/readyz`.
    #[serde(default = "d_true")]
    pub enabled: bool,
    #[serde(default = "d_metrics_address")]
    pub address: std::net::SocketAddr,
    /// A non-loopback address is refused unless this is set.
    #[serde(default)]
    pub allow_remote: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: d_metrics_address(),
            allow_remote: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// The control socket of `status`, `plan`, `pause`, `resume`, `release --held`,
    /// `cancel` (mode 0600).
    #[serde(default = "d_socket")]
    pub socket: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self { socket: d_socket() }
    }
}

/// `[drift]`: the read-only drift report (`enisync drift`, the `enisync_drift_*` gauges).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// How often the host, `DescribeNetworkInterfaces` and the metadata service are read
    /// and compared. Each read spends one listing of the API's budget, which the whole
    /// account shares: bounded by `check-config` (1 minute to a day).
    #[serde(default = "d_drift_interval", deserialize_with = "de_duration")]
    pub interval: Duration,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            interval: d_drift_interval(),
        }
    }
}

/// `[[interface]]`: an ENI mapping given by hand.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticInterface {
    pub mac: MacAddr,
    pub eni: String,
    pub vpc: String,
    /// The attachment's `DeviceIndex` (manage mode's table is `table_base + device_index`).
    pub device_index: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
}

#[cfg(test)]
mod tests;
