//! `mtls explain` agrees with the running gateway: for a table of client certificates ×
//! request paths, the same decision and the same reason code as the gateway's access log.
//! The gateway's admin listener serves the last refusals (`/debug/refusals`, bounded, no key
//! material) and counts refusals by reason in `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::gw::{self, Files, Gateway, Leaf, Upstream};
use common::Env;
use mtls_pki::Profile;
use time::OffsetDateTime;

fn last_access_line(g: &Gateway, before: usize) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let lines = g.stdout.lock().unwrap().clone();
        if lines.len() > before {
            return serde_json::from_str(lines.last().unwrap()).unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no access log line"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn explain_agrees_with_the_gateway_on_a_table_of_certificates_and_paths() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let now = OffsetDateTime::now_utc();
    let leaf = |name: &str, at: OffsetDateTime, days: i64| -> Leaf {
        let l = f
            .pki
            .leaf_at(Profile::Client, name, &[], at, time::Duration::days(days));
        f.write_leaf(name, &l.cert.der, &l.key)
    };
    let mut clients: Vec<(&str, Option<Leaf>)> = vec![
        ("good", Some(f.client("good"))),
        ("ops-admin", Some(f.client("ops-admin"))),
        ("stranger", Some(f.client("stranger"))),
        (
            "expired",
            Some(leaf("expired", now - time::Duration::days(60), 30)),
        ),
        (
            "later",
            Some(leaf("later", now + time::Duration::days(3), 30)),
        ),
        ("revoked", Some(f.client("revoked"))),
        ("none", None),
    ];
    // No EKU at all, serverAuth only, another CA's client, a CA certificate as the leaf.
    let (der, key) = f.pki.custom_leaf(
        "noeku",
        vec![],
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    );
    clients.push(("noeku", Some(f.write_leaf("noeku", &der, &key))));
    let server = f.pki.server(&["server.example"]);
    clients.push((
        "server",
        Some(f.write_leaf("serveronly", &server.cert.der, &server.key)),
    ));
    let foreign = mtls_test_util::TestPki::new("foreign").client("good");
    clients.push((
        "foreign",
        Some(f.write_leaf("foreign", &foreign.cert.der, &foreign.key)),
    ));
    let (ca_der, ca_key) = (f.pki.intermediate.der().clone(), f.pki.intermediate.key());
    let ca_key = mtls_pki::PrivateKey::from_pem_or_der(ca_key.pkcs8_der(), None).unwrap();
    clients.push((
        "intermediate",
        Some(f.write_leaf("intermediate", &ca_der, &ca_key)),
    ));
    let revoked_serial = clients
        .iter()
        .find(|(n, _)| *n == "revoked")
        .and_then(|(_, l)| l.as_ref().map(|l| l.serial.clone()))
        .unwrap();
    f.write_crl(&[revoked_serial]);

    let env = Env::new();
    let p = |path: &std::path::Path| path.to_string_lossy().into_owned();
    let config = env.write(
        "gateway.toml",
        format!(
            "admin_listen = \"127.0.0.1:0\"\naccess_log = true\n[[listener]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{}\"\nclient_ca = [\"{}\"]\ncrl = [\"{}\"]\nclient_auth = \"optional\"\n[listener.policy]\nallow_cn = [\"good\", \"ops-admin\", \"expired\", \"later\", \"revoked\", \"noeku\", \"server.example\", \"mtls Intermediate CA\"]\n[[listener.route]]\npath_prefix = \"/admin\"\n[listener.route.policy]\nallow_cn = [\"ops-admin\"]\n[[listener.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
            up.addr,
            p(&f.ca_chain()),
            p(&f.crl()),
            p(&f.server_chain()),
            p(&f.server_key()),
        )
        .as_bytes(),
    );
    let config = config.to_string_lossy().into_owned();
    let g = Gateway::start_logging(&["--config".to_string(), config.clone()], "warn");

    let mut rows = 0;
    let mut refused = 0;
    for (name, client) in &clients {
        for path in ["/", "/admin/users", "/%61dmin/users"] {
            let before = g.stdout.lock().unwrap().len();
            let r = gw::curl(&g, &f, client.as_ref(), path, &[]);
            assert!(r.status > 0, "{name} {path}: {}", r.stderr);
            let access = last_access_line(&g, before);
            let gateway_code = access["rejection"].as_str().map(str::to_string);
            assert_eq!(access["status"].as_u64(), Some(u64::from(r.status)));
            let allowed_by_gateway = r.status == 200;
            // Explain needs a certificate; without one, the gateway's answer is the check.
            let Some(l) = client else {
                assert_eq!(gateway_code.as_deref(), Some("no_certificate"));
                assert_eq!(r.status, 401);
                refused += 1;
                rows += 1;
                continue;
            };
            let e = env.mtls(&[
                "explain",
                l.chain.to_str().unwrap(),
                "--config",
                &config,
                "--path",
                path,
                "--json",
            ]);
            let v: serde_json::Value = serde_json::from_str(&e.stdout)
                .unwrap_or_else(|_| panic!("{name} {path}: {}{}", e.stdout, e.stderr));
            assert_eq!(
                v["allowed"].as_bool(),
                Some(allowed_by_gateway),
                "{name} {path}: gateway {} {:?}, explain {v}",
                r.status,
                gateway_code
            );
            assert_eq!(
                v["code"].as_str().map(str::to_string),
                gateway_code,
                "{name} {path}: explain {v}"
            );
            assert_eq!(e.code, if allowed_by_gateway { 0 } else { 1 });
            if !allowed_by_gateway {
                refused += 1;
            }
            rows += 1;
        }
    }
    assert!(rows >= 12 * 2, "{rows} rows");
    // The table covers every kind of decision.
    let codes: std::collections::BTreeSet<String> = g
        .stdout
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["rejection"].as_str().map(str::to_string))
        .collect();
    for c in [
        "not_allowed",
        "expired",
        "not_yet_valid",
        "revoked",
        "unknown_issuer",
        "no_certificate",
        "invalid_path",
        "missing_client_auth_eku",
    ] {
        assert!(codes.contains(c), "{c} not covered: {codes:?}");
    }

    // The admin listener: the last refusals, bounded, and counts by reason.
    let admin = g.admin.unwrap();
    let (status, body) = common::ca::curl(&[&format!("http://{admin}/debug/refusals")]);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let list = v["refusals"].as_array().unwrap();
    assert_eq!(list.len(), refused.min(100), "{body}");
    let stranger = list
        .iter()
        .find(|r| r["subject"] == "CN=stranger")
        .expect("stranger's refusal");
    assert_eq!(stranger["reason"], "not_allowed");
    assert_eq!(stranger["stage"], "request");
    assert!(stranger["serial"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(stranger["fingerprint"]
        .as_str()
        .is_some_and(|s| s.len() == 64));
    assert!(!body.contains("PRIVATE KEY") && !body.contains("BEGIN"));
    let (_, metrics) = common::ca::curl(&[&format!("http://{admin}/metrics")]);
    common::assert_prometheus_text(&metrics);
    let not_allowed = metrics
        .lines()
        .find(|l| l.starts_with("mtls_refusals_total{listener=\"api\",reason=\"not_allowed\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(not_allowed >= 3.0, "{metrics}");

    // A listener that requires a certificate refuses in the handshake: the reason it counts
    // is the one explain gives for it.
    let required = env.write(
        "required.toml",
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("name = \"api\"", "name = \"req\"")
            .replace("client_auth = \"optional\"\n", "")
            .as_bytes(),
    );
    let required = required.to_string_lossy().into_owned();
    let gr = Gateway::start_logging(&["--config".to_string(), required.clone()], "warn");
    let admin_r = gr.admin.unwrap();
    let handshake_counts = || -> Vec<(String, f64)> {
        let (_, page) = common::ca::curl(&[&format!("http://{admin_r}/metrics")]);
        page.lines()
            .filter(|l| l.starts_with("mtls_handshakes_total{listener=\"req\",result=\"failed\""))
            .filter_map(|l| {
                let reason = l.split("reason=\"").nth(1)?.split('"').next()?.to_string();
                Some((reason, l.rsplit(' ').next()?.parse().ok()?))
            })
            .collect()
    };
    let mut handshake_rows = 0;
    for (name, client) in &clients {
        let Some(l) = client else { continue };
        let before = handshake_counts();
        let r = gw::curl(&gr, &f, Some(l), "/", &[]);
        let e = env.mtls(&[
            "explain",
            l.chain.to_str().unwrap(),
            "--config",
            &required,
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&e.stdout).unwrap();
        if v["answer"] != "refused in the TLS handshake" {
            continue;
        }
        assert_eq!(r.status, 0, "{name}: refused in the handshake");
        let start = Instant::now();
        let counted = loop {
            let after = handshake_counts();
            let grown: Vec<String> = after
                .iter()
                .filter(|(k, n)| before.iter().find(|(b, _)| b == k).map_or(0.0, |(_, m)| *m) < *n)
                .map(|(k, _)| k.clone())
                .collect();
            if !grown.is_empty() || start.elapsed() > Duration::from_secs(5) {
                break grown;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            counted,
            vec![v["code"].as_str().unwrap().to_string()],
            "{name}: {v}"
        );
        handshake_rows += 1;
    }
    assert!(handshake_rows >= 5, "{handshake_rows}");

    // A flood keeps only the last 100.
    let stranger_leaf = clients[2].1.as_ref().unwrap();
    for _ in 0..110 {
        gw::curl(&g, &f, Some(stranger_leaf), "/", &[]);
    }
    let (_, body) = common::ca::curl(&[&format!("http://{admin}/debug/refusals")]);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["refusals"].as_array().unwrap().len(), 100);
}

#[test]
fn explain_reports_each_check_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let c = f.client("someone");
    let env = Env::new();
    let p = |path: &std::path::Path| path.to_string_lossy().into_owned();
    let config = env.write(
        "gateway.toml",
        format!(
            "[[listener]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:1\"\nclient_ca = [\"{}\"]\n[listener.policy]\nallow_cn = [\"other\"]\n[[listener.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
            p(&f.ca_chain()),
            p(&f.server_chain()),
            p(&f.server_key()),
        )
        .as_bytes(),
    );
    let r = env.mtls(&[
        "explain",
        c.chain.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1);
    for needle in [
        "path to a trusted CA",
        "n/a: no revocation source configured",
        "FAIL (not_allowed)",
        // A required-mode HTTP listener answers a policy refusal with its 403.
        "REFUSED (not_allowed): 403 INVALID_CERT",
    ] {
        assert!(r.stdout.contains(needle), "{needle:?} in {}", r.stdout);
    }
    env.mtls(&[
        "explain",
        c.chain.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--listener",
        "nope",
    ])
    .fails(2, "no listener \"nope\"");
}
