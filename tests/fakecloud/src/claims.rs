//! `ClientToken` idempotency of `AssignPrivateIpAddresses`, the call a claim makes when
//! nobody holds the address (docs/cloud-api.md, "Claims").
//!
//! Tencent documents the token (≤ 64 ASCII characters) and the two errors
//! `UnsupportedOperation.IdempotentProcessing` and
//! `UnsupportedOperation.IdempotentParameterMismatch`, not the exact replay semantics. The
//! fake's choice, as the common idempotency contract reads:
//! - a token first seen starts the call as usual; it is remembered only if the call was
//!   accepted (a refused call can be retried with the same token);
//! - the same token with other parameters: `IdempotentParameterMismatch`;
//! - the same token and parameters while the first task runs: `IdempotentProcessing`;
//! - the same token and parameters once the first task ended: the first call's answer
//!   again, with a fresh RequestId whose task has already ended the way the first one
//!   did, and nothing changes in the world.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::ops::{Ctx, OpError, Started};
use crate::state::{Effect, FakeIp, FakeTask, FakeTaskStatus, Task, World};

/// The longest `ClientToken` the API accepts.
pub const MAX_CLIENT_TOKEN_LEN: usize = 64;

/// The tokens seen, by token.
#[derive(Debug, Default, Clone)]
pub(crate) struct ClientTokens {
    seen: BTreeMap<String, Remembered>,
}

#[derive(Debug, Clone)]
struct Remembered {
    /// The parameters the token was first used with, in a canonical form.
    params: String,
    /// The task of the first call.
    task: String,
    /// The first answer's `PrivateIpAddressSet`.
    ips: Vec<FakeIp>,
}

impl World {
    /// `AssignPrivateIpAddresses`, with the `ClientToken` rules above when a token is
    /// given.
    pub fn op_assign_with_token(
        &mut self,
        ctx: Ctx<'_>,
        token: Option<&str>,
        eni_id: &str,
        ips: &[String],
        count: Option<u64>,
    ) -> Result<Started, OpError> {
        let Some(token) = token else {
            return self.op_assign(ctx, eni_id, ips, count);
        };
        if token.is_empty()
            || token.len() > MAX_CLIENT_TOKEN_LEN
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(OpError::malformed(&format!(
                "ClientToken must be 1..={MAX_CLIENT_TOKEN_LEN} printable ASCII characters"
            )));
        }
        let params = canonical_params(eni_id, ips, count);
        if let Some(first) = self.client_tokens.seen.get(token).cloned() {
            if first.params != params {
                return Err(OpError::new(
                    "UnsupportedOperation.IdempotentParameterMismatch",
                    "this ClientToken was used with other parameters",
                ));
            }
            let status = self
                .task_by_request_id(&first.task)
                .map_or(FakeTaskStatus::Success, |t| t.status);
            if status == FakeTaskStatus::Running {
                return Err(OpError::new(
                    "UnsupportedOperation.IdempotentProcessing",
                    "the request with this ClientToken is still being processed",
                ));
            }
            return Ok(self.replay(ctx, eni_id, &first, status));
        }
        let started = self.op_assign(ctx, eni_id, ips, count)?;
        self.client_tokens.seen.insert(
            token.to_string(),
            Remembered {
                params,
                task: started.request_id.clone(),
                ips: started.ips.clone(),
            },
        );
        Ok(started)
    }

    /// The answer to a replayed token: an ended task under the new RequestId.
    fn replay(
        &mut self,
        ctx: Ctx<'_>,
        eni_id: &str,
        first: &Remembered,
        status: FakeTaskStatus,
    ) -> Started {
        let legacy_id = self.next_legacy_task_id();
        let output = self
            .task_by_request_id(&first.task)
            .map_or_else(|| "SUCCESS".to_string(), |t| t.output.clone());
        self.tasks.push(Task {
            view: FakeTask {
                request_id: ctx.request_id.to_string(),
                legacy_id,
                action: "AssignPrivateIpAddresses".to_string(),
                enis: vec![eni_id.to_string()],
                ips: first.ips.iter().map(|ip| ip.addr).collect(),
                ipv6: Vec::new(),
                status,
                output,
            },
            started: Instant::now(),
            duration: Duration::ZERO,
            fail: status == FakeTaskStatus::Failed,
            // Already ended: settle() never applies it.
            effect: Effect::Assign {
                eni: eni_id.to_string(),
                ips: Vec::new(),
            },
        });
        Started {
            request_id: ctx.request_id.to_string(),
            legacy_id,
            ips: first.ips.clone(),
        }
    }
}

/// ENI, the sorted addresses and the count: what makes two calls "the same".
fn canonical_params(eni_id: &str, ips: &[String], count: Option<u64>) -> String {
    let mut addrs: Vec<String> = ips
        .iter()
        .map(|text| {
            text.trim()
                .parse::<Ipv4Addr>()
                .map_or_else(|_| text.clone(), |ip| ip.to_string())
        })
        .collect();
    addrs.sort();
    format!("{eni_id}|{}|{count:?}", addrs.join(","))
}
