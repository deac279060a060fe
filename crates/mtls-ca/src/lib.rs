//! `mtls-ca`: the online certificate authority of mtls.
//!
//! What it does: serves an HTTPS API (axum over rustls) on which machines enroll with a one-time
//! token and a CSR, renew over mTLS with their current certificate, and revoke; publishes the
//! CRL and answers OCSP (RFC 6960 / RFC 5019) from the shared inventory, so a revocation made
//! through any instance is visible through every instance at once. The client side (enrollment
//! with a pinned root, renewal, the renewal daemon's logic) is `mtls-client`, so applications
//! renew without compiling this crate's database code.
//!
//! What it does not do: read the PKI directory layout or passphrases (the CLI loads the CA and
//! hands it over), terminate mTLS for other services (that is `mtls-gateway`), or keep state of
//! its own: everything durable lives in `mtls-store`, so instances scale out behind one database.
#![forbid(unsafe_code)]

pub mod authority;
pub mod config;
pub mod error;
mod http;
mod metrics;
mod root_crl;
pub mod server;
pub mod tokens;

pub use authority::{Authority, AuthorityParts};
pub use config::Settings;
pub use error::{ApiError, Error};
pub use server::{serve, Running};
