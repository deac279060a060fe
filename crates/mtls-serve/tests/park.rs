//! HTTP/1 connections are taken apart between requests and rebuilt when bytes arrive: every
//! request is still answered once and in order (pauses, pipelining, heads split anywhere), a
//! body the application did not read is never taken for a request, the header-read timeout
//! still cuts a slow head, idle connections live by the idle timeout, shutdown closes them,
//! and HTTP/2 by preface is still served. A socket that blocks a write or the close never gets
//! a connection taken apart while hyper still holds an answer or has decided to close.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mtls_serve::http::{builder, serve_connection, HttpLimits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    stop: mtls_serve::accept::ShutdownTrigger,
    choke: Arc<Choke>,
}

/// What the server's sockets do next, as a full send buffer would: from the next write (or
/// the next close) on, the socket is not ready for 100 ms.
#[derive(Default)]
struct Choke {
    next_write: AtomicBool,
    next_shutdown: AtomicBool,
    until: Mutex<Option<Instant>>,
}

impl Choke {
    /// True while the socket is not ready (starting now if `flag` was set); the task is woken
    /// when it is ready again.
    fn blocks(&self, flag: &AtomicBool, cx: &Context<'_>) -> bool {
        let mut until = self.until.lock().unwrap();
        if flag.swap(false, Ordering::SeqCst) {
            *until = Some(Instant::now() + Duration::from_millis(100));
        }
        let Some(t) = *until else { return false };
        if Instant::now() >= t {
            *until = None;
            return false;
        }
        let waker = cx.waker().clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(t.into()).await;
            waker.wake();
        });
        true
    }
}

struct Choked<IO> {
    io: IO,
    choke: Arc<Choke>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Choked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Choked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if !buf.is_empty() && self.choke.blocks(&self.choke.next_write, cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if bufs.iter().any(|b| !b.is_empty()) && self.choke.blocks(&self.choke.next_write, cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.choke.blocks(&self.choke.next_shutdown, cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// `/echo` answers its body, `/ignore` answers without reading it, `/half` after reading its
/// first frame, `/later` at once and reads its body in a task of its own, `/slow` after 200 ms;
/// everything else answers `ok <path>`. Every request's path is recorded.
async fn server(header_read_timeout: Duration, idle: Duration) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (stop, shutdown) = mtls_serve::shutdown();
    let http = Arc::new(builder(&HttpLimits {
        header_read_timeout,
        ..HttpLimits::default()
    }));
    let s = seen.clone();
    let choke = Arc::new(Choke::default());
    let c = choke.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (http, seen, shutdown) = (http.clone(), s.clone(), shutdown.clone());
            let choke = c.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: http::Request<mtls_serve::http::RequestBody>| {
                        let seen = seen.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            seen.lock().unwrap().push(path.clone());
                            let body = match path.as_str() {
                                "/echo" => req.into_body().collect().await.unwrap().to_bytes(),
                                "/ignore" => Bytes::from_static(b"ignored"),
                                "/half" => {
                                    let mut body = req.into_body();
                                    let _ = body.frame().await;
                                    Bytes::from_static(b"ignored")
                                }
                                "/later" => {
                                    // Read to the end by a task of its own, after the answer.
                                    let body = req.into_body();
                                    tokio::spawn(async move {
                                        tokio::time::sleep(Duration::from_millis(50)).await;
                                        let _ = body.collect().await;
                                    });
                                    Bytes::from_static(b"later")
                                }
                                "/slow" => {
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                    Bytes::from_static(b"slow")
                                }
                                p => Bytes::from(format!("ok {p}")),
                            };
                            Ok::<_, Infallible>(http::Response::new(Full::new(body)))
                        }
                    },
                );
                let io = Choked {
                    io: mtls_tls::IdleTimeout::new(tcp, idle),
                    choke,
                };
                serve_connection(&*http, io, service, shutdown).await;
            });
        }
    });
    Server {
        addr,
        seen,
        stop,
        choke,
    }
}

/// Reads one response (`Content-Length` framed) and returns its body, or `None` if the
/// connection closed first.
async fn response(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                assert!(head.starts_with("http/1.1 200"), "{head}");
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                buf.drain(..end + 4 + len);
                return Some(body);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
            .await
            .expect("no answer within 5 s")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
}

/// Long enough for the server to have parked the connection.
async fn pause() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_across_pauses_pipelining_and_split_heads() {
    let s = server(Duration::from_secs(5), Duration::from_secs(60)).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..5 {
        tcp.write_all(get(&format!("/a{i}")).as_bytes())
            .await
            .unwrap();
        assert_eq!(
            response(&mut tcp, &mut buf).await.unwrap(),
            format!("ok /a{i}")
        );
        pause().await;
    }
    // A body, read by the application, then an idle pause.
    tcp.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    assert_eq!(response(&mut tcp, &mut buf).await.unwrap(), "hello");
    pause().await;
    // Chunked, in two writes.
    tcp.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    )
    .await
    .unwrap();
    pause().await;
    tcp.write_all(b"2\r\nde\r\n0\r\n\r\n").await.unwrap();
    assert_eq!(response(&mut tcp, &mut buf).await.unwrap(), "abcde");
    pause().await;
    // Three pipelined in one write, the middle one slow.
    let three = format!("{}{}{}", get("/p1"), get("/slow"), get("/p3"));
    tcp.write_all(three.as_bytes()).await.unwrap();
    for want in ["ok /p1", "slow", "ok /p3"] {
        assert_eq!(response(&mut tcp, &mut buf).await.unwrap(), want);
    }
    pause().await;
    // A head split after a pause, at every few bytes.
    let head = get("/split");
    for part in head.as_bytes().chunks(7) {
        tcp.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(response(&mut tcp, &mut buf).await.unwrap(), "ok /split");
    // A complete request followed by the first bytes of the next: hyper keeps those bytes
    // when it is taken apart, and they must come back to it.
    let both = format!("{}GET /q2 HT", get("/q1"));
    tcp.write_all(both.as_bytes()).await.unwrap();
    assert_eq!(response(&mut tcp, &mut buf).await.unwrap(), "ok /q1");
    pause().await;
    tcp.write_all(b"TP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(response(&mut tcp, &mut buf).await.unwrap(), "ok /q2");
    let seen = s.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            "/a0", "/a1", "/a2", "/a3", "/a4", "/echo", "/echo", "/p1", "/slow", "/p3", "/split",
            "/q1", "/q2"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_body_is_never_taken_for_a_request() {
    let s = server(Duration::from_secs(5), Duration::from_secs(60)).await;
    let smuggled = get("/smuggled");
    for (chunked, path) in [
        (false, "/ignore"),
        (true, "/ignore"),
        (false, "/half"),
        (true, "/half"),
    ] {
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        let mut buf = Vec::new();
        // `/half` gets a first part, which it reads, and the rest after its answer.
        let first = if path == "/half" { "x" } else { "" };
        let (head, body) = if chunked {
            let part = if first.is_empty() {
                String::new()
            } else {
                format!("1\r\n{first}\r\n")
            };
            (
                format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{part}"
                ),
                format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len()),
            )
        } else {
            (
                format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{first}",
                    smuggled.len() + first.len()
                ),
                smuggled.clone(),
            )
        };
        // The answer goes out before the body arrives; the connection then waits for bytes.
        tcp.write_all(head.as_bytes()).await.unwrap();
        assert_eq!(response(&mut tcp, &mut buf).await.unwrap(), "ignored");
        pause().await;
        tcp.write_all(body.as_bytes()).await.unwrap();
        pause().await;
        // Either the body is skipped and the next request answered, or the connection closes.
        if tcp.write_all(get("/after").as_bytes()).await.is_ok() {
            if let Some(b) = response(&mut tcp, &mut buf).await {
                assert_eq!(b, "ok /after");
            }
        }
    }
    let seen = s.seen.lock().unwrap().clone();
    assert!(!seen.iter().any(|p| p == "/smuggled"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_held_up_by_the_socket_is_still_sent() {
    let s = server(Duration::from_secs(5), Duration::from_secs(60)).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..3 {
        tcp.write_all(get(&format!("/w{i}")).as_bytes())
            .await
            .unwrap();
        assert_eq!(
            response(&mut tcp, &mut buf).await.unwrap(),
            format!("ok /w{i}")
        );
        pause().await;
        // The next answer's first write finds the socket full: hyper holds the whole answer.
        s.choke.next_write.store(true, Ordering::SeqCst);
    }
    // Pipelined: each answer still goes to its own request.
    let two = format!("{}{}", get("/x1"), get("/x2"));
    tcp.write_all(two.as_bytes()).await.unwrap();
    assert_eq!(response(&mut tcp, &mut buf).await.unwrap(), "ok /x1");
    assert_eq!(response(&mut tcp, &mut buf).await.unwrap(), "ok /x2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_hyper_closes_is_not_revived() {
    let s = server(Duration::from_secs(5), Duration::from_secs(60)).await;
    let requests = [
        // The client asks for the close.
        "GET /closing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
        // HTTP/1.0 without keep-alive.
        "GET /closing HTTP/1.0\r\nHost: x\r\n\r\n".to_string(),
        // Content-Length and chunked together: hyper closes after it (no desync).
        "POST /closing HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            .to_string(),
    ];
    for request in requests {
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        // Closing the connection finds the socket not ready for a while (as when a TLS
        // close_notify waits for a full send buffer).
        s.choke.next_shutdown.store(true, Ordering::SeqCst);
        tcp.write_all(request.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        // More bytes while the server closes: never served.
        let _ = tcp.write_all(get("/revived").as_bytes()).await;
        let mut all = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut all))
            .await
            .expect("the connection is closed");
        let text = String::from_utf8_lossy(&all);
        assert_eq!(text.matches("HTTP/1.").count(), 1, "{request:?}: {text}");
    }
    let seen = s.seen.lock().unwrap().clone();
    assert!(!seen.iter().any(|p| p == "/revived"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_is_cut_and_an_idle_connection_lives_by_the_idle_timeout() {
    let s = server(Duration::from_millis(500), Duration::from_millis(2500)).await;
    let mut buf = Vec::new();
    // Idle between requests for longer than the header-read timeout: still served.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(get("/one").as_bytes()).await.unwrap();
    assert_eq!(response(&mut tcp, &mut buf).await.unwrap(), "ok /one");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    tcp.write_all(get("/two").as_bytes()).await.unwrap();
    assert_eq!(response(&mut tcp, &mut buf).await.unwrap(), "ok /two");
    // The same after a body the application read to the end (hyper, kept waiting for the next
    // head, would have closed the connection after its header-read timeout).
    tcp.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
        .await
        .unwrap();
    assert_eq!(response(&mut tcp, &mut buf).await.unwrap(), "body");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    tcp.write_all(get("/two-b").as_bytes()).await.unwrap();
    assert_eq!(response(&mut tcp, &mut buf).await.unwrap(), "ok /two-b");
    // And after a body the application read to the end in a task of its own, once the answer
    // had gone out.
    tcp.write_all(b"POST /later HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
        .await
        .unwrap();
    assert_eq!(response(&mut tcp, &mut buf).await.unwrap(), "later");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    tcp.write_all(get("/two-c").as_bytes()).await.unwrap();
    assert_eq!(response(&mut tcp, &mut buf).await.unwrap(), "ok /two-c");
    // A head that starts and does not finish: closed after the header-read timeout.
    let started = Instant::now();
    tcp.write_all(b"GET /slowloris HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert_eq!(response(&mut tcp, &mut buf).await, None);
    let t = started.elapsed();
    assert!(t < Duration::from_millis(2000), "cut after {t:?}");
    // The start of an HTTP/2 preface that does not go on: cut like a slow head.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let started = Instant::now();
    tcp.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert_eq!(response(&mut tcp, &mut buf).await, None);
    let t = started.elapsed();
    assert!(t < Duration::from_millis(2000), "cut after {t:?}");
    // Silent for longer than the idle timeout: closed.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(get("/three").as_bytes()).await.unwrap();
    assert_eq!(response(&mut tcp, &mut buf).await.unwrap(), "ok /three");
    let started = Instant::now();
    assert_eq!(response(&mut tcp, &mut buf).await, None);
    let t = started.elapsed();
    assert!(
        t >= Duration::from_millis(2000) && t < Duration::from_millis(4500),
        "closed after {t:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_waiting_connections_and_lets_answers_finish() {
    let s = server(Duration::from_secs(5), Duration::from_secs(60)).await;
    let mut buf = Vec::new();
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    idle.write_all(get("/before").as_bytes()).await.unwrap();
    assert_eq!(response(&mut idle, &mut buf).await.unwrap(), "ok /before");
    let mut busy = TcpStream::connect(s.addr).await.unwrap();
    busy.write_all(get("/slow").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.stop.trigger();
    let mut b2 = Vec::new();
    assert_eq!(response(&mut busy, &mut b2).await.unwrap(), "slow");
    assert_eq!(
        response(&mut idle, &mut buf).await,
        None,
        "the idle one is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_by_preface_is_served() {
    let s = server(Duration::from_secs(5), Duration::from_secs(60)).await;
    let url = format!("http://{}/h2", s.addr);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-sS",
                "--http2-prior-knowledge",
                "-w",
                " %{http_version}",
                &url,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok /h2 2",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And plain HTTP/1.1 from curl, two requests on one connection.
    let url = format!("http://{}/c1", s.addr);
    let url2 = format!("http://{}/c2", s.addr);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--http1.1", &url, &url2])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok /c1ok /c2");
}
