//! Resync and reconnect: a re-dump diffed against the mirror (after an overrun, on
//! request, periodically), and reopening the sockets when the event stream ended.

use super::*;

impl Watcher {
    /// Handles every notification already queued. They are genuine (the kernel sent
    /// them, in order), so they keep their removers; the dump that follows fixes what
    /// was lost. Extra overrun markers in the queue are counted and folded into the
    /// resync that follows.
    pub(super) fn drain(&mut self) -> bool {
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
    pub(super) async fn resync(&mut self, reason: Reason) {
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
    pub(super) async fn resync_once(&mut self, reason: Reason) -> bool {
        let lost_before = Identifier::now_ns();
        let alive = self.drain();
        if matches!(reason, Reason::Overrun | Reason::Reconnect) {
            // Notifications were lost: an IPv6 deletion request made before now may
            // have had its removal's notification among them (docs/design.md, "IPv6").
            self.identifier.forget_ipv6_before(lost_before);
        }
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
    pub(super) fn reconnect_backoff(&self) -> Backoff {
        Backoff {
            base: self.opts.reconnect_min,
            cap: self.opts.reconnect_max,
        }
    }

    /// Dumps, retrying with backoff (and a fresh request socket) until it works or the
    /// engine is gone.
    pub(super) async fn dump_with_retry(&mut self) -> Option<HostView> {
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
    pub(super) async fn reconnect(&mut self) {
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
