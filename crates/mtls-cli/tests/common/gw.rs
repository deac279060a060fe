//! Gateway test harness: a test PKI on disk, an echo upstream and a `mtls gateway` process.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use mtls_pki::revocation::{build_crl, RevokedEntry};
use mtls_pki::{pem_io, PrivateKey, Serial};
use mtls_test_util::TestPki;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

/// The `mtls` binary: cargo's path when this test belongs to `mtls-cli`, else the one built
/// into the same target directory (`cargo test --workspace` builds it).
pub fn mtls_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_mtls") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let p = dir.join("mtls");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p mtls-cli, or cargo test --workspace)",
        p.display()
    );
    p
}

/// A test PKI written to a directory.
pub struct Files {
    pub dir: PathBuf,
    pub pki: TestPki,
    crl_number: Mutex<u64>,
}

pub struct Leaf {
    pub chain: PathBuf,
    pub key: PathBuf,
    pub serial: Serial,
}

impl Files {
    pub fn new(dir: &Path) -> Self {
        let pki = TestPki::new("gw");
        let f = Files {
            dir: dir.to_path_buf(),
            pki,
            crl_number: Mutex::new(0),
        };
        std::fs::write(f.root(), pem_io::encode("CERTIFICATE", &f.pki.root_der())).unwrap();
        std::fs::write(
            f.ca_chain(),
            format!(
                "{}{}",
                pem_io::encode("CERTIFICATE", &f.pki.intermediate_der()),
                pem_io::encode("CERTIFICATE", &f.pki.root_der())
            ),
        )
        .unwrap();
        let s = f.pki.server(&["localhost", "127.0.0.1"]);
        f.write_leaf("server", &s.cert.der, &s.key);
        f.write_crl(&[]);
        f
    }
    pub fn root(&self) -> PathBuf {
        self.dir.join("root.pem")
    }
    pub fn ca_chain(&self) -> PathBuf {
        self.dir.join("ca-chain.pem")
    }
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }
    pub fn server_chain(&self) -> PathBuf {
        self.dir.join("server.chain.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn p(p: &Path) -> String {
        p.to_string_lossy().into_owned()
    }

    /// Writes `<name>.chain.pem` (leaf + intermediate) and `<name>.key` (0600).
    pub fn write_leaf(&self, name: &str, der: &CertificateDer<'_>, key: &PrivateKey) -> Leaf {
        let chain = self.dir.join(format!("{name}.chain.pem"));
        let keyp = self.dir.join(format!("{name}.key"));
        std::fs::write(
            &chain,
            format!(
                "{}{}",
                pem_io::encode("CERTIFICATE", der),
                pem_io::encode("CERTIFICATE", &self.pki.intermediate_der())
            ),
        )
        .unwrap();
        std::fs::write(&keyp, key.to_pem().as_bytes()).unwrap();
        std::fs::set_permissions(&keyp, std::fs::Permissions::from_mode(0o600)).unwrap();
        let serial = Serial::from_be_bytes(pem_io::parse_certificate(der).unwrap().raw_serial());
        Leaf {
            chain,
            key: keyp,
            serial,
        }
    }

    /// A valid client certificate with common name `cn`.
    pub fn client(&self, cn: &str) -> Leaf {
        let c = self.pki.client(cn);
        self.write_leaf(
            &cn.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            &c.cert.der,
            &c.key,
        )
    }

    /// Replaces the CRL (atomically, as a deployment would) with one revoking `serials`.
    pub fn write_crl(&self, serials: &[Serial]) {
        let mut n = self.crl_number.lock().unwrap();
        *n += 1;
        let now = OffsetDateTime::now_utc();
        let entries: Vec<RevokedEntry> = serials
            .iter()
            .map(|s| RevokedEntry {
                serial: s.clone(),
                revoked_at: now,
                reason: None,
            })
            .collect();
        let crl = build_crl(
            &self.pki.intermediate,
            *n,
            now,
            time::Duration::days(1),
            &entries,
        )
        .unwrap();
        let tmp = self.dir.join("crl.pem.tmp");
        std::fs::write(&tmp, pem_io::encode("X509 CRL", &crl)).unwrap();
        std::fs::rename(&tmp, self.crl()).unwrap();
    }
}

/// Request headers as the upstream received them.
pub type Headers = Vec<(String, String)>;

/// An HTTP/1.1 upstream that answers 200 with the request's headers as JSON and remembers them.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Headers>>>,
    _rt: tokio::runtime::Runtime,
}

impl Upstream {
    pub fn start() -> Self {
        use http_body_util::Full;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let seen: Arc<Mutex<Vec<Headers>>> = Arc::default();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let seen2 = seen.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let headers: Vec<(String, String)> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                                .collect();
                            seen.lock().unwrap().push(headers.clone());
                            let path = req.uri().path().to_string();
                            // Read the request body, as a real upstream does (an unread body
                            // ends the connection's keep-alive).
                            let received = http_body_util::BodyExt::collect(req.into_body())
                                .await
                                .map(|b| b.to_bytes().len())
                                .unwrap_or(0);
                            let body = serde_json::json!({"path": path, "headers": headers, "body_bytes": received}).to_string();
                            let mut resp = http::Response::new(Full::new(bytes::Bytes::from(body)));
                            if path == "/redirect" {
                                *resp.status_mut() = http::StatusCode::FOUND;
                                resp.headers_mut().insert("location", http::HeaderValue::from_static("https://elsewhere.invalid/"));
                            }
                            if path == "/switch-unasked" {
                                // A protocol switch nobody asked for.
                                *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                                resp.headers_mut().insert("upgrade", http::HeaderValue::from_static("x-custom"));
                                resp.headers_mut().insert("connection", http::HeaderValue::from_static("upgrade"));
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            _rt: rt,
        }
    }

    pub fn last(&self) -> Vec<(String, String)> {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A running `mtls gateway`.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts `mtls gateway ARGS` (add `--listen 127.0.0.1:0`) and waits until it listens.
    pub fn start(args: &[String]) -> Self {
        Self::start_logging(args, "info")
    }

    /// [`start`](Self::start) with this `MTLS_LOG` level (`warn` is the default of the binary).
    pub fn start_logging(args: &[String], level: &str) -> Self {
        let mut child = Command::new(mtls_bin())
            .arg("gateway")
            .args(args)
            .env("MTLS_LOG", level)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let err_lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let out_lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let e2 = err_lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                e2.lock().unwrap().push(line);
            }
        });
        let o2 = out_lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                o2.lock().unwrap().push(line);
            }
        });
        let mut addr = None;
        let mut admin = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("mtls gateway: listening on ") {
                        // The first listener is the one tests talk to.
                        addr = addr.or_else(|| a.trim().parse().ok());
                    }
                    if let Some(a) = line.strip_prefix("mtls gateway: metrics on http://") {
                        admin = Some(a.trim_end_matches("/metrics").parse().unwrap());
                    }
                    let wants_admin = args.iter().any(|a| a == "--admin-listen")
                        || args.windows(2).any(|w| {
                            w[0] == "--config"
                                && std::fs::read_to_string(&w[1])
                                    .is_ok_and(|t| t.contains("admin_listen"))
                        });
                    if addr.is_some() && (!wants_admin || admin.is_some()) {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!(
                            "gateway exited with {status}: {:?}",
                            err_lines.lock().unwrap()
                        );
                    }
                }
                Err(_) => break,
            }
        }
        let addr = addr
            .unwrap_or_else(|| panic!("gateway did not start: {:?}", err_lines.lock().unwrap()));
        Gateway {
            child,
            addr,
            admin,
            stdout: out_lines,
            stderr: err_lines,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port())
    }

    /// Sends SIGHUP.
    pub fn hup(&self) {
        Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard arguments for an HTTP gateway in front of `up`.
pub fn http_args(f: &Files, up: &Upstream, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--cert".into(),
        Files::p(&f.server_chain()),
        "--key".into(),
        Files::p(&f.server_key()),
        "--client-ca".into(),
        Files::p(&f.ca_chain()),
        "--crl".into(),
        Files::p(&f.crl()),
        "--upstream".into(),
        format!("http://{}", up.addr),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

pub struct CurlOut {
    pub code: i32,
    pub status: u16,
    pub body: String,
    pub stderr: String,
}

/// Runs curl against the gateway with a client certificate (or none), returning status + body.
pub fn curl(g: &Gateway, f: &Files, client: Option<&Leaf>, path: &str, extra: &[&str]) -> CurlOut {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--max-time",
        "10",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(f.root())
    .arg("--resolve")
    .arg(format!("localhost:{}:127.0.0.1", g.port()));
    if let Some(l) = client {
        c.arg("--cert").arg(&l.chain).arg("--key").arg(&l.key);
    }
    c.args(extra).arg(g.url(path));
    let o = c.output().expect("curl must be installed");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    CurlOut {
        code: o.status.code().unwrap_or(-1),
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Runs `openssl s_client` (with `-ign_eof`) against the gateway presenting `leaf` (if any), writes each
/// chunk of `input` half a second apart, and returns its stdout once the server closes (a
/// watchdog ends it after 10 s).
pub fn s_client(
    g: &Gateway,
    f: &Files,
    leaf: Option<&Leaf>,
    extra: &[&str],
    input: &[&[u8]],
) -> String {
    use std::io::{Read, Write};
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &g.addr.to_string(),
            "-servername",
            "localhost",
            "-ign_eof",
        ])
        .arg("-CAfile")
        .arg(f.root())
        .args(
            leaf.map(|l| {
                vec![
                    std::ffi::OsStr::new("-cert"),
                    l.chain.as_os_str(),
                    std::ffi::OsStr::new("-key"),
                    l.key.as_os_str(),
                ]
            })
            .unwrap_or_default(),
        )
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for chunk in input {
        std::thread::sleep(Duration::from_millis(500));
        let _ = stdin.write_all(chunk);
    }
    let pid = child.id();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(10));
        let _ = Command::new("kill").arg(pid.to_string()).status();
    });
    let mut out = Vec::new();
    let _ = child.stdout.take().unwrap().read_to_end(&mut out);
    drop(stdin);
    let _ = child.wait();
    String::from_utf8_lossy(&out).into_owned()
}

/// Arguments of an HTTP gateway on 127.0.0.1:0 in front of `up`, serving `cert`/`key`,
/// trusting `client_ca` and allowing every client it trusts, then `extra`.
pub fn trusting_args(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    up: &Upstream,
    extra: &[&str],
) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--cert".into(),
        Files::p(cert),
        "--key".into(),
        Files::p(key),
        "--client-ca".into(),
        Files::p(client_ca),
        "--upstream".into(),
        format!("http://{}", up.addr),
        "--allow-any-trusted".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// `GET /api/secure` through `g` with curl, trusting `root` and presenting `cert`/`key`: the
/// HTTP status, 0 when the TLS handshake was refused.
pub fn status_as(g: &Gateway, root: &Path, cert: &Path, key: &Path) -> u16 {
    super::ca::curl(&[
        "--cacert",
        &Files::p(root),
        "--resolve",
        &format!("localhost:{}:127.0.0.1", g.port()),
        "--cert",
        &Files::p(cert),
        "--key",
        &Files::p(key),
        &g.url("/api/secure"),
    ])
    .0
}
