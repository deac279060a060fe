//! The trivial `mtls-axum` application the shared benchmark harness measures next to the
//! gateway (`scripts/bench-gateway.sh`): `GET /` answers `ok`, `GET /100mb` 100,000,000 bytes,
//! every client the CA trusts is allowed.
//!
//! ```sh
//! LISTEN=127.0.0.1:19444 CERT=server.pem KEY=server.key CA=ca.pem \
//!   cargo run --release -p mtls-examples --bin bench_app
//! ```

use std::sync::OnceLock;

use axum::{routing::get, Router};
use mtls_axum::{MtlsServer, RequireClientCert};
use mtls_examples::setting;

static BULK: OnceLock<axum::body::Bytes> = OnceLock::new();

async fn bulk() -> axum::body::Body {
    // Made on first use, so an idle-memory measurement of a fresh process does not count it.
    let b = BULK.get_or_init(|| axum::body::Bytes::from(vec![b'x'; 100_000_000]));
    axum::body::Body::from(b.clone())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = MtlsServer::builder()
        .certificate(setting("CERT"), setting("KEY"))
        .client_ca(setting("CA"))
        .build()?;
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/100mb", get(bulk))
        .layer(RequireClientCert::any_trusted());
    mtls_examples::run(server, app, "127.0.0.1:19444").await
}
