//! `mtls-tls`: rustls configurations for mtls servers and clients, and loading of TLS
//! credentials with key-file hygiene.
//!
//! What it does: one crypto provider (aws-lc-rs) restricted to TLS 1.3 and TLS 1.2 with ECDHE +
//! AEAD suites only (NIST SP 800-52r2); server configs that demand client certificates through
//! `mtls-verify`'s verifier and pick the server certificate by SNI; client configs that present a
//! certificate and verify the server against given roots; loading of certificate chains and
//! (possibly encrypted) keys, refusing keys other users can read and checking that the key
//! belongs to the certificate. No renegotiation (rustls has none) and no 0-RTT.
//!
//! Also [`IdleTimeout`], the stream wrapper every server uses to close connections that make no
//! progress; [`files`]: CA bundles and CRLs from files, and [`FileStamps`], the change detector
//! of every reload; [`follow`]: how a client follows files ([`FollowedFiles`]), and
//! [`ReloadingIdentity`], a client identity that follows its files.
//!
//! What it does not do: sockets, HTTP, reload loops or policy.
#![forbid(unsafe_code)]

pub mod files;
pub mod follow;
pub mod identity;
pub mod idle;
pub use files::{load_certificates, load_crls, FileStamps};
pub use follow::{FollowedFiles, Refreshed, RETRY_FAILED_LOAD};
pub use identity::{CredentialFiles, Passphrase, ReloadingIdentity};
pub use idle::IdleTimeout;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

/// Errors loading credentials or building configs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{0}")]
    Pki(#[from] mtls_pki::Error),
    #[error("{path}: {detail}")]
    Credential { path: String, detail: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("no trusted CA certificates given")]
    NoRoots,
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// The crypto provider: aws-lc-rs with only ECDHE + AEAD cipher suites.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{cipher_suite as cs, default_provider};
    let mut p = default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A certificate chain and key, loaded and checked.
#[derive(Clone, Debug)]
pub struct Credential {
    pub certified: Arc<CertifiedKey>,
    /// The names in the leaf (for SNI selection).
    pub names: Vec<String>,
    pub not_after: OffsetDateTime,
}

/// Loads a chain (leaf first) and its key. The key may be encrypted (`passphrase`), must be
/// owner-only, and must match the leaf; the leaf must be valid at `now`.
pub fn load_credential(
    cert: &Path,
    key: &Path,
    passphrase: Option<&[u8]>,
    now: OffsetDateTime,
) -> Result<Credential> {
    let chain =
        mtls_pki::pem_io::certificates(&mtls_pki::files::read_public(cert)?).map_err(|e| {
            Error::Credential {
                path: cert.display().to_string(),
                detail: e.to_string(),
            }
        })?;
    let key_bytes = mtls_pki::files::read_secret(key)?;
    let private = mtls_pki::PrivateKey::from_pem_or_der(&key_bytes, passphrase).map_err(|e| {
        Error::Credential {
            path: key.display().to_string(),
            detail: e.to_string(),
        }
    })?;
    credential_from_parts(chain, &private, now).map_err(|detail| Error::Credential {
        path: cert.display().to_string(),
        detail,
    })
}

/// Builds a credential from an in-memory chain and key (same checks as [`load_credential`]).
pub fn credential_from_parts(
    chain: Vec<CertificateDer<'static>>,
    key: &mtls_pki::PrivateKey,
    now: OffsetDateTime,
) -> std::result::Result<Credential, String> {
    let leaf = chain.first().ok_or("no certificate in the chain")?;
    let parsed = mtls_pki::pem_io::parse_certificate(leaf).map_err(|e| e.to_string())?;
    if !key.matches_spki(parsed.public_key().raw) {
        return Err("the private key does not match the certificate".into());
    }
    let not_after = parsed.validity().not_after.to_datetime();
    if now > not_after || now < parsed.validity().not_before.to_datetime() {
        return Err(format!(
            "the certificate is not valid now (valid from {} until {})",
            mtls_pki::rfc3339(&parsed.validity().not_before.to_datetime()),
            mtls_pki::rfc3339(&not_after)
        ));
    }
    let mut names: Vec<String> = mtls_pki::issue::certificate_sans(&parsed)
        .into_iter()
        .filter_map(|s| match s {
            mtls_pki::San::Dns(d) => Some(d),
            mtls_pki::San::Ip(ip) => Some(ip.to_string()),
            _ => None,
        })
        .collect();
    names.dedup();
    // This copy is wiped: rustls's aws-lc-rs key provider wraps what it is given in
    // `Zeroizing` (rustls 0.23 `AwsLcRs::load_private_key`).
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("the key cannot sign: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    Ok(Credential {
        certified: Arc::new(certified),
        names,
        not_after,
    })
}

/// A served certificate whose OCSP staple can be replaced while it is in use.
pub struct Served {
    current: arc_swap::ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("stapled", &self.ocsp().is_some())
            .finish()
    }
}

impl Served {
    fn new(certified: &Arc<CertifiedKey>) -> Self {
        Served {
            current: arc_swap::ArcSwap::new(certified.clone()),
        }
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }

    /// The stapled OCSP response (DER), if any.
    pub fn ocsp(&self) -> Option<Vec<u8>> {
        self.current.load().ocsp.clone()
    }

    /// Staples `response` (a DER OCSPResponse the caller has verified) to the handshakes from
    /// now on, or removes the staple.
    pub fn set_ocsp(&self, response: Option<Vec<u8>>) {
        let old = self.current.load_full();
        let mut next = CertifiedKey::new(old.cert.clone(), old.key.clone());
        next.ocsp = response;
        self.current.store(Arc::new(next));
    }
}

/// Picks the server certificate by SNI: exact name, then `*.` wildcard, then the default.
pub struct SniResolver {
    served: Vec<Arc<Served>>,
    by_name: HashMap<String, Arc<Served>>,
    default: Arc<Served>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("served", &self.served)
            .finish()
    }
}

impl SniResolver {
    /// The first credential is the default (used without SNI or for unknown names).
    pub fn new(credentials: &[Credential]) -> Option<Self> {
        let served: Vec<Arc<Served>> = credentials
            .iter()
            .map(|c| Arc::new(Served::new(&c.certified)))
            .collect();
        let default = served.first()?.clone();
        let mut by_name = HashMap::new();
        for (c, s) in credentials.iter().zip(&served) {
            for n in &c.names {
                by_name
                    .entry(n.to_ascii_lowercase())
                    .or_insert_with(|| s.clone());
            }
        }
        Some(SniResolver {
            served,
            by_name,
            default,
        })
    }

    /// Every served certificate, in configuration order (for stapling).
    pub fn served(&self) -> &[Arc<Served>] {
        &self.served
    }

    /// Whether one of the served certificates names `host` (a request's host without port
    /// or brackets, any case): a DNS name, a `*.` wildcard one label deep, an IP address.
    pub fn covers(&self, host: &str) -> bool {
        // (Hosts come lower case nearly always: no allocation then.)
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        if self.by_name.contains_key(host) {
            return true;
        }
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            // The certificate's form (`::1`, not `0:0:0:0:0:0:0:1`).
            return self.by_name.contains_key(&ip.to_string());
        }
        host.split_once('.').is_some_and(|(label, rest)| {
            !label.is_empty() && self.by_name.contains_key(&format!("*.{rest}"))
        })
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.current.load_full());
        };
        let name = name.to_ascii_lowercase();
        if let Some(c) = self.by_name.get(&name) {
            return Some(c.current.load_full());
        }
        if let Some((_, rest)) = name.split_once('.') {
            if let Some(c) = self.by_name.get(&format!("*.{rest}")) {
                return Some(c.current.load_full());
            }
        }
        Some(self.default.current.load_full())
    }
}

/// A server config: TLS 1.3/1.2, our suites, client certificates verified by `verifier`.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    alpn: &[&[u8]],
) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.max_early_data_size = 0;
    // Our suite order, not the client's (as Go's crypto/tls does): AES-128-GCM with SHA-256
    // first. It gives 128-bit security like the P-256 and X25519 keys beside it, and SHA-256
    // (SHA-NI) makes the handshake transcript and key schedule several times cheaper than
    // SHA-384, which showed as 10 % of a full handshake's CPU.
    config.ignore_client_order = true;
    // One TLS 1.3 ticket per handshake is enough for a client to resume once; the default two
    // double the per-handshake ticket work for clients that rarely use both.
    config.send_tls13_tickets = 1;
    // Each config generation gets its own session cache (the default), so a reload that
    // revokes a client also ends its resumptions; identities are re-checked after every
    // handshake regardless.
    Ok(config)
}

/// The verifier for client certificates, built from a trust state.
pub fn client_verifier(
    state: Arc<mtls_verify::TrustState>,
    mandatory: bool,
) -> Arc<mtls_verify::ClientVerifier> {
    Arc::new(mtls_verify::ClientVerifier::new(
        state,
        mandatory,
        provider().signature_verification_algorithms,
    ))
}

/// A client config presenting `credential` (if any) and trusting `roots` for the server.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    credential: Option<&Credential>,
    alpn: &[&[u8]],
) -> Result<ClientConfig> {
    if roots.is_empty() {
        return Err(Error::NoRoots);
    }
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).map_err(Error::Rustls)?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_root_certificates(store);
    let mut config = match credential {
        Some(c) => {
            builder.with_client_cert_resolver(Arc::new(FixedClientCert(c.certified.clone())))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client config presenting `identity`, which follows its files: changed files are picked up
/// when the next connection starts. No session is resumed: rustls gives a session store no
/// way to tell which identity a ticket was made with, so a ticket arriving on a connection
/// made before a renewal (the mtls gateway sends it with the first answer, seconds or hours
/// after the handshake) would be resumed after it, the server restoring the old certificate.
/// Every connection is a full handshake with the certificate in the files.
pub fn client_config_reloading(
    roots: &[CertificateDer<'static>],
    identity: Arc<ReloadingIdentity>,
    alpn: &[&[u8]],
) -> Result<ClientConfig> {
    let mut config = client_config(roots, None, alpn)?;
    config.client_auth_cert_resolver = identity;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// Always presents the same client certificate.
#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}
