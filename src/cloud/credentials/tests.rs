use std::collections::HashMap;
use std::sync::Mutex as StdMutex;

use super::super::metadata::MetadataSettings;
use super::super::test_http::TestServer;
use super::*;

fn no_env() -> EnvLookup {
    Box::new(|_| None)
}

fn env(vars: &[(&'static str, &'static str)]) -> EnvLookup {
    let vars: HashMap<_, _> = vars.iter().copied().collect();
    Box::new(move |name| vars.get(name).map(|v| (*v).to_owned()))
}

fn clock(now: i64) -> Arc<ServerClock> {
    Arc::new(ServerClock::fixed(now))
}

/// The test's time: the wall clock the cloud's expiry is read against, and tokio's
/// monotonic clock the provider's deadlines run on, moved together.
struct TestTime {
    wall: Arc<ServerClock>,
    now: i64,
}

impl TestTime {
    fn new(now: i64) -> Self {
        Self {
            wall: clock(now),
            now,
        }
    }

    /// Moves both clocks to `now`. Tokio's clock is paused only for the step: the fake
    /// metadata service answers over real sockets, and a clock left paused would jump
    /// to the HTTP client's timeouts whenever the runtime waits for them.
    async fn set(&mut self, now: i64) {
        let step = now - self.now;
        self.now = now;
        self.wall.advance_wall(step);
        tokio::time::pause();
        tokio::time::advance(secs(step)).await;
        tokio::time::resume();
    }
}

fn sources(
    dir: Option<PathBuf>,
    config: Option<(&str, &str)>,
    env: EnvLookup,
) -> CredentialSources {
    CredentialSources {
        systemd_dir: dir,
        config_keys: config.map(|(id, key)| (Secret::new(id), Secret::new(key))),
        env,
        metadata: None,
    }
}

fn temp_dir(files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "enisync-creds-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
    dir
}

#[test]
fn secrets_never_print() {
    let secret = Secret::new("hunter2");
    assert_eq!(format!("{secret} {secret:?}"), "*** ***");
    let creds = Credentials {
        secret_id: Secret::new("AKIDxyz"),
        secret_key: Secret::new("topsecret"),
        token: Some(Secret::new("tok")),
        expires_at: None,
        source: CredentialSource::Config,
    };
    let debug = format!("{creds:?}");
    assert!(
        !debug.contains("topsecret") && !debug.contains("tok\""),
        "{debug}"
    );
    assert_eq!(secret.expose(), "hunter2");
    let parsed: Secret = serde_json::from_str("\"abc\"").unwrap();
    assert_eq!(parsed.expose(), "abc");
}

#[tokio::test]
async fn chain_order_is_systemd_config_environment() {
    let clk = clock(0);
    let dir = temp_dir(&[
        (SYSTEMD_ID, "sd-id\n"),
        (SYSTEMD_KEY, "sd-key\n"),
        (SYSTEMD_TOKEN, "sd-token"),
    ]);
    let full_env = || env(&[(ENV_ID, "env-id"), (ENV_KEY, "env-key")]);

    let p = CredentialProvider::new(
        sources(Some(dir.clone()), Some(("cfg-id", "cfg-key")), full_env()),
        Arc::clone(&clk),
    )
    .unwrap();
    let k = p.get().await.unwrap();
    assert_eq!(k.source, CredentialSource::Systemd);
    assert_eq!(k.secret_id.expose(), "sd-id");
    assert_eq!(k.secret_key.expose(), "sd-key");
    assert_eq!(k.token.as_ref().map(Secret::expose), Some("sd-token"));

    let empty = temp_dir(&[]);
    let p = CredentialProvider::new(
        sources(Some(empty), Some(("cfg-id", "cfg-key")), full_env()),
        Arc::clone(&clk),
    )
    .unwrap();
    assert_eq!(p.get().await.unwrap().source, CredentialSource::Config);

    let p = CredentialProvider::new(sources(None, None, full_env()), Arc::clone(&clk)).unwrap();
    let k = p.get().await.unwrap();
    assert_eq!(k.source, CredentialSource::Environment);
    assert_eq!(k.secret_key.expose(), "env-key");
    assert!(k.token.is_none());

    let err = CredentialProvider::new(sources(None, None, no_env()), clk).unwrap_err();
    assert!(matches!(err, CredentialError::NoSource));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn half_a_key_pair_is_an_error_not_a_fall_through() {
    let clk = clock(0);
    let dir = temp_dir(&[(SYSTEMD_ID, "sd-id")]);
    let err = CredentialProvider::new(
        sources(Some(dir.clone()), Some(("a", "b")), no_env()),
        Arc::clone(&clk),
    )
    .unwrap_err();
    assert!(matches!(err, CredentialError::Incomplete { .. }), "{err}");
    let err = CredentialProvider::new(sources(None, None, env(&[(ENV_KEY, "only-key")])), clk)
        .unwrap_err();
    assert!(err.to_string().contains(ENV_ID), "{err}");
    assert!(!err.to_string().contains("only-key"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// A metadata service whose role document the test controls.
struct FakeMetadata {
    doc: Arc<StdMutex<(u16, String)>>,
    base: String,
    _server: TestServer,
}

impl FakeMetadata {
    async fn start() -> Self {
        let doc = Arc::new(StdMutex::new((200, String::new())));
        let served = Arc::clone(&doc);
        let server = TestServer::start(move |req| match req.path.as_str() {
            "/cam/security-credentials/" => (200, "the-role".to_owned()),
            "/cam/security-credentials/the-role" => served.lock().unwrap().clone(),
            _ => (404, String::new()),
        })
        .await;
        Self {
            doc,
            base: format!("{}/", server.base),
            _server: server,
        }
    }

    fn set(&self, status: u16, id: &str, expires: i64) {
        *self.doc.lock().unwrap() = (
            status,
            format!(
                r#"{{"TmpSecretId":"{id}","TmpSecretKey":"key-{id}","ExpiredTime":{expires},"Expiration":"x","Token":"token-{id}","Code":"Success"}}"#
            ),
        );
    }

    fn provider(&self, clock: Arc<ServerClock>) -> CredentialProvider {
        let metadata = MetadataClient::new(&MetadataSettings {
            base_url: self.base.clone(),
            attempts: 1,
            backoff: Duration::from_millis(1),
            ..MetadataSettings::default()
        })
        .unwrap();
        CredentialProvider::new(
            CredentialSources {
                systemd_dir: None,
                config_keys: None,
                env: no_env(),
                metadata: Some(metadata),
            },
            clock,
        )
        .unwrap()
    }
}

#[tokio::test]
async fn cam_keys_are_cached_refreshed_before_expiry_and_kept_on_failure() {
    let md = FakeMetadata::start().await;
    let mut time = TestTime::new(1_000);
    md.set(200, "one", 2_000);
    let p = md.provider(Arc::clone(&time.wall));

    let k = p.get().await.unwrap();
    assert_eq!(k.secret_id.expose(), "one");
    assert_eq!(k.token.as_ref().map(Secret::expose), Some("token-one"));
    assert_eq!(k.source, CredentialSource::CamRole("the-role".into()));
    // Cached while more than 300 s remain.
    time.set(1_699).await;
    assert_eq!(p.get().await.unwrap().secret_id.expose(), "one");
    assert_eq!(p.metadata_fetches(), 1);

    // Inside the margin: refreshed.
    md.set(200, "two", 3_000);
    time.set(1_700).await;
    assert_eq!(p.get().await.unwrap().secret_id.expose(), "two");
    assert_eq!(p.metadata_fetches(), 2);

    // Inside the margin, a service that has not rotated yet is asked again only
    // every REFRESH_RETRY_SECS, not on every call.
    time.set(2_750).await;
    assert_eq!(p.get().await.unwrap().secret_id.expose(), "two");
    assert_eq!(p.metadata_fetches(), 3);
    time.set(2_750 + REFRESH_RETRY_SECS - 1).await;
    p.get().await.unwrap();
    assert_eq!(p.metadata_fetches(), 3);

    // A failing refresh keeps the old keys while they are valid...
    md.set(500, "x", 0);
    time.set(2_800).await;
    assert_eq!(p.get().await.unwrap().secret_id.expose(), "two");
    assert_eq!(p.metadata_fetches(), 4);
    // ...and not after they expired.
    time.set(3_000).await;
    let err = p.get().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
}

#[tokio::test]
async fn force_refresh_fetches_even_fresh_keys_and_a_bad_code_is_refused() {
    let md = FakeMetadata::start().await;
    let clk = clock(1_000);
    md.set(200, "one", 9_000);
    let p = md.provider(clk);
    p.get().await.unwrap();
    md.set(200, "two", 9_000);
    p.force_refresh().await.unwrap();
    assert_eq!(p.get().await.unwrap().secret_id.expose(), "two");
    assert_eq!(p.metadata_fetches(), 2);

    let md = FakeMetadata::start().await;
    *md.doc.lock().unwrap() = (200, r#"{"Code":"Failed","TmpSecretKey":"leak"}"#.into());
    let clk = clock(1_000);
    let err = md.provider(clk).get().await.unwrap_err();
    assert!(
        matches!(err, CredentialError::BadRoleAnswer { .. }),
        "{err}"
    );
    assert!(!err.is_transient());
    assert!(!err.to_string().contains("leak"), "{err}");
}
