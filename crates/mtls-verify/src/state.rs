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
use crate::{check_anchor_static, check_crl, leaf_checks, Purpose, Rejection};

/// Revocation data of one issuer, from its newest CRL.
#[derive(Debug)]
struct CrlEntry {
    issuer: String,
    number: Vec<u8>,
    next_update: Option<OffsetDateTime>,
    revoked: HashSet<Vec<u8>>,
}

/// Summary of a loaded CRL, for metrics and logs.
#[derive(Clone, Debug)]
pub struct CrlSummary {
    pub issuer: String,
    /// The CRL number, big-endian without leading zeros (empty when the CRL has none).
    pub number: Vec<u8>,
    pub next_update: Option<OffsetDateTime>,
    pub entries: usize,
}

struct Anchor {
    anchor: TrustAnchor<'static>,
    not_before: i64,
    not_after: i64,
    problem: Option<String>,
}

/// Options that loosen revocation checking (both off by default).
#[derive(Clone, Copy, Debug, Default)]
pub struct RevocationOptions {
    pub allow_unknown_status: bool,
    pub allow_expired_crl: bool,
}

/// Everything a server needs to decide whether a client chain is trusted.
pub struct TrustState {
    generation: u64,
    anchors: Vec<Anchor>,
    roots: Vec<CertificateDer<'static>>,
    crls: HashMap<Vec<u8>, CrlEntry>,
    crl_summaries: Vec<CrlSummary>,
    options: RevocationOptions,
    purpose: Purpose,
    cache: Mutex<HashMap<[u8; 32], Arc<CachedPath>>>,
}

/// Most cached paths per trust state (cleared when full; a new state starts empty).
const CACHE_CAPACITY: usize = 16_384;

/// A validated path: what must still be checked on every use.
struct CachedPath {
    peer: Arc<VerifiedPeer>,
    /// Intersection of the validity windows of leaf, intermediates and anchor (Unix seconds).
    not_before: i64,
    not_after: i64,
    /// (issuer name, serial, status required) for each certificate below the anchor.
    revocation: Vec<(Vec<u8>, Vec<u8>, bool)>,
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
}

impl TrustState {
    /// Builds a trust state. Every CRL must be signed by a certificate of `roots` (put the
    /// intermediate in the CA bundle when it issues the CRL) and carry a CRL number; its
    /// signature is checked here, once.
    pub fn new(
        generation: u64,
        roots: Vec<CertificateDer<'static>>,
        crls: &[CertificateRevocationListDer<'_>],
        options: RevocationOptions,
    ) -> Result<Self, TrustError> {
        if roots.is_empty() {
            return Err(TrustError::NoRoots);
        }
        let mut anchors = Vec::with_capacity(roots.len());
        for (index, r) in roots.iter().enumerate() {
            let anchor = webpki::anchor_from_trusted_cert(r)
                .map_err(|e| TrustError::BadRoot {
                    index,
                    detail: format!("{e:?}"),
                })?
                .to_owned();
            let (_, cert) =
                x509_parser::parse_x509_certificate(r).map_err(|e| TrustError::BadRoot {
                    index,
                    detail: e.to_string(),
                })?;
            anchors.push(Anchor {
                anchor,
                not_before: cert.validity().not_before.timestamp(),
                not_after: cert.validity().not_after.timestamp(),
                problem: check_anchor_static(&cert).err(),
            });
        }
        let mut index_map: HashMap<Vec<u8>, CrlEntry> = HashMap::new();
        for (index, der) in crls.iter().enumerate() {
            let bad = |detail: String| TrustError::BadCrl { index, detail };
            check_crl(der, &roots).map_err(bad)?;
            let crl = mtls_pki::revocation::parse_crl(der).map_err(|e| bad(e.to_string()))?;
            let issuer_raw = crl.issuer().as_raw().to_vec();
            let issuer = roots
                .iter()
                .filter_map(|r| x509_parser::parse_x509_certificate(r).ok().map(|(_, c)| c))
                .find(|c| c.subject().as_raw() == issuer_raw.as_slice())
                .ok_or_else(|| {
                    bad(format!(
                        "its issuer {} is not in the CA bundle (add the issuing CA certificate)",
                        crl.issuer()
                    ))
                })?;
            if let Ok(Some(ku)) = issuer.key_usage() {
                if !ku.value.crl_sign() {
                    return Err(bad("its issuer may not sign CRLs (no cRLSign)".into()));
                }
            }
            crl.verify_signature(issuer.public_key())
                .map_err(|e| bad(format!("signature does not verify: {e}")))?;
            let number = crl
                .crl_number()
                .map(|n| n.to_bytes_be())
                .unwrap_or_default();
            let entry = CrlEntry {
                issuer: crl.issuer().to_string(),
                number,
                next_update: crl.next_update().map(|t| t.to_datetime()),
                revoked: crl
                    .iter_revoked_certificates()
                    .map(|r| {
                        mtls_pki::Serial::from_be_bytes(r.raw_serial())
                            .as_bytes()
                            .to_vec()
                    })
                    .collect(),
            };
            // Several CRLs of one issuer: the newest (highest number) wins, never a merge.
            let newer = index_map.get(&issuer_raw).is_none_or(|old| {
                (old.number.len(), &old.number) < (entry.number.len(), &entry.number)
            });
            if newer {
                index_map.insert(issuer_raw, entry);
            }
        }
        let crl_summaries = index_map
            .values()
            .map(|e| CrlSummary {
                issuer: e.issuer.clone(),
                number: e.number.clone(),
                next_update: e.next_update,
                entries: e.revoked.len(),
            })
            .collect();
        Ok(TrustState {
            generation,
            anchors,
            roots,
            crls: index_map,
            crl_summaries,
            options,
            purpose: Purpose::Client,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Validates leaves for `purpose` instead of TLS client authentication (the default). The
    /// online CA uses [`Purpose::Any`]: a server certificate it issued may authenticate to renew
    /// itself.
    pub fn with_purpose(mut self, purpose: Purpose) -> Self {
        self.purpose = purpose;
        self
    }

    /// The generation number given at construction.
    pub fn generation(&self) -> u64 {
        self.generation
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
                for (issuer, serial, require) in &c.revocation {
                    self.check_revocation_key(issuer, serial, *require, now)?;
                }
                return Ok(c.peer.clone());
            }
        }
        let cached = self.verify_uncached(end_entity, intermediates, now)?;
        let peer = cached.peer.clone();
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_CAPACITY {
                c.clear();
            }
            c.insert(key, Arc::new(cached));
        }
        Ok(peer)
    }

    fn verify_uncached(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: OffsetDateTime,
    ) -> Result<CachedPath, Rejection> {
        let purpose = self.purpose;
        leaf_checks(end_entity, purpose)?;
        let ee =
            EndEntityCert::try_from(end_entity).map_err(|e| Rejection::from_webpki(e, purpose))?;
        let secs = u64::try_from(now.unix_timestamp())
            .map_err(|_| Rejection::Other("clock before 1970".into()))?;
        let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
        let anchors: Vec<TrustAnchor<'_>> = self.anchors.iter().map(|a| a.anchor.clone()).collect();
        let path = crate::build_path(&ee, &anchors, intermediates, time, purpose, None)
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
        let (_, leaf) = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|e| Rejection::Malformed(e.to_string()))?;
        let mut not_before = anchor
            .not_before
            .max(leaf.validity().not_before.timestamp());
        let mut not_after = anchor.not_after.min(leaf.validity().not_after.timestamp());
        let serial_of = |c: &x509_parser::certificate::X509Certificate<'_>| {
            mtls_pki::Serial::from_be_bytes(c.raw_serial())
                .as_bytes()
                .to_vec()
        };
        let mut revocation = vec![(leaf.issuer().as_raw().to_vec(), serial_of(&leaf), true)];
        for ica in path.intermediate_certificates() {
            if let Ok((_, c)) = x509_parser::parse_x509_certificate(ica.der().as_ref()) {
                not_before = not_before.max(c.validity().not_before.timestamp());
                not_after = not_after.min(c.validity().not_after.timestamp());
                revocation.push((c.issuer().as_raw().to_vec(), serial_of(&c), false));
            }
        }
        for (issuer, serial, require) in &revocation {
            self.check_revocation_key(issuer, serial, *require, now)?;
        }
        Ok(CachedPath {
            peer: Arc::new(VerifiedPeer::from_cert(end_entity, &leaf, self.generation)),
            not_before,
            not_after,
            revocation,
        })
    }

    fn check_revocation_key(
        &self,
        issuer: &[u8],
        serial: &[u8],
        require_status: bool,
        now: OffsetDateTime,
    ) -> Result<(), Rejection> {
        if self.crls.is_empty() {
            return Ok(());
        }
        match self.crls.get(issuer) {
            Some(entry) => {
                if let Some(next) = entry.next_update {
                    if now > next && !self.options.allow_expired_crl {
                        return Err(Rejection::ExpiredCrl);
                    }
                }
                if entry.revoked.contains(serial) {
                    return Err(Rejection::Revoked);
                }
                Ok(())
            }
            None if require_status && !self.options.allow_unknown_status => {
                Err(Rejection::UnknownRevocationStatus)
            }
            None => Ok(()),
        }
    }
}
