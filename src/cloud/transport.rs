//! What the two protocols share on the wire: endpoint checks and one HTTP exchange mapped
//! to [`CloudError`]s with local codes.

use super::CloudError;
use super::clock::ServerClock;
use crate::wallclock::days_from_civil;

/// The largest API answer body read (API 3.0 and legacy). A real
/// `DescribeNetworkInterfaces` page for one instance is a few tens of KiB (at most
/// ~100 KiB with every ENI and IP a large instance can hold); 8 MiB is far above that and
/// far below the unit's memory limit. A larger answer is `Response.TooLarge`.
pub const MAX_API_BODY: usize = 8 << 20;

/// The start of every HTTP client enisync (and its test tools) builds.
///
/// reqwest is built without a TLS crypto provider of its own and panics on `build()` if
/// none is installed, so this installs rustls' ring provider for the process first (a
/// no-op once one is installed). Why ring and not aws-lc-rs: see `Cargo.toml`.
///
/// Redirects are never followed: neither the API nor the metadata service redirects,
/// and following one would carry `X-TC-Token` (and, for the legacy API, the signed
/// body) to another host or from https to http. A 3xx comes back as its status.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // Err only means another provider is already the process default: keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none())
}

/// Why a body was not read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// More than the cap (announced by `Content-Length`, or counted while reading).
    TooLarge,
    Transport(reqwest::Error),
}

/// Reads a response body of at most `limit` bytes, chunk by chunk with a running count,
/// so a hostile or broken server cannot make us buffer more than `limit` (plus one
/// chunk). A `Content-Length` above the limit is refused before anything is read.
/// Dropping the response on `TooLarge` closes the connection.
pub(crate) async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let announced = usize::try_from(response.content_length().unwrap_or(0)).unwrap_or(usize::MAX);
    if announced > limit {
        return Err(BodyError::TooLarge);
    }
    // The announced length is a hint, not a promise: the count below is what holds.
    let mut body = Vec::with_capacity(announced);
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if chunk.len() > limit.saturating_sub(body.len()) {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A parsed API endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub url: reqwest::Url,
    /// `host[:port]` exactly as the `Host` header carries it (the port only when it is not
    /// the scheme's default), which is what both signatures cover.
    pub host: String,
}

/// Why an endpoint is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint {url:?} is not a URL")]
    Invalid { url: String },
    #[error(
        "endpoint {url:?} is plain http: API keys and signatures would travel in clear (allow_plain_http is for tests only)"
    )]
    PlainHttp { url: String },
    #[error("endpoint {url:?} must be https")]
    Scheme { url: String },
}

impl Endpoint {
    pub fn parse(text: &str, allow_plain_http: bool) -> Result<Self, EndpointError> {
        let url = reqwest::Url::parse(text).map_err(|_| EndpointError::Invalid {
            url: text.to_owned(),
        })?;
        match url.scheme() {
            "https" => {}
            "http" if allow_plain_http => {}
            "http" => {
                return Err(EndpointError::PlainHttp {
                    url: text.to_owned(),
                });
            }
            _ => {
                return Err(EndpointError::Scheme {
                    url: text.to_owned(),
                });
            }
        }
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => {
                return Err(EndpointError::Invalid {
                    url: text.to_owned(),
                });
            }
        };
        Ok(Self { url, host })
    }
}

/// Sends one request; returns the body of a 200 answer. Anything else is a transient
/// error with a local code: `Transport.Timeout`, `Transport.Connect`, `Transport.Request`,
/// `Http.<status>` (a 3xx too: redirects are not followed), `Response.TooLarge` (a body
/// over [`MAX_API_BODY`]; the body of any other status is not read at all). Messages
/// never include the URL (a legacy GET would carry the signature and the token in it).
///
/// The `Date` header of every answer (errors included) is handed to `clock`, so a
/// rejected timestamp can be corrected from the server's own time.
pub(crate) async fn exchange(
    action: &'static str,
    request: reqwest::RequestBuilder,
    clock: Option<&ServerClock>,
) -> Result<Vec<u8>, CloudError> {
    exchange_once(action, request, clock)
        .await
        .map_err(Failure::into_error)
}

/// How one exchange failed: whether any byte of the request can have left the host.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The connection was never made: DNS failed, the connect was refused or timed out,
    /// or the TLS handshake failed (reqwest's connect errors, which cover the resolver,
    /// TCP and TLS of its connector). Nothing of the request was written, so it cannot
    /// have been executed: the one case another endpoint may be tried
    /// (docs/endpoint-failover.md).
    BeforeSend(CloudError),
    /// Anything later (a timeout after sending, a reset mid-answer, an HTTP status, a
    /// body we refuse): the call may have been executed.
    Sent(CloudError),
}

impl Failure {
    pub fn into_error(self) -> CloudError {
        match self {
            Self::BeforeSend(e) | Self::Sent(e) => e,
        }
    }
}

/// [`exchange`], telling a failure before sending from one after.
pub(crate) async fn exchange_once(
    action: &'static str,
    request: reqwest::RequestBuilder,
    clock: Option<&ServerClock>,
) -> Result<Vec<u8>, Failure> {
    let response = request.send().await.map_err(|e| {
        let error = transport_error(action, &e);
        if e.is_connect() {
            Failure::BeforeSend(error)
        } else {
            Failure::Sent(error)
        }
    })?;
    if let Some(clock) = clock
        && let Some(date) = response
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date)
    {
        clock.observe_server_date(date);
    }
    let status = response.status().as_u16();
    if status != 200 {
        return Err(Failure::Sent(CloudError::local(
            action,
            &format!("Http.{status}"),
            format!("HTTP status {status}"),
        )));
    }
    read_body(response, MAX_API_BODY)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => CloudError::local(
                action,
                "Response.TooLarge",
                format!("the answer is larger than {MAX_API_BODY} bytes; not read"),
            ),
            BodyError::Transport(e) => transport_error(action, &e),
        })
        .map_err(Failure::Sent)
}

/// Parses an HTTP date in the preferred format (RFC 9110 IMF-fixdate,
/// `Sun, 06 Nov 1994 08:49:37 GMT`) into Unix seconds. The obsolete formats are not
/// accepted: every server we talk to sends the preferred one, and a date we cannot
/// read is simply not used.
pub(crate) fn parse_http_date(text: &str) -> Option<i64> {
    let (_, rest) = text.trim().split_once(", ")?;
    let mut parts = rest.split(' ');
    let day: i64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let h: i64 = hms.next()?.parse().ok()?;
    let m: i64 = hms.next()?.parse().ok()?;
    let s: i64 = hms.next()?.parse().ok()?;
    if parts.next()? != "GMT"
        || parts.next().is_some()
        || hms.next().is_some()
        || !(1..=31).contains(&day)
        || !(0..24).contains(&h)
        || !(0..60).contains(&m)
        || !(0..=60).contains(&s)
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

fn transport_error(action: &'static str, e: &reqwest::Error) -> CloudError {
    let code = if e.is_timeout() {
        "Transport.Timeout"
    } else if e.is_connect() {
        "Transport.Connect"
    } else {
        "Transport.Request"
    };
    CloudError::local(action, code, transport_kind(e))
}

/// What kind of transport failure, without the URL or any other detail that could carry
/// a query string.
pub(crate) fn transport_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the body failed"
    } else {
        "request failed"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use super::*;

    #[test]
    fn host_header_carries_the_port_only_when_not_default() {
        let e = Endpoint::parse("https://vpc.tencentcloudapi.com", false).unwrap();
        assert_eq!(e.host, "vpc.tencentcloudapi.com");
        let e = Endpoint::parse("https://vpc.tencentcloudapi.com:443/", false).unwrap();
        assert_eq!(e.host, "vpc.tencentcloudapi.com");
        let e = Endpoint::parse("http://127.0.0.1:8080/v2/index.php", true).unwrap();
        assert_eq!(e.host, "127.0.0.1:8080");
        assert_eq!(e.url.path(), "/v2/index.php");
    }

    #[test]
    fn http_dates_parse_to_unix_seconds() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599)
        );
        for bad in [
            "",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn plain_http_is_refused_unless_allowed() {
        let err = Endpoint::parse("http://vpc.example/", false).unwrap_err();
        assert!(matches!(err, EndpointError::PlainHttp { .. }), "{err}");
        assert!(Endpoint::parse("ftp://vpc.example/", true).is_err());
        assert!(Endpoint::parse("not a url", true).is_err());
    }
}
