//! A service that renews its own certificate from `mtls ca serve` (the guide's
//! `CertificateRotator`, without cron): it serves mTLS with the certificate `mtls enroll` wrote,
//! renews it over mTLS before it expires with `mtls_client::renewal`, and the server picks the
//! renewed files up for new connections — no restart, no dropped connection.
//!
//! ```sh
//! mtls enroll --ca-url https://ca:9443 --ca-fingerprint … --token-file … --out ./id
//! CERT=id/cert.pem KEY=id/key.pem ROOT=id/ca.crt CA_URL=https://ca:9443 CLIENT_CA=ca-chain.pem \
//!   RENEW_BEFORE=30d cargo run -p mtls-examples --bin self_renewing
//! ```

use std::sync::{Arc, Mutex};

use axum::{routing::get, Json, Router};
use mtls_axum::{ClientCert, MtlsServer, RequireClientCert};
use mtls_client::renewal::{self, DaemonOptions, Hook, Threshold, Watch, WatchState};
use mtls_examples::{optional, setting};

async fn secure(cert: ClientCert) -> Json<serde_json::Value> {
    Json(serde_json::json!({"message": "Authenticated via mTLS", "client": cert.common_name()}))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (cert, key) = (setting("CERT"), setting("KEY"));
    let server = MtlsServer::builder()
        .certificate(&cert, &key)
        .client_ca(setting("CLIENT_CA"))
        .build()?;
    let renew_before =
        mtls_client::duration(&optional("RENEW_BEFORE").unwrap_or_else(|| "30d".into()))?;
    let watch = Watch {
        cert: cert.clone().into(),
        key: key.into(),
        root: setting("ROOT").into(),
    };
    let options = DaemonOptions {
        url: mtls_client::ca::CaUrl::parse(&setting("CA_URL"))?,
        threshold: Threshold::Before(renew_before),
        rotate_key: false,
        hook: Hook::None,
        max_sleep: time::Duration::minutes(10),
    };
    let state = Arc::new(Mutex::new(vec![WatchState {
        cert,
        ..Default::default()
    }]));
    // Renews in the background; the server reloads the replaced files by itself.
    tokio::spawn(renewal::watch_forever(0, watch, options, None, state));
    let app = Router::new()
        .route("/api/secure", get(secure))
        .layer(RequireClientCert::any_trusted());
    mtls_examples::run(server, app, "127.0.0.1:8443").await
}
