//! A TLS server's reloadable credentials and trust: served certificates (several, chosen by
//! SNI), the client CA bundle and CRLs, loaded and validated as a whole into a rustls config and
//! a trust state. The gateway's listeners and applications on `mtls-axum` are built on it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use mtls_verify::{RevocationOptions, RevocationSources, TrustState};
use rustls::ServerConfig;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::recheck::Generations;
use crate::reload::Reload;
use crate::Error;
use mtls_tls::FileStamps;

/// A served certificate chain (leaf first) and its key.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// The certificate chain file, leaf first.
    pub cert: PathBuf,
    /// The private key file (owner-only).
    pub key: PathBuf,
    /// File holding the key's passphrase, for encrypted keys.
    #[serde(default)]
    pub key_passphrase_file: Option<PathBuf>,
}

impl CertificateFiles {
    fn credential_files(&self) -> mtls_tls::CredentialFiles {
        let c = mtls_tls::CredentialFiles::new(&self.cert, &self.key);
        match &self.key_passphrase_file {
            Some(p) => c.with_passphrase(mtls_tls::Passphrase::File(p.clone())),
            None => c,
        }
    }
}

/// Refuses a served certificate every TLS client would refuse (an extended key usage without
/// serverAuth, a CA certificate), and warns about a chain file holding only a leaf that
/// another CA issued (clients that trust only the root cannot build the path): found at start,
/// not at the first client.
fn check_served(
    path: &std::path::Path,
    chain: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<(), Error> {
    let Some(leaf) = chain.first() else {
        return Ok(());
    };
    let parsed = mtls_pki::pem_io::parse_certificate(leaf)?;
    let refuse = |why: &str| Err(Error::Config(format!("{}: {why}", path.display())));
    if let Ok(Some(eku)) = parsed.extended_key_usage() {
        if !eku.value.server_auth && !eku.value.any {
            return refuse(
                "the certificate does not allow server authentication (its extended key usage lacks serverAuth; issue one with `mtls issue server NAME`)",
            );
        }
    }
    if parsed.is_ca() {
        return refuse("a CA certificate cannot be served as the server's certificate");
    }
    if chain.len() == 1 && parsed.issuer().as_raw() != parsed.subject().as_raw() {
        tracing::warn!(
            cert = %path.display(),
            "the certificate file holds only the leaf: clients that trust only the root cannot build the path to it (serve the chain file, e.g. pki/issued/NAME.chain.pem)"
        );
    }
    Ok(())
}

/// Whether a client certificate is required in the handshake.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// The handshake fails without a valid certificate (default).
    #[default]
    Required,
    /// The handshake also admits clients without (or with an untrusted) certificate; the server
    /// answers their requests `401 NO_CLIENT_CERT` / `403 INVALID_CERT` itself.
    Optional,
}

/// Everything a TLS server loads from files.
#[derive(Clone, Debug)]
pub struct ServerFiles {
    /// The first is the default; the others are chosen by SNI.
    pub certificates: Vec<CertificateFiles>,
    /// CA bundles trusted for client certificates (CRL issuers must be in here too).
    pub client_ca: Vec<PathBuf>,
    /// CRL files, each signed by a CA of `client_ca`.
    pub crl: Vec<PathBuf>,
    /// Whether the handshake requires a client certificate.
    pub client_auth: ClientAuth,
    /// How strictly revocation is checked (unknown status, expired CRLs).
    pub revocation: RevocationOptions,
    /// ALPN protocols offered, in order of preference.
    pub alpn: Vec<Vec<u8>>,
    /// Whether clients may resume sessions (on by default).
    pub resumption: SessionResumption,
}

/// Whether a server lets clients resume TLS sessions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionResumption {
    /// One TLS 1.3 ticket per handshake (sent with the first answer) and a session cache per
    /// configuration generation; the identity is re-checked after a resumed handshake anyway.
    #[default]
    On,
    /// Every connection makes a full handshake and presents its certificate: no ticket is
    /// issued (saving its cost, about a tenth of a handshake) and no session is cached.
    Off,
}

/// One loaded generation of a server's TLS state.
pub struct ServerState {
    /// Generation number: 1 for the first load, higher for each reload.
    pub generation: u64,
    /// The rustls configuration for new handshakes.
    pub tls: Arc<ServerConfig>,
    /// The served certificates (their OCSP staples can be set while in use).
    pub certificates: Arc<mtls_tls::SniResolver>,
    /// The trust state client certificates are verified against.
    pub trust: Arc<TrustState>,
    /// (certificate file, notAfter) of every served certificate.
    pub served_not_after: Vec<(String, OffsetDateTime)>,
    /// (subject, notAfter) of every trusted client CA.
    pub ca_not_after: Vec<(String, OffsetDateTime)>,
    /// The served credentials, in the order of the configured certificates.
    pub credentials: Vec<mtls_tls::Credential>,
    /// Certificate files whose new contents a reload refused (with why): the previous
    /// credential still serves for them, while the rest (CAs, CRLs) is new.
    pub kept: Vec<String>,
}

impl ServerState {
    /// Whether a reload that kept some credentials read nothing new compared with `current`
    /// (the same certificates, CA bundle and CRLs, the same files kept): swapping it in would
    /// only empty caches and re-check every connection, every retry.
    pub fn adds_nothing_to(&self, current: &ServerState) -> bool {
        !self.kept.is_empty()
            && self.kept == current.kept
            && self.credentials.len() == current.credentials.len()
            && self
                .credentials
                .iter()
                .zip(&current.credentials)
                .all(|(a, b)| a.certified.cert == b.certified.cert)
            && self.trust.same_inputs(&current.trust)
    }
}

impl ServerFiles {
    /// Loads and validates everything: keys owner-only and matching their certificates,
    /// certificates valid now, CRLs signed by a CA of the bundle.
    pub fn load(&self, generation: u64, now: OffsetDateTime) -> Result<ServerState, Error> {
        self.load_with(generation, now, &RevocationSources::default())
    }

    /// [`load`](Self::load), with a trust state that also consults `sources` (revocations from
    /// the CA's feed, OCSP), which outlive reloads.
    pub fn load_with(
        &self,
        generation: u64,
        now: OffsetDateTime,
        sources: &RevocationSources,
    ) -> Result<ServerState, Error> {
        self.load_over(None, generation, now, sources)
    }

    /// Loads everything; with `previous`, a served certificate whose files are refused now (an
    /// expired certificate, a key made readable by others, a file mid-rotation) keeps its
    /// previous credential, so that the new CA bundle and CRLs still take effect: one bad
    /// certificate of several must not keep a revoked client trusted ([`ServerState::kept`]).
    fn load_over(
        &self,
        previous: Option<&ServerState>,
        generation: u64,
        now: OffsetDateTime,
        sources: &RevocationSources,
    ) -> Result<ServerState, Error> {
        let mut credentials = Vec::new();
        let mut served_not_after = Vec::new();
        let mut kept = Vec::new();
        for c in &self.certificates {
            let path = c.cert.display().to_string();
            let loaded = c
                .credential_files()
                .load(now)
                .map_err(Error::from)
                .and_then(|cred| check_served(&c.cert, &cred.certified.cert).map(|()| cred));
            let cred = match loaded {
                Ok(cred) => cred,
                Err(e) => {
                    let before = previous.and_then(|p| {
                        p.served_not_after
                            .iter()
                            .position(|(f, _)| *f == path)
                            .and_then(|i| p.credentials.get(i))
                    });
                    match before {
                        Some(cred) => {
                            kept.push(format!("{path} ({e})"));
                            cred.clone()
                        }
                        None => return Err(e),
                    }
                }
            };
            served_not_after.push((path, cred.not_after));
            credentials.push(cred);
        }
        let roots = mtls_tls::load_certificates(&self.client_ca)?;
        let ca_not_after = roots
            .iter()
            .filter_map(|c| mtls_pki::pem_io::parse_certificate(c).ok())
            .map(|c| {
                (
                    c.subject().to_string(),
                    c.validity().not_after.to_datetime(),
                )
            })
            .collect();
        let mut crls = mtls_tls::load_crls(&self.crl)?;
        let files_only = crls.len();
        if let Some(f) = &sources.fetched {
            crls.extend(f.crls());
        }
        let mut trust = match TrustState::new(generation, roots.clone(), &crls, self.revocation) {
            Ok(t) => t,
            // A fetched CRL whose signer left the CA bundle must not block the reload.
            Err(e) if crls.len() > files_only => {
                tracing::warn!(error = %e, "CRLs fetched from distribution points left out");
                TrustState::new(generation, roots, &crls[..files_only], self.revocation)?
            }
            Err(e) => return Err(e.into()),
        };
        if !sources.is_empty() {
            trust = trust.with_sources(sources);
        }
        if let Some(previous) = previous {
            // Refused if a CRL went back in time, against every generation so far.
            trust.check_not_older_than(&previous.trust)?;
            trust = trust.following(&previous.trust);
        }
        let trust = Arc::new(trust);
        let resolver = Arc::new(
            mtls_tls::SniResolver::new(&credentials)
                .ok_or_else(|| Error::Config("no server certificate configured".into()))?,
        );
        let verifier =
            mtls_tls::client_verifier(trust.clone(), self.client_auth == ClientAuth::Required);
        let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
        let mut tls = mtls_tls::server_config(resolver.clone(), verifier, &alpn)?;
        if self.resumption == SessionResumption::Off {
            tls.send_tls13_tickets = 0;
            tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        }
        Ok(ServerState {
            generation,
            tls: Arc::new(tls),
            certificates: resolver,
            trust,
            served_not_after,
            ca_not_after,
            credentials,
            kept,
        })
    }

    /// Loads the generation that follows `previous` ([`load_with`](Self::load_with)), keeping
    /// a previous certificate whose files are refused now ([`ServerState::kept`]), refusing
    /// it if a CRL went back in time (see [`TrustState::check_not_older_than`]): every reload
    /// goes through here, so a replayed CRL file or fetched CRL keeps the current state.
    pub fn load_after(
        &self,
        previous: &ServerState,
        generation: u64,
        now: OffsetDateTime,
        sources: &RevocationSources,
    ) -> Result<ServerState, Error> {
        self.load_over(Some(previous), generation, now, sources)
    }

    /// Every file [`ServerFiles::load`] reads.
    pub fn watched(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for c in &self.certificates {
            v.extend(c.credential_files().paths());
        }
        v.extend(self.client_ca.iter().cloned());
        v.extend(self.crl.iter().cloned());
        v
    }
}

/// A server state that reloads itself from its [`ServerFiles`] (drive it with
/// [`crate::reload::spawn`]).
pub struct ReloadingServer {
    files: ServerFiles,
    sources: RevocationSources,
    current: ArcSwap<ServerState>,
    generations: Generations,
    next: AtomicU64,
    /// Held for a whole reload: reloads from the file watcher, the CRL follower and
    /// [`reload_now`](Self::reload_now) callers run one at a time, so an older load never
    /// replaces a newer one (nor slips past the CRL rollback check against it).
    reloading: std::sync::Mutex<()>,
    /// The watched files' stamps before generation 1 was read.
    first_stamps: FileStamps,
}

impl ReloadingServer {
    /// Loads generation 1 now.
    pub fn new(files: ServerFiles) -> Result<Arc<Self>, Error> {
        Self::with_sources(files, RevocationSources::default())
    }

    /// [`new`](Self::new), with every generation's trust state also consulting `sources`
    /// (revocations from the CA's feed, OCSP); call [`Generations::poke`] on
    /// [`generations`](Self::generations) when they change, so open connections re-check.
    pub fn with_sources(
        files: ServerFiles,
        sources: RevocationSources,
    ) -> Result<Arc<Self>, Error> {
        let first_stamps = FileStamps::of(&files.watched());
        let state = files.load_with(1, OffsetDateTime::now_utc(), &sources)?;
        Ok(Arc::new(ReloadingServer {
            files,
            sources,
            current: ArcSwap::from_pointee(state),
            generations: Generations::new(1),
            next: AtomicU64::new(2),
            reloading: std::sync::Mutex::new(()),
            first_stamps,
        }))
    }

    /// The state in use now.
    pub fn current(&self) -> Arc<ServerState> {
        self.current.load_full()
    }

    /// Announces each new generation to open connections (see [`crate::recheck`]).
    pub fn generations(&self) -> &Generations {
        &self.generations
    }

    /// The revocation sources every generation consults.
    pub fn sources(&self) -> &RevocationSources {
        &self.sources
    }

    /// The files the state is loaded from.
    pub fn files(&self) -> &ServerFiles {
        &self.files
    }

    /// Loads a new generation and swaps it in; on error the current one stays, except for
    /// [`Error::CredentialsKept`]: the new generation serves, with some previous certificates.
    pub fn reload_now(&self) -> Result<u64, Error> {
        // A poisoned lock only means a reload panicked: the state it guards is `current`.
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        let state = self.files.load_after(
            &self.current.load(),
            generation,
            OffsetDateTime::now_utc(),
            &self.sources,
        )?;
        let kept = state.kept.clone();
        if !state.adds_nothing_to(&self.current.load()) {
            self.current.store(Arc::new(state));
            self.generations.publish(generation);
        }
        if !kept.is_empty() {
            return Err(Error::CredentialsKept { kept });
        }
        Ok(generation)
    }
}

impl Reload for Arc<ReloadingServer> {
    fn watched(&self) -> Vec<PathBuf> {
        self.files.watched()
    }

    fn reload(&mut self) -> Result<String, String> {
        self.reload_now()
            .map(|g| format!("TLS certificates, CAs and CRLs (generation {g})"))
            .map_err(|e| e.to_string())
    }

    fn loaded_stamps(&self) -> Option<FileStamps> {
        Some(self.first_stamps.clone())
    }
}
