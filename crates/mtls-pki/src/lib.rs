//! `mtls-pki`: the offline PKI core of mtls.
//!
//! What it does: generates and loads private keys (ECDSA P-256/P-384, Ed25519, RSA; PKCS#8 plain
//! or PBES2-encrypted, PKCS#1, SEC1, PEM or DER), builds root and intermediate CAs, issues server
//! and client certificates from profiles that are right by construction (optionally publishing
//! CRL and OCSP URLs), issues delegated OCSP signing certificates, parses and checks CSRs,
//! builds CRLs, exports PKCS#12 and describes any PKI object for humans and scripts.
//!
//! What it does not do: networking, databases, path validation (see `mtls-verify`) or reading
//! the clock — every function that depends on time takes `now` as an argument. The only I/O is
//! in [`files`], which writes secrets atomically with mode 0600 and refuses to read keys that
//! other users can read.
#![forbid(unsafe_code)]

pub mod csr;
pub mod dn;
mod error;
pub mod files;
pub mod fingerprint;
pub mod inspect;
pub mod issue;
pub mod key;
pub mod names;
pub mod pem_io;
pub mod pkcs12;
pub mod revocation;
pub mod serial;
pub mod signature;

pub use error::Error;
pub use fingerprint::{Fingerprint, KeyPin};
pub use issue::{CaCert, Issued, Profile, Subject};
pub use key::{KeyAlgorithm, PrivateKey};
pub use names::{NameConstraints, NameSubtree, San};
pub use serial::Serial;
/// The `zeroize` crate, whose `Zeroizing` wraps the secrets this crate returns: callers name
/// it (`mtls_pki::zeroize::Zeroizing`) to keep the key files they read wiped too.
pub use zeroize;

/// A time as mtls prints it everywhere (messages, logs, listings): RFC 3339 in UTC,
/// `2026-12-01T19:51:00Z`.
pub fn rfc3339(t: &time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    // Whole seconds: what certificates carry, and what a reader compares.
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// [`rfc3339`] of an optional time (`none` when absent).
pub fn rfc3339_opt(t: &Option<time::OffsetDateTime>) -> String {
    t.as_ref().map(rfc3339).unwrap_or_else(|| "none".into())
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
