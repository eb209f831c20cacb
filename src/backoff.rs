//! Exponential backoff, the one kind of retry delay enisync uses: cloud calls (with
//! jitter), the metadata service, the start-up waits and the netlink watcher's
//! reconnects (at the ceiling, without jitter).
//!
//! A leaf (it imports nothing of the crate), so `host` can use it without importing
//! `cloud` (docs/design.md, "Layering").

use std::time::Duration;

/// Exponential backoff with full jitter: attempt `n` waits a uniformly random time in
/// `[0, min(cap, base · 2ⁿ)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (0 for the first retry). `rng` is passed in
    /// so tests can seed it.
    pub fn delay(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        // Nanosecond resolution is plenty; saturate rather than wrap for huge caps.
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.u64(0..=nanos))
    }

    /// The upper bound of the delay for `attempt`, before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        assert_eq!(backoff.ceiling(0), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(1), Duration::from_millis(200));
        assert_eq!(backoff.ceiling(3), Duration::from_millis(800));
        assert_eq!(backoff.ceiling(4), Duration::from_secs(1));
        assert_eq!(backoff.ceiling(200), Duration::from_secs(1));
    }

    #[test]
    fn backoff_jitter_stays_below_the_ceiling_and_spreads() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let delays: Vec<_> = (0..200).map(|_| backoff.delay(3, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(800)));
        // Full jitter: both halves of the range are used.
        assert!(delays.iter().any(|d| *d < Duration::from_millis(400)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(400)));
        // The same seed gives the same sequence.
        let mut again = fastrand::Rng::with_seed(7);
        assert_eq!(backoff.delay(3, &mut again), delays[0]);
    }
}
