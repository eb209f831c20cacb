//! Wall time as the cloud sees it: this host's clock plus the offset the cloud's `Date`
//! headers show. Wall time is only for values the cloud compares with its own clock
//! (request timestamps, the expiry it states for temporary keys); every timer, grace and
//! expiry of enisync itself runs on tokio's monotonic clock (docs/design.md, "Time").
//!
//! Its own module so that the transport, which records `Date` headers, and the credential
//! provider, which uses the metadata client over that transport, do not import each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// This host's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// Unix seconds now.
    pub fn now_unix(&self) -> i64 {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX)
    }
}

/// The wall clock under a [`ServerClock`]: the system's, or in unit tests one they set.
#[derive(Debug)]
enum Wall {
    System(Arc<SystemClock>),
    #[cfg(test)]
    Fixed(AtomicI64),
}

impl Wall {
    fn now_unix(&self) -> i64 {
        match self {
            Self::System(clock) => clock.now_unix(),
            #[cfg(test)]
            Self::Fixed(now) => now.load(Ordering::SeqCst),
        }
    }
}

/// This host's wall clock plus a signed offset in seconds: what we believe the server's
/// time is. Request timestamps read this, and so does the conversion of a key's expiry
/// (cloud time) into a deadline on the monotonic clock, so when the server says our clock
/// is skewed, setting the offset fixes both.
///
/// The transport records the `Date` header of every answer ([`ServerClock::observe_server_date`]);
/// when the cloud rejects a request timestamp (`AuthFailure.SignatureExpire`, legacy 4500),
/// the client calls [`ServerClock::correct_from_server`], which adopts the offset the last
/// `Date` showed. The offset is never changed on a `Date` alone: a healthy clock is left
/// alone, and one answer with a strange `Date` cannot move it.
#[derive(Debug)]
pub struct ServerClock {
    base: Wall,
    offset: AtomicI64,
    /// Server time − base time, from the last `Date` header seen; `i64::MIN`: none yet.
    observed: AtomicI64,
}

/// A correction of the [`ServerClock`], for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockCorrection {
    /// The offset used until now (seconds).
    pub old_offset: i64,
    /// The offset from now on: the server's clock minus this host's.
    pub new_offset: i64,
}

impl ServerClock {
    pub fn new(system: Arc<SystemClock>) -> Self {
        Self::on(Wall::System(system))
    }

    /// A server clock over a wall clock the test sets ([`ServerClock::advance_wall`]).
    #[cfg(test)]
    pub(crate) fn fixed(now_unix: i64) -> Self {
        Self::on(Wall::Fixed(AtomicI64::new(now_unix)))
    }

    /// Moves the wall clock of [`ServerClock::fixed`] forward.
    #[cfg(test)]
    pub(crate) fn advance_wall(&self, secs: i64) {
        if let Wall::Fixed(now) = &self.base {
            now.fetch_add(secs, Ordering::SeqCst);
        }
    }

    fn on(base: Wall) -> Self {
        Self {
            base,
            offset: AtomicI64::new(0),
            observed: AtomicI64::new(i64::MIN),
        }
    }

    /// Records the time an answer's `Date` header gave (Unix seconds).
    pub fn observe_server_date(&self, server_unix: i64) {
        let diff = server_unix.saturating_sub(self.base.now_unix());
        // i64::MIN means "none": an absurd date cannot reach it after saturating_sub of a
        // positive clock, but keep the marker unambiguous anyway.
        self.observed
            .store(diff.max(i64::MIN + 1), Ordering::SeqCst);
    }

    /// The server-minus-base offset the last `Date` header showed, if any.
    pub fn observed_offset(&self) -> Option<i64> {
        let v = self.observed.load(Ordering::SeqCst);
        (v != i64::MIN).then_some(v)
    }

    /// Adopts the offset the last `Date` header showed. `None` when no `Date` was seen or
    /// the offset already matches it (so the rejection was not our clock's fault).
    pub fn correct_from_server(&self) -> Option<ClockCorrection> {
        let new_offset = self.observed_offset()?;
        let old_offset = self.offset.swap(new_offset, Ordering::SeqCst);
        (old_offset != new_offset).then_some(ClockCorrection {
            old_offset,
            new_offset,
        })
    }

    /// Sets the offset added to the base clock (server time − our time).
    pub fn set_offset(&self, secs: i64) {
        self.offset.store(secs, Ordering::SeqCst);
    }

    pub fn offset(&self) -> i64 {
        self.offset.load(Ordering::SeqCst)
    }

    /// What we believe the server's clock reads now (Unix seconds).
    pub fn now_unix(&self) -> i64 {
        self.base.now_unix().saturating_add(self.offset())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_clock_applies_the_offset() {
        let clk = ServerClock::fixed(100);
        clk.set_offset(-30);
        assert_eq!(clk.now_unix(), 70);
        clk.advance_wall(10);
        assert_eq!(clk.now_unix(), 80);
    }
}
