//! Runs a test body in a network namespace of its own, against the real kernel.
//!
//! `unshare(CLONE_NEWNET)` moves only the calling thread, so each test gets a fresh
//! thread, unshares it, and builds a current-thread tokio runtime on it. Processes the
//! thread starts (`ip`, `sysctl`) and threads it spawns inherit the namespace. Needs
//! CAP_SYS_ADMIN: a test that cannot get its namespace panics, it never skips.

#![allow(dead_code)] // each test file uses a different subset

use std::future::Future;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use enisync::host::HostEvent;
use tokio::sync::mpsc::UnboundedReceiver;

/// Runs `body` on a current-thread runtime in a new network namespace with `lo` up.
pub fn in_netns<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        unshare_net();
        ip("link set lo up");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(body());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

fn unshare_net() {
    // SAFETY: unshare only changes the calling thread's namespace membership; no
    // memory is shared with the kernel.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET) failed: {} (these tests need root)",
        std::io::Error::last_os_error()
    );
}

/// Another network namespace, held by a parked thread, to move links into.
pub struct OtherNetns {
    /// The thread id, usable as `ip link set X netns <tid>`.
    pub tid: i32,
    release: mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OtherNetns {
    pub fn new() -> Self {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (release, wait) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            unshare_net();
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            tid_tx.send(tid).expect("send tid");
            let _ = wait.recv();
        });
        let tid = tid_rx.recv().expect("netns thread tid");
        Self {
            tid,
            release,
            thread: Some(thread),
        }
    }
}

impl Drop for OtherNetns {
    fn drop(&mut self) {
        let _ = self.release.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `ip <args>` (split on whitespace); panics with its stderr on failure.
pub fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip <args>` and returns the pid it ran as (its netlink port id).
pub fn ip_pid(args: &str) -> u32 {
    let mut child = Command::new("ip")
        .args(args.split_whitespace())
        .spawn()
        .expect("spawn ip");
    let pid = child.id();
    assert!(child.wait().expect("wait ip").success(), "ip {args}");
    pid
}

/// Runs `ip <args>` and returns its stdout.
pub fn ip_out(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip -force -batch -` with `lines` on stdin. Blocks the calling thread, which
/// is how the overrun test keeps the runtime from reading its socket.
pub fn ip_batch(lines: &str) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn ip -batch");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(lines.as_bytes())
        .expect("write batch");
    assert!(child.wait().expect("wait ip").success(), "ip -batch failed");
}

/// Writes a sysctl in this namespace.
pub fn sysctl(key: &str, value: &str) {
    let status = Command::new("sysctl")
        .args(["-q", "-w", &format!("{key}={value}")])
        .status()
        .expect("run sysctl");
    assert!(status.success(), "sysctl {key}={value}");
}

/// The ifindex of a link in this namespace.
pub fn ifindex(name: &str) -> u32 {
    let out = ip_out(&format!("-o link show dev {name}"));
    out.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex for {name} in {out:?}"))
}

/// A veth pair `a`/`b`, both up.
pub fn veth(a: &str, b: &str) {
    ip(&format!("link add {a} type veth peer name {b}"));
    ip(&format!("link set {a} up"));
    ip(&format!("link set {b} up"));
}

/// Events until none arrives for `quiet`, without `RoutingChanged` (noise for most
/// tests: every address brings routes).
pub async fn events_until_quiet(
    rx: &mut UnboundedReceiver<HostEvent>,
    quiet: Duration,
) -> Vec<HostEvent> {
    let mut out = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(quiet, rx.recv()).await {
        if event != HostEvent::RoutingChanged {
            out.push(event);
        }
    }
    out
}

/// The next event other than `RoutingChanged`, within `limit`.
pub async fn next_event(
    rx: &mut UnboundedReceiver<HostEvent>,
    limit: Duration,
) -> Option<HostEvent> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(HostEvent::RoutingChanged)) => continue,
            Ok(event) => return event,
            Err(_) => return None,
        }
    }
}
