//! A fake Tencent Cloud for enisync's tests and demo: one real HTTP server that serves
//!
//! 1. the instance **metadata service** under `/latest/meta-data/` (answering by the
//!    caller's source address, with rotating CAM role keys),
//! 2. **VPC API 3.0** at `POST /` (TC3-HMAC-SHA256 verified with `enisync::cloud::sign`),
//! 3. the **legacy VPC API** at `/v2/index.php` (HmacSHA1/HmacSHA256),
//!
//! over one shared world of instances, ENIs, private IPs, keys and asynchronous tasks,
//! with fault injection and a log of every call.
//!
//! ```no_run
//! use std::net::{Ipv4Addr, TcpListener};
//! use enisync_fakecloud::{FakeCloud, FakeEni, FakeInstance};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let cloud = FakeCloud::new();
//! cloud.add_instance(FakeInstance::new("ins-1", "ap-guangzhou")).unwrap();
//! cloud
//!     .add_eni(
//!         FakeEni::new("eni-1", "52:54:00:12:34:56", "vpc-1", "subnet-1", "10.0.1.0/24",
//!                      Ipv4Addr::new(10, 0, 1, 10))
//!             .attached("ins-1", 1)
//!             .secondaries([Ipv4Addr::new(10, 0, 1, 11)]),
//!     )
//!     .unwrap();
//! cloud.add_key("AKIDexample", "secret");
//! let server = cloud.serve(TcpListener::bind("127.0.0.1:0")?)?;
//! println!("metadata at {}", server.metadata_endpoint());
//! # Ok(()) }
//! ```
//!
//! `FakeCloud` is cheap to clone; every clone sees the same state. The crate's
//! `README.md` states the whole contract: scenario format, error codes, fault kinds.

mod auth;
mod calls;
mod claims;
mod events;
mod faults;
mod legacy;
mod limits;
mod metadata;
mod ops;
mod scenario;
mod server;
mod state;
mod tls;
mod v3;

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use auth::{LEGACY_PATH, SERVICE};
pub use calls::{Call, Surface};
pub use claims::MAX_CLIENT_TOKEN_LEN;
pub use events::{EventKind, FakeEvent, monotonic, monotonic_ns};
pub use faults::{Fault, FaultRule};
pub use legacy::legacy_code_for;
pub use limits::{LimitScope, LimitWindow, RateLimits};
pub use metadata::PREFIX as METADATA_PREFIX;
pub use ops::MAX_IPS_PER_CALL;
pub use scenario::{EniSpec, IpSpec, KeySpec, Scenario};
pub use server::FakeServer;
pub use state::{
    Cidr, FakeAttachment, FakeEni, FakeInstance, FakeIp, FakeIpv6, FakeTask, FakeTaskStatus,
    ip_state,
};
pub use tls::TlsConfig;
pub use v3::VERSION as API_VERSION;

use state::{Key, World};

/// Called with every logged call (the binary prints them).
pub type CallObserver = Arc<dyn Fn(&Call) + Send + Sync>;

/// A CAM role key as the metadata service last handed it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CamKey {
    pub secret_id: String,
    pub secret_key: String,
    pub token: String,
    /// Unix seconds (`ExpiredTime`).
    pub expired_time: i64,
}

/// The fake cloud: shared state plus the ability to serve it. See the crate docs.
#[derive(Clone, Default)]
pub struct FakeCloud {
    world: Arc<Mutex<World>>,
    observer: Arc<Mutex<Option<CallObserver>>>,
    /// Bytes of huge bodies ([`Fault::HugeBody`]) handed to the connection so far.
    streamed: Arc<std::sync::atomic::AtomicU64>,
}

impl fmt::Debug for FakeCloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeCloud").finish_non_exhaustive()
    }
}

impl FakeCloud {
    /// An empty cloud: no instances, ENIs or keys; tasks take 200 ms; CAM keys rotate
    /// hourly; the clock is the wall clock.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, World> {
        // A panic elsewhere must not take the fake down with it.
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn with_world<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        f(&mut self.lock())
    }

    /// Ends every task whose time is up.
    pub(crate) fn settle(&self) {
        self.lock().settle();
    }

    pub(crate) fn notify(&self, call: &Call) {
        let observer = self
            .observer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(observer) = observer {
            observer(call);
        }
    }

    // ----- setup -------------------------------------------------------------------

    /// Registers an instance. Fails on a duplicate id.
    pub fn add_instance(&self, mut instance: FakeInstance) -> Result<(), String> {
        if instance.zone.is_empty() {
            instance.zone = format!("{}-1", instance.region);
        }
        let mut world = self.lock();
        if world.instances.contains_key(&instance.id) {
            return Err(format!("{}: duplicate instance id", instance.id));
        }
        world.instances.insert(instance.id.clone(), instance);
        Ok(())
    }

    /// Registers an ENI (MAC normalised to upper case). Fails on a bad MAC or CIDR, a
    /// duplicate id or MAC, not exactly one primary IP, an IP outside the subnet, or an
    /// IP another ENI already owns.
    pub fn add_eni(&self, eni: FakeEni) -> Result<(), String> {
        self.lock().add_eni(eni)
    }

    /// Removes an ENI with all its IPs.
    pub fn remove_eni(&self, eni_id: &str) -> Option<FakeEni> {
        self.lock().enis.remove(eni_id)
    }

    /// Accepts a long-term key pair.
    pub fn add_key(&self, secret_id: &str, secret_key: &str) {
        self.lock().keys.insert(
            secret_id.to_string(),
            Key {
                secret_key: secret_key.to_string(),
                token: None,
                expires_ms: None,
            },
        );
    }

    /// Accepts a temporary key pair that must come with `token` and expires after
    /// `valid_for` (fake clock).
    pub fn add_temporary_key(
        &self,
        secret_id: &str,
        secret_key: &str,
        token: &str,
        valid_for: Duration,
    ) {
        let mut world = self.lock();
        let expires = world
            .now_ms()
            .saturating_add(i64::try_from(valid_for.as_millis()).unwrap_or(i64::MAX));
        world.keys.insert(
            secret_id.to_string(),
            Key {
                secret_key: secret_key.to_string(),
                token: Some(token.to_string()),
                expires_ms: Some(expires),
            },
        );
    }

    /// Forgets a key (its requests then get `AuthFailure.SecretIdNotFound`).
    pub fn remove_key(&self, secret_id: &str) {
        self.lock().keys.remove(secret_id);
    }

    /// Registers another source address for an instance's metadata requests.
    pub fn add_source_ip(&self, instance_id: &str, ip: std::net::IpAddr) -> Result<(), String> {
        let mut world = self.lock();
        let inst = world
            .instances
            .get_mut(instance_id)
            .ok_or_else(|| format!("{instance_id}: no such instance"))?;
        inst.source_ips.push(ip);
        Ok(())
    }

    /// Binds (or with `None` unbinds) a CAM role to an instance.
    pub fn set_cam_role(&self, instance_id: &str, role: Option<&str>) -> Result<(), String> {
        let mut world = self.lock();
        let inst = world
            .instances
            .get_mut(instance_id)
            .ok_or_else(|| format!("{instance_id}: no such instance"))?;
        inst.cam_role = role.map(str::to_string);
        Ok(())
    }

    /// How long each CAM role key lives; a new one is issued when it has passed
    /// (`ExpiredTime` = issue time + period). Default one hour.
    pub fn set_cam_rotation(&self, period: Duration) {
        self.lock().cam_rotation = period;
    }

    /// Lets CAM keys live `lifetime` instead of one rotation period, so that an old
    /// key is still valid for a while after the next one was issued.
    pub fn set_cam_key_lifetime(&self, lifetime: Duration) {
        self.lock().cam_lifetime = Some(lifetime);
    }

    /// The CAM key last handed out to `instance_id`, if any (does not issue one).
    pub fn cam_key(&self, instance_id: &str) -> Option<CamKey> {
        self.lock().cam_keys.get(instance_id).map(|k| CamKey {
            secret_id: k.secret_id.clone(),
            secret_key: k.secret_key.clone(),
            token: k.token.clone(),
            expired_time: k.expires_ms.div_euclid(1000),
        })
    }

    // ----- behaviour knobs ------------------------------------------------------------

    /// How long tasks created from now on stay RUNNING (default 200 ms; zero ends them
    /// at once).
    pub fn set_task_duration(&self, duration: Duration) {
        self.lock().task_duration = duration;
    }

    /// Shifts the fake's clock (signature windows, CAM expiry) by `secs` from the wall
    /// clock; ±400 provokes `AuthFailure.SignatureExpire` for a correct client.
    pub fn set_clock_offset_secs(&self, secs: i64) {
        self.lock().clock_offset_ms = secs.saturating_mul(1000);
    }

    /// The fake's clock, Unix seconds.
    pub fn now_unix(&self) -> i64 {
        self.lock().now_s()
    }

    /// Sets the state of an IP (`PENDING`, `MIGRATING`, `AVAILABLE`, `DELETING`).
    pub fn set_ip_state(&self, ip: Ipv4Addr, state: &str) -> Result<(), String> {
        self.with_ip(ip, |entry| entry.state = state.to_string())
    }

    /// Binds an EIP (`AddressId`, optional public address) to a private IP.
    pub fn bind_eip(
        &self,
        ip: Ipv4Addr,
        address_id: &str,
        public_ip: Option<Ipv4Addr>,
    ) -> Result<(), String> {
        self.with_ip(ip, |entry| {
            entry.eip = Some(address_id.to_string());
            entry.public_ip = public_ip;
        })
    }

    /// Unbinds the EIP of a private IP.
    pub fn unbind_eip(&self, ip: Ipv4Addr) -> Result<(), String> {
        self.with_ip(ip, |entry| {
            entry.eip = None;
            entry.public_ip = None;
        })
    }

    fn with_ip(&self, ip: Ipv4Addr, f: impl FnOnce(&mut FakeIp)) -> Result<(), String> {
        let mut world = self.lock();
        world.settle();
        let entry = world
            .enis
            .values_mut()
            .find_map(|eni| eni.ip_mut(ip))
            .ok_or_else(|| format!("{ip}: not assigned to any ENI"))?;
        f(entry);
        Ok(())
    }

    /// Sets an ENI's state (`AVAILABLE`, `ATTACHING`, `DETACHING`…); mutating calls
    /// on an ENI that is not AVAILABLE get `UnsupportedOperation.InvalidState`.
    pub fn set_eni_state(&self, eni_id: &str, state: &str) -> Result<(), String> {
        let mut world = self.lock();
        let eni = world
            .enis
            .get_mut(eni_id)
            .ok_or_else(|| format!("{eni_id}: no such ENI"))?;
        eni.state = state.to_string();
        Ok(())
    }

    /// Attaches (or with `None` detaches) an ENI at once.
    pub fn set_attachment(
        &self,
        eni_id: &str,
        attachment: Option<(&str, u32)>,
    ) -> Result<(), String> {
        let mut world = self.lock();
        let eni = world
            .enis
            .get_mut(eni_id)
            .ok_or_else(|| format!("{eni_id}: no such ENI"))?;
        eni.attachment = attachment.map(|(instance_id, device_index)| FakeAttachment {
            instance_id: instance_id.to_string(),
            device_index,
        });
        Ok(())
    }

    /// Gives `eni_id` another AVAILABLE secondary IP at once (no task).
    pub fn add_secondary_ip(&self, eni_id: &str, ip: Ipv4Addr) -> Result<(), String> {
        let mut world = self.lock();
        world.settle();
        if let Some(owner) = world.owner_of(ip) {
            return Err(format!("{ip}: already on {}", owner.id));
        }
        let eni = world
            .enis
            .get_mut(eni_id)
            .ok_or_else(|| format!("{eni_id}: no such ENI"))?;
        if !eni.cidr().is_some_and(|c| c.contains(ip)) {
            return Err(format!("{ip}: outside {}", eni.subnet_cidr));
        }
        eni.ips.push(FakeIp::new(ip, false));
        Ok(())
    }

    /// Gives `eni_id` another `Ipv6AddressSet` entry at once (no task).
    pub fn add_ipv6(&self, eni_id: &str, entry: FakeIpv6) -> Result<(), String> {
        let mut world = self.lock();
        world.settle();
        if let Some(owner) = world.enis.values().find(|e| e.ipv6(entry.addr).is_some()) {
            return Err(format!("{}: already on {}", entry.addr, owner.id));
        }
        world
            .enis
            .get_mut(eni_id)
            .ok_or_else(|| format!("{eni_id}: no such ENI"))?
            .ipv6
            .push(entry);
        Ok(())
    }

    /// Moves a secondary IP to `dst_eni` at once (no task), as another instance's
    /// `MigratePrivateIpAddress` would: the keepalived takeover, done behind the
    /// client's back.
    pub fn move_ip(&self, ip: Ipv4Addr, dst_eni: &str) -> Result<(), String> {
        let mut world = self.lock();
        world.settle();
        if !world.enis.contains_key(dst_eni) {
            return Err(format!("{dst_eni}: no such ENI"));
        }
        let entry = world
            .enis
            .values_mut()
            .find_map(|eni| {
                let pos = eni.ips.iter().position(|e| e.addr == ip && !e.primary)?;
                Some(eni.ips.remove(pos))
            })
            .ok_or_else(|| format!("{ip}: not a secondary IP of any ENI"))?;
        if let Some(dst) = world.enis.get_mut(dst_eni) {
            dst.ips.push(entry);
        }
        Ok(())
    }

    // ----- faults ------------------------------------------------------------------

    /// The next `times` API calls (3.0 or legacy) of `action` (`*`: any action) get
    /// `fault`. Faults apply after authentication.
    pub fn inject(&self, action: &str, fault: Fault, times: u32) {
        self.lock().faults.add(None, action, fault, times);
    }

    /// Like [`FakeCloud::inject`], for one surface only. For [`Surface::Metadata`],
    /// `action` is a path prefix below `meta-data/` (`cam/security-credentials/`), or
    /// `*`.
    pub fn inject_on(&self, surface: Surface, action: &str, fault: Fault, times: u32) {
        self.lock().faults.add(Some(surface), action, fault, times);
    }

    /// The next task created by `action` (`*`: any mutating action) ends FAILED.
    pub fn fail_next_task(&self, action: &str) {
        self.inject(action, Fault::TaskFails, 1);
    }

    /// The pending fault rules with their remaining counts.
    pub fn faults(&self) -> Vec<FaultRule> {
        self.lock().faults.rules.clone()
    }

    /// Bytes of [`Fault::HugeBody`] bodies handed to connections so far: what a client
    /// that stops reading early never made the fake produce.
    pub fn streamed_bytes(&self) -> u64 {
        self.streamed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drops every pending fault.
    pub fn clear_faults(&self) {
        self.lock().faults.rules.clear();
    }

    // ----- tasks -------------------------------------------------------------------

    /// Every task so far, oldest first.
    pub fn tasks(&self) -> Vec<FakeTask> {
        let mut world = self.lock();
        world.settle();
        world.tasks.iter().map(|t| t.view.clone()).collect()
    }

    /// A task by its RequestId.
    pub fn task(&self, request_id: &str) -> Option<FakeTask> {
        let mut world = self.lock();
        world.settle();
        world.task_by_request_id(request_id).cloned()
    }

    /// Ends every running task now (with its planned outcome).
    pub fn finish_running_tasks(&self) {
        self.lock().finish_all();
    }

    // ----- call log ------------------------------------------------------------------

    /// Every call so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The API calls (3.0 and legacy) of `action`, or metadata calls of exactly that path.
    pub fn calls_of(&self, action: &str) -> Vec<Call> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.action == action)
            .cloned()
            .collect()
    }

    /// Forgets the call log (the credential fetch counter too).
    pub fn clear_calls(&self) {
        let mut world = self.lock();
        world.calls.clear();
        world.cam_fetches = 0;
    }

    /// Makes the metadata service answer `path` (below `meta-data/`, e.g.
    /// `network/interfaces/macs/52:54:00:12:34:56/primary-local-ipv4`) with `body`, or
    /// 404 with `None`, whatever the ENIs say: a metadata service that disagrees with
    /// `DescribeNetworkInterfaces`. A listing's body is its lines (`10.0.1.10/\n…`).
    pub fn set_metadata_override(&self, path: &str, body: Option<&str>) {
        self.lock().metadata_overrides.insert(
            path.trim_end_matches('/').to_string(),
            body.map(str::to_string),
        );
    }

    /// Drops every metadata override: the service agrees with the ENIs again.
    pub fn clear_metadata_overrides(&self) {
        self.lock().metadata_overrides.clear();
    }

    /// How many CAM role documents (`cam/security-credentials/<role>`) were served.
    pub fn metadata_credential_fetches(&self) -> u64 {
        self.lock().cam_fetches
    }

    /// Records events (requests, task ends, binding moves; `events.rs`) from now on,
    /// keeping the newest `cap` (0 stops recording).
    pub fn record_events(&self, cap: usize) {
        self.lock().events.enable(cap);
    }

    /// The recorded events after `seq` (after ending due tasks), oldest first.
    pub fn events_since(&self, seq: u64) -> Vec<FakeEvent> {
        let mut world = self.lock();
        world.settle();
        world.events.since(seq)
    }

    /// How many recorded events were dropped to stay within the cap.
    pub fn events_dropped(&self) -> u64 {
        self.lock().events.dropped()
    }

    /// Calls `observer` with every logged call, outside the state lock.
    pub fn set_call_observer(&self, observer: impl Fn(&Call) + Send + Sync + 'static) {
        *self.observer.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(observer));
    }

    // ----- state readers -------------------------------------------------------------

    /// An ENI as it is now (after ending due tasks).
    pub fn eni(&self, eni_id: &str) -> Option<FakeEni> {
        let mut world = self.lock();
        world.settle();
        world.enis.get(eni_id).cloned()
    }

    /// Every ENI, by id.
    pub fn enis(&self) -> Vec<FakeEni> {
        let mut world = self.lock();
        world.settle();
        world.enis.values().cloned().collect()
    }

    /// The IPs of an ENI, primary first (empty for an unknown ENI).
    pub fn ips_of(&self, eni_id: &str) -> Vec<Ipv4Addr> {
        self.eni(eni_id)
            .map(|eni| eni.ips.iter().map(|ip| ip.addr).collect())
            .unwrap_or_default()
    }

    /// The IPv6 addresses of an ENI (empty for an unknown ENI).
    pub fn ipv6_of(&self, eni_id: &str) -> Vec<std::net::Ipv6Addr> {
        self.eni(eni_id)
            .map(|eni| eni.ipv6.iter().map(|ip| ip.addr).collect())
            .unwrap_or_default()
    }

    /// The ENI holding `ip`.
    pub fn owner_of(&self, ip: Ipv4Addr) -> Option<String> {
        let mut world = self.lock();
        world.settle();
        world.owner_of(ip).map(|eni| eni.id.clone())
    }

    /// An instance.
    pub fn instance(&self, instance_id: &str) -> Option<FakeInstance> {
        self.lock().instances.get(instance_id).cloned()
    }

    /// Everything, as JSON (what `GET /_fake/state` serves). Secrets are left out.
    pub fn state_json(&self) -> serde_json::Value {
        let mut world = self.lock();
        world.settle();
        serde_json::json!({
            "now_unix": world.now_s(),
            "clock_offset_ms": world.clock_offset_ms,
            "task_duration_ms": u64::try_from(world.task_duration.as_millis()).unwrap_or(u64::MAX),
            "cam_rotation_ms": u64::try_from(world.cam_rotation.as_millis()).unwrap_or(u64::MAX),
            "cam_credential_fetches": world.cam_fetches,
            "instances": world.instances.values().collect::<Vec<_>>(),
            "enis": world.enis.values().collect::<Vec<_>>(),
            "keys": world.keys.iter().map(|(id, k)| serde_json::json!({
                "secret_id": id, "temporary": k.token.is_some(), "expires_ms": k.expires_ms,
            })).collect::<Vec<_>>(),
            "tasks": world.tasks.iter().map(|t| &t.view).collect::<Vec<_>>(),
            "faults": world.faults.rules,
            "calls": world.calls.len(),
        })
    }
}

impl World {
    /// Appends a call to the log, numbering it.
    pub(crate) fn log(&mut self, mut call: Call) -> Call {
        call.seq = self.next_call_seq();
        self.calls.push(call.clone());
        call
    }
}
