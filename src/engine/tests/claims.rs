//! Claims (docs/design.md, "Claims"), driven through the real engine loop with a paused
//! clock and the in-memory cloud: a peer's ENI (`eni-peer` of `ins-peer`, same subnet)
//! holds the VIP 10.0.1.100 until this host takes it.

use super::*;
use crate::engine::ClaimSettings;

pub(super) const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);
pub(super) const SETTLE: Duration = Duration::from_secs(3);

pub(super) fn vip_addr() -> Addr {
    addr(100, true)
}

/// An ENI of the VPC holding `ips`, attached to `instance`.
pub(super) fn other_eni(id: &str, instance: &str, subnet: &str, ips: &[(Ipv4Addr, bool)]) -> Eni {
    Eni {
        id: id.into(),
        mac: MacAddr([2, 0, 0, 0, 0, 9]),
        vpc_id: "vpc-1".into(),
        subnet_id: subnet.into(),
        state: "AVAILABLE".into(),
        primary: false,
        attachment: Some(Attachment {
            instance_id: instance.into(),
            device_index: 1,
        }),
        ips: ips
            .iter()
            .map(|(ip, primary)| EniIp {
                addr: IpAddr::V4(*ip),
                primary: *primary,
                state: "AVAILABLE".into(),
                eip: None,
            })
            .collect(),
    }
}

pub(super) fn peer_holding_vip() -> Eni {
    other_eni(
        "eni-peer",
        "ins-peer",
        "subnet-1",
        &[(Ipv4Addr::new(10, 0, 1, 20), true), (VIP, false)],
    )
}

pub(super) fn claim_settings() -> ClaimSettings {
    ClaimSettings {
        cidrs: vec![Cidr::parse("10.0.1.100/32").expect("cidr")],
        peers: vec!["ins-peer".into()],
        settle: SETTLE,
        startup_holdoff: Duration::ZERO,
        ..ClaimSettings::default()
    }
}

/// The engine with claims on (tweaked), and `others` in the VPC.
fn start_claims(others: Vec<Eni>, tweak: impl FnOnce(&mut ClaimSettings)) -> Harness {
    let h = start(&[11], |s| {
        s.claim = claim_settings();
        tweak(&mut s.claim);
    });
    h.cloud.set(|s| s.others = others);
    h
}

impl Harness {
    /// keepalived (or `by`) adds the VIP on eth1.
    pub(super) fn add_vip(&self, by: &str) {
        self.add(vip_addr());
        self.events
            .send(HostEvent::AddrAdder {
                ip: IpAddr::V4(VIP),
                link: 2,
                adder: Remover::named(777, by),
            })
            .expect("engine runs");
    }

    pub(super) fn remove_vip(&self) {
        self.remove_addr(vip_addr(), by("keepalived"));
    }

    /// The cloud moves the VIP from this node's ENI to the peer's (the first other ENI).
    fn peer_takes_vip(&self) {
        self.cloud.set(|s| {
            if let Some(e) = s.eni.as_mut() {
                e.ips.retain(|i| i.addr != IpAddr::V4(VIP));
            }
            s.others[0].ips.push(EniIp {
                addr: IpAddr::V4(VIP),
                primary: false,
                state: "AVAILABLE".into(),
                eip: None,
            });
        });
    }

    fn migrates(&self) -> Vec<(String, String, Ipv4Addr)> {
        self.cloud.state.lock().expect("lock").migrates.clone()
    }

    fn assigns(&self) -> Vec<(String, Ipv4Addr, String)> {
        self.cloud.state.lock().expect("lock").assigns.clone()
    }

    /// Who holds the VIP in the in-memory cloud.
    fn vip_holders(&self) -> Vec<String> {
        let s = self.cloud.state.lock().expect("lock");
        s.eni
            .iter()
            .chain(s.others.iter())
            .filter(|e| e.ip(IpAddr::V4(VIP)).is_some())
            .map(|e| e.id.clone())
            .collect()
    }

    async fn claim(&self) -> Option<ClaimView> {
        self.snapshot()
            .await
            .claims
            .into_iter()
            .find(|c| c.ip == VIP)
    }
}

fn migrated_from_peer() -> (String, String, Ipv4Addr) {
    ("eni-peer".into(), "eni-1".into(), VIP)
}

#[tokio::test(start_paused = true)]
async fn a_vip_that_stays_for_settle_is_migrated_from_the_peer_exactly_once() {
    let h = start_claims(vec![peer_holding_vip()], |_| {});
    h.add_vip("keepalived");
    sleep(SETTLE - Duration::from_millis(100)).await;
    assert!(h.migrates().is_empty(), "nothing before the settle time");
    sleep(Duration::from_secs(2)).await;
    assert_eq!(h.migrates(), [migrated_from_peer()]);
    assert_eq!(h.vip_holders(), ["eni-1"]);
    let claim = h.claim().await.expect("claimed");
    assert_eq!(claim.phase, "claimed");
    // It stays claimed: the re-verifications find it here, nothing more is sent.
    sleep(Duration::from_secs(120)).await;
    assert_eq!(h.migrates().len(), 1);
    assert!(h.snapshot().await.alarms.is_empty());
}

/// A failover and a failback within one re-verification interval: the peer migrated the
/// VIP while it was away, so its return is claimed again (after `settle`, from a fresh
/// lookup), not taken for "still bound here" until a re-verification calls it a contest.
#[tokio::test(start_paused = true)]
async fn a_failback_within_the_reverify_interval_is_claimed_again_without_a_contest() {
    let h = start_claims(vec![peer_holding_vip()], |_| {});
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    assert_eq!(h.migrates(), [migrated_from_peer()]);
    // Failover: keepalived removes the VIP here, the peer migrates it back.
    h.remove_vip();
    h.peer_takes_vip();
    sleep(Duration::from_secs(5)).await;
    // Failback, well within the 30 s re-verification interval.
    h.add_vip("keepalived");
    sleep(SETTLE - Duration::from_millis(100)).await;
    assert_eq!(h.migrates().len(), 1, "nothing before the settle time");
    sleep(Duration::from_secs(2)).await;
    assert_eq!(h.migrates(), [migrated_from_peer(), migrated_from_peer()]);
    assert_eq!(h.vip_holders(), ["eni-1"]);
    sleep(Duration::from_secs(60)).await;
    assert_eq!(h.migrates().len(), 2);
    assert!(h.snapshot().await.alarms.is_empty(), "no contest");
}

/// A backup that is master for less than `claim.settle` takes nothing.
#[tokio::test(start_paused = true)]
async fn a_backup_holding_the_vip_less_than_settle_makes_no_migrate() {
    let h = start_claims(vec![peer_holding_vip()], |_| {});
    for _ in 0..5 {
        h.add_vip("keepalived");
        sleep(SETTLE / 2).await;
        h.remove_vip();
        sleep(SETTLE).await;
    }
    sleep(Duration::from_secs(60)).await;
    assert!(h.migrates().is_empty());
    assert_eq!(h.cloud.state.lock().expect("lock").lookups, 0);
    assert_eq!(h.vip_holders(), ["eni-peer"]);
    assert!(h.claim().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn nobody_holding_it_is_assigned_under_a_client_token() {
    let h = start_claims(Vec::new(), |_| {});
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    let assigns = h.assigns();
    assert_eq!(assigns.len(), 1, "{assigns:?}");
    assert_eq!(assigns[0].0, "eni-1");
    assert!(assigns[0].2.starts_with("enisync-eni-1-10.0.1.100-"));
    assert!(h.migrates().is_empty());
    assert_eq!(h.claim().await.expect("claim").phase, "claimed");
}

/// A typo in a wide CIDR must never take another service's IP.
#[tokio::test(start_paused = true)]
async fn a_holder_that_is_not_a_peer_is_parked_and_alarmed() {
    let stranger = other_eni("eni-x", "ins-stranger", "subnet-1", &[(VIP, false)]);
    let h = start_claims(vec![stranger], |_| {});
    h.add_vip("keepalived");
    sleep(SETTLE * 4).await;
    assert!(h.migrates().is_empty());
    assert!(h.assigns().is_empty());
    let claim = h.claim().await.expect("claim");
    assert_eq!(
        (claim.phase.as_str(), claim.reason.as_deref()),
        ("parked", Some("foreign_holder"))
    );
    let alarms = h.snapshot().await.alarms;
    assert!(
        alarms.iter().any(|a| a.contains("foreign_holder")),
        "{alarms:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_primary_ip_or_another_subnet_is_parked() {
    for (holder, reason) in [
        (
            other_eni("eni-peer", "ins-peer", "subnet-1", &[(VIP, true)]),
            "primary_elsewhere",
        ),
        (
            other_eni("eni-peer", "ins-peer", "subnet-2", &[(VIP, false)]),
            "other_subnet",
        ),
    ] {
        let h = start_claims(vec![holder], |_| {});
        h.add_vip("keepalived");
        sleep(SETTLE * 4).await;
        assert!(h.migrates().is_empty(), "{reason}");
        let claim = h.claim().await.expect("claim");
        assert_eq!(claim.reason.as_deref(), Some(reason));
    }
}

/// Only the listed adders trigger a claim; an unidentified adder never does.
#[tokio::test(start_paused = true)]
async fn only_listed_adders_trigger_a_claim() {
    let h = start_claims(vec![peer_holding_vip()], |_| {});
    h.add_vip("ip");
    sleep(SETTLE * 4).await;
    assert!(h.migrates().is_empty());
    h.remove_vip();
    // No adder event at all: unknown never means allowed.
    h.add(vip_addr());
    sleep(SETTLE * 4).await;
    assert!(h.migrates().is_empty());
    assert!(h.claim().await.is_none());
    h.remove_vip();
    // keepalived's child (a script it runs) counts through its ancestor.
    h.add(vip_addr());
    h.events
        .send(HostEvent::AddrAdder {
            ip: IpAddr::V4(VIP),
            link: 2,
            adder: by_chain(&["ip", "keepalived"]).expect("remover"),
        })
        .expect("engine runs");
    sleep(SETTLE * 2).await;
    assert_eq!(h.migrates(), [migrated_from_peer()]);
}

/// Present at start counts as added at start; no Migrate within the start-up hold-off.
#[tokio::test(start_paused = true)]
async fn an_address_present_at_start_waits_for_the_startup_holdoff() {
    let cloud = MemCloud::new(&[11]);
    cloud.set(|s| s.others = vec![peer_holding_vip()]);
    let mut view = HostView::default();
    view.links.insert(2, link(2, "eth1", true));
    for a in [addr(10, false), addr(11, true), vip_addr()] {
        view.addrs.insert(a.key(), a);
    }
    let inventory = inventory_of(&cloud);
    let mut settings = harness_settings();
    settings.claim = ClaimSettings {
        startup_holdoff: Duration::from_secs(60),
        ..claim_settings()
    };
    let h = spawn_engine(cloud, settings, start_with(view, inventory));
    sleep(Duration::from_secs(59)).await;
    assert!(h.migrates().is_empty(), "a Migrate within the hold-off");
    let claim = h.claim().await.expect("claim");
    assert_eq!(claim.reason.as_deref(), Some("startup_holdoff"));
    sleep(Duration::from_secs(3)).await;
    assert_eq!(h.migrates(), [migrated_from_peer()]);
}

#[tokio::test(start_paused = true)]
async fn dry_run_and_pause_cover_claims() {
    let h = start_claims(vec![peer_holding_vip()], |c| c.dry_run = true);
    h.add_vip("keepalived");
    sleep(SETTLE * 4).await;
    assert!(h.migrates().is_empty());
    assert_eq!(h.claim().await.expect("claim").phase, "dry_run");

    // release.dry_run covers claims too.
    let h = start(&[11], |s| {
        s.claim = claim_settings();
        s.dry_run = true;
    });
    h.cloud.set(|s| s.others = vec![peer_holding_vip()]);
    h.add_vip("keepalived");
    sleep(SETTLE * 4).await;
    assert!(h.migrates().is_empty());

    let h = start_claims(vec![peer_holding_vip()], |_| {});
    h.pause(true).await;
    h.add_vip("keepalived");
    sleep(SETTLE * 10).await;
    assert!(h.migrates().is_empty(), "a Migrate under a pause");
    h.pause(false).await;
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.migrates(), [migrated_from_peer()]);
}

/// The other node moved it first: the Migrate's source is stale. A fresh lookup decides
/// again (here: nobody holds it, so it is assigned), and that is no contest.
#[tokio::test(start_paused = true)]
async fn a_stale_source_is_decided_again_from_a_fresh_lookup() {
    let h = start_claims(vec![peer_holding_vip()], |_| {});
    h.cloud
        .set(|s| s.claim_fail_next = Some("ResourceNotFound".into()));
    h.add_vip("keepalived");
    // Meanwhile the peer lets it go.
    sleep(SETTLE - Duration::from_millis(10)).await;
    h.cloud
        .set(|s| s.others[0].ips.retain(|i| i.addr != IpAddr::V4(VIP)));
    h.cloud.set(|s| {
        s.others.push(other_eni(
            "eni-peer",
            "ins-peer",
            "subnet-1",
            &[(VIP, false)],
        ))
    });
    sleep(SETTLE).await;
    // First Migrate failed (stale source), a fresh lookup, the second succeeded.
    assert_eq!(h.migrates().len(), 2, "{:?}", h.migrates());
    assert_eq!(h.vip_holders(), ["eni-1"]);
    let snap = h.snapshot().await;
    assert!(snap.alarms.is_empty(), "{:?}", snap.alarms);
    assert_eq!(h.claim().await.expect("claim").contests, 0);
}

/// The cloud moves it away while this host keeps it: alarm, back off, and never more
/// than `max_migrations_per_minute` Migrates of it in any minute.
#[tokio::test(start_paused = true)]
async fn a_contest_alarms_backs_off_and_migrations_stay_bounded() {
    let h = start_claims(vec![peer_holding_vip()], |c| {
        c.reverify_interval = Duration::from_secs(5);
        c.contest_backoff = Duration::from_secs(1);
        c.contest_backoff_max = Duration::from_secs(4);
        c.max_migrations_per_minute = 3;
    });
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    assert_eq!(h.migrates().len(), 1);
    // A split brain: the peer takes it back every second for two minutes.
    let mut stolen = 0;
    for _ in 0..120 {
        let ours = h.vip_holders() == ["eni-1"];
        if ours {
            h.peer_takes_vip();
            stolen += 1;
        }
        sleep(Duration::from_secs(1)).await;
    }
    assert!(stolen >= 2, "the peer took it back {stolen} times");
    // Never more than 3 Migrates in any minute, with the margin the engine keeps for
    // the requests' latency: none within 61 s here.
    let times = h.cloud.state.lock().expect("lock").migrate_times.clone();
    for (i, t) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(61))
            .count();
        assert!(within <= 3, "{within} Migrates within a minute: {times:?}");
    }
    assert!(times.len() >= 2, "it was claimed again after a contest");
    let contested = h
        .snapshot()
        .await
        .alarms
        .iter()
        .filter(|a| a.contains("contested"))
        .count();
    assert!(contested >= 2, "{contested} contested alarms");
}

/// Claims and releases share the ENI's slot: a release is never sent while a claim of
/// the same ENI is in flight, and the other way round. Here: a VIP claim and a removal
/// of an aux IP of the same ENI both come due; both happen, one after the other.
#[tokio::test(start_paused = true)]
async fn a_claim_and_a_release_of_one_eni_both_happen() {
    let h = start_claims(vec![peer_holding_vip()], |c| c.settle = GRACE);
    h.add_vip("keepalived");
    h.remove(11, by("ip"));
    sleep(GRACE * 2).await;
    assert_eq!(h.migrates(), [migrated_from_peer()]);
    assert_eq!(h.cloud.calls(), vec![vec![ip(11)]]);
}

/// A claimed address absent from the host while still bound here for longer than
/// `claim.orphan_after` is reported (`status`); it is not released.
#[tokio::test(start_paused = true)]
async fn a_claimed_vip_absent_longer_than_orphan_after_is_reported() {
    let h = start_claims(vec![peer_holding_vip()], |c| {
        c.orphan_after = Duration::from_secs(90);
    });
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    assert_eq!(h.vip_holders(), ["eni-1"]);
    h.remove_vip();
    sleep(Duration::from_secs(60)).await;
    assert!(!h.claim().await.expect("claim").orphan, "not yet");
    sleep(Duration::from_secs(60)).await;
    let claim = h.claim().await.expect("claim");
    assert!(claim.orphan, "{claim:?}");
    assert_eq!(claim.phase, "claimed");
    assert!(h.cloud.calls().is_empty(), "never released");
    // Back on the host: no longer an orphan.
    h.add_vip("keepalived");
    sleep(Duration::from_secs(1)).await;
    assert!(!h.claim().await.expect("claim").orphan);
}

/// A network restart re-adds many floating IPs at once: nothing is looked up before each
/// has stayed for `claim.settle`, and the ENI's claims go out one at a time.
#[tokio::test(start_paused = true)]
async fn many_readded_at_once_wait_for_settle_and_go_one_at_a_time() {
    let second = Ipv4Addr::new(10, 0, 1, 101);
    let mut peer = peer_holding_vip();
    peer.ips.push(EniIp {
        addr: IpAddr::V4(second),
        primary: false,
        state: "AVAILABLE".into(),
        eip: None,
    });
    let h = start_claims(vec![peer], |c| {
        c.cidrs = vec![Cidr::parse("10.0.1.100/31").expect("cidr")];
    });
    for last in [100, 101] {
        h.add(addr(last, true));
        h.events
            .send(HostEvent::AddrAdder {
                ip: ip(last),
                link: 2,
                adder: Remover::named(777, "keepalived"),
            })
            .expect("engine runs");
    }
    sleep(SETTLE - Duration::from_millis(100)).await;
    assert_eq!(h.cloud.state.lock().expect("lock").lookups, 0);
    sleep(Duration::from_secs(5)).await;
    let migrated: Vec<Ipv4Addr> = h.migrates().iter().map(|m| m.2).collect();
    assert_eq!(migrated.len(), 2, "{migrated:?}");
    let times = h.cloud.state.lock().expect("lock").migrate_times.clone();
    // The second went out after the first's task (50 ms in the in-memory cloud) ended.
    assert!(
        times[1].duration_since(times[0]) >= Duration::from_millis(50),
        "{times:?}"
    );
}

/// A claim that comes due while a release holds its ENI's slot waits without spinning:
/// the end of the release wakes it.
#[tokio::test(start_paused = true)]
async fn a_claim_waiting_for_its_enis_slot_does_not_spin() {
    let h = start_claims(vec![peer_holding_vip()], |c| c.settle = GRACE);
    // The release's send-time listing takes 20 s: the slot stays taken that long.
    h.cloud.set(|s| s.list_delay = Duration::from_secs(20));
    h.remove(11, by("ip"));
    sleep(Duration::from_millis(10)).await;
    h.add_vip("keepalived");
    sleep(GRACE + Duration::from_secs(1)).await;
    let before = h.turns();
    sleep(Duration::from_secs(10)).await;
    let turns = h.turns() - before;
    assert!(
        turns < 50,
        "{turns} loop turns in 10 s while waiting for the slot"
    );
    sleep(Duration::from_secs(30)).await;
    assert_eq!(h.migrates(), [migrated_from_peer()]);
    assert_eq!(h.cloud.calls(), vec![vec![ip(11)]]);
}

/// With `settle = 0` the claim's lookup goes out before the new address's routing is
/// reconciled (a failover counts from the addition); the reconcile still follows, once.
#[tokio::test(start_paused = true)]
async fn a_claimed_address_is_still_routed_after_its_lookup_starts() {
    use std::sync::atomic::Ordering;

    let h = start_claims(vec![peer_holding_vip()], |c| c.settle = Duration::ZERO);
    sleep(Duration::from_millis(10)).await;
    let before = h.router.reconciles.load(Ordering::SeqCst);
    let cloud = Arc::clone(&h.cloud);
    *h.router.probe.lock().expect("lock") =
        Some(Box::new(move || cloud.state.lock().expect("lock").lookups));
    h.add_vip("keepalived");
    sleep(Duration::from_secs(2)).await;
    assert_eq!(h.migrates(), [migrated_from_peer()]);
    assert_eq!(h.router.reconciles.load(Ordering::SeqCst), before + 1);
    assert_eq!(
        *h.router.probed.lock().expect("lock"),
        [1],
        "the holder lookup was made before the routing reconcile"
    );
}
