//! `mtls request` (a curl-like mTLS client) and `mtls tunnel` (plaintext locally, mTLS out).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::pkidir::load_key;
use crate::secrets::Source;
use crate::UsageError;

/// Client credentials and trust, shared by `request` and `tunnel`.
#[derive(Args, Clone)]
pub struct ClientTlsArgs {
    /// Client certificate chain (leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// Client private key (may be encrypted).
    #[arg(long)]
    key: PathBuf,
    /// CA certificates trusted for the server.
    #[arg(long = "ca", required = true)]
    ca: Vec<PathBuf>,
    /// Passphrase file for an encrypted key (else $MTLS_PASSPHRASE, else a prompt).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Name to verify the server certificate against (default: the target host). A DNS
    /// name; an IP address must be the one connected to (for `request`, the URL's).
    #[arg(long)]
    server_name: Option<String>,
    /// Also require the server's key to be this one (SHA-256 of its SubjectPublicKeyInfo:
    /// sha256//BASE64 as curl's --pinnedpubkey, or hex as `mtls inspect` prints spki_sha256;
    /// repeatable: any of them). The chain is checked against --ca all the same.
    #[arg(long, value_name = "SPKI_SHA256")]
    pinned_pubkey: Vec<mtls_pki::KeyPin>,
    /// Refuse a server that does not staple an OCSP response that verifies and says good (a
    /// stapled "revoked" is refused either way).
    #[arg(long)]
    require_ocsp_staple: bool,
    /// Check the server certificate against this CRL (repeatable; its signer must be in
    /// --ca). With a CRL given, the server's leaf must be covered by one. `tunnel` follows the
    /// file: a replaced CRL counts from the next connection on (and closes open connections to
    /// a server it revokes); one that does not load, or is older (a lower CRL number) than the
    /// CRL in use, is logged and the last good CRL stays in force.
    #[arg(long = "crl", value_name = "FILE")]
    crl: Vec<PathBuf>,
    /// Check the server certificate with OCSP (the responder in its AIA).
    #[arg(long)]
    ocsp: bool,
    /// Check the server certificate with this OCSP responder (http://…) instead of its AIA.
    #[arg(long, value_name = "URL")]
    ocsp_responder: Option<String>,
    /// What to do with a server whose revocation status is unknown (no covering CRL, no OCSP
    /// answer, a silent feed) or whose CRL is past its nextUpdate: hard-fail (refuse) or
    /// soft-fail (connect, log a warning).
    #[arg(long, default_value = "hard-fail", value_parser = crate::serve::parse_revocation_policy)]
    revocation_policy: mtls_gateway::config::RevocationPolicy,
}

/// The revocation sources a client was given beyond CRL files, and what keeps them current.
#[derive(Default)]
struct ClientSources {
    sources: mtls_verify::RevocationSources,
    feed: Option<mtls_client::feed::FeedSubscriber>,
    ocsp: Option<Arc<mtls_client::ocsp_check::OcspChecker>>,
}

impl ClientSources {
    /// Keeps the feed and the OCSP answers current until `shutdown` (long-running clients).
    /// Open connections notice what they change through the trust state's connection epoch
    /// ([`mtls_client::ServerTrust::lapsed`]).
    fn spawn(self, shutdown: &mtls_serve::Shutdown) {
        if let Some(feed) = self.feed {
            tokio::spawn(feed.run(
                move |change| {
                    tracing::info!(
                        new = change.added,
                        position = change.position,
                        "revocations from the CA's feed"
                    );
                },
                shutdown.clone(),
            ));
        }
        if let Some(checker) = self.ocsp {
            tokio::spawn(checker.run(|| {}, shutdown.clone()));
        }
    }
}

impl ClientTlsArgs {
    fn passphrase(&self) -> Source<'_> {
        Source {
            file: self.passphrase_file.as_deref(),
            env: "MTLS_PASSPHRASE",
            flag: "--passphrase-file",
            what: "key passphrase",
        }
    }

    /// The key's passphrase for a client that follows its files (`tunnel`): asked for once, and
    /// only if the key is encrypted, then given to everything the command builds with the key
    /// (the server connections and the revocation feed).
    fn key_passphrase(&self) -> Result<mtls_tls::Passphrase> {
        Ok(match self.passphrase().unlock_if_encrypted(&self.key)? {
            Some(p) => mtls_tls::Passphrase::Bytes(Arc::new(p)),
            None => mtls_tls::Passphrase::None,
        })
    }

    /// The client builder for these flags. With `follow_files` (the key's passphrase, from
    /// [`Self::key_passphrase`]), a renewed certificate and key are picked up on the next
    /// connection (long-running `tunnel`); otherwise the key is loaded (and its passphrase
    /// asked for) once, now.
    fn client(
        &self,
        follow_files: Option<&mtls_tls::Passphrase>,
        sources: &ClientSources,
    ) -> Result<mtls_client::ClientBuilder> {
        let mut b = mtls_client::ClientBuilder::new();
        for p in &self.ca {
            b = b.ca_file(p);
        }
        for pin in &self.pinned_pubkey {
            b = b.pin_server_key(*pin);
        }
        if self.require_ocsp_staple {
            b = b.require_ocsp_staple();
        }
        for p in &self.crl {
            b = b.crl_file(p);
        }
        b = b.revocation_sources(sources.sources.clone());
        if self.revocation_policy == mtls_gateway::config::RevocationPolicy::SoftFail {
            b = b.soft_fail_revocation();
        }
        if let Some(passphrase) = follow_files {
            b = b
                .identity_files(&self.cert, &self.key)
                .passphrase(passphrase.clone());
        } else {
            let key = load_key(&self.key, &self.passphrase())?;
            let chain = mtls_pki::pem_io::certificates(&mtls_pki::files::read_public(&self.cert)?)
                .with_context(|| format!("reading {}", self.cert.display()))?;
            let cred =
                mtls_tls::credential_from_parts(chain, &key, time::OffsetDateTime::now_utc())
                    .map_err(|e| anyhow::anyhow!("{}: {e}", self.cert.display()))?;
            b = b.identity(cred);
        }
        Ok(b)
    }

    /// The OCSP checker `--ocsp`/`--ocsp-responder` ask for, in `sources`.
    fn ocsp_sources(&self, sources: &mut ClientSources) -> Result<()> {
        if self.ocsp || self.ocsp_responder.is_some() {
            let checker =
                mtls_client::ocsp_check::OcspChecker::new(mtls_client::ocsp_check::OcspOptions {
                    responder: self.ocsp_responder.clone(),
                    ..Default::default()
                })?;
            sources.sources.status = Some(checker.clone() as Arc<dyn mtls_verify::StatusSource>);
            sources.ocsp = Some(checker);
        }
        Ok(())
    }

    fn server_name(&self, host: &str) -> Result<ServerName<'static>> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
        ServerName::try_from(name.clone())
            .map_err(|_| UsageError(format!("invalid server name {name:?}")).into())
    }
}

#[derive(Args)]
pub struct RequestArgs {
    /// https:// URL.
    url: String,
    #[command(flatten)]
    tls: ClientTlsArgs,
    /// HTTP method.
    #[arg(short = 'X', long = "request", default_value = "GET")]
    method: String,
    /// Request body (like curl -d; `@FILE` reads a file).
    #[arg(short = 'd', long = "data")]
    data: Option<String>,
    /// Extra header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Print the status line and response headers too.
    #[arg(short = 'i', long = "include")]
    include: bool,
    /// Exit 22 when the response status is 400 or more (like curl --fail).
    #[arg(short = 'f', long)]
    fail: bool,
    /// Show the handshake on stderr: TLS version, the server's chain, whether the server asked
    /// for a client certificate (and which CAs it accepts) and whether one was sent.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// How long opening the connection may take (TCP, then the TLS handshake).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::util::std_duration_arg)]
    connect_timeout: std::time::Duration,
    /// How long to wait for the response head (status line and headers), counted from the
    /// start of the request: connecting and sending the request are included.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::util::std_duration_arg)]
    timeout: std::time::Duration,
    /// The longest pause allowed in the response body: each wait for the next piece of it. A
    /// body that keeps flowing (a large download, an event stream) is never cut by it; one that
    /// stops fails (exit 1), after what did arrive has been written out.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::util::std_duration_arg)]
    idle_timeout: std::time::Duration,
    /// Cap on the whole request, body included, however steadily it flows (off by default, as
    /// with curl: --timeout and --idle-timeout already bound every wait for the server).
    #[arg(long, value_name = "DURATION", value_parser = crate::util::std_duration_arg)]
    max_time: Option<std::time::Duration>,
}

/// Describes a handshake for `request -v`.
fn describe_handshake(seen: &mtls_client::observe::HandshakeSeen) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "* {} (server signature {})\n",
        seen.tls_version.unwrap_or("TLS version unknown"),
        seen.server_signature
            .map(|x| format!("{x:?}"))
            .unwrap_or_else(|| "unknown".into())
    ));
    for (i, c) in seen.server_chain.iter().enumerate() {
        match mtls_pki::pem_io::parse_certificate(c) {
            Ok(p) => s.push_str(&format!(
                "* server certificate {i}: {} (issuer {}, valid until {})\n",
                p.subject(),
                p.issuer(),
                crate::util::fmt_time(p.validity().not_after.to_datetime())
            )),
            Err(_) => s.push_str(&format!("* server certificate {i}: (does not parse)\n")),
        }
    }
    if seen.client_cert_requested {
        let cas = if seen.acceptable_cas.is_empty() {
            "any CA".to_string()
        } else {
            seen.acceptable_cas.join("; ")
        };
        s.push_str(&format!(
            "* the server asked for a client certificate (accepting {cas}); {}\n",
            if seen.client_cert_sent {
                "ours was sent"
            } else {
                "none was sent"
            }
        ));
    } else {
        s.push_str("* the server did not ask for a client certificate\n");
    }
    s
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn request(a: RequestArgs) -> Result<ExitCode> {
    let mut url = reqwest_url(&a.url)?;
    let host = url
        .host_str()
        .ok_or_else(|| UsageError("the URL has no host".into()))?
        .trim_matches(['[', ']'])
        .to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    // An address as --server-name cannot be verified apart from where it connects (name
    // resolution overrides apply to DNS names only): the request would go to that address,
    // headers, body and client certificate included, not to the URL's host.
    if let Some(name) = &a.tls.server_name {
        let name = name.trim_matches(['[', ']']);
        if name.parse::<std::net::IpAddr>().is_ok() && name != host {
            return Err(UsageError(format!(
                "--server-name {name}: an IP address can only be verified where it is reached: put it in the URL (https://{name}:{port}/…) instead"
            ))
            .into());
        }
    }
    let body = match &a.data {
        Some(d) if d.starts_with('@') => {
            std::fs::read(&d[1..]).with_context(|| format!("reading {}", &d[1..]))?
        }
        Some(d) => d.clone().into_bytes(),
        None => Vec::new(),
    };
    let method = if a.data.is_some() && a.method == "GET" {
        "POST".to_string()
    } else {
        a.method.clone()
    };
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| UsageError(format!("invalid method {method:?}")))?;
    let mut headers = http::HeaderMap::new();
    for h in &a.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| UsageError(format!("header {h:?} is not `Name: value`")))?;
        let name = http::HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| UsageError(format!("invalid header name in {h:?}")))?;
        let value = http::HeaderValue::from_str(v.trim())
            .map_err(|_| UsageError(format!("invalid header value in {h:?}")))?;
        headers.append(name, value);
    }
    if a.data.is_some() && !headers.contains_key(http::header::CONTENT_TYPE) {
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
    }
    let mut sources = ClientSources::default();
    a.tls.ocsp_sources(&mut sources)?;
    let log = Arc::new(mtls_client::observe::HandshakeLog::default());
    // The phases are timed here, where a timeout can name its flag. The client's own read
    // timeout (which reqwest counts from the request's start to the head, then per body piece,
    // with one value for both) is only a backstop, a second later than either so that it never
    // fires first; its whole-exchange deadline is off, so a body that keeps flowing is read to
    // its end unless --max-time says otherwise.
    let (connect_timeout, head_timeout, idle_timeout) =
        (a.connect_timeout, a.timeout, a.idle_timeout);
    let backstop = head_timeout
        .max(idle_timeout)
        .saturating_add(std::time::Duration::from_secs(1));
    let mut builder = a
        .tls
        .client(None, &sources)?
        .http1_only()
        .connect_timeout(connect_timeout)
        .read_timeout(backstop)
        .no_total_timeout()
        .observe_handshakes(log.clone());
    let rt = runtime()?;
    let (verbose, include, fail, max_time) = (a.verbose, a.include, a.fail, a.max_time);
    let exchange = async move {
        if let Some(name) = &a.tls.server_name {
            // Verify (and address) the server as `name`, connecting where the URL points.
            a.tls.server_name(name)?;
            let addr = tokio::net::lookup_host((host.as_str(), port))
                .await
                .with_context(|| format!("resolving {host}"))?
                .next()
                .ok_or_else(|| anyhow::anyhow!("{host} has no address"))?;
            builder = builder.resolve(name.clone(), addr);
            url.set_host(Some(name))
                .map_err(|e| UsageError(format!("--server-name {name:?}: {e}")))?;
        }
        let client = builder.build()?;
        let sent = client
            .request(method, url.clone())
            .headers(headers)
            .body(body)
            .send();
        let mut resp = tokio::time::timeout(head_timeout, sent)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no response from {url} within {} (--timeout)",
                    mtls_serve::duration::format(head_timeout)
                )
            })?
            .map_err(|e| {
                if e.is_connect() && e.is_timeout() {
                    anyhow::anyhow!(
                        "could not connect to {url} within {} (--connect-timeout)",
                        mtls_serve::duration::format(connect_timeout)
                    )
                } else {
                    anyhow::anyhow!("{}", mtls_client::ca::error_chain(&e))
                }
            })?;
        // The handshake is over once the response head is in.
        let seen = log.last();
        if verbose {
            eprint!("{}", describe_handshake(&seen));
        } else if !seen.client_cert_requested && !seen.server_chain.is_empty() {
            eprintln!(
                "note: the server did not ask for a client certificate: this request was not mutually authenticated"
            );
        }
        let status = resp.status();
        // A reader that goes away (`| head`) ends the output, not the command: the status
        // still decides the exit code (22 with --fail).
        let written = async {
            use std::io::Write;
            let mut out = std::io::stdout();
            if include {
                let mut head = format!("{:?} {}\r\n", resp.version(), status);
                for (k, v) in resp.headers() {
                    head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap_or("<binary>")));
                }
                out.write_all(head.as_bytes())?;
                out.write_all(b"\r\n")?;
                out.flush()?;
            }
            // The body goes out as it arrives (as curl's does): a large or endless one is never
            // held in memory, and a slow one shows as it comes.
            let mut last = None;
            let body_error = |e: mtls_client::reqwest::Error| {
                anyhow::anyhow!(
                    "reading the response body: {}",
                    mtls_client::ca::error_chain(&e)
                )
            };
            let stalled = || {
                anyhow::anyhow!(
                    "reading the response body: the server sent nothing for {} (--idle-timeout)",
                    mtls_serve::duration::format(idle_timeout)
                )
            };
            while let Some(chunk) = tokio::time::timeout(idle_timeout, resp.chunk())
                .await
                .map_err(|_| stalled())?
                .map_err(body_error)?
            {
                if let Some(b) = chunk.last() {
                    last = Some(*b);
                }
                out.write_all(&chunk)?;
                out.flush()?;
            }
            if last.is_some_and(|b| b != b'\n') {
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok::<(), anyhow::Error>(())
        }
        .await;
        match written {
            Err(e)
                if e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) => {}
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        Ok::<_, anyhow::Error>(status)
    };
    let status = rt.block_on(async move {
        match max_time {
            None => exchange.await,
            Some(max) => tokio::time::timeout(max, exchange).await.map_err(|_| {
                anyhow::anyhow!(
                    "the request took longer than {} (--max-time)",
                    mtls_serve::duration::format(max)
                )
            })?,
        }
    })?;
    if fail && status.as_u16() >= 400 {
        return Ok(ExitCode::from(22));
    }
    Ok(ExitCode::SUCCESS)
}

fn reqwest_url(s: &str) -> Result<mtls_client::reqwest::Url> {
    let url = mtls_client::reqwest::Url::parse(s)
        .map_err(|_| UsageError(format!("invalid URL {s:?}")))?;
    if url.scheme() != "https" {
        return Err(UsageError("only https:// URLs are supported".into()).into());
    }
    Ok(url)
}

#[derive(Args)]
pub struct TunnelArgs {
    /// Where to accept plaintext connections: IP:PORT (loopback only unless --allow-remote;
    /// any local user, container sharing the network, or web page open in a local browser can
    /// connect to it and use your certificate) or unix:PATH, a socket only this user can use
    /// (mode 0600, and connections from other users are refused by their credentials): prefer
    /// it where the client can use one.
    #[arg(long, value_parser = tunnel_listen_arg, value_name = "ADDR|unix:PATH")]
    listen: TunnelListen,
    /// The mTLS server, HOST:PORT (an IPv6 address in brackets: [::1]:443).
    #[arg(long)]
    target: String,
    #[command(flatten)]
    tls: ClientTlsArgs,
    /// Accept connections on a non-loopback address (anyone who can reach it uses your
    /// certificate).
    #[arg(long)]
    allow_remote: bool,
    /// Follow the online CA's revocation feed (https://ca:9443; repeat for instances sharing
    /// one database): a revoked server is refused from the next connection on. The tunnel
    /// presents --cert to the CA, which must allow it in `[revocation_feed]`, and verifies the
    /// CA (and the CRLs behind the feed) with --ca.
    #[arg(long = "revocation-feed", value_name = "URL")]
    revocation_feed: Vec<String>,
    /// Refuse servers the feed alone vouches for when the CA has not answered for this long.
    #[arg(long, default_value = "1m", value_parser = crate::util::std_duration_arg, requires = "revocation_feed")]
    revocation_feed_max_age: std::time::Duration,
    /// Close a connection after this long without a byte in either direction (as the
    /// gateway's `idle_timeout`): a forgotten client does not hold a slot and a server
    /// connection for ever.
    #[arg(long, default_value = "1h", value_parser = crate::util::std_duration_arg)]
    idle_timeout: std::time::Duration,
}

pub fn tunnel(a: TunnelArgs) -> Result<ExitCode> {
    if let TunnelListen::Tcp(addr) = &a.listen {
        if !addr.ip().is_loopback() && !a.allow_remote {
            return Err(UsageError(format!(
                "refusing to listen on non-loopback {addr}: anyone reaching it would use your client certificate (pass --allow-remote to insist)",
            ))
            .into());
        }
    }
    let (host, port) = crate::util::host_port(&a.target).map_err(|e| {
        UsageError(format!(
            "--target: {e}: use HOST:PORT, e.g. db.example.com:5432, 127.0.0.1:5432 or [::1]:5432"
        ))
    })?;
    let target = a.target.clone();
    let server_name = a.tls.server_name(&host)?;
    let passphrase = a.tls.key_passphrase()?;
    let rt = runtime()?;
    rt.block_on(async move {
        let mut sources = ClientSources::default();
        a.tls.ocsp_sources(&mut sources)?;
        if !a.revocation_feed.is_empty() {
            let files = mtls_client::feed::FeedFiles {
                urls: a.revocation_feed.clone(),
                server_ca: a.tls.ca.clone(),
                cert: a.tls.cert.clone(),
                key: a.tls.key.clone(),
                passphrase: passphrase.clone(),
                crl_signers: a.tls.ca.clone(),
                max_age: a.revocation_feed_max_age,
            };
            let (mut feed, set) = files.subscriber()?;
            feed.seed_within(std::time::Duration::from_secs(10)).await;
            sources.sources.pushed = Some(set);
            sources.feed = Some(feed);
        }
        // The server of open connections is checked again, by the verifier's own trust state,
        // when the sources or the CRL files change (looked at once a second): a server revoked
        // while a connection is open loses it.
        let client = a.tls.client(Some(&passphrase), &sources)?;
        let (config, server_state) = client.tls_config_and_trust(&[])?;
        let config = Arc::new(config);
        let listener = match &a.listen {
            TunnelListen::Tcp(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?;
                eprintln!("mtls tunnel: {} -> {} (mTLS)", l.local_addr()?, target);
                Local::Tcp(l)
            }
            TunnelListen::Unix(path) => {
                let l = mtls_serve::accept::OwnerOnlyUnixListener::bind(path)
                    .with_context(|| format!("binding unix:{}", path.display()))?;
                eprintln!("mtls tunnel: unix:{} -> {} (mTLS)", path.display(), target);
                Local::Unix(l)
            }
        };
        let to = Arc::new(TunnelTo {
            connector: tokio_rustls::TlsConnector::from(config),
            server_name,
            host,
            port,
            target,
            server_state: server_state.clone(),
            idle_timeout: a.idle_timeout,
        });
        let (stop, shutdown) = mtls_serve::shutdown();
        sources.spawn(&shutdown);
        let slots = mtls_serve::Slots::new(4096);
        let serving: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
            match listener {
                Local::Tcp(l) => Box::pin(mtls_serve::accept_loop(
                    l,
                    slots,
                    shutdown,
                    carrier(to, None),
                )),
                Local::Unix(l) => {
                    let name = format!("unix:{}", l.path().display());
                    Box::pin(mtls_serve::accept_loop(
                        l,
                        slots,
                        shutdown,
                        carrier(to, Some(name)),
                    ))
                }
            };
        tokio::select! {
            _ = serving => {}
            _ = crate::serve::wait_for_stop() => stop.trigger(),
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Where `--listen` accepts local clients.
#[derive(Clone, Debug)]
enum TunnelListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

fn tunnel_listen_arg(s: &str) -> std::result::Result<TunnelListen, String> {
    match s.strip_prefix("unix:") {
        Some("") => Err("unix: needs a path, e.g. unix:/run/user/1000/db.sock".into()),
        Some(path) => Ok(TunnelListen::Unix(PathBuf::from(path))),
        None => crate::util::listen_arg(s).map(TunnelListen::Tcp),
    }
}

/// The bound `--listen`.
enum Local {
    Tcp(tokio::net::TcpListener),
    Unix(mtls_serve::accept::OwnerOnlyUnixListener),
}

/// What every tunnelled connection connects to, and how.
struct TunnelTo {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    host: String,
    port: u16,
    target: String,
    server_state: Option<Arc<mtls_client::ServerTrust>>,
    idle_timeout: std::time::Duration,
}

/// The accept loop's handler for one kind of local stream: each connection is carried in
/// its own task, named `local_name` in messages (else by its address).
fn carrier<IO>(
    to: Arc<TunnelTo>,
    local_name: Option<String>,
) -> impl FnMut(
    IO,
    SocketAddr,
    mtls_serve::Slot,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    move |local, remote, slot| {
        let from = local_name.clone().unwrap_or_else(|| remote.to_string());
        let carried = carry(to.clone(), local, from);
        Box::pin(async move {
            let _slot = slot;
            carried.await
        })
    }
}

/// Carries one local client (`from`, for messages) to the server over mTLS, until either side
/// ends, the connection idles out or the server stops being trusted.
async fn carry<IO>(to: Arc<TunnelTo>, mut local: IO, from: String)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let TunnelTo {
        connector,
        server_name,
        host,
        port,
        target,
        server_state,
        idle_timeout,
    } = &*to;
    let (port, idle_timeout) = (*port, *idle_timeout);
    let result = async {
        // Before the handshake: a change during it counts against this connection.
        let epoch = server_state.as_ref().map(|t| t.connection_epoch());
        // A server that accepts and never finishes the handshake must not
        // hold the client (and a slot) for ever.
        let opened = tokio::time::timeout(mtls_client::CONNECT_TIMEOUT, async {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            connector.connect(server_name.clone(), tcp).await
        })
        .await;
        let tls = opened.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no TLS connection to {target} within {}",
                    mtls_serve::duration::format(mtls_client::CONNECT_TIMEOUT)
                ),
            )
        })??;
        // The one mechanism every client and the gateway use for what a connection carries
        // for long (the trust state's connection epoch): looked at once a second.
        let untrusted = async {
            match (&server_state, epoch) {
                (Some(state), Some(epoch)) => state.lapsed(epoch).await,
                _ => std::future::pending().await,
            }
        };
        // Any byte either way is progress. Both sides are bounded: with only
        // the TLS side, a local client that stops reading stalled the copy on
        // its write, the TLS side was never polled again and the timer never
        // looked at (the connection and its slot were held for ever).
        let mut tls = mtls_tls::IdleTimeout::new(tls, idle_timeout);
        // Borrowed: the client is closed after the reason is printed.
        let mut local = mtls_tls::IdleTimeout::new(&mut local, idle_timeout);
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut local, &mut tls) => {
                copied.map_err(|e| match e.kind() {
                    std::io::ErrorKind::TimedOut => std::io::Error::new(
                        e.kind(),
                        format!("closed after {} without traffic (--idle-timeout)",
                            mtls_serve::duration::format(idle_timeout)),
                    ),
                    _ => e,
                })?;
            }
            () = untrusted => {
                eprintln!("mtls tunnel: connection from {from} closed: the server is no longer trusted");
            }
        }
        Ok::<_, std::io::Error>(())
    }
    .await;
    if let Err(e) = result {
        eprintln!("mtls tunnel: connection from {from}: {e}");
    }
}
