//! `mtls ca root-crl`: the root (its key offline) revokes an intermediate. OpenSSL reads and
//! verifies the CRL and refuses the intermediate's clients with it; the gateway, given the
//! root's CRL beside the intermediate's, refuses them too; the CRL carries its entries
//! forward with growing numbers; certificates the root did not sign, a previous CRL of
//! another CA and an unreadable one are refused with nothing written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::gw::{self, Gateway, Upstream};
use common::Env;

fn root_crl(env: &Env, extra: &[&str]) -> common::Run {
    let pki = env.pki();
    let (cert, key) = (pki.join("root.crt"), pki.join("root.key"));
    let mut args = vec![
        "ca",
        "root-crl",
        "--root-cert",
        cert.to_str().unwrap(),
        "--root-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    env.mtls(&args)
}

fn openssl_crl_text(env: &Env) -> String {
    let pki = env.pki();
    let r = env.openssl(&[
        "crl",
        "-in",
        pki.join("root-crl.pem").to_str().unwrap(),
        "-CAfile",
        pki.join("root.crt").to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(r.stderr.contains("verify OK"), "{}", r.stderr);
    r.stdout
}

#[test]
fn the_root_revokes_an_intermediate_and_its_clients_are_refused() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "localhost"]).ok();
    env.mtls(&["issue", "client", "app"]).ok();
    env.mtls(&["crl"]).ok();
    let pki = env.pki();
    let p = |rel: &str| pki.join(rel).to_string_lossy().into_owned();

    // The first root CRL: empty, number 1, verified by OpenSSL against the root.
    root_crl(&env, &[]).ok();
    let text = openssl_crl_text(&env);
    assert!(text.contains("No Revoked Certificates"), "{text}");
    assert!(
        text.contains("X509v3 CRL Number: \n                1"),
        "{text}"
    );

    let up = Upstream::start();
    let args = gw::trusting_args(
        &pki.join("issued/localhost.chain.pem"),
        &pki.join("issued/localhost.key"),
        &pki.join("ca-chain.pem"),
        &up,
        &["--crl", &p("crl.pem"), "--crl", &p("root-crl.pem")],
    );
    let g = Gateway::start(&args);
    let status = || {
        gw::status_as(
            &g,
            &pki.join("root.crt"),
            &pki.join("issued/app.chain.pem"),
            &pki.join("issued/app.key"),
        )
    };
    assert_eq!(status(), 200);

    // Refused, nothing written: a leaf the root did not sign, the root itself.
    let before = std::fs::read(pki.join("root-crl.pem")).unwrap();
    root_crl(&env, &["--revoke", &p("issued/app.crt")]).fails(2, "was not issued by");
    root_crl(&env, &["--revoke", &p("root.crt")]).fails(2, "the CA itself");
    assert_eq!(std::fs::read(pki.join("root-crl.pem")).unwrap(), before);

    // The intermediate revoked: number 2, its serial listed with the reason.
    root_crl(
        &env,
        &[
            "--revoke",
            &p("intermediate.crt"),
            "--reason",
            "keyCompromise",
        ],
    )
    .ok();
    let serial = env
        .openssl(&["x509", "-in", &p("intermediate.crt"), "-noout", "-serial"])
        .stdout;
    let serial = serial.trim().trim_start_matches("serial=").to_uppercase();
    let text = openssl_crl_text(&env);
    assert!(text.contains(&serial), "{serial} not in {text}");
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(
        text.contains("X509v3 CRL Number: \n                2"),
        "{text}"
    );
    // OpenSSL refuses the intermediate's client with both CRLs.
    let all_crls = env.write(
        "all-crls.pem",
        &[
            std::fs::read(pki.join("crl.pem")).unwrap(),
            std::fs::read(pki.join("root-crl.pem")).unwrap(),
        ]
        .concat(),
    );
    let v = env.openssl(&[
        "verify",
        "-crl_check_all",
        "-CAfile",
        &p("root.crt"),
        "-untrusted",
        &p("intermediate.crt"),
        "-CRLfile",
        all_crls.to_str().unwrap(),
        &p("issued/app.crt"),
    ]);
    assert!(
        v.stdout.contains("revoked") || v.stderr.contains("revoked"),
        "{}{}",
        v.stdout,
        v.stderr
    );

    // The gateway, reloaded, refuses the client.
    g.hup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while status() == 200 {
        assert!(std::time::Instant::now() < deadline, "still admitted");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // Signed again: the entry is carried forward (its first date kept), number 3.
    root_crl(&env, &[]).ok();
    let text = openssl_crl_text(&env);
    assert!(text.contains(&serial), "{text}");
    assert!(
        text.contains("X509v3 CRL Number: \n                3"),
        "{text}"
    );

    // A previous CRL that is not the root's, or not a CRL: refused, left as it is.
    std::fs::copy(pki.join("crl.pem"), pki.join("root-crl.pem")).unwrap();
    root_crl(&env, &[]).fails(2, "the previous CRL");
    std::fs::write(pki.join("root-crl.pem"), "junk").unwrap();
    root_crl(&env, &[]).fails(2, "holds no CRL");
    assert_eq!(std::fs::read(pki.join("root-crl.pem")).unwrap(), b"junk");
}

/// The online CA publishes the root's CRL (the file `mtls ca root-crl` writes) at
/// `/v1/root-crl`: none before there is one, then as OpenSSL verifies it against the root; a
/// gateway following it (`[[listener.crl_fetch]]`) refuses the intermediate's clients once the
/// root revokes it, with no file copied by hand; a file replaced by something that is not the
/// root's CRL keeps the last good one published.
#[test]
fn the_online_ca_publishes_the_root_crl_for_gateways_to_fetch() {
    use common::ca::{self, CaServer};
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "localhost"]).ok();
    env.mtls(&["issue", "client", "app"]).ok();
    env.mtls(&["crl"]).ok();
    let pki = env.pki();
    let p = |rel: &str| pki.join(rel).to_string_lossy().into_owned();
    let server = CaServer::start(&env, "ca", None, "");
    let url = server.publish("/v1/root-crl");

    let (status, body) = ca::curl(&[&url]);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"NOT_FOUND\""), "{body}");

    root_crl(&env, &[]).ok();
    let der = env.path("root-crl.der");
    let (status, _) = ca::curl(&["-o", der.to_str().unwrap(), &url]);
    assert_eq!(status, 200);
    let r = env.openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        der.to_str().unwrap(),
        "-CAfile",
        &p("root.crt"),
        "-noout",
    ]);
    assert!(r.stderr.contains("verify OK"), "{}", r.stderr);
    let (status, pem) = ca::curl(&[&format!("{url}.pem")]);
    assert_eq!(status, 200);
    assert!(pem.starts_with("-----BEGIN X509 CRL-----"), "{pem}");

    let up = Upstream::start();
    let fetched = env.p("fetched-root-crl.pem");
    let config = env.write(
        "gateway.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{}\"\nclient_ca = [\"{}\"]\ncrl = [\"{}\", \"{fetched}\"]\n[[listener.crl_fetch]]\nurl = \"{url}\"\nfile = \"{fetched}\"\nevery = \"1s\"\n[listener.policy]\nallow_any_trusted = true\n[[listener.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
            up.addr,
            p("ca-chain.pem"),
            p("crl.pem"),
            p("issued/localhost.chain.pem"),
            p("issued/localhost.key"),
        )
        .as_bytes(),
    );
    let g = Gateway::start(&["--config".into(), config.to_string_lossy().into_owned()]);
    let status = || {
        gw::status_as(
            &g,
            &pki.join("root.crt"),
            &pki.join("issued/app.chain.pem"),
            &pki.join("issued/app.key"),
        )
    };
    assert_eq!(status(), 200);

    root_crl(&env, &["--revoke", &p("intermediate.crt")]).ok();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while status() == 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "still admitted 20 s after the root revoked the intermediate"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // Replaced by the intermediate's CRL, then by junk: the root's last CRL stays published.
    let (_, before) = ca::curl(&[&format!("{url}.pem")]);
    for junk in [
        std::fs::read(pki.join("crl.pem")).unwrap(),
        b"junk".to_vec(),
    ] {
        let tmp = env.write("replacement", &junk);
        std::fs::rename(&tmp, pki.join("root-crl.pem")).unwrap();
        let (status, now) = ca::curl(&[&format!("{url}.pem")]);
        assert_eq!((status, &now), (200, &before));
    }
}

/// `mtls ca init --root-crl-url` writes where the root's CRL is published into the
/// intermediate (its CRL distribution point, as OpenSSL reads it), so a gateway following
/// distribution points (`--crl-from-certificates`, no CRL file at all) fetches the root's CRL
/// from the online CA beside the intermediate's: a client is admitted while the root revokes
/// nothing, and refused once it revoked the intermediate (a gateway started afterwards; a
/// running one asks again within the hour).
#[test]
fn the_intermediate_names_where_the_root_publishes_its_crl() {
    use common::ca::{self, CaServer};
    let env = Env::new();
    let port = ca::free_port();
    let url = format!("http://127.0.0.1:{port}/v1/root-crl");
    env.mtls(&["ca", "init", "--root-crl-url", &url]).ok();
    env.mtls(&[
        "ca",
        "init",
        "--root-crl-url",
        "https://x/v1/root-crl",
        "--pki",
        &env.p("other"),
    ])
    .fails(2, "http://");
    let pki = env.pki();
    let p = |rel: &str| pki.join(rel).to_string_lossy().into_owned();
    let dp = env
        .openssl(&[
            "x509",
            "-in",
            &p("intermediate.crt"),
            "-noout",
            "-ext",
            "crlDistributionPoints",
        ])
        .ok()
        .stdout;
    assert!(dp.contains(&url), "{dp}");
    env.mtls(&["issue", "server", "localhost"]).ok();
    // `ca init` wrote the root's first CRL with the intermediate: verifiers following the
    // point find one from the start (none would refuse every client).
    let first = env.openssl(&[
        "crl",
        "-in",
        &p("root-crl.pem"),
        "-CAfile",
        &p("root.crt"),
        "-noout",
    ]);
    assert!(first.stderr.contains("verify OK"), "{}", first.stderr);
    let server = CaServer::start_on(&env, "ca", None, "", 0, port);
    let t = ca::token(&env, "dp-client", &["--profile", "client"], None);
    ca::enroll(&env, &server, &t, "dp-client", &[]).ok();

    let up = Upstream::start();
    let args = gw::trusting_args(
        &pki.join("issued/localhost.chain.pem"),
        &pki.join("issued/localhost.key"),
        &pki.join("ca-chain.pem"),
        &up,
        &["--crl-from-certificates"],
    );
    let status = |g: &Gateway| {
        gw::status_as(
            g,
            &pki.join("root.crt"),
            &env.path("dp-client/cert.pem"),
            &env.path("dp-client/key.pem"),
        )
    };
    let within = |g: &Gateway, want: u16| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while status(g) != want {
            assert!(
                std::time::Instant::now() < deadline,
                "not {want} within 15 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let g = Gateway::start(&args);
    within(&g, 200);
    drop(g);
    root_crl(&env, &["--revoke", &p("intermediate.crt")]).ok();
    // Refused for the intermediate's revocation (counted as such), not for a CRL still
    // missing (also a refusal: unknown status fails closed).
    let mut with_admin = args.clone();
    with_admin.extend(["--admin-listen".to_string(), "127.0.0.1:0".to_string()]);
    let g = Gateway::start(&with_admin);
    let revoked_decisions = |g: &Gateway| {
        let (_, page) = ca::curl(&[&format!("http://{}/metrics", g.admin.unwrap())]);
        page.lines()
            .filter(|l| {
                l.starts_with("mtls_revocation_decisions_total{")
                    && l.contains("source=\"crl\",result=\"revoked\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        assert_eq!(
            status(&g),
            0,
            "admitted after the root revoked its intermediate"
        );
        if revoked_decisions(&g) >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no revoked decision within 15 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop(server);
}
