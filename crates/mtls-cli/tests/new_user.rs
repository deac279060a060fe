//! The tool as a new user meets it: hints that name the right flag, errors in one style, one
//! exit-code rule, failing early instead of at the first client, help with examples, a
//! generated reference that is current. Each test asserts on the real binary's output and exit
//! code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ca::free_port;
use common::gw::{self, Files, Gateway, Upstream};
use common::Env;

fn mtls(args: &[&str]) -> common::Run {
    Env::new().mtls(args)
}

/// `mtls gateway` on the env's PKI (its localhost certificate and CA chain), with `extra`.
fn gateway_run(env: &Env, extra: &[&str]) -> common::Run {
    let p = |rel: &str| env.p(&format!("pki/{rel}"));
    let mut args: Vec<String> = [
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--cert",
        &p("issued/localhost.chain.pem"),
        "--key",
        &p("issued/localhost.key"),
        "--client-ca",
        &p("ca-chain.pem"),
        "--upstream",
        "http://127.0.0.1:1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.mtls(&args)
}

// ---- hints -------------------------------------------------------------------------------

#[test]
fn encrypted_ca_hint_names_ca_passphrase_file() {
    let env = Env::new();
    let pass = env.write_secret("ca.pass", b"correct horse battery\n");
    let root_pass = env.write_secret("root.pass", b"a staple for the root\n");
    env.mtls(&[
        "ca",
        "init",
        "--encrypt",
        "--passphrase-file",
        pass.to_str().unwrap(),
        "--root-passphrase-file",
        root_pass.to_str().unwrap(),
    ])
    .ok();
    let r = env
        .mtls(&["issue", "client", "foo"])
        .fails(2, "--ca-passphrase-file");
    assert!(r.stderr.contains("MTLS_CA_PASSPHRASE"), "{}", r.stderr);
    assert!(
        r.stderr.contains("intermediate.key is encrypted"),
        "{}",
        r.stderr
    );
    // The flag it names works.
    env.mtls(&[
        "issue",
        "client",
        "foo",
        "--ca-passphrase-file",
        pass.to_str().unwrap(),
    ])
    .ok();
}

#[test]
fn encrypted_gateway_key_hint_names_key_passphrase_file() {
    let env = Env::new();
    let pass = env.write_secret("key.pass", b"correct horse battery\n");
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&[
        "issue",
        "server",
        "localhost",
        "--encrypt",
        "--passphrase-file",
        pass.to_str().unwrap(),
    ])
    .ok();
    let r = gateway_run(&env, &["--allow-any-trusted"]).fails(2, "--key-passphrase-file");
    assert!(r.stderr.contains("key_passphrase_file"), "{}", r.stderr);
    assert!(!r.stderr.contains("--passphrase-file or"), "{}", r.stderr);
}

#[test]
fn ca_serve_uses_the_pki_flag_when_the_file_names_none() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    std::fs::create_dir(env.path("sub")).unwrap();
    let config = env.write("sub/ca.toml", b"listen = \"127.0.0.1:0\"\n");
    // Env::mtls passes --pki <tmp>/pki before the command; give it after the command too, as
    // the user did.
    let mut child = Command::new(gw::mtls_bin())
        .args(["ca", "serve", "--config", config.to_str().unwrap()])
        .args(["--pki", env.pki().to_str().unwrap()])
        .env_remove("MTLS_PKI_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let start = Instant::now();
    let mut seen = String::new();
    while !seen.contains("listening on") && start.elapsed() < Duration::from_secs(20) {
        let mut buf = [0u8; 512];
        let n = std::io::Read::read(&mut stderr, &mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("listening on"), "{seen}");
    assert!(!seen.contains("does not exist"), "{seen}");
}

#[test]
fn missing_crl_file_hint_appears_before_a_client_does() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "localhost"]).ok();
    let crl = env.p("pki/crl.pem");
    gateway_run(&env, &["--crl", &crl, "--allow-any-trusted"]).fails(2, "mtls crl");
}

#[test]
fn ca_fingerprint_accepts_the_form_step_prints_and_refuses_garbage_before_connecting() {
    let fp = format!("sha256:{}", "ab".repeat(32));
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let token = [("MTLS_TOKEN", "t")];
    let r = Env::new().mtls_env(
        &[
            "enroll",
            "--ca-url",
            &url,
            "--ca-fingerprint",
            &fp,
            "--out",
            "out",
        ],
        &token,
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(!r.stderr.contains("fingerprint"), "{}", r.stderr);
    Env::new()
        .mtls_env(
            &[
                "enroll",
                "--ca-url",
                &url,
                "--ca-fingerprint",
                "sha256:48f2",
                "--out",
                "out",
            ],
            &token,
        )
        .fails(2, "64 hex digits");
}

#[test]
fn missing_policy_hint_names_the_flags_on_the_command_line() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "localhost"]).ok();
    let r = gateway_run(&env, &[]).fails(2, "--allow-cn");
    assert!(r.stderr.contains("--allow-any-trusted"), "{}", r.stderr);
}

// ---- fail early ----------------------------------------------------------------------------

fn gateway_with_cert(env: &Env, cert: &str, key: &str) -> common::Run {
    let p = |rel: &str| env.p(&format!("pki/{rel}"));
    let mut child = Command::new(gw::mtls_bin())
        .args(["gateway", "--listen", "127.0.0.1:0", "--cert"])
        .arg(p(cert))
        .arg("--key")
        .arg(p(key))
        .args(["--client-ca", &p("ca-chain.pem")])
        .args(["--upstream", "http://127.0.0.1:1", "--allow-any-trusted"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A gateway that starts is stopped after its first lines.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let o = child.wait_with_output().unwrap();
    common::Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
fn gateway_refuses_a_client_only_certificate_at_start() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "client", "c"]).ok();
    let r = gateway_with_cert(&env, "issued/c.chain.pem", "issued/c.key");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("serverAuth"), "{}", r.stderr);
    assert!(r.stderr.contains("mtls issue server"), "{}", r.stderr);
}

#[test]
fn gateway_warns_about_a_leaf_served_without_its_intermediate() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "localhost"]).ok();
    let r = gateway_with_cert(&env, "issued/localhost.crt", "issued/localhost.key");
    assert!(r.stderr.contains("listening on"), "{}", r.stderr);
    assert!(r.stderr.contains("holds only the leaf"), "{}", r.stderr);
    assert!(r.stderr.contains("chain.pem"), "{}", r.stderr);
    let r = gateway_with_cert(&env, "issued/localhost.chain.pem", "issued/localhost.key");
    assert!(!r.stderr.contains("holds only the leaf"), "{}", r.stderr);
}

#[test]
fn capped_validity_is_said() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let r = env.mtls(&["issue", "client", "c3", "--days", "5000"]).ok();
    assert!(
        r.stderr.contains("note: the certificate ends") && r.stderr.contains("5000 days"),
        "{}",
        r.stderr
    );
    let r = env.mtls(&["issue", "client", "c4", "--days", "30"]).ok();
    assert!(!r.stderr.contains("note:"), "{}", r.stderr);
}

#[test]
fn not_yet_valid_client_certificate_names_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let now = time::OffsetDateTime::now_utc();
    let future = f.pki.leaf_at(
        mtls_pki::Profile::Client,
        "later",
        &[],
        now + time::Duration::days(10),
        time::Duration::days(30),
    );
    let leaf = f.write_leaf("later", &future.cert.der, &future.key);
    let r = mtls(&[
        "request",
        "https://127.0.0.1:1/",
        "--cert",
        leaf.chain.to_str().unwrap(),
        "--key",
        leaf.key.to_str().unwrap(),
        "--ca",
        f.root().to_str().unwrap(),
    ]);
    assert_ne!(r.code, 0);
    let start = mtls_pki::rfc3339(&future.cert.not_before);
    assert!(
        r.stderr.contains(&format!("valid from {start}")),
        "{}",
        r.stderr
    );
}

fn server_without_client_auth(f: &Files) -> (std::process::Child, u16) {
    let port = free_port();
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(f.server_chain())
        .arg("-key")
        .arg(f.server_key())
        .arg("-cert_chain")
        .arg(f.ca_chain())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "s_server");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

#[test]
fn request_notes_a_server_that_never_asked_for_a_certificate_and_v_shows_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("client-app");
    let request = |url: &str, extra: &[&str]| {
        let mut args = vec!["request", url];
        args.extend(extra);
        let cert = c.chain.to_str().unwrap().to_string();
        let key = c.key.to_str().unwrap().to_string();
        let root = f.root().to_str().unwrap().to_string();
        let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        full.extend([
            "--cert".into(),
            cert,
            "--key".into(),
            key,
            "--ca".into(),
            root,
        ]);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        mtls(&full)
    };
    let (mut plain, port) = server_without_client_auth(&f);
    let r = request(&format!("https://localhost:{port}/"), &[]).ok();
    assert!(
        r.stderr
            .contains("note: the server did not ask for a client certificate"),
        "{}",
        r.stderr
    );
    let _ = plain.kill();
    let _ = plain.wait();

    let up = Upstream::start();
    let g = Gateway::start(&gw::http_args(&f, &up, &["--allow-cn", "client-app"]));
    let r = request(&g.url("/api"), &[]).ok();
    assert!(!r.stderr.contains("note:"), "{}", r.stderr);
    let r = request(&g.url("/api"), &["-v"]).ok();
    for needle in [
        "* TLS 1.3",
        "server certificate 0: CN=localhost",
        "the server asked for a client certificate",
        "ours was sent",
    ] {
        assert!(r.stderr.contains(needle), "{needle:?} in {}", r.stderr);
    }
}

// ---- one style -----------------------------------------------------------------------------

#[test]
fn missing_files_exit_2_from_every_command() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let root = env.p("pki/root.crt");
    for args in [
        vec!["inspect", "nope.pem"],
        vec!["verify", "nope.pem", "--ca", &root],
        vec![
            "request",
            "https://127.0.0.1:1/",
            "--cert",
            "nope",
            "--key",
            "nope",
            "--ca",
            &root,
        ],
        vec![
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            "nope",
            "--key",
            "nope",
            "--client-ca",
            &root,
            "--upstream",
            "http://127.0.0.1:1",
            "--allow-any-trusted",
        ],
        vec!["ca", "serve", "--config", "nope.toml"],
        vec!["gateway", "--config", "nope.toml"],
        vec!["sign", "--csr", "nope.csr", "--profile", "client"],
    ] {
        let r = env.mtls(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.starts_with("mtls: "), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("nope"), "{args:?}: {}", r.stderr);
    }
}

#[test]
fn errors_say_each_cause_once() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let r = env
        .mtls(&[
            "request",
            "https://127.0.0.1:1/",
            "--cert",
            "nope",
            "--key",
            "nope",
            "--ca",
            &env.p("pki/root.crt"),
        ])
        .fails(2, "No such file");
    assert_eq!(r.stderr.matches("No such file").count(), 1, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
}

#[test]
fn both_configuration_files_report_errors_in_one_shape() {
    let env = Env::new();
    let bad = env.write("bad.toml", b"listen = \"127.0.0.1:0\"\nbogus = 1\n");
    let bad = bad.to_str().unwrap();
    for args in [
        vec!["ca", "serve", "--config", bad],
        vec!["gateway", "--config", bad],
    ] {
        let r = env.mtls(&args).fails(2, "bogus");
        assert!(
            r.stderr
                .starts_with(&format!("mtls: {bad}: configuration: TOML parse error")),
            "{args:?}: {}",
            r.stderr
        );
    }
}

#[test]
fn ca_serve_refuses_an_https_public_url() {
    // Certificates would carry https CRL and OCSP URLs, which issuance refuses: every
    // /v1/sign would fail. `ca serve` refuses the file before starting, saying why.
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let config = env.write(
        "ca.toml",
        b"listen = \"127.0.0.1:0\"\npki = \"pki\"\npublic_url = \"https://ca.example.com\"\n",
    );
    let r = env
        .mtls(&["ca", "serve", "--config", config.to_str().unwrap()])
        .fails(2, "public_url \"https://ca.example.com\"");
    for needle in ["only http:// URLs", "plain http", "RFC 5280"] {
        assert!(r.stderr.contains(needle), "{needle:?} in {}", r.stderr);
    }
}

#[test]
fn times_are_rfc3339_everywhere() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "client", "c"]).ok();
    let cert = env.p("pki/issued/c.crt");
    let odd = |s: &str| s.contains("+00:00:00") || s.contains(".0 +");
    // verify: an expired certificate.
    let r = env.mtls(&[
        "verify",
        &cert,
        "--ca",
        &env.p("pki/ca-chain.pem"),
        "--at",
        "2031-01-01T00:00:00Z",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stdout.contains("expired at 20"), "{}", r.stdout);
    assert!(r.stdout.contains("T00:00:00Z"), "{}", r.stdout);
    assert!(!odd(&r.stdout), "{}", r.stdout);
    // verify OK says when it checked, the same way.
    let r = env
        .mtls(&["verify", &cert, "--ca", &env.p("pki/ca-chain.pem")])
        .ok();
    assert!(!odd(&r.stdout), "{}", r.stdout);
    // revoke twice: "already revoked at".
    env.mtls(&["revoke", "--cert", &cert]).ok();
    let r = env.mtls(&["revoke", "--cert", &cert]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("already revoked at 20"), "{}", r.stderr);
    assert!(r.stderr.trim_end().ends_with('Z'), "{}", r.stderr);
    assert!(!odd(&r.stderr), "{}", r.stderr);
}

#[test]
fn listen_accepts_host_names_and_says_the_accepted_forms() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let port = free_port();
    let mut args = gw::http_args(&f, &up, &["--allow-any-trusted"]);
    let i = args.iter().position(|a| a == "--listen").unwrap();
    args[i + 1] = format!("localhost:{port}");
    let g = Gateway::start(&args);
    assert_eq!(g.port(), port);
    assert!(g.addr.ip().is_loopback());
    let r = mtls(&[
        "gateway",
        "--listen",
        "localhost",
        "--cert",
        "x",
        "--key",
        "x",
        "--client-ca",
        "x",
        "--upstream",
        "http://127.0.0.1:1",
        "--allow-any-trusted",
    ])
    .fails(2, "HOST:PORT");
    assert!(r.stderr.contains("127.0.0.1:8443"), "{}", r.stderr);
}

#[test]
fn verify_says_what_it_checked() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "client", "c"]).ok();
    env.mtls(&["crl"]).ok();
    let cert = env.p("pki/issued/c.crt");
    let chain = env.p("pki/ca-chain.pem");
    let r = env.mtls(&["verify", &cert, "--ca", &chain]).ok();
    assert!(r.stdout.contains("checked:"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("revocation: not checked (no --crl, no --ocsp)"),
        "{}",
        r.stdout
    );
    let r = env
        .mtls(&[
            "verify",
            &cert,
            "--ca",
            &chain,
            "--crl",
            &env.p("pki/crl.pem"),
            "--purpose",
            "client",
        ])
        .ok();
    assert!(r.stdout.contains("purpose client"), "{}", r.stdout);
    assert!(
        r.stdout.contains("revocation: CRL (1 given"),
        "{}",
        r.stdout
    );
}

#[test]
fn inspect_shows_distribution_points_aia_and_key_identifiers_as_openssl_does() {
    let env = Env::new();
    let cnf = env.write(
        "ext.cnf",
        b"[req]\ndistinguished_name=dn\n[dn]\n[ext]\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\ncrlDistributionPoints=URI:http://ca.example/v1/crl\nauthorityInfoAccess=OCSP;URI:http://ca.example/ocsp,caIssuers;URI:http://ca.example/ca.crt\nbasicConstraints=critical,CA:TRUE\n",
    );
    env.openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=ext-test",
        "-keyout",
        "k.pem",
        "-out",
        "c.pem",
        "-days",
        "1",
        "-config",
        cnf.to_str().unwrap(),
        "-extensions",
        "ext",
    ])
    .ok();
    let r = env.mtls(&["inspect", &env.p("c.pem")]).ok();
    for needle in [
        "CRL dist. pt.: http://ca.example/v1/crl",
        "OCSP:          http://ca.example/ocsp",
        "CA issuers:    http://ca.example/ca.crt",
    ] {
        assert!(r.stdout.contains(needle), "{needle:?} in {}", r.stdout);
    }
    let ski = env
        .openssl(&[
            "x509",
            "-in",
            &env.p("c.pem"),
            "-noout",
            "-ext",
            "subjectKeyIdentifier",
        ])
        .ok();
    let ski = ski.stdout.lines().nth(1).unwrap().trim().to_string();
    assert!(
        r.stdout.contains(&format!("Subject KID:   {ski}")),
        "{ski} in {}",
        r.stdout
    );
    let json = env.mtls(&["inspect", &env.p("c.pem"), "--json"]).ok();
    assert!(
        json.stdout.contains("\"crl_distribution_points\""),
        "{}",
        json.stdout
    );
}

// ---- help and reference ------------------------------------------------------------------

const COMMANDS: &[&[&str]] = &[
    &["ca", "init"],
    &["ca", "intermediate"],
    &["ca", "serve"],
    &["ca", "token"],
    &["issue", "server"],
    &["issue", "client"],
    &["csr"],
    &["sign"],
    &["list"],
    &["revoke"],
    &["crl"],
    &["inspect"],
    &["verify"],
    &["export", "pkcs12"],
    &["gateway"],
    &["request"],
    &["tunnel"],
    &["enroll"],
    &["renew"],
    &["quickstart"],
    &["completions"],
];

#[test]
fn every_command_help_has_an_example_and_marks_required_options() {
    for c in COMMANDS {
        let mut args = c.to_vec();
        args.push("--help");
        let r = mtls(&args).ok();
        assert!(
            r.stdout.contains("Examples:\n  mtls "),
            "{c:?}: {}",
            r.stdout
        );
        // The examples use this command.
        assert!(
            r.stdout.contains(&format!("mtls {}", c.join(" "))),
            "{c:?}: {}",
            r.stdout
        );
    }
    let r = mtls(&["request", "--help"]).ok();
    for flag in ["--cert", "--key", "--ca"] {
        // From the option to the next one (long help puts the text on the next lines).
        let at = r.stdout.find(&format!("      {flag} <")).unwrap();
        let rest = &r.stdout[at + 6..];
        let end = rest
            .find("\n  -")
            .or_else(|| rest.find("\n      --"))
            .unwrap_or(rest.len());
        assert!(
            rest[..end].contains("[required]"),
            "{flag}: {}",
            &rest[..end]
        );
    }
    let r = mtls(&["gateway", "--help"]).ok();
    for flag in ["--allow-cn", "--allow-ou", "--allow-dns", "--allow-email"] {
        let at = r.stdout.find(&format!("      {flag} <")).unwrap();
        let rest = &r.stdout[at + 6..];
        let end = rest.find("\n      --").unwrap_or(rest.len());
        assert!(
            rest[..end].contains("Allow clients"),
            "{flag}: {}",
            &rest[..end]
        );
    }
}

#[test]
fn pki_options_show_only_where_they_apply() {
    for c in [
        &["csr"][..],
        &["inspect"],
        &["verify"],
        &["request"],
        &["tunnel"],
        &["enroll"],
        &["export", "pkcs12"],
        &["gateway"],
    ] {
        let mut args = c.to_vec();
        args.push("--help");
        let r = mtls(&args).ok();
        assert!(
            !r.stdout.contains("--database") && !r.stdout.contains("--pki"),
            "{c:?}: {}",
            r.stdout
        );
    }
    for c in [
        &["ca", "init"][..],
        &["issue", "client"],
        &["list"],
        &["revoke"],
        &["crl"],
        &["sign"],
    ] {
        let mut args = c.to_vec();
        args.push("--help");
        let r = mtls(&args).ok();
        let heading = r.stdout.find("PKI and inventory:").expect("heading");
        let pki = r.stdout.find("--pki <DIR>").expect("--pki");
        let db = r.stdout.find("--database <").expect("--database");
        assert!(pki > heading && db > heading, "{c:?}: {}", r.stdout);
    }
    // Where it does not apply it is refused after the command...
    mtls(&["inspect", "--pki", "x", "f.pem"]).fails(2, "--pki");
    // ... and still accepted before any command.
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    let other = env.p("other");
    env.mtls(&["issue", "client", "x", "--pki", &other])
        .fails(2, "other");
}

#[test]
fn cli_reference_is_current() {
    let env = Env::new();
    let out = env.p("cli.md");
    env.mtls_env(
        &["generate-reference", "--markdown", &out],
        &[("MTLS_PKI_DIR", "/somewhere/else")],
    )
    .ok();
    let generated = std::fs::read_to_string(&out).unwrap();
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/cli.md")).unwrap();
    assert!(
        generated == checked_in,
        "docs/cli.md is not current: run `cargo run -p mtls-cli -- generate-reference --markdown docs/cli.md`"
    );
    assert!(!generated.contains("/somewhere/else"));
    for c in COMMANDS {
        assert!(
            generated.contains(&format!(" mtls {}\n", c.join(" "))),
            "{c:?} has no section"
        );
    }
}

#[test]
fn man_pages_and_completions_are_generated_from_the_same_definitions() {
    let env = Env::new();
    let man = env.p("man");
    let comp = env.p("completions");
    env.mtls(&["generate-reference", "--man", &man, "--completions", &comp])
        .ok();
    for c in COMMANDS {
        let page = env.path(&format!("man/mtls-{}.1", c.join("-")));
        let text = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{page:?}: {e}"));
        assert!(text.contains(".TH"), "{page:?}");
    }
    let top = std::fs::read_to_string(env.path("man/mtls.1")).unwrap();
    assert!(top.contains("gateway"));
    // groff renders it without warnings, when installed.
    if Command::new("groff").arg("--version").output().is_ok() {
        let o = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww"])
            .arg(env.path("man/mtls-gateway.1"))
            .output()
            .unwrap();
        assert!(o.status.success());
        assert!(String::from_utf8_lossy(&o.stdout).contains("--allow-cn"));
    }
    let bash = env.path("completions/mtls.bash");
    let o = Command::new("bash").arg("-n").arg(&bash).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The script completes subcommands and flags.
    let script = format!(
        "source {}; COMP_WORDS=(mtls gat); COMP_CWORD=1; _mtls mtls gat mtls; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        bash.display()
    );
    let o = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("gateway"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r = env.mtls(&["completions", "zsh"]).ok();
    assert!(r.stdout.contains("#compdef mtls"));
}
