//! The `enisync` command line: argument parsing only; the library does the work.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use enisync::config::{self, Config, LogFormat};

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
    /// Validate a configuration file: exit 0, or 1 with the key and the reason.
    CheckConfig {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok (api {:?}, grace {:?}, dry_run {}, routing {:?})",
                    config.display(),
                    c.cloud.api,
                    c.release.grace,
                    c.release.dry_run,
                    c.routing.mode
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("enisync: {e}");
                ExitCode::FAILURE
            }
        },
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

/// Plain text to stderr (journald adds timestamps itself when it captures it), or JSON
/// lines; `RUST_LOG` overrides `log.level`.
fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Auto if under_journald => builder.without_time().with_ansi(false).init(),
        LogFormat::Auto | LogFormat::Plain => builder.with_ansi(false).init(),
    }
}
