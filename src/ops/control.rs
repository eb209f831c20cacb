//! The control socket: one JSON request per line, one JSON answer per line.
//!
//! The socket lives under `/run/enisync/` with mode 0600, so only root and the
//! service's own user may talk to the daemon: `status` shows which IPs the host is about
//! to give up, and `release --held` gives them up. It is bound inside a private (0700)
//! directory, made 0600 there, and only then renamed to its path, so there is no moment
//! at which anyone else can connect. A few concurrent clients at most, each with a
//! deadline to send its request and to take its answer.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::Command;
use crate::pause::PauseRequest;

/// Clients served at once. The CLI sends one request and waits for one answer; more
/// than this at once is a stuck or hostile client, and each holds a descriptor and a
/// task. Counted in the unit's `LimitNOFILE=` arithmetic (systemd/enisync.service).
pub const MAX_CLIENTS: usize = 16;
/// How long a client has to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client has to take its answer: one that never reads must not hold its
/// slot (and the answer's memory) for ever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a client may ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Plan,
    Pause,
    Resume,
    ReleaseHeld,
    Cancel {
        ip: IpAddr,
    },
    /// `enisync release <ip>`: an orphaned claim address, released by hand; the engine
    /// decides whether it may be.
    ReleaseIp {
        ip: IpAddr,
    },
    /// The drift report (read-only).
    Drift,
}

/// Where `drift` requests go: the daemon's drift task, once it runs (it starts with the
/// engine). Until then `drift` answers that enisync is starting.
pub type DriftQueries = Arc<std::sync::OnceLock<mpsc::Sender<crate::drift::Query>>>;

/// How long a `drift` request waits for its answer: a fresh read is one listing and a
/// few metadata reads. Below the CLI's 15 s read timeout.
const DRIFT_ANSWER: Duration = Duration::from_secs(12);

/// The answer: `{"ok": true, "data": …}` or `{"ok": false, "error": "…"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Answer {
    fn data(value: impl Serialize) -> Self {
        match serde_json::to_value(value) {
            Ok(v) => Self {
                ok: true,
                data: Some(v),
                error: None,
            },
            Err(e) => Self::error(format!("encoding the answer: {e}")),
        }
    }

    fn error(text: impl Into<String>) -> Self {
        Self {
            ok: false,
            data: None,
            error: Some(text.into()),
        }
    }
}

/// Why a client could not get an answer: each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "enisync is not running (no control socket at {0}); start it with `systemctl start enisync`"
    )]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: run this as root or as the enisync service user")]
    NotPermitted(PathBuf),
    #[error("talking to enisync at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("enisync answered: {0}")]
    Refused(String),
}

/// Binds the socket with mode 0600, replacing a stale one.
///
/// A socket file that still accepts connections belongs to a live enisync (one with
/// another state directory, or the test harness's twin): taking it over would leave that
/// daemon unreachable by `enisync status`, so binding fails instead. Anything at the path
/// that is not a socket is left alone for the operator to look at.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::FileTypeExt;

    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                "the path exists and is not a socket; remove it or choose another [control] socket",
            ));
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(Error::new(
                    ErrorKind::AddrInUse,
                    "another enisync is serving this socket; give each daemon its own [control] socket",
                ));
            }
            // Nobody listens: a daemon that died without cleaning up left it behind.
            Err(_) => std::fs::remove_file(path)?,
        },
    }
    bind_privately(path)
}

/// Binds in a fresh directory that only we can enter (0700), sets the socket's mode
/// there, and renames it into place: between `bind` and `chmod` nobody else can reach
/// it (connecting needs search permission on the directory), and at `path` it appears
/// with its final mode at once (rename is atomic). A process-wide umask would race with
/// every other thread creating files.
fn bind_privately(path: &Path) -> std::io::Result<UnixListener> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let private = (0..16)
        .map(|_| parent.join(format!(".{name}.{:016x}", fastrand::u64(..))))
        .find_map(|dir| {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .ok()
                .map(|()| dir)
        })
        .ok_or_else(|| {
            std::io::Error::other("cannot create a private directory next to the socket")
        })?;
    let staged = private.join("s");
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound
}

/// Serves requests until `shutdown`, forwarding each to the engine.
pub async fn serve(
    listener: UnixListener,
    engine: mpsc::Sender<Command>,
    drift: DriftQueries,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Refused at once, without waiting for the client: a short answer fits the
            // socket buffer of a fresh connection, so try_write does not block.
            let _ = stream.try_write(
                b"{\"ok\":false,\"error\":\"too many control clients at once; try again\"}\n",
            );
            continue;
        };
        let engine = engine.clone();
        let drift = Arc::clone(&drift);
        // Who is asking: the kernel's word (SO_PEERCRED), recorded with every operator
        // action. Only root and the service user can reach the socket at all.
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        tokio::spawn(async move {
            let _slot = slot;
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read.take(64 * 1024));
            let answer = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await
            {
                Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
                    Ok(request) => handle(request, uid, &engine, &drift).await,
                    Err(e) => Answer::error(format!("bad request: {e}")),
                },
                Ok(Err(e)) => Answer::error(format!("reading the request: {e}")),
                Err(_) => Answer::error("no request within 5 s"),
            };
            let mut text =
                serde_json::to_string(&answer).unwrap_or_else(|_| "{\"ok\":false}".into());
            text.push('\n');
            let _ = tokio::time::timeout(WRITE_TIMEOUT, write.write_all(text.as_bytes())).await;
        });
    }
}

async fn handle(
    request: Request,
    uid: Option<u32>,
    engine: &mpsc::Sender<Command>,
    drift: &DriftQueries,
) -> Answer {
    let by_uid = uid.map_or_else(|| "unknown".to_string(), |u| u.to_string());
    match request {
        Request::Status => ask(engine, Command::Snapshot)
            .await
            .map_or_else(Answer::error, Answer::data),
        Request::Plan => ask(engine, Command::Plan)
            .await
            .map_or_else(Answer::error, Answer::data),
        Request::Pause | Request::Resume => {
            let pause = request == Request::Pause;
            let request = PauseRequest {
                pause,
                by_uid: uid,
            };
            match ask(engine, |tx| Command::Pause(request, tx)).await {
                Ok(Ok(())) => Answer::data(if pause { "paused" } else { "resumed" }),
                Ok(Err(e)) | Err(e) => Answer::error(e),
            }
        }
        Request::ReleaseHeld => {
            info!(target: "audit", decision = "operator", by_uid = %by_uid, "release --held requested on the control socket");
            ask(engine, Command::ReleaseHeld)
                .await
                .map_or_else(Answer::error, Answer::data)
        }
        Request::Cancel { ip } => match ask(engine, |tx| {
            info!(target: "audit", decision = "operator", by_uid = %by_uid, ip = %ip, "cancel requested on the control socket");
            Command::Cancel(ip, tx)
        })
        .await
        {
            Ok(true) => Answer::data(format!("cancelled the pending release of {ip}")),
            Ok(false) => Answer::error(format!(
                "no pending release of {ip} (or it is already in flight)"
            )),
            Err(e) => Answer::error(e),
        },
        Request::ReleaseIp { ip } => {
            info!(target: "audit", decision = "operator", by_uid = %by_uid, ip = %ip, "release of a claim address requested on the control socket");
            match ask(engine, |tx| Command::ReleaseByHand(ip, tx)).await {
                Ok(Ok(accepted)) => Answer::data(accepted.to_string()),
                Ok(Err(refusal)) => Answer::error(refusal.to_string()),
                Err(e) => Answer::error(e),
            }
        }
        Request::Drift => ask_drift(drift).await,
    }
}

async fn ask_drift(drift: &DriftQueries) -> Answer {
    let Some(queries) = drift.get() else {
        return Answer::error(
            "enisync is still starting (waiting for the metadata service or the ENI listing): \
             the drift report starts with the engine",
        );
    };
    let (tx, rx) = oneshot::channel();
    // Queued: the drift task answers one query at a time and reads at most once per
    // `DRIFT_FRESH_READ_MIN`, whoever asks. The whole wait is bounded.
    let answer = tokio::time::timeout(DRIFT_ANSWER, async {
        queries.send(tx).await.ok()?;
        rx.await.ok()
    })
    .await;
    match answer {
        Ok(Some(report)) => Answer::data(report),
        Ok(None) => Answer::error("the drift task has stopped"),
        Err(_) => Answer::error(
            "the drift read did not finish within 12 s (a slow API or metadata service); ask again",
        ),
    }
}

async fn ask<T>(
    engine: &mpsc::Sender<Command>,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, String> {
    let (tx, rx) = oneshot::channel();
    engine
        .send(make(tx))
        .await
        .map_err(|_| "the engine has stopped".to_string())?;
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .map_err(|_| "the engine did not answer within 10 s".to_string())?
        // Only the start-up responder drops a request: the engine answers every one.
        .map_err(|_| {
            "enisync is still starting (waiting for the metadata service or the ENI listing); \
             only status, pause and resume answer until then"
                .to_string()
        })
}

/// The client side (blocking: the CLI has no runtime).
pub fn request(path: &Path, request: &Request) -> Result<serde_json::Value, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ControlError::NotRunning(path.to_owned())
        }
        std::io::ErrorKind::PermissionDenied => ControlError::NotPermitted(path.to_owned()),
        _ => io(e),
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(io)?;
    let mut line = serde_json::to_string(request).map_err(|e| io(std::io::Error::other(e)))?;
    line.push('\n');
    // A daemon that refuses the connection (too many clients) answers and closes before
    // reading the request: the write may then fail, but its answer is there to read.
    let sent = stream.write_all(line.as_bytes());
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    if answer.is_empty() {
        sent.map_err(io)?;
        read.map_err(io)?;
    }
    let answer: Answer = serde_json::from_str(&answer)
        .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    if answer.ok {
        Ok(answer.data.unwrap_or(serde_json::Value::Null))
    } else {
        Err(ControlError::Refused(answer.error.unwrap_or_default()))
    }
}

use tokio::io::AsyncReadExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        assert_eq!(
            serde_json::to_string(&Request::Status).expect("json"),
            r#"{"cmd":"status"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Cancel {
                ip: std::net::Ipv4Addr::new(10, 0, 1, 5).into()
            })
            .expect("json"),
            r#"{"cmd":"cancel","ip":"10.0.1.5"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"release_held"}"#).expect("parse"),
            Request::ReleaseHeld
        );
        assert_eq!(
            serde_json::to_string(&Request::Drift).expect("json"),
            r#"{"cmd":"drift"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::ReleaseIp {
                ip: std::net::Ipv4Addr::new(10, 0, 1, 100).into()
            })
            .expect("json"),
            r#"{"cmd":"release_ip","ip":"10.0.1.100"}"#
        );
    }

    #[test]
    fn a_missing_socket_says_the_daemon_is_not_running() {
        let err = request(Path::new("/nonexistent/enisync.sock"), &Request::Status)
            .expect_err("no daemon");
        assert!(matches!(err, ControlError::NotRunning(_)), "{err}");
        assert!(err.to_string().contains("not running"));
    }

    #[test]
    fn the_socket_appears_at_its_path_by_rename_with_mode_0600() {
        use std::os::unix::ffi::OsStrExt;
        let dir = std::env::temp_dir().join(format!("enisync-control-rn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("enisync.sock");
        // SAFETY: inotify_init1 has no preconditions; the descriptor is closed below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        let cdir = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("path");
        // SAFETY: a valid inotify descriptor and a NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(fd, cdir.as_ptr(), libc::IN_CREATE | libc::IN_MOVED_TO)
        };
        assert!(wd >= 0, "{}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt.block_on(async { bind(&path) }).expect("bind");
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: reads into our buffer, at most its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        // SAFETY: closes the descriptor opened above, once.
        unsafe { libc::close(fd) };
        let n = usize::try_from(n).expect("events");
        // Walk the inotify_event records: the socket's name must arrive by rename only.
        let (mut created, mut moved) = (false, false);
        let mut at = 0;
        let header = std::mem::size_of::<libc::inotify_event>();
        while at + header <= n {
            let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().expect("mask"));
            let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().expect("len")) as usize;
            let name = &buf[at + header..at + header + len];
            let name = name.split(|b| *b == 0).next().unwrap_or_default();
            if name == b"enisync.sock" {
                created |= mask & libc::IN_CREATE != 0;
                moved |= mask & libc::IN_MOVED_TO != 0;
            }
            at += header + len;
        }
        assert!(
            !created,
            "the socket was created at its public path (bind then chmod)"
        );
        assert!(moved, "the socket was not renamed into place");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&path).expect("meta").mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("enisync.sock")]);
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_are_capped_and_one_that_never_reads_loses_its_slot() {
        use tokio::io::AsyncWriteExt as _;
        let dir = std::env::temp_dir().join(format!("enisync-control-cap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("enisync.sock");
        let listener = bind(&path).expect("bind");
        let (tx, mut rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, tx, DriftQueries::default(), stop.clone()));
        // An engine whose status is 2 MiB: more than the socket buffers hold, so a
        // client that does not read leaves the write pending.
        tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                if let Command::Snapshot(reply) = cmd {
                    let big = "x".repeat(2 << 20);
                    let _ = reply.send(crate::engine::Snapshot::starting(big, None, false));
                }
            }
        });
        let mut hogs = Vec::new();
        for _ in 0..MAX_CLIENTS {
            let mut s = tokio::net::UnixStream::connect(&path)
                .await
                .expect("connect");
            s.write_all(b"{\"cmd\":\"status\"}\n").await.expect("send");
            hogs.push(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ask =
            |path: PathBuf| tokio::task::spawn_blocking(move || request(&path, &Request::Status));
        let started = std::time::Instant::now();
        let refused = ask(path.clone()).await.expect("join");
        assert!(
            matches!(&refused, Err(ControlError::Refused(e)) if e.contains("too many")),
            "{refused:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once"
        );
        // The hogs never read: after the write timeout their slots are free again.
        tokio::time::sleep(WRITE_TIMEOUT + Duration::from_millis(500)).await;
        let served = ask(path.clone()).await.expect("join").expect("served");
        assert_eq!(served["starting"].as_str().map(str::len), Some(2 << 20));
        drop(hogs);
        stop.cancel();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_live_socket_is_not_taken_over_but_a_stale_one_is() {
        let dir = std::env::temp_dir().join(format!("enisync-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("enisync.sock");

        let live = bind(&path).expect("first bind");
        let err = bind(&path).expect_err("a live socket must not be replaced");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
        assert!(err.to_string().contains("another enisync"), "{err}");

        // Dropping the listener leaves the file behind, as a crash would.
        drop(live);
        assert!(path.exists());
        bind(&path).expect("a stale socket is replaced");

        let plain = dir.join("not-a-socket");
        std::fs::write(&plain, "keep me").expect("write");
        let err = bind(&plain).expect_err("a regular file is not replaced");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&plain).expect("read"), "keep me");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
