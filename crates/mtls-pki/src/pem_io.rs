//! PEM/DER input handling: every reader in mtls accepts either encoding.

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::{Error, Result};

/// One decoded object: its PEM label (empty for raw DER input) and its DER bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    pub label: String,
    pub der: Vec<u8>,
}

impl std::fmt::Debug for Block {
    // DER may be a private key: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Block({:?}, {} bytes)", self.label, self.der.len())
    }
}

/// True when the input looks like PEM text rather than DER.
pub fn is_pem(input: &[u8]) -> bool {
    input.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Decodes PEM (one or more blocks, text around them ignored) or a single raw DER object.
pub fn decode(input: &[u8]) -> Result<Vec<Block>> {
    if input.is_empty() {
        return Err(Error::malformed("input", "the file is empty"));
    }
    if !is_pem(input) {
        // DER always starts with a SEQUENCE tag for the objects we read.
        if input.first() != Some(&0x30) {
            return Err(Error::malformed(
                "input",
                "neither PEM (no -----BEGIN line) nor DER (does not start with a SEQUENCE)",
            ));
        }
        return Ok(vec![Block {
            label: String::new(),
            der: input.to_vec(),
        }]);
    }
    let pems = pem::parse_many(input).map_err(|e| Error::malformed("PEM", e))?;
    if pems.is_empty() {
        return Err(Error::malformed("PEM", "no complete PEM block found"));
    }
    let mut out = Vec::with_capacity(pems.len());
    for p in pems {
        if p.headers().get("Proc-Type").is_some() || p.headers().get("DEK-Info").is_some() {
            return Err(Error::UnsupportedKey(
                "legacy OpenSSL-encrypted PEM (Proc-Type/DEK-Info headers); convert it with \
                 `openssl pkcs8 -topk8 -v2 aes-256-cbc` first"
                    .into(),
            ));
        }
        if p.contents().is_empty() {
            return Err(Error::malformed("PEM", format!("empty {} block", p.tag())));
        }
        out.push(Block {
            label: p.tag().to_string(),
            der: p.into_contents(),
        });
    }
    Ok(out)
}

/// Encodes DER as PEM with LF line endings.
pub fn encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// All certificates in the input (PEM `CERTIFICATE` blocks, or one DER certificate).
pub fn certificates(input: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let blocks = decode(input)?;
    let certs: Vec<_> = blocks
        .into_iter()
        .filter(|b| {
            b.label.is_empty() || b.label == "CERTIFICATE" || b.label == "TRUSTED CERTIFICATE"
        })
        .map(|b| CertificateDer::from(b.der))
        .collect();
    if certs.is_empty() {
        return Err(Error::NotFound {
            what: "certificate",
        });
    }
    for c in &certs {
        parse_certificate(c)?;
    }
    Ok(certs)
}

/// All CRLs in the input (PEM `X509 CRL` blocks, or one DER CRL).
pub fn crls(input: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let blocks = decode(input)?;
    let crls: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.label.is_empty() || b.label == "X509 CRL")
        .map(|b| CertificateRevocationListDer::from(b.der))
        .collect();
    if crls.is_empty() {
        return Err(Error::NotFound { what: "CRL" });
    }
    for c in &crls {
        // The structure without materialising the entries (read later, one at a time).
        let (head, _) = crate::revocation::without_entries(c)?;
        crate::revocation::parse_crl(&head)?;
    }
    Ok(crls)
}

/// Parses one DER certificate, refusing trailing bytes.
pub fn parse_certificate(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| Error::malformed("certificate", e))?;
    if !rest.is_empty() {
        return Err(Error::malformed(
            "certificate",
            "trailing bytes after the certificate",
        ));
    }
    Ok(cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_rejected() {
        assert!(decode(b"").is_err());
        assert!(decode(b"hello").is_err());
        assert!(decode(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
        assert!(certificates(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
    }
}
