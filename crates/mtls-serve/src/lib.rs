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
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] mtls_tls::Error),
    #[error(transparent)]
    Pki(#[from] mtls_pki::Error),
    #[error("client CA bundle or CRL: {0}")]
    Trust(#[from] mtls_verify::TrustError),
    #[error(transparent)]
    Duration(#[from] duration::DurationError),
    #[error("{0}")]
    Config(String),
}
