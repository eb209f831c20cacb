//! Schema 1, as the binaries before schema 2 wrote it: read only, to migrate.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{CancelKey, MIGRATED_GENERATION, OutcomeRecord, RemoverRecord, SCHEMA_VERSION};
use crate::task::TaskRef;

/// A schema-1 record: keyed by IPv4 address alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordV1 {
    pub v: u32,
    pub ip: Ipv4Addr,
    pub boot_id: String,
    pub at_ms: u64,
    pub state: StateV1,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StateV1 {
    Observed {
        link: String,
        mac: Option<String>,
        eni_id: Option<String>,
        /// The remover's display text: `"<process> (port <n>)"` or `"port <n>"`.
        remover: Option<String>,
        #[serde(default)]
        held: bool,
        #[serde(default)]
        sending: bool,
    },
    Sent {
        eni_id: String,
        task: TaskRef,
    },
    /// `released`, `already_gone`, `dry_run` or `cancelled: <reason text>`.
    Finished {
        outcome: String,
    },
}

impl RecordV1 {
    /// The schema-2 record of this one: generation [`MIGRATED_GENERATION`] of its
    /// address, the remover and outcome parsed back from their text.
    pub fn migrate(self) -> super::Record {
        let state = match self.state {
            StateV1::Observed {
                link,
                mac,
                eni_id,
                remover,
                held,
                sending,
            } => super::RecordState::Observed {
                link,
                mac,
                eni_id,
                remover: remover.and_then(|text| {
                    let parsed = parse_remover(&text);
                    if parsed.is_none() {
                        tracing::warn!(ip = %self.ip, remover = %text, "journal migration: remover text not understood; kept as unknown");
                    }
                    parsed
                }),
                held,
                sending,
                by_hand: false,
            },
            StateV1::Sent { eni_id, task } => super::RecordState::Sent { eni_id, task },
            StateV1::Finished { outcome } => super::RecordState::Finished {
                outcome: parse_outcome(&outcome),
            },
        };
        super::Record {
            v: SCHEMA_VERSION,
            addr: self.ip.into(),
            generation: MIGRATED_GENERATION,
            kind: super::IntentKind::Release,
            boot_id: self.boot_id,
            at_ms: self.at_ms,
            state,
        }
    }
}

/// `"<process> (port <n>)"` or `"port <n>"`, as schema 1 wrote a remover. The
/// process name may itself hold spaces and parentheses: the port is the last part.
pub fn parse_remover(text: &str) -> Option<RemoverRecord> {
    if let Some(port) = text.strip_prefix("port ") {
        return Some(RemoverRecord {
            port_id: port.parse().ok()?,
            process: None,
            ancestors: Vec::new(),
            unknown: None,
        });
    }
    let (process, port) = text.strip_suffix(')')?.rsplit_once(" (port ")?;
    Some(RemoverRecord {
        port_id: port.parse().ok()?,
        process: Some(process.to_owned()),
        ancestors: Vec::new(),
        unknown: None,
    })
}

fn parse_outcome(text: &str) -> OutcomeRecord {
    match text {
        "released" => OutcomeRecord::Released {
            task_id: String::new(),
        },
        "already_gone" => OutcomeRecord::AlreadyGone,
        "dry_run" => OutcomeRecord::DryRun,
        other => OutcomeRecord::Cancelled {
            reason: CancelKey::Schema1,
            detail: Some(
                other
                    .strip_prefix("cancelled: ")
                    .unwrap_or(other)
                    .to_owned(),
            ),
        },
    }
}
