//! Politeness towards the cloud: backoff with jitter and a client-side rate limit per
//! action. One mutating call at a time per ENI is the engine's (its per-ENI slot, see
//! docs/design.md): it is the only caller of `unassign`.
//!
//! Tencent's documented rate limits are per account and shared by every host of the
//! fleet, so each agent keeps its own rate far below them; the jitter keeps a fleet that
//! was throttled at the same moment from retrying in lockstep.

use std::sync::Mutex as StdMutex;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: at most `rate` calls per second on average, bursts up to `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: StdMutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A bucket of `rate` tokens per second holding at most `max(rate, 1)`, initially full.
    /// A rate that is not a positive number is taken as one call per second rather than
    /// "never" or "unlimited": both would be worse surprises.
    pub fn new(rate: f64) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            1.0
        };
        let burst = rate.max(1.0);
        Self {
            rate,
            burst,
            state: StdMutex::new(BucketState {
                tokens: burst,
                refilled: Instant::now(),
            }),
        }
    }

    /// Waits until a token is available and takes it.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let elapsed = now.duration_since(state.refilled).as_secs_f64();
                state.tokens = (state.tokens + elapsed * self.rate).min(self.burst);
                state.refilled = now;
                if state.tokens >= 1.0 {
                    state.tokens -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - state.tokens) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Client-side rates, in calls per second, per action.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// `UnassignPrivateIpAddresses` (documented limit 100/s per account).
    pub unassign: f64,
    /// `UnassignIpv6Addresses` (documented limit 20/s per account: a fifth of the IPv4
    /// call's, so a fifth of its rate here).
    pub unassign_ipv6: f64,
    /// `DescribeNetworkInterfaces` (documented limit 100/s per account).
    pub describe: f64,
    /// `DescribeVpcTaskResult` (documented limit 20/s per account), shared by the task
    /// polls of both families: one bucket whatever the action that started the task.
    pub task_result: f64,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            unassign: DEFAULT_UNASSIGN_RATE,
            unassign_ipv6: DEFAULT_IPV6_UNASSIGN_RATE,
            describe: 5.0,
            task_result: 10.0,
        }
    }
}

/// `cloud.max_calls_per_second`'s default: `UnassignPrivateIpAddresses` per second
/// (the config's default is this one).
pub const DEFAULT_UNASSIGN_RATE: f64 = 5.0;

/// The default client-side rate of `UnassignIpv6Addresses` (`cloud.max_ipv6_calls_per_second`):
/// its documented limit is 20/s per account, a fifth of the IPv4 call's, so a fifth of
/// the IPv4 default here.
pub const DEFAULT_IPV6_UNASSIGN_RATE: f64 = 1.0;

/// One bucket per action.
#[derive(Debug)]
pub struct RateLimits {
    pub unassign: TokenBucket,
    pub unassign_ipv6: TokenBucket,
    pub describe: TokenBucket,
    pub task_result: TokenBucket,
}

impl RateLimits {
    pub fn new(rates: Rates) -> Self {
        Self {
            unassign: TokenBucket::new(rates.unassign),
            unassign_ipv6: TokenBucket::new(rates.unassign_ipv6),
            describe: TokenBucket::new(rates.describe),
            task_result: TokenBucket::new(rates.task_result),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn token_bucket_limits_the_rate_after_the_burst() {
        let bucket = TokenBucket::new(5.0);
        let start = Instant::now();
        for _ in 0..5 {
            bucket.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is immediate");
        for _ in 0..10 {
            bucket.acquire().await;
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1990) && elapsed <= Duration::from_millis(2100),
            "10 more tokens at 5/s take 2 s, took {elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_treats_a_nonsense_rate_as_one_per_second() {
        let bucket = TokenBucket::new(0.0);
        let start = Instant::now();
        bucket.acquire().await;
        bucket.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(990));
    }
}
