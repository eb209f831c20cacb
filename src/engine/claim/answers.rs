//! The cloud's answers to a claim: the holder lookup decides (docs/design.md,
//! "Claims"), a call's end is checked with a fresh lookup, a re-verification may find a
//! contest.

use std::net::IpAddr;

use tokio::time::Instant;

use super::calls::{ClaimCall, ClaimReport, LookupPurpose, spawn_call, spawn_lookup};
use super::keys::{ClaimDecision, ClaimReason};
use super::trigger::{Skip, still_there};
use super::{ClaimEntry, ClaimPhase, HolderDecision, decide};
use crate::cloud::client::{ClaimFailure, ClientToken};
use crate::cloud::{Cloud, CloudError, Eni, TaskStatus};
use crate::engine::{Engine, Router};

impl<C: Cloud, R: Router> Engine<C, R> {
    /// A report of a spawned lookup or call.
    pub(in crate::engine) fn on_claim_report(&mut self, report: ClaimReport, now: Instant) {
        match report {
            ClaimReport::Holders {
                ip,
                attempt,
                purpose,
                result,
            } => {
                let Some(entry) = self
                    .claims
                    .entries
                    .get(&ip)
                    .filter(|e| e.attempt == attempt)
                    .cloned()
                else {
                    if purpose != LookupPurpose::Reverify {
                        self.free_unowned_claim_slots();
                    }
                    return;
                };
                match purpose {
                    LookupPurpose::Decide => self.on_claim_holders(&entry, result, now),
                    LookupPurpose::AfterCall => self.on_claim_after_call(&entry, result, now),
                    LookupPurpose::Reverify => self.on_claim_reverified(&entry, result, now),
                }
            }
            ClaimReport::Called {
                ip,
                attempt,
                action,
                result,
            } => {
                let Some(entry) = self
                    .claims
                    .entries
                    .get(&ip)
                    .filter(|e| e.attempt == attempt)
                    .cloned()
                else {
                    self.free_unowned_claim_slots();
                    return;
                };
                self.on_claim_called(&entry, action, result, now);
            }
        }
    }

    fn on_claim_holders(
        &mut self,
        entry: &ClaimEntry,
        result: Result<Vec<Eni>, CloudError>,
        now: Instant,
    ) {
        let ip = entry.ip;
        let holders = match result {
            Ok(holders) => holders,
            Err(error) => {
                self.slots.set_idle(&entry.eni_id);
                self.record_error(format!("claim of {ip}: {error}"));
                self.claim_retry(entry, ClaimReason::CloudError, now);
                return;
            }
        };
        let Some(target) = self.claim_target(&entry.eni_id) else {
            self.slots.set_idle(&entry.eni_id);
            self.claim_wait(
                ip,
                ClaimReason::Inventory,
                now + self.settings.claim.reverify_interval,
            );
            return;
        };
        let decision = decide(&holders, ip, &target, &self.settings.claim.peers);
        let dry_run = self.settings.dry_run || self.settings.claim.dry_run;
        let calls = matches!(
            decision,
            HolderDecision::Assign | HolderDecision::Migrate { .. }
        );
        // The host again, just before a call: the address must still be on its link.
        if calls && !still_there(&self.view, entry.link, ip) {
            self.slots.set_idle(&entry.eni_id);
            self.claims.entries.remove(&ip);
            self.claim_skipped(ip, Some(&entry.link_name), Skip::Gone, None);
            return;
        }
        // A pause that came while the lookup was out stops the call.
        if calls && self.pause.in_force().is_some() {
            self.slots.set_idle(&entry.eni_id);
            self.claim_decided(ip, entry, ClaimDecision::Paused, ClaimReason::Paused, "");
            if let Some(e) = self.claims.entries.get_mut(&ip) {
                e.pause_logged = true;
            }
            self.claim_wait(ip, ClaimReason::Paused, now);
            return;
        }
        match decision {
            HolderDecision::Mine => {
                self.slots.set_idle(&entry.eni_id);
                self.claim_decided(ip, entry, ClaimDecision::Claimed, ClaimReason::HeldHere, "");
                if let Some(e) = self.claims.entries.get_mut(&ip) {
                    e.phase = ClaimPhase::Claimed {
                        next_verify: now + self.settings.claim.reverify_interval,
                    };
                    e.retries = 0;
                }
            }
            HolderDecision::Wait(wait) => {
                self.slots.set_idle(&entry.eni_id);
                let text = wait.to_string();
                self.claim_decided(ip, entry, ClaimDecision::Wait, wait.reason(), &text);
                self.claim_retry(entry, wait.reason(), now);
            }
            HolderDecision::Park(reason) => {
                self.slots.set_idle(&entry.eni_id);
                let text = reason.to_string();
                self.claim_alarm(ip, entry, ClaimDecision::Parked, reason.reason(), &text);
                if let Some(e) = self.claims.entries.get_mut(&ip) {
                    e.phase = ClaimPhase::Parked {
                        reason: reason.reason(),
                    };
                }
            }
            HolderDecision::Assign => {
                if dry_run {
                    self.slots.set_idle(&entry.eni_id);
                    self.claim_decided(
                        ip,
                        entry,
                        ClaimDecision::DryRun,
                        ClaimReason::Assign,
                        "nobody holds it",
                    );
                    self.claim_phase(ip, ClaimPhase::DryRun);
                    return;
                }
                let Some(token) = ClientToken::for_claim(&entry.eni_id, ip, entry.attempt) else {
                    self.slots.set_idle(&entry.eni_id);
                    self.claim_alarm(
                        ip,
                        entry,
                        ClaimDecision::Parked,
                        ClaimReason::Refused,
                        "no valid ClientToken",
                    );
                    self.claim_phase(
                        ip,
                        ClaimPhase::Parked {
                            reason: ClaimReason::Refused,
                        },
                    );
                    return;
                };
                let detail = format!("nobody holds it; ClientToken {token}");
                self.claim_decided(ip, entry, ClaimDecision::Sent, ClaimReason::Assign, &detail);
                self.claim_phase(ip, ClaimPhase::Calling);
                spawn_call(
                    &self.cloud,
                    &self.claims.reports_tx,
                    ClaimCall::Assign { token },
                    entry.eni_id.clone(),
                    ip,
                    entry.attempt,
                    self.pause.send_gate(),
                );
            }
            HolderDecision::Migrate { source } => {
                let holdoff_ends = self.claims.started + self.settings.claim.startup_holdoff;
                if now < holdoff_ends {
                    self.slots.set_idle(&entry.eni_id);
                    self.claim_decided(
                        ip,
                        entry,
                        ClaimDecision::Wait,
                        ClaimReason::StartupHoldoff,
                        &source,
                    );
                    self.claim_wait(ip, ClaimReason::StartupHoldoff, holdoff_ends);
                    return;
                }
                let bound = self.settings.claim.max_migrations_per_minute as usize;
                if self.claims.migrations_in_last_minute(ip, now) >= bound {
                    self.slots.set_idle(&entry.eni_id);
                    let until = self
                        .claims
                        .migration_window_ends(ip)
                        .unwrap_or(now + super::MIGRATION_WINDOW);
                    self.claim_decided(
                        ip,
                        entry,
                        ClaimDecision::Wait,
                        ClaimReason::MigrationLimit,
                        &source,
                    );
                    self.claim_wait(ip, ClaimReason::MigrationLimit, until);
                    return;
                }
                if dry_run {
                    self.slots.set_idle(&entry.eni_id);
                    self.claim_decided(
                        ip,
                        entry,
                        ClaimDecision::DryRun,
                        ClaimReason::Migrate,
                        &source,
                    );
                    self.claim_phase(ip, ClaimPhase::DryRun);
                    return;
                }
                self.claims.migrations.entry(ip).or_default().push_back(now);
                let detail = format!("from {source}");
                self.claim_decided(
                    ip,
                    entry,
                    ClaimDecision::Sent,
                    ClaimReason::Migrate,
                    &detail,
                );
                self.claim_phase(ip, ClaimPhase::Calling);
                spawn_call(
                    &self.cloud,
                    &self.claims.reports_tx,
                    ClaimCall::Migrate { source },
                    entry.eni_id.clone(),
                    ip,
                    entry.attempt,
                    self.pause.send_gate(),
                );
            }
        }
    }

    fn on_claim_called(
        &mut self,
        entry: &ClaimEntry,
        action: &'static str,
        result: Result<TaskStatus, CloudError>,
        now: Instant,
    ) {
        let ip = entry.ip;
        match result {
            // Re-check the holder after the task: only a lookup that finds it here makes
            // it claimed.
            Ok(TaskStatus::Success) => self.claim_look_again(entry, LookupPurpose::AfterCall),
            Ok(status) => {
                self.slots.set_idle(&entry.eni_id);
                let reason = if status == TaskStatus::Failed {
                    ClaimReason::TaskFailed
                } else {
                    ClaimReason::TaskRunning
                };
                self.record_error(format!("claim of {ip}: {action} task {status:?}"));
                self.claim_decided(ip, entry, ClaimDecision::Wait, reason, action);
                self.claim_retry(entry, reason, now);
            }
            Err(error) => match ClaimFailure::of(&error) {
                // The other node moved it first, or took it: decided again from a fresh
                // lookup, which is no contest. Migrate is never re-sent without one.
                ClaimFailure::SourceGone | ClaimFailure::Taken => {
                    self.claim_decided(
                        ip,
                        entry,
                        ClaimDecision::Wait,
                        ClaimReason::HolderChanged,
                        &error.code,
                    );
                    self.claim_look_again(entry, LookupPurpose::Decide);
                }
                ClaimFailure::Busy => {
                    self.slots.set_idle(&entry.eni_id);
                    self.record_error(format!("claim of {ip}: {error}"));
                    self.claim_decided(
                        ip,
                        entry,
                        ClaimDecision::Wait,
                        ClaimReason::CloudError,
                        &error.code,
                    );
                    self.claim_retry(entry, ClaimReason::CloudError, now);
                }
                ClaimFailure::Refused => {
                    self.slots.set_idle(&entry.eni_id);
                    self.record_error(format!("claim of {ip}: {error}"));
                    self.claim_alarm(
                        ip,
                        entry,
                        ClaimDecision::Parked,
                        ClaimReason::Refused,
                        &error.to_string(),
                    );
                    self.claim_phase(
                        ip,
                        ClaimPhase::Parked {
                            reason: ClaimReason::Refused,
                        },
                    );
                }
            },
        }
    }

    /// A report for a claim that is gone or was replaced: no claim may keep its ENI's
    /// slot unless one of its lookups or calls is still out.
    fn free_unowned_claim_slots(&mut self) {
        for eni in self.slots.claiming() {
            let owned = self.claims.entries.values().any(|e| {
                e.eni_id == eni && matches!(e.phase, ClaimPhase::LookingUp | ClaimPhase::Calling)
            });
            if !owned {
                self.slots.set_idle(&eni);
            }
        }
    }

    /// A fresh lookup for the same attempt (the slot stays taken).
    fn claim_look_again(&mut self, entry: &ClaimEntry, purpose: LookupPurpose) {
        let Some(vpc_id) = self
            .inventory
            .by_eni(&entry.eni_id)
            .map(|r| r.vpc_id.clone())
        else {
            self.slots.set_idle(&entry.eni_id);
            return;
        };
        self.claim_phase(entry.ip, ClaimPhase::LookingUp);
        spawn_lookup(
            &self.cloud,
            &self.claims.reports_tx,
            vpc_id,
            entry.ip,
            entry.attempt,
            purpose,
        );
    }

    /// The lookup right after our call's task succeeded: here (or on its way, not yet
    /// AVAILABLE) is decided as usual; anywhere else means the cloud moved it away at
    /// once, a contest, not a reason to call again now.
    fn on_claim_after_call(
        &mut self,
        entry: &ClaimEntry,
        result: Result<Vec<Eni>, CloudError>,
        now: Instant,
    ) {
        let here = result
            .as_ref()
            .map_or(true, |holders| holders.iter().any(|e| e.id == entry.eni_id));
        if here {
            self.on_claim_holders(entry, result, now);
            return;
        }
        self.slots.set_idle(&entry.eni_id);
        let holders = result.unwrap_or_default();
        self.claim_contested(entry, &holders, now);
    }

    fn on_claim_reverified(
        &mut self,
        entry: &ClaimEntry,
        result: Result<Vec<Eni>, CloudError>,
        now: Instant,
    ) {
        let ip = entry.ip;
        let Ok(holders) = result else {
            return;
        };
        // An operator's release of it decides now, and ends the claim if it succeeds.
        if self.hand_release_pending(ip) {
            return;
        }
        let still_here = holders.iter().any(|e| e.id == entry.eni_id);
        if still_here {
            // A whole interval without a contest: the backoff starts over.
            if let Some(e) = self.claims.entries.get_mut(&ip) {
                e.contests = 0;
            }
            return;
        }
        if !self.view.has_ip(IpAddr::V4(ip)) {
            // Gone from both: nothing is bound here any more, and nothing to claim.
            self.claim_decided(
                ip,
                entry,
                ClaimDecision::Released,
                ClaimReason::MovedAway,
                "",
            );
            self.claims.entries.remove(&ip);
            return;
        }
        self.claim_contested(entry, &holders, now);
    }

    /// The cloud moved it away while this host still has it: do not fight. An alarm,
    /// and a new attempt only after the backoff.
    fn claim_contested(&mut self, entry: &ClaimEntry, holders: &[Eni], now: Instant) {
        let ip = entry.ip;
        let contests = entry.contests.saturating_add(1);
        let wait = self.settings.claim.contest_wait(contests);
        let holder = holders
            .first()
            .map_or_else(|| "nobody".to_string(), |e| e.id.clone());
        self.claim_alarm(
            ip,
            entry,
            ClaimDecision::Contested,
            ClaimReason::MovedAway,
            &format!("now held by {holder}; claimed again in {wait:?} at the earliest"),
        );
        self.claims.next_attempt += 1;
        let attempt = self.claims.next_attempt;
        if let Some(e) = self.claims.entries.get_mut(&ip) {
            e.contests = contests;
            e.attempt = attempt;
            e.phase = ClaimPhase::Contested { due: now + wait };
        }
    }
}
