//! PKCS#12 export in both profiles, read back by OpenSSL (`openssl pkcs12 -info`, then the key
//! and certificates extracted and compared with what went in). `scripts/test.sh` installs
//! OpenSSL; without it these tests fail rather than skip.
//!
//! Neither profile needs `openssl pkcs12 -legacy`: the compat profile uses 3DES, which OpenSSL 3
//! keeps in its default provider (only RC2 and RC4 moved to the legacy one), and OpenSSL 1.1.1
//! has no `-legacy` flag at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use mtls_pki::issue::{self, LeafRequest, PublicationUrls};
use mtls_pki::pkcs12::{self, Pkcs12Profile, PKCS12_ITERATIONS};
use mtls_pki::{CaCert, Error, KeyAlgorithm, PrivateKey, Profile, San, Subject};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

const PASSWORD: &str = "correct horse battery staple";

struct Identity {
    key: PrivateKey,
    chain: Vec<CertificateDer<'static>>,
}

/// Root → intermediate → client leaf, all with keys of `alg`.
fn identity(alg: KeyAlgorithm) -> Identity {
    let now = OffsetDateTime::now_utc();
    let root = issue::new_root(
        &Subject::cn("PKCS12 Test Root CA"),
        PrivateKey::generate(alg).unwrap(),
        now,
        Duration::days(30),
    )
    .unwrap();
    let inter: CaCert = issue::new_intermediate(
        &root,
        &Subject::cn("PKCS12 Test Intermediate CA"),
        PrivateKey::generate(alg).unwrap(),
        now,
        Duration::days(20),
        0,
    )
    .unwrap();
    let key = PrivateKey::generate(alg).unwrap();
    let leaf = issue::issue_leaf(
        &inter,
        key.key_pair(),
        &LeafRequest {
            profile: Profile::Client,
            subject: Subject::cn("client-app"),
            sans: vec![San::dns("client.example.com").unwrap()],
            lifetime: Duration::days(10),
            urls: PublicationUrls::default(),
        },
        now,
    )
    .unwrap();
    Identity {
        key,
        chain: vec![leaf.der, inter.der().clone()],
    }
}

/// Runs openssl; (success, stdout + stderr).
fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl not runnable ({e}); scripts/test.sh installs it"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn write(dir: &Path, name: &str, data: &[u8]) -> String {
    let p: PathBuf = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_str().unwrap().to_string()
}

/// `openssl pkcs12 -info -noout` lines with the given password.
fn info(file: &str, password: &str) -> (bool, String) {
    openssl(&[
        "pkcs12",
        "-info",
        "-noout",
        "-in",
        file,
        "-passin",
        &format!("pass:{password}"),
    ])
}

/// The algorithm lines `openssl pkcs12 -info` prints for each profile.
fn expected_lines(profile: Pkcs12Profile) -> Vec<String> {
    let n = PKCS12_ITERATIONS;
    match profile {
        Pkcs12Profile::Modern => vec![
            format!("MAC: sha256, Iteration {n}"),
            "MAC length: 32".into(),
            format!(
                "PKCS7 Encrypted data: PBES2, PBKDF2, AES-256-CBC, Iteration {n}, PRF hmacWithSHA256"
            ),
            format!("Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration {n}, PRF hmacWithSHA256"),
        ],
        Pkcs12Profile::Compat => vec![
            format!("MAC: sha1, Iteration {n}"),
            "MAC length: 20".into(),
            format!("PKCS7 Encrypted data: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration {n}"),
            format!("Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration {n}"),
        ],
    }
}

fn check_profile_with_openssl(alg: KeyAlgorithm, profile: Pkcs12Profile) {
    let id = identity(alg);
    let p12 = pkcs12::export(&id.key, &id.chain, PASSWORD, "client-app", profile).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "id.p12", &p12);

    // The algorithms, as OpenSSL reads them.
    let (ok, text) = info(&file, PASSWORD);
    assert!(
        ok,
        "{alg} {profile:?}: openssl pkcs12 -info failed:\n{text}"
    );
    for line in expected_lines(profile) {
        assert!(
            text.contains(&line),
            "{alg} {profile:?}: no {line:?} in:\n{text}"
        );
    }
    assert_eq!(text.matches("Certificate bag").count(), 2, "{text}");
    // Nothing of the other profile leaks in (one algorithm for every bag).
    let other = match profile {
        Pkcs12Profile::Modern => "TripleDES",
        Pkcs12Profile::Compat => "AES",
    };
    assert!(!text.contains(other), "{alg} {profile:?}: {text}");

    // The key decrypts to ours, and the certificates are the chain, leaf first.
    let (ok, key_pem) = openssl(&[
        "pkcs12",
        "-in",
        &file,
        "-passin",
        &format!("pass:{PASSWORD}"),
        "-nocerts",
        "-nodes",
    ]);
    assert!(ok, "{key_pem}");
    let theirs = write(dir.path(), "theirs.key", key_pem.as_bytes());
    let ours = write(dir.path(), "ours.key", id.key.to_pem().as_bytes());
    let (ok1, pub_theirs) = openssl(&["pkey", "-in", &theirs, "-pubout"]);
    let (ok2, pub_ours) = openssl(&["pkey", "-in", &ours, "-pubout"]);
    assert!(ok1 && ok2, "{pub_theirs}\n{pub_ours}");
    assert_eq!(pub_theirs, pub_ours, "{alg} {profile:?}");
    let (ok, leaf) = openssl(&[
        "pkcs12",
        "-in",
        &file,
        "-passin",
        &format!("pass:{PASSWORD}"),
        "-nokeys",
        "-clcerts",
    ]);
    assert!(ok, "{leaf}");
    assert!(leaf.contains("subject=CN = client-app"), "{leaf}");
    let (ok, ca) = openssl(&[
        "pkcs12",
        "-in",
        &file,
        "-passin",
        &format!("pass:{PASSWORD}"),
        "-nokeys",
        "-cacerts",
    ]);
    assert!(ok, "{ca}");
    assert!(
        ca.contains("subject=CN = PKCS12 Test Intermediate CA"),
        "{ca}"
    );

    // A wrong password fails the MAC check, and nothing is printed as if it were read.
    let (ok, text) = info(&file, "correct horse battery stapler");
    assert!(
        !ok,
        "{alg} {profile:?}: a wrong password was accepted:\n{text}"
    );
    assert!(text.contains("Mac verify error"), "{text}");
    assert!(!text.contains("Shrouded Keybag"), "{text}");
}

#[test]
fn pkcs12_modern_profile_openssl_reads_aes256_and_sha256_mac() {
    check_profile_with_openssl(KeyAlgorithm::EcdsaP256, Pkcs12Profile::Modern);
    check_profile_with_openssl(KeyAlgorithm::Rsa { bits: 2048 }, Pkcs12Profile::Modern);
}

#[test]
fn pkcs12_compat_profile_openssl_reads_3des_and_sha1_mac() {
    check_profile_with_openssl(KeyAlgorithm::EcdsaP256, Pkcs12Profile::Compat);
    check_profile_with_openssl(KeyAlgorithm::Rsa { bits: 2048 }, Pkcs12Profile::Compat);
}

#[test]
fn pkcs12_default_profile_is_modern() {
    assert_eq!(Pkcs12Profile::default(), Pkcs12Profile::Modern);
}

#[test]
fn pkcs12_refuses_empty_password_and_foreign_key_in_both_profiles() {
    let id = identity(KeyAlgorithm::EcdsaP256);
    let other = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    for profile in [Pkcs12Profile::Modern, Pkcs12Profile::Compat] {
        assert!(matches!(
            pkcs12::export(&id.key, &id.chain, "", "x", profile),
            Err(Error::Pkcs12(_))
        ));
        assert!(matches!(
            pkcs12::export(&other, &id.chain, PASSWORD, "x", profile),
            Err(Error::KeyMismatch)
        ));
        assert!(matches!(
            pkcs12::export(&id.key, &[], PASSWORD, "x", profile),
            Err(Error::NotFound { .. })
        ));
    }
}
