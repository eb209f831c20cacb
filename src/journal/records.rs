//! What one journal line holds: the intent's key, its state, its remover and outcome as
//! typed fields (schema 2), and what replay found.

use super::*;

/// What an intent wants done with its address. Only releases exist today; a claim (an
/// address to assign) would be a second kind, with no new schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentKind {
    Release,
}

/// The identity of one intent: records with the same key are states of one intent.
/// The address is an [`IpAddr`] so IPv6 needs no new schema; enisync writes only IPv4
/// today (and does not act on an IPv6 record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IntentKey {
    pub addr: IpAddr,
    /// Grows each time a new intent starts for `addr` (per address, not global).
    pub generation: u64,
    pub kind: IntentKind,
}

impl IntentKey {
    /// The key of release intent `generation` of `addr`.
    pub fn release(addr: impl Into<IpAddr>, generation: u64) -> Self {
        Self {
            addr: addr.into(),
            generation,
            kind: IntentKind::Release,
        }
    }
}

impl fmt::Display for IntentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            IntentKind::Release => "release",
        };
        write!(f, "{kind} {}#{}", self.addr, self.generation)
    }
}

/// One state change of one intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub v: u32,
    pub addr: IpAddr,
    pub generation: u64,
    pub kind: IntentKind,
    pub boot_id: String,
    /// Unix milliseconds of the state change.
    pub at_ms: u64,
    pub state: RecordState,
}

impl Record {
    pub fn key(&self) -> IntentKey {
        IntentKey {
            addr: self.addr,
            generation: self.generation,
            kind: self.kind,
        }
    }
}

/// Who removed the address: the fields of [`Remover`], not its display text.
#[derive(Default, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoverRecord {
    /// The netlink port id of the requesting socket (0: the kernel).
    pub port_id: u32,
    /// The process name, when it was known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// Its ancestors' names, parent first, as far as they were known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<String>,
    /// Why the remover could not be identified (unknown, or enisync's own failure);
    /// `None` when it was. A replayed intent with this set stays held as unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

impl From<&Remover> for RemoverRecord {
    fn from(r: &Remover) -> Self {
        use crate::host::Identity;
        Self {
            port_id: r.port_id,
            process: r.process.clone(),
            ancestors: r.ancestors.clone(),
            unknown: match &r.identity {
                Identity::Unknown(why) | Identity::Failed(why) => Some(why.clone()),
                Identity::Kernel | Identity::Alive | Identity::Exited => None,
            },
        }
    }
}

impl From<RemoverRecord> for Remover {
    /// A replayed remover: identified then (its process has likely exited since), or
    /// unknown then and still.
    fn from(r: RemoverRecord) -> Self {
        use crate::host::Identity;
        let identity = match r.unknown {
            Some(why) => Identity::Unknown(why),
            None if r.port_id == 0 => Identity::Kernel,
            None => Identity::Exited,
        };
        Self {
            port_id: r.port_id,
            process: r.process,
            ancestors: r.ancestors,
            identity,
        }
    }
}

/// Why an intent was cancelled, as the journal keeps it: the engine's reason key (the
/// metrics label), written as that text (`"reason":"link_down"`), so the encoding is the
/// one of the plain string it replaces. The engine converts its `Cancel` into this
/// (`engine/persist.rs`, one arm per reason: a reason without its record does not
/// compile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum CancelKey {
    KernelRemoval,
    IgnoredRemover,
    Collateral,
    Readded,
    PresentElsewhere,
    LinkDown,
    LinkGone,
    MacChanged,
    NotPhysical,
    NotSelectedInterface,
    NotAnEni,
    NotCandidate,
    OutsideInclude,
    Excluded,
    ClaimAddress,
    PrimaryIp,
    NotListedOnEni,
    EipBound,
    EniNotAttached,
    Operator,
    EarlierBoot,
    Schema1,
    /// A key this binary does not know (written by a newer one), kept as it was read.
    Unknown(String),
}

impl CancelKey {
    /// Every key this binary writes or migrates (not `Unknown`).
    pub const KNOWN: [Self; 22] = [
        Self::KernelRemoval,
        Self::IgnoredRemover,
        Self::Collateral,
        Self::Readded,
        Self::PresentElsewhere,
        Self::LinkDown,
        Self::LinkGone,
        Self::MacChanged,
        Self::NotPhysical,
        Self::NotSelectedInterface,
        Self::NotAnEni,
        Self::NotCandidate,
        Self::OutsideInclude,
        Self::Excluded,
        Self::ClaimAddress,
        Self::PrimaryIp,
        Self::NotListedOnEni,
        Self::EipBound,
        Self::EniNotAttached,
        Self::Operator,
        Self::EarlierBoot,
        Self::Schema1,
    ];

    /// The text on disk.
    pub fn as_str(&self) -> &str {
        match self {
            Self::KernelRemoval => "kernel_removal",
            Self::IgnoredRemover => "ignored_remover",
            Self::Collateral => "collateral",
            Self::Readded => "readded",
            Self::PresentElsewhere => "present_elsewhere",
            Self::LinkDown => "link_down",
            Self::LinkGone => "link_gone",
            Self::MacChanged => "mac_changed",
            Self::NotPhysical => "not_physical",
            Self::NotSelectedInterface => "not_selected_interface",
            Self::NotAnEni => "not_an_eni",
            Self::NotCandidate => "not_candidate",
            Self::OutsideInclude => "outside_include",
            Self::Excluded => "excluded",
            Self::ClaimAddress => "claim_address",
            Self::PrimaryIp => "primary_ip",
            Self::NotListedOnEni => "not_listed_on_eni",
            Self::EipBound => "eip_bound",
            Self::EniNotAttached => "eni_not_attached",
            Self::Operator => "operator",
            Self::EarlierBoot => "earlier_boot",
            Self::Schema1 => "schema_1",
            Self::Unknown(key) => key,
        }
    }
}

impl From<String> for CancelKey {
    fn from(key: String) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|known| known.as_str() == key)
            .unwrap_or(Self::Unknown(key))
    }
}

impl From<CancelKey> for String {
    fn from(key: CancelKey) -> Self {
        match key {
            CancelKey::Unknown(key) => key,
            known => known.as_str().to_owned(),
        }
    }
}

impl fmt::Display for CancelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an intent ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutcomeRecord {
    /// Its task ended in SUCCESS (`task_id` empty for a migrated schema-1 record).
    Released {
        task_id: String,
    },
    /// The cloud no longer listed it after our unassign.
    AlreadyGone,
    /// A clause failed: `reason` is the engine's stable reason key (the metrics label),
    /// `detail` the variant's data (a process name, an EIP id), if any.
    Cancelled {
        reason: CancelKey,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    DryRun,
    /// A newer intent for the same address took its place before this one was sent, or
    /// after its task failed (the newer one carries the release on).
    Superseded {
        by_generation: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RecordState {
    /// The removal was observed; the grace period runs.
    Observed {
        link: String,
        mac: Option<String>,
        eni_id: Option<String>,
        remover: Option<RemoverRecord>,
        /// Part of a held burst: stays held across a restart until an operator
        /// confirms.
        #[serde(default)]
        held: bool,
        /// Written just before the unassign goes out: from here on the cloud may have
        /// taken the call even if we never hear back (a crash, a lost answer). On replay
        /// an IP the cloud no longer lists then counts as released by us, instead of a
        /// lagging view to wait out.
        #[serde(default)]
        sending: bool,
        /// Asked for by an operator (`enisync release <ip>`): a restart resumes the
        /// request (its send-time checks still apply) instead of cancelling it as a claim
        /// address. Absent in records written before it existed, and when false.
        #[serde(default, skip_serializing_if = "is_false")]
        by_hand: bool,
    },
    /// The unassign was accepted; `task` is followed to its end even across reboots.
    Sent { eni_id: String, task: TaskRef },
    /// Terminal.
    Finished { outcome: OutcomeRecord },
}

/// What replay found, for the engine to act on.
#[derive(Debug, Default)]
pub struct Replay {
    /// Live intents: their latest record, in key order.
    pub live: Vec<Record>,
    /// Lines that failed their checksum or did not parse (line numbers).
    pub corrupt_lines: Vec<usize>,
    /// Records written by a newer schema, kept and not acted on.
    pub newer_schema: usize,
    /// Schema-1 records read (and migrated to schema 2 by this open).
    pub migrated: usize,
}

/// For `skip_serializing_if`: a false flag is left out of the line.
fn is_false(flag: &bool) -> bool {
    !*flag
}
