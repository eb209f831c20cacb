//! What a claim decided and why: one enum each, from the decision to the audit record
//! (`decision`, `reason`), the `enisync_claims_total` labels and `status` (docs/design.md,
//! "Claims"). Their keys are interfaces, pinned by `src/engine/tests/golden.rs`; the
//! richer types of the decision (`Skip`, `ClaimWait`, `ParkReason`) map onto a
//! [`ClaimReason`] for their key.

use std::fmt;

/// The `decision` of a claim's audit record and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClaimDecision {
    /// Added; claimed if it stays for `claim.settle` (no reason key).
    Pending,
    /// The addition leads to no claim.
    Skipped,
    /// Bound here.
    Claimed,
    /// Looked up again later.
    Wait,
    /// A Migrate or an Assign went out.
    Sent,
    /// What would have been called (dry run).
    DryRun,
    /// A pause stops the call.
    Paused,
    /// Never on our own: an operator must look (an alarm).
    Parked,
    /// The cloud moved it away while this host kept it (an alarm).
    Contested,
    /// An operator asked to release it (`enisync release <ip>`): a release by hand,
    /// through the checks of any release.
    ReleasePending,
    /// No longer bound here: moved away while gone from the host, or released by an
    /// operator (`enisync release <ip>`).
    Released,
    /// Bound here, absent from the host longer than `claim.orphan_after` (no reason key).
    Orphan,
}

impl ClaimDecision {
    /// The stable key (audit `decision`, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "claim_pending",
            Self::Skipped => "claim_skipped",
            Self::Claimed => "claimed",
            Self::Wait => "claim_wait",
            Self::Sent => "claim_sent",
            Self::DryRun => "claim_dry_run",
            Self::Paused => "claim_paused",
            Self::Parked => "claim_parked",
            Self::Contested => "contested",
            Self::ReleasePending => "claim_release_pending",
            Self::Released => "claim_released",
            Self::Orphan => "claim_orphan",
        }
    }
}

impl fmt::Display for ClaimDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `reason` of a claim's audit record and metric label, and why a claim waits or is
/// parked in `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClaimReason {
    // Skipped: the trigger discipline (`Skip`).
    LinkGone,
    NotPhysical,
    NotSelectedInterface,
    LinkDown,
    NotAnEni,
    PrimaryIp,
    AdderNotListed,
    AdderUnknown,
    RemovedWithinSettle,
    // Claimed.
    HeldHere,
    // Waits: the holder is not AVAILABLE, cloud trouble, our call's task, the start-up
    // hold-off, the migration bound, the other node moved first, no inventory yet, a
    // pause.
    NotAvailable,
    CloudError,
    TaskFailed,
    TaskRunning,
    StartupHoldoff,
    MigrationLimit,
    HolderChanged,
    Inventory,
    Paused,
    // Sent or dry run: the call.
    Assign,
    Migrate,
    // Parked (`ParkReason`), or refused by the cloud.
    ForeignHolder,
    PrimaryElsewhere,
    OtherSubnet,
    OtherVpc,
    ManyHolders,
    Refused,
    // Contested, or released: the cloud moved it away.
    MovedAway,
    // Released, or its release pending: an operator asked (`enisync release <ip>`).
    Operator,
}

impl ClaimReason {
    /// The stable key (audit `reason`, metric label, `status`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LinkGone => "link_gone",
            Self::NotPhysical => "not_physical",
            Self::NotSelectedInterface => "not_selected_interface",
            Self::LinkDown => "link_down",
            Self::NotAnEni => "not_an_eni",
            Self::PrimaryIp => "primary_ip",
            Self::AdderNotListed => "adder_not_listed",
            Self::AdderUnknown => "adder_unknown",
            Self::RemovedWithinSettle => "removed_within_settle",
            Self::HeldHere => "held_here",
            Self::NotAvailable => "not_available",
            Self::CloudError => "cloud_error",
            Self::TaskFailed => "task_failed",
            Self::TaskRunning => "task_running",
            Self::StartupHoldoff => "startup_holdoff",
            Self::MigrationLimit => "migration_limit",
            Self::HolderChanged => "holder_changed",
            Self::Inventory => "inventory",
            Self::Paused => "paused",
            Self::Assign => "assign",
            Self::Migrate => "migrate",
            Self::ForeignHolder => "foreign_holder",
            Self::PrimaryElsewhere => "primary_elsewhere",
            Self::OtherSubnet => "other_subnet",
            Self::OtherVpc => "other_vpc",
            Self::ManyHolders => "many_holders",
            Self::Refused => "refused",
            Self::MovedAway => "moved_away",
            Self::Operator => "operator",
        }
    }
}

impl fmt::Display for ClaimReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
