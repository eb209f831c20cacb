//! The lifecycle of an intent: its generation, waiting, parking, cancelling, finishing,
//! and the hand-over between an intent whose unassign is out and a newer one of the same
//! address.

use std::collections::HashMap;
use std::net::IpAddr;

use tokio::time::Instant;
use tracing::{info, warn};

use super::intent::{Finished, Intent, Outcome, Phase};
use super::reasons::{Cancel, Refusal, WaitReason};
use super::settings::retry_delay;
use super::sink::ReleaseCount;
use super::{Engine, RECENT_KEPT, Router};
use crate::cloud::Cloud;
use crate::journal::{IntentKey, OutcomeRecord, RecordState};

impl<C: Cloud, R: Router> Engine<C, R> {
    /// Postpones a release by the retry backoff.
    pub(super) fn wait(&mut self, ip: IpAddr, now: Instant, why: WaitReason) {
        if why.is_failure() {
            self.record_error(format!("{ip}: {why}"));
        }
        let backoff = self.settings.retry_backoff();
        if let Some(i) = self.intents.get_mut(&ip) {
            i.attempts += 1;
            i.due = now + retry_delay(backoff, i.attempts);
            info!(target: "audit", decision = "wait", ip = %ip, why = %why, attempt = i.attempts, "release postponed");
            i.phase = Phase::Waiting { why };
        }
    }

    /// The cloud refused: parked until a reload or its retry time.
    pub(super) fn park(&mut self, ip: IpAddr, now: Instant, why: Refusal) {
        self.count_release(ReleaseCount::Refused(why.kind));
        if self.intents.contains_key(&ip) {
            self.record_error(format!("{ip}: refused: {why}"));
        }
        if let Some(i) = self.intents.get_mut(&ip) {
            warn!(target: "audit", decision = "parked", ip = %ip, why = %why, "release refused by the cloud; parked (retried on reload and hourly)");
            // A parked intent's `due` is its next retry, so only a parked release
            // sets a timer: an engine with nothing parked never wakes for it.
            i.due = now + self.settings.parked_retry;
            i.phase = Phase::Parked { why };
        }
    }

    /// Parked releases are tried again: all of them after a reload, else those whose
    /// retry time has come.
    pub(super) fn unpark(&mut self, now: Instant, all: bool) {
        for i in self.intents.values_mut() {
            if matches!(i.phase, Phase::Parked { .. }) && (all || i.due <= now) {
                i.phase = Phase::Waiting {
                    why: WaitReason::RetryingParked,
                };
                i.due = now;
                i.task_failures = 0;
            }
        }
    }

    pub(super) fn cancel_where(&mut self, pred: impl Fn(&Intent) -> bool, cancel: &Cancel) {
        let ips: Vec<IpAddr> = self
            .intents
            .values()
            .filter(|i| pred(i) && !i.phase.is_in_flight())
            .map(|i| i.ip)
            .collect();
        for ip in ips {
            self.cancel(ip, cancel.clone());
        }
    }

    pub(super) fn cancel(&mut self, ip: IpAddr, cancel: Cancel) {
        if let Some(i) = self.intents.get(&ip) {
            if i.phase.is_in_flight() {
                return; // the call is out; its result decides
            }
            info!(
                target: "audit",
                decision = "cancelled",
                ip = %ip,
                link = %i.link_name,
                eni = i.eni_id.as_deref().unwrap_or("?"),
                reason = %cancel,
                "release cancelled"
            );
            self.counters.cancelled += 1;
            self.finish(ip, Outcome::Cancelled(cancel));
        }
    }

    pub(super) fn finish(&mut self, ip: IpAddr, outcome: Outcome) {
        let generation = self.intents.get(&ip).map_or(0, |i| i.generation);
        self.journal(
            IntentKey::release(ip, generation),
            RecordState::Finished {
                outcome: outcome.record(),
            },
        );
        self.finish_unjournaled(ip, outcome);
    }

    /// [`Self::finish`] without the journal record: for releases whose routing is still
    /// to be fixed, journaled as finished only once it is (a crash in between replays the
    /// journaled task, which ends in the same route fix).
    pub(super) fn finish_unjournaled(&mut self, ip: IpAddr, outcome: Outcome) {
        let intent = self.intents.remove(&ip);
        self.record_finished(ip, intent, outcome);
    }

    /// Metrics and `status` for an intent that ended (already out of the maps).
    fn record_finished(&mut self, ip: IpAddr, intent: Option<Intent>, outcome: Outcome) {
        self.count_release(ReleaseCount::Ended(&outcome));
        if let Some(i) = intent.as_ref().filter(|i| i.by_hand) {
            self.hand_release_finished(ip, i.eni_id.as_deref(), &outcome);
        }
        self.recent.push_front(Finished {
            ip,
            eni_id: intent.and_then(|i| i.eni_id),
            outcome,
        });
        self.recent.truncate(RECENT_KEPT);
    }

    /// Ends the intent a call's outcome is for: `followed` if a newer intent had taken
    /// its place, else the one in `intents` (if it is that generation). Not journaled.
    pub(super) fn finish_intent(
        &mut self,
        ip: IpAddr,
        generation: u64,
        followed: Option<Intent>,
        outcome: Outcome,
    ) {
        match followed {
            Some(intent) => self.record_finished(ip, Some(intent), outcome),
            None if self
                .intents
                .get(&ip)
                .is_none_or(|i| i.generation == generation) =>
            {
                self.finish_unjournaled(ip, outcome);
            }
            None => self.record_finished(ip, None, outcome),
        }
    }

    /// A followed intent whose call did not end it (the task failed, the cloud refused).
    /// With a newer intent for its address, that one carries the release on: the old
    /// one is journaled as superseded and the newer one learns that an unassign went out
    /// (an IP the cloud stops listing is then gone because of us). Without one, it
    /// takes its place back in `intents`. Returns whether the caller should go on with
    /// the intent in `intents` as before (wait, park).
    pub(super) fn unfollow(&mut self, followed: Option<Intent>) -> bool {
        let Some(old) = followed else {
            return true;
        };
        let ip = old.ip;
        let Some(newer) = self.intents.get_mut(&ip) else {
            self.intents.insert(ip, old);
            return true;
        };
        let (by_generation, held) = (newer.generation, newer.phase == Phase::Held);
        let sending = !newer.sent && old.sent;
        newer.sent |= old.sent;
        info!(ip = %ip, generation = old.generation, newer = by_generation, "an unfinished release is carried on by the newer intent of its address");
        self.journal(
            IntentKey::release(ip, old.generation),
            RecordState::Finished {
                outcome: OutcomeRecord::Superseded { by_generation },
            },
        );
        if sending {
            self.journal_observed_as(ip, held, true);
        }
        false
    }

    /// Before intent `generation` of `ip` goes into `intents`: the intent there now, if
    /// any, makes room. One whose unassign is out is followed to its end in `following`;
    /// any other is journaled as superseded (it was never sent).
    pub(super) fn make_room(&mut self, ip: IpAddr, generation: u64) {
        let Some(old) = self.intents.remove(&ip) else {
            return;
        };
        if old.generation == generation {
            self.intents.insert(ip, old);
            return;
        }
        if old.phase.is_in_flight() {
            info!(ip = %ip, generation = old.generation, newer = generation, "a new intent for an address whose release is in flight; the release is still followed to its end");
            self.following.insert((ip, old.generation), old);
        } else {
            self.journal(
                IntentKey::release(ip, old.generation),
                RecordState::Finished {
                    outcome: OutcomeRecord::Superseded {
                        by_generation: generation,
                    },
                },
            );
        }
    }

    /// The next generation for a new intent of `ip`.
    pub(super) fn next_generation(&mut self, ip: IpAddr) -> u64 {
        let generation = self.generations.entry(ip).or_default();
        *generation += 1;
        *generation
    }

    /// The generation a call's report names for `ip` (the current intent's if absent).
    pub(super) fn generation_in(&self, generations: &HashMap<IpAddr, u64>, ip: IpAddr) -> u64 {
        generations
            .get(&ip)
            .copied()
            .or_else(|| self.intents.get(&ip).map(|i| i.generation))
            .unwrap_or_default()
    }

    /// Intent `generation` of `ip`, wherever it is.
    pub(super) fn intent_at(&mut self, ip: IpAddr, generation: u64) -> Option<&mut Intent> {
        if self
            .intents
            .get(&ip)
            .is_some_and(|i| i.generation == generation)
        {
            self.intents.get_mut(&ip)
        } else {
            self.following.get_mut(&(ip, generation))
        }
    }

    pub(super) fn intent_ref(&self, ip: IpAddr, generation: u64) -> Option<&Intent> {
        self.intents
            .get(&ip)
            .filter(|i| i.generation == generation)
            .or_else(|| self.following.get(&(ip, generation)))
    }
}
