//! The life of an intent after the rule: the release and its task, refusals and
//! parking, failed tasks, retries, alarms, and an address whose release is in flight
//! coming back and leaving again.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_removal_that_outlives_the_grace_period_is_released_once() {
    let h = start(&[11, 12], |_| {});
    h.remove(11, by("ip"));
    sleep(GRACE - Duration::from_secs(1)).await;
    assert!(
        h.cloud.calls().is_empty(),
        "nothing before the grace period ends"
    );
    sleep(Duration::from_secs(5)).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(11)]]);
    assert_eq!(*h.router.released.lock().expect("lock"), vec![ip(11)]);
    let snap = h.snapshot().await;
    assert!(snap.intents.is_empty());
    assert_eq!(snap.counters.released, 1);
    sleep(GRACE * 3).await;
    assert_eq!(h.cloud.calls().len(), 1, "exactly once");
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_parked_and_retried_after_reload() {
    let h = start(&[11], |_| {});
    h.cloud.set(|s| s.refuse_next = 1);
    h.remove(11, by("ip"));
    sleep(GRACE * 2).await;
    assert_eq!(h.cloud.calls().len(), 1);
    let snap = h.snapshot().await;
    assert!(
        matches!(snap.intents[0].phase, Phase::Parked { .. }),
        "parked, not dropped"
    );
    h.commands
        .send(Command::Reload(Box::default()))
        .await
        .expect("send");
    sleep(Duration::from_secs(5)).await;
    assert_eq!(h.cloud.calls().len(), 2);
    assert_eq!(h.snapshot().await.counters.released, 1);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_retried_after_the_parked_retry_period() {
    let h = start(&[11], |s| s.parked_retry = Duration::from_secs(600));
    h.cloud.set(|s| s.refuse_next = 1);
    h.remove(11, by("ip"));
    sleep(GRACE * 2).await;
    assert_eq!(h.cloud.calls().len(), 1, "refused once, parked");
    sleep(Duration::from_secs(500)).await;
    assert_eq!(h.cloud.calls().len(), 1, "not before its retry time");
    sleep(Duration::from_secs(120)).await;
    assert_eq!(h.cloud.calls().len(), 2, "retried without a reload");
    assert_eq!(h.snapshot().await.counters.released, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_task_is_retried_then_released() {
    let h = start(&[11], |s| s.retry_cap = Duration::from_secs(2));
    h.cloud.set(|s| s.fail_tasks = 1);
    h.remove(11, by("ip"));
    sleep(GRACE + Duration::from_secs(10)).await;
    assert_eq!(h.cloud.calls().len(), 2);
    assert_eq!(h.snapshot().await.counters.released, 1);
}

#[tokio::test(start_paused = true)]
async fn an_ip_back_after_its_release_raises_the_alarm() {
    let h = start(&[11], |_| {});
    h.remove(11, by("ip"));
    sleep(GRACE * 2).await;
    h.add(addr(11, true));
    sleep(Duration::from_millis(10)).await;
    let snap = h.snapshot().await;
    assert_eq!(snap.counters.alarms, 1);
    assert!(snap.alarms[0].contains("10.0.1.11"));
}

#[test]
fn backoff_is_jittered_and_capped() {
    for attempt in 0..40 {
        let backoff = crate::backoff::Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        let d = settings::retry_delay(backoff, attempt);
        assert!(d <= Duration::from_secs(2));
        assert!(d >= Duration::from_millis(50));
    }
}

/// The forgotten task: an IP whose release is in flight comes back and leaves
/// again, and the daemon restarts before the task ends. The accepted task is still
/// followed to SUCCESS after the restart: its `released` record, its route cleanup.
#[tokio::test(start_paused = true)]
async fn an_accepted_task_is_followed_to_its_end_when_its_ip_comes_back_and_leaves_again() {
    let dir = std::env::temp_dir().join(format!("enisync-engine-forgotten-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let run = |cloud: Arc<MemCloud>, view: HostView| {
        let (journal, replay) = crate::journal::Journal::open(&dir).expect("journal");
        let inventory = inventory_of(&cloud);
        spawn_engine(
            cloud,
            Settings {
                grace: GRACE,
                ..Settings::default()
            },
            Start {
                journal: Some(journal),
                replay: replay.live,
                ..start_with(view, inventory)
            },
        )
    };
    let mut view = HostView::default();
    view.links.insert(2, link(2, "eth1", true));
    view.addrs.insert(addr(10, false).key(), addr(10, false));

    let cloud = MemCloud::new(&[11]);
    let first = run(Arc::clone(&cloud), view.clone());
    first.remove(11, by("ip"));
    // Past the grace period: checked, sent, accepted; the task (50 ms) runs.
    sleep(GRACE + Duration::from_millis(10)).await;
    assert_eq!(cloud.calls(), vec![vec![ip(11)]], "the unassign went out");
    // Back on the host and gone again while the task runs: a new pending intent.
    first.add(addr(11, true));
    first.remove(11, by("ip"));
    tokio::task::yield_now().await;
    let snapshot = first.snapshot().await;
    assert!(
        snapshot
            .intents
            .iter()
            .any(|i| i.ip == ip(11) && matches!(i.phase, Phase::Releasing { .. })),
        "the accepted task is still followed: {:?}",
        snapshot.intents
    );
    // Crash (the engine stops before the task's end is seen; the file stays as is).
    drop(first);
    tokio::task::yield_now().await;

    // The restart: a new engine on the same journal, the IP still off the host.
    let second = run(Arc::clone(&cloud), view);
    sleep(Duration::from_secs(1)).await;
    let snapshot = second.snapshot().await;
    assert!(
        snapshot.recent.iter().any(|f| f.ip == ip(11)
            && f.outcome
                == Outcome::Released {
                    task_id: "1".into()
                }),
        "the journaled task was followed to SUCCESS after the restart: {:?} {:?}",
        snapshot.recent,
        snapshot.intents
    );
    assert!(
        second
            .router
            .released
            .lock()
            .expect("lock")
            .contains(&ip(11)),
        "its routing was cleaned up"
    );
    let text = std::fs::read_to_string(dir.join("intents.journal")).expect("journal");
    let released = text.lines().any(|l| {
        l.contains(r#""10.0.1.11""#) && l.contains(r#""finished""#) && l.contains(r#""released""#)
    });
    assert!(released, "no released record:\n{text}");
    assert_eq!(cloud.calls().len(), 1, "no second unassign");
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}
