//! Claims: taking a floating IP in the cloud when it is added on this host
//! (docs/design.md, "Claims"). One concern per file:
//!
//! - `decide.rs`: whose address it is and what may be done about it (pure);
//! - `trigger.rs`: the trigger discipline of an addition (pure: link, ENI, adder);
//! - `flow.rs`: host events and the clock applied to the claims (`impl Engine`);
//! - `answers.rs`: the cloud's answers (lookup, call, re-verification) decided;
//! - `audit.rs`: audit records, alarms and counts of the decisions;
//! - `calls.rs`: the lookups and calls spawned off the loop, and their reports;
//! - `by_hand.rs`: `enisync release <ip>`, an orphaned address released by hand;
//! - `keys.rs`: the decision and reason keys.
//!
//! Life of a claim, keyed by address:
//!
//! ```text
//! added ─► Settling ─(settle over, still there)─► LookingUp ─► Mine ─────────────► Claimed ─(reverify)─► Claimed
//!   │          └─ removed / link down ─► dropped       ├─► Migrate/Assign ─► Calling ─► LookingUp (verify)   └─ moved away ─► contested ─► Backoff ─► LookingUp
//!   └─ adder not listed ─► skipped                     ├─► not AVAILABLE, busy, holdoff, rate ─► Waiting ─► LookingUp
//!                                                      └─► foreign, primary, other subnet/VPC, refused ─► Parked (alarm)
//! ```
//!
//! Claims are not journaled: after a restart an address present on the host counts as
//! added at start, so a claim cut by a crash is decided again from the host and the
//! cloud (and no Migrate goes out within `claim.startup_holdoff`).

mod answers;
mod audit;
mod by_hand;
mod calls;
mod decide;
mod flow;
mod keys;
mod trigger;

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

pub use self::by_hand::{HandRefusal, HandRelease};
pub(super) use self::calls::ClaimReport;
pub use self::decide::{ClaimTarget, ClaimWait, HolderDecision, ParkReason, decide};
pub use self::keys::{ClaimDecision, ClaimReason};
use crate::host::Remover;
use crate::net::Cidr;

/// The `[claim]` keys, as the engine uses them.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimSettings {
    pub cidrs: Vec<Cidr>,
    pub peers: Vec<String>,
    pub adders: Vec<String>,
    pub settle: Duration,
    pub startup_holdoff: Duration,
    pub orphan_after: Duration,
    pub reverify_interval: Duration,
    pub contest_backoff: Duration,
    pub contest_backoff_max: Duration,
    pub max_migrations_per_minute: u32,
    pub dry_run: bool,
}

impl ClaimSettings {
    pub fn from_config(c: &crate::config::ClaimConfig) -> Self {
        Self {
            cidrs: c.cidrs.clone(),
            peers: c.peers.clone(),
            adders: c.adders.clone(),
            settle: c.settle,
            startup_holdoff: c.startup_holdoff,
            orphan_after: c.orphan_after,
            reverify_interval: c.reverify_interval,
            contest_backoff: c.contest_backoff,
            contest_backoff_max: c.contest_backoff_max,
            max_migrations_per_minute: c.max_migrations_per_minute,
            dry_run: c.dry_run,
        }
    }

    /// Whether `ip` is inside a claim CIDR.
    pub fn covers(&self, ip: Ipv4Addr) -> bool {
        self.cidrs.iter().any(|c| c.contains(ip))
    }

    /// The wait after the `n`th contest in a row (n ≥ 1): `contest_backoff` doubling,
    /// at most `contest_backoff_max`.
    pub fn contest_wait(&self, n: u32) -> Duration {
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        self.contest_backoff
            .saturating_mul(factor)
            .min(self.contest_backoff_max)
    }
}

/// Off, with the config's defaults: one source for every default.
impl Default for ClaimSettings {
    fn default() -> Self {
        Self::from_config(&crate::config::ClaimConfig::default())
    }
}

/// Where a claim is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimPhase {
    /// Added; claimed if it is still there at `due`.
    Settling { due: Instant },
    /// A holder lookup is in flight.
    LookingUp,
    /// A Migrate or an Assign, and its task, are in flight.
    Calling,
    /// Bound here; checked against the cloud again at `next_verify`.
    Claimed { next_verify: Instant },
    /// Looked up again at `due` (`claim_wait`: not AVAILABLE, cloud trouble, the
    /// start-up hold-off, the migration bound).
    Waiting { due: Instant, reason: ClaimReason },
    /// The cloud moved it away while the host kept it: claimed again at `due`.
    Contested { due: Instant },
    /// Decided in dry run, or refused/foreign: nothing more until the address is added
    /// again.
    Parked { reason: ClaimReason },
    /// Dry run: what would have been called was logged.
    DryRun,
}

/// One address under a claim.
#[derive(Debug, Clone)]
pub struct ClaimEntry {
    pub ip: Ipv4Addr,
    pub link: u32,
    pub link_name: String,
    pub eni_id: String,
    /// Which attempt this is (the `ClientToken` of an Assign names it).
    pub attempt: u64,
    /// Who added it; `None` when it was there at start, or not (yet) identified.
    pub adder: Option<Remover>,
    /// Present on the host at start (the adder is not asked for).
    pub at_start: bool,
    pub phase: ClaimPhase,
    /// Contests in a row (the backoff's exponent); reset once claimed again.
    pub contests: u32,
    /// Since when the address has been absent from the host while bound here.
    pub absent_since: Option<Instant>,
    /// A `claim_paused` record was written for the current wait.
    pub pause_logged: bool,
    /// Retries of this attempt so far (the wait doubles with each).
    pub retries: u32,
}

/// The window of `claim.max_migrations_per_minute`: a minute as the cloud counts it.
/// Each Migrate is timed here when it is decided; its request reaches the cloud a little
/// later, by a latency that varies, so two of them can arrive closer together than they
/// were decided (59.999 s apart, seen in a split-brain test). The second of margin keeps
/// the bound true at the cloud.
pub(super) const MIGRATION_WINDOW: Duration = Duration::from_secs(61);

/// Every claim, and what bounds them.
#[derive(Debug)]
pub(super) struct ClaimBook {
    pub entries: BTreeMap<Ipv4Addr, ClaimEntry>,
    /// When the engine started (`claim.startup_holdoff`).
    pub started: Instant,
    /// Migrates sent per address in the last minute (`claim.max_migrations_per_minute`).
    pub migrations: BTreeMap<Ipv4Addr, VecDeque<Instant>>,
    pub next_attempt: u64,
    pub reports_tx: mpsc::UnboundedSender<ClaimReport>,
    pub reports_rx: mpsc::UnboundedReceiver<ClaimReport>,
    /// Decisions so far, by `(decision, reason)`: `status` and the metrics.
    pub counts: BTreeMap<(ClaimDecision, ClaimReason), u64>,
}

impl ClaimBook {
    pub fn new(started: Instant) -> Self {
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        Self {
            entries: BTreeMap::new(),
            started,
            migrations: BTreeMap::new(),
            next_attempt: 0,
            reports_tx,
            reports_rx,
            counts: BTreeMap::new(),
        }
    }

    /// Migrates of `ip` within the minute before `now`; forgets older ones.
    pub fn migrations_in_last_minute(&mut self, ip: Ipv4Addr, now: Instant) -> usize {
        let window = MIGRATION_WINDOW;
        let sent = self.migrations.entry(ip).or_default();
        while sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            sent.pop_front();
        }
        sent.len()
    }

    /// When the oldest Migrate of `ip` in the window leaves it.
    pub fn migration_window_ends(&self, ip: Ipv4Addr) -> Option<Instant> {
        self.migrations
            .get(&ip)
            .and_then(|s| s.front())
            .map(|t| *t + MIGRATION_WINDOW)
    }

    /// The addresses absent from the host longer than `after` while bound here.
    pub fn orphans(&self, now: Instant, after: Duration) -> Vec<Ipv4Addr> {
        self.entries
            .values()
            .filter(|e| matches!(e.phase, ClaimPhase::Claimed { .. }))
            .filter(|e| {
                e.absent_since
                    .is_some_and(|t| now.saturating_duration_since(t) > after)
            })
            .map(|e| e.ip)
            .collect()
    }

    /// Every claim as `status` shows it.
    pub fn views(
        &self,
        now: Instant,
        orphan_after: Duration,
    ) -> Vec<crate::engine::commands::ClaimView> {
        let orphans = self.orphans(now, orphan_after);
        self.entries
            .values()
            .map(|e| {
                let (phase, reason) = match &e.phase {
                    ClaimPhase::Settling { .. } => ("settling", None),
                    ClaimPhase::LookingUp => ("looking_up", None),
                    ClaimPhase::Calling => ("calling", None),
                    ClaimPhase::Claimed { .. } => ("claimed", None),
                    ClaimPhase::Waiting { reason, .. } => ("waiting", Some(reason.as_str())),
                    ClaimPhase::Contested { .. } => ("contested", None),
                    ClaimPhase::Parked { reason } => ("parked", Some(reason.as_str())),
                    ClaimPhase::DryRun => ("dry_run", None),
                };
                crate::engine::commands::ClaimView {
                    ip: e.ip,
                    link: e.link_name.clone(),
                    eni_id: e.eni_id.clone(),
                    phase: phase.to_string(),
                    reason: reason.map(str::to_string),
                    contests: e.contests,
                    orphan: orphans.contains(&e.ip),
                }
            })
            .collect()
    }

    /// The earliest time something is due, ignoring what a pause blocks and claims
    /// whose ENI is busy (`taken`: the end of that work wakes the loop anyway).
    pub fn next_wakeup(
        &self,
        paused: bool,
        orphan_after: Duration,
        taken: impl Fn(&str) -> bool,
    ) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| match e.phase {
                ClaimPhase::Settling { due }
                | ClaimPhase::Waiting { due, .. }
                | ClaimPhase::Contested { due } => (!paused && !taken(&e.eni_id)).then_some(due),
                // Re-verification only reads: it goes on under a pause.
                ClaimPhase::Claimed { next_verify } => {
                    let orphan = e.absent_since.map(|t| t + orphan_after);
                    Some(orphan.map_or(next_verify, |o| o.min(next_verify)))
                }
                _ => None,
            })
            .min()
    }
}
