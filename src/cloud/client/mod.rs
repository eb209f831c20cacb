//! [`TencentCloud`]: the [`Cloud`] the engine uses, over API 3.0 or the legacy API.
//!
//! Each call goes through the same policy: take a token from the action's bucket, get
//! current keys, send; a `RetryLater` answer is retried with jittered backoff up to
//! `max_attempts` sends; a `RefreshCredentials` answer refreshes the keys and is retried
//! exactly once; anything else is returned, classified.
//!
//! The unassign is the exception: a `RetryLater` answer is returned at once, never
//! re-sent here. The trigger rule wants the host checked again "at the moment the call
//! is sent", and only the engine can do that: a re-send from in here, after backoff and
//! timeouts (seconds), could release an IP that came back on the host meanwhile. Listing ENIs always uses API 3.0
//! (the legacy API has no usable listing); the legacy protocol covers the release and its
//! task only.
//!
//! The files, one concern each: this one builds the client and holds the call policy;
//! `settings.rs` what it is built from ([`CloudSettings`], with the defaults);
//! `listing.rs` the paged, cached `DescribeNetworkInterfaces`; `unassign.rs` the
//! release call; `tasks.rs` following a task to its end; `claims.rs` the claim calls
//! (holder lookup, Migrate, Assign; docs/cloud-api.md, "Claims").

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::time::Instant;

use super::credentials::{CredentialError, CredentialProvider, Credentials};
use super::legacy::LegacyApi;
use super::retry::{Priority, RateLimits, Rates, TokenBucket};
use super::sign::LegacySignMethod;
use super::transport::{Endpoint, EndpointError};
use super::v3::{DESCRIBE_ENIS, TASK_RESULT, V3Api};
use super::{Cloud, CloudError, Eni, ErrorClass, Family, MAX_IPS_PER_CALL, MaySend, TaskStatus};
use crate::backoff::Backoff;
use crate::task::{Protocol, TaskRef};

mod claims;
mod confirm;
mod listing;
mod settings;
mod tasks;
#[cfg(test)]
mod tests;
mod unassign;

pub use claims::{ClaimFailure, ClientToken, MAX_CLIENT_TOKEN_LEN};
pub use confirm::CONFIRM_WINDOW;
use confirm::SentReleases;
use listing::DescribeCache;
pub use listing::MAX_DESCRIBE_PAGES;
pub use settings::{
    CloudSettings, DEFAULT_CONNECT_TIMEOUT, DEFAULT_TASK_TIMEOUT, DEFAULT_TOTAL_TIMEOUT,
};

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// An API 3.0 endpoint pinned to another region than the instance's
    /// (docs/endpoint-failover.md: a task id means nothing in another region, and its
    /// `ResourceNotFound` would read as "already gone").
    #[error(
        "API endpoint {url:?} is for region {pinned}, but this instance is in {region}: every endpoint must be of the instance's region (or the region-less vpc.tencentcloudapi.com)"
    )]
    OtherRegion {
        url: String,
        pinned: String,
        region: String,
    },
    #[error("reading CA file {path}: {error}")]
    CaFile {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("CA file {path} holds no usable PEM certificate")]
    CaPem { path: PathBuf },
    /// Most often: no CA roots on the host (a minimal image without ca-certificates),
    /// which fails the build even for a plain-HTTP test endpoint.
    #[error(
        "building the HTTPS client (it needs the system's CA certificates, package ca-certificates): {0}"
    )]
    Http(#[source] reqwest::Error),
}

/// The Tencent Cloud client. `HTTPS_PROXY`/`NO_PROXY` from the environment are honoured
/// (reqwest reads them when no proxy is configured in code).
#[derive(Debug)]
pub struct TencentCloud {
    protocol: Protocol,
    instance_id: String,
    credentials: Arc<CredentialProvider>,
    v3: V3Api,
    legacy: LegacyApi,
    limits: RateLimits,
    backoff: Backoff,
    rng: StdMutex<fastrand::Rng>,
    max_attempts: u32,
    task_poll_start: Duration,
    task_poll_cap: Duration,
    task_cap: Duration,
    describe_cache_ttl: Duration,
    describe_cache: StdMutex<DescribeCache>,
    /// IPv4 API 3.0 releases sent and not yet followed, for confirming by listing.
    sent: StdMutex<SentReleases>,
    /// Claim tasks not yet followed: their polls go ahead of releases' (`claims.rs`).
    claim_tasks: StdMutex<std::collections::VecDeque<String>>,
    /// Told about every send (action, answer code or `Success`, duration): metrics.
    observer: Option<CallObserver>,
}

/// Receives `(action, answer code or "Success", duration)` for every request sent.
#[derive(Clone)]
pub struct CallObserver(pub Arc<ObserveFn>);

/// `(action, answer code or "Success", duration)`.
pub type ObserveFn = dyn Fn(&'static str, &str, Duration) + Send + Sync;

impl std::fmt::Debug for CallObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallObserver")
    }
}

impl TencentCloud {
    pub fn new(
        settings: CloudSettings,
        credentials: Arc<CredentialProvider>,
    ) -> Result<Self, SetupError> {
        let v3_endpoint = Endpoint::parse(&settings.v3_endpoint, settings.allow_plain_http)?;
        let v3_fallbacks = settings
            .v3_fallbacks
            .iter()
            .map(|url| Endpoint::parse(url, settings.allow_plain_http))
            .collect::<Result<Vec<_>, _>>()?;
        for url in std::iter::once(&settings.v3_endpoint).chain(&settings.v3_fallbacks) {
            if let Some(pinned) = super::failover::other_region(url, &settings.region) {
                return Err(SetupError::OtherRegion {
                    url: url.clone(),
                    pinned,
                    region: settings.region.clone(),
                });
            }
        }
        let legacy_endpoint =
            Endpoint::parse(&settings.legacy_endpoint, settings.allow_plain_http)?;
        let mut builder = super::http_client_builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.total_timeout)
            .user_agent(concat!("enisync/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &settings.extra_ca_file {
            let pem = std::fs::read(path).map_err(|error| SetupError::CaFile {
                path: path.clone(),
                error,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|certs| !certs.is_empty())
                .ok_or_else(|| SetupError::CaPem { path: path.clone() })?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(SetupError::Http)?;
        let clock = Arc::clone(credentials.clock());
        Ok(Self {
            protocol: settings.protocol,
            instance_id: settings.instance_id,
            credentials,
            v3: V3Api::new(http.clone(), v3_endpoint, settings.region.clone())
                .with_fallbacks(v3_fallbacks)
                .with_clock(Arc::clone(&clock)),
            legacy: LegacyApi::new(
                http,
                legacy_endpoint,
                settings.region,
                settings.legacy_sign_method,
            )
            .with_clock(clock),
            limits: RateLimits::new(settings.rates),
            backoff: settings.backoff,
            rng: StdMutex::new(fastrand::Rng::new()),
            max_attempts: settings.max_attempts.max(1),
            task_poll_start: settings.task_poll_start,
            task_poll_cap: settings.task_poll_cap,
            task_cap: settings.task_cap,
            describe_cache_ttl: settings.describe_cache_ttl,
            describe_cache: StdMutex::default(),
            sent: StdMutex::default(),
            claim_tasks: StdMutex::default(),
            observer: None,
        })
    }

    /// Reports every request sent to `observer` (metrics).
    #[must_use]
    pub fn with_observer(mut self, observer: CallObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Reports every endpoint failover (`from`, `to` hosts) to `observer` (metrics).
    #[must_use]
    pub fn with_failover_observer(mut self, observer: super::failover::FailoverObserver) -> Self {
        self.v3 = self.v3.with_failover_observer(observer);
        self
    }

    /// The credential provider (for metrics: metadata fetches; for the clock offset).
    pub fn credentials(&self) -> &Arc<CredentialProvider> {
        &self.credentials
    }

    /// One call under the client's policy (see the module documentation). `op` gets the
    /// keys and the timestamp to sign with and performs one send.
    async fn call<T, F, Fut>(
        &self,
        action: &'static str,
        bucket: &TokenBucket,
        op: F,
    ) -> Result<T, CloudError>
    where
        F: Fn(Arc<Credentials>, i64) -> Fut,
        Fut: Future<Output = Result<T, CloudError>>,
    {
        self.call_with(action, bucket, self.max_attempts, op).await
    }

    /// [`Self::call`] with `max_attempts` sends for a `RetryLater` answer.
    async fn call_with<T, F, Fut>(
        &self,
        action: &'static str,
        bucket: &TokenBucket,
        max_attempts: u32,
        op: F,
    ) -> Result<T, CloudError>
    where
        F: Fn(Arc<Credentials>, i64) -> Fut,
        Fut: Future<Output = Result<T, CloudError>>,
    {
        self.call_as(action, bucket, Priority::Normal, max_attempts, op)
            .await
    }

    /// [`Self::call_with`], waiting for tokens as `priority` (claims go first).
    async fn call_as<T, F, Fut>(
        &self,
        action: &'static str,
        bucket: &TokenBucket,
        priority: Priority,
        max_attempts: u32,
        op: F,
    ) -> Result<T, CloudError>
    where
        F: Fn(Arc<Credentials>, i64) -> Fut,
        Fut: Future<Output = Result<T, CloudError>>,
    {
        let mut retries = 0;
        let mut refreshed = false;
        loop {
            bucket.acquire_as(priority).await;
            let result = match self.credentials.get().await {
                Ok(keys) => {
                    let started = Instant::now();
                    let result = op(keys, self.credentials.clock().now_unix()).await;
                    if let Err(e) = &result
                        && super::classify::is_rate_limit(&e.code)
                    {
                        // The account's budget is spent: this node slows down too.
                        bucket.limited();
                    }
                    if let Some(observer) = &self.observer {
                        let code = result
                            .as_ref()
                            .map_or_else(|e| e.code.as_str(), |_| "Success");
                        (observer.0)(action, code, started.elapsed());
                    }
                    result
                }
                Err(error) => Err(credential_error(action, &error)),
            };
            let error = match result {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            match error.class {
                ErrorClass::RefreshCredentials if !refreshed => {
                    refreshed = true;
                    if error.code == "AuthFailure.TokenFailure" {
                        tracing::info!(action, code = %error.code, "session token rejected; refreshing keys");
                    } else {
                        self.correct_clock(action, &error);
                    }
                    if let Err(refresh) = self.credentials.force_refresh().await {
                        tracing::warn!(action, error = %refresh, "refreshing keys failed");
                    }
                }
                ErrorClass::RetryLater if retries + 1 < max_attempts => {
                    let delay = {
                        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                        self.backoff.delay(retries, &mut rng)
                    };
                    retries += 1;
                    tracing::debug!(action, code = %error.code, ?delay, retries, "retrying");
                    tokio::time::sleep(delay).await;
                }
                _ => return Err(error),
            }
        }
    }

    /// The cloud rejected our request timestamp: say so plainly, and sign with the
    /// server's time (from the answer's `Date` header) from now on.
    fn correct_clock(&self, action: &'static str, error: &CloudError) {
        let clock = self.credentials.clock();
        match clock.correct_from_server() {
            Some(c) => tracing::warn!(
                action,
                code = %error.code,
                old_offset_s = c.old_offset,
                new_offset_s = c.new_offset,
                "the cloud rejected our request timestamp: this host's clock is {} s {} the cloud's; \
                 signing with the cloud's time (from its Date header) from now on. Fix this host's clock (NTP)",
                c.new_offset.unsigned_abs(),
                if c.new_offset > 0 { "behind" } else { "ahead of" },
            ),
            None => tracing::warn!(
                action,
                code = %error.code,
                offset_s = clock.offset(),
                observed_offset_s = ?clock.observed_offset(),
                "the cloud rejected our request timestamp and its Date header gives no better time: \
                 check this host's clock (NTP)"
            ),
        }
    }
}

impl Cloud for TencentCloud {
    async fn list_enis(&self) -> Result<Vec<Eni>, CloudError> {
        self.list_all_enis().await
    }

    async fn unassign(
        &self,
        eni_id: &str,
        vpc_id: &str,
        ips: &[IpAddr],
        may_send: MaySend<'_>,
    ) -> Result<TaskRef, CloudError> {
        self.send_unassign(eni_id, vpc_id, ips, may_send).await
    }

    async fn wait_task(&self, task: &TaskRef) -> Result<TaskStatus, CloudError> {
        self.follow_task(task).await
    }

    async fn claim_holders(&self, vpc_id: &str, ip: Ipv4Addr) -> Result<Vec<Eni>, CloudError> {
        TencentCloud::claim_holders(self, vpc_id, ip).await
    }

    async fn claim_migrate(
        &self,
        src_eni: &str,
        dst_eni: &str,
        ip: Ipv4Addr,
        may_send: MaySend<'_>,
    ) -> Result<TaskRef, CloudError> {
        TencentCloud::claim_migrate(self, src_eni, dst_eni, ip, may_send).await
    }

    async fn claim_assign(
        &self,
        eni_id: &str,
        ip: Ipv4Addr,
        token: &ClientToken,
        may_send: MaySend<'_>,
    ) -> Result<TaskRef, CloudError> {
        TencentCloud::claim_assign(self, eni_id, ip, token, may_send).await
    }
}

/// Keys we could not get: transient when the metadata service is unreachable, refused
/// when nothing is configured or the role answer is unusable.
fn credential_error(action: &'static str, error: &CredentialError) -> CloudError {
    let code = if error.is_transient() {
        "Transport.Metadata"
    } else {
        "Credentials.Missing"
    };
    CloudError::local(action, code, error.to_string())
}
