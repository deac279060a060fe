//! OCSP stapling of the gateway's and the CA's own certificates: `openssl s_client -status` shows the staple
//! the CA's responder signed, a rustls client receives it and it verifies (issuer or delegated
//! signer, CertID, times); a certificate whose responder answers garbage is served without a
//! staple, never with a bad one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ca::{self, CaServer};
use common::gw::{self, Gateway, Upstream};
use common::Env;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

fn enroll_server(env: &Env, ca: &CaServer, out: &str) {
    let t = ca::token(
        env,
        "localhost",
        &[
            "--profile",
            "server",
            "--san",
            "localhost",
            "--san",
            "127.0.0.1",
        ],
        None,
    );
    ca::enroll(env, ca, &t, out, &[]).ok();
}

fn gateway(env: &Env, up: &Upstream, dir: &str) -> Gateway {
    Gateway::start(&gw::trusting_args(
        &env.path(&format!("{dir}/cert.pem")),
        &env.path(&format!("{dir}/key.pem")),
        &env.pki().join("ca-chain.pem"),
        up,
        &[],
    ))
}

/// `openssl s_client -status` output against `addr`, presenting client-app.
fn s_client_status_at(env: &Env, addr: std::net::SocketAddr) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-status",
            "-servername",
            "localhost",
            "-connect",
        ])
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(env.pki().join("root.crt"))
        .arg("-cert")
        .arg(env.pki().join("issued/client-app.chain.pem"))
        .arg("-key")
        .arg(env.pki().join("issued/client-app.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `openssl s_client -status` output against the gateway.
fn s_client_status(env: &Env, g: &Gateway) -> String {
    s_client_status_at(env, g.addr)
}

/// Records the OCSP response the server sent, then verifies the chain as usual.
#[derive(Debug)]
struct Capture {
    seen: Arc<Mutex<Option<Vec<u8>>>>,
    inner: Arc<dyn ServerCertVerifier>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(ocsp_response.to_vec());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The staple a rustls client receives (empty: none).
fn staple_via_rustls(env: &Env, g: &Gateway) -> Vec<u8> {
    let roots = mtls_tls::load_certificates(&[env.pki().join("root.crt")]).unwrap();
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r).unwrap();
    }
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(store),
        mtls_tls::provider(),
    )
    .build()
    .unwrap();
    let seen = Arc::new(Mutex::new(None));
    let config = rustls::ClientConfig::builder_with_provider(mtls_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Capture {
            seen: seen.clone(),
            inner,
        }))
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let mut tcp = std::net::TcpStream::connect(g.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server's certificate (and staple) arrive before the client would authenticate.
    while conn.is_handshaking() && seen.lock().unwrap().is_none() {
        if conn.complete_io(&mut tcp).is_err() {
            break;
        }
    }
    let _ = tcp.flush();
    let out = seen
        .lock()
        .unwrap()
        .clone()
        .expect("the server's certificate arrived");
    out
}

#[test]
fn the_gateway_staples_a_verified_ocsp_response_and_never_a_bad_one() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "client", "client-app"]).ok();
    // A certificate naming a responder that will answer garbage: issued by a CA instance that
    // publishes on port `bad`, which then goes away and leaves the port to a garbage server.
    let bad = ca::free_port();
    {
        let b = CaServer::start_on(&env, "ca-b", None, "", 0, bad);
        enroll_server(&env, &b, "srv-bad");
        b.kill();
    }
    let garbage = std::net::TcpListener::bind(("127.0.0.1", bad)).unwrap();
    std::thread::spawn(move || {
        for s in garbage.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut s, &mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot-ocsp!",
            );
        }
    });
    let a = CaServer::start(&env, "ca-a", None, "");
    enroll_server(&env, &a, "srv");
    // The CA staples its own TLS certificate, from its own responder.
    let text = s_client_status_at(&env, a.addr);
    assert!(
        text.contains("OCSP Response Status: successful") && text.contains("Cert Status: good"),
        "the CA's own staple: {text}"
    );
    let up = Upstream::start();

    let g = gateway(&env, &up, "srv");
    let start = Instant::now();
    let text = loop {
        let t = s_client_status(&env, &g);
        if t.contains("OCSP Response Status: successful") {
            break t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no staple within 15 s:\n{t}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(text.contains("Cert Status: good"), "{text}");
    // The staple as a TLS client receives it verifies against the issuing CA.
    let der = staple_via_rustls(&env, &g);
    assert!(!der.is_empty());
    let chain =
        mtls_pki::pem_io::certificates(&std::fs::read(env.path("srv/cert.pem")).unwrap()).unwrap();
    let leaf = mtls_pki::pem_io::parse_certificate(&chain[0]).unwrap();
    let verified = mtls_ocsp::verify_response(
        &der,
        &chain[1],
        &mtls_pki::Serial::from_be_bytes(leaf.raw_serial()),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    assert_eq!(verified.status, mtls_ocsp::CertStatus::Good);
    assert!(verified.next_update.is_some());

    // Garbage from the responder: served, without a staple, and the failure is logged.
    let g_bad = gateway(&env, &up, "srv-bad");
    let start = Instant::now();
    while !g_bad
        .stderr
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("OCSP staple not refreshed"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the failed fetch is logged: {:?}",
            g_bad.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = s_client_status(&env, &g_bad);
    assert!(text.contains("OCSP response: no response sent"), "{text}");
    assert!(staple_via_rustls(&env, &g_bad).is_empty());

    // `mtls request` checks staples: --require-ocsp-staple passes the stapled gateway and
    // refuses the unstapled one, which passes without the flag.
    let request = |g: &Gateway, extra: &[&str]| {
        let pki = env.pki();
        Command::new(common::gw::mtls_bin())
            .args(["request", &g.url("/api/secure")])
            .arg("--cert")
            .arg(pki.join("issued/client-app.chain.pem"))
            .arg("--key")
            .arg(pki.join("issued/client-app.key"))
            .arg("--ca")
            .arg(pki.join("root.crt"))
            .args(extra)
            .output()
            .unwrap()
    };
    let ok = request(&g, &["--require-ocsp-staple"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = request(&g_bad, &["--require-ocsp-staple"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("stapled no OCSP response"),
        "{err}"
    );
    let plain = request(&g_bad, &[]);
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
}
