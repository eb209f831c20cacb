//! The trigger rule (docs/design.md, "The trigger rule, clause by clause"), as pure
//! functions over the settings, the host view, the inventory and one intent. Each clause
//! is written here once; the engine calls one function per stage: [`at_removal`] when the
//! removal is seen, [`at_deadline`] when its grace period ends and again just before the
//! call, [`at_send`] on the send-time listing. Clause 3 seen from the primary's side is
//! [`swept_with_primary`], clause 6 is `guards::BurstGuard`.

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::intent::{Intent, Phase};
use super::reasons::{Cancel, WaitReason};
use super::settings::Settings;
use crate::cloud::Eni;
use crate::host::{Addr, HostView, Link, Remover};
use crate::inventory::Inventory;
use crate::net::{glob_match, prefix_mask};

/// What the rule sees: the settings, the host now, the instance's ENIs.
#[derive(Clone, Copy)]
pub(super) struct RuleInputs<'a> {
    pub settings: &'a Settings,
    pub view: &'a HostView,
    pub inventory: &'a Inventory,
}

/// The clauses that can be decided the moment a removal is seen (`link`: the removed
/// address's link, as the host has it now).
pub(super) fn at_removal(
    world: RuleInputs<'_>,
    addr: &Addr,
    link: Option<&Link>,
    remover: Option<&Remover>,
) -> Result<(), Cancel> {
    let Some(link) = link else {
        return Err(Cancel::LinkGone);
    };
    remover_not_excluded(world.settings, remover)?;
    link_selected(world.settings, link)?;
    // IPv6: link-local, SLAAC, privacy, tentative and DAD-failed addresses never count,
    // whoever removed them (docs/design.md, "IPv6"). After the link selection, so the
    // link-local churn of container veths stays a debug record.
    addr.candidate().map_err(Cancel::NotCandidate)?;
    address_selected(world.settings, addr.ip)?;
    link_up(link)?;
    never_a_primary(world.inventory, addr.ip)?;
    link_is_an_eni(world.inventory, link)?;
    if !absent_everywhere(world.view, addr.ip) {
        return Err(Cancel::PresentElsewhere);
    }
    Ok(())
}

/// Clauses 4 and 5 against the host now, at the end of the grace period and just before
/// the call.
pub(super) fn at_deadline(world: RuleInputs<'_>, intent: &Intent) -> Result<(), Cancel> {
    if !absent_everywhere(world.view, intent.ip) {
        return Err(Cancel::Readded);
    }
    // An operator asked to release this orphaned claim address by hand.
    if !intent.by_hand {
        not_claimed(world.settings, intent.ip)?;
    }
    let Some(link) = world.view.links.get(&intent.link) else {
        return Err(Cancel::LinkGone);
    };
    link_up(link)?;
    if link.mac != intent.mac {
        return Err(Cancel::MacChanged);
    }
    never_a_primary(world.inventory, intent.ip)?;
    link_is_an_eni(world.inventory, link)
}

/// Clause 2: not the kernel, not an ignored remover nor run by one. A removal whose
/// remover is unknown (a resync found it, or the remover could not be identified) passes
/// here and is held ([`unknown_remover`]): it may be a network manager's flush.
/// `ignore_removers` is matched against every name known, the remover's and its
/// ancestors': `dhclient-script` runs `ip`, and the `ip` it runs must not count as a
/// user's.
fn remover_not_excluded(settings: &Settings, remover: Option<&Remover>) -> Result<(), Cancel> {
    let Some(remover) = remover else {
        return Ok(());
    };
    if remover.is_kernel() {
        return Err(Cancel::KernelRemoval);
    }
    if remover.names().any(|p| {
        settings
            .ignore_removers
            .iter()
            .any(|n| process_matches(p, n))
    }) {
        return Err(Cancel::IgnoredRemover(remover.chain()));
    }
    Ok(())
}

/// Clause 2: why nobody knows who removed an address, if nobody does. A removal found
/// by a resync has no remover at all; one whose remover could not be identified (or
/// that enisync failed to identify) says why.
pub(super) fn unknown_remover(remover: Option<&Remover>) -> Option<String> {
    match remover {
        None => Some("found by a resync: the notification, and who sent it, was lost".into()),
        Some(r) if r.is_kernel() => None,
        Some(r) => match &r.identity {
            crate::host::Identity::Unknown(why) => Some(format!("remover unknown: {why}")),
            crate::host::Identity::Failed(why) => {
                Some(format!("enisync failed to identify the remover: {why}"))
            }
            _ if r.process.is_none() => Some("remover has no name".into()),
            _ => None,
        },
    }
}

/// Clause 3, seen from the primary's side: with promote_secondaries off the kernel
/// deletes the subnet's secondaries (same requester) just before the primary. The
/// intents of `removed`'s sweep, when `removed` is a kernel-primary address.
pub(super) fn swept_with_primary<'a>(
    settings: &Settings,
    intents: impl Iterator<Item = &'a Intent>,
    removed: &Addr,
    remover: Option<&Remover>,
    now: Instant,
) -> Vec<IpAddr> {
    if removed.secondary {
        return Vec::new();
    }
    intents
        .filter(|i| {
            i.link == removed.link
                && i.secondary
                && i.subnet_primary == Some(removed.ip)
                && now.duration_since(i.observed_at) <= settings.burst_window
                && i.remover.as_ref().map(|r| r.port_id) == remover.map(|r| r.port_id)
                && matches!(i.phase, Phase::Pending | Phase::Held)
        })
        .map(|i| i.ip)
        .collect()
}

/// Clause 3 needs the kernel-primary address of `addr`'s subnet on its link as it was
/// before the removal.
/// IPv4 only: IPv6 has no primary/secondary sweep.
pub(super) fn subnet_primary(view: &HostView, addr: &Addr) -> Option<IpAddr> {
    let IpAddr::V4(ip) = addr.ip else {
        return None;
    };
    let mask = prefix_mask(addr.prefix);
    view.addrs_on(addr.link)
        .find(|a| {
            !a.secondary
                && a.prefix == addr.prefix
                && matches!(a.ip, IpAddr::V4(other) if u32::from(other) & mask == u32::from(ip) & mask)
        })
        .map(|a| a.ip)
}

/// Clause 4: on no link, with any prefix.
fn absent_everywhere(view: &HostView, ip: IpAddr) -> bool {
    !view.has_ip(ip)
}

/// Clause 5: a physical link, inside `interfaces`.
fn link_selected(settings: &Settings, link: &Link) -> Result<(), Cancel> {
    if !link.is_physical() {
        return Err(Cancel::NotPhysical);
    }
    if !settings.interfaces.is_empty()
        && !settings
            .interfaces
            .iter()
            .any(|g| glob_match(g, &link.name))
    {
        return Err(Cancel::NotSelectedInterface);
    }
    Ok(())
}

/// The config filters: inside `include` (when set), outside `exclude`. They hold IPv4
/// CIDRs only, so with `include` set no IPv6 address is selected.
fn address_selected(settings: &Settings, ip: IpAddr) -> Result<(), Cancel> {
    let within = |c: &crate::net::Cidr| matches!(ip, IpAddr::V4(v4) if c.contains(v4));
    if !settings.include.is_empty() && !settings.include.iter().any(within) {
        return Err(Cancel::OutsideInclude);
    }
    if settings.exclude.iter().any(within) {
        return Err(Cancel::Excluded);
    }
    not_claimed(settings, ip)
}

/// An address of a claim CIDR is never released: the host that takes it next migrates
/// it (docs/design.md, "Claims"). Checked again at the deadline: a reload may add the CIDR.
fn not_claimed(settings: &Settings, ip: IpAddr) -> Result<(), Cancel> {
    match ip {
        IpAddr::V4(v4) if settings.claim.cidrs.iter().any(|c| c.contains(v4)) => {
            Err(Cancel::ClaimAddress)
        }
        _ => Ok(()),
    }
}

/// Clause 5: the link is up.
fn link_up(link: &Link) -> Result<(), Cancel> {
    if link.up {
        Ok(())
    } else {
        Err(Cancel::LinkDown)
    }
}

/// A primary IP is never released.
fn never_a_primary(inventory: &Inventory, ip: IpAddr) -> Result<(), Cancel> {
    if inventory.is_primary_ip(ip) {
        Err(Cancel::PrimaryIp)
    } else {
        Ok(())
    }
}

/// Clause 5: the link's MAC is an ENI of this instance (undecided while the inventory
/// is incomplete).
fn link_is_an_eni(inventory: &Inventory, link: &Link) -> Result<(), Cancel> {
    if let Some(mac) = link.mac
        && inventory.complete
        && inventory.by_mac(mac).is_none()
    {
        return Err(Cancel::NotAnEni);
    }
    Ok(())
}

/// What the send-time listing says of one IP (clause 7).
#[derive(Debug)]
pub(super) enum CloudVerdict {
    Send,
    /// The cloud does not list it (or its ENI): its view may lag, see [`not_listed`].
    NotListed(WaitReason),
    Wait(WaitReason),
    Cancel(Cancel),
}

/// Clause 7: a secondary of that ENI, attached here, `AVAILABLE`, no EIP unless
/// `with_eip`. `eni`: the intent's ENI in the listing, if listed.
pub(super) fn at_send(
    settings: &Settings,
    inventory: &Inventory,
    eni: Option<&Eni>,
    ip: IpAddr,
) -> CloudVerdict {
    let Some(eni) = eni else {
        return CloudVerdict::NotListed(WaitReason::EniNotListed);
    };
    match &eni.attachment {
        Some(a) if a.instance_id == inventory.instance_id || inventory.instance_id.is_empty() => {}
        Some(a) => {
            return CloudVerdict::Cancel(Cancel::EniNotAttached(format!(
                "attached to {}",
                a.instance_id
            )));
        }
        None => return CloudVerdict::Cancel(Cancel::EniNotAttached("detached".into())),
    }
    if matches!(eni.state.as_str(), "DETACHING" | "DELETING") {
        return CloudVerdict::Cancel(Cancel::EniNotAttached(eni.state.to_lowercase()));
    }
    let Some(entry) = eni.ip(ip) else {
        return CloudVerdict::NotListed(WaitReason::IpNotListed);
    };
    if entry.primary {
        return CloudVerdict::Cancel(Cancel::PrimaryIp);
    }
    if let Some(eip) = &entry.eip
        && !settings.with_eip
    {
        return CloudVerdict::Cancel(Cancel::EipBound(eip.clone()));
    }
    match entry.state.as_str() {
        "AVAILABLE" => CloudVerdict::Send,
        other => CloudVerdict::Wait(WaitReason::IpState(other.to_owned())),
    }
}

/// What becomes of an IP the cloud does not list.
#[derive(Debug)]
pub(super) enum NotListed {
    /// Sent before: released by our earlier call.
    Gone,
    Wait(WaitReason),
    Cancel,
}

/// Clause 7 over time: the cloud's view lags, so an IP it does not list is re-checked for
/// `not_listed_recheck` (from `since`, the first time it was not listed) before the
/// release is cancelled; one we sent is gone because of us.
pub(super) fn not_listed(
    intent: &Intent,
    since: Instant,
    now: Instant,
    recheck: Duration,
    why: WaitReason,
) -> NotListed {
    if intent.sent {
        NotListed::Gone
    } else if now.duration_since(since) >= recheck {
        NotListed::Cancel
    } else {
        NotListed::Wait(why)
    }
}

/// `comm` is truncated to 15 bytes by the kernel (`systemd-networkd` shows as
/// `systemd-network`), so a truncated name matches the configured full name.
pub(super) fn process_matches(comm: &str, configured: &str) -> bool {
    comm == configured || (comm.len() == 15 && configured.starts_with(comm))
}
