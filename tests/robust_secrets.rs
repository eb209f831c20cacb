//! Secrets never leak: a canary key and token, given through each
//! credential source (config file, environment, systemd credentials, the CAM role of
//! the fake metadata service), never appear in the daemon's log at debug level (every
//! crate) while it releases, reloads, and meets auth errors; nor in `check-config`
//! errors; nor in a panic message that carries the configuration or the keys.
//!
//! Nor in the operator-facing outputs ([`other_outputs`]: `status`, `plan`, `/metrics`),
//! read while the daemon runs.

#[path = "common/sandbox.rs"]
mod sandbox;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use enisync_fakecloud::Fault;
use sandbox::{INSTANCE, Layout, Sandbox, aux};

const SOON: Duration = Duration::from_secs(20);
const CANARY_ID: &str = "AKIDcanaryID0123456789";
const CANARY_KEY: &str = "canaryKEY-9f8e7d6c5b4a";
const CANARY_TOKEN: &str = "canaryTOKEN-00112233445566778899";

/// The operator-facing outputs of the running daemon: `status` (table and JSON),
/// `plan` (table and JSON) and `/metrics`; every test in this file checks them for the
/// canaries too.
fn other_outputs(sb: &Sandbox) -> Vec<(&'static str, String)> {
    let text = |args: &[&str]| {
        let out = sb.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    vec![
        ("status", text(&["status"])),
        ("status --json", text(&["status", "--json"])),
        ("plan", text(&["plan"])),
        ("plan --json", text(&["plan", "--json"])),
        ("/metrics", sb.http_get(9469, "/metrics").1),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Source {
    Config,
    Env,
    Systemd,
    CamRole,
}

/// Runs the daemon with keys from `source`, makes it sign, release, reload, refresh and
/// meet auth errors, then returns the canaries it was given, the operator outputs read
/// just before it stopped, and everything it printed.
fn exercise(source: Source) -> (Vec<String>, Vec<(&'static str, String)>, Sandbox) {
    let mut sb = Sandbox::new(
        &format!("sec{}", source as u8),
        Layout {
            config_keys: false,
            cloud: match source {
                Source::Config => vec![
                    format!("secret_id = \"{CANARY_ID}\""),
                    format!("secret_key = \"{CANARY_KEY}\""),
                ],
                _ => vec![],
            },
            ..Layout::default()
        },
    );
    sb.edit_config(|c| {
        c.replace(
            &format!("level = \"{}\"", sandbox::LOG_LEVEL),
            "level = \"debug,enisync=trace\"",
        )
    });
    let mut canaries = vec![CANARY_KEY.to_owned()];
    match source {
        Source::Config => sb.fake.add_key(CANARY_ID, CANARY_KEY),
        Source::Env => {
            sb.fake.add_temporary_key(
                CANARY_ID,
                CANARY_KEY,
                CANARY_TOKEN,
                Duration::from_secs(3600),
            );
            sb.env.extend([
                ("TENCENTCLOUD_SECRET_ID".into(), CANARY_ID.into()),
                ("TENCENTCLOUD_SECRET_KEY".into(), CANARY_KEY.into()),
                ("TENCENTCLOUD_SESSION_TOKEN".into(), CANARY_TOKEN.into()),
            ]);
            canaries.push(CANARY_TOKEN.into());
        }
        Source::Systemd => {
            sb.fake.add_temporary_key(
                CANARY_ID,
                CANARY_KEY,
                CANARY_TOKEN,
                Duration::from_secs(3600),
            );
            let dir = sb.dir.join("credentials");
            std::fs::create_dir_all(&dir).expect("credentials dir");
            for (name, value) in [
                ("tencentcloud_secret_id", CANARY_ID),
                ("tencentcloud_secret_key", CANARY_KEY),
                ("tencentcloud_session_token", CANARY_TOKEN),
            ] {
                std::fs::write(dir.join(name), format!("{value}\n")).expect("credential");
            }
            sb.env.push((
                "CREDENTIALS_DIRECTORY".into(),
                dir.to_string_lossy().into_owned(),
            ));
            canaries.push(CANARY_TOKEN.into());
        }
        Source::CamRole => {
            sb.fake
                .set_cam_role(INSTANCE, Some("enisync-role"))
                .expect("role");
        }
    }
    sb.start();
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    sb.wait_for(".12 released", SOON, || {
        !sb.ips_in_cloud().contains(&aux(12))
    });
    // Auth trouble: a signature refusal, a rejected token (refresh path), a skewed clock.
    sb.fake.inject(
        "UnassignPrivateIpAddresses",
        Fault::error("AuthFailure.SignatureFailure"),
        1,
    );
    sb.ip("addr del 10.0.1.13/24 dev eth1");
    sb.wait_log("parked", SOON);
    sb.fake
        .inject("*", Fault::error("AuthFailure.TokenFailure"), 1);
    sb.fake.set_clock_offset_secs(600);
    sb.signal("HUP");
    sb.wait_log("configuration reloaded", SOON);
    sb.wait_for(".13 released", SOON, || {
        !sb.ips_in_cloud().contains(&aux(13))
    });
    let outputs = other_outputs(&sb);
    let (status, _) = sb.stop_within(Duration::from_secs(10));
    assert!(status.success());
    if let Source::CamRole = source {
        let key = sb.fake.cam_key(INSTANCE).expect("a CAM key was issued");
        canaries = vec![key.secret_key, key.token];
    }
    (canaries, outputs, sb)
}

fn assert_no_canary(what: &str, text: &str, canaries: &[String]) {
    for canary in canaries {
        assert!(
            !text.contains(canary.as_str()),
            "{what} leaks a secret ({canary}):\n{text}"
        );
    }
}

fn check_source(source: Source) {
    let (canaries, outputs, sb) = exercise(source);
    let log = sb.all_log_text();
    assert!(
        log.lines().count() > 50 && log.contains("DEBUG"),
        "{source:?}: the log is at debug level:\n{log}"
    );
    assert_no_canary(&format!("{source:?}: the log"), &log, &canaries);
    assert_eq!(
        outputs.len(),
        5,
        "status, status --json, plan, plan --json, /metrics"
    );
    for (name, text) in &outputs {
        assert_no_canary(&format!("{source:?}: {name}"), text, &canaries);
    }
    println!(
        "{source:?}: {} log lines at debug level, no secret",
        log.lines().count()
    );
}

#[test]
fn config_file_keys_never_leak() {
    check_source(Source::Config);
}

#[test]
fn environment_keys_never_leak() {
    check_source(Source::Env);
}

#[test]
fn systemd_credentials_never_leak() {
    check_source(Source::Systemd);
}

#[test]
fn cam_role_keys_never_leak() {
    check_source(Source::CamRole);
}

/// `check-config` (and `run`) on broken configs that hold the canaries: the errors name
/// the problem, never the secret, even when the broken line is the secret's own.
#[test]
fn config_errors_never_echo_secrets() {
    let dir = std::env::temp_dir().join(format!("enisync-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let good = format!("secret_id = \"{CANARY_ID}\"\nsecret_key = \"{CANARY_KEY}\"\n");
    let cases = [
        // The secret's own line is the broken one.
        format!("[cloud]\nsecret_id = \"{CANARY_ID}\"\nsecret_key = \"{CANARY_KEY}\n"),
        format!("[cloud]\nsecret_id = \"{CANARY_ID}\"\nsecret_key = \"{CANARY_KEY}\" junk\n"),
        format!("[cloud]\nsecret_id = \"{CANARY_ID}\"\nsecret_key = [\"{CANARY_KEY}\"]\n"),
        // The line next to it.
        format!("[cloud]\n{good}region = \n"),
        format!("[cloud]\n{good}bogus_key = 1\n"),
        // Valid TOML, invalid values.
        format!("[cloud]\n{good}timeout = \"soon\"\n[release]\ngrace = \"-1s\"\n"),
        format!("[cloud]\nsecret_id = \"{CANARY_ID}\"\n"),
        format!("[cloud]\nsecret_key = \"{CANARY_KEY}\"\n"),
    ];
    let canaries = [CANARY_KEY.to_owned()];
    for (i, text) in cases.iter().enumerate() {
        let path = dir.join(format!("case{i}.toml"));
        std::fs::write(&path, text).expect("write");
        // 0600, so the parser and validation run (a readable file is refused first).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        for cmd in ["check-config", "run"] {
            // `run` only on configs check-config refused (never reaches the network).
            let out = Command::new(env!("CARGO_BIN_EXE_enisync"))
                .args([cmd, "--config"])
                .arg(&path)
                .env_remove("RUST_LOG")
                .output()
                .expect("run enisync");
            let text_out = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // Every case is invalid, so `run` stops at the config and contacts nothing.
            assert!(!out.status.success(), "case {i} is invalid: {text_out}");
            assert_no_canary(&format!("{cmd} on case {i}"), &text_out, &canaries);
            if cmd == "check-config" {
                println!("case {i}: {}", text_out.trim());
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A panic whose message carries the configuration or the keys (the usual way secrets
/// end up in a panic: `{:?}` of a struct) shows `***`, never the value.
#[test]
fn a_panic_message_with_the_config_or_keys_shows_no_secret() {
    use enisync::cloud::clock::{ServerClock, SystemClock};
    use enisync::cloud::credentials::{CredentialProvider, CredentialSources, Secret};
    use std::sync::Arc;

    let dir = std::env::temp_dir().join(format!("enisync-panic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("enisync.toml");
    std::fs::write(
        &path,
        format!("[cloud]\nregion = \"ap-guangzhou\"\nsecret_id = \"{CANARY_ID}\"\nsecret_key = \"{CANARY_KEY}\"\n"),
    )
    .expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let config = enisync::config::Config::load(&path).expect("valid config");
    let token = CANARY_TOKEN.to_owned();
    let provider = CredentialProvider::new(
        CredentialSources {
            systemd_dir: None,
            config_keys: None,
            env: Box::new(move |name| match name {
                "TENCENTCLOUD_SECRET_ID" => Some(CANARY_ID.to_owned()),
                "TENCENTCLOUD_SECRET_KEY" => Some(CANARY_KEY.to_owned()),
                "TENCENTCLOUD_SESSION_TOKEN" => Some(token.clone()),
                _ => None,
            }),
            metadata: None,
        },
        Arc::new(ServerClock::new(Arc::new(SystemClock))),
    )
    .expect("provider");
    let messages: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&messages);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.lock().expect("hook").push(info.to_string());
    }));
    let _ = std::panic::catch_unwind(|| panic!("invariant broken with {config:?}"));
    let _ = std::panic::catch_unwind(|| panic!("invariant broken with {config:#?}"));
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| panic!("keys {provider:?}")));
    let _ = std::panic::catch_unwind(|| panic!("secret {}", Secret::new(CANARY_KEY)));
    std::panic::set_hook(previous);
    let messages = messages.lock().expect("messages").join("\n");
    assert!(messages.contains("invariant broken"), "{messages}");
    assert_no_canary(
        "a panic message",
        &messages,
        &[CANARY_KEY.to_owned(), CANARY_TOKEN.to_owned()],
    );
    std::fs::remove_dir_all(&dir).ok();
}
