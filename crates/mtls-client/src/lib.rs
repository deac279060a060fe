//! `mtls-client`: the client side of mutual TLS, for the `mtls` tools and for applications (the
//! Rust form of the guide's `MTLSClient` and its axios agent).
//!
//! What it does:
//! - [`ClientBuilder`]: the one builder of every HTTP(S) client mtls uses: a [`Client`]
//!   (a [`reqwest::Client`]) on rustls with our cipher suites, verifying the server against the
//!   given CAs, presenting a client certificate read from files (encrypted keys too) and picking
//!   up renewed files on its next connection, without a restart; the server's revocation status
//!   is checked against CRL files followed the same way and the given sources
//!   ([`ServerTrust`]), and, with those checks, pooled connections to a server no longer
//!   trusted are not used again;
//! - [`pool`]: the upstream pool of a reverse proxy (HTTP/1.1 keep-alive connections driven
//!   by the proxying task itself), from the same builder;
//! - [`ca`]: the client of the online CA's API (pinning the root, enroll, renew, revoke, tokens);
//! - [`ocsp`]: asking a certificate's OCSP responder, verified, and stapling a server's own
//!   certificates; [`ocsp_check`]: OCSP checking of client certificates for servers (cached,
//!   refreshed ahead, one bounded wait for a new client);
//! - [`crl`]: downloading CRLs and following the distribution points certificates name;
//! - [`feed`]: following the CA's revocation feed into a [`mtls_verify::PushedRevocations`]
//!   set that servers consult on every check;
//! - [`renewal`]: renewing a certificate from the online CA before it expires, as a library
//!   (the `mtls renew` daemon is built on it) — without the CA's SQLite/PostgreSQL code.
//!
//! What it does not do: serve, or decide policy.
//!
//! ```no_run
//! # async fn run() -> Result<(), mtls_client::Error> {
//! let client = mtls_client::ClientBuilder::new()
//!     .ca_file("ca.crt")
//!     .identity_files("client.chain.pem", "client.key")
//!     .passphrase_file("client.key.pass")
//!     .build()?;
//! let response = client
//!     .get("https://api.example.com/api/secure")
//!     .send()
//!     .await?;
//! // The time limits bound how long, not how much: a server that answers fast and without
//! // end would fill memory. Read bodies with a size limit.
//! let body = mtls_client::body_limited(response, 1 << 20).await?;
//! # let _ = body; Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ca;
pub mod crl;
pub mod feed;
mod https;
pub mod observe;
pub mod ocsp;
pub mod ocsp_check;
pub mod pool;
pub mod renewal;
pub mod server_trust;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mtls_tls::{CredentialFiles, Passphrase, ReloadingIdentity};
use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

pub use https::Client;
pub use reqwest;
pub use server_trust::ServerTrust;

/// Parses a duration with a unit (`30d`, `12h`): the one syntax of mtls
/// (`mtls_serve::duration`).
pub fn duration(s: &str) -> Result<time::Duration, Error> {
    mtls_serve::duration::parse_time(s).map_err(|e| Error::Config(e.to_string()))
}

/// Errors of the client library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid or incomplete: no CA, a bad URL, duration or fingerprint,
    /// or a certificate or key file that cannot be used.
    #[error("{0}")]
    Config(String),
    /// Reading, parsing or creating a certificate, key or CSR failed.
    #[error(transparent)]
    Pki(#[from] mtls_pki::Error),
    /// Loading the CA or credential files, or building the rustls configuration, failed.
    #[error(transparent)]
    Tls(#[from] mtls_tls::Error),
    /// Building the HTTP client or reading a response body failed.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// The server could not be reached or the exchange failed in transport.
    #[error("request to {url} failed: {detail}")]
    Transport {
        /// The URL requested.
        url: String,
        /// What failed, with its causes.
        detail: String,
    },
    /// The CA answered with an error.
    #[error("the CA refused ({status} {code}): {message}")]
    Refused {
        /// HTTP status of the answer.
        status: u16,
        /// Error code from the CA's JSON body (`HTTP` when the body has none).
        code: String,
        /// Error message from the body, else the first 200 characters of the body.
        message: String,
        /// The answer's `Retry-After` (delta-seconds form), when it has one: the CA refused
        /// for now (`429 RATE_LIMITED`, a `503`) and says when to try again.
        retry_after: Option<std::time::Duration>,
    },
    /// The CA's root does not have the pinned fingerprint.
    #[error("the CA's root certificate has fingerprint {found}, expected {expected}: refusing to trust it")]
    FingerprintMismatch {
        /// The pinned fingerprint.
        expected: String,
        /// Fingerprints of the roots the CA sent, comma-separated.
        found: String,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CA's answer could not be understood (malformed JSON or PEM, a missing field), or the
    /// certificate it issued is unusable.
    #[error("unexpected answer from the CA: {0}")]
    Protocol(String),
}

/// Where the server's trust anchors come from.
#[derive(Clone, Debug)]
enum Roots {
    None,
    Files(Vec<PathBuf>),
    Certificates(Vec<CertificateDer<'static>>),
    /// Only for fetching a CA's roots that are then checked against a pinned fingerprint.
    AcceptAnyForPinning,
}

/// Builds HTTP(S) clients. Strict by default: the server must chain to the given CAs (no
/// public root store), TLS 1.3/1.2 with ECDHE + AEAD only, HTTPS only, no proxies from the
/// environment.
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    roots: Roots,
    /// Certificate and key files (their passphrase is `passphrase`).
    identity: Option<(PathBuf, PathBuf)>,
    passphrase: Passphrase,
    /// The whole exchange; `None` only through [`ClientBuilder::no_total_timeout`].
    total_timeout: Option<Duration>,
    /// Each wait for the server to send; `None`: the total timeout's value.
    read_timeout: Option<Duration>,
    connect_timeout: Duration,
    http1_only: bool,
    fixed_identity: Option<mtls_tls::Credential>,
    resolve: Vec<(String, std::net::SocketAddr)>,
    pool_idle_timeout: Option<Duration>,
    pool_max_idle: usize,
    staple: ocsp::StapleCheck,
    revocation: ServerRevocation,
    observe: Option<Arc<observe::HandshakeLog>>,
    /// SHA-256 of the SubjectPublicKeyInfo the server's certificate must have (one of).
    server_key_pins: Vec<mtls_pki::KeyPin>,
}

/// How the server's certificate is checked for revocation beyond its OCSP staple: CRL files
/// and sources (the CA's feed, an OCSP checker), through the same [`mtls_verify::TrustState`]
/// servers use for their clients.
#[derive(Clone, Debug, Default)]
struct ServerRevocation {
    crl_files: Vec<PathBuf>,
    sources: mtls_verify::RevocationSources,
    soft_fail: bool,
    /// The state of the client this one replaces: no older CRL than its.
    floor: Option<Arc<mtls_verify::TrustState>>,
}

impl ServerRevocation {
    fn is_configured(&self) -> bool {
        !self.crl_files.is_empty() || !self.sources.is_empty()
    }

    /// The trust state that checks the server's chain (following the CRL files), or `None`
    /// when nothing is configured.
    fn state(&self, roots: &[CertificateDer<'static>]) -> Result<Option<Arc<ServerTrust>>, Error> {
        if !self.is_configured() {
            return Ok(None);
        }
        let options = mtls_verify::RevocationOptions {
            allow_unknown_status: self.soft_fail,
            allow_expired_crl: self.soft_fail,
            scope: mtls_verify::CrlScope::default(),
        };
        let mut sources = self.sources.clone();
        if self.soft_fail && sources.decisions.is_none() {
            // Soft-fail acceptances are logged (at most once a second), not silent.
            sources.decisions = Some(Arc::default());
        }
        let trust = ServerTrust::new(
            self.crl_files.clone(),
            roots.to_vec(),
            options,
            sources,
            self.floor.clone(),
        )?;
        Ok(Some(Arc::new(trust)))
    }
}

/// How long a connection may take to open (TCP and the TLS handshake) before it is given up:
/// the builder's default, and the tunnel's.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The builder's default deadline for a whole exchange ([`ClientBuilder::timeout`]).
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(30);

/// The builder's default for each wait for the server to send
/// ([`ClientBuilder::read_timeout`]) when there is no total deadline to take it from.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            roots: Roots::None,
            identity: None,
            passphrase: Passphrase::None,
            total_timeout: Some(TOTAL_TIMEOUT),
            read_timeout: None,
            connect_timeout: CONNECT_TIMEOUT,
            http1_only: false,
            fixed_identity: None,
            resolve: Vec::new(),
            pool_idle_timeout: None,
            pool_max_idle: 256,
            staple: ocsp::StapleCheck::IfPresent,
            revocation: ServerRevocation::default(),
            observe: None,
            server_key_pins: Vec::new(),
        }
    }
}

impl ClientBuilder {
    /// A builder with the strict defaults: 10 s to connect, 30 s for the whole exchange (and
    /// so for every wait within it).
    pub fn new() -> Self {
        Self::default()
    }

    /// Trust the CA certificates in this PEM or DER file for the server (repeatable).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        match &mut self.roots {
            Roots::Files(v) => v.push(path.into()),
            _ => self.roots = Roots::Files(vec![path.into()]),
        }
        self
    }

    /// Trust these CA certificates for the server.
    pub fn ca_certificates(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.roots = Roots::Certificates(roots);
        self
    }

    /// Present this certificate chain (leaf first) and key. The files are checked when each
    /// new connection starts, and a renewed pair is used from then on.
    pub fn identity_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// Present this already loaded credential (it does not follow any file).
    pub fn identity(mut self, credential: mtls_tls::Credential) -> Self {
        self.fixed_identity = Some(credential);
        self
    }

    /// The encrypted key's passphrase is in this (owner-only) file.
    pub fn passphrase_file(self, path: impl Into<PathBuf>) -> Self {
        self.passphrase(Passphrase::File(path.into()))
    }

    /// The encrypted key's passphrase.
    pub fn passphrase_bytes(self, passphrase: Zeroizing<Vec<u8>>) -> Self {
        self.passphrase(Passphrase::Bytes(Arc::new(passphrase)))
    }

    /// Where the encrypted key's passphrase comes from: a file, bytes, or none (the key is not
    /// encrypted). [`FeedFiles`](crate::feed::FeedFiles) hands its own on this way.
    pub fn passphrase(mut self, p: Passphrase) -> Self {
        self.passphrase = p;
        self
    }

    /// The deadline of a whole exchange: from the start of the request (connecting included)
    /// to the last byte of the response body, however steadily it flows. Default 30 s: right
    /// for answers of bounded size; for a body that may stream for longer (a download, an
    /// event stream) see [`no_total_timeout`](Self::no_total_timeout).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.total_timeout = Some(d);
        self
    }

    /// Loosening: no deadline for the whole exchange, so a response body is read for as long
    /// as it keeps flowing. A server that stalls still fails: every wait for it stays bounded
    /// by the [`read_timeout`](Self::read_timeout) (30 s unless set) and the
    /// [`connect_timeout`](Self::connect_timeout).
    pub fn no_total_timeout(mut self) -> Self {
        self.total_timeout = None;
        self
    }

    /// The longest the client waits for the server to send: counted from the start of the
    /// request (connecting and sending it included) until the response head is in, then for
    /// each next piece of the body, counted again from each piece (reqwest's `read_timeout`).
    /// It never cuts a body that keeps flowing; a server that stops sending fails with a
    /// timeout error. Default: the [`timeout`](Self::timeout)'s value, or 30 s without one.
    pub fn read_timeout(mut self, d: Duration) -> Self {
        self.read_timeout = Some(d);
        self
    }

    /// The read timeout in force: set, else the total deadline's, else [`READ_TIMEOUT`].
    fn effective_read_timeout(&self) -> Duration {
        self.read_timeout
            .or(self.total_timeout)
            .unwrap_or(READ_TIMEOUT)
    }

    /// Applies the connect, read and total timeouts to a reqwest builder.
    fn with_timeouts(&self, b: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        let b = b
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.effective_read_timeout());
        match self.total_timeout {
            Some(d) => b.timeout(d),
            None => b,
        }
    }

    /// Connect to `addr` for host `name` (its TLS name and `Host`), like curl's `--resolve`.
    pub fn resolve(mut self, name: impl Into<String>, addr: std::net::SocketAddr) -> Self {
        self.resolve.push((name.into(), addr));
        self
    }

    /// How long an idle pooled connection is kept (reqwest's default: 90 s). A renewed
    /// certificate is presented from the next new connection on.
    pub fn pool_idle_timeout(mut self, d: Duration) -> Self {
        self.pool_idle_timeout = Some(d);
        self
    }

    /// How many idle connections a [`pool::Pool`] keeps (default 256).
    pub fn pool_max_idle(mut self, n: usize) -> Self {
        self.pool_max_idle = n;
        self
    }

    /// The longest a request may wait for a new connection (TCP, then TLS); default
    /// [`CONNECT_TIMEOUT`] (10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Requires the server's certificate to carry this key (SHA-256 of its
    /// SubjectPublicKeyInfo, as curl's `--pinnedpubkey` and `mtls inspect`'s `spki_sha256`;
    /// repeatable: any of them), on top of the chain check, which still applies: a pin narrows
    /// whom the CAs vouch for (another certificate for the same name, from the same CA or a
    /// compromised one, is refused), it never replaces them.
    pub fn pin_server_key(mut self, pin: mtls_pki::KeyPin) -> Self {
        self.server_key_pins.push(pin);
        self
    }

    /// Requires every server to staple an OCSP response that verifies and says "good" (by
    /// default a stapled "revoked" refuses the server and a missing staple is fine).
    pub fn require_ocsp_staple(mut self) -> Self {
        self.staple = ocsp::StapleCheck::Required;
        self
    }

    /// Checks the server's certificate against this CRL (PEM or DER, repeatable). Its signer
    /// must be among the CA files. With a CRL given, the server's leaf must be covered by one
    /// (hard-fail), as servers require of their clients. The file is read when the client is
    /// built and followed as [`identity_files`](Self::identity_files) are: checked when each
    /// new connection's server is verified (and, while connections are pooled, at most once a
    /// second before a request); a replaced CRL is used from then on, and pooled connections
    /// to a server it revokes are not used again. One that does not load, or is older (a
    /// lower CRL number) than the CRL in use, is logged and the last good CRL stays in force
    /// (see [`ServerTrust`]).
    pub fn crl_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.revocation.crl_files.push(path.into());
        self
    }

    /// For a client that replaces another (a reload): CRLs older than those of `previous` (a
    /// CRL of the same issuer with a lower number) are refused from the start, as a client
    /// that lived on refuses them ([`ServerTrust`]); building fails on one.
    pub fn crl_floor(mut self, previous: &ServerTrust) -> Self {
        self.revocation.floor = Some(previous.current());
        self
    }

    /// Checks the server's certificate with these sources too: the CA's revocation feed
    /// ([`feed`]), an OCSP checker ([`ocsp_check`]) — hard-fail unless
    /// [`soft_fail_revocation`](Self::soft_fail_revocation).
    pub fn revocation_sources(mut self, sources: mtls_verify::RevocationSources) -> Self {
        self.revocation.sources = sources;
        self
    }

    /// Loosening: a server whose revocation status is unknown (no covering CRL, no OCSP
    /// answer, a silent feed) or whose CRL is past its nextUpdate is accepted (logged as a
    /// warning, at most once a second); a server known to be revoked is still refused.
    pub fn soft_fail_revocation(mut self) -> Self {
        self.revocation.soft_fail = true;
        self
    }

    /// Records what each handshake shows (server chain, TLS version, whether a client
    /// certificate was asked for and sent) in `log`.
    pub fn observe_handshakes(mut self, log: Arc<observe::HandshakeLog>) -> Self {
        self.observe = Some(log);
        self
    }

    /// HTTP/1.1 only (no h2 in ALPN).
    pub fn http1_only(mut self) -> Self {
        self.http1_only = true;
        self
    }

    pub(crate) fn accept_any_server_for_pinning(mut self) -> Self {
        self.roots = Roots::AcceptAnyForPinning;
        self
    }

    fn server_roots(&self) -> Result<Vec<CertificateDer<'static>>, Error> {
        match &self.roots {
            Roots::None => Err(Error::Config(
                "no CA to verify the server against: give ca_file (--ca)".into(),
            )),
            Roots::Files(paths) => Ok(mtls_tls::load_certificates(paths)?),
            Roots::Certificates(c) => Ok(c.clone()),
            Roots::AcceptAnyForPinning => Ok(Vec::new()),
        }
    }

    /// The rustls configuration this builder stands for (for callers that speak TLS without
    /// HTTP, like `mtls tunnel`).
    pub fn tls_config(&self, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, Error> {
        Ok(self.tls_config_and_trust(alpn)?.0)
    }

    /// [`tls_config`](Self::tls_config), with the trust state its verifier checks the server's
    /// revocation status with (CRL files and sources given to this builder; `None` when none
    /// is configured): for a long-running client to re-check an open connection's server when
    /// its sources or CRL files change ([`ServerTrust::current`], [`ServerTrust::reload`],
    /// [`ServerTrust::connection_epoch`]).
    pub fn tls_config_and_trust(
        &self,
        alpn: &[&[u8]],
    ) -> Result<(rustls::ClientConfig, Option<Arc<ServerTrust>>), Error> {
        if matches!(self.roots, Roots::AcceptAnyForPinning) {
            return Ok((accept_any_config(alpn)?, None));
        }
        let roots = self.server_roots()?;
        if self.identity.is_none() && !matches!(self.passphrase, Passphrase::None) {
            return Err(Error::Config(
                "a passphrase was given without identity_files (cert and key)".into(),
            ));
        }
        let mut config = match &self.identity {
            _ if self.fixed_identity.is_some() => {
                mtls_tls::client_config(&roots, self.fixed_identity.as_ref(), alpn)?
            }
            Some((cert, key)) => {
                let files =
                    CredentialFiles::new(cert, key).with_passphrase(self.passphrase.clone());
                let identity = Arc::new(ReloadingIdentity::new(files)?);
                mtls_tls::client_config_reloading(&roots, identity, alpn)?
            }
            None => mtls_tls::client_config(&roots, None, alpn)?,
        };
        // The chain as rustls verifies it (the same roots and provider), then the server's
        // OCSP staple.
        let mut store = rustls::RootCertStore::empty();
        for r in &roots {
            store.add(r.clone()).map_err(mtls_tls::Error::Rustls)?;
        }
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(store),
            mtls_tls::provider(),
        )
        .build()
        .map_err(|e| Error::Config(format!("server verifier: {e}")))?;
        let revocation = self.revocation.state(&roots)?;
        if let Some(log) = &self.observe {
            config.client_auth_cert_resolver = Arc::new(observe::ObservingResolver {
                inner: config.client_auth_cert_resolver.clone(),
                log: log.clone(),
            });
        }
        if revocation.is_some() || self.staple == ocsp::StapleCheck::Required {
            // A resumed session skips the verifier: every connection verifies the server's
            // current status (and, when one is required, its staple) instead.
            config.resumption = rustls::client::Resumption::disabled();
        }
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(ocsp::StapleVerifier {
                inner,
                revocation: revocation.clone(),
                roots,
                check: self.staple,
                log: self.observe.clone(),
                pins: self.server_key_pins.clone(),
            }));
        Ok((config, revocation))
    }

    /// A client for `https://` URLs: a `reqwest::Client` that also closes its pooled
    /// connections once their server is no longer trusted (see [`Client`]).
    pub fn build(self) -> Result<Client, Error> {
        let alpn: &[&[u8]] = if self.http1_only {
            &[b"http/1.1"]
        } else {
            &[b"h2", b"http/1.1"]
        };
        let (tls, trust) = self.tls_config_and_trust(alpn)?;
        let refusing = self.reqwest_client(refuse_all_config()?)?;
        let make = move || self.reqwest_client(tls.clone());
        Ok(Client::new(trust, Box::new(make), refusing)?)
    }

    /// A `reqwest::Client` on `tls` with this builder's settings.
    fn reqwest_client(&self, tls: rustls::ClientConfig) -> Result<reqwest::Client, reqwest::Error> {
        let b = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .no_proxy()
            .user_agent(concat!("mtls/", env!("CARGO_PKG_VERSION")))
            // Redirects are answers, as with curl: following one would present the client
            // certificate (and resend headers and a 307/308 body) to wherever it points.
            .redirect(reqwest::redirect::Policy::none());
        let mut b = self.with_timeouts(b);
        if self.http1_only {
            b = b.http1_only();
        }
        for (name, addr) in &self.resolve {
            b = b.resolve(name, *addr);
        }
        if let Some(d) = self.pool_idle_timeout {
            b = b.pool_idle_timeout(d);
        }
        b.build()
    }

    /// A keep-alive pool of HTTP/1.1 connections to one upstream, for a reverse proxy (see
    /// [`pool`]). HTTPS targets are verified and presented to as [`build`](Self::build)'s
    /// clients are (the client certificate follows its files); plain targets need no CA.
    /// Idle connections are kept for the `pool_idle_timeout` (default 90 s).
    pub fn build_pool<B>(self, target: pool::PoolTarget) -> Result<pool::Pool<B>, Error>
    where
        B: hyper::body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tls = match &target {
            pool::PoolTarget::Https { .. } => {
                let (config, trust) = self.tls_config_and_trust(&[b"http/1.1"])?;
                Some((Arc::new(config), trust))
            }
            pool::PoolTarget::Http { .. } => None,
        };
        Ok(pool::Pool::new(
            target,
            tls,
            self.connect_timeout,
            self.pool_idle_timeout.unwrap_or(Duration::from_secs(90)),
            self.pool_max_idle,
        ))
    }

    /// A `reqwest::Client` for plain `http://` URLs only (CRL distribution points and OCSP
    /// responders, which are plain HTTP by design: their answers are signed). Redirects are
    /// not followed: anyone on the path (or the responder) could otherwise send a gateway's
    /// requests, POST bodies included, to internal `http://` addresses of its choosing.
    pub fn build_plain_http(self) -> Result<reqwest::Client, Error> {
        let b = reqwest::Client::builder()
            .use_preconfigured_tls(refuse_all_config()?)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("mtls/", env!("CARGO_PKG_VERSION")));
        Ok(self.with_timeouts(b).build()?)
    }
}

/// Reads a response body of at most `limit` bytes.
pub async fn body_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, Error> {
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > limit {
            return Err(Error::Transport {
                url: resp.url().to_string(),
                detail: format!("the answer is larger than {limit} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

fn base_config() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, Error>
{
    rustls::ClientConfig::builder_with_provider(mtls_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls(e.into()))
}

fn accept_any_config(alpn: &[&[u8]]) -> Result<rustls::ClientConfig, Error> {
    let algs = mtls_tls::provider().signature_verification_algorithms;
    let mut c = base_config()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifiers::Special::AcceptAnyForPinning(algs)))
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(c)
}

fn refuse_all_config() -> Result<rustls::ClientConfig, Error> {
    let algs = mtls_tls::provider().signature_verification_algorithms;
    Ok(base_config()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifiers::Special::RefuseAll(algs)))
        .with_no_client_auth())
}

mod verifiers {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::WebPkiSupportedAlgorithms;
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    /// The two server verifiers that are not webpki's.
    #[derive(Debug)]
    pub(crate) enum Special {
        /// Accepts any server certificate: only for fetching the roots that are then pinned by
        /// fingerprint.
        AcceptAnyForPinning(WebPkiSupportedAlgorithms),
        /// Refuses every server: a plain-HTTP client must never speak TLS.
        RefuseAll(WebPkiSupportedAlgorithms),
    }

    impl Special {
        fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
            match self {
                Special::AcceptAnyForPinning(a) | Special::RefuseAll(a) => a,
            }
        }
    }

    impl ServerCertVerifier for Special {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            match self {
                Special::AcceptAnyForPinning(_) => Ok(ServerCertVerified::assertion()),
                Special::RefuseAll(_) => Err(rustls::Error::General(
                    "this client speaks plain HTTP only".into(),
                )),
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms().supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each wait for the server is bounded by default, and never cut shorter than a whole
    /// exchange its caller allowed: a long poll given `timeout(35 s)` (the feed) must not end
    /// at a 30 s read timeout it never asked for.
    #[test]
    fn the_read_timeout_follows_the_total_deadline_unless_set() {
        let secs = Duration::from_secs;
        assert_eq!(ClientBuilder::new().effective_read_timeout(), TOTAL_TIMEOUT);
        let long = ClientBuilder::new().timeout(secs(35));
        assert_eq!(long.effective_read_timeout(), secs(35));
        let streaming = ClientBuilder::new().no_total_timeout();
        assert_eq!(streaming.effective_read_timeout(), READ_TIMEOUT);
        let set = ClientBuilder::new()
            .no_total_timeout()
            .read_timeout(secs(5));
        assert_eq!(set.effective_read_timeout(), secs(5));
        let set = ClientBuilder::new().read_timeout(secs(5)).timeout(secs(60));
        assert_eq!(set.effective_read_timeout(), secs(5));
    }
}
