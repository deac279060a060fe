//! PEM/DER input handling: every reader in mtls accepts either encoding.
//!
//! Private keys travel through here. What this module hands out can be wiped: [`Block`] is
//! [`Zeroize`], [`decode_secret`] returns the blocks in [`Zeroizing`], and [`encode`] keeps
//! its only intermediate copy (the base64 text) in [`Zeroizing`]. PEM framing and base64 are
//! the `pem` crate's (a maintained parser, not one of ours); it builds each block's base64
//! text in a `String` it drops unwiped, a copy this module cannot reach.

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use zeroize::{Zeroize, Zeroizing};

use crate::{Error, Result};

/// One decoded object: its PEM label (empty for raw DER input) and its DER bytes.
///
/// The DER may be a private key: it is never printed, and the block can be wiped
/// ([`Zeroize`]; `Zeroizing<Vec<Block>>` wipes every block it holds when dropped).
#[derive(Clone, PartialEq, Eq, Zeroize)]
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

/// How the input is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    /// One DER object (a SEQUENCE) taking the whole input.
    Der,
    /// A DER SEQUENCE followed by other bytes.
    DerWithTrailing,
    /// A SEQUENCE of indefinite length (BER): binary, not DER.
    Ber,
    /// PEM text: a `-----BEGIN ` line.
    Pem,
    Neither,
}

/// DER is decided first, from the structure: a DER object (a certificate, a CSR) may carry
/// any bytes inside it, `-----BEGIN ` lines included, and reading those instead would make
/// mtls sign, trust or describe another object than the one OpenSSL shows for the same file.
/// A SEQUENCE of indefinite length (BER, which OpenSSL also reads) is binary all the same.
/// PEM is text: its first `-----BEGIN ` at the start of a line (after spaces or tabs at
/// most), with nothing but text before it (explanatory lines; a byte-order mark).
fn encoding(input: &[u8]) -> Encoding {
    use x509_parser::asn1_rs::{Any, FromBer as _, FromDer as _, Tag};
    if input.first() == Some(&0x30) {
        if let Ok((rest, any)) = Any::from_der(input) {
            if any.tag() == Tag::Sequence {
                return if rest.is_empty() {
                    Encoding::Der
                } else {
                    Encoding::DerWithTrailing
                };
            }
        }
        if Any::from_ber(input).is_ok_and(|(_, any)| any.tag() == Tag::Sequence) {
            return Encoding::Ber;
        }
    }
    let text = without_bom(input);
    let mut offset = 0usize;
    for line in text.split(|b| *b == b'\n') {
        if line.trim_ascii_start().starts_with(b"-----BEGIN ") {
            let before = text.get(..offset).unwrap_or_default();
            let is_text = std::str::from_utf8(before).is_ok_and(|s| {
                !s.chars()
                    .any(|c| c.is_control() && !matches!(c, '\t' | '\r' | '\n'))
            });
            return if is_text {
                Encoding::Pem
            } else {
                Encoding::Neither
            };
        }
        offset = offset.saturating_add(line.len() + 1);
    }
    Encoding::Neither
}

/// `input` without a leading UTF-8 byte-order mark (Notepad and PowerShell write one).
fn without_bom(input: &[u8]) -> &[u8] {
    input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input)
}

/// True when the input is PEM text rather than DER.
pub fn is_pem(input: &[u8]) -> bool {
    encoding(input) == Encoding::Pem
}

/// Decodes PEM (one or more blocks, text around them ignored) or a single raw DER object.
///
/// The blocks are plain vectors: when the input may hold a private key, use
/// [`decode_secret`] (or wrap the result in [`Zeroizing`]) so they are wiped when dropped.
pub fn decode(input: &[u8]) -> Result<Vec<Block>> {
    if input.is_empty() {
        return Err(Error::malformed("input", "the file is empty"));
    }
    match encoding(input) {
        Encoding::Pem => {}
        Encoding::Der => {
            return Ok(vec![Block {
                label: String::new(),
                der: input.to_vec(),
            }])
        }
        Encoding::Ber => {
            return Err(Error::malformed(
                "DER",
                "BER with an indefinite length, not DER (convert it: openssl x509 -outform DER)",
            ))
        }
        Encoding::DerWithTrailing => {
            return Err(Error::malformed(
                "DER",
                "bytes after the DER object (one object per DER file)",
            ))
        }
        Encoding::Neither => {
            // DER always starts with a SEQUENCE tag for the objects we read.
            return Err(Error::malformed(
                "input",
                "neither PEM (no -----BEGIN line) nor DER (not one complete SEQUENCE)",
            ));
        }
    }
    let pems = pem::parse_many(without_bom(input)).map_err(|e| Error::malformed("PEM", e))?;
    if pems.is_empty() {
        return Err(Error::malformed("PEM", "no complete PEM block found"));
    }
    // Moved into wipeable blocks as they come: on a refusal below, what was decoded so far
    // is wiped with them.
    let mut out = Zeroizing::new(Vec::with_capacity(pems.len()));
    for p in pems {
        let legacy_encrypted =
            p.headers().get("Proc-Type").is_some() || p.headers().get("DEK-Info").is_some();
        let label = p.tag().to_string();
        out.push(Block {
            label,
            der: p.into_contents(),
        });
        if legacy_encrypted {
            return Err(Error::UnsupportedKey(
                "legacy OpenSSL-encrypted PEM (Proc-Type/DEK-Info headers); convert it with \
                 `openssl pkcs8 -topk8 -v2 aes-256-cbc` first"
                    .into(),
            ));
        }
        if out.last().is_some_and(|b| b.der.is_empty()) {
            return Err(Error::malformed(
                "PEM",
                format!(
                    "empty {} block",
                    out.last().map_or("", |b| b.label.as_str())
                ),
            ));
        }
    }
    Ok(std::mem::take(&mut *out))
}

/// [`decode`] for input that may hold a private key: every block is wiped when dropped.
pub fn decode_secret(input: &[u8]) -> Result<Zeroizing<Vec<Block>>> {
    decode(input).map(Zeroizing::new)
}

/// Encodes DER as PEM with LF line endings (64 base64 characters a line, as OpenSSL writes).
///
/// The base64 text, the one intermediate copy, is wiped; the result is written into a string
/// sized exactly beforehand (never reallocated). Wrap it in [`Zeroizing`] when `der` is a
/// secret.
pub fn encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    const LINE_WIDTH: usize = 64;
    let mut text = Zeroizing::new(String::with_capacity(der.len().div_ceil(3) * 4));
    base64::engine::general_purpose::STANDARD.encode_string(der, &mut text);
    let begin = format!("-----BEGIN {label}-----\n");
    let end = format!("-----END {label}-----\n");
    let mut out = String::with_capacity(
        begin.len() + text.len() + text.len().div_ceil(LINE_WIDTH) + end.len(),
    );
    out.push_str(&begin);
    // Base64 is ASCII: any byte offset is a character boundary.
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(LINE_WIDTH));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str(&end);
    out
}

/// The DER of the blocks whose label `keep` accepts; the others are wiped (a combined file
/// holds the private key beside the certificates), without copying the kept ones.
fn wanted(blocks: Vec<Block>, keep: impl Fn(&str) -> bool) -> impl Iterator<Item = Vec<u8>> {
    blocks.into_iter().filter_map(move |mut b| {
        if keep(&b.label) {
            Some(std::mem::take(&mut b.der))
        } else {
            b.zeroize();
            None
        }
    })
}

/// All certificates in the input (PEM `CERTIFICATE` blocks, or one DER certificate).
pub fn certificates(input: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = wanted(decode(input)?, |label| {
        label.is_empty() || label == "CERTIFICATE" || label == "TRUSTED CERTIFICATE"
    })
    .map(CertificateDer::from)
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
    let crls: Vec<_> = wanted(decode(input)?, |label| {
        label.is_empty() || label == "X509 CRL"
    })
    .map(CertificateRevocationListDer::from)
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

    /// A DER certificate (or CSR) carrying PEM text in an extension is read as itself, as
    /// OpenSSL reads it, never as the PEM block hidden inside; DER followed by anything (a
    /// PEM block appended) is refused.
    #[test]
    fn der_is_decided_before_any_pem_it_may_carry() {
        let key = crate::PrivateKey::generate(crate::KeyAlgorithm::EcdsaP256).unwrap();
        let hidden = rcgen::CertificateParams::new(vec!["admin.example".to_string()])
            .unwrap()
            .self_signed(key.key_pair())
            .unwrap();
        let hidden_pem = encode("CERTIFICATE", hidden.der());
        let mut outer = rcgen::CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        outer
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 2, 3, 4, 5],
                [b"\n".as_slice(), hidden_pem.as_bytes()].concat(),
            ));
        let outer = outer.self_signed(key.key_pair()).unwrap();
        assert!(!is_pem(outer.der()));
        let read = certificates(outer.der()).unwrap();
        assert_eq!(read, vec![outer.der().clone()]);
        // Re-encoded with an indefinite length (BER, which OpenSSL reads as the same object):
        // refused, never searched for PEM.
        let der = outer.der().as_ref();
        let header = 2 + usize::from(der[1] & 0x7f) * usize::from(der[1] & 0x80 != 0);
        let indefinite = [&[0x30, 0x80][..], &der[header..], &[0, 0]].concat();
        let e = certificates(&indefinite).unwrap_err();
        assert!(e.to_string().contains("indefinite"), "{e}");
        // Binary bytes before a BEGIN line: not PEM either.
        let binary = [
            &[0x04, 0x82, 0x00, 0x01, 0xff][..],
            b"\n",
            hidden_pem.as_bytes(),
        ]
        .concat();
        assert!(!is_pem(&binary));
        assert!(certificates(&binary).is_err());
        // A byte-order mark before PEM (Notepad, PowerShell) is fine.
        let bom = [&b"\xEF\xBB\xBF"[..], hidden_pem.as_bytes()].concat();
        assert_eq!(certificates(&bom).unwrap(), vec![hidden.der().clone()]);
        let mut trailing = outer.der().to_vec();
        trailing.extend_from_slice(format!("\n{hidden_pem}").as_bytes());
        assert!(certificates(&trailing).is_err());
        // PEM is still PEM, with explanatory text before it (as `openssl x509 -text` writes).
        let text = format!("Certificate:\n    Data: ...\n{hidden_pem}");
        assert_eq!(
            certificates(text.as_bytes()).unwrap(),
            vec![hidden.der().clone()]
        );
        // Indented, it is PEM; a BEGIN within a line is not.
        let indented: String = hidden_pem.lines().map(|l| format!("    {l}\n")).collect();
        assert_eq!(
            certificates(indented.as_bytes()).unwrap(),
            vec![hidden.der().clone()]
        );
        assert!(!is_pem(format!("x{hidden_pem}").as_bytes()));
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(decode(b"").is_err());
        assert!(decode(b"hello").is_err());
        assert!(decode(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
        assert!(certificates(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
    }

    /// `encode` writes what the `pem` crate writes (and OpenSSL reads), and `decode` reads it
    /// back.
    #[test]
    fn encode_matches_the_pem_crate() {
        use proptest::prelude::*;
        let config = proptest::test_runner::Config {
            cases: 2_000,
            failure_persistence: None,
            ..Default::default()
        };
        proptest::test_runner::TestRunner::new(config)
            .run(
                &(
                    "[A-Z][A-Z0-9 ]{0,20}",
                    prop::collection::vec(any::<u8>(), 0..400),
                ),
                |(label, der)| {
                    let ours = encode(&label, &der);
                    let reference = pem::encode_config(
                        &pem::Pem::new(label.clone(), der.clone()),
                        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
                    );
                    prop_assert_eq!(&ours, &reference);
                    if !der.is_empty() {
                        let back = decode(ours.as_bytes()).unwrap();
                        prop_assert_eq!(back, vec![Block { label, der }]);
                    }
                    Ok(())
                },
            )
            .unwrap();
    }

    /// Legacy encrypted PEM and empty blocks are refused with their reason.
    #[test]
    fn legacy_encryption_and_empty_blocks_are_refused() {
        let legacy = b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\nMAMCAQA=\n-----END RSA PRIVATE KEY-----\n";
        assert!(matches!(decode(legacy), Err(Error::UnsupportedKey(m)) if m.contains("Proc-Type")));
        let empty = b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n";
        assert!(decode(empty)
            .unwrap_err()
            .to_string()
            .contains("empty CERTIFICATE block"));
    }

    /// Blocks of a secret are wiped when dropped: `decode_secret` hands them out in
    /// `Zeroizing`, and wiping a block empties it.
    #[test]
    fn secret_blocks_can_be_wiped() {
        let pem = encode("PRIVATE KEY", &[0x30, 0x03, 0x02, 0x01, 0x00]);
        let mut blocks: Zeroizing<Vec<Block>> = decode_secret(pem.as_bytes()).unwrap();
        assert_eq!(blocks[0].der, [0x30, 0x03, 0x02, 0x01, 0x00]);
        blocks[0].zeroize();
        assert!(blocks[0].der.is_empty() && blocks[0].label.is_empty());
        blocks.zeroize();
        assert!(blocks.is_empty());
    }
}
