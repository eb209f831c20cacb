//! Policy routing against the real kernel, each test in a network namespace of its
//! own. Needs root; fails (never skips) without it.

#[path = "common/hostns.rs"]
mod hostns;

use std::net::Ipv4Addr;

use enisync::host::HostError;
use enisync::host::routes::{ManagedEni, PolicyRouting, RTPROT_ENISYNC, TableLayout};
use hostns::*;

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

/// e0 stands for a secondary ENI at device index 1 in 10.0.1.0/24 (gateway .1), with
/// 10.0.1.10 and 10.0.1.11 on it.
fn setup_eni() -> ManagedEni {
    veth("e0", "e1");
    ip("addr add 10.0.1.10/24 dev e0");
    ip("addr add 10.0.1.11/24 dev e0");
    ManagedEni {
        link: ifindex("e0"),
        device_index: 1,
        gateway: ip4("10.0.1.1"),
        subnet: (ip4("10.0.1.0"), 24),
        ips: vec![ip4("10.0.1.10"), ip4("10.0.1.11")],
    }
}

fn router() -> PolicyRouting {
    PolicyRouting::new(TableLayout {
        table_base: 10_000,
        rule_priority: 1000,
    })
    .expect("request socket")
}

fn rules() -> String {
    ip_out("-4 rule show")
}

fn table(n: u32) -> String {
    ip_out(&format!("-4 route show table {n}"))
}

#[test]
fn manage_creates_tagged_state_once_and_leaves_foreign_state_alone() {
    in_netns(|| async {
        let eni = setup_eni();
        // Someone else's rule and route in another table.
        ip("rule add from 10.0.9.9 lookup 300 pref 100");
        ip("route add 10.0.9.0/24 dev e0 table 300");
        let foreign_rules = rules();
        let foreign_table = table(300);

        let router = router();
        router
            .startup_check(std::slice::from_ref(&eni))
            .await
            .expect("tables are free");
        let report = router
            .manage(std::slice::from_ref(&eni))
            .await
            .expect("dumps work");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.applied, 4, "{:?}", report.plan);

        let proto = format!("proto {RTPROT_ENISYNC}");
        let shown = rules();
        for ip in ["10.0.1.10", "10.0.1.11"] {
            let line = format!("1000:\tfrom {ip} lookup 10001 {proto}");
            assert!(shown.contains(&line), "{line:?} in\n{shown}");
        }
        let routes = table(10_001);
        assert!(
            routes.contains(&format!("default via 10.0.1.1 dev e0 {proto}")),
            "{routes}"
        );
        assert!(
            routes.contains(&format!("10.0.1.0/24 dev e0 {proto} scope link")),
            "{routes}"
        );
        // Traffic from the ENI's IPs now uses its table.
        let lookup = ip_out("route get 192.0.2.7 from 10.0.1.10");
        assert!(lookup.contains("table 10001"), "{lookup}");

        // Idempotent: nothing to do the second time.
        let again = router
            .manage(std::slice::from_ref(&eni))
            .await
            .expect("dumps work");
        assert!(again.plan.is_empty(), "{:?}", again.plan);
        assert_eq!(again.applied, 0);

        // Foreign state untouched.
        assert!(
            rules().contains("100:\tfrom 10.0.9.9 lookup 300"),
            "{}",
            rules()
        );
        assert_eq!(table(300), foreign_table);
        assert!(foreign_rules.lines().all(|l| rules().contains(l)));

        // An IP leaving the ENI loses its rule; the other stays.
        let mut fewer = eni.clone();
        fewer.ips.retain(|ip| *ip != ip4("10.0.1.11"));
        let report = router.manage(&[fewer]).await.expect("dumps work");
        assert_eq!(report.applied, 1, "{:?}", report.plan);
        let shown = rules();
        assert!(!shown.contains("from 10.0.1.11 "), "{shown}");
        assert!(shown.contains("from 10.0.1.10 lookup 10001"), "{shown}");

        // No ENI managed: everything of ours goes, the foreign rule and route stay.
        let report = router.manage(&[]).await.expect("dumps work");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(!rules().contains(&proto), "{}", rules());
        assert_eq!(table(10_001), "");
        assert!(rules().contains("from 10.0.9.9 lookup 300"));
        assert_eq!(table(300), foreign_table);
    });
}

#[test]
fn an_owned_rule_deleted_by_hand_comes_back() {
    in_netns(|| async {
        let eni = setup_eni();
        let router = router();
        router
            .manage(std::slice::from_ref(&eni))
            .await
            .expect("dumps work");
        ip("rule del from 10.0.1.10 lookup 10001 pref 1000");
        assert!(!rules().contains("from 10.0.1.10 "));

        let report = router
            .manage(std::slice::from_ref(&eni))
            .await
            .expect("dumps work");
        assert_eq!(report.applied, 1, "{:?}", report.plan);
        assert_eq!(report.plan.add_rules.len(), 1);
        assert!(
            rules().contains("from 10.0.1.10 lookup 10001"),
            "{}",
            rules()
        );

        // A route flushed by the kernel (link down and up) comes back the same way.
        ip("link set e0 down");
        ip("link set e0 up");
        assert_eq!(table(10_001), "", "the kernel flushed the table");
        let report = router.manage(&[eni]).await.expect("dumps work");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.plan.add_routes.len(), 2);
        assert!(table(10_001).contains("default via 10.0.1.1"));
    });
}

#[test]
fn cleanup_deletes_stale_from_rules_only_for_ips_absent_everywhere() {
    in_netns(|| async {
        let _eni = setup_eni();
        // 10.0.1.21 moved to e1 (another link); 10.0.1.20 is gone from the host.
        ip("addr add 10.0.1.21/32 dev e1");
        ip("rule add from 10.0.1.20 lookup 300 pref 200");
        ip("rule add from 10.0.1.21 lookup 300 pref 200");
        ip("rule add from 10.0.1.20 iif e0 lookup 300 pref 201");
        ip("rule add from 10.0.1.20 lookup 300 pref 202 proto static");

        let router = router();
        let report = router
            .cleanup(&[ip4("10.0.1.20").into(), ip4("10.0.1.21").into()])
            .await
            .expect("dumps work");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.applied, 2, "{:?}", report.plan);

        let shown = rules();
        assert!(
            !shown.contains("200:\tfrom 10.0.1.20 lookup 300"),
            "{shown}"
        );
        assert!(
            !shown.contains("202:\tfrom 10.0.1.20 lookup 300"),
            "{shown}"
        );
        assert!(shown.contains("200:\tfrom 10.0.1.21 lookup 300"), "{shown}");
        assert!(
            shown.contains("201:\tfrom 10.0.1.20 iif e0 lookup 300"),
            "{shown}"
        );
    });
}

#[test]
fn startup_check_refuses_a_table_with_foreign_routes() {
    in_netns(|| async {
        let eni = setup_eni();
        ip("route add 10.5.0.0/16 dev e0 table 10001");
        let router = router();
        let err = router
            .startup_check(&[eni])
            .await
            .expect_err("table 10001 is taken");
        assert!(
            matches!(err, HostError::ForeignTable { table: 10_001, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("table 10001"), "{err}");
    });
}
