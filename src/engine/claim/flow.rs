//! Host events, the clock and the cloud's answers applied to the claims: the one place a
//! claim is decided (docs/design.md, "Claims").

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::calls::{LookupPurpose, spawn_lookup};
use super::keys::{ClaimDecision, ClaimReason};
use super::trigger::{Skip, adder_allowed, link_and_address, still_there};
use super::{ClaimEntry, ClaimPhase, ClaimTarget};
use crate::cloud::Cloud;
use crate::engine::audit::describe_optional_remover;
use crate::engine::{Engine, Router};
use crate::host::{Addr, Remover};

/// The first wait of a claim that could not be decided (cloud trouble, not AVAILABLE);
/// it doubles up to `claim.reverify_interval`.
const CLAIM_RETRY_START: Duration = Duration::from_secs(1);

impl<C: Cloud, R: Router> Engine<C, R> {
    /// An address of a claim CIDR present at start counts as added at start.
    pub(in crate::engine) fn claims_at_start(&mut self, now: Instant) {
        let present: Vec<Addr> = self
            .view
            .addrs
            .values()
            .filter(|a| matches!(a.ip, IpAddr::V4(v4) if self.settings.claim.covers(v4)))
            .copied()
            .collect();
        for addr in present {
            self.on_claim_added(&addr, None, true, now);
        }
    }

    /// An address was added (`adder`: who did, when the watcher could tell).
    pub(in crate::engine) fn on_claim_added(
        &mut self,
        addr: &Addr,
        adder: Option<Remover>,
        at_start: bool,
        now: Instant,
    ) {
        let IpAddr::V4(ip) = addr.ip else {
            return;
        };
        if !self.settings.claim.covers(ip) {
            return;
        }
        let link = self.view.links.get(&addr.link).cloned();
        if let Err(skip) = link_and_address(&self.settings, &self.inventory, link.as_ref(), ip) {
            self.claim_skipped(
                ip,
                link.as_ref().map(|l| l.name.as_str()),
                skip,
                adder.as_ref(),
            );
            return;
        }
        let Some(link) = link else { return };
        let Some(eni_id) = link
            .mac
            .and_then(|m| self.inventory.by_mac(m))
            .map(|r| r.eni_id.clone())
        else {
            return;
        };
        // Being claimed (its lookup or call checks the host again), or claimed and never
        // gone from the host (a repeated notification): nothing changed. Claimed but gone
        // for a while is claimed again like any addition: the peer may have taken it
        // meanwhile (a failover and a failback within one re-verification interval).
        if let Some(entry) = self.claims.entries.get_mut(&ip)
            && entry.link == addr.link
            && match entry.phase {
                ClaimPhase::LookingUp | ClaimPhase::Calling => true,
                ClaimPhase::Claimed { .. } => entry.absent_since.is_none(),
                _ => false,
            }
        {
            entry.absent_since = None;
            return;
        }
        self.claims.next_attempt += 1;
        let attempt = self.claims.next_attempt;
        let due = now + self.settings.claim.settle;
        info!(
            target: "audit",
            decision = ClaimDecision::Pending.as_str(),
            ip = %ip,
            link = %link.name,
            eni = %eni_id,
            adder = adder.as_ref().map_or_else(
                || if at_start { "present at start".to_string() } else { "being identified".to_string() },
                |a| describe_optional_remover(Some(a)),
            ).as_str(),
            at_start,
            settle_ms = crate::millis(self.settings.claim.settle),
            "floating IP added; claimed if it stays for claim.settle"
        );
        self.claims.entries.insert(
            ip,
            ClaimEntry {
                ip,
                link: addr.link,
                link_name: link.name.clone(),
                eni_id,
                attempt,
                adder,
                at_start,
                phase: ClaimPhase::Settling { due },
                contests: 0,
                absent_since: None,
                pause_logged: false,
                retries: 0,
            },
        );
    }

    /// The watcher named who added `ip` (it does so right after the addition).
    pub(in crate::engine) fn on_claim_adder(&mut self, ip: Ipv4Addr, adder: Remover) {
        if let Some(entry) = self.claims.entries.get_mut(&ip)
            && matches!(entry.phase, ClaimPhase::Settling { .. })
            && entry.adder.is_none()
        {
            info!(
                ip = %ip,
                link = %entry.link_name,
                adder = describe_optional_remover(Some(&adder)).as_str(),
                "floating IP adder identified"
            );
            entry.adder = Some(adder);
        }
    }

    /// An address left a link: a settling claim ends (a backup that held the VIP for
    /// less than `claim.settle` takes nothing); a claimed one starts counting as absent.
    pub(in crate::engine) fn on_claim_removed(&mut self, addr: &Addr, now: Instant) {
        let IpAddr::V4(ip) = addr.ip else {
            return;
        };
        let Some(entry) = self.claims.entries.get_mut(&ip) else {
            return;
        };
        if entry.link != addr.link {
            return;
        }
        match entry.phase {
            ClaimPhase::Settling { .. } => {
                let entry = self.claims.entries.remove(&ip);
                self.claim_skipped(
                    ip,
                    entry.as_ref().map(|e| e.link_name.as_str()),
                    Skip::Gone,
                    None,
                );
            }
            _ => {
                if entry.absent_since.is_none() {
                    entry.absent_since = Some(now);
                }
            }
        }
    }

    /// A link went down or away: its settling claims end.
    pub(in crate::engine) fn on_claim_link(&mut self, index: u32) {
        let up = self.view.links.get(&index).is_some_and(|l| l.up);
        if up {
            return;
        }
        let ended: Vec<(Ipv4Addr, String)> = self
            .claims
            .entries
            .values()
            .filter(|e| e.link == index && matches!(e.phase, ClaimPhase::Settling { .. }))
            .map(|e| (e.ip, e.link_name.clone()))
            .collect();
        for (ip, link) in ended {
            self.claims.entries.remove(&ip);
            self.claim_skipped(ip, Some(&link), Skip::LinkDown, None);
        }
    }

    /// After a resync, every claimed address is checked against the cloud again.
    pub(in crate::engine) fn claims_reverify_now(&mut self, now: Instant) {
        for entry in self.claims.entries.values_mut() {
            if let ClaimPhase::Claimed { next_verify } = &mut entry.phase {
                *next_verify = now;
            }
        }
    }

    /// Starts what is due: settled claims, waits that ended, re-verifications.
    pub(in crate::engine) fn claims_due(&mut self, now: Instant) {
        let paused = self.pause.in_force().is_some();
        let due: Vec<Ipv4Addr> = self
            .claims
            .entries
            .values()
            .filter(|e| match e.phase {
                ClaimPhase::Settling { due }
                | ClaimPhase::Waiting { due, .. }
                | ClaimPhase::Contested { due } => due <= now,
                ClaimPhase::Claimed { next_verify } => next_verify <= now,
                _ => false,
            })
            .map(|e| e.ip)
            .collect();
        for ip in due {
            let Some(entry) = self.claims.entries.get(&ip).cloned() else {
                continue;
            };
            if let ClaimPhase::Claimed { .. } = entry.phase {
                self.claim_reverify(&entry, now);
                continue;
            }
            if paused {
                if !entry.pause_logged {
                    self.claim_decided(ip, &entry, ClaimDecision::Paused, ClaimReason::Paused, "");
                    if let Some(e) = self.claims.entries.get_mut(&ip) {
                        e.pause_logged = true;
                    }
                }
                continue;
            }
            self.claim_start(&entry, now);
        }
    }

    /// A due claim: checks the host again, then looks up the holder.
    fn claim_start(&mut self, entry: &ClaimEntry, now: Instant) {
        let ip = entry.ip;
        let link = self.view.links.get(&entry.link).cloned();
        let local = link_and_address(&self.settings, &self.inventory, link.as_ref(), ip)
            .and_then(|()| {
                if still_there(&self.view, entry.link, ip) {
                    Ok(())
                } else {
                    Err(Skip::Gone)
                }
            })
            .and_then(|()| {
                if entry.at_start || !matches!(entry.phase, ClaimPhase::Settling { .. }) {
                    Ok(())
                } else {
                    adder_allowed(&self.settings, entry.adder.as_ref())
                }
            });
        if let Err(skip) = local {
            self.claims.entries.remove(&ip);
            self.claim_skipped(ip, Some(&entry.link_name), skip, entry.adder.as_ref());
            return;
        }
        // One call at a time per ENI, releases and claims alike: wait for the slot
        // (its end wakes the loop).
        if self.slots.is_taken(&entry.eni_id) {
            return;
        }
        let Some(vpc_id) = self
            .inventory
            .by_eni(&entry.eni_id)
            .map(|r| r.vpc_id.clone())
        else {
            self.claim_wait(
                ip,
                ClaimReason::Inventory,
                now + self.settings.claim.reverify_interval,
            );
            return;
        };
        self.slots.set_claiming(entry.eni_id.clone());
        if let Some(e) = self.claims.entries.get_mut(&ip) {
            e.phase = ClaimPhase::LookingUp;
            e.pause_logged = false;
        }
        spawn_lookup(
            &self.cloud,
            &self.claims.reports_tx,
            vpc_id,
            ip,
            entry.attempt,
            LookupPurpose::Decide,
        );
    }

    /// A claimed address is read again (reads go on under a pause).
    fn claim_reverify(&mut self, entry: &ClaimEntry, now: Instant) {
        let orphan_after = self.settings.claim.orphan_after;
        if entry
            .absent_since
            .is_some_and(|t| now.saturating_duration_since(t) > orphan_after)
        {
            warn!(
                target: "audit",
                decision = ClaimDecision::Orphan.as_str(),
                ip = %entry.ip,
                eni = %entry.eni_id,
                "a claimed floating IP has been absent from the host for longer than \
                 claim.orphan_after and is still bound here (enisync release <ip> frees it)"
            );
        }
        let Some(vpc_id) = self
            .inventory
            .by_eni(&entry.eni_id)
            .map(|r| r.vpc_id.clone())
        else {
            return;
        };
        if let Some(e) = self.claims.entries.get_mut(&entry.ip) {
            // Until the answer: the next one is not due before another interval.
            e.phase = ClaimPhase::Claimed {
                next_verify: now + self.settings.claim.reverify_interval,
            };
        }
        spawn_lookup(
            &self.cloud,
            &self.claims.reports_tx,
            vpc_id,
            entry.ip,
            entry.attempt,
            LookupPurpose::Reverify,
        );
    }

    /// Claimed, contested and orphaned addresses now (the gauges).
    pub(in crate::engine) fn claim_gauge_values(&self, now: Instant) -> (usize, usize, usize) {
        let count = |f: fn(&ClaimPhase) -> bool| {
            self.claims.entries.values().filter(|e| f(&e.phase)).count()
        };
        (
            count(|p| matches!(p, ClaimPhase::Claimed { .. })),
            count(|p| matches!(p, ClaimPhase::Contested { .. })),
            self.claims
                .orphans(now, self.settings.claim.orphan_after)
                .len(),
        )
    }

    /// The claims for `status`.
    pub(in crate::engine) fn claim_views(
        &self,
        now: Instant,
    ) -> Vec<crate::engine::commands::ClaimView> {
        self.claims.views(now, self.settings.claim.orphan_after)
    }

    pub(super) fn claim_target(&self, eni_id: &str) -> Option<ClaimTarget> {
        let record = self.inventory.by_eni(eni_id)?;
        let subnet_id = record.cloud.as_ref()?.subnet_id.clone();
        Some(ClaimTarget {
            eni_id: eni_id.to_string(),
            vpc_id: record.vpc_id.clone(),
            subnet_id,
        })
    }

    pub(super) fn claim_phase(&mut self, ip: Ipv4Addr, phase: ClaimPhase) {
        if let Some(e) = self.claims.entries.get_mut(&ip) {
            e.phase = phase;
        }
    }

    pub(super) fn claim_wait(&mut self, ip: Ipv4Addr, reason: ClaimReason, due: Instant) {
        self.claim_phase(ip, ClaimPhase::Waiting { due, reason });
    }

    /// Looked up again after a wait that doubles with each retry of this attempt.
    pub(super) fn claim_retry(&mut self, entry: &ClaimEntry, reason: ClaimReason, now: Instant) {
        let factor = 1u32 << entry.retries.min(16);
        let wait = CLAIM_RETRY_START
            .saturating_mul(factor)
            .min(self.settings.claim.reverify_interval);
        if let Some(e) = self.claims.entries.get_mut(&entry.ip) {
            e.retries = e.retries.saturating_add(1);
        }
        self.claim_wait(entry.ip, reason, now + wait);
    }
}
