//! A TLS HTTP/1.1 server whose answers the test writes byte by byte: for clients facing a
//! server that misbehaves (a CA answering with a certificate of another CA, a body that takes
//! its time). One request per connection; the handler writes the whole response, status line
//! and headers included, and the connection is closed after it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use mtls_pki::PrivateKey;
use rustls_pki_types::CertificateDer;

/// What the client asked.
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

pub struct HttpsServer {
    pub addr: SocketAddr,
}

impl HttpsServer {
    /// Serves on `bind` (`127.0.0.1:0`, `[::1]:0`) as `chain` (leaf first) with `key`; every
    /// request goes to `handler`. Runs until the test process ends.
    pub fn start(
        bind: &str,
        chain: Vec<CertificateDer<'static>>,
        key: &PrivateKey,
        handler: impl Fn(&Request, &mut dyn Write) -> std::io::Result<()> + Send + Sync + 'static,
    ) -> HttpsServer {
        let cred =
            mtls_tls::credential_from_parts(chain, key, time::OffsetDateTime::now_utc()).unwrap();
        let resolver = Arc::new(mtls_tls::SniResolver::new(&[cred]).unwrap());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(mtls_tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_cert_resolver(resolver),
        );
        let listener = std::net::TcpListener::bind(bind).unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = Arc::new(handler);
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let (config, handler) = (config.clone(), handler.clone());
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    let Some(req) = read_request(&mut tls) else {
                        return;
                    };
                    if handler(&req, &mut tls).is_ok() {
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                });
            }
        });
        HttpsServer { addr }
    }
}

/// One request: the head up to the blank line, then `Content-Length` bytes of body.
fn read_request(s: &mut impl Read) -> Option<Request> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 << 10 || s.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).ok()?;
    Some(Request { method, path, body })
}

/// A complete response with `status` (`200 OK`), a content type and `body`.
pub fn respond(
    out: &mut dyn Write,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    out.write_all(body)?;
    out.flush()
}
