//! Errors: [`ApiError`] is what an HTTP client sees (the seed's JSON shape), [`Error`] what the
//! library's set-up and client functions return.

use http::StatusCode;

pub use mtls_serve::ApiError;

/// The CA cannot sign now (its certificate expired or is not yet valid): the CA's fault, not
/// the request's, so clients retry instead of backing off as after a refusal.
pub(crate) fn cannot_sign_now(e: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "cannot sign");
    ApiError::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "CA_UNAVAILABLE",
        "the CA cannot sign at the moment; retry later",
    )
}

/// What an API client is told when the inventory refused or failed an operation.
pub fn store_error(e: mtls_store::Error) -> ApiError {
    {
        use mtls_store::Error as S;
        match e {
            S::Crl(e @ mtls_pki::Error::IssuerNotValid { .. }) => cannot_sign_now(&e),
            // The commit itself failed (timed out, connection lost): it may still have landed.
            S::Unavailable {
                context: "commit", ..
            } => {
                tracing::warn!(error = %e, "inventory commit failed: outcome unknown");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "DATABASE_UNAVAILABLE",
                    "the CA's database failed while committing: the change may or may not have been recorded; retry later (an enrollment token it consumed is then reported as used: ask for a new one)",
                )
            }
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
                format!(
                    "certificate {serial} was already revoked at {}",
                    mtls_pki::rfc3339(&at)
                ),
            ),
            S::NotRenewable(serial) => ApiError::new(
                StatusCode::FORBIDDEN,
                "INVALID_CERT",
                format!("certificate {serial}, or a certificate renewed from it, was revoked; it can no longer be renewed: enroll again with a new token"),
            ),
            // Temporary: the certificate can renew again once older renewals leave the window
            // (clients retry after Retry-After, not as after a refusal).
            S::RenewalRateLimited {
                serial,
                limit,
                retry_after,
            } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                format!(
                    "certificate {serial} was already renewed {} times in the last {}: retry in {}",
                    limit.max,
                    mtls_serve::duration::format(limit.window.unsigned_abs()),
                    mtls_serve::duration::format(retry_after.unsigned_abs()),
                ),
            )
            .with_retry_after(retry_after.unsigned_abs()),
            // The request's key is at fault (a CSR, or a renewal keeping the key): the token
            // is not consumed, and a new key gets the certificate.
            S::KeyCompromised { serial } => ApiError::new(
                StatusCode::BAD_REQUEST,
                "KEY_COMPROMISED",
                format!("this public key was revoked as compromised (certificate {serial}): generate a new key and ask again"),
            ),
            // Fail closed until an operator has looked: see Store::revocation_epoch.
            e @ S::RolledBack { .. } => {
                tracing::error!(error = %e, "inventory behind what was already seen");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "DATABASE_ROLLED_BACK",
                    "the CA's database went back in time (a restore or a failover lost changes); nothing is issued or answered from it until an operator reconciles it",
                )
            }
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
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}
