//! Extractors for the client's identity. Only this crate's server puts identities into
//! requests (under private extension types), so a handler that takes a [`ClientCert`] knows the
//! certificate was verified for this connection under the current trust state.

use std::ops::Deref;
use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;
use mtls_serve::ApiError;
use mtls_verify::{PeerIdentity, Rejection, VerifiedPeer};

/// The connection's identity, as the server established it for this request.
#[derive(Clone, Debug)]
pub(crate) struct PeerExt(pub(crate) PeerIdentity);

/// The client's address (for the refusal log).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RemoteExt(pub(crate) std::net::SocketAddr);

/// The identity a trusted gateway forwarded (`None`: the connection is not from a gateway, or
/// no gateways are configured).
#[derive(Clone, Debug)]
pub(crate) struct ForwardedExt(pub(crate) Option<Result<Arc<VerifiedPeer>, Rejection>>);

/// The verified client certificate of the connection (subject, issuer, serial, SHA-256
/// fingerprint, SANs, SPIFFE ID, validity: see [`VerifiedPeer`]'s accessors, available through
/// `Deref`).
///
/// As an extractor it answers `401 NO_CLIENT_CERT` when the client sent no certificate and
/// `403 INVALID_CERT` with the reason when its certificate is not (or no longer) trusted.
/// `Option<ClientCert>` is `None` for an anonymous client and still refuses an invalid one.
#[derive(Clone, Debug)]
pub struct ClientCert(pub(crate) Arc<VerifiedPeer>);

impl ClientCert {
    /// The verified peer, shared.
    pub fn peer(&self) -> &Arc<VerifiedPeer> {
        &self.0
    }
}

impl Deref for ClientCert {
    type Target = VerifiedPeer;
    fn deref(&self) -> &VerifiedPeer {
        &self.0
    }
}

/// The identity of the request as the server established it (the raw verdict): for handlers
/// that decide themselves what to do with anonymous or refused clients.
#[derive(Clone, Debug)]
pub struct ClientIdentity(pub PeerIdentity);

pub(crate) fn peer_of(parts: &http::Extensions) -> PeerIdentity {
    match parts.get::<PeerExt>() {
        Some(p) => p.0.clone(),
        // Not served by mtls-axum: nobody vouches for a certificate.
        None => PeerIdentity::Rejected(Rejection::Other(
            "the request did not arrive over mtls-axum's mTLS server".into(),
        )),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientCert {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        peer_of(&parts.extensions)
            .verified()
            .map(|p| ClientCert(p.clone()))
            .map_err(|r| ApiError::from_rejection(&r))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for ClientCert {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, ApiError> {
        match peer_of(&parts.extensions) {
            PeerIdentity::Verified(p) => Ok(Some(ClientCert(p))),
            PeerIdentity::Anonymous => Ok(None),
            PeerIdentity::Rejected(r) => Err(ApiError::from_rejection(&r)),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIdentity {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIdentity(peer_of(&parts.extensions)))
    }
}

/// The client identity forwarded by a trusted gateway (`mtls gateway`'s RFC 9440
/// `Client-Cert` header), verified against this server's client CAs and CRLs.
///
/// The header is read only when the connection itself is mTLS-authenticated as one of the
/// gateway identities configured with
/// [`crate::ServerBuilder::trust_forwarded_identity_from`]; from anyone else forwarded headers
/// are ignored and never yield an identity (`403 INVALID_CERT`). Through a gateway, a request
/// without the header gets `401 NO_CLIENT_CERT`.
#[derive(Clone, Debug)]
pub struct ForwardedClientCert(pub(crate) Arc<VerifiedPeer>);

impl Deref for ForwardedClientCert {
    type Target = VerifiedPeer;
    fn deref(&self) -> &VerifiedPeer {
        &self.0
    }
}

pub(crate) const NOT_A_GATEWAY: &str =
    "forwarded client identities are accepted only from a configured gateway";

pub(crate) fn forwarded_of(ext: &http::Extensions) -> Result<Arc<VerifiedPeer>, ApiError> {
    match ext.get::<ForwardedExt>().and_then(|f| f.0.clone()) {
        Some(Ok(p)) => Ok(p),
        Some(Err(r)) => Err(ApiError::from_rejection(&r)),
        None => Err(ApiError::invalid_cert(NOT_A_GATEWAY)),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ForwardedClientCert {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        forwarded_of(&parts.extensions).map(ForwardedClientCert)
    }
}
