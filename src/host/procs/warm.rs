//! Warming the port owner cache for the processes that add claimed addresses (see the
//! module's docs, "Known adders").

use super::identify::{Identifier, Owner};
use super::proc_fs::{netlink_ports, read_stat, socket_inodes};
use std::sync::Arc;

use super::MAX_OWNERS;
use super::events::ProcessEvents;

/// Whether `comm` may be the configured process name `name`: the kernel cuts names to
/// 15 bytes. Only chooses what to warm; whether an adder is listed is the engine's
/// decision, on the names a lookup finds.
fn may_be(comm: &str, name: &str) -> bool {
    comm == name || (comm.len() == 15 && name.starts_with(comm))
}

impl Identifier {
    /// The process names whose sockets [`Identifier::warm`] resolves ahead of use
    /// (`claim.adders`; empty: nothing is warmed).
    #[must_use]
    pub fn with_warm_names(mut self, names: Vec<String>) -> Self {
        if let Some(events) = &self.events
            && let Ok(mut watched) = events.watched.lock()
        {
            watched.clone_from(&names);
        }
        self.warm_names = names;
        self
    }

    /// The process events that signal a start of a process named in `warm_names`
    /// (see [`ProcessEvents::watched_started`]), when there are both.
    pub fn warm_events(&self) -> Option<Arc<ProcessEvents>> {
        self.events.clone().filter(|_| self.warms())
    }

    /// Whether there is anything to warm.
    pub fn warms(&self) -> bool {
        !self.warm_names.is_empty() && self.disarmed.is_none()
    }

    /// Resolves the netlink sockets of every process named in `warm_names` to their
    /// ports now, so that an address added through one of them is identified without
    /// a scan of every process's descriptors. The entries are checked on use like any
    /// other (same inode on the port, same process start, the process still holds the
    /// socket); one that fails falls back to the scan. Forgets warmed entries whose
    /// socket is gone. Returns how many entries it added. Never waits: one read of the
    /// netlink table, one stat per process, the descriptors of the named ones.
    pub fn warm(&mut self) -> usize {
        if !self.warms() {
            return 0;
        }
        let Ok(table) = std::fs::read_to_string(self.proc_root.join("thread-self/net/netlink"))
        else {
            return 0;
        };
        let ports = netlink_ports(&table);
        self.owners
            .retain(|port, o| !o.warmed || ports.get(&o.inode) == Some(port));
        let Ok(dir) = std::fs::read_dir(&self.proc_root) else {
            return 0;
        };
        let mut added = 0;
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(Some(stat)) = read_stat(&self.proc_root, pid) else {
                continue;
            };
            if !self.warm_names.iter().any(|n| may_be(&stat.comm, n)) {
                continue;
            }
            for inode in socket_inodes(&self.proc_root, pid) {
                let Some(&port) = ports.get(&inode) else {
                    continue;
                };
                // An entry for this socket already (learnt, or warmed before): a learnt
                // one also names its owner once the socket is gone; keep it.
                if self.owners.get(&port).is_some_and(|o| o.inode == inode) {
                    continue;
                }
                if self.owners.len() >= MAX_OWNERS {
                    return added;
                }
                self.owners.insert(
                    port,
                    Owner {
                        inode,
                        pid,
                        start: stat.start,
                        names: Vec::new(),
                        warmed: true,
                    },
                );
                added += 1;
            }
        }
        if added > 0 {
            tracing::debug!(added, "known adders' netlink sockets resolved ahead of use");
        }
        added
    }
}
