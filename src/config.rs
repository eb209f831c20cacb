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
    #[serde(default)]
    pub legacy_sign_method: LegacySignMethod,
    pub secret_id: Option<Secret>,
    pub secret_key: Option<Secret>,
    /// Extra CA certificate (PEM) to trust, e.g. a TLS-intercepting proxy's.
    pub ca_file: Option<PathBuf>,
    #[serde(default = "d_3s", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    #[serde(default = "d_10s", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// A task still RUNNING after this is re-described instead of polled forever.
    #[serde(default = "d_10m", deserialize_with = "de_duration")]
    pub task_timeout: Duration,
    /// Client-side rate limit for mutating calls, per second (the documented 100/s is
    /// per account and shared by the fleet).
    #[serde(default = "d_rate")]
    pub max_calls_per_second: f64,
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
            legacy_sign_method: LegacySignMethod::default(),
            secret_id: None,
            secret_key: None,
            ca_file: None,
            connect_timeout: d_3s(),
            timeout: d_10s(),
            task_timeout: d_10m(),
            max_calls_per_second: d_rate(),
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

    /// The API 3.0 endpoint used to list ENIs.
    pub fn describe_endpoint(&self) -> &str {
        match (&self.v3_endpoint, self.api) {
            (Some(e), _) => e,
            (None, Protocol::V3) => self.release_endpoint(),
            (None, Protocol::Legacy) => DEFAULT_V3_ENDPOINT,
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
        .filter_map(|(key, url)| url.filter(|u| is_plain_http(u)).map(|u| (key, u)))
        .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataConfig {
    #[serde(default = "d_metadata")]
    pub endpoint: String,
    #[serde(default = "d_3s", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        Self {
            endpoint: d_metadata(),
            timeout: d_3s(),
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
    #[serde(default = "d_5m", deserialize_with = "de_duration")]
    pub resync_interval: Duration,
}

impl Default for NetlinkConfig {
    fn default() -> Self {
        Self {
            receive_buffer: d_rcvbuf(),
            resync_interval: d_5m(),
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

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(&text, path)?;
        if config.cloud.secret_key.is_some() || config.cloud.secret_id.is_some() {
            let mode = std::fs::metadata(path)
                .map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    key: "cloud.secret_key".into(),
                    line: None,
                    reason: format!(
                        "keys are refused in a file readable by group or others (mode {:04o}); \
                         chmod 600 it, or use systemd credentials or the CAM role",
                        mode & 0o7777
                    ),
                });
            }
        }
        Ok(config)
    }

    /// Parses and validates text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| parse_error(text, path, &e))?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.into(),
            line: None,
            reason,
        };
        if self.cloud.secret_id.is_some() != self.cloud.secret_key.is_some() {
            return Err(invalid(
                "cloud.secret_key",
                "secret_id and secret_key go together".into(),
            ));
        }
        for (key, value) in [
            ("cloud.endpoint", self.cloud.endpoint.as_deref()),
            ("cloud.v3_endpoint", self.cloud.v3_endpoint.as_deref()),
            ("metadata.endpoint", Some(self.metadata.endpoint.as_str())),
        ] {
            if let Some(url) = value
                && !(url.starts_with("https://") || is_plain_http(url))
            {
                return Err(invalid(key, format!("not an http(s) URL: {url:?}")));
            }
            if let Some(url) = value
                && key != "metadata.endpoint"
                && is_plain_http(url)
                && !self.cloud.allow_plain_http
            {
                return Err(invalid(
                    key,
                    format!(
                        "{url:?} is plain http: API keys, tokens and signatures would travel \
                         in clear and answers could be forged; use https, or set \
                         cloud.allow_plain_http = true (for a test against a fake only)"
                    ),
                ));
            }
        }
        if !(self.cloud.max_calls_per_second > 0.0
            && self.cloud.max_calls_per_second <= MAX_CALLS_PER_SECOND)
        {
            return Err(invalid(
                "cloud.max_calls_per_second",
                format!(
                    "must be a number above 0 and at most {MAX_CALLS_PER_SECOND} \
                     (the account's documented limit, shared by every node)"
                ),
            ));
        }
        for (key, value, range) in self.durations() {
            if !range.contains(&value) {
                return Err(invalid(key, range.explain(value)));
            }
        }
        for (key, value, (min, max)) in [
            (
                "release.burst_limit",
                self.release.burst_limit,
                (1, 1_000_000),
            ),
            (
                "release.host_limit",
                self.release.host_limit,
                (0, 1_000_000),
            ),
            (
                "netlink.receive_buffer",
                self.netlink.receive_buffer,
                (4096, 1 << 30),
            ),
        ] {
            if !(min..=max).contains(&value) {
                return Err(invalid(
                    key,
                    format!("{value} is out of range: must be from {min} to {max}"),
                ));
            }
        }
        if self.metrics.enabled
            && !self.metrics.address.ip().is_loopback()
            && !self.metrics.allow_remote
        {
            return Err(invalid(
                "metrics.address",
                format!(
                    "{} is not a loopback address; set metrics.allow_remote = true to expose \
                     /metrics and /healthz beyond this host",
                    self.metrics.address
                ),
            ));
        }
        if let Err(reason) = check_log_level(&self.log.level) {
            return Err(invalid("log.level", reason));
        }
        for (i, glob) in self.release.interfaces.iter().enumerate() {
            if glob.is_empty() || glob.contains('/') {
                return Err(invalid(
                    &format!("release.interfaces[{i}]"),
                    format!("not an interface name pattern: {glob:?}"),
                ));
            }
        }
        if self.routing.table_base == 0 || self.routing.table_base >= 0xFFFF_F000 {
            return Err(invalid(
                "routing.table_base",
                "must be between 1 and 4294963199".into(),
            ));
        }
        for reserved in [253, 254, 255] {
            if (self.routing.table_base..self.routing.table_base.saturating_add(64))
                .contains(&reserved)
            {
                return Err(invalid(
                    "routing.table_base",
                    format!(
                        "the range table_base..table_base+63 includes reserved table {reserved}"
                    ),
                ));
            }
        }
        if self.routing.rule_priority == 0 || self.routing.rule_priority >= 32766 {
            return Err(invalid(
                "routing.rule_priority",
                "must be between 1 and 32765 (0, 32766 and 32767 are the kernel's)".into(),
            ));
        }
        if !self.state.dir.is_absolute() {
            return Err(invalid("state.dir", "must be an absolute path".into()));
        }
        if self.cloud.instance_id.is_some() {
            // The instance id alone is no use: without the metadata service enisync also
            // needs the region and the MAC-to-ENI mappings, so all three go together.
            if self.cloud.region.is_none() {
                return Err(invalid(
                    "cloud.instance_id",
                    "needs cloud.region as well (enisync then starts without the metadata service)"
                        .into(),
                ));
            }
            if self.interfaces.is_empty() {
                return Err(invalid(
                    "cloud.instance_id",
                    "needs at least one [[interface]] mapping as well (enisync then starts \
                     without the metadata service)"
                        .into(),
                ));
            }
            if !self
                .cloud
                .instance_id
                .as_deref()
                .is_some_and(|id| id.starts_with("ins-"))
            {
                return Err(invalid(
                    "cloud.instance_id",
                    format!(
                        "not an instance id: {:?}",
                        self.cloud.instance_id.as_deref().unwrap_or("")
                    ),
                ));
            }
        }
        let mut macs = std::collections::HashSet::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            if !macs.insert(iface.mac) {
                return Err(invalid(
                    &format!("interface[{i}].mac"),
                    format!("{} is listed twice", iface.mac),
                ));
            }
            if !iface.eni.starts_with("eni-") {
                return Err(invalid(
                    &format!("interface[{i}].eni"),
                    format!("not an ENI id: {:?}", iface.eni),
                ));
            }
        }
        Ok(())
    }
}

/// The allowed values of a duration key. The upper bounds catch typos (a grace of years
/// is never meant) and keep every later `Instant + duration` from overflowing.
#[derive(Debug, Clone, Copy)]
struct DurationRange {
    /// Zero allowed (a grace of 0 releases at once; a timeout of 0 would fail every call).
    zero: bool,
    max: Duration,
}

impl DurationRange {
    const fn up_to(max_secs: u64, zero: bool) -> Self {
        Self {
            zero,
            max: Duration::from_secs(max_secs),
        }
    }

    fn contains(&self, value: &Duration) -> bool {
        (self.zero || !value.is_zero()) && *value <= self.max
    }

    fn explain(&self, value: Duration) -> String {
        let max = format!("{}m", self.max.as_secs() / 60);
        if value.is_zero() && !self.zero {
            format!("must be longer than 0 (and at most {max})")
        } else {
            format!("{value:?} is too long: at most {max}")
        }
    }
}

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
/// The documented account-wide limit of `UnassignPrivateIpAddresses`; a node asking for
/// more than the whole account has is a typo.
const MAX_CALLS_PER_SECOND: f64 = 100.0;

impl Config {
    /// Every duration key with its allowed range: the one table `validate` checks.
    fn durations(&self) -> [(&'static str, Duration, DurationRange); 10] {
        use DurationRange as R;
        [
            (
                "cloud.connect_timeout",
                self.cloud.connect_timeout,
                R::up_to(5 * MINUTE, false),
            ),
            (
                "cloud.timeout",
                self.cloud.timeout,
                R::up_to(10 * MINUTE, false),
            ),
            (
                "cloud.task_timeout",
                self.cloud.task_timeout,
                R::up_to(DAY, false),
            ),
            (
                "metadata.timeout",
                self.metadata.timeout,
                R::up_to(5 * MINUTE, false),
            ),
            ("release.grace", self.release.grace, R::up_to(DAY, true)),
            (
                "release.burst_window",
                self.release.burst_window,
                R::up_to(HOUR, false),
            ),
            (
                "release.coalesce",
                self.release.coalesce,
                R::up_to(MINUTE, true),
            ),
            (
                "release.not_listed_recheck",
                self.release.not_listed_recheck,
                R::up_to(DAY, true),
            ),
            (
                "release.host_limit_window",
                self.release.host_limit_window,
                R::up_to(7 * DAY, false),
            ),
            (
                "netlink.resync_interval",
                self.netlink.resync_interval,
                R::up_to(DAY, false),
            ),
        ]
    }

    /// The keys whose new value a reload cannot apply (they are read once, at start),
    /// so that the reload can name them instead of keeping them silently. `[release]`
    /// applies at once, to the engine and to routing (`dry_run`).
    pub fn restart_needed(&self, new: &Self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut differs = |key: &'static str, changed: bool| {
            if changed {
                keys.push(key);
            }
        };
        differs("cloud", self.cloud != new.cloud);
        differs("metadata", self.metadata != new.metadata);
        differs("routing.mode", self.routing.mode != new.routing.mode);
        differs(
            "routing.table_base",
            self.routing.table_base != new.routing.table_base,
        );
        differs(
            "routing.rule_priority",
            self.routing.rule_priority != new.routing.rule_priority,
        );
        differs("state.dir", self.state != new.state);
        differs("log", self.log != new.log);
        differs("netlink", self.netlink != new.netlink);
        differs("metrics", self.metrics != new.metrics);
        differs("control.socket", self.control != new.control);
        differs("interface", self.interfaces != new.interfaces);
        keys
    }
}

/// `log.level`, parsed strictly: a comma-separated list of `level` or `target=level`
/// directives. tracing's own parser takes any word as a target name, so a typo such as
/// `verbose` would silently log nothing but that "target". The `audit` target is the
/// release history: it is always kept at `info` (see `init_logging`), so a directive
/// that would silence it is refused rather than ignored.
pub fn check_log_level(text: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let level_ok = |l: &str| LEVELS.contains(&l.to_ascii_lowercase().as_str());
    if text.trim().is_empty() {
        return Err("empty: use a level such as \"info\"".into());
    }
    for directive in text.split(',').map(str::trim) {
        let ok = match directive.split_once('=') {
            None => level_ok(directive),
            Some((target, level)) => {
                if target == "audit" && !matches!(level, "info" | "debug" | "trace") {
                    return Err(
                        "the audit target is the release history and cannot be lowered below info"
                            .into(),
                    );
                }
                !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                    && level_ok(level)
            }
        };
        if !ok {
            return Err(format!(
                "bad directive {directive:?}: expected a level (trace, debug, info, warn, error, off) \
                 or target=level, comma-separated"
            ));
        }
    }
    Ok(())
}

/// Rebuilds a TOML error without quoting the source line (it may hold a secret), naming
/// the key as `table.key`.
fn parse_error(text: &str, path: &Path, err: &toml::de::Error) -> ConfigError {
    let span = err.span();
    let line = span
        .as_ref()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let mut message = err.message().trim().to_string();
    let table = span
        .as_ref()
        .map(|s| enclosing_table(&text[..s.start.min(text.len())]))
        .unwrap_or_default();
    let field = span.as_ref().and_then(|s| {
        // The key of the offending line, or the unknown field the message names.
        let line_text = text[..s.start.min(text.len())]
            .rsplit('\n')
            .next()
            .unwrap_or("")
            .to_string()
            + text[s.start.min(text.len())..]
                .split('\n')
                .next()
                .unwrap_or("");
        let quoted = message.split('`').nth(1).map(str::to_string);
        if message.starts_with("unknown field") {
            quoted
        } else {
            line_text
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"').to_string())
                .filter(|k| !k.is_empty() && !k.starts_with('['))
        }
    });
    let key = match (table.is_empty(), field) {
        (false, Some(f)) => format!("{table}.{f}"),
        (true, Some(f)) => f,
        (false, None) => table,
        (true, None) => "(file)".into(),
    };
    // The whole lines the error's span covers: an inline table
    // (`cloud = { secret_key = 123 }`) names the key `cloud`, yet its message may quote
    // the secret (found by the config fuzzer, src/fuzz.rs).
    let span_lines = span
        .as_ref()
        .and_then(|s| {
            let start = text.get(..s.start)?.rfind('\n').map_or(0, |i| i + 1);
            let end = text
                .get(s.end..)?
                .find('\n')
                .map_or(text.len(), |i| s.end + i);
            text.get(start..end)
        })
        .unwrap_or("");
    if key.ends_with("secret_id")
        || key.ends_with("secret_key")
        || span_lines.contains("secret_id")
        || span_lines.contains("secret_key")
    {
        // Never repeat a secret's value, even a malformed one.
        message = "invalid value (not shown: it is a secret)".into();
    }
    ConfigError::Invalid {
        path: path.to_owned(),
        key,
        line,
        reason: message,
    }
}

/// The `[table]` or `[[table]]` header in force at the end of `before`.
fn enclosing_table(before: &str) -> String {
    before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
        .unwrap_or_default()
}

/// Whether `url` is a plain-HTTP URL (the scheme is case-insensitive, as the URL parser
/// that will use it treats it).
fn is_plain_http(url: &str) -> bool {
    url.get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"))
}

/// Parses `250ms`, `30s`, `5m` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        format!("bad duration {text:?}: expected a whole number followed by ms, s or m")
    })?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!(
            "bad duration {text:?}: the unit must be ms, s or m"
        )),
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn de_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| Cidr::parse(s).map_err(serde::de::Error::custom))
        .collect()
}

fn d_3s() -> Duration {
    Duration::from_secs(3)
}
fn d_10s() -> Duration {
    Duration::from_secs(10)
}
fn d_30s() -> Duration {
    Duration::from_secs(30)
}
fn d_1s() -> Duration {
    Duration::from_secs(1)
}
fn d_20ms() -> Duration {
    Duration::from_millis(20)
}
fn d_3m() -> Duration {
    Duration::from_secs(180)
}
fn d_5m() -> Duration {
    Duration::from_secs(300)
}
fn d_10m() -> Duration {
    Duration::from_secs(600)
}
fn d_rate() -> f64 {
    5.0
}
fn d_metadata() -> String {
    DEFAULT_METADATA_ENDPOINT.into()
}
fn d_ignore_removers() -> Vec<String> {
    default_ignore_removers()
}

/// The default `release.ignore_removers`, also the engine's default: tools that remove
/// addresses they did not configure. Each name is matched against the remover and its
/// ancestors (the `ip` a script runs counts as the script's and its parent's), against
/// `comm`, which the kernel cuts at 15 bytes (`networkd-dispatcher` shows as
/// `networkd-dispat`; a longer name here matches its cut form). The evidence, per tool
/// (docs/security-notes-remover.md has the sources):
///
/// - `dhclient`, `dhclient-script`: ISC dhclient-script runs `ip -4 addr flush dev
///   $interface` on EXPIRE, FAIL, RELEASE and STOP, flushing every IPv4 address of the
///   link, aux IPs included, while the link stays up.
/// - `dhcpcd`: on lease expiry, release or carrier loss it deletes the addresses of the
///   interface it runs on; its hooks run under it.
/// - `udhcpc`: busybox's `default.script` (run by udhcpc, so matched through it) does
///   `ip -4 addr flush dev $interface` on `deconfig`, at every start and lease loss.
/// - `NetworkManager`: on (re)activation it removes addresses of a managed device
///   that its connection profile does not list.
/// - `nm-dispatcher`: runs the dispatcher scripts; D-Bus starts it as a child of PID 1,
///   not of NetworkManager, so it is listed by its own name.
/// - `systemd-networkd`: with the default `KeepConfiguration=no` it drops foreign
///   addresses of links it manages when it (re)configures them.
/// - `networkd-dispatcher`: runs scripts on networkd's state changes; a child of PID 1.
/// - `ifup`, `ifdown`, `ifquery`, `ifreload`: ifupdown's `inet` methods flush the link
///   on `down` (`ip -4 addr flush dev %iface%`); ifupdown2 reconciles a link to its
///   configuration, removing addresses it does not list; RHEL's `ifdown-eth` is run by
///   `ifdown`.
pub fn default_ignore_removers() -> Vec<String> {
    [
        "dhclient",
        "dhclient-script",
        "dhcpcd",
        "udhcpc",
        "NetworkManager",
        "nm-dispatcher",
        "systemd-networkd",
        "networkd-dispatcher",
        "ifup",
        "ifdown",
        "ifquery",
        "ifreload",
    ]
    .map(String::from)
    .to_vec()
}
fn d_burst_limit() -> usize {
    8
}
fn d_table_base() -> u32 {
    DEFAULT_TABLE_BASE
}
fn d_rule_priority() -> u32 {
    DEFAULT_RULE_PRIORITY
}
fn d_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/enisync")
}
fn d_log_level() -> String {
    "info".into()
}
fn d_true() -> bool {
    true
}
fn d_metrics_address() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9469))
}
fn d_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
/// Above what one host can hold (a large CVM has a few hundred private IPs in all), so
/// a legitimate mass release is never cut; the burst hold (clause 6) is what stops a
/// flush. Lower it to bound what a runaway could release per window.
fn d_host_limit() -> usize {
    1000
}
fn d_rcvbuf() -> usize {
    4 << 20
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/t.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("must be rejected").to_string()
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = parse("").expect("empty is valid");
        assert_eq!(c.cloud.api, Protocol::V3);
        assert_eq!(c.cloud.release_endpoint(), DEFAULT_V3_ENDPOINT);
        assert_eq!(c.release.grace, Duration::from_secs(30));
        assert_eq!(c.release.burst_limit, 8);
        assert!(!c.release.dry_run && !c.release.with_eip);
        assert_eq!(c.routing.mode, RoutingMode::Cleanup);
        assert_eq!(c.release.ignore_removers, default_ignore_removers());
        assert!(!c.cloud.allow_plain_http);
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(
            r#"
[cloud]
api = "legacy"
region = "ap-guangzhou"
endpoint = "http://127.0.0.1:1/v2/index.php"
allow_plain_http = true
[metadata]
endpoint = "http://metadata.tencentyun.com/latest/meta-data/"
[release]
grace = "250ms"
dry_run = true
interfaces = ["eth*"]
include = ["10.0.0.0/8"]
exclude = ["10.0.0.0/28"]
ignore_removers = ["dhclient"]
burst_limit = 30
with_eip = false
[routing]
mode = "manage"
[state]
dir = "/var/lib/enisync"
[[interface]]
mac = "52:54:00:AB:CD:EF"
eni = "eni-1"
vpc = "vpc-1"
"#,
        )
        .expect("valid");
        assert_eq!(c.cloud.api, Protocol::Legacy);
        assert_eq!(c.cloud.describe_endpoint(), DEFAULT_V3_ENDPOINT);
        assert!(c.cloud.allow_plain_http);
        assert_eq!(
            c.cloud.plain_http_endpoints(),
            [("cloud.endpoint", "http://127.0.0.1:1/v2/index.php")]
        );
        assert_eq!(c.release.grace, Duration::from_millis(250));
        assert!(c.release.include[0].contains("10.9.8.7".parse().expect("ip")));
        assert!(!c.release.exclude[0].contains("10.0.0.16".parse().expect("ip")));
        assert_eq!(c.interfaces[0].mac.to_string(), "52:54:00:ab:cd:ef");
        assert_eq!(c.routing.mode, RoutingMode::Manage);
    }

    #[test]
    fn misspelt_key_is_named_with_its_table_and_line() {
        let e = err("[release]\ngrace = \"1s\"\ngrase = \"2s\"\n");
        assert!(e.contains("`release.grase`"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_duration_is_named() {
        let e = err("[release]\ngrace = \"30 seconds\"\n");
        assert!(e.contains("`release.grace`"), "{e}");
        assert!(e.contains("ms, s or m"), "{e}");
        let e = err("[cloud]\ntimeout = \"5h\"\n");
        assert!(e.contains("`cloud.timeout`"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10").is_err());
    }

    #[test]
    fn a_secret_is_never_echoed_in_an_error() {
        let canary = "CANARYsecretVALUE123";
        for text in [
            format!("[cloud]\nsecret_id = \"id\"\nsecret_key = {canary}\n"),
            format!("[cloud]\nsecret_id = \"id\"\nsecret_kye = \"{canary}\"\n"),
            format!("[cloud]\nsecret_id = \"id\"\nsecret_key = [\"{canary}\"]\n"),
            format!("[cloud]\nsecret_key = \"{canary}\"\n"),
        ] {
            let e = err(&text);
            assert!(!e.contains(canary), "leaked: {e}");
            assert!(e.contains("cloud.secret_k"), "{e}");
        }
        // Found by the config fuzzer: in an inline table the error names `cloud`, and the
        // type error quoted the (numeric) secret.
        for text in [
            "cloud = { secret_id = \"a\", secret_key = 0xCA11AB1E }\n",
            "cloud = { secret_id = \"a\", secret_key = 3390155550 }\n",
            "[cloud]\nsecret_key = [\n  3390155550,\n]\n",
        ] {
            let e = err(text);
            assert!(!e.contains("3390155550"), "leaked: {e}");
        }
    }

    #[test]
    fn keys_in_a_world_readable_file_are_refused() {
        let dir = std::env::temp_dir().join(format!("enisync-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[cloud]\nsecret_id = \"AKIDx\"\nsecret_key = \"k\"\n",
        )
        .expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = Config::load(&path).expect_err("refused").to_string();
        assert!(e.contains("readable by group or others"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(Config::load(&path).is_ok());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn validation_names_keys() {
        assert!(err("[release]\nburst_limit = 0\n").contains("release.burst_limit"));
        assert!(err("[routing]\ntable_base = 250\n").contains("routing.table_base"));
        assert!(err("[routing]\nmode = \"sometimes\"\n").contains("routing.mode"));
        assert!(err("[state]\ndir = \"rel\"\n").contains("state.dir"));
        assert!(err("[release]\ninclude = [\"10.0.0.0/33\"]\n").contains("release.include"));
        assert!(err("[cloud]\nendpoint = \"ftp://x\"\n").contains("cloud.endpoint"));
        assert!(err("[cloud]\nsecret_id = \"x\"\n").contains("cloud.secret_key"));
        assert!(
            err("[[interface]]\nmac = \"zz\"\neni = \"eni-1\"\nvpc = \"v\"\n")
                .contains("interface.mac")
        );
    }

    /// Issue #11 item 4: a dropped "s" in an API endpoint is refused (naming the key
    /// that would allow it), unless plain HTTP is opted into; metadata needs no opt-in.
    #[test]
    fn a_plain_http_api_endpoint_needs_the_opt_in() {
        for (text, key) in [
            (
                "[cloud]\nendpoint = \"http://vpc.ap-guangzhou.tencentcloudapi.com\"\n",
                "`cloud.endpoint`",
            ),
            (
                "[cloud]\nv3_endpoint = \"http://vpc.tencentcloudapi.com/\"\n",
                "`cloud.v3_endpoint`",
            ),
            (
                "[cloud]\napi = \"legacy\"\nendpoint = \"HTTP://vpc.api.qcloud.com/v2/index.php\"\n",
                "`cloud.endpoint`",
            ),
        ] {
            let e = err(text);
            assert!(
                e.contains(key) && e.contains("cloud.allow_plain_http = true"),
                "{e}"
            );
            let allowed = parse(&format!("{text}allow_plain_http = true\n")).expect("opted in");
            assert_eq!(allowed.cloud.plain_http_endpoints().len(), 1);
        }
        let c = parse("[metadata]\nendpoint = \"http://169.254.0.23/latest/meta-data/\"\n")
            .expect("metadata is plain HTTP by nature");
        assert!(c.cloud.plain_http_endpoints().is_empty());
        let c = parse("[cloud]\nendpoint = \"https://vpc.tencentcloudapi.com\"\n").expect("https");
        assert!(c.cloud.plain_http_endpoints().is_empty());
    }

    #[test]
    fn every_duration_has_an_upper_bound_and_the_default_is_inside_it() {
        let defaults = Config::default();
        for (key, value, range) in defaults.durations() {
            assert!(
                range.contains(&value),
                "default {key} = {value:?} is out of its range"
            );
        }
        let e = err("[release]\ngrace = \"200000000000000000m\"\n");
        assert!(
            e.contains("`release.grace`") && e.contains("too long"),
            "{e}"
        );
        let e = err("[netlink]\nresync_interval = \"0s\"\n");
        assert!(
            e.contains("`netlink.resync_interval`") && e.contains("longer than 0"),
            "{e}"
        );
        parse("[release]\ngrace = \"0s\"\n").expect("a grace of 0 releases at once");
    }

    #[test]
    fn log_level_is_parsed_strictly_and_keeps_the_audit_records() {
        for good in [
            "info",
            "warn",
            "info,enisync=debug",
            "error,audit=info",
            "debug, enisync::engine=trace",
        ] {
            check_log_level(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "verbose",
            "info,enisync=loud",
            "audit=off",
            "info,audit=warn",
            "[span]=info",
        ] {
            assert!(check_log_level(bad).is_err(), "{bad:?} must be refused");
        }
        let e = err("[log]\nlevel = \"verbose\"\n");
        assert!(e.contains("`log.level`"), "{e}");
    }

    #[test]
    fn a_public_metrics_address_needs_allow_remote() {
        let e = err("[metrics]\naddress = \"0.0.0.0:9469\"\n");
        assert!(
            e.contains("`metrics.address`") && e.contains("allow_remote"),
            "{e}"
        );
        parse("[metrics]\naddress = \"0.0.0.0:9469\"\nallow_remote = true\n").expect("opted in");
        parse("[metrics]\nenabled = false\naddress = \"0.0.0.0:9469\"\n").expect("not served");
    }

    #[test]
    fn instance_id_goes_with_region_and_interfaces() {
        let e = err("[cloud]\ninstance_id = \"ins-1\"\nregion = \"ap-guangzhou\"\n");
        assert!(
            e.contains("`cloud.instance_id`") && e.contains("[[interface]]"),
            "{e}"
        );
        parse(
            "[cloud]\ninstance_id = \"ins-1\"\nregion = \"ap-guangzhou\"\n\
             [[interface]]\nmac = \"52:54:00:00:00:01\"\neni = \"eni-1\"\nvpc = \"vpc-1\"\n",
        )
        .expect("complete");
    }

    #[test]
    fn a_reload_names_exactly_the_keys_that_need_a_restart() {
        let old = parse("[release]\ngrace = \"30s\"\n").expect("valid");
        let release_only = parse("[release]\ngrace = \"5s\"\ndry_run = true\n").expect("valid");
        assert!(old.restart_needed(&release_only).is_empty());
        let more =
            parse("[routing]\nmode = \"manage\"\n[log]\nformat = \"json\"\n").expect("valid");
        assert_eq!(old.restart_needed(&more), vec!["routing.mode", "log"]);
    }
}
