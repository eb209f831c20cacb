//! The config file.

use std::path::Path;

use proptest::prelude::*;

use super::fuzz;
use crate::config::{Config, ConfigError};

/// A config line: a section header, or a known key with a value of any type.
fn config_text() -> impl Strategy<Value = String> {
    const SECTIONS: &[&str] = &[
        "[cloud]",
        "[metadata]",
        "[release]",
        "[routing]",
        "[state]",
        "[log]",
        "[netlink]",
        "[metrics]",
        "[control]",
        "[[interface]]",
        "[nope]",
        "[cloud.x]",
    ];
    const KEYS: &[&str] = &[
        "api",
        "region",
        "instance_id",
        "endpoint",
        "v3_endpoint",
        "endpoints",
        "allow_plain_http",
        "legacy_sign_method",
        "timeout",
        "connect_timeout",
        "task_timeout",
        "max_calls_per_second",
        "max_ipv6_calls_per_second",
        "grace",
        "dry_run",
        "interfaces",
        "include",
        "exclude",
        "ignore_removers",
        "burst_limit",
        "burst_window",
        "coalesce",
        "host_limit",
        "host_limit_window",
        "mode",
        "table_base",
        "rule_priority",
        "dir",
        "format",
        "level",
        "receive_buffer",
        "resync_interval",
        "enabled",
        "address",
        "allow_remote",
        "socket",
        "mac",
        "eni",
        "vpc",
        "device_index",
        "gateway",
        "cloud",
    ];
    const VALUES: &[&str] = &[
        "\"30s\"",
        "\"0ms\"",
        "\"1.5s\"",
        "\"99999999999999999999m\"",
        "\"18446744073709551615m\"",
        "\"-1s\"",
        "\"\"",
        "0",
        "-1",
        "1e400",
        "nan",
        "inf",
        "4294967296",
        "99999999999999999999",
        "true",
        "\"v3\"",
        "\"legacy\"",
        "\"http://127.0.0.1:1/\"",
        "\"https://x/\"",
        "\"ftp://x\"",
        "\"10.0.0.0/33\"",
        "[\"10.0.0.0/8\", \"x\"]",
        "[\"eth*\", \"\"]",
        "\"52:54:00:AB:CD:EF\"",
        "\"eni-1\"",
        "\"ins-1\"",
        "\"/var/lib/enisync\"",
        "\"rel\"",
        "\"127.0.0.1:9469\"",
        "\"0.0.0.0:1\"",
        "\"info,audit=off\"",
        "\"manage\"",
        "{ a = 1 }",
        "[[1], {}]",
        "\"\\u0000\\u001b[31m\"",
        "'''multi\nline'''",
    ];
    let line = prop_oneof![
        proptest::sample::select(SECTIONS).prop_map(str::to_owned),
        (
            proptest::sample::select(KEYS),
            proptest::sample::select(VALUES)
        )
            .prop_map(|(k, v)| format!("{k} = {v}")),
        // Secrets in every shape: they must never come back in an error.
        proptest::sample::select(
            &[
                "secret_key = \"CANARYsecret\"",
                "secret_id = \"CANARYsecret\"",
                "secret_key = \"CANARYsecret",
                "secret_key = CANARYsecret",
                "secret_key = [\"CANARYsecret\"]",
                "secret_id = { x = \"CANARYsecret\" }",
                "cloud = { secret_id = \"a\", secret_key = \"CANARYsecret\", x = 1 }",
                "cloud = { secret_id = \"a\", secret_key = 0xCA11AB1E }",
                "secret_key = 3_141_592_653",
            ][..]
        )
        .prop_map(str::to_owned),
        ".{0,24}",
    ];
    proptest::collection::vec(line, 0..16).prop_map(|lines| lines.join("\n"))
}

/// What a config error may not contain: the secret values `config_text` plants.
const SECRET_SHOWN: &[&str] = &[
    "CANARYsecret",
    "CA11AB1E",
    "3390155550", // 0xCA11AB1E as a message would print it
    "3141592653",
    "3_141_592_653",
];

#[test]
fn fuzz_config_parser() {
    let regressions: Vec<String> = REGRESSIONS_CONFIG.iter().map(|s| (*s).to_owned()).collect();
    fuzz(2, &regressions, config_text(), |text| {
        match Config::parse(text, Path::new("/fuzz.toml")) {
            Ok(config) => {
                // What validation promises holds for what it let through.
                prop_assert!(config.state.dir.is_absolute());
                prop_assert!((1..=1_000_000).contains(&config.release.burst_limit));
                prop_assert!(config.restart_needed(&config).is_empty());
            }
            Err(ConfigError::Invalid { key, reason, .. }) => {
                prop_assert!(!key.is_empty());
                let shown = format!("{key}: {reason}");
                for secret in SECRET_SHOWN {
                    prop_assert!(!shown.contains(secret), "a secret in an error: {}", shown);
                }
            }
            Err(e @ ConfigError::Read { .. }) => prop_assert!(false, "{}", e),
        }
        Ok(())
    });
}

/// Inputs that found a bug in the config parser, kept as regression cases.
const REGRESSIONS_CONFIG: &[&str] = &[
    // A secret quoted by a type error inside an inline table, whose error named the key
    // `cloud` and so was not redacted.
    "cloud = { secret_id = \"a\", secret_key = 0xCA11AB1E }",
];
