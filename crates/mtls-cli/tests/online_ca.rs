//! The online CA end to end, with real peers: `mtls ca serve`, `mtls ca token`, `mtls enroll`,
//! `mtls renew`, the gateway, curl, `openssl crl` and `openssl ocsp`; on SQLite and on a real
//! PostgreSQL (MTLS_TEST_POSTGRES_URL, started by scripts/pg.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::ca::{self, CaServer};
use common::gw::{Gateway, Upstream};
use common::Env;

fn gateway_with(env: &Env, up: &Upstream, extra: &[&str]) -> Gateway {
    env.mtls(&["issue", "server", "localhost", "127.0.0.1"])
        .ok();
    let pki = env.pki();
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--cert",
        pki.join("issued/localhost.chain.pem").to_str().unwrap(),
        "--key",
        pki.join("issued/localhost.key").to_str().unwrap(),
        "--client-ca",
        pki.join("root.crt").to_str().unwrap(),
        "--upstream",
        &format!("http://{}", up.addr),
        "--allow-cn",
        "client-app",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    Gateway::start(&args)
}

fn gw_get(env: &Env, g: &Gateway, dir: &str) -> (u16, String) {
    ca::curl(&[
        "--cacert",
        env.pki().join("root.crt").to_str().unwrap(),
        "--resolve",
        &format!("localhost:{}:127.0.0.1", g.port()),
        "--cert",
        &env.p(&format!("{dir}/cert.pem")),
        "--key",
        &env.p(&format!("{dir}/key.pem")),
        &g.url("/api/secure"),
    ])
}

/// token → enroll → gateway → renew → revoke → CRL and OCSP (openssl), one backend.
fn lifecycle(database: Option<&str>) {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let server = CaServer::start(&env, "ca", database, "");
    let t = ca::token(
        &env,
        "client-app",
        &["--san", "spiffe://example.org/app"],
        database,
    );
    let r = ca::enroll(&env, &server, &t, "client", &[]).ok();
    assert!(r.stdout.contains("enrolled: serial"), "{}", r.stdout);
    let cert = env.path("client/cert.pem");
    // The key stays here, owner-only; the certificate names the token's identity.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(env.path("client/key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = env
        .openssl(&["x509", "-noout", "-text", "-in", cert.to_str().unwrap()])
        .ok()
        .stdout;
    assert!(
        text.contains("CN=client-app") || text.contains("CN = client-app"),
        "{text}"
    );
    assert!(text.contains("URI:spiffe://example.org/app"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(
        text.contains(&format!("URI:{}", server.publish("/v1/crl"))),
        "{text}"
    );
    assert!(
        text.contains(&format!("OCSP - URI:{}", server.publish("/ocsp"))),
        "{text}"
    );
    // The fingerprint printed by the server is the root's.
    let fp = env
        .openssl(&[
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            env.p("pki/root.crt").as_str(),
        ])
        .ok()
        .stdout;
    assert_eq!(
        fp.trim()
            .rsplit_once('=')
            .unwrap()
            .1
            .replace(':', "")
            .to_lowercase(),
        server.fingerprint
    );

    // The enrolled certificate works against the gateway.
    // The gateway keeps the CA's CRL current from the distribution point.
    let up = Upstream::start();
    let crl_file = env.p("gw-crl.pem");
    let crl_url = server.publish("/v1/crl");
    let g = gateway_with(
        &env,
        &up,
        &[
            "--client-ca",
            env.p("pki/intermediate.crt").as_str(),
            "--crl",
            &crl_file,
            "--crl-url",
            &crl_url,
            "--crl-refresh",
            "1s",
        ],
    );
    let (status, body) = gw_get(&env, &g, "client");
    assert_eq!(status, 200, "{body}");

    // OCSP: good.
    let issuer = env.pki().join("intermediate.crt");
    let o = ca::ocsp(&env, &server, &issuer, &cert);
    assert!(o.contains("Response verify OK"), "{o}");
    assert!(o.contains(": good"), "{o}");
    // openssl sends a nonce and complains when it is not echoed.
    assert!(!o.contains("WARNING"), "{o}");
    // `mtls verify --ocsp` asks the responder named in the certificate (AIA), with a nonce.
    let verify_ocsp = |extra: &[&str]| {
        let root = env.p("pki/root.crt");
        let c = cert.to_string_lossy().into_owned();
        let mut args = vec![
            "verify",
            "--ca",
            root.as_str(),
            "--purpose",
            "client",
            "--ocsp",
        ];
        args.extend_from_slice(extra);
        args.push(c.as_str());
        env.mtls(&args)
    };
    let said = verify_ocsp(&[]).ok().stdout;
    // It says what was checked, and what the responder said, not only "OK".
    for needle in [
        "checked:    path to a trusted root",
        "purpose client",
        "revocation: OCSP good from http://",
        "nonce echoed",
        "nextUpdate 20",
    ] {
        assert!(said.contains(needle), "{needle:?} in {said}");
    }
    // A responder that cannot be reached fails closed.
    verify_ocsp(&["--ocsp-url", "http://127.0.0.1:9/ocsp"]).fails(1, "ocsp_unavailable");
    // The same question as an RFC 6960 GET, with cache headers.
    let req = env.path("req.der");
    env.openssl(&[
        "ocsp",
        "-issuer",
        issuer.to_str().unwrap(),
        "-cert",
        cert.to_str().unwrap(),
        "-no_nonce",
        "-reqout",
        req.to_str().unwrap(),
    ])
    .ok();
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&req).unwrap())
    };
    let encoded = b64
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let resp = env.path("resp.der");
    let out = std::process::Command::new("curl")
        .args(["-sS", "-D", "-", "-o"])
        .arg(&resp)
        .arg(server.publish(&format!("/ocsp/{encoded}")))
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        headers.contains("content-type: application/ocsp-response"),
        "{headers}"
    );
    assert!(
        headers.contains("cache-control: public, max-age="),
        "{headers}"
    );
    let r = env.openssl(&[
        "ocsp",
        "-respin",
        resp.to_str().unwrap(),
        "-reqin",
        req.to_str().unwrap(),
        "-issuer",
        issuer.to_str().unwrap(),
        "-cert",
        cert.to_str().unwrap(),
        "-CAfile",
        env.p("pki/root.crt").as_str(),
    ]);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("Response verify OK") && all.contains(": good"),
        "{all}"
    );

    // Renew over mTLS with the current certificate.
    let old_serial = ca::serial_of(&env, &cert);
    let r = env
        .mtls(&[
            "renew",
            "--cert",
            &env.p("client/cert.pem"),
            "--key",
            &env.p("client/key.pem"),
            "--ca-url",
            &server.url(),
        ])
        .ok();
    assert!(r.stdout.contains("renewed"), "{}", r.stdout);
    let new_serial = ca::serial_of(&env, &cert);
    assert_ne!(old_serial, new_serial);
    let (status, _) = gw_get(&env, &g, "client");
    assert_eq!(status, 200);

    // The holder revokes its certificate.
    let (status, body) = ca::curl(&[
        "--cacert",
        env.pki().join("root.crt").to_str().unwrap(),
        "--cert",
        &env.p("client/cert.pem"),
        "--key",
        &env.p("client/key.pem"),
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"reason":"keyCompromise"}"#,
        &format!("{}/v1/revoke", server.url()),
    ]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"revoked\""), "{body}");
    // The renewal kept the key: the certificate it renewed carries the compromised key too.
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer["also_revoked"],
        serde_json::json!([old_serial.to_lowercase()]),
        "{body}"
    );

    // OCSP: revoked, with the reason (mtls verify --ocsp and openssl).
    verify_ocsp(&[]).fails(1, "(revoked)");
    let o = ca::ocsp(&env, &server, &issuer, &cert);
    assert!(o.contains("Response verify OK"), "{o}");
    assert!(o.contains(": revoked"), "{o}");
    assert!(o.contains("keyCompromise"), "{o}");

    // The CRL (DER, with cache headers) verifies under the CA and lists the serial.
    let crl = env.path("crl.der");
    let out = std::process::Command::new("curl")
        .args(["-sS", "-D", "-", "-o"])
        .arg(&crl)
        .arg(server.publish("/v1/crl"))
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        headers.contains("content-type: application/pkix-crl"),
        "{headers}"
    );
    assert!(
        headers.contains("cache-control: public, max-age="),
        "{headers}"
    );
    let r = env
        .openssl(&[
            "crl",
            "-inform",
            "DER",
            "-in",
            crl.to_str().unwrap(),
            "-CAfile",
            env.p("pki/ca-chain.pem").as_str(),
            "-noout",
            "-text",
        ])
        .ok();
    assert!(
        r.stderr.contains("verify OK") || r.stdout.contains("verify OK"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.stdout.contains(&new_serial),
        "{} not in {}",
        new_serial,
        r.stdout
    );
    assert!(r.stdout.contains("Key Compromise"), "{}", r.stdout);
    // The PEM variant is the same CRL.
    let (status, pem) = ca::curl(&[&server.publish("/v1/crl.pem")]);
    assert_eq!(status, 200);
    assert!(pem.contains("BEGIN X509 CRL"));

    // Renewal with the revoked certificate is refused.
    let r = env.mtls(&[
        "renew",
        "--cert",
        &env.p("client/cert.pem"),
        "--key",
        &env.p("client/key.pem"),
        "--ca-url",
        &server.url(),
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("revoked"), "{}", r.stderr);
    // The gateway picks the revocation up from the CA's CRL and refuses the client.
    let mut refused = false;
    for _ in 0..40 {
        if gw_get(&env, &g, "client").0 != 200 {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(refused, "the gateway still accepts the revoked client");
    let (status, metrics) = ca::curl(&[&server.metrics("/metrics")]);
    assert_eq!(status, 200);
    // Not on the public listener: the counters are nobody else's business.
    let (status, body) = ca::curl(&[&server.publish("/metrics")]);
    expect_error(status, &body, 404, "NOT_FOUND");
    let (status, _) = ca::curl(&[&server.metrics("/healthz")]);
    assert_eq!(status, 200);
    assert!(metrics.contains("mtls_ca_enrolled_total 1"), "{metrics}");
    assert!(metrics.contains("mtls_ca_renewed_total 1"), "{metrics}");
    assert!(metrics.contains("mtls_ca_revoked_total 2"), "{metrics}");
    let families = common::assert_prometheus_text(&metrics);
    assert!(
        families.contains(&"mtls_ca_enrolled counter".to_string()),
        "{families:?}"
    );
    drop(g);
}

#[test]
fn lifecycle_sqlite() {
    lifecycle(None);
}

/// Offline commands (`--database`) and the online CA share one PostgreSQL inventory: an offline
/// issuance is listed, an offline revocation is in the CA's OCSP answer at once.
#[test]
fn offline_commands_share_the_postgres_inventory() {
    let db = ca::fresh_pg_database();
    let env = Env::new();
    env.mtls(&["ca", "init", "--database", &db]).ok();
    let server = CaServer::start(&env, "ca", Some(&db), "");
    env.mtls(&["--database", &db, "issue", "client", "offline-app"])
        .ok();
    let n = ca::psql(
        &db,
        "SELECT count(*) FROM certificates WHERE subject LIKE '%offline-app%'",
    );
    assert_eq!(n, "1");
    let listed = env.mtls(&["--database", &db, "list", "--json"]).ok().stdout;
    assert!(listed.contains("offline-app"), "{listed}");
    let cert = env.pki().join("issued/offline-app.crt");
    let o = ca::ocsp(&env, &server, &env.pki().join("intermediate.crt"), &cert);
    assert!(o.contains(": good"), "{o}");
    env.mtls_env(
        &[
            "revoke",
            "--cert",
            cert.to_str().unwrap(),
            "--reason",
            "superseded",
        ],
        &[("MTLS_DATABASE", &db)],
    )
    .ok();
    let o = ca::ocsp(&env, &server, &env.pki().join("intermediate.crt"), &cert);
    assert!(o.contains(": revoked") && o.contains("superseded"), "{o}");
    // Nothing went to a local SQLite file.
    assert!(!env.pki().join("inventory.db").exists());
}

#[test]
fn lifecycle_postgres() {
    let db = ca::fresh_pg_database();
    lifecycle(Some(&db));
    // Who did what, when: every issuance, renewal, revocation, token and CRL is audited.
    let actions = ca::psql(
        &db,
        "SELECT string_agg(DISTINCT action, ',' ORDER BY action) FROM audit",
    );
    assert_eq!(actions, "crl,enroll,issue,renew,revoke,token");
    let holder = ca::psql(&db, "SELECT actor FROM audit WHERE action = 'revoke'");
    assert!(holder.starts_with("holder:"), "{holder}");
}

fn post_json(
    server: &CaServer,
    env: &Env,
    path: &str,
    body: &str,
    client: Option<&str>,
) -> (u16, String) {
    let root = env.pki().join("root.crt");
    let url = format!("{}{path}", server.url());
    let (cert, key) = client
        .map(|d| {
            (
                env.p(&format!("{d}/cert.pem")),
                env.p(&format!("{d}/key.pem")),
            )
        })
        .unzip();
    let mut args = vec![
        "--cacert",
        root.to_str().unwrap(),
        "-H",
        "content-type: application/json",
        "-d",
        body,
    ];
    if let (Some(c), Some(k)) = (&cert, &key) {
        args.extend_from_slice(&["--cert", c, "--key", k]);
    }
    args.push(&url);
    ca::curl(&args)
}

/// The answer is the seed's JSON error with this status and code.
#[track_caller]
fn expect_error(status: u16, body: &str, want_status: u16, want_code: &str) {
    assert_eq!(
        (status, error_code(body).as_str()),
        (want_status, want_code),
        "{body}"
    );
}

fn error_code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["error"]["code"].as_str().unwrap().to_string()
}

#[test]
fn bad_tokens_csrs_and_renewals_are_refused() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let server = CaServer::start(&env, "ca", None, "idle_timeout = \"2s\"\n");
    let count = || env.inventory_count();
    let before = count();

    // A reused token.
    let t = ca::token(&env, "app", &[], None);
    ca::enroll(&env, &server, &t, "a", &[]).ok();
    let r = ca::enroll(&env, &server, &t, "b", &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("INVALID_TOKEN") && r.stderr.contains("already used"),
        "{}",
        r.stderr
    );
    assert!(
        !env.path("b").exists(),
        "nothing written for a refused enrollment"
    );

    // An expired token.
    let t = ca::token(&env, "app", &["--ttl", "1s"], None);
    std::thread::sleep(Duration::from_millis(2100));
    let r = ca::enroll(&env, &server, &t, "c", &[]);
    assert!(
        r.stderr.contains("INVALID_TOKEN") && r.stderr.contains("expired"),
        "{}",
        r.stderr
    );

    // A forged token (right id, wrong secret) and garbage.
    let t = ca::token(&env, "app", &[], None);
    let forged = format!("{}.{}", t.split_once('.').unwrap().0, "A".repeat(43));
    let r = ca::enroll(&env, &server, &forged, "d", &[]);
    assert!(
        r.stderr.contains("unknown enrollment token"),
        "{}",
        r.stderr
    );
    let r = ca::enroll(&env, &server, "not-a-token", "d", &[]);
    assert!(
        r.stderr.contains("malformed enrollment token"),
        "{}",
        r.stderr
    );

    // Names outside the token.
    let r = ca::enroll(&env, &server, &t, "e", &["--san", "evil.example.com"]);
    assert!(r.stderr.contains("NAME_NOT_ALLOWED"), "{}", r.stderr);
    env.mtls(&[
        "csr",
        "--cn",
        "other-name",
        "--key-out",
        &env.p("o.key"),
        "--csr-out",
        &env.p("o.csr"),
    ])
    .ok();
    let csr_pem = String::from_utf8(env.read("o.csr")).unwrap();
    let body = serde_json::json!({"token": t, "csr": csr_pem}).to_string();
    let (status, resp) = post_json(&server, &env, "/v1/sign", &body, None);
    expect_error(status, &resp, 403, "NAME_NOT_ALLOWED");

    // A CSR with a bad signature: flip a byte inside the signature.
    let mut der = mtls_pki::pem_io::decode(csr_pem.as_bytes()).unwrap()[0]
        .der
        .clone();
    let n = der.len();
    der[n - 5] ^= 0x01;
    let bad = mtls_pki::pem_io::encode("CERTIFICATE REQUEST", &der);
    let body = serde_json::json!({"token": t, "csr": bad}).to_string();
    let (status, resp) = post_json(&server, &env, "/v1/sign", &body, None);
    expect_error(status, &resp, 400, "INVALID_CSR");
    // Malformed JSON.
    let (status, resp) = post_json(&server, &env, "/v1/sign", "{", None);
    expect_error(status, &resp, 400, "INVALID_REQUEST");
    // The refused token is still usable afterwards (refusals do not consume it).
    ca::enroll(&env, &server, &t, "f", &[]).ok();

    // Renewal without a certificate, and with one from another CA.
    let (status, resp) = post_json(&server, &env, "/v1/renew", "{}", None);
    expect_error(status, &resp, 401, "NO_CLIENT_CERT");
    // Revoking someone else's certificate needs an administrator.
    let other = ca::serial_of(&env, &env.path("f/cert.pem"));
    let (status, resp) = post_json(
        &server,
        &env,
        "/v1/revoke",
        &format!(r#"{{"serial":"{other}"}}"#),
        Some("a"),
    );
    expect_error(status, &resp, 403, "FORBIDDEN");
    // A server certificate whose name matches the [admins] rule is not an administrator.
    let t = ca::token(
        &env,
        "ca-admin",
        &["--profile", "server", "--san", "ca-admin.example"],
        None,
    );
    ca::enroll(&env, &server, &t, "admin-server", &[]).ok();
    let (status, resp) = post_json(
        &server,
        &env,
        "/v1/tokens",
        r#"{"name":"x"}"#,
        Some("admin-server"),
    );
    expect_error(status, &resp, 403, "FORBIDDEN");
    assert!(resp.contains("client certificate"), "{resp}");
    // An administrator may (and list, and mint tokens remotely).
    let t = ca::token(&env, "ca-admin", &[], None);
    ca::enroll(&env, &server, &t, "admin", &[]).ok();
    let (status, resp) = post_json(
        &server,
        &env,
        "/v1/revoke",
        &format!(r#"{{"serial":"{other}","reason":"superseded"}}"#),
        Some("admin"),
    );
    assert_eq!(status, 200, "{resp}");
    let (status, resp) = post_json(
        &server,
        &env,
        "/v1/revoke",
        &format!(r#"{{"serial":"{other}"}}"#),
        Some("admin"),
    );
    expect_error(status, &resp, 409, "ALREADY_REVOKED");
    let (status, resp) = post_json(
        &server,
        &env,
        "/v1/tokens",
        r#"{"name":"remote","ttl":"5m"}"#,
        Some("admin"),
    );
    assert_eq!(status, 201, "{resp}");
    let remote: serde_json::Value = serde_json::from_str(&resp).unwrap();
    ca::enroll(
        &env,
        &server,
        remote["token"].as_str().unwrap(),
        "remote",
        &[],
    )
    .ok();
    let (status, _) = post_json(&server, &env, "/v1/tokens", r#"{"name":"x"}"#, Some("a"));
    assert_eq!(status, 403);

    // Renewal with a revoked certificate.
    let (status, resp) = post_json(&server, &env, "/v1/renew", "{}", Some("f"));
    expect_error(status, &resp, 403, "INVALID_CERT");
    assert!(resp.contains("revoked"), "{resp}");

    // Every certificate returned is in the inventory, nothing more: a, f, admin-server, admin,
    // remote.
    assert_eq!(count(), before + 5);

    // OCSP for an issuer we do not serve → unauthorized; a malformed request → malformedRequest.
    let other = Env::new();
    other.mtls(&["ca", "init"]).ok();
    other.mtls(&["issue", "client", "stranger"]).ok();
    let o = ca::ocsp(
        &env,
        &server,
        &other.pki().join("intermediate.crt"),
        &other.pki().join("issued/stranger.crt"),
    );
    assert!(o.contains("unauthorized"), "{o}");
    // Over GET only a signed answer may be cached: an error answer says no-store, so a cache
    // never keeps serving it once its cause is gone.
    let (cache, text) = ocsp_get(
        &env,
        &server,
        &other.pki().join("intermediate.crt"),
        &other.pki().join("issued/stranger.crt"),
    );
    assert!(text.contains("unauthorized"), "{text}");
    assert_eq!(cache, "no-store", "{text}");
    let (cache, text) = ocsp_get(
        &env,
        &server,
        &env.pki().join("intermediate.crt"),
        &env.path("remote/cert.pem"),
    );
    assert!(text.contains("cert status: good"), "{text}");
    assert!(
        cache.starts_with("public, max-age=") && cache.contains("must-revalidate"),
        "{cache}"
    );
    let garbage = ocsp_answer(
        &env,
        &[
            "-H",
            "content-type: application/ocsp-request",
            "--data-binary",
            "garbage",
            &server.publish("/ocsp"),
        ],
    );
    assert!(garbage.contains("malformedrequest"), "{garbage}");
    // A GET path that is not UTF-8 once unescaped is a malformed OCSP request too.
    let not_utf8 = ocsp_answer(&env, &[&server.publish("/ocsp/%FF%FE%FD")]);
    assert!(not_utf8.contains("malformedrequest"), "{not_utf8}");

    // HTTP-level refusals keep the JSON error shape: a body over the limit, a wrong method.
    let big = format!(r#"{{"token":"x","csr":"{}"}}"#, "A".repeat(70 * 1024));
    let (status, resp) = post_json(&server, &env, "/v1/sign", &big, None);
    expect_error(status, &resp, 413, "PAYLOAD_TOO_LARGE");
    let root = env.pki().join("root.crt");
    let sign_url = format!("{}/v1/sign", server.url());
    let (status, resp) = ca::curl(&["--cacert", root.to_str().unwrap(), &sign_url]);
    expect_error(status, &resp, 405, "METHOD_NOT_ALLOWED");
    let (status, resp) = ca::curl(&["-X", "DELETE", &server.publish("/v1/crl")]);
    expect_error(status, &resp, 405, "METHOD_NOT_ALLOWED");

    // A client that opens HTTP/2 and then says nothing does not keep its connection slot:
    // closed once idle_timeout (2 s here, shorter than the header-read timeout every
    // publish connection gets) passes without traffic.
    let addr = server.publish("").trim_start_matches("http://").to_string();
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(
        &mut idle,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
    )
    .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match std::io::Read::read(&mut idle, &mut buf) {
            Ok(0) => break,
            Ok(_) => continue, // the server's SETTINGS
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the idle connection stayed open: {e}"),
        }
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
}

/// Asks about `cert` over GET (RFC 6960 A.1) with curl: its Cache-Control header and `openssl
/// ocsp -resp_text` of the answer, both lowercased.
fn ocsp_get(env: &Env, server: &CaServer, issuer: &Path, cert: &Path) -> (String, String) {
    use base64::Engine;
    let req = env.path("get.req");
    env.openssl(&[
        "ocsp",
        "-issuer",
        issuer.to_str().unwrap(),
        "-cert",
        cert.to_str().unwrap(),
        "-no_nonce",
        "-reqout",
        req.to_str().unwrap(),
    ])
    .ok();
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(&req).unwrap())
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let resp = env.path("get.resp");
    let out = std::process::Command::new("curl")
        .args(["-sS", "-D", "-", "-o"])
        .arg(&resp)
        .arg(server.publish(&format!("/ocsp/{encoded}")))
        .output()
        .unwrap();
    assert!(out.status.success());
    let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
    let cache = headers
        .lines()
        .find_map(|l| l.strip_prefix("cache-control:"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let r = env.openssl(&[
        "ocsp",
        "-respin",
        resp.to_str().unwrap(),
        "-resp_text",
        "-noverify",
    ]);
    (cache, format!("{}{}", r.stdout, r.stderr).to_lowercase())
}

/// Fetches an OCSP answer with curl (`args` end with the URL) and returns `openssl ocsp
/// -resp_text` of it, lowercased.
fn ocsp_answer(env: &Env, args: &[&str]) -> String {
    let resp = env.path("answer.ocsp");
    let st = std::process::Command::new("curl")
        .args(["-sS", "-o"])
        .arg(&resp)
        .args(args)
        .status()
        .unwrap();
    assert!(st.success());
    let r = env.openssl(&[
        "ocsp",
        "-respin",
        resp.to_str().unwrap(),
        "-resp_text",
        "-noverify",
    ]);
    format!("{}{}", r.stdout, r.stderr).to_lowercase()
}

#[test]
fn expired_certificates_cannot_renew() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let server = CaServer::start(
        &env,
        "ca",
        None,
        "leaf_lifetime = \"3s\"\nocsp_signer = \"issuer\"\n",
    );
    let t = ca::token(&env, "short", &[], None);
    ca::enroll(&env, &server, &t, "s", &[]).ok();
    // OCSP signed by the issuing CA itself (no delegated signer) verifies too.
    let o = ca::ocsp(
        &env,
        &server,
        &env.pki().join("intermediate.crt"),
        &env.path("s/cert.pem"),
    );
    assert!(
        o.contains("Response verify OK") && o.contains(": good"),
        "{o}"
    );
    std::thread::sleep(Duration::from_millis(3500));
    // The CLI refuses before sending anything…
    let r = env.mtls(&[
        "renew",
        "--cert",
        &env.p("s/cert.pem"),
        "--key",
        &env.p("s/key.pem"),
        "--ca-url",
        &server.url(),
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("enroll again with a new token"),
        "{}",
        r.stderr
    );
    // …and the CA says so too when a client presents the expired certificate anyway.
    let (status, resp) = post_json(&server, &env, "/v1/renew", "{}", Some("s"));
    expect_error(status, &resp, 403, "CERT_EXPIRED");
    assert!(resp.contains("enroll again with a new token"), "{resp}");
    // And the service stops cleanly on SIGTERM.
    assert!(server.terminate().success());
}

fn crl_number(env: &Env, url: &str, file: &str) -> u64 {
    let path = env.path(file);
    let st = std::process::Command::new("curl")
        .args(["-sSf", "-o"])
        .arg(&path)
        .arg(url)
        .status()
        .unwrap();
    assert!(st.success());
    let r = env
        .openssl(&[
            "crl",
            "-inform",
            "DER",
            "-in",
            path.to_str().unwrap(),
            "-noout",
            "-crlnumber",
        ])
        .ok();
    let hex = r
        .stdout
        .trim()
        .trim_start_matches("crlNumber=0x")
        .to_string();
    u64::from_str_radix(&hex, 16).unwrap_or_else(|_| panic!("{}", r.stdout))
}

fn self_revoke(env: &Env, server: &CaServer, dir: &str) {
    let (status, body) = post_json(
        server,
        env,
        "/v1/revoke",
        r#"{"reason":"cessationOfOperation"}"#,
        Some(dir),
    );
    assert_eq!(status, 200, "{body}");
}

/// Two CA instances on one PostgreSQL: concurrent issuing, one-time tokens, revocation and CRL
/// numbers stay consistent across them.
#[test]
fn two_instances_share_postgres() {
    let db = ca::fresh_pg_database();
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let a = CaServer::start(&env, "a", Some(&db), "");
    let b = CaServer::start(&env, "b", Some(&db), "");
    let n = 24;
    let tokens: Vec<String> = (0..n)
        .map(|i| ca::token(&env, &format!("svc-{i}"), &[], Some(&db)))
        .collect();
    std::thread::scope(|s| {
        for (i, t) in tokens.iter().enumerate() {
            let (env, server) = (&env, if i % 2 == 0 { &a } else { &b });
            s.spawn(move || ca::enroll(env, server, t, &format!("e{i}"), &[]).ok());
        }
    });
    let serials: std::collections::HashSet<String> = (0..n)
        .map(|i| ca::serial_of(&env, &env.path(&format!("e{i}/cert.pem"))))
        .collect();
    assert_eq!(serials.len(), n);
    // n enrolled + each instance's server certificate and OCSP signer; no duplicate.
    assert_eq!(
        ca::psql(
            &db,
            "SELECT count(*) || ' ' || count(DISTINCT serial) FROM certificates"
        ),
        format!("{0} {0}", n + 4)
    );
    // One token raced through both instances: exactly one certificate.
    let t = ca::token(&env, "raced", &[], Some(&db));
    let results: Vec<i32> = std::thread::scope(|s| {
        let h1 = s.spawn(|| ca::enroll(&env, &a, &t, "race-a", &[]).code);
        let h2 = s.spawn(|| ca::enroll(&env, &b, &t, "race-b", &[]).code);
        vec![h1.join().unwrap(), h2.join().unwrap()]
    });
    assert_eq!(
        results.iter().filter(|c| **c == 0).count(),
        1,
        "{results:?}"
    );

    // Revoked through A: B's OCSP and CRL say so at once; CRL numbers only increase.
    let n0 = crl_number(&env, &b.publish("/v1/crl"), "b0.crl");
    self_revoke(&env, &a, "e0");
    let serial = ca::serial_of(&env, &env.path("e0/cert.pem"));
    let o = ca::ocsp(
        &env,
        &b,
        &env.pki().join("intermediate.crt"),
        &env.path("e0/cert.pem"),
    );
    assert!(
        o.contains("Response verify OK") && o.contains(": revoked"),
        "{o}"
    );
    let n1 = crl_number(&env, &b.publish("/v1/crl"), "b1.crl");
    let listed = env
        .openssl(&[
            "crl",
            "-inform",
            "DER",
            "-in",
            env.p("b1.crl").as_str(),
            "-noout",
            "-text",
        ])
        .ok()
        .stdout;
    assert!(listed.contains(&serial), "{listed}");
    self_revoke(&env, &b, "e1");
    let n2 = crl_number(&env, &a.publish("/v1/crl"), "a2.crl");
    let n3 = crl_number(&env, &b.publish("/v1/crl"), "b3.crl");
    assert!(n0 < n1 && n1 < n2 && n2 < n3, "{n0} {n1} {n2} {n3}");
    let audit = ca::psql(&db, "SELECT count(*) FROM audit WHERE action = 'revoke'");
    assert_eq!(audit, "2");
}

/// The database goes away mid-run: clean 503s, nothing issued, recovery when it returns.
#[test]
fn database_outage_answers_503_and_recovers() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let pg = ca::PgCluster::start(env.dir.path());
    let url = pg.url();
    let server = CaServer::start(&env, "ca", Some(&url), "");
    let t1 = ca::token(&env, "one", &[], Some(&url));
    let t2 = ca::token(&env, "two", &[], Some(&url));
    ca::enroll(&env, &server, &t1, "one", &[]).ok();

    pg.down();
    let r = ca::enroll(&env, &server, &t2, "two", &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("503") && r.stderr.contains("DATABASE_UNAVAILABLE"),
        "{}",
        r.stderr
    );
    assert!(!env.path("two").exists());
    let (status, body) = ca::curl(&[&server.publish("/healthz")]);
    expect_error(status, &body, 503, "DATABASE_UNAVAILABLE");
    let (status, _) = ca::curl(&[&server.publish("/v1/crl")]);
    assert_eq!(status, 503);
    let (status, body) = post_json(&server, &env, "/v1/renew", "{}", Some("one"));
    expect_error(status, &body, 503, "DATABASE_UNAVAILABLE");
    let o = ca::ocsp(
        &env,
        &server,
        &env.pki().join("intermediate.crt"),
        &env.path("one/cert.pem"),
    );
    assert!(o.to_lowercase().contains("trylater"), "{o}");

    pg.up();
    let mut ok = false;
    for _ in 0..20 {
        if ca::enroll(&env, &server, &t2, "two", &[]).code == 0 {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(ok, "the CA did not recover");
    let (status, _) = ca::curl(&[&server.publish("/healthz")]);
    assert_eq!(status, 200);
    // Exactly what was returned is recorded: two enrollments, the server cert, the OCSP signer.
    assert_eq!(ca::psql(&url, "SELECT count(*) FROM certificates"), "4");
    assert_eq!(
        ca::psql(
            &url,
            "SELECT count(*) FROM tokens WHERE used_at IS NOT NULL"
        ),
        "2"
    );
}

/// A short-lived gateway certificate is renewed by the daemon before expiry while the gateway
/// keeps serving; the CA is down for a while and the daemon retries until it is back.
#[test]
fn renewal_daemon_keeps_a_gateway_serving() {
    use std::io::BufRead;
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let (port, publish) = (ca::free_port(), ca::free_port());
    let lifetime = "leaf_lifetime = \"40s\"\n";
    let server = CaServer::start_on(&env, "ca", None, lifetime, port, publish);
    let url = server.url();
    let t = ca::token(
        &env,
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
    ca::enroll(&env, &server, &t, "srv", &[]).ok();
    let first_serial = ca::serial_of(&env, &env.path("srv/cert.pem"));
    env.mtls(&["issue", "client", "client-app"]).ok();
    let up = Upstream::start();
    let pki = env.pki();
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--cert",
        env.p("srv/cert.pem").as_str(),
        "--key",
        env.p("srv/key.pem").as_str(),
        "--client-ca",
        pki.join("root.crt").to_str().unwrap(),
        "--upstream",
        &format!("http://{}", up.addr),
        "--allow-cn",
        "client-app",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let g = Gateway::start(&args);
    // The CA goes down before the first renewal is due.
    server.kill();
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_mtls"))
        .args([
            "renew",
            "--daemon",
            "--renew-before",
            "25s",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--cert",
            env.p("srv/cert.pem").as_str(),
            "--key",
            env.p("srv/key.pem").as_str(),
        ])
        .args([
            "--ca-url",
            &url,
            "--exec",
            &format!("touch {}", env.p("hook-ran")),
        ])
        // The default log level: the daemon must still say what it did.
        .env_remove("MTLS_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = daemon.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let metrics = loop {
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        if let Some(a) = line.strip_prefix("mtls renew: metrics on ") {
            break a.trim().to_string();
        }
    };
    let client = |path: &str| {
        ca::curl(&[
            "--cacert",
            pki.join("root.crt").to_str().unwrap(),
            "--resolve",
            &format!("localhost:{}:127.0.0.1", g.port()),
            "--cert",
            pki.join("issued/client-app.chain.pem").to_str().unwrap(),
            "--key",
            pki.join("issued/client-app.key").to_str().unwrap(),
            &g.url(path),
        ])
    };
    let start = std::time::Instant::now();
    let mut restarted = None;
    let mut failures = Vec::new();
    let mut requests = 0;
    while start.elapsed() < Duration::from_secs(52) {
        if restarted.is_none() && start.elapsed() > Duration::from_secs(18) {
            restarted = Some(CaServer::start_on(
                &env, "ca", None, lifetime, port, publish,
            ));
        }
        let (status, body) = client("/api/secure");
        requests += 1;
        if status != 200 {
            failures.push(format!("{:?}: {status} {body}", start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let m = ca::curl(&[&metrics]).1;
    let families = common::assert_prometheus_text(&m);
    for f in [
        "mtls_renew_renewals counter",
        "mtls_renew_failures counter",
        "mtls_renew_not_after_seconds gauge",
    ] {
        assert!(
            families.contains(&f.to_string()),
            "{f} missing: {families:?}"
        );
    }
    // The daemon notes its plan for the current certificate next to it (for `mtls monitor`):
    // 25 s before its end, and up to 5 % of the 40 s since the daemon obtained it earlier
    // (jitter; not of the 340 s from the notBefore the CA backdated by 5 minutes, which could
    // move it before issuance).
    let planned = {
        let start = std::time::Instant::now();
        loop {
            let pem = std::fs::read(env.path("srv/cert.pem")).unwrap();
            let chain = mtls_pki::pem_io::certificates(&pem).unwrap();
            let validity = mtls_pki::pem_io::parse_certificate(&chain[0])
                .unwrap()
                .validity()
                .clone();
            let not_after = validity.not_after.to_datetime();
            let record = mtls_client::renewal::read_record(&env.path("srv/cert.pem"));
            if let Some(at) = record.as_ref().and_then(|r| r.renew_at(not_after)) {
                break Ok((not_after - at).whole_seconds());
            }
            if start.elapsed() > Duration::from_secs(10) {
                break Err(format!(
                    "no schedule for the current certificate (notAfter {not_after}): {record:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let _ = daemon.kill();
    let _ = daemon.wait();
    let log: Vec<String> = rx.try_iter().collect();
    assert!(
        failures.is_empty(),
        "{requests} requests, failed: {failures:?}\nDAEMON: {log:#?}\nGATEWAY: {:#?}",
        g.stderr.lock().unwrap()
    );
    assert_ne!(ca::serial_of(&env, &env.path("srv/cert.pem")), first_serial);
    assert!(env.path("hook-ran").exists(), "the hook did not run");
    let renewed = log
        .iter()
        .find(|l| l.contains("renewed"))
        .unwrap_or_else(|| panic!("no 'renewed' line at the default level: {log:#?}"));
    assert!(renewed.contains("not_after=20"), "{renewed}");
    assert!(
        renewed.trim_end().ends_with('Z') || renewed.contains("Z "),
        "{renewed}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("waiting") && l.contains("next_attempt=20")),
        "{log:#?}"
    );
    assert!(log.iter().all(|l| !l.contains('\u{1b}')), "{log:#?}");
    // The daemon keeps a record next to the certificate for `mtls monitor`.
    let record = mtls_client::renewal::read_record(&env.path("srv/cert.pem")).expect("record");
    assert!(record.last_success.is_some(), "{record:?}");
    assert!(
        record.last_failure.is_some(),
        "the CA was down for a while: {record:?}"
    );
    let value = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {m}"))
    };
    assert!(value("mtls_renew_failures_total") >= 1.0, "{m}");
    assert!(value("mtls_renew_renewals_total") >= 1.0, "{m}");
    assert!(value("mtls_renew_next_attempt_seconds") > 0.0, "{m}");
    let planned = planned.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        (25..=25 + 40 / 20 + 1).contains(&planned),
        "{planned} s before the end of a 40 s certificate"
    );
}

/// A counter of the CA's `/metrics` page (`name` without `_total`).
fn ca_counter(server: &CaServer, name: &str) -> u64 {
    let (_, metrics) = ca::curl(&[&server.metrics("/metrics")]);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}_total ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name}_total: {metrics}"))
}

/// Short leaves whose notBefore the CA backdates (30 s certificates, valid from 5 minutes
/// before issuance): the renewal daemon plans each certificate it obtained over the 30 s after
/// it got it, renewing about every 20 s (2/3), not again at once. Planned over the whole
/// validity, 2/3 of it lies before issuance and the daemon renewed every 2 s. The enrolled
/// certificate too: `mtls enroll` notes when it obtained it, so a daemon started afterwards
/// does not renew it at once.
#[test]
fn the_renewal_daemon_does_not_renew_a_fresh_short_leaf_again_at_once() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let server = CaServer::start(&env, "ca", None, "leaf_lifetime = \"30s\"\n");
    let t = ca::token(&env, "short", &[], None);
    ca::enroll(&env, &server, &t, "s", &[]).ok();
    let log = std::fs::File::create(env.path("daemon.log")).unwrap();
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_mtls"))
        .args(["renew", "--daemon", "--cert", &env.p("s/cert.pem")])
        .args(["--key", &env.p("s/key.pem"), "--ca-url", &server.url()])
        .stderr(log)
        .spawn()
        .unwrap();
    // Enrollment noted when it obtained the certificate: not renewed at once (over its
    // backdated validity it would be), but at about 20 s.
    std::thread::sleep(Duration::from_secs(8));
    let early = ca_counter(&server, "mtls_ca_renewed");
    std::thread::sleep(Duration::from_secs(17));
    let _ = daemon.kill();
    let _ = daemon.wait();
    let renewed = ca_counter(&server, "mtls_ca_renewed");
    let log = std::fs::read_to_string(env.path("daemon.log")).unwrap();
    assert_eq!(early, 0, "renewed in the first 8 s\n{log}");
    assert!(
        (1..=3).contains(&renewed),
        "{renewed} renewals in 25 s\n{log}"
    );
}

/// A renewal keeps the whole subject (O, OU), is no longer-lived than the certificate it
/// renews, and is refused from an older certificate once one renewed from it was revoked,
/// before anything is signed.
#[test]
fn renewal_keeps_subject_and_lifetime_and_respects_revoked_renewals() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let server = CaServer::start(&env, "ca", None, "");
    env.mtls(&[
        "issue", "client", "alice", "--org", "Acme", "--ou", "ops", "--days", "1",
    ])
    .ok();
    let issued = env.pki().join("issued");
    let (cert, key) = (issued.join("alice.chain.pem"), issued.join("alice.key"));
    // Keep the first certificate, as a holder could.
    std::fs::copy(&cert, env.path("alice-first.crt")).unwrap();
    let renew = |cert: &Path| {
        env.mtls(&[
            "renew",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--ca-url",
            &server.url(),
            "--ca-root",
            env.pki().join("root.crt").to_str().unwrap(),
        ])
    };
    renew(&cert).ok();
    assert_ne!(
        ca::serial_of(&env, &cert),
        ca::serial_of(&env, &env.path("alice-first.crt"))
    );
    let subject = env
        .openssl(&[
            "x509",
            "-in",
            cert.to_str().unwrap(),
            "-noout",
            "-subject",
            "-enddate",
        ])
        .ok()
        .stdout;
    assert!(
        subject.contains("O = Acme")
            && subject.contains("OU = ops")
            && subject.contains("CN = alice"),
        "{subject}"
    );
    // Not the CA's 90-day leaf lifetime: at most the day the renewed certificate had.
    env.openssl(&[
        "x509",
        "-in",
        cert.to_str().unwrap(),
        "-noout",
        "-checkend",
        "90000",
    ])
    .fails(1, "will expire");
    // The renewal alone is revoked (superseded: a reason that distrusts the holder would
    // revoke the first certificate too); the first certificate (still valid) cannot renew
    // again.
    let renewed = ca::serial_of(&env, &cert);
    env.mtls(&["revoke", &renewed, "--reason", "superseded"])
        .ok();
    std::fs::copy(env.path("alice-first.crt"), &cert).unwrap();
    let signed = ca_counter(&server, "mtls_ca_signed");
    renew(&cert).fails(1, "renewed from it");
    // Refused before signing: a refused renewal costs the CA no signature.
    assert_eq!(ca_counter(&server, "mtls_ca_signed"), signed);
    assert_eq!(
        ca::serial_of(&env, &cert),
        ca::serial_of(&env, &env.path("alice-first.crt"))
    );
}

/// Renewals from one certificate are limited (`max_renewals` within `renewal_window`): a client
/// may renew twice from the certificate it kept (answers lost), the third time the CA answers
/// `429 RATE_LIMITED` with `Retry-After`, before signing anything (a refused renewal costs no
/// signature), records nothing, and `mtls renew` says when to try again and leaves the files
/// alone; renewing from the newest certificate instead is refused too (the limit is the
/// renewal lineage's). The same on both backends.
fn renewals_from_one_certificate_are_rate_limited(database: Option<&str>) {
    let env = Env::new();
    let db: Vec<&str> = database.map_or_else(Vec::new, |d| vec!["--database", d]);
    env.mtls(&[&["ca", "init"][..], &db].concat()).ok();
    let server = CaServer::start(
        &env,
        "ca",
        database,
        "max_renewals = 2\nrenewal_window = \"1h\"\n",
    );
    let t = ca::token(&env, "busy", &[], database);
    ca::enroll(&env, &server, &t, "b", &[]).ok();
    let cert = env.path("b/cert.pem");
    let first = env.path("b-first.pem");
    std::fs::copy(&cert, &first).unwrap();
    let renew = || {
        env.mtls(&[
            "renew",
            "--cert",
            &env.p("b/cert.pem"),
            "--key",
            &env.p("b/key.pem"),
            "--ca-url",
            &server.url(),
        ])
    };
    for _ in 0..2 {
        std::fs::copy(&first, &cert).unwrap();
        renew().ok();
    }
    let newest = std::fs::read(&cert).unwrap();
    std::fs::copy(&first, &cert).unwrap();
    let r = renew().fails(1, "429 RATE_LIMITED");
    assert!(
        r.stderr.contains("already renewed 2 times in the last 1h")
            && r.stderr.contains("retry in"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        std::fs::read(&first).unwrap()
    );

    // The answer itself: the JSON code and a Retry-After within the window.
    let headers = env.path("headers.txt");
    let root = env.pki().join("root.crt");
    let url = format!("{}/v1/renew", server.url());
    // `POST /v1/renew` with b's certificate, by curl (`extra` first).
    let renew_by_curl = |extra: &[&str]| {
        let (cert, key) = (env.p("b/cert.pem"), env.p("b/key.pem"));
        let args = [
            "--cacert",
            root.to_str().unwrap(),
            "--cert",
            &cert,
            "--key",
            &key,
            "-H",
            "content-type: application/json",
            "-d",
            "{}",
            &url,
        ];
        ca::curl(&[extra, &args[..]].concat())
    };
    let (status, body) = renew_by_curl(&["-D", headers.to_str().unwrap()]);
    expect_error(status, &body, 429, "RATE_LIMITED");
    let headers = std::fs::read_to_string(&headers).unwrap();
    let retry_after: u64 = headers
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("retry-after")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no Retry-After: {headers}"));
    assert!((3000..=3600).contains(&retry_after), "{retry_after}");

    // Refusals sign nothing (the enrollment and two renewals were signed) and record nothing.
    assert_eq!(ca_counter(&server, "mtls_ca_signed"), 3);
    let listed = env
        .mtls(&[&db[..], &["list", "--json"]].concat())
        .ok()
        .stdout;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    let busy = rows
        .iter()
        .filter(|r| r["subject"].as_str().unwrap().contains("busy"))
        .count();
    assert_eq!(busy, 3, "{listed}");

    // From the newest certificate: refused too. The limit is the lineage's, or renewing each
    // time from the newest would never reach it (and each renewal could grow the CRL).
    std::fs::write(&cert, &newest).unwrap();
    renew().fails(1, "429 RATE_LIMITED");
    assert_eq!(ca_counter(&server, "mtls_ca_signed"), 3);

    // Renewals arriving together can all pass the early check; recording still lets only the one
    // left in the limit through. (Another lineage, renewed once: one renewal left.)
    let t = ca::token(&env, "busy-two", &[], database);
    ca::enroll(&env, &server, &t, "b2", &[]).ok();
    std::fs::copy(env.path("b2/cert.pem"), &cert).unwrap();
    std::fs::copy(env.path("b2/key.pem"), env.path("b/key.pem")).unwrap();
    renew().ok();
    assert_eq!(ca_counter(&server, "mtls_ca_renewed"), 3);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..4).map(|_| s.spawn(|| renew_by_curl(&[]).0)).collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let mut sorted = statuses.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [201, 429, 429, 429], "{statuses:?}");
    assert_eq!(ca_counter(&server, "mtls_ca_renewed"), 4);
}

#[test]
fn renewals_from_one_certificate_are_rate_limited_on_sqlite() {
    renewals_from_one_certificate_are_rate_limited(None);
}

#[test]
fn renewals_from_one_certificate_are_rate_limited_on_postgres() {
    renewals_from_one_certificate_are_rate_limited(Some(&ca::fresh_pg_database()));
}

/// Key rotation replaces certificate and key in one atomic rename, so it needs a combined file.
#[test]
fn renewal_with_a_new_key_uses_one_combined_file() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let server = CaServer::start(&env, "ca", None, "");
    let t = ca::token(&env, "rotating", &[], None);
    ca::enroll(&env, &server, &t, "r", &[]).ok();
    let (cert, key) = (env.p("r/cert.pem"), env.p("r/key.pem"));
    let r = env.mtls(&[
        "renew",
        "--cert",
        &cert,
        "--key",
        &key,
        "--ca-url",
        &server.url(),
        "--rotate-key",
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("combined file"), "{}", r.stderr);
    let combined = env.path("r/combined.pem");
    let mut both = env.read("r/cert.pem");
    both.extend(env.read("r/key.pem"));
    std::fs::write(&combined, both).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&combined, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = combined.to_str().unwrap();
    let pubkey = |path: &str, what: &str| -> String {
        let args: Vec<&str> = if what == "cert" {
            vec!["x509", "-in", path, "-noout", "-pubkey"]
        } else {
            vec!["pkey", "-in", path, "-pubout"]
        };
        env.openssl(&args).ok().stdout
    };
    let before = pubkey(c, "key");
    env.mtls(&[
        "renew",
        "--cert",
        c,
        "--key",
        c,
        "--ca-url",
        &server.url(),
        "--rotate-key",
        "--ca-root",
        &env.p("r/ca.crt"),
    ])
    .ok();
    let after = pubkey(c, "key");
    assert_ne!(before, after, "a new key was generated");
    assert_eq!(pubkey(c, "cert"), after, "certificate and key match");
    let mode = std::fs::metadata(&combined).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A passphrase in the environment does not encrypt a key that was stored in the clear
    // (the service reading it has no passphrase).
    env.mtls_env(
        &[
            "renew",
            "--cert",
            c,
            "--key",
            c,
            "--ca-url",
            &server.url(),
            "--rotate-key",
            "--ca-root",
            &env.p("r/ca.crt"),
        ],
        &[("MTLS_PASSPHRASE", "not-for-this-key")],
    )
    .ok();
    let text = String::from_utf8(env.read("r/combined.pem")).unwrap();
    assert!(text.contains("-----BEGIN PRIVATE KEY-----"), "{text}");
    assert!(!text.contains("ENCRYPTED"), "{text}");
    assert_ne!(pubkey(c, "key"), after, "a new key again");
}

/// A certificate path that is a symbolic link to the combined file: the renewal writes the
/// file the link names (the link stays a link), so the next renewal works too.
#[test]
fn renewal_through_a_symlink_writes_the_file_it_names() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let server = CaServer::start(&env, "ca", None, "");
    let t = ca::token(&env, "linked", &[], None);
    ca::enroll(&env, &server, &t, "l", &[]).ok();
    let bundle = env.path("l/bundle.pem");
    let mut both = env.read("l/cert.pem");
    both.extend(env.read("l/key.pem"));
    std::fs::write(&bundle, both).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = env.path("l/link.pem");
    std::os::unix::fs::symlink(&bundle, &link).unwrap();
    let mut serial = ca::serial_of(&env, &bundle);
    for _ in 0..2 {
        env.mtls(&[
            "renew",
            "--cert",
            link.to_str().unwrap(),
            "--key",
            bundle.to_str().unwrap(),
            "--ca-url",
            &server.url(),
            "--ca-root",
            &env.p("l/ca.crt"),
        ])
        .ok();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        let renewed = ca::serial_of(&env, &bundle);
        assert_ne!(
            renewed, serial,
            "the file the link names holds the new certificate"
        );
        serial = renewed;
    }
}

/// The post-renewal hook runs without mtls's secrets in its environment (the key's passphrase
/// among them) but with the rest of it.
#[test]
fn the_renewal_hook_does_not_inherit_the_passphrase() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let server = CaServer::start(&env, "ca", None, "");
    let t = ca::token(&env, "hooked", &[], None);
    ca::enroll(&env, &server, &t, "h", &[]).ok();
    let seen = env.path("hook-env");
    env.mtls_env(
        &[
            "renew",
            "--cert",
            &env.p("h/cert.pem"),
            "--key",
            &env.p("h/key.pem"),
            "--ca-url",
            &server.url(),
            "--ca-root",
            &env.p("h/ca.crt"),
            "--exec",
            &format!("env > {}", seen.display()),
        ],
        &[
            ("MTLS_PASSPHRASE", "key-secret"),
            ("MTLS_CA_PASSPHRASE", "ca-secret"),
            ("MTLS_HOOK_TEST_VISIBLE", "yes"),
        ],
    )
    .ok();
    let seen = std::fs::read_to_string(&seen).unwrap();
    assert!(seen.lines().any(|l| l.starts_with("PATH=")), "{seen}");
    assert!(seen.contains("MTLS_HOOK_TEST_VISIBLE=yes"), "{seen}");
    assert!(!seen.contains("MTLS_PASSPHRASE"), "{seen}");
    assert!(!seen.contains("MTLS_CA_PASSPHRASE"), "{seen}");
    assert!(!seen.contains("secret"), "{seen}");
}

/// An encrypted key is renewed with its passphrase from --passphrase-file (nothing in the
/// environment), and a rotated key is stored encrypted with it, as the old one was.
#[test]
fn renewal_reads_the_passphrase_from_a_file_and_keeps_the_key_encrypted() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let server = CaServer::start(&env, "ca", None, "");
    let t = ca::token(&env, "sealed", &[], None);
    ca::enroll(&env, &server, &t, "e", &[]).ok();
    let pass = env.write_secret("pass", b"correct horse\n");
    env.openssl(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "aes-256-cbc",
        "-in",
        &env.p("e/key.pem"),
        "-out",
        &env.p("e/enc.key"),
        "-passout",
        &format!("file:{}", pass.display()),
    ])
    .ok();
    let combined = env.path("e/combined.pem");
    let mut both = env.read("e/cert.pem");
    both.extend(env.read("e/enc.key"));
    std::fs::write(&combined, both).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&combined, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = combined.to_str().unwrap();
    let before = ca::serial_of(&env, &combined);
    let args = [
        "renew",
        "--cert",
        c,
        "--key",
        c,
        "--ca-url",
        &server.url(),
        "--ca-root",
        &env.p("e/ca.crt"),
        "--rotate-key",
    ];
    // Without a passphrase: refused, the file as it was.
    let r = env.mtls_env(&args, &[("MTLS_PASSPHRASE", "")]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    let mut with_file = args.to_vec();
    with_file.extend(["--passphrase-file", pass.to_str().unwrap()]);
    env.mtls(&with_file).ok();
    assert_ne!(ca::serial_of(&env, &combined), before);
    let text = String::from_utf8(env.read("e/combined.pem")).unwrap();
    assert!(text.contains("BEGIN ENCRYPTED PRIVATE KEY"), "{text}");
    env.openssl(&[
        "pkey",
        "-in",
        c,
        "-passin",
        &format!("file:{}", pass.display()),
        "-noout",
    ])
    .ok();
}

/// Token refusals on PostgreSQL (its writer records issuances with one pipelined statement each,
/// refusals being zero-row results rather than errors).
#[test]
fn token_refusals_on_postgres() {
    let db = ca::fresh_pg_database();
    let env = Env::new();
    env.mtls(&["ca", "init", "--database", &db]).ok();
    let server = CaServer::start(&env, "ca", Some(&db), "");
    let t = ca::token(&env, "app", &[], Some(&db));
    ca::enroll(&env, &server, &t, "a", &[]).ok();
    let r = ca::enroll(&env, &server, &t, "b", &[]);
    assert!(
        r.stderr.contains("INVALID_TOKEN") && r.stderr.contains("already used"),
        "{}",
        r.stderr
    );
    let t2 = ca::token(&env, "app", &["--ttl", "1s"], Some(&db));
    std::thread::sleep(Duration::from_millis(2100));
    let r = ca::enroll(&env, &server, &t2, "c", &[]);
    assert!(
        r.stderr.contains("INVALID_TOKEN") && r.stderr.contains("expired"),
        "{}",
        r.stderr
    );
    let forged = format!("{}.{}", t.split_once('.').unwrap().0, "B".repeat(43));
    let r = ca::enroll(&env, &server, &forged, "d", &[]);
    assert!(
        r.stderr.contains("unknown enrollment token"),
        "{}",
        r.stderr
    );
    let t3 = ca::token(&env, "app", &[], Some(&db));
    let r = ca::enroll(&env, &server, &t3, "e", &["--san", "evil.example.com"]);
    assert!(r.stderr.contains("NAME_NOT_ALLOWED"), "{}", r.stderr);
    // Concurrent enrollments, one of them reusing a token, in the same batches.
    let tokens: Vec<String> = (0..12)
        .map(|i| ca::token(&env, &format!("p{i}"), &[], Some(&db)))
        .collect();
    let codes: Vec<i32> = std::thread::scope(|s| {
        let handles: Vec<_> = tokens
            .iter()
            .chain(std::iter::once(&t))
            .enumerate()
            .map(|(i, t)| {
                let (env, server) = (&env, &server);
                s.spawn(move || ca::enroll(env, server, t, &format!("p{i}"), &[]).code)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 12, "{codes:?}");
    // a, the 12 and t3 (still unused), the server certificate and the OCSP signer.
    assert_eq!(ca::psql(&db, "SELECT count(*) FROM certificates"), "15");
    assert_eq!(
        ca::psql(&db, "SELECT count(*) FROM tokens WHERE used_at IS NOT NULL"),
        "13"
    );
}

/// The CA's database on a network: TLS required and verified, client-certificate authentication.
#[test]
fn postgres_over_mutual_tls() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "127.0.0.1"]).ok();
    env.mtls(&["issue", "client", "postgres"]).ok();
    let issued = env.pki().join("issued");
    let pg = ca::PgCluster::start_tls(
        env.dir.path(),
        &issued.join("127.0.0.1.chain.pem"),
        &issued.join("127.0.0.1.key"),
        &env.pki().join("root.crt"),
    );
    let url = pg.url();
    let root = env.p("pki/root.crt");
    let cert = issued
        .join("postgres.chain.pem")
        .to_string_lossy()
        .into_owned();
    let key = issued.join("postgres.key").to_string_lossy().into_owned();
    let token = |extra: &[&str]| {
        let mut args = vec!["--database", url.as_str()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["ca", "token", "--name", "db-app"]);
        env.mtls(&args)
    };
    // Plaintext is refused by the server, a missing client certificate too, and a server that
    // does not chain to the given CA by us.
    assert_ne!(token(&[]).code, 0);
    assert_ne!(token(&["--database-ca", &root]).code, 0);
    let other = Env::new();
    other.mtls(&["ca", "init"]).ok();
    let r = token(&[
        "--database-ca",
        &other.p("pki/root.crt"),
        "--database-cert",
        &cert,
        "--database-key",
        &key,
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.to_lowercase().contains("certificate"),
        "{}",
        r.stderr
    );
    // With all three: tokens, and a CA instance that enrolls through it.
    let t = token(&[
        "--database-ca",
        &root,
        "--database-cert",
        &cert,
        "--database-key",
        &key,
    ])
    .ok()
    .stdout
    .trim()
    .to_string();
    let server = CaServer::start_full(
        &env,
        "ca",
        Some(&url),
        "",
        0,
        ca::free_port(),
        &[
            ("MTLS_DATABASE_CA", root.clone()),
            ("MTLS_DATABASE_CERT", cert.clone()),
            ("MTLS_DATABASE_KEY", key.clone()),
        ],
    );
    ca::enroll(&env, &server, &t, "app", &[]).ok();
}

/// A connection without a client certificate (it can only enroll or read what is published)
/// is closed after the header-read timeout (10 s) when it sends nothing, so anonymous
/// connections cannot keep the CA's connection slots; one with an accepted certificate keeps
/// the long idle timeout.
#[test]
fn anonymous_connections_to_the_ca_get_the_header_read_timeout() {
    use std::process::{Command, Stdio};
    use std::time::Instant;
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "client", "known-app"]).ok();
    let server = CaServer::start(&env, "ca", None, "");
    let addr = server.url().trim_start_matches("https://").to_string();
    let pki = env.pki();
    let root = pki.join("root.crt");
    let open = |extra: &[&str]| {
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr,
                "-CAfile",
                root.to_str().unwrap(),
                "-quiet",
            ])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut anonymous = open(&[]);
    // And on the plain-HTTP publish listener, where every client is anonymous: a silent
    // connection does not keep its slot for the 60 s idle timeout either.
    let publish = server.publish("").trim_start_matches("http://").to_string();
    let mut silent = std::net::TcpStream::connect(&publish).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let publish_closed = std::thread::spawn(move || {
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let _ = std::io::Read::read(&mut silent, &mut buf);
        started.elapsed()
    });
    let mut known = open(&[
        "-cert",
        pki.join("issued/known-app.chain.pem").to_str().unwrap(),
        "-cert_chain",
        pki.join("issued/known-app.chain.pem").to_str().unwrap(),
        "-key",
        pki.join("issued/known-app.key").to_str().unwrap(),
    ]);
    let start = Instant::now();
    let closed = loop {
        if anonymous.try_wait().unwrap().is_some() {
            break Some(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(25) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let known_open = known.try_wait().unwrap().is_none();
    let _ = anonymous.kill();
    let _ = known.kill();
    let _ = anonymous.wait();
    let _ = known.wait();
    let closed = closed.expect("the anonymous connection was not closed within 25 s");
    assert!(closed >= Duration::from_secs(8), "closed after {closed:?}");
    let publish_closed = publish_closed.join().unwrap();
    assert!(
        publish_closed >= Duration::from_secs(8) && publish_closed < Duration::from_secs(25),
        "the silent publish connection was closed after {publish_closed:?}"
    );
    assert!(
        known_open,
        "the verified connection was closed after {closed:?}"
    );
}

/// The serial of the TLS certificate the CA presents (as openssl prints it), and the
/// certificate's PEM.
fn ca_tls_certificate(env: &Env, server: &CaServer) -> (String, String) {
    use std::process::{Command, Stdio};
    let addr = server.url().trim_start_matches("https://").to_string();
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr, "-showcerts", "-CAfile"])
        .arg(env.pki().join("root.crt"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = text[begin..].find("-----END CERTIFICATE-----").unwrap() + begin + 25;
    let pem = text[begin..end].to_string();
    let file = env.write("ca-tls.pem", pem.as_bytes());
    (ca::serial_of(env, &file), pem)
}

/// An administrator (here `mtls revoke` on the inventory, as after a leak of the CA host's TLS
/// key) revokes the CA's own TLS certificate: the CA presents a new one within seconds instead
/// of serving the revoked one until its time-based renewal (20 days later), and the new one is
/// good at the CA's responder.
#[test]
fn a_revoked_ca_tls_certificate_is_replaced_within_seconds() {
    use std::time::Instant;
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let server = CaServer::start(&env, "ca", None, "");
    let (revoked, _) = ca_tls_certificate(&env, &server);
    env.mtls(&["revoke", &revoked, "--reason", "key-compromise"])
        .ok();
    let start = Instant::now();
    let (serial, pem) = loop {
        let (serial, pem) = ca_tls_certificate(&env, &server);
        if serial != revoked {
            break (serial, pem);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the CA still presents its revoked certificate {revoked} after 10 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let file = env.write("ca-tls-new.pem", pem.as_bytes());
    let answer = ca::ocsp(&env, &server, &env.pki().join("intermediate.crt"), &file);
    assert!(
        answer.contains(": good"),
        "new certificate {serial}: {answer}"
    );
    assert!(
        server
            .stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("own TLS certificate was revoked")),
        "the replacement is logged"
    );
}

/// The enrollment token is a secret taken as passphrases are, never as an argument (every local
/// user reads a process's arguments, for seconds while an RSA key is generated, and shell
/// history keeps them): `--token` is refused before anything happens, leaving the token unused;
/// `--token-file` (owner-only like a passphrase file, surrounding whitespace trimmed; `-` for
/// standard input) and `MTLS_TOKEN` each enroll; with none of them and no terminal to prompt on,
/// the error names them.
#[test]
fn the_enrollment_token_is_read_from_a_file_stdin_or_the_environment_never_an_argument() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let server = CaServer::start(&env, "ca", None, "");
    let url = server.url();
    let args = |out: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "enroll",
            "--ca-url",
            &url,
            "--ca-fingerprint",
            &server.fingerprint,
            "--out",
            &env.p(out),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |out: &str, extra: &[&str]| {
        let a = args(out, extra);
        env.mtls(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let enrolled = |out: &str| env.path(out).join("cert.pem").exists();

    // As an argument: refused, nothing written, the token still unused.
    let t = ca::token(&env, "app", &[], None);
    run("arg", &["--token", &t]).fails(2, "--token-file");
    assert!(!env.path("arg").exists(), "--token wrote something");

    // In a file: refused when others may read it, as a passphrase file is.
    let file = env.write("token.txt", format!("  {t}\n").as_bytes());
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    run("file", &["--token-file", &env.p("token.txt")]).fails(2, "chmod 600");
    assert!(!enrolled("file"));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    run("file", &["--token-file", &env.p("token.txt")]).ok();
    assert!(
        enrolled("file"),
        "the token from --token-file did not enroll"
    );

    // From standard input.
    let t = ca::token(&env, "app", &[], None);
    let a = args("stdin", &["--token-file", "-"]);
    env.mtls_stdin(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        format!("{t}\n").as_bytes(),
    )
    .ok();
    assert!(
        enrolled("stdin"),
        "the token from standard input did not enroll"
    );

    // From the environment.
    let t = ca::token(&env, "app", &[], None);
    ca::enroll(&env, &server, &t, &env.p("env"), &[]).ok();
    assert!(enrolled("env"), "the token from MTLS_TOKEN did not enroll");

    // None of them, and no terminal to prompt on.
    run("none", &[]).fails(2, "pass --token-file FILE or set MTLS_TOKEN");
    assert!(!env.path("none").exists());
}

/// `mtls enroll` pins the CA's root by its fingerprint: a CA (or whoever holds a TLS
/// certificate under that root) answering with a certificate of another hierarchy is refused
/// before anything is written, as renewals are; the same CA answering under the pinned root
/// enrolls.
#[test]
fn enroll_refuses_a_certificate_that_does_not_chain_to_the_pinned_root() {
    use common::https::{respond, HttpsServer};
    use mtls_pki::issue::{issue_leaf, LeafRequest};
    use mtls_pki::pem_io::encode;
    use mtls_test_util::TestPki;

    let pinned = TestPki::new("pinned");
    let foreign = TestPki::new("foreign");
    let fingerprint = mtls_pki::Fingerprint::of(&pinned.root_der()).to_string();
    let tls = pinned.server(&["localhost", "127.0.0.1"]);
    let chain = vec![tls.cert.der.clone(), pinned.intermediate_der()];
    let server = HttpsServer::start("127.0.0.1:0", chain, &tls.key, move |req, out| {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/v1/roots.pem") => respond(
                out,
                "200 OK",
                "application/pem-certificate-chain",
                encode("CERTIFICATE", &pinned.root_der()).as_bytes(),
            ),
            ("POST", "/v1/sign") => {
                let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
                // The token says which hierarchy the fake CA issues under.
                let ca = if body["token"] == "foreign" {
                    &foreign
                } else {
                    &pinned
                };
                let csr = mtls_pki::csr::parse(body["csr"].as_str().unwrap().as_bytes()).unwrap();
                let now = time::OffsetDateTime::now_utc();
                let leaf = issue_leaf(
                    &ca.intermediate,
                    &csr.public_key,
                    &LeafRequest {
                        profile: mtls_pki::Profile::Client,
                        subject: mtls_pki::Subject::cn("app"),
                        sans: Vec::new(),
                        lifetime: time::Duration::days(1),
                        urls: Default::default(),
                    },
                    now,
                )
                .unwrap();
                let answer = serde_json::json!({
                    "serial": leaf.serial.to_string(),
                    "certificate": leaf.pem(),
                    "chain": format!(
                        "{}{}{}",
                        leaf.pem(),
                        encode("CERTIFICATE", &ca.intermediate_der()),
                        encode("CERTIFICATE", &ca.root_der())
                    ),
                    "not_before": mtls_pki::rfc3339(&leaf.not_before),
                    "not_after": mtls_pki::rfc3339(&leaf.not_after),
                });
                respond(
                    out,
                    "201 Created",
                    "application/json",
                    answer.to_string().as_bytes(),
                )
            }
            _ => respond(out, "404 Not Found", "text/plain", b"not here"),
        }
    });
    let env = Env::new();
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    let enroll = |token: &str, out: &str| {
        env.mtls_env(
            &[
                "enroll",
                "--ca-url",
                &url,
                "--ca-fingerprint",
                &fingerprint,
                "--out",
                &env.p(out),
            ],
            &[("MTLS_TOKEN", token)],
        )
    };
    enroll("pinned", "good").ok();
    assert!(env.path("good/cert.pem").exists());
    enroll("foreign", "bad").fails(1, "does not chain to the CA's root");
    for f in ["key.pem", "cert.pem", "ca.crt"] {
        assert!(
            !env.path("bad").join(f).exists(),
            "bad/{f} was written for a certificate of another hierarchy"
        );
    }
}

/// An enrollment whose output cannot be written (its directory is a file) fails before the
/// token is spent: the same token enrolls afterwards with a usable `--out`.
#[test]
fn an_unwritable_output_does_not_spend_the_token() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let server = CaServer::start(&env, "ca", None, "");
    let t = ca::token(&env, "careful", &[], None);
    env.write("not-a-dir", b"a file");
    let r = ca::enroll(&env, &server, &t, "not-a-dir/id", &[]);
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let listed = env.mtls(&["list"]).ok().stdout;
    assert!(!listed.contains("careful"), "nothing issued: {listed}");
    ca::enroll(&env, &server, &t, "id", &[]).ok();
}
