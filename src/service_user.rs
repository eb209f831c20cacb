//! What the service will be able to do as its own user, checked by `check-config`.
//!
//! The packaged unit runs `enisync run` as the system user `enisync`, not as root. A
//! config that root can read (say, one copied in as root with mode 0600) passes every
//! syntactic check and then cannot be opened by the service. So `check-config`, run as
//! root, tries the two things the service must do, as that user, for real: open the
//! config for reading, and write into `state.dir`. It asks the kernel (a child process
//! that drops to the user's uid, gid and groups), rather than re-deriving permission
//! rules from mode bits, so ACLs and every parent directory count as they will at run
//! time.
//!
//! The same place applies the state directory's safety rule (`state_dir::check`, which
//! `run` applies at start too): owned by root or the service user, not group- or
//! world-writable, no links in it. That rule runs whoever calls `check-config`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The user of the packaged unit (`User=` in `systemd/enisync.service`).
pub const DEFAULT_SERVICE_USER: &str = "enisync";

/// Why the service user could not do what the service must.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("no user {0:?} on this host")]
    NoSuchUser(String),
    #[error(
        "the service user {user} cannot read {path}: give it to the user (chown {user} {path}) \
         or make it readable by its group"
    )]
    ConfigUnreadable { user: String, path: String },
    #[error(
        "`state.dir`: the service user {user} cannot write {path}: chown -R {user} {path} \
         (or let systemd create it with StateDirectory=)"
    )]
    StateDirUnwritable { user: String, path: String },
    #[error("checking as {user}: {reason}")]
    Probe { user: String, reason: String },
    #[error(transparent)]
    StateDir(#[from] crate::state_dir::StateDirError),
}

/// What was checked, for the `check-config` report.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// Both checks passed as this user.
    AsUser(String),
    /// Not checked: not root, or the default user does not exist here.
    Skipped(String),
}

/// Checks that `user` can read `config` and write `state_dir` (or, when `state_dir`
/// does not exist yet, create it: the nearest existing parent must be writable, unless
/// `state_dir` is the unit's `StateDirectory=`, which systemd creates for the user).
/// `explicit`: the user was named on the command line, so a missing user is an error.
pub fn check(
    user: &str,
    explicit: bool,
    config: &Path,
    state_dir: &Path,
) -> Result<Checked, AccessError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let found = lookup(user);
    if root && explicit && found.is_none() {
        return Err(AccessError::NoSuchUser(user.into()));
    }
    // Whoever runs check-config: the directory `run` would refuse is refused here too,
    // with root and the service user (when it exists) as the accepted owners.
    let owners = crate::state_dir::Owners::with_service_user(found.map(|(uid, _)| uid));
    crate::state_dir::check(state_dir, &owners)?;
    if !root {
        return Ok(Checked::Skipped(
            "not run as root: the service user's access was not checked".into(),
        ));
    }
    let Some((uid, gid)) = found else {
        return Ok(Checked::Skipped(format!(
            "no user {user:?} on this host: the service user's access was not checked"
        )));
    };
    let target = match std::fs::metadata(state_dir) {
        Ok(_) => Some(state_dir.to_path_buf()),
        Err(_) if state_dir == Path::new(crate::state_dir::DEFAULT_STATE_DIR) => None,
        Err(_) => state_dir
            .ancestors()
            .find(|p| p.exists())
            .map(Path::to_path_buf),
    };
    let probe = Probe {
        user: CString::new(user).map_err(|_| AccessError::NoSuchUser(user.into()))?,
        uid,
        gid,
        config: path_cstring(config),
        writable: target.as_deref().map(path_cstring),
    };
    match probe.run() {
        Ok(0) => Ok(Checked::AsUser(user.into())),
        Ok(CONFIG_UNREADABLE) => Err(AccessError::ConfigUnreadable {
            user: user.into(),
            path: config.display().to_string(),
        }),
        Ok(DIR_UNWRITABLE) => Err(AccessError::StateDirUnwritable {
            user: user.into(),
            path: target.unwrap_or_default().display().to_string(),
        }),
        Ok(_) => Err(AccessError::Probe {
            user: user.into(),
            reason: "could not switch to the user".into(),
        }),
        Err(e) => Err(AccessError::Probe {
            user: user.into(),
            reason: e.to_string(),
        }),
    }
}

const CONFIG_UNREADABLE: i32 = 10;
const DIR_UNWRITABLE: i32 = 11;
const NO_SWITCH: i32 = 12;

fn path_cstring(path: &Path) -> CString {
    // A path with a NUL byte cannot exist; an empty CString fails the check honestly.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// The uid and primary gid of `user`.
fn lookup(user: &str) -> Option<(libc::uid_t, libc::gid_t)> {
    let name = CString::new(user).ok()?;
    let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `name` is a NUL-terminated string,
    // `pwd` and `result` are ours, and `buf` is writable for `buf.len()` bytes.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            pwd.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &raw mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: getpwnam_r returned 0 with a non-null result, so it filled `pwd`.
    let pwd = unsafe { pwd.assume_init() };
    Some((pwd.pw_uid, pwd.pw_gid))
}

/// The child that drops privileges and tries.
struct Probe {
    user: CString,
    uid: libc::uid_t,
    gid: libc::gid_t,
    config: CString,
    writable: Option<CString>,
}

impl Probe {
    /// Runs the checks in a forked child; its exit status is the verdict.
    fn run(&self) -> std::io::Result<i32> {
        // SAFETY: check-config is single-threaded (no runtime is started for it), so
        // the child may call anything; it only makes the system calls below and exits
        // with `_exit`, running no destructor of the parent's state.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            let code = self.in_child();
            // SAFETY: ends the child at once, as after fork it must.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child we just forked; `status` is ours.
        if unsafe { libc::waitpid(pid, &raw mut status, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::WIFEXITED(status) {
            Ok(libc::WEXITSTATUS(status))
        } else {
            Err(std::io::Error::other(
                "the check process did not exit normally",
            ))
        }
    }

    fn in_child(&self) -> i32 {
        // SAFETY: plain system calls on values we own; order matters (groups and gid
        // while still root, uid last).
        unsafe {
            if libc::initgroups(self.user.as_ptr(), self.gid) != 0
                || libc::setgid(self.gid) != 0
                || libc::setuid(self.uid) != 0
            {
                return NO_SWITCH;
            }
            let fd = libc::open(self.config.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return CONFIG_UNREADABLE;
            }
            libc::close(fd);
            if let Some(dir) = &self.writable
                && libc::access(dir.as_ptr(), libc::W_OK | libc::X_OK) != 0
            {
                return DIR_UNWRITABLE;
            }
        }
        0
    }
}
