//! Builds and runs every example against real peers: curl with client certificates, Python
//! `requests`, Node.js axios (the guide's client code, `tests/node/client.js`), a Rust h2 and
//! HTTP/1.1 client that keeps its connection open across a revocation, and `mtls gateway` in
//! front of the behind-the-gateway example.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../../crates/mtls-cli/tests/common/mod.rs"]
mod common;
use common::{ca, gw};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gw::{Files, Gateway, Leaf};

/// A running example binary.
struct App {
    child: Child,
    addr: SocketAddr,
    /// Its standard error, line by line (also copied to the test's).
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl App {
    /// Starts example `bin` with `env` on 127.0.0.1:0 and waits for its "listening on" line.
    fn start(bin: &str, env: &[(&str, String)]) -> App {
        let mut child = Command::new(bin)
            .env("LISTEN", "127.0.0.1:0")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stderr, kept) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                kept.lock().unwrap().push(line);
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{bin} did not start: {line:?}"))
            .parse()
            .unwrap();
        App { child, addr, log }
    }

    /// Waits for a line of its log holding every one of `parts`.
    fn logged(&self, parts: &[&str]) -> String {
        common::wait_for_line(&self.log, parts)
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}

/// `GET /api/secure` on `app` with curl, trusting `root`, presenting `cert`/`key`: the body,
/// a newline and the HTTP status.
fn curl_as(app: &App, root: &Path, cert: &Path, key: &Path) -> String {
    let o = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(root)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", app.addr.port()))
        .arg(app.url("/api/secure"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn server_env(f: &Files) -> Vec<(&'static str, String)> {
    vec![
        ("CERT", Files::p(&f.server_chain())),
        ("KEY", Files::p(&f.server_key())),
        ("CA", Files::p(&f.ca_chain())),
        ("CRL", Files::p(&f.crl())),
    ]
}

struct Reply {
    status: u16,
    body: serde_json::Value,
}

/// curl with `client` (or none) and extra args; status and JSON body.
fn curl(app: &App, f: &Files, client: Option<&Leaf>, path: &str, extra: &[&str]) -> Reply {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(f.root())
    .arg("--resolve")
    .arg(format!("localhost:{}:127.0.0.1", app.addr.port()));
    if let Some(l) = client {
        c.arg("--cert").arg(&l.chain).arg("--key").arg(&l.key);
    }
    let o = c.args(extra).arg(app.url(path)).output().expect("curl");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    Reply {
        status: status.trim().parse().unwrap_or(0),
        body: serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.into())),
    }
}

fn assert_error(r: &Reply, status: u16, code: &str, message_has: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["error"]["code"], code, "{}", r.body);
    let m = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(m.contains(message_has), "{m:?} lacks {message_has:?}");
}

const PY_REQUESTS: &str = r#"
import json, sys
import requests
url, root, chain, key = sys.argv[1:5]
r = requests.get(url, cert=(chain, key), verify=root, timeout=10)
print(json.dumps({"status": r.status_code, "body": r.json()}))
"#;

fn python_get(app: &App, f: &Files, l: &Leaf, path: &str) -> serde_json::Value {
    let o = Command::new("python3")
        .args(["-c", PY_REQUESTS, &app.url(path), &Files::p(&f.root())])
        .arg(&l.chain)
        .arg(&l.key)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "python requests (pip install requests): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/node")
}

fn axios_get(app: &App, f: &Files, l: &Leaf, path: &str) -> serde_json::Value {
    assert!(
        node_dir().join("node_modules/axios/package.json").exists(),
        "run `npm ci` in tests/node (scripts/test.sh does)"
    );
    let o = Command::new("node")
        .current_dir(node_dir())
        .args(["client.js", "axios", &app.url(path), &Files::p(&f.root())])
        .arg(&l.chain)
        .arg(&l.key)
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("node: {}", String::from_utf8_lossy(&o.stderr)))
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within 15 s");
}

#[test]
fn secure_api_answers_curl_python_and_axios_with_the_guides_json() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let app = App::start(env!("CARGO_BIN_EXE_secure_api"), &server_env(&f));
    let c = f.client("client-app");
    let ok = curl(&app, &f, Some(&c), "/api/secure", &[]);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        ok.body,
        serde_json::json!({"message": "Authenticated via mTLS", "client": "client-app"})
    );
    let h2 = curl(&app, &f, Some(&c), "/api/secure", &["--http2"]);
    assert_eq!(h2.body["client"], "client-app");
    let py = python_get(&app, &f, &c, "/api/secure");
    assert_eq!(py["status"], 200);
    assert_eq!(py["body"]["client"], "client-app");
    let ax = axios_get(&app, &f, &c, "/api/secure");
    assert_eq!(ax["status"], 200, "{ax}");
    assert_eq!(ax["body"]["client"], "client-app");
    // Rejections, each with its reason.
    assert_error(
        &curl(&app, &f, None, "/api/secure", &[]),
        401,
        "NO_CLIENT_CERT",
        "Client certificate required",
    );
    let other = Files::new(&dir.path().join("other").tap_mkdir());
    let stranger = other.client("client-app");
    // Same issuer name, other key: the chain does not verify.
    assert_error(
        &curl(&app, &f, Some(&stranger), "/api/secure", &[]),
        403,
        "INVALID_CERT",
        "does not verify",
    );
    f.write_crl(std::slice::from_ref(&c.serial));
    wait_until("the revocation", || {
        curl(&app, &f, Some(&c), "/api/secure", &[]).status == 403
    });
    assert_error(
        &curl(&app, &f, Some(&c), "/api/secure", &[]),
        403,
        "INVALID_CERT",
        "revoked",
    );
}

trait TapMkdir {
    fn tap_mkdir(self) -> PathBuf;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn validator_example_requires_every_list_and_a_per_route_policy() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let good = f.client("client-app");
    let admin = f.client("ops-admin");
    let fp = |l: &Leaf| {
        let pem = std::fs::read(&l.chain).unwrap();
        let der = mtls_pki::pem_io::certificates(&pem).unwrap().remove(0);
        mtls_pki::Fingerprint::of(&der).to_string()
    };
    let mut env = server_env(&f);
    env.push(("ALLOWED_CNS", "client-app,ops-admin,unlisted".into()));
    env.push((
        "ALLOWED_FINGERPRINTS",
        format!("{},{}", fp(&good), fp(&admin)),
    ));
    env.push(("ADMIN_CNS", "ops-admin".into()));
    let app = App::start(env!("CARGO_BIN_EXE_validator"), &env);
    let r = curl(&app, &f, Some(&good), "/api/secure", &[]);
    assert_eq!(
        (r.status, &r.body["client"]),
        (200, &serde_json::json!("client-app"))
    );
    assert_eq!(r.body["fingerprint"], fp(&good));
    // CN listed, fingerprint not: refused by the fingerprint list.
    let unlisted = f.client("unlisted");
    assert_error(
        &curl(&app, &f, Some(&unlisted), "/api/secure", &[]),
        403,
        "INVALID_CERT",
        "CN=unlisted is not allowed",
    );
    // Per-route policy: only ops-admin reaches /api/admin.
    assert_error(
        &curl(&app, &f, Some(&good), "/api/admin", &[]),
        403,
        "INVALID_CERT",
        "CN=client-app is not allowed",
    );
    let r = curl(&app, &f, Some(&admin), "/api/admin", &[]);
    assert_eq!(
        (r.status, &r.body["admin"]),
        (200, &serde_json::json!("ops-admin"))
    );
    assert_error(
        &curl(&app, &f, None, "/api/admin", &[]),
        401,
        "NO_CLIENT_CERT",
        "",
    );
    // Refusals are WARN lines at the default level, naming the certificate and the request.
    let line = app.logged(&["request refused", "CN=unlisted"]);
    for part in [
        "WARN",
        "reason=\"INVALID_CERT\"",
        "nothing in allow_fingerprint",
        &format!("serial=\"{}\"", unlisted.serial),
        &format!("fingerprint=\"{}\"", fp(&unlisted)),
        "path=\"/api/secure\"",
        "status=403",
        "remote=127.0.0.1:",
    ] {
        assert!(line.contains(part), "{part} missing in {line}");
    }
    // A handshake that fails (plain HTTP on the TLS port) is a WARN line too.
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{}/api/secure", app.addr.port()))
        .output()
        .unwrap();
    assert!(!plain.status.success());
    let line = app.logged(&["handshake refused"]);
    assert!(line.contains("WARN") && line.contains("reason="), "{line}");
}

#[test]
fn guide_client_example_is_the_guides_mtls_client_with_an_encrypted_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let app = App::start(env!("CARGO_BIN_EXE_secure_api"), &server_env(&f));
    let leaf = f.pki.client("client-app");
    let c = f.write_leaf("enc", &leaf.cert.der, &leaf.key);
    std::fs::write(
        &c.key,
        leaf.key
            .to_encrypted_pem_with_iterations(b"client key passphrase", 10_000)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "client key passphrase\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = |pass: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_guide_client"));
        cmd.env("CERT", &c.chain)
            .env("KEY", &c.key)
            .env("CA", f.root())
            .arg(format!("https://127.0.0.1:{}/api/secure", app.addr.port()));
        if let Some(p) = pass {
            cmd.env("PASSPHRASE_FILE", p);
        }
        cmd.output().unwrap()
    };
    let o = run(Some(&pass));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("200"));
    let body: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(body["client"], "client-app");
    // Without the passphrase the key cannot be used: a clear error, no request.
    let o = run(None);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("encrypted"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Replaces `dst` atomically with `src`'s content (as a renewal does).
fn replace(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_builder_picks_up_replaced_certificate_files_on_its_next_connection() {
    replaced_certificate_files(false).await;
}

/// The same with the server's revocation status checked (a CRL): such a client resumes no
/// session, and the files are still noticed.
#[tokio::test]
async fn client_builder_with_revocation_checks_picks_up_replaced_certificate_files() {
    replaced_certificate_files(true).await;
}

async fn replaced_certificate_files(with_crl: bool) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let app = App::start(env!("CARGO_BIN_EXE_secure_api"), &server_env(&f));
    let first = f.client("first");
    let second = f.client("second");
    let cert = dir.path().join("current.chain.pem");
    let key = dir.path().join("current.key");
    replace(&first.chain, &cert);
    replace(&first.key, &key);
    let mut builder = mtls_client::ClientBuilder::new()
        .ca_file(f.root())
        .identity_files(&cert, &key)
        .pool_idle_timeout(Duration::from_millis(100));
    if with_crl {
        // The CRL's signer, the intermediate, is in the bundle.
        builder = builder.ca_file(f.ca_chain()).crl_file(f.crl());
    }
    let client = builder.build().unwrap();
    let url = format!("https://127.0.0.1:{}/api/secure", app.addr.port());
    let who = |client: &mtls_client::Client| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let body = client
                .get(&url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            v["client"].as_str().unwrap_or_default().to_string()
        }
    };
    assert_eq!(who(&client).await, "first");
    replace(&second.chain, &cert);
    replace(&second.key, &key);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(who(&client).await, "second", "the renewed files are used");
    // A broken replacement (half-written certificate) is not used: the last good one stays.
    std::fs::write(&cert, b"-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        who(&client).await,
        "second",
        "the last good identity is kept"
    );
    // A replacement refused for a reason its files do not show (a key readable by others,
    // fixed by chmod: no size, time or inode changes) is tried again until it loads.
    let third = f.client("third");
    let tmp = key.with_extension("tmp");
    std::fs::copy(&third.key, &tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::rename(&tmp, &key).unwrap();
    replace(&third.chain, &cert);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(who(&client).await, "second", "an insecure key is refused");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    tokio::time::sleep(mtls_tls::RETRY_FAILED_LOAD + Duration::from_millis(400)).await;
    assert_eq!(who(&client).await, "third", "the fixed key is picked up");
}

/// A TLS connection kept open across requests, HTTP/1.1 or h2: once the CRL revokes its
/// client, the server closes it (or refuses a request that raced the close) and a new
/// connection is refused.
async fn keep_alive_after_revocation(alpn: &[u8]) {
    use http_body_util::{BodyExt, Empty};
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let app = App::start(env!("CARGO_BIN_EXE_secure_api"), &server_env(&f));
    let c = f.client("long-lived");
    let cred = mtls_tls::CredentialFiles::new(&c.chain, &c.key)
        .load(time::OffsetDateTime::now_utc())
        .unwrap();
    let roots = mtls_tls::load_certificates(&[f.root()]).unwrap();
    let config = mtls_tls::client_config(&roots, Some(&cred), &[alpn]).unwrap();
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    let io = hyper_util::rt::TokioIo::new(tls);
    enum Sender {
        H1(hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>),
        H2(hyper::client::conn::http2::SendRequest<Empty<bytes::Bytes>>),
    }
    let mut sender = if alpn == b"h2" {
        let (s, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        Sender::H2(s)
    } else {
        let (s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        Sender::H1(s)
    };
    let uri = format!("https://localhost:{}/api/secure", app.addr.port());
    let host = format!("localhost:{}", app.addr.port());
    // Waits until the connection can take the next request: an HTTP/1.1 connection is ready
    // again only once the dispatcher has seen the previous response end, and `send_request`
    // before that fails with "connection was not ready" although the connection is open.
    // `None`: the server closed the connection.
    async fn get(sender: &mut Sender, uri: &str, host: &str) -> Option<(u16, serde_json::Value)> {
        let req = http::Request::get(uri)
            .header("host", host)
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let r = match sender {
            Sender::H1(s) => {
                s.ready().await.ok()?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.ok()?;
                s.send_request(req).await
            }
        }
        .ok()?;
        let status = r.status().as_u16();
        let body = r.into_body().collect().await.ok()?.to_bytes();
        Some((
            status,
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        ))
    }
    let (status, body) = get(&mut sender, &uri, &host)
        .await
        .expect("the connection is open");
    assert_eq!((status, body["client"].as_str()), (200, Some("long-lived")));
    f.write_crl(std::slice::from_ref(&c.serial));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match get(&mut sender, &uri, &host).await {
            // The server cut the connection as soon as the new CRL was loaded; a new one is
            // refused with the guide's 403.
            None => {
                let again = curl(&app, &f, Some(&c), "/api/secure", &[]);
                assert_eq!(again.status, 403);
                assert!(again.body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("revoked"));
                break;
            }
            // A request that raced the cut is refused.
            Some((403, body)) => {
                assert_eq!(body["error"]["code"], "INVALID_CERT");
                assert!(body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("revoked"));
                break;
            }
            Some((status, _)) => assert_eq!(status, 200),
        }
        assert!(
            Instant::now() < deadline,
            "still served 15 s after the CRL changed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_revoked_on_an_open_http1_connection_loses_it() {
    keep_alive_after_revocation(b"http/1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_revoked_on_an_open_h2_connection_loses_it() {
    keep_alive_after_revocation(b"h2").await;
}

#[test]
fn behind_gateway_trusts_forwarded_identity_only_from_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let gateway_id = f.client("gateway");
    let mut env = server_env(&f);
    env.push(("GATEWAY_CN", "gateway".into()));
    env.push(("ALLOWED_CNS", "client-app".into()));
    let app = App::start(env!("CARGO_BIN_EXE_behind_gateway"), &env);
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[listener]]
listen = "127.0.0.1:0"
upstream = "https://localhost:{port}"
upstream_ca = ["{root}"]
client_ca = ["{chain}"]
crl = ["{crl}"]
[listener.upstream_certificate]
cert = "{gcert}"
key = "{gkey}"
[[listener.certificate]]
cert = "{scert}"
key = "{skey}"
[listener.policy]
allow_any_trusted = true
"#,
            port = app.addr.port(),
            root = Files::p(&f.root()),
            chain = Files::p(&f.ca_chain()),
            crl = Files::p(&f.crl()),
            gcert = Files::p(&gateway_id.chain),
            gkey = Files::p(&gateway_id.key),
            scert = Files::p(&f.server_chain()),
            skey = Files::p(&f.server_key()),
        ),
    )
    .unwrap();
    // The upstream is named localhost in its certificate; the gateway resolves it.
    let g = Gateway::start(&["--config".into(), Files::p(&config)]);
    let client = f.client("client-app");
    let through = gw::curl(&g, &f, Some(&client), "/api/secure", &[]);
    assert_eq!(through.status, 200, "{} {}", through.body, through.stderr);
    let body: serde_json::Value = serde_json::from_str(&through.body).unwrap();
    assert_eq!(body["client"], "client-app");
    assert_eq!(body["via"], "gateway");
    // A forwarded client the application's policy does not allow.
    let intruder = f.client("intruder");
    let r = gw::curl(&g, &f, Some(&intruder), "/api/secure", &[]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("CN=intruder is not allowed"), "{}", r.body);
    // The refusal's log line names the forwarded client the policy judged, not the gateway.
    let line = app.logged(&["request refused", "CN=intruder is not allowed"]);
    assert!(
        line.contains(&format!("serial=\"{}\"", intruder.serial))
            && line.contains("subject=\"CN=intruder\"")
            && !line.contains("CN=gateway"),
        "{line}"
    );
    // Straight to the application, not the gateway, with forged identity headers naming
    // client-app: ignored, refused.
    let forged = {
        let pem = std::fs::read(&client.chain).unwrap();
        let der = mtls_pki::pem_io::certificates(&pem).unwrap().remove(0);
        use base64::Engine;
        format!(
            ":{}:",
            base64::engine::general_purpose::STANDARD.encode(der.as_ref())
        )
    };
    let direct = curl(
        &app,
        &f,
        Some(&intruder),
        "/api/secure",
        &[
            "-H",
            &format!("Client-Cert: {forged}"),
            "-H",
            "X-Forwarded-Client-Cert: Hash=00;Subject=\"CN=client-app\"",
        ],
    );
    assert_error(
        &direct,
        403,
        "INVALID_CERT",
        "only from a configured gateway",
    );
    // Even with the gateway's own certificate a missing header yields no identity.
    let no_header = curl(&app, &f, Some(&gateway_id), "/api/secure", &[]);
    assert_error(&no_header, 401, "NO_CLIENT_CERT", "");
}

#[test]
fn self_renewing_service_renews_from_mtls_ca_serve_and_serves_the_new_certificate() {
    let env = common::Env::new();
    env.mtls(&["ca", "init"]).ok();
    let (port, publish) = (ca::free_port(), ca::free_port());
    let server =
        ca::CaServer::start_on(&env, "ca", None, "leaf_lifetime = \"40s\"\n", port, publish);
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
    let first = ca::serial_of(&env, &env.path("srv/cert.pem"));
    env.mtls(&["issue", "client", "client-app"]).ok();
    let pki = env.pki();
    let app = App::start(
        env!("CARGO_BIN_EXE_self_renewing"),
        &[
            ("CERT", env.p("srv/cert.pem")),
            ("KEY", env.p("srv/key.pem")),
            ("ROOT", env.p("srv/ca.crt")),
            ("CA_URL", server.url()),
            ("CLIENT_CA", Files::p(&pki.join("ca-chain.pem"))),
            ("RENEW_BEFORE", "32s".into()),
        ],
    );
    // The serial the service presents to a new connection.
    let served = || {
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect {} -servername localhost -CAfile {} -cert {} -key {} </dev/null 2>/dev/null | openssl x509 -noout -serial",
                app.addr,
                Files::p(&pki.join("root.crt")),
                Files::p(&pki.join("issued/client-app.chain.pem")),
                Files::p(&pki.join("issued/client-app.key")),
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .trim_start_matches("serial=")
            .to_string()
    };
    assert_eq!(served(), first);
    let deadline = Instant::now() + Duration::from_secs(35);
    let renewed = loop {
        let now = served();
        if !now.is_empty() && now != first {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the service never presented a renewed certificate"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(renewed, ca::serial_of(&env, &env.path("srv/cert.pem")));
    // And it still answers its clients with the renewed certificate.
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(pki.join("root.crt"))
        .arg("--cert")
        .arg(pki.join("issued/client-app.chain.pem"))
        .arg("--key")
        .arg(pki.join("issued/client-app.key"))
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", app.addr.port()))
        .arg(app.url("/api/secure"))
        .output()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(body["client"], "client-app");
}

/// The application server follows `mtls ca serve`'s revocation feed: without any CRL file, a
/// client revoked at the CA loses its open keep-alive connection at once and is refused with the
/// guide's 403 on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_api_follows_the_cas_revocation_feed() {
    use http_body_util::{BodyExt, Empty};
    let env = common::Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "localhost", "127.0.0.1"])
        .ok();
    env.mtls(&["issue", "client", "client-app"]).ok();
    let server = ca::CaServer::start(
        &env,
        "ca",
        None,
        "[revocation_feed]\nallow_cn = [\"localhost\"]\n",
    );
    let pki = env.pki();
    let p = |rel: &str| Files::p(&pki.join(rel));
    let app = App::start(
        env!("CARGO_BIN_EXE_secure_api"),
        &[
            ("CERT", p("issued/localhost.chain.pem")),
            ("KEY", p("issued/localhost.key")),
            ("CA", p("ca-chain.pem")),
            ("FEED", server.url()),
        ],
    );
    let curl_status = || {
        let out = curl_as(
            &app,
            &pki.join("root.crt"),
            &pki.join("issued/client-app.chain.pem"),
            &pki.join("issued/client-app.key"),
        );
        out.rsplit('\n').next().unwrap_or_default().to_string()
    };
    assert_eq!(curl_status(), "200", "seeded from the CA's CRL at start");
    // A keep-alive connection, open and idle.
    let cred = mtls_tls::CredentialFiles::new(
        pki.join("issued/client-app.chain.pem"),
        pki.join("issued/client-app.key"),
    )
    .load(time::OffsetDateTime::now_utc())
    .unwrap();
    let roots = mtls_tls::load_certificates(&[pki.join("root.crt")]).unwrap();
    let config = mtls_tls::client_config(&roots, Some(&cred), &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    let closed = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get("/api/secure")
        .header("host", "localhost")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let r = send.send_request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.unwrap();

    let serial = ca::serial_of(&env, &pki.join("issued/client-app.crt"));
    let revoke = env.mtls(&["revoke", &serial]);
    assert_eq!(revoke.code, 0, "{}", revoke.stderr);
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the open connection of the revoked client is closed within 5 s")
        .unwrap();
    eprintln!(
        "open connection closed {:?} after mtls revoke",
        t0.elapsed()
    );
    drop(send);
    let status = curl_status();
    assert_eq!(
        status, "403",
        "a new connection is refused with the guide's 403"
    );
}

/// A server in required mode following the CA's feed: once the client is revoked, a WebSocket-
/// style upgraded connection it holds is cut (the upgraded stream outlives hyper's connection,
/// which used to drop the revocation watch and the connection's slot with it), and a resumed
/// TLS session (its handshake skips the certificate verifier) reaches no route at all, not even
/// one without the `ClientCert` extractor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_upgraded_connections_and_resumed_sessions() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = common::Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "localhost", "127.0.0.1"])
        .ok();
    env.mtls(&["issue", "client", "client-app"]).ok();
    let ca_server = ca::CaServer::start(
        &env,
        "ca",
        None,
        "[revocation_feed]\nallow_cn = [\"localhost\"]\n",
    );
    let pki = env.pki();
    let server = mtls_axum::MtlsServer::builder()
        .certificate(
            pki.join("issued/localhost.chain.pem"),
            pki.join("issued/localhost.key"),
        )
        .client_ca(pki.join("ca-chain.pem"))
        .revocation_feed(ca_server.url())
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
    let app = axum::Router::new()
        .route("/open", axum::routing::get(|| async { "open" }))
        .route("/echo", axum::routing::get(echo));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener, app));

    let cred = mtls_tls::CredentialFiles::new(
        pki.join("issued/client-app.chain.pem"),
        pki.join("issued/client-app.key"),
    )
    .load(time::OffsetDateTime::now_utc())
    .unwrap();
    let roots = mtls_tls::load_certificates(&[pki.join("root.crt")]).unwrap();
    // One configuration for every connection: its session cache lets the last one resume.
    let config =
        std::sync::Arc::new(mtls_tls::client_config(&roots, Some(&cred), &[b"http/1.1"]).unwrap());
    let connect = || {
        let config = config.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(config)
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap()
        }
    };
    // Reads one answer's head (and whatever follows it in the same read).
    async fn head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap()
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(buf.get(..n).unwrap());
        }
        String::from_utf8_lossy(&got).into_owned()
    }
    // A plain request: the route answers, and the session ticket arrives with the answer.
    let mut plain = connect().await;
    plain
        .write_all(b"GET /open HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = head(&mut plain).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(plain);
    // The upgraded connection echoes.
    let mut up = connect().await;
    up.write_all(
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = head(&mut up).await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    up.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    up.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    let serial = ca::serial_of(&env, &pki.join("issued/client-app.crt"));
    let revoke = env.mtls(&["revoke", &serial]);
    assert_eq!(revoke.code, 0, "{}", revoke.stderr);
    // The upgraded connection is cut (its reads end) within 5 s of the revocation.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 16];
        loop {
            match up.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the revoked client's upgraded connection is still open"
    );
    // A resumed session gets no answer, from any route.
    let mut resumed = connect().await;
    assert_eq!(
        resumed.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the session resumes (so the handshake verifier never saw the revoked certificate)"
    );
    let _ = resumed
        .write_all(b"GET /open HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let answer = head(&mut resumed).await;
    assert!(!answer.contains("HTTP/1.1 200"), "{answer}");
}

/// The application server checks client certificates with OCSP against `mtls ca serve`'s
/// responder: a good client passes, a revoked one gets the guide's 403 with the reason.
#[test]
fn secure_api_checks_client_certificates_with_ocsp() {
    let env = common::Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "localhost", "127.0.0.1"])
        .ok();
    env.mtls(&["issue", "client", "client-app"]).ok();
    env.mtls(&["issue", "client", "gone"]).ok();
    let server = ca::CaServer::start(&env, "ca", None, "");
    let pki = env.pki();
    let serial = ca::serial_of(&env, &pki.join("issued/gone.crt"));
    env.mtls(&["revoke", &serial]).ok();
    let p = |rel: &str| Files::p(&pki.join(rel));
    let app = App::start(
        env!("CARGO_BIN_EXE_secure_api"),
        &[
            ("CERT", p("issued/localhost.chain.pem")),
            ("KEY", p("issued/localhost.key")),
            ("CA", p("ca-chain.pem")),
            ("OCSP", server.publish("/ocsp")),
        ],
    );
    let get = |client: &str| {
        curl_as(
            &app,
            &pki.join("root.crt"),
            &pki.join(format!("issued/{client}.chain.pem")),
            &pki.join(format!("issued/{client}.key")),
        )
    };
    let ok = get("client-app");
    assert!(ok.ends_with("\n200"), "{ok}");
    let refused = get("gone");
    assert!(
        refused.ends_with("\n403")
            && refused.contains("INVALID_CERT")
            && refused.contains("revoked"),
        "{refused}"
    );
}

/// The application server follows the CRL Distribution Point its clients name (the online CA's
/// `/v1/crl`), with no CRL file: a revocation arrives at the refresh before nextUpdate.
#[test]
fn secure_api_follows_the_crl_distribution_points_of_its_clients() {
    let env = common::Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "localhost", "127.0.0.1"])
        .ok();
    let server = ca::CaServer::start(&env, "ca", None, "crl_lifetime = \"8s\"\n");
    let t = ca::token(&env, "cdp-client", &["--profile", "client"], None);
    ca::enroll(&env, &server, &t, "cdp", &[]).ok();
    let pki = env.pki();
    let p = |rel: &str| Files::p(&pki.join(rel));
    let app = App::start(
        env!("CARGO_BIN_EXE_secure_api"),
        &[
            ("CERT", p("issued/localhost.chain.pem")),
            ("KEY", p("issued/localhost.key")),
            ("CA", p("ca-chain.pem")),
            ("CRL_FROM_CERTIFICATES", "1".into()),
        ],
    );
    let get = || {
        curl_as(
            &app,
            &pki.join("root.crt"),
            &env.path("cdp/cert.pem"),
            &env.path("cdp/key.pem"),
        )
    };
    let until = |what: &str, limit: u64, f: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(limit);
        loop {
            let out = get();
            if f(&out) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {out}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    until("the CRL is fetched from the CDP", 10, &|o| {
        o.ends_with("\n200")
    });
    let serial = ca::serial_of(&env, &env.path("cdp/cert.pem"));
    env.mtls(&["revoke", &serial]).ok();
    until("the revocation arrives with the refreshed CRL", 20, &|o| {
        o.ends_with("\n403") && o.contains("revoked")
    });
}
