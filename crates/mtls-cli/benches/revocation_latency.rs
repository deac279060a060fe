//! How long a revocation takes to reach a gateway: `cargo bench -p mtls-cli --bench
//! revocation_latency` (`MTLS_BENCH_ROUNDS`, default 50; `MTLS_BENCH_SOURCES=feed,crl,ocsp`).
//!
//! A real `mtls ca serve` and `mtls gateway` (an HTTP and a TCP-mode listener). Each round
//! issues nothing: it takes a fresh client certificate, opens an HTTP/1.1 keep-alive, an h2 and
//! a TCP-mode connection and stores a TLS 1.3 session ticket, checks all of them work, runs
//! `mtls revoke`, and from the moment that command returns measures, concurrently, until
//! (a) a new full handshake is refused, (b) a resumed session is refused, (c) the open HTTP/1.1
//! connection, (d) the open h2 connection and (e) the open TCP-mode connection are closed.
//! Sources: `feed` (the CA's revocation feed), `crl` (the CRL downloaded from the CA's
//! distribution point every second, file reload polled every 250 ms) and `ocsp` (the CA's
//! responder, answers valid 10 s and refreshed at half-life).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ca::{self, CaServer};
use common::conn::{connect, open_http};
use common::gw::{Gateway, Upstream};
use common::Env;
use http_body_util::Empty;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATHS: [&str; 5] = [
    "new handshake",
    "resumed TLS 1.3 session",
    "open HTTP/1.1 connection",
    "open h2 connection",
    "open TCP-mode connection",
];
/// Longest a path is waited for in one round (a miss is reported as such).
const GIVE_UP: Duration = Duration::from_secs(20);

struct Bench {
    env: Env,
    http: std::net::SocketAddr,
    tcp: std::net::SocketAddr,
}

impl Bench {
    fn pki(&self, rel: &str) -> PathBuf {
        self.env.pki().join(rel)
    }

    fn config(&self, client: &str, alpn: &[&[u8]], resume: bool) -> Arc<rustls::ClientConfig> {
        let cred = mtls_tls::CredentialFiles::new(
            self.pki(&format!("issued/{client}.chain.pem")),
            self.pki(&format!("issued/{client}.key")),
        )
        .load(time::OffsetDateTime::now_utc())
        .unwrap();
        let roots = mtls_tls::load_certificates(&[self.pki("root.crt")]).unwrap();
        let mut c = mtls_tls::client_config(&roots, Some(&cred), alpn).unwrap();
        if !resume {
            c.resumption = rustls::client::Resumption::disabled();
        }
        Arc::new(c)
    }
}

/// One GET over a new HTTP/1.1 connection: the status, or None when refused in TLS.
async fn get_once(
    to: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> (Option<u16>, bool) {
    let Ok(tls) = connect(to, config).await else {
        return (None, false);
    };
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let io = hyper_util::rt::TokioIo::new(tls);
    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(io).await else {
        return (None, resumed);
    };
    tokio::spawn(conn);
    let req = http::Request::get("/api/secure")
        .header("host", "localhost")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let status = match send.send_request(req).await {
        Ok(r) => Some(r.status().as_u16()),
        Err(_) => None,
    };
    (status, resumed)
}

/// A TCP-mode connection through which one HTTP exchange went; resolves when it is closed.
async fn open_tcp(
    to: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> tokio::task::JoinHandle<()> {
    let mut tls = connect(to, config).await.unwrap();
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: up\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "TCP mode works");
    tokio::spawn(async move {
        while let Ok(n) = tls.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
}

/// Time from `t0` until `done` resolves, or None after [`GIVE_UP`].
async fn until<F: std::future::Future<Output = ()>>(t0: Instant, done: F) -> Option<Duration> {
    tokio::time::timeout(GIVE_UP, done)
        .await
        .ok()
        .map(|_| t0.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run(source: &str, rounds: usize) {
    let env = Env::new();
    env.mtls(&["ca", "init", "--org", "Bench"]).ok();
    env.mtls(&["issue", "server", "localhost", "127.0.0.1"])
        .ok();
    for i in 0..rounds {
        env.mtls(&["issue", "client", &format!("b{i}"), "--days", "2"])
            .ok();
    }
    // OCSP answers live 10 s here (1 h by default): the gateway refreshes them at half-life.
    let extra = if source == "ocsp" {
        "ocsp_lifetime = \"10s\"\n[revocation_feed]\nallow_cn = [\"localhost\"]\n"
    } else {
        "[revocation_feed]\nallow_cn = [\"localhost\"]\n"
    };
    let ca = CaServer::start(&env, "ca", None, extra);
    let up = Upstream::start();
    let (http_port, tcp_port) = (ca::free_port(), ca::free_port());
    let pki = env.pki();
    let p = |rel: &str| pki.join(rel).to_string_lossy().into_owned();
    let listener = |name: &str, port: u16, mode: &str, upstream: String| {
        let source_cfg = match source {
            "feed" => format!("[listener.revocation_feed]\nurls = [\"{}\"]\n", ca.url()),
            "ocsp" => format!("[listener.ocsp]\nresponder = \"{}\"\n", ca.publish("/ocsp")),
            _ => {
                let file = env.p(&format!("crl-{name}.pem"));
                format!(
                    "crl = [\"{file}\"]\n[[listener.crl_fetch]]\nurl = \"{}\"\nfile = \"{file}\"\nevery = \"1s\"\n",
                    ca.publish("/v1/crl")
                )
            }
        };
        format!(
            "[[listener]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nmode = \"{mode}\"\nupstream = \"{upstream}\"\nclient_ca = [\"{}\"]\n{source_cfg}[listener.policy]\nallow_any_trusted = true\n[[listener.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
            p("ca-chain.pem"),
            p("issued/localhost.chain.pem"),
            p("issued/localhost.key"),
        )
    };
    let toml = format!(
        "access_log = false\n[limits]\nreload_poll = \"250ms\"\n{}{}",
        listener("http", http_port, "http", format!("http://{}", up.addr)),
        listener("tcp", tcp_port, "tcp", up.addr.to_string()),
    );
    let config = env.write("gateway.toml", toml.as_bytes());
    let g = Gateway::start_logging(&["--config".into(), config.display().to_string()], "warn");
    let b = Bench {
        http: g.addr,
        tcp: format!("127.0.0.1:{tcp_port}").parse().unwrap(),
        env,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut results: Vec<Vec<Duration>> = vec![Vec::new(); PATHS.len()];
    let mut missed = [0usize; PATHS.len()];
    let mut not_resumed = 0;
    for i in 0..rounds {
        let client = format!("b{i}");
        let serial = ca::serial_of(&b.env, &b.pki(&format!("issued/{client}.crt")));
        let h1_cfg = b.config(&client, &[b"http/1.1"], false);
        let h2_cfg = b.config(&client, &[b"h2"], false);
        let tcp_cfg = b.config(&client, &[], false);
        let resume_cfg = b.config(&client, &[b"http/1.1"], true);
        let (h1, h2, tcp) = rt.block_on(async {
            // The first connection stores the session ticket the later ones resume.
            assert_eq!(get_once(b.http, resume_cfg.clone()).await.0, Some(200));
            let (_, resumed) = get_once(b.http, resume_cfg.clone()).await;
            assert!(resumed, "the gateway resumes TLS 1.3 sessions");
            (
                open_http(b.http, h1_cfg.clone(), false).await,
                open_http(b.http, h2_cfg, true).await,
                open_tcp(b.tcp, tcp_cfg).await,
            )
        });
        b.env.mtls(&["revoke", &serial]).ok();
        let t0 = Instant::now();
        let (http, fresh) = (b.http, h1_cfg);
        let times = rt.block_on(async {
            let new_handshake = until(t0, async {
                while get_once(http, fresh.clone()).await.0 == Some(200) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
            // Whether the refused attempt was a resumption (else it proves nothing more than
            // a new handshake).
            let resumed = async {
                tokio::time::timeout(GIVE_UP, async {
                    loop {
                        let (status, resumed) = get_once(http, resume_cfg.clone()).await;
                        if status != Some(200) {
                            return resumed;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
                .await
                .ok()
                .map(|was| (t0.elapsed(), was))
            };
            let wait = |h: tokio::task::JoinHandle<()>| {
                until(t0, async move {
                    let _ = h.await;
                })
            };
            let (a, bt, c, d, e) =
                tokio::join!(new_handshake, resumed, wait(h1), wait(h2), wait(tcp));
            if bt.is_some_and(|(_, was)| !was) {
                not_resumed += 1;
            }
            [a, bt.map(|(t, _)| t), c, d, e]
        });
        for (k, t) in times.iter().enumerate() {
            match t {
                Some(t) => results[k].push(*t),
                None => missed[k] += 1,
            }
        }
    }
    drop(g);
    println!("\nsource: {source} ({rounds} revocations; refused attempts that were not resumptions: {not_resumed})\n");
    println!(
        "| path | p50 | p99 | max | missed (> {} s) |",
        GIVE_UP.as_secs()
    );
    println!("|---|---|---|---|---|");
    for (k, name) in PATHS.iter().enumerate() {
        let mut v = results[k].clone();
        v.sort();
        if v.is_empty() {
            println!("| {name} | – | – | – | {} |", missed[k]);
            continue;
        }
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        println!(
            "| {name} | {} | {} | {} | {} |",
            ms(percentile(&v, 0.5)),
            ms(percentile(&v, 0.99)),
            ms(*v.last().unwrap()),
            missed[k]
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let rounds = std::env::var("MTLS_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let sources = std::env::var("MTLS_BENCH_SOURCES").unwrap_or_else(|_| "feed,crl,ocsp".into());
    for s in sources.split(',') {
        run(s.trim(), rounds);
    }
}
