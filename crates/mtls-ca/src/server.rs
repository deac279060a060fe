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
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::authority::PeerIdentity;
use crate::{Authority, Error};

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

/// Starts the CA: HTTPS on `listen` with `server_chain`/`server_key`, and plain HTTP for
/// publication on `publish` if given.
pub async fn serve(
    ca: Arc<Authority>,
    listen: SocketAddr,
    publish: Option<SocketAddr>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: &mtls_pki::PrivateKey,
) -> Result<Running, Error> {
    let credential =
        mtls_tls::credential_from_parts(server_chain, server_key, OffsetDateTime::now_utc())
            .map_err(Error::Config)?;
    let resolver = mtls_tls::SniResolver::new(std::slice::from_ref(&credential))
        .ok_or_else(|| Error::Config("no server certificate".into()))?;
    let verifier = mtls_tls::client_verifier(ca.trust().clone(), false);
    let mut config = mtls_tls::server_config(Arc::new(resolver), verifier, &[b"h2", b"http/1.1"])?;
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
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
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

async fn accept_plain(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<bool>) {
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
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
