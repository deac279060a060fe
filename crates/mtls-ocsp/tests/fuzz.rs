//! Stable-toolchain fuzzing of the OCSP parsers of untrusted input: `parse_request` (bytes
//! from the network), `decode_get_path` (a URL path) and `verify_response` (bytes from a
//! responder). Inputs are arbitrary bytes/strings and byte-level mutations (flip, truncate,
//! insert, remove, retag) of valid requests and responses built with this crate. The property
//! is "returns `Ok` or `Err`, never panics"; a request that parses must also be signable
//! without panicking.
//!
//! `MTLS_FUZZ_CASES` sets the number of cases per target (default 2 000):
//! `MTLS_FUZZ_CASES=100000 cargo test -p mtls-ocsp --release --test fuzz`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use mtls_ocsp::{
    decode_get_path, parse_request, verify_response, CertStatus, IssuerInfo, Responder,
};
use mtls_pki::issue;
use mtls_pki::{CaCert, KeyAlgorithm, PrivateKey, Serial, Subject};
use proptest::prelude::*;
use proptest::test_runner::Config;
use time::{Duration, OffsetDateTime};
use x509_cert_02::der::asn1::{Null, OctetString};
use x509_cert_02::der::oid::db::rfc5912::ID_SHA_1;
use x509_cert_02::der::{Decode, Encode};
use x509_cert_02::serial_number::SerialNumber;
use x509_cert_02::spki::AlgorithmIdentifierOwned;
use x509_ocsp::ext::Nonce;
use x509_ocsp::{CertId, Request, TbsRequest};

struct Fixture {
    ca: CaCert,
    issuer: IssuerInfo,
    responder: Responder,
    request: Vec<u8>,
    response: Vec<u8>,
    serial: Serial,
    now: OffsetDateTime,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let now = OffsetDateTime::now_utc();
        let root = issue::new_root(
            &Subject::cn("Fuzz Root"),
            PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
            now,
            Duration::days(10),
        )
        .unwrap();
        let ca = issue::new_intermediate(
            &root,
            &Subject::cn("Fuzz Intermediate"),
            PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
            now,
            Duration::days(10),
            0,
        )
        .unwrap();
        let issuer = IssuerInfo::from_der(ca.der()).unwrap();
        let cert = x509_cert_02::Certificate::from_der(ca.der()).unwrap();
        let serial = Serial::random().unwrap();
        // A request built with x509-ocsp's types (SHA-1 CertID, nonce).
        let name_hash = sha1(&cert.tbs_certificate.subject.to_der().unwrap());
        let key_hash = sha1(
            cert.tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes(),
        );
        let cert_id = CertId {
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: ID_SHA_1,
                parameters: Some(Null.into()),
            },
            issuer_name_hash: OctetString::new(name_hash).unwrap(),
            issuer_key_hash: OctetString::new(key_hash).unwrap(),
            serial_number: SerialNumber::new(serial.as_bytes()).unwrap(),
        };
        let nonce = Nonce::new(vec![7u8; 16]).unwrap();
        let nonce_ext = x509_cert_02::ext::Extension {
            extn_id: x509_cert_02::der::oid::db::rfc6960::ID_PKIX_OCSP_NONCE,
            critical: false,
            extn_value: OctetString::new(nonce.0.to_der().unwrap()).unwrap(),
        };
        let request = x509_ocsp::OcspRequest {
            tbs_request: TbsRequest {
                request_list: vec![Request {
                    req_cert: cert_id,
                    single_request_extensions: None,
                }],
                request_extensions: Some(vec![nonce_ext]),
                ..Default::default()
            },
            optional_signature: None,
        }
        .to_der()
        .unwrap();
        let key = PrivateKey::from_pem_or_der(ca.key().pkcs8_der(), None).unwrap();
        let responder = Responder::new(&issuer, ca.der().to_vec(), key).unwrap();
        let parsed = parse_request(&request, std::slice::from_ref(&issuer)).unwrap();
        assert_eq!(parsed.items[0].issuer, Some(0));
        assert_eq!(parsed.nonce.as_deref(), Some([7u8; 16].as_slice()));
        let response = responder
            .sign(
                &parsed,
                &[CertStatus::Good],
                now,
                now,
                Some(now + Duration::hours(1)),
            )
            .unwrap();
        verify_response(&response, ca.der(), &serial, now).unwrap();
        Fixture {
            ca,
            issuer,
            responder,
            request,
            response,
            serial,
            now,
        }
    })
}

fn sha1(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
        .as_ref()
        .to_vec()
}

fn cases() -> u32 {
    std::env::var("MTLS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Remove(usize),
    Set(usize, u8),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        (
            any::<usize>(),
            prop_oneof![
                Just(0x00u8),
                Just(0x80),
                Just(0x81),
                Just(0xff),
                Just(0x30),
                Just(0x04)
            ]
        )
            .prop_map(|(i, b)| Mutation::Set(i, b)),
    ];
    proptest::collection::vec(one, 1..4)
}

fn mutate(input: &[u8], ms: &[Mutation]) -> Vec<u8> {
    let mut v = input.to_vec();
    for m in ms {
        if v.is_empty() {
            break;
        }
        let n = v.len();
        match *m {
            Mutation::Flip(i, b) => v[i % n] ^= b,
            Mutation::Truncate(i) => v.truncate(i % n),
            Mutation::Insert(i, b) => v.insert(i % (n + 1), b),
            Mutation::Remove(i) => {
                v.remove(i % n);
            }
            Mutation::Set(i, b) => v[i % n] = b,
        }
    }
    v
}

fn parse_and_sign(der: &[u8]) {
    let f = fixture();
    if let Ok(req) = parse_request(der, std::slice::from_ref(&f.issuer)) {
        let statuses = vec![CertStatus::Good; req.items.len()];
        let _ = f.responder.sign(
            &req,
            &statuses,
            f.now,
            f.now,
            Some(f.now + Duration::hours(1)),
        );
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_request_arbitrary(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_and_sign(&bytes);
    }

    #[test]
    fn parse_request_mutated(ms in mutations()) {
        parse_and_sign(&mutate(&fixture().request, &ms));
    }

    #[test]
    fn verify_response_mutated(ms in mutations()) {
        let f = fixture();
        let _ = verify_response(&mutate(&f.response, &ms), f.ca.der(), &f.serial, f.now);
    }

    #[test]
    fn verify_response_arbitrary(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let f = fixture();
        let _ = verify_response(&bytes, f.ca.der(), &f.serial, f.now);
    }

    #[test]
    fn decode_get_path_arbitrary(s in "[A-Za-z0-9+/=%_.~ -]{0,300}|\\PC{0,100}") {
        if let Ok(der) = decode_get_path(&s) {
            parse_and_sign(&der);
        }
    }
}
