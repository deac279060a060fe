//! The reloadable state of a listener: TLS config, trust state and policy, built off to the
//! side and swapped in whole (or not at all).

use std::sync::Arc;

use mtls_verify::{Policy, RevocationOptions, TrustState, VerifiedPeer};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;

use crate::config::{ClientAuth, ListenerConfig, Mode};
use crate::Error;

/// Immutable snapshot of one listener's configuration.
pub struct ListenerState {
    pub generation: u64,
    pub tls: Arc<ServerConfig>,
    pub trust: Arc<TrustState>,
    pub policy: Policy,
    /// (prefix, policy), longest prefix first.
    pub routes: Vec<(String, Policy)>,
    pub served_not_after: Vec<(String, OffsetDateTime)>,
    pub ca_not_after: Vec<(String, OffsetDateTime)>,
}

impl ListenerState {
    /// Loads and validates everything a listener needs.
    pub fn load(cfg: &ListenerConfig, generation: u64, now: OffsetDateTime) -> Result<Self, Error> {
        let err = |m: String| Error::Load(format!("listener {:?}: {m}", cfg.name));
        let mut credentials = Vec::new();
        let mut served_not_after = Vec::new();
        for c in &cfg.certificates {
            let pass = match &c.key_passphrase_file {
                Some(p) => Some(
                    std::fs::read(p)
                        .map(|mut v| {
                            while v.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                                v.pop();
                            }
                            zeroize::Zeroizing::new(v)
                        })
                        .map_err(|e| err(format!("{}: {e}", p.display())))?,
                ),
                None => None,
            };
            let cred = mtls_tls::load_credential(
                &c.cert,
                &c.key,
                pass.as_deref().map(|v| v.as_slice()),
                now,
            )
            .map_err(|e| err(e.to_string()))?;
            served_not_after.push((c.cert.display().to_string(), cred.not_after));
            credentials.push(cred);
        }
        let mut roots: Vec<CertificateDer<'static>> = Vec::new();
        let mut ca_not_after = Vec::new();
        for p in &cfg.client_ca {
            let bytes = mtls_pki::files::read_public(p).map_err(|e| err(e.to_string()))?;
            let certs = mtls_pki::pem_io::certificates(&bytes)
                .map_err(|e| err(format!("{}: {e}", p.display())))?;
            for c in certs {
                if let Ok(parsed) = mtls_pki::pem_io::parse_certificate(&c) {
                    ca_not_after.push((
                        parsed.subject().to_string(),
                        parsed.validity().not_after.to_datetime(),
                    ));
                }
                roots.push(c);
            }
        }
        let mut crls: Vec<CertificateRevocationListDer<'static>> = Vec::new();
        for p in &cfg.crl {
            let bytes = mtls_pki::files::read_public(p).map_err(|e| err(e.to_string()))?;
            crls.extend(
                mtls_pki::pem_io::crls(&bytes).map_err(|e| err(format!("{}: {e}", p.display())))?,
            );
        }
        let trust = TrustState::new(
            generation,
            roots,
            &crls,
            RevocationOptions {
                allow_unknown_status: cfg.allow_unknown_revocation,
                allow_expired_crl: cfg.allow_expired_crl,
            },
        )
        .map_err(|e| err(e.to_string()))?;
        let trust = Arc::new(trust);
        let resolver =
            mtls_tls::SniResolver::new(&credentials).ok_or_else(|| err("no certificate".into()))?;
        let mandatory = cfg.client_auth == ClientAuth::Required;
        let verifier = mtls_tls::client_verifier(trust.clone(), mandatory);
        let alpn: &[&[u8]] = match cfg.mode {
            Mode::Http => &[b"h2", b"http/1.1"],
            Mode::Tcp => &[],
        };
        let tls = mtls_tls::server_config(Arc::new(resolver), verifier, alpn)
            .map_err(|e| err(e.to_string()))?;
        let mut routes: Vec<(String, Policy)> = cfg
            .routes
            .iter()
            .map(|r| (r.path_prefix.clone(), r.policy.clone()))
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Ok(ListenerState {
            generation,
            tls: Arc::new(tls),
            trust,
            policy: cfg.policy.clone(),
            routes,
            served_not_after,
            ca_not_after,
        })
    }

    /// Whether per-path policies apply on this listener (then only canonical paths are served:
    /// see [`is_canonical_path`]).
    pub fn has_routes(&self) -> bool {
        !self.routes.is_empty()
    }

    /// The policy for a request path (longest matching route prefix, else the listener's).
    pub fn policy_for(&self, path: &str) -> &Policy {
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, p)| p)
            .unwrap_or(&self.policy)
    }

    /// Verifies a peer chain against this state (used after every handshake, resumed or not,
    /// and again for requests on connections older than the current generation).
    pub fn verify_peer(
        &self,
        chain: Option<&[CertificateDer<'static>]>,
    ) -> Result<Arc<VerifiedPeer>, mtls_verify::Rejection> {
        let chain = chain
            .filter(|c| !c.is_empty())
            .ok_or(mtls_verify::Rejection::NoCertificate)?;
        let (leaf, rest) = chain
            .split_first()
            .ok_or(mtls_verify::Rejection::NoCertificate)?;
        self.trust
            .verify_client(leaf, rest, OffsetDateTime::now_utc())
    }
}

/// Whether `path` is in the one form route prefixes are matched against. An upstream that
/// decodes `%61` to `a`, resolves `..`, merges `//` or drops `;params` would otherwise serve
/// `/admin` for a path like `/%61dmin`, `/x/../admin`, `//admin` or `/;x/admin` that matched
/// no `/admin` route here. Percent-encoding is allowed only for bytes that need it (not for
/// unreserved characters, `/`, `\\`, `;` or `%` itself).
pub fn is_canonical_path(path: &str) -> bool {
    if !path.starts_with('/') || path.contains("//") || path.contains(';') || path.contains('\\') {
        return false;
    }
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return false;
    }
    let mut rest = path.as_bytes();
    while let Some(at) = rest.iter().position(|&c| c == b'%') {
        let decoded = rest
            .get(at + 1..at + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match decoded {
            Some(c)
                if !(c.is_ascii_alphanumeric()
                    || matches!(c, b'-' | b'.' | b'_' | b'~' | b'/' | b'\\' | b';' | b'%')) => {}
            _ => return false,
        }
        rest = rest.get(at + 3..).unwrap_or_default();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::is_canonical_path;

    #[test]
    fn only_canonical_paths_pass() {
        for ok in [
            "/",
            "/admin/x",
            "/data/a%20b",
            "/q%3Fx",
            "/%C3%A9t%C3%A9",
            "/a.b/c-d_e~f",
        ] {
            assert!(is_canonical_path(ok), "{ok}");
        }
        for bad in [
            "",
            "admin",
            "//admin/x",
            "/a//b",
            "/a/../admin",
            "/./admin",
            "/admin/..",
            "/;x/admin",
            "/admin;jsessionid=1",
            "/%61dmin",
            "/%2e%2e/admin",
            "/a%2Fb",
            "/a%5cb",
            "/%2561dmin",
            "/bad%zz",
            "/trunc%4",
            "/a\\b",
        ] {
            assert!(!is_canonical_path(bad), "{bad}");
        }
    }
}
