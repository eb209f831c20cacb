//! The journal file.

use proptest::prelude::*;

use super::{bytes, fuzz};
use crate::journal;

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
                    by_hand: false,
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
