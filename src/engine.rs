//! The engine: the one place that decides whether an auxiliary IP is released.
//!
//! It applies the trigger rule (docs/design.md, "The trigger rule, clause by clause") and nothing
//! else decides. Its inputs are host events (netlink, translated by `host::watch`),
//! reports from the cloud tasks it spawned, operator commands, and the clock; its
//! outputs are cloud calls, journal records, routing changes and an audit log line per
//! decision (target `audit`, stable field names).
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
//! Time is `tokio::time::Instant`, so tests drive the real engine with a paused clock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cloud::release::{IpOutcome, ReleaseOutcome, ReleasePolicy, release_batch_observed};
use crate::cloud::{Cloud, CloudError, Eni, MAX_IPS_PER_CALL, TaskRef, TaskStatus};
use crate::host::{Addr, HostEvent, HostView, Link, Remover};
use crate::inventory::Inventory;
use crate::journal::{IntentKey, Journal, OutcomeRecord, RecordState};
use crate::net::{Cidr, prefix_mask};
use crate::pause::{Pause, PauseRequest, Paused};

/// Engine settings, from `[release]` and friends.
#[derive(Debug, Clone)]
pub struct Settings {
    pub grace: Duration,
    pub dry_run: bool,
    pub interfaces: Vec<String>,
    pub include: Vec<Cidr>,
    pub exclude: Vec<Cidr>,
    pub ignore_removers: Vec<String>,
    pub burst_limit: usize,
    pub burst_window: Duration,
    pub with_eip: bool,
    pub coalesce: Duration,
    pub not_listed_recheck: Duration,
    /// Backoff for re-checks and retried releases.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// How often parked (refused) releases are tried again.
    pub parked_retry: Duration,
    /// How many times a FAILED task is retried before the release is parked.
    pub max_task_failures: u32,
    /// How long a released IP is remembered, to raise the alarm if it comes back.
    pub remember_released: Duration,
    /// At most this many IPs released per `host_limit_window` on this host (0: no
    /// limit). A blast-radius control: a bug or a bad day elsewhere cannot empty an ENI
    /// faster than this.
    pub host_limit: usize,
    pub host_limit_window: Duration,
}

impl Settings {
    /// The engine settings of a `[release]` section: its keys, plus the engine's own
    /// tuning (backoffs, retry periods), which is not configurable. The one conversion:
    /// a new `[release]` key is a field here and in `ReleaseConfig`.
    pub fn from_release(r: &crate::config::ReleaseConfig) -> Self {
        Self {
            grace: r.grace,
            dry_run: r.dry_run,
            interfaces: r.interfaces.clone(),
            include: r.include.clone(),
            exclude: r.exclude.clone(),
            ignore_removers: r.ignore_removers.clone(),
            burst_limit: r.burst_limit,
            burst_window: r.burst_window,
            with_eip: r.with_eip,
            coalesce: r.coalesce,
            not_listed_recheck: r.not_listed_recheck,
            host_limit: r.host_limit,
            host_limit_window: r.host_limit_window,
            retry_base: Duration::from_millis(500),
            retry_cap: Duration::from_secs(60),
            parked_retry: Duration::from_secs(3600),
            max_task_failures: 3,
            remember_released: Duration::from_secs(3600),
        }
    }
}

/// The config's defaults: every default has one source, `config.rs`.
impl Default for Settings {
    fn default() -> Self {
        Self::from_release(&crate::config::ReleaseConfig::default())
    }
}

/// Why a release did not (or will not) happen: one variant per clause of the rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum Cancel {
    /// Clause 2: the kernel removed it (link deleted, lifetime expired).
    KernelRemoval,
    /// Clause 2: a remover we ignore (a network manager or DHCP client).
    IgnoredRemover(String),
    /// Clause 3: swept away with its subnet's kernel-primary address.
    Collateral,
    /// Clause 4: back on a link within the grace period or at send time.
    Readded,
    /// Clause 4: still present on another link.
    PresentElsewhere,
    /// Clause 5: the link went down, was deleted, moved, or changed MAC.
    LinkDown,
    LinkGone,
    MacChanged,
    /// Clause 5: not a physical ENI link, outside `interfaces`, or not an ENI of ours.
    NotPhysical,
    NotSelectedInterface,
    NotAnEni,
    /// Config filters.
    OutsideInclude,
    Excluded,
    /// A primary IP is never released.
    PrimaryIp,
    /// Clause 7.
    NotListedOnEni,
    EipBound(String),
    EniNotAttached(String),
    /// An operator dropped it.
    Operator,
    /// From an earlier boot and never sent.
    EarlierBoot,
}

impl Cancel {
    /// A short stable key (metrics label, JSON).
    pub fn key(&self) -> &'static str {
        match self {
            Self::KernelRemoval => "kernel_removal",
            Self::IgnoredRemover(_) => "ignored_remover",
            Self::Collateral => "collateral",
            Self::Readded => "readded",
            Self::PresentElsewhere => "present_elsewhere",
            Self::LinkDown => "link_down",
            Self::LinkGone => "link_gone",
            Self::MacChanged => "mac_changed",
            Self::NotPhysical => "not_physical",
            Self::NotSelectedInterface => "not_selected_interface",
            Self::NotAnEni => "not_an_eni",
            Self::OutsideInclude => "outside_include",
            Self::Excluded => "excluded",
            Self::PrimaryIp => "primary_ip",
            Self::NotListedOnEni => "not_listed_on_eni",
            Self::EipBound(_) => "eip_bound",
            Self::EniNotAttached(_) => "eni_not_attached",
            Self::Operator => "operator",
            Self::EarlierBoot => "earlier_boot",
        }
    }

    /// The clause of the trigger rule (docs/design.md) this reason belongs to; 0 for the
    /// config filters, the primary rule and operator actions.
    pub fn clause(&self) -> u8 {
        match self {
            Self::EarlierBoot => 1,
            Self::KernelRemoval | Self::IgnoredRemover(_) => 2,
            Self::Collateral => 3,
            Self::Readded | Self::PresentElsewhere => 4,
            Self::LinkDown
            | Self::LinkGone
            | Self::MacChanged
            | Self::NotPhysical
            | Self::NotSelectedInterface
            | Self::NotAnEni => 5,
            Self::NotListedOnEni | Self::EipBound(_) | Self::EniNotAttached(_) => 7,
            Self::OutsideInclude | Self::Excluded | Self::PrimaryIp | Self::Operator => 0,
        }
    }
}

impl fmt::Display for Cancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KernelRemoval => f.write_str("removed by the kernel, not by a user-space tool"),
            Self::IgnoredRemover(p) => write!(f, "removed by ignored process {p}"),
            Self::Collateral => f.write_str("swept away with its subnet's primary address"),
            Self::Readded => f.write_str("back on the host within the grace period"),
            Self::PresentElsewhere => f.write_str("still present on another link"),
            Self::LinkDown => f.write_str("its link went down"),
            Self::LinkGone => f.write_str("its link was deleted or moved to another namespace"),
            Self::MacChanged => f.write_str("its link changed MAC address"),
            Self::NotPhysical => {
                f.write_str("not a physical link (macvlan/ipvlan/VLAN/bridge child)")
            }
            Self::NotSelectedInterface => f.write_str("link outside release.interfaces"),
            Self::NotAnEni => f.write_str("the link's MAC is not an ENI of this instance"),
            Self::OutsideInclude => f.write_str("IP outside release.include"),
            Self::Excluded => f.write_str("IP inside release.exclude"),
            Self::PrimaryIp => f.write_str("a primary IP is never released"),
            Self::NotListedOnEni => f.write_str("the cloud does not list this IP on the ENI"),
            Self::EipBound(id) => write!(f, "an EIP ({id}) is bound and release.with_eip is false"),
            Self::EniNotAttached(why) => {
                write!(f, "the ENI is not attached to this instance: {why}")
            }
            Self::Operator => f.write_str("cancelled by an operator"),
            Self::EarlierBoot => f.write_str("observed in an earlier boot and never sent"),
        }
    }
}

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
    Waiting { why: String },
    /// The unassign is being sent.
    Sending,
    /// The cloud accepted the unassign; its task is followed.
    Releasing { task_id: String },
    /// The cloud refused; retried on reload (new config or keys) and hourly (CAM role
    /// keys rotate well within that).
    Parked { why: String },
}

/// Why an intent is held for an operator (`enisync release --held` confirms both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum HeldReason {
    /// Clause 6: part of a burst.
    Burst,
    /// Clause 2: nobody knows who removed it (a resync found it, the remover could not
    /// be identified, or enisync itself failed to identify it). The text says why.
    UnknownRemover(String),
}

impl HeldReason {
    /// The audit record's and the metric's key.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Burst => "held_burst",
            Self::UnknownRemover(_) => "held_unknown_remover",
        }
    }
}

/// One pending release.
#[derive(Debug, Clone, Serialize)]
pub struct Intent {
    pub ip: Ipv4Addr,
    /// With `ip`, the intent's journal key: grows with each new intent for `ip`.
    #[serde(skip)]
    pub generation: u64,
    pub link: u32,
    pub link_name: String,
    pub prefix: u8,
    pub mac: Option<crate::cloud::MacAddr>,
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
    not_listed_since: Option<Instant>,
    /// An unassign for it was accepted once: if the cloud stops listing it, it is gone
    /// because of us, not a lagging view.
    pub sent: bool,
    /// The kernel-secondary flag at removal, and the subnet primary then in force:
    /// clause 3 needs both.
    #[serde(skip)]
    secondary: bool,
    #[serde(skip)]
    subnet_primary: Option<Ipv4Addr>,
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

/// A finished decision, kept for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct Finished {
    pub ip: Ipv4Addr,
    pub eni_id: Option<String>,
    pub outcome: Outcome,
}

/// Counters exported as metrics and shown in status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub released: u64,
    pub already_gone: u64,
    pub cancelled: u64,
    pub refused: u64,
    pub held: u64,
    /// Of `held`: removals held because their remover is unknown.
    pub held_unknown_remover: u64,
    pub alarms: u64,
    pub unassign_calls: u64,
    pub dry_run_calls: u64,
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
        };
        snapshot.set_pause(paused);
        snapshot
    }

    fn set_pause(&mut self, paused: Option<&Paused>) {
        self.paused = paused.is_some();
        self.paused_since = paused.map(|p| crate::pause::rfc3339(p.since_unix));
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
    pub primary_ip: Option<Ipv4Addr>,
    /// Aux IPs present on the link now.
    pub aux_ips: Vec<Ipv4Addr>,
    /// Secondary IPs the cloud lists on the ENI (as of the last describe).
    pub cloud_ips: Vec<Ipv4Addr>,
}

/// What `plan` shows: what would be released now, and the routing changes.
#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    /// Releases whose grace period and local checks pass now (the send-time cloud
    /// check still applies).
    pub would_release: Vec<PlannedRelease>,
    /// Releases still in their grace period or waiting.
    pub not_yet: Vec<PlannedRelease>,
    pub held: Vec<Ipv4Addr>,
    pub routing: Vec<String>,
    pub paused: bool,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedRelease {
    pub ip: Ipv4Addr,
    pub eni_id: Option<String>,
    pub link: String,
    pub due_in_ms: u64,
    pub note: String,
}

/// Operator and daemon commands.
#[derive(Debug)]
pub enum Command {
    Snapshot(oneshot::Sender<Snapshot>),
    Plan(oneshot::Sender<PlanView>),
    /// Confirm every held burst.
    ReleaseHeld(oneshot::Sender<usize>),
    Cancel(Ipv4Addr, oneshot::Sender<bool>),
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

/// Policy routing, as the engine drives it. The real one is `host::routes`; unit tests
/// record the calls.
pub trait Router: Send + 'static {
    /// After releases: remove what routing the released IPs left behind and, in manage
    /// mode, bring every ENI's table in line with the IPs present now.
    fn after_release(
        &mut self,
        released: &[Ipv4Addr],
        view: &HostView,
        inventory: &Inventory,
    ) -> impl Future<Output = ()> + Send;

    /// Brings routing in line with the host now (start, link and rule changes).
    fn reconcile(
        &mut self,
        view: &HostView,
        inventory: &Inventory,
    ) -> impl Future<Output = ()> + Send;

    /// What would change if `releasing` were released now and routing reconciled, one
    /// line per change; nothing is changed.
    fn plan(
        &mut self,
        releasing: &[Ipv4Addr],
        view: &HostView,
        inventory: &Inventory,
    ) -> impl Future<Output = Vec<String>> + Send;

    /// A reload changed `release.dry_run`: routing changes are made (false) or only
    /// logged (true) from now on, like releases.
    fn set_dry_run(&mut self, dry_run: bool);
}

/// Reports from spawned cloud tasks.
#[derive(Debug)]
enum Report {
    Inventory(Result<Vec<Eni>, CloudError>),
    Checked {
        eni_id: String,
        ips: Vec<Ipv4Addr>,
        result: Result<Vec<Eni>, CloudError>,
    },
    Sent {
        ips: Vec<Ipv4Addr>,
        eni_id: String,
        task: TaskRef,
        /// The generation of each IP's intent in the call: the report is for that one.
        generations: Arc<HashMap<Ipv4Addr, u64>>,
    },
    Done {
        eni_id: String,
        outcome: ReleaseOutcome,
        generations: Arc<HashMap<Ipv4Addr, u64>>,
    },
    /// A chunk finished and the ENI has nothing more in flight.
    EniIdle(String),
}

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
    static_meta: HashMap<crate::cloud::MacAddr, crate::inventory::MetaFacts>,
    statics: Vec<crate::config::StaticInterface>,
    intents: BTreeMap<Ipv4Addr, Intent>,
    /// Intents whose unassign is out (sending or releasing) and whose address came back
    /// and left again meanwhile: a newer intent took their place in `intents`, and they
    /// are followed here to their end (journal key: address and generation).
    following: BTreeMap<(Ipv4Addr, u64), Intent>,
    /// The latest generation given to an intent of each address.
    generations: HashMap<Ipv4Addr, u64>,
    /// Candidate removals of the last `burst_window`, for clause 6.
    recent_removals: VecDeque<(Instant, Ipv4Addr)>,
    /// ENIs with a check or release in flight: calls for one ENI are serialised.
    busy_enis: HashSet<String>,
    /// When an ENI's due batch goes out (coalescing).
    dispatch_at: HashMap<String, Instant>,
    /// Checked batches waiting for the rest of their burst before the call (see
    /// `on_checked`); their ENIs stay busy meanwhile.
    checked: HashMap<String, CheckedBatch>,
    released: HashMap<Ipv4Addr, Instant>,
    recent: VecDeque<Finished>,
    alarms: VecDeque<String>,
    /// Recent failures (cloud errors, refusals), newest first, for `status`.
    errors: VecDeque<String>,
    /// When each of the recent releases went out, for the per-host limit.
    release_times: VecDeque<Instant>,
    metrics: Option<Arc<crate::ops::metrics::Metrics>>,
    warnings: Vec<String>,
    counters: Counters,
    /// The operator's pause, kept in `state.dir` so that a restart keeps it.
    pause: Pause,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports_rx: mpsc::UnboundedReceiver<Report>,
    inventory_loading: bool,
    /// Link changes can come in storms; describes are rate-limited on our side too.
    last_inventory_refresh: Option<Instant>,
}

/// Host events taken in one go before the engine decides again.
const DRAIN_BATCH: usize = 1024;

/// A coalescing wait ends at most this many `coalesce` periods after the first release
/// of the batch came due.
const COALESCE_CAP_FACTOR: u32 = 10;

/// A checked batch with room waits for more removals of its ENI until none has
/// arrived for this long (see `on_checked`).
const BURST_QUIET: Duration = Duration::from_millis(1);

/// A send-time listing, and the batch it was made for.
struct CheckedBatch {
    ips: Vec<Ipv4Addr>,
    enis: Vec<Eni>,
    at: Instant,
}

/// The shortest interval between inventory refreshes triggered by link changes.
const INVENTORY_REFRESH_MIN: Duration = Duration::from_secs(10);

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
    pub meta: HashMap<crate::cloud::MacAddr, crate::inventory::MetaFacts>,
    pub statics: Vec<crate::config::StaticInterface>,
    pub boot_id: String,
    pub journal: Option<Journal>,
    pub replay: Vec<crate::journal::Record>,
    pub metrics: Option<Arc<crate::ops::metrics::Metrics>>,
    /// Standing warnings found at start, shown by `status`.
    pub warnings: Vec<String>,
    /// The operator's pause, as the start-up left it (read from `state.dir` once).
    pub pause: Pause,
}

const RECENT_KEPT: usize = 64;

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
            generations: HashMap::new(),
            recent_removals: VecDeque::new(),
            busy_enis: HashSet::new(),
            dispatch_at: HashMap::new(),
            checked: HashMap::new(),
            released: HashMap::new(),
            recent: VecDeque::new(),
            alarms: VecDeque::new(),
            errors: VecDeque::new(),
            release_times: VecDeque::new(),
            metrics: start.metrics,
            warnings: start.warnings,
            counters: Counters::default(),
            pause: start.pause,
            reports_tx,
            reports_rx,
            inventory_loading: false,
            last_inventory_refresh: None,
        };
        engine.recover(start.replay, Instant::now());
        engine
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
            if !self.checked.is_empty() {
                self.send_checked(now).await;
            }
            // The floor keeps a wrong deadline from turning into a busy loop.
            let wake = self
                .next_wakeup()
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
                Some(command) = commands.recv() => self.on_command_async(command, Instant::now()).await,
                Some(()) = heartbeat.next() => {}
                () = timer => {}
            }
            self.update_gauges();
            tick();
        }
        info!(
            pending = self.intents.len(),
            "engine stopped; pending releases stay journaled"
        );
    }

    // ===== host events =====

    async fn on_host_event(&mut self, event: HostEvent, now: Instant) {
        // Clause 3 needs the subnet's primary as it was before this removal.
        let subnet_primary = match &event {
            HostEvent::AddrRemoved { addr, .. } => self.subnet_primary(addr),
            _ => None,
        };
        let old_link = match &event {
            HostEvent::LinkChanged(link) => self.view.links.get(&link.index).cloned(),
            _ => None,
        };
        self.view.apply(&event);
        match event {
            HostEvent::AddrRemoved { addr, remover } => {
                self.on_addr_removed(addr, remover, subnet_primary, now)
            }
            HostEvent::LinkRemoved { index } => {
                self.cancel_where(|i| i.link == index, &Cancel::LinkGone)
            }
            // The kernel flushes a table's routes silently when its link goes down or
            // loses its last address: every one of these may need a repair.
            HostEvent::AddrAdded(addr) => {
                let on_eni = self.link_has_eni(addr.link);
                self.on_addr_added(addr);
                // Policy routing covers ENI links only; container churn on bridges and
                // veths must not cost a rule and route dump per address.
                if on_eni {
                    self.router.reconcile(&self.view, &self.inventory).await;
                }
            }
            HostEvent::LinkChanged(link) => {
                self.on_link_changed(old_link, &link);
                self.router.reconcile(&self.view, &self.inventory).await;
            }
            HostEvent::RoutingChanged | HostEvent::Resynced => {
                self.router.reconcile(&self.view, &self.inventory).await;
            }
        }
    }

    /// The kernel-primary address of `addr`'s subnet on its link, while still present.
    fn subnet_primary(&self, addr: &Addr) -> Option<Ipv4Addr> {
        let mask = prefix_mask(addr.prefix);
        self.view
            .addrs_on(addr.link)
            .find(|a| {
                !a.secondary
                    && a.prefix == addr.prefix
                    && u32::from(a.ip) & mask == u32::from(addr.ip) & mask
            })
            .map(|a| a.ip)
    }

    fn on_addr_removed(
        &mut self,
        addr: Addr,
        remover: Option<Remover>,
        subnet_primary: Option<Ipv4Addr>,
        now: Instant,
    ) {
        // Clause 3, seen from the primary's side: with promote_secondaries off the kernel
        // deletes the subnet's secondaries (same requester) just before the primary.
        if !addr.secondary {
            let swept: Vec<Ipv4Addr> = self
                .intents
                .values()
                .filter(|i| {
                    i.link == addr.link
                        && i.secondary
                        && i.subnet_primary == Some(addr.ip)
                        && now.duration_since(i.observed_at) <= self.settings.burst_window
                        && i.remover.as_ref().map(|r| r.port_id)
                            == remover.as_ref().map(|r| r.port_id)
                        && matches!(i.phase, Phase::Pending | Phase::Held)
                })
                .map(|i| i.ip)
                .collect();
            for ip in swept {
                self.cancel(ip, Cancel::Collateral);
            }
        }
        let link = self.view.links.get(&addr.link).cloned();
        if let Err(cancel) = self.admissible(&addr, link.as_ref(), remover.as_ref()) {
            self.audit_skip(addr.ip, link.as_ref(), remover.as_ref(), &cancel);
            return;
        }
        let Some(link) = link else { return };
        if self.view.has_ip(addr.ip) {
            self.audit_skip(
                addr.ip,
                Some(&link),
                remover.as_ref(),
                &Cancel::PresentElsewhere,
            );
            return;
        }
        let eni_id = link
            .mac
            .and_then(|m| self.inventory.by_mac(m))
            .map(|r| r.eni_id.clone());
        let generation = self.next_generation(addr.ip);
        let unknown = unknown_remover(remover.as_ref());
        let intent = Intent {
            ip: addr.ip,
            generation,
            link: addr.link,
            link_name: link.name.clone(),
            prefix: addr.prefix,
            mac: link.mac,
            eni_id: eni_id.clone(),
            remover: remover.clone(),
            observed_at: now,
            observed_unix_ms: unix_ms(),
            due: now + self.settings.grace,
            due_in_ms: 0,
            phase: if unknown.is_some() {
                Phase::Held
            } else {
                Phase::Pending
            },
            held_reason: unknown.clone().map(HeldReason::UnknownRemover),
            attempts: 0,
            task_failures: 0,
            not_listed_since: None,
            sent: false,
            secondary: addr.secondary,
            subnet_primary: subnet_primary.filter(|p| *p != addr.ip),
        };
        self.journal(
            IntentKey::release(addr.ip, generation),
            RecordState::Observed {
                link: link.name.clone(),
                mac: link.mac.map(|m| m.to_string()),
                eni_id: eni_id.clone(),
                remover: remover.as_ref().map(Into::into),
                held: unknown.is_some(),
                sending: false,
            },
        );
        if let Some(why) = &unknown {
            self.counters.held += 1;
            self.counters.held_unknown_remover += 1;
            warn!(
                target: "audit",
                decision = "held",
                reason = "held_unknown_remover",
                ip = %addr.ip,
                link = %link.name,
                eni = eni_id.as_deref().unwrap_or("?"),
                remover = describe_optional_remover(remover.as_ref()).as_str(),
                why = %why,
                "aux IP removed by an unknown remover; held until an operator confirms \
                 (enisync release --held) or it comes back"
            );
        } else {
            info!(
                target: "audit",
                decision = "pending",
                ip = %addr.ip,
                link = %link.name,
                eni = eni_id.as_deref().unwrap_or("?"),
                remover = describe_optional_remover(remover.as_ref()).as_str(),
                grace_ms = crate::millis(self.settings.grace),
                "aux IP removed; release pending its grace period"
            );
        }
        self.make_room(addr.ip, generation);
        self.intents.insert(addr.ip, intent);
        self.count_for_burst(addr.ip, now);
    }

    /// Clauses that can be decided the moment a removal is seen.
    fn admissible(
        &self,
        addr: &Addr,
        link: Option<&Link>,
        remover: Option<&Remover>,
    ) -> Result<(), Cancel> {
        let Some(link) = link else {
            return Err(Cancel::LinkGone);
        };
        // A removal whose remover is unknown (a resync found it, or the remover could
        // not be identified) passes here and is held by the caller (clause 2): it may
        // be a network manager's flush. `ignore_removers` is matched against every name
        // known, the remover's and its ancestors': `dhclient-script` runs `ip`, and
        // the `ip` it runs must not count as a user's.
        if let Some(remover) = remover {
            if remover.is_kernel() {
                return Err(Cancel::KernelRemoval);
            }
            if remover.names().any(|p| {
                self.settings
                    .ignore_removers
                    .iter()
                    .any(|n| process_matches(p, n))
            }) {
                return Err(Cancel::IgnoredRemover(remover.chain()));
            }
        }
        if !link.is_physical() {
            return Err(Cancel::NotPhysical);
        }
        if !self.settings.interfaces.is_empty()
            && !self
                .settings
                .interfaces
                .iter()
                .any(|g| glob_match(g, &link.name))
        {
            return Err(Cancel::NotSelectedInterface);
        }
        if !self.settings.include.is_empty()
            && !self.settings.include.iter().any(|c| c.contains(addr.ip))
        {
            return Err(Cancel::OutsideInclude);
        }
        if self.settings.exclude.iter().any(|c| c.contains(addr.ip)) {
            return Err(Cancel::Excluded);
        }
        if !link.up {
            return Err(Cancel::LinkDown);
        }
        if self.inventory.is_primary_ip(addr.ip) {
            return Err(Cancel::PrimaryIp);
        }
        if let Some(mac) = link.mac
            && self.inventory.complete
            && self.inventory.by_mac(mac).is_none()
        {
            return Err(Cancel::NotAnEni);
        }
        Ok(())
    }

    /// Clause 6: too many aux IPs leaving at once are held for an operator.
    fn count_for_burst(&mut self, ip: Ipv4Addr, now: Instant) {
        self.recent_removals.push_back((now, ip));
        while let Some((t, _)) = self.recent_removals.front() {
            if now.duration_since(*t) > self.settings.burst_window {
                self.recent_removals.pop_front();
            } else {
                break;
            }
        }
        if self.recent_removals.len() <= self.settings.burst_limit {
            return;
        }
        let mut newly_held = Vec::new();
        for (_, ip) in &self.recent_removals {
            if let Some(intent) = self.intents.get_mut(ip)
                && intent.phase == Phase::Pending
            {
                intent.phase = Phase::Held;
                intent.held_reason = Some(HeldReason::Burst);
                newly_held.push(*ip);
            }
        }
        for ip in &newly_held {
            self.journal_observed(*ip, true);
        }
        if !newly_held.is_empty() {
            self.counters.held += newly_held.len() as u64;
            let total = self
                .intents
                .values()
                .filter(|i| i.phase == Phase::Held)
                .count();
            warn!(
                target: "audit",
                decision = "held",
                reason = "held_burst",
                held = total,
                burst_limit = self.settings.burst_limit,
                ips = ?newly_held,
                "burst: more aux IPs left within the burst window than release.burst_limit; \
                 held until an operator confirms (enisync release --held) or they come back"
            );
        }
    }

    fn on_addr_added(&mut self, addr: Addr) {
        let followed = self
            .following
            .range((addr.ip, 0)..=(addr.ip, u64::MAX))
            .next()
            .is_some();
        if followed {
            self.alarm(
                addr.ip,
                "came back on the host while its release is in flight",
            );
        }
        if self.intents.contains_key(&addr.ip) {
            let phase = self.intents.get(&addr.ip).map(|i| i.phase.clone());
            if matches!(phase, Some(Phase::Sending | Phase::Releasing { .. })) {
                self.alarm(
                    addr.ip,
                    "came back on the host while its release is in flight",
                );
            } else {
                self.cancel(addr.ip, Cancel::Readded);
            }
        } else if !followed && self.released.contains_key(&addr.ip) {
            self.alarm(addr.ip, "came back on the host after the VPC released it");
        }
    }

    fn on_link_changed(&mut self, old: Option<Link>, link: &Link) {
        if !link.up {
            self.cancel_where(|i| i.link == link.index, &Cancel::LinkDown);
        }
        if let Some(old) = old
            && old.mac != link.mac
        {
            self.cancel_where(|i| i.link == link.index, &Cancel::MacChanged);
        }
        let known = link.mac.is_some_and(|m| self.inventory.by_mac(m).is_some());
        if link.is_physical() && !known {
            // A new ENI may have been attached: refresh the map.
            self.refresh_inventory();
        }
    }

    // ===== dispatch =====

    /// The next instant the loop must look at the intents. Intents of a busy ENI are
    /// left out (the end of its call wakes the loop), and so are those of an ENI whose
    /// batch is being coalesced (its `dispatch_at` stands for them).
    fn next_wakeup(&self) -> Option<Instant> {
        let due = self
            .intents
            .values()
            .filter(|i| match i.phase {
                Phase::Pending | Phase::Waiting { .. } => !i.eni_id.as_ref().is_some_and(|e| {
                    self.busy_enis.contains(e) || self.dispatch_at.contains_key(e)
                }),
                Phase::Parked { .. } => true,
                _ => false,
            })
            .map(|i| i.due);
        let coalescing = self
            .dispatch_at
            .iter()
            .filter(|(eni, _)| !self.busy_enis.contains(*eni))
            .map(|(_, at)| *at);
        let checked = self
            .checked
            .iter()
            .map(|(eni, batch)| self.checked_deadline(eni, batch));
        due.chain(coalescing).chain(checked).min()
    }

    /// Sends the checks of every ENI whose batch is due. A due release waits (briefly,
    /// see below) for other removals of its ENI about to come due; an isolated one goes
    /// out at once. Removals that come due while the ENI is busy join the next batch.
    fn dispatch_due(&mut self, now: Instant) {
        if self.pause.in_force().is_some() {
            return;
        }
        // Local checks at the end of the grace period.
        let due: Vec<Ipv4Addr> = self
            .intents
            .values()
            .filter(|i| matches!(i.phase, Phase::Pending | Phase::Waiting { .. }) && i.due <= now)
            .map(|i| i.ip)
            .collect();
        for ip in due {
            if let Err(cancel) = self.still_allowed_locally(ip) {
                self.cancel(ip, cancel);
            }
        }
        let mut by_eni: BTreeMap<String, Vec<(Ipv4Addr, Instant)>> = BTreeMap::new();
        let mut unmapped = Vec::new();
        for intent in self.intents.values() {
            if !matches!(intent.phase, Phase::Pending | Phase::Waiting { .. }) {
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
                self.wait(ip, now, "the link's ENI is not known yet".into());
            }
            self.refresh_inventory();
        }
        let mut to_check = Vec::new();
        for (eni, intents) in by_eni {
            if self.busy_enis.contains(&eni) {
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
                self.dispatch_at.insert(eni, next.min(cap));
                continue;
            }
            self.dispatch_at.remove(&eni);
            let ips: Vec<Ipv4Addr> = intents
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

    /// Whether the link's MAC belongs to one of this instance's ENIs.
    fn link_has_eni(&self, index: u32) -> bool {
        self.view
            .links
            .get(&index)
            .and_then(|link| link.mac)
            .is_some_and(|mac| self.inventory.by_mac(mac).is_some())
    }

    /// The ENI an intent belongs to: the one it was observed on, else its link's MAC's.
    fn eni_of(&self, intent: &Intent) -> Option<String> {
        intent.eni_id.clone().or_else(|| {
            intent
                .mac
                .and_then(|m| self.inventory.by_mac(m))
                .map(|r| r.eni_id.clone())
        })
    }

    /// Clauses 4 and 5 against the host now.
    fn still_allowed_locally(&self, ip: Ipv4Addr) -> Result<(), Cancel> {
        let Some(intent) = self.intents.get(&ip) else {
            return Ok(());
        };
        if self.view.has_ip(ip) {
            return Err(Cancel::Readded);
        }
        let Some(link) = self.view.links.get(&intent.link) else {
            return Err(Cancel::LinkGone);
        };
        if !link.up {
            return Err(Cancel::LinkDown);
        }
        if link.mac != intent.mac {
            return Err(Cancel::MacChanged);
        }
        if self.inventory.is_primary_ip(ip) {
            return Err(Cancel::PrimaryIp);
        }
        if let Some(mac) = link.mac
            && self.inventory.complete
            && self.inventory.by_mac(mac).is_none()
        {
            return Err(Cancel::NotAnEni);
        }
        Ok(())
    }

    fn start_check(&mut self, eni_id: String, ips: Vec<Ipv4Addr>) {
        for ip in &ips {
            if let Some(i) = self.intents.get_mut(ip) {
                i.phase = Phase::Checking;
                i.eni_id = Some(eni_id.clone());
            }
        }
        self.busy_enis.insert(eni_id.clone());
        let cloud = Arc::clone(&self.cloud);
        let tx = self.reports_tx.clone();
        tokio::spawn(async move {
            let result = cloud.list_enis().await;
            let _ = tx.send(Report::Checked {
                eni_id,
                ips,
                result,
            });
        });
    }

    // ===== reports =====

    async fn on_report(&mut self, report: Report, now: Instant) {
        match report {
            Report::Inventory(result) => self.on_inventory(result),
            Report::Checked {
                eni_id,
                ips,
                result,
            } => self.on_checked(eni_id, ips, result, now).await,
            Report::Sent {
                ips,
                eni_id,
                task,
                generations,
            } => {
                for ip in &ips {
                    let generation = self.generation_in(&generations, *ip);
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
                    "UnassignPrivateIpAddresses accepted; following the task"
                );
            }
            Report::Done {
                eni_id,
                outcome,
                generations,
            } => self.on_done(eni_id, outcome, &generations, now).await,
            Report::EniIdle(eni_id) => {
                self.busy_enis.remove(&eni_id);
            }
        }
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

    fn refresh_inventory(&mut self) {
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
            let _ = tx.send(Report::Inventory(cloud.list_enis().await));
        });
    }

    /// The send-time listing has come. The call goes out now, unless its batch has
    /// room and a removal of its ENI arrived less than `BURST_QUIET` ago: then the
    /// burst that removal belongs to is still reaching us (with a zero grace period the
    /// first removal of a burst is due, and checked, before the rest has arrived), and
    /// the batch waits for it, at most `coalesce` after the listing. The listing stays
    /// the send-time check: that is as fresh as the coalescing the rule already allows.
    async fn on_checked(
        &mut self,
        eni_id: String,
        ips: Vec<Ipv4Addr>,
        result: Result<Vec<Eni>, CloudError>,
        now: Instant,
    ) {
        let enis = match result {
            Ok(enis) => enis,
            Err(e) => {
                self.busy_enis.remove(&eni_id);
                for ip in ips {
                    self.wait(ip, now, format!("describe failed: {}", e.code));
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
        self.checked
            .insert(eni_id, CheckedBatch { ips, enis, at: now });
        self.send_checked(now).await;
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
                    || (matches!(i.phase, Phase::Pending | Phase::Waiting { .. })
                        && i.due <= now
                        && self.eni_of(i).as_deref() == Some(eni_id))
            })
            .count();
        candidates < MAX_IPS_PER_CALL
    }

    /// Sends every checked batch that is full or whose burst is over.
    async fn send_checked(&mut self, now: Instant) {
        let ready: Vec<String> = self
            .checked
            .iter()
            .filter(|(eni, batch)| {
                !self.checked_has_room(eni, batch, now) || self.checked_deadline(eni, batch) <= now
            })
            .map(|(eni, _)| eni.clone())
            .collect();
        for eni_id in ready {
            if let Some(batch) = self.checked.remove(&eni_id) {
                self.send_batch(eni_id, batch.ips, &batch.enis, now).await;
            }
        }
    }

    /// Clause 7, then clause 4 and 5 once more, then the call.
    async fn send_batch(&mut self, eni_id: String, ips: Vec<Ipv4Addr>, enis: &[Eni], now: Instant) {
        let eni = enis.iter().find(|e| e.id == eni_id);
        // Removals of this ENI that came due while the describe was in flight join the
        // batch: the listing that just arrived is as fresh for them as for the rest (a
        // burst keeps arriving for a few milliseconds after its first removal is due).
        let mut ips = ips;
        let joining: Vec<Ipv4Addr> = self
            .intents
            .values()
            .filter(|i| {
                matches!(i.phase, Phase::Pending | Phase::Waiting { .. })
                    && i.due <= now
                    && !ips.contains(&i.ip)
                    && self.eni_of(i).as_deref() == Some(eni_id.as_str())
            })
            .map(|i| i.ip)
            .collect();
        for ip in &joining {
            match self.still_allowed_locally(*ip) {
                Ok(()) => ips.push(*ip),
                Err(c) => self.cancel(*ip, c),
            }
        }
        let mut send = Vec::new();
        let mut gone = Vec::new();
        for ip in ips {
            if !self.intents.contains_key(&ip) {
                continue; // cancelled meanwhile
            }
            match self.cloud_verdict(eni, ip, now) {
                Verdict::Send => match self.still_allowed_locally(ip) {
                    Ok(()) => send.push(ip),
                    Err(c) => self.cancel(ip, c),
                },
                Verdict::Wait(why) => self.wait(ip, now, why),
                Verdict::Cancel(c) => self.cancel(ip, c),
                Verdict::Gone => {
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
            let gone_ips: Vec<Ipv4Addr> = gone.iter().map(|(ip, _)| *ip).collect();
            for ip in &gone_ips {
                info!(target: "audit", decision = "released", ip = %ip, eni = %eni_id, ips = ?gone_ips, "IPs no longer listed after our unassign: returned to the VPC: {ip}");
            }
            self.route_fix_then_journal(&gone, &Outcome::AlreadyGone)
                .await;
        }
        let mut send = self.within_host_limit(send, now);
        if send.is_empty() {
            self.busy_enis.remove(&eni_id);
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
        let vpc_id = eni.map(|e| e.vpc_id.clone()).unwrap_or_default();
        for ip in &send {
            self.audit_allowed(*ip, eni, now);
        }
        if self.settings.dry_run {
            for chunk in send.chunks(MAX_IPS_PER_CALL) {
                self.counters.dry_run_calls += 1;
                info!(
                    target: "audit",
                    decision = "dry_run",
                    eni = %eni_id,
                    vpc = %vpc_id,
                    ips = ?chunk,
                    "dry run: would call UnassignPrivateIpAddresses(NetworkInterfaceId={eni_id}, PrivateIpAddresses={chunk:?})"
                );
                for ip in chunk {
                    self.finish(*ip, Outcome::DryRun);
                }
            }
            self.busy_enis.remove(&eni_id);
            return;
        }
        for ip in &send {
            if let Some(i) = self.intents.get_mut(ip) {
                i.phase = Phase::Sending;
                // From here the cloud may take the call even if its answer is lost: an
                // IP it stops listing is then gone because of us.
                i.sent = true;
            }
            // Before the call: a crash or a lost answer from here on may leave the IP
            // released without our hearing of it.
            self.journal_observed_as(*ip, false, true);
        }
        let cloud = Arc::clone(&self.cloud);
        let tx = self.reports_tx.clone();
        let policy = ReleasePolicy {
            max_task_failures: self.settings.max_task_failures,
        };
        let generations = Arc::new(
            send.iter()
                .filter_map(|ip| self.intents.get(ip).map(|i| (*ip, i.generation)))
                .collect(),
        );
        tokio::spawn(release_task(
            cloud,
            tx,
            Call {
                eni_id,
                vpc_id,
                ips: send,
                generations,
            },
            policy,
        ));
    }

    fn cloud_verdict(&mut self, eni: Option<&Eni>, ip: Ipv4Addr, now: Instant) -> Verdict {
        let Some(eni) = eni else {
            return self.not_listed(ip, now, "the ENI is not listed for this instance");
        };
        match &eni.attachment {
            Some(a)
                if a.instance_id == self.inventory.instance_id
                    || self.inventory.instance_id.is_empty() => {}
            Some(a) => {
                return Verdict::Cancel(Cancel::EniNotAttached(format!(
                    "attached to {}",
                    a.instance_id
                )));
            }
            None => return Verdict::Cancel(Cancel::EniNotAttached("detached".into())),
        }
        if matches!(eni.state.as_str(), "DETACHING" | "DELETING") {
            return Verdict::Cancel(Cancel::EniNotAttached(eni.state.to_lowercase()));
        }
        let Some(entry) = eni.ip(ip) else {
            return self.not_listed(ip, now, "not listed on the ENI");
        };
        if let Some(i) = self.intents.get_mut(&ip) {
            i.not_listed_since = None;
        }
        if entry.primary {
            return Verdict::Cancel(Cancel::PrimaryIp);
        }
        if let Some(eip) = &entry.eip
            && !self.settings.with_eip
        {
            return Verdict::Cancel(Cancel::EipBound(eip.clone()));
        }
        match entry.state.as_str() {
            "AVAILABLE" => Verdict::Send,
            other => Verdict::Wait(format!("IP state {other}")),
        }
    }

    /// The per-host limit: at most `host_limit` IPs per `host_limit_window`. The rest
    /// wait for the window to move on.
    fn within_host_limit(&mut self, mut send: Vec<Ipv4Addr>, now: Instant) -> Vec<Ipv4Addr> {
        if self.settings.host_limit == 0 {
            return send;
        }
        let window = self.settings.host_limit_window;
        while self
            .release_times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            self.release_times.pop_front();
        }
        let room = self
            .settings
            .host_limit
            .saturating_sub(self.release_times.len());
        let over = send.split_off(room.min(send.len()));
        self.release_times
            .extend(std::iter::repeat_n(now, send.len()));
        if !over.is_empty() {
            // The window frees its first slot when its oldest release ages out.
            let free_at = self.release_times.front().map_or(now, |t| *t + window);
            warn!(
                target: "audit",
                decision = "host_limit",
                limit = self.settings.host_limit,
                window_ms = crate::millis(window),
                ips = ?over,
                "per-host release limit reached; the rest wait for the window"
            );
            for ip in over {
                if let Some(m) = &self.metrics {
                    m.host_limit_waits.inc();
                }
                if let Some(i) = self.intents.get_mut(&ip) {
                    i.phase = Phase::Waiting {
                        why: "per-host release limit reached".into(),
                    };
                    i.due = free_at.max(now + Duration::from_millis(1));
                }
            }
        }
        send
    }

    /// The audit record of a release the rule allows: each clause and what held it.
    fn audit_allowed(&self, ip: Ipv4Addr, eni: Option<&Eni>, now: Instant) {
        let Some(i) = self.intents.get(&ip) else {
            return;
        };
        let entry = eni.and_then(|e| e.ip(ip));
        info!(
            target: "audit",
            decision = "allowed",
            ip = %ip,
            link = %i.link_name,
            eni = i.eni_id.as_deref().unwrap_or("?"),
            removed_unix_ms = i.observed_unix_ms,
            remover = describe_optional_remover(i.remover.as_ref()).as_str(),
            grace_ms = crate::millis(self.settings.grace),
            absent_ms = crate::millis(now.duration_since(i.observed_at)),
            c1_observed = "seen while running, this boot",
            c2_remover = "user space, not ignored",
            c3_collateral = "no",
            c4_absent = "on no link since the removal",
            c5_link = "physical ENI link, up, selected",
            c6_burst = "no",
            c7_cloud = %format!(
                "secondary, {}, attached to this instance, EIP {}",
                entry.map_or("?", |e| e.state.as_str()),
                entry.and_then(|e| e.eip.as_deref()).unwrap_or("none")
            ),
            "every clause of the trigger rule holds; releasing"
        );
    }

    /// The cloud's view lags: an IP it does not list is re-checked with backoff for
    /// `not_listed_recheck` before the release is cancelled.
    fn not_listed(&mut self, ip: Ipv4Addr, now: Instant, why: &str) -> Verdict {
        let limit = self.settings.not_listed_recheck;
        let Some(intent) = self.intents.get_mut(&ip) else {
            return Verdict::Cancel(Cancel::NotListedOnEni);
        };
        if intent.sent {
            return Verdict::Gone;
        }
        let since = *intent.not_listed_since.get_or_insert(now);
        if now.duration_since(since) >= limit {
            Verdict::Cancel(Cancel::NotListedOnEni)
        } else {
            Verdict::Wait(why.to_owned())
        }
    }

    async fn on_done(
        &mut self,
        eni_id: String,
        outcome: ReleaseOutcome,
        generations: &HashMap<Ipv4Addr, u64>,
        now: Instant,
    ) {
        let task = outcome.tasks.last();
        let task_id = task.map(|t| t.task_id.clone()).unwrap_or_default();
        let request_id = task.and_then(|t| t.request_id.clone()).unwrap_or_default();
        let mut done = Vec::new();
        let keys: Vec<(Ipv4Addr, u64)> = outcome
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
                IpOutcome::RetryLater { reason } => {
                    if self.unfollow(followed) {
                        self.wait(ip, now, reason);
                    }
                }
                IpOutcome::Refused { reason } => {
                    if self.unfollow(followed) {
                        self.counters.refused += 1;
                        self.park(ip, now, reason);
                    }
                }
            }
        }
        if done.is_empty() {
            return;
        }
        let ips: Vec<Ipv4Addr> = done.iter().map(|(ip, _, _)| *ip).collect();
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
                    outcome: outcome_record(&outcome),
                },
            );
        }
    }

    /// Ends the intent a call's outcome is for: `followed` if a newer intent had taken
    /// its place, else the one in `intents` (if it is that generation). Not journaled.
    fn finish_intent(
        &mut self,
        ip: Ipv4Addr,
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
    fn unfollow(&mut self, followed: Option<Intent>) -> bool {
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

    /// Fixes the routing of `gone` (released), then journals them as finished.
    async fn route_fix_then_journal(&mut self, gone: &[(Ipv4Addr, u64)], outcome: &Outcome) {
        let ips: Vec<Ipv4Addr> = gone.iter().map(|(ip, _)| *ip).collect();
        self.router
            .after_release(&ips, &self.view, &self.inventory)
            .await;
        for (ip, generation) in gone {
            self.journal(
                IntentKey::release(*ip, *generation),
                RecordState::Finished {
                    outcome: outcome_record(outcome),
                },
            );
        }
    }

    /// The next generation for a new intent of `ip`.
    fn next_generation(&mut self, ip: Ipv4Addr) -> u64 {
        let generation = self.generations.entry(ip).or_default();
        *generation += 1;
        *generation
    }

    /// The generation a call's report names for `ip` (the current intent's if absent).
    fn generation_in(&self, generations: &HashMap<Ipv4Addr, u64>, ip: Ipv4Addr) -> u64 {
        generations
            .get(&ip)
            .copied()
            .or_else(|| self.intents.get(&ip).map(|i| i.generation))
            .unwrap_or_default()
    }

    /// Intent `generation` of `ip`, wherever it is.
    fn intent_at(&mut self, ip: Ipv4Addr, generation: u64) -> Option<&mut Intent> {
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

    fn intent_ref(&self, ip: Ipv4Addr, generation: u64) -> Option<&Intent> {
        self.intents
            .get(&ip)
            .filter(|i| i.generation == generation)
            .or_else(|| self.following.get(&(ip, generation)))
    }

    /// Before intent `generation` of `ip` goes into `intents`: the intent there now, if
    /// any, makes room. One whose unassign is out is followed to its end in `following`;
    /// any other is journaled as superseded (it was never sent).
    fn make_room(&mut self, ip: Ipv4Addr, generation: u64) {
        let Some(old) = self.intents.remove(&ip) else {
            return;
        };
        if old.generation == generation {
            self.intents.insert(ip, old);
            return;
        }
        if matches!(old.phase, Phase::Sending | Phase::Releasing { .. }) {
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

    // ===== commands =====

    async fn on_command_async(&mut self, command: Command, now: Instant) {
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
                    match self.still_allowed_locally(i.ip) {
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
        let ips: Vec<Ipv4Addr> = would_release.iter().map(|p| p.ip).collect();
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
                let held: Vec<Ipv4Addr> = self
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
                self.recent_removals.clear();
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
                let primary = record.primary_ip;
                Some(LinkStatus {
                    name: link.name.clone(),
                    index: link.index,
                    mac: link.mac.map(|m| m.to_string()),
                    up: link.up,
                    eni_id: Some(record.eni_id.clone()),
                    vpc_id: Some(record.vpc_id.clone()),
                    primary_ip: primary,
                    aux_ips: self
                        .view
                        .addrs_on(link.index)
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
        };
        snapshot.set_pause(self.pause.in_force());
        snapshot
    }

    /// Updates the gauges from the intents (once per loop turn; the map is small).
    fn update_gauges(&self) {
        let Some(m) = &self.metrics else { return };
        let count = |f: &dyn Fn(&Phase) -> bool| {
            let all = self.intents.values().chain(self.following.values());
            i64::try_from(all.filter(|i| f(&i.phase)).count()).unwrap_or(i64::MAX)
        };
        m.pending
            .set(count(&|p| !matches!(p, Phase::Held | Phase::Parked { .. })));
        m.held.set(count(&|p| matches!(p, Phase::Held)));
        m.held_unknown_remover.set(
            i64::try_from(
                self.intents
                    .values()
                    .filter(|i| matches!(i.held_reason, Some(HeldReason::UnknownRemover(_))))
                    .count(),
            )
            .unwrap_or(i64::MAX),
        );
        m.parked.set(count(&|p| matches!(p, Phase::Parked { .. })));
        m.paused.set(i64::from(self.pause.in_force().is_some()));
        if let Some(j) = &self.journal {
            m.journal_records
                .set(i64::try_from(j.record_count()).unwrap_or(i64::MAX));
        }
    }

    fn record_error(&mut self, text: String) {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.errors.push_front(format!("@{stamp} {text}"));
        self.errors.truncate(RECENT_KEPT);
    }

    // ===== state changes =====

    fn wait(&mut self, ip: Ipv4Addr, now: Instant, why: String) {
        if why.contains("failed") || why.contains(':') {
            self.record_error(format!("{ip}: {why}"));
        }
        let (base, cap) = (self.settings.retry_base, self.settings.retry_cap);
        if let Some(i) = self.intents.get_mut(&ip) {
            i.attempts += 1;
            i.due = now + backoff(base, cap, i.attempts);
            info!(target: "audit", decision = "wait", ip = %ip, why = %why, attempt = i.attempts, "release postponed");
            i.phase = Phase::Waiting { why };
        }
    }

    fn park(&mut self, ip: Ipv4Addr, now: Instant, why: String) {
        if let Some(m) = &self.metrics {
            m.release("refused", refusal_key(&why));
        }
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
    fn unpark(&mut self, now: Instant, all: bool) {
        for i in self.intents.values_mut() {
            if matches!(i.phase, Phase::Parked { .. }) && (all || i.due <= now) {
                i.phase = Phase::Waiting {
                    why: "retrying a parked release".into(),
                };
                i.due = now;
                i.task_failures = 0;
            }
        }
    }

    fn cancel_where(&mut self, pred: impl Fn(&Intent) -> bool, cancel: &Cancel) {
        let ips: Vec<Ipv4Addr> = self
            .intents
            .values()
            .filter(|i| pred(i) && !matches!(i.phase, Phase::Sending | Phase::Releasing { .. }))
            .map(|i| i.ip)
            .collect();
        for ip in ips {
            self.cancel(ip, cancel.clone());
        }
    }

    fn cancel(&mut self, ip: Ipv4Addr, cancel: Cancel) {
        if let Some(i) = self.intents.get(&ip) {
            if matches!(i.phase, Phase::Sending | Phase::Releasing { .. }) {
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

    fn finish(&mut self, ip: Ipv4Addr, outcome: Outcome) {
        let generation = self.intents.get(&ip).map_or(0, |i| i.generation);
        self.journal(
            IntentKey::release(ip, generation),
            RecordState::Finished {
                outcome: outcome_record(&outcome),
            },
        );
        self.finish_unjournaled(ip, outcome);
    }

    /// [`Self::finish`] without the journal record: for releases whose routing is still
    /// to be fixed, journaled as finished only once it is (a crash in between replays the
    /// journaled task, which ends in the same route fix).
    fn finish_unjournaled(&mut self, ip: Ipv4Addr, outcome: Outcome) {
        let intent = self.intents.remove(&ip);
        self.record_finished(ip, intent, outcome);
    }

    /// Metrics and `status` for an intent that ended (already out of the maps).
    fn record_finished(&mut self, ip: Ipv4Addr, intent: Option<Intent>, outcome: Outcome) {
        if let Some(m) = &self.metrics {
            match &outcome {
                Outcome::Released { .. } => m.release("released", ""),
                Outcome::AlreadyGone => m.release("already_gone", ""),
                Outcome::Cancelled(c) => m.release("cancelled", c.key()),
                Outcome::DryRun => m.release("dry_run", ""),
            }
        }
        self.recent.push_front(Finished {
            ip,
            eni_id: intent.and_then(|i| i.eni_id),
            outcome,
        });
        self.recent.truncate(RECENT_KEPT);
    }

    fn alarm(&mut self, ip: Ipv4Addr, what: &str) {
        self.counters.alarms += 1;
        if let Some(m) = &self.metrics {
            m.alarms.inc();
        }
        let text = format!("{ip} {what}: the host uses an address the VPC no longer routes to it");
        warn!(target: "audit", decision = "alarm", ip = %ip, "{text}");
        self.alarms.push_front(text);
        self.alarms.truncate(RECENT_KEPT);
    }

    fn audit_skip(
        &self,
        ip: Ipv4Addr,
        link: Option<&Link>,
        remover: Option<&Remover>,
        cancel: &Cancel,
    ) {
        let link = link.map_or("?", |l| l.name.as_str());
        let remover = describe_optional_remover(remover);
        // Removals on links that carry no ENI of ours (container veths, bridges, other
        // NICs) are not decisions about ENI IPs: on a busy container host they would
        // flood the journal, so they are logged at debug level.
        if matches!(
            cancel,
            Cancel::NotPhysical | Cancel::NotAnEni | Cancel::NotSelectedInterface
        ) {
            debug!(target: "audit", decision = "not_released", ip = %ip, link, remover, reason = %cancel, "address removal will not be released");
        } else {
            info!(target: "audit", decision = "not_released", ip = %ip, link, remover, reason = %cancel, "address removal will not be released");
        }
    }

    /// Re-journals an intent's observation, with its held flag.
    fn journal_observed(&mut self, ip: Ipv4Addr, held: bool) {
        self.journal_observed_as(ip, held, false);
    }

    /// Re-journals an intent's observation; `sending`: its unassign is about to go out.
    fn journal_observed_as(&mut self, ip: Ipv4Addr, held: bool, sending: bool) {
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
        };
        let key = IntentKey::release(ip, i.generation);
        self.journal(key, state);
    }

    fn journal(&mut self, key: IntentKey, state: RecordState) {
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
    fn recover(&mut self, records: Vec<crate::journal::Record>, now: Instant) {
        // Generations go on above every one in the journal.
        for rec in &records {
            if let std::net::IpAddr::V4(ip) = rec.addr {
                let latest = self.generations.entry(ip).or_default();
                *latest = (*latest).max(rec.generation);
            }
        }
        // In key order: for one address, the older intent first (an in-flight one is
        // then moved to `following` by the newer one's `make_room`).
        for rec in records {
            let key = rec.key();
            let std::net::IpAddr::V4(ip) = rec.addr else {
                warn!(intent = %key, "journaled intent for an IPv6 address: kept, not acted on");
                continue;
            };
            let cancelled = |cancel: Cancel| RecordState::Finished {
                outcome: outcome_record(&Outcome::Cancelled(cancel)),
            };
            match rec.state {
                RecordState::Observed {
                    link,
                    mac,
                    eni_id,
                    remover,
                    held,
                    sending,
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
                    self.intents.insert(
                        ip,
                        Intent {
                            ip,
                            generation: rec.generation,
                            link: l.index,
                            link_name: link,
                            prefix: 32,
                            mac: l.mac,
                            eni_id,
                            remover: remover.map(Into::into),
                            observed_at: now,
                            observed_unix_ms: unix_ms(),
                            due: now + self.settings.grace,
                            due_in_ms: 0,
                            // A held burst stays held until an operator confirms.
                            phase: if held { Phase::Held } else { Phase::Pending },
                            held_reason,
                            attempts: 0,
                            task_failures: 0,
                            not_listed_since: None,
                            // The unassign may have gone out: if the cloud no longer
                            // lists the IP, that was us, not a lagging view.
                            sent: sending,
                            secondary: false,
                            subnet_primary: None,
                        },
                    );
                }
                RecordState::Sent { eni_id, task } => {
                    info!(ip = %ip, task = %task.task_id, "following a journaled release task");
                    self.make_room(ip, rec.generation);
                    self.intents.insert(
                        ip,
                        Intent {
                            ip,
                            generation: rec.generation,
                            link: 0,
                            link_name: String::new(),
                            prefix: 32,
                            mac: None,
                            eni_id: Some(eni_id.clone()),
                            remover: None,
                            observed_at: now,
                            observed_unix_ms: unix_ms(),
                            due: now,
                            due_in_ms: 0,
                            phase: Phase::Releasing {
                                task_id: task.task_id.clone(),
                            },
                            held_reason: None,
                            attempts: 0,
                            task_failures: 0,
                            not_listed_since: None,
                            sent: true,
                            secondary: false,
                            subnet_primary: None,
                        },
                    );
                    let cloud = Arc::clone(&self.cloud);
                    let tx = self.reports_tx.clone();
                    self.busy_enis.insert(eni_id.clone());
                    let generations = Arc::new([(ip, rec.generation)].into());
                    tokio::spawn(async move {
                        let outcome = follow_journaled_task(&*cloud, ip, &task).await;
                        let _ = tx.send(Report::Done {
                            eni_id: eni_id.clone(),
                            outcome,
                            generations,
                        });
                        let _ = tx.send(Report::EniIdle(eni_id));
                    });
                }
                RecordState::Finished { .. } => {}
            }
        }
    }
}

enum Verdict {
    Send,
    /// Sent before and no longer listed: released by our earlier call.
    Gone,
    Wait(String),
    Cancel(Cancel),
}

/// Sends the unassign for `ips` in chunks of ten, one after the other (calls for one ENI
/// are serialised), through the cloud module's release procedure.
/// One unassign to make: the ENI, its VPC, the IPs and their intents' generations.
struct Call {
    eni_id: String,
    vpc_id: String,
    ips: Vec<Ipv4Addr>,
    generations: Arc<HashMap<Ipv4Addr, u64>>,
}

async fn release_task<C: Cloud>(
    cloud: Arc<C>,
    tx: mpsc::UnboundedSender<Report>,
    call: Call,
    policy: ReleasePolicy,
) {
    let Call {
        eni_id,
        vpc_id,
        ips,
        generations,
    } = call;
    for chunk in ips.chunks(MAX_IPS_PER_CALL) {
        let sent_tx = tx.clone();
        let sent_eni = eni_id.clone();
        let sent_generations = Arc::clone(&generations);
        let outcome = release_batch_observed(
            &*cloud,
            &eni_id,
            &vpc_id,
            chunk,
            policy,
            move |ips, task| {
                let _ = sent_tx.send(Report::Sent {
                    ips: ips.to_vec(),
                    eni_id: sent_eni.clone(),
                    task: task.clone(),
                    generations: Arc::clone(&sent_generations),
                });
            },
        )
        .await;
        let _ = tx.send(Report::Done {
            eni_id: eni_id.clone(),
            outcome,
            generations: Arc::clone(&generations),
        });
    }
    let _ = tx.send(Report::EniIdle(eni_id));
}

/// After a restart: a journaled task is followed to its end. Anything but SUCCESS goes
/// back through the send-time checks, where "no longer listed" counts as done.
async fn follow_journaled_task<C: Cloud>(
    cloud: &C,
    ip: Ipv4Addr,
    task: &TaskRef,
) -> ReleaseOutcome {
    let outcome = match cloud.wait_task(task).await {
        Ok(TaskStatus::Success) => IpOutcome::Released,
        Ok(status) => IpOutcome::RetryLater {
            reason: format!("journaled task {} ended {status:?}", task.task_id),
        },
        Err(e) => IpOutcome::RetryLater {
            reason: format!("following journaled task {}: {}", task.task_id, e.code),
        },
    };
    ReleaseOutcome {
        ips: [(ip, outcome)].into(),
        tasks: vec![task.clone()],
    }
}

/// Exponential backoff with full jitter, capped.
fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
    let millis = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(fastrand::u64(millis / 2..=millis))
}

/// A short stable label for a refusal: its error code, or the failed-task reason.
fn refusal_key(why: &str) -> &'static str {
    if why.contains("task failed") {
        "task_failed"
    } else if why.contains("PrimaryIp") || why.contains("IsPrimary") {
        "primary_ip"
    } else if why.contains("AuthFailure") {
        "auth"
    } else if why.contains("UnauthorizedOperation") {
        "permission"
    } else {
        "other"
    }
}

/// The journal's record of how an intent ended.
fn outcome_record(outcome: &Outcome) -> OutcomeRecord {
    match outcome {
        Outcome::Released { task_id } => OutcomeRecord::Released {
            task_id: task_id.clone(),
        },
        Outcome::AlreadyGone => OutcomeRecord::AlreadyGone,
        Outcome::Cancelled(c) => OutcomeRecord::Cancelled {
            reason: c.key().to_owned(),
            detail: match c {
                Cancel::IgnoredRemover(d) | Cancel::EipBound(d) | Cancel::EniNotAttached(d) => {
                    Some(d.clone())
                }
                _ => None,
            },
        },
        Outcome::DryRun => OutcomeRecord::DryRun,
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, crate::millis)
}

/// `ip ← dhclient-script ← dhclient (port 4242)`; what is known of an unidentified
/// one, and why it is not identified.
fn describe_remover(r: &Remover) -> String {
    let chain = r.chain();
    let exited = if r.identity == crate::host::Identity::Exited {
        ", exited"
    } else {
        ""
    };
    match (r.unidentified(), chain.is_empty()) {
        (None, false) => format!("{chain} (port {}{exited})", r.port_id),
        (None, true) => format!("port {}", r.port_id),
        (Some(why), true) => format!("unknown (port {}: {why})", r.port_id),
        (Some(why), false) => format!("unknown: {chain} ← ? (port {}: {why})", r.port_id),
    }
}

fn describe_optional_remover(r: Option<&Remover>) -> String {
    r.map_or_else(|| "unknown (resync)".to_string(), describe_remover)
}

/// Clause 2: why nobody knows who removed an address, if nobody does. A removal found
/// by a resync has no remover at all; one whose remover could not be identified (or
/// that enisync failed to identify) says why.
fn unknown_remover(remover: Option<&Remover>) -> Option<String> {
    match remover {
        None => Some("found by a resync: the notification, and who sent it, was lost".into()),
        Some(r) if r.is_kernel() => None,
        Some(r) => match &r.identity {
            crate::host::Identity::Unknown(why) => Some(format!("remover unknown: {why}")),
            crate::host::Identity::Failed(why) => {
                Some(format!("enisync failed to identify the remover: {why}"))
            }
            _ if r.process.is_none() => Some("remover has no name".into()),
            _ => None,
        },
    }
}

/// `comm` is truncated to 15 bytes by the kernel (`systemd-networkd` shows as
/// `systemd-network`), so a truncated name matches the configured full name.
fn process_matches(comm: &str, configured: &str) -> bool {
    comm == configured || (comm.len() == 15 && configured.starts_with(comm))
}

/// Shell-style `*` and `?` matching for interface names: one definition, in `net`.
pub use crate::net::glob_match;

#[cfg(test)]
mod tests;
