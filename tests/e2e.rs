//! End to end: the real `enisync` binary, the real kernel in a network namespace of the
//! test's own, and the fake Tencent Cloud (a real HTTP server) inside that namespace.
//! Letters name the acceptance items of the daemon issue.

#[path = "common/sandbox.rs"]
mod sandbox;

use std::time::Duration;

use sandbox::{ENI1, Layout, Sandbox, aux};

const QUIET: Duration = Duration::from_millis(1500);
const SOON: Duration = Duration::from_secs(15);

fn params_ips(call: &enisync_fakecloud::Call) -> String {
    call.params.to_string()
}

/// (a) One aux IP deleted: exactly one API 3.0 unassign with the right ENI and IP, the
/// task polled to SUCCESS, the IP gone from the cloud, and its `from` rule gone.
#[test]
fn a_v3_one_removal_one_call_task_success_rule_gone() {
    let mut sb = Sandbox::new("a", Layout::default());
    sb.ip("rule add from 10.0.1.12/32 lookup 3501 pref 3500");
    sb.start();
    sb.ip("addr del 10.0.1.12/24 dev eth1");
    let calls = sb.wait_unassigns(1, SOON);
    assert_eq!(calls.len(), 1);
    let p = params_ips(&calls[0]);
    assert!(p.contains(ENI1) && p.contains("10.0.1.12"), "{p}");
    sb.wait_log("IPs returned to the VPC", SOON);
    assert!(!sb.ips_in_cloud().contains(&aux(12)));
    assert!(sb.ips_in_cloud().contains(&aux(13)));
    assert!(
        !sb.fake.calls_of("DescribeVpcTaskResult").is_empty(),
        "task was polled"
    );
    let rules = sb.ip("rule show");
    assert!(!rules.contains("10.0.1.12"), "stale rule removed: {rules}");
    std::thread::sleep(QUIET);
    assert_eq!(sb.unassigns().len(), 1, "exactly one call");
}
