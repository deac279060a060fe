//! `mtls-axum`: mutual TLS for axum applications, the Rust form of the guide's Express server
//! with `requestCert`, its `mtlsMiddleware` and its `CertificateValidator`.
//!
//! What it does:
//! - [`MtlsServer`]: serves a `Router` over mTLS (HTTP/1.1 and h2) on the `mtls-serve` core:
//!   handshake per connection with a deadline, certificates, client CAs and CRLs reloaded from
//!   their files, and each request's client re-checked against the current trust state;
//! - [`ClientCert`]: an extractor for the verified client certificate, which only the server can
//!   produce (`401 NO_CLIENT_CERT` / `403 INVALID_CERT` otherwise);
//! - [`RequireClientCert`]: a tower layer applying a [`Policy`] (CN, OU, DNS, URI/SPIFFE,
//!   e-mail, fingerprint and SPKI allow-lists, issuer) or any check, per router or per route;
//! - [`ForwardedClientCert`]: the identity `mtls gateway` forwards, trusted only on connections
//!   authenticated as a configured gateway.
//!
//! What it does not do: issue or renew certificates (`mtls-client` renews), or decide routing.
//!
//! ```no_run
//! use axum::{routing::get, Json, Router};
//! use mtls_axum::{ClientCert, MtlsServer, RequireClientCert};
//! use mtls_verify::Policy;
//!
//! async fn secure(cert: ClientCert) -> Json<serde_json::Value> {
//!     Json(serde_json::json!({
//!         "message": "Authenticated via mTLS",
//!         "client": cert.common_name(),
//!     }))
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = MtlsServer::builder()
//!     .certificate("server.chain.pem", "server.key")
//!     .client_ca("ca-chain.pem")
//!     .crl("crl.pem")
//!     .build()?;
//! let app = Router::new()
//!     .route("/api/secure", get(secure))
//!     .layer(RequireClientCert::policy(Policy {
//!         allow_cn: vec!["client-app".into()],
//!         ..Policy::default()
//!     }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
//! server.serve(listener, app).await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod extract;
mod layer;
mod server;

pub use extract::{ClientCert, ClientIdentity, ForwardedClientCert};
pub use layer::{RequireClientCert, RequireClientCertService};
pub use mtls_serve::ApiError;
pub use mtls_verify::{PeerIdentity, Policy, PolicyMatch, VerifiedPeer};
pub use server::{MtlsServer, ServerBuilder};

/// Errors of building a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Loading or validating the server's certificates, keys, client CAs or CRLs failed.
    #[error(transparent)]
    Serve(#[from] mtls_serve::Error),
    /// The builder is incomplete: no server certificate or no client CA was given.
    #[error("{0}")]
    Config(String),
}
