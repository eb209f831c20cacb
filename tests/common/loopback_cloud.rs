//! The fake Tencent Cloud on loopback for the client tests (no namespace, no root): one
//! instance, one attached ENI (primary 10.0.1.10) with the secondaries a test asks for,
//! one long-term key, 50 ms tasks; and the credentials that key gives the client.

#![allow(dead_code)] // each test binary uses a different part of it
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use enisync::cloud::clock::{ServerClock, SystemClock};
use enisync::cloud::credentials::{CredentialProvider, CredentialSources, Secret};
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
