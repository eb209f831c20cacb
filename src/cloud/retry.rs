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
///
/// Adaptive (docs/design.md, "Fleet scale"): the configured rate is a ceiling. Every
/// node of an account shares the account's per-action limit, so when the cloud refuses a
/// call for its rate limit ([`TokenBucket::limited`]) the bucket halves its rate (at
/// most once per [`CUT_SPACING`], so that one storm's many refusals count once), empties
/// itself, and then climbs back linearly to the ceiling over [`RECOVERY`]: a fleet that
/// was throttled together backs off together and returns slowly, instead of hammering
/// the limit again at full rate.
#[derive(Debug)]
pub struct TokenBucket {
    ceiling: f64,
    state: StdMutex<BucketState>,
}

/// Rate refusals closer together than this are one cut.
pub const CUT_SPACING: Duration = Duration::from_secs(1);
/// How long the rate takes to climb from nothing back to the ceiling.
pub const RECOVERY: Duration = Duration::from_secs(30);
/// The lowest rate a cut leaves, as a share of the ceiling (1/64: six halvings).
const FLOOR_SHARE: f64 = 1.0 / 64.0;

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    refilled: Instant,
    /// The rate right after the last cut, and when it was made (`None`: never cut).
    cut: Option<(f64, Instant)>,
    /// Claim calls waiting for a token: while any is, no other call takes one.
    claims_waiting: usize,
}

/// Who waits for a token. Claims go first (docs/design.md, "Fleet scale"): a floating
/// address that is not yet here is traffic lost now, a release can wait a token longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Releases, their task polls, listings, drift reads.
    Normal,
    /// Claim lookups, claim calls and their task polls.
    Claim,
}

/// Counts a waiting claim in its bucket for as long as it waits (also when the waiting
/// future is dropped).
struct ClaimWaiting<'a>(&'a StdMutex<BucketState>);

impl Drop for ClaimWaiting<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.claims_waiting = state.claims_waiting.saturating_sub(1);
    }
}

impl BucketState {
    /// The rate now: the ceiling, or the last cut's rate plus what it recovered since.
    fn rate(&self, ceiling: f64, now: Instant) -> f64 {
        match self.cut {
            None => ceiling,
            Some((rate, at)) => {
                let climbed = now.duration_since(at).as_secs_f64() / RECOVERY.as_secs_f64();
                (rate + climbed * ceiling).min(ceiling)
            }
        }
    }
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
        Self {
            ceiling: rate,
            state: StdMutex::new(BucketState {
                tokens: rate.max(1.0),
                refilled: Instant::now(),
                cut: None,
                claims_waiting: 0,
            }),
        }
    }

    /// Waits until a token is available and takes it.
    pub async fn acquire(&self) {
        self.acquire_as(Priority::Normal).await;
    }

    /// [`Self::acquire`] for `priority`: while a claim waits, other callers leave the
    /// tokens to it.
    pub async fn acquire_as(&self, priority: Priority) {
        let _waiting = (priority == Priority::Claim).then(|| {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.claims_waiting += 1;
            ClaimWaiting(&self.state)
        });
        loop {
            let wait = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let rate = state.rate(self.ceiling, now);
                let elapsed = now.duration_since(state.refilled).as_secs_f64();
                state.tokens = (state.tokens + elapsed * rate).min(rate.max(1.0));
                state.refilled = now;
                let yields = priority == Priority::Normal && state.claims_waiting > 0;
                if state.tokens >= 1.0 && !yields {
                    state.tokens -= 1.0;
                    return;
                }
                // A call yielding to a waiting claim looks again a token's time later.
                let tokens_short = if state.tokens >= 1.0 {
                    1.0
                } else {
                    1.0 - state.tokens
                };
                Duration::from_secs_f64(tokens_short / rate)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The cloud refused a call of this bucket's action for its rate limit: halve the
    /// rate (once per [`CUT_SPACING`]) and drop the tokens in hand.
    pub fn limited(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if state
            .cut
            .is_some_and(|(_, at)| now.duration_since(at) < CUT_SPACING)
        {
            return;
        }
        let rate = state.rate(self.ceiling, now);
        let floor = self.ceiling * FLOOR_SHARE;
        state.cut = Some(((rate / 2.0).max(floor), now));
        state.tokens = state.tokens.min(0.0);
        state.refilled = now;
    }

    /// Whether the rate is below the ceiling: the cloud refused a call for its rate
    /// limit less than [`RECOVERY`] ago.
    pub fn is_cut(&self) -> bool {
        self.rate() < self.ceiling
    }

    /// The rate this bucket allows now (calls per second).
    pub fn rate(&self) -> f64 {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.rate(self.ceiling, Instant::now())
    }
}

/// Client-side rates, in calls per second, per action. Each default is its action's
/// documented account-wide limit split the same way (a twentieth: the account's budget
/// is shared by the fleet; docs/design.md, "Fleet scale").
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
    /// polls of both families and of claims: one bucket whatever the action that
    /// started the task.
    pub task_result: f64,
    /// `MigratePrivateIpAddress` (documented as 100/s on one site, 50/s on the other:
    /// the lower figure is the budget).
    pub migrate: f64,
    /// `AssignPrivateIpAddresses` (documented limit 100/s per account).
    pub assign: f64,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            unassign: DEFAULT_UNASSIGN_RATE,
            unassign_ipv6: DEFAULT_IPV6_UNASSIGN_RATE,
            describe: DEFAULT_DESCRIBE_RATE,
            task_result: DEFAULT_TASK_RESULT_RATE,
            migrate: DEFAULT_MIGRATE_RATE,
            assign: DEFAULT_ASSIGN_RATE,
        }
    }
}

/// How much of an action's account-wide limit one node takes by default: one part in
/// this many (100/s becomes 5/s). Every default rate below is its documented limit
/// divided by this, except the task polls (see [`DEFAULT_TASK_RESULT_RATE`]).
pub const NODE_SHARES: f64 = 20.0;

/// `DescribeNetworkInterfaces` per second (100/s per account): send-time checks,
/// confirming listings, claim lookups and re-verification, drift reads.
pub const DEFAULT_DESCRIBE_RATE: f64 = 100.0 / NODE_SHARES;

/// `DescribeVpcTaskResult` per second (20/s per account). Half of the account's limit
/// rather than a twentieth: polls are spaced by the task poll interval anyway
/// (500 ms doubling to 5 s), and a refused poll cuts this rate and switches a release
/// to confirming by listing (`client/confirm.rs`).
pub const DEFAULT_TASK_RESULT_RATE: f64 = 10.0;

/// `MigratePrivateIpAddress` per second: the lower documented account limit (50/s).
pub const DEFAULT_MIGRATE_RATE: f64 = 50.0 / NODE_SHARES;

/// `AssignPrivateIpAddresses` per second (100/s per account).
pub const DEFAULT_ASSIGN_RATE: f64 = 100.0 / NODE_SHARES;

/// `cloud.max_calls_per_second`'s default: `UnassignPrivateIpAddresses` per second
/// (the config's default is this one).
pub const DEFAULT_UNASSIGN_RATE: f64 = 100.0 / NODE_SHARES;

/// The default client-side rate of `UnassignIpv6Addresses` (`cloud.max_ipv6_calls_per_second`):
/// its documented limit is 20/s per account, a fifth of the IPv4 call's, so a fifth of
/// the IPv4 default here.
pub const DEFAULT_IPV6_UNASSIGN_RATE: f64 = 20.0 / NODE_SHARES;

/// One bucket per action.
#[derive(Debug)]
pub struct RateLimits {
    pub unassign: TokenBucket,
    pub unassign_ipv6: TokenBucket,
    pub describe: TokenBucket,
    pub task_result: TokenBucket,
    pub migrate: TokenBucket,
    pub assign: TokenBucket,
}

impl RateLimits {
    pub fn new(rates: Rates) -> Self {
        Self {
            unassign: TokenBucket::new(rates.unassign),
            unassign_ipv6: TokenBucket::new(rates.unassign_ipv6),
            describe: TokenBucket::new(rates.describe),
            task_result: TokenBucket::new(rates.task_result),
            migrate: TokenBucket::new(rates.migrate),
            assign: TokenBucket::new(rates.assign),
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

    #[tokio::test(start_paused = true)]
    async fn a_rate_refusal_halves_the_rate_then_it_climbs_back_slowly() {
        let bucket = TokenBucket::new(10.0);
        for _ in 0..10 {
            bucket.acquire().await;
        }
        assert!(!bucket.is_cut());
        bucket.limited();
        assert!(bucket.is_cut());
        assert!((bucket.rate() - 5.0).abs() < 1e-9, "{}", bucket.rate());
        // A second refusal of the same storm is the same cut.
        bucket.limited();
        assert!((bucket.rate() - 5.0).abs() < 1e-9, "{}", bucket.rate());
        // The tokens in hand are gone: 5 calls now take about 1 s, not 0.5 s.
        let start = Instant::now();
        for _ in 0..5 {
            bucket.acquire().await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took <= Duration::from_millis(1100),
            "{took:?}"
        );
        // Another refusal a second after the cut cuts again.
        tokio::time::sleep(CUT_SPACING.saturating_sub(took)).await;
        bucket.limited();
        assert!(bucket.rate() < 3.0, "{}", bucket.rate());
        // Climbing back: not at once, all the way after RECOVERY.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(bucket.rate() < 10.0 * 0.5, "{}", bucket.rate());
        tokio::time::sleep(RECOVERY).await;
        assert!((bucket.rate() - 10.0).abs() < 1e-9, "{}", bucket.rate());
        assert!(!bucket.is_cut());
    }

    /// Claims go first: whichever started waiting first, a waiting claim takes the
    /// next token, and a claim that stops waiting (dropped) gives the tokens back.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_claim_takes_the_next_token_before_other_callers() {
        for claim_first in [false, true] {
            let bucket = std::sync::Arc::new(TokenBucket::new(1.0));
            bucket.acquire().await;
            let order = std::sync::Arc::new(StdMutex::new(Vec::new()));
            let spawn = |priority: Priority, name: &'static str| {
                let (bucket, order) = (
                    std::sync::Arc::clone(&bucket),
                    std::sync::Arc::clone(&order),
                );
                tokio::spawn(async move {
                    bucket.acquire_as(priority).await;
                    order.lock().unwrap().push(name);
                })
            };
            let mut waiting = Vec::new();
            if claim_first {
                waiting.push(spawn(Priority::Claim, "claim"));
            }
            for _ in 0..3 {
                waiting.push(spawn(Priority::Normal, "release"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !claim_first {
                waiting.push(spawn(Priority::Claim, "claim"));
            }
            for task in waiting {
                task.await.unwrap();
            }
            assert_eq!(
                order.lock().unwrap().as_slice(),
                ["claim", "release", "release", "release"],
                "claim first: {claim_first}"
            );
        }
        // A claim that gave up waiting leaves the tokens to the others.
        let bucket = TokenBucket::new(1.0);
        bucket.acquire().await;
        let gave_up = tokio::time::timeout(
            Duration::from_millis(100),
            bucket.acquire_as(Priority::Claim),
        )
        .await;
        assert!(gave_up.is_err());
        let start = Instant::now();
        bucket.acquire().await;
        assert!(
            start.elapsed() <= Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    /// Every default rate is its action's documented account-wide limit over the same
    /// number of shares; Migrate takes the lower of its two documented figures.
    #[test]
    fn default_rates_split_each_account_limit_alike() {
        let r = Rates::default();
        for (rate, account_limit) in [
            (r.unassign, 100.0),
            (r.describe, 100.0),
            (r.unassign_ipv6, 20.0),
            (r.migrate, 50.0),
            (r.assign, 100.0),
        ] {
            assert!((rate * NODE_SHARES - account_limit).abs() < 1e-9, "{rate}");
        }
        assert!(r.task_result <= 20.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_storm_keeps_the_rate_low_but_never_zero() {
        let bucket = TokenBucket::new(8.0);
        for _ in 0..20 {
            tokio::time::sleep(CUT_SPACING).await;
            bucket.limited();
        }
        // A refusal every second: halved each time, recovering 8/30 per second in
        // between, it settles near 8/30 (never under the floor of 8/64).
        let rate = bucket.rate();
        assert!((0.125..0.3).contains(&rate), "{rate}");
        // Right after a cut, nothing is in hand: the next call waits ~1/rate.
        let start = Instant::now();
        bucket.acquire().await;
        assert!(
            start.elapsed() >= Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }
}
