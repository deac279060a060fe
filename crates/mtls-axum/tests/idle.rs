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
    let enc = |der: &[u8]| mtls_pki::pem_io::encode("CERTIFICATE", der);
    let chain = |der: &[u8]| format!("{}{}", enc(der), enc(&pki.intermediate_der()));
    let server = pki.server(&["localhost"]);
    let cert = write(dir.path(), "s.pem", chain(&server.cert.der).as_bytes());
    let key = write(dir.path(), "s.key", server.key.to_pem().as_bytes());
    let ca = write(
        dir.path(),
        "ca.pem",
        format!("{}{}", enc(&pki.intermediate_der()), enc(&pki.root_der())).as_bytes(),
    );
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
