//! The comparison, category by category, and the two-read rule.

use std::net::Ipv4Addr;

use super::*;
use crate::cloud::{Attachment, EniIp};

const MAC1: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const MAC2: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x57]);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, last)
}

fn v4(ip: Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}

fn eni(id: &str, mac: MacAddr, primary: u8, aux: &[u8]) -> Eni {
    let entry = |last: u8, primary: bool| EniIp {
        addr: v4(ip(last)),
        primary,
        state: "AVAILABLE".into(),
        eip: None,
    };
    Eni {
        id: id.into(),
        mac,
        vpc_id: "vpc-1".into(),
        subnet_id: "subnet-1".into(),
        state: "AVAILABLE".into(),
        primary: false,
        attachment: Some(Attachment {
            instance_id: "ins-1".into(),
            device_index: 1,
        }),
        ips: std::iter::once(entry(primary, true))
            .chain(aux.iter().map(|a| entry(*a, false)))
            .collect(),
    }
}

fn link(index: u32, name: &str, mac: MacAddr) -> Link {
    Link {
        index,
        name: name.into(),
        mac: Some(mac),
        up: true,
        parent: None,
        kind: None,
    }
}

fn addr(link: u32, last: u8) -> Addr {
    Addr {
        link,
        ip: v4(ip(last)),
        prefix: 24,
        secondary: last != 10,
        v6: None,
    }
}

/// eth1 = eni-1 (10.0.1.10 primary; 11, 12 bound), holding 10 and 11 and the unbound 20;
/// a rule for 12 (absent) and one for 11 (present).
fn read(at: u64) -> Read {
    Read {
        at_unix: at,
        instance_id: "ins-1".into(),
        host: SourceRead::Ok(HostSide {
            links: vec![link(3, "eth1", MAC1)],
            addrs: vec![addr(3, 10), addr(3, 11), addr(3, 20)],
            rules: vec![
                Rule::lookup_from(ip(12), 3501, 3500, 212),
                Rule::lookup_from(ip(11), 3501, 3500, 212),
            ],
        }),
        api: SourceRead::Ok(vec![eni("eni-1", MAC1, 10, &[11, 12])]),
        metadata: SourceRead::Ok(vec![MetaEni {
            mac: MAC1,
            primary: Some(v4(ip(10))),
            ips: vec![v4(ip(10)), v4(ip(11)), v4(ip(12))],
        }]),
        exclude: Vec::new(),
        claim_cidrs: Vec::new(),
        claim_orphan_after: std::time::Duration::from_secs(3600),
        releasing: BTreeSet::new(),
    }
}

fn only(read: &Read, category: Category) -> Vec<Finding> {
    compare(read, category)
        .expect("computed")
        .into_iter()
        .collect()
}

#[test]
fn a_bound_ip_on_no_link_is_a_leak_candidate_and_the_primary_is_not() {
    let r = read(0);
    assert_eq!(
        only(&r, Category::LeakCandidate),
        vec![Finding::LeakCandidate {
            ip: v4(ip(12)),
            eni_id: "eni-1".into(),
            mac: MAC1
        }]
    );
}

#[test]
fn exclude_and_releases_in_flight_filter_leak_candidates() {
    let mut r = read(0);
    r.exclude = vec![Cidr::parse("10.0.1.12").expect("cidr")];
    assert!(only(&r, Category::LeakCandidate).is_empty());
    let mut r = read(0);
    r.releasing.insert(v4(ip(12)));
    assert!(only(&r, Category::LeakCandidate).is_empty());
}

#[test]
fn an_address_on_an_eni_link_that_the_eni_does_not_bind_is_unbound() {
    let mut r = read(0);
    let SourceRead::Ok(api) = &mut r.api else {
        unreachable!()
    };
    api.push(eni("eni-2", MAC2, 30, &[20]));
    assert_eq!(
        only(&r, Category::UnboundOnHost),
        vec![Finding::UnboundOnHost {
            ip: v4(ip(20)),
            link: "eth1".into(),
            eni_id: "eni-1".into(),
            bound_to: Some("eni-2".into()),
        }]
    );
}

#[test]
fn a_from_rule_whose_ip_is_on_no_link_is_stale() {
    let r = read(0);
    assert_eq!(
        only(&r, Category::StaleRule),
        vec![Finding::StaleRule {
            ip: v4(ip(12)),
            priority: 3500,
            table: 3501,
            protocol: 212
        }]
    );
}

#[test]
fn metadata_and_listing_disagreements_are_each_named() {
    let mut r = read(0);
    r.metadata = SourceRead::Ok(vec![
        MetaEni {
            mac: MAC1,
            primary: Some(v4(ip(11))),
            ips: vec![v4(ip(10)), v4(ip(11)), v4(ip(13))],
        },
        MetaEni {
            mac: MAC2,
            primary: None,
            ips: Vec::new(),
        },
    ]);
    let SourceRead::Ok(api) = &mut r.api else {
        unreachable!()
    };
    api.push(Eni {
        mac: MacAddr([2, 0, 0, 0, 0, 9]),
        ..eni("eni-9", MacAddr([2, 0, 0, 0, 0, 9]), 40, &[])
    });
    assert_eq!(
        only(&r, Category::MetadataMismatch),
        vec![
            Finding::MacOnlyInMetadata { mac: MAC2 },
            Finding::MacOnlyInApi {
                mac: MacAddr([2, 0, 0, 0, 0, 9]),
                eni_id: "eni-9".into()
            },
            Finding::PrimaryDiffers {
                mac: MAC1,
                eni_id: "eni-1".into(),
                metadata: Some(v4(ip(11))),
                api: Some(v4(ip(10)))
            },
            Finding::MetadataIpElsewhere {
                mac: MAC1,
                ip: v4(ip(13)),
                api_eni: None
            },
            Finding::ApiIpNotInMetadata {
                mac: MAC1,
                eni_id: "eni-1".into(),
                ip: v4(ip(12))
            },
        ]
    );
}

/// IPv6 is not compared: the host's IPv6 addresses (a global one the cloud does not
/// bind, the kernel's link-local), `Ipv6AddressSet` entries absent from the host (one
/// marked primary), an IPv6 `/128` rule and an IPv6 `/32` rule change no finding.
#[test]
fn ipv6_addresses_rules_and_listing_entries_change_no_finding() {
    let v6 = |s: &str| -> IpAddr { s.parse().expect("ipv6") };
    let mut r = read(0);
    let SourceRead::Ok(host) = &mut r.host else {
        unreachable!()
    };
    for (text, global) in [
        ("2402:4e00:1::99", true),
        ("fe80::5054:ff:fe12:3456", false),
    ] {
        host.addrs.push(Addr {
            link: 3,
            ip: v6(text),
            prefix: 64,
            secondary: false,
            v6: Some(crate::host::V6Facts {
                global,
                flags: crate::host::ifa_flags::PERMANENT,
            }),
        });
    }
    for (text, len) in [("2402:4e00:1::12", 128), ("2402:4e00::", 32)] {
        let mut rule = Rule::lookup_from(ip(12), 3501, 3500, 212);
        rule.source = Some((v6(text), len));
        host.rules.push(rule);
    }
    let SourceRead::Ok(api) = &mut r.api else {
        unreachable!()
    };
    for (text, primary) in [("2402:4e00:1::1", true), ("2402:4e00:1::11", false)] {
        api[0].ips.push(EniIp {
            addr: v6(text),
            primary,
            state: "AVAILABLE".into(),
            eip: None,
        });
    }
    for category in Category::ALL {
        assert_eq!(
            compare(&r, category),
            compare(&read(0), category),
            "{category:?}"
        );
    }
}

#[test]
fn an_eni_attached_elsewhere_is_not_reported() {
    let mut r = read(0);
    let SourceRead::Ok(api) = &mut r.api else {
        unreachable!()
    };
    let mut other = eni("eni-x", MAC2, 50, &[51]);
    other.attachment = Some(Attachment {
        instance_id: "ins-other".into(),
        device_index: 1,
    });
    api.push(other);
    assert_eq!(only(&r, Category::LeakCandidate).len(), 1);
}

#[test]
fn a_finding_counts_only_after_two_consecutive_reads() {
    let mut t = Tracker::default();
    t.observe(&read(100));
    let g = t.gauges();
    assert!(g.confirmed.iter().all(|(_, n)| *n == 0), "{g:?}");
    let report = t.report(100, Freshness::Periodic);
    assert!(report.findings.iter().all(|f| !f.confirmed));
    assert_eq!(report.categories[0].unconfirmed, 1);

    t.observe(&read(700));
    let g = t.gauges();
    assert_eq!(g.confirmed[0], (Category::LeakCandidate, 1));
    assert_eq!(g.confirmed[2], (Category::StaleRule, 1));
    let report = t.report(760, Freshness::Fresh);
    let leak = &report.findings[0];
    assert!(leak.confirmed);
    assert_eq!(leak.first_seen_unix, 100);
    assert_eq!(leak.seen_for_secs, 660);

    // Gone in one read: no longer reported; back again: unconfirmed, counting anew.
    let mut gone = read(800);
    let SourceRead::Ok(api) = &mut gone.api else {
        unreachable!()
    };
    api[0].ips.retain(|i| i.addr != v4(ip(12)));
    t.observe(&gone);
    assert_eq!(t.gauges().confirmed[0], (Category::LeakCandidate, 0));
    t.observe(&read(900));
    assert_eq!(t.gauges().confirmed[0], (Category::LeakCandidate, 0));
}

#[test]
fn a_failed_read_is_never_no_ips_and_keeps_the_last_confirmed_values() {
    let mut t = Tracker::default();
    t.observe(&read(100));
    t.observe(&read(200));
    let mut failed = read(300);
    failed.api = SourceRead::Failed("DescribeNetworkInterfaces: Transport.Timeout".into());
    failed.metadata = SourceRead::Failed("metadata network/interfaces/macs/: HTTP 500".into());
    t.observe(&failed);
    let g = t.gauges();
    assert_eq!(g.confirmed[0], (Category::LeakCandidate, 1), "kept");
    assert!(
        g.sources.contains(&(Source::Api, false, Some(200))),
        "{g:?}"
    );
    assert!(
        g.sources.contains(&(Source::Host, true, Some(300))),
        "{g:?}"
    );
    let report = t.report(300, Freshness::Fresh);
    let leak = &report.categories[0];
    assert!(leak.stale);
    assert_eq!(leak.unread_sources, vec!["api"]);
    assert_eq!(leak.computed_unix, Some(200));
    let api = &report.sources[1];
    assert_eq!(api.state, "failed");
    assert_eq!(api.last_good_unix, Some(200));
    assert!(api.error.as_deref().is_some_and(|e| e.contains("Timeout")));
    // The next good read is the second consecutive good read: still confirmed.
    t.observe(&read(400));
    assert_eq!(t.gauges().confirmed[0], (Category::LeakCandidate, 1));
}

#[test]
fn without_the_metadata_service_its_category_is_not_computed() {
    let mut r = read(0);
    r.metadata = SourceRead::NotUsed("cloud.instance_id is set");
    assert!(compare(&r, Category::MetadataMismatch).is_none());
    let mut t = Tracker::default();
    t.observe(&r);
    assert!(
        t.gauges()
            .sources
            .iter()
            .all(|(s, _, _)| *s != Source::Metadata)
    );
}

/// A read where 10.0.1.12 (bound to eni-1, on no link) is inside `claim.cidrs`.
fn claim_read(at: u64, orphan_after_secs: u64) -> Read {
    Read {
        claim_cidrs: vec![Cidr::parse("10.0.1.12/32").expect("cidr")],
        claim_orphan_after: std::time::Duration::from_secs(orphan_after_secs),
        ..read(at)
    }
}

#[test]
fn a_claim_address_bound_here_on_no_link_is_a_claim_orphan_never_a_leak_candidate() {
    let r = claim_read(0, 3600);
    assert!(only(&r, Category::LeakCandidate).is_empty());
    assert_eq!(
        only(&r, Category::ClaimOrphan),
        vec![Finding::ClaimOrphan {
            ip: v4(ip(12)),
            eni_id: "eni-1".into(),
            mac: MAC1
        }]
    );
    // Without claim.cidrs the same address is a leak candidate, not an orphan.
    assert!(only(&read(0), Category::ClaimOrphan).is_empty());
    // On the host, it is neither; excluded or being released, neither either.
    let mut present = claim_read(0, 3600);
    let SourceRead::Ok(host) = &mut present.host else {
        unreachable!()
    };
    host.addrs.push(addr(3, 12));
    assert!(only(&present, Category::ClaimOrphan).is_empty());
    let mut r = claim_read(0, 3600);
    r.exclude = vec![Cidr::parse("10.0.1.12").expect("cidr")];
    assert!(only(&r, Category::ClaimOrphan).is_empty());
    let mut r = claim_read(0, 3600);
    r.releasing.insert(v4(ip(12)));
    assert!(only(&r, Category::ClaimOrphan).is_empty());
    // A read without the host or the listing computes no orphan.
    let mut r = claim_read(0, 3600);
    r.api = SourceRead::Failed("DescribeNetworkInterfaces: timeout".into());
    assert_eq!(compare(&r, Category::ClaimOrphan), None);
}

/// Two reads are not enough: a claim orphan counts once seen absent for
/// `claim.orphan_after`, in the gauges, the counts and the finding alike.
#[test]
fn a_claim_orphan_counts_after_two_reads_and_orphan_after() {
    let orphan = |t: &Tracker| {
        t.gauges()
            .confirmed
            .iter()
            .find(|(c, _)| *c == Category::ClaimOrphan)
            .map(|(_, n)| *n)
    };
    let leak = |t: &Tracker| t.gauges().confirmed[0];
    let mut t = Tracker::default();
    t.observe(&claim_read(100, 3600));
    t.observe(&claim_read(700, 3600));
    assert_eq!(orphan(&t), Some(0));
    assert_eq!(leak(&t), (Category::LeakCandidate, 0));
    let report = t.report(760, Freshness::Periodic);
    let found: Vec<&FindingReport> = report
        .findings
        .iter()
        .filter(|f| f.category == "claim_orphan")
        .collect();
    assert_eq!(found.len(), 1, "{report:?}");
    assert!(!found[0].confirmed);
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.category != "leak_candidate")
    );
    let counts = |r: &Report| {
        let c = r
            .categories
            .iter()
            .find(|c| c.category == "claim_orphan")
            .expect("claim_orphan counted");
        (c.confirmed, c.unconfirmed)
    };
    assert_eq!(counts(&report), (0, 1));

    // One second short of orphan_after since first seen: still not counted.
    t.observe(&claim_read(3699, 3600));
    assert_eq!(orphan(&t), Some(0));
    t.observe(&claim_read(3700, 3600));
    assert_eq!(orphan(&t), Some(1));
    assert_eq!(leak(&t), (Category::LeakCandidate, 0));
    let report = t.report(3700, Freshness::Periodic);
    assert_eq!(counts(&report), (1, 0));
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.category == "claim_orphan" && f.confirmed && f.seen_for_secs == 3600)
    );

    // Back on the host for one read: it starts over.
    let mut back = claim_read(3800, 3600);
    let SourceRead::Ok(host) = &mut back.host else {
        unreachable!()
    };
    host.addrs.push(addr(3, 12));
    t.observe(&back);
    t.observe(&claim_read(3900, 3600));
    t.observe(&claim_read(4000, 3600));
    assert_eq!(orphan(&t), Some(0));
}
