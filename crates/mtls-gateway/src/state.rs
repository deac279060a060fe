//! The reloadable state of a listener: TLS config, trust state, policy and upstream, built off
//! to the side and swapped in whole (or not at all). A reload that changes the upstream (its
//! address, CAs or client certificate) or the stripped headers takes effect with the rest.

use http::header::HeaderName;
use http::uri::Authority;
use mtls_client::pool::PoolTarget;
use mtls_serve::tls::ServerState;
use mtls_verify::Policy;
use time::OffsetDateTime;

use crate::config::{ListenerConfig, Mode, RouteMatch};
use crate::http::UpstreamPool;
use crate::Error;

/// Where and how a listener forwards.
pub struct Upstream {
    pub authority: Authority,
    /// `host:port` (TCP mode connects here).
    pub addr: String,
    pub scheme: &'static str,
    /// HTTP mode: the keep-alive pool of upstream connections.
    pub pool: UpstreamPool,
    /// Identity headers that must never come from clients (beyond the built-in ones).
    pub strip_headers: Vec<HeaderName>,
}

impl Upstream {
    /// After `previous` (a reload), upstream CRLs older than the ones it used are refused.
    fn load(
        cfg: &ListenerConfig,
        timeout: std::time::Duration,
        previous: Option<&Upstream>,
    ) -> Result<Self, Error> {
        let bad = |m: &str| {
            Error::Config(format!(
                "listener {:?}: upstream {:?}: {m}",
                cfg.name, cfg.upstream
            ))
        };
        let (scheme, hostport) = match cfg.mode {
            Mode::Http => {
                if let Some(r) = cfg.upstream.strip_prefix("http://") {
                    ("http", r)
                } else if let Some(r) = cfg.upstream.strip_prefix("https://") {
                    ("https", r)
                } else {
                    return Err(bad("expected http://host:port or https://host:port"));
                }
            }
            Mode::Tcp => ("tcp", cfg.upstream.as_str()),
        };
        let hostport = hostport.trim_end_matches('/');
        let authority: Authority = hostport.parse().map_err(|_| bad("expected host:port"))?;
        if authority.port_u16().is_none() {
            return Err(bad("a port is required"));
        }
        // The one client builder of mtls: for HTTPS, trust only upstream_ca, and present an
        // upstream client certificate that follows its files (a renewed one is used from the
        // next upstream connection on).
        let mut b = mtls_client::ClientBuilder::new()
            .connect_timeout(timeout)
            .pool_idle_timeout(std::time::Duration::from_secs(90));
        let target = if scheme == "https" {
            for p in &cfg.upstream_ca {
                b = b.ca_file(p);
            }
            for p in &cfg.upstream_crl {
                b = b.crl_file(p);
            }
            for pin in &cfg.upstream_pinned_pubkey {
                b = b.pin_server_key(*pin);
            }
            if let Some(trust) = previous.and_then(|p| p.pool.server_trust()) {
                b = b.crl_floor(trust);
            }
            if let Some(c) = &cfg.upstream_certificate {
                b = b.identity_files(&c.cert, &c.key);
                if let Some(p) = &c.key_passphrase_file {
                    b = b.passphrase_file(p);
                }
            }
            let name = cfg
                .upstream_server_name
                .clone()
                .unwrap_or_else(|| authority.host().trim_matches(['[', ']']).to_string());
            let server_name = rustls_pki_types::ServerName::try_from(name)
                .map_err(|_| bad("invalid upstream server name"))?;
            PoolTarget::Https {
                addr: hostport.to_string(),
                server_name,
            }
        } else {
            PoolTarget::Http {
                addr: hostport.to_string(),
            }
        };
        let pool = b
            .build_pool(target)
            .map_err(|e| Error::Load(format!("listener {:?}: upstream: {e}", cfg.name)))?;
        let strip_headers = cfg
            .strip_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| Error::Config(format!("invalid header name {h:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Upstream {
            authority,
            addr: hostport.to_string(),
            scheme: if scheme == "https" { "https" } else { "http" },
            pool,
            strip_headers,
        })
    }
}

/// Immutable snapshot of one listener's configuration.
pub struct ListenerState {
    pub generation: u64,
    pub server: ServerState,
    pub policy: Policy,
    /// (prefix, policy), longest prefix first.
    pub routes: Vec<(String, Policy)>,
    /// How the prefixes are compared with paths.
    pub route_match: RouteMatch,
    pub upstream: Upstream,
    pub proxy_protocol: bool,
    /// `extra_hosts`, lower case.
    extra_hosts: Vec<String>,
}

impl ListenerState {
    /// Loads and validates everything a listener needs; after `previous` (a reload), CRLs
    /// older than the ones it uses are refused.
    pub fn load(
        cfg: &ListenerConfig,
        upstream_timeout: std::time::Duration,
        generation: u64,
        now: OffsetDateTime,
        sources: &mtls_verify::RevocationSources,
        previous: Option<&ListenerState>,
    ) -> Result<Self, Error> {
        for c in &cfg.certificates {
            // The key file, wiped when dropped.
            let encrypted = std::fs::read(&c.key)
                .map(zeroize::Zeroizing::new)
                .is_ok_and(|k| mtls_pki::key::is_encrypted(&k));
            if encrypted && c.key_passphrase_file.is_none() {
                return Err(Error::Config(format!(
                    "listener {:?}: {} is encrypted: give its passphrase file (--key-passphrase-file FILE, or key_passphrase_file in [[listener.certificate]])",
                    cfg.name,
                    c.key.display()
                )));
            }
        }
        let files = cfg.server_files();
        let server = match previous {
            Some(p) => files.load_after(&p.server, generation, now, sources),
            None => files.load_with(generation, now, sources),
        }
        .map_err(|source| Error::Listener {
            listener: cfg.name.clone(),
            source,
        })?;
        let mut routes: Vec<(String, Policy)> = cfg
            .routes
            .iter()
            .map(|r| (r.path_prefix.clone(), r.policy.clone()))
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Ok(ListenerState {
            generation,
            server,
            policy: cfg.policy.clone(),
            routes,
            route_match: cfg.route_match,
            upstream: Upstream::load(cfg, upstream_timeout, previous.map(|p| &p.upstream))?,
            proxy_protocol: cfg.proxy_protocol,
            extra_hosts: cfg.extra_hosts.iter().map(|h| canonical_host(h)).collect(),
        })
    }

    /// Whether requests may name `host` (without port or brackets, final dot removed): a
    /// served certificate names it, or `extra_hosts` does.
    pub fn serves_host(&self, host: &str) -> bool {
        if self.server.certificates.covers(host) {
            return true;
        }
        if self.extra_hosts.is_empty() {
            return false;
        }
        let host = canonical_host(host);
        self.extra_hosts.contains(&host)
    }

    /// Whether per-path policies apply on this listener (then only canonical paths are served:
    /// see [`is_canonical_path`]).
    pub fn has_routes(&self) -> bool {
        !self.routes.is_empty()
    }

    /// Whether per-path policies can be applied to `path` here: it is canonical (see
    /// [`is_canonical_path`]) and the route matching mode can compare it
    /// ([`RouteMatch::can_match`]).
    pub fn can_route(&self, path: &str) -> bool {
        is_canonical_path(path) && self.route_match.can_match(path)
    }

    /// The route of a request path: the longest prefix matching it (under `route_match`).
    pub fn route_for(&self, path: &str) -> Option<&(String, Policy)> {
        self.routes
            .iter()
            .find(|(prefix, _)| self.route_match.has_prefix(path, prefix))
    }

    /// The policy for a request path (its route's, else the listener's).
    pub fn policy_for(&self, path: &str) -> &Policy {
        self.route_for(path).map(|(_, p)| p).unwrap_or(&self.policy)
    }

    pub fn trust(&self) -> &mtls_verify::TrustState {
        &self.server.trust
    }
}

/// Whether `path` is in the one form route prefixes are matched against. An upstream that
/// decodes `%61` to `a`, resolves `..`, merges `//` or drops `;params` would otherwise serve
/// `/admin` for a path like `/%61dmin`, `/x/../admin`, `//admin` or `/;x/admin` that matched
/// no `/admin` route here. Percent-encoding is allowed only for bytes that need it (not for
/// unreserved characters, `/`, `\\`, `;` or `%` itself).
/// A host name lower case without a final dot, an IP address in its canonical form (`::1`,
/// not `0:0:0:0:0:0:0:1`): as requests' hosts and `extra_hosts` are compared.
pub(crate) fn canonical_host(host: &str) -> String {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host.trim_end_matches('.').to_ascii_lowercase(),
    }
}

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
    percent_escapes(path).all(|decoded| {
        decoded.is_some_and(|c| {
            !(c.is_ascii_alphanumeric()
                || matches!(c, b'-' | b'.' | b'_' | b'~' | b'/' | b'\\' | b';' | b'%'))
        })
    })
}

/// The byte each `%XX` escape of `path` stands for, in order (`None` for a malformed one).
pub(crate) fn percent_escapes(path: &str) -> impl Iterator<Item = Option<u8>> + '_ {
    let mut rest = path.as_bytes();
    std::iter::from_fn(move || {
        let at = rest.iter().position(|&c| c == b'%')?;
        let decoded = rest
            .get(at + 1..at + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        rest = rest.get(at + 3..).unwrap_or_default();
        Some(decoded)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::{canonical_host, is_canonical_path, ListenerState};

    /// Hosts compare as requests name them: names lower case without a final dot, addresses in
    /// their canonical form.
    #[test]
    fn hosts_compare_in_canonical_form() {
        assert_eq!(canonical_host("Admin.Internal."), "admin.internal");
        assert_eq!(canonical_host("0:0:0:0:0:0:0:1"), "::1");
        assert_eq!(canonical_host("::1"), "::1");
        assert_eq!(canonical_host("10.0.0.5"), "10.0.0.5");
    }

    /// A listener's reload refuses a CRL file replaced by an older CRL (a replay): the load
    /// after the current state fails and says why; a newer CRL loads.
    #[test]
    fn reload_refuses_an_older_crl() {
        use mtls_pki::pem_io::encode;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pki = mtls_test_util::TestPki::new("gw-rollback");
        let server = pki.server(&["localhost"]);
        let write = |name: &str, data: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, data).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        let (inter, root) = (pki.intermediate_der(), pki.root_der());
        write(
            "s.pem",
            format!(
                "{}{}",
                encode("CERTIFICATE", &server.cert.der),
                encode("CERTIFICATE", &inter)
            )
            .as_bytes(),
        );
        write("s.key", server.key.to_pem().as_bytes());
        write(
            "ca.pem",
            format!(
                "{}{}",
                encode("CERTIFICATE", &inter),
                encode("CERTIFICATE", &root)
            )
            .as_bytes(),
        );
        let now = time::OffsetDateTime::now_utc();
        let crl = |n: u64| {
            let der = mtls_pki::revocation::build_crl(
                &pki.intermediate,
                n,
                now,
                time::Duration::days(1),
                &[],
            )
            .unwrap();
            encode("X509 CRL", &der)
        };
        write("crl.pem", crl(5).as_bytes());
        write(
            "gw.toml",
            b"[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\nclient_ca = [\"ca.pem\"]\ncrl = [\"crl.pem\"]\n[listener.policy]\nallow_any_trusted = true\n[[listener.certificate]]\ncert = \"s.pem\"\nkey = \"s.key\"\n",
        );
        let cfg = crate::config::GatewayConfig::from_file(&dir.path().join("gw.toml")).unwrap();
        let l = cfg.listeners.first().unwrap();
        let sources = mtls_verify::RevocationSources::default();
        let timeout = cfg.limits.upstream_timeout;
        let first = ListenerState::load(l, timeout, 1, now, &sources, None).unwrap();
        write("crl.pem", crl(4).as_bytes());
        let e = ListenerState::load(l, timeout, 2, now, &sources, Some(&first))
            .err()
            .expect("an older CRL must be refused");
        assert!(e.to_string().contains("older than the one in use"), "{e}");
        write("crl.pem", crl(6).as_bytes());
        ListenerState::load(l, timeout, 3, now, &sources, Some(&first)).unwrap();
    }

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
