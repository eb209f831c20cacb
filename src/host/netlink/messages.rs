//! Conversions between rtnetlink messages and the plain types of `host`, both ways.

use super::*;

pub(super) fn notification_from_msg(msg: NetlinkMessage<RouteNetlinkMessage>) -> Notification {
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

pub(super) fn link_from_msg(msg: &LinkMessage) -> Link {
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

pub(super) fn addr_from_msg(msg: &AddressMessage) -> Option<Addr> {
    match msg.header.family {
        AddressFamily::Inet => addr4_from_msg(msg),
        AddressFamily::Inet6 => addr6_from_msg(msg),
        _ => None,
    }
}

fn addr4_from_msg(msg: &AddressMessage) -> Option<Addr> {
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
        ip: IpAddr::V4(ip),
        prefix: msg.header.prefix_len,
        secondary: msg.header.flags.contains(AddressHeaderFlags::Secondary),
        v6: None,
    })
}

/// IPv6: the address is IFA_ADDRESS (IFA_LOCAL only on point-to-point links, where it
/// is ours); the flags are IFA_FLAGS (32 bits) when present, else the header's low 8
/// bits. Bit 0x01 is `temporary` on IPv6, not `secondary` (docs/design.md, "IPv6").
fn addr6_from_msg(msg: &AddressMessage) -> Option<Addr> {
    let mut local = None;
    let mut address = None;
    let mut flags = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V6(ip)) => local = Some(*ip),
            AddressAttribute::Address(IpAddr::V6(ip)) => address = Some(*ip),
            AddressAttribute::Flags(f) => flags = Some(f.bits()),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    let flags = flags.unwrap_or_else(|| u32::from(msg.header.flags.bits()));
    Some(Addr {
        link: msg.header.index,
        ip: IpAddr::V6(ip),
        prefix: msg.header.prefix_len,
        secondary: false,
        v6: Some(V6Facts {
            global: msg.header.scope == AddressScope::Universe,
            flags,
        }),
    })
}

pub(super) fn v4(addr: &RouteAddress) -> Option<Ipv4Addr> {
    match addr {
        RouteAddress::Inet(ip) => Some(*ip),
        _ => None,
    }
}

pub(super) fn rule_from_msg(msg: RuleMessage) -> Option<Rule> {
    if !matches!(
        msg.header.family,
        AddressFamily::Inet | AddressFamily::Inet6
    ) {
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
            RuleAttribute::Source(ip) => source = Some((*ip, msg.header.src_len)),
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

pub(super) fn rule_to_msg(rule: &Rule) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = match rule.source {
        Some((IpAddr::V6(_), _)) => AddressFamily::Inet6,
        _ => AddressFamily::Inet,
    };
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
        msg.attributes.push(RuleAttribute::Source(ip));
    }
    msg.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::from(rule.protocol)));
    msg
}

pub(super) fn route_from_msg(msg: RouteMessage) -> Option<Route> {
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

pub(super) fn route_to_msg(route: &Route) -> RouteMessage {
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

/// The link and address an `RTM_DELADDR` request for IPv6 names, as
/// `inet6_rtm_deladdr` reads them (IFA_LOCAL before IFA_ADDRESS): the request bytes the
/// deletion probe copied (`host::bpf`). `None` for anything else, or anything that does
/// not parse; `msg` must hold the whole message (its header's length).
pub fn parse_deladdr6_request(msg: &[u8]) -> Option<(u32, std::net::Ipv6Addr)> {
    let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(msg).ok()?;
    let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(addr)) = parsed.payload else {
        return None;
    };
    if addr.header.family != AddressFamily::Inet6 {
        return None;
    }
    match addr6_from_msg(&addr)?.ip {
        IpAddr::V6(ip) => Some((addr.header.index, ip)),
        IpAddr::V4(_) => None,
    }
}
