//! The operator's pause (`enisync pause`), kept on disk so that it outlives the process.
//!
//! A pause is asked for in the middle of an incident. If it lived in memory only, a
//! watchdog restart, an OOM kill or a package upgrade would silently arm releases again
//! while the incident goes on. So it is a file in `state.dir` (`paused`), written before
//! the pause is acknowledged and read at every start, including before the metadata
//! service answers.
//!
//! "Unknown never means allowed": a pause file that exists but cannot be read or parsed
//! counts as a pause (with a note saying why), and only `enisync resume` clears it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::wallclock::rfc3339;

/// The file name inside `state.dir`.
pub const PAUSE_FILE: &str = "paused";

/// A pause in force: since when, and who asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    /// Unix seconds (wall time: it is shown to people and survives reboots).
    pub since_unix: u64,
    /// The uid of the control-socket client that asked, from the socket's peer
    /// credentials; `None` when it is not known.
    pub by_uid: Option<u32>,
    /// Why the pause is assumed rather than recorded (an unreadable file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Paused {
    /// `since 2026-12-01T15:04:05Z by uid 0`, for logs and `status`.
    pub fn describe(&self) -> String {
        let who = self
            .by_uid
            .map_or_else(|| "an unknown user".to_string(), |u| format!("uid {u}"));
        let mut text = format!("since {} by {who}", rfc3339(self.since_unix));
        if let Some(note) = &self.note {
            text.push_str(&format!(" ({note})"));
        }
        text
    }
}

/// The pause file of one state directory.
#[derive(Debug, Clone)]
pub struct PauseFile {
    path: PathBuf,
}

impl PauseFile {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(PAUSE_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pause in force, if any. A file that is there but unreadable means paused.
    /// The file is read without following a link: a link at `paused` is not the pause
    /// enisync wrote, so it counts as unreadable (paused, with a note).
    pub fn load(&self) -> Option<Paused> {
        let read = crate::state_dir::open_nofollow(&self.path).and_then(|mut f| {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut bytes).map(|_| bytes)
        });
        match read {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                assumed(format!(
                    "the pause file is not valid ({e}); treated as paused"
                ))
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(assumed(format!(
                "the pause file cannot be read ({e}); treated as paused"
            ))),
        }
    }

    /// Records a pause and returns it. The file is complete on disk (written aside,
    /// synced, renamed) before this returns, so an acknowledged pause survives a crash.
    pub fn pause(&self, by_uid: Option<u32>) -> std::io::Result<Paused> {
        let paused = Paused {
            since_unix: now_unix(),
            by_uid,
            note: None,
        };
        let tmp = self.path.with_extension("tmp");
        // Unlinks a stale `paused.tmp` (or a link planted there) and creates it with
        // O_EXCL and mode 0600: never written through a link.
        let mut file = crate::state_dir::create_fresh(&tmp)?;
        file.write_all(&serde_json::to_vec(&paused).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(paused)
    }

    /// Clears the pause. Fails (and the caller stays paused) if the file cannot be
    /// removed: a pause that comes back at the next start is better than none.
    pub fn resume(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// `enisync pause` or `resume`, with the caller's uid from the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseRequest {
    pub pause: bool,
    pub by_uid: Option<u32>,
}

/// The operator's pause as one thing: whether it is in force, and the file that keeps it
/// (none in unit tests). The start-up responder and then the engine own it in turn, so
/// the file is read once per start and every pause or resume goes through [`Pause::apply`].
#[derive(Debug)]
pub struct Pause {
    file: Option<PauseFile>,
    in_force: Option<Paused>,
    /// Counts the changes between paused and not paused (odd: paused), for the calls
    /// that run off the engine's loop: see [`SendGate`].
    changes: Arc<AtomicU64>,
}

/// What an unassign spawned off the engine's loop asks right before it is sent: whether
/// no pause has come since the engine decided to send it. A pause, even one already
/// resumed, closes the gate for good: what it stopped goes through the send-time check
/// again. The engine's own loop asks [`Pause::in_force`].
#[derive(Debug, Clone)]
pub struct SendGate {
    changes: Arc<AtomicU64>,
    opened_at: u64,
}

impl SendGate {
    /// Whether the call may go out now.
    pub fn is_open(&self) -> bool {
        self.changes.load(Ordering::SeqCst) == self.opened_at
    }
}

impl Pause {
    fn with(file: Option<PauseFile>, in_force: Option<Paused>) -> Self {
        let changes = Arc::new(AtomicU64::new(u64::from(in_force.is_some())));
        Self {
            file,
            in_force,
            changes,
        }
    }

    /// The pause kept in `file`, read once.
    pub fn load(file: PauseFile) -> Self {
        let in_force = file.load();
        Self::with(Some(file), in_force)
    }

    /// A pause that lives in memory only (unit tests of the engine).
    pub fn in_memory() -> Self {
        Self::with(None, None)
    }

    pub fn in_force(&self) -> Option<&Paused> {
        self.in_force.as_ref()
    }

    /// The gate for an unassign the engine decides to send now (not paused): it stays
    /// open until the next pause.
    pub fn send_gate(&self) -> SendGate {
        SendGate {
            changes: Arc::clone(&self.changes),
            opened_at: self.changes.load(Ordering::SeqCst),
        }
    }

    /// Keeps `changes` odd exactly while paused. Called before the pause or resume is
    /// answered, so that no call passes the gate after a pause was acknowledged.
    fn sync_gate(&self) {
        let paused = self.in_force.is_some();
        let count = self.changes.load(Ordering::SeqCst);
        if (count % 2 == 1) != paused {
            self.changes.store(count + 1, Ordering::SeqCst);
        }
    }

    /// Pauses or resumes, on disk first, and writes the audit record. A pause always
    /// takes effect in memory, even if it cannot be written (the error says so); a
    /// resume that cannot remove the file does not take effect, since the next start
    /// would pause again anyway.
    pub fn apply(&mut self, request: PauseRequest) -> Result<(), String> {
        let uid = request
            .by_uid
            .map_or_else(|| "unknown".to_string(), |u| u.to_string());
        if request.pause {
            let written = match &self.file {
                Some(file) => file.pause(request.by_uid).map(Some).map_err(|e| {
                    format!(
                        "paused, but the pause could not be written to {}: {e}; a restart would resume releases",
                        file.path().display()
                    )
                }),
                None => Ok(None),
            };
            self.in_force = Some(written.clone().ok().flatten().unwrap_or(Paused {
                since_unix: now_unix(),
                by_uid: request.by_uid,
                note: None,
            }));
            self.sync_gate();
            tracing::info!(target: "audit", decision = "paused", by_uid = %uid, "releases paused by an operator; routing repair goes on");
            written.map(|_| ())
        } else {
            if let Some(file) = &self.file {
                file.resume().map_err(|e| {
                    format!(
                        "still paused: the pause file {} could not be removed: {e}",
                        file.path().display()
                    )
                })?;
            }
            tracing::info!(target: "audit", decision = "resumed", by_uid = %uid, "releases resumed by an operator");
            self.in_force = None;
            self.sync_gate();
            Ok(())
        }
    }
}

fn assumed(note: String) -> Paused {
    Paused {
        since_unix: now_unix(),
        by_uid: None,
        note: Some(note),
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("enisync-pause-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn a_pause_survives_a_new_reader_and_resume_clears_it() {
        let dir = temp_dir("cycle");
        let file = PauseFile::new(&dir);
        assert_eq!(file.load(), None);
        let written = file.pause(Some(1234)).expect("pause");
        // A restart reads it back with the same facts.
        let read = PauseFile::new(&dir).load().expect("still paused");
        assert_eq!(read, written);
        assert!(
            read.describe().contains("by uid 1234"),
            "{}",
            read.describe()
        );
        file.resume().expect("resume");
        assert_eq!(PauseFile::new(&dir).load(), None);
        file.resume().expect("resuming twice is fine");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unreadable_or_garbled_pause_file_means_paused() {
        let dir = temp_dir("garbled");
        std::fs::write(dir.join(PAUSE_FILE), b"{not json").expect("write");
        let paused = PauseFile::new(&dir).load().expect("garbled means paused");
        assert!(
            paused
                .note
                .as_deref()
                .unwrap_or("")
                .contains("treated as paused")
        );
        assert_eq!(paused.by_uid, None);
        // A directory where the file should be cannot be read either.
        std::fs::remove_file(dir.join(PAUSE_FILE)).expect("rm");
        std::fs::create_dir(dir.join(PAUSE_FILE)).expect("mkdir");
        let paused = PauseFile::new(&dir)
            .load()
            .expect("unreadable means paused");
        assert!(
            paused.describe().contains("cannot be read"),
            "{}",
            paused.describe()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_link_at_the_pause_file_is_not_followed() {
        let dir = temp_dir("link");
        // A well-formed pause elsewhere, by a uid that never asked: reading it through
        // the link would report that uid as the one who paused.
        let elsewhere = dir.join("elsewhere");
        std::fs::write(&elsewhere, r#"{"since_unix":1,"by_uid":4321}"#).expect("write");
        std::os::unix::fs::symlink(&elsewhere, dir.join(PAUSE_FILE)).expect("link");
        let paused = PauseFile::new(&dir).load().expect("a link means paused");
        assert_eq!(paused.by_uid, None, "{paused:?}");
        assert!(
            paused.describe().contains("cannot be read"),
            "{}",
            paused.describe()
        );

        // `paused.tmp` as a link: pausing replaces the link, the target keeps its bytes.
        std::fs::remove_file(dir.join(PAUSE_FILE)).expect("rm");
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep me").expect("write");
        std::os::unix::fs::symlink(&victim, dir.join("paused.tmp")).expect("link");
        PauseFile::new(&dir).pause(Some(7)).expect("pause");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep me");
        assert_eq!(PauseFile::new(&dir).load().and_then(|p| p.by_uid), Some(7));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
