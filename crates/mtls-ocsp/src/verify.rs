//! Checking an OCSP response as a relying party does (used by our tests; usable by clients).

use mtls_pki::Serial;
use time::{Duration, OffsetDateTime};
use x509_cert_02::der::oid::db::rfc6960::ID_PKIX_OCSP_BASIC;
use x509_cert_02::der::{Decode, Encode};
use x509_ocsp::{BasicOcspResponse, OcspResponse, ResponderId};

use crate::response::{check_delegation, reason_from_asn1};
use crate::{times, CertIdHash, CertStatus, Error, IssuerInfo, ResponseStatus, Result};

/// Clock skew tolerated on thisUpdate (and on the signer's validity) when verifying.
pub const MAX_CLOCK_SKEW: Duration = Duration::minutes(5);

/// How long after its thisUpdate an answer without nextUpdate ("newer information is always
/// available", RFC 6960 4.2.2.1) is taken as current: without this bound a "good" captured
/// before a revocation could be replayed for ever.
pub const NO_NEXT_UPDATE_MAX_AGE: Duration = Duration::minutes(5);

/// What a verified response says about the certificate asked about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedResponse {
    /// The status of the certificate.
    pub status: CertStatus,
    /// When the response was signed.
    pub produced_at: OffsetDateTime,
    /// thisUpdate of the matching SingleResponse.
    pub this_update: OffsetDateTime,
    /// nextUpdate of the matching SingleResponse.
    pub next_update: Option<OffsetDateTime>,
    /// The response's nonce octets, if any (compare with the request's).
    pub nonce: Option<Vec<u8>>,
    /// Whether a delegated OCSP signer (not the CA itself) signed.
    pub delegated: bool,
}

/// Verifies a DER `OCSPResponse` about `serial` issued by `issuer_cert_der`, at `now`.
///
/// Checks: status `successful`, a DER `BasicOCSPResponse`; the signer is the CA (responderID
/// byKey or byName) or a certificate in `certs` that matches the responderID, was issued by the
/// CA, carries id-kp-OCSPSigning and is valid at `now`; the signature; a SingleResponse whose
/// CertID names this issuer and serial; thisUpdate not after `now` + [`MAX_CLOCK_SKEW`] and
/// nextUpdate not before `now` (without nextUpdate: thisUpdate at most
/// [`NO_NEXT_UPDATE_MAX_AGE`] ago). The nonce is returned, not compared.
pub fn verify_response(
    der: &[u8],
    issuer_cert_der: &[u8],
    serial: &Serial,
    now: OffsetDateTime,
) -> Result<VerifiedResponse> {
    let issuer = IssuerInfo::from_der(issuer_cert_der)?;
    let response = OcspResponse::from_der(der).map_err(|e| Error::malformed("OCSP response", e))?;
    if let Some(status) = ResponseStatus::from_asn1(response.response_status) {
        return Err(Error::ResponseStatus(status));
    }
    let bytes = response
        .response_bytes
        .ok_or_else(|| Error::malformed("OCSP response", "successful without responseBytes"))?;
    if bytes.response_type != ID_PKIX_OCSP_BASIC {
        return Err(Error::malformed(
            "OCSP response",
            format!("unsupported response type {}", bytes.response_type),
        ));
    }
    let basic_der = bytes.response.as_bytes();
    let basic = BasicOcspResponse::from_der(basic_der)
        .map_err(|e| Error::malformed("BasicOCSPResponse", e))?;
    // The signature is checked over the received tbsResponseData; what was parsed must be
    // exactly that, so insist on DER (re-encoding gives the same bytes only for DER input).
    if basic.to_der().map_err(Error::encode)? != basic_der {
        return Err(Error::malformed("BasicOCSPResponse", "not DER"));
    }
    let data = &basic.tbs_response_data;

    // Who signed?
    let names_issuer = match &data.responder_id {
        ResponderId::ByKey(hash) => hash.as_bytes() == issuer.key_sha1(),
        ResponderId::ByName(name) => {
            name.to_der().map_err(Error::encode)?.as_slice() == issuer.subject_der()
        }
    };
    let (signer_spki_der, delegated) = if names_issuer {
        (issuer.spki_der().to_vec(), false)
    } else {
        let mut found = None;
        for cert in basic.certs.iter().flatten() {
            let cert_der = cert.to_der().map_err(Error::encode)?;
            let parsed = mtls_pki::pem_io::parse_certificate(&cert_der).map_err(|source| {
                Error::Certificate {
                    what: "certificate in the OCSP response",
                    source,
                }
            })?;
            let matches = match &data.responder_id {
                ResponderId::ByKey(hash) => {
                    CertIdHash::Sha1.digest(&parsed.public_key().subject_public_key.data)
                        == hash.as_bytes()
                }
                ResponderId::ByName(name) => {
                    name.to_der().map_err(Error::encode)?.as_slice() == parsed.subject().as_raw()
                }
            };
            if matches {
                check_delegation(&parsed, &issuer)?;
                let not_before = parsed.validity().not_before.to_datetime();
                let not_after = parsed.validity().not_after.to_datetime();
                if now + MAX_CLOCK_SKEW < not_before || now > not_after {
                    return Err(Error::SignerNotValid {
                        at: now,
                        not_before,
                        not_after,
                    });
                }
                found = Some(parsed.public_key().raw.to_vec());
                break;
            }
        }
        let spki = found.ok_or(Error::SignerNotAuthorized(
            "the responderID names neither the CA nor a certificate in the response",
        ))?;
        (spki, true)
    };

    // The signature, over the tbsResponseData as received.
    let (signed, _certs) = mtls_pki::signature::SignedParts::split("BasicOCSPResponse", basic_der)
        .map_err(|e| Error::malformed("BasicOCSPResponse", e))?;
    signed.verify(&signer_spki_der).map_err(Error::signature)?;

    // The answer about this certificate.
    let single = data
        .responses
        .iter()
        .find(|r| {
            let id = &r.cert_id;
            CertIdHash::from_oid(&id.hash_algorithm.oid).is_some_and(|h| {
                issuer.matches(
                    h,
                    id.issuer_name_hash.as_bytes(),
                    id.issuer_key_hash.as_bytes(),
                )
            }) && Serial::from_be_bytes(id.serial_number.as_bytes()) == *serial
        })
        .ok_or_else(|| Error::NoMatchingResponse(serial.clone()))?;
    let this_update = times::from_asn1(&single.this_update)?;
    let next_update = single
        .next_update
        .as_ref()
        .map(times::from_asn1)
        .transpose()?;
    let expires = next_update.unwrap_or(this_update + NO_NEXT_UPDATE_MAX_AGE);
    if this_update > now + MAX_CLOCK_SKEW || expires < now {
        return Err(Error::NotCurrent {
            now,
            this_update,
            next_update,
        });
    }
    let status = match &single.cert_status {
        x509_ocsp::CertStatus::Good(_) => CertStatus::Good,
        x509_ocsp::CertStatus::Revoked(info) => CertStatus::Revoked {
            at: times::from_asn1(&info.revocation_time)?,
            reason: info.revocation_reason.and_then(reason_from_asn1),
        },
        x509_ocsp::CertStatus::Unknown(_) => CertStatus::Unknown,
    };
    Ok(VerifiedResponse {
        status,
        produced_at: times::from_asn1(&data.produced_at)?,
        this_update,
        next_update,
        nonce: data.nonce().map(|n| n.0.as_bytes().to_vec()),
        delegated,
    })
}
