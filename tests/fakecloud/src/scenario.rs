//! Scenario files: a whole fake cloud as JSON, for the `fakecloud` binary and for tests
//! that prefer data to code.
//!
//! ```json
//! {
//!   "task_duration_ms": 2000,
//!   "cam_rotation_s": 3600,
//!   "clock_offset_s": 0,
//!   "keys": [{"secret_id": "AKID…", "secret_key": "…"}],
//!   "instances": [{"id": "ins-demo0001", "region": "ap-guangzhou", "zone": "ap-guangzhou-3",
//!                  "source_ips": ["127.0.0.1"], "cam_role": "enisync-demo"}],
//!   "enis": [{"id": "eni-demo0002", "mac": "52:54:00:12:34:56",
//!             "vpc_id": "vpc-demo0001", "subnet_id": "subnet-demo0001",
//!             "subnet_cidr": "10.0.1.0/24", "primary": false,
//!             "instance_id": "ins-demo0001", "device_index": 1,
//!             "primary_ip": "10.0.1.10",
//!             "secondary_ips": ["10.0.1.11",
//!                               {"ip": "10.0.1.12", "eip": "eip-demo0001",
//!                                "public_ip": "203.0.113.12", "state": "AVAILABLE"}]}]
//! }
//! ```
//!
//! Every top-level field is optional. Per ENI, `region` (default: the instance's),
//! `primary` (false), `instance_id`/`device_index` (unattached), `state` (`AVAILABLE`)
//! and `secondary_ips` (none) are optional. `source_ips` and `cam_role` of an instance
//! are optional too; `zone` defaults to `<region>-1`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::FakeCloud;
use crate::state::{FakeAttachment, FakeEni, FakeInstance, FakeIp, ip_state};

/// A whole fake cloud.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub task_duration_ms: Option<u64>,
    #[serde(default)]
    pub cam_rotation_s: Option<u64>,
    #[serde(default)]
    pub clock_offset_s: Option<i64>,
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    #[serde(default)]
    pub instances: Vec<FakeInstance>,
    #[serde(default)]
    pub enis: Vec<EniSpec>,
    /// Account-wide API rate limits (`limits.rs`); absent: none.
    #[serde(default)]
    pub rate_limits: Option<crate::limits::RateLimits>,
}

/// A long-term key pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub secret_id: String,
    pub secret_key: String,
}

/// An ENI in a scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EniSpec {
    pub id: String,
    pub mac: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub subnet_cidr: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub primary: bool,
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub device_index: Option<u32>,
    #[serde(default)]
    pub state: Option<String>,
    pub primary_ip: Ipv4Addr,
    #[serde(default)]
    pub secondary_ips: Vec<IpSpec>,
    /// `Ipv6AddressSet`: AVAILABLE, non-primary addresses without public access.
    #[serde(default)]
    pub ipv6_ips: Vec<std::net::Ipv6Addr>,
}

/// A secondary IP: just the address, or the address with state and EIP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IpSpec {
    Plain(Ipv4Addr),
    Full {
        ip: Ipv4Addr,
        #[serde(default)]
        state: Option<String>,
        #[serde(default)]
        eip: Option<String>,
        #[serde(default)]
        public_ip: Option<Ipv4Addr>,
    },
}

impl Scenario {
    /// Parses scenario JSON.
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("scenario: {e}"))
    }

    /// Reads and parses a scenario file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("scenario {}: {e}", path.display()))?;
        Self::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Builds the cloud it describes.
    pub fn build(&self) -> Result<FakeCloud, String> {
        let cloud = FakeCloud::new();
        if let Some(ms) = self.task_duration_ms {
            cloud.set_task_duration(Duration::from_millis(ms));
        }
        if let Some(s) = self.cam_rotation_s {
            cloud.set_cam_rotation(Duration::from_secs(s));
        }
        if let Some(s) = self.clock_offset_s {
            cloud.set_clock_offset_secs(s);
        }
        cloud.set_rate_limits(self.rate_limits.clone());
        for key in &self.keys {
            cloud.add_key(&key.secret_id, &key.secret_key);
        }
        for inst in &self.instances {
            cloud.add_instance(inst.clone())?;
        }
        for spec in &self.enis {
            cloud.add_eni(spec.to_eni()?)?;
        }
        Ok(cloud)
    }
}

impl EniSpec {
    fn to_eni(&self) -> Result<FakeEni, String> {
        let attachment = match (&self.instance_id, self.device_index) {
            (Some(instance_id), index) => Some(FakeAttachment {
                instance_id: instance_id.clone(),
                device_index: index.unwrap_or(u32::from(!self.primary)),
            }),
            (None, None) => None,
            (None, Some(_)) => {
                return Err(format!("{}: device_index without instance_id", self.id));
            }
        };
        let mut eni = FakeEni::new(
            self.id.clone(),
            self.mac.clone(),
            self.vpc_id.clone(),
            self.subnet_id.clone(),
            self.subnet_cidr.clone(),
            self.primary_ip,
        );
        eni.region.clone_from(&self.region);
        eni.primary = self.primary;
        eni.attachment = attachment;
        if let Some(state) = &self.state {
            eni.state.clone_from(state);
        }
        for ip in &self.secondary_ips {
            eni.ips.push(match ip {
                IpSpec::Plain(addr) => FakeIp::new(*addr, false),
                IpSpec::Full {
                    ip,
                    state,
                    eip,
                    public_ip,
                } => FakeIp {
                    addr: *ip,
                    primary: false,
                    state: state
                        .clone()
                        .unwrap_or_else(|| ip_state::AVAILABLE.to_string()),
                    eip: eip.clone(),
                    public_ip: *public_ip,
                },
            });
        }
        eni.ipv6.extend(
            self.ipv6_ips
                .iter()
                .map(|ip| crate::state::FakeIpv6::new(*ip)),
        );
        Ok(eni)
    }
}
