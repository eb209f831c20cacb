//! Human tables for `enisync status` and `enisync plan`, rendered from the JSON the
//! daemon answers (the same document `--json` prints, so the two never disagree).

use std::fmt::Write as _;

use serde_json::Value;

/// Text that reaches an operator's terminal from elsewhere (a cloud error message, a
/// remover's process name, which any local user chooses with `prctl(PR_SET_NAME)`) must
/// not drive it: an escape sequence could rewrite earlier lines of the table, hide an IP
/// or fake a status. Control characters (C0, DEL, C1) and the invisible characters that
/// reorder or hide text (bidirectional overrides and isolates, zero-width marks) are
/// shown as `\x1b` or `\u{202e}`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let hidden = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        if c.is_control() || hidden {
            let n = u32::from(c);
            if n < 0x80 {
                let _ = write!(out, "\\x{n:02x}");
            } else {
                let _ = write!(out, "\\u{{{n:x}}}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The document with every string (and key) passed through [`escape`]: the tables are
/// built from it, so no field, present or added later, reaches the terminal raw.
fn escaped(v: &Value) -> Value {
    match v {
        Value::String(t) => Value::String(escape(t)),
        Value::Array(items) => Value::Array(items.iter().map(escaped).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (escape(k), escaped(v))).collect())
        }
        other => other.clone(),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(t) => t.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(s).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        l.trim_end().to_string()
    };
    out.push_str(&line(header.to_vec()));
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
}

fn secs(ms: &Value) -> String {
    ms.as_u64()
        .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0))
}

fn phase(intent: &Value) -> String {
    let p = &intent["phase"];
    let name = s(&p["phase"]);
    if intent["held_reason"]["reason"].as_str() == Some("unknown_remover") {
        return format!("{name} (unknown remover)");
    }
    match (p.get("why"), p.get("task_id")) {
        (Some(why), _) => format!("{name} ({})", s(why)),
        (_, Some(task)) => format!("{name} (task {})", s(task)),
        _ => name,
    }
}

fn remover(intent: &Value) -> String {
    let r = &intent["remover"];
    let names: Vec<&str> = r
        .get("process")
        .and_then(Value::as_str)
        .into_iter()
        .chain(
            r.get("ancestors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str),
        )
        .collect();
    let unknown = matches!(r["identity"]["kind"].as_str(), Some("unknown" | "failed"));
    match (names.is_empty(), r.get("port_id")) {
        (false, _) if unknown => format!("unknown: {} ← ?", names.join(" ← ")),
        (false, _) => names.join(" ← "),
        (true, Some(port)) if unknown => format!("unknown (port {port})"),
        (true, Some(port)) => format!("port {port}"),
        _ => "unknown (resync)".into(),
    }
}

/// The `status` table.
pub fn render_status(doc: &Value) -> String {
    let doc = &escaped(doc);
    let mut out = String::new();
    let mode = if doc["dry_run"].as_bool() == Some(true) {
        "dry run"
    } else {
        "armed"
    };
    let paused = if doc["paused"].as_bool() == Some(true) {
        let by = doc["paused_by_uid"]
            .as_u64()
            .map_or_else(|| "an unknown user".to_string(), |u| format!("uid {u}"));
        let mut text = format!("paused since {} by {by}", s(&doc["paused_since"]));
        if let Some(note) = doc["paused_note"].as_str() {
            let _ = write!(text, " ({note})");
        }
        text
    } else {
        "running".into()
    };
    let _ = writeln!(out, "enisync: {paused}, releases {mode}\n");
    if let Some(waiting) = doc["starting"].as_str() {
        let _ = writeln!(out, "STARTING: {waiting}\n");
    }
    for warning in doc["warnings"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "WARNING: {}\n", s(warning));
    }
    out.push_str("LINKS\n");
    let links: Vec<Vec<String>> = doc["links"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            vec![
                s(&l["name"]),
                if l["up"].as_bool() == Some(true) {
                    "up"
                } else {
                    "down"
                }
                .into(),
                s(&l["mac"]),
                s(&l["eni_id"]),
                s(&l["vpc_id"]),
                s(&l["primary_ip"]),
                s(&l["aux_ips"]),
            ]
        })
        .collect();
    table(
        &mut out,
        &["LINK", "STATE", "MAC", "ENI", "VPC", "PRIMARY", "AUX IPS"],
        &links,
    );

    out.push_str("\nPENDING RELEASES\n");
    let intents: Vec<Vec<String>> = doc["intents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            vec![
                s(&i["ip"]),
                s(&i["link_name"]),
                s(&i["eni_id"]),
                phase(i),
                secs(&i["due_in_ms"]),
                remover(i),
            ]
        })
        .collect();
    if intents.is_empty() {
        out.push_str("none\n");
    } else {
        table(
            &mut out,
            &["IP", "LINK", "ENI", "PHASE", "DUE IN", "REMOVER"],
            &intents,
        );
    }

    out.push_str("\nLAST RESULTS\n");
    let recent: Vec<Vec<String>> = doc["recent"]
        .as_array()
        .into_iter()
        .flatten()
        .take(10)
        .map(|f| {
            let o = &f["outcome"];
            let detail = match (o.get("reason"), o.get("detail"), o.get("task_id")) {
                (Some(r), Some(d), _) => format!("{} ({})", s(r), s(d)),
                (Some(r), None, _) => s(r),
                (_, _, Some(t)) => format!("task {}", s(t)),
                _ => String::new(),
            };
            vec![s(&f["ip"]), s(&f["eni_id"]), s(&o["outcome"]), detail]
        })
        .collect();
    if recent.is_empty() {
        out.push_str("none\n");
    } else {
        table(&mut out, &["IP", "ENI", "OUTCOME", "DETAIL"], &recent);
    }

    for (title, key) in [("ALARMS", "alarms"), ("LAST ERRORS", "errors")] {
        let _ = writeln!(out, "\n{title}");
        let items: Vec<&Value> = doc[key].as_array().into_iter().flatten().take(10).collect();
        if items.is_empty() {
            out.push_str("none\n");
        }
        for item in items {
            let _ = writeln!(out, "{}", s(item));
        }
    }
    let c = &doc["counters"];
    let _ = writeln!(
        out,
        "\nTOTALS  released {}  already gone {}  cancelled {}  refused {}  held {}  alarms {}",
        s(&c["released"]),
        s(&c["already_gone"]),
        s(&c["cancelled"]),
        s(&c["refused"]),
        s(&c["held"]),
        s(&c["alarms"])
    );
    out
}

/// The `plan` table.
pub fn render_plan(doc: &Value) -> String {
    let doc = &escaped(doc);
    let mut out = String::new();
    if doc["paused"].as_bool() == Some(true) {
        out.push_str("releases are PAUSED: nothing would be sent until `enisync resume`\n");
    }
    if doc["dry_run"].as_bool() == Some(true) {
        out.push_str("dry run: calls are logged, never sent\n");
    }
    let rows = |key: &str| -> Vec<Vec<String>> {
        doc[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                vec![
                    s(&p["ip"]),
                    s(&p["link"]),
                    s(&p["eni_id"]),
                    secs(&p["due_in_ms"]),
                    s(&p["note"]),
                ]
            })
            .collect()
    };
    for (title, key) in [
        ("WOULD RELEASE NOW", "would_release"),
        ("NOT YET", "not_yet"),
    ] {
        let _ = writeln!(out, "{title}");
        let r = rows(key);
        if r.is_empty() {
            out.push_str("none\n");
        } else {
            table(&mut out, &["IP", "LINK", "ENI", "DUE IN", "NOTE"], &r);
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "HELD (confirm with `enisync release --held`)\n{}",
        s(&doc["held"]).replace('-', "none")
    );
    out.push_str("\nROUTING CHANGES\n");
    let routing: Vec<&Value> = doc["routing"].as_array().into_iter().flatten().collect();
    if routing.is_empty() {
        out.push_str("none\n");
    }
    for line in routing {
        let _ = writeln!(out, "{}", s(line));
    }
    out
}

/// A duration in whole seconds, shortly: `45s`, `12m`, `3h`, `2d`.
fn age(secs: &Value) -> String {
    match secs.as_u64() {
        None => "-".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 2 * 3600 => format!("{}m", s / 60),
        Some(s) if s < 2 * 86_400 => format!("{}h", s / 3600),
        Some(s) => format!("{}d", s / 86_400),
    }
}

/// One finding in words.
fn finding(f: &Value) -> String {
    let (ip, mac, eni) = (s(&f["ip"]), s(&f["mac"]), s(&f["eni_id"]));
    let elsewhere = |key: &str| match &f[key] {
        Value::Null => "no ENI of this instance".to_string(),
        other => s(other),
    };
    match f["kind"].as_str().unwrap_or("") {
        "leak_candidate" => format!("{ip} bound to {eni} ({mac}), on no link"),
        "unbound_on_host" => format!(
            "{ip} on {} ({eni}): the cloud binds it to {}",
            s(&f["link"]),
            elsewhere("bound_to")
        ),
        "stale_rule" => format!(
            "from {ip}/32 lookup {} pref {} proto {}: {ip} is on no link",
            s(&f["table"]),
            s(&f["priority"]),
            s(&f["protocol"])
        ),
        "mac_only_in_metadata" => {
            format!("the metadata lists MAC {mac}; the listing has no ENI with it")
        }
        "mac_only_in_api" => {
            format!("the listing has {eni} ({mac}); the metadata does not list the MAC")
        }
        "primary_differs" => format!(
            "{eni} ({mac}): primary {} in the metadata, {} in the listing",
            s(&f["metadata"]),
            s(&f["api"])
        ),
        "metadata_ip_elsewhere" => format!(
            "the metadata lists {ip} under {mac}; the listing binds it to {}",
            elsewhere("api_eni")
        ),
        "api_ip_not_in_metadata" => {
            format!("the listing binds {ip} to {eni} ({mac}); the metadata does not list it")
        }
        other => other.to_string(),
    }
}

/// The `drift` table.
pub fn render_drift(doc: &Value) -> String {
    let doc = &escaped(doc);
    let mut out = String::from("drift report: read-only, enisync never acts on it\n");
    let how = match doc["freshness"]["kind"].as_str() {
        Some("fresh") => "read now for this request".to_string(),
        Some("rate_limited") => format!(
            "the last read: a fresh one is made at most once per {}s",
            s(&doc["freshness"]["min_secs"])
        ),
        _ => "the last periodic read".to_string(),
    };
    let _ = writeln!(
        out,
        "data read {} ({how}); {} reads since start",
        s(&doc["read"]),
        s(&doc["reads"])
    );
    out.push_str("\nSOURCES\n");
    let rows: Vec<Vec<String>> = doc["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|src| {
            vec![
                s(&src["source"]),
                s(&src["state"]),
                s(&src["last_good"]),
                s(&src["error"]),
            ]
        })
        .collect();
    table(
        &mut out,
        &["SOURCE", "STATE", "LAST GOOD READ", "ERROR"],
        &rows,
    );
    out.push_str(
        "\nCOUNTS (the gauges count confirmed findings only: seen in two consecutive reads)\n",
    );
    let rows: Vec<Vec<String>> = doc["categories"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let note = if c["stale"].as_bool() == Some(true) {
                format!(
                    "STALE: {} not read in the last read; values as of then",
                    s(&c["unread_sources"])
                )
            } else {
                String::new()
            };
            vec![
                s(&c["category"]),
                s(&c["confirmed"]),
                s(&c["unconfirmed"]),
                s(&c["computed"]),
                note,
            ]
        })
        .collect();
    table(
        &mut out,
        &["CATEGORY", "CONFIRMED", "UNCONFIRMED", "AS OF", "NOTE"],
        &rows,
    );
    out.push_str("\nFINDINGS\n");
    let rows: Vec<Vec<String>> = doc["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            vec![
                s(&f["category"]),
                if f["confirmed"].as_bool() == Some(true) {
                    "confirmed".into()
                } else {
                    "unconfirmed".into()
                },
                age(&f["seen_for_secs"]),
                finding(f),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("none\n");
    } else {
        table(
            &mut out,
            &["CATEGORY", "STATE", "SEEN FOR", "FINDING"],
            &rows,
        );
    }
    out.push_str(
        "\nTo act on a finding, by hand: README, \"Drift report\" (confirm an IP is unused first).\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn status_doc() -> Value {
        json!({
            "links": [{"name": "eth1", "index": 3, "mac": "52:54:00:12:34:56", "up": true,
                       "eni_id": "eni-second01", "vpc_id": "vpc-sandbox", "primary_ip": "10.0.1.10",
                       "aux_ips": ["10.0.1.11", "10.0.1.13"], "cloud_ips": ["10.0.1.11", "10.0.1.12", "10.0.1.13"]}],
            "intents": [{"ip": "10.0.1.12", "link": 3, "link_name": "eth1", "prefix": 24, "mac": "52:54:00:12:34:56",
                         "eni_id": "eni-second01", "remover": {"port_id": 4242, "process": "ip"},
                         "observed_unix_ms": 1, "due_in_ms": 28500, "phase": {"phase": "pending"},
                         "attempts": 0, "task_failures": 0, "sent": false}],
            "recent": [{"ip": "10.0.1.14", "eni_id": "eni-second01", "outcome": {"outcome": "released", "task_id": "t-1"}},
                       {"ip": "10.0.1.15", "eni_id": "eni-second01",
                        "outcome": {"outcome": "cancelled", "reason": "readded"}}],
            "alarms": [],
            "errors": ["@1700000000 10.0.1.16: describe failed: Transport.Timeout"],
            "counters": {"released": 1, "already_gone": 0, "cancelled": 1, "refused": 0, "held": 0,
                         "alarms": 0, "unassign_calls": 1, "dry_run_calls": 0},
            "paused": false,
            "dry_run": false
        })
    }

    #[test]
    fn status_table_golden() {
        let expected = "\
enisync: running, releases armed

LINKS
LINK  STATE  MAC                ENI           VPC          PRIMARY    AUX IPS
eth1  up     52:54:00:12:34:56  eni-second01  vpc-sandbox  10.0.1.10  10.0.1.11 10.0.1.13

PENDING RELEASES
IP         LINK  ENI           PHASE    DUE IN  REMOVER
10.0.1.12  eth1  eni-second01  pending  28.5s   ip

LAST RESULTS
IP         ENI           OUTCOME    DETAIL
10.0.1.14  eni-second01  released   task t-1
10.0.1.15  eni-second01  cancelled  readded

ALARMS
none

LAST ERRORS
@1700000000 10.0.1.16: describe failed: Transport.Timeout

TOTALS  released 1  already gone 0  cancelled 1  refused 0  held 0  alarms 0
";
        assert_eq!(render_status(&status_doc()), expected);
    }

    #[test]
    fn control_characters_from_the_cloud_and_process_names_are_escaped() {
        let mut doc = status_doc();
        // A process name that would clear the screen and move the cursor, and a cloud
        // message with a newline (a fake table row), a C1 CSI and a bidi override.
        doc["intents"][0]["remover"]["process"] = json!("ip\u{1b}[2J\u{1b}[1;1H");
        doc["errors"][0] =
            json!("describe failed: Bad\n10.0.1.99  eni-x  released\u{9b}31m\u{202e}gnp.exe");
        let text = render_status(&doc);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(!text.contains('\u{202e}'), "{text:?}");
        assert!(text.contains("ip\\x1b[2J\\x1b[1;1H"), "{text}");
        assert!(
            text.contains("Bad\\x0a10.0.1.99  eni-x  released\\u{9b}31m\\u{202e}gnp.exe"),
            "{text}"
        );
        let plan = render_plan(&json!({
            "would_release": [{"ip": "10.0.1.12", "link": "eth1\u{7}", "eni_id": "eni-1",
                               "due_in_ms": 0, "note": "the cloud says: \u{1b}]0;owned\u{7}"}],
            "not_yet": [], "held": [], "routing": ["rule\r"], "paused": false, "dry_run": false
        }));
        assert!(
            !plan.chars().any(|c| c.is_control() && c != '\n'),
            "{plan:?}"
        );
        assert!(
            plan.contains("\\x1b]0;owned\\x07") && plan.contains("rule\\x0d"),
            "{plan}"
        );
    }

    #[test]
    fn plan_table_golden() {
        let doc = json!({
            "would_release": [{"ip": "10.0.1.12", "eni_id": "eni-second01", "link": "eth1", "due_in_ms": 0,
                               "note": "due; the send-time cloud check applies"}],
            "not_yet": [],
            "held": ["10.0.1.20"],
            "routing": ["after release: delete rule 3500: from 10.0.1.12/32 lookup 3501"],
            "paused": true,
            "dry_run": false
        });
        let expected = "\
releases are PAUSED: nothing would be sent until `enisync resume`
WOULD RELEASE NOW
IP         LINK  ENI           DUE IN  NOTE
10.0.1.12  eth1  eni-second01  0.0s    due; the send-time cloud check applies

NOT YET
none

HELD (confirm with `enisync release --held`)
10.0.1.20

ROUTING CHANGES
after release: delete rule 3500: from 10.0.1.12/32 lookup 3501
";
        assert_eq!(render_plan(&doc), expected);
    }

    /// A drift report built by the real types (`drift::Tracker`), so the table follows
    /// the document the daemon sends.
    fn drift_doc(link: &str, eni: &str) -> Value {
        use std::net::{IpAddr, Ipv4Addr};

        use crate::drift::{Freshness, HostSide, Read, SourceRead, Tracker};
        use crate::host::{Addr, Link};
        use crate::net::MacAddr;

        let mac = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let ip = |n| IpAddr::V4(Ipv4Addr::new(10, 0, 1, n));
        let read = |at| Read {
            at_unix: at,
            instance_id: "ins-1".into(),
            host: SourceRead::Ok(HostSide {
                links: vec![Link {
                    index: 3,
                    name: link.into(),
                    mac: Some(mac),
                    up: true,
                    parent: None,
                    kind: None,
                }],
                addrs: [10, 50]
                    .map(|n| Addr {
                        link: 3,
                        ip: ip(n),
                        prefix: 24,
                        secondary: n != 10,
                        v6: None,
                    })
                    .to_vec(),
                rules: Vec::new(),
            }),
            api: SourceRead::Ok(vec![crate::cloud::Eni {
                id: eni.into(),
                mac,
                vpc_id: "vpc-1".into(),
                subnet_id: "subnet-1".into(),
                state: "AVAILABLE".into(),
                primary: false,
                attachment: None,
                ips: [(10, true), (14, false)]
                    .map(|(n, primary)| crate::cloud::EniIp {
                        addr: ip(n),
                        primary,
                        state: "AVAILABLE".into(),
                        eip: None,
                    })
                    .to_vec(),
            }]),
            metadata: SourceRead::Failed("metadata network/interfaces/macs/: HTTP 500".into()),
            exclude: Vec::new(),
            releasing: Default::default(),
        };
        let mut t = Tracker::default();
        t.observe(&read(1_764_600_000));
        t.observe(&read(1_764_600_600));
        serde_json::to_value(t.report(1_764_600_660, Freshness::Fresh)).expect("json")
    }

    #[test]
    fn drift_table_golden() {
        let expected = "\
drift report: read-only, enisync never acts on it
data read 2025-12-01T14:50:00Z (read now for this request); 2 reads since start

SOURCES
SOURCE    STATE   LAST GOOD READ        ERROR
host      ok      2025-12-01T14:50:00Z  -
api       ok      2025-12-01T14:50:00Z  -
metadata  failed  -                     metadata network/interfaces/macs/: HTTP 500

COUNTS (the gauges count confirmed findings only: seen in two consecutive reads)
CATEGORY           CONFIRMED  UNCONFIRMED  AS OF                 NOTE
leak_candidate     1          0            2025-12-01T14:50:00Z
unbound_on_host    1          0            2025-12-01T14:50:00Z
stale_rule         0          0            2025-12-01T14:50:00Z
metadata_mismatch  0          0            -                     STALE: metadata not read in the last read; values as of then

FINDINGS
CATEGORY         STATE      SEEN FOR  FINDING
leak_candidate   confirmed  11m       10.0.1.14 bound to eni-1 (52:54:00:12:34:56), on no link
unbound_on_host  confirmed  11m       10.0.1.50 on eth1 (eni-1): the cloud binds it to no ENI of this instance

To act on a finding, by hand: README, \"Drift report\" (confirm an IP is unused first).
";
        assert_eq!(render_drift(&drift_doc("eth1", "eni-1")), expected);
    }

    #[test]
    fn control_characters_in_drift_names_from_the_host_and_the_cloud_are_escaped() {
        let table = render_drift(&drift_doc("eth\u{1b}[2J", "eni-\u{202e}1"));
        assert!(
            !table.contains('\u{1b}') && !table.contains('\u{202e}'),
            "{table}"
        );
        assert!(table.contains("eth\\x1b[2J"), "{table}");
        assert!(table.contains("eni-\\u{202e}1"), "{table}");
    }
}
