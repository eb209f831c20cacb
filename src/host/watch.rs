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
//! a receive buffer of 1 MiB or more; see the constants below). A lone removal is read
//! the moment it arrives. Measured by `bench/run.sh --phases load` (BENCHMARKS.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why an IPv6 removal has no remover: `inet6_ifa_notify` (net/ipv6/addrconf.c) fills
/// every RTM_NEWADDR/RTM_DELADDR of IPv6 with port id 0, for `ip -6 addr del` as for the
/// kernel's own removals, so the port names nobody.
pub const IPV6_NO_SENDER: &str =
    "IPv6 address notifications carry no sender (the kernel sends them all with port 0)";
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::netlink::{EventSocket, Netlink, Notification};
use super::procs::Identifier;
use super::{HostError, HostEvent, HostView, Link, Remover};
use crate::backoff::Backoff;

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
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            recv_buffer: 4 * 1024 * 1024,
            resync_interval: Duration::from_secs(300),
            routing_debounce: Duration::from_millis(200),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
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

/// At most this many notifications are handled per poll of the watcher, so a storm
/// cannot keep it from its commands and timers.
const BURST: usize = 512;

/// Notifications less than this apart are a stream (see `Watcher::run`).
const STREAM_GAP: Duration = Duration::from_millis(1);

/// A stream is read as it comes for this long before batching starts: a burst of
/// removals (a flushed link, a mass `ip addr del`) is over within a few milliseconds
/// and reaches the engine undelayed, so its removals share calls.
const STREAM_BATCH_AFTER: Duration = Duration::from_millis(10);

/// How long the watcher lets a stream queue up in the kernel before reading on. Far
/// below what fills the receive buffer (megabytes; a notification is about 1 KiB of
/// buffer), and it delays only notifications that follow others within a millisecond.
const STREAM_BATCH_DELAY: Duration = Duration::from_millis(1);

/// The receive buffer below which streams are read as they come, without the delay:
/// a millisecond of the fastest stream one process can make (~100 notifications of
/// ~1 KiB of buffer each) with a tenfold margin. The default buffer is 8 MiB.
const STREAM_BATCH_MIN_RCVBUF: usize = 1024 * 1024;

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

impl Watcher {
    async fn run(mut self) {
        let period = self.opts.resync_interval;
        let mut periodic = tokio::time::interval_at(Instant::now() + period, period);
        periodic.set_missed_tick_behavior(MissedTickBehavior::Delay);

        // When the last burst ended, to tell a stream of notifications from a lone one,
        // and when the current stream began.
        let mut last_burst: Option<Instant> = None;
        let mut stream_since: Option<Instant> = None;
        while !self.tx.is_closed() {
            let routing_due = self.routing_due;
            let routing_timer = async move {
                match routing_due {
                    Some(when) => tokio::time::sleep_until(when).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                notification = self.events.next() => match notification {
                    Some(n) => {
                        let handled = self.handle_burst(n).await;
                        let now = Instant::now();
                        let streaming = handled > 1
                            || last_burst.is_some_and(|at| now - at < STREAM_GAP);
                        last_burst = Some(now);
                        stream_since = if streaming { stream_since.or(Some(now)) } else { None };
                        let batch = stream_since.is_some_and(|since| now - since >= STREAM_BATCH_AFTER)
                            && self.events.effective_rcvbuf >= STREAM_BATCH_MIN_RCVBUF;
                        if batch {
                            // Under a lasting stream (an `ip -batch`, container churn)
                            // waking for every notification costs more than the
                            // notification: let the kernel queue a batch, then take it
                            // in one go. A lone removal never waits here, nor does the
                            // start of a burst, whose removals the engine batches into
                            // calls while the first one's send-time check is in flight.
                            self.events.park();
                            tokio::time::sleep(STREAM_BATCH_DELAY).await;
                        }
                    }
                    None => self.reconnect().await,
                },
                command = self.commands.recv() => match command {
                    Some(WatcherRequest::Resync) => self.resync(Reason::Requested).await,
                    // The handle is gone; it aborts us on drop anyway.
                    None => break,
                },
                _ = periodic.tick() => self.resync(Reason::Periodic).await,
                () = routing_timer => {
                    self.routing_due = None;
                    self.emit(HostEvent::RoutingChanged);
                }
            }
        }
        tracing::debug!("host watcher stopped");
    }

    /// Handles `first` and whatever is already queued behind it (bounded), before
    /// going back to the reactor: an `ip -batch`, a flushed link or a container
    /// teardown arrives as a burst, and one poll per message costs more than the
    /// message. Removals of one burst by the same netlink port share one `/proc` read
    /// of the remover's name: the sender was alive when the burst was queued, and its
    /// pid cannot be reused within the burst (pids are not reused until the pid space
    /// wraps), so the name is the same one a read per message would find.
    async fn handle_burst(&mut self, first: Notification) -> usize {
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(notification) = next.take() {
            if matches!(notification, Notification::Overrun) {
                self.counters.overruns.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("netlink event socket overran; resyncing");
                self.resync(Reason::Overrun).await;
                break;
            }
            self.handle(notification);
            handled += 1;
            if handled == BURST {
                break;
            }
            match self.events.try_next() {
                Ok(queued) => next = queued,
                Err(()) => {
                    self.reconnect().await;
                    break;
                }
            }
        }
        self.burst_remover = None;
        handled
    }

    /// The remover for a removal sent from `port_id`, read once per burst and port.
    fn remover_in_burst(&mut self, port_id: u32) -> Remover {
        match &self.burst_remover {
            Some(known) if known.port_id == port_id => known.clone(),
            _ => {
                let found = self.identifier.identify(port_id);
                self.burst_remover = Some(found.clone());
                found
            }
        }
    }

    fn emit(&self, event: HostEvent) {
        tracing::trace!(?event, "host event");
        if self.tx.send(event).is_ok() {
            self.counters.events.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Applies one notification to the mirror and emits an event when something we
    /// track changed.
    fn handle(&mut self, notification: Notification) {
        self.counters.notifications.fetch_add(1, Ordering::Relaxed);
        match notification {
            Notification::NewLink(link) => {
                // The kernel sends RTM_NEWLINK for many things we do not track
                // (statistics, IPv6 settings, carrier flaps that end where they began).
                if self.mirror.links.get(&link.index) != Some(&link) {
                    let event = HostEvent::LinkChanged(link);
                    self.mirror.apply(&event);
                    self.emit(event);
                }
            }
            Notification::DelLink(index) => {
                let known = self.mirror.links.contains_key(&index)
                    || self.mirror.addrs_on(index).next().is_some();
                if known {
                    let event = HostEvent::LinkRemoved { index };
                    self.mirror.apply(&event);
                    self.emit(event);
                }
            }
            Notification::NewAddr { addr, port_id } => {
                // Learn who adds addresses to ENI links while they are alive:
                // keepalived adds and removes its VIPs through a second netlink socket
                // (a port that is not a pid) and may have exited (a shutdown) by the
                // time its removal is read; what was read here identifies it then.
                if port_id != 0
                    && self
                        .mirror
                        .links
                        .get(&addr.link)
                        .is_some_and(Link::is_physical)
                {
                    self.identifier.learn(port_id);
                }
                // A repeated RTM_NEWADDR (lifetime or flag updates) is only news when
                // the address is new or its `secondary` flag changed (a promotion).
                if self.mirror.addrs.get(&addr.key()) != Some(&addr) {
                    let event = HostEvent::AddrAdded(addr);
                    self.mirror.apply(&event);
                    self.emit(event);
                }
            }
            Notification::DelAddr { addr, port_id } => {
                if self.mirror.addrs.contains_key(&addr.key()) {
                    // Only a physical link can carry an ENI; removals elsewhere (bridges,
                    // VLAN and macvlan children) never lead to a release, so their remover
                    // is not worth a /proc read.
                    let physical = self
                        .mirror
                        .links
                        .get(&addr.link)
                        .is_some_and(Link::is_physical);
                    let remover = if addr.ip.is_ipv6() {
                        // The kernel sends every IPv6 address notification with port 0,
                        // whoever asked (docs/design.md, "IPv6"): neither the kernel nor
                        // a process can be named, so the removal is unknown and held.
                        Remover::unknown(0, IPV6_NO_SENDER.into())
                    } else if physical {
                        self.remover_in_burst(port_id)
                    } else if port_id == 0 {
                        Remover::kernel()
                    } else {
                        Remover::unknown(port_id, "not resolved: not a physical link".into())
                    };
                    let event = HostEvent::AddrRemoved {
                        addr,
                        remover: Some(remover),
                    };
                    self.mirror.apply(&event);
                    self.emit(event);
                }
            }
            Notification::Routing => {
                if self.routing_due.is_none() {
                    self.routing_due = Some(Instant::now() + self.opts.routing_debounce);
                }
            }
            Notification::Overrun => {
                // Only reached from `drain`; the caller resyncs after draining.
                self.counters.overruns.fetch_add(1, Ordering::Relaxed);
            }
            Notification::Ignored => {}
        }
    }

    /// Handles every notification already queued. They are genuine (the kernel sent
    /// them, in order), so they keep their removers; the dump that follows fixes what
    /// was lost. Extra overrun markers in the queue are counted and folded into the
    /// resync that follows.
    fn drain(&mut self) -> bool {
        loop {
            match self.events.try_next() {
                Ok(Some(n)) => self.handle(n),
                Ok(None) => return true,
                Err(()) => return false,
            }
        }
    }

    /// Re-dumps, emits the differences against the mirror, then `Resynced`. Reopens
    /// the sockets (and resyncs again) if the event stream turns out to have ended.
    async fn resync(&mut self, reason: Reason) {
        let started = Instant::now();
        if !self.resync_once(reason).await {
            self.reconnect().await;
        }
        if matches!(reason, Reason::Overrun) {
            // The time from the overrun to a mirror that is whole again (dump, diff,
            // events emitted); tests read it to bound the recovery.
            tracing::info!(
                resync_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                overruns = self.counters.overruns.load(Ordering::Relaxed),
                "resync after overrun complete"
            );
        }
    }

    /// One resync; returns whether the event stream is still alive.
    async fn resync_once(&mut self, reason: Reason) -> bool {
        let alive = self.drain();
        let Some(fresh) = self.dump_with_retry().await else {
            return alive;
        };
        let differences = self.mirror.diff(&fresh);
        let drift = u64::try_from(differences.len()).unwrap_or(u64::MAX);
        self.counters.drift.fetch_add(drift, Ordering::Relaxed);
        if drift > 0 {
            match reason {
                Reason::Periodic | Reason::Requested => {
                    tracing::warn!(
                        ?reason,
                        drift,
                        "resync found drift: the mirror missed changes"
                    )
                }
                Reason::Overrun | Reason::Reconnect => {
                    tracing::info!(?reason, drift, "resync found lost changes")
                }
            }
        }
        for event in differences {
            self.mirror.apply(&event);
            self.emit(event);
        }
        self.mirror = fresh;
        if matches!(reason, Reason::Overrun | Reason::Reconnect) {
            // Rule and route notifications may have been lost too.
            self.routing_due = None;
            self.emit(HostEvent::RoutingChanged);
        }
        self.counters.resyncs.fetch_add(1, Ordering::Relaxed);
        self.emit(HostEvent::Resynced);
        alive
    }

    /// From `reconnect_min`, doubling up to `reconnect_max`, without jitter: one host's
    /// kernel is not a fleet's shared service.
    fn reconnect_backoff(&self) -> Backoff {
        Backoff {
            base: self.opts.reconnect_min,
            cap: self.opts.reconnect_max,
        }
    }

    /// Dumps, retrying with backoff (and a fresh request socket) until it works or the
    /// engine is gone.
    async fn dump_with_retry(&mut self) -> Option<HostView> {
        let backoff = self.reconnect_backoff();
        let mut attempt = 0;
        loop {
            match dump(&self.requests).await {
                Ok(view) => return Some(view),
                Err(error) => {
                    let delay = backoff.ceiling(attempt);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(%error, ?delay, "dump failed; retrying");
                    tokio::time::sleep(delay).await;
                    if self.tx.is_closed() {
                        return None;
                    }
                    match Netlink::connect() {
                        Ok(nl) => self.requests = nl,
                        Err(error) => tracing::warn!(%error, "reopening request socket failed"),
                    }
                }
            }
        }
    }

    /// The event stream ended: reopen both sockets with backoff, then resync; again if
    /// the new stream dies during that resync.
    async fn reconnect(&mut self) {
        let backoff = self.reconnect_backoff();
        let mut attempt = 0;
        loop {
            let delay = backoff.ceiling(attempt);
            attempt = attempt.saturating_add(1);
            tracing::warn!(?delay, "netlink event stream ended; reconnecting");
            tokio::time::sleep(delay).await;
            if self.tx.is_closed() {
                return;
            }
            let opened = EventSocket::open(self.opts.recv_buffer)
                .and_then(|events| Ok((events, Netlink::connect()?)));
            match opened {
                Ok((events, requests)) => {
                    self.events = events;
                    self.requests = requests;
                    self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    if self.resync_once(Reason::Reconnect).await {
                        return;
                    }
                }
                Err(error) => tracing::warn!(%error, "reopening netlink sockets failed"),
            }
        }
    }
}
