//! The `enisync` command line: argument parsing only; the library does the work.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use enisync::config::{self, Config, LogFormat};
use enisync::ops::{control, status};

#[derive(Debug, Parser)]
#[command(
    name = "enisync",
    version,
    about = "Returns auxiliary private IPs removed on a Tencent Cloud CVM to the VPC, safely"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the agent in the foreground (systemd runs it this way).
    Run {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate a configuration file: exit 0, or 1 with the key and the reason. Applies
    /// every check `run` applies to the file; run as root, it also checks that the
    /// service user can read the file and write `state.dir`.
    CheckConfig {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// The user the service runs as (default: `enisync`, when that user exists).
        #[arg(long)]
        service_user: Option<String>,
    },
    /// Links and their ENIs, pending releases, last results, alarms and errors.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// What would be released right now and which rules or routes would change.
    Plan {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Read-only: where the host, the metadata service and the cloud's listing disagree
    /// (leak candidates, addresses the cloud does not bind, stale rules, metadata
    /// mismatches). enisync never acts on it.
    Drift {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Stop releasing (route repair goes on) until `resume`.
    Pause {
        #[command(flatten)]
        target: Target,
    },
    /// Release again after `pause`.
    Resume {
        #[command(flatten)]
        target: Target,
    },
    /// Confirm the releases held as part of a burst (`--held`), or release one orphaned
    /// floating IP of `claim.cidrs` that is absent from the host and bound here (`<ip>`).
    Release {
        #[command(flatten)]
        target: Target,
        /// Release every held IP.
        #[arg(long, conflicts_with = "ip", required_unless_present = "ip")]
        held: bool,
        /// An address of `claim.cidrs`, absent from the host and bound to an ENI of this
        /// instance: released after the checks of any release.
        ip: Option<std::net::IpAddr>,
    },
    /// Drop the pending release of one IP.
    Cancel {
        #[command(flatten)]
        target: Target,
        ip: std::net::IpAddr,
    },
}

/// Which daemon to talk to.
#[derive(Debug, clap::Args)]
struct Target {
    /// The control socket; default: the one `--config` names, else /run/enisync/enisync.sock.
    #[arg(long)]
    socket: Option<PathBuf>,
    #[arg(long, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
}

impl Target {
    fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| {
            // Only root can read the packaged config; others get the default path.
            Config::load(&self.config).map_or_else(
                |_| PathBuf::from(config::DEFAULT_SOCKET),
                |c| c.control.socket,
            )
        })
    }
}

/// Sends one request and prints the answer.
fn control_command(
    target: &Target,
    request: &control::Request,
    render: Option<fn(&serde_json::Value) -> String>,
) -> ExitCode {
    match control::request(&target.socket(), request) {
        Ok(data) => {
            match (render, &data) {
                (Some(render), _) => print!("{}", render(&data)),
                (None, serde_json::Value::String(text)) => println!("{text}"),
                (None, other) => println!(
                    "{}",
                    serde_json::to_string_pretty(other).unwrap_or_default()
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("enisync: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Status { target, json } => control_command(
            &target,
            &control::Request::Status,
            (!json).then_some(status::render_status as fn(&serde_json::Value) -> String),
        ),
        Cmd::Plan { target, json } => control_command(
            &target,
            &control::Request::Plan,
            (!json).then_some(status::render_plan as fn(&serde_json::Value) -> String),
        ),
        Cmd::Drift { target, json } => control_command(
            &target,
            &control::Request::Drift,
            (!json).then_some(status::render_drift as fn(&serde_json::Value) -> String),
        ),
        Cmd::Pause { target } => control_command(&target, &control::Request::Pause, None),
        Cmd::Resume { target } => control_command(&target, &control::Request::Resume, None),
        Cmd::Release { target, ip, .. } => match ip {
            Some(ip) => control_command(&target, &control::Request::ReleaseIp { ip }, None),
            None => control_command(&target, &control::Request::ReleaseHeld, None),
        },
        Cmd::Cancel { target, ip } => {
            control_command(&target, &control::Request::Cancel { ip }, None)
        }
        Cmd::CheckConfig {
            config,
            service_user,
        } => check_config(&config, service_user.as_deref()),
        Cmd::Run { config: path } => {
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("enisync: {e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging(&config);
            // One worker thread is plenty: the agent waits on netlink and HTTP, and a
            // small runtime keeps the footprint small.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("enisync: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(enisync::daemon::run(path, config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "enisync failed");
                    eprintln!("enisync: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `check-config`: the same `Config::load` that `run` starts with, then, as root, what
/// the service user will be able to do.
fn check_config(path: &std::path::Path, service_user: Option<&str>) -> ExitCode {
    use enisync::service_user::{self, Checked, DEFAULT_SERVICE_USER};
    let c = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("enisync: {e}");
            return ExitCode::FAILURE;
        }
    };
    let user = service_user.unwrap_or(DEFAULT_SERVICE_USER);
    let access = match service_user::check(user, service_user.is_some(), path, &c.state.dir) {
        Ok(Checked::AsUser(u)) => format!("the service user {u} can read it and write state.dir"),
        Ok(Checked::Skipped(why)) => why,
        Err(e) => {
            eprintln!("enisync: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{}: ok (api {:?}, grace {:?}, dry_run {}, routing {:?}); {access}",
        path.display(),
        c.cloud.api,
        c.release.grace,
        c.release.dry_run,
        c.routing.mode
    );
    ExitCode::SUCCESS
}

/// Under systemd (`JOURNAL_STREAM` set) and `log.format = "auto"`: native journald
/// records, so audit fields stay fields (`journalctl DECISION=released`). Otherwise plain
/// text or JSON lines to stderr. `RUST_LOG` overrides `log.level`.
fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // The audit records are the release history: whatever the level, they are kept at
    // `info` at least. `log.level` was checked by `config::check_log_level`, which refuses
    // an `audit=` directive below info; RUST_LOG is held to the same rule, and ignored
    // (with a warning once logging is up) when it breaks it.
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let env_refused = from_env
        .as_deref()
        .and_then(|v| config::check_log_level(v).err());
    let directives = match (&from_env, &env_refused) {
        (Some(env), None) => env.clone(),
        _ => config.log.level.clone(),
    };
    let names_audit = directives
        .split(',')
        .any(|d| d.trim().starts_with("audit="));
    let full = if names_audit {
        directives
    } else {
        format!("{directives},audit=info")
    };
    let filter = EnvFilter::try_new(&full).unwrap_or_else(|_| EnvFilter::new("info"));
    if let Some(reason) = &env_refused {
        eprintln!("enisync: RUST_LOG ignored ({reason}); using log.level");
    }
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    if config.log.format == LogFormat::Auto && under_journald {
        // Falls back to text when the journal socket is not there (a container).
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(journald.with_field_prefix(None))
                .init();
            return;
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        // journald stamps the time itself.
        LogFormat::Auto if under_journald => builder.without_time().with_ansi(false).init(),
        LogFormat::Auto | LogFormat::Plain => builder.with_ansi(false).init(),
    }
}
