//! The send: clause 7 on the send-time listing, clauses 4 and 5 once more, the per-host
//! limit, whole calls of ten, then the unassign (or, in a dry run, its audit record).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::calls::{Call, release_task};
use super::intent::{Outcome, Phase};
use super::reasons::{Cancel, WaitReason};
use super::rule::{self, CloudVerdict, NotListed};
use super::{Engine, Router};
use crate::cloud::release::{ReleasePolicy, family_batches};
use crate::cloud::{Cloud, Eni, MAX_IPS_PER_CALL};

/// What the send-time check decided for one IP.
enum SendVerdict {
    Send,
    /// Sent before and no longer listed: released by our earlier call.
    Gone,
    Wait(WaitReason),
    Cancel(Cancel),
}

impl<C: Cloud, R: Router> Engine<C, R> {
    /// Clause 7, then clause 4 and 5 once more, then the call. The ENI's slot is
    /// `Sending` on entry; it goes back to idle here unless a call goes out (the call's
    /// end sets it idle).
    pub(super) async fn send_batch(
        &mut self,
        eni_id: String,
        ips: Vec<IpAddr>,
        enis: &[Eni],
        now: Instant,
    ) {
        // The last look at the pause before anything is decided or sent for this batch
        // (`send_checked` stops batches under a pause before they get here).
        if self.pause.in_force().is_some() {
            self.stopped_by_pause(&eni_id, &ips, now);
            self.slots.set_idle(&eni_id);
            return;
        }
        let eni = enis.iter().find(|e| e.id == eni_id);
        // Removals of this ENI that came due while the describe was in flight join the
        // batch: the listing that just arrived is as fresh for them as for the rest (a
        // burst keeps arriving for a few milliseconds after its first removal is due).
        let mut ips = ips;
        let joining: Vec<IpAddr> = self
            .intents
            .values()
            .filter(|i| {
                i.phase.is_waiting_for_due()
                    && i.due <= now
                    && !ips.contains(&i.ip)
                    && self.eni_of(i).as_deref() == Some(eni_id.as_str())
            })
            .map(|i| i.ip)
            .collect();
        for ip in joining {
            if self.recheck_locally(ip) {
                ips.push(ip);
            }
        }
        let mut send = Vec::new();
        let mut gone = Vec::new();
        for ip in ips {
            if !self.intents.contains_key(&ip) {
                continue; // cancelled meanwhile
            }
            match self.send_verdict(eni, ip, now) {
                SendVerdict::Send => {
                    if self.recheck_locally(ip) {
                        send.push(ip);
                    }
                }
                SendVerdict::Wait(why) => self.wait(ip, now, why),
                SendVerdict::Cancel(c) => self.cancel(ip, c),
                SendVerdict::Gone => {
                    self.counters.already_gone += 1;
                    self.released.insert(ip, now);
                    let generation = self.intents.get(&ip).map_or(0, |i| i.generation);
                    self.finish_unjournaled(ip, Outcome::AlreadyGone);
                    gone.push((ip, generation));
                }
            }
        }
        if !gone.is_empty() {
            // Released by an earlier call of ours (its answer lost, or before a restart):
            // its stale routing goes as after any release.
            let gone_ips: Vec<IpAddr> = gone.iter().map(|(ip, _)| *ip).collect();
            for ip in &gone_ips {
                info!(target: "audit", decision = "released", ip = %ip, eni = %eni_id, ips = ?gone_ips, "IPs no longer listed after our unassign: returned to the VPC: {ip}");
            }
            self.route_fix_then_journal(&gone, &Outcome::AlreadyGone)
                .await;
        }
        let mut send = self.within_host_limit(send, now);
        if send.is_empty() {
            self.slots.set_idle(&eni_id);
            return;
        }
        // Whole calls only: with more than ten, a partial last call waits for the next
        // check of this ENI, where removals still arriving may fill it (11 removals now
        // and 19 a moment later are 3 calls, not 10 + 1 + 10 + 9).
        if send.len() > MAX_IPS_PER_CALL {
            let whole = send.len() - send.len() % MAX_IPS_PER_CALL;
            for ip in send.split_off(whole) {
                if let Some(i) = self.intents.get_mut(&ip) {
                    i.phase = Phase::Pending;
                    i.due = i.due.min(now);
                }
            }
        }
        // One call per check ("Speed never buys a stale check", docs/design.md, "Fleet
        // scale"): a second call of this batch would go out after the first one's task
        // ended, on a listing read before it, and an EIP bound meanwhile would be unbound
        // silently. The rest waits for the next check of this ENI, which lists afresh
        // once the slot is idle (the client drops its cached listing when a task ends).
        let first = family_batches(&send).into_iter().next().unwrap_or_default();
        if first.len() < send.len() {
            for ip in send.iter().filter(|ip| !first.contains(ip)) {
                if let Some(i) = self.intents.get_mut(ip) {
                    i.phase = Phase::Pending;
                    i.due = i.due.min(now);
                }
            }
            send = first;
        }
        let vpc_id = eni.map(|e| e.vpc_id.clone()).unwrap_or_default();
        for ip in &send {
            self.audit_allowed(*ip, eni, now);
        }
        if self.settings.dry_run {
            for chunk in family_batches(&send) {
                self.counters.dry_run_calls += 1;
                let (action, field) = match chunk.first() {
                    Some(IpAddr::V6(_)) => ("UnassignIpv6Addresses", "Ipv6Addresses"),
                    _ => ("UnassignPrivateIpAddresses", "PrivateIpAddresses"),
                };
                info!(
                    target: "audit",
                    decision = "dry_run",
                    eni = %eni_id,
                    vpc = %vpc_id,
                    ips = ?chunk,
                    "dry run: would call {action}(NetworkInterfaceId={eni_id}, {field}={chunk:?})"
                );
                for ip in &chunk {
                    self.finish(*ip, Outcome::DryRun);
                }
            }
            self.slots.set_idle(&eni_id);
            return;
        }
        for ip in &send {
            if let Some(i) = self.intents.get_mut(ip) {
                i.phase = Phase::Sending;
                if !i.sent {
                    self.first_sends.insert((*ip, i.generation));
                }
                // From here the cloud may take the call even if its answer is lost: an
                // IP it stops listing is then gone because of us.
                i.sent = true;
            }
            // Before the call: a crash or a lost answer from here on may leave the IP
            // released without our hearing of it.
            self.journal_observed_as(*ip, false, true);
        }
        let policy = ReleasePolicy {
            max_task_failures: self.settings.max_task_failures,
        };
        let generations = Arc::new(
            send.iter()
                .filter_map(|ip| self.intents.get(ip).map(|i| (*ip, i.generation)))
                .collect(),
        );
        tokio::spawn(release_task(
            Arc::clone(&self.cloud),
            self.reports_tx.clone(),
            Call {
                eni_id,
                vpc_id,
                ips: send,
                generations,
                gate: self.pause.send_gate(),
            },
            policy,
        ));
    }

    /// Clause 7 for `ip` on the listing of its ENI, with the time it has gone unlisted.
    fn send_verdict(&mut self, eni: Option<&Eni>, ip: IpAddr, now: Instant) -> SendVerdict {
        let recheck = self.settings.not_listed_recheck;
        let verdict = rule::at_send(&self.settings, &self.inventory, eni, ip);
        let Some(intent) = self.intents.get_mut(&ip) else {
            return SendVerdict::Cancel(Cancel::NotListedOnEni);
        };
        match verdict {
            CloudVerdict::NotListed(why) => {
                let since = if intent.sent {
                    now
                } else {
                    *intent.not_listed_since.get_or_insert(now)
                };
                match rule::not_listed(intent, since, now, recheck, why) {
                    NotListed::Gone => SendVerdict::Gone,
                    NotListed::Wait(why) => SendVerdict::Wait(why),
                    NotListed::Cancel => SendVerdict::Cancel(Cancel::NotListedOnEni),
                }
            }
            CloudVerdict::Send => {
                intent.not_listed_since = None;
                SendVerdict::Send
            }
            CloudVerdict::Wait(why) => {
                intent.not_listed_since = None;
                SendVerdict::Wait(why)
            }
            CloudVerdict::Cancel(c) => SendVerdict::Cancel(c),
        }
    }

    /// The per-host limit: at most `host_limit` IPs per `host_limit_window`. The rest
    /// wait for the window to move on.
    fn within_host_limit(&mut self, send: Vec<IpAddr>, now: Instant) -> Vec<IpAddr> {
        let (limit, window) = (self.settings.host_limit, self.settings.host_limit_window);
        let (send, over, free_at) = self.host_limit.admit(send, now, limit, window);
        if !over.is_empty() {
            warn!(
                target: "audit",
                decision = "host_limit",
                limit,
                window_ms = crate::millis(window),
                ips = ?over,
                "per-host release limit reached; the rest wait for the window"
            );
            for ip in over {
                if let Some(sink) = &self.metrics {
                    sink.host_limit_waited();
                }
                if let Some(i) = self.intents.get_mut(&ip) {
                    i.phase = Phase::Waiting {
                        why: WaitReason::HostLimit,
                    };
                    i.due = free_at.max(now + Duration::from_millis(1));
                }
            }
        }
        send
    }
}
