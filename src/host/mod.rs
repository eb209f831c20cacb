//! The host side: what the kernel says about links and IPv4/IPv6 addresses, in plain types.
//!
//! `watch` turns netlink into [`HostEvent`]s and keeps a [`HostView`] mirror; `routes`
//! plans and applies policy routing, and `routing_adapter` is the engine's `Router` over
//! it; `procs` names the process behind a removal. All netlink access lives in
//! `netlink/`, so an rtnetlink upgrade touches one folder. This file's types are plain
//! data: it imports only `net` (docs/design.md, "Layering").

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::Serialize;

use crate::net::MacAddr;

pub mod bpf;
pub mod netlink;
pub mod procs;
pub mod routes;
pub mod routing_adapter;
pub mod watch;

/// One link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `None` for links without a 6-byte hardware address (lo, tunnels).
    pub mac: Option<MacAddr>,
    /// Administratively up and with carrier (`IFF_UP` and `IFF_RUNNING`/oper state up).
    pub up: bool,
    /// The parent link (`IFLA_LINK`) of macvlan, ipvlan and VLAN children; physical ENI
    /// links have none. A veth's `IFLA_LINK` names its *peer*, not a parent (the two
    /// ends have different MACs), so veths report `None` here: tests use them as ENIs.
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

/// One IPv4 or IPv6 address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Addr {
    pub link: u32,
    pub ip: IpAddr,
    pub prefix: u8,
    /// `IFA_F_SECONDARY`: not the first address of its subnet on this link, so it is
    /// swept away with the subnet's primary when `promote_secondaries` is off. Always
    /// false for IPv6, which has no such sweep (and whose bit 0x01 means `temporary`).
    pub secondary: bool,
    /// IPv6 only: the scope and flags that decide whether the address can ever be a
    /// release candidate (docs/design.md, "IPv6").
    pub v6: Option<V6Facts>,
}

/// The kernel's facts about one IPv6 address: its scope and its 32-bit flags
/// (`IFA_FLAGS`, or the header's low 8 bits when the attribute is absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct V6Facts {
    /// `ifa_scope` is `RT_SCOPE_UNIVERSE` (global); link-local addresses are `link`.
    pub global: bool,
    pub flags: u32,
}

/// Why an IPv6 address on the host can never be a release candidate. Only a global,
/// permanent, settled address that the operator (not autoconfiguration) put there is
/// one; everything else is present for clause 4 but never released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotCandidate {
    /// Link-local or any scope other than global.
    NotGlobal,
    /// Without `IFA_F_PERMANENT`: created by SLAAC (or with lifetimes).
    NotPermanent,
    /// `IFA_F_TEMPORARY`: a privacy address.
    Temporary,
    /// `IFA_F_MANAGETEMPADDR`: the SLAAC address privacy addresses are made from.
    Mngtmpaddr,
    /// `IFA_F_TENTATIVE` or `IFA_F_OPTIMISTIC`: duplicate address detection not done.
    Tentative,
    /// `IFA_F_DADFAILED`: another node holds it.
    DadFailed,
}

impl NotCandidate {
    /// The stable key (audit `reason`, metric label).
    pub fn key(self) -> &'static str {
        match self {
            Self::NotGlobal => "not_global",
            Self::NotPermanent => "not_permanent",
            Self::Temporary => "temporary",
            Self::Mngtmpaddr => "mngtmpaddr",
            Self::Tentative => "tentative",
            Self::DadFailed => "dad_failed",
        }
    }
}

/// `IFA_F_*` (linux/if_addr.h).
pub mod ifa_flags {
    pub const TEMPORARY: u32 = 0x01;
    pub const OPTIMISTIC: u32 = 0x04;
    pub const DADFAILED: u32 = 0x08;
    pub const TENTATIVE: u32 = 0x40;
    pub const PERMANENT: u32 = 0x80;
    pub const MANAGETEMPADDR: u32 = 0x100;
}

impl V6Facts {
    /// `Ok` when the address can be a release candidate, else why not.
    pub fn candidate(self) -> Result<(), NotCandidate> {
        use ifa_flags::*;
        let has = |bit: u32| self.flags & bit != 0;
        if !self.global {
            Err(NotCandidate::NotGlobal)
        } else if has(DADFAILED) {
            Err(NotCandidate::DadFailed)
        } else if has(TENTATIVE) || has(OPTIMISTIC) {
            Err(NotCandidate::Tentative)
        } else if has(TEMPORARY) {
            Err(NotCandidate::Temporary)
        } else if has(MANAGETEMPADDR) {
            Err(NotCandidate::Mngtmpaddr)
        } else if !has(PERMANENT) {
            Err(NotCandidate::NotPermanent)
        } else {
            Ok(())
        }
    }
}

impl Addr {
    /// Whether the address can be a release candidate: every IPv4 address can (the
    /// rule decides), an IPv6 address only as [`V6Facts::candidate`] says.
    pub fn candidate(&self) -> Result<(), NotCandidate> {
        match (self.ip, self.v6) {
            (IpAddr::V4(_), _) => Ok(()),
            (IpAddr::V6(_), Some(facts)) => facts.candidate(),
            // An IPv6 address without its facts is unknown, never allowed.
            (IpAddr::V6(_), None) => Err(NotCandidate::NotPermanent),
        }
    }
}

/// Who removed an address, from the netlink header of the RTM_DELADDR, resolved by
/// `procs` to a process and its ancestors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Remover {
    /// The netlink port id of the requesting socket: 0 for the kernel itself (a link
    /// deleted, an address expiring), usually the pid of a user-space process.
    pub port_id: u32,
    /// The name (`comm`, at most 15 bytes) of the process that asked, when known.
    pub process: Option<String>,
    /// The names of its ancestors, parent first, up to (not including) PID 1, as far
    /// as they are known.
    pub ancestors: Vec<String>,
    /// How far the identification got.
    pub identity: Identity,
}

/// How a remover was identified. Only `Kernel`, `Alive` and `Exited` are identified;
/// the engine holds removals whose remover is `Unknown` or `Failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "why", rename_all = "snake_case")]
pub enum Identity {
    /// Port 0: the kernel on its own.
    Kernel,
    /// Read from `/proc` while the process (and each ancestor named) was alive.
    Alive,
    /// The process had exited; what enisync saw of it before (process events, or an
    /// earlier read) identifies it.
    Exited,
    /// Not identified: no socket, no process, a pid reused or reparented, `/proc`
    /// hidden. The text says which.
    Unknown(String),
    /// enisync's own failure (EMFILE, ENFILE, ENOMEM, a read error, a failed start-up
    /// probe). The text says which.
    Failed(String),
}

impl Remover {
    pub fn kernel() -> Self {
        Self {
            port_id: 0,
            process: None,
            ancestors: Vec::new(),
            identity: Identity::Kernel,
        }
    }

    /// A remover known by name only (a journal replay, tests).
    pub fn named(port_id: u32, name: &str) -> Self {
        Self {
            port_id,
            process: Some(name.to_owned()),
            ancestors: Vec::new(),
            identity: Identity::Alive,
        }
    }

    pub fn unknown(port_id: u32, why: String) -> Self {
        Self {
            port_id,
            process: None,
            ancestors: Vec::new(),
            identity: Identity::Unknown(why),
        }
    }

    pub fn failed(port_id: u32, why: String) -> Self {
        Self {
            port_id,
            process: None,
            ancestors: Vec::new(),
            identity: Identity::Failed(why),
        }
    }

    /// The kernel on its own. Port 0 alone does not say so: IPv6 address notifications
    /// all carry port 0, and their remover is unknown, not the kernel.
    pub fn is_kernel(&self) -> bool {
        self.identity == Identity::Kernel
    }

    /// Why the remover is not identified, if it is not.
    pub fn unidentified(&self) -> Option<&str> {
        match &self.identity {
            Identity::Unknown(why) | Identity::Failed(why) => Some(why),
            _ => None,
        }
    }

    /// The remover's name, then its ancestors', as far as known.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.process
            .iter()
            .chain(self.ancestors.iter())
            .map(String::as_str)
    }

    /// `ip ← dhclient-script ← dhclient`; empty when no name is known.
    pub fn chain(&self) -> String {
        self.names().collect::<Vec<_>>().join(" ← ")
    }
}

/// What the watcher tells the engine. Every removal the kernel reported, and every
/// difference a resync found, becomes exactly one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// An address appeared, or a known one changed its `secondary` flag (promoted to
    /// primary when `promote_secondaries` is on and the subnet's primary was deleted).
    AddrAdded(Addr),
    /// Who added `ip` on `link`: sent right after its `AddrAdded`, for IPv4 addresses of
    /// `WatchOptions::adder_cidrs` on physical links only (claims, docs/design.md).
    AddrAdder {
        ip: IpAddr,
        link: u32,
        adder: Remover,
    },
    /// `remover` is `None` when the removal was found by a resync after an overrun: the
    /// sender is unknown, so the engine treats it as not asked for by anybody.
    AddrRemoved {
        addr: Addr,
        remover: Option<Remover>,
    },
    /// A link appeared or changed (up/down, MAC, name).
    LinkChanged(Link),
    /// A link was deleted or moved to another namespace.
    LinkRemoved { index: u32 },
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
    /// All IPv4 addresses, keyed by [`Addr::key`].
    pub addrs: BTreeMap<AddrKey, Addr>,
}

impl HostView {
    /// Whether `ip` is present on any link, with any prefix.
    pub fn has_ip(&self, ip: IpAddr) -> bool {
        self.addrs
            .range((ip, 0, 0)..=(ip, u32::MAX, u8::MAX))
            .next()
            .is_some()
    }

    /// The addresses on one link.
    pub fn addrs_on(&self, link: u32) -> impl Iterator<Item = &Addr> {
        self.addrs.values().filter(move |a| a.link == link)
    }

    /// Applies one event, so a consumer (the engine) can keep its own copy of the view
    /// in step with the watcher's: starting from the view `watch::start` returned and
    /// applying every event in order yields the watcher's mirror.
    pub fn apply(&mut self, event: &HostEvent) {
        match event {
            HostEvent::AddrAdded(addr) => {
                self.addrs.insert(addr.key(), *addr);
            }
            HostEvent::AddrRemoved { addr, .. } => {
                self.addrs.remove(&addr.key());
            }
            HostEvent::LinkChanged(link) => {
                self.links.insert(link.index, link.clone());
            }
            HostEvent::LinkRemoved { index } => {
                self.links.remove(index);
                // The kernel sends DELADDRs before the DELLINK, but an overrun can lose
                // them; a link that is gone has no addresses either way.
                self.addrs.retain(|_, a| a.link != *index);
            }
            HostEvent::RoutingChanged | HostEvent::Resynced | HostEvent::AddrAdder { .. } => {}
        }
    }

    /// The events that turn `self` into `newer`: removals first (links, then
    /// addresses), then additions and changes. Removals carry `remover: None`, since a
    /// diff cannot know who removed anything.
    pub fn diff(&self, newer: &HostView) -> Vec<HostEvent> {
        let mut events = Vec::new();
        for index in self.links.keys() {
            if !newer.links.contains_key(index) {
                events.push(HostEvent::LinkRemoved { index: *index });
            }
        }
        for (key, addr) in &self.addrs {
            // Addresses of a removed link are dropped by `LinkRemoved` itself.
            if !newer.addrs.contains_key(key) && newer.links.contains_key(&addr.link) {
                events.push(HostEvent::AddrRemoved {
                    addr: *addr,
                    remover: None,
                });
            }
        }
        for (index, link) in &newer.links {
            if self.links.get(index) != Some(link) {
                events.push(HostEvent::LinkChanged(link.clone()));
            }
        }
        for (key, addr) in &newer.addrs {
            if self.addrs.get(key) != Some(addr) {
                events.push(HostEvent::AddrAdded(*addr));
            }
        }
        events
    }
}

/// An address's identity in the mirror: (ip, link, prefix).
pub type AddrKey = (IpAddr, u32, u8);

impl Addr {
    /// The mirror's key. The kernel identifies an IPv4 address by link, address and
    /// prefix length (the same IP may sit on a link twice with different prefixes). The
    /// IP comes first so "is this IP anywhere on the host", asked for every due
    /// release on every turn of the engine, is a range lookup and not a scan of every
    /// address (a container host has thousands).
    pub fn key(&self) -> AddrKey {
        (self.ip, self.link, self.prefix)
    }
}

/// Route scope (`rtm_scope`), the few values policy routing cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Scope {
    /// Routes via a gateway (`RT_SCOPE_UNIVERSE`).
    Universe,
    /// Directly attached subnets (`RT_SCOPE_LINK`).
    Link,
    /// Local addresses (`RT_SCOPE_HOST`).
    Host,
    Other(u8),
}

/// One IPv4 or IPv6 policy rule, as dumped or as wanted.
#[derive(Debug, Clone)]
pub struct Rule {
    pub priority: u32,
    /// The table looked up, from `FRA_TABLE` when present (tables above 255 only
    /// appear there; the header then says 252).
    pub table: u32,
    /// `from <ip>/<len>`; `None` means `from all`.
    pub source: Option<(IpAddr, u8)>,
    /// Any other selector present: destination, iif, oif, fwmark, tos, uid range,
    /// ports, IP protocol, l3mdev, tunnel id, or the `not` (invert) flag. A rule with
    /// such a selector is never a plain `from <ip>/32` rule.
    pub other_selectors: bool,
    /// `FR_ACT_TO_TBL` (a `lookup`); goto, blackhole, prohibit… are not.
    pub lookup: bool,
    /// `FRA_PROTOCOL`: who created the rule (`RTPROT_ENISYNC` for us).
    pub protocol: u8,
    /// The message as the kernel dumped it, handed back verbatim on delete so exactly
    /// this rule goes (a delete built from the fields above could match a rule with
    /// more selectors). `None` for rules we want rather than found.
    pub(crate) raw: Option<netlink::RawRule>,
}

impl Rule {
    /// `from <ip>/32 lookup <table> pref <priority> proto <protocol>`.
    pub fn lookup_from(ip: Ipv4Addr, table: u32, priority: u32, protocol: u8) -> Self {
        Self {
            priority,
            table,
            source: Some((IpAddr::V4(ip), 32)),
            other_selectors: false,
            lookup: true,
            protocol,
            raw: None,
        }
    }

    /// The host IP when this rule's only selector is `from <ip>/32` (IPv4) or
    /// `from <ip>/128` (IPv6).
    pub fn sole_source_host(&self) -> Option<IpAddr> {
        match self.source {
            Some((ip @ IpAddr::V4(_), 32)) | Some((ip @ IpAddr::V6(_), 128))
                if !self.other_selectors =>
            {
                Some(ip)
            }
            _ => None,
        }
    }

    /// Whether two rules select and act the same, ignoring who created them.
    pub fn same_effect(&self, other: &Rule) -> bool {
        self.priority == other.priority
            && self.table == other.table
            && self.source == other.source
            && self.other_selectors == other.other_selectors
            && self.lookup == other.lookup
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: from ", self.priority)?;
        match self.source {
            Some((ip, len)) => write!(f, "{ip}/{len}")?,
            None => f.write_str("all")?,
        }
        if self.other_selectors {
            f.write_str(" (+selectors)")?;
        }
        if self.lookup {
            write!(f, " lookup {}", self.table)?;
        } else {
            f.write_str(" (not a lookup)")?;
        }
        write!(f, " proto {}", self.protocol)
    }
}

/// One IPv4 route, as dumped or as wanted.
#[derive(Debug, Clone)]
pub struct Route {
    /// From `RTA_TABLE` when present (tables above 255 only appear there).
    pub table: u32,
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index (`RTA_OIF`).
    pub oif: Option<u32>,
    /// Preferred source (`RTA_PREFSRC`).
    pub prefsrc: Option<Ipv4Addr>,
    /// `RTA_PRIORITY` (the metric); part of the route's identity in its table.
    pub metric: Option<u32>,
    pub tos: u8,
    /// `rtm_protocol`: who created the route (`RTPROT_ENISYNC` for us).
    pub protocol: u8,
    pub scope: Scope,
    /// `RTN_UNICAST`; local, broadcast, blackhole… routes are not.
    pub unicast: bool,
    /// The dumped message, handed back verbatim on delete. `None` for wanted routes.
    pub(crate) raw: Option<netlink::RawRoute>,
}

impl Route {
    /// The kernel's identity of a route inside one table: replacing a route replaces
    /// the one with this key.
    pub fn key(&self) -> (u32, Ipv4Addr, u8, u8, Option<u32>) {
        (self.table, self.dst, self.prefix, self.tos, self.metric)
    }

    /// Whether two routes have the same identity and the same content, ignoring who
    /// created them.
    pub fn same_effect(&self, other: &Route) -> bool {
        self.key() == other.key()
            && self.gateway == other.gateway
            && self.oif == other.oif
            && self.prefsrc == other.prefsrc
            && self.scope == other.scope
            && self.unicast == other.unicast
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.dst, self.prefix)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        if let Some(src) = self.prefsrc {
            write!(f, " src {src}")?;
        }
        if let Some(metric) = self.metric {
            write!(f, " metric {metric}")?;
        }
        write!(f, " table {} proto {}", self.table, self.protocol)
    }
}

/// Errors of the host layer. Each names the operation and, where one applies, the link
/// and table involved.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Creating or configuring a netlink socket failed.
    #[error("netlink socket: {op}")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// A netlink request failed (the kernel's errno is in `source`).
    #[error("netlink {op}{}", Ctx(*ifindex, *table))]
    Request {
        op: &'static str,
        ifindex: Option<u32>,
        table: Option<u32>,
        #[source]
        source: io::Error,
    },
    /// The startup check found routes enisync did not create in a table it would
    /// manage; managing it would fight whoever owns them.
    #[error(
        "table {table} already holds routes enisync does not own (e.g. {example}); \
         refusing to manage it: choose another table_base or remove them"
    )]
    ForeignTable { table: u32, example: String },
    /// A configuration file could not be read.
    #[error("reading {}", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The watcher task has ended (its receiver was dropped or it failed).
    #[error("the host watcher has stopped")]
    WatcherStopped,
}

impl HostError {
    /// The kernel's errno for a failed request, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Request { source, .. } | Self::Socket { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Formats the optional context of [`HostError::Request`].
struct Ctx(Option<u32>, Option<u32>);

impl fmt::Display for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ifindex) = self.0 {
            write!(f, " (ifindex {ifindex})")?;
        }
        if let Some(table) = self.1 {
            write!(f, " (table {table})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
