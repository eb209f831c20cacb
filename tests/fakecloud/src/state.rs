//! The fake cloud's world: instances, ENIs and their IPs, API keys, CAM role keys, tasks,
//! the call log and the clock. Everything here is plain data behind one mutex (see
//! [`crate::FakeCloud`]); the HTTP surfaces only translate requests into calls on [`World`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::calls::Call;
use crate::faults::Faults;

/// IP state names as `PrivateIpAddressSpecification.State` spells them.
pub mod ip_state {
    /// Being created (a fresh `AssignPrivateIpAddresses`).
    pub const PENDING: &str = "PENDING";
    /// Being moved to another ENI.
    pub const MIGRATING: &str = "MIGRATING";
    /// Being returned (a running `UnassignPrivateIpAddresses`).
    pub const DELETING: &str = "DELETING";
    /// Usable.
    pub const AVAILABLE: &str = "AVAILABLE";
}

/// A CVM instance as the fake knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeInstance {
    /// `ins-…`.
    pub id: String,
    /// `ap-guangzhou`.
    pub region: String,
    /// `ap-guangzhou-3` (`<region>-1` when registered empty).
    #[serde(default)]
    pub zone: String,
    /// The source addresses this instance's metadata requests come from. Ignored while
    /// the fake holds exactly one instance (it then answers every caller).
    #[serde(default)]
    pub source_ips: Vec<IpAddr>,
    /// The CAM role bound to the instance (`cam/security-credentials/`), if any.
    #[serde(default)]
    pub cam_role: Option<String>,
}

impl FakeInstance {
    /// An instance in `region`, zone `<region>-1`, no source addresses, no role.
    pub fn new(id: impl Into<String>, region: impl Into<String>) -> Self {
        let region = region.into();
        Self {
            id: id.into(),
            zone: format!("{region}-1"),
            region,
            source_ips: Vec::new(),
            cam_role: None,
        }
    }

    /// Sets the availability zone.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = zone.into();
        self
    }

    /// Adds a source address the instance's metadata requests come from.
    pub fn source_ip(mut self, ip: IpAddr) -> Self {
        self.source_ips.push(ip);
        self
    }

    /// Binds a CAM role.
    pub fn cam_role(mut self, role: impl Into<String>) -> Self {
        self.cam_role = Some(role.into());
        self
    }
}

/// Which instance holds an ENI, at which device index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeAttachment {
    pub instance_id: String,
    pub device_index: u32,
}

/// One private IP of an ENI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeIp {
    pub addr: Ipv4Addr,
    /// The ENI's primary IP (exactly one per ENI).
    pub primary: bool,
    /// One of [`ip_state`].
    pub state: String,
    /// `AddressId` of a bound EIP (`eip-…`).
    pub eip: Option<String>,
    /// The public address of that EIP.
    pub public_ip: Option<Ipv4Addr>,
}

impl FakeIp {
    /// An AVAILABLE IP without EIP.
    pub fn new(addr: Ipv4Addr, primary: bool) -> Self {
        Self {
            addr,
            primary,
            state: ip_state::AVAILABLE.to_string(),
            eip: None,
            public_ip: None,
        }
    }
}

/// One entry of an ENI's `Ipv6AddressSet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeIpv6 {
    pub addr: Ipv6Addr,
    /// The ENI's primary IPv6 address: `UnassignIpv6Addresses` refuses it.
    pub primary: bool,
    /// One of [`ip_state`].
    pub state: String,
    /// `AddressId` of the bound public access (`eip-…`), if any.
    pub address_id: Option<String>,
    /// `GUA` or `ULA`.
    pub address_type: String,
    /// How the listing spells the address (e.g. with leading zeros); `None`: the
    /// canonical form. Clients must compare 128-bit values, not strings.
    pub spelling: Option<String>,
}

impl FakeIpv6 {
    /// An AVAILABLE, non-primary GUA without public access.
    pub fn new(addr: Ipv6Addr) -> Self {
        Self {
            addr,
            primary: false,
            state: ip_state::AVAILABLE.to_string(),
            address_id: None,
            address_type: "GUA".to_string(),
            spelling: None,
        }
    }
}

/// An ENI and its IPs. Built with [`FakeEni::new`] and the builder methods, registered
/// with [`crate::FakeCloud::add_eni`], read back with [`crate::FakeCloud::eni`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeEni {
    /// `eni-…`.
    pub id: String,
    /// Upper-case hex with colons once registered (the spelling of the real service).
    pub mac: String,
    pub vpc_id: String,
    pub subnet_id: String,
    /// `10.0.1.0/24`.
    pub subnet_cidr: String,
    /// Region of the ENI; when registered without one, the attached instance's region
    /// (or `ap-guangzhou`).
    pub region: Option<String>,
    /// Whether this is its instance's primary ENI (`eth0`).
    pub primary: bool,
    pub attachment: Option<FakeAttachment>,
    /// `PENDING`, `AVAILABLE`, `ATTACHING`, `DETACHING`, `DELETING`.
    pub state: String,
    /// The primary IP first, then the secondaries in assignment order.
    pub ips: Vec<FakeIp>,
    /// `Ipv6AddressSet`.
    #[serde(default)]
    pub ipv6: Vec<FakeIpv6>,
}

impl FakeEni {
    /// An AVAILABLE, unattached, secondary ENI with only its primary IP.
    pub fn new(
        id: impl Into<String>,
        mac: impl Into<String>,
        vpc_id: impl Into<String>,
        subnet_id: impl Into<String>,
        subnet_cidr: impl Into<String>,
        primary_ip: Ipv4Addr,
    ) -> Self {
        Self {
            id: id.into(),
            mac: mac.into(),
            vpc_id: vpc_id.into(),
            subnet_id: subnet_id.into(),
            subnet_cidr: subnet_cidr.into(),
            region: None,
            primary: false,
            attachment: None,
            state: "AVAILABLE".to_string(),
            ips: vec![FakeIp::new(primary_ip, true)],
            ipv6: Vec::new(),
        }
    }

    /// Adds AVAILABLE, non-primary IPv6 addresses.
    pub fn ipv6_addrs(mut self, ips: impl IntoIterator<Item = Ipv6Addr>) -> Self {
        self.ipv6.extend(ips.into_iter().map(FakeIpv6::new));
        self
    }

    /// Adds one IPv6 entry as given.
    pub fn ipv6_entry(mut self, entry: FakeIpv6) -> Self {
        self.ipv6.push(entry);
        self
    }

    /// The IPv6 entry for `ip`, if this ENI holds it.
    pub fn ipv6(&self, ip: Ipv6Addr) -> Option<&FakeIpv6> {
        self.ipv6.iter().find(|entry| entry.addr == ip)
    }

    /// Attaches the ENI to `instance_id` at `device_index`.
    pub fn attached(mut self, instance_id: impl Into<String>, device_index: u32) -> Self {
        self.attachment = Some(FakeAttachment {
            instance_id: instance_id.into(),
            device_index,
        });
        self
    }

    /// Marks the ENI as its instance's primary ENI.
    pub fn primary_eni(mut self) -> Self {
        self.primary = true;
        self
    }

    /// Adds AVAILABLE secondary IPs.
    pub fn secondaries(mut self, ips: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        self.ips
            .extend(ips.into_iter().map(|ip| FakeIp::new(ip, false)));
        self
    }

    /// Sets the region explicitly.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// The primary IP.
    pub fn primary_ip(&self) -> Option<Ipv4Addr> {
        self.ips.iter().find(|ip| ip.primary).map(|ip| ip.addr)
    }

    /// The entry for `ip`, if this ENI holds it.
    pub fn ip(&self, ip: Ipv4Addr) -> Option<&FakeIp> {
        self.ips.iter().find(|entry| entry.addr == ip)
    }

    pub(crate) fn ip_mut(&mut self, ip: Ipv4Addr) -> Option<&mut FakeIp> {
        self.ips.iter_mut().find(|entry| entry.addr == ip)
    }

    pub(crate) fn instance_id(&self) -> Option<&str> {
        self.attachment.as_ref().map(|a| a.instance_id.as_str())
    }

    pub(crate) fn cidr(&self) -> Option<Cidr> {
        self.subnet_cidr.parse().ok()
    }
}

/// An IPv4 prefix, `a.b.c.d/n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// The netmask, `255.255.255.0` for a /24.
    pub fn mask(self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix))
    }

    /// Whether `ip` lies inside the prefix.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask_bits(self.prefix) == u32::from(self.network)
    }

    /// The subnet gateway by Tencent's convention: the network address + 1.
    pub fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(1))
    }

    /// The broadcast address.
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask_bits(self.prefix))
    }

    /// Network, gateway and broadcast cannot be assigned.
    pub fn is_reserved(self, ip: Ipv4Addr) -> bool {
        ip == self.network || ip == self.gateway() || ip == self.broadcast()
    }
}

fn mask_bits(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected a.b.c.d/n"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if prefix > 32 {
            return Err(format!("{s:?}: prefix longer than 32"));
        }
        let network = Ipv4Addr::from(u32::from(addr) & mask_bits(prefix));
        if network != addr {
            return Err(format!("{s:?}: host bits set (network is {network})"));
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// An API key the fake accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Key {
    #[serde(skip)]
    pub secret_key: String,
    /// Session token a temporary key must come with.
    #[serde(skip)]
    pub token: Option<String>,
    /// Unix ms (fake clock) after which a temporary key is refused.
    pub expires_ms: Option<i64>,
}

/// The CAM role key currently handed out to one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IssuedKey {
    pub secret_id: String,
    pub secret_key: String,
    pub token: String,
    pub issued_ms: i64,
    pub expires_ms: i64,
}

/// The status of a task, as `DescribeVpcTaskResult` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FakeTaskStatus {
    Running,
    Success,
    Failed,
}

impl FakeTaskStatus {
    /// `RUNNING`, `SUCCESS`, `FAILED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Success => "SUCCESS",
            Self::Failed => "FAILED",
        }
    }

    /// The legacy `data.status`: 0 succeeded, 1 failed, 2 running.
    pub fn legacy_code(self) -> i64 {
        match self {
            Self::Success => 0,
            Self::Failed => 1,
            Self::Running => 2,
        }
    }
}

/// A task as tests see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FakeTask {
    /// The RequestId of the mutating call (API 3.0 `TaskId`).
    pub request_id: String,
    /// The legacy numeric `taskId`.
    pub legacy_id: u64,
    /// `UnassignPrivateIpAddresses`, `AssignPrivateIpAddresses`, `MigratePrivateIpAddress`.
    pub action: String,
    /// The ENIs it locks (source first for a migrate).
    pub enis: Vec<String>,
    pub ips: Vec<Ipv4Addr>,
    /// The IPv6 addresses of an `UnassignIpv6Addresses`.
    pub ipv6: Vec<Ipv6Addr>,
    pub status: FakeTaskStatus,
    /// `DescribeVpcTaskResult.Output`.
    pub output: String,
}

/// What a task does to the world when it ends.
#[derive(Debug, Clone)]
pub(crate) enum Effect {
    /// IPs (with their state before the task) go away on success.
    Unassign {
        eni: String,
        ips: Vec<(Ipv4Addr, String)>,
    },
    /// IPv6 addresses (with their state before the task) go away on success.
    UnassignIpv6 {
        eni: String,
        ips: Vec<(Ipv6Addr, String)>,
    },
    /// IPs (added PENDING) become AVAILABLE on success, vanish on failure.
    Assign { eni: String, ips: Vec<Ipv4Addr> },
    /// The IP moves from `src` to `dst` on success.
    Migrate {
        src: String,
        dst: String,
        ip: Ipv4Addr,
        prev_state: String,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub view: FakeTask,
    pub started: Instant,
    pub duration: Duration,
    pub fail: bool,
    pub effect: Effect,
}

/// Everything behind the mutex.
#[derive(Debug)]
pub(crate) struct World {
    pub instances: BTreeMap<String, FakeInstance>,
    pub enis: BTreeMap<String, FakeEni>,
    pub keys: BTreeMap<String, Key>,
    /// Current CAM key per instance id.
    pub cam_keys: BTreeMap<String, IssuedKey>,
    pub cam_rotation: Duration,
    /// How long a CAM key stays valid; `None`: as long as the rotation period.
    pub cam_lifetime: Option<Duration>,
    pub cam_fetches: u64,
    pub tasks: Vec<Task>,
    pub faults: Faults,
    pub calls: Vec<Call>,
    pub clock_offset_ms: i64,
    pub task_duration: Duration,
    pub signature_window_s: i64,
    /// Metadata answers that disagree with the ENIs (a stale or lagging metadata
    /// service): path below `meta-data/` (no trailing `/`) → body, or `None` for 404.
    pub metadata_overrides: BTreeMap<String, Option<String>>,
    /// Rate limits and task end times (`limits.rs`).
    pub fleet: crate::limits::FleetState,
    /// `ClientToken`s of `AssignPrivateIpAddresses` (see [`crate::claims`]).
    pub client_tokens: crate::claims::ClientTokens,
    /// The benchmark's event log (`events.rs`), off by default.
    pub events: crate::events::EventLog,
    rng: u64,
    next_legacy_task: u64,
    next_call: u64,
}

impl Default for World {
    fn default() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed)
            ^ u64::from(std::process::id()).rotate_left(32);
        Self {
            instances: BTreeMap::new(),
            enis: BTreeMap::new(),
            keys: BTreeMap::new(),
            cam_keys: BTreeMap::new(),
            cam_rotation: Duration::from_secs(3600),
            cam_lifetime: None,
            cam_fetches: 0,
            tasks: Vec::new(),
            faults: Faults::default(),
            calls: Vec::new(),
            clock_offset_ms: 0,
            task_duration: Duration::from_millis(200),
            signature_window_s: 300,
            metadata_overrides: BTreeMap::new(),
            fleet: crate::limits::FleetState::default(),
            client_tokens: crate::claims::ClientTokens::default(),
            events: crate::events::EventLog::default(),
            rng: seed,
            next_legacy_task: 10_000,
            next_call: 0,
        }
    }
}

impl World {
    /// The fake clock: wall time plus the configured offset, Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        wall.saturating_add(self.clock_offset_ms)
    }

    /// The fake clock in Unix seconds.
    pub fn now_s(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// SplitMix64: random enough for ids, no dependency.
    pub fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A fresh uuid-shaped RequestId.
    pub fn request_id(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            ((b >> 48) & 0x3fff) | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }

    /// A random string of `len` characters from `[A-Za-z0-9]`.
    pub fn random_token(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..len)
            .map(|_| {
                let i = usize::try_from(self.next_u64() % ALPHABET.len() as u64).unwrap_or(0);
                char::from(ALPHABET[i])
            })
            .collect()
    }

    pub fn next_legacy_task_id(&mut self) -> u64 {
        self.next_legacy_task += 1;
        self.next_legacy_task
    }

    pub fn next_call_seq(&mut self) -> u64 {
        self.next_call += 1;
        self.next_call
    }

    /// The instance a metadata request from `source` belongs to: the only one when
    /// there is exactly one, else the one registered with that source address.
    pub fn instance_for_source(&self, source: IpAddr) -> Option<&FakeInstance> {
        if self.instances.len() == 1 {
            return self.instances.values().next();
        }
        let source = source.to_canonical();
        self.instances
            .values()
            .find(|inst| inst.source_ips.iter().any(|ip| ip.to_canonical() == source))
    }

    /// The ENI holding `ip`, if any (the first one when several VPCs reuse it).
    pub fn owner_of(&self, ip: Ipv4Addr) -> Option<&FakeEni> {
        self.enis.values().find(|eni| eni.ip(ip).is_some())
    }

    /// The ENI of VPC `vpc_id` holding `ip`: a private IP is unique within a VPC only.
    pub fn owner_in_vpc(&self, vpc_id: &str, ip: Ipv4Addr) -> Option<&FakeEni> {
        self.enis
            .values()
            .find(|eni| eni.vpc_id == vpc_id && eni.ip(ip).is_some())
    }

    /// Regions the fake knows (of instances and ENIs).
    pub fn knows_region(&self, region: &str) -> bool {
        self.instances.values().any(|i| i.region == region)
            || self
                .enis
                .values()
                .any(|e| e.region.as_deref() == Some(region))
    }

    /// Registers an ENI after checking it: valid MAC and CIDR, unique id, exactly one
    /// primary IP, every IP inside the subnet and owned by nobody else in its VPC.
    pub fn add_eni(&mut self, mut eni: FakeEni) -> Result<(), String> {
        let mac = enisync::net::MacAddr::parse(&eni.mac)
            .ok_or_else(|| format!("{}: bad MAC {:?}", eni.id, eni.mac))?;
        eni.mac = mac.to_string().to_uppercase();
        let cidr: Cidr = eni
            .subnet_cidr
            .parse()
            .map_err(|e| format!("{}: {e}", eni.id))?;
        if self.enis.contains_key(&eni.id) {
            return Err(format!("{}: duplicate ENI id", eni.id));
        }
        if eni.ips.iter().filter(|ip| ip.primary).count() != 1 {
            return Err(format!("{}: needs exactly one primary IP", eni.id));
        }
        for (i, ip) in eni.ips.iter().enumerate() {
            if !cidr.contains(ip.addr) {
                return Err(format!("{}: {} is outside {cidr}", eni.id, ip.addr));
            }
            if eni.ips[..i].iter().any(|other| other.addr == ip.addr) {
                return Err(format!("{}: {} listed twice", eni.id, ip.addr));
            }
            if let Some(owner) = self.owner_in_vpc(&eni.vpc_id, ip.addr) {
                return Err(format!(
                    "{}: {} already belongs to {}",
                    eni.id, ip.addr, owner.id
                ));
            }
        }
        if let Some(other) = self
            .enis
            .values()
            .find(|other| other.mac.eq_ignore_ascii_case(&eni.mac))
        {
            return Err(format!(
                "{}: MAC {} already used by {}",
                eni.id, eni.mac, other.id
            ));
        }
        if eni.region.is_none() {
            let region = eni
                .instance_id()
                .and_then(|id| self.instances.get(id))
                .map_or_else(|| "ap-guangzhou".to_string(), |i| i.region.clone());
            eni.region = Some(region);
        }
        // Primary IP first, as the API lists it.
        eni.ips.sort_by_key(|ip| !ip.primary);
        self.enis.insert(eni.id.clone(), eni);
        Ok(())
    }

    /// Ends every running task whose time is up, oldest first, applying its effect.
    pub fn settle(&mut self) {
        let now = Instant::now();
        for i in 0..self.tasks.len() {
            let task = &self.tasks[i];
            // A duration too long to represent never ends.
            let due = task.started.checked_add(task.duration);
            if task.view.status == FakeTaskStatus::Running && due.is_some_and(|due| due <= now) {
                self.finish_task(i);
            }
        }
    }

    /// Ends every running task now.
    pub fn finish_all(&mut self) {
        for i in 0..self.tasks.len() {
            if self.tasks[i].view.status == FakeTaskStatus::Running {
                self.finish_task(i);
            }
        }
    }

    fn finish_task(&mut self, index: usize) {
        let (fail, effect) = {
            let task = &self.tasks[index];
            (task.fail, task.effect.clone())
        };
        let moves = if self.events.on() {
            crate::events::moves(&effect, !fail, &self.enis)
        } else {
            Vec::new()
        };
        match effect {
            Effect::Unassign { eni, ips } => {
                if let Some(eni) = self.enis.get_mut(&eni) {
                    for (ip, prev) in ips {
                        if fail {
                            if let Some(entry) = eni.ip_mut(ip) {
                                entry.state = prev;
                            }
                        } else {
                            // Unbinding the EIP goes with the IP.
                            eni.ips.retain(|entry| entry.addr != ip);
                        }
                    }
                }
            }
            Effect::UnassignIpv6 { eni, ips } => {
                if let Some(eni) = self.enis.get_mut(&eni) {
                    for (ip, prev) in ips {
                        if fail {
                            if let Some(entry) = eni.ipv6.iter_mut().find(|e| e.addr == ip) {
                                entry.state = prev;
                            }
                        } else {
                            eni.ipv6.retain(|entry| entry.addr != ip);
                        }
                    }
                }
            }
            Effect::Assign { eni, ips } => {
                if let Some(eni) = self.enis.get_mut(&eni) {
                    for ip in ips {
                        if fail {
                            eni.ips.retain(|entry| entry.addr != ip);
                        } else if let Some(entry) = eni.ip_mut(ip) {
                            entry.state = ip_state::AVAILABLE.to_string();
                        }
                    }
                }
            }
            Effect::Migrate {
                src,
                dst,
                ip,
                prev_state,
            } => {
                if fail || !self.enis.contains_key(&dst) {
                    if let Some(entry) = self.enis.get_mut(&src).and_then(|e| e.ip_mut(ip)) {
                        entry.state = prev_state;
                    }
                } else {
                    let moved = self.enis.get_mut(&src).and_then(|eni| {
                        let pos = eni.ips.iter().position(|entry| entry.addr == ip)?;
                        Some(eni.ips.remove(pos))
                    });
                    if let (Some(mut entry), Some(dst)) = (moved, self.enis.get_mut(&dst)) {
                        entry.state = ip_state::AVAILABLE.to_string();
                        dst.ips.push(entry);
                    }
                }
            }
        }
        let task = &mut self.tasks[index];
        if fail {
            task.view.status = FakeTaskStatus::Failed;
            task.view.output = "FAILED: the operation did not complete (injected)".to_string();
        } else {
            task.view.status = FakeTaskStatus::Success;
            task.view.output = "SUCCESS".to_string();
        }
        let (id, now) = (task.view.request_id.clone(), self.now_ms());
        self.events.task_ended(&self.tasks[index].view, moves);
        self.fleet.task_ended_ms.insert(id, now);
    }

    /// Whether a running task holds `eni_id`.
    pub fn eni_busy(&self, eni_id: &str) -> bool {
        self.tasks.iter().any(|task| {
            task.view.status == FakeTaskStatus::Running
                && task.view.enis.iter().any(|e| e == eni_id)
        })
    }
}

/// RFC 3339 UTC (`2021-03-12T23:00:47Z`) of a Unix timestamp.
pub(crate) fn rfc3339(secs: i64) -> String {
    let date = enisync::wallclock::utc_date(secs);
    let tod = secs.rem_euclid(86_400);
    format!(
        "{date}T{:02}:{:02}:{:02}Z",
        tod / 3600,
        (tod / 60) % 60,
        tod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_arithmetic() {
        let cidr: Cidr = "10.0.1.0/24".parse().expect("parses");
        assert_eq!(cidr.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(cidr.gateway(), Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(cidr.broadcast(), Ipv4Addr::new(10, 0, 1, 255));
        assert!(cidr.contains(Ipv4Addr::new(10, 0, 1, 77)));
        assert!(!cidr.contains(Ipv4Addr::new(10, 0, 2, 1)));
        assert!("10.0.1.1/24".parse::<Cidr>().is_err());
        assert!("10.0.1.0".parse::<Cidr>().is_err());
        assert_eq!(
            "10.0.0.0/18".parse::<Cidr>().map(Cidr::mask),
            Ok(Ipv4Addr::new(255, 255, 192, 0))
        );
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(1_615_590_047), "2021-03-12T23:00:47Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn request_ids_are_uuid_shaped_and_distinct() {
        let mut world = World::default();
        let a = world.request_id();
        let b = world.request_id();
        assert_ne!(a, b);
        let parts: Vec<_> = a.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
    }
}
