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
}
