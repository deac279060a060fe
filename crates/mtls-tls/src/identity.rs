//! A client identity (certificate chain and key) read from files and picked up again when the
//! files change: a service whose certificate is renewed on disk presents the new one on its next
//! connection, without a restart.
//!
//! The files are followed as [`crate::follow`] does: checked (one `stat` each) when a
//! connection starts; a change is loaded and validated (key matches, leaf valid now) before it
//! is used; a broken or half-written replacement is logged and the last good identity stays; it
//! is tried again every [`RETRY_FAILED_LOAD`](crate::RETRY_FAILED_LOAD) until it loads, since
//! the fix (a `chmod` of the key, a clock reaching the certificate's start) may change no file.
//! Connections presenting it are never resumed (see [`crate::client_config_reloading`]), so no
//! session speaks for a certificate the client no longer holds.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::follow::{FollowedFiles, Refreshed};
use crate::{Credential, Result};

/// Where a key's passphrase comes from.
#[derive(Clone, Default)]
pub enum Passphrase {
    /// The key is not encrypted.
    #[default]
    None,
    /// Read (by [`mtls_pki::files::read_passphrase_file`]) at every load.
    File(PathBuf),
    /// Given by the application.
    Bytes(Arc<Zeroizing<Vec<u8>>>),
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Passphrase::None => f.write_str("None"),
            Passphrase::File(p) => write!(f, "File({})", p.display()),
            Passphrase::Bytes(_) => f.write_str("[passphrase elided]"),
        }
    }
}

/// A certificate chain file (leaf first) and its key file.
#[derive(Clone, Debug)]
pub struct CredentialFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub passphrase: Passphrase,
}

impl CredentialFiles {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        CredentialFiles {
            cert: cert.into(),
            key: key.into(),
            passphrase: Passphrase::None,
        }
    }

    pub fn with_passphrase(mut self, passphrase: Passphrase) -> Self {
        self.passphrase = passphrase;
        self
    }

    /// Loads and checks the credential (see [`crate::load_credential`]).
    pub fn load(&self, now: OffsetDateTime) -> Result<Credential> {
        let pass = match &self.passphrase {
            Passphrase::None => None,
            Passphrase::File(p) => Some(mtls_pki::files::read_passphrase_file(p)?),
            Passphrase::Bytes(b) => Some(Zeroizing::new(b.to_vec())),
        };
        crate::load_credential(
            &self.cert,
            &self.key,
            pass.as_deref().map(|v| v.as_slice()),
            now,
        )
    }

    /// The files whose change means a reload.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut v = vec![self.cert.clone(), self.key.clone()];
        if let Passphrase::File(p) = &self.passphrase {
            v.push(p.clone());
        }
        v
    }
}

/// An identity in use.
struct Loaded {
    credential: Credential,
}

/// A client identity that follows its files. Use it as a rustls client-certificate resolver
/// *and* session store ([`crate::client_config_reloading`] does both).
pub struct ReloadingIdentity {
    files: CredentialFiles,
    current: FollowedFiles<Arc<Loaded>>,
}

impl std::fmt::Debug for ReloadingIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingIdentity")
            .field("files", &self.files)
            .finish()
    }
}

impl ReloadingIdentity {
    /// Loads the identity now; an error here is the caller's to report (nothing to fall back
    /// on yet).
    pub fn new(files: CredentialFiles) -> Result<Self> {
        let current = FollowedFiles::new(files.paths(), || Self::load(&files))?;
        Ok(ReloadingIdentity { files, current })
    }

    fn load(files: &CredentialFiles) -> Result<Arc<Loaded>> {
        Ok(Arc::new(Loaded {
            credential: files.load(OffsetDateTime::now_utc())?,
        }))
    }

    /// The identity in use, after picking up changed files.
    pub fn credential(&self) -> Option<Credential> {
        Some(self.refresh().credential.clone())
    }

    /// Reloads if the files changed since the last look; keeps the last good identity when the
    /// new files do not load. Returns the identity in use.
    fn refresh(&self) -> Arc<Loaded> {
        let (loaded, outcome) = self.current.refresh(|_| Self::load(&self.files));
        match outcome {
            Refreshed::Loaded => tracing::info!(
                cert = %self.files.cert.display(),
                not_after = %loaded.credential.not_after,
                "client certificate reloaded"
            ),
            // Logged once per change; the periodic retries of the same files are quiet.
            Refreshed::Failed {
                error,
                changed: true,
            } => tracing::warn!(
                cert = %self.files.cert.display(),
                %error,
                "changed client certificate files do not load; keeping the previous ones"
            ),
            Refreshed::Failed { changed: false, .. } | Refreshed::Unchanged => {}
        }
        loaded
    }
}

impl ResolvesClientCert for ReloadingIdentity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        // Changed files are noticed here, when the server asks for the certificate.
        Some(self.refresh().credential.certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
