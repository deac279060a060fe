//! CRLs with an issuingDistributionPoint cover only the certificates in their scope, in both
//! `verify()` and a server's `TrustState` (one validation path). Built with rcgen directly,
//! since mtls's own CA never partitions its CRLs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::ca_params;

use mtls_verify::{
    verify, CrlScope, Purpose, Rejection, RevocationOptions, TrustState, VerifyRequest,
};
use rcgen::{
    CertificateParams, CertificateRevocationListParams, CertifiedIssuer, CrlDistributionPoint,
    CrlIssuingDistributionPoint, DnType, ExtendedKeyUsagePurpose, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::{Duration, OffsetDateTime};

const LEAF_DP: &str = "http://crl.example/intermediate.crl";

struct Pki {
    root: CertifiedIssuer<'static, KeyPair>,
    inter: CertifiedIssuer<'static, KeyPair>,
    leaf: CertificateDer<'static>,
    leaf_serial: SerialNumber,
}

fn pki() -> Pki {
    let root = CertifiedIssuer::self_signed(ca_params("Scope Root"), KeyPair::generate().unwrap())
        .unwrap();
    let inter = CertifiedIssuer::signed_by(
        ca_params("Scope Intermediate"),
        KeyPair::generate().unwrap(),
        &root,
    )
    .unwrap();
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "client");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec![LEAF_DP.into()],
    }];
    let leaf_serial = SerialNumber::from(vec![0x11, 0x22, 0x33]);
    p.serial_number = Some(leaf_serial.clone());
    p.not_before = OffsetDateTime::now_utc() - Duration::days(1);
    p.not_after = OffsetDateTime::now_utc() + Duration::days(7);
    let leaf = p
        .signed_by(&KeyPair::generate().unwrap(), &inter)
        .unwrap()
        .der()
        .clone();
    Pki {
        root,
        inter,
        leaf,
        leaf_serial,
    }
}

/// A CRL of the intermediate revoking the leaf, with this IDP.
fn crl(
    pki: &Pki,
    idp: Option<CrlIssuingDistributionPoint>,
) -> CertificateRevocationListDer<'static> {
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    CertificateRevocationListParams {
        this_update: now,
        next_update: now + Duration::days(1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: idp,
        revoked_certs: vec![RevokedCertParams {
            serial_number: pki.leaf_serial.clone(),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&pki.inter)
    .unwrap()
    .der()
    .clone()
}

fn idp(uri: &str, scope: Option<rcgen::CrlScope>) -> Option<CrlIssuingDistributionPoint> {
    Some(CrlIssuingDistributionPoint {
        distribution_point: CrlDistributionPoint {
            uris: vec![uri.into()],
        },
        scope,
    })
}

/// The verdict of `verify()` and of a server's trust state (intermediate in its bundle, so
/// the CRL's signer is known) for the leaf.
fn both(
    pki: &Pki,
    crl: &CertificateRevocationListDer<'_>,
) -> (Result<(), Rejection>, Result<(), Rejection>) {
    let roots = [pki.root.der().clone()];
    let inter = [pki.inter.der().clone()];
    let req = VerifyRequest {
        roots: &roots,
        intermediates: &inter,
        crls: std::slice::from_ref(crl),
        at: OffsetDateTime::now_utc(),
        purpose: Purpose::Client,
        name: None,
        crl_scope: CrlScope::Leaf,
        allow_unknown_revocation: false,
        allow_expired_crl: false,
    };
    let one_off = verify(&pki.leaf, &req).unwrap().map(|_| ());
    let state = TrustState::new(
        1,
        vec![pki.root.der().clone(), pki.inter.der().clone()],
        std::slice::from_ref(crl),
        RevocationOptions::default(),
    )
    .unwrap();
    let server = state
        .verify_client(&pki.leaf, &inter, OffsetDateTime::now_utc())
        .map(|_| ());
    (one_off, server)
}

#[test]
fn a_crl_for_user_certificates_at_the_leafs_distribution_point_covers_it() {
    let pki = pki();
    for c in [
        crl(&pki, None),
        crl(&pki, idp(LEAF_DP, None)),
        crl(&pki, idp(LEAF_DP, Some(rcgen::CrlScope::UserCertsOnly))),
    ] {
        assert_eq!(
            both(&pki, &c),
            (Err(Rejection::Revoked), Err(Rejection::Revoked))
        );
    }
}

#[test]
fn a_crl_for_ca_certificates_or_another_distribution_point_does_not_cover_the_leaf() {
    let pki = pki();
    for c in [
        crl(&pki, idp(LEAF_DP, Some(rcgen::CrlScope::CaCertsOnly))),
        crl(&pki, idp("http://crl.example/other-partition.crl", None)),
    ] {
        // Not read as complete: the leaf's status is unknown, which fails closed.
        assert_eq!(
            both(&pki, &c),
            (
                Err(Rejection::UnknownRevocationStatus),
                Err(Rejection::UnknownRevocationStatus)
            )
        );
    }
}

/// A delta CRL (made by `openssl ca -gencrl` with a deltaCRLIndicator) lists only changes: it
/// is refused, never read as the complete list.
#[test]
fn a_delta_crl_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl must be installed");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=Delta CA",
        "-days",
        "2",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
    ]);
    std::fs::write(dir.path().join("index.txt"), "").unwrap();
    std::fs::write(dir.path().join("crlnumber"), "01\n").unwrap();
    std::fs::write(
        dir.path().join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ncrlnumber = crlnumber\n\
         default_md = sha256\ndefault_crl_days = 1\n\
         [delta]\n2.5.29.27 = critical, DER:02:01:01\n",
    )
    .unwrap();
    run(&[
        "ca",
        "-gencrl",
        "-config",
        "ca.cnf",
        "-keyfile",
        "ca.key",
        "-cert",
        "ca.crt",
        "-crlexts",
        "delta",
        "-out",
        "delta.crl",
    ]);
    let pem_der = |file: &str| {
        let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
        pem::parse(text).unwrap().into_contents()
    };
    let root = CertificateDer::from(pem_der("ca.crt"));
    let delta = CertificateRevocationListDer::from(pem_der("delta.crl"));
    let err = TrustState::new(
        1,
        vec![root.clone()],
        std::slice::from_ref(&delta),
        RevocationOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("unsupported CRL"), "{err}");
    let roots = [root];
    let req = VerifyRequest {
        roots: &roots,
        intermediates: &[],
        crls: std::slice::from_ref(&delta),
        at: OffsetDateTime::now_utc(),
        purpose: Purpose::Any,
        name: None,
        crl_scope: CrlScope::Leaf,
        allow_unknown_revocation: false,
        allow_expired_crl: false,
    };
    assert!(matches!(
        verify(&roots[0], &req),
        Err(mtls_verify::InputError::BadCrl { .. })
    ));
}

/// DER header length and total length of the TLV at the start of `d` (test helper).
fn tlv(d: &[u8]) -> (usize, usize) {
    let first = d[1];
    if first < 0x80 {
        return (2, 2 + first as usize);
    }
    let n = (first & 0x7f) as usize;
    let len = d[2..2 + n]
        .iter()
        .fold(0usize, |a, b| (a << 8) | *b as usize);
    (2 + n, 2 + n + len)
}

fn der_len(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![len as u8];
    }
    let bytes: Vec<u8> = len
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    let mut out = vec![0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}

/// An issuingDistributionPoint whose fields are out of DER order (`onlyContainsUserCerts`
/// before the distribution point), which x509-parser would read as having no distribution
/// point (covering every certificate of the partition's issuer): the CRL is refused, not
/// trusted for certificates outside its partition. (webpki refuses it as bad DER; the scope's
/// own reader refuses an IDP it cannot read whole too.)
#[test]
fn an_issuing_distribution_point_read_only_in_part_refuses_the_crl() {
    use rcgen::SigningKey;
    let pki = pki();
    let der = crl(&pki, idp(LEAF_DP, Some(rcgen::CrlScope::UserCertsOnly)));
    let (outer_hdr, _) = tlv(&der);
    let body = &der[outer_hdr..];
    let (_, tbs_len) = tlv(body);
    let tbs = &body[..tbs_len];
    let (_, alg_len) = tlv(&body[tbs_len..]);
    let alg = &body[tbs_len..tbs_len + alg_len];
    // [1] onlyContainsUserCerts TRUE, and the [0] distribution point just before it.
    let user = tbs
        .windows(3)
        .position(|w| w == [0x81, 0x01, 0xff])
        .expect("onlyContainsUserCerts");
    let dp = (0..user)
        .rev()
        .find(|&i| tbs[i] == 0xa0 && i + tlv(&tbs[i..]).1 == user)
        .expect("the distribution point before it");
    let mut swapped = tbs[..dp].to_vec();
    swapped.extend_from_slice(&tbs[user..user + 3]);
    swapped.extend_from_slice(&tbs[dp..user]);
    swapped.extend_from_slice(&tbs[user + 3..]);
    let signature = pki.inter.key().sign(&swapped).unwrap();
    let mut bits = vec![0x03];
    bits.extend(der_len(signature.len() + 1));
    bits.push(0);
    bits.extend(signature);
    let content: Vec<u8> = [swapped.as_slice(), alg, bits.as_slice()].concat();
    let mut reordered = vec![0x30];
    reordered.extend(der_len(content.len()));
    reordered.extend(content);
    let err = TrustState::new(
        1,
        vec![pki.root.der().clone(), pki.inter.der().clone()],
        &[CertificateRevocationListDer::from(reordered)],
        RevocationOptions::default(),
    )
    .expect_err("refused");
    assert!(err.to_string().contains("CRL 0"), "{err}");
}

/// A revocation feed seeded from a CRL takes every certificate of the issuer it does not list
/// as good: a partition's CRL (an issuingDistributionPoint) cannot seed it.
#[test]
fn a_partition_s_crl_does_not_seed_a_revocation_feed() {
    let pki = pki();
    let set = mtls_verify::PushedRevocations::new(std::time::Duration::from_secs(60));
    let ca = vec![pki.root.der().clone(), pki.inter.der().clone()];
    let partial = crl(&pki, idp(LEAF_DP, Some(rcgen::CrlScope::UserCertsOnly)));
    assert!(matches!(
        set.seed_from_crl(ca.clone(), &partial, OffsetDateTime::now_utc()),
        Err(mtls_verify::SeedError::Partial)
    ));
    assert_eq!(
        set.seed_from_crl(ca, &crl(&pki, None), OffsetDateTime::now_utc())
            .unwrap(),
        1
    );
}
