//! The IPv6 deletion probe's inputs: ring records (written by our programs, but read
//! from kernel memory shared with them) and BTF blobs (the kernel's type information).

use proptest::prelude::*;

use super::{bytes, fuzz};
use crate::host::bpf::record::{self, Body};
use crate::host::bpf::{Btf, Deletions, Drained};

/// A record of any kind (valid or not), with random fields and request bytes: a netlink
/// header whose length lies or not, then random bytes.
fn ring_record() -> impl Strategy<Value = Vec<u8>> {
    let structured = (
        0u32..6,
        any::<[u32; 4]>(),
        any::<u64>(),
        any::<i64>(),
        any::<[i32; 2]>(),
        proptest::collection::vec(any::<u8>(), 16),
        0u32..400,
        proptest::collection::vec(any::<u8>(), 0..record::PAYLOAD_LEN),
    )
        .prop_map(|(kind, ids, ktime, ret, reads, comm, len, payload)| {
            let mut b = vec![0u8; record::SIZE];
            b[record::KIND..record::KIND + 4].copy_from_slice(&kind.to_ne_bytes());
            for (i, v) in ids.iter().enumerate() {
                b[record::TGID + 4 * i..record::TGID + 4 * i + 4].copy_from_slice(&v.to_ne_bytes());
            }
            b[record::KTIME..record::KTIME + 8].copy_from_slice(&ktime.to_ne_bytes());
            b[record::RET..record::RET + 8].copy_from_slice(&ret.to_ne_bytes());
            b[record::READ..record::READ + 4].copy_from_slice(&(reads[0] % 2).to_ne_bytes());
            b[record::NETNS_READ..record::NETNS_READ + 4]
                .copy_from_slice(&(reads[1] % 2).to_ne_bytes());
            b[record::COMM..record::COMM + 16].copy_from_slice(&comm);
            let mut req = len.to_ne_bytes().to_vec();
            req.extend(21u16.to_ne_bytes());
            req.extend(payload);
            let n = req.len().min(record::PAYLOAD_LEN);
            b[record::PAYLOAD..record::PAYLOAD + n].copy_from_slice(&req[..n]);
            b
        });
    prop_oneof![bytes(record::SIZE + 8), structured]
}

#[test]
fn fuzz_bpf_ring_records() {
    fuzz(2, &[], ring_record(), |raw| {
        let Ok(r) = record::parse(raw) else {
            return Ok(());
        };
        prop_assert_eq!(raw.len(), record::SIZE);
        prop_assert!(r.comm.len() <= 3 * 16);
        // Whatever the records say, attributing removals never panics, and a request
        // that names nobody's namespace or nothing readable never names a process.
        let unreadable = matches!(
            r.body,
            Body::Entry { netns: None, .. } | Body::Entry { target: None, .. }
        );
        let mut d = Deletions::new(7);
        d.add(
            Drained {
                records: vec![r.clone()],
                incomplete: None,
            },
            r.ktime,
        );
        let got = d.attribute(1, std::net::Ipv6Addr::LOCALHOST, r.ktime);
        if unreadable {
            prop_assert!(
                !matches!(got, crate::host::bpf::Attribution::Process { .. }),
                "{got:?}"
            );
        }
        Ok(())
    });
}

/// A BTF header with sections that fit or not, then random types.
fn btf_blob() -> impl Strategy<Value = Vec<u8>> {
    let structured = (
        proptest::collection::vec(any::<u8>(), 0..600),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<u8>(),
    )
        .prop_map(|(types, strings, lie)| {
            let mut b = Vec::new();
            b.extend(0xeb9fu16.to_ne_bytes());
            b.extend([1u8, 0]);
            b.extend(24u32.to_ne_bytes());
            let type_len = u32::try_from(types.len()).unwrap();
            let str_len = u32::try_from(strings.len()).unwrap();
            b.extend(0u32.to_ne_bytes());
            b.extend((type_len + u32::from(lie % 3 == 0)).to_ne_bytes());
            b.extend(type_len.to_ne_bytes());
            b.extend(str_len.to_ne_bytes());
            b.extend(types);
            b.extend(strings);
            b
        });
    prop_oneof![bytes(256), structured]
}

#[test]
fn fuzz_btf_parser() {
    fuzz(2, &[], btf_blob(), |blob| {
        if let Ok(btf) = Btf::parse(blob) {
            // Lookups on whatever parsed end in an answer or an error, never a panic.
            let _ = btf.function("inet6_rtm_deladdr");
            let _ = btf.offset_of("sock", &["__sk_common", "skc_net", "net"]);
        }
        Ok(())
    });
}
