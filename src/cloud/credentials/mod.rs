//! API keys: where they come from, how temporary ones are refreshed, and how they are kept
//! out of logs.
//!
//! The chain, first match wins: systemd credentials (`$CREDENTIALS_DIRECTORY`) → keys from
//! the config → environment → the instance's CAM role via the metadata service. Static
//! keys are read once, when the provider is built (a reload builds a new provider); CAM
//! role keys are cached and refreshed [`REFRESH_MARGIN_SECS`] before they expire.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::clock::ServerClock;
use super::metadata::{MetadataClient, MetadataError};
// Transitional: callers outside `cloud::clock` (the client's tests, the integration tests)
// still name the clocks here.

/// CAM role keys are refreshed when fewer than this many seconds remain; it matches the
/// five-minute signature window, as in the official SDKs.
pub const REFRESH_MARGIN_SECS: i64 = 300;

/// Inside the margin, how long to wait before asking again when the service handed back
/// keys that are just as close to expiry (it has not rotated yet) or did not answer:
/// without it every API call in the last five minutes would fetch.
pub const REFRESH_RETRY_SECS: i64 = 30;

/// A secret string. `Debug` and `Display` print `***`; the value is only reachable through
/// [`Secret::expose`], so every use of it is visible in the code.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Only for signing and sending; never for logs or errors.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a set of keys came from (for logs and status; never the keys themselves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    Systemd,
    Config,
    Environment,
    CamRole(String),
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Systemd => f.write_str("systemd credentials"),
            Self::Config => f.write_str("config"),
            Self::Environment => f.write_str("environment"),
            Self::CamRole(role) => write!(f, "CAM role {role}"),
        }
    }
}

/// One set of API keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub secret_id: Secret,
    pub secret_key: Secret,
    /// Session token of temporary keys (`X-TC-Token` / legacy `Token`).
    pub token: Option<Secret>,
    /// Unix seconds when temporary keys expire; `None` for long-term keys.
    pub expires_at: Option<i64>,
    pub source: CredentialSource,
}

/// A failure to obtain keys.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "no API keys: none in $CREDENTIALS_DIRECTORY, the config or the environment, and no CAM role is bound to this instance"
    )]
    NoSource,
    #[error("{source_name} has {present} but not {missing}")]
    Incomplete {
        source_name: &'static str,
        present: &'static str,
        missing: &'static str,
    },
    #[error("reading {path}: {error}")]
    Read {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("CAM role credentials: {0}")]
    Metadata(#[from] MetadataError),
    #[error("CAM role {role}: the metadata service answered {detail}")]
    BadRoleAnswer { role: String, detail: String },
}

impl CredentialError {
    /// Whether trying again later may help (the metadata service was unreachable), as
    /// opposed to a configuration problem.
    pub fn is_transient(&self) -> bool {
        match self {
            // An oversized answer is a broken or hostile answer of the moment, like a 5xx.
            Self::Metadata(MetadataError::Transport { .. } | MetadataError::TooLarge { .. }) => {
                true
            }
            Self::Metadata(MetadataError::Status { status, .. }) => *status >= 500,
            _ => false,
        }
    }
}

/// Environment lookup, injectable so tests never touch the process environment.
pub type EnvLookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The inputs of the credential chain.
pub struct CredentialSources {
    /// `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), if set.
    pub systemd_dir: Option<PathBuf>,
    /// `(secret_id, secret_key)` from the config file.
    pub config_keys: Option<(Secret, Secret)>,
    /// Reads `TENCENTCLOUD_*` variables.
    pub env: EnvLookup,
    /// The metadata service for the CAM role; `None` disables that source.
    pub metadata: Option<MetadataClient>,
}

impl fmt::Debug for CredentialSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialSources")
            .field("systemd_dir", &self.systemd_dir)
            .field("config_keys", &self.config_keys)
            .field("metadata", &self.metadata.is_some())
            .finish_non_exhaustive()
    }
}

impl CredentialSources {
    /// The real environment of this process: `$CREDENTIALS_DIRECTORY` and `std::env`.
    pub fn from_process(
        config_keys: Option<(Secret, Secret)>,
        metadata: Option<MetadataClient>,
    ) -> Self {
        Self {
            systemd_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            config_keys,
            env: Box::new(|name| std::env::var(name).ok()),
            metadata,
        }
    }
}

/// Hands out current keys; refreshes CAM role keys; counts metadata fetches.
#[derive(Debug)]
pub struct CredentialProvider {
    inner: Inner,
    clock: Arc<ServerClock>,
    metadata_fetches: AtomicU64,
}

#[derive(Debug)]
enum Inner {
    Static(Arc<Credentials>),
    CamRole {
        metadata: MetadataClient,
        // Held across a fetch, so concurrent callers wait for one fetch instead of each
        // starting their own.
        cache: Mutex<CamCache>,
    },
}

#[derive(Debug, Default)]
struct CamCache {
    role: Option<String>,
    keys: Option<Arc<Credentials>>,
    /// When `keys` expire, on the monotonic clock: their `expires_at` converted once, when
    /// they were fetched, so a wall clock stepped later moves nothing.
    valid_until: Option<Instant>,
    /// From when `get` fetches again (while the keys are still valid); `None`: now.
    refresh_at: Option<Instant>,
}

/// The CAM role document (`cam/security-credentials/<role>`).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleDocument {
    tmp_secret_id: Option<Secret>,
    tmp_secret_key: Option<Secret>,
    token: Option<Secret>,
    expired_time: Option<i64>,
    code: Option<String>,
}

impl CredentialProvider {
    /// Resolves the chain. Static keys are read now; a CAM role is only looked up on first
    /// use (the metadata service may not be reachable yet at start).
    pub fn new(
        sources: CredentialSources,
        clock: Arc<ServerClock>,
    ) -> Result<Self, CredentialError> {
        let inner = if let Some(keys) = read_systemd(sources.systemd_dir.as_deref())? {
            Inner::Static(Arc::new(keys))
        } else if let Some((secret_id, secret_key)) = sources.config_keys {
            Inner::Static(Arc::new(Credentials {
                secret_id,
                secret_key,
                token: None,
                expires_at: None,
                source: CredentialSource::Config,
            }))
        } else if let Some(keys) = read_env(&sources.env)? {
            Inner::Static(Arc::new(keys))
        } else if let Some(metadata) = sources.metadata {
            Inner::CamRole {
                metadata,
                cache: Mutex::default(),
            }
        } else {
            return Err(CredentialError::NoSource);
        };
        Ok(Self {
            inner,
            clock,
            metadata_fetches: AtomicU64::new(0),
        })
    }

    /// The clock request timestamps use, and the conversion of key expiry to a deadline.
    pub fn clock(&self) -> &Arc<ServerClock> {
        &self.clock
    }

    /// How many times the CAM role document was requested from the metadata service.
    pub fn metadata_fetches(&self) -> u64 {
        self.metadata_fetches.load(Ordering::Relaxed)
    }

    /// Keys to sign the next request with. CAM role keys are refreshed when fewer than
    /// [`REFRESH_MARGIN_SECS`] remain; if that refresh fails, the old keys are used until
    /// they really expire.
    pub async fn get(&self) -> Result<Arc<Credentials>, CredentialError> {
        match &self.inner {
            Inner::Static(keys) => Ok(Arc::clone(keys)),
            Inner::CamRole { metadata, cache } => {
                let mut cache = cache.lock().await;
                let now = Instant::now();
                if let Some(keys) = &cache.keys {
                    if cache.refresh_at.is_some_and(|t| now < t)
                        && cache.valid_until.is_some_and(|t| t > now)
                    {
                        return Ok(Arc::clone(keys));
                    }
                }
                self.refresh(metadata, &mut cache, now).await
            }
        }
    }

    /// Fetches CAM role keys now, whatever their expiry says (the server rejected the
    /// token). Static keys cannot be refreshed: this is then a no-op, and the caller's one
    /// retry shows whether the problem was transient.
    pub async fn force_refresh(&self) -> Result<(), CredentialError> {
        if let Inner::CamRole { metadata, cache } = &self.inner {
            let mut cache = cache.lock().await;
            // The role may have been replaced too: look it up again.
            cache.role = None;
            let now = Instant::now();
            self.refresh(metadata, &mut cache, now).await?;
        }
        Ok(())
    }

    async fn refresh(
        &self,
        metadata: &MetadataClient,
        cache: &mut CamCache,
        now: Instant,
    ) -> Result<Arc<Credentials>, CredentialError> {
        let result = self.fetch(metadata, cache).await;
        let retry_at = now + secs(REFRESH_RETRY_SECS);
        match result {
            Ok(keys) => {
                tracing::info!(
                    source = %keys.source,
                    expires_at = keys.expires_at,
                    "fetched temporary API keys"
                );
                let keys = Arc::new(keys);
                let valid_until = keys.expires_at.map(|expires_at| {
                    monotonic_deadline(expires_at, self.clock.now_unix(), Instant::now())
                });
                // The next fetch is due at the margin, or soon if we are inside it.
                let margin_at = valid_until.map_or(now, |t| {
                    t.checked_sub(secs(REFRESH_MARGIN_SECS)).unwrap_or(now)
                });
                cache.refresh_at = Some(margin_at.max(retry_at));
                cache.valid_until = valid_until;
                cache.keys = Some(Arc::clone(&keys));
                Ok(keys)
            }
            Err(error) => match &cache.keys {
                Some(old) if cache.valid_until.is_some_and(|t| t > now) => {
                    tracing::warn!(%error, "refreshing CAM role keys failed; keeping the current ones until they expire");
                    cache.refresh_at = Some(retry_at);
                    Ok(Arc::clone(old))
                }
                _ => Err(error),
            },
        }
    }

    async fn fetch(
        &self,
        metadata: &MetadataClient,
        cache: &mut CamCache,
    ) -> Result<Credentials, CredentialError> {
        let role = match &cache.role {
            Some(role) => role.clone(),
            None => {
                let role = metadata
                    .cam_role()
                    .await?
                    .ok_or(CredentialError::NoSource)?;
                cache.role = Some(role.clone());
                role
            }
        };
        self.metadata_fetches.fetch_add(1, Ordering::Relaxed);
        let body = metadata.cam_credentials(&role).await?;
        parse_role_document(&role, body.as_deref())
    }
}

/// The instant on the monotonic clock at which keys the cloud says expire at `expires_unix`
/// expire: `expires_unix − wall_now + mono_now`, with both nows read together. Keys
/// already expired get `mono_now`.
fn monotonic_deadline(expires_unix: i64, wall_now: i64, mono_now: Instant) -> Instant {
    let remaining = expires_unix.saturating_sub(wall_now);
    mono_now
        .checked_add(secs(remaining))
        .unwrap_or_else(|| mono_now + Duration::from_secs(u64::from(u32::MAX)))
}

/// A whole number of seconds (negative: none).
fn secs(n: i64) -> Duration {
    Duration::from_secs(u64::try_from(n).unwrap_or(0))
}

/// A CAM role's credentials document (`None`: the service answered 404). Errors never
/// echo the body: it holds the keys.
pub(crate) fn parse_role_document(
    role: &str,
    body: Option<&str>,
) -> Result<Credentials, CredentialError> {
    let bad = |detail: &str| CredentialError::BadRoleAnswer {
        role: role.to_owned(),
        detail: detail.to_owned(),
    };
    let body = body.ok_or_else(|| bad("404"))?;
    let doc: RoleDocument = serde_json::from_str(body).map_err(|_| bad("a non-JSON body"))?;
    if doc.code.as_deref() != Some("Success") {
        return Err(bad(&format!("Code {:?}", doc.code.unwrap_or_default())));
    }
    match (
        doc.tmp_secret_id,
        doc.tmp_secret_key,
        doc.token,
        doc.expired_time,
    ) {
        (Some(secret_id), Some(secret_key), Some(token), Some(expires_at))
            if !secret_id.0.is_empty() && !secret_key.0.is_empty() =>
        {
            Ok(Credentials {
                secret_id,
                secret_key,
                token: Some(token).filter(|t| !t.0.is_empty()),
                expires_at: Some(expires_at),
                source: CredentialSource::CamRole(role.to_owned()),
            })
        }
        _ => Err(bad("a document with missing fields")),
    }
}

const SYSTEMD_ID: &str = "tencentcloud_secret_id";
const SYSTEMD_KEY: &str = "tencentcloud_secret_key";
const SYSTEMD_TOKEN: &str = "tencentcloud_session_token";
const ENV_ID: &str = "TENCENTCLOUD_SECRET_ID";
const ENV_KEY: &str = "TENCENTCLOUD_SECRET_KEY";
const ENV_TOKEN: &str = "TENCENTCLOUD_SESSION_TOKEN";

fn read_systemd(dir: Option<&Path>) -> Result<Option<Credentials>, CredentialError> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let read = |name: &str| -> Result<Option<Secret>, CredentialError> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(non_empty(text)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(CredentialError::Read { path, error }),
        }
    };
    let pair = complete_pair(
        "$CREDENTIALS_DIRECTORY",
        read(SYSTEMD_ID)?,
        read(SYSTEMD_KEY)?,
        (SYSTEMD_ID, SYSTEMD_KEY),
    )?;
    Ok(match pair {
        Some((secret_id, secret_key)) => Some(Credentials {
            secret_id,
            secret_key,
            token: read(SYSTEMD_TOKEN)?,
            expires_at: None,
            source: CredentialSource::Systemd,
        }),
        None => None,
    })
}

fn read_env(env: &EnvLookup) -> Result<Option<Credentials>, CredentialError> {
    let read = |name: &str| env(name).and_then(non_empty);
    let pair = complete_pair(
        "the environment",
        read(ENV_ID),
        read(ENV_KEY),
        (ENV_ID, ENV_KEY),
    )?;
    Ok(pair.map(|(secret_id, secret_key)| Credentials {
        secret_id,
        secret_key,
        token: read(ENV_TOKEN),
        expires_at: None,
        source: CredentialSource::Environment,
    }))
}

/// Both halves or neither: half a key pair is a mistake the operator must hear about,
/// not a reason to fall through to another source silently.
fn complete_pair(
    source_name: &'static str,
    id: Option<Secret>,
    key: Option<Secret>,
    (id_name, key_name): (&'static str, &'static str),
) -> Result<Option<(Secret, Secret)>, CredentialError> {
    match (id, key) {
        (Some(id), Some(key)) => Ok(Some((id, key))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(CredentialError::Incomplete {
            source_name,
            present: id_name,
            missing: key_name,
        }),
        (None, Some(_)) => Err(CredentialError::Incomplete {
            source_name,
            present: key_name,
            missing: id_name,
        }),
    }
}

fn non_empty(text: String) -> Option<Secret> {
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| Secret::new(trimmed))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests;
