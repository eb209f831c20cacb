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

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::time::Instant;

use super::credentials::{CredentialError, CredentialProvider, Credentials};
use super::legacy::LegacyApi;
use super::retry::{RateLimits, Rates, TokenBucket};
use super::sign::LegacySignMethod;
use super::transport::{Endpoint, EndpointError};
use super::v3::{DESCRIBE_ENIS, TASK_RESULT, V3Api};
use super::{Cloud, CloudError, Eni, ErrorClass, Family, MAX_IPS_PER_CALL, TaskStatus};
use crate::backoff::Backoff;
use crate::task::{Protocol, TaskRef};

/// The most `DescribeNetworkInterfaces` pages one listing follows (of
/// [`super::v3::PAGE_SIZE`] ENIs each). One instance holds a few dozen ENIs at most, so
/// a listing needs one page; ten leave room without letting an endless `TotalCount`
/// page forever.
pub const MAX_DESCRIBE_PAGES: usize = 10;

/// Everything the client needs, as plain values; the config layer fills it in.
#[derive(Debug, Clone)]
pub struct CloudSettings {
    /// Which protocol carries the release and its task (listing is always API 3.0).
    pub protocol: Protocol,
    /// `X-TC-Region` / legacy `Region`, e.g. `ap-guangzhou`.
    pub region: String,
    /// This CVM instance (the `attachment.instance-id` filter).
    pub instance_id: String,
    /// Default `https://vpc.tencentcloudapi.com`.
    pub v3_endpoint: String,
    /// Default `https://vpc.api.qcloud.com/v2/index.php`.
    pub legacy_endpoint: String,
    /// Default `HmacSHA256`.
    pub legacy_sign_method: LegacySignMethod,
    /// Default 3 s.
    pub connect_timeout: Duration,
    /// Whole request, default 10 s.
    pub total_timeout: Duration,
    /// A PEM file of extra CA certificates to trust besides the system's (a TLS-inspecting
    /// proxy, a private endpoint).
    pub extra_ca_file: Option<PathBuf>,
    /// Client-side calls per second, per action.
    pub rates: Rates,
    /// Backoff between retries of a `RetryLater` answer.
    pub backoff: Backoff,
    /// Sends per call before a `RetryLater` answer is returned (at least 1).
    pub max_attempts: u32,
    /// First wait before polling a task; doubled up to `task_poll_cap`.
    pub task_poll_start: Duration,
    pub task_poll_cap: Duration,
    /// How long [`Cloud::wait_task`] follows a task before returning `Running`.
    pub task_cap: Duration,
    /// How long a `list_enis` answer is reused (invalidated by an unassign and when a
    /// task ends).
    pub describe_cache_ttl: Duration,
    /// Accept `http://` endpoints (tests and the demo only).
    pub allow_plain_http: bool,
}

impl CloudSettings {
    /// The defaults, for one region and instance.
    pub fn new(region: impl Into<String>, instance_id: impl Into<String>) -> Self {
        Self {
            protocol: Protocol::V3,
            region: region.into(),
            instance_id: instance_id.into(),
            v3_endpoint: super::DEFAULT_V3_ENDPOINT.to_owned(),
            legacy_endpoint: super::DEFAULT_LEGACY_ENDPOINT.to_owned(),
            legacy_sign_method: LegacySignMethod::HmacSha256,
            connect_timeout: Duration::from_secs(3),
            total_timeout: Duration::from_secs(10),
            extra_ca_file: None,
            rates: Rates::default(),
            backoff: Backoff {
                base: Duration::from_millis(200),
                cap: Duration::from_secs(10),
            },
            max_attempts: 4,
            task_poll_start: Duration::from_millis(500),
            task_poll_cap: Duration::from_secs(5),
            task_cap: Duration::from_secs(600),
            describe_cache_ttl: Duration::from_secs(2),
            allow_plain_http: false,
        }
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
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

/// The last `list_enis` answer. `generation` changes on every invalidation, so a listing
/// that started before an unassign cannot store its (older) answer after it.
#[derive(Debug, Default)]
struct DescribeCache {
    generation: u64,
    entry: Option<(Instant, Vec<Eni>)>,
}

impl TencentCloud {
    pub fn new(
        settings: CloudSettings,
        credentials: Arc<CredentialProvider>,
    ) -> Result<Self, SetupError> {
        let v3_endpoint = Endpoint::parse(&settings.v3_endpoint, settings.allow_plain_http)?;
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
            observer: None,
        })
    }

    /// Reports every request sent to `observer` (metrics).
    #[must_use]
    pub fn with_observer(mut self, observer: CallObserver) -> Self {
        self.observer = Some(observer);
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
        let mut retries = 0;
        let mut refreshed = false;
        loop {
            bucket.acquire().await;
            let result = match self.credentials.get().await {
                Ok(keys) => {
                    let started = Instant::now();
                    let result = op(keys, self.credentials.clock().now_unix()).await;
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

    fn cached_enis(&self) -> (u64, Option<Vec<Eni>>) {
        let cache = self
            .describe_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let fresh = cache
            .entry
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.describe_cache_ttl)
            .map(|(_, enis)| enis.clone());
        (cache.generation, fresh)
    }

    fn store_enis(&self, generation: u64, enis: &[Eni]) {
        let mut cache = self
            .describe_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if cache.generation == generation {
            cache.entry = Some((Instant::now(), enis.to_vec()));
        }
    }

    fn invalidate_enis(&self) {
        let mut cache = self
            .describe_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        cache.generation += 1;
        cache.entry = None;
    }
}

impl Cloud for TencentCloud {
    async fn list_enis(&self) -> Result<Vec<Eni>, CloudError> {
        let (generation, cached) = self.cached_enis();
        if let Some(enis) = cached {
            return Ok(enis);
        }
        let mut enis = Vec::new();
        for page_number in 1.. {
            if page_number > MAX_DESCRIBE_PAGES {
                // The listing is filtered to this instance, whose ENIs fit in one page; a
                // server that keeps promising more is broken or hostile.
                return Err(CloudError::local(
                    DESCRIBE_ENIS,
                    "Response.TooManyPages",
                    format!(
                        "TotalCount still above the {} ENIs read after {MAX_DESCRIBE_PAGES} pages",
                        enis.len()
                    ),
                ));
            }
            let offset = u64::try_from(enis.len()).unwrap_or(u64::MAX);
            let (page, total) = self
                .call(
                    DESCRIBE_ENIS,
                    &self.limits.describe,
                    |keys, now| async move {
                        self.v3
                            .describe_enis(&keys, now, &self.instance_id, offset)
                            .await
                    },
                )
                .await?;
            let empty = page.is_empty();
            enis.extend(page);
            // An empty page ends the listing even if TotalCount promised more.
            if empty || u64::try_from(enis.len()).unwrap_or(u64::MAX) >= total {
                break;
            }
        }
        self.store_enis(generation, &enis);
        Ok(enis)
    }

    async fn unassign(
        &self,
        eni_id: &str,
        vpc_id: &str,
        ips: &[IpAddr],
    ) -> Result<TaskRef, CloudError> {
        let family = ips.first().map_or(Family::Ipv4, |ip| Family::of(*ip));
        let action = family.unassign_action();
        if ips.is_empty() || ips.len() > MAX_IPS_PER_CALL {
            return Err(CloudError::local(
                action,
                "Client.BatchSize",
                format!(
                    "{} IPs in one call; between 1 and {MAX_IPS_PER_CALL} are allowed",
                    ips.len()
                ),
            ));
        }
        // The two families are different actions: a mixed batch is the engine's bug,
        // refused without a request.
        let v4: Vec<Ipv4Addr> = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        let v6: Vec<Ipv6Addr> = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(v6) => Some(*v6),
                IpAddr::V4(_) => None,
            })
            .collect();
        if !v4.is_empty() && !v6.is_empty() {
            return Err(CloudError::local(
                action,
                "Client.MixedFamilies",
                "IPv4 and IPv6 addresses in one call",
            ));
        }
        // Whatever happens next, the ENI's IPs may change.
        self.invalidate_enis();
        // IPv6 always goes over API 3.0, also with `api = "legacy"`: the legacy API has
        // no IPv6 call (docs/cloud-api.md, "IPv6").
        let protocol = match family {
            Family::Ipv4 => self.protocol,
            Family::Ipv6 => Protocol::V3,
        };
        let bucket = match family {
            Family::Ipv4 => &self.limits.unassign,
            Family::Ipv6 => &self.limits.unassign_ipv6,
        };
        let (v4, v6) = (&v4, &v6);
        // One send: a transient failure goes back to the engine, which checks the host
        // (and the cloud) again before the next one (see the module documentation).
        let result = self
            .call_with(action, bucket, 1, |keys, now| async move {
                match (family, protocol) {
                    (Family::Ipv6, _) => self.v3.unassign_ipv6(&keys, now, eni_id, v6).await,
                    (Family::Ipv4, Protocol::V3) => self.v3.unassign(&keys, now, eni_id, v4).await,
                    (Family::Ipv4, Protocol::Legacy) => {
                        self.legacy.unassign(&keys, now, vpc_id, eni_id, v4).await
                    }
                }
            })
            .await;
        match &result {
            Ok(task) => tracing::info!(
                eni_id,
                ?ips,
                ?protocol,
                action,
                task_id = %task.task_id,
                "unassign sent"
            ),
            Err(error) => {
                tracing::warn!(eni_id, ?ips, ?protocol, action, %error, "unassign failed");
            }
        }
        result
    }

    async fn wait_task(&self, task: &TaskRef) -> Result<TaskStatus, CloudError> {
        let deadline = Instant::now() + self.task_cap;
        let mut interval = self.task_poll_start;
        loop {
            // Wait first: a task just started is still running.
            tokio::time::sleep(interval.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            let polled = self
                .call(
                    TASK_RESULT,
                    &self.limits.task_result,
                    |keys, now| async move {
                        match task.protocol {
                            Protocol::V3 => self.v3.task_status(&keys, now, &task.task_id).await,
                            Protocol::Legacy => {
                                self.legacy.task_status(&keys, now, &task.task_id).await
                            }
                        }
                    },
                )
                .await;
            match polled {
                Ok(TaskStatus::Running) => {}
                Ok(done) => {
                    self.invalidate_enis();
                    tracing::info!(task_id = %task.task_id, status = ?done, "task finished");
                    return Ok(done);
                }
                // The task goes on whatever our transport does: keep following it.
                Err(error) if error.class == ErrorClass::RetryLater => {
                    tracing::warn!(task_id = %task.task_id, %error, "polling the task failed; will poll again");
                }
                Err(error) => return Err(error),
            }
            if Instant::now() >= deadline {
                tracing::warn!(task_id = %task.task_id, cap = ?self.task_cap, "task still running at the cap");
                return Ok(TaskStatus::Running);
            }
            interval = interval.saturating_mul(2).min(self.task_poll_cap);
        }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use std::collections::VecDeque;

    use super::super::clock::{ServerClock, SystemClock};
    use super::super::credentials::{CredentialSources, Secret};
    use super::super::test_http::{Recorded, TestServer};
    use super::*;

    fn provider() -> Arc<CredentialProvider> {
        let sources = CredentialSources {
            systemd_dir: None,
            config_keys: Some((Secret::new("AKIDtest"), Secret::new("the-key"))),
            env: Box::new(|_| None),
            metadata: None,
        };
        let clock = Arc::new(ServerClock::new(Arc::new(SystemClock)));
        Arc::new(CredentialProvider::new(sources, clock).unwrap())
    }

    fn settings(base: &str) -> CloudSettings {
        CloudSettings {
            v3_endpoint: format!("{base}/"),
            legacy_endpoint: format!("{base}/v2/index.php"),
            backoff: Backoff {
                base: Duration::from_millis(1),
                cap: Duration::from_millis(5),
            },
            rates: Rates {
                unassign: 1000.0,
                unassign_ipv6: 1000.0,
                describe: 1000.0,
                task_result: 1000.0,
            },
            task_poll_start: Duration::from_millis(1),
            task_poll_cap: Duration::from_millis(5),
            allow_plain_http: true,
            ..CloudSettings::new("ap-guangzhou", "ins-1")
        }
    }

    /// A server answering successive requests from a script (the last answer repeats).
    async fn scripted(answers: &[&str]) -> TestServer {
        let script = StdMutex::new(
            answers
                .iter()
                .map(|a| (*a).to_owned())
                .collect::<VecDeque<_>>(),
        );
        TestServer::start(move |_: &Recorded| {
            let mut script = script.lock().unwrap();
            let answer = if script.len() > 1 {
                script.pop_front().unwrap()
            } else {
                script[0].clone()
            };
            (200, answer)
        })
        .await
    }

    fn cloud(server: &TestServer, f: impl FnOnce(&mut CloudSettings)) -> TencentCloud {
        let mut settings = settings(&server.base);
        f(&mut settings);
        TencentCloud::new(settings, provider()).unwrap()
    }

    const THROTTLED: &str = r#"{"Response":{"Error":{"Code":"RequestLimitExceeded","Message":"slow"},"RequestId":"r"}}"#;
    const TOKEN_FAILURE: &str = r#"{"Response":{"Error":{"Code":"AuthFailure.TokenFailure","Message":"bad"},"RequestId":"r"}}"#;
    const UNASSIGNED: &str = r#"{"Response":{"RequestId":"task-1"}}"#;

    fn ip(last: u8) -> IpAddr {
        Ipv4Addr::new(10, 0, 0, last).into()
    }

    #[tokio::test]
    async fn retry_later_is_retried_up_to_max_attempts() {
        let listing = page(&[], 0);
        let server = scripted(&[THROTTLED, THROTTLED, &listing]).await;
        assert!(cloud(&server, |_| {}).list_enis().await.unwrap().is_empty());
        assert_eq!(server.requests().len(), 3);

        let server = scripted(&[THROTTLED]).await;
        let err = cloud(&server, |s| s.max_attempts = 3)
            .list_enis()
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::RetryLater);
        assert_eq!(server.requests().len(), 3);
    }

    /// The engine re-checks the host before every unassign, so the client never re-sends
    /// one on its own after a transient failure.
    #[tokio::test]
    async fn an_unassign_is_sent_once_whatever_the_transient_answer() {
        let server = scripted(&[THROTTLED, UNASSIGNED]).await;
        let err = cloud(&server, |_| {})
            .unassign("eni-1", "vpc-1", &[ip(2)])
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::RetryLater);
        assert_eq!(server.requests().len(), 1);
    }

    #[tokio::test]
    async fn refresh_credentials_retries_exactly_once() {
        let server = scripted(&[TOKEN_FAILURE, UNASSIGNED]).await;
        let c = cloud(&server, |_| {});
        assert!(c.unassign("eni-1", "vpc-1", &[ip(2)]).await.is_ok());
        assert_eq!(server.requests().len(), 2);

        let server = scripted(&[TOKEN_FAILURE]).await;
        let err = cloud(&server, |_| {})
            .unassign("eni-1", "vpc-1", &[ip(2)])
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::RefreshCredentials);
        assert_eq!(server.requests().len(), 2);
    }

    #[tokio::test]
    async fn batches_outside_1_to_10_are_refused_without_a_request() {
        let server = scripted(&[UNASSIGNED]).await;
        let c = cloud(&server, |_| {});
        let eleven: Vec<_> = (2..13).map(ip).collect();
        for ips in [&eleven[..], &[]] {
            let err = c.unassign("eni-1", "vpc-1", ips).await.unwrap_err();
            assert_eq!(err.class, ErrorClass::Refused);
        }
        assert!(server.requests().is_empty());
    }

    #[tokio::test]
    async fn plain_http_endpoints_need_the_explicit_setting() {
        let err = TencentCloud::new(
            CloudSettings {
                v3_endpoint: "http://127.0.0.1:1/".into(),
                ..CloudSettings::new("r", "i")
            },
            provider(),
        )
        .unwrap_err();
        assert!(
            matches!(err, SetupError::Endpoint(EndpointError::PlainHttp { .. })),
            "{err}"
        );
        let err = TencentCloud::new(
            CloudSettings {
                extra_ca_file: Some("/nonexistent/ca.pem".into()),
                ..CloudSettings::new("r", "i")
            },
            provider(),
        )
        .unwrap_err();
        assert!(matches!(err, SetupError::CaFile { .. }), "{err}");
    }

    fn page(ids: &[&str], total: usize) -> String {
        let set: Vec<String> = ids
            .iter()
            .map(|id| {
                format!(
                    r#"{{"NetworkInterfaceId":"{id}","MacAddress":"02:00:00:00:00:01","VpcId":"v","SubnetId":"s","PrivateIpAddressSet":[]}}"#
                )
            })
            .collect();
        format!(
            r#"{{"Response":{{"TotalCount":{total},"NetworkInterfaceSet":[{}],"RequestId":"r"}}}}"#,
            set.join(",")
        )
    }

    #[tokio::test]
    async fn list_enis_pages_to_total_count_and_caches_until_an_unassign() {
        let (first, second) = (page(&["eni-1"], 2), page(&["eni-2"], 2));
        let server = scripted(&[&first, &second, UNASSIGNED, &first, &second]).await;
        let c = cloud(&server, |_| {});
        let enis = c.list_enis().await.unwrap();
        assert_eq!(
            enis.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["eni-1", "eni-2"]
        );
        let offsets: Vec<u64> = server
            .requests()
            .iter()
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["Offset"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(offsets, [0, 1]);
        c.list_enis().await.unwrap();
        assert_eq!(server.requests().len(), 2, "served from the cache");
        c.unassign("eni-1", "vpc-1", &[ip(2)]).await.unwrap();
        c.list_enis().await.unwrap();
        assert_eq!(
            server.requests().len(),
            5,
            "the unassign invalidated the cache"
        );
    }

    #[tokio::test]
    async fn wait_task_follows_to_the_end_or_the_cap() {
        let running = r#"{"Response":{"Status":"RUNNING","RequestId":"r"}}"#;
        let success = r#"{"Response":{"Status":"SUCCESS","RequestId":"r"}}"#;
        let task = TaskRef {
            request_id: Some("t".into()),
            task_id: "t".into(),
            protocol: Protocol::V3,
        };
        let server = scripted(&[running, THROTTLED, running, success]).await;
        let status = cloud(&server, |s| s.max_attempts = 1)
            .wait_task(&task)
            .await
            .unwrap();
        assert_eq!(status, TaskStatus::Success);
        assert_eq!(
            server.requests().len(),
            4,
            "a throttled poll does not end the wait"
        );

        let server = scripted(&[running]).await;
        let status = cloud(&server, |s| s.task_cap = Duration::from_millis(30))
            .wait_task(&task)
            .await
            .unwrap();
        assert_eq!(status, TaskStatus::Running);
    }

    #[tokio::test]
    async fn legacy_protocol_releases_over_legacy_and_lists_over_v3() {
        let server = TestServer::start(|req: &Recorded| match req.path.as_str() {
            "/v2/index.php" => {
                let body = String::from_utf8_lossy(&req.body);
                let reply = if body.contains("Action=UnassignPrivateIpAddresses") {
                    r#"{"code":0,"codeDesc":"Success","data":{"taskId":7}}"#
                } else {
                    r#"{"code":0,"data":{"status":0}}"#
                };
                (200, reply.to_owned())
            }
            _ => (200, page(&[], 0)),
        })
        .await;
        let c = cloud(&server, |s| s.protocol = Protocol::Legacy);
        let task = c.unassign("eni-1", "vpc-1", &[ip(2)]).await.unwrap();
        assert_eq!(
            (task.task_id.as_str(), task.protocol),
            ("7", Protocol::Legacy)
        );
        assert_eq!(c.wait_task(&task).await.unwrap(), TaskStatus::Success);
        c.list_enis().await.unwrap();
        let paths: Vec<_> = server.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/v2/index.php", "/v2/index.php", "/"]);
    }

    /// IPv6 (docs/cloud-api.md, "IPv6"): `UnassignIpv6Addresses` over API 3.0 also with
    /// `api = "legacy"`, its task polled over API 3.0; a mixed batch is refused without
    /// a request; and the IPv6 bucket is its own (an IPv6 call waits for an IPv6 token
    /// only).
    #[tokio::test]
    async fn ipv6_goes_over_api_3_with_its_own_bucket_and_never_mixed() {
        let server = TestServer::start(|req: &Recorded| match req.path.as_str() {
            "/v2/index.php" => (
                200,
                r#"{"code":0,"codeDesc":"Success","data":{"taskId":7}}"#.to_owned(),
            ),
            _ => {
                let action = req.headers.get("x-tc-action").cloned().unwrap_or_default();
                let reply = if action == "DescribeVpcTaskResult" {
                    r#"{"Response":{"Status":"SUCCESS","RequestId":"p"}}"#
                } else {
                    r#"{"Response":{"RequestId":"task-v6"}}"#
                };
                (200, reply.to_owned())
            }
        })
        .await;
        let c = cloud(&server, |s| {
            s.protocol = Protocol::Legacy;
            s.rates.unassign_ipv6 = 2.0;
        });
        let v6: IpAddr = "2402:4e00:1::11".parse().unwrap();
        let task = c.unassign("eni-1", "vpc-1", &[v6]).await.unwrap();
        assert_eq!(
            (task.task_id.as_str(), task.protocol),
            ("task-v6", Protocol::V3)
        );
        assert_eq!(c.wait_task(&task).await.unwrap(), TaskStatus::Success);
        let requests = server.requests();
        assert_eq!(requests[0].path, "/");
        assert_eq!(requests[0].headers["x-tc-action"], "UnassignIpv6Addresses");
        let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"NetworkInterfaceId": "eni-1",
                "Ipv6Addresses": [{"Address": "2402:4e00:1::11"}]})
        );
        assert_eq!(requests[1].headers["x-tc-action"], "DescribeVpcTaskResult");

        let before = server.requests().len();
        let err = c
            .unassign("eni-1", "vpc-1", &[ip(2), v6])
            .await
            .unwrap_err();
        assert_eq!(err.code, "Client.MixedFamilies");
        assert_eq!(
            server.requests().len(),
            before,
            "no request for a mixed batch"
        );

        // The IPv6 bucket (2/s, burst 2) is spent by two calls; IPv4 calls still go at
        // once, since theirs is another bucket.
        c.unassign("eni-1", "vpc-1", &[v6]).await.unwrap();
        let started = Instant::now();
        for _ in 0..3 {
            c.unassign("eni-1", "vpc-1", &[ip(2)]).await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "IPv4 not slowed"
        );
        let started = Instant::now();
        c.unassign("eni-1", "vpc-1", &[v6]).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "the third IPv6 call waited for its own bucket: {:?}",
            started.elapsed()
        );
    }
}
