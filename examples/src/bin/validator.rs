//! The guide's `CertificateValidator` (validity, then an optional fingerprint allow-list, then
//! an optional CN allow-list) as `mtls-axum` policies, plus a per-route policy.
//!
//! ```sh
//! ALLOWED_CNS=client-app,batch ALLOWED_FINGERPRINTS=<sha256 hex>,… ADMIN_CNS=ops-admin \
//! LISTEN=127.0.0.1:8443 CERT=server.chain.pem KEY=server.key CA=ca-chain.pem \
//!   cargo run -p mtls-examples --bin validator
//! ```
//!
//! Validity (and the chain, and revocation) is checked by the server for every request; each
//! non-empty list is a further requirement, as in the guide (a client must pass all of them).
//! `/api/admin` additionally requires a CN from `ADMIN_CNS` (a per-route policy).

use axum::{routing::get, Json, Router};
use mtls_axum::{ClientCert, MtlsServer, Policy, PolicyMatch, RequireClientCert};
use mtls_examples::{list, setting};

async fn secure(cert: ClientCert) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "message": "Authenticated via mTLS",
        "client": cert.common_name(),
        "fingerprint": cert.fingerprint().to_string(),
    }))
}

async fn admin(cert: ClientCert) -> Json<serde_json::Value> {
    Json(serde_json::json!({"admin": cert.common_name()}))
}

/// The guide's validator: each configured list must match (`PolicyMatch::All`); with none,
/// every client the CA trusts.
fn validator() -> Result<RequireClientCert, Box<dyn std::error::Error>> {
    let policy = Policy {
        matching: PolicyMatch::All,
        allow_fingerprint: list("ALLOWED_FINGERPRINTS")
            .iter()
            .map(|f| f.parse())
            .collect::<Result<Vec<_>, _>>()?,
        allow_cn: list("ALLOWED_CNS"),
        ..Policy::default()
    };
    if policy.allows_nobody() {
        return Ok(RequireClientCert::any_trusted());
    }
    policy.validate()?;
    Ok(RequireClientCert::policy(policy))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = MtlsServer::builder()
        .certificate(setting("CERT"), setting("KEY"))
        .client_ca(setting("CA"))
        .allow_handshake_without_certificate()
        .build()?;
    let app = Router::new()
        .route(
            "/api/admin",
            get(admin).route_layer(RequireClientCert::policy(Policy {
                allow_cn: list("ADMIN_CNS"),
                ..Policy::default()
            })),
        )
        .route("/api/secure", get(secure))
        .layer(validator()?);
    mtls_examples::run(server, app, "127.0.0.1:8443").await
}
