//! OCSP requests: strict DER parsing, CertID matching, the GET path encoding.

use std::collections::HashSet;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use mtls_pki::Serial;
use x509_cert_02::der::asn1::{ObjectIdentifier, OctetString};
use x509_cert_02::der::oid::db::rfc6960::{
    ID_PKIX_OCSP_BASIC, ID_PKIX_OCSP_NONCE, ID_PKIX_OCSP_RESPONSE,
};
use x509_cert_02::der::Decode;
use x509_cert_02::ext::Extension;
use x509_ocsp::ext::AcceptableResponses;
use x509_ocsp::CertId;

use crate::{CertIdHash, Error, IssuerInfo, Result};

/// Most certificates answered in one request. RFC 5019 clients ask for one; OpenSSL can ask
/// for several. More is refused as malformed rather than signed at the requester's pleasure.
pub const MAX_REQUEST_ITEMS: usize = 32;
/// Largest DER request accepted (a signed request with a certificate chain fits easily).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Longest `GET /ocsp/{path}` path accepted (RFC 5019 GET requests are under 255 bytes).
pub const MAX_GET_PATH_LEN: usize = 8 * 1024;
/// Longest nonce echoed (RFC 8954: 1 to 32 octets). A longer one is ignored, which RFC 8954
/// allows: the response then carries no nonce.
pub const MAX_NONCE_LEN: usize = 32;

/// A parsed OCSP request. Built only by [`parse_request`].
#[derive(Clone, Debug)]
pub struct OcspRequest {
    /// The certificates asked about, in request order (never empty).
    pub items: Vec<RequestItem>,
    /// The nonce octets, when the request carries a usable nonce (1 to [`MAX_NONCE_LEN`]
    /// octets); the response echoes it.
    pub nonce: Option<Vec<u8>>,
    /// The nonce extension exactly as received, echoed byte for byte.
    pub(crate) nonce_ext: Option<Extension>,
}

/// One certificate asked about.
#[derive(Clone, Debug)]
pub struct RequestItem {
    /// The serial number from the CertID.
    pub serial: Serial,
    /// Index into the `issuers` given to [`parse_request`] of the CA whose name and key hashes
    /// the CertID carries; `None` when no given issuer matches (RFC 5019: answer
    /// `unauthorized`).
    pub issuer: Option<usize>,
    /// The CertID's hash algorithm.
    pub hash: CertIdHash,
    /// The CertID as received, echoed in the response.
    pub(crate) cert_id: CertId,
}

impl RequestItem {
    /// Whether this item's CertID names `issuer`.
    pub fn is_for(&self, issuer: &IssuerInfo) -> bool {
        issuer.matches(
            self.hash,
            self.cert_id.issuer_name_hash.as_bytes(),
            self.cert_id.issuer_key_hash.as_bytes(),
        )
    }
}

/// Parses a DER OCSP request and matches each CertID against `issuers`.
///
/// Refused (an [`Error`] whose [`Error::response_status`] is `malformedRequest`): more than
/// [`MAX_REQUEST_BYTES`], anything but exactly one DER `OCSPRequest` (trailing bytes included),
/// an empty request list, more than [`MAX_REQUEST_ITEMS`] items, CertIDs hashed with anything
/// but SHA-1 or SHA-256 (or with hashes of the wrong length), duplicate extensions, critical
/// extensions other than the nonce and acceptable-responses, and acceptable-responses without
/// id-pkix-ocsp-basic. A request signature is accepted but not checked.
pub fn parse_request(der: &[u8], issuers: &[IssuerInfo]) -> Result<OcspRequest> {
    if der.len() > MAX_REQUEST_BYTES {
        return Err(Error::TooLarge {
            len: der.len(),
            max: MAX_REQUEST_BYTES,
        });
    }
    // `from_der` refuses trailing data.
    let request =
        x509_ocsp::OcspRequest::from_der(der).map_err(|e| Error::malformed("OCSP request", e))?;
    let tbs = request.tbs_request;
    let count = tbs.request_list.len();
    if count == 0 {
        return Err(Error::EmptyRequest);
    }
    if count > MAX_REQUEST_ITEMS {
        return Err(Error::TooManyItems {
            count,
            max: MAX_REQUEST_ITEMS,
        });
    }

    let extensions = tbs.request_extensions.unwrap_or_default();
    check_extensions(&extensions, &[ID_PKIX_OCSP_NONCE, ID_PKIX_OCSP_RESPONSE])?;
    let mut nonce = None;
    let mut nonce_ext = None;
    for ext in extensions {
        if ext.extn_id == ID_PKIX_OCSP_NONCE {
            // RFC 8954: the value is an OCTET STRING; some old clients put the raw octets.
            let raw = ext.extn_value.as_bytes();
            let value = OctetString::from_der(raw)
                .map(|o| o.as_bytes().to_vec())
                .unwrap_or_else(|_| raw.to_vec());
            if (1..=MAX_NONCE_LEN).contains(&value.len()) {
                nonce = Some(value);
                nonce_ext = Some(ext);
            }
        } else if ext.extn_id == ID_PKIX_OCSP_RESPONSE {
            let accepted = AcceptableResponses::from_der(ext.extn_value.as_bytes())
                .map_err(|e| Error::malformed("acceptable-responses extension", e))?;
            if !accepted.0.contains(&ID_PKIX_OCSP_BASIC) {
                return Err(Error::UnsupportedResponseType);
            }
        }
    }

    let mut items = Vec::with_capacity(count);
    for single in tbs.request_list {
        check_extensions(
            single.single_request_extensions.as_deref().unwrap_or(&[]),
            &[],
        )?;
        let cert_id = single.req_cert;
        let alg = &cert_id.hash_algorithm;
        let hash = CertIdHash::from_oid(&alg.oid)
            .ok_or_else(|| Error::UnsupportedHashAlgorithm(alg.oid.to_string()))?;
        if alg.parameters.as_ref().is_some_and(|p| !p.is_null()) {
            return Err(Error::malformed(
                "CertID",
                "hash algorithm parameters must be absent or NULL",
            ));
        }
        if cert_id.issuer_name_hash.as_bytes().len() != hash.digest_len()
            || cert_id.issuer_key_hash.as_bytes().len() != hash.digest_len()
        {
            return Err(Error::malformed(
                "CertID",
                format!("issuer hashes are not {hash} digests"),
            ));
        }
        let serial = Serial::from_be_bytes(cert_id.serial_number.as_bytes());
        let mut item = RequestItem {
            serial,
            issuer: None,
            hash,
            cert_id,
        };
        item.issuer = issuers.iter().position(|i| item.is_for(i));
        items.push(item);
    }
    Ok(OcspRequest {
        items,
        nonce,
        nonce_ext,
    })
}

/// Refuses duplicate extensions and critical ones not in `understood` (RFC 6960 4.4).
fn check_extensions(extensions: &[Extension], understood: &[ObjectIdentifier]) -> Result<()> {
    let mut seen = HashSet::new();
    for ext in extensions {
        if !seen.insert(ext.extn_id) {
            return Err(Error::malformed(
                "OCSP request",
                format!("extension {} appears twice", ext.extn_id),
            ));
        }
        if ext.critical && !understood.contains(&ext.extn_id) {
            return Err(Error::UnsupportedCriticalExtension(ext.extn_id.to_string()));
        }
    }
    Ok(())
}

/// Standard base64 (RFC 4648 alphabet with `+` and `/`), padding optional: some clients strip it.
const GET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes the `{path}` of `GET /ocsp/{path}` (RFC 6960 Appendix A.1, RFC 5019 5) into DER:
/// percent-decoding (`%2B`, `%2F`, `%3D` and any other `%XX`), then standard base64.
///
/// Pass everything after the responder's prefix, without the query string: an unescaped `/`
/// from the base64 alphabet is part of the value. The result still goes to [`parse_request`].
pub fn decode_get_path(path_segment: &str) -> Result<Vec<u8>> {
    if path_segment.len() > MAX_GET_PATH_LEN {
        return Err(Error::TooLarge {
            len: path_segment.len(),
            max: MAX_GET_PATH_LEN,
        });
    }
    let unescaped: Vec<u8> = percent_encoding::percent_decode_str(path_segment).collect();
    if unescaped.is_empty() {
        return Err(Error::malformed("OCSP GET path", "empty"));
    }
    GET_BASE64
        .decode(&unescaped)
        .map_err(|e| Error::malformed("OCSP GET path", format!("not base64: {e}")))
}
