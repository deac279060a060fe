//! `mtls-serve`: the serving core every mtls server and application is built on.
//!
//! What it does:
//! - [`accept`]: the one accept loop (backoff on errors, a connection limit, a task per
//!   connection, drain) and TLS handshakes under a deadline;
//! - [`coalesce`]: the TLS 1.3 session ticket sent with the first response, not on its own;
//! - [`tls`]: a server's reloadable certificates, client CAs and CRLs as one validated state;
//! - [`reload`]: the one reload loop (file watching, SIGHUP, explicit trigger, last good kept);
//! - [`recheck`]: re-verifying the identity of open connections when trust changes or a
//!   certificate or CRL expires;
//! - [`refusals`]: rate-limited log lines for refused clients;
//! - [`expiring`]: clients still connecting with a certificate whose renewal is overdue (a
//!   log line, a metric);
//! - [`error`]: the seed's JSON error body and the rejection → status/code mapping;
//! - [`http`]: the hyper connection builders and graceful per-connection serving; an HTTP/1
//!   connection between requests holds no hyper state (taken apart and rebuilt on its next bytes);
//! - [`metrics`]: Prometheus metrics through `prometheus-client`;
//! - [`duration`]: the one duration syntax (units required);
//! - [`hostport`]: the one `host[:port]` splitting (IPv6 in brackets).
//!
//! ```no_run
//! use std::time::Duration;
//! use mtls_serve::accept::{accept_loop, handshake, peer_chain, Slots};
//! use mtls_serve::tls::{CertificateFiles, ClientAuth, ReloadingServer, ServerFiles};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = ReloadingServer::new(ServerFiles {
//!     certificates: vec![CertificateFiles {
//!         cert: "server.chain.pem".into(),
//!         key: "server.key".into(),
//!         key_passphrase_file: None,
//!     }],
//!     client_ca: vec!["ca-chain.pem".into()],
//!     crl: vec!["crl.pem".into()],
//!     client_auth: ClientAuth::Required,
//!     revocation: Default::default(),
//!     alpn: vec![],
//!     resumption: Default::default(),
//! })?;
//! let (stop, shutdown) = mtls_serve::shutdown();
//! // Certificates, CAs and CRLs are reloaded when their files change.
//! mtls_serve::reload::spawn(tls.clone(), Default::default(), shutdown.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
//! accept_loop(listener, Slots::new(10_000), shutdown, move |tcp, remote, _slot| {
//!     let tls = tls.clone();
//!     async move {
//!         let state = tls.current();
//!         let Ok(stream) = handshake(state.tls.clone(), tcp, Duration::from_secs(10)).await
//!         else {
//!             return;
//!         };
//!         let who = state.trust.identify(peer_chain(&stream), time::OffsetDateTime::now_utc());
//!         println!("{remote}: {who:?}");
//!     }
//! })
//! .await;
//! # drop(stop); Ok(()) }
//! ```
//!
//! What it does not do: policy decisions (that is `mtls-verify`), proxying (`mtls-gateway`),
//! routing (`mtls-axum`), or anything with the inventory.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accept;
pub mod coalesce;
pub mod duration;
pub mod error;
pub mod expiring;
pub mod hostport;
pub mod http;
pub mod metrics;
mod park;
pub mod recheck;
pub mod refusals;
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
    /// A reload took the new CA bundle and CRLs, but some served certificates could not be
    /// loaded: the previous ones for those files still serve.
    #[error("the CAs and CRLs were loaded, but the previous certificate still serves for {}", .kept.join("; "))]
    CredentialsKept {
        /// Each certificate file kept, with why its new contents were refused.
        kept: Vec<String>,
    },
}
