//! Serving HTTP/1.1 and HTTP/2 on an accepted connection with hyper: one builder with the
//! header limits and timers every server uses, and graceful shutdown.

use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::accept::Shutdown;

/// Limits of the HTTP layer.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// How long an HTTP/1 request head may take to arrive (default 10 s).
    pub header_read_timeout: Duration,
    /// Largest request head (HTTP/1) or header list (HTTP/2) (default 16 KiB).
    pub max_header_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
        }
    }
}

/// The hyper connection builder (HTTP/1.1 and h2, chosen by ALPN or preface).
pub fn builder(limits: &HttpLimits) -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// Serves `service` on `io` until the connection ends; on `shutdown`, stops taking new
/// requests and lets the ones in flight finish.
pub async fn serve_connection<IO, S, B>(
    builder: &Builder<TokioExecutor>,
    io: IO,
    service: S,
    shutdown: Shutdown,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_connection_until(builder, io, service, shutdown, std::future::pending()).await
}

/// [`serve_connection`], cut at once (requests in flight included) when `cut` resolves: for a
/// client that is no longer trusted (see [`crate::recheck::until_refused`]).
pub async fn serve_connection_until<IO, S, B>(
    builder: &Builder<TokioExecutor>,
    io: IO,
    service: S,
    mut shutdown: Shutdown,
    cut: impl std::future::Future<Output = ()>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let linger = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let io = Lingering {
        io: Some(io),
        linger: linger.clone(),
    };
    let serving = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(serving);
    tokio::pin!(cut);
    tokio::select! {
        r = serving.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
                // hyper answered a malformed or oversize request (400, 431) and closes while
                // the client may still be sending: closing with unread data sends a reset
                // that can destroy the answer before the client reads it.
                linger.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        _ = shutdown.wait() => {
            serving.as_mut().graceful_shutdown();
            tokio::select! {
                _ = serving.as_mut() => {}
                _ = cut.as_mut() => {}
            }
        }
        _ = cut.as_mut() => {}
    }
}

/// Longest a closed connection is drained of what its client still sends (nginx's
/// `lingering_time` idea, bounded in time and bytes).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// The connection's stream; when the connection ended with a protocol error, dropping it shuts
/// the write side down (the answer and a FIN go out) and reads and discards what the client
/// still sends, bounded, before closing: a lingering close.
struct Lingering<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    io: Option<IO>,
    linger: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<IO> {
    fn drop(&mut self) {
        if !self.linger.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let Some(mut io) = self.io.take() else { return };
        // Outside a runtime (never in our servers) the stream just closes.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = tokio::time::timeout(LINGER_TIME, async {
                let _ = io.shutdown().await;
                let mut buf = [0u8; 8192];
                let mut drained = 0;
                while drained < LINGER_BYTES {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => drained += n,
                    }
                }
            })
            .await;
        });
    }
}

macro_rules! inner {
    ($self:ident) => {
        match $self.get_mut().io.as_mut() {
            Some(io) => std::pin::Pin::new(io),
            None => return std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    };
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<IO> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        inner!(self).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<IO> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        inner!(self).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        inner!(self).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        inner!(self).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        inner!(self).poll_shutdown(cx)
    }
}

/// Serves `service` over plain HTTP on `listener` until `shutdown`: the one accept-and-serve
/// loop of every plain-HTTP listener (the CA's publication listener, metrics pages, the demo
/// upstream). Connections silent for `idle` are closed.
pub async fn serve_plain<S, B>(
    listener: tokio::net::TcpListener,
    slots: crate::accept::Slots,
    limits: HttpLimits,
    idle: Duration,
    shutdown: Shutdown,
    service: S,
) where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = std::sync::Arc::new(builder(&limits));
    let sd = shutdown.clone();
    crate::accept::accept_loop(listener, slots, shutdown, move |tcp, _, slot| {
        let (builder, service, shutdown) = (builder.clone(), service.clone(), sd.clone());
        async move {
            let _slot = slot;
            serve_connection(
                &builder,
                mtls_tls::IdleTimeout::new(tcp, idle),
                service,
                shutdown,
            )
            .await;
        }
    })
    .await
}

/// Serves `/metrics` (the registry, Prometheus text) and `/healthz` on plain HTTP until
/// `shutdown`: the admin page of the gateway, the renewal daemon and applications. Keep it on
/// loopback or a private network.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: std::sync::Arc<crate::metrics::Registry>,
    shutdown: Shutdown,
) {
    serve_admin(listener, registry, Vec::new(), shutdown).await
}

/// One more page of an admin listener (e.g. the gateway's `/debug/refusals`), rendered on
/// each request.
#[derive(Clone)]
pub struct AdminPage {
    /// The request path it answers.
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Renders the body.
    pub render: std::sync::Arc<dyn Fn() -> String + Send + Sync>,
}

/// [`serve_metrics`] with `pages` besides `/metrics` and `/healthz`.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    registry: std::sync::Arc<crate::metrics::Registry>,
    pages: Vec<AdminPage>,
    shutdown: Shutdown,
) {
    let pages = std::sync::Arc::new(pages);
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let registry = registry.clone();
        let pages = pages.clone();
        async move {
            let path = req.uri().path();
            let (status, ctype, body) = match path {
                "/healthz" => (http::StatusCode::OK, "text/plain", "ok\n".to_string()),
                "/metrics" => (
                    http::StatusCode::OK,
                    crate::metrics::CONTENT_TYPE,
                    crate::metrics::render(&registry),
                ),
                _ => match pages.iter().find(|p| p.path == path) {
                    Some(p) => (http::StatusCode::OK, p.content_type, (p.render)()),
                    None => (
                        http::StatusCode::NOT_FOUND,
                        "text/plain",
                        "not found: try /metrics or /healthz\n".to_string(),
                    ),
                },
            };
            let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(ctype),
            );
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    serve_plain(
        listener,
        crate::accept::Slots::new(64),
        HttpLimits::default(),
        Duration::from_secs(60),
        shutdown,
        service,
    )
    .await
}
