//! Client connections for the gateway tests and benchmarks: TLS to "localhost", and HTTP/1.1
//! or h2 connections kept open to watch the server close them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use http_body_util::{BodyExt, Empty};

/// A TLS stream to a test server.
pub type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// TLS to `to` as "localhost".
pub async fn connect(
    to: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(to).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
}

/// An HTTP/1.1 (or, with `h2`, h2) connection on which one `GET /api/secure` got 200 and
/// that is kept open; the handle resolves when the server closes it.
pub async fn open_http(
    to: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    h2: bool,
) -> tokio::task::JoinHandle<()> {
    let tls = connect(to, config).await.unwrap();
    let want: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(want));
    let io = hyper_util::rt::TokioIo::new(tls);
    let req = || {
        http::Request::get("https://localhost/api/secure")
            .header("host", "localhost")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        let closed = tokio::spawn(async move {
            let _ = conn.await;
        });
        let r = send.send_request(req()).await.unwrap();
        assert_eq!(r.status(), 200);
        r.into_body().collect().await.unwrap();
        // Keep the sender: dropping it would let the client end the connection itself.
        tokio::spawn(async move {
            let _keep = send;
            std::future::pending::<()>().await
        });
        closed
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        let closed = tokio::spawn(async move {
            let _ = conn.await;
        });
        let r = send.send_request(req()).await.unwrap();
        assert_eq!(r.status(), 200);
        r.into_body().collect().await.unwrap();
        tokio::spawn(async move {
            let _keep = send;
            std::future::pending::<()>().await
        });
        closed
    }
}
