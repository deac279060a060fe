//! The client tools check the *server's* certificate for revocation through the same trust
//! state the gateway uses for its clients: `mtls request --crl`, `--ocsp`/`--ocsp-responder`
//! (hard-fail: refused when the responder is down; soft-fail: connects), and `mtls tunnel
//! --revocation-feed` (a server revoked at the CA is refused from the next connection on).
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
    request(&soft).ok();

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
