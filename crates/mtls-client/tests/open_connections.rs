//! Connections a client keeps open do not outlive the trust in their server: a `Client` (and a
//! `Pool`) whose server is revoked while a keep-alive connection to it is pooled does not send
//! the next request on that connection; it opens a new one, whose handshake refuses the
//! server. A revocation of some other certificate leaves the connection in use. Real peers on
//! 127.0.0.1: a TLS server that answers any number of requests per connection and counts its
//! connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::get;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use mtls_test_util::{TestLeaf, TestPki};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves `leaf` on 127.0.0.1, answering every request of a connection with `200 ok` (HTTP/1.1
/// keep-alive). Returns the address and the count of connections whose handshake completed.
async fn keep_alive_server(
    pki: &TestPki,
    leaf: &TestLeaf,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let chain: Vec<CertificateDer<'static>> = vec![leaf.cert.der.clone(), pki.intermediate_der()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.pkcs8_der().to_vec()));
    let mut config = rustls::ServerConfig::builder_with_provider(mtls_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    // Requests without a body: each ends at its blank line.
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if tls.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// A replaced CRL file is looked for at most once a second while connections stay open.
async fn after_the_next_look() {
    tokio::time::sleep(StdDuration::from_millis(1_200)).await;
}

struct Setup {
    pki: TestPki,
    leaf: TestLeaf,
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    crl: std::path::PathBuf,
    builder: mtls_client::ClientBuilder,
    _dir: tempfile::TempDir,
}

async fn setup(name: &str) -> Setup {
    let pki = TestPki::new(name);
    let leaf = pki.server(&["localhost"]);
    let (addr, connections) = keep_alive_server(&pki, &leaf).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, format!("{}{}", pki.intermediate.pem(), pki.root.pem())).unwrap();
    let crl = dir.path().join("crl.pem");
    pki.write_crl(&crl, 1, &[]);
    let builder = mtls_client::ClientBuilder::new()
        .ca_file(&ca)
        .resolve("localhost", addr)
        .http1_only();
    Setup {
        pki,
        leaf,
        addr,
        connections,
        crl,
        builder,
        _dir: dir,
    }
}

#[tokio::test]
async fn a_server_revoked_by_a_replaced_crl_file_loses_its_pooled_connection() {
    let s = setup("open-crl").await;
    let client = s.builder.clone().crl_file(&s.crl).build().unwrap();
    assert_eq!(get(&client, s.addr).await, Ok(200));
    assert_eq!(get(&client, s.addr).await, Ok(200));
    assert_eq!(
        s.connections.load(Ordering::SeqCst),
        1,
        "keep-alive reuses the connection"
    );

    // Someone else is revoked: the connection stays in use.
    let other = s.pki.server(&["other.example"]);
    s.pki.write_crl(&s.crl, 2, &[&other]);
    after_the_next_look().await;
    assert_eq!(get(&client, s.addr).await, Ok(200));
    assert_eq!(
        s.connections.load(Ordering::SeqCst),
        1,
        "an unrelated revocation"
    );

    // The server is revoked: the pooled connection is not used, the new one is refused.
    s.pki.write_crl(&s.crl, 3, &[&other, &s.leaf]);
    after_the_next_look().await;
    let e = get(&client, s.addr).await.unwrap_err();
    assert!(e.contains("Revoked"), "{e}");
    assert_eq!(
        get(&client, s.addr)
            .await
            .map_err(|e| e.contains("Revoked")),
        Err(true)
    );
    // A clone shares the state.
    let e = get(&client.clone(), s.addr).await.unwrap_err();
    assert!(e.contains("Revoked"), "{e}");
}

#[tokio::test]
async fn a_server_revoked_by_the_feed_loses_its_pooled_connection_at_once() {
    let s = setup("open-feed").await;
    let pushed = Arc::new(mtls_verify::PushedRevocations::new(StdDuration::from_secs(
        600,
    )));
    let crl = mtls_tls::load_crls(std::slice::from_ref(&s.crl)).unwrap();
    pushed
        .seed_from_crl(
            vec![s.pki.intermediate_der()],
            &crl[0],
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    let sources = mtls_verify::RevocationSources {
        pushed: Some(pushed.clone()),
        ..Default::default()
    };
    let client = s
        .builder
        .clone()
        .revocation_sources(sources)
        .build()
        .unwrap();
    assert_eq!(get(&client, s.addr).await, Ok(200));
    assert_eq!(get(&client, s.addr).await, Ok(200));
    assert_eq!(s.connections.load(Ordering::SeqCst), 1);

    let issuer = mtls_verify::issuer_key_of(&s.pki.intermediate.key().public_key_spki());
    let other = s.pki.server(&["other.example"]);
    pushed.insert([(issuer, &other.cert.serial)]);
    assert_eq!(get(&client, s.addr).await, Ok(200));
    assert_eq!(
        s.connections.load(Ordering::SeqCst),
        1,
        "an unrelated revocation"
    );

    // No wait: the feed's revocations are seen by the very next request.
    pushed.insert([(issuer, &s.leaf.cert.serial)]);
    let e = get(&client, s.addr).await.unwrap_err();
    assert!(e.contains("Revoked"), "{e}");
}

#[tokio::test]
async fn a_pool_closes_its_connections_to_an_upstream_revoked_meanwhile() {
    use http_body_util::{BodyExt, Empty};
    let s = setup("open-pool").await;
    let pool = s
        .builder
        .clone()
        .crl_file(&s.crl)
        .build_pool::<Empty<bytes::Bytes>>(mtls_client::pool::PoolTarget::Https {
            addr: s.addr.to_string(),
            server_name: rustls_pki_types::ServerName::try_from("localhost").unwrap(),
        })
        .unwrap();
    let send = || async {
        let req = http::Request::get("/")
            .header("host", "localhost")
            .body(Empty::new())
            .unwrap();
        let resp = pool.send(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<u16, String>(status)
    };
    assert_eq!(send().await, Ok(200));
    assert_eq!(send().await, Ok(200));
    assert_eq!(pool.connections_opened(), 1);
    assert_eq!(pool.idle_connections(), 1);

    s.pki.write_crl(&s.crl, 2, &[&s.leaf]);
    after_the_next_look().await;
    let e = send().await.unwrap_err();
    assert!(e.contains("Revoked") || e.contains("revoked"), "{e}");
    assert_eq!(pool.idle_connections(), 0);
    assert_eq!(
        s.connections.load(Ordering::SeqCst),
        1,
        "the refused handshake is not counted"
    );
}

/// The servers of pooled connections are looked at before requests, but verified again only
/// when something changed: no revocation decision is counted (or, in soft-fail, logged) per
/// look while nothing did.
#[tokio::test]
async fn looking_at_pooled_servers_decides_nothing_again_while_nothing_changed() {
    let s = setup("open-quiet").await;
    let decisions = Arc::new(mtls_verify::RevocationDecisions::default());
    let sources = mtls_verify::RevocationSources {
        decisions: Some(decisions.clone()),
        ..Default::default()
    };
    let client = s
        .builder
        .clone()
        .crl_file(&s.crl)
        .revocation_sources(sources)
        .build()
        .unwrap();
    let decided = || decisions.counts().iter().map(|c| c.2).sum::<u64>();
    assert_eq!(get(&client, s.addr).await, Ok(200));
    let after_handshake = decided();
    assert!(after_handshake > 0, "the handshake's decision is counted");
    for _ in 0..2 {
        after_the_next_look().await;
        assert_eq!(get(&client, s.addr).await, Ok(200));
    }
    assert_eq!(decided(), after_handshake);
    assert_eq!(s.connections.load(Ordering::SeqCst), 1);

    // A new CRL is a change: the server is decided on again, once.
    s.pki.write_crl(&s.crl, 2, &[]);
    after_the_next_look().await;
    assert_eq!(get(&client, s.addr).await, Ok(200));
    assert_eq!(get(&client, s.addr).await, Ok(200));
    assert_eq!(decided(), after_handshake * 2);
    assert_eq!(s.connections.load(Ordering::SeqCst), 1);
}
