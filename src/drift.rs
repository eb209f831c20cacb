//! The drift report: where the host, the metadata service and `DescribeNetworkInterfaces`
//! disagree (docs/design.md, "The drift report"). Read-only: nothing here, nor anything
//! that uses it, releases, assigns or deletes anything.
//!
//! Pure: [`compare`] turns one read of the three sources into findings, and [`Tracker`]
//! keeps them across reads, so that a finding counts (is *confirmed*) only once two
//! consecutive good reads of its sources show it. A read that failed is never taken as
//! "no IPs": the categories that need the failed source keep their last values and are
//! marked stale. The daemon (`daemon/drift.rs`) does the reads; `ops` renders the
//! [`Report`] and exports the gauges. This module imports only plain types (`net`,
//! `host`'s plain types, `cloud::Eni`), so it sits beside `inventory` in the layering.
//!
//! Addresses are [`IpAddr`], but only IPv4 is compared today (see `compared`); IPv6
//! can slot in without a new finding type.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use serde::Serialize;

use crate::cloud::{Eni, EniIp};
use crate::host::{Addr, Link, Rule};
use crate::net::{Cidr, MacAddr};

/// One read of the host: every link, address and policy rule (a netlink dump).
#[derive(Debug, Clone, Default)]
pub struct HostSide {
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
    pub rules: Vec<Rule>,
}

/// One ENI as the metadata service lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaEni {
    pub mac: MacAddr,
    /// `primary-local-ipv4`.
    pub primary: Option<IpAddr>,
    /// `local-ipv4s/`: every private IP, the primary included.
    pub ips: Vec<IpAddr>,
}

/// The outcome of reading one source.
#[derive(Debug, Clone)]
pub enum SourceRead<T> {
    Ok(T),
    /// The read failed: the text says how (never a secret: error codes and paths).
    Failed(String),
    /// This configuration does not use the source (the metadata service, when the
    /// config names the instance): its categories are not computed.
    NotUsed(&'static str),
}

impl<T> SourceRead<T> {
    fn ok(&self) -> Option<&T> {
        match self {
            Self::Ok(t) => Some(t),
            _ => None,
        }
    }
}

/// One read of every source, at one time.
#[derive(Debug, Clone)]
pub struct Read {
    pub at_unix: u64,
    pub instance_id: String,
    pub host: SourceRead<HostSide>,
    pub api: SourceRead<Vec<Eni>>,
    pub metadata: SourceRead<Vec<MetaEni>>,
    /// `release.exclude`: leak candidates inside these are not reported (a warm pool,
    /// a CNI's addresses).
    pub exclude: Vec<Cidr>,
    /// Addresses the engine is releasing now (an intent exists): absent and bound by
    /// design, so not leak candidates.
    pub releasing: BTreeSet<IpAddr>,
    /// `claim.cidrs`: an address of these bound here and on no link is a claim orphan,
    /// never a leak candidate (the next holder migrates it; docs/design.md, "Claims").
    pub claim_cidrs: Vec<Cidr>,
    /// `claim.orphan_after`: a claim orphan counts once seen absent this long.
    pub claim_orphan_after: std::time::Duration,
}

/// The sources a read is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Links, addresses and policy rules (netlink).
    Host,
    /// `DescribeNetworkInterfaces`.
    Api,
    /// The instance metadata service.
    Metadata,
}

impl Source {
    pub const ALL: [Self; 3] = [Self::Host, Self::Api, Self::Metadata];

    /// The stable key (metric label, JSON).
    pub fn key(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Api => "api",
            Self::Metadata => "metadata",
        }
    }
}

/// The kinds of finding, one gauge each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Bound by the cloud to an ENI of this instance, on no link: a possible leak.
    /// enisync never releases these (clause 1: it did not see them leave).
    LeakCandidate,
    /// On an ENI's link, but the cloud does not bind it to that ENI: it will not route.
    UnboundOnHost,
    /// A `from <ip>/32` policy rule whose IP is on no link.
    StaleRule,
    /// The metadata service and `DescribeNetworkInterfaces` disagree.
    MetadataMismatch,
    /// Like a leak candidate, but inside `claim.cidrs`: a floating IP bound here that
    /// no link holds (never also a leak candidate). Counted once seen absent for
    /// `claim.orphan_after` too.
    ClaimOrphan,
}

impl Category {
    pub const ALL: [Self; 5] = [
        Self::LeakCandidate,
        Self::UnboundOnHost,
        Self::StaleRule,
        Self::MetadataMismatch,
        Self::ClaimOrphan,
    ];

    /// The stable key (metric label, JSON).
    pub fn key(self) -> &'static str {
        match self {
            Self::LeakCandidate => "leak_candidate",
            Self::ClaimOrphan => "claim_orphan",
            Self::UnboundOnHost => "unbound_on_host",
            Self::StaleRule => "stale_rule",
            Self::MetadataMismatch => "metadata_mismatch",
        }
    }

    /// The sources a finding of this category is computed from: all of them must have
    /// been read in the same read.
    pub fn sources(self) -> &'static [Source] {
        match self {
            Self::LeakCandidate | Self::ClaimOrphan | Self::UnboundOnHost => {
                &[Source::Host, Source::Api]
            }
            Self::StaleRule => &[Source::Host],
            Self::MetadataMismatch => &[Source::Api, Source::Metadata],
        }
    }
}

/// One disagreement. Its fields are its identity: the same finding in two consecutive
/// reads is the same value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// The cloud binds `ip` (a secondary IP) to `eni_id`; no link of the host has it.
    LeakCandidate {
        ip: IpAddr,
        eni_id: String,
        mac: MacAddr,
    },
    /// The cloud binds `ip`, inside `claim.cidrs`, to `eni_id`; no link of the host has
    /// it (`enisync release <ip>` releases it by hand).
    ClaimOrphan {
        ip: IpAddr,
        eni_id: String,
        mac: MacAddr,
    },
    /// `ip` is on `link`, whose MAC is `eni_id`'s, and the cloud does not bind it to that
    /// ENI; `bound_to` is the ENI of this instance that has it, if any.
    UnboundOnHost {
        ip: IpAddr,
        link: String,
        eni_id: String,
        bound_to: Option<String>,
    },
    /// `from <ip>/32 … pref <priority> lookup <table>` and `ip` is on no link.
    StaleRule {
        ip: IpAddr,
        priority: u32,
        table: u32,
        protocol: u8,
    },
    /// The metadata service lists `mac`; the listing has no ENI with it.
    MacOnlyInMetadata { mac: MacAddr },
    /// The listing has `eni_id` (with `mac`) on this instance; the metadata does not.
    MacOnlyInApi { mac: MacAddr, eni_id: String },
    /// The two name different primary IPs for one ENI.
    PrimaryDiffers {
        mac: MacAddr,
        eni_id: String,
        metadata: Option<IpAddr>,
        api: Option<IpAddr>,
    },
    /// The metadata lists `ip` under `mac`; the listing binds it to `api_eni` (another
    /// ENI) or to no ENI of this instance (`None`).
    MetadataIpElsewhere {
        mac: MacAddr,
        ip: IpAddr,
        api_eni: Option<String>,
    },
    /// The listing binds `ip` to `eni_id`; the metadata does not list it under its MAC.
    ApiIpNotInMetadata {
        mac: MacAddr,
        eni_id: String,
        ip: IpAddr,
    },
}

impl Finding {
    pub fn category(&self) -> Category {
        match self {
            Self::LeakCandidate { .. } => Category::LeakCandidate,
            Self::ClaimOrphan { .. } => Category::ClaimOrphan,
            Self::UnboundOnHost { .. } => Category::UnboundOnHost,
            Self::StaleRule { .. } => Category::StaleRule,
            Self::MacOnlyInMetadata { .. }
            | Self::MacOnlyInApi { .. }
            | Self::PrimaryDiffers { .. }
            | Self::MetadataIpElsewhere { .. }
            | Self::ApiIpNotInMetadata { .. } => Category::MetadataMismatch,
        }
    }
}

/// Link-local IPv4 (169.254.0.0/16) is the host's own business: never bound to an ENI.
fn host_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn excluded(exclude: &[Cidr], ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => exclude.iter().any(|c| c.contains(v4)),
        IpAddr::V6(_) => false,
    }
}

/// The secondary IPs the cloud binds to ENIs of this instance that no link has, left
/// out: `release.exclude` and what the engine is releasing. Each with its ENI, and
/// whether it is inside `claim.cidrs`.
fn bound_and_absent(read: &Read) -> Option<Vec<(IpAddr, &Eni, bool)>> {
    let (host, api) = (read.host.ok()?, read.api.ok()?);
    let on_host: BTreeSet<IpAddr> = host.addrs.iter().map(|a| a.ip).collect();
    let mut out = Vec::new();
    for eni in ours(api, &read.instance_id) {
        for entry in entries(eni).filter(|i| !i.primary) {
            let ip = entry.addr;
            if on_host.contains(&ip) || excluded(&read.exclude, ip) || read.releasing.contains(&ip)
            {
                continue;
            }
            out.push((ip, eni, excluded(&read.claim_cidrs, ip)));
        }
    }
    Some(out)
}

/// Whether the comparison looks at `ip`: IPv4 only. The metadata read lists IPv4 only,
/// and which host IPv6 addresses the cloud should bind (never the link-local, SLAAC or
/// privacy ones) is the engine's candidate rule, not decided here: the host's IPv6
/// addresses, `Ipv6AddressSet` entries and IPv6 rules are in no category.
fn compared(ip: IpAddr) -> bool {
    ip.is_ipv4()
}

/// The listing's entries of `eni` that the comparison looks at.
fn entries(eni: &Eni) -> impl Iterator<Item = &EniIp> {
    eni.ips.iter().filter(|i| compared(i.addr))
}

/// The ENIs of the listing attached to this instance (the filter should guarantee it; a
/// wrong answer must not widen the report).
fn ours<'a>(api: &'a [Eni], instance_id: &'a str) -> impl Iterator<Item = &'a Eni> {
    api.iter().filter(move |e| {
        e.attachment
            .as_ref()
            .is_none_or(|a| a.instance_id == instance_id)
    })
}

/// The findings of one category from one read, or `None` when a source it needs was
/// not read (failed or not used).
pub fn compare(read: &Read, category: Category) -> Option<BTreeSet<Finding>> {
    let mut out = BTreeSet::new();
    match category {
        Category::LeakCandidate | Category::ClaimOrphan => {
            let claims = category == Category::ClaimOrphan;
            for (ip, eni, claim) in bound_and_absent(read)? {
                let (eni_id, mac) = (eni.id.clone(), eni.mac);
                match (claim, claims) {
                    (false, false) => out.insert(Finding::LeakCandidate { ip, eni_id, mac }),
                    (true, true) => out.insert(Finding::ClaimOrphan { ip, eni_id, mac }),
                    _ => false,
                };
            }
        }
        Category::UnboundOnHost => {
            let (host, api) = (read.host.ok()?, read.api.ok()?);
            let enis: Vec<&Eni> = ours(api, &read.instance_id).collect();
            let bound: HashMap<IpAddr, &str> = enis
                .iter()
                .flat_map(|e| e.ips.iter().map(|i| (i.addr, e.id.as_str())))
                .collect();
            for link in host.links.iter().filter(|l| l.is_physical()) {
                let Some(eni) = enis.iter().find(|e| Some(e.mac) == link.mac) else {
                    continue;
                };
                for addr in host.addrs.iter().filter(|a| a.link == link.index) {
                    let ip = addr.ip;
                    if !compared(ip) || host_local(ip) || eni.ip(ip).is_some() {
                        continue;
                    }
                    out.insert(Finding::UnboundOnHost {
                        ip,
                        link: link.name.clone(),
                        eni_id: eni.id.clone(),
                        bound_to: bound.get(&ip).map(|id| (*id).to_owned()),
                    });
                }
            }
        }
        Category::StaleRule => {
            let host = read.host.ok()?;
            let on_host: BTreeSet<IpAddr> = host.addrs.iter().map(|a| a.ip).collect();
            for rule in &host.rules {
                match rule.source {
                    Some((ip, 32)) if compared(ip) && !on_host.contains(&ip) => {
                        out.insert(Finding::StaleRule {
                            ip,
                            priority: rule.priority,
                            table: rule.table,
                            protocol: rule.protocol,
                        });
                    }
                    _ => {}
                }
            }
        }
        Category::MetadataMismatch => {
            let (api, meta) = (read.api.ok()?, read.metadata.ok()?);
            let enis: Vec<&Eni> = ours(api, &read.instance_id).collect();
            let bound: HashMap<IpAddr, &str> = enis
                .iter()
                .flat_map(|e| e.ips.iter().map(|i| (i.addr, e.id.as_str())))
                .collect();
            for m in meta {
                let Some(eni) = enis.iter().find(|e| e.mac == m.mac) else {
                    out.insert(Finding::MacOnlyInMetadata { mac: m.mac });
                    continue;
                };
                let api_primary = entries(eni).find(|i| i.primary).map(|i| i.addr);
                if m.primary != api_primary {
                    out.insert(Finding::PrimaryDiffers {
                        mac: m.mac,
                        eni_id: eni.id.clone(),
                        metadata: m.primary,
                        api: api_primary,
                    });
                }
                let api_ips: BTreeSet<IpAddr> = entries(eni).map(|i| i.addr).collect();
                for ip in &m.ips {
                    if !api_ips.contains(ip) {
                        out.insert(Finding::MetadataIpElsewhere {
                            mac: m.mac,
                            ip: *ip,
                            api_eni: bound.get(ip).map(|id| (*id).to_owned()),
                        });
                    }
                }
                for ip in api_ips.iter().filter(|ip| !m.ips.contains(ip)) {
                    out.insert(Finding::ApiIpNotInMetadata {
                        mac: m.mac,
                        eni_id: eni.id.clone(),
                        ip: *ip,
                    });
                }
            }
            for eni in enis.iter().filter(|e| !meta.iter().any(|m| m.mac == e.mac)) {
                out.insert(Finding::MacOnlyInApi {
                    mac: eni.mac,
                    eni_id: eni.id.clone(),
                });
            }
        }
    }
    Some(out)
}

/// How one source fared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SourceStatus {
    pub source: &'static str,
    /// `ok`, `failed`, `not_used` or `not_read` (no read yet).
    pub state: &'static str,
    /// Why the last read failed (or why the source is not used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last read that succeeded, Unix seconds and RFC 3339.
    pub last_good_unix: Option<u64>,
    pub last_good: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Seen {
    first_unix: u64,
    /// Consecutive good reads that showed it.
    reads: u32,
}

#[derive(Debug, Clone, Default)]
struct CategoryState {
    /// When its findings were last computed (all its sources read).
    computed_unix: Option<u64>,
    findings: BTreeMap<Finding, Seen>,
}

/// The findings across reads: a finding counts once two consecutive good reads show it
/// (a claim orphan: and once it has been seen absent for `claim.orphan_after`).
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    reads: u64,
    last_read_unix: Option<u64>,
    /// `claim.orphan_after` as of the last read.
    claim_orphan_after: std::time::Duration,
    sources: BTreeMap<Source, SourceStatus>,
    categories: BTreeMap<Category, CategoryState>,
}

/// The confirmed count of each category and how each source fared: what the gauges show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaugeValues {
    /// Confirmed findings per category, from the last read that computed it.
    pub confirmed: Vec<(Category, usize)>,
    /// Per source used: whether its last read succeeded, and when the last good one was.
    pub sources: Vec<(Source, bool, Option<u64>)>,
}

impl Tracker {
    /// Takes one read in.
    pub fn observe(&mut self, read: &Read) {
        self.reads += 1;
        self.last_read_unix = Some(read.at_unix);
        self.claim_orphan_after = read.claim_orphan_after;
        let states = [
            (Source::Host, state_of(&read.host)),
            (Source::Api, state_of(&read.api)),
            (Source::Metadata, state_of(&read.metadata)),
        ];
        for (source, (state, error)) in states {
            let entry = self.sources.entry(source).or_insert_with(|| SourceStatus {
                source: source.key(),
                ..SourceStatus::default()
            });
            entry.state = state;
            entry.error = error;
            if state == "ok" {
                entry.last_good_unix = Some(read.at_unix);
                entry.last_good = Some(crate::wallclock::rfc3339(read.at_unix));
            }
        }
        for category in Category::ALL {
            let Some(now) = compare(read, category) else {
                continue;
            };
            let state = self.categories.entry(category).or_default();
            let mut before = std::mem::take(&mut state.findings);
            state.findings = now
                .into_iter()
                .map(|f| {
                    let seen = match before.remove(&f) {
                        Some(s) => Seen {
                            first_unix: s.first_unix,
                            reads: s.reads.saturating_add(1),
                        },
                        None => Seen {
                            first_unix: read.at_unix,
                            reads: 1,
                        },
                    };
                    (f, seen)
                })
                .collect();
            state.computed_unix = Some(read.at_unix);
        }
    }

    /// Whether a finding of `category` seen so counts: two consecutive good reads; a
    /// claim orphan also absent for `claim.orphan_after` by the last read that computed
    /// it (an address between keepalived nodes is briefly absent and bound here).
    fn confirmed(&self, category: Category, seen: &Seen) -> bool {
        if seen.reads < 2 {
            return false;
        }
        if category != Category::ClaimOrphan {
            return true;
        }
        let computed = self
            .categories
            .get(&category)
            .and_then(|s| s.computed_unix)
            .unwrap_or(seen.first_unix);
        computed.saturating_sub(seen.first_unix) >= self.claim_orphan_after.as_secs()
    }

    /// When the last read was made (Unix seconds).
    pub fn last_read_unix(&self) -> Option<u64> {
        self.last_read_unix
    }

    pub fn gauges(&self) -> GaugeValues {
        GaugeValues {
            confirmed: Category::ALL
                .iter()
                .map(|c| {
                    let n = self.categories.get(c).map_or(0, |s| {
                        s.findings
                            .values()
                            .filter(|seen| self.confirmed(*c, seen))
                            .count()
                    });
                    (*c, n)
                })
                .collect(),
            sources: self
                .sources
                .iter()
                .filter(|(_, s)| s.state != "not_used")
                .map(|(source, s)| (*source, s.state == "ok", s.last_good_unix))
                .collect(),
        }
    }

    /// The report as of the last read; `now_unix` dates how long findings were seen.
    pub fn report(&self, now_unix: u64, fresh: Freshness) -> Report {
        let mut findings = Vec::new();
        let mut categories = Vec::new();
        for category in Category::ALL {
            let state = self.categories.get(&category);
            let stale_sources: Vec<&'static str> = category
                .sources()
                .iter()
                .filter(|s| self.sources.get(s).is_none_or(|st| st.state != "ok"))
                .map(|s| s.key())
                .collect();
            let mut confirmed = 0;
            let mut unconfirmed = 0;
            for (finding, seen) in state.map(|s| &s.findings).into_iter().flatten() {
                let is_confirmed = self.confirmed(category, seen);
                if is_confirmed {
                    confirmed += 1;
                } else {
                    unconfirmed += 1;
                }
                findings.push(FindingReport {
                    category: category.key(),
                    confirmed: is_confirmed,
                    reads: seen.reads,
                    first_seen_unix: seen.first_unix,
                    first_seen: crate::wallclock::rfc3339(seen.first_unix),
                    seen_for_secs: now_unix.saturating_sub(seen.first_unix),
                    finding: finding.clone(),
                });
            }
            categories.push(CategoryReport {
                category: category.key(),
                confirmed,
                unconfirmed,
                computed_unix: state.and_then(|s| s.computed_unix),
                computed: state
                    .and_then(|s| s.computed_unix)
                    .map(crate::wallclock::rfc3339),
                stale: !stale_sources.is_empty(),
                unread_sources: stale_sources,
            });
        }
        Report {
            reads: self.reads,
            read_unix: self.last_read_unix,
            read: self.last_read_unix.map(crate::wallclock::rfc3339),
            freshness: fresh,
            sources: Source::ALL
                .iter()
                .map(|s| {
                    self.sources
                        .get(s)
                        .cloned()
                        .unwrap_or_else(|| SourceStatus {
                            source: s.key(),
                            state: "not_read",
                            ..SourceStatus::default()
                        })
                })
                .collect(),
            categories,
            findings,
            notes: NOTES.iter().map(|n| (*n).to_owned()).collect(),
        }
    }
}

fn state_of<T>(read: &SourceRead<T>) -> (&'static str, Option<String>) {
    match read {
        SourceRead::Ok(_) => ("ok", None),
        SourceRead::Failed(why) => ("failed", Some(why.clone())),
        SourceRead::NotUsed(why) => ("not_used", Some((*why).to_owned())),
    }
}

/// What every report says about itself.
pub const NOTES: [&str; 3] = [
    "read-only: enisync never acts on this report; README, \"Drift report\", says how to act by hand",
    "a finding seen in one read only is unconfirmed and not counted in the gauges; two consecutive good reads confirm it (a claim_orphan: and claim.orphan_after of absence seen)",
    "a source that failed is never taken as \"no IPs\": its categories keep their last values and are marked stale",
];

/// Whether this answer made a read of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Freshness {
    /// This request made a fresh read.
    Fresh,
    /// A read was made less than `min_secs` ago: no new read, the last one is shown.
    RateLimited { min_secs: u64 },
    /// The periodic read (no request asked for one).
    Periodic,
}

/// The findings of one category, as a count.
#[derive(Debug, Clone, Serialize)]
pub struct CategoryReport {
    pub category: &'static str,
    pub confirmed: usize,
    pub unconfirmed: usize,
    /// When its findings were last computed.
    pub computed_unix: Option<u64>,
    pub computed: Option<String>,
    /// A source it needs failed (or is not used) in the last read: the values are from
    /// the last read that had them all.
    pub stale: bool,
    pub unread_sources: Vec<&'static str>,
}

/// One finding with what the reads said of it.
#[derive(Debug, Clone, Serialize)]
pub struct FindingReport {
    pub category: &'static str,
    pub confirmed: bool,
    /// Consecutive good reads that showed it.
    pub reads: u32,
    pub first_seen_unix: u64,
    pub first_seen: String,
    /// How long enisync has seen it (for a leak candidate: seen absent from the host).
    pub seen_for_secs: u64,
    #[serde(flatten)]
    pub finding: Finding,
}

/// `enisync drift`: the last read and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Reads made since start.
    pub reads: u64,
    /// When the data shown was read.
    pub read_unix: Option<u64>,
    pub read: Option<String>,
    pub freshness: Freshness,
    pub sources: Vec<SourceStatus>,
    pub categories: Vec<CategoryReport>,
    pub findings: Vec<FindingReport>,
    pub notes: Vec<String>,
}

/// A request for the report: the daemon's drift task answers on the sender.
pub type Query = tokio::sync::oneshot::Sender<Report>;

#[cfg(test)]
mod tests;
