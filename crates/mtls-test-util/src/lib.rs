//! `mtls-test-util`: in-memory test PKIs for mtls's tests.
//!
//! What it does: builds a root → intermediate hierarchy with mtls-pki and issues good and
//! deliberately bad leaves (expired, not yet valid, wrong EKU, no EKU, foreign CA), so every
//! verifier decision can be tested without committed fixtures that rot.
//! What it does not do: anything at runtime — it is a dev-dependency only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mtls_pki::issue::{self, LeafRequest};
use mtls_pki::{CaCert, Issued, KeyAlgorithm, PrivateKey, Profile, San, Subject};
pub use rcgen::ExtendedKeyUsagePurpose;
use rcgen::{CertificateParams, IsCa, KeyUsagePurpose};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

/// A root and an intermediate CA.
pub struct TestPki {
    pub root: CaCert,
    pub intermediate: CaCert,
}

/// A leaf with its key.
pub struct TestLeaf {
    pub cert: Issued,
    pub key: PrivateKey,
}

impl TestPki {
    /// A P-256 hierarchy valid from 400 days ago for ten years (so tests can issue leaves
    /// that are already expired).
    pub fn new(name: &str) -> Self {
        let now = OffsetDateTime::now_utc() - Duration::days(400);
        let root = issue::new_root(
            &Subject::cn(format!("{name} Root CA")),
            PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
            now,
            Duration::days(3650),
        )
        .unwrap();
        let intermediate = issue::new_intermediate(
            &root,
            &Subject::cn(format!("{name} Intermediate CA")),
            PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
            now,
            Duration::days(3000),
            0,
        )
        .unwrap();
        TestPki { root, intermediate }
    }

    /// Issues a leaf with the given profile, issued at `at` for `lifetime`.
    pub fn leaf_at(
        &self,
        profile: Profile,
        cn: &str,
        sans: &[&str],
        at: OffsetDateTime,
        lifetime: Duration,
    ) -> TestLeaf {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let req = LeafRequest {
            profile,
            subject: Subject::cn(cn),
            sans: sans.iter().map(|s| San::parse(s).unwrap()).collect(),
            lifetime,
            urls: Default::default(),
        };
        let cert = issue::issue_leaf(&self.intermediate, key.key_pair(), &req, at).unwrap();
        TestLeaf { cert, key }
    }

    /// A client leaf valid now.
    pub fn client(&self, cn: &str) -> TestLeaf {
        self.leaf_at(
            Profile::Client,
            cn,
            &[],
            OffsetDateTime::now_utc(),
            Duration::days(30),
        )
    }

    /// A server leaf valid now.
    pub fn server(&self, names: &[&str]) -> TestLeaf {
        self.leaf_at(
            Profile::Server,
            names[0],
            names,
            OffsetDateTime::now_utc(),
            Duration::days(30),
        )
    }

    /// A leaf signed by the intermediate with arbitrary EKUs (empty = no EKU extension) —
    /// something mtls's own profiles never produce.
    pub fn leaf_with_ekus(
        &self,
        cn: &str,
        ekus: Vec<ExtendedKeyUsagePurpose>,
    ) -> CertificateDer<'static> {
        let now = OffsetDateTime::now_utc();
        self.custom_leaf(cn, ekus, now - Duration::hours(1), now + Duration::days(1))
            .0
    }

    /// A leaf with any subject CN (quotes, commas, CR/LF…), EKUs and validity, plus its key.
    pub fn custom_leaf(
        &self,
        cn: &str,
        ekus: Vec<ExtendedKeyUsagePurpose>,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> (CertificateDer<'static>, PrivateKey) {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.not_before = not_before;
        p.not_after = not_after;
        p.serial_number = Some(rcgen::SerialNumber::from_slice(
            mtls_pki::Serial::random().unwrap().as_bytes(),
        ));
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = ekus;
        p.use_authority_key_identifier_extension = true;
        let issuer = rcgen::Issuer::from_ca_cert_der(
            self.intermediate.der(),
            self.intermediate.key().key_pair(),
        )
        .unwrap();
        let der = p.signed_by(key.key_pair(), &issuer).unwrap().der().clone();
        (der, key)
    }

    /// Root certificate DER.
    pub fn root_der(&self) -> CertificateDer<'static> {
        self.root.der().clone()
    }

    /// Intermediate certificate DER.
    pub fn intermediate_der(&self) -> CertificateDer<'static> {
        self.intermediate.der().clone()
    }

    /// The intermediate and the root, PEM (a `ca-chain.pem`).
    pub fn chain_pem(&self) -> String {
        format!(
            "{}{}",
            mtls_pki::pem_io::encode("CERTIFICATE", &self.intermediate_der()),
            mtls_pki::pem_io::encode("CERTIFICATE", &self.root_der())
        )
    }

    /// Writes a CRL of the intermediate numbered `number`, valid for a week and listing
    /// `revoked`, over `path` as a publisher does: a new file (PEM) renamed over the old one.
    pub fn write_crl(&self, path: &std::path::Path, number: u64, revoked: &[&TestLeaf]) {
        let now = OffsetDateTime::now_utc();
        let entries: Vec<mtls_pki::revocation::RevokedEntry> = revoked
            .iter()
            .map(|l| mtls_pki::revocation::RevokedEntry {
                serial: l.cert.serial.clone(),
                revoked_at: now - Duration::minutes(1),
                reason: None,
            })
            .collect();
        let crl = mtls_pki::revocation::build_crl(
            &self.intermediate,
            number,
            now - Duration::minutes(1),
            Duration::days(7),
            &entries,
        )
        .unwrap();
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, mtls_pki::pem_io::encode("X509 CRL", &crl)).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
}

/// A fresh, empty database in the PostgreSQL test cluster named by `MTLS_TEST_POSTGRES_URL`
/// (`eval "$(bash scripts/pg.sh)"` starts one; `scripts/test.sh` does); returns its URL.
///
/// # Panics
/// When the variable is unset or `psql` fails: tests that need PostgreSQL must not pass
/// silently without it.
pub fn fresh_postgres_database() -> String {
    let base = std::env::var("MTLS_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!("MTLS_TEST_POSTGRES_URL is not set: run `eval \"$(bash scripts/pg.sh)\"` (scripts/test.sh does)")
    });
    let name = format!(
        "mtls_{}",
        mtls_pki::Serial::random().expect("random database name")
    );
    let out = std::process::Command::new("psql")
        .arg(&base)
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            &format!("CREATE DATABASE {name}"),
        ])
        .output()
        .expect("running psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (prefix, _) = base.rsplit_once('/').expect("a database URL");
    format!("{prefix}/{name}")
}
