//! Fuzzing on stable (issue #11 item 10): every parser that reads bytes from outside the
//! process (the config file, the journal, netlink datagrams, taskstats exit records, the
//! API's and the metadata service's answers) is fed generated input for a bounded number
//! of cases, with a fixed seed, under `cargo test` (so CI runs it).
//!
//! The properties: no input panics (in the release build a panic aborts the daemon);
//! every refusal is a classified error (an `ErrorClass` the engine acts on, a config
//! error that names a key); nothing grows beyond what its input could hold (inputs are
//! bounded, and results are checked against the input's size); secrets never reach an
//! error message. Inputs are both raw bytes and structured ones (answers assembled from
//! the fields the parsers look for, datagrams with valid headers and random attributes),
//! because raw bytes alone rarely get past the first check.
//!
//! `ENISYNC_FUZZ_CASES=n` runs `n` cases per target instead of the CI default, and
//! `ENISYNC_FUZZ_SEED=n` another seed; a failure prints the shrunk input, which then goes
//! into the regression list of its target (`REGRESSIONS_*` below).

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::collections::VecDeque;
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, RngSeed, TestRunner};
use serde_json::{Value, json};

use crate::cloud::classify::{TencentCode, classify};
use crate::cloud::{CloudError, ErrorClass, legacy, metadata, v3};
use crate::config::{Config, ConfigError};
use crate::host::netlink::parse_datagram;
use crate::host::netlink::{TaskStatsRecord, encode_for_test, parse_taskstats};
use crate::journal;

/// Cases per target in CI: together well under a minute of a debug build on two cores.
const DEFAULT_CASES: u32 = 4000;
const DEFAULT_SEED: u64 = 0x0e15_11c0_ffee;

fn runner(weight: u32) -> TestRunner {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let cases = env("ENISYNC_FUZZ_CASES")
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(DEFAULT_CASES * weight);
    TestRunner::new(RunnerConfig {
        cases,
        rng_seed: RngSeed::Fixed(env("ENISYNC_FUZZ_SEED").unwrap_or(DEFAULT_SEED)),
        // Regressions live in this file, not in a directory the test writes.
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..RunnerConfig::default()
    })
}

/// Runs `check` on every regression input, then on `strategy`'s cases.
fn fuzz<S: Strategy>(
    weight: u32,
    regressions: &[S::Value],
    strategy: S,
    check: impl Fn(&S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: Clone + std::fmt::Debug,
{
    for input in regressions {
        check(input).unwrap_or_else(|e| panic!("regression {input:?}: {e}"));
    }
    let result = runner(weight).run(&strategy, |input| check(&input));
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Bytes that are mostly text, sometimes not.
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..max),
        ".{0,64}".prop_map(String::into_bytes),
    ]
}

/// A JSON value built from the names the parsers look for, nested a few levels.
fn json_value(names: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        proptest::sample::select(WORDS).prop_map(|w| json!(w)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(names), inner), 0..6).prop_map(
                |fields| {
                    Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }
            ),
        ]
    })
}

/// Values a parser might give meaning to.
const WORDS: &[&str] = &[
    "",
    "SUCCESS",
    "FAILED",
    "RUNNING",
    "Success",
    "AVAILABLE",
    "10.0.1.11",
    "10.0.1.256",
    "::1",
    "52:54:00:12:34:56",
    "52:54:00:12:34",
    "zz:zz:zz:zz:zz:zz",
    "eni-1",
    "ins-1",
    "0",
    "2",
    "-1",
    "18446744073709551616",
    "LimitExceeded.ActionLimited",
    "ActionLocked",
    "InvalidPrivateip.IsPrimary",
    "AuthFailure.TokenFailure",
    "ResourceNotFound",
];

const V3_NAMES: &[&str] = &[
    "Response",
    "Error",
    "Code",
    "Message",
    "RequestId",
    "TotalCount",
    "NetworkInterfaceSet",
    "NetworkInterfaceId",
    "MacAddress",
    "VpcId",
    "SubnetId",
    "State",
    "Primary",
    "Attachment",
    "InstanceId",
    "DeviceIndex",
    "PrivateIpAddressSet",
    "PrivateIpAddress",
    "AddressId",
    "Status",
];

const LEGACY_NAMES: &[&str] = &[
    "code", "codeDesc", "message", "data", "taskId", "status", "output",
];

/// An API answer: raw bytes, a structured JSON value, or a well-formed one with one
/// field replaced.
fn api_body(names: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(256),
        json_value(names).prop_map(|v| v.to_string().into_bytes()),
        json_value(names).prop_map(|v| json!({ "Response": v }).to_string().into_bytes()),
        (json_value(names), proptest::sample::select(names)).prop_map(|(v, name)| {
            let mut good = json!({"Response": {"RequestId": "r", "TotalCount": 1, "Status": "SUCCESS",
                "NetworkInterfaceSet": [{"NetworkInterfaceId": "eni-1", "MacAddress": "52:54:00:12:34:56",
                "VpcId": "vpc-1", "SubnetId": "s", "PrivateIpAddressSet": [{"PrivateIpAddress": "10.0.1.11"}]}],
                "code": 0, "data": {"taskId": 7, "status": 2}}});
            good["Response"][name] = v;
            good.to_string().into_bytes()
        }),
    ]
}

/// A classified cloud error: the class is the table's for the code, and a reply we
/// could not use is `Response.Malformed`, retried later.
fn classified(err: &CloudError) -> Result<(), TestCaseError> {
    prop_assert!(!err.code.is_empty(), "an error without a code: {err}");
    if err.code == "Response.Malformed" {
        prop_assert_eq!(err.class, ErrorClass::RetryLater);
    }
    Ok(())
}

#[test]
fn fuzz_v3_answers() {
    fuzz(2, &[], api_body(V3_NAMES), |body| {
        for result in [
            v3::parse_unassign(body).map(|_| 0),
            v3::parse_task_status(body).map(|_| 0),
            v3::parse_eni_page(body).map(|(enis, _)| enis.len()),
        ] {
            match result {
                // No ENI or IP comes from nowhere: each took bytes of the body.
                Ok(n) => prop_assert!(n <= body.len() / 8),
                Err(err) => {
                    classified(&err)?;
                    // API 3.0 codes are classified by the one table, from the code alone.
                    prop_assert_eq!(err.class, classify(TencentCode::Code(&err.code)));
                }
            }
        }
        if let Ok((enis, _)) = v3::parse_eni_page(body) {
            let ips: usize = enis.iter().map(|e| e.ips.len()).sum();
            prop_assert!(ips <= body.len() / 8);
        }
        Ok(())
    });
}

#[test]
fn fuzz_legacy_answers() {
    fuzz(2, &[], api_body(LEGACY_NAMES), |body| {
        for result in [
            legacy::parse_unassign(body).map(|t| t.task_id.len()),
            legacy::parse_task_status(body).map(|_| 0),
        ] {
            match result {
                Ok(n) => prop_assert!(n <= body.len()),
                Err(err) => classified(&err)?,
            }
        }
        // A legacy error is classified from its number and business name.
        if let Ok(Value::Object(reply)) = serde_json::from_slice::<Value>(body)
            && let Some(code) = reply.get("code").and_then(Value::as_i64)
            && code != 0
        {
            let desc = reply.get("codeDesc").and_then(Value::as_str).unwrap_or("");
            let err = legacy::parse_task_status(body).unwrap_err();
            prop_assert_eq!(
                err.class,
                classify(TencentCode::Legacy {
                    code,
                    code_desc: desc
                })
            );
        }
        Ok(())
    });
}

#[test]
fn fuzz_metadata_answers() {
    let body = prop_oneof![
        bytes(512).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        proptest::collection::vec(proptest::sample::select(WORDS), 0..8)
            .prop_map(|lines| lines.join("/\n")),
        json_value(&[
            "Code",
            "TmpSecretId",
            "TmpSecretKey",
            "Token",
            "ExpiredTime",
            "Expiration",
        ])
        .prop_map(|v| v.to_string()),
    ];
    fuzz(2, &[], body, |body| {
        let lines = body.lines().count();
        match metadata::parse_macs(Some(body.clone())) {
            Ok(macs) => prop_assert!(macs.len() <= lines),
            Err(e) => {
                let malformed = matches!(e, metadata::MetadataError::Malformed { .. });
                prop_assert!(malformed, "{}", e);
            }
        }
        match metadata::parse_ip_listing("p", Some(body.clone())) {
            Ok(ips) => prop_assert!(ips.len() <= lines),
            Err(e) => {
                // The value is shown cut short, never a whole answer.
                prop_assert!(e.to_string().chars().count() <= 800, "{}", e);
            }
        }
        let _ = metadata::parse_ip("p", body);
        let _ = crate::net::MacAddr::parse(body);
        match crate::cloud::credentials::parse_role_document("role", Some(body)) {
            Ok(keys) => prop_assert!(!keys.secret_key.expose().is_empty()),
            Err(e) => {
                // Never the body: it may hold keys.
                let text = e.to_string();
                prop_assert!(body.len() < 8 || !text.contains(body.as_str()), "{}", text);
            }
        }
        Ok(())
    });
}

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
        "allow_plain_http",
        "legacy_sign_method",
        "timeout",
        "connect_timeout",
        "task_timeout",
        "max_calls_per_second",
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

/// A journal file: good lines (as enisync writes them) mixed with damaged ones.
fn journal_text() -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<bool>)> {
    let good = (
        0u8..4,
        0u8..4,
        proptest::sample::select(&["observed", "sent", "finished"][..]),
    )
        .prop_map(|(ip, boot, state)| {
            let state = match state {
                "observed" => journal::RecordState::Observed {
                    link: "eth1".into(),
                    mac: None,
                    eni_id: Some("eni-1".into()),
                    remover: None,
                    held: false,
                    sending: false,
                },
                "sent" => journal::RecordState::Sent {
                    eni_id: "eni-1".into(),
                    task: crate::task::TaskRef {
                        request_id: None,
                        task_id: "7".into(),
                        protocol: crate::task::Protocol::Legacy,
                    },
                },
                _ => journal::RecordState::Finished {
                    outcome: journal::OutcomeRecord::AlreadyGone,
                },
            };
            journal::encode_line(&journal::Record {
                v: journal::SCHEMA_VERSION,
                addr: std::net::Ipv4Addr::new(10, 0, 1, 10 + ip).into(),
                generation: u64::from(boot),
                kind: journal::IntentKind::Release,
                boot_id: format!("boot-{boot}"),
                at_ms: 1,
                state,
            })
            .into_bytes()
        });
    let line = prop_oneof![
        3 => good.prop_map(|l| (l, true)),
        1 => proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 1..80)
            .prop_map(|l| { let mut l = l; l.push(b'\n'); (l, false) }),
        1 => (good_line_for_damage(), any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(l, at, b)| {
                let mut l = l;
                // Any byte but the final newline; the checksum's hex digits read the
                // same in either case, so a case flip there is no damage.
                let i = at.index(l.len() - 1);
                let damaged = b != b'\n' && l[i] != b && !(i < 16 && l[i].eq_ignore_ascii_case(&b));
                if b != b'\n' { l[i] = b; }
                (l, !damaged)
            }),
    ];
    proptest::collection::vec(line, 0..24).prop_map(|lines| lines.into_iter().unzip())
}

fn good_line_for_damage() -> impl Strategy<Value = Vec<u8>> {
    (0u8..4).prop_map(|ip| {
        journal::encode_line(&journal::Record {
            v: journal::SCHEMA_VERSION,
            addr: std::net::Ipv4Addr::new(10, 0, 1, 10 + ip).into(),
            generation: 1,
            kind: journal::IntentKind::Release,
            boot_id: "boot-0".into(),
            at_ms: 1,
            state: journal::RecordState::Finished {
                outcome: journal::OutcomeRecord::DryRun,
            },
        })
        .into_bytes()
    })
}

#[test]
fn fuzz_journal_reader() {
    // Arbitrary bytes: no panic, and no more results than lines.
    fuzz(1, &[], bytes(1024), |raw| {
        let (replay, live, foreign) = journal::read_lines(&raw[..]).unwrap();
        let lines = raw.split(|b| *b == b'\n').count();
        prop_assert!(live.len() + replay.corrupt_lines.len() + foreign.len() <= lines);
        Ok(())
    });
    // Good lines among damaged ones: the damaged lines cost only themselves.
    fuzz(1, &[], journal_text(), |(lines, good)| {
        let all: Vec<u8> = lines.concat();
        let only_good: Vec<u8> = lines
            .iter()
            .zip(good)
            .filter(|(_, g)| **g)
            .flat_map(|(l, _)| l.clone())
            .collect();
        let (_, live_all, _) = journal::read_lines(&all[..]).unwrap();
        let (_, live_good, _) = journal::read_lines(&only_good[..]).unwrap();
        prop_assert_eq!(live_all, live_good);
        Ok(())
    });
}

/// A netlink datagram: messages with valid headers (types the watcher handles, and
/// others) and random bodies, attributes mostly well-framed, lengths sometimes lying.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    let attr = (
        0u16..16,
        proptest::collection::vec(any::<u8>(), 0..20),
        any::<bool>(),
    )
        .prop_map(|(kind, data, honest)| {
            let len = if honest {
                data.len() + 4
            } else {
                data.len() + 7
            };
            let mut out = Vec::new();
            out.extend(u16::try_from(len).unwrap().to_ne_bytes());
            out.extend(kind.to_ne_bytes());
            out.extend(&data);
            out.resize(out.len().next_multiple_of(4), 0);
            out
        });
    let message = (
        proptest::sample::select(&[1u16, 2, 3, 4, 16, 17, 20, 21, 24, 25, 32, 33, 0xffff][..]),
        proptest::collection::vec(any::<u8>(), 0..16),
        proptest::collection::vec(attr, 0..6),
        any::<u32>(),
        0u8..4,
    )
        .prop_map(|(kind, header, attrs, port, lie)| {
            let mut body = header;
            body.extend(attrs.concat());
            let mut len = u32::try_from(body.len() + 16).unwrap();
            match lie {
                0 => len = len.wrapping_add(4),
                1 => len = len.saturating_sub(3),
                _ => {}
            }
            let mut out = Vec::new();
            out.extend(len.to_ne_bytes());
            out.extend(kind.to_ne_bytes());
            out.extend(0u16.to_ne_bytes()); // flags
            out.extend(0u32.to_ne_bytes()); // sequence
            out.extend(port.to_ne_bytes());
            out.extend(body);
            out.resize(out.len().next_multiple_of(4), 0);
            out
        });
    prop_oneof![
        bytes(512),
        proptest::collection::vec(message, 1..5).prop_map(|m| m.concat()),
    ]
}

#[test]
fn fuzz_netlink_datagram_parser() {
    fuzz(3, REGRESSIONS_NETLINK, datagram(), |datagram| {
        let mut out = VecDeque::new();
        parse_datagram(datagram, &mut out);
        // Each notification consumed at least four bytes, or ended the datagram.
        prop_assert!(out.len() <= datagram.len() / 4 + 1);
        // Every datagram says something: at worst an overrun, and the watcher resyncs.
        prop_assert_eq!(out.is_empty(), datagram.is_empty());
        Ok(())
    });
}

/// Datagrams that found a bug in the netlink parser, kept as regression cases.
const REGRESSIONS_NETLINK: &[Vec<u8>] = &[];

/// Taskstats datagrams as the kernel builds them, of any version and struct length,
/// then cut or with a byte changed; and raw bytes.
fn taskstats_datagram() -> impl Strategy<Value = Vec<u8>> {
    let record = (
        any::<u16>(),
        any::<u32>(),
        proptest::option::of(any::<u32>()),
        "[a-z0-9 ()-]{0,40}",
        any::<u32>(),
        any::<u64>(),
        0usize..700,
    )
        .prop_map(|(version, pid, tgid, comm, ppid, etime_us, len)| {
            let r = TaskStatsRecord {
                version: version % 20,
                pid,
                tgid,
                comm,
                ppid,
                uid: 0,
                flags: 0,
                btime: 0,
                etime_us,
            };
            encode_for_test(27, &r, len)
        });
    let damaged = (
        proptest::collection::vec(record, 1..4),
        any::<usize>(),
        any::<u8>(),
    )
        .prop_map(|(msgs, at, byte)| {
            let mut d = msgs.concat();
            match at % 3 {
                0 => d.truncate(at % (d.len() + 1)),
                1 => {
                    let i = at % d.len().max(1);
                    if let Some(b) = d.get_mut(i) {
                        *b = byte;
                    }
                }
                _ => {}
            }
            d
        });
    prop_oneof![bytes(1024), damaged]
}

#[test]
fn fuzz_taskstats_parser() {
    fuzz(2, &[], taskstats_datagram(), |datagram| {
        let records = parse_taskstats(datagram, 27);
        // A record needs at least its header and the struct up to ac_etime.
        prop_assert!(records.len() * 152 <= datagram.len());
        for r in &records {
            prop_assert!(r.comm.chars().count() <= 32);
            prop_assert!(r.version >= 2);
        }
        Ok(())
    });
}
