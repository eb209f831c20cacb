//! Batching: when due releases of one ENI go to their send-time check together, how long
//! a batch waits for its neighbours (coalescing, the rest of a burst), and the loop's
//! next wakeup. The per-ENI state lives in `slot`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use super::calls::CloudReport;
use super::intent::Phase;
use super::reasons::WaitReason;
use super::slot::CheckedBatch;
use super::{Engine, Router, rule};
use crate::cloud::{Cloud, CloudError, Eni, MAX_IPS_PER_CALL};
use crate::inventory::Inventory;

/// A coalescing wait ends at most this many `coalesce` periods after the first release
/// of the batch came due.
const COALESCE_CAP_FACTOR: u32 = 10;

/// A checked batch with room waits for more removals of its ENI until none has
/// arrived for this long (see `on_checked`).
const BURST_QUIET: Duration = Duration::from_millis(1);

impl<C: Cloud, R: Router> Engine<C, R> {
    /// The next instant the loop must look at the intents. Intents of an ENI with a
    /// slot are left out: the end of its call wakes the loop, or its coalescing wait
    /// stands for them. Under a pause, work the pause blocks (due releases, coalescing,
    /// checked batches) sets no timer: the resume wakes the loop, and a timer for it
    /// would only spin. A parked release's retry time still does (unparking is not
    /// releasing).
    pub(super) fn next_wakeup(&self) -> Option<Instant> {
        let paused = self.pause.in_force().is_some();
        let due = self
            .intents
            .values()
            .filter(|i| match i.phase {
                Phase::Pending | Phase::Waiting { .. } => {
                    !paused && !i.eni_id.as_ref().is_some_and(|e| self.slots.is_taken(e))
                }
                Phase::Parked { .. } => true,
                _ => false,
            })
            .map(|i| i.due);
        let coalescing = self.slots.coalescing_until().filter(|_| !paused);
        let checked = self
            .slots
            .checked()
            .filter(|_| !paused)
            .map(|(eni, batch)| self.checked_deadline(eni, batch));
        due.chain(coalescing).chain(checked).min()
    }

    /// Sends the checks of every ENI whose batch is due. A due release waits (briefly,
    /// see below) for other removals of its ENI about to come due; an isolated one goes
    /// out at once. Removals that come due while the ENI is busy join the next batch.
    pub(super) fn dispatch_due(&mut self, now: Instant) {
        if self.pause.in_force().is_some() {
            // A coalescing wait is a batch on its way to its check: the pause ends it,
            // and the resume decides again.
            self.slots.clear_coalescing();
            return;
        }
        // Decided again below for every ENI that still has releases coming due.
        self.slots.clear_coalescing();
        // Local checks at the end of the grace period.
        let due: Vec<IpAddr> = self
            .intents
            .values()
            .filter(|i| i.phase.is_waiting_for_due() && i.due <= now)
            .map(|i| i.ip)
            .collect();
        for ip in due {
            self.recheck_locally(ip);
        }
        let mut by_eni: BTreeMap<String, Vec<(IpAddr, Instant)>> = BTreeMap::new();
        let mut unmapped = Vec::new();
        for intent in self.intents.values() {
            if !intent.phase.is_waiting_for_due() {
                continue;
            }
            let Some(eni) = self.eni_of(intent) else {
                if intent.due <= now {
                    unmapped.push(intent.ip);
                }
                continue;
            };
            by_eni.entry(eni).or_default().push((intent.ip, intent.due));
        }
        // The link's ENI is not known yet (the inventory could not be loaded): wait and
        // ask again, never guess.
        if !unmapped.is_empty() {
            for ip in unmapped {
                self.wait(ip, now, WaitReason::EniUnknown);
            }
            self.refresh_inventory();
        }
        let mut to_check = Vec::new();
        for (eni, intents) in by_eni {
            if self.slots.is_busy(&eni) {
                continue;
            }
            let Some(earliest) = intents.iter().map(|(_, due)| *due).min() else {
                continue;
            };
            if earliest > now {
                continue;
            }
            // Coalesce: while more removals of this ENI come due within `coalesce` of
            // now, wait for them (a burst arrives as a stream, a few per millisecond),
            // but never longer than COALESCE_CAP_FACTOR × `coalesce` after the first
            // came due. An isolated removal has nothing coming and goes at once.
            let cap = earliest + self.settings.coalesce * COALESCE_CAP_FACTOR;
            let next_joining = intents
                .iter()
                .map(|(_, due)| *due)
                .filter(|d| *d > now && *d <= now + self.settings.coalesce)
                .max();
            if let Some(next) = next_joining
                && now < cap
            {
                self.slots.coalesce(eni, next.min(cap));
                continue;
            }
            let ips: Vec<IpAddr> = intents
                .iter()
                .filter(|(_, due)| *due <= now)
                .map(|(ip, _)| *ip)
                .collect();
            to_check.push((eni, ips));
        }
        for (eni, ips) in to_check {
            self.start_check(eni, ips);
        }
    }

    /// Clauses 4 and 5 once more; an intent that fails them is cancelled. Whether it
    /// passed.
    pub(super) fn recheck_locally(&mut self, ip: IpAddr) -> bool {
        let Some(intent) = self.intents.get(&ip) else {
            return true;
        };
        match rule::at_deadline(self.world(), intent) {
            Ok(()) => true,
            Err(cancel) => {
                self.cancel(ip, cancel);
                false
            }
        }
    }

    /// The send-time listing for `ips` of `eni_id` is asked for.
    fn start_check(&mut self, eni_id: String, ips: Vec<IpAddr>) {
        for ip in &ips {
            if let Some(i) = self.intents.get_mut(ip) {
                i.phase = Phase::Checking;
                i.eni_id = Some(eni_id.clone());
            }
        }
        self.slots.set_checking(eni_id.clone());
        let cloud = Arc::clone(&self.cloud);
        let tx = self.reports_tx.clone();
        tokio::spawn(async move {
            let result = cloud.list_enis().await;
            let _ = tx.send(CloudReport::Checked {
                eni_id,
                ips,
                result,
            });
        });
    }

    /// The send-time listing has come. The call goes out now, unless its batch has
    /// room and a removal of its ENI arrived less than `BURST_QUIET` ago: then the
    /// burst that removal belongs to is still reaching us (with a zero grace period the
    /// first removal of a burst is due, and checked, before the rest has arrived), and
    /// the batch waits for it, at most `coalesce` after the listing. The listing stays
    /// the send-time check: that is as fresh as the coalescing the rule already allows.
    pub(super) async fn on_checked(
        &mut self,
        eni_id: String,
        ips: Vec<IpAddr>,
        result: Result<Vec<Eni>, CloudError>,
        now: Instant,
    ) {
        let enis = match result {
            Ok(enis) => enis,
            Err(e) => {
                self.slots.set_idle(&eni_id);
                for ip in ips {
                    self.wait(ip, now, WaitReason::DescribeFailed(e.code.clone()));
                }
                return;
            }
        };
        // Refresh the inventory from what we just read, so status and routing see it.
        self.inventory = Inventory::build(
            &self.inventory.instance_id,
            enis.clone(),
            &self.static_meta,
            &self.statics,
        );
        self.slots
            .set_checked(eni_id, CheckedBatch { ips, enis, at: now });
        self.send_checked(now).await;
    }

    /// An operator's pause stopped `ips` of `eni_id` on their way to an unassign (their
    /// check was in flight, their checked batch waited, or the call spawned before the
    /// pause had not sent them yet). They go back to `Pending`, due as they were: not
    /// dropped, not cancelled, no attempt counted. After `resume` they go through the
    /// whole rule again, the send-time check included (a listing from before the pause
    /// is not used). No audit record of their own: the `paused` record is the decision,
    /// and `status` shows them pending, as any release that came due while paused.
    pub(super) fn stopped_by_pause(&mut self, eni_id: &str, ips: &[IpAddr], now: Instant) {
        let mut stopped = Vec::new();
        for ip in ips {
            if let Some(i) = self.intents.get_mut(ip)
                && matches!(
                    i.phase,
                    Phase::Checking | Phase::Sending | Phase::Releasing { .. }
                )
            {
                i.phase = Phase::Pending;
                i.due = i.due.min(now);
                stopped.push(*ip);
            }
        }
        if !stopped.is_empty() {
            info!(eni = %eni_id, ips = ?stopped, "paused: the unassign of these releases was not sent; pending until resume");
        }
    }

    /// When a waiting checked batch goes out at the latest, unless more removals come.
    /// Only a burst waits: the ENI's two latest removals less than `BURST_QUIET`
    /// apart. A lone removal goes as soon as its check is back.
    fn checked_deadline(&self, eni_id: &str, batch: &CheckedBatch) -> Instant {
        let (mut last, mut before_last) = (None, None);
        for i in self
            .intents
            .values()
            .filter(|i| self.eni_of(i).as_deref() == Some(eni_id))
        {
            if last.is_none_or(|t| i.observed_at > t) {
                before_last = last;
                last = Some(i.observed_at);
            } else if before_last.is_none_or(|t| i.observed_at > t) {
                before_last = Some(i.observed_at);
            }
        }
        match (last, before_last) {
            (Some(last), Some(before)) if last - before < BURST_QUIET => {
                (last + BURST_QUIET).min(batch.at + self.settings.coalesce)
            }
            _ => batch.at,
        }
    }

    /// Whether a checked batch has room for the removals of its ENI that are due now.
    fn checked_has_room(&self, eni_id: &str, batch: &CheckedBatch, now: Instant) -> bool {
        let candidates = self
            .intents
            .values()
            .filter(|i| {
                batch.ips.contains(&i.ip)
                    || (i.phase.is_waiting_for_due()
                        && i.due <= now
                        && self.eni_of(i).as_deref() == Some(eni_id))
            })
            .count();
        candidates < MAX_IPS_PER_CALL
    }

    /// Sends every checked batch that is full or whose burst is over. Under a pause
    /// none goes: every checked batch goes back to pending (see `stopped_by_pause`).
    pub(super) async fn send_checked(&mut self, now: Instant) {
        if self.pause.in_force().is_some() {
            for (eni_id, batch) in self.slots.take_all_checked() {
                self.stopped_by_pause(&eni_id, &batch.ips, now);
            }
            return;
        }
        let ready: Vec<String> = self
            .slots
            .checked()
            .filter(|(eni, batch)| {
                !self.checked_has_room(eni, batch, now) || self.checked_deadline(eni, batch) <= now
            })
            .map(|(eni, _)| eni.to_owned())
            .collect();
        for eni_id in ready {
            if let Some(batch) = self.slots.take_checked(&eni_id) {
                self.send_batch(eni_id, batch.ips, &batch.enis, now).await;
            }
        }
    }
}
