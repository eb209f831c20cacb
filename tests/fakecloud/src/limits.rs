//! Account-wide API rate limits and the fleet bookkeeping that goes with them.
//!
//! Tencent Cloud limits each API action per account (documented figures in
//! [`RateLimits::documented`]); every node of an account shares them. The fake enforces
//! them on API 3.0 after authentication and answers an over-limit call exactly as the API
//! does: HTTP 200 with the error envelope `RequestLimitExceeded` and the message "Your
//! current request times equals to `N` in a second, which exceeds the frequency limit `L`
//! for a second. Please reduce the frequency of calls."
//!
//! What the public pages do not say is configurable ([`RateLimits`]): the scope a limit
//! counts over (the account, a region, a source address), the window (a fixed calendar
//! second or a token bucket of one second's burst) and the error code
//! (`RequestLimitExceeded`, `RequestLimitExceeded.UinLimitExceeded`,
//! `LimitExceeded.ActionLimited`…). [`FakeCloud::throttle`] scales every limit down for a
//! while: the cloud throttling hard in the middle of a storm.
//!
//! Refused calls count towards the fixed window's request count (the message's `N`) but
//! take no token from a bucket.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::FakeCloud;

/// What a limit counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// Every caller of the account (every key, region and address) together.
    #[default]
    Account,
    /// Per `X-TC-Region`.
    Region,
    /// Per caller source address.
    SourceIp,
}

/// How a limit's second is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitWindow {
    /// At most `limit` calls per calendar second of the fake's clock.
    #[default]
    FixedSecond,
    /// A bucket of `limit` tokens refilled at `limit` per second.
    TokenBucket,
}

/// The rate-limit configuration. Serialises as the scenario's `rate_limits` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default)]
    pub scope: LimitScope,
    #[serde(default)]
    pub window: LimitWindow,
    /// The error code of a refusal.
    #[serde(default = "default_code")]
    pub code: String,
    /// Calls per second by action; actions not named are unlimited. Omitted in a
    /// scenario: the documented figures.
    #[serde(default = "documented_per_second")]
    pub per_second: BTreeMap<String, u32>,
}

fn default_code() -> String {
    "RequestLimitExceeded".to_string()
}

/// The documented per-account figures (`MigratePrivateIpAddress`: the Chinese site's
/// 50/s, the lower of the two published figures).
fn documented_per_second() -> BTreeMap<String, u32> {
    [
        ("UnassignPrivateIpAddresses", 100),
        ("AssignPrivateIpAddresses", 100),
        ("DescribeNetworkInterfaces", 100),
        ("DescribeVpcTaskResult", 20),
        ("MigratePrivateIpAddress", 50),
        ("UnassignIpv6Addresses", 20),
        ("AssignIpv6Addresses", 20),
    ]
    .into_iter()
    .map(|(a, l)| (a.to_string(), l))
    .collect()
}

impl Default for RateLimits {
    fn default() -> Self {
        Self::documented()
    }
}

impl RateLimits {
    /// The documented figures, account-wide, fixed second, `RequestLimitExceeded`.
    pub fn documented() -> Self {
        Self {
            scope: LimitScope::Account,
            window: LimitWindow::FixedSecond,
            code: default_code(),
            per_second: documented_per_second(),
        }
    }

    #[must_use]
    pub fn scope(mut self, scope: LimitScope) -> Self {
        self.scope = scope;
        self
    }

    #[must_use]
    pub fn window(mut self, window: LimitWindow) -> Self {
        self.window = window;
        self
    }

    #[must_use]
    pub fn code(mut self, code: &str) -> Self {
        self.code = code.to_string();
        self
    }

    /// Sets (or with `None` removes) one action's limit.
    #[must_use]
    pub fn limit(mut self, action: &str, per_second: Option<u32>) -> Self {
        match per_second {
            Some(l) => self.per_second.insert(action.to_string(), l),
            None => self.per_second.remove(action),
        };
        self
    }
}

/// One counter: a fixed window or a bucket.
#[derive(Debug, Clone)]
struct Counter {
    /// The calendar second (fixed window) and the requests seen in it, refused ones too.
    second: i64,
    seen: u64,
    /// Token bucket: tokens left as of `refilled`.
    tokens: f64,
    refilled: Instant,
}

/// A refusal: the code and the API's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub code: String,
    pub message: String,
}

/// The fleet-scale state of the world: the limiter and when each task ended.
#[derive(Debug, Default)]
pub(crate) struct FleetState {
    limits: Option<RateLimits>,
    counters: BTreeMap<(String, String), Counter>,
    /// Every limit is multiplied by `.0` until `.1`.
    throttle: Option<(f64, Instant)>,
    /// Task RequestId → when it ended (fake clock, Unix ms).
    pub task_ended_ms: BTreeMap<String, i64>,
    /// Calls refused by the limiter, by action.
    pub refused: BTreeMap<String, u64>,
}

impl FleetState {
    /// Counts one API 3.0 call of `action` and refuses it when over its limit. `now_ms`
    /// is the fake's clock (Unix ms) for the fixed window.
    pub fn admit(
        &mut self,
        action: &str,
        region: &str,
        source: IpAddr,
        now_ms: i64,
    ) -> Result<(), Refusal> {
        let Some(limits) = &self.limits else {
            return Ok(());
        };
        let Some(&base) = limits.per_second.get(action) else {
            return Ok(());
        };
        let now = Instant::now();
        let scale = match self.throttle {
            Some((scale, until)) if now < until => scale,
            _ => 1.0,
        };
        let limit = (f64::from(base) * scale).max(0.0);
        let scope = match limits.scope {
            LimitScope::Account => String::new(),
            LimitScope::Region => region.to_string(),
            LimitScope::SourceIp => source.to_string(),
        };
        let second = now_ms.div_euclid(1000);
        let counter = self
            .counters
            .entry((action.to_string(), scope))
            .or_insert(Counter {
                second,
                seen: 0,
                tokens: limit,
                refilled: now,
            });
        if counter.second != second {
            counter.second = second;
            counter.seen = 0;
        }
        counter.seen += 1;
        let allowed = match limits.window {
            // The `limit`th call of a second is the last one allowed.
            #[allow(clippy::cast_precision_loss)]
            LimitWindow::FixedSecond => (counter.seen as f64) <= limit.floor(),
            LimitWindow::TokenBucket => {
                let elapsed = now.duration_since(counter.refilled).as_secs_f64();
                counter.tokens = (counter.tokens + elapsed * limit).min(limit.max(1.0));
                counter.refilled = now;
                if counter.tokens >= 1.0 {
                    counter.tokens -= 1.0;
                    true
                } else {
                    false
                }
            }
        };
        if allowed {
            return Ok(());
        }
        *self.refused.entry(action.to_string()).or_default() += 1;
        let shown = limit.floor();
        Err(Refusal {
            code: limits.code.clone(),
            message: format!(
                "Your current request times equals to `{}` in a second, which exceeds the \
                 frequency limit `{shown}` for a second. Please reduce the frequency of calls.",
                counter.seen
            ),
        })
    }
}

impl FakeCloud {
    /// Enforces `limits` on API 3.0 calls from now on (`None`: no limits, the default).
    pub fn set_rate_limits(&self, limits: Option<RateLimits>) {
        self.with_world(|w| {
            w.fleet.limits = limits;
            w.fleet.counters.clear();
        });
    }

    /// Multiplies every limit by `scale` (0.0 refuses everything limited) for `period`.
    pub fn throttle(&self, scale: f64, period: Duration) {
        self.with_world(|w| w.fleet.throttle = Some((scale.max(0.0), Instant::now() + period)));
    }

    /// Calls refused by the limiter so far, by action.
    pub fn limit_refusals(&self) -> BTreeMap<String, u64> {
        self.with_world(|w| w.fleet.refused.clone())
    }

    /// When the task of `request_id` ended (fake clock, Unix ms), if it has.
    pub fn task_ended_ms(&self, request_id: &str) -> Option<i64> {
        self.with_world(|w| w.fleet.task_ended_ms.get(request_id).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(limits: RateLimits) -> FleetState {
        FleetState {
            limits: Some(limits),
            ..FleetState::default()
        }
    }

    const A: &str = "DescribeVpcTaskResult";

    fn src(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_fixed_second_allows_the_limit_then_refuses_until_the_next_second() {
        let mut s = state(RateLimits::documented());
        let now = 5_000;
        for _ in 0..20 {
            s.admit(A, "r", src(1), now).expect("within the limit");
        }
        let refusal = s.admit(A, "r", src(2), now + 999).expect_err("21st call");
        assert_eq!(refusal.code, "RequestLimitExceeded");
        assert!(
            refusal.message.contains("equals to `21`"),
            "{}",
            refusal.message
        );
        assert!(
            refusal.message.contains("frequency limit `20`"),
            "{}",
            refusal.message
        );
        s.admit(A, "r", src(1), now + 1000)
            .expect("a new second starts afresh");
        // Unlimited actions are never refused.
        for _ in 0..1000 {
            s.admit("DescribeAddresses", "r", src(1), now)
                .expect("unlimited");
        }
        assert_eq!(s.refused.get(A), Some(&1));
    }

    #[test]
    fn scopes_count_apart() {
        let mut by_ip = state(RateLimits::documented().scope(LimitScope::SourceIp));
        let mut account = state(RateLimits::documented());
        for n in 1..=40u8 {
            by_ip
                .admit(A, "r", src(n), 0)
                .expect("one call per address");
        }
        let refused = (1..=40u8)
            .filter(|n| account.admit(A, "r", src(*n), 0).is_err())
            .count();
        assert_eq!(refused, 20);
        let mut region = state(RateLimits::documented().scope(LimitScope::Region));
        for _ in 0..20 {
            region.admit(A, "ap-a", src(1), 0).expect("a");
            region.admit(A, "ap-b", src(1), 0).expect("b");
        }
        assert!(region.admit(A, "ap-a", src(1), 0).is_err());
    }

    #[test]
    fn the_code_is_configurable() {
        let mut s = state(
            RateLimits::documented()
                .code("LimitExceeded.ActionLimited")
                .limit(A, Some(1)),
        );
        s.admit(A, "r", src(1), 0).expect("first");
        assert_eq!(
            s.admit(A, "r", src(1), 0).expect_err("second").code,
            "LimitExceeded.ActionLimited"
        );
    }

    #[test]
    fn a_token_bucket_spends_its_burst_then_refills_at_the_rate() {
        let mut s = state(
            RateLimits::documented()
                .window(LimitWindow::TokenBucket)
                .limit(A, Some(10)),
        );
        // The calendar second does not matter to a bucket.
        let ok = (0..30)
            .filter(|i| s.admit(A, "r", src(1), i * 10).is_ok())
            .count();
        assert!((10..=11).contains(&ok), "burst of 10, got {ok}");
        std::thread::sleep(Duration::from_millis(350));
        let ok = (0..30)
            .filter(|_| s.admit(A, "r", src(1), 0).is_ok())
            .count();
        assert!(
            (3..=5).contains(&ok),
            "~3.5 tokens after 350 ms at 10/s, got {ok}"
        );
    }

    #[test]
    fn a_throttle_scales_every_limit_for_its_period() {
        let mut s = state(RateLimits::documented());
        s.throttle = Some((0.1, Instant::now() + Duration::from_millis(200)));
        let ok = (0..20)
            .filter(|_| s.admit(A, "r", src(1), 0).is_ok())
            .count();
        assert_eq!(ok, 2, "20/s scaled by 0.1");
        std::thread::sleep(Duration::from_millis(250));
        s.admit(A, "r", src(1), 1000).expect("the throttle is over");
    }
}
