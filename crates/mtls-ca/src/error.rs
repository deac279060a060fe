//! Errors: [`ApiError`] is what an HTTP client sees (the seed's JSON shape), [`Error`] what the
//! library's set-up and client functions return.

use http::StatusCode;

/// A refusal or failure of one API request, rendered as
/// `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn invalid_token(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "INVALID_TOKEN", message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }
    pub fn no_client_cert() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "NO_CLIENT_CERT",
            "Client certificate required",
        )
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }
}

impl From<mtls_store::Error> for ApiError {
    fn from(e: mtls_store::Error) -> Self {
        use mtls_store::Error as S;
        match e {
            e if e.is_unavailable() => {
                tracing::warn!(error = %e, "inventory unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "DATABASE_UNAVAILABLE",
                    "the CA's database is unavailable; nothing was issued or changed, retry later",
                )
            }
            S::UnknownSerial(s) => ApiError::new(
                StatusCode::NOT_FOUND,
                "UNKNOWN_SERIAL",
                format!("no certificate with serial {s} was issued by this CA"),
            ),
            S::AlreadyRevoked { serial, at } => ApiError::new(
                StatusCode::CONFLICT,
                "ALREADY_REVOKED",
                format!("certificate {serial} was already revoked at {at}"),
            ),
            S::NotRenewable(serial) => ApiError::new(
                StatusCode::FORBIDDEN,
                "INVALID_CERT",
                format!("certificate {serial} was revoked; it can no longer be renewed"),
            ),
            S::UnknownToken => ApiError::invalid_token("unknown enrollment token"),
            e @ (S::TokenUsed { .. } | S::TokenExpired { .. }) => {
                ApiError::invalid_token(e.to_string())
            }
            e => {
                tracing::error!(error = %e, "inventory error");
                ApiError::internal("inventory error")
            }
        }
    }
}

/// Errors of set-up and of the client library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Pki(#[from] mtls_pki::Error),
    #[error(transparent)]
    Store(#[from] mtls_store::Error),
    #[error(transparent)]
    Tls(#[from] mtls_tls::Error),
    #[error("OCSP: {0}")]
    Ocsp(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    /// The CA could not be reached or the exchange failed in transport.
    #[error("CA request to {url} failed: {detail}")]
    Transport { url: String, detail: String },
    /// The CA answered with an error.
    #[error("the CA refused ({status} {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// The CA's root does not have the pinned fingerprint.
    #[error("the CA's root certificate has fingerprint {found}, expected {expected}: refusing to trust it")]
    FingerprintMismatch { expected: String, found: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("unexpected answer from the CA: {0}")]
    Protocol(String),
}
