//! `without_entries`: the CRL's fields without its entries, and its signature checked on the
//! original bytes (a change to any entry breaks it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mtls_pki::issue::{self, Subject};
use mtls_pki::revocation::{
    build_crl, crl_entries, parse_crl, without_entries, RevocationReason, RevokedEntry,
};
use mtls_pki::{KeyAlgorithm, PrivateKey, Serial};
use time::{Duration, OffsetDateTime};

#[test]
fn the_head_has_every_field_but_the_entries_and_the_signature_covers_the_entries() {
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let root = issue::new_root(
        &Subject::cn("Head Root"),
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        now,
        Duration::days(30),
    )
    .unwrap();
    let other = issue::new_root(
        &Subject::cn("Head Root"),
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        now,
        Duration::days(30),
    )
    .unwrap();
    let entries: Vec<RevokedEntry> = (0..1000)
        .map(|i| RevokedEntry {
            serial: Serial::random().unwrap(),
            revoked_at: now,
            reason: (i % 3 == 0).then_some(RevocationReason::KeyCompromise),
        })
        .collect();
    for listed in [&entries[..], &[]] {
        let der = build_crl(&root, 7, now, Duration::days(1), listed).unwrap();
        let (head, signed) = without_entries(&der).unwrap();
        assert!(head.len() < 1024, "{} bytes", head.len());
        let full = parse_crl(&der).unwrap();
        let h = parse_crl(&head).unwrap();
        assert_eq!(h.iter_revoked_certificates().count(), 0);
        assert_eq!(h.issuer().as_raw(), full.issuer().as_raw());
        assert_eq!(h.crl_number(), full.crl_number());
        assert_eq!(h.next_update(), full.next_update());
        assert_eq!(h.last_update(), full.last_update());
        assert_eq!(h.extensions().len(), full.extensions().len());
        let key = |c: &mtls_pki::CaCert| {
            let (_, cert) = x509_parser::parse_x509_certificate(c.der()).unwrap();
            cert.public_key().raw.to_vec()
        };
        signed.verify(&key(&root)).unwrap();
        assert!(matches!(
            signed.verify(&key(&other)),
            Err(mtls_pki::Error::BadSignature)
        ));
        assert_eq!(crl_entries(&der).unwrap().len(), listed.len());
    }
    // A changed entry: the head still parses, the signature no longer verifies.
    let mut der = build_crl(&root, 8, now, Duration::days(1), &entries)
        .unwrap()
        .to_vec();
    let serial = entries[500].serial.as_bytes().to_vec();
    let at = der
        .windows(serial.len())
        .position(|w| w == serial.as_slice())
        .unwrap();
    der[at + 2] ^= 0x01;
    let (_, signed) = without_entries(&der).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(root.der()).unwrap();
    assert!(matches!(
        signed.verify(cert.public_key().raw),
        Err(mtls_pki::Error::BadSignature)
    ));
    // Not a CRL.
    assert!(without_entries(b"\x30\x03\x02\x01\x01").is_err());
    assert!(without_entries(&[]).is_err());
}
