//! `enisync release <ip>`: an orphaned claim address released by hand (docs/design.md,
//! "Claims"). The engine decides here whether the operator's request may become a
//! release: an IPv4 address of `claim.cidrs`, absent from the host, that the engine's
//! latest cloud knowledge binds to an ENI of this instance (a claim lookup that found it
//! here, else the listing), with no pause in force. It need not have been absent for
//! `claim.orphan_after`: the operator asked. Accepted, it becomes an intent like any
//! release, due at once, and goes through every check at the deadline and at send time
//! (a fresh listing, not a primary IP, not back on the host, the pause, `dry_run`, the
//! ENI's slot) but the claim-address rule.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use tokio::time::Instant;
use tracing::info;

use super::ClaimPhase;
use super::keys::{ClaimDecision, ClaimReason};
use crate::cloud::Cloud;
use crate::engine::intent::{Intent, Outcome, Phase};
use crate::engine::{Engine, Router};
use crate::journal::{IntentKey, RecordState};

/// Why `enisync release <ip>` is refused: one line each, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandRefusal {
    /// Not IPv4, or outside `claim.cidrs`.
    NotAClaimAddress(IpAddr),
    /// On a link of the host now: keepalived (or someone) holds it here.
    OnTheHost { ip: IpAddr, link: String },
    /// A primary IP is never released.
    PrimaryIp(IpAddr),
    /// Neither a claim lookup nor the listing binds it to an ENI of this instance, or
    /// the last lookup found it elsewhere.
    NotBoundHere(IpAddr),
    /// The ENI it is bound to has no link on the host: the checks need one.
    NoLink { ip: IpAddr, eni_id: String },
    /// A pause is in force.
    Paused,
    /// A release of it is already pending or out.
    AlreadyReleasing(IpAddr),
}

impl fmt::Display for HandRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAClaimAddress(ip) => write!(
                f,
                "{ip} is not a claim address (outside claim.cidrs, which are IPv4): \
                 `enisync release <ip>` releases only an orphaned floating IP"
            ),
            Self::OnTheHost { ip, link } => write!(
                f,
                "{ip} is on the host (link {link}): only an address absent from the host \
                 may be released by hand"
            ),
            Self::PrimaryIp(ip) => write!(f, "{ip} is a primary IP: never released"),
            Self::NotBoundHere(ip) => write!(
                f,
                "{ip} is not bound to an ENI of this instance as far as enisync knows \
                 (its claim lookup or the listing): nothing to release here"
            ),
            Self::NoLink { ip, eni_id } => write!(
                f,
                "{ip} is bound to {eni_id}, which has no link on the host: the checks of a \
                 release cannot run"
            ),
            Self::Paused => f.write_str(
                "enisync is paused: nothing is released until `enisync resume`; ask again then",
            ),
            Self::AlreadyReleasing(ip) => write!(
                f,
                "a release of {ip} is already pending or in flight (see `enisync status`)"
            ),
        }
    }
}

/// An accepted request: what will be released, from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandRelease {
    pub ip: Ipv4Addr,
    pub eni_id: String,
    pub link: String,
    pub dry_run: bool,
}

impl fmt::Display for HandRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            ip, eni_id, link, ..
        } = self;
        write!(
            f,
            "releasing {ip} from {eni_id} ({link}) after the send-time checks (a fresh \
             listing; not back on the host); `enisync status` and the audit log show the outcome"
        )?;
        if self.dry_run {
            f.write_str(" (dry run: nothing will be sent)")?;
        }
        Ok(())
    }
}

impl<C: Cloud, R: Router> Engine<C, R> {
    /// `enisync release <ip>`: decides, and on success starts the release.
    pub(in crate::engine) fn release_by_hand(
        &mut self,
        ip: IpAddr,
        now: Instant,
    ) -> Result<HandRelease, HandRefusal> {
        let decided = self.hand_release_target(ip);
        let (v4, eni_id, link) = match decided {
            Ok(target) => target,
            Err(refusal) => {
                info!(ip = %ip, refusal = %refusal, "release by hand refused");
                return Err(refusal);
            }
        };
        let generation = self.next_generation(ip);
        let intent = Intent {
            link: link.index,
            link_name: link.name.clone(),
            mac: link.mac,
            eni_id: Some(eni_id.clone()),
            due: now,
            by_hand: true,
            ..Intent::new(ip, generation, now, Phase::Pending)
        };
        // Journaled as any intent, marked by hand: a crash after the call is followed to
        // its end, and one not sent yet is resumed after a restart (the operator asked;
        // the send-time checks apply again), not cancelled as a claim address.
        self.journal(
            IntentKey::release(ip, generation),
            RecordState::Observed {
                link: link.name.clone(),
                mac: link.mac.map(|m| m.to_string()),
                eni_id: Some(eni_id.clone()),
                remover: None,
                held: false,
                sending: false,
                by_hand: true,
            },
        );
        self.make_room(ip, generation);
        self.intents.insert(ip, intent);
        let (decision, reason) = (ClaimDecision::ReleasePending, ClaimReason::Operator);
        self.count_claim(decision, reason);
        info!(
            target: "audit",
            decision = decision.as_str(),
            reason = reason.as_str(),
            ip = %ip,
            link = %link.name,
            eni = %eni_id,
            "an operator asked to release a floating IP absent from the host (enisync release); \
             the send-time checks apply"
        );
        Ok(HandRelease {
            ip: v4,
            eni_id,
            link: link.name,
            dry_run: self.settings.dry_run,
        })
    }

    /// The address, its ENI and that ENI's link, if the request may become a release.
    fn hand_release_target(
        &self,
        ip: IpAddr,
    ) -> Result<(Ipv4Addr, String, crate::host::Link), HandRefusal> {
        let v4 = match ip {
            IpAddr::V4(v4) if self.settings.claim.covers(v4) => v4,
            _ => return Err(HandRefusal::NotAClaimAddress(ip)),
        };
        if let Some(addr) = self.view.addrs.values().find(|a| a.ip == ip) {
            let link = self
                .view
                .links
                .get(&addr.link)
                .map_or_else(|| addr.link.to_string(), |l| l.name.clone());
            return Err(HandRefusal::OnTheHost { ip, link });
        }
        if self.inventory.is_primary_ip(ip) {
            return Err(HandRefusal::PrimaryIp(ip));
        }
        if self.pause.in_force().is_some() {
            return Err(HandRefusal::Paused);
        }
        if self.intents.contains_key(&ip) || self.following.keys().any(|(i, _)| *i == ip) {
            return Err(HandRefusal::AlreadyReleasing(ip));
        }
        let eni_id = self.bound_here(v4).ok_or(HandRefusal::NotBoundHere(ip))?;
        let mac = self.inventory.by_eni(&eni_id).map(|r| r.mac);
        let link = self
            .view
            .links
            .values()
            .find(|l| mac.is_some() && l.mac == mac)
            .cloned()
            .ok_or_else(|| HandRefusal::NoLink {
                ip,
                eni_id: eni_id.clone(),
            })?;
        Ok((v4, eni_id, link))
    }

    /// The ENI of this instance the engine last knew `ip` bound to: a claim lookup's
    /// answer when there is a claim (claimed: here; contested: elsewhere), else the
    /// listing's.
    fn bound_here(&self, ip: Ipv4Addr) -> Option<String> {
        if let Some(entry) = self.claims.entries.get(&ip) {
            return match entry.phase {
                ClaimPhase::Claimed { .. } => Some(entry.eni_id.clone()),
                ClaimPhase::Contested { .. } => None,
                _ => self.listed_here(ip),
            };
        }
        self.listed_here(ip)
    }

    fn listed_here(&self, ip: Ipv4Addr) -> Option<String> {
        self.inventory
            .by_mac
            .values()
            .find(|r| {
                r.cloud
                    .as_ref()
                    .and_then(|e| e.ip(IpAddr::V4(ip)))
                    .is_some_and(|entry| !entry.primary)
            })
            .map(|r| r.eni_id.clone())
    }

    /// A release by hand ended: released (or found released), the claim ends with it.
    /// Cancelled or a dry run: the release's own records say why; the claim stays.
    pub(in crate::engine) fn hand_release_finished(
        &mut self,
        ip: IpAddr,
        eni_id: Option<&str>,
        outcome: &Outcome,
    ) {
        let IpAddr::V4(v4) = ip else { return };
        if !matches!(outcome, Outcome::Released { .. } | Outcome::AlreadyGone) {
            return;
        }
        self.claims.entries.remove(&v4);
        // Our own task released it: the engine's listing of that ENI no longer binds it
        // (until the next listing says so anyway), so a second request is refused.
        for record in self.inventory.by_mac.values_mut() {
            if let Some(eni) = record
                .cloud
                .as_mut()
                .filter(|e| Some(e.id.as_str()) == eni_id)
            {
                eni.ips.retain(|i| i.addr != ip);
            }
        }
        let (decision, reason) = (ClaimDecision::Released, ClaimReason::Operator);
        self.count_claim(decision, reason);
        info!(
            target: "audit",
            decision = decision.as_str(),
            reason = reason.as_str(),
            ip = %ip,
            eni = eni_id.unwrap_or("?"),
            "floating IP released by hand; it is no longer bound to this instance"
        );
    }

    /// A release by hand of `ip` is pending or out: re-verification leaves it alone.
    pub(super) fn hand_release_pending(&self, ip: Ipv4Addr) -> bool {
        let ip = IpAddr::V4(ip);
        self.intents.get(&ip).is_some_and(|i| i.by_hand)
            || self
                .following
                .iter()
                .any(|((i, _), intent)| *i == ip && intent.by_hand)
    }
}
