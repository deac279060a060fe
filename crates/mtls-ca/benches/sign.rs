//! Throughput and latency of the online CA's `POST /v1/sign` (enrollment: one-time token + CSR),
//! end to end over HTTPS, every certificate durably recorded before it is returned.
//!
//! Set-up, before anything is timed: a P-256 root and intermediate; a fresh inventory (SQLite in
//! a temporary directory, or a fresh database in the PostgreSQL cluster named by
//! `MTLS_BENCH_POSTGRES_URL`); N one-time tokens minted into it; N P-256 CSRs with an empty
//! subject. The CA server then runs in a child process (this binary re-executed with
//! `MTLS_BENCH_ROLE=server`) pinned to CPU 0 with `taskset -c 0`, in a tokio runtime with ONE
//! worker thread (its blocking-pool threads and the SQLite writer thread are extra threads, but
//! pinned to the same core). The load generator (this process, a current-thread runtime) pins
//! itself to CPU 1, opens C keep-alive HTTPS connections (HTTP/1.1, TLS 1.3, trusting the root),
//! and sends the N JSON requests spread over them, each connection sending its next request as
//! soon as the previous answer arrived (closed loop). Every answer must be 201; afterwards the
//! inventory must hold exactly N + 2 certificates (N enrolled + the CA's server certificate and
//! its delegated OCSP signer). The first requests of each run warm up and are not timed.
//!
//! Each configuration (C = 16, then C = 1) gets its own fresh inventory and server. PostgreSQL
//! runs outside the pinning (its backends may use either core).
//!
//! `MTLS_BENCH_MODE=ceiling` measures what the target leaves out: the same CSRs over the same
//! stack (rustls, hyper, axum, JSON in and out, `mtls_pki::csr::parse` with its signature check,
//! `issue_leaf`, PEM chain in the answer) with no token and no database at all, so the figure
//! is an upper bound for any durable CA built on this stack on this machine.
//!
//! Environment: `MTLS_BENCH_N` (requests at C > 1, default 20000), `MTLS_BENCH_N_SERIAL`
//! (requests at C = 1, default 2000), `MTLS_BENCH_CONNS` (default `16,1`),
//! `MTLS_BENCH_POSTGRES_URL` (use PostgreSQL; a database `mtls_bench_<pid>_c<C>` is created
//! with `psql` and dropped afterwards). Run with `cargo bench -p mtls-ca --bench sign`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use mtls_ca::authority::{mint_token, TokenRequest};
use mtls_ca::{Authority, AuthorityParts, Settings};
use mtls_pki::issue::{self, CaCert};
use mtls_pki::{csr, KeyAlgorithm, PrivateKey, Profile, Subject};
use mtls_store::{ListFilter, Location, Store};
use rustls_pki_types::{CertificateDer, ServerName};
use time::{Duration, OffsetDateTime};

const ROLE: &str = "MTLS_BENCH_ROLE";
const DIR: &str = "MTLS_BENCH_DIR";
const DB: &str = "MTLS_BENCH_DB";
/// Longest a whole timed run may take before the bench gives up.
const RUN_TIMEOUT: StdDuration = StdDuration::from_secs(240);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?}: not a number"))
        })
        .unwrap_or(default)
}

fn ceiling_mode() -> bool {
    std::env::var("MTLS_BENCH_MODE").as_deref() == Ok("ceiling")
}

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("server") {
        if ceiling_mode() {
            ceiling_server_main();
        } else {
            server_main();
        }
        return;
    }
    let n = env_usize("MTLS_BENCH_N", 20_000);
    let n_serial = env_usize("MTLS_BENCH_N_SERIAL", 2_000);
    let conns: Vec<usize> = std::env::var("MTLS_BENCH_CONNS")
        .unwrap_or_else(|_| "16,1".into())
        .split(',')
        .map(|c| c.trim().parse().expect("MTLS_BENCH_CONNS: numbers"))
        .collect();
    let pg = std::env::var("MTLS_BENCH_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let backend = if ceiling_mode() {
        "no-database-ceiling"
    } else if pg.is_some() {
        "postgres"
    } else {
        "sqlite"
    };

    let dir = tempfile::tempdir().unwrap();
    let root = write_pki(dir.path());
    let counts: Vec<usize> = conns
        .iter()
        .map(|&c| if c == 1 { n_serial } else { n })
        .collect();
    let started = Instant::now();
    let mut csrs = make_csrs(counts.iter().sum());
    eprintln!(
        "sign: {} P-256 CSRs generated in {:.1?}",
        csrs.len(),
        started.elapsed()
    );

    for (&c, &count) in conns.iter().zip(&counts) {
        let phase_csrs: Vec<String> = csrs.drain(..count).collect();
        let (location, dropdb) = match &pg {
            None => (
                Location::Sqlite(dir.path().join(format!("inventory-c{c}.db"))),
                None,
            ),
            Some(url) => {
                let name = format!("mtls_bench_{}_c{c}", std::process::id());
                psql(url, &format!("DROP DATABASE IF EXISTS {name}"));
                psql(url, &format!("CREATE DATABASE {name}"));
                (
                    Location::Postgres(with_database(url, &name)),
                    Some((url.clone(), name)),
                )
            }
        };
        let r = run(c, &location, &root, dir.path(), phase_csrs);
        println!(
            "sign/{backend}/c{c}: {} requests ({} warm-up) in {:.2} s: {:.0} req/s, \
             latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             CPU busy during the run: cpu0 (server) {:.0}%, cpu1 (load generator{}) {:.0}%; \
             server CPU {:.0} µs/request; inventory {} certificates (expected {})",
            r.timed,
            r.warmup,
            r.elapsed.as_secs_f64(),
            r.timed as f64 / r.elapsed.as_secs_f64(),
            ms(r.p50),
            ms(r.p90),
            ms(r.p99),
            ms(r.max),
            r.cpu_busy[0] * 100.0,
            if pg.is_some() { ", PostgreSQL" } else { "" },
            r.cpu_busy[1] * 100.0,
            r.server_cpu_per_request.as_secs_f64() * 1e6,
            r.inventory,
            count + 2,
        );
        if let Some((url, name)) = dropdb {
            psql(
                &url,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
        if !ceiling_mode() {
            assert_eq!(r.inventory, count + 2, "inventory count");
        }
    }
}

fn ms(d: StdDuration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn psql(url: &str, sql: &str) {
    let status = Command::new("psql")
        .args([url, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdout(Stdio::null())
        .status()
        .expect("running psql");
    assert!(status.success(), "psql {sql:?} failed");
}

/// `url` with its database (the path) replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[host_start..].find('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A P-256 root and intermediate, written as PEM into `dir` for the server process.
fn write_pki(dir: &Path) -> CertificateDer<'static> {
    let now = OffsetDateTime::now_utc() - Duration::days(1);
    let root = issue::new_root(
        &Subject::cn("Bench Root CA"),
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        now,
        Duration::days(3650),
    )
    .unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let key_pem = key.to_pem();
    let ca = issue::new_intermediate(
        &root,
        &Subject::cn("Bench Intermediate CA"),
        key,
        now,
        Duration::days(1000),
        0,
    )
    .unwrap();
    std::fs::write(dir.join("root.pem"), root.pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("ca.key"), key_pem.as_bytes()).unwrap();
    root.der().clone()
}

/// `count` CSRs (fresh P-256 keys, empty subject), generated on every core.
fn make_csrs(count: usize) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = count.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let m = per.min(count.saturating_sub(t * per));
                s.spawn(move || {
                    (0..m)
                        .map(|_| {
                            let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
                            csr::create(&key, &Subject::cn(""), &[]).unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// Pins every thread of this process to `cpus` (e.g. "1" or "0,1").
fn pin_self(cpus: &str) {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("running taskset");
    assert!(status.success(), "taskset -p {cpus} failed");
}

/// Busy and total jiffies of cpu0 and cpu1 from /proc/stat.
fn cpu_times() -> [(u64, u64); 2] {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut out = [(0, 0); 2];
    for (i, slot) in out.iter_mut().enumerate() {
        let prefix = format!("cpu{i} ");
        if let Some(line) = stat.lines().find(|l| l.starts_with(&prefix)) {
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            *slot = (total - idle, total);
        }
    }
    out
}

struct RunResult {
    warmup: usize,
    timed: usize,
    elapsed: StdDuration,
    p50: StdDuration,
    p90: StdDuration,
    p99: StdDuration,
    max: StdDuration,
    cpu_busy: [f64; 2],
    /// Server process CPU time (user + system, all threads) per timed request.
    server_cpu_per_request: StdDuration,
    inventory: usize,
}

/// User + system CPU time of process `pid` (all its threads) from /proc/PID/stat.
fn process_cpu(pid: u32) -> StdDuration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    // Clock ticks: USER_HZ is 100 on Linux.
    let ticks: u64 = f.iter().sum();
    StdDuration::from_millis(ticks * 10)
}

/// One configuration: mint tokens, start a server, load it with `c` connections, check.
fn run(
    c: usize,
    location: &Location,
    root: &CertificateDer<'static>,
    dir: &Path,
    csrs: Vec<String>,
) -> RunResult {
    let count = csrs.len();
    let prep = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = prep.block_on(Store::open(location)).unwrap();
    let started = Instant::now();
    let issuer = mtls_pki::pem_io::certificates(&std::fs::read(dir.join("ca.pem")).unwrap())
        .unwrap()
        .remove(0);
    let tokens = prep.block_on(mint_tokens(&store, &issuer, count));
    eprintln!(
        "sign/c{c}: {count} tokens minted in {:.1?}",
        started.elapsed()
    );
    let bodies: Vec<Bytes> = tokens
        .into_iter()
        .zip(csrs)
        .map(|(token, csr)| {
            Bytes::from(serde_json::json!({"token": token, "csr": csr}).to_string())
        })
        .collect();

    let (mut server, addr) = start_server(location, dir);
    pin_self("1");
    let load = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let warmup = (count / 20).clamp(c, 500).min(count);
    let tls = Arc::new(
        mtls_tls::client_config(std::slice::from_ref(root), None, &[b"http/1.1"]).unwrap(),
    );
    let server_pid = server.id();
    let (elapsed, mut latencies, cpu_busy, server_cpu) = load.block_on(async {
        let mut senders = Vec::with_capacity(c);
        for _ in 0..c {
            senders.push(connect(addr, tls.clone()).await);
        }
        let bodies = Arc::new(bodies);
        // Warm-up: not timed.
        let (senders, _, _) = drive(senders, bodies.clone(), 0, warmup).await;
        let cpu0 = cpu_times();
        let server0 = process_cpu(server_pid);
        let t0 = Instant::now();
        let (_, latencies, failures) =
            tokio::time::timeout(RUN_TIMEOUT, drive(senders, bodies.clone(), warmup, count))
                .await
                .expect("the run timed out");
        let elapsed = t0.elapsed();
        let cpu1 = cpu_times();
        let server_cpu = process_cpu(server_pid).saturating_sub(server0);
        assert_eq!(failures, 0, "some requests were not answered 201");
        let busy = |i: usize| {
            let b = cpu1[i].0.saturating_sub(cpu0[i].0) as f64;
            let t = cpu1[i].1.saturating_sub(cpu0[i].1).max(1) as f64;
            b / t
        };
        (elapsed, latencies, [busy(0), busy(1)], server_cpu)
    });
    drop(load);
    pin_self("0,1");
    stop_server(&mut server);

    let inventory = prep
        .block_on(store.list(&ListFilter::default(), OffsetDateTime::now_utc()))
        .unwrap()
        .len();
    drop(store);
    drop(prep);

    latencies.sort_unstable();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    RunResult {
        warmup,
        timed: latencies.len(),
        elapsed,
        p50: pct(50),
        p90: pct(90),
        p99: pct(99),
        max: *latencies.last().unwrap(),
        cpu_busy,
        server_cpu_per_request: server_cpu / latencies.len().max(1) as u32,
        inventory,
    }
}

async fn mint_tokens(store: &Store, issuer: &CertificateDer<'static>, count: usize) -> Vec<String> {
    let now = OffsetDateTime::now_utc();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..count {
        let store = store.clone();
        let issuer = issuer.clone();
        set.spawn(async move {
            let request = TokenRequest {
                name: format!("bench-{i}"),
                sans: Vec::new(),
                profile: Profile::Client,
                ttl: Duration::hours(2),
            };
            let (token, _) = mint_token(&store, &issuer, request, "bench", now)
                .await
                .unwrap();
            (i, token)
        });
    }
    let mut tokens = vec![String::new(); count];
    while let Some(r) = set.join_next().await {
        let (i, token) = r.unwrap();
        tokens[i] = token;
    }
    tokens
}

/// Starts the CA in a child process pinned to CPU 0; returns it and its HTTPS address.
fn start_server(location: &Location, dir: &Path) -> (Child, SocketAddr) {
    let db = match location {
        Location::Sqlite(p) => p.display().to_string(),
        Location::Postgres(u) => u.clone(),
    };
    let mut child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(std::env::current_exe().unwrap())
        .env(ROLE, "server")
        .env(DIR, dir)
        .env(DB, db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the server process");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the server process said {line:?}"));
    (
        child,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
    )
}

/// Closes the server's stdin (its signal to shut down) and waits for it (killing it after 15 s).
fn stop_server(child: &mut Child) {
    drop(child.stdin.take());
    let deadline = Instant::now() + StdDuration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "server process: {status}");
            return;
        }
        if Instant::now() > deadline {
            eprintln!("sign: the server process did not exit; killing it");
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        std::thread::sleep(StdDuration::from_millis(20));
    }
}

async fn connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends requests `from..to` of `bodies` over the connections, each connection taking the next
/// unsent one when its previous answer arrived. Returns the connections, the latencies and how
/// many answers were not 201.
async fn drive(
    senders: Vec<SendRequest<Full<Bytes>>>,
    bodies: Arc<Vec<Bytes>>,
    from: usize,
    to: usize,
) -> (Vec<SendRequest<Full<Bytes>>>, Vec<StdDuration>, usize) {
    let next = Arc::new(AtomicUsize::new(from));
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let next = next.clone();
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= to {
                        break;
                    }
                    let req = http::Request::builder()
                        .method(http::Method::POST)
                        .uri("/v1/sign")
                        .header(http::header::HOST, "127.0.0.1")
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(bodies[i].clone()))
                        .unwrap();
                    let t = Instant::now();
                    sender.ready().await.unwrap();
                    let resp = sender.send_request(req).await.unwrap();
                    let status = resp.status();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    latencies.push(t.elapsed());
                    if status != http::StatusCode::CREATED {
                        if failures == 0 {
                            eprintln!("request {i}: {status} {}", String::from_utf8_lossy(&body));
                        }
                        failures += 1;
                    }
                }
                (sender, latencies, failures)
            })
        })
        .collect();
    let mut senders = Vec::new();
    let mut all = Vec::new();
    let mut failures = 0;
    for t in tasks {
        let (s, l, f) = t.await.unwrap();
        senders.push(s);
        all.extend(l);
        failures += f;
    }
    (senders, all, failures)
}

/// The server process: the CA on 127.0.0.1:0 in a one-worker runtime; prints its port, serves
/// until stdin closes.
fn server_main() {
    let dir = std::path::PathBuf::from(std::env::var(DIR).unwrap());
    let location: Location = std::env::var(DB).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let running = rt.block_on(async {
        let key =
            PrivateKey::from_pem_or_der(&std::fs::read(dir.join("ca.key")).unwrap(), None).unwrap();
        let issuer = CaCert::from_pem(&std::fs::read(dir.join("ca.pem")).unwrap(), key).unwrap();
        let root = mtls_pki::pem_io::certificates(&std::fs::read(dir.join("root.pem")).unwrap())
            .unwrap()
            .remove(0);
        let store = Store::open(&location).await.unwrap();
        let now = OffsetDateTime::now_utc();
        let ca = Authority::new(
            AuthorityParts {
                issuer,
                root,
                store,
                settings: Settings::default(),
            },
            now,
        )
        .await
        .unwrap();
        // Issues (and records) the CA's own server certificate for 127.0.0.1.
        mtls_ca::serve(
            Arc::new(ca),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            None,
            None,
            vec!["127.0.0.1".to_string()],
        )
        .await
        .unwrap()
    });
    let mut out = std::io::stdout();
    writeln!(out, "{}", running.addr.port()).unwrap();
    out.flush().unwrap();
    // The parent closes our stdin when the run is over.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    let stopped = rt.block_on(async {
        tokio::time::timeout(StdDuration::from_secs(5), running.shutdown()).await
    });
    if stopped.is_err() {
        eprintln!("sign: server: Running::shutdown did not return within 5 s; exiting anyway");
    }
    rt.shutdown_timeout(StdDuration::from_secs(1));
}

/// `MTLS_BENCH_MODE=ceiling`: the sign request's work without token or database, on the same
/// TLS and HTTP stack, pinned like the real server. Prints its port, serves until stdin closes.
fn ceiling_server_main() {
    use axum::routing::post;
    use mtls_pki::issue::{issue_leaf, LeafRequest, Profile, PublicationUrls};
    use mtls_pki::San;

    let dir = std::path::PathBuf::from(std::env::var(DIR).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let key =
        PrivateKey::from_pem_or_der(&std::fs::read(dir.join("ca.key")).unwrap(), None).unwrap();
    let issuer =
        Arc::new(CaCert::from_pem(&std::fs::read(dir.join("ca.pem")).unwrap(), key).unwrap());
    let chain_pem = Arc::new(format!(
        "{}{}",
        issuer.pem(),
        String::from_utf8(std::fs::read(dir.join("root.pem")).unwrap()).unwrap()
    ));
    // The server's own certificate for 127.0.0.1, as `mtls ca serve` issues it.
    let now = OffsetDateTime::now_utc();
    let server_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let server_cert = issue_leaf(
        &issuer,
        server_key.key_pair(),
        &LeafRequest {
            profile: Profile::Server,
            subject: Subject::cn("127.0.0.1"),
            sans: vec![San::Ip(Ipv4Addr::LOCALHOST.into())],
            lifetime: Duration::days(1),
            urls: PublicationUrls::default(),
        },
        now,
    )
    .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(mtls_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der.clone(), issuer.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(server_key.pkcs8_der().to_vec().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let config = Arc::new(config);
    // The CA's own serving path (handshake, HTTP, keep-alive parking), without the CA.
    let http = Arc::new(mtls_serve::http::builder(&Default::default()));
    let (_stop, shutdown) = mtls_serve::shutdown();

    #[derive(serde::Deserialize)]
    struct SignRequest {
        #[allow(dead_code)]
        token: String,
        csr: String,
    }
    let sign = move |axum::Json(req): axum::Json<SignRequest>| {
        let issuer = issuer.clone();
        let chain_pem = chain_pem.clone();
        async move {
            let now = OffsetDateTime::now_utc();
            let csr = csr::parse(req.csr.as_bytes()).unwrap();
            let request = LeafRequest {
                profile: Profile::Client,
                subject: Subject::cn("bench"),
                sans: Vec::new(),
                lifetime: Duration::days(30),
                urls: PublicationUrls::default(),
            };
            let issued = issue_leaf(&issuer, &csr.public_key, &request, now).unwrap();
            let pem = issued.pem();
            let body = serde_json::json!({
                "serial": issued.serial.to_string(),
                "chain": format!("{pem}{chain_pem}"),
                "certificate": pem,
                "not_before": issued.not_before.unix_timestamp(),
                "not_after": issued.not_after.unix_timestamp(),
            });
            (http::StatusCode::CREATED, axum::Json(body))
        }
    };
    let router = axum::Router::new().route("/v1/sign", post(sign));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (config, router, http, shutdown) = (
                config.clone(),
                router.clone(),
                http.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                let Ok(tls) =
                    mtls_serve::accept::handshake(config, tcp, StdDuration::from_secs(10)).await
                else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(router);
                mtls_serve::http::serve_connection(&*http, tls, service, shutdown).await;
            });
        }
    });
    let mut out = std::io::stdout();
    writeln!(out, "{port}").unwrap();
    out.flush().unwrap();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    rt.shutdown_timeout(StdDuration::from_secs(1));
}
