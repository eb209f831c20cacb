//! What the two protocols share on the wire: endpoint checks and one HTTP exchange mapped
//! to [`CloudError`]s with local codes.

use super::CloudError;

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
/// `Http.<status>`. Messages never include the URL (a legacy GET would carry the signature
/// and the token in it).
pub(crate) async fn exchange(
    action: &'static str,
    request: reqwest::RequestBuilder,
) -> Result<Vec<u8>, CloudError> {
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(action, &e))?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| transport_error(action, &e))?;
    if status != 200 {
        return Err(CloudError::local(
            action,
            &format!("Http.{status}"),
            format!("HTTP status {status}"),
        ));
    }
    Ok(body.to_vec())
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
    fn plain_http_is_refused_unless_allowed() {
        let err = Endpoint::parse("http://vpc.example/", false).unwrap_err();
        assert!(matches!(err, EndpointError::PlainHttp { .. }), "{err}");
        assert!(Endpoint::parse("ftp://vpc.example/", true).is_err());
        assert!(Endpoint::parse("not a url", true).is_err());
    }
}
