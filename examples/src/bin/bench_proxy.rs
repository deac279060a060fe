//! The ceiling of the gateway's proxy path, for `scripts/bench-gateway.sh`: the same stack
//! (the serving core through `mtls-axum`, rustls, hyper, the gateway's upstream pool
//! `mtls_client::pool`) forwarding every request to `UPSTREAM` with no policy, identity headers,
//! header hygiene, metrics or logs. The gateway's distance to this is what its own work costs.
//!
//! ```sh
//! LISTEN=127.0.0.1:19445 CERT=server.pem KEY=server.key CA=ca.pem UPSTREAM=127.0.0.1:18080 \
//!   cargo run --release -p mtls-examples --bin bench_proxy
//! ```

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use mtls_axum::{MtlsServer, RequireClientCert};
use mtls_client::pool::{Pool, PoolTarget};
use mtls_examples::setting;

async fn forward(State(pool): State<Pool<Body>>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    // Origin form on the upstream hop.
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = match pq.parse() {
        Ok(u) => u,
        Err(_) => return axum::http::StatusCode::BAD_REQUEST.into_response(),
    };
    match pool.send(Request::from_parts(parts, body)).await {
        Ok(resp) => resp.map(Body::new),
        Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = MtlsServer::builder()
        .certificate(setting("CERT"), setting("KEY"))
        .client_ca(setting("CA"))
        .build()?;
    let pool: Pool<Body> = mtls_client::ClientBuilder::new().build_pool(PoolTarget::Http {
        addr: setting("UPSTREAM"),
    })?;
    let app = Router::new()
        .fallback(forward)
        .with_state(pool)
        .layer(RequireClientCert::any_trusted());
    mtls_examples::run(server, app, "127.0.0.1:19445").await
}
