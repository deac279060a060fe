//! In-process gateway test harness: a test PKI on disk, a gateway started from a TOML
//! configuration (the library, not the `mtls` binary), an upstream that records the raw
//! request lines and bodies it receives, curl and a raw TLS client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mtls_pki::pem_io;
use mtls_test_util::TestPki;

/// A test PKI written to a directory: root, intermediate, a server certificate for
/// `localhost`, and client certificates on demand.
pub struct Files {
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
}

/// A client certificate chain and key on disk.
pub struct Leaf {
    pub chain: PathBuf,
    pub key: PathBuf,
}

impl Files {
    pub fn new() -> Self {
        let f = Files {
            dir: tempfile::tempdir().unwrap(),
            pki: TestPki::new("gwtest"),
        };
        std::fs::write(f.root(), pem_io::encode("CERTIFICATE", &f.pki.root_der())).unwrap();
        std::fs::write(
            f.path("ca-chain.pem"),
            format!(
                "{}{}",
                pem_io::encode("CERTIFICATE", &f.pki.intermediate_der()),
                pem_io::encode("CERTIFICATE", &f.pki.root_der())
            ),
        )
        .unwrap();
        let s = f.pki.server(&["localhost", "127.0.0.1"]);
        f.write_leaf("server", &s.cert.der, &s.key);
        f
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn root(&self) -> PathBuf {
        self.path("root.pem")
    }

    fn write_leaf(
        &self,
        name: &str,
        der: &rustls_pki_types::CertificateDer<'_>,
        key: &mtls_pki::PrivateKey,
    ) -> Leaf {
        let chain = self.path(&format!("{name}.chain.pem"));
        let keyp = self.path(&format!("{name}.key"));
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
        Leaf { chain, key: keyp }
    }

    /// Writes `gateway.toml`: one HTTP listener on 127.0.0.1 in front of `upstream`, allowing
    /// `allow_cn`, with `extra` TOML in its `[[listener]]` table (options, then
    /// `[[listener.route]]`s).
    pub fn config(&self, upstream: SocketAddr, allow_cn: &[&str], extra: &str) -> PathBuf {
        let toml = format!(
            r#"access_log = false
[[listener]]
name = "test"
listen = "127.0.0.1:0"
upstream = "http://{upstream}"
client_ca = ["ca-chain.pem"]
{extra}
[[listener.certificate]]
cert = "server.chain.pem"
key = "server.key"
[listener.policy]
allow_cn = {allow_cn:?}
"#
        );
        let path = self.path("gateway.toml");
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// A valid client certificate with common name `cn`.
    pub fn client(&self, cn: &str) -> Leaf {
        let c = self.pki.client(cn);
        self.write_leaf(cn, &c.cert.der, &c.key)
    }
}

/// A gateway with one HTTP listener in front of `upstream`, started in-process.
pub struct Gateway {
    pub addr: SocketAddr,
    running: Option<mtls_gateway::Running>,
    rt: tokio::runtime::Runtime,
}

impl Gateway {
    /// Starts a listener allowing `allow_cn` (on top of which `extra` TOML is appended to the
    /// `[[listener]]` table: options and `[[listener.route]]`s).
    pub fn start(f: &Files, upstream: SocketAddr, allow_cn: &[&str], extra: &str) -> Self {
        Self::try_start(f, upstream, allow_cn, extra).unwrap()
    }

    pub fn try_start(
        f: &Files,
        upstream: SocketAddr,
        allow_cn: &[&str],
        extra: &str,
    ) -> Result<Self, mtls_gateway::Error> {
        let cfg = mtls_gateway::GatewayConfig::from_file(&f.config(upstream, allow_cn, extra))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let running = rt.block_on(mtls_gateway::start(cfg, None))?;
        Ok(Gateway {
            addr: running.addrs[0],
            running: Some(running),
            rt,
        })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(5), r.shutdown()).await;
            });
        }
    }
}

/// What curl got.
pub struct CurlOut {
    pub status: u16,
    pub body: String,
    pub stderr: String,
}

/// curl to the gateway as `client`, with `extra` arguments, at most 10 s.
pub fn curl(g: &Gateway, f: &Files, client: &Leaf, path: &str, extra: &[&str]) -> CurlOut {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(f.root())
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", g.addr.port()))
        .arg("--cert")
        .arg(&client.chain)
        .arg("--key")
        .arg(&client.key)
        .args(extra)
        .arg(format!("https://localhost:{}{path}", g.addr.port()))
        .output()
        .expect("curl must be installed");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    CurlOut {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A blocking TLS connection to the gateway as `client` (ALPN http/1.1).
pub fn tls(
    g: &Gateway,
    f: &Files,
    client: &Leaf,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(f.root()).unwrap())
        .unwrap();
    let chain = rustls_pki_types::CertificateDer::pem_file_iter(&client.chain)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&client.key).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(g.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Which upstream connection it came on (numbered from 0 in accept order).
    pub conn: usize,
    pub request_line: String,
    /// The header lines as they were on the wire (name and value, untouched).
    pub lines: Vec<String>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Seen {
    /// The header lines named `name` (any case).
    pub fn header_lines(&self, name: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|l| {
                l.split_once(':')
                    .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
            })
            .map(String::as_str)
            .collect()
    }
}

/// An HTTP/1.1 upstream written on raw TCP: it records each request's header lines as they
/// came (so duplicates and joins are visible) and its body, and answers `200 ok`.
///
/// A path starting with `/early` is answered as soon as its head has arrived, before the
/// body is read (as servers refusing an upload do); the connection is then read to its end
/// and counts as closed when the gateway closes it.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections the gateway has closed, by number.
    pub closed: Arc<Mutex<Vec<usize>>>,
}

impl Upstream {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let closed: Arc<Mutex<Vec<usize>>> = Arc::default();
        let (s, c) = (seen.clone(), closed.clone());
        std::thread::spawn(move || {
            for (n, tcp) in listener.incoming().enumerate() {
                let Ok(tcp) = tcp else { return };
                let (s, c) = (s.clone(), c.clone());
                std::thread::spawn(move || {
                    // Bounded: a connection the gateway forgets ends within a minute.
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(60)));
                    let _ = serve(n, tcp, &s);
                    c.lock().unwrap().push(n);
                });
            }
        });
        Upstream { addr, seen, closed }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests()
            .last()
            .cloned()
            .expect("no request reached the upstream")
    }

    pub fn is_closed(&self, conn: usize) -> bool {
        self.closed.lock().unwrap().contains(&conn)
    }
}

fn serve(n: usize, tcp: TcpStream, seen: &Mutex<Vec<Seen>>) -> std::io::Result<()> {
    let mut out = tcp.try_clone()?;
    let mut r = BufReader::new(tcp);
    loop {
        let mut request_line = String::new();
        if r.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            if r.read_line(&mut l)? == 0 {
                return Ok(());
            }
            let l = l.trim_end_matches(['\r', '\n']).to_string();
            if l.is_empty() {
                break;
            }
            lines.push(l);
        }
        let mut req = Seen {
            conn: n,
            request_line: request_line.trim_end().to_string(),
            lines,
            body: Vec::new(),
        };
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        if req
            .request_line
            .split(' ')
            .nth(1)
            .is_some_and(|p| p.starts_with("/early"))
        {
            seen.lock().unwrap().push(req);
            out.write_all(ok)?;
            // Whatever else comes on this connection is discarded, until its end.
            std::io::copy(&mut r, &mut std::io::sink())?;
            return Ok(());
        }
        let chunked = !req.header_lines("transfer-encoding").is_empty();
        let length: usize = req
            .header_lines("content-length")
            .first()
            .and_then(|l| l.split_once(':'))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        if chunked {
            loop {
                let mut size = String::new();
                r.read_line(&mut size)?;
                let size = usize::from_str_radix(size.trim(), 16)
                    .map_err(|_| std::io::Error::other("bad chunk size"))?;
                let mut chunk = vec![0; size + 2];
                r.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                req.body.extend_from_slice(&chunk[..size]);
            }
        } else {
            req.body = vec![0; length];
            r.read_exact(&mut req.body)?;
        }
        let head = req.request_line.starts_with("HEAD ");
        seen.lock().unwrap().push(req);
        out.write_all(if head { &ok[..ok.len() - 2] } else { ok })?;
    }
}

/// Polls `cond` every 50 ms for up to `limit`.
pub fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// Reads an HTTP/1.1 response with a `Content-Length` body from `s`: (status, body).
pub fn read_response(s: &mut impl Read) -> (u16, String) {
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut length = 0;
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).unwrap();
    (
        status
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

pub fn p(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
