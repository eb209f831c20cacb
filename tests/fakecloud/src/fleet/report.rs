//! A scenario's figures and their table: time next to the floor the limits set, calls
//! per action with the share refused, lost and double releases, CPU and memory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use enisync_fakecloud::LimitWindow;

use crate::Fleet;
use crate::nodes::ProcStat;

/// How long idle CPU is measured before each scenario.
pub const IDLE_SPAN: Duration = Duration::from_secs(10);

/// The documented per-account limits the floors use.
const UNASSIGN_LIMIT: f64 = 100.0;
const DESCRIBE_LIMIT: f64 = 100.0;
const POLL_LIMIT: f64 = 20.0;
/// IPs per Unassign call (the API's maximum).
const PER_CALL: usize = 10;

/// The floor a scenario's time is compared with, and what it is made of.
#[derive(Debug, Clone)]
pub struct Floor {
    pub parts: Vec<(String, f64)>,
    /// The floor of the confirmation method enisync uses (task polls).
    pub seconds: f64,
}

impl Floor {
    /// (a)/(c): N nodes, `ips` on one ENI each, `task_ms` tasks.
    #[allow(clippy::cast_precision_loss)]
    pub fn burst(n: usize, ips: usize, task_ms: u64) -> Self {
        let per_eni = ips.div_ceil(PER_CALL);
        let calls = (n * per_eni) as f64;
        let task = task_ms as f64 / 1000.0;
        let unassign = calls / UNASSIGN_LIMIT;
        let chain = per_eni as f64 * task;
        let polls = calls / POLL_LIMIT;
        let listings = chain + n as f64 / DESCRIBE_LIMIT;
        Self {
            parts: vec![
                (format!("Unassign {calls} calls at 100/s"), unassign),
                (format!("per-ENI chain {per_eni} x {task} s"), chain),
                (format!("confirm by polls: {calls} tasks at 20/s"), polls),
                ("confirm by listings (chain + N/100)".into(), listings),
            ],
            seconds: unassign.max(chain).max(polls),
        }
    }

    /// (c): (a) with every limit × `scale` from `start` to `start + period` (seconds
    /// from the end of the grace period): each action's calls fit in the capacity
    /// curve no sooner than this.
    #[allow(clippy::cast_precision_loss)]
    pub fn throttled(
        n: usize,
        ips: usize,
        task_ms: u64,
        start: f64,
        period: f64,
        scale: f64,
    ) -> Self {
        let per_eni = ips.div_ceil(PER_CALL);
        let calls = (n * per_eni) as f64;
        let task = task_ms as f64 / 1000.0;
        // The time by which `count` calls fit under `limit`, throttled in the window.
        let fit = |count: f64, limit: f64| {
            let before = limit * start;
            if count <= before {
                return count / limit;
            }
            let during = limit * scale * period;
            if count <= before + during {
                return start + (count - before) / (limit * scale).max(f64::MIN_POSITIVE);
            }
            start + period + (count - before - during) / limit
        };
        let unassign = fit(calls, UNASSIGN_LIMIT);
        let chain = per_eni as f64 * task;
        let polls = fit(calls, POLL_LIMIT);
        let listings = fit(calls, DESCRIBE_LIMIT).max(chain);
        Self {
            parts: vec![
                (
                    format!("Unassign {calls} calls at 100/s, x{scale} for {period} s"),
                    unassign,
                ),
                (format!("per-ENI chain {per_eni} x {task} s"), chain),
                (
                    format!("confirm by polls: {calls} at 20/s, x{scale} for {period} s"),
                    polls,
                ),
                (
                    "confirm by listings (one per call at 100/s, throttled alike)".into(),
                    listings,
                ),
            ],
            seconds: unassign.max(chain).max(polls),
        }
    }

    /// (b): one listing per node at least.
    #[allow(clippy::cast_precision_loss)]
    pub fn restart(n: usize) -> Self {
        let describe = n as f64 / DESCRIBE_LIMIT;
        Self {
            parts: vec![(format!("{n} listings at 100/s"), describe)],
            seconds: describe,
        }
    }

    /// (d): the schedule itself (the last removal) plus grace and one task.
    pub fn trickle(schedule: Duration, grace: Duration, task: Duration) -> Self {
        let s = (schedule + grace + task).as_secs_f64();
        Self {
            parts: vec![("last removal + grace + one task".into(), s)],
            seconds: s,
        }
    }
}

/// What one scenario measured.
#[derive(Debug, Clone)]
pub struct Figures {
    pub name: String,
    pub window: LimitWindow,
    pub nodes: usize,
    pub took: Option<Duration>,
    pub floor: Floor,
    /// Action → (calls, refused by the limiter).
    pub calls: BTreeMap<String, (u64, u64)>,
    pub releases: usize,
    pub confirmed: usize,
    pub lost: usize,
    pub double: usize,
    pub rss_mean_kib: u64,
    pub rss_max_kib: u64,
    pub cpu_mean: Duration,
    pub cpu_max: Duration,
    pub idle_cpu: Duration,
    pub warnings: u32,
}

/// Mean CPU per process between two reads of the same processes.
pub fn mean_cpu(before: &[ProcStat], after: &[ProcStat]) -> Duration {
    let total: Duration = before
        .iter()
        .zip(after)
        .map(|(b, a)| a.cpu.saturating_sub(b.cpu))
        .sum();
    total / u32::try_from(after.len().max(1)).unwrap_or(u32::MAX)
}

impl Figures {
    #[allow(clippy::too_many_arguments)]
    pub fn collect(
        fleet: &Fleet,
        name: String,
        took: Option<Duration>,
        floor: Floor,
        expected: &[(usize, Ipv4Addr)],
        since_ms: i64,
        (before, after): (&[ProcStat], &[ProcStat]),
        idle: Duration,
    ) -> Self {
        let mut calls: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut unassigned: BTreeMap<String, u32> = BTreeMap::new();
        for call in fleet.cloud.calls() {
            if call.at_ms < since_ms || call.action.is_empty() {
                continue;
            }
            // Metadata is per instance and not rate limited: one line for all its paths.
            let key = if call.surface == enisync_fakecloud::Surface::Metadata {
                "metadata (any path; not limited)".to_string()
            } else {
                call.action.clone()
            };
            let e = calls.entry(key).or_default();
            e.0 += 1;
            if enisync::cloud::classify::is_rate_limit(&call.answer) {
                e.1 += 1;
            }
            if call.action == "UnassignPrivateIpAddresses" && call.answer == "Success" {
                for ip in &call.ips {
                    *unassigned.entry(ip.clone()).or_default() += 1;
                }
            }
        }
        let ev = fleet.events.lock().unwrap_or_else(|e| e.into_inner());
        let confirmed = expected
            .iter()
            .filter(|k| ev.released.contains_key(*k))
            .count();
        // Lost: removed from the host, never confirmed, and still assigned in the cloud.
        let lost = expected
            .iter()
            .filter(|(i, ip)| {
                !ev.released.contains_key(&(*i, *ip)) && fleet.cloud.owner_of(*ip).is_some()
            })
            .count();
        let double = unassigned.values().filter(|n| **n > 1).count()
            + ev.released.values().filter(|(_, n)| *n > 1).count();
        let cpus: Vec<Duration> = before
            .iter()
            .zip(after)
            .map(|(b, a)| a.cpu.saturating_sub(b.cpu))
            .collect();
        let rss: Vec<u64> = after.iter().map(|s| s.rss_kib).collect();
        let count = u64::try_from(rss.len().max(1)).unwrap_or(1);
        Self {
            name,
            window: fleet.window,
            nodes: fleet.nodes.len(),
            took,
            floor,
            calls,
            releases: expected.len(),
            confirmed,
            lost,
            double,
            rss_mean_kib: rss.iter().sum::<u64>() / count,
            rss_max_kib: rss.iter().copied().max().unwrap_or(0),
            cpu_mean: mean_cpu(before, after),
            cpu_max: cpus.iter().copied().max().unwrap_or_default(),
            idle_cpu: idle,
            warnings: ev.warnings.values().sum(),
        }
    }

    /// The scenario's table (Markdown).
    #[allow(clippy::cast_precision_loss)]
    pub fn table(&self) -> String {
        let mut t = String::new();
        let window = match self.window {
            LimitWindow::FixedSecond => "fixed second",
            LimitWindow::TokenBucket => "token bucket",
        };
        let _ = writeln!(
            t,
            "\n### {} — N = {}, limiter window: {window}\n",
            self.name, self.nodes
        );
        let _ = writeln!(t, "| figure | value |\n| --- | --- |");
        let took = self.took.map_or_else(
            || "NOT all confirmed (timed out)".to_string(),
            |d| format!("{:.1} s", d.as_secs_f64()),
        );
        let ratio = self
            .took
            .map(|d| {
                format!(
                    " ({:.2}x the floor)",
                    d.as_secs_f64() / self.floor.seconds.max(0.001)
                )
            })
            .unwrap_or_default();
        let _ = writeln!(t, "| time until done | {took}{ratio} |");
        let parts: Vec<String> = self
            .floor
            .parts
            .iter()
            .map(|(what, s)| format!("{what}: {s:.1} s"))
            .collect();
        let _ = writeln!(
            t,
            "| floor | {:.1} s ({}) |",
            self.floor.seconds,
            parts.join("; ")
        );
        let total: u64 = self.calls.values().map(|c| c.0).sum();
        let refused: u64 = self.calls.values().map(|c| c.1).sum();
        for (action, (n, r)) in &self.calls {
            let _ = writeln!(
                t,
                "| calls {action} | {n} ({:.1}% refused by limits) |",
                100.0 * *r as f64 / (*n).max(1) as f64
            );
        }
        let _ = writeln!(
            t,
            "| calls, all actions | {total} ({:.1}% refused) |",
            100.0 * refused as f64 / total.max(1) as f64
        );
        if self.releases > 0 {
            let _ = writeln!(
                t,
                "| releases confirmed | {} of {} |\n| lost / double releases | {} / {} |",
                self.confirmed, self.releases, self.lost, self.double
            );
            let _ = writeln!(
                t,
                "| API calls per release | {:.2} |",
                total as f64 / self.releases as f64
            );
        }
        let _ = writeln!(
            t,
            "| RSS per node (mean / max) | {:.1} / {:.1} MiB |",
            self.rss_mean_kib as f64 / 1024.0,
            self.rss_max_kib as f64 / 1024.0
        );
        let _ = writeln!(
            t,
            "| CPU per node in the scenario (mean / max) | {} / {} ms |",
            self.cpu_mean.as_millis(),
            self.cpu_max.as_millis()
        );
        let _ = writeln!(
            t,
            "| idle CPU per node | {:.2} ms/s ({:.3}% of a core) |",
            self.idle_cpu.as_secs_f64() * 1000.0 / IDLE_SPAN.as_secs_f64(),
            self.idle_cpu.as_secs_f64() * 100.0 / IDLE_SPAN.as_secs_f64()
        );
        let _ = writeln!(t, "| daemon WARN/ERROR lines | {} |", self.warnings);
        t
    }
}

pub fn header(binary: &Path, nodes: usize, ips: usize, task_ms: u64) -> String {
    format!(
        "## Fleet: {nodes} enisync daemons ({}), {ips} aux IPs per node on one ENI, tasks of {task_ms} ms\n",
        binary.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(floor: &Floor, starts: &str) -> f64 {
        floor
            .parts
            .iter()
            .find(|(what, _)| what.starts_with(starts))
            .map(|(_, s)| *s)
            .expect("part")
    }

    /// The issue's worked example: 100 nodes, 30 IPs on one ENI each, 2 s tasks.
    #[test]
    fn the_burst_floor_is_the_issues_example() {
        let f = Floor::burst(100, 30, 2000);
        assert!((part(&f, "Unassign") - 3.0).abs() < 1e-9);
        assert!((part(&f, "per-ENI chain") - 6.0).abs() < 1e-9);
        assert!((part(&f, "confirm by polls") - 15.0).abs() < 1e-9);
        assert!((f.seconds - 15.0).abs() < 1e-9);
    }

    #[test]
    fn a_throttle_stretches_the_floor() {
        let f = Floor::throttled(100, 30, 2000, 2.0, 30.0, 0.05);
        // Polls: 40 in the first 2 s, 30 during the throttle, 230 more at 20/s.
        assert!((part(&f, "confirm by polls") - 43.5).abs() < 1e-9);
        // Unassign: 200 in 2 s, the last 100 at 5/s.
        assert!((part(&f, "Unassign") - 22.0).abs() < 1e-9);
        // Without a throttle it is the burst's floor.
        let same = Floor::throttled(100, 30, 2000, 2.0, 30.0, 1.0);
        assert!((same.seconds - Floor::burst(100, 30, 2000).seconds).abs() < 1e-9);
    }
}
