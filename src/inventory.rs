//! What the engine knows about this instance's ENIs: which local MAC is which ENI, and
//! what the cloud holds on it.
//!
//! Sources, in order of authority: `DescribeNetworkInterfaces` (filtered by this
//! instance), then the metadata service for the per-MAC gateway and subnet mask, then the
//! static `[[interface]]` overrides for hosts that cannot reach either.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;

use crate::cloud::Eni;
use crate::config::StaticInterface;
use crate::net::MacAddr;

/// Per-MAC facts from the metadata service that the API does not give.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MetaFacts {
    pub gateway: Option<Ipv4Addr>,
    pub subnet_prefix: Option<u8>,
}

/// One ENI as the engine uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EniRecord {
    pub eni_id: String,
    pub vpc_id: String,
    pub mac: MacAddr,
    /// `DeviceIndex` of the attachment: the routing table is `table_base + device_index`.
    pub device_index: Option<u32>,
    /// The instance's primary ENI (its routing is the main table's business).
    pub primary_eni: bool,
    /// The ENI's primary private IP: never released.
    pub primary_ip: Option<Ipv4Addr>,
    /// Full cloud view (IPs, states, EIPs) when it came from the API.
    pub cloud: Option<Eni>,
    pub meta: MetaFacts,
}

/// The MAC → ENI map of this instance.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inventory {
    pub instance_id: String,
    pub by_mac: HashMap<MacAddr, EniRecord>,
    /// True once a complete listing succeeded: a MAC missing then is not an ENI of
    /// this instance. Until then, an unknown MAC means "not known yet".
    pub complete: bool,
}

impl Inventory {
    /// Builds the map from a fresh listing, the metadata facts and the static overrides.
    pub fn build(
        instance_id: &str,
        enis: Vec<Eni>,
        meta: &HashMap<MacAddr, MetaFacts>,
        statics: &[StaticInterface],
    ) -> Self {
        let mut by_mac = HashMap::new();
        for eni in enis {
            // Only ENIs attached to this instance count; the filter should guarantee it,
            // a stale or wrong answer must not widen what we act on.
            if eni
                .attachment
                .as_ref()
                .is_some_and(|a| a.instance_id != instance_id)
            {
                continue;
            }
            let record = EniRecord {
                eni_id: eni.id.clone(),
                vpc_id: eni.vpc_id.clone(),
                mac: eni.mac,
                device_index: eni.attachment.as_ref().map(|a| a.device_index),
                primary_eni: eni.primary,
                primary_ip: eni.ips.iter().find_map(|ip| match ip.addr {
                    IpAddr::V4(v4) if ip.primary => Some(v4),
                    _ => None,
                }),
                meta: meta.get(&eni.mac).cloned().unwrap_or_default(),
                cloud: Some(eni),
            };
            by_mac.insert(record.mac, record);
        }
        for s in statics {
            by_mac.entry(s.mac).or_insert_with(|| EniRecord {
                eni_id: s.eni.clone(),
                vpc_id: s.vpc.clone(),
                mac: s.mac,
                device_index: s.device_index,
                primary_eni: false,
                primary_ip: None,
                cloud: None,
                meta: MetaFacts {
                    gateway: s.gateway,
                    subnet_prefix: None,
                },
            });
        }
        Self {
            instance_id: instance_id.to_owned(),
            by_mac,
            complete: true,
        }
    }

    pub fn by_mac(&self, mac: MacAddr) -> Option<&EniRecord> {
        self.by_mac.get(&mac)
    }

    pub fn by_eni(&self, eni_id: &str) -> Option<&EniRecord> {
        self.by_mac.values().find(|r| r.eni_id == eni_id)
    }

    /// Whether `ip` is the primary IP of any ENI we know: its primary IPv4 address, or
    /// an IPv6 address the cloud marks `Primary`.
    pub fn is_primary_ip(&self, ip: IpAddr) -> bool {
        self.by_mac.values().any(|r| {
            r.primary_ip.map(IpAddr::V4) == Some(ip)
                || r.cloud
                    .as_ref()
                    .is_some_and(|eni| eni.ip(ip).is_some_and(|entry| entry.primary))
        })
    }
}
