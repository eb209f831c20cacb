//! The host side: what the kernel says about links and IPv4 addresses, in plain types.
//!
//! `watch` turns netlink into [`HostEvent`]s and keeps a [`HostView`] mirror; `routes`
//! applies the policy routing the engine asks for. All netlink access lives in
//! `netlink.rs`, so an rtnetlink upgrade touches one file.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::cloud::MacAddr;

/// One link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `None` for links without a 6-byte hardware address (lo, tunnels).
    pub mac: Option<MacAddr>,
    /// Administratively up and with carrier (`IFF_UP` and `IFF_RUNNING`/oper state up).
    pub up: bool,
    /// The parent link (`IFLA_LINK`) of macvlan, ipvlan, VLAN and veth children in
    /// another namespace; physical ENI links have none.
    pub parent: Option<u32>,
    /// `IFLA_INFO_KIND` (`veth`, `macvlan`, `vlan`, `bridge`, …); `None` for real NICs.
    pub kind: Option<String>,
}

impl Link {
    /// A link that can carry an ENI: it has a MAC and no parent, and it is not a
    /// macvlan/ipvlan/VLAN child (those share the ENI's MAC).
    pub fn is_physical(&self) -> bool {
        self.mac.is_some()
            && self.parent.is_none()
            && !matches!(
                self.kind.as_deref(),
                Some("macvlan" | "macvtap" | "ipvlan" | "ipvtap" | "vlan" | "bridge" | "bond")
            )
    }
}

/// One IPv4 address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Addr {
    pub link: u32,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    /// `IFA_F_SECONDARY`: not the first address of its subnet on this link, so it is
    /// swept away with the subnet's primary when `promote_secondaries` is off.
    pub secondary: bool,
}

/// Who removed an address, from the netlink header of the RTM_DELADDR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Remover {
    /// The netlink port id of the requesting socket: 0 for the kernel itself (a link
    /// deleted, an address expiring), usually the pid of a user-space process.
    pub port_id: u32,
    /// `/proc/<port_id>/comm` when that process still exists.
    pub process: Option<String>,
}

impl Remover {
    pub fn is_kernel(&self) -> bool {
        self.port_id == 0
    }
}

/// What the watcher tells the engine. Every removal the kernel reported, and every
/// difference a resync found, becomes exactly one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    AddrAdded(Addr),
    /// `remover` is `None` when the removal was found by a resync after an overrun: the
    /// sender is unknown, so the engine treats it as not asked for by anybody.
    AddrRemoved {
        addr: Addr,
        remover: Option<Remover>,
    },
    /// A link appeared or changed (up/down, MAC, name).
    LinkChanged(Link),
    /// A link was deleted or moved to another namespace.
    LinkRemoved {
        index: u32,
    },
    /// Policy rules or routes changed (someone else's or ours): the routing reconciler
    /// may want to repair.
    RoutingChanged,
    /// The socket overran and the mirror was rebuilt from a dump; the differences were
    /// emitted as events just before this one.
    Resynced,
}

/// The watcher's mirror of links and IPv4 addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    pub links: BTreeMap<u32, Link>,
    /// All IPv4 addresses, keyed by (link, ip, prefix).
    pub addrs: BTreeMap<(u32, Ipv4Addr, u8), Addr>,
}

impl HostView {
    /// Whether `ip` is present on any link, with any prefix.
    pub fn has_ip(&self, ip: Ipv4Addr) -> bool {
        self.addrs.values().any(|a| a.ip == ip)
    }

    /// The addresses on one link.
    pub fn addrs_on(&self, link: u32) -> impl Iterator<Item = &Addr> {
        self.addrs.values().filter(move |a| a.link == link)
    }
}
