use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/t.toml"))
}

fn err(text: &str) -> String {
    parse(text).expect_err("must be rejected").to_string()
}

#[test]
fn empty_file_gives_documented_defaults() {
    let c = parse("").expect("empty is valid");
    assert_eq!(c.cloud.api, Protocol::V3);
    assert_eq!(c.cloud.release_endpoint(), DEFAULT_V3_ENDPOINT);
    assert_eq!(c.release.grace, Duration::from_secs(30));
    assert_eq!(c.release.burst_limit, 8);
    assert!(!c.release.dry_run && !c.release.with_eip);
    assert_eq!(c.routing.mode, RoutingMode::Cleanup);
    assert_eq!(c.release.ignore_removers, default_ignore_removers());
    assert!(!c.cloud.allow_plain_http);
}

#[test]
fn the_documented_example_parses() {
    let c = parse(
        r#"
[cloud]
api = "legacy"
region = "ap-guangzhou"
endpoint = "http://127.0.0.1:1/v2/index.php"
allow_plain_http = true
[metadata]
endpoint = "http://metadata.tencentyun.com/latest/meta-data/"
[release]
grace = "250ms"
dry_run = true
interfaces = ["eth*"]
include = ["10.0.0.0/8"]
exclude = ["10.0.0.0/28"]
ignore_removers = ["dhclient"]
burst_limit = 30
with_eip = false
[routing]
mode = "manage"
[state]
dir = "/var/lib/enisync"
[[interface]]
mac = "52:54:00:AB:CD:EF"
eni = "eni-1"
vpc = "vpc-1"
"#,
    )
    .expect("valid");
    assert_eq!(c.cloud.api, Protocol::Legacy);
    assert_eq!(c.cloud.describe_endpoint(), DEFAULT_V3_ENDPOINT);
    assert!(c.cloud.allow_plain_http);
    assert_eq!(
        c.cloud.plain_http_endpoints(),
        [("cloud.endpoint", "http://127.0.0.1:1/v2/index.php")]
    );
    assert_eq!(c.release.grace, Duration::from_millis(250));
    assert!(c.release.include[0].contains("10.9.8.7".parse().expect("ip")));
    assert!(!c.release.exclude[0].contains("10.0.0.16".parse().expect("ip")));
    assert_eq!(c.interfaces[0].mac.to_string(), "52:54:00:ab:cd:ef");
    assert_eq!(c.routing.mode, RoutingMode::Manage);
}

#[test]
fn misspelt_key_is_named_with_its_table_and_line() {
    let e = err("[release]\ngrace = \"1s\"\ngrase = \"2s\"\n");
    assert!(e.contains("`release.grase`"), "{e}");
    assert!(e.contains("line 3"), "{e}");
    assert!(e.contains("unknown field"), "{e}");
}

#[test]
fn bad_duration_is_named() {
    let e = err("[release]\ngrace = \"30 seconds\"\n");
    assert!(e.contains("`release.grace`"), "{e}");
    assert!(e.contains("ms, s or m"), "{e}");
    let e = err("[cloud]\ntimeout = \"5h\"\n");
    assert!(e.contains("`cloud.timeout`"), "{e}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
    assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("1.5s").is_err());
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("10").is_err());
}

#[test]
fn a_secret_is_never_echoed_in_an_error() {
    let canary = "CANARYsecretVALUE123";
    for text in [
        format!("[cloud]\nsecret_id = \"id\"\nsecret_key = {canary}\n"),
        format!("[cloud]\nsecret_id = \"id\"\nsecret_kye = \"{canary}\"\n"),
        format!("[cloud]\nsecret_id = \"id\"\nsecret_key = [\"{canary}\"]\n"),
        format!("[cloud]\nsecret_key = \"{canary}\"\n"),
    ] {
        let e = err(&text);
        assert!(!e.contains(canary), "leaked: {e}");
        assert!(e.contains("cloud.secret_k"), "{e}");
    }
    // Found by the config fuzzer: in an inline table the error names `cloud`, and the
    // type error quoted the (numeric) secret.
    for text in [
        "cloud = { secret_id = \"a\", secret_key = 0xCA11AB1E }\n",
        "cloud = { secret_id = \"a\", secret_key = 3390155550 }\n",
        "[cloud]\nsecret_key = [\n  3390155550,\n]\n",
    ] {
        let e = err(text);
        assert!(!e.contains("3390155550"), "leaked: {e}");
    }
}

#[test]
fn keys_in_a_world_readable_file_are_refused() {
    let dir = std::env::temp_dir().join(format!("enisync-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        "[cloud]\nsecret_id = \"AKIDx\"\nsecret_key = \"k\"\n",
    )
    .expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = Config::load(&path).expect_err("refused").to_string();
    assert!(e.contains("readable by group or others"), "{e}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(Config::load(&path).is_ok());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn validation_names_keys() {
    assert!(err("[release]\nburst_limit = 0\n").contains("release.burst_limit"));
    assert!(err("[routing]\ntable_base = 250\n").contains("routing.table_base"));
    assert!(err("[routing]\nmode = \"sometimes\"\n").contains("routing.mode"));
    assert!(err("[state]\ndir = \"rel\"\n").contains("state.dir"));
    assert!(err("[release]\ninclude = [\"10.0.0.0/33\"]\n").contains("release.include"));
    assert!(err("[cloud]\nendpoint = \"ftp://x\"\n").contains("cloud.endpoint"));
    assert!(err("[cloud]\nsecret_id = \"x\"\n").contains("cloud.secret_key"));
    assert!(
        err("[[interface]]\nmac = \"zz\"\neni = \"eni-1\"\nvpc = \"v\"\n")
            .contains("interface.mac")
    );
}

/// A dropped "s" in an API endpoint is refused (naming the key
/// that would allow it), unless plain HTTP is opted into; metadata needs no opt-in.
#[test]
fn a_plain_http_api_endpoint_needs_the_opt_in() {
    for (text, key) in [
        (
            "[cloud]\nendpoint = \"http://vpc.ap-guangzhou.tencentcloudapi.com\"\n",
            "`cloud.endpoint`",
        ),
        (
            "[cloud]\nv3_endpoint = \"http://vpc.tencentcloudapi.com/\"\n",
            "`cloud.v3_endpoint`",
        ),
        (
            "[cloud]\napi = \"legacy\"\nendpoint = \"HTTP://vpc.api.qcloud.com/v2/index.php\"\n",
            "`cloud.endpoint`",
        ),
    ] {
        let e = err(text);
        assert!(
            e.contains(key) && e.contains("cloud.allow_plain_http = true"),
            "{e}"
        );
        let allowed = parse(&format!("{text}allow_plain_http = true\n")).expect("opted in");
        assert_eq!(allowed.cloud.plain_http_endpoints().len(), 1);
    }
    let c = parse("[metadata]\nendpoint = \"http://169.254.0.23/latest/meta-data/\"\n")
        .expect("metadata is plain HTTP by nature");
    assert!(c.cloud.plain_http_endpoints().is_empty());
    let c = parse("[cloud]\nendpoint = \"https://vpc.tencentcloudapi.com\"\n").expect("https");
    assert!(c.cloud.plain_http_endpoints().is_empty());
}

/// `cloud.endpoints` (docs/endpoint-failover.md): the ordered list, or the one entry the
/// older keys give; refused empty, repeated, too long, combined with the key it
/// replaces, plain http without the opt-in, or naming another region.
#[test]
fn the_endpoint_list_is_ordered_and_checked() {
    let c = parse("").expect("valid");
    assert_eq!(c.cloud.v3_endpoints(), [DEFAULT_V3_ENDPOINT]);
    let c = parse("[cloud]\nendpoint = \"https://vpc.ap-guangzhou.tencentcloudapi.com\"\n")
        .expect("valid");
    assert_eq!(
        c.cloud.v3_endpoints(),
        ["https://vpc.ap-guangzhou.tencentcloudapi.com"]
    );
    let c = parse(
        "[cloud]\nendpoints = [\"https://vpc.ap-guangzhou.tencentcloudapi.com\", \"https://vpc.tencentcloudapi.com\"]\n",
    )
    .expect("valid");
    assert_eq!(
        c.cloud.v3_endpoints(),
        [
            "https://vpc.ap-guangzhou.tencentcloudapi.com",
            "https://vpc.tencentcloudapi.com"
        ]
    );
    // With the legacy API, `endpoint` is the legacy URL and goes with the list.
    let c = parse(
        "[cloud]\napi = \"legacy\"\nendpoint = \"https://vpc.api.qcloud.com/v2/index.php\"\nendpoints = [\"https://vpc.tencentcloudapi.com\"]\n",
    )
    .expect("valid");
    assert_eq!(
        c.cloud.describe_endpoint(),
        "https://vpc.tencentcloudapi.com"
    );
    let nine: Vec<String> = (0..9)
        .map(|i| format!("\"https://h{i}.example\""))
        .collect();
    for (text, why) in [
        ("endpoints = []", "1 to 8"),
        (&format!("endpoints = [{}]", nine.join(", ")), "1 to 8"),
        (
            "endpoints = [\"https://a.example\", \"https://a.example\"]",
            "listed twice",
        ),
        (
            "endpoint = \"https://a.example\"\nendpoints = [\"https://b.example\"]",
            "replaces cloud.endpoint",
        ),
        (
            "v3_endpoint = \"https://a.example\"\nendpoints = [\"https://b.example\"]",
            "replaces cloud.v3_endpoint",
        ),
        ("endpoints = [\"http://a.example\"]", "plain http"),
        ("endpoints = [\"ftp://a.example\"]", "not an http(s) URL"),
        (
            "region = \"ap-guangzhou\"\nendpoints = [\"https://vpc.ap-beijing.tencentcloudapi.com\"]",
            "region ap-beijing",
        ),
        (
            "endpoints = [\"https://vpc.ap-guangzhou.tencentcloudapi.com\", \"https://vpc.ap-beijing.tencentcloudapi.com\"]",
            "region ap-beijing",
        ),
    ] {
        let e = err(&format!("[cloud]\n{text}\n"));
        assert!(
            e.contains("`cloud.endpoints`") && e.contains(why),
            "{text}: {e}"
        );
    }
    // The older keys get the same region check, under their own names.
    let e = err(
        "[cloud]\nregion = \"ap-guangzhou\"\nendpoint = \"https://vpc.ap-beijing.tencentcloudapi.com\"\n",
    );
    assert!(
        e.contains("`cloud.endpoint`") && e.contains("ap-beijing"),
        "{e}"
    );
    let c = parse(
        "[cloud]\nallow_plain_http = true\nendpoints = [\"http://127.0.0.1:1\", \"https://vpc.tencentcloudapi.com\"]\n",
    )
    .expect("valid");
    assert_eq!(
        c.cloud.plain_http_endpoints(),
        [("cloud.endpoints", "http://127.0.0.1:1")]
    );
}

#[test]
fn every_duration_has_an_upper_bound_and_the_default_is_inside_it() {
    let defaults = Config::default();
    for (key, value, range) in defaults.durations() {
        assert!(
            range.contains(&value),
            "default {key} = {value:?} is out of its range"
        );
    }
    let e = err("[release]\ngrace = \"200000000000000000m\"\n");
    assert!(
        e.contains("`release.grace`") && e.contains("too long"),
        "{e}"
    );
    let e = err("[netlink]\nresync_interval = \"0s\"\n");
    assert!(
        e.contains("`netlink.resync_interval`") && e.contains("longer than 0"),
        "{e}"
    );
    parse("[release]\ngrace = \"0s\"\n").expect("a grace of 0 releases at once");
}

#[test]
fn the_drift_period_is_bounded_because_each_read_spends_the_api_budget() {
    assert_eq!(
        parse("").expect("defaults").drift.interval,
        Duration::from_secs(600)
    );
    for (text, words) in [
        ("30s", "too short"),
        ("0s", "longer than 0"),
        ("1441m", "too long"),
    ] {
        let e = err(&format!("[drift]\ninterval = \"{text}\"\n"));
        assert!(e.contains("`drift.interval`") && e.contains(words), "{e}");
    }
    parse("[drift]\ninterval = \"1m\"\n").expect("one minute is the floor");
}

#[test]
fn log_level_is_parsed_strictly_and_keeps_the_audit_records() {
    for good in [
        "info",
        "warn",
        "info,enisync=debug",
        "error,audit=info",
        "debug, enisync::engine=trace",
    ] {
        check_log_level(good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for bad in [
        "",
        "verbose",
        "info,enisync=loud",
        "audit=off",
        "info,audit=warn",
        "[span]=info",
    ] {
        assert!(check_log_level(bad).is_err(), "{bad:?} must be refused");
    }
    let e = err("[log]\nlevel = \"verbose\"\n");
    assert!(e.contains("`log.level`"), "{e}");
}

#[test]
fn a_public_metrics_address_needs_allow_remote() {
    let e = err("[metrics]\naddress = \"0.0.0.0:9469\"\n");
    assert!(
        e.contains("`metrics.address`") && e.contains("allow_remote"),
        "{e}"
    );
    parse("[metrics]\naddress = \"0.0.0.0:9469\"\nallow_remote = true\n").expect("opted in");
    parse("[metrics]\nenabled = false\naddress = \"0.0.0.0:9469\"\n").expect("not served");
}

#[test]
fn instance_id_goes_with_region_and_interfaces() {
    let e = err("[cloud]\ninstance_id = \"ins-1\"\nregion = \"ap-guangzhou\"\n");
    assert!(
        e.contains("`cloud.instance_id`") && e.contains("[[interface]]"),
        "{e}"
    );
    parse(
        "[cloud]\ninstance_id = \"ins-1\"\nregion = \"ap-guangzhou\"\n\
         [[interface]]\nmac = \"52:54:00:00:00:01\"\neni = \"eni-1\"\nvpc = \"vpc-1\"\n",
    )
    .expect("complete");
}

#[test]
fn a_reload_names_exactly_the_keys_that_need_a_restart() {
    let old = parse("[release]\ngrace = \"30s\"\n").expect("valid");
    let release_only = parse("[release]\ngrace = \"5s\"\ndry_run = true\n").expect("valid");
    assert!(old.restart_needed(&release_only).is_empty());
    let more = parse("[routing]\nmode = \"manage\"\n[log]\nformat = \"json\"\n").expect("valid");
    assert_eq!(old.restart_needed(&more), vec!["routing.mode", "log"]);
}
