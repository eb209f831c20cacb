//! The engine's settings: the `[release]` keys and the engine's own tuning.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::net::Cidr;

/// Engine settings, from `[release]` and friends.
#[derive(Debug, Clone)]
pub struct Settings {
    pub grace: Duration,
    pub dry_run: bool,
    pub interfaces: Vec<String>,
    pub include: Vec<Cidr>,
    pub exclude: Vec<Cidr>,
    pub ignore_removers: Vec<String>,
    pub burst_limit: usize,
    pub burst_window: Duration,
    pub with_eip: bool,
    pub coalesce: Duration,
    pub not_listed_recheck: Duration,
    /// Backoff for re-checks and retried releases (see [`Settings::retry_backoff`]).
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// How often parked (refused) releases are tried again.
    pub parked_retry: Duration,
    /// How many times a FAILED task is retried before the release is parked.
    pub max_task_failures: u32,
    /// How long a released IP is remembered, to raise the alarm if it comes back.
    pub remember_released: Duration,
    /// At most this many IPs released per `host_limit_window` on this host (0: no
    /// limit). A blast-radius control: a bug or a bad day elsewhere cannot empty an ENI
    /// faster than this.
    pub host_limit: usize,
    pub host_limit_window: Duration,
    /// `[claim]`: addresses inside `claim.cidrs` are never released, and are claimed
    /// when added (docs/design.md, "Claims").
    pub claim: super::claim::ClaimSettings,
}

impl Settings {
    /// The engine settings of a `[release]` section: its keys, plus the engine's own
    /// tuning (backoffs, retry periods), which is not configurable. The one conversion:
    /// a new `[release]` key is a field here and in `ReleaseConfig`.
    pub fn from_release(r: &crate::config::ReleaseConfig) -> Self {
        Self {
            grace: r.grace,
            dry_run: r.dry_run,
            interfaces: r.interfaces.clone(),
            include: r.include.clone(),
            exclude: r.exclude.clone(),
            ignore_removers: r.ignore_removers.clone(),
            burst_limit: r.burst_limit,
            burst_window: r.burst_window,
            with_eip: r.with_eip,
            coalesce: r.coalesce,
            not_listed_recheck: r.not_listed_recheck,
            host_limit: r.host_limit,
            host_limit_window: r.host_limit_window,
            retry_base: Duration::from_millis(500),
            retry_cap: Duration::from_secs(60),
            parked_retry: Duration::from_secs(3600),
            max_task_failures: 3,
            remember_released: Duration::from_secs(3600),
            claim: super::claim::ClaimSettings::default(),
        }
    }

    /// The `[claim]` keys.
    pub fn with_claim(mut self, c: &crate::config::ClaimConfig) -> Self {
        self.claim = super::claim::ClaimSettings::from_config(c);
        self
    }

    /// The growth of the wait between re-checks and retried releases: the cloud
    /// module's one backoff type.
    pub fn retry_backoff(&self) -> Backoff {
        Backoff {
            base: self.retry_base,
            cap: self.retry_cap,
        }
    }
}

/// The config's defaults: every default has one source, `config.rs`.
impl Default for Settings {
    fn default() -> Self {
        Self::from_release(&crate::config::ReleaseConfig::default())
    }
}

/// The wait before retry `attempt`: between half and all of the backoff's ceiling, so
/// that a fleet throttled together spreads out, yet a retry never comes at once (a
/// re-check that fails again at once would only add load).
pub(super) fn retry_delay(backoff: Backoff, attempt: u32) -> Duration {
    let ceiling = backoff.ceiling(attempt);
    let millis = u64::try_from(ceiling.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(fastrand::u64(millis / 2..=millis))
}
