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

pub use error::Error;
pub use fingerprint::Fingerprint;
pub use issue::{CaCert, Issued, Profile, Subject};
pub use key::{KeyAlgorithm, PrivateKey};
pub use names::San;
pub use serial::Serial;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
