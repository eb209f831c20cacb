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

mod file;
mod records;
pub mod v1;

use file::*;
#[cfg(test)]
pub(crate) use file::{encode_line, read_lines};
pub use records::{
    CancelKey, IntentKey, IntentKind, OutcomeRecord, Record, RecordState, RemoverRecord, Replay,
};

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
mod tests;
