//! Test CAs built with rcgen directly (names and extensions mtls's own CA would not make).
#![allow(clippy::unwrap_used, dead_code)]

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
use time::{Duration, OffsetDateTime};

/// A CA certificate's parameters: `cn`, valid from yesterday for 30 days.
pub fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = OffsetDateTime::now_utc() - Duration::days(1);
    p.not_after = OffsetDateTime::now_utc() + Duration::days(30);
    p
}

/// A CA with this exact subject (RDNs in order).
pub fn ca_params_named(rdns: &[(DnType, &str)]) -> CertificateParams {
    let mut p = ca_params("unused");
    p.distinguished_name = rcgen::DistinguishedName::new();
    for (ty, v) in rdns {
        p.distinguished_name.push(ty.clone(), *v);
    }
    p
}

/// A client leaf (clientAuth) issued by `issuer`, valid for a week.
pub fn client_leaf(
    cn: &str,
    issuer: &rcgen::Issuer<'_, impl rcgen::SigningKey>,
) -> rustls_pki_types::CertificateDer<'static> {
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = OffsetDateTime::now_utc() - Duration::days(1);
    p.not_after = OffsetDateTime::now_utc() + Duration::days(7);
    p.signed_by(&rcgen::KeyPair::generate().unwrap(), issuer)
        .unwrap()
        .der()
        .clone()
}

/// A root CA named `cn` and a trust state that trusts it alone (no CRL).
pub fn trusted_root(
    cn: &str,
) -> (
    rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    mtls_verify::TrustState,
) {
    let root =
        rcgen::CertifiedIssuer::self_signed(ca_params(cn), rcgen::KeyPair::generate().unwrap())
            .unwrap();
    let state = mtls_verify::TrustState::new(
        1,
        vec![root.der().clone()],
        &[],
        mtls_verify::RevocationOptions::default(),
    )
    .unwrap();
    (root, state)
}
