//! An intermediate in the CA bundle (as in `ca-chain.pem`) is where paths end, and webpki keeps
//! only an anchor's subject, key and name constraints: its pathLenConstraint and extended key
//! usages must still hold, as they do when the same intermediate is presented by the client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use mtls_verify::{Purpose, Rejection, RevocationOptions, TrustState};
use rcgen::{BasicConstraints, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use time::OffsetDateTime;

fn intermediate(
    cn: &str,
    path_len: Option<u8>,
    eku: &[ExtendedKeyUsagePurpose],
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = support::ca_params(cn);
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.extended_key_usages = eku.to_vec();
    CertifiedIssuer::signed_by(p, KeyPair::generate().unwrap(), issuer).unwrap()
}

fn state(bundle: Vec<rustls_pki_types::CertificateDer<'static>>, purpose: Purpose) -> TrustState {
    TrustState::new(1, bundle, &[], RevocationOptions::default())
        .unwrap()
        .with_purpose(purpose)
}

#[test]
fn a_bundle_intermediate_keeps_its_path_length() {
    let (root, _) = support::trusted_root("Root");
    let issuing = intermediate("Issuing CA", Some(0), &[], &root);
    let sub = intermediate("Sub CA", None, &[], &issuing);
    let leaf = support::client_leaf("client", &sub);
    let now = OffsetDateTime::now_utc();
    // Presented by the client, pathlen:0 refuses the CA below it (webpki).
    let root_only = state(vec![root.der().clone()], Purpose::Client);
    assert_eq!(
        root_only
            .verify_client(&leaf, &[sub.der().clone(), issuing.der().clone()], now)
            .map(|_| ()),
        Err(Rejection::PathLenExceeded)
    );
    // In the bundle beside its root: the same.
    let chain_bundle = state(
        vec![root.der().clone(), issuing.der().clone()],
        Purpose::Client,
    );
    assert_eq!(
        chain_bundle
            .verify_client(&leaf, &[sub.der().clone()], now)
            .map(|_| ()),
        Err(Rejection::PathLenExceeded)
    );
    // Its own leaves are fine.
    let direct = support::client_leaf("client", &issuing);
    assert!(chain_bundle.verify_client(&direct, &[], now).is_ok());
    // A root's pathLenConstraint holds too (OpenSSL enforces it as well).
    let mut p = support::ca_params("Tight Root");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let tight = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let below = intermediate("Below", None, &[], &tight);
    let st = state(vec![tight.der().clone()], Purpose::Client);
    assert_eq!(
        st.verify_client(
            &support::client_leaf("c", &below),
            &[below.der().clone()],
            now
        )
        .map(|_| ()),
        Err(Rejection::PathLenExceeded)
    );
    assert!(st
        .verify_client(&support::client_leaf("c", &tight), &[], now)
        .is_ok());
}

#[test]
fn a_bundle_intermediate_keeps_its_extended_key_usage() {
    let (root, _) = support::trusted_root("Root");
    let servers_only = intermediate(
        "Server CA",
        Some(0),
        &[ExtendedKeyUsagePurpose::ServerAuth],
        &root,
    );
    let clients = intermediate(
        "Client CA",
        Some(0),
        &[ExtendedKeyUsagePurpose::ClientAuth],
        &root,
    );
    let now = OffsetDateTime::now_utc();
    let bundle = vec![
        root.der().clone(),
        servers_only.der().clone(),
        clients.der().clone(),
    ];
    let st = state(bundle.clone(), Purpose::Client);
    // A client certificate from the server-only CA: refused, whether it is in the bundle or
    // presented.
    let forged = support::client_leaf("client", &servers_only);
    assert!(matches!(
        st.verify_client(&forged, &[], now).map(|_| ()),
        Err(Rejection::WrongPurpose(_))
    ));
    let root_only = state(vec![root.der().clone()], Purpose::Client);
    assert!(matches!(
        root_only
            .verify_client(&forged, &[servers_only.der().clone()], now)
            .map(|_| ()),
        Err(Rejection::WrongPurpose(_))
    ));
    // The client CA's clients are accepted; a trust state for any purpose takes both.
    assert!(st
        .verify_client(&support::client_leaf("client", &clients), &[], now)
        .is_ok());
    let any = state(bundle, Purpose::Any);
    assert!(any.verify_client(&forged, &[], now).is_ok());
}
