//! Policy routing for the secondary ENIs: what should exist, what to change, applying it.
//!
//! Everything enisync creates carries [`RTPROT_ENISYNC`] as its protocol, and that tag
//! is the whole ownership model: the planners only ever delete or replace rules and
//! routes with our tag, with one exception, the stale `from <ip>/32` rules of a
//! released IP that is absent from every link ([`plan_cleanup`]).
//!
//! Per secondary ENI (device index `d`, table `table_base + d`):
//! - `<subnet> dev <eni> scope link table T proto enisync`
//! - `default via <gateway> dev <eni> table T proto enisync`
//! - for every IP present on the ENI: `from <ip>/32 lookup T pref P proto enisync`
//!
//! The planners are pure (current state and wanted state in, a [`Plan`] out) so they
//! are tested without a kernel; [`apply`] and [`PolicyRouting`] do the netlink part.
//!
//! The kernel flushes a table's routes through a link, without any notification, when
//! the link goes down or loses its last IPv4 address; routes via a down link cannot be
//! added (ENETDOWN). Run `manage` again after `LinkChanged` (up) and `AddrAdded`, and
//! periodically.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use super::netlink::Netlink;
use super::{HostError, Route, Rule, Scope};

/// The protocol number on every rule and route enisync creates. Not listed in this
/// host's `/etc/iproute2/rt_protos` (nor is anything from 193 to 249); packaging can
/// map it to a name in `/etc/iproute2/rt_protos.d/enisync.conf` (`212 enisync`).
pub const RTPROT_ENISYNC: u8 = 212;

/// Where our tables and rules go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLayout {
    /// The table of an ENI is `table_base + device_index`.
    pub table_base: u32,
    /// Priority (`pref`) of the `from <ip>/32` rules; below main's 32766 so they win.
    pub rule_priority: u32,
}

/// An ENI's table is `table_base + DeviceIndex`: 3500 stays clear of the numbers other
/// agents use (Calico 65-99, 1000+ifindex, TKE 2003-2005, 10000+). The one source of this
/// default: `config` re-exports it.
pub const DEFAULT_TABLE_BASE: u32 = 3500;
/// The `pref` of the `from <ip>/32` rules enisync creates in manage mode.
pub const DEFAULT_RULE_PRIORITY: u32 = 3500;

impl Default for TableLayout {
    fn default() -> Self {
        Self {
            table_base: DEFAULT_TABLE_BASE,
            rule_priority: DEFAULT_RULE_PRIORITY,
        }
    }
}

/// One secondary ENI whose policy routing enisync manages, as the engine knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedEni {
    /// The ifindex of the ENI's link.
    pub link: u32,
    /// The attachment's `DeviceIndex` (secondary ENIs have 1 and up).
    pub device_index: u32,
    /// The subnet's gateway (Tencent: the subnet's first address).
    pub gateway: Ipv4Addr,
    /// The subnet, `(network, prefix length)`.
    pub subnet: (Ipv4Addr, u8),
    /// The IPv4 addresses present on the link now; each gets a rule.
    pub ips: Vec<Ipv4Addr>,
}

impl ManagedEni {
    /// This ENI's table.
    pub fn table(&self, cfg: &TableLayout) -> u32 {
        cfg.table_base.saturating_add(self.device_index)
    }
}

/// The rules and routes that should exist, all tagged with our protocol.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub rules: Vec<Rule>,
    pub routes: Vec<Route>,
}

/// What to change. Applied in the order of the fields: routes before the rules that
/// point at them, rules deleted before the routes they pointed at.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Routes to add or replace (link routes first: they make the gateway reachable).
    pub add_routes: Vec<Route>,
    pub add_rules: Vec<Rule>,
    pub del_rules: Vec<Rule>,
    /// Routes to delete (gateway routes first).
    pub del_routes: Vec<Route>,
    /// Wanted routes whose place (table, destination, tos, metric) is taken by a route
    /// we do not own. Left alone, reported.
    pub conflicts: Vec<Route>,
}

/// One change per item, `; `-separated (`add rule …; delete route …`): the audit log's
/// `plan` field.
impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items = self
            .add_routes
            .iter()
            .map(|r| format!("add route {r}"))
            .chain(self.add_rules.iter().map(|r| format!("add rule {r}")))
            .chain(self.del_rules.iter().map(|r| format!("delete rule {r}")))
            .chain(self.del_routes.iter().map(|r| format!("delete route {r}")))
            .chain(
                self.conflicts
                    .iter()
                    .map(|r| format!("conflict (left alone) {r}")),
            );
        let mut first = true;
        for item in items {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            f.write_str(&item)?;
        }
        if first {
            f.write_str("nothing")?;
        }
        Ok(())
    }
}

impl Plan {
    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.add_routes.is_empty()
            && self.add_rules.is_empty()
            && self.del_rules.is_empty()
            && self.del_routes.is_empty()
    }

    /// How many changes the plan makes.
    pub fn len(&self) -> usize {
        self.add_routes.len() + self.add_rules.len() + self.del_rules.len() + self.del_routes.len()
    }
}

fn network(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(ip);
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits & mask)
}

fn our_route(table: u32, dst: (Ipv4Addr, u8), gateway: Option<Ipv4Addr>, oif: u32) -> Route {
    Route {
        table,
        dst: network(dst.0, dst.1),
        prefix: dst.1,
        gateway,
        oif: Some(oif),
        prefsrc: None,
        metric: None,
        tos: 0,
        protocol: RTPROT_ENISYNC,
        scope: if gateway.is_some() {
            Scope::Universe
        } else {
            Scope::Link
        },
        unicast: true,
        raw: None,
    }
}

/// The wanted state for these ENIs. Pass every ENI enisync manages: whatever of ours
/// is not wanted here is deleted by [`plan_manage`].
pub fn desired(cfg: &TableLayout, enis: &[ManagedEni]) -> Desired {
    let mut out = Desired::default();
    for eni in enis {
        let table = eni.table(cfg);
        out.routes
            .push(our_route(table, eni.subnet, None, eni.link));
        out.routes.push(our_route(
            table,
            (Ipv4Addr::UNSPECIFIED, 0),
            Some(eni.gateway),
            eni.link,
        ));
        let ips: BTreeSet<Ipv4Addr> = eni.ips.iter().copied().collect();
        for ip in ips {
            out.rules.push(Rule::lookup_from(
                ip,
                table,
                cfg.rule_priority,
                RTPROT_ENISYNC,
            ));
        }
    }
    out
}

/// Sorts routes so link routes come before gateway routes.
fn link_routes_first(routes: &mut [Route]) {
    routes.sort_by_key(|r| (r.gateway.is_some(), r.table, r.dst, r.prefix));
}

/// What to change so that, among rules and routes with our protocol, exactly the
/// wanted ones exist. Rules and routes of others are never deleted or replaced.
pub fn plan_manage(rules: &[Rule], routes: &[Route], want: &Desired) -> Plan {
    let mut plan = Plan::default();
    let ours_rules: Vec<&Rule> = rules
        .iter()
        .filter(|r| r.protocol == RTPROT_ENISYNC)
        .collect();
    for wanted in &want.rules {
        if !ours_rules.iter().any(|r| r.same_effect(wanted)) {
            plan.add_rules.push(wanted.clone());
        }
    }
    for existing in &ours_rules {
        if !want.rules.iter().any(|w| w.same_effect(existing)) {
            plan.del_rules.push((*existing).clone());
        }
    }

    // Routes are keyed by the kernel's identity (table, dst, tos, metric): an add with
    // NLM_F_REPLACE overwrites whatever sits at that key, so it must be ours or free.
    let by_key: BTreeMap<_, Vec<&Route>> = routes.iter().fold(BTreeMap::new(), |mut m, r| {
        m.entry(r.key()).or_insert_with(Vec::new).push(r);
        m
    });
    let wanted_keys: BTreeSet<_> = want.routes.iter().map(Route::key).collect();
    for wanted in &want.routes {
        let at_key = by_key.get(&wanted.key()).map(Vec::as_slice).unwrap_or(&[]);
        if at_key.iter().any(|r| r.protocol != RTPROT_ENISYNC) {
            plan.conflicts.push(wanted.clone());
        } else if !at_key.iter().any(|r| r.same_effect(wanted)) {
            plan.add_routes.push(wanted.clone());
        }
    }
    for existing in routes.iter().filter(|r| r.protocol == RTPROT_ENISYNC) {
        // A route at a wanted key is replaced in place, not deleted.
        if !wanted_keys.contains(&existing.key()) {
            plan.del_routes.push(existing.clone());
        }
    }
    link_routes_first(&mut plan.add_routes);
    link_routes_first(&mut plan.del_routes);
    plan.del_routes.reverse();
    plan
}

/// What to delete after IPs were released: for each released IP absent from every
/// link (`is_present` says), every rule whose only selector is `from <ip>/32` (IPv4) or
/// `from <ip>/128` (IPv6),
/// whoever created it (stale by definition), and every route of ours that uses the IP
/// as preferred source or as a /32 destination. IPs still present are left alone.
pub fn plan_cleanup(
    rules: &[Rule],
    routes: &[Route],
    released: &[IpAddr],
    is_present: impl Fn(IpAddr) -> bool,
) -> Plan {
    let gone: BTreeSet<IpAddr> = released
        .iter()
        .copied()
        .filter(|ip| !is_present(*ip))
        .collect();
    let mut plan = Plan::default();
    for rule in rules {
        if rule.sole_source_host().is_some_and(|ip| gone.contains(&ip)) {
            plan.del_rules.push(rule.clone());
        }
    }
    for route in routes.iter().filter(|r| r.protocol == RTPROT_ENISYNC) {
        let uses = route
            .prefsrc
            .is_some_and(|ip| gone.contains(&IpAddr::V4(ip)))
            || (route.prefix == 32 && gone.contains(&IpAddr::V4(route.dst)));
        if uses {
            plan.del_routes.push(route.clone());
        }
    }
    link_routes_first(&mut plan.del_routes);
    plan.del_routes.reverse();
    plan
}

/// The startup check: refuses (naming the table) when a table we would manage holds a
/// route we did not create. Sharing a table would make our replace and delete fight
/// its owner.
pub fn check_tables(
    routes: &[Route],
    tables: impl IntoIterator<Item = u32>,
) -> Result<(), HostError> {
    let tables: BTreeSet<u32> = tables.into_iter().collect();
    match routes
        .iter()
        .find(|r| tables.contains(&r.table) && r.protocol != RTPROT_ENISYNC)
    {
        Some(route) => Err(HostError::ForeignTable {
            table: route.table,
            example: route.to_string(),
        }),
        None => Ok(()),
    }
}

/// What [`apply`] did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// The plan that was applied.
    pub plan: Plan,
    /// Changes the kernel accepted.
    pub applied: usize,
    /// Changes it refused; the others were still attempted (one ENI whose link is down
    /// must not keep the others' routing stale).
    pub errors: Vec<HostError>,
}

/// Applies a plan, change by change, continuing past failures.
pub async fn apply(nl: &Netlink, plan: Plan) -> ApplyReport {
    let mut report = ApplyReport::default();
    let mut record = |result: Result<(), HostError>, what: &dyn std::fmt::Display| match result {
        Ok(()) => {
            tracing::info!(change = %what, "policy routing changed");
            report.applied += 1;
        }
        Err(error) => {
            tracing::warn!(change = %what, %error, "policy routing change failed");
            report.errors.push(error);
        }
    };
    for route in &plan.add_routes {
        record(
            nl.replace_route(route).await,
            &format_args!("add route {route}"),
        );
    }
    for rule in &plan.add_rules {
        record(nl.add_rule(rule).await, &format_args!("add rule {rule}"));
    }
    for rule in &plan.del_rules {
        record(nl.del_rule(rule).await, &format_args!("delete rule {rule}"));
    }
    for route in &plan.del_routes {
        record(
            nl.del_route(route).await,
            &format_args!("delete route {route}"),
        );
    }
    for route in &plan.conflicts {
        tracing::warn!(%route, "wanted route left out: its place is taken by a route enisync does not own");
    }
    report.plan = plan;
    report
}

/// The engine's entry point: a request socket plus the routing settings.
#[derive(Debug)]
pub struct PolicyRouting {
    nl: Netlink,
    cfg: TableLayout,
}

impl PolicyRouting {
    /// Opens a request socket on the current tokio runtime.
    pub fn new(cfg: TableLayout) -> Result<Self, HostError> {
        Ok(Self {
            nl: Netlink::connect()?,
            cfg,
        })
    }

    pub fn config(&self) -> &TableLayout {
        &self.cfg
    }

    /// Refuses to start when a table of these ENIs holds routes that are not ours.
    pub async fn startup_check(&self, enis: &[ManagedEni]) -> Result<(), HostError> {
        let routes = self.nl.routes().await?;
        check_tables(&routes, enis.iter().map(|e| e.table(&self.cfg)))
    }

    /// What [`PolicyRouting::manage`] would change now, without changing it (dry run).
    pub async fn plan_manage(&self, enis: &[ManagedEni]) -> Result<Plan, HostError> {
        let rules = self.nl.rules().await?;
        let routes = self.nl.routes().await?;
        Ok(plan_manage(&rules, &routes, &desired(&self.cfg, enis)))
    }

    /// Brings our rules and routes in line with `enis` (every managed ENI: ours that
    /// are not wanted are deleted). Dump errors fail the call; refused changes are in
    /// the report.
    pub async fn manage(&self, enis: &[ManagedEni]) -> Result<ApplyReport, HostError> {
        let plan = self.plan_manage(enis).await?;
        Ok(apply(&self.nl, plan).await)
    }

    /// What [`PolicyRouting::cleanup`] would change now, without changing it (dry run).
    pub async fn plan_cleanup(&self, released: &[IpAddr]) -> Result<Plan, HostError> {
        let present: BTreeSet<IpAddr> = self.nl.addrs().await?.into_iter().map(|a| a.ip).collect();
        let rules = self.nl.rules().await?;
        let routes = self.nl.routes().await?;
        Ok(plan_cleanup(&rules, &routes, released, |ip| {
            present.contains(&ip)
        }))
    }

    /// Deletes the stale rules (and our routes) of released IPs that are absent from
    /// every link, checked against a fresh address dump.
    pub async fn cleanup(&self, released: &[IpAddr]) -> Result<ApplyReport, HostError> {
        let plan = self.plan_cleanup(released).await?;
        Ok(apply(&self.nl, plan).await)
    }
}

/// systemd-networkd's `ManageForeignRoutingPolicyRules=` (networkd.conf, `[Network]`):
/// when yes (the default), networkd deletes every policy rule it did not configure
/// whenever it reconfigures, ours included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkdForeignRules {
    /// The effective setting.
    pub manage_foreign_rules: bool,
    /// The file whose assignment decided it; `None` when it is the built-in default.
    pub decided_by: Option<PathBuf>,
}

/// Directories networkd reads its configuration from, most important first.
const NETWORKD_DIRS: [&str; 4] = [
    "etc/systemd",
    "run/systemd",
    "usr/local/lib/systemd",
    "usr/lib/systemd",
];

/// The effective `ManageForeignRoutingPolicyRules=` under `root` (`/` in production):
/// the first `networkd.conf` found in /etc, /run, /usr/local/lib, /usr/lib (systemd),
/// then the `networkd.conf.d/*.conf` drop-ins of all those directories in file-name
/// order (a name in a more important directory hides the same name in the others);
/// the last valid assignment wins. Whether networkd runs at all is not checked here.
pub fn networkd_foreign_rules(root: &Path) -> Result<NetworkdForeignRules, HostError> {
    let mut files = Vec::new();
    if let Some(main) = NETWORKD_DIRS
        .iter()
        .map(|dir| root.join(dir).join("networkd.conf"))
        .find(|p| p.exists())
    {
        files.push(main);
    }
    let mut dropins: BTreeMap<std::ffi::OsString, PathBuf> = BTreeMap::new();
    for dir in NETWORKD_DIRS {
        let dir = root.join(dir).join("networkd.conf.d");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(HostError::Config { path: dir, source }),
        };
        for entry in entries {
            let entry = entry.map_err(|source| HostError::Config {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            if Path::new(&name).extension().is_some_and(|e| e == "conf") {
                // Earlier (more important) directories win for the same name.
                dropins.entry(name).or_insert_with(|| entry.path());
            }
        }
    }
    files.extend(dropins.into_values());

    let mut setting = NetworkdForeignRules {
        manage_foreign_rules: true,
        decided_by: None,
    };
    for path in files {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(HostError::Config { path, source }),
        };
        if let Some(value) = parse_manage_foreign(&text) {
            setting = NetworkdForeignRules {
                manage_foreign_rules: value,
                decided_by: Some(path),
            };
        }
    }
    Ok(setting)
}

/// The last valid `ManageForeignRoutingPolicyRules=` of a `[Network]` section.
fn parse_manage_foreign(text: &str) -> Option<bool> {
    let mut in_network = false;
    let mut value = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            in_network = line == "[Network]";
            continue;
        }
        let Some((key, val)) = line.split_once('=') else {
            continue;
        };
        if in_network && key.trim() == "ManageForeignRoutingPolicyRules" {
            // systemd ignores (with a warning) values it cannot parse.
            if let Some(parsed) = parse_bool(val.trim()) {
                value = Some(parsed);
            }
        }
    }
    value
}

/// systemd's boolean spellings.
fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
