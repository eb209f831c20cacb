//! From TOML text to values: parse errors rebuilt without quoting the source line, and
//! the duration and CIDR fields.

use super::*;

/// Rebuilds a TOML error without quoting the source line (it may hold a secret), naming
/// the key as `table.key`.
pub(super) fn parse_error(text: &str, path: &Path, err: &toml::de::Error) -> ConfigError {
    let span = err.span();
    let line = span
        .as_ref()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let mut message = err.message().trim().to_string();
    let table = span
        .as_ref()
        .map(|s| enclosing_table(&text[..s.start.min(text.len())]))
        .unwrap_or_default();
    let field = span.as_ref().and_then(|s| {
        // The key of the offending line, or the unknown field the message names.
        let line_text = text[..s.start.min(text.len())]
            .rsplit('\n')
            .next()
            .unwrap_or("")
            .to_string()
            + text[s.start.min(text.len())..]
                .split('\n')
                .next()
                .unwrap_or("");
        let quoted = message.split('`').nth(1).map(str::to_string);
        if message.starts_with("unknown field") {
            quoted
        } else {
            line_text
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"').to_string())
                .filter(|k| !k.is_empty() && !k.starts_with('['))
        }
    });
    let key = match (table.is_empty(), field) {
        (false, Some(f)) => format!("{table}.{f}"),
        (true, Some(f)) => f,
        (false, None) => table,
        (true, None) => "(file)".into(),
    };
    // The whole lines the error's span covers: an inline table
    // (`cloud = { secret_key = 123 }`) names the key `cloud`, yet its message may quote
    // the secret (found by the config fuzzer, src/fuzz/config.rs).
    let span_lines = span
        .as_ref()
        .and_then(|s| {
            let start = text.get(..s.start)?.rfind('\n').map_or(0, |i| i + 1);
            let end = text
                .get(s.end..)?
                .find('\n')
                .map_or(text.len(), |i| s.end + i);
            text.get(start..end)
        })
        .unwrap_or("");
    if key.ends_with("secret_id")
        || key.ends_with("secret_key")
        || span_lines.contains("secret_id")
        || span_lines.contains("secret_key")
    {
        // Never repeat a secret's value, even a malformed one.
        message = "invalid value (not shown: it is a secret)".into();
    }
    ConfigError::Invalid {
        path: path.to_owned(),
        key,
        line,
        reason: message,
    }
}

/// The `[table]` or `[[table]]` header in force at the end of `before`.
pub(super) fn enclosing_table(before: &str) -> String {
    before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
        .unwrap_or_default()
}

/// Whether `url` is a plain-HTTP URL (the scheme is case-insensitive, as the URL parser
/// that will use it treats it).
pub(super) fn is_plain_http(url: &str) -> bool {
    url.get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"))
}

/// Parses `250ms`, `30s`, `5m` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        format!("bad duration {text:?}: expected a whole number followed by ms, s or m")
    })?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!(
            "bad duration {text:?}: the unit must be ms, s or m"
        )),
    }
}

pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

pub(super) fn de_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| Cidr::parse(s).map_err(serde::de::Error::custom))
        .collect()
}
