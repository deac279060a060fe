//! The verified identity of a client, parsed once per connection.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

/// A client identity that passed chain validation and revocation checks against trust state
/// generation `generation`. Only this crate can construct one.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct VerifiedPeer {
    pub subject: String,
    pub common_name: Option<String>,
    pub organizational_units: Vec<String>,
    pub issuer: String,
    pub serial: String,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Hex SHA-256 of the certificate DER.
    pub cert_sha256: String,
    /// Hex SHA-256 of the SubjectPublicKeyInfo.
    pub spki_sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub generation: u64,
    #[serde(skip)]
    pub cert_der: Arc<Vec<u8>>,
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

impl VerifiedPeer {
    pub(crate) fn from_cert(der: &[u8], cert: &X509Certificate<'_>, generation: u64) -> Self {
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
            serial: mtls_pki::Serial::from_be_bytes(cert.raw_serial()).to_string(),
            dns,
            uris,
            emails,
            ips,
            cert_sha256: sha256_hex(der),
            spki_sha256: sha256_hex(cert.public_key().raw),
            not_after: cert.validity().not_after.to_datetime(),
            generation,
            cert_der: Arc::new(der.to_vec()),
        }
    }
}
