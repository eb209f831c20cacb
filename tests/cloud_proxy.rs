//! `HTTPS_PROXY` is honoured by the API client, and the metadata client never uses a
//! proxy. A test binary of its own because it sets process environment variables.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use enisync::cloud::client::{CloudSettings, TencentCloud};
use enisync::cloud::clock::{ServerClock, SystemClock};
use enisync::cloud::credentials::{CredentialProvider, CredentialSources, Secret};
use enisync::cloud::metadata::{MetadataClient, MetadataSettings};
use enisync::cloud::{Cloud, ErrorClass};
use enisync_fakecloud::{FakeCloud, FakeInstance};

/// A "proxy" that reports the first line of each request and refuses it.
fn refusing_proxy() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let first = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned();
            let _ = tx.send(first);
            let _ = stream.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n");
        }
    });
    (url, rx)
}

#[test]
fn https_proxy_is_honoured_and_metadata_bypasses_proxies() {
    let (proxy, requests) = refusing_proxy();
    // SAFETY: this test binary holds this one test, and no other thread of it reads or
    // writes the environment while these run (the proxy thread does neither).
    unsafe {
        std::env::set_var("HTTPS_PROXY", &proxy);
        std::env::set_var("HTTP_PROXY", &proxy);
        std::env::remove_var("NO_PROXY");
        std::env::remove_var("no_proxy");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let sources = CredentialSources {
            systemd_dir: None,
            config_keys: Some((Secret::new("AKIDx"), Secret::new("key"))),
            env: Box::new(|_| None),
            metadata: None,
        };
        let clock = Arc::new(ServerClock::new(Arc::new(SystemClock)));
        let credentials = Arc::new(CredentialProvider::new(sources, clock).unwrap());
        let cloud = TencentCloud::new(
            CloudSettings {
                max_attempts: 1,
                ..CloudSettings::new("ap-guangzhou", "ins-1")
            },
            credentials,
        )
        .unwrap();
        // The default endpoint, reached only through the proxy, which refuses.
        let error = cloud.list_enis().await.unwrap_err();
        assert_eq!(error.class, ErrorClass::RetryLater, "{error}");
        let first = requests.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first, "CONNECT vpc.tencentcloudapi.com:443 HTTP/1.1");

        // The metadata service on loopback answers directly despite HTTP_PROXY.
        let fake = FakeCloud::new();
        fake.add_instance(FakeInstance::new("ins-1", "ap-guangzhou"))
            .unwrap();
        let server = fake
            .serve(TcpListener::bind("127.0.0.1:0").unwrap())
            .unwrap();
        let metadata = MetadataClient::new(&MetadataSettings {
            base_url: server.metadata_endpoint(),
            ..MetadataSettings::default()
        })
        .unwrap();
        assert_eq!(
            metadata.instance_id().await.unwrap().as_deref(),
            Some("ins-1")
        );
        assert!(
            requests.try_recv().is_err(),
            "metadata went through the proxy"
        );
    });
}
