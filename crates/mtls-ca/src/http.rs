//! The HTTP API (axum): routes, JSON bodies and the seed's error shape.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use mtls_api as api;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::authority::{PeerIdentity, TokenRequest};
use crate::{ApiError, Authority};

/// Largest request body: CSRs and OCSP requests are a few KiB.
const BODY_LIMIT: usize = 64 * 1024;
/// Longest a request body may take to arrive (a body trickled byte by byte would otherwise
/// hold its connection, since each byte counts as progress for the idle timeout).
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

type Shared = State<Arc<Authority>>;

/// The full API (served over TLS).
pub(crate) fn router(ca: Arc<Authority>) -> Router {
    Router::new()
        .route("/v1/sign", post(sign))
        .route("/v1/renew", post(renew))
        .route("/v1/revoke", post(revoke))
        .route("/v1/tokens", post(create_token))
        .route("/v1/certificates", get(list))
        .route("/v1/revocations", get(revocations))
        .merge(publication_routes())
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(ca)
}

/// Prometheus metrics and health, for a listener of their own (`metrics_listen`, on loopback or
/// a management network): the counters say how the CA is used, which is nobody else's
/// business.
pub(crate) fn metrics_router(ca: Arc<Authority>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(ca)
}

/// What may also be served over plain HTTP: signed objects and health only.
pub(crate) fn publication_router(ca: Arc<Authority>) -> Router {
    publication_routes()
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(ca)
        .layer(Extension(PeerIdentity::Anonymous))
}

fn publication_routes() -> Router<Arc<Authority>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/roots.pem", get(roots))
        .route("/v1/chain.pem", get(chain))
        .route("/v1/crl", get(crl_der))
        .route("/v1/crl.pem", get(crl_pem))
        .route("/v1/root-crl", get(root_crl_der))
        .route("/v1/root-crl.pem", get(root_crl_pem))
        .route("/ocsp", post(ocsp_post))
        .route("/ocsp/{*request}", get(ocsp_get))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "this endpoint does not take that method",
    )
}

/// The request body, with axum's refusals (over [`BODY_LIMIT`], unreadable) in our error shape.
struct ApiBody(Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let read = tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(req, state)).await;
        let Ok(read) = read else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "REQUEST_TIMEOUT",
                format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            ));
        };
        read.map(ApiBody).map_err(|r| {
            let status = r.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "PAYLOAD_TOO_LARGE"
            } else {
                "INVALID_REQUEST"
            };
            ApiError::new(status, code, r.body_text())
        })
    }
}

fn count<T>(ca: &Authority, r: &Result<T, ApiError>) {
    if let Err(e) = r {
        if e.status == StatusCode::SERVICE_UNAVAILABLE {
            ca.metrics.inc(&ca.metrics.db_unavailable);
        } else if e.status.is_client_error() {
            ca.metrics.inc(&ca.metrics.refused);
        }
    }
}

/// Parses a JSON body ourselves so malformed input gets our error shape, not axum's.
fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("INVALID_REQUEST", format!("invalid JSON body: {e}")))
}

async fn sign(State(ca): Shared, ApiBody(body): ApiBody) -> Response {
    let r = async {
        let b: api::SignRequest = json_body(&body)?;
        ca.enroll(&b.token, &b.csr, now()).await
    }
    .await;
    count(&ca, &r);
    match r {
        Ok(issued) => {
            ca.metrics.inc(&ca.metrics.enrolled);
            tracing::info!(serial = %issued.serial, "enrolled");
            (StatusCode::CREATED, Json(issued)).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn renew(
    State(ca): Shared,
    Extension(peer): Extension<PeerIdentity>,
    ApiBody(body): ApiBody,
) -> Response {
    let r = async {
        let b: api::RenewRequest = if body.is_empty() {
            api::RenewRequest::default()
        } else {
            json_body(&body)?
        };
        ca.renew(&peer, b.csr.as_deref(), now()).await
    }
    .await;
    count(&ca, &r);
    match r {
        Ok(issued) => {
            ca.metrics.inc(&ca.metrics.renewed);
            tracing::info!(serial = %issued.serial, "renewed");
            (StatusCode::CREATED, Json(issued)).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn revoke(
    State(ca): Shared,
    Extension(peer): Extension<PeerIdentity>,
    ApiBody(body): ApiBody,
) -> Response {
    let r = async {
        let b: api::RevokeRequest = if body.is_empty() {
            api::RevokeRequest::default()
        } else {
            json_body(&body)?
        };
        ca.revoke(&peer, b.serial.as_deref(), b.reason.as_deref(), now())
            .await
    }
    .await;
    count(&ca, &r);
    match r {
        Ok(rev) => {
            for serial in std::iter::once(&rev.record.serial).chain(&rev.also_revoked) {
                ca.metrics.inc(&ca.metrics.revoked);
                tracing::info!(%serial, "revoked");
            }
            Json(rev).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn create_token(
    State(ca): Shared,
    Extension(peer): Extension<PeerIdentity>,
    ApiBody(body): ApiBody,
) -> Response {
    let r = async {
        let admin = ca.admin(&peer, now()).await?;
        let b: api::TokenRequest = json_body(&body)?;
        let profile = b.profile.parse().map_err(|e: mtls_pki::Error| {
            ApiError::bad_request("INVALID_REQUEST", e.to_string())
        })?;
        let ttl = mtls_serve::duration::parse_time(&b.ttl)
            .map_err(|e| ApiError::bad_request("INVALID_REQUEST", e.to_string()))?;
        ca.create_token(
            TokenRequest {
                name: b.name,
                sans: b.sans,
                profile,
                ttl,
            },
            &format!("admin:{}", admin.subject()),
            now(),
        )
        .await
    }
    .await;
    count(&ca, &r);
    match r {
        Ok((token, expires_at)) => {
            ca.metrics.inc(&ca.metrics.tokens);
            (
                StatusCode::CREATED,
                Json(api::TokenCreated { token, expires_at }),
            )
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn list(State(ca): Shared, Extension(peer): Extension<PeerIdentity>) -> Response {
    let r = async {
        ca.admin(&peer, now()).await?;
        ca.list(&mtls_store::ListFilter::default(), now()).await
    }
    .await;
    count(&ca, &r);
    match r {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    after: i64,
    /// How long to wait for a revocation, e.g. `25s` (default: answer at once).
    wait: Option<String>,
}

async fn revocations(
    State(ca): Shared,
    Extension(peer): Extension<PeerIdentity>,
    query: Result<axum::extract::Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let r = async {
        let axum::extract::Query(q) = query.map_err(|e| {
            ApiError::bad_request(
                "INVALID_REQUEST",
                format!("{} (expected ?after=N&wait=25s)", e.body_text()),
            )
        })?;
        let wait = match &q.wait {
            None => std::time::Duration::ZERO,
            Some(w) => mtls_serve::duration::parse(w)
                .map_err(|e| ApiError::bad_request("INVALID_REQUEST", format!("wait: {e}")))?,
        };
        ca.revocations(&peer, q.after, wait, now()).await
    }
    .await;
    count(&ca, &r);
    match r {
        Ok(page) => Json(page).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn healthz(State(ca): Shared) -> Response {
    match ca.store().ping().await {
        Ok(()) => Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(e) => crate::error::store_error(e).into_response(),
    }
}

async fn metrics(State(ca): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, mtls_serve::metrics::CONTENT_TYPE)],
        ca.metrics.render(),
    )
        .into_response()
}

fn pem_response(text: String) -> Response {
    ([(header::CONTENT_TYPE, "application/x-pem-file")], text).into_response()
}

async fn roots(State(ca): Shared) -> Response {
    pem_response(ca.roots_pem().to_string())
}

async fn chain(State(ca): Shared) -> Response {
    pem_response(ca.chain_pem().to_string())
}

fn http_date(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&f)
        .unwrap_or_default()
}

async fn crl(ca: &Authority, pem: bool) -> Response {
    let now = now();
    let r = ca.crl(now).await;
    count(ca, &r);
    let c = match r {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    ca.metrics.inc(&ca.metrics.crl_served);
    let body = if pem { c.pem } else { c.der };
    let mut resp = crl_response(body, pem, c.this_update, Some(c.next_update), now);
    resp.headers_mut().insert(
        mtls_verify::FEED_POSITION_HEADER,
        HeaderValue::from(c.epoch),
    );
    resp
}

/// A CRL answer (DER or PEM) with the caching headers: caches may keep it until a refresh is
/// due (half its remaining life, at most an hour), never past nextUpdate.
fn crl_response(
    body: Bytes,
    pem: bool,
    this_update: OffsetDateTime,
    next_update: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Response {
    let max_age = next_update.map_or(3600, |next| {
        let half: time::Duration = (next - now) / 2_i32;
        half.whole_seconds().clamp(0, 3600)
    });
    let ctype = if pem {
        "application/x-pem-file"
    } else {
        "application/pkix-crl"
    };
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}, no-transform")) {
        h.insert(header::CACHE_CONTROL, v);
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(this_update)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Some(Ok(v)) = next_update.map(|n| HeaderValue::from_str(&http_date(n))) {
        h.insert(header::EXPIRES, v);
    }
    resp
}

/// `GET /v1/root-crl[.pem]`: the offline root's CRL (see [`crate::root_crl`]).
async fn root_crl(ca: &Authority, pem: bool) -> Response {
    use crate::root_crl::Unavailable;
    match ca.root_crl() {
        Ok(c) => {
            let body = if pem { c.pem.clone() } else { c.der.clone() };
            crl_response(body, pem, c.this_update, c.next_update, now())
        }
        Err(Unavailable::NotPublished) => ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "this CA publishes no root CRL (sign one with `mtls ca root-crl`)",
        )
        .into_response(),
        // The details are in the CA's log; a verifier needs only to know to try again.
        Err(Unavailable::Invalid(_)) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ROOT_CRL_UNAVAILABLE",
            "the root CRL file is not a usable CRL of this CA's root",
        )
        .into_response(),
    }
}

async fn root_crl_der(State(ca): Shared) -> Response {
    root_crl(&ca, false).await
}

async fn root_crl_pem(State(ca): Shared) -> Response {
    root_crl(&ca, true).await
}

async fn crl_der(State(ca): Shared) -> Response {
    crl(&ca, false).await
}

async fn crl_pem(State(ca): Shared) -> Response {
    crl(&ca, true).await
}

fn ocsp_response(der: Vec<u8>, cacheable: bool, max_age: i64) -> Response {
    let mut resp = Response::new(Body::from(der));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/ocsp-response"),
    );
    let cc = if cacheable {
        format!("public, max-age={max_age}, no-transform, must-revalidate")
    } else {
        "no-store".to_string()
    };
    if let Ok(v) = HeaderValue::from_str(&cc) {
        h.insert(header::CACHE_CONTROL, v);
    }
    resp
}

async fn ocsp_post(
    State(ca): Shared,
    headers: axum::http::HeaderMap,
    ApiBody(body): ApiBody,
) -> Response {
    let ok_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("application/ocsp-request"));
    if !ok_type {
        ca.metrics.inc(&ca.metrics.ocsp_malformed);
        return ocsp_response(
            mtls_ocsp::error_response(mtls_ocsp::ResponseStatus::MalformedRequest),
            false,
            0,
        );
    }
    let der = ca
        .ocsp(&body, now())
        .await
        .unwrap_or_else(mtls_ocsp::error_response);
    ocsp_response(der, false, 0)
}

async fn ocsp_get(State(ca): Shared, uri: axum::http::Uri) -> Response {
    // The raw (still percent-encoded) path: `decode_get_path` unescapes it exactly once, and
    // bytes that are not UTF-8 after unescaping are a malformed request, not a routing error.
    let request = uri.path().strip_prefix("/ocsp/").unwrap_or_default();
    let der = match mtls_ocsp::decode_get_path(request) {
        Ok(d) => d,
        Err(_) => {
            // Some clients send the base64 unescaped; accept plain base64 too.
            match base64::engine::general_purpose::STANDARD.decode(request.as_bytes()) {
                Ok(d) => d,
                Err(_) => {
                    ca.metrics.inc(&ca.metrics.ocsp_malformed);
                    return ocsp_response(
                        mtls_ocsp::error_response(mtls_ocsp::ResponseStatus::MalformedRequest),
                        false,
                        0,
                    );
                }
            }
        }
    };
    match ca.ocsp(&der, now()).await {
        Ok(resp) => {
            // RFC 5019 GET responses are cacheable for a short while; revocation must show
            // quickly.
            let max_age = ca.settings().ocsp_lifetime.whole_seconds().clamp(0, 60);
            ocsp_response(resp, true, max_age)
        }
        // tryLater (database down), internalError, unauthorized: a cache must not keep
        // serving them once the cause is gone.
        Err(status) => ocsp_response(mtls_ocsp::error_response(status), false, 0),
    }
}
