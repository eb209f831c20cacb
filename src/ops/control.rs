//! The control socket: one JSON request per line, one JSON answer per line.
//!
//! The socket lives under `/run/enisync/` with mode 0600, so only root and the
//! service's own user may talk to the daemon: `status` shows which IPs the host is about
//! to give up, and `release --held` gives them up.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::{Command, PauseRequest};

pub const DEFAULT_SOCKET: &str = "/run/enisync/enisync.sock";

/// What a client may ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Plan,
    Pause,
    Resume,
    ReleaseHeld,
    Cancel { ip: Ipv4Addr },
}

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
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves requests until `shutdown`, forwarding each to the engine.
pub async fn serve(
    listener: UnixListener,
    engine: mpsc::Sender<Command>,
    shutdown: CancellationToken,
) {
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
        let engine = engine.clone();
        // Who is asking: the kernel's word (SO_PEERCRED), recorded with every operator
        // action. Only root and the service user can reach the socket at all.
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read.take(64 * 1024));
            let answer =
                match tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
                    .await
                {
                    Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
                        Ok(request) => handle(request, uid, &engine).await,
                        Err(e) => Answer::error(format!("bad request: {e}")),
                    },
                    Ok(Err(e)) => Answer::error(format!("reading the request: {e}")),
                    Err(_) => Answer::error("no request within 5 s"),
                };
            let mut text =
                serde_json::to_string(&answer).unwrap_or_else(|_| "{\"ok\":false}".into());
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
        });
    }
}

async fn handle(request: Request, uid: Option<u32>, engine: &mpsc::Sender<Command>) -> Answer {
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
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
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
                ip: Ipv4Addr::new(10, 0, 1, 5)
            })
            .expect("json"),
            r#"{"cmd":"cancel","ip":"10.0.1.5"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"release_held"}"#).expect("parse"),
            Request::ReleaseHeld
        );
    }

    #[test]
    fn a_missing_socket_says_the_daemon_is_not_running() {
        let err = request(Path::new("/nonexistent/enisync.sock"), &Request::Status)
            .expect_err("no daemon");
        assert!(matches!(err, ControlError::NotRunning(_)), "{err}");
        assert!(err.to_string().contains("not running"));
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
