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
        by_hand: false,
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
            by_hand: false,
        }
    );
    assert_eq!(
        r.live[1].key(),
        IntentKey::release(Ipv4Addr::new(10, 0, 0, 4), 0)
    );
    assert!(matches!(&r.live[1].state, RecordState::Sent { task, .. } if task.task_id == "t-4"));
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

/// IPv6 intents need no new schema: the key is an `IpAddr`, written and replayed as
/// such, held flag and unknown remover included.
#[test]
fn an_ipv6_intent_is_replayed_with_its_held_unknown_remover() {
    let dir = tmpdir("ipv6");
    let v6: std::net::Ipv6Addr = "2402:4e00:1::11".parse().expect("ipv6");
    let held = RecordState::Observed {
        link: "eth1".into(),
        mac: None,
        eni_id: Some("eni-1".into()),
        remover: Some(RemoverRecord {
            port_id: 0,
            unknown: Some("IPv6 address notifications carry no sender".into()),
            ..Default::default()
        }),
        held: true,
        sending: false,
        by_hand: false,
    };
    {
        let (mut j, _) = Journal::open(&dir).expect("open");
        j.append(IntentKey::release(v6, 3), "boot1", held.clone())
            .expect("append");
    }
    let (_, r) = Journal::open(&dir).expect("reopen");
    assert_eq!(r.live.len(), 1);
    let rec = &r.live[0];
    assert_eq!(rec.addr, std::net::IpAddr::V6(v6));
    assert_eq!(rec.generation, 3);
    assert_eq!(rec.state, held);
    let remover: crate::host::Remover = match &rec.state {
        RecordState::Observed {
            remover: Some(r), ..
        } => r.clone().into(),
        other => panic!("{other:?}"),
    };
    assert!(
        !remover.is_kernel(),
        "port 0 of an IPv6 removal is not the kernel"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A cancelled record as the journal has written it since schema 2 (the reason a plain
/// key string) still reads, as its typed key, and is written back byte for byte; a key
/// this binary does not know (a newer binary's) reads too and is kept as it was.
#[test]
fn cancelled_records_of_todays_format_read_and_write_back_unchanged() {
    let lines = [
        (
            r#"{"v":2,"addr":"10.0.0.2","generation":3,"kind":"release","boot_id":"boot1","at_ms":5,"state":{"state":"finished","outcome":{"kind":"cancelled","reason":"ignored_remover","detail":"dhclient"}}}"#,
            CancelKey::IgnoredRemover,
        ),
        (
            r#"{"v":2,"addr":"10.0.0.3","generation":1,"kind":"release","boot_id":"boot1","at_ms":6,"state":{"state":"finished","outcome":{"kind":"cancelled","reason":"link_down"}}}"#,
            CancelKey::LinkDown,
        ),
        (
            r#"{"v":2,"addr":"10.0.0.4","generation":0,"kind":"release","boot_id":"boot0","at_ms":7,"state":{"state":"finished","outcome":{"kind":"cancelled","reason":"schema_1","detail":"its link went down"}}}"#,
            CancelKey::Schema1,
        ),
        (
            r#"{"v":2,"addr":"10.0.0.5","generation":2,"kind":"release","boot_id":"boot1","at_ms":8,"state":{"state":"finished","outcome":{"kind":"cancelled","reason":"a_reason_from_a_newer_binary"}}}"#,
            CancelKey::Unknown("a_reason_from_a_newer_binary".into()),
        ),
    ];
    for (json, key) in lines {
        let line = format!("{:016x} {json}", fnv1a64(json.as_bytes()));
        let Some(Decoded::Record(rec, false)) = decode_line(&line) else {
            panic!("does not read: {line}");
        };
        let RecordState::Finished {
            outcome: OutcomeRecord::Cancelled { reason, .. },
        } = &rec.state
        else {
            panic!("not a cancelled record: {rec:?}");
        };
        assert_eq!(reason, &key);
        assert_eq!(
            encode_line(&rec),
            format!("{line}\n"),
            "written back unchanged"
        );
    }
}
