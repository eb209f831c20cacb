//! The engine: the one place that decides whether an auxiliary IP is released.
//!
//! It applies the trigger rule (docs/design.md, "The trigger rule, clause by clause") and nothing
//! else decides. Its inputs are host events (netlink, translated by `host::watch`),
//! reports from the cloud tasks it spawned, operator commands, and the clock; its
//! outputs are cloud calls, journal records, routing changes and an audit log line per
//! decision (target `audit`, stable field names). docs/design.md lists what each file
//! of `src/engine/` owns.
//!
//! Life of an intent, keyed by IP:
//!
//! ```text
//! observed ─► Pending ─(grace over, local checks)─► Checking ─(cloud checks)─► Sending ─► Releasing ─► released
//!               │  └─ burst ─► Held ─(operator)─► Pending         │                 │
//!               └─ re-added / link down / collateral ─► cancelled  └─ PENDING/MIGRATING/not listed/retry ─► Waiting ─► Checking
//!                                                                   refused ─► Parked (retried on reload and hourly)
//! ```
//!
//! Time is `tokio::time::Instant`, so tests drive the real engine with a paused clock;
//! wall time is only written into records.

mod audit;
mod batch;
mod calls;
mod claim;
mod commands;
mod events;
mod guards;
mod intent;
mod lifecycle;
mod persist;
mod reasons;
mod router;
mod rule;
mod send;
mod settings;
mod sink;
mod slot;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

pub use self::claim::{
    ClaimDecision, ClaimReason, ClaimSettings, ClaimTarget, ClaimWait, HandRefusal, HandRelease,
    HolderDecision, ParkReason,
};
pub use self::commands::{ClaimView, Command, LinkStatus, PlanView, PlannedRelease, Snapshot};
pub use self::intent::{Finished, Intent, Outcome, Phase};
pub use self::reasons::{Cancel, HeldReason, Refusal, RefusalKind, WaitReason};
pub use self::router::Router;
pub use self::settings::Settings;
pub use self::sink::{Counters, Gauges, MetricsSink, ReleaseCount};

use self::calls::CloudReport;
use self::guards::{BurstGuard, HostLimit};
use self::slot::EniSlots;
use crate::cloud::Cloud;
use crate::host::{HostEvent, HostView};
use crate::inventory::Inventory;
use crate::journal::Journal;
use crate::pause::Pause;

/// The engine. Generic over the cloud and the router so the same code runs in the
/// daemon and in unit tests.
pub struct Engine<C: Cloud, R: Router> {
    settings: Settings,
    cloud: Arc<C>,
    router: R,
    journal: Option<Journal>,
    boot_id: String,
    view: HostView,
    inventory: Inventory,
    static_meta: HashMap<crate::net::MacAddr, crate::inventory::MetaFacts>,
    statics: Vec<crate::config::StaticInterface>,
    intents: BTreeMap<IpAddr, Intent>,
    /// Intents whose unassign is out (sending or releasing) and whose address came back
    /// and left again meanwhile: a newer intent took their place in `intents`, and they
    /// are followed here to their end (journal key: address and generation).
    following: BTreeMap<(IpAddr, u64), Intent>,
    /// Intents (address, generation) marked `sent` for a call that has not yet carried
    /// them to the cloud and that were not marked before it: if the pause stops that
    /// call first (`IpOutcome::NotSent`), they go back to unsent.
    first_sends: HashSet<(IpAddr, u64)>,
    /// The latest generation given to an intent of each address.
    generations: HashMap<IpAddr, u64>,
    /// Clause 6.
    burst: BurstGuard,
    /// What the engine is doing with each ENI: calls for one ENI are serialised there.
    slots: EniSlots,
    released: HashMap<IpAddr, Instant>,
    recent: VecDeque<Finished>,
    alarms: VecDeque<String>,
    /// Recent failures (cloud errors, refusals), newest first, for `status`.
    errors: VecDeque<String>,
    host_limit: HostLimit,
    metrics: Option<Arc<dyn MetricsSink>>,
    warnings: Vec<String>,
    counters: Counters,
    /// The operator's pause, kept in `state.dir` so that a restart keeps it.
    pause: Pause,
    reports_tx: mpsc::UnboundedSender<CloudReport>,
    reports_rx: mpsc::UnboundedReceiver<CloudReport>,
    inventory_loading: bool,
    /// Link changes can come in storms; describes are rate-limited on our side too.
    last_inventory_refresh: Option<Instant>,
    /// Floating IPs claimed when added on the host (docs/design.md, "Claims").
    claims: claim::ClaimBook,
    /// A claimed address was added on an ENI link: its routing is reconciled on the
    /// loop's next turn, after the claim's holder lookup has been started (the time of
    /// a failover counts from the addition; docs/design.md, "Claims").
    routing_after_claims: bool,
}

/// Host events taken in one go before the engine decides again.
const DRAIN_BATCH: usize = 1024;

/// How many finished releases, alarms and errors `status` keeps.
const RECENT_KEPT: usize = 64;

impl<C: Cloud, R: Router> fmt::Debug for Engine<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("intents", &self.intents.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// What the daemon hands the engine at start.
#[derive(Debug)]
pub struct Start {
    pub view: HostView,
    pub inventory: Inventory,
    pub meta: HashMap<crate::net::MacAddr, crate::inventory::MetaFacts>,
    pub statics: Vec<crate::config::StaticInterface>,
    pub boot_id: String,
    pub journal: Option<Journal>,
    pub replay: Vec<crate::journal::Record>,
    /// Where decisions and gauges are reported (the daemon's metrics).
    pub metrics: Option<Arc<dyn MetricsSink>>,
    /// Standing warnings found at start, shown by `status`.
    pub warnings: Vec<String>,
    /// The operator's pause, as the start-up left it (read from `state.dir` once).
    pub pause: Pause,
}

impl<C: Cloud, R: Router> Engine<C, R> {
    pub fn new(settings: Settings, cloud: Arc<C>, router: R, start: Start) -> Self {
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let mut engine = Self {
            settings,
            cloud,
            router,
            journal: start.journal,
            boot_id: start.boot_id,
            view: start.view,
            inventory: start.inventory,
            static_meta: start.meta,
            statics: start.statics,
            intents: BTreeMap::new(),
            following: BTreeMap::new(),
            first_sends: HashSet::new(),
            generations: HashMap::new(),
            burst: BurstGuard::default(),
            slots: EniSlots::default(),
            released: HashMap::new(),
            recent: VecDeque::new(),
            alarms: VecDeque::new(),
            errors: VecDeque::new(),
            host_limit: HostLimit::default(),
            metrics: start.metrics,
            warnings: start.warnings,
            counters: Counters::default(),
            pause: start.pause,
            reports_tx,
            reports_rx,
            inventory_loading: false,
            last_inventory_refresh: None,
            claims: claim::ClaimBook::new(Instant::now()),
            routing_after_claims: false,
        };
        engine.recover(start.replay, Instant::now());
        engine.claims_at_start(Instant::now());
        engine
    }

    /// What the rule sees now.
    fn world(&self) -> rule::RuleInputs<'_> {
        rule::RuleInputs {
            settings: &self.settings,
            view: &self.view,
            inventory: &self.inventory,
        }
    }

    /// Runs until `shutdown` fires or the host event stream ends. Pending intents stay
    /// in the journal; a restart in the same boot resumes them.
    ///
    /// The loop sets a timer only for work that is due (a grace period, a retry, a
    /// coalescing window, a parked release's retry); with none, only events, commands and
    /// `heartbeat` wake it. `tick` runs on every turn, so a stuck loop stops whatever
    /// `tick` feeds (the systemd watchdog). The heartbeat is a stream so the daemon can
    /// drive it from a timer outside tokio's wheel, which would add wakeups of its own
    /// to every long sleep; tests drive it from the paused tokio clock.
    pub async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<HostEvent>,
        mut commands: mpsc::Receiver<Command>,
        shutdown: tokio_util::sync::CancellationToken,
        mut heartbeat: futures_util::stream::BoxStream<'static, ()>,
        mut tick: impl FnMut() + Send,
    ) {
        use futures_util::StreamExt;

        self.router.reconcile(&self.view, &self.inventory).await;
        loop {
            let now = Instant::now();
            self.unpark(now, false);
            self.dispatch_due(now);
            self.claims_due(now);
            if std::mem::take(&mut self.routing_after_claims) {
                // Let the lookup just spawned go out first: a reconcile whose netlink
                // answers are ready never yields.
                tokio::task::yield_now().await;
                self.router.reconcile(&self.view, &self.inventory).await;
            }
            if self.slots.any_checked() {
                self.send_checked(now).await;
            }
            // The floor keeps a wrong deadline from turning into a busy loop.
            let claims_wake = self.claims.next_wakeup(
                self.pause.in_force().is_some(),
                self.settings.claim.orphan_after,
                |eni| self.slots.is_taken(eni),
            );
            let wake = self
                .next_wakeup()
                .into_iter()
                .chain(claims_wake)
                .min()
                .map(|at| at.max(now + Duration::from_millis(1)));
            let timer = async move {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Some(event) => {
                        self.on_host_event(event, Instant::now()).await;
                        // Take in what is already queued before deciding: a burst (a
                        // flushed link, an `ip -batch`) arrives as a stream, and its
                        // first removal must not go out alone when the rest are waiting
                        // to be read. Bounded, so a storm cannot starve the rest.
                        for _ in 0..DRAIN_BATCH {
                            match events.try_recv() {
                                Ok(event) => self.on_host_event(event, Instant::now()).await,
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        warn!("host event stream ended; stopping the engine");
                        break;
                    }
                },
                Some(report) = self.reports_rx.recv() => self.on_report(report, Instant::now()).await,
                Some(report) = self.claims.reports_rx.recv() => self.on_claim_report(report, Instant::now()),
                Some(command) = commands.recv() => self.on_command_async(command, Instant::now()).await,
                Some(()) = heartbeat.next() => {}
                () = timer => {}
            }
            self.report_gauges();
            tick();
        }
        info!(
            pending = self.intents.len(),
            "engine stopped; pending releases stay journaled"
        );
    }
}

#[cfg(test)]
mod tests;
