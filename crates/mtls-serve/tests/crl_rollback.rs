//! A CRL file replaced by an older CRL of the same CA (a replay un-revoking a client) is
//! refused on reload: the reload fails with the reason, the current generation stays and the
//! client stays revoked. The same file read again and a newer CRL reload normally.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use mtls_pki::revocation::{build_crl, RevokedEntry};
use mtls_serve::reload::Reload;
use mtls_serve::tls::ReloadingServer;
use mtls_test_util::TestPki;
use mtls_verify::Rejection;
use support::{server_files, write};
use time::{Duration, OffsetDateTime};

#[test]
fn reload_refuses_an_older_crl_and_keeps_the_current_state() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("serve-rollback");
    let now = OffsetDateTime::now_utc();
    let client = pki.client("revoked-client");
    let listed = [RevokedEntry {
        serial: client.cert.serial.clone(),
        revoked_at: now,
        reason: None,
    }];
    let crl_pem = |number: u64, revoked: &[RevokedEntry]| {
        let der = build_crl(&pki.intermediate, number, now, Duration::days(1), revoked).unwrap();
        mtls_pki::pem_io::encode("X509 CRL", &der)
    };
    let crl = write(dir.path(), "crl.pem", crl_pem(2, &listed).as_bytes());
    let mut tls = ReloadingServer::new(server_files(
        dir.path(),
        &pki,
        &["localhost"],
        vec![crl.clone()],
    ))
    .unwrap();
    let chain = [client.cert.der.clone(), pki.intermediate_der()];
    let status = |tls: &ReloadingServer| {
        tls.current()
            .trust
            .identify(Some(&chain), OffsetDateTime::now_utc())
            .map(|_| ())
    };
    assert_eq!(status(&tls), Err(Rejection::Revoked));

    // The same CRL read again: a normal reload.
    assert_eq!(tls.reload_now().unwrap(), 2);

    // The replay: CRL number 1, which does not list the client yet.
    std::fs::write(&crl, crl_pem(1, &[])).unwrap();
    let e = tls.reload().unwrap_err();
    assert!(e.contains("older than the one in use"), "{e}");
    assert_eq!(tls.current().generation, 2, "the current state stays");
    assert_eq!(status(&tls), Err(Rejection::Revoked));

    // A newer CRL is taken.
    std::fs::write(&crl, crl_pem(3, &listed)).unwrap();
    tls.reload().unwrap();
    assert_eq!(tls.current().generation, 4);
    assert_eq!(status(&tls), Err(Rejection::Revoked));
}

/// A replay in two steps: the CRL file first swapped for another valid CRL of the bundle (the
/// root's), so the intermediate's series leaves the state, then an old CRL of the intermediate
/// put back. Each step compared only with the generation before would pass both; compared
/// with every series used so far, the second is refused.
#[test]
fn a_replay_in_two_steps_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("serve-rollback-2");
    let now = OffsetDateTime::now_utc();
    let client = pki.client("revoked-client");
    let listed = [RevokedEntry {
        serial: client.cert.serial.clone(),
        revoked_at: now,
        reason: None,
    }];
    let pem = |der: rustls_pki_types::CertificateRevocationListDer<'static>| {
        mtls_pki::pem_io::encode("X509 CRL", &der)
    };
    let intermediate_crl = |number: u64, revoked: &[RevokedEntry]| {
        pem(build_crl(&pki.intermediate, number, now, Duration::days(1), revoked).unwrap())
    };
    let crl = write(
        dir.path(),
        "crl.pem",
        intermediate_crl(5, &listed).as_bytes(),
    );
    let tls = ReloadingServer::new(server_files(
        dir.path(),
        &pki,
        &["localhost"],
        vec![crl.clone()],
    ))
    .unwrap();
    // Step one: the root's CRL instead (valid, signed by a bundle member).
    let root_crl = pem(build_crl(&pki.root, 1, now, Duration::days(1), &[]).unwrap());
    std::fs::write(&crl, root_crl).unwrap();
    assert_eq!(tls.reload_now().unwrap(), 2);
    // Step two: the intermediate's CRL number 4, from before the revocation.
    std::fs::write(&crl, intermediate_crl(4, &[])).unwrap();
    let e = tls.reload_now().unwrap_err().to_string();
    assert!(e.contains("older than the one in use"), "{e}");
    assert_eq!(tls.current().generation, 2);
    // A newer one of the series is taken.
    std::fs::write(&crl, intermediate_crl(6, &listed)).unwrap();
    tls.reload_now().unwrap();
    let chain = [client.cert.der.clone(), pki.intermediate_der()];
    assert_eq!(
        tls.current()
            .trust
            .identify(Some(&chain), OffsetDateTime::now_utc())
            .map(|_| ()),
        Err(Rejection::Revoked)
    );
}
