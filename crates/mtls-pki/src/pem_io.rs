//! PEM/DER input handling: every reader in mtls accepts either encoding.
//!
//! Private keys travel through here, so this module leaves no copy of what it decodes or
//! encodes behind: it frames PEM and decodes base64 itself, into buffers sized once and wiped
//! when dropped (or handed to the caller). The `pem` crate, used before, collects each block's
//! base64 text into a growing `String` and drops it, and every buffer it outgrew, unwiped.
//! What is accepted, and every error message, is still the `pem` crate's: the framing is
//! ported from it, and a block this parser refuses is handed alone to `pem::parse_many` for
//! the message (the tests compare the two on generated and fuzzed inputs). Callers holding a
//! key use [`decode_secret`] or wrap the blocks in [`Zeroizing`] ([`Block`] is [`Zeroize`]).

use std::ops::Range;

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

/// True when the input looks like PEM text rather than DER.
pub fn is_pem(input: &[u8]) -> bool {
    input.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Decodes PEM (one or more blocks, text around them ignored) or a single raw DER object.
///
/// The blocks are plain vectors: when the input may hold a private key, use
/// [`decode_secret`] (or wrap the result in [`Zeroizing`]) so they are wiped when dropped.
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
    let mut parsed = match parse_pem(input) {
        Ok(blocks) => blocks,
        // The `pem` crate's message for the block refused (it refuses the same blocks). On
        // this path only, for damaged input, `pem` may leave copies of that block's base64
        // text (and, refusing its headers, of its decoded data) unwiped.
        Err(refused) => match pem::parse_many(&input[refused]) {
            Err(e) => return Err(Error::malformed("PEM", e)),
            // Never happens (the tests compare the two parsers); if it did, `pem` decides.
            Ok(_) => parse_pem_with_pem_crate(input)?,
        },
    };
    if parsed.is_empty() {
        return Err(Error::malformed("PEM", "no complete PEM block found"));
    }
    for p in parsed.iter() {
        if p.legacy_encrypted {
            return Err(Error::UnsupportedKey(
                "legacy OpenSSL-encrypted PEM (Proc-Type/DEK-Info headers); convert it with \
                 `openssl pkcs8 -topk8 -v2 aes-256-cbc` first"
                    .into(),
            ));
        }
        if p.block.der.is_empty() {
            return Err(Error::malformed(
                "PEM",
                format!("empty {} block", p.block.label),
            ));
        }
    }
    // Moved out, not copied: what is left behind is empty.
    Ok(parsed
        .iter_mut()
        .map(|p| Block {
            label: std::mem::take(&mut p.block.label),
            der: std::mem::take(&mut p.block.der),
        })
        .collect())
}

/// [`decode`] for input that may hold a private key: every block is wiped when dropped.
pub fn decode_secret(input: &[u8]) -> Result<Zeroizing<Vec<Block>>> {
    decode(input).map(Zeroizing::new)
}

/// Encodes DER as PEM with LF line endings (64 base64 characters a line).
///
/// The text is written straight into the returned string, sized exactly beforehand: no other
/// copy of `der` or of its base64 is made. Wrap the result in [`Zeroizing`] when `der` is a
/// secret.
pub fn encode(label: &str, der: &[u8]) -> String {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    const DASHES: &str = "-----\n";
    let base64_len = der.len().div_ceil(3) * 4;
    let len = BEGIN.len()
        + END.len()
        + 2 * (label.len() + DASHES.len())
        + base64_len
        + base64_len.div_ceil(LINE_WIDTH);
    let mut out = String::with_capacity(len);
    out.push_str(BEGIN);
    out.push_str(label);
    out.push_str(DASHES);
    for line in der.chunks(LINE_WIDTH / 4 * 3) {
        for group in line.chunks(3) {
            let b = [
                group[0],
                group.get(1).copied().unwrap_or(0),
                group.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
                out.push(if i <= group.len() {
                    char::from(encode_sextet((n >> shift) as u8 & 0x3f))
                } else {
                    '='
                });
            }
        }
        out.push('\n');
    }
    out.push_str(END);
    out.push_str(label);
    out.push_str(DASHES);
    debug_assert_eq!(out.len(), len, "sized exactly: never reallocated");
    out
}

/// Base64 characters a line in [`encode`] (what the `pem` crate and OpenSSL write).
const LINE_WIDTH: usize = 64;

/// A block read by [`parse_pem`]: what [`decode`] returns, and whether the block carried the
/// headers of OpenSSL's legacy PEM encryption.
#[derive(Zeroize)]
struct Parsed {
    block: Block,
    legacy_encrypted: bool,
}

/// Every PEM block of `input`, accepting exactly what `pem::parse_many` accepts and returning
/// the same labels and contents; a block it would refuse is returned as its range in `input`
/// (text before it included), which `pem::parse_many` alone refuses with the same error.
fn parse_pem(input: &[u8]) -> std::result::Result<Zeroizing<Vec<Parsed>>, Range<usize>> {
    let mut out = Zeroizing::new(Vec::new());
    let mut rest = input;
    while !rest.is_empty() {
        let start = input.len() - rest.len();
        let Some((after, frame)) = pem_frame(rest) else {
            break;
        };
        rest = after;
        let range = start..input.len() - rest.len();
        out.push(parse_frame(&frame).ok_or(range)?);
    }
    Ok(out)
}

/// The parts of one PEM block (as the `pem` crate frames them; its `parser` module is private,
/// so the framing is ported from it).
struct Frame<'a> {
    begin: &'a [u8],
    headers: &'a [u8],
    data: &'a [u8],
    end: &'a [u8],
}

/// The first block of `input` and the input after it: `-----BEGIN (label)-----`, whitespace,
/// the payload up to `-----END `, `(label)-----`, whitespace. Text before the block is skipped.
fn pem_frame(input: &[u8]) -> Option<(&[u8], Frame<'_>)> {
    let (input, _) = read_until(input, b"-----BEGIN ")?;
    let (input, begin) = read_until(input, b"-----")?;
    let input = skip_whitespace(input);
    let (input, payload) = read_until(input, b"-----END ")?;
    // Headers end at the first blank line, if there is one.
    let (headers, data) = match read_until(payload, b"\n\n") {
        Some((data, headers)) => (headers, data),
        None => match read_until(payload, b"\r\n\r\n") {
            Some((data, headers)) => (headers, data),
            None => (&[][..], payload),
        },
    };
    let (input, end) = read_until(input, b"-----")?;
    let input = skip_whitespace(input);
    Some((
        input,
        Frame {
            begin,
            headers,
            data,
            end,
        },
    ))
}

/// `[ \t\n\r]*`
fn skip_whitespace(mut input: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\n' | b'\r', rest @ ..] = input {
        input = rest;
    }
    input
}

/// `(.*?)marker`: the input after the marker and what came before it. The search is the `pem`
/// crate's, quirks included, so that the two frame every input alike: after a partial match it
/// does not look again at the byte that broke it (`------BEGIN ` with six dashes is no match).
fn read_until<'a>(input: &'a [u8], marker: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    if marker.is_empty() {
        return Some((&[], input));
    }
    let mut index = 0;
    let mut found = 0;
    while input.len() - index >= marker.len() - found {
        if input[index] == marker[found] {
            found += 1;
        } else {
            found = 0;
        }
        index += 1;
        if found == marker.len() {
            return Some((&input[index..], &input[..index - found]));
        }
    }
    None
}

/// The block a frame holds, or `None` where the `pem` crate refuses it: labels that are not
/// UTF-8, empty or differ between BEGIN and END; a header line without `:`; data that is not
/// UTF-8 or not canonical padded base64 once Unicode whitespace is removed.
fn parse_frame(frame: &Frame<'_>) -> Option<Parsed> {
    let label = std::str::from_utf8(frame.begin).ok()?;
    let end = std::str::from_utf8(frame.end).ok()?;
    if label.is_empty() || end.is_empty() || label != end {
        return None;
    }
    let mut legacy_encrypted = false;
    for line in std::str::from_utf8(frame.headers).ok()?.lines() {
        let (key, _) = line.split_once(':')?;
        legacy_encrypted |= matches!(key.trim(), "Proc-Type" | "DEK-Info");
    }
    let data = std::str::from_utf8(frame.data).ok()?;
    // The base64 text without its whitespace, in a buffer that cannot grow (and so leave a
    // copy behind) and is wiped when dropped.
    let mut text = Zeroizing::new(Vec::with_capacity(data.len()));
    for c in data.chars().filter(|c| !c.is_whitespace()) {
        text.push(u8::try_from(c).ok().filter(u8::is_ascii)?);
    }
    Some(Parsed {
        block: Block {
            label: label.to_string(),
            der: base64_decode(&text)?,
        },
        legacy_encrypted,
    })
}

/// Standard base64 with canonical padding (the `base64` crate's `STANDARD` engine, as the `pem`
/// crate decodes): the length a multiple of 4, `=` only at the end of the last group, and no
/// bits set past the end of the data. The output is returned as is; on failure, what was
/// decoded so far is wiped. Character lookups are arithmetic, not table indexing by secret data.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let padding = match text {
        [.., b'=', b'='] => 2,
        [.., b'='] => 1,
        _ => 0,
    };
    let groups = text.len() / 4;
    let mut out = Zeroizing::new(Vec::with_capacity(groups * 3));
    let mut invalid = 0i16;
    for (i, group) in text.chunks_exact(4).enumerate() {
        let pad = if i + 1 == groups { padding } else { 0 };
        let mut n = 0u32;
        for (j, &c) in group.iter().enumerate() {
            let v = if j >= 4 - pad { 0 } else { decode_sextet(c) };
            invalid |= v;
            n = (n << 6) | (v as u32 & 0x3f);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
        // Canonical: the bits of a padded group past the data are zero.
        if (pad == 2 && n & 0xffff != 0) || (pad == 1 && n & 0xff != 0) {
            return None;
        }
    }
    // Any character outside the alphabet made `invalid` negative.
    if invalid < 0 {
        return None;
    }
    Some(std::mem::take(&mut *out))
}

/// The value of a base64 character, or -1 (constant time, as in the `base64ct` crate).
fn decode_sextet(c: u8) -> i16 {
    let c = i16::from(c);
    // -1 where c is in start..=end, else 0.
    let within = |start: u8, end: u8| ((i16::from(start) - 1 - c) & (c - i16::from(end) - 1)) >> 8;
    -1 + (within(b'A', b'Z') & (c - 64))
        + (within(b'a', b'z') & (c - 70))
        + (within(b'0', b'9') & (c + 5))
        + (within(b'+', b'+') & 63)
        + (within(b'/', b'/') & 64)
}

/// The base64 character of a 6-bit value (constant time, as in the `base64ct` crate).
fn encode_sextet(v: u8) -> u8 {
    let v = i16::from(v);
    let mut diff = i16::from(b'A');
    diff += ((25 - v) >> 8) & 6;
    diff -= ((51 - v) >> 8) & 75;
    diff -= ((61 - v) >> 8) & 15;
    diff += ((62 - v) >> 8) & 3;
    (v + diff) as u8
}

/// What [`parse_pem`] returns, read by the `pem` crate (the path [`decode`] never takes unless
/// the two parsers disagree).
fn parse_pem_with_pem_crate(input: &[u8]) -> Result<Zeroizing<Vec<Parsed>>> {
    let pems = pem::parse_many(input).map_err(|e| Error::malformed("PEM", e))?;
    let mut out = Zeroizing::new(Vec::with_capacity(pems.len()));
    for p in pems {
        let legacy_encrypted =
            p.headers().get("Proc-Type").is_some() || p.headers().get("DEK-Info").is_some();
        out.push(Parsed {
            block: Block {
                label: p.tag().to_string(),
                der: p.into_contents(),
            },
            legacy_encrypted,
        });
    }
    Ok(out)
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

    /// What `decode` did when the `pem` crate parsed the PEM: the reference the parser of this
    /// module must match, result for result and error message for error message.
    fn decode_with_pem_crate(input: &[u8]) -> Result<Vec<Block>> {
        if input.is_empty() || !is_pem(input) {
            return decode(input);
        }
        let pems = pem::parse_many(input).map_err(|e| Error::malformed("PEM", e))?;
        if pems.is_empty() {
            return Err(Error::malformed("PEM", "no complete PEM block found"));
        }
        let mut out = Vec::new();
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

    /// `decode` returns what it returned with the `pem` crate, and its own parser accepts
    /// exactly what `pem::parse_many` accepts (not merely leaving the rest to the fallback),
    /// refusing a block that `pem` alone refuses with the message it gives for the whole input.
    fn same_as_pem_crate(input: &[u8]) -> std::result::Result<(), String> {
        let differs = |what: &str, ours: &dyn std::fmt::Debug, reference: &dyn std::fmt::Debug| {
            Err(format!(
                "{what} differs for input {:?}\nours:      {ours:?}\nreference: {reference:?}",
                String::from_utf8_lossy(input)
            ))
        };
        let ours = decode(input).map_err(|e| e.to_string());
        let reference = decode_with_pem_crate(input).map_err(|e| e.to_string());
        if ours != reference {
            return differs("decode", &ours, &reference);
        }
        if !is_pem(input) {
            return Ok(());
        }
        let reference = pem::parse_many(input);
        let ours = match parse_pem(input) {
            Ok(parsed) => Ok(parsed
                .iter()
                .map(|p| (p.block.clone(), p.legacy_encrypted))
                .collect::<Vec<_>>()),
            Err(refused) => match pem::parse_many(&input[refused]) {
                Ok(_) => return differs("the refused block", &"refused", &"accepted"),
                Err(e) => Err(e.to_string()),
            },
        };
        let reference = reference
            .map(|pems| {
                pems.into_iter()
                    .map(|p| {
                        let legacy = p.headers().get("Proc-Type").is_some()
                            || p.headers().get("DEK-Info").is_some();
                        let label = p.tag().to_string();
                        (
                            Block {
                                label,
                                der: p.into_contents(),
                            },
                            legacy,
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .map_err(|e| e.to_string());
        if ours != reference {
            return differs("parse_pem", &ours, &reference);
        }
        Ok(())
    }

    /// The corners of PEM framing and base64, each decoded as the `pem` crate decodes it.
    #[test]
    fn decode_matches_the_pem_crate_on_edge_cases() {
        let key = encode("PRIVATE KEY", &[0x30, 0x03, 0x02, 0x01, 0x00]);
        let body = |b: &str| format!("-----BEGIN X-----\n{b}\n-----END X-----\n");
        let mut cases: Vec<Vec<u8>> = vec![
            key.clone().into_bytes(),
            key.replace('\n', "\r\n").into_bytes(),
            format!("Bag Attributes\n    localKeyID: 01\nsubject=/CN=x\n{key}trailer").into_bytes(),
            format!("{key}{key}").into_bytes(),
            format!("-{key}").into_bytes(),
            key.replace("-----BEGIN", "------BEGIN").into_bytes(),
            key.replace("-----END PRIVATE KEY", "-----END PUBLIC KEY")
                .into_bytes(),
            key.replace("-----END PRIVATE KEY-----\n", "").into_bytes(),
            key.replace("PRIVATE KEY", "").into_bytes(),
            b"-----BEGIN X-----\n-----END X-----\n".to_vec(),
            b"-----BEGIN \xff-----\nMAA=\n-----END \xff-----\n".to_vec(),
            b"-----BEGIN X-----\nMA\xffA=\n-----END X-----\n".to_vec(),
            b"-----BEGIN ".to_vec(),
            b"x-----BEGIN X----- -----END X-----".to_vec(),
        ];
        for b in [
            "MAA=",
            "MAA",
            "MAA==",
            "MAB=",
            "MA==",
            "Mw==",
            "Mx==",
            "Zm9v",
            "Zm8=",
            "Zm9=",
            "Zg==Zm9v",
            "====",
            "A===",
            "AA=A",
            "M A A =",
            "M\u{a0}AA=",
            "M\u{e9}AA=",
            "MAA=\n\nMAA=",
            "Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nMAA=",
            " DEK-Info : x\r\n\r\nMAA=",
            "no colon\n\nMAA=",
            "a: b\n\n",
            "+/+/",
            "-_-_",
        ] {
            cases.push(body(b).into_bytes());
        }
        for case in cases {
            same_as_pem_crate(&case).unwrap();
        }
    }

    /// Random PEM-like text: blocks whose labels, headers and base64 are built from fragments
    /// (markers, padding, ASCII and Unicode whitespace, header lines, bytes that are not
    /// UTF-8), with junk around them, and free soups of the same fragments. Decoded as the
    /// `pem` crate decodes it.
    #[test]
    fn decode_matches_the_pem_crate_on_random_fragments() {
        use proptest::prelude::*;
        use proptest::sample::select;
        let text = |v: Vec<&'static str>| select(v).prop_map(|s| s.as_bytes().to_vec());
        let body = prop_oneof![
            6 => "[A-Za-z0-9+/]{1,8}".prop_map(String::into_bytes),
            3 => text(vec![
                "\n", "\r\n", " ", "\t", "=", "==", "\n\n", "\r\n\r\n", "\u{a0}", "\u{2003}",
                "\u{85}", "\u{e9}", "Proc-Type: 4,ENCRYPTED\n", " DEK-Info : x\r\n", "a:b\n",
                "no colon\n", "-", "-----",
            ]),
            1 => prop::collection::vec(any::<u8>(), 1..3),
        ];
        let label = || text(vec!["X", "PRIVATE KEY", "", "A B", "X ", "\u{e9}", "X-Y"]);
        let junk = || {
            prop_oneof![
                3 => Just(Vec::new()),
                2 => "[ -~\n]{1,8}".prop_map(String::into_bytes),
                1 => text(vec!["-", "------BEGIN ", "-----BEGIN X-----", "-----END X-----"]),
            ]
        };
        let block = (
            junk(),
            label(),
            prop::collection::vec(body.clone(), 0..16),
            prop::option::weighted(0.1, label()),
            junk(),
        )
            .prop_map(|(before, begin, body, end, after)| {
                let end = end.unwrap_or_else(|| begin.clone());
                [
                    before,
                    b"-----BEGIN ".to_vec(),
                    begin,
                    b"-----".to_vec(),
                    body.concat(),
                    b"-----END ".to_vec(),
                    end,
                    b"-----".to_vec(),
                    after,
                ]
                .concat()
            });
        let soup = prop::collection::vec(
            prop_oneof![
                body,
                text(vec!["-----BEGIN ", "-----END ", "-----", "X"]),
                junk()
            ],
            0..24,
        )
        .prop_map(|parts| parts.concat());
        let input = prop_oneof![
            4 => prop::collection::vec(block, 1..4).prop_map(|b| b.concat()),
            1 => soup,
        ];
        let config = proptest::test_runner::Config {
            cases: 20_000,
            failure_persistence: None,
            ..Default::default()
        };
        proptest::test_runner::TestRunner::new(config)
            .run(&input, |input| {
                same_as_pem_crate(&input).map_err(TestCaseError::fail)
            })
            .unwrap();
    }

    /// `encode` writes what the `pem` crate wrote, and `decode` reads it back.
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

    #[test]
    fn every_base64_character_round_trips() {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for (v, &c) in ALPHABET.iter().enumerate() {
            assert_eq!(encode_sextet(v as u8), c);
            assert_eq!(decode_sextet(c), v as i16);
        }
        for c in 0..=255u8 {
            if !ALPHABET.contains(&c) {
                assert_eq!(decode_sextet(c), -1, "{c}");
            }
        }
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
