//! The verified identity of a client, parsed once per connection.

use std::net::IpAddr;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;

use mtls_pki::{Fingerprint, Serial};
use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

/// A client identity that passed chain validation and revocation checks against trust state
/// generation `generation`. Only this crate can construct one, and its fields are read-only: a
/// peer cannot be edited after verification and still pass [`crate::Policy::check`].
#[derive(Clone, Debug, Serialize)]
pub struct VerifiedPeer {
    subject: String,
    common_name: Option<String>,
    organizational_units: Vec<String>,
    issuer: String,
    #[serde(skip)]
    issuer_name: crate::DistinguishedName,
    #[serde(serialize_with = "display")]
    serial: Serial,
    dns: Vec<String>,
    uris: Vec<String>,
    emails: Vec<String>,
    ips: Vec<IpAddr>,
    cert_sha256: Fingerprint,
    spki_sha256: Fingerprint,
    #[serde(with = "time::serde::rfc3339")]
    not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    not_after: OffsetDateTime,
    /// When the first certificate of the verified path (leaf, intermediates, anchor) expires.
    #[serde(skip)]
    pub(crate) path_not_after: OffsetDateTime,
    /// SHA-256 of the SubjectPublicKeyInfo of the CA certificate that signed the leaf in the
    /// validated path.
    #[serde(skip)]
    pub(crate) issuer_spki_sha256: Option<Fingerprint>,
    generation: u64,
    /// The chain as presented, leaf first: kept once per verified certificate and shared by
    /// every connection that presents it (they re-verify with it when trust changes).
    #[serde(skip)]
    chain: Arc<[CertificateDer<'static>]>,
}

fn display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl VerifiedPeer {
    pub(crate) fn from_cert(
        chain: Arc<[CertificateDer<'static>]>,
        cert: &X509Certificate<'_>,
        generation: u64,
    ) -> Self {
        let der: &[u8] = chain.first().map(|c| c.as_ref()).unwrap_or_default();
        let attrs = |oid| {
            cert.subject()
                .iter_by_oid(oid)
                .filter_map(|a| a.as_str().ok().map(str::to_string))
                .collect::<Vec<_>>()
        };
        use x509_parser::oid_registry as o;
        let sans = mtls_pki::issue::certificate_sans(cert);
        let mut dns = Vec::new();
        let mut uris = Vec::new();
        let mut emails = Vec::new();
        let mut ips = Vec::new();
        for s in sans {
            match s {
                mtls_pki::San::Dns(d) => dns.push(d),
                mtls_pki::San::Uri(u) => uris.push(u),
                mtls_pki::San::Email(e) => emails.push(e),
                mtls_pki::San::Ip(ip) => ips.push(ip),
            }
        }
        VerifiedPeer {
            subject: cert.subject().to_string(),
            common_name: attrs(&o::OID_X509_COMMON_NAME).into_iter().next(),
            organizational_units: attrs(&o::OID_X509_ORGANIZATIONAL_UNIT),
            issuer: cert.issuer().to_string(),
            issuer_name: crate::DistinguishedName::of(cert.issuer()),
            serial: Serial::from_be_bytes(cert.raw_serial()),
            dns,
            uris,
            emails,
            ips,
            cert_sha256: Fingerprint::of(der),
            spki_sha256: Fingerprint::of(cert.public_key().raw),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            path_not_after: cert.validity().not_after.to_datetime(),
            issuer_spki_sha256: None,
            generation,
            chain: chain.clone(),
        }
    }

    /// The subject DN, as `mtls inspect` prints it (`O=Acme, CN=client-app`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The first common name of the subject.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    pub fn organizational_units(&self) -> &[String] {
        &self.organizational_units
    }

    /// The issuer DN, for display (see [`issuer_name`](Self::issuer_name) to compare).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The issuer DN as attributes, which is what policies compare.
    pub fn issuer_name(&self) -> &crate::DistinguishedName {
        &self.issuer_name
    }

    pub fn serial(&self) -> &Serial {
        &self.serial
    }

    /// DNS names of the subjectAltName extension.
    pub fn dns_names(&self) -> &[String] {
        &self.dns
    }

    /// URI SANs (SPIFFE IDs among them).
    pub fn uris(&self) -> &[String] {
        &self.uris
    }

    /// The SPIFFE ID: the first `spiffe://` URI SAN.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uris.iter().map(String::as_str).find(|u| {
            u.len() > 9
                && u.get(..9)
                    .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))
        })
    }

    pub fn emails(&self) -> &[String] {
        &self.emails
    }

    pub fn ip_addresses(&self) -> &[IpAddr] {
        &self.ips
    }

    /// SHA-256 of the certificate DER.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.cert_sha256
    }

    /// SHA-256 of the SubjectPublicKeyInfo.
    pub fn spki_fingerprint(&self) -> &Fingerprint {
        &self.spki_sha256
    }

    /// SHA-256 of the SubjectPublicKeyInfo of the CA that signed this certificate, in the
    /// validated path (the key pin `mtls inspect` shows for that CA's certificate).
    pub fn issuer_spki_fingerprint(&self) -> Option<&Fingerprint> {
        self.issuer_spki_sha256.as_ref()
    }

    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// When the verified path stops being valid: the earliest notAfter of the leaf, the
    /// intermediates and the trust anchor (an intermediate may expire before the leaf).
    pub fn path_not_after(&self) -> OffsetDateTime {
        self.path_not_after
    }

    /// The trust-state generation this identity was verified under.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The leaf certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        self.chain.first().map(|c| c.as_ref()).unwrap_or_default()
    }

    /// The chain the client presented, leaf first (shared: cloning is a reference count).
    pub fn presented_chain(&self) -> &Arc<[CertificateDer<'static>]> {
        &self.chain
    }
}

/// Who is on the other end of a connection, as established after its handshake.
#[derive(Clone, Debug)]
pub enum PeerIdentity {
    /// No client certificate was presented.
    Anonymous,
    /// A certificate that passed chain, validity and revocation checks.
    Verified(Arc<VerifiedPeer>),
    /// A certificate that was presented and refused, with the reason.
    Rejected(crate::Rejection),
}

impl From<Result<Arc<VerifiedPeer>, crate::Rejection>> for PeerIdentity {
    fn from(r: Result<Arc<VerifiedPeer>, crate::Rejection>) -> Self {
        match r {
            Ok(p) => PeerIdentity::Verified(p),
            Err(crate::Rejection::NoCertificate) => PeerIdentity::Anonymous,
            Err(r) => PeerIdentity::Rejected(r),
        }
    }
}

impl PeerIdentity {
    /// The verified peer, or why there is none ([`crate::Rejection::NoCertificate`] when
    /// anonymous).
    pub fn verified(&self) -> Result<&Arc<VerifiedPeer>, crate::Rejection> {
        match self {
            PeerIdentity::Verified(p) => Ok(p),
            PeerIdentity::Anonymous => Err(crate::Rejection::NoCertificate),
            PeerIdentity::Rejected(r) => Err(r.clone()),
        }
    }
}
