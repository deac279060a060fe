//! Issuing CAs as OCSP sees them: the hashes a CertID is matched against.

use std::fmt;

use aws_lc_rs::digest;
use x509_cert_02::der::asn1::ObjectIdentifier;
use x509_cert_02::der::oid::db::rfc5912::{ID_SHA_1, ID_SHA_256};

use crate::{Error, Result};

/// Hash algorithms accepted in a request's CertID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CertIdHash {
    /// SHA-1: what RFC 5019 mandates and what most clients (OpenSSL by default) send.
    Sha1,
    /// SHA-256 (`openssl ocsp -sha256`).
    Sha256,
}

impl CertIdHash {
    pub(crate) fn from_oid(oid: &ObjectIdentifier) -> Option<Self> {
        if *oid == ID_SHA_1 {
            Some(CertIdHash::Sha1)
        } else if *oid == ID_SHA_256 {
            Some(CertIdHash::Sha256)
        } else {
            None
        }
    }

    pub(crate) fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            CertIdHash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            CertIdHash::Sha256 => &digest::SHA256,
        };
        digest::digest(alg, data).as_ref().to_vec()
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            CertIdHash::Sha1 => 20,
            CertIdHash::Sha256 => 32,
        }
    }
}

impl fmt::Display for CertIdHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertIdHash::Sha1 => "SHA-1",
            CertIdHash::Sha256 => "SHA-256",
        })
    }
}

/// An issuing CA, parsed once from its certificate: what CertIDs are matched against.
#[derive(Clone, Debug)]
pub struct IssuerInfo {
    subject: String,
    subject_der: Vec<u8>,
    spki_der: Vec<u8>,
    issuer_key: String,
    name_sha1: Vec<u8>,
    key_sha1: Vec<u8>,
    name_sha256: Vec<u8>,
    key_sha256: Vec<u8>,
}

impl IssuerInfo {
    /// Parses a CA certificate (DER, no trailing bytes; basicConstraints CA:TRUE required).
    pub fn from_der(ca_cert_der: &[u8]) -> Result<Self> {
        let cert = mtls_pki::pem_io::parse_certificate(ca_cert_der).map_err(|source| {
            Error::Certificate {
                what: "issuer certificate",
                source,
            }
        })?;
        let subject = cert.subject().to_string();
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(Error::NotACa(subject));
        }
        let subject_der = cert.subject().as_raw().to_vec();
        let spki = cert.public_key();
        let key_bits = spki.subject_public_key.data.as_ref();
        Ok(IssuerInfo {
            issuer_key: hex::encode(digest::digest(&digest::SHA256, spki.raw)),
            name_sha1: CertIdHash::Sha1.digest(&subject_der),
            key_sha1: CertIdHash::Sha1.digest(key_bits),
            name_sha256: CertIdHash::Sha256.digest(&subject_der),
            key_sha256: CertIdHash::Sha256.digest(key_bits),
            spki_der: spki.raw.to_vec(),
            subject_der,
            subject,
        })
    }

    /// Lower-case hex SHA-256 of the CA certificate's full SubjectPublicKeyInfo DER: how the
    /// inventory identifies issuers.
    pub fn issuer_key(&self) -> &str {
        &self.issuer_key
    }

    /// The CA's subject, as a string (`CN=…, O=…`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The CA's subject Name, DER.
    pub(crate) fn subject_der(&self) -> &[u8] {
        &self.subject_der
    }

    /// The CA's SubjectPublicKeyInfo, DER.
    pub(crate) fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// SHA-1 of the CA's subject Name DER (the CertID issuerNameHash).
    pub(crate) fn name_sha1(&self) -> &[u8] {
        &self.name_sha1
    }

    /// SHA-1 of the CA's subjectPublicKey bits: its responderID byKey when it signs itself.
    pub(crate) fn key_sha1(&self) -> &[u8] {
        &self.key_sha1
    }

    /// Whether a CertID's issuer hashes name this CA.
    pub(crate) fn matches(&self, hash: CertIdHash, name_hash: &[u8], key_hash: &[u8]) -> bool {
        let (name, key) = match hash {
            CertIdHash::Sha1 => (&self.name_sha1, &self.key_sha1),
            CertIdHash::Sha256 => (&self.name_sha256, &self.key_sha256),
        };
        name.as_slice() == name_hash && key.as_slice() == key_hash
    }
}
