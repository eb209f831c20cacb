//! The command line contract: `check-config` names the key and the reason and exits 1.

use std::process::Command;

fn check_config(text: &str) -> (i32, String, String) {
    let dir =
        std::env::temp_dir().join(format!("enisync-cli-{}-{}", std::process::id(), text.len()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("enisync.toml");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_enisync"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run enisync");
    std::fs::remove_dir_all(&dir).ok();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (k) A misspelt key: exit 1, the message names the key.
#[test]
fn k_misspelt_key_exits_1_naming_the_key() {
    let (code, _, err) = check_config("[release]\ngrace = \"30s\"\nburst_limt = 3\n");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("release.burst_limt"), "{err}");
}

/// (k) A bad duration: exit 1, the message names the key and the units.
#[test]
fn k_bad_duration_exits_1_naming_the_key() {
    let (code, _, err) = check_config("[release]\ngrace = \"30 sec\"\n");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("release.grace") && err.contains("ms, s or m"),
        "{err}"
    );
}

#[test]
fn a_valid_file_passes() {
    let (code, out, err) = check_config("[release]\ngrace = \"45s\"\ndry_run = true\n");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_enisync"))
        .args(["check-config", "--config", "/nonexistent/enisync.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/enisync.toml"));
}

#[test]
fn version_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_enisync"))
        .arg("--version")
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("enisync "));
}
