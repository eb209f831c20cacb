//! Durable intents: every pending release is in the journal before anything else
//! happens, and every sent one is on disk (see [`Journal::append`]).
//!
//! Format: an append-only text file, one record per line, `<fnv1a64 hex> <json>`. The
//! checksum catches a torn or corrupted line; a bad line is reported and skipped, every
//! good record is kept. On open the file is compacted: only the latest record of each
//! live intent is rewritten (temp file, fsync, rename, fsync dir).
//!
//! Schema 2 (this binary) keys each record by intent, [`IntentKey`]: the address, a
//! generation and a kind. The generation grows each time a new intent starts for the
//! same address, so two intents for one address can be live at once: a release whose
//! task is in flight, and a new pending one after the address came back and left again.
//! Removers and outcomes are typed ([`RemoverRecord`], [`OutcomeRecord`]).
//!
//! Schema 1 records (keyed by IPv4 address, remover and outcome as display text) are
//! migrated on open: they become generation 0 of their address (new intents start at 1),
//! and the open's compaction rewrites the file in schema 2, atomically (the old file is
//! whole until the rename; a crash before it leaves the old file, which the next start
//! migrates again).
//!
//! Downgrade: each record carries its schema version `v`; a record of a newer version
//! than the binary knows is kept aside verbatim (counted in [`Replay::newer_schema`],
//! rewritten by compaction, never acted on). A schema-1 binary reading this journal
//! therefore keeps every schema-2 record, `Sent` ones included, and acts on none of them
//! (checked against the schema-1 reader when schema 2 was written); the tasks it does not
//! follow are followed again once this binary is back. What a schema-1 binary appends
//! meanwhile is migrated as generation 0 on the next open.
//!
//! Replay rules (docs/design.md, "State and persistence"): an unsent intent of this boot
//! restarts its grace period and faces the whole trigger rule; an unsent intent of an
//! earlier boot is dropped; a sent one (it has a task) is followed to its end.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::Remover;
use crate::task::TaskRef;

/// The schema version this binary writes and understands.
pub const SCHEMA_VERSION: u32 = 2;
/// The schema that keyed records by IPv4 address; migrated on open.
pub const SCHEMA_V1: u32 = 1;
/// The generation schema-1 intents get when migrated; new intents start above it.
pub const MIGRATED_GENERATION: u64 = 0;
const FILE_NAME: &str = "intents.journal";
/// Compact when the file holds this many more records than live intents.
const COMPACT_SLACK: usize = 1024;

/// Test hook: when set to `1`, a migration stops after its temp file is written and
/// synced, before the rename, and waits there (for a `kill -9`). Honoured only while a
/// schema-1 journal is being migrated.
pub const HANG_MIGRATION_ENV: &str = "ENISYNC_TEST_HANG_MIGRATION";
/// What the hook writes to stderr once the temp file is on disk.
pub const HANG_MIGRATION_MARK: &str = "journal migration: temp file written, hanging (test hook)";

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

/// What an intent wants done with its address. Only releases exist today; a claim (an
/// address to assign) would be a second kind, with no new schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentKind {
    Release,
}

/// The identity of one intent: records with the same key are states of one intent.
/// The address is an [`IpAddr`] so IPv6 needs no new schema; enisync writes only IPv4
/// today (and does not act on an IPv6 record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IntentKey {
    pub addr: IpAddr,
    /// Grows each time a new intent starts for `addr` (per address, not global).
    pub generation: u64,
    pub kind: IntentKind,
}

impl IntentKey {
    /// The key of release intent `generation` of `addr`.
    pub fn release(addr: impl Into<IpAddr>, generation: u64) -> Self {
        Self {
            addr: addr.into(),
            generation,
            kind: IntentKind::Release,
        }
    }
}

impl fmt::Display for IntentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            IntentKind::Release => "release",
        };
        write!(f, "{kind} {}#{}", self.addr, self.generation)
    }
}

/// One state change of one intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub v: u32,
    pub addr: IpAddr,
    pub generation: u64,
    pub kind: IntentKind,
    pub boot_id: String,
    /// Unix milliseconds of the state change.
    pub at_ms: u64,
    pub state: RecordState,
}

impl Record {
    pub fn key(&self) -> IntentKey {
        IntentKey {
            addr: self.addr,
            generation: self.generation,
            kind: self.kind,
        }
    }
}

/// Who removed the address: the fields of [`Remover`], not its display text.
#[derive(Default, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoverRecord {
    /// The netlink port id of the requesting socket (0: the kernel).
    pub port_id: u32,
    /// The process name, when it was known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// Its ancestors' names, parent first, as far as they were known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<String>,
    /// Why the remover could not be identified (unknown, or enisync's own failure);
    /// `None` when it was. A replayed intent with this set stays held as unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

impl From<&Remover> for RemoverRecord {
    fn from(r: &Remover) -> Self {
        use crate::host::Identity;
        Self {
            port_id: r.port_id,
            process: r.process.clone(),
            ancestors: r.ancestors.clone(),
            unknown: match &r.identity {
                Identity::Unknown(why) | Identity::Failed(why) => Some(why.clone()),
                Identity::Kernel | Identity::Alive | Identity::Exited => None,
            },
        }
    }
}

impl From<RemoverRecord> for Remover {
    /// A replayed remover: identified then (its process has likely exited since), or
    /// unknown then and still.
    fn from(r: RemoverRecord) -> Self {
        use crate::host::Identity;
        let identity = match r.unknown {
            Some(why) => Identity::Unknown(why),
            None if r.port_id == 0 => Identity::Kernel,
            None => Identity::Exited,
        };
        Self {
            port_id: r.port_id,
            process: r.process,
            ancestors: r.ancestors,
            identity,
        }
    }
}

/// How an intent ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutcomeRecord {
    /// Its task ended in SUCCESS (`task_id` empty for a migrated schema-1 record).
    Released {
        task_id: String,
    },
    /// The cloud no longer listed it after our unassign.
    AlreadyGone,
    /// A clause failed: `reason` is the engine's stable reason key (the metrics label),
    /// `detail` the variant's data (a process name, an EIP id), if any.
    Cancelled {
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    DryRun,
    /// A newer intent for the same address took its place before this one was sent, or
    /// after its task failed (the newer one carries the release on).
    Superseded {
        by_generation: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RecordState {
    /// The removal was observed; the grace period runs.
    Observed {
        link: String,
        mac: Option<String>,
        eni_id: Option<String>,
        remover: Option<RemoverRecord>,
        /// Part of a held burst: stays held across a restart until an operator
        /// confirms.
        #[serde(default)]
        held: bool,
        /// Written just before the unassign goes out: from here on the cloud may have
        /// taken the call even if we never hear back (a crash, a lost answer). On replay
        /// an IP the cloud no longer lists then counts as released by us, instead of a
        /// lagging view to wait out.
        #[serde(default)]
        sending: bool,
    },
    /// The unassign was accepted; `task` is followed to its end even across reboots.
    Sent { eni_id: String, task: TaskRef },
    /// Terminal.
    Finished { outcome: OutcomeRecord },
}

/// What replay found, for the engine to act on.
#[derive(Debug, Default)]
pub struct Replay {
    /// Live intents: their latest record, in key order.
    pub live: Vec<Record>,
    /// Lines that failed their checksum or did not parse (line numbers).
    pub corrupt_lines: Vec<usize>,
    /// Records written by a newer schema, kept and not acted on.
    pub newer_schema: usize,
    /// Schema-1 records read (and migrated to schema 2 by this open).
    pub migrated: usize,
}

/// The open journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Records in the file, to decide when to compact.
    records: usize,
    /// Latest record per live intent (what compaction keeps).
    live: BTreeMap<IntentKey, Record>,
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
    /// Opens (or creates) the journal in `dir`, replays it, migrates schema-1 records
    /// and compacts it.
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
        if replay.migrated > 0 {
            tracing::info!(
                records = replay.migrated,
                live = live.len(),
                "journal: migrating schema-1 records to schema {SCHEMA_VERSION}"
            );
        }
        // rewrite() syncs the new file and its directory before returning.
        let (file, len) = rewrite(&path, live.values(), &foreign, replay.migrated > 0)?;
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

    /// Appends a record of intent `key`. A `Sent` record is flushed to disk
    /// (`fdatasync`) before this returns; the others are written (they survive a crash
    /// of the process, in the page cache) but not flushed, because only a `Sent` record
    /// is ever acted on after a reboot: an unsent intent of an earlier boot is dropped,
    /// and a lost `Finished` only makes replay re-describe a task that has ended.
    /// Flushing every `Observed` put a disk flush (2 ms typical, 200 ms seen) between
    /// each removal and its release. A flush also carries every record written before it.
    pub fn append(
        &mut self,
        key: IntentKey,
        boot_id: &str,
        state: RecordState,
    ) -> Result<(), JournalError> {
        let rec = Record {
            v: SCHEMA_VERSION,
            addr: key.addr,
            generation: key.generation,
            kind: key.kind,
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
            self.live.remove(&key);
        } else {
            self.live.insert(key, rec);
        }
        if self.records > self.live.len() + self.foreign.len() + COMPACT_SLACK {
            (self.file, self.len) = rewrite(&self.path, self.live.values(), &self.foreign, false)?;
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

enum Decoded {
    /// A record, and whether it was migrated from schema 1.
    Record(Box<Record>, bool),
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

/// Schema 1, as the binaries before schema 2 wrote it: read only, to migrate.
pub mod v1 {
    use std::net::Ipv4Addr;

    use serde::{Deserialize, Serialize};

    use super::{MIGRATED_GENERATION, OutcomeRecord, RemoverRecord, SCHEMA_VERSION};
    use crate::task::TaskRef;

    /// A schema-1 record: keyed by IPv4 address alone.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RecordV1 {
        pub v: u32,
        pub ip: Ipv4Addr,
        pub boot_id: String,
        pub at_ms: u64,
        pub state: StateV1,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "state", rename_all = "snake_case")]
    pub enum StateV1 {
        Observed {
            link: String,
            mac: Option<String>,
            eni_id: Option<String>,
            /// The remover's display text: `"<process> (port <n>)"` or `"port <n>"`.
            remover: Option<String>,
            #[serde(default)]
            held: bool,
            #[serde(default)]
            sending: bool,
        },
        Sent {
            eni_id: String,
            task: TaskRef,
        },
        /// `released`, `already_gone`, `dry_run` or `cancelled: <reason text>`.
        Finished {
            outcome: String,
        },
    }

    impl RecordV1 {
        /// The schema-2 record of this one: generation [`MIGRATED_GENERATION`] of its
        /// address, the remover and outcome parsed back from their text.
        pub fn migrate(self) -> super::Record {
            let state = match self.state {
                StateV1::Observed {
                    link,
                    mac,
                    eni_id,
                    remover,
                    held,
                    sending,
                } => super::RecordState::Observed {
                    link,
                    mac,
                    eni_id,
                    remover: remover.and_then(|text| {
                        let parsed = parse_remover(&text);
                        if parsed.is_none() {
                            tracing::warn!(ip = %self.ip, remover = %text, "journal migration: remover text not understood; kept as unknown");
                        }
                        parsed
                    }),
                    held,
                    sending,
                },
                StateV1::Sent { eni_id, task } => super::RecordState::Sent { eni_id, task },
                StateV1::Finished { outcome } => super::RecordState::Finished {
                    outcome: parse_outcome(&outcome),
                },
            };
            super::Record {
                v: SCHEMA_VERSION,
                addr: self.ip.into(),
                generation: MIGRATED_GENERATION,
                kind: super::IntentKind::Release,
                boot_id: self.boot_id,
                at_ms: self.at_ms,
                state,
            }
        }
    }

    /// `"<process> (port <n>)"` or `"port <n>"`, as schema 1 wrote a remover. The
    /// process name may itself hold spaces and parentheses: the port is the last part.
    pub fn parse_remover(text: &str) -> Option<RemoverRecord> {
        if let Some(port) = text.strip_prefix("port ") {
            return Some(RemoverRecord {
                port_id: port.parse().ok()?,
                process: None,
                ancestors: Vec::new(),
                unknown: None,
            });
        }
        let (process, port) = text.strip_suffix(')')?.rsplit_once(" (port ")?;
        Some(RemoverRecord {
            port_id: port.parse().ok()?,
            process: Some(process.to_owned()),
            ancestors: Vec::new(),
            unknown: None,
        })
    }

    fn parse_outcome(text: &str) -> OutcomeRecord {
        match text {
            "released" => OutcomeRecord::Released {
                task_id: String::new(),
            },
            "already_gone" => OutcomeRecord::AlreadyGone,
            "dry_run" => OutcomeRecord::DryRun,
            other => OutcomeRecord::Cancelled {
                reason: "schema_1".into(),
                detail: Some(
                    other
                        .strip_prefix("cancelled: ")
                        .unwrap_or(other)
                        .to_owned(),
                ),
            },
        }
    }
}

/// Writes `records` and `foreign` lines to a temp file and renames it over `path`,
/// returning the new file opened for appending, and its length.
fn rewrite<'a>(
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
    use std::net::Ipv4Addr;

    use crate::task::Protocol;

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
            remover: Some(RemoverRecord {
                port_id: 4242,
                process: Some("ip".into()),
                ..Default::default()
            }),
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
            j.append(IntentKey::release(a, 1), "boot1", observed())
                .expect("append");
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
            j.append(IntentKey::release(a, 1), "boot1", observed())
                .expect("append");
            j.append(IntentKey::release(b, 1), "boot1", observed())
                .expect("append");
            j.append(
                IntentKey::release(b, 1),
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
                IntentKey::release(a, 1),
                "boot1",
                RecordState::Finished {
                    outcome: OutcomeRecord::Released {
                        task_id: "r".into(),
                    },
                },
            )
            .expect("append");
        }
        let (j, r) = Journal::open(&dir).expect("reopen");
        assert_eq!(r.live.len(), 1);
        assert_eq!(r.live[0].key(), IntentKey::release(b, 1));
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
                j.append(IntentKey::release(*ip, 1), "boot1", observed())
                    .expect("append");
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
        let live: Vec<_> = r.live.iter().map(|rec| rec.addr).collect();
        assert_eq!(live, vec![IpAddr::from(ips[0]), IpAddr::from(ips[2])]);
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
            j.append(IntentKey::release(ip, 1), "b", observed())
                .expect("append");
            j.append(
                IntentKey::release(ip, 1),
                "b",
                RecordState::Finished {
                    outcome: OutcomeRecord::Released {
                        task_id: "r".into(),
                    },
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

    fn sent(task: &str) -> RecordState {
        RecordState::Sent {
            eni_id: "eni-1".into(),
            task: TaskRef {
                request_id: None,
                task_id: task.into(),
                protocol: Protocol::V3,
            },
        }
    }

    /// The forgotten task, at the journal's level: a new intent for an address whose
    /// release is in flight does not replace the `Sent` record.
    #[test]
    fn two_generations_of_one_address_are_both_kept() {
        let dir = tmpdir("generations");
        let a: Ipv4Addr = "10.0.0.2".parse().expect("ip");
        {
            let (mut j, _) = Journal::open(&dir).expect("open");
            j.append(IntentKey::release(a, 1), "boot1", observed())
                .expect("append");
            j.append(IntentKey::release(a, 1), "boot1", sent("t-1"))
                .expect("append");
            j.append(IntentKey::release(a, 2), "boot1", observed())
                .expect("append");
            assert_eq!(j.live_count(), 2);
        }
        let (_, r) = Journal::open(&dir).expect("reopen");
        let states: Vec<_> = r.live.iter().map(|rec| (rec.key(), &rec.state)).collect();
        assert_eq!(states.len(), 2, "{states:?}");
        assert_eq!(states[0].0, IntentKey::release(a, 1));
        assert!(
            matches!(states[0].1, RecordState::Sent { .. }),
            "{states:?}"
        );
        assert_eq!(states[1].0, IntentKey::release(a, 2));
        assert!(
            matches!(states[1].1, RecordState::Observed { .. }),
            "{states:?}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Schema-1 lines, as the schema-1 encoder wrote them (same struct, same checksum),
    /// become generation 0 with a typed remover; the file is rewritten in schema 2.
    #[test]
    fn schema_1_records_are_migrated_on_open() {
        let dir = tmpdir("migrate");
        let v1_line = |ip: &str, state: v1::StateV1| {
            let rec = v1::RecordV1 {
                v: 1,
                ip: ip.parse().expect("ip"),
                boot_id: "boot1".into(),
                at_ms: 5,
                state,
            };
            let json = serde_json::to_string(&rec).expect("json");
            format!("{:016x} {json}\n", fnv1a64(json.as_bytes()))
        };
        let observed = |remover: &str| v1::StateV1::Observed {
            link: "eth1".into(),
            mac: None,
            eni_id: Some("eni-1".into()),
            remover: Some(remover.into()),
            held: true,
            sending: false,
        };
        let text = [
            v1_line("10.0.0.2", observed("ip (port 16598)")),
            v1_line("10.0.0.3", observed("port 7")),
            v1_line(
                "10.0.0.3",
                v1::StateV1::Finished {
                    outcome: "cancelled: its link went down".into(),
                },
            ),
            v1_line(
                "10.0.0.4",
                v1::StateV1::Sent {
                    eni_id: "eni-1".into(),
                    task: TaskRef {
                        request_id: Some("req".into()),
                        task_id: "t-4".into(),
                        protocol: Protocol::V3,
                    },
                },
            ),
        ]
        .concat();
        std::fs::write(dir.join(FILE_NAME), &text).expect("write");
        let (_, r) = Journal::open(&dir).expect("open");
        assert_eq!(r.migrated, 4);
        assert!(r.corrupt_lines.is_empty());
        assert_eq!(r.live.len(), 2, "{:?}", r.live);
        assert_eq!(
            r.live[0].key(),
            IntentKey::release(Ipv4Addr::new(10, 0, 0, 2), 0)
        );
        assert_eq!(
            r.live[0].state,
            RecordState::Observed {
                link: "eth1".into(),
                mac: None,
                eni_id: Some("eni-1".into()),
                remover: Some(RemoverRecord {
                    port_id: 16598,
                    process: Some("ip".into()),
                    ..Default::default()
                }),
                held: true,
                sending: false,
            }
        );
        assert_eq!(
            r.live[1].key(),
            IntentKey::release(Ipv4Addr::new(10, 0, 0, 4), 0)
        );
        assert!(
            matches!(&r.live[1].state, RecordState::Sent { task, .. } if task.task_id == "t-4")
        );
        let after = std::fs::read_to_string(dir.join(FILE_NAME)).expect("read");
        assert_eq!(after.lines().count(), 2);
        assert!(
            after.lines().all(|l| l.contains(r#""v":2,"addr":"#)),
            "{after}"
        );
        // Reopening finds nothing left to migrate.
        let (_, again) = Journal::open(&dir).expect("reopen");
        assert_eq!(again.migrated, 0);
        assert_eq!(again.live, r.live);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn schema_1_removers_parse_back_from_their_text() {
        let parse = v1::parse_remover;
        assert_eq!(
            parse("ip (port 16598)"),
            Some(RemoverRecord {
                port_id: 16598,
                process: Some("ip".into()),
                ..Default::default()
            })
        );
        assert_eq!(
            parse("my (odd) tool (port 7)"),
            Some(RemoverRecord {
                port_id: 7,
                process: Some("my (odd) tool".into()),
                ..Default::default()
            })
        );
        assert_eq!(
            parse("port 0"),
            Some(RemoverRecord {
                port_id: 0,
                process: None,
                ..Default::default()
            })
        );
        assert_eq!(parse("ip"), None);
        assert_eq!(parse("ip (port x)"), None);
    }
}
