//! Endpoint failover (docs/endpoint-failover.md): an ordered list of API 3.0 endpoints
//! of one region, tried in order only when a request failed before any byte of it was
//! sent, and the region check that keeps every entry in the configured region.
//!
//! What counts as "before any byte was sent" is decided in `transport` (a DNS failure,
//! a refused or timed-out connect, a TLS handshake failure: reqwest's connect errors);
//! everything after that stays the caller's `RetryLater`, because the call may have been
//! executed and an unassign re-sent elsewhere would skip the send-time check
//! (docs/design.md, clause 7).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::transport::Endpoint;

/// The most entries `cloud.endpoints` may hold: the failover metric's labels come from
/// this list, so it stays small.
pub const MAX_ENDPOINTS: usize = 8;

/// Receives `(from, to)` hosts when a request that failed before sending on `from` was
/// answered by `to` (the `enisync_cloud_endpoint_failovers_total` metric).
#[derive(Clone)]
pub struct FailoverObserver(pub Arc<FailoverFn>);

/// `(from, to)`: the endpoint a request could not be sent to, and the one that answered.
pub type FailoverFn = dyn Fn(&str, &str) + Send + Sync;

impl std::fmt::Debug for FailoverObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailoverObserver")
    }
}

/// The ordered endpoints and the one that answered last (tried first next time, so a
/// burst does not flap between domains).
#[derive(Debug)]
pub(crate) struct EndpointList {
    list: Vec<Endpoint>,
    preferred: AtomicUsize,
}

impl EndpointList {
    /// `first` and then `rest`, in that order.
    pub fn new(first: Endpoint, rest: Vec<Endpoint>) -> Self {
        let mut list = vec![first];
        list.extend(rest);
        Self {
            list,
            preferred: AtomicUsize::new(0),
        }
    }

    /// The indices in the order one request tries them: the last answering endpoint,
    /// then the following ones of the list, wrapping around.
    pub fn order(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.list.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        (0..n).map(move |k| (start + k) % n)
    }

    pub fn get(&self, index: usize) -> &Endpoint {
        &self.list[index % self.list.len()]
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// `index` answered (any HTTP answer, errors included): tried first from now on.
    pub fn answered(&self, index: usize) {
        self.preferred.store(index, Ordering::Relaxed);
    }
}

/// Which region an API 3.0 endpoint's host names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointRegion<'a> {
    /// `vpc.tencentcloudapi.com` (and `vpc.internal.tencentcloudapi.com`): routed to the
    /// region the request's `X-TC-Region` names.
    Any,
    /// `vpc.<region>.tencentcloudapi.com`.
    Pinned(&'a str),
    /// Not a Tencent Cloud API domain (a private endpoint, a proxy, a test's fake): its
    /// region cannot be read from the name.
    Unknown,
}

/// The region `host` (a URL's host, without the port) is pinned to, read from Tencent's
/// naming of its API domains.
pub fn endpoint_region(host: &str) -> EndpointRegion<'_> {
    let host = host.trim_end_matches('.');
    let Some(service_and_region) = host
        .len()
        .checked_sub(".tencentcloudapi.com".len())
        .filter(|&cut| host.is_char_boundary(cut))
        .filter(|&cut| host[cut..].eq_ignore_ascii_case(".tencentcloudapi.com"))
        .map(|cut| &host[..cut])
    else {
        return EndpointRegion::Unknown;
    };
    match service_and_region.split_once('.') {
        None => EndpointRegion::Any,
        Some((_, "internal")) => EndpointRegion::Any,
        Some((_, region)) => EndpointRegion::Pinned(region),
    }
}

/// Why an endpoint may not serve `region`: it is pinned to another one. `None` when it
/// may (the region-less domain, a region-pinned one of `region`, or a host whose region
/// cannot be read from its name).
pub fn other_region(url: &str, region: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    match endpoint_region(url.host_str()?) {
        EndpointRegion::Pinned(pinned) if !pinned.eq_ignore_ascii_case(region) => {
            Some(pinned.to_owned())
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use super::*;

    #[test]
    fn regions_are_read_from_tencent_domains_only() {
        assert_eq!(
            endpoint_region("vpc.tencentcloudapi.com"),
            EndpointRegion::Any
        );
        assert_eq!(
            endpoint_region("vpc.internal.tencentcloudapi.com"),
            EndpointRegion::Any
        );
        assert_eq!(
            endpoint_region("vpc.ap-guangzhou.tencentcloudapi.com"),
            EndpointRegion::Pinned("ap-guangzhou")
        );
        assert_eq!(
            endpoint_region("VPC.AP-Shanghai.TencentCloudAPI.com."),
            EndpointRegion::Pinned("AP-Shanghai")
        );
        for host in ["127.0.0.1", "vpc.example", "tencentcloudapi.com.evil", "é"] {
            assert_eq!(endpoint_region(host), EndpointRegion::Unknown, "{host}");
        }
    }

    #[test]
    fn another_regions_domain_is_named() {
        let region = "ap-guangzhou";
        assert_eq!(
            other_region("https://vpc.ap-shanghai.tencentcloudapi.com", region).as_deref(),
            Some("ap-shanghai")
        );
        for ok in [
            "https://vpc.tencentcloudapi.com",
            "https://vpc.ap-guangzhou.tencentcloudapi.com:443/",
            "http://127.0.0.1:8080",
            "not a url",
        ] {
            assert_eq!(other_region(ok, region), None, "{ok}");
        }
    }

    #[test]
    fn the_last_answering_endpoint_is_tried_first_then_the_rest_in_order() {
        let e = |u: &str| Endpoint::parse(u, true).unwrap();
        let list = EndpointList::new(e("http://a"), vec![e("http://b"), e("http://c")]);
        assert_eq!(list.order().collect::<Vec<_>>(), [0, 1, 2]);
        list.answered(1);
        assert_eq!(list.order().collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(list.get(1).host, "b");
        assert_eq!(list.len(), 3);
    }
}
