//! Batching: calls of ten, coalescing of removals coming due together, a burst behind
//! a first removal already checked.

use super::*;

#[tokio::test(start_paused = true)]
async fn twenty_three_removals_of_one_eni_become_three_calls() {
    let aux: Vec<u8> = (11..34).collect();
    let h = start(&aux, |s| s.burst_limit = 100);
    for n in &aux {
        h.remove(*n, by("ip"));
    }
    sleep(GRACE * 2).await;
    let calls = h.cloud.calls();
    assert_eq!(
        calls.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10, 3]
    );
    assert_eq!(h.snapshot().await.counters.released, 23);
}

#[tokio::test(start_paused = true)]
async fn removals_coming_due_together_are_coalesced_and_isolated_ones_go_at_once() {
    let h = start(&[11, 12, 13], |s| s.coalesce = Duration::from_millis(50));
    h.remove(11, by("ip"));
    sleep(Duration::from_millis(30)).await;
    h.remove(12, by("ip"));
    sleep(Duration::from_secs(5)).await;
    h.remove(13, by("ip"));
    sleep(GRACE * 2).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(11), ip(12)], vec![ip(13)]]);
}

/// No grace period and no burst hold: every removal is due on arrival, as in the
/// benchmark's mass release.
fn start_due_at_once(aux: &[u8]) -> Harness {
    start(aux, |s| {
        s.grace = Duration::ZERO;
        s.burst_limit = 100;
    })
}

/// Lets the engine take in what was sent and finish an (instant) send-time check,
/// without moving the paused clock.
async fn let_the_engine_run() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Call sizes, in order.
fn call_sizes(h: &Harness) -> Vec<usize> {
    h.cloud.calls().iter().map(Vec::len).collect()
}

/// With no grace period the first removals of a burst are due, and checked, before
/// the rest of the burst has arrived. Their call waits for the burst (while removals
/// keep coming less than `BURST_QUIET` apart), so a burst of 25 takes the minimum of
/// 3 calls; a lone removal goes out as soon as its check is back.
#[tokio::test(start_paused = true)]
async fn a_burst_behind_a_checked_first_removal_fills_its_call() {
    let aux: Vec<u8> = (11..36).collect();
    let h = start_due_at_once(&aux);
    h.remove(11, by("ip"));
    h.remove(12, by("ip"));
    let_the_engine_run().await;
    for n in 13..36 {
        h.remove(n, by("ip"));
    }
    sleep(Duration::from_secs(5)).await;
    assert_eq!(call_sizes(&h), vec![10, 10, 5], "{:?}", h.cloud.calls());

    // A lone removal: out within the quiet period, not after the coalescing cap.
    let h = start(&[11], |s| {
        s.grace = Duration::ZERO;
        s.coalesce = Duration::from_secs(10);
    });
    h.remove(11, by("ip"));
    let_the_engine_run().await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(11)]], "no wait at all");
}

/// A check that finds more than ten sends whole calls only: the remainder waits for
/// the next check, with the removals that arrived meanwhile.
#[tokio::test(start_paused = true)]
async fn a_partial_last_call_waits_for_the_next_check() {
    let aux: Vec<u8> = (11..41).collect();
    let h = start_due_at_once(&aux);
    h.remove(11, by("ip"));
    h.remove(12, by("ip"));
    let_the_engine_run().await;
    for n in 13..22 {
        h.remove(n, by("ip"));
    }
    // The first call (10 of the 11) is out and its task runs; 19 more come.
    sleep(Duration::from_millis(5)).await;
    for n in 22..41 {
        h.remove(n, by("ip"));
    }
    sleep(Duration::from_secs(5)).await;
    assert_eq!(call_sizes(&h), vec![10, 10, 10], "{:?}", h.cloud.calls());
    assert_eq!(h.snapshot().await.counters.released, 30);
}

/// One call in flight per ENI: the engine's slot serialises them (the client does not).
/// Removals keep coming due while calls (and a retried failed task) are out; no two
/// unassigns of the ENI overlap, and every IP is released once.
#[tokio::test(start_paused = true)]
async fn one_call_is_in_flight_per_eni() {
    let aux: Vec<u8> = (11..41).collect();
    let h = start(&aux, |s| {
        s.burst_limit = 100;
        s.retry_cap = Duration::from_secs(1);
    });
    h.cloud.set(|s| s.fail_tasks = 1);
    for (k, n) in aux.iter().enumerate() {
        h.remove(*n, by("ip"));
        if k % 4 == 3 {
            sleep(Duration::from_millis(30)).await;
        }
    }
    sleep(GRACE * 3).await;
    let max_open = h.cloud.state.lock().expect("lock").max_open_calls;
    assert_eq!(
        max_open,
        1,
        "calls for one ENI overlapped: {:?}",
        h.cloud.calls()
    );
    assert_eq!(h.snapshot().await.counters.released, 30);
}

/// "Speed never buys a stale check": every call of a burst goes out on a listing read
/// after the ENI's previous task ended. An EIP bound to an IP of the second call while
/// the first call's task runs is seen, and that IP is not released (sending the rest of
/// the batch on the first listing would have unbound it silently).
#[tokio::test(start_paused = true)]
async fn every_call_of_a_burst_is_checked_on_a_listing_read_after_the_last_task() {
    let aux: Vec<u8> = (11..41).collect();
    let h = start(&aux, |s| s.burst_limit = 100);
    for n in &aux {
        h.remove(*n, by("ip"));
    }
    // Until the first call is out (its task takes 50 ms).
    for _ in 0..100_000 {
        if !h.cloud.calls().is_empty() {
            break;
        }
        sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(call_sizes(&h), vec![10], "{:?}", h.cloud.calls());
    let listings_before = h.cloud.state.lock().expect("lock").listings;
    let bound = ip(35);
    h.cloud.set_ip(bound, |e| e.eip = Some("eip-bound".into()));
    sleep(GRACE * 3).await;
    let calls = h.cloud.calls();
    assert!(
        calls.iter().all(|c| !c.contains(&bound)),
        "an IP whose EIP was bound after the first listing was released: {calls:?}"
    );
    assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 29, "{calls:?}");
    let listings = h.cloud.state.lock().expect("lock").listings;
    assert!(
        listings - listings_before >= 2,
        "the later calls were not checked on listings of their own ({listings_before} -> {listings})"
    );
    assert_eq!(h.snapshot().await.counters.released, 29);
}
