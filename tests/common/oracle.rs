//! The chaos oracle: judges a run from the trigger rule (docs/design.md, "The trigger
//! rule, clause by clause") and nothing else. It never looks at the daemon's log or state: its inputs
//! are what the test did to the host (every operation, with the instants just before
//! and just after the `ip` command) and what the fake cloud received (every unassign,
//! stamped by a call observer on the test's clock, and how its task ended).
//!
//! # Tolerances
//!
//! An `ip` command takes effect somewhere between its two instants, so the oracle knows
//! an address *surely present* from the end of its `add` to the start of its `del`, and
//! *possibly present* from the start of the `add` to the end of the `del`; links the
//! same way. It only flags what a correct daemon cannot do, and only demands what a
//! correct daemon must do:
//!
//! - **Too early** (clause 4): a correct daemon sends no earlier than the grace period
//!   after *it* saw the removal, which is after the kernel did it, which is after the
//!   test started the `del`. So `sent ≥ del.start + grace`, with no slack at all.
//! - **Present at send time** (clause 4): between the daemon's last look at the host
//!   and the call reaching the fake there is a short, unobservable gap (netlink delivery,
//!   the send-time describe, the HTTP request), `send_slack`. An address surely present
//!   at any instant in `[removal, sent − send_slack]` is a violation; one that came back
//!   only inside the gap is a race no agent can see, and is not flagged.
//! - **Link down** (clause 5): the link surely down at any instant between the end of
//!   the `del` and the grace period after its start. (Down only after the grace period,
//!   while a delayed send waits, is allowed by the rule's letter and not flagged.)
//! - **Must release** (all clauses): only removals that clearly satisfy the rule are
//!   demanded: a user `del` on a managed ENI link that was surely up from `margin` before
//!   the removal to `margin` after its grace period ended, of an aux IP the cloud held as
//!   AVAILABLE, with nothing that could cancel it (the address possibly back anywhere,
//!   the link possibly down, the subnet's primary removed nearby) until `bound` after
//!   the grace period. Such a removal must be followed, within `bound` after its grace
//!   period, by an unassign whose task succeeded. A removal disqualified only after its
//!   grace period (while cloud faults delayed the send) is not demanded either way.
//! - **Unknown removers** (clause 2): a removal whose remover the daemon cannot
//!   identify, and every removal a resync found, is held, not released. The oracle
//!   cannot see which removals those were; the chaos run has no overruns, and every
//!   demanded removal is a one-shot `ip addr del`, which the daemon names from process
//!   events and the kernel's exit records (docs/security.md, "Who removed an address (clause 2)"):
//!   a miss shows here as "not released", and is a failure of identification.
//! - **Twice** (exactly once in effect): between two assignments of an IP (the initial
//!   one and each re-assignment the test makes) at most one successful unassign task.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// `release.burst_window`, the span clause 3 (and 6) look at, plus slack.
const BURST_WINDOW: Duration = Duration::from_millis(1500);

/// One host operation as the test performed it.
#[derive(Debug, Clone)]
pub struct HostOp {
    pub kind: OpKind,
    /// Just before the `ip` command.
    pub t0: Instant,
    /// Just after it returned.
    pub t1: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// `ip addr add` of an aux IP on `link`.
    Add {
        ip: Ipv4Addr,
        link: String,
    },
    /// `ip addr del` by a user tool.
    Del {
        ip: Ipv4Addr,
        link: String,
    },
    /// Swept away with its subnet's primary (clause 3): not a user's removal.
    Swept {
        ip: Ipv4Addr,
        link: String,
    },
    /// A subnet's primary IP deleted on `link`.
    PrimaryDel {
        ip: Ipv4Addr,
        link: String,
    },
    PrimaryAdd {
        ip: Ipv4Addr,
        link: String,
    },
    LinkDown {
        link: String,
    },
    LinkUp {
        link: String,
    },
    /// The test (re-)assigned the IP to its ENI in the cloud, AVAILABLE at once.
    Assign {
        ip: Ipv4Addr,
    },
    /// At a `Del`: whether the cloud then held the IP on the link's ENI, AVAILABLE.
    CloudHeld {
        ip: Ipv4Addr,
        held: bool,
    },
}

/// One unassign the fake received.
#[derive(Debug, Clone)]
pub struct Sent {
    /// When the fake logged it (observer, test clock).
    pub at: Instant,
    pub ips: Vec<Ipv4Addr>,
    /// Its task ended SUCCESS (the IP really left the ENI by this call).
    pub succeeded: bool,
    pub summary: String,
}

/// The oracle's settings.
#[derive(Debug, Clone)]
pub struct Rules {
    pub grace: Duration,
    /// Links whose MAC maps to an ENI of the instance (clause 5).
    pub managed_links: Vec<String>,
    /// Primary IPs: never released.
    pub primaries: Vec<Ipv4Addr>,
    pub send_slack: Duration,
    pub margin: Duration,
    /// The delay after the grace period within which a release must have happened.
    pub bound: Duration,
}

/// What a run showed.
#[derive(Debug, Default)]
pub struct Verdict {
    pub violations: Vec<String>,
    /// Removals the oracle demanded a release for, and found released.
    pub demanded: usize,
    /// Releases (successful tasks) checked.
    pub releases: usize,
    /// Unassign calls checked against clauses 1–5.
    pub calls: usize,
    /// Worst time from the end of a demanded removal's grace period to its release.
    pub worst_delay: Duration,
}

/// Judges a run. `ops` in the order performed; `sent` in arrival order.
pub fn judge(rules: &Rules, ops: &[HostOp], sent: &[Sent]) -> Verdict {
    let mut v = Verdict::default();
    let mut by_ip: BTreeMap<Ipv4Addr, Vec<&HostOp>> = BTreeMap::new();
    for op in ops {
        if let Some(ip) = op_ip(&op.kind) {
            by_ip.entry(ip).or_default().push(op);
        }
    }
    let downs = link_intervals(ops);

    // Clauses 1–5 for every unassign that named an IP, whatever the cloud answered:
    // the rule is about sending.
    for call in sent {
        for ip in &call.ips {
            v.calls += 1;
            if let Some(why) = sent_violation(rules, &by_ip, &downs, *ip, call.at) {
                v.violations
                    .push(format!("{ip}: sent {}: {why}", describe_call(call, ops)));
            }
        }
    }

    // Exactly once in effect: per IP, at most one successful release between two
    // assignments, and never two for one removal.
    for (ip, ip_ops) in &by_ip {
        let mut releases: Vec<Instant> = sent
            .iter()
            .filter(|s| s.succeeded && s.ips.contains(ip))
            .map(|s| s.at)
            .collect();
        releases.sort();
        v.releases += releases.len();
        let assigns: Vec<Instant> = ip_ops
            .iter()
            .filter(|o| matches!(o.kind, OpKind::Assign { .. }))
            .map(|o| o.t1)
            .collect();
        for pair in releases.windows(2) {
            if !assigns.iter().any(|a| *a > pair[0] && *a < pair[1]) {
                v.violations.push(format!(
                    "{ip}: released twice without a new assignment in between"
                ));
            }
        }
    }

    // Every removal that clearly satisfied the rule was released in time.
    for (ip, ip_ops) in &by_ip {
        if rules.primaries.contains(ip) {
            continue;
        }
        for (i, op) in ip_ops.iter().enumerate() {
            let OpKind::Del { link, .. } = &op.kind else {
                continue;
            };
            if !rules.managed_links.contains(link) {
                continue;
            }
            let held = ip_ops[..i].iter().rev().find_map(|o| match o.kind {
                OpKind::CloudHeld { held, .. } => Some(held),
                _ => None,
            });
            if held != Some(true) {
                continue;
            }
            let grace_end = op.t1 + rules.grace;
            let horizon = grace_end + rules.bound;
            // Anything that could cancel it before the horizon makes it optional.
            let back = ip_ops[i + 1..]
                .iter()
                .any(|o| matches!(o.kind, OpKind::Add { .. }) && o.t0 < horizon);
            let down = downs.get(link).is_some_and(|ds| {
                ds.iter()
                    .any(|(d0, d1)| *d0 < horizon && *d1 > op.t0 - rules.margin)
            });
            // Clause 3 looks at removals within the burst window of the primary's.
            let primary_nearby = ops.iter().any(|o| {
                matches!(&o.kind, OpKind::PrimaryDel { link: l, .. } if l == link)
                    && o.t1 + BURST_WINDOW > op.t0
                    && o.t0 < op.t1 + BURST_WINDOW
            });
            if back || down || primary_nearby {
                continue;
            }
            let released = sent.iter().find(|s| {
                s.succeeded && s.ips.contains(ip) && s.at >= op.t0 + rules.grace && s.at <= horizon
            });
            match released {
                Some(s) => {
                    v.demanded += 1;
                    v.worst_delay = v.worst_delay.max(s.at.saturating_duration_since(grace_end));
                }
                None => v.violations.push(format!(
                    "{ip}: removed from {link} at {:?} and never back, link up, cloud held it: \
                     not released within {:?} after its grace period",
                    op.t0, rules.bound
                )),
            }
        }
    }
    v
}

/// Why sending an unassign for `ip` at `at` broke the rule, if it did.
fn sent_violation(
    rules: &Rules,
    by_ip: &BTreeMap<Ipv4Addr, Vec<&HostOp>>,
    downs: &BTreeMap<String, Vec<(Instant, Instant)>>,
    ip: Ipv4Addr,
    at: Instant,
) -> Option<String> {
    if rules.primaries.contains(&ip) {
        return Some("a primary IP".into());
    }
    let ops = by_ip.get(&ip)?;
    // The removal it answers: the last one that started before the call arrived.
    let Some((i, removal)) =
        ops.iter().enumerate().rev().find(|(_, o)| {
            matches!(o.kind, OpKind::Del { .. } | OpKind::Swept { .. }) && o.t0 < at
        })
    else {
        return Some("no removal was ever observed (clause 1)".into());
    };
    let link = match &removal.kind {
        OpKind::Swept { .. } => {
            return Some(
                "its last removal was collateral (subnet primary deleted, clause 3)".into(),
            );
        }
        OpKind::Del { link, .. } => link,
        _ => unreachable!("filtered above"),
    };
    if !rules.managed_links.contains(link) {
        return Some(format!(
            "removed from {link}, not a managed ENI link (clause 5)"
        ));
    }
    if at < removal.t0 + rules.grace {
        return Some(format!(
            "{:?} after the removal started, inside the grace period {:?} (clause 4)",
            at - removal.t0,
            rules.grace
        ));
    }
    let cutoff = at - rules.send_slack;
    if let Some(add) = ops[i + 1..]
        .iter()
        .find(|o| matches!(o.kind, OpKind::Add { .. }) && o.t1 < cutoff)
    {
        return Some(format!(
            "back on the host {:?} before the call (clause 4)",
            at - add.t1
        ));
    }
    // Clause 5 asks for the link up for the whole grace period (not up to the send).
    // The daemon's grace period starts when it sees the removal, after the kernel made
    // it; the link's events reach it in order behind the removal's, so a link surely
    // down between the end of the `del` and the grace period after its start falls
    // inside the daemon's grace period too.
    let grace_end = removal.t0 + rules.grace;
    if downs.get(link).is_some_and(|ds| {
        ds.iter().any(|(d0, d1)| {
            // Surely down: from the end of `down` to the start of `up`.
            *d0 < grace_end && *d1 > removal.t1
        })
    }) {
        return Some(format!(
            "{link} went down during the grace period (clause 5)"
        ));
    }
    None
}

/// Surely-down intervals per link: (end of the `down` command, start of the `up`).
fn link_intervals(ops: &[HostOp]) -> BTreeMap<String, Vec<(Instant, Instant)>> {
    let mut out: BTreeMap<String, Vec<(Instant, Instant)>> = BTreeMap::new();
    let mut open: BTreeMap<String, Instant> = BTreeMap::new();
    for op in ops {
        match &op.kind {
            OpKind::LinkDown { link } => {
                open.insert(link.clone(), op.t1);
            }
            OpKind::LinkUp { link } => {
                if let Some(d0) = open.remove(link) {
                    out.entry(link.clone()).or_default().push((d0, op.t0));
                }
            }
            _ => {}
        }
    }
    let far = Instant::now() + Duration::from_secs(3600);
    for (link, d0) in open {
        out.entry(link).or_default().push((d0, far));
    }
    out
}

fn op_ip(kind: &OpKind) -> Option<Ipv4Addr> {
    match kind {
        OpKind::Add { ip, .. }
        | OpKind::Del { ip, .. }
        | OpKind::Swept { ip, .. }
        | OpKind::PrimaryDel { ip, .. }
        | OpKind::PrimaryAdd { ip, .. }
        | OpKind::Assign { ip }
        | OpKind::CloudHeld { ip, .. } => Some(*ip),
        OpKind::LinkDown { .. } | OpKind::LinkUp { .. } => None,
    }
}

fn describe_call(call: &Sent, ops: &[HostOp]) -> String {
    let start = ops.first().map_or(call.at, |o| o.t0);
    let mut s = String::new();
    let _ = write!(
        s,
        "at +{:?} ({})",
        call.at.saturating_duration_since(start),
        call.summary
    );
    s
}

/// The history of one IP, for a failure report.
pub fn history(ops: &[HostOp], sent: &[Sent], ip: Ipv4Addr) -> String {
    let start = ops.first().map(|o| o.t0);
    let rel = |t: Instant| start.map_or(Duration::ZERO, |s| t.saturating_duration_since(s));
    let mut lines: Vec<(Instant, String)> = ops
        .iter()
        .filter(|o| {
            op_ip(&o.kind) == Some(ip)
                || matches!(
                    o.kind,
                    OpKind::LinkDown { .. } | OpKind::LinkUp { .. } | OpKind::PrimaryDel { .. }
                )
        })
        .map(|o| {
            (
                o.t0,
                format!("  +{:?}..+{:?} {:?}", rel(o.t0), rel(o.t1), o.kind),
            )
        })
        .collect();
    lines.extend(
        sent.iter()
            .filter(|s| s.ips.contains(&ip))
            .map(|s| (s.at, format!("  +{:?} SENT {}", rel(s.at), s.summary))),
    );
    lines.sort_by_key(|(t, _)| *t);
    lines
        .into_iter()
        .map(|(_, l)| l)
        .collect::<Vec<_>>()
        .join("\n")
}
