//! A client identity (certificate chain and key) read from files and picked up again when the
//! files change: a service whose certificate is renewed on disk presents the new one on its next
//! connection, without a restart.
//!
//! The files are checked (one `stat` each) when a connection starts. A change is loaded and
//! validated (key matches, leaf valid now) before it is used; a broken or half-written
//! replacement is logged and the last good identity stays; it is tried again every
//! [`RETRY_FAILED_LOAD`] until it loads, since the fix (a `chmod` of the key, a clock reaching
//! the certificate's start) may change no file. TLS sessions of the previous
//! identity are forgotten with it, so a resumed session never speaks for a certificate the
//! client no longer holds.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, ResolvesClientCert, Tls12ClientSessionValue,
    Tls13ClientSessionValue,
};
use rustls::sign::CertifiedKey;
use rustls::{NamedGroup, SignatureScheme};
use rustls_pki_types::ServerName;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::files::FileStamps;
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

struct Current {
    stamps: FileStamps,
    credential: Credential,
    sessions: Arc<ClientSessionMemoryCache>,
    /// When the files as they are now last failed to load: they are tried again after
    /// [`RETRY_FAILED_LOAD`] even if they do not change (a fix such as `chmod 600` on the key,
    /// or a certificate that becomes valid, changes no stamp).
    failed_at: Option<Instant>,
}

/// How long changed files that did not load wait before they are tried again unchanged.
pub const RETRY_FAILED_LOAD: Duration = Duration::from_secs(5);

/// A client identity that follows its files. Use it as a rustls client-certificate resolver
/// *and* session store ([`crate::client_config_reloading`] does both).
pub struct ReloadingIdentity {
    files: CredentialFiles,
    current: Mutex<Current>,
}

impl std::fmt::Debug for ReloadingIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingIdentity")
            .field("files", &self.files)
            .finish()
    }
}

const SESSIONS: usize = 256;

impl ReloadingIdentity {
    /// Loads the identity now; an error here is the caller's to report (nothing to fall back
    /// on yet).
    pub fn new(files: CredentialFiles) -> Result<Self> {
        let stamps = FileStamps::of(&files.paths());
        let credential = files.load(OffsetDateTime::now_utc())?;
        Ok(ReloadingIdentity {
            files,
            current: Mutex::new(Current {
                stamps,
                credential,
                sessions: Arc::new(ClientSessionMemoryCache::new(SESSIONS)),
                failed_at: None,
            }),
        })
    }

    /// The identity in use, after picking up changed files.
    pub fn credential(&self) -> Option<Credential> {
        self.refresh();
        self.current.lock().ok().map(|c| c.credential.clone())
    }

    /// Reloads if the files changed since the last look; keeps the last good identity when the
    /// new files do not load. Returns the session store of the identity in use.
    fn refresh(&self) -> Option<Arc<ClientSessionMemoryCache>> {
        let mut cur = self.current.lock().ok()?;
        let stamps = FileStamps::of(&self.files.paths());
        let retry = cur
            .failed_at
            .is_some_and(|at| at.elapsed() >= RETRY_FAILED_LOAD);
        if stamps != cur.stamps || retry {
            match self.files.load(OffsetDateTime::now_utc()) {
                Ok(credential) => {
                    tracing::info!(
                        cert = %self.files.cert.display(),
                        not_after = %credential.not_after,
                        "client certificate reloaded"
                    );
                    cur.credential = credential;
                    cur.sessions = Arc::new(ClientSessionMemoryCache::new(SESSIONS));
                    cur.failed_at = None;
                }
                Err(e) => {
                    // Logged once per change; the periodic retries of the same files are quiet.
                    if !retry {
                        tracing::warn!(
                            cert = %self.files.cert.display(),
                            error = %e,
                            "changed client certificate files do not load; keeping the previous ones"
                        );
                    }
                    cur.failed_at = Some(Instant::now());
                }
            }
            cur.stamps = stamps;
        }
        Some(cur.sessions.clone())
    }

    fn sessions(&self) -> Option<Arc<ClientSessionMemoryCache>> {
        self.current.lock().ok().map(|c| c.sessions.clone())
    }
}

impl ResolvesClientCert for ReloadingIdentity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        // Changed files are also noticed here, not only when rustls asks the session store
        // for a ticket: a client without resumption (one that checks the server's revocation
        // status on every connection) never asks.
        self.refresh();
        self.current
            .lock()
            .ok()
            .map(|c| c.credential.certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The session store of a [`ReloadingIdentity`]: rustls asks it for a ticket at the start of
/// every connection, which is where changed files are noticed (and again when the server asks
/// for the certificate).
#[derive(Debug)]
pub(crate) struct Sessions(pub(crate) Arc<ReloadingIdentity>);

impl ClientSessionStore for Sessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        if let Some(s) = self.0.sessions() {
            s.set_kx_hint(server_name, group)
        }
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.0.sessions()?.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        if let Some(s) = self.0.sessions() {
            s.set_tls12_session(server_name, value)
        }
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.0.refresh()?.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        if let Some(s) = self.0.sessions() {
            s.remove_tls12_session(server_name)
        }
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        if let Some(s) = self.0.sessions() {
            s.insert_tls13_ticket(server_name, value)
        }
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.0.refresh()?.take_tls13_ticket(server_name)
    }
}
