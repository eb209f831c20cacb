//! `[claim]`: floating IPs this host takes in the cloud when they are added on it
//! (docs/design.md, "Claims"). Off unless `cidrs` is set. Validation is here too, called
//! by `Config::validate`, so that `check-config` refuses all that `run` refuses.

use super::*;

/// `[claim]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimConfig {
    /// IPv4 CIDRs of the floating IPs (`10.0.1.100/32`); empty: claims are off. An
    /// address inside one is never released by `UnassignPrivateIpAddresses` when it
    /// leaves the host: the next holder migrates it.
    #[serde(default, deserialize_with = "de_claim_cidrs")]
    pub cidrs: Vec<Cidr>,
    /// Instance ids (`ins-…`) whose ENIs an address may be migrated from. Required with
    /// `cidrs`: any other holder is parked as `foreign_holder`, so that a typo in a
    /// CIDR never takes another service's IP.
    #[serde(default)]
    pub peers: Vec<String>,
    /// Process names whose additions trigger a claim, matched against the adder and its
    /// ancestors as `release.ignore_removers` is against removers.
    #[serde(default = "d_claim_adders")]
    pub adders: Vec<String>,
    /// An added address must stay this long before it is claimed: a backup that is
    /// master for a moment takes nothing.
    #[serde(default = "d_claim_settle", deserialize_with = "de_duration")]
    pub settle: Duration,
    /// No Migrate within this time of enisync's start: keepalived that cannot hear its
    /// peers yet becomes MASTER at boot.
    #[serde(default = "d_claim_startup_holdoff", deserialize_with = "de_duration")]
    pub startup_holdoff: Duration,
    /// A claimed address absent from the host for longer than this is reported as an
    /// orphan (it stays bound here).
    #[serde(default = "d_claim_orphan_after", deserialize_with = "de_duration")]
    pub orphan_after: Duration,
    /// How often each claimed address is checked against the cloud. One listing per
    /// claimed address per interval, on every node of the account.
    #[serde(default = "d_claim_reverify", deserialize_with = "de_duration")]
    pub reverify_interval: Duration,
    /// The first wait before claiming again an address the cloud moved away while the
    /// host kept it (`contested`); doubles up to `contest_backoff_max`.
    #[serde(default = "d_claim_contest_backoff", deserialize_with = "de_duration")]
    pub contest_backoff: Duration,
    #[serde(
        default = "d_claim_contest_backoff_max",
        deserialize_with = "de_duration"
    )]
    pub contest_backoff_max: Duration,
    /// At most this many Migrates of one address per minute from this host.
    #[serde(default = "d_claim_max_migrations")]
    pub max_migrations_per_minute: u32,
    /// Decide and log claims, call nothing (`claim_dry_run`). `release.dry_run` covers
    /// claims as well.
    #[serde(default)]
    pub dry_run: bool,
}

impl Default for ClaimConfig {
    fn default() -> Self {
        Self {
            cidrs: Vec::new(),
            peers: Vec::new(),
            adders: d_claim_adders(),
            settle: d_claim_settle(),
            startup_holdoff: d_claim_startup_holdoff(),
            orphan_after: d_claim_orphan_after(),
            reverify_interval: d_claim_reverify(),
            contest_backoff: d_claim_contest_backoff(),
            contest_backoff_max: d_claim_contest_backoff_max(),
            max_migrations_per_minute: d_claim_max_migrations(),
            dry_run: false,
        }
    }
}

impl ClaimConfig {
    /// Whether claims are on.
    pub fn enabled(&self) -> bool {
        !self.cidrs.is_empty()
    }

    /// Whether `ip` lies inside a claim CIDR.
    pub fn covers(&self, ip: Ipv4Addr) -> bool {
        self.cidrs.iter().any(|c| c.contains(ip))
    }
}

/// The widest claim CIDR: floating IPs are named one by one or in small blocks; a
/// wider entry is far more likely a typo that would take a subnet's addresses.
pub const CLAIM_WIDEST_PREFIX: u8 = 24;
/// `claim.max_migrations_per_minute`'s upper bound.
pub const CLAIM_MAX_MIGRATIONS_BOUND: u32 = 10;

/// IPv4 only: an IPv6 entry is named as such rather than as a bad CIDR.
fn de_claim_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            if s.contains(':') {
                return Err(serde::de::Error::custom(format!(
                    "{s:?}: claims are IPv4-only for now"
                )));
            }
            Cidr::parse(s).map_err(serde::de::Error::custom)
        })
        .collect()
}

/// Every `[claim]` rule; `Err((key, reason))`.
pub(super) fn check(config: &Config) -> Result<(), (String, String)> {
    let c = &config.claim;
    let bad = |key: &str, reason: String| Err((key.to_string(), reason));
    for (i, cidr) in c.cidrs.iter().enumerate() {
        let key = format!("claim.cidrs[{i}]");
        let mask = crate::net::prefix_mask(cidr.prefix);
        if u32::from(cidr.addr) & !mask != 0 {
            return bad(
                &key,
                format!(
                    "{cidr} has host bits set: write {}/{} or the single address /32",
                    Ipv4Addr::from(u32::from(cidr.addr) & mask),
                    cidr.prefix
                ),
            );
        }
        if cidr.prefix < CLAIM_WIDEST_PREFIX {
            return bad(
                &key,
                format!(
                    "{cidr} is wider than /{CLAIM_WIDEST_PREFIX}: a claim CIDR names floating \
                     IPs, and a wide one could take addresses of other services"
                ),
            );
        }
        if let Some(j) = c.cidrs[..i].iter().position(|o| overlap(o, cidr)) {
            return bad(
                &key,
                format!("{cidr} overlaps claim.cidrs[{j}] ({})", c.cidrs[j]),
            );
        }
        // A release.include entry entirely inside a claim CIDR asks to release what is
        // never released. A wider include around a claim CIDR is a carve-out, allowed.
        if let Some(j) = config
            .release
            .include
            .iter()
            .position(|inc| inc.prefix >= cidr.prefix && overlap(inc, cidr))
        {
            return bad(
                &key,
                format!(
                    "{cidr} covers release.include[{j}] ({}): an address of a claim CIDR is \
                     never released, so that include entry could never apply",
                    config.release.include[j]
                ),
            );
        }
    }
    if c.enabled() {
        if c.peers.is_empty() {
            return bad(
                "claim.peers",
                "required with claim.cidrs: the instance ids whose ENIs a floating IP may be \
                 migrated from"
                    .into(),
            );
        }
        if c.adders.is_empty() {
            return bad(
                "claim.adders",
                "empty: no addition could ever trigger a claim (the default is [\"keepalived\"])"
                    .into(),
            );
        }
    } else if !c.peers.is_empty() {
        return bad(
            "claim.peers",
            "set without claim.cidrs: claims are off, so the peers would be ignored".into(),
        );
    }
    for (i, peer) in c.peers.iter().enumerate() {
        if !peer.starts_with("ins-") || peer.len() < 5 {
            return bad(
                &format!("claim.peers[{i}]"),
                format!("not an instance id: {peer:?}"),
            );
        }
        if c.peers[..i].contains(peer) {
            return bad(
                &format!("claim.peers[{i}]"),
                format!("{peer} is listed twice"),
            );
        }
    }
    for (i, adder) in c.adders.iter().enumerate() {
        if adder.trim().is_empty() || adder.contains('/') {
            return bad(
                &format!("claim.adders[{i}]"),
                format!("not a process name: {adder:?}"),
            );
        }
    }
    for (key, value, min, max) in [
        ("claim.settle", c.settle, Duration::ZERO, 10 * MINUTE),
        (
            "claim.startup_holdoff",
            c.startup_holdoff,
            Duration::ZERO,
            HOUR_D,
        ),
        (
            "claim.orphan_after",
            c.orphan_after,
            MINUTE,
            Duration::from_secs(7 * 24 * 3600),
        ),
        (
            "claim.reverify_interval",
            c.reverify_interval,
            Duration::from_secs(5),
            HOUR_D,
        ),
        (
            "claim.contest_backoff",
            c.contest_backoff,
            Duration::from_secs(1),
            HOUR_D,
        ),
        (
            "claim.contest_backoff_max",
            c.contest_backoff_max,
            Duration::from_secs(1),
            HOUR_D,
        ),
    ] {
        if value < min || value > max {
            return bad(
                key,
                format!("{value:?} is out of range: must be from {min:?} to {max:?}"),
            );
        }
    }
    if c.contest_backoff_max < c.contest_backoff {
        return bad(
            "claim.contest_backoff_max",
            format!(
                "{:?} is shorter than claim.contest_backoff ({:?})",
                c.contest_backoff_max, c.contest_backoff
            ),
        );
    }
    if !(1..=CLAIM_MAX_MIGRATIONS_BOUND).contains(&c.max_migrations_per_minute) {
        return bad(
            "claim.max_migrations_per_minute",
            format!(
                "{} is out of range: must be from 1 to {CLAIM_MAX_MIGRATIONS_BOUND}",
                c.max_migrations_per_minute
            ),
        );
    }
    Ok(())
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR_D: Duration = Duration::from_secs(3600);

/// Whether two IPv4 prefixes share an address.
fn overlap(a: &Cidr, b: &Cidr) -> bool {
    let prefix = a.prefix.min(b.prefix);
    let mask = crate::net::prefix_mask(prefix);
    u32::from(a.addr) & mask == u32::from(b.addr) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/t.toml"))
    }

    /// The key and the reason of a refused file.
    fn refused(text: &str) -> (String, String) {
        match parse(text).expect_err("must be refused") {
            ConfigError::Invalid { key, reason, .. } => (key, reason),
            other => panic!("not a key error: {other}"),
        }
    }

    #[test]
    fn claims_are_off_by_default_with_documented_defaults() {
        let c = parse("").expect("valid").claim;
        assert!(!c.enabled());
        assert_eq!(c.adders, ["keepalived"]);
        assert_eq!(c.settle, Duration::from_secs(3));
        assert_eq!(c.startup_holdoff, Duration::from_secs(60));
        assert_eq!(c.orphan_after, Duration::from_secs(3600));
        assert_eq!(c.reverify_interval, Duration::from_secs(30));
        assert_eq!(c.max_migrations_per_minute, 3);
        assert!(!c.dry_run);
    }

    #[test]
    fn a_complete_claim_section_parses() {
        let c = parse(
            r#"
[release]
include = ["10.0.0.0/16"]
[claim]
cidrs = ["10.0.1.100/32", "10.0.1.128/28"]
peers = ["ins-aaaa0001", "ins-bbbb0002"]
settle = "0s"
startup_holdoff = "0s"
reverify_interval = "5s"
dry_run = true
"#,
        )
        .expect("valid")
        .claim;
        assert!(c.enabled());
        assert!(c.covers(Ipv4Addr::new(10, 0, 1, 100)));
        assert!(c.covers(Ipv4Addr::new(10, 0, 1, 143)));
        assert!(!c.covers(Ipv4Addr::new(10, 0, 1, 101)));
        assert_eq!(c.settle, Duration::ZERO);
    }

    #[test]
    fn check_config_names_the_claim_key_and_the_reason() {
        let with = |claim: &str| format!("[claim]\n{claim}\n");
        let peers = "peers = [\"ins-aaaa0001\"]";
        for (text, key, reason) in [
            (
                with("cidrs = [\"10.0.1.100/32\"]"),
                "claim.peers",
                "required with claim.cidrs",
            ),
            (with(peers), "claim.peers", "set without claim.cidrs"),
            (
                with(&format!("cidrs = [\"10.0.1.100/24\"]\n{peers}")),
                "claim.cidrs[0]",
                "host bits set",
            ),
            (
                with(&format!("cidrs = [\"10.0.0.0/16\"]\n{peers}")),
                "claim.cidrs[0]",
                "wider than /24",
            ),
            (
                with(&format!(
                    "cidrs = [\"10.0.1.96/28\", \"10.0.1.100/32\"]\n{peers}"
                )),
                "claim.cidrs[1]",
                "overlaps claim.cidrs[0]",
            ),
            (
                format!(
                    "[release]\ninclude = [\"10.0.1.100/32\"]\n{}",
                    with(&format!("cidrs = [\"10.0.1.100/32\"]\n{peers}"))
                ),
                "claim.cidrs[0]",
                "covers release.include[0]",
            ),
            (
                with("cidrs = [\"10.0.1.100/32\"]\npeers = [\"i-123\"]"),
                "claim.peers[0]",
                "not an instance id",
            ),
            (
                with("cidrs = [\"10.0.1.100/32\"]\npeers = [\"ins-a1\", \"ins-a1\"]"),
                "claim.peers[1]",
                "listed twice",
            ),
            (
                with(&format!(
                    "cidrs = [\"10.0.1.100/32\"]\n{peers}\nadders = []"
                )),
                "claim.adders",
                "no addition could ever trigger",
            ),
            (
                with(&format!(
                    "cidrs = [\"10.0.1.100/32\"]\n{peers}\nreverify_interval = \"1s\""
                )),
                "claim.reverify_interval",
                "out of range",
            ),
            (
                with(&format!(
                    "cidrs = [\"10.0.1.100/32\"]\n{peers}\ncontest_backoff = \"60s\"\ncontest_backoff_max = \"10s\""
                )),
                "claim.contest_backoff_max",
                "shorter than claim.contest_backoff",
            ),
            (
                with(&format!(
                    "cidrs = [\"10.0.1.100/32\"]\n{peers}\nmax_migrations_per_minute = 0"
                )),
                "claim.max_migrations_per_minute",
                "out of range",
            ),
        ] {
            let (got_key, got_reason) = refused(&text);
            assert_eq!(got_key, key, "{text}");
            assert!(got_reason.contains(reason), "{text}: {got_reason}");
        }
    }

    #[test]
    fn claim_cidrs_are_ipv4_only() {
        let e = parse("[claim]\ncidrs = [\"fd00::100/128\"]\npeers = [\"ins-a1\"]\n")
            .expect_err("refused")
            .to_string();
        assert!(e.contains("claims are IPv4-only"), "{e}");
        assert!(e.contains("claim"), "{e}");
    }

    #[test]
    fn a_wide_include_around_a_claim_cidr_is_a_carve_out() {
        parse(
            "[release]\ninclude = [\"10.0.0.0/8\"]\n[claim]\ncidrs = [\"10.0.1.100/32\"]\npeers = [\"ins-a1\"]\n",
        )
        .expect("valid");
    }
}
