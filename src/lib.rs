//! enisync: returns auxiliary private IPs that leave a Tencent Cloud CVM's ENI-backed
//! interfaces to the VPC, safely, and keeps the host's policy routing in line.
//!
//! The map is `docs/design.md` and the README: `host` translates
//! netlink, `cloud` translates Tencent's APIs, `engine` is the one place that decides.

pub mod backoff;
pub mod cloud;
pub mod config;
pub mod daemon;
pub mod drift;
pub mod engine;
pub mod host;
pub mod inventory;
pub mod journal;
pub mod net;
pub mod ops;
pub mod pause;
pub mod service_user;
pub mod state_dir;
pub mod task;
pub mod wallclock;

#[cfg(test)]
mod fuzz;

/// Milliseconds of a duration for logs and status, saturating (a `u128` is not a log
/// field type, and no duration here comes near `u64::MAX` ms).
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
