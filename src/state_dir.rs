//! The state directory's safety rule, and how files in it are opened.
//!
//! enisync runs with the power to return IPs to the VPC, and its journal says which IPs
//! it is about to release. Whoever can write `state.dir` can plant a record (a release of
//! their choosing after a restart), or a symbolic link that makes enisync, often root,
//! truncate or overwrite a file elsewhere. So:
//!
//! - `run` and `check-config` refuse a `state.dir`, or any entry in it, that is not
//!   owned by root or the service's own user, that is group- or world-writable, or (for
//!   an entry) that is a symbolic link; the error names the path and the reason
//!   ([`check`], one function for both commands);
//! - every file in it is opened without following a symbolic link (`O_NOFOLLOW`), and a
//!   file that is written aside and renamed into place is created with `O_EXCL`, never
//!   truncated through a link that someone left at its name ([`open_nofollow`],
//!   [`create_fresh`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `state.dir`'s default, the packaged unit's `StateDirectory=` (the config's default
/// is this one).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/enisync";

/// Why a state directory is refused. Each names the path and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error(
        "`state.dir`: {path} is owned by uid {uid}, not by root or the service user ({owners}): \
         chown it to one of them"
    )]
    Owner {
        path: PathBuf,
        uid: u32,
        owners: String,
    },
    #[error(
        "`state.dir`: {path} is {what}-writable (mode {mode:04o}): only its owner may write it \
         (chmod go-w {path})"
    )]
    Writable {
        path: PathBuf,
        what: &'static str,
        mode: u32,
    },
    #[error(
        "`state.dir`: {path} is a symbolic link; enisync never follows links in its state \
         directory: remove it"
    )]
    Symlink { path: PathBuf },
    #[error("`state.dir`: {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("`state.dir`: {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The uids that may own `state.dir` and its files: root and the service's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owners(Vec<u32>);

impl Owners {
    /// Root and the user this process runs as (`run`: under the unit, the service user).
    pub fn this_process() -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        Self::of([0, euid])
    }

    /// Root, this process's user, and `service_uid` when the service user exists
    /// (`check-config`, usually run as root for a service that runs as its user).
    pub fn with_service_user(service_uid: Option<u32>) -> Self {
        let mut owners = Self::this_process();
        if let Some(uid) = service_uid {
            owners = Self::of(owners.0.into_iter().chain([uid]));
        }
        owners
    }

    fn of(uids: impl IntoIterator<Item = u32>) -> Self {
        let mut v: Vec<u32> = uids.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        Self(v)
    }

    fn allows(&self, uid: u32) -> bool {
        self.0.contains(&uid)
    }

    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|u| format!("uid {u}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Checks `dir` and every entry in it against the rule (module docs). A `dir` that does
/// not exist passes: `run` creates it (mode 0700), and so does systemd's
/// `StateDirectory=`. The directory itself may be reached through a link (an operator
/// may move it to another disk); its target is what is checked.
pub fn check(dir: &Path, owners: &Owners) -> Result<(), StateDirError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StateDirError::Io { path, source }
    };
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir)(e)),
    };
    if !meta.is_dir() {
        return Err(StateDirError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    check_one(dir, &meta, owners)?;
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if meta.file_type().is_symlink() {
            return Err(StateDirError::Symlink { path });
        }
        check_one(&path, &meta, owners)?;
    }
    Ok(())
}

fn check_one(path: &Path, meta: &std::fs::Metadata, owners: &Owners) -> Result<(), StateDirError> {
    if !owners.allows(meta.uid()) {
        return Err(StateDirError::Owner {
            path: path.to_owned(),
            uid: meta.uid(),
            owners: owners.describe(),
        });
    }
    let mode = meta.mode() & 0o7777;
    let what = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (_, true) => Some("world"),
        (true, false) => Some("group"),
        (false, false) => None,
    };
    if let Some(what) = what {
        return Err(StateDirError::Writable {
            path: path.to_owned(),
            what,
            mode,
        });
    }
    Ok(())
}

/// Creates `dir` (and its parents) if missing; the directory itself gets mode 0700, so
/// it passes [`check`] whatever the umask.
pub fn create(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Options that never follow a symbolic link at the last component (`ELOOP` instead),
/// and create files with mode 0600.
pub fn nofollow() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.custom_flags(libc::O_NOFOLLOW).mode(0o600);
    options
}

/// Opens an existing file for reading without following a link.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    nofollow().read(true).open(path)
}

/// Creates `path` anew for writing: whatever is at that name (a stale file from a crash,
/// or a link planted there) is unlinked first (unlinking a link removes the link, never
/// its target), and the new file is created with `O_EXCL`, which fails rather than
/// follow a link that reappears in between. Nothing is ever truncated.
pub fn create_fresh(path: &Path) -> io::Result<File> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    nofollow().write(true).create_new(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("enisync-sd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        create(&dir).expect("dir");
        dir
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_writable_dir_or_entry_or_a_link_is_refused_naming_the_path() {
        let dir = temp_dir("rule");
        let owners = Owners::this_process();
        check(&dir, &owners).expect("a fresh 0700 dir passes");
        assert_eq!(std::fs::metadata(&dir).expect("meta").mode() & 0o777, 0o700);

        chmod(&dir, 0o770);
        let err = check(&dir, &owners)
            .expect_err("group-writable")
            .to_string();
        assert!(err.contains(&dir.display().to_string()), "{err}");
        assert!(err.contains("group-writable"), "{err}");
        chmod(&dir, 0o757);
        let err = check(&dir, &owners)
            .expect_err("world-writable")
            .to_string();
        assert!(err.contains("world-writable"), "{err}");
        chmod(&dir, 0o700);

        let file = dir.join("intents.journal");
        std::fs::write(&file, "").expect("write");
        chmod(&file, 0o666);
        let err = check(&dir, &owners).expect_err("file").to_string();
        assert!(
            err.contains("intents.journal") && err.contains("world-writable"),
            "{err}"
        );
        chmod(&file, 0o600);
        check(&dir, &owners).expect("fixed");

        std::os::unix::fs::symlink("/etc/hostname", dir.join("intents.tmp")).expect("link");
        let err = check(&dir, &owners).expect_err("link").to_string();
        assert!(
            err.contains("intents.tmp") && err.contains("symbolic link"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_owner_other_than_root_or_the_service_user_is_refused() {
        let dir = temp_dir("owner");
        let nobody = Owners(vec![65_533]);
        let err = check(&dir, &nobody).expect_err("owner").to_string();
        assert!(err.contains("owned by uid"), "{err}");
        assert!(err.contains(&dir.display().to_string()), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn create_fresh_replaces_a_link_and_never_writes_through_it() {
        let dir = temp_dir("fresh");
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep me").expect("write");
        let tmp = dir.join("x.tmp");
        std::os::unix::fs::symlink(&victim, &tmp).expect("link");
        let mut f = create_fresh(&tmp).expect("created");
        std::io::Write::write_all(&mut f, b"new").expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep me");
        assert!(
            !std::fs::symlink_metadata(&tmp)
                .expect("meta")
                .file_type()
                .is_symlink()
        );
        // And a plain open refuses to follow one.
        std::os::unix::fs::symlink(&victim, dir.join("link")).expect("link");
        let err = open_nofollow(&dir.join("link")).expect_err("ELOOP");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
