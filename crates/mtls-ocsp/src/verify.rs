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

/// Shortest wait before asking again about an answer already past the midpoint of its life
/// (see [`VerifiedResponse::refresh_at`]).
pub const MIN_LATE_REFRESH: Duration = Duration::minutes(1);

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
    /// Until when the answer is current: its nextUpdate, or thisUpdate +
    /// [`NO_NEXT_UPDATE_MAX_AGE`] without one. Users keep it no longer than this.
    pub current_until: OffsetDateTime,
    /// The response's nonce octets, if any (compare with the request's).
    pub nonce: Option<Vec<u8>>,
    /// Whether a delegated OCSP signer (not the CA itself) signed.
    pub delegated: bool,
}

impl VerifiedResponse {
    /// When a holder of this answer (a stapler, a cache) received at `now` asks again: at the
    /// midpoint of its life (thisUpdate to [`current_until`](Self::current_until)).
    ///
    /// An answer already past its midpoint (a responder that pre-produces answers, RFC 5019,
    /// hands such ones out until it signs new ones) would be asked about again at once, and
    /// again after each answer: instead, after a quarter of what is left of it, at least
    /// [`MIN_LATE_REFRESH`], yet never later than halfway to its end (nor sooner than a
    /// second), so that a refresh still lands while the answer is current.
    pub fn refresh_at(&self, now: OffsetDateTime) -> OffsetDateTime {
        let life = self.current_until - self.this_update;
        if let Some(midpoint) = self.this_update.checked_add(life / 2_i32) {
            if midpoint > now {
                return midpoint;
            }
        }
        let left = (self.current_until - now).max(Duration::ZERO);
        let wait = (left / 4_i32)
            .max(MIN_LATE_REFRESH)
            .min(left / 2_i32)
            .max(Duration::SECOND);
        now.saturating_add(wait)
    }
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
                // Saturating: near the end of time's range every representable notBefore is
                // still compared exactly.
                if now.saturating_add(MAX_CLOCK_SKEW) < not_before || now > not_after {
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
    let not_current = || Error::NotCurrent {
        now,
        this_update,
        next_update,
    };
    // thisUpdate is the signer's: near year 9999 the addition overflows, and an answer whose
    // end cannot be told is not current.
    let current_until = match next_update {
        Some(next) => next,
        None => this_update
            .checked_add(NO_NEXT_UPDATE_MAX_AGE)
            .ok_or_else(not_current)?,
    };
    if this_update > now.saturating_add(MAX_CLOCK_SKEW) || current_until < now {
        return Err(not_current());
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
        current_until,
        nonce: data.nonce().map(|n| n.0.as_bytes().to_vec()),
        delegated,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{build_request, parse_request, Responder};
    use mtls_test_util::TestPki;
    use time::macros::datetime;

    /// A "good" about `serial` with these times, signed now by the intermediate.
    fn signed(
        pki: &TestPki,
        serial: &Serial,
        this_update: OffsetDateTime,
        next_update: Option<OffsetDateTime>,
    ) -> Vec<u8> {
        let issuer = IssuerInfo::from_der(pki.intermediate.der()).unwrap();
        let req = build_request(&issuer, serial, None).unwrap();
        let req = parse_request(&req, std::slice::from_ref(&issuer)).unwrap();
        let key = mtls_pki::PrivateKey::from_pem_or_der(pki.intermediate.key().pkcs8_der(), None)
            .unwrap();
        let responder = Responder::new(&issuer, pki.intermediate.der().to_vec(), key).unwrap();
        let produced_at = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        responder
            .sign(
                &req,
                &[CertStatus::Good],
                produced_at,
                this_update,
                next_update,
            )
            .unwrap()
    }

    #[test]
    fn refresh_at_the_midpoint_and_back_off_past_it() {
        let t0 = datetime!(2030-01-01 00:00:00 UTC);
        let answer = |this: OffsetDateTime, until: OffsetDateTime| VerifiedResponse {
            status: CertStatus::Good,
            produced_at: this,
            this_update: this,
            next_update: Some(until),
            current_until: until,
            nonce: None,
            delegated: false,
        };
        let m = Duration::minutes;
        // Fresh: the midpoint (for an answer without nextUpdate, half its 5 minutes).
        let a = answer(t0, t0 + Duration::hours(2));
        assert_eq!(a.refresh_at(t0), t0 + Duration::hours(1));
        assert_eq!(a.refresh_at(t0 + m(59)), t0 + Duration::hours(1));
        let a = answer(t0, t0 + NO_NEXT_UPDATE_MAX_AGE);
        assert_eq!(a.refresh_at(t0), t0 + Duration::seconds(150));
        // Past the midpoint: a quarter of what is left...
        let a = answer(t0, t0 + Duration::days(4));
        let now = t0 + Duration::days(3);
        assert_eq!(a.refresh_at(now), now + Duration::hours(6));
        // ...at least MIN_LATE_REFRESH (not every second)...
        let a = answer(t0, t0 + m(10));
        let now = t0 + m(8);
        assert_eq!(a.refresh_at(now), now + MIN_LATE_REFRESH);
        // ...yet halfway to the end when less than two of those are left...
        let now = t0 + m(9);
        assert_eq!(a.refresh_at(now), now + Duration::seconds(30));
        // ...and a second when none is.
        let now = t0 + m(10);
        assert_eq!(a.refresh_at(now), now + Duration::SECOND);
        // Near the end of time's range: no panic.
        let end = datetime!(9999-12-31 23:59:59 UTC);
        let a = answer(end - m(2), end);
        assert_eq!(a.refresh_at(end - m(1)), end - m(1) + Duration::seconds(30));
        assert!(a.refresh_at(end) >= end);
    }

    #[test]
    fn times_at_the_end_of_the_range_are_not_current_and_do_not_panic() {
        let pki = TestPki::new("y9999");
        let leaf = pki.client("c");
        let serial = &leaf.cert.serial;
        let issuer = pki.intermediate.der();
        let last = datetime!(9999-12-31 23:59:59 UTC);
        let late = datetime!(9999-12-31 23:58:00 UTC);
        let now = OffsetDateTime::now_utc();
        let not_current = |r: Result<VerifiedResponse>| {
            assert!(matches!(r, Err(Error::NotCurrent { .. })), "{r:?}");
        };
        // Signed thisUpdate 2 minutes before the end: with or without nextUpdate, refused
        // today (in the future).
        for next in [Some(last), None] {
            let der = signed(&pki, serial, late, next);
            not_current(verify_response(&der, issuer, serial, now));
        }
        // Without nextUpdate, refused then too: its end is not representable.
        let der = signed(&pki, serial, late, None);
        not_current(verify_response(&der, issuer, serial, late));
        // With a nextUpdate it is current then, until that nextUpdate.
        let der = signed(&pki, serial, late, Some(last));
        let v = verify_response(&der, issuer, serial, late).unwrap();
        assert_eq!(v.status, CertStatus::Good);
        assert_eq!(v.current_until, last);
        // An ordinary answer without nextUpdate is current for NO_NEXT_UPDATE_MAX_AGE.
        let this = now.replace_nanosecond(0).unwrap() - Duration::minutes(1);
        let der = signed(&pki, serial, this, None);
        let v = verify_response(&der, issuer, serial, now).unwrap();
        assert_eq!(v.current_until, this + NO_NEXT_UPDATE_MAX_AGE);
        not_current(verify_response(
            &der,
            issuer,
            serial,
            this + NO_NEXT_UPDATE_MAX_AGE + Duration::seconds(1),
        ));
    }
}
