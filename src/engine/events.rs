//! Host events: what a removal, an addition or a link change does to the intents.

use std::net::IpAddr;

use tokio::time::Instant;
use tracing::{info, warn};

use super::audit::{describe_optional_remover, unix_ms};
use super::intent::{Intent, Phase};
use super::reasons::{Cancel, HeldReason};
use super::{Engine, Router, rule};
use crate::cloud::Cloud;
use crate::host::{Addr, HostEvent, Link, Remover};
use crate::journal::{IntentKey, RecordState};

impl<C: Cloud, R: Router> Engine<C, R> {
    pub(super) async fn on_host_event(&mut self, event: HostEvent, now: Instant) {
        // Clause 3 needs the subnet's primary as it was before this removal.
        let subnet_primary = match &event {
            HostEvent::AddrRemoved { addr, .. } => rule::subnet_primary(&self.view, addr),
            _ => None,
        };
        let old_link = match &event {
            HostEvent::LinkChanged(link) => self.view.links.get(&link.index).cloned(),
            _ => None,
        };
        self.view.apply(&event);
        match event {
            HostEvent::AddrRemoved { addr, remover } => {
                self.on_claim_removed(&addr, now);
                self.on_addr_removed(addr, remover, subnet_primary, now);
            }
            HostEvent::LinkRemoved { index } => {
                self.cancel_where(|i| i.link == index, &Cancel::LinkGone);
                self.on_claim_link(index);
            }
            // The kernel flushes a table's routes silently when its link goes down or
            // loses its last address: every one of these may need a repair.
            HostEvent::AddrAdded(addr) => {
                let on_eni = self.link_has_eni(addr.link);
                self.on_addr_added(&addr);
                self.on_claim_added(&addr, None, false, now);
                // Policy routing covers ENI links only; container churn on bridges and
                // veths must not cost a rule and route dump per address.
                let claimed = matches!(addr.ip, IpAddr::V4(v4) if self.settings.claim.covers(v4));
                if on_eni && claimed {
                    self.routing_after_claims = true;
                } else if on_eni {
                    self.router.reconcile(&self.view, &self.inventory).await;
                }
            }
            HostEvent::LinkChanged(link) => {
                self.on_link_changed(old_link, &link);
                self.on_claim_link(link.index);
                self.router.reconcile(&self.view, &self.inventory).await;
            }
            HostEvent::AddrAdder { ip, adder, .. } => {
                if let IpAddr::V4(v4) = ip {
                    self.on_claim_adder(v4, adder);
                }
            }
            HostEvent::RoutingChanged => {
                self.router.reconcile(&self.view, &self.inventory).await;
            }
            HostEvent::Resynced => {
                self.claims_reverify_now(now);
                self.router.reconcile(&self.view, &self.inventory).await;
            }
        }
    }

    fn on_addr_removed(
        &mut self,
        addr: Addr,
        remover: Option<Remover>,
        subnet_primary: Option<IpAddr>,
        now: Instant,
    ) {
        let swept = rule::swept_with_primary(
            &self.settings,
            self.intents.values(),
            &addr,
            remover.as_ref(),
            now,
        );
        for ip in swept {
            self.cancel(ip, Cancel::Collateral);
        }
        let link = self.view.links.get(&addr.link).cloned();
        let verdict = rule::at_removal(self.world(), &addr, link.as_ref(), remover.as_ref());
        let (Ok(()), Some(link)) = (&verdict, link.as_ref()) else {
            if let Err(cancel) = &verdict {
                self.audit_skip(addr.ip, link.as_ref(), remover.as_ref(), cancel);
            }
            return;
        };
        let eni_id = link
            .mac
            .and_then(|m| self.inventory.by_mac(m))
            .map(|r| r.eni_id.clone());
        let generation = self.next_generation(addr.ip);
        let held_reason = rule::unknown_remover(remover.as_ref()).map(HeldReason::UnknownRemover);
        let intent = Intent {
            link: addr.link,
            link_name: link.name.clone(),
            prefix: addr.prefix,
            mac: link.mac,
            eni_id: eni_id.clone(),
            remover: remover.clone(),
            observed_unix_ms: unix_ms(),
            due: now + self.settings.grace,
            held_reason: held_reason.clone(),
            secondary: addr.secondary,
            subnet_primary: subnet_primary.filter(|p| *p != addr.ip),
            ..Intent::new(
                addr.ip,
                generation,
                now,
                if held_reason.is_some() {
                    Phase::Held
                } else {
                    Phase::Pending
                },
            )
        };
        self.journal(
            IntentKey::release(addr.ip, generation),
            RecordState::Observed {
                link: link.name.clone(),
                mac: link.mac.map(|m| m.to_string()),
                eni_id: eni_id.clone(),
                remover: remover.as_ref().map(Into::into),
                held: held_reason.is_some(),
                sending: false,
                by_hand: false,
            },
        );
        if let Some(held @ HeldReason::UnknownRemover(why)) = &held_reason {
            self.counters.held += 1;
            self.counters.held_unknown_remover += 1;
            warn!(
                target: "audit",
                decision = "held",
                reason = held.key(),
                ip = %addr.ip,
                link = %link.name,
                eni = eni_id.as_deref().unwrap_or("?"),
                remover = describe_optional_remover(remover.as_ref()).as_str(),
                why = %why,
                "aux IP removed by an unknown remover; held until an operator confirms \
                 (enisync release --held) or it comes back"
            );
        } else {
            info!(
                target: "audit",
                decision = "pending",
                ip = %addr.ip,
                link = %link.name,
                eni = eni_id.as_deref().unwrap_or("?"),
                remover = describe_optional_remover(remover.as_ref()).as_str(),
                grace_ms = crate::millis(self.settings.grace),
                "aux IP removed; release pending its grace period"
            );
        }
        self.make_room(addr.ip, generation);
        self.intents.insert(addr.ip, intent);
        self.count_for_burst(addr.ip, now);
    }

    /// Clause 6: too many aux IPs leaving at once are held for an operator.
    fn count_for_burst(&mut self, ip: IpAddr, now: Instant) {
        let (limit, window) = (self.settings.burst_limit, self.settings.burst_window);
        let Some(burst) = self.burst.record(ip, now, limit, window) else {
            return;
        };
        let mut newly_held = Vec::new();
        for ip in burst {
            if let Some(intent) = self.intents.get_mut(&ip)
                && intent.phase == Phase::Pending
            {
                intent.phase = Phase::Held;
                intent.held_reason = Some(HeldReason::Burst);
                newly_held.push(ip);
            }
        }
        for ip in &newly_held {
            self.journal_observed(*ip, true);
        }
        if !newly_held.is_empty() {
            self.counters.held += newly_held.len() as u64;
            let total = self
                .intents
                .values()
                .filter(|i| i.phase == Phase::Held)
                .count();
            warn!(
                target: "audit",
                decision = "held",
                reason = HeldReason::Burst.key(),
                held = total,
                burst_limit = self.settings.burst_limit,
                ips = ?newly_held,
                "burst: more aux IPs left within the burst window than release.burst_limit; \
                 held until an operator confirms (enisync release --held) or they come back"
            );
        }
    }

    fn on_addr_added(&mut self, addr: &Addr) {
        const IN_FLIGHT: &str = "came back on the host while its release is in flight";
        let followed = self
            .following
            .range((addr.ip, 0)..=(addr.ip, u64::MAX))
            .next()
            .is_some();
        if followed {
            self.alarm(addr.ip, IN_FLIGHT);
        }
        if let Some(intent) = self.intents.get(&addr.ip) {
            if intent.phase.is_in_flight() {
                self.alarm(addr.ip, IN_FLIGHT);
            } else {
                self.cancel(addr.ip, Cancel::Readded);
            }
        } else if !followed && self.released.contains_key(&addr.ip) {
            self.alarm(addr.ip, "came back on the host after the VPC released it");
        }
    }

    fn on_link_changed(&mut self, old: Option<Link>, link: &Link) {
        if !link.up {
            self.cancel_where(|i| i.link == link.index, &Cancel::LinkDown);
        }
        if let Some(old) = old
            && old.mac != link.mac
        {
            self.cancel_where(|i| i.link == link.index, &Cancel::MacChanged);
        }
        let known = link.mac.is_some_and(|m| self.inventory.by_mac(m).is_some());
        if link.is_physical() && !known {
            // A new ENI may have been attached: refresh the map.
            self.refresh_inventory();
        }
    }

    /// Whether the link's MAC belongs to one of this instance's ENIs.
    fn link_has_eni(&self, index: u32) -> bool {
        self.view
            .links
            .get(&index)
            .and_then(|link| link.mac)
            .is_some_and(|mac| self.inventory.by_mac(mac).is_some())
    }

    /// The ENI an intent belongs to: the one it was observed on, else its link's MAC's.
    pub(super) fn eni_of(&self, intent: &Intent) -> Option<String> {
        intent.eni_id.clone().or_else(|| {
            intent
                .mac
                .and_then(|m| self.inventory.by_mac(m))
                .map(|r| r.eni_id.clone())
        })
    }
}
