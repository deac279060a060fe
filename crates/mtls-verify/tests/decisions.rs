//! Every verifier decision: one accept test and one test per rejection reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mtls_pki::issue;
use mtls_pki::revocation::{build_crl, RevocationReason, RevokedEntry};
use mtls_pki::{KeyAlgorithm, PrivateKey, Subject};
use mtls_test_util::ExtendedKeyUsagePurpose;
use mtls_test_util::TestPki;
use mtls_verify::{verify, CrlScope, Purpose, Rejection, VerifyRequest};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::{Duration, OffsetDateTime};

fn check(
    pki: &TestPki,
    leaf: &CertificateDer<'_>,
    purpose: Purpose,
    crls: &[CertificateRevocationListDer<'_>],
    at: OffsetDateTime,
    name: Option<&str>,
) -> Result<(), Rejection> {
    check_scoped(pki, leaf, purpose, crls, at, name, CrlScope::Leaf)
}

fn check_scoped(
    pki: &TestPki,
    leaf: &CertificateDer<'_>,
    purpose: Purpose,
    crls: &[CertificateRevocationListDer<'_>],
    at: OffsetDateTime,
    name: Option<&str>,
    crl_scope: CrlScope,
) -> Result<(), Rejection> {
    let roots = [pki.root_der()];
    let inter = [pki.intermediate_der()];
    let req = VerifyRequest {
        roots: &roots,
        intermediates: &inter,
        crls,
        at,
        purpose,
        name,
        crl_scope,
        allow_unknown_revocation: false,
        allow_expired_crl: false,
    };
    verify(leaf, &req).unwrap().map(|_| ())
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[test]
fn client_with_client_auth_accepted() {
    let pki = TestPki::new("t");
    let c = pki.client("client-app");
    check(&pki, &c.cert.der, Purpose::Client, &[], now(), None).unwrap();
}

#[test]
fn server_accepted_for_its_name_and_rejected_for_another() {
    let pki = TestPki::new("t");
    let s = pki.server(&["api.example.com", "127.0.0.1"]);
    check(
        &pki,
        &s.cert.der,
        Purpose::Server,
        &[],
        now(),
        Some("api.example.com"),
    )
    .unwrap();
    check(
        &pki,
        &s.cert.der,
        Purpose::Server,
        &[],
        now(),
        Some("127.0.0.1"),
    )
    .unwrap();
    assert!(matches!(
        check(
            &pki,
            &s.cert.der,
            Purpose::Server,
            &[],
            now(),
            Some("evil.example.com")
        ),
        Err(Rejection::NameMismatch(_))
    ));
}

#[test]
fn client_without_any_eku_rejected() {
    let pki = TestPki::new("t");
    let leaf = pki.leaf_with_ekus("no-eku", vec![]);
    assert_eq!(
        check(&pki, &leaf, Purpose::Client, &[], now(), None),
        Err(Rejection::MissingClientAuth)
    );
}

#[test]
fn server_auth_only_rejected_for_client() {
    let pki = TestPki::new("t");
    let leaf = pki.leaf_with_ekus("server-only", vec![ExtendedKeyUsagePurpose::ServerAuth]);
    assert_eq!(
        check(&pki, &leaf, Purpose::Client, &[], now(), None),
        Err(Rejection::MissingClientAuth)
    );
    let client = pki.client("c");
    assert!(matches!(
        check(&pki, &client.cert.der, Purpose::Server, &[], now(), None),
        Err(Rejection::WrongPurpose(_))
    ));
}

#[test]
fn expired_and_not_yet_valid_rejected() {
    let pki = TestPki::new("t");
    let c = pki.client("c");
    assert!(matches!(
        check(
            &pki,
            &c.cert.der,
            Purpose::Client,
            &[],
            now() + Duration::days(60),
            None
        ),
        Err(Rejection::Expired { .. })
    ));
    assert!(matches!(
        check(
            &pki,
            &c.cert.der,
            Purpose::Client,
            &[],
            now() - Duration::minutes(30),
            None
        ),
        Err(Rejection::NotYetValid { .. })
    ));
}

#[test]
fn foreign_ca_rejected() {
    let pki = TestPki::new("t");
    let other = TestPki::new("other");
    let c = other.client("c");
    assert_eq!(
        check(&pki, &c.cert.der, Purpose::Client, &[], now(), None),
        Err(Rejection::UnknownIssuer)
    );
}

#[test]
fn revoked_rejected_unrevoked_accepted_and_unknown_status_denied() {
    let pki = TestPki::new("t");
    let revoked = pki.client("revoked");
    let good = pki.client("good");
    let crl = build_crl(
        &pki.intermediate,
        1,
        now(),
        Duration::days(7),
        &[RevokedEntry {
            serial: revoked.cert.serial.clone(),
            revoked_at: now(),
            reason: Some(RevocationReason::KeyCompromise),
        }],
    )
    .unwrap();
    let crls = [crl];
    assert_eq!(
        check(&pki, &revoked.cert.der, Purpose::Client, &crls, now(), None),
        Err(Rejection::Revoked)
    );
    check(&pki, &good.cert.der, Purpose::Client, &crls, now(), None).unwrap();
    // A CRL from another CA says nothing about ours: unknown status fails closed.
    let other = TestPki::new("other");
    let foreign = build_crl(&other.intermediate, 1, now(), Duration::days(7), &[]).unwrap();
    assert_eq!(
        check(
            &pki,
            &good.cert.der,
            Purpose::Client,
            &[foreign],
            now(),
            None
        ),
        Err(Rejection::UnknownRevocationStatus)
    );
    // An expired CRL is not trusted.
    assert_eq!(
        check(
            &pki,
            &good.cert.der,
            Purpose::Client,
            &crls,
            now() + Duration::days(8),
            None
        ),
        Err(Rejection::ExpiredCrl)
    );
}

#[test]
fn ca_as_leaf_rejected() {
    let pki = TestPki::new("t");
    let other = issue::new_intermediate(
        &pki.root,
        &Subject::cn("Another intermediate"),
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        now() - Duration::hours(1),
        Duration::days(10),
        0,
    )
    .unwrap();
    let r = check(&pki, other.der(), Purpose::Any, &[], now(), None);
    assert!(
        matches!(
            r,
            Err(Rejection::CaAsEndEntity) | Err(Rejection::LeafCanSignCertificates)
        ),
        "{r:?}"
    );
}

#[test]
fn leaf_issued_by_leaf_rejected() {
    let pki = TestPki::new("t");
    let c = pki.client("c");
    // Use the client as if it were a CA: sign another certificate with its key.
    let fake_ca = mtls_pki::CaCert::new(c.cert.der.clone(), c.key);
    assert!(
        fake_ca.is_err(),
        "a leaf must not be usable as a CA by mtls-pki"
    );
}

mod trust_state {
    use super::*;
    use mtls_verify::{RevocationOptions, TrustState};

    fn state(pki: &TestPki, crls: &[CertificateRevocationListDer<'_>]) -> TrustState {
        TrustState::new(
            1,
            vec![pki.root_der(), pki.intermediate_der()],
            crls,
            RevocationOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn cached_paths_still_check_time_on_every_use() {
        let pki = TestPki::new("t");
        let c = pki.client("c");
        let st = state(&pki, &[]);
        let inter = [pki.intermediate_der()];
        let a = st.verify_client(&c.cert.der, &inter, now()).unwrap();
        let b = st.verify_client(&c.cert.der, &inter, now()).unwrap();
        assert!(
            std::sync::Arc::ptr_eq(&a, &b),
            "second call is served from the cache"
        );
        assert!(matches!(
            st.verify_client(&c.cert.der, &inter, now() + Duration::days(60)),
            Err(Rejection::Expired { .. })
        ));
    }

    #[test]
    fn purpose_any_accepts_server_certificates_client_purpose_does_not() {
        let pki = TestPki::new("t");
        let server = pki.server(&["api.example.com"]);
        let client = pki.client("c");
        let inter = [pki.intermediate_der()];
        let strict = state(&pki, &[]);
        assert_eq!(
            strict
                .verify_client(&server.cert.der, &inter, now())
                .unwrap_err(),
            Rejection::MissingClientAuth
        );
        let any = state(&pki, &[]).with_purpose(mtls_verify::Purpose::Any);
        let peer = any.verify_client(&server.cert.der, &inter, now()).unwrap();
        assert_eq!(peer.dns_names(), ["api.example.com"]);
        any.verify_client(&client.cert.der, &inter, now()).unwrap();
        // Everything else is still checked.
        let other = TestPki::new("other").client("x");
        assert_eq!(
            any.verify_client(&other.cert.der, &[], now()).unwrap_err(),
            Rejection::UnknownIssuer
        );
        assert!(matches!(
            any.verify_client(&server.cert.der, &inter, now() + Duration::days(400)),
            Err(Rejection::Expired { .. })
        ));
    }

    #[test]
    fn revocation_is_checked_for_cached_and_uncached_paths() {
        let pki = TestPki::new("t");
        let bad = pki.client("bad");
        let good = pki.client("good");
        let crl = build_crl(
            &pki.intermediate,
            1,
            now(),
            Duration::days(1),
            &[RevokedEntry {
                serial: bad.cert.serial.clone(),
                revoked_at: now(),
                reason: None,
            }],
        )
        .unwrap();
        let st = state(&pki, &[crl]);
        for _ in 0..2 {
            assert_eq!(
                st.verify_client(&bad.cert.der, &[], now()).unwrap_err(),
                Rejection::Revoked
            );
            st.verify_client(&good.cert.der, &[], now()).unwrap();
        }
        assert_eq!(
            st.verify_client(&good.cert.der, &[], now() + Duration::days(2))
                .unwrap_err(),
            Rejection::ExpiredCrl
        );
    }

    #[test]
    fn crl_not_signed_by_a_bundle_ca_is_refused_at_load() {
        let pki = TestPki::new("t");
        let other = TestPki::new("other");
        let crl = build_crl(&other.intermediate, 1, now(), Duration::days(1), &[]).unwrap();
        let err = TrustState::new(
            1,
            vec![pki.root_der()],
            &[crl],
            RevocationOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not in the CA bundle"), "{err}");
    }
}

/// `verify` and `TrustState` share one validation: the revocation decisions below hold for
/// both.
mod one_revocation_path {
    use super::*;
    use mtls_verify::{RevocationOptions, TrustError, TrustState};

    fn crl(
        ca: &mtls_pki::CaCert,
        revoked: &[&mtls_pki::Serial],
    ) -> CertificateRevocationListDer<'static> {
        let entries: Vec<RevokedEntry> = revoked
            .iter()
            .map(|s| RevokedEntry {
                serial: (*s).clone(),
                revoked_at: now(),
                reason: None,
            })
            .collect();
        build_crl(ca, 1, now(), Duration::days(7), &entries).unwrap()
    }

    fn verify_scoped(
        pki: &TestPki,
        leaf: &CertificateDer<'_>,
        crls: &[CertificateRevocationListDer<'_>],
        crl_scope: CrlScope,
    ) -> Result<(), Rejection> {
        check_scoped(pki, leaf, Purpose::Client, crls, now(), None, crl_scope)
    }

    fn state_scoped(
        pki: &TestPki,
        crls: &[CertificateRevocationListDer<'_>],
        scope: CrlScope,
    ) -> Result<TrustState, TrustError> {
        TrustState::new(
            1,
            vec![pki.root_der()],
            crls,
            RevocationOptions {
                scope,
                ..Default::default()
            },
        )
    }

    #[test]
    fn a_crl_signed_by_another_key_under_the_same_name_covers_nothing() {
        let pki = TestPki::new("t");
        // Same subject names, other keys.
        let impostor = TestPki::new("t");
        let c = pki.client("c");
        let forged = crl(&impostor.intermediate, &[]);
        assert_eq!(
            verify_scoped(
                &pki,
                &c.cert.der,
                std::slice::from_ref(&forged),
                CrlScope::Leaf
            ),
            Err(Rejection::UnknownRevocationStatus)
        );
        let err = TrustState::new(
            1,
            vec![pki.root_der(), pki.intermediate_der()],
            &[forged],
            RevocationOptions::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("signature does not verify"),
            "{err}"
        );
    }

    /// A bundle member revoked by its issuer (the root's CRL lists the intermediate) refuses
    /// its clients, and that refusal is counted among the revocation decisions like a leaf's;
    /// an unlisted member, whose status nobody requires, adds no count of its own.
    #[test]
    fn a_bundle_member_revoked_by_its_root_is_counted() {
        use mtls_verify::{DecisionResult, DecisionSource, RevocationDecisions, RevocationSources};
        let pki = TestPki::new("t");
        let c = pki.client("c");
        let inter_der = pki.intermediate_der();
        let (_, inter_cert) = x509_parser::parse_x509_certificate(&inter_der).unwrap();
        let inter_serial = mtls_pki::Serial::from_be_bytes(inter_cert.raw_serial());
        let count = |d: &RevocationDecisions, s, r| {
            d.counts()
                .into_iter()
                .find(|(cs, cr, _)| *cs == s && *cr == r)
                .map_or(0, |c| c.2)
        };
        for (root_lists, want) in [
            (vec![&inter_serial], Err(Rejection::Revoked)),
            (vec![], Ok(())),
        ] {
            let decisions = std::sync::Arc::new(RevocationDecisions::default());
            let st = TrustState::new(
                1,
                vec![pki.root_der(), pki.intermediate_der()],
                &[crl(&pki.intermediate, &[]), crl(&pki.root, &root_lists)],
                RevocationOptions::default(),
            )
            .unwrap()
            .with_sources(&RevocationSources {
                decisions: Some(decisions.clone()),
                ..RevocationSources::default()
            });
            assert_eq!(st.verify_client(&c.cert.der, &[], now()).map(|_| ()), want);
            let (revoked, good) = (
                count(&decisions, DecisionSource::Crl, DecisionResult::Revoked),
                count(&decisions, DecisionSource::Crl, DecisionResult::Good),
            );
            if want.is_err() {
                // The leaf's own status (good) and the intermediate's refusal.
                assert_eq!((revoked, good), (1, 1));
            } else {
                assert_eq!((revoked, good), (0, 1));
            }
        }
    }

    #[test]
    fn chain_scope_needs_a_status_for_the_intermediate_too() {
        let pki = TestPki::new("t");
        let c = pki.client("c");
        let leaf_crl = crl(&pki.intermediate, &[]);
        // Leaf scope: the intermediate's CRL is enough.
        verify_scoped(
            &pki,
            &c.cert.der,
            std::slice::from_ref(&leaf_crl),
            CrlScope::Leaf,
        )
        .unwrap();
        assert_eq!(
            verify_scoped(
                &pki,
                &c.cert.der,
                std::slice::from_ref(&leaf_crl),
                CrlScope::Chain
            ),
            Err(Rejection::UnknownRevocationStatus)
        );
        let root_crl = crl(&pki.root, &[]);
        verify_scoped(
            &pki,
            &c.cert.der,
            &[leaf_crl.clone(), root_crl],
            CrlScope::Chain,
        )
        .unwrap();
        // The root revoked the intermediate: refused in either scope, since a CRL covers it.
        let inter_der = pki.intermediate_der();
        let (_, inter_cert) = x509_parser::parse_x509_certificate(&inter_der).unwrap();
        let inter_serial = mtls_pki::Serial::from_be_bytes(inter_cert.raw_serial());
        let revoking = crl(&pki.root, &[&inter_serial]);
        for scope in [CrlScope::Leaf, CrlScope::Chain] {
            assert_eq!(
                verify_scoped(
                    &pki,
                    &c.cert.der,
                    &[leaf_crl.clone(), revoking.clone()],
                    scope
                ),
                Err(Rejection::Revoked),
                "{scope:?}"
            );
        }
        // The server's trust state decides the same (the intermediate comes with the chain).
        let inter = [pki.intermediate_der()];
        let st = state_scoped(&pki, std::slice::from_ref(&leaf_crl), CrlScope::Chain);
        // Its CRL signer (the intermediate) is not in the bundle: refused at load.
        assert!(st.is_err());
        // With the intermediate in the bundle beside its root (ca-chain.pem), the path ends at
        // the intermediate (an anchor, as it always was), but its own revocation by the root
        // counts, with or without the client sending it, in either order.
        for bundle in [
            vec![pki.root_der(), pki.intermediate_der()],
            vec![pki.intermediate_der(), pki.root_der()],
        ] {
            let st = TrustState::new(
                1,
                bundle.clone(),
                &[leaf_crl.clone(), revoking.clone()],
                RevocationOptions::default(),
            )
            .unwrap();
            for presented in [&inter[..], &[]] {
                assert_eq!(
                    st.verify_client(&c.cert.der, presented, now()).map(|_| ()),
                    Err(Rejection::Revoked),
                    "the bundle's intermediate is revoked by its root"
                );
            }
            // Not revoked: accepted, also without the intermediate sent.
            let st = TrustState::new(
                1,
                bundle,
                &[leaf_crl.clone(), crl(&pki.root, &[])],
                RevocationOptions::default(),
            )
            .unwrap();
            for presented in [&inter[..], &[]] {
                assert!(st.verify_client(&c.cert.der, presented, now()).is_ok());
            }
        }
        // An expired root CRL still refuses it (what it revoked stays revoked), but one that
        // does not list it is no reason to refuse its clients: an anchor needs no status.
        let expired_root_crl = |revoked: &[&mtls_pki::Serial]| {
            let entries: Vec<_> = revoked
                .iter()
                .map(|s| mtls_pki::revocation::RevokedEntry {
                    serial: (*s).clone(),
                    revoked_at: now() - time::Duration::hours(3),
                    reason: None,
                })
                .collect();
            mtls_pki::revocation::build_crl(
                &pki.root,
                9,
                now() - time::Duration::hours(2),
                time::Duration::hours(1),
                &entries,
            )
            .unwrap()
        };
        for (listed, want) in [
            (vec![&inter_serial], Err(Rejection::Revoked)),
            (vec![], Ok(())),
        ] {
            let st = TrustState::new(
                1,
                vec![pki.root_der(), pki.intermediate_der()],
                &[leaf_crl.clone(), expired_root_crl(&listed)],
                RevocationOptions::default(),
            )
            .unwrap();
            assert_eq!(
                st.verify_client(&c.cert.der, &[], now()).map(|_| ()),
                want,
                "{listed:?}"
            );
        }
        // Under chain scope its status is required, as a presented intermediate's would be
        // (where the path ends must not decide what is checked): with only its own CRL, its
        // clients are refused; with a current root CRL not listing it, accepted; with an
        // expired one, refused as an expired CRL.
        let chain_state = |crls: &[rustls_pki_types::CertificateRevocationListDer<'static>]| {
            TrustState::new(
                1,
                vec![pki.root_der(), pki.intermediate_der()],
                crls,
                RevocationOptions {
                    scope: CrlScope::Chain,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let st = chain_state(std::slice::from_ref(&leaf_crl));
        assert_eq!(
            st.verify_client(&c.cert.der, &[], now()).map(|_| ()),
            Err(Rejection::UnknownRevocationStatus)
        );
        let current_root_crl = mtls_pki::revocation::build_crl(
            &pki.root,
            10,
            now() - time::Duration::minutes(5),
            time::Duration::hours(1),
            &[],
        )
        .unwrap();
        let st = chain_state(&[leaf_crl.clone(), current_root_crl]);
        assert!(st.verify_client(&c.cert.der, &[], now()).is_ok());
        let st = chain_state(&[leaf_crl.clone(), expired_root_crl(&[])]);
        assert_eq!(
            st.verify_client(&c.cert.der, &[], now()).map(|_| ()),
            Err(Rejection::ExpiredCrl)
        );
        // An intermediate alone in the bundle stays an anchor (the path ends there, as the
        // operator chose): its clients are accepted on its own CRL.
        let st = TrustState::new(
            1,
            vec![pki.intermediate_der()],
            std::slice::from_ref(&leaf_crl),
            RevocationOptions::default(),
        )
        .unwrap();
        assert!(st.verify_client(&c.cert.der, &[], now()).is_ok());
    }
}
