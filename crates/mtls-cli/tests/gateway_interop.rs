//! The gateway against real clients: Python `requests`, Node.js `https` and axios (built as the
//! seed builds them), `openssl s_client`, and an `sslyze` scan of its TLS settings.
//!
//! Every peer tool is required: a missing one fails the test with how to install it
//! (`scripts/test.sh` installs them all: python3 + `requests` + `sslyze`, node + `npm ci` in
//! tests/node, openssl, curl).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::gw::{curl, http_args, Files, Gateway, Leaf, Upstream};
use mtls_pki::{pem_io, Profile};
use serde_json::Value;
use time::OffsetDateTime;

/// The sslyze release whose JSON layout `sslyze_*` reads; scripts/test.sh installs the same.
const SSLYZE_VERSION: &str = "6.3.1";

const PYTHON_HINT: &str =
    "install python3 and `python3 -m pip install requests sslyze==6.3.1` (scripts/test.sh does)";
const NODE_HINT: &str =
    "install Node.js 20 (`apt-get install nodejs npm`) and run `npm ci` in tests/node (scripts/test.sh does)";
const OPENSSL_HINT: &str = "install openssl (`apt-get install openssl`; scripts/test.sh does)";

// ---------------------------------------------------------------------------------------------
// Running peer tools
// ---------------------------------------------------------------------------------------------

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` with `input` on stdin; panics with `hint` when the program cannot be started and
/// kills it (and fails) after `timeout`.
fn run(mut cmd: Command, input: &[u8], timeout: Duration, hint: &str) -> Out {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("`{prog}` is not runnable ({e}): {hint}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    let o = Out {
        code: status.and_then(|s| s.code()).unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    };
    assert!(
        status.is_some(),
        "`{prog}` timed out after {timeout:?}\nstdout: {}\nstderr: {}",
        o.stdout,
        o.stderr
    );
    o
}

/// What an HTTP client saw: an HTTP answer or a TLS/connection error.
#[derive(Debug)]
enum Seen {
    Http { status: u16, body: Value },
    Error(String),
}

impl Seen {
    /// Parses the one JSON line the Python and Node.js scripts print.
    fn parse(tool: &str, o: &Out) -> Seen {
        let line = o
            .stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| {
                panic!(
                    "{tool} printed no result (exit {})\nstdout: {}\nstderr: {}",
                    o.code, o.stdout, o.stderr
                )
            });
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(status) = v["status"].as_u64() {
            // Node's https gives the body as text, axios and requests as parsed JSON.
            let body = match &v["body"] {
                Value::String(s) => {
                    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
                }
                other => other.clone(),
            };
            Seen::Http {
                status: u16::try_from(status).unwrap(),
                body,
            }
        } else {
            Seen::Error(format!("{} {}", v["error"], v["detail"]))
        }
    }

    #[track_caller]
    fn ok_body(self, what: &str) -> Value {
        match self {
            Seen::Http { status: 200, body } => body,
            other => panic!("{what}: expected 200, got {other:?}"),
        }
    }

    /// Asserts a TLS/connection error and returns what the client said.
    #[track_caller]
    fn rejected(self, what: &str) -> String {
        match self {
            Seen::Error(e) => e,
            other => panic!("{what}: expected a TLS/connection error, got {other:?}"),
        }
    }

    #[track_caller]
    fn json_error(self, what: &str, status: u16, code: &str) -> String {
        match self {
            Seen::Http { status: s, body } if s == status => {
                assert_eq!(body["error"]["code"], code, "{what}: {body}");
                body["error"]["message"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}: no message: {body}"))
                    .to_string()
            }
            other => panic!("{what}: expected {status} {code}, got {other:?}"),
        }
    }
}

const PY_REQUESTS: &str = r#"
import json, sys
try:
    import requests
except ImportError as e:
    print("python requests is missing: %s" % e, file=sys.stderr)
    sys.exit(3)
url, root, chain, key = sys.argv[1:5]
try:
    r = requests.get(url, cert=(chain, key) if chain else None, verify=root, timeout=10)
except requests.exceptions.SSLError as e:
    out = {"error": "SSLError", "detail": str(e)}
except requests.exceptions.ConnectionError as e:
    out = {"error": "ConnectionError", "detail": str(e)}
else:
    try:
        body = r.json()
    except ValueError:
        body = r.text
    out = {"status": r.status_code, "body": body}
print(json.dumps(out))
"#;

/// `requests.get(url, cert=(chain, key), verify=root)` from Python.
fn python_get(g: &Gateway, f: &Files, client: Option<&Leaf>, path: &str) -> Seen {
    let mut c = Command::new("python3");
    c.args(["-c", PY_REQUESTS, &g.url(path), &Files::p(&f.root())]);
    match client {
        Some(l) => c.arg(&l.chain).arg(&l.key),
        None => c.args(["", ""]),
    };
    let o = run(c, b"", Duration::from_secs(30), PYTHON_HINT);
    assert_ne!(o.code, 3, "{}: {PYTHON_HINT}", o.stderr.trim());
    Seen::parse("python requests", &o)
}

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/node")
}

/// One GET from Node.js, `mode` = "https" (`https.request`) or "axios", with the seed's Agent.
fn node_get(mode: &str, g: &Gateway, f: &Files, client: Option<&Leaf>, path: &str) -> Seen {
    let dir = node_dir();
    assert!(
        dir.join("node_modules/axios/package.json").exists(),
        "axios is not installed in {}: {NODE_HINT}",
        dir.display()
    );
    let mut c = Command::new("node");
    c.current_dir(&dir)
        .args(["client.js", mode, &g.url(path), &Files::p(&f.root())]);
    if let Some(l) = client {
        c.arg(&l.chain).arg(&l.key);
    }
    let o = run(c, b"", Duration::from_secs(30), NODE_HINT);
    Seen::parse(&format!("node {mode}"), &o)
}

/// `openssl s_client -quiet` sending one HTTP/1.1 request.
fn s_client(g: &Gateway, f: &Files, client: Option<&Leaf>) -> Out {
    let mut c = Command::new("openssl");
    c.args([
        "s_client",
        "-connect",
        &g.addr.to_string(),
        "-servername",
        "localhost",
        "-quiet",
    ])
    .arg("-CAfile")
    .arg(f.root())
    .args(["-verify_return_error", "-verify_hostname", "localhost"]);
    if let Some(l) = client {
        c.arg("-cert").arg(&l.chain).arg("-key").arg(&l.key);
    }
    run(
        c,
        b"GET /api/secure HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(30),
        OPENSSL_HINT,
    )
}

// ---------------------------------------------------------------------------------------------
// Fixture and certificates
// ---------------------------------------------------------------------------------------------

/// A gateway in front of an echo upstream, on a fresh test PKI. Fields drop in order: the
/// gateway stops before its directory goes.
struct Fx {
    g: Gateway,
    up: Upstream,
    f: Files,
    dir: tempfile::TempDir,
}

fn fixture(extra: &[&str]) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let mut args = vec!["--allow-any-trusted"];
    args.extend_from_slice(extra);
    let g = Gateway::start(&http_args(&f, &up, &args));
    Fx { g, up, f, dir }
}

/// Checks that `body` (the echo upstream's JSON) and the upstream's last request carry the
/// forwarded identity of `cn`.
#[track_caller]
fn assert_identity(what: &str, body: &Value, up: &Upstream, cn: &str) {
    let subject = format!("Subject=\"CN={cn}\"");
    let headers: Vec<(String, String)> = body["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: not the echo upstream's JSON: {body}"))
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_string(),
                h[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let xfcc: Vec<_> = headers
        .iter()
        .filter(|(k, _)| k == "x-forwarded-client-cert")
        .collect();
    assert_eq!(xfcc.len(), 1, "{what}: {headers:?}");
    assert!(
        xfcc[0].1.starts_with("Hash=") && xfcc[0].1.contains(&subject),
        "{what}: {xfcc:?}"
    );
    assert!(
        headers.iter().any(|(k, v)| k == "client-cert"
            && v.len() > 2
            && v.starts_with(':')
            && v.ends_with(':')),
        "{what}: no RFC 9440 Client-Cert: {headers:?}"
    );
    assert_eq!(body["path"], "/api/secure", "{what}");
    let last = up.last();
    assert!(
        last.iter()
            .any(|(k, v)| k == "x-forwarded-client-cert" && v.contains(&subject)),
        "{what}: upstream saw {last:?}"
    );
}

/// A client certificate chained to an unrelated CA (leaf + that CA's intermediate).
fn foreign_client(f: &Files) -> Leaf {
    let other = mtls_test_util::TestPki::new("other");
    let c = other.client("foreign");
    let leaf = f.write_leaf("foreign", &c.cert.der, &c.key);
    std::fs::write(
        &leaf.chain,
        format!(
            "{}{}",
            pem_io::encode("CERTIFICATE", &c.cert.der),
            pem_io::encode("CERTIFICATE", &other.intermediate_der())
        ),
    )
    .unwrap();
    leaf
}

/// Revokes `leaf` (which must be accepted until then) and waits until the gateway applies the
/// new CRL.
fn revoke(fx: &Fx, leaf: &Leaf) {
    let before = curl(&fx.g, &fx.f, Some(leaf), "/api/secure", &[]);
    assert_eq!(
        before.status, 200,
        "before revocation: {} {}",
        before.body, before.stderr
    );
    fx.f.write_crl(std::slice::from_ref(&leaf.serial));
    fx.g.hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl(&fx.g, &fx.f, Some(leaf), "/api/secure", &[]).status == 200 {
        assert!(
            Instant::now() < deadline,
            "the gateway did not apply the new CRL within 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every kind of bad client: no certificate, untrusted CA, expired, not yet valid,
/// serverAuth-only EKU, revoked (already in the gateway's CRL when this returns).
fn bad_clients(fx: &Fx) -> Vec<(&'static str, Option<Leaf>)> {
    let f = &fx.f;
    let now = OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let expired = f
        .pki
        .leaf_at(Profile::Client, "expired", &[], now - 10 * day, day);
    let future = f
        .pki
        .leaf_at(Profile::Client, "future", &[], now + day, 10 * day);
    let server_only = f.pki.leaf_at(
        Profile::Server,
        "server-only.example.com",
        &["server-only.example.com"],
        now,
        day,
    );
    let revoked = f.client("revoked");
    revoke(fx, &revoked);
    vec![
        ("no certificate", None),
        ("untrusted CA", Some(foreign_client(f))),
        (
            "expired",
            Some(f.write_leaf("expired", &expired.cert.der, &expired.key)),
        ),
        (
            "not yet valid",
            Some(f.write_leaf("future", &future.cert.der, &future.key)),
        ),
        (
            "serverAuth-only EKU",
            Some(f.write_leaf("server-only", &server_only.cert.der, &server_only.key)),
        ),
        ("revoked", Some(revoked)),
    ]
}

// ---------------------------------------------------------------------------------------------
// Python requests
// ---------------------------------------------------------------------------------------------

#[test]
fn python_requests_valid_client_reaches_upstream_with_identity() {
    let fx = fixture(&[]);
    let c = fx.f.client("client-app");
    let body = python_get(&fx.g, &fx.f, Some(&c), "/api/secure").ok_body("python requests");
    assert_identity("python requests", &body, &fx.up, "client-app");
    assert_eq!(fx.up.count(), 1);
}

#[test]
fn python_requests_bad_clients_fail_the_handshake_in_required_mode() {
    let fx = fixture(&[]);
    let cases = bad_clients(&fx);
    let forwarded = fx.up.count();
    for (name, leaf) in &cases {
        let e = python_get(&fx.g, &fx.f, leaf.as_ref(), "/api/secure")
            .rejected(&format!("python requests, {name}"));
        eprintln!("python requests, {name}: {e}");
    }
    assert_eq!(
        fx.up.count(),
        forwarded,
        "a rejected client reached the upstream"
    );
}

/// Optional mode answers the seed's JSON errors; checked from Python, Node.js https and axios.
#[test]
fn optional_mode_json_errors_seen_by_python_node_and_axios() {
    let fx = fixture(&["--client-auth", "optional"]);
    let cases = bad_clients(&fx);
    let forwarded = fx.up.count();
    type Get<'a> = Box<dyn Fn(Option<&Leaf>) -> Seen + 'a>;
    let tools: [(&str, Get<'_>); 3] = [
        (
            "python requests",
            Box::new(|l| python_get(&fx.g, &fx.f, l, "/api/secure")),
        ),
        (
            "node https",
            Box::new(|l| node_get("https", &fx.g, &fx.f, l, "/api/secure")),
        ),
        (
            "node axios",
            Box::new(|l| node_get("axios", &fx.g, &fx.f, l, "/api/secure")),
        ),
    ];
    for (tool, get) in &tools {
        for (name, leaf) in &cases {
            let what = format!("{tool}, optional mode, {name}");
            if leaf.is_none() {
                let msg = get(None).json_error(&what, 401, "NO_CLIENT_CERT");
                assert!(!msg.is_empty(), "{what}");
                continue;
            }
            let msg = get(leaf.as_ref()).json_error(&what, 403, "INVALID_CERT");
            eprintln!("{what}: 403 INVALID_CERT {msg:?}");
            let expected = match *name {
                "untrusted CA" => "no path to a trusted root",
                "expired" => "expired",
                "not yet valid" => "not valid until",
                "serverAuth-only EKU" => "clientauth",
                "revoked" => "revoked",
                other => unreachable!("{other}"),
            };
            assert!(
                msg.to_ascii_lowercase().contains(expected),
                "{what}: message {msg:?}"
            );
        }
        let good = fx.f.client("optional-good");
        let body = get(Some(&good)).ok_body(&format!("{tool}, optional mode, valid"));
        assert_identity(tool, &body, &fx.up, "optional-good");
    }
    assert_eq!(
        fx.up.count(),
        forwarded + tools.len(),
        "only the valid clients reach the upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// Node.js https + axios
// ---------------------------------------------------------------------------------------------

#[test]
fn node_https_and_axios_valid_client_reaches_upstream_with_identity() {
    let fx = fixture(&[]);
    let c = fx.f.client("node-app");
    for mode in ["https", "axios"] {
        let what = format!("node {mode}");
        let body = node_get(mode, &fx.g, &fx.f, Some(&c), "/api/secure").ok_body(&what);
        assert_identity(&what, &body, &fx.up, "node-app");
    }
    assert_eq!(fx.up.count(), 2);
}

#[test]
fn node_https_and_axios_bad_clients_fail_in_required_mode() {
    let fx = fixture(&[]);
    let cases = bad_clients(&fx);
    let forwarded = fx.up.count();
    for mode in ["https", "axios"] {
        for (name, leaf) in &cases {
            let e = node_get(mode, &fx.g, &fx.f, leaf.as_ref(), "/api/secure")
                .rejected(&format!("node {mode}, {name}"));
            eprintln!("node {mode}, {name}: {e}");
        }
    }
    assert_eq!(
        fx.up.count(),
        forwarded,
        "a rejected client reached the upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// openssl s_client
// ---------------------------------------------------------------------------------------------

#[test]
fn openssl_s_client_valid_client_gets_200_with_identity() {
    let fx = fixture(&[]);
    let c = fx.f.client("s-client-app");
    let o = s_client(&fx.g, &fx.f, Some(&c));
    let what = format!("s_client\nstdout: {}\nstderr: {}", o.stdout, o.stderr);
    assert!(o.stdout.starts_with("HTTP/1.1 200 OK\r\n"), "{what}");
    let (_, body) = o
        .stdout
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}"));
    let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
    let body: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {what}"));
    assert_identity("s_client", &body, &fx.up, "s-client-app");
    assert_eq!(fx.up.count(), 1);
}

#[test]
fn openssl_s_client_bad_clients_get_no_response_in_required_mode() {
    let fx = fixture(&[]);
    let cases = bad_clients(&fx);
    let forwarded = fx.up.count();
    for (name, leaf) in &cases {
        let o = s_client(&fx.g, &fx.f, leaf.as_ref());
        let what = format!(
            "s_client, {name}\nstdout: {}\nstderr: {}",
            o.stdout, o.stderr
        );
        // In TLS 1.3 the client's handshake ends before the server checks its certificate:
        // the rejection shows up as an alert on the first read, and nothing else comes back.
        assert!(
            !o.stdout.contains("200") && !o.stdout.contains("HTTP/"),
            "got an HTTP answer: {what}"
        );
        assert!(o.stderr.contains("alert"), "no TLS alert: {what}");
        assert_ne!(o.code, 0, "{what}");
        eprintln!(
            "s_client, {name}: {}",
            o.stderr.lines().find(|l| l.contains("alert")).unwrap_or("")
        );
    }
    assert_eq!(
        fx.up.count(),
        forwarded,
        "a rejected client reached the upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// sslyze
// ---------------------------------------------------------------------------------------------

/// The `result` of one sslyze scan command, which must have completed.
#[track_caller]
fn scan_result<'a>(scan: &'a Value, command: &str) -> &'a Value {
    let r = &scan["scan_result"][command];
    assert_eq!(r["status"], "COMPLETED", "sslyze {command}: {r}");
    &r["result"]
}

fn accepted_suites(scan: &Value, command: &str) -> Vec<String> {
    scan_result(scan, command)["accepted_cipher_suites"]
        .as_array()
        .unwrap_or_else(|| panic!("sslyze {command}: no accepted_cipher_suites list"))
        .iter()
        .map(|s| s["cipher_suite"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// Fails unless the pinned sslyze is installed.
fn require_sslyze() {
    let mut c = Command::new("python3");
    c.args([
        "-c",
        "import importlib.metadata as m; print(m.version('sslyze'))",
    ]);
    let version = run(c, b"", Duration::from_secs(30), PYTHON_HINT);
    assert_eq!(
        version.stdout.trim(),
        SSLYZE_VERSION,
        "sslyze {SSLYZE_VERSION} is required: `python3 -m pip install sslyze=={SSLYZE_VERSION}` \
         (scripts/test.sh does)\n{}",
        version.stderr
    );
}

/// Runs sslyze's `commands` against the gateway (presenting `client` if given) and returns its
/// one server scan result.
fn sslyze(fx: &Fx, client: Option<&Leaf>, commands: &[&str]) -> Value {
    let json = fx
        .dir
        .path()
        .join(format!("sslyze-{}.json", client.is_some()));
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "sslyze", "--quiet", "--mozilla_config", "disable"])
        .arg(format!("--json_out={}", json.display()))
        .args(["--sni", "localhost"])
        .args(commands)
        .arg(format!("localhost:{}{{127.0.0.1}}", fx.g.port()));
    if let Some(c) = client {
        cmd.arg("--cert").arg(&c.chain).arg("--key").arg(&c.key);
    }
    let o = run(cmd, b"", Duration::from_secs(300), PYTHON_HINT);
    assert_eq!(
        o.code, 0,
        "sslyze failed\nstdout: {}\nstderr: {}",
        o.stdout, o.stderr
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let scans = report["server_scan_results"].as_array().unwrap_or_else(|| {
        panic!("sslyze {SSLYZE_VERSION} JSON without server_scan_results: {report}")
    });
    assert_eq!(scans.len(), 1, "{report}");
    let scan = scans[0].clone();
    assert_eq!(scan["scan_status"], "COMPLETED", "{scan}");
    assert_eq!(scan["connectivity_status"], "COMPLETED", "{scan}");
    scan
}

/// Checks one sslyze run's cipher-suite results: nothing below TLS 1.2, TLS 1.2 only ECDHE + AEAD,
/// TLS 1.3 offered. `below_tls12` lists the legacy scan commands that run included. Returns the
/// accepted TLS 1.2 and TLS 1.3 suites.
#[track_caller]
fn check_suites(run: &str, scan: &Value, below_tls12: &[&str]) -> (Vec<String>, Vec<String>) {
    for command in below_tls12 {
        let accepted = accepted_suites(scan, command);
        assert!(
            accepted.is_empty(),
            "{run}: {command} accepted {accepted:?}"
        );
    }
    let tls12 = accepted_suites(scan, "tls_1_2_cipher_suites");
    assert!(!tls12.is_empty(), "{run}: no TLS 1.2 suite accepted");
    for s in &tls12 {
        assert!(
            s.starts_with("TLS_ECDHE_"),
            "{run}: TLS 1.2 suite without ECDHE: {s}"
        );
        assert!(
            s.ends_with("_GCM_SHA256")
                || s.ends_with("_GCM_SHA384")
                || s.ends_with("_CHACHA20_POLY1305_SHA256"),
            "{run}: TLS 1.2 suite without AEAD: {s}"
        );
    }
    // TLS 1.3 suites are all AEAD by definition; check that TLS 1.3 is offered at all.
    let tls13 = accepted_suites(scan, "tls_1_3_cipher_suites");
    assert!(!tls13.is_empty(), "{run}: no TLS 1.3 suite accepted");
    (tls12, tls13)
}

#[test]
fn sslyze_client_auth_required_tls12_plus_ecdhe_aead_only_no_insecure_renegotiation() {
    require_sslyze();
    let fx = fixture(&[]);

    // Without a client certificate. sslyze only probes the client-authentication requirement
    // when it has no certificate to present; a suite counts as accepted when the server gets as
    // far as asking for the certificate.
    let legacy = [
        "ssl_2_0_cipher_suites",
        "ssl_3_0_cipher_suites",
        "tls_1_0_cipher_suites",
        "tls_1_1_cipher_suites",
    ];
    let versions = [
        "--sslv2",
        "--sslv3",
        "--tlsv1",
        "--tlsv1_1",
        "--tlsv1_2",
        "--tlsv1_3",
    ];
    let anon = sslyze(&fx, None, &versions);
    let connectivity = &anon["connectivity_result"];
    assert_eq!(
        connectivity["client_auth_requirement"], "REQUIRED",
        "{connectivity}"
    );
    assert_eq!(
        connectivity["highest_tls_version_supported"], "TLS_1_3",
        "{connectivity}"
    );
    let (tls12, tls13) = check_suites("sslyze without a certificate", &anon, &legacy);

    // With a valid client certificate: full handshakes, and the renegotiation scan (which needs a
    // completed TLS 1.2 handshake). sslyze's SSL 2.0 client cannot load an EC key, so no --sslv2.
    let c = fx.f.client("sslyze");
    let authed = sslyze(
        &fx,
        Some(&c),
        &[
            "--sslv3",
            "--tlsv1",
            "--tlsv1_1",
            "--tlsv1_2",
            "--tlsv1_3",
            "--reneg",
        ],
    );
    let (tls12_authed, tls13_authed) =
        check_suites("sslyze with a certificate", &authed, &legacy[1..]);
    assert_eq!(
        tls12, tls12_authed,
        "TLS 1.2 suites differ with a client certificate"
    );
    assert_eq!(
        tls13, tls13_authed,
        "TLS 1.3 suites differ with a client certificate"
    );

    // Renegotiation: no client-initiated renegotiation (none succeeded, no DoS) and the
    // RFC 5746 secure-renegotiation indication is there.
    let reneg = scan_result(&authed, "session_renegotiation");
    assert_eq!(
        reneg["is_vulnerable_to_client_renegotiation_dos"], false,
        "{reneg}"
    );
    assert_eq!(reneg["client_renegotiations_success_count"], 0, "{reneg}");
    assert_eq!(reneg["supports_secure_renegotiation"], true, "{reneg}");

    eprintln!("sslyze: TLS 1.2 suites {tls12:?}; TLS 1.3 suites {tls13:?}; renegotiation {reneg}");
}
