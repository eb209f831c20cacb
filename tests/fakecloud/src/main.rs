//! `fakecloud`: the fake Tencent Cloud as a process, for the README demo and scripts.
//!
//! ```text
//! fakecloud --listen 127.0.0.1:8080 [--scenario FILE.json] [--task-duration-ms N]
//! ```
//!
//! Without `--scenario` it serves the built-in demo (`demo-scenario.json`). Prints one
//! line per call to stdout; serves `GET /_fake/calls` and `GET /_fake/state` as JSON;
//! exits cleanly on SIGTERM or SIGINT.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use enisync_fakecloud::{Call, Scenario};

const DEMO: &str = include_str!("../demo-scenario.json");

const USAGE: &str =
    "usage: fakecloud --listen ADDR:PORT [--scenario FILE.json] [--task-duration-ms N]

Serves a fake Tencent Cloud on one listener:
  /latest/meta-data/   instance metadata (CAM role credentials included)
  POST /               VPC API 3.0 (TC3-HMAC-SHA256)
  /v2/index.php        legacy VPC API (HmacSHA1/HmacSHA256)
  GET /_fake/calls     the call log, JSON
  GET /_fake/state     instances, ENIs, tasks, faults, JSON
Without --scenario the built-in demo scenario is loaded.";

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    scenario: Option<PathBuf>,
    task_duration: Option<Duration>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen = None;
    let mut scenario = None;
    let mut task_duration = None;
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
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        scenario,
        task_duration,
    })
}

fn print_call(call: &Call) {
    println!("{}", call.summary());
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
    cloud.set_call_observer(print_call);
    let listener =
        TcpListener::bind(args.listen).map_err(|e| format!("listen on {}: {e}", args.listen))?;
    let server = cloud
        .serve(listener)
        .map_err(|e| format!("serve on {}: {e}", args.listen))?;
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
