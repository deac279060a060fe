//! pkilint (PyPI) reports no error on what mtls issues: root, intermediate, server, client, CRL.
//! `.ci/run` and `scripts/test.sh` install pkilint; without it this test fails rather than skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::process::Command;

use common::Env;

fn lint(tool: &str, args: &[&str], file: &str) {
    let out = Command::new(tool).args(args).arg(file).output().unwrap_or_else(|e| {
        panic!("{tool} not runnable ({e}); install it with `pip install pkilint` (scripts/test.sh does)")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("ERROR"),
        "{tool} {file}:\n{text}"
    );
}

#[test]
fn pkilint_finds_no_errors() {
    for key_type in ["ecdsa-p256", "rsa-2048", "ed25519"] {
        let e = Env::new();
        e.mtls(&[
            "ca",
            "init",
            "--key-type",
            key_type,
            "--org",
            "My Organization",
            "--country",
            "JP",
        ])
        .ok();
        e.mtls(&[
            "issue",
            "server",
            "api.example.com",
            "www.example.com",
            "192.0.2.10",
            "--key-type",
            key_type,
        ])
        .ok();
        // pkilint's URI validator rejects the spiffe scheme, so lint an https URI here; SPIFFE
        // IDs are checked by the OpenSSL tests.
        e.mtls(&[
            "issue",
            "client",
            "client-app",
            "--key-type",
            key_type,
            "--email",
            "ops@example.com",
            "--uri",
            "https://example.com/client-app",
            "--dns",
            "client.example.com",
        ])
        .ok();
        let s = e.mtls(&["list", "--json"]).ok().stdout;
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        let client_serial = v
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["profile"] == "client")
            .unwrap()["serial"]
            .as_str()
            .unwrap()
            .to_string();
        e.mtls(&["revoke", &client_serial, "--reason", "keyCompromise"])
            .ok();
        e.mtls(&["crl"]).ok();
        for cert in [
            "pki/root.crt",
            "pki/intermediate.crt",
            "pki/issued/api.example.com.crt",
            "pki/issued/client-app.crt",
        ] {
            lint("lint_pkix_cert", &["lint", "-s", "ERROR"], &e.p(cert));
        }
        lint(
            "lint_crl",
            &["lint", "-t", "CRL", "-p", "PKIX", "-s", "ERROR"],
            &e.p("pki/crl.pem"),
        );
    }
}

#[test]
fn pkilint_finds_no_errors_in_a_name_constrained_intermediate() {
    let e = Env::new();
    e.mtls(&[
        "ca",
        "init",
        "--permit",
        "dns:svc.internal",
        "--permit",
        "ip:10.0.0.0/8",
        "--permit",
        "ip:fd00::/8",
        "--exclude",
        "dns:admin.svc.internal",
    ])
    .ok();
    e.mtls(&["issue", "server", "api.svc.internal", "10.0.0.7"])
        .ok();
    for cert in ["pki/intermediate.crt", "pki/issued/api.svc.internal.crt"] {
        lint("lint_pkix_cert", &["lint", "-s", "ERROR"], &e.p(cert));
    }
}
