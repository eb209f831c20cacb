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
use crate::cloud::failover::FailoverObserver;
use crate::cloud::metadata::{MetadataClient, MetadataSettings};
use crate::cloud::retry::Rates;
use crate::config::{Config, RoutingMode};
use crate::engine::{Command, Engine, Settings, Snapshot, Start};
use crate::host::procs::{Identifier, ProcessEvents, TaskStats};
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

mod drift;
mod setup;
mod startup;

pub use setup::FD_BUDGET;
use setup::*;
use startup::*;

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
    Settings::from_release(&config.release).with_claim(&config.claim)
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
    let (drift_exclude, drift_exclude_rx) =
        tokio::sync::watch::channel(drift::DriftFilters::of(&config));
    spawn_signal_handler(
        config_path,
        config.clone(),
        shutdown.clone(),
        commands_tx.clone(),
        drift_exclude,
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
    // The adders of claimed addresses are identified on the path of a failover: their
    // sockets are resolved ahead of use (docs/design.md, "Claims").
    let identifier = identifier.with_warm_names(if config.claim.cidrs.is_empty() {
        Vec::new()
    } else {
        config.claim.adders.clone()
    });
    let (view, watch_handle, events) = watch::start_with(
        WatchOptions {
            recv_buffer: config.netlink.receive_buffer,
            resync_interval: config.netlink.resync_interval,
            adder_cidrs: config.claim.cidrs.clone(),
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
        Identification::Ready(notes) => identification_warnings.extend(notes),
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
    let drift_queries = control::DriftQueries::default();
    tokio::spawn(control::serve(
        control,
        commands_tx.clone(),
        Arc::clone(&drift_queries),
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
    // The drift report reads the metadata service unless the config names the instance.
    let drift_metadata = config.cloud.instance_id.is_none().then(|| metadata.clone());
    let credentials = Arc::new(CredentialProvider::new(
        CredentialSources::from_process(config_keys, Some(metadata)),
        clock,
    )?);
    let _ = credentials_slot.set(Arc::clone(&credentials));
    let observer_metrics = Arc::clone(&metrics);
    let observer = CallObserver(Arc::new(move |action, code, took| {
        observer_metrics.cloud_call(action, code, took);
    }));
    let failover_metrics = Arc::clone(&metrics);
    let failovers = FailoverObserver(Arc::new(move |from: &str, to: &str| {
        failover_metrics.endpoint_failover(from, to);
    }));
    let cloud = Arc::new(
        TencentCloud::new(cloud_settings(&config, &facts), credentials)?
            .with_observer(observer)
            .with_failover_observer(failovers),
    );
    let Some(inventory) = start.inventory(&cloud, &facts).await else {
        stopped(&config);
        return Ok(());
    };
    info!(enis = inventory.by_mac.len(), instance = %inventory.instance_id, "inventory loaded");
    let startup_listing: Vec<_> = inventory
        .by_mac
        .values()
        .filter_map(|r| r.cloud.clone())
        .collect();
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
            metrics: Some(Arc::clone(&metrics) as Arc<dyn crate::engine::MetricsSink>),
            warnings,
            pause,
        },
    );
    let (drift_tx, drift_rx) = mpsc::channel(16);
    let drift_task = drift::DriftTask {
        cloud: Arc::clone(&cloud),
        metadata: drift_metadata,
        engine: commands_tx.clone(),
        metrics: Arc::clone(&metrics),
        filters: drift_exclude_rx,
        claim_cidrs: config.claim.cidrs.clone(),
        interval: config.drift.interval,
        instance_id: facts.instance_id.clone(),
        startup_listing: Some(startup_listing),
    };
    tokio::spawn(drift_task.run(drift_rx, shutdown.clone()));
    let _ = drift_queries.set(drift_tx);
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

fn stopped(config: &Config) {
    let _ = std::fs::remove_file(&config.control.socket);
    info!("enisync stopped");
}

fn notify_status(status: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(status)]);
}
