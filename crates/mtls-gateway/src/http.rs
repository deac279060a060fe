//! HTTP mode: a reverse proxy that authorizes every request against the verified identity.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper_util::rt::TokioIo;
use mtls_serve::http::RequestBody;
use mtls_serve::recheck::ConnectionIdentity;
use mtls_serve::{ApiError, Slot};

use crate::identity::{self, IdentityHeaders};
use crate::server::Shared;

/// The body of every answer: the gateway's own (JSON errors) or an upstream's
/// (`UpstreamBody`), whose errors (the upstream's, or a cut after reload) end the transfer.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The upstream connections of a listener, driven by the task of the request being proxied.
pub type UpstreamPool = mtls_client::pool::Pool<Upload>;

/// A request body on its way upstream, noting when its last byte went: the upstream's time to
/// answer (`upstream_timeout`) counts from there, so a client uploading slowly is not taken for
/// an upstream that does not answer. While the body is still coming, whose pace it is tells
/// the two apart: waiting for the client's next bytes is the client's (`body_timeout` ends a
/// stalled upload with 408); holding bytes the upstream does not take is the upstream's,
/// bounded by `upstream_timeout` like an answer.
pub struct Upload {
    body: RequestBody,
    /// Only for requests with a body (none is allocated for the others).
    progress: Option<Arc<Progress>>,
}

/// How far a request body got; shared between the body (polled by the upstream connection)
/// and the request's wait for the answer.
struct Progress {
    /// When the body ended (its last frame, or an error); unset while it is still coming.
    ended: std::sync::OnceLock<tokio::time::Instant>,
    /// The upstream asked for more and the client has not sent it yet.
    waiting_for_client: std::sync::atomic::AtomicBool,
    /// When the upstream connection last took a frame (or the request started).
    taken: std::sync::Mutex<tokio::time::Instant>,
}

impl Upload {
    fn new(body: RequestBody) -> (Self, Option<Arc<Progress>>) {
        use hyper::body::Body as _;
        let progress = (!body.is_end_stream()).then(|| {
            Arc::new(Progress {
                ended: std::sync::OnceLock::new(),
                waiting_for_client: std::sync::atomic::AtomicBool::new(false),
                taken: std::sync::Mutex::new(tokio::time::Instant::now()),
            })
        });
        (
            Upload {
                body,
                progress: progress.clone(),
            },
            progress,
        )
    }
}

impl hyper::body::Body for Upload {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        use std::sync::atomic::Ordering;
        let r = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        let Some(progress) = &self.progress else {
            return r;
        };
        match &r {
            std::task::Poll::Pending => {
                progress.waiting_for_client.store(true, Ordering::Relaxed);
            }
            std::task::Poll::Ready(frame) => {
                let now = tokio::time::Instant::now();
                progress.waiting_for_client.store(false, Ordering::Relaxed);
                if let Ok(mut taken) = progress.taken.lock() {
                    *taken = now;
                }
                let last = match frame {
                    Some(Ok(_)) => self.body.is_end_stream(),
                    None | Some(Err(_)) => true,
                };
                if last {
                    let _ = progress.ended.set(now);
                }
            }
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Who was too slow for [`within`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Late {
    /// No answer within `upstream_timeout`, or the upstream stopped taking the body.
    Upstream,
    /// The client paused its request body for longer than `body_timeout`.
    ClientBody,
}

/// Waits for `answer` until `timeout` has passed since the later of now and the end of the
/// request body; while the body is still coming, `body_timeout` from its last frame while the
/// client is the one to send, and `timeout` from the last frame the upstream took while it is
/// the one not taking it.
async fn within<T>(
    timeout: std::time::Duration,
    body_timeout: std::time::Duration,
    progress: Option<&Progress>,
    answer: impl std::future::Future<Output = T>,
) -> Result<T, Late> {
    let mut answer = std::pin::pin!(answer);
    // With a body still to come, looked at again once either limit could have passed.
    let first = match progress {
        Some(_) => timeout.min(body_timeout),
        None => timeout,
    };
    let mut deadline = tokio::time::Instant::now() + first;
    loop {
        tokio::select! {
            r = answer.as_mut() => return Ok(r),
            _ = tokio::time::sleep_until(deadline) => {
                let p = progress.ok_or(Late::Upstream)?;
                let now = tokio::time::Instant::now();
                let taken = || p.taken.lock().map(|t| *t).map_err(|_| Late::Upstream);
                let (until, late) = match p.ended.get() {
                    Some(ended) => (*ended + timeout, Late::Upstream),
                    // Still uploading, the client's pace: its last frame was taken at once.
                    None if p.waiting_for_client.load(std::sync::atomic::Ordering::Relaxed) => {
                        (taken()? + body_timeout, Late::ClientBody)
                    }
                    // Still uploading, bytes held that the upstream does not take.
                    None => (taken()? + timeout, Late::Upstream),
                };
                if until <= now {
                    return Err(late);
                }
                // Never further than either limit from now: who is slow may change before
                // then (the upstream takes the last held bytes, then the client stalls).
                deadline = until.min(now + first);
            }
        }
    }
}

/// A request's hold on the upstream (`limits.max_upstream_requests`, and its client
/// certificate's share, `max_upstream_requests_per_client`), kept until its answer has been
/// read or its tunnel closed.
struct UpstreamSlot {
    _all: tokio::sync::OwnedSemaphorePermit,
    _client: identity::ClientSlot,
}

/// The seed's error body, `{"error":{"code":…,"message":…}}` (one type for every server:
/// [`mtls_serve::ApiError`]).
pub fn json_error(status: StatusCode, code: &'static str, message: &str) -> Response<Body> {
    ApiError::new(status, code, message)
        .to_response::<Full<Bytes>>()
        .map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

/// A connection's client identity (re-verified when trust changes or something expires), with
/// the identity headers encoded once per identity.
pub type ConnIdentity = ConnectionIdentity<Option<Arc<IdentityHeaders>>>;

/// Per-connection context.
pub struct Conn {
    pub shared: Arc<Shared>,
    pub sni: Option<String>,
    pub remote: SocketAddr,
    identity: ConnIdentity,
    /// The client's address as an `X-Forwarded-For` value, encoded once per connection.
    forwarded_for: Option<HeaderValue>,
    /// The connection's slot under `limits.max_connections`, held by tunnels too.
    _slot: Arc<Slot>,
}

impl Conn {
    pub fn new(
        shared: Arc<Shared>,
        identity: ConnIdentity,
        sni: Option<String>,
        remote: SocketAddr,
        slot: Arc<Slot>,
    ) -> Self {
        Conn {
            shared,
            sni,
            forwarded_for: HeaderValue::from_str(&remote.ip().to_string()).ok(),
            remote,
            identity,
            _slot: slot,
        }
    }

    /// Resolves with the reason once this connection's client is no longer trusted (revoked,
    /// expired, its CA no longer in the bundle), whatever the path.
    pub async fn untrusted(&self) -> String {
        self.identity
            .until_untrusted(&self.shared.generations, || {
                self.shared.state.load().server.trust.clone()
            })
            .await
    }

    /// Resolves with the reason once this connection's client is no longer trusted or allowed
    /// on `path` (see [`mtls_serve::recheck::until_refused`]).
    async fn refused(&self, path: &str, checked: u64) -> String {
        mtls_serve::recheck::until_refused(&self.shared.generations, checked, || {
            let state = self.shared.state.load_full();
            self.identity
                .current(state.trust())
                .map_err(|r| r.to_string())
                .and_then(|(peer, _)| state.policy_for(path).check(&peer))
        })
        .await
    }
}

/// The request's host (URI authority first, else `Host`) without port, brackets or a final dot;
/// compared case-insensitively by the caller. Borrowed: this runs on every request.
///
/// Refused (the host could not be checked against the TLS server name, or the upstream could
/// read another one): user info in the authority (`a@b`: `host()` says `b`, an upstream that
/// splits the forwarded Host at `:` reads `a`), more than one `Host`, a `Host` that is not
/// visible ASCII.
fn host_of(req: &Request<RequestBody>) -> Result<Option<&str>, &'static str> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    if req
        .uri()
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        return Err("user info in the request authority");
    }
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => match header {
            None => return Ok(None),
            Some(h) => {
                let h = h.to_str().map_err(|_| "a Host header that is not ASCII")?;
                if h.contains('@') {
                    return Err("user info in the Host header");
                }
                h
            }
        },
    };
    let h = host_without_port(raw).ok_or("a host that is not host[:port]")?;
    Ok(Some(h.trim_end_matches('.')))
}

/// The host of `host[:port]`, or `None` unless it is what a TLS server name can be: a DNS
/// name or IPv4 address (letters, digits, `-`, `.`, `_`) or a bracketed IPv6 address, and a
/// port of at most 5 digits. Anything else (`localhost:443,evil.example`,
/// `[localhost]evil.example`, `localhost:x y`) passed the comparison with the TLS name and
/// reached upstreams that split or normalise it differently, as another host.
fn host_without_port(raw: &str) -> Option<&str> {
    let hp = mtls_serve::hostport::split(raw).ok()?;
    let host_ok = if hp.bracketed {
        hp.host
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    } else {
        hp.host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    // An empty port is allowed (RFC 3986 3.2.3).
    let port_ok = hp
        .port
        .is_none_or(|p| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    (host_ok && port_ok).then_some(hp.host)
}

/// The protocol switches forwarded: WebSocket only. Any other (`h2c` above all) would turn the
/// connection into a raw tunnel to the upstream once it answers 101, in which the client
/// speaks to it directly: past route policies and with identity headers of its own. Such a
/// request is forwarded as a plain request, its `Upgrade` removed (as nginx does by default).
const UPGRADE_PROTOCOL: &str = "websocket";

/// Whether `value` (an `Upgrade` header) names exactly the protocol the gateway forwards.
fn names_upgrade_protocol(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(UPGRADE_PROTOCOL))
}

fn is_upgrade(req: &Request<RequestBody>) -> bool {
    req.method() == http::Method::GET
        && req.headers().get_all(http::header::UPGRADE).iter().count() == 1
        && names_upgrade_protocol(req.headers().get(http::header::UPGRADE))
        && req
            .headers()
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Whether the message's `Transfer-Encoding` (if any) names `chunked` and nothing else, the
/// only coding hyper undoes.
fn only_chunked(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .all(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .all(|t| t.eq_ignore_ascii_case("chunked"))
            })
        })
}

/// Joins the `cookie` fields of an HTTP/2 request into one with "; " (RFC 9113 8.2.3): h2
/// clients send each cookie as a field of its own, and an HTTP/1.1 upstream takes several
/// `Cookie` lines as a malformed request (RFC 6265 5.4) or reads only one of them.
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut crumbs = headers.get_all(http::header::COOKIE).iter();
    let (Some(first), Some(_)) = (crumbs.next(), crumbs.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for crumb in headers.get_all(http::header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(crumb.as_bytes());
    }
    // Each crumb was a valid field value, and so is their join.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(http::header::COOKIE, v);
    }
}

fn boxed(e: ApiError) -> Response<Body> {
    json_error(e.status, e.code, &e.message)
}

/// Handles one request.
pub async fn handle(
    conn: Arc<Conn>,
    mut req: Request<RequestBody>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let shared = conn.shared.clone();
    let state = shared.state.load_full();
    let method = req.method().clone();
    // Shared with a streaming answer's reload watch (see UpstreamBody).
    let path: Arc<str> = req.uri().path().into();
    let identity = conn.identity.current(state.trust());
    let peer = identity.as_ref().ok().map(|(p, _)| p.clone());
    // Why the gateway itself refused the request (the code of its metrics and logs), and the
    // policy's reason when it was the policy.
    let mut refusal: Option<&'static str> = None;
    let mut detail: Option<String> = None;
    let response = 'resp: {
        let host = match host_of(&req) {
            Ok(h) => h,
            Err(why) => {
                refusal = Some("invalid_host");
                break 'resp json_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", why);
            }
        };
        if req.method() == Method::CONNECT {
            // Not a forward proxy: a tunnel to an address of the client's choosing is not
            // what the upstream's policy was written for.
            refusal = Some("method_not_allowed");
            break 'resp json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "CONNECT is not supported: this gateway forwards requests to its upstream",
            );
        }
        if let (Some(sni), Some(host)) = (&conn.sni, host) {
            if !sni.eq_ignore_ascii_case(host) {
                refusal = Some("misdirected_request");
                break 'resp json_error(
                    StatusCode::MISDIRECTED_REQUEST,
                    "MISDIRECTED_REQUEST",
                    "the Host header does not match the TLS server name",
                );
            }
        }
        // The TLS name is the client's choice (any is answered with the default certificate),
        // and connecting by address sends none: the host must be one this listener serves.
        if let Some(host) = host.filter(|h| !state.serves_host(h)) {
            refusal = Some("misdirected_request");
            detail = Some(format!("host {host:?} is not served here"));
            break 'resp json_error(
                StatusCode::MISDIRECTED_REQUEST,
                "MISDIRECTED_REQUEST",
                "the requested host is not served by this listener",
            );
        }
        let (peer, headers) = match &identity {
            Ok(ok) => ok.clone(),
            Err(r) => {
                refusal = Some(r.code());
                break 'resp boxed(ApiError::from_rejection(r));
            }
        };
        if !only_chunked(req.headers()) {
            // hyper undoes `chunked` only: the other codings' bytes would reach the upstream
            // as if they were the body itself (RFC 9112 6.1 allows refusing them).
            refusal = Some("transfer_coding");
            break 'resp json_error(
                StatusCode::NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED",
                "transfer codings other than chunked are not supported",
            );
        }
        if state.has_routes() && !state.can_route(&path) {
            refusal = Some("invalid_path");
            break 'resp json_error(
                StatusCode::BAD_REQUEST,
                "INVALID_PATH",
                "the path is not in canonical form (encoded unreserved characters, dot segments, // or ;, or non-ASCII characters under route_match = \"case-insensitive\"): per-path policies apply only to canonical paths",
            );
        }
        if let Err(reason) = state.policy_for(&path).check(&peer) {
            refusal = Some("not_allowed");
            detail = Some(reason.clone());
            break 'resp boxed(ApiError::invalid_cert(reason));
        }
        let Some(headers) = headers else {
            refusal = Some("identity_not_encodable");
            break 'resp json_error(
                StatusCode::FORBIDDEN,
                "INVALID_CERT",
                "identity cannot be encoded",
            );
        };
        let upgrade = is_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // HTTP/2 requests carry the authority in the URI; HTTP/1.1 upstreams need Host. When
        // the URI has an authority (HTTP/2, or an HTTP/1 absolute-form request), it is the one
        // checked against SNI above and it wins over any Host header (RFC 9112 3.2.2).
        if let Some(a) = parts.uri.authority() {
            match HeaderValue::from_str(a.as_str()) {
                Ok(v) => {
                    parts.headers.insert(HOST, v);
                }
                Err(_) => {
                    refusal = Some("invalid_authority");
                    break 'resp json_error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_REQUEST",
                        "the request authority is not a valid Host",
                    );
                }
            }
        }
        identity::strip(&mut parts.headers, &state.upstream.strip_headers, upgrade);
        if upgrade {
            // `Connection` is hop-by-hop and was removed; an upgrade needs it on this hop too.
            parts.headers.insert(
                http::header::CONNECTION,
                HeaderValue::from_static("upgrade"),
            );
        }
        headers.apply(&mut parts.headers);
        // The client's own forwarding headers were stripped: the gateway is the edge.
        if let Some(v) = &conn.forwarded_for {
            parts
                .headers
                .insert(HeaderName::from_static("x-forwarded-for"), v.clone());
        }
        parts.headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("https"),
        );
        if !parts.headers.contains_key(HOST) {
            // HTTP/1.0 without Host: HTTP/1.1 upstreams need one.
            if let Ok(v) = HeaderValue::from_str(state.upstream.authority.as_str()) {
                parts.headers.insert(HOST, v);
            }
        }
        // Origin form on the upstream hop (the connection is already to the upstream).
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let Ok(uri) = Uri::builder().path_and_query(pq).build() else {
            refusal = Some("invalid_target");
            break 'resp json_error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "invalid request target",
            );
        };
        parts.uri = uri;
        if parts.version == Version::HTTP_2 {
            join_cookies(&mut parts.headers);
        }
        parts.version = Version::HTTP_11;
        {
            use hyper::body::Body as _;
            // A body of unknown length (chunked, or h2 DATA without content-length): hyper's
            // client would send a GET, HEAD or CONNECT without it, taking it for no body
            // (its Transfer-Encoding, hop-by-hop, was stripped), so it is said explicitly.
            if !body.is_end_stream() && body.size_hint().exact().is_none() {
                parts.headers.insert(
                    http::header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
        }
        // Held until the answer has been read (or the tunnel closed).
        let Some(client_slot) = headers.take_slot(shared.limits.max_upstream_requests_per_client)
        else {
            refusal = Some("client_busy");
            break 'resp json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "CLIENT_BUSY",
                "too many requests of this client certificate in flight to the upstream; retry later",
            );
        };
        let Ok(all) = shared.upstream_slots.clone().try_acquire_owned() else {
            refusal = Some("upstream_busy");
            break 'resp json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UPSTREAM_BUSY",
                "too many requests in flight to the upstream; retry later",
            );
        };
        let upstream_slot = UpstreamSlot {
            _all: all,
            _client: client_slot,
        };
        let (body, progress) = Upload::new(body);
        let upstream_req = Request::from_parts(parts, body);
        let pool = &state.upstream.pool;
        let limits = &shared.limits;
        let result = within(
            limits.upstream_timeout,
            limits.body_timeout,
            progress.as_deref(),
            async {
                if upgrade {
                    // Rare and large (it opens a connection): boxed, to keep every request's
                    // future small.
                    Box::pin(pool.send_upgrade(upstream_req))
                        .await
                        .map(|r| r.map(Source::Direct))
                } else {
                    pool.send(upstream_req).await.map(|r| r.map(Source::Pooled))
                }
            },
        )
        .await;
        // Counted, logged (with why, which the client is not told) and answered.
        let failed = |status, code, message, why: &dyn std::fmt::Display| {
            shared.metrics.upstream_errors.inc();
            tracing::warn!(listener = %shared.name, upstream = %state.upstream.authority, "upstream failed: {why}");
            json_error(status, code, message)
        };
        let mut resp = match result {
            Err(Late::ClientBody) => {
                refusal = Some("body_timeout");
                break 'resp json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    "BODY_TIMEOUT",
                    "the request body paused for too long",
                );
            }
            Err(Late::Upstream) => {
                break 'resp failed(
                    StatusCode::GATEWAY_TIMEOUT,
                    "UPSTREAM_TIMEOUT",
                    "the upstream did not answer in time",
                    &"no answer in time",
                );
            }
            Ok(Err(e)) => {
                break 'resp failed(
                    StatusCode::BAD_GATEWAY,
                    "BAD_GATEWAY",
                    "the upstream is unavailable",
                    &mtls_client::ca::error_chain(&e),
                );
            }
            Ok(Ok(r)) => r,
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_none() {
            // A switch the client did not ask for: nothing could carry it.
            break 'resp failed(
                StatusCode::BAD_GATEWAY,
                "BAD_GATEWAY",
                "the upstream answered with an unrequested protocol switch",
                &"a protocol switch nobody asked for",
            );
        }
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && !names_upgrade_protocol(resp.headers().get(http::header::UPGRADE))
        {
            // Switched to something else than what was asked: not carried.
            break 'resp failed(
                StatusCode::BAD_GATEWAY,
                "BAD_GATEWAY",
                "the upstream switched to another protocol than the one asked for",
                &"a protocol switch to another protocol than websocket",
            );
        }
        let (slot, watch) = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                let lapse = resp
                    .extensions_mut()
                    .remove::<mtls_client::pool::TrustLapse>();
                let conn = conn.clone();
                let path = path.clone();
                let checked = state.generation;
                tokio::spawn(async move {
                    let _slot = upstream_slot;
                    if let (Ok(c), Ok(u)) = (client_upgrade.await, upstream_upgrade.await) {
                        let mut c = TokioIo::new(c);
                        let mut u = TokioIo::new(u);
                        // A tunnel is closed when a reload revokes or disallows its client,
                        // like a TCP-mode connection, and when its upstream server stops
                        // being trusted (upstream_crl).
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut c, &mut u) => {}
                            reason = conn.refused(&path, checked) => {
                                tracing::warn!(remote = %conn.remote, %reason, "closing a tunnel after reload");
                            }
                            () = upstream_lapsed(lapse) => {
                                tracing::warn!(remote = %conn.remote, "closing a tunnel: the upstream server is no longer trusted");
                            }
                        }
                    }
                });
            }
            // The tunnel holds the slot and watches for reloads.
            (None, Watch::Off)
        } else {
            if !only_chunked(resp.headers()) {
                // Its body is still gzip (or another coding) once hyper undid `chunked`:
                // forwarded without the header, the client would take it for the body.
                break 'resp failed(
                    StatusCode::BAD_GATEWAY,
                    "BAD_GATEWAY",
                    "the upstream answered with a transfer coding the gateway does not forward",
                    &"a transfer coding other than chunked",
                );
            }
            // Framed both ways: hyper decoded it as chunked (RFC 9112 6.3), so the length is
            // not the body's; forwarded, it would cut the body short.
            if resp.headers().contains_key(http::header::TRANSFER_ENCODING) {
                resp.headers_mut().remove(http::header::CONTENT_LENGTH);
            }
            identity::strip(resp.headers_mut(), &[], false);
            let lapse = match resp.body() {
                Source::Pooled(b) => b.lapse(),
                Source::Direct(_) => resp
                    .extensions_mut()
                    .remove::<mtls_client::pool::TrustLapse>(),
            };
            let watch = Watch::Unarmed {
                conn: conn.clone(),
                path: path.clone(),
                checked: state.generation,
                lapse,
            };
            (Some(upstream_slot), watch)
        };
        resp.map(|body| {
            UpstreamBody {
                body,
                _slot: slot,
                watch,
            }
            .boxed_unsync()
        })
    };
    let status = response.status().as_u16();
    shared
        .metrics
        .request(&shared.name, status, start.elapsed());
    if let Some(reason) = refusal {
        shared.refusals.report(mtls_serve::refusals::Refusal {
            listener: shared.name.to_string(),
            remote: conn.remote.to_string(),
            reason: reason.to_string(),
            detail: detail.clone(),
            stage: "request",
            method: Some(method.as_str().to_string()),
            path: Some(path.to_string()),
            status: Some(status),
            subject: peer.as_ref().map(|p| p.subject().to_string()),
            serial: peer.as_ref().map(|p| p.serial().to_string()),
            fingerprint: peer.as_ref().map(|p| p.fingerprint().to_string()),
            ..Default::default()
        });
    }
    if shared.access_log {
        let line = serde_json::json!({
            "ts": time::OffsetDateTime::now_utc().unix_timestamp(),
            "listener": &*shared.name,
            "remote": conn.remote.to_string(),
            "method": method.as_str(),
            "path": &*path,
            "status": status,
            // Whole microseconds: `0.025`, not `0.024635999999999998`.
            "latency_ms": (start.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            "cn": peer.as_ref().and_then(|p| p.common_name()),
            "serial": peer.as_ref().map(|p| p.serial().to_string()),
            "fingerprint": peer.as_ref().map(|p| p.fingerprint().to_string()),
            "rejection": refusal,
        });
        crate::access_log(&line);
    }
    Ok(response)
}

/// Resolves once the upstream server of an answer is no longer trusted; never without
/// revocation checks on the upstream.
async fn upstream_lapsed(lapse: Option<mtls_client::pool::TrustLapse>) {
    match lapse {
        Some(l) => l.wait().await,
        None => std::future::pending().await,
    }
}

/// What the pool answered with: a pooled connection's body, or (an upgrade the upstream
/// refused) the body of a connection of its own.
enum Source {
    Pooled(mtls_client::pool::PooledBody<Upload>),
    Direct(hyper::body::Incoming),
}

/// A streaming answer's watch over reloads: armed only once the body has to wait for the
/// upstream (most answers end with their first frames and never pay for it).
enum Watch {
    Unarmed {
        conn: Arc<Conn>,
        path: Arc<str>,
        checked: u64,
        /// When the upstream's revocation is checked: its server stopping being trusted.
        lapse: Option<mtls_client::pool::TrustLapse>,
    },
    Armed(std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>),
    Off,
}

/// An upstream answer's body. It holds its request's upstream slot
/// (`limits.max_upstream_requests`) until it is read or dropped, and it is cut, with an error
/// so the client sees a broken transfer rather than an end, when a reload or expiry stops
/// trusting or allowing the client on the path while the answer is still streaming (an
/// event stream, a long download): as a WebSocket tunnel or a TCP-mode connection is.
struct UpstreamBody {
    body: Source,
    _slot: Option<UpstreamSlot>,
    watch: Watch,
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = self.get_mut();
        let frame = match &mut this.body {
            Source::Pooled(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Source::Direct(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(BoxError::from),
        };
        if frame.is_pending() && matches!(this.watch, Watch::Unarmed { .. }) {
            if let Watch::Unarmed {
                conn,
                path,
                checked,
                lapse,
            } = std::mem::replace(&mut this.watch, Watch::Off)
            {
                this.watch = Watch::Armed(Box::pin(async move {
                    tokio::select! {
                        reason = conn.refused(&path, checked) => {
                            tracing::warn!(listener = %conn.shared.name, remote = %conn.remote, path = %path, %reason,
                                "cutting a streaming answer after reload: the client is no longer allowed");
                            reason
                        }
                        () = upstream_lapsed(lapse) => {
                            tracing::warn!(listener = %conn.shared.name, remote = %conn.remote, path = %path,
                                "cutting a streaming answer: the upstream server is no longer trusted");
                            "the upstream server is no longer trusted".to_string()
                        }
                    }
                }));
            }
        }
        if let Watch::Armed(refused) = &mut this.watch {
            if let Poll::Ready(reason) = refused.as_mut().poll(cx) {
                this.watch = Watch::Off;
                return Poll::Ready(Some(Err(reason.into())));
            }
        }
        frame.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Source::Pooled(b) => b.is_end_stream(),
            Source::Direct(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match &self.body {
            Source::Pooled(b) => b.size_hint(),
            Source::Direct(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod host_tests {
    use super::host_without_port;

    #[test]
    fn only_host_and_port_pass() {
        for (raw, host) in [
            ("localhost", "localhost"),
            ("LOCALHOST:443", "LOCALHOST"),
            ("api.example.com.", "api.example.com."),
            ("127.0.0.1:8443", "127.0.0.1"),
            ("[::1]:443", "::1"),
            ("[::1]", "::1"),
            ("localhost:", "localhost"),
        ] {
            assert_eq!(host_without_port(raw), Some(host), "{raw}");
        }
        for raw in [
            "localhost:443,evil.example",
            "localhost:x y",
            "[localhost]evil.example",
            "[::1]evil",
            "a b",
            "",
            ":443",
            "localhost:123456",
            "[]:443",
        ] {
            assert_eq!(host_without_port(raw), None, "{raw}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;
    use tokio::time::Instant;

    fn uploading() -> Arc<Progress> {
        Arc::new(Progress {
            ended: std::sync::OnceLock::new(),
            waiting_for_client: std::sync::atomic::AtomicBool::new(false),
            taken: std::sync::Mutex::new(Instant::now()),
        })
    }

    /// The upstream holds the body for 10 s (its pace: within its 30 s), then takes it and
    /// asks for more, which the client never sends: the client's 2 s count from then, and end
    /// the wait at 12 s, not at the upstream's 30 s.
    #[tokio::test(start_paused = true)]
    async fn the_body_timer_starts_again_when_the_upstream_takes_the_body() {
        let progress = uploading();
        let p = progress.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            *p.taken.lock().unwrap() = Instant::now();
            p.waiting_for_client.store(true, Relaxed);
        });
        let start = Instant::now();
        let r = within(
            Duration::from_secs(30),
            Duration::from_secs(2),
            Some(&progress),
            std::future::pending::<()>(),
        )
        .await;
        assert_eq!(r, Err(Late::ClientBody));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(12) && took < Duration::from_secs(13),
            "{took:?}"
        );
    }

    /// A client sending a frame every second for 10 s (each pause under its 2 s) is never
    /// late; once the body has ended, the upstream's 30 s count from its end.
    #[tokio::test(start_paused = true)]
    async fn a_steady_upload_is_not_late_and_the_answer_counts_from_its_end() {
        let progress = uploading();
        progress.waiting_for_client.store(true, Relaxed);
        let p = progress.clone();
        tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                *p.taken.lock().unwrap() = Instant::now();
            }
            let _ = p.ended.set(Instant::now());
            p.waiting_for_client.store(false, Relaxed);
        });
        let answered = within(
            Duration::from_secs(30),
            Duration::from_secs(2),
            Some(&progress),
            tokio::time::sleep(Duration::from_secs(25)),
        )
        .await;
        assert_eq!(
            answered,
            Ok(()),
            "answered at 25 s, 15 s after the body ended"
        );
        let progress = uploading();
        let p = progress.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let _ = p.ended.set(Instant::now());
        });
        let start_silent = Instant::now();
        let r = within(
            Duration::from_secs(30),
            Duration::from_secs(2),
            Some(&progress),
            std::future::pending::<()>(),
        )
        .await;
        assert_eq!(r, Err(Late::Upstream));
        let took = start_silent.elapsed();
        assert!(
            took >= Duration::from_secs(40) && took < Duration::from_secs(41),
            "{took:?}"
        );
    }
}
