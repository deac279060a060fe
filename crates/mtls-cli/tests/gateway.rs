//! The gateway against curl: accepted and rejected clients, policy, identity headers, attacks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::gw::{curl, http_args, Files, Gateway, Upstream};

#[test]
fn valid_client_reaches_upstream_with_identity() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let g = Gateway::start(&http_args(&f, &up, &["--allow-any-trusted"]));
    let c = f.client("client-app");
    let r = curl(&g, &f, Some(&c), "/api/secure", &[]);
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    let h = up.last();
    let xfcc: Vec<_> = h
        .iter()
        .filter(|(k, _)| k == "x-forwarded-client-cert")
        .collect();
    assert_eq!(xfcc.len(), 1);
    assert!(xfcc[0].1.contains("Subject=\"CN=client-app\""), "{xfcc:?}");
    assert!(h
        .iter()
        .any(|(k, v)| k == "client-cert" && v.starts_with(':') && v.ends_with(':')));
}

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use mtls_pki::Profile;
use mtls_test_util::ExtendedKeyUsagePurpose;
use time::OffsetDateTime;

/// Polls `cond` for up to 15 s (reloads are asynchronous); panics if it never holds.
fn wait_until(mut cond: impl FnMut() -> bool) {
    for _ in 0..75 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("condition not reached within 15 s");
}

fn setup(extra: &[&str]) -> (tempfile::TempDir, Files, Upstream, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let g = Gateway::start(&http_args(&f, &up, extra));
    (dir, f, up, g)
}

#[test]
fn spoofed_identity_headers_never_reach_upstream() {
    let (_d, f, up, g) = setup(&[
        "--allow-any-trusted",
        "--strip-header",
        "X-Authenticated-User",
    ]);
    let c = f.client("client-app");
    for http2 in [false, true] {
        let mut extra = vec![
            "-H",
            "X-Forwarded-Client-Cert: Hash=evil;Subject=\"CN=admin\"",
            "-H",
            "x-forwarded-client-cert: duplicate-evil",
            "-H",
            "Client-Cert: :ZXZpbA==:",
            "-H",
            "CLIENT-CERT-CHAIN: :ZXZpbA==:",
            "-H",
            "X-Authenticated-User: admin",
            "-H",
            "x-authenticated-user: admin2",
            // Forwarding headers: the gateway is the edge and sets its own.
            "-H",
            "X-Forwarded-For: 10.6.6.6",
            "-H",
            "Forwarded: for=10.6.6.6;host=evil.example",
            "-H",
            "X-Forwarded-Host: evil.example",
            "-H",
            "X-Forwarded-Port: 6666",
            "-H",
            "X-Real-IP: 10.6.6.6",
            "-H",
            "X-Forwarded-Proto: http-evil",
            // Path overrides: checked as `/`, served as another path by upstreams that
            // honour them.
            "-H",
            "X-Original-URL: /evil-admin",
            "-H",
            "X-Rewrite-URL: /evil-admin",
            "-H",
            "X-Original-URI: /evil-admin",
            "-H",
            "X-Forwarded-Uri: /evil-admin",
            "-H",
            "X-Forwarded-Prefix: /evil-admin",
            "-H",
            "X-Secret-Role: admin",
            "-H",
            "Connection: X-Secret-Role",
        ];
        if http2 {
            // HTTP/2 has no Connection header (RFC 9113 8.2.2); the other variants still apply.
            extra.truncate(extra.len() - 4);
            extra.push("--http2");
        } else {
            extra.push("--http1.1");
        }
        let r = curl(&g, &f, Some(&c), "/", &extra);
        assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
        let h = up.last();
        let all = format!("{h:?}");
        assert!(
            !all.contains("evil") && !all.contains("admin"),
            "spoofed value reached upstream: {all}"
        );
        assert!(!h.iter().any(|(k, _)| k == "client-cert-chain"
            || k == "x-secret-role"
            || k == "x-authenticated-user"));
        assert!(!all.contains("10.6.6.6") && !all.contains("6666"), "{all}");
        assert!(!h.iter().any(|(k, _)| k == "forwarded"
            || k == "x-forwarded-host"
            || k == "x-forwarded-port"
            || k == "x-real-ip"));
        let xff: Vec<_> = h.iter().filter(|(k, _)| k == "x-forwarded-for").collect();
        assert_eq!(xff.len(), 1, "{all}");
        assert_eq!(xff[0].1, "127.0.0.1", "{all}");
        let proto: Vec<_> = h.iter().filter(|(k, _)| k == "x-forwarded-proto").collect();
        assert_eq!(proto.len(), 1, "{all}");
        assert_eq!(proto[0].1, "https", "{all}");
        assert_eq!(
            h.iter()
                .filter(|(k, _)| k == "x-forwarded-client-cert")
                .count(),
            1,
            "{all}"
        );
        assert_eq!(
            h.iter().filter(|(k, _)| k == "client-cert").count(),
            1,
            "{all}"
        );
        assert!(all.contains("Subject=\\\"CN=client-app\\\""), "{all}");
    }
    // Underscore spellings (read as the same variable by CGI-style upstreams) are stripped, and
    // an absolute-form request's authority (the one checked against SNI) replaces its Host.
    let target = g.url("/abs");
    let extra = [
        "--http1.1",
        "--request-target",
        target.as_str(),
        "-H",
        "Host: evil.example",
        "-H",
        "x_forwarded_client_cert: Hash=evil",
    ];
    let r = curl(&g, &f, Some(&c), "/", &extra);
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    let h = up.last();
    let all = format!("{h:?}");
    assert!(!all.contains("evil"), "{all}");
    assert!(
        h.iter()
            .any(|(k, v)| k == "host" && v.starts_with("localhost")),
        "{all}"
    );
}

/// The `Subject` of an `X-Forwarded-Client-Cert` value, its quoting undone.
fn xfcc_subject(v: &str) -> String {
    let start = v.find("Subject=\"").unwrap() + "Subject=\"".len();
    let mut out = String::new();
    let mut chars = v[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().unwrap()),
            '"' => break,
            c => out.push(c),
        }
    }
    out
}

/// A value of another attribute holding `, CN=admin` reaches the upstream escaped (RFC 4514),
/// so reading the subject finds the certificate's CN (`guest`), not `admin`; the policy's own
/// `allow_cn` never was fooled.
#[test]
fn a_subject_value_cannot_pose_as_another_attribute_upstream() {
    let (_d, f, up, g) = setup(&["--allow-any-trusted"]);
    let key = mtls_pki::PrivateKey::generate(mtls_pki::KeyAlgorithm::EcdsaP256).unwrap();
    let request = mtls_pki::issue::LeafRequest {
        profile: Profile::Client,
        subject: mtls_pki::Subject {
            organization: Some("x, CN=admin".into()),
            ..mtls_pki::Subject::cn("guest")
        },
        sans: vec![],
        lifetime: time::Duration::days(1),
        urls: Default::default(),
    };
    let issued = mtls_pki::issue::issue_leaf(
        &f.pki.intermediate,
        key.key_pair(),
        &request,
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let leaf = f.write_leaf("guest", &issued.der, &key);
    let r = curl(&g, &f, Some(&leaf), "/", &[]);
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    let h = up.last();
    let (_, v) = h
        .iter()
        .find(|(k, _)| k == "x-forwarded-client-cert")
        .unwrap();
    assert!(v.contains(r#"Subject="CN=guest,O=x\\, CN=admin""#), "{v}");
    let attributes = mtls_pki::dn::parse_rfc4514(&xfcc_subject(v)).unwrap();
    let cns: Vec<_> = attributes.iter().filter(|(k, _)| k == "CN").collect();
    assert_eq!(cns, vec![&("CN".to_string(), "guest".to_string())]);
}

#[test]
fn hostile_subject_cannot_inject_or_split_headers() {
    let (_d, f, up, g) = setup(&["--allow-any-trusted"]);
    let now = OffsetDateTime::now_utc();
    let cn = "evil\", URI=spiffe://x/admin; DNS=a,b\r\nX-Injected: 1\\";
    let (der, key) = f.pki.custom_leaf(
        cn,
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    );
    let leaf = f.write_leaf("hostile", &der, &key);
    let r = curl(&g, &f, Some(&leaf), "/", &[]);
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    let h = up.last();
    assert!(!h.iter().any(|(k, _)| k == "x-injected"), "{h:?}");
    let xfcc: Vec<_> = h
        .iter()
        .filter(|(k, _)| k == "x-forwarded-client-cert")
        .collect();
    assert_eq!(xfcc.len(), 1);
    let v = &xfcc[0].1;
    assert!(!v.contains('\r') && !v.contains('\n'));
    // The subject stays one quoted field (quotes and backslashes escaped) holding one RFC 4514
    // value (its `"`, `;`, `,` and `\` escaped, CR/LF as `\0D\0A`).
    assert!(
        v.contains(
            r#"Subject="CN=evil\\\"\\, URI=spiffe://x/admin\\; DNS=a\\,b\\0D\\0AX-Injected: 1\\\\""#
        ),
        "{v}"
    );
    // Read back as RFC 4514, it is the one CN, whole.
    let attributes = mtls_pki::dn::parse_rfc4514(&xfcc_subject(v));
    assert_eq!(
        attributes,
        Some(vec![("CN".to_string(), cn.to_string())]),
        "{v}"
    );
    assert_eq!(
        v.matches("URI=").count(),
        1,
        "no URI SAN, only the text inside Subject: {v}"
    );
}

/// A request may only name a host the listener serves (a name or address of its served
/// certificates, or `--extra-host`): a client connecting by address (no TLS name sent) or
/// with a TLS name of its choosing (its certificate check skipped) cannot reach another
/// virtual host of a shared upstream; `Connection: host` does not take the checked Host away.
#[test]
fn only_hosts_the_listener_serves_reach_the_upstream() {
    let (_d, f, up, g) = setup(&["--allow-any-trusted"]);
    let c = f.client("c");
    let status = |url: &str, extra: &[&str]| -> u16 {
        let o = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg("--cacert")
            .arg(f.root())
            .arg("--cert")
            .arg(&c.chain)
            .arg("--key")
            .arg(&c.key)
            .args(extra)
            .arg(url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let by_address = format!("https://127.0.0.1:{}/", g.port());
    assert_eq!(status(&by_address, &[]), 200, "its own address");
    assert_eq!(
        status(&by_address, &["-H", "Host: admin.internal"]),
        421,
        "another host, no TLS name"
    );
    let chosen = |g: &Gateway| {
        (
            format!("https://admin.internal:{}/", g.port()),
            format!("admin.internal:{}:127.0.0.1", g.port()),
        )
    };
    let (url, resolve) = chosen(&g);
    assert_eq!(status(&url, &["-k", "--resolve", &resolve]), 421);
    let before = up.count();
    let r = curl(&g, &f, Some(&c), "/", &["-H", "Connection: host"]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        up.count(),
        before + 1,
        "only the last request reached the upstream"
    );
    assert!(
        up.last()
            .iter()
            .any(|(k, v)| k == "host" && v.starts_with("localhost")),
        "{:?}",
        up.last()
    );
    let g2 = Gateway::start(&http_args(
        &f,
        &up,
        &["--allow-any-trusted", "--extra-host", "admin.internal"],
    ));
    let (url, resolve) = chosen(&g2);
    assert_eq!(status(&url, &["-k", "--resolve", &resolve]), 200);
}

#[test]
fn sni_host_mismatch_is_421() {
    let (_d, f, up, g) = setup(&["--allow-any-trusted"]);
    let c = f.client("c");
    let r = curl(&g, &f, Some(&c), "/", &["-H", "Host: other.example.com"]);
    assert_eq!(r.status, 421, "{}", r.body);
    assert!(r.body.contains("MISDIRECTED_REQUEST"));
    let r = curl(&g, &f, Some(&c), "/", &["-H", "Host: LOCALHOST:443"]);
    assert_eq!(r.status, 200, "{}", r.body);
    // Hosts that could not be checked against the TLS name, or that an upstream could read
    // as another host, are refused before anything is forwarded.
    let userinfo = g
        .url("/")
        .replace("localhost", "internal.example:80@localhost");
    for extra in [
        vec!["--http1.1", "-H", "Host: internal.example:80@localhost"],
        vec!["--http2", "-H", "Host: internal.example:80@localhost"],
        vec!["--http1.1", "--request-target", userinfo.as_str()],
        // Not host[:port]: passed the comparison with the TLS name, then read by upstreams
        // that split or normalise it differently as another host.
        vec!["--http1.1", "-H", "Host: localhost:443,evil.example"],
        vec!["--http1.1", "-H", "Host: localhost:x y"],
        vec!["--http1.1", "-H", "Host: [localhost]evil.example"],
        vec!["--http2", "-H", "Host: localhost:443,evil.example"],
    ] {
        let r = curl(&g, &f, Some(&c), "/", &extra);
        assert_eq!(r.status, 400, "{extra:?}: {}", r.body);
        assert!(r.body.contains("INVALID_REQUEST"), "{}", r.body);
    }
    // Two Host headers (curl sends only one: raw bytes).
    let out = common::gw::s_client(
        &g,
        &f,
        Some(&c),
        &[],
        &[b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: other.example.com\r\nConnection: close\r\n\r\n"],
    );
    assert!(out.contains("HTTP/1.1 400"), "{out}");
    assert!(out.contains("more than one Host header"), "{out}");
    assert_eq!(
        up.count(),
        1,
        "only the LOCALHOST:443 request reached the upstream"
    );
    // Not a forward proxy.
    let r = curl(
        &g,
        &f,
        Some(&c),
        "/",
        &[
            "--http1.1",
            "-X",
            "CONNECT",
            "--request-target",
            "localhost:443",
        ],
    );
    assert_eq!(r.status, 405, "{}", r.body);
    assert!(r.body.contains("METHOD_NOT_ALLOWED"), "{}", r.body);
    assert_eq!(up.count(), 1);
    // An upstream that switches protocols unasked: nothing could carry the switch.
    let r = curl(&g, &f, Some(&c), "/switch-unasked", &["--http1.1"]);
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("BAD_GATEWAY"), "{}", r.body);
}

#[test]
fn oversize_headers_are_431() {
    let (d, f, up, g) = setup(&["--allow-any-trusted"]);
    let c = f.client("c");
    let big = format!("X-Big: {}", "a".repeat(40_000));
    let r = curl(&g, &f, Some(&c), "/", &["-H", &big]);
    assert_eq!(r.status, 431, "{} {}", r.body, r.stderr);
    assert_eq!(up.count(), 0);
    // HTTP/1.1 with a header far larger than the limit: the client is still sending when the
    // gateway answers; the lingering close lets the 431 arrive every time (not a broken pipe).
    let header_file = d.path().join("big-header");
    std::fs::write(&header_file, format!("X-Big: {}\n", "a".repeat(200_000))).unwrap();
    let arg = format!("@{}", header_file.display());
    for i in 0..10 {
        let r = curl(&g, &f, Some(&c), "/", &["--http1.1", "-H", &arg]);
        assert_eq!(r.status, 431, "try {i}: {} {}", r.body, r.stderr);
    }
    assert_eq!(up.count(), 0);
}

#[test]
fn idle_tcp_clients_do_not_delay_other_handshakes() {
    let (_d, f, _up, g) = setup(&["--allow-any-trusted"]);
    let c = f.client("c");
    let idle: Vec<std::net::TcpStream> = (0..50)
        .map(|_| std::net::TcpStream::connect(g.addr).unwrap())
        .collect();
    // The handshake timeout is 10 s; with per-connection handshakes these finish at once.
    for _ in 0..3 {
        let r = curl(&g, &f, Some(&c), "/", &["--max-time", "3"]);
        assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    }
    drop(idle);
}

#[test]
fn rejected_clients_fail_the_handshake_in_required_mode() {
    let (_d, f, up, g) = setup(&["--allow-any-trusted"]);
    let now = OffsetDateTime::now_utc();
    let other = mtls_test_util::TestPki::new("other");
    let foreign = other.client("foreign");
    let expired = f.pki.leaf_at(
        Profile::Client,
        "expired",
        &[],
        now - time::Duration::days(10),
        time::Duration::days(1),
    );
    let future = f.pki.leaf_at(
        Profile::Client,
        "future",
        &[],
        now + time::Duration::days(1),
        time::Duration::days(10),
    );
    let server_only = f.pki.leaf_at(
        Profile::Server,
        "server-only.example.com",
        &["server-only.example.com"],
        now,
        time::Duration::days(1),
    );
    let revoked = f.client("revoked");
    f.write_crl(std::slice::from_ref(&revoked.serial));
    g.hup();
    wait_until(|| curl(&g, &f, Some(&revoked), "/", &[]).status != 200);
    let base = up.count();
    let cases = [
        ("none", None),
        (
            "foreign",
            Some(f.write_leaf("foreign", &foreign.cert.der, &foreign.key)),
        ),
        (
            "expired",
            Some(f.write_leaf("expired", &expired.cert.der, &expired.key)),
        ),
        (
            "future",
            Some(f.write_leaf("future", &future.cert.der, &future.key)),
        ),
        (
            "server-only",
            Some(f.write_leaf("server-only", &server_only.cert.der, &server_only.key)),
        ),
        ("revoked", Some(revoked)),
    ];
    for (name, leaf) in &cases {
        let r = curl(&g, &f, leaf.as_ref(), "/", &[]);
        assert_ne!(r.status, 200, "{name} was accepted");
        assert_ne!(
            r.code, 0,
            "{name}: curl should fail the handshake: {} {}",
            r.body, r.stderr
        );
    }
    assert_eq!(up.count(), base, "no rejected client reached the upstream");
    let good = f.client("good");
    assert_eq!(curl(&g, &f, Some(&good), "/", &[]).status, 200);
}

#[test]
fn optional_mode_answers_the_seeds_json_errors() {
    let (_d, f, _up, g) = setup(&["--allow-any-trusted", "--client-auth", "optional"]);
    let r = curl(&g, &f, None, "/api/secure", &[]);
    assert_eq!(r.status, 401, "{} {}", r.body, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "NO_CLIENT_CERT");
    let now = OffsetDateTime::now_utc();
    let expired = f.pki.leaf_at(
        Profile::Client,
        "expired",
        &[],
        now - time::Duration::days(10),
        time::Duration::days(1),
    );
    let e = f.write_leaf("expired", &expired.cert.der, &expired.key);
    let r = curl(&g, &f, Some(&e), "/api/secure", &[]);
    assert_eq!(r.status, 403, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "INVALID_CERT");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
}

#[test]
fn policy_allows_listed_identities_only() {
    let (_d, f, up, g) = setup(&[
        "--allow-cn",
        "client-a",
        "--allow-uri",
        "spiffe://example.org/ns/*/sa/web",
    ]);
    let a = f.client("client-a");
    let b = f.client("client-b");
    assert_eq!(curl(&g, &f, Some(&a), "/", &[]).status, 200);
    let r = curl(&g, &f, Some(&b), "/", &[]);
    assert_eq!(r.status, 403);
    assert!(
        r.body.contains("INVALID_CERT") && r.body.contains("not allowed"),
        "{}",
        r.body
    );
    let now = OffsetDateTime::now_utc();
    let web = f.pki.leaf_at(
        Profile::Client,
        "web",
        &["spiffe://example.org/ns/prod/sa/web"],
        now,
        time::Duration::days(1),
    );
    let web = f.write_leaf("web", &web.cert.der, &web.key);
    assert_eq!(curl(&g, &f, Some(&web), "/", &[]).status, 200);
    assert_eq!(up.count(), 2);
}

/// `--match all`: a name pinned to its certificate (`--allow-cn` with `--allow-fingerprint`,
/// the fingerprint-and-CN check of the usual Node.js guides). Another certificate with the same
/// CN is refused, as is the pinned certificate of a name not listed, each 403 naming the list
/// that did not match; `--allow-any-trusted` with `--match all` is a usage error.
#[test]
fn match_all_pins_a_name_to_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let issue = |cn: &str, file: &str| {
        let c = f.pki.client(cn);
        let fp = mtls_pki::inspect::sha256_hex(&c.cert.der);
        (f.write_leaf(file, &c.cert.der, &c.key), fp)
    };
    let (alice, alice_fp) = issue("alice", "alice-1");
    let (alice_again, _) = issue("alice", "alice-2");
    let (mallory, mallory_fp) = issue("mallory", "mallory");
    let up = Upstream::start();
    let pinned = [
        "--match",
        "all",
        "--allow-cn",
        "alice",
        "--allow-fingerprint",
        &alice_fp,
        "--allow-fingerprint",
        &mallory_fp,
    ];
    let g = Gateway::start(&http_args(&f, &up, &pinned));
    assert_eq!(curl(&g, &f, Some(&alice), "/", &[]).status, 200);
    for (who, list) in [(&alice_again, "allow_fingerprint"), (&mallory, "allow_cn")] {
        let r = curl(&g, &f, Some(who), "/", &[]);
        assert_eq!(r.status, 403, "{}", r.body);
        assert!(
            r.body.contains("INVALID_CERT") && r.body.contains(&format!("nothing in {list}")),
            "{}",
            r.body
        );
    }
    assert_eq!(up.count(), 1);
    let o = Command::new(env!("CARGO_BIN_EXE_mtls"))
        .arg("gateway")
        .args(http_args(
            &f,
            &up,
            &[
                "--match",
                "all",
                "--allow-any-trusted",
                "--allow-cn",
                "alice",
            ],
        ))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot be combined"), "{err}");
}

#[test]
fn empty_policy_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let o = Command::new(env!("CARGO_BIN_EXE_mtls"))
        .arg("gateway")
        .args(http_args(&f, &up, &[]))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("allows nobody"), "{err}");
    // The hint names the flags the user can type, not the configuration file's keys.
    assert!(
        err.contains("--allow-cn") && err.contains("--allow-any-trusted"),
        "{err}"
    );
    assert!(!err.contains("allow_any_trusted = true"), "{err}");
    // An issuer requirement alone allows nobody either.
    let o = Command::new(env!("CARGO_BIN_EXE_mtls"))
        .arg("gateway")
        .args(http_args(&f, &up, &["--allow-issuer", "CN=x"]))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("allows nobody"));
}

/// `--upstream-crl` checks an https:// upstream: with a plain one it would check nothing, so
/// the gateway refuses to start rather than let the operator believe it does.
#[test]
fn an_upstream_crl_for_a_plain_upstream_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let crl = Files::p(&f.crl());
    let o = Command::new(env!("CARGO_BIN_EXE_mtls"))
        .arg("gateway")
        .args(http_args(
            &f,
            &up,
            &["--allow-any-trusted", "--upstream-crl", &crl],
        ))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("(--upstream-crl) checks an https:// upstream"),
        "{err}"
    );
}

#[test]
fn dead_upstream_is_502_json() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut args = http_args(&f, &Upstream::start(), &["--allow-any-trusted"]);
    let i = args.iter().position(|a| a == "--upstream").unwrap();
    args[i + 1] = format!("http://127.0.0.1:{port}");
    // At the default log level, as an operator runs it, with stderr going to a pipe.
    let g = Gateway::start_logging(&args, "warn");
    let c = f.client("c");
    let r = curl(&g, &f, Some(&c), "/", &[]);
    assert_eq!(r.status, 502);
    assert!(r.body.contains("BAD_GATEWAY"));
    // The log line names the upstream and the cause, in plain text (no colour codes).
    let start = std::time::Instant::now();
    let line = loop {
        let lines = g.stderr.lock().unwrap().clone();
        if let Some(l) = lines.iter().find(|l| l.contains("upstream")) {
            break l.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{lines:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    assert!(line.to_lowercase().contains("refused"), "{line}");
    assert!(!line.contains('\u{1b}'), "{line}");
}

fn s_client(
    g: &Gateway,
    f: &Files,
    leaf: &common::gw::Leaf,
    sess: (&str, &std::path::Path),
) -> String {
    let request: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let path = sess.1.to_string_lossy().into_owned();
    common::gw::s_client(g, f, Some(leaf), &["-tls1_3", sess.0, &path], &[request])
}

/// A keep-alive connection does not outlive its client certificate: the second request on
/// the same connection, after the certificate expired, is refused.
#[test]
fn keep_alive_connection_stops_at_certificate_expiry() {
    let (_d, f, _up, g) = setup(&["--allow-any-trusted"]);
    let short = f.pki.leaf_at(
        mtls_pki::Profile::Client,
        "short-lived",
        &[],
        time::OffsetDateTime::now_utc(),
        time::Duration::seconds(3),
    );
    let c = f.write_leaf("short", &short.cert.der, &short.key);
    let request: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let last: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    // First request at once, the last one 4 s later (chunks are written 0.5 s apart).
    let mut input: Vec<&[u8]> = vec![request];
    input.extend(std::iter::repeat_n(&b""[..], 7));
    input.push(last);
    let out = common::gw::s_client(&g, &f, Some(&c), &["-tls1_3"], &input);
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("HTTP/1.1 403") && out.contains("INVALID_CERT"),
        "the expired certificate was still accepted: {out}"
    );
}

#[test]
fn resumed_session_after_revocation_is_rejected() {
    let (d, f, _up, g) = setup(&["--allow-any-trusted", "--client-auth", "optional"]);
    let c = f.client("client-app");
    let sess = d.path().join("sess.pem");
    let first = s_client(&g, &f, &c, ("-sess_out", &sess));
    assert!(first.contains("HTTP/1.1 200"), "{first}");
    // Same config generation: the session resumes and is still accepted.
    let again = s_client(&g, &f, &c, ("-sess_in", &sess));
    assert!(again.contains("HTTP/1.1 200"), "{again}");
    f.write_crl(std::slice::from_ref(&c.serial));
    g.hup();
    wait_until(|| curl(&g, &f, Some(&c), "/", &[]).status == 403);
    let resumed = s_client(&g, &f, &c, ("-sess_in", &sess));
    assert!(
        !resumed.contains("HTTP/1.1 200"),
        "revoked client got through: {resumed}"
    );
    assert!(
        resumed.contains("403") && resumed.contains("revoked"),
        "{resumed}"
    );
}

/// `--session-resumption off`: no ticket is issued, so no session can be saved or resumed. By
/// default a ticket arrives (with the first answer) and the session resumes.
#[test]
fn session_resumption_off_issues_no_ticket() {
    let (d, f, _up, g) = setup(&["--allow-any-trusted", "--session-resumption", "off"]);
    let c = f.client("client-app");
    let sess = d.path().join("sess.pem");
    let first = s_client(&g, &f, &c, ("-sess_out", &sess));
    assert!(first.contains("HTTP/1.1 200"), "{first}");
    assert!(!first.contains("New Session Ticket"), "{first}");
    assert!(!sess.exists(), "a session was saved: {first}");

    let (d, f, _up, g) = setup(&["--allow-any-trusted"]);
    let c = f.client("client-app");
    let sess = d.path().join("sess.pem");
    let first = s_client(&g, &f, &c, ("-sess_out", &sess));
    assert!(first.contains("New Session Ticket"), "{first}");
    let again = s_client(&g, &f, &c, ("-sess_in", &sess));
    assert!(again.contains("Reused, TLSv1.3"), "{again}");
    assert!(again.contains("HTTP/1.1 200"), "{again}");
}

fn served_serial(g: &Gateway) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial",
            g.addr
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase()
}

/// The gateway's `/metrics` page.
fn metrics_page(g: &Gateway) -> String {
    let o = Command::new("curl")
        .args(["-sS", &format!("http://{}/metrics", g.admin.unwrap())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A gateway admitting any trusted client, with an admin listener, logging at WARN, plus
/// `extra` flags.
fn logging_with_admin(extra: &[&str]) -> (tempfile::TempDir, Files, Upstream, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let mut args = vec!["--allow-any-trusted", "--admin-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let g = Gateway::start_logging(&http_args(&f, &up, &args), "warn");
    (dir, f, up, g)
}

fn metric(g: &Gateway, name: &str) -> f64 {
    let text = metrics_page(g);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in metrics:\n{text}"))
}

fn replace(from: &std::path::Path, to: &std::path::Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[test]
fn twenty_reloads_under_load_lose_no_request_and_keep_the_last_good_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let g = Gateway::start(&http_args(
        &f,
        &up,
        &[
            "--allow-any-trusted",
            "--admin-listen",
            "127.0.0.1:0",
            "--no-access-log",
        ],
    ));
    // Two server certificates to alternate between.
    let mut pairs = Vec::new();
    for i in 0..2 {
        let s = f.pki.server(&["localhost", "127.0.0.1"]);
        let l = f.write_leaf(&format!("server{i}"), &s.cert.der, &s.key);
        pairs.push((l, s.cert.serial.to_string()));
    }
    let c = f.client("load");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (
        std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    );
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let port = g.port();
        let (root, chain, key) = (f.root(), c.chain.clone(), c.key.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // A new connection (full handshake) every time.
                let o = Command::new("curl")
                    .args([
                        "-sS",
                        "--max-time",
                        "10",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "--cacert",
                    ])
                    .arg(&root)
                    .arg("--cert")
                    .arg(&chain)
                    .arg("--key")
                    .arg(&key)
                    .arg("--resolve")
                    .arg(format!("localhost:{port}:127.0.0.1"))
                    .arg(format!("https://localhost:{port}/"))
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&o.stdout) == "200" {
                    ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    errors.push(String::from_utf8_lossy(&o.stderr).into_owned());
                }
            }
            errors
        })
    };
    let mut last_good = String::new();
    for i in 0..20 {
        if i == 10 {
            // A broken certificate file: the reload must fail and the old certificate stay.
            let before = served_serial(&g);
            let tmp = f.server_chain().with_extension("tmp");
            std::fs::write(
                &tmp,
                b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
            )
            .unwrap();
            std::fs::rename(&tmp, f.server_chain()).unwrap();
            g.hup();
            std::thread::sleep(Duration::from_millis(1500));
            assert_eq!(
                served_serial(&g),
                before,
                "the last good certificate must keep serving"
            );
            continue;
        }
        let (leaf, serial) = &pairs[i % 2];
        replace(&leaf.key, &f.server_key());
        replace(&leaf.chain, &f.server_chain());
        g.hup();
        std::thread::sleep(Duration::from_millis(700));
        last_good = serial.clone();
    }
    wait_until(|| served_serial(&g) == last_good);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let errors = load.join().unwrap();
    let (ok, failed) = (
        ok.load(std::sync::atomic::Ordering::Relaxed),
        failed.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert_eq!(failed, 0, "failed requests during reloads: {errors:?}");
    assert!(ok > 20, "the load loop made only {ok} requests");
    assert!(metric(&g, "mtls_reloads_total{result=\"failed\"}") >= 1.0);
    assert!(metric(&g, "mtls_reloads_total{result=\"ok\"}") >= 19.0);
    eprintln!("reload test: {ok} requests, 0 failed");
}

#[test]
fn metrics_and_healthz_on_the_admin_listener() {
    let (_d, f, _up, g) = setup(&["--allow-any-trusted", "--admin-listen", "127.0.0.1:0"]);
    let c = f.client("c");
    assert_eq!(curl(&g, &f, Some(&c), "/", &[]).status, 200);
    let _ = curl(&g, &f, None, "/", &[]);
    let o = Command::new("curl")
        .args(["-sS", &format!("http://{}/healthz", g.admin.unwrap())])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok");
    let o = Command::new("curl")
        .args(["-sS", &format!("http://{}/metrics", g.admin.unwrap())])
        .output()
        .unwrap();
    let m = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "mtls_handshakes_total{listener=\"default\",result=\"ok\",reason=\"\"} 1",
        "mtls_handshakes_total{listener=\"default\",result=\"failed\",reason=\"no_certificate\"} 1",
        "mtls_requests_total{listener=\"default\",status=\"200\"} 1",
        "mtls_request_duration_seconds_count 1",
        "mtls_served_certificate_not_after_seconds{",
        "mtls_client_ca_not_after_seconds{",
        "mtls_crl_next_update_seconds{",
        "mtls_active_connections",
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
    let families = common::assert_prometheus_text(&m);
    for f in [
        "mtls_handshakes counter",
        "mtls_reloads counter",
        "mtls_crl_fetches counter",
        "mtls_request_duration_seconds histogram",
        "mtls_crl_next_update_seconds gauge",
    ] {
        assert!(
            families.contains(&f.to_string()),
            "{f} missing: {families:?}"
        );
    }
}

/// A TCP echo server that records the first bytes it gets.
fn tcp_echo() -> (std::net::SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = tx.send(buf[..n].to_vec());
                    if s.write_all(&buf[..n]).is_err() || buf[..n].ends_with(b"\n") {
                        break;
                    }
                }
            });
        }
    });
    (addr, rx)
}

fn tcp_args(f: &Files, upstream: std::net::SocketAddr, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--mode",
        "tcp",
        "--listen",
        "127.0.0.1:0",
        "--cert",
        &Files::p(&f.server_chain()),
        "--key",
        &Files::p(&f.server_key()),
        "--client-ca",
        &Files::p(&f.ca_chain()),
        "--crl",
        &Files::p(&f.crl()),
        "--upstream",
        &upstream.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn s_client_send(g: &Gateway, f: &Files, leaf: &common::gw::Leaf, data: &[u8]) -> String {
    common::gw::s_client(g, f, Some(leaf), &["-quiet"], &[data])
}

#[test]
fn tcp_mode_forwards_bytes_with_proxy_protocol_identity_and_closes_denied_clients() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let (echo, seen) = tcp_echo();
    let g = Gateway::start(&tcp_args(
        &f,
        echo,
        &["--allow-cn", "db-client", "--proxy-protocol"],
    ));
    let c = f.client("db-client");
    let out = s_client_send(&g, &f, &c, b"hello over mtls\n");
    let first = seen.recv_timeout(Duration::from_secs(5)).unwrap();
    let rest: Vec<Vec<u8>> = seen.try_iter().collect();
    assert!(out.contains("hello over mtls"), "{out} {first:?} {rest:?}");
    assert!(
        first.starts_with(b"\r\n\r\n\0\r\nQUIT\n"),
        "PROXY v2 signature expected: {first:?}"
    );
    let text = String::from_utf8_lossy(&first);
    assert!(text.contains("db-client"), "CN TLV expected: {text}");
    // IPv4 (family 0x11): source and destination addresses, then ports. The destination is
    // where the client connected: the gateway's listener.
    assert_eq!(first.get(13), Some(&0x11));
    let dst_port = first.get(26..28).map(|p| u16::from_be_bytes([p[0], p[1]]));
    assert_eq!(dst_port, Some(g.port()), "{first:?}");
    // A trusted client the policy does not allow gets nothing through.
    let other = f.client("other");
    let out = s_client_send(&g, &f, &other, b"should not pass\n");
    assert!(!out.contains("should not pass"), "{out}");
    while let Ok(b) = seen.recv_timeout(Duration::from_millis(300)) {
        assert!(!String::from_utf8_lossy(&b).contains("should not pass"));
    }
}

#[test]
fn tcp_connection_is_closed_when_a_reload_revokes_its_client() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let (echo, _seen) = tcp_echo();
    let g = Gateway::start(&tcp_args(&f, echo, &["--allow-any-trusted"]));
    let c = f.client("long-lived");
    let mut child = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &g.addr.to_string(),
            "-servername",
            "localhost",
            "-quiet",
            "-ign_eof",
        ])
        .arg("-CAfile")
        .arg(f.root())
        .arg("-cert")
        .arg(&c.chain)
        .arg("-key")
        .arg(&c.key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(b"before-revocation ").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    f.write_crl(std::slice::from_ref(&c.serial));
    g.hup();
    wait_until(|| {
        g.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("closing connection after reload"))
    });
    let _ = stdin.write_all(b"after-revocation ");
    let pid = child.id();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(10));
        let _ = Command::new("kill").arg(pid.to_string()).status();
    });
    let mut out = Vec::new();
    let _ = child.stdout.take().unwrap().read_to_end(&mut out);
    drop(stdin);
    let _ = child.wait();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("before-revocation"), "{out}");
    assert!(!out.contains("after-revocation"), "{out}");
}

#[test]
fn upstream_connections_are_kept_alive_and_reused_across_clients() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let g = Gateway::start(&http_args(
        &f,
        &up,
        &["--allow-any-trusted", "--admin-listen", "127.0.0.1:0"],
    ));
    let c = f.client("client-app");
    // Sequential clients, each on a new TLS connection: GET, POST with a body, HEAD (a response
    // body that is empty from the start), and several requests on one connection.
    for _ in 0..4 {
        assert_eq!(curl(&g, &f, Some(&c), "/a", &[]).status, 200);
    }
    let r = curl(&g, &f, Some(&c), "/post", &["--data-binary", "0123456789"]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(r#""body_bytes":10"#), "{}", r.body);
    assert_eq!(curl(&g, &f, Some(&c), "/head", &["-I"]).status, 200);
    let r = curl(
        &g,
        &f,
        Some(&c),
        "/one",
        &["--http1.1", &g.url("/two"), &g.url("/three")],
    );
    assert!(r.body.contains("/three"), "{}", r.body);
    assert_eq!(up.count(), 9);
    assert_eq!(
        metric(
            &g,
            "mtls_upstream_connections_opened_total{listener=\"default\"}"
        ),
        1.0,
        "one upstream connection serves sequential clients"
    );
    assert_eq!(
        metric(&g, "mtls_upstream_idle_connections{listener=\"default\"}"),
        1.0
    );
}

/// An HTTP/1.1 upstream that answers `200 ok` and closes each connection `idle` after its last
/// response (or at once, with `Connection: close`, when `idle` is zero). Counts connections.
fn closing_upstream(
    idle: Duration,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let timeout = if idle.is_zero() {
                        Duration::from_secs(5)
                    } else {
                        idle
                    };
                    s.set_read_timeout(Some(timeout)).unwrap();
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return, // idle: close
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.clear();
                    let close = if idle.is_zero() {
                        "Connection: close\r\n"
                    } else {
                        ""
                    };
                    let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{close}\r\nok");
                    if s.write_all(resp.as_bytes()).is_err() || idle.is_zero() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[test]
fn upstream_connections_closed_by_the_upstream_are_not_reused() {
    for idle in [Duration::ZERO, Duration::from_millis(200)] {
        let dir = tempfile::tempdir().unwrap();
        let f = Files::new(dir.path());
        let (addr, accepted) = closing_upstream(idle);
        let mut args = http_args(&f, &Upstream::start(), &["--allow-any-trusted"]);
        let at = args.iter().position(|a| a == "--upstream").unwrap();
        args[at + 1] = format!("http://{addr}");
        let g = Gateway::start(&args);
        let c = f.client("client-app");
        for i in 0..4 {
            let r = curl(&g, &f, Some(&c), "/", &[]);
            assert_eq!(
                (r.status, r.body.as_str()),
                (200, "ok"),
                "idle {idle:?}, request {i}: {}",
                r.stderr
            );
            // Longer than the upstream keeps an idle connection.
            std::thread::sleep(idle * 2);
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            4,
            "idle {idle:?}"
        );
    }
}

#[test]
fn the_server_picks_the_tls13_suite_by_its_own_order() {
    let (_d, f, _up, g) = setup(&["--allow-any-trusted"]);
    let c = f.client("c");
    let suite = |offer: &str| {
        let o = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &g.addr.to_string(),
                "-servername",
                "localhost",
            ])
            .args(["-tls1_3", "-ciphersuites", offer, "-cert"])
            .arg(&c.chain)
            .arg("-key")
            .arg(&c.key)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        // "New, TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256"
        out.lines()
            .find_map(|l| {
                l.split_once("Cipher is ")
                    .map(|(_, c)| c.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no cipher in\n{out}"))
    };
    // A client preferring AES-256 still gets AES-128-GCM/SHA-256 (our order) ...
    assert_eq!(
        suite("TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"),
        "TLS_AES_128_GCM_SHA256"
    );
    // ... and a client that offers only AES-256 gets it.
    assert_eq!(suite("TLS_AES_256_GCM_SHA384"), "TLS_AES_256_GCM_SHA384");
}

#[test]
fn allow_issuer_compares_the_issuer_name_as_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let c = f.client("c");
    let g = Gateway::start(&http_args(
        &f,
        &up,
        &[
            "--allow-any-trusted",
            "--allow-issuer",
            "cn=gw Intermediate CA",
        ],
    ));
    assert_eq!(curl(&g, &f, Some(&c), "/", &[]).status, 200);
    drop(g);
    let g = Gateway::start(&http_args(
        &f,
        &up,
        &[
            "--allow-any-trusted",
            "--allow-issuer",
            "CN=gw Intermediate CA, O=x",
        ],
    ));
    let r = curl(&g, &f, Some(&c), "/", &[]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("is not allowed"), "{}", r.body);
    drop(g);
    // A value that is not a name is refused before the gateway starts.
    let o = Command::new(common::gw::mtls_bin())
        .arg("gateway")
        .args(http_args(&f, &up, &["--allow-issuer", "CN"]))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a distinguished name"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn refused_handshake_and_request_are_logged_with_reason_at_the_default_level() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let g = Gateway::start_logging(&http_args(&f, &up, &["--allow-cn", "good"]), "warn");
    let r = curl(&g, &f, None, "/", &[]);
    assert_ne!(r.status, 200);
    let line = common::wait_for_line(&g.stderr, &["handshake refused"]);
    assert!(
        line.contains("reason=\"no_certificate\"") && line.contains("127.0.0.1"),
        "{line}"
    );
    assert!(
        !line.contains('\u{1b}'),
        "no colour codes in a redirected log: {line:?}"
    );
    // A certificate refused in the handshake is named in the line: subject, serial, fingerprint.
    let other = mtls_test_util::TestPki::new("other");
    let foreign = other.client("foreign");
    let foreign = f.write_leaf("foreign", &foreign.cert.der, &foreign.key);
    let r = curl(&g, &f, Some(&foreign), "/", &[]);
    assert_ne!(r.status, 200);
    let line = common::wait_for_line(&g.stderr, &["reason=\"unknown_issuer\""]);
    for part in [
        "handshake refused",
        "subject=\"CN=foreign\"",
        &format!("serial=\"{}\"", foreign.serial),
        "fingerprint=\"",
    ] {
        assert!(line.contains(part), "{part} missing in {line}");
    }
    let bad = f.client("bad");
    let r = curl(&g, &f, Some(&bad), "/admin", &[]);
    assert_eq!(r.status, 403, "{}", r.body);
    let line = common::wait_for_line(&g.stderr, &["request refused"]);
    for part in [
        "reason=\"not_allowed\"",
        "subject=\"CN=bad\"",
        "status=403",
        "method=\"GET\"",
        "path=\"/admin\"",
        "serial=",
        "fingerprint=",
    ] {
        assert!(line.contains(part), "{part} missing in {line}");
    }
    // The access log names the same reason the log and the 403 body give.
    let access = common::wait_for_line(&g.stdout, &["\"status\":403"]);
    let v: serde_json::Value = serde_json::from_str(&access).unwrap();
    assert_eq!(v["rejection"], "not_allowed", "{access}");
    assert_eq!(v["cn"], "bad");
    let latency = v["latency_ms"].to_string();
    assert!(
        latency.split('.').nth(1).is_none_or(|d| d.len() <= 3),
        "latency in whole microseconds: {latency}"
    );
}

/// A client connecting with a certificate in the last tenth of its validity (every renewal
/// plan of a fraction has renewed by then) is a WARN line once per certificate and a series of
/// `mtls_client_certificate_not_after_seconds` (read by a Prometheus text parser); a day-long
/// certificate hours from its end but renewed on time, and a fresh one, are neither.
#[test]
fn clients_whose_renewal_is_overdue_are_logged_once_and_listed_in_metrics() {
    let (_dir, f, _up, g) = logging_with_admin(&[]);
    let now = OffsetDateTime::now_utc();
    let leaf = |cn: &str, age: time::Duration, lifetime: time::Duration| {
        let l = f.pki.leaf_at(Profile::Client, cn, &[], now - age, lifetime);
        (
            l.cert.serial.to_string(),
            f.write_leaf(cn, &l.cert.der, &l.key),
        )
    };
    let (soon_serial, soon) = leaf("soon", time::Duration::hours(66), time::Duration::days(3));
    let (_, short) = leaf("short", time::Duration::hours(15), time::Duration::days(1));
    let fine = f.client("fine");
    for c in [&soon, &soon, &short, &fine] {
        assert_eq!(curl(&g, &f, Some(c), "/", &[]).status, 200);
    }
    let line = common::wait_for_line(&g.stderr, &["in the last tenth of its validity"]);
    for part in [
        "subject=\"CN=soon\"",
        &format!("serial={soon_serial}"),
        "hours_left=5",
    ] {
        assert!(line.contains(part), "{part} missing in {line}");
    }
    let page = metrics_page(&g);
    common::assert_prometheus_text(&page);
    let series: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("mtls_client_certificate_not_after_seconds{"))
        .collect();
    assert_eq!(series.len(), 1, "{page}");
    assert!(
        series[0].contains("subject=\"CN=soon\"")
            && series[0].contains(&format!("serial=\"{soon_serial}\"")),
        "{}",
        series[0]
    );
    let logged = g
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("in the last tenth of its validity"))
        .count();
    assert_eq!(
        logged, 1,
        "logged once per certificate, the short one not at all"
    );
}

#[test]
fn a_flood_of_refused_handshakes_is_counted_but_logged_at_a_bounded_rate() {
    let (_dir, f, _up, g) = logging_with_admin(&[]);
    // 10,000 clients without a certificate (Python's ssl, 16 threads).
    let script = r#"
import socket, ssl, sys, concurrent.futures
port, ca, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
def one(_):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                t.recv(1)
        except (ssl.SSLError, OSError):
            pass
with concurrent.futures.ThreadPoolExecutor(16) as ex:
    list(ex.map(one, range(n)))
"#;
    let started = std::time::Instant::now();
    let o = Command::new("python3")
        .args(["-c", script, &g.port().to_string()])
        .arg(f.root())
        .arg("10000")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let elapsed = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let counted = metric(
        &g,
        "mtls_handshakes_total{listener=\"default\",result=\"failed\",reason=\"no_certificate\"}",
    );
    assert_eq!(counted, 10_000.0);
    let logged = g
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("handshake refused"))
        .count();
    // A burst of 100, then 20 a second.
    let bound = 100 + (20.0 * (elapsed + 1.0)) as usize;
    assert!(
        logged >= 100 && logged <= bound,
        "{logged} lines in {elapsed:.1} s (bound {bound})"
    );
}

#[test]
fn missing_crl_file_hint_names_mtls_crl() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let mut args = http_args(&f, &up, &["--allow-any-trusted"]);
    let at = args.iter().position(|a| a == "--crl").unwrap();
    args[at + 1] = dir.path().join("pki/crl.pem").display().to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_mtls"))
        .arg("gateway")
        .args(&args)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("crl.pem") && err.contains("`mtls crl`"),
        "{err}"
    );
}
