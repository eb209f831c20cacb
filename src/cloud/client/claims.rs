//! The claim calls (docs/cloud-api.md, "Claims"), always over API 3.0 (the legacy API
//! is not used for claims): the exact holder lookup, `MigratePrivateIpAddress` and
//! `AssignPrivateIpAddresses` with a `ClientToken`, and what their failures mean to a
//! claim ([`ClaimFailure`]).
//!
//! Send policy, per call:
//! - the holder lookup is a read: retried like the listing;
//! - Migrate has no `ClientToken`: sent exactly once, whatever happens. A lost answer
//!   is settled by a fresh lookup, never by a re-send that could move an address the
//!   other node has taken since;
//! - Assign carries a `ClientToken`: a re-send is the same request, so it is retried
//!   like a read.
//!
//! The engine reaches them through the `Cloud` trait (`claim_holders`, `claim_migrate`,
//! `claim_assign`). Each mutating call has its own budget (`Rates::migrate`,
//! `Rates::assign`: a release burst does not delay a claim, nor a claim a release); the
//! lookup shares `DescribeNetworkInterfaces`' and the task polls `DescribeVpcTaskResult`'s
//! with releases, listings and drift reads, and waits there ahead of them
//! ([`Priority::Claim`]).

use std::fmt;

use super::*;
use crate::cloud::v3::{ASSIGN, MIGRATE};

/// An `AssignPrivateIpAddresses` `ClientToken`: at most 64 printable ASCII characters,
/// the same for every send of one claim attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientToken(String);

/// The longest token the API accepts.
pub const MAX_CLIENT_TOKEN_LEN: usize = 64;

impl ClientToken {
    /// The token of one claim attempt: the ENI, the address and the attempt's
    /// generation, so that a retry of the attempt repeats it and a new attempt does not.
    pub fn for_claim(eni_id: &str, ip: Ipv4Addr, generation: u64) -> Option<Self> {
        Self::new(format!("enisync-{eni_id}-{ip}-{generation}"))
    }

    /// `None` unless `text` is 1..=64 printable ASCII characters.
    pub fn new(text: String) -> Option<Self> {
        let ok = !text.is_empty()
            && text.len() <= MAX_CLIENT_TOKEN_LEN
            && text.bytes().all(|b| b.is_ascii_graphic());
        ok.then_some(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a failed claim call means for the claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimFailure {
    /// Migrate: the source no longer holds the address (the other node moved it first).
    /// Re-decided from a fresh lookup; not a contest.
    SourceGone,
    /// Assign: the address is held by someone now. Re-decided from a fresh lookup.
    Taken,
    /// Throttled, busy ENI, transport trouble, malformed reply, our token's first send
    /// still being processed: nothing known, look again later (a fresh lookup first).
    Busy,
    /// Refused (permission, primary IP, subnet mismatch, token mismatch, unknown code):
    /// parked for an operator.
    Refused,
}

impl ClaimFailure {
    /// The meaning of `error`, answered to a claim call (`error.action`).
    pub fn of(error: &CloudError) -> Self {
        match (error.action, error.class) {
            (MIGRATE, ErrorClass::AlreadyGone) => Self::SourceGone,
            (ASSIGN, _) if error.code == "ResourceInUse" => Self::Taken,
            // Not sent (paused meanwhile): looked at again later, where the engine's
            // own pause check holds it.
            (_, ErrorClass::RetryLater | ErrorClass::RefreshCredentials | ErrorClass::NotSent) => {
                Self::Busy
            }
            _ => Self::Refused,
        }
    }
}

impl TencentCloud {
    /// The ENIs of `vpc_id` holding exactly `ip` (filters `vpc-id`, `address-ip`,
    /// `ip-exact-match`), each checked again here: in that VPC and listing `ip`.
    pub async fn claim_holders(&self, vpc_id: &str, ip: Ipv4Addr) -> Result<Vec<Eni>, CloudError> {
        let listed = self
            .call_as(
                DESCRIBE_ENIS,
                &self.limits.describe,
                Priority::Claim,
                self.max_attempts,
                |keys, now| async move { self.v3.describe_holders(&keys, now, vpc_id, ip).await },
            )
            .await?;
        // A filter the service ignored must not make a neighbour the holder.
        let (holders, others): (Vec<Eni>, Vec<Eni>) = listed
            .into_iter()
            .partition(|eni| eni.vpc_id == vpc_id && eni.ip(IpAddr::V4(ip)).is_some());
        if !others.is_empty() {
            tracing::warn!(
                %ip,
                vpc_id,
                ignored = ?others.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
                "the holder lookup listed network interfaces that do not hold the address in this VPC; ignored"
            );
        }
        Ok(holders)
    }

    /// Starts moving `ip` from `src_eni` to `dst_eni`. Sent once, never retried.
    pub async fn claim_migrate(
        &self,
        src_eni: &str,
        dst_eni: &str,
        ip: Ipv4Addr,
        may_send: MaySend<'_>,
    ) -> Result<TaskRef, CloudError> {
        self.invalidate_enis();
        let result = self
            .call_as(
                MIGRATE,
                &self.limits.migrate,
                Priority::Claim,
                1,
                |keys, now| async move {
                    // After the token and the keys, as for an unassign: a pause answered
                    // while this call waited stops it.
                    if !may_send() {
                        return Err(CloudError::not_sent(MIGRATE));
                    }
                    self.v3.migrate(&keys, now, src_eni, dst_eni, ip).await
                },
            )
            .await;
        if let Ok(task) = &result {
            self.remember_claim_task(task);
        }
        match &result {
            Ok(task) => {
                tracing::info!(%ip, src_eni, dst_eni, task_id = %task.task_id, "migrate sent");
            }
            Err(error) => tracing::warn!(%ip, src_eni, dst_eni, %error, "migrate failed"),
        }
        result
    }

    /// Starts assigning `ip` to `eni_id`; a re-send under the same token is the same
    /// request.
    pub async fn claim_assign(
        &self,
        eni_id: &str,
        ip: Ipv4Addr,
        token: &ClientToken,
        may_send: MaySend<'_>,
    ) -> Result<TaskRef, CloudError> {
        self.invalidate_enis();
        let result = self
            .call_as(
                ASSIGN,
                &self.limits.assign,
                Priority::Claim,
                self.max_attempts,
                |keys, now| async move {
                    if !may_send() {
                        return Err(CloudError::not_sent(ASSIGN));
                    }
                    self.v3
                        .assign_ip(&keys, now, eni_id, ip, token.as_str())
                        .await
                },
            )
            .await;
        if let Ok(task) = &result {
            self.remember_claim_task(task);
        }
        match &result {
            Ok(task) => {
                tracing::info!(%ip, eni_id, %token, task_id = %task.task_id, "assign sent");
            }
            Err(error) => tracing::warn!(%ip, eni_id, %token, %error, "assign failed"),
        }
        result
    }
}

/// Claim tasks remembered for their polls' priority; the oldest is forgotten past this
/// (a task nobody follows must not grow the list; a forgotten one is polled as
/// [`Priority::Normal`], still correct).
const CLAIM_TASKS_KEPT: usize = 64;

impl TencentCloud {
    fn remember_claim_task(&self, task: &TaskRef) {
        let mut tasks = self.claim_tasks.lock().unwrap_or_else(|e| e.into_inner());
        if tasks.len() >= CLAIM_TASKS_KEPT {
            tasks.pop_front();
        }
        tasks.push_back(task.task_id.clone());
    }

    /// The priority of `task`'s polls; a claim task is forgotten once followed.
    pub(super) fn task_priority(&self, task: &TaskRef) -> Priority {
        let mut tasks = self.claim_tasks.lock().unwrap_or_else(|e| e.into_inner());
        match tasks.iter().position(|id| *id == task.task_id) {
            Some(at) => {
                tasks.remove(at);
                Priority::Claim
            }
            None => Priority::Normal,
        }
    }
}
