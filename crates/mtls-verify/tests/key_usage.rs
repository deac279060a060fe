//! keyUsage, which webpki does not read: a client whose key may not sign (keyEncipherment
//! only) cannot authenticate over TLS, and an intermediate without keyCertSign issued nothing a path
//! may rely on (OpenSSL refuses both too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use mtls_verify::{Purpose, Rejection, RevocationOptions, TrustState};
use rcgen::{
    CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

fn leaf(
    usages: &[KeyUsagePurpose],
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> rustls_pki_types::CertificateDer<'static> {
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "client");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = usages.to_vec();
    p.not_before = OffsetDateTime::now_utc() - Duration::days(1);
    p.not_after = OffsetDateTime::now_utc() + Duration::days(7);
    p.signed_by(&KeyPair::generate().unwrap(), issuer)
        .unwrap()
        .der()
        .clone()
}

#[test]
fn a_leaf_without_digital_signature_is_refused() {
    let (root, state) = support::trusted_root("Root");
    let now = OffsetDateTime::now_utc();
    let encipher_only = leaf(&[KeyUsagePurpose::KeyEncipherment], &root);
    assert_eq!(
        state.verify_client(&encipher_only, &[], now).map(|_| ()),
        Err(Rejection::KeyUsage(
            "TLS authentication (no digitalSignature)"
        ))
    );
    // With digitalSignature, or without a keyUsage at all: accepted.
    for usages in [
        vec![KeyUsagePurpose::DigitalSignature],
        vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ],
        vec![],
    ] {
        assert!(
            state.verify_client(&leaf(&usages, &root), &[], now).is_ok(),
            "{usages:?}"
        );
    }
    // A trust state for any purpose (the CA's, `mtls verify --purpose any`) or for servers
    // does not ask.
    for purpose in [Purpose::Any, Purpose::Server] {
        let st = TrustState::new(
            1,
            vec![root.der().clone()],
            &[],
            RevocationOptions::default(),
        )
        .unwrap()
        .with_purpose(purpose);
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "legacy.example");
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        p.not_before = now - Duration::days(1);
        p.not_after = now + Duration::days(7);
        let legacy = p
            .signed_by(&KeyPair::generate().unwrap(), &root)
            .unwrap()
            .der()
            .clone();
        let r = st.verify_client(&legacy, &[], now).map(|_| ());
        assert!(r.is_ok(), "{purpose:?}: {r:?}");
    }
}

#[test]
fn an_intermediate_without_key_cert_sign_is_refused() {
    let (root, state) = support::trusted_root("Root");
    let now = OffsetDateTime::now_utc();
    let mut p = support::ca_params("Signing-less CA");
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    let weak = CertifiedIssuer::signed_by(p, KeyPair::generate().unwrap(), &root).unwrap();
    let issued = leaf(&[KeyUsagePurpose::DigitalSignature], &weak);
    assert!(matches!(
        state
            .verify_client(&issued, &[weak.der().clone()], now)
            .map(|_| ()),
        Err(Rejection::KeyUsage(_))
    ));
    let good = CertifiedIssuer::signed_by(
        support::ca_params("Issuing CA"),
        KeyPair::generate().unwrap(),
        &root,
    )
    .unwrap();
    let issued = leaf(&[KeyUsagePurpose::DigitalSignature], &good);
    assert!(state
        .verify_client(&issued, &[good.der().clone()], now)
        .is_ok());
}
