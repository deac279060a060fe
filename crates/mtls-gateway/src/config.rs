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

/// Whether a client certificate is required in the handshake.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// The handshake fails without a valid certificate (default).
    #[default]
    Required,
    /// HTTP only: requests without a certificate get `401 NO_CLIENT_CERT`, invalid ones `403`.
    Optional,
}

/// A served certificate (chain, leaf first) and its key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// File holding the key's passphrase, for encrypted keys.
    #[serde(default)]
    pub key_passphrase_file: Option<PathBuf>,
}

/// A per-path-prefix policy (HTTP mode). The longest matching prefix wins; requests matching
/// no route use the listener's policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub path_prefix: String,
    #[serde(default)]
    pub policy: Policy,
}

/// A CRL downloaded from the CA (`[[listener.crl_fetch]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlFetchConfig {
    /// `http://…` distribution point (the CA's `/v1/crl`).
    pub url: String,
    /// Where the verified CRL is written (also listed in `crl`).
    pub file: PathBuf,
    /// How often to refresh (default 5m).
    #[serde(with = "duration", default = "default_crl_every")]
    pub every: Duration,
}

fn default_crl_every() -> Duration {
    Duration::from_secs(300)
}

/// One listening socket.
#[derive(Clone, Debug, Deserialize)]
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
    #[serde(default)]
    pub client_auth: ClientAuth,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Extra request headers that carry identity upstream and must never come from clients.
    #[serde(default)]
    pub strip_headers: Vec<String>,
    /// TCP mode: send a PROXY protocol v2 header with the verified identity.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Loosening: accept clients whose issuer has no CRL when CRLs are configured.
    #[serde(default)]
    pub allow_unknown_revocation: bool,
    /// Loosening: accept CRLs past their nextUpdate.
    #[serde(default)]
    pub allow_expired_crl: bool,
}

fn yes() -> bool {
    true
}

fn default_name() -> String {
    "default".into()
}

/// Timeouts and sizes. Durations are written like `10s`, `500ms`, `2m`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    #[serde(with = "duration")]
    pub upstream_timeout: Duration,
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// HTTP mode: a connection with no traffic either way for this long is closed (WebSocket
    /// tunnels included). Connections without an accepted client certificate (optional mode)
    /// get `header_read_timeout` instead: all they can do is be refused.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Maximum size of a request head (HTTP/1) or header list (HTTP/2).
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// How often certificate, CA, CRL and key files are checked for changes.
    #[serde(with = "duration")]
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
            reload_poll: Duration::from_secs(1),
        }
    }
}

/// Parses `10s`, `250ms`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let too_long = || format!("duration {s:?} is too long");
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_long)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_long)?),
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s, m, h)")),
    })
}

mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl GatewayConfig {
    /// Reads and checks a TOML file; relative paths are resolved against its directory.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let mut cfg: GatewayConfig =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for l in &mut cfg.listeners {
            let fix = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            };
            l.client_ca.iter_mut().for_each(fix);
            l.upstream_ca.iter_mut().for_each(fix);
            if let Some(c) = &mut l.upstream_certificate {
                fix(&mut c.cert);
                fix(&mut c.key);
            }
            l.crl.iter_mut().for_each(fix);
            for f in &mut l.crl_fetch {
                fix(&mut f.file);
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
    /// policy that allows someone, TCP mode without optional client auth.
    pub fn validate(&self) -> Result<(), Error> {
        if self.listeners.is_empty() {
            return Err(Error::Config("no [[listener]] configured".into()));
        }
        for l in &self.listeners {
            let e = |m: &str| Err(Error::Config(format!("listener {:?}: {m}", l.name)));
            if l.certificates.is_empty() {
                return e("needs at least one [[listener.certificate]] (cert + key)");
            }
            if l.client_ca.is_empty() {
                return e("needs client_ca (the CA bundle trusted for client certificates)");
            }
            if l.mode == Mode::Tcp && l.client_auth == ClientAuth::Optional {
                return e("client_auth = \"optional\" is only possible in HTTP mode");
            }
            if l.policy.is_empty() && l.routes.iter().all(|r| r.policy.is_empty()) {
                return e(
                    "the policy allows nobody: add allow_* rules or allow_any_trusted = true",
                );
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
            if self.limits.idle_timeout <= self.limits.upstream_timeout {
                return e("limits.idle_timeout must be longer than limits.upstream_timeout");
            }
            if self.limits.max_header_bytes < 8192 {
                return e("limits.max_header_bytes must be at least 8192");
            }
        }
        Ok(())
    }

    /// Every file the gateway reads (for change detection).
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for l in &self.listeners {
            v.extend(l.client_ca.iter().cloned());
            v.extend(l.crl.iter().cloned());
            for c in &l.certificates {
                v.push(c.cert.clone());
                v.push(c.key.clone());
            }
        }
        v
    }
}
