//! Golden interfaces of the real binary, in a namespace with the fake cloud: the metric
//! families with their label names, the shape of `status --json` (keys and value kinds),
//! and the audit `decision` values in the log. What tools and dashboards read must not
//! change by accident; the label values and the audit values the engine writes are
//! pinned in `src/engine/tests/golden.rs`, whose files are next to these in
//! `tests/data/golden/`. `ENISYNC_BLESS=1` rewrites the files (review the diff).

#[path = "common/golden.rs"]
mod golden_file;
#[path = "common/sandbox.rs"]
mod sandbox;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use golden_file::assert_golden;
use sandbox::{Layout, Sandbox};

const SOON: Duration = Duration::from_secs(20);
const METRICS_PORT: u16 = 9469;

/// `# TYPE` lines, and every sample's metric name with its label names (values vary).
fn metric_families(text: &str) -> String {
    let mut lines = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            lines.insert(format!("type {rest}"));
        } else if !line.starts_with('#') && !line.is_empty() {
            let name_and_labels = line.rsplit_once(' ').map_or(line, |(l, _)| l);
            let (name, labels) = match name_and_labels.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (name_and_labels, ""),
            };
            let label_names: Vec<&str> = labels
                .split(',')
                .filter_map(|l| l.split_once('=').map(|(k, _)| k))
                .collect();
            lines.insert(format!("sample {name}{{{}}}", label_names.join(",")));
        }
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// The kind of every value by path (`intents[].phase.phase: string`); an array's
/// elements share one path, and their kinds are merged.
fn json_shape(
    value: &serde_json::Value,
    path: &str,
    out: &mut BTreeMap<String, BTreeSet<&'static str>>,
) {
    use serde_json::Value;
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_u64() => "u64",
        Value::Number(n) if n.is_i64() => "i64",
        Value::Number(_) => "f64",
        Value::String(_) => "string",
        Value::Array(items) => {
            for item in items {
                json_shape(item, &format!("{path}[]"), out);
            }
            "array"
        }
        Value::Object(map) => {
            for (key, item) in map {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                json_shape(item, &path, out);
            }
            "object"
        }
    };
    out.entry(if path.is_empty() {
        ".".into()
    } else {
        path.into()
    })
    .or_default()
    .insert(kind);
}

#[test]
fn metric_families_status_json_and_audit_decisions_are_golden() {
    let layout = Layout {
        release: vec!["grace = \"20s\"".into()],
        ..Layout::default()
    };
    let mut sb = Sandbox::new("gold", layout);
    // Without the IPv6 deletion probe on every kernel: `warnings` then always holds its
    // line, so the shape does not depend on whether the kernel loads fentry programs.
    // Without CAP_SYS_ADMIN process events are unavailable too, so the removals are
    // made by one `ip -batch` that stays alive until they are read (named from /proc).
    sb.without_bpf();
    sb.start();
    let mut ip = std::process::Command::new("ip")
        .args(["-n", &sb.ns, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("ip -batch");
    let mut stdin = ip.stdin.take().expect("stdin");
    let mut send = |line: &str| {
        use std::io::Write;
        stdin.write_all(line.as_bytes()).expect("write");
        stdin.flush().expect("flush");
    };
    // A removal that came back (recent: cancelled), and one pending its grace period.
    send("addr del 10.0.1.12/24 dev eth1\n");
    sb.wait_log("release pending its grace period", SOON);
    send("addr add 10.0.1.12/24 dev eth1\n");
    sb.wait_log("release cancelled", SOON);
    send("addr del 10.0.1.13/24 dev eth1\n");
    sb.wait_for("two pending records", SOON, || {
        sb.count_log("release pending its grace period") >= 2
    });
    drop(stdin);
    assert!(ip.wait().expect("ip").success());

    let out = sb.cli(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let mut shape = BTreeMap::new();
    json_shape(&doc, "", &mut shape);
    let shape: String = shape
        .iter()
        .map(|(path, kinds)| {
            format!(
                "{path}: {}\n",
                kinds.iter().copied().collect::<Vec<_>>().join("|")
            )
        })
        .collect();
    assert_golden("status_json_shape.txt", &shape);

    let out = sb.cli(&["cancel", "10.0.1.13"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sb.wait_for("two cancellations", SOON, || {
        sb.count_log("release cancelled") >= 2
    });
    // The drift gauges have samples from the first drift read on (none before it).
    sb.wait_log("drift read", SOON);
    let (status, text) = sb.http_get(METRICS_PORT, "/metrics");
    assert_eq!(status, 200);
    assert_golden("metric_families.txt", &metric_families(&text));

    // Every audit decision in the log is one the engine's golden file lists, or one of
    // the daemon's own (pause, routing, operator requests).
    let golden = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden/audit_values.tsv"),
    )
    .expect("audit_values.tsv");
    let mut known: BTreeSet<&str> = golden
        .lines()
        .map(|l| l.split('\t').next().unwrap_or(l))
        .collect();
    known.extend([
        "paused",
        "resumed",
        "routing",
        "routing_dry_run",
        "operator",
    ]);
    let log = sb.log_text();
    let seen: BTreeSet<&str> = log
        .split("decision=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(!seen.is_empty(), "no audit record in\n{log}");
    for decision in &seen {
        assert!(
            known.contains(decision),
            "decision {decision:?} is not golden"
        );
    }
    for decision in ["pending", "cancelled"] {
        assert!(seen.contains(decision), "{decision} missing from\n{log}");
    }
}
