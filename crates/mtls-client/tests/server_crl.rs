//! `ClientBuilder::crl_file` follows the file for a client that lives on: a server revoked by a
//! CRL written over the file after the client was built is refused from the next connection on;
//! a replacement that does not load, or an older CRL (a lower CRL number), leaves the last good
//! CRL in force. Real peers on 127.0.0.1: a TLS server answering each request on a connection
//! of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::get;

use std::path::Path;
use std::sync::Arc;

use mtls_test_util::{TestLeaf, TestPki};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves `leaf` (with the intermediate) on 127.0.0.1: every connection gets one `200` and is
/// closed, so every request makes a new handshake. Returns the address.
async fn server(pki: &TestPki, leaf: &TestLeaf) -> std::net::SocketAddr {
    let chain: Vec<CertificateDer<'static>> = vec![leaf.cert.der.clone(), pki.intermediate_der()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.pkcs8_der().to_vec()));
    let config = rustls::ServerConfig::builder_with_provider(mtls_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the server ends the handshake: nothing to answer.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// Writes `data` over `path` as a publisher does: a new file renamed over the old one.
fn replace(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_crl_file_replaced_after_the_client_was_built_is_used_and_a_bad_or_older_one_is_not() {
    let pki = TestPki::new("server-crl");
    let leaf = pki.server(&["localhost"]);
    let addr = server(&pki, &leaf).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, format!("{}{}", pki.intermediate.pem(), pki.root.pem())).unwrap();
    let crl = dir.path().join("crl.pem");
    pki.write_crl(&crl, 1, &[]);
    // Soft-fail: a client that dropped its CRL would accept the server again.
    let client = mtls_client::ClientBuilder::new()
        .ca_file(&ca)
        .crl_file(&crl)
        .soft_fail_revocation()
        .resolve("localhost", addr)
        .build()
        .unwrap();
    assert_eq!(get(&client, addr).await, Ok(200));

    // The server is revoked: the next connection refuses it.
    pki.write_crl(&crl, 2, &[&leaf]);
    let e = get(&client, addr).await.unwrap_err();
    assert!(e.contains("Revoked"), "{e}");

    // A file that does not load: the revoking CRL stays in force.
    replace(&crl, b"not a CRL");
    let e = get(&client, addr).await.unwrap_err();
    assert!(e.contains("Revoked"), "{e}");

    // An older CRL (number 1 < 2), correctly signed and listing nothing: refused as a replay.
    pki.write_crl(&crl, 1, &[]);
    let e = get(&client, addr).await.unwrap_err();
    assert!(e.contains("Revoked"), "{e}");

    // A newer one is used again (after the refused files), here listing nothing.
    pki.write_crl(&crl, 3, &[]);
    assert_eq!(get(&client, addr).await, Ok(200));
}
