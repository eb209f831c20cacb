//! Who asked for an IPv6 removal, from the probe's records: pure logic over what was
//! drained (unit tests in `tests.rs`). The rules (docs/design.md, "IPv6"):
//!
//! - A request counts for a removal when it was made in our network namespace, names
//!   the same link and address (compared as `Ipv6Addr`), was recorded no earlier than
//!   [`WINDOW`] before the removal was read, and did not fail (its exit record, when
//!   read, returned 0). Each request explains one removal: a matched one is consumed.
//! - Exactly one process among the requests that count → that process.
//! - None → the kernel removed it on its own: the notification was sent after the
//!   request's record would have been written, and every record before it was read.
//! - Several processes, a request whose namespace or target could not be read, or
//!   records that may have been lost (within [`WINDOW`] of the loss) → unknown.

use std::net::Ipv6Addr;
use std::time::Duration;

use super::Drained;
use super::record::{Body, Record, Target};

/// How long a request counts. A removal read later than this after its request (the
/// daemon stalled) is taken for the kernel's: not released, never wrongly released.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Requests kept at most (more arrive only from a flood of deletions in some
/// namespace within [`WINDOW`]); beyond that the oldest go and the next removals are
/// unknown, as after a loss.
const MAX_PENDING: usize = 4096;

/// What the records say about one removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribution {
    /// This process asked (`comm` as the kernel saw it when it asked; `tid` is its
    /// thread).
    Process { tgid: u32, tid: u32, comm: String },
    /// Nobody in user space asked: the kernel removed it.
    Kernel,
    /// Cannot tell; the text says why.
    Unknown(String),
}

#[derive(Debug, Clone)]
struct Request {
    tgid: u32,
    tid: u32,
    ktime: u64,
    comm: String,
    netns: Option<u32>,
    target: Option<Target>,
    /// Its exit record was read: the function returned.
    returned: bool,
}

/// The requests drained and not yet matched or expired.
#[derive(Debug)]
pub struct Deletions {
    netns: u32,
    pending: Vec<Request>,
    /// Records may have been lost: removals read before this time are unknown.
    uncertain_until: Option<u64>,
    uncertain_why: String,
}

fn window_ns() -> u64 {
    u64::try_from(WINDOW.as_nanos()).unwrap_or(u64::MAX)
}

impl Deletions {
    /// Attributes removals in network namespace `netns` (its inode).
    pub fn new(netns: u32) -> Self {
        Self {
            netns,
            pending: Vec::new(),
            uncertain_until: None,
            uncertain_why: String::new(),
        }
    }

    /// Takes in what a drain found; `now` is CLOCK_MONOTONIC in nanoseconds.
    pub fn add(&mut self, drained: Drained, now: u64) {
        if let Some(why) = drained.incomplete {
            self.uncertain(now, why);
        }
        for r in drained.records {
            self.record(r, now);
        }
        let oldest = now.saturating_sub(window_ns());
        self.pending.retain(|p| p.ktime >= oldest);
    }

    fn uncertain(&mut self, now: u64, why: String) {
        self.uncertain_until = Some(now.saturating_add(window_ns()));
        self.uncertain_why = why;
    }

    fn record(&mut self, r: Record, now: u64) {
        match r.body {
            Body::Entry { netns, target } => {
                if self.pending.len() >= MAX_PENDING {
                    self.pending.remove(0);
                    self.uncertain(
                        now,
                        format!("more than {MAX_PENDING} deletion requests within {WINDOW:?}"),
                    );
                }
                self.pending.push(Request {
                    tgid: r.tgid,
                    tid: r.tid,
                    ktime: r.ktime,
                    comm: r.comm,
                    netns,
                    target,
                    returned: false,
                });
            }
            Body::Exit { ret } => {
                // The same thread's latest call still running: calls on one thread do
                // not nest (both functions run under the RTNL lock).
                let call = self
                    .pending
                    .iter()
                    .rposition(|p| p.tid == r.tid && !p.returned && p.ktime <= r.ktime);
                if let Some(i) = call {
                    if ret == 0 {
                        self.pending[i].returned = true;
                    } else {
                        // Refused (no such address, no such link): deleted nothing.
                        self.pending.remove(i);
                    }
                }
            }
        }
    }

    /// Forgets the requests recorded before `before` (CLOCK_MONOTONIC): the
    /// notifications of their removals may have been lost (an overrun, a reconnect), so
    /// none of them may explain a later removal of the same address.
    pub fn forget_before(&mut self, before: u64) {
        self.pending.retain(|p| p.ktime >= before);
    }

    /// Who asked for the removal of `ip` from link `link`, read at `now`.
    pub fn attribute(&mut self, link: u32, ip: Ipv6Addr, now: u64) -> Attribution {
        if let Some(until) = self.uncertain_until {
            if now < until {
                return Attribution::Unknown(format!(
                    "deletion requests may have been missed ({})",
                    self.uncertain_why
                ));
            }
            self.uncertain_until = None;
        }
        let oldest = now.saturating_sub(window_ns());
        let ours = |p: &Request| p.netns.is_none_or(|ns| ns == self.netns);
        let recent = |p: &Request| p.ktime >= oldest && p.ktime <= now;
        if let Some(p) = self
            .pending
            .iter()
            .find(|p| recent(p) && ours(p) && (p.netns.is_none() || p.target.is_none()))
        {
            return Attribution::Unknown(format!(
                "a deletion request by {} ({}) could not be read",
                p.comm, p.tgid
            ));
        }
        let wanted = Target { link, ip };
        let matching: Vec<usize> = (0..self.pending.len())
            .filter(|&i| {
                let p = &self.pending[i];
                recent(p) && ours(p) && p.target == Some(wanted)
            })
            .collect();
        let Some(&first) = matching.first() else {
            return Attribution::Kernel;
        };
        let tgid = self.pending[first].tgid;
        if let Some(&other) = matching.iter().find(|&&i| self.pending[i].tgid != tgid) {
            return Attribution::Unknown(format!(
                "both {} ({}) and {} ({}) asked to delete it",
                self.pending[first].comm, tgid, self.pending[other].comm, self.pending[other].tgid
            ));
        }
        let p = self.pending.remove(first);
        Attribution::Process {
            tgid: p.tgid,
            tid: p.tid,
            comm: p.comm,
        }
    }
}
