//! Serving HTTP/1.1 and HTTP/2 on an accepted connection with hyper: one builder with the
//! header limits and timers every server uses, and graceful shutdown.

use std::future::Future;
use std::ops::Deref;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::accept::Shutdown;
pub use crate::park::RequestBody;
use crate::park::{self, Stream, Wake};

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

/// The hyper connection builders (HTTP/1.1 and h2, chosen by the first bytes), made once per
/// server with its limits and timers.
pub struct Http {
    auto: Builder<TokioExecutor>,
    http1: hyper::server::conn::http1::Builder,
    /// Also bounds an HTTP/2 preface from its first byte on (hyper's timer only starts after
    /// it).
    header_read_timeout: Duration,
}

/// HTTP/2 streams one connection may have open at once (RFC 9113 recommends at least 100).
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

/// The hyper connection builders for these limits.
pub fn builder(limits: &HttpLimits) -> Http {
    // Only connections that opened with the HTTP/2 preface reach it.
    let mut auto = Builder::new(TokioExecutor::new()).http2_only();
    auto.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Said, not left to hyper's default (200): the requests one connection may have in
        // flight at once, each of which may hold an upstream connection or a handler.
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    Http {
        auto,
        http1,
        header_read_timeout: limits.header_read_timeout,
    }
}

/// Serves `service` on `io` until the connection ends; on `shutdown`, stops taking new
/// requests and lets the ones in flight finish.
pub fn serve_connection<'a, H, IO, S, B>(
    http: H,
    io: IO,
    service: S,
    shutdown: Shutdown,
) -> impl Future<Output = ()> + Send + 'a
where
    H: Deref<Target = Http> + Send + Sync + 'a,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<RequestBody>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_connection_until(http, io, service, shutdown, std::future::pending())
}

/// [`serve_connection`], cut at once (requests in flight included) when `cut` resolves: for a
/// client that is no longer trusted (see [`crate::recheck::until_refused`]).
///
/// An HTTP/1 connection waiting for its next request holds no hyper state: between requests
/// it is taken apart and waits for bytes with a 32-byte buffer (see `park`). HTTP/2
/// connections (the preface, with or without ALPN) are served by hyper throughout.
///
/// Not an `async fn`, as none of the entry points here are: an `async fn` keeps its arguments
/// in its future for as long as it lives, even after they were moved on, so the TLS stream
/// (about 1.3 KB) would be held twice by every connection, idle ones too.
pub fn serve_connection_until<'a, H, IO, S, B, C>(
    http: H,
    io: IO,
    service: S,
    shutdown: Shutdown,
    cut: C,
) -> impl Future<Output = ()> + Send + 'a
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<RequestBody>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    C: Future<Output = ()> + Send + 'a,
    H: Deref<Target = Http> + Send + Sync + 'a,
{
    serve(
        http,
        Box::new(Stream::new(io, None)),
        service,
        shutdown,
        Box::pin(cut),
    )
}

/// [`serve_connection_until`] for a connection that may be upgraded (WebSocket, `Upgrade:`):
/// an upgraded stream lives on in the application after hyper lets go of it, so this returns
/// only once that stream is gone too (the caller's connection slot stays taken), and `cut`
/// or `shutdown` still end it, by shutting `socket` (a duplicate of the connection's TCP
/// socket, see [`duplicate_socket`]) down under it.
pub fn serve_connection_upgradable<'a, H, IO, S, B, C>(
    http: H,
    io: IO,
    service: S,
    shutdown: Shutdown,
    cut: C,
    socket: std::net::TcpStream,
) -> impl Future<Output = ()> + Send + 'a
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<RequestBody>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    C: Future<Output = ()> + Send + 'a,
    H: Deref<Target = Http> + Send + Sync + 'a,
{
    let (gone_tx, gone) = tokio::sync::oneshot::channel::<()>();
    let stream = Box::new(Stream::new(io, Some(gone_tx)));
    let mut cut = Box::pin(cut);
    async move {
        let fired = std::sync::atomic::AtomicBool::new(false);
        let watched = async {
            cut.as_mut().await;
            fired.store(true, std::sync::atomic::Ordering::Relaxed);
        };
        tokio::pin!(watched);
        let mut stopping = shutdown.clone();
        serve(http, stream, service, shutdown, watched.as_mut()).await;
        if !fired.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::select! {
                // The stream is gone: not upgraded, or the upgraded stream ended.
                _ = gone => return,
                _ = watched.as_mut() => {}
                // An upgraded stream has no end of its own to wait for: the server stopping
                // ends it.
                _ = stopping.wait() => {}
            }
        }
        // Reads and writes of whoever holds the stream now fail; the socket closes when they
        // drop it.
        let _ = socket.shutdown(std::net::Shutdown::Both);
    }
}

/// A second handle on `tcp`'s socket, for [`serve_connection_upgradable`]: shutting it down
/// ends the connection whoever holds the stream.
pub fn duplicate_socket(tcp: &tokio::net::TcpStream) -> std::io::Result<std::net::TcpStream> {
    use std::os::fd::AsFd;
    Ok(std::net::TcpStream::from(tcp.as_fd().try_clone_to_owned()?))
}

/// `cut` is a pointer to a pinned future (`Unpin`): this future keeps it for as long as the
/// connection lives.
async fn serve<H, IO, S, B, C>(
    http: H,
    mut stream: Box<Stream<IO>>,
    service: S,
    mut shutdown: Shutdown,
    mut cut: C,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<RequestBody>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    C: Future<Output = ()> + Unpin,
    H: Deref<Target = Http> + Sync,
{
    // Boxed once (by the caller): parking and unparking move a pointer, not the TLS state.
    let activity = stream.activity.clone();
    let stop = shutdown.wait();
    tokio::pin!(stop);
    // No hyper state until the first bytes, which also say HTTP/1 or HTTP/2. From the first
    // byte on, the rest of a preface is timed like a request head.
    let first = tokio::select! {
        w = async {
            if stream.wake(false).await == Wake::Closed {
                return Wake::Closed;
            }
            tokio::time::timeout(http.header_read_timeout, stream.wake(true))
                .await
                .unwrap_or(Wake::Closed)
        } => w,
        _ = stop.as_mut() => Wake::Closed,
        _ = &mut cut => Wake::Closed,
    };
    match first {
        Wake::Closed => return,
        Wake::Http2 => {
            // Boxed: only HTTP/2 connections pay for hyper's HTTP/2 state in their task.
            let mut serving = Box::pin(
                http.auto
                    .serve_connection_with_upgrades(TokioIo::new(stream), park::Unwatched(service)),
            );
            tokio::select! {
                r = serving.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                        activity.linger();
                    }
                }
                _ = stop.as_mut() => {
                    serving.as_mut().graceful_shutdown();
                    tokio::select! {
                        _ = serving.as_mut() => {}
                        _ = &mut cut => {}
                    }
                }
                _ = &mut cut => {}
            }
            return;
        }
        Wake::Http1 => {}
    }
    let mut service = park::Tracked {
        inner: service,
        activity: activity.clone(),
    };
    loop {
        activity.handed_over();
        let mut conn = Box::new(
            http.http1
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades(),
        );
        let serving = std::future::poll_fn(|cx| {
            use std::task::Poll;
            let mut poll = |cx: &mut std::task::Context<'_>| {
                std::future::Future::poll(std::pin::Pin::new(&mut *conn), cx).map(Some)
            };
            match poll(cx) {
                Poll::Pending if activity.at_rest() => {}
                other => return other,
            }
            // Between requests, everything written: take hyper apart (as nginx frees a
            // keep-alive connection's buffers after each request). Asked twice: a Pending can
            // also be hyper yielding to the scheduler with work left (after 16 rounds); only
            // a second one in a row is rest.
            match poll(cx) {
                Poll::Pending if activity.at_rest() => Poll::Ready(None),
                other => other,
            }
        });
        let ended = tokio::select! {
            r = serving => r,
            _ = stop.as_mut() => {
                std::pin::Pin::new(&mut *conn).graceful_shutdown();
                tokio::select! {
                    _ = &mut *conn => {}
                    _ = &mut cut => {}
                }
                return;
            }
            _ = &mut cut => return,
        };
        match ended {
            Some(Ok(())) => return,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "connection ended with an error");
                activity.linger();
                return;
            }
            None => {}
        }
        let Some(parts) = conn.into_parts() else {
            return;
        };
        stream = parts.io.into_inner();
        service = parts.service;
        if !parts.read_buf.is_empty() {
            // A pipelined head's first bytes: straight back to hyper, which times that head.
            stream.unread(parts.read_buf);
            continue;
        }
        // Even empty, it holds hyper's read buffer: gone before waiting.
        drop(parts.read_buf);
        let woke = tokio::select! {
            w = stream.wake(false) => w,
            _ = stop.as_mut() => {
                tokio::select! {
                    _ = tokio::io::AsyncWriteExt::shutdown(&mut stream) => {}
                    _ = &mut cut => {}
                }
                return;
            }
            _ = &mut cut => return,
        };
        if woke == Wake::Closed {
            return;
        }
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
    S: hyper::service::Service<http::Request<RequestBody>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let http = std::sync::Arc::new(builder(&limits));
    let sd = shutdown.clone();
    crate::accept::accept_loop(listener, slots, shutdown, move |tcp, _, slot| {
        let (http, service, shutdown) = (http.clone(), service.clone(), sd.clone());
        let serving = serve_connection(
            http,
            mtls_tls::IdleTimeout::new(tcp, idle),
            service,
            shutdown,
        );
        async move {
            let _slot = slot;
            serving.await;
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
    let service = hyper::service::service_fn(move |req: http::Request<RequestBody>| {
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
