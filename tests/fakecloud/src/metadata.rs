//! The instance metadata service under `/latest/meta-data/`.
//!
//! Answers by the caller's source address (see [`World::instance_for_source`]); unknown
//! paths and unknown callers get 404. Listings are newline-separated, directories end in
//! `/`. MAC path segments are case-sensitive and spelled upper case, as the real service
//! lists them.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::json;

use crate::calls::{Call, Surface};
use crate::faults::Fault;
use crate::server::{RawRequest, Reply};
use crate::state::{FakeEni, IssuedKey, Key, World, rfc3339};

/// The path prefix of the service.
pub const PREFIX: &str = "/latest/meta-data";

/// Answers one metadata request; `rel` is the path below `meta-data/`.
pub(crate) fn handle(world: &mut World, req: &RawRequest, rel: &str) -> (Reply, Call) {
    let mut call = Call {
        seq: 0,
        surface: Surface::Metadata,
        action: rel.to_string(),
        params: serde_json::Value::Null,
        source: req.source,
        secret_id: None,
        eni: None,
        ips: Vec::new(),
        answer: String::new(),
        http_status: 200,
        request_id: None,
        task: None,
        task_status: None,
        at_ms: world.now_ms(),
    };
    let mut late = None;
    match world.faults.take_answer(Surface::Metadata, rel) {
        Some(Fault::LateAnswer { after_ms }) => late = Some(Duration::from_millis(after_ms)),
        Some(fault) => {
            let reply = match fault.error_code() {
                Some((code, _)) => Reply::text(500, code.to_string()).labelled(code),
                None => Reply::for_fault(&fault),
            };
            call.answer = reply.answer_label();
            call.http_status = reply.status;
            return (reply, call);
        }
        None => {}
    }
    let body = if req.method == "GET" {
        world
            .instance_for_source(req.source.ip())
            .map(|inst| inst.id.clone())
            .and_then(|id| lookup(world, &id, rel))
    } else {
        None
    };
    let reply = match body {
        Some(body) => {
            call.answer = "Success".to_string();
            Reply::text(200, body)
        }
        None => {
            call.answer = "NotFound".to_string();
            call.http_status = 404;
            Reply::text(404, "404 - Not Found".to_string())
        }
    };
    let reply = match late {
        Some(delay) => reply.delayed(delay),
        None => reply,
    };
    (reply, call)
}

fn listing<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> String {
    items
        .into_iter()
        .map(|s| s.as_ref().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The instance's ENIs by device index.
fn enis_of<'a>(world: &'a World, instance_id: &str) -> Vec<&'a FakeEni> {
    let mut enis: Vec<&FakeEni> = world
        .enis
        .values()
        .filter(|eni| eni.instance_id() == Some(instance_id))
        .collect();
    enis.sort_by_key(|eni| eni.attachment.as_ref().map_or(0, |a| a.device_index));
    enis
}

/// The instance's primary ENI (flagged primary, else the lowest device index).
fn primary_eni<'a>(world: &'a World, instance_id: &str) -> Option<&'a FakeEni> {
    let enis = enis_of(world, instance_id);
    enis.iter()
        .find(|eni| eni.primary)
        .or_else(|| enis.first())
        .copied()
}

fn lookup(world: &mut World, instance_id: &str, rel: &str) -> Option<String> {
    let trimmed = rel.trim_end_matches('/');
    let parts: Vec<&str> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    };
    if let Some(body) = world.metadata_overrides.get(trimmed) {
        return body.clone();
    }
    let inst = world.instances.get(instance_id)?.clone();
    match parts.as_slice() {
        [] => Some(listing([
            "cam/",
            "instance-id",
            "local-ipv4",
            "mac",
            "network/",
            "placement/",
        ])),
        ["instance-id"] => Some(inst.id),
        ["placement"] => Some(listing(["region", "zone"])),
        ["placement", "region"] => Some(inst.region),
        ["placement", "zone"] => Some(inst.zone),
        ["mac"] => primary_eni(world, instance_id).map(|eni| eni.mac.clone()),
        ["local-ipv4"] => primary_eni(world, instance_id)
            .and_then(FakeEni::primary_ip)
            .map(|ip| ip.to_string()),
        ["network"] => Some("interfaces/".to_string()),
        ["network", "interfaces"] => Some("macs/".to_string()),
        ["network", "interfaces", "macs"] => Some(listing(
            enis_of(world, instance_id)
                .iter()
                .map(|eni| format!("{}/", eni.mac)),
        )),
        ["network", "interfaces", "macs", mac, rest @ ..] => {
            let eni = enis_of(world, instance_id)
                .into_iter()
                .find(|eni| eni.mac == *mac)?;
            eni_lookup(eni, rest)
        }
        ["cam"] => Some("security-credentials/".to_string()),
        ["cam", "security-credentials"] => inst.cam_role,
        ["cam", "security-credentials", role] if inst.cam_role.as_deref() == Some(*role) => {
            let key = world.cam_key(instance_id);
            world.cam_fetches += 1;
            let expired_time = key.expires_ms.div_euclid(1000);
            Some(
                json!({
                    "TmpSecretId": key.secret_id,
                    "TmpSecretKey": key.secret_key,
                    "ExpiredTime": expired_time,
                    "Expiration": rfc3339(expired_time),
                    "Token": key.token,
                    "Code": "Success",
                })
                .to_string(),
            )
        }
        _ => None,
    }
}

fn eni_lookup(eni: &FakeEni, rest: &[&str]) -> Option<String> {
    let cidr = eni.cidr()?;
    match rest {
        [] => Some(listing([
            "local-ipv4s/",
            "mac",
            "primary-local-ipv4",
            "subnet-id",
            "vpc-id",
        ])),
        ["mac"] => Some(eni.mac.clone()),
        ["primary-local-ipv4"] => eni.primary_ip().map(|ip| ip.to_string()),
        ["vpc-id"] => Some(eni.vpc_id.clone()),
        ["subnet-id"] => Some(eni.subnet_id.clone()),
        ["local-ipv4s"] => Some(listing(eni.ips.iter().map(|ip| format!("{}/", ip.addr)))),
        ["local-ipv4s", ip, leaf @ ..] => {
            let ip: Ipv4Addr = ip.parse().ok()?;
            eni.ip(ip)?;
            match leaf {
                [] => Some(listing(["gateway", "local-ipv4", "subnet-mask"])),
                ["gateway"] => Some(cidr.gateway().to_string()),
                ["subnet-mask"] => Some(cidr.mask().to_string()),
                ["local-ipv4"] => Some(ip.to_string()),
                _ => None,
            }
        }
        _ => None,
    }
}

impl World {
    /// The CAM role key of `instance_id`, rotated (lazily, at the first fetch) once its
    /// period has passed. A fresh key is registered as a temporary API key (with its
    /// token and expiry); older keys stay valid until their own expiry.
    pub(crate) fn cam_key(&mut self, instance_id: &str) -> IssuedKey {
        let now = self.now_ms();
        let period = i64::try_from(self.cam_rotation.as_millis()).unwrap_or(i64::MAX);
        if let Some(key) = self.cam_keys.get(instance_id)
            && now < key.issued_ms.saturating_add(period)
        {
            return key.clone();
        }
        let lifetime = self
            .cam_lifetime
            .map_or(period, |l| i64::try_from(l.as_millis()).unwrap_or(i64::MAX));
        let key = IssuedKey {
            secret_id: format!("AKIDtmp{}", self.random_token(29)),
            secret_key: self.random_token(32),
            token: self.random_token(96),
            issued_ms: now,
            expires_ms: now.saturating_add(lifetime),
        };
        self.keys.insert(
            key.secret_id.clone(),
            Key {
                secret_key: key.secret_key.clone(),
                token: Some(key.token.clone()),
                expires_ms: Some(key.expires_ms),
            },
        );
        self.cam_keys.insert(instance_id.to_string(), key.clone());
        key
    }
}
