//! The seed's JSON error body, `{"error":{"code":…,"message":…}}`, and the one mapping from a
//! certificate [`Rejection`] to a status and code. Every HTTP server of mtls answers with this
//! type: the gateway, the online CA, applications on `mtls-axum` and the demo upstream.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use mtls_verify::Rejection;

/// An error answer: status, a stable machine-readable code and a short message. Details belong
/// in the log, not here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status of the answer.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `INVALID_CERT`.
    pub code: &'static str,
    /// Short human-readable message.
    pub message: String,
    /// When to try again, sent as `Retry-After` (whole seconds, rounded up): with `429` and
    /// `503` answers whose end is known.
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    /// An answer with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same answer with a `Retry-After` header.
    pub fn with_retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// `400 Bad Request` with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// `403 Forbidden` with `code`.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// `401 INVALID_TOKEN`: an enrollment token that is malformed, unknown, used or expired.
    pub fn invalid_token(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "INVALID_TOKEN", message)
    }

    /// `500 INTERNAL`: a failure on the server's side (details belong in the log).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }

    /// `401 NO_CLIENT_CERT`: the seed's answer to a request without a client certificate.
    pub fn no_client_cert() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "NO_CLIENT_CERT",
            "Client certificate required",
        )
    }

    /// `403 INVALID_CERT` with the reason: a certificate that is not trusted or not allowed.
    pub fn invalid_cert(reason: impl Into<String>) -> Self {
        Self::forbidden("INVALID_CERT", reason)
    }

    /// The answer to a refused client: `401 NO_CLIENT_CERT` without a certificate, else
    /// `403 INVALID_CERT` with the rejection's message.
    pub fn from_rejection(r: &Rejection) -> Self {
        // Rejections that carry a server-side detail (an OCSP responder's address and error,
        // a parser's message about a trust anchor) answer without it: it goes to the log.
        let public = match r {
            Rejection::NoCertificate => return Self::no_client_cert(),
            Rejection::OcspUnavailable(_) => "revocation status unknown: no current OCSP answer",
            Rejection::BadTrustAnchor(_) => "no path to a usable trust anchor",
            Rejection::Malformed(_) => {
                "the certificate is malformed or carries an unsupported critical extension"
            }
            Rejection::Other(_) => "the certificate is not accepted",
            r => return Self::invalid_cert(r.to_string()),
        };
        tracing::info!(rejection = %r, "client certificate refused");
        Self::invalid_cert(public)
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string()
    }

    /// The whole response, for any body type made from bytes.
    pub fn to_response<B: From<Bytes>>(&self) -> Response<B> {
        let mut r = Response::new(B::from(Bytes::from(self.body())));
        *r.status_mut() = self.status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        r
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl axum_core::response::IntoResponse for ApiError {
    fn into_response(self) -> axum_core::response::Response {
        self.to_response()
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        Self::from_rejection(&r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_map_to_the_seeds_codes() {
        let none = ApiError::from_rejection(&Rejection::NoCertificate);
        assert_eq!(
            (none.status, none.code),
            (StatusCode::UNAUTHORIZED, "NO_CLIENT_CERT")
        );
        let revoked = ApiError::from_rejection(&Rejection::Revoked);
        assert_eq!(
            (revoked.status, revoked.code),
            (StatusCode::FORBIDDEN, "INVALID_CERT")
        );
        let body: serde_json::Value = serde_json::from_str(&revoked.body()).unwrap();
        assert_eq!(body["error"]["message"], "certificate is revoked");
        let r: Response<http_body_util::Full<Bytes>> = revoked.to_response();
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }

    /// `Retry-After` in whole seconds, rounded up (an earlier retry would be refused again).
    #[test]
    fn retry_after_is_sent_in_whole_seconds() {
        let e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", "later");
        for (after, want) in [(1500, "2"), (60_000, "60"), (0, "1")] {
            let r: Response<http_body_util::Full<Bytes>> = e
                .clone()
                .with_retry_after(std::time::Duration::from_millis(after))
                .to_response();
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(r.headers()[header::RETRY_AFTER], want, "{after} ms");
        }
    }

    /// The server's own details (an OCSP responder's address and error, a parser's message)
    /// stay in the log; the client gets the kind of refusal. A policy's reason is the answer.
    #[test]
    fn refusals_do_not_tell_server_side_details() {
        let internal = "OCSP responder http://10.0.0.5:9080/ocsp: error sending request";
        for r in [
            Rejection::OcspUnavailable(internal.into()),
            Rejection::BadTrustAnchor(internal.into()),
            Rejection::Malformed(internal.into()),
            Rejection::Other(internal.into()),
        ] {
            let e = ApiError::from_rejection(&r);
            assert_eq!((e.status, e.code), (StatusCode::FORBIDDEN, "INVALID_CERT"));
            assert!(!e.body().contains("10.0.0.5"), "{}", e.body());
        }
        let policy = ApiError::from_rejection(&Rejection::NotAllowed("CN not allowed".into()));
        assert!(policy.body().contains("CN not allowed"));
    }
}
