//! `wss://` and `https://` with a private CA: trusted through `extra_root_pem`, refused
//! without it.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../../yrelay-server/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use yrelay_client::{Client, ClientConfig, ClientError, Endpoint, RestClient, Transport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_http_clients_converge_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut server = TestServer::start_with(move |c| {
        c.tls_cert = Some(cert_path);
        c.tls_key = Some(key_path);
    })
    .await;
    let port = server.addr.port();
    let ca = cert.cert.pem().into_bytes();

    let ws = Client::open(ClientConfig {
        extra_root_pem: Some(ca.clone()),
        ..ClientConfig::new("secure").server(format!("wss://localhost:{port}"))
    })
    .await
    .unwrap();
    let http = Client::open(ClientConfig {
        extra_root_pem: Some(ca.clone()),
        ..ClientConfig::new("secure")
            .server(format!("https://localhost:{port}"))
            .transport(Transport::Http {
                poll: Duration::from_millis(100),
            })
    })
    .await
    .unwrap();
    ws.wait_synced(Duration::from_secs(10)).await.unwrap();
    http.wait_synced(Duration::from_secs(10)).await.unwrap();
    ws.append_text("t", "[wss]").unwrap();
    http.append_text("t", "[https]").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (a, b) = (ws.text("t"), http.text("t"));
        if a == b && a.contains("[wss]") && a.contains("[https]") {
            break;
        }
        assert!(Instant::now() < deadline, "no convergence: {a:?} vs {b:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Without the CA the certificate is refused: a clear error, never a silent success.
    let endpoint = Endpoint::parse(&format!("https://localhost:{port}")).unwrap();
    let untrusting = RestClient::new(&endpoint, None, None).unwrap();
    let err = untrusting.state_vector("secure").await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
    let blind = Client::open(ClientConfig::new("secure").server(format!("wss://localhost:{port}")))
        .await
        .unwrap();
    assert!(blind.wait_synced(Duration::from_millis(800)).await.is_err());

    // A CA file that holds no certificate is refused at open.
    let bad = Client::open(ClientConfig {
        extra_root_pem: Some(b"not a pem".to_vec()),
        ..ClientConfig::new("secure").server(format!("wss://localhost:{port}"))
    })
    .await
    .unwrap_err();
    assert_eq!(bad.to_string(), "CA certificate: no certificate in the PEM");

    ws.close().await.unwrap();
    http.close().await.unwrap();
    blind.close().await.unwrap();
    server.stop().await;
}
