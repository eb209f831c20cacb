//! The trigger rule, clause by clause (docs/design.md): each test names the clause it
//! proves; the kernel-level versions live in `tests/e2e.rs`.

use super::*;

#[tokio::test(start_paused = true)]
async fn clause4_readded_within_grace_is_not_released() {
    let h = start(&[11], |_| {});
    h.remove(11, by("ip"));
    sleep(Duration::from_secs(10)).await;
    h.add(addr(11, true));
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn clause4_readded_on_another_link_or_prefix_is_not_released() {
    let h = start(&[11, 12], |_| {});
    h.remove(11, by("ip"));
    h.add(Addr {
        link: 1,
        ..addr(11, false)
    });
    h.remove(12, by("ip"));
    h.add(Addr {
        prefix: 32,
        ..addr(12, false)
    });
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn clause2_kernel_and_ignored_removers_are_not_released() {
    let h = start(&[11, 12, 13], |_| {});
    h.remove(11, Some(Remover::kernel()));
    // comm is truncated to 15 bytes by the kernel.
    h.remove(12, by("systemd-network"));
    h.remove(13, by("dhclient"));
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn clause3_secondaries_swept_with_their_primary_are_not_released() {
    let h = start(&[11, 12], |_| {});
    // promote_secondaries=0: the kernel deletes the secondaries, then the primary, all
    // on behalf of the same requester.
    h.remove(11, by("ip"));
    h.remove(12, by("ip"));
    h.remove_addr(addr(10, false), by("ip"));
    sleep(GRACE * 2).await;
    assert!(
        h.cloud.calls().is_empty(),
        "neither the primary nor the swept aux IPs"
    );
    let snap = h.snapshot().await;
    assert!(
        snap.recent
            .iter()
            .all(|f| f.outcome == Outcome::Cancelled(Cancel::Collateral))
    );
}

#[tokio::test(start_paused = true)]
async fn clause5_link_down_or_gone_within_grace_is_not_released() {
    let h = start(&[11, 12], |_| {});
    h.remove(11, by("ip"));
    h.events
        .send(HostEvent::LinkChanged(link(2, "eth1", false)))
        .expect("send");
    sleep(GRACE * 2).await;
    h.events
        .send(HostEvent::LinkChanged(link(2, "eth1", true)))
        .expect("send");
    h.remove(12, by("ip"));
    h.events
        .send(HostEvent::LinkRemoved { index: 2 })
        .expect("send");
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn clause5_non_physical_and_unselected_links_are_not_released() {
    let h = start(&[11, 12], |s| s.interfaces = vec!["eth0".into()]);
    h.remove(11, by("ip"));
    let macvlan = Link {
        parent: Some(2),
        kind: Some("macvlan".into()),
        ..link(3, "mv0", true)
    };
    h.events
        .send(HostEvent::LinkChanged(macvlan))
        .expect("send");
    h.add(Addr {
        link: 3,
        ..addr(40, false)
    });
    h.remove_addr(
        Addr {
            link: 3,
            ..addr(40, false)
        },
        by("ip"),
    );
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn config_filters_include_and_exclude() {
    let h = start(&[11, 12], |s| {
        s.include = vec![Cidr::parse("10.0.1.0/28").expect("cidr")];
        s.exclude = vec![Cidr::parse("10.0.1.11/32").expect("cidr")];
    });
    h.remove(11, by("ip"));
    h.remove(12, by("ip"));
    sleep(GRACE * 2).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(12)]]);
}

/// An address of a claim CIDR leaving the host is never released, even inside
/// `release.include`: the next holder migrates it (docs/design.md, "Claims").
#[tokio::test(start_paused = true)]
async fn claim_addresses_are_never_released() {
    let h = start(&[11, 12, 13], |s| {
        s.include = vec![Cidr::parse("10.0.1.0/24").expect("cidr")];
        s.claim.cidrs = vec![
            Cidr::parse("10.0.1.11/32").expect("cidr"),
            Cidr::parse("10.0.1.12/32").expect("cidr"),
        ];
    });
    h.remove(11, by("ip"));
    h.remove(12, by("ip"));
    h.remove(13, by("ip"));
    sleep(GRACE * 2).await;
    // Only the address outside the claim CIDRs goes.
    assert_eq!(h.cloud.calls(), vec![vec![ip(13)]]);
}

#[tokio::test(start_paused = true)]
async fn clause6_a_burst_is_held_until_an_operator_confirms() {
    let aux: Vec<u8> = (11..21).collect();
    let h = start(&aux, |s| s.burst_limit = 8);
    for n in &aux {
        h.remove(*n, by("ip"));
    }
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty(), "held");
    let snap = h.snapshot().await;
    assert_eq!(
        snap.intents
            .iter()
            .filter(|i| i.phase == Phase::Held)
            .count(),
        10
    );
    let (tx, rx) = oneshot::channel();
    h.commands
        .send(Command::ReleaseHeld(tx))
        .await
        .expect("send");
    assert_eq!(rx.await.expect("reply"), 10);
    sleep(Duration::from_secs(5)).await;
    let calls = h.cloud.calls();
    assert_eq!(
        calls.len(),
        1,
        "ten IPs of one ENI share one call: {calls:?}"
    );
    assert_eq!(calls[0].len(), 10);
}

fn held_unknown(snap: &Snapshot) -> Vec<std::net::IpAddr> {
    snap.intents
        .iter()
        .filter(|i| {
            i.phase == Phase::Held && matches!(i.held_reason, Some(HeldReason::UnknownRemover(_)))
        })
        .map(|i| i.ip)
        .collect()
}

/// Clause 2: a removal whose remover is unknown (found by a resync, not identified, or
/// not identifiable because enisync itself failed) is held, not released, until an
/// operator confirms it; then it is released once. Old code released all three.
#[tokio::test(start_paused = true)]
async fn clause2_unknown_removers_are_held_until_an_operator_confirms() {
    let h = start(&[11, 12, 13, 14], |_| {});
    h.remove(11, None);
    h.remove(12, Some(Remover::unknown(4000000001, "no socket".into())));
    h.remove(
        13,
        Some(Remover::failed(
            4242,
            "Too many open files (os error 24)".into(),
        )),
    );
    // Partly known, then unknown: still held (nothing in the known part is ignored).
    h.remove(
        14,
        Some(Remover {
            port_id: 4242,
            process: Some("ip".into()),
            ancestors: vec![],
            identity: Identity::Unknown("parent gone".into()),
        }),
    );
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty(), "held, not released");
    let snap = h.snapshot().await;
    assert_eq!(held_unknown(&snap), vec![ip(11), ip(12), ip(13), ip(14)]);
    assert_eq!(snap.counters.held_unknown_remover, 4);
    assert!(
        snap.warnings
            .iter()
            .any(|w| w.contains("held_unknown_remover") && w.contains("release --held")),
        "{:?}",
        snap.warnings
    );
    assert_eq!(release_held(&h).await, 4);
    sleep(Duration::from_secs(5)).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(11), ip(12), ip(13), ip(14)]]);
    sleep(GRACE * 3).await;
    assert_eq!(h.cloud.calls().len(), 1, "exactly once");
}

/// Clause 2: `ignore_removers` matches the remover's ancestors too: the `ip` that
/// dhclient-script runs for dhclient is dhclient's removal. Old code released it.
#[tokio::test(start_paused = true)]
async fn clause2_an_ignored_ancestor_is_not_released() {
    let h = start(&[11, 12, 13], |_| {});
    h.remove(11, by_chain(&["ip", "dhclient-script", "dhclient"]));
    // A partly known chain whose known part is ignored is ignored, not held.
    h.remove(
        12,
        Some(Remover {
            port_id: 4242,
            process: Some("ip".into()),
            ancestors: vec!["dhclient".into()],
            identity: Identity::Unknown("grandparent gone".into()),
        }),
    );
    h.remove(13, by_chain(&["ip", "bash", "sshd"]));
    sleep(GRACE * 2).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(13)]]);
    let snap = h.snapshot().await;
    assert!(held_unknown(&snap).is_empty());
}

/// Clause 2 and "exited versus unknown": a remover seen exiting before its name was
/// read is exited, not unknown, and judged by the chain the process events recorded: an
/// ignored ancestor is not released, a user's shell is. Exited with no chain is held.
#[tokio::test(start_paused = true)]
async fn clause2_an_exited_nameless_remover_is_judged_by_its_chain() {
    let h = start(&[11, 12, 13], |_| {});
    let exited = |ancestors: &[&str]| {
        Some(Remover {
            port_id: 4242,
            process: Some("(exited pid 4242)".into()),
            ancestors: ancestors.iter().map(|a| (*a).to_string()).collect(),
            identity: Identity::Exited,
        })
    };
    h.remove(11, exited(&["dhclient-script", "dhclient"]));
    h.remove(12, exited(&["bash", "sshd"]));
    h.remove(
        13,
        Some(Remover::unknown(
            4243,
            "process 4243 exited before its name was read, and its parent is unknown or gone"
                .into(),
        )),
    );
    sleep(GRACE * 2).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(12)]]);
    let snap = h.snapshot().await;
    assert_eq!(held_unknown(&snap).len(), 1, "the chainless one is held");
}

#[tokio::test(start_paused = true)]
async fn the_default_ignore_list_is_the_configs() {
    assert_eq!(
        Settings::default().ignore_removers,
        crate::config::default_ignore_removers()
    );
    // The kernel cuts comm at 15 bytes.
    assert!(crate::engine::rule::process_matches(
        "networkd-dispat",
        "networkd-dispatcher"
    ));
    assert!(crate::engine::rule::process_matches(
        "systemd-network",
        "systemd-networkd"
    ));
    assert!(!crate::engine::rule::process_matches("ip", "dhclient"));
}

#[tokio::test(start_paused = true)]
async fn primary_ip_is_never_released() {
    let h = start(&[11], |_| {});
    // A primary removed by itself (promote_secondaries=1 keeps the aux IP, promoted).
    h.remove_addr(addr(10, false), by("ip"));
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn clause7_migrating_waits_then_releases_when_available() {
    let h = start(&[11], |s| s.retry_cap = Duration::from_secs(2));
    h.cloud.set_ip(ip(11), |i| i.state = "MIGRATING".into());
    h.remove(11, by("ip"));
    sleep(GRACE + Duration::from_secs(10)).await;
    assert!(h.cloud.calls().is_empty());
    h.cloud.set_ip(ip(11), |i| i.state = "AVAILABLE".into());
    sleep(Duration::from_secs(5)).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(11)]]);
}

#[tokio::test(start_paused = true)]
async fn clause7_eip_bound_is_not_released_unless_configured() {
    let h = start(&[11], |_| {});
    h.cloud.set_ip(ip(11), |i| i.eip = Some("eip-1".into()));
    h.remove(11, by("ip"));
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty());

    let h = start(&[11], |s| s.with_eip = true);
    h.cloud.set_ip(ip(11), |i| i.eip = Some("eip-1".into()));
    h.remove(11, by("ip"));
    sleep(GRACE * 2).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(11)]]);
}

#[tokio::test(start_paused = true)]
async fn clause7_not_listed_is_rechecked_then_cancelled() {
    let h = start(&[11], |s| {
        s.not_listed_recheck = Duration::from_secs(20);
        s.retry_cap = Duration::from_secs(4);
    });
    h.add(addr(50, true));
    h.remove(50, by("ip"));
    sleep(GRACE + Duration::from_secs(10)).await;
    assert_eq!(h.snapshot().await.intents.len(), 1, "still re-checking");
    sleep(Duration::from_secs(30)).await;
    let snap = h.snapshot().await;
    assert!(snap.intents.is_empty());
    assert_eq!(
        snap.recent[0].outcome,
        Outcome::Cancelled(Cancel::NotListedOnEni)
    );
    assert!(h.cloud.calls().is_empty());
}
