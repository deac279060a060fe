//! The OCSP responder core against OpenSSL: requests made by `openssl ocsp -reqout` (SHA-1 and
//! SHA-256 CertIDs, with and without nonce, several certificates), responses checked by
//! `openssl ocsp -respin … -CAfile` (signature, responder authorization, nonce, status), for
//! the CA signing itself and for a delegated OCSP signer, with P-256, P-384, Ed25519 and RSA-2048
//! keys; plus the refusals (unknown issuer, malformed requests, wrong signers) and our own
//! `verify_response`. `.ci/run` installs openssl; without it these tests fail rather than skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use mtls_ocsp::{
    decode_get_path, error_response, parse_request, verify_response, CertIdHash, CertStatus, Error,
    IssuerInfo, Responder, ResponseStatus,
};
use mtls_pki::issue::{self, LeafRequest, PublicationUrls};
use mtls_pki::revocation::RevocationReason;
use mtls_pki::{CaCert, Issued, KeyAlgorithm, PrivateKey, Profile, Serial, Subject};
use time::{Duration, OffsetDateTime};

struct Pki {
    dir: tempfile::TempDir,
    root: CaCert,
    inter: CaCert,
    leaves: Vec<Issued>,
}

impl Pki {
    /// Root and intermediate with `alg` keys, two P-256 client leaves, all written as PEM.
    fn new(name: &str, alg: KeyAlgorithm) -> Self {
        let now = OffsetDateTime::now_utc();
        let root = issue::new_root(
            &Subject::cn(format!("{name} Root CA")),
            PrivateKey::generate(alg).unwrap(),
            now - Duration::days(1),
            Duration::days(3650),
        )
        .unwrap();
        let inter = issue::new_intermediate(
            &root,
            &Subject::cn(format!("{name} Intermediate CA")),
            PrivateKey::generate(alg).unwrap(),
            now - Duration::days(1),
            Duration::days(1000),
            0,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut leaves = Vec::new();
        for cn in ["client-a", "client-b"] {
            let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
            let leaf = issue::issue_leaf(
                &inter,
                key.key_pair(),
                &LeafRequest {
                    profile: Profile::Client,
                    subject: Subject::cn(cn),
                    sans: vec![],
                    lifetime: Duration::days(30),
                    urls: PublicationUrls {
                        crl: None,
                        ocsp: Some("http://127.0.0.1:8080/ocsp".into()),
                    },
                },
                now,
            )
            .unwrap();
            std::fs::write(dir.path().join(format!("{cn}.pem")), leaf.pem()).unwrap();
            leaves.push(leaf);
        }
        std::fs::write(dir.path().join("root.pem"), root.pem()).unwrap();
        std::fs::write(dir.path().join("inter.pem"), inter.pem()).unwrap();
        Pki {
            dir,
            root,
            inter,
            leaves,
        }
    }

    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn issuer(&self) -> IssuerInfo {
        IssuerInfo::from_der(self.inter.der()).unwrap()
    }

    /// The intermediate answering for itself.
    fn ca_responder(&self) -> Responder {
        let key = PrivateKey::from_pem_or_der(self.inter.key().pkcs8_der(), None).unwrap();
        Responder::new(&self.issuer(), self.inter.der().to_vec(), key).unwrap()
    }

    /// A delegated OCSP signer issued by the intermediate (same key type as the CA).
    fn delegated_responder(&self) -> Responder {
        let alg = self.inter.key().algorithm();
        let key = PrivateKey::generate(alg).unwrap();
        let signer = issue::issue_ocsp_signer(
            &self.inter,
            key.key_pair(),
            &Subject::cn("OCSP Responder"),
            OffsetDateTime::now_utc(),
            Duration::days(issue::DEFAULT_OCSP_SIGNER_DAYS),
        )
        .unwrap();
        Responder::new(&self.issuer(), signer.der.to_vec(), Arc::new(key)).unwrap()
    }

    /// `openssl ocsp -issuer inter.pem [args] -cert <leaf>… -reqout` → (file, DER).
    fn request(&self, args: &[&str], leaves: &[&str]) -> (String, Vec<u8>) {
        let out = self.p(&format!("req-{}.der", rand_name()));
        let mut cmd = vec!["ocsp", "-issuer"];
        let inter = self.p("inter.pem");
        cmd.push(&inter);
        cmd.extend_from_slice(args);
        let leaf_paths: Vec<String> = leaves.iter().map(|l| self.p(&format!("{l}.pem"))).collect();
        for l in &leaf_paths {
            cmd.push("-cert");
            cmd.push(l);
        }
        cmd.extend_from_slice(&["-reqout", &out]);
        let (ok, text) = openssl(&cmd);
        assert!(ok, "openssl ocsp -reqout: {text}");
        let der = std::fs::read(&out).unwrap();
        (out, der)
    }

    fn write_response(&self, der: &[u8]) -> String {
        let path = self.p(&format!("resp-{}.der", rand_name()));
        std::fs::write(&path, der).unwrap();
        path
    }

    /// `openssl ocsp -respin … -reqin …` (checks signature, authorization and nonce) → output.
    fn openssl_check_with_request(&self, resp: &str, req: &str) -> String {
        let (ok, text) = openssl(&[
            "ocsp",
            "-respin",
            resp,
            "-reqin",
            req,
            "-issuer",
            &self.p("inter.pem"),
            "-CAfile",
            &self.p("root.pem"),
            "-resp_text",
        ]);
        assert!(ok, "openssl ocsp -respin -reqin failed:\n{text}");
        assert!(text.contains("Response verify OK"), "{text}");
        assert!(!text.contains("Nonce Verify error"), "{text}");
        text
    }

    /// `openssl ocsp -respin … -cert leaf` (OpenSSL computes the CertID itself) → status line.
    fn openssl_status(&self, resp: &str, hash_arg: Option<&str>, leaf: &str) -> String {
        let inter = self.p("inter.pem");
        let root = self.p("root.pem");
        let leaf_path = self.p(&format!("{leaf}.pem"));
        let mut args = vec![
            "ocsp",
            "-respin",
            resp,
            "-issuer",
            &inter,
            "-CAfile",
            &root,
            "-no_nonce",
        ];
        if let Some(h) = hash_arg {
            args.push(h);
        }
        args.extend_from_slice(&["-cert", &leaf_path]);
        let (ok, text) = openssl(&args);
        assert!(ok, "openssl ocsp -respin -cert failed:\n{text}");
        assert!(text.contains("Response verify OK"), "{text}");
        assert!(!text.contains("WARNING"), "{text}");
        text.lines()
            .find(|l| l.starts_with(&leaf_path))
            .unwrap_or_else(|| panic!("no status line for {leaf}:\n{text}"))
            .trim_start_matches(&leaf_path)
            .trim_start_matches(':')
            .trim()
            .to_string()
    }
}

fn rand_name() -> String {
    Serial::random().unwrap().to_string()
}

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl not runnable ({e})"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn times() -> (OffsetDateTime, OffsetDateTime, Option<OffsetDateTime>) {
    let now = OffsetDateTime::now_utc();
    (
        now,
        now - Duration::minutes(1),
        Some(now + Duration::days(1)),
    )
}

fn revoked_key_compromise() -> CertStatus {
    CertStatus::Revoked {
        at: OffsetDateTime::now_utc() - Duration::hours(2),
        reason: Some(RevocationReason::KeyCompromise),
    }
}

const ALGS: [KeyAlgorithm; 4] = [
    KeyAlgorithm::EcdsaP256,
    KeyAlgorithm::EcdsaP384,
    KeyAlgorithm::Ed25519,
    KeyAlgorithm::Rsa { bits: 2048 },
];

/// Signs `status` for a fresh OpenSSL request and checks it with OpenSSL and `verify_response`.
fn round_trip(pki: &Pki, responder: &Responder, req_args: &[&str], status: CertStatus) -> String {
    let (req_file, req_der) = pki.request(req_args, &["client-a"]);
    let issuers = [pki.issuer()];
    let req = parse_request(&req_der, &issuers).unwrap();
    assert_eq!(req.items.len(), 1);
    assert_eq!(req.items[0].serial, pki.leaves[0].serial);
    assert_eq!(req.items[0].issuer, Some(0));
    let with_nonce = !req_args.contains(&"-no_nonce");
    assert_eq!(req.nonce.is_some(), with_nonce);
    let (produced_at, this_update, next_update) = times();
    let resp = responder
        .sign(&req, &[status], produced_at, this_update, next_update)
        .unwrap();
    let resp_file = pki.write_response(&resp);

    let text = pki.openssl_check_with_request(&resp_file, &req_file);
    if with_nonce {
        assert!(!text.contains("no nonce"), "{text}");
    }
    let hash_arg = req_args
        .iter()
        .copied()
        .find(|a| *a == "-sha256" || *a == "-sha1");
    let line = pki.openssl_status(&resp_file, hash_arg, "client-a");

    let verified = verify_response(
        &resp,
        pki.inter.der(),
        &pki.leaves[0].serial,
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    assert_eq!(verified.status, truncate(status));
    assert_eq!(verified.nonce, req.nonce);
    assert_eq!(verified.delegated, responder.is_delegated());
    assert_eq!(verified.next_update, next_update.map(truncate_time));
    format!("{line}\n{text}")
}

fn truncate_time(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap()
}

fn truncate(s: CertStatus) -> CertStatus {
    match s {
        CertStatus::Revoked { at, reason } => CertStatus::Revoked {
            at: truncate_time(at),
            reason,
        },
        other => other,
    }
}

#[test]
fn openssl_accepts_good_revoked_and_unknown_for_every_key_type_and_signer() {
    for alg in ALGS {
        let pki = Pki::new(&format!("OCSP {alg}"), alg);
        for responder in [pki.ca_responder(), pki.delegated_responder()] {
            let who = format!("{alg} delegated={}", responder.is_delegated());

            let out = round_trip(&pki, &responder, &[], CertStatus::Good);
            assert!(out.starts_with("good"), "{who}: {out}");
            assert!(out.contains("Cert Status: good"), "{who}: {out}");

            let out = round_trip(&pki, &responder, &[], revoked_key_compromise());
            assert!(out.starts_with("revoked"), "{who}: {out}");
            assert!(out.contains("Cert Status: revoked"), "{who}: {out}");
            assert!(
                out.contains("Reason: keyCompromise"),
                "{who}: no reason in:\n{out}"
            );

            let out = round_trip(&pki, &responder, &[], CertStatus::Unknown);
            assert!(out.starts_with("unknown"), "{who}: {out}");
            assert!(out.contains("Cert Status: unknown"), "{who}: {out}");
        }
    }
}

#[test]
fn nonce_is_echoed_and_absent_without_one() {
    let pki = Pki::new("Nonce", KeyAlgorithm::EcdsaP256);
    let responder = pki.ca_responder();
    let (req_file, req_der) = pki.request(&[], &["client-a"]);
    let req = parse_request(&req_der, &[pki.issuer()]).unwrap();
    let nonce = req.nonce.clone().expect("openssl sends a nonce by default");
    assert_eq!(nonce.len(), 16);
    let (p, t, n) = times();
    let resp = responder.sign(&req, &[CertStatus::Good], p, t, n).unwrap();
    let v = verify_response(&resp, pki.inter.der(), &pki.leaves[0].serial, p).unwrap();
    assert_eq!(v.nonce.as_deref(), Some(nonce.as_slice()));
    pki.openssl_check_with_request(&pki.write_response(&resp), &req_file);

    // Without a nonce in the request: none in the response, and OpenSSL says nothing about it.
    let out = round_trip(&pki, &responder, &["-no_nonce"], CertStatus::Good);
    assert!(out.starts_with("good"), "{out}");
    let (_, req_der) = pki.request(&["-no_nonce"], &["client-a"]);
    let req = parse_request(&req_der, &[pki.issuer()]).unwrap();
    let resp = responder.sign(&req, &[CertStatus::Good], p, t, n).unwrap();
    let v = verify_response(&resp, pki.inter.der(), &pki.leaves[0].serial, p).unwrap();
    assert_eq!(v.nonce, None);

    // A response to another request fails OpenSSL's nonce check.
    let (other_file, _) = pki.request(&[], &["client-a"]);
    let (ok, text) = openssl(&[
        "ocsp",
        "-respin",
        &pki.write_response(&responder.sign(&req, &[CertStatus::Good], p, t, n).unwrap()),
        "-reqin",
        &other_file,
        "-issuer",
        &pki.p("inter.pem"),
        "-CAfile",
        &pki.p("root.pem"),
    ]);
    assert!(text.contains("no nonce in response"), "{ok} {text}");
}

#[test]
fn sha256_cert_ids_are_answered_with_sha256_cert_ids() {
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519] {
        let pki = Pki::new("SHA-256", alg);
        for responder in [pki.ca_responder(), pki.delegated_responder()] {
            let (_, der) = pki.request(&["-sha256"], &["client-a"]);
            let req = parse_request(&der, &[pki.issuer()]).unwrap();
            assert_eq!(req.items[0].hash, CertIdHash::Sha256);
            for (status, word) in [
                (CertStatus::Good, "good"),
                (revoked_key_compromise(), "revoked"),
                (CertStatus::Unknown, "unknown"),
            ] {
                let out = round_trip(&pki, &responder, &["-sha256"], status);
                assert!(out.starts_with(word), "{alg}: {out}");
            }
            // A SHA-1 CertID lookup does not find a SHA-256 answer.
            let (_, der) = pki.request(&["-sha256", "-no_nonce"], &["client-a"]);
            let req = parse_request(&der, &[pki.issuer()]).unwrap();
            let (p, t, n) = times();
            let resp = responder.sign(&req, &[CertStatus::Good], p, t, n).unwrap();
            let resp_file = pki.write_response(&resp);
            let (_, text) = openssl(&[
                "ocsp",
                "-respin",
                &resp_file,
                "-issuer",
                &pki.p("inter.pem"),
                "-CAfile",
                &pki.p("root.pem"),
                "-no_nonce",
                "-cert",
                &pki.p("client-a.pem"),
            ]);
            assert!(text.contains("No Status found"), "{text}");
        }
    }
}

#[test]
fn several_certificates_in_one_request_get_one_answer_each_in_order() {
    let pki = Pki::new("Multi", KeyAlgorithm::EcdsaP256);
    let responder = pki.delegated_responder();
    let (req_file, der) = pki.request(&[], &["client-a", "client-b"]);
    let req = parse_request(&der, &[pki.issuer()]).unwrap();
    assert_eq!(
        req.items
            .iter()
            .map(|i| i.serial.clone())
            .collect::<Vec<_>>(),
        vec![pki.leaves[0].serial.clone(), pki.leaves[1].serial.clone()]
    );
    let (p, t, n) = times();
    let statuses = [CertStatus::Good, revoked_key_compromise()];
    let resp = responder.sign(&req, &statuses, p, t, n).unwrap();
    let resp_file = pki.write_response(&resp);
    let text = pki.openssl_check_with_request(&resp_file, &req_file);
    assert_eq!(text.matches("Cert Status:").count(), 2, "{text}");
    assert_eq!(pki.openssl_status(&resp_file, None, "client-a"), "good");
    assert_eq!(pki.openssl_status(&resp_file, None, "client-b"), "revoked");
    for (leaf, status) in pki.leaves.iter().zip(statuses) {
        let v = verify_response(&resp, pki.inter.der(), &leaf.serial, p).unwrap();
        assert_eq!(v.status, truncate(status));
    }
    assert!(matches!(
        responder.sign(&req, &[CertStatus::Good], p, t, n),
        Err(Error::StatusCountMismatch {
            items: 2,
            statuses: 1
        })
    ));
}

#[test]
fn unknown_issuer_is_matched_to_none_and_answered_unauthorized() {
    let ours = Pki::new("Ours", KeyAlgorithm::EcdsaP256);
    let theirs = Pki::new("Theirs", KeyAlgorithm::EcdsaP256);
    // Two issuers known: the root and our intermediate; the request is for another CA.
    let issuers = [
        IssuerInfo::from_der(ours.root.der()).unwrap(),
        ours.issuer(),
    ];
    let (_, der) = theirs.request(&[], &["client-a"]);
    let req = parse_request(&der, &issuers).unwrap();
    assert_eq!(req.items[0].issuer, None);
    let (_, der) = ours.request(&[], &["client-a"]);
    assert_eq!(
        parse_request(&der, &issuers).unwrap().items[0].issuer,
        Some(1)
    );

    // Signing another issuer's CertID is refused, mapped to `unauthorized`.
    let (_, der) = theirs.request(&[], &["client-a"]);
    let req = parse_request(&der, &issuers).unwrap();
    let (p, t, n) = times();
    let err = ours
        .ca_responder()
        .sign(&req, &[CertStatus::Good], p, t, n)
        .unwrap_err();
    assert!(matches!(err, Error::IssuerMismatch { index: 0 }), "{err}");
    assert_eq!(err.response_status(), ResponseStatus::Unauthorized);

    let resp_file = ours.write_response(&error_response(ResponseStatus::Unauthorized));
    let (_, text) = openssl(&["ocsp", "-respin", &resp_file, "-resp_text", "-noverify"]);
    assert!(text.contains("unauthorized (6)"), "{text}");
    assert!(matches!(
        verify_response(
            &error_response(ResponseStatus::Unauthorized),
            ours.inter.der(),
            &ours.leaves[0].serial,
            p
        ),
        Err(Error::ResponseStatus(ResponseStatus::Unauthorized))
    ));
}

#[test]
fn error_responses_are_what_openssl_reads() {
    let dir = tempfile::tempdir().unwrap();
    for (status, text) in [
        (ResponseStatus::MalformedRequest, "malformedrequest (1)"),
        (ResponseStatus::InternalError, "internalerror (2)"),
        (ResponseStatus::TryLater, "trylater (3)"),
        (ResponseStatus::SigRequired, "sigrequired (5)"),
        (ResponseStatus::Unauthorized, "unauthorized (6)"),
    ] {
        let path: PathBuf = dir.path().join("err.der");
        std::fs::write(&path, error_response(status)).unwrap();
        let (_, out) = openssl(&[
            "ocsp",
            "-respin",
            path.to_str().unwrap(),
            "-resp_text",
            "-noverify",
        ]);
        assert!(out.to_lowercase().contains(text), "{status}: {out}");
    }
}

#[test]
fn malformed_and_unsupported_requests_are_refused() {
    let pki = Pki::new("Bad", KeyAlgorithm::EcdsaP256);
    let issuers = [pki.issuer()];
    let (_, good) = pki.request(&[], &["client-a"]);
    parse_request(&good, &issuers).unwrap();

    let malformed = |der: &[u8]| {
        let err = parse_request(der, &issuers).unwrap_err();
        assert_eq!(
            err.response_status(),
            ResponseStatus::MalformedRequest,
            "{err}"
        );
        err
    };
    malformed(b"");
    malformed(b"GET / HTTP/1.1\r\n");
    malformed(&good[..good.len() - 1]);
    let mut trailing = good.clone();
    trailing.push(0);
    malformed(&trailing);
    let mut garbled = good.clone();
    garbled[2] ^= 0xff;
    malformed(&garbled);
    assert!(matches!(
        malformed(&vec![0x30; mtls_ocsp::MAX_REQUEST_BYTES + 1]),
        Error::TooLarge { .. }
    ));

    // Unsupported CertID hash.
    let (_, sha384) = pki.request(&["-sha384"], &["client-a"]);
    assert!(matches!(
        malformed(&sha384),
        Error::UnsupportedHashAlgorithm(oid) if oid == "2.16.840.1.101.3.4.2.2"
    ));

    // Too many certificates: 33 serials.
    let inter = pki.p("inter.pem");
    let out = pki.p("many.der");
    let serials: Vec<String> = (1..=33).map(|i| format!("0x{i:x}")).collect();
    let mut args = vec!["ocsp", "-issuer", inter.as_str()];
    for s in &serials {
        args.push("-serial");
        args.push(s);
    }
    args.extend_from_slice(&["-reqout", &out]);
    assert!(openssl(&args).0);
    assert!(matches!(
        malformed(&std::fs::read(&out).unwrap()),
        Error::TooManyItems { count: 33, max: 32 }
    ));
    // 32 is fine, serials as given.
    let mut args = vec!["ocsp", "-issuer", inter.as_str()];
    for s in &serials[..32] {
        args.push("-serial");
        args.push(s);
    }
    args.extend_from_slice(&["-reqout", &out]);
    assert!(openssl(&args).0);
    let req = parse_request(&std::fs::read(&out).unwrap(), &issuers).unwrap();
    assert_eq!(req.items.len(), 32);
    assert_eq!(req.items[31].serial.to_string(), "20");
}

#[test]
fn get_path_decodes_percent_escaped_standard_base64() {
    use base64::Engine;
    let pki = Pki::new("GET", KeyAlgorithm::EcdsaP256);
    // Find a request whose base64 has '+', '/' and '=': a SHA-1 CertID without nonce is 83
    // bytes (so padded), and random serials vary the rest.
    let inter = pki.p("inter.pem");
    let out = pki.p("get.der");
    let (der, b64) = (0..200)
        .map(|_| {
            let serial = format!("0x{}", Serial::random().unwrap());
            let args = [
                "ocsp",
                "-issuer",
                &inter,
                "-no_nonce",
                "-serial",
                &serial,
                "-reqout",
                &out,
            ];
            assert!(openssl(&args).0);
            let der = std::fs::read(&out).unwrap();
            let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
            (der, b64)
        })
        .find(|(_, b)| b.contains('+') && b.contains('/') && b.contains('='))
        .expect("a base64 request with + / and =");
    let escaped = b64
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    assert_eq!(decode_get_path(&escaped).unwrap(), der);
    assert_eq!(decode_get_path(&b64).unwrap(), der, "unescaped");
    assert_eq!(
        decode_get_path(&escaped.replace("%2B", "%2b").replace("%2F", "%2f")).unwrap(),
        der,
        "lower-case escapes"
    );
    assert_eq!(
        decode_get_path(b64.trim_end_matches('=')).unwrap(),
        der,
        "no padding"
    );
    parse_request(&decode_get_path(&escaped).unwrap(), &[pki.issuer()]).unwrap();

    for bad in ["", "%", "%ZZ", "a b", "@@@@", "-_-_", "A"] {
        assert!(decode_get_path(bad).is_err(), "{bad:?}");
    }
    assert!(matches!(
        decode_get_path(&"A".repeat(mtls_ocsp::MAX_GET_PATH_LEN + 1)),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn responders_refuse_signers_the_issuer_did_not_authorize() {
    let pki = Pki::new("Signers", KeyAlgorithm::EcdsaP256);
    let other = Pki::new("Other", KeyAlgorithm::EcdsaP256);
    let issuer = pki.issuer();
    let now = OffsetDateTime::now_utc();

    // The CA certificate with a key that is not its own.
    let stranger = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    assert!(matches!(
        Responder::new(&issuer, pki.inter.der().to_vec(), stranger),
        Err(Error::KeyMismatch)
    ));

    // A client certificate of this CA (no id-kp-OCSPSigning).
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let client = issue::issue_leaf(
        &pki.inter,
        key.key_pair(),
        &LeafRequest {
            profile: Profile::Client,
            subject: Subject::cn("not-a-responder"),
            sans: vec![],
            lifetime: Duration::days(1),
            urls: PublicationUrls::default(),
        },
        now,
    )
    .unwrap();
    assert!(matches!(
        Responder::new(&issuer, client.der.to_vec(), key),
        Err(Error::SignerNotAuthorized(_))
    ));

    // An OCSP signer of another CA.
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let foreign = issue::issue_ocsp_signer(
        &other.inter,
        key.key_pair(),
        &Subject::cn("OCSP"),
        now,
        Duration::days(1),
    )
    .unwrap();
    assert!(matches!(
        Responder::new(&issuer, foreign.der.to_vec(), key),
        Err(Error::SignerNotAuthorized(_))
    ));

    // An OCSP signer issued by the root for the intermediate's certificates.
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let by_root = issue::issue_ocsp_signer(
        &pki.root,
        key.key_pair(),
        &Subject::cn("OCSP"),
        now,
        Duration::days(1),
    )
    .unwrap();
    assert!(matches!(
        Responder::new(&issuer, by_root.der.to_vec(), key),
        Err(Error::SignerNotAuthorized(_))
    ));

    // A leaf is no issuer.
    assert!(matches!(
        IssuerInfo::from_der(&pki.leaves[0].der),
        Err(Error::NotACa(_))
    ));
    assert!(matches!(
        IssuerInfo::from_der(b"not a certificate"),
        Err(Error::Certificate { .. })
    ));

    // A delegated signer cannot sign outside its validity.
    let responder = pki.delegated_responder();
    let (_, der) = pki.request(&[], &["client-a"]);
    let req = parse_request(&der, &[issuer]).unwrap();
    let late = responder.signer_not_after() + Duration::days(1);
    assert!(matches!(
        responder.sign(&req, &[CertStatus::Good], late, late, None),
        Err(Error::SignerNotValid { .. })
    ));
    assert!(matches!(
        responder.sign(&req, &[CertStatus::Good], now, now, Some(now)),
        Err(Error::InvalidTime(_))
    ));
    assert!(format!("{responder:?}").contains("elided"));
}

#[test]
fn verify_response_rejects_tampering_wrong_serial_and_stale_answers() {
    let pki = Pki::new("Verify", KeyAlgorithm::EcdsaP256);
    let responder = pki.ca_responder();
    let (_, der) = pki.request(&[], &["client-a"]);
    let req = parse_request(&der, &[pki.issuer()]).unwrap();
    let (p, t, n) = times();
    let resp = responder.sign(&req, &[CertStatus::Good], p, t, n).unwrap();
    let serial = &pki.leaves[0].serial;
    verify_response(&resp, pki.inter.der(), serial, p).unwrap();

    // A flipped bit in the signature breaks it, for us and for OpenSSL.
    let mut bad = resp.clone();
    let last = bad.len() - 5;
    bad[last] ^= 1;
    assert!(matches!(
        verify_response(&bad, pki.inter.der(), serial, p),
        Err(Error::BadSignature(_))
    ));
    let (_, text) = openssl(&[
        "ocsp",
        "-respin",
        &pki.write_response(&bad),
        "-issuer",
        &pki.p("inter.pem"),
        "-CAfile",
        &pki.p("root.pem"),
        "-no_nonce",
        "-cert",
        &pki.p("client-a.pem"),
    ]);
    assert!(
        text.contains("Response Verify Failure") && !text.contains("Response verify OK"),
        "{text}"
    );
    // The other leaf was not asked about.
    assert!(matches!(
        verify_response(&resp, pki.inter.der(), &pki.leaves[1].serial, p),
        Err(Error::NoMatchingResponse(_))
    ));
    // Past nextUpdate, and before thisUpdate.
    assert!(matches!(
        verify_response(&resp, pki.inter.der(), serial, p + Duration::days(2)),
        Err(Error::NotCurrent { .. })
    ));
    assert!(matches!(
        verify_response(&resp, pki.inter.der(), serial, p - Duration::hours(1)),
        Err(Error::NotCurrent { .. })
    ));
    // Without nextUpdate: current for a few minutes after thisUpdate, then a replay.
    let fresh = responder
        .sign(&req, &[CertStatus::Good], p, p, None)
        .unwrap();
    verify_response(&fresh, pki.inter.der(), serial, p + Duration::minutes(4)).unwrap();
    assert!(matches!(
        verify_response(&fresh, pki.inter.der(), serial, p + Duration::hours(1)),
        Err(Error::NotCurrent { .. })
    ));
    // Checked against another CA: the CA's responderID does not match, no certs.
    let other = Pki::new("Verify other", KeyAlgorithm::EcdsaP256);
    assert!(matches!(
        verify_response(&resp, other.inter.der(), serial, p),
        Err(Error::SignerNotAuthorized(_))
    ));
    // A response signed by a delegated signer of another CA, presented as ours.
    let foreign = other.delegated_responder();
    let (_, der) = other.request(&[], &["client-a"]);
    let oreq = parse_request(&der, &[other.issuer()]).unwrap();
    let oresp = foreign.sign(&oreq, &[CertStatus::Good], p, t, n).unwrap();
    assert!(matches!(
        verify_response(&oresp, pki.inter.der(), &other.leaves[0].serial, p),
        Err(Error::SignerNotAuthorized(_))
    ));
    verify_response(&oresp, other.inter.der(), &other.leaves[0].serial, p).unwrap();
}

#[test]
fn issuer_key_is_the_hex_sha256_of_the_spki() {
    let pki = Pki::new("Key", KeyAlgorithm::EcdsaP256);
    let issuer = pki.issuer();
    let spki = pki.inter.key().public_key_spki();
    let want = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki));
    assert_eq!(issuer.issuer_key(), want);
    assert_eq!(issuer.issuer_key().len(), 64);
    assert!(issuer.subject().contains("Key Intermediate CA"));
}

/// `openssl ocsp` as the responder ("good" for client-a) signing with the digest `md`, for a
/// request of ours → the response DER. The signer is the intermediate, or the delegated signer
/// (certificate, key) given.
fn openssl_response(pki: &Pki, md: &str, signer: Option<(&str, &str)>) -> Vec<u8> {
    let inter_key = inter_key(pki);
    let inter = pki.p("inter.pem");
    let (cert, key) = signer.unwrap_or((&inter, &inter_key));
    let leaf = &pki.leaves[0];
    let index = pki.p(&format!("index-{}.txt", rand_name()));
    std::fs::write(
        &index,
        format!(
            "V\t351231235959Z\t\t{}\tunknown\t/CN=client-a\n",
            leaf.serial.to_string().to_uppercase()
        ),
    )
    .unwrap();
    let req = pki.p(&format!("req-{}.der", rand_name()));
    std::fs::write(
        &req,
        mtls_ocsp::build_request(&pki.issuer(), &leaf.serial, None).unwrap(),
    )
    .unwrap();
    let resp = pki.p(&format!("resp-{}.der", rand_name()));
    let (ok, text) = openssl(&[
        "ocsp", "-index", &index, "-CA", &inter, "-rsigner", cert, "-rkey", key, "-reqin", &req,
        "-respout", &resp, "-rmd", md, "-ndays", "1",
    ]);
    assert!(ok, "openssl ocsp responder: {text}");
    std::fs::read(&resp).unwrap()
}

fn inter_key(pki: &Pki) -> String {
    let key = pki.p("inter.key");
    std::fs::write(&key, pki.inter.key().to_pem().as_bytes()).unwrap();
    key
}

/// A delegated OCSP signer (P-256 key) that OpenSSL issues from the intermediate, signing the
/// certificate with the digest `md` → (certificate file, key file).
fn openssl_delegated_signer(pki: &Pki, md: &str) -> (String, String) {
    let name = rand_name();
    let (key, csr, cert, ext) = (
        pki.p(&format!("d-{name}.key")),
        pki.p(&format!("d-{name}.csr")),
        pki.p(&format!("d-{name}.pem")),
        pki.p(&format!("d-{name}.cnf")),
    );
    std::fs::write(
        &ext,
        "extendedKeyUsage = OCSPSigning\nkeyUsage = critical, digitalSignature\nbasicConstraints = critical, CA:FALSE\n",
    )
    .unwrap();
    let (inter, inter_key, digest) = (pki.p("inter.pem"), inter_key(pki), format!("-{md}"));
    let steps: [Vec<&str>; 3] = [
        vec![
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ],
        vec![
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            "/CN=OCSP Signer",
            "-out",
            &csr,
        ],
        vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &inter,
            "-CAkey",
            &inter_key,
            "-set_serial",
            "4660",
            "-days",
            "1",
            &digest,
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    ];
    for args in &steps {
        let (ok, text) = openssl(args);
        assert!(ok, "openssl {args:?}: {text}");
    }
    (cert, key)
}

#[test]
fn responses_signed_with_sha1_are_refused_sha256_ones_accepted() {
    let pki = Pki::new("Sha1", KeyAlgorithm::Rsa { bits: 2048 });
    let serial = &pki.leaves[0].serial;
    let now = OffsetDateTime::now_utc();
    // The same responder and key: SHA-256 verifies and says good.
    let good = openssl_response(&pki, "sha256", None);
    let v = verify_response(&good, pki.inter.der(), serial, now).unwrap();
    assert_eq!(v.status, CertStatus::Good);
    // SHA-1 with RSA: refused for its algorithm, whatever the signature.
    let sha1 = openssl_response(&pki, "sha1", None);
    match verify_response(&sha1, pki.inter.der(), serial, now) {
        Err(e @ Error::UnsupportedSignatureAlgorithm(_)) => {
            assert!(e.to_string().contains("sha1WithRSAEncryption"), "{e}")
        }
        other => panic!("a SHA-1 signature must be refused, got {other:?}"),
    }

    // A delegated signer whose certificate the CA signed with SHA-256 answers; one signed
    // with SHA-1 does not, though the response itself is signed with SHA-256.
    let (cert, key) = openssl_delegated_signer(&pki, "sha256");
    let delegated = openssl_response(&pki, "sha256", Some((&cert, &key)));
    let v = verify_response(&delegated, pki.inter.der(), serial, now).unwrap();
    assert!(v.delegated);
    assert_eq!(v.status, CertStatus::Good);
    let (cert, key) = openssl_delegated_signer(&pki, "sha1");
    let delegated = openssl_response(&pki, "sha256", Some((&cert, &key)));
    match verify_response(&delegated, pki.inter.der(), serial, now) {
        Err(e @ Error::UnsupportedSignatureAlgorithm(_)) => {
            assert!(e.to_string().contains("sha1WithRSAEncryption"), "{e}")
        }
        other => panic!("a SHA-1 signed signer certificate must be refused, got {other:?}"),
    }
}
