//! What a client's handshakes showed: the server's chain, the TLS version, whether the server
//! asked for a client certificate (and which CAs it named) and whether one was sent — for
//! `mtls request -v` and for saying so when a server never asked (no mutual authentication).

use std::sync::{Arc, Mutex};

use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use rustls_pki_types::CertificateDer;

/// What the last handshake showed.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct HandshakeSeen {
    /// The server's certificates, leaf first, as it sent them.
    pub server_chain: Vec<CertificateDer<'static>>,
    /// `TLS 1.3` or `TLS 1.2`.
    pub tls_version: Option<&'static str>,
    /// The scheme of the server's handshake signature.
    pub server_signature: Option<SignatureScheme>,
    /// The server sent a CertificateRequest.
    pub client_cert_requested: bool,
    /// The CAs the server named as acceptable (their subjects), if it named any.
    pub acceptable_cas: Vec<String>,
    /// A client certificate was presented in answer.
    pub client_cert_sent: bool,
}

/// Collects [`HandshakeSeen`] from the handshakes of the clients it is given to
/// ([`crate::ClientBuilder::observe_handshakes`]): meant for one connection at a time, as
/// `mtls request` makes.
#[derive(Debug, Default)]
pub struct HandshakeLog {
    seen: Mutex<HandshakeSeen>,
}

impl HandshakeLog {
    /// What the last handshake showed (empty before any handshake; a resumed one, or one that
    /// was not asked for a certificate, may leave fields of an earlier handshake).
    pub fn last(&self) -> HandshakeSeen {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut HandshakeSeen)) {
        if let Ok(mut s) = self.seen.lock() {
            f(&mut s);
        }
    }

    /// The server's certificate arrived. (In TLS 1.3 the CertificateRequest comes before it,
    /// in TLS 1.2 after it: neither resets the other.)
    pub(crate) fn server_certificate(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) {
        self.update(|s| {
            s.tls_version = None;
            s.server_signature = None;
            s.server_chain = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| c.clone().into_owned())
                .collect();
        });
    }

    pub(crate) fn server_signature(&self, version: &'static str, scheme: SignatureScheme) {
        self.update(|s| {
            s.tls_version = Some(version);
            s.server_signature = Some(scheme);
        });
    }
}

/// Wraps a client certificate resolver to record whether the server asked and whether a
/// certificate was sent (rustls asks the resolver only on a CertificateRequest).
#[derive(Debug)]
pub(crate) struct ObservingResolver {
    pub(crate) inner: Arc<dyn ResolvesClientCert>,
    pub(crate) log: Arc<HandshakeLog>,
}

impl ResolvesClientCert for ObservingResolver {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let chosen = self.inner.resolve(root_hint_subjects, sigschemes);
        let names = root_hint_subjects
            .iter()
            .map(|raw| {
                <x509_parser::x509::X509Name as x509_parser::prelude::FromDer<
                    x509_parser::error::X509Error,
                >>::from_der(raw)
                .map(|(_, n)| n.to_string())
                .unwrap_or_else(|_| "(unparsable name)".into())
            })
            .collect();
        self.log.update(|s| {
            s.client_cert_requested = true;
            s.acceptable_cas = names;
            s.client_cert_sent = chosen.is_some();
        });
        chosen
    }

    fn has_certs(&self) -> bool {
        self.inner.has_certs()
    }
}
