//! Publication URLs (CRL distribution point, AIA OCSP) on leaves and delegated OCSP signing
//! certificates, checked with x509-parser, OpenSSL (`openssl x509 -text`, `openssl verify
//! -purpose sslclient|ocsphelper`) and pkilint. `.ci/run` and `scripts/test.sh` install both
//! tools; without them these tests fail rather than skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use mtls_pki::issue::{self, LeafRequest, PublicationUrls};
use mtls_pki::{pem_io, CaCert, Error, KeyAlgorithm, PrivateKey, Profile, San, Subject};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::{GeneralName, ParsedExtension};

const CRL_URL: &str = "http://pki.example.com/crl/intermediate.crl";
const OCSP_URL: &str = "http://ocsp.example.com/ocsp";

struct Pki {
    root: CaCert,
    inter: CaCert,
}

fn pki(alg: KeyAlgorithm) -> Pki {
    let now = OffsetDateTime::now_utc();
    let root = issue::new_root(
        &Subject {
            common_name: "Publication Root CA".into(),
            organization: Some("Example Org".into()),
            country: Some("JP".into()),
            ..Default::default()
        },
        PrivateKey::generate(alg).unwrap(),
        now,
        Duration::days(3650),
    )
    .unwrap();
    let inter = issue::new_intermediate(
        &root,
        &Subject {
            common_name: "Publication Intermediate CA".into(),
            organization: Some("Example Org".into()),
            country: Some("JP".into()),
            ..Default::default()
        },
        PrivateKey::generate(alg).unwrap(),
        now,
        Duration::days(1000),
        0,
    )
    .unwrap();
    Pki { root, inter }
}

fn leaf_request(profile: Profile, urls: PublicationUrls) -> LeafRequest {
    let sans = match profile {
        Profile::Server => vec![San::dns("api.example.com").unwrap()],
        Profile::Client => vec![San::dns("client.example.com").unwrap()],
    };
    LeafRequest {
        profile,
        subject: Subject::cn(match profile {
            Profile::Server => "api.example.com",
            Profile::Client => "client-app",
        }),
        sans,
        lifetime: Duration::days(30),
        urls,
    }
}

fn both_urls() -> PublicationUrls {
    PublicationUrls {
        crl: Some(CRL_URL.into()),
        ocsp: Some(OCSP_URL.into()),
    }
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} not runnable ({e})"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn write(dir: &Path, name: &str, pem: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p.to_str().unwrap().to_string()
}

fn pkilint(file: &str) {
    let (ok, text) = run("lint_pkix_cert", &["lint", "-s", "ERROR", file]);
    assert!(ok && !text.contains("ERROR"), "pkilint {file}:\n{text}");
}

/// (CRL DP URIs, AIA OCSP URIs) as x509-parser reads them.
fn published(der: &[u8]) -> (Vec<String>, Vec<String>) {
    let cert = pem_io::parse_certificate(der).unwrap();
    let (mut crl, mut ocsp) = (Vec::new(), Vec::new());
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::CRLDistributionPoints(dps) => {
                assert!(!ext.critical);
                for dp in dps.iter() {
                    if let Some(x509_parser::extensions::DistributionPointName::FullName(names)) =
                        &dp.distribution_point
                    {
                        for n in names {
                            if let GeneralName::URI(u) = n {
                                crl.push(u.to_string());
                            }
                        }
                    }
                }
            }
            ParsedExtension::AuthorityInfoAccess(aia) => {
                assert!(!ext.critical);
                for ad in &aia.accessdescs {
                    assert_eq!(ad.access_method.to_id_string(), "1.3.6.1.5.5.7.48.1");
                    if let GeneralName::URI(u) = &ad.access_location {
                        ocsp.push(u.to_string());
                    }
                }
            }
            ParsedExtension::UnsupportedExtension { oid } => {
                // x509-parser does not decode id-pkix-ocsp-nocheck; anything else is a surprise.
                assert_eq!(oid.to_id_string(), "1.3.6.1.5.5.7.48.1.5");
            }
            _ => {}
        }
    }
    (crl, ocsp)
}

#[test]
fn leaf_publishes_crl_and_ocsp_urls_openssl_and_pkilint_agree() {
    for alg in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa { bits: 2048 },
    ] {
        let p = pki(alg);
        let dir = tempfile::tempdir().unwrap();
        let root = write(dir.path(), "root.pem", &p.root.pem());
        let inter = write(dir.path(), "inter.pem", &p.inter.pem());
        for profile in [Profile::Server, Profile::Client] {
            let key = PrivateKey::generate(alg).unwrap();
            let leaf = issue::issue_leaf(
                &p.inter,
                key.key_pair(),
                &leaf_request(profile, both_urls()),
                OffsetDateTime::now_utc(),
            )
            .unwrap();
            assert_eq!(
                published(&leaf.der),
                (vec![CRL_URL.to_string()], vec![OCSP_URL.to_string()])
            );
            let file = write(dir.path(), &format!("{profile}.pem"), &leaf.pem());
            let (ok, text) = run("openssl", &["x509", "-in", &file, "-noout", "-text"]);
            assert!(ok, "{text}");
            assert!(text.contains("X509v3 CRL Distribution Points"), "{text}");
            assert!(text.contains(&format!("URI:{CRL_URL}")), "{text}");
            assert!(text.contains("Authority Information Access"), "{text}");
            assert!(text.contains(&format!("OCSP - URI:{OCSP_URL}")), "{text}");
            let purpose = match profile {
                Profile::Server => "sslserver",
                Profile::Client => "sslclient",
            };
            let (ok, text) = run(
                "openssl",
                &[
                    "verify",
                    "-CAfile",
                    &root,
                    "-untrusted",
                    &inter,
                    "-purpose",
                    purpose,
                    &file,
                ],
            );
            assert!(ok && text.contains(": OK"), "{alg} {profile}: {text}");
            pkilint(&file);
        }
    }
}

#[test]
fn leaf_publishes_only_what_is_asked() {
    let p = pki(KeyAlgorithm::EcdsaP256);
    let now = OffsetDateTime::now_utc();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let none = issue::issue_leaf(
        &p.inter,
        key.key_pair(),
        &leaf_request(Profile::Client, PublicationUrls::default()),
        now,
    )
    .unwrap();
    assert_eq!(published(&none.der), (vec![], vec![]));
    let crl_only = PublicationUrls {
        crl: Some(CRL_URL.into()),
        ocsp: None,
    };
    let leaf = issue::issue_leaf(
        &p.inter,
        key.key_pair(),
        &leaf_request(Profile::Client, crl_only),
        now,
    )
    .unwrap();
    assert_eq!(published(&leaf.der), (vec![CRL_URL.to_string()], vec![]));
    let ocsp_only = PublicationUrls {
        crl: None,
        ocsp: Some(OCSP_URL.into()),
    };
    let leaf = issue::issue_leaf(
        &p.inter,
        key.key_pair(),
        &leaf_request(Profile::Client, ocsp_only),
        now,
    )
    .unwrap();
    assert_eq!(published(&leaf.der), (vec![], vec![OCSP_URL.to_string()]));
}

#[test]
fn bad_publication_urls_are_refused() {
    let p = pki(KeyAlgorithm::EcdsaP256);
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let long = format!("http://example.com/{}", "a".repeat(1100));
    for bad in [
        "https://ocsp.example.com/",
        "ftp://ocsp.example.com/",
        "ocsp.example.com",
        "http://",
        "http:///path",
        "http://user@ocsp.example.com/",
        "http://ocsp.example.com/a b",
        "http://ocsp.example.com/\n",
        "http://ocsp.exämple.com/",
        long.as_str(),
    ] {
        for urls in [
            PublicationUrls {
                crl: Some(bad.into()),
                ocsp: None,
            },
            PublicationUrls {
                crl: None,
                ocsp: Some(bad.into()),
            },
        ] {
            let req = leaf_request(Profile::Client, urls);
            assert!(
                matches!(req.check(), Err(Error::InvalidUrl { .. })),
                "{bad:?}"
            );
            let err = issue::issue_leaf(&p.inter, key.key_pair(), &req, OffsetDateTime::now_utc())
                .unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{bad:?}: {err}");
        }
    }
    // Scheme case does not matter.
    let ok = PublicationUrls {
        crl: Some("HTTP://pki.example.com/x.crl".into()),
        ocsp: Some("http://192.0.2.1:8080/ocsp".into()),
    };
    leaf_request(Profile::Client, ok).check().unwrap();
}

#[test]
fn ocsp_signer_has_the_delegation_profile_and_openssl_accepts_it() {
    for alg in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa { bits: 2048 },
    ] {
        let p = pki(alg);
        let dir = tempfile::tempdir().unwrap();
        let root = write(dir.path(), "root.pem", &p.root.pem());
        let inter = write(dir.path(), "inter.pem", &p.inter.pem());
        let key = PrivateKey::generate(alg).unwrap();
        let signer = issue::issue_ocsp_signer(
            &p.inter,
            key.key_pair(),
            &Subject::cn("Publication OCSP Responder"),
            OffsetDateTime::now_utc(),
            Duration::days(issue::DEFAULT_OCSP_SIGNER_DAYS),
        )
        .unwrap();
        assert!(signer.sans.is_empty());

        let cert = pem_io::parse_certificate(&signer.der).unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(!bc.value.ca);
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.ocsp_signing);
        assert!(!eku.server_auth && !eku.client_auth && eku.other.is_empty());
        let nocheck = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.48.1.5")
            .expect("ocsp-nocheck");
        assert!(!nocheck.critical);
        assert_eq!(nocheck.value, [0x05, 0x00]);
        assert!(cert.extensions().iter().any(|e| matches!(
            e.parsed_extension(),
            ParsedExtension::AuthorityKeyIdentifier(_)
        )));
        assert_eq!(published(&signer.der), (vec![], vec![]));

        let file = write(dir.path(), "signer.pem", &signer.pem());
        let (ok, text) = run("openssl", &["x509", "-in", &file, "-noout", "-text"]);
        assert!(ok, "{text}");
        assert!(text.contains("OCSP Signing"), "{text}");
        assert!(text.contains("OCSP No Check"), "{text}");
        assert!(text.contains("CA:FALSE"), "{text}");
        let (ok, text) = run(
            "openssl",
            &[
                "verify",
                "-CAfile",
                &root,
                "-untrusted",
                &inter,
                "-purpose",
                "ocsphelper",
                &file,
            ],
        );
        assert!(ok && text.contains(": OK"), "{alg}: {text}");
        // Not a TLS client or server certificate.
        let (ok, text) = run(
            "openssl",
            &[
                "verify",
                "-CAfile",
                &root,
                "-untrusted",
                &inter,
                "-purpose",
                "sslclient",
                &file,
            ],
        );
        assert!(!ok, "{alg}: accepted as a TLS client: {text}");
        pkilint(&file);
    }
}

#[test]
fn ocsp_signer_respects_the_issuing_ca_validity() {
    let p = pki(KeyAlgorithm::EcdsaP256);
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let now = OffsetDateTime::now_utc();
    let long = issue::issue_ocsp_signer(
        &p.inter,
        key.key_pair(),
        &Subject::cn("OCSP"),
        now,
        Duration::days(5000),
    )
    .unwrap();
    assert_eq!(long.not_after, p.inter.not_after());
    assert!(matches!(
        issue::issue_ocsp_signer(
            &p.inter,
            key.key_pair(),
            &Subject::cn("OCSP"),
            now + Duration::days(2000),
            Duration::days(1),
        ),
        Err(Error::IssuerNotValid { .. })
    ));
    assert!(matches!(
        issue::issue_ocsp_signer(
            &p.inter,
            key.key_pair(),
            &Subject::cn("OCSP"),
            now,
            Duration::ZERO,
        ),
        Err(Error::InvalidValidity(_))
    ));
}
