//! A keep-alive pool of HTTP/1.1 connections to one upstream, for reverse proxies.
//!
//! Unlike a general client, nothing here runs in a task of its own: the caller's task drives
//! the upstream connection while it waits for the response head, and the response body
//! ([`PooledBody`]) drives it while the body is read, then hands the connection back to the
//! pool. A proxied request therefore never crosses tasks (hyper-util's pooled client runs every
//! connection in a spawned task, so each request crossed tasks twice). Idle connections are
//! kept LIFO (the warmest first), up to a bound and an idle timeout, like nginx's `keepalive`.
//! With revocation checks configured, an HTTPS upstream whose certificate is revoked (or
//! expires) while connections to it are open loses them: they are closed instead of taking
//! another request ([`ServerTrust::connection_epoch`]), and the next one's handshake refuses
//! it. What an exchange under way still carries (a streaming answer, an upgraded stream) is
//! for its user to end: a response's [`TrustLapse`] says when.
//!
//! What it does not do: HTTP/2 to the upstream, retries of requests that reached the upstream,
//! or load balancing.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::ServerTrust;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a pool connects.
#[derive(Clone, Debug)]
pub enum PoolTarget {
    /// Plain HTTP to `host:port`.
    Http {
        /// `host:port`.
        addr: String,
    },
    /// HTTPS to `host:port`, the server verified as `server_name`.
    Https {
        /// `host:port`.
        addr: String,
        /// The name the upstream's certificate must carry.
        server_name: ServerName<'static>,
    },
}

/// Why a pooled request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The TCP connection to the upstream failed or timed out.
    #[error("connecting to {addr}: {detail}")]
    Connect {
        /// The upstream address.
        addr: String,
        /// The cause.
        detail: String,
    },
    /// The TLS handshake with the upstream failed.
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        /// The upstream address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("request to {addr}: {source}")]
    Http {
        /// The upstream address.
        addr: String,
        /// The cause.
        source: hyper::Error,
    },
}

/// When the upstream's revocation is checked, what tells the user of a response that its
/// server is no longer trusted: [`TrustLapse::wait`] resolves then, for the user to end what
/// the connection still carries (a streaming answer, an upgraded stream), which no next
/// request would stop. A pooled answer gives it from [`PooledBody::lapse`]; an upgrade's
/// response carries it in its extensions.
#[derive(Clone)]
pub struct TrustLapse {
    trust: Arc<ServerTrust>,
    epoch: u64,
}

impl TrustLapse {
    /// Resolves once the connection's server is no longer trusted (looked at once a second,
    /// by one task for all waiting).
    pub async fn wait(self) {
        self.trust.lapsed(self.epoch).await;
    }
}

/// A connection to the upstream, plain or TLS.
pub enum PoolIo {
    /// Plain TCP.
    Plain(TokioIo<TcpStream>),
    /// TLS over TCP.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Read for PoolIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PoolIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PoolIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for PoolIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PoolIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PoolIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PoolIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            PoolIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            PoolIo::Plain(s) => s.is_write_vectored(),
            PoolIo::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PoolIo::Plain(s) => Pin::new(s).poll_flush(cx),
            PoolIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PoolIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PoolIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One upstream connection: its request sender and the connection future that does its I/O.
struct Conn<B: Body + 'static> {
    sender: http1::SendRequest<B>,
    io: http1::Connection<PoolIo, B>,
    /// The connection epoch it was opened at ([`ServerTrust::connection_epoch`]).
    epoch: u64,
}

impl<B> Conn<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Drives the connection once; `false` when it has ended (closed by the upstream, or an
    /// error).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.io).poll(cx).is_pending()
    }

    /// Whether a pooled connection can take a request now: drives it (so an end of stream
    /// the upstream sent while it was idle is seen) and asks its dispatcher.
    fn usable(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && matches!(self.sender.poll_ready(cx), Poll::Ready(Ok(())))
    }
}

impl<B: Body + 'static> Conn<B> {
    /// Whether the connection, its response read to the end and driven since, may go back
    /// to the pool: its dispatcher asks for a new request only once the request body has
    /// been written to its end too. An upstream that answered before reading the whole
    /// upload leaves the connection mid-body, in no state to park (it would hold the
    /// client's body and a pool slot until someone took it and found it unusable): closed.
    fn reusable(&self) -> bool {
        self.sender.is_ready()
    }
}

struct Idle<B: Body + 'static> {
    conn: Box<Conn<B>>,
    since: Instant,
}

struct Inner<B: Body + 'static> {
    target: PoolTarget,
    tls: Option<tokio_rustls::TlsConnector>,
    /// Where an upstream no longer trusted is noticed (HTTPS with revocation checks).
    trust: Option<Arc<ServerTrust>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<VecDeque<Idle<B>>>,
    opened: AtomicU64,
}

/// A keep-alive pool of HTTP/1.1 connections to one upstream (see the [module docs](self)).
/// Cloning is cheap and shares the pool. Built by
/// [`ClientBuilder::build_pool`](crate::ClientBuilder::build_pool).
pub struct Pool<B: Body + 'static> {
    inner: Arc<Inner<B>>,
}

impl<B: Body + 'static> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

impl<B: Body + 'static> std::fmt::Debug for Pool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

impl<B: Body + 'static> Pool<B> {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle<B>>> {
        // A panic while holding the lock leaves only a queue of connections behind.
        self.inner.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection epoch now: connections opened at another one are closed.
    fn epoch(&self) -> u64 {
        self.inner
            .trust
            .as_ref()
            .map_or(0, |t| t.connection_epoch())
    }

    /// Keeps an idle connection (dropping any that have been idle too long, and this one if
    /// its upstream is no longer trusted).
    fn put(&self, conn: Box<Conn<B>>) {
        if conn.epoch != self.epoch() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
        while idle
            .front()
            .is_some_and(|i| now.duration_since(i.since) >= self.inner.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < self.inner.max_idle {
            idle.push_back(Idle { conn, since: now });
        }
    }
}

impl<B> Pool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(
        target: PoolTarget,
        tls: Option<(Arc<rustls::ClientConfig>, Option<Arc<ServerTrust>>)>,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        let (tls, trust) = tls.unzip();
        Pool {
            inner: Arc::new(Inner {
                target,
                tls: tls.map(tokio_rustls::TlsConnector::from),
                trust: trust.flatten(),
                connect_timeout,
                idle_timeout,
                max_idle,
                idle: Mutex::new(VecDeque::new()),
                opened: AtomicU64::new(0),
            }),
        }
    }

    /// How many connections this pool has opened to the upstream (a measure of reuse).
    pub fn connections_opened(&self) -> u64 {
        self.inner.opened.load(Ordering::Relaxed)
    }

    /// The trust state checking the upstream's revocation status, when it is checked (for a
    /// pool that replaces this one: [`ClientBuilder::crl_floor`](crate::ClientBuilder::crl_floor)).
    pub fn server_trust(&self) -> Option<&Arc<ServerTrust>> {
        self.inner.trust.as_ref()
    }

    /// How many connections are idle in the pool now.
    pub fn idle_connections(&self) -> usize {
        self.lock().len()
    }

    fn addr(&self) -> &str {
        match &self.inner.target {
            PoolTarget::Http { addr } | PoolTarget::Https { addr, .. } => addr,
        }
    }

    /// An idle connection that can take a request, if there is one.
    async fn take_idle(&self) -> Option<Box<Conn<B>>> {
        let epoch = self.epoch();
        loop {
            let mut idle = self.lock().pop_back()?;
            if idle.since.elapsed() >= self.inner.idle_timeout {
                // Older ones are further down: drop them all.
                self.lock().clear();
                return None;
            }
            if idle.conn.epoch != epoch {
                // The upstream is no longer trusted: the others were opened to it too.
                self.lock().retain(|i| i.conn.epoch == epoch);
                continue;
            }
            if std::future::poll_fn(|cx| Poll::Ready(idle.conn.usable(cx))).await {
                return Some(idle.conn);
            }
            tracing::debug!(upstream = %self.addr(), "an idle upstream connection was closed");
        }
    }

    async fn connect(&self) -> Result<Box<Conn<B>>, PoolError> {
        let addr = self.addr();
        // Before the handshake: a change during it counts against this connection.
        let epoch = self.epoch();
        let err = |detail: String| PoolError::Connect {
            addr: addr.to_string(),
            detail,
        };
        let tcp = tokio::time::timeout(self.inner.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| err(format!("timed out after {:?}", self.inner.connect_timeout)))?
            .map_err(|e| err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let io = match (&self.inner.target, &self.inner.tls) {
            (PoolTarget::Https { server_name, .. }, Some(tls)) => {
                let stream = tokio::time::timeout(
                    self.inner.connect_timeout,
                    tls.connect(server_name.clone(), tcp),
                )
                .await
                .map_err(|_| PoolError::Tls {
                    addr: addr.to_string(),
                    source: std::io::ErrorKind::TimedOut.into(),
                })?
                .map_err(|source| PoolError::Tls {
                    addr: addr.to_string(),
                    source,
                })?;
                PoolIo::Tls(Box::new(TokioIo::new(stream)))
            }
            _ => PoolIo::Plain(TokioIo::new(tcp)),
        };
        tracing::debug!(upstream = %addr, "new upstream connection");
        let (sender, io) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| PoolError::Http {
                addr: addr.to_string(),
                source,
            })?;
        self.inner.opened.fetch_add(1, Ordering::Relaxed);
        // Boxed: it moves between the pool, the request and the response body, each time as
        // a pointer.
        Ok(Box::new(Conn { sender, io, epoch }))
    }

    /// Sends `req` on a pooled connection (or a new one) and waits for the response head,
    /// driving the connection from this task. The body, read to its end, returns the
    /// connection to the pool. A request that an idle connection closed before it was
    /// written is sent again on a new connection; one that reached the upstream is not.
    pub async fn send(&self, mut req: Request<B>) -> Result<Response<PooledBody<B>>, PoolError> {
        loop {
            let Some(mut conn) = self.take_idle().await else {
                // A new connection is the cold path: boxed, so that this future (moved and
                // held for every proxied request) stays a few hundred bytes, not kilobytes.
                return Box::pin(self.send_new(req)).await;
            };
            match exchange(&mut conn, req).await {
                Ok(resp) => return Ok(self.wrap(conn, resp)),
                Err(mut e) => match e.take_message() {
                    // Not written: the pooled connection was already going away.
                    Some(back) => req = back,
                    None => {
                        return Err(PoolError::Http {
                            addr: self.addr().to_string(),
                            source: e.into_error(),
                        })
                    }
                },
            }
        }
    }

    async fn send_new(&self, req: Request<B>) -> Result<Response<PooledBody<B>>, PoolError> {
        let conn = self.connect().await?;
        self.send_on(conn, req).await
    }

    async fn send_on(
        &self,
        mut conn: Box<Conn<B>>,
        req: Request<B>,
    ) -> Result<Response<PooledBody<B>>, PoolError> {
        match exchange(&mut conn, req).await {
            Ok(resp) => Ok(self.wrap(conn, resp)),
            Err(e) => Err(PoolError::Http {
                addr: self.addr().to_string(),
                source: e.into_error(),
            }),
        }
    }

    fn wrap(&self, conn: Box<Conn<B>>, resp: Response<Incoming>) -> Response<PooledBody<B>> {
        let epoch = conn.epoch;
        resp.map(|body| PooledBody {
            body,
            conn: Some(conn),
            pool: self.clone(),
            epoch,
        })
    }

    /// Sends a request that asks for a protocol upgrade (WebSocket) on a new connection that is
    /// never pooled: it runs in a task of its own until the upgraded streams are done.
    pub async fn send_upgrade(&self, req: Request<B>) -> Result<Response<Incoming>, PoolError> {
        let Conn {
            mut sender,
            io,
            epoch,
        } = *self.connect().await?;
        tokio::spawn(async move {
            if let Err(e) = io.with_upgrades().await {
                tracing::debug!(error = %e, "upgraded upstream connection ended");
            }
        });
        let mut resp = sender
            .send_request(req)
            .await
            .map_err(|source| PoolError::Http {
                addr: self.addr().to_string(),
                source,
            })?;
        if let Some(trust) = &self.inner.trust {
            resp.extensions_mut().insert(TrustLapse {
                trust: trust.clone(),
                epoch,
            });
        }
        Ok(resp)
    }
}

/// Sends `req` on `conn` and waits for the response head, driving the connection meanwhile.
async fn exchange<B>(
    conn: &mut Conn<B>,
    req: Request<B>,
) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<B>>>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut response = std::pin::pin!(conn.sender.try_send_request(req));
    let mut alive = true;
    std::future::poll_fn(|cx| {
        if alive {
            // Once the connection has ended, the response future resolves with its error.
            alive = Pin::new(&mut conn.io).poll(cx).is_pending();
        }
        response.as_mut().poll(cx)
    })
    .await
}

/// A response body from a [`Pool`]: reading it drives its upstream connection, and the
/// connection goes back to the pool once the body has been read to its end and the request
/// body written to its end (otherwise it is closed).
pub struct PooledBody<B: Body + 'static> {
    body: Incoming,
    conn: Option<Box<Conn<B>>>,
    pool: Pool<B>,
    /// The connection epoch its connection was opened at.
    epoch: u64,
}

impl<B: Body + 'static> PooledBody<B> {
    /// What resolves once this answer's server is no longer trusted (`None` when the pool
    /// does not check the upstream's revocation).
    pub fn lapse(&self) -> Option<TrustLapse> {
        self.pool.inner.trust.as_ref().map(|trust| TrustLapse {
            trust: trust.clone(),
            epoch: self.epoch,
        })
    }
}

impl<B> Body for PooledBody<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(conn) = this.conn.as_mut() {
            if !conn.drive(cx) {
                // Ended: the body reports how (end of stream or an error).
                this.conn = None;
            }
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            if let Some(conn) = this.conn.take() {
                if conn.reusable() {
                    this.pool.put(conn);
                }
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B: Body + 'static> Drop for PooledBody<B> {
    fn drop(&mut self) {
        // A server does not poll a body that is empty from the start (HEAD, 204, a zero
        // length): the connection is still reusable. One dropped half-read is not.
        if self.body.is_end_stream() {
            if let Some(conn) = self.conn.take() {
                if conn.reusable() {
                    self.pool.put(conn);
                }
            }
        }
    }
}
