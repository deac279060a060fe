//! Revocations pushed by the CA (its revocation feed), kept beside the CRL index.
//!
//! A server's [`crate::TrustState`]s are rebuilt at every reload; what the feed delivered must
//! outlive them, so it lives in one [`PushedRevocations`] per server that every trust state of
//! that server consults ([`crate::TrustState::with_pushed_revocations`]). Entries are keyed by the
//! SHA-256 of the issuing CA's public key (SPKI DER: the CA's `issuer_key`) and the serial, so an
//! entry speaks only for certificates issued under that key, as a CRL does.
//!
//! The set knows which issuers it is complete for (those whose CRL seeded it) and how fresh it is:
//! a subscriber that lost its feed for longer than `max_age` makes the set stale, and a stale set
//! answers "unknown" rather than "good" (hard-fail) unless the listener chose soft-fail.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use mtls_pki::Serial;

use crate::serial_key::SerialKey;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;

/// The response header of the online CA's `/v1/crl` that names the revocation feed position
/// the CRL covers: a subscriber seeded from that CRL follows the feed from there.
pub const FEED_POSITION_HEADER: &str = "mtls-revocation-seq";

/// SHA-256 of a CA's SubjectPublicKeyInfo (DER).
pub type IssuerKey = [u8; 32];

/// The SHA-256 of `spki` (DER), as [`IssuerKey`].
pub fn issuer_key_of(spki: &[u8]) -> IssuerKey {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The status the pushed set gives one certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushedStatus {
    /// Listed as revoked (stale or not: a revocation is never taken back).
    Revoked,
    /// The set is complete for this issuer and fresh: not revoked.
    Good,
    /// The set does not cover this issuer.
    NotCovered,
    /// The set covers this issuer but has not heard from the CA for longer than `max_age`.
    Stale {
        /// Seconds since the last contact.
        age_secs: u64,
    },
}

#[derive(Default)]
struct Inner {
    revoked: HashMap<IssuerKey, HashSet<SerialKey>>,
    /// Issuers whose complete revocation list seeded the set.
    covered: HashSet<IssuerKey>,
    /// Last time the feed confirmed the set is current (Unix seconds); `None`: never.
    last_contact: Option<i64>,
}

/// Revocations delivered by a feed, shared by every trust state of one server.
pub struct PushedRevocations {
    inner: RwLock<Inner>,
    max_age: Duration,
    /// Bumped whenever the answer for some certificate may have changed (new revocations,
    /// a new covered issuer): cached verdicts of open connections are then re-checked.
    version: AtomicU64,
}

impl std::fmt::Debug for PushedRevocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushedRevocations")
            .field("version", &self.version())
            .field("entries", &self.len())
            .finish()
    }
}

/// Why a CRL could not seed the set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeedError {
    /// The CRL does not verify against the given CA certificates.
    #[error("{0}")]
    Untrusted(#[from] crate::TrustError),
    /// The CRL is past its nextUpdate.
    #[error("the CRL is past its nextUpdate")]
    Expired,
    /// The CRL covers only part of its issuer's certificates (an issuingDistributionPoint):
    /// it cannot vouch for the others.
    #[error("the CRL covers only part of its issuer's certificates (issuingDistributionPoint): a feed is seeded from a complete CRL")]
    Partial,
}

impl PushedRevocations {
    /// An empty set that turns stale `max_age` after its last contact with the CA.
    pub fn new(max_age: Duration) -> Self {
        PushedRevocations {
            inner: RwLock::new(Inner::default()),
            max_age,
            version: AtomicU64::new(0),
        }
    }

    /// How long the set stays fresh without contact.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Changes whenever a certificate's status may have changed.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Number of revoked entries held.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .map(|i| i.revoked.values().map(HashSet::len).sum())
            .unwrap_or(0)
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Seconds since the feed last confirmed the set at `now` (`None`: never).
    /// A contact later than `now` (the clock went back since) counts as no contact: taken as
    /// age 0, the set would stay fresh for as long as the clock went back, plus `max_age`.
    pub fn age(&self, now: OffsetDateTime) -> Option<u64> {
        age_at(self.inner.read().ok()?.last_contact?, now)
    }

    /// Seeds the set with a complete CRL: verified against `ca` (a certificate there must have
    /// signed it, as for CRL files), not expired at `now`. Its issuer is covered from now on.
    /// Returns how many entries were new.
    pub fn seed_from_crl(
        &self,
        ca: Vec<CertificateDer<'static>>,
        crl: &CertificateRevocationListDer<'_>,
        now: OffsetDateTime,
    ) -> Result<usize, SeedError> {
        let state = crate::TrustState::new(
            0,
            ca,
            std::slice::from_ref(crl),
            crate::RevocationOptions::default(),
        )?;
        if state
            .crl_entries()
            .any(|e| e.next_update.is_some_and(|n| now >= n))
        {
            return Err(SeedError::Expired);
        }
        // Seeding marks the issuer covered: every certificate not listed is good.
        if state.crl_entries().any(|e| !e.is_complete()) {
            return Err(SeedError::Partial);
        }
        let mut added = 0;
        if let Ok(mut inner) = self.inner.write() {
            for entry in state.crl_entries() {
                let key = issuer_key_of(&entry.signer_spki);
                let set = inner.revoked.entry(key).or_default();
                for s in &entry.revoked {
                    if set.insert(*s) {
                        added += 1;
                    }
                }
                inner.covered.insert(key);
            }
            inner.last_contact = Some(now.unix_timestamp());
        }
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(added)
    }

    /// Records revocations from the feed. Returns how many were new (the version moves only
    /// then).
    pub fn insert<'a>(&self, revoked: impl IntoIterator<Item = (IssuerKey, &'a Serial)>) -> usize {
        let mut added = 0;
        if let Ok(mut inner) = self.inner.write() {
            for (key, serial) in revoked {
                if inner
                    .revoked
                    .entry(key)
                    .or_default()
                    .insert(SerialKey::new(serial.as_bytes()))
                {
                    added += 1;
                }
            }
        }
        if added > 0 {
            self.version.fetch_add(1, Ordering::AcqRel);
        }
        added
    }

    /// The feed answered at `now`: the set is current up to what it delivered.
    pub fn touch(&self, now: OffsetDateTime) {
        if let Ok(mut inner) = self.inner.write() {
            inner.last_contact = Some(now.unix_timestamp());
        }
    }

    /// The status of the certificate `serial` (big-endian, without leading zeros, as
    /// [`Serial::as_bytes`]) issued under `issuer`.
    pub fn status(&self, issuer: &IssuerKey, serial: &[u8], now: OffsetDateTime) -> PushedStatus {
        self.status_of(issuer, &SerialKey::new(serial), now)
    }

    pub(crate) fn status_of(
        &self,
        issuer: &IssuerKey,
        serial: &SerialKey,
        now: OffsetDateTime,
    ) -> PushedStatus {
        let Ok(inner) = self.inner.read() else {
            return PushedStatus::NotCovered;
        };
        if inner
            .revoked
            .get(issuer)
            .is_some_and(|s| s.contains(serial))
        {
            return PushedStatus::Revoked;
        }
        if !inner.covered.contains(issuer) {
            return PushedStatus::NotCovered;
        }
        match inner.last_contact.and_then(|t| age_at(t, now)) {
            Some(a) if a <= self.max_age.as_secs() => PushedStatus::Good,
            Some(a) => PushedStatus::Stale { age_secs: a },
            None => PushedStatus::Stale { age_secs: u64::MAX },
        }
    }
}

/// Seconds from `last` (Unix seconds) to `now`; `None` when `last` is later than `now` by
/// more than a few seconds (a verification may read the clock just before the feed's contact
/// is recorded: that is age 0, not a clock gone back).
fn age_at(last: i64, now: OffsetDateTime) -> Option<u64> {
    const RACE: i64 = 5;
    let age = now.unix_timestamp().checked_sub(last)?;
    if age < -RACE {
        return None;
    }
    Some(u64::try_from(age).unwrap_or(0))
}
