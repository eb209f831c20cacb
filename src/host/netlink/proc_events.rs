//! The kernel's process events connector (`NETLINK_CONNECTOR`, `CONFIG_PROC_EVENTS`):
//! the socket and the parsing of its events, for remover identification (`host::procs`).

use super::events::{DATAGRAM_CAPACITY, set_rcvbuf};
use super::*;

/// `NETLINK_CONNECTOR`'s multicast group and id for process events (`linux/connector.h`).
pub(super) const CN_IDX_PROC: u32 = 1;
pub(super) const CN_VAL_PROC: u32 = 1;
/// `enum proc_cn_mcast_op` (`linux/cn_proc.h`).
pub(super) const PROC_CN_MCAST_LISTEN: u32 = 1;
/// `enum what` of `struct proc_event`.
pub(super) const PROC_EVENT_FORK: u32 = 0x0000_0001;
pub(super) const PROC_EVENT_EXEC: u32 = 0x0000_0002;
pub(super) const PROC_EVENT_EXIT: u32 = 0x8000_0000;
/// `struct nlmsghdr` and `struct cn_msg` sizes: the event starts after both.
pub(super) const NLMSG_HDR_LEN: usize = 16;
pub(super) const CN_MSG_LEN: usize = 20;

/// One process event, reduced to what remover identification needs. Thread events
/// (a `clone` that shares the thread group) are left out by the parser: netlink ports
/// belong to processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEvent {
    /// A new process `child` (its thread group id) forked by `parent` (tgid).
    Fork { parent: u32, child: u32, at_ns: u64 },
    /// `pid` executed a new program (its `comm` changed).
    Exec { pid: u32, at_ns: u64 },
    /// The process `pid` ended (its group leader exited). `parent` is the tgid of its
    /// parent at that moment (`real_parent`; `parent_tgid` of `struct exit_proc_event`,
    /// absent from kernels older than 4.18, whose event is shorter).
    Exit {
        pid: u32,
        parent: Option<u32>,
        at_ns: u64,
    },
    /// The kernel dropped events (ENOBUFS): processes may have come and gone unseen.
    Overrun,
}

/// A socket subscribed to the kernel's process events (`CONFIG_PROC_EVENTS`), read
/// with blocking calls from a thread of its own (see `host::procs`).
///
/// The connector answers only in the initial network namespace: elsewhere the
/// subscription is refused with `ECONNREFUSED`. [`ProcEventSocket::open`] tries the
/// caller's namespace first and then, if it may (root in a test's namespace), opens
/// the socket from a short-lived thread moved into another process's network namespace
/// (PID 1's, then our ancestors'), until one accepts the subscription, which only the
/// initial namespace does; a socket stays in the namespace it was created in.
pub struct ProcEventSocket {
    socket: Socket,
    buf: Vec<u8>,
    /// Where the subscription was made: "this network namespace" or the namespace file
    /// of the process whose (initial) network namespace was used.
    pub namespace: String,
}

impl std::fmt::Debug for ProcEventSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcEventSocket")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl ProcEventSocket {
    /// Subscribes in this network namespace, else in the first of `elsewhere`
    /// (`/proc/<pid>/ns/net` files) that accepts. The error names every failure.
    pub fn open(rcvbuf: usize, elsewhere: &[std::path::PathBuf]) -> io::Result<Self> {
        let (socket, namespace) = open_in_a_namespace(
            Self::open_here(rcvbuf),
            elsewhere,
            "enisync-cn-open",
            move || Self::open_here(rcvbuf),
        )?;
        Ok(Self {
            namespace,
            ..socket
        })
    }

    fn open_here(rcvbuf: usize) -> io::Result<Self> {
        let mut socket = Socket::new(rtnetlink::sys::protocols::NETLINK_CONNECTOR)?;
        socket.bind(&SocketAddr::new(0, CN_IDX_PROC))?;
        // Process events come in bursts (a fork storm); losing some only costs
        // identification of the processes concerned, which then count as unknown.
        if let Err(e) = set_rcvbuf(socket.as_raw_fd(), rcvbuf) {
            tracing::debug!(error = %e, "process events: receive buffer left as it is");
        }
        let mut msg = Vec::with_capacity(NLMSG_HDR_LEN + CN_MSG_LEN + 4);
        let total = u32::try_from(NLMSG_HDR_LEN + CN_MSG_LEN + 4).unwrap_or(u32::MAX);
        msg.extend_from_slice(&total.to_ne_bytes());
        msg.extend_from_slice(&u16::try_from(libc::NLMSG_DONE).unwrap_or(3).to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&std::process::id().to_ne_bytes());
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
        msg.extend_from_slice(&4u16.to_ne_bytes()); // len of the data
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
        socket.send_to(&msg, &SocketAddr::new(0, 0), 0)?;
        Ok(Self {
            socket,
            buf: Vec::with_capacity(DATAGRAM_CAPACITY),
            namespace: String::new(),
        })
    }

    /// Blocks until the next datagram and returns its events. Datagrams not sent by
    /// the kernel (source port 0) are dropped: only the kernel reports processes.
    pub fn recv(&mut self) -> io::Result<Vec<ProcEvent>> {
        loop {
            self.buf.clear();
            match self.socket.recv_from(&mut self.buf, 0) {
                Ok((_, from)) if from.port_number() != 0 => continue,
                Ok(_) => return Ok(parse_proc_events(&self.buf)),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(vec![ProcEvent::Overrun]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Where a socket of the initial network namespace is opened: `here` is the attempt in
/// this namespace; when it failed, `open` runs on a short-lived thread moved into each
/// of `elsewhere` (`/proc/<pid>/ns/net` files) in turn until one accepts. Returns the
/// socket and where it was opened; the error names every failure.
pub(super) fn open_in_a_namespace<T: Send + 'static>(
    here: io::Result<T>,
    elsewhere: &[std::path::PathBuf],
    thread_name: &str,
    open: impl Fn() -> io::Result<T> + Send + Clone + 'static,
) -> io::Result<(T, String)> {
    let here = match here {
        Ok(socket) => return Ok((socket, "this network namespace".into())),
        Err(e) => e,
    };
    let mut failures = vec![format!("{here} (in this network namespace)")];
    for ns in elsewhere {
        let path = ns.clone();
        let open = open.clone();
        let there = std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || {
                enter_netns(&path)?;
                open()
            })?
            .join()
            .map_err(|_| io::Error::other(format!("the thread {thread_name} panicked")))?;
        match there {
            Ok(socket) => return Ok((socket, ns.display().to_string())),
            Err(e) => failures.push(format!("{e} (in {})", ns.display())),
        }
    }
    Err(io::Error::new(here.kind(), failures.join("; ")))
}

/// Moves the calling thread into the network namespace of `ns` (a `/proc/<pid>/ns/net`).
fn enter_netns(ns: &std::path::Path) -> io::Result<()> {
    let ns = std::fs::File::open(ns)?;
    // SAFETY: `ns` is an open namespace file for the whole call; setns(2) only changes
    // the network namespace of the calling thread, a thread of our own that ends right
    // after creating one socket.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(super) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(super) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The process events in one connector datagram (one or more netlink messages, each a
/// `cn_msg` carrying a `struct proc_event`). Anything short or unknown is skipped.
pub fn parse_proc_events(datagram: &[u8]) -> Vec<ProcEvent> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDR_LEN {
        let Some(len) = u32_at(rest, 0).and_then(|l| usize::try_from(l).ok()) else {
            break;
        };
        if len < NLMSG_HDR_LEN || len > rest.len() {
            break;
        }
        let msg_type = u16::from_ne_bytes([rest[4], rest[5]]);
        if i32::from(msg_type) == libc::NLMSG_OVERRUN {
            out.push(ProcEvent::Overrun);
        } else if let Some(event) = rest
            .get(NLMSG_HDR_LEN + CN_MSG_LEN..len)
            .and_then(proc_event)
        {
            out.push(event);
        }
        let aligned = (len + 3) & !3;
        rest = rest.get(aligned..).unwrap_or_default();
    }
    out
}

/// One `struct proc_event`: what (u32), cpu (u32), timestamp_ns (u64), then the event.
pub(super) fn proc_event(ev: &[u8]) -> Option<ProcEvent> {
    let what = u32_at(ev, 0)?;
    let at_ns = u64_at(ev, 8)?;
    match what {
        PROC_EVENT_FORK => {
            // parent_pid, parent_tgid, child_pid, child_tgid
            let (parent, child_pid, child) = (u32_at(ev, 20)?, u32_at(ev, 24)?, u32_at(ev, 28)?);
            (child_pid == child).then_some(ProcEvent::Fork {
                parent,
                child,
                at_ns,
            })
        }
        PROC_EVENT_EXEC => {
            // The thread that called exec becomes the group leader: the tgid is the
            // process.
            Some(ProcEvent::Exec {
                pid: u32_at(ev, 20)?,
                at_ns,
            })
        }
        PROC_EVENT_EXIT => {
            // process_pid, process_tgid, exit_code, exit_signal, parent_pid, parent_tgid
            let (pid, tgid) = (u32_at(ev, 16)?, u32_at(ev, 20)?);
            let parent = u32_at(ev, 36).filter(|&p| p != 0);
            (pid == tgid).then_some(ProcEvent::Exit { pid, parent, at_ns })
        }
        _ => None,
    }
}
