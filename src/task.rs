//! The handle of a cloud task and the protocol that names it: plain identifiers the journal
//! persists and the configuration names.
//!
//! A leaf (it imports nothing of the crate) rather than part of `cloud`, so that
//! `journal` and `config` can hold a task without importing the cloud client
//! (docs/design.md, "Layering").

use serde::{Deserialize, Serialize};

/// The handle of an asynchronous cloud task: API 3.0 polls with the unassign's
/// `RequestId`, the legacy API with its numeric `taskId`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskRef {
    /// API 3.0 `RequestId` of the unassign (also logged for the audit trail).
    pub request_id: Option<String>,
    /// The id to poll: the RequestId (v3) or the legacy `taskId`.
    pub task_id: String,
    pub protocol: Protocol,
}

/// Which wire protocol carries the release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    V3,
    Legacy,
}
