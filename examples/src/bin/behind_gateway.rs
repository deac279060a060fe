//! An application behind `mtls gateway`: the gateway terminates the clients' mTLS and forwards
//! their identity (RFC 9440 `Client-Cert`) over its own mTLS connection to this service, which
//! trusts that header only on connections authenticated as the gateway.
//!
//! ```sh
//! GATEWAY_CN=gateway LISTEN=127.0.0.1:8080 CERT=app.chain.pem KEY=app.key CA=ca-chain.pem \
//!   cargo run -p mtls-examples --bin behind_gateway
//! # gateway.toml: upstream = "https://127.0.0.1:8080", upstream_ca = […],
//! #               [listener.upstream_certificate] with the gateway's client certificate
//! ```
//!
//! `GET /api/secure` answers with the forwarded client's CN; `ALLOWED_CNS` (optional) limits
//! which forwarded clients may call it. A direct client that is not the gateway gets
//! `403 INVALID_CERT`, whatever identity headers it sends.

use axum::{routing::get, Json, Router};
use mtls_axum::{ForwardedClientCert, MtlsServer, Policy, RequireClientCert};
use mtls_examples::{list, setting};

async fn secure(client: ForwardedClientCert) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "message": "Authenticated via mTLS",
        "client": client.common_name(),
        "via": "gateway",
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gateway = Policy {
        allow_cn: vec![setting("GATEWAY_CN")],
        ..Policy::default()
    };
    let server = MtlsServer::builder()
        .certificate(setting("CERT"), setting("KEY"))
        .client_ca(setting("CA"))
        .trust_forwarded_identity_from(gateway)
        .build()?;
    let clients = list("ALLOWED_CNS");
    let policy = if clients.is_empty() {
        RequireClientCert::any_trusted()
    } else {
        RequireClientCert::policy(Policy {
            allow_cn: clients,
            ..Policy::default()
        })
    };
    let app = Router::new()
        .route("/api/secure", get(secure))
        .layer(policy.forwarded());
    mtls_examples::run(server, app, "127.0.0.1:8080").await
}
