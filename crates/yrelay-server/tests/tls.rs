//! `wss://` through rustls, with a certificate made for the test.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;

use common::{text_update, Client, Msg, TestServer};
use tokio_tungstenite::Connector;
use yrelay_doc::codec::encode_sync_update;

fn client_config(cert_der: rustls::pki_types::CertificateDer<'static>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[tokio::test]
async fn wss_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let cert_der = cert.cert.der().clone();

    let (cp, kp) = (cert_path.clone(), key_path.clone());
    let server = TestServer::start_with(move |c| {
        c.tls_cert = Some(cp);
        c.tls_key = Some(kp);
    })
    .await;
    let url = format!("wss://localhost:{}/secure-room", server.addr.port());
    let connector = Connector::Rustls(Arc::new(client_config(cert_der)));

    let mut clients = Vec::new();
    for _ in 0..2 {
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            &url,
            None,
            true,
            Some(connector.clone()),
        )
        .await
        .unwrap();
        let mut c = Client { ws };
        assert!(matches!(c.recv().await, Msg::SyncStep1(_)));
        clients.push(c);
    }
    let update = text_update(5, "over tls");
    clients[0].send(encode_sync_update(&update)).await;
    for c in &mut clients {
        assert_eq!(c.recv().await, Msg::Update(update.clone()));
    }

    // A plain-text client cannot talk to the TLS port; the server keeps serving.
    let plain = format!("ws://127.0.0.1:{}/secure-room", server.addr.port());
    assert!(tokio_tungstenite::connect_async(&plain).await.is_err());
    let update2 = text_update(6, "still");
    clients[1].send(encode_sync_update(&update2)).await;
    assert_eq!(clients[0].recv().await, Msg::Update(update2));
}

#[tokio::test]
async fn unusable_tls_files_fail_at_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let config = yrelay_server::Config {
        data_dir: dir.path().join("data"),
        tls_cert: Some(empty.clone()),
        tls_key: Some(empty),
        ..yrelay_server::Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = yrelay_server::run(listener, config, std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no certificate"), "{err}");
}
