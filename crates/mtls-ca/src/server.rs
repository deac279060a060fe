//! Listeners: the HTTPS API (client certificates optional at the TLS layer, checked per
//! request) and an optional plain-HTTP listener for CRL, OCSP and roots, which clients must be
//! able to fetch without TLS (a CRL or OCSP URL behind TLS checked with that same CRL is
//! circular). Each connection gets its own task with a handshake deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::service::TowerToHyperService;
use mtls_serve::accept::{accept_loop, handshake, peer_chain, Shutdown, ShutdownTrigger, Slots};
use time::OffsetDateTime;
use tokio::net::TcpListener;

use crate::authority::PeerIdentity;
use crate::{Authority, Error};
use mtls_tls::IdleTimeout;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_LIMITS: mtls_serve::http::HttpLimits = mtls_serve::http::HttpLimits {
    header_read_timeout: Duration::from_secs(10),
    max_header_bytes: 16 * 1024,
};
const MAX_CONNECTIONS: usize = 4096;
/// Of which one source (an IPv4 address, an IPv6 /64) may hold: the API is open to clients
/// without certificates (enrollment), and one host must not take every slot.
const MAX_CONNECTIONS_PER_SOURCE: usize = 512;

fn slots() -> Slots {
    Slots::new(MAX_CONNECTIONS).per_source(MAX_CONNECTIONS_PER_SOURCE)
}

/// A started CA service.
pub struct Running {
    pub addr: SocketAddr,
    /// The plain-HTTP publication listener, when configured.
    pub publish_addr: Option<SocketAddr>,
    /// The plain-HTTP metrics listener (`/metrics`, `/healthz`), when configured.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: ShutdownTrigger,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting new connections.
    pub async fn shutdown(self) {
        self.shutdown.trigger();
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Waits until the listeners stop (they run until shutdown).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The CA's own TLS certificate, issued by itself at start-up and replaced in place (no
/// restart, no dropped connections) once two thirds of its life have passed.
#[derive(Debug)]
struct OwnCertificate {
    current: arc_swap::ArcSwap<mtls_tls::Credential>,
}

impl rustls::server::ResolvesServerCert for OwnCertificate {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.load().certified.clone())
    }
}

/// An OCSP response about the CA's own TLS certificate from its own responder, verified as a
/// client would (never staple what does not verify or does not say "good").
async fn own_staple(
    ca: &Authority,
    chain: &[rustls::pki_types::CertificateDer<'static>],
) -> Option<Vec<u8>> {
    let (leaf, issuer) = (chain.first()?, chain.get(1)?);
    let serial = mtls_pki::Serial::from_be_bytes(
        mtls_pki::pem_io::parse_certificate(leaf).ok()?.raw_serial(),
    );
    let info = mtls_ocsp::IssuerInfo::from_der(issuer).ok()?;
    let request = mtls_ocsp::build_request(&info, &serial, None).ok()?;
    let now = OffsetDateTime::now_utc();
    let der = ca.ocsp(&request, now).await.ok()?;
    match mtls_ocsp::verify_response(&der, issuer, &serial, now) {
        Ok(v) if v.status == mtls_ocsp::CertStatus::Good => Some(der),
        Ok(v) => {
            tracing::error!(status = ?v.status, "the CA's own TLS certificate is not good: not stapling");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "the CA's OCSP answer about its own certificate does not verify: not stapling");
            None
        }
    }
}

/// `cred` with a fresh staple (or none).
async fn stapled(ca: &Authority, cred: &mtls_tls::Credential) -> mtls_tls::Credential {
    let mut certified =
        rustls::sign::CertifiedKey::new(cred.certified.cert.clone(), cred.certified.key.clone());
    certified.ocsp = own_staple(ca, &cred.certified.cert).await;
    mtls_tls::Credential {
        certified: Arc::new(certified),
        ..cred.clone()
    }
}

/// Keeps the staple of the CA's TLS certificate current: refreshed at half the OCSP lifetime.
async fn staple_own_certificate(
    ca: Arc<Authority>,
    own: Arc<OwnCertificate>,
    mut shutdown: Shutdown,
) {
    let every = (ca.settings().ocsp_lifetime.unsigned_abs() / 2)
        .clamp(Duration::from_secs(10), Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => return,
        }
        let cred = own.current.load_full();
        own.current.store(Arc::new(stapled(&ca, &cred).await));
    }
}

async fn own_credential(ca: &Authority, names: &[String]) -> Result<mtls_tls::Credential, Error> {
    let now = OffsetDateTime::now_utc();
    let (key, chain) = ca.issue_server_credential(names, now).await?;
    let cred = mtls_tls::credential_from_parts(chain, &key, now).map_err(Error::Config)?;
    Ok(stapled(ca, &cred).await)
}

/// How often the CA looks whether its own TLS certificate was revoked (by an administrator,
/// another instance sharing the database, or `mtls revoke` on the inventory): a revoked
/// certificate is replaced within about this long. One indexed read of the revocation epoch
/// per check; the certificate itself is looked up only when the epoch moved.
const OWN_REVOCATION_CHECK: Duration = Duration::from_secs(1);
/// How often the time-based renewal is considered.
const OWN_RENEWAL_CHECK: Duration = Duration::from_secs(600);
/// The pause after a failed replacement (the CA cannot issue: the database went away…).
const OWN_RETRY: Duration = Duration::from_secs(30);

/// Whether the CA's current TLS certificate is recorded revoked. `seen` is the revocation
/// epoch at the last complete check: unchanged, nothing was revoked since.
async fn own_revoked(ca: &Authority, cred: &mtls_tls::Credential, seen: &mut Option<i64>) -> bool {
    let epoch = match ca.store().revocation_epoch().await {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(error = %e, "reading the revocation epoch for the CA's own certificate");
            return false;
        }
    };
    if *seen == Some(epoch) {
        return false;
    }
    let Some(serial) = cred
        .certified
        .cert
        .first()
        .and_then(|leaf| mtls_pki::pem_io::parse_certificate(leaf).ok())
        .map(|leaf| mtls_pki::Serial::from_be_bytes(leaf.raw_serial()))
    else {
        return false;
    };
    match ca.store().get(&serial, OffsetDateTime::now_utc()).await {
        Ok(record) => {
            *seen = Some(epoch);
            record.is_some_and(|r| r.revoked_at.is_some())
        }
        Err(e) => {
            tracing::debug!(error = %e, "looking up the CA's own certificate");
            false
        }
    }
}

/// Keeps the CA's TLS certificate usable: renewed with 10 days of its 30 left, and replaced
/// at once when it is revoked (clients that check revocation would refuse it until its
/// time-based renewal, up to 20 days later).
async fn rotate_own_certificate(
    ca: Arc<Authority>,
    names: Vec<String>,
    own: Arc<OwnCertificate>,
    mut shutdown: Shutdown,
) {
    let mut seen_epoch = None;
    let mut next_time_check = tokio::time::Instant::now() + OWN_RENEWAL_CHECK;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(OWN_REVOCATION_CHECK) => {}
            _ = shutdown.wait() => return,
        }
        let current = own.current.load_full();
        let revoked = own_revoked(&ca, &current, &mut seen_epoch).await;
        let mut due = false;
        if tokio::time::Instant::now() >= next_time_check {
            next_time_check = tokio::time::Instant::now() + OWN_RENEWAL_CHECK;
            // 30-day certificates: renewed with 10 days left.
            due = OffsetDateTime::now_utc() >= current.not_after - time::Duration::days(10);
        }
        if !revoked && !due {
            continue;
        }
        if revoked {
            tracing::warn!("the CA's own TLS certificate was revoked: replacing it");
        }
        match own_credential(&ca, &names).await {
            Ok(c) => {
                tracing::info!(not_after = %c.not_after, "renewed the CA's TLS certificate");
                own.current.store(Arc::new(c));
            }
            Err(e) => {
                tracing::error!(error = %e, "renewing the CA's TLS certificate failed; retrying");
                // Both checks again after the pause: the revoked one is still revoked.
                seen_epoch = None;
                next_time_check = tokio::time::Instant::now();
                tokio::select! {
                    _ = tokio::time::sleep(OWN_RETRY) => {}
                    _ = shutdown.wait() => return,
                }
            }
        }
    }
}

/// Starts the CA: HTTPS on `listen` with a server certificate for `names` that it issues (and
/// renews) itself, and plain HTTP for publication on `publish` if given.
pub async fn serve(
    ca: Arc<Authority>,
    listen: SocketAddr,
    publish: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    names: Vec<String>,
) -> Result<Running, Error> {
    let own = Arc::new(OwnCertificate {
        current: arc_swap::ArcSwap::from_pointee(own_credential(&ca, &names).await?),
    });
    let resolver = own.clone();
    let verifier = mtls_tls::client_verifier(ca.trust().clone(), false);
    let mut config = mtls_tls::server_config(resolver, verifier, &[b"h2", b"http/1.1"])?;
    // Renewal and revocation are authorised by the certificate of *this* handshake: no
    // resumption, so a revoked client cannot ride an old session.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    let config = Arc::new(config);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Listen {
            addr: listen.to_string(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: listen.to_string(),
        source,
    })?;
    let (shutdown, rx) = mtls_serve::shutdown();
    let mut tasks = vec![tokio::spawn(accept_tls(
        listener,
        config,
        crate::http::router(ca.clone()),
        ca.clone(),
        rx.clone(),
    ))];
    tasks.push(tokio::spawn(ca.clone().follow_revocations(rx.clone())));
    tasks.push(tokio::spawn(staple_own_certificate(
        ca.clone(),
        own.clone(),
        rx.clone(),
    )));
    tasks.push(tokio::spawn(rotate_own_certificate(
        ca.clone(),
        names,
        own,
        rx.clone(),
    )));
    // The plain-HTTP listeners: what is published (CRL, OCSP, roots) and the metrics. Every
    // client there is anonymous and every answer immediate (no long polls): the header-read
    // timeout as idle limit, as anonymous TLS connections get, so silent connections cannot
    // hold their slots (verifiers whose CRL expires meanwhile would refuse everyone).
    let idle = HTTP_LIMITS
        .header_read_timeout
        .min(ca.settings().idle_timeout.unsigned_abs());
    let plain = |addr: SocketAddr, router: Router| {
        let rx = rx.clone();
        async move {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Listen {
                    addr: addr.to_string(),
                    source,
                })?;
            let bound = l.local_addr().map_err(|source| Error::Listen {
                addr: addr.to_string(),
                source,
            })?;
            let task = tokio::spawn(mtls_serve::http::serve_plain(
                l,
                slots(),
                HTTP_LIMITS,
                idle,
                rx,
                TowerToHyperService::new(router),
            ));
            Ok::<_, Error>((bound, task))
        }
    };
    let mut publish_addr = None;
    let mut metrics_addr = None;
    if let Some(m) = metrics {
        let (bound, task) = plain(m, crate::http::metrics_router(ca.clone())).await?;
        metrics_addr = Some(bound);
        tasks.push(task);
    }
    if let Some(p) = publish {
        let (bound, task) = plain(p, crate::http::publication_router(ca.clone())).await?;
        publish_addr = Some(bound);
        tasks.push(task);
    }
    Ok(Running {
        addr,
        publish_addr,
        metrics_addr,
        shutdown,
        tasks,
    })
}

/// Serves the API over TLS: a handshake per connection in its own task (deadline, failures
/// counted), the client's identity established once, then HTTP/1.1 or h2.
async fn accept_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    ca: Arc<Authority>,
    shutdown: Shutdown,
) {
    let idle = ca.settings().idle_timeout.unsigned_abs();
    let http = Arc::new(mtls_serve::http::builder(&HTTP_LIMITS));
    let sd = shutdown.clone();
    accept_loop(listener, slots(), shutdown, move |tcp, _, slot| {
        let (config, router, ca, http, shutdown) = (
            config.clone(),
            router.clone(),
            ca.clone(),
            http.clone(),
            sd.clone(),
        );
        async move {
            let _slot = slot;
            // The connection's task keeps neither the handshake's state nor the TLS stream
            // inline (both boxed, the stream handed on at once): see the gateway's
            // `handle_connection`.
            let serving = match Box::pin(handshake(config, tcp, HANDSHAKE_TIMEOUT)).await {
                Ok(tls) => {
                    let peer: PeerIdentity = ca
                        .trust()
                        .identify(peer_chain(&tls), OffsetDateTime::now_utc())
                        .into();
                    // A connection without an accepted client certificate can only enroll or
                    // read what is published: it gets the header-read timeout as idle limit,
                    // not the long one, so anonymous connections cannot keep the API's slots
                    // taken.
                    let idle = match peer {
                        PeerIdentity::Verified(_) => idle,
                        _ => HTTP_LIMITS.header_read_timeout,
                    };
                    let service = TowerToHyperService::new(router.layer(axum::Extension(peer)));
                    Box::pin(mtls_serve::http::serve_connection(
                        http,
                        IdleTimeout::new(tls, idle),
                        service,
                        shutdown,
                    ))
                }
                Err(e) => {
                    ca.metrics.inc(&ca.metrics.handshake_failures);
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
            };
            serving.await;
        }
    })
    .await
}
