use time::OffsetDateTime;

use crate::ResponseStatus;

/// Everything that can go wrong in the OCSP core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input could not be decoded (DER, base64, percent-encoding) or breaks the protocol.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// The request is larger than this responder accepts.
    #[error("the OCSP request is {len} bytes (at most {max})")]
    TooLarge { len: usize, max: usize },
    /// The request lists no certificate.
    #[error("the OCSP request lists no certificate")]
    EmptyRequest,
    /// The request lists more certificates than this responder answers at once.
    #[error("the OCSP request lists {count} certificates (at most {max})")]
    TooManyItems { count: usize, max: usize },
    /// A CertID is hashed with an algorithm other than SHA-1 or SHA-256.
    #[error("unsupported CertID hash algorithm {0} (SHA-1 and SHA-256 are supported)")]
    UnsupportedHashAlgorithm(String),
    /// The request carries a critical extension this responder does not understand.
    #[error("unsupported critical extension {0} in the OCSP request")]
    UnsupportedCriticalExtension(String),
    /// The request accepts no response type this responder produces.
    #[error("the OCSP request does not accept id-pkix-ocsp-basic responses")]
    UnsupportedResponseType,
    /// A certificate given to this crate could not be used.
    #[error("{what}: {source}")]
    Certificate {
        what: &'static str,
        #[source]
        source: mtls_pki::Error,
    },
    /// The issuer certificate is not a CA.
    #[error("{0} is not a CA certificate")]
    NotACa(String),
    /// The private key does not belong to the signer certificate.
    #[error("the private key does not match the OCSP signer certificate's public key")]
    KeyMismatch,
    /// The signer is neither the issuing CA nor a delegated OCSP signer it issued.
    #[error("the OCSP signer may not answer for this issuer: {0}")]
    SignerNotAuthorized(&'static str),
    /// The signer certificate is not valid at the time of signing or verifying.
    #[error("the OCSP signer certificate is not valid at {}: it is valid from {} to {}", mtls_pki::rfc3339(.at), mtls_pki::rfc3339(.not_before), mtls_pki::rfc3339(.not_after))]
    SignerNotValid {
        at: OffsetDateTime,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    /// The signing key's algorithm has no signature algorithm mapping here.
    #[error("unsupported OCSP signing key: {0}")]
    UnsupportedKey(String),
    /// `sign` was given a status count that differs from the request's item count.
    #[error("{statuses} statuses given for {items} requested certificates")]
    StatusCountMismatch { items: usize, statuses: usize },
    /// A requested CertID names an issuer other than the responder's.
    #[error("request item {index} is not for the issuer this responder answers for")]
    IssuerMismatch { index: usize },
    /// A time cannot be encoded, or the times given make no sense.
    #[error("invalid time: {0}")]
    InvalidTime(String),
    /// The signing key failed.
    #[error("signing the OCSP response failed: {0}")]
    Signing(#[from] rcgen::Error),
    /// DER encoding failed.
    #[error("DER encoding failed: {0}")]
    Encode(String),
    /// The response is not `successful` (verification).
    #[error("the OCSP response status is {0}")]
    ResponseStatus(ResponseStatus),
    /// The response's signature does not verify under the signer's key (verification).
    #[error("the OCSP response signature does not verify: {0}")]
    BadSignature(String),
    /// The response, or the delegated signer's certificate, is signed with an algorithm
    /// outside `mtls_pki::signature::SIGNATURE_ALGORITHMS` (SHA-1 with RSA, for one).
    #[error("the OCSP response is refused: {0}")]
    UnsupportedSignatureAlgorithm(#[source] mtls_pki::Error),
    /// The response has no SingleResponse for the serial and issuer asked about (verification).
    #[error("the OCSP response has no answer for serial {0} from this issuer")]
    NoMatchingResponse(mtls_pki::Serial),
    /// The response's thisUpdate is in the future or its nextUpdate in the past (verification).
    #[error("the OCSP response is not current at {}: thisUpdate {}, nextUpdate {}", mtls_pki::rfc3339(.now), mtls_pki::rfc3339(.this_update), mtls_pki::rfc3339_opt(.next_update))]
    NotCurrent {
        now: OffsetDateTime,
        this_update: OffsetDateTime,
        next_update: Option<OffsetDateTime>,
    },
}

impl Error {
    pub(crate) fn malformed(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Malformed {
            what,
            detail: detail.to_string(),
        }
    }

    pub(crate) fn encode(e: impl std::fmt::Display) -> Self {
        Self::Encode(e.to_string())
    }

    /// A failed signature check (see `mtls_pki::signature::verify_signature`).
    pub(crate) fn signature(e: mtls_pki::Error) -> Self {
        match e {
            e @ mtls_pki::Error::UnsupportedSignatureAlgorithm(_) => {
                Self::UnsupportedSignatureAlgorithm(e)
            }
            other => Self::BadSignature(other.to_string()),
        }
    }

    /// The OCSP response status a responder sends when handling a request failed with this
    /// error: `malformedRequest` for bad requests, `unauthorized` for a CertID of another issuer
    /// (RFC 5019 2.2.3), `internalError` for everything else.
    pub fn response_status(&self) -> ResponseStatus {
        match self {
            Error::Malformed { .. }
            | Error::TooLarge { .. }
            | Error::EmptyRequest
            | Error::TooManyItems { .. }
            | Error::UnsupportedHashAlgorithm(_)
            | Error::UnsupportedCriticalExtension(_)
            | Error::UnsupportedResponseType => ResponseStatus::MalformedRequest,
            Error::IssuerMismatch { .. } => ResponseStatus::Unauthorized,
            _ => ResponseStatus::InternalError,
        }
    }
}
