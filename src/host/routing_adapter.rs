//! The adapter from the engine's [`Router`](crate::engine::Router) to the host's policy
//! routing ([`PolicyRouting`]): which ENIs are managed (secondary ENIs with a
//! `DeviceIndex`, their gateway the subnet's first address unless the metadata service
//! names it), whether changes are made or only logged (`release.dry_run`), and the audit
//! records of what changed. The rules themselves are planned in `routes`.
//!
//! The one host file that imports the engine: it implements the engine's trait, and the
//! engine imports only the plain host types of `host/mod.rs` (docs/design.md, "Layering").

use std::net::{IpAddr, Ipv4Addr};

use prometheus_client::metrics::counter::Counter;
use tracing::{info, warn};

use super::routes::{ManagedEni, PolicyRouting};
use super::{HostError, HostView};
use crate::inventory::Inventory;
use crate::net::prefix_mask;

/// Policy routing as the engine asks for it, per `routing.mode`. In dry run it plans
/// and logs, and changes nothing.
#[derive(Debug)]
pub struct RoutingAdapter {
    /// `routing.mode = "manage"`: keep every secondary ENI's table, not only clean up.
    manage: bool,
    dry_run: bool,
    /// `None`: `routing.mode = "off"`.
    router: Option<PolicyRouting>,
    /// Counts the rule and route changes applied (`enisync_route_changes_total`).
    route_changes: Option<Counter>,
}

impl RoutingAdapter {
    /// `router` is `None` for `routing.mode = "off"`; `manage` for `"manage"`.
    pub fn new(
        router: Option<PolicyRouting>,
        manage: bool,
        dry_run: bool,
        route_changes: Option<Counter>,
    ) -> Self {
        Self {
            manage,
            dry_run,
            router,
            route_changes,
        }
    }

    /// Refuses to manage a table holding a route enisync did not create.
    pub async fn startup_check(
        &self,
        view: &HostView,
        inventory: &Inventory,
    ) -> Result<(), HostError> {
        if let Some(r) = &self.router {
            r.startup_check(&managed_enis(view, inventory)).await?;
        }
        Ok(())
    }
}

impl crate::engine::Router for RoutingAdapter {
    fn set_dry_run(&mut self, dry_run: bool) {
        if self.dry_run != dry_run {
            info!(dry_run, "routing follows release.dry_run");
        }
        self.dry_run = dry_run;
    }

    async fn plan(
        &mut self,
        releasing: &[IpAddr],
        view: &HostView,
        inventory: &Inventory,
    ) -> Vec<String> {
        let Some(router) = &self.router else {
            return vec!["routing.mode = \"off\": no routing changes".into()];
        };
        let mut lines = Vec::new();
        if !releasing.is_empty() {
            match router.plan_cleanup(releasing).await {
                Ok(plan) if !plan.is_empty() => lines.push(format!("after release: {plan}")),
                Ok(_) => {}
                Err(e) => lines.push(format!("cleanup plan failed: {e}")),
            }
        }
        if self.manage {
            match router.plan_manage(&managed_enis(view, inventory)).await {
                Ok(plan) if !plan.is_empty() => lines.push(format!("reconcile: {plan}")),
                Ok(_) => {}
                Err(e) => lines.push(format!("manage plan failed: {e}")),
            }
        }
        lines
    }

    async fn after_release(&mut self, released: &[IpAddr], view: &HostView, inventory: &Inventory) {
        let Some(router) = &self.router else { return };
        if self.dry_run {
            // Nothing was released in a dry run, so nothing is stale; say what would go.
            match router.plan_cleanup(released).await {
                Ok(plan) => {
                    info!(target: "audit", decision = "routing_dry_run", released = ?released, plan = %plan, "dry run: routing not changed")
                }
                Err(e) => warn!(error = %e, "routing plan failed"),
            }
            return;
        }
        match router.cleanup(released).await {
            Ok(report) => {
                count_changes(self.route_changes.as_ref(), report.applied);
                info!(
                target: "audit",
                decision = "routing",
                released = ?released,
                applied = report.applied,
                errors = report.errors.len(),
                plan = %report.plan,
                "stale rules of released IPs removed"
                );
            }
            Err(e) => warn!(error = %e, "routing cleanup failed"),
        }
        if self.manage {
            self.reconcile(view, inventory).await;
        }
    }

    async fn reconcile(&mut self, view: &HostView, inventory: &Inventory) {
        if !self.manage {
            return;
        }
        let Some(router) = &self.router else { return };
        let enis = managed_enis(view, inventory);
        if self.dry_run {
            match router.plan_manage(&enis).await {
                Ok(plan) if !plan.is_empty() => {
                    info!(target: "audit", decision = "routing_dry_run", plan = %plan, "dry run: routing not changed");
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "routing plan failed"),
            }
            return;
        }
        match router.manage(&enis).await {
            Ok(report) if report.applied > 0 || !report.errors.is_empty() => {
                count_changes(self.route_changes.as_ref(), report.applied);
                info!(
                target: "audit",
                decision = "routing",
                applied = report.applied,
                errors = ?report.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                plan = %report.plan,
                "policy routing repaired"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "policy routing reconcile failed"),
        }
    }
}

fn count_changes(route_changes: Option<&Counter>, applied: usize) {
    if let Some(counter) = route_changes {
        counter.inc_by(applied as u64);
    }
}

/// The secondary ENIs present on the host, with the IPs on their links now.
pub fn managed_enis(view: &HostView, inventory: &Inventory) -> Vec<ManagedEni> {
    let mut out = Vec::new();
    for link in view.links.values().filter(|l| l.is_physical()) {
        let Some(record) = link.mac.and_then(|m| inventory.by_mac(m)) else {
            continue;
        };
        let Some(device_index) = record.device_index else {
            continue;
        };
        if record.primary_eni {
            continue; // the primary ENI's routing belongs to the main table
        }
        // Manage mode is IPv4 only (README, "IPv6"): IPv6 addresses get no table or rule.
        let addrs: Vec<(Ipv4Addr, u8, bool)> = view
            .addrs_on(link.index)
            .filter_map(|a| match a.ip {
                IpAddr::V4(ip) => Some((ip, a.prefix, a.secondary)),
                IpAddr::V6(_) => None,
            })
            .collect();
        let Some(&(first_ip, first_prefix, _)) = addrs
            .iter()
            .find(|a| Some(a.0) == record.primary_ip)
            .or_else(|| addrs.iter().find(|a| !a.2))
        else {
            continue;
        };
        let prefix = record.meta.subnet_prefix.unwrap_or(first_prefix);
        let network = Ipv4Addr::from(u32::from(first_ip) & prefix_mask(prefix));
        // Tencent's subnet gateway is the subnet's first address, when the metadata
        // service does not name it.
        let gateway = record
            .meta
            .gateway
            .unwrap_or_else(|| Ipv4Addr::from(u32::from(network).wrapping_add(1)));
        out.push(ManagedEni {
            link: link.index,
            device_index,
            gateway,
            subnet: (network, prefix),
            ips: addrs.iter().map(|a| a.0).collect(),
        });
    }
    out
}
