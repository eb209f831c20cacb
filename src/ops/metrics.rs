//! Prometheus metrics, `/healthz` and `/readyz`, on one small HTTP listener: the metrics
//! and how the engine's reports ([`MetricsSink`]) become metrics here, the listener in
//! `metrics/listener.rs`.
//!
//! Bound to `127.0.0.1:9469` by default: metrics describe which IPs the host gives up,
//! which is nobody else's business, so a non-loopback address must be configured
//! explicitly. Names follow Prometheus conventions (`enisync_` prefix, `_total` on
//! counters, base units).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::{ClaimDecision, ClaimReason, Gauges, MetricsSink, ReleaseCount};

mod claims;
mod listener;

pub use listener::{Health, Limits, Refresh, bind, serve, serve_with};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `released`, `already_gone`, `cancelled`, `refused`, `dry_run`.
    pub outcome: String,
    /// For cancelled and refused: why (a short stable key); empty otherwise.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub action: String,
    /// `Success` or the answer's error code.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    /// The API endpoint's `host[:port]` a request could not be sent to: a
    /// `cloud.endpoints` entry, so the values are bounded by the config.
    pub from: String,
    /// The one that answered it.
    pub to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    /// `leak_candidate`, `unbound_on_host`, `stale_rule`, `metadata_mismatch`,
    /// `claim_orphan`.
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `host`, `api`, `metadata`.
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

type HistogramFamily = Family<ActionLabels, Histogram, fn() -> Histogram>;

/// Every metric enisync exports. Cheap to share (`Arc`); each metric is atomic.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Floating IP claims (`claims.rs`).
    pub claims: claims::ClaimMetrics,
    pub releases: Family<OutcomeLabels, Counter>,
    pub cloud_calls: Family<CallLabels, Counter>,
    pub cloud_call_duration: HistogramFamily,
    /// Of `cloud_calls`: answers refused by the cloud's rate limiter, by action.
    pub cloud_limit_refusals: Family<ActionLabels, Counter>,
    /// Requests answered by another endpoint than the one tried first
    /// (docs/endpoint-failover.md).
    pub cloud_endpoint_failovers: Family<FailoverLabels, Counter>,
    /// 1 while `/readyz` answers ready (set at each scrape).
    pub ready: Gauge,
    pub pending: Gauge,
    pub held: Gauge,
    /// Of `held`: removals whose remover is unknown (clause 2).
    pub held_unknown_remover: Gauge,
    pub parked: Gauge,
    pub paused: Gauge,
    pub journal_records: Gauge,
    pub netlink_events: Counter,
    pub netlink_overruns: Counter,
    pub resyncs: Counter,
    pub route_changes: Counter,
    pub credential_refreshes: Counter,
    pub alarms: Counter,
    pub host_limit_waits: Counter,
    /// The drift report's confirmed findings, per category, from the last read that
    /// computed them (never from a scrape).
    pub drift_findings: Family<CategoryLabels, Gauge>,
    /// 1 when the last drift read of a source succeeded, 0 when it failed.
    pub drift_read_ok: Family<SourceLabels, Gauge>,
    /// When a source was last read successfully (Unix seconds).
    pub drift_last_good_read: Family<SourceLabels, Gauge>,
}

fn call_histogram() -> Histogram {
    // 5 ms … ~10 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("enisync");
        let m = Self {
            releases: Family::default(),
            cloud_calls: Family::default(),
            cloud_call_duration: Family::new_with_constructor(call_histogram),
            cloud_limit_refusals: Family::default(),
            cloud_endpoint_failovers: Family::default(),
            ready: Gauge::default(),
            pending: Gauge::default(),
            held: Gauge::default(),
            held_unknown_remover: Gauge::default(),
            parked: Gauge::default(),
            paused: Gauge::default(),
            journal_records: Gauge::default(),
            netlink_events: Counter::default(),
            netlink_overruns: Counter::default(),
            resyncs: Counter::default(),
            route_changes: Counter::default(),
            credential_refreshes: Counter::default(),
            alarms: Counter::default(),
            host_limit_waits: Counter::default(),
            drift_findings: Family::default(),
            drift_read_ok: Family::default(),
            drift_last_good_read: Family::default(),
            registry: Registry::default(),
            claims: claims::ClaimMetrics::default(),
        };
        m.claims.register(&mut registry);
        registry.register(
            "releases",
            "Release decisions by outcome and reason",
            m.releases.clone(),
        );
        registry.register(
            "cloud_calls",
            "Cloud API requests by action and answer code",
            m.cloud_calls.clone(),
        );
        registry.register(
            "cloud_call_duration_seconds",
            "Cloud API request latency by action",
            m.cloud_call_duration.clone(),
        );
        registry.register(
            "cloud_limit_refusals",
            "Cloud API answers refused by the account's rate limits (RequestLimitExceeded*, \
             LimitExceeded.ActionLimited) by action; the account's budget is shared by every node",
            m.cloud_limit_refusals.clone(),
        );
        registry.register(
            "cloud_endpoint_failovers",
            "Cloud API requests that could not be sent to one endpoint (DNS, connect or TLS \
             failure) and were answered by the next in cloud.endpoints, by endpoint host",
            m.cloud_endpoint_failovers.clone(),
        );
        registry.register(
            "ready",
            "1 while the daemon is ready (what /readyz answers), 0 otherwise",
            m.ready.clone(),
        );
        registry.register(
            "pending_releases",
            "Releases waiting (grace, checks, calls)",
            m.pending.clone(),
        );
        registry.register(
            "held_releases",
            "Releases held as part of a burst, awaiting an operator",
            m.held.clone(),
        );
        registry.register(
            "held_unknown_remover_releases",
            "Releases held because nobody knows who removed the IP (resync, unidentified or \
             unidentifiable remover), awaiting an operator",
            m.held_unknown_remover.clone(),
        );
        registry.register(
            "parked_releases",
            "Releases refused by the cloud, retried on reload and hourly",
            m.parked.clone(),
        );
        registry.register(
            "paused",
            "1 while releases are paused by an operator",
            m.paused.clone(),
        );
        registry.register(
            "journal_records",
            "Records in the intent journal file",
            m.journal_records.clone(),
        );
        registry.register(
            "netlink_events",
            "Host events from netlink",
            m.netlink_events.clone(),
        );
        registry.register(
            "netlink_overruns",
            "Netlink receive-buffer overruns (each followed by a resync)",
            m.netlink_overruns.clone(),
        );
        registry.register(
            "netlink_resyncs",
            "Full re-dumps of links and addresses",
            m.resyncs.clone(),
        );
        registry.register(
            "route_changes",
            "Policy rules and routes added or deleted (repairs included)",
            m.route_changes.clone(),
        );
        registry.register(
            "credential_refreshes",
            "CAM role credential fetches from the metadata service",
            m.credential_refreshes.clone(),
        );
        registry.register(
            "alarms",
            "Released or releasing IPs that came back on the host",
            m.alarms.clone(),
        );
        registry.register(
            "host_limit_waits",
            "Releases delayed by the per-host release limit",
            m.host_limit_waits.clone(),
        );
        registry.register(
            "drift_findings",
            "Confirmed drift findings (two consecutive reads) by category, as of the last read \
             that had every source they need; read-only, never acted on",
            m.drift_findings.clone(),
        );
        registry.register(
            "drift_read_ok",
            "1 if the last drift read of the source (host, api, metadata) succeeded, 0 if it \
             failed: then the findings that need it keep their last values",
            m.drift_read_ok.clone(),
        );
        registry.register(
            "drift_last_good_read_timestamp_seconds",
            "When the source was last read successfully for the drift report (Unix seconds)",
            m.drift_last_good_read.clone(),
        );
        // Zero from the start for the API 3.0 actions the client sends, so that a fleet's
        // rate() and alert rules see the series before the first refusal.
        {
            use crate::cloud::v3::{DESCRIBE_ENIS, TASK_RESULT, UNASSIGN, UNASSIGN_IPV6};
            for action in [UNASSIGN, UNASSIGN_IPV6, DESCRIBE_ENIS, TASK_RESULT] {
                let _ = m.cloud_limit_refusals.get_or_create(&ActionLabels {
                    action: action.into(),
                });
            }
        }
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register("build_info", "Build information", build);
        Self { registry, ..m }
    }

    pub fn release(&self, outcome: &str, reason: &str) {
        self.releases
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// The cloud client's observer.
    pub fn cloud_call(&self, action: &str, code: &str, took: Duration) {
        self.cloud_calls
            .get_or_create(&CallLabels {
                action: action.into(),
                code: code.into(),
            })
            .inc();
        self.cloud_call_duration
            .get_or_create(&ActionLabels {
                action: action.into(),
            })
            .observe(took.as_secs_f64());
        if crate::cloud::classify::is_rate_limit(code) {
            self.cloud_limit_refusals
                .get_or_create(&ActionLabels {
                    action: action.into(),
                })
                .inc();
        }
    }

    /// A request failed before sending on `from` and was answered by `to`.
    pub fn endpoint_failover(&self, from: &str, to: &str) {
        self.cloud_endpoint_failovers
            .get_or_create(&FailoverLabels {
                from: from.into(),
                to: to.into(),
            })
            .inc();
    }

    /// The drift gauges after a read (`daemon/drift.rs`): set per read, so a scrape
    /// costs no read.
    pub fn drift(&self, values: &crate::drift::GaugeValues) {
        for (category, n) in &values.confirmed {
            self.drift_findings
                .get_or_create(&CategoryLabels {
                    category: category.key().into(),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        for (source, ok, last_good) in &values.sources {
            let labels = SourceLabels {
                source: source.key().into(),
            };
            self.drift_read_ok
                .get_or_create(&labels)
                .set(i64::from(*ok));
            if let Some(at) = last_good {
                self.drift_last_good_read
                    .get_or_create(&labels)
                    .set(i64::try_from(*at).unwrap_or(i64::MAX));
            }
        }
    }

    /// Raises a counter fed from a monotonic source to `value`.
    pub fn catch_up(counter: &Counter, value: u64) {
        let now = counter.get();
        if value > now {
            counter.inc_by(value - now);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The engine's reports, rendered as the release counters and gauges.
impl MetricsSink for Metrics {
    fn release_counted(&self, count: ReleaseCount<'_>) {
        self.release(count.outcome(), count.reason());
    }

    fn alarm_raised(&self) {
        self.alarms.inc();
    }

    fn host_limit_waited(&self) {
        self.host_limit_waits.inc();
    }

    fn claim_counted(&self, decision: ClaimDecision, reason: ClaimReason) {
        self.claims.decision(decision.as_str(), reason.as_str());
    }

    fn claim_gauges(&self, claimed: usize, contested: usize, orphans: usize) {
        self.claims.set(claimed, contested, orphans);
    }

    fn gauges(&self, gauges: &Gauges) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.pending.set(count(gauges.pending));
        self.held.set(count(gauges.held));
        self.held_unknown_remover
            .set(count(gauges.held_unknown_remover));
        self.parked.set(count(gauges.parked));
        self.paused.set(i64::from(gauges.paused));
        if let Some(records) = gauges.journal_records {
            self.journal_records.set(count(records));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exported_with_conventional_names() {
        let m = Metrics::new();
        m.release("released", "");
        m.cloud_call(
            "UnassignPrivateIpAddresses",
            "Success",
            Duration::from_millis(12),
        );
        m.cloud_call(
            "DescribeVpcTaskResult",
            "RequestLimitExceeded",
            Duration::from_millis(3),
        );
        m.cloud_call(
            "DescribeVpcTaskResult",
            "UnsupportedOperation.MutexOperationTaskRunning",
            Duration::from_millis(3),
        );
        m.netlink_events.inc();
        m.endpoint_failover("vpc.example", "vpc.tencentcloudapi.com");
        let text = m.encode();
        for name in [
            "enisync_releases_total{outcome=\"released\",reason=\"\"} 1",
            "enisync_cloud_calls_total{action=\"UnassignPrivateIpAddresses\",code=\"Success\"} 1",
            "enisync_cloud_call_duration_seconds_bucket",
            "enisync_pending_releases 0",
            "enisync_held_releases 0",
            "enisync_parked_releases 0",
            "enisync_journal_records 0",
            "enisync_netlink_events_total 1",
            "enisync_netlink_overruns_total 0",
            "enisync_netlink_resyncs_total 0",
            "enisync_route_changes_total 0",
            "enisync_credential_refreshes_total 0",
            "enisync_alarms_total 0",
            "enisync_cloud_limit_refusals_total{action=\"DescribeVpcTaskResult\"} 1",
            "enisync_ready 0",
            "enisync_cloud_endpoint_failovers_total{from=\"vpc.example\",to=\"vpc.tencentcloudapi.com\"} 1",
            "enisync_build_info{version=",
            "# EOF",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn catch_up_only_moves_forward() {
        let c = Counter::<u64>::default();
        Metrics::catch_up(&c, 5);
        Metrics::catch_up(&c, 3);
        assert_eq!(c.get(), 5);
    }
}
