//! Listeners, connections, reloads, the admin endpoint and draining.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::HeaderName;
use http::uri::Authority;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mtls_verify::Rejection;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::config::{GatewayConfig, Limits, ListenerConfig, Mode};
use crate::http::{self as gw_http, Conn, UpstreamClient};
use crate::metrics::Metrics;
use crate::state::ListenerState;
use crate::Error;

/// What every connection of a listener shares.
pub struct Shared {
    pub name: Arc<str>,
    pub mode: Mode,
    pub cfg: ArcSwap<ListenerConfig>,
    pub state: ArcSwap<ListenerState>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub client: UpstreamClient,
    pub upstream_authority: Authority,
    pub upstream_addr: String,
    pub upstream_scheme: &'static str,
    pub strip_headers: Vec<HeaderName>,
    pub access_log: bool,
    /// Bumped after every successful reload; long-lived TCP connections re-check on it.
    pub generation: watch::Sender<u64>,
}

/// A started gateway.
pub struct Running {
    /// Bound address of each listener, in configuration order.
    pub addrs: Vec<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    reload: tokio::sync::mpsc::UnboundedSender<()>,
    done: tokio::task::JoinHandle<()>,
    pub metrics: Arc<Metrics>,
}

impl Running {
    /// Asks for a reload (as SIGHUP does).
    pub fn reload(&self) {
        let _ = self.reload.send(());
    }

    /// Stops accepting, lets in-flight connections finish up to the drain timeout.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.done.await;
    }
}

struct Upstream {
    authority: Authority,
    addr: String,
    scheme: &'static str,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    )>,
}

fn upstream_parts(cfg: &ListenerConfig, now: OffsetDateTime) -> Result<Upstream, Error> {
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
    let tls = if scheme == "https" {
        let mut roots = Vec::new();
        for p in &cfg.upstream_ca {
            let bytes = mtls_pki::files::read_public(p).map_err(|e| Error::Load(e.to_string()))?;
            roots.extend(
                mtls_pki::pem_io::certificates(&bytes)
                    .map_err(|e| Error::Load(format!("{}: {e}", p.display())))?,
            );
        }
        let cred = match &cfg.upstream_certificate {
            Some(c) => Some(
                mtls_tls::load_credential(&c.cert, &c.key, None, now)
                    .map_err(|e| Error::Load(e.to_string()))?,
            ),
            None => None,
        };
        let config = mtls_tls::client_config(&roots, cred.as_ref(), &[b"http/1.1"])
            .map_err(|e| Error::Load(e.to_string()))?;
        let name = cfg
            .upstream_server_name
            .clone()
            .unwrap_or_else(|| authority.host().trim_matches(['[', ']']).to_string());
        let name = rustls_pki_types::ServerName::try_from(name)
            .map_err(|_| bad("invalid upstream server name"))?;
        Some((Arc::new(config), name))
    } else {
        None
    };
    Ok(Upstream {
        authority,
        addr: hostport.to_string(),
        scheme: if scheme == "https" { "https" } else { "http" },
        tls,
    })
}

/// Fingerprint of the watched files (follows symlinks, as Kubernetes swaps them).
fn file_stamps(files: &[PathBuf]) -> Vec<Option<(std::time::SystemTime, u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| {
                (
                    m.modified().unwrap_or(std::time::UNIX_EPOCH),
                    m.len(),
                    m.ino(),
                )
            })
        })
        .collect()
}

/// Binds every listener and starts serving.
pub async fn start(config: GatewayConfig, config_path: Option<PathBuf>) -> Result<Running, Error> {
    config.validate()?;
    let metrics = Arc::new(Metrics::default());
    let now = OffsetDateTime::now_utc();
    let mut shared_all = Vec::new();
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    // A CRL that is fetched must be there before the first load: fetch it now, failing the
    // start only if there is no previous copy either.
    for cfg in &config.listeners {
        for f in &cfg.crl_fetch {
            if let Err(e) = crate::crl_fetch::fetch_once(f, &cfg.client_ca).await {
                if !f.file.exists() {
                    return Err(e);
                }
                tracing::warn!(url = %f.url, error = %e, "CRL fetch failed; using the file on disk");
            }
        }
    }
    for cfg in &config.listeners {
        let state = ListenerState::load(cfg, 1, now)?;
        let upstream = upstream_parts(cfg, now)?;
        let strip_headers = cfg
            .strip_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| Error::Config(format!("invalid header name {h:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| Error::Io(format!("binding {}: {e}", cfg.listen)))?;
        addrs.push(
            listener
                .local_addr()
                .map_err(|e| Error::Io(e.to_string()))?,
        );
        shared_all.push(Arc::new(Shared {
            name: Arc::from(cfg.name.as_str()),
            mode: cfg.mode,
            cfg: ArcSwap::from_pointee(cfg.clone()),
            state: ArcSwap::from_pointee(state),
            metrics: metrics.clone(),
            limits: config.limits.clone(),
            client: gw_http::upstream_client(config.limits.upstream_timeout, upstream.tls),
            upstream_authority: upstream.authority,
            upstream_addr: upstream.addr,
            upstream_scheme: upstream.scheme,
            strip_headers,
            access_log: config.access_log,
            generation: watch::channel(1).0,
        }));
        listeners.push(listener);
    }
    let admin = match config.admin_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|e| Error::Io(format!("binding admin {a}: {e}")))?,
        ),
        None => None,
    };
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let conns = Arc::new(Semaphore::new(config.limits.max_connections));
    let mut tasks = Vec::new();
    for (shared, listener) in shared_all.iter().cloned().zip(listeners) {
        tasks.push(tokio::spawn(accept_loop(
            shared,
            listener,
            conns.clone(),
            shutdown_rx.clone(),
        )));
    }
    if let Some(admin) = admin {
        tasks.push(tokio::spawn(admin_loop(
            admin,
            shared_all.clone(),
            metrics.clone(),
            shutdown_rx.clone(),
        )));
    }
    for cfg in &config.listeners {
        for f in &cfg.crl_fetch {
            tasks.push(tokio::spawn(crate::crl_fetch::fetch_loop(
                f.clone(),
                cfg.client_ca.clone(),
                metrics.clone(),
            )));
        }
    }
    tokio::spawn(reload_loop(
        config.clone(),
        config_path,
        shared_all.clone(),
        metrics.clone(),
        reload_rx,
        shutdown_rx.clone(),
    ));
    let drain = config.limits.drain_timeout;
    let max = u32::try_from(config.limits.max_connections).unwrap_or(u32::MAX);
    let done = tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
        // All accept loops have stopped: wait for connections to finish, up to the deadline.
        let _ = tokio::time::timeout(drain, conns.acquire_many(max)).await;
    });
    Ok(Running {
        addrs,
        admin_addr,
        shutdown: shutdown_tx,
        reload: reload_tx,
        done,
        metrics,
    })
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    conns: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            shared
                .metrics
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        // One task per connection: a slow handshake never blocks the accept loop.
        tokio::spawn(async move {
            shared
                .metrics
                .active_connections
                .fetch_add(1, Ordering::Relaxed);
            // The permit lives as long as the connection, including a WebSocket tunnel that
            // outlives the HTTP connection it was upgraded from.
            handle_connection(shared.clone(), tcp, remote, shutdown, Arc::new(permit)).await;
            shared
                .metrics
                .active_connections
                .fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn handshake_reason(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::NoCertificatesPresented) => "no_certificate".into(),
        // The variant name only: some variants carry bytes from the client's certificate,
        // and metric labels must come from a fixed set.
        Some(rustls::Error::InvalidCertificate(c)) => format!("{c:?}")
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .take(48)
            .collect::<String>()
            .to_ascii_lowercase(),
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible".into(),
        Some(_) => "tls_error".into(),
        None => "io_error".into(),
    }
}

async fn handle_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    remote: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
) {
    let handshake_state = shared.state.load_full();
    let acceptor = tokio_rustls::TlsAcceptor::from(handshake_state.tls.clone());
    let tls =
        match tokio::time::timeout(shared.limits.handshake_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let reason = handshake_reason(&e);
                tracing::info!(%remote, listener = %shared.name, %reason, "handshake failed");
                shared.metrics.handshake(&shared.name, "failed", &reason);
                return;
            }
            Err(_) => {
                shared.metrics.handshake(&shared.name, "timeout", "");
                return;
            }
        };
    let (_, server_conn) = tls.get_ref();
    let chain: Option<Vec<CertificateDer<'static>>> = server_conn
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
    let sni = server_conn.server_name().map(str::to_string);
    // Re-check the identity against the *current* state: covers resumed sessions (which skip
    // the verifier) and reloads that happened during the handshake.
    let state = shared.state.load_full();
    let identity = state.verify_peer(chain.as_deref());
    match &identity {
        Ok(_) => shared.metrics.handshake(&shared.name, "ok", ""),
        Err(r) => shared.metrics.handshake(&shared.name, "rejected", r.code()),
    }
    match shared.mode {
        Mode::Tcp => tcp_proxy(shared, tls, remote, identity, state, chain).await,
        Mode::Http => {
            let idle = if identity.is_ok() {
                shared.limits.idle_timeout
            } else {
                shared.limits.header_read_timeout
            };
            let conn = Arc::new(Conn::new(
                shared.clone(),
                chain,
                sni,
                remote,
                state.generation,
                identity,
                permit,
            ));
            let service = service_fn(move |req| gw_http::handle(conn.clone(), req));
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(shared.limits.header_read_timeout)
                .max_buf_size(shared.limits.max_header_bytes);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_header_list_size(
                    u32::try_from(shared.limits.max_header_bytes).unwrap_or(u32::MAX),
                );
            let serving = builder.serve_connection_with_upgrades(
                TokioIo::new(mtls_tls::IdleTimeout::new(tls, idle)),
                service,
            );
            tokio::pin!(serving);
            tokio::select! {
                r = serving.as_mut() => { if let Err(e) = r { tracing::debug!(error = %e, "connection ended with error"); } }
                _ = shutdown.changed() => {
                    serving.as_mut().graceful_shutdown();
                    let _ = serving.await;
                }
            }
        }
    }
}

async fn tcp_proxy(
    shared: Arc<Shared>,
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
    remote: SocketAddr,
    identity: Result<Arc<mtls_verify::VerifiedPeer>, Rejection>,
    state: Arc<ListenerState>,
    chain: Option<Vec<CertificateDer<'static>>>,
) {
    let peer = match identity {
        Ok(p) => p,
        Err(r) => {
            tracing::warn!(%remote, listener = %shared.name, reason = %r, "connection rejected");
            let _ = tls.shutdown().await;
            return;
        }
    };
    if let Err(reason) = state.policy.check(&peer) {
        shared
            .metrics
            .handshake(&shared.name, "denied", "not_allowed");
        tracing::warn!(%remote, listener = %shared.name, %reason, cn = ?peer.common_name, "connection denied by policy");
        let _ = tls.shutdown().await;
        return;
    }
    let connect = tokio::time::timeout(
        shared.limits.upstream_timeout,
        TcpStream::connect(&shared.upstream_addr),
    )
    .await;
    let mut up = match connect {
        Ok(Ok(s)) => s,
        _ => {
            shared
                .metrics
                .upstream_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(upstream = %shared.upstream_addr, "upstream connect failed");
            return;
        }
    };
    let _ = up.set_nodelay(true);
    let proxy_protocol = shared.cfg.load().proxy_protocol;
    if proxy_protocol {
        let local = up.local_addr().ok();
        let header = crate::proxy_protocol::v2_header(remote, local.unwrap_or(remote), &peer);
        if up.write_all(&header).await.is_err() {
            return;
        }
    }
    if shared.access_log {
        crate::access_log(
            &serde_json::json!({"ts": OffsetDateTime::now_utc().unix_timestamp(), "listener": &*shared.name,
                "remote": remote.to_string(), "event": "tcp_connect", "cn": peer.common_name, "serial": peer.serial,
                "fingerprint": peer.cert_sha256}),
        );
    }
    // Copy until either side closes, or until a reload no longer trusts or allows this client
    // (a revoked client must not keep a database connection open for days).
    // Checked against the state verified at the handshake, so a reload during the upstream
    // connect is not missed.
    let still_allowed = until_refused(&shared, state.generation, |current| {
        current
            .verify_peer(chain.as_deref())
            .map_err(|r| r.to_string())
            .and_then(|p| current.policy.check(&p))
    });
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut tls, &mut up) => {}
        reason = still_allowed => {
            tracing::warn!(%remote, listener = %shared.name, %reason, "closing connection after reload");
            let _ = tls.shutdown().await;
        }
    }
}

/// How often a long-lived connection (TCP mode, WebSocket tunnel) is re-checked without a
/// reload: certificates and CRLs expire.
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Resolves with the reason once `verdict` refuses a connection's client under the current
/// state: at once if the state changed since generation `checked`, then after every reload and
/// every [`RECHECK_EVERY`]. Never resolves while the client stays allowed.
pub(crate) async fn until_refused(
    shared: &Shared,
    checked: u64,
    verdict: impl Fn(&ListenerState) -> Result<(), String>,
) -> String {
    let mut generations = shared.generation.subscribe();
    if *generations.borrow_and_update() != checked {
        generations.mark_changed();
    }
    loop {
        tokio::select! {
            r = generations.changed() => {
                if r.is_err() {
                    // Shutting down: the drain ends the connection.
                    return std::future::pending().await;
                }
            }
            _ = tokio::time::sleep(RECHECK_EVERY) => {}
        }
        if let Err(reason) = verdict(&shared.state.load_full()) {
            return reason;
        }
    }
}

async fn admin_loop(
    listener: TcpListener,
    shared: Vec<Arc<Shared>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    // Out of descriptors, typically: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let shared = shared.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let shared = shared.clone();
                let metrics = metrics.clone();
                async move {
                    let (status, body) = match req.uri().path() {
                        "/healthz" => (200, "ok\n".to_string()),
                        "/metrics" => (200, render_metrics(&metrics, &shared)),
                        _ => (404, "not found\n".to_string()),
                    };
                    let mut r =
                        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    *r.status_mut() =
                        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn render_metrics(metrics: &Metrics, shared: &[Arc<Shared>]) -> String {
    let mut served = Vec::new();
    let mut cas = Vec::new();
    let mut crls = Vec::new();
    for s in shared {
        let st = s.state.load();
        for (file, t) in &st.served_not_after {
            served.push((
                vec![("listener", s.name.to_string()), ("cert", file.clone())],
                t.unix_timestamp() as f64,
            ));
        }
        for (subject, t) in &st.ca_not_after {
            cas.push((
                vec![("listener", s.name.to_string()), ("ca", subject.clone())],
                t.unix_timestamp() as f64,
            ));
        }
        for c in st.trust.crl_summaries() {
            if let Some(n) = c.next_update {
                crls.push((
                    vec![
                        ("listener", s.name.to_string()),
                        ("issuer", c.issuer.clone()),
                    ],
                    n.unix_timestamp() as f64,
                ));
            }
        }
    }
    metrics.render(&[
        ("mtls_served_certificate_not_after_seconds".into(), served),
        ("mtls_client_ca_not_after_seconds".into(), cas),
        ("mtls_crl_next_update_seconds".into(), crls),
    ])
}

async fn reload_loop(
    mut config: GatewayConfig,
    config_path: Option<PathBuf>,
    shared: Vec<Arc<Shared>>,
    metrics: Arc<Metrics>,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let watched = |c: &GatewayConfig| {
        let mut f = c.watched_files();
        if let Some(p) = &config_path {
            f.push(p.clone());
        }
        f
    };
    let mut files = watched(&config);
    let mut stamps = file_stamps(&files);
    let mut generation = 1u64;
    loop {
        let hup_fut = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(config.limits.reload_poll) => {
                let now = file_stamps(&files);
                if now == stamps { continue; }
            }
            _ = hup_fut => {}
            r = requests.recv() => { if r.is_none() { return; } }
            _ = shutdown.changed() => return,
        }
        generation += 1;
        // Re-read the configuration file, if any (policy changes); listen addresses and modes
        // cannot change without a restart.
        let candidate = match &config_path {
            Some(p) => match GatewayConfig::from_file(p) {
                Ok(c)
                    if c.listeners.len() == config.listeners.len()
                        && c.listeners
                            .iter()
                            .zip(&config.listeners)
                            .all(|(a, b)| a.listen == b.listen && a.mode == b.mode) =>
                {
                    Ok(c)
                }
                Ok(_) => Err(Error::Config(
                    "listeners, addresses or modes changed: restart to apply".into(),
                )),
                Err(e) => Err(e),
            },
            None => Ok(config.clone()),
        };
        let now = OffsetDateTime::now_utc();
        let loaded = candidate.and_then(|c| {
            let states = c
                .listeners
                .iter()
                .map(|l| ListenerState::load(l, generation, now))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((c, states))
        });
        match loaded {
            Ok((c, states)) => {
                for ((s, st), lc) in shared.iter().zip(states).zip(&c.listeners) {
                    s.state.store(Arc::new(st));
                    s.cfg.store(Arc::new(lc.clone()));
                    s.generation.send_replace(generation);
                }
                metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(generation, "reloaded certificates, CAs, CRLs and policy");
                config = c;
            }
            Err(e) => {
                metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "reload failed; keeping the last good configuration");
            }
        }
        files = watched(&config);
        stamps = file_stamps(&files);
    }
}
