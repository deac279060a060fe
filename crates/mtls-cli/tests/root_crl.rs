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
