use super::proc_events::{CN_MSG_LEN, NLMSG_HDR_LEN, PROC_EVENT_EXIT};
use super::*;

fn address_message(del: bool, last: u8) -> Vec<u8> {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = 24;
    msg.header.index = 2;
    msg.attributes
        .push(AddressAttribute::Local(IpAddr::V4(Ipv4Addr::new(
            10, 0, 1, last,
        ))));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(Ipv4Addr::new(
            10, 0, 1, last,
        ))));
    let inner = if del {
        RouteNetlinkMessage::DelAddress(msg)
    } else {
        RouteNetlinkMessage::NewAddress(msg)
    };
    let mut packet = NetlinkMessage::from(inner);
    packet.header.port_number = 4242;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

#[test]
fn a_datagram_with_several_messages_yields_each_in_order() {
    let mut datagram = address_message(false, 5);
    datagram.extend(address_message(true, 6));
    let mut out = VecDeque::new();
    parse_datagram(&datagram, &mut out);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(
        matches!(&out[0], Notification::NewAddr { addr, .. } if addr.ip == IpAddr::V4(Ipv4Addr::new(10, 0, 1, 5)))
    );
    assert!(
        matches!(&out[1], Notification::DelAddr { addr, port_id: 4242 }
        if addr.ip == IpAddr::V4(Ipv4Addr::new(10, 0, 1, 6)))
    );
}

/// `struct proc_event` of an exit, as the kernel sends it (with `parent_pid` and
/// `parent_tgid`), and the shorter one of kernels before 4.18.
#[test]
fn an_exit_event_carries_its_parent() {
    let event = |fields: &[u32]| {
        let mut ev = Vec::new();
        ev.extend_from_slice(&PROC_EVENT_EXIT.to_ne_bytes());
        ev.extend_from_slice(&0u32.to_ne_bytes()); // cpu
        ev.extend_from_slice(&77u64.to_ne_bytes()); // timestamp_ns
        for f in fields {
            ev.extend_from_slice(&f.to_ne_bytes());
        }
        let mut msg = Vec::new();
        let len = u32::try_from(NLMSG_HDR_LEN + CN_MSG_LEN + ev.len()).expect("small");
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&[0; NLMSG_HDR_LEN - 4 + CN_MSG_LEN]);
        msg.extend_from_slice(&ev);
        msg
    };
    // pid, tgid, exit_code, exit_signal, parent_pid, parent_tgid
    assert_eq!(
        parse_proc_events(&event(&[500, 500, 0, 17, 41, 40])),
        vec![ProcEvent::Exit {
            pid: 500,
            parent: Some(40),
            at_ns: 77
        }]
    );
    assert_eq!(
        parse_proc_events(&event(&[500, 500, 0, 17])),
        vec![ProcEvent::Exit {
            pid: 500,
            parent: None,
            at_ns: 77
        }]
    );
    // A thread that is not its group's leader is not a process's exit.
    assert!(parse_proc_events(&event(&[501, 500, 0, 17, 41, 40])).is_empty());
}

#[test]
fn garbage_after_a_good_message_is_an_overrun_not_a_panic() {
    let mut datagram = address_message(true, 7);
    datagram.extend([0xff; 9]);
    let mut out = VecDeque::new();
    parse_datagram(&datagram, &mut out);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(matches!(out[0], Notification::DelAddr { .. }));
    assert!(matches!(out[1], Notification::Overrun));

    let mut out = VecDeque::new();
    parse_datagram(&[0u8; 3], &mut out);
    assert!(matches!(out.pop_front(), Some(Notification::Overrun)));
}

#[test]
fn route_for_big_table_carries_the_attribute() {
    let route = Route {
        table: 10_001,
        dst: Ipv4Addr::UNSPECIFIED,
        prefix: 0,
        gateway: Some(Ipv4Addr::new(10, 0, 1, 1)),
        oif: Some(3),
        prefsrc: None,
        metric: None,
        tos: 0,
        protocol: 212,
        scope: Scope::Universe,
        unicast: true,
        raw: None,
    };
    let msg = route_to_msg(&route);
    assert!(msg.attributes.contains(&RouteAttribute::Table(10_001)));
    assert_eq!(msg.header.protocol, RouteProtocol::Other(212));
    let back = route_from_msg(msg).expect("ipv4 route");
    assert!(back.same_effect(&route));
}

#[test]
fn rule_round_trip() {
    let rule = Rule::lookup_from(Ipv4Addr::new(10, 0, 1, 5), 10_002, 1000, 212);
    let back = rule_from_msg(rule_to_msg(&rule)).expect("ipv4 rule");
    assert!(back.same_effect(&rule));
    assert_eq!(back.protocol, 212);
    assert_eq!(
        back.sole_source_host(),
        Some(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 5)))
    );
}

/// IPv6 addresses: the 32-bit `IFA_FLAGS` wins over the header's 8 bits (where
/// `mngtmpaddr` does not fit), bit 0x01 is `temporary` and never `secondary`, and the
/// scope says global or not.
#[test]
fn an_ipv6_address_carries_its_scope_and_32_bit_flags() {
    use netlink_packet_route::address::AddressFlags;
    let ip: std::net::Ipv6Addr = "2402:4e00:1::11".parse().expect("ipv6");
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet6;
    msg.header.prefix_len = 64;
    msg.header.index = 2;
    msg.header.scope = AddressScope::Universe;
    msg.header.flags = AddressHeaderFlags::Secondary | AddressHeaderFlags::Permanent;
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V6(ip)));
    msg.attributes.push(AddressAttribute::Flags(
        AddressFlags::Permanent | AddressFlags::Managetempaddr | AddressFlags::Secondary,
    ));
    let addr = messages::addr_from_msg(&msg).expect("parsed");
    assert_eq!(addr.ip, IpAddr::V6(ip));
    assert!(!addr.secondary);
    let facts = addr.v6.expect("facts");
    assert!(facts.global);
    assert_eq!(facts.flags, 0x80 | 0x100 | 0x01);
    assert_eq!(addr.candidate(), Err(crate::host::NotCandidate::Temporary));

    // Without IFA_FLAGS, the header's bits; a link-local scope is not global.
    msg.attributes
        .retain(|a| !matches!(a, AddressAttribute::Flags(_)));
    msg.header.flags = AddressHeaderFlags::Permanent;
    msg.header.scope = AddressScope::Link;
    let addr = messages::addr_from_msg(&msg).expect("parsed");
    assert_eq!(addr.v6.expect("facts").flags, 0x80);
    assert_eq!(addr.candidate(), Err(crate::host::NotCandidate::NotGlobal));
}

// ===== taskstats exit records =====

/// A record as a version-13 kernel sends it for a single-threaded process.
fn record(pid: u32, comm: &str, ppid: u32, etime_us: u64) -> TaskStatsRecord {
    TaskStatsRecord {
        version: 13,
        pid,
        tgid: Some(pid),
        comm: comm.into(),
        ppid,
        uid: 0,
        flags: 0,
        btime: 1_700_000_000,
        etime_us,
    }
}

#[test]
fn a_taskstats_record_is_parsed_by_offset_whatever_its_version() {
    let r = record(4242, "ip", 17, 1234);
    // Version 13 as the header here defines it (416 bytes), and a longer, newer one.
    for len in [416, 480] {
        let parsed = parse_taskstats(&encode_for_test(27, &r, len), 27);
        assert_eq!(parsed, vec![r.clone()], "{len}");
    }
    // Another family's message is not ours.
    assert!(parse_taskstats(&encode_for_test(27, &r, 416), 28).is_empty());
    // Version 11: no ac_tgid (a thread cannot be told from a process).
    let old = TaskStatsRecord {
        version: 11,
        tgid: None,
        ..r.clone()
    };
    assert_eq!(
        parse_taskstats(&encode_for_test(27, &old, 360), 27),
        vec![old]
    );
    // Claims version 12 but stops before ac_tgid: read as without it.
    let short = TaskStatsRecord {
        version: 12,
        ..r.clone()
    };
    let parsed = parse_taskstats(&encode_for_test(27, &short, 300), 27);
    assert_eq!(parsed.first().map(|p| p.tgid), Some(None));
    // Too short for ac_etime, or version 1 (no accounting fields): skipped.
    assert!(parse_taskstats(&encode_for_test(27, &r, 150), 27).is_empty());
    let v1 = TaskStatsRecord { version: 1, ..r };
    assert!(parse_taskstats(&encode_for_test(27, &v1, 416), 27).is_empty());
    // Every truncation of a valid datagram parses without a panic, and never yields
    // more than the one record.
    let full = encode_for_test(27, &record(7, "x", 1, 1), 416);
    for cut in 0..full.len() {
        assert!(parse_taskstats(&full[..cut], 27).len() <= 1);
    }
}
