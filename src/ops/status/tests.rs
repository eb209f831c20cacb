use serde_json::json;

use super::*;

fn status_doc() -> Value {
    json!({
        "links": [{"name": "eth1", "index": 3, "mac": "52:54:00:12:34:56", "up": true,
                   "eni_id": "eni-second01", "vpc_id": "vpc-sandbox", "primary_ip": "10.0.1.10",
                   "aux_ips": ["10.0.1.11", "10.0.1.13"], "cloud_ips": ["10.0.1.11", "10.0.1.12", "10.0.1.13"]}],
        "intents": [{"ip": "10.0.1.12", "link": 3, "link_name": "eth1", "prefix": 24, "mac": "52:54:00:12:34:56",
                     "eni_id": "eni-second01", "remover": {"port_id": 4242, "process": "ip"},
                     "observed_unix_ms": 1, "due_in_ms": 28500, "phase": {"phase": "pending"},
                     "attempts": 0, "task_failures": 0, "sent": false}],
        "recent": [{"ip": "10.0.1.14", "eni_id": "eni-second01", "outcome": {"outcome": "released", "task_id": "t-1"}},
                   {"ip": "10.0.1.15", "eni_id": "eni-second01",
                    "outcome": {"outcome": "cancelled", "reason": "readded"}}],
        "alarms": [],
        "errors": ["@1700000000 10.0.1.16: describe failed: Transport.Timeout"],
        "counters": {"released": 1, "already_gone": 0, "cancelled": 1, "refused": 0, "held": 0,
                     "alarms": 0, "unassign_calls": 1, "dry_run_calls": 0},
        "paused": false,
        "dry_run": false
    })
}

#[test]
fn status_table_golden() {
    let expected = "\
enisync: running, releases armed

LINKS
LINK  STATE  MAC                ENI           VPC          PRIMARY    AUX IPS
eth1  up     52:54:00:12:34:56  eni-second01  vpc-sandbox  10.0.1.10  10.0.1.11 10.0.1.13

PENDING RELEASES
IP         LINK  ENI           PHASE    DUE IN  REMOVER
10.0.1.12  eth1  eni-second01  pending  28.5s   ip

LAST RESULTS
IP         ENI           OUTCOME    DETAIL
10.0.1.14  eni-second01  released   task t-1
10.0.1.15  eni-second01  cancelled  readded

ALARMS
none

LAST ERRORS
@1700000000 10.0.1.16: describe failed: Transport.Timeout

TOTALS  released 1  already gone 0  cancelled 1  refused 0  held 0  alarms 0
";
    assert_eq!(render_status(&status_doc()), expected);
}

#[test]
fn control_characters_from_the_cloud_and_process_names_are_escaped() {
    let mut doc = status_doc();
    // A process name that would clear the screen and move the cursor, and a cloud
    // message with a newline (a fake table row), a C1 CSI and a bidi override.
    doc["intents"][0]["remover"]["process"] = json!("ip\u{1b}[2J\u{1b}[1;1H");
    doc["errors"][0] =
        json!("describe failed: Bad\n10.0.1.99  eni-x  released\u{9b}31m\u{202e}gnp.exe");
    let text = render_status(&doc);
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
    assert!(!text.contains('\u{202e}'), "{text:?}");
    assert!(text.contains("ip\\x1b[2J\\x1b[1;1H"), "{text}");
    assert!(
        text.contains("Bad\\x0a10.0.1.99  eni-x  released\\u{9b}31m\\u{202e}gnp.exe"),
        "{text}"
    );
    let plan = render_plan(&json!({
        "would_release": [{"ip": "10.0.1.12", "link": "eth1\u{7}", "eni_id": "eni-1",
                           "due_in_ms": 0, "note": "the cloud says: \u{1b}]0;owned\u{7}"}],
        "not_yet": [], "held": [], "routing": ["rule\r"], "paused": false, "dry_run": false
    }));
    assert!(
        !plan.chars().any(|c| c.is_control() && c != '\n'),
        "{plan:?}"
    );
    assert!(
        plan.contains("\\x1b]0;owned\\x07") && plan.contains("rule\\x0d"),
        "{plan}"
    );
}

#[test]
fn plan_table_golden() {
    let doc = json!({
        "would_release": [{"ip": "10.0.1.12", "eni_id": "eni-second01", "link": "eth1", "due_in_ms": 0,
                           "note": "due; the send-time cloud check applies"}],
        "not_yet": [],
        "held": ["10.0.1.20"],
        "routing": ["after release: delete rule 3500: from 10.0.1.12/32 lookup 3501"],
        "paused": true,
        "dry_run": false
    });
    let expected = "\
releases are PAUSED: nothing would be sent until `enisync resume`
WOULD RELEASE NOW
IP         LINK  ENI           DUE IN  NOTE
10.0.1.12  eth1  eni-second01  0.0s    due; the send-time cloud check applies

NOT YET
none

HELD (confirm with `enisync release --held`)
10.0.1.20

ROUTING CHANGES
after release: delete rule 3500: from 10.0.1.12/32 lookup 3501
";
    assert_eq!(render_plan(&doc), expected);
}

/// A drift report built by the real types (`drift::Tracker`), so the table follows
/// the document the daemon sends.
fn drift_doc(link: &str, eni: &str) -> Value {
    use std::net::{IpAddr, Ipv4Addr};

    use crate::drift::{Freshness, HostSide, Read, SourceRead, Tracker};
    use crate::host::{Addr, Link};
    use crate::net::MacAddr;

    let mac = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    let ip = |n| IpAddr::V4(Ipv4Addr::new(10, 0, 1, n));
    let read = |at| Read {
        at_unix: at,
        instance_id: "ins-1".into(),
        host: SourceRead::Ok(HostSide {
            links: vec![Link {
                index: 3,
                name: link.into(),
                mac: Some(mac),
                up: true,
                parent: None,
                kind: None,
            }],
            addrs: [10, 50]
                .map(|n| Addr {
                    link: 3,
                    ip: ip(n),
                    prefix: 24,
                    secondary: n != 10,
                    v6: None,
                })
                .to_vec(),
            rules: Vec::new(),
        }),
        api: SourceRead::Ok(vec![crate::cloud::Eni {
            id: eni.into(),
            mac,
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-1".into(),
            state: "AVAILABLE".into(),
            primary: false,
            attachment: None,
            ips: [(10, true), (14, false), (100, false)]
                .map(|(n, primary)| crate::cloud::EniIp {
                    addr: ip(n),
                    primary,
                    state: "AVAILABLE".into(),
                    eip: None,
                })
                .to_vec(),
        }]),
        metadata: SourceRead::Failed("metadata network/interfaces/macs/: HTTP 500".into()),
        exclude: Vec::new(),
        claim_cidrs: vec![crate::net::Cidr::parse("10.0.1.100/32").expect("cidr")],
        claim_orphan_after: std::time::Duration::from_secs(600),
        releasing: Default::default(),
    };
    let mut t = Tracker::default();
    t.observe(&read(1_764_600_000));
    t.observe(&read(1_764_600_600));
    serde_json::to_value(t.report(1_764_600_660, Freshness::Fresh)).expect("json")
}

#[test]
fn drift_table_golden() {
    let expected = "\
drift report: read-only, enisync never acts on it
data read 2025-12-01T14:50:00Z (read now for this request); 2 reads since start

SOURCES
SOURCE    STATE   LAST GOOD READ        ERROR
host      ok      2025-12-01T14:50:00Z  -
api       ok      2025-12-01T14:50:00Z  -
metadata  failed  -                     metadata network/interfaces/macs/: HTTP 500

COUNTS (the gauges count confirmed findings only: seen in two consecutive reads; a claim_orphan also absent for claim.orphan_after)
CATEGORY           CONFIRMED  UNCONFIRMED  AS OF                 NOTE
leak_candidate     1          0            2025-12-01T14:50:00Z
unbound_on_host    1          0            2025-12-01T14:50:00Z
stale_rule         0          0            2025-12-01T14:50:00Z
metadata_mismatch  0          0            -                     STALE: metadata not read in the last read; values as of then
claim_orphan       1          0            2025-12-01T14:50:00Z

FINDINGS
CATEGORY         STATE      SEEN FOR  FINDING
leak_candidate   confirmed  11m       10.0.1.14 bound to eni-1 (52:54:00:12:34:56), on no link
unbound_on_host  confirmed  11m       10.0.1.50 on eth1 (eni-1): the cloud binds it to no ENI of this instance
claim_orphan     confirmed  11m       floating IP 10.0.1.100 (claim.cidrs) bound to eni-1 (52:54:00:12:34:56), on no link: `enisync release 10.0.1.100` frees it

To act on a finding, by hand: README, \"Drift report\" (confirm an IP is unused first).
";
    assert_eq!(render_drift(&drift_doc("eth1", "eni-1")), expected);
}

#[test]
fn control_characters_in_drift_names_from_the_host_and_the_cloud_are_escaped() {
    let table = render_drift(&drift_doc("eth\u{1b}[2J", "eni-\u{202e}1"));
    assert!(
        !table.contains('\u{1b}') && !table.contains('\u{202e}'),
        "{table}"
    );
    assert!(table.contains("eth\\x1b[2J"), "{table}");
    assert!(table.contains("eni-\\u{202e}1"), "{table}");
}
