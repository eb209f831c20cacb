//! Durable intents: every pending release is in the journal before anything else
//! happens, and every sent one is on disk (see [`Journal::append`]).
//!
//! Format: an append-only text file, one record per line, `<fnv1a64 hex> <json>`. The
//! checksum catches a torn or corrupted line; a bad line is reported and skipped, every
//! good record is kept. Each record carries the schema version `v`; a record of a
//! newer version than this binary knows is kept aside (reported, never acted on), so a
//! downgrade holds rather than guesses. On open the file is compacted: only the latest
//! record of each live intent is rewritten (temp file, fsync, rename, fsync dir).
//!
//! Replay rules (DESIGN.md): an unsent intent of this boot restarts its grace period
//! and faces the whole trigger rule; an unsent intent of an earlier boot is dropped;
//! a sent one (it has a task) is followed to its end.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cloud::TaskRef;

/// The schema version this binary writes and understands.
pub const SCHEMA_VERSION: u32 = 1;
const FILE_NAME: &str = "intents.journal";
/// Compact when the file holds this many more records than live intents.
const COMPACT_SLACK: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// One state change of one intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub v: u32,
    pub ip: Ipv4Addr,
    pub boot_id: String,
    /// Unix milliseconds of the state change.
    pub at_ms: u64,
    pub state: RecordState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RecordState {
    /// The removal was observed; the grace period runs.
    Observed {
        link: String,
        mac: Option<String>,
        eni_id: Option<String>,
        remover: Option<String>,
        /// Part of a held burst: stays held across a restart until an operator
        /// confirms. (Added within schema 1: older records read as not held.)
        #[serde(default)]
        held: bool,
        /// Written just before the unassign goes out: from here on the cloud may have
        /// taken the call even if we never hear back (a crash, a lost answer). On replay
        /// an IP the cloud no longer lists then counts as released by us, instead of a
        /// lagging view to wait out. (Added within schema 1: older binaries ignore it
        /// and treat the intent as merely observed, which is safe.)
        #[serde(default)]
        sending: bool,
    },
    /// The unassign was accepted; `task` is followed to its end even across reboots.
    Sent { eni_id: String, task: TaskRef },
    /// Terminal: released, already gone, cancelled (with the reason), dry run.
    Finished { outcome: String },
}

/// What replay found, for the engine to act on.
#[derive(Debug, Default)]
pub struct Replay {
    /// Live intents: their latest record.
    pub live: Vec<Record>,
    /// Lines that failed their checksum or did not parse (line numbers).
    pub corrupt_lines: Vec<usize>,
    /// Records written by a newer schema, kept and not acted on.
    pub newer_schema: usize,
}

/// The open journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Records in the file, to decide when to compact.
    records: usize,
    /// Latest record per live intent (what compaction keeps).
    live: BTreeMap<Ipv4Addr, Record>,
    /// Lines of a newer schema, rewritten verbatim by compaction.
    foreign: Vec<String>,
    /// Bytes of whole records in the file: where the next append starts. A failed
    /// append is cut back to here, so its partial line cannot swallow the next record.
    len: u64,
    /// A failed append could not be cut back: the file may end in a partial line, so
    /// the next record starts on a fresh line (the partial one is then skipped on
    /// replay as corrupt, and the new record stays whole).
    torn: bool,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, replays it and compacts it.
    pub fn open(dir: &Path) -> Result<(Self, Replay), JournalError> {
        let path = dir.join(FILE_NAME);
        let io = |op: &'static str| {
            let path = path.clone();
            move |source| JournalError::Io { path, op, source }
        };
        // Never through a link: a journal planted as a link elsewhere is refused (ELOOP).
        let (mut replay, live, foreign) = match crate::state_dir::open_nofollow(&path) {
            Ok(file) => read_lines(BufReader::new(file)).map_err(io("read"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(io("open")(e)),
        };
        replay.live = live.values().cloned().collect();
        // rewrite() syncs the new file and its directory before returning.
        let (file, len) = rewrite(&path, live.values(), &foreign)?;
        let journal = Self {
            file,
            records: live.len() + foreign.len(),
            path,
            live,
            foreign,
            len,
            torn: false,
        };
        Ok((journal, replay))
    }

    /// Appends a record. A `Sent` record is flushed to disk (`fdatasync`) before this
    /// returns; the others are written (they survive a crash of the process, in the page
    /// cache) but not flushed, because only a `Sent` record is ever acted on after a
    /// reboot: an unsent intent of an earlier boot is dropped, and a lost `Finished`
    /// only makes replay re-describe a task that has ended. Flushing every `Observed`
    /// put a disk flush (2 ms typical, 200 ms seen) between each removal and its release.
    /// A flush also carries every record written before it.
    pub fn append(
        &mut self,
        ip: Ipv4Addr,
        boot_id: &str,
        state: RecordState,
    ) -> Result<(), JournalError> {
        let rec = Record {
            v: SCHEMA_VERSION,
            ip,
            boot_id: boot_id.to_owned(),
            at_ms: now_ms(),
            state,
        };
        let mut line = encode_line(&rec);
        if self.torn {
            line.insert(0, '\n');
        }
        let io = |op| {
            let path = self.path.clone();
            move |source| JournalError::Io { path, op, source }
        };
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            // A full disk fails a write half-way: cut the partial line off, or, if even
            // that fails, start the next record on a line of its own.
            self.torn = self.file.set_len(self.len).is_err();
            return Err(io("append")(e));
        }
        self.torn = false;
        self.len += line.len() as u64;
        if matches!(rec.state, RecordState::Sent { .. }) {
            self.file.sync_data().map_err(io("sync"))?;
        }
        self.records += 1;
        if matches!(rec.state, RecordState::Finished { .. }) {
            self.live.remove(&ip);
        } else {
            self.live.insert(ip, rec);
        }
        if self.records > self.live.len() + self.foreign.len() + COMPACT_SLACK {
            (self.file, self.len) = rewrite(&self.path, self.live.values(), &self.foreign)?;
            self.records = self.live.len() + self.foreign.len();
        }
        Ok(())
    }

    /// Live intents (not finished).
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Records in the file now (bounded by compaction).
    pub fn record_count(&self) -> usize {
        self.records
    }
}

/// Replays the journal's lines: the report (without `live`, which the caller fills), the
/// latest record of each live intent, and the lines of a newer schema (kept verbatim).
/// Only a read error fails; a line that is not a good record is counted and skipped.
pub(crate) fn read_lines(
    reader: impl BufRead,
) -> std::io::Result<(Replay, BTreeMap<Ipv4Addr, Record>, Vec<String>)> {
    let mut replay = Replay::default();
    let mut live: BTreeMap<Ipv4Addr, Record> = BTreeMap::new();
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
            Some(Decoded::Record(rec)) => {
                if matches!(rec.state, RecordState::Finished { .. }) {
                    live.remove(&rec.ip);
                } else {
                    live.insert(rec.ip, rec);
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

enum Decoded {
    Record(Record),
    Newer,
}

pub(crate) fn encode_line(rec: &Record) -> String {
    let json = serde_json::to_string(rec).expect("a journal record always serialises");
    format!("{:016x} {json}\n", fnv1a64(json.as_bytes()))
}

fn decode_line(line: &str) -> Option<Decoded> {
    let (sum, json) = line.split_once(' ')?;
    if u64::from_str_radix(sum, 16).ok()? != fnv1a64(json.as_bytes()) {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let version = value.get("v")?.as_u64()?;
    if version > u64::from(SCHEMA_VERSION) {
        return Some(Decoded::Newer);
    }
    serde_json::from_value(value).ok().map(Decoded::Record)
}

/// Writes `records` and `foreign` lines to a temp file and renames it over `path`,
/// returning the new file opened for appending, and its length.
fn rewrite<'a>(
    path: &Path,
    records: impl Iterator<Item = &'a Record>,
    foreign: &[String],
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

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Test hook: an environment variable that replaces the kernel's boot id, so the
/// end-to-end tests can play "the host rebooted" without rebooting. Only values that
/// start with [`BOOT_ID_OVERRIDE_PREFIX`] are honoured, so it can never make a journal
/// of a real earlier boot (a kernel UUID) look current: at worst it makes this boot look
/// like another one, and then unsent intents are dropped, the safe direction.
pub const BOOT_ID_OVERRIDE_ENV: &str = "ENISYNC_BOOT_ID_OVERRIDE";
/// See [`BOOT_ID_OVERRIDE_ENV`].
pub const BOOT_ID_OVERRIDE_PREFIX: &str = "test-";

/// The kernel's id of this boot; intents carry it. [`BOOT_ID_OVERRIDE_ENV`] replaces it
/// in tests.
pub fn boot_id() -> String {
    if let Ok(id) = std::env::var(BOOT_ID_OVERRIDE_ENV) {
        if id.starts_with(BOOT_ID_OVERRIDE_PREFIX) {
            tracing::warn!(boot_id = %id, "boot id overridden by {BOOT_ID_OVERRIDE_ENV} (a test hook)");
            return id;
        }
        tracing::warn!(
            "{BOOT_ID_OVERRIDE_ENV} ignored: only values starting with {BOOT_ID_OVERRIDE_PREFIX:?} are honoured"
        );
    }
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown-boot".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::Protocol;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("enisync-journal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp");
        d
    }

    fn observed() -> RecordState {
        RecordState::Observed {
            link: "eth1".into(),
            mac: None,
            eni_id: Some("eni-1".into()),
            remover: Some("ip".into()),
            held: false,
            sending: false,
        }
    }

    #[test]
    fn a_link_at_the_temp_name_is_never_written_through() {
        let dir = tmpdir("tmplink");
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious bytes\n").expect("write");
        std::os::unix::fs::symlink(&victim, dir.join("intents.tmp")).expect("link");
        let a: Ipv4Addr = "10.0.0.2".parse().expect("ip");
        {
            let (mut j, _) = Journal::open(&dir).expect("open replaces the link");
            j.append(a, "boot1", observed()).expect("append");
        }
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "precious bytes\n",
            "the link's target was written"
        );
        let (_, r) = Journal::open(&dir).expect("reopen");
        assert_eq!(r.live.len(), 1, "the journal is a file of its own");

        // The journal itself as a link is refused, not read or replaced.
        std::fs::remove_file(dir.join(FILE_NAME)).expect("rm");
        std::os::unix::fs::symlink(&victim, dir.join(FILE_NAME)).expect("link");
        let err = Journal::open(&dir)
            .expect_err("a link is refused")
            .to_string();
        assert!(err.contains("intents.journal"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "precious bytes\n"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn replay_keeps_live_intents_and_drops_finished() {
        let dir = tmpdir("replay");
        let a: Ipv4Addr = "10.0.0.2".parse().expect("ip");
        let b: Ipv4Addr = "10.0.0.3".parse().expect("ip");
        {
            let (mut j, r) = Journal::open(&dir).expect("open");
            assert!(r.live.is_empty());
            j.append(a, "boot1", observed()).expect("append");
            j.append(b, "boot1", observed()).expect("append");
            j.append(
                b,
                "boot1",
                RecordState::Sent {
                    eni_id: "eni-1".into(),
                    task: TaskRef {
                        request_id: Some("r".into()),
                        task_id: "r".into(),
                        protocol: Protocol::V3,
                    },
                },
            )
            .expect("append");
            j.append(
                a,
                "boot1",
                RecordState::Finished {
                    outcome: "released".into(),
                },
            )
            .expect("append");
        }
        let (j, r) = Journal::open(&dir).expect("reopen");
        assert_eq!(r.live.len(), 1);
        assert_eq!(r.live[0].ip, b);
        assert!(matches!(r.live[0].state, RecordState::Sent { .. }));
        assert_eq!(j.record_count(), 1, "compacted on open");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_torn_tail_and_a_flipped_byte_lose_only_their_own_lines() {
        let dir = tmpdir("torn");
        let ips: Vec<Ipv4Addr> = (2..6).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        {
            let (mut j, _) = Journal::open(&dir).expect("open");
            for ip in &ips {
                j.append(*ip, "boot1", observed()).expect("append");
            }
        }
        let path = dir.join(FILE_NAME);
        let mut text = std::fs::read_to_string(&path).expect("read");
        // Flip one character inside the second record, and tear the last one.
        let second = text.match_indices('\n').next().expect("newline").0 + 30;
        text.replace_range(second..=second, "#");
        text.truncate(text.len() - 10);
        std::fs::write(&path, text).expect("write");
        let (_, r) = Journal::open(&dir).expect("reopen");
        assert_eq!(r.corrupt_lines, vec![2, 4]);
        let live: Vec<_> = r.live.iter().map(|rec| rec.ip).collect();
        assert_eq!(live, vec![ips[0], ips[2]]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn newer_schema_records_are_kept_aside_not_acted_on() {
        let dir = tmpdir("newer");
        let json = r#"{"v":99,"ip":"10.0.0.9","what":"future"}"#;
        std::fs::write(
            dir.join(FILE_NAME),
            format!("{:016x} {json}\n", fnv1a64(json.as_bytes())),
        )
        .expect("write");
        let (_, r) = Journal::open(&dir).expect("open");
        assert_eq!(r.newer_schema, 1);
        assert!(r.live.is_empty());
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).expect("read");
        assert!(
            text.contains("future"),
            "kept verbatim for the newer binary"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_file_stays_bounded() {
        let dir = tmpdir("bounded");
        let (mut j, _) = Journal::open(&dir).expect("open");
        for i in 0..5000u32 {
            let ip = Ipv4Addr::from(0x0a00_0000 + (i % 7));
            j.append(ip, "b", observed()).expect("append");
            j.append(
                ip,
                "b",
                RecordState::Finished {
                    outcome: "released".into(),
                },
            )
            .expect("append");
        }
        assert!(
            j.record_count() <= COMPACT_SLACK + 1,
            "{}",
            j.record_count()
        );
        assert_eq!(j.live_count(), 0);
        std::fs::remove_dir_all(&dir).ok();
    }
}
