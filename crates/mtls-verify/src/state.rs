//! Trust state for servers: trust anchors, a revocation index built from CRLs that were
//! verified once at load, and the client verification that handshakes and requests use.
//!
//! A `TrustState` is immutable; reloading builds a new one (with a new generation number) and
//! swaps it in. Revocation lookups are hash-set lookups keyed by (issuer, serial), so a CRL with a
//! million entries costs the same per handshake as one with ten.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, TrustAnchor, UnixTime};
use time::OffsetDateTime;
use webpki::EndEntityCert;

use crate::peer::VerifiedPeer;
use crate::pushed::{PushedRevocations, PushedStatus};
use crate::{check_anchor_static, check_crl, leaf_checks, Purpose, Rejection};

/// Revocation data from one CRL (the newest of its issuer, signer and scope).
#[derive(Debug)]
pub(crate) struct CrlEntry {
    issuer: String,
    version: CrlVersion,
    pub(crate) next_update: Option<OffsetDateTime>,
    pub(crate) revoked: HashSet<crate::serial_key::SerialKey>,
    /// SPKI (DER) of the key that signed it: it speaks only for certificates issued under
    /// that key (the issuing certificate of the validated path), as webpki requires.
    pub(crate) signer_spki: Vec<u8>,
    scope: CrlScopeOf,
}

/// What an issuingDistributionPoint limits a CRL to (RFC 5280 5.2.5); no IDP: everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct CrlScopeOf {
    only_user_certs: bool,
    only_ca_certs: bool,
    /// Full-name URIs of the distribution point; a certificate naming CRL distribution
    /// points is covered only if one of its URIs is here.
    uris: Option<Vec<String>>,
}

impl CrlEntry {
    /// Whether the CRL covers every certificate of its issuer (it has no issuingDistributionPoint).
    pub(crate) fn is_complete(&self) -> bool {
        self.scope == CrlScopeOf::default()
    }

    /// Whether `other` is a CRL of the same series (issuer key and scope): one replaces the
    /// other, the newer one wins.
    fn same_series(&self, other: &CrlEntry) -> bool {
        self.signer_spki == other.signer_spki && self.scope == other.scope
    }

    /// RFC 5280 6.3.3 (b), as webpki's `authoritative_for`: the CRL covers `key`'s
    /// certificate if signed by its issuer's key and its scope includes the certificate.
    fn covers(&self, key: &RevocationKey) -> bool {
        if self.signer_spki != key.issuer_spki {
            return false;
        }
        let scope = &self.scope;
        if (scope.only_ca_certs && !key.is_ca) || (scope.only_user_certs && key.is_ca) {
            return false;
        }
        match (&scope.uris, &key.crl_uris) {
            // Without an IDP name, or a certificate without distribution points, the issuer
            // match suffices.
            (None, _) | (_, None) => true,
            (Some(idp), Some(cert)) => cert.iter().any(|u| idp.contains(u)),
        }
    }
}

/// The revocation question for one certificate of a validated path.
#[derive(Debug, Clone)]
struct RevocationKey {
    /// The issuer name (DER), the index key.
    issuer: Vec<u8>,
    /// SPKI (DER) of the issuing certificate in the path.
    issuer_spki: Vec<u8>,
    /// Its SHA-256, the key of pushed revocations.
    issuer_key: crate::pushed::IssuerKey,
    serial: Vec<u8>,
    /// The serial as the revocation sets' key.
    serial_key: crate::serial_key::SerialKey,
    is_ca: bool,
    /// Full-name URIs of the certificate's CRL distribution points (`None`: no extension).
    crl_uris: Option<Vec<String>>,
    /// A status is required (the leaf, or the whole chain under [`crate::CrlScope::Chain`]).
    require: bool,
    /// The trust anchor itself, issued by another bundle member (see `Anchor::revocation`):
    /// only a revocation counts; an expired CRL about it is no reason to refuse (an anchor
    /// never needed a status).
    anchor: bool,
    /// The certificate and its issuer (DER), for a per-certificate source (OCSP): kept only
    /// for the leaf and only when such a source is configured.
    query: Option<Arc<(Vec<u8>, Vec<u8>)>>,
}

/// The full-name URIs of `der`'s CRL Distribution Points (empty without the extension or when
/// the certificate does not parse).
pub fn crl_distribution_points(der: &[u8]) -> Vec<String> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .and_then(|(_, c)| crl_uris(&c))
        .unwrap_or_default()
}

fn crl_uris(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<Vec<String>> {
    use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
    let ext = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::CRLDistributionPoints(p) => Some(p),
            _ => None,
        })?;
    let mut uris = Vec::new();
    for dp in ext.iter() {
        // Indirect or reason-partitioned points cannot match (we support neither).
        if dp.crl_issuer.is_some() || dp.reasons.is_some() {
            continue;
        }
        if let Some(DistributionPointName::FullName(names)) = &dp.distribution_point {
            for n in names {
                if let GeneralName::URI(u) = n {
                    uris.push(u.to_string());
                }
            }
        }
    }
    Some(uris)
}

/// The IDP of a CRL webpki has accepted (it refuses delta CRLs, indirect CRLs, reason
/// partitions and attribute-certificate CRLs at parse, and an IDP without a full name). Read
/// here by another parser, which takes the fields in their DER order only: an IDP it cannot
/// read whole (no distribution point found: fields out of order, say) would be taken as
/// covering everything, so the CRL is refused instead.
fn crl_scope(
    crl: &x509_parser::revocation_list::CertificateRevocationList<'_>,
) -> Result<CrlScopeOf, String> {
    use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
    for ext in crl.extensions() {
        if ext.oid != x509_parser::oid_registry::OID_X509_EXT_ISSUER_DISTRIBUTION_POINT {
            continue;
        }
        let ParsedExtension::IssuingDistributionPoint(idp) = ext.parsed_extension() else {
            return Err("its issuingDistributionPoint cannot be read".into());
        };
        // x509-parser reads the fields in their DER order and ignores what follows one out of
        // order (webpki takes any order): such an IDP would be read as wider than it is.
        if !fields_in_order(ext.value) {
            return Err("its issuingDistributionPoint's fields are out of order".into());
        }
        if idp.distribution_point.is_none() {
            return Err(
                "its issuingDistributionPoint names no distribution point (or its fields are out of order)"
                    .into(),
            );
        }
        {
            let uris = match &idp.distribution_point {
                Some(DistributionPointName::FullName(names)) => Some(
                    names
                        .iter()
                        .filter_map(|n| match n {
                            GeneralName::URI(u) => Some(u.to_string()),
                            _ => None,
                        })
                        .collect(),
                ),
                // A relative name cannot match a full-name URI: like webpki, match nothing.
                Some(DistributionPointName::NameRelativeToCRLIssuer(_)) => Some(Vec::new()),
                None => None,
            };
            return Ok(CrlScopeOf {
                only_user_certs: idp.only_contains_user_certs,
                only_ca_certs: idp.only_contains_ca_certs,
                uris,
            });
        }
    }
    Ok(CrlScopeOf::default())
}

/// Whether the fields of a SEQUENCE of context-tagged fields (an IDP) come in strictly
/// ascending tag order, as DER requires, every byte read.
fn fields_in_order(der: &[u8]) -> bool {
    use x509_parser::asn1_rs::{Any, Class, FromDer, Sequence};
    let Ok((rest, seq)) = Sequence::from_der(der) else {
        return false;
    };
    if !rest.is_empty() {
        return false;
    }
    let mut content: &[u8] = seq.content.as_ref();
    let mut last: Option<u32> = None;
    while !content.is_empty() {
        let Ok((rem, field)) = Any::from_der(content) else {
            return false;
        };
        let tag = field.tag().0;
        if field.class() != Class::ContextSpecific || last.is_some_and(|l| tag <= l) {
            return false;
        }
        last = Some(tag);
        content = rem;
    }
    true
}

/// How new a CRL is, to compare CRLs of one issuer, signing key and scope: the CRL number
/// first (RFC 5280 5.2.3: it only ever increases), then thisUpdate. The one ordering every
/// "newer CRL" decision uses (the index, fetched CRLs, reloads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlVersion {
    /// Big-endian without leading zeros.
    number: Vec<u8>,
    this_update: OffsetDateTime,
}

impl CrlVersion {
    /// The version of a CRL numbered `number` (big-endian) issued at `this_update`.
    pub fn new(number: &[u8], this_update: OffsetDateTime) -> Self {
        let number = number.iter().copied().skip_while(|b| *b == 0).collect();
        CrlVersion {
            number,
            this_update,
        }
    }

    /// The CRL number, big-endian without leading zeros (empty for zero).
    pub fn number(&self) -> &[u8] {
        &self.number
    }

    /// The CRL's thisUpdate.
    pub fn this_update(&self) -> OffsetDateTime {
        self.this_update
    }
}

impl Ord for CrlVersion {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Without leading zeros, a longer number is a larger one.
        (self.number.len(), &self.number, self.this_update).cmp(&(
            other.number.len(),
            &other.number,
            other.this_update,
        ))
    }
}

impl PartialOrd for CrlVersion {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for CrlVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CRL number 0x{} of {}",
            if self.number.is_empty() {
                "0".to_string()
            } else {
                hex::encode(&self.number)
            },
            mtls_pki::rfc3339(&self.this_update)
        )
    }
}

/// Summary of a loaded CRL, for metrics and logs.
#[derive(Clone, Debug)]
pub struct CrlSummary {
    pub issuer: String,
    /// The CRL number, big-endian without leading zeros (empty when the CRL has none).
    pub number: Vec<u8>,
    /// Its number and thisUpdate, to compare with another CRL of the issuer.
    pub version: CrlVersion,
    pub next_update: Option<OffsetDateTime>,
    pub entries: usize,
}

struct Anchor {
    anchor: TrustAnchor<'static>,
    /// The certificate (the issuer in an OCSP question about what it signed).
    der: CertificateDer<'static>,
    /// The root's SPKI (DER), to match the CRLs it signed.
    spki: Vec<u8>,
    subject: String,
    not_before: i64,
    not_after: i64,
    problem: Option<String>,
    /// When another member of the bundle issued this one (an intermediate beside its root, as
    /// in `ca-chain.pem`): its own revocation question, asked for every path that ends here.
    revocation: Option<RevocationKey>,
    /// What its certificate restricts below it, which webpki forgets for an anchor.
    limits: AnchorLimits,
}

/// What an anchor's certificate restricts below it: webpki keeps only an anchor's subject, key
/// and name constraints, so an intermediate of the bundle (where the path ends when it is
/// there, as in `ca-chain.pem`) would lose its pathLenConstraint and extended key usages.
#[derive(Clone, Debug, Default)]
struct AnchorLimits {
    /// basicConstraints pathLenConstraint: CA certificates allowed below it in a path.
    path_len: Option<u32>,
    /// Its extendedKeyUsage, for an anchor that is not self-issued (a root's is not read, as
    /// no verifier reads it): `None` when it has none (any use).
    eku: Option<AnchorEku>,
}

#[derive(Clone, Copy, Debug)]
struct AnchorEku {
    any: bool,
    server: bool,
    client: bool,
}

impl AnchorLimits {
    fn of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Self {
        use x509_parser::extensions::ParsedExtension;
        let self_issued = cert.subject().as_raw() == cert.issuer().as_raw();
        let mut limits = AnchorLimits::default();
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) => {
                    limits.path_len = bc.path_len_constraint;
                }
                ParsedExtension::ExtendedKeyUsage(eku) if !self_issued => {
                    limits.eku = Some(AnchorEku {
                        any: eku.any,
                        server: eku.server_auth,
                        client: eku.client_auth,
                    });
                }
                _ => {}
            }
        }
        limits
    }

    /// Refuses a path with `below` CA certificates under the anchor, for `purpose`.
    fn check(&self, below: usize, purpose: Purpose) -> Result<(), Rejection> {
        if self
            .path_len
            .is_some_and(|max| below > usize::try_from(max).unwrap_or(usize::MAX))
        {
            return Err(Rejection::PathLenExceeded);
        }
        if let Some(eku) = self.eku {
            let allowed = eku.any
                || match purpose {
                    Purpose::Client => eku.client,
                    Purpose::Server => eku.server,
                    Purpose::Any => true,
                };
            if !allowed {
                return Err(Rejection::WrongPurpose(match purpose {
                    Purpose::Client => "client authentication (its CA's extendedKeyUsage)",
                    Purpose::Server => "server authentication (its CA's extendedKeyUsage)",
                    Purpose::Any => "this use",
                }));
            }
        }
        Ok(())
    }
}

/// Revocation checking: which certificates need a status, and the loosenings (both off by
/// default).
#[derive(Clone, Copy, Debug, Default)]
pub struct RevocationOptions {
    /// Loosening: accept a certificate whose issuer has no covering CRL.
    pub allow_unknown_status: bool,
    /// Loosening: accept CRLs past their nextUpdate.
    pub allow_expired_crl: bool,
    /// Which certificates must have a status when CRLs are loaded (the leaf by default; the
    /// CA certificates of the path are checked against any CRL that covers them either way).
    pub scope: crate::CrlScope,
}

/// Everything a server needs to decide whether a client chain is trusted.
pub struct TrustState {
    generation: u64,
    anchors: Vec<Anchor>,
    roots: Vec<CertificateDer<'static>>,
    /// By issuer name; usually one entry each (more with several signers or partitions).
    crls: HashMap<Vec<u8>, Vec<CrlEntry>>,
    /// CRLs were given (even if none of them applies): the leaf then needs a status.
    revocation_checked: bool,
    crl_summaries: Vec<CrlSummary>,
    options: RevocationOptions,
    purpose: Purpose,
    cache: Mutex<HashMap<[u8; 32], Arc<CachedPath>>>,
    /// Revocations from the CA's feed, shared with the server's other trust states.
    pushed: Option<Arc<PushedRevocations>>,
    /// A per-certificate source (OCSP) for the leaf.
    status: Option<Arc<dyn crate::StatusSource>>,
    /// Where revocation decisions are counted.
    decisions: Option<Arc<crate::RevocationDecisions>>,
    /// Distribution points to fetch CRLs from, when the certificates' own are followed.
    fetched: Option<Arc<crate::FetchedCrls>>,
    /// The newest CRL version of every series the earlier generations of this server used
    /// (see [`TrustState::check_not_older_than`]), series no longer loaded included.
    crl_floor: Arc<Vec<CrlMark>>,
}

/// The newest version of one CRL series (issuer, signing key, scope) seen so far.
#[derive(Clone, Debug)]
struct CrlMark {
    issuer_raw: Vec<u8>,
    issuer: String,
    signer_spki: Vec<u8>,
    scope: CrlScopeOf,
    version: CrlVersion,
}

impl CrlMark {
    fn of(issuer_raw: &[u8], e: &CrlEntry) -> Self {
        CrlMark {
            issuer_raw: issuer_raw.to_vec(),
            issuer: e.issuer.clone(),
            signer_spki: e.signer_spki.clone(),
            scope: e.scope.clone(),
            version: e.version.clone(),
        }
    }

    fn same_series(&self, issuer_raw: &[u8], e: &CrlEntry) -> bool {
        self.issuer_raw == issuer_raw && self.signer_spki == e.signer_spki && self.scope == e.scope
    }
}

/// Most cached paths per trust state (cleared when full; a new state starts empty).
const CACHE_CAPACITY: usize = 16_384;

/// A validated path: what must still be checked on every use.
pub(crate) struct CachedPath {
    peer: Arc<VerifiedPeer>,
    /// Intersection of the validity windows of leaf, intermediates and anchor (Unix seconds).
    not_before: i64,
    not_after: i64,
    /// The revocation question of each certificate below the anchor.
    revocation: Vec<RevocationKey>,
}

/// A validated path as [`crate::verify`] reports it.
pub(crate) struct ValidatedPath {
    /// Subjects from the leaf to the trust anchor.
    pub(crate) subjects: Vec<String>,
}

/// What to do with a CRL whose signer is not among the candidates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnknownCrlSigner {
    /// A server's trust state: every CRL must be usable.
    Refuse,
    /// `verify`: a CRL of an unrelated CA covers nothing.
    Ignore,
}

fn chain_key(leaf: &[u8], intermediates: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for c in std::iter::once(leaf).chain(intermediates.iter().map(|c| c.as_ref())) {
        ctx.update(&(c.len() as u64).to_be_bytes());
        ctx.update(c);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl std::fmt::Debug for TrustState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustState")
            .field("generation", &self.generation)
            .field("anchors", &self.anchors.len())
            .field("crls", &self.crls.len())
            .finish()
    }
}

/// Why a trust state could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    #[error("the CA bundle is empty")]
    NoRoots,
    #[error("CA certificate {index}: {detail}")]
    BadRoot { index: usize, detail: String },
    #[error("CRL {index}: {detail}")]
    BadCrl { index: usize, detail: String },
    /// A CRL is older than the one of the same issuer (and signing key and scope) in use: a
    /// correctly signed old CRL (a replay) would take revocations back.
    #[error("the CRL of {issuer} is older than the one in use ({offered} < {in_use}): refused, a replayed CRL would take revocations back")]
    CrlRollback {
        issuer: String,
        // Boxed: every caller's error type carries this one.
        in_use: Box<CrlVersion>,
        offered: Box<CrlVersion>,
    },
}

/// For each member of a CA bundle, the other member that issued it (its name is the member's
/// issuer and its key verifies the member's signature), if any: an intermediate put in the
/// bundle beside its root, as `ca-chain.pem` does. Every member stays a trust anchor (paths
/// end at the first anchor webpki reaches, as they always did), but one issued by another
/// member gets its own revocation question (see [`Anchor::revocation`]): otherwise a root CRL
/// revoking the intermediate would change nothing.
fn issuers_in_bundle(
    ders: &[CertificateDer<'_>],
    certs: &[x509_parser::certificate::X509Certificate<'_>],
) -> Vec<Option<usize>> {
    certs
        .iter()
        .zip(ders)
        .map(|(c, der)| {
            if c.subject() == c.issuer() {
                return None;
            }
            certs.iter().zip(ders).position(|(p, p_der)| {
                p_der.as_ref() != der.as_ref()
                    && p.subject() == c.issuer()
                    && c.verify_signature(Some(p.public_key())).is_ok()
            })
        })
        .collect()
}

impl TrustState {
    /// Builds a trust state. Every CRL must be signed by a certificate of `roots` (put the
    /// intermediate in the CA bundle when it issues the CRL) and carry a CRL number; its
    /// signature is checked here, once. Delta CRLs, indirect CRLs and CRLs partitioned by
    /// reason are refused (they are never complete); a CRL with an issuingDistributionPoint
    /// covers only the certificates in its scope.
    pub fn new(
        generation: u64,
        roots: Vec<CertificateDer<'static>>,
        crls: &[CertificateRevocationListDer<'_>],
        options: RevocationOptions,
    ) -> Result<Self, TrustError> {
        Self::build(
            generation,
            roots,
            &[],
            crls,
            options,
            UnknownCrlSigner::Refuse,
        )
    }

    /// [`new`](Self::new), with `crl_signers` (certificates that are not trust anchors, like
    /// intermediates presented with a chain) also allowed to have signed CRLs: such a CRL is
    /// used only for certificates whose validated issuer has the signer's key.
    pub(crate) fn build(
        generation: u64,
        roots: Vec<CertificateDer<'static>>,
        crl_signers: &[CertificateDer<'_>],
        crls: &[CertificateRevocationListDer<'_>],
        options: RevocationOptions,
        unknown_signer: UnknownCrlSigner,
    ) -> Result<Self, TrustError> {
        if roots.is_empty() {
            return Err(TrustError::NoRoots);
        }
        let mut parsed_roots = Vec::with_capacity(roots.len());
        for (index, r) in roots.iter().enumerate() {
            let (_, cert) =
                x509_parser::parse_x509_certificate(r).map_err(|e| TrustError::BadRoot {
                    index,
                    detail: e.to_string(),
                })?;
            parsed_roots.push(cert);
        }
        let issuers = issuers_in_bundle(&roots, &parsed_roots);
        let mut anchors = Vec::with_capacity(roots.len());
        for (index, (r, cert)) in roots.iter().zip(&parsed_roots).enumerate() {
            let revocation = issuers
                .get(index)
                .copied()
                .flatten()
                .and_then(|i| parsed_roots.get(i))
                .map(|issuer| {
                    let issuer_spki = issuer.public_key().raw.to_vec();
                    let serial = mtls_pki::Serial::from_be_bytes(cert.raw_serial())
                        .as_bytes()
                        .to_vec();
                    RevocationKey {
                        issuer: cert.issuer().as_raw().to_vec(),
                        issuer_key: crate::pushed::issuer_key_of(&issuer_spki),
                        issuer_spki,
                        serial_key: crate::serial_key::SerialKey::new(&serial),
                        serial,
                        is_ca: true,
                        crl_uris: crl_uris(cert),
                        // Asked of every source, but required of none: an anchor never needed
                        // a status, and a deployment without the root's CRL goes on working.
                        require: false,
                        anchor: true,
                        query: None,
                    }
                });
            let anchor = webpki::anchor_from_trusted_cert(r)
                .map_err(|e| TrustError::BadRoot {
                    index,
                    detail: format!("{e:?}"),
                })?
                .to_owned();
            anchors.push(Anchor {
                anchor,
                der: r.clone(),
                spki: cert.public_key().raw.to_vec(),
                subject: cert.subject().to_string(),
                not_before: cert.validity().not_before.timestamp(),
                not_after: cert.validity().not_after.timestamp(),
                problem: check_anchor_static(cert).err(),
                revocation,
                limits: AnchorLimits::of(cert),
            });
        }
        let extra: Vec<_> = crl_signers
            .iter()
            .filter_map(|c| x509_parser::parse_x509_certificate(c).ok().map(|(_, c)| c))
            .collect();
        let mut index_map: HashMap<Vec<u8>, Vec<CrlEntry>> = HashMap::new();
        for (index, der) in crls.iter().enumerate() {
            let bad = |detail: String| TrustError::BadCrl { index, detail };
            // Everything but the entries, without materialising them (see `without_entries`).
            let (head, signed) =
                mtls_pki::revocation::without_entries(der).map_err(|e| bad(e.to_string()))?;
            let crl = mtls_pki::revocation::parse_crl(&head).map_err(|e| bad(e.to_string()))?;
            check_crl(&crl, &roots).map_err(bad)?;
            // webpki's parse refuses what no complete CRL may carry (deltaCRLIndicator,
            // indirect or reason-partitioned IDPs, unknown critical extensions); its entries
            // are read (and each checked) one at a time, straight into the index's keys.
            let unsupported = |e: webpki::Error| bad(format!("unsupported CRL: {e:?}"));
            let borrowed =
                webpki::BorrowedCertRevocationList::from_der(der).map_err(unsupported)?;
            let mut revoked = HashSet::new();
            for entry in &borrowed {
                let entry = entry.map_err(unsupported)?;
                revoked.insert(crate::serial_key::SerialKey::from_der_integer(
                    entry.serial_number,
                ));
            }
            let issuer_raw = crl.issuer().as_raw().to_vec();
            // A name can belong to several certificates (a re-keyed CA): the signer is the one
            // whose key verifies the CRL.
            let candidates: Vec<_> = parsed_roots
                .iter()
                .chain(extra.iter())
                .filter(|c| c.subject().as_raw() == issuer_raw.as_slice())
                .collect();
            if candidates.is_empty() {
                if unknown_signer == UnknownCrlSigner::Ignore {
                    continue;
                }
                return Err(bad(format!(
                    "its issuer {} is not in the CA bundle (add the issuing CA certificate)",
                    crl.issuer()
                )));
            }
            // The signer verifies the signature with an algorithm of SIGNATURE_ALGORITHMS; an
            // algorithm outside it (SHA-1 with RSA) is refused whoever signed.
            let mut failure = None;
            let signer = candidates.iter().find(|c| {
                signed
                    .verify(c.public_key().raw)
                    .map_err(|e| failure = Some(e))
                    .is_ok()
            });
            let Some(signer) = signer else {
                if let Some(e @ mtls_pki::Error::UnsupportedSignatureAlgorithm(_)) = failure {
                    return Err(bad(e.to_string()));
                }
                if unknown_signer == UnknownCrlSigner::Ignore {
                    continue;
                }
                return Err(bad("signature does not verify with its issuer's key".into()));
            };
            if let Ok(Some(ku)) = signer.key_usage() {
                if !ku.value.crl_sign() {
                    return Err(bad("its issuer may not sign CRLs (no cRLSign)".into()));
                }
            }
            let number = crl
                .crl_number()
                .map(|n| n.to_bytes_be())
                .unwrap_or_default();
            let entry = CrlEntry {
                issuer: crl.issuer().to_string(),
                version: CrlVersion::new(&number, crl.last_update().to_datetime()),
                next_update: crl.next_update().map(|t| t.to_datetime()),
                revoked,
                signer_spki: signer.public_key().raw.to_vec(),
                scope: crl_scope(&crl).map_err(bad)?,
            };
            // Several CRLs of one issuer, signer and scope: the newest wins, never a merge.
            let entries = index_map.entry(issuer_raw).or_default();
            match entries.iter_mut().find(|e| e.same_series(&entry)) {
                Some(old) => {
                    if old.version < entry.version {
                        *old = entry;
                    }
                }
                None => entries.push(entry),
            }
        }
        let crl_summaries = index_map
            .values()
            .flatten()
            .map(|e| CrlSummary {
                issuer: e.issuer.clone(),
                number: e.version.number.clone(),
                version: e.version.clone(),
                next_update: e.next_update,
                entries: e.revoked.len(),
            })
            .collect();
        Ok(TrustState {
            generation,
            anchors,
            roots,
            crls: index_map,
            revocation_checked: !crls.is_empty(),
            crl_summaries,
            options,
            purpose: Purpose::Client,
            cache: Mutex::new(HashMap::new()),
            pushed: None,
            status: None,
            decisions: None,
            fetched: None,
            crl_floor: Arc::new(Vec::new()),
        })
    }

    /// Validates leaves for `purpose` instead of TLS client authentication (the default). The
    /// online CA uses [`Purpose::Any`]: a server certificate it issued may authenticate to renew
    /// itself.
    pub fn with_purpose(mut self, purpose: Purpose) -> Self {
        self.purpose = purpose;
        self
    }

    /// Also consults `pushed` (revocations from the CA's feed, shared by the server's trust
    /// states) on every check. A leaf then needs a status: from a CRL, or from the set while it
    /// is fresh and covers the leaf's issuer.
    pub fn with_pushed_revocations(mut self, pushed: Arc<PushedRevocations>) -> Self {
        self.pushed = Some(pushed);
        self.revocation_checked = true;
        self
    }

    /// Also consults every source of `sources` (see [`Self::with_pushed_revocations`]; a
    /// status source answers for the leaf).
    pub fn with_sources(mut self, sources: &crate::RevocationSources) -> Self {
        if let Some(p) = &sources.pushed {
            self = self.with_pushed_revocations(p.clone());
        }
        if let Some(s) = &sources.status {
            self.status = Some(s.clone());
            self.revocation_checked = true;
        }
        self.decisions = sources.decisions.clone();
        if let Some(f) = &sources.fetched {
            self.fetched = Some(f.clone());
            self.revocation_checked = true;
        }
        self
    }

    /// Refuses this state as the successor of `previous` if one of its CRLs is older than the
    /// CRL of the same series (issuer, signing key, scope) `previous` uses: a CRL replaced by an
    /// older, correctly signed one (a replay) would take revocations back. Every reload calls
    /// this, whatever the CRLs came from (files, distribution points). A series missing from
    /// this state is not refused here: CA bundles and CRL lists change legitimately, and a
    /// certificate left without a status is refused unless unknown status is allowed.
    ///
    /// Compared with every series `previous` and the generations before it used, not only the
    /// CRLs it holds: a replay in two steps (the CRL swapped for another CA's, so its series
    /// leaves, then an old CRL of it put back) is refused as a direct one would be.
    pub fn check_not_older_than(&self, previous: &TrustState) -> Result<(), TrustError> {
        for old in previous.floor_marks() {
            let Some(new_entries) = self.crls.get(&old.issuer_raw) else {
                continue;
            };
            let newer = new_entries
                .iter()
                .find(|n| old.same_series(&old.issuer_raw, n));
            if let Some(new) = newer.filter(|n| n.version < old.version) {
                return Err(TrustError::CrlRollback {
                    issuer: old.issuer.clone(),
                    in_use: Box::new(old.version.clone()),
                    offered: Box::new(new.version.clone()),
                });
            }
        }
        Ok(())
    }

    /// The state that follows `previous` ([`check_not_older_than`](Self::check_not_older_than)
    /// passed): it keeps the newest CRL version of every series either has used, so later
    /// generations are checked against them too.
    pub fn following(mut self, previous: &TrustState) -> Self {
        self.crl_floor = Arc::new(previous.floor_marks());
        self
    }

    /// Whether `other` was built from the same CA bundle and the same CRLs (by series and
    /// version): a reload that read nothing new need not replace this state.
    pub fn same_inputs(&self, other: &TrustState) -> bool {
        let versions = |t: &TrustState| {
            let mut v: Vec<(Vec<u8>, Vec<u8>, String, CrlVersion)> = t
                .crls
                .iter()
                .flat_map(|(issuer, entries)| {
                    entries.iter().map(move |e| {
                        (
                            issuer.clone(),
                            e.signer_spki.clone(),
                            format!("{:?}", e.scope),
                            e.version.clone(),
                        )
                    })
                })
                .collect();
            v.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
            v
        };
        self.roots == other.roots && versions(self) == versions(other)
    }

    /// The newest version of every series this state and its predecessors used.
    fn floor_marks(&self) -> Vec<CrlMark> {
        let mut marks: Vec<CrlMark> = self.crl_floor.as_ref().clone();
        for (issuer_raw, entries) in &self.crls {
            for e in entries {
                match marks.iter_mut().find(|m| m.same_series(issuer_raw, e)) {
                    Some(m) if m.version < e.version => *m = CrlMark::of(issuer_raw, e),
                    Some(_) => {}
                    None => marks.push(CrlMark::of(issuer_raw, e)),
                }
            }
        }
        marks
    }

    /// The generation number given at construction.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What a cached verdict depends on: the generation and the version of the pushed
    /// revocations. A verdict made under another revision must be made again.
    pub fn revision(&self) -> (u64, u64) {
        (
            self.generation,
            self.pushed
                .as_ref()
                .map_or(0, |p| p.version())
                .wrapping_add(self.status.as_ref().map_or(0, |s| s.version())),
        )
    }

    /// The pushed revocations consulted, if any.
    pub fn pushed_revocations(&self) -> Option<&Arc<PushedRevocations>> {
        self.pushed.as_ref()
    }

    /// Every indexed CRL.
    pub(crate) fn crl_entries(&self) -> impl Iterator<Item = &CrlEntry> {
        self.crls.values().flatten()
    }

    /// The trusted certificates.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Loaded CRLs (issuer, nextUpdate, entries).
    pub fn crl_summaries(&self) -> &[CrlSummary] {
        &self.crl_summaries
    }

    /// Who the client that presented `chain` (leaf first) is, at `now`: its verified identity,
    /// or why it has none ([`Rejection::NoCertificate`] for an anonymous client). Every server
    /// calls this after each handshake (resumed sessions skip the handshake verifier) and again
    /// whenever the trust state changed.
    pub fn identify(
        &self,
        chain: Option<&[CertificateDer<'_>]>,
        now: OffsetDateTime,
    ) -> Result<Arc<VerifiedPeer>, Rejection> {
        match chain {
            Some([leaf, rest @ ..]) => self.verify_client(leaf, rest, now),
            _ => Err(Rejection::NoCertificate),
        }
    }

    /// Verifies a client chain at `now`: path to a trusted anchor, clientAuth EKU present,
    /// anchor usable, revocation (leaf must have a status when CRLs are loaded).
    ///
    /// Path validation of a chain already seen under this state is cached (by the SHA-256 of
    /// the presented certificates); the validity window and revocation are checked on every
    /// call. The CertificateVerify signature is rustls's job and never cached.
    pub fn verify_client(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: OffsetDateTime,
    ) -> Result<Arc<VerifiedPeer>, Rejection> {
        let key = chain_key(end_entity, intermediates);
        let t = now.unix_timestamp();
        let hit = self.cache.lock().ok().and_then(|c| c.get(&key).cloned());
        if let Some(c) = hit {
            if t >= c.not_before && t <= c.not_after {
                for key in &c.revocation {
                    self.check_revocation_key(key, now)?;
                }
                return Ok(c.peer.clone());
            }
        }
        let (cached, _) = self.verify_uncached(end_entity, intermediates, now, false)?;
        let peer = cached.peer.clone();
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_CAPACITY {
                c.clear();
            }
            c.insert(key, Arc::new(cached));
        }
        Ok(peer)
    }

    /// The one validation of a chain under this state (no cache): path and EKU (webpki),
    /// leaf rules, anchor, validity and revocation. With `subjects`, the path's subjects too.
    pub(crate) fn verify_uncached(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: OffsetDateTime,
        subjects: bool,
    ) -> Result<(CachedPath, ValidatedPath), Rejection> {
        let purpose = self.purpose;
        leaf_checks(end_entity, purpose)?;
        let ee =
            EndEntityCert::try_from(end_entity).map_err(|e| Rejection::from_webpki(e, purpose))?;
        let secs = u64::try_from(now.unix_timestamp())
            .map_err(|_| Rejection::Other("clock before 1970".into()))?;
        let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
        let anchors: Vec<TrustAnchor<'_>> = self.anchors.iter().map(|a| a.anchor.clone()).collect();
        let path = crate::build_path(&ee, &anchors, intermediates, time, purpose)
            .map_err(|e| Rejection::from_webpki(e, purpose))?;
        let used = path.anchor();
        let anchor = self
            .anchors
            .iter()
            .find(|a| {
                a.anchor.subject.as_ref() == used.subject.as_ref()
                    && a.anchor.subject_public_key_info.as_ref()
                        == used.subject_public_key_info.as_ref()
            })
            .ok_or_else(|| Rejection::BadTrustAnchor("trust anchor not found".into()))?;
        if let Some(p) = &anchor.problem {
            return Err(Rejection::BadTrustAnchor(p.clone()));
        }
        let t = now.unix_timestamp();
        if t < anchor.not_before || t > anchor.not_after {
            return Err(Rejection::BadTrustAnchor(
                "the root certificate is not valid now".into(),
            ));
        }
        anchor
            .limits
            .check(path.intermediate_certificates().count(), purpose)?;
        let (_, leaf) = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|e| Rejection::Malformed(e.to_string()))?;
        let chain: Arc<[CertificateDer<'static>]> = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        let mut peer = VerifiedPeer::from_cert(chain, &leaf, self.generation);
        let mut not_before = anchor
            .not_before
            .max(leaf.validity().not_before.timestamp());
        let mut not_after = anchor.not_after.min(leaf.validity().not_after.timestamp());
        let serial_of = |c: &x509_parser::certificate::X509Certificate<'_>| {
            mtls_pki::Serial::from_be_bytes(c.raw_serial())
                .as_bytes()
                .to_vec()
        };
        // The path's certificates below the anchor, leaf first; each one's issuer is the next
        // (the last one's is the anchor).
        let ders: Vec<CertificateDer<'_>> =
            path.intermediate_certificates().map(|c| c.der()).collect();
        let mut path_certs = vec![leaf];
        for der in &ders {
            let (_, c) = x509_parser::parse_x509_certificate(der.as_ref())
                .map_err(|e| Rejection::Malformed(e.to_string()))?;
            // webpki does not read an intermediate's keyUsage: one that may not sign
            // certificates signed none this path may rely on.
            if c.key_usage()
                .ok()
                .flatten()
                .is_some_and(|ku| !ku.value.key_cert_sign())
            {
                return Err(Rejection::KeyUsage(
                    "issuing certificates (an intermediate without keyCertSign)",
                ));
            }
            not_before = not_before.max(c.validity().not_before.timestamp());
            not_after = not_after.min(c.validity().not_after.timestamp());
            path_certs.push(c);
        }
        if let Ok(t) = OffsetDateTime::from_unix_timestamp(not_after) {
            peer.path_not_after = t.min(peer.not_after());
        }
        // The key that signed the leaf, as validated: what names the issuing CA, where its
        // name could be taken by another CA of the bundle.
        peer.issuer_spki_sha256 = Some(mtls_pki::Fingerprint::of(
            path_certs
                .get(1)
                .map_or(anchor.spki.as_slice(), |c| c.public_key().raw),
        ));
        let peer = Arc::new(peer);
        let chain_scope = self.options.scope == crate::CrlScope::Chain;
        let leaf_query = self.status.as_ref().map(|_| {
            let issuer = ders.first().map_or(anchor.der.as_ref(), |d| d.as_ref());
            Arc::new((end_entity.to_vec(), issuer.to_vec()))
        });
        let revocation: Vec<RevocationKey> = path_certs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let issuer_spki = path_certs
                    .get(i + 1)
                    .map(|issuer| issuer.public_key().raw.to_vec())
                    .unwrap_or_else(|| anchor.spki.clone());
                RevocationKey {
                    issuer: c.issuer().as_raw().to_vec(),
                    issuer_key: crate::pushed::issuer_key_of(&issuer_spki),
                    issuer_spki,
                    serial_key: crate::serial_key::SerialKey::new(&serial_of(c)),
                    serial: serial_of(c),
                    is_ca: i > 0,
                    crl_uris: crl_uris(c),
                    require: i == 0 || chain_scope,
                    anchor: false,
                    query: if i == 0 { leaf_query.clone() } else { None },
                }
            })
            // A member of the bundle issued by another (an intermediate beside its root): under
            // chain scope its status is required as a presented intermediate's would be, and an
            // expired CRL about it counts as one; else it is only asked.
            .chain(anchor.revocation.clone().map(|mut key| {
                if chain_scope {
                    key.require = true;
                    key.anchor = false;
                }
                key
            }))
            .collect();
        for key in &revocation {
            self.check_revocation_key(key, now)?;
        }
        let subjects = if subjects {
            path_certs
                .iter()
                .map(|c| c.subject().to_string())
                .chain(std::iter::once(anchor.subject.clone()))
                .collect()
        } else {
            Vec::new()
        };
        Ok((
            CachedPath {
                peer,
                not_before,
                not_after,
                revocation,
            },
            ValidatedPath { subjects },
        ))
    }

    fn check_revocation_key(
        &self,
        key: &RevocationKey,
        now: OffsetDateTime,
    ) -> Result<(), Rejection> {
        if !self.revocation_checked {
            return Ok(());
        }
        let (source, outcome) = self.decide(key, now);
        // A status asked of no one (a bundle member its issuer may have revoked) is counted
        // when it refuses: that refusal is a revocation decision like any other.
        let counted = key.require || outcome == Err(Rejection::Revoked);
        if let (Some(d), true) = (&self.decisions, counted) {
            use crate::DecisionResult as R;
            let result = match (&outcome, source) {
                (Err(Rejection::Revoked), _) => R::Revoked,
                (Err(_), _) => R::Refused,
                (Ok(()), crate::DecisionSource::None) => R::SoftFailAccepted,
                (Ok(()), _) => R::Good,
            };
            d.record(source, result, now, &|| {
                format!(
                    "no current revocation data for serial {}",
                    hex::encode(&key.serial)
                )
            });
        }
        outcome
    }

    /// The revocation status of one certificate and the source that gave it.
    fn decide(
        &self,
        key: &RevocationKey,
        now: OffsetDateTime,
    ) -> (crate::DecisionSource, Result<(), Rejection>) {
        use crate::DecisionSource as S;
        let mut covered = None;
        let mut expired = false;
        let mut stale = None;
        if let Some(p) = &self.pushed {
            match p.status_of(&key.issuer_key, &key.serial_key, now) {
                PushedStatus::Revoked => return (S::Feed, Err(Rejection::Revoked)),
                PushedStatus::Good => covered = Some(S::Feed),
                PushedStatus::Stale { age_secs } => stale = Some(age_secs),
                PushedStatus::NotCovered => {}
            }
        }
        for entry in self.crls.get(&key.issuer).into_iter().flatten() {
            if !entry.covers(key) {
                continue;
            }
            // Looked at first: a revocation stays one after the CRL listing it expired. Only
            // "not revoked" needs a current CRL; skipping an expired CRL whole would let
            // another source (a cached OCSP answer, the feed) vouch for a certificate it lists.
            if entry.revoked.contains(&key.serial_key) {
                return (S::Crl, Err(Rejection::Revoked));
            }
            if entry.next_update.is_some_and(|next| now >= next) {
                expired |= !key.anchor;
                continue;
            }
            covered = covered.or(Some(S::Crl));
        }
        let mut source_unknown = None;
        // Asked only when nothing else vouched: a first answer may have to be waited for.
        if let (None, Some(source), Some(q)) = (covered, &self.status, &key.query) {
            let query = crate::StatusQuery {
                cert: &q.0,
                issuer: &q.1,
                issuer_key: &key.issuer_key,
                serial: &key.serial,
            };
            match source.status(&query, now) {
                crate::SourceStatus::Revoked => return (S::Ocsp, Err(Rejection::Revoked)),
                crate::SourceStatus::Good => covered = Some(S::Ocsp),
                crate::SourceStatus::Unknown(why) => source_unknown = Some(why),
            }
        }
        if covered.is_none() {
            // Ask for the CRLs this certificate names, for the next trust state.
            if let (Some(f), Some(uris)) = (&self.fetched, &key.crl_uris) {
                f.want(uris);
            }
        }
        if let Some(source) = covered {
            (source, Ok(()))
        } else if expired && self.options.allow_expired_crl {
            // Loosened: accepted, but counted and logged as the soft-fail acceptance it is.
            (S::None, Ok(()))
        } else if expired {
            (S::Crl, Err(Rejection::ExpiredCrl))
        } else if key.require && !self.options.allow_unknown_status {
            let (source, rejection) = match (stale, source_unknown) {
                (Some(age_secs), _) => (S::Feed, Rejection::StaleRevocationFeed { age_secs }),
                (None, Some(why)) => (S::Ocsp, Rejection::OcspUnavailable(why)),
                (None, None) => (S::None, Rejection::UnknownRevocationStatus),
            };
            (source, Err(rejection))
        } else {
            (S::None, Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    /// DER order, every byte read: an IDP with its fields in order passes; out of order (as
    /// webpki would still take), with bytes after it, or with a field not context-tagged, not.
    #[test]
    fn idp_fields_must_come_in_der_order() {
        use super::fields_in_order;
        // { [0] (empty), [1] TRUE }
        assert!(fields_in_order(&[0x30, 0x05, 0xa0, 0x00, 0x81, 0x01, 0xff]));
        // { [1] TRUE, [0] (empty) }
        assert!(!fields_in_order(&[
            0x30, 0x05, 0x81, 0x01, 0xff, 0xa0, 0x00
        ]));
        // { [0], [2] FALSE, [1] TRUE }
        assert!(!fields_in_order(&[
            0x30, 0x08, 0xa0, 0x00, 0x82, 0x01, 0x00, 0x81, 0x01, 0xff
        ]));
        // The same tag twice.
        assert!(!fields_in_order(&[
            0x30, 0x06, 0x81, 0x01, 0xff, 0x81, 0x01, 0xff
        ]));
        // Trailing bytes, a universal-class field, not a SEQUENCE at all.
        assert!(!fields_in_order(&[0x30, 0x02, 0xa0, 0x00, 0x00]));
        assert!(!fields_in_order(&[0x30, 0x03, 0x01, 0x01, 0xff]));
        assert!(!fields_in_order(&[0x04, 0x00]));
    }
}
