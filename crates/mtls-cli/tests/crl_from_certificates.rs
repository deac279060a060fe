//! `crl_from_certificates`: the gateway fetches the CRL named in the client certificates' CRL
//! Distribution Point (the online CA's `/v1/crl`), with no CRL file configured; a revocation
//! reaches it at the refresh before the CRL's nextUpdate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::ca::{self, CaServer};
use common::gw::{self, Gateway, Upstream};
use common::Env;

fn get(env: &Env, g: &Gateway, dir: &str) -> u16 {
    gw::status_as(
        g,
        &env.pki().join("root.crt"),
        &env.path(&format!("{dir}/cert.pem")),
        &env.path(&format!("{dir}/key.pem")),
    )
}

fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_gateway_follows_the_crl_distribution_points_of_its_clients() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "localhost"]).ok();
    // CRLs valid 8 s: the gateway refreshes them after about 6.
    let server = CaServer::start(&env, "ca", None, "crl_lifetime = \"8s\"\n");
    for name in ["cdp-a", "cdp-b"] {
        let t = ca::token(&env, name, &["--profile", "client"], None);
        ca::enroll(&env, &server, &t, name, &[]).ok();
    }
    let up = Upstream::start();
    let args = gw::trusting_args(
        &env.pki().join("issued/localhost.chain.pem"),
        &env.pki().join("issued/localhost.key"),
        &env.pki().join("ca-chain.pem"),
        &up,
        &["--admin-listen", "127.0.0.1:0", "--crl-from-certificates"],
    );
    let g = Gateway::start(&args);
    // The first client makes the gateway want its distribution point; once fetched, it passes.
    within(Duration::from_secs(10), "CRL fetched from the CDP", || {
        get(&env, &g, "cdp-a") == 200
    });
    assert_eq!(get(&env, &g, "cdp-b"), 200, "the same CRL covers it");
    let serial = ca::serial_of(&env, &env.path("cdp-b/cert.pem"));
    env.mtls(&["revoke", &serial]).ok();
    within(
        Duration::from_secs(20),
        "revocation through the refreshed CRL",
        || get(&env, &g, "cdp-b") == 0,
    );
    assert_eq!(get(&env, &g, "cdp-a"), 200);
    let (_, page) = ca::curl(&[&format!("http://{}/metrics", g.admin.unwrap())]);
    common::assert_prometheus_text(&page);
    assert!(
        page.lines()
            .any(|l| l.starts_with("mtls_revocation_decisions_total{")
                && l.contains("source=\"crl\",result=\"revoked\"")
                && !l.ends_with(" 0")),
        "{page}"
    );
    // `mtls explain` fetches the distribution points itself and agrees.
    let p = |rel: &str| env.p(rel);
    let config = env.write(
        "gateway.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{}\"\nclient_ca = [\"{}\"]\ncrl_from_certificates = true\n[listener.policy]\nallow_any_trusted = true\n[[listener.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
            up.addr,
            p("pki/ca-chain.pem"),
            p("pki/issued/localhost.chain.pem"),
            p("pki/issued/localhost.key"),
        )
        .as_bytes(),
    );
    let config = config.to_string_lossy().into_owned();
    let r = env.mtls(&["explain", &p("cdp-b/cert.pem"), "--config", &config]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("REFUSED (revoked)"), "{}", r.stdout);
    let r = env.mtls(&["explain", &p("cdp-a/cert.pem"), "--config", &config]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}
