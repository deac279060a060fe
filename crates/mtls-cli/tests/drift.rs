//! Regression tests for mechanisms that once existed twice and drifted apart (one duration
//! syntax, one reload that applies everything, one passphrase-file rule).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::time::Duration;

use common::gw::{curl, Files, Gateway, Upstream};
use common::Env;

#[test]
fn bare_number_durations_are_refused_everywhere() {
    let e = Env::new();
    // `--ttl 5` once meant five days here and `--crl-refresh 5` five seconds there.
    e.mtls(&["ca", "token", "--name", "x", "--ttl", "5"])
        .fails(2, "needs a unit");
    e.mtls(&["list", "--expiring", "30"])
        .fails(2, "needs a unit");
    e.mtls(&[
        "renew",
        "--cert",
        "c.pem",
        "--key",
        "k.pem",
        "--ca-url",
        "https://127.0.0.1:1",
        "--renew-before",
        "30",
    ])
    .fails(2, "needs a unit");
    e.mtls(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--cert",
        "c.pem",
        "--key",
        "k.pem",
        "--client-ca",
        "ca.pem",
        "--crl",
        "crl.pem",
        "--crl-url",
        "http://127.0.0.1:1/v1/crl",
        "--crl-refresh",
        "5",
        "--upstream",
        "http://127.0.0.1:1",
        "--allow-any-trusted",
    ])
    .fails(2, "duration \"5\" needs a unit");
    e.write(
        "g.toml",
        b"[limits]\nhandshake_timeout = \"5\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:1\"\nclient_ca = [\"ca.pem\"]\n[[listener.certificate]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
    );
    e.mtls(&["gateway", "--config", &e.p("g.toml")])
        .fails(2, "needs a unit");
    e.write(
        "ca.toml",
        b"listen = \"127.0.0.1:0\"\nleaf_lifetime = \"90\"\n",
    );
    e.mtls(&["ca", "serve", "--config", &e.p("ca.toml")])
        .fails(2, "needs a unit");
    // With a unit the same flag gets past parsing (and then needs a CA).
    e.mtls(&["list", "--expiring", "30d"]).fails(1, "no CA in");
}

fn config(up: std::net::SocketAddr, port: u16, extra: &str) -> String {
    format!(
        r#"
admin_listen = "127.0.0.1:0"
[limits]
reload_poll = "100ms"
[[listener]]
listen = "127.0.0.1:{port}"
upstream = "http://{up}"
client_ca = ["ca-chain.pem"]
crl = ["crl.pem"]
{extra}
[[listener.certificate]]
cert = "server.chain.pem"
key = "server.key"
[listener.policy]
allow_any_trusted = true
"#
    )
}

#[test]
fn a_reload_that_changes_the_upstream_is_applied_and_one_that_cannot_be_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let (a, b) = (Upstream::start(), Upstream::start());
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config(a.addr, port, "")).unwrap();
    let g = Gateway::start(&["--config".into(), Files::p(&path)]);
    let c = f.client("c");
    assert_eq!(curl(&g, &f, Some(&c), "/", &[]).status, 200);
    assert_eq!((a.count(), b.count()), (1, 0));
    // A new upstream and a new header to strip: applied at the reload, not only logged.
    std::fs::write(
        &path,
        config(b.addr, port, "strip_headers = [\"x-tenant\"]"),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while b.count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new upstream was never used"
        );
        let _ = curl(&g, &f, Some(&c), "/", &["-H", "X-Tenant: forged"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        b.last().iter().all(|(k, _)| k != "x-tenant"),
        "the new strip list applies: {:?}",
        b.last()
    );
    let reloaded = g.stderr.lock().unwrap().join("\n");
    assert!(
        reloaded.contains(&format!(
            "upstream now default: http://{} -> http://{}",
            a.addr, b.addr
        )),
        "{reloaded}"
    );
    // Changing the listen address needs a restart: refused, said so, the old state serves on.
    let before = a.count() + b.count();
    std::fs::write(&path, config(a.addr, port + 1, "")).unwrap();
    common::wait_for_line(&g.stderr, &["restart to apply"]);
    assert_eq!(curl(&g, &f, Some(&c), "/", &[]).status, 200);
    assert_eq!(b.count() + a.count(), before + 1);
    assert_eq!(a.count() + b.count() - b.count(), a.count(), "served");
    let m = std::process::Command::new("curl")
        .args(["-sS", &format!("http://{}/metrics", g.admin.unwrap())])
        .output()
        .unwrap();
    let m = String::from_utf8_lossy(&m.stdout);
    assert!(m.contains("mtls_reloads_total{result=\"failed\"}"), "{m}");
    assert!(m.contains("mtls_reloads_total{result=\"ok\"}"), "{m}");
}

#[test]
fn passphrase_files_follow_one_rule_in_the_cli_and_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let s = f.pki.server(&["localhost", "127.0.0.1"]);
    let leaf = f.write_leaf("enc", &s.cert.der, &s.key);
    std::fs::write(
        &leaf.key,
        s.key
            .to_encrypted_pem_with_iterations(b"pass with trailing space ", 10_000)
            .unwrap(),
    )
    .unwrap();
    // One line ending is dropped, everything else (the trailing space) is the passphrase; a
    // readable file is refused.
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pass with trailing space \r\n").unwrap();
    let args = |pw: &std::path::Path| -> Vec<String> {
        vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--cert".into(),
            Files::p(&leaf.chain),
            "--key".into(),
            Files::p(&leaf.key),
            "--key-passphrase-file".into(),
            Files::p(pw),
            "--client-ca".into(),
            Files::p(&f.ca_chain()),
            "--upstream".into(),
            format!("http://{}", up.addr),
            "--allow-any-trusted".into(),
        ]
    };
    let o = std::process::Command::new(common::gw::mtls_bin())
        .arg("gateway")
        .args(args(&pw))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("chmod 600"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let g = Gateway::start(&args(&pw));
    let c = f.client("c");
    assert_eq!(curl(&g, &f, Some(&c), "/", &[]).status, 200);
}
