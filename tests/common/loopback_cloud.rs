//! The fake Tencent Cloud on loopback for the client tests (no namespace, no root): one
//! instance, one attached ENI (primary 10.0.1.10) with the secondaries a test asks for,
//! one long-term key, 50 ms tasks; the credentials that key gives the client, and the
//! client settings these tests share (fast backoff and polls, generous rates).

#![allow(dead_code)] // each test binary uses a different part of it
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use enisync::backoff::Backoff;
use enisync::cloud::client::{CloudSettings, TencentCloud};
use enisync::cloud::clock::{ServerClock, SystemClock};
use enisync::cloud::credentials::{CredentialProvider, CredentialSources, Secret};
use enisync::cloud::retry::Rates;
use enisync_fakecloud::{FakeCloud, FakeEni, FakeInstance, FakeServer};

pub const INSTANCE: &str = "ins-1";
pub const ENI: &str = "eni-1";
pub const VPC: &str = "vpc-1";

/// 10.0.1.`last`.
pub fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, last)
}

/// The fake, with secondaries 10.0.1.11 to 10.0.1.`last_secondary` and the key
/// `secret_id`/`secret_key`.
pub fn fake(last_secondary: u8, secret_id: &str, secret_key: &str) -> FakeCloud {
    let fake = FakeCloud::new();
    fake.add_instance(FakeInstance::new(INSTANCE, "ap-guangzhou"))
        .unwrap();
    fake.add_eni(
        FakeEni::new(
            ENI,
            "52:54:00:12:34:56",
            VPC,
            "subnet-1",
            "10.0.1.0/24",
            ip(10),
        )
        .attached(INSTANCE, 1)
        .secondaries((11..=last_secondary).map(ip)),
    )
    .unwrap();
    fake.add_key(secret_id, secret_key);
    fake.set_task_duration(Duration::from_millis(50));
    fake
}

pub fn serve(fake: &FakeCloud) -> FakeServer {
    fake.serve(TcpListener::bind("127.0.0.1:0").unwrap())
        .unwrap()
}

/// Credentials from a key pair given in the config, and nothing else.
pub fn config_keys(id: &str, key: &str) -> Arc<CredentialProvider> {
    let sources = CredentialSources {
        systemd_dir: None,
        config_keys: Some((Secret::new(id), Secret::new(key))),
        env: Box::new(|_| None),
        metadata: None,
    };
    Arc::new(
        CredentialProvider::new(sources, Arc::new(ServerClock::new(Arc::new(SystemClock))))
            .unwrap(),
    )
}

/// Client settings for `server`: both protocols' endpoints (plain HTTP allowed), a
/// 500 ms request timeout, 100 calls/s for every action (the fake, not the client,
/// limits when a test wants it), 5-50 ms backoff over 4 sends, task polls from 20 ms to
/// 50 ms for at most 3 s. A test changes what it is about with `..settings(server)`.
pub fn settings(server: &FakeServer) -> CloudSettings {
    CloudSettings {
        v3_endpoint: server.v3_endpoint(),
        legacy_endpoint: server.legacy_endpoint(),
        total_timeout: Duration::from_millis(500),
        rates: Rates {
            unassign: 100.0,
            unassign_ipv6: 100.0,
            describe: 100.0,
            task_result: 100.0,
            migrate: 100.0,
            assign: 100.0,
        },
        backoff: Backoff {
            base: Duration::from_millis(5),
            cap: Duration::from_millis(50),
        },
        max_attempts: 4,
        task_poll_start: Duration::from_millis(20),
        task_poll_cap: Duration::from_millis(50),
        task_cap: Duration::from_secs(3),
        allow_plain_http: true,
        ..CloudSettings::new("ap-guangzhou", INSTANCE)
    }
}

/// A client built from `settings` with the key `secret_id`/`secret_key`.
pub fn client(settings: CloudSettings, secret_id: &str, secret_key: &str) -> TencentCloud {
    TencentCloud::new(settings, config_keys(secret_id, secret_key)).unwrap()
}
