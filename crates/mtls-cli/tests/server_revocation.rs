//! The client tools check the *server's* certificate for revocation through the same trust
//! state the gateway uses for its clients: `mtls request --crl`, `--ocsp`/`--ocsp-responder`
//! (hard-fail: refused when the responder is down; soft-fail: connects), and `mtls tunnel
//! --revocation-feed` (a server revoked at the CA is refused from the next connection on, also
//! with an encrypted key unlocked from the environment), and
//! `mtls tunnel --crl` (the file is followed: a replaced CRL counts from the next connection on,
//! one that does not load or is older than the one in use is refused).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ca::{self, free_port, CaServer};
use common::gw::{self, Gateway, Upstream};
use common::Env;

struct Tunnel(Child, u16);

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The HTTP status of a plaintext request through the tunnel (0: no answer).
fn through(t: &Tunnel) -> u16 {
    let o = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5"])
        .args(["-H", "Host: localhost"])
        .arg(format!("http://127.0.0.1:{}/via-tunnel", t.1))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).parse().unwrap_or(0)
}

#[test]
fn request_and_tunnel_refuse_a_revoked_server() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "localhost", "127.0.0.1"])
        .ok();
    env.mtls(&["issue", "client", "c"]).ok();
    let pki = env.pki();
    let up = Upstream::start();
    let g = Gateway::start(&gw::trusting_args(
        &pki.join("issued/localhost.chain.pem"),
        &pki.join("issued/localhost.key"),
        &pki.join("ca-chain.pem"),
        &up,
        &[],
    ));
    let ca = CaServer::start(&env, "ca", None, "[revocation_feed]\nallow_cn = [\"c\"]\n");
    let responder = ca.publish("/ocsp");
    let url = format!("https://localhost:{}/api", g.port());
    let p = |rel: &str| env.p(&format!("pki/{rel}"));
    let request = |extra: &[&str]| {
        let mut args = vec![
            "request".to_string(),
            url.clone(),
            "--cert".into(),
            p("issued/c.chain.pem"),
            "--key".into(),
            p("issued/c.key"),
            "--ca".into(),
            p("ca-chain.pem"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        env.mtls(&args)
    };

    // Not revoked: every source says good.
    env.mtls(&["crl"]).ok();
    request(&[]).ok();
    request(&["--crl", &p("crl.pem")]).ok();
    request(&["--ocsp-responder", &responder]).ok();
    // A CRL whose signer is not among --ca is refused before connecting.
    let other = Env::new();
    other.mtls(&["ca", "init"]).ok();
    other.mtls(&["crl"]).ok();
    request(&["--crl", &other.p("pki/crl.pem")]).fails(1, "CRL");
    // A CRL of another CA does not cover the server: unknown status, refused under
    // hard-fail, accepted under soft-fail.
    let foreign = [
        "--crl",
        &other.p("pki/crl.pem"),
        "--ca",
        &other.p("pki/ca-chain.pem"),
    ];
    request(&foreign).fails(1, "revocation status unknown");
    let mut soft = foreign.to_vec();
    soft.extend(["--revocation-policy", "soft-fail"]);
    let accepted = request(&soft).ok();
    assert!(
        accepted.stderr.contains("soft-fail: accepted"),
        "a soft-fail acceptance is logged: {}",
        accepted.stderr
    );

    let local = free_port();
    let tunnel = Tunnel(
        Command::new(gw::mtls_bin())
            .args(["tunnel", "--listen", &format!("127.0.0.1:{local}")])
            .args(["--target", &format!("localhost:{}", g.port())])
            .args([
                "--cert",
                &p("issued/c.chain.pem"),
                "--key",
                &p("issued/c.key"),
            ])
            .args(["--ca", &p("ca-chain.pem"), "--revocation-feed", &ca.url()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        local,
    );
    let start = Instant::now();
    while through(&tunnel) != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "tunnel never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A keep-alive connection through the tunnel, open while the server is revoked.
    let mut open = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
    open.write_all(b"GET /open HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let n = open.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    open.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    // The server's certificate is revoked at the CA.
    let serial = ca::serial_of(&env, &pki.join("issued/localhost.crt"));
    env.mtls(&["revoke", &serial, "--reason", "keyCompromise"])
        .ok();
    let start = Instant::now();
    while through(&tunnel) != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the tunnel still connects to a revoked server"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // And the connection that was open is closed by the tunnel.
    let start = Instant::now();
    loop {
        match open.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the open connection to the revoked server stays open"
        );
    }

    // Without a revocation source the client cannot know; with one it refuses.
    request(&[]).ok();
    env.mtls(&["crl"]).ok();
    request(&["--crl", &p("crl.pem")]).fails(1, "Revoked");
    request(&["--ocsp-responder", &responder]).fails(1, "Revoked");

    // The responder goes away: nothing vouches for the server.
    ca.kill();
    request(&["--ocsp-responder", &responder]).fails(1, "OCSP");
    let out = request(&[
        "--ocsp-responder",
        &responder,
        "--revocation-policy",
        "soft-fail",
    ]);
    assert_eq!(out.code, 0, "soft-fail connects: {}", out.stderr);
}

/// A tunnel whose key is encrypted and unlocked through `MTLS_PASSPHRASE` (as the prompt would
/// be: no passphrase file) follows the revocation feed with that key: it starts, serves, and
/// refuses the server once the CA revokes it. The feed used to get only a passphrase file and
/// could not open the key.
#[test]
fn tunnel_follows_the_feed_with_a_key_unlocked_from_the_environment() {
    let env = Env::new();
    let pass = [("MTLS_PASSPHRASE", "tunnel key passphrase")];
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "localhost", "127.0.0.1"])
        .ok();
    env.mtls_env(&["issue", "client", "c", "--encrypt"], &pass)
        .ok();
    let pki = env.pki();
    let up = Upstream::start();
    let g = Gateway::start(&gw::trusting_args(
        &pki.join("issued/localhost.chain.pem"),
        &pki.join("issued/localhost.key"),
        &pki.join("ca-chain.pem"),
        &up,
        &[],
    ));
    let ca = CaServer::start(&env, "ca", None, "[revocation_feed]\nallow_cn = [\"c\"]\n");
    let p = |rel: &str| env.p(&format!("pki/{rel}"));
    let local = free_port();
    let tunnel = Tunnel(
        Command::new(gw::mtls_bin())
            .args(["tunnel", "--listen", &format!("127.0.0.1:{local}")])
            .args(["--target", &format!("localhost:{}", g.port())])
            .args([
                "--cert",
                &p("issued/c.chain.pem"),
                "--key",
                &p("issued/c.key"),
            ])
            .args(["--ca", &p("ca-chain.pem"), "--revocation-feed", &ca.url()])
            .env(pass[0].0, pass[0].1)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(env.path("tunnel.log")).unwrap())
            .spawn()
            .unwrap(),
        local,
    );
    let start = Instant::now();
    while through(&tunnel) != 200 {
        let log = std::fs::read_to_string(env.path("tunnel.log")).unwrap_or_default();
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the tunnel never served:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    revoke_server(&env);
    wait_through(
        &tunnel,
        0,
        "the tunnel still connects to a server the CA's feed revoked",
    );
}

/// Revokes the server's certificate in the CA's inventory (the feed carries it).
fn revoke_server(env: &Env) {
    let serial = ca::serial_of(env, &env.pki().join("issued/localhost.crt"));
    env.mtls(&["revoke", &serial, "--reason", "keyCompromise"])
        .ok();
}

/// A gateway serving `localhost` with a certificate of `env`'s CA (made here, with client `c`).
fn revocable_server(env: &Env) -> (Upstream, Gateway) {
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "localhost", "127.0.0.1"])
        .ok();
    env.mtls(&["issue", "client", "c"]).ok();
    let pki = env.pki();
    let up = Upstream::start();
    let g = Gateway::start(&gw::trusting_args(
        &pki.join("issued/localhost.chain.pem"),
        &pki.join("issued/localhost.key"),
        &pki.join("ca-chain.pem"),
        &up,
        &[],
    ));
    (up, g)
}

/// `mtls tunnel` to `g` as `c`, checking the server against `--crl pki/crl.pem`; its stderr
/// goes to `tunnel.log`.
fn tunnel_with_crl(env: &Env, g: &Gateway, extra: &[&str]) -> Tunnel {
    let local = free_port();
    let p = |rel: &str| env.p(&format!("pki/{rel}"));
    Tunnel(
        Command::new(gw::mtls_bin())
            .args(["tunnel", "--listen", &format!("127.0.0.1:{local}")])
            .args(["--target", &format!("localhost:{}", g.port())])
            .args([
                "--cert",
                &p("issued/c.chain.pem"),
                "--key",
                &p("issued/c.key"),
            ])
            .args(["--ca", &p("ca-chain.pem"), "--crl", &p("crl.pem")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(env.path("tunnel.log")).unwrap())
            .spawn()
            .unwrap(),
        local,
    )
}

/// Revokes the server's certificate and writes the CA's new CRL over `pki/crl.pem`.
fn revoke_server_and_publish(env: &Env) {
    revoke_server(env);
    env.mtls(&["crl"]).ok();
}

/// Writes `data` over `path` as a publisher does: a new file renamed over the old one.
fn replace(path: &std::path::Path, data: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls the tunnel until a request through it gets `want` (15 s at most).
#[track_caller]
fn wait_through(t: &Tunnel, want: u16, what: &str) {
    let start = Instant::now();
    for _ in 0..150 {
        if through(t) == want {
            return;
        }
        if start.elapsed() > Duration::from_secs(15) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: no answer {want} within 15 s");
}

/// Every request through the tunnel for `period` gets `want`.
#[track_caller]
fn stays_through(t: &Tunnel, want: u16, period: Duration, what: &str) {
    let start = Instant::now();
    for _ in 0..100 {
        let got = through(t);
        assert_eq!(got, want, "{what}");
        if start.elapsed() > period {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (10 s at most) until `log` holds `needle`.
#[track_caller]
fn wait_log(log: &std::path::Path, needle: &str) {
    let start = Instant::now();
    for _ in 0..100 {
        if std::fs::read_to_string(log).is_ok_and(|l| l.contains(needle)) {
            return;
        }
        if start.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{needle:?} not logged within 10 s:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A tunnel runs for days: started with `--crl` pointing at a CRL that does not list the
/// server, it refuses the server within seconds once the server is revoked and the CA's new
/// CRL written over the file, and closes the connection that was open, without a restart.
#[test]
fn tunnel_follows_its_crl_file_and_refuses_a_server_revoked_after_it_started() {
    let env = Env::new();
    let (_up, g) = revocable_server(&env);
    env.mtls(&["crl"]).ok();
    let tunnel = tunnel_with_crl(&env, &g, &[]);
    wait_through(
        &tunnel,
        200,
        "the tunnel does not serve a server its CRL does not list",
    );

    // A keep-alive connection through the tunnel, open while the server is revoked.
    let mut open = std::net::TcpStream::connect(("127.0.0.1", tunnel.1)).unwrap();
    open.write_all(b"GET /open HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let n = open.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    open.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    revoke_server_and_publish(&env);
    wait_through(
        &tunnel,
        0,
        "the tunnel still connects to a server its CRL file now revokes",
    );
    // And the connection that was open is closed by the tunnel.
    let start = Instant::now();
    for _ in 0..100 {
        match open.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
        if start.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    panic!("the open connection to the revoked server stays open");
}

/// A CRL file replaced by one that does not load, or by an older CRL of the same CA (a lower
/// CRL number: a replay that would take the revocation back), is refused and logged: the last
/// good CRL stays in force. Under soft-fail, a tunnel that dropped its CRL instead would
/// connect to the revoked server again.
#[test]
fn tunnel_keeps_its_last_good_crl_when_the_file_is_replaced_by_a_bad_or_older_one() {
    let env = Env::new();
    let (_up, g) = revocable_server(&env);
    env.mtls(&["crl"]).ok();
    let crl = env.pki().join("crl.pem");
    let older = std::fs::read(&crl).unwrap();
    let tunnel = tunnel_with_crl(&env, &g, &["--revocation-policy", "soft-fail"]);
    wait_through(
        &tunnel,
        200,
        "the tunnel does not serve a server its CRL does not list",
    );
    revoke_server_and_publish(&env);
    wait_through(
        &tunnel,
        0,
        "the tunnel still connects to a server its CRL file now revokes",
    );
    let log = env.path("tunnel.log");

    replace(
        &crl,
        b"-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n",
    );
    stays_through(
        &tunnel,
        0,
        Duration::from_secs(3),
        "a CRL file that does not load took the revocation back",
    );
    wait_log(&log, "keeping the");

    replace(&crl, &older);
    stays_through(
        &tunnel,
        0,
        Duration::from_secs(3),
        "an older CRL took the revocation back",
    );
    wait_log(&log, "older than the one in use");
}
