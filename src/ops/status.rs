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

    // Floating IPs under a claim (docs/design.md, "Claims"): only when there are some.
    let claims: Vec<Vec<String>> = doc["claims"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let mut state = s(&c["phase"]);
            if let Some(reason) = c.get("reason").filter(|r| !r.is_null()) {
                state = format!("{state} ({})", s(reason));
            }
            if c["orphan"].as_bool() == Some(true) {
                state.push_str(" ORPHAN");
            }
            vec![
                s(&c["ip"]),
                s(&c["link"]),
                s(&c["eni_id"]),
                state,
                s(&c["contests"]),
            ]
        })
        .collect();
    if !claims.is_empty() {
        out.push_str("\nCLAIMS\n");
        table(
            &mut out,
            &["IP", "LINK", "ENI", "STATE", "CONTESTS"],
            &claims,
        );
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
        "claim_orphan" => format!(
            "floating IP {ip} (claim.cidrs) bound to {eni} ({mac}), on no link: `enisync release {ip}` frees it"
        ),
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
        "\nCOUNTS (the gauges count confirmed findings only: seen in two consecutive reads; a claim_orphan also absent for claim.orphan_after)\n",
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
mod tests;
