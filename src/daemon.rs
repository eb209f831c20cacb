//! `enisync run`: wires the edges (netlink, metadata, cloud, disk, systemd, signals) to
//! the engine and gets out of the way. Nothing here decides about a release.
//!
//! Start-up order matters: signals are handled first, the state directory is locked
//! (one enisync per host), the netlink watcher subscribes and dumps before anything
//! else can change, and then `READY=1` is sent. The metadata service and the inventory
//! are waited for after that (with backoff, never giving up: a CVM whose metadata
//! service is briefly down must not lose its agent), with the control socket answering
//! `status` and `pause` meanwhile.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::cloud::Cloud;
use crate::cloud::client::{CallObserver, CloudSettings, TencentCloud};
use crate::cloud::clock::{ServerClock, SystemClock};
use crate::cloud::credentials::{CredentialProvider, CredentialSources};
use crate::cloud::metadata::{MetadataClient, MetadataSettings};
use crate::cloud::retry::Rates;
use crate::config::{Config, RoutingMode};
use crate::engine::{Command, Engine, Settings, Snapshot, Start};
use crate::host::procs::{Identifier, ProcessEvents};
use crate::host::routes::{PolicyRouting, TableLayout};
use crate::host::routing_adapter::RoutingAdapter;
use crate::host::watch::WatchOptions;
use crate::host::{routes, watch};
use crate::inventory::{Inventory, MetaFacts};
use crate::journal::{self, Journal};
use crate::net::MacAddr;
use crate::ops::metrics::{self, Health, Metrics};
use crate::ops::{control, heartbeat};
use crate::pause::{Pause, PauseFile};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another enisync holds the lock on {0}")]
    AlreadyRunning(PathBuf),
    #[error(transparent)]
    Unsafe(#[from] crate::state_dir::StateDirError),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("netlink: {0}")]
    Host(#[from] crate::host::HostError),
    #[error("metadata client: {0}")]
    Metadata(#[from] crate::cloud::metadata::MetadataError),
    #[error("credentials: {0}")]
    Credentials(#[from] crate::cloud::credentials::CredentialError),
    #[error("cloud client: {0}")]
    Cloud(#[from] crate::cloud::client::SetupError),
    #[error("signals: {0}")]
    Signals(#[source] std::io::Error),
    #[error("metrics listener: {0}")]
    Metrics(#[source] std::io::Error),
    #[error("watchdog timer: {0}")]
    Watchdog(#[source] std::io::Error),
    #[error("control socket {path}: {source}")]
    Control {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `/healthz` fails when the engine does not answer a ping within this time (the
/// longest thing it does between two reads of its inputs is one host event or one
/// command, each bounded by netlink and HTTP timeouts well below this).
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(10);

/// The engine settings a config gives.
pub fn engine_settings(config: &Config) -> Settings {
    Settings::from_release(&config.release)
}

/// Runs the daemon until SIGTERM/SIGINT. `config_path` is re-read on SIGHUP.
///
/// `READY=1` goes to systemd once the state directory is locked, the journal read and
/// the host dumped: from then on the daemon holds its place and answers `status`,
/// `pause`, `/healthz` and `/readyz`. What it still waits for (the metadata service, the
/// first ENI listing) shows in `STATUS=` and `/readyz`, for as long as it takes, without
/// a start timeout or a restart loop (a CVM whose metadata service is down must not lose
/// its agent, nor have systemd kill it every 90 s).
pub async fn run(config_path: PathBuf, config: Config) -> Result<(), DaemonError> {
    // Signals before anything else: a SIGHUP (`systemctl reload`) or SIGTERM at any point
    // of the start must be handled, never take the default action of ending the process.
    let shutdown = CancellationToken::new();
    let (commands_tx, mut commands_rx) = mpsc::channel(16);
    spawn_signal_handler(
        config_path,
        config.clone(),
        shutdown.clone(),
        commands_tx.clone(),
    )?;
    warn_if_few_descriptors();
    warn_plain_http(&config);
    let _lock = lock_state_dir(&config.state.dir)?;
    let (journal, replay) = Journal::open(&config.state.dir)?;
    if !replay.corrupt_lines.is_empty() {
        warn!(lines = ?replay.corrupt_lines, "journal lines failed their checksum and were skipped");
    }
    // Read once; the start-up responder and then the engine own it in turn.
    let pause = Pause::load(PauseFile::new(&config.state.dir));
    if let Some(p) = pause.in_force() {
        warn!(target: "audit", decision = "paused", paused = %p.describe(), "releases stay paused (kept in the state directory); `enisync resume` clears it");
    }
    let (identifier, identification) = remover_identification();
    let (view, watch_handle, events) = watch::start_with(
        WatchOptions {
            recv_buffer: config.netlink.receive_buffer,
            resync_interval: config.netlink.resync_interval,
            ..WatchOptions::default()
        },
        identifier,
    )
    .await?;
    info!(
        links = view.links.len(),
        addrs = view.addrs.len(),
        recv_buffer = watch_handle.effective_recv_buffer(),
        "host dumped"
    );

    let watch_handle = Arc::new(watch_handle);
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let mut identification_warnings = Vec::new();
    match identification {
        Identification::Ready(Some(note)) => identification_warnings.push(note),
        Identification::Ready(None) => {}
        Identification::Broken(why) => {
            // Releases stay disarmed: every removal is held (the identifier reports
            // every remover as our failure), and /readyz says why.
            health.block(format!("remover identification unavailable: {why}"));
            identification_warnings.push(format!(
                "remover identification unavailable ({why}): every removal is held"
            ));
        }
    }
    // Served from the start, so /readyz answers "not ready" while we wait below.
    let credentials_slot: Arc<std::sync::OnceLock<Arc<CredentialProvider>>> = Arc::default();
    if config.metrics.enabled {
        let listener = metrics::bind(config.metrics.address, config.metrics.allow_remote)
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(DaemonError::Metrics)?;
        let (watch, creds) = (Arc::clone(&watch_handle), Arc::clone(&credentials_slot));
        let refresh: metrics::Refresh = Arc::new(move |m: &Metrics| {
            let stats = watch.stats();
            Metrics::catch_up(&m.netlink_events, stats.events);
            Metrics::catch_up(&m.netlink_overruns, stats.overruns);
            Metrics::catch_up(&m.resyncs, stats.resyncs);
            if let Some(c) = creds.get() {
                Metrics::catch_up(&m.credential_refreshes, c.metadata_fetches());
            }
        });
        tokio::spawn(metrics::serve(
            listener,
            Arc::clone(&metrics),
            Arc::clone(&health),
            LIVENESS_TIMEOUT,
            refresh,
            shutdown.clone(),
        ));
    }
    let control = control::bind(&config.control.socket).map_err(|source| DaemonError::Control {
        path: config.control.socket.clone(),
        source,
    })?;
    tokio::spawn(control::serve(
        control,
        commands_tx.clone(),
        shutdown.clone(),
    ));

    let mut watchdog = Watchdog::from_env()?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let mut start = Starting {
        config: &config,
        pause,
        health: &health,
        commands: &mut commands_rx,
        watchdog: &mut watchdog,
        shutdown: &shutdown,
        settings: engine_settings(&config),
        waiting_for: String::new(),
    };

    // One client: it answers the start-up's questions, then serves the CAM role's keys.
    let metadata = metadata_client(&config)?;
    let Some(facts) = start.instance_facts(&metadata).await else {
        stopped(&config);
        return Ok(());
    };
    let clock = Arc::new(ServerClock::new(Arc::new(SystemClock)));
    let config_keys = match (&config.cloud.secret_id, &config.cloud.secret_key) {
        (Some(id), Some(key)) => Some((id.clone(), key.clone())),
        _ => None,
    };
    let credentials = Arc::new(CredentialProvider::new(
        CredentialSources::from_process(config_keys, Some(metadata)),
        clock,
    )?);
    let _ = credentials_slot.set(Arc::clone(&credentials));
    let observer_metrics = Arc::clone(&metrics);
    let observer = CallObserver(Arc::new(move |action, code, took| {
        observer_metrics.cloud_call(action, code, took);
    }));
    let cloud = Arc::new(
        TencentCloud::new(cloud_settings(&config, &facts), credentials)?.with_observer(observer),
    );
    let Some(inventory) = start.inventory(&cloud, &facts).await else {
        stopped(&config);
        return Ok(());
    };
    info!(enis = inventory.by_mac.len(), instance = %inventory.instance_id, "inventory loaded");
    // A reload while waiting gave new `[release]` settings: the engine starts with them.
    let Starting {
        settings, pause, ..
    } = start;

    let policy_routing = match config.routing.mode {
        RoutingMode::Off => None,
        RoutingMode::Cleanup | RoutingMode::Manage => Some(PolicyRouting::new(TableLayout {
            table_base: config.routing.table_base,
            rule_priority: config.routing.rule_priority,
        })?),
    };
    let router = RoutingAdapter::new(
        policy_routing,
        config.routing.mode == RoutingMode::Manage,
        settings.dry_run,
        Some(metrics.route_changes.clone()),
    );
    let mut warnings = identification_warnings;
    if config.routing.mode == RoutingMode::Manage {
        router.startup_check(&view, &inventory).await?;
        // Only a running networkd (it keeps state under /run/systemd/netif) can fight us.
        let networkd_running = Path::new("/run/systemd/netif/links").exists();
        match routes::networkd_foreign_rules(Path::new("/")) {
            Ok(s) if s.manage_foreign_rules && networkd_running => {
                let text = "systemd-networkd is set to remove foreign policy rules (ManageForeignRoutingPolicyRules=yes): \
                            it will fight routing.mode = \"manage\"; set ManageForeignRoutingPolicyRules=no in networkd.conf";
                warn!(decided_by = ?s.decided_by, "{text}");
                warnings.push(text.to_string());
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "could not read systemd-networkd's configuration"),
        }
    }

    let dry_run = settings.dry_run;
    let grace = settings.grace;
    let engine = Engine::new(
        settings,
        Arc::clone(&cloud),
        router,
        Start {
            view,
            inventory,
            meta: facts.meta.clone(),
            statics: config.interfaces.clone(),
            boot_id: journal::boot_id(),
            journal: Some(journal),
            replay: replay.live,
            metrics: Some(Arc::clone(&metrics)),
            warnings,
            pause,
        },
    );
    health.engine_started(commands_tx.clone());
    health.set_ready(true);
    let mode = if dry_run { "dry run" } else { "armed" };
    notify_status(&format!("watching; releases {mode}"));
    info!(dry_run, grace_ms = crate::millis(grace), "enisync ready");
    let heartbeat = watchdog.take_beats();
    engine
        .run(
            events,
            commands_rx,
            shutdown.clone(),
            heartbeat,
            move || {
                watchdog.ping_if_due();
            },
        )
        .await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    drop(watch_handle);
    stopped(&config);
    Ok(())
}

/// What the start-up check of remover identification found.
enum Identification {
    /// Works; the note says what is degraded (shown by `status`).
    Ready(Option<String>),
    /// Does not work: releases stay disarmed (every removal held).
    Broken(String),
}

/// Subscribes to process events (falling back to `/proc` alone, which cannot name a
/// short-lived remover that exited before its notification is read: such removals are
/// held as unknown) and checks that identification works at all.
fn remover_identification() -> (Identifier, Identification) {
    let (events, mut notes) = match ProcessEvents::start() {
        Ok(events) => {
            info!(namespace = %events.namespace, "process events: subscribed");
            (Some(events), Vec::new())
        }
        Err(e) => {
            warn!(error = %e, "process events unavailable: a remover that exits before its removal is read will be unknown, and that removal held");
            (
                None,
                vec![format!(
                    "process events unavailable ({e}): removals by short-lived tools are held as unknown"
                )],
            )
        }
    };
    let mut identifier = Identifier::new(events);
    if let Err(why) = identifier.can_read_descriptors() {
        warn!(%why, "other processes' descriptors cannot be read: a netlink port that is not a pid (keepalived's) resolves to nobody, and its removals are held");
        notes.push(format!(
            "cannot read other processes' descriptors ({why}): removals from ports that are not pids are held"
        ));
    }
    match identifier.probe() {
        Ok(()) => (
            identifier,
            Identification::Ready((!notes.is_empty()).then(|| notes.join("; "))),
        ),
        Err(why) => {
            error!(%why, "remover identification does not work: releases stay disarmed (every removal held)");
            identifier.disarm(why.clone());
            (identifier, Identification::Broken(why))
        }
    }
}

fn stopped(config: &Config) {
    let _ = std::fs::remove_file(&config.control.socket);
    info!("enisync stopped");
}

fn metadata_client(config: &Config) -> Result<MetadataClient, DaemonError> {
    Ok(MetadataClient::new(&MetadataSettings {
        base_url: config.metadata.endpoint.clone(),
        total_timeout: config.metadata.timeout,
        ..MetadataSettings::default()
    })?)
}

/// The systemd watchdog, fed from whatever loop runs: the start-up waits, then the
/// engine. A beat every half period wakes the loop, and any turn pings when the last
/// ping is a quarter period old, so pings are at most three quarters of the period
/// apart and at most two per half period under load.
struct Watchdog {
    beats: Option<futures_util::stream::BoxStream<'static, ()>>,
    ping_after: Option<Duration>,
    last_ping: tokio::time::Instant,
}

impl Watchdog {
    fn from_env() -> Result<Self, DaemonError> {
        let period = sd_notify::watchdog_enabled();
        let beats = match period {
            Some(w) => heartbeat::beats(w / 2).map_err(DaemonError::Watchdog)?,
            None => Box::pin(futures_util::stream::pending()),
        };
        Ok(Self {
            beats: Some(beats),
            ping_after: period.map(|w| w / 4),
            last_ping: tokio::time::Instant::now(),
        })
    }

    fn ping_if_due(&mut self) {
        if let Some(after) = self.ping_after
            && self.last_ping.elapsed() >= after
        {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            self.last_ping = tokio::time::Instant::now();
        }
    }

    /// The next beat (never, without a watchdog).
    async fn beat(&mut self) {
        match self.beats.as_mut() {
            Some(b) => {
                let _ = b.next().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Hands the beats over to the engine loop.
    fn take_beats(&mut self) -> futures_util::stream::BoxStream<'static, ()> {
        self.beats
            .take()
            .unwrap_or_else(|| Box::pin(futures_util::stream::pending()))
    }
}

/// The start-up waits, with the control socket answered meanwhile: `status` says what
/// enisync waits for, `pause` and `resume` apply to the pause (which the engine then
/// takes over), and a reload's `[release]` settings are kept for the engine.
struct Starting<'a> {
    config: &'a Config,
    /// The operator's pause, handed to the engine when it starts.
    pause: Pause,
    health: &'a Health,
    commands: &'a mut mpsc::Receiver<Command>,
    watchdog: &'a mut Watchdog,
    shutdown: &'a CancellationToken,
    /// The settings the engine will start with.
    settings: Settings,
    waiting_for: String,
}

impl Starting<'_> {
    /// The instance's facts: from the config when it names the instance (no metadata
    /// service needed), else from the metadata service, waited for.
    async fn instance_facts(&mut self, metadata: &MetadataClient) -> Option<InstanceFacts> {
        if let Some(facts) = facts_from_config(self.config) {
            info!(instance = %facts.instance_id, region = %facts.region, "instance from the configuration (cloud.instance_id); the metadata service is not needed");
            return Some(facts);
        }
        let config = self.config;
        self.until_ok(
            Duration::from_secs(30),
            "metadata service not usable yet",
            "waiting for the metadata service",
            async || read_instance(metadata, config).await,
        )
        .await
    }

    async fn inventory(
        &mut self,
        cloud: &TencentCloud,
        facts: &InstanceFacts,
    ) -> Option<Inventory> {
        let enis = self
            .until_ok(
                Duration::from_secs(60),
                "DescribeNetworkInterfaces failed; retrying",
                "loading the ENI inventory",
                async || cloud.list_enis().await,
            )
            .await?;
        Some(Inventory::build(
            &facts.instance_id,
            enis,
            &facts.meta,
            &self.config.interfaces,
        ))
    }

    /// Tries until `attempt` succeeds, with backoff from 200 ms doubling up to `cap`
    /// and never giving up; between tries the wait answers commands and feeds the
    /// watchdog, and `waiting_for` (with the error) is what STATUS= and `/readyz` say.
    /// `None`: stop (SIGTERM).
    async fn until_ok<T, E: std::fmt::Display>(
        &mut self,
        cap: Duration,
        failed: &str,
        waiting_for: &str,
        mut attempt: impl AsyncFnMut() -> Result<T, E>,
    ) -> Option<T> {
        let backoff = Backoff {
            base: Duration::from_millis(200),
            cap,
        };
        let mut tries = 0;
        loop {
            match attempt().await {
                Ok(value) => return Some(value),
                Err(e) => {
                    let delay = backoff.ceiling(tries);
                    tries = tries.saturating_add(1);
                    warn!(error = %e, retry_in_ms = crate::millis(delay), "{failed}");
                    self.wait(format!("{waiting_for}: {e}"), delay).await?;
                }
            }
        }
    }

    /// Waits `delay`, answering commands and feeding the watchdog meanwhile. `None`:
    /// stop (SIGTERM).
    async fn wait(&mut self, waiting_for: String, delay: Duration) -> Option<()> {
        if waiting_for != self.waiting_for {
            notify_status(&waiting_for);
            self.health.set_waiting(&waiting_for);
            self.waiting_for = waiting_for;
        }
        let until = tokio::time::Instant::now() + delay;
        loop {
            self.watchdog.ping_if_due();
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = tokio::time::sleep_until(until) => return Some(()),
                () = self.watchdog.beat() => {}
                Some(command) = self.commands.recv() => self.answer(command),
            }
        }
    }

    fn answer(&mut self, command: Command) {
        match command {
            Command::Snapshot(reply) => {
                let snapshot = Snapshot::starting(
                    self.waiting_for.clone(),
                    self.pause.in_force(),
                    self.settings.dry_run,
                );
                let _ = reply.send(snapshot);
            }
            Command::Pause(request, reply) => {
                let _ = reply.send(self.pause.apply(request));
            }
            Command::Reload(settings) => {
                info!(
                    waiting_for = %self.waiting_for,
                    "reload received while starting: the new [release] settings apply when the engine starts"
                );
                self.settings = *settings;
            }
            Command::Ping(reply) => {
                let _ = reply.send(());
            }
            // Dropping the reply tells the client that enisync is still starting.
            Command::Plan(_)
            | Command::ReleaseHeld(_)
            | Command::Cancel(..)
            | Command::RefreshInventory => {}
        }
    }
}

/// With `cloud.instance_id` (which config validation pairs with `cloud.region` and at
/// least one `[[interface]]`), the instance is known without the metadata service.
fn facts_from_config(config: &Config) -> Option<InstanceFacts> {
    let instance_id = config.cloud.instance_id.clone()?;
    let region = config.cloud.region.clone()?;
    let meta = config
        .interfaces
        .iter()
        .map(|i| {
            (
                i.mac,
                MetaFacts {
                    gateway: i.gateway,
                    subnet_prefix: None,
                },
            )
        })
        .collect();
    Some(InstanceFacts {
        instance_id,
        region,
        meta,
    })
}

/// Instance facts from the metadata service (or the config, for hosts without it).
#[derive(Debug, Clone)]
struct InstanceFacts {
    instance_id: String,
    region: String,
    meta: HashMap<MacAddr, MetaFacts>,
}

async fn read_instance(
    metadata: &MetadataClient,
    config: &Config,
) -> Result<InstanceFacts, String> {
    let instance_id = metadata
        .instance_id()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("metadata has no instance-id")?;
    let region = match &config.cloud.region {
        Some(r) => r.clone(),
        None => metadata
            .region()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("metadata has no placement/region")?,
    };
    let mut meta = HashMap::new();
    for mac in metadata.macs().await.map_err(|e| e.to_string())? {
        let primary = metadata
            .primary_local_ipv4(&mac)
            .await
            .map_err(|e| e.to_string())?;
        let mut facts = MetaFacts::default();
        if let Some(ip) = primary {
            facts.gateway = metadata
                .gateway(&mac, ip)
                .await
                .map_err(|e| e.to_string())?;
            facts.subnet_prefix = metadata
                .subnet_mask(&mac, ip)
                .await
                .map_err(|e| e.to_string())?
                .map(|m| u8::try_from(u32::from(m).leading_ones()).unwrap_or(32));
        }
        meta.insert(mac.mac, facts);
    }
    Ok(InstanceFacts {
        instance_id,
        region,
        meta,
    })
}

fn cloud_settings(config: &Config, facts: &InstanceFacts) -> CloudSettings {
    let c = &config.cloud;
    let mut s = CloudSettings::new(&facts.region, &facts.instance_id);
    s.protocol = c.api;
    s.v3_endpoint = c.describe_endpoint().to_owned();
    if c.api == crate::task::Protocol::Legacy {
        s.legacy_endpoint = c.release_endpoint().to_owned();
    }
    s.legacy_sign_method = c.legacy_sign_method;
    s.connect_timeout = c.connect_timeout;
    s.total_timeout = c.timeout;
    s.task_cap = c.task_timeout;
    s.extra_ca_file = c.ca_file.clone();
    s.allow_plain_http = c.allow_plain_http;
    s.rates = Rates {
        unassign: c.max_calls_per_second,
        ..Rates::default()
    };
    s
}

/// Every start with `cloud.allow_plain_http` says so, naming the endpoint keys that are
/// plain HTTP: signatures and tokens travel in clear and the send-time checks read answers
/// anyone on the path could forge. Logged even when every endpoint is https, because
/// the key then only waits for a typo.
fn warn_plain_http(config: &Config) {
    if !config.cloud.allow_plain_http {
        return;
    }
    // The keys only: a URL may carry user information.
    let plain: Vec<&str> = config
        .cloud
        .plain_http_endpoints()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    warn!(
        endpoints = ?plain,
        "cloud.allow_plain_http = true: API calls may go over plain http, where tokens and \
         signatures travel in clear and answers can be forged; for tests against a fake only"
    );
}

/// Descriptors the daemon may hold at once: its own (generously) plus what the metrics
/// listener and the control socket admit. The unit's `LimitNOFILE=` is sized from this
/// (the arithmetic is in systemd/enisync.service).
pub const FD_BUDGET: u64 =
    64 + metrics::Limits::DEFAULT.max_connections as u64 + 1 + control::MAX_CLIENTS as u64 + 1;

/// A descriptor limit below the budget means a flood of connections could exhaust it
/// despite the caps, and a removal's remover could then not be read: say so at start.
fn warn_if_few_descriptors() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and pass by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } == 0
        && limit.rlim_cur < FD_BUDGET
    {
        warn!(
            limit = limit.rlim_cur,
            needed = FD_BUDGET,
            "the descriptor limit (RLIMIT_NOFILE) is below what enisync may hold at once; raise LimitNOFILE="
        );
    }
}

/// Holds an exclusive `flock` on `<state.dir>/lock` for the life of the process, after
/// checking that nobody but root and our own user can write the directory or its files
/// (`state_dir::check`, the rule `check-config` applies too).
fn lock_state_dir(dir: &Path) -> Result<File, DaemonError> {
    let err = |source| DaemonError::StateDir {
        path: dir.to_owned(),
        source,
    };
    crate::state_dir::create(dir).map_err(err)?;
    crate::state_dir::check(dir, &crate::state_dir::Owners::this_process())?;
    let path = dir.join("lock");
    // Never through a link (ELOOP), mode 0600 whatever the umask.
    let file = crate::state_dir::nofollow()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(err)?;
    // SAFETY: flock on a file descriptor we own and keep open; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            DaemonError::AlreadyRunning(path)
        } else {
            err(e)
        });
    }
    Ok(file)
}

fn notify_status(status: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(status)]);
}

/// SIGTERM/SIGINT stop gracefully; SIGHUP re-reads the config. A bad file is rejected
/// with its reason and the running configuration stays. A good one applies its
/// `[release]` settings at once, to releases and routing alike; the keys that only a
/// restart applies are named in the log line, never kept silently. Installed before
/// anything else in `run`, so a signal during the start is handled too.
fn spawn_signal_handler(
    config_path: PathBuf,
    running: Config,
    shutdown: CancellationToken,
    commands: mpsc::Sender<Command>,
) -> Result<(), DaemonError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(DaemonError::Signals)?;
    tokio::spawn(async move {
        while let Some(signal) = signals.next().await {
            if signal == SIGHUP {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                match Config::load(&config_path) {
                    Ok(config) => {
                        let needs_restart = running.restart_needed(&config);
                        if needs_restart.is_empty() {
                            info!(path = %config_path.display(), "configuration reloaded");
                        } else {
                            warn!(
                                path = %config_path.display(),
                                needs_restart = %needs_restart.join(", "),
                                "configuration reloaded; [release] applies now, but these changed keys need a restart to take effect: {}",
                                needs_restart.join(", ")
                            );
                        }
                        let _ = commands
                            .send(Command::Reload(Box::new(engine_settings(&config))))
                            .await;
                    }
                    Err(e) => {
                        error!(error = %e, "reload rejected; the running configuration stays")
                    }
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            } else {
                info!(signal, "stopping");
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                shutdown.cancel();
                break;
            }
        }
    });
    Ok(())
}
