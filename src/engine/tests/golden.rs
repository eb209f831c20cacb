//! Golden values: what the engine writes where operators and their tools read it (the
//! `enisync_releases_total` labels, the audit record's `decision` and `reason`, the
//! cancel reasons of the journal and of `status`). Each test drives the real engine loop
//! through scenarios that reach every value it can, and compares what came out with a
//! file in `tests/data/golden/`: a refactor that changes one of them fails here.
//! `ENISYNC_BLESS=1` rewrites the files (review the diff: it is an interface change).

use std::collections::BTreeSet;

use tracing_subscriber::layer::SubscriberExt;

use super::*;
use crate::host::NotCandidate;
use crate::ops::metrics::Metrics;

/// Compares `actual` with `tests/data/golden/<name>`.
pub(super) fn assert_golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/golden")
        .join(name);
    if std::env::var_os("ENISYNC_BLESS").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{} differs from what the code produces now:\n--- expected\n{expected}--- actual\n{actual}",
        path.display()
    );
}

/// Every `Cancel`: its key (metrics label, journal), its text (audit `reason`, status)
/// and its clause.
#[test]
fn cancel_reasons_are_golden() {
    let all = [
        Cancel::KernelRemoval,
        Cancel::IgnoredRemover("dhclient".into()),
        Cancel::Collateral,
        Cancel::Readded,
        Cancel::PresentElsewhere,
        Cancel::LinkDown,
        Cancel::LinkGone,
        Cancel::MacChanged,
        Cancel::NotPhysical,
        Cancel::NotSelectedInterface,
        Cancel::NotAnEni,
        Cancel::NotCandidate(NotCandidate::NotGlobal),
        Cancel::NotCandidate(NotCandidate::NotPermanent),
        Cancel::NotCandidate(NotCandidate::Temporary),
        Cancel::NotCandidate(NotCandidate::Mngtmpaddr),
        Cancel::NotCandidate(NotCandidate::Tentative),
        Cancel::NotCandidate(NotCandidate::DadFailed),
        Cancel::OutsideInclude,
        Cancel::Excluded,
        Cancel::ClaimAddress,
        Cancel::PrimaryIp,
        Cancel::NotListedOnEni,
        Cancel::EipBound("eip-1".into()),
        Cancel::EniNotAttached("detached".into()),
        Cancel::Operator,
        Cancel::EarlierBoot,
    ];
    // A new variant fails to compile here until it is added to `all` and the file.
    for c in &all {
        match c {
            Cancel::KernelRemoval
            | Cancel::IgnoredRemover(_)
            | Cancel::Collateral
            | Cancel::Readded
            | Cancel::PresentElsewhere
            | Cancel::LinkDown
            | Cancel::LinkGone
            | Cancel::MacChanged
            | Cancel::NotPhysical
            | Cancel::NotSelectedInterface
            | Cancel::NotAnEni
            | Cancel::NotCandidate(_)
            | Cancel::OutsideInclude
            | Cancel::Excluded
            | Cancel::ClaimAddress
            | Cancel::PrimaryIp
            | Cancel::NotListedOnEni
            | Cancel::EipBound(_)
            | Cancel::EniNotAttached(_)
            | Cancel::Operator
            | Cancel::EarlierBoot => {}
        }
    }
    let text: String = all
        .iter()
        .map(|c| {
            format!(
                "{}\t{}\t{}\t{}\n",
                c.key(),
                c.clause(),
                c,
                serde_json::to_string(c).expect("json")
            )
        })
        .collect();
    assert_golden("cancel_reasons.tsv", &text);
}

/// The audit records' `decision` and `reason` fields, as a set of lines.
#[derive(Clone, Default)]
struct AuditCapture(Arc<Mutex<BTreeSet<String>>>);

#[derive(Default)]
struct AuditFields {
    decision: Option<String>,
    reason: Option<String>,
}

impl tracing::field::Visit for AuditFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "decision" => self.decision = Some(value.to_owned()),
            "reason" => self.reason = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AuditCapture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "audit" {
            return;
        }
        let mut fields = AuditFields::default();
        event.record(&mut fields);
        let line = match (fields.decision, fields.reason) {
            (Some(d), Some(r)) => format!("{d}\t{r}"),
            (Some(d), None) => d,
            (None, _) => "(no decision)".into(),
        };
        self.0.lock().expect("lock").insert(line);
    }
}

/// Starts an engine like `start`, reporting into `metrics`.
fn start_metered(aux: &[u8], metrics: &Arc<Metrics>, tweak: impl FnOnce(&mut Settings)) -> Harness {
    let cloud = MemCloud::new(aux);
    let mut view = HostView::default();
    view.links.insert(2, link(2, "eth1", true));
    for a in std::iter::once(addr(10, false)).chain(aux.iter().map(|n| addr(*n, true))) {
        view.addrs.insert(a.key(), a);
    }
    let inventory = inventory_of(&cloud);
    let mut settings = harness_settings();
    tweak(&mut settings);
    spawn_engine(
        cloud,
        settings,
        Start {
            // `clone` on the `Arc` (not `Arc::clone`): the engine takes it as its sink.
            metrics: Some(metrics.clone()),
            ..start_with(view, inventory)
        },
    )
}

/// Drives one engine per family of decisions; every audit value and every
/// `enisync_releases_total` label pair the engine can write comes out of one of them.
/// One engine per family of decisions, reporting into `metrics`.
async fn every_decision(metrics: &Arc<Metrics>) {
    // pending, allowed, sent, released; then the alarm of an IP that comes back; a
    // kernel removal (not_released) and one re-added in its grace period (cancelled).
    let h = start_metered(&[11, 12, 13], metrics, |_| {});
    h.remove(11, by("ip"));
    sleep(GRACE * 2).await;
    h.add(addr(11, true));
    h.remove(12, Some(Remover::kernel()));
    h.remove(13, by("ip"));
    h.add(addr(13, true));
    sleep(GRACE * 2).await;
    drop(h);

    // wait (the cloud says MIGRATING), then released.
    let h = start_metered(&[11], metrics, |s| s.retry_cap = Duration::from_secs(2));
    h.cloud.set_ip(ip(11), |i| i.state = "MIGRATING".into());
    h.remove(11, by("ip"));
    sleep(GRACE + Duration::from_secs(10)).await;
    h.cloud.set_ip(ip(11), |i| i.state = "AVAILABLE".into());
    sleep(Duration::from_secs(5)).await;
    drop(h);

    // parked, one per refusal label; and already_gone.
    let h = start_metered(&[11, 12, 13, 14, 15, 16], metrics, |_| {});
    let refusals = [
        (11, ErrorClass::Refused, "UnauthorizedOperation"),
        (12, ErrorClass::Refused, "AuthFailure.SignatureFailure"),
        (13, ErrorClass::Refused, "UnsupportedOperation.PrimaryIp"),
        (14, ErrorClass::Refused, "InvalidParameterValue"),
        (15, ErrorClass::AlreadyGone, "ResourceNotFound"),
    ];
    for (n, class, code) in refusals {
        h.cloud.set(|s| {
            s.refuse_next = 1;
            s.refuse_with = Some((class, code.into()));
        });
        h.remove(n, by("ip"));
        sleep(GRACE * 2).await;
    }
    // A task that fails every time is refused as such.
    h.cloud.set(|s| s.fail_tasks = 3);
    h.remove(16, by("ip"));
    sleep(GRACE * 2).await;
    drop(h);

    // dry_run.
    let h = start_metered(&[11], metrics, |s| s.dry_run = true);
    h.remove(11, by("ip"));
    sleep(GRACE * 2).await;
    drop(h);

    // held (burst), held_confirmed, then the per-host limit.
    let h = start_metered(&[11, 12, 13], metrics, |s| {
        s.burst_limit = 2;
        s.host_limit = 1;
    });
    for n in [11, 12, 13] {
        h.remove(n, by("ip"));
    }
    sleep(GRACE * 2).await;
    assert_eq!(release_held(&h).await, 3);
    sleep(GRACE * 2).await;
    drop(h);

    // held (unknown remover), then cancelled by an operator.
    let h = start_metered(&[11], metrics, |_| {});
    h.remove(11, None);
    sleep(Duration::from_secs(1)).await;
    let (tx, rx) = oneshot::channel();
    h.commands
        .send(Command::Cancel(ip(11), tx))
        .await
        .expect("send");
    assert!(rx.await.expect("reply"));
    sleep(Duration::from_secs(1)).await;
    drop(h);
    sleep(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn audit_values_and_release_labels_are_golden() {
    let capture = AuditCapture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    // tracing caches, per callsite, whether any subscriber wants it. A parallel test (they
    // run without a subscriber) that reaches an audit callsite first, while this
    // dispatcher is being registered, can leave it cached as "never", and this capture
    // would miss its records (it missed `parked` about one run in five). So the scenarios
    // run once to register every callsite they reach, the cache is rebuilt with this
    // dispatcher known, and only the second run is compared.
    every_decision(&Arc::new(Metrics::new())).await;
    tracing::callsite::rebuild_interest_cache();
    capture.0.lock().expect("lock").clear();
    let metrics = Arc::new(Metrics::new());
    every_decision(&metrics).await;

    let audit: String = capture
        .0
        .lock()
        .expect("lock")
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    assert_golden("audit_values.tsv", &audit);

    let labels: BTreeSet<String> = metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("enisync_releases_total{"))
        .filter_map(|l| l.rsplit_once(' ').map(|(labels, _)| labels.to_owned()))
        .collect();
    let labels: String = labels.iter().map(|l| format!("{l}\n")).collect();
    assert_golden("release_labels.txt", &labels);
}

/// Drives one engine per family of claim decisions (docs/design.md, "Claims").
async fn every_claim_decision(metrics: &Arc<Metrics>) {
    use super::claims::{SETTLE, claim_settings, other_eni, peer_holding_vip, vip_addr};
    let claims = |metrics: &Arc<Metrics>, others: Vec<Eni>, tweak: &dyn Fn(&mut Settings)| {
        let h = start_metered(&[11], metrics, |s| {
            s.claim = claim_settings();
            tweak(s);
        });
        h.cloud.set(|s| s.others = others);
        h
    };
    // pending, sent (migrate), claimed; the adder not listed, unknown, or gone within
    // settle: skipped.
    let h = claims(metrics, vec![peer_holding_vip()], &|_| {});
    h.add_vip("ip");
    sleep(SETTLE * 2).await;
    h.remove_vip();
    h.add(vip_addr());
    sleep(SETTLE * 2).await;
    h.remove_vip();
    h.add_vip("keepalived");
    sleep(Duration::from_secs(1)).await;
    h.remove_vip();
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    drop(h);
    let take_back = |h: &Harness| {
        h.cloud.set(|s| {
            if let Some(e) = s.eni.as_mut() {
                e.ips.retain(|i| i.addr != IpAddr::V4(super::claims::VIP));
            }
            s.others = vec![peer_holding_vip()];
        });
    };
    // Claimed, then absent from the host: an orphan, then released once the peer has
    // it in the cloud.
    let h = claims(metrics, vec![peer_holding_vip()], &|s| {
        s.claim.reverify_interval = Duration::from_secs(5);
        s.claim.orphan_after = Duration::from_secs(12);
    });
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    h.remove_vip();
    sleep(Duration::from_secs(20)).await;
    take_back(&h);
    sleep(Duration::from_secs(10)).await;
    drop(h);
    // Claimed, then absent from the host: released by hand (`enisync release <ip>`).
    let h = claims(metrics, vec![peer_holding_vip()], &|_| {});
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    h.remove_vip();
    sleep(Duration::from_secs(1)).await;
    h.release_by_hand(IpAddr::V4(super::claims::VIP))
        .await
        .expect("released by hand");
    sleep(Duration::from_secs(2)).await;
    drop(h);
    // Contested while the host keeps it; claimed again after the backoff, until the
    // migration bound makes it wait.
    let h = claims(metrics, vec![peer_holding_vip()], &|s| {
        s.claim.reverify_interval = Duration::from_secs(5);
        s.claim.contest_backoff = Duration::from_secs(1);
        s.claim.max_migrations_per_minute = 1;
    });
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    take_back(&h);
    sleep(Duration::from_secs(10)).await;
    drop(h);

    // assign; then parked: foreign, primary elsewhere, other subnet, refused.
    let h = claims(metrics, Vec::new(), &|_| {});
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    drop(h);
    for holder in [
        other_eni(
            "eni-x",
            "ins-stranger",
            "subnet-1",
            &[(super::claims::VIP, false)],
        ),
        other_eni(
            "eni-peer",
            "ins-peer",
            "subnet-1",
            &[(super::claims::VIP, true)],
        ),
        other_eni(
            "eni-peer",
            "ins-peer",
            "subnet-2",
            &[(super::claims::VIP, false)],
        ),
    ] {
        let h = claims(metrics, vec![holder], &|_| {});
        h.add_vip("keepalived");
        sleep(SETTLE * 2).await;
        drop(h);
    }
    let h = claims(metrics, vec![peer_holding_vip()], &|_| {});
    h.cloud
        .set(|s| s.claim_fail_next = Some("UnauthorizedOperation".into()));
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    drop(h);

    // holder changed (a stale source), the start-up hold-off, dry run, paused.
    let h = claims(metrics, vec![peer_holding_vip()], &|_| {});
    h.cloud
        .set(|s| s.claim_fail_next = Some("ResourceNotFound".into()));
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    drop(h);
    let h = claims(metrics, vec![peer_holding_vip()], &|s| {
        s.claim.startup_holdoff = Duration::from_secs(60);
    });
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    drop(h);
    let h = claims(metrics, vec![peer_holding_vip()], &|s| {
        s.claim.dry_run = true
    });
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    drop(h);
    let h = claims(metrics, Vec::new(), &|s| s.claim.dry_run = true);
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    drop(h);
    let h = claims(metrics, vec![peer_holding_vip()], &|_| {});
    h.pause(true).await;
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    // A paused engine sets no timer for the claim: any wakeup records it.
    let _ = h.snapshot().await;
    sleep(Duration::from_secs(1)).await;
    drop(h);
    // not AVAILABLE.
    let busy = other_eni(
        "eni-peer",
        "ins-peer",
        "subnet-1",
        &[(super::claims::VIP, false)],
    );
    let mut busy = busy;
    busy.ips[0].state = "MIGRATING".into();
    let h = claims(metrics, vec![busy], &|_| {});
    h.add_vip("keepalived");
    sleep(SETTLE * 2).await;
    drop(h);
    sleep(Duration::from_secs(1)).await;
}

/// Every claim audit `decision`/`reason` pair and every `enisync_claims_total` label
/// pair the scenarios above write.
#[tokio::test(start_paused = true)]
async fn claim_audit_values_and_labels_are_golden() {
    let capture = AuditCapture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    // Twice, for the reason `audit_values_and_release_labels_are_golden` says.
    every_claim_decision(&Arc::new(Metrics::new())).await;
    tracing::callsite::rebuild_interest_cache();
    capture.0.lock().expect("lock").clear();
    let metrics = Arc::new(Metrics::new());
    every_claim_decision(&metrics).await;
    let audit: String = capture
        .0
        .lock()
        .expect("lock")
        .iter()
        .filter(|l| l.starts_with("claim") || l.starts_with("contested"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_golden("claim_audit_values.tsv", &audit);
    let labels: BTreeSet<String> = metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("enisync_claims_total{"))
        .filter_map(|l| l.rsplit_once(' ').map(|(labels, _)| labels.to_owned()))
        .collect();
    let labels: String = labels.iter().map(|l| format!("{l}\n")).collect();
    assert_golden("claim_labels.txt", &labels);
}
