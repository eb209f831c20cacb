//! The drift task: reads the host (a netlink dump), `DescribeNetworkInterfaces` and the
//! metadata service every `drift.interval`, hands the read to `drift::Tracker`, sets the
//! gauges, and answers `enisync drift`. Read-only: it never releases, assigns or deletes.
//!
//! Budget: one listing per period (the first read, at start, takes the start-up listing
//! and makes none), plus at most one per [`DRIFT_FRESH_READ_MIN`] asked for
//! by `enisync drift`, however many callers ask (queries are answered one at a time, by
//! this one task; a query within that time gets the last read, saying so). A scrape of
//! `/metrics` never reads.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cloud::Cloud;
use crate::cloud::metadata::{MetadataClient, MetadataError};
use crate::config::DRIFT_FRESH_READ_MIN;
use crate::drift::{Freshness, HostSide, MetaEni, Query, Read, SourceRead, Tracker};
use crate::engine::Command;
use crate::host::netlink::Netlink;
use crate::net::Cidr;
use crate::ops::metrics::Metrics;

/// How long the engine has to say which addresses it is releasing.
const ENGINE_ANSWER: Duration = Duration::from_secs(5);

/// The reloadable keys a drift read uses.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct DriftFilters {
    pub exclude: Vec<Cidr>,
    pub claim_orphan_after: Duration,
}

impl DriftFilters {
    pub(super) fn of(config: &crate::config::Config) -> Self {
        Self {
            exclude: config.release.exclude.clone(),
            claim_orphan_after: config.claim.orphan_after,
        }
    }
}

pub(super) struct DriftTask<C: Cloud> {
    pub cloud: Arc<C>,
    /// `None` when the configuration names the instance (no metadata service used).
    pub metadata: Option<MetadataClient>,
    pub engine: mpsc::Sender<Command>,
    pub metrics: Arc<Metrics>,
    /// `release.exclude` and `claim.orphan_after`, as the latest reload left them.
    pub filters: watch::Receiver<DriftFilters>,
    /// `claim.cidrs` as of the start (a reload changes them only with a restart, as for
    /// the engine).
    pub claim_cidrs: Vec<Cidr>,
    pub interval: Duration,
    pub instance_id: String,
    /// The start-up listing: the first read uses it instead of a listing of its own
    /// (one call fewer, and no race with anything else that lists at start).
    pub startup_listing: Option<Vec<crate::cloud::Eni>>,
}

impl<C: Cloud> DriftTask<C> {
    pub(super) async fn run(
        mut self,
        mut queries: mpsc::Receiver<Query>,
        shutdown: CancellationToken,
    ) {
        let mut tracker = Tracker::default();
        let mut last_read: Option<Instant> = None;
        let mut next = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                Some(reply) = queries.recv() => {
                    let freshness = if last_read.is_none_or(|t| t.elapsed() >= DRIFT_FRESH_READ_MIN) {
                        self.read_into(&mut tracker).await;
                        last_read = Some(Instant::now());
                        next = Instant::now() + self.interval;
                        Freshness::Fresh
                    } else {
                        Freshness::RateLimited { min_secs: DRIFT_FRESH_READ_MIN.as_secs() }
                    };
                    let _ = reply.send(tracker.report(unix_now(), freshness));
                }
                () = tokio::time::sleep_until(next) => {
                    self.read_into(&mut tracker).await;
                    last_read = Some(Instant::now());
                    next = Instant::now() + self.interval;
                }
            }
        }
    }

    async fn read_into(&mut self, tracker: &mut Tracker) {
        let filters = self.filters.borrow().clone();
        let listing = match self.startup_listing.take() {
            Some(enis) => Ok(enis),
            None => self.cloud.list_enis().await,
        };
        let read = Read {
            at_unix: unix_now(),
            instance_id: self.instance_id.clone(),
            host: read_host().await,
            api: match listing {
                // An instance always has its primary ENI: an empty listing is a read
                // that went wrong, never "no IPs".
                Ok(enis) if enis.is_empty() => SourceRead::Failed(
                    "DescribeNetworkInterfaces listed no ENI of this instance".into(),
                ),
                Ok(enis) => SourceRead::Ok(enis),
                Err(e) => SourceRead::Failed(e.to_string()),
            },
            metadata: match &self.metadata {
                None => SourceRead::NotUsed(
                    "the configuration names the instance (cloud.instance_id): the metadata service is not used",
                ),
                Some(client) => match read_metadata(client).await {
                    Ok(enis) => SourceRead::Ok(enis),
                    Err(e) => SourceRead::Failed(e),
                },
            },
            exclude: filters.exclude,
            releasing: self.releasing().await,
            claim_cidrs: self.claim_cidrs.clone(),
            claim_orphan_after: filters.claim_orphan_after,
        };
        for (source, failed) in [
            ("host", matches!(read.host, SourceRead::Failed(_))),
            ("api", matches!(read.api, SourceRead::Failed(_))),
            ("metadata", matches!(read.metadata, SourceRead::Failed(_))),
        ] {
            if failed {
                warn!(
                    source,
                    "drift read failed; its findings keep their last values"
                );
            }
        }
        tracker.observe(&read);
        let gauges = tracker.gauges();
        self.metrics.drift(&gauges);
        info!(confirmed = ?gauges.confirmed.iter().map(|(c, n)| (c.key(), *n)).collect::<Vec<_>>(), "drift read");
    }

    /// The addresses with an intent in the engine: absent and bound by design.
    async fn releasing(&self) -> BTreeSet<IpAddr> {
        let (tx, rx) = oneshot::channel();
        if self.engine.send(Command::Snapshot(tx)).await.is_err() {
            return BTreeSet::new();
        }
        match tokio::time::timeout(ENGINE_ANSWER, rx).await {
            Ok(Ok(snapshot)) => snapshot.intents.iter().map(|i| i.ip).collect(),
            _ => BTreeSet::new(),
        }
    }
}

async fn read_host() -> SourceRead<HostSide> {
    let dump = async {
        let nl = Netlink::connect()?;
        Ok::<_, crate::host::HostError>(HostSide {
            links: nl.links().await?,
            addrs: nl.addrs().await?,
            rules: nl.rules().await?,
        })
    };
    match dump.await {
        Ok(host) => SourceRead::Ok(host),
        Err(e) => SourceRead::Failed(format!("netlink dump: {e}")),
    }
}

/// Every MAC with its primary and its IPs. The client reads a 404 as "absent"; here an
/// empty MAC listing, or a MAC without IPs, is a failed read (an attached ENI always has
/// its primary IP), never "no IPs".
async fn read_metadata(client: &MetadataClient) -> Result<Vec<MetaEni>, String> {
    let text = |e: MetadataError| e.to_string();
    let macs = client.macs().await.map_err(text)?;
    if macs.is_empty() {
        return Err("metadata network/interfaces/macs/: no MAC listed".into());
    }
    let mut out = Vec::new();
    for mac in macs {
        let ips: Vec<IpAddr> = client
            .local_ipv4s(&mac)
            .await
            .map_err(text)?
            .into_iter()
            .map(IpAddr::V4)
            .collect();
        if ips.is_empty() {
            return Err(format!("metadata {}: no local-ipv4s listed", mac.key));
        }
        out.push(MetaEni {
            mac: mac.mac,
            primary: client
                .primary_local_ipv4(&mac)
                .await
                .map_err(text)?
                .map(IpAddr::V4),
            ips,
        });
    }
    Ok(out)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
