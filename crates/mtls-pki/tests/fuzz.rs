//! Stable-toolchain fuzzing of every parser of untrusted input in `mtls-pki`.
//!
//! `cargo fuzz` needs a nightly toolchain, so this file does the same job with proptest on
//! stable. Every function that reads bytes or text a user (or an attacker) hands to mtls gets
//! two targets:
//!
//! * `*_arbitrary`: arbitrary bytes or strings (raw, DER-looking, or wrapped in a PEM block);
//! * `*_mutated`: structure-aware mutations of VALID inputs made once per run with the crate's
//!   own APIs (root, intermediate and leaf certificates, CRLs, CSRs, and keys as PKCS#8,
//!   encrypted PKCS#8, PKCS#1 and SEC1, in DER and PEM). The DER is parsed into a TLV tree
//!   and mutated node by node (delete, duplicate, swap, retag, corrupt one length while the
//!   enclosing lengths stay consistent, replace contents with interesting integers, times,
//!   strings and OIDs), then byte by byte (flip, truncate, insert, remove, splice from another
//!   object), and finally wrapped as DER, as PEM under its own or a wrong label, as PEM text
//!   with broken base64/headers/END lines, or as a multi-block bundle. Mutated CSRs can be
//!   re-signed with their key so that the parser gets past signature verification.
//!
//! The property is only "returns `Ok` or `Err`, never panics". A panic is reported with the
//! target name and the input in hex (after proptest has shrunk the mutation recipe).
//!
//! Run it (about 10 s in a debug build with the default case counts, on 2 cores):
//!
//! ```text
//! cargo test -p mtls-pki --test fuzz
//! ```
//!
//! Run it longer, e.g. 200 000 cases per target, optimised and with a chosen seed:
//!
//! ```text
//! MTLS_FUZZ_CASES=200000 cargo test -p mtls-pki --release --test fuzz
//! MTLS_FUZZ_CASES=200000 PROPTEST_RNG_SEED=42 cargo test -p mtls-pki --release --test fuzz -- csr_parse
//! ```
//!
//! `MTLS_FUZZ_CASES` sets the number of cases of every target (default: 10 000 for byte
//! parsers, 50 000 for string parsers). Failure persistence is off, so nothing is written to the source
//! tree; reproduce a failure from the hex input printed in the message.
//!
//! Encrypted keys are tried with the passphrase only when their KDF is PBKDF2 with at most
//! 10 000 iterations: a key file is free to ask for 4 billion PBKDF2 iterations or a huge
//! scrypt cost, which would hang (not crash) the run. That is a denial-of-service question for
//! the callers, not a panic, and is left out of this property on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use mtls_pki::issue::{self, CaCert, LeafRequest};
use mtls_pki::revocation::{self, RevocationReason, RevokedEntry};
use mtls_pki::{
    csr, inspect, key, pem_io, KeyAlgorithm, PrivateKey, Profile, San, Serial, Subject,
};
use pkcs8::pkcs5::{pbes2, EncryptionScheme};
use pkcs8::{EncryptedPrivateKeyInfoRef, PrivateKeyInfoRef};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, TestCaseError};
use rcgen::SigningKey;
use time::{Duration, OffsetDateTime};

// ---------------------------------------------------------------------------------------------
// Configuration and reporting
// ---------------------------------------------------------------------------------------------

/// Default cases per byte-parser target.
const BYTE_CASES: u32 = 10_000;
/// Default cases per string-parser target (they are much cheaper).
const STRING_CASES: u32 = 50_000;
/// The passphrase of the encrypted keys in the corpus.
const PASSPHRASE: &[u8] = b"pw";
/// Above this many PBKDF2 iterations an encrypted key is only tried without a passphrase.
const MAX_PBKDF2_ITERATIONS: u32 = 10_000;

fn config(default_cases: u32) -> Config {
    let cases = std::env::var("MTLS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Runs `f`, turning a panic into a test failure that names the target and shows the input.
fn no_panic<R>(target: &str, input: &[u8], f: impl FnOnce() -> R) -> Result<(), TestCaseError> {
    match catch_unwind(AssertUnwindSafe(|| drop(f()))) {
        Ok(()) => Ok(()),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            Err(TestCaseError::fail(format!(
                "{target} panicked: {msg}\ninput ({} bytes), hex: {}",
                input.len(),
                hex::encode(input)
            )))
        }
    }
}

fn no_panic_str<R>(target: &str, input: &str, f: impl FnOnce() -> R) -> Result<(), TestCaseError> {
    no_panic(target, input.as_bytes(), f)
        .map_err(|e| TestCaseError::fail(format!("{e}\ninput as string: {input:?}")))
}

/// The passphrase to try on `input`: `Some` unless an encrypted key in it asks for an
/// expensive KDF (see the module documentation).
fn safe_passphrase(input: &[u8]) -> Option<&'static [u8]> {
    let Ok(blocks) = pem_io::decode(input) else {
        return Some(PASSPHRASE);
    };
    let cheap =
        blocks.iter().all(
            |b| match EncryptedPrivateKeyInfoRef::try_from(b.der.as_slice()) {
                Err(_) => true,
                Ok(info) => match &info.encryption_algorithm {
                    EncryptionScheme::Pbes2(params) => match &params.kdf {
                        pbes2::Kdf::Pbkdf2(p) => p.iteration_count <= MAX_PBKDF2_ITERATIONS,
                        _ => false,
                    },
                    _ => false,
                },
            },
        );
    cheap.then_some(PASSPHRASE)
}

// ---------------------------------------------------------------------------------------------
// The corpus of valid inputs, made once per run
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Cert,
    Crl,
    Csr,
    Key,
}

struct Seed {
    kind: Kind,
    label: &'static str,
    der: Vec<u8>,
    /// Index into `Corpus::keys` of the key that signed this object (for re-signing).
    signer: Option<usize>,
}

struct Corpus {
    seeds: Vec<Seed>,
    keys: Vec<PrivateKey>,
    /// A P-256 intermediate CA, for issuing from parsed CSRs.
    ca: CaCert,
    now: OffsetDateTime,
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(build_corpus)
}

fn der_of(pem: &str) -> Vec<u8> {
    let blocks = pem_io::decode(pem.as_bytes()).unwrap();
    blocks.into_iter().next().unwrap().der
}

fn build_corpus() -> Corpus {
    let now = OffsetDateTime::now_utc();
    let gen = |alg| PrivateKey::generate(alg).unwrap();
    let root_subject = Subject {
        common_name: "Fuzz Root CA".into(),
        organization: Some("mtls fuzz".into()),
        organizational_unit: Some("PKI".into()),
        country: Some("DE".into()),
    };
    let root = issue::new_root(
        &root_subject,
        gen(KeyAlgorithm::EcdsaP256),
        now,
        Duration::days(3650),
    )
    .unwrap();
    let ca = issue::new_intermediate(
        &root,
        &Subject::cn("Fuzz Intermediate CA"),
        gen(KeyAlgorithm::EcdsaP256),
        now,
        Duration::days(1000),
        0,
    )
    .unwrap();
    // keys[0] = root key, keys[1] = intermediate key (copies, through PKCS#8).
    let copy = |k: &PrivateKey| PrivateKey::from_pem_or_der(k.pkcs8_der(), None).unwrap();
    let mut keys = vec![copy(root.key()), copy(ca.key())];
    let leaf_algs = [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa { bits: 2048 },
    ];
    let first_leaf_key = keys.len();
    keys.extend(leaf_algs.iter().map(|a| gen(*a)));

    let mut seeds = Vec::new();
    let push = |seeds: &mut Vec<Seed>, kind, label, der: Vec<u8>, signer| {
        seeds.push(Seed {
            kind,
            label,
            der,
            signer,
        })
    };
    push(
        &mut seeds,
        Kind::Cert,
        "CERTIFICATE",
        root.der().to_vec(),
        Some(0),
    );
    push(
        &mut seeds,
        Kind::Cert,
        "CERTIFICATE",
        ca.der().to_vec(),
        Some(0),
    );

    let sans_server = vec![
        San::parse("api.example.com").unwrap(),
        San::parse("*.svc.example.com").unwrap(),
        San::parse("10.0.0.1").unwrap(),
        San::parse("::1").unwrap(),
        San::parse("spiffe://prod.example/ns/a/sa/b").unwrap(),
    ];
    let sans_client = vec![
        San::parse("ops@example.com").unwrap(),
        San::parse("spiffe://prod.example/ns/a/sa/client").unwrap(),
        San::parse("client.example.com").unwrap(),
    ];
    let leaf_subject = Subject {
        common_name: "leaf.example.com".into(),
        organization: Some("Example Org".into()),
        organizational_unit: Some("Ops".into()),
        country: Some("US".into()),
    };
    let mut revoked = Vec::new();
    for (i, alg) in leaf_algs.iter().enumerate() {
        let k = &keys[first_leaf_key + i];
        let (profile, sans) = if i % 2 == 0 {
            (Profile::Server, sans_server.clone())
        } else {
            (Profile::Client, sans_client.clone())
        };
        let request = LeafRequest {
            profile,
            subject: leaf_subject.clone(),
            sans: sans.clone(),
            lifetime: Duration::days(90),
            urls: Default::default(),
        };
        let leaf = issue::issue_leaf(&ca, k.key_pair(), &request, now).unwrap();
        push(
            &mut seeds,
            Kind::Cert,
            "CERTIFICATE",
            leaf.der.to_vec(),
            Some(1),
        );
        revoked.push(RevokedEntry {
            serial: leaf.serial.clone(),
            revoked_at: now - Duration::hours(i as i64 + 1),
            reason: [
                Some(RevocationReason::KeyCompromise),
                None,
                Some(RevocationReason::Superseded),
                Some(RevocationReason::CertificateHold),
            ][i],
        });

        let csr_pem = csr::create(k, &leaf_subject, &sans).unwrap();
        push(
            &mut seeds,
            Kind::Csr,
            "CERTIFICATE REQUEST",
            der_of(&csr_pem),
            Some(first_leaf_key + i),
        );

        // Keys: PKCS#8, encrypted PKCS#8, and the legacy PKCS#1 / SEC1 forms.
        push(
            &mut seeds,
            Kind::Key,
            "PRIVATE KEY",
            k.pkcs8_der().to_vec(),
            None,
        );
        if i < 2 || matches!(alg, KeyAlgorithm::Ed25519) {
            let enc = k.to_encrypted_pem_with_iterations(PASSPHRASE, 1).unwrap();
            push(
                &mut seeds,
                Kind::Key,
                "ENCRYPTED PRIVATE KEY",
                der_of(&enc),
                None,
            );
        }
        let inner = PrivateKeyInfoRef::try_from(k.pkcs8_der())
            .unwrap()
            .private_key
            .as_bytes()
            .to_vec();
        match alg {
            KeyAlgorithm::Rsa { .. } => {
                push(&mut seeds, Kind::Key, "RSA PRIVATE KEY", inner, None);
            }
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
                push(&mut seeds, Kind::Key, "EC PRIVATE KEY", inner, None);
            }
            KeyAlgorithm::Ed25519 => {}
        }
    }
    let crl = revocation::build_crl(&ca, 42, now, Duration::days(7), &revoked).unwrap();
    push(&mut seeds, Kind::Crl, "X509 CRL", crl.to_vec(), Some(1));
    let empty_crl = revocation::build_crl(&root, 1, now, Duration::days(30), &[]).unwrap();
    push(
        &mut seeds,
        Kind::Crl,
        "X509 CRL",
        empty_crl.to_vec(),
        Some(0),
    );

    // Every seed must be accepted by its parser, or the mutations start from garbage.
    for s in &seeds {
        let ok = match s.kind {
            Kind::Cert => pem_io::parse_certificate(&s.der).is_ok(),
            Kind::Crl => revocation::parse_crl(&s.der).is_ok(),
            Kind::Csr => csr::parse(&s.der).is_ok(),
            Kind::Key => PrivateKey::from_pem_or_der(
                pem_io::encode(s.label, &s.der).as_bytes(),
                Some(PASSPHRASE),
            )
            .is_ok(),
        };
        assert!(ok, "corpus seed {} ({:?}) does not parse", s.label, s.kind);
        // And the TLV tree must round-trip, or tree mutations would silently change it.
        let tree = parse_tlvs(&s.der, 0).unwrap();
        assert_eq!(serialize(&tree), s.der, "TLV round trip of {}", s.label);
    }
    Corpus {
        seeds,
        keys,
        ca,
        now,
    }
}

// ---------------------------------------------------------------------------------------------
// DER as a TLV tree
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Body {
    Leaf(Vec<u8>),
    /// Constructed: the children.
    Cons(Vec<Tlv>),
    /// A primitive OCTET STRING / BIT STRING whose contents (after `prefix`, the BIT STRING
    /// unused-bits octet) are themselves DER (extension values, PKCS#8 keys, SPKIs, ECDSA
    /// signatures).
    Encap(Vec<u8>, Vec<Tlv>),
}

#[derive(Clone, Debug)]
struct Tlv {
    tag: Vec<u8>,
    body: Body,
    /// When set, the length is written wrongly at serialization.
    bad_len: Option<LenOp>,
}

impl Tlv {
    fn content(&self) -> Vec<u8> {
        match &self.body {
            Body::Leaf(c) => c.clone(),
            Body::Cons(ch) => serialize(ch),
            Body::Encap(prefix, ch) => {
                let mut v = prefix.clone();
                v.extend(serialize(ch));
                v
            }
        }
    }

    /// Turns the node into a leaf holding its current contents, and returns them.
    fn leaf_mut(&mut self) -> &mut Vec<u8> {
        if !matches!(self.body, Body::Leaf(_)) {
            self.body = Body::Leaf(self.content());
        }
        match &mut self.body {
            Body::Leaf(c) => c,
            _ => unreachable!(),
        }
    }
}

/// Parses `buf` as a sequence of DER TLVs (minimal lengths only), or `None`.
fn parse_tlvs(buf: &[u8], depth: usize) -> Option<Vec<Tlv>> {
    let mut out = Vec::new();
    let mut p = 0;
    while p < buf.len() {
        let start = p;
        let first = buf[p];
        p += 1;
        if first & 0x1f == 0x1f {
            loop {
                let b = *buf.get(p)?;
                p += 1;
                if b & 0x80 == 0 {
                    break;
                }
            }
        }
        let tag = buf[start..p].to_vec();
        let l0 = *buf.get(p)?;
        p += 1;
        let len = if l0 < 0x80 {
            usize::from(l0)
        } else {
            let n = usize::from(l0 & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let mut l = 0usize;
            for _ in 0..n {
                l = (l << 8) | usize::from(*buf.get(p)?);
                p += 1;
            }
            // Only minimal encodings, so that serialization round-trips exactly.
            if l < 0x80 || l >> (8 * (n - 1)) == 0 {
                return None;
            }
            l
        };
        let content = buf.get(p..p.checked_add(len)?)?;
        p += len;
        let body = if depth > 24 {
            Body::Leaf(content.to_vec())
        } else if first & 0x20 != 0 {
            parse_tlvs(content, depth + 1)
                .map(Body::Cons)
                .unwrap_or_else(|| Body::Leaf(content.to_vec()))
        } else if first == 0x04 && !content.is_empty() {
            parse_tlvs(content, depth + 1)
                .map(|c| Body::Encap(Vec::new(), c))
                .unwrap_or_else(|| Body::Leaf(content.to_vec()))
        } else if first == 0x03 && content.len() > 1 && content[0] == 0 {
            parse_tlvs(&content[1..], depth + 1)
                .map(|c| Body::Encap(vec![0], c))
                .unwrap_or_else(|| Body::Leaf(content.to_vec()))
        } else {
            Body::Leaf(content.to_vec())
        };
        out.push(Tlv {
            tag,
            body,
            bad_len: None,
        });
    }
    Some(out)
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().position(|b| *b != 0).unwrap_or(7);
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn serialize(nodes: &[Tlv]) -> Vec<u8> {
    let mut out = Vec::new();
    for n in nodes {
        out.extend_from_slice(&n.tag);
        let content = n.content();
        match n.bad_len {
            None => push_len(&mut out, content.len()),
            Some(op) => op.write(&mut out, content.len()),
        }
        out.extend(content);
    }
    out
}

fn count_nodes(nodes: &[Tlv]) -> usize {
    nodes
        .iter()
        .map(|n| {
            1 + match &n.body {
                Body::Leaf(_) => 0,
                Body::Cons(ch) | Body::Encap(_, ch) => count_nodes(ch),
            }
        })
        .sum()
}

/// A wrong length for one TLV (its parents' lengths stay consistent).
#[derive(Clone, Copy, Debug)]
enum LenOp {
    Delta(i8),
    Zero,
    /// BER indefinite length (0x80), forbidden in DER.
    Indefinite,
    /// The right length, non-minimally encoded (0x82 0x00 len).
    NonMinimal,
    /// 0x84 ff ff ff ff.
    Huge,
    /// Nine length octets.
    TooManyOctets,
    /// The reserved 0xff.
    Reserved,
    /// A raw length octet.
    Raw(u8),
}

impl LenOp {
    fn write(self, out: &mut Vec<u8>, real: usize) {
        match self {
            LenOp::Delta(d) => push_len(out, real.saturating_add_signed(isize::from(d))),
            LenOp::Zero => out.push(0),
            LenOp::Indefinite => out.push(0x80),
            LenOp::NonMinimal => {
                out.extend_from_slice(&[0x82, (real >> 8) as u8, real as u8]);
            }
            LenOp::Huge => out.extend_from_slice(&[0x84, 0xff, 0xff, 0xff, 0xff]),
            LenOp::TooManyOctets => {
                out.push(0x89);
                out.extend_from_slice(&[0; 5]);
                out.extend_from_slice(&(real as u32).to_be_bytes());
            }
            LenOp::Reserved => out.push(0xff),
            LenOp::Raw(b) => out.push(b),
        }
    }
}

const INTEGERS: &[&[u8]] = &[
    &[],
    &[0x00],
    &[0x01],
    &[0x7f],
    &[0x80],
    &[0xff],
    &[0x00, 0x80],
    &[0x00, 0x00, 0x01],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0x7f, 0xff, 0xff, 0xff],
    &[0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
    &[0x01, 0x00, 0x01],
    &[0x01; 21],
    &[0x00; 33],
];

const TIMES: &[&[u8]] = &[
    b"991231235959Z",
    b"000101000000Z",
    b"491231235959Z",
    b"500101000000Z",
    b"20500101000000Z",
    b"99991231235959Z",
    b"00000101000000Z",
    b"19700101000000+0100",
    b"991231235959-2359",
    b"9912312359Z",
    b"20240229120000.123Z",
    b"20230229000000Z",
    b"991332256161Z",
    b"20241301000000Z",
    b"",
    b"Z",
    b"20240101000000",
    b"99991231235959.999999999Z",
    b"0000",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xffZ",
];

const STRINGS: &[&[u8]] = &[
    b"",
    b"\0",
    b"\xff\xfe",
    b"\xc3\x28",
    b"a\0b",
    "\u{e9}t\u{e9}".as_bytes(),
    "\u{202e}moc.elpmaxe".as_bytes(),
    b"*.example.com",
    b"*.*.example.com",
    b"1.2.3.4",
    b"\x7f\x00\x00\x01",
    b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01",
    b"\x01\x02\x03",
    b"spiffe://x/y",
    b"spiffe://",
    b"a@b",
    b"@",
    b"-----BEGIN CERTIFICATE-----",
    b"%00%ff",
    &[b'A'; 300],
];

/// Tags to retag nodes with: universal types, context tags of GeneralName and a high tag.
const TAGS: &[u8] = &[
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0a, 0x0c, 0x13, 0x14, 0x16, 0x17, 0x18, 0x1c, 0x1e, 0x30,
    0x31, 0x80, 0x81, 0x82, 0x86, 0x87, 0x88, 0xa0, 0xa1, 0xa3, 0xa4, 0x00, 0xff,
];

const OIDS: &[&[u8]] = &[
    &[0x2b, 0x65, 0x70],                                           // Ed25519
    &[0x2b, 0x65, 0x71],                                           // Ed448
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01],                   // ecPublicKey
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],             // P-256
    &[0x2b, 0x81, 0x04, 0x00, 0x22],                               // P-384
    &[0x2b, 0x81, 0x04, 0x00, 0x23],                               // P-521
    &[0x2b, 0x81, 0x04, 0x00, 0x0a],                               // secp256k1
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],       // rsaEncryption
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b],       // sha256WithRSA
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a],       // RSASSA-PSS
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],             // ecdsa-with-SHA256
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],             // ecdsa-with-SHA384
    &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01],                   // DSA
    &[0x55, 0x1d, 0x11],                                           // subjectAltName
    &[0x55, 0x1d, 0x12],                                           // issuerAltName
    &[0x55, 0x1d, 0x13],                                           // basicConstraints
    &[0x55, 0x1d, 0x0f],                                           // keyUsage
    &[0x55, 0x1d, 0x25],                                           // extKeyUsage
    &[0x55, 0x1d, 0x0e],                                           // subjectKeyIdentifier
    &[0x55, 0x1d, 0x23],                                           // authorityKeyIdentifier
    &[0x55, 0x1d, 0x14],                                           // cRLNumber
    &[0x55, 0x1d, 0x15],                                           // reasonCode
    &[0x55, 0x1d, 0x18],                                           // invalidityDate
    &[0x55, 0x1d, 0x1b],                                           // deltaCRLIndicator
    &[0x55, 0x1d, 0x1c],                                           // issuingDistributionPoint
    &[0x55, 0x1d, 0x1d],                                           // certificateIssuer
    &[0x55, 0x1d, 0x1e],                                           // nameConstraints
    &[0x55, 0x1d, 0x1f],                                           // cRLDistributionPoints
    &[0x55, 0x1d, 0x20],                                           // certificatePolicies
    &[0x55, 0x1d, 0x24],                                           // policyConstraints
    &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x01],             // authorityInfoAccess
    &[0x2b, 0x06, 0x01, 0x04, 0x01, 0xd6, 0x79, 0x02, 0x04, 0x02], // SCT list
    &[0x55, 0x04, 0x03],                                           // CN
    &[0x55, 0x04, 0x06],                                           // C
    &[0x55, 0x04, 0x0a],                                           // O
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],       // emailAddress
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e],       // extensionRequest
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x07],       // challengePassword
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d],       // PBES2
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0c],       // PBKDF2
    &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a],       // aes256-CBC
    &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x02],       // aes128-CBC
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x09],             // hmacWithSHA256
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x07],             // hmacWithSHA1
    &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01],             // serverAuth
    &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02],             // clientAuth
    &[0x55, 0x1d, 0x25, 0x00],                                     // anyExtendedKeyUsage
    &[],
    &[0x80],
    &[0x2a, 0x86],
    &[0x00],
    &[0xff; 12],
    &[
        0x2a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
    ],
];

#[derive(Clone, Debug)]
enum TreeOp {
    Delete,
    Duplicate,
    SwapWithNext,
    /// Wraps the node in a SEQUENCE.
    Wrap,
    SetTag(u8),
    BadLength(LenOp),
    Flip(Index, u8),
    ReplaceContent(Vec<u8>),
    TruncateContent(Index),
    ExtendContent(Vec<u8>),
    InsertChild(u8, Vec<u8>),
    Integer(Index),
    Time(Index, bool),
    Str(Index, Option<u8>),
    Oid(Index),
    /// Copies a random node of a random seed over this one (type confusion across objects).
    Transplant(Index, Index),
}

fn apply_tree_op(nodes: &mut Vec<Tlv>, at: &mut usize, op: &TreeOp, c: &Corpus) -> bool {
    let mut i = 0;
    while i < nodes.len() {
        if *at == 0 {
            apply_tree_op_here(nodes, i, op, c);
            return true;
        }
        *at -= 1;
        let done = match &mut nodes[i].body {
            Body::Leaf(_) => false,
            Body::Cons(ch) | Body::Encap(_, ch) => apply_tree_op(ch, at, op, c),
        };
        if done {
            return true;
        }
        i += 1;
    }
    false
}

fn nth_node(nodes: &[Tlv], at: &mut usize) -> Option<Tlv> {
    for n in nodes {
        if *at == 0 {
            return Some(n.clone());
        }
        *at -= 1;
        if let Body::Cons(ch) | Body::Encap(_, ch) = &n.body {
            if let Some(found) = nth_node(ch, at) {
                return Some(found);
            }
        }
    }
    None
}

fn apply_tree_op_here(nodes: &mut Vec<Tlv>, i: usize, op: &TreeOp, c: &Corpus) {
    let pick = |set: &[&[u8]], idx: &Index| set[idx.index(set.len())].to_vec();
    match op {
        TreeOp::Delete => {
            nodes.remove(i);
        }
        TreeOp::Duplicate => {
            let n = nodes[i].clone();
            nodes.insert(i, n);
        }
        TreeOp::SwapWithNext => {
            if i + 1 < nodes.len() {
                nodes.swap(i, i + 1);
            }
        }
        TreeOp::Wrap => {
            let inner = nodes[i].clone();
            nodes[i] = Tlv {
                tag: vec![0x30],
                body: Body::Cons(vec![inner]),
                bad_len: None,
            };
        }
        TreeOp::SetTag(t) => nodes[i].tag = vec![*t],
        TreeOp::BadLength(l) => nodes[i].bad_len = Some(*l),
        TreeOp::Flip(idx, mask) => {
            let content = nodes[i].leaf_mut();
            if !content.is_empty() {
                let j = idx.index(content.len());
                content[j] ^= (*mask).max(1);
            }
        }
        TreeOp::ReplaceContent(v) => *nodes[i].leaf_mut() = v.clone(),
        TreeOp::TruncateContent(idx) => {
            let content = nodes[i].leaf_mut();
            let n = idx.index(content.len() + 1);
            content.truncate(n);
        }
        TreeOp::ExtendContent(v) => nodes[i].leaf_mut().extend_from_slice(v),
        TreeOp::InsertChild(tag, v) => {
            let child = Tlv {
                tag: vec![*tag],
                body: Body::Leaf(v.clone()),
                bad_len: None,
            };
            match &mut nodes[i].body {
                Body::Cons(ch) | Body::Encap(_, ch) => ch.push(child),
                Body::Leaf(_) => nodes.insert(i + 1, child),
            }
        }
        TreeOp::Integer(idx) => *nodes[i].leaf_mut() = pick(INTEGERS, idx),
        TreeOp::Time(idx, generalized) => {
            nodes[i].tag = vec![if *generalized { 0x18 } else { 0x17 }];
            *nodes[i].leaf_mut() = pick(TIMES, idx);
        }
        TreeOp::Str(idx, tag) => {
            if let Some(t) = tag {
                nodes[i].tag = vec![*t];
            }
            *nodes[i].leaf_mut() = pick(STRINGS, idx);
        }
        TreeOp::Oid(idx) => {
            nodes[i].tag = vec![0x06];
            *nodes[i].leaf_mut() = pick(OIDS, idx);
        }
        TreeOp::Transplant(seed, node) => {
            let src = &c.seeds[seed.index(c.seeds.len())].der;
            if let Some(tree) = parse_tlvs(src, 0) {
                let mut at = node.index(count_nodes(&tree).max(1));
                if let Some(n) = nth_node(&tree, &mut at) {
                    nodes[i] = n;
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
enum ByteOp {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Remove(Index, u8),
    Duplicate(Index, u8),
    /// Copies up to `len` bytes from another seed into this input.
    Splice {
        seed: Index,
        from: Index,
        len: u8,
        at: Index,
    },
}

fn apply_byte_op(buf: &mut Vec<u8>, op: &ByteOp, c: &Corpus) {
    let len = buf.len();
    match op {
        ByteOp::Flip(i, bit) => {
            if len > 0 {
                buf[i.index(len)] ^= 1 << (bit % 8);
            }
        }
        ByteOp::Set(i, v) => {
            if len > 0 {
                buf[i.index(len)] = *v;
            }
        }
        ByteOp::Truncate(i) => buf.truncate(i.index(len + 1)),
        ByteOp::Insert(i, v) => {
            let at = i.index(len + 1);
            buf.splice(at..at, v.iter().copied());
        }
        ByteOp::Remove(i, n) => {
            if len > 0 {
                let at = i.index(len);
                let end = (at + usize::from(*n).max(1)).min(len);
                buf.drain(at..end);
            }
        }
        ByteOp::Duplicate(i, n) => {
            if len > 0 {
                let at = i.index(len);
                let end = (at + usize::from(*n).max(1)).min(len);
                let chunk = buf[at..end].to_vec();
                buf.splice(end..end, chunk);
            }
        }
        ByteOp::Splice {
            seed,
            from,
            len: n,
            at,
        } => {
            let src = &c.seeds[seed.index(c.seeds.len())].der;
            let s = from.index(src.len());
            let e = (s + usize::from(*n).max(1)).min(src.len());
            let at = at.index(len + 1);
            buf.splice(at..at, src[s..e].iter().copied());
        }
    }
}

/// Mutations of PEM text.
#[derive(Clone, Debug)]
enum TextOp {
    Byte(ByteOp),
    /// Replaces one character with something that is not base64 (or is padding).
    CorruptBase64(Index, u8),
    DropEndLine,
    MismatchedEndLabel,
    Headers(u8),
    Crlf,
    OneLine,
    Prefix(Vec<u8>),
    Suffix(Vec<u8>),
    EmptyBlock(Index),
    DuplicateBlock,
    NestedBegin(Index),
}

const LABELS: &[&str] = &[
    "CERTIFICATE",
    "TRUSTED CERTIFICATE",
    "X509 CRL",
    "CERTIFICATE REQUEST",
    "NEW CERTIFICATE REQUEST",
    "PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "DSA PRIVATE KEY",
    "OPENSSH PRIVATE KEY",
    "PUBLIC KEY",
    "PKCS7",
    "",
    " PRIVATE KEY",
    "X",
];

fn apply_text_op(text: &mut Vec<u8>, op: &TextOp, c: &Corpus) {
    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }
    match op {
        TextOp::Byte(b) => apply_byte_op(text, b, c),
        TextOp::CorruptBase64(i, choice) => {
            const BAD: &[u8] = b"!=-. \t\r\n*\xff\x00:";
            if !text.is_empty() {
                let j = i.index(text.len());
                text[j] = BAD[usize::from(*choice) % BAD.len()];
            }
        }
        TextOp::DropEndLine => {
            if let Some(p) = find(text, b"-----END") {
                text.truncate(p);
            }
        }
        TextOp::MismatchedEndLabel => {
            if let Some(p) = find(text, b"-----END ") {
                text.splice(p + 9..p + 9, b"X509 ".iter().copied());
            }
        }
        TextOp::Headers(choice) => {
            const HEADERS: &[&[u8]] = &[
                b"Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00112233445566778899AABBCCDDEEFF\n\n",
                b"Proc-Type: 4,ENCRYPTED\n\n",
                b"Comment: hello\n\n",
                b"Key: value\nKey2:\n\n",
                b": \n\n",
                b"DEK-Info\n\n",
            ];
            if let Some(p) = find(text, b"-----\n") {
                let h = HEADERS[usize::from(*choice) % HEADERS.len()];
                text.splice(p + 6..p + 6, h.iter().copied());
            }
        }
        TextOp::Crlf => {
            *text = text
                .iter()
                .flat_map(|b| {
                    if *b == b'\n' {
                        vec![b'\r', b'\n']
                    } else {
                        vec![*b]
                    }
                })
                .collect();
        }
        TextOp::OneLine => {
            if let (Some(s), Some(e)) = (find(text, b"-----\n"), find(text, b"\n-----END")) {
                if s + 6 < e {
                    let body: Vec<u8> = text[s + 6..e]
                        .iter()
                        .copied()
                        .filter(|b| *b != b'\n')
                        .collect();
                    text.splice(s + 6..e, body);
                }
            }
        }
        TextOp::Prefix(v) => {
            text.splice(0..0, v.iter().copied());
        }
        TextOp::Suffix(v) => text.extend_from_slice(v),
        TextOp::EmptyBlock(label) => {
            let l = LABELS[label.index(LABELS.len())];
            text.extend_from_slice(format!("-----BEGIN {l}-----\n-----END {l}-----\n").as_bytes());
        }
        TextOp::DuplicateBlock => {
            let copy = text.clone();
            text.extend(copy);
        }
        TextOp::NestedBegin(i) => {
            let at = i.index(text.len() + 1);
            text.splice(at..at, b"\n-----BEGIN CERTIFICATE-----\n".iter().copied());
        }
    }
}

#[derive(Clone, Debug)]
enum Wrap {
    Der,
    /// PEM with the seed's label, or another one.
    Pem {
        relabel: Option<Index>,
        text_ops: Vec<TextOp>,
    },
    /// The mutated object in PEM among (unmutated) other seeds.
    Bundle {
        others: Vec<Index>,
        position: Index,
        text_ops: Vec<TextOp>,
    },
}

/// How to make one input: which seed, which mutations, which wrapping.
#[derive(Clone, Debug)]
struct Recipe {
    /// Pick the seed among those of the target's kind (else among all seeds).
    prefer_kind: bool,
    seed: Index,
    tree_ops: Vec<(Index, TreeOp)>,
    /// Re-sign CSRs (and certificates and CRLs) after the tree mutations.
    resign: bool,
    byte_ops: Vec<ByteOp>,
    wrap: Wrap,
}

fn pick_seed<'c>(c: &'c Corpus, kinds: &[Kind], prefer: bool, idx: &Index) -> &'c Seed {
    let preferred: Vec<&Seed> = c.seeds.iter().filter(|s| kinds.contains(&s.kind)).collect();
    if prefer && !preferred.is_empty() {
        preferred[idx.index(preferred.len())]
    } else {
        &c.seeds[idx.index(c.seeds.len())]
    }
}

/// Re-signs `SEQUENCE { tbs, algorithm, BIT STRING signature }` with `key`.
fn resign(der: &[u8], key: &PrivateKey) -> Option<Vec<u8>> {
    let mut top = parse_tlvs(der, 0)?;
    let [outer] = top.as_mut_slice() else {
        return None;
    };
    let Body::Cons(parts) = &mut outer.body else {
        return None;
    };
    if parts.len() != 3 {
        return None;
    }
    let tbs = serialize(&parts[..1]);
    let mut sig = vec![0u8];
    sig.extend(key.key_pair().sign(&tbs).ok()?);
    parts[2] = Tlv {
        tag: vec![0x03],
        body: Body::Leaf(sig),
        bad_len: None,
    };
    Some(serialize(&top))
}

fn build(r: &Recipe, kinds: &[Kind]) -> Vec<u8> {
    let c = corpus();
    let seed = pick_seed(c, kinds, r.prefer_kind, &r.seed);
    let mut der = seed.der.clone();
    if !r.tree_ops.is_empty() {
        if let Some(mut tree) = parse_tlvs(&der, 0) {
            for (at, op) in &r.tree_ops {
                let n = count_nodes(&tree);
                if n == 0 {
                    break;
                }
                let mut at = at.index(n);
                apply_tree_op(&mut tree, &mut at, op, c);
            }
            der = serialize(&tree);
        }
    }
    if r.resign {
        if let Some(k) = seed.signer {
            if let Some(signed) = resign(&der, &c.keys[k]) {
                der = signed;
            }
        }
    }
    for op in &r.byte_ops {
        apply_byte_op(&mut der, op, c);
    }
    match &r.wrap {
        Wrap::Der => der,
        Wrap::Pem { relabel, text_ops } => {
            let label = relabel.map_or(seed.label, |l| LABELS[l.index(LABELS.len())]);
            let mut text = pem_io::encode(label, &der).into_bytes();
            for op in text_ops {
                apply_text_op(&mut text, op, c);
            }
            text
        }
        Wrap::Bundle {
            others,
            position,
            text_ops,
        } => {
            let mut parts: Vec<String> = others
                .iter()
                .map(|o| {
                    let s = &c.seeds[o.index(c.seeds.len())];
                    pem_io::encode(s.label, &s.der)
                })
                .collect();
            let at = position.index(parts.len() + 1);
            parts.insert(at, pem_io::encode(seed.label, &der));
            let mut text = parts.concat().into_bytes();
            for op in text_ops {
                apply_text_op(&mut text, op, c);
            }
            text
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn small_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn len_op() -> impl Strategy<Value = LenOp> {
    prop_oneof![
        4 => (-4i8..=4).prop_map(LenOp::Delta),
        1 => any::<i8>().prop_map(LenOp::Delta),
        1 => Just(LenOp::Zero),
        1 => Just(LenOp::Indefinite),
        1 => Just(LenOp::NonMinimal),
        1 => Just(LenOp::Huge),
        1 => Just(LenOp::TooManyOctets),
        1 => Just(LenOp::Reserved),
        1 => any::<u8>().prop_map(LenOp::Raw),
    ]
}

fn tree_op() -> impl Strategy<Value = TreeOp> {
    prop_oneof![
        2 => Just(TreeOp::Delete),
        2 => Just(TreeOp::Duplicate),
        2 => Just(TreeOp::SwapWithNext),
        1 => Just(TreeOp::Wrap),
        2 => select(TAGS).prop_map(TreeOp::SetTag),
        1 => any::<u8>().prop_map(TreeOp::SetTag),
        4 => len_op().prop_map(TreeOp::BadLength),
        4 => (any::<Index>(), any::<u8>()).prop_map(|(i, m)| TreeOp::Flip(i, m)),
        2 => small_bytes(40).prop_map(TreeOp::ReplaceContent),
        2 => any::<Index>().prop_map(TreeOp::TruncateContent),
        1 => small_bytes(16).prop_map(TreeOp::ExtendContent),
        2 => (select(TAGS), small_bytes(24)).prop_map(|(t, v)| TreeOp::InsertChild(t, v)),
        3 => any::<Index>().prop_map(TreeOp::Integer),
        2 => (any::<Index>(), any::<bool>()).prop_map(|(i, g)| TreeOp::Time(i, g)),
        3 => (any::<Index>(), prop::option::of(select(TAGS))).prop_map(|(i, t)| TreeOp::Str(i, t)),
        3 => any::<Index>().prop_map(TreeOp::Oid),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(s, n)| TreeOp::Transplant(s, n)),
    ]
}

fn byte_op() -> impl Strategy<Value = ByteOp> {
    prop_oneof![
        4 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteOp::Flip(i, b)),
        2 => (any::<Index>(), select(&[0x00u8, 0x01, 0x30, 0x7f, 0x80, 0x81, 0x82, 0x84, 0xff][..]))
            .prop_map(|(i, v)| ByteOp::Set(i, v)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| ByteOp::Set(i, v)),
        2 => any::<Index>().prop_map(ByteOp::Truncate),
        2 => (any::<Index>(), small_bytes(8)).prop_map(|(i, v)| ByteOp::Insert(i, v)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, n)| ByteOp::Remove(i, n)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, n)| ByteOp::Duplicate(i, n)),
        1 => (any::<Index>(), any::<Index>(), any::<u8>(), any::<Index>())
            .prop_map(|(seed, from, len, at)| ByteOp::Splice { seed, from, len, at }),
    ]
}

fn text_op() -> impl Strategy<Value = TextOp> {
    prop_oneof![
        3 => byte_op().prop_map(TextOp::Byte),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, c)| TextOp::CorruptBase64(i, c)),
        1 => Just(TextOp::DropEndLine),
        1 => Just(TextOp::MismatchedEndLabel),
        1 => any::<u8>().prop_map(TextOp::Headers),
        1 => Just(TextOp::Crlf),
        1 => Just(TextOp::OneLine),
        1 => small_bytes(16).prop_map(TextOp::Prefix),
        1 => small_bytes(16).prop_map(TextOp::Suffix),
        1 => any::<Index>().prop_map(TextOp::EmptyBlock),
        1 => Just(TextOp::DuplicateBlock),
        1 => any::<Index>().prop_map(TextOp::NestedBegin),
    ]
}

fn wrap(der_only: bool) -> BoxedStrategy<Wrap> {
    if der_only {
        return Just(Wrap::Der).boxed();
    }
    let text_ops = || prop::collection::vec(text_op(), 0..3);
    prop_oneof![
        4 => Just(Wrap::Der),
        4 => (prop::option::weighted(0.25, any::<Index>()), Just(Vec::new()))
            .prop_map(|(relabel, text_ops)| Wrap::Pem { relabel, text_ops }),
        2 => (prop::option::weighted(0.25, any::<Index>()), text_ops())
            .prop_map(|(relabel, text_ops)| Wrap::Pem { relabel, text_ops }),
        1 => (prop::collection::vec(any::<Index>(), 1..4), any::<Index>(), text_ops())
            .prop_map(|(others, position, text_ops)| Wrap::Bundle { others, position, text_ops }),
    ]
    .boxed()
}

fn recipe(der_only: bool) -> impl Strategy<Value = Recipe> {
    (
        prop::bool::weighted(0.75),
        any::<Index>(),
        prop::collection::vec((any::<Index>(), tree_op()), 0..4),
        prop::bool::weighted(0.5),
        prop::collection::vec(byte_op(), 0..3),
        wrap(der_only),
    )
        .prop_map(
            |(prefer_kind, seed, tree_ops, resign, byte_ops, wrap)| Recipe {
                prefer_kind,
                seed,
                tree_ops,
                resign,
                byte_ops,
                wrap,
            },
        )
}

/// Arbitrary bytes: raw, shaped like DER (a SEQUENCE header), or base64 in a PEM block.
fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => small_bytes(1024),
        2 => small_bytes(1024).prop_map(|mut v| {
            let mut out = vec![0x30];
            push_len(&mut out, v.len());
            out.append(&mut v);
            out
        }),
        1 => small_bytes(64).prop_map(|mut v| {
            v.insert(0, 0x30);
            v
        }),
        2 => (select(LABELS), small_bytes(1024))
            .prop_map(|(l, v)| pem_io::encode(l, &v).into_bytes()),
        1 => (select(LABELS), "[ -~\n]{0,400}").prop_map(|(l, body)| {
            format!("junk\n-----BEGIN {l}-----\n{body}\n-----END {l}-----\ntrailer").into_bytes()
        }),
    ]
}

/// Arbitrary DER-ish bytes for the DER-only parsers.
fn arbitrary_der() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => small_bytes(1024),
        2 => small_bytes(1024).prop_map(|mut v| {
            let mut out = vec![0x30];
            push_len(&mut out, v.len());
            out.append(&mut v);
            out
        }),
    ]
}

const INTERESTING_CHARS: &[char] = &[
    ':',
    '.',
    '*',
    '@',
    '/',
    '%',
    '[',
    ']',
    '-',
    '_',
    '0',
    '9',
    'a',
    'F',
    'x',
    'X',
    '?',
    '#',
    ' ',
    '\t',
    '\n',
    '\0',
    '\u{7f}',
    '\u{80}',
    '\u{e9}',
    '\u{df}',
    '\u{130}',
    '\u{212a}',
    '\u{ff10}',
    '\u{202e}',
    '\u{fffd}',
    '\u{10ffff}',
];

#[derive(Clone, Debug)]
enum StrOp {
    Insert(Index, char),
    Remove(Index),
    Replace(Index, char),
    Truncate(Index),
    Duplicate(Index, u8),
    Upper,
    Repeat(u8),
}

fn str_op() -> impl Strategy<Value = StrOp> {
    let ch = || prop_oneof![3 => select(INTERESTING_CHARS), 1 => any::<char>()];
    prop_oneof![
        3 => (any::<Index>(), ch()).prop_map(|(i, c)| StrOp::Insert(i, c)),
        2 => any::<Index>().prop_map(StrOp::Remove),
        3 => (any::<Index>(), ch()).prop_map(|(i, c)| StrOp::Replace(i, c)),
        1 => any::<Index>().prop_map(StrOp::Truncate),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, n)| StrOp::Duplicate(i, n)),
        1 => Just(StrOp::Upper),
        1 => (2u8..40).prop_map(StrOp::Repeat),
    ]
}

fn apply_str_ops(seed: &str, ops: &[StrOp]) -> String {
    let mut s: Vec<char> = seed.chars().collect();
    for op in ops {
        let len = s.len();
        match op {
            StrOp::Insert(i, c) => s.insert(i.index(len + 1), *c),
            StrOp::Remove(i) => {
                if len > 0 {
                    s.remove(i.index(len));
                }
            }
            StrOp::Replace(i, c) => {
                if len > 0 {
                    s[i.index(len)] = *c;
                }
            }
            StrOp::Truncate(i) => s.truncate(i.index(len + 1)),
            StrOp::Duplicate(i, n) => {
                if len > 0 {
                    let at = i.index(len);
                    let end = (at + usize::from(*n).max(1)).min(len);
                    let chunk = s[at..end].to_vec();
                    s.splice(end..end, chunk);
                }
            }
            StrOp::Upper => s = s.iter().flat_map(|c| c.to_uppercase()).collect(),
            StrOp::Repeat(n) => s = s.repeat(usize::from(*n)),
        }
    }
    s.into_iter().collect()
}

/// Arbitrary strings: printable, ASCII-heavy, or any chars at all.
fn arbitrary_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,300}",
        prop::collection::vec(any::<char>(), 0..64).prop_map(|v| v.into_iter().collect()),
        prop::collection::vec(select(INTERESTING_CHARS), 0..64)
            .prop_map(|v| v.into_iter().collect()),
    ]
}

fn mutated_string(seeds: &'static [&'static str]) -> impl Strategy<Value = String> {
    (select(seeds), prop::collection::vec(str_op(), 0..5))
        .prop_map(|(seed, ops)| apply_str_ops(seed, &ops))
}

const SERIAL_SEEDS: &[&str] = &[
    "serial=0A:BC",
    "4a3f0011",
    "0x00ff",
    "00",
    "0",
    "7f:ff:ff:ff",
    "  serial=4A3F  ",
    "0x",
    "serial=",
    "0102030405060708090a0b0c0d0e0f1011121314",
    "0102030405060708090a0b0c0d0e0f101112131415",
    "00:00:00:00:00:00:00:00:00:00:00:00:00:00:01",
];

const SAN_SEEDS: &[&str] = &[
    "api.example.com",
    "API.Example.COM.",
    "dns:*.svc.example.com",
    "DNS:xn--bcher-kva.example",
    "127.0.0.1",
    "ip:::1",
    "ip:[::1]",
    "::ffff:1.2.3.4",
    "fe80::1%eth0",
    "uri:spiffe://prod.example/ns/a/sa/b",
    "spiffe://prod.example/",
    "https://example.com/a?b#c",
    "uri:urn:isbn:0451450523",
    "email:ops@example.com",
    "a@b@c.example",
    "email:@",
    "x:y",
    ":",
    "",
    "*.",
    "*.*",
    "a.-b.c",
];

const REASON_SEEDS: &[&str] = &[
    "unspecified",
    "keyCompromise",
    "key-compromise",
    "KEY_COMPROMISE",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "certificateHold",
    "privilegeWithdrawn",
    "aACompromise",
    "removeFromCRL",
    "-_-",
    "",
];

// ---------------------------------------------------------------------------------------------
// The targets
// ---------------------------------------------------------------------------------------------

const ANY_KIND: &[Kind] = &[Kind::Cert, Kind::Crl, Kind::Csr, Kind::Key];

fn fuzz_decode(input: &[u8]) -> Result<(), TestCaseError> {
    no_panic("pem_io::decode", input, || {
        if let Ok(blocks) = pem_io::decode(input) {
            // Debug output must be safe on anything decoded.
            let _ = format!("{blocks:?}");
        }
    })
}

fn fuzz_certificates(input: &[u8]) -> Result<(), TestCaseError> {
    let now = corpus().now;
    no_panic("pem_io::certificates", input, || {
        if let Ok(certs) = pem_io::certificates(input) {
            for der in &certs {
                let cert = pem_io::parse_certificate(der).unwrap();
                inspect::certificate_info(der, &cert, now);
            }
        }
    })
}

fn fuzz_crls(input: &[u8]) -> Result<(), TestCaseError> {
    no_panic("pem_io::crls", input, || {
        pem_io::crls(input).map(|c| c.len())
    })
}

fn fuzz_parse_certificate(input: &[u8]) -> Result<(), TestCaseError> {
    let now = corpus().now;
    no_panic("pem_io::parse_certificate", input, || {
        if let Ok(cert) = pem_io::parse_certificate(input) {
            issue::certificate_sans(&cert);
            inspect::certificate_info(input, &cert, now);
        }
    })
}

fn fuzz_private_key(input: &[u8]) -> Result<(), TestCaseError> {
    no_panic("PrivateKey::from_pem_or_der(None)", input, || {
        PrivateKey::from_pem_or_der(input, None)
    })?;
    let pass = safe_passphrase(input);
    no_panic("PrivateKey::from_pem_or_der(Some(b\"pw\"))", input, || {
        if let Ok(k) = PrivateKey::from_pem_or_der(input, pass) {
            // Use what was loaded: re-encode it and sign with it.
            let _ = k.to_pem();
            let _ = k.public_key_spki();
            let _ = csr::create(&k, &Subject::cn("fuzz"), &[]);
        }
    })
}

fn fuzz_is_encrypted(input: &[u8]) -> Result<(), TestCaseError> {
    no_panic("key::is_encrypted", input, || key::is_encrypted(input))
}

fn fuzz_csr_parse(input: &[u8]) -> Result<(), TestCaseError> {
    let c = corpus();
    no_panic("csr::parse", input, || {
        if let Ok(info) = csr::parse(input) {
            // What `mtls sign` does next: issue from the request's key and names.
            let request = LeafRequest {
                profile: Profile::Client,
                subject: info.subject.clone(),
                sans: info.sans.clone(),
                lifetime: Duration::days(1),
                urls: Default::default(),
            };
            let _ = issue::issue_leaf(&c.ca, &info.public_key, &request, c.now);
        }
    })
}

fn fuzz_parse_crl(input: &[u8]) -> Result<(), TestCaseError> {
    no_panic("revocation::parse_crl", input, || {
        if let Ok(crl) = revocation::parse_crl(input) {
            let _ = crl.issuer().to_string();
            let _ = crl.crl_number().map(ToString::to_string);
            let _ = crl.last_update().to_datetime();
            let _ = crl.next_update().map(|t| t.to_datetime());
            for r in crl.iter_revoked_certificates() {
                let _ = Serial::from_be_bytes(r.raw_serial()).to_string();
                let _ = r.revocation_date.to_datetime();
                let _ = r.reason_code().map(|(_, rc)| rc.to_string());
            }
        }
    })
}

fn fuzz_describe(input: &[u8]) -> Result<(), TestCaseError> {
    let now = OffsetDateTime::now_utc();
    for pass in [None, safe_passphrase(input)] {
        no_panic("inspect::describe", input, || {
            if let Ok(objects) = inspect::describe(input, now, pass) {
                for o in &objects {
                    let _ = inspect::render(o);
                }
            }
        })?;
    }
    Ok(())
}

fn fuzz_serial(s: &str) -> Result<(), TestCaseError> {
    no_panic_str("Serial::from_str", s, || {
        s.parse::<Serial>().map(|serial| serial.to_string())
    })
}

fn fuzz_san(s: &str) -> Result<(), TestCaseError> {
    no_panic_str("San::parse", s, || San::parse(s).map(|san| san.to_string()))
}

fn fuzz_reason(s: &str) -> Result<(), TestCaseError> {
    no_panic_str("RevocationReason::from_str", s, || {
        s.parse::<RevocationReason>().map(|r| r.to_string())
    })
}

proptest! {
    #![proptest_config(config(BYTE_CASES))]

    #[test]
    fn pem_decode_arbitrary(input in arbitrary_bytes()) {
        fuzz_decode(&input)?;
    }

    #[test]
    fn pem_decode_mutated(r in recipe(false)) {
        fuzz_decode(&build(&r, ANY_KIND))?;
    }

    #[test]
    fn certificates_arbitrary(input in arbitrary_bytes()) {
        fuzz_certificates(&input)?;
    }

    #[test]
    fn certificates_mutated(r in recipe(false)) {
        fuzz_certificates(&build(&r, &[Kind::Cert]))?;
    }

    #[test]
    fn crls_arbitrary(input in arbitrary_bytes()) {
        fuzz_crls(&input)?;
    }

    #[test]
    fn crls_mutated(r in recipe(false)) {
        fuzz_crls(&build(&r, &[Kind::Crl]))?;
    }

    #[test]
    fn parse_certificate_arbitrary(input in arbitrary_der()) {
        fuzz_parse_certificate(&input)?;
    }

    #[test]
    fn parse_certificate_mutated(r in recipe(true)) {
        fuzz_parse_certificate(&build(&r, &[Kind::Cert]))?;
    }

    #[test]
    fn private_key_arbitrary(input in arbitrary_bytes()) {
        fuzz_private_key(&input)?;
    }

    #[test]
    fn private_key_mutated(r in recipe(false)) {
        fuzz_private_key(&build(&r, &[Kind::Key]))?;
    }

    #[test]
    fn is_encrypted_arbitrary(input in arbitrary_bytes()) {
        fuzz_is_encrypted(&input)?;
    }

    #[test]
    fn is_encrypted_mutated(r in recipe(false)) {
        fuzz_is_encrypted(&build(&r, &[Kind::Key]))?;
    }

    #[test]
    fn csr_parse_arbitrary(input in arbitrary_bytes()) {
        fuzz_csr_parse(&input)?;
    }

    #[test]
    fn csr_parse_mutated(r in recipe(false)) {
        fuzz_csr_parse(&build(&r, &[Kind::Csr]))?;
    }

    #[test]
    fn parse_crl_arbitrary(input in arbitrary_der()) {
        fuzz_parse_crl(&input)?;
    }

    #[test]
    fn parse_crl_mutated(r in recipe(true)) {
        fuzz_parse_crl(&build(&r, &[Kind::Crl]))?;
    }

    #[test]
    fn describe_arbitrary(input in arbitrary_bytes()) {
        fuzz_describe(&input)?;
    }

    #[test]
    fn describe_mutated(r in recipe(false)) {
        fuzz_describe(&build(&r, ANY_KIND))?;
    }
}

proptest! {
    #![proptest_config(config(STRING_CASES))]

    #[test]
    fn serial_from_str_arbitrary(s in arbitrary_string()) {
        fuzz_serial(&s)?;
    }

    #[test]
    fn serial_from_str_mutated(s in mutated_string(SERIAL_SEEDS)) {
        fuzz_serial(&s)?;
    }

    #[test]
    fn san_parse_arbitrary(s in arbitrary_string()) {
        fuzz_san(&s)?;
    }

    #[test]
    fn san_parse_mutated(s in mutated_string(SAN_SEEDS)) {
        fuzz_san(&s)?;
    }

    #[test]
    fn revocation_reason_from_str_arbitrary(s in arbitrary_string()) {
        fuzz_reason(&s)?;
    }

    #[test]
    fn revocation_reason_from_str_mutated(s in mutated_string(REASON_SEEDS)) {
        fuzz_reason(&s)?;
    }
}

/// The corpus itself is valid, and the mutation machinery does mutate it.
#[test]
fn corpus_is_valid_and_mutations_change_it() {
    let c = corpus();
    assert!(c.seeds.len() >= 20);
    let seed = c.seeds.iter().find(|s| s.kind == Kind::Csr).unwrap();
    let mut tree = parse_tlvs(&seed.der, 0).unwrap();
    assert!(count_nodes(&tree) > 20);
    tree[0].bad_len = Some(LenOp::Delta(1));
    assert_ne!(serialize(&tree), seed.der);
    // Re-signing an unchanged CSR gives a valid CSR again.
    let resigned = resign(&seed.der, &c.keys[seed.signer.unwrap()]).unwrap();
    csr::parse(&resigned).unwrap();
}
