//! Requests built by `build_request`, read by OpenSSL and by our own parser; AIA URLs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mtls_ocsp::{build_request, parse_request, responder_urls, IssuerInfo};
use mtls_pki::issue::{LeafRequest, PublicationUrls};
use mtls_pki::{Profile, Subject};
use mtls_test_util::TestPki;
use time::Duration;

#[test]
fn built_requests_are_read_by_openssl_and_by_our_parser() {
    let pki = TestPki::new("client");
    let leaf = pki.client("c");
    let info = IssuerInfo::from_der(&pki.intermediate_der()).unwrap();
    let nonce = [7u8; 16];
    let der = build_request(&info, &leaf.cert.serial, Some(&nonce)).unwrap();
    let parsed = parse_request(&der, std::slice::from_ref(&info)).unwrap();
    assert_eq!(parsed.items.len(), 1);
    assert_eq!(parsed.items[0].serial, leaf.cert.serial);
    assert_eq!(parsed.items[0].issuer, Some(0));
    assert_eq!(parsed.nonce.as_deref(), Some(&nonce[..]));

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("req.der");
    std::fs::write(&f, &der).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["ocsp", "-reqin"])
        .arg(&f)
        .arg("-req_text")
        .output()
        .expect("openssl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).to_uppercase();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&leaf.cert.serial.to_string().to_uppercase()),
        "{text}"
    );
    assert!(text.contains("OCSP NONCE"), "{text}");
    assert!(text.contains("SHA1"), "{text}");

    // Without a nonce, and refusing an unusable one.
    let plain = build_request(&info, &leaf.cert.serial, None).unwrap();
    assert!(parse_request(&plain, std::slice::from_ref(&info))
        .unwrap()
        .nonce
        .is_none());
    assert!(build_request(&info, &leaf.cert.serial, Some(&[])).is_err());
    assert!(build_request(&info, &leaf.cert.serial, Some(&[0; 33])).is_err());
}

#[test]
fn responder_urls_come_from_the_aia_extension() {
    let pki = TestPki::new("aia");
    let key = mtls_pki::PrivateKey::generate(mtls_pki::KeyAlgorithm::EcdsaP256).unwrap();
    let issued = mtls_pki::issue::issue_leaf(
        &pki.intermediate,
        key.key_pair(),
        &LeafRequest {
            profile: Profile::Client,
            subject: Subject::cn("with-aia"),
            sans: vec![],
            lifetime: Duration::days(1),
            urls: PublicationUrls {
                crl: None,
                ocsp: Some("http://ocsp.example.com/ocsp".into()),
            },
        },
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    assert_eq!(
        responder_urls(&issued.der).unwrap(),
        ["http://ocsp.example.com/ocsp"]
    );
    assert!(responder_urls(&pki.client("none").cert.der)
        .unwrap()
        .is_empty());
}
