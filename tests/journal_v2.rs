//! Journal schema 2: a schema-1 journal written by the binary before it is
//! migrated on start, and a `kill -9` in the middle of the migration leaves the old file
//! whole, migrated by the next start. No root needed: the journal is a file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use enisync::journal::{
    HANG_MIGRATION_ENV, HANG_MIGRATION_MARK, IntentKey, Journal, RecordState, RemoverRecord,
};

/// Written by the schema-1 library (commit 922197b, `Journal::append`): pending, sent,
/// held, sending and finished intents, and the forgotten-task shape (`Sent` then
/// `Observed` for one IP, which schema 1 could only keep the second of).
const V1_FIXTURE: &str = include_str!("data/v1/intents.journal");

/// When set, this test binary is the child that migrates (and hangs, by the hook).
const CHILD_DIR_ENV: &str = "ENISYNC_JOURNAL_V2_CHILD_DIR";

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("enisync-journal-v2-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp");
    d
}

fn ip(last: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 0, 1, last)
}

/// Checks the migrated journal in `dir`, as a start would see it.
fn assert_migrated(dir: &Path) {
    let (_, replay) = Journal::open(dir).expect("open");
    assert!(
        replay.corrupt_lines.is_empty(),
        "{:?}",
        replay.corrupt_lines
    );
    let text = std::fs::read_to_string(dir.join("intents.journal")).expect("read");
    assert!(
        text.lines().all(|l| l.contains(r#"{"v":2,"addr":"#)),
        "every record is schema 2 now:\n{text}"
    );
    let keys: Vec<IntentKey> = replay.live.iter().map(|r| r.key()).collect();
    let want: Vec<IntentKey> = [11, 12, 13, 14, 17, 18]
        .into_iter()
        .map(|n| IntentKey::release(ip(n), 0))
        .collect();
    assert_eq!(keys, want, "the live intents, finished ones dropped");
    let state = |n: u8| {
        &replay
            .live
            .iter()
            .find(|r| r.addr == ip(n))
            .expect("live")
            .state
    };
    // The remover is typed: no more `port_id: u32::MAX, process: "ip (port 16598)"`.
    assert!(
        matches!(state(11), RecordState::Observed { remover: Some(RemoverRecord { port_id: 16598, process: Some(p), unknown: None, .. }), held: false, sending: false, .. } if p == "ip"),
        "{:?}",
        state(11)
    );
    assert!(
        matches!(state(12), RecordState::Sent { task, .. } if task.task_id == "task-12"),
        "the sent task is kept: {:?}",
        state(12)
    );
    assert!(
        matches!(
            state(13),
            RecordState::Observed {
                remover: None,
                held: true,
                ..
            }
        ),
        "{:?}",
        state(13)
    );
    assert!(
        matches!(state(14), RecordState::Observed { remover: Some(RemoverRecord { port_id: 7, process: Some(p), unknown: None, .. }), sending: true, .. } if p == "my (odd) tool"),
        "{:?}",
        state(14)
    );
    assert!(
        matches!(state(17), RecordState::Sent { task, .. } if task.task_id == "4711"),
        "{:?}",
        state(17)
    );
}

#[test]
fn a_v1_journal_written_by_the_previous_binary_is_migrated_on_open() {
    let dir = tmpdir("fixture");
    std::fs::write(dir.join("intents.journal"), V1_FIXTURE).expect("write");
    let (_, replay) = Journal::open(&dir).expect("open");
    assert_eq!(replay.migrated, V1_FIXTURE.lines().count());
    assert_migrated(&dir);
    let (_, again) = Journal::open(&dir).expect("reopen");
    assert_eq!(again.migrated, 0, "migrated once");
    std::fs::remove_dir_all(&dir).ok();
}

/// The migration's temp file is written and synced, then the process is killed with
/// SIGKILL before the rename: the old file is whole, and the next open migrates it.
#[test]
fn a_kill_9_in_the_middle_of_the_migration_keeps_the_old_file_and_a_restart_migrates() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        // The child: migrate; the hook hangs after the temp file is on disk.
        let (_, replay) = Journal::open(Path::new(&dir)).expect("open");
        panic!(
            "the migration hook did not hang (migrated {})",
            replay.migrated
        );
    }
    let dir = tmpdir("kill9");
    let journal = dir.join("intents.journal");
    std::fs::write(&journal, V1_FIXTURE).expect("write");
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "a_kill_9_in_the_middle_of_the_migration_keeps_the_old_file_and_a_restart_migrates",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, &dir)
        .env(HANG_MIGRATION_ENV, "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(HANG_MIGRATION_MARK) => break,
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("the child never reached the migration's rename: {seen:#?}");
            }
        }
    }
    child.kill().expect("kill -9"); // SIGKILL
    let status = child.wait().expect("wait");
    assert!(!status.success(), "killed: {status:?}");
    assert_eq!(
        std::fs::read_to_string(&journal).expect("read"),
        V1_FIXTURE,
        "the old file is whole"
    );
    let tmp = std::fs::read_to_string(dir.join("intents.tmp")).expect("the temp file is there");
    assert!(
        tmp.lines().all(|l| l.contains(r#"{"v":2,"addr":"#)),
        "{tmp}"
    );
    // The restart migrates (and replaces the leftover temp file).
    assert_migrated(&dir);
    assert!(!dir.join("intents.tmp").exists());
    std::fs::remove_dir_all(&dir).ok();
}
