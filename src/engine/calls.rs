//! The engine's cloud calls, spawned off the loop, and what their reports do: the
//! inventory refresh, the send-time listing, the unassign and its task, a journaled
//! task followed after a restart.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::intent::{Outcome, Phase};
use super::reasons::{Refusal, RefusalKind, WaitReason};
use super::{Engine, Router};
use crate::cloud::release::{
    IpOutcome, ReleaseOutcome, ReleasePolicy, family_batches, release_batch_observed,
};
use crate::cloud::{Cloud, CloudError, Eni, Family, TaskStatus};
use crate::inventory::Inventory;
use crate::journal::{IntentKey, RecordState};
use crate::pause::SendGate;
use crate::task::TaskRef;

/// The shortest interval between inventory refreshes triggered by link changes.
const INVENTORY_REFRESH_MIN: Duration = Duration::from_secs(10);

/// Reports from spawned cloud tasks.
#[derive(Debug)]
pub(super) enum CloudReport {
    Inventory(Result<Vec<Eni>, CloudError>),
    Checked {
        eni_id: String,
        ips: Vec<IpAddr>,
        result: Result<Vec<Eni>, CloudError>,
    },
    Sent {
        ips: Vec<IpAddr>,
        eni_id: String,
        task: TaskRef,
        /// The generation of each IP's intent in the call: the report is for that one.
        generations: Arc<HashMap<IpAddr, u64>>,
    },
    Done {
        eni_id: String,
        outcome: ReleaseOutcome,
        generations: Arc<HashMap<IpAddr, u64>>,
    },
    /// A chunk finished and the ENI has nothing more in flight.
    EniIdle(String),
}

impl<C: Cloud, R: Router> Engine<C, R> {
    pub(super) async fn on_report(&mut self, report: CloudReport, now: Instant) {
        match report {
            CloudReport::Inventory(result) => self.on_inventory(result),
            CloudReport::Checked {
                eni_id,
                ips,
                result,
            } => self.on_checked(eni_id, ips, result, now).await,
            CloudReport::Sent {
                ips,
                eni_id,
                task,
                generations,
            } => self.on_sent(&ips, eni_id, &task, &generations),
            CloudReport::Done {
                eni_id,
                outcome,
                generations,
            } => self.on_done(eni_id, outcome, &generations, now).await,
            CloudReport::EniIdle(eni_id) => self.slots.set_idle(&eni_id),
        }
    }

    fn on_sent(
        &mut self,
        ips: &[IpAddr],
        eni_id: String,
        task: &TaskRef,
        generations: &HashMap<IpAddr, u64>,
    ) {
        for ip in ips {
            let generation = self.generation_in(generations, *ip);
            self.first_sends.remove(&(*ip, generation));
            if let Some(i) = self.intent_at(*ip, generation) {
                i.phase = Phase::Releasing {
                    task_id: task.task_id.clone(),
                };
                i.sent = true;
            }
            self.journal(
                IntentKey::release(*ip, generation),
                RecordState::Sent {
                    eni_id: eni_id.clone(),
                    task: task.clone(),
                },
            );
        }
        info!(
            target: "audit",
            decision = "sent",
            eni = %eni_id,
            ips = ?ips,
            request_id = task.request_id.as_deref().unwrap_or(""),
            task_id = %task.task_id,
            "{} accepted; following the task",
            ips.first().map_or(Family::Ipv4, |ip| Family::of(*ip)).unassign_action()
        );
    }

    fn on_inventory(&mut self, result: Result<Vec<Eni>, CloudError>) {
        self.inventory_loading = false;
        match result {
            Ok(enis) => {
                let inventory = Inventory::build(
                    &self.inventory.instance_id,
                    enis,
                    &self.static_meta,
                    &self.statics,
                );
                info!(enis = inventory.by_mac.len(), "inventory refreshed");
                self.inventory = inventory;
            }
            Err(e) => warn!(error = %e, "inventory refresh failed; keeping the previous map"),
        }
    }

    pub(super) fn refresh_inventory(&mut self) {
        let now = Instant::now();
        if self.inventory_loading
            || self
                .last_inventory_refresh
                .is_some_and(|t| now.duration_since(t) < INVENTORY_REFRESH_MIN)
        {
            return;
        }
        self.inventory_loading = true;
        self.last_inventory_refresh = Some(now);
        let cloud = Arc::clone(&self.cloud);
        let tx = self.reports_tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(CloudReport::Inventory(cloud.list_enis().await));
        });
    }

    async fn on_done(
        &mut self,
        eni_id: String,
        outcome: ReleaseOutcome,
        generations: &HashMap<IpAddr, u64>,
        now: Instant,
    ) {
        let task = outcome.tasks.last();
        let task_id = task.map(|t| t.task_id.clone()).unwrap_or_default();
        let request_id = task.and_then(|t| t.request_id.clone()).unwrap_or_default();
        let mut done = Vec::new();
        let keys: Vec<(IpAddr, u64)> = outcome
            .ips
            .keys()
            .map(|ip| (*ip, self.generation_in(generations, *ip)))
            .collect();
        let took = keys
            .iter()
            .filter_map(|(ip, generation)| self.intent_ref(*ip, *generation))
            .map(|i| now.duration_since(i.observed_at))
            .max()
            .unwrap_or_default();
        for (ip, result) in outcome.ips {
            let generation = self.generation_in(generations, ip);
            // The call was for this intent: one a newer intent has since taken the place
            // of is followed in `following`, and its outcome is its own.
            let followed = self.following.remove(&(ip, generation));
            // Carried to the cloud by no unassign of this call (only a `NotSent` can say
            // so: every other outcome follows a send).
            let never_sent = self.first_sends.remove(&(ip, generation));
            match result {
                IpOutcome::Released => {
                    self.counters.released += 1;
                    self.released.insert(ip, now);
                    let outcome = Outcome::Released {
                        task_id: task_id.clone(),
                    };
                    self.finish_intent(ip, generation, followed, outcome.clone());
                    done.push((ip, generation, outcome));
                }
                IpOutcome::AlreadyGone => {
                    self.counters.already_gone += 1;
                    self.released.insert(ip, now);
                    self.finish_intent(ip, generation, followed, Outcome::AlreadyGone);
                    done.push((ip, generation, Outcome::AlreadyGone));
                }
                IpOutcome::RetryLater {
                    reason,
                    after_error,
                } => {
                    if self.unfollow(followed) {
                        self.wait(
                            ip,
                            now,
                            WaitReason::Cloud {
                                reason,
                                after_error,
                            },
                        );
                    }
                }
                IpOutcome::NotSent => {
                    // Nothing went out for it: "gone because of us" would be a wrong
                    // belief (the journal said it may have gone out), so it is unsent
                    // again, as it was before this call.
                    let mut followed = followed;
                    if never_sent && let Some(old) = followed.as_mut() {
                        old.sent = false;
                    }
                    if self.unfollow(followed) {
                        let unsent = never_sent
                            && self
                                .intents
                                .get_mut(&ip)
                                .filter(|i| i.generation == generation)
                                .map(|i| i.sent = false)
                                .is_some();
                        if unsent {
                            self.journal_observed_as(ip, false, false);
                        }
                        self.stopped_by_pause(&eni_id, &[ip], now);
                    }
                }
                IpOutcome::Refused { reason, code } => {
                    if self.unfollow(followed) {
                        self.counters.refused += 1;
                        let kind = RefusalKind::of_code(code.as_deref());
                        self.park(ip, now, Refusal { kind, text: reason });
                    }
                }
            }
        }
        if done.is_empty() {
            return;
        }
        let ips: Vec<IpAddr> = done.iter().map(|(ip, _, _)| *ip).collect();
        // One record per IP, so that each carries its IP as a field of its own: under
        // journald `journalctl -u enisync IP=<ip>` is the history of one address.
        for ip in &ips {
            info!(
                target: "audit",
                decision = "released",
                ip = %ip,
                eni = %eni_id,
                ips = ?ips,
                request_id = %request_id,
                task_id = %task_id,
                duration_ms = crate::millis(took),
                "IPs returned to the VPC: {ip}"
            );
        }
        self.released
            .retain(|_, t| now.duration_since(*t) < self.settings.remember_released);
        self.router
            .after_release(&ips, &self.view, &self.inventory)
            .await;
        for (ip, generation, outcome) in done {
            self.journal(
                IntentKey::release(ip, generation),
                RecordState::Finished {
                    outcome: outcome.record(),
                },
            );
        }
    }

    /// Fixes the routing of `gone` (released), then journals them as finished.
    pub(super) async fn route_fix_then_journal(
        &mut self,
        gone: &[(IpAddr, u64)],
        outcome: &Outcome,
    ) {
        let ips: Vec<IpAddr> = gone.iter().map(|(ip, _)| *ip).collect();
        self.router
            .after_release(&ips, &self.view, &self.inventory)
            .await;
        for (ip, generation) in gone {
            self.journal(
                IntentKey::release(*ip, *generation),
                RecordState::Finished {
                    outcome: outcome.record(),
                },
            );
        }
    }

    /// Follows a journaled task of `eni_id` to its end (after a restart); the ENI's slot
    /// is `Sending` meanwhile.
    pub(super) fn follow_journaled(
        &mut self,
        eni_id: String,
        ip: IpAddr,
        generation: u64,
        task: TaskRef,
    ) {
        self.slots.set_sending(eni_id.clone());
        let cloud = Arc::clone(&self.cloud);
        let tx = self.reports_tx.clone();
        let generations = Arc::new([(ip, generation)].into());
        tokio::spawn(async move {
            let outcome = follow_journaled_task(&*cloud, ip, &task).await;
            let _ = tx.send(CloudReport::Done {
                eni_id: eni_id.clone(),
                outcome,
                generations,
            });
            let _ = tx.send(CloudReport::EniIdle(eni_id));
        });
    }
}

/// One unassign to make: the ENI, its VPC, the IPs and their intents' generations, and
/// the pause gate it was decided under.
pub(super) struct Call {
    pub eni_id: String,
    pub vpc_id: String,
    pub ips: Vec<IpAddr>,
    pub generations: Arc<HashMap<IpAddr, u64>>,
    pub gate: SendGate,
}

/// Sends the unassign for `ips` in chunks of ten of one family (IPv4 and IPv6 are
/// different actions), one after the other (the ENI's slot stays `Sending` until the
/// last, whatever the family), through the cloud module's release procedure. Every
/// unassign (a later chunk, the retry after a failed task) asks the gate right before it
/// goes: after a pause nothing more is sent (`IpOutcome::NotSent`), while a task already
/// accepted is still followed to its end.
pub(super) async fn release_task<C: Cloud>(
    cloud: Arc<C>,
    tx: mpsc::UnboundedSender<CloudReport>,
    call: Call,
    policy: ReleasePolicy,
) {
    let Call {
        eni_id,
        vpc_id,
        ips,
        generations,
        gate,
    } = call;
    for chunk in family_batches(&ips) {
        let sent_tx = tx.clone();
        let sent_eni = eni_id.clone();
        let sent_generations = Arc::clone(&generations);
        let outcome = release_batch_observed(
            &*cloud,
            &eni_id,
            &vpc_id,
            &chunk,
            policy,
            || gate.is_open(),
            move |ips, task| {
                let _ = sent_tx.send(CloudReport::Sent {
                    ips: ips.to_vec(),
                    eni_id: sent_eni.clone(),
                    task: task.clone(),
                    generations: Arc::clone(&sent_generations),
                });
            },
        )
        .await;
        let _ = tx.send(CloudReport::Done {
            eni_id: eni_id.clone(),
            outcome,
            generations: Arc::clone(&generations),
        });
    }
    let _ = tx.send(CloudReport::EniIdle(eni_id));
}

/// After a restart: a journaled task is followed to its end. Anything but SUCCESS goes
/// back through the send-time checks, where "no longer listed" counts as done.
async fn follow_journaled_task<C: Cloud>(cloud: &C, ip: IpAddr, task: &TaskRef) -> ReleaseOutcome {
    let outcome = match cloud.wait_task(task).await {
        Ok(TaskStatus::Success) => IpOutcome::Released,
        Ok(status) => IpOutcome::RetryLater {
            reason: format!("journaled task {} ended {status:?}", task.task_id),
            after_error: false,
        },
        Err(e) => IpOutcome::RetryLater {
            reason: format!("following journaled task {}: {}", task.task_id, e.code),
            after_error: true,
        },
    };
    ReleaseOutcome {
        ips: [(ip, outcome)].into(),
        tasks: vec![task.clone()],
    }
}
