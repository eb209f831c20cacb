//! The HTTPS listener: the same surfaces behind TLS, trusted through an extra CA.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use enisync_fakecloud::TlsConfig;
use serde_json::json;

use crate::common::*;

const CA: &str = include_str!("../data/tls-ca.pem");

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn tls_config() -> TlsConfig {
    TlsConfig::from_pem_files(&data("tls-server.pem"), &data("tls-server.key")).expect("TLS")
}

fn trusting_client() -> reqwest::Client {
    let certs = reqwest::Certificate::from_pem_bundle(CA.as_bytes()).expect("CA PEM");
    enisync::cloud::http_client_builder()
        .timeout(Duration::from_secs(5))
        .tls_certs_merge(certs)
        .build()
        .expect("client")
}

/// Serves `cloud` over HTTPS (the test CA's certificate) on a free loopback port.
fn serve_tls(cloud: &enisync_fakecloud::FakeCloud) -> enisync_fakecloud::FakeServer {
    cloud
        .serve_tls(
            TcpListener::bind("127.0.0.1:0").expect("bind"),
            &tls_config(),
        )
        .expect("serve")
}

#[tokio::test]
async fn https_serves_metadata_and_signed_api_calls() {
    let cloud = standard_cloud();
    let server = serve_tls(&cloud);
    assert!(server.v3_endpoint().starts_with("https://127.0.0.1:"));
    let env = Env {
        cloud,
        server,
        http: trusting_client(),
    };

    let id = env
        .http
        .get(format!("{}instance-id", env.server.metadata_endpoint()))
        .send()
        .await
        .expect("metadata over HTTPS")
        .text()
        .await
        .expect("text");
    assert_eq!(id, INSTANCE);

    let r = env
        .v3(
            "UnassignPrivateIpAddresses",
            json!({"NetworkInterfaceId": ENI_A, "PrivateIpAddresses": [{"PrivateIpAddress": "10.0.1.12"}]}),
        )
        .await;
    assert_eq!(code(&r), "Success", "{r}");
    let calls = env.cloud.calls_of("UnassignPrivateIpAddresses");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].source.ip().to_string(), "127.0.0.1");
}

#[tokio::test]
async fn https_refuses_untrusted_clients_and_plain_http() {
    let cloud = standard_cloud();
    let server = serve_tls(&cloud);
    let plain = enisync::cloud::http_client_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    // Without the CA the handshake fails; plain HTTP to the TLS port gets no answer.
    let untrusted = plain.get(server.metadata_endpoint()).send().await;
    assert!(untrusted.is_err(), "{untrusted:?}");
    let http = plain
        .get(format!("http://{}/latest/meta-data/", server.addr()))
        .send()
        .await;
    assert!(http.is_err(), "{http:?}");
    assert!(cloud.calls().is_empty());
    // The server is still fine afterwards.
    let ok = trusting_client()
        .get(server.metadata_endpoint())
        .send()
        .await
        .expect("trusted request");
    assert_eq!(ok.status().as_u16(), 200);
}

#[test]
fn bad_pem_files_are_named_in_the_error() {
    let err = TlsConfig::from_pem_files(&data("tls-server.key"), &data("tls-server.key"))
        .expect_err("a key is not a certificate");
    assert!(err.to_string().contains("tls-server.key"), "{err}");
    let err = TlsConfig::from_pem_files(&data("tls-server.pem"), &data("tls-ca.pem"))
        .expect_err("a certificate is not a key");
    assert!(err.to_string().contains("tls-ca.pem"), "{err}");
}
