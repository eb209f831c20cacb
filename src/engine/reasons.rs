//! Why a release did not happen, waits, is held or was refused: one enum each, from the
//! decision to the journal, the metric labels, the audit fields and `status`. Their
//! keys and texts are interfaces (pinned by `src/engine/tests/golden.rs`).

use std::fmt;

use serde::{Serialize, Serializer};

/// Why a release did not (or will not) happen: one variant per clause of the rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum Cancel {
    /// Clause 2: the kernel removed it (link deleted, lifetime expired).
    KernelRemoval,
    /// Clause 2: a remover we ignore (a network manager or DHCP client).
    IgnoredRemover(String),
    /// Clause 3: swept away with its subnet's kernel-primary address.
    Collateral,
    /// Clause 4: back on a link within the grace period or at send time.
    Readded,
    /// Clause 4: still present on another link.
    PresentElsewhere,
    /// Clause 5: the link went down, was deleted, moved, or changed MAC.
    LinkDown,
    LinkGone,
    MacChanged,
    /// Clause 5: not a physical ENI link, outside `interfaces`, or not an ENI of ours.
    NotPhysical,
    NotSelectedInterface,
    NotAnEni,
    /// IPv6: an address that can never be a candidate (link-local, SLAAC, privacy,
    /// tentative, DAD-failed; docs/design.md, "IPv6"), whoever removed it.
    NotCandidate(crate::host::NotCandidate),
    /// Config filters.
    OutsideInclude,
    Excluded,
    /// Inside `claim.cidrs`: the next holder migrates it.
    ClaimAddress,
    /// A primary IP is never released.
    PrimaryIp,
    /// Clause 7.
    NotListedOnEni,
    EipBound(String),
    EniNotAttached(String),
    /// An operator dropped it.
    Operator,
    /// From an earlier boot and never sent.
    EarlierBoot,
}

impl Cancel {
    /// A short stable key (metrics label, journal, JSON).
    pub fn key(&self) -> &'static str {
        match self {
            Self::KernelRemoval => "kernel_removal",
            Self::IgnoredRemover(_) => "ignored_remover",
            Self::Collateral => "collateral",
            Self::Readded => "readded",
            Self::PresentElsewhere => "present_elsewhere",
            Self::LinkDown => "link_down",
            Self::LinkGone => "link_gone",
            Self::MacChanged => "mac_changed",
            Self::NotPhysical => "not_physical",
            Self::NotSelectedInterface => "not_selected_interface",
            Self::NotAnEni => "not_an_eni",
            Self::NotCandidate(_) => "not_candidate",
            Self::OutsideInclude => "outside_include",
            Self::Excluded => "excluded",
            Self::ClaimAddress => "claim_address",
            Self::PrimaryIp => "primary_ip",
            Self::NotListedOnEni => "not_listed_on_eni",
            Self::EipBound(_) => "eip_bound",
            Self::EniNotAttached(_) => "eni_not_attached",
            Self::Operator => "operator",
            Self::EarlierBoot => "earlier_boot",
        }
    }

    /// What the journal keeps besides the key: the ignored remover, the EIP, why the
    /// ENI is not attached.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::IgnoredRemover(d) | Self::EipBound(d) | Self::EniNotAttached(d) => Some(d),
            Self::NotCandidate(why) => Some(why.key()),
            _ => None,
        }
    }

    /// The clause of the trigger rule (docs/design.md) this reason belongs to; 0 for the
    /// config filters, the primary rule and operator actions.
    pub fn clause(&self) -> u8 {
        match self {
            Self::EarlierBoot => 1,
            Self::KernelRemoval | Self::IgnoredRemover(_) => 2,
            Self::Collateral => 3,
            Self::Readded | Self::PresentElsewhere => 4,
            Self::LinkDown
            | Self::LinkGone
            | Self::MacChanged
            | Self::NotPhysical
            | Self::NotSelectedInterface
            | Self::NotAnEni => 5,
            Self::NotListedOnEni | Self::EipBound(_) | Self::EniNotAttached(_) => 7,
            Self::NotCandidate(_)
            | Self::OutsideInclude
            | Self::Excluded
            | Self::ClaimAddress
            | Self::PrimaryIp
            | Self::Operator => 0,
        }
    }

    /// Removals on links that carry no ENI of ours (container veths, bridges, other
    /// NICs) are not decisions about ENI IPs: on a busy container host their audit
    /// records would flood the journal, so they are written at debug level.
    pub(super) fn is_off_the_enis(&self) -> bool {
        matches!(
            self,
            Self::NotPhysical | Self::NotAnEni | Self::NotSelectedInterface
        )
    }
}

impl fmt::Display for Cancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KernelRemoval => f.write_str("removed by the kernel, not by a user-space tool"),
            Self::IgnoredRemover(p) => write!(f, "removed by ignored process {p}"),
            Self::Collateral => f.write_str("swept away with its subnet's primary address"),
            Self::Readded => f.write_str("back on the host within the grace period"),
            Self::PresentElsewhere => f.write_str("still present on another link"),
            Self::LinkDown => f.write_str("its link went down"),
            Self::LinkGone => f.write_str("its link was deleted or moved to another namespace"),
            Self::MacChanged => f.write_str("its link changed MAC address"),
            Self::NotPhysical => {
                f.write_str("not a physical link (macvlan/ipvlan/VLAN/bridge child)")
            }
            Self::NotSelectedInterface => f.write_str("link outside release.interfaces"),
            Self::NotAnEni => f.write_str("the link's MAC is not an ENI of this instance"),
            Self::NotCandidate(why) => write!(f, "not a candidate: {}", why.key()),
            Self::OutsideInclude => f.write_str("IP outside release.include"),
            Self::Excluded => f.write_str("IP inside release.exclude"),
            Self::ClaimAddress => {
                f.write_str("IP inside claim.cidrs: never released, the next holder migrates it")
            }
            Self::PrimaryIp => f.write_str("a primary IP is never released"),
            Self::NotListedOnEni => f.write_str("the cloud does not list this IP on the ENI"),
            Self::EipBound(id) => write!(f, "an EIP ({id}) is bound and release.with_eip is false"),
            Self::EniNotAttached(why) => {
                write!(f, "the ENI is not attached to this instance: {why}")
            }
            Self::Operator => f.write_str("cancelled by an operator"),
            Self::EarlierBoot => f.write_str("observed in an earlier boot and never sent"),
        }
    }
}

/// Why an intent is held for an operator (`enisync release --held` confirms both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum HeldReason {
    /// Clause 6: part of a burst.
    Burst,
    /// Clause 2: nobody knows who removed it (a resync found it, the remover could not
    /// be identified, or enisync itself failed to identify it). The text says why.
    UnknownRemover(String),
}

impl HeldReason {
    /// The audit record's and the metric's key.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Burst => "held_burst",
            Self::UnknownRemover(_) => "held_unknown_remover",
        }
    }
}

/// Why a release waits before it is checked again. `status` shows the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// The inventory has no ENI for the intent's link yet.
    EniUnknown,
    /// The send-time `DescribeNetworkInterfaces` failed with this code.
    DescribeFailed(String),
    /// Clause 7: the cloud lists no such ENI for this instance (its view may lag).
    EniNotListed,
    /// Clause 7: the cloud does not list the IP on its ENI (its view may lag).
    IpNotListed,
    /// Clause 7: the IP is in this state, not `AVAILABLE`.
    IpState(String),
    /// The per-host release limit is reached.
    HostLimit,
    /// A parked release is tried again.
    RetryingParked,
    /// The cloud said to try again later; `after_error`: it answered with an error (or
    /// none came), not merely "still running".
    Cloud { reason: String, after_error: bool },
}

impl WaitReason {
    /// Whether this wait is a failure `status` lists among the recent errors.
    pub(super) fn is_failure(&self) -> bool {
        match self {
            Self::DescribeFailed(_) => true,
            Self::Cloud { after_error, .. } => *after_error,
            _ => false,
        }
    }
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EniUnknown => f.write_str("the link's ENI is not known yet"),
            Self::DescribeFailed(code) => write!(f, "describe failed: {code}"),
            Self::EniNotListed => f.write_str("the ENI is not listed for this instance"),
            Self::IpNotListed => f.write_str("not listed on the ENI"),
            Self::IpState(state) => write!(f, "IP state {state}"),
            Self::HostLimit => f.write_str("per-host release limit reached"),
            Self::RetryingParked => f.write_str("retrying a parked release"),
            Self::Cloud { reason, .. } => f.write_str(reason),
        }
    }
}

/// `status` shows a wait as its text.
impl Serialize for WaitReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why the cloud refused a release: the metric label of a parked release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Our task ended FAILED `max_task_failures` times.
    TaskFailed,
    /// The cloud says the IP is a primary one.
    PrimaryIp,
    /// The request's signature or keys were not accepted.
    Auth,
    /// The keys lack the permission.
    Permission,
    Other,
}

impl RefusalKind {
    /// The kind of a refusal with this error code (`None`: the task kept failing). The
    /// code is the cloud's (`docs/cloud-api.md`); legacy answers carry their business
    /// name (`InvalidPrivateip.IsPrimary`).
    pub(super) fn of_code(code: Option<&str>) -> Self {
        match code {
            None => Self::TaskFailed,
            Some(c) if c.contains("PrimaryIp") || c.contains("IsPrimary") => Self::PrimaryIp,
            Some(c) if c.contains("AuthFailure") => Self::Auth,
            Some(c) if c.contains("UnauthorizedOperation") => Self::Permission,
            Some(_) => Self::Other,
        }
    }

    /// The `reason` label of `enisync_releases_total{outcome="refused"}`.
    pub fn key(self) -> &'static str {
        match self {
            Self::TaskFailed => "task_failed",
            Self::PrimaryIp => "primary_ip",
            Self::Auth => "auth",
            Self::Permission => "permission",
            Self::Other => "other",
        }
    }
}

/// A refusal by the cloud: its kind, and the cloud's own words for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub text: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `status` shows a refusal as the cloud's words.
impl Serialize for Refusal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
