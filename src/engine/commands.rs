//! Operator and daemon commands, and what they read: the `status` snapshot and the
//! `plan`.

use std::net::IpAddr;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::info;

use super::claim::{HandRefusal, HandRelease};
use super::intent::{Finished, Intent, Phase};
use super::reasons::{Cancel, HeldReason};
use super::settings::Settings;
use super::sink::Counters;
use super::{Engine, Router, rule};
use crate::cloud::Cloud;
use crate::pause::{PauseRequest, Paused};

/// Operator and daemon commands.
#[derive(Debug)]
pub enum Command {
    Snapshot(oneshot::Sender<Snapshot>),
    Plan(oneshot::Sender<PlanView>),
    /// Confirm every held burst.
    ReleaseHeld(oneshot::Sender<usize>),
    Cancel(IpAddr, oneshot::Sender<bool>),
    /// `enisync release <ip>`: release an orphaned claim address by hand (docs/design.md,
    /// "Claims"); the answer says what goes, or why not.
    ReleaseByHand(IpAddr, oneshot::Sender<Result<HandRelease, HandRefusal>>),
    /// New settings after a reload; parked releases are tried again.
    Reload(Box<Settings>),
    /// Refresh the inventory now.
    RefreshInventory,
    /// Pause (true) or resume (false) every cloud mutation; the uid is the caller's. The
    /// answer says whether the change is on disk (a pause that is not would be lost
    /// by a restart).
    Pause(PauseRequest, oneshot::Sender<Result<(), String>>),
    /// Answered as soon as the loop reads it: `/healthz` asks, so liveness means "the
    /// engine answers", not "the engine woke up lately" (an idle engine sleeps).
    Ping(oneshot::Sender<()>),
}

/// A snapshot for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Standing conditions an operator should fix (e.g. networkd removing our rules).
    pub warnings: Vec<String>,
    pub links: Vec<LinkStatus>,
    pub intents: Vec<Intent>,
    pub recent: Vec<Finished>,
    pub alarms: Vec<String>,
    pub errors: Vec<String>,
    pub counters: Counters,
    pub paused: bool,
    /// The pause in force: since when (RFC 3339), and by which uid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_by_uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_note: Option<String>,
    pub dry_run: bool,
    /// What the daemon still waits for before the engine runs (the metadata service,
    /// the first listing); absent once it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starting: Option<String>,
    /// Floating IPs under a claim (docs/design.md, "Claims"); absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<ClaimView>,
}

/// One floating IP under a claim, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClaimView {
    pub ip: std::net::Ipv4Addr,
    pub link: String,
    pub eni_id: String,
    /// `settling`, `looking_up`, `calling`, `claimed`, `waiting`, `contested`, `parked`,
    /// `dry_run`.
    pub phase: String,
    /// Why it waits or is parked, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Contests in a row.
    pub contests: u32,
    /// Absent from the host longer than `claim.orphan_after` while bound here.
    pub orphan: bool,
}

impl Snapshot {
    /// What `status` shows before the engine runs: the pause and what start waits for.
    pub fn starting(waiting_for: String, paused: Option<&Paused>, dry_run: bool) -> Self {
        let mut snapshot = Self {
            warnings: Vec::new(),
            links: Vec::new(),
            intents: Vec::new(),
            recent: Vec::new(),
            alarms: Vec::new(),
            errors: Vec::new(),
            counters: Counters::default(),
            paused: false,
            paused_since: None,
            paused_by_uid: None,
            paused_note: None,
            dry_run,
            starting: Some(waiting_for),
            claims: Vec::new(),
        };
        snapshot.set_pause(paused);
        snapshot
    }

    fn set_pause(&mut self, paused: Option<&Paused>) {
        self.paused = paused.is_some();
        self.paused_since = paused.map(|p| crate::wallclock::rfc3339(p.since_unix));
        self.paused_by_uid = paused.and_then(|p| p.by_uid);
        self.paused_note = paused.and_then(|p| p.note.clone());
    }
}

/// One ENI-backed link for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    pub name: String,
    pub index: u32,
    pub mac: Option<String>,
    pub up: bool,
    pub eni_id: Option<String>,
    pub vpc_id: Option<String>,
    pub primary_ip: Option<IpAddr>,
    /// Aux IPs present on the link now.
    pub aux_ips: Vec<IpAddr>,
    /// Secondary IPs the cloud lists on the ENI (as of the last describe).
    pub cloud_ips: Vec<IpAddr>,
}

/// What `plan` shows: what would be released now, and the routing changes.
#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    /// Releases whose grace period and local checks pass now (the send-time cloud
    /// check still applies).
    pub would_release: Vec<PlannedRelease>,
    /// Releases still in their grace period or waiting.
    pub not_yet: Vec<PlannedRelease>,
    pub held: Vec<IpAddr>,
    pub routing: Vec<String>,
    pub paused: bool,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedRelease {
    pub ip: IpAddr,
    pub eni_id: Option<String>,
    pub link: String,
    pub due_in_ms: u64,
    pub note: String,
}

impl<C: Cloud, R: Router> Engine<C, R> {
    pub(super) async fn on_command_async(&mut self, command: Command, now: Instant) {
        match command {
            Command::Plan(reply) => {
                let plan = self.plan(now).await;
                let _ = reply.send(plan);
            }
            other => self.on_command(other, now),
        }
    }

    /// Releases that would go now and the routing they would change; nothing changes.
    async fn plan(&mut self, now: Instant) -> PlanView {
        let mut would_release = Vec::new();
        let mut not_yet = Vec::new();
        let mut held = Vec::new();
        for i in self.intents.values() {
            let planned = |note: String| PlannedRelease {
                ip: i.ip,
                eni_id: i.eni_id.clone(),
                link: i.link_name.clone(),
                due_in_ms: crate::millis(i.due.saturating_duration_since(now)),
                note,
            };
            match &i.phase {
                Phase::Held => held.push(i.ip),
                Phase::Pending | Phase::Waiting { .. } if i.due <= now => {
                    match rule::at_deadline(self.world(), i) {
                        Ok(()) => would_release
                            .push(planned("due; the send-time cloud check applies".into())),
                        Err(c) => not_yet.push(planned(format!("would be cancelled: {c}"))),
                    }
                }
                Phase::Pending => not_yet.push(planned("grace period".into())),
                Phase::Waiting { why } => not_yet.push(planned(format!("waiting: {why}"))),
                Phase::Parked { why } => not_yet.push(planned(format!("parked: {why}"))),
                other => not_yet.push(planned(format!("in flight: {other:?}"))),
            }
        }
        let ips: Vec<IpAddr> = would_release.iter().map(|p| p.ip).collect();
        let routing = self.router.plan(&ips, &self.view, &self.inventory).await;
        PlanView {
            would_release,
            not_yet,
            held,
            routing,
            paused: self.pause.in_force().is_some(),
            dry_run: self.settings.dry_run,
        }
    }

    fn on_command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Snapshot(reply) => {
                let _ = reply.send(self.snapshot(now));
            }
            Command::ReleaseHeld(reply) => {
                let held: Vec<IpAddr> = self
                    .intents
                    .values()
                    .filter(|i| i.phase == Phase::Held)
                    .map(|i| i.ip)
                    .collect();
                for ip in &held {
                    if let Some(intent) = self.intents.get_mut(ip) {
                        intent.phase = Phase::Pending;
                        intent.held_reason = None;
                        intent.due = intent.due.max(now);
                    }
                    self.journal_observed(*ip, false);
                }
                let n = held.len();
                self.burst.clear();
                info!(target: "audit", decision = "held_confirmed", count = n, "operator confirmed held releases");
                let _ = reply.send(n);
            }
            Command::Cancel(ip, reply) => {
                let found = self.intents.contains_key(&ip);
                if found {
                    self.cancel(ip, Cancel::Operator);
                }
                let _ = reply.send(found);
            }
            Command::ReleaseByHand(ip, reply) => {
                let _ = reply.send(self.release_by_hand(ip, now));
            }
            Command::Reload(settings) => {
                self.router.set_dry_run(settings.dry_run);
                self.settings = *settings;
                info!(
                    dry_run = self.settings.dry_run,
                    "settings reloaded; parked releases will be tried again"
                );
                self.unpark(now, true);
            }
            Command::RefreshInventory => self.refresh_inventory(),
            Command::Pause(request, reply) => {
                let _ = reply.send(self.pause.apply(request));
            }
            Command::Ping(reply) => {
                let _ = reply.send(());
            }
            // Answered in `on_command_async`.
            Command::Plan(_) => {}
        }
    }

    fn snapshot(&self, now: Instant) -> Snapshot {
        let intents = self
            .intents
            .values()
            .chain(self.following.values())
            .map(|i| {
                let mut i = i.clone();
                i.due_in_ms = crate::millis(i.due.saturating_duration_since(now));
                i
            })
            .collect();
        let links = self
            .view
            .links
            .values()
            .filter_map(|link| {
                let record = link.mac.and_then(|m| self.inventory.by_mac(m))?;
                let primary = record.primary_ip.map(IpAddr::V4);
                Some(LinkStatus {
                    name: link.name.clone(),
                    index: link.index,
                    mac: link.mac.map(|m| m.to_string()),
                    up: link.up,
                    eni_id: Some(record.eni_id.clone()),
                    vpc_id: Some(record.vpc_id.clone()),
                    primary_ip: primary,
                    // Link-local, SLAAC and other never-candidate IPv6 addresses are
                    // not aux IPs (docs/design.md, "IPv6").
                    aux_ips: self
                        .view
                        .addrs_on(link.index)
                        .filter(|a| a.candidate().is_ok())
                        .map(|a| a.ip)
                        .filter(|ip| Some(*ip) != primary)
                        .collect(),
                    cloud_ips: record
                        .cloud
                        .as_ref()
                        .map(|e| {
                            e.ips
                                .iter()
                                .filter(|i| !i.primary)
                                .map(|i| i.addr)
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            })
            .collect();
        let mut warnings = self.warnings.clone();
        let unknown = self
            .intents
            .values()
            .filter(|i| matches!(i.held_reason, Some(HeldReason::UnknownRemover(_))))
            .count();
        if unknown > 0 {
            warnings.push(format!(
                "{unknown} removal(s) HELD because nobody knows who removed them \
                 (held_unknown_remover): check them, then confirm with `enisync release --held`"
            ));
        }
        let mut snapshot = Snapshot {
            warnings,
            links,
            intents,
            recent: self.recent.iter().cloned().collect(),
            alarms: self.alarms.iter().cloned().collect(),
            errors: self.errors.iter().cloned().collect(),
            counters: self.counters.clone(),
            paused: self.pause.in_force().is_some(),
            paused_since: None,
            paused_by_uid: None,
            paused_note: None,
            dry_run: self.settings.dry_run,
            starting: None,
            claims: self.claim_views(now),
        };
        snapshot.set_pause(self.pause.in_force());
        snapshot
    }
}
