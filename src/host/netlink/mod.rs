//! The only file that speaks rtnetlink: sockets, dumps, rule and route changes, and the
//! conversion of netlink messages into the plain types of `host`.
//!
//! Two kinds of socket, as the watcher's recipe wants (docs/design.md, "The data path of one removal"):
//! - [`Netlink`], an ordinary request socket for dumps and changes;
//! - [`EventSocket`], a multicast-only socket that never sends a request, so dump
//!   replies never compete with events for its receive buffer.
//!
//! The files: this one holds the request socket; `events.rs` the event socket and its
//! datagrams; `messages.rs` the conversions between netlink messages and host types;
//! `proc_events.rs` the kernel's process events connector and `taskstats.rs` the
//! kernel's per-task exit records (generic netlink), both for remover identification,
//! which decides what to make of them (`host/procs/`).
//!
//! Dumps do not use strict checking: the kernel then ignores the header's table and
//! protocol and returns every IPv4 route and rule, and we filter in user space.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::sys::{Socket, SocketAddr};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use super::{Addr, HostError, Link, Route, Rule, Scope, V6Facts};
use crate::net::MacAddr;

mod events;
mod messages;
mod proc_events;
mod taskstats;

#[cfg(test)]
pub(crate) use events::parse_datagram;
pub use events::{EventSocket, Notification};
pub use messages::parse_deladdr6_request;
use messages::*;
pub use proc_events::{ProcEvent, ProcEventSocket, parse_proc_events};
#[cfg(test)]
pub(crate) use taskstats::encode_for_test;
pub use taskstats::{Received, TaskStatsRecord, TaskStatsSocket, parse_taskstats};

const EEXIST: i32 = libc::EEXIST;
const ENOENT: i32 = libc::ENOENT;
const ESRCH: i32 = libc::ESRCH;

/// A dumped rule message, kept so a delete hands the kernel exactly what it reported.
#[derive(Clone, PartialEq, Eq)]
pub struct RawRule(RuleMessage);

/// A dumped route message, kept so a delete hands the kernel exactly what it reported.
#[derive(Clone, PartialEq, Eq)]
pub struct RawRoute(RouteMessage);

impl std::fmt::Debug for RawRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawRule")
    }
}

impl std::fmt::Debug for RawRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawRoute")
    }
}

/// Converts an rtnetlink error into the layer's error with its context.
fn request_error(
    op: &'static str,
    ifindex: Option<u32>,
    table: Option<u32>,
    err: rtnetlink::Error,
) -> HostError {
    let source = match &err {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    };
    HostError::Request {
        op,
        ifindex,
        table,
        source,
    }
}

/// The errno of a kernel NACK, if the error is one.
fn nack_code(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

/// A request socket: dumps and changes. Its connection task lives as long as this
/// value (it is aborted on drop).
#[derive(Debug)]
pub struct Netlink {
    handle: Handle,
    task: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    /// Opens a request socket in the caller's network namespace and spawns its
    /// connection task on the current tokio runtime.
    pub fn connect() -> Result<Self, HostError> {
        let (conn, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(|source| HostError::Socket {
                op: "open request socket",
                source,
            })?;
        let task = tokio::spawn(conn);
        Ok(Self { handle, task })
    }

    /// All links.
    pub async fn links(&self) -> Result<Vec<Link>, HostError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| request_error("dump links", None, None, e))?;
        Ok(msgs.iter().map(link_from_msg).collect())
    }

    /// All IPv4 and IPv6 addresses: one dump per family (the request's family makes the
    /// kernel dump that family only).
    pub async fn addrs(&self) -> Result<Vec<Addr>, HostError> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = self.handle.address().get();
            req.message_mut().header.family = family;
            let msgs: Vec<AddressMessage> = req
                .execute()
                .try_collect()
                .await
                .map_err(|e| request_error("dump addresses", None, None, e))?;
            out.extend(msgs.iter().filter_map(addr_from_msg));
        }
        Ok(out)
    }

    /// All IPv4 and IPv6 policy rules (IPv6 ones only matter to the cleanup of
    /// `from <ip>/128` rules after a release).
    pub async fn rules(&self) -> Result<Vec<Rule>, HostError> {
        let mut out = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let msgs: Vec<RuleMessage> = self
                .handle
                .rule()
                .get(version)
                .execute()
                .try_collect()
                .await
                .map_err(|e| request_error("dump rules", None, None, e))?;
            out.extend(msgs.into_iter().filter_map(rule_from_msg));
        }
        Ok(out)
    }

    /// All IPv4 routes of every table.
    pub async fn routes(&self) -> Result<Vec<Route>, HostError> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(|e| request_error("dump routes", None, None, e))?;
        Ok(msgs.into_iter().filter_map(route_from_msg).collect())
    }

    /// Adds a lookup rule built from `rule`'s fields. An identical rule already there
    /// (EEXIST) counts as success.
    pub async fn add_rule(&self, rule: &Rule) -> Result<(), HostError> {
        let mut req = self
            .handle
            .rule()
            .add()
            .v4()
            .table_id(rule.table)
            .priority(rule.priority)
            // rtnetlink defaults to FR_ACT_UNSPEC, which makes every matching lookup
            // fail with EINVAL; iproute2 sets "to table" implicitly, we must too.
            .action(RuleAction::ToTable);
        // Manage mode adds IPv4 rules only (README, "IPv6").
        if let Some((IpAddr::V4(ip), len)) = rule.source {
            req = req.source_prefix(ip, len);
        }
        // No builder method exists for FRA_PROTOCOL.
        req.message_mut()
            .attributes
            .push(RuleAttribute::Protocol(RouteProtocol::from(rule.protocol)));
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if nack_code(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(request_error("add rule", None, Some(rule.table), e)),
        }
    }

    /// Deletes a rule: the dumped message when we have it, else one built from the
    /// fields. A rule already gone (ENOENT) counts as success.
    pub async fn del_rule(&self, rule: &Rule) -> Result<(), HostError> {
        let msg = match &rule.raw {
            Some(RawRule(msg)) => msg.clone(),
            None => rule_to_msg(rule),
        };
        match self.handle.rule().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(nack_code(&e), Some(ENOENT | ESRCH)) => Ok(()),
            Err(e) => Err(request_error("delete rule", None, Some(rule.table), e)),
        }
    }

    /// Adds or replaces (`NLM_F_REPLACE`) a unicast route built from `route`'s fields.
    pub async fn replace_route(&self, route: &Route) -> Result<(), HostError> {
        let msg = route_to_msg(route);
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| request_error("replace route", route.oif, Some(route.table), e))
    }

    /// Deletes a route: the dumped message when we have it, else one built from the
    /// fields. A route already gone (ESRCH/ENOENT) counts as success.
    pub async fn del_route(&self, route: &Route) -> Result<(), HostError> {
        let msg = match &route.raw {
            Some(RawRoute(msg)) => msg.clone(),
            None => route_to_msg(route),
        };
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(nack_code(&e), Some(ENOENT | ESRCH)) => Ok(()),
            Err(e) => Err(request_error(
                "delete route",
                route.oif,
                Some(route.table),
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests;
