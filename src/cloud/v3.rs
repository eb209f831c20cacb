//! VPC API 3.0: POST JSON signed with TC3-HMAC-SHA256 (`docs/cloud-api.md`, "API 3.0").
//!
//! One request per method; retries, rate limits and credential refreshes are the
//! caller's ([`super::client`]). Every reply, whatever it holds, becomes either a value or
//! a classified [`CloudError`]; nothing here panics on a reply.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::classify::TencentCode;
use super::clock::ServerClock;
use super::credentials::Credentials;
use super::failover::{EndpointList, FailoverObserver};
use super::sign::{Tc3Request, tc3_sign};
use super::transport::{Endpoint, Failure, exchange_once};
use super::{Attachment, CloudError, Eni, EniIp, TaskStatus};
use crate::net::MacAddr;
use crate::task::{Protocol, TaskRef};

/// `X-TC-Version` of the VPC API.
pub const VERSION: &str = "2017-03-12";
/// The service name in the signing scope.
pub const SERVICE: &str = "vpc";
/// Sent and signed byte for byte.
const CONTENT_TYPE: &str = "application/json";
/// The largest page `DescribeNetworkInterfaces` returns.
pub const PAGE_SIZE: u64 = 100;

pub(crate) const UNASSIGN: &str = "UnassignPrivateIpAddresses";
pub(crate) const UNASSIGN_IPV6: &str = "UnassignIpv6Addresses";
pub(crate) const DESCRIBE_ENIS: &str = "DescribeNetworkInterfaces";
pub(crate) const TASK_RESULT: &str = "DescribeVpcTaskResult";

/// An API 3.0 client for one region and its ordered endpoints (one by default; more
/// only for failover, docs/endpoint-failover.md).
#[derive(Debug, Clone)]
pub(crate) struct V3Api {
    http: reqwest::Client,
    endpoints: std::sync::Arc<EndpointList>,
    region: String,
    /// Receives the `Date` of every answer (clock-skew correction).
    clock: Option<std::sync::Arc<ServerClock>>,
    /// Told about every failover.
    failovers: Option<FailoverObserver>,
}

impl V3Api {
    pub fn new(http: reqwest::Client, endpoint: Endpoint, region: String) -> Self {
        Self {
            http,
            endpoints: std::sync::Arc::new(EndpointList::new(endpoint, Vec::new())),
            region,
            clock: None,
            failovers: None,
        }
    }

    /// Further endpoints, tried in this order after the first one when a request could
    /// not be sent there (DNS, connect or TLS failure).
    pub fn with_fallbacks(mut self, rest: Vec<Endpoint>) -> Self {
        let first = self.endpoints.get(0).clone();
        self.endpoints = std::sync::Arc::new(EndpointList::new(first, rest));
        self
    }

    /// Reports every failover to `observer` (metrics).
    pub fn with_failover_observer(mut self, observer: FailoverObserver) -> Self {
        self.failovers = Some(observer);
        self
    }

    /// Hands the `Date` of every answer to `clock`.
    pub fn with_clock(mut self, clock: std::sync::Arc<ServerClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Starts an IPv6 unassign (`UnassignIpv6Addresses`, docs/cloud-api.md "IPv6"); the
    /// task to poll is the call's `RequestId`, as for IPv4.
    pub async fn unassign_ipv6(
        &self,
        creds: &Credentials,
        timestamp: i64,
        eni_id: &str,
        ips: &[Ipv6Addr],
    ) -> Result<TaskRef, CloudError> {
        let addresses: Vec<Value> = ips
            .iter()
            .map(|ip| json!({ "Address": ip.to_string() }))
            .collect();
        let body = json!({ "NetworkInterfaceId": eni_id, "Ipv6Addresses": addresses });
        parse_unassign_as(
            UNASSIGN_IPV6,
            &self.call(UNASSIGN_IPV6, &body, creds, timestamp).await?,
        )
    }

    /// Starts an unassign; the task to poll is the call's `RequestId`.
    pub async fn unassign(
        &self,
        creds: &Credentials,
        timestamp: i64,
        eni_id: &str,
        ips: &[Ipv4Addr],
    ) -> Result<TaskRef, CloudError> {
        let addresses: Vec<Value> = ips
            .iter()
            .map(|ip| json!({ "PrivateIpAddress": ip.to_string() }))
            .collect();
        let body = json!({ "NetworkInterfaceId": eni_id, "PrivateIpAddresses": addresses });
        parse_unassign(&self.call(UNASSIGN, &body, creds, timestamp).await?)
    }

    /// One page of the ENIs attached to `instance_id`, and the total count.
    pub async fn describe_enis(
        &self,
        creds: &Credentials,
        timestamp: i64,
        instance_id: &str,
        offset: u64,
    ) -> Result<(Vec<Eni>, u64), CloudError> {
        let body = json!({
            "Filters": [{ "Name": "attachment.instance-id", "Values": [instance_id] }],
            "Offset": offset,
            "Limit": PAGE_SIZE,
        });
        parse_eni_page(&self.call(DESCRIBE_ENIS, &body, creds, timestamp).await?)
    }

    /// The status of the task started by the call whose `RequestId` is `task_id`.
    pub async fn task_status(
        &self,
        creds: &Credentials,
        timestamp: i64,
        task_id: &str,
    ) -> Result<TaskStatus, CloudError> {
        let body = json!({ "TaskId": task_id });
        parse_task_status(&self.call(TASK_RESULT, &body, creds, timestamp).await?)
    }

    /// Signs and sends one action; returns the body of its 200 answer. With more than
    /// one endpoint, a request that could not be sent (docs/endpoint-failover.md: DNS,
    /// connect or TLS failure, nothing written) goes to the next one, signed for that
    /// endpoint's `Host`; any other failure is the answer, whichever endpoint gave it.
    async fn call(
        &self,
        action: &'static str,
        body: &Value,
        creds: &Credentials,
        timestamp: i64,
    ) -> Result<Vec<u8>, CloudError> {
        let payload = serde_json::to_vec(body)
            .map_err(|e| CloudError::local(action, "Client.Encode", e.to_string()))?;
        let mut first = None;
        let mut unsent = None;
        for index in self.endpoints.order() {
            let endpoint = self.endpoints.get(index);
            let from = *first.get_or_insert(index);
            let result = exchange_once(
                action,
                self.request(action, endpoint, &payload, creds, timestamp),
                self.clock.as_deref(),
            )
            .await;
            match result {
                Err(Failure::BeforeSend(error)) if self.endpoints.len() > 1 => {
                    tracing::warn!(
                        action,
                        endpoint = %endpoint.host,
                        code = %error.code,
                        "API endpoint unreachable before sending; trying the next one"
                    );
                    unsent = Some(error);
                }
                result => {
                    if index != from {
                        self.endpoints.answered(index);
                        let from = &self.endpoints.get(from).host;
                        tracing::warn!(action, from = %from, to = %endpoint.host, "API endpoint failover");
                        if let Some(observer) = &self.failovers {
                            (observer.0)(from, &endpoint.host);
                        }
                    }
                    return result.map_err(Failure::into_error);
                }
            }
        }
        // Every endpoint failed before sending (the list is never empty).
        Err(unsent.unwrap_or_else(|| {
            CloudError::local(action, "Transport.Connect", "no endpoint to send to")
        }))
    }

    /// One request of `action` to `endpoint`, signed for its `Host`.
    fn request(
        &self,
        action: &'static str,
        endpoint: &Endpoint,
        payload: &[u8],
        creds: &Credentials,
        timestamp: i64,
    ) -> reqwest::RequestBuilder {
        let signature = tc3_sign(
            &Tc3Request {
                method: "POST",
                host: &endpoint.host,
                query: "",
                content_type: CONTENT_TYPE,
                payload,
                service: SERVICE,
                timestamp,
            },
            creds.secret_key.expose(),
        );
        let mut request = self
            .http
            .post(endpoint.url.clone())
            .header("Content-Type", CONTENT_TYPE)
            .header("Host", &endpoint.host)
            .header("X-TC-Action", action)
            .header("X-TC-Version", VERSION)
            .header("X-TC-Timestamp", timestamp.to_string())
            .header("X-TC-Region", &self.region)
            .header(
                "Authorization",
                signature.authorization(creds.secret_id.expose(), SERVICE),
            );
        if let Some(token) = &creds.token {
            request = request.header("X-TC-Token", token.expose());
        }
        request.body(payload.to_vec())
    }
}

/// The answer to `UnassignPrivateIpAddresses`: the task to poll is its `RequestId`.
pub(crate) fn parse_unassign(body: &[u8]) -> Result<TaskRef, CloudError> {
    parse_unassign_as(UNASSIGN, body)
}

/// The answer to an async unassign of either family (`action`): the task is its
/// `RequestId`.
pub(crate) fn parse_unassign_as(action: &'static str, body: &[u8]) -> Result<TaskRef, CloudError> {
    let response: RequestOnly = parse_response(action, body)?;
    Ok(TaskRef {
        request_id: Some(response.request_id.clone()),
        task_id: response.request_id,
        protocol: Protocol::V3,
    })
}

/// One page of `DescribeNetworkInterfaces`: its ENIs and the `TotalCount`.
pub(crate) fn parse_eni_page(body: &[u8]) -> Result<(Vec<Eni>, u64), CloudError> {
    let page: EniPage = parse_response(DESCRIBE_ENIS, body)?;
    let enis = page
        .network_interface_set
        .into_iter()
        .map(NetworkInterface::into_eni)
        .collect();
    Ok((enis, page.total_count))
}

/// The answer to `DescribeVpcTaskResult`; a status we do not know is malformed.
pub(crate) fn parse_task_status(body: &[u8]) -> Result<TaskStatus, CloudError> {
    let result: TaskResult = parse_response(TASK_RESULT, body)?;
    match result.status.as_str() {
        "SUCCESS" => Ok(TaskStatus::Success),
        "FAILED" => Ok(TaskStatus::Failed),
        "RUNNING" => Ok(TaskStatus::Running),
        other => Err(malformed(
            TASK_RESULT,
            format!("unknown task Status {other:?}"),
        )),
    }
}

/// Parses `{"Response": {...}}`: `Response.Error` becomes a classified error, anything
/// that is not the expected shape is `Response.Malformed`.
pub(crate) fn parse_response<T: DeserializeOwned>(
    action: &'static str,
    body: &[u8],
) -> Result<T, CloudError> {
    let envelope: Value = serde_json::from_slice(body)
        .map_err(|_| malformed(action, "the body is not JSON".to_owned()))?;
    let Some(response) = envelope.get("Response").filter(|r| r.is_object()) else {
        return Err(malformed(action, "no Response object".to_owned()));
    };
    let request_id = response
        .get("RequestId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(error) = response.get("Error") {
        let code = error.get("Code").and_then(Value::as_str).unwrap_or("");
        let message = error.get("Message").and_then(Value::as_str).unwrap_or("");
        if code.is_empty() {
            return Err(malformed(action, "an Error without a Code".to_owned()));
        }
        return Err(CloudError::new(
            action,
            TencentCode::Code(code),
            message,
            request_id,
        ));
    }
    T::deserialize(response).map_err(|e| {
        let mut error = malformed(action, format!("unexpected Response: {e}"));
        error.request_id = request_id;
        error
    })
}

fn malformed(action: &'static str, message: String) -> CloudError {
    CloudError::local(action, "Response.Malformed", message)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RequestOnly {
    request_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TaskResult {
    status: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EniPage {
    #[serde(default)]
    network_interface_set: Vec<NetworkInterface>,
    total_count: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkInterface {
    network_interface_id: String,
    mac_address: MacAddr,
    vpc_id: String,
    subnet_id: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    attachment: Option<NetworkInterfaceAttachment>,
    #[serde(default)]
    private_ip_address_set: Vec<PrivateIpAddress>,
    /// May be null or absent on ENIs without IPv6.
    #[serde(default)]
    ipv6_address_set: Option<Vec<Ipv6Address>>,
}

/// One entry of `Ipv6AddressSet`. `Address` parses as an [`Ipv6Addr`]: any spelling
/// (leading zeros, `::`, upper case) gives the same 128-bit value, and a string that is
/// not an IPv6 address makes the whole answer malformed (a classified error).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Ipv6Address {
    address: Ipv6Addr,
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    state: String,
    #[serde(default)]
    address_id: Option<String>,
    #[serde(default)]
    public_ip_address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkInterfaceAttachment {
    instance_id: String,
    #[serde(default)]
    device_index: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PrivateIpAddress {
    private_ip_address: Ipv4Addr,
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    state: String,
    #[serde(default)]
    address_id: Option<String>,
}

impl NetworkInterface {
    fn into_eni(self) -> Eni {
        Eni {
            id: self.network_interface_id,
            mac: self.mac_address,
            vpc_id: self.vpc_id,
            subnet_id: self.subnet_id,
            state: self.state,
            primary: self.primary,
            // An unattached ENI may carry an empty attachment object.
            attachment: self
                .attachment
                .filter(|a| !a.instance_id.is_empty())
                .map(|a| Attachment {
                    instance_id: a.instance_id,
                    device_index: a.device_index,
                }),
            ips: self
                .private_ip_address_set
                .into_iter()
                .map(|ip| EniIp {
                    addr: IpAddr::V4(ip.private_ip_address),
                    primary: ip.primary,
                    state: ip.state,
                    // The API reports "no EIP" as an empty AddressId.
                    eip: ip.address_id.filter(|id| !id.is_empty()),
                })
                .chain(self.ipv6_address_set.into_iter().flatten().map(|ip| {
                    // Public access bound: an AddressId, or (should the id be missing)
                    // a public address; either one means "bound".
                    let eip = ip
                        .address_id
                        .filter(|id| !id.is_empty())
                        .or(ip.public_ip_address.filter(|p| !p.is_empty()));
                    EniIp {
                        addr: IpAddr::V6(ip.address),
                        primary: ip.primary,
                        state: ip.state,
                        eip,
                    }
                }))
                .collect(),
        }
    }
}

mod claims;
pub(crate) use claims::{ASSIGN, MIGRATE};

#[cfg(test)]
mod tests;
