//! Listeners: the HTTPS API (client certificates optional at the TLS layer, checked per
//! request) and an optional plain-HTTP listener for CRL, OCSP and roots, which clients must be
//! able to fetch without TLS (a CRL or OCSP URL behind TLS checked with that same CRL is
//! circular). Each connection gets its own task with a handshake deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::authority::PeerIdentity;
use crate::{Authority, Error};
use mtls_tls::IdleTimeout;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 4096;

/// A started CA service.
pub struct Running {
    pub addr: SocketAddr,
    /// The plain-HTTP publication listener, when configured.
    pub publish_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting new connections.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
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

async fn own_credential(ca: &Authority, names: &[String]) -> Result<mtls_tls::Credential, Error> {
    let now = OffsetDateTime::now_utc();
    let (key, chain) = ca.issue_server_credential(names, now).await?;
    mtls_tls::credential_from_parts(chain, &key, now).map_err(Error::Config)
}

async fn rotate_own_certificate(
    ca: Arc<Authority>,
    names: Vec<String>,
    own: Arc<OwnCertificate>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = shutdown.changed() => return,
        }
        let not_after = own.current.load().not_after;
        // 30-day certificates: renew with 10 days left.
        if OffsetDateTime::now_utc() < not_after - time::Duration::days(10) {
            continue;
        }
        match own_credential(&ca, &names).await {
            Ok(c) => {
                tracing::info!(not_after = %c.not_after, "renewed the CA's TLS certificate");
                own.current.store(Arc::new(c));
            }
            Err(e) => {
                tracing::error!(error = %e, "renewing the CA's TLS certificate failed; retrying")
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
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
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
    let (shutdown, rx) = watch::channel(false);
    let mut tasks = vec![tokio::spawn(accept_tls(
        listener,
        acceptor,
        crate::http::router(ca.clone()),
        ca.clone(),
        rx.clone(),
    ))];
    tasks.push(tokio::spawn(rotate_own_certificate(
        ca.clone(),
        names,
        own,
        rx.clone(),
    )));
    let mut publish_addr = None;
    if let Some(p) = publish {
        let l = TcpListener::bind(p).await.map_err(|source| Error::Listen {
            addr: p.to_string(),
            source,
        })?;
        publish_addr = Some(l.local_addr().map_err(|source| Error::Listen {
            addr: p.to_string(),
            source,
        })?);
        tasks.push(tokio::spawn(accept_plain(
            l,
            crate::http::publication_router(ca.clone()),
            ca.settings().idle_timeout.unsigned_abs(),
            rx,
        )));
    }
    Ok(Running {
        addr,
        publish_addr,
        shutdown,
        tasks,
    })
}

fn http_builder() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    b
}

async fn accept_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
    ca: Arc<Authority>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let idle = ca.settings().idle_timeout.unsigned_abs();
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue; // over the limit: drop the connection
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let ca = ca.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                acceptor.accept(IdleTimeout::new(tcp, idle)),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    ca.metrics.inc(&ca.metrics.handshake_failures);
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    ca.metrics.inc(&ca.metrics.handshake_failures);
                    return;
                }
            };
            let peer = match tls.get_ref().1.peer_certificates() {
                None | Some([]) => PeerIdentity::None,
                Some([leaf, rest @ ..]) => {
                    match ca
                        .trust()
                        .verify_client(leaf, rest, OffsetDateTime::now_utc())
                    {
                        Ok(p) => PeerIdentity::Verified(p),
                        Err(r) => PeerIdentity::Rejected(r),
                    }
                }
            };
            let service = TowerToHyperService::new(router.layer(axum::Extension(peer)));
            if let Err(e) = http_builder()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

async fn accept_plain(
    listener: TcpListener,
    router: Router,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = TowerToHyperService::new(router);
            let _ = http_builder()
                .serve_connection(TokioIo::new(IdleTimeout::new(tcp, idle)), service)
                .await;
        });
    }
}
