//! The event log (`--events`, `GET /_fake/events`): requests, task ends and binding
//! moves, stamped with CLOCK_MONOTONIC, for benchmarks that line them up with their own
//! clock.

use enisync_fakecloud::{EventKind, FakeEvent, monotonic_ns};
use serde_json::{Value, json};

use crate::common::*;

fn migrate(src: &str, dst: &str, addr: &str) -> Value {
    json!({"SourceNetworkInterfaceId": src, "DestinationNetworkInterfaceId": dst, "PrivateIpAddress": addr})
}

async fn events_over_http(env: &Env, since: u64) -> (Vec<FakeEvent>, u64) {
    let v: Value = env
        .http
        .get(format!("http://{}/_fake/events?since={since}", env.host()))
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    let events = serde_json::from_value(v["events"].clone()).expect("events parse");
    (events, v["dropped"].as_u64().expect("dropped"))
}

#[tokio::test]
async fn nothing_is_recorded_unless_asked() {
    let env = env().await;
    let r = env
        .v3(
            "MigratePrivateIpAddress",
            migrate(ENI_A, ENI_B, "10.0.1.11"),
        )
        .await;
    env.wait_v3_task(r["RequestId"].as_str().expect("task"))
        .await;
    assert!(env.cloud.events_since(0).is_empty());
    assert_eq!(events_over_http(&env, 0).await, (Vec::new(), 0));
}

#[tokio::test]
async fn a_migrate_is_recorded_as_request_task_end_and_binding_move() {
    let env = env().await;
    env.cloud.record_events(1000);
    let before = monotonic_ns();
    let r = env
        .v3(
            "MigratePrivateIpAddress",
            migrate(ENI_A, ENI_B, "10.0.1.11"),
        )
        .await;
    let answered = monotonic_ns();
    let task = r["RequestId"].as_str().expect("task").to_string();
    let done = env.wait_v3_task(&task).await;
    assert_eq!(done["Status"], "SUCCESS");
    let (events, dropped) = events_over_http(&env, 0).await;
    assert_eq!(dropped, 0);

    let request = events
        .iter()
        .find(|e| matches!(&e.kind, EventKind::Request { call } if call.action == "MigratePrivateIpAddress"))
        .expect("the Migrate request");
    assert!(
        before <= request.mono_ns && request.mono_ns <= answered,
        "stamped on arrival: {before} <= {} <= {answered}",
        request.mono_ns
    );
    let EventKind::Request { call } = &request.kind else {
        unreachable!()
    };
    assert_eq!(call.answer, "Success");
    assert_eq!(call.task.as_deref(), Some(task.as_str()));
    assert_eq!(call.params["DestinationNetworkInterfaceId"], ENI_B);

    let ended = events
        .iter()
        .find(|e| matches!(&e.kind, EventKind::TaskEnded { task: t, .. } if *t == task))
        .expect("the task's end");
    assert!(
        matches!(&ended.kind, EventKind::TaskEnded { status, action, .. }
            if status.as_str() == "SUCCESS" && action == "MigratePrivateIpAddress"),
        "{ended:?}"
    );
    // Standard tasks take 150 ms.
    assert!(
        ended.mono_ns >= request.mono_ns + 150_000_000,
        "{} {}",
        ended.mono_ns,
        request.mono_ns
    );
    let bound: Vec<&FakeEvent> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Bound { .. }))
        .collect();
    assert_eq!(bound.len(), 1, "{events:?}");
    assert_eq!(
        bound[0].kind,
        EventKind::Bound {
            ip: "10.0.1.11".parse().expect("ip"),
            from: Some(ENI_A.to_string()),
            to: Some(ENI_B.to_string()),
            task: task.clone(),
        }
    );
    assert_eq!(bound[0].mono_ns, ended.mono_ns);
    assert!(bound[0].seq > ended.seq && ended.seq > request.seq);

    // `since` gives only what came after.
    let (later, _) = events_over_http(&env, ended.seq).await;
    assert!(later.iter().all(|e| e.seq > ended.seq));
    assert_eq!(
        later
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Bound { .. }))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_failed_task_moves_no_binding() {
    let env = env().await;
    env.cloud.record_events(1000);
    env.cloud.fail_next_task("MigratePrivateIpAddress");
    let r = env
        .v3(
            "MigratePrivateIpAddress",
            migrate(ENI_A, ENI_B, "10.0.1.11"),
        )
        .await;
    let task = r["RequestId"].as_str().expect("task").to_string();
    assert_eq!(env.wait_v3_task(&task).await["Status"], "FAILED");
    let events = env.cloud.events_since(0);
    assert!(
        events.iter().any(|e| matches!(&e.kind,
        EventKind::TaskEnded { task: t, status, .. } if *t == task && status.as_str() == "FAILED"))
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Bound { .. })),
        "{events:?}"
    );
    assert_eq!(env.cloud.owner_of(ip("10.0.1.11")).as_deref(), Some(ENI_A));
}

#[tokio::test]
async fn assign_and_unassign_move_bindings_from_and_to_nobody() {
    let env = env().await;
    env.cloud.record_events(1000);
    let r = env
        .v3(
            "UnassignPrivateIpAddresses",
            json!({"NetworkInterfaceId": ENI_A, "PrivateIpAddresses": [{"PrivateIpAddress": "10.0.1.12"}]}),
        )
        .await;
    env.wait_v3_task(r["RequestId"].as_str().expect("task"))
        .await;
    let r = env
        .v3(
            "AssignPrivateIpAddresses",
            json!({"NetworkInterfaceId": ENI_B, "PrivateIpAddresses": [{"PrivateIpAddress": "10.0.1.12"}]}),
        )
        .await;
    env.wait_v3_task(r["RequestId"].as_str().expect("task"))
        .await;
    let moves: Vec<(Option<String>, Option<String>)> = env
        .cloud
        .events_since(0)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Bound { from, to, .. } => Some((from, to)),
            _ => None,
        })
        .collect();
    assert_eq!(
        moves,
        [
            (Some(ENI_A.to_string()), None),
            (None, Some(ENI_B.to_string()))
        ]
    );
}
