//! The online CA's revocation feed end to end: `mtls ca serve` publishes, `mtls gateway
//! --revocation-feed` follows; `mtls revoke` reaches new handshakes and open HTTP/1.1 and h2
//! connections without a CRL file; the feed survives the CA going away (stale under hard-fail,
//! resumed without missing a revocation); who may follow it, and its refusals. On SQLite and on
//! two CA instances sharing a real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ca::{self, CaServer};
use common::conn;
use common::gw::{self, Gateway, Upstream};
use common::Env;

const FEED_ACL: &str = "[revocation_feed]\nallow_cn = [\"localhost\"]\n";

struct Setup {
    env: Env,
    up: Upstream,
}

impl Setup {
    fn new(database: Option<&str>) -> Setup {
        let env = Env::new();
        let db: Vec<&str> = database.map(|d| vec!["--database", d]).unwrap_or_default();
        let with_db = |args: &[&str]| -> Vec<String> {
            db.iter().chain(args).map(|s| s.to_string()).collect()
        };
        let run = |args: &[&str]| {
            let a = with_db(args);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            env.mtls(&a).ok();
        };
        run(&["ca", "init", "--org", "Feed Test"]);
        run(&["issue", "server", "localhost", "127.0.0.1"]);
        for c in ["c-h1", "c-h2", "c-new", "c-late", "c-keep"] {
            run(&["issue", "client", c]);
        }
        Setup {
            env,
            up: Upstream::start(),
        }
    }

    fn pki(&self, rel: &str) -> String {
        self.env.pki().join(rel).to_string_lossy().into_owned()
    }

    fn gateway(&self, feeds: &[String], extra: &[&str]) -> Gateway {
        let mut more = vec!["--admin-listen", "127.0.0.1:0"];
        for f in feeds {
            more.extend(["--revocation-feed", f.as_str()]);
        }
        more.extend(extra);
        Gateway::start(&gw::trusting_args(
            &self.env.pki().join("issued/localhost.chain.pem"),
            &self.env.pki().join("issued/localhost.key"),
            &self.env.pki().join("ca-chain.pem"),
            &self.up,
            &more,
        ))
    }

    /// `curl` through the gateway as `client`: the HTTP status, 0 when the handshake failed.
    fn get(&self, g: &Gateway, client: &str) -> u16 {
        let pki = self.env.pki();
        gw::status_as(
            g,
            &pki.join("root.crt"),
            &pki.join(format!("issued/{client}.chain.pem")),
            &pki.join(format!("issued/{client}.key")),
        )
    }

    fn serial(&self, client: &str) -> String {
        ca::serial_of(
            &self.env,
            &self.env.pki().join(format!("issued/{client}.crt")),
        )
    }

    fn revoke(&self, database: Option<&str>, client: &str) {
        let serial = self.serial(client);
        let mut args = Vec::new();
        if let Some(d) = database {
            args.extend(["--database", d]);
        }
        args.extend(["revoke", &serial, "--reason", "keyCompromise"]);
        self.env.mtls(&args).ok();
    }

    fn metric(&self, g: &Gateway, name: &str) -> Option<f64> {
        let (status, page) = ca::curl(&[&format!("http://{}/metrics", g.admin.unwrap())]);
        assert_eq!(status, 200);
        common::assert_prometheus_text(&page);
        page.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

/// A client configuration presenting `client`'s certificate, offering `alpn`.
fn client_config(s: &Setup, client: &str, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let cred = mtls_tls::CredentialFiles::new(
        PathBuf::from(s.pki(&format!("issued/{client}.chain.pem"))),
        PathBuf::from(s.pki(&format!("issued/{client}.key"))),
    )
    .load(time::OffsetDateTime::now_utc())
    .unwrap();
    let roots = mtls_tls::load_certificates(&[PathBuf::from(s.pki("root.crt"))]).unwrap();
    Arc::new(mtls_tls::client_config(&roots, Some(&cred), &[alpn]).unwrap())
}

/// Waits (bounded) until `f` holds; returns how long it took.
fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn feed_end_to_end(database: Option<&str>) {
    let s = Setup::new(database);
    let a = CaServer::start(&s.env, "ca-a", database, FEED_ACL);
    // With PostgreSQL, a second instance on the same database: the gateway follows B, the
    // revocations go in through A (offline `mtls revoke` on the shared inventory).
    let b = database.map(|_| CaServer::start(&s.env, "ca-b", database, FEED_ACL));
    let followed = b.as_ref().unwrap_or(&a);
    // With two instances the gateway knows both, B first: it fails over to A.
    let urls: Vec<String> = match &b {
        Some(b) => vec![b.url(), a.url()],
        None => vec![a.url()],
    };
    let g = s.gateway(&urls, &["--revocation-feed-max-age", "5s"]);
    // Seeded from the CRL at start: without any CRL file, every client has a status.
    for c in ["c-h1", "c-h2", "c-new", "c-late", "c-keep"] {
        assert_eq!(s.get(&g, c), 200, "{c} before any revocation");
    }
    assert_eq!(s.metric(&g, "mtls_revocation_feed_position"), Some(0.0));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Each got a 200 and stays open.
    let h1 = rt.block_on(conn::open_http(
        g.addr,
        client_config(&s, "c-h1", b"http/1.1"),
        false,
    ));
    let h2 = rt.block_on(conn::open_http(
        g.addr,
        client_config(&s, "c-h2", b"h2"),
        true,
    ));

    // An open HTTP/1.1 keep-alive connection is closed at once, with no request from it.
    s.revoke(database, "c-h1");
    let t = within(Duration::from_secs(5), "HTTP/1.1 connection closed", || {
        h1.is_finished()
    });
    eprintln!("open HTTP/1.1 connection closed {t:?} after mtls revoke returned");
    // An open h2 connection too.
    s.revoke(database, "c-h2");
    let t = within(Duration::from_secs(5), "h2 connection closed", || {
        h2.is_finished()
    });
    eprintln!("open h2 connection closed {t:?} after mtls revoke returned");
    // A new handshake.
    s.revoke(database, "c-new");
    let t = within(Duration::from_secs(5), "new handshake refused", || {
        s.get(&g, "c-new") == 0
    });
    eprintln!("new handshake refused {t:?} after mtls revoke returned");
    assert_eq!(s.get(&g, "c-h1"), 0);
    assert_eq!(s.get(&g, "c-keep"), 200, "others unaffected");
    assert_eq!(s.metric(&g, "mtls_revocation_feed_position"), Some(3.0));
    assert_eq!(s.metric(&g, "mtls_revocation_feed_revoked"), Some(3.0));

    let (port, publish) = (followed.addr.port(), followed.publish_port);
    if let Some(b) = b {
        // B goes away mid-stream: the gateway fails over to A, resumes from its position and
        // misses nothing, and the feed stays fresh.
        b.kill();
        s.revoke(database, "c-late");
        within(
            Duration::from_secs(15),
            "revocation through A after B died",
            || s.get(&g, "c-late") == 0,
        );
        assert_eq!(s.get(&g, "c-keep"), 200, "fresh through A");
        assert_eq!(s.metric(&g, "mtls_revocation_feed_position"), Some(4.0));
        assert_eq!(
            s.metric(&g, "mtls_revocation_feed_resyncs_total"),
            Some(1.0),
            "resumed from its position, not re-seeded"
        );
        drop(rt);
        return;
    }
    // The only CA goes away: the feed turns stale after max_age and hard-fail refuses clients
    // only the feed vouches for.
    a.kill();
    // Revoked meanwhile (in the inventory): must not be missed.
    s.revoke(database, "c-late");
    within(Duration::from_secs(15), "stale feed refuses", || {
        s.get(&g, "c-keep") == 0
    });
    let refusals = g.stderr.lock().unwrap().join("\n");
    assert!(
        refusals.contains("stale_revocation_feed"),
        "refusal reason logged: {refusals}"
    );
    // Back on the same address: the subscriber resumes from its position.
    let _back = CaServer::start_on(&s.env, "ca-a", database, FEED_ACL, port, publish);
    within(Duration::from_secs(15), "feed back", || {
        s.get(&g, "c-keep") == 200
    });
    assert_eq!(s.get(&g, "c-late"), 0, "the revocation made while away");
    assert_eq!(s.metric(&g, "mtls_revocation_feed_position"), Some(4.0));
    assert_eq!(
        s.metric(&g, "mtls_revocation_feed_resyncs_total"),
        Some(1.0),
        "resumed from its position, not re-seeded"
    );
    drop(rt);
}

#[test]
fn revocations_reach_new_handshakes_and_open_connections_through_the_feed() {
    feed_end_to_end(None);
}

#[test]
fn a_gateway_following_two_postgres_instances_sees_revocations_and_fails_over() {
    let url = ca::fresh_pg_database();
    feed_end_to_end(Some(&url));
}

#[test]
fn the_feed_is_only_for_configured_identities_and_refuses_gaps() {
    let s = Setup::new(None);
    let a = CaServer::start(&s.env, "ca", None, FEED_ACL);
    let call = |client: &str, query: &str| {
        ca::curl(&[
            "--cacert",
            &s.pki("root.crt"),
            "--cert",
            &s.pki(&format!("issued/{client}.chain.pem")),
            "--key",
            &s.pki(&format!("issued/{client}.key")),
            &format!("{}/v1/revocations{query}", a.url()),
        ])
    };
    let (status, body) = call("localhost", "?after=0");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["head"], 0);
    s.revoke(None, "c-late");
    let (_, body) = call("localhost", "?after=0&wait=5s");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["events"][0]["seq"], 1);
    assert_eq!(
        v["events"][0]["serial"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase(),
        s.serial("c-late").to_ascii_lowercase()
    );
    assert_eq!(v["events"][0]["reason"], "keyCompromise");
    // A long poll answers when the revocation happens, not at the end of its wait.
    let started = Instant::now();
    let waiter = std::thread::scope(|scope| {
        let w = scope.spawn(|| call("localhost", "?after=1&wait=25s"));
        std::thread::sleep(Duration::from_millis(500));
        s.revoke(None, "c-new");
        w.join().unwrap()
    });
    assert!(started.elapsed() < Duration::from_secs(10), "{waiter:?}");
    assert!(waiter.1.contains("\"seq\":2"), "{}", waiter.1);
    // Not a subscriber, not an administrator.
    let (status, body) = call("c-keep", "?after=0");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("revocation_feed"), "{body}");
    // No certificate.
    let (status, _) = ca::curl(&[
        "--cacert",
        &s.pki("root.crt"),
        &format!("{}/v1/revocations?after=0", a.url()),
    ]);
    assert_eq!(status, 401);
    // Ahead of the CA: a gap only a CRL can close.
    let (status, body) = call("localhost", "?after=99");
    assert_eq!((status, body.contains("FEED_GAP")), (409, true), "{body}");
    // Bad input.
    for q in [
        "",
        "?after=x",
        "?after=-1",
        "?after=0&wait=5",
        "?after=0&bogus=1",
    ] {
        let (status, body) = call("localhost", q);
        assert_eq!(status, 400, "{q}: {body}");
    }
    // The CRL names the position it covers.
    let out = std::process::Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null"])
        .arg(a.publish("/v1/crl"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.contains("mtls-revocation-seq: 2"), "{head}");
}
