//! The metrics listener: `/metrics`, `/healthz` and `/readyz` on one small HTTP server,
//! with every resource a client can hold bounded (see [`Limits`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Metrics;
use crate::engine::Command;

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

/// What one client may cost the listener. Any local user can reach it, and a daemon
/// that runs out of descriptors or memory misjudges removals (it cannot read who removed
/// an address), so every resource a connection holds is bounded:
///
/// - `max_connections` at once. A new connection beyond that closes the oldest one that
///   is not in the middle of answering a request, so a flood of idle or slow clients
///   cannot lock out a probe: the newest connection always gets its turn, and a real
///   scrape sends its request at once and is answered in microseconds.
/// - `max_header_bytes`: hyper's read buffer, which holds the request head; a longer
///   head is answered 431 and the connection closed. A scrape's head is well under 1 KiB.
/// - no request body is read: a request that announces one is answered 413 and the
///   connection closed (hyper then drains at most what its bounded buffer holds).
/// - `header_read_timeout` to send a request head, `connection_timeout` for the whole
///   connection, keep-alive included.
///
/// Worst case memory: `max_connections` x (read buffer + write buffer + task), about
/// 64 x 40 KiB = 2.5 MiB; descriptors: `max_connections` + 1 (see the unit's
/// `LimitNOFILE=`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub connection_timeout: Duration,
}

impl Limits {
    pub const DEFAULT: Self = Self {
        max_connections: 64,
        // hyper's floor for its read buffer is 8 KiB.
        max_header_bytes: 16 * 1024,
        header_read_timeout: Duration::from_secs(2),
        connection_timeout: Duration::from_secs(10),
    };
}

/// The open connections, oldest first, for eviction.
#[derive(Debug, Default)]
struct Slots {
    next_id: u64,
    open: std::collections::BTreeMap<u64, Slot>,
}

#[derive(Debug)]
struct Slot {
    close: CancellationToken,
    /// Inside a request (the service is running): not evicted, so an answer that has
    /// begun (a `/healthz` waiting for the engine's ping) is finished.
    busy: Arc<AtomicBool>,
}

impl Slots {
    /// Takes a slot for a new connection, closing the oldest idle one when full.
    /// `None` when every slot is inside a request: the new connection is dropped.
    fn admit(&mut self, max: usize) -> Option<(u64, CancellationToken, Arc<AtomicBool>)> {
        if self.open.len() >= max {
            let victim = self
                .open
                .iter()
                .find(|(_, slot)| !slot.busy.load(Ordering::Relaxed))
                .map(|(id, _)| *id)?;
            if let Some(slot) = self.open.remove(&victim) {
                slot.close.cancel();
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let close = CancellationToken::new();
        let busy = Arc::new(AtomicBool::new(false));
        self.open.insert(
            id,
            Slot {
                close: close.clone(),
                busy: Arc::clone(&busy),
            },
        );
        Some((id, close, busy))
    }
}

/// Frees a connection's slot when its task ends, however it ends.
struct SlotGuard {
    slots: Arc<std::sync::Mutex<Slots>>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.open.remove(&self.id);
        }
    }
}

/// Marks a connection busy for the life of one request.
struct Busy(Arc<AtomicBool>);

impl Busy {
    fn new(flag: &Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Relaxed);
        Self(Arc::clone(flag))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    liveness_timeout: Duration,
    refresh: Refresh,
    shutdown: CancellationToken,
) {
    serve_with(
        listener,
        Limits::DEFAULT,
        metrics,
        health,
        liveness_timeout,
        refresh,
        shutdown,
    )
    .await;
}

/// [`serve`] with explicit [`Limits`].
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    limits: Limits,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    liveness_timeout: Duration,
    refresh: Refresh,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, max_connections = limits.max_connections, "metrics and health endpoints listening");
    }
    let slots: Arc<std::sync::Mutex<Slots>> = Arc::default();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(32);
    let builder = Arc::new(builder);
    let mut accept_errors: u64 = 0;
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: say so once in a while, not per attempt.
                    accept_errors += 1;
                    if accept_errors.is_power_of_two() {
                        warn!(error = %e, failures = accept_errors, "metrics listener accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admitted = slots
            .lock()
            .ok()
            .and_then(|mut s| s.admit(limits.max_connections));
        let Some((id, close, busy)) = admitted else {
            // Every slot is answering a request: this one is closed unanswered.
            continue;
        };
        let guard = SlotGuard {
            slots: Arc::clone(&slots),
            id,
        };
        let (metrics, health, refresh, builder) = (
            Arc::clone(&metrics),
            Arc::clone(&health),
            Arc::clone(&refresh),
            Arc::clone(&builder),
        );
        tokio::spawn(async move {
            let _guard = guard;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (metrics, health, refresh) = (
                    Arc::clone(&metrics),
                    Arc::clone(&health),
                    Arc::clone(&refresh),
                );
                let busy = Busy::new(&busy);
                async move {
                    let _busy = busy;
                    if announces_body(&req) {
                        return Ok::<_, Infallible>(too_large());
                    }
                    let path = req.uri().path();
                    let alive = path == "/healthz" && health.is_alive(liveness_timeout).await;
                    Ok::<_, Infallible>(answer(path, &metrics, &health, alive, &refresh))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = builder.serve_connection(io, service);
            tokio::select! {
                _ = tokio::time::timeout(limits.connection_timeout, conn) => {}
                () = close.cancelled() => {}
            }
        });
        // Let the new connection's task run once before the next accept: a client that
        // sent its request with its connect (a probe, a scrape) has it read and becomes
        // busy, so it is not evicted by the flood queued behind it.
        tokio::task::yield_now().await;
    }
}

/// Our endpoints take no body; one announced is refused unread.
fn announces_body(req: &Request<hyper::body::Incoming>) -> bool {
    let headers = req.headers();
    headers.contains_key(hyper::header::TRANSFER_ENCODING)
        || headers
            .get(hyper::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

fn too_large() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(
        b"request bodies are not accepted\n",
    )));
    *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    response.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    response
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
            metrics.ready.set(i64::from(health.is_ready()));
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
    // A deeper accept queue than std's default: under a flood of connects, a probe's
    // SYN then waits in the kernel (which holds it, not us: no descriptor) for the accept
    // loop, which drains fast, instead of being dropped and retried by the client a
    // second later. Calling listen again on a listening socket only resizes its queue;
    // the kernel caps it at net.core.somaxconn.
    // SAFETY: listen on the descriptor the listener owns and keeps open.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 1024) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_needs_the_explicit_setting() {
        let err = bind("0.0.0.0:0".parse().expect("addr"), false).expect_err("refused");
        assert!(err.to_string().contains("not loopback"));
        assert!(bind("127.0.0.1:0".parse().expect("addr"), false).is_ok());
    }

    /// A listener with `limits` on 127.0.0.1; its address.
    async fn listener_with(limits: Limits) -> (SocketAddr, CancellationToken) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        tokio::spawn(serve_with(
            listener,
            limits,
            Arc::new(Metrics::new()),
            Arc::new(Health::default()),
            Duration::from_secs(1),
            Arc::new(|_: &Metrics| {}),
            stop.clone(),
        ));
        (addr, stop)
    }

    /// Sends `request` and reads until the server closes; the status code (0: none).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // The server may close before taking all of an oversized request.
        let _ = s.write_all(request).await;
        let mut text = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut text)).await;
        String::from_utf8_lossy(&text)
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_idle_connections_never_locks_out_a_probe() {
        use tokio::io::AsyncReadExt;
        let limits = Limits {
            max_connections: 8,
            ..Limits::DEFAULT
        };
        let (addr, stop) = listener_with(limits).await;
        let mut idle = Vec::new();
        for _ in 0..50 {
            idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let code = exchange(
            addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(code, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        // Everything beyond the cap was closed by the server (EOF), oldest first.
        let mut closed = 0;
        for s in &mut idle {
            let mut b = [0u8; 1];
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await
            {
                closed += 1;
            }
        }
        assert!(
            closed >= 50 - limits.max_connections,
            "only {closed} of 50 closed"
        );
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_head_gets_431_and_a_body_413() {
        let (addr, stop) = listener_with(Limits::DEFAULT).await;
        let mut head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..2000 {
            head.extend(format!("X-Pad-{i}: {}\r\n", "a".repeat(40)).as_bytes());
        }
        head.extend(b"\r\n");
        assert!(head.len() > 64 * 1024);
        assert_eq!(exchange(addr, &head).await, 431);
        let post = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(exchange(addr, post).await, 413);
        let chunked =
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(exchange(addr, chunked).await, 413);
        // A plain scrape still works.
        assert_eq!(
            exchange(
                addr,
                b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .await,
            200
        );
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_or_slow_client_is_cut_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            connection_timeout: Duration::from_millis(1500),
            ..Limits::DEFAULT
        };
        let (addr, stop) = listener_with(limits).await;
        // Silent: closed after the header timeout.
        let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), silent.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "still open after 3 s");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        // Keep-alive requests every 200 ms: each is answered, and the whole connection
        // still ends at connection_timeout.
        let mut chatty = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let started = std::time::Instant::now();
        let mut open = true;
        while open && started.elapsed() < Duration::from_secs(4) {
            open = chatty
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .is_ok();
            let mut b = [0u8; 4096];
            open &= !matches!(
                tokio::time::timeout(Duration::from_millis(200), chatty.read(&mut b)).await,
                Ok(Ok(0) | Err(_))
            );
        }
        assert!(!open, "a keep-alive client outlived the connection timeout");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        stop.cancel();
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
