//! The release procedure the engine runs once its own send-time checks passed: unassign,
//! follow the task, and when the answer is not a plain success, ask the cloud what is
//! true now (a describe) before deciding.
//!
//! Only the describe can turn a doubtful answer into "done": an error that says "not
//! found", a task that failed, a task still running at the cap. An IP still listed on its
//! ENI is never reported as released.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{Cloud, CloudError, ErrorClass, MAX_IPS_PER_CALL, TaskStatus};
use crate::task::TaskRef;

/// How persistent the procedure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleasePolicy {
    /// Failed tasks tolerated before the remaining IPs are refused.
    pub max_task_failures: u32,
}

impl Default for ReleasePolicy {
    fn default() -> Self {
        Self {
            max_task_failures: 3,
        }
    }
}

/// What became of one IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpOutcome {
    /// Our task succeeded, or the cloud no longer lists the IP after our task.
    Released,
    /// The cloud said the IP or ENI was not there, and a describe confirmed it: done.
    AlreadyGone,
    /// Not done; try again later (after backoff). `after_error`: the cloud answered
    /// with an error (or a describe failed), rather than "the task still runs".
    RetryLater { reason: String, after_error: bool },
    /// Not done and not to be retried blindly: park it for an operator. `code`: the
    /// error code of the refusal; `None` when our task failed too often.
    Refused {
        reason: String,
        code: Option<String>,
    },
    /// Not sent: the caller's gate was closed at the moment the unassign would have gone
    /// out (an operator's pause). Nothing was asked of the cloud for it by this call.
    NotSent,
}

impl IpOutcome {
    /// Whether the IP is no longer on its ENI.
    pub fn is_done(&self) -> bool {
        matches!(self, Self::Released | Self::AlreadyGone)
    }
}

/// The result of a release: one outcome per IP (they may differ), and every task that was
/// started (for the journal and the audit log).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReleaseOutcome {
    pub ips: BTreeMap<IpAddr, IpOutcome>,
    pub tasks: Vec<TaskRef>,
}

impl ReleaseOutcome {
    /// The outcome shared by every IP, if they all ended the same way.
    pub fn common(&self) -> Option<&IpOutcome> {
        let mut outcomes = self.ips.values();
        let first = outcomes.next()?;
        outcomes.all(|o| o == first).then_some(first)
    }

    fn set(&mut self, ips: &[IpAddr], outcome: &IpOutcome) {
        for ip in ips {
            self.ips.insert(*ip, outcome.clone());
        }
    }

    fn merge(&mut self, other: Self) {
        self.ips.extend(other.ips);
        self.tasks.extend(other.tasks);
    }
}

/// Releases at most [`MAX_IPS_PER_CALL`] IPs of one ENI (duplicates are ignored).
pub async fn release_batch(
    cloud: &impl Cloud,
    eni_id: &str,
    vpc_id: &str,
    ips: &[IpAddr],
    policy: ReleasePolicy,
) -> ReleaseOutcome {
    release_batch_observed(cloud, eni_id, vpc_id, ips, policy, || true, |_, _| {}).await
}

/// [`release_batch`], asking `may_send` right before every unassign (when it says no,
/// the IPs not yet done are [`IpOutcome::NotSent`] and nothing more is asked of the
/// cloud), and telling `on_sent` about every task the cloud accepted (with the IPs it
/// carries) before following it, so the engine can journal it: a task that was sent is
/// followed to its end even across a restart.
pub async fn release_batch_observed(
    cloud: &impl Cloud,
    eni_id: &str,
    vpc_id: &str,
    ips: &[IpAddr],
    policy: ReleasePolicy,
    may_send: impl Fn() -> bool + Send + Sync,
    mut on_sent: impl FnMut(&[IpAddr], &TaskRef) + Send,
) -> ReleaseOutcome {
    let mut out = ReleaseOutcome::default();
    let mut remaining: Vec<IpAddr> = ips.to_vec();
    remaining.sort_unstable();
    remaining.dedup();
    let mut failures = 0;
    while !remaining.is_empty() {
        if !may_send() {
            out.set(&remaining, &IpOutcome::NotSent);
            return out;
        }
        let task = match cloud.unassign(eni_id, vpc_id, &remaining, &may_send).await {
            Ok(task) => task,
            Err(error) => {
                settle_error(cloud, eni_id, &remaining, &error, &mut out).await;
                return out;
            }
        };
        on_sent(&remaining, &task);
        out.tasks.push(task.clone());
        match cloud.wait_task(&task).await {
            Ok(TaskStatus::Success) => {
                out.set(&remaining, &IpOutcome::Released);
                return out;
            }
            Ok(TaskStatus::Failed) => {
                failures += 1;
                tracing::warn!(eni_id, task_id = %task.task_id, failures, "unassign task failed");
                let Some(listed) = still_listed(cloud, eni_id, &remaining, &mut out).await else {
                    return out;
                };
                // The IPs the cloud no longer lists left because of our (partly
                // successful) task.
                let gone: Vec<_> = remaining
                    .iter()
                    .filter(|ip| !listed.contains(ip))
                    .copied()
                    .collect();
                out.set(&gone, &IpOutcome::Released);
                remaining = listed;
                if failures >= policy.max_task_failures {
                    let reason = format!("task failed {failures} times");
                    out.set(&remaining, &IpOutcome::Refused { reason, code: None });
                    return out;
                }
            }
            Ok(TaskStatus::Running) => {
                let Some(listed) = still_listed(cloud, eni_id, &remaining, &mut out).await else {
                    return out;
                };
                for ip in &remaining {
                    let outcome = if listed.contains(ip) {
                        IpOutcome::RetryLater {
                            reason: format!("task {} still running", task.task_id),
                            after_error: false,
                        }
                    } else {
                        IpOutcome::Released
                    };
                    out.ips.insert(*ip, outcome);
                }
                return out;
            }
            Err(error) => {
                settle_error(cloud, eni_id, &remaining, &error, &mut out).await;
                return out;
            }
        }
    }
    out
}

/// Releases any number of IPs of one ENI, [`MAX_IPS_PER_CALL`] per call, one batch after
/// the other (the engine serialises the calls for one ENI anyway). IPv4 and IPv6 are
/// different actions: a batch holds one family only.
pub async fn release_in_batches(
    cloud: &impl Cloud,
    eni_id: &str,
    vpc_id: &str,
    ips: &[IpAddr],
    policy: ReleasePolicy,
) -> ReleaseOutcome {
    let mut out = ReleaseOutcome::default();
    for batch in family_batches(ips) {
        out.merge(release_batch(cloud, eni_id, vpc_id, &batch, policy).await);
    }
    out
}

/// `ips` cut into calls: by family first, then at most [`MAX_IPS_PER_CALL`] each.
pub fn family_batches(ips: &[IpAddr]) -> Vec<Vec<IpAddr>> {
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = ips.iter().partition(|ip| ip.is_ipv4());
    v4.chunks(MAX_IPS_PER_CALL)
        .chain(v6.chunks(MAX_IPS_PER_CALL))
        .map(<[IpAddr]>::to_vec)
        .collect()
}

/// Turns a classified error for `ips` into outcomes; "already gone" only after a describe
/// agrees.
async fn settle_error(
    cloud: &impl Cloud,
    eni_id: &str,
    ips: &[IpAddr],
    error: &CloudError,
    out: &mut ReleaseOutcome,
) {
    let reason = format!("{}: {}", error.code, error.message);
    match error.class {
        ErrorClass::AlreadyGone => {
            let Some(listed) = still_listed(cloud, eni_id, ips, out).await else {
                return;
            };
            for ip in ips {
                let outcome = if listed.contains(ip) {
                    IpOutcome::RetryLater {
                        reason: format!("{reason} (but the cloud still lists {ip})"),
                        after_error: true,
                    }
                } else {
                    IpOutcome::AlreadyGone
                };
                out.ips.insert(*ip, outcome);
            }
        }
        ErrorClass::RetryLater => out.set(
            ips,
            &IpOutcome::RetryLater {
                reason,
                after_error: true,
            },
        ),
        // The client already refreshed the keys and retried once: the keys or the clock
        // are wrong, which an operator must fix.
        ErrorClass::Refused | ErrorClass::RefreshCredentials => {
            let code = Some(error.code.clone());
            out.set(ips, &IpOutcome::Refused { reason, code });
        }
        // The gate closed while the client waited for a token or keys: as if it had
        // been closed at the check above.
        ErrorClass::NotSent => out.set(ips, &IpOutcome::NotSent),
    }
}

/// Which of `ips` the cloud still lists on `eni_id` (an ENI no longer listed holds none).
/// When the describe itself fails, every IP is set to `RetryLater` and `None` returned.
async fn still_listed(
    cloud: &impl Cloud,
    eni_id: &str,
    ips: &[IpAddr],
    out: &mut ReleaseOutcome,
) -> Option<Vec<IpAddr>> {
    match cloud.list_enis().await {
        Ok(enis) => {
            let eni = enis.iter().find(|eni| eni.id == eni_id);
            Some(
                ips.iter()
                    .filter(|ip| eni.is_some_and(|eni| eni.ip(**ip).is_some()))
                    .copied()
                    .collect(),
            )
        }
        Err(error) => {
            let reason = format!("confirming with a describe failed: {error}");
            out.set(
                ips,
                &IpOutcome::RetryLater {
                    reason,
                    after_error: true,
                },
            );
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::super::classify::TencentCode;
    use super::super::{Eni, EniIp};
    use super::*;
    use crate::net::MacAddr;
    use crate::task::Protocol;

    /// An in-memory cloud: one ENI, scripted answers, a log of calls.
    #[derive(Default)]
    struct FakeCloud {
        state: Mutex<State>,
    }

    #[derive(Default)]
    struct State {
        ips: Vec<IpAddr>,
        /// Answers for successive unassigns; when empty, success.
        unassign: VecDeque<Result<(), &'static str>>,
        /// Task results for successive waits; when empty, success.
        tasks: VecDeque<Result<TaskStatus, &'static str>>,
        /// When set, describes fail with this code.
        describe_error: Option<&'static str>,
        /// Which IPs a failed task still removes.
        removed_by_failed_task: Vec<IpAddr>,
        calls: Vec<String>,
        pending: Vec<IpAddr>,
    }

    fn err(action: &'static str, code: &str) -> CloudError {
        CloudError::new(action, TencentCode::Code(code), "scripted", None)
    }

    impl FakeCloud {
        fn with_ips(ips: &[IpAddr]) -> Self {
            let cloud = Self::default();
            cloud.state.lock().unwrap().ips = ips.to_vec();
            cloud
        }

        fn script(&self, f: impl FnOnce(&mut State)) -> &Self {
            f(&mut self.state.lock().unwrap());
            self
        }

        fn calls(&self) -> Vec<String> {
            self.state.lock().unwrap().calls.clone()
        }

        fn ips(&self) -> Vec<IpAddr> {
            self.state.lock().unwrap().ips.clone()
        }
    }

    impl Cloud for FakeCloud {
        async fn list_enis(&self) -> Result<Vec<Eni>, CloudError> {
            let mut s = self.state.lock().unwrap();
            s.calls.push("describe".into());
            if let Some(code) = s.describe_error {
                return Err(err("DescribeNetworkInterfaces", code));
            }
            Ok(vec![Eni {
                id: "eni-1".into(),
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                vpc_id: "vpc-1".into(),
                subnet_id: "subnet-1".into(),
                state: "AVAILABLE".into(),
                primary: false,
                attachment: None,
                ips: s
                    .ips
                    .iter()
                    .map(|ip| EniIp {
                        addr: *ip,
                        primary: false,
                        state: "AVAILABLE".into(),
                        eip: None,
                    })
                    .collect(),
            }])
        }

        async fn unassign(
            &self,
            eni_id: &str,
            _vpc_id: &str,
            ips: &[IpAddr],
            may_send: crate::cloud::MaySend<'_>,
        ) -> Result<TaskRef, CloudError> {
            if !may_send() {
                return Err(CloudError::not_sent("UnassignPrivateIpAddresses"));
            }
            let mut s = self.state.lock().unwrap();
            s.calls.push(format!("unassign {eni_id} {}", ips.len()));
            assert!(ips.len() <= MAX_IPS_PER_CALL, "the batch limit holds");
            if let Some(Err(code)) = s.unassign.pop_front() {
                return Err(err("UnassignPrivateIpAddresses", code));
            }
            s.pending = ips.to_vec();
            Ok(TaskRef {
                request_id: Some(format!("req-{}", s.calls.len())),
                task_id: format!("req-{}", s.calls.len()),
                protocol: Protocol::V3,
            })
        }

        async fn wait_task(&self, _task: &TaskRef) -> Result<TaskStatus, CloudError> {
            let mut s = self.state.lock().unwrap();
            s.calls.push("wait".into());
            let result = s.tasks.pop_front().unwrap_or(Ok(TaskStatus::Success));
            let removed: Vec<IpAddr> = match result {
                Ok(TaskStatus::Success) => std::mem::take(&mut s.pending),
                Ok(TaskStatus::Failed) => s.removed_by_failed_task.clone(),
                _ => Vec::new(),
            };
            s.ips.retain(|ip| !removed.contains(ip));
            result.map_err(|code| err("DescribeVpcTaskResult", code))
        }
    }

    fn ip(last: u8) -> IpAddr {
        std::net::Ipv4Addr::new(10, 0, 0, last).into()
    }

    fn policy() -> ReleasePolicy {
        ReleasePolicy::default()
    }

    #[tokio::test]
    async fn success_releases_every_ip() {
        let cloud = FakeCloud::with_ips(&[ip(2), ip(3)]);
        let out = release_batch(&cloud, "eni-1", "vpc-1", &[ip(2), ip(3), ip(2)], policy()).await;
        assert_eq!(out.common(), Some(&IpOutcome::Released));
        assert_eq!(out.ips.len(), 2, "duplicates are ignored");
        assert_eq!(out.tasks.len(), 1);
        assert_eq!(cloud.calls(), ["unassign eni-1 2", "wait"]);
        assert!(cloud.ips().is_empty());
    }

    #[tokio::test]
    async fn a_failed_task_retries_only_the_ips_still_listed() {
        let cloud = FakeCloud::with_ips(&[ip(2), ip(3)]);
        cloud.script(|s| {
            s.tasks.push_back(Ok(TaskStatus::Failed));
            s.removed_by_failed_task = vec![ip(2)];
        });
        let out = release_batch(&cloud, "eni-1", "vpc-1", &[ip(2), ip(3)], policy()).await;
        assert_eq!(out.common(), Some(&IpOutcome::Released));
        assert_eq!(
            cloud.calls(),
            [
                "unassign eni-1 2",
                "wait",
                "describe",
                "unassign eni-1 1",
                "wait"
            ]
        );
        assert_eq!(out.tasks.len(), 2);
    }

    #[tokio::test]
    async fn a_task_failing_every_time_is_refused_after_the_bound() {
        let cloud = FakeCloud::with_ips(&[ip(2)]);
        cloud.script(|s| s.tasks = VecDeque::from(vec![Ok(TaskStatus::Failed); 5]));
        let out = release_batch(&cloud, "eni-1", "vpc-1", &[ip(2)], policy()).await;
        assert_eq!(
            out.ips[&ip(2)],
            IpOutcome::Refused {
                reason: "task failed 3 times".into(),
                code: None,
            }
        );
        assert_eq!(out.tasks.len(), 3);
    }

    #[tokio::test]
    async fn a_task_running_at_the_cap_is_judged_by_a_describe() {
        let cloud = FakeCloud::with_ips(&[ip(2), ip(3)]);
        // The task removed ip 2 but not yet ip 3 when we stopped following it.
        cloud.script(|s| {
            s.tasks.push_back(Ok(TaskStatus::Running));
            s.ips = vec![ip(3)];
        });
        let out = release_batch(&cloud, "eni-1", "vpc-1", &[ip(2), ip(3)], policy()).await;
        assert_eq!(out.ips[&ip(2)], IpOutcome::Released);
        assert!(matches!(out.ips[&ip(3)], IpOutcome::RetryLater { .. }));
        assert_eq!(out.common(), None);
    }

    #[tokio::test]
    async fn not_found_counts_as_done_only_when_the_describe_agrees() {
        let cloud = FakeCloud::with_ips(&[ip(3)]);
        cloud.script(|s| s.unassign.push_back(Err("ResourceNotFound")));
        let out = release_batch(&cloud, "eni-1", "vpc-1", &[ip(2), ip(3)], policy()).await;
        assert_eq!(out.ips[&ip(2)], IpOutcome::AlreadyGone);
        assert!(matches!(out.ips[&ip(3)], IpOutcome::RetryLater { .. }));
        assert_eq!(cloud.calls(), ["unassign eni-1 2", "describe"]);
        assert!(out.tasks.is_empty());

        // The describe failing is not a confirmation.
        let cloud = FakeCloud::with_ips(&[]);
        cloud.script(|s| {
            s.unassign
                .push_back(Err("UnsupportedOperation.AttachmentNotFound"));
            s.describe_error = Some("InternalError");
        });
        let out = release_batch(&cloud, "eni-1", "vpc-1", &[ip(2)], policy()).await;
        assert!(matches!(out.ips[&ip(2)], IpOutcome::RetryLater { .. }));
    }

    #[tokio::test]
    async fn refused_and_retry_later_pass_through_with_the_code() {
        let cloud = FakeCloud::with_ips(&[ip(2)]);
        cloud.script(|s| s.unassign.push_back(Err("UnsupportedOperation.PrimaryIp")));
        let out = release_batch(&cloud, "eni-1", "vpc-1", &[ip(2)], policy()).await;
        let Some(IpOutcome::Refused { reason, .. }) = out.common() else {
            panic!("{out:?}")
        };
        assert!(
            reason.starts_with("UnsupportedOperation.PrimaryIp"),
            "{reason}"
        );

        let cloud = FakeCloud::with_ips(&[ip(2)]);
        cloud.script(|s| s.unassign.push_back(Err("RequestLimitExceeded")));
        let out = release_batch(&cloud, "eni-1", "vpc-1", &[ip(2)], policy()).await;
        assert!(matches!(out.common(), Some(IpOutcome::RetryLater { .. })));

        let cloud = FakeCloud::with_ips(&[ip(2)]);
        cloud.script(|s| s.unassign.push_back(Err("AuthFailure.TokenFailure")));
        let out = release_batch(&cloud, "eni-1", "vpc-1", &[ip(2)], policy()).await;
        assert!(matches!(out.common(), Some(IpOutcome::Refused { .. })));
    }

    #[tokio::test]
    async fn a_task_that_vanished_is_confirmed_by_a_describe() {
        let cloud = FakeCloud::with_ips(&[ip(2)]);
        cloud.script(|s| {
            s.tasks.push_back(Err("ResourceNotFound"));
            s.ips.clear();
        });
        let out = release_batch(&cloud, "eni-1", "vpc-1", &[ip(2)], policy()).await;
        assert_eq!(out.common(), Some(&IpOutcome::AlreadyGone));
    }

    #[tokio::test]
    async fn a_closed_gate_sends_nothing_more_and_the_accepted_task_is_followed() {
        use std::sync::atomic::{AtomicBool, Ordering};

        let cloud = FakeCloud::with_ips(&[ip(2), ip(3)]);
        let out = release_batch_observed(
            &cloud,
            "eni-1",
            "vpc-1",
            &[ip(2), ip(3)],
            policy(),
            || false,
            |_, _| {},
        )
        .await;
        assert_eq!(out.common(), Some(&IpOutcome::NotSent));
        assert!(cloud.calls().is_empty(), "{:?}", cloud.calls());

        // Closed once the first call is out: its failed task is followed and confirmed,
        // and the retry is not sent.
        cloud.script(|s| s.tasks.push_back(Ok(TaskStatus::Failed)));
        let open = AtomicBool::new(true);
        let out = release_batch_observed(
            &cloud,
            "eni-1",
            "vpc-1",
            &[ip(2), ip(3)],
            policy(),
            || open.load(Ordering::SeqCst),
            |_, _| open.store(false, Ordering::SeqCst),
        )
        .await;
        assert_eq!(out.common(), Some(&IpOutcome::NotSent));
        assert_eq!(cloud.calls(), ["unassign eni-1 2", "wait", "describe"]);
        assert_eq!(out.tasks.len(), 1);
    }

    #[tokio::test]
    async fn twenty_three_ips_take_three_calls() {
        let ips: Vec<_> = (2..25).map(ip).collect();
        let cloud = FakeCloud::with_ips(&ips);
        let out = release_in_batches(&cloud, "eni-1", "vpc-1", &ips, policy()).await;
        assert_eq!(out.ips.len(), 23);
        assert!(out.ips.values().all(IpOutcome::is_done));
        let unassigns: Vec<_> = cloud
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("unassign"))
            .collect();
        assert_eq!(
            unassigns,
            ["unassign eni-1 10", "unassign eni-1 10", "unassign eni-1 3"]
        );
    }
}
