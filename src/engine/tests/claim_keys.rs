//! The claim decision and reason keys, from the enums themselves (docs/design.md,
//! "Claims"): the scenario goldens of `golden.rs` pin what the engine writes; this pins
//! what it can write.

use std::collections::BTreeSet;

use super::golden::assert_golden;

/// Every `ClaimDecision` and `ClaimReason` key, listed from the enums themselves: a new
/// variant fails to compile here until it is added to the lists and to
/// `claim_keys.tsv`, so no value reaches operators without a deliberate golden change.
/// Every value the scenarios above pin must be one of these keys.
#[test]
fn claim_decision_and_reason_keys_are_golden() {
    use crate::engine::{ClaimDecision as D, ClaimReason as R};
    let decisions = [
        D::Pending,
        D::Skipped,
        D::Claimed,
        D::Wait,
        D::Sent,
        D::DryRun,
        D::Paused,
        D::Parked,
        D::Contested,
        D::ReleasePending,
        D::Released,
        D::Orphan,
    ];
    let reasons = [
        R::LinkGone,
        R::NotPhysical,
        R::NotSelectedInterface,
        R::LinkDown,
        R::NotAnEni,
        R::PrimaryIp,
        R::AdderNotListed,
        R::AdderUnknown,
        R::RemovedWithinSettle,
        R::HeldHere,
        R::NotAvailable,
        R::CloudError,
        R::TaskFailed,
        R::TaskRunning,
        R::StartupHoldoff,
        R::MigrationLimit,
        R::HolderChanged,
        R::Inventory,
        R::Paused,
        R::Assign,
        R::Migrate,
        R::ForeignHolder,
        R::PrimaryElsewhere,
        R::OtherSubnet,
        R::OtherVpc,
        R::ManyHolders,
        R::Refused,
        R::MovedAway,
        R::Operator,
    ];
    for d in decisions {
        match d {
            D::Pending
            | D::Skipped
            | D::Claimed
            | D::Wait
            | D::Sent
            | D::DryRun
            | D::Paused
            | D::Parked
            | D::Contested
            | D::ReleasePending
            | D::Released
            | D::Orphan => {}
        }
    }
    for r in reasons {
        match r {
            R::LinkGone
            | R::NotPhysical
            | R::NotSelectedInterface
            | R::LinkDown
            | R::NotAnEni
            | R::PrimaryIp
            | R::AdderNotListed
            | R::AdderUnknown
            | R::RemovedWithinSettle
            | R::HeldHere
            | R::NotAvailable
            | R::CloudError
            | R::TaskFailed
            | R::TaskRunning
            | R::StartupHoldoff
            | R::MigrationLimit
            | R::HolderChanged
            | R::Inventory
            | R::Paused
            | R::Assign
            | R::Migrate
            | R::ForeignHolder
            | R::PrimaryElsewhere
            | R::OtherSubnet
            | R::OtherVpc
            | R::ManyHolders
            | R::Refused
            | R::MovedAway
            | R::Operator => {}
        }
    }
    let decision_keys: BTreeSet<&str> = decisions.iter().map(|d| d.as_str()).collect();
    let reason_keys: BTreeSet<&str> = reasons.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        decision_keys.len(),
        decisions.len(),
        "two decisions share a key"
    );
    assert_eq!(reason_keys.len(), reasons.len(), "two reasons share a key");
    let text: String = decisions
        .iter()
        .map(|d| format!("decision\t{d}\n"))
        .chain(reasons.iter().map(|r| format!("reason\t{r}\n")))
        .collect();
    assert_golden("claim_keys.tsv", &text);

    // The pinned audit values and labels are made of these keys only.
    let golden = |name: &str| {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/golden")
                .join(name),
        )
        .expect("golden file")
    };
    for line in golden("claim_audit_values.tsv").lines() {
        let (decision, reason) = line
            .split_once('\t')
            .map_or((line, None), |(d, r)| (d, Some(r)));
        assert!(decision_keys.contains(decision), "{line}: unknown decision");
        assert!(
            reason.is_none_or(|r| reason_keys.contains(r)),
            "{line}: unknown reason"
        );
    }
    for line in golden("claim_labels.txt").lines() {
        let pairs = line
            .trim_start_matches("enisync_claims_total{")
            .trim_end_matches('}');
        let (decision, reason) = pairs.split_once(',').expect("two labels");
        let value = |kv: &str, key: &str| {
            kv.strip_prefix(key)
                .and_then(|v| v.strip_prefix("=\""))
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_owned)
                .unwrap_or_default()
        };
        assert!(
            decision_keys.contains(value(decision, "decision").as_str()),
            "{line}"
        );
        assert!(
            reason_keys.contains(value(reason, "reason").as_str()),
            "{line}"
        );
    }
}
