//! The release call: one `UnassignPrivateIpAddresses` over the configured protocol,
//! sent once (see the module documentation of `client`).

use super::*;

impl TencentCloud {
    pub(super) async fn send_unassign(
        &self,
        eni_id: &str,
        vpc_id: &str,
        ips: &[Ipv4Addr],
    ) -> Result<TaskRef, CloudError> {
        if ips.is_empty() || ips.len() > MAX_IPS_PER_CALL {
            return Err(CloudError::local(
                UNASSIGN,
                "Client.BatchSize",
                format!(
                    "{} IPs in one call; between 1 and {MAX_IPS_PER_CALL} are allowed",
                    ips.len()
                ),
            ));
        }
        // Whatever happens next, the ENI's IPs may change.
        self.invalidate_enis();
        let protocol = self.protocol;
        // One send: a transient failure goes back to the engine, which checks the host
        // (and the cloud) again before the next one (see the module documentation).
        let result = self
            .call_with(UNASSIGN, &self.limits.unassign, 1, |keys, now| async move {
                match protocol {
                    Protocol::V3 => self.v3.unassign(&keys, now, eni_id, ips).await,
                    Protocol::Legacy => self.legacy.unassign(&keys, now, vpc_id, eni_id, ips).await,
                }
            })
            .await;
        match &result {
            Ok(task) => tracing::info!(
                eni_id,
                ?ips,
                ?protocol,
                task_id = %task.task_id,
                "unassign sent"
            ),
            Err(error) => tracing::warn!(eni_id, ?ips, ?protocol, %error, "unassign failed"),
        }
        result
    }
}
