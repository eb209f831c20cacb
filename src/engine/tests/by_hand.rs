//! `enisync release <ip>` (docs/design.md, "Claims"): an orphaned claim address released
//! by hand, through the real engine loop with a paused clock and the in-memory cloud.
//! The engine decides: each refusal, the success, and the checks of any release.

use super::claims::{SETTLE, VIP, claim_settings, peer_holding_vip};
use super::*;
use crate::engine::{HandRefusal, HandRelease};

const V: IpAddr = IpAddr::V4(VIP);

impl Harness {
    pub(super) async fn release_by_hand(&self, ip: IpAddr) -> Result<HandRelease, HandRefusal> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::ReleaseByHand(ip, tx))
            .await
            .expect("send");
        rx.await.expect("reply")
    }
}

/// Claims on; the VIP claimed from the peer, then gone from the host (keepalived moved
/// it away and nobody took it): bound here, absent, well within `claim.orphan_after`.
async fn claimed_then_absent() -> Harness {
    let h = start(&[11], |s| s.claim = claim_settings());
    h.cloud.set(|s| s.others = vec![peer_holding_vip()]);
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    assert_eq!(h.cloud.state.lock().expect("lock").migrates.len(), 1);
    h.remove_vip();
    sleep(Duration::from_secs(1)).await;
    h
}

fn bound_to_eni1(h: &Harness) -> bool {
    h.cloud
        .state
        .lock()
        .expect("lock")
        .eni
        .as_ref()
        .is_some_and(|e| e.ip(V).is_some())
}

/// Absent from the host and bound here: released (before `orphan_after`: the operator
/// asked), the task followed, the claim ended, counted as a release and a claim decision.
#[tokio::test(start_paused = true)]
async fn an_absent_claim_address_bound_here_is_released_by_hand() {
    let h = claimed_then_absent().await;
    assert!(bound_to_eni1(&h));
    let claim = h.snapshot().await.claims;
    assert!(!claim[0].orphan, "not yet past orphan_after: {claim:?}");
    let accepted = h.release_by_hand(V).await.expect("accepted");
    assert_eq!(accepted.eni_id, "eni-1");
    assert_eq!(accepted.link, "eth1");
    sleep(Duration::from_secs(2)).await;
    assert_eq!(h.cloud.calls(), vec![vec![V]]);
    assert!(!bound_to_eni1(&h), "released in the cloud");
    let snap = h.snapshot().await;
    assert!(snap.claims.is_empty(), "the claim ended: {:?}", snap.claims);
    assert!(snap.intents.is_empty());
    assert!(
        matches!(snap.recent.first(), Some(f) if f.ip == V && matches!(f.outcome, Outcome::Released { .. })),
        "{:?}",
        snap.recent
    );
    assert_eq!(snap.counters.released, 1);
    // Released: a second request is refused, nothing is bound here any more.
    assert_eq!(
        h.release_by_hand(V).await,
        Err(HandRefusal::NotBoundHere(V))
    );
    // Nothing more: no second call, no claim again.
    sleep(Duration::from_secs(120)).await;
    assert_eq!(h.cloud.calls().len(), 1);
    assert_eq!(h.cloud.state.lock().expect("lock").migrates.len(), 1);
}

/// On the host: refused, nothing sent. Outside `claim.cidrs` (an ordinary aux IP, an
/// IPv6 address): refused.
#[tokio::test(start_paused = true)]
async fn on_the_host_or_not_a_claim_address_is_refused() {
    let h = start(&[11], |s| s.claim = claim_settings());
    h.cloud.set(|s| s.others = vec![peer_holding_vip()]);
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    assert_eq!(
        h.release_by_hand(V).await,
        Err(HandRefusal::OnTheHost {
            ip: V,
            link: "eth1".into()
        })
    );
    h.remove(11, by("ip"));
    sleep(Duration::from_millis(10)).await;
    let aux = ip(11);
    assert_eq!(
        h.release_by_hand(aux).await,
        Err(HandRefusal::NotAClaimAddress(aux))
    );
    let v6: IpAddr = "fd00::100".parse().expect("ip");
    assert_eq!(
        h.release_by_hand(v6).await,
        Err(HandRefusal::NotAClaimAddress(v6))
    );
    sleep(Duration::from_secs(1)).await;
    assert!(
        !h.cloud.calls().iter().flatten().any(|i| *i == V),
        "{:?}",
        h.cloud.calls()
    );
    let texts = [
        HandRefusal::OnTheHost {
            ip: V,
            link: "eth1".into(),
        },
        HandRefusal::NotAClaimAddress(aux),
    ];
    for t in texts {
        let text = t.to_string();
        assert!(!text.contains('\n') && text.contains("10.0.1."), "{text}");
    }
}

/// Absent, but held by the peer (never claimed here, or the last lookup found it
/// elsewhere): refused.
#[tokio::test(start_paused = true)]
async fn an_address_not_bound_here_is_refused() {
    let h = start(&[11], |s| s.claim = claim_settings());
    h.cloud.set(|s| s.others = vec![peer_holding_vip()]);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.release_by_hand(V).await,
        Err(HandRefusal::NotBoundHere(V))
    );
    sleep(Duration::from_secs(5)).await;
    assert!(h.cloud.calls().is_empty());
}

/// Under a pause: refused; after `resume` the same request is accepted. A second
/// request while the first is pending: refused.
#[tokio::test(start_paused = true)]
async fn paused_or_already_releasing_is_refused() {
    let h = claimed_then_absent().await;
    h.pause(true).await;
    assert_eq!(h.release_by_hand(V).await, Err(HandRefusal::Paused));
    sleep(Duration::from_secs(5)).await;
    assert!(h.cloud.calls().is_empty());
    h.pause(false).await;
    // The send-time listing takes a while: the first request is still in its checks.
    h.cloud.set(|s| s.list_delay = Duration::from_secs(2));
    h.release_by_hand(V).await.expect("accepted after resume");
    assert_eq!(
        h.release_by_hand(V).await,
        Err(HandRefusal::AlreadyReleasing(V))
    );
    sleep(Duration::from_secs(5)).await;
    assert_eq!(h.cloud.calls(), vec![vec![V]]);
}

/// `dry_run` is respected: accepted, nothing sent, still bound and still claimed.
#[tokio::test(start_paused = true)]
async fn dry_run_releases_nothing_by_hand() {
    // Claimed for real, then dry run turned on by a reload.
    let h = claimed_then_absent().await;
    let mut settings = harness_settings();
    settings.claim = claim_settings();
    settings.dry_run = true;
    h.commands
        .send(Command::Reload(Box::new(settings)))
        .await
        .expect("reload");
    let accepted = h.release_by_hand(V).await.expect("accepted");
    assert!(accepted.dry_run);
    sleep(Duration::from_secs(2)).await;
    assert!(h.cloud.calls().is_empty());
    assert!(bound_to_eni1(&h));
    let snap = h.snapshot().await;
    assert!(
        matches!(snap.recent.first(), Some(f) if f.ip == V && f.outcome == Outcome::DryRun),
        "{:?}",
        snap.recent
    );
    assert_eq!(snap.claims.len(), 1, "still claimed: {:?}", snap.claims);
}

/// The send-time listing decides: the cloud moved it to the peer after the engine last
/// looked, so it is not on this ENI any more, and nothing is released.
#[tokio::test(start_paused = true)]
async fn the_fresh_listing_at_send_time_decides() {
    let h = claimed_then_absent().await;
    h.cloud.set(|s| {
        if let Some(e) = s.eni.as_mut() {
            e.ips.retain(|i| i.addr != V);
        }
        s.others = vec![peer_holding_vip()];
    });
    h.release_by_hand(V)
        .await
        .expect("accepted: the engine's knowledge is older");
    sleep(Duration::from_secs(600)).await;
    assert!(h.cloud.calls().is_empty(), "{:?}", h.cloud.calls());
    let snap = h.snapshot().await;
    assert!(snap.intents.is_empty(), "{:?}", snap.intents);
    assert!(
        matches!(snap.recent.first(), Some(f) if f.ip == V && f.outcome == Outcome::Cancelled(Cancel::NotListedOnEni)),
        "{:?}",
        snap.recent
    );
}

/// Back on the host before the call: the check at the deadline cancels it (re-added).
#[tokio::test(start_paused = true)]
async fn back_on_the_host_before_the_call_cancels_it() {
    let h = claimed_then_absent().await;
    h.cloud.set(|s| s.list_delay = Duration::from_secs(2));
    h.release_by_hand(V).await.expect("accepted");
    sleep(Duration::from_millis(500)).await;
    h.add_vip("keepalived");
    sleep(Duration::from_secs(5)).await;
    assert!(h.cloud.calls().is_empty(), "{:?}", h.cloud.calls());
    assert!(bound_to_eni1(&h));
}

/// A restart between the request and its call: the journal keeps the request by hand, so
/// the new engine resumes it (its send-time checks apply) instead of cancelling it as a
/// claim address. A pending release is never dropped.
#[tokio::test(start_paused = true)]
async fn a_hand_release_cut_by_a_restart_is_resumed() {
    let dir = std::env::temp_dir().join(format!("enisync-engine-by-hand-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    // The VIP bound to eni-1 (an orphan: on no link here).
    let cloud = MemCloud::new(&[11, 100]);
    let run = |cloud: Arc<MemCloud>| {
        let (journal, replay) = crate::journal::Journal::open(&dir).expect("journal");
        let mut view = HostView::default();
        view.links.insert(2, link(2, "eth1", true));
        for a in [addr(10, false), addr(11, true)] {
            view.addrs.insert(a.key(), a);
        }
        let inventory = inventory_of(&cloud);
        let mut settings = harness_settings();
        settings.claim = super::claims::claim_settings();
        spawn_engine(
            cloud,
            settings,
            Start {
                journal: Some(journal),
                replay: replay.live,
                ..start_with(view, inventory)
            },
        )
    };
    // The send-time listing is slow: the engine stops before the call goes out.
    cloud.set(|s| s.list_delay = Duration::from_secs(5));
    let first = run(Arc::clone(&cloud));
    first.release_by_hand(V).await.expect("accepted");
    sleep(Duration::from_secs(1)).await;
    assert!(cloud.calls().is_empty(), "{:?}", cloud.calls());
    drop(first);
    tokio::task::yield_now().await;

    cloud.set(|s| s.list_delay = Duration::ZERO);
    let second = run(Arc::clone(&cloud));
    sleep(Duration::from_secs(5)).await;
    assert_eq!(
        cloud.calls(),
        vec![vec![V]],
        "the request was resumed and sent once"
    );
    let snap = second.snapshot().await;
    assert!(
        snap.recent
            .iter()
            .any(|f| f.ip == V && matches!(f.outcome, Outcome::Released { .. })),
        "{:?} {:?}",
        snap.recent,
        snap.intents
    );
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}
