//! The claim calls of API 3.0 (docs/cloud-api.md, "Claims"): `MigratePrivateIpAddress`,
//! `AssignPrivateIpAddresses` with a `ClientToken`, and the exact holder lookup. One
//! request per method, as the rest of this module; every reply is a value or a
//! classified error.

use super::*;

pub(crate) const MIGRATE: &str = "MigratePrivateIpAddress";
pub(crate) const ASSIGN: &str = "AssignPrivateIpAddresses";

impl V3Api {
    /// Starts moving `ip` from `src_eni` to `dst_eni`; the task is the `RequestId`.
    pub async fn migrate(
        &self,
        creds: &Credentials,
        timestamp: i64,
        src_eni: &str,
        dst_eni: &str,
        ip: Ipv4Addr,
    ) -> Result<TaskRef, CloudError> {
        let body = json!({
            "SourceNetworkInterfaceId": src_eni,
            "DestinationNetworkInterfaceId": dst_eni,
            "PrivateIpAddress": ip.to_string(),
        });
        parse_unassign_as(MIGRATE, &self.call(MIGRATE, &body, creds, timestamp).await?)
    }

    /// Starts assigning `ip` to `eni_id` under `client_token`; the task is the
    /// `RequestId`. An answer that does not list `ip` is malformed.
    pub async fn assign_ip(
        &self,
        creds: &Credentials,
        timestamp: i64,
        eni_id: &str,
        ip: Ipv4Addr,
        client_token: &str,
    ) -> Result<TaskRef, CloudError> {
        let body = json!({
            "NetworkInterfaceId": eni_id,
            "PrivateIpAddresses": [{ "PrivateIpAddress": ip.to_string() }],
            "ClientToken": client_token,
        });
        parse_assign(&self.call(ASSIGN, &body, creds, timestamp).await?, ip)
    }

    /// The ENIs of `vpc_id` that the cloud says hold exactly `ip` (one page: an address
    /// has at most one holder in a VPC).
    pub async fn describe_holders(
        &self,
        creds: &Credentials,
        timestamp: i64,
        vpc_id: &str,
        ip: Ipv4Addr,
    ) -> Result<Vec<Eni>, CloudError> {
        let body = json!({
            "Filters": [
                { "Name": "vpc-id", "Values": [vpc_id] },
                { "Name": "address-ip", "Values": [ip.to_string()] },
                { "Name": "ip-exact-match", "Values": ["true"] },
            ],
            "Offset": 0,
            "Limit": PAGE_SIZE,
        });
        let (enis, total) =
            parse_eni_page(&self.call(DESCRIBE_ENIS, &body, creds, timestamp).await?)?;
        if total > enis.len() as u64 {
            return Err(malformed(
                DESCRIBE_ENIS,
                format!(
                    "an exact holder lookup listed {} of {total} network interfaces",
                    enis.len()
                ),
            ));
        }
        Ok(enis)
    }
}

/// The answer to `AssignPrivateIpAddresses`: the task, once the set names `ip`.
pub(crate) fn parse_assign(body: &[u8], ip: Ipv4Addr) -> Result<TaskRef, CloudError> {
    let answer: AssignAnswer = parse_response(ASSIGN, body)?;
    if !answer
        .private_ip_address_set
        .iter()
        .any(|entry| entry.private_ip_address == ip)
    {
        let mut error = malformed(
            ASSIGN,
            format!("the answer's PrivateIpAddressSet does not name {ip}"),
        );
        error.request_id = Some(answer.request_id);
        return Err(error);
    }
    Ok(TaskRef {
        request_id: Some(answer.request_id.clone()),
        task_id: answer.request_id,
        protocol: Protocol::V3,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssignAnswer {
    request_id: String,
    #[serde(default)]
    private_ip_address_set: Vec<PrivateIpAddress>,
}
