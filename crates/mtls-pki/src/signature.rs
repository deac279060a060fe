//! The one signature check of signed PKI objects that are not checked by path validation:
//! CRLs, OCSP responses, delegated OCSP signer certificates, CSRs' self-signatures, and the
//! "which of these certificates issued that one" questions of diagnostics.
//!
//! It accepts exactly the algorithms certificate paths are validated with
//! ([`SIGNATURE_ALGORITHMS`], rustls-webpki's aws-lc-rs implementations), chosen from the
//! signature's AlgorithmIdentifier and the key's as webpki chooses them. x509-parser's own
//! check accepts more (SHA-1 with RSA among them); it is not used for signatures.

use rustls_pki_types::SignatureVerificationAlgorithm;
use x509_parser::asn1_rs::{Any, BitString, FromDer as _, Tag};

use crate::{Error, Result};

/// Signature algorithms accepted in chains, CRLs and OCSP responses (aws-lc-rs
/// implementations): ECDSA on P-256/P-384/P-521, Ed25519, RSA 2048–8192 bits with PKCS#1 v1.5
/// or PSS and SHA-256/384/512. No SHA-1, no RSA below 2048 bits, no DSA.
pub static SIGNATURE_ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::aws_lc_rs::ECDSA_P256_SHA256,
    webpki::aws_lc_rs::ECDSA_P256_SHA384,
    webpki::aws_lc_rs::ECDSA_P384_SHA256,
    webpki::aws_lc_rs::ECDSA_P384_SHA384,
    webpki::aws_lc_rs::ECDSA_P521_SHA256,
    webpki::aws_lc_rs::ECDSA_P521_SHA384,
    webpki::aws_lc_rs::ECDSA_P521_SHA512,
    webpki::aws_lc_rs::ED25519,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA384,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA512,
    webpki::aws_lc_rs::RSA_PKCS1_3072_8192_SHA384,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// The three parts of a SIGNED{} structure (certificate, CRL, BasicOCSPResponse): the
/// to-be-signed bytes, the signature's AlgorithmIdentifier (DER) and the signature.
#[derive(Clone, Copy, Debug)]
pub struct SignedParts<'a> {
    tbs: &'a [u8],
    algorithm: &'a [u8],
    signature: &'a [u8],
}

impl<'a> SignedParts<'a> {
    /// Splits `der`, `SEQUENCE { tbs, signatureAlgorithm, signature BIT STRING, ... }`, as
    /// received (no re-encoding). Returns what follows the signature inside the SEQUENCE (a
    /// BasicOCSPResponse's certificates; nothing for certificates and CRLs).
    pub fn split(what: &'static str, der: &'a [u8]) -> Result<(Self, &'a [u8])> {
        let bad = |e: &dyn std::fmt::Display| Error::malformed(what, e.to_string());
        let (rest, outer) = Any::from_der(der).map_err(|e| bad(&e))?;
        if !rest.is_empty() || outer.tag() != Tag::Sequence {
            return Err(bad(&"not a single DER SEQUENCE"));
        }
        let content = outer.data;
        let take = |input: &'a [u8], tag: Tag| -> Result<(&'a [u8], &'a [u8])> {
            let (next, any) = Any::from_der(input).map_err(|e| bad(&e))?;
            if any.tag() != tag {
                return Err(bad(&format!("expected {tag:?}, found {:?}", any.tag())));
            }
            let raw = input
                .get(..input.len() - next.len())
                .ok_or_else(|| bad(&"truncated"))?;
            Ok((raw, next))
        };
        let (tbs, after_tbs) = take(content, Tag::Sequence)?;
        let (algorithm, after_alg) = take(after_tbs, Tag::Sequence)?;
        let (trailing, signature) = BitString::from_der(after_alg).map_err(|e| bad(&e))?;
        if signature.unused_bits != 0 {
            return Err(bad(&"the signature BIT STRING has unused bits"));
        }
        let signature = match signature.data {
            std::borrow::Cow::Borrowed(s) => s,
            std::borrow::Cow::Owned(_) => return Err(bad(&"the signature is not in DER")),
        };
        Ok((
            SignedParts {
                tbs,
                algorithm,
                signature,
            },
            trailing,
        ))
    }

    /// The to-be-signed bytes.
    pub fn tbs(&self) -> &'a [u8] {
        self.tbs
    }

    /// The signature's AlgorithmIdentifier (DER).
    pub fn algorithm(&self) -> &'a [u8] {
        self.algorithm
    }

    /// Checks that the key `spki_der` (a SubjectPublicKeyInfo, DER) made the signature (see
    /// [`verify_signature`]).
    pub fn verify(&self, spki_der: &[u8]) -> Result<()> {
        verify_signature(spki_der, self.algorithm, self.signature, self.tbs)
    }
}

/// Checks that the key `spki_der` (SubjectPublicKeyInfo, DER) signed `message` with
/// `signature` under `algorithm` (AlgorithmIdentifier, DER), with one of
/// [`SIGNATURE_ALGORITHMS`]: an algorithm outside that set is
/// [`Error::UnsupportedSignatureAlgorithm`] whatever the signature, a signature that does not
/// verify is [`Error::BadSignature`].
pub fn verify_signature(
    spki_der: &[u8],
    algorithm: &[u8],
    signature: &[u8],
    message: &[u8],
) -> Result<()> {
    let alg_id = contents_of(algorithm, "signature algorithm")?;
    let (key_alg_id, key) = spki_parts(spki_der)?;
    let mut named = SIGNATURE_ALGORITHMS
        .iter()
        .filter(|a| a.signature_alg_id().as_ref() == alg_id)
        .peekable();
    if named.peek().is_none() {
        return Err(Error::UnsupportedSignatureAlgorithm(algorithm_name(
            algorithm,
        )));
    }
    // Several entries share a signature algorithm (ECDSA with SHA-256 on each curve): the
    // key's algorithm (and curve) picks one, as webpki does.
    let alg = named
        .find(|a| a.public_key_alg_id().as_ref() == key_alg_id)
        .ok_or_else(|| {
            Error::UnsupportedSignatureAlgorithm(format!(
                "{} with this key type or curve",
                algorithm_name(algorithm)
            ))
        })?;
    alg.verify_signature(key, message, signature)
        .map_err(|_| Error::BadSignature)
}

/// Whether `issuer` issued `child`: `child` names `issuer`'s subject as its issuer and its
/// signature verifies with `issuer`'s key (under [`SIGNATURE_ALGORITHMS`]). Nothing else of
/// either certificate (validity, CA flag, key usage) is looked at: that is path validation.
pub fn issued_by(
    child: &x509_parser::certificate::X509Certificate<'_>,
    issuer: &x509_parser::certificate::X509Certificate<'_>,
) -> bool {
    child.issuer().as_raw() == issuer.subject().as_raw()
        && SignedParts::split("certificate", child.as_raw())
            .and_then(|(signed, _)| signed.verify(issuer.public_key().raw))
            .is_ok()
}

/// The contents of the DER SEQUENCE `der` (an AlgorithmIdentifier without its tag and length,
/// as webpki's algorithm identifiers are written).
fn contents_of<'a>(der: &'a [u8], what: &'static str) -> Result<&'a [u8]> {
    let (rest, any) = Any::from_der(der).map_err(|e| Error::malformed(what, e))?;
    if !rest.is_empty() || any.tag() != Tag::Sequence {
        return Err(Error::malformed(what, "not a single DER SEQUENCE"));
    }
    Ok(any.data)
}

/// The key's AlgorithmIdentifier contents and the subjectPublicKey bits.
fn spki_parts(spki_der: &[u8]) -> Result<(&[u8], &[u8])> {
    const WHAT: &str = "public key";
    let content = contents_of(spki_der, WHAT)?;
    let (after_alg, alg) = Any::from_der(content).map_err(|e| Error::malformed(WHAT, e))?;
    if alg.tag() != Tag::Sequence {
        return Err(Error::malformed(WHAT, "no algorithm identifier"));
    }
    let (rest, key) = BitString::from_der(after_alg).map_err(|e| Error::malformed(WHAT, e))?;
    if !rest.is_empty() || key.unused_bits != 0 {
        return Err(Error::malformed(WHAT, "bad subjectPublicKey"));
    }
    match key.data {
        std::borrow::Cow::Borrowed(key) => Ok((alg.data, key)),
        std::borrow::Cow::Owned(_) => Err(Error::malformed(WHAT, "not in DER")),
    }
}

/// The algorithm's short name (`sha1WithRSAEncryption`), else its OID.
fn algorithm_name(algorithm: &[u8]) -> String {
    use x509_parser::prelude::FromDer as _;
    match x509_parser::x509::AlgorithmIdentifier::from_der(algorithm) {
        Ok((_, alg)) => {
            x509_parser::objects::oid2sn(&alg.algorithm, x509_parser::objects::oid_registry())
                .map(str::to_string)
                .unwrap_or_else(|_| alg.algorithm.to_id_string())
        }
        Err(_) => "(unreadable)".to_string(),
    }
}
