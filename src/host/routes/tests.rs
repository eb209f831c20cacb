use super::*;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

fn eni() -> ManagedEni {
    ManagedEni {
        link: 7,
        device_index: 1,
        gateway: ip("10.0.1.1"),
        subnet: (ip("10.0.1.0"), 24),
        ips: vec![ip("10.0.1.10"), ip("10.0.1.11")],
    }
}

/// What the kernel would dump after applying `want` (fields equal, tag ours).
fn as_dumped(want: &Desired) -> (Vec<Rule>, Vec<Route>) {
    (want.rules.clone(), want.routes.clone())
}

fn foreign_rule(src: &str, table: u32) -> Rule {
    Rule::lookup_from(ip(src), table, 100, 4)
}

#[test]
fn desired_state_of_one_eni() {
    let cfg = TableLayout::default();
    let want = desired(&cfg, &[eni()]);
    assert_eq!(want.routes.len(), 2);
    assert!(
        want.routes
            .iter()
            .all(|r| r.table == DEFAULT_TABLE_BASE + 1 && r.protocol == RTPROT_ENISYNC)
    );
    let link = want
        .routes
        .iter()
        .find(|r| r.gateway.is_none())
        .expect("link route");
    assert_eq!(
        (link.dst, link.prefix, link.scope),
        (ip("10.0.1.0"), 24, Scope::Link)
    );
    let default = want
        .routes
        .iter()
        .find(|r| r.gateway.is_some())
        .expect("default");
    assert_eq!((default.dst, default.prefix), (Ipv4Addr::UNSPECIFIED, 0));
    assert_eq!(want.rules.len(), 2);
    assert!(
        want.rules
            .iter()
            .all(|r| r.table == DEFAULT_TABLE_BASE + 1 && r.lookup)
    );
}

#[test]
fn plan_from_scratch_then_nothing() {
    let want = desired(&TableLayout::default(), &[eni()]);
    let plan = plan_manage(&[], &[], &want);
    assert_eq!((plan.add_routes.len(), plan.add_rules.len()), (2, 2));
    assert!(plan.add_routes[0].gateway.is_none(), "link route first");
    let (rules, routes) = as_dumped(&want);
    assert!(plan_manage(&rules, &routes, &want).is_empty());
}

#[test]
fn unwanted_ours_go_and_foreign_stay() {
    let cfg = TableLayout::default();
    let (mut rules, routes) = as_dumped(&desired(&cfg, &[eni()]));
    rules.push(foreign_rule("10.0.1.99", DEFAULT_TABLE_BASE + 1));
    let mut fewer = eni();
    fewer.ips.pop();
    let plan = plan_manage(&rules, &routes, &desired(&cfg, &[fewer]));
    assert_eq!(plan.del_rules.len(), 1);
    assert_eq!(plan.del_rules[0].source, Some((ip("10.0.1.11").into(), 32)));
    assert!(plan.add_rules.is_empty() && plan.add_routes.is_empty() && plan.del_routes.is_empty());

    // No ENI managed any more: all of ours go, gateway route before link route.
    let plan = plan_manage(&rules, &routes, &Desired::default());
    assert_eq!(plan.del_rules.len(), 2);
    assert!(plan.del_rules.iter().all(|r| r.protocol == RTPROT_ENISYNC));
    assert_eq!(plan.del_routes.len(), 2);
    assert!(plan.del_routes[0].gateway.is_some());
}

#[test]
fn changed_gateway_is_replaced_not_deleted() {
    let cfg = TableLayout::default();
    let (rules, routes) = as_dumped(&desired(&cfg, &[eni()]));
    let mut moved = eni();
    moved.gateway = ip("10.0.1.254");
    let plan = plan_manage(&rules, &routes, &desired(&cfg, &[moved]));
    assert_eq!(plan.add_routes.len(), 1);
    assert_eq!(plan.add_routes[0].gateway, Some(ip("10.0.1.254")));
    assert!(plan.del_routes.is_empty());
}

#[test]
fn foreign_route_at_a_wanted_place_is_a_conflict() {
    let cfg = TableLayout::default();
    let want = desired(&cfg, &[eni()]);
    let mut foreign = want.routes[1].clone();
    foreign.protocol = 3; // boot: `ip route add` by hand
    foreign.gateway = Some(ip("10.0.1.2"));
    let plan = plan_manage(&[], &[foreign], &want);
    assert_eq!(plan.conflicts.len(), 1);
    assert_eq!(plan.add_routes.len(), 1);
    assert!(plan.del_routes.is_empty());
}

#[test]
fn cleanup_only_for_absent_ips_and_only_plain_from_rules() {
    let mut with_iif = foreign_rule("10.0.1.50", 200);
    with_iif.other_selectors = true;
    let rules = vec![
        foreign_rule("10.0.1.50", 200),
        foreign_rule("10.0.1.51", 200),
        with_iif,
        Rule {
            source: Some((ip("10.0.1.0").into(), 24)),
            ..foreign_rule("10.0.1.0", 200)
        },
    ];
    let mut route = desired(&TableLayout::default(), &[eni()]).routes[0].clone();
    route.prefsrc = Some(ip("10.0.1.50"));
    let mut foreign_route = route.clone();
    foreign_route.protocol = 4;
    let released = [ip("10.0.1.50").into(), ip("10.0.1.51").into()];
    let plan = plan_cleanup(&rules, &[route, foreign_route], &released, |x| {
        x == IpAddr::from(ip("10.0.1.51"))
    });
    assert_eq!(plan.del_rules.len(), 1);
    assert_eq!(plan.del_rules[0].source, Some((ip("10.0.1.50").into(), 32)));
    assert!(!plan.del_rules[0].other_selectors);
    assert_eq!(plan.del_routes.len(), 1);
    assert_eq!(plan.del_routes[0].protocol, RTPROT_ENISYNC);
}

#[test]
fn startup_check_names_the_table() {
    let want = desired(&TableLayout::default(), &[eni()]);
    assert!(check_tables(&want.routes, [DEFAULT_TABLE_BASE + 1]).is_ok());
    let mut foreign = want.routes[0].clone();
    foreign.protocol = 4;
    let err = check_tables(&[foreign], [DEFAULT_TABLE_BASE + 1]).expect_err("refused");
    assert!(
        matches!(err, HostError::ForeignTable { table, .. } if table == DEFAULT_TABLE_BASE + 1)
    );
    assert!(
        err.to_string()
            .contains(&format!("table {}", DEFAULT_TABLE_BASE + 1)),
        "{err}"
    );
}

#[test]
fn networkd_setting_default_main_and_dropins() {
    let root = std::env::temp_dir().join(format!("enisync-networkd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let read = || networkd_foreign_rules(&root).expect("readable");
    assert_eq!(
        read(),
        NetworkdForeignRules {
            manage_foreign_rules: true,
            decided_by: None
        }
    );

    let write = |rel: &str, text: &str| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
        path
    };
    // The /usr/lib main file is hidden by the /etc one.
    write(
        "usr/lib/systemd/networkd.conf",
        "[Network]\nManageForeignRoutingPolicyRules=no\n",
    );
    let etc = write(
        "etc/systemd/networkd.conf",
        "[Network]\n#ManageForeignRoutingPolicyRules=no\n[DHCPv4]\nManageForeignRoutingPolicyRules=no\n",
    );
    assert!(read().manage_foreign_rules, "commented or other section");
    write(
        "etc/systemd/networkd.conf",
        "[Network]\nManageForeignRoutingPolicyRules = off\n",
    );
    assert_eq!(
        read(),
        NetworkdForeignRules {
            manage_foreign_rules: false,
            decided_by: Some(etc)
        }
    );

    // Drop-ins after the main file, by name across directories; /etc hides /usr/lib.
    write(
        "usr/lib/systemd/networkd.conf.d/50-x.conf",
        "[Network]\nManageForeignRoutingPolicyRules=yes\n",
    );
    assert!(read().manage_foreign_rules);
    let masked = write("etc/systemd/networkd.conf.d/50-x.conf", "");
    assert!(
        !read().manage_foreign_rules,
        "the empty /etc drop-in hides /usr/lib's"
    );
    let _ = masked;
    let late = write(
        "run/systemd/networkd.conf.d/90-late.conf",
        "[Network]\nManageForeignRoutingPolicyRules=true\n",
    );
    write(
        "run/systemd/networkd.conf.d/10-early.conf",
        "[Network]\nManageForeignRoutingPolicyRules=false\n",
    );
    write(
        "run/systemd/networkd.conf.d/README",
        "[Network]\nManageForeignRoutingPolicyRules=false\n",
    );
    assert_eq!(
        read(),
        NetworkdForeignRules {
            manage_foreign_rules: true,
            decided_by: Some(late)
        }
    );
    write(
        "run/systemd/networkd.conf.d/95-bad.conf",
        "[Network]\nManageForeignRoutingPolicyRules=maybe\n",
    );
    assert!(read().manage_foreign_rules, "invalid values are ignored");
    std::fs::remove_dir_all(&root).expect("cleanup");
}

/// IPv6: after a release, a rule whose only selector is `from <ip>/128` goes, like an
/// IPv4 `/32` one; a `/64` rule and a rule of an address still present stay.
#[test]
fn cleanup_removes_plain_from_128_rules_of_released_ipv6_addresses() {
    let v6 = |s: &str| -> IpAddr { s.parse().expect("ipv6") };
    let rule = |src: &str, len: u8| Rule {
        source: Some((v6(src), len)),
        ..foreign_rule("10.0.1.1", 200)
    };
    let rules = vec![
        rule("2402:4e00:1::11", 128),
        rule("2402:4e00:1::12", 128),
        rule("2402:4e00:1::", 64),
    ];
    let released = [v6("2402:4e00:1::11"), v6("2402:4e00:1::12")];
    let plan = plan_cleanup(&rules, &[], &released, |x| x == v6("2402:4e00:1::12"));
    assert_eq!(plan.del_rules.len(), 1);
    assert_eq!(plan.del_rules[0].source, Some((v6("2402:4e00:1::11"), 128)));
}
