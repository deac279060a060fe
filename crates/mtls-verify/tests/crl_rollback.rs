//! A trust state refuses to follow one whose CRL is newer (a replayed, correctly signed old
//! CRL would un-revoke certificates): an older CRL number, or the same number with an older
//! thisUpdate, is refused with `CrlRollback`; the same CRL read again, a newer number and a
//! CRL of another series (another issuer) are accepted. Fetched CRLs use the same ordering.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mtls_pki::revocation::{build_crl, RevokedEntry};
use mtls_test_util::TestPki;
use mtls_verify::{CrlVersion, FetchedCrls, RevocationOptions, TrustError, TrustState};
use rustls_pki_types::CertificateRevocationListDer;
use time::{Duration, OffsetDateTime};

fn state(pki: &TestPki, crls: &[CertificateRevocationListDer<'static>]) -> TrustState {
    TrustState::new(
        0,
        vec![pki.root_der(), pki.intermediate_der()],
        crls,
        RevocationOptions::default(),
    )
    .unwrap()
}

fn crl(
    pki: &TestPki,
    number: u64,
    this_update: OffsetDateTime,
    revoked: &[RevokedEntry],
) -> CertificateRevocationListDer<'static> {
    build_crl(
        &pki.intermediate,
        number,
        this_update,
        Duration::days(1),
        revoked,
    )
    .unwrap()
}

#[test]
fn an_older_crl_number_is_refused_after_a_newer_one() {
    let pki = TestPki::new("rollback");
    let now = OffsetDateTime::now_utc();
    let client = pki.client("c");
    let revoked = [RevokedEntry {
        serial: client.cert.serial.clone(),
        revoked_at: now,
        reason: None,
    }];
    // Number 1 does not list the client; number 2 revokes it. The replay of number 1 is
    // issued later than number 2 (a CA clock is no witness): the number decides.
    let current = state(&pki, &[crl(&pki, 2, now - Duration::hours(1), &revoked)]);
    let replay = state(&pki, &[crl(&pki, 1, now, &[])]);
    match replay.check_not_older_than(&current) {
        Err(TrustError::CrlRollback {
            in_use, offered, ..
        }) => {
            assert_eq!(in_use.number(), [2]);
            assert_eq!(offered.number(), [1]);
        }
        other => panic!("expected a rollback refusal, got {other:?}"),
    }
    let e = replay.check_not_older_than(&current).unwrap_err();
    assert!(e.to_string().contains("older than the one in use"), "{e}");
}

#[test]
fn the_same_number_with_an_older_this_update_is_refused() {
    let pki = TestPki::new("rollback-time");
    let now = OffsetDateTime::now_utc();
    let current = state(&pki, &[crl(&pki, 5, now - Duration::minutes(10), &[])]);
    let older = state(&pki, &[crl(&pki, 5, now - Duration::hours(2), &[])]);
    assert!(matches!(
        older.check_not_older_than(&current),
        Err(TrustError::CrlRollback { .. })
    ));
}

#[test]
fn the_same_crl_again_a_newer_one_or_another_issuers_is_accepted() {
    let pki = TestPki::new("forward");
    let now = OffsetDateTime::now_utc();
    let first = crl(&pki, 3, now - Duration::hours(1), &[]);
    let current = state(&pki, std::slice::from_ref(&first));
    // The same file read again.
    state(&pki, std::slice::from_ref(&first))
        .check_not_older_than(&current)
        .unwrap();
    // A newer number (even one with an earlier thisUpdate).
    state(&pki, &[crl(&pki, 4, now - Duration::hours(3), &[])])
        .check_not_older_than(&current)
        .unwrap();
    // The same number issued later.
    state(&pki, &[crl(&pki, 3, now, &[])])
        .check_not_older_than(&current)
        .unwrap();
    // No CRL of this issuer at all is not a rollback (certificates then have no status).
    state(&pki, &[]).check_not_older_than(&current).unwrap();
    // Another CA's CRL numbering is its own.
    let other = TestPki::new("other");
    let other_state = TrustState::new(
        0,
        vec![other.root_der(), other.intermediate_der()],
        &[crl(&other, 1, now, &[])],
        RevocationOptions::default(),
    )
    .unwrap();
    other_state.check_not_older_than(&current).unwrap();
}

#[test]
fn a_fetched_crl_older_than_the_installed_one_is_refused() {
    let pki = TestPki::new("fetched");
    let now = OffsetDateTime::now_utc();
    let set = FetchedCrls::new(4);
    let url = "http://127.0.0.1:9/crl";
    let version = |n: u8, at| CrlVersion::new(&[n], at);
    let refresh = now + Duration::hours(1);
    assert!(set
        .install(url, crl(&pki, 2, now, &[]), version(2, now), refresh)
        .unwrap());
    let e = set
        .install(url, crl(&pki, 1, now, &[]), version(1, now), refresh)
        .unwrap_err();
    assert!(e.contains("older than the installed CRL"), "{e}");
    assert!(set
        .install(url, crl(&pki, 3, now, &[]), version(3, now), refresh)
        .unwrap());
}
