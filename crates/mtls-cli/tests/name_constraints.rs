//! An intermediate limited by name constraints (`mtls ca init --permit/--exclude`): the
//! extension is there, critical, as OpenSSL reads it; mtls issues only names it permits (each
//! refusal reason: a DNS name outside, an excluded one, an address outside) and records
//! nothing it refused; relying parties, OpenSSL and mtls's own verifier, refuse a certificate
//! the intermediate's key signed outside them (forged here with OpenSSL, which does not check).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::Env;

/// The constraints of the tests' intermediate, as flags.
const CONSTRAINTS: [&str; 6] = [
    "--permit",
    "dns:svc.internal",
    "--permit",
    "ip:10.0.0.0/8",
    "--exclude",
    "dns:admin.svc.internal",
];

fn constrained() -> Env {
    let e = Env::new();
    e.mtls(&[&["ca", "init"], &CONSTRAINTS[..]].concat()).ok();
    e
}

fn issued_serials(e: &Env) -> usize {
    let list = e.mtls(&["list", "--json"]).ok().stdout;
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    v.as_array().map(Vec::len).unwrap_or(0)
}

#[test]
fn the_intermediate_carries_critical_name_constraints() {
    let e = constrained();
    let text = e
        .openssl(&[
            "x509",
            "-in",
            &e.p("pki/intermediate.crt"),
            "-noout",
            "-text",
        ])
        .ok()
        .stdout;
    assert!(text.contains("X509v3 Name Constraints: critical"), "{text}");
    assert!(text.contains("DNS:svc.internal"), "{text}");
    assert!(text.contains("IP:10.0.0.0/255.0.0.0"), "{text}");
    assert!(text.contains("DNS:admin.svc.internal"), "{text}");
    let shown = e
        .mtls(&["inspect", &e.p("pki/intermediate.crt")])
        .ok()
        .stdout;
    assert!(
        shown.contains(
            "Name constr.:  permitted dns:svc.internal, ip:10.0.0.0/8; excluded dns:admin.svc.internal (critical)"
        ),
        "{shown}"
    );
    // The root is not constrained.
    let root = e.mtls(&["inspect", &e.p("pki/root.crt")]).ok().stdout;
    assert!(!root.contains("Name constr."), "{root}");
}

#[test]
fn names_inside_are_issued_and_verified_by_openssl() {
    let e = constrained();
    e.mtls(&["issue", "server", "api.svc.internal", "10.1.2.3"])
        .ok();
    // Only DNS and IP names are constrained: a SPIFFE ID is not.
    e.mtls(&[
        "issue",
        "client",
        "worker",
        "--dns",
        "worker.svc.internal",
        "--uri",
        "spiffe://svc.internal/ns/prod/sa/worker",
    ])
    .ok();
    // No DNS SAN, a host-name-like CN inside the constraints.
    e.mtls(&[
        "issue",
        "client",
        "billing.svc.internal",
        "--uri",
        "spiffe://svc.internal/billing",
    ])
    .ok();
    for (cert, purpose) in [
        ("pki/issued/api.svc.internal.crt", "sslserver"),
        ("pki/issued/worker.crt", "sslclient"),
        ("pki/issued/billing.svc.internal.crt", "sslclient"),
    ] {
        openssl_verify(&e, &["-purpose", purpose], &e.p(cert)).ok();
    }
    assert_eq!(issued_serials(&e), 3);
}

#[test]
fn names_outside_are_refused_and_nothing_is_recorded_or_written() {
    let e = constrained();
    for (args, name) in [
        (
            vec!["issue", "server", "api.example.com"],
            "DNS:api.example.com",
        ),
        // Under a permitted domain, but excluded.
        (
            vec!["issue", "server", "admin.svc.internal"],
            "DNS:admin.svc.internal",
        ),
        (
            vec!["issue", "server", "api.svc.internal", "192.168.1.1"],
            "IP:192.168.1.1",
        ),
        // A suffix of the permitted domain is not under it.
        (
            vec!["issue", "server", "badsvc.internal"],
            "DNS:badsvc.internal",
        ),
        // No DNS SAN, and a CN OpenSSL reads as a host name outside the constraints.
        (
            vec![
                "issue",
                "client",
                "billing.prod",
                "--uri",
                "spiffe://svc.internal/billing",
            ],
            "CN=billing.prod",
        ),
    ] {
        let r = e.mtls(&args);
        assert_ne!(r.code, 0, "{args:?} was issued");
        let all = format!("{}{}", r.stdout, r.stderr);
        assert!(all.contains("may not certify"), "{all}");
        assert!(all.contains(name), "{all}");
        assert!(all.contains("name constraints"), "{all}");
    }
    assert_eq!(
        issued_serials(&e),
        0,
        "a refused certificate is not in the inventory"
    );
    let issued: Vec<_> = std::fs::read_dir(e.path("pki/issued"))
        .map(|d| d.flatten().map(|f| f.file_name()).collect())
        .unwrap_or_default();
    assert!(
        issued.is_empty(),
        "files written for refused certificates: {issued:?}"
    );
}

fn tokens_in_inventory(e: &Env) -> String {
    let o = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM tokens').fetchone()[0])",
            &e.p("pki/inventory.db"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A token is a promise of a certificate: `mtls ca token` refuses (exit 1, the same reason
/// as `mtls issue`) names the CA may not certify, with only its certificate at hand (no key,
/// no passphrase), and stores nothing; names inside are minted.
#[test]
fn tokens_are_minted_only_for_names_the_ca_may_certify() {
    let e = constrained();
    for (args, name) in [
        (
            vec![
                "--name",
                "api",
                "--san",
                "dns:api.example.com",
                "--profile",
                "server",
            ],
            "DNS:api.example.com",
        ),
        (
            vec![
                "--name",
                "api",
                "--san",
                "ip:192.168.1.1",
                "--profile",
                "server",
            ],
            "IP:192.168.1.1",
        ),
        (
            vec![
                "--name",
                "billing.prod",
                "--san",
                "uri:spiffe://svc.internal/billing",
            ],
            "CN=billing.prod",
        ),
    ] {
        let r = e.mtls(&[&["ca", "token"], &args[..]].concat());
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "a token was printed: {}", r.stdout);
        assert!(r.stderr.contains("no token minted"), "{}", r.stderr);
        assert!(r.stderr.contains("may not certify"), "{}", r.stderr);
        assert!(r.stderr.contains(name), "{}", r.stderr);
    }
    assert_eq!(tokens_in_inventory(&e), "0");
    let r = e
        .mtls(&[
            "ca",
            "token",
            "--name",
            "api",
            "--san",
            "dns:api.svc.internal",
            "--san",
            "ip:10.1.2.3",
            "--profile",
            "server",
        ])
        .ok();
    assert!(!r.stdout.trim().is_empty());
    assert_eq!(tokens_in_inventory(&e), "1");
}

/// Rotating a constrained intermediate (`mtls ca intermediate --force`) without giving its
/// constraints again is refused, naming the flags that keep them, and changes nothing; with
/// them the new one has them; `--no-name-constraints` drops them on purpose.
#[test]
fn a_rotation_does_not_drop_the_name_constraints_unnoticed() {
    let e = constrained();
    let before = e.read("pki/intermediate.crt");
    let rotate = |extra: &[&str]| {
        let (root_cert, root_key) = (e.p("pki/root.crt"), e.p("pki/root.key"));
        let mut args = vec![
            "ca",
            "intermediate",
            "--root-cert",
            &root_cert,
            "--root-key",
            &root_key,
            "--cn",
            "CA 2",
            "--force",
        ];
        args.extend_from_slice(extra);
        e.mtls(&args)
    };
    let r = rotate(&[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "--permit dns:svc.internal --permit ip:10.0.0.0/8 --exclude dns:admin.svc.internal"
        ) && r.stderr.contains("--no-name-constraints"),
        "{}",
        r.stderr
    );
    assert_eq!(
        e.read("pki/intermediate.crt"),
        before,
        "changed by a refused rotation"
    );
    let text = |e: &Env| {
        e.openssl(&[
            "x509",
            "-in",
            &e.p("pki/intermediate.crt"),
            "-noout",
            "-text",
        ])
        .ok()
        .stdout
    };
    rotate(&CONSTRAINTS).ok();
    let kept = text(&e);
    assert!(
        kept.contains("CN=CA 2") || kept.contains("CN = CA 2"),
        "{kept}"
    );
    assert!(kept.contains("X509v3 Name Constraints: critical"), "{kept}");
    rotate(&["--no-name-constraints"]).ok();
    assert!(!text(&e).contains("Name Constraints"));
}

/// Signs, with OpenSSL and the intermediate's key, a client certificate with subject `CN=cn`
/// and the SANs `san`, written to `NAME.crt`: what a thief of the key could make. Returns its
/// path.
fn forge(e: &Env, cn: &str, san: &str, name: &str) -> String {
    let (key, csr, ext, out) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
        format!("{name}.crt"),
    );
    e.openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-subj",
        &format!("/CN={cn}"),
        "-out",
        &csr,
    ])
    .ok();
    e.write(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\nsubjectAltName={san}\n"
        )
        .as_bytes(),
    );
    e.openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &e.p("pki/intermediate.crt"),
        "-CAkey",
        &e.p("pki/intermediate.key"),
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        &ext,
        "-out",
        &out,
    ])
    .ok();
    out
}

/// `openssl verify` of `cert` against the root, with the intermediate, and `extra` options.
fn openssl_verify(e: &Env, extra: &[&str], cert: &str) -> common::Run {
    let (root, inter) = (e.p("pki/root.crt"), e.p("pki/intermediate.crt"));
    let mut args = vec!["verify", "-CAfile", &root, "-untrusted", &inter];
    args.extend_from_slice(extra);
    args.push(cert);
    e.openssl(&args)
}

/// `mtls verify` of the client certificate `cert` against the root, with the intermediate.
fn mtls_verify(e: &Env, cert: &str) -> common::Run {
    let (root, inter) = (e.p("pki/root.crt"), e.p("pki/intermediate.crt"));
    e.mtls(&[
        "verify",
        cert,
        "--ca",
        &root,
        "--untrusted",
        &inter,
        "--purpose",
        "client",
    ])
}

#[test]
fn relying_parties_refuse_a_certificate_signed_outside_the_constraints() {
    let e = constrained();
    let forged = forge(&e, "forged", "DNS:bank.example", "forged");
    openssl_verify(&e, &[], &forged).fails(2, "permitted subtree violation");
    mtls_verify(&e, &forged).fails(1, "name constraints");
    // The same forgery inside the constraints verifies: the refusal is the constraint's.
    let inside = forge(&e, "forged", "DNS:bank.svc.internal", "inside");
    openssl_verify(&e, &[], &inside).ok();
    mtls_verify(&e, &inside).ok();
    // Without a DNS SAN, OpenSSL checks a host-name-like CN against the DNS constraints
    // (rustls-webpki does not): why mtls refuses to issue one outside them.
    let cn = forge(
        &e,
        "billing.prod",
        "URI:spiffe://svc.internal/billing",
        "cn",
    );
    openssl_verify(&e, &[], &cn).fails(2, "permitted subtree violation");
    let cn_inside = forge(
        &e,
        "billing.svc.internal",
        "URI:spiffe://svc.internal/billing",
        "cn-in",
    );
    openssl_verify(&e, &[], &cn_inside).ok();
}

#[test]
fn malformed_constraints_are_usage_errors() {
    let e = Env::new();
    for (arg, needle) in [
        ("ip:10.0.0.1/8", "beyond the prefix"),
        ("ip:10.0.0.0", "ADDRESS/PREFIX"),
        ("ip:10.0.0.0/33", "longer than the address"),
        ("dns:.svc.internal", "leading dot"),
        ("dns:bad_name!", "invalid"),
    ] {
        let r = e.mtls(&["ca", "init", "--permit", arg]);
        assert_eq!(r.code, 2, "{arg}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(needle), "{arg}: {}", r.stderr);
    }
    assert!(!e.path("pki/root.key").exists());
}
