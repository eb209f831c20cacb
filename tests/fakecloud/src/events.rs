//! The event log, for benchmarks that line the fake's moments up with their own
//! (`bench/failover.py`): each request answered, each task's end, each change of the ENI
//! an IP is bound to, stamped with `CLOCK_MONOTONIC` (the clock `time.monotonic()` reads).
//!
//! Off by default (`FakeCloud::record_events`, `fakecloud --events`). It keeps the newest
//! `cap` events; older ones are dropped and counted. Served as JSON at
//! `GET /_fake/events?since=SEQ` (the events after `SEQ`).
//!
//! A binding moves when its task ends: the fake applies a task's effect in the same step
//! that marks it SUCCESS, so a `bound` event has the stamp of its `task_ended` event.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::calls::Call;
use crate::state::{Effect, FakeEni, FakeTask, FakeTaskStatus};

/// One moment of the fake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FakeEvent {
    /// 1, 2, 3… in order of recording (dropped events keep their numbers).
    pub seq: u64,
    /// `CLOCK_MONOTONIC`, nanoseconds.
    pub mono_ns: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// A request answered; stamped when it reached the fake's handler, before the state
    /// lock.
    Request { call: Call },
    /// A task ended (`SUCCESS` or `FAILED`).
    TaskEnded {
        task: String,
        action: String,
        status: FakeTaskStatus,
    },
    /// Where `ip` is bound changed (`None`: no ENI), by `task`.
    Bound {
        ip: IpAddr,
        from: Option<String>,
        to: Option<String>,
        task: String,
    },
}

/// The recorded events.
#[derive(Debug, Default)]
pub(crate) struct EventLog {
    /// How many events are kept; 0: recording is off.
    cap: usize,
    events: VecDeque<FakeEvent>,
    last_seq: u64,
    dropped: u64,
}

impl EventLog {
    /// Starts recording, keeping the newest `cap` events (0 stops it).
    pub fn enable(&mut self, cap: usize) {
        self.cap = cap;
        while self.events.len() > cap {
            self.events.pop_front();
            self.dropped += 1;
        }
    }

    pub fn on(&self) -> bool {
        self.cap > 0
    }

    pub fn push(&mut self, mono_ns: u64, kind: EventKind) {
        if !self.on() {
            return;
        }
        self.last_seq += 1;
        if self.events.len() == self.cap {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(FakeEvent {
            seq: self.last_seq,
            mono_ns,
            kind,
        });
    }

    /// The events recorded after `seq`, oldest first.
    pub fn since(&self, seq: u64) -> Vec<FakeEvent> {
        self.events
            .iter()
            .filter(|e| e.seq > seq)
            .cloned()
            .collect()
    }

    /// How many events were dropped to stay within the cap.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Records a task's end and the bindings it moved (`moves`, from [`moves`]).
    pub fn task_ended(
        &mut self,
        task: &FakeTask,
        moves: Vec<(IpAddr, Option<String>, Option<String>)>,
    ) {
        if !self.on() {
            return;
        }
        let now = monotonic_ns();
        self.push(
            now,
            EventKind::TaskEnded {
                task: task.request_id.clone(),
                action: task.action.clone(),
                status: task.status,
            },
        );
        for (ip, from, to) in moves {
            self.push(
                now,
                EventKind::Bound {
                    ip,
                    from,
                    to,
                    task: task.request_id.clone(),
                },
            );
        }
    }
}

/// The bindings a task's effect moves when it ends (`ok`: it succeeds), as
/// `(ip, from, to)`: computed before the effect is applied, with the same rules.
pub(crate) fn moves(
    effect: &Effect,
    ok: bool,
    enis: &BTreeMap<String, FakeEni>,
) -> Vec<(IpAddr, Option<String>, Option<String>)> {
    if !ok {
        return Vec::new();
    }
    match effect {
        Effect::Unassign { eni, ips } => ips
            .iter()
            .map(|(ip, _)| (IpAddr::V4(*ip), Some(eni.clone()), None))
            .collect(),
        Effect::UnassignIpv6 { eni, ips } => ips
            .iter()
            .map(|(ip, _)| (IpAddr::V6(*ip), Some(eni.clone()), None))
            .collect(),
        // Assigned IPs were listed (PENDING) on the ENI from the call on; they are bound
        // once the task succeeds.
        Effect::Assign { eni, ips } => ips
            .iter()
            .map(|ip| (IpAddr::V4(*ip), None, Some(eni.clone())))
            .collect(),
        Effect::Migrate { src, dst, ip, .. } => {
            let held = enis.get(src).is_some_and(|e| e.ip(*ip).is_some());
            if enis.contains_key(dst) && held {
                vec![(IpAddr::V4(*ip), Some(src.clone()), Some(dst.clone()))]
            } else {
                Vec::new()
            }
        }
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds (`Instant` does not expose its value).
pub fn monotonic_ns() -> u64 {
    let d = monotonic();
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// `CLOCK_MONOTONIC` now.
pub fn monotonic() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(n: u32) -> EventKind {
        EventKind::TaskEnded {
            task: format!("t{n}"),
            action: "MigratePrivateIpAddress".into(),
            status: FakeTaskStatus::Success,
        }
    }

    #[test]
    fn off_records_nothing_and_the_cap_drops_the_oldest() {
        let mut log = EventLog::default();
        log.push(1, kind(1));
        assert!(log.since(0).is_empty());
        log.enable(2);
        for n in 1..=3 {
            log.push(u64::from(n), kind(n));
        }
        let seqs: Vec<u64> = log.since(0).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 3]);
        assert_eq!(log.dropped(), 1);
        assert_eq!(log.since(2).len(), 1);
        log.enable(1);
        assert_eq!(log.since(0).len(), 1);
        assert_eq!(log.dropped(), 2);
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_ns();
        std::thread::sleep(Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b >= a + 2_000_000, "{a} {b}");
    }

    #[test]
    fn events_serialize_flat_with_their_kind() {
        let e = FakeEvent {
            seq: 7,
            mono_ns: 5,
            kind: EventKind::Bound {
                ip: "10.0.1.100".parse().expect("ip"),
                from: Some("eni-a".into()),
                to: Some("eni-b".into()),
                task: "t".into(),
            },
        };
        let v = serde_json::to_value(&e).expect("json");
        assert_eq!(v["event"], "bound");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["to"], "eni-b");
        let back: FakeEvent = serde_json::from_value(v).expect("parses back");
        assert_eq!(back, e);
    }
}
