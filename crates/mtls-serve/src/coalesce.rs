//! A TLS 1.3 session ticket without a write (and a wake-up of the client) of its own.
//!
//! A TLS 1.3 server sends its session ticket when the client's `Finished` arrives, after the
//! handshake is over for the client; tokio-rustls flushes it at once, so every connection costs
//! one more `write`, one more packet and one more wake-up of the client than it needs (about a
//! tenth of a full handshake's server CPU on loopback). [`Coalesced`] holds what the TLS layer
//! writes during the poll that completes the handshake and sends it in the same write as the
//! connection's first bytes of application data (or at its first flush). During the
//! handshake every write is held until the TLS layer next reads: what it wrote before waiting
//! for the client reaches the client first. A TLS 1.2 handshake's last flight (the server's
//! `Finished`, which the client waits for) is sent at once, and so is a failed handshake's
//! alert.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's transport under TLS; see the [module](self).
#[derive(Debug)]
pub struct Coalesced<IO> {
    io: IO,
    /// Written by the TLS layer, not yet sent.
    held: Vec<u8>,
    /// Whether the handshake is under way (writes are held until the next read).
    handshaking: bool,
}

impl<IO> Coalesced<IO> {
    pub(crate) fn new(io: IO) -> Self {
        Coalesced {
            io,
            held: Vec::new(),
            handshaking: true,
        }
    }

    /// The handshake is over: what is held goes out with the next write or flush.
    pub(crate) fn established(&mut self) {
        self.handshaking = false;
    }

    /// The transport.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The transport, mutably (writing to it directly would overtake what is held).
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }
}

impl<IO: AsyncWrite + Unpin> Coalesced<IO> {
    /// Sends what is held; ready once nothing is.
    pub(crate) fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        // Give the memory back: a connection holds this only between the handshake and its
        // first write.
        self.held = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesced<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.handshaking {
            // The TLS layer waits for the client: what it wrote must reach the client first.
            ready!(this.poll_send_held(cx))?;
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalesced<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.handshaking {
            let mut n = 0;
            for b in bufs {
                this.held.extend_from_slice(b);
                n += b.len();
            }
            return Poll::Ready(Ok(n));
        }
        if this.held.is_empty() {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        // What is held goes first, in the same write as the caller's bytes.
        let mut slices = Vec::with_capacity(bufs.len() + 1);
        slices.push(IoSlice::new(&this.held));
        slices.extend(bufs.iter().map(|b| IoSlice::new(b)));
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, &slices))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        let held = this.held.len();
        if n > held {
            this.held = Vec::new();
            return Poll::Ready(Ok(n - held));
        }
        // Only (part of) what was held went out: the rest of it, then the caller's bytes.
        this.held.drain(..n);
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.handshaking {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
