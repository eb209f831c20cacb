//! The watchdog heartbeat: a `timerfd` the engine loop waits on next to its other inputs.
//!
//! Why not a tokio timer: tokio's timer wheel files a deadline seconds away in a coarse
//! level and wakes the process once per level on the way down (measured: three wakeups
//! per 10 s ping, see BENCHMARKS.md). The kernel's timer wakes us once, when it fires.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::io::AsRawFd;
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A stream that yields once per `period`, driven by a `CLOCK_MONOTONIC` timerfd.
/// Missed periods (a stopped process) collapse into one beat. An error reading the
/// timer ends the stream, which stops the pings: systemd then restarts us, which beats
/// pinging from a loop that no longer knows when to.
pub fn beats(period: Duration) -> io::Result<BoxStream<'static, ()>> {
    let file = periodic_timerfd(period)?;
    // SAFETY: the `File` owns the timerfd; it stays open and is the same descriptor for
    // as long as the `AsyncFd` owns the `File`, and nothing else closes it.
    let timer = unsafe { AsyncFd::register_with_interest(file, Interest::READABLE) }
        .map_err(io::Error::from)?;
    Ok(stream::unfold(timer, |timer| async move {
        match expirations(&timer).await {
            Ok(_) => Some(((), timer)),
            Err(e) => {
                tracing::error!(error = %e, "watchdog timer failed; pings stop");
                None
            }
        }
    })
    .boxed())
}

fn periodic_timerfd(period: Duration) -> io::Result<File> {
    // SAFETY: timerfd_create takes no pointers; the result is checked before use.
    let raw = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just created and nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // A zero it_value would disarm the timer; a period under a millisecond is a bug.
    let period = period.max(Duration::from_millis(1));
    let spec = libc::timespec {
        tv_sec: libc::time_t::try_from(period.as_secs()).unwrap_or(libc::time_t::MAX),
        // Under 10^9, so it fits a c_long on every target we ship (64-bit Linux).
        tv_nsec: period.subsec_nanos().into(),
    };
    let value = libc::itimerspec {
        it_interval: spec,
        it_value: spec,
    };
    // SAFETY: `fd` is a valid timerfd; `value` lives across the call; a null old_value
    // is allowed.
    let rc = unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &value, std::ptr::null_mut()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(File::from(fd))
}

/// Waits for the timer and returns how many periods expired since the last read.
async fn expirations(timer: &AsyncFd<File>) -> io::Result<u64> {
    loop {
        let mut ready = timer.readable().await?;
        // A timerfd read is exactly 8 bytes: the expiration count.
        match ready.try_io(|fd| {
            let mut count = [0u8; 8];
            fd.get_ref().read_exact(&mut count)?;
            Ok(u64::from_ne_bytes(count))
        }) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn beats_once_per_period() {
        let mut beats = beats(Duration::from_millis(20)).expect("timerfd");
        let start = std::time::Instant::now();
        for _ in 0..3 {
            beats.next().await.expect("a beat");
        }
        let took = start.elapsed();
        // Three periods of 20 ms cannot be over in less than 60 ms.
        assert!(took >= Duration::from_millis(60), "{took:?}");
    }
}
