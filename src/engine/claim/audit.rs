//! The audit records, alarms and counts of claim decisions: every decision is an audit
//! record (target `audit`, `decision` and `reason` keys) and a metric.

use std::net::Ipv4Addr;

use tracing::{debug, info, warn};

use super::ClaimEntry;
use super::keys::{ClaimDecision, ClaimReason};
use super::trigger::Skip;
use crate::cloud::Cloud;
use crate::engine::audit::describe_optional_remover;
use crate::engine::{Engine, Router};
use crate::host::Remover;

impl<C: Cloud, R: Router> Engine<C, R> {
    pub(super) fn claim_skipped(
        &mut self,
        ip: Ipv4Addr,
        link: Option<&str>,
        skip: Skip,
        adder: Option<&Remover>,
    ) {
        let (decision, reason) = (ClaimDecision::Skipped.as_str(), skip.reason().as_str());
        self.count_claim(ClaimDecision::Skipped, skip.reason());
        let link = link.unwrap_or("?");
        let adder = describe_optional_remover(adder);
        if skip.is_off_the_enis() {
            debug!(target: "audit", decision, reason, ip = %ip, link, adder, "floating IP added; no claim");
        } else {
            info!(target: "audit", decision, reason, ip = %ip, link, adder, "floating IP added; no claim");
        }
    }

    pub(super) fn claim_decided(
        &mut self,
        ip: Ipv4Addr,
        entry: &ClaimEntry,
        decision: ClaimDecision,
        reason: ClaimReason,
        detail: &str,
    ) {
        self.count_claim(decision, reason);
        info!(
            target: "audit",
            decision = decision.as_str(),
            reason = reason.as_str(),
            ip = %ip,
            link = %entry.link_name,
            eni = %entry.eni_id,
            detail,
            "floating IP claim"
        );
    }

    /// A decision that needs an operator: an audit warning, an alarm for `status`.
    pub(super) fn claim_alarm(
        &mut self,
        ip: Ipv4Addr,
        entry: &ClaimEntry,
        decision: ClaimDecision,
        reason: ClaimReason,
        detail: &str,
    ) {
        self.count_claim(decision, reason);
        self.counters.alarms += 1;
        if let Some(sink) = &self.metrics {
            sink.alarm_raised();
        }
        warn!(
            target: "audit",
            decision = decision.as_str(),
            reason = reason.as_str(),
            ip = %ip,
            link = %entry.link_name,
            eni = %entry.eni_id,
            detail,
            "floating IP claim needs an operator"
        );
        self.alarms
            .push_front(format!("{ip} {decision} ({reason}): {detail}"));
        self.alarms.truncate(crate::engine::RECENT_KEPT);
    }

    pub(super) fn count_claim(&mut self, decision: ClaimDecision, reason: ClaimReason) {
        *self.claims.counts.entry((decision, reason)).or_default() += 1;
        if let Some(sink) = &self.metrics {
            sink.claim_counted(decision, reason);
        }
    }
}
