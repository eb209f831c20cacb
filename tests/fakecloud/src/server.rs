//! The HTTP server: one listener, three surfaces routed by path, plus the control
//! endpoints `GET /_fake/calls`, `GET /_fake/state` and `GET /_fake/events`.
//!
//! Every request is handled synchronously under the state lock (so answers are
//! deterministic), logged, shown to the call observer, and only then, outside the lock,
//! delayed if a fault asks for it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use tokio::sync::watch;

use crate::FakeCloud;
use crate::calls::Call;
use crate::faults::Fault;
use crate::tls::{TlsConfig, TlsListener};
use crate::{auth, legacy, metadata, v3};

/// How often the background tick ends due tasks (they also end lazily on every request
/// and state read).
const TICK: Duration = Duration::from_millis(20);

/// A request as the surfaces see it.
#[derive(Debug)]
pub(crate) struct RawRequest {
    pub method: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub source: SocketAddr,
}

impl RawRequest {
    /// A header as text (`None` if absent or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An answer, possibly held back.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    pub delay: Option<Duration>,
    label: Option<String>,
    /// `Location` (a redirect fault).
    location: Option<String>,
    /// A streamed body of this many bytes after `body`, and whether it is chunked (no
    /// `Content-Length`): the huge-body fault.
    stream: Option<(u64, bool)>,
}

/// The chunk size of a streamed huge body.
const STREAM_CHUNK: usize = 64 << 10;

impl Reply {
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: value.to_string(),
            delay: None,
            label: None,
            location: None,
            stream: None,
        }
    }

    pub fn text(status: u16, body: String) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
            delay: None,
            label: None,
            location: None,
            stream: None,
        }
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    pub fn labelled(mut self, label: &str) -> Self {
        self.label = Some(label.to_string());
        self
    }

    /// The answer of a fault that replaces processing.
    pub fn for_fault(fault: &Fault) -> Self {
        match fault {
            Fault::Http { status } => {
                Self::text(*status, format!("fake: injected HTTP {status}\n"))
                    .labelled(&format!("HTTP {status}"))
            }
            Fault::Timeout { after_ms } => Self::text(504, "fake: injected timeout\n".into())
                .delayed(Duration::from_millis(*after_ms))
                .labelled("Timeout"),
            Fault::Malformed => Self {
                status: 200,
                content_type: "application/json",
                body: "{\"Response\": {\"RequestId\": \"truncat".to_string(),
                delay: None,
                label: Some("Malformed".to_string()),
                location: None,
                stream: None,
            },
            Fault::HugeBody { bytes, chunked } => {
                let start = "{\"Response\": {\"RequestId\": \"huge\", \"Padding\": \"";
                let mut reply = Self::text(200, start.to_string()).labelled("HugeBody");
                reply.content_type = "application/json";
                reply.stream = Some((bytes.saturating_sub(start.len() as u64), *chunked));
                reply
            }
            Fault::Redirect { status, location } => {
                let mut reply = Self::text(*status, format!("fake: see {location}\n"))
                    .labelled(&format!("Redirect {status}"));
                reply.location = Some(location.clone());
                reply
            }
            other => {
                let code = other.error_code().map_or("InternalError", |(c, _)| c);
                Self::text(500, format!("{code}\n")).labelled(code)
            }
        }
    }

    /// What the call log records for a fault answer.
    pub fn answer_label(&self) -> String {
        self.label
            .clone()
            .unwrap_or_else(|| format!("HTTP {}", self.status))
    }

    /// The response, with a `Date` header from the fake's clock (`now_s`, Unix seconds)
    /// when given: a skewed fake tells the client its time, as Tencent's servers do.
    fn into_response(self, now_s: Option<i64>, streamed: &Arc<AtomicU64>) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = match self.stream {
            None => (status, self.body).into_response(),
            Some((rest, chunked)) => {
                let total = self.body.len() as u64 + rest;
                let body = huge_body(self.body.into_bytes(), rest, Arc::clone(streamed));
                let mut response = (status, body).into_response();
                if !chunked && let Ok(len) = HeaderValue::from_str(&total.to_string()) {
                    response.headers_mut().insert(header::CONTENT_LENGTH, len);
                }
                response
            }
        };
        if let Some(location) = self
            .location
            .as_deref()
            .and_then(|l| HeaderValue::from_str(l).ok())
        {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        if let Some(date) = now_s
            .map(http_date)
            .and_then(|d| HeaderValue::from_str(&d).ok())
        {
            response.headers_mut().insert(header::DATE, date);
        }
        response
    }
}

/// `head`, then `rest` bytes of spaces in [`STREAM_CHUNK`]s, produced only as fast as the
/// client reads (hyper polls the stream when the socket can take more); every chunk
/// handed over is added to `streamed`.
fn huge_body(head: Vec<u8>, rest: u64, streamed: Arc<AtomicU64>) -> Body {
    let chunks = futures_util::stream::unfold((Some(head), rest), move |(head, rest)| {
        let (chunk, left) = match head {
            Some(head) => (head, rest),
            None if rest == 0 => return std::future::ready(None),
            None => {
                let n = rest.min(STREAM_CHUNK as u64);
                (
                    vec![b' '; usize::try_from(n).unwrap_or(STREAM_CHUNK)],
                    rest - n,
                )
            }
        };
        streamed.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        std::future::ready(Some((Ok::<_, io::Error>(Bytes::from(chunk)), (None, left))))
    });
    Body::from_stream(chunks)
}

#[derive(Clone)]
struct App {
    cloud: FakeCloud,
    shutdown: watch::Receiver<bool>,
}

/// A running server. Stops when dropped (or with [`FakeServer::stop`]); keep it alive
/// for as long as the fake should answer.
#[derive(Debug)]
pub struct FakeServer {
    addr: SocketAddr,
    /// `http` or `https`.
    scheme: &'static str,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` (`https://` when served with TLS).
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// `http://ADDR/latest/meta-data/`, for enisync's `metadata.endpoint`.
    pub fn metadata_endpoint(&self) -> String {
        format!("{}{}/", self.base_url(), metadata::PREFIX)
    }

    /// `http://ADDR/`, the API 3.0 endpoint.
    pub fn v3_endpoint(&self) -> String {
        format!("{}/", self.base_url())
    }

    /// `http://ADDR/v2/index.php`, the legacy endpoint.
    pub fn legacy_endpoint(&self) -> String {
        format!("{}{}", self.base_url(), auth::LEGACY_PATH)
    }

    /// Asks the server to stop: no new connections, held-back answers are cut short.
    pub fn stop(&self) {
        self.shutdown.send_replace(true);
    }

    /// Stops and waits until the server has finished.
    pub async fn shutdown(mut self) {
        self.stop();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl FakeCloud {
    /// Serves on `listener` (bound by the caller: loopback, or inside a test's network
    /// namespace) from the current Tokio runtime. Fails outside a runtime.
    pub fn serve(&self, listener: std::net::TcpListener) -> io::Result<FakeServer> {
        self.serve_with(listener, None)
    }

    /// Like [`FakeCloud::serve`], but HTTPS with `tls`: every surface, the same paths.
    pub fn serve_tls(
        &self,
        listener: std::net::TcpListener,
        tls: &TlsConfig,
    ) -> io::Result<FakeServer> {
        self.serve_with(listener, Some(tls))
    }

    fn serve_with(
        &self,
        listener: std::net::TcpListener,
        tls: Option<&TlsConfig>,
    ) -> io::Result<FakeServer> {
        tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let incoming = match tls {
            Some(tls) => Incoming::Tls(TlsListener::new(listener, tls)?),
            None => Incoming::Plain(listener),
        };
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run(self.clone(), incoming, rx));
        Ok(FakeServer {
            addr,
            scheme: if tls.is_some() { "https" } else { "http" },
            shutdown: tx,
            task: Some(task),
            thread: None,
        })
    }

    /// Serves on `listener` from a thread of its own with its own runtime, for callers
    /// without a Tokio runtime (or that block theirs).
    pub fn serve_in_thread(&self, listener: std::net::TcpListener) -> io::Result<FakeServer> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = watch::channel(false);
        let cloud = self.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fakecloud-{addr}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => run(cloud, Incoming::Plain(listener), rx).await,
                        Err(e) => tracing::error!("fakecloud: listener: {e}"),
                    }
                });
            })?;
        Ok(FakeServer {
            addr,
            scheme: "http",
            shutdown: tx,
            task: None,
            thread: Some(thread),
        })
    }
}

/// What the server accepts connections from.
enum Incoming {
    Plain(tokio::net::TcpListener),
    Tls(TlsListener),
}

async fn run(cloud: FakeCloud, incoming: Incoming, shutdown: watch::Receiver<bool>) {
    let ticker = {
        let cloud = cloud.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            loop {
                tokio::select! {
                    _ = interval.tick() => cloud.settle(),
                    () = stopped(&mut stop) => break,
                }
            }
        })
    };
    let app = App {
        cloud,
        shutdown: shutdown.clone(),
    };
    let router = Router::new().fallback(route).with_state(app);
    let mut stop = shutdown;
    let make_service = router.into_make_service_with_connect_info::<SocketAddr>();
    let until_stopped = async move { stopped(&mut stop).await };
    let served = match incoming {
        Incoming::Plain(listener) => {
            axum::serve(listener, make_service)
                .with_graceful_shutdown(until_stopped)
                .await
        }
        Incoming::Tls(listener) => {
            // `tap_io` (a no-op here) gives the TLS listener axum's `ConnectInfo` for
            // its `SocketAddr`, so metadata still answers by the caller's address.
            axum::serve(listener.tap_io(|_| {}), make_service)
                .with_graceful_shutdown(until_stopped)
                .await
        }
    };
    if let Err(e) = served {
        tracing::error!("fakecloud: server: {e}");
    }
    ticker.abort();
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn route(
    State(app): State<App>,
    ConnectInfo(source): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = crate::events::monotonic_ns();
    let path = uri.path().to_string();
    let req = RawRequest {
        method: method.as_str().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        headers,
        body,
        source,
    };
    let handled: Option<(Reply, Call, i64)> = app.cloud.with_world(|world| {
        world.settle();
        let answer = if let Some(rest) = path.strip_prefix(metadata::PREFIX) {
            match rest {
                "" => Some(metadata::handle(world, &req, "")),
                _ => rest
                    .strip_prefix('/')
                    .map(|rel| metadata::handle(world, &req, rel)),
            }
        } else if path == auth::LEGACY_PATH && matches!(req.method.as_str(), "GET" | "POST") {
            Some(legacy::handle(world, &req))
        } else if path == "/" && req.method == "POST" {
            Some(v3::handle(world, &req))
        } else {
            None
        };
        let now_s = world.now_s();
        answer.map(|(reply, call)| {
            let call = world.log(call);
            if world.events.on() {
                let kind = crate::events::EventKind::Request { call: call.clone() };
                world.events.push(arrived, kind);
            }
            (reply, call, now_s)
        })
    });
    let Some((reply, call, now_s)) = handled else {
        return control(&app.cloud, &method, &path, uri.query().unwrap_or(""));
    };
    app.cloud.notify(&call);
    if let Some(delay) = reply.delay {
        let mut stop = app.shutdown.clone();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped(&mut stop) => {
                return Reply::text(503, "fake: shutting down\n".into())
                    .into_response(Some(now_s), &app.cloud.streamed);
            }
        }
    }
    reply.into_response(Some(now_s), &app.cloud.streamed)
}

/// `GET /_fake/calls`, `GET /_fake/state`, `GET /_fake/events?since=SEQ`; anything else
/// is 404.
fn control(cloud: &FakeCloud, method: &Method, path: &str, query: &str) -> Response {
    let value = match (method.as_str(), path) {
        ("GET", "/_fake/calls") => serde_json::to_value(cloud.calls()).ok(),
        ("GET", "/_fake/state") => Some(cloud.state_json()),
        ("GET", "/_fake/events") => {
            let since = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "since")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            Some(serde_json::json!({
                "events": cloud.events_since(since),
                "dropped": cloud.events_dropped(),
            }))
        }
        _ => None,
    };
    match value {
        Some(value) => Reply::json(200, &value).into_response(None, &cloud.streamed),
        None => Reply::text(404, "404 - Not Found\n".into()).into_response(None, &cloud.streamed),
    }
}

/// An HTTP date (RFC 9110 IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`) of Unix seconds.
pub(crate) fn http_date(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (year, month, day) = enisync::wallclock::civil_date(days);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        DAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)],
        MONTHS[usize::try_from(month - 1).unwrap_or(0)],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_dates() {
        assert_eq!(
            super::http_date(784_111_777),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(super::http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            super::http_date(1_835_481_599),
            "Tue, 29 Feb 2028 23:59:59 GMT"
        );
    }
}
