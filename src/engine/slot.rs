//! The per-ENI slot: what the engine is doing with one ENI. Calls for one ENI are
//! serialised here, and only here: a check or an unassign starts from an idle slot, and
//! every path that ends one goes back through [`EniSlots::set_idle`].
//!
//! ```text
//! Idle ─(due, more coming)─► Coalescing ─(its time)─► Checking ─(listing)─► Checked ─► Sending ─► Idle
//!  │                              │                     └─(describe failed)─► Idle      └─(nothing to send)─► Idle
//!  └──────────(due, nothing coming)──────────────────────►┘
//! ```
//!
//! An operator's pause stops every path to an unassign at its last step: a coalescing
//! wait ends, a listing that comes (or a checked batch that waits) goes back to idle
//! with its releases pending, and a call spawned before the pause sends nothing more
//! (`pause::SendGate`); a task the cloud already accepted is still followed to its end.

use std::collections::HashMap;
use std::net::IpAddr;

use tokio::time::Instant;

use crate::cloud::Eni;

/// A send-time listing, and the batch it was made for.
#[derive(Debug)]
pub(super) struct CheckedBatch {
    pub ips: Vec<IpAddr>,
    pub enis: Vec<Eni>,
    /// When the listing came.
    pub at: Instant,
}

/// What the engine is doing with one ENI. An ENI without a slot is idle.
#[derive(Debug)]
pub(super) enum EniSlot {
    /// Releases are due and more are about to be: the batch goes out at `until`.
    Coalescing { until: Instant },
    /// The send-time `DescribeNetworkInterfaces` is in flight.
    Checking,
    /// The listing came; the batch waits for the rest of its burst (see
    /// `Engine::checked_deadline`).
    Checked(CheckedBatch),
    /// An unassign (or a journaled task being followed) is in flight.
    Sending,
    /// A claim's lookup or call is in flight (docs/design.md, "Claims"): releases of
    /// the ENI wait for it, as claims wait for releases.
    Claiming,
}

/// Every ENI's slot.
#[derive(Debug, Default)]
pub(super) struct EniSlots {
    slots: HashMap<String, EniSlot>,
}

impl EniSlots {
    /// Whether a call for `eni` is being prepared or is out: new work waits for it.
    pub fn is_busy(&self, eni: &str) -> bool {
        matches!(
            self.slots.get(eni),
            Some(EniSlot::Checking | EniSlot::Checked(_) | EniSlot::Sending | EniSlot::Claiming)
        )
    }

    /// Whether `eni` has a slot at all (busy or coalescing): its intents do not set
    /// timers of their own.
    pub fn is_taken(&self, eni: &str) -> bool {
        self.slots.contains_key(eni)
    }

    /// The batch of an idle ENI waits for neighbours until `until`.
    pub fn coalesce(&mut self, eni: String, until: Instant) {
        if !self.is_busy(&eni) {
            self.slots.insert(eni, EniSlot::Coalescing { until });
        }
    }

    /// The check of `eni`'s batch goes out.
    pub fn set_checking(&mut self, eni: String) {
        debug_assert!(!self.is_busy(&eni), "a second check for busy {eni}");
        self.slots.insert(eni, EniSlot::Checking);
    }

    /// The listing for `eni`'s batch came.
    pub fn set_checked(&mut self, eni: String, batch: CheckedBatch) {
        debug_assert!(
            matches!(self.slots.get(&eni), Some(EniSlot::Checking)),
            "a listing for {eni}, which was not being checked"
        );
        self.slots.insert(eni, EniSlot::Checked(batch));
    }

    /// The unassign of `eni` goes out (or a journaled one is followed).
    pub fn set_sending(&mut self, eni: String) {
        self.slots.insert(eni, EniSlot::Sending);
    }

    /// A claim's work for `eni` starts (the slot was free).
    pub fn set_claiming(&mut self, eni: String) {
        debug_assert!(!self.is_taken(&eni), "a claim for taken {eni}");
        self.slots.insert(eni, EniSlot::Claiming);
    }

    /// The ENIs whose slot a claim holds.
    pub fn claiming(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|(_, slot)| matches!(slot, EniSlot::Claiming))
            .map(|(eni, _)| eni.clone())
            .collect()
    }

    /// Nothing is in flight for `eni` any more.
    pub fn set_idle(&mut self, eni: &str) {
        self.slots.remove(eni);
    }

    /// The end of every coalescing wait.
    pub fn coalescing_until(&self) -> impl Iterator<Item = Instant> + '_ {
        self.slots.values().filter_map(|slot| match slot {
            EniSlot::Coalescing { until } => Some(*until),
            _ => None,
        })
    }

    /// Every checked batch waiting to go out.
    pub fn checked(&self) -> impl Iterator<Item = (&str, &CheckedBatch)> + '_ {
        self.slots.iter().filter_map(|(eni, slot)| match slot {
            EniSlot::Checked(batch) => Some((eni.as_str(), batch)),
            _ => None,
        })
    }

    /// Whether any checked batch waits.
    pub fn any_checked(&self) -> bool {
        self.checked().next().is_some()
    }

    /// Takes `eni`'s checked batch to send it: the slot is `Sending` until the caller
    /// says otherwise.
    pub fn take_checked(&mut self, eni: &str) -> Option<CheckedBatch> {
        match self.slots.remove(eni) {
            Some(EniSlot::Checked(batch)) => {
                self.slots.insert(eni.to_owned(), EniSlot::Sending);
                Some(batch)
            }
            Some(other) => {
                self.slots.insert(eni.to_owned(), other);
                None
            }
            None => None,
        }
    }

    /// Takes every checked batch back, its ENI idle again (an operator's pause stopped
    /// them before their unassign).
    pub fn take_all_checked(&mut self) -> Vec<(String, CheckedBatch)> {
        let enis: Vec<String> = self.checked().map(|(eni, _)| eni.to_owned()).collect();
        enis.into_iter()
            .filter_map(|eni| match self.slots.remove(&eni) {
                Some(EniSlot::Checked(batch)) => Some((eni, batch)),
                _ => None,
            })
            .collect()
    }

    /// Ends every coalescing wait: `Engine::dispatch_due` decides them again on each
    /// turn, so a wait whose intents were cancelled meanwhile cannot outlive them.
    pub fn clear_coalescing(&mut self) {
        self.slots
            .retain(|_, slot| !matches!(slot, EniSlot::Coalescing { .. }));
    }
}
