//! Gateway configuration: one model for the TOML file and the command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mtls_verify::Policy;
use serde::Deserialize;

use crate::Error;

/// The whole gateway.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where `/metrics` and `/healthz` are served (plain HTTP; keep it on loopback).
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    #[serde(default)]
    pub limits: Limits,
    /// JSON access log on stdout (one line per request or TCP connection).
    #[serde(default = "yes")]
    pub access_log: bool,
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
}

/// Proxy mode of a listener.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Http,
    Tcp,
}

pub use mtls_serve::tls::{CertificateFiles as CertificateConfig, ClientAuth};

/// A per-path-prefix policy (HTTP mode). The longest matching prefix wins; requests matching
/// no route use the listener's policy.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub path_prefix: String,
    #[serde(default)]
    pub policy: Policy,
}

/// How route path prefixes are compared with request paths (`route_match`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RouteMatch {
    /// Byte for byte (the default): paths are case-sensitive (RFC 3986 6.2.2.1).
    #[default]
    Exact,
    /// ASCII letters in either case, for upstreams that serve `/ADMIN/x` as `/admin/x`
    /// (IIS, some Java and Windows servers): there, a route matched exactly would leave
    /// `/ADMIN/x` to the listener's policy.
    CaseInsensitive,
}

impl RouteMatch {
    /// The configuration's spelling.
    pub fn name(self) -> &'static str {
        match self {
            RouteMatch::Exact => "exact",
            RouteMatch::CaseInsensitive => "case-insensitive",
        }
    }

    /// Whether a (canonical) path can be matched under this mode. Case-insensitively, only
    /// an ASCII path can: an upstream that folds case beyond ASCII (Java folds `ſ` to `S`, `K`
    /// (Kelvin) to `k`, `ı` to `I`) would serve `/adm%C4%B1n` as `/admin` while no ASCII rule
    /// matched it here. Nor can a path with a segment ending in `.` or a space: Windows
    /// drops those from file names, so IIS serves `/admin./x` and `/admin%20/x` as
    /// `/admin/x`.
    pub fn can_match(self, path: &str) -> bool {
        match self {
            RouteMatch::Exact => true,
            RouteMatch::CaseInsensitive => {
                path.is_ascii()
                    && !crate::state::percent_escapes(path).any(|c| c.is_some_and(|c| c >= 0x80))
                    && !path.split('/').any(|segment| {
                        segment.ends_with('.')
                            || segment.ends_with(' ')
                            || segment.to_ascii_lowercase().ends_with("%20")
                    })
            }
        }
    }

    /// Whether `path` starts with `prefix` under this mode. A prefix ending in `/` (written so
    /// that `/admin/` does not also cover `/administrators`) also covers the path without the
    /// slash: upstreams commonly serve `/admin` and `/admin/` as the same resource, which
    /// otherwise fell to the listener's (looser) policy.
    pub fn has_prefix(self, path: &str, prefix: &str) -> bool {
        let starts = |prefix: &str| match self {
            RouteMatch::Exact => path.starts_with(prefix),
            // Bytes: a prefix length need not fall on a character boundary of the path.
            RouteMatch::CaseInsensitive => path
                .as_bytes()
                .get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes())),
        };
        starts(prefix)
            || prefix
                .strip_suffix('/')
                .filter(|bare| !bare.is_empty() && path.len() == bare.len())
                .is_some_and(starts)
    }
}

/// A CRL downloaded from the CA (`[[listener.crl_fetch]]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CrlFetchConfig {
    /// `http://…` distribution point (the CA's `/v1/crl`).
    pub url: String,
    /// Where the verified CRL is written (also listed in `crl`).
    pub file: PathBuf,
    /// How often to refresh (default 5m); sooner when the installed CRL would expire first
    /// (at three quarters of the time it has left), and from 5 s backing off up to this after
    /// a failed fetch.
    #[serde(with = "mtls_serve::duration::serde", default = "default_crl_every")]
    pub every: Duration,
}

fn default_crl_every() -> Duration {
    Duration::from_secs(300)
}

/// The online CA's revocation feed (`[listener.revocation_feed]`): revocations reach this
/// listener within a second of `mtls revoke`, and open connections of a revoked client are
/// closed at once.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RevocationFeedConfig {
    /// `https://host:port` of the CA; several instances sharing one database may be listed
    /// (tried in turn after a failure).
    pub urls: Vec<String>,
    /// CA bundles that verify the CA's server certificate (default: the listener's
    /// `client_ca`). The feed's CRLs must be signed by a certificate of `client_ca`.
    #[serde(default)]
    pub ca: Vec<PathBuf>,
    /// The certificate presented to the CA (default: the listener's first certificate); the CA
    /// must allow it in its `[revocation_feed]` section.
    #[serde(default)]
    pub certificate: Option<CertificateConfig>,
    /// Without contact with the CA for this long, the feed's answer is "unknown" and clients
    /// it alone vouches for are refused (hard-fail), unless `allow_unknown_revocation`.
    #[serde(with = "mtls_serve::duration::serde", default = "default_feed_max_age")]
    pub max_age: Duration,
}

/// OCSP checking of client certificates (`[listener.ocsp]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OcspConfig {
    /// Ask this responder (`http://…`) instead of the one in each certificate's AIA.
    #[serde(default)]
    pub responder: Option<String>,
    /// Longest a handshake waits for the first answer about a client (default 2s); later
    /// answers are refreshed in the background.
    #[serde(
        with = "mtls_serve::duration::serde",
        default = "default_ocsp_max_wait"
    )]
    pub max_wait: Duration,
    /// Send a nonce the responder must echo.
    #[serde(default)]
    pub nonce: bool,
}

fn default_ocsp_max_wait() -> Duration {
    Duration::from_secs(2)
}

fn default_feed_max_age() -> Duration {
    Duration::from_secs(60)
}

/// What to do with a client whose revocation status no source can give (no covering CRL, an
/// expired one, a stale feed, no OCSP answer).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationPolicy {
    /// Refuse it (the default).
    #[default]
    HardFail,
    /// Admit it, log it (at most once a second) and count it
    /// (`mtls_revocation_decisions_total{result="unknown_accepted"}`).
    SoftFail,
}

/// One listening socket.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    #[serde(default = "default_name")]
    pub name: String,
    pub listen: SocketAddr,
    #[serde(default)]
    pub mode: Mode,
    /// `http://host:port` or `https://host:port` (HTTP mode), `host:port` (TCP mode).
    pub upstream: String,
    /// CA bundles that verify an `https://` upstream (required for https).
    #[serde(default)]
    pub upstream_ca: Vec<PathBuf>,
    /// CRLs that check an `https://` upstream's certificate (their issuers must be in
    /// `upstream_ca`; the upstream's leaf must be covered, by a CRL not past its nextUpdate:
    /// hard-fail). Followed without a reload: a replaced file counts from the next connection,
    /// and pooled connections to an upstream it revokes are not used again from about a second
    /// after the change; an older CRL than the one in use is refused, across reloads too.
    #[serde(default)]
    pub upstream_crl: Vec<PathBuf>,
    /// Keys the https:// upstream's certificate must have one of (SHA-256 of the SPKI:
    /// `sha256//BASE64` or hex), on top of `upstream_ca`.
    #[serde(default)]
    pub upstream_pinned_pubkey: Vec<mtls_pki::KeyPin>,
    /// Name to verify the upstream's certificate against (default: the upstream host).
    #[serde(default)]
    pub upstream_server_name: Option<String>,
    /// Client certificate the gateway presents to an `https://` upstream (mTLS on that hop too).
    #[serde(default)]
    pub upstream_certificate: Option<CertificateConfig>,
    /// Served certificates; the first is the default, the others are chosen by SNI.
    #[serde(rename = "certificate")]
    pub certificates: Vec<CertificateConfig>,
    /// CA bundles trusted for client certificates. CRL issuers must be in here too.
    pub client_ca: Vec<PathBuf>,
    #[serde(default)]
    pub crl: Vec<PathBuf>,
    /// CRLs kept current from a distribution point; each `file` must also be listed in `crl`.
    #[serde(default)]
    pub crl_fetch: Vec<CrlFetchConfig>,
    /// Revocations pushed by the online CA.
    #[serde(default)]
    pub revocation_feed: Option<RevocationFeedConfig>,
    /// Fetch, cache and refresh the CRLs named in the CRL Distribution Points of the client CA
    /// certificates and of the client certificates seen (`http://` only, at most 64).
    #[serde(default)]
    pub crl_from_certificates: bool,
    /// OCSP checking of client certificates.
    #[serde(default)]
    pub ocsp: Option<OcspConfig>,
    /// Staple OCSP responses to the served certificates (those whose chain file holds their
    /// issuer and that name an OCSP responder); on by default.
    #[serde(default = "yes")]
    pub ocsp_stapling: bool,
    #[serde(default)]
    pub client_auth: ClientAuth,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// HTTP mode: host names (or addresses) requests may name besides those of the served
    /// certificates. By default a request whose Host (or authority) no served certificate
    /// names is refused `421`: a client connecting by address, or with a TLS name of its
    /// choosing, cannot reach another virtual host of a shared upstream through this listener.
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    /// `exact` (default) or `case-insensitive`: how route prefixes match request paths (see
    /// [`RouteMatch`]).
    #[serde(default)]
    pub route_match: RouteMatch,
    /// Extra request headers that carry identity upstream and must never come from clients.
    #[serde(default)]
    pub strip_headers: Vec<String>,
    /// TCP mode: send a PROXY protocol v2 header with the verified identity.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// `hard-fail` (default) or `soft-fail`: see [`RevocationPolicy`].
    #[serde(default)]
    pub revocation_policy: RevocationPolicy,
    /// `leaf` (default): the client certificate must have a status; `chain`: its CAs too.
    #[serde(default)]
    pub revocation_scope: mtls_verify::CrlScope,
    /// Loosening: accept clients whose issuer has no CRL when CRLs are configured.
    #[serde(default)]
    pub allow_unknown_revocation: bool,
    /// Loosening: accept CRLs past their nextUpdate.
    #[serde(default)]
    pub allow_expired_crl: bool,
    /// `on` (default) or `off`: with `off` every connection makes a full handshake with its
    /// certificate and no session ticket is issued.
    #[serde(default)]
    pub session_resumption: mtls_serve::tls::SessionResumption,
}

fn yes() -> bool {
    true
}

fn default_name() -> String {
    "default".into()
}

/// Timeouts and sizes. Durations need a unit: `10s`, `500ms`, `2m` (see [`mtls_serve::duration`]).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    #[serde(with = "mtls_serve::duration::serde")]
    pub handshake_timeout: Duration,
    #[serde(with = "mtls_serve::duration::serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "mtls_serve::duration::serde")]
    pub upstream_timeout: Duration,
    #[serde(with = "mtls_serve::duration::serde")]
    pub drain_timeout: Duration,
    /// HTTP mode: a connection with no traffic either way for this long is closed (WebSocket
    /// tunnels included). Connections without an accepted client certificate (optional mode)
    /// get `header_read_timeout` instead: all they can do is be refused.
    #[serde(with = "mtls_serve::duration::serde")]
    pub idle_timeout: Duration,
    /// Maximum size of a request head (HTTP/1) or header list (HTTP/2).
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// At most this many of those from one source (an IPv4 address, an IPv6 /64), so one
    /// host cannot take them all; past it a new connection is closed at once. Unset by
    /// default: behind a load balancer or NAT every client has the same source.
    pub max_connections_per_source: Option<usize>,
    /// HTTP mode: most requests in flight to the upstreams of all listeners, each holding an
    /// upstream connection until its answer is read (WebSocket tunnels included). Past it a
    /// request is answered `503 UPSTREAM_BUSY` at once: without a bound, the streams of a few
    /// HTTP/2 clients held against slow routes opened one upstream socket each until the
    /// process ran out of file descriptors and no listener could accept.
    pub max_upstream_requests: usize,
    /// HTTP mode: most of those one client certificate may hold at once (over all its
    /// connections and listeners); past it `429 CLIENT_BUSY`. A client whose uploads stall or
    /// who does not read its answers holds a slot each: without this, one certificate could
    /// hold them all and every other client would get 503.
    pub max_upstream_requests_per_client: usize,
    /// HTTP mode: longest a request body may pause while the upstream waits for its next
    /// bytes; past it `408 BODY_TIMEOUT` and the request ends. (Connection traffic, an HTTP/2
    /// PING or another stream, does not count: only this body's own bytes.)
    #[serde(with = "mtls_serve::duration::serde")]
    pub body_timeout: Duration,
    /// How often certificate, CA, CRL and key files are checked for changes.
    #[serde(with = "mtls_serve::duration::serde")]
    pub reload_poll: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3600),
            max_header_bytes: 16 * 1024,
            max_connections: 10_000,
            max_connections_per_source: None,
            max_upstream_requests: 4_096,
            max_upstream_requests_per_client: 1_024,
            body_timeout: Duration::from_secs(60),
            reload_poll: Duration::from_secs(1),
        }
    }
}

impl GatewayConfig {
    /// Reads and checks a TOML file; relative paths are resolved against its directory.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: GatewayConfig = toml::from_str(&text).map_err(|e| Error::ConfigFile {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for l in &mut cfg.listeners {
            let fix = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            };
            l.client_ca.iter_mut().for_each(fix);
            l.upstream_ca.iter_mut().for_each(fix);
            l.upstream_crl.iter_mut().for_each(fix);
            if let Some(c) = &mut l.upstream_certificate {
                fix(&mut c.cert);
                fix(&mut c.key);
                if let Some(p) = &mut c.key_passphrase_file {
                    fix(p);
                }
            }
            l.crl.iter_mut().for_each(fix);
            for f in &mut l.crl_fetch {
                fix(&mut f.file);
            }
            if let Some(feed) = &mut l.revocation_feed {
                feed.ca.iter_mut().for_each(fix);
                if let Some(c) = &mut feed.certificate {
                    fix(&mut c.cert);
                    fix(&mut c.key);
                    if let Some(p) = &mut c.key_passphrase_file {
                        fix(p);
                    }
                }
            }
            for c in &mut l.certificates {
                fix(&mut c.cert);
                fix(&mut c.key);
                if let Some(p) = &mut c.key_passphrase_file {
                    fix(p);
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: at least one listener, one certificate and one CA each, a
    /// policy that allows someone, no two routes for the same prefix (under the listener's
    /// `route_match`), TCP mode without optional client auth.
    pub fn validate(&self) -> Result<(), Error> {
        if self.listeners.is_empty() {
            return Err(Error::Config("no [[listener]] configured".into()));
        }
        if self.limits.max_upstream_requests_per_client == 0 {
            return Err(Error::Config(
                "limits.max_upstream_requests_per_client = 0 would refuse every request".into(),
            ));
        }
        if self.limits.body_timeout.is_zero() {
            return Err(Error::Config(
                "limits.body_timeout = 0 would end every request with a body".into(),
            ));
        }
        if self.limits.max_connections_per_source == Some(0) {
            return Err(Error::Config(
                "limits.max_connections_per_source = 0 would refuse every connection".into(),
            ));
        }
        for l in &self.listeners {
            let e = |m: &str| Err(Error::Config(format!("listener {:?}: {m}", l.name)));
            if l.certificates.is_empty() {
                return e("needs at least one [[listener.certificate]] (cert + key)");
            }
            if l.client_ca.is_empty() {
                return e("needs client_ca (the CA bundle trusted for client certificates)");
            }
            // As a request's host is compared: a name or an address, no port, brackets or
            // wildcard (which would never match, and every request naming it would get 421).
            if let Some(h) = l.extra_hosts.iter().find(|h| {
                h.parse::<std::net::IpAddr>().is_err()
                    && (h.is_empty()
                        || !h
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')))
            }) {
                return e(&format!(
                    "extra_hosts: {h:?} is not a host name or IP address (no port, brackets or wildcard)"
                ));
            }
            if l.mode == Mode::Tcp && l.client_auth == ClientAuth::Optional {
                return e("client_auth = \"optional\" is only possible in HTTP mode");
            }
            if let Some(m) = std::iter::once((None, &l.policy))
                .chain(l.routes.iter().map(|r| (Some(&r.path_prefix), &r.policy)))
                .find_map(|(route, p)| p.validate().err().map(|m| (route, m)))
            {
                return e(&match m {
                    (None, m) => format!("policy: {m}"),
                    (Some(route), m) => format!("route {route:?}: policy: {m}"),
                });
            }
            if l.policy.allows_nobody() && l.routes.iter().all(|r| r.policy.allows_nobody()) {
                return e(
                    "the policy allows nobody: add allow_* rules or allow_any_trusted = true",
                );
            }
            // A prefix no served path can start with: its policy would never apply.
            if let Some(r) = l.routes.iter().find(|r| {
                !crate::state::is_canonical_path(&r.path_prefix)
                    || !l.route_match.can_match(&r.path_prefix)
            }) {
                return e(&format!(
                    "route path_prefix {:?} can never match a request: only canonical paths are routed (starting with '/', no '//', ';', '\\', '.' or '..' segments, no %-escapes of letters, digits, -._~ or /\\;%{})",
                    r.path_prefix,
                    if l.route_match == RouteMatch::CaseInsensitive {
                        ", and ASCII only under route_match = \"case-insensitive\""
                    } else {
                        ""
                    }
                ));
            }
            // Two routes for the same paths: which policy applies would depend on their order.
            for (i, a) in l.routes.iter().enumerate() {
                if let Some(b) = l.routes.iter().skip(i + 1).find(|b| {
                    b.path_prefix.len() == a.path_prefix.len()
                        && l.route_match.has_prefix(&b.path_prefix, &a.path_prefix)
                }) {
                    return e(&format!(
                        "routes {:?} and {:?} are the same prefix under route_match = {:?}",
                        a.path_prefix,
                        b.path_prefix,
                        l.route_match.name()
                    ));
                }
            }
            if l.mode == Mode::Http
                && !l.upstream.starts_with("http://")
                && !l.upstream.starts_with("https://")
            {
                return e("upstream must be an http:// or https:// URL in HTTP mode");
            }
            if l.upstream.starts_with("https://") && l.upstream_ca.is_empty() {
                return e("an https:// upstream needs upstream_ca (the CAs that verify it)");
            }
            if !l.upstream_crl.is_empty() && !l.upstream.starts_with("https://") {
                return e("upstream_crl (--upstream-crl) checks an https:// upstream's certificate in HTTP mode: this upstream is not one");
            }
            if !l.upstream_pinned_pubkey.is_empty() && !l.upstream.starts_with("https://") {
                return e("upstream_pinned_pubkey (--upstream-pinned-pubkey) pins an https:// upstream's key in HTTP mode: this upstream is not one");
            }
            for f in &l.crl_fetch {
                if !f.url.starts_with("http://") {
                    return e("crl_fetch url must be an http:// distribution point");
                }
                if !l.crl.contains(&f.file) {
                    return e("each crl_fetch file must also be listed in crl");
                }
                if f.every < Duration::from_secs(1) {
                    return e("crl_fetch every must be at least 1s");
                }
            }
            if let Some(feed) = &l.revocation_feed {
                if feed.urls.is_empty() {
                    return e("revocation_feed needs urls (the CA's https:// address)");
                }
                if let Some(u) = feed.urls.iter().find(|u| !u.starts_with("https://")) {
                    return e(&format!(
                        "revocation_feed url {u:?} must be https:// (the feed is served over mTLS)"
                    ));
                }
                if feed.max_age < Duration::from_secs(5) {
                    return e("revocation_feed max_age must be at least 5s");
                }
            }
            if self.limits.idle_timeout <= self.limits.upstream_timeout {
                return e("limits.idle_timeout must be longer than limits.upstream_timeout");
            }
            if self.limits.max_header_bytes < 8192 {
                return e("limits.max_header_bytes must be at least 8192");
            }
        }
        Ok(())
    }

    /// Every file the gateway reads (for change detection): served certificates, keys and
    /// passphrase files, client CAs, CRLs, the upstream's CAs and the upstream client
    /// certificate.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for l in &self.listeners {
            v.extend(l.server_files().watched());
            v.extend(l.upstream_ca.iter().cloned());
            if let Some(c) = &l.upstream_certificate {
                v.extend(
                    [
                        Some(c.cert.clone()),
                        Some(c.key.clone()),
                        c.key_passphrase_file.clone(),
                    ]
                    .into_iter()
                    .flatten(),
                );
            }
        }
        v
    }
}

impl ListenerConfig {
    /// The TLS files of this listener, as the serving core loads them.
    pub fn server_files(&self) -> mtls_serve::tls::ServerFiles {
        mtls_serve::tls::ServerFiles {
            certificates: self.certificates.clone(),
            client_ca: self.client_ca.clone(),
            crl: self.crl.clone(),
            client_auth: self.client_auth,
            revocation: mtls_verify::RevocationOptions {
                allow_unknown_status: self.allow_unknown_revocation
                    || self.revocation_policy == RevocationPolicy::SoftFail,
                allow_expired_crl: self.allow_expired_crl
                    || self.revocation_policy == RevocationPolicy::SoftFail,
                scope: self.revocation_scope,
            },
            alpn: match self.mode {
                Mode::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                Mode::Tcp => Vec::new(),
            },
            resumption: self.session_resumption,
        }
    }
}
