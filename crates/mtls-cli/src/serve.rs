//! `mtls gateway` and `mtls quickstart`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Args, Parser};
use http_body_util::Full;
use hyper::service::service_fn;
use mtls_gateway::config::{
    CertificateConfig, ClientAuth, GatewayConfig, Limits, ListenerConfig, Mode,
};
use mtls_verify::Policy;

use crate::UsageError;

#[derive(Args)]
pub struct GatewayArgs {
    /// Configuration file (TOML); the flags below describe a single listener instead.
    #[arg(long, conflicts_with_all = ["listen", "cert", "key", "client_ca", "upstream"])]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, value_parser = crate::util::listen_arg, required_unless_present = "config")]
    listen: Option<SocketAddr>,
    /// Server certificate chain (leaf first).
    #[arg(long, required_unless_present = "config")]
    cert: Option<PathBuf>,
    /// Server private key.
    #[arg(long, required_unless_present = "config")]
    key: Option<PathBuf>,
    /// File with the passphrase of an encrypted server key.
    #[arg(long, value_name = "FILE")]
    key_passphrase_file: Option<PathBuf>,
    /// CA bundle trusted for client certificates (include the CRL issuer).
    #[arg(long, required_unless_present = "config")]
    client_ca: Vec<PathBuf>,
    /// Upstream: http://host:port or https://host:port (http mode), host:port (tcp mode).
    #[arg(long, required_unless_present = "config")]
    upstream: Option<String>,
    /// CA bundle verifying an https:// upstream.
    #[arg(long)]
    upstream_ca: Vec<PathBuf>,
    /// CRL checking an https:// upstream's certificate (repeatable; hard-fail). Followed: a
    /// replaced file counts for new connections at once, and pooled connections to an upstream
    /// it revokes are not used again from about a second later.
    #[arg(long)]
    upstream_crl: Vec<PathBuf>,
    /// Require the https:// upstream's key to be this one (SHA-256 of its SPKI: sha256//BASE64
    /// or hex; repeatable: any of them), on top of --upstream-ca.
    #[arg(long, value_name = "SPKI_SHA256")]
    upstream_pinned_pubkey: Vec<mtls_pki::KeyPin>,
    /// http or tcp.
    #[arg(long, default_value = "http")]
    mode: String,
    /// required (handshake fails without a valid certificate) or optional (HTTP: 401/403 JSON).
    #[arg(long, default_value = "required")]
    client_auth: String,
    /// Allow clients whose subject common name (CN) is exactly this (repeatable).
    #[arg(long, value_name = "CN")]
    allow_cn: Vec<String>,
    /// Allow clients whose subject has this organizational unit (OU) (repeatable).
    #[arg(long, value_name = "OU")]
    allow_ou: Vec<String>,
    /// Allow clients with this DNS SAN; `*.example.com` matches one label (repeatable).
    #[arg(long, value_name = "NAME")]
    allow_dns: Vec<String>,
    /// URI SAN pattern; `*` matches one path segment, `**` several.
    #[arg(long)]
    allow_uri: Vec<String>,
    /// Allow clients with this e-mail SAN (repeatable).
    #[arg(long, value_name = "ADDRESS")]
    allow_email: Vec<String>,
    /// SHA-256 certificate fingerprint (hex, colons or a sha256: prefix allowed).
    #[arg(long)]
    allow_fingerprint: Vec<mtls_pki::Fingerprint>,
    /// SHA-256 of the client key (SubjectPublicKeyInfo): hex, or a key pin sha256//BASE64.
    #[arg(long)]
    allow_spki: Vec<mtls_pki::KeyPin>,
    /// Required issuer DN (as `mtls inspect` prints it).
    #[arg(long)]
    allow_issuer: Vec<mtls_verify::DistinguishedName>,
    /// Required key of the issuing CA: SHA-256 of its SubjectPublicKeyInfo (hex, or a key pin
    /// sha256//BASE64; `mtls inspect` on the CA certificate shows it). Unlike a name, another
    /// CA of the bundle cannot take it (repeatable).
    #[arg(long, value_name = "PIN")]
    allow_issuer_spki: Vec<mtls_pki::KeyPin>,
    /// Allow every client the CA bundle trusts.
    #[arg(long)]
    allow_any_trusted: bool,
    /// How the --allow-* lists combine: any (one match admits) or all (each list given must
    /// match, e.g. --allow-cn with --allow-fingerprint pins names to certificates).
    #[arg(long = "match", value_name = "any|all", default_value = "any")]
    matching: mtls_verify::PolicyMatch,
    /// CRL files (PEM or DER); reloaded on change.
    #[arg(long)]
    crl: Vec<PathBuf>,
    /// Keep the first --crl file current from this distribution point (http://…/v1/crl).
    #[arg(long, requires = "crl")]
    crl_url: Option<String>,
    /// How often to refresh --crl-url.
    #[arg(long, default_value = "5m", value_parser = crate::util::std_duration_arg)]
    crl_refresh: std::time::Duration,
    /// Follow the online CA's revocation feed (https://ca:9443; repeat for instances sharing
    /// one database). The gateway presents --cert to the CA, which must allow it in
    /// `[revocation_feed]`; CRLs behind the feed are checked against --client-ca.
    #[arg(long = "revocation-feed")]
    revocation_feed: Vec<String>,
    /// CA bundle that verifies the CA's server certificate (default: --client-ca).
    #[arg(long, requires = "revocation_feed")]
    revocation_feed_ca: Vec<PathBuf>,
    /// Refuse clients the feed alone vouches for when the CA has not answered for this long.
    #[arg(long, default_value = "1m", value_parser = crate::util::std_duration_arg, requires = "revocation_feed")]
    revocation_feed_max_age: std::time::Duration,
    /// What to do with a client whose revocation status is unknown: hard-fail (refuse) or
    /// soft-fail (admit, log, count).
    #[arg(long, default_value = "hard-fail", value_parser = parse_revocation_policy)]
    revocation_policy: mtls_gateway::config::RevocationPolicy,
    /// Fetch and refresh the CRLs named in the certificates' CRL Distribution Points.
    #[arg(long)]
    crl_from_certificates: bool,
    /// Check client certificates with OCSP (the responder in each certificate's AIA).
    #[arg(long)]
    ocsp: bool,
    /// Check client certificates with this OCSP responder (http://…) instead of their AIA.
    #[arg(long)]
    ocsp_responder: Option<String>,
    /// Admin listener for /metrics and /healthz.
    #[arg(long, value_parser = crate::util::listen_arg)]
    admin_listen: Option<SocketAddr>,
    /// TCP mode: send a PROXY protocol v2 header with the identity.
    #[arg(long)]
    proxy_protocol: bool,
    /// Extra request header carrying identity upstream, always stripped from clients (repeatable).
    #[arg(long = "strip-header")]
    strip_headers: Vec<String>,
    /// A host requests may name besides the served certificate's names (repeatable); any
    /// other is refused 421.
    #[arg(long = "extra-host", value_name = "HOST")]
    extra_hosts: Vec<String>,
    /// Disable the JSON access log on stdout.
    #[arg(long)]
    no_access_log: bool,
    /// on (default) or off: with off, every connection makes a full handshake with its
    /// certificate and no TLS session ticket is issued.
    #[arg(long, default_value = "on", value_parser = parse_session_resumption)]
    session_resumption: mtls_serve::tls::SessionResumption,
}

pub(crate) fn parse_revocation_policy(
    s: &str,
) -> std::result::Result<mtls_gateway::config::RevocationPolicy, String> {
    match s {
        "hard-fail" => Ok(mtls_gateway::config::RevocationPolicy::HardFail),
        "soft-fail" => Ok(mtls_gateway::config::RevocationPolicy::SoftFail),
        other => Err(format!("{other:?}: use hard-fail or soft-fail")),
    }
}

fn parse_session_resumption(
    s: &str,
) -> std::result::Result<mtls_serve::tls::SessionResumption, String> {
    match s {
        "on" => Ok(mtls_serve::tls::SessionResumption::On),
        "off" => Ok(mtls_serve::tls::SessionResumption::Off),
        other => Err(format!("{other:?}: use on or off")),
    }
}

fn config_from_flags(a: &GatewayArgs) -> Result<GatewayConfig> {
    let missing = |f: &str| UsageError(format!("{f} is required without --config"));
    let mode = match a.mode.as_str() {
        "http" => Mode::Http,
        "tcp" => Mode::Tcp,
        m => return Err(UsageError(format!("--mode {m:?}: use http or tcp")).into()),
    };
    let client_auth = match a.client_auth.as_str() {
        "required" => ClientAuth::Required,
        "optional" => ClientAuth::Optional,
        m => {
            return Err(UsageError(format!("--client-auth {m:?}: use required or optional")).into())
        }
    };
    let policy = Policy {
        allow_any_trusted: a.allow_any_trusted,
        matching: a.matching,
        allow_cn: a.allow_cn.clone(),
        allow_ou: a.allow_ou.clone(),
        allow_dns: a.allow_dns.clone(),
        allow_uri: a.allow_uri.clone(),
        allow_email: a.allow_email.clone(),
        allow_fingerprint: a.allow_fingerprint.clone(),
        allow_spki: a.allow_spki.clone(),
        allow_issuer: a.allow_issuer.clone(),
        allow_issuer_spki: a.allow_issuer_spki.clone(),
    };
    policy.validate().map_err(UsageError)?;
    if policy.allows_nobody() {
        // Named as flags: the configuration file's keys mean nothing to a command line.
        return Err(UsageError(
            "the policy allows nobody: give --allow-cn, --allow-ou, --allow-dns, --allow-uri, \
             --allow-email, --allow-fingerprint or --allow-spki (any may repeat), or \
             --allow-any-trusted for every client the CA trusts"
                .into(),
        )
        .into());
    }
    Ok(GatewayConfig {
        admin_listen: a.admin_listen,
        limits: Limits::default(),
        access_log: !a.no_access_log,
        listeners: vec![ListenerConfig {
            name: "default".into(),
            listen: a.listen.ok_or_else(|| missing("--listen"))?,
            mode,
            upstream: a.upstream.clone().ok_or_else(|| missing("--upstream"))?,
            upstream_ca: a.upstream_ca.clone(),
            upstream_crl: a.upstream_crl.clone(),
            upstream_pinned_pubkey: a.upstream_pinned_pubkey.clone(),
            upstream_server_name: None,
            upstream_certificate: None,
            certificates: vec![CertificateConfig {
                cert: a.cert.clone().ok_or_else(|| missing("--cert"))?,
                key: a.key.clone().ok_or_else(|| missing("--key"))?,
                key_passphrase_file: a.key_passphrase_file.clone(),
            }],
            client_ca: a.client_ca.clone(),
            crl: a.crl.clone(),
            crl_fetch: match (&a.crl_url, a.crl.first()) {
                (Some(url), Some(file)) => vec![mtls_gateway::config::CrlFetchConfig {
                    url: url.clone(),
                    file: file.clone(),
                    every: a.crl_refresh,
                }],
                _ => Vec::new(),
            },
            revocation_feed: (!a.revocation_feed.is_empty()).then(|| {
                mtls_gateway::config::RevocationFeedConfig {
                    urls: a.revocation_feed.clone(),
                    ca: a.revocation_feed_ca.clone(),
                    certificate: None,
                    max_age: a.revocation_feed_max_age,
                }
            }),
            crl_from_certificates: a.crl_from_certificates,
            ocsp: (a.ocsp || a.ocsp_responder.is_some()).then(|| {
                mtls_gateway::config::OcspConfig {
                    responder: a.ocsp_responder.clone(),
                    max_wait: std::time::Duration::from_secs(2),
                    nonce: false,
                }
            }),
            ocsp_stapling: true,
            client_auth,
            policy,
            routes: Vec::new(),
            route_match: Default::default(),
            strip_headers: a.strip_headers.clone(),
            extra_hosts: a.extra_hosts.clone(),
            proxy_protocol: a.proxy_protocol,
            revocation_policy: a.revocation_policy,
            revocation_scope: Default::default(),
            allow_unknown_revocation: false,
            allow_expired_crl: false,
            session_resumption: a.session_resumption,
        }],
    })
}

pub(crate) async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    // One worker per core the process may use.
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn gateway(a: GatewayArgs) -> Result<ExitCode> {
    let (config, path) = match &a.config {
        Some(p) => (
            GatewayConfig::from_file(p).map_err(|e| UsageError(e.to_string()))?,
            Some(p.clone()),
        ),
        None => {
            let c = config_from_flags(&a)?;
            c.validate().map_err(|e| UsageError(e.to_string()))?;
            (c, None)
        }
    };
    runtime()?.block_on(async move {
        let running = mtls_gateway::start(config, path).await?;
        for addr in &running.addrs {
            eprintln!("mtls gateway: listening on {addr}");
        }
        if let Some(a) = running.admin_addr {
            eprintln!("mtls gateway: metrics on http://{a}/metrics");
        }
        wait_for_stop().await;
        eprintln!("mtls gateway: draining");
        running.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct QuickstartArgs {
    /// Directory for the demo PKI and files.
    #[arg(long, default_value = "mtls-quickstart")]
    dir: PathBuf,
    /// Gateway port on 127.0.0.1.
    #[arg(long, default_value_t = 8443)]
    port: u16,
    /// Exit after printing the commands instead of serving (for scripts).
    #[arg(long, hide = true)]
    no_serve: bool,
}

fn run_cli(args: &[&str]) -> Result<()> {
    let cli = crate::Cli::try_parse_from(args).context("internal argument error")?;
    crate::run(cli)?;
    Ok(())
}

/// The demo upstream: answers `GET /api/secure` with the client's CN from the forwarded identity.
async fn demo_upstream(listener: tokio::net::TcpListener, shutdown: mtls_serve::Shutdown) {
    let service = service_fn(
        |req: http::Request<mtls_serve::http::RequestBody>| async move {
            let cn = req
                .headers()
                .get("x-forwarded-client-cert")
                .and_then(|v| v.to_str().ok())
                .and_then(cn_from_xfcc);
            let r: http::Response<Full<Bytes>> = match (req.uri().path(), cn) {
                ("/api/secure", Some(cn)) => {
                    let mut r = http::Response::new(Full::new(Bytes::from(
                        serde_json::json!({"message": "Authenticated via mTLS", "client": cn})
                            .to_string(),
                    )));
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    r
                }
                ("/api/secure", None) => mtls_serve::ApiError::no_client_cert().to_response(),
                _ => mtls_serve::ApiError::new(
                    http::StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    "try /api/secure",
                )
                .to_response(),
            };
            Ok::<_, Infallible>(r)
        },
    );
    mtls_serve::http::serve_plain(
        listener,
        mtls_serve::Slots::new(1024),
        Default::default(),
        std::time::Duration::from_secs(3600),
        shutdown,
        service,
    )
    .await
}

/// Extracts the CN from the `Subject="…"` field of an `X-Forwarded-Client-Cert` value.
pub fn cn_from_xfcc(v: &str) -> Option<String> {
    let start = v.find("Subject=\"")? + "Subject=\"".len();
    let mut subject = String::new();
    let mut chars = v[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => subject.push(chars.next()?),
            '"' => break,
            c => subject.push(c),
        }
    }
    // RFC 4514: most specific first, so the certificate's first CN is the string's last.
    mtls_pki::dn::parse_rfc4514(&subject)?
        .into_iter()
        .rev()
        .find(|(kind, _)| kind.eq_ignore_ascii_case("CN"))
        .map(|(_, value)| value)
}

pub fn quickstart(a: QuickstartArgs) -> Result<ExitCode> {
    let dir = &a.dir;
    let pki = dir.join("pki");
    let pki_s = pki.to_string_lossy().to_string();
    let s = |p: &Path| p.to_string_lossy().to_string();
    if !pki.join("intermediate.crt").exists() {
        run_cli(&[
            "mtls",
            "--pki",
            &pki_s,
            "ca",
            "init",
            "--org",
            "mtls quickstart",
        ])?;
    }
    let issued = pki.join("issued");
    if !issued.join("localhost.crt").exists() {
        run_cli(&[
            "mtls",
            "--pki",
            &pki_s,
            "issue",
            "server",
            "localhost",
            "127.0.0.1",
            "::1",
        ])?;
    }
    if !issued.join("client-app.crt").exists() {
        run_cli(&["mtls", "--pki", &pki_s, "issue", "client", "client-app"])?;
    }
    run_cli(&["mtls", "--pki", &pki_s, "crl"])?;
    let root = s(&pki.join("root.crt"));
    let cert = s(&issued.join("client-app.chain.pem"));
    let key = s(&issued.join("client-app.key"));
    let url = format!("https://localhost:{}/api/secure", a.port);
    let exe = std::env::current_exe()
        .map(|p| s(&p))
        .unwrap_or_else(|_| "mtls".into());
    println!(
        "\nmTLS quickstart: the gateway on https://localhost:{port} verifies client certificates issued by\n\
         {root} and forwards the identity to a demo upstream serving /api/secure.\n\n\
         Try it (in another terminal):\n\n  \
         curl --cacert {root} --cert {cert} --key {key} {url}\n  \
         {exe} request {url} --ca {root} --cert {cert} --key {key}\n\n\
         Without a client certificate the handshake is refused:\n\n  \
         curl --cacert {root} {url}\n\n\
         Revoke the client and watch the gateway pick up the new CRL:\n\n  \
         {exe} --pki {pki_s} revoke --cert {cert} && {exe} --pki {pki_s} crl\n",
        port = a.port
    );
    if a.no_serve {
        return Ok(ExitCode::SUCCESS);
    }
    let listen: SocketAddr = ([127, 0, 0, 1], a.port).into();
    runtime()?.block_on(async move {
        let upstream = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let upstream_addr = upstream.local_addr()?;
        let (stop_upstream, upstream_shutdown) = mtls_serve::shutdown();
        tokio::spawn(demo_upstream(upstream, upstream_shutdown));
        let config = GatewayConfig {
            admin_listen: None,
            limits: Limits::default(),
            access_log: true,
            listeners: vec![ListenerConfig {
                name: "quickstart".into(),
                listen,
                mode: Mode::Http,
                upstream: format!("http://{upstream_addr}"),
                upstream_ca: Vec::new(),
                upstream_crl: Vec::new(),
                upstream_pinned_pubkey: Vec::new(),
                upstream_server_name: None,
                upstream_certificate: None,
                certificates: vec![CertificateConfig {
                    cert: issued.join("localhost.chain.pem"),
                    key: issued.join("localhost.key"),
                    key_passphrase_file: None,
                }],
                client_ca: vec![pki.join("ca-chain.pem")],
                crl: vec![pki.join("crl.pem")],
                crl_fetch: Vec::new(),
                revocation_feed: None,
                crl_from_certificates: false,
                ocsp: None,
                ocsp_stapling: true,
                client_auth: ClientAuth::Required,
                policy: Policy {
                    allow_any_trusted: true,
                    ..Policy::default()
                },
                routes: Vec::new(),
                route_match: Default::default(),
                strip_headers: Vec::new(),
                extra_hosts: Vec::new(),
                proxy_protocol: false,
                revocation_policy: Default::default(),
                revocation_scope: Default::default(),
                allow_unknown_revocation: false,
                allow_expired_crl: false,
                session_resumption: Default::default(),
            }],
        };
        let running = mtls_gateway::start(config, None).await?;
        eprintln!(
            "mtls quickstart: serving on {} (Ctrl-C to stop)",
            running.addrs.first().copied().unwrap_or(listen)
        );
        wait_for_stop().await;
        running.shutdown().await;
        stop_upstream.trigger();
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::cn_from_xfcc;

    #[test]
    fn xfcc_cn() {
        assert_eq!(
            cn_from_xfcc(r#"Hash=ab;Subject="CN=client-app,O=x";URI="u""#).as_deref(),
            Some("client-app")
        );
        // A value holding ", CN=admin" (escaped by the gateway) is one value, not a CN.
        assert_eq!(
            cn_from_xfcc(r#"Hash=ab;Subject="CN=guest,O=x\\, CN=admin""#).as_deref(),
            Some("guest")
        );
        assert_eq!(
            cn_from_xfcc(r#"Hash=ab;Subject="CN=a\\\"b""#).as_deref(),
            Some("a\"b")
        );
        assert_eq!(cn_from_xfcc("Hash=ab"), None);
    }
}
