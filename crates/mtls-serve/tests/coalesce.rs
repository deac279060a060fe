//! The session ticket goes out with the first response (one write, not two), and nothing the
//! client waits for is held: TLS 1.2's last flight and a refused handshake's alert arrive.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use mtls_serve::accept::handshake;
use mtls_test_util::TestPki;
use rustls::client::Resumption;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

struct Setup {
    server: Arc<ServerConfig>,
    roots: RootCertStore,
}

fn setup() -> Setup {
    let pki = TestPki::new("coalesce");
    let leaf = pki.server(&["localhost"]);
    let chain = vec![leaf.cert.der.clone(), pki.intermediate_der()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.pkcs8_der().to_vec()));
    let mut server = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    server.send_tls13_tickets = 1;
    let mut roots = RootCertStore::empty();
    roots.add(pki.root_der()).unwrap();
    Setup {
        server: Arc::new(server),
        roots,
    }
}

fn client(
    roots: &RootCertStore,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth()
}

/// Serves `n` connections: handshake, then for every line received, `ok\n`.
async fn serve(config: Arc<ServerConfig>, n: usize) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..n {
            let (tcp, _) = listener.accept().await.unwrap();
            let config = config.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = handshake(config, tcp, Duration::from_secs(5)).await else {
                    return;
                };
                let mut buf = [0u8; 64];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if tls.write_all(b"ok\n").await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

#[tokio::test]
async fn ticket_goes_out_with_the_first_answer_and_resumes() {
    let s = setup();
    let addr = serve(s.server.clone(), 2).await;
    let mut config = client(&s.roots, &[&rustls::version::TLS13]);
    config.resumption = Resumption::in_memory_sessions(8);
    let connector = TlsConnector::from(Arc::new(config));

    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector.connect(localhost(), tcp).await.unwrap();
    // The handshake is over and the client says nothing: the ticket is held by the server.
    let mut buf = [0u8; 16];
    let early = tokio::time::timeout(Duration::from_millis(300), tls.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the server sent something before any answer: {early:?}"
    );
    assert_eq!(tls.get_ref().1.tls13_tickets_received(), 0);
    // The first answer carries it.
    tls.write_all(b"hello\n").await.unwrap();
    let n = tls.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"ok\n");
    assert_eq!(tls.get_ref().1.tls13_tickets_received(), 1);
    drop(tls);

    // And it resumes.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector.connect(localhost(), tcp).await.unwrap();
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    tls.write_all(b"again\n").await.unwrap();
    let n = tls.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"ok\n");
}

#[tokio::test]
async fn tls12_handshake_completes() {
    let s = setup();
    let addr = serve(s.server.clone(), 1).await;
    let connector = TlsConnector::from(Arc::new(client(&s.roots, &[&rustls::version::TLS12])));
    let tcp = TcpStream::connect(addr).await.unwrap();
    // The server's Finished is the last flight of the handshake: held, this would hang.
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(localhost(), tcp))
        .await
        .expect("TLS 1.2 handshake hung")
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    tls.write_all(b"hello\n").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tls.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"ok\n");
}

#[tokio::test]
async fn refused_handshake_sends_its_alert() {
    let s = setup();
    // A server that refuses the client's hello (no common application protocol) writes an
    // alert in the poll that fails the handshake: it must reach the client.
    let mut only_x = ServerConfig::clone(&s.server);
    only_x.alpn_protocols = vec![b"x-only".to_vec()];
    let addr12 = serve(Arc::new(only_x), 1).await;
    let mut config = client(&s.roots, &[&rustls::version::TLS13]);
    config.alpn_protocols = vec![b"x-other".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr12).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), connector.connect(localhost(), tcp))
        .await
        .expect("refused handshake hung")
        .unwrap_err();
    let inner = err.get_ref().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        inner.contains("NoApplicationProtocol")
            || err.to_string().contains("NoApplicationProtocol"),
        "the server's alert did not arrive: {err} / {inner}"
    );
}
