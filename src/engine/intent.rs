//! Intents: one per removal that may become a release, keyed by address and generation,
//! and the phases they go through (see the diagram in `src/engine.rs`).

use std::net::IpAddr;

use serde::Serialize;
use tokio::time::Instant;

use super::reasons::{Cancel, HeldReason, Refusal, WaitReason};
use crate::host::Remover;
use crate::journal::OutcomeRecord;

/// Where an intent stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// The grace period runs until `due`.
    Pending,
    /// Part of a burst: waits for an operator or for the addresses to come back.
    Held,
    /// The send-time cloud check is in flight.
    Checking,
    /// Waiting until `due` to check again (cloud state, retry backoff).
    Waiting { why: WaitReason },
    /// The unassign is being sent.
    Sending,
    /// The cloud accepted the unassign; its task is followed.
    Releasing { task_id: String },
    /// The cloud refused; retried on reload (new config or keys) and hourly (CAM role
    /// keys rotate well within that).
    Parked { why: Refusal },
}

impl Phase {
    /// Waiting for its time to come: the grace period or a re-check.
    pub(super) fn is_waiting_for_due(&self) -> bool {
        matches!(self, Self::Pending | Self::Waiting { .. })
    }

    /// The unassign is out: only its answer decides now.
    pub(super) fn is_in_flight(&self) -> bool {
        matches!(self, Self::Sending | Self::Releasing { .. })
    }
}

/// One pending release.
#[derive(Debug, Clone, Serialize)]
pub struct Intent {
    pub ip: IpAddr,
    /// With `ip`, the intent's journal key: grows with each new intent for `ip`.
    #[serde(skip)]
    pub generation: u64,
    pub link: u32,
    pub link_name: String,
    pub prefix: u8,
    pub mac: Option<crate::net::MacAddr>,
    pub eni_id: Option<String>,
    pub remover: Option<Remover>,
    #[serde(skip)]
    pub observed_at: Instant,
    /// Wall-clock time of the removal, Unix ms (audit, status).
    pub observed_unix_ms: u64,
    #[serde(skip)]
    pub due: Instant,
    /// Seconds until `due` at the time of a snapshot.
    pub due_in_ms: u64,
    pub phase: Phase,
    /// Why it is held, while `phase` is `Held`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_reason: Option<HeldReason>,
    pub attempts: u32,
    pub task_failures: u32,
    #[serde(skip)]
    pub(super) not_listed_since: Option<Instant>,
    /// An unassign for it was accepted once: if the cloud stops listing it, it is gone
    /// because of us, not a lagging view.
    pub sent: bool,
    /// An orphaned claim address an operator asked to release (`enisync release <ip>`,
    /// docs/design.md, "Claims"): the claim-address rule does not cancel it; every other
    /// check at the deadline and at send time applies. Not journaled: after a restart
    /// the claim-address rule cancels it (the operator asks again).
    #[serde(skip_serializing_if = "<&bool as std::ops::Not>::not")]
    pub by_hand: bool,
    /// The kernel-secondary flag at removal, and the subnet primary then in force:
    /// clause 3 needs both.
    #[serde(skip)]
    pub(super) secondary: bool,
    #[serde(skip)]
    pub(super) subnet_primary: Option<IpAddr>,
}

impl Intent {
    /// An intent of `ip` observed (or recovered from the journal) `now`, with nothing
    /// else known yet: callers fill in what they know. The defaults (prefix 32, no
    /// subnet primary) are what clause 3 cannot use.
    pub(super) fn new(ip: IpAddr, generation: u64, now: Instant, phase: Phase) -> Self {
        Self {
            ip,
            generation,
            link: 0,
            link_name: String::new(),
            prefix: 32,
            mac: None,
            eni_id: None,
            remover: None,
            observed_at: now,
            observed_unix_ms: super::audit::unix_ms(),
            due: now,
            due_in_ms: 0,
            phase,
            held_reason: None,
            attempts: 0,
            task_failures: 0,
            not_listed_since: None,
            sent: false,
            by_hand: false,
            secondary: false,
            subnet_primary: None,
        }
    }
}

/// How a release ended (for status and metrics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Released { task_id: String },
    AlreadyGone,
    Cancelled(Cancel),
    DryRun,
}

impl Outcome {
    /// The journal's record of it.
    pub(super) fn record(&self) -> OutcomeRecord {
        match self {
            Self::Released { task_id } => OutcomeRecord::Released {
                task_id: task_id.clone(),
            },
            Self::AlreadyGone => OutcomeRecord::AlreadyGone,
            Self::Cancelled(c) => OutcomeRecord::Cancelled {
                reason: c.into(),
                detail: c.detail().map(str::to_owned),
            },
            Self::DryRun => OutcomeRecord::DryRun,
        }
    }
}

/// A finished decision, kept for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct Finished {
    pub ip: IpAddr,
    pub eni_id: Option<String>,
    pub outcome: Outcome,
}
