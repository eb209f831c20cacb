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

/// (3) `check-config` refuses what `run` would refuse or crash on, naming the key: a
/// zero resync interval (a panic in `run` before), a public metrics address without
/// `allow_remote` (refused only at start before), a duration that overflows the clock,
/// a log level that would silently drop the audit records.
#[test]
fn check_config_refuses_what_run_would_refuse_naming_the_key() {
    for (text, key, why) in [
        (
            "[netlink]\nresync_interval = \"0s\"\n",
            "netlink.resync_interval",
            "longer than 0",
        ),
        (
            "[metrics]\naddress = \"0.0.0.0:9469\"\n",
            "metrics.address",
            "allow_remote",
        ),
        (
            "[release]\ngrace = \"200000000000000000m\"\n",
            "release.grace",
            "too long",
        ),
        (
            "[release]\nburst_limit = 100000000\n",
            "release.burst_limit",
            "out of range",
        ),
        ("[log]\nlevel = \"verbose\"\n", "log.level", "bad directive"),
        (
            "[log]\nlevel = \"info,audit=off\"\n",
            "log.level",
            "release history",
        ),
        (
            "[cloud]\ninstance_id = \"ins-1\"\n",
            "cloud.instance_id",
            "cloud.region",
        ),
        (
            "[cloud]\nmax_calls_per_second = 1000\n",
            "cloud.max_calls_per_second",
            "at most 100",
        ),
        // A dropped "s" would send tokens and signatures in clear.
        (
            "[cloud]\nendpoint = \"http://vpc.ap-guangzhou.tencentcloudapi.com\"\n",
            "cloud.endpoint",
            "cloud.allow_plain_http = true",
        ),
    ] {
        let (code, out, err) = check_config(text);
        assert_eq!(code, 1, "{text:?} must be refused; said {out}{err}");
        assert!(err.contains(key) && err.contains(why), "{text:?}: {err}");
    }
    let (code, _, err) =
        check_config("[metrics]\naddress = \"0.0.0.0:9469\"\nallow_remote = true\n");
    assert_eq!(code, 0, "allow_remote opts in: {err}");
    let (code, _, err) =
        check_config("[cloud]\nendpoint = \"http://127.0.0.1:8080/\"\nallow_plain_http = true\n");
    assert_eq!(code, 0, "allow_plain_http opts in: {err}");
}

/// (3) Run as root, `check-config` checks that the service user can read the file and
/// write `state.dir`, by trying as that user: a root-owned 0600 file passes every other
/// check and then cannot be read under `User=enisync`.
#[test]
fn check_config_as_root_checks_the_service_users_access() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (it switches to another user); run it as root, as CI does"
    );
    let dir = std::env::temp_dir().join(format!("enisync-cli-user-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let state = dir.join("state");
    std::fs::create_dir(&state).expect("state dir");
    let path = dir.join("enisync.toml");
    std::fs::write(&path, format!("[state]\ndir = \"{}\"\n", state.display())).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let check = |user: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_enisync"))
            .args(["check-config", "--service-user", user, "--config"])
            .arg(&path)
            .output()
            .expect("run enisync");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = check("nobody");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("nobody cannot read"), "{text}");

    let chown = |p: &std::path::Path| {
        let status = Command::new("chown")
            .arg("nobody")
            .arg(p)
            .status()
            .expect("chown");
        assert!(status.success());
    };
    chown(&path);
    let (code, text) = check("nobody");
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("`state.dir`") && text.contains("cannot write"),
        "{text}"
    );

    chown(&state);
    let (code, text) = check("nobody");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("service user nobody can read it"), "{text}");

    let (code, text) = check("no-such-user-here");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no user"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `[claim]`: `check-config` refuses what `run` would, naming the key and the reason:
/// an IPv6 claim CIDR, missing peers, and a claim CIDR that covers a release.include.
#[test]
fn claim_nonsense_exits_1_naming_the_key() {
    for (text, key, reason) in [
        (
            "# claim v6\n[claim]\ncidrs = [\"fd00::100/128\"]\npeers = [\"ins-a1\"]\n",
            "claim",
            "IPv4-only",
        ),
        (
            "# claim without peers\n[claim]\ncidrs = [\"10.0.1.100/32\"]\n",
            "claim.peers",
            "required with claim.cidrs",
        ),
        (
            "# claim covers include\n[release]\ninclude = [\"10.0.1.100/32\"]\n[claim]\ncidrs = [\"10.0.1.100/32\"]\npeers = [\"ins-a1\"]\n",
            "claim.cidrs[0]",
            "covers release.include[0]",
        ),
    ] {
        let (code, _, err) = check_config(text);
        assert_eq!(code, 1, "{text}: {err}");
        assert!(err.contains(key) && err.contains(reason), "{text}: {err}");
    }
    let (code, _, err) = check_config(
        "# a valid claim section\n[claim]\ncidrs = [\"10.0.1.100/32\"]\npeers = [\"ins-a1\"]\n",
    );
    assert_eq!(code, 0, "{err}");
}
