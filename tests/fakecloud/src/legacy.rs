//! The legacy VPC API 2.0 (`GET|POST /v2/index.php`, HmacSHA1/HmacSHA256 signatures,
//! envelope `{"code":0,"message":"","codeDesc":"Success","data":{…}}`).
//!
//! Numeric `code`s (docs/cloud-api.md lists the ranges; which number goes with
//! which failure is the fake's choice):
//!
//! | code | codeDesc |
//! | ---- | -------- |
//! | 4000 | `MissingParameter`, `InvalidParameter*`, `InvalidAction`, `UnsupportedRegion`, `ActionLocked` (busy; see `legacy_code_for`) |
//! | 4100 | `AuthFailure.SignatureFailure`, `AuthFailure.InvalidAuthorization`, other `AuthFailure.*` |
//! | 4102 | `UnauthorizedOperation*` |
//! | 4104 | `AuthFailure.SecretIdNotFound` |
//! | 4105 | `AuthFailure.TokenFailure` |
//! | 4400 | `RequestLimitExceeded*`, `LimitExceeded*` |
//! | 4500 | `AuthFailure.SignatureExpire` (Timestamp outside the 300 s window) |
//! | 5000 | `InvalidVpc.NotFound`, `InvalidNetworkInterface.NotFound`, `InvalidPrivateip.NotFound` (IP not on that ENI), `ResourceNotFound` (unknown taskId) |
//! | 5100 | `InvalidPrivateip.IsPrimary`, `UnsupportedOperation.*` (busy ENI, state) and anything else |

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::auth::{self, AuthError};
use crate::calls::{Call, Surface};
use crate::faults::Fault;
use crate::ops::{Ctx, OpError};
use crate::server::{RawRequest, Reply};
use crate::state::World;

/// The legacy numeric `code` for an error named `code_desc`.
pub fn legacy_code_for(code_desc: &str) -> i64 {
    match code_desc {
        "AuthFailure.SecretIdNotFound" => 4104,
        "AuthFailure.TokenFailure" => 4105,
        "AuthFailure.SignatureExpire" => 4500,
        c if c.starts_with("AuthFailure") => 4100,
        c if c.starts_with("UnauthorizedOperation") => 4102,
        c if c.starts_with("RequestLimitExceeded") || c.starts_with("LimitExceeded") => 4400,
        c if c.starts_with("MissingParameter")
            || c.starts_with("InvalidParameter")
            || c.starts_with("UnknownParameter")
            || c == "InvalidAction"
            || c == "UnsupportedRegion" =>
        {
            4000
        }
        c if c.ends_with(".NotFound") || c.starts_with("ResourceNotFound") => 5000,
        // Tencent's VPC error list names ActionLocked (the resource is busy with another
        // operation) without a number; the fake sends the generic 4000, so that only the
        // name can tell a client it is worth retrying.
        "ActionLocked" => 4000,
        _ => 5100,
    }
}

struct Failure {
    code: i64,
    desc: String,
    message: String,
}

enum Outcome {
    Failed(Failure),
    Fault(Fault),
}

fn fail(desc: &str, message: impl Into<String>) -> Outcome {
    Outcome::Failed(Failure {
        code: legacy_code_for(desc),
        desc: desc.to_string(),
        message: message.into(),
    })
}

impl From<OpError> for Outcome {
    fn from(e: OpError) -> Self {
        let (code, desc) = match e.legacy {
            Some((code, desc)) => (code, desc.to_string()),
            None => (legacy_code_for(&e.code), e.code),
        };
        Self::Failed(Failure {
            code,
            desc,
            message: e.message,
        })
    }
}

impl From<AuthError> for Outcome {
    fn from(e: AuthError) -> Self {
        fail(e.code(), e.message())
    }
}

/// The received parameters: the query string, plus the form body of a POST.
pub(crate) fn params_of(req: &RawRequest) -> BTreeMap<String, String> {
    let mut params: BTreeMap<String, String> = form_urlencoded::parse(req.query.as_bytes())
        .into_owned()
        .collect();
    if req.method == "POST" {
        params.extend(form_urlencoded::parse(&req.body).into_owned());
    }
    params
}

/// Answers one legacy request and describes it for the call log.
pub(crate) fn handle(world: &mut World, req: &RawRequest) -> (Reply, Call) {
    let params = params_of(req);
    let action = params.get("Action").cloned().unwrap_or_default();
    let logged: Map<String, Value> = params
        .iter()
        .filter(|(k, _)| k.as_str() != "Signature")
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut call = Call {
        seq: 0,
        surface: Surface::Legacy,
        action: action.clone(),
        params: Value::Object(logged),
        source: req.source,
        secret_id: None,
        eni: params.get("networkInterfaceId").cloned(),
        ips: ip_params(&params).unwrap_or_default(),
        answer: String::new(),
        http_status: 200,
        request_id: None,
        task: None,
        task_status: None,
        at_ms: world.now_ms(),
    };
    let reply = match process(world, req, &params, &action, &mut call) {
        Ok((data, late)) => {
            call.answer = "Success".to_string();
            let reply = Reply::json(
                200,
                &json!({"code": 0, "message": "", "codeDesc": "Success", "data": data}),
            );
            match late {
                Some(delay) => reply.delayed(delay),
                None => reply,
            }
        }
        Err(Outcome::Failed(f)) => {
            call.answer = f.desc.clone();
            Reply::json(
                200,
                &json!({"code": f.code, "message": f.message, "codeDesc": f.desc}),
            )
        }
        Err(Outcome::Fault(fault)) => {
            let reply = Reply::for_fault(&fault);
            call.answer = reply.answer_label();
            call.http_status = reply.status;
            reply
        }
    };
    (reply, call)
}

type Late = Option<std::time::Duration>;

fn process(
    world: &mut World,
    req: &RawRequest,
    params: &BTreeMap<String, String>,
    action: &str,
    call: &mut Call,
) -> Result<(Value, Late), Outcome> {
    let secret_id = auth::verify_legacy(world, req.method.as_str(), req.header("host"), params)?;
    call.secret_id = Some(secret_id);
    if action.is_empty() {
        return Err(fail("MissingParameter", "missing Action"));
    }
    let region = params
        .get("Region")
        .map(String::as_str)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| fail("MissingParameter", "missing Region"))?;
    if !world.knows_region(region) {
        return Err(fail(
            "UnsupportedRegion",
            format!("region {region:?} is not supported"),
        ));
    }
    let late = match world.faults.take_answer(Surface::Legacy, action) {
        Some(Fault::LateAnswer { after_ms }) => Some(std::time::Duration::from_millis(after_ms)),
        Some(fault) => {
            return Err(match fault.error_code() {
                Some((code, message)) => fail(code, message),
                None => Outcome::Fault(fault),
            });
        }
        None => None,
    };
    let data = match action {
        "UnassignPrivateIpAddresses" => {
            let vpc = required(params, "vpcId")?;
            let eni_id = required(params, "networkInterfaceId")?;
            let ips = ip_params(params)?;
            if !world
                .enis
                .values()
                .any(|e| e.vpc_id == vpc && e.region.as_deref() == Some(region))
            {
                return Err(fail(
                    "InvalidVpc.NotFound",
                    format!("VPC {vpc} does not exist"),
                ));
            }
            if world
                .visible_eni(region, eni_id)
                .is_none_or(|e| e.vpc_id != vpc)
            {
                return Err(fail(
                    "InvalidNetworkInterface.NotFound",
                    format!("network interface {eni_id} does not exist in {vpc}"),
                ));
            }
            let request_id = world.request_id();
            let ctx = Ctx {
                surface: Surface::Legacy,
                region,
                request_id: &request_id,
            };
            let started = world.op_unassign(ctx, eni_id, &ips)?;
            call.task = Some(started.legacy_id.to_string());
            json!({ "taskId": started.legacy_id })
        }
        "DescribeVpcTaskResult" => {
            let text = required(params, "taskId")?;
            call.task = Some(text.to_string());
            let id: u64 = text.trim().parse().map_err(|_| {
                fail(
                    "InvalidParameter",
                    format!("taskId {text:?} is not a number"),
                )
            })?;
            let task = world
                .task_by_legacy_id(id)
                .ok_or_else(|| fail("ResourceNotFound", format!("task {id} does not exist")))?;
            call.task_status = Some(task.status.as_str().to_string());
            json!({ "status": task.status.legacy_code(), "output": task.output })
        }
        other => {
            return Err(fail(
                "InvalidAction",
                format!("the action {other:?} does not exist"),
            ));
        }
    };
    Ok((data, late))
}

fn required<'a>(params: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str, Outcome> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| fail("MissingParameter", format!("missing {name}")))
}

/// `privateIpAddress.0..n` (or the SDK's `privateIpAddress_n`), in index order.
fn ip_params(params: &BTreeMap<String, String>) -> Result<Vec<String>, Outcome> {
    let mut indexed = Vec::new();
    for (name, value) in params {
        let Some(index) = name
            .strip_prefix("privateIpAddress.")
            .or_else(|| name.strip_prefix("privateIpAddress_"))
        else {
            continue;
        };
        let index: u32 = index
            .parse()
            .map_err(|_| fail("InvalidParameter", format!("bad parameter name {name:?}")))?;
        indexed.push((index, value.clone()));
    }
    indexed.sort();
    Ok(indexed.into_iter().map(|(_, ip)| ip).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_table() {
        assert_eq!(legacy_code_for("AuthFailure.SignatureFailure"), 4100);
        assert_eq!(legacy_code_for("AuthFailure.SecretIdNotFound"), 4104);
        assert_eq!(legacy_code_for("AuthFailure.TokenFailure"), 4105);
        assert_eq!(legacy_code_for("AuthFailure.SignatureExpire"), 4500);
        assert_eq!(legacy_code_for("UnauthorizedOperation"), 4102);
        assert_eq!(legacy_code_for("RequestLimitExceeded"), 4400);
        assert_eq!(legacy_code_for("InvalidNetworkInterface.NotFound"), 5000);
        assert_eq!(legacy_code_for("InvalidParameterValue.LimitExceeded"), 4000);
        assert_eq!(legacy_code_for("ActionLocked"), 4000);
        assert_eq!(
            legacy_code_for("UnsupportedOperation.MutexOperationTaskRunning"),
            5100
        );
    }
}
