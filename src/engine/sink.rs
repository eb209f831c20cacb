//! What the engine reports about itself: the counters `status` shows, and what it
//! hands a [`MetricsSink`] (`ops::metrics` renders it as Prometheus metrics; the
//! engine does not know how).

use serde::Serialize;

use super::claim::{ClaimDecision, ClaimReason};
use super::intent::{Outcome, Phase};
use super::reasons::{HeldReason, RefusalKind};
use super::{Engine, Router};
use crate::cloud::Cloud;

/// Counters exported as metrics and shown in status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub released: u64,
    pub already_gone: u64,
    pub cancelled: u64,
    pub refused: u64,
    pub held: u64,
    /// Of `held`: removals held because their remover is unknown.
    pub held_unknown_remover: u64,
    pub alarms: u64,
    pub unassign_calls: u64,
    pub dry_run_calls: u64,
}

/// How one release decision ended, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseCount<'a> {
    Ended(&'a Outcome),
    Refused(RefusalKind),
}

impl ReleaseCount<'_> {
    /// The `outcome` label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Ended(Outcome::Released { .. }) => "released",
            Self::Ended(Outcome::AlreadyGone) => "already_gone",
            Self::Ended(Outcome::Cancelled(_)) => "cancelled",
            Self::Ended(Outcome::DryRun) => "dry_run",
            Self::Refused(_) => "refused",
        }
    }

    /// The `reason` label: why it was cancelled or refused; empty otherwise.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Ended(Outcome::Cancelled(c)) => c.key(),
            Self::Refused(kind) => kind.key(),
            Self::Ended(_) => "",
        }
    }
}

/// The engine's gauges, as of the end of a loop turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Intents neither held nor parked (grace, checks, calls).
    pub pending: usize,
    pub held: usize,
    /// Of `held`: held because nobody knows who removed the address.
    pub held_unknown_remover: usize,
    pub parked: usize,
    pub paused: bool,
    /// Records in the journal file, when there is one.
    pub journal_records: Option<usize>,
}

/// Where the engine reports what it did. Implemented by `ops::metrics::Metrics`.
pub trait MetricsSink: Send + Sync + std::fmt::Debug {
    /// A release decision ended, or the cloud refused one.
    fn release_counted(&self, count: ReleaseCount<'_>);
    /// A released or releasing IP came back on the host.
    fn alarm_raised(&self);
    /// A release was delayed by the per-host limit.
    fn host_limit_waited(&self);
    /// The gauges now.
    fn gauges(&self, gauges: &Gauges);
    /// A claim decision (docs/design.md, "Claims"): `decision` and `reason` keys.
    fn claim_counted(&self, _decision: ClaimDecision, _reason: ClaimReason) {}
    /// The claims now: claimed, contested (backing off), orphaned.
    fn claim_gauges(&self, _claimed: usize, _contested: usize, _orphans: usize) {}
}

impl<C: Cloud, R: Router> Engine<C, R> {
    /// Reports the gauges from the intents (once per loop turn; the map is small).
    pub(super) fn report_gauges(&self) {
        let Some(sink) = &self.metrics else { return };
        let all = || self.intents.values().chain(self.following.values());
        let count = |f: fn(&Phase) -> bool| all().filter(|i| f(&i.phase)).count();
        sink.gauges(&Gauges {
            pending: count(|p| !matches!(p, Phase::Held | Phase::Parked { .. })),
            held: count(|p| matches!(p, Phase::Held)),
            held_unknown_remover: self
                .intents
                .values()
                .filter(|i| matches!(i.held_reason, Some(HeldReason::UnknownRemover(_))))
                .count(),
            parked: count(|p| matches!(p, Phase::Parked { .. })),
            paused: self.pause.in_force().is_some(),
            journal_records: self
                .journal
                .as_ref()
                .map(crate::journal::Journal::record_count),
        });
        let (claimed, contested, orphans) = self.claim_gauge_values(tokio::time::Instant::now());
        sink.claim_gauges(claimed, contested, orphans);
    }

    pub(super) fn count_release(&self, count: ReleaseCount<'_>) {
        if let Some(sink) = &self.metrics {
            sink.release_counted(count);
        }
    }
}
