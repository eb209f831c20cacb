//! The watcher: follows the kernel's link and IPv4 address notifications, keeps a
//! mirror ([`HostView`]) and tells the engine what changed as [`HostEvent`]s.
//!
//! Start-up follows the subscribe → dump → apply-queued recipe (docs/design.md,
//! "Start-up"): the event socket is subscribed before the dump, so every change after the
//! subscription is queued behind the dump and applying the queue in order converges.
//! Applying is idempotent against the mirror: a notification that changes nothing the
//! mirror tracks produces no event, which is also what keeps a removal from being
//! reported twice (once by a notification, once by a resync diff).
//!
//! When the kernel drops notifications (the socket's receive buffer overflowed,
//! ENOBUFS, seen as `Notification::Overrun`), the watcher re-dumps and emits the
//! difference between its mirror and the dump, then [`HostEvent::Resynced`]. Removals
//! found that way carry `remover: None`: nobody knows who asked for them.
//!
//! # What the kernel sends when a subnet's primary address is deleted
//!
//! Observed on 6.18 (tests `promote_secondaries_off_*` / `promote_secondaries_on_*` in
//! `tests/host_watch.rs`), `ip addr del` of the primary 10.1.0.1/24 of a link that also
//! has the secondaries 10.1.0.2/24 and 10.1.0.3/24:
//!
//! - `promote_secondaries = 0` (the default): one RTM_DELADDR per secondary **first**
//!   (10.1.0.2, then 10.1.0.3, flagged secondary), then the RTM_DELADDR of the
//!   primary. All of them carry the port id of the `ip` process that asked for the
//!   primary's deletion, not 0: the collateral removals look user-requested. Only the
//!   order, the `secondary` flag and the primary's removal right behind them tell
//!   them apart.
//! - `promote_secondaries = 1`: one RTM_DELADDR for the primary (port id of `ip`),
//!   then one RTM_NEWADDR for the promoted address (10.1.0.2, now without the
//!   secondary flag; same port id). The watcher reports that as `AddrAdded` of an
//!   address it already knew (its `secondary` flag changed). 10.1.0.3 stays secondary
//!   and gets no message.
//!
//! Link deletion and moving a link to another namespace send an RTM_NEWLINK (the link
//! going down), an RTM_DELADDR per address with port id 0 (the kernel), then
//! RTM_DELLINK.
//!
//! The remover is resolved by `procs::Identifier` when the DELADDR is handled (once
//! per burst and port): the process that owns the socket and its ancestors, or, for a
//! short-lived `ip addr del` that has exited by then, what the process events
//! connector saw of it. What cannot be identified is reported as such, and held by the
//! engine.
//!
//! # Cost under a stream of notifications
//!
//! A container host or an `ip -batch` produces notifications faster than one wakeup
//! each is worth. The watcher reads the socket itself, takes everything queued per
//! wakeup, and when notifications come less than a millisecond apart it takes the
//! socket out of the reactor for a millisecond so the kernel queues a batch (only with
//! a receive buffer of 1 MiB or more; see the constants in `follow.rs`). A lone removal is read
//! the moment it arrives. Measured by `bench/run.sh --phases load` (BENCHMARKS.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::netlink::{EventSocket, Netlink, Notification};
use super::procs::Identifier;
use super::{HostError, HostEvent, HostView, Link, Remover};
use crate::backoff::Backoff;

mod follow;
mod resync;

/// How the watcher runs.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Requested receive buffer of the event socket in bytes (the kernel doubles it,
    /// and floors it at a few KiB). Bigger absorbs longer bursts before an overrun.
    pub recv_buffer: usize,
    /// Full re-dump as a safety net against anything the notifications missed
    /// (interrupted dumps, kernel flushes that send nothing).
    pub resync_interval: Duration,
    /// Rule and route notifications come in bursts (an address brings its local and
    /// prefix routes, a link going down flushes many): one `RoutingChanged` at most
    /// per this window.
    pub routing_debounce: Duration,
    /// Backoff between attempts to reopen the sockets after the event stream ended.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// IPv4 CIDRs whose additions on physical links are followed by an
    /// [`HostEvent::AddrAdder`] naming who added them (`claim.cidrs`; empty: none).
    pub adder_cidrs: Vec<crate::net::Cidr>,
}

/// `netlink.receive_buffer`'s default, bytes (the config's default is this one).
pub const DEFAULT_RECV_BUFFER: usize = 4 * 1024 * 1024;
/// `netlink.resync_interval`'s default.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(300);

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            recv_buffer: DEFAULT_RECV_BUFFER,
            resync_interval: DEFAULT_RESYNC_INTERVAL,
            routing_debounce: Duration::from_millis(200),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
            adder_cidrs: Vec::new(),
        }
    }
}

/// The counters the watcher updates while it runs (read them with [`WatchHandle::stats`]).
#[derive(Debug, Default)]
struct AtomicWatchStats {
    notifications: AtomicU64,
    events: AtomicU64,
    overruns: AtomicU64,
    resyncs: AtomicU64,
    drift: AtomicU64,
    reconnects: AtomicU64,
}

/// A snapshot of the watcher's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Kernel notifications received (all kinds).
    pub notifications: u64,
    /// `HostEvent`s sent to the engine.
    pub events: u64,
    /// Overrun markers seen (the kernel dropped notifications).
    pub overruns: u64,
    /// Full re-dumps done (after overruns, reconnects, requests, and periodically).
    pub resyncs: u64,
    /// Differences those re-dumps found between the mirror and the kernel.
    pub drift: u64,
    /// Times the sockets were reopened after the event stream ended.
    pub reconnects: u64,
}

#[derive(Debug)]
enum WatcherRequest {
    Resync,
}

/// The engine's handle on the watcher. Dropping it stops the watcher.
#[derive(Debug)]
pub struct WatchHandle {
    commands: mpsc::UnboundedSender<WatcherRequest>,
    counters: Arc<AtomicWatchStats>,
    task: JoinHandle<()>,
    effective_recv_buffer: usize,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WatchHandle {
    /// Asks for a full re-dump; its differences and then `Resynced` follow as events.
    pub fn request_resync(&self) -> Result<(), HostError> {
        self.commands
            .send(WatcherRequest::Resync)
            .map_err(|_| HostError::WatcherStopped)
    }

    /// The current counters.
    pub fn stats(&self) -> WatchStats {
        let c = &self.counters;
        WatchStats {
            notifications: c.notifications.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
            overruns: c.overruns.load(Ordering::Relaxed),
            resyncs: c.resyncs.load(Ordering::Relaxed),
            drift: c.drift.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
        }
    }

    /// The event socket's receive buffer as the kernel reports it at start.
    pub fn effective_recv_buffer(&self) -> usize {
        self.effective_recv_buffer
    }

    /// Whether the watcher task has ended (the event receiver was dropped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Starts the watcher on the current tokio runtime, in the caller's network namespace.
///
/// Returns the view after the initial dump (what was already gone before the start is
/// simply absent, never an event), the handle, and the receiver of every change after
/// that dump. Applying the events in order to the returned view (with
/// [`HostView::apply`]) keeps a copy equal to the watcher's mirror. The watcher stops
/// when the receiver or the handle is dropped.
pub async fn start(
    opts: WatchOptions,
) -> Result<(HostView, WatchHandle, mpsc::UnboundedReceiver<HostEvent>), HostError> {
    start_with(opts, Identifier::default()).await
}

/// [`start`], with the identifier that resolves removers (the daemon's uses the
/// process events connector; [`start`]'s reads `/proc` only).
pub async fn start_with(
    opts: WatchOptions,
    identifier: Identifier,
) -> Result<(HostView, WatchHandle, mpsc::UnboundedReceiver<HostEvent>), HostError> {
    // Subscribe before dumping: changes made during the dump are queued, not lost.
    let events = EventSocket::open(opts.recv_buffer)?;
    let effective_recv_buffer = events.effective_rcvbuf;
    let requests = Netlink::connect()?;
    let view = dump(&requests).await?;
    tracing::info!(
        links = view.links.len(),
        addrs = view.addrs.len(),
        rcvbuf = effective_recv_buffer,
        "host watcher started"
    );

    let (tx, rx) = mpsc::unbounded_channel();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let counters = Arc::new(AtomicWatchStats::default());
    let watcher = Watcher {
        opts,
        events,
        requests,
        mirror: view.clone(),
        tx,
        commands: cmd_rx,
        counters: Arc::clone(&counters),
        routing_due: None,
        burst_remover: None,
        identifier,
    };
    let task = tokio::spawn(watcher.run());
    Ok((
        view,
        WatchHandle {
            commands: cmd_tx,
            counters,
            task,
            effective_recv_buffer,
        },
        rx,
    ))
}

/// Links and IPv4 addresses, as the kernel has them now.
async fn dump(nl: &Netlink) -> Result<HostView, HostError> {
    let mut view = HostView::default();
    for link in nl.links().await? {
        view.links.insert(link.index, link);
    }
    for addr in nl.addrs().await? {
        view.addrs.insert(addr.key(), addr);
    }
    Ok(view)
}

/// Why a resync runs; only changes what is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Overrun,
    Reconnect,
    Requested,
    Periodic,
}

struct Watcher {
    opts: WatchOptions,
    events: EventSocket,
    requests: Netlink,
    mirror: HostView,
    tx: mpsc::UnboundedSender<HostEvent>,
    commands: mpsc::UnboundedReceiver<WatcherRequest>,
    counters: Arc<AtomicWatchStats>,
    /// When the pending `RoutingChanged` is due, if one is.
    routing_due: Option<Instant>,
    /// The remover last read from `/proc` in the current burst (see `run`).
    burst_remover: Option<Remover>,
    identifier: Identifier,
}
