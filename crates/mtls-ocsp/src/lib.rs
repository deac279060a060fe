//! `mtls-ocsp`: the core of an OCSP responder (RFC 6960, with the RFC 5019 lightweight
//! profile).
//!
//! What it does: describes issuing CAs for CertID matching ([`IssuerInfo`]: SHA-1 and SHA-256
//! name and key hashes, plus the inventory's issuer key); parses DER OCSP requests strictly
//! ([`parse_request`]: no trailing bytes, 1 to [`MAX_REQUEST_ITEMS`] certificates, SHA-1 or
//! SHA-256 CertIDs, unknown critical extensions refused, nonce picked up) and the base64 path of
//! `GET` requests ([`decode_get_path`]); signs `BasicOCSPResponse`s with the issuing CA or a
//! delegated OCSP signer ([`Responder`]: responderID byKey, one `SingleResponse` per requested
//! CertID echoed as received, reasons, nonce echo); encodes the unsigned error responses
//! ([`error_response`]); and checks a response the way a relying party does
//! ([`verify_response`]: signature, responder authorization, CertID, freshness), which our own
//! tests use.
//!
//! For relying parties it also builds requests ([`build_request`]) and reads a certificate's
//! responder URLs ([`responder_urls`]).
//!
//! What it does not do: HTTP, I/O, databases or reading the clock. The caller looks the status
//! of each requested serial up (in the inventory), passes every time in, chooses the responder
//! for the request's issuer, and answers `unauthorized` for issuers it does not serve (RFC 5019
//! 2.2.3). Signed requests are accepted but their signature is not checked (no client
//! authentication at the OCSP layer). Responses are not cached here.
//!
//! Types from `x509-ocsp` (the der 0.7 generation of RustCrypto) stay inside this crate: its
//! API speaks DER bytes, [`mtls_pki`] types and `time`.
#![forbid(unsafe_code)]

mod client;
mod error;
mod issuer;
mod request;
mod response;
mod verify;

pub use client::{build_request, responder_urls};
pub use error::Error;
pub use issuer::{CertIdHash, IssuerInfo};
pub use request::{
    decode_get_path, parse_request, OcspRequest, RequestItem, MAX_GET_PATH_LEN, MAX_NONCE_LEN,
    MAX_REQUEST_BYTES, MAX_REQUEST_ITEMS,
};
pub use response::{error_response, CertStatus, Responder, ResponseStatus};
pub use verify::{
    verify_response, VerifiedResponse, MAX_CLOCK_SKEW, MIN_LATE_REFRESH, NO_NEXT_UPDATE_MAX_AGE,
};

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `time` ⇄ ASN.1 GeneralizedTime (second precision, as RFC 5280 DER requires).
pub(crate) mod times {
    use std::time::Duration as StdDuration;

    use time::OffsetDateTime;
    use x509_cert_02::der::asn1::GeneralizedTime;
    use x509_ocsp::OcspGeneralizedTime;

    use crate::{Error, Result};

    pub(crate) fn to_asn1(t: OffsetDateTime) -> Result<OcspGeneralizedTime> {
        let secs = u64::try_from(t.unix_timestamp())
            .map_err(|_| Error::InvalidTime(format!("{t} is before 1970")))?;
        GeneralizedTime::from_unix_duration(StdDuration::from_secs(secs))
            .map(OcspGeneralizedTime)
            .map_err(|e| Error::InvalidTime(format!("{t}: {e}")))
    }

    pub(crate) fn from_asn1(t: &OcspGeneralizedTime) -> Result<OffsetDateTime> {
        let secs = i64::try_from(t.0.to_unix_duration().as_secs())
            .map_err(|_| Error::InvalidTime("GeneralizedTime out of range".into()))?;
        OffsetDateTime::from_unix_timestamp(secs)
            .map_err(|e| Error::InvalidTime(format!("GeneralizedTime out of range: {e}")))
    }
}
