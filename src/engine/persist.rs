//! Persistence: the intents' journal records, and recovery from the journal at start.

use std::net::IpAddr;

use tokio::time::Instant;
use tracing::{info, warn};

use super::intent::{Intent, Outcome, Phase};
use super::reasons::{Cancel, HeldReason};
use super::{Engine, Router};
use crate::cloud::Cloud;
use crate::journal::{CancelKey, IntentKey, Record, RecordState};

impl<C: Cloud, R: Router> Engine<C, R> {
    /// Re-journals an intent's observation, with its held flag.
    pub(super) fn journal_observed(&mut self, ip: IpAddr, held: bool) {
        self.journal_observed_as(ip, held, false);
    }

    /// Re-journals an intent's observation; `sending`: its unassign is about to go out.
    pub(super) fn journal_observed_as(&mut self, ip: IpAddr, held: bool, sending: bool) {
        let Some(i) = self.intents.get(&ip) else {
            return;
        };
        let state = RecordState::Observed {
            link: i.link_name.clone(),
            mac: i.mac.map(|m| m.to_string()),
            eni_id: i.eni_id.clone(),
            remover: i.remover.as_ref().map(Into::into),
            held,
            sending,
            by_hand: i.by_hand,
        };
        let key = IntentKey::release(ip, i.generation);
        self.journal(key, state);
    }

    pub(super) fn journal(&mut self, key: IntentKey, state: RecordState) {
        if let Some(j) = &mut self.journal
            && let Err(e) = j.append(key, &self.boot_id, state)
        {
            // A journal that cannot be written must not stop the release decisions in
            // memory; the operator sees it and a restart would re-observe nothing.
            warn!(error = %e, "journal write failed");
        }
    }

    /// Replays the journal: unsent intents of this boot restart their grace period and
    /// face the whole rule; unsent intents of an earlier boot are dropped; sent ones are
    /// followed to their end.
    pub(super) fn recover(&mut self, records: Vec<Record>, now: Instant) {
        // Generations go on above every one in the journal.
        for rec in &records {
            let latest = self.generations.entry(rec.addr).or_default();
            *latest = (*latest).max(rec.generation);
        }
        // In key order: for one address, the older intent first (an in-flight one is
        // then moved to `following` by the newer one's `make_room`).
        for rec in records {
            let key = rec.key();
            // IPv4 and IPv6 intents replay alike: the key is an `IpAddr`.
            let ip = rec.addr;
            let cancelled = |cancel: Cancel| RecordState::Finished {
                outcome: Outcome::Cancelled(cancel).record(),
            };
            match rec.state {
                RecordState::Observed {
                    link,
                    mac,
                    eni_id,
                    remover,
                    held,
                    sending,
                    by_hand,
                } => {
                    if rec.boot_id != self.boot_id {
                        self.journal(key, cancelled(Cancel::EarlierBoot));
                        continue;
                    }
                    let Some(l) = self.view.links.values().find(|l| l.name == link).cloned() else {
                        self.journal(key, cancelled(Cancel::LinkGone));
                        continue;
                    };
                    let back = self.view.has_ip(ip);
                    if back || mac.as_deref() != l.mac.map(|m| m.to_string()).as_deref() {
                        if sending && back {
                            self.alarm(
                                ip,
                                "is on the host although its release may have gone out before the restart",
                            );
                        }
                        let why = if back {
                            Cancel::Readded
                        } else {
                            Cancel::MacChanged
                        };
                        self.journal(key, cancelled(why));
                        continue;
                    }
                    info!(ip = %ip, link = %link, "resuming a journaled release: its grace period starts again");
                    self.make_room(ip, rec.generation);
                    // The journal keeps the held flag and whether the remover was
                    // unknown (or the removal found by a resync: no remover at all).
                    let held_reason = held.then(|| match &remover {
                        None => HeldReason::UnknownRemover("found by a resync".into()),
                        Some(r) => match &r.unknown {
                            Some(why) => HeldReason::UnknownRemover(why.clone()),
                            None => HeldReason::Burst,
                        },
                    });
                    // A held burst stays held until an operator confirms.
                    let phase = if held { Phase::Held } else { Phase::Pending };
                    let intent = Intent {
                        link: l.index,
                        link_name: link,
                        mac: l.mac,
                        eni_id,
                        remover: remover.map(Into::into),
                        // An operator's request was due at once; it stays so (the
                        // send-time checks decide, as they did before the restart).
                        due: if by_hand {
                            now
                        } else {
                            now + self.settings.grace
                        },
                        held_reason,
                        by_hand,
                        // The unassign may have gone out: if the cloud no longer lists
                        // the IP, that was us, not a lagging view.
                        sent: sending,
                        ..Intent::new(ip, rec.generation, now, phase)
                    };
                    self.intents.insert(ip, intent);
                }
                RecordState::Sent { eni_id, task } => {
                    info!(ip = %ip, task = %task.task_id, "following a journaled release task");
                    self.make_room(ip, rec.generation);
                    let phase = Phase::Releasing {
                        task_id: task.task_id.clone(),
                    };
                    let intent = Intent {
                        eni_id: Some(eni_id.clone()),
                        sent: true,
                        ..Intent::new(ip, rec.generation, now, phase)
                    };
                    self.intents.insert(ip, intent);
                    self.follow_journaled(eni_id, ip, rec.generation, task);
                }
                RecordState::Finished { .. } => {}
            }
        }
    }
}

/// The journal's record of a cancel reason: one arm per reason, so a new [`Cancel`]
/// does not compile without its record (the journal, a lower layer, cannot name the
/// engine's type).
impl From<&Cancel> for CancelKey {
    fn from(cancel: &Cancel) -> Self {
        match cancel {
            Cancel::KernelRemoval => Self::KernelRemoval,
            Cancel::IgnoredRemover(_) => Self::IgnoredRemover,
            Cancel::Collateral => Self::Collateral,
            Cancel::Readded => Self::Readded,
            Cancel::PresentElsewhere => Self::PresentElsewhere,
            Cancel::LinkDown => Self::LinkDown,
            Cancel::LinkGone => Self::LinkGone,
            Cancel::MacChanged => Self::MacChanged,
            Cancel::NotPhysical => Self::NotPhysical,
            Cancel::NotSelectedInterface => Self::NotSelectedInterface,
            Cancel::NotAnEni => Self::NotAnEni,
            Cancel::NotCandidate(_) => Self::NotCandidate,
            Cancel::OutsideInclude => Self::OutsideInclude,
            Cancel::Excluded => Self::Excluded,
            Cancel::ClaimAddress => Self::ClaimAddress,
            Cancel::PrimaryIp => Self::PrimaryIp,
            Cancel::NotListedOnEni => Self::NotListedOnEni,
            Cancel::EipBound(_) => Self::EipBound,
            Cancel::EniNotAttached(_) => Self::EniNotAttached,
            Cancel::Operator => Self::Operator,
            Cancel::EarlierBoot => Self::EarlierBoot,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The other way, for the tests: a reason of each recorded key (`None` for the keys
    /// only migration or a newer binary writes), so a new [`CancelKey`] does not compile
    /// without its reason either.
    fn cancel_of(key: &CancelKey) -> Option<Cancel> {
        Some(match key {
            CancelKey::KernelRemoval => Cancel::KernelRemoval,
            CancelKey::IgnoredRemover => Cancel::IgnoredRemover(String::new()),
            CancelKey::Collateral => Cancel::Collateral,
            CancelKey::Readded => Cancel::Readded,
            CancelKey::PresentElsewhere => Cancel::PresentElsewhere,
            CancelKey::LinkDown => Cancel::LinkDown,
            CancelKey::LinkGone => Cancel::LinkGone,
            CancelKey::MacChanged => Cancel::MacChanged,
            CancelKey::NotPhysical => Cancel::NotPhysical,
            CancelKey::NotSelectedInterface => Cancel::NotSelectedInterface,
            CancelKey::NotAnEni => Cancel::NotAnEni,
            CancelKey::NotCandidate => Cancel::NotCandidate(crate::host::NotCandidate::NotGlobal),
            CancelKey::OutsideInclude => Cancel::OutsideInclude,
            CancelKey::Excluded => Cancel::Excluded,
            CancelKey::ClaimAddress => Cancel::ClaimAddress,
            CancelKey::PrimaryIp => Cancel::PrimaryIp,
            CancelKey::NotListedOnEni => Cancel::NotListedOnEni,
            CancelKey::EipBound => Cancel::EipBound(String::new()),
            CancelKey::EniNotAttached => Cancel::EniNotAttached(String::new()),
            CancelKey::Operator => Cancel::Operator,
            CancelKey::EarlierBoot => Cancel::EarlierBoot,
            CancelKey::Schema1 | CancelKey::Unknown(_) => return None,
        })
    }

    /// Every reason's record is its key (the text on disk, the metrics label), and
    /// reads back as the same record.
    #[test]
    fn every_cancel_reason_is_recorded_by_its_key() {
        let mut mapped = 0;
        for key in CancelKey::KNOWN {
            let Some(cancel) = cancel_of(&key) else {
                continue;
            };
            mapped += 1;
            assert_eq!(CancelKey::from(&cancel), key);
            assert_eq!(key.as_str(), cancel.key());
            assert_eq!(CancelKey::from(cancel.key().to_owned()), key);
        }
        assert_eq!(mapped, CancelKey::KNOWN.len() - 1, "all but schema_1");
    }
}
