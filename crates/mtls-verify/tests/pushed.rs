//! Revocations pushed by the CA's feed, as a server's trust state consults them: one accept
//! test and one per refusal (revoked, stale under hard-fail, not covered), the soft-fail
//! loosening, the seed's own checks (a CRL signed by another key, an expired CRL), and that a
//! cached path does not hide a pushed revocation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use mtls_pki::revocation::build_crl;
use mtls_test_util::TestPki;
use mtls_verify::{
    issuer_key_of, PushedRevocations, PushedStatus, Rejection, RevocationOptions, SeedError,
    TrustState,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn ca(pki: &TestPki) -> Vec<CertificateDer<'static>> {
    vec![pki.intermediate_der(), pki.root_der()]
}

/// A set seeded from the intermediate's (empty) CRL, and a trust state that consults it.
fn seeded(pki: &TestPki, options: RevocationOptions) -> (Arc<PushedRevocations>, TrustState) {
    let set = Arc::new(PushedRevocations::new(std::time::Duration::from_secs(60)));
    let crl = build_crl(&pki.intermediate, 1, now(), Duration::days(1), &[]).unwrap();
    assert_eq!(set.seed_from_crl(ca(pki), &crl, now()).unwrap(), 0);
    let trust = TrustState::new(1, ca(pki), &[], options)
        .unwrap()
        .with_pushed_revocations(set.clone());
    (set, trust)
}

fn intermediate_key(pki: &TestPki) -> [u8; 32] {
    issuer_key_of(&pki.intermediate.key().public_key_spki())
}

fn check(
    trust: &TrustState,
    leaf: &CertificateDer<'_>,
    at: OffsetDateTime,
) -> Result<(), Rejection> {
    trust
        .identify(Some(std::slice::from_ref(leaf)), at)
        .map(|_| ())
}

#[test]
fn a_fresh_seeded_set_vouches_for_a_client_it_does_not_list() {
    let pki = TestPki::new("p");
    let (_, trust) = seeded(&pki, RevocationOptions::default());
    check(&trust, &pki.client("good").cert.der, now()).unwrap();
}

#[test]
fn a_pushed_revocation_refuses_even_a_cached_path() {
    let pki = TestPki::new("p");
    let (set, trust) = seeded(&pki, RevocationOptions::default());
    let c = pki.client("soon-revoked");
    check(&trust, &c.cert.der, now()).unwrap();
    let before = trust.revision();
    assert_eq!(set.insert([(intermediate_key(&pki), &c.cert.serial)]), 1);
    assert_ne!(trust.revision(), before, "cached verdicts must be re-made");
    assert_eq!(check(&trust, &c.cert.der, now()), Err(Rejection::Revoked));
    // Known already: nothing new, the revision stays.
    let after = trust.revision();
    assert_eq!(set.insert([(intermediate_key(&pki), &c.cert.serial)]), 0);
    assert_eq!(trust.revision(), after);
}

#[test]
fn a_revocation_speaks_only_for_its_issuer_key() {
    let pki = TestPki::new("p");
    let other = TestPki::new("q");
    let (set, trust) = seeded(&pki, RevocationOptions::default());
    let c = pki.client("c");
    // The same serial under another CA's key says nothing about this certificate.
    set.insert([(intermediate_key(&other), &c.cert.serial)]);
    check(&trust, &c.cert.der, now()).unwrap();
}

#[test]
fn a_stale_set_refuses_under_hard_fail_and_not_under_soft_fail() {
    let pki = TestPki::new("p");
    let (set, trust) = seeded(&pki, RevocationOptions::default());
    let c = pki.client("c");
    let later = now() + Duration::seconds(61);
    assert!(matches!(
        check(&trust, &c.cert.der, later),
        Err(Rejection::StaleRevocationFeed { age_secs }) if age_secs >= 61
    ));
    assert_eq!(
        Rejection::StaleRevocationFeed { age_secs: 61 }.code(),
        "stale_revocation_feed"
    );
    // Contact again: fresh.
    set.touch(later);
    check(&trust, &c.cert.der, later).unwrap();
    // The clock went back since that contact: not fresh (until the feed answers again),
    // rather than fresh for as long as the clock went back.
    assert!(matches!(
        check(&trust, &c.cert.der, later - Duration::seconds(30)),
        Err(Rejection::StaleRevocationFeed { .. })
    ));
    assert_eq!(set.age(later - Duration::seconds(30)), None);
    // A verification that read the clock a moment before the contact was recorded: fresh.
    check(&trust, &c.cert.der, later - Duration::seconds(1)).unwrap();
    // Soft-fail: a stale set does not refuse a client it does not list...
    let (set2, soft) = seeded(
        &pki,
        RevocationOptions {
            allow_unknown_status: true,
            ..Default::default()
        },
    );
    check(&soft, &c.cert.der, later).unwrap();
    // ...but a listed revocation still refuses, stale or not.
    set2.insert([(intermediate_key(&pki), &c.cert.serial)]);
    assert_eq!(check(&soft, &c.cert.der, later), Err(Rejection::Revoked));
}

#[test]
fn an_unseeded_set_gives_no_status() {
    let pki = TestPki::new("p");
    let set = Arc::new(PushedRevocations::new(std::time::Duration::from_secs(60)));
    let trust = TrustState::new(1, ca(&pki), &[], RevocationOptions::default())
        .unwrap()
        .with_pushed_revocations(set.clone());
    let c = pki.client("c");
    assert_eq!(
        set.status(&intermediate_key(&pki), c.cert.serial.as_bytes(), now()),
        PushedStatus::NotCovered
    );
    assert_eq!(
        check(&trust, &c.cert.der, now()),
        Err(Rejection::UnknownRevocationStatus)
    );
}

#[test]
fn the_seed_refuses_a_crl_from_another_key_and_an_expired_crl() {
    let pki = TestPki::new("p");
    let other = TestPki::new("q");
    let set = PushedRevocations::new(std::time::Duration::from_secs(60));
    let foreign = build_crl(&other.intermediate, 1, now(), Duration::days(1), &[]).unwrap();
    assert!(matches!(
        set.seed_from_crl(ca(&pki), &foreign, now()),
        Err(SeedError::Untrusted(_))
    ));
    let old = build_crl(
        &pki.intermediate,
        1,
        now() - Duration::days(3),
        Duration::days(1),
        &[],
    )
    .unwrap();
    assert!(matches!(
        set.seed_from_crl(ca(&pki), &old, now()),
        Err(SeedError::Expired)
    ));
    assert_eq!(set.age(now()), None, "nothing seeded");
}

/// A CRL that expired still proves the revocations it lists: the feed's "not listed" (or a
/// cached OCSP "good") does not admit a certificate the expired CRL revoked, and a CRL that
/// expired without listing it vouches for nothing (the feed does).
#[test]
fn an_expired_crl_still_refuses_what_it_revoked() {
    let pki = TestPki::new("p");
    let (revoked, good) = (pki.client("revoked"), pki.client("good"));
    let set = Arc::new(PushedRevocations::new(std::time::Duration::from_secs(60)));
    let seed = build_crl(&pki.intermediate, 1, now(), Duration::days(1), &[]).unwrap();
    set.seed_from_crl(ca(&pki), &seed, now()).unwrap();
    let expired = build_crl(
        &pki.intermediate,
        2,
        now() - Duration::hours(2),
        Duration::hours(1),
        &[mtls_pki::revocation::RevokedEntry {
            serial: revoked.cert.serial.clone(),
            revoked_at: now() - Duration::hours(2),
            reason: None,
        }],
    )
    .unwrap();
    let trust = TrustState::new(1, ca(&pki), &[expired], RevocationOptions::default())
        .unwrap()
        .with_pushed_revocations(set);
    assert_eq!(
        check(&trust, &revoked.cert.der, now()),
        Err(Rejection::Revoked)
    );
    check(&trust, &good.cert.der, now()).unwrap();
}

/// `allow_expired_crl` (which soft-fail turns on) accepts a client whose only CRL expired, but
/// as what it is: a soft-fail acceptance, counted as one (and logged), not a "good" status.
#[test]
fn an_expired_crl_allowed_is_counted_as_a_soft_fail_acceptance() {
    use mtls_verify::{DecisionResult, DecisionSource, RevocationDecisions, RevocationSources};
    let pki = TestPki::new("p");
    let good = pki.client("good");
    let expired = build_crl(
        &pki.intermediate,
        2,
        now() - Duration::hours(2),
        Duration::hours(1),
        &[],
    )
    .unwrap();
    let decisions = Arc::new(RevocationDecisions::default());
    let options = RevocationOptions {
        allow_expired_crl: true,
        ..RevocationOptions::default()
    };
    let trust = TrustState::new(1, ca(&pki), &[expired], options)
        .unwrap()
        .with_sources(&RevocationSources {
            decisions: Some(decisions.clone()),
            ..RevocationSources::default()
        });
    check(&trust, &good.cert.der, now()).unwrap();
    let count = |s, r| {
        decisions
            .counts()
            .into_iter()
            .find(|(cs, cr, _)| *cs == s && *cr == r)
            .map_or(0, |c| c.2)
    };
    assert_eq!(
        count(DecisionSource::None, DecisionResult::SoftFailAccepted),
        1
    );
    assert_eq!(count(DecisionSource::Crl, DecisionResult::Good), 0);
}
