//! `mtls-verify`: certificate path validation for mtls.
//!
//! What it does: builds and checks a path from a leaf to a trusted root with rustls-webpki
//! (signatures, validity, basic constraints, name constraints, EKU nesting), checks revocation
//! against CRLs verified once and indexed ([`TrustState`]; [`verify`] runs the same code), and
//! adds the checks webpki leaves out: a certificate used for client authentication must *carry* the
//! clientAuth EKU (webpki accepts a certificate without any EKU), and a leaf may not hold
//! keyCertSign. Every rejection is a typed [`Rejection`] with a stable code.
//!
//! What it does not do: read files, keep reloadable state or speak TLS. CRLs are checked as
//! given; freshness is enforced (an expired CRL fails) unless explicitly relaxed.
#![forbid(unsafe_code)]

mod fetched;
mod name;
mod peer;
mod policy;
mod pushed;
mod serial_key;
mod source;
mod state;
mod tls;

pub use fetched::FetchedCrls;
pub use name::DistinguishedName;
pub use peer::{PeerIdentity, VerifiedPeer};
pub use policy::{uri_match, Policy, PolicyMatch};
pub use pushed::{
    issuer_key_of, IssuerKey, PushedRevocations, PushedStatus, SeedError, FEED_POSITION_HEADER,
};
pub use source::{
    DecisionResult, DecisionSource, RevocationDecisions, RevocationSources, SourceStatus,
    StatusQuery, StatusSource,
};
pub use state::{
    crl_distribution_points, CrlSummary, CrlVersion, RevocationOptions, TrustError, TrustState,
};
pub use tls::{
    code_of_certificate_error, handshake_code, rejection_to_rustls, take_refused_peer,
    ClientVerifier, RefusedPeer,
};

use std::fmt;
use std::str::FromStr;

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use time::OffsetDateTime;
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeIdIter, KeyUsage};
use x509_parser::extensions::ParsedExtension;

/// Signature algorithms accepted in chains, CRLs and OCSP responses: one list, in mtls-pki.
pub use mtls_pki::signature::SIGNATURE_ALGORITHMS;

/// What the leaf certificate is being validated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// TLS client authentication: the leaf must carry the clientAuth EKU.
    Client,
    /// TLS server authentication: serverAuth EKU if the leaf has an EKU extension.
    Server,
    /// Any purpose: EKU is not checked.
    Any,
}

impl FromStr for Purpose {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "client" => Ok(Purpose::Client),
            "server" => Ok(Purpose::Server),
            "any" => Ok(Purpose::Any),
            _ => Err(format!("unknown purpose {s:?} (client, server or any)")),
        }
    }
}

/// Which certificates of the path must have a revocation status when CRLs are given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrlScope {
    /// Only the leaf (the usual case: CRLs of the issuing CA).
    #[default]
    Leaf,
    /// Every certificate below the trust anchor.
    Chain,
}

/// Why a certificate was rejected. `code()` is stable for scripts and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    #[error("certificate expired at {} (checked at {})", mtls_pki::rfc3339(.not_after), mtls_pki::rfc3339(.at))]
    Expired {
        not_after: OffsetDateTime,
        at: OffsetDateTime,
    },
    #[error("certificate is not valid until {} (checked at {})", mtls_pki::rfc3339(.not_before), mtls_pki::rfc3339(.at))]
    NotYetValid {
        not_before: OffsetDateTime,
        at: OffsetDateTime,
    },
    #[error("no path to a trusted root: the issuer is unknown or a signature does not verify")]
    UnknownIssuer,
    #[error("a signature in the chain does not verify")]
    BadSignature,
    #[error("certificate is revoked")]
    Revoked,
    #[error("revocation status unknown: no CRL from the issuing CA was given")]
    UnknownRevocationStatus,
    #[error("the CRL is past its nextUpdate")]
    ExpiredCrl,
    #[error("revocation status unknown: the CA's revocation feed has not been heard from for {age_secs} s")]
    StaleRevocationFeed { age_secs: u64 },
    #[error("revocation status unknown: no current OCSP answer ({0})")]
    OcspUnavailable(String),
    #[error("the certificate has no clientAuth extended key usage")]
    MissingClientAuth,
    #[error("the certificate's extended key usage does not allow {0}")]
    WrongPurpose(&'static str),
    #[error("the certificate is not valid for the name {0:?}")]
    NameMismatch(String),
    #[error("a CA certificate was presented as the end entity")]
    CaAsEndEntity,
    #[error("an end-entity certificate was used as a CA")]
    EndEntityAsCa,
    #[error("the end-entity certificate asserts keyCertSign")]
    LeafCanSignCertificates,
    #[error("the certificate's keyUsage does not allow {0}")]
    KeyUsage(&'static str),
    #[error("the end-entity certificate's key is too weak or of a forbidden type: {0}")]
    WeakKey(String),
    #[error("the trust anchor is not usable: {0}")]
    BadTrustAnchor(String),
    #[error("path length constraint violated")]
    PathLenExceeded,
    #[error("name constraints violated")]
    NameConstraintViolation,
    #[error("unsupported signature algorithm")]
    UnsupportedAlgorithm,
    #[error("the certificate is malformed or carries an unsupported critical extension: {0}")]
    Malformed(String),
    #[error("no client certificate was presented")]
    NoCertificate,
    #[error("{0}")]
    NotAllowed(String),
    #[error("{0}")]
    Other(String),
}

impl Rejection {
    /// A short stable code: `expired`, `revoked`, `unknown_issuer`, …
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Expired { .. } => "expired",
            Rejection::NotYetValid { .. } => "not_yet_valid",
            Rejection::UnknownIssuer => "unknown_issuer",
            Rejection::BadSignature => "bad_signature",
            Rejection::Revoked => "revoked",
            Rejection::UnknownRevocationStatus => "unknown_revocation_status",
            Rejection::ExpiredCrl => "expired_crl",
            Rejection::StaleRevocationFeed { .. } => "stale_revocation_feed",
            Rejection::OcspUnavailable(_) => "ocsp_unavailable",
            Rejection::MissingClientAuth => "missing_client_auth_eku",
            Rejection::WrongPurpose(_) => "wrong_purpose",
            Rejection::NameMismatch(_) => "name_mismatch",
            Rejection::CaAsEndEntity => "ca_as_end_entity",
            Rejection::EndEntityAsCa => "end_entity_as_ca",
            Rejection::LeafCanSignCertificates => "leaf_key_cert_sign",
            Rejection::KeyUsage(_) => "key_usage",
            Rejection::WeakKey(_) => "weak_key",
            Rejection::BadTrustAnchor(_) => "bad_trust_anchor",
            Rejection::PathLenExceeded => "path_len_exceeded",
            Rejection::NameConstraintViolation => "name_constraint_violation",
            Rejection::UnsupportedAlgorithm => "unsupported_algorithm",
            Rejection::Malformed(_) => "malformed",
            Rejection::NoCertificate => "no_certificate",
            Rejection::NotAllowed(_) => "not_allowed",
            Rejection::Other(_) => "other",
        }
    }

    pub(crate) fn from_webpki(e: webpki::Error, purpose: Purpose) -> Self {
        use webpki::Error as E;
        let t = |u: UnixTime| {
            OffsetDateTime::from_unix_timestamp(i64::try_from(u.as_secs()).unwrap_or(i64::MAX))
                .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        };
        match e {
            E::CertExpired { time, not_after } => Rejection::Expired {
                not_after: t(not_after),
                at: t(time),
            },
            E::CertNotValidYet { time, not_before } => Rejection::NotYetValid {
                not_before: t(not_before),
                at: t(time),
            },
            E::UnknownIssuer => Rejection::UnknownIssuer,
            E::InvalidSignatureForPublicKey | E::InvalidCrlSignatureForPublicKey => {
                Rejection::BadSignature
            }
            E::CertRevoked => Rejection::Revoked,
            E::UnknownRevocationStatus => Rejection::UnknownRevocationStatus,
            E::CrlExpired { .. } => Rejection::ExpiredCrl,
            E::RequiredEkuNotFoundContext(_) => Rejection::WrongPurpose(match purpose {
                Purpose::Client => "client authentication",
                Purpose::Server => "server authentication",
                Purpose::Any => "this use",
            }),
            E::CaUsedAsEndEntity => Rejection::CaAsEndEntity,
            E::EndEntityUsedAsCa => Rejection::EndEntityAsCa,
            E::PathLenConstraintViolated => Rejection::PathLenExceeded,
            E::NameConstraintViolation => Rejection::NameConstraintViolation,
            E::UnsupportedSignatureAlgorithmContext(_)
            | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
                Rejection::UnsupportedAlgorithm
            }
            E::BadDer
            | E::BadDerTime
            | E::TrailingData(_)
            | E::UnsupportedCriticalExtension
            | E::UnsupportedCertVersion
            | E::ExtensionValueInvalid
            | E::EmptyEkuExtension
            | E::MalformedExtensions
            | E::InvalidCertValidity
            | E::InvalidSerialNumber => Rejection::Malformed(format!("{e:?}")),
            other => Rejection::Other(format!("{other:?}")),
        }
    }
}

/// Inputs to a verification.
#[derive(Clone, Debug)]
pub struct VerifyRequest<'a> {
    pub roots: &'a [CertificateDer<'a>],
    pub intermediates: &'a [CertificateDer<'a>],
    pub crls: &'a [CertificateRevocationListDer<'a>],
    pub at: OffsetDateTime,
    pub purpose: Purpose,
    /// A DNS name or IP address the leaf must be valid for.
    pub name: Option<&'a str>,
    pub crl_scope: CrlScope,
    /// Loosening: accept certificates whose issuer has no CRL in `crls`.
    pub allow_unknown_revocation: bool,
    /// Loosening: accept CRLs past their nextUpdate.
    pub allow_expired_crl: bool,
}

/// A successfully validated path, leaf first, ending with the trust anchor.
#[derive(Clone, Debug)]
pub struct VerifiedChain {
    /// Subjects from the leaf to the trust anchor.
    pub subjects: Vec<String>,
}

/// Errors in the inputs themselves (as opposed to a rejected certificate).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    #[error("no trusted root certificates were given")]
    NoRoots,
    #[error("trusted root {index} cannot be used as a trust anchor: {detail}")]
    BadRoot { index: usize, detail: String },
    #[error("CRL {index} cannot be parsed: {detail}")]
    BadCrl { index: usize, detail: String },
    #[error("the validation time is before 1970")]
    BadTime,
    #[error("{0:?} is not a valid DNS name or IP address")]
    BadName(String),
}

/// The outcome: `Ok(Ok(chain))` valid, `Ok(Err(rejection))` invalid, `Err(_)` bad input.
pub type Outcome = Result<Result<VerifiedChain, Rejection>, InputError>;

/// Path building and the EKU match for `purpose`: the one call into webpki's validation that
/// both [`verify`] and [`TrustState`] make.
pub(crate) fn build_path<'p>(
    ee: &'p EndEntityCert<'p>,
    anchors: &'p [rustls_pki_types::TrustAnchor<'p>],
    intermediates: &'p [CertificateDer<'p>],
    time: UnixTime,
    purpose: Purpose,
) -> Result<webpki::VerifiedPath<'p>, webpki::Error> {
    match purpose {
        Purpose::Client => ee.verify_for_usage(
            SIGNATURE_ALGORITHMS,
            anchors,
            intermediates,
            time,
            KeyUsage::client_auth(),
            None,
            None,
        ),
        Purpose::Server => ee.verify_for_usage(
            SIGNATURE_ALGORITHMS,
            anchors,
            intermediates,
            time,
            KeyUsage::server_auth(),
            None,
            None,
        ),
        Purpose::Any => ee.verify_for_usage(
            SIGNATURE_ALGORITHMS,
            anchors,
            intermediates,
            time,
            AnyEku,
            None,
            None,
        ),
    }
}

pub(crate) struct AnyEku;
impl ExtendedKeyUsageValidator for AnyEku {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for id in iter {
            id?;
        }
        Ok(())
    }
}

/// Checks that webpki does not do on the leaf: clientAuth EKU presence and no keyCertSign.
pub(crate) fn leaf_checks(leaf: &CertificateDer<'_>, purpose: Purpose) -> Result<(), Rejection> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| Rejection::Malformed(e.to_string()))?;
    // RFC 5280 4.1.2.2: positive, at most 20 octets.
    let serial = cert.raw_serial();
    let magnitude: Vec<u8> = serial.iter().copied().skip_while(|b| *b == 0).collect();
    if magnitude.is_empty() || serial.len() > 21 || magnitude.len() > 20 {
        return Err(Rejection::Malformed(
            "serial number is zero or longer than 20 octets".into(),
        ));
    }
    check_leaf_key(&cert)?;
    let mut has_client_auth = false;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::ExtendedKeyUsage(eku) => has_client_auth = eku.client_auth,
            ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() && !is_ca_cert(&cert) => {
                return Err(Rejection::LeafCanSignCertificates)
            }
            // A client authenticates by signing (CertificateVerify): a key restricted to other
            // uses (keyEncipherment alone) is not a client's. Servers are left to their TLS
            // peers' rules (OpenSSL's server purpose takes keyEncipherment for RSA key
            // exchange, and an upstream's legacy certificate must not fail only once its
            // revocation is checked).
            ParsedExtension::KeyUsage(ku)
                if !ku.digital_signature() && purpose == Purpose::Client =>
            {
                return Err(Rejection::KeyUsage(
                    "TLS authentication (no digitalSignature)",
                ))
            }
            ParsedExtension::NameConstraints(_) if !is_ca_cert(&cert) => {
                return Err(Rejection::Malformed(
                    "name constraints are only allowed in CA certificates".into(),
                ))
            }
            _ => {}
        }
    }
    if purpose == Purpose::Client && !has_client_auth {
        return Err(Rejection::MissingClientAuth);
    }
    Ok(())
}

/// The leaf's key is never exercised by path validation; reject keys no TLS peer should accept.
fn check_leaf_key(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<(), Rejection> {
    use x509_parser::public_key::PublicKey;
    let spki = cert.public_key();
    if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 {
        return Ok(());
    }
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let bits = rsa.key_size();
            if bits < 2048 || bits % 8 != 0 {
                return Err(Rejection::WeakKey(format!("RSA-{bits}")));
            }
            Ok(())
        }
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            let allowed = [
                x509_parser::oid_registry::OID_EC_P256,
                x509_parser::oid_registry::OID_NIST_EC_P384,
                x509_parser::oid_registry::OID_NIST_EC_P521,
            ];
            match curve {
                Some(c) if allowed.contains(&c) => Ok(()),
                _ => Err(Rejection::WeakKey(
                    "EC curve other than P-256/P-384/P-521".into(),
                )),
            }
        }
        Ok(PublicKey::DSA(_)) => Err(Rejection::WeakKey("DSA".into())),
        _ => Err(Rejection::WeakKey(format!(
            "unsupported key algorithm {}",
            spki.algorithm.algorithm
        ))),
    }
}

/// webpki reduces a trust anchor to its subject and key; the rest of the root is checked
/// here.
/// The time-independent checks of a trust anchor.
pub(crate) fn check_anchor_static(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<(), String> {
    let bad = |m: &str| Err(m.to_string());
    if cert.subject().iter().next().is_none() {
        return bad("the root certificate has an empty subject");
    }
    let mut basic_constraints = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => {
                basic_constraints = Some((bc.ca, ext.critical))
            }
            ParsedExtension::KeyUsage(ku) if !ku.key_cert_sign() => {
                return bad("the root's keyUsage does not assert keyCertSign")
            }
            ParsedExtension::AuthorityKeyIdentifier(_)
            | ParsedExtension::SubjectKeyIdentifier(_)
                if ext.critical =>
            {
                return bad("the root marks a key identifier extension critical")
            }
            ParsedExtension::UnsupportedExtension { .. } | ParsedExtension::ParseError { .. }
                if ext.critical =>
            {
                return bad("the root carries an unknown critical extension")
            }
            _ => {}
        }
    }
    match basic_constraints {
        Some((true, true)) => Ok(()),
        Some((true, false)) => bad("the root's basicConstraints is not critical"),
        _ => bad("the root is not a CA (basicConstraints cA missing)"),
    }
}

/// RFC 5280 5.2.3: a CRL must carry a non-critical CRL number; a CRL issued by a root must come
/// from a root allowed to sign CRLs (webpki skips that check for trust anchors).
pub(crate) fn check_crl(
    parsed: &x509_parser::revocation_list::CertificateRevocationList<'_>,
    roots: &[CertificateDer<'_>],
) -> Result<(), String> {
    let mut number = None;
    for ext in parsed.extensions() {
        if let ParsedExtension::CRLNumber(_) = ext.parsed_extension() {
            number = Some(ext.critical);
        }
    }
    match number {
        None => return Err("the CRL has no CRL number (RFC 5280 5.2.3)".into()),
        Some(true) => return Err("the CRL number extension is marked critical".into()),
        Some(false) => {}
    }
    for root in roots {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(root) else {
            continue;
        };
        if cert.subject().as_raw() == parsed.issuer().as_raw() {
            if let Ok(Some(ku)) = cert.key_usage() {
                if !ku.value.crl_sign() {
                    return Err("the CRL's issuer (a trusted root) may not sign CRLs".into());
                }
            }
        }
    }
    Ok(())
}

fn is_ca_cert(cert: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// Validates `leaf` against the request: the same validation as a server's [`TrustState`]
/// (one path), with CRLs that intermediates of the request may have signed.
pub fn verify(leaf: &CertificateDer<'_>, req: &VerifyRequest<'_>) -> Outcome {
    if req.roots.is_empty() {
        return Err(InputError::NoRoots);
    }
    if req.at.unix_timestamp() < 0 {
        return Err(InputError::BadTime);
    }
    let server_name = req
        .name
        .map(|n| ServerName::try_from(n).map_err(|_| InputError::BadName(n.to_string())))
        .transpose()?;
    let roots: Vec<CertificateDer<'static>> =
        req.roots.iter().map(|r| r.clone().into_owned()).collect();
    let options = RevocationOptions {
        allow_unknown_status: req.allow_unknown_revocation,
        allow_expired_crl: req.allow_expired_crl,
        scope: req.crl_scope,
    };
    let state = TrustState::build(
        0,
        roots,
        req.intermediates,
        req.crls,
        options,
        state::UnknownCrlSigner::Ignore,
    )
    .map_err(|e| match e {
        TrustError::NoRoots => InputError::NoRoots,
        TrustError::BadRoot { index, detail } => InputError::BadRoot { index, detail },
        TrustError::BadCrl { index, detail } => InputError::BadCrl { index, detail },
        // Only a reload compares CRLs with earlier ones.
        e @ TrustError::CrlRollback { .. } => InputError::BadCrl {
            index: 0,
            detail: e.to_string(),
        },
    })?
    .with_purpose(req.purpose);
    let path = match state.verify_uncached(leaf, req.intermediates, req.at, true) {
        Ok((_, path)) => path,
        Err(r) => return Ok(Err(r)),
    };
    if let (Some(sn), Some(name)) = (&server_name, req.name) {
        let name_ok = EndEntityCert::try_from(leaf)
            .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(sn).is_ok());
        if !name_ok {
            return Ok(Err(Rejection::NameMismatch(name.to_string())));
        }
    }
    Ok(Ok(VerifiedChain {
        subjects: path.subjects,
    }))
}

impl fmt::Display for VerifiedChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (depth, s) in self.subjects.iter().enumerate() {
            writeln!(f, "  {depth}: {s}")?;
        }
        Ok(())
    }
}
