//! What operators and the daemon drive: dry run, reload, pause, liveness and the
//! watchdog, and routing repairs.

use super::*;

#[tokio::test(start_paused = true)]
async fn dry_run_checks_everything_and_sends_nothing() {
    let h = start(&[11], |s| s.dry_run = true);
    h.remove(11, by("ip"));
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty());
    let snap = h.snapshot().await;
    assert_eq!(snap.counters.dry_run_calls, 1);
    assert_eq!(snap.recent[0].outcome, Outcome::DryRun);
    assert!(
        h.router.released.lock().expect("lock").is_empty(),
        "no routing change"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_arms_releases_arms_routing_too() {
    let h = start(&[11], |s| s.dry_run = true);
    let armed = Settings {
        dry_run: false,
        ..harness_settings()
    };
    h.commands
        .send(Command::Reload(Box::new(armed)))
        .await
        .expect("engine runs");
    let snapshot = h.snapshot().await;
    assert!(!snapshot.dry_run, "releases armed");
    assert_eq!(
        *h.router.dry_runs.lock().expect("lock"),
        vec![false],
        "routing was told that releases are armed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pause_outlives_the_engine_and_only_resume_clears_it() {
    let dir = std::env::temp_dir().join(format!("enisync-engine-pause-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let file = crate::pause::PauseFile::new(&dir);

    let first = start_paused_in(&[11], |_| {}, Some(file.clone()));
    let (tx, rx) = oneshot::channel();
    let pause = PauseRequest {
        pause: true,
        by_uid: Some(4321),
    };
    first
        .commands
        .send(Command::Pause(pause, tx))
        .await
        .expect("engine runs");
    rx.await.expect("reply").expect("pause written");
    drop(first);

    // A new engine on the same state directory (a restart) is still paused.
    let h = start_paused_in(&[11], |_| {}, Some(file.clone()));
    let snapshot = h.snapshot().await;
    assert!(snapshot.paused, "the pause survived the restart");
    assert_eq!(snapshot.paused_by_uid, Some(4321));
    assert!(snapshot.paused_since.is_some());
    h.remove(11, by("ip"));
    sleep(GRACE * 3).await;
    assert!(h.cloud.calls().is_empty(), "nothing released while paused");

    let (tx, rx) = oneshot::channel();
    let resume = PauseRequest {
        pause: false,
        by_uid: Some(0),
    };
    h.commands
        .send(Command::Pause(resume, tx))
        .await
        .expect("engine runs");
    rx.await.expect("reply").expect("resumed");
    assert_eq!(file.load(), None, "resume removed the pause file");
    sleep(GRACE).await;
    assert_eq!(h.cloud.calls().len(), 1, "released after resume");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Idle means asleep: with nothing due and no heartbeat, the loop sets no timer and
/// does not turn (every turn would be a wakeup of an otherwise idle node agent).
#[tokio::test(start_paused = true)]
async fn an_idle_engine_does_not_turn() {
    use std::sync::atomic::{AtomicU64, Ordering};

    let engine = Engine::new(
        Settings::default(),
        MemCloud::new(&[11]),
        RecordingRouter::default(),
        start_with(HostView::default(), Inventory::default()),
    );
    let (_events, events_rx) = mpsc::unbounded_channel();
    let (commands, commands_rx) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let turns = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&turns);
    tokio::spawn(engine.run(
        events_rx,
        commands_rx,
        shutdown.clone(),
        Box::pin(futures_util::stream::pending()),
        move || {
            counter.fetch_add(1, Ordering::SeqCst);
        },
    ));
    sleep(Duration::from_secs(6 * 3600)).await;
    assert_eq!(turns.load(Ordering::SeqCst), 0, "no turn in six idle hours");
    // Still alive: a ping is answered at once.
    let (tx, rx) = oneshot::channel();
    commands.send(Command::Ping(tx)).await.expect("send");
    rx.await.expect("answered");
    assert_eq!(turns.load(Ordering::SeqCst), 1);
    shutdown.cancel();
}

/// The watchdog contract: `tick` (which pings systemd) runs on the engine loop itself,
/// at least every heartbeat while idle, and stops when the loop is stuck.
#[tokio::test(start_paused = true)]
async fn a_stuck_loop_stops_the_ticks() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    struct HangingRouter(Arc<AtomicBool>);
    impl Router for HangingRouter {
        async fn after_release(&mut self, _: &[std::net::IpAddr], _: &HostView, _: &Inventory) {}
        async fn reconcile(&mut self, _: &HostView, _: &Inventory) {
            if self.0.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
        }
        async fn plan(
            &mut self,
            _: &[std::net::IpAddr],
            _: &HostView,
            _: &Inventory,
        ) -> Vec<String> {
            Vec::new()
        }
        fn set_dry_run(&mut self, _: bool) {}
    }

    let hang = Arc::new(AtomicBool::new(false));
    let engine = Engine::new(
        Settings::default(),
        MemCloud::new(&[11]),
        HangingRouter(Arc::clone(&hang)),
        start_with(HostView::default(), Inventory::default()),
    );
    let (events, events_rx) = mpsc::unbounded_channel();
    let (_commands, commands_rx) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let ticks = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&ticks);
    tokio::spawn(engine.run(
        events_rx,
        commands_rx,
        shutdown.clone(),
        beats(Duration::from_millis(100)),
        move || {
            counter.fetch_add(1, Ordering::SeqCst);
        },
    ));
    sleep(Duration::from_secs(1)).await;
    let idle_ticks = ticks.load(Ordering::SeqCst);
    assert!(
        idle_ticks >= 9,
        "ticks every heartbeat while idle: {idle_ticks}"
    );
    hang.store(true, Ordering::SeqCst);
    events.send(HostEvent::RoutingChanged).expect("send");
    sleep(Duration::from_millis(50)).await;
    let stuck_at = ticks.load(Ordering::SeqCst);
    sleep(Duration::from_secs(5)).await;
    assert_eq!(
        ticks.load(Ordering::SeqCst),
        stuck_at,
        "no tick while the loop is stuck"
    );
    shutdown.cancel();
}

/// Policy routing covers ENI links only, so address churn elsewhere (containers on
/// bridges and veths) must not make the router dump and compare rules each time.
#[tokio::test(start_paused = true)]
async fn addresses_added_off_the_enis_do_not_reconcile_routing() {
    use std::sync::atomic::Ordering;

    let h = start(&[11], |_| {});
    let veth = Link {
        mac: Some(MacAddr([0x02, 0, 0, 0, 0, 0x99])),
        ..link(3, "veth0", true)
    };
    h.events
        .send(HostEvent::LinkChanged(veth))
        .expect("engine runs");
    sleep(Duration::from_millis(10)).await;
    let before = h.router.reconciles.load(Ordering::SeqCst);
    for last in 100..110 {
        h.add(Addr {
            link: 3,
            ..addr(last, false)
        });
    }
    sleep(Duration::from_millis(10)).await;
    assert_eq!(h.router.reconciles.load(Ordering::SeqCst), before);
    h.add(addr(50, true));
    sleep(Duration::from_millis(10)).await;
    assert_eq!(h.router.reconciles.load(Ordering::SeqCst), before + 1);
}

/// A pause stops a batch whose send-time check is already in flight: once `pause` is
/// answered no unassign goes out, the release stays pending (not dropped, not
/// cancelled), and after `resume` it goes through a fresh send-time check.
#[tokio::test(start_paused = true)]
async fn a_pause_stops_a_batch_whose_check_is_in_flight() {
    let h = start(&[11], |_| {});
    h.cloud.set(|s| s.list_delay = Duration::from_secs(2));
    h.remove(11, by("ip"));
    // The grace period is over: the send-time listing is out, and takes 2 s.
    sleep(GRACE + Duration::from_millis(500)).await;
    assert_eq!(h.cloud.state.lock().expect("lock").listings, 1);
    h.pause(true).await;
    sleep(Duration::from_secs(10)).await;
    assert!(
        h.cloud.calls().is_empty(),
        "no unassign after the pause was answered: {:?}",
        h.cloud.calls()
    );
    let snapshot = h.snapshot().await;
    assert_eq!(snapshot.intents.len(), 1, "still pending: {snapshot:?}");
    assert_eq!(snapshot.intents[0].phase, Phase::Pending);
    assert!(snapshot.recent.is_empty(), "not finished or cancelled");
    assert_eq!(snapshot.counters.cancelled, 0);

    h.pause(false).await;
    sleep(Duration::from_secs(10)).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(11)]], "released after resume");
    assert_eq!(
        h.cloud.state.lock().expect("lock").listings,
        2,
        "with a send-time check made after the resume"
    );
}

/// A pause also stops the unassigns the release procedure would send on its own once
/// a call is out (here the retry after a task that failed); the accepted task is still
/// followed to its end.
#[tokio::test(start_paused = true)]
async fn a_pause_stops_the_retry_of_a_failed_task() {
    let h = start(&[11], |_| {});
    h.cloud.set(|s| s.fail_tasks = 1);
    h.remove(11, by("ip"));
    // The first unassign is out at the end of the grace period; its task fails 50 ms
    // later, and the procedure would then unassign again.
    sleep(GRACE + Duration::from_millis(10)).await;
    assert_eq!(h.cloud.calls().len(), 1);
    h.pause(true).await;
    sleep(Duration::from_secs(10)).await;
    assert_eq!(h.cloud.calls().len(), 1, "no retry while paused");
    let snapshot = h.snapshot().await;
    assert_eq!(snapshot.intents.len(), 1, "still pending: {snapshot:?}");
    assert_eq!(snapshot.intents[0].phase, Phase::Pending);

    h.pause(false).await;
    sleep(Duration::from_secs(10)).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(11)], vec![ip(11)]]);
    assert_eq!(h.snapshot().await.counters.released, 1);
}

/// A paused engine with a release due does not spin: what the pause blocks sets no
/// timer, so the loop turns only for what wakes it (here: the removal, the pause, the
/// snapshots), not once a millisecond.
#[tokio::test(start_paused = true)]
async fn a_paused_engine_with_a_due_release_does_not_spin() {
    let h = start(&[11], |_| {});
    h.pause(true).await;
    h.remove(11, by("ip"));
    sleep(GRACE * 3).await;
    let turns = h.turns();
    assert!(
        turns <= 10,
        "{turns} turns in {} s of a paused engine",
        (GRACE * 3).as_secs()
    );
    assert!(h.cloud.calls().is_empty());
    h.pause(false).await;
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(11)]], "released after resume");
}

/// A call of twenty goes out as two unassigns of ten, one after the other: a pause
/// between them stops the second. Its IPs stay pending and unsent (nothing went out
/// for them), and go after `resume`.
#[tokio::test(start_paused = true)]
async fn a_pause_stops_the_later_chunks_of_a_call() {
    let aux: Vec<u8> = (11..31).collect();
    let h = start(&aux, |s| s.burst_limit = 32);
    for last in &aux {
        h.remove(*last, by("ip"));
    }
    // The first ten are out at the end of the grace period; their task takes 50 ms.
    sleep(GRACE + Duration::from_millis(10)).await;
    assert_eq!(h.cloud.calls().len(), 1);
    h.pause(true).await;
    sleep(Duration::from_secs(10)).await;
    assert_eq!(h.cloud.calls().len(), 1, "no second unassign while paused");
    let snapshot = h.snapshot().await;
    assert_eq!(snapshot.intents.len(), 10, "{snapshot:?}");
    for intent in &snapshot.intents {
        assert_eq!(intent.phase, Phase::Pending);
        assert!(!intent.sent, "never sent: {intent:?}");
    }
    assert_eq!(snapshot.counters.released, 10);

    h.pause(false).await;
    sleep(Duration::from_secs(10)).await;
    assert_eq!(h.cloud.calls().len(), 2);
    assert_eq!(h.snapshot().await.counters.released, 20);
}
