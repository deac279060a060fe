//! `mtls-gateway`: the mTLS terminating gateway — HTTP reverse proxy and raw TCP.
//!
//! What it does: accepts TLS (one task per connection, handshake timeout), verifies client
//! certificates against a reloadable trust state (CA bundle, CRLs verified once at load),
//! re-checks every connection's identity after the handshake (resumed sessions included) and
//! again after each reload, applies the policy per listener and per path prefix, strips spoofed
//! identity headers and forwards the verified identity (`X-Forwarded-Client-Cert`, RFC 9440
//! `Client-Cert`, or PROXY protocol v2 TLVs in TCP mode), answers the seed's JSON errors, reloads
//! on SIGHUP and on file change keeping the last good state, exports Prometheus metrics and
//! drains on shutdown.
//!
//! What it does not do: issue certificates, touch the inventory, or parse command lines.
#![forbid(unsafe_code)]

pub mod config;
pub mod crl_fetch;
pub mod explain;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod proxy_protocol;
pub mod revocation;
pub mod server;
pub mod state;

pub use config::{GatewayConfig, ListenerConfig};
pub use server::{start, Running};

/// Gateway errors (configuration and start-up; runtime problems are logged and counted).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    /// A configuration file that does not parse (the same shape as the CA's:
    /// `FILE: configuration: …`).
    /// A configuration file that cannot be read.
    #[error("{}: {source}", path.display())]
    ConfigRead {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}: configuration: {detail}", path.display())]
    ConfigFile {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("loading: {0}")]
    Load(String),
    /// A listener's certificates, keys, CA bundles or CRLs could not be loaded.
    #[error("loading: listener {listener:?}: {source}")]
    Listener {
        listener: String,
        #[source]
        source: mtls_serve::Error,
    },
    #[error("{0}")]
    Io(String),
}

/// Writes one JSON access-log line to stdout. A closed or full stdout must not take requests
/// down with it (`println!` would panic), so write errors are ignored.
pub(crate) fn access_log(line: &serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}
