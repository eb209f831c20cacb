//! Netlink datagrams: rtnetlink (the watcher's) and taskstats (remover identification's).

use std::collections::VecDeque;

use proptest::prelude::*;

use super::{bytes, fuzz};
use crate::host::netlink::{TaskStatsRecord, encode_for_test, parse_datagram, parse_taskstats};

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
