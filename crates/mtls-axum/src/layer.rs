//! `RequireClientCert`: a tower layer that lets a request through only when its client
//! certificate is verified and passes every configured check, answering the seed's
//! `401 NO_CLIENT_CERT` / `403 INVALID_CERT` (with the reason) otherwise. Put it on a router
//! with `.layer(…)` or on some routes with `.route_layer(…)`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::{IntoResponse, Response};
use http::Request;
use mtls_serve::ApiError;
use mtls_verify::{Policy, VerifiedPeer};

type CheckFn = dyn Fn(&VerifiedPeer) -> Result<(), String> + Send + Sync;

#[derive(Clone)]
enum Check {
    Policy(Box<Policy>),
    Custom(Arc<CheckFn>),
}

/// Which identity the checks apply to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Connection,
    Forwarded,
}

/// The layer. Every check must pass (AND); within one [`Policy`] any `allow_*` entry suffices,
/// or with `PolicyMatch::All` one of every list (see `mtls_verify::Policy`). A refused request
/// is logged at WARN (rate-limited) with the reason and the client's certificate.
#[derive(Clone)]
pub struct RequireClientCert {
    checks: Arc<Vec<Check>>,
    source: Source,
    /// Refused requests: rate-limited WARN lines naming the certificate, as the gateway's.
    refusals: Arc<mtls_serve::refusals::RefusalLog>,
}

impl std::fmt::Debug for RequireClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireClientCert")
            .field("checks", &self.checks.len())
            .field("source", &self.source)
            .finish()
    }
}

impl RequireClientCert {
    /// Clients allowed by `policy`. An empty policy allows nobody.
    pub fn policy(policy: Policy) -> Self {
        RequireClientCert {
            checks: Arc::new(vec![Check::Policy(Box::new(policy))]),
            source: Source::Connection,
            refusals: Arc::default(),
        }
    }

    /// Every client whose certificate the server's client CAs verify (named, because it is the
    /// loosest choice).
    pub fn any_trusted() -> Self {
        Self::policy(Policy {
            allow_any_trusted: true,
            ..Policy::default()
        })
    }

    /// Clients that `check` accepts; its error is the reason in the `403` body.
    pub fn check(
        check: impl Fn(&VerifiedPeer) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        RequireClientCert {
            checks: Arc::new(vec![Check::Custom(Arc::new(check))]),
            source: Source::Connection,
            refusals: Arc::default(),
        }
    }

    /// Also requires `policy`.
    pub fn and_policy(self, policy: Policy) -> Self {
        self.push(Check::Policy(Box::new(policy)))
    }

    /// Also requires `check`.
    pub fn and_check(
        self,
        check: impl Fn(&VerifiedPeer) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.push(Check::Custom(Arc::new(check)))
    }

    /// Applies the checks to the identity forwarded by a trusted gateway instead of the
    /// connection's own (see [`crate::ForwardedClientCert`]).
    pub fn forwarded(mut self) -> Self {
        self.source = Source::Forwarded;
        self
    }

    fn push(mut self, c: Check) -> Self {
        Arc::make_mut(&mut self.checks).push(c);
        self
    }

    /// Logs (rate-limited, at WARN) and keeps a refused request, with the certificate the
    /// checks judged when there was one.
    fn report<B>(&self, req: &Request<B>, refusal: &ApiError, peer: Option<&VerifiedPeer>) {
        let ext = req.extensions();
        self.refusals.report(mtls_serve::refusals::Refusal {
            listener: "server".into(),
            remote: ext
                .get::<crate::extract::RemoteExt>()
                .map(|c| c.0.to_string())
                .unwrap_or_default(),
            reason: refusal.code.to_string(),
            detail: Some(refusal.message.clone()),
            stage: "request",
            method: Some(req.method().to_string()),
            path: Some(req.uri().path().to_string()),
            status: Some(refusal.status.as_u16()),
            subject: peer.map(|p| p.subject().to_string()),
            serial: peer.map(|p| p.serial().to_string()),
            fingerprint: peer.map(|p| p.fingerprint().to_string()),
            ..Default::default()
        });
    }

    /// The decision for a request's extensions.
    /// The decision for a request's extensions; a refusal carries the identity the checks
    /// judged (the forwarded one with [`forwarded`](Self::forwarded)), when there was one.
    fn decide(&self, ext: &http::Extensions) -> Result<(), (ApiError, Option<Arc<VerifiedPeer>>)> {
        let peer = match self.source {
            Source::Connection => crate::extract::peer_of(ext)
                .verified()
                .cloned()
                .map_err(|r| (ApiError::from_rejection(&r), None))?,
            Source::Forwarded => crate::extract::forwarded_of(ext).map_err(|e| (e, None))?,
        };
        for c in self.checks.iter() {
            let verdict = match c {
                Check::Policy(p) => p.check(&peer),
                Check::Custom(f) => f(&peer),
            };
            if let Err(reason) = verdict {
                return Err((ApiError::invalid_cert(reason), Some(peer)));
            }
        }
        Ok(())
    }
}

impl<S> tower_layer::Layer<S> for RequireClientCert {
    type Service = RequireClientCertService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireClientCertService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RequireClientCert`] wraps around a handler or router.
#[derive(Clone, Debug)]
pub struct RequireClientCertService<S> {
    inner: S,
    layer: RequireClientCert,
}

impl<S, B> tower_service::Service<Request<B>> for RequireClientCertService<S>
where
    S: tower_service::Service<Request<B>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.layer.decide(req.extensions()) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err((refusal, peer)) => {
                self.layer.report(&req, &refusal, peer.as_deref());
                Box::pin(std::future::ready(Ok(refusal.into_response())))
            }
        }
    }
}
