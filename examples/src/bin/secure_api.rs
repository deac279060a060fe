//! The guide's Express server (`requestCert`, the client-certificate middleware and
//! `GET /api/secure`), in Rust on `mtls-axum`.
//!
//! ```sh
//! LISTEN=127.0.0.1:8443 CERT=server.chain.pem KEY=server.key CA=ca-chain.pem CRL=crl.pem \
//!   cargo run -p mtls-examples --bin secure_api        # or FEED=https://ca:9443 instead of CRL
//! curl --cacert root.crt --cert client.chain.pem --key client.key https://localhost:8443/api/secure
//! ```
//!
//! Answers `{"message":"Authenticated via mTLS","client":"<CN>"}`; without a client certificate
//! `401 {"error":{"code":"NO_CLIENT_CERT",…}}`, with an untrusted, revoked or expired one
//! `403 {"error":{"code":"INVALID_CERT","message":<reason>}}` — the guide's JSON, from the
//! extractor. The CRL and certificates are reloaded when their files change, and a client
//! revoked while its connection is open loses it at once.

use axum::{routing::get, Json, Router};
use mtls_axum::{ClientCert, MtlsServer};
use mtls_examples::{optional, setting};

async fn secure(cert: ClientCert) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "message": "Authenticated via mTLS",
        "client": cert.common_name(),
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut server = MtlsServer::builder()
        .certificate(setting("CERT"), setting("KEY"))
        .client_ca(setting("CA"))
        // The guide answers a missing certificate with JSON, so the handshake lets such
        // clients through and the `ClientCert` extractor refuses them with 401.
        .allow_handshake_without_certificate();
    if let Some(crl) = optional("CRL") {
        server = server.crl(crl);
    }
    // The online CA's revocation feed (`mtls ca serve`, with this server's certificate allowed
    // in `[revocation_feed]`): revocations arrive within a second, open connections of a revoked
    // client are closed at once.
    if let Some(feed) = optional("FEED") {
        server = server.revocation_feed(feed);
    }
    // The CRLs the client certificates name in their CRL Distribution Points.
    if optional("CRL_FROM_CERTIFICATES").is_some() {
        server = server.crl_from_certificates();
    }
    // OCSP checking of client certificates against this responder (http://ca:9080/ocsp).
    if let Some(responder) = optional("OCSP") {
        server = server.ocsp(mtls_client::ocsp_check::OcspOptions {
            responder: Some(responder),
            ..Default::default()
        });
    }
    let server = server.build()?;
    let app = Router::new().route("/api/secure", get(secure));
    mtls_examples::run(server, app, "127.0.0.1:8443").await
}
