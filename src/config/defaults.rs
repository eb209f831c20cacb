//! The default of every key, one function each (serde's `default = "..."` names them).
//! A default that the module using the key also needs (the cloud client's timeouts and
//! rate, the metadata timeout, the watcher's buffer and resync) is that module's
//! constant, named here, so the two cannot drift apart.

use super::*;

pub(super) fn d_cloud_connect() -> Duration {
    crate::cloud::client::DEFAULT_CONNECT_TIMEOUT
}
pub(super) fn d_cloud_total() -> Duration {
    crate::cloud::client::DEFAULT_TOTAL_TIMEOUT
}
pub(super) fn d_task_timeout() -> Duration {
    crate::cloud::client::DEFAULT_TASK_TIMEOUT
}
pub(super) fn d_metadata_timeout() -> Duration {
    crate::cloud::metadata::DEFAULT_METADATA_TIMEOUT
}
pub(super) fn d_resync() -> Duration {
    crate::host::watch::DEFAULT_RESYNC_INTERVAL
}
pub(super) fn d_30s() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn d_1s() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn d_20ms() -> Duration {
    Duration::from_millis(20)
}
pub(super) fn d_3m() -> Duration {
    Duration::from_secs(180)
}
pub(super) fn d_10m() -> Duration {
    Duration::from_secs(600)
}
/// `drift.interval`: a fleet of 1000 nodes reads the listing under 2 times a second.
pub(super) fn d_drift_interval() -> Duration {
    Duration::from_secs(600)
}
/// The shortest time between two reads that `enisync drift` asks for: whoever can reach
/// the control socket, however often, spends at most one listing per this time.
pub const DRIFT_FRESH_READ_MIN: Duration = Duration::from_secs(10);
pub(super) fn d_rate() -> f64 {
    crate::cloud::retry::DEFAULT_UNASSIGN_RATE
}
pub(super) fn d_rate_ipv6() -> f64 {
    crate::cloud::retry::DEFAULT_IPV6_UNASSIGN_RATE
}
/// The most entries of `cloud.endpoints` (the failover metric's labels come from it).
pub(super) const MAX_ENDPOINTS: usize = crate::cloud::failover::MAX_ENDPOINTS;
pub(super) fn d_metadata() -> String {
    DEFAULT_METADATA_ENDPOINT.into()
}
pub(super) fn d_ignore_removers() -> Vec<String> {
    default_ignore_removers()
}

/// The default `release.ignore_removers`, also the engine's default: tools that remove
/// addresses they did not configure. Each name is matched against the remover and its
/// ancestors (the `ip` a script runs counts as the script's and its parent's), against
/// `comm`, which the kernel cuts at 15 bytes (`networkd-dispatcher` shows as
/// `networkd-dispat`; a longer name here matches its cut form). The evidence, per tool
/// (docs/security.md has the sources):
///
/// - `dhclient`, `dhclient-script`: ISC dhclient-script runs `ip -4 addr flush dev
///   $interface` on EXPIRE, FAIL, RELEASE and STOP, flushing every IPv4 address of the
///   link, aux IPs included, while the link stays up.
/// - `dhcpcd`: on lease expiry, release or carrier loss it deletes the addresses of the
///   interface it runs on; its hooks run under it.
/// - `udhcpc`: busybox's `default.script` (run by udhcpc, so matched through it) does
///   `ip -4 addr flush dev $interface` on `deconfig`, at every start and lease loss.
/// - `NetworkManager`: on (re)activation it removes addresses of a managed device
///   that its connection profile does not list.
/// - `nm-dispatcher`: runs the dispatcher scripts; D-Bus starts it as a child of PID 1,
///   not of NetworkManager, so it is listed by its own name.
/// - `systemd-networkd`: with the default `KeepConfiguration=no` it drops foreign
///   addresses of links it manages when it (re)configures them.
/// - `networkd-dispatcher`: runs scripts on networkd's state changes; a child of PID 1.
/// - `ifup`, `ifdown`, `ifquery`, `ifreload`: ifupdown's `inet` methods flush the link
///   on `down` (`ip -4 addr flush dev %iface%`); ifupdown2 reconciles a link to its
///   configuration, removing addresses it does not list; RHEL's `ifdown-eth` is run by
///   `ifdown`.
pub fn default_ignore_removers() -> Vec<String> {
    [
        "dhclient",
        "dhclient-script",
        "dhcpcd",
        "udhcpc",
        "NetworkManager",
        "nm-dispatcher",
        "systemd-networkd",
        "networkd-dispatcher",
        "ifup",
        "ifdown",
        "ifquery",
        "ifreload",
    ]
    .map(String::from)
    .to_vec()
}
pub(super) fn d_burst_limit() -> usize {
    8
}
pub(super) fn d_table_base() -> u32 {
    DEFAULT_TABLE_BASE
}
pub(super) fn d_rule_priority() -> u32 {
    DEFAULT_RULE_PRIORITY
}
pub(super) fn d_state_dir() -> PathBuf {
    PathBuf::from(crate::state_dir::DEFAULT_STATE_DIR)
}
pub(super) fn d_log_level() -> String {
    "info".into()
}
pub(super) fn d_true() -> bool {
    true
}
pub(super) fn d_metrics_address() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9469))
}
pub(super) fn d_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
/// Above what one host can hold (a large CVM has a few hundred private IPs in all), so
/// a legitimate mass release is never cut; the burst hold (clause 6) is what stops a
/// flush. Lower it to bound what a runaway could release per window.
pub(super) fn d_host_limit() -> usize {
    1000
}
pub(super) fn d_rcvbuf() -> usize {
    crate::host::watch::DEFAULT_RECV_BUFFER
}
/// `claim.adders`: keepalived is the tool that adds floating IPs (a VRRP master adds
/// its `virtual_ipaddress` entries, and a script it runs counts through it).
pub(super) fn d_claim_adders() -> Vec<String> {
    vec!["keepalived".into()]
}
/// `claim.settle`: three of keepalived's default 1 s adverts. A node that is master for
/// a moment (it saw no advert yet, or a higher priority took over again) drops the VIP
/// within that time and claims nothing.
pub(super) fn d_claim_settle() -> Duration {
    Duration::from_secs(3)
}
/// `claim.startup_holdoff`: keepalived that cannot hear its peers yet becomes MASTER at
/// boot; a minute lets VRRP settle before any Migrate.
pub(super) fn d_claim_startup_holdoff() -> Duration {
    Duration::from_secs(60)
}
/// `claim.orphan_after`.
pub(super) fn d_claim_orphan_after() -> Duration {
    Duration::from_secs(3600)
}
/// `claim.reverify_interval`: 30 s, six times Tencent's recipe (5 s), so that a fleet
/// of 1000 nodes with one claimed address each spends about 33 listings/s of the
/// account's 100/s; a contest is still seen within half a minute.
pub(super) fn d_claim_reverify() -> Duration {
    Duration::from_secs(30)
}
/// `claim.contest_backoff`: the first wait after a contest, doubling each time.
pub(super) fn d_claim_contest_backoff() -> Duration {
    Duration::from_secs(10)
}
/// `claim.contest_backoff_max`.
pub(super) fn d_claim_contest_backoff_max() -> Duration {
    Duration::from_secs(300)
}
/// `claim.max_migrations_per_minute`: two nodes in a split brain move an address at
/// most this many times a minute each.
pub(super) fn d_claim_max_migrations() -> u32 {
    3
}
