//! The cloud's operations, independent of the protocol that asks for them. API 3.0 and
//! the legacy API both call these; each answers failures in its own envelope.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use crate::calls::Surface;
use crate::state::{Effect, FakeEni, FakeIp, FakeTask, FakeTaskStatus, Task, World, ip_state};

/// At most this many IPs per Assign/Unassign call.
pub const MAX_IPS_PER_CALL: usize = 10;

/// A refused operation: the API 3.0 code, and the legacy `codeDesc` where it differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpError {
    pub code: String,
    pub message: String,
    /// Legacy `(code, codeDesc)` when the legacy API names this failure differently.
    pub legacy: Option<(i64, &'static str)>,
}

impl OpError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            legacy: None,
        }
    }

    fn legacy(mut self, code: i64, desc: &'static str) -> Self {
        self.legacy = Some((code, desc));
        self
    }

    pub fn missing(name: &str) -> Self {
        Self::new("MissingParameter", format!("missing parameter {name}"))
    }

    pub fn malformed(what: &str) -> Self {
        Self::new(
            "InvalidParameterValue.Malformed",
            format!("malformed value: {what}"),
        )
    }

    fn eni_not_found(id: &str) -> Self {
        Self::new(
            "ResourceNotFound",
            format!("network interface {id} does not exist"),
        )
        .legacy(5000, "InvalidNetworkInterface.NotFound")
    }

    fn ip_not_on_eni(ip: Ipv4Addr, eni: &str) -> Self {
        Self::new(
            "ResourceNotFound",
            format!("private IP {ip} is not assigned to {eni}"),
        )
        .legacy(5000, "InvalidPrivateip.NotFound")
    }

    fn primary_ip(ip: Ipv4Addr) -> Self {
        Self::new(
            "UnsupportedOperation.PrimaryIp",
            format!("{ip} is the primary IP of its network interface"),
        )
        .legacy(5100, "InvalidPrivateip.IsPrimary")
    }

    fn busy(eni: &str) -> Self {
        Self::new(
            "UnsupportedOperation.MutexOperationTaskRunning",
            format!("another task is running on {eni}"),
        )
    }

    fn invalid_state(what: String) -> Self {
        Self::new("UnsupportedOperation.InvalidState", what)
    }
}

/// The request context an operation needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub surface: Surface,
    /// Resources of other regions are invisible.
    pub region: &'a str,
    /// The RequestId of the mutating call, which becomes the task id.
    pub request_id: &'a str,
}

/// What a successful mutating call returns.
#[derive(Debug, Clone)]
pub(crate) struct Started {
    pub request_id: String,
    pub legacy_id: u64,
    /// New IPs of an assign (PENDING).
    pub ips: Vec<FakeIp>,
}

impl World {
    /// The ENI `id` if it exists in `region`.
    pub fn visible_eni(&self, region: &str, id: &str) -> Option<&FakeEni> {
        self.enis
            .get(id)
            .filter(|eni| eni.region.as_deref() == Some(region))
    }

    /// `UnassignPrivateIpAddresses`.
    pub fn op_unassign(
        &mut self,
        ctx: Ctx<'_>,
        eni_id: &str,
        ips: &[String],
    ) -> Result<Started, OpError> {
        let ips = parse_ip_list(ips)?;
        let eni = self
            .visible_eni(ctx.region, eni_id)
            .ok_or_else(|| OpError::eni_not_found(eni_id))?;
        let mut prev = Vec::with_capacity(ips.len());
        for &ip in &ips {
            match eni.ip(ip) {
                None => return Err(OpError::ip_not_on_eni(ip, eni_id)),
                Some(entry) if entry.primary => return Err(OpError::primary_ip(ip)),
                Some(entry) => prev.push((ip, entry.state.clone())),
            }
        }
        self.check_free(eni_id)?;
        self.check_eni_state(eni_id)?;
        for (ip, state) in &prev {
            if state != ip_state::AVAILABLE {
                return Err(OpError::invalid_state(format!("{ip} is {state}")));
            }
        }
        if let Some(eni) = self.enis.get_mut(eni_id) {
            for &ip in &ips {
                if let Some(entry) = eni.ip_mut(ip) {
                    entry.state = ip_state::DELETING.to_string();
                }
            }
        }
        Ok(self.start_task(
            ctx,
            "UnassignPrivateIpAddresses",
            vec![eni_id.to_string()],
            ips,
            Effect::Unassign {
                eni: eni_id.to_string(),
                ips: prev,
            },
            Vec::new(),
        ))
    }

    /// `UnassignIpv6Addresses` (docs/cloud-api.md, "IPv6"): API 3.0 only. Errors: an
    /// unknown ENI or address `ResourceNotFound`, the primary IPv6 address
    /// `UnauthorizedOperation.PrimaryIp`, a busy ENI
    /// `UnsupportedOperation.MutexOperationTaskRunning`, a bad list
    /// `InvalidParameterValue.{Malformed,LimitExceeded,DuplicatePara}`.
    pub fn op_unassign_ipv6(
        &mut self,
        ctx: Ctx<'_>,
        eni_id: &str,
        addrs: &[String],
    ) -> Result<Started, OpError> {
        if addrs.is_empty() {
            return Err(OpError::missing("Ipv6Addresses"));
        }
        if addrs.len() > MAX_IPS_PER_CALL {
            return Err(OpError::new(
                "InvalidParameterValue.LimitExceeded",
                format!(
                    "{} addresses given, at most {MAX_IPS_PER_CALL} per call",
                    addrs.len()
                ),
            ));
        }
        let mut ips: Vec<Ipv6Addr> = Vec::with_capacity(addrs.len());
        for text in addrs {
            let ip: Ipv6Addr = text.trim().parse().map_err(|_| OpError::malformed(text))?;
            if ips.contains(&ip) {
                return Err(OpError::new(
                    "InvalidParameterValue.DuplicatePara",
                    format!("{ip} given twice"),
                ));
            }
            ips.push(ip);
        }
        let eni = self
            .visible_eni(ctx.region, eni_id)
            .ok_or_else(|| OpError::eni_not_found(eni_id))?;
        let mut prev = Vec::with_capacity(ips.len());
        for &ip in &ips {
            match eni.ipv6(ip) {
                None => {
                    return Err(OpError::new(
                        "ResourceNotFound",
                        format!("IPv6 address {ip} is not assigned to {eni_id}"),
                    ));
                }
                Some(entry) if entry.primary => {
                    return Err(OpError::new(
                        "UnauthorizedOperation.PrimaryIp",
                        format!("{ip} is the primary IPv6 address of its network interface"),
                    ));
                }
                Some(entry) => prev.push((ip, entry.state.clone())),
            }
        }
        self.check_free(eni_id)?;
        self.check_eni_state(eni_id)?;
        for (ip, state) in &prev {
            if state != ip_state::AVAILABLE {
                return Err(OpError::invalid_state(format!("{ip} is {state}")));
            }
        }
        if let Some(eni) = self.enis.get_mut(eni_id) {
            for entry in eni.ipv6.iter_mut().filter(|e| ips.contains(&e.addr)) {
                entry.state = ip_state::DELETING.to_string();
            }
        }
        let started = self.start_task(
            ctx,
            "UnassignIpv6Addresses",
            vec![eni_id.to_string()],
            Vec::new(),
            Effect::UnassignIpv6 {
                eni: eni_id.to_string(),
                ips: prev,
            },
            Vec::new(),
        );
        if let Some(task) = self
            .tasks
            .iter_mut()
            .rev()
            .find(|t| t.view.request_id == started.request_id)
        {
            task.view.ipv6 = ips;
        }
        Ok(started)
    }

    /// `AssignPrivateIpAddresses` with specific IPs and/or a count to pick.
    pub fn op_assign(
        &mut self,
        ctx: Ctx<'_>,
        eni_id: &str,
        ips: &[String],
        count: Option<u64>,
    ) -> Result<Started, OpError> {
        if ips.is_empty() && count.is_none() {
            return Err(OpError::missing(
                "PrivateIpAddresses or SecondaryPrivateIpAddressCount",
            ));
        }
        let mut wanted = if ips.is_empty() {
            Vec::new()
        } else {
            parse_ip_list(ips)?
        };
        let count = usize::try_from(count.unwrap_or(0)).unwrap_or(usize::MAX);
        if wanted.len().saturating_add(count) > MAX_IPS_PER_CALL {
            return Err(OpError::new(
                "InvalidParameterValue.LimitExceeded",
                format!("at most {MAX_IPS_PER_CALL} IPs per call"),
            ));
        }
        let eni = self
            .visible_eni(ctx.region, eni_id)
            .ok_or_else(|| OpError::eni_not_found(eni_id))?;
        let cidr = eni
            .cidr()
            .ok_or_else(|| OpError::new("InternalError", "subnet without CIDR"))?;
        let vpc_id = eni.vpc_id.clone();
        for &ip in &wanted {
            if !cidr.contains(ip) {
                return Err(OpError::new(
                    "InvalidParameterValue.Range",
                    format!("{ip} is outside subnet {cidr}"),
                ));
            }
            if cidr.is_reserved(ip) {
                return Err(OpError::new(
                    "InvalidParameterValue.Reserved",
                    format!("{ip} is reserved"),
                ));
            }
            if let Some(owner) = self.owner_in_vpc(&eni.vpc_id, ip) {
                return Err(OpError::new(
                    "ResourceInUse",
                    format!("{ip} is in use by {}", owner.id),
                ));
            }
        }
        self.check_free(eni_id)?;
        self.check_eni_state(eni_id)?;
        // Auto-pick the lowest free addresses of the subnet.
        let mut candidate = u32::from(cidr.network);
        let last = u32::from(cidr.broadcast());
        let mut picked = 0;
        while picked < count {
            candidate = candidate.saturating_add(1);
            if candidate >= last {
                return Err(OpError::new(
                    "ResourceInsufficient.Subnet",
                    format!("subnet {cidr} has no free address left"),
                ));
            }
            let ip = Ipv4Addr::from(candidate);
            if !cidr.is_reserved(ip)
                && self.owner_in_vpc(&vpc_id, ip).is_none()
                && !wanted.contains(&ip)
            {
                wanted.push(ip);
                picked += 1;
            }
        }
        let mut fresh = Vec::new();
        if let Some(eni) = self.enis.get_mut(eni_id) {
            for &ip in &wanted {
                let mut entry = FakeIp::new(ip, false);
                entry.state = ip_state::PENDING.to_string();
                eni.ips.push(entry.clone());
                fresh.push(entry);
            }
        }
        Ok(self.start_task(
            ctx,
            "AssignPrivateIpAddresses",
            vec![eni_id.to_string()],
            wanted.clone(),
            Effect::Assign {
                eni: eni_id.to_string(),
                ips: wanted,
            },
            fresh,
        ))
    }

    /// `MigratePrivateIpAddress`: moves one secondary IP between ENIs of one subnet.
    pub fn op_migrate(
        &mut self,
        ctx: Ctx<'_>,
        src_id: &str,
        dst_id: &str,
        ip: &str,
    ) -> Result<Started, OpError> {
        let ip: Ipv4Addr = ip.parse().map_err(|_| OpError::malformed(ip))?;
        let src = self
            .visible_eni(ctx.region, src_id)
            .ok_or_else(|| OpError::eni_not_found(src_id))?;
        let dst = self
            .visible_eni(ctx.region, dst_id)
            .ok_or_else(|| OpError::eni_not_found(dst_id))?;
        if src_id == dst_id {
            return Err(OpError::new(
                "InvalidParameterValue",
                "source and destination are the same network interface",
            ));
        }
        if src.subnet_id != dst.subnet_id || src.vpc_id != dst.vpc_id {
            return Err(OpError::new(
                "UnsupportedOperation.ResourceMismatch",
                format!("{src_id} and {dst_id} are not in the same subnet"),
            ));
        }
        let prev_state = match src.ip(ip) {
            None => return Err(OpError::ip_not_on_eni(ip, src_id)),
            Some(entry) if entry.primary => return Err(OpError::primary_ip(ip)),
            Some(entry) => entry.state.clone(),
        };
        self.check_free(src_id)?;
        self.check_free(dst_id)?;
        self.check_eni_state(src_id)?;
        self.check_eni_state(dst_id)?;
        if prev_state != ip_state::AVAILABLE {
            return Err(OpError::invalid_state(format!("{ip} is {prev_state}")));
        }
        if let Some(entry) = self.enis.get_mut(src_id).and_then(|e| e.ip_mut(ip)) {
            entry.state = ip_state::MIGRATING.to_string();
        }
        Ok(self.start_task(
            ctx,
            "MigratePrivateIpAddress",
            vec![src_id.to_string(), dst_id.to_string()],
            vec![ip],
            Effect::Migrate {
                src: src_id.to_string(),
                dst: dst_id.to_string(),
                ip,
                prev_state,
            },
            Vec::new(),
        ))
    }

    /// A task by its API 3.0 id (the RequestId of the mutating call).
    pub fn task_by_request_id(&self, id: &str) -> Option<&FakeTask> {
        self.tasks
            .iter()
            .map(|t| &t.view)
            .find(|t| t.request_id == id)
    }

    /// A task by its legacy numeric id.
    pub fn task_by_legacy_id(&self, id: u64) -> Option<&FakeTask> {
        self.tasks
            .iter()
            .map(|t| &t.view)
            .find(|t| t.legacy_id == id)
    }

    fn check_free(&self, eni_id: &str) -> Result<(), OpError> {
        if self.eni_busy(eni_id) {
            Err(OpError::busy(eni_id))
        } else {
            Ok(())
        }
    }

    fn check_eni_state(&self, eni_id: &str) -> Result<(), OpError> {
        match self.enis.get(eni_id) {
            Some(eni) if eni.state == "AVAILABLE" => Ok(()),
            Some(eni) => Err(OpError::invalid_state(format!(
                "network interface {eni_id} is {}",
                eni.state
            ))),
            None => Err(OpError::eni_not_found(eni_id)),
        }
    }

    fn start_task(
        &mut self,
        ctx: Ctx<'_>,
        action: &str,
        enis: Vec<String>,
        ips: Vec<Ipv4Addr>,
        effect: Effect,
        fresh: Vec<FakeIp>,
    ) -> Started {
        let fail = self.faults.take_task_failure(ctx.surface, action);
        let legacy_id = self.next_legacy_task_id();
        self.tasks.push(Task {
            view: FakeTask {
                request_id: ctx.request_id.to_string(),
                legacy_id,
                action: action.to_string(),
                enis,
                ips,
                ipv6: Vec::new(),
                status: FakeTaskStatus::Running,
                output: String::new(),
            },
            started: Instant::now(),
            duration: self.task_duration,
            fail,
            effect,
        });
        if self.task_duration.is_zero() {
            self.settle();
        }
        Started {
            request_id: ctx.request_id.to_string(),
            legacy_id,
            ips: fresh,
        }
    }
}

/// Parses 1..=10 distinct IPv4 addresses.
fn parse_ip_list(ips: &[String]) -> Result<Vec<Ipv4Addr>, OpError> {
    if ips.is_empty() {
        return Err(OpError::missing("PrivateIpAddresses"));
    }
    if ips.len() > MAX_IPS_PER_CALL {
        return Err(OpError::new(
            "InvalidParameterValue.LimitExceeded",
            format!(
                "{} IPs given, at most {MAX_IPS_PER_CALL} per call",
                ips.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(ips.len());
    for text in ips {
        let ip: Ipv4Addr = text.trim().parse().map_err(|_| OpError::malformed(text))?;
        if out.contains(&ip) {
            return Err(OpError::new(
                "InvalidParameterValue.DuplicatePara",
                format!("{ip} given twice"),
            ));
        }
        out.push(ip);
    }
    Ok(out)
}
