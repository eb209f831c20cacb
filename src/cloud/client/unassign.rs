//! The release call: one `UnassignPrivateIpAddresses` over the configured protocol, or
//! one `UnassignIpv6Addresses` over API 3.0, sent once (see the module documentation of
//! `client`).

use super::*;

impl TencentCloud {
    pub(super) async fn send_unassign(
        &self,
        eni_id: &str,
        vpc_id: &str,
        ips: &[IpAddr],
        may_send: MaySend<'_>,
    ) -> Result<TaskRef, CloudError> {
        let family = ips.first().map_or(Family::Ipv4, |ip| Family::of(*ip));
        let action = family.unassign_action();
        if ips.is_empty() || ips.len() > MAX_IPS_PER_CALL {
            return Err(CloudError::local(
                action,
                "Client.BatchSize",
                format!(
                    "{} IPs in one call; between 1 and {MAX_IPS_PER_CALL} are allowed",
                    ips.len()
                ),
            ));
        }
        // The two families are different actions: a mixed batch is the engine's bug,
        // refused without a request.
        let v4: Vec<Ipv4Addr> = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        let v6: Vec<Ipv6Addr> = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(v6) => Some(*v6),
                IpAddr::V4(_) => None,
            })
            .collect();
        if !v4.is_empty() && !v6.is_empty() {
            return Err(CloudError::local(
                action,
                "Client.MixedFamilies",
                "IPv4 and IPv6 addresses in one call",
            ));
        }
        // Whatever happens next, the ENI's IPs may change.
        self.invalidate_enis();
        // IPv6 always goes over API 3.0, also with `api = "legacy"`: the legacy API has
        // no IPv6 call (docs/cloud-api.md, "IPv6").
        let protocol = match family {
            Family::Ipv4 => self.protocol,
            Family::Ipv6 => Protocol::V3,
        };
        let bucket = match family {
            Family::Ipv4 => &self.limits.unassign,
            Family::Ipv6 => &self.limits.unassign_ipv6,
        };
        let (v4, v6) = (&v4, &v6);
        // One send: a transient failure goes back to the engine, which checks the host
        // (and the cloud) again before the next one (see the module documentation).
        let result = self
            .call_with(action, bucket, 1, |keys, now| async move {
                // Asked here, after the rate token and the keys (either can take
                // seconds), so that a pause answered meanwhile still stops the request.
                if !may_send() {
                    return Err(CloudError::not_sent(action));
                }
                match (family, protocol) {
                    (Family::Ipv6, _) => self.v3.unassign_ipv6(&keys, now, eni_id, v6).await,
                    (Family::Ipv4, Protocol::V3) => self.v3.unassign(&keys, now, eni_id, v4).await,
                    (Family::Ipv4, Protocol::Legacy) => {
                        self.legacy.unassign(&keys, now, vpc_id, eni_id, v4).await
                    }
                }
            })
            .await;
        if let Ok(task) = &result
            && family == Family::Ipv4
            && protocol == Protocol::V3
        {
            self.remember_sent(task, eni_id, v4);
        }
        match &result {
            Ok(task) => tracing::info!(
                eni_id,
                ?ips,
                ?protocol,
                action,
                task_id = %task.task_id,
                "unassign sent"
            ),
            Err(error) => {
                tracing::warn!(eni_id, ?ips, ?protocol, action, %error, "unassign failed");
            }
        }
        result
    }
}
