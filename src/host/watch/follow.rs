//! Following the event socket: the watcher's loop (commands, timers, notifications
//! read in bursts), and one notification applied to the mirror as [`HostEvent`]s.

use std::net::IpAddr;

use super::*;

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
/// ~1 KiB of buffer each) with a tenfold margin. The default buffer is 4 MiB
/// ([`DEFAULT_RECV_BUFFER`]).
const STREAM_BATCH_MIN_RCVBUF: usize = 1024 * 1024;

/// How often the sockets of known adders are resolved ahead of use when claims are on
/// (see `procs::Identifier::warm`): one read of `/proc` per this, bounded.
const WARM_INTERVAL: Duration = Duration::from_secs(30);

/// How long after a known adder's exec or fork its sockets are resolved: it opens them
/// while it starts.
const WARM_AFTER_START: Duration = Duration::from_millis(500);

impl Watcher {
    pub(super) async fn run(mut self) {
        let period = self.opts.resync_interval;
        let mut periodic = tokio::time::interval_at(Instant::now() + period, period);
        periodic.set_missed_tick_behavior(MissedTickBehavior::Delay);

        // When the last burst ended, to tell a stream of notifications from a lone one,
        // and when the current stream began.
        let mut last_burst: Option<Instant> = None;
        let mut stream_since: Option<Instant> = None;
        // Known adders' sockets, resolved ahead of their first addition (see
        // `procs::Identifier::warm`): now, periodically, and shortly after one starts.
        let warming = self.identifier.warms();
        let adder_starts = self.identifier.warm_events();
        let mut warm_tick = tokio::time::interval_at(Instant::now() + WARM_INTERVAL, WARM_INTERVAL);
        warm_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut warm_due: Option<Instant> = None;
        self.identifier.warm();
        while !self.tx.is_closed() {
            let warm_timer = async move {
                match warm_due {
                    Some(when) => tokio::time::sleep_until(when).await,
                    None => std::future::pending().await,
                }
            };
            let adder_started = async {
                match &adder_starts {
                    Some(events) => events.watched_started().await,
                    None => std::future::pending().await,
                }
            };
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
                _ = periodic.tick() => {
                    self.resync(Reason::Periodic).await;
                    self.identifier.warm();
                }
                _ = warm_tick.tick(), if warming => {
                    self.identifier.warm();
                }
                () = adder_started => {
                    // Its sockets are opened after its exec or fork.
                    warm_due.get_or_insert(Instant::now() + WARM_AFTER_START);
                }
                () = warm_timer => {
                    warm_due = None;
                    self.identifier.warm();
                }
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
    pub(super) async fn handle_burst(&mut self, first: Notification) -> usize {
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
    pub(super) fn remover_in_burst(&mut self, port_id: u32) -> Remover {
        match &self.burst_remover {
            Some(known) if known.port_id == port_id => known.clone(),
            _ => {
                let found = self.identifier.identify(port_id);
                self.burst_remover = Some(found.clone());
                found
            }
        }
    }

    /// Whether `ip` is an IPv4 address of a claim CIDR, whose adder the engine needs
    /// (see [`HostEvent::AddrAdder`]).
    fn claims_cover(&self, ip: std::net::IpAddr) -> bool {
        let std::net::IpAddr::V4(v4) = ip else {
            return false;
        };
        self.opts.adder_cidrs.iter().any(|c| c.contains(v4))
    }

    pub(super) fn emit(&self, event: HostEvent) {
        tracing::trace!(?event, "host event");
        if self.tx.send(event).is_ok() {
            self.counters.events.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Applies one notification to the mirror and emits an event when something we
    /// track changed.
    pub(super) fn handle(&mut self, notification: Notification) {
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
                let physical = self
                    .mirror
                    .links
                    .get(&addr.link)
                    .is_some_and(Link::is_physical);
                let new = !self.mirror.addrs.contains_key(&addr.key());
                // Who added a new address of a claim CIDR, read once: the same read
                // learns the port (below) for its later removal.
                let adder = (new && physical && self.claims_cover(addr.ip))
                    .then(|| self.identifier.identify(port_id));
                // Learn who adds addresses to ENI links while they are alive:
                // keepalived adds and removes its VIPs through a second netlink socket
                // (a port that is not a pid) and may have exited (a shutdown) by the
                // time its removal is read; what was read here identifies it then.
                if adder.is_none() && port_id != 0 && physical {
                    self.identifier.learn(port_id);
                }
                // A repeated RTM_NEWADDR (lifetime or flag updates) is only news when
                // the address is new or its `secondary` flag changed (a promotion).
                if self.mirror.addrs.get(&addr.key()) != Some(&addr) {
                    let event = HostEvent::AddrAdded(addr);
                    self.mirror.apply(&event);
                    self.emit(event);
                    if let Some(adder) = adder {
                        self.emit(HostEvent::AddrAdder {
                            ip: addr.ip,
                            link: addr.link,
                            adder,
                        });
                    }
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
                    let remover = if let IpAddr::V6(ip) = addr.ip {
                        // The kernel sends every IPv6 address notification with port 0,
                        // whoever asked (docs/design.md, "IPv6"): the deletion probe's
                        // records name the requester, or the kernel when none asked;
                        // without the probe the removal is unknown and held.
                        self.identifier.identify_ipv6(addr.link, ip, physical)
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
}
