//! The kernel's taskstats exit records (generic netlink family "TASKSTATS",
//! `CONFIG_TASKSTATS`): a socket registered for every possible CPU receives one
//! `TASKSTATS_CMD_NEW` per exiting task, with the task's `comm`, parent, start and
//! elapsed time. The connector (`events.rs`) says *that* a process exited; this says
//! *what it was called* when it did, which the connector's reader could not read in
//! time for a remover that exec'd and exited within a millisecond.
//!
//! This file is only the socket and the parser: open and register
//! ([`TaskStatsSocket::open`]), read without blocking ([`TaskStatsSocket::recv`]: parsed
//! [`TaskStatsRecord`]s, an overrun, or nothing), wait. Which record to believe for which
//! process is remover identification's business (`host/procs/exits.rs`).
//!
//! Facts this file relies on, checked on the kernel it was written on (6.18, with
//! `linux/taskstats.h` of 6.1, version 13):
//! - in another network namespace the family answers and the registration succeeds,
//!   but no record ever arrives (the kernel sends them to our port in the initial
//!   namespace): [`TaskStatsSocket::open`] checks that a thread's exit is reported
//!   (within half a second), and otherwise opens the socket from a thread moved into
//!   the initial namespace, as for the connector (`proc_events.rs`);
//! - registering without `CAP_NET_ADMIN` fails with `EPERM`, from another user
//!   namespace with `EPERM`, from another PID namespace with `EINVAL`; a non-root user
//!   holding only `CAP_NET_ADMIN` (the packaged unit) registers and receives records;
//! - records are sent on the CPU the task exits on (hence the mask of every possible
//!   CPU) and queued on our socket in the order they were sent; a full socket drops
//!   them (`ENOBUFS` on the next read);
//! - `struct taskstats` offsets (from `offsetof` against the header): `version` 0 (u16),
//!   `ac_flag` 8, `ac_comm` 80 (32 bytes), `ac_uid` 120, `ac_pid` 128, `ac_ppid` 132,
//!   `ac_btime` 136 (u32), `ac_etime` 144 (u64, µs), `ac_btime64` 344 (v10+),
//!   `ac_tgid` 368 (v12+). Newer versions only append; older ones are shorter. Every
//!   field is read by offset within what the attribute actually holds.
//!
//! The generic netlink part (resolve the family, one request, acknowledgements) is a
//! few dozen lines here rather than a new crate (`netlink-packet-generic` is not in the
//! tree): the record itself is a C struct that no crate parses for us, so it is read by
//! offset either way.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

/// `struct nlmsghdr`, `struct genlmsghdr` and `struct nlattr` sizes.
const NLMSG_HDR_LEN: usize = 16;
const GENL_HDR_LEN: usize = 4;
const NLA_HDR_LEN: usize = 4;
/// Generic netlink's controller (`linux/genetlink.h`).
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
/// `linux/taskstats.h`.
const TASKSTATS_GENL_NAME: &str = "TASKSTATS";
const TASKSTATS_CMD_GET: u8 = 1;
const TASKSTATS_CMD_NEW: u8 = 2;
const TASKSTATS_TYPE_PID: u16 = 1;
const TASKSTATS_TYPE_STATS: u16 = 3;
const TASKSTATS_TYPE_AGGR_PID: u16 = 4;
const TASKSTATS_CMD_ATTR_REGISTER_CPUMASK: u16 = 3;
/// `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER` share the type's top bits.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Offsets in `struct taskstats` (see the module comment).
const OFF_VERSION: usize = 0;
const OFF_FLAG: usize = 8;
const OFF_COMM: usize = 80;
const COMM_LEN: usize = 32;
const OFF_UID: usize = 120;
const OFF_PID: usize = 128;
const OFF_PPID: usize = 132;
const OFF_BTIME: usize = 136;
const OFF_ETIME: usize = 144;
const OFF_TGID: usize = 368;
/// `ac_comm` and the basic accounting fields came with version 2; `ac_tgid` with 12.
const MIN_VERSION: u16 = 2;
const TGID_VERSION: u16 = 12;

/// One exiting task, as its record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStatsRecord {
    pub version: u16,
    /// `ac_pid`: the task (thread) id, in the initial PID namespace.
    pub pid: u32,
    /// `ac_tgid`: its process; `None` before version 12, where a thread's record
    /// cannot be told from a process's.
    pub tgid: Option<u32>,
    pub comm: String,
    /// `ac_ppid`: its parent's tgid when it exited (0 if none).
    pub ppid: u32,
    pub uid: u32,
    /// `ac_flag` (`linux/acct.h`; `AFORK`: forked, never exec'd).
    pub flags: u8,
    /// `ac_btime`: start, seconds since 1970 (only a coarse check).
    pub btime: u32,
    /// `ac_etime`: microseconds from its start to its exit.
    pub etime_us: u64,
}

impl TaskStatsRecord {
    /// Whether this is a process's exit as opposed to another thread's: its pid is its
    /// tgid (a netlink port that is a pid is a tgid). Unknown before version 12.
    pub fn is_process(&self) -> Option<bool> {
        self.tgid.map(|t| t == self.pid)
    }
}

/// What one read of the socket gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Records(Vec<TaskStatsRecord>),
    /// The kernel dropped records (`ENOBUFS`).
    Overrun,
    /// Nothing queued right now (the socket is read without blocking).
    Empty,
}

/// A socket registered for taskstats exit records.
pub struct TaskStatsSocket {
    socket: Socket,
    family: u16,
    buf: Vec<u8>,
    /// "this network namespace" or the namespace file used.
    pub namespace: String,
}

impl std::fmt::Debug for TaskStatsSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskStatsSocket")
            .field("family", &self.family)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl TaskStatsSocket {
    /// Registers in this network namespace (unless `try_here` is false: known not to
    /// be the initial one), else in the first of `elsewhere` that accepts (see the
    /// module comment). The error names every failure.
    pub fn open(
        rcvbuf: usize,
        try_here: bool,
        elsewhere: &[std::path::PathBuf],
    ) -> io::Result<Self> {
        let here = if try_here {
            Self::open_here(rcvbuf)
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "not tried: the process events connector refused this network namespace",
            ))
        };
        let (socket, namespace) = super::proc_events::open_in_a_namespace(
            here,
            elsewhere,
            "enisync-ts-open",
            move || Self::open_here(rcvbuf),
        )?;
        Ok(Self {
            namespace,
            ..socket
        })
    }

    fn open_here(rcvbuf: usize) -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        // Never blocks: answers are waited for with a deadline, records with `poll`.
        socket.set_non_blocking(true)?;
        let mut this = Self {
            socket,
            family: 0,
            buf: Vec::with_capacity(64 * 1024),
            namespace: String::new(),
        };
        this.family = this.resolve_family().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("resolving the {TASKSTATS_GENL_NAME} family: {e}"),
            )
        })?;
        // Exits come in bursts (a fork storm); a full socket drops records, which only
        // costs the names of the processes concerned (see `Received::Overrun`).
        set_rcvbuf(&this.socket, rcvbuf);
        let mask = possible_cpus();
        let mut attr = mask.into_bytes();
        attr.push(0);
        this.request(
            this.family,
            TASKSTATS_CMD_GET,
            TASKSTATS_CMD_ATTR_REGISTER_CPUMASK,
            &attr,
        )?;
        this.ack()
            .map_err(|e| io::Error::new(e.kind(), format!("registering for exits: {e}")))?;
        this.self_check()?;
        Ok(this)
    }

    /// Outside the initial network namespace the family answers and the registration
    /// succeeds, but the kernel sends records to the initial namespace's socket of our
    /// port, never to us. So: a thread of ours exits, and its record must arrive.
    fn self_check(&mut self) -> io::Result<()> {
        let tid = std::thread::Builder::new()
            .name("enisync-tscheck".into())
            .spawn(|| {
                // The raw system call, not glibc's `gettid()` wrapper: that appeared in
                // glibc 2.30, above the packages' glibc floor (2.28), and would not link.
                // SAFETY: gettid(2) takes no arguments and has no preconditions.
                let tid = unsafe { libc::syscall(libc::SYS_gettid) };
                u32::try_from(tid).unwrap_or(0)
            })?
            .join()
            .map_err(|_| io::Error::other("the check thread panicked"))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        loop {
            match self.recv()? {
                Received::Records(records) if records.iter().any(|r| r.pid == tid) => {
                    return Ok(());
                }
                Received::Records(_) | Received::Overrun => {}
                Received::Empty => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(
                            io::ErrorKind::NotConnected,
                            "registered, but no exit record arrives (not the initial network namespace?)",
                        ));
                    }
                    let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
                    self.wait_readable(None, ms)?;
                }
            }
        }
    }

    fn request(&self, family: u16, cmd: u8, attr_type: u16, data: &[u8]) -> io::Result<()> {
        let attr_len = NLA_HDR_LEN + data.len();
        let total = NLMSG_HDR_LEN + GENL_HDR_LEN + align4(attr_len);
        let too_long = || io::Error::new(io::ErrorKind::InvalidInput, "attribute too long");
        let mut msg = Vec::with_capacity(total);
        msg.extend_from_slice(&u32::try_from(total).map_err(|_| too_long())?.to_ne_bytes());
        msg.extend_from_slice(&family.to_ne_bytes());
        let flags = u16::try_from(libc::NLM_F_REQUEST | libc::NLM_F_ACK).unwrap_or(5);
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel fills ours
        msg.extend_from_slice(&[cmd, 1, 0, 0]); // cmd, version, reserved
        msg.extend_from_slice(
            &u16::try_from(attr_len)
                .map_err(|_| too_long())?
                .to_ne_bytes(),
        );
        msg.extend_from_slice(&attr_type.to_ne_bytes());
        msg.extend_from_slice(data);
        msg.resize(total, 0);
        self.socket.send_to(&msg, &SocketAddr::new(0, 0), 0)?;
        Ok(())
    }

    /// Reads replies (for up to two seconds) until `want` returns something, or an
    /// error message ends it.
    fn reply<T>(&mut self, mut want: impl FnMut(u16, &[u8]) -> Option<T>) -> io::Result<T> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            self.buf.clear();
            let from = match self.socket.recv_from(&mut self.buf, 0) {
                Ok((_, from)) => from,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
                    }
                    let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
                    self.wait_readable(None, ms)?;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if from.port_number() != 0 {
                continue;
            }
            for (kind, body) in messages(&self.buf) {
                if i32::from(kind) == libc::NLMSG_ERROR {
                    let code = body
                        .get(..4)
                        .and_then(|b| b.try_into().ok())
                        .map_or(-libc::EPROTO, i32::from_ne_bytes);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(code.saturating_neg()));
                    }
                }
                if let Some(found) = want(kind, body) {
                    return Ok(found);
                }
            }
        }
    }

    /// The family's id, from the controller's answer; read up to its acknowledgement
    /// (the two may share a datagram).
    fn resolve_family(&mut self) -> io::Result<u16> {
        let mut name = TASKSTATS_GENL_NAME.as_bytes().to_vec();
        name.push(0);
        self.request(
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            CTRL_ATTR_FAMILY_NAME,
            &name,
        )?;
        let mut family = None;
        self.reply(|kind, body| {
            if kind == GENL_ID_CTRL {
                family = attrs(body.get(GENL_HDR_LEN..).unwrap_or_default())
                    .find(|(t, _)| *t == CTRL_ATTR_FAMILY_ID)
                    .and_then(|(_, v)| Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?)));
            }
            (i32::from(kind) == libc::NLMSG_ERROR).then_some(())
        })?;
        family.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no family id"))
    }

    /// Waits for the acknowledgement (an error message with code 0); records that
    /// arrive before it are dropped (nobody can have asked about them yet).
    fn ack(&mut self) -> io::Result<()> {
        self.reply(|kind, _| (i32::from(kind) == libc::NLMSG_ERROR).then_some(()))
    }

    /// One read without blocking. Messages not sent by the kernel (source port 0) are
    /// dropped: only the kernel reports exits.
    pub fn recv(&mut self) -> io::Result<Received> {
        loop {
            self.buf.clear();
            match self.socket.recv_from(&mut self.buf, 0) {
                Ok((_, from)) if from.port_number() != 0 => {}
                Ok(_) => return Ok(Received::Records(parse_taskstats(&self.buf, self.family))),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(Received::Overrun);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Received::Empty),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Blocks until something is queued, `wake` (an eventfd) is written, or
    /// `timeout_ms` passes; a write to `wake` is consumed.
    pub fn wait_readable(&self, wake: Option<RawFd>, timeout_ms: i32) -> io::Result<()> {
        let mut fds = [
            libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                // A negative descriptor is ignored by poll(2).
                fd: wake.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is an array of two valid, writable pollfds for the whole call,
        // and the count passed is its length; the descriptors are the socket we own
        // and the caller's open eventfd (or -1, which poll skips).
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        if let Some(fd) = wake.filter(|_| fds[1].revents & libc::POLLIN != 0) {
            let mut count = [0u8; 8];
            // SAFETY: `fd` is the caller's open eventfd and `count` 8 writable bytes,
            // the size an eventfd read takes; it only resets the counter.
            let _ = unsafe { libc::read(fd, count.as_mut_ptr().cast(), count.len()) };
        }
        Ok(())
    }
}

/// `SO_RCVBUFFORCE` (we hold `CAP_NET_ADMIN`), else `SO_RCVBUF` up to `rmem_max`.
fn set_rcvbuf(socket: &Socket, size: usize) {
    let value = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .unwrap_or(libc::socklen_t::MAX);
    // SAFETY: the descriptor is the open socket we hold; `value` lives for the whole
    // call and `len` is exactly its size, so the kernel reads one valid c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::from_ref(&value).cast::<libc::c_void>(),
            len,
        )
    };
    if rc != 0
        && let Err(e) = socket.set_rx_buf_sz(size)
    {
        tracing::debug!(error = %e, "taskstats: receive buffer left as it is");
    }
}

/// The kernel's possible CPUs as a list (`0-1`): the registration refuses a mask with
/// a CPU that cannot exist, and records come only from the CPUs registered.
fn possible_cpus() -> String {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let n = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            format!("0-{}", n.saturating_sub(1))
        })
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// The netlink messages of one datagram: (type, body after the header). Stops at the
/// first message whose length does not fit.
fn messages(datagram: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        let len = usize::try_from(u32::from_ne_bytes(rest.get(..4)?.try_into().ok()?)).ok()?;
        if len < NLMSG_HDR_LEN || len > rest.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(rest.get(4..6)?.try_into().ok()?);
        let body = rest.get(NLMSG_HDR_LEN..len)?;
        rest = rest.get(align4(len)..).unwrap_or_default();
        Some((kind, body))
    })
}

/// The attributes in `data`: (type without flags, payload). Stops at the first one
/// whose length does not fit.
fn attrs(data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(rest.get(..2)?.try_into().ok()?));
        if len < NLA_HDR_LEN || len > rest.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(rest.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let payload = rest.get(NLA_HDR_LEN..len)?;
        rest = rest.get(align4(len)..).unwrap_or_default();
        Some((kind, payload))
    })
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The per-task exit records in one datagram of family `family`: each
/// `TASKSTATS_TYPE_AGGR_PID` holding a `TASKSTATS_TYPE_PID` and a
/// `TASKSTATS_TYPE_STATS`. The per-group aggregate (`AGGR_TGID`) carries no name and
/// is skipped. Anything short, unknown or inconsistent is skipped; nothing panics.
pub fn parse_taskstats(datagram: &[u8], family: u16) -> Vec<TaskStatsRecord> {
    let mut out = Vec::new();
    for (kind, body) in messages(datagram) {
        if kind != family || body.first() != Some(&TASKSTATS_CMD_NEW) {
            continue;
        }
        for (t, aggr) in attrs(body.get(GENL_HDR_LEN..).unwrap_or_default()) {
            if t != TASKSTATS_TYPE_AGGR_PID {
                continue;
            }
            let mut pid = None;
            let mut stats = None;
            for (t, v) in attrs(aggr) {
                match t {
                    TASKSTATS_TYPE_PID => pid = u32_at(v, 0),
                    TASKSTATS_TYPE_STATS => stats = Some(v),
                    _ => {}
                }
            }
            if let (Some(pid), Some(stats)) = (pid, stats)
                && let Some(record) = parse_stats(stats).filter(|r| r.pid == pid)
            {
                out.push(record);
            }
        }
    }
    out
}

/// One `struct taskstats`, by offset, within the bytes the attribute holds.
fn parse_stats(s: &[u8]) -> Option<TaskStatsRecord> {
    let version = u16::from_ne_bytes(s.get(OFF_VERSION..OFF_VERSION + 2)?.try_into().ok()?);
    if version < MIN_VERSION {
        return None;
    }
    let comm = s.get(OFF_COMM..OFF_COMM + COMM_LEN)?;
    let comm = &comm[..comm.iter().position(|&b| b == 0).unwrap_or(comm.len())];
    Some(TaskStatsRecord {
        version,
        pid: u32_at(s, OFF_PID)?,
        // A record that claims version 12 but is too short for it: no tgid, as before
        // 12 (such a record is then only used with the connector's, see `exits.rs`).
        tgid: (version >= TGID_VERSION)
            .then(|| u32_at(s, OFF_TGID))
            .flatten(),
        comm: String::from_utf8_lossy(comm).into_owned(),
        ppid: u32_at(s, OFF_PPID)?,
        uid: u32_at(s, OFF_UID)?,
        flags: *s.get(OFF_FLAG)?,
        btime: u32_at(s, OFF_BTIME)?,
        etime_us: u64_at(s, OFF_ETIME)?,
    })
}

/// Builds one `TASKSTATS_CMD_NEW` datagram as the kernel would (for tests and fuzzing).
#[cfg(test)]
pub fn encode_for_test(family: u16, record: &TaskStatsRecord, struct_len: usize) -> Vec<u8> {
    let mut stats = vec![0u8; struct_len];
    let mut put = |at: usize, bytes: &[u8]| {
        if let Some(dst) = stats.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    put(OFF_VERSION, &record.version.to_ne_bytes());
    put(OFF_FLAG, &[record.flags]);
    let mut comm = record.comm.as_bytes().to_vec();
    comm.resize(COMM_LEN, 0);
    put(OFF_COMM, &comm);
    put(OFF_UID, &record.uid.to_ne_bytes());
    put(OFF_PID, &record.pid.to_ne_bytes());
    put(OFF_PPID, &record.ppid.to_ne_bytes());
    put(OFF_BTIME, &record.btime.to_ne_bytes());
    put(OFF_ETIME, &record.etime_us.to_ne_bytes());
    if let Some(tgid) = record.tgid {
        put(OFF_TGID, &tgid.to_ne_bytes());
    }
    let attr = |kind: u16, payload: &[u8]| {
        let mut a = Vec::new();
        let len = u16::try_from(NLA_HDR_LEN + payload.len()).unwrap_or(u16::MAX);
        a.extend_from_slice(&len.to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(align4(a.len()), 0);
        a
    };
    let mut inner = attr(TASKSTATS_TYPE_PID, &record.pid.to_ne_bytes());
    inner.extend(attr(TASKSTATS_TYPE_STATS, &stats));
    let aggr = attr(TASKSTATS_TYPE_AGGR_PID | 0x8000, &inner);
    let total = NLMSG_HDR_LEN + GENL_HDR_LEN + aggr.len();
    let mut msg = Vec::new();
    msg.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_ne_bytes());
    msg.extend_from_slice(&family.to_ne_bytes());
    msg.extend_from_slice(&[0; 10]);
    msg.extend_from_slice(&[TASKSTATS_CMD_NEW, 1, 0, 0]);
    msg.extend(aggr);
    msg
}
