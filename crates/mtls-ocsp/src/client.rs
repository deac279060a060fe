//! The relying party's side: where to ask (the certificate's AIA) and what to send.

use mtls_pki::Serial;
use x509_cert_02::der::asn1::{Any, OctetString};
use x509_cert_02::der::oid::db::rfc5912::ID_SHA_1;
use x509_cert_02::der::oid::db::rfc6960::ID_PKIX_OCSP_NONCE;
use x509_cert_02::der::Encode;
use x509_cert_02::ext::Extension;
use x509_cert_02::serial_number::SerialNumber;
use x509_cert_02::spki::AlgorithmIdentifierOwned;
use x509_ocsp::ext::Nonce;
use x509_ocsp::{CertId, OcspRequest, Request, TbsRequest, Version};

use crate::{Error, IssuerInfo, Result};

/// A DER OCSP request about one certificate: a SHA-1 CertID (what RFC 5019 responders expect)
/// and, when given, a nonce (1 to 32 octets) the response must echo.
pub fn build_request(
    issuer: &IssuerInfo,
    serial: &Serial,
    nonce: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let octets = |v: &[u8]| OctetString::new(v.to_vec()).map_err(Error::encode);
    let cert_id = CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: ID_SHA_1,
            parameters: Some(Any::null()),
        },
        issuer_name_hash: octets(issuer.name_sha1())?,
        issuer_key_hash: octets(issuer.key_sha1())?,
        serial_number: SerialNumber::new(serial.as_bytes()).map_err(Error::encode)?,
    };
    let request_extensions = match nonce {
        None => None,
        Some(n) => {
            if n.is_empty() || n.len() > crate::MAX_NONCE_LEN {
                return Err(Error::malformed("nonce", "must be 1 to 32 octets"));
            }
            let value = Nonce::new(n.to_vec())
                .map_err(Error::encode)?
                .to_der()
                .map_err(Error::encode)?;
            Some(vec![Extension {
                extn_id: ID_PKIX_OCSP_NONCE,
                critical: false,
                extn_value: OctetString::new(value).map_err(Error::encode)?,
            }])
        }
    };
    OcspRequest {
        tbs_request: TbsRequest {
            version: Version::V1,
            requestor_name: None,
            request_list: vec![Request {
                req_cert: cert_id,
                single_request_extensions: None,
            }],
            request_extensions,
        },
        optional_signature: None,
    }
    .to_der()
    .map_err(Error::encode)
}

/// The OCSP responder URLs of a certificate's Authority Information Access extension.
pub fn responder_urls(cert_der: &[u8]) -> Result<Vec<String>> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let cert =
        mtls_pki::pem_io::parse_certificate(cert_der).map_err(|source| Error::Certificate {
            what: "certificate",
            source,
        })?;
    let mut urls = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::AuthorityInfoAccess(aia) = ext.parsed_extension() {
            for d in &aia.accessdescs {
                if d.access_method == x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_OCSP {
                    if let GeneralName::URI(u) = d.access_location {
                        urls.push(u.to_string());
                    }
                }
            }
        }
    }
    Ok(urls)
}
