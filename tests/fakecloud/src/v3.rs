//! API 3.0 (`POST /`, TC3-HMAC-SHA256, JSON envelopes `{"Response": {…}}`).

use serde_json::{Map, Value, json};

use crate::auth::{self, Tc3Input};
use crate::calls::{Call, Surface};
use crate::faults::Fault;
use crate::ops::{Ctx, OpError};
use crate::server::{RawRequest, Reply};
use crate::state::{FakeEni, FakeIp, FakeIpv6, World};

/// The only API version the fake speaks.
pub const VERSION: &str = "2017-03-12";

/// Answers one API 3.0 request and describes it for the call log.
pub(crate) fn handle(world: &mut World, req: &RawRequest) -> (Reply, Call) {
    let request_id = world.request_id();
    let action = req.header("x-tc-action").unwrap_or("").to_string();
    let params: Value = serde_json::from_slice(&req.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&req.body).into_owned()));
    let mut call = Call {
        seq: 0,
        surface: Surface::V3,
        action: action.clone(),
        eni: call_eni(&params),
        ips: call_ips(&params),
        params,
        source: req.source,
        secret_id: None,
        answer: String::new(),
        http_status: 200,
        request_id: Some(request_id.clone()),
        task: None,
        task_status: None,
        at_ms: world.now_ms(),
    };
    let reply = match process(world, req, &action, &request_id, &mut call) {
        Ok(mut out) => {
            call.answer = "Success".to_string();
            out.insert("RequestId".to_string(), Value::String(request_id));
            Reply::json(200, &json!({ "Response": out }))
        }
        Err(Failure::Error(code, message)) => {
            let reply = error_reply(&code, &message, &request_id);
            call.answer = code;
            reply
        }
        Err(Failure::Fault(fault)) => {
            let reply = Reply::for_fault(&fault);
            call.answer = reply.answer_label();
            call.http_status = reply.status;
            reply
        }
        Err(Failure::Late(out, delay)) => {
            call.answer = "Success".to_string();
            let mut out = out;
            out.insert("RequestId".to_string(), Value::String(request_id));
            Reply::json(200, &json!({ "Response": out })).delayed(delay)
        }
    };
    (reply, call)
}

/// The error envelope.
pub(crate) fn error_reply(code: &str, message: &str, request_id: &str) -> Reply {
    Reply::json(
        200,
        &json!({ "Response": {
            "Error": { "Code": code, "Message": message },
            "RequestId": request_id,
        }}),
    )
}

enum Failure {
    Error(String, String),
    Fault(Fault),
    /// Processed successfully; answer late.
    Late(Map<String, Value>, std::time::Duration),
}

impl From<OpError> for Failure {
    fn from(e: OpError) -> Self {
        Self::Error(e.code, e.message)
    }
}

fn fail(code: &str, message: impl Into<String>) -> Failure {
    Failure::Error(code.to_string(), message.into())
}

fn process(
    world: &mut World,
    req: &RawRequest,
    action: &str,
    request_id: &str,
    call: &mut Call,
) -> Result<Map<String, Value>, Failure> {
    let secret_id = auth::verify_tc3(
        world,
        &Tc3Input {
            method: req.method.as_str(),
            host: req.header("host"),
            query: req.query.as_str(),
            content_type: req.header("content-type"),
            authorization: req.header("authorization"),
            timestamp: req.header("x-tc-timestamp"),
            token: req.header("x-tc-token"),
            body: &req.body,
        },
    )
    .map_err(|e| fail(e.code(), e.message()))?;
    call.secret_id = Some(secret_id);

    if action.is_empty() {
        return Err(fail("MissingParameter", "missing X-TC-Action"));
    }
    match req.header("x-tc-version") {
        Some(VERSION) => {}
        Some(other) => {
            return Err(fail(
                "NoSuchVersion",
                format!("version {other:?} does not exist"),
            ));
        }
        None => return Err(fail("MissingParameter", "missing X-TC-Version")),
    }
    let region = req
        .header("x-tc-region")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| fail("MissingParameter", "missing X-TC-Region"))?;
    if !world.knows_region(region) {
        return Err(fail(
            "UnsupportedRegion",
            format!("region {region:?} is not supported"),
        ));
    }
    let now_ms = world.now_ms();
    world
        .fleet
        .admit(action, region, req.source.ip(), now_ms)
        .map_err(|r| fail(&r.code, r.message))?;

    let mut endless = false;
    let late = match world.faults.take_answer(Surface::V3, action) {
        Some(Fault::LateAnswer { after_ms }) => Some(std::time::Duration::from_millis(after_ms)),
        Some(Fault::EndlessListing) if action == "DescribeNetworkInterfaces" => {
            endless = true;
            None
        }
        Some(fault) => {
            return Err(match fault.error_code() {
                Some((code, message)) => fail(code, message),
                None => Failure::Fault(fault),
            });
        }
        None => None,
    };

    let mut body = match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(fail("InvalidParameter", "the body must be a JSON object")),
        Err(e) => {
            return Err(fail(
                "InvalidParameter",
                format!("the body is not JSON: {e}"),
            ));
        }
    };
    let ctx = Ctx {
        surface: Surface::V3,
        region,
        request_id,
    };
    if endless {
        // The first page again, whatever was asked, and always "more to come".
        body.insert("Offset".to_string(), json!(0));
    }
    let mut out = dispatch(world, ctx, action, &body, call)?;
    if endless {
        out.insert("TotalCount".to_string(), json!(1_000_000_000_u64));
    }
    match late {
        Some(delay) => Err(Failure::Late(out, delay)),
        None => Ok(out),
    }
}

fn dispatch(
    world: &mut World,
    ctx: Ctx<'_>,
    action: &str,
    body: &Map<String, Value>,
    call: &mut Call,
) -> Result<Map<String, Value>, Failure> {
    let mut out = Map::new();
    match action {
        "DescribeNetworkInterfaces" => describe(world, ctx.region, body, &mut out)?,
        "UnassignPrivateIpAddresses" => {
            let eni = required_str(body, "NetworkInterfaceId")?;
            let ips = ip_specs(body, "PrivateIpAddresses")?;
            let started = world.op_unassign(ctx, eni, &ips)?;
            call.task = Some(started.request_id);
        }
        "UnassignIpv6Addresses" => {
            let eni = required_str(body, "NetworkInterfaceId")?;
            let addrs = ipv6_specs(body)?;
            let started = world.op_unassign_ipv6(ctx, eni, &addrs)?;
            call.task = Some(started.request_id);
        }
        "AssignPrivateIpAddresses" => {
            let eni = required_str(body, "NetworkInterfaceId")?;
            let ips = if body.contains_key("PrivateIpAddresses") {
                ip_specs(body, "PrivateIpAddresses")?
            } else {
                Vec::new()
            };
            let count = match body.get("SecondaryPrivateIpAddressCount") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    fail(
                        "InvalidParameter",
                        "SecondaryPrivateIpAddressCount must be a non-negative integer",
                    )
                })?),
            };
            let token = match body.get("ClientToken") {
                None | Some(Value::Null) => None,
                Some(Value::String(t)) => Some(t.as_str()),
                Some(_) => return Err(fail("InvalidParameter", "ClientToken must be a string")),
            };
            let started = world.op_assign_with_token(ctx, token, eni, &ips, count)?;
            call.task = Some(started.request_id);
            call.ips = started.ips.iter().map(|ip| ip.addr.to_string()).collect();
            out.insert(
                "PrivateIpAddressSet".to_string(),
                Value::Array(started.ips.iter().map(ip_json).collect()),
            );
        }
        "MigratePrivateIpAddress" => {
            let src = required_str(body, "SourceNetworkInterfaceId")?;
            let dst = required_str(body, "DestinationNetworkInterfaceId")?;
            let ip = required_str(body, "PrivateIpAddress")?;
            let started = world.op_migrate(ctx, src, dst, ip)?;
            call.task = Some(started.request_id);
        }
        "DescribeVpcTaskResult" => {
            let id = required_str(body, "TaskId")?;
            call.task = Some(id.to_string());
            let task = world
                .task_by_request_id(id)
                .ok_or_else(|| fail("ResourceNotFound", format!("task {id} does not exist")))?;
            call.task_status = Some(task.status.as_str().to_string());
            out.insert("Status".to_string(), json!(task.status.as_str()));
            out.insert("Output".to_string(), json!(task.output));
            out.insert("Result".to_string(), Value::Null);
        }
        other => {
            return Err(fail(
                "InvalidAction",
                format!("the action {other:?} does not exist"),
            ));
        }
    }
    Ok(out)
}

/// `DescribeNetworkInterfaces`: ids or filters, paging.
fn describe(
    world: &World,
    region: &str,
    body: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), Failure> {
    let ids = match body.get("NetworkInterfaceIds") {
        None | Some(Value::Null) => None,
        Some(v) => Some(string_list(v, "NetworkInterfaceIds")?),
    };
    let filters = match body.get("Filters") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(parse_filter)
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(fail(
                "InvalidParameter.FilterNotDict",
                "Filters must be an array of {Name, Values}",
            ));
        }
    };
    if ids.is_some() && !filters.is_empty() {
        return Err(fail(
            "InvalidParameter.Coexist",
            "NetworkInterfaceIds and Filters cannot be used together",
        ));
    }
    let offset = int_param(body, "Offset", 0)?;
    let limit = int_param(body, "Limit", 20)?;
    if !(1..=100).contains(&limit) {
        return Err(fail(
            "InvalidParameterValue.Range",
            "Limit must be between 1 and 100",
        ));
    }
    let exact_ip = filters
        .iter()
        .find(|(name, _)| name == "ip-exact-match")
        .is_some_and(|(_, values)| values.iter().any(|v| v.eq_ignore_ascii_case("true")));
    for (name, _) in &filters {
        if !matches!(
            name.as_str(),
            "attachment.instance-id"
                | "network-interface-id"
                | "address-ip"
                | "ip-exact-match"
                | "vpc-id"
                | "subnet-id"
                | "is-primary"
        ) {
            return Err(fail(
                "InvalidParameter.FilterInvalidKey",
                format!("filter {name:?} is not supported"),
            ));
        }
    }
    let matching: Vec<&FakeEni> = world
        .enis
        .values()
        .filter(|eni| eni.region.as_deref() == Some(region))
        .filter(|eni| ids.as_ref().is_none_or(|ids| ids.contains(&eni.id)))
        .filter(|eni| {
            filters
                .iter()
                .all(|(name, values)| filter_matches(eni, name, values, exact_ip))
        })
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(100))
        .map(|eni| eni_json(world, eni))
        .collect();
    out.insert("NetworkInterfaceSet".to_string(), Value::Array(page));
    out.insert("TotalCount".to_string(), json!(matching.len()));
    Ok(())
}

fn filter_matches(eni: &FakeEni, name: &str, values: &[String], exact_ip: bool) -> bool {
    match name {
        "attachment.instance-id" => eni
            .attachment
            .as_ref()
            .is_some_and(|a| values.contains(&a.instance_id)),
        "network-interface-id" => values.contains(&eni.id),
        "vpc-id" => values.contains(&eni.vpc_id),
        "subnet-id" => values.contains(&eni.subnet_id),
        "is-primary" => values
            .iter()
            .any(|v| v.eq_ignore_ascii_case(if eni.primary { "true" } else { "false" })),
        "address-ip" => eni.ips.iter().any(|ip| {
            let text = ip.addr.to_string();
            // As documented: a single value is a suffix match unless ip-exact-match.
            if values.len() == 1 && !exact_ip {
                text.ends_with(values[0].as_str())
            } else {
                values.contains(&text)
            }
        }),
        _ => true,
    }
}

fn parse_filter(item: &Value) -> Result<(String, Vec<String>), Failure> {
    let obj = item.as_object().ok_or_else(|| {
        fail(
            "InvalidParameter.FilterNotDict",
            "each filter must be an object",
        )
    })?;
    let name = obj.get("Name").and_then(Value::as_str).ok_or_else(|| {
        fail(
            "InvalidParameter.FilterNotDict",
            "a filter needs a string Name",
        )
    })?;
    let values = obj
        .get("Values")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            fail(
                "InvalidParameter.FilterValuesNotList",
                format!("filter {name:?}: Values must be a list"),
            )
        })?
        .iter()
        .map(|v| {
            v.as_str().map(str::to_string).ok_or_else(|| {
                fail(
                    "InvalidParameter.FilterValuesNotList",
                    format!("filter {name:?}: every value must be a string"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), values))
}

/// The full `NetworkInterface` shape.
pub(crate) fn eni_json(world: &World, eni: &FakeEni) -> Value {
    let zone = eni
        .instance_id()
        .and_then(|id| world.instances.get(id))
        .map_or_else(
            || format!("{}-1", eni.region.as_deref().unwrap_or("ap-guangzhou")),
            |inst| inst.zone.clone(),
        );
    let attachment = eni.attachment.as_ref().map_or(Value::Null, |a| {
        json!({
            "InstanceId": a.instance_id,
            "DeviceIndex": a.device_index,
            "InstanceAccountId": "100000000001",
            "AttachTime": "2024-01-01 00:00:00",
        })
    });
    let interface_state = if eni.attachment.is_some() && eni.state == "AVAILABLE" {
        "INUSE"
    } else {
        eni.state.as_str()
    };
    json!({
        "NetworkInterfaceId": eni.id,
        "NetworkInterfaceName": eni.id,
        "NetworkInterfaceDescription": "",
        "SubnetId": eni.subnet_id,
        "VpcId": eni.vpc_id,
        "GroupSet": [],
        "Primary": eni.primary,
        "MacAddress": eni.mac,
        "State": eni.state,
        "NetworkInterfaceState": interface_state,
        "PrivateIpAddressSet": eni.ips.iter().map(ip_json).collect::<Vec<_>>(),
        "Attachment": attachment,
        "Zone": zone,
        "CreatedTime": "2024-01-01 00:00:00",
        "Ipv6AddressSet": eni.ipv6.iter().map(ipv6_json).collect::<Vec<_>>(),
        "TagSet": [],
        "EniType": u8::from(eni.primary),
        "Business": "cvm",
        "CdcId": "",
        "AttachType": 0,
        "ResourceId": "",
        "QosLevel": "",
    })
}

/// `PrivateIpAddressSpecification`. Absent EIP fields are empty strings, as Tencent
/// sends them.
fn ip_json(ip: &FakeIp) -> Value {
    json!({
        "PrivateIpAddress": ip.addr.to_string(),
        "Primary": ip.primary,
        "PublicIpAddress": ip.public_ip.map(|p| p.to_string()).unwrap_or_default(),
        "AddressId": ip.eip.clone().unwrap_or_default(),
        "Description": "",
        "IsWanIpBlocked": false,
        "State": ip.state,
        "QosLevel": "DEFAULT",
    })
}

/// An `Ipv6AddressSet` entry (the `Ipv6Address` model). No public access is an empty
/// `AddressId`, as for IPv4.
fn ipv6_json(ip: &FakeIpv6) -> Value {
    json!({
        "Address": ip.spelling.clone().unwrap_or_else(|| ip.addr.to_string()),
        "Primary": ip.primary,
        "AddressId": ip.address_id.clone().unwrap_or_default(),
        "Description": "",
        "IsWanIpBlocked": false,
        "State": ip.state,
        "PublicIpAddress": "",
        "AddressType": ip.address_type,
    })
}

/// `Ipv6Addresses: [{"Address": "…"}, …]` → the addresses as text.
fn ipv6_specs(body: &Map<String, Value>) -> Result<Vec<String>, Failure> {
    let items = match body.get("Ipv6Addresses") {
        None | Some(Value::Null) => {
            return Err(fail("MissingParameter", "missing Ipv6Addresses"));
        }
        Some(Value::Array(items)) => items,
        Some(_) => return Err(fail("InvalidParameter", "Ipv6Addresses must be a list")),
    };
    items
        .iter()
        .map(|item| {
            item.get("Address")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    fail(
                        "InvalidParameter",
                        "every Ipv6Addresses entry needs a string Address",
                    )
                })
        })
        .collect()
}

fn required_str<'a>(body: &'a Map<String, Value>, name: &str) -> Result<&'a str, Failure> {
    match body.get(name) {
        None | Some(Value::Null) => Err(fail("MissingParameter", format!("missing {name}"))),
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(fail("InvalidParameterValue", format!("{name} is empty"))),
        Some(_) => Err(fail("InvalidParameter", format!("{name} must be a string"))),
    }
}

fn int_param(body: &Map<String, Value>, name: &str, default: u64) -> Result<u64, Failure> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().ok_or_else(|| {
            fail(
                "InvalidParameter",
                format!("{name} must be a non-negative integer"),
            )
        }),
    }
}

fn string_list(value: &Value, name: &str) -> Result<Vec<String>, Failure> {
    value
        .as_array()
        .ok_or_else(|| fail("InvalidParameter", format!("{name} must be a list")))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| fail("InvalidParameter", format!("{name}: strings only")))
        })
        .collect()
}

/// `PrivateIpAddresses: [{"PrivateIpAddress": "…"}, …]` → the addresses as text.
fn ip_specs(body: &Map<String, Value>, name: &str) -> Result<Vec<String>, Failure> {
    let items = match body.get(name) {
        None | Some(Value::Null) => {
            return Err(fail("MissingParameter", format!("missing {name}")));
        }
        Some(Value::Array(items)) => items,
        Some(_) => return Err(fail("InvalidParameter", format!("{name} must be a list"))),
    };
    items
        .iter()
        .map(|item| {
            item.get("PrivateIpAddress")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    fail(
                        "InvalidParameter",
                        format!("every {name} entry needs a string PrivateIpAddress"),
                    )
                })
        })
        .collect()
}

fn call_eni(params: &Value) -> Option<String> {
    ["NetworkInterfaceId", "SourceNetworkInterfaceId"]
        .iter()
        .find_map(|k| params.get(k).and_then(Value::as_str))
        .map(|s| {
            match params
                .get("DestinationNetworkInterfaceId")
                .and_then(Value::as_str)
            {
                Some(dst) => format!("{s}->{dst}"),
                None => s.to_string(),
            }
        })
}

fn call_ips(params: &Value) -> Vec<String> {
    if let Some(ip) = params.get("PrivateIpAddress").and_then(Value::as_str) {
        return vec![ip.to_string()];
    }
    if let Some(items) = params.get("Ipv6Addresses").and_then(Value::as_array) {
        return items
            .iter()
            .filter_map(|i| i.get("Address").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
    }
    params
        .get("PrivateIpAddresses")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get("PrivateIpAddress").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}
