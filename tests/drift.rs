//! `enisync drift` and the `enisync_drift_*` gauges, from the real binary in a namespace
//! against the fake cloud: each category produced for real (an address the cloud binds
//! and the host never had, an address on the ENI's link the cloud does not bind, a stale
//! `from` rule, a metadata service that disagrees with the listing), the two-read rule,
//! `release.exclude`, a failed read that keeps the last values and says so, and the JSON
//! pinned by `tests/data/golden/drift.json` (`ENISYNC_BLESS=1` rewrites it).

#[path = "common/golden.rs"]
mod golden_file;
#[path = "common/sandbox.rs"]
mod sandbox;

use std::time::Duration;

use enisync_fakecloud::{Fault, Surface};
use golden_file::assert_golden;
use sandbox::{ENI1, Layout, MAC1, SECRET_ID, SECRET_KEY, Sandbox};
use serde_json::Value;

const SOON: Duration = Duration::from_secs(20);
const METRICS_PORT: u16 = 9469;
/// `DRIFT_FRESH_READ_MIN` and a margin: the next `enisync drift` reads afresh.
const NEXT_FRESH: Duration = Duration::from_millis(10_500);

fn drift_json(sb: &Sandbox) -> Value {
    let out = sb.cli(&["drift", "--json"]);
    assert!(
        out.status.success(),
        "drift --json: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("drift --json is JSON")
}

fn findings<'a>(doc: &'a Value, category: &str) -> Vec<&'a Value> {
    doc["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["category"] == category)
        .collect()
}

fn gauge(text: &str, sample: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
}

fn category(doc: &Value, key: &str) -> Value {
    doc["categories"]
        .as_array()
        .expect("categories")
        .iter()
        .find(|c| c["category"] == key)
        .cloned()
        .expect("category")
}

/// Volatile values (times, ages, read counts) replaced, so the document's shape and
/// findings can be compared with the golden file.
fn normalised(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let volatile = k.ends_with("_unix")
                        || matches!(
                            k.as_str(),
                            "read" | "last_good" | "computed" | "first_seen" | "seen_for_secs"
                        );
                    let v = match v {
                        Value::Null => Value::Null,
                        _ if volatile => Value::String("<volatile>".into()),
                        other => normalised(other),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalised).collect()),
        other => other.clone(),
    }
}

#[test]
fn each_category_is_reported_confirmed_by_two_reads_counted_and_kept_through_a_failed_read() {
    let layout = Layout {
        release: vec!["exclude = [\"10.0.1.15\"]".into()],
        ..Layout::default()
    };
    let mut sb = Sandbox::new("drift", layout);
    // Before enisync starts, so that it never sees them leave (clause 1: never released):
    // 10.0.1.14 and the excluded 10.0.1.15 are bound by the cloud and on no link.
    sb.ip("addr del 10.0.1.14/24 dev eth1");
    sb.ip("addr del 10.0.1.15/24 dev eth1");
    // On the ENI's link, not bound by the cloud.
    sb.ip("addr add 10.0.1.50/24 dev eth1");
    // A rule for an address on no link.
    sb.ip("rule add from 10.0.1.77/32 lookup 3501 pref 3500");
    // A metadata service that disagrees: another primary, and an IP the listing does
    // not bind to that ENI (nor to any other).
    let mac_path = format!("network/interfaces/macs/{MAC1}");
    sb.fake.set_metadata_override(
        &format!("{mac_path}/local-ipv4s"),
        Some("10.0.1.10/\n10.0.1.11/\n10.0.1.12/\n10.0.1.13/\n10.0.1.14/\n10.0.1.15/\n10.0.1.88/"),
    );
    sb.fake
        .set_metadata_override(&format!("{mac_path}/primary-local-ipv4"), Some("10.0.1.99"));
    sb.start();
    sb.wait_log("drift read", SOON);

    // One read: everything is unconfirmed, and the gauges count nothing yet.
    let doc = drift_json(&sb);
    assert_eq!(doc["freshness"]["kind"], "rate_limited", "{doc:#}");
    assert!(
        doc["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .all(|f| f["confirmed"] == false),
        "{doc:#}"
    );
    let (_, metrics) = sb.http_get(METRICS_PORT, "/metrics");
    for c in [
        "leak_candidate",
        "unbound_on_host",
        "stale_rule",
        "metadata_mismatch",
    ] {
        assert_eq!(
            gauge(
                &metrics,
                &format!("enisync_drift_findings{{category=\"{c}\"}}")
            ),
            Some(0),
            "{c} after one read:\n{metrics}"
        );
    }
    let table = sb.cli(&["drift"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("unconfirmed"), "{table}");
    assert!(table.contains("two consecutive reads"), "{table}");

    // The second read confirms them.
    std::thread::sleep(NEXT_FRESH);
    let doc = drift_json(&sb);
    assert_eq!(doc["freshness"]["kind"], "fresh", "{doc:#}");
    let leaks = findings(&doc, "leak_candidate");
    assert_eq!(leaks.len(), 1, "10.0.1.15 is excluded: {doc:#}");
    assert_eq!(leaks[0]["ip"], "10.0.1.14");
    assert_eq!(leaks[0]["eni_id"], ENI1);
    assert_eq!(leaks[0]["confirmed"], true);
    assert!(leaks[0]["seen_for_secs"].as_u64().expect("age") >= 10);
    let unbound = findings(&doc, "unbound_on_host");
    assert_eq!(unbound.len(), 1, "{doc:#}");
    assert_eq!(unbound[0]["ip"], "10.0.1.50");
    assert_eq!(unbound[0]["link"], "eth1");
    assert_eq!(unbound[0]["bound_to"], Value::Null);
    let rules = findings(&doc, "stale_rule");
    assert_eq!(rules.len(), 1, "{doc:#}");
    assert_eq!(rules[0]["ip"], "10.0.1.77");
    assert_eq!(rules[0]["table"], 3501);
    let meta = findings(&doc, "metadata_mismatch");
    let kinds: Vec<&str> = meta.iter().filter_map(|f| f["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["primary_differs", "metadata_ip_elsewhere"],
        "{doc:#}"
    );
    assert!(meta.iter().all(|f| f["confirmed"] == true));
    let (_, metrics) = sb.http_get(METRICS_PORT, "/metrics");
    for (c, n) in [
        ("leak_candidate", 1),
        ("unbound_on_host", 1),
        ("stale_rule", 1),
        ("metadata_mismatch", 2),
    ] {
        assert_eq!(
            gauge(
                &metrics,
                &format!("enisync_drift_findings{{category=\"{c}\"}}")
            ),
            Some(n),
            "{c}:\n{metrics}"
        );
    }
    for source in ["host", "api", "metadata"] {
        assert_eq!(
            gauge(
                &metrics,
                &format!("enisync_drift_read_ok{{source=\"{source}\"}}")
            ),
            Some(1),
            "{source}:\n{metrics}"
        );
    }
    let mut golden = serde_json::to_string_pretty(&normalised(&doc)).expect("json");
    golden.push('\n');
    assert_golden("drift.json", &golden);

    // The table names each finding, escapes nothing it need not, and says how to act.
    let out = sb.cli(&["drift"]);
    let table = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "10.0.1.14 bound to eni-second01",
        "10.0.1.50 on eth1 (eni-second01): the cloud binds it to no ENI of this instance",
        "from 10.0.1.77/32 lookup 3501",
        "primary 10.0.1.99 in the metadata, 10.0.1.10 in the listing",
        "confirm an IP is unused first",
    ] {
        assert!(table.contains(needle), "{needle:?} missing from\n{table}");
    }

    // The metadata service fails and the listing errs: never "no IPs". The findings
    // that need them keep their values, marked stale, and the gauges say the read failed.
    sb.fake.inject_on(
        Surface::Metadata,
        "network/interfaces/macs",
        Fault::Http { status: 500 },
        1000,
    );
    sb.fake.inject(
        "DescribeNetworkInterfaces",
        Fault::error("UnauthorizedOperation"),
        1000,
    );
    std::thread::sleep(NEXT_FRESH);
    let doc = drift_json(&sb);
    assert_eq!(doc["freshness"]["kind"], "fresh", "{doc:#}");
    let sources: Vec<(&str, &str)> = doc["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|s| {
            (
                s["source"].as_str().unwrap_or(""),
                s["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        sources,
        [("host", "ok"), ("api", "failed"), ("metadata", "failed")],
        "{doc:#}"
    );
    assert!(doc["sources"][1]["last_good"].is_string(), "{doc:#}");
    let leak = category(&doc, "leak_candidate");
    assert_eq!(leak["stale"], true, "{doc:#}");
    assert_eq!(leak["confirmed"], 1, "kept, not zeroed: {doc:#}");
    assert_eq!(category(&doc, "stale_rule")["stale"], false);
    let (_, metrics) = sb.http_get(METRICS_PORT, "/metrics");
    assert_eq!(
        gauge(
            &metrics,
            "enisync_drift_findings{category=\"leak_candidate\"}"
        ),
        Some(1),
        "{metrics}"
    );
    assert_eq!(
        gauge(
            &metrics,
            "enisync_drift_findings{category=\"metadata_mismatch\"}"
        ),
        Some(2),
        "{metrics}"
    );
    assert_eq!(
        gauge(&metrics, "enisync_drift_read_ok{source=\"api\"}"),
        Some(0),
        "{metrics}"
    );
    assert_eq!(
        gauge(&metrics, "enisync_drift_read_ok{source=\"metadata\"}"),
        Some(0),
        "{metrics}"
    );
    assert!(
        gauge(
            &metrics,
            "enisync_drift_last_good_read_timestamp_seconds{source=\"api\"}"
        )
        .is_some_and(|t| t > 1_700_000_000),
        "{metrics}"
    );
    let out = sb.cli(&["drift"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("STALE: api"), "{table}");
    // The failed read's errors name codes and paths, never a key.
    let json = doc.to_string();
    for text in [&json, &table.to_string(), &metrics] {
        assert!(
            !text.contains(SECRET_KEY) && !text.contains(SECRET_ID),
            "a secret in\n{text}"
        );
    }

    // Read-only: nothing was released, and the stale rule is still there.
    assert!(sb.unassigns().is_empty(), "{:?}", sb.unassigns());
    assert!(sb.ip("rule show").contains("10.0.1.77"));
}

#[test]
fn fresh_reads_are_rate_limited_whatever_the_callers_do() {
    let mut sb = Sandbox::new("driftrate", Layout::default());
    sb.start();
    sb.wait_log("drift read", SOON);
    std::thread::sleep(NEXT_FRESH);
    sb.fake.clear_calls();
    // Twelve callers at once (the socket serves 16): at most one listing for them all.
    let handles: Vec<_> = (0..12)
        .map(|_| {
            let socket = sb.socket();
            std::thread::spawn(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_enisync"))
                    .args(["drift", "--json", "--socket"])
                    .arg(socket)
                    .output()
                    .expect("run the CLI")
            })
        })
        .collect();
    let mut fresh = 0;
    for h in handles {
        let out = h.join().expect("join");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
        if doc["freshness"]["kind"] == "fresh" {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "exactly one caller got a fresh read");
    let listings = sb.fake.calls_of("DescribeNetworkInterfaces").len();
    assert_eq!(listings, 1, "one listing for twelve callers");
    // A scrape never reads.
    for _ in 0..5 {
        let (status, _) = sb.http_get(METRICS_PORT, "/metrics");
        assert_eq!(status, 200);
    }
    assert_eq!(sb.fake.calls_of("DescribeNetworkInterfaces").len(), 1);
}

#[test]
fn a_reload_of_release_exclude_filters_leak_candidates_at_the_next_read() {
    let mut sb = Sandbox::new("driftexcl", Layout::default());
    sb.ip("addr del 10.0.1.14/24 dev eth1");
    sb.start();
    sb.wait_log("drift read", SOON);
    let doc = drift_json(&sb);
    let leaks: Vec<&Value> = findings(&doc, "leak_candidate");
    assert_eq!(leaks.len(), 1, "{doc:#}");
    assert_eq!(leaks[0]["ip"], "10.0.1.14");
    // A warm pool: excluded by a reload, without a restart.
    sb.edit_config(|t| t.replace("[release]\n", "[release]\nexclude = [\"10.0.1.0/28\"]\n"));
    sb.signal("HUP");
    sb.wait_log("settings reloaded", SOON);
    std::thread::sleep(NEXT_FRESH);
    let doc = drift_json(&sb);
    assert_eq!(doc["freshness"]["kind"], "fresh", "{doc:#}");
    assert!(findings(&doc, "leak_candidate").is_empty(), "{doc:#}");
    let (_, metrics) = sb.http_get(METRICS_PORT, "/metrics");
    assert_eq!(
        gauge(
            &metrics,
            "enisync_drift_findings{category=\"leak_candidate\"}"
        ),
        Some(0),
        "{metrics}"
    );
}

/// An address of `claim.cidrs` bound to this node's ENI and on no link is a
/// `claim_orphan`, never a `leak_candidate`: unconfirmed within `claim.orphan_after`
/// (the shortest, 1 min), confirmed and counted by the gauge after it.
#[test]
fn a_claim_address_bound_here_on_no_link_is_a_claim_orphan_not_a_leak_candidate() {
    let layout = Layout {
        extra_config: "\n[claim]\ncidrs = [\"10.0.1.14/32\"]\npeers = [\"ins-peer0001\"]\n\
                       orphan_after = \"1m\"\n"
            .into(),
        ..Layout::default()
    };
    let mut sb = Sandbox::new("driftorph", layout);
    // Before the start: the engine never sees it leave (nor claims it).
    sb.ip("addr del 10.0.1.14/24 dev eth1");
    sb.start();
    sb.wait_log("drift read", SOON);
    let first_read = std::time::Instant::now();
    std::thread::sleep(NEXT_FRESH);
    let doc = drift_json(&sb);
    assert_eq!(doc["freshness"]["kind"], "fresh", "{doc:#}");
    assert!(findings(&doc, "leak_candidate").is_empty(), "{doc:#}");
    let orphans = findings(&doc, "claim_orphan");
    assert_eq!(orphans.len(), 1, "{doc:#}");
    assert_eq!(orphans[0]["ip"], "10.0.1.14");
    assert_eq!(orphans[0]["eni_id"], ENI1);
    assert_eq!(orphans[0]["kind"], "claim_orphan");
    // Two reads, but not yet absent for claim.orphan_after.
    assert_eq!(orphans[0]["confirmed"], false, "{doc:#}");
    let (_, metrics) = sb.http_get(METRICS_PORT, "/metrics");
    assert_eq!(
        gauge(
            &metrics,
            "enisync_drift_findings{category=\"claim_orphan\"}"
        ),
        Some(0),
        "{metrics}"
    );

    let wait = Duration::from_secs(62).saturating_sub(first_read.elapsed());
    std::thread::sleep(wait);
    let doc = drift_json(&sb);
    assert_eq!(doc["freshness"]["kind"], "fresh", "{doc:#}");
    let orphans = findings(&doc, "claim_orphan");
    assert_eq!(orphans.len(), 1, "{doc:#}");
    assert_eq!(orphans[0]["confirmed"], true, "{doc:#}");
    assert!(findings(&doc, "leak_candidate").is_empty(), "{doc:#}");
    assert_eq!(category(&doc, "claim_orphan")["confirmed"], 1, "{doc:#}");
    assert_eq!(category(&doc, "leak_candidate")["confirmed"], 0, "{doc:#}");
    let (_, metrics) = sb.http_get(METRICS_PORT, "/metrics");
    for (c, n) in [("claim_orphan", 1), ("leak_candidate", 0)] {
        assert_eq!(
            gauge(
                &metrics,
                &format!("enisync_drift_findings{{category=\"{c}\"}}")
            ),
            Some(n),
            "{c}:\n{metrics}"
        );
    }
    let table = sb.cli(&["drift"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("enisync release 10.0.1.14"),
        "the table says how to free it:\n{table}"
    );
    // Read-only: nothing was released.
    assert!(sb.fake.calls_of("UnassignPrivateIpAddresses").is_empty());
}
