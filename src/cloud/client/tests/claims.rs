//! The claim calls: exact bytes on the wire, the send policy per call (Migrate once,
//! Assign retried under one token), and hostile or odd replies as classified errors.

use serde_json::{Value, json};

use super::*;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);
/// An Assign's answer for [`VIP`].
const ASSIGNED: &str = r#"{"Response":{"PrivateIpAddressSet":[{"PrivateIpAddress":"10.0.1.100","State":"PENDING"}],"RequestId":"task-9"}}"#;

/// One ENI listing `ips` in `vpc`.
fn holder(id: &str, vpc: &str, ips: &[&str]) -> String {
    let set: Vec<String> = ips
        .iter()
        .map(|ip| format!(r#"{{"PrivateIpAddress":"{ip}","Primary":false,"State":"AVAILABLE"}}"#))
        .collect();
    format!(
        r#"{{"NetworkInterfaceId":"{id}","MacAddress":"02:00:00:00:00:01","VpcId":"{vpc}","SubnetId":"s","Attachment":{{"InstanceId":"ins-peer","DeviceIndex":1}},"PrivateIpAddressSet":[{}]}}"#,
        set.join(",")
    )
}

fn listing(enis: &[String], total: usize) -> String {
    format!(
        r#"{{"Response":{{"TotalCount":{total},"NetworkInterfaceSet":[{}],"RequestId":"r"}}}}"#,
        enis.join(",")
    )
}

fn body(req: &Recorded) -> Value {
    serde_json::from_slice(&req.body).unwrap()
}

fn error(code: &str) -> String {
    format!(r#"{{"Response":{{"Error":{{"Code":"{code}","Message":"m"}},"RequestId":"r"}}}}"#)
}

#[tokio::test]
async fn the_holder_lookup_filters_on_vpc_and_exact_address_and_checks_the_answer() {
    let answer = listing(
        &[
            holder("eni-peer", "vpc-1", &["10.0.1.100"]),
            // A neighbour a careless service might list: other VPC, or not the address.
            holder("eni-other-vpc", "vpc-2", &["10.0.1.100"]),
            holder("eni-suffix", "vpc-1", &["110.0.1.100"]),
        ],
        3,
    );
    let server = scripted(&[&answer]).await;
    let found = cloud(&server, |_| {})
        .claim_holders("vpc-1", VIP)
        .await
        .unwrap();
    assert_eq!(
        found.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["eni-peer"]
    );
    let req = &server.requests()[0];
    assert_eq!(req.headers["x-tc-action"], "DescribeNetworkInterfaces");
    assert_eq!(
        body(req)["Filters"],
        json!([
            {"Name": "vpc-id", "Values": ["vpc-1"]},
            {"Name": "address-ip", "Values": ["10.0.1.100"]},
            {"Name": "ip-exact-match", "Values": ["true"]},
        ])
    );
}

#[tokio::test]
async fn hostile_holder_answers_are_classified_errors() {
    let not_an_ip = r#"{"Response":{"TotalCount":1,"NetworkInterfaceSet":[{"NetworkInterfaceId":"e","MacAddress":"02:00:00:00:00:01","VpcId":"vpc-1","SubnetId":"s","PrivateIpAddressSet":[{"PrivateIpAddress":"10.0.1.999"}]}],"RequestId":"r"}}"#;
    let more_than_listed = listing(&[holder("eni-peer", "vpc-1", &["10.0.1.100"])], 5000);
    for answer in [
        "not json",
        r#"{"Response":{}}"#,
        r#"{"Response":{"Error":{},"RequestId":"r"}}"#,
        not_an_ip,
        &more_than_listed,
    ] {
        let server = scripted(&[answer]).await;
        let err = cloud(&server, |s| s.max_attempts = 1)
            .claim_holders("vpc-1", VIP)
            .await
            .unwrap_err();
        assert_eq!(err.code, "Response.Malformed", "{answer}");
        assert_eq!(ClaimFailure::of(&err), ClaimFailure::Busy, "{answer}");
    }
}

/// Migrate has no ClientToken: a transient failure is never re-sent by the client.
#[tokio::test]
async fn a_migrate_is_sent_once_whatever_the_transient_answer() {
    let server = scripted(&[THROTTLED, UNASSIGNED]).await;
    let err = cloud(&server, |_| {})
        .claim_migrate("eni-peer", "eni-mine", VIP, &|| true)
        .await
        .unwrap_err();
    assert_eq!(ClaimFailure::of(&err), ClaimFailure::Busy);
    assert_eq!(server.requests().len(), 1);

    let server = scripted(&[UNASSIGNED]).await;
    let task = cloud(&server, |_| {})
        .claim_migrate("eni-peer", "eni-mine", VIP, &|| true)
        .await
        .unwrap();
    assert_eq!(task.task_id, "task-1");
    assert_eq!(task.protocol, Protocol::V3);
    let req = &server.requests()[0];
    assert_eq!(req.headers["x-tc-action"], "MigratePrivateIpAddress");
    assert_eq!(
        body(req),
        json!({"SourceNetworkInterfaceId": "eni-peer",
               "DestinationNetworkInterfaceId": "eni-mine",
               "PrivateIpAddress": "10.0.1.100"})
    );
}

#[tokio::test]
async fn migrate_and_assign_failures_mean_what_a_claim_needs() {
    let c = |answer: String| async move {
        let server = scripted(&[&answer]).await;
        let c = cloud(&server, |s| s.max_attempts = 1);
        let token = ClientToken::for_claim("eni-mine", VIP, 1).unwrap();
        (
            c.claim_migrate("eni-peer", "eni-mine", VIP, &|| true)
                .await
                .unwrap_err(),
            c.claim_assign("eni-mine", VIP, &token, &|| true)
                .await
                .unwrap_err(),
        )
    };
    let (migrate, assign) = c(error("ResourceNotFound")).await;
    assert_eq!(ClaimFailure::of(&migrate), ClaimFailure::SourceGone);
    // Our own ENI not found on an assign is no race: refused.
    assert_eq!(ClaimFailure::of(&assign), ClaimFailure::Refused);
    let (migrate, assign) = c(error("ResourceInUse")).await;
    assert_eq!(ClaimFailure::of(&migrate), ClaimFailure::Refused);
    assert_eq!(ClaimFailure::of(&assign), ClaimFailure::Taken);
    for code in [
        "UnsupportedOperation.ResourceMismatch",
        "UnsupportedOperation.PrimaryIp",
        "UnsupportedOperation.IdempotentParameterMismatch",
        "UnauthorizedOperation",
        "SomethingNew.NeverSeen",
    ] {
        let (migrate, assign) = c(error(code)).await;
        assert_eq!(ClaimFailure::of(&migrate), ClaimFailure::Refused, "{code}");
        assert_eq!(ClaimFailure::of(&assign), ClaimFailure::Refused, "{code}");
    }
    let (_, assign) = c(error("UnsupportedOperation.IdempotentProcessing")).await;
    assert_eq!(ClaimFailure::of(&assign), ClaimFailure::Busy);
}

/// Assign carries a ClientToken: re-sent on a transient failure, with the same token.
#[tokio::test]
async fn an_assign_is_retried_under_one_client_token() {
    let server = scripted(&[THROTTLED, ASSIGNED]).await;
    let token = ClientToken::for_claim("eni-mine", VIP, 7).unwrap();
    let task = cloud(&server, |_| {})
        .claim_assign("eni-mine", VIP, &token, &|| true)
        .await
        .unwrap();
    assert_eq!(task.task_id, "task-9");
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    for req in &requests {
        assert_eq!(req.headers["x-tc-action"], "AssignPrivateIpAddresses");
        assert_eq!(
            body(req),
            json!({"NetworkInterfaceId": "eni-mine",
                   "PrivateIpAddresses": [{"PrivateIpAddress": "10.0.1.100"}],
                   "ClientToken": "enisync-eni-mine-10.0.1.100-7"})
        );
    }
}

#[tokio::test]
async fn an_assign_answer_without_the_address_is_malformed() {
    let other = r#"{"Response":{"PrivateIpAddressSet":[{"PrivateIpAddress":"10.0.1.101"}],"RequestId":"task-9"}}"#;
    let server = scripted(&[other]).await;
    let token = ClientToken::for_claim("eni-mine", VIP, 1).unwrap();
    let err = cloud(&server, |s| s.max_attempts = 1)
        .claim_assign("eni-mine", VIP, &token, &|| true)
        .await
        .unwrap_err();
    assert_eq!(err.code, "Response.Malformed");
    assert_eq!(err.request_id.as_deref(), Some("task-9"));
}

#[test]
fn client_tokens_are_bounded_printable_ascii() {
    let long_eni = format!("eni-{}", "x".repeat(60));
    assert!(ClientToken::for_claim(&long_eni, VIP, 1).is_none());
    assert!(ClientToken::new(String::new()).is_none());
    assert!(ClientToken::new("a b".into()).is_none());
    assert!(ClientToken::new("x".repeat(MAX_CLIENT_TOKEN_LEN)).is_some());
    let a = ClientToken::for_claim("eni-12345678", Ipv4Addr::new(255, 255, 255, 255), u64::MAX);
    assert!(a.is_some_and(|t| t.as_str().len() <= MAX_CLIENT_TOKEN_LEN));
}

/// A Migrate and an Assign that waited for their rate token while the operator paused
/// are not sent (the pause gate is asked after the token, right before the request), and
/// the answer means "look again later", where the engine's own pause check holds them.
#[tokio::test]
async fn claim_calls_waiting_for_their_rate_token_are_not_sent_after_a_pause() {
    // An answer both calls accept (the Assign's lists the address).
    let server = scripted(&[ASSIGNED]).await;
    let c = Arc::new(cloud(&server, |s| {
        s.rates.migrate = 2.0;
        s.rates.assign = 2.0;
    }));
    let token = ClientToken::for_claim("eni-mine", VIP, 1).unwrap();
    for assign in [false, true] {
        // Each call has its own budget: spend this one's.
        for _ in 0..2 {
            if assign {
                c.claim_assign("eni-mine", VIP, &token, &|| true).await
            } else {
                c.claim_migrate("eni-peer", "eni-mine", VIP, &|| true).await
            }
            .unwrap();
        }
        let sent = server.requests().len();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let waiting = {
            let (c, open, token) = (Arc::clone(&c), Arc::clone(&open), token.clone());
            tokio::spawn(async move {
                let may_send = move || open.load(std::sync::atomic::Ordering::SeqCst);
                if assign {
                    c.claim_assign("eni-mine", VIP, &token, &may_send).await
                } else {
                    c.claim_migrate("eni-peer", "eni-mine", VIP, &may_send)
                        .await
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(server.requests().len(), sent, "still waiting for its token");
        open.store(false, std::sync::atomic::Ordering::SeqCst);
        let err = waiting.await.unwrap().unwrap_err();
        assert_eq!(err.class, ErrorClass::NotSent);
        assert_eq!(ClaimFailure::of(&err), ClaimFailure::Busy);
        assert_eq!(
            server.requests().len(),
            sent,
            "nothing sent after the pause"
        );
    }
}

/// The account's budget covers every caller, each action on its own: a release burst
/// that spent the unassign budget does not hold a Migrate or an Assign back (they spent
/// it before), and claims spend none of it.
#[tokio::test]
async fn claims_have_budgets_of_their_own() {
    let server = scripted(&[ASSIGNED]).await;
    let c = Arc::new(cloud(&server, |s| {
        s.rates.unassign = 1.0;
        s.rates.migrate = 1.0;
        s.rates.assign = 1.0;
    }));
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 11));
    c.unassign("eni-mine", "vpc-1", &[ip], &|| true)
        .await
        .unwrap();
    let token = ClientToken::for_claim("eni-mine", VIP, 1).unwrap();
    let claims = {
        let (c, token) = (Arc::clone(&c), token.clone());
        tokio::spawn(async move {
            c.claim_migrate("eni-peer", "eni-mine", VIP, &|| true)
                .await
                .unwrap();
            c.claim_assign("eni-mine", VIP, &token, &|| true)
                .await
                .unwrap();
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.requests().len(),
        3,
        "the claims waited for the unassign budget"
    );
    claims.await.unwrap();
    // The next unassign still waits for its own token (1/s), not the claims'.
    let waiting = {
        let c = Arc::clone(&c);
        tokio::spawn(async move { c.unassign("eni-mine", "vpc-1", &[ip], &|| true).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        server.requests().len(),
        3,
        "an unassign token came back early"
    );
    waiting.await.unwrap().unwrap();
    assert_eq!(server.requests().len(), 4);
}
