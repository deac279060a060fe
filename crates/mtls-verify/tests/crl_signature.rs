//! CRL signatures are checked with the algorithms certificate chains are (rustls-webpki's set):
//! a CRL that OpenSSL signed with SHA-1/RSA is refused and the error names the algorithm; the
//! same CA's SHA-256 CRL is accepted. Needs the `openssl` command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use mtls_pki::{issue, KeyAlgorithm, PrivateKey, Subject};
use mtls_verify::{RevocationOptions, TrustError, TrustState};
use rustls_pki_types::CertificateRevocationListDer;
use time::{Duration, OffsetDateTime};

/// `openssl ca -gencrl` by the CA in `dir` (ca.pem, ca.key), signing with the digest `md`.
fn openssl_crl(dir: &Path, md: &str) -> CertificateRevocationListDer<'static> {
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    std::fs::write(p("index.txt"), b"").unwrap();
    std::fs::write(p("crlnumber"), b"01\n").unwrap();
    std::fs::write(
        p("ca.cnf"),
        format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {}\ncrlnumber = {}\ndefault_md = {md}\ndefault_crl_days = 1\n",
            p("index.txt"),
            p("crlnumber")
        ),
    )
    .unwrap();
    let out = Command::new("openssl")
        .args(["ca", "-gencrl", "-batch", "-config", &p("ca.cnf")])
        .args(["-cert", &p("ca.pem"), "-keyfile", &p("ca.key")])
        .args(["-md", md, "-out", &p("crl.pem")])
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl ca -gencrl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::fs::read(p("crl.pem")).unwrap();
    mtls_pki::pem_io::crls(&pem).unwrap().remove(0)
}

#[test]
fn a_crl_signed_with_sha1_is_refused_a_sha256_one_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = issue::new_root(
        &Subject::cn("Sha1 CRL Root CA"),
        PrivateKey::generate(KeyAlgorithm::Rsa { bits: 2048 }).unwrap(),
        OffsetDateTime::now_utc() - Duration::days(1),
        Duration::days(30),
    )
    .unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("ca.key"), ca.key().to_pem().as_bytes()).unwrap();
    let load = |crl: CertificateRevocationListDer<'static>| {
        TrustState::new(
            0,
            vec![ca.der().clone()],
            &[crl],
            RevocationOptions::default(),
        )
    };

    let sha256 = openssl_crl(dir.path(), "sha256");
    assert_eq!(load(sha256).unwrap().crl_summaries().len(), 1);

    let sha1 = openssl_crl(dir.path(), "sha1");
    match load(sha1) {
        Err(e @ TrustError::BadCrl { .. }) => {
            assert!(e.to_string().contains("sha1WithRSAEncryption"), "{e}");
            assert!(e.to_string().contains("not accepted"), "{e}");
        }
        other => panic!("a SHA-1 CRL must be refused, got {other:?}"),
    }
}
