//! The file format: checksummed lines, replay, and the atomic rewrite that compacts (and
//! migrates) the journal on open.

use super::*;

/// Replays the journal's lines: the report (without `live`, which the caller fills), the
/// latest record of each live intent (schema-1 records migrated), and the lines of a
/// newer schema (kept verbatim). Only a read error fails; a line that is not a good
/// record is counted and skipped.
pub(crate) fn read_lines(
    reader: impl BufRead,
) -> std::io::Result<(Replay, BTreeMap<IntentKey, Record>, Vec<String>)> {
    let mut replay = Replay::default();
    let mut live: BTreeMap<IntentKey, Record> = BTreeMap::new();
    let mut foreign = Vec::new();
    for (n, line) in reader.split(b'\n').enumerate() {
        let Ok(line) = String::from_utf8(line?) else {
            replay.corrupt_lines.push(n + 1);
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        match decode_line(&line) {
            Some(Decoded::Record(rec, migrated)) => {
                replay.migrated += usize::from(migrated);
                if matches!(rec.state, RecordState::Finished { .. }) {
                    live.remove(&rec.key());
                } else {
                    live.insert(rec.key(), *rec);
                }
            }
            Some(Decoded::Newer) => {
                replay.newer_schema += 1;
                foreign.push(line);
            }
            None => replay.corrupt_lines.push(n + 1),
        }
    }
    Ok((replay, live, foreign))
}

pub(super) enum Decoded {
    /// A record, and whether it was migrated from schema 1.
    Record(Box<Record>, bool),
    Newer,
}

pub(crate) fn encode_line(rec: &Record) -> String {
    let json = serde_json::to_string(rec).expect("a journal record always serialises");
    format!("{:016x} {json}\n", fnv1a64(json.as_bytes()))
}

pub(super) fn decode_line(line: &str) -> Option<Decoded> {
    let (sum, json) = line.split_once(' ')?;
    if u64::from_str_radix(sum, 16).ok()? != fnv1a64(json.as_bytes()) {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let version = value.get("v")?.as_u64()?;
    if version > u64::from(SCHEMA_VERSION) {
        return Some(Decoded::Newer);
    }
    if version == u64::from(SCHEMA_V1) {
        let old: v1::RecordV1 = serde_json::from_value(value).ok()?;
        return Some(Decoded::Record(Box::new(old.migrate()), true));
    }
    if version != u64::from(SCHEMA_VERSION) {
        return None;
    }
    serde_json::from_value(value)
        .ok()
        .map(|r| Decoded::Record(Box::new(r), false))
}

/// Writes `records` and `foreign` lines to a temp file and renames it over `path`,
/// returning the new file opened for appending, and its length.
pub(super) fn rewrite<'a>(
    path: &Path,
    records: impl Iterator<Item = &'a Record>,
    foreign: &[String],
    migrating: bool,
) -> Result<(File, u64), JournalError> {
    let io = |op: &'static str| {
        let path = path.to_owned();
        move |source| JournalError::Io { path, op, source }
    };
    let tmp = path.with_extension("tmp");
    let len;
    {
        // Created anew (O_EXCL, after unlinking whatever is at the name): a link left at
        // `intents.tmp` must not make us truncate the file it points to.
        let mut f = crate::state_dir::create_fresh(&tmp).map_err(io("create temp"))?;
        let mut text = String::new();
        for rec in records {
            text.push_str(&encode_line(rec));
        }
        for line in foreign {
            text.push_str(line);
            text.push('\n');
        }
        f.write_all(text.as_bytes()).map_err(io("write temp"))?;
        len = text.len() as u64;
        f.sync_all().map_err(io("sync temp"))?;
    }
    if migrating && std::env::var(HANG_MIGRATION_ENV).is_ok_and(|v| v == "1") {
        tracing::warn!("{HANG_MIGRATION_ENV}=1: hanging before the rename (a test hook)");
        eprintln!("{HANG_MIGRATION_MARK}");
        loop {
            std::thread::park();
        }
    }
    std::fs::rename(&tmp, path).map_err(io("rename"))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync dir"))?;
    }
    let file = crate::state_dir::nofollow()
        .append(true)
        .open(path)
        .map_err(io("reopen"))?;
    Ok((file, len))
}

pub(super) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
