//! Connections without an accepted client certificate are closed after the header-read timeout
//! (they can only be refused); verified clients keep the long idle timeout; the server's metrics
//! page parses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{routing::get, Router};
use mtls_axum::{MtlsServer, RequireClientCert};
use mtls_test_util::TestPki;
use tokio::io::AsyncReadExt;

fn write(dir: &std::path::Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// The server's chain and key (for `localhost`) and the client CA bundle, written in `dir`.
fn server_files(
    dir: &std::path::Path,
    pki: &TestPki,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let enc = |der: &[u8]| mtls_pki::pem_io::encode("CERTIFICATE", der);
    let chain = |der: &[u8]| format!("{}{}", enc(der), enc(&pki.intermediate_der()));
    let server = pki.server(&["localhost"]);
    let cert = write(dir, "s.pem", chain(&server.cert.der).as_bytes());
    let key = write(dir, "s.key", server.key.to_pem().as_bytes());
    let ca = write(
        dir,
        "ca.pem",
        format!("{}{}", enc(&pki.intermediate_der()), enc(&pki.root_der())).as_bytes(),
    );
    (cert, key, ca)
}

/// Seconds until the server closes a silent TLS connection (capped at `cap`).
async fn closed_after(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
    cap: Duration,
) -> Option<Duration> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 256];
    let until_eof = async {
        // Anything the server sends first (an h2 SETTINGS frame) is not the end.
        while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    match tokio::time::timeout(cap, until_eof).await {
        Ok(()) => Some(start.elapsed()),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_get_the_header_read_timeout_verified_ones_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("axum-idle");
    let (cert, key, ca) = server_files(dir.path(), &pki);
    let mut app = MtlsServer::builder()
        .certificate(&cert, &key)
        .client_ca(&ca)
        .allow_handshake_without_certificate()
        .header_read_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut registry = mtls_serve::metrics::Registry::default();
    app.register_metrics(&mut registry);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RequireClientCert::any_trusted());
    tokio::spawn(app.serve(listener, router));
    let roots = vec![pki.root_der()];
    // Anonymous: closed after about a second.
    let anonymous = mtls_tls::client_config(&roots, None, &[b"h2"]).unwrap();
    let t = closed_after(addr, anonymous, Duration::from_secs(10))
        .await
        .expect("an anonymous idle connection must be closed");
    assert!(
        t >= Duration::from_millis(800) && t < Duration::from_secs(5),
        "{t:?}"
    );
    // Verified: still open after three seconds.
    let client = pki.client("c");
    let cred = mtls_tls::credential_from_parts(
        vec![client.cert.der.clone(), pki.intermediate_der()],
        &client.key,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let verified = mtls_tls::client_config(&roots, Some(&cred), &[b"h2"]).unwrap();
    assert_eq!(
        closed_after(addr, verified, Duration::from_secs(3)).await,
        None,
        "a verified client keeps its connection"
    );
    // The application's metrics: both handshakes counted, a page Prometheus' parser accepts.
    let page = mtls_serve::metrics::render(&registry);
    assert!(
        page.contains("mtls_handshakes_total{result=\"ok\",reason=\"\"} 2"),
        "{page}"
    );
    assert!(
        page.contains("mtls_reloads_total{result=\"failed\"} 0"),
        "{page}"
    );
    let mut py = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nprint(len(list(p(sys.stdin.read()))))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    py.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused:\n{page}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
}

/// An upgraded connection (a WebSocket) has no end of its own: when the server stops, it is
/// closed and the drain ends at once instead of waiting out its 30 s limit for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_closes_upgraded_connections() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("axum-upgrade");
    let (cert, key, ca) = server_files(dir.path(), &pki);
    let app = MtlsServer::builder()
        .certificate(&cert, &key)
        .client_ca(&ca)
        .build()
        .unwrap();
    async fn echo(mut req: axum::extract::Request) -> axum::response::Response {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let (mut r, mut w) = tokio::io::split(hyper_util::rt::TokioIo::new(up));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        axum::response::Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(axum::body::Body::empty())
            .unwrap()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(app.serve_with_shutdown(
        listener,
        Router::new().route("/echo", get(echo)),
        async {
            let _ = stopped.await;
        },
    ));
    let client = pki.client("ws");
    let cred = mtls_tls::credential_from_parts(
        vec![client.cert.der.clone(), pki.intermediate_der()],
        &client.key,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let config = mtls_tls::client_config(&[pki.root_der()], Some(&cred), &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 512];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(buf.get(..n).unwrap().starts_with(b"HTTP/1.1 101"));
    tls.write_all(b"ping").await.unwrap();
    let mut four = [0u8; 4];
    tls.read_exact(&mut four).await.unwrap();
    assert_eq!(&four, b"ping");
    let started = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("the server stops without waiting out the drain for the upgraded connection")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(ended.is_ok(), "the upgraded connection is closed");
}

/// A request that never finishes does not hold the server past its drain timeout: its
/// connection is closed and `serve_with_shutdown` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_running_after_the_drain_timeout_is_closed() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("axum-drain");
    let (cert, key, ca) = server_files(dir.path(), &pki);
    let app = MtlsServer::builder()
        .certificate(&cert, &key)
        .client_ca(&ca)
        .drain_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let (entered, mut inside) = tokio::sync::mpsc::channel::<()>(1);
    let stuck = move || {
        let entered = entered.clone();
        async move {
            let _ = entered.send(()).await;
            std::future::pending::<&'static str>().await
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(app.serve_with_shutdown(
        listener,
        Router::new().route("/stuck", get(stuck)),
        async {
            let _ = stopped.await;
        },
    ));
    let client = pki.client("slow");
    let cred = mtls_tls::credential_from_parts(
        vec![client.cert.der.clone(), pki.intermediate_der()],
        &client.key,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let config = mtls_tls::client_config(&[pki.root_der()], Some(&cred), &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /stuck HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), inside.recv())
        .await
        .expect("the request reaches the handler")
        .unwrap();
    let started = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("the server stops once its drain timeout (1 s) has passed")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    let mut buf = [0u8; 256];
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(ended.is_ok(), "the stuck request's connection is closed");
}

/// In required mode no request without an accepted certificate reaches the application, also
/// on a route without an extractor or layer: a client whose certificate expires while its
/// keep-alive connection is open gets the seed's 403 on its next request (the periodic check
/// that cuts such connections may come up to a minute later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_certificate_expired_meanwhile_reaches_no_route() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("axum-expiry");
    let (cert, key, ca) = server_files(dir.path(), &pki);
    let app = MtlsServer::builder()
        .certificate(&cert, &key)
        .client_ca(&ca)
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // No extractor, no layer: the server alone decides.
    let router = Router::new().route("/", get(|| async { "served" }));
    tokio::spawn(app.serve(listener, router));
    let now = time::OffsetDateTime::now_utc();
    let (der, client_key) = pki.custom_leaf(
        "short-lived",
        vec![mtls_test_util::ExtendedKeyUsagePurpose::ClientAuth],
        now - time::Duration::minutes(1),
        now + time::Duration::seconds(3),
    );
    let cred = mtls_tls::credential_from_parts(vec![der, pki.intermediate_der()], &client_key, now)
        .unwrap();
    let config = mtls_tls::client_config(&[pki.root_der()], Some(&cred), &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let ask = async |tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // One answer: its head and a short body.
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n")
            || !(got.ends_with(b"served") || got.ends_with(b"}}"))
        {
            match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    let first = ask(&mut tls).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let second = ask(&mut tls).await;
    assert!(
        second.is_empty() || second.starts_with("HTTP/1.1 403"),
        "an expired client reached the route: {second}"
    );
    assert!(!second.contains("served"), "{second}");
}

/// Optional mode (the seed's pattern): an untrusted certificate of ordinary size gets its 403
/// on a connection; one far larger than any real chain (a self-signed certificate of ~60 KiB,
/// which the connection would otherwise keep twice) fails the handshake instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_refused_chain_is_not_kept_in_optional_mode() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("axum-oversized");
    let (cert, key, ca) = server_files(dir.path(), &pki);
    let app = MtlsServer::builder()
        .certificate(&cert, &key)
        .client_ca(&ca)
        .allow_handshake_without_certificate()
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new()
        .route("/", get(|| async { "served" }))
        .layer(RequireClientCert::any_trusted());
    tokio::spawn(app.serve(listener, router));
    let self_signed = |names: Vec<String>| {
        let key = mtls_pki::PrivateKey::generate(mtls_pki::KeyAlgorithm::EcdsaP256).unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(key.key_pair())
            .unwrap();
        let now = time::OffsetDateTime::now_utc();
        mtls_tls::credential_from_parts(vec![cert.der().clone()], &key, now).unwrap()
    };
    let ask = async |cred: mtls_tls::Credential| -> String {
        let config =
            mtls_tls::client_config(&[pki.root_der()], Some(&cred), &[b"http/1.1"]).unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let Ok(mut tls) = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
        else {
            return String::new();
        };
        if tls
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .is_err()
        {
            return String::new();
        }
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut got)).await;
        String::from_utf8_lossy(&got).into_owned()
    };
    let small = ask(self_signed(vec!["intruder.example".into()])).await;
    assert!(small.starts_with("HTTP/1.1 403"), "{small}");
    assert!(small.contains("INVALID_CERT"), "{small}");
    let many: Vec<String> = (0..2000)
        .map(|i| format!("name-{i:05}.oversized.example"))
        .collect();
    let big = ask(self_signed(many)).await;
    assert!(big.is_empty(), "an oversized refused chain was kept: {big}");
}
