//! The claim metrics (docs/design.md, "Claims"): every claim decision by its `decision`
//! and `reason` keys, and the claims now (claimed, contested, orphaned).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    /// `claim_pending`, `claimed`, `claim_wait`, `contested`, `claim_parked`,
    /// `claim_dry_run`, `claim_paused`, `claim_skipped`, `claim_released`.
    pub decision: String,
    /// The decision's reason key (`foreign_holder`, `startup_holdoff`, ...).
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct ClaimMetrics {
    pub decisions: Family<ClaimLabels, Counter>,
    pub claimed: Gauge,
    pub contested: Gauge,
    pub orphans: Gauge,
}

impl ClaimMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "claims",
            "Floating IP claim decisions by decision and reason",
            self.decisions.clone(),
        );
        registry.register(
            "claimed_ips",
            "Floating IPs claimed and bound to this host's ENIs",
            self.claimed.clone(),
        );
        registry.register(
            "contested_ips",
            "Floating IPs the cloud moved away while this host kept them, backing off",
            self.contested.clone(),
        );
        registry.register(
            "claim_orphans",
            "Claimed floating IPs absent from the host longer than claim.orphan_after",
            self.orphans.clone(),
        );
    }

    pub fn decision(&self, decision: &str, reason: &str) {
        self.decisions
            .get_or_create(&ClaimLabels {
                decision: decision.into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub fn set(&self, claimed: usize, contested: usize, orphans: usize) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.claimed.set(count(claimed));
        self.contested.set(count(contested));
        self.orphans.set(count(orphans));
    }
}
