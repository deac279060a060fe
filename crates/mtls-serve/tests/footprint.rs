//! A connection's serving future stays small whatever it serves: the stream (a TLS stream is
//! about 1.3 KB) and the `cut` future are boxed once, not kept inline, so an idle keep-alive
//! connection's task does not carry them, and its caller can box the whole future cheaply.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use mtls_serve::http::{
    builder, serve_connection, serve_connection_until, serve_connection_upgradable, HttpLimits,
    RequestBody,
};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

/// A stream as large as several TLS streams.
struct Large {
    io: DuplexStream,
    _state: [u8; 8192],
}

impl AsyncRead for Large {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Large {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fn large() -> (Large, DuplexStream) {
    let (io, peer) = tokio::io::duplex(1024);
    (
        Large {
            io,
            _state: [0; 8192],
        },
        peer,
    )
}

async fn ok(_: http::Request<RequestBody>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    Ok(http::Response::new(Full::new(Bytes::new())))
}

/// Well under the 8 KiB stream: the future's own state only.
const SMALL: usize = 2048;

#[tokio::test]
async fn serving_futures_do_not_hold_the_stream_or_the_cut_inline() {
    let http = builder(&HttpLimits::default());
    let (_trigger, shutdown) = mtls_serve::shutdown();
    let service = hyper::service::service_fn(ok);

    let (io, _peer) = large();
    let serving = serve_connection(&http, io, service, shutdown.clone());
    let size = std::mem::size_of_val(&serving);
    assert!(size < SMALL, "serve_connection: {size} bytes");

    let (io, _peer) = large();
    let big_cut = async {
        let state = [0u8; 8192];
        std::future::pending::<()>().await;
        std::hint::black_box(&state);
    };
    let serving = serve_connection_until(&http, io, service, shutdown.clone(), big_cut);
    let size = std::mem::size_of_val(&serving);
    assert!(size < SMALL, "serve_connection_until: {size} bytes");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let socket = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (io, _peer) = large();
    let serving =
        serve_connection_upgradable(&http, io, service, shutdown, std::future::pending(), socket);
    let size = std::mem::size_of_val(&serving);
    assert!(size < SMALL, "serve_connection_upgradable: {size} bytes");
}
