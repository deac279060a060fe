//! The rustls client-certificate verifier backed by a [`TrustState`].

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

use crate::{Rejection, TrustState};

/// Verifies client certificates during the handshake.
///
/// With `mandatory`, a client without a valid certificate fails the handshake. Without it
/// (HTTP gateways that answer `401`/`403` themselves), the handshake accepts any chain whose
/// CertificateVerify signature is valid and the application must call
/// [`TrustState::verify_client`] on the peer certificates — which it must do anyway after every
/// handshake, because resumed sessions skip this verifier.
#[derive(Debug)]
pub struct ClientVerifier {
    state: Arc<TrustState>,
    mandatory: bool,
    hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientVerifier {
    pub fn new(
        state: Arc<TrustState>,
        mandatory: bool,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        let hints = state
            .roots()
            .iter()
            .filter_map(|r| x509_parser::parse_x509_certificate(r).ok())
            .map(|(_, c)| DistinguishedName::from(c.subject().as_raw().to_vec()))
            .collect();
        ClientVerifier {
            state,
            mandatory,
            hints,
            algorithms,
        }
    }
}

/// Maps a rejection to the TLS alert rustls sends.
pub fn rejection_to_rustls(r: &Rejection) -> rustls::Error {
    let e = match r {
        Rejection::Expired { .. } => CertificateError::Expired,
        Rejection::NotYetValid { .. } => CertificateError::NotValidYet,
        Rejection::Revoked => CertificateError::Revoked,
        Rejection::UnknownIssuer | Rejection::BadTrustAnchor(_) => CertificateError::UnknownIssuer,
        Rejection::BadSignature => CertificateError::BadSignature,
        Rejection::UnknownRevocationStatus
        | Rejection::StaleRevocationFeed { .. }
        | Rejection::OcspUnavailable(_) => CertificateError::UnknownRevocationStatus,
        Rejection::ExpiredCrl => CertificateError::ExpiredRevocationList,
        Rejection::MissingClientAuth | Rejection::WrongPurpose(_) | Rejection::KeyUsage(_) => {
            CertificateError::InvalidPurpose
        }
        _ => CertificateError::ApplicationVerificationFailure,
    };
    rustls::Error::InvalidCertificate(e)
}

/// The reason code of a certificate error as rustls reports it after a handshake: the inverse
/// of [`rejection_to_rustls`], as exact as the TLS alert allows (a stale feed and an OCSP
/// outage both arrive as `unknown_revocation_status`, a missing clientAuth EKU as
/// `wrong_purpose`). Metric labels come from this fixed set.
pub fn code_of_certificate_error(e: &CertificateError) -> &'static str {
    match e {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not_yet_valid"
        }
        CertificateError::Revoked => "revoked",
        CertificateError::UnknownIssuer => "unknown_issuer",
        CertificateError::BadSignature => "bad_signature",
        CertificateError::UnknownRevocationStatus => "unknown_revocation_status",
        CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. } => "expired_crl",
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "wrong_purpose"
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "name_mismatch"
        }
        CertificateError::BadEncoding => "malformed",
        _ => "other",
    }
}

/// The reason code a handshake-time refusal of `r` is counted and logged under (what
/// [`code_of_certificate_error`] makes of [`rejection_to_rustls`]).
pub fn handshake_code(r: &Rejection) -> &'static str {
    match (r, rejection_to_rustls(r)) {
        (Rejection::NoCertificate, _) => "no_certificate",
        (_, rustls::Error::InvalidCertificate(c)) => code_of_certificate_error(&c),
        _ => "other",
    }
}

/// Who a handshake just refused, for the server's refusal log: the verifier knows the
/// certificate, the server the connection. rustls runs the verifier inside the poll that then
/// fails the handshake, so the server reads this on the same thread right after the error
/// ([`take_refused_peer`]); the code lets it check the entry is about that failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedPeer {
    /// The certificate's subject.
    pub subject: String,
    /// Its serial (hex).
    pub serial: String,
    /// SHA-256 fingerprint of the certificate (hex).
    pub fingerprint: String,
    /// The handshake reason code ([`handshake_code`]).
    pub code: &'static str,
}

thread_local! {
    static REFUSED: std::cell::RefCell<Option<RefusedPeer>> = const { std::cell::RefCell::new(None) };
}

/// The peer this thread's last refused handshake presented, if its reason was `code` (taken:
/// the next call returns `None`).
pub fn take_refused_peer(code: &str) -> Option<RefusedPeer> {
    REFUSED
        .with(|r| r.borrow_mut().take())
        .filter(|p| p.code == code)
}

fn note_refused(leaf: &CertificateDer<'_>, r: &Rejection) {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return;
    };
    let peer = RefusedPeer {
        subject: cert.subject().to_string(),
        serial: mtls_pki::Serial::from_be_bytes(cert.raw_serial()).to_string(),
        fingerprint: mtls_pki::Fingerprint::of(leaf).to_string(),
        code: handshake_code(r),
    };
    REFUSED.with(|slot| *slot.borrow_mut() = Some(peer));
}

/// Largest refused chain an optional-mode connection keeps (leaf and intermediates, DER): real
/// chains are a few KiB.
const MAX_KEPT_REFUSED_CHAIN: usize = 16 * 1024;
/// Most certificates in a refused chain an optional-mode connection keeps.
const MAX_KEPT_REFUSED_CERTS: usize = 6;

fn oversized(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> bool {
    let bytes: usize = end_entity.len() + intermediates.iter().map(|c| c.len()).sum::<usize>();
    bytes > MAX_KEPT_REFUSED_CHAIN || intermediates.len() + 1 > MAX_KEPT_REFUSED_CERTS
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let now = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        match self.state.verify_client(end_entity, intermediates, now) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(r) if self.mandatory => {
                note_refused(end_entity, &r);
                tracing::info!(reason = %r, code = r.code(), "client certificate rejected in handshake");
                Err(rejection_to_rustls(&r))
            }
            // Optional mode: the application answers 403 with the reason, on a connection
            // that keeps the refused chain (and a copy, to admit it should the trust state
            // come to accept it). One far larger than any real chain (a 60 KiB self-signed
            // certificate) is refused here: it would multiply what an anonymous connection
            // holds.
            Err(r) if oversized(end_entity, intermediates) => {
                note_refused(end_entity, &r);
                tracing::info!(reason = %r, "oversized refused client certificate chain: handshake failed");
                Err(rejection_to_rustls(&r))
            }
            Err(_) => Ok(ClientCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
