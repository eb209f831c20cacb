//! The process around the engine: the state directory's lock, signals, and the checks
//! that only warn (plain HTTP, descriptors) or degrade (remover identification).

use super::*;
use crate::host::bpf::{DeletionProbe, own_netns};

/// What the start-up check of remover identification found.
pub(super) enum Identification {
    /// Works; the notes say what is degraded (one `status` line each).
    Ready(Vec<String>),
    /// Does not work: releases stay disarmed (every removal held).
    Broken(String),
}

/// Subscribes to process events (falling back to `/proc` alone, which cannot name a
/// short-lived remover that exited before its notification is read: such removals are
/// held as unknown) and to taskstats exit records (falling back to the connector alone,
/// which loses the name of some of those removers and judges them by their parents), and
/// checks that identification works at all.
pub(super) fn remover_identification() -> (Identifier, Identification) {
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
    let exits = match TaskStats::start_near(events.as_ref().map(|e| e.namespace.as_str())) {
        Ok(exits) => {
            info!(namespace = %exits.namespace, "taskstats exit records: registered");
            Some(exits)
        }
        Err(e) => {
            warn!(error = %e, "taskstats exit records unavailable: a remover that exits before its removal is read may be known only by its parents, or held");
            notes.push(format!(
                "taskstats exit records unavailable ({e}): a short-lived remover may be named only by its parents, or its removal held"
            ));
            None
        }
    };
    let mut identifier = Identifier::new(events).with_exits(exits);
    // Before the watcher subscribes: every IPv6 removal it reads was requested after
    // the probe was attached, so a request without a record is none (the kernel's).
    match ipv6_probe() {
        Ok((probe, netns)) => {
            info!(netns, "IPv6 deletion probe: attached");
            identifier = identifier.with_ipv6_probe(probe, netns);
        }
        Err(why) => {
            warn!(%why, "IPv6 deletion probe unavailable: IPv6 removals are held until `enisync release --held`");
            notes.push(format!(
                "IPv6 removers cannot be named ({why}): IPv6 removals are held until `enisync release --held`"
            ));
        }
    }
    if let Err(why) = identifier.can_read_descriptors() {
        // The packaged unit's default (docs/security.md, "What the packaged unit can
        // name"): a warning and a status line, not a failure.
        warn!(%why, "other processes' descriptors cannot be read: removers whose netlink port is not a pid (keepalived) cannot be named, and their releases are held until `enisync release --held`; the drop-in /usr/share/doc/enisync/examples/name-removers.conf lets enisync name them");
        notes.push(format!(
            "removers whose netlink port is not a pid (keepalived) cannot be named ({why}): their releases are held until `enisync release --held`; the drop-in /usr/share/doc/enisync/examples/name-removers.conf lets enisync name them"
        ));
    }
    match identifier.probe() {
        Ok(()) => {
            if let Err(why) = identifier.probe_exits() {
                warn!(%why, "taskstats exit records do not arrive: naming exited removers with process events alone");
                notes.push(format!(
                    "taskstats exit records do not arrive ({why}): a short-lived remover may be named only by its parents, or its removal held"
                ));
            }
            (identifier, Identification::Ready(notes))
        }
        Err(why) => {
            error!(%why, "remover identification does not work: releases stay disarmed (every removal held)");
            identifier.disarm(why.clone());
            (identifier, Identification::Broken(why))
        }
    }
}

/// The IPv6 deletion probe (docs/design.md, "IPv6"), in this network namespace. Its
/// records carry pids as the initial PID namespace numbers them, which are only ours to
/// look up in `/proc` when we live there too.
fn ipv6_probe() -> Result<(DeletionProbe, u32), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    let nspid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .ok_or("/proc/self/status has no NSpid line (a kernel before 4.1)")?;
    if nspid.split_whitespace().count() != 1 {
        return Err(
            "enisync runs in a PID namespace of its own: the probe's pids would not be ours".into(),
        );
    }
    let netns = own_netns().map_err(|e| format!("reading our network namespace: {e}"))?;
    let probe = DeletionProbe::start().map_err(|e| e.to_string())?;
    Ok((probe, netns))
}

/// Every start with `cloud.allow_plain_http` says so, naming the endpoint keys that are
/// plain HTTP: signatures and tokens travel in clear and the send-time checks read answers
/// anyone on the path could forge. Logged even when every endpoint is https, because
/// the key then only waits for a typo.
pub(super) fn warn_plain_http(config: &Config) {
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
pub(super) fn warn_if_few_descriptors() {
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
pub(super) fn lock_state_dir(dir: &Path) -> Result<File, DaemonError> {
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

/// SIGTERM/SIGINT stop gracefully; SIGHUP re-reads the config. A bad file is rejected
/// with its reason and the running configuration stays. A good one applies its
/// `[release]` settings at once, to releases and routing alike; the keys that only a
/// restart applies are named in the log line, never kept silently. Installed before
/// anything else in `run`, so a signal during the start is handled too.
pub(super) fn spawn_signal_handler(
    config_path: PathBuf,
    running: Config,
    shutdown: CancellationToken,
    commands: mpsc::Sender<Command>,
    drift_exclude: tokio::sync::watch::Sender<super::drift::DriftFilters>,
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
                        drift_exclude.send_replace(super::drift::DriftFilters::of(&config));
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
