//! `mtls-api`: the wire format of the online CA's HTTP API, defined once for both sides: what
//! `mtls ca serve` (`mtls-ca`) reads and answers, and what its clients (`mtls-client`: enroll,
//! renew, revoke, tokens, the revocation feed) send and read. A field renamed here changes
//! both ends in one commit.
//!
//! What it does not do: I/O, or any check beyond the JSON's shape. The CA validates tokens,
//! CSRs, profiles, durations and serials itself; errors travel as the serving core's JSON error
//! body (`mtls_serve::ApiError`). Requests refuse unknown fields, so a client's typo is an
//! error rather than a default silently applied.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// `POST /v1/sign`: enrollment with a one-time token.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// The one-time token (`ID.SECRET`).
    pub token: String,
    /// The certificate signing request, PEM.
    pub csr: String,
}

/// `POST /v1/renew` (over mTLS with the certificate being renewed). An empty body is the
/// same as no CSR.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// A CSR for a new key, PEM; without one the current key is certified again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

/// `POST /v1/revoke` (over mTLS). An empty body revokes the caller's own certificate.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// The serial to revoke (hex); the caller's own certificate when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// An RFC 5280 reason name (`keyCompromise`, `superseded`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/tokens` (administrators): a one-time enrollment token.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The common name the certificate will carry.
    pub name: String,
    /// The subject alternative names it may carry.
    #[serde(default)]
    pub sans: Vec<String>,
    /// The certificate profile (`client` or `server`).
    #[serde(default = "default_profile")]
    pub profile: String,
    /// How long the token stays usable, with a unit (`10m`).
    #[serde(default = "default_ttl")]
    pub ttl: String,
}

fn default_profile() -> String {
    "client".into()
}

fn default_ttl() -> String {
    "10m".into()
}

/// The answer to [`TokenRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenCreated {
    /// The token, shown once.
    pub token: String,
    /// When it stops being usable.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// The answer to [`SignRequest`] and [`RenewRequest`]: the certificate issued.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssuedCertificate {
    /// The serial number, hex.
    pub serial: String,
    /// The leaf certificate, PEM.
    pub certificate: String,
    /// The leaf with its intermediates and root, PEM.
    pub chain: String,
    /// Start of validity (notBefore).
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity (notAfter).
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// `GET /v1/revocations?after=N`: one answer of the revocation feed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeedPage {
    /// Revocations after the requested position, in sequence order.
    pub events: Vec<FeedEvent>,
    /// The feed's head when the answer was made (a subscriber whose last event is below it
    /// asks again at once).
    pub head: i64,
}

/// One revocation of the feed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeedEvent {
    /// Position in the feed.
    pub seq: i64,
    /// SHA-256 (hex) of the issuing CA key's SubjectPublicKeyInfo.
    pub issuer_key: String,
    /// Serial number, hex.
    pub serial: String,
    /// When it was revoked.
    #[serde(with = "time::serde::rfc3339")]
    pub revoked_at: OffsetDateTime,
    /// The reason, if one was given.
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_default_what_may_be_left_out_and_refuse_unknown_fields() {
        let t: TokenRequest = serde_json::from_str(r#"{"name":"app"}"#).unwrap();
        assert_eq!((t.profile.as_str(), t.ttl.as_str()), ("client", "10m"));
        assert!(t.sans.is_empty());
        let r: RenewRequest = serde_json::from_str("{}").unwrap();
        assert!(r.csr.is_none());
        for (what, json) in [
            ("sign", r#"{"token":"t","csr":"c","extra":1}"#),
            ("renew", r#"{"cssr":"c"}"#),
            ("revoke", r#"{"serial":"01","reasn":"superseded"}"#),
            ("token", r#"{"name":"app","profile":"client","tll":"5m"}"#),
        ] {
            let refused = match what {
                "sign" => serde_json::from_str::<SignRequest>(json).is_err(),
                "renew" => serde_json::from_str::<RenewRequest>(json).is_err(),
                "revoke" => serde_json::from_str::<RevokeRequest>(json).is_err(),
                _ => serde_json::from_str::<TokenRequest>(json).is_err(),
            };
            assert!(refused, "{what}: {json} was accepted");
        }
        // Absent options are left out, not sent as null.
        let body = serde_json::to_string(&RevokeRequest::default()).unwrap();
        assert_eq!(body, "{}");
    }
}
