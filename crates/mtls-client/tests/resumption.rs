//! When a client resumes TLS sessions: never when its identity follows files (a session made
//! with the certificate before a renewal could be resumed after it, the server restoring the
//! old certificate) nor when it requires an OCSP staple (a resumed session skips the check);
//! otherwise it does. Real peers on 127.0.0.1: a rustls server that asks for a client
//! certificate, staples a good OCSP answer, issues tickets, and records for each connection
//! whether it was resumed and which client certificate it speaks for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use mtls_ocsp::{build_request, parse_request, CertStatus, IssuerInfo, Responder};
use mtls_test_util::{TestLeaf, TestPki};
use rustls::HandshakeKind;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the server saw of each connection: resumed or not, and the client leaf.
type Seen = Arc<Mutex<Vec<(HandshakeKind, Vec<u8>)>>>;

/// A "good" OCSP answer about `leaf`, signed by the intermediate.
fn staple(pki: &TestPki, leaf: &TestLeaf) -> Vec<u8> {
    let issuer = IssuerInfo::from_der(pki.intermediate.der()).unwrap();
    let req = build_request(&issuer, &leaf.cert.serial, None).unwrap();
    let req = parse_request(&req, std::slice::from_ref(&issuer)).unwrap();
    let key =
        mtls_pki::PrivateKey::from_pem_or_der(pki.intermediate.key().pkcs8_der(), None).unwrap();
    let responder = Responder::new(&issuer, pki.intermediate.der().to_vec(), key).unwrap();
    let now = OffsetDateTime::now_utc();
    responder
        .sign(
            &req,
            &[CertStatus::Good],
            now,
            now - Duration::minutes(1),
            Some(now + Duration::hours(1)),
        )
        .unwrap()
}

/// Serves `leaf` with a staple; one `200` per connection, then closed (every request a new
/// handshake, resumed if the client offers a ticket).
async fn server(pki: &TestPki, leaf: &TestLeaf) -> (std::net::SocketAddr, Seen) {
    let chain: Vec<CertificateDer<'static>> = vec![leaf.cert.der.clone(), pki.intermediate_der()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.pkcs8_der().to_vec()));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.root_der()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        mtls_tls::provider(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(mtls_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert_with_ocsp(chain, key, staple(pki, leaf))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen) = (acceptor.clone(), seen2.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                {
                    let conn = tls.get_ref().1;
                    let leaf = conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.to_vec())
                        .unwrap_or_default();
                    seen.lock()
                        .unwrap()
                        .push((conn.handshake_kind().unwrap(), leaf));
                }
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
    (addr, seen)
}

async fn get(client: &mtls_client::Client, addr: std::net::SocketAddr) -> u16 {
    client
        .get(format!("https://localhost:{}/", addr.port()))
        .send()
        .await
        .map_err(|e| mtls_client::ca::error_chain(&e))
        .unwrap()
        .status()
        .as_u16()
}

struct Setup {
    pki: TestPki,
    dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    seen: Seen,
}

impl Setup {
    async fn new() -> Setup {
        let pki = TestPki::new("resumption");
        let server_leaf = pki.server(&["localhost"]);
        let (addr, seen) = server(&pki, &server_leaf).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ca.pem"),
            format!("{}{}", pki.intermediate.pem(), pki.root.pem()),
        )
        .unwrap();
        Setup {
            pki,
            dir,
            addr,
            seen,
        }
    }

    /// Writes `leaf` as the client's files (renamed into place, as a renewal does).
    fn write_identity(&self, leaf: &TestLeaf) {
        let dir = self.dir.path();
        let cert = format!("{}{}", leaf.cert.pem(), self.pki.intermediate.pem());
        std::fs::write(dir.join("new.crt"), cert).unwrap();
        mtls_pki::files::write_atomic(
            &dir.join("new.key"),
            leaf.key.to_pem().as_bytes(),
            mtls_pki::files::Visibility::Secret,
            true,
        )
        .unwrap();
        std::fs::rename(dir.join("new.crt"), dir.join("client.crt")).unwrap();
        std::fs::rename(dir.join("new.key"), dir.join("client.key")).unwrap();
    }

    fn builder(&self) -> mtls_client::ClientBuilder {
        mtls_client::ClientBuilder::new()
            .ca_file(self.dir.path().join("ca.pem"))
            .resolve("localhost", self.addr)
    }

    fn kinds(&self) -> Vec<HandshakeKind> {
        self.seen.lock().unwrap().iter().map(|(k, _)| *k).collect()
    }
}

/// The control: a client with a fixed identity resumes (so the server does issue and accept
/// tickets, and the tests below show something).
#[tokio::test]
async fn a_client_with_a_fixed_identity_resumes() {
    let s = Setup::new().await;
    let leaf = s.pki.client("fixed");
    let credential = mtls_tls::credential_from_parts(
        vec![leaf.cert.der.clone(), s.pki.intermediate_der()],
        &leaf.key,
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let client = s.builder().identity(credential).build().unwrap();
    for _ in 0..3 {
        assert_eq!(get(&client, s.addr).await, 200);
    }
    assert!(
        s.kinds().contains(&HandshakeKind::Resumed),
        "{:?}",
        s.kinds()
    );
}

/// An identity that follows its files: every connection is a full handshake with the
/// certificate in the files, so one renewed on disk speaks from the next connection on and a
/// session made with the old one is never resumed.
#[tokio::test]
async fn a_client_whose_identity_follows_files_never_resumes() {
    let s = Setup::new().await;
    let (old, new) = (
        s.pki.client("before-renewal"),
        s.pki.client("after-renewal"),
    );
    s.write_identity(&old);
    let client = s
        .builder()
        .identity_files(
            s.dir.path().join("client.crt"),
            s.dir.path().join("client.key"),
        )
        .build()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(get(&client, s.addr).await, 200);
    }
    s.write_identity(&new);
    for _ in 0..2 {
        assert_eq!(get(&client, s.addr).await, 200);
    }
    let seen = s.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5);
    for (i, (kind, leaf)) in seen.iter().enumerate() {
        assert_eq!(
            *kind,
            HandshakeKind::Full,
            "connection {i}: {:?}",
            s.kinds()
        );
        let want = if i < 3 { &old } else { &new };
        assert_eq!(leaf, &want.cert.der.to_vec(), "connection {i}");
    }
}

/// A client that requires a staple checks it on every connection: a resumed session would
/// skip the check (rustls does not verify the server again on resumption).
#[tokio::test]
async fn a_client_requiring_a_staple_never_resumes() {
    let s = Setup::new().await;
    let leaf = s.pki.client("stapled");
    let credential = mtls_tls::credential_from_parts(
        vec![leaf.cert.der.clone(), s.pki.intermediate_der()],
        &leaf.key,
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let client = s
        .builder()
        .identity(credential)
        .require_ocsp_staple()
        .build()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(get(&client, s.addr).await, 200);
    }
    assert_eq!(s.kinds(), vec![HandshakeKind::Full; 3]);
}
