//! Loading and validation: `Config::load` and `Config::parse` are the one way in, so
//! `run`, `check-config` and a reload accept exactly the same files; also what a reload
//! cannot change without a restart.

use super::*;

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

    /// `cloud.endpoints` (docs/endpoint-failover.md): not empty, at most
    /// [`MAX_ENDPOINTS`] entries without repeats, not combined with the one-endpoint
    /// keys it replaces, and every API 3.0 endpoint of one region: the configured one
    /// when `cloud.region` is set (at start, the instance's region is checked again).
    fn validate_endpoint_list(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.into(),
            line: None,
            reason,
        };
        let c = &self.cloud;
        if let Some(list) = &c.endpoints {
            if list.is_empty() || list.len() > MAX_ENDPOINTS {
                return Err(invalid(
                    "cloud.endpoints",
                    format!("must list 1 to {MAX_ENDPOINTS} endpoints, in the order to try them"),
                ));
            }
            if let Some(twice) = list
                .iter()
                .enumerate()
                .find(|(i, u)| list[..*i].contains(u))
            {
                return Err(invalid(
                    "cloud.endpoints",
                    format!("{:?} is listed twice", twice.1),
                ));
            }
            if c.v3_endpoint.is_some() {
                return Err(invalid(
                    "cloud.endpoints",
                    "replaces cloud.v3_endpoint; set one of the two".into(),
                ));
            }
            if c.endpoint.is_some() && c.api == Protocol::V3 {
                return Err(invalid(
                    "cloud.endpoints",
                    "replaces cloud.endpoint when api = \"v3\"; set one of the two".into(),
                ));
            }
        }
        let key = if c.endpoints.is_some() {
            "cloud.endpoints"
        } else if c.v3_endpoint.is_some() || c.api == Protocol::Legacy {
            "cloud.v3_endpoint"
        } else {
            "cloud.endpoint"
        };
        let endpoints = c.v3_endpoints();
        let region = c.region.as_deref().map(str::to_owned).or_else(|| {
            // Without `cloud.region`, the entries must at least agree with each other.
            endpoints.iter().find_map(|url| {
                let host = reqwest::Url::parse(url).ok()?;
                match crate::cloud::failover::endpoint_region(host.host_str()?) {
                    crate::cloud::failover::EndpointRegion::Pinned(r) => Some(r.to_owned()),
                    _ => None,
                }
            })
        });
        if let Some(region) = region {
            for url in endpoints {
                if let Some(pinned) = crate::cloud::failover::other_region(url, &region) {
                    return Err(invalid(
                        key,
                        format!(
                            "{url:?} is an endpoint of region {pinned}, not {region}: every API \
                             endpoint must be of the instance's region (or the region-less \
                             https://vpc.tencentcloudapi.com); a task id means nothing in \
                             another region"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    pub(super) fn validate(&self, path: &Path) -> Result<(), ConfigError> {
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
        self.validate_endpoint_list(path)?;
        let listed = self.cloud.endpoints.iter().flatten();
        for (key, value) in [
            ("cloud.endpoint", self.cloud.endpoint.as_deref()),
            ("cloud.v3_endpoint", self.cloud.v3_endpoint.as_deref()),
            ("metadata.endpoint", Some(self.metadata.endpoint.as_str())),
        ]
        .into_iter()
        .chain(listed.map(|url| ("cloud.endpoints", Some(url.as_str()))))
        {
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
        if !(self.cloud.max_ipv6_calls_per_second > 0.0
            && self.cloud.max_ipv6_calls_per_second <= MAX_IPV6_CALLS_PER_SECOND)
        {
            return Err(invalid(
                "cloud.max_ipv6_calls_per_second",
                format!(
                    "must be a number above 0 and at most {MAX_IPV6_CALLS_PER_SECOND} \
                     (UnassignIpv6Addresses' documented limit, shared by every node)"
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
        if let Err((key, reason)) = super::claim::check(self) {
            return Err(invalid(&key, reason));
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
pub(super) struct DurationRange {
    /// Zero allowed (a grace of 0 releases at once; a timeout of 0 would fail every call).
    zero: bool,
    /// The shortest value above zero (a period that spends the API's budget).
    min: Duration,
    max: Duration,
}

impl DurationRange {
    const fn up_to(max_secs: u64, zero: bool) -> Self {
        Self {
            zero,
            min: Duration::ZERO,
            max: Duration::from_secs(max_secs),
        }
    }

    const fn between(min_secs: u64, max_secs: u64) -> Self {
        Self {
            zero: false,
            min: Duration::from_secs(min_secs),
            max: Duration::from_secs(max_secs),
        }
    }

    pub(super) fn contains(&self, value: &Duration) -> bool {
        (self.zero || !value.is_zero()) && *value >= self.min && *value <= self.max
    }

    pub(super) fn explain(&self, value: Duration) -> String {
        let max = format!("{}m", self.max.as_secs() / 60);
        if value < self.min && !value.is_zero() {
            format!(
                "{value:?} is too short: at least {}m (each read spends the account's API budget)",
                self.min.as_secs() / 60
            )
        } else if value.is_zero() && !self.zero {
            format!("must be longer than 0 (and at most {max})")
        } else {
            format!("{value:?} is too long: at most {max}")
        }
    }
}

pub(super) const MINUTE: u64 = 60;
pub(super) const HOUR: u64 = 60 * MINUTE;
pub(super) const DAY: u64 = 24 * HOUR;
/// The documented account-wide limit of `UnassignPrivateIpAddresses`; a node asking for
/// more than the whole account has is a typo.
pub(super) const MAX_CALLS_PER_SECOND: f64 = 100.0;
/// `UnassignIpv6Addresses`: 20 requests/s per account (docs/cloud-api.md, "IPv6").
pub(super) const MAX_IPV6_CALLS_PER_SECOND: f64 = 20.0;

impl Config {
    /// Every duration key with its allowed range: the one table `validate` checks.
    pub(super) fn durations(&self) -> [(&'static str, Duration, DurationRange); 11] {
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
            (
                "drift.interval",
                self.drift.interval,
                R::between(MINUTE, DAY),
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
        differs("drift.interval", self.drift != new.drift);
        // The engine applies every `[claim]` key at once; the watcher names the adders of
        // the CIDRs it started with, so new CIDRs need a restart to be claimed.
        differs("claim.cidrs", self.claim.cidrs != new.claim.cidrs);
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
