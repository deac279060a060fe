//! Certificate signing requests: creating them, and reading other people's safely.
//!
//! CSRs are parsed with x509-parser (not rcgen, which refuses requests carrying extensions it
//! does not know, as `openssl req` often produces). The self-signature is always verified; the
//! only things taken from a request are its public key, its subject and its SANs. Everything
//! else it asks for (key usage, EKU, extra extensions) is ignored: the profile decides.

use rcgen::{CertificateParams, PublicKeyData, SignatureAlgorithm};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::issue::Subject;
use crate::names::San;
use crate::{pem_io, Error, KeyAlgorithm, PrivateKey, Result};

/// The public key of a CSR, usable as the subject key of a certificate.
#[derive(Clone, Debug)]
pub struct CsrPublicKey {
    raw: Vec<u8>,
    spki: Vec<u8>,
    alg: &'static SignatureAlgorithm,
    algorithm: KeyAlgorithm,
}

impl CsrPublicKey {
    /// The key type.
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }
    /// DER SubjectPublicKeyInfo.
    pub fn spki(&self) -> &[u8] {
        &self.spki
    }
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
    fn subject_public_key_info(&self) -> Vec<u8> {
        self.spki.clone()
    }
}

/// What a verified CSR asks for.
#[derive(Clone, Debug)]
pub struct CsrInfo {
    pub subject: Subject,
    /// The full subject as text.
    pub subject_text: String,
    pub sans: Vec<San>,
    /// Whether the request carries basicConstraints CA:TRUE.
    pub requests_ca: bool,
    pub public_key: CsrPublicKey,
}

/// Creates a CSR (PEM) for `key` with the subject and SANs given (an empty subject when the
/// subject is `Subject::cn("")`).
pub fn create(key: &PrivateKey, subject: &Subject, sans: &[San]) -> Result<String> {
    let mut params = CertificateParams::default();
    // An empty subject is for CAs that assign the name themselves (online enrollment).
    params.distinguished_name = if subject.common_name.is_empty() && *subject == Subject::cn("") {
        rcgen::DistinguishedName::new()
    } else {
        subject.to_dn()?
    };
    params.subject_alt_names = sans.iter().map(San::to_rcgen).collect::<Result<_>>()?;
    let csr = params.serialize_request(key.key_pair())?;
    Ok(csr.pem()?)
}

/// Parses a CSR (PEM or DER), verifies its signature and extracts what it asks for.
pub fn parse(input: &[u8]) -> Result<CsrInfo> {
    // A file holding the key next to the request (or a key given by mistake) is wiped too.
    let blocks = pem_io::decode_secret(input)?;
    let block = blocks
        .iter()
        .find(|b| {
            b.label.is_empty()
                || b.label == "CERTIFICATE REQUEST"
                || b.label == "NEW CERTIFICATE REQUEST"
        })
        .ok_or(Error::NotFound { what: "CSR" })?;
    let (rest, csr) =
        X509CertificationRequest::from_der(&block.der).map_err(|e| Error::malformed("CSR", e))?;
    if !rest.is_empty() {
        return Err(Error::malformed("CSR", "trailing bytes after the request"));
    }
    let info = &csr.certification_request_info;
    // The key first: a key refused (RSA under 2048 bits, an unsupported curve) is named as
    // such, not reported as a signature that does not verify (which reads as tampering).
    let public_key = csr_public_key(&info.subject_pki)?;
    // The one signature check (webpki's algorithms): x509-parser's own accepts SHA-1 and
    // RSA keys under 2048 bits.
    let (signed, _) = crate::signature::SignedParts::split("CSR", &block.der)?;
    signed.verify(info.subject_pki.raw).map_err(|e| match e {
        Error::BadSignature => Error::CsrBadSignature,
        other => other,
    })?;
    let subject_text = info.subject.to_string();
    let subject = Subject::from_name(&info.subject)?;
    let mut sans = Vec::new();
    let mut requests_ca = false;
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            match ext {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for gn in &san.general_names {
                        sans.push(match gn {
                            GeneralName::DNSName(d) => San::dns(d)?,
                            GeneralName::URI(u) => San::uri(u)?,
                            GeneralName::RFC822Name(e) => San::email(e)?,
                            GeneralName::IPAddress(b) => {
                                if let Ok(a) = <[u8; 4]>::try_from(*b) {
                                    San::Ip(a.into())
                                } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                                    San::Ip(a.into())
                                } else {
                                    return Err(Error::CsrRefused(
                                        "malformed IP address SAN".into(),
                                    ));
                                }
                            }
                            other => {
                                return Err(Error::CsrRefused(format!(
                                    "unsupported subject alternative name {other}"
                                )))
                            }
                        });
                    }
                }
                ParsedExtension::BasicConstraints(bc) => requests_ca |= bc.ca,
                // A known extension that does not parse (a SAN with a name that is not text,
                // an unknown name form): refused, not signed without it.
                ParsedExtension::ParseError { error } => {
                    return Err(Error::CsrRefused(format!(
                        "the CSR's requested extensions do not parse: {error}"
                    )))
                }
                _ => {}
            }
        }
    }
    Ok(CsrInfo {
        subject,
        subject_text,
        sans,
        requests_ca,
        public_key,
    })
}

fn csr_public_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<CsrPublicKey> {
    let parsed = spki
        .parsed()
        .map_err(|e| Error::UnsupportedKey(format!("unreadable public key: {e}")))?;
    let (alg, algorithm): (&'static SignatureAlgorithm, KeyAlgorithm) = match parsed {
        PublicKey::EC(point) => match point.key_size() {
            256 => (&rcgen::PKCS_ECDSA_P256_SHA256, KeyAlgorithm::EcdsaP256),
            384 => (&rcgen::PKCS_ECDSA_P384_SHA384, KeyAlgorithm::EcdsaP384),
            n => {
                return Err(Error::UnsupportedKey(format!(
                    "EC key of {n} bits (use P-256 or P-384)"
                )))
            }
        },
        PublicKey::RSA(rsa) => {
            let bits = rsa.key_size();
            if bits < 2048 {
                return Err(Error::UnsupportedKey(format!(
                    "RSA-{bits} is too small (at least 2048 bits)"
                )));
            }
            (&rcgen::PKCS_RSA_SHA256, KeyAlgorithm::Rsa { bits })
        }
        PublicKey::Unknown(_)
            if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 =>
        {
            (&rcgen::PKCS_ED25519, KeyAlgorithm::Ed25519)
        }
        _ => {
            return Err(Error::UnsupportedKey(
                "only ECDSA P-256/P-384, Ed25519 and RSA keys are signed".into(),
            ))
        }
    };
    // For EC keys, make sure the curve parameter is exactly P-256 / P-384 (key_size alone
    // cannot tell P-256 from other 256-bit curves).
    if let KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 = algorithm {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let ok = match algorithm {
            KeyAlgorithm::EcdsaP256 => curve == Some(x509_parser::oid_registry::OID_EC_P256),
            _ => curve == Some(x509_parser::oid_registry::OID_NIST_EC_P384),
        };
        if !ok {
            return Err(Error::UnsupportedKey(
                "EC curve other than P-256/P-384".into(),
            ));
        }
        // The uncompressed form only (what every TLS stack sends and RFC 5480 requires
        // support for): one key, one encoding in the inventory.
        let len = match algorithm {
            KeyAlgorithm::EcdsaP256 => 65,
            _ => 97,
        };
        let point = spki.subject_public_key.data.as_ref();
        if point.first() != Some(&0x04) || point.len() != len {
            return Err(Error::UnsupportedKey(
                "EC public key not in uncompressed form".into(),
            ));
        }
    }
    Ok(CsrPublicKey {
        raw: spki.subject_public_key.data.to_vec(),
        spki: spki.raw.to_vec(),
        alg,
        algorithm,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A subject attribute encoded as something other than a string type mtls reads (here a
    /// BMPString organisation) is refused, naming the attribute.
    #[test]
    fn a_subject_attribute_that_is_not_a_string_is_named() {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "app");
        params.distinguished_name.push(
            rcgen::DnType::OrganizationName,
            rcgen::DnValue::BmpString("Acme".try_into().unwrap()),
        );
        let csr = params.serialize_request(key.key_pair()).unwrap();
        match parse(csr.der()) {
            Err(Error::InvalidName { value, reason }) => {
                assert_eq!(value, "O");
                assert!(reason.contains("not a string"), "{reason}");
            }
            other => panic!("expected InvalidName, got {other:?}"),
        }
    }
}
