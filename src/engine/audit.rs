//! The audit log: one record per decision (target `audit`, stable field names; the
//! `decision` and `reason` values are pinned by `src/engine/tests/golden.rs`), the
//! alarms, and the recent errors `status` shows.

use std::net::IpAddr;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::reasons::Cancel;
use super::{Engine, RECENT_KEPT, Router};
use crate::cloud::{Cloud, Eni};
use crate::host::{Link, Remover};

impl<C: Cloud, R: Router> Engine<C, R> {
    /// A removal the rule refused at once.
    pub(super) fn audit_skip(
        &self,
        ip: IpAddr,
        link: Option<&Link>,
        remover: Option<&Remover>,
        cancel: &Cancel,
    ) {
        let link = link.map_or("?", |l| l.name.as_str());
        let remover = describe_optional_remover(remover);
        if cancel.is_off_the_enis() {
            debug!(target: "audit", decision = "not_released", ip = %ip, link, remover, reason = %cancel, "address removal will not be released");
        } else {
            info!(target: "audit", decision = "not_released", ip = %ip, link, remover, reason = %cancel, "address removal will not be released");
        }
    }

    /// The audit record of a release the rule allows: each clause and what held it.
    pub(super) fn audit_allowed(&self, ip: IpAddr, eni: Option<&Eni>, now: Instant) {
        let Some(i) = self.intents.get(&ip) else {
            return;
        };
        let entry = eni.and_then(|e| e.ip(ip));
        info!(
            target: "audit",
            decision = "allowed",
            ip = %ip,
            link = %i.link_name,
            eni = i.eni_id.as_deref().unwrap_or("?"),
            removed_unix_ms = i.observed_unix_ms,
            remover = describe_optional_remover(i.remover.as_ref()).as_str(),
            grace_ms = crate::millis(self.settings.grace),
            absent_ms = crate::millis(now.duration_since(i.observed_at)),
            c1_observed = "seen while running, this boot",
            c2_remover = "user space, not ignored",
            c3_collateral = "no",
            c4_absent = "on no link since the removal",
            c5_link = "physical ENI link, up, selected",
            c6_burst = "no",
            c7_cloud = %format!(
                "secondary, {}, attached to this instance, EIP {}",
                entry.map_or("?", |e| e.state.as_str()),
                entry.and_then(|e| e.eip.as_deref()).unwrap_or("none")
            ),
            "every clause of the trigger rule holds; releasing"
        );
    }

    /// An address whose release is out or done is back on the host.
    pub(super) fn alarm(&mut self, ip: IpAddr, what: &str) {
        self.counters.alarms += 1;
        if let Some(sink) = &self.metrics {
            sink.alarm_raised();
        }
        let text = format!("{ip} {what}: the host uses an address the VPC no longer routes to it");
        warn!(target: "audit", decision = "alarm", ip = %ip, "{text}");
        self.alarms.push_front(text);
        self.alarms.truncate(RECENT_KEPT);
    }

    /// A failure (cloud error, refusal) for `status`, newest first, stamped with wall
    /// time: it is a record, read by people.
    pub(super) fn record_error(&mut self, text: String) {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.errors.push_front(format!("@{stamp} {text}"));
        self.errors.truncate(RECENT_KEPT);
    }
}

/// Wall-clock now, Unix ms: for records (audit, status), never for timers.
pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, crate::millis)
}

/// `ip ← dhclient-script ← dhclient (port 4242)`; what is known of an unidentified
/// one, and why it is not identified.
fn describe_remover(r: &Remover) -> String {
    let chain = r.chain();
    let exited = if r.identity == crate::host::Identity::Exited {
        ", exited"
    } else {
        ""
    };
    match (r.unidentified(), chain.is_empty()) {
        (None, false) => format!("{chain} (port {}{exited})", r.port_id),
        (None, true) => format!("port {}", r.port_id),
        (Some(why), true) => format!("unknown (port {}: {why})", r.port_id),
        (Some(why), false) => format!("unknown: {chain} ← ? (port {}: {why})", r.port_id),
    }
}

pub(super) fn describe_optional_remover(r: Option<&Remover>) -> String {
    r.map_or_else(|| "unknown (resync)".to_string(), describe_remover)
}
