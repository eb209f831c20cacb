//! `fakecloud`: the fake Tencent Cloud as a process, for the README demo and scripts.
//!
//! ```text
//! fakecloud --listen 127.0.0.1:8080 [--scenario FILE.json] [--task-duration-ms N]
//!           [--tls-listen ADDR --tls-cert CERT.pem --tls-key KEY.pem] [--timestamps]
//!           [--events]
//! ```
//!
//! With `--tls-listen` the same cloud is also served over HTTPS on a second listener
//! (the metadata service of a real CVM is plain HTTP; the API is HTTPS).
//!
//! `--timestamps` starts each call line with `@<CLOCK_MONOTONIC seconds> `, the moment
//! the call was answered, so a benchmark on the same host can line calls up with its own
//! events.
//!
//! `--events` records the event log (requests, task ends, binding moves, stamped with
//! `CLOCK_MONOTONIC`) served at `GET /_fake/events?since=SEQ`, for `bench/failover.py`.
//!
//! Without `--scenario` it serves the built-in demo (`demo-scenario.json`). Prints one
//! line per call to stdout; serves `GET /_fake/calls` and `GET /_fake/state` as JSON;
//! exits cleanly on SIGTERM or SIGINT.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use enisync_fakecloud::{Call, Scenario, TlsConfig, monotonic};

const DEMO: &str = include_str!("../demo-scenario.json");

const USAGE: &str =
    "usage: fakecloud --listen ADDR:PORT [--scenario FILE.json] [--task-duration-ms N]
                 [--tls-listen ADDR:PORT --tls-cert CERT.pem --tls-key KEY.pem]
                 [--timestamps] [--events]

Serves a fake Tencent Cloud on one listener (and the same cloud over HTTPS on a second
one with --tls-listen, --tls-cert and --tls-key, PEM):
  /latest/meta-data/   instance metadata (CAM role credentials included)
  POST /               VPC API 3.0 (TC3-HMAC-SHA256)
  /v2/index.php        legacy VPC API (HmacSHA1/HmacSHA256)
  GET /_fake/calls     the call log, JSON
  GET /_fake/state     instances, ENIs, tasks, faults, JSON
  GET /_fake/events    with --events: requests, task ends, binding moves (?since=SEQ)
Without --scenario the built-in demo scenario is loaded. --timestamps starts each
call line with @<CLOCK_MONOTONIC seconds>. --events records the event log (the newest
100000 events, CLOCK_MONOTONIC nanoseconds).";

/// How many events `--events` keeps (a benchmark run records a few thousand).
const EVENTS_CAP: usize = 100_000;

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    scenario: Option<PathBuf>,
    task_duration: Option<Duration>,
    /// A second, HTTPS listener: address, certificate chain and key (PEM).
    tls: Option<(SocketAddr, PathBuf, PathBuf)>,
    /// Prefix call lines with the monotonic clock.
    timestamps: bool,
    /// Record the event log.
    events: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen = None;
    let mut scenario = None;
    let mut task_duration = None;
    let mut tls_listen = None;
    let mut tls_cert = None;
    let mut tls_key = None;
    let mut timestamps = false;
    let mut events = false;
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg, None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--listen" => {
                let text = value("--listen")?;
                listen = Some(
                    text.parse()
                        .map_err(|e| format!("--listen {text:?}: {e}"))?,
                );
            }
            "--scenario" => scenario = Some(PathBuf::from(value("--scenario")?)),
            "--task-duration-ms" => {
                let text = value("--task-duration-ms")?;
                let ms: u64 = text
                    .parse()
                    .map_err(|e| format!("--task-duration-ms {text:?}: {e}"))?;
                task_duration = Some(Duration::from_millis(ms));
            }
            "--tls-listen" => {
                let text = value("--tls-listen")?;
                tls_listen = Some(
                    text.parse()
                        .map_err(|e| format!("--tls-listen {text:?}: {e}"))?,
                );
            }
            "--tls-cert" => tls_cert = Some(PathBuf::from(value("--tls-cert")?)),
            "--tls-key" => tls_key = Some(PathBuf::from(value("--tls-key")?)),
            "--timestamps" => timestamps = true,
            "--events" => events = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let tls = match (tls_listen, tls_cert, tls_key) {
        (Some(addr), Some(cert), Some(key)) => Some((addr, cert, key)),
        (None, None, None) => None,
        _ => return Err("--tls-listen, --tls-cert and --tls-key go together".into()),
    };
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        scenario,
        task_duration,
        tls,
        timestamps,
        events,
    })
}

fn print_call(call: &Call) {
    println!("{}", call.summary());
}

fn print_call_timestamped(call: &Call) {
    let now = monotonic();
    println!(
        "@{}.{:09} {}",
        now.as_secs(),
        now.subsec_nanos(),
        call.summary()
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("fakecloud: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("fakecloud: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let scenario = match &args.scenario {
        Some(path) => Scenario::load(path)?,
        None => Scenario::from_json(DEMO)?,
    };
    let cloud = scenario.build()?;
    if let Some(duration) = args.task_duration {
        cloud.set_task_duration(duration);
    }
    if args.events {
        cloud.record_events(EVENTS_CAP);
    }
    if args.timestamps {
        cloud.set_call_observer(print_call_timestamped);
    } else {
        cloud.set_call_observer(print_call);
    }
    let listener =
        TcpListener::bind(args.listen).map_err(|e| format!("listen on {}: {e}", args.listen))?;
    let server = cloud
        .serve(listener)
        .map_err(|e| format!("serve on {}: {e}", args.listen))?;
    let tls_server = match &args.tls {
        Some((addr, cert, key)) => {
            let tls = TlsConfig::from_pem_files(cert, key).map_err(|e| format!("TLS: {e}"))?;
            let listener = TcpListener::bind(addr).map_err(|e| format!("listen on {addr}: {e}"))?;
            Some(
                cloud
                    .serve_tls(listener, &tls)
                    .map_err(|e| format!("serve on {addr}: {e}"))?,
            )
        }
        None => None,
    };
    let enis = cloud.enis();
    println!(
        "fakecloud: listening on {} ({} instance(s), {} ENI(s), scenario {})",
        server.base_url(),
        scenario.instances.len(),
        enis.len(),
        args.scenario
            .as_ref()
            .map_or_else(|| "built-in demo".to_string(), |p| p.display().to_string()),
    );
    println!("fakecloud: metadata  {}", server.metadata_endpoint());
    println!("fakecloud: API 3.0   {}", server.v3_endpoint());
    println!("fakecloud: legacy    {}", server.legacy_endpoint());
    if let Some(tls) = &tls_server {
        println!("fakecloud: HTTPS     {}", tls.base_url());
    }
    for eni in &enis {
        let ips: Vec<String> = eni.ips.iter().map(|ip| ip.addr.to_string()).collect();
        println!(
            "fakecloud: {} {} {} {} [{}]",
            eni.id,
            eni.mac,
            eni.subnet_cidr,
            eni.attachment.as_ref().map_or_else(
                || "unattached".to_string(),
                |a| format!("{}#{}", a.instance_id, a.device_index)
            ),
            ips.join(", ")
        );
    }
    wait_for_signal().await?;
    println!("fakecloud: stopping");
    if let Some(tls) = tls_server {
        tls.shutdown().await;
    }
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_the_documented_flags() {
        let a = args(&[
            "--listen",
            "127.0.0.1:8080",
            "--scenario=x.json",
            "--task-duration-ms",
            "50",
        ])
        .expect("parses");
        assert_eq!(a.listen, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(a.scenario, Some(PathBuf::from("x.json")));
        assert_eq!(a.task_duration, Some(Duration::from_millis(50)));
        assert!(args(&[]).is_err());
        assert!(args(&["--listen", "nowhere"]).is_err());
        assert!(args(&["--listen", "127.0.0.1:1", "--bogus"]).is_err());
        assert_eq!(a.tls, None);
        assert!(!a.timestamps);
        assert!(!a.events);
        assert!(
            args(&["--listen=127.0.0.1:1", "--events"])
                .expect("parses")
                .events
        );
        assert!(
            args(&["--listen=127.0.0.1:1", "--timestamps"])
                .expect("parses")
                .timestamps
        );
        let t = args(&[
            "--listen=127.0.0.1:1",
            "--tls-listen",
            "127.0.0.1:2",
            "--tls-cert",
            "c.pem",
            "--tls-key=k.pem",
        ])
        .expect("parses");
        assert_eq!(
            t.tls,
            Some((
                "127.0.0.1:2".parse().expect("addr"),
                PathBuf::from("c.pem"),
                PathBuf::from("k.pem")
            ))
        );
        assert!(args(&["--listen", "127.0.0.1:1", "--tls-cert", "c.pem"]).is_err());
        assert!(
            args(&[
                "--listen=127.0.0.1:1",
                "--tls-cert=c.pem",
                "--tls-key=k.pem"
            ])
            .is_err()
        );
    }

    #[test]
    fn the_demo_scenario_builds() {
        let scenario = Scenario::from_json(DEMO).expect("demo parses");
        let cloud = scenario.build().expect("demo builds");
        let eni = cloud.eni("eni-demo0001").expect("demo ENI");
        assert_eq!(eni.mac, "52:54:00:12:34:56");
        assert_eq!(eni.subnet_cidr, "10.0.1.0/24");
        assert_eq!(eni.primary_ip(), Some("10.0.1.10".parse().expect("ip")));
        let ips: Vec<String> = eni.ips.iter().map(|i| i.addr.to_string()).collect();
        assert_eq!(
            ips,
            [
                "10.0.1.10",
                "10.0.1.11",
                "10.0.1.12",
                "10.0.1.13",
                "10.0.1.14",
                "10.0.1.15"
            ]
        );
        assert_eq!(scenario.keys.len(), 1);
    }
}
