//! Client of the instance metadata service (`docs/cloud-api.md`, "The instance metadata service").
//!
//! Plain HTTP on a link-local service: no TLS, never through a proxy (a proxy would see
//! the CAM role's temporary keys). A 404 means "absent" and comes back as `None`; anything
//! else that fails is an error, after a small bounded retry, because the service is local
//! and a longer wait would only stall start-up.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::transport::{BodyError, read_body, transport_kind};
use crate::backoff::Backoff;
use crate::net::MacAddr;

/// The largest metadata answer read. Every value enisync reads is a line or a short
/// listing; the largest, a CAM role's credentials document, is about 2 KiB.
pub const MAX_METADATA_BODY: usize = 64 << 10;

/// Where the metadata service is and how patient to be with it.
/// `metadata.timeout`'s default: one whole request (the config's default is this one).
pub const DEFAULT_METADATA_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct MetadataSettings {
    /// Base URL ending in `meta-data/`.
    pub base_url: String,
    pub connect_timeout: Duration,
    /// Whole-request timeout, per attempt.
    pub total_timeout: Duration,
    /// Attempts per request (at least one).
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub backoff: Duration,
}

impl Default for MetadataSettings {
    fn default() -> Self {
        Self {
            base_url: super::DEFAULT_METADATA_ENDPOINT.to_owned(),
            connect_timeout: Duration::from_secs(1),
            total_timeout: DEFAULT_METADATA_TIMEOUT,
            attempts: 3,
            backoff: Duration::from_millis(100),
        }
    }
}

/// A failed metadata request.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata client setup: {0}")]
    Setup(#[source] reqwest::Error),
    #[error("metadata {path}: {kind}")]
    Transport { path: String, kind: &'static str },
    #[error("metadata {path}: HTTP {status}")]
    Status { path: String, status: u16 },
    #[error("metadata {path}: unexpected value {value:?}")]
    Malformed { path: String, value: String },
    #[error("metadata {path}: the answer is larger than {MAX_METADATA_BODY} bytes; not read")]
    TooLarge { path: String },
}

/// An ENI as the metadata service lists it: the parsed MAC for comparisons, and the
/// service's own spelling for building URLs (the path is case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataMac {
    pub mac: MacAddr,
    pub key: String,
}

/// The metadata service client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MetadataClient {
    base: String,
    http: reqwest::Client,
    attempts: u32,
    backoff: Duration,
}

impl MetadataClient {
    pub fn new(settings: &MetadataSettings) -> Result<Self, MetadataError> {
        let http = super::http_client_builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.total_timeout)
            .no_proxy()
            // The metadata service is plain HTTP on a link-local address: no CA roots to
            // read from /etc/ssl at startup, and an https redirect fails instead of
            // trusting anything.
            .tls_certs_only(std::iter::empty())
            .user_agent(concat!("enisync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(MetadataError::Setup)?;
        let mut base = settings.base_url.clone();
        if !base.ends_with('/') {
            base.push('/');
        }
        Ok(Self {
            base,
            http,
            attempts: settings.attempts.max(1),
            backoff: settings.backoff,
        })
    }

    /// `instance-id`.
    pub async fn instance_id(&self) -> Result<Option<String>, MetadataError> {
        self.get("instance-id").await
    }

    /// `placement/region`, e.g. `ap-guangzhou`.
    pub async fn region(&self) -> Result<Option<String>, MetadataError> {
        self.get("placement/region").await
    }

    /// The attached ENIs' MACs (`network/interfaces/macs/`); empty when absent.
    pub async fn macs(&self) -> Result<Vec<MetadataMac>, MetadataError> {
        parse_macs(self.get(MACS_PATH).await?)
    }

    /// `primary-local-ipv4` of one ENI.
    pub async fn primary_local_ipv4(
        &self,
        mac: &MetadataMac,
    ) -> Result<Option<Ipv4Addr>, MetadataError> {
        self.get_ip(&mac_path(mac, "primary-local-ipv4")).await
    }

    /// `vpc-id` of one ENI.
    pub async fn vpc_id(&self, mac: &MetadataMac) -> Result<Option<String>, MetadataError> {
        self.get(&mac_path(mac, "vpc-id")).await
    }

    /// `subnet-id` of one ENI.
    pub async fn subnet_id(&self, mac: &MetadataMac) -> Result<Option<String>, MetadataError> {
        self.get(&mac_path(mac, "subnet-id")).await
    }

    /// Every private IP of one ENI (`local-ipv4s/`, primary and secondary); empty when
    /// absent.
    pub async fn local_ipv4s(&self, mac: &MetadataMac) -> Result<Vec<Ipv4Addr>, MetadataError> {
        let path = mac_path(mac, "local-ipv4s/");
        parse_ip_listing(&path, self.get(&path).await?)
    }

    /// The subnet gateway of one IP of an ENI.
    pub async fn gateway(
        &self,
        mac: &MetadataMac,
        ip: Ipv4Addr,
    ) -> Result<Option<Ipv4Addr>, MetadataError> {
        self.get_ip(&mac_path(mac, &format!("local-ipv4s/{ip}/gateway")))
            .await
    }

    /// The dotted subnet mask of one IP of an ENI.
    pub async fn subnet_mask(
        &self,
        mac: &MetadataMac,
        ip: Ipv4Addr,
    ) -> Result<Option<Ipv4Addr>, MetadataError> {
        self.get_ip(&mac_path(mac, &format!("local-ipv4s/{ip}/subnet-mask")))
            .await
    }

    /// The bound CAM role's name, `None` when no role is bound.
    pub async fn cam_role(&self) -> Result<Option<String>, MetadataError> {
        // The SDKs take the body verbatim; a listing-shaped body keeps its first line.
        Ok(self
            .get("cam/security-credentials/")
            .await?
            .and_then(|body| listing(Some(body)).into_iter().next()))
    }

    /// The raw credentials document of `role` (parsed by the credential provider, which
    /// knows what a valid one is).
    pub async fn cam_credentials(&self, role: &str) -> Result<Option<String>, MetadataError> {
        self.get(&format!("cam/security-credentials/{role}")).await
    }

    async fn get_ip(&self, path: &str) -> Result<Option<Ipv4Addr>, MetadataError> {
        self.get(path)
            .await?
            .map(|value| parse_ip(path, &value))
            .transpose()
    }

    /// One value, trimmed; `None` on 404. Transport errors and 5xx are retried.
    async fn get(&self, path: &str) -> Result<Option<String>, MetadataError> {
        let url = format!("{}{path}", self.base);
        let backoff = Backoff {
            base: self.backoff,
            cap: Duration::MAX,
        };
        let mut attempt = 1;
        loop {
            let result = self.get_once(&url, path).await;
            let retryable = match &result {
                Err(MetadataError::Transport { .. }) => true,
                Err(MetadataError::Status { status, .. }) => *status >= 500,
                _ => false,
            };
            if !retryable || attempt >= self.attempts {
                return result;
            }
            tracing::debug!(path, attempt, "metadata request failed, retrying");
            tokio::time::sleep(backoff.ceiling(attempt - 1)).await;
            attempt += 1;
        }
    }

    async fn get_once(&self, url: &str, path: &str) -> Result<Option<String>, MetadataError> {
        let transport = |e: reqwest::Error| MetadataError::Transport {
            path: path.to_owned(),
            kind: transport_kind(&e),
        };
        let response = self.http.get(url).send().await.map_err(transport)?;
        match response.status().as_u16() {
            200 => {
                let body = read_body(response, MAX_METADATA_BODY)
                    .await
                    .map_err(|e| match e {
                        BodyError::TooLarge => MetadataError::TooLarge {
                            path: path.to_owned(),
                        },
                        BodyError::Transport(e) => transport(e),
                    })?;
                // As `Response::text` did: invalid UTF-8 is replaced, then the value
                // parsers refuse what they do not recognise.
                Ok(Some(String::from_utf8_lossy(&body).trim().to_owned()))
            }
            404 => Ok(None),
            status => Err(MetadataError::Status {
                path: path.to_owned(),
                status,
            }),
        }
    }
}

const MACS_PATH: &str = "network/interfaces/macs/";

/// The MAC listing (`network/interfaces/macs/`): one MAC per line; anything else in it
/// is malformed.
pub(crate) fn parse_macs(body: Option<String>) -> Result<Vec<MetadataMac>, MetadataError> {
    listing(body)
        .into_iter()
        .map(|key| match MacAddr::parse(&key) {
            Some(mac) => Ok(MetadataMac { mac, key }),
            None => Err(MetadataError::Malformed {
                path: MACS_PATH.to_owned(),
                value: shown(&key),
            }),
        })
        .collect()
}

/// A listing of IPs (`local-ipv4s/`).
pub(crate) fn parse_ip_listing(
    path: &str,
    body: Option<String>,
) -> Result<Vec<Ipv4Addr>, MetadataError> {
    listing(body)
        .iter()
        .map(|entry| parse_ip(path, entry))
        .collect()
}

fn mac_path(mac: &MetadataMac, leaf: &str) -> String {
    format!("network/interfaces/macs/{}/{leaf}", mac.key)
}

/// The entries of a listing: one per line, a trailing `/` marks a directory.
pub(crate) fn listing(body: Option<String>) -> Vec<String> {
    body.as_deref()
        .unwrap_or("")
        .lines()
        .map(|line| line.trim().trim_end_matches('/').to_owned())
        .filter(|line| !line.is_empty())
        .collect()
}

pub(crate) fn parse_ip(path: &str, value: &str) -> Result<Ipv4Addr, MetadataError> {
    value.trim().parse().map_err(|_| MetadataError::Malformed {
        path: path.to_owned(),
        value: shown(value),
    })
}

/// At most 64 characters of a value that did not parse, for an error message: enough
/// to recognise it, never a whole answer in a log line.
fn shown(value: &str) -> String {
    const SHOWN: usize = 64;
    match value.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use std::collections::HashMap;

    use super::super::test_http::TestServer;
    use super::*;

    /// Serves `/meta/<path>` from a path → (status, body) table; anything else is a 404.
    async fn serve(routes: HashMap<&'static str, (u16, &'static str)>) -> (String, TestServer) {
        let server = TestServer::start(move |req| {
            let path = req.path.trim_start_matches("/meta/");
            let (status, body) = routes.get(path).copied().unwrap_or((404, ""));
            (status, body.to_owned())
        })
        .await;
        (format!("{}/meta/", server.base), server)
    }

    fn client(base_url: String) -> MetadataClient {
        MetadataClient::new(&MetadataSettings {
            base_url,
            backoff: Duration::from_millis(1),
            ..MetadataSettings::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn reads_values_and_keeps_the_services_mac_spelling() {
        let mac = "52:54:00:BF:B3:51";
        let routes = HashMap::from([
            ("instance-id", (200, "ins-3g445roi\n")),
            ("placement/region", (200, "ap-guangzhou")),
            ("network/interfaces/macs/", (200, "52:54:00:BF:B3:51/\n")),
            (
                "network/interfaces/macs/52:54:00:BF:B3:51/primary-local-ipv4",
                (200, "10.0.0.5"),
            ),
            (
                "network/interfaces/macs/52:54:00:BF:B3:51/vpc-id",
                (200, "vpc-1"),
            ),
            (
                "network/interfaces/macs/52:54:00:BF:B3:51/local-ipv4s/",
                (200, "10.0.0.5/\n10.0.0.6/\n"),
            ),
            (
                "network/interfaces/macs/52:54:00:BF:B3:51/local-ipv4s/10.0.0.6/gateway",
                (200, "10.0.0.1"),
            ),
            (
                "network/interfaces/macs/52:54:00:BF:B3:51/local-ipv4s/10.0.0.6/subnet-mask",
                (200, "255.255.255.0"),
            ),
        ]);
        let (base, _) = serve(routes).await;
        let md = client(base);
        assert_eq!(
            md.instance_id().await.unwrap().as_deref(),
            Some("ins-3g445roi")
        );
        assert_eq!(md.region().await.unwrap().as_deref(), Some("ap-guangzhou"));
        let macs = md.macs().await.unwrap();
        assert_eq!(macs.len(), 1);
        assert_eq!(macs[0].key, mac);
        assert_eq!(macs[0].mac, MacAddr::parse("52:54:00:bf:b3:51").unwrap());
        let m = &macs[0];
        assert_eq!(
            md.primary_local_ipv4(m).await.unwrap(),
            Some(Ipv4Addr::new(10, 0, 0, 5))
        );
        assert_eq!(md.vpc_id(m).await.unwrap().as_deref(), Some("vpc-1"));
        assert_eq!(md.subnet_id(m).await.unwrap(), None, "404 is absent");
        let ips = md.local_ipv4s(m).await.unwrap();
        assert_eq!(
            ips,
            [Ipv4Addr::new(10, 0, 0, 5), Ipv4Addr::new(10, 0, 0, 6)]
        );
        assert_eq!(
            md.gateway(m, ips[1]).await.unwrap(),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(
            md.subnet_mask(m, ips[1]).await.unwrap(),
            Some(Ipv4Addr::new(255, 255, 255, 0))
        );
        assert_eq!(md.cam_role().await.unwrap(), None);
    }

    #[tokio::test]
    async fn server_errors_are_retried_a_bounded_number_of_times() {
        let (base, server) = serve(HashMap::from([("instance-id", (503, "busy"))])).await;
        let err = client(base).instance_id().await.unwrap_err();
        assert!(
            matches!(err, MetadataError::Status { status: 503, .. }),
            "{err}"
        );
        assert_eq!(server.count("/meta/instance-id"), 3);
    }

    #[tokio::test]
    async fn a_404_is_not_retried_and_garbage_is_an_error() {
        let (base, server) = serve(HashMap::from([("placement/region", (200, "x"))])).await;
        let md = client(base);
        assert_eq!(md.instance_id().await.unwrap(), None);
        assert_eq!(server.count("/meta/instance-id"), 1);
        let (base, _) = serve(HashMap::from([(
            "network/interfaces/macs/",
            (200, "zz/\n"),
        )]))
        .await;
        let err = client(base).macs().await.unwrap_err();
        assert!(matches!(err, MetadataError::Malformed { .. }), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_service_is_a_transport_error() {
        // Bind then drop: nothing listens on that port any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = client(format!("http://127.0.0.1:{port}/"))
            .instance_id()
            .await
            .unwrap_err();
        assert!(matches!(err, MetadataError::Transport { .. }), "{err}");
    }
}
