//! Whose address is it, and what may this host do about it: the holder decision of a
//! claim (docs/design.md, "Claims"), a pure function of the holder lookup's answer.
//! This is where a wrong claim would be decided, so every case that is not plainly
//! "ours", "a peer's, movable" or "nobody's" parks or waits.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use super::keys::ClaimReason;
use crate::cloud::Eni;

/// The ENI a claim would move the address to (this host's, where it was added).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimTarget {
    pub eni_id: String,
    pub vpc_id: String,
    pub subnet_id: String,
}

/// What to do about an address, given who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderDecision {
    /// This ENI holds it, `AVAILABLE`: nothing to do.
    Mine,
    /// A peer's ENI of the same subnet holds it, `AVAILABLE`: Migrate from there.
    Migrate { source: String },
    /// Nobody in the VPC holds it: Assign it here.
    Assign,
    /// Not now: the holder's entry is not `AVAILABLE` (a task of someone runs).
    Wait(ClaimWait),
    /// Never on our own: an operator must look.
    Park(ParkReason),
}

/// Why a claim waits (`decision="claim_wait"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimWait {
    /// The holder lists the address in this state (`PENDING`, `MIGRATING`, `DELETING`).
    NotAvailable { eni_id: String, state: String },
}

impl ClaimWait {
    /// The reason of its `claim_wait` record.
    pub fn reason(&self) -> ClaimReason {
        match self {
            Self::NotAvailable { .. } => ClaimReason::NotAvailable,
        }
    }
}

impl fmt::Display for ClaimWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAvailable { eni_id, state } => {
                write!(f, "{eni_id} lists it as {state}, not AVAILABLE")
            }
        }
    }
}

/// Why a claim is parked (`decision="claim_parked"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParkReason {
    /// Held by an ENI of an instance outside `claim.peers`, or of no instance.
    ForeignHolder { eni_id: String, instance: String },
    /// It is the primary IP of another ENI: it can never be moved.
    PrimaryElsewhere { eni_id: String },
    /// A peer holds it in another subnet: Migrate cannot move it.
    OtherSubnet { eni_id: String, subnet_id: String },
    /// The lookup answered an ENI of another VPC.
    OtherVpc { eni_id: String, vpc_id: String },
    /// Several ENIs hold it: the answer cannot be right.
    ManyHolders { eni_ids: Vec<String> },
}

impl ParkReason {
    /// The reason of its `claim_parked` record.
    pub fn reason(&self) -> ClaimReason {
        match self {
            Self::ForeignHolder { .. } => ClaimReason::ForeignHolder,
            Self::PrimaryElsewhere { .. } => ClaimReason::PrimaryElsewhere,
            Self::OtherSubnet { .. } => ClaimReason::OtherSubnet,
            Self::OtherVpc { .. } => ClaimReason::OtherVpc,
            Self::ManyHolders { .. } => ClaimReason::ManyHolders,
        }
    }
}

impl fmt::Display for ParkReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ForeignHolder { eni_id, instance } => write!(
                f,
                "held by {eni_id} of {instance}, which is not in claim.peers"
            ),
            Self::PrimaryElsewhere { eni_id } => {
                write!(f, "it is the primary IP of {eni_id}")
            }
            Self::OtherSubnet { eni_id, subnet_id } => {
                write!(f, "held by {eni_id} in another subnet ({subnet_id})")
            }
            Self::OtherVpc { eni_id, vpc_id } => {
                write!(f, "the lookup answered {eni_id} of another VPC ({vpc_id})")
            }
            Self::ManyHolders { eni_ids } => {
                write!(f, "held by several ENIs at once: {}", eni_ids.join(", "))
            }
        }
    }
}

/// The holder decision for `ip`, from the lookup's answer (`holders`), for `target`,
/// with the instances whose ENIs an address may be taken from (`peers`).
pub fn decide(
    holders: &[Eni],
    ip: Ipv4Addr,
    target: &ClaimTarget,
    peers: &[String],
) -> HolderDecision {
    let holder = match holders {
        [] => return HolderDecision::Assign,
        [one] => one,
        many => {
            return HolderDecision::Park(ParkReason::ManyHolders {
                eni_ids: many.iter().map(|e| e.id.clone()).collect(),
            });
        }
    };
    let Some(entry) = holder.ip(IpAddr::V4(ip)) else {
        // The client keeps only ENIs that list the address; one that does not is no
        // holder we can reason about.
        return HolderDecision::Park(ParkReason::ManyHolders {
            eni_ids: vec![holder.id.clone()],
        });
    };
    if holder.vpc_id != target.vpc_id {
        return HolderDecision::Park(ParkReason::OtherVpc {
            eni_id: holder.id.clone(),
            vpc_id: holder.vpc_id.clone(),
        });
    }
    let available = entry.state == "AVAILABLE";
    let wait = || {
        HolderDecision::Wait(ClaimWait::NotAvailable {
            eni_id: holder.id.clone(),
            state: entry.state.clone(),
        })
    };
    if holder.id == target.eni_id {
        return if available {
            HolderDecision::Mine
        } else {
            wait()
        };
    }
    if entry.primary {
        return HolderDecision::Park(ParkReason::PrimaryElsewhere {
            eni_id: holder.id.clone(),
        });
    }
    let instance = holder
        .attachment
        .as_ref()
        .map(|a| a.instance_id.as_str())
        .filter(|i| !i.is_empty());
    if !instance.is_some_and(|i| peers.iter().any(|p| p == i)) {
        return HolderDecision::Park(ParkReason::ForeignHolder {
            eni_id: holder.id.clone(),
            instance: instance.unwrap_or("no instance").to_string(),
        });
    }
    if holder.subnet_id != target.subnet_id {
        return HolderDecision::Park(ParkReason::OtherSubnet {
            eni_id: holder.id.clone(),
            subnet_id: holder.subnet_id.clone(),
        });
    }
    if !available {
        return wait();
    }
    HolderDecision::Migrate {
        source: holder.id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{Attachment, EniIp};
    use crate::net::MacAddr;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);

    fn target() -> ClaimTarget {
        ClaimTarget {
            eni_id: "eni-mine".into(),
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-1".into(),
        }
    }

    fn peers() -> Vec<String> {
        vec!["ins-peer".into()]
    }

    fn eni(id: &str, instance: Option<&str>, primary: bool, state: &str) -> Eni {
        Eni {
            id: id.into(),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-1".into(),
            state: "AVAILABLE".into(),
            primary: false,
            attachment: instance.map(|i| Attachment {
                instance_id: i.into(),
                device_index: 1,
            }),
            ips: vec![EniIp {
                addr: IpAddr::V4(VIP),
                primary,
                state: state.into(),
                eip: None,
            }],
        }
    }

    fn peer() -> Eni {
        eni("eni-peer", Some("ins-peer"), false, "AVAILABLE")
    }

    #[test]
    fn nobody_assigns_mine_does_nothing_a_peer_is_migrated_from() {
        assert_eq!(
            decide(&[], VIP, &target(), &peers()),
            HolderDecision::Assign
        );
        let mine = eni("eni-mine", Some("ins-me"), false, "AVAILABLE");
        assert_eq!(
            decide(&[mine], VIP, &target(), &peers()),
            HolderDecision::Mine
        );
        assert_eq!(
            decide(&[peer()], VIP, &target(), &peers()),
            HolderDecision::Migrate {
                source: "eni-peer".into()
            }
        );
    }

    /// A typo in a wide CIDR must never take another service's IP: only peers' ENIs.
    #[test]
    fn a_holder_outside_the_peers_is_parked_as_foreign() {
        for holder in [
            eni("eni-other", Some("ins-other"), false, "AVAILABLE"),
            eni("eni-loose", None, false, "AVAILABLE"),
            eni("eni-empty", Some(""), false, "AVAILABLE"),
        ] {
            let d = decide(&[holder], VIP, &target(), &peers());
            assert!(
                matches!(&d, HolderDecision::Park(r) if r.reason() == ClaimReason::ForeignHolder),
                "{d:?}"
            );
        }
        // With no peers at all, nothing is ever taken.
        let d = decide(&[peer()], VIP, &target(), &[]);
        assert!(matches!(&d, HolderDecision::Park(r) if r.reason() == ClaimReason::ForeignHolder));
    }

    #[test]
    fn primary_other_subnet_other_vpc_and_many_holders_are_parked() {
        let primary = eni("eni-peer", Some("ins-peer"), true, "AVAILABLE");
        let mut subnet = peer();
        subnet.subnet_id = "subnet-2".into();
        let mut vpc = peer();
        vpc.vpc_id = "vpc-2".into();
        for (holders, key) in [
            (vec![primary], ClaimReason::PrimaryElsewhere),
            (vec![subnet], ClaimReason::OtherSubnet),
            (vec![vpc], ClaimReason::OtherVpc),
            (vec![peer(), peer()], ClaimReason::ManyHolders),
        ] {
            let d = decide(&holders, VIP, &target(), &peers());
            assert!(
                matches!(&d, HolderDecision::Park(r) if r.reason() == key),
                "{key}: {d:?}"
            );
        }
        // Even a primary IP of an ENI not of a peer says why in the most useful way.
        let d = decide(
            &[eni("eni-x", Some("ins-x"), true, "AVAILABLE")],
            VIP,
            &target(),
            &peers(),
        );
        assert!(
            matches!(&d, HolderDecision::Park(r) if r.reason() == ClaimReason::PrimaryElsewhere)
        );
    }

    #[test]
    fn an_entry_that_is_not_available_waits() {
        for state in ["MIGRATING", "PENDING", "DELETING", ""] {
            let d = decide(
                &[eni("eni-peer", Some("ins-peer"), false, state)],
                VIP,
                &target(),
                &peers(),
            );
            assert!(matches!(d, HolderDecision::Wait(_)), "{state}: {d:?}");
            let d = decide(
                &[eni("eni-mine", Some("ins-me"), false, state)],
                VIP,
                &target(),
                &peers(),
            );
            assert!(matches!(d, HolderDecision::Wait(_)), "{state}: {d:?}");
        }
    }

    #[test]
    fn an_eni_that_does_not_list_the_address_is_no_holder() {
        let mut odd = peer();
        odd.ips[0].addr = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 101));
        let d = decide(&[odd], VIP, &target(), &peers());
        assert!(matches!(d, HolderDecision::Park(_)), "{d:?}");
    }
}
