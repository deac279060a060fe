//! A connection admitted on an OCSP "good" stays checked for as long as it is open: after the
//! checker has forgotten the answer (unused for `keep_unused`, 2 s here) the connection is
//! verified again and its certificate asked about again, so a good client keeps its
//! connection and a revocation at the responder afterwards still cuts it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{routing::get, Router};
use mtls_axum::{MtlsServer, RequireClientCert};
use mtls_ocsp::{parse_request, CertStatus, IssuerInfo, Responder};
use mtls_test_util::TestPki;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn write(dir: &std::path::Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// An OCSP responder for `pki`'s intermediate on 127.0.0.1: "good" (valid for an hour, so no
/// refresh falls within the test) until `revoked` is set; counts the requests. Returns its URL.
fn responder(pki: &TestPki, revoked: Arc<AtomicBool>, asked: Arc<AtomicUsize>) -> String {
    let issuer = IssuerInfo::from_der(pki.intermediate.der()).unwrap();
    let key =
        mtls_pki::PrivateKey::from_pem_or_der(pki.intermediate.key().pkcs8_der(), None).unwrap();
    let signer = Responder::new(&issuer, pki.intermediate.der().to_vec(), key).unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // The request: headers, then Content-Length bytes of body.
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let Ok(n) = s.read(&mut chunk) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buf.len() >= end + 4 + len {
                    break Some(buf[end + 4..end + 4 + len].to_vec());
                }
            };
            let Some(body) = body else { continue };
            asked.fetch_add(1, Ordering::SeqCst);
            let req = parse_request(&body, std::slice::from_ref(&issuer)).unwrap();
            let now = OffsetDateTime::now_utc();
            let status = if revoked.load(Ordering::SeqCst) {
                CertStatus::Revoked {
                    at: now - time::Duration::seconds(1),
                    reason: None,
                }
            } else {
                CertStatus::Good
            };
            let der = signer
                .sign(
                    &req,
                    &[status],
                    now,
                    now - time::Duration::minutes(1),
                    Some(now + time::Duration::hours(1)),
                )
                .unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                der.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&der);
        }
    });
    format!("http://{addr}/ocsp")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_is_still_cut_when_revoked_after_its_answer_was_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("axum-ocsp");
    let enc = |der: &[u8]| mtls_pki::pem_io::encode("CERTIFICATE", der);
    let server = pki.server(&["localhost"]);
    let cert = write(
        dir.path(),
        "s.pem",
        format!("{}{}", enc(&server.cert.der), enc(&pki.intermediate_der())).as_bytes(),
    );
    let key = write(dir.path(), "s.key", server.key.to_pem().as_bytes());
    let ca = write(
        dir.path(),
        "ca.pem",
        format!("{}{}", enc(&pki.intermediate_der()), enc(&pki.root_der())).as_bytes(),
    );
    let revoked = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicUsize::new(0));
    let url = responder(&pki, revoked.clone(), asked.clone());
    let app = MtlsServer::builder()
        .certificate(&cert, &key)
        .client_ca(&ca)
        .ocsp(mtls_client::ocsp_check::OcspOptions {
            responder: Some(url),
            keep_unused: Duration::from_secs(2),
            ..Default::default()
        })
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RequireClientCert::any_trusted());
    tokio::spawn(app.serve(listener, router));

    let client = pki.client("c");
    let cred = mtls_tls::credential_from_parts(
        vec![client.cert.der.clone(), pki.intermediate_der()],
        &client.key,
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let config = mtls_tls::client_config(&[pki.root_der()], Some(&cred), &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let get_ok = async |tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200")
    };
    assert!(get_ok(&mut tls).await, "admitted on a good answer");
    assert_eq!(asked.load(Ordering::SeqCst), 1);

    // The answer is forgotten after 2 s unused; the open connection is asked about again and,
    // still good, keeps working.
    let start = Instant::now();
    while asked.load(Ordering::SeqCst) < 2 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        asked.load(Ordering::SeqCst) >= 2,
        "the open connection's certificate was not asked about again after its answer was forgotten"
    );
    assert!(get_ok(&mut tls).await, "a good client keeps its connection");

    // Revoked at the responder: the connection is cut without another request from it.
    revoked.store(true, Ordering::SeqCst);
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection of a client revoked after its answer was forgotten must be cut"
    );
}
