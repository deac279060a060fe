//! Bad input: each case fails with a clear message and a non-zero exit, and writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::os::unix::fs::PermissionsExt;

use common::Env;
use mtls_pki::issue::{new_intermediate, new_root};
use mtls_pki::{KeyAlgorithm, PrivateKey, Subject};
use time::{Duration, OffsetDateTime};

fn initialised() -> Env {
    let e = Env::new();
    e.mtls(&["ca", "init"]).ok();
    e
}

#[test]
fn malformed_pem_and_der_are_input_errors() {
    let e = initialised();
    e.write(
        "garbage.pem",
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    e.write("garbage.der", &[0x30, 0x82, 0x10, 0x00, 0x01, 0x02]);
    e.write("text.txt", b"hello world");
    e.write("empty", b"");
    let mut cert = e.read("pki/root.crt");
    let s = String::from_utf8(cert.clone()).unwrap();
    // Truncated PEM body.
    let cut = s.len() / 2;
    cert.truncate(cut);
    cert.extend_from_slice(b"\n-----END CERTIFICATE-----\n");
    e.write("truncated.pem", &cert);
    for f in [
        "garbage.pem",
        "garbage.der",
        "text.txt",
        "empty",
        "truncated.pem",
    ] {
        e.mtls(&["inspect", &e.p(f)]).fails(2, "malformed");
        e.mtls(&["verify", "--ca", &e.p(f), &e.p("pki/root.crt")])
            .fails(2, "malformed");
        e.mtls(&["verify", "--ca", &e.p("pki/root.crt"), &e.p(f)])
            .fails(2, "malformed");
        let r = e
            .mtls(&["sign", "--csr", &e.p(f), "--profile", "client"])
            .fails(2, "");
        assert!(
            r.stderr.contains("malformed") || r.stderr.contains("no CSR found"),
            "{}",
            r.stderr
        );
        let r = e
            .mtls(&[
                "verify",
                "--ca",
                &e.p("pki/root.crt"),
                "--crl",
                &e.p(f),
                &e.p("pki/root.crt"),
            ])
            .fails(2, "");
        assert!(
            r.stderr.contains("malformed") || r.stderr.contains("no CRL found"),
            "{}",
            r.stderr
        );
    }
    assert_eq!(e.inventory_count(), 0);
}

#[test]
fn wrong_or_missing_passphrase_fails_cleanly() {
    let e = Env::new();
    e.write("readable", b"the right passphrase\n");
    e.mtls(&[
        "ca",
        "init",
        "--encrypt",
        "--passphrase-file",
        &e.p("readable"),
    ])
    .fails(2, "chmod 600");
    e.write_secret("pw", b"the right passphrase\n");
    e.write_secret("wrong", b"the wrong passphrase\n");
    e.write_secret("root-pw", b"the root's own passphrase\n");
    // One passphrase for both keys is refused: the intermediate's lives on the CA's host.
    e.mtls(&[
        "ca",
        "init",
        "--encrypt",
        "--passphrase-file",
        &e.p("pw"),
        "--root-passphrase-file",
        &e.p("pw"),
    ])
    .fails(2, "must differ");
    e.mtls(&[
        "ca",
        "init",
        "--encrypt",
        "--passphrase-file",
        &e.p("pw"),
        "--root-passphrase-file",
        &e.p("root-pw"),
    ])
    .ok();
    // The root key opens with its own passphrase only.
    e.openssl(&[
        "pkey",
        "-in",
        &e.p("pki/root.key"),
        "-passin",
        "pass:the root's own passphrase",
        "-noout",
    ])
    .ok();
    let r = e.openssl(&[
        "pkey",
        "-in",
        &e.p("pki/root.key"),
        "-passin",
        "pass:the right passphrase",
        "-noout",
    ]);
    assert_ne!(
        r.code, 0,
        "the root key opened with the intermediate's passphrase"
    );
    // Rotating the intermediate: its new passphrase may not be the root's either.
    let intermediate_before = e.read("pki/intermediate.key");
    e.mtls(&[
        "ca",
        "intermediate",
        "--root-cert",
        &e.p("pki/root.crt"),
        "--root-key",
        &e.p("pki/root.key"),
        "--root-passphrase-file",
        &e.p("root-pw"),
        "--encrypt",
        "--passphrase-file",
        &e.p("root-pw"),
        "--force",
    ])
    .fails(2, "opens the root key");
    assert_eq!(e.read("pki/intermediate.key"), intermediate_before);
    assert!(String::from_utf8(e.read("pki/intermediate.key"))
        .unwrap()
        .contains("ENCRYPTED PRIVATE KEY"));
    let before = e.tree();
    e.mtls(&[
        "issue",
        "client",
        "c",
        "--ca-passphrase-file",
        &e.p("wrong"),
    ])
    .fails(2, "wrong passphrase");
    e.mtls(&["issue", "client", "c"])
        .fails(2, "intermediate.key is encrypted");
    assert_eq!(e.tree(), before, "nothing may be written");
    assert_eq!(e.inventory_count(), 0);
    e.mtls(&["issue", "client", "c", "--ca-passphrase-file", &e.p("pw")])
        .ok();
    e.mtls_env(
        &["issue", "client", "d"],
        &[("MTLS_CA_PASSPHRASE", "the right passphrase")],
    )
    .ok();
    // A too-short passphrase for a new key is refused.
    e.write_secret("short", b"abc");
    e.mtls(&[
        "issue",
        "client",
        "x",
        "--encrypt",
        "--passphrase-file",
        &e.p("short"),
        "--ca-passphrase-file",
        &e.p("pw"),
    ])
    .fails(2, "at least 8 bytes");
}

#[test]
fn world_readable_key_is_refused_with_the_fix() {
    let e = initialised();
    std::fs::set_permissions(
        e.path("pki/intermediate.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let before = e.tree();
    e.mtls(&["issue", "client", "c"]).fails(2, "chmod 600");
    e.mtls(&["crl"]).fails(2, "readable by group or others");
    assert_eq!(e.tree(), before);
    std::fs::set_permissions(
        e.path("pki/intermediate.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    e.mtls(&["issue", "client", "c"]).ok();
}

#[test]
fn keys_are_written_owner_only() {
    let e = initialised();
    e.mtls(&["issue", "client", "c"]).ok();
    for k in [
        "pki/root.key",
        "pki/intermediate.key",
        "pki/issued/c.key",
        "pki/inventory.db",
    ] {
        let mode = std::fs::metadata(e.path(k)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{k}");
    }
}

#[test]
fn csr_with_bad_signature_is_refused() {
    let e = initialised();
    e.mtls(&[
        "csr",
        "--cn",
        "c",
        "--key-out",
        &e.p("c.key"),
        "--csr-out",
        &e.p("c.csr"),
    ])
    .ok();
    e.openssl(&[
        "req",
        "-in",
        &e.p("c.csr"),
        "-outform",
        "DER",
        "-out",
        &e.p("c.der"),
    ])
    .ok();
    let mut der = e.read("c.der");
    // Flip a bit in the middle of the signed subject: the signature no longer matches.
    let i = 20;
    der[i] ^= 0x01;
    e.write("bad.der", &der);
    let r = e.mtls(&["sign", "--csr", &e.p("bad.der"), "--profile", "client"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("signature does not verify") || r.stderr.contains("malformed"),
        "{}",
        r.stderr
    );
    // A flipped bit inside the signature value itself.
    let mut der = e.read("c.der");
    let n = der.len();
    der[n - 5] ^= 0x40;
    e.write("bad2.der", &der);
    e.mtls(&["sign", "--csr", &e.p("bad2.der"), "--profile", "client"])
        .fails(1, "signature does not verify");
    assert_eq!(e.inventory_count(), 0);
}

#[test]
fn csr_signed_with_sha1_is_refused_and_pss_accepted() {
    // The CSR's self-signature is checked with the algorithms chains are validated with:
    // SHA-1 (which x509-parser's own check accepts) is refused, RSA-PSS is taken.
    let e = initialised();
    e.openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "old.key",
        "-out",
        "old.csr",
        "-subj",
        "/CN=old-client",
        "-sha1",
    ])
    .ok();
    let before = e.tree();
    e.mtls(&["sign", "--csr", &e.p("old.csr"), "--profile", "client"])
        .fails(1, "sha1WithRSAEncryption is not accepted");
    assert_eq!(e.tree(), before);
    assert_eq!(e.inventory_count(), 0);
    // A weak key is named as such, not reported as a signature that does not verify.
    e.openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:1024",
        "-nodes",
        "-keyout",
        "weak.key",
        "-out",
        "weak.csr",
        "-subj",
        "/CN=weak-client",
        "-sha256",
    ])
    .ok();
    let r = e.mtls(&["sign", "--csr", &e.p("weak.csr"), "--profile", "client"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("RSA-1024 is too small"), "{}", r.stderr);
    assert!(!r.stderr.contains("signature"), "{}", r.stderr);

    e.openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "pss.key",
        "-out",
        "pss.csr",
        "-subj",
        "/CN=pss-client",
        "-sha256",
        "-sigopt",
        "rsa_padding_mode:pss",
        "-sigopt",
        "rsa_pss_saltlen:32",
    ])
    .ok();
    e.mtls(&[
        "sign",
        "--csr",
        &e.p("pss.csr"),
        "--profile",
        "client",
        "--out",
        &e.p("out"),
    ])
    .ok();
    assert_eq!(e.inventory_count(), 1);
}

#[test]
fn csr_with_an_unreadable_san_is_refused() {
    // A SAN extension whose DER is cut short (a 5-byte name in 4 bytes): signing it without
    // its SANs (a server profile would put the CN in instead) would be failing open.
    let e = initialised();
    e.write(
        "bad-san.cnf",
        b"[req]\ndistinguished_name=dn\nreq_extensions=ext\nprompt=no\n[dn]\nCN=api.example.com\n\
          [ext]\nsubjectAltName=DER:3006820561626364\n",
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
        "bad-san.key",
        "-out",
        "bad-san.csr",
        "-config",
        &e.p("bad-san.cnf"),
    ])
    .ok();
    let before = e.tree();
    e.mtls(&["sign", "--csr", &e.p("bad-san.csr"), "--profile", "server"])
        .fails(1, "do not parse");
    assert_eq!(e.tree(), before);
    assert_eq!(e.inventory_count(), 0);
}

#[test]
fn token_names_no_certificate_can_carry_are_refused() {
    // A token for a name too long for a CN, or with a control character, could never enroll
    // (and the name would reach the audit log as it is).
    let e = initialised();
    let long = "a".repeat(65);
    e.mtls(&["ca", "token", "--name", &long])
        .fails(2, "1 to 64 characters");
    e.mtls(&["ca", "token", "--name", "bad\u{1b}[2Jname"])
        .fails(2, "control characters");
    e.mtls(&["ca", "token", "--name", "good-name"]).ok();
}

/// A closed standard output is no error for listings (`mtls list | head`), but a token that
/// could not be written was minted and never delivered: exit 1, saying so.
#[test]
fn a_token_that_cannot_be_delivered_is_an_error() {
    let e = initialised();
    e.mtls_stdout_closed(&["ca", "token", "--name", "lost"])
        .fails(1, "not delivered");
    e.mtls_stdout_closed(&["list"]).ok();
}

#[test]
fn a_new_intermediate_that_cannot_be_written_whole_changes_nothing() {
    // Key, certificate and chain are all written before any is put in place: with the chain's
    // path unusable, the working intermediate key and certificate stay as they were.
    let e = initialised();
    let pki = e.pki();
    let (key, cert) = (pki.join("intermediate.key"), pki.join("intermediate.crt"));
    let (old_key, old_cert) = (std::fs::read(&key).unwrap(), std::fs::read(&cert).unwrap());
    std::fs::remove_file(pki.join("ca-chain.pem")).unwrap();
    std::fs::create_dir_all(pki.join("ca-chain.pem/x")).unwrap();
    let before = e.tree();
    e.mtls(&[
        "ca",
        "intermediate",
        "--root-cert",
        pki.join("root.crt").to_str().unwrap(),
        "--root-key",
        pki.join("root.key").to_str().unwrap(),
        "--force",
    ])
    .fails(2, "is a directory");
    assert_eq!(std::fs::read(&key).unwrap(), old_key);
    assert_eq!(std::fs::read(&cert).unwrap(), old_cert);
    assert_eq!(e.tree(), before, "no file added or left behind");
}

#[test]
fn terminal_escapes_in_certificates_are_printed_escaped() {
    let e = initialised();
    e.openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "esc.key",
        "-out",
        "esc.crt",
        "-days",
        "1",
        "-subj",
        "/CN=ok\u{1b}]0;owned\u{7}\u{1b}[2Jx",
    ])
    .ok();
    let r = e.mtls(&["inspect", &e.p("esc.crt")]).ok();
    assert!(
        !r.stdout.contains('\u{1b}') && !r.stdout.contains('\u{7}'),
        "{:?}",
        r.stdout
    );
    assert!(r.stdout.contains("ok\\u{1b}]0;owned"), "{}", r.stdout);
}

#[test]
fn an_intermediate_cannot_sign_another_ca() {
    // Its pathLenConstraint is 0: a CA under it would never validate.
    let e = initialised();
    let pki = e.pki();
    let key = std::fs::read(pki.join("intermediate.key")).unwrap();
    let before = e.tree();
    e.mtls(&[
        "ca",
        "intermediate",
        "--root-cert",
        pki.join("intermediate.crt").to_str().unwrap(),
        "--root-key",
        pki.join("intermediate.key").to_str().unwrap(),
        "--force",
    ])
    .fails(1, "pathLenConstraint 0");
    assert_eq!(e.tree(), before);
    assert_eq!(std::fs::read(pki.join("intermediate.key")).unwrap(), key);
}

/// `pki/root.crt` is what clients are given as trust anchor: an intermediate made under
/// another root (rotated offline) must not leave the old one there, or every chain fails to
/// verify. Refused without --force (nothing written), replaced with it.
#[test]
fn an_intermediate_under_another_root_does_not_keep_the_old_root_crt() {
    let e = initialised();
    let pki = e.pki();
    e.openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "other-root.key",
        "-out",
        "other-root.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=Other Root",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ])
    .ok();
    std::fs::set_permissions(
        e.path("other-root.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let args = [
        "ca",
        "intermediate",
        "--root-cert",
        &e.p("other-root.crt"),
        "--root-key",
        &e.p("other-root.key"),
        "--force",
    ];
    // Rotating the intermediate under the new root (--force for the intermediate's files).
    let old_root = std::fs::read(pki.join("root.crt")).unwrap();
    e.mtls(&args).ok();
    assert!(
        std::fs::read(pki.join("root.crt")).unwrap()
            == std::fs::read(e.path("other-root.crt")).unwrap(),
        "root.crt still holds the old root"
    );
    e.openssl(&[
        "verify",
        "-CAfile",
        pki.join("root.crt").to_str().unwrap(),
        pki.join("intermediate.crt").to_str().unwrap(),
    ])
    .ok();
    // A directory holding only another root's root.crt: refused without --force, nothing
    // written.
    for f in [
        "intermediate.crt",
        "intermediate.key",
        "ca-chain.pem",
        "inventory.db",
        "root.key",
    ] {
        std::fs::remove_file(pki.join(f)).unwrap();
    }
    std::fs::write(pki.join("root.crt"), &old_root).unwrap();
    let before = e.tree();
    e.mtls(&args[..6])
        .fails(2, "is not the certificate of --root-cert");
    assert_eq!(e.tree(), before);
    // The same root: root.crt is kept as it is, no --force needed for it.
    std::fs::copy(e.path("other-root.crt"), pki.join("root.crt")).unwrap();
    e.mtls(&args[..6]).ok();
}

#[test]
fn csr_asking_for_ca_is_refused() {
    let e = initialised();
    e.openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.csr",
        "-subj",
        "/CN=evil-sub-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
    ])
    .ok();
    let before = e.tree();
    e.mtls(&["sign", "--csr", &e.p("ca.csr"), "--profile", "client"])
        .fails(1, "asks for a CA certificate");
    assert_eq!(e.tree(), before);
    assert_eq!(e.inventory_count(), 0);
}

#[test]
fn expired_issuing_ca_is_refused() {
    let e = Env::new();
    let long_ago = OffsetDateTime::now_utc() - Duration::days(400);
    let root = new_root(
        &Subject::cn("Old Root"),
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        long_ago,
        Duration::days(3650),
    )
    .unwrap();
    let inter = new_intermediate(
        &root,
        &Subject::cn("Expired Intermediate"),
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        long_ago,
        Duration::days(30),
        0,
    )
    .unwrap();
    std::fs::create_dir_all(e.pki()).unwrap();
    e.write("pki/root.crt", root.pem().as_bytes());
    e.write("pki/intermediate.crt", inter.pem().as_bytes());
    e.write("pki/intermediate.key", inter.key().to_pem().as_bytes());
    std::fs::set_permissions(
        e.path("pki/intermediate.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    e.mtls(&["list"]).ok(); // creates the inventory
    let before = e.tree();
    e.mtls(&["issue", "client", "c"])
        .fails(1, "is not valid at");
    e.mtls(&["crl"]).fails(1, "is not valid at");
    assert_eq!(e.tree(), before);
    assert_eq!(e.inventory_count(), 0);
}

#[test]
fn unknown_serial_cannot_be_revoked() {
    let e = initialised();
    e.mtls(&["revoke", "0123456789abcdef"])
        .fails(1, "no certificate with serial 0123456789abcdef");
    e.mtls(&["revoke", "not-hex"]).fails(2, "expected hex");
    e.mtls(&["issue", "client", "c"]).ok();
    e.mtls(&[
        "revoke",
        "--cert",
        &e.p("pki/issued/c.crt"),
        "--reason",
        "superseded",
    ])
    .ok();
    e.mtls(&["revoke", "--cert", &e.p("pki/issued/c.crt")])
        .fails(1, "already revoked");
    e.mtls(&[
        "revoke",
        "--cert",
        &e.p("pki/issued/c.crt"),
        "--reason",
        "bogus",
    ])
    .fails(2, "revocation reason");
}

/// `mtls revoke --cert FILE` revokes the certificate in the file, not whatever this CA issued
/// under its serial: a certificate made to carry another's serial (OpenSSL `-set_serial`) is
/// refused with nothing revoked.
#[test]
fn revoking_by_file_needs_the_certificate_itself() {
    let e = initialised();
    e.mtls(&["issue", "client", "alice"]).ok();
    let serial = e
        .openssl(&[
            "x509",
            "-in",
            &e.p("pki/issued/alice.crt"),
            "-noout",
            "-serial",
        ])
        .stdout;
    let serial = serial.trim().trim_start_matches("serial=").to_string();
    let forged = e.p("forged.pem");
    let key = e.p("forged.key");
    e.openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-subj",
        "/CN=stolen-laptop",
        "-set_serial",
        &format!("0x{serial}"),
        "-days",
        "1",
        "-out",
        &forged,
    ])
    .ok();
    let before = e.tree();
    e.mtls(&["revoke", "--cert", &forged, "--reason", "keyCompromise"])
        .fails(2, "is not the certificate this CA issued");
    assert_eq!(e.tree(), before);
    let listed = e.mtls(&["list"]).ok().stdout;
    assert!(listed.contains("valid"), "{listed}");
    e.mtls(&["revoke", "--cert", &e.p("pki/issued/alice.crt")])
        .ok();
}

#[test]
fn existing_outputs_are_not_overwritten_without_force() {
    let e = initialised();
    let root_before = e.read("pki/root.crt");
    e.mtls(&["ca", "init"]).fails(2, "already exists");
    assert_eq!(e.read("pki/root.crt"), root_before);
    e.mtls(&["issue", "client", "c"]).ok();
    let key_before = e.read("pki/issued/c.key");
    let before = e.tree();
    e.mtls(&["issue", "client", "c"]).fails(2, "--force");
    assert_eq!(e.read("pki/issued/c.key"), key_before);
    assert_eq!(e.tree(), before);
    assert_eq!(e.inventory_count(), 1, "a refused issuance is not recorded");
    e.mtls(&["issue", "client", "c", "--force"]).ok();
    assert_ne!(e.read("pki/issued/c.key"), key_before);
    assert_eq!(e.inventory_count(), 2);
    e.mtls(&[
        "csr",
        "--cn",
        "x",
        "--key-out",
        &e.p("pki/issued/c.key"),
        "--csr-out",
        &e.p("x.csr"),
    ])
    .fails(2, "already exists");
}

#[test]
fn invalid_names_and_options_are_usage_errors() {
    let e = initialised();
    e.mtls(&["issue", "server", "bad name.example.com"])
        .fails(2, "invalid name");
    e.mtls(&["issue", "server", "--", "-leading.example.com"])
        .fails(2, "hyphen");
    e.mtls(&["issue", "client", "c", "--uri", "not a uri"])
        .fails(2, "invalid name");
    e.mtls(&["issue", "client", "c", "--key-type", "dsa"])
        .fails(2, "unsupported key");
    e.mtls(&["issue", "client", "c", "--days", "0"])
        .fails(2, "positive");
    e.mtls(&[
        "verify",
        "--ca",
        &e.p("pki/root.crt"),
        "--purpose",
        "mail",
        &e.p("pki/root.crt"),
    ])
    .fails(2, "purpose");
    e.mtls(&[
        "verify",
        "--ca",
        &e.p("pki/root.crt"),
        "--at",
        "yesterday",
        &e.p("pki/root.crt"),
    ])
    .fails(2, "invalid time");
    e.mtls(&["list", "--expiring", "soon"])
        .fails(2, "invalid duration");
    let other = Env::new();
    other
        .mtls(&["issue", "client", "c"])
        .fails(2, "mtls ca init");
}

#[test]
fn list_filters_and_verify_time_travel() {
    let e = initialised();
    e.mtls(&["issue", "client", "short", "--days", "10"]).ok();
    e.mtls(&["issue", "client", "long", "--days", "60"]).ok();
    let r = e.mtls(&["list", "--expiring", "30d", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["subject"], "CN=short");
    e.mtls(&["revoke", "--cert", &e.p("pki/issued/long.crt")])
        .ok();
    let r = e.mtls(&["list", "--revoked", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["status"], "revoked");
    let chain = e.p("pki/issued/short.chain.pem");
    let root = e.p("pki/root.crt");
    e.mtls(&["verify", "--ca", &root, "--purpose", "client", &chain])
        .ok();
    let future = (OffsetDateTime::now_utc() + Duration::days(20))
        .unix_timestamp()
        .to_string();
    let r = e.mtls(&[
        "verify",
        "--ca",
        &root,
        "--purpose",
        "client",
        "--json",
        "--at",
        &format!("@{future}"),
        &chain,
    ]);
    assert_eq!(r.code, 1);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["code"], "expired");
    // A client certificate is not a server certificate.
    e.mtls(&["verify", "--ca", &root, "--purpose", "server", &chain])
        .fails(1, "wrong_purpose");
    // CRL numbers only increase.
    e.mtls(&["crl"]).ok();
    e.mtls(&["crl"]).ok();
    let r = e.mtls(&["inspect", "--json", &e.p("pki/crl.pem")]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["crl_number"], "2");
    assert_eq!(v[0]["revoked"].as_array().unwrap().len(), 1);
}

/// A self-signed CA made by OpenSSL with `subj` (P-256, CA:TRUE and keyCertSign critical), as
/// `name.crt` and an owner-only `name.key`.
fn openssl_root(e: &Env, name: &str, subj: &str) {
    e.openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &e.p(&format!("{name}.key")),
        "-out",
        &e.p(&format!("{name}.crt")),
        "-days",
        "30",
        "-subj",
        subj,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ])
    .ok();
    std::fs::set_permissions(
        e.path(&format!("{name}.key")),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

#[test]
fn ca_whose_subject_cannot_be_reproduced_as_issuer_is_refused() {
    let e = Env::new();
    // Repeated attribute types, common in enterprise roots: rcgen keeps one value per type, so
    // what it signs would name another issuer and never verify.
    openssl_root(&e, "corp", "/DC=com/DC=example/OU=PKI/OU=Ops/CN=Corp Root");
    let before = e.tree();
    let r = e
        .mtls(&[
            "ca",
            "intermediate",
            "--root-cert",
            &e.p("corp.crt"),
            "--root-key",
            &e.p("corp.key"),
        ])
        .fails(1, "would not be reproduced exactly as the issuer name");
    assert!(
        r.stderr.contains("Corp Root") && r.stderr.contains("repeats an attribute type"),
        "{}",
        r.stderr
    );
    assert_eq!(e.tree(), before, "nothing may be written");

    // Each attribute type once: accepted, and OpenSSL verifies what it signs.
    openssl_root(&e, "plain", "/C=DE/O=Example/OU=PKI/CN=Plain Root");
    e.mtls(&[
        "ca",
        "intermediate",
        "--root-cert",
        &e.p("plain.crt"),
        "--root-key",
        &e.p("plain.key"),
    ])
    .ok();
    e.openssl(&[
        "verify",
        "-CAfile",
        &e.p("plain.crt"),
        &e.p("pki/intermediate.crt"),
    ])
    .ok();
    e.mtls(&["issue", "client", "c"]).ok();
    e.openssl(&[
        "verify",
        "-CAfile",
        &e.p("plain.crt"),
        "-untrusted",
        &e.p("pki/intermediate.crt"),
        &e.p("pki/issued/c.crt"),
    ])
    .ok();
}

#[test]
fn keys_encrypted_with_unsupported_algorithms_say_so() {
    let e = initialised();
    e.write_secret("pw", b"the right passphrase\n");
    e.write_secret("wrong", b"the wrong passphrase\n");
    let plain = e.read("pki/intermediate.key");
    e.write_secret("plain.key", &plain);
    let pass = format!("file:{}", e.p("pw"));
    let encrypt = |how: &[&str]| {
        let mut args = vec![
            "pkcs8",
            "-topk8",
            "-in",
            "plain.key",
            "-passout",
            &pass,
            "-out",
            "pki/intermediate.key",
        ];
        args.extend_from_slice(how);
        e.openssl(&args).ok();
        std::fs::set_permissions(
            e.path("pki/intermediate.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    };
    for (how, named) in [
        // OpenSSL 1.0's and BouncyCastle's default PRF.
        (
            &["-v2", "aes-256-cbc", "-v2prf", "hmacWithSHA1"][..],
            "hmacWithSHA1",
        ),
        (&["-v2", "des3"][..], "3DES"),
        (&["-v1", "PBE-SHA1-3DES"][..], "PKCS#12"),
    ] {
        encrypt(how);
        let before = e.tree();
        let r = e
            .mtls(&["issue", "client", "c", "--ca-passphrase-file", &e.p("pw")])
            .fails(1, "unsupported key");
        assert!(
            r.stderr.contains(named)
                && r.stderr
                    .contains("openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256")
                && !r.stderr.contains("wrong passphrase"),
            "{how:?}: {}",
            r.stderr
        );
        assert_eq!(e.tree(), before, "nothing may be written");
    }
    // The same as raw DER (no PEM label to say it is encrypted).
    encrypt(&["-v2", "des3", "-outform", "DER"]);
    let r = e
        .mtls(&["issue", "client", "c", "--ca-passphrase-file", &e.p("pw")])
        .fails(1, "unsupported key");
    assert!(r.stderr.contains("3DES"), "{}", r.stderr);
    // The re-encryption the message gives works, and a wrong passphrase is still said so.
    encrypt(&["-v2", "aes-256-cbc", "-v2prf", "hmacWithSHA256"]);
    e.mtls(&[
        "issue",
        "client",
        "c",
        "--ca-passphrase-file",
        &e.p("wrong"),
    ])
    .fails(2, "wrong passphrase");
    e.mtls(&["issue", "client", "c", "--ca-passphrase-file", &e.p("pw")])
        .ok();
    assert_eq!(e.inventory_count(), 1);
}

#[test]
fn huge_day_counts_are_refused_without_a_panic() {
    let e = initialised();
    let before = e.tree();
    e.mtls(&["issue", "client", "x", "--days", "3000000"])
        .fails(2, "--days 3000000 is too large");
    e.mtls(&["issue", "client", "x", "--days", &i64::MAX.to_string()])
        .fails(2, "is too large");
    e.mtls(&["crl", "--days", "3000000"])
        .fails(2, "--days 3000000 is too large");
    e.mtls(&[
        "ca",
        "intermediate",
        "--root-cert",
        &e.p("pki/root.crt"),
        "--root-key",
        &e.p("pki/root.key"),
        "--force",
        "--days",
        "3000000",
    ])
    .fails(2, "--days 3000000 is too large");
    assert_eq!(e.tree(), before, "nothing may be written");
    assert_eq!(e.inventory_count(), 0);
    // No CRL number was taken by the refused CRL.
    let r = e.mtls(&["crl"]).ok();
    assert!(r.stdout.contains("CRL #1 "), "{}", r.stdout);

    let other = Env::new();
    other
        .mtls(&["ca", "init", "--root-days", "3000000"])
        .fails(2, "--root-days 3000000 is too large");
    other
        .mtls(&["ca", "init", "--intermediate-days", "3000000"])
        .fails(2, "--intermediate-days 3000000 is too large");
    assert!(!other.pki().exists(), "nothing may be written");
}

/// `mtls crl --out` replaces a CRL and nothing else: naming a key (a slip of tab completion)
/// is refused with the key untouched and no CRL number taken; a CRL is replaced as before.
#[test]
fn crl_out_refuses_to_replace_what_is_not_a_crl() {
    let e = initialised();
    e.mtls(&["issue", "client", "c"]).ok();
    let key = e.read("pki/issued/c.key");
    e.mtls(&["crl", "--out", &e.p("pki/issued/c.key")])
        .fails(2, "is not a CRL");
    assert_eq!(e.read("pki/issued/c.key"), key);
    e.mtls(&["crl"]).ok();
    let r = e.mtls(&["crl"]).ok();
    assert!(r.stdout.contains("Wrote CRL #2"), "{}", r.stdout);
}

/// Two `mtls issue` runs for one name at once: one issues, the other is refused because the
/// files exist, having recorded nothing (they take turns from the check to the write; before,
/// both passed the check and the loser left a valid certificate in the inventory that no
/// one held).
#[test]
fn concurrent_issues_of_one_name_record_one_certificate() {
    let e = initialised();
    for round in 0..5 {
        let name = format!("racer{round}");
        let runs: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|_| s.spawn(|| e.mtls(&["issue", "client", &name])))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok = runs.iter().filter(|r| r.code == 0).count();
        let outputs: Vec<&str> = runs.iter().map(|r| r.stderr.as_str()).collect();
        assert_eq!(ok, 1, "{outputs:?}");
        let refused = runs.iter().find(|r| r.code != 0).unwrap();
        assert_eq!(refused.code, 2, "{}", refused.stderr);
        assert!(
            refused.stderr.contains("already exists"),
            "{}",
            refused.stderr
        );
    }
    assert_eq!(e.inventory_count(), 5);
}

#[test]
fn renewing_missing_files_is_an_input_error() {
    let e = initialised();
    // No CA needs to answer: the files are read first.
    e.mtls(&[
        "renew",
        "--cert",
        &e.p("gone.crt"),
        "--key",
        &e.p("gone.key"),
        "--ca-url",
        "https://127.0.0.1:9",
    ])
    .fails(2, "gone.crt");
    // Each of several certificates failing on its files: still the user's input (exit 2),
    // every one named.
    e.mtls(&[
        "renew",
        "--cert",
        &e.p("a.crt"),
        "--key",
        &e.p("a.key"),
        "--cert",
        &e.p("b.crt"),
        "--key",
        &e.p("b.key"),
        "--ca-url",
        "https://127.0.0.1:9",
    ])
    .fails(2, "b.crt");
}

#[test]
fn a_key_revoked_as_compromised_is_not_certified_again() {
    let e = initialised();
    e.mtls(&[
        "csr",
        "--cn",
        "svc",
        "--key-out",
        &e.p("svc.key"),
        "--csr-out",
        &e.p("svc.csr"),
    ])
    .ok();
    e.mtls(&["sign", "--csr", &e.p("svc.csr"), "--profile", "client"])
        .ok();
    e.mtls(&[
        "revoke",
        "--cert",
        &e.p("pki/issued/svc.crt"),
        "--reason",
        "keyCompromise",
    ])
    .ok();
    // The same CSR (the same key), even under another name: refused, nothing recorded or
    // written.
    let before = e.tree();
    let count = e.inventory_count();
    e.mtls(&[
        "sign",
        "--csr",
        &e.p("svc.csr"),
        "--profile",
        "client",
        "--force",
    ])
    .fails(1, "revoked as compromised");
    assert_eq!(e.inventory_count(), count);
    assert_eq!(e.tree(), before);
    // The same key re-encoded (a compressed EC point, as `openssl ec -conv_form compressed`
    // writes it): refused too, rather than certified as a key nobody revoked.
    e.openssl(&[
        "ec",
        "-in",
        &e.p("svc.key"),
        "-conv_form",
        "compressed",
        "-out",
        &e.p("svc-compressed.key"),
    ])
    .ok();
    e.openssl(&[
        "req",
        "-new",
        "-key",
        &e.p("svc-compressed.key"),
        "-subj",
        "/CN=svc-again",
        "-out",
        &e.p("svc-compressed.csr"),
    ])
    .ok();
    let r = e.mtls(&[
        "sign",
        "--csr",
        &e.p("svc-compressed.csr"),
        "--profile",
        "client",
    ]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stderr.contains("uncompressed"), "{}", r.stderr);
    assert_eq!(e.inventory_count(), count);
    // A new key for the same name is fine.
    e.mtls(&[
        "csr",
        "--cn",
        "svc",
        "--key-out",
        &e.p("svc2.key"),
        "--csr-out",
        &e.p("svc2.csr"),
    ])
    .ok();
    e.mtls(&[
        "sign",
        "--csr",
        &e.p("svc2.csr"),
        "--profile",
        "client",
        "--force",
    ])
    .ok();
}

#[test]
fn an_address_as_server_name_must_be_the_url_s() {
    let e = initialised();
    e.mtls(&["issue", "client", "c"]).ok();
    // Nothing is contacted: refused before any connection (which would go to 10.0.0.5).
    e.mtls(&[
        "request",
        "https://127.0.0.1:9/",
        "--server-name",
        "10.0.0.5",
        "--cert",
        &e.p("pki/issued/c.crt"),
        "--key",
        &e.p("pki/issued/c.key"),
        "--ca",
        &e.p("pki/root.crt"),
    ])
    .fails(2, "put it in the URL");
}
