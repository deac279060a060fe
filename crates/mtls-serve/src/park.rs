//! What lets an HTTP/1 connection that waits for its next request hold no hyper state.
//!
//! hyper keeps a read buffer (8–16 KiB), a write buffer (8 KiB) and its connection state for as
//! long as a keep-alive connection is open, idle or not. Between requests [`crate::http`]
//! takes the connection apart (`into_parts`) and waits for the next bytes itself, with a
//! 32-byte buffer, so an idle connection holds only its TLS state. Taking hyper apart is only
//! safe at a message boundary; the three pieces here say when that is:
//! - [`Stream`], the byte stream hyper is given: whether its last read found nothing, and
//!   whether everything written was flushed (hyper flushes only with an empty write buffer);
//! - [`Tracked`], the service: whether a request is still being answered, and whether the
//!   latest request's body was read to the end ([`RequestBody`]; until then hyper may still be
//!   reading it, and its bytes must never be parsed as a request);
//! - [`Answer`], the response body: the answer ends when hyper drops it.
//!
//! It also gives the bytes read while parked back to hyper, and, when the connection ended with a
//! protocol error, closes it lingering (see [`Stream`]'s `Drop`).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The state of one connection as its three pieces see it (`Relaxed`: each field is a note on
/// its own; the connection's task reads them after hyper's poll).
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Requests whose answer is not finished: service future or response body alive.
    answering: AtomicUsize,
    /// The number of the latest request while its body is not read to the end (hyper may still
    /// be reading it); 0 when there is none.
    body: AtomicU64,
    /// Requests so far (numbers the bodies).
    requests: AtomicU64,
    /// A request head was read since hyper was given the stream. Until then the connection is
    /// not parked again: the bytes that woke it are the start of a head, under hyper's
    /// header-read timeout.
    requested: AtomicBool,
    /// hyper's latest read found nothing to read.
    read_pending: AtomicBool,
    /// hyper was given bytes to write since the last completed flush (written or not: a write
    /// the socket was not ready for leaves the whole answer in hyper's buffer).
    unflushed: AtomicBool,
    /// hyper has started closing the connection (a close it decided on: `Connection: close`,
    /// HTTP/1.0, an error): it is never taken apart again.
    closing: AtomicBool,
    /// The connection ended with a protocol error: close it lingering.
    linger: AtomicBool,
}

impl Activity {
    /// hyper is between requests, has written everything and waits for bytes.
    pub(crate) fn at_rest(&self) -> bool {
        self.answering.load(Relaxed) == 0
            && self.body.load(Relaxed) == 0
            && self.requested.load(Relaxed)
            && self.read_pending.load(Relaxed)
            && !self.unflushed.load(Relaxed)
            && !self.closing.load(Relaxed)
    }

    /// hyper gets the stream (again): it must read a request head before it is parked.
    pub(crate) fn handed_over(&self) {
        self.requested.store(false, Relaxed);
        self.read_pending.store(false, Relaxed);
    }

    pub(crate) fn linger(&self) {
        self.linger.store(true, Relaxed);
    }
}

/// The first bytes of an HTTP/2 connection (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Bytes arrived (for a new connection: not an HTTP/2 preface).
    Http1,
    /// A new connection opened with the HTTP/2 preface.
    Http2,
    /// The client closed, the stream failed or stayed idle too long.
    Closed,
}

/// The stream hyper reads and writes: the connection's stream plus the bytes read while the
/// connection was parked.
pub(crate) struct Stream<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    io: Option<IO>,
    /// Bytes read while parked, given to hyper first.
    pre: [u8; 32],
    pre_start: u8,
    pre_end: u8,
    /// What hyper had read and not parsed when it was taken apart (a pipelined head's start).
    rest: Bytes,
    /// A read error met after handing `pre` out, reported on the next read.
    error: Option<io::Error>,
    pub(crate) activity: Arc<Activity>,
    /// Dropped with the stream: tells the connection that an upgraded stream has ended.
    _on_drop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream<IO> {
    pub(crate) fn new(io: IO, on_drop: Option<tokio::sync::oneshot::Sender<()>>) -> Self {
        Stream {
            io: Some(io),
            pre: [0; 32],
            pre_start: 0,
            pre_end: 0,
            rest: Bytes::new(),
            error: None,
            activity: Arc::default(),
            _on_drop: on_drop,
        }
    }

    /// Gives hyper these bytes before anything else it reads.
    pub(crate) fn unread(&mut self, rest: Bytes) {
        self.rest = rest;
    }

    /// Waits for the next bytes (read into `pre`). With `sniff`, the start of a connection:
    /// reads on while what arrived could still be an HTTP/2 preface, and says which it is.
    pub(crate) async fn wake(&mut self, sniff: bool) -> Wake {
        std::future::poll_fn(|cx| self.poll_wake(cx, sniff)).await
    }

    fn poll_wake(&mut self, cx: &mut Context<'_>, sniff: bool) -> Poll<Wake> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Wake::Closed);
        };
        loop {
            let filled = &self.pre[usize::from(self.pre_start)..usize::from(self.pre_end)];
            if !filled.is_empty() {
                if !sniff {
                    return Poll::Ready(Wake::Http1);
                }
                let n = filled.len().min(H2_PREFACE.len());
                if filled[..n] != H2_PREFACE[..n] {
                    return Poll::Ready(Wake::Http1);
                }
                if n == H2_PREFACE.len() {
                    return Poll::Ready(Wake::Http2);
                }
            }
            let mut buf = ReadBuf::new(&mut self.pre[usize::from(self.pre_end)..]);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "connection closed while idle");
                    return Poll::Ready(Wake::Closed);
                }
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    if n == 0 {
                        return Poll::Ready(Wake::Closed);
                    }
                    // `pre` is 32 bytes: the sum fits.
                    self.pre_end = self.pre_end.saturating_add(n as u8);
                }
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Stream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.error.take() {
            return Poll::Ready(Err(e));
        }
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let pre = &this.pre[usize::from(this.pre_start)..usize::from(this.pre_end)];
        if !pre.is_empty() || !this.rest.is_empty() {
            let n = pre.len().min(buf.remaining());
            buf.put_slice(&pre[..n]);
            this.pre_start = this.pre_start.saturating_add(n as u8);
            if this.pre_start == this.pre_end {
                (this.pre_start, this.pre_end) = (0, 0);
                let m = this.rest.len().min(buf.remaining());
                buf.put_slice(&this.rest[..m]);
                this.rest.advance(m);
                // The rest of a request is usually there already: one read for hyper, not two.
                if this.rest.is_empty() && buf.remaining() > 0 {
                    if let Poll::Ready(Err(e)) = Pin::new(io).poll_read(cx, buf) {
                        this.error = Some(e);
                    }
                }
            }
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(io).poll_read(cx, buf);
        this.activity.read_pending.store(r.is_pending(), Relaxed);
        r
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream<IO> {
    /// Notes bytes to write before the socket is asked: if it is not ready, hyper still holds
    /// them until a flush completes.
    fn writing(&self, len: usize) {
        if len > 0 {
            self.activity.unflushed.store(true, Relaxed);
        }
    }
}

macro_rules! inner {
    ($this:ident) => {
        match $this.io.as_mut() {
            Some(io) => Pin::new(io),
            None => return Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    };
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Stream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.writing(buf.len());
        inner!(this).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.writing(bufs.iter().map(|b| b.len()).sum());
        inner!(this).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = inner!(this).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            this.activity.unflushed.store(false, Relaxed);
        }
        r
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.activity.closing.store(true, Relaxed);
        inner!(this).poll_shutdown(cx)
    }
}

/// Longest a closed connection is drained of what its client still sends (nginx's
/// `lingering_time` idea, bounded in time and bytes).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// When the connection ended with a protocol error (hyper answered a malformed or oversize
/// request with 400 or 431 and closes while the client may still be sending), dropping the
/// stream shuts the write side down (the answer and a FIN go out) and reads and discards what
/// the client still sends, bounded, before closing: closing with unread data would send a
/// reset that can destroy the answer before the client reads it.
impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Stream<IO> {
    fn drop(&mut self) {
        if !self.activity.linger.load(Relaxed) {
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

/// The service, counting the answers under way and noting request bodies.
#[derive(Clone)]
pub(crate) struct Tracked<S> {
    pub(crate) inner: S,
    pub(crate) activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<http::Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<http::Request<RequestBody>, Response = http::Response<B>>,
{
    type Response = http::Response<Answer<B>>;
    type Error = S::Error;
    type Future = Answering<S::Future>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let a = &self.activity;
        a.requested.store(true, Relaxed);
        let n = a.requests.fetch_add(1, Relaxed).wrapping_add(1).max(1);
        // hyper reads the next head only after this request's body: a body seen now is the
        // only one that can still be unread.
        let watch = if req.body().is_end_stream() {
            a.body.store(0, Relaxed);
            None
        } else {
            a.body.store(n, Relaxed);
            Some(BodyWatch(a.clone(), n))
        };
        a.answering.fetch_add(1, Relaxed);
        Answering {
            fut: self
                .inner
                .call(req.map(|inner| RequestBody { inner, watch })),
            guard: Some(AnswerGuard(a.clone())),
        }
    }
}

/// The service for HTTP/2 connections, which are never taken apart: bodies are not watched.
#[derive(Clone)]
pub(crate) struct Unwatched<S>(pub(crate) S);

impl<S: hyper::service::Service<http::Request<RequestBody>>>
    hyper::service::Service<http::Request<Incoming>> for Unwatched<S>
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        self.0
            .call(req.map(|inner| RequestBody { inner, watch: None }))
    }
}

/// A request's body: hyper's, noting when the application has read it to the end (then hyper
/// has too, and the connection may be taken apart after the answer).
#[derive(Debug)]
pub struct RequestBody {
    inner: Incoming,
    watch: Option<BodyWatch>,
}

#[derive(Debug)]
struct BodyWatch(Arc<Activity>, u64);

impl RequestBody {
    fn read_to_end(&mut self) {
        if let Some(BodyWatch(a, n)) = self.watch.take() {
            // Only if no later request has started (it cannot have: hyper reads the next head
            // after this body), so a late note never clears another request's body.
            let _ = a.body.compare_exchange(n, 0, Relaxed, Relaxed);
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.read_to_end(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.read_to_end(),
            _ => {}
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// One answer under way; dropping it ends the answer.
pub(crate) struct AnswerGuard(Arc<Activity>);

impl Drop for AnswerGuard {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// The service's future; its response's body carries the answer on.
    pub(crate) struct Answering<F> {
        #[pin]
        fut: F,
        guard: Option<AnswerGuard>,
    }
}

impl<F, B, E> std::future::Future for Answering<F>
where
    F: std::future::Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<Answer<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let r = std::task::ready!(this.fut.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(r.map(|resp| {
            resp.map(|body| Answer {
                body,
                _guard: guard,
            })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body; the answer ends when hyper drops it (after its last frame).
    pub(crate) struct Answer<B> {
        #[pin]
        body: B,
        _guard: Option<AnswerGuard>,
    }
}

impl<B: http_body::Body> http_body::Body for Answer<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
