//! Prometheus metrics, `/healthz` and `/readyz`, on one small HTTP listener.
//!
//! Bound to `127.0.0.1:9469` by default: metrics describe which IPs the host gives up,
//! which is nobody else's business, so a non-loopback address must be configured
//! explicitly. Names follow Prometheus conventions (`enisync_` prefix, `_total` on
//! counters, base units).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::Command;

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
pub struct ActionLabels {
    pub action: String,
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
    pub releases: Family<OutcomeLabels, Counter>,
    pub cloud_calls: Family<CallLabels, Counter>,
    pub cloud_call_duration: HistogramFamily,
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
            registry: Registry::default(),
        };
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

/// Liveness and readiness, shared by the daemon and the listener.
#[derive(Debug, Default)]
pub struct Health {
    /// The engine's command channel, once the engine runs.
    engine: OnceLock<mpsc::Sender<Command>>,
    /// First dump and inventory done, credentials usable.
    ready: AtomicBool,
    /// What start still waits for, for `/readyz` (the same text as systemd's STATUS=).
    waiting: std::sync::Mutex<String>,
    /// A start-up check that failed for good (remover identification): `/readyz`
    /// fails with it whatever else is ready.
    blocked: OnceLock<String>,
}

impl Health {
    /// From now on `/healthz` asks this engine whether it is alive.
    pub fn engine_started(&self, engine: mpsc::Sender<Command>) {
        let _ = self.engine.set(engine);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.blocked.get().is_none()
    }

    /// `/readyz` fails with `why` from now on.
    pub fn block(&self, why: String) {
        let _ = self.blocked.set(why);
    }

    /// What start waits for now, shown by `/readyz` until ready.
    pub fn set_waiting(&self, what: &str) {
        if let Ok(mut w) = self.waiting.lock() {
            what.clone_into(&mut w);
        }
    }

    fn waiting(&self) -> String {
        self.waiting.lock().map(|w| w.clone()).unwrap_or_default()
    }

    /// Alive when the engine answers a ping within `within`. An idle engine sleeps
    /// without timers, so "it turned lately" would call a healthy idle daemon dead;
    /// asking wakes it once per probe. Before the engine runs, the process is starting
    /// up and counts as alive; once the engine is gone, it is dead.
    pub async fn is_alive(&self, within: Duration) -> bool {
        let Some(engine) = self.engine.get() else {
            return true;
        };
        let (tx, rx) = oneshot::channel();
        let asked = async { engine.send(Command::Ping(tx)).await.is_ok() && rx.await.is_ok() };
        tokio::time::timeout(within, asked).await.unwrap_or(false)
    }
}

/// What `/metrics` refreshes from other sources just before encoding.
pub type Refresh = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    liveness_timeout: Duration,
    refresh: Refresh,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics and health endpoints listening");
    }
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (metrics, health, refresh) = (
            Arc::clone(&metrics),
            Arc::clone(&health),
            Arc::clone(&refresh),
        );
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (metrics, health, refresh) = (
                    Arc::clone(&metrics),
                    Arc::clone(&health),
                    Arc::clone(&refresh),
                );
                async move {
                    let path = req.uri().path();
                    let alive = path == "/healthz" && health.is_alive(liveness_timeout).await;
                    Ok::<_, Infallible>(answer(path, &metrics, &health, alive, &refresh))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            // A scrape is one short request; a slow client must not hold a task forever.
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
        });
    }
}

/// `alive` is the liveness probe's answer, asked only for `/healthz`.
fn answer(
    path: &str,
    metrics: &Metrics,
    health: &Health,
    alive: bool,
    refresh: &Refresh,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => {
            refresh(metrics);
            (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.encode(),
            )
        }
        "/healthz" if alive => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/healthz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "engine loop stalled: it did not answer a ping\n".into(),
        ),
        "/readyz" if health.is_ready() => (StatusCode::OK, "text/plain", "ready\n".into()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            match health.waiting() {
                _ if health.blocked.get().is_some() => format!(
                    "not ready: {}\n",
                    health.blocked.get().map_or("", String::as_str)
                ),
                w if w.is_empty() => {
                    "not ready: waiting for the first dump, the inventory or usable credentials\n"
                        .into()
                }
                w => format!("not ready: {w}\n"),
            },
        ),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// Binds the metrics address; refuses a non-loopback one unless `allow_remote`.
pub fn bind(addr: SocketAddr, allow_remote: bool) -> std::io::Result<std::net::TcpListener> {
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "metrics address {addr} is not loopback; set metrics.allow_remote = true to expose it"
            ),
        ));
    }
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
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
        m.netlink_events.inc();
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

    #[test]
    fn non_loopback_needs_the_explicit_setting() {
        let err = bind("0.0.0.0:0".parse().expect("addr"), false).expect_err("refused");
        assert!(err.to_string().contains("not loopback"));
        assert!(bind("127.0.0.1:0".parse().expect("addr"), false).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_is_an_answered_ping() {
        let h = Health::default();
        assert!(
            h.is_alive(Duration::from_secs(1)).await,
            "alive while starting"
        );
        assert!(!h.is_ready());
        h.set_ready(true);
        assert!(h.is_ready());

        let (tx, mut rx) = mpsc::channel(1);
        h.engine_started(tx);
        let engine = tokio::spawn(async move {
            // Answers one ping, then hangs like a stuck loop (holding the channel).
            if let Some(Command::Ping(reply)) = rx.recv().await {
                let _ = reply.send(());
            }
            std::future::pending::<()>().await;
            drop(rx);
        });
        assert!(h.is_alive(Duration::from_secs(1)).await, "answered");
        assert!(!h.is_alive(Duration::from_secs(1)).await, "stuck");
        engine.abort();
        let _ = engine.await;
        assert!(!h.is_alive(Duration::from_secs(1)).await, "engine gone");
    }
}
