//! The shipped monitoring (monitoring/: alert rules and the Grafana dashboard) names only
//! metrics a real daemon exports: every `enisync_…` name in the rules and in the
//! dashboard's queries is a sample name in a real scrape of the binary, running in a
//! namespace against the fake cloud. promtool checks the rules' syntax and behaviour
//! (scripts/monitoring.sh); this checks that they watch something that exists.

#[path = "common/sandbox.rs"]
mod sandbox;

use std::collections::BTreeSet;
use std::time::Duration;

use sandbox::{Layout, Sandbox};

const METRICS_PORT: u16 = 9469;

/// Every `enisync_<name>` token in `text` (a name ends at the first character that is
/// not a lower-case letter, a digit or `_`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("enisync_") {
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..len].trim_end_matches('_');
        if name.len() > "enisync_".len() {
            names.insert(name.to_string());
        }
        rest = &tail[len..];
    }
    names
}

/// The PromQL of every panel target and template query of a dashboard.
fn dashboard_queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(q)) => out.push(q.clone()),
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                dashboard_queries(v, out);
            }
        }
        _ => {}
    }
}

/// Sample names of an OpenMetrics exposition.
fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn name_scanning_finds_names_and_only_names() {
    let names = metric_names(
        "sum(rate(enisync_cloud_calls_total{a=\"b\"}[5m])) / enisync_ready == 0 # enisync_\n\
         see enisync.rules.yml; Enisync_nope",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["enisync_cloud_calls_total", "enisync_ready"]
    );
}

#[test]
fn every_metric_the_rules_and_the_dashboard_name_is_in_a_real_scrape() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring");
    let rules = std::fs::read_to_string(root.join("enisync.rules.yml")).expect("rules");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("enisync-fleet.dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(queries.len() >= 10, "{queries:?}");
    let from_rules = metric_names(&rules);
    let from_dashboard = metric_names(&queries.join("\n"));
    // The rules watch the drift gauges, the waiting releases, alarms, contested and
    // orphaned claims, rate-limit refusals and readiness (the monitoring's brief);
    // losing one is a change to see.
    for needed in [
        "enisync_drift_findings",
        "enisync_contested_ips",
        "enisync_claim_orphans",
        "enisync_parked_releases",
        "enisync_held_releases",
        "enisync_alarms_total",
        "enisync_cloud_limit_refusals_total",
        "enisync_ready",
    ] {
        assert!(from_rules.contains(needed), "the rules lost {needed}");
    }

    let mut sb = Sandbox::new(
        "mon",
        Layout {
            release: vec!["grace = \"500ms\"".into()],
            ..Layout::default()
        },
    );
    sb.start();
    // A release, so that the per-outcome families have samples (none exist before the
    // first decision), and the drift gauges (from the first drift read on).
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.wait_log("IPs returned to the VPC", Duration::from_secs(20));
    sb.wait_log("drift read", Duration::from_secs(20));
    let (status, text) = sb.http_get(METRICS_PORT, "/metrics");
    assert_eq!(status, 200);
    let scraped = scraped_names(&text);
    assert!(scraped.contains("enisync_build_info"), "{text}");
    let missing: Vec<_> = from_rules
        .iter()
        .map(|n| ("rules", n))
        .chain(from_dashboard.iter().map(|n| ("dashboard", n)))
        .filter(|(_, n)| !scraped.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "named in monitoring/ but not in a real scrape: {missing:?}\nscrape:\n{text}"
    );
}
