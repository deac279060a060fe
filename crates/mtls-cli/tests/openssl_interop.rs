//! Cross-checks of what mtls issues with OpenSSL, for every key type.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::Env;

const KEY_TYPES: [&str; 6] = [
    "ecdsa-p256",
    "ecdsa-p384",
    "ed25519",
    "rsa-2048",
    "rsa-3072",
    "rsa-4096",
];

fn hierarchy_verified_by_openssl(key_type: &str) {
    let e = Env::new();
    e.mtls(&[
        "ca",
        "init",
        "--key-type",
        key_type,
        "--org",
        "My Organization",
    ])
    .ok();
    e.mtls(&[
        "issue",
        "server",
        "api.example.com",
        "127.0.0.1",
        "--key-type",
        key_type,
    ])
    .ok();
    e.mtls(&[
        "issue",
        "client",
        "client-app",
        "--key-type",
        key_type,
        "--uri",
        "spiffe://example.org/ns/prod/sa/client",
    ])
    .ok();
    let root = e.p("pki/root.crt");
    let inter = e.p("pki/intermediate.crt");
    let server = e.p("pki/issued/api.example.com.crt");
    let client = e.p("pki/issued/client-app.crt");
    e.openssl(&[
        "verify",
        "-CAfile",
        &root,
        "-untrusted",
        &inter,
        "-purpose",
        "sslserver",
        &server,
    ])
    .ok();
    e.openssl(&[
        "verify",
        "-CAfile",
        &root,
        "-untrusted",
        &inter,
        "-purpose",
        "sslclient",
        &client,
    ])
    .ok();
    // Profiles are exclusive: a client certificate is not a server certificate and vice versa.
    e.openssl(&[
        "verify",
        "-CAfile",
        &root,
        "-untrusted",
        &inter,
        "-purpose",
        "sslserver",
        &client,
    ])
    .fails(2, "unsuitable certificate purpose");
    e.openssl(&[
        "verify",
        "-CAfile",
        &root,
        "-untrusted",
        &inter,
        "-purpose",
        "sslclient",
        &server,
    ])
    .fails(2, "unsuitable certificate purpose");
    e.openssl(&[
        "verify",
        "-CAfile",
        &root,
        "-untrusted",
        &inter,
        "-verify_hostname",
        "api.example.com",
        &server,
    ])
    .ok();
    e.openssl(&[
        "verify",
        "-CAfile",
        &root,
        "-untrusted",
        &inter,
        "-verify_ip",
        "127.0.0.1",
        &server,
    ])
    .ok();

    // Revocation: CRL accepted by OpenSSL, lists the serial, and OpenSSL then rejects the client.
    let serial = e
        .openssl(&["x509", "-in", &client, "-noout", "-serial"])
        .ok()
        .stdout;
    let serial = serial.trim().trim_start_matches("serial=").to_string();
    e.mtls(&["revoke", &serial, "--reason", "keyCompromise"])
        .ok();
    e.mtls(&["crl"]).ok();
    let crl = e.p("pki/crl.pem");
    let text = e
        .openssl(&["crl", "-in", &crl, "-CAfile", &inter, "-noout", "-text"])
        .ok();
    assert!(
        text.stderr.contains("verify OK") || text.stdout.contains("verify OK"),
        "{}{}",
        text.stdout,
        text.stderr
    );
    assert!(
        text.stdout.contains(&serial.to_uppercase()),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("Key Compromise"));
    assert!(text.stdout.contains("X509v3 CRL Number"));
    let chain = format!(
        "{}{}",
        String::from_utf8(e.read("pki/intermediate.crt")).unwrap(),
        String::from_utf8(e.read("pki/root.crt")).unwrap()
    );
    e.write("cafile.pem", chain.as_bytes());
    e.openssl(&[
        "verify",
        "-crl_check",
        "-CAfile",
        &e.p("cafile.pem"),
        "-CRLfile",
        &crl,
        &client,
    ])
    .fails(2, "certificate revoked");
    e.openssl(&[
        "verify",
        "-crl_check",
        "-CAfile",
        &e.p("cafile.pem"),
        "-CRLfile",
        &crl,
        &server,
    ])
    .ok();
    // mtls verify agrees.
    e.mtls(&[
        "verify",
        "--ca",
        &root,
        "--untrusted",
        &inter,
        "--crl",
        &crl,
        "--purpose",
        "client",
        &client,
    ])
    .fails(1, "revoked");
    e.mtls(&[
        "verify",
        "--ca",
        &root,
        "--untrusted",
        &inter,
        "--crl",
        &crl,
        "--purpose",
        "server",
        "--name",
        "api.example.com",
        &server,
    ])
    .ok();

    // PKCS#12 readable by OpenSSL 3 without -legacy, with the key and both certificates.
    e.write_secret("p12pass", b"correct horse battery\n");
    e.mtls(&[
        "export",
        "pkcs12",
        "--cert",
        &e.p("pki/issued/api.example.com.chain.pem"),
        "--key",
        &e.p("pki/issued/api.example.com.key"),
        "--out",
        &e.p("server.p12"),
        "--password-file",
        &e.p("p12pass"),
    ])
    .ok();
    let info = e
        .openssl(&[
            "pkcs12",
            "-info",
            "-in",
            &e.p("server.p12"),
            "-passin",
            "pass:correct horse battery",
            "-nodes",
        ])
        .ok();
    assert_eq!(
        info.stdout.matches("BEGIN CERTIFICATE").count(),
        2,
        "{}",
        info.stdout
    );
    assert!(info.stdout.contains("PRIVATE KEY"));
}

#[test]
fn ecdsa_p256_hierarchy_verified_by_openssl() {
    hierarchy_verified_by_openssl(KEY_TYPES[0]);
}
#[test]
fn ecdsa_p384_hierarchy_verified_by_openssl() {
    hierarchy_verified_by_openssl(KEY_TYPES[1]);
}
#[test]
fn ed25519_hierarchy_verified_by_openssl() {
    hierarchy_verified_by_openssl(KEY_TYPES[2]);
}
#[test]
fn rsa_2048_hierarchy_verified_by_openssl() {
    hierarchy_verified_by_openssl(KEY_TYPES[3]);
}
#[test]
fn rsa_3072_hierarchy_verified_by_openssl() {
    hierarchy_verified_by_openssl(KEY_TYPES[4]);
}
#[test]
fn rsa_4096_hierarchy_verified_by_openssl() {
    hierarchy_verified_by_openssl(KEY_TYPES[5]);
}

#[test]
fn rsa_server_certificate_has_key_encipherment_and_ec_does_not() {
    let e = Env::new();
    e.mtls(&["ca", "init"]).ok();
    e.mtls(&[
        "issue",
        "server",
        "rsa.example.com",
        "--key-type",
        "rsa-2048",
    ])
    .ok();
    e.mtls(&["issue", "server", "ec.example.com"]).ok();
    let rsa = e
        .openssl(&[
            "x509",
            "-in",
            &e.p("pki/issued/rsa.example.com.crt"),
            "-noout",
            "-ext",
            "keyUsage",
        ])
        .ok()
        .stdout;
    assert!(rsa.contains("Key Encipherment"), "{rsa}");
    let ec = e
        .openssl(&[
            "x509",
            "-in",
            &e.p("pki/issued/ec.example.com.crt"),
            "-noout",
            "-ext",
            "keyUsage",
        ])
        .ok()
        .stdout;
    assert!(!ec.contains("Key Encipherment"), "{ec}");
}

#[test]
fn ca_profiles_are_right() {
    let e = Env::new();
    e.mtls(&["ca", "init"]).ok();
    let root = e
        .openssl(&["x509", "-in", &e.p("pki/root.crt"), "-noout", "-text"])
        .ok()
        .stdout;
    assert!(root.contains("CA:TRUE"));
    assert!(root.contains("Basic Constraints: critical"));
    assert!(root.contains("Certificate Sign, CRL Sign"));
    assert!(root.contains("Subject Key Identifier"));
    let inter = e
        .openssl(&[
            "x509",
            "-in",
            &e.p("pki/intermediate.crt"),
            "-noout",
            "-text",
        ])
        .ok()
        .stdout;
    assert!(inter.contains("CA:TRUE, pathlen:0"), "{inter}");
    assert!(inter.contains("Authority Key Identifier"));
    e.openssl(&[
        "verify",
        "-CAfile",
        &e.p("pki/root.crt"),
        &e.p("pki/intermediate.crt"),
    ])
    .ok();
}

#[test]
fn keys_from_openssl_are_accepted_in_every_format() {
    let e = Env::new();
    e.mtls(&["ca", "init"]).ok();
    e.mtls(&["issue", "client", "c1"]).ok();
    // PKCS#1 RSA, SEC1 EC, PKCS#8 encrypted by OpenSSL, DER.
    e.openssl(&["genrsa", "-traditional", "-out", "rsa1.pem", "2048"])
        .ok();
    e.openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "sec1.pem",
    ])
    .ok();
    e.openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-aes-256-cbc",
        "-pass",
        "pass:secret-pass",
        "-out",
        "enc.pem",
    ])
    .ok();
    e.openssl(&[
        "pkey", "-in", "sec1.pem", "-outform", "DER", "-out", "key.der",
    ])
    .ok();
    for f in ["rsa1.pem", "sec1.pem", "enc.pem", "key.der"] {
        std::fs::set_permissions(
            e.path(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }
    assert!(e
        .mtls(&["inspect", &e.p("rsa1.pem")])
        .ok()
        .stdout
        .contains("RSA 2048"));
    assert!(e
        .mtls(&["inspect", &e.p("sec1.pem")])
        .ok()
        .stdout
        .contains("ECDSA P-256"));
    assert!(e
        .mtls(&["inspect", &e.p("key.der")])
        .ok()
        .stdout
        .contains("ECDSA P-256"));
    let r = e
        .mtls_env(
            &["inspect", &e.p("enc.pem")],
            &[("MTLS_PASSPHRASE", "secret-pass")],
        )
        .ok();
    assert!(
        r.stdout.contains("ECDSA P-384") && r.stdout.contains("Encrypted:     yes"),
        "{}",
        r.stdout
    );
    // Our encrypted keys are readable by OpenSSL.
    e.write_secret("pw", b"my key passphrase\n");
    e.mtls(&[
        "issue",
        "client",
        "enc-client",
        "--encrypt",
        "--passphrase-file",
        &e.p("pw"),
    ])
    .ok();
    let k = e.read("pki/issued/enc-client.key");
    assert!(String::from_utf8_lossy(&k).contains("ENCRYPTED PRIVATE KEY"));
    e.openssl(&[
        "pkey",
        "-in",
        &e.p("pki/issued/enc-client.key"),
        "-passin",
        "pass:my key passphrase",
        "-noout",
    ])
    .ok();
    e.openssl(&[
        "pkey",
        "-in",
        &e.p("pki/issued/enc-client.key"),
        "-passin",
        "pass:wrong",
        "-noout",
    ])
    .fails(1, "");
}

#[test]
fn openssl_csrs_are_signed_ignoring_extra_extensions() {
    let e = Env::new();
    e.mtls(&["ca", "init"]).ok();
    // RSA CSR with only a CN, as in the seed: the CN becomes the DNS SAN of a server certificate.
    e.openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=api.example.com/O=My Organization",
    ])
    .ok();
    e.mtls(&[
        "sign",
        "--csr",
        &e.p("server.csr"),
        "--profile",
        "server",
        "--out",
        &e.p("out"),
    ])
    .ok();
    let text = e
        .openssl(&[
            "x509",
            "-in",
            &e.p("out/api.example.com.crt"),
            "-noout",
            "-text",
        ])
        .ok()
        .stdout;
    assert!(text.contains("DNS:api.example.com"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"));
    e.openssl(&[
        "verify",
        "-CAfile",
        &e.p("pki/ca-chain.pem"),
        "-purpose",
        "sslserver",
        &e.p("out/api.example.com.crt"),
    ])
    .ok();
    // EC CSR with extensions the signer ignores (policies, key usage, EKU asking for more).
    e.openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/CN=client-app",
        "-addext",
        "subjectAltName=URI:spiffe://example.org/client,email:ops@example.com",
        "-addext",
        "certificatePolicies=1.2.3.4",
        "-addext",
        "keyUsage=digitalSignature,keyCertSign",
        "-addext",
        "extendedKeyUsage=codeSigning",
    ])
    .ok();
    e.mtls(&[
        "sign",
        "--csr",
        &e.p("client.csr"),
        "--profile",
        "client",
        "--out",
        &e.p("out"),
    ])
    .ok();
    let text = e
        .openssl(&["x509", "-in", &e.p("out/client-app.crt"), "-noout", "-text"])
        .ok()
        .stdout;
    assert!(
        text.contains("TLS Web Client Authentication") && !text.contains("Code Signing"),
        "{text}"
    );
    assert!(
        !text.contains("Certificate Sign") && !text.contains("Policies"),
        "{text}"
    );
    assert!(text.contains("URI:spiffe://example.org/client"));
    e.openssl(&[
        "verify",
        "-CAfile",
        &e.p("pki/ca-chain.pem"),
        "-purpose",
        "sslclient",
        &e.p("out/client-app.crt"),
    ])
    .ok();
    assert_eq!(e.inventory_count(), 2);
    // An e-mail name is not allowed in a server certificate.
    e.mtls(&[
        "sign",
        "--csr",
        &e.p("client.csr"),
        "--profile",
        "server",
        "--out",
        &e.p("out2"),
    ])
    .fails(1, "not allowed in server certificates");
    // A CSR of ours works too.
    e.mtls(&[
        "csr",
        "--cn",
        "svc",
        "--san",
        "svc.example.com",
        "--key-out",
        &e.p("svc.key"),
        "--csr-out",
        &e.p("svc.csr"),
    ])
    .ok();
    e.openssl(&["req", "-in", &e.p("svc.csr"), "-verify", "-noout"])
        .ok();
    e.mtls(&[
        "sign",
        "--csr",
        &e.p("svc.csr"),
        "--profile",
        "server",
        "--out",
        &e.p("out"),
    ])
    .ok();
}
