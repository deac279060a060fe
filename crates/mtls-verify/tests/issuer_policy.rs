//! `allow_issuer` compares the issuer's name attribute by attribute: a CA whose single CN reads
//! like another CA's two attributes (`CN=Issuing CA, O=Acme`) prints the same but is not it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use mtls_verify::{DistinguishedName, Policy};
use rcgen::{CertifiedIssuer, DnType, KeyPair};
use time::OffsetDateTime;

#[test]
fn an_issuer_name_that_only_prints_alike_is_not_allowed() {
    let (root, state) = support::trusted_root("Root");
    let two_attributes = CertifiedIssuer::signed_by(
        support::ca_params_named(&[
            (DnType::CommonName, "Issuing CA"),
            (DnType::OrganizationName, "Acme"),
        ]),
        KeyPair::generate().unwrap(),
        &root,
    )
    .unwrap();
    let one_attribute = CertifiedIssuer::signed_by(
        support::ca_params_named(&[(DnType::CommonName, "Issuing CA, O=Acme")]),
        KeyPair::generate().unwrap(),
        &root,
    )
    .unwrap();
    let peer = |ca: &CertifiedIssuer<'static, KeyPair>| {
        let leaf = support::client_leaf("client", ca);
        state
            .verify_client(&leaf, &[ca.der().clone()], OffsetDateTime::now_utc())
            .unwrap()
    };
    let (real, lookalike) = (peer(&two_attributes), peer(&one_attribute));
    // The display strings collide: that is what a string comparison would have trusted.
    assert_eq!(real.issuer(), "CN=Issuing CA, O=Acme");
    assert_eq!(lookalike.issuer(), real.issuer());
    let policy = |issuer: &str| Policy {
        allow_any_trusted: true,
        allow_issuer: vec![issuer.parse::<DistinguishedName>().unwrap()],
        ..Default::default()
    };
    let p = policy("CN=Issuing CA, O=Acme");
    assert_eq!(p.check(&real), Ok(()));
    let refused = p.check(&lookalike).unwrap_err();
    assert!(refused.contains("is not allowed"), "{refused}");
    // The one-attribute CA is named with an escaped comma.
    let p = policy(r"CN=Issuing CA\, O=Acme");
    assert_eq!(p.check(&lookalike), Ok(()));
    assert!(p.check(&real).is_err());
}

#[test]
fn an_issuer_requirement_alone_allows_nobody() {
    let only_issuer = Policy {
        allow_issuer: vec!["CN=Issuing CA".parse().unwrap()],
        ..Default::default()
    };
    assert!(!only_issuer.is_empty());
    assert!(only_issuer.allows_nobody());
    let with_rule = Policy {
        allow_cn: vec!["client".into()],
        ..only_issuer
    };
    assert!(!with_rule.allows_nobody());
}

/// Two CAs with the same name (another root's intermediate taking it): `allow_issuer` cannot
/// tell them apart, `allow_issuer_spki` (the key that signed the client's certificate, in the
/// validated path) can.
#[test]
fn an_issuer_key_pin_tells_apart_cas_of_the_same_name() {
    let (root, _) = support::trusted_root("Root");
    let (other_root, _) = support::trusted_root("Partner Root");
    let name = [
        (DnType::CommonName, "Issuing CA"),
        (DnType::OrganizationName, "Acme"),
    ];
    let real = CertifiedIssuer::signed_by(
        support::ca_params_named(&name),
        KeyPair::generate().unwrap(),
        &root,
    )
    .unwrap();
    let impostor = CertifiedIssuer::signed_by(
        support::ca_params_named(&name),
        KeyPair::generate().unwrap(),
        &other_root,
    )
    .unwrap();
    // A bundle trusting both roots (a partner CA, a CA rotation).
    let state = mtls_verify::TrustState::new(
        1,
        vec![root.der().clone(), other_root.der().clone()],
        &[],
        mtls_verify::RevocationOptions::default(),
    )
    .unwrap();
    let peer = |ca: &CertifiedIssuer<'static, KeyPair>| {
        let leaf = support::client_leaf("client", ca);
        state
            .verify_client(&leaf, &[ca.der().clone()], OffsetDateTime::now_utc())
            .unwrap()
    };
    let (good, bad) = (peer(&real), peer(&impostor));
    let by_name = Policy {
        allow_cn: vec!["client".into()],
        allow_issuer: vec!["CN=Issuing CA, O=Acme".parse().unwrap()],
        ..Default::default()
    };
    assert_eq!(by_name.check(&good), Ok(()));
    assert_eq!(
        by_name.check(&bad),
        Ok(()),
        "the name cannot tell them apart"
    );
    let real_key = mtls_pki::KeyPin::of_spki(
        mtls_pki::pem_io::parse_certificate(real.der())
            .unwrap()
            .public_key()
            .raw,
    );
    let by_key = Policy {
        allow_cn: vec!["client".into()],
        allow_issuer_spki: vec![real_key],
        ..Default::default()
    };
    assert_eq!(by_key.check(&good), Ok(()));
    let refused = by_key.check(&bad).unwrap_err();
    assert!(refused.contains("allow_issuer_spki"), "{refused}");
    // A pin alone narrows; it admits nobody by itself.
    let only_pin = Policy {
        allow_issuer_spki: by_key.allow_issuer_spki.clone(),
        ..Default::default()
    };
    assert!(only_pin.allows_nobody());
    assert!(only_pin.check(&good).is_err());
}
