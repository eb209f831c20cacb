//! The trigger discipline of a claim (docs/design.md, "Claims"), as pure functions: the
//! same as a release's where it applies. An addition counts only on a physical ENI link
//! of this instance that is up and selected (`release.interfaces`), for an IPv4 address
//! of a claim CIDR that is not a primary IP; and only when its adder is one of
//! `claim.adders` (matched with its ancestors, as removers are). An address present at
//! start counts as added at start, with no adder to match.

use std::net::{IpAddr, Ipv4Addr};

use super::super::rule::process_matches;
use super::super::settings::Settings;
use super::keys::ClaimReason;
use crate::host::{HostView, Identity, Link, Remover};
use crate::inventory::Inventory;
use crate::net::glob_match;

/// Why an addition does not lead to a claim (`decision="claim_skipped"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    LinkGone,
    NotPhysical,
    NotSelectedInterface,
    LinkDown,
    NotAnEni,
    PrimaryIp,
    /// The adder is identified and none of its names is in `claim.adders`.
    AdderNotListed,
    /// The adder could not be identified: unknown never means allowed.
    AdderUnknown,
    /// The address left the link before its settle time ended.
    Gone,
}

impl Skip {
    /// The reason of its `claim_skipped` record.
    pub fn reason(self) -> ClaimReason {
        match self {
            Self::LinkGone => ClaimReason::LinkGone,
            Self::NotPhysical => ClaimReason::NotPhysical,
            Self::NotSelectedInterface => ClaimReason::NotSelectedInterface,
            Self::LinkDown => ClaimReason::LinkDown,
            Self::NotAnEni => ClaimReason::NotAnEni,
            Self::PrimaryIp => ClaimReason::PrimaryIp,
            Self::AdderNotListed => ClaimReason::AdderNotListed,
            Self::AdderUnknown => ClaimReason::AdderUnknown,
            Self::Gone => ClaimReason::RemovedWithinSettle,
        }
    }

    /// Off the ENIs (container links, bridges): logged at debug level only.
    pub fn is_off_the_enis(self) -> bool {
        matches!(
            self,
            Self::NotPhysical | Self::NotAnEni | Self::NotSelectedInterface
        )
    }
}

/// The link, ENI and address checks of an addition on `link`, now.
pub(super) fn link_and_address(
    settings: &Settings,
    inventory: &Inventory,
    link: Option<&Link>,
    ip: Ipv4Addr,
) -> Result<(), Skip> {
    let link = link.ok_or(Skip::LinkGone)?;
    if !link.is_physical() {
        return Err(Skip::NotPhysical);
    }
    if !settings.interfaces.is_empty()
        && !settings
            .interfaces
            .iter()
            .any(|g| glob_match(g, &link.name))
    {
        return Err(Skip::NotSelectedInterface);
    }
    if !link.up {
        return Err(Skip::LinkDown);
    }
    if link.mac.and_then(|m| inventory.by_mac(m)).is_none() {
        return Err(Skip::NotAnEni);
    }
    if inventory.is_primary_ip(IpAddr::V4(ip)) {
        return Err(Skip::PrimaryIp);
    }
    Ok(())
}

/// Whether the adder may trigger a claim: identified, and one of its names (its own or
/// an ancestor's) listed.
pub(super) fn adder_allowed(settings: &Settings, adder: Option<&Remover>) -> Result<(), Skip> {
    let Some(adder) = adder else {
        return Err(Skip::AdderUnknown);
    };
    if matches!(adder.identity, Identity::Unknown(_) | Identity::Failed(_)) {
        return Err(Skip::AdderUnknown);
    }
    if adder.names().any(|name| {
        settings
            .claim
            .adders
            .iter()
            .any(|a| process_matches(name, a))
    }) {
        Ok(())
    } else {
        Err(Skip::AdderNotListed)
    }
}

/// Whether `ip` is still on `link`.
pub(super) fn still_there(view: &HostView, link: u32, ip: Ipv4Addr) -> bool {
    view.addrs_on(link).any(|a| a.ip == IpAddr::V4(ip))
}
