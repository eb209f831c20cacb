//! The claim's cloud work, spawned off the loop: the holder lookup, and a Migrate or an
//! Assign followed to its task's end. Each reports back with the attempt it was for, so
//! a report for an attempt the engine has since replaced is dropped.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::cloud::client::ClientToken;
use crate::cloud::{Cloud, CloudError, Eni, TaskStatus};
use crate::pause::SendGate;

/// The call a claim makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimCall {
    /// From the peer's ENI that holds the address.
    Migrate { source: String },
    /// Nobody holds it; a re-send of this attempt repeats its token.
    Assign { token: ClientToken },
}

impl ClaimCall {
    pub fn action(&self) -> &'static str {
        match self {
            Self::Migrate { .. } => "MigratePrivateIpAddress",
            Self::Assign { .. } => "AssignPrivateIpAddresses",
        }
    }
}

/// Why a lookup was made: before a decision, right after our own call succeeded, or to
/// re-verify a claimed address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupPurpose {
    Decide,
    AfterCall,
    Reverify,
}

#[derive(Debug)]
pub(in crate::engine) enum ClaimReport {
    Holders {
        ip: Ipv4Addr,
        attempt: u64,
        purpose: LookupPurpose,
        result: Result<Vec<Eni>, CloudError>,
    },
    Called {
        ip: Ipv4Addr,
        attempt: u64,
        action: &'static str,
        result: Result<TaskStatus, CloudError>,
    },
}

/// Looks up the holders of `ip` in `vpc_id` and reports.
pub(super) fn spawn_lookup<C: Cloud>(
    cloud: &Arc<C>,
    tx: &tokio::sync::mpsc::UnboundedSender<ClaimReport>,
    vpc_id: String,
    ip: Ipv4Addr,
    attempt: u64,
    purpose: LookupPurpose,
) {
    let cloud = Arc::clone(cloud);
    let tx = tx.clone();
    tokio::spawn(async move {
        let result = cloud.claim_holders(&vpc_id, ip).await;
        let _ = tx.send(ClaimReport::Holders {
            ip,
            attempt,
            purpose,
            result,
        });
    });
}

/// Sends `call` for `ip` to `eni_id` unless a pause came since `gate` was opened (asked
/// again inside the client, right before the request), follows its task to the end, and
/// reports.
pub(super) fn spawn_call<C: Cloud>(
    cloud: &Arc<C>,
    tx: &tokio::sync::mpsc::UnboundedSender<ClaimReport>,
    call: ClaimCall,
    eni_id: String,
    ip: Ipv4Addr,
    attempt: u64,
    gate: SendGate,
) {
    let cloud = Arc::clone(cloud);
    let tx = tx.clone();
    let action = call.action();
    tokio::spawn(async move {
        let may_send = || gate.is_open();
        let started = match &call {
            ClaimCall::Migrate { source } => {
                cloud.claim_migrate(source, &eni_id, ip, &may_send).await
            }
            ClaimCall::Assign { token } => cloud.claim_assign(&eni_id, ip, token, &may_send).await,
        };
        let result = match started {
            Ok(task) => cloud.wait_task(&task).await,
            Err(error) => Err(error),
        };
        let _ = tx.send(ClaimReport::Called {
            ip,
            attempt,
            action,
            result,
        });
    });
}
