//! Signing OCSP responses, and the unsigned error responses.

use std::fmt;
use std::sync::Arc;

use mtls_pki::revocation::RevocationReason;
use mtls_pki::{PrivateKey, Serial};
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};
use time::OffsetDateTime;
use x509_cert_02::der::asn1::{BitString, Null, OctetString};
use x509_cert_02::der::oid::db::{rfc5912, rfc8410};
use x509_cert_02::der::{Decode, Encode};
use x509_cert_02::ext::pkix::CrlReason;
use x509_cert_02::spki::AlgorithmIdentifierOwned;
use x509_cert_02::Certificate;
use x509_ocsp::{
    BasicOcspResponse, OcspResponse, OcspResponseStatus, ResponderId, ResponseData, RevokedInfo,
    SingleResponse, Version,
};

use crate::{times, Error, IssuerInfo, OcspRequest, Result};

/// The status of one certificate, as the caller found it in the inventory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertStatus {
    /// Issued by this CA and not revoked.
    Good,
    /// Revoked at `at`, with an optional reason.
    Revoked {
        at: OffsetDateTime,
        reason: Option<RevocationReason>,
    },
    /// Not known to this CA (never issued, or no longer tracked).
    Unknown,
}

/// The unsuccessful OCSP response statuses (RFC 6960 4.2.1); they carry no signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseStatus {
    /// The request could not be parsed or breaks the protocol.
    MalformedRequest,
    /// The responder failed.
    InternalError,
    /// The responder cannot answer now (e.g. its database is unavailable).
    TryLater,
    /// The responder wants signed requests.
    SigRequired,
    /// The responder does not answer for this issuer (RFC 5019 2.2.3).
    Unauthorized,
}

impl ResponseStatus {
    fn to_asn1(self) -> OcspResponseStatus {
        match self {
            ResponseStatus::MalformedRequest => OcspResponseStatus::MalformedRequest,
            ResponseStatus::InternalError => OcspResponseStatus::InternalError,
            ResponseStatus::TryLater => OcspResponseStatus::TryLater,
            ResponseStatus::SigRequired => OcspResponseStatus::SigRequired,
            ResponseStatus::Unauthorized => OcspResponseStatus::Unauthorized,
        }
    }

    pub(crate) fn from_asn1(status: OcspResponseStatus) -> Option<Self> {
        Some(match status {
            OcspResponseStatus::Successful => return None,
            OcspResponseStatus::MalformedRequest => ResponseStatus::MalformedRequest,
            OcspResponseStatus::InternalError => ResponseStatus::InternalError,
            OcspResponseStatus::TryLater => ResponseStatus::TryLater,
            OcspResponseStatus::SigRequired => ResponseStatus::SigRequired,
            OcspResponseStatus::Unauthorized => ResponseStatus::Unauthorized,
        })
    }
}

impl fmt::Display for ResponseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResponseStatus::MalformedRequest => "malformedRequest",
            ResponseStatus::InternalError => "internalError",
            ResponseStatus::TryLater => "tryLater",
            ResponseStatus::SigRequired => "sigRequired",
            ResponseStatus::Unauthorized => "unauthorized",
        })
    }
}

/// The DER `OCSPResponse` for an unsuccessful status (`SEQUENCE { ENUMERATED }`, 5 bytes).
pub fn error_response(status: ResponseStatus) -> Vec<u8> {
    let response = OcspResponse {
        response_status: status.to_asn1(),
        response_bytes: None,
    };
    // Encoding a one-field SEQUENCE cannot fail; the unit test pins every status's bytes.
    response.to_der().unwrap_or_default()
}

/// An `rcgen::SigningKey` over a shared [`PrivateKey`].
struct SharedKey(Arc<PrivateKey>);

impl PublicKeyData for SharedKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.key_pair().der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.0.key_pair().algorithm()
    }
}

impl SigningKey for SharedKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        self.0.key_pair().sign(msg)
    }
}

/// The X.509 AlgorithmIdentifier of what `key` signs with (the same mapping rcgen uses for
/// certificates: ECDSA P-256 → ecdsa-with-SHA256, P-384 → ecdsa-with-SHA384, Ed25519,
/// RSA → sha256WithRSAEncryption (or SHA-384/512 for keys set up that way)).
fn signature_algorithm(key: &dyn SigningKey) -> Result<AlgorithmIdentifierOwned> {
    let alg = key.algorithm();
    let (oid, null_params) = if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        (rfc5912::ECDSA_WITH_SHA_256, false)
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        (rfc5912::ECDSA_WITH_SHA_384, false)
    } else if alg == &rcgen::PKCS_ED25519 {
        (rfc8410::ID_ED_25519, false)
    } else if alg == &rcgen::PKCS_RSA_SHA256 {
        (rfc5912::SHA_256_WITH_RSA_ENCRYPTION, true)
    } else if alg == &rcgen::PKCS_RSA_SHA384 {
        (rfc5912::SHA_384_WITH_RSA_ENCRYPTION, true)
    } else if alg == &rcgen::PKCS_RSA_SHA512 {
        (rfc5912::SHA_512_WITH_RSA_ENCRYPTION, true)
    } else {
        return Err(Error::UnsupportedKey(format!("{alg:?}")));
    };
    Ok(AlgorithmIdentifierOwned {
        oid,
        parameters: null_params.then(|| Null.into()),
    })
}

fn reason_to_asn1(reason: RevocationReason) -> CrlReason {
    match reason {
        RevocationReason::Unspecified => CrlReason::Unspecified,
        RevocationReason::KeyCompromise => CrlReason::KeyCompromise,
        RevocationReason::CaCompromise => CrlReason::CaCompromise,
        RevocationReason::AffiliationChanged => CrlReason::AffiliationChanged,
        RevocationReason::Superseded => CrlReason::Superseded,
        RevocationReason::CessationOfOperation => CrlReason::CessationOfOperation,
        RevocationReason::CertificateHold => CrlReason::CertificateHold,
        RevocationReason::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
        RevocationReason::AaCompromise => CrlReason::AaCompromise,
    }
}

pub(crate) fn reason_from_asn1(reason: CrlReason) -> Option<RevocationReason> {
    Some(match reason {
        CrlReason::Unspecified => RevocationReason::Unspecified,
        CrlReason::KeyCompromise => RevocationReason::KeyCompromise,
        CrlReason::CaCompromise => RevocationReason::CaCompromise,
        CrlReason::AffiliationChanged => RevocationReason::AffiliationChanged,
        CrlReason::Superseded => RevocationReason::Superseded,
        CrlReason::CessationOfOperation => RevocationReason::CessationOfOperation,
        CrlReason::CertificateHold => RevocationReason::CertificateHold,
        CrlReason::RemoveFromCRL => return None,
        CrlReason::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        CrlReason::AaCompromise => RevocationReason::AaCompromise,
    })
}

/// Signs OCSP responses for one issuing CA, either with the CA's own key or with a delegated
/// OCSP signer the CA issued (id-kp-OCSPSigning; see `mtls_pki::issue::issue_ocsp_signer`).
pub struct Responder {
    issuer: IssuerInfo,
    /// Present for a delegated signer: sent in `certs` so clients can check the delegation.
    delegated_cert: Option<Certificate>,
    key_hash: OctetString,
    signature_algorithm: AlgorithmIdentifierOwned,
    key: Arc<dyn SigningKey + Send + Sync>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    signer_serial: Serial,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("issuer", &self.issuer.subject())
            .field("delegated", &self.delegated_cert.is_some())
            .field("signature_algorithm", &self.signature_algorithm.oid)
            .field("not_after", &self.not_after)
            .field("key", &"[secret key elided]")
            .finish()
    }
}

impl Responder {
    /// A responder for `issuer` signing with `signer_cert_der` and its private key (owned, or
    /// an `Arc` shared with the issuing code).
    ///
    /// The signer is either the issuing CA itself (same public key) or a delegated OCSP signer:
    /// issued by `issuer` (name and signature checked), with the id-kp-OCSPSigning EKU, not a
    /// CA, and with digitalSignature if it has a keyUsage. A delegated signer's certificate is
    /// sent in every response's `certs`; the CA's own is not.
    pub fn new(
        issuer: &IssuerInfo,
        signer_cert_der: Vec<u8>,
        key: impl Into<Arc<PrivateKey>>,
    ) -> Result<Self> {
        Self::with_signing_key(issuer, signer_cert_der, Arc::new(SharedKey(key.into())))
    }

    /// Like [`Responder::new`] with any `rcgen::SigningKey` (an HSM or KMS key, for example)
    /// that produces X.509 signatures (DER-encoded for ECDSA).
    pub fn with_signing_key(
        issuer: &IssuerInfo,
        signer_cert_der: Vec<u8>,
        key: Arc<dyn SigningKey + Send + Sync>,
    ) -> Result<Self> {
        let signature_algorithm = signature_algorithm(key.as_ref())?;
        let cert = mtls_pki::pem_io::parse_certificate(&signer_cert_der).map_err(|source| {
            Error::Certificate {
                what: "OCSP signer certificate",
                source,
            }
        })?;
        let key_bits = cert.public_key().subject_public_key.data.as_ref();
        if key.der_bytes() != key_bits {
            return Err(Error::KeyMismatch);
        }
        let delegated = if cert.public_key().raw == issuer.spki_der() {
            if cert.subject().as_raw() != issuer.subject_der() {
                return Err(Error::SignerNotAuthorized(
                    "the signer has the issuer's key but another name",
                ));
            }
            false
        } else {
            check_delegation(&cert, issuer)?;
            true
        };
        let key_hash =
            OctetString::new(crate::CertIdHash::Sha1.digest(key_bits)).map_err(Error::encode)?;
        let delegated_cert = if delegated {
            Some(
                Certificate::from_der(&signer_cert_der)
                    .map_err(|e| Error::malformed("OCSP signer certificate", e))?,
            )
        } else {
            None
        };
        Ok(Responder {
            issuer: issuer.clone(),
            delegated_cert,
            key_hash,
            signature_algorithm,
            key,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            signer_serial: Serial::from_be_bytes(cert.raw_serial()),
        })
    }

    /// The issuer this responder answers for.
    pub fn issuer(&self) -> &IssuerInfo {
        &self.issuer
    }

    /// Whether the signer is a delegated OCSP signer (and not the CA itself).
    pub fn is_delegated(&self) -> bool {
        self.delegated_cert.is_some()
    }

    /// Serial of the signer certificate (the CA's own when not delegated).
    pub fn signer_serial(&self) -> &Serial {
        &self.signer_serial
    }

    /// End of the signer certificate's validity (rotate a delegated signer before it).
    pub fn signer_not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Signs a successful response: one `SingleResponse` per request item (in order, its CertID
    /// echoed), `statuses[i]` for `req.items[i]`, `thisUpdate`/`nextUpdate` on each, responderID
    /// byKey, the request's nonce echoed.
    ///
    /// Fails when the counts differ, when an item is for another issuer
    /// ([`Error::IssuerMismatch`]: answer `unauthorized`), when `next_update` is not after
    /// `this_update`, or when the signer certificate is not valid at `produced_at`.
    pub fn sign(
        &self,
        req: &OcspRequest,
        statuses: &[CertStatus],
        produced_at: OffsetDateTime,
        this_update: OffsetDateTime,
        next_update: Option<OffsetDateTime>,
    ) -> Result<Vec<u8>> {
        if statuses.len() != req.items.len() {
            return Err(Error::StatusCountMismatch {
                items: req.items.len(),
                statuses: statuses.len(),
            });
        }
        if let Some(index) = req.items.iter().position(|i| !i.is_for(&self.issuer)) {
            return Err(Error::IssuerMismatch { index });
        }
        if produced_at < self.not_before || produced_at > self.not_after {
            return Err(Error::SignerNotValid {
                at: produced_at,
                not_before: self.not_before,
                not_after: self.not_after,
            });
        }
        if next_update.is_some_and(|n| n <= this_update) {
            return Err(Error::InvalidTime(
                "nextUpdate must be after thisUpdate".into(),
            ));
        }
        let this = times::to_asn1(this_update)?;
        let next = next_update.map(times::to_asn1).transpose()?;
        let responses = req
            .items
            .iter()
            .zip(statuses)
            .map(|(item, status)| {
                Ok(SingleResponse {
                    cert_id: item.cert_id.clone(),
                    cert_status: match status {
                        CertStatus::Good => x509_ocsp::CertStatus::good(),
                        CertStatus::Revoked { at, reason } => {
                            x509_ocsp::CertStatus::revoked(RevokedInfo {
                                revocation_time: times::to_asn1(*at)?,
                                revocation_reason: reason.map(reason_to_asn1),
                            })
                        }
                        CertStatus::Unknown => x509_ocsp::CertStatus::unknown(),
                    },
                    this_update: this,
                    next_update: next,
                    single_extensions: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tbs_response_data = ResponseData {
            version: Version::V1,
            responder_id: ResponderId::ByKey(self.key_hash.clone()),
            produced_at: times::to_asn1(produced_at)?,
            responses,
            response_extensions: req.nonce_ext.clone().map(|ext| vec![ext]),
        };
        let tbs = tbs_response_data.to_der().map_err(Error::encode)?;
        let signature = self.key.sign(&tbs)?;
        let basic = BasicOcspResponse {
            tbs_response_data,
            signature_algorithm: self.signature_algorithm.clone(),
            signature: BitString::from_bytes(&signature).map_err(Error::encode)?,
            certs: self.delegated_cert.clone().map(|c| vec![c]),
        };
        OcspResponse::successful(basic)
            .and_then(|r| r.to_der())
            .map_err(Error::encode)
    }
}

/// A delegated signer must be issued by `issuer` and carry id-kp-OCSPSigning (RFC 6960 4.2.2.2).
pub(crate) fn check_delegation(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    issuer: &IssuerInfo,
) -> Result<()> {
    if cert.issuer().as_raw() != issuer.subject_der() {
        return Err(Error::SignerNotAuthorized(
            "the signer certificate was not issued by this CA (issuer name differs)",
        ));
    }
    let (signed, _) = mtls_pki::signature::SignedParts::split("certificate", cert.as_raw())
        .map_err(|e| Error::malformed("OCSP signer certificate", e))?;
    match signed.verify(issuer.spki_der()) {
        Ok(()) => {}
        Err(mtls_pki::Error::BadSignature) => {
            return Err(Error::SignerNotAuthorized(
                "the signer certificate's signature does not verify with the CA's key",
            ))
        }
        Err(e) => return Err(Error::signature(e)),
    }
    let ocsp_signing = matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.ocsp_signing);
    if !ocsp_signing {
        return Err(Error::SignerNotAuthorized(
            "the signer certificate lacks the id-kp-OCSPSigning EKU",
        ));
    }
    if matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
        return Err(Error::SignerNotAuthorized(
            "a delegated OCSP signer must not be a CA",
        ));
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.digital_signature() => Err(Error::SignerNotAuthorized(
            "the signer certificate's keyUsage lacks digitalSignature",
        )),
        Err(_) => Err(Error::SignerNotAuthorized(
            "the signer certificate's keyUsage is malformed",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_are_a_bare_enumerated_status() {
        for (status, code) in [
            (ResponseStatus::MalformedRequest, 1),
            (ResponseStatus::InternalError, 2),
            (ResponseStatus::TryLater, 3),
            (ResponseStatus::SigRequired, 5),
            (ResponseStatus::Unauthorized, 6),
        ] {
            assert_eq!(error_response(status), [0x30, 0x03, 0x0a, 0x01, code]);
            assert_eq!(
                ResponseStatus::from_asn1(status.to_asn1()),
                Some(status),
                "{status}"
            );
        }
        assert_eq!(
            ResponseStatus::from_asn1(OcspResponseStatus::Successful),
            None
        );
    }

    #[test]
    fn every_revocation_reason_round_trips() {
        use RevocationReason as R;
        for r in [
            R::Unspecified,
            R::KeyCompromise,
            R::CaCompromise,
            R::AffiliationChanged,
            R::Superseded,
            R::CessationOfOperation,
            R::CertificateHold,
            R::PrivilegeWithdrawn,
            R::AaCompromise,
        ] {
            assert_eq!(reason_from_asn1(reason_to_asn1(r)), Some(r));
        }
        assert_eq!(reason_from_asn1(CrlReason::RemoveFromCRL), None);
    }

    #[test]
    fn times_before_1970_are_refused_and_subseconds_dropped() {
        use time::macros::datetime;
        assert!(crate::times::to_asn1(datetime!(1969-12-31 23:59:59 UTC)).is_err());
        let t = datetime!(2030-01-02 03:04:05.678 UTC);
        let back = crate::times::from_asn1(&crate::times::to_asn1(t).unwrap()).unwrap();
        assert_eq!(back, datetime!(2030-01-02 03:04:05 UTC));
    }
}
