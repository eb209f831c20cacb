//! Policy routing, as the engine drives it.

use std::net::IpAddr;

use crate::host::HostView;
use crate::inventory::Inventory;

/// Policy routing, as the engine drives it. The real one is `host::routes`; unit tests
/// record the calls.
pub trait Router: Send + 'static {
    /// After releases: remove what routing the released IPs left behind and, in manage
    /// mode, bring every ENI's table in line with the IPs present now.
    fn after_release(
        &mut self,
        released: &[IpAddr],
        view: &HostView,
        inventory: &Inventory,
    ) -> impl Future<Output = ()> + Send;

    /// Brings routing in line with the host now (start, link and rule changes).
    fn reconcile(
        &mut self,
        view: &HostView,
        inventory: &Inventory,
    ) -> impl Future<Output = ()> + Send;

    /// What would change if `releasing` were released now and routing reconciled, one
    /// line per change; nothing is changed.
    fn plan(
        &mut self,
        releasing: &[IpAddr],
        view: &HostView,
        inventory: &Inventory,
    ) -> impl Future<Output = Vec<String>> + Send;

    /// A reload changed `release.dry_run`: routing changes are made (false) or only
    /// logged (true) from now on, like releases.
    fn set_dry_run(&mut self, dry_run: bool);
}
