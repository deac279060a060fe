//! Serving an axum `Router` over mutual TLS on the serving core: a TLS handshake per
//! connection in its own task (with a deadline), HTTP/1.1 and h2, credentials and trust reloaded
//! from their files, and every request's identity re-checked against the current trust state; a
//! client revoked while its keep-alive or h2 connection is open loses the connection at once.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use base64::Engine;
use mtls_serve::accept::{self, Slots};
use mtls_serve::metrics::{CounterFamily, Labels, Registry, ReloadCounters};
use mtls_serve::recheck::ConnectionIdentity;
use mtls_serve::reload::{ReloadHandle, ReloadOptions};
use mtls_serve::tls::{CertificateFiles, ClientAuth, ReloadingServer, ServerFiles};
use mtls_verify::{PeerIdentity, Policy, Rejection, RevocationOptions, TrustState, VerifiedPeer};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::extract::{ForwardedExt, PeerExt};
use crate::Error;

/// Builds an [`MtlsServer`]. Strict by default: a client certificate is required in the
/// handshake, CRLs (when given) must be current and cover the issuer, nothing is trusted from
/// forwarded headers. Loosening is a named method.
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    files: ServerFiles,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    drain_timeout: Duration,
    http: mtls_serve::http::HttpLimits,
    max_connections: usize,
    max_connections_per_source: Option<usize>,
    reload_poll: Duration,
    reload_on_sighup: bool,
    gateways: Option<Policy>,
    feed_urls: Vec<String>,
    feed_max_age: Duration,
    ocsp: Option<mtls_client::ocsp_check::OcspOptions>,
    crl_from_certificates: bool,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            files: ServerFiles {
                certificates: Vec::new(),
                client_ca: Vec::new(),
                crl: Vec::new(),
                client_auth: ClientAuth::Required,
                revocation: RevocationOptions::default(),
                alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                resumption: Default::default(),
            },
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(30),
            http: mtls_serve::http::HttpLimits::default(),
            max_connections: 10_000,
            max_connections_per_source: None,
            reload_poll: Duration::from_secs(1),
            reload_on_sighup: false,
            gateways: None,
            feed_urls: Vec::new(),
            feed_max_age: Duration::from_secs(60),
            ocsp: None,
            crl_from_certificates: false,
        }
    }
}

impl ServerBuilder {
    /// The server's certificate chain (leaf first) and key; call again for more certificates,
    /// chosen by SNI (the first is the default). The key must be owner-only.
    pub fn certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.files.certificates.push(CertificateFiles {
            cert: cert.into(),
            key: key.into(),
            key_passphrase_file: None,
        });
        self
    }

    /// Like [`ServerBuilder::certificate`], for an encrypted key whose passphrase is in a file.
    pub fn certificate_with_passphrase_file(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        passphrase_file: impl Into<PathBuf>,
    ) -> Self {
        self.files.certificates.push(CertificateFiles {
            cert: cert.into(),
            key: key.into(),
            key_passphrase_file: Some(passphrase_file.into()),
        });
        self
    }

    /// A CA bundle (PEM or DER) trusted for client certificates; include the CAs that sign the
    /// CRLs.
    pub fn client_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.client_ca.push(path.into());
        self
    }

    /// A CRL file, reloaded when it changes.
    pub fn crl(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.crl.push(path.into());
        self
    }

    /// Follows the online CA's revocation feed (`https://ca:9443`; call again for instances
    /// sharing one database): a revocation reaches this server within a second, and open
    /// connections of the revoked client are closed at once. The server presents its (first)
    /// certificate to the CA, which must allow it in `[revocation_feed]`; the CA's certificate
    /// and its CRLs are verified against the client CAs. When the CA has not answered for
    /// [`revocation_feed_max_age`](Self::revocation_feed_max_age), clients only the feed vouches
    /// for are refused.
    pub fn revocation_feed(mut self, url: impl Into<String>) -> Self {
        self.feed_urls.push(url.into());
        self
    }

    /// Checks client certificates with OCSP (see `mtls_client::ocsp_check`): verified answers
    /// cached until their nextUpdate and refreshed ahead, one bounded wait for a new client; no
    /// answer refuses the client unless [`allow_unknown_revocation_status`](Self::allow_unknown_revocation_status).
    /// Works on any Tokio runtime flavor; on a current-thread runtime that one wait (at most
    /// `max_wait`) holds up the whole runtime.
    pub fn ocsp(mut self, options: mtls_client::ocsp_check::OcspOptions) -> Self {
        self.ocsp = Some(options);
        self
    }

    /// Fetches, caches and refreshes the CRLs named in the CRL Distribution Points of the client
    /// CAs and of the clients seen (see `mtls_client::crl`); a client whose CRL is not fetched
    /// yet is refused until it is.
    pub fn crl_from_certificates(mut self) -> Self {
        self.crl_from_certificates = true;
        self
    }

    /// How long the feed's data stays good without contact with the CA (default 60 s).
    pub fn revocation_feed_max_age(mut self, d: Duration) -> Self {
        self.feed_max_age = d;
        self
    }

    /// Loosening: the handshake also admits clients without a valid certificate, so that
    /// [`crate::ClientCert`] and [`crate::RequireClientCert`] can answer them with the seed's
    /// JSON `401 NO_CLIENT_CERT` / `403 INVALID_CERT` instead of a TLS alert.
    pub fn allow_handshake_without_certificate(mut self) -> Self {
        self.files.client_auth = ClientAuth::Optional;
        self
    }

    /// Loosening: accept clients whose issuer has no CRL when CRLs are configured.
    pub fn allow_unknown_revocation_status(mut self) -> Self {
        self.files.revocation.allow_unknown_status = true;
        self
    }

    /// Loosening: accept CRLs past their nextUpdate.
    pub fn allow_expired_crl(mut self) -> Self {
        self.files.revocation.allow_expired_crl = true;
        self
    }

    /// Trust the identity headers (`Client-Cert`, RFC 9440) of connections whose own certificate
    /// passes `gateways` (typically `allow_cn = ["gateway"]`): see
    /// [`crate::ForwardedClientCert`].
    pub fn trust_forwarded_identity_from(mut self, gateways: Policy) -> Self {
        self.gateways = Some(gateways);
        self
    }

    /// TLS handshake deadline (default 10 s).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// Connections silent this long are closed (default 1 h).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// At shutdown, how long open requests may take to finish before their connections are
    /// closed (default 30 s). Upgraded connections (WebSockets) have no end of their own:
    /// they are closed when the server stops, without waiting for this.
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// How long an HTTP/1 request head may take (default 10 s); also the idle limit of
    /// connections without an accepted client certificate.
    pub fn header_read_timeout(mut self, d: Duration) -> Self {
        self.http.header_read_timeout = d;
        self
    }

    /// At most this many connections at once (default 10,000). Each holds two file
    /// descriptors (its socket, and a duplicate that ends an upgraded connection such as a
    /// WebSocket when the client is revoked): the process's `RLIMIT_NOFILE` needs twice this.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// At most this many connections from one source (an IPv4 address, an IPv6 /64) at once,
    /// so one host cannot take every slot; past it a new connection is closed at once. Unset
    /// by default: behind a load balancer or NAT every client has the same source.
    pub fn max_connections_per_source(mut self, n: usize) -> Self {
        self.max_connections_per_source = Some(n);
        self
    }

    /// How often the certificate, key, CA and CRL files are checked for changes (default 1 s).
    pub fn reload_poll(mut self, d: Duration) -> Self {
        self.reload_poll = d;
        self
    }

    /// Also reload on SIGHUP (off by default: a library should not take the process's signals).
    pub fn reload_on_sighup(mut self) -> Self {
        self.reload_on_sighup = true;
        self
    }

    /// Loads and checks every file now.
    pub fn build(self) -> Result<MtlsServer, Error> {
        if self.files.certificates.is_empty() {
            return Err(Error::Config(
                "no server certificate: call .certificate(cert, key)".into(),
            ));
        }
        if self.files.client_ca.is_empty() {
            return Err(Error::Config(
                "no client CA: call .client_ca(path) with the CA bundle that issues client certificates"
                    .into(),
            ));
        }
        let feed = if self.feed_urls.is_empty() {
            None
        } else {
            let cert = &self.files.certificates[0];
            let files = mtls_client::feed::FeedFiles {
                urls: self.feed_urls.clone(),
                server_ca: self.files.client_ca.clone(),
                cert: cert.cert.clone(),
                key: cert.key.clone(),
                passphrase: cert
                    .key_passphrase_file
                    .clone()
                    .map_or(mtls_tls::Passphrase::None, mtls_tls::Passphrase::File),
                crl_signers: self.files.client_ca.clone(),
                max_age: self.feed_max_age,
            };
            Some(
                files
                    .subscriber()
                    .map_err(|e| Error::Config(format!("revocation feed: {e}")))?,
            )
        };
        let ocsp = match &self.ocsp {
            Some(o) => Some(
                mtls_client::ocsp_check::OcspChecker::new(o.clone())
                    .map_err(|e| Error::Config(format!("OCSP: {e}")))?,
            ),
            None => None,
        };
        let tls = ReloadingServer::with_sources(
            self.files.clone(),
            mtls_verify::RevocationSources {
                pushed: feed.as_ref().map(|(_, set)| set.clone()),
                status: ocsp
                    .clone()
                    .map(|o| o as Arc<dyn mtls_verify::StatusSource>),
                fetched: self
                    .crl_from_certificates
                    .then(|| mtls_client::crl::fetched_crls(&self.files.client_ca)),
                ..Default::default()
            },
        )?;
        Ok(MtlsServer {
            inner: Arc::new(Inner {
                tls,
                feed: std::sync::Mutex::new(feed.map(|(sub, _)| sub)),
                ocsp,
                builder: self,
                handshakes: CounterFamily::default(),
                reloads: ReloadCounters::default(),
                refusals: mtls_serve::refusals::RefusalLog::default(),
            }),
        })
    }
}

struct Inner {
    tls: Arc<ReloadingServer>,
    /// The feed subscriber, taken by the first `serve`.
    feed: std::sync::Mutex<Option<mtls_client::feed::FeedSubscriber>>,
    /// The OCSP checker, refreshed while serving.
    ocsp: Option<Arc<mtls_client::ocsp_check::OcspChecker>>,
    builder: ServerBuilder,
    handshakes: CounterFamily,
    reloads: ReloadCounters,
    /// Refused handshakes: rate-limited log lines and the recent ones.
    refusals: mtls_serve::refusals::RefusalLog,
}

/// An mTLS server for axum routers (see [`ServerBuilder`]).
#[derive(Clone)]
pub struct MtlsServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MtlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsServer")
            .field("files", &self.inner.builder.files)
            .finish()
    }
}

impl MtlsServer {
    /// A [`ServerBuilder`] with the strict defaults.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Registers `mtls_handshakes_total{result,reason}` and `mtls_reloads_total{result}`.
    pub fn register_metrics(&mut self, registry: &mut Registry) {
        registry.register(
            "mtls_handshakes",
            "TLS handshakes by result and reason",
            self.inner.handshakes.clone(),
        );
        registry.register(
            "mtls_reloads",
            "Reloads of certificates, CAs and CRLs, by result",
            self.inner.reloads.clone().family(),
        );
        self.inner.reloads.counts();
    }

    /// Reloads every file now (as a file change or SIGHUP would); on error the current state
    /// keeps serving.
    pub fn reload(&self) -> Result<u64, Error> {
        Ok(self.inner.tls.reload_now()?)
    }

    /// Serves `router` on `listener` until the process ends.
    pub async fn serve(self, listener: TcpListener, router: Router) {
        self.serve_with_shutdown(listener, router, std::future::pending::<()>())
            .await
    }

    /// Serves until `signal` resolves, then stops accepting and lets open requests finish.
    pub async fn serve_with_shutdown(
        self,
        listener: TcpListener,
        router: Router,
        signal: impl Future<Output = ()> + Send,
    ) {
        let (stop, shutdown) = mtls_serve::shutdown();
        let _reload: ReloadHandle = mtls_serve::reload::spawn(
            self.inner.tls.clone(),
            ReloadOptions {
                poll: self.inner.builder.reload_poll,
                on_sighup: self.inner.builder.reload_on_sighup,
                counters: self.inner.reloads.clone(),
                ..ReloadOptions::default()
            },
            shutdown.clone(),
        );
        let feed = self.inner.feed.lock().ok().and_then(|mut f| f.take());
        if let Some(mut sub) = feed {
            sub.seed_within(Duration::from_secs(10)).await;
            let tls = self.inner.tls.clone();
            tokio::spawn(sub.run(move |_| tls.generations().poke(), shutdown.clone()));
        }
        if let Some(set) = self.inner.tls.sources().fetched.clone() {
            let tls = self.inner.tls.clone();
            tokio::spawn(mtls_client::crl::follow_distribution_points(
                set,
                self.inner.builder.files.client_ca.clone(),
                move || {
                    if let Err(e) = tls.reload_now() {
                        tracing::warn!(error = %e, "reload with a new CRL failed");
                    }
                },
                |_| {},
                shutdown.clone(),
            ));
        }
        if let Some(c) = &self.inner.ocsp {
            let tls = self.inner.tls.clone();
            tokio::spawn(
                c.clone()
                    .run(move || tls.generations().poke(), shutdown.clone()),
            );
        }
        let tls = self.inner.tls.clone();
        tokio::spawn(mtls_client::ocsp::staple(
            move || tls.current().certificates.clone(),
            shutdown.clone(),
        ));
        let mut slots = Slots::new(self.inner.builder.max_connections);
        if let Some(n) = self.inner.builder.max_connections_per_source {
            slots = slots.per_source(n);
        }
        let http = Arc::new(mtls_serve::http::builder(&self.inner.builder.http));
        let inner = self.inner.clone();
        let sd = shutdown.clone();
        // Past the drain deadline, connections still open are closed (their futures dropped):
        // returning while they run on would leave the application's port and state in use.
        let (kill, killed) = mtls_serve::shutdown();
        let serving = accept::accept_loop(
            listener,
            slots.clone(),
            shutdown,
            move |tcp, remote, slot| {
                let (inner, router, http, shutdown, mut killed) = (
                    inner.clone(),
                    router.clone(),
                    http.clone(),
                    sd.clone(),
                    killed.clone(),
                );
                async move {
                    let _slot = slot;
                    tokio::select! {
                        _ = connection(inner, tcp, remote, router, http, shutdown) => {}
                        _ = killed.wait() => {}
                    }
                }
            },
        );
        tokio::select! {
            _ = serving => {}
            _ = signal => {}
        }
        stop.trigger();
        let drain = self.inner.builder.drain_timeout;
        if !slots.drain(drain).await {
            tracing::warn!(
                open = slots.in_use(),
                after = ?drain,
                "connections still open at the end of the drain: closing them"
            );
            kill.trigger();
            // Each connection's task ends at its next poll; wait for them briefly.
            slots.drain(Duration::from_secs(1)).await;
        }
    }
}

async fn connection(
    inner: Arc<Inner>,
    tcp: TcpStream,
    remote: std::net::SocketAddr,
    router: Router,
    http: Arc<mtls_serve::http::Http>,
    shutdown: mtls_serve::Shutdown,
) {
    // Kept to end an upgraded connection (WebSocket) that the application holds when the
    // client stops being trusted.
    let socket = match mtls_serve::http::duplicate_socket(&tcp) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot duplicate the connection's socket; closing it");
            return;
        }
    };
    // This task lives as long as the connection, idle keep-alive ones too, and its future is
    // as large as its largest state: the handshake and the serving future are boxed and the
    // TLS stream is handed on without being kept here, so an idle connection's task holds
    // little more than two pointers.
    let serving = match Box::pin(accept::handshake(
        // Only the TLS configuration: a state kept here would stay alive as long as the
        // connection, across reloads.
        inner.tls.current().tls.clone(),
        tcp,
        inner.builder.handshake_timeout,
    ))
    .await
    {
        Ok(tls) => match serve_tls(inner, tls, remote, router, http, shutdown, socket) {
            Some(serving) => serving,
            None => return,
        },
        Err(e) => {
            // Logged at WARN, rate-limited, naming a refused certificate, as the gateway does:
            // refused clients are visible at the default level.
            let (result, reason) = inner.refusals.handshake_failed("server", remote, &e);
            let labels: Labels = vec![("result", result.into()), ("reason", reason)];
            inner.handshakes.get_or_create(&labels).inc();
            return;
        }
    };
    serving.await;
}

/// What follows a completed handshake: the identity check and HTTP serving, as one boxed
/// future (see [`connection`]); `None` when the client is refused at once.
fn serve_tls(
    inner: Arc<Inner>,
    tls: accept::TlsConnection,
    remote: std::net::SocketAddr,
    router: Router,
    http: Arc<mtls_serve::http::Http>,
    shutdown: mtls_serve::Shutdown,
    socket: std::net::TcpStream,
) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
    let labels: Labels = vec![("result", "ok".into()), ("reason", String::new())];
    inner.handshakes.get_or_create(&labels).inc();
    // Verified again under the current state: resumed sessions skip the handshake verifier.
    let identity = Arc::new(ConnectionIdentity::<()>::new(
        accept::peer_chain(&tls),
        &inner.tls.current().trust,
        |_| (),
    ));
    // A client without an accepted certificate can only be refused: it gets the header-read
    // timeout as idle limit, not an hour to hold a connection slot.
    let admitted = identity.current(&inner.tls.current().trust).is_ok();
    if !admitted && inner.builder.files.client_auth == ClientAuth::Required {
        // Only a resumed session (its handshake skips the verifier) or a revocation since the
        // handshake gets here: in required mode such a client never reaches HTTP, whatever
        // route it asks for.
        tracing::debug!("closing connection: the client's certificate is no longer accepted");
        return None;
    }
    let idle = if admitted {
        inner.builder.idle_timeout
    } else {
        inner.builder.http.header_read_timeout
    };
    // A client admitted now and no longer trusted later (revoked, its CA gone) loses the
    // connection at once, not at its next request.
    let cut = {
        let (inner, identity) = (inner.clone(), identity.clone());
        async move {
            if !admitted {
                // Refused for now (optional mode: it gets its 401/403); watched from the
                // moment it is trusted (a CRL or OCSP answer that arrived later).
                identity
                    .until_trusted(inner.tls.generations(), || {
                        inner.tls.current().trust.clone()
                    })
                    .await;
            }
            let reason = identity
                .until_untrusted(inner.tls.generations(), || {
                    inner.tls.current().trust.clone()
                })
                .await;
            tracing::info!(%reason, "closing connection: the client is no longer trusted");
        }
    };
    let required = inner.builder.files.client_auth == ClientAuth::Required;
    let service = hyper::service::service_fn(
        move |mut req: http::Request<mtls_serve::http::RequestBody>| {
            use futures_util::future::Either;
            let state = inner.tls.current();
            let peer: PeerIdentity = identity.current(&state.trust).map(|(p, ())| p).into();
            if required {
                if let Err(r) = peer.verified() {
                    // Its certificate expired, or its CA's CRL lapsed, since the last look (the
                    // connection is cut at most a minute later): refused here, whatever the
                    // route, not only where an extractor or layer asks. In required mode no
                    // request without an accepted certificate reaches the application.
                    let refusal = axum::response::IntoResponse::into_response(
                        mtls_serve::ApiError::from_rejection(&r),
                    );
                    return Either::Right(std::future::ready(Ok(refusal)));
                }
            }
            let forwarded = match (&peer, &inner.builder.gateways) {
                (PeerIdentity::Verified(p), Some(gateways)) if gateways.check(p).is_ok() => {
                    Some(forwarded_identity(req.headers(), &state.trust))
                }
                _ => None,
            };
            req.extensions_mut().insert(PeerExt(peer));
            req.extensions_mut().insert(ForwardedExt(forwarded));
            req.extensions_mut()
                .insert(crate::extract::RemoteExt(remote));
            Either::Left(router.clone().oneshot(req))
        },
    );
    Some(Box::pin(mtls_serve::http::serve_connection_upgradable(
        http,
        mtls_tls::IdleTimeout::new(tls, idle),
        service,
        shutdown,
        cut,
        socket,
    )))
}

/// The client certificate a gateway forwarded in `Client-Cert` (RFC 9440: `:base64(DER):`),
/// verified under `trust`.
fn forwarded_identity(
    headers: &http::HeaderMap,
    trust: &TrustState,
) -> Result<Arc<VerifiedPeer>, Rejection> {
    let mut values = headers.get_all("client-cert").iter();
    let value = values.next().ok_or(Rejection::NoCertificate)?;
    if values.next().is_some() {
        return Err(Rejection::Malformed(
            "more than one Client-Cert header".into(),
        ));
    }
    let der = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix(':')?.strip_suffix(':'))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .ok_or_else(|| {
            Rejection::Malformed("Client-Cert is not an RFC 9440 byte sequence".into())
        })?;
    let der = rustls::pki_types::CertificateDer::from(der);
    trust.verify_client(&der, &[], OffsetDateTime::now_utc())
}
