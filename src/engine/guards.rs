//! The two blast-radius guards around the rule: clause 6 (a burst of removals is held for
//! an operator) and the per-host release limit. Each owns its window of recent events.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

/// Clause 6: the candidate removals of the last `burst_window`.
#[derive(Debug, Default)]
pub(super) struct BurstGuard {
    recent: VecDeque<(Instant, IpAddr)>,
}

impl BurstGuard {
    /// Counts a candidate removal. When more than `limit` fell within `window`, the
    /// addresses of the window are returned: they are a burst.
    pub fn record(
        &mut self,
        ip: IpAddr,
        now: Instant,
        limit: usize,
        window: Duration,
    ) -> Option<Vec<IpAddr>> {
        self.recent.push_back((now, ip));
        while let Some((t, _)) = self.recent.front() {
            if now.duration_since(*t) > window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        (self.recent.len() > limit).then(|| self.recent.iter().map(|(_, ip)| *ip).collect())
    }

    /// An operator confirmed the held releases: the count starts again.
    pub fn clear(&mut self) {
        self.recent.clear();
    }
}

/// The per-host limit: when each of the recent releases went out.
#[derive(Debug, Default)]
pub(super) struct HostLimit {
    sent_at: VecDeque<Instant>,
}

impl HostLimit {
    /// Lets through as many of `ips` as `limit` per `window` allows (all when `limit` is
    /// 0) and counts them as sent now. The rest are returned with the instant the
    /// window frees its first slot (when its oldest release ages out).
    pub fn admit(
        &mut self,
        mut ips: Vec<IpAddr>,
        now: Instant,
        limit: usize,
        window: Duration,
    ) -> (Vec<IpAddr>, Vec<IpAddr>, Instant) {
        if limit == 0 {
            return (ips, Vec::new(), now);
        }
        while self
            .sent_at
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            self.sent_at.pop_front();
        }
        let room = limit.saturating_sub(self.sent_at.len());
        let over = ips.split_off(room.min(ips.len()));
        self.sent_at.extend(std::iter::repeat_n(now, ips.len()));
        let free_at = self.sent_at.front().map_or(now, |t| *t + window);
        (ips, over, free_at)
    }
}
