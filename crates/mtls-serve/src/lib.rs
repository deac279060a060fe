//! `mtls-serve`: the serving core every mtls server and application is built on.
//!
//! What it does:
//! - [`accept`]: the one accept loop (backoff on errors, a connection limit, a task per
//!   connection, drain) and TLS handshakes under a deadline;
//! - [`tls`]: a server's reloadable certificates, client CAs and CRLs as one validated state;
//! - [`reload`]: the one reload loop (file watching, SIGHUP, explicit trigger, last good kept);
//! - [`recheck`]: re-verifying the identity of open connections when trust changes or a
//!   certificate or CRL expires;
//! - [`error`]: the seed's JSON error body and the rejection → status/code mapping;
//! - [`http`]: the hyper connection builder and graceful per-connection serving;
//! - [`metrics`]: Prometheus metrics through `prometheus-client`;
//! - [`duration`]: the one duration syntax (units required).
//!
//! What it does not do: policy decisions (that is `mtls-verify`), proxying (`mtls-gateway`),
//! routing (`mtls-axum`), or anything with the inventory.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accept;
pub mod duration;
pub mod error;
pub mod http;
pub mod metrics;
pub mod recheck;
pub mod reload;
pub mod tls;

pub use accept::{accept_loop, shutdown, Shutdown, ShutdownTrigger, Slot, Slots};
pub use error::ApiError;

/// Errors of setting up a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address to listen on.
        addr: std::net::SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Loading a certificate, key, CA bundle or CRL file, or building the rustls configuration,
    /// failed.
    #[error(transparent)]
    Tls(#[from] mtls_tls::Error),
    /// Parsing a certificate, key or CRL failed.
    #[error(transparent)]
    Pki(#[from] mtls_pki::Error),
    /// The client CA bundle is empty or holds a bad certificate, or a CRL is invalid.
    #[error("client CA bundle or CRL: {0}")]
    Trust(#[from] mtls_verify::TrustError),
    /// A configured duration was refused.
    #[error(transparent)]
    Duration(#[from] duration::DurationError),
    /// The configuration is incomplete or inconsistent (e.g. no server certificate).
    #[error("{0}")]
    Config(String),
}
