//! Confirming a release by listing instead of polling its task (docs/design.md, "Fleet
//! scale").
//!
//! `DescribeVpcTaskResult` has a fifth of `DescribeNetworkInterfaces`'s per-account
//! budget (20/s against 100/s), and one listing shows every ENI of the instance. So an
//! IPv4 API 3.0 release is confirmed by listing from its first task on: its IPs gone
//! from its ENI is its task's success. (Waiting for a refused poll before switching,
//! as first built, cost every node of a burst one refused poll: BENCHMARKS.md,
//! "Fleet".) A listing cannot show a FAILED task (the IPs simply stay), so a release whose
//! IPs are still listed [`CONFIRM_WINDOW`] after its call falls back to
//! `DescribeVpcTaskResult`. A confirming listing read after the task ended stays cached
//! (for the client's TTL) and serves the ENI's next send-time check: it was read after
//! the ENI's last task ended, which is what that check needs.

use std::collections::HashMap;

use super::*;

/// Two task-times (tasks take 1 to 3 s): a release still listed this long after its
/// call is followed by `DescribeVpcTaskResult`.
pub const CONFIRM_WINDOW: Duration = Duration::from_secs(6);

/// The wait before the first confirming listing: two task poll steps (1 s by default).
///
/// A task takes 1 to 3 s, so a listing at the first poll step (500 ms) cannot show it
/// ended. Skipping that step leaves every wait of a node at least 1 s apart (the send-time
/// listing, then the confirming ones at 1 s and 3 s after the call): a node lists at
/// most once in any second, and 100 nodes sending together no longer overflow a
/// fixed-second limit of 100 listings (measured in BENCHMARKS.md, "Fleet").
fn first_confirm_wait(task_poll_start: Duration) -> Duration {
    task_poll_start.saturating_mul(2)
}

/// Sent releases that may be confirmed by listing, by task id.
#[derive(Debug, Default)]
pub(super) struct SentReleases(HashMap<String, SentRelease>);

#[derive(Debug)]
pub(super) struct SentRelease {
    eni_id: String,
    ips: Vec<Ipv4Addr>,
    at: Instant,
}

/// Entries older than this are forgotten (their task was never followed: the engine
/// went away); it bounds the map.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

impl SentReleases {
    pub(super) fn insert(&mut self, task_id: &str, eni_id: &str, ips: &[Ipv4Addr]) {
        self.0.retain(|_, s| s.at.elapsed() < FORGET_AFTER);
        self.0.insert(
            task_id.to_owned(),
            SentRelease {
                eni_id: eni_id.to_owned(),
                ips: ips.to_vec(),
                at: Instant::now(),
            },
        );
    }

    pub(super) fn take(&mut self, task_id: &str) -> Option<SentRelease> {
        self.0.remove(task_id)
    }
}

/// Whether `enis` show `sent`'s ENI without any of its IPs. An ENI not listed at all
/// confirms nothing.
fn gone(enis: &[Eni], sent: &SentRelease) -> bool {
    enis.iter()
        .find(|e| e.id == sent.eni_id)
        .is_some_and(|eni| {
            !eni.ips
                .iter()
                .any(|ip| matches!(ip.addr, IpAddr::V4(v4) if sent.ips.contains(&v4)))
        })
}

impl TencentCloud {
    /// Remembers an accepted IPv4 API 3.0 release for [`Self::confirm_by_listing`].
    pub(super) fn remember_sent(&self, task: &TaskRef, eni_id: &str, ips: &[Ipv4Addr]) {
        if task.protocol == Protocol::V3 && !ips.is_empty() {
            self.sent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(&task.task_id, eni_id, ips);
        }
    }

    /// The release `task` started, if it may be confirmed by listing (an IPv4 API 3.0
    /// release sent by this client).
    pub(super) fn take_sent(&self, task: &TaskRef) -> Option<SentRelease> {
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(&task.task_id)
    }

    /// `Some(Success)` when a listing shows the release's IPs gone from its ENI within
    /// [`CONFIRM_WINDOW`] of its call; `None` when they are still listed then (follow
    /// the task by polling).
    pub(super) async fn confirm_by_listing(
        &self,
        task: &TaskRef,
        sent: &SentRelease,
        deadline: Instant,
    ) -> Option<TaskStatus> {
        // Within the task cap too: a task followed for less than two task-times
        // (`cloud.task_timeout`) is polled at its cap as before.
        let window = (sent.at + CONFIRM_WINDOW).min(deadline);
        let mut interval = first_confirm_wait(self.task_poll_start);
        loop {
            let now = Instant::now();
            if now >= window {
                break;
            }
            // Not jittered: ±25 % was measured to change nothing (BENCHMARKS.md, "Fleet").
            tokio::time::sleep(interval.min(window - now)).await;
            match self.list_all_enis().await {
                Ok(enis) if gone(&enis, sent) => {
                    tracing::info!(
                        task_id = %task.task_id,
                        eni_id = %sent.eni_id,
                        took_ms = crate::millis(sent.at.elapsed()),
                        "task finished: its IPs are no longer listed (confirmed by listing)"
                    );
                    return Some(TaskStatus::Success);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(task_id = %task.task_id, %error, "confirming by listing failed");
                }
            }
            interval = interval.saturating_mul(2).min(self.task_poll_cap);
        }
        tracing::info!(
            task_id = %task.task_id,
            "IPs still listed two task-times after the call: following the task"
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::EniIp;

    fn eni(id: &str, ips: &[&str]) -> Eni {
        Eni {
            id: id.into(),
            mac: crate::net::MacAddr::parse("52:54:00:12:34:56").expect("mac"),
            vpc_id: "vpc".into(),
            subnet_id: "subnet".into(),
            state: "AVAILABLE".into(),
            primary: false,
            attachment: None,
            ips: ips
                .iter()
                .map(|ip| EniIp {
                    addr: ip.parse().expect("ip"),
                    primary: false,
                    state: "AVAILABLE".into(),
                    eip: None,
                })
                .collect(),
        }
    }

    /// The confirming listings' waits under the default poll settings: at least 1 s each,
    /// so a node lists at most once within any fixed second.
    #[test]
    fn confirming_listings_of_a_node_are_a_second_apart_by_default() {
        let defaults = crate::cloud::client::CloudSettings::new("ap-guangzhou", "ins-1");
        let mut wait = first_confirm_wait(defaults.task_poll_start);
        let mut at = Duration::ZERO;
        while at + wait < CONFIRM_WINDOW {
            assert!(wait >= Duration::from_secs(1), "a wait of {wait:?}");
            at += wait;
            wait = wait.saturating_mul(2).min(defaults.task_poll_cap);
        }
        assert_eq!(
            at,
            Duration::from_secs(3),
            "listings at 1 s and 3 s after the call"
        );
    }

    #[test]
    fn only_an_eni_listed_without_the_ips_confirms() {
        let sent = SentRelease {
            eni_id: "eni-1".into(),
            ips: vec![
                "10.0.1.11".parse().expect("ip"),
                "10.0.1.12".parse().expect("ip"),
            ],
            at: Instant::now(),
        };
        assert!(gone(&[eni("eni-1", &["10.0.1.10", "10.0.1.13"])], &sent));
        assert!(!gone(&[eni("eni-1", &["10.0.1.10", "10.0.1.12"])], &sent));
        // The IPs on another ENI do not matter; the ENI missing confirms nothing.
        assert!(!gone(&[eni("eni-2", &["10.0.1.10"])], &sent));
        assert!(!gone(&[], &sent));
    }
}
