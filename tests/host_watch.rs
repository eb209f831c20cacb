//! The watcher against the real kernel, each test in a network namespace of its own.
//! Needs root; fails (never skips) without it.

#[path = "common/hostns.rs"]
mod hostns;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use enisync::host::netlink::Netlink;
use enisync::host::watch::{self, WatchOptions};
use enisync::host::{Addr, HostEvent, HostView};
use hostns::*;

const QUIET: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(5);

fn addr(link: u32, ip: &str, prefix: u8, secondary: bool) -> Addr {
    Addr {
        link,
        ip: ip.parse().expect("ip"),
        prefix,
        secondary,
        v6: None,
    }
}

async fn start() -> (
    HostView,
    watch::WatchHandle,
    tokio::sync::mpsc::UnboundedReceiver<HostEvent>,
) {
    watch::start(WatchOptions::default())
        .await
        .expect("watcher starts")
}

#[test]
fn initial_dump_sees_links_and_addresses_and_earlier_removals_are_silent() {
    in_netns(|| async {
        veth("e0", "e1");
        ip("addr add 10.0.0.1/24 dev e0");
        ip("addr add 10.0.0.2/24 dev e0");
        ip("addr add 10.0.0.3/24 dev e0");
        ip("addr del 10.0.0.3/24 dev e0");
        let e0 = ifindex("e0");

        let (view, handle, mut rx) = start().await;

        let link = &view.links[&e0];
        assert_eq!(link.name, "e0");
        assert!(link.up, "{link:?}");
        assert!(link.mac.is_some());
        assert_eq!(link.kind.as_deref(), Some("veth"));
        assert!(link.is_physical(), "a veth stands in for an ENI: {link:?}");
        let lo = view.links.values().find(|l| l.name == "lo").expect("lo");
        assert!(lo.mac.is_none() && !lo.is_physical());

        // The kernel's own link-local IPv6 address is there too; IPv4 is checked here.
        let on_e0: Vec<Addr> = view
            .addrs_on(e0)
            .filter(|a| a.ip.is_ipv4())
            .copied()
            .collect();
        assert_eq!(
            on_e0,
            vec![
                addr(e0, "10.0.0.1", 24, false),
                addr(e0, "10.0.0.2", 24, true)
            ]
        );
        assert!(view.has_ip("127.0.0.1".parse().expect("ip")));
        assert!(!view.has_ip("10.0.0.3".parse().expect("ip")));

        // What was removed before the start is not an event.
        let events = events_until_quiet(&mut rx, QUIET).await;
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(handle.stats().overruns, 0);
    });
}

#[test]
fn addr_del_reports_one_removal_with_the_requesters_port() {
    in_netns(|| async {
        veth("e0", "e1");
        ip("addr add 10.0.0.1/32 dev e0");
        ip("addr add 10.0.0.9/32 dev e0");
        let e0 = ifindex("e0");
        let (mut view, _handle, mut rx) = start().await;

        let pid = ip_pid("addr del 10.0.0.1/32 dev e0");
        let events = events_until_quiet(&mut rx, QUIET).await;
        assert_eq!(events.len(), 1, "{events:?}");
        match &events[0] {
            HostEvent::AddrRemoved { addr: a, remover } => {
                assert_eq!(*a, addr(e0, "10.0.0.1", 32, false));
                let remover = remover.as_ref().expect("a notification knows its sender");
                assert_eq!(remover.port_id, pid, "the port id is the pid of `ip`");
                assert!(!remover.is_kernel());
            }
            other => panic!("unexpected {other:?}"),
        }
        view.apply(&events[0]);

        // A flags/lifetime update of a known address is not news.
        ip("addr change 10.0.0.9/32 dev e0 valid_lft 1000 preferred_lft 1000");
        let events = events_until_quiet(&mut rx, QUIET).await;
        assert!(events.is_empty(), "{events:?}");

        ip("addr add 10.0.0.1/32 dev e0");
        let event = next_event(&mut rx, WAIT).await.expect("an event");
        assert_eq!(event, HostEvent::AddrAdded(addr(e0, "10.0.0.1", 32, false)));
        view.apply(&event);
        assert!(view.has_ip("10.0.0.1".parse().expect("ip")));
    });
}

#[test]
fn link_down_and_up_are_link_changes() {
    in_netns(|| async {
        veth("e0", "e1");
        let e0 = ifindex("e0");
        let (_view, _handle, mut rx) = start().await;

        ip("link set e0 down");
        let events = events_until_quiet(&mut rx, QUIET).await;
        let downs: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                HostEvent::LinkChanged(l) if l.index == e0 => Some(l.up),
                _ => None,
            })
            .collect();
        assert_eq!(downs.last(), Some(&false), "{events:?}");

        ip("link set e0 up");
        let events = events_until_quiet(&mut rx, QUIET).await;
        let ups: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                HostEvent::LinkChanged(l) if l.index == e0 => Some(l.up),
                _ => None,
            })
            .collect();
        assert_eq!(ups.last(), Some(&true), "{events:?}");

        // A MAC change is a change too.
        ip("link set e0 address 02:00:00:00:00:42");
        let events = events_until_quiet(&mut rx, QUIET).await;
        assert!(
            events.iter().any(|e| matches!(e, HostEvent::LinkChanged(l)
                if l.index == e0 && l.mac.map(|m| m.to_string()).as_deref() == Some("02:00:00:00:00:42"))),
            "{events:?}"
        );
    });
}

#[test]
fn link_deletion_is_link_removed_and_the_kernels_deladdrs_carry_port_zero() {
    in_netns(|| async {
        veth("e0", "e1");
        ip("addr add 10.0.0.1/24 dev e0");
        ip("addr add 10.0.0.2/24 dev e0");
        let (e0, e1) = (ifindex("e0"), ifindex("e1"));
        let (mut view, _handle, mut rx) = start().await;

        ip("link del e0");
        let events = events_until_quiet(&mut rx, QUIET).await;
        let mut removed_ips = BTreeSet::new();
        for event in &events {
            if let HostEvent::AddrRemoved { addr, remover } = event {
                let remover = remover.as_ref().expect("from a notification");
                if addr.ip.is_ipv6() {
                    // The peers' link-local addresses; IPv6 notifications carry port 0
                    // whoever asked: no sender known.
                    assert!(remover.unidentified().is_some(), "{event:?}");
                    view.apply(event);
                    continue;
                }
                assert_eq!(addr.link, e0);
                assert!(remover.is_kernel(), "{event:?}");
                removed_ips.insert(addr.ip);
            }
            view.apply(event);
        }
        eprintln!("link del: {events:?}");
        let removed_links: BTreeSet<u32> = events
            .iter()
            .filter_map(|e| match e {
                HostEvent::LinkRemoved { index } => Some(*index),
                _ => None,
            })
            .collect();
        assert_eq!(removed_links, BTreeSet::from([e0, e1]), "{events:?}");
        assert!(view.addrs_on(e0).next().is_none());
        assert!(!view.links.contains_key(&e0));
        assert!(
            removed_ips.len() <= 2,
            "at most one removal per address: {events:?}"
        );
    });
}

#[test]
fn link_moved_to_another_namespace_is_link_removed() {
    in_netns(|| async {
        veth("e0", "e1");
        ip("addr add 10.0.0.1/24 dev e1");
        let e1 = ifindex("e1");
        let other = OtherNetns::new();
        let (mut view, _handle, mut rx) = start().await;

        ip(&format!("link set e1 netns {}", other.tid));
        let events = events_until_quiet(&mut rx, QUIET).await;
        eprintln!("netns move: {events:?}");
        assert!(
            events.contains(&HostEvent::LinkRemoved { index: e1 }),
            "{events:?}"
        );
        for event in &events {
            if let HostEvent::AddrRemoved { addr, remover } = event
                && addr.ip.is_ipv4()
            {
                assert!(remover.as_ref().is_some_and(|r| r.is_kernel()), "{event:?}");
            }
            view.apply(event);
        }
        assert!(!view.links.contains_key(&e1));
        assert!(!view.has_ip("10.0.0.1".parse().expect("ip")));
    });
}

/// IPv6 addresses are followed: an addition with its scope and flags, and a
/// removal by `ip -6 addr del` with no sender (the kernel sends IPv6 address
/// notifications with port 0), so nobody is named and the engine holds it.
#[test]
fn ipv6_address_changes_are_reported_with_no_sender() {
    in_netns(|| async {
        veth("e0", "e1");
        let (_view, _handle, mut rx) = start().await;
        // Let the link settle (IPv6 link-local setup) before measuring.
        let _ = events_until_quiet(&mut rx, QUIET).await;

        ip("-6 addr add fd00::1/64 dev e0 nodad");
        ip("-6 addr del fd00::1/64 dev e0");
        let events = events_until_quiet(&mut rx, QUIET).await;
        let ours: Vec<&HostEvent> = events
            .iter()
            .filter(|e| matches!(e, HostEvent::AddrAdded(a) | HostEvent::AddrRemoved { addr: a, .. } if a.ip.to_string() == "fd00::1"))
            .collect();
        assert_eq!(ours.len(), 2, "{events:?}");
        let HostEvent::AddrAdded(added) = ours[0] else {
            panic!("{events:?}")
        };
        assert_eq!(
            added.candidate(),
            Ok(()),
            "global, permanent, settled: {added:?}"
        );
        let HostEvent::AddrRemoved { remover, .. } = ours[1] else {
            panic!("{events:?}")
        };
        let remover = remover.as_ref().expect("from a notification");
        assert_eq!(remover.port_id, 0);
        assert!(
            !remover.is_kernel() && remover.unidentified().is_some(),
            "{remover:?}"
        );
    });
}

/// Three addresses of one /24 on e0 (the first is the subnet's primary), then the
/// primary deleted; returns what the watcher reported (routing noise dropped).
async fn delete_primary(promote: bool) -> (u32, u32, Vec<HostEvent>) {
    veth("e0", "e1");
    sysctl(
        "net.ipv4.conf.e0.promote_secondaries",
        if promote { "1" } else { "0" },
    );
    ip("addr add 10.1.0.1/24 dev e0");
    ip("addr add 10.1.0.2/24 dev e0");
    ip("addr add 10.1.0.3/24 dev e0");
    let e0 = ifindex("e0");
    let (_view, _handle, mut rx) = start().await;
    let pid = ip_pid("addr del 10.1.0.1/24 dev e0");
    let events = events_until_quiet(&mut rx, QUIET).await;
    eprintln!("promote_secondaries={promote}: {events:?}");
    (e0, pid, events)
}

fn removal(link: u32, ip: &str, secondary: bool, port: u32) -> (Addr, u32) {
    (addr(link, ip, 24, secondary), port)
}

fn as_removal(event: &HostEvent) -> Option<(Addr, u32)> {
    match event {
        HostEvent::AddrRemoved {
            addr,
            remover: Some(r),
        } => Some((*addr, r.port_id)),
        _ => None,
    }
}

#[test]
fn promote_secondaries_off_deletes_the_secondaries_first_with_the_users_port() {
    in_netns(|| async {
        let (e0, pid, events) = delete_primary(false).await;
        let seen: Vec<_> = events.iter().filter_map(as_removal).collect();
        assert_eq!(
            seen,
            vec![
                removal(e0, "10.1.0.2", true, pid),
                removal(e0, "10.1.0.3", true, pid),
                removal(e0, "10.1.0.1", false, pid),
            ],
            "{events:?}"
        );
        assert_eq!(seen.len(), events.len(), "nothing else: {events:?}");
    });
}

#[test]
fn promote_secondaries_on_promotes_the_next_address() {
    in_netns(|| async {
        let (e0, pid, events) = delete_primary(true).await;
        assert_eq!(
            events,
            vec![
                HostEvent::AddrRemoved {
                    addr: addr(e0, "10.1.0.1", 24, false),
                    remover: match &events[0] {
                        HostEvent::AddrRemoved { remover, .. } => remover.clone(),
                        _ => None,
                    },
                },
                HostEvent::AddrAdded(addr(e0, "10.1.0.2", 24, false)),
            ],
            "{events:?}"
        );
        assert_eq!(as_removal(&events[0]).map(|(_, port)| port), Some(pid));
    });
}

#[test]
fn overrun_resyncs_and_reports_every_removal_exactly_once() {
    in_netns(|| async {
        veth("e0", "e1");
        let e0 = ifindex("e0");
        let ip_of = |net: u8, i: u16| {
            Ipv4Addr::new(
                10,
                net,
                u8::try_from(i / 250).expect("small"),
                u8::try_from(i % 250 + 1).expect("small"),
            )
        };
        let keep = 500u16;
        let gone = 1500u16;
        let mut setup = String::new();
        for i in 0..keep + gone {
            setup.push_str(&format!("addr add {}/32 dev e0\n", ip_of(200, i)));
        }
        ip_batch(&setup);

        let opts = WatchOptions {
            // The kernel floors this at a few KiB: a handful of notifications.
            recv_buffer: 1,
            ..WatchOptions::default()
        };
        let (mut view, handle, mut rx) = watch::start(opts).await.expect("watcher starts");
        assert!(handle.effective_recv_buffer() < 64 * 1024);

        // Synchronous: the single runtime thread is blocked, nobody reads the socket.
        let mut churn = String::new();
        for i in keep..keep + gone {
            churn.push_str(&format!("addr del {}/32 dev e0\n", ip_of(200, i)));
        }
        for i in 0..1000 {
            churn.push_str(&format!("addr add {}/32 dev e0\n", ip_of(201, i)));
        }
        ip_batch(&churn);

        let mut removals: BTreeMap<std::net::IpAddr, usize> = BTreeMap::new();
        let mut resynced = false;
        let mut unknown_sender = 0;
        while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            if let HostEvent::AddrRemoved { addr, remover } = &event
                && addr.ip.is_ipv4()
            {
                *removals.entry(addr.ip).or_default() += 1;
                unknown_sender += usize::from(remover.is_none());
            }
            resynced |= event == HostEvent::Resynced;
            view.apply(&event);
        }

        let stats = handle.stats();
        eprintln!("{stats:?}, removals by resync: {unknown_sender}");
        assert!(stats.overruns >= 1, "{stats:?}");
        assert!(stats.resyncs >= 1, "{stats:?}");
        assert!(resynced, "a Resynced event arrived");
        for i in keep..keep + gone {
            let ip = ip_of(200, i);
            assert_eq!(
                removals.get(&std::net::IpAddr::V4(ip)),
                Some(&1),
                "{ip} reported once"
            );
        }
        assert_eq!(removals.len(), usize::from(gone), "nothing else removed");

        // The engine's copy, built from the view and the events, matches the kernel.
        let nl = Netlink::connect().expect("netlink");
        let kernel: BTreeSet<Addr> = nl.addrs().await.expect("dump").into_iter().collect();
        let mirror: BTreeSet<Addr> = view.addrs.values().copied().collect();
        assert_eq!(mirror, kernel);
        assert_eq!(
            view.addrs_on(e0).filter(|a| a.ip.is_ipv4()).count(),
            usize::from(keep) + 1000
        );
    });
}

#[test]
fn requested_resync_reports_no_drift_when_nothing_was_missed() {
    in_netns(|| async {
        veth("e0", "e1");
        ip("addr add 10.0.0.1/24 dev e0");
        let (_view, handle, mut rx) = start().await;
        handle.request_resync().expect("watcher runs");
        let events = events_until_quiet(&mut rx, QUIET).await;
        assert_eq!(events, vec![HostEvent::Resynced]);
        let stats = handle.stats();
        assert_eq!((stats.resyncs, stats.drift), (1, 0), "{stats:?}");
    });
}

#[test]
fn remover_process_name_is_resolved_while_it_runs() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    in_netns(|| async {
        veth("e0", "e1");
        ip("addr add 10.0.0.1/32 dev e0");
        let (_view, _handle, mut rx) = start().await;

        // `ip -batch` stays alive, reading stdin, after executing the line.
        let mut child = Command::new("ip")
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn ip");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"addr del 10.0.0.1/32 dev e0\n")
            .expect("write");
        stdin.flush().expect("flush");
        let event = next_event(&mut rx, WAIT).await.expect("an event");
        drop(stdin);
        let status = child.wait().expect("wait");
        assert!(status.success());
        match event {
            HostEvent::AddrRemoved {
                remover: Some(remover),
                ..
            } => {
                assert_eq!(remover.port_id, child.id());
                assert_eq!(remover.process.as_deref(), Some("ip"));
            }
            other => panic!("unexpected {other:?}"),
        }
    });
}

/// Removals arrive in bursts and the watcher reads each sender's name once per burst:
/// two processes removing at the same time must each still be named, per removal.
#[test]
fn concurrent_removers_in_one_burst_keep_their_own_names() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    in_netns(|| async {
        veth("e0", "e1");
        for n in 1..=40 {
            ip(&format!("addr add 10.0.0.{n}/32 dev e0"));
        }
        let (_view, _handle, mut rx) = start().await;

        // The same `ip` binary under another name: /proc/<pid>/comm is the name it was
        // started as.
        let dir = std::env::temp_dir().join(format!("enisync-remover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let other = dir.join("remover-b");
        let _ = std::fs::remove_file(&other);
        let ip_path = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("ip installed");
        std::os::unix::fs::symlink(ip_path, &other).expect("symlink");

        let spawn = |program: &std::path::Path| {
            Command::new(program)
                .args(["-batch", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .expect("spawn ip")
        };
        let mut a = spawn(std::path::Path::new(ip_path));
        let mut b = spawn(&other);
        let (mut a_in, mut b_in) = (
            a.stdin.take().expect("stdin"),
            b.stdin.take().expect("stdin"),
        );
        let (a_lines, b_lines): (String, String) = (
            (1..=20)
                .map(|n| format!("addr del 10.0.0.{n}/32 dev e0\n"))
                .collect(),
            (21..=40)
                .map(|n| format!("addr del 10.0.0.{n}/32 dev e0\n"))
                .collect(),
        );
        a_in.write_all(a_lines.as_bytes()).expect("write");
        b_in.write_all(b_lines.as_bytes()).expect("write");
        a_in.flush().expect("flush");
        b_in.flush().expect("flush");
        let events = events_until_quiet(&mut rx, QUIET).await;
        drop((a_in, b_in));
        assert!(a.wait().expect("wait").success());
        assert!(b.wait().expect("wait").success());
        let _ = std::fs::remove_dir_all(&dir);

        let mut named = 0;
        for event in &events {
            if let HostEvent::AddrRemoved {
                addr,
                remover: Some(r),
            } = event
            {
                let std::net::IpAddr::V4(v4) = addr.ip else {
                    continue; // the kernel's own IPv6 link-local addresses
                };
                let last = v4.octets()[3];
                let (pid, name) = if last <= 20 {
                    (a.id(), "ip")
                } else {
                    (b.id(), "remover-b")
                };
                assert_eq!(r.port_id, pid, "{event:?}");
                assert_eq!(r.process.as_deref(), Some(name), "{event:?}");
                named += 1;
            }
        }
        assert_eq!(named, 40, "{events:?}");
    });
}

/// A stream of notifications is read in batches (the socket is parked outside the
/// reactor for a millisecond at a time): every add and every removal still arrives,
/// once, in order per address, and the default buffer does not overrun.
#[test]
fn a_stream_read_in_batches_loses_and_repeats_nothing() {
    in_netns(|| async {
        veth("e0", "e1");
        let (_view, handle, mut rx) = start().await;
        let n = 1500u32;
        let addr = |i: u32| format!("10.9.{}.{}", i / 250, i % 250 + 1);
        let mut batch = String::new();
        for i in 0..n {
            batch.push_str(&format!("addr add {}/32 dev e0\n", addr(i)));
        }
        for i in 0..n {
            batch.push_str(&format!("addr del {}/32 dev e0\n", addr(i)));
        }
        ip_batch(&batch);
        let events = events_until_quiet(&mut rx, QUIET).await;
        let mut seen = std::collections::HashMap::<std::net::IpAddr, Vec<bool>>::new();
        for event in &events {
            match event {
                // The kernel's link-local IPv6 addresses come and go with the links.
                HostEvent::AddrAdded(a) | HostEvent::AddrRemoved { addr: a, .. }
                    if a.ip.is_ipv6() => {}
                HostEvent::AddrAdded(a) => seen.entry(a.ip).or_default().push(true),
                HostEvent::AddrRemoved { addr: a, .. } => seen.entry(a.ip).or_default().push(false),
                HostEvent::Resynced => panic!("the default buffer overran: {:?}", handle.stats()),
                _ => {}
            }
        }
        assert_eq!(seen.len(), n as usize);
        for (ip, history) in &seen {
            assert_eq!(history, &[true, false], "{ip}");
        }
        assert_eq!(handle.stats().overruns, 0);
    });
}

#[test]
fn new_links_are_link_changes() {
    in_netns(|| async {
        let (_view, _handle, mut rx) = start().await;
        veth("n0", "n1");
        let events = events_until_quiet(&mut rx, QUIET).await;
        for name in ["n0", "n1"] {
            let index = ifindex(name);
            assert!(
                events.iter().any(|e| matches!(e, HostEvent::LinkChanged(l)
                    if l.index == index && l.name == name)),
                "{name}: {events:?}"
            );
        }
    });
}

#[test]
fn routing_changes_are_coalesced() {
    in_netns(|| async {
        veth("e0", "e1");
        ip("addr add 10.0.0.1/24 dev e0");
        let (_view, _handle, mut rx) = start().await;
        let _ = events_until_quiet(&mut rx, QUIET).await;

        ip("rule add from 10.0.0.1 lookup 300 pref 100");
        ip("route add 10.7.0.0/16 via 10.0.0.2 table 300");
        ip("route add 10.8.0.0/16 via 10.0.0.2 table 300");
        let mut routing = 0;
        while let Ok(Some(event)) = tokio::time::timeout(QUIET, rx.recv()).await {
            assert_eq!(event, HostEvent::RoutingChanged);
            routing += 1;
        }
        assert_eq!(routing, 1, "one burst, one event");
    });
}

#[test]
fn periodic_resync_runs_and_finds_no_drift() {
    in_netns(|| async {
        veth("e0", "e1");
        ip("addr add 10.0.0.1/24 dev e0");
        let opts = WatchOptions {
            resync_interval: Duration::from_millis(100),
            ..WatchOptions::default()
        };
        let (_view, handle, mut rx) = watch::start(opts).await.expect("watcher starts");
        tokio::time::sleep(Duration::from_millis(350)).await;
        let stats = handle.stats();
        assert!(stats.resyncs >= 2, "{stats:?}");
        assert_eq!(stats.drift, 0, "{stats:?}");
        let events = events_until_quiet(&mut rx, Duration::from_millis(50)).await;
        assert!(
            events.iter().all(|e| *e == HostEvent::Resynced),
            "{events:?}"
        );
    });
}
