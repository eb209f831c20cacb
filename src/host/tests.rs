use super::*;

fn addr(link: u32, last: u8, prefix: u8) -> Addr {
    Addr {
        link,
        ip: Ipv4Addr::new(10, 0, 1, last).into(),
        prefix,
        secondary: false,
        v6: None,
    }
}

#[test]
fn has_ip_finds_an_ip_on_any_link_with_any_prefix() {
    let mut view = HostView::default();
    for a in [addr(1, 5, 24), addr(7, 9, 32), addr(u32::MAX, 200, u8::MAX)] {
        view.addrs.insert(a.key(), a);
    }
    for last in [5, 9, 200] {
        assert!(view.has_ip(Ipv4Addr::new(10, 0, 1, last).into()), "{last}");
    }
    for last in [4, 6, 8, 10, 199, 201] {
        assert!(!view.has_ip(Ipv4Addr::new(10, 0, 1, last).into()), "{last}");
    }
    assert_eq!(view.addrs_on(7).count(), 1);
}

/// A copy of an address with any flags counts as present (clause 4); flags only
/// decide candidacy: global, permanent, settled, not autoconfigured.
#[test]
fn ipv6_candidates_are_global_permanent_settled_and_not_autoconfigured() {
    use ifa_flags::*;
    let v6 = |global: bool, flags: u32| Addr {
        link: 2,
        ip: "2402:4e00:1::11".parse().expect("ipv6"),
        prefix: 64,
        secondary: false,
        v6: Some(V6Facts { global, flags }),
    };
    assert_eq!(v6(true, PERMANENT).candidate(), Ok(()));
    assert_eq!(
        v6(false, PERMANENT).candidate(),
        Err(NotCandidate::NotGlobal)
    );
    assert_eq!(v6(true, 0).candidate(), Err(NotCandidate::NotPermanent));
    for (flags, why) in [
        (TEMPORARY, NotCandidate::Temporary),
        (MANAGETEMPADDR, NotCandidate::Mngtmpaddr),
        (TENTATIVE, NotCandidate::Tentative),
        (OPTIMISTIC, NotCandidate::Tentative),
        (DADFAILED | TENTATIVE, NotCandidate::DadFailed),
    ] {
        assert_eq!(
            v6(true, PERMANENT | flags).candidate(),
            Err(why),
            "{flags:#x}"
        );
    }
    // An IPv6 address without its facts is never a candidate.
    let unknown = Addr {
        v6: None,
        ..v6(true, PERMANENT)
    };
    assert!(unknown.candidate().is_err());
    // Present whatever its flags: a tentative copy on another link keeps it.
    let mut view = HostView::default();
    let tentative = Addr {
        link: 3,
        ..v6(true, PERMANENT | TENTATIVE)
    };
    view.addrs.insert(tentative.key(), tentative);
    assert!(view.has_ip(tentative.ip));
    assert!(!view.has_ip("2402:4e00:1::12".parse().expect("ipv6")));
}
