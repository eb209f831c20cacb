//! The `fakecloud` binary: demo scenario, one line per call, control endpoints, SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

const DEMO_ID: &str = "AKIDdemo0000000000000000000000000000";
const DEMO_KEY: &str = "demoSecretKey0000000000000000000";

#[tokio::test]
async fn the_binary_serves_the_demo_prints_calls_and_stops_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fakecloud"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--task-duration-ms",
            "100",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start fakecloud");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = |want: &str| -> String {
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("waiting for {want:?}: {e}"));
            if line.contains(want) {
                return line;
            }
        }
    };
    next_line("listening on");

    let base = format!("http://127.0.0.1:{port}");
    let http = enisync::cloud::http_client_builder()
        .build()
        .expect("client");
    let id = http
        .get(format!("{base}/latest/meta-data/instance-id"))
        .send()
        .await
        .expect("metadata")
        .text()
        .await
        .expect("text");
    assert_eq!(id, "ins-demo0001");
    assert!(next_line("meta instance-id").ends_with("-> Success (from 127.0.0.1)"));

    let body = json!({"NetworkInterfaceId": "eni-demo0001", "PrivateIpAddresses": [{"PrivateIpAddress": "10.0.1.13"}]}).to_string();
    let host = format!("127.0.0.1:{port}");
    let ts = wall_now();
    let sig = enisync::cloud::sign::tc3_sign(
        &enisync::cloud::sign::Tc3Request {
            method: "POST",
            host: &host,
            query: "",
            content_type: "application/json",
            payload: body.as_bytes(),
            service: "vpc",
            timestamp: ts,
        },
        DEMO_KEY,
    );
    let r: Value = http
        .post(format!("{base}/"))
        .header("Content-Type", "application/json")
        .header("Authorization", sig.authorization(DEMO_ID, "vpc"))
        .header("X-TC-Action", "UnassignPrivateIpAddresses")
        .header("X-TC-Version", "2017-03-12")
        .header("X-TC-Timestamp", ts.to_string())
        .header("X-TC-Region", "ap-guangzhou")
        .body(body)
        .send()
        .await
        .expect("unassign")
        .json()
        .await
        .expect("json");
    assert!(r["Response"]["Error"].is_null(), "{r}");
    let line = next_line("UnassignPrivateIpAddresses");
    assert!(
        line.starts_with("v3 UnassignPrivateIpAddresses eni-demo0001 [10.0.1.13] task="),
        "{line}"
    );
    assert!(line.contains("-> Success"), "{line}");

    let calls: Value = http
        .get(format!("{base}/_fake/calls"))
        .send()
        .await
        .expect("calls")
        .json()
        .await
        .expect("json");
    let calls = calls.as_array().expect("array");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["action"], "UnassignPrivateIpAddresses");
    assert_eq!(calls[1]["surface"], "v3");

    tokio::time::sleep(Duration::from_millis(200)).await;
    let state: Value = http
        .get(format!("{base}/_fake/state"))
        .send()
        .await
        .expect("state")
        .json()
        .await
        .expect("json");
    assert_eq!(state["tasks"][0]["status"], "SUCCESS", "{state}");
    let eni = state["enis"]
        .as_array()
        .expect("enis")
        .iter()
        .find(|e| e["id"] == "eni-demo0001")
        .expect("demo eni");
    assert_eq!(eni["ips"].as_array().expect("ips").len(), 5);
    assert!(
        !state.to_string().contains(DEMO_KEY),
        "no secrets in the state dump"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit status {status}");
}
