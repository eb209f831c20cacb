//! The only file that speaks rtnetlink: sockets, dumps, rule and route changes, and the
//! conversion of netlink messages into the plain types of `host`.
//!
//! Two kinds of socket, as the watcher's recipe wants (docs/design.md, "The data path of one removal"):
//! - [`Netlink`], an ordinary request socket for dumps and changes;
//! - [`EventSocket`], a multicast-only socket that never sends a request, so dump
//!   replies never compete with events for its receive buffer.
//!
//! Dumps do not use strict checking: the kernel then ignores the header's table and
//! protocol and returns every IPv4 route and rule, and we filter in user space.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
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

use super::{Addr, HostError, Link, Route, Rule, Scope};
use crate::net::MacAddr;

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

    /// All IPv4 addresses. The request's family makes the kernel dump IPv4 only.
    pub async fn addrs(&self) -> Result<Vec<Addr>, HostError> {
        let mut req = self.handle.address().get();
        req.message_mut().header.family = AddressFamily::Inet;
        let msgs: Vec<AddressMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(|e| request_error("dump addresses", None, None, e))?;
        Ok(msgs.iter().filter_map(addr_from_msg).collect())
    }

    /// All IPv4 policy rules.
    pub async fn rules(&self) -> Result<Vec<Rule>, HostError> {
        let msgs: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .map_err(|e| request_error("dump rules", None, None, e))?;
        Ok(msgs.into_iter().filter_map(rule_from_msg).collect())
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
        if let Some((ip, len)) = rule.source {
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

/// One message from the event socket, already reduced to what the watcher needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// RTM_NEWLINK.
    NewLink(Link),
    /// RTM_DELLINK (deleted, or moved to another namespace).
    DelLink(u32),
    /// RTM_NEWADDR for IPv4, with the port id of the socket that asked (0: the kernel).
    NewAddr { addr: Addr, port_id: u32 },
    /// RTM_DELADDR for IPv4, with the netlink header's port id: the port of the socket
    /// that asked for the change, 0 when the kernel did it on its own.
    DelAddr { addr: Addr, port_id: u32 },
    /// A rule or route was added or deleted.
    Routing,
    /// The kernel dropped notifications (ENOBUFS): the mirror must be rebuilt.
    Overrun,
    /// Anything else (IPv6 addresses, unparsable attributes, other message types).
    Ignored,
}

/// A multicast-only socket subscribed to link, IPv4 address, IPv4 rule and IPv4 route
/// notifications, read by the watcher itself.
///
/// Not an rtnetlink `Connection`: that is a task of its own that wakes, reads and
/// forwards through a channel for every datagram, and the watcher wakes again to take
/// it. Reading here lets the watcher take a whole burst in one wakeup (`try_next`
/// drains what the kernel has queued without going back to the reactor).
pub struct EventSocket {
    socket: Registration,
    /// One datagram at a time; the kernel never splits a message across datagrams.
    buf: Vec<u8>,
    /// Notifications parsed from the last datagram and not yet handed out.
    queued: VecDeque<Notification>,
    /// The receive buffer the kernel reports after our request (it doubles the value
    /// and floors it).
    pub effective_rcvbuf: usize,
    /// Datagrams dropped because another process, not the kernel, sent them.
    forged: u64,
}

/// The socket, registered with the reactor or parked outside it. Parked, arriving
/// notifications queue in the kernel without waking the process: tokio registers
/// edge-triggered, and every datagram would otherwise end the reactor's wait.
enum Registration {
    Live(AsyncFd<Socket>),
    Parked(Socket),
    /// Only while switching between the two, or after a failed re-registration.
    Gone,
}

impl std::fmt::Debug for EventSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSocket")
            .field("effective_rcvbuf", &self.effective_rcvbuf)
            .finish_non_exhaustive()
    }
}

/// Large enough for any single rtnetlink notification (a link message with every
/// attribute stays well under a page; the kernel sizes them to fit `NLMSG_GOODSIZE`).
const DATAGRAM_CAPACITY: usize = 64 * 1024;

/// Registers `socket` with the current runtime's reactor for reading.
fn register(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: the `Socket` owns its descriptor and closes it only when dropped; while
    // the `AsyncFd` owns the `Socket`, `as_raw_fd` returns that same open descriptor.
    unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }.map_err(io::Error::from)
}

impl EventSocket {
    /// Subscribes (binds the groups) before anything is sent on the socket and sets the
    /// receive buffer. Needs a tokio runtime (the socket registers with its reactor).
    ///
    /// `NETLINK_NO_ENOBUFS` is deliberately left off: losing notifications must show
    /// up as an overrun, since the watcher keeps a mirror that would silently drift.
    pub fn open(rcvbuf: usize) -> Result<Self, HostError> {
        let socket_error = |op: &'static str| move |source| HostError::Socket { op, source };
        let mut socket = Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
            .map_err(socket_error("open event socket"))?;
        socket
            .set_non_blocking(true)
            .map_err(socket_error("set the event socket non-blocking"))?;
        let groups = [
            libc::RTNLGRP_LINK,
            libc::RTNLGRP_IPV4_IFADDR,
            libc::RTNLGRP_IPV4_ROUTE,
            libc::RTNLGRP_IPV4_RULE,
        ];
        let mask = groups.iter().fold(0u32, |mask, g| mask | 1 << (g - 1));
        socket
            .bind(&SocketAddr::new(0, mask))
            .map_err(socket_error("subscribe event socket"))?;
        set_rcvbuf(socket.as_raw_fd(), rcvbuf)?;
        let effective_rcvbuf = socket
            .get_rx_buf_sz()
            .map_err(socket_error("read SO_RCVBUF"))?;
        let socket = register(socket).map_err(socket_error("register event socket"))?;
        Ok(Self {
            socket: Registration::Live(socket),
            buf: Vec::with_capacity(DATAGRAM_CAPACITY),
            queued: VecDeque::new(),
            effective_rcvbuf,
            forged: 0,
        })
    }

    /// Takes the socket out of the reactor until the next `next`: notifications keep
    /// queuing in the kernel (and overrun there, as ever, if the buffer fills), but do
    /// not wake the process one by one.
    pub fn park(&mut self) {
        self.socket = match std::mem::replace(&mut self.socket, Registration::Gone) {
            Registration::Live(fd) => Registration::Parked(fd.into_inner()),
            other => other,
        };
    }

    /// Puts a parked socket back into the reactor; false if that failed.
    fn unpark(&mut self) -> bool {
        self.socket = match std::mem::replace(&mut self.socket, Registration::Gone) {
            Registration::Parked(socket) => match register(socket) {
                Ok(fd) => Registration::Live(fd),
                Err(e) => {
                    tracing::error!(error = %e, "netlink event socket could not be re-registered");
                    return false;
                }
            },
            other => other,
        };
        true
    }

    /// The next notification; `None` when the socket failed for good.
    pub async fn next(&mut self) -> Option<Notification> {
        loop {
            if let Some(n) = self.queued.pop_front() {
                return Some(n);
            }
            if matches!(self.socket, Registration::Parked(_)) {
                if !self.unpark() {
                    return None;
                }
                // What queued while parked is there now: take it without a trip
                // through the reactor.
                match self.try_next() {
                    Ok(Some(n)) => return Some(n),
                    Ok(None) => {}
                    Err(()) => return None,
                }
            }
            let Registration::Live(fd) = &self.socket else {
                return None;
            };
            self.buf.clear();
            let received = loop {
                let mut ready = match fd.readable().await {
                    Ok(ready) => ready,
                    Err(e) => break Err(e),
                };
                match ready.try_io(|fd| fd.get_ref().recv_from(&mut self.buf, 0)) {
                    Ok(result) => break result.map(|(_, from)| from),
                    Err(_would_block) => continue,
                }
            };
            if !self.take(received) {
                return None;
            }
        }
    }

    /// A notification already queued, without waiting. `Ok(None)` when nothing is
    /// queued right now, `Err(())` when the socket failed for good.
    #[allow(clippy::result_unit_err)]
    pub fn try_next(&mut self) -> Result<Option<Notification>, ()> {
        loop {
            if let Some(n) = self.queued.pop_front() {
                return Ok(Some(n));
            }
            self.buf.clear();
            let socket = match &self.socket {
                Registration::Live(fd) => fd.get_ref(),
                Registration::Parked(socket) => socket,
                Registration::Gone => return Err(()),
            };
            // The socket is non-blocking: WouldBlock means the kernel has nothing queued.
            // Reading around the reactor leaves its readiness flag set at worst, which
            // only costs `next` one WouldBlock before it waits.
            let received = socket.recv_from(&mut self.buf, 0).map(|(_, from)| from);
            match received {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                other => {
                    if !self.take(other) {
                        return Err(());
                    }
                }
            }
        }
    }

    /// Parses what one receive produced into `queued`; false when the socket failed.
    fn take(&mut self, received: io::Result<SocketAddr>) -> bool {
        match received {
            Ok(from) if !from_kernel(&from) => {
                // Any process with CAP_NET_ADMIN can unicast a forged RTM_DELADDR to our
                // port (or multicast one to the groups); acting on it would release an IP
                // that is still on the host. Only the kernel speaks with source port 0.
                // The header's nlmsg_pid is not the test: on a real notification it
                // carries the port of the process that asked for the change.
                self.forged = self.forged.saturating_add(1);
                if self.forged.is_power_of_two() {
                    tracing::warn!(
                        sender_port = from.port_number(),
                        dropped = self.forged,
                        "netlink datagram not sent by the kernel ignored"
                    );
                }
                true
            }
            Ok(_) => {
                parse_datagram(&self.buf, &mut self.queued);
                true
            }
            // The kernel dropped notifications: the receive buffer was full.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                self.queued.push_back(Notification::Overrun);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(e) => {
                tracing::error!(error = %e, "netlink event socket failed");
                false
            }
        }
    }
}

/// Whether a datagram's source address (from `recvfrom`, filled in by the kernel, which a
/// sender cannot forge) is the kernel itself: port 0. A user-space sender always has a
/// port of its own.
fn from_kernel(from: &SocketAddr) -> bool {
    from.port_number() == 0
}

/// Appends the notifications of one datagram to `out`. Something unparsable (a kernel
/// newer than our parser, a truncated read) becomes an overrun: the watcher then
/// resyncs, so whatever the message said reaches the mirror through the dump.
pub(crate) fn parse_datagram(mut rest: &[u8], out: &mut VecDeque<Notification>) {
    while !rest.is_empty() {
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest) {
            Ok(msg) => {
                // `deserialize` checked the length against the buffer; 0 cannot parse.
                let len = (msg.header.length as usize).max(1);
                out.push_back(notification_from_msg(msg));
                // Messages are 4-byte aligned within a datagram.
                rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
            }
            Err(e) => {
                tracing::warn!(error = %e, "unparsable netlink notification; resyncing");
                out.push_back(Notification::Overrun);
                return;
            }
        }
    }
}

/// Sets the socket's receive buffer: `SO_RCVBUFFORCE` first (needs CAP_NET_ADMIN, may
/// exceed `net.core.rmem_max`), `SO_RCVBUF` (capped at `rmem_max`) when refused.
fn set_rcvbuf(fd: libc::c_int, size: usize) -> Result<(), HostError> {
    let value = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .unwrap_or(libc::socklen_t::MAX);
    let set = |option: libc::c_int| -> io::Result<()> {
        // SAFETY: `fd` is the open netlink socket owned by the connection we hold;
        // `value` lives for the whole call and `len` is exactly its size, so the kernel
        // reads a valid c_int and nothing else.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&value).cast::<libc::c_void>(),
                len,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    match set(libc::SO_RCVBUFFORCE) {
        Ok(()) => Ok(()),
        Err(forced) => {
            tracing::debug!(error = %forced, "SO_RCVBUFFORCE refused, using SO_RCVBUF");
            set(libc::SO_RCVBUF).map_err(|source| HostError::Socket {
                op: "set SO_RCVBUF",
                source,
            })
        }
    }
}

fn notification_from_msg(msg: NetlinkMessage<RouteNetlinkMessage>) -> Notification {
    let port_id = msg.header.port_number;
    match msg.payload {
        NetlinkPayload::Overrun(_) => Notification::Overrun,
        NetlinkPayload::InnerMessage(inner) => match inner {
            RouteNetlinkMessage::NewLink(link) => Notification::NewLink(link_from_msg(&link)),
            RouteNetlinkMessage::DelLink(link) => Notification::DelLink(link.header.index),
            RouteNetlinkMessage::NewAddress(a) => {
                addr_from_msg(&a).map_or(Notification::Ignored, |addr| Notification::NewAddr {
                    addr,
                    port_id,
                })
            }
            RouteNetlinkMessage::DelAddress(a) => match addr_from_msg(&a) {
                Some(addr) => Notification::DelAddr { addr, port_id },
                None => Notification::Ignored,
            },
            RouteNetlinkMessage::NewRule(_)
            | RouteNetlinkMessage::DelRule(_)
            | RouteNetlinkMessage::NewRoute(_)
            | RouteNetlinkMessage::DelRoute(_) => Notification::Routing,
            _ => Notification::Ignored,
        },
        _ => Notification::Ignored,
    }
}

fn link_from_msg(msg: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut hwaddr: Option<&[u8]> = None;
    let mut link_attr = None;
    let mut kind = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name.clone_from(n),
            LinkAttribute::Address(a) => hwaddr = Some(a),
            LinkAttribute::Link(l) => link_attr = Some(*l),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        kind = Some(k.clone());
                    }
                }
            }
            _ => {}
        }
    }
    // lo reports a 6-byte all-zero address; only Ethernet-like links carry an ENI MAC.
    let mac = match hwaddr {
        Some(bytes) if msg.header.link_layer_type == LinkLayerType::Ether => {
            <[u8; 6]>::try_from(bytes)
                .ok()
                .filter(|b| b.iter().any(|x| *x != 0))
                .map(MacAddr)
        }
        _ => None,
    };
    // A veth's IFLA_LINK is its peer, not a parent sharing its MAC.
    let parent = if matches!(kind, Some(InfoKind::Veth)) {
        None
    } else {
        link_attr.filter(|p| *p != 0 && *p != msg.header.index)
    };
    let flags = msg.header.flags;
    Link {
        index: msg.header.index,
        name,
        mac,
        up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::Running),
        parent,
        kind: kind.map(|k| k.to_string()),
    }
}

fn addr_from_msg(msg: &AddressMessage) -> Option<Addr> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
    // point-to-point links and equal to IFA_LOCAL otherwise.
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
            AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    Some(Addr {
        link: msg.header.index,
        ip,
        prefix: msg.header.prefix_len,
        secondary: msg.header.flags.contains(AddressHeaderFlags::Secondary),
    })
}

fn v4(addr: &RouteAddress) -> Option<Ipv4Addr> {
    match addr {
        RouteAddress::Inet(ip) => Some(*ip),
        _ => None,
    }
}

fn rule_from_msg(msg: RuleMessage) -> Option<Rule> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut priority = 0;
    let mut source = None;
    let mut protocol = 0;
    let mut other_selectors = msg.header.tos != 0
        || msg.header.dst_len != 0
        || msg.header.flags.contains(RuleFlags::Invert);
    for attr in &msg.attributes {
        match attr {
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Source(IpAddr::V4(ip)) => source = Some((*ip, msg.header.src_len)),
            RuleAttribute::Protocol(p) => protocol = u8::from(*p),
            RuleAttribute::Destination(_)
            | RuleAttribute::Iifname(_)
            | RuleAttribute::Oifname(_)
            | RuleAttribute::FwMark(_)
            | RuleAttribute::TunId(_)
            | RuleAttribute::UidRange(_)
            | RuleAttribute::IpProtocol(_)
            | RuleAttribute::SourcePortRange(_)
            | RuleAttribute::DestinationPortRange(_) => other_selectors = true,
            RuleAttribute::L3MDev(on) => other_selectors |= *on,
            _ => {}
        }
    }
    Some(Rule {
        priority,
        table,
        source,
        other_selectors,
        lookup: msg.header.action == RuleAction::ToTable,
        protocol,
        raw: Some(RawRule(msg)),
    })
}

fn rule_to_msg(rule: &Rule) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.action = if rule.lookup {
        RuleAction::ToTable
    } else {
        RuleAction::Unspec
    };
    if let Ok(small) = u8::try_from(rule.table) {
        msg.header.table = small;
    } else {
        msg.attributes.push(RuleAttribute::Table(rule.table));
    }
    msg.attributes.push(RuleAttribute::Priority(rule.priority));
    if let Some((ip, len)) = rule.source {
        msg.header.src_len = len;
        msg.attributes.push(RuleAttribute::Source(IpAddr::V4(ip)));
    }
    msg.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::from(rule.protocol)));
    msg
}

fn route_from_msg(msg: RouteMessage) -> Option<Route> {
    if msg.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    let mut prefsrc = None;
    let mut metric = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = v4(a)?,
            RouteAttribute::Gateway(a) => gateway = v4(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::PrefSource(a) => prefsrc = v4(a),
            RouteAttribute::Priority(p) => metric = Some(*p),
            _ => {}
        }
    }
    let scope = match msg.header.scope {
        RouteScope::Universe => Scope::Universe,
        RouteScope::Link => Scope::Link,
        RouteScope::Host => Scope::Host,
        other => Scope::Other(u8::from(other)),
    };
    Some(Route {
        table,
        dst,
        prefix: msg.header.destination_prefix_length,
        gateway,
        oif,
        prefsrc,
        metric,
        tos: msg.header.tos,
        protocol: u8::from(msg.header.protocol),
        scope,
        unicast: msg.header.kind == RouteType::Unicast,
        raw: Some(RawRoute(msg)),
    })
}

fn route_to_msg(route: &Route) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.dst, route.prefix)
        .table_id(route.table)
        .protocol(RouteProtocol::from(route.protocol))
        .tos(route.tos)
        .scope(match route.scope {
            Scope::Universe => RouteScope::Universe,
            Scope::Link => RouteScope::Link,
            Scope::Host => RouteScope::Host,
            Scope::Other(n) => RouteScope::from(n),
        })
        .kind(if route.unicast {
            RouteType::Unicast
        } else {
            RouteType::Unspec
        });
    if let Some(gw) = route.gateway {
        builder = builder.gateway(gw);
    }
    if let Some(oif) = route.oif {
        builder = builder.output_interface(oif);
    }
    if let Some(src) = route.prefsrc {
        builder = builder.pref_source(src);
    }
    if let Some(metric) = route.metric {
        builder = builder.priority(metric);
    }
    let mut msg = builder.build();
    // `table_id` puts tables above 255 in RTA_TABLE; the header must then say
    // RT_TABLE_UNSPEC or RT_TABLE_COMPAT, never main.
    if route.table > 255 {
        msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
    }
    msg
}

// ===== the kernel's process events connector =====

/// `NETLINK_CONNECTOR`'s multicast group and id for process events (`linux/connector.h`).
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
/// `enum proc_cn_mcast_op` (`linux/cn_proc.h`).
const PROC_CN_MCAST_LISTEN: u32 = 1;
/// `enum what` of `struct proc_event`.
const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
/// `struct nlmsghdr` and `struct cn_msg` sizes: the event starts after both.
const NLMSG_HDR_LEN: usize = 16;
const CN_MSG_LEN: usize = 20;

/// One process event, reduced to what remover identification needs. Thread events
/// (a `clone` that shares the thread group) are left out by the parser: netlink ports
/// belong to processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEvent {
    /// A new process `child` (its thread group id) forked by `parent` (tgid).
    Fork { parent: u32, child: u32, at_ns: u64 },
    /// `pid` executed a new program (its `comm` changed).
    Exec { pid: u32, at_ns: u64 },
    /// The process `pid` ended (its group leader exited). `parent` is the tgid of its
    /// parent at that moment (`real_parent`; `parent_tgid` of `struct exit_proc_event`,
    /// absent from kernels older than 4.18, whose event is shorter).
    Exit {
        pid: u32,
        parent: Option<u32>,
        at_ns: u64,
    },
    /// The kernel dropped events (ENOBUFS): processes may have come and gone unseen.
    Overrun,
}

/// A socket subscribed to the kernel's process events (`CONFIG_PROC_EVENTS`), read
/// with blocking calls from a thread of its own (see `host::procs`).
///
/// The connector answers only in the initial network namespace: elsewhere the
/// subscription is refused with `ECONNREFUSED`. [`ProcEventSocket::open`] tries the
/// caller's namespace first and then, if it may (root in a test's namespace), opens
/// the socket from a short-lived thread moved into another process's network namespace
/// (PID 1's, then our ancestors'), until one accepts the subscription, which only the
/// initial namespace does; a socket stays in the namespace it was created in.
pub struct ProcEventSocket {
    socket: Socket,
    buf: Vec<u8>,
    /// Where the subscription was made: "this network namespace" or the namespace file
    /// of the process whose (initial) network namespace was used.
    pub namespace: String,
}

impl std::fmt::Debug for ProcEventSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcEventSocket")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl ProcEventSocket {
    /// Subscribes in this network namespace, else in the first of `elsewhere`
    /// (`/proc/<pid>/ns/net` files) that accepts. The error names every failure.
    pub fn open(rcvbuf: usize, elsewhere: &[std::path::PathBuf]) -> io::Result<Self> {
        let here = match Self::open_here(rcvbuf) {
            Ok(socket) => {
                return Ok(Self {
                    namespace: "this network namespace".into(),
                    ..socket
                });
            }
            Err(e) => e,
        };
        let mut failures = vec![format!("{here} (in this network namespace)")];
        for ns in elsewhere {
            let path = ns.clone();
            let there = std::thread::Builder::new()
                .name("enisync-cn-open".into())
                .spawn(move || {
                    enter_netns(&path)?;
                    Self::open_here(rcvbuf)
                })?
                .join()
                .map_err(|_| io::Error::other("the connector thread panicked"))?;
            match there {
                Ok(socket) => {
                    return Ok(Self {
                        namespace: ns.display().to_string(),
                        ..socket
                    });
                }
                Err(e) => failures.push(format!("{e} (in {})", ns.display())),
            }
        }
        Err(io::Error::new(here.kind(), failures.join("; ")))
    }

    fn open_here(rcvbuf: usize) -> io::Result<Self> {
        let mut socket = Socket::new(rtnetlink::sys::protocols::NETLINK_CONNECTOR)?;
        socket.bind(&SocketAddr::new(0, CN_IDX_PROC))?;
        // Process events come in bursts (a fork storm); losing some only costs
        // identification of the processes concerned, which then count as unknown.
        if let Err(e) = set_rcvbuf(socket.as_raw_fd(), rcvbuf) {
            tracing::debug!(error = %e, "process events: receive buffer left as it is");
        }
        let mut msg = Vec::with_capacity(NLMSG_HDR_LEN + CN_MSG_LEN + 4);
        let total = u32::try_from(NLMSG_HDR_LEN + CN_MSG_LEN + 4).unwrap_or(u32::MAX);
        msg.extend_from_slice(&total.to_ne_bytes());
        msg.extend_from_slice(&u16::try_from(libc::NLMSG_DONE).unwrap_or(3).to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&std::process::id().to_ne_bytes());
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
        msg.extend_from_slice(&4u16.to_ne_bytes()); // len of the data
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
        socket.send_to(&msg, &SocketAddr::new(0, 0), 0)?;
        Ok(Self {
            socket,
            buf: Vec::with_capacity(DATAGRAM_CAPACITY),
            namespace: String::new(),
        })
    }

    /// Blocks until the next datagram and returns its events. Datagrams not sent by
    /// the kernel (source port 0) are dropped: only the kernel reports processes.
    pub fn recv(&mut self) -> io::Result<Vec<ProcEvent>> {
        loop {
            self.buf.clear();
            match self.socket.recv_from(&mut self.buf, 0) {
                Ok((_, from)) if from.port_number() != 0 => continue,
                Ok(_) => return Ok(parse_proc_events(&self.buf)),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(vec![ProcEvent::Overrun]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Moves the calling thread into the network namespace of `ns` (a `/proc/<pid>/ns/net`).
fn enter_netns(ns: &std::path::Path) -> io::Result<()> {
    let ns = std::fs::File::open(ns)?;
    // SAFETY: `ns` is an open namespace file for the whole call; setns(2) only changes
    // the network namespace of the calling thread, a thread of our own that ends right
    // after creating one socket.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The process events in one connector datagram (one or more netlink messages, each a
/// `cn_msg` carrying a `struct proc_event`). Anything short or unknown is skipped.
pub fn parse_proc_events(datagram: &[u8]) -> Vec<ProcEvent> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDR_LEN {
        let Some(len) = u32_at(rest, 0).and_then(|l| usize::try_from(l).ok()) else {
            break;
        };
        if len < NLMSG_HDR_LEN || len > rest.len() {
            break;
        }
        let msg_type = u16::from_ne_bytes([rest[4], rest[5]]);
        if i32::from(msg_type) == libc::NLMSG_OVERRUN {
            out.push(ProcEvent::Overrun);
        } else if let Some(event) = rest
            .get(NLMSG_HDR_LEN + CN_MSG_LEN..len)
            .and_then(proc_event)
        {
            out.push(event);
        }
        let aligned = (len + 3) & !3;
        rest = rest.get(aligned..).unwrap_or_default();
    }
    out
}

/// One `struct proc_event`: what (u32), cpu (u32), timestamp_ns (u64), then the event.
fn proc_event(ev: &[u8]) -> Option<ProcEvent> {
    let what = u32_at(ev, 0)?;
    let at_ns = u64_at(ev, 8)?;
    match what {
        PROC_EVENT_FORK => {
            // parent_pid, parent_tgid, child_pid, child_tgid
            let (parent, child_pid, child) = (u32_at(ev, 20)?, u32_at(ev, 24)?, u32_at(ev, 28)?);
            (child_pid == child).then_some(ProcEvent::Fork {
                parent,
                child,
                at_ns,
            })
        }
        PROC_EVENT_EXEC => {
            // The thread that called exec becomes the group leader: the tgid is the
            // process.
            Some(ProcEvent::Exec {
                pid: u32_at(ev, 20)?,
                at_ns,
            })
        }
        PROC_EVENT_EXIT => {
            // process_pid, process_tgid, exit_code, exit_signal, parent_pid, parent_tgid
            let (pid, tgid) = (u32_at(ev, 16)?, u32_at(ev, 20)?);
            let parent = u32_at(ev, 36).filter(|&p| p != 0);
            (pid == tgid).then_some(ProcEvent::Exit { pid, parent, at_ns })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address_message(del: bool, last: u8) -> Vec<u8> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = 24;
        msg.header.index = 2;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(Ipv4Addr::new(
                10, 0, 1, last,
            ))));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(Ipv4Addr::new(
                10, 0, 1, last,
            ))));
        let inner = if del {
            RouteNetlinkMessage::DelAddress(msg)
        } else {
            RouteNetlinkMessage::NewAddress(msg)
        };
        let mut packet = NetlinkMessage::from(inner);
        packet.header.port_number = 4242;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        buf
    }

    #[test]
    fn a_datagram_with_several_messages_yields_each_in_order() {
        let mut datagram = address_message(false, 5);
        datagram.extend(address_message(true, 6));
        let mut out = VecDeque::new();
        parse_datagram(&datagram, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(
            matches!(&out[0], Notification::NewAddr { addr, .. } if addr.ip == Ipv4Addr::new(10, 0, 1, 5))
        );
        assert!(
            matches!(&out[1], Notification::DelAddr { addr, port_id: 4242 }
            if addr.ip == Ipv4Addr::new(10, 0, 1, 6))
        );
    }

    /// `struct proc_event` of an exit, as the kernel sends it (with `parent_pid` and
    /// `parent_tgid`), and the shorter one of kernels before 4.18.
    #[test]
    fn an_exit_event_carries_its_parent() {
        let event = |fields: &[u32]| {
            let mut ev = Vec::new();
            ev.extend_from_slice(&PROC_EVENT_EXIT.to_ne_bytes());
            ev.extend_from_slice(&0u32.to_ne_bytes()); // cpu
            ev.extend_from_slice(&77u64.to_ne_bytes()); // timestamp_ns
            for f in fields {
                ev.extend_from_slice(&f.to_ne_bytes());
            }
            let mut msg = Vec::new();
            let len = u32::try_from(NLMSG_HDR_LEN + CN_MSG_LEN + ev.len()).expect("small");
            msg.extend_from_slice(&len.to_ne_bytes());
            msg.extend_from_slice(&[0; NLMSG_HDR_LEN - 4 + CN_MSG_LEN]);
            msg.extend_from_slice(&ev);
            msg
        };
        // pid, tgid, exit_code, exit_signal, parent_pid, parent_tgid
        assert_eq!(
            parse_proc_events(&event(&[500, 500, 0, 17, 41, 40])),
            vec![ProcEvent::Exit {
                pid: 500,
                parent: Some(40),
                at_ns: 77
            }]
        );
        assert_eq!(
            parse_proc_events(&event(&[500, 500, 0, 17])),
            vec![ProcEvent::Exit {
                pid: 500,
                parent: None,
                at_ns: 77
            }]
        );
        // A thread that is not its group's leader is not a process's exit.
        assert!(parse_proc_events(&event(&[501, 500, 0, 17, 41, 40])).is_empty());
    }

    #[test]
    fn garbage_after_a_good_message_is_an_overrun_not_a_panic() {
        let mut datagram = address_message(true, 7);
        datagram.extend([0xff; 9]);
        let mut out = VecDeque::new();
        parse_datagram(&datagram, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(matches!(out[0], Notification::DelAddr { .. }));
        assert!(matches!(out[1], Notification::Overrun));

        let mut out = VecDeque::new();
        parse_datagram(&[0u8; 3], &mut out);
        assert!(matches!(out.pop_front(), Some(Notification::Overrun)));
    }

    #[test]
    fn route_for_big_table_carries_the_attribute() {
        let route = Route {
            table: 10_001,
            dst: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
            gateway: Some(Ipv4Addr::new(10, 0, 1, 1)),
            oif: Some(3),
            prefsrc: None,
            metric: None,
            tos: 0,
            protocol: 212,
            scope: Scope::Universe,
            unicast: true,
            raw: None,
        };
        let msg = route_to_msg(&route);
        assert!(msg.attributes.contains(&RouteAttribute::Table(10_001)));
        assert_eq!(msg.header.protocol, RouteProtocol::Other(212));
        let back = route_from_msg(msg).expect("ipv4 route");
        assert!(back.same_effect(&route));
    }

    #[test]
    fn rule_round_trip() {
        let rule = Rule::lookup_from(Ipv4Addr::new(10, 0, 1, 5), 10_002, 1000, 212);
        let back = rule_from_msg(rule_to_msg(&rule)).expect("ipv4 rule");
        assert!(back.same_effect(&rule));
        assert_eq!(back.protocol, 212);
        assert_eq!(back.sole_source_host(), Some(Ipv4Addr::new(10, 0, 1, 5)));
    }
}
