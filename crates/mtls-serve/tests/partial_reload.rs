//! One served certificate of several that can no longer be loaded (its key made readable by
//! others, an expired replacement) does not hold back the new CRL: the reload takes the new CA
//! bundle and CRLs, keeps the previous credential for that file, and reports it as failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;

use mtls_pki::revocation::{build_crl, RevokedEntry};
use mtls_serve::tls::{CertificateFiles, ClientAuth, ReloadingServer, ServerFiles};
use mtls_test_util::TestPki;
use mtls_verify::Rejection;
use support::{server_files, write};
use time::{Duration, OffsetDateTime};

#[test]
fn a_refused_certificate_does_not_hold_back_a_new_crl() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("serve-partial");
    let now = OffsetDateTime::now_utc();
    let client = pki.client("leaving-client");
    let crl_pem = |number: u64, revoked: &[RevokedEntry]| {
        let der = build_crl(&pki.intermediate, number, now, Duration::days(1), revoked).unwrap();
        mtls_pki::pem_io::encode("X509 CRL", &der)
    };
    let crl = write(dir.path(), "crl.pem", crl_pem(1, &[]).as_bytes());
    let files = server_files(
        dir.path(),
        &pki,
        &["localhost", "other.example"],
        vec![crl.clone()],
    );
    let second_key = files.certificates[1].key.clone();
    let tls = ReloadingServer::new(files).unwrap();
    let chain = [client.cert.der.clone(), pki.intermediate_der()];
    let status = |tls: &ReloadingServer| {
        tls.current()
            .trust
            .identify(Some(&chain), OffsetDateTime::now_utc())
            .map(|_| ())
    };
    assert_eq!(status(&tls), Ok(()));
    let served = |tls: &ReloadingServer| {
        let state = tls.current();
        state
            .credentials
            .iter()
            .flat_map(|c| c.names.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(served(&tls), ["localhost", "other.example"]);

    // The second key becomes readable by others (refused) as the client is revoked.
    std::fs::set_permissions(&second_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let listed = [RevokedEntry {
        serial: client.cert.serial.clone(),
        revoked_at: now,
        reason: None,
    }];
    std::fs::write(&crl, crl_pem(2, &listed)).unwrap();
    let partial = |tls: &ReloadingServer| match tls.reload_now() {
        Err(mtls_serve::Error::CredentialsKept { kept }) => {
            assert_eq!(kept.len(), 1, "{kept:?}");
            assert!(kept[0].contains("s1.pem"), "{kept:?}");
        }
        other => panic!("expected a partial reload, got {other:?}"),
    };
    partial(&tls);
    assert_eq!(tls.current().generation, 2, "the new generation serves");
    assert_eq!(
        status(&tls),
        Err(Rejection::Revoked),
        "the new CRL is in use"
    );
    assert_eq!(
        served(&tls),
        ["localhost", "other.example"],
        "both names still served"
    );
    // Retried with nothing new: reported again, but not swapped in (that would only empty
    // the caches and re-check every connection at each retry).
    partial(&tls);
    assert_eq!(tls.current().generation, 2);

    // Fixed: a normal reload, nothing kept.
    std::fs::set_permissions(&second_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(tls.reload_now().unwrap(), 4);
    assert!(tls.current().kept.is_empty());
    assert_eq!(status(&tls), Err(Rejection::Revoked));
}

/// At start there is nothing to keep: a refused certificate fails the load.
#[test]
fn a_refused_certificate_fails_the_first_load() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("serve-partial-start");
    let server = pki.server(&["localhost"]);
    let enc = |der: &[u8]| mtls_pki::pem_io::encode("CERTIFICATE", der);
    let cert = write(dir.path(), "s.pem", enc(&server.cert.der).as_bytes());
    let key = write(dir.path(), "s.key", server.key.to_pem().as_bytes());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ca = write(dir.path(), "ca.pem", enc(&pki.root_der()).as_bytes());
    let loaded = ReloadingServer::new(ServerFiles {
        certificates: vec![CertificateFiles {
            cert,
            key,
            key_passphrase_file: None,
        }],
        client_ca: vec![ca],
        crl: vec![],
        client_auth: ClientAuth::Required,
        revocation: Default::default(),
        alpn: vec![],
        resumption: Default::default(),
    });
    assert!(loaded.is_err());
}
