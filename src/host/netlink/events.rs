//! The event socket: a multicast-only rtnetlink socket the watcher reads itself, in
//! bursts, and the parsing of its datagrams into [`Notification`]s.

use super::*;

/// One message from the event socket, already reduced to what the watcher needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// RTM_NEWLINK.
    NewLink(Link),
    /// RTM_DELLINK (deleted, or moved to another namespace).
    DelLink(u32),
    /// RTM_NEWADDR for IPv4, with the port id of the socket that asked (0: the kernel).
    NewAddr { addr: Addr, port_id: u32 },
    /// RTM_DELADDR for IPv4, with the netlink header's port id: the port of the socket
    /// that asked for the change, 0 when the kernel did it on its own.
    DelAddr { addr: Addr, port_id: u32 },
    /// A rule or route was added or deleted.
    Routing,
    /// The kernel dropped notifications (ENOBUFS): the mirror must be rebuilt.
    Overrun,
    /// Anything else (IPv6 addresses, unparsable attributes, other message types).
    Ignored,
}

/// A multicast-only socket subscribed to link, IPv4 address, IPv4 rule and IPv4 route
/// notifications, read by the watcher itself.
///
/// Not an rtnetlink `Connection`: that is a task of its own that wakes, reads and
/// forwards through a channel for every datagram, and the watcher wakes again to take
/// it. Reading here lets the watcher take a whole burst in one wakeup (`try_next`
/// drains what the kernel has queued without going back to the reactor).
pub struct EventSocket {
    socket: Registration,
    /// One datagram at a time; the kernel never splits a message across datagrams.
    buf: Vec<u8>,
    /// Notifications parsed from the last datagram and not yet handed out.
    queued: VecDeque<Notification>,
    /// The receive buffer the kernel reports after our request (it doubles the value
    /// and floors it).
    pub effective_rcvbuf: usize,
    /// Datagrams dropped because another process, not the kernel, sent them.
    forged: u64,
}

/// The socket, registered with the reactor or parked outside it. Parked, arriving
/// notifications queue in the kernel without waking the process: tokio registers
/// edge-triggered, and every datagram would otherwise end the reactor's wait.
pub(super) enum Registration {
    Live(AsyncFd<Socket>),
    Parked(Socket),
    /// Only while switching between the two, or after a failed re-registration.
    Gone,
}

impl std::fmt::Debug for EventSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSocket")
            .field("effective_rcvbuf", &self.effective_rcvbuf)
            .finish_non_exhaustive()
    }
}

/// Large enough for any single rtnetlink notification (a link message with every
/// attribute stays well under a page; the kernel sizes them to fit `NLMSG_GOODSIZE`).
pub(super) const DATAGRAM_CAPACITY: usize = 64 * 1024;

/// Registers `socket` with the current runtime's reactor for reading.
pub(super) fn register(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: the `Socket` owns its descriptor and closes it only when dropped; while
    // the `AsyncFd` owns the `Socket`, `as_raw_fd` returns that same open descriptor.
    unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }.map_err(io::Error::from)
}

impl EventSocket {
    /// Subscribes (binds the groups) before anything is sent on the socket and sets the
    /// receive buffer. Needs a tokio runtime (the socket registers with its reactor).
    ///
    /// `NETLINK_NO_ENOBUFS` is deliberately left off: losing notifications must show
    /// up as an overrun, since the watcher keeps a mirror that would silently drift.
    pub fn open(rcvbuf: usize) -> Result<Self, HostError> {
        let socket_error = |op: &'static str| move |source| HostError::Socket { op, source };
        let mut socket = Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
            .map_err(socket_error("open event socket"))?;
        socket
            .set_non_blocking(true)
            .map_err(socket_error("set the event socket non-blocking"))?;
        let groups = [
            libc::RTNLGRP_LINK,
            libc::RTNLGRP_IPV4_IFADDR,
            libc::RTNLGRP_IPV4_ROUTE,
            libc::RTNLGRP_IPV4_RULE,
            libc::RTNLGRP_IPV6_IFADDR,
            libc::RTNLGRP_IPV6_RULE,
        ];
        let mask = groups.iter().fold(0u32, |mask, g| mask | 1 << (g - 1));
        socket
            .bind(&SocketAddr::new(0, mask))
            .map_err(socket_error("subscribe event socket"))?;
        set_rcvbuf(socket.as_raw_fd(), rcvbuf)?;
        let effective_rcvbuf = socket
            .get_rx_buf_sz()
            .map_err(socket_error("read SO_RCVBUF"))?;
        let socket = register(socket).map_err(socket_error("register event socket"))?;
        Ok(Self {
            socket: Registration::Live(socket),
            buf: Vec::with_capacity(DATAGRAM_CAPACITY),
            queued: VecDeque::new(),
            effective_rcvbuf,
            forged: 0,
        })
    }

    /// Takes the socket out of the reactor until the next `next`: notifications keep
    /// queuing in the kernel (and overrun there, as ever, if the buffer fills), but do
    /// not wake the process one by one.
    pub fn park(&mut self) {
        self.socket = match std::mem::replace(&mut self.socket, Registration::Gone) {
            Registration::Live(fd) => Registration::Parked(fd.into_inner()),
            other => other,
        };
    }

    /// Puts a parked socket back into the reactor; false if that failed.
    fn unpark(&mut self) -> bool {
        self.socket = match std::mem::replace(&mut self.socket, Registration::Gone) {
            Registration::Parked(socket) => match register(socket) {
                Ok(fd) => Registration::Live(fd),
                Err(e) => {
                    tracing::error!(error = %e, "netlink event socket could not be re-registered");
                    return false;
                }
            },
            other => other,
        };
        true
    }

    /// The next notification; `None` when the socket failed for good.
    pub async fn next(&mut self) -> Option<Notification> {
        loop {
            if let Some(n) = self.queued.pop_front() {
                return Some(n);
            }
            if matches!(self.socket, Registration::Parked(_)) {
                if !self.unpark() {
                    return None;
                }
                // What queued while parked is there now: take it without a trip
                // through the reactor.
                match self.try_next() {
                    Ok(Some(n)) => return Some(n),
                    Ok(None) => {}
                    Err(()) => return None,
                }
            }
            let Registration::Live(fd) = &self.socket else {
                return None;
            };
            self.buf.clear();
            let received = loop {
                let mut ready = match fd.readable().await {
                    Ok(ready) => ready,
                    Err(e) => break Err(e),
                };
                match ready.try_io(|fd| fd.get_ref().recv_from(&mut self.buf, 0)) {
                    Ok(result) => break result.map(|(_, from)| from),
                    Err(_would_block) => continue,
                }
            };
            if !self.take(received) {
                return None;
            }
        }
    }

    /// A notification already queued, without waiting. `Ok(None)` when nothing is
    /// queued right now, `Err(())` when the socket failed for good.
    #[allow(clippy::result_unit_err)]
    pub fn try_next(&mut self) -> Result<Option<Notification>, ()> {
        loop {
            if let Some(n) = self.queued.pop_front() {
                return Ok(Some(n));
            }
            self.buf.clear();
            let socket = match &self.socket {
                Registration::Live(fd) => fd.get_ref(),
                Registration::Parked(socket) => socket,
                Registration::Gone => return Err(()),
            };
            // The socket is non-blocking: WouldBlock means the kernel has nothing queued.
            // Reading around the reactor leaves its readiness flag set at worst, which
            // only costs `next` one WouldBlock before it waits.
            let received = socket.recv_from(&mut self.buf, 0).map(|(_, from)| from);
            match received {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                other => {
                    if !self.take(other) {
                        return Err(());
                    }
                }
            }
        }
    }

    /// Parses what one receive produced into `queued`; false when the socket failed.
    fn take(&mut self, received: io::Result<SocketAddr>) -> bool {
        match received {
            Ok(from) if !from_kernel(&from) => {
                // Any process with CAP_NET_ADMIN can unicast a forged RTM_DELADDR to our
                // port (or multicast one to the groups); acting on it would release an IP
                // that is still on the host. Only the kernel speaks with source port 0.
                // The header's nlmsg_pid is not the test: on a real notification it
                // carries the port of the process that asked for the change.
                self.forged = self.forged.saturating_add(1);
                if self.forged.is_power_of_two() {
                    tracing::warn!(
                        sender_port = from.port_number(),
                        dropped = self.forged,
                        "netlink datagram not sent by the kernel ignored"
                    );
                }
                true
            }
            Ok(_) => {
                parse_datagram(&self.buf, &mut self.queued);
                true
            }
            // The kernel dropped notifications: the receive buffer was full.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                self.queued.push_back(Notification::Overrun);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(e) => {
                tracing::error!(error = %e, "netlink event socket failed");
                false
            }
        }
    }
}

/// Whether a datagram's source address (from `recvfrom`, filled in by the kernel, which a
/// sender cannot forge) is the kernel itself: port 0. A user-space sender always has a
/// port of its own.
pub(super) fn from_kernel(from: &SocketAddr) -> bool {
    from.port_number() == 0
}

/// Appends the notifications of one datagram to `out`. Something unparsable (a kernel
/// newer than our parser, a truncated read) becomes an overrun: the watcher then
/// resyncs, so whatever the message said reaches the mirror through the dump.
pub(crate) fn parse_datagram(mut rest: &[u8], out: &mut VecDeque<Notification>) {
    while !rest.is_empty() {
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest) {
            Ok(msg) => {
                // `deserialize` checked the length against the buffer; 0 cannot parse.
                let len = (msg.header.length as usize).max(1);
                out.push_back(notification_from_msg(msg));
                // Messages are 4-byte aligned within a datagram.
                rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
            }
            Err(e) => {
                tracing::warn!(error = %e, "unparsable netlink notification; resyncing");
                out.push_back(Notification::Overrun);
                return;
            }
        }
    }
}

/// Sets the socket's receive buffer: `SO_RCVBUFFORCE` first (needs CAP_NET_ADMIN, may
/// exceed `net.core.rmem_max`), `SO_RCVBUF` (capped at `rmem_max`) when refused.
pub(super) fn set_rcvbuf(fd: libc::c_int, size: usize) -> Result<(), HostError> {
    let value = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .unwrap_or(libc::socklen_t::MAX);
    let set = |option: libc::c_int| -> io::Result<()> {
        // SAFETY: `fd` is the open netlink socket owned by the connection we hold;
        // `value` lives for the whole call and `len` is exactly its size, so the kernel
        // reads a valid c_int and nothing else.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&value).cast::<libc::c_void>(),
                len,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    match set(libc::SO_RCVBUFFORCE) {
        Ok(()) => Ok(()),
        Err(forced) => {
            tracing::debug!(error = %forced, "SO_RCVBUFFORCE refused, using SO_RCVBUF");
            set(libc::SO_RCVBUF).map_err(|source| HostError::Socket {
                op: "set SO_RCVBUF",
                source,
            })
        }
    }
}
