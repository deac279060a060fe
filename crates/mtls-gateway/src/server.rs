//! Listeners, connections, reloads, the admin endpoint and draining, on the serving core
//! (`mtls-serve`): its accept loop, handshakes, reload loop, identity re-checks and metrics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use mtls_serve::accept::{self, Shutdown, Slot, Slots};
use mtls_serve::metrics::{Kind, Registry, Scraped, Unit};
use mtls_serve::recheck::{self, Generations};
use mtls_serve::reload::{Reload, ReloadHandle, ReloadOptions};
use mtls_verify::{Rejection, RevocationSources};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::config::{GatewayConfig, Limits, Mode};
use crate::http::{self as gw_http, Conn};
use crate::metrics::Metrics;
use crate::state::ListenerState;
use crate::Error;

/// What every connection of a listener shares.
pub struct Shared {
    pub name: Arc<str>,
    pub mode: Mode,
    pub state: ArcSwap<ListenerState>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub access_log: bool,
    /// Announces each successful reload; open connections re-check on it.
    pub generations: Generations,
    /// Refusal log lines of this listener, rate-limited.
    pub refusals: mtls_serve::refusals::RefusalLog,
    /// Clients connecting with certificates whose renewal is overdue.
    pub overdue: mtls_serve::expiring::OverdueClients,
    /// The HTTP connection builder (limits and timers), made once, not per connection.
    pub http: mtls_serve::http::Http,
    /// Revocation sources kept across reloads: the CA's feed (`[listener.revocation_feed]`),
    /// OCSP (`[listener.ocsp]`).
    pub sources: RevocationSources,
    /// The feed subscriber's counters.
    pub feed_stats: Option<Arc<mtls_client::feed::FeedStats>>,
    /// The OCSP checker's counters.
    pub ocsp_stats: Option<Arc<mtls_client::ocsp_check::OcspStats>>,
    /// The OCSP checker (its cache, for metrics).
    pub ocsp: Option<Arc<mtls_client::ocsp_check::OcspChecker>>,
    /// Requests in flight upstream, shared by every listener (`limits.max_upstream_requests`).
    pub upstream_slots: Arc<tokio::sync::Semaphore>,
}

/// A started gateway.
pub struct Running {
    /// Bound address of each listener, in configuration order.
    pub addrs: Vec<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    shutdown: mtls_serve::ShutdownTrigger,
    reload: ReloadHandle,
    done: tokio::task::JoinHandle<()>,
    pub metrics: Arc<Metrics>,
}

impl Running {
    /// Asks for a reload (as SIGHUP does).
    pub fn reload(&self) {
        self.reload.reload();
    }

    /// Stops accepting, lets in-flight connections finish up to the drain timeout.
    pub async fn shutdown(self) {
        self.shutdown.trigger();
        let _ = self.done.await;
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), Error> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Io(format!("binding {addr}: {e}")))?;
    let bound = l.local_addr().map_err(|e| Error::Io(e.to_string()))?;
    Ok((l, bound))
}

/// Binds every listener and starts serving.
pub async fn start(config: GatewayConfig, config_path: Option<PathBuf>) -> Result<Running, Error> {
    config.validate()?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let now = OffsetDateTime::now_utc();
    // A CRL that is fetched must be there before the first load: fetch it now, failing the
    // start only if there is no previous copy either.
    let mut first_fetches = Vec::new();
    for cfg in &config.listeners {
        for f in &cfg.crl_fetch {
            let first = match crate::crl_fetch::fetch_once(f, &cfg.client_ca).await {
                Err(e) if !f.file.exists() => return Err(e),
                first => first,
            };
            if let Err(e) = &first {
                tracing::warn!(url = %f.url, error = %e, "CRL fetch failed; using the file on disk");
            }
            first_fetches.push(first);
        }
    }
    let upstream_slots = Arc::new(tokio::sync::Semaphore::new(
        config
            .limits
            .max_upstream_requests
            .min(tokio::sync::Semaphore::MAX_PERMITS),
    ));
    let mut shared_all = Vec::new();
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    let mut source_tasks = Vec::new();
    for cfg in &config.listeners {
        let mut sources = crate::revocation::Sources::build(cfg).await?;
        source_tasks.push(sources.take_tasks());
        let ocsp = sources.ocsp_checker();
        let crate::revocation::Sources {
            sources,
            feed_stats,
            ocsp_stats,
            ..
        } = sources;
        let state =
            ListenerState::load(cfg, config.limits.upstream_timeout, 1, now, &sources, None)?;
        let (listener, bound) = bind(cfg.listen).await?;
        addrs.push(bound);
        shared_all.push(Arc::new(Shared {
            name: Arc::from(cfg.name.as_str()),
            mode: cfg.mode,
            state: ArcSwap::from_pointee(state),
            metrics: metrics.clone(),
            limits: config.limits.clone(),
            access_log: config.access_log,
            generations: Generations::new(1),
            refusals: Default::default(),
            overdue: mtls_serve::expiring::OverdueClients::new(
                mtls_client::renewal::default_overdue_after,
            ),
            http: mtls_serve::http::builder(&mtls_serve::http::HttpLimits {
                header_read_timeout: config.limits.header_read_timeout,
                max_header_bytes: config.limits.max_header_bytes,
            }),
            sources,
            feed_stats,
            ocsp_stats,
            ocsp,
            upstream_slots: upstream_slots.clone(),
        }));
        listeners.push(listener);
    }
    register_expiry(&mut registry, &shared_all);
    crate::revocation::register_metrics(&mut registry, &shared_all);
    {
        let all = shared_all.clone();
        mtls_serve::metrics::Scraped::register(
            &mut registry,
            "mtls_refusals",
            "Refused handshakes, connections and requests by listener and reason code (the code of the log line, the 403 body and /debug/refusals)",
            None,
            mtls_serve::metrics::Kind::Counter,
            move || {
                all.iter()
                    .flat_map(|s| {
                        s.refusals.counts().into_iter().map(|(reason, n)| {
                            (
                                vec![("listener", s.name.to_string()), ("reason", reason)],
                                n as f64,
                            )
                        })
                    })
                    .collect()
            },
        );
    }
    let admin = match config.admin_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let admin_addr = admin.as_ref().map(|(_, a)| *a);
    let (stop, shutdown) = mtls_serve::shutdown();
    let mut slots = Slots::new(config.limits.max_connections)
        .count_refused(metrics.connections_refused.clone());
    if let Some(n) = config.limits.max_connections_per_source {
        slots = slots.per_source(n);
    }
    let mut tasks = Vec::new();
    for (shared, listener) in shared_all.iter().cloned().zip(listeners) {
        let sd = shutdown.clone();
        tasks.push(tokio::spawn(accept::accept_loop(
            listener,
            slots.clone(),
            shutdown.clone(),
            move |tcp, remote, slot| {
                handle_connection(shared.clone(), tcp, remote, sd.clone(), Arc::new(slot))
            },
        )));
    }
    if let Some((admin, _)) = admin {
        let all = shared_all.clone();
        let refusals = mtls_serve::http::AdminPage {
            path: "/debug/refusals",
            content_type: "application/json",
            // The last refusals of every listener, oldest first: who, why, when. No keys,
            // no request bodies or headers.
            render: Arc::new(move || {
                let mut recent: Vec<_> = all.iter().flat_map(|s| s.refusals.recent()).collect();
                recent.sort_by(|a, b| a.at.cmp(&b.at));
                serde_json::json!({ "refusals": recent }).to_string()
            }),
        };
        tasks.push(tokio::spawn(mtls_serve::http::serve_admin(
            admin,
            Arc::new(registry),
            vec![refusals],
            shutdown.clone(),
        )));
    }
    for (shared, cfg) in shared_all.iter().zip(&config.listeners) {
        if cfg.ocsp_stapling {
            let shared = shared.clone();
            tasks.push(tokio::spawn(mtls_client::ocsp::staple(
                move || shared.state.load().server.certificates.clone(),
                shutdown.clone(),
            )));
        }
    }
    let fetches = config
        .listeners
        .iter()
        .flat_map(|cfg| cfg.crl_fetch.iter().map(move |f| (cfg, f)));
    for ((cfg, f), first) in fetches.zip(first_fetches) {
        let (f, client_ca, metrics, shutdown) = (
            f.clone(),
            cfg.client_ca.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        tasks.push(tokio::spawn(async move {
            crate::crl_fetch::fetch_loop(f, client_ca, metrics, shutdown, &first).await
        }));
    }
    let reload = mtls_serve::reload::spawn(
        GatewayReload {
            config: config.clone(),
            config_path,
            shared: shared_all.clone(),
            generation: 1,
        },
        ReloadOptions {
            poll: config.limits.reload_poll,
            on_sighup: true,
            counters: metrics.reloads.clone(),
            ..ReloadOptions::default()
        },
        shutdown.clone(),
    );
    for ((shared, cfg), t) in shared_all.iter().zip(&config.listeners).zip(source_tasks) {
        tasks.extend(crate::revocation::spawn(
            shared,
            t,
            cfg.client_ca.clone(),
            &reload,
            &shutdown,
        ));
    }
    let drain = config.limits.drain_timeout;
    let done = tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
        // All accept loops have stopped: wait for connections to finish, up to the deadline.
        slots.drain(drain).await;
    });
    Ok(Running {
        addrs,
        admin_addr,
        shutdown: stop,
        reload,
        done,
        metrics,
    })
}

/// Expiry gauges, read from the listener states at scrape time.
fn register_expiry(registry: &mut Registry, shared: &[Arc<Shared>]) {
    type Pick = fn(&Shared, &ListenerState) -> Vec<(mtls_serve::metrics::Labels, f64)>;
    let families: [(&'static str, &'static str, Pick); 3] = [
        (
            "mtls_served_certificate_not_after",
            "notAfter of each served certificate",
            |s, st| {
                st.server
                    .served_not_after
                    .iter()
                    .map(|(file, t)| {
                        (
                            vec![("listener", s.name.to_string()), ("cert", file.clone())],
                            t.unix_timestamp() as f64,
                        )
                    })
                    .collect()
            },
        ),
        (
            "mtls_client_ca_not_after",
            "notAfter of each trusted client CA",
            |s, st| {
                st.server
                    .ca_not_after
                    .iter()
                    .map(|(subject, t)| {
                        (
                            vec![("listener", s.name.to_string()), ("ca", subject.clone())],
                            t.unix_timestamp() as f64,
                        )
                    })
                    .collect()
            },
        ),
        (
            "mtls_crl_next_update",
            "nextUpdate of each loaded CRL",
            |s, st| {
                st.trust()
                    .crl_summaries()
                    .iter()
                    .filter_map(|c| {
                        c.next_update.map(|n| {
                            (
                                vec![
                                    ("listener", s.name.to_string()),
                                    ("issuer", c.issuer.clone()),
                                ],
                                n.unix_timestamp() as f64,
                            )
                        })
                    })
                    .collect()
            },
        ),
    ];
    {
        let shared = shared.to_vec();
        Scraped::register(
            registry,
            "mtls_client_certificate_not_after",
            "notAfter of client certificates that connected within the last day in the last \
             tenth of their validity (their renewal is overdue)",
            Some(Unit::Seconds),
            Kind::Gauge,
            move || {
                let now = time::OffsetDateTime::now_utc();
                shared
                    .iter()
                    .flat_map(|s| {
                        s.overdue.recent(now).into_iter().map(|e| {
                            (
                                vec![
                                    ("listener", s.name.to_string()),
                                    ("subject", e.subject),
                                    ("serial", e.serial),
                                ],
                                e.not_after.unix_timestamp() as f64,
                            )
                        })
                    })
                    .collect()
            },
        );
    }
    for (name, help, pick) in families {
        let shared = shared.to_vec();
        Scraped::register(
            registry,
            name,
            help,
            Some(Unit::Seconds),
            Kind::Gauge,
            move || {
                shared
                    .iter()
                    .flat_map(|s| pick(s, &s.state.load()))
                    .collect()
            },
        );
    }
    let pools = |shared: &[Arc<Shared>], count: fn(&crate::http::UpstreamPool) -> f64| {
        let shared = shared.to_vec();
        move || {
            shared
                .iter()
                .map(|s| {
                    let labels = vec![("listener", s.name.to_string())];
                    (labels, count(&s.state.load().upstream.pool))
                })
                .collect()
        }
    };
    // Per listener state: a reload that builds a new pool starts these again.
    Scraped::register(
        registry,
        "mtls_upstream_connections_opened",
        "Connections opened to the upstream (HTTP mode; kept alive and reused)",
        None,
        Kind::Counter,
        pools(shared, |p| p.connections_opened() as f64),
    );
    Scraped::register(
        registry,
        "mtls_upstream_idle_connections",
        "Upstream connections idle in the keep-alive pool",
        None,
        Kind::Gauge,
        pools(shared, |p| p.idle_connections() as f64),
    );
}

async fn handle_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    remote: SocketAddr,
    shutdown: Shutdown,
    slot: Arc<Slot>,
) {
    shared.metrics.active_connections.inc();
    let _active = ActiveGuard(shared.clone());
    // This task lives as long as the connection, idle keep-alive ones too, and its future is
    // as large as its largest state: the handshake (several KiB, over by now) and the serving
    // future are boxed, and the TLS stream is handed on without being kept here, so an idle
    // connection's task holds two pointers.
    // Only the TLS configuration: a state kept here would stay alive (CRLs and all) as long
    // as the connection, across reloads.
    let config = shared.state.load().server.tls.clone();
    let serving = match Box::pin(accept::handshake(
        config,
        tcp,
        shared.limits.handshake_timeout,
    ))
    .await
    {
        Ok(tls) => serve_tls(&shared, tls, remote, shutdown, slot),
        Err(e) => {
            let (result, reason) = shared.refusals.handshake_failed(&shared.name, remote, &e);
            shared
                .metrics
                .handshake_failed(&shared.name, result, &reason);
            return;
        }
    };
    serving.await;
}

/// What follows a completed handshake: the identity check and the TCP tunnel or HTTP serving,
/// as one boxed future (see [`handle_connection`]).
fn serve_tls(
    shared: &Arc<Shared>,
    tls: accept::TlsConnection,
    remote: SocketAddr,
    shutdown: Shutdown,
    slot: Arc<Slot>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    let shared = shared.clone();
    let sni = tls.get_ref().1.server_name().map(str::to_string);
    // Re-check the identity against the *current* state: covers resumed sessions (which skip
    // the verifier) and reloads that happened during the handshake.
    let state = shared.state.load_full();
    let identity = gw_http::ConnIdentity::new(
        accept::peer_chain(&tls),
        state.trust(),
        crate::identity::IdentityHeaders::shared,
    );
    let verdict = identity.current(state.trust());
    match &verdict {
        Ok((peer, _)) => {
            shared.metrics.handshake(&shared.name, "ok", "");
            shared
                .overdue
                .note(&shared.name, peer, time::OffsetDateTime::now_utc());
        }
        Err(r) => shared.metrics.handshake(&shared.name, "rejected", r.code()),
    }
    match shared.mode {
        Mode::Tcp => Box::pin(tcp_proxy(
            shared,
            tls,
            remote,
            verdict.map(|(p, _)| p),
            state,
            identity,
            slot,
        )),
        Mode::Http => {
            let idle = if verdict.is_ok() {
                shared.limits.idle_timeout
            } else {
                shared.limits.header_read_timeout
            };
            let conn = Arc::new(Conn::new(shared.clone(), identity, sni, remote, slot));
            // A client admitted now and refused later (revoked, its CA removed) loses the
            // connection at once, idle keep-alive and h2 connections included, not at its next
            // request. Anonymous connections (optional mode) are refused per request anyway.
            let watched = conn.clone();
            let admitted = verdict.is_ok();
            let cut = async move {
                if !admitted {
                    return std::future::pending().await;
                }
                let reason = watched.untrusted().await;
                tracing::warn!(listener = %watched.shared.name, remote = %watched.remote, %reason, "closing connection: the client is no longer trusted");
            };
            // Boxed: hyper keeps a slot the size of the service's future for every connection,
            // idle ones too; the proxying future is several KiB, a box is a pointer.
            let service = service_fn(move |req| Box::pin(gw_http::handle(conn.clone(), req)));
            Box::pin(mtls_serve::http::serve_connection_until(
                HttpOf(shared),
                mtls_tls::IdleTimeout::new(tls, idle),
                service,
                shutdown,
                cut,
            ))
        }
    }
}

/// A listener's HTTP builders, held through its [`Shared`] by the connection's own future.
struct HttpOf(Arc<Shared>);

impl std::ops::Deref for HttpOf {
    type Target = mtls_serve::http::Http;

    fn deref(&self) -> &Self::Target {
        &self.0.http
    }
}

/// Decrements the active-connection gauge when the connection task ends, however it ends.
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.metrics.active_connections.dec();
    }
}

/// How long a closing TCP-mode connection may take to say goodbye (close_notify) to a client
/// that does not read: past it, the socket is dropped.
const TCP_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// TCP keepalive on both sides of a TCP-mode tunnel (which may stay silent for days): a peer
/// gone without a FIN (a crashed host, a dropped NAT entry) is noticed within about three
/// minutes, and both sockets are closed, rather than held for ever.
fn keep_alive(stream: &TcpStream) {
    let params = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(120))
        .with_interval(std::time::Duration::from_secs(15));
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&params);
}

/// Ends a TCP-mode client connection: close_notify, bounded (a client that stopped reading
/// would hold it for ever).
async fn close_tls(tls: &mut accept::TlsConnection) {
    let _ = tokio::time::timeout(TCP_CLOSE_TIMEOUT, tls.shutdown()).await;
}

#[allow(clippy::too_many_arguments)]
async fn tcp_proxy(
    shared: Arc<Shared>,
    mut tls: accept::TlsConnection,
    remote: SocketAddr,
    verdict: Result<Arc<mtls_verify::VerifiedPeer>, Rejection>,
    state: Arc<ListenerState>,
    identity: gw_http::ConnIdentity,
    // The connection's place under max_connections (and per source), held for the tunnel's
    // life: limits and the shutdown drain count tunnels as they count HTTP connections.
    slot: Arc<Slot>,
) {
    let _slot = slot;
    keep_alive(tls.get_ref().0.get_ref());
    let peer = match verdict {
        Ok(p) => p,
        Err(r) => {
            shared.refusals.report(mtls_serve::refusals::Refusal {
                listener: shared.name.to_string(),
                remote: remote.to_string(),
                reason: r.code().to_string(),
                detail: Some(r.to_string()),
                stage: "connection",
                ..Default::default()
            });
            close_tls(&mut tls).await;
            return;
        }
    };
    if let Err(reason) = state.policy.check(&peer) {
        shared
            .metrics
            .handshake(&shared.name, "denied", "not_allowed");
        shared.refusals.report(mtls_serve::refusals::Refusal {
            listener: shared.name.to_string(),
            remote: remote.to_string(),
            reason: "not_allowed".into(),
            detail: Some(reason),
            stage: "connection",
            subject: Some(peer.subject().to_string()),
            serial: Some(peer.serial().to_string()),
            fingerprint: Some(peer.fingerprint().to_string()),
            ..Default::default()
        });
        close_tls(&mut tls).await;
        return;
    }
    let connect = tokio::time::timeout(
        shared.limits.upstream_timeout,
        TcpStream::connect(&state.upstream.addr),
    )
    .await;
    let mut up = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.metrics.upstream_errors.inc();
            tracing::warn!(upstream = %state.upstream.addr, error = %e, "upstream connect failed");
            return;
        }
        Err(_) => {
            shared.metrics.upstream_errors.inc();
            tracing::warn!(upstream = %state.upstream.addr, "upstream connect timed out");
            return;
        }
    };
    let _ = up.set_nodelay(true);
    keep_alive(&up);
    if state.proxy_protocol {
        // The destination is the address the client connected to (the listener), as for
        // every PROXY protocol sender, not this end of the upstream connection.
        let local = tls.get_ref().0.get_ref().local_addr().ok();
        let header = crate::proxy_protocol::v2_header(remote, local.unwrap_or(remote), &peer);
        if up.write_all(&header).await.is_err() {
            return;
        }
    }
    if shared.access_log {
        crate::access_log(
            &serde_json::json!({"ts": OffsetDateTime::now_utc().unix_timestamp(), "listener": &*shared.name,
                "remote": remote.to_string(), "event": "tcp_connect", "cn": peer.common_name(), "serial": peer.serial().to_string(),
                "fingerprint": peer.fingerprint().to_string()}),
        );
    }
    // Copy until either side closes, or until a reload (or expiry) no longer trusts or allows
    // this client: a revoked client must not keep a database connection open for days. Checked
    // against the state verified at the handshake, so a reload during the upstream connect is
    // not missed.
    let still_allowed = recheck::until_refused(&shared.generations, state.generation, || {
        let current = shared.state.load_full();
        identity
            .current(current.trust())
            .map_err(|r| r.to_string())
            .and_then(|(p, _)| current.policy.check(&p))
    });
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut tls, &mut up) => {}
        reason = still_allowed => {
            tracing::warn!(%remote, listener = %shared.name, %reason, "closing connection after reload or expiry: the client is no longer allowed");
            // The upstream first: it must not wait on a client that stopped reading.
            drop(up);
            close_tls(&mut tls).await;
        }
    }
}

/// The gateway's reload: the configuration file (if any) and every file it names, each
/// listener's state built and swapped on its own.
struct GatewayReload {
    config: GatewayConfig,
    config_path: Option<PathBuf>,
    shared: Vec<Arc<Shared>>,
    generation: u64,
}

impl Reload for GatewayReload {
    fn watched(&self) -> Vec<PathBuf> {
        let mut f = self.config.watched_files();
        f.extend(self.config_path.clone());
        f
    }

    fn reload(&mut self) -> Result<String, String> {
        self.generation += 1;
        let generation = self.generation;
        // Re-read the configuration file, if any; listen addresses and modes cannot change
        // without a restart (everything else, the upstream included, can).
        let candidate = match &self.config_path {
            Some(p) => {
                let c = GatewayConfig::from_file(p).map_err(|e| e.to_string())?;
                let same_sockets = c.listeners.len() == self.config.listeners.len()
                    && c.listeners
                        .iter()
                        .zip(&self.config.listeners)
                        .all(|(a, b)| {
                            a.listen == b.listen
                                && a.mode == b.mode
                                && a.name == b.name
                                && a.revocation_feed == b.revocation_feed
                                && a.ocsp == b.ocsp
                                && a.crl_from_certificates == b.crl_from_certificates
                        });
                if !same_sockets {
                    return Err(
                        "listeners, their names, addresses, modes or revocation sources (feed, OCSP, crl_from_certificates) changed: restart to apply"
                            .into(),
                    );
                }
                c
            }
            None => self.config.clone(),
        };
        let now = OffsetDateTime::now_utc();
        // Each listener on its own: one whose files are mid-rotation or refused (a CRL rolled
        // back) must not hold back another's new CRL or certificate; it keeps its last good
        // state and the reload reports it (retried on the next change or poll).
        let mut changed_upstreams = Vec::new();
        let mut failed = Vec::new();
        let mut partly = Vec::new();
        for (i, (s, new)) in self.shared.iter().zip(&candidate.listeners).enumerate() {
            let loaded = ListenerState::load(
                new,
                candidate.limits.upstream_timeout,
                generation,
                now,
                &s.sources,
                Some(&s.state.load()),
            );
            let st = match loaded {
                Ok(st) => st,
                Err(e) => {
                    failed.push(format!("{}: {e}", new.name));
                    continue;
                }
            };
            let config_unchanged =
                self.config.listeners.get(i) == Some(new) && self.config.limits == candidate.limits;
            if let Some(old) = self.config.listeners.get_mut(i) {
                if old.upstream != new.upstream {
                    changed_upstreams.push(format!(
                        "{}: {} -> {}",
                        new.name, old.upstream, new.upstream
                    ));
                }
                *old = new.clone();
            }
            // New CAs and CRLs with a previous certificate kept: in use, and reported.
            if !st.server.kept.is_empty() {
                partly.push(format!(
                    "{}: reloaded, but the previous certificate still serves for {}",
                    new.name,
                    st.server.kept.join("; ")
                ));
            }
            // A retry that read nothing new (the same file still refused) is not swapped in:
            // it would only empty caches and re-check every connection every 30 s.
            let unchanged = config_unchanged && st.server.adds_nothing_to(&s.state.load().server);
            if !unchanged {
                s.state.store(Arc::new(st));
                s.generations.publish(generation);
            }
        }
        if !failed.is_empty() {
            let reloaded = self.shared.len() - failed.len();
            let mut e = format!(
                "{} (kept their last good state; {reloaded} other listener(s) reloaded)",
                failed.join("; ")
            );
            for p in &partly {
                e.push_str("; ");
                e.push_str(p);
            }
            return Err(e);
        }
        if !partly.is_empty() {
            return Err(partly.join("; "));
        }
        self.config = candidate;
        let mut what =
            format!("certificates, CAs, CRLs, policy and upstreams (generation {generation})");
        if !changed_upstreams.is_empty() {
            what.push_str(&format!("; upstream now {}", changed_upstreams.join(", ")));
        }
        Ok(what)
    }
}
