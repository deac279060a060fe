//! OCSP checking of client certificates by the gateway against `mtls ca serve`'s responder:
//! a good client passes, a revoked one is refused on its first handshake (one bounded wait for
//! the answer), answers are cached so a known client keeps working while the responder is down,
//! a client never seen while it is down is refused under hard-fail and admitted under
//! soft-fail (`revocation_policy = "soft-fail"`); decisions counted by source and result.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::ca::{self, CaServer};
use common::gw::{self, Gateway, Upstream};
use common::Env;

fn get(env: &Env, g: &Gateway, client: &str) -> u16 {
    let pki = env.pki();
    gw::status_as(
        g,
        &pki.join("root.crt"),
        &pki.join(format!("issued/{client}.chain.pem")),
        &pki.join(format!("issued/{client}.key")),
    )
}

#[test]
fn the_gateway_checks_client_certificates_with_ocsp() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "localhost"]).ok();
    for c in ["good", "revoked", "late", "soft"] {
        env.mtls(&["issue", "client", c]).ok();
    }
    let ca = CaServer::start(&env, "ca", None, "");
    let up = Upstream::start();
    let responder = ca.publish("/ocsp");
    let pki = env.pki();
    let p = |rel: &str| pki.join(rel).to_string_lossy().into_owned();
    let args = gw::trusting_args(
        &pki.join("issued/localhost.chain.pem"),
        &pki.join("issued/localhost.key"),
        &pki.join("ca-chain.pem"),
        &up,
        &[
            "--ocsp-responder",
            &responder,
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let hard = Gateway::start(&args);
    let soft_config = env.write(
        "soft.toml",
        format!(
            "admin_listen = \"127.0.0.1:0\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{}\"\nclient_ca = [\"{}\"]\nrevocation_policy = \"soft-fail\"\n[listener.ocsp]\nresponder = \"{responder}\"\n[listener.policy]\nallow_any_trusted = true\n[[listener.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
            up.addr,
            p("ca-chain.pem"),
            p("issued/localhost.chain.pem"),
            p("issued/localhost.key"),
        )
        .as_bytes(),
    );
    let soft = Gateway::start(&["--config".into(), soft_config.display().to_string()]);

    assert_eq!(get(&env, &hard, "good"), 200);
    let serial = ca::serial_of(&env, &pki.join("issued/revoked.crt"));
    env.mtls(&["revoke", &serial]).ok();
    assert_eq!(get(&env, &hard, "revoked"), 0, "refused in the handshake");
    assert_eq!(
        get(&env, &soft, "revoked"),
        0,
        "revoked is revoked under soft-fail too"
    );

    // The responder goes away.
    ca.kill();
    assert_eq!(
        get(&env, &hard, "good"),
        200,
        "a cached answer is used until its nextUpdate"
    );
    assert_eq!(
        get(&env, &hard, "late"),
        0,
        "hard-fail: no answer about a new client, refused"
    );
    assert_eq!(
        get(&env, &soft, "soft"),
        200,
        "soft-fail: no answer, admitted"
    );
    // Decisions by source and result; the soft-fail admission logged.
    let decisions = |g: &Gateway| {
        let (status, page) = ca::curl(&[&format!("http://{}/metrics", g.admin.unwrap())]);
        assert_eq!(status, 200);
        common::assert_prometheus_text(&page);
        let count = move |source: &str, result: &str| -> f64 {
            let want = format!("source=\"{source}\",result=\"{result}\"");
            page.lines()
                .filter(|l| l.starts_with("mtls_revocation_decisions_total{") && l.contains(&want))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        count
    };
    let (_, page) = ca::curl(&[&format!("http://{}/metrics", hard.admin.unwrap())]);
    assert!(
        page.lines()
            .any(|l| l.starts_with("mtls_ocsp_cached_answers{") && !l.ends_with(" 0")),
        "{page}"
    );
    assert!(page.contains("mtls_ocsp_next_update_seconds{"), "{page}");
    let hard_count = decisions(&hard);
    assert!(hard_count("ocsp", "good") >= 1.0);
    assert!(hard_count("ocsp", "revoked") >= 1.0);
    assert!(hard_count("ocsp", "unknown_refused") >= 1.0);
    assert_eq!(hard_count("none", "unknown_accepted"), 0.0);
    let soft_count = decisions(&soft);
    assert!(soft_count("none", "unknown_accepted") >= 1.0);
    assert!(
        soft.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("soft-fail: accepted")),
        "soft-fail admissions are logged"
    );
}
