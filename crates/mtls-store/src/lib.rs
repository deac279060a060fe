//! `mtls-store`: the inventory of every certificate a CA issued, its revocations, enrollment
//! tokens, CRL numbers and an audit log.
//!
//! What it does: keeps that state in an embedded SQLite database (WAL journal,
//! `synchronous=FULL`) or in PostgreSQL when several CA instances share it, and answers the
//! queries the CA, the CLI and CRL/OCSP generation need. Writes from concurrent requests are
//! batched into one transaction (group commit) so durability costs one flush per batch, not per
//! certificate; every write's `Ok` means its rows are committed.
//!
//! What it does not do: signing, TLS, HTTP, or deciding policy. Callers record a certificate
//! *before* handing it out; a certificate that failed to record is never returned.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use mtls_pki::revocation::{RevocationReason, RevokedEntry};
use mtls_pki::Serial;
use serde::Serialize;
use time::OffsetDateTime;

mod batch;
mod ledger;
mod pg_tls;
mod postgres;
mod sqlite;
mod store;

pub use ledger::{Ledger, Marks};
pub use pg_tls::PgTls;
pub use store::{Location, Reconciled, Store};

/// Errors from the inventory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The SQLite database failed; `context` says what we were doing.
    #[error("inventory database {context}: {source}")]
    Database {
        context: &'static str,
        source: rusqlite::Error,
    },
    /// The database cannot be reached or failed mid-transaction (nothing was committed), or its
    /// `COMMIT` failed (context `"commit"`: with PostgreSQL, a commit whose answer was lost may
    /// still have landed).
    #[error("inventory database unavailable while trying to {context}: {detail}")]
    Unavailable {
        context: &'static str,
        detail: String,
    },
    /// Opening or creating the database file failed.
    #[error("cannot open inventory {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// Creating the database file failed.
    #[error("cannot create inventory {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The database location is not a path or a `postgres://` URL we can use.
    #[error("invalid database location {0:?}")]
    InvalidLocation(String),
    /// No certificate with that serial was issued by this CA.
    #[error("no certificate with serial {0} in the inventory")]
    UnknownSerial(String),
    /// The certificate is already revoked.
    #[error("certificate {serial} was already revoked at {}", mtls_pki::rfc3339(.at))]
    AlreadyRevoked { serial: String, at: OffsetDateTime },
    /// A row holds a value this version cannot read.
    #[error("inventory row is corrupt: {0}")]
    Corrupt(String),
    /// The same serial was recorded twice (a CSPRNG failure or a replayed insert).
    #[error("serial {0} is already in the inventory")]
    DuplicateSerial(String),
    /// No enrollment token with that id.
    #[error("unknown enrollment token")]
    UnknownToken,
    /// The token was already used.
    #[error("enrollment token {id} was already used at {}", mtls_pki::rfc3339(.at))]
    TokenUsed { id: String, at: OffsetDateTime },
    /// The token expired.
    #[error("enrollment token {id} expired at {}", mtls_pki::rfc3339(.at))]
    TokenExpired { id: String, at: OffsetDateTime },
    /// A token with that id already exists.
    #[error("enrollment token {0} already exists")]
    DuplicateToken(String),

    /// A renewal whose predecessor was revoked (or is gone), or one of whose renewals was
    /// revoked, by the time it was to be recorded.
    #[error("certificate {0}, or a certificate renewed from it, is revoked: it can no longer be renewed")]
    NotRenewable(String),
    /// A renewal refused because `limit.max` certificates were already renewed in the same
    /// renewal lineage within `limit.window` (see [`RenewalLimit`]); nothing was recorded. A
    /// renewal fits again after `retry_after`, when the oldest of those leaves the window.
    #[error("certificate {serial} (or its renewal lineage) was already renewed {} times in the last {} s: it can be renewed again in {} s", .limit.max, .limit.window.whole_seconds(), .retry_after.whole_seconds())]
    RenewalRateLimited {
        serial: String,
        limit: RenewalLimit,
        retry_after: time::Duration,
    },

    /// The certificate's public key was declared compromised: a certificate with it
    /// (`serial`) was revoked for keyCompromise, and no certificate is issued for that key
    /// again, to anyone. Nothing was recorded.
    #[error("the public key was revoked as compromised (certificate {serial} was revoked for keyCompromise): generate a new key")]
    KeyCompromised { serial: String },

    /// Signing a CRL failed (an expired CA, an invalid lifetime).
    /// The record of what this CA published cannot be read or written.
    #[error("CA ledger {}: {detail}", path.display())]
    Ledger { path: PathBuf, detail: String },
    /// The database is behind what this CA already published: it was restored from an older
    /// backup (or another database was given).
    #[error("the inventory is older than what this CA has already published ({detail}): it was restored from an older backup, or is not this CA's database. Publishing from it would number CRLs backwards and forget revocations; run `mtls ca reconcile` to re-apply the revocations of the last published CRL and continue from there")]
    RolledBack { detail: String },
    #[error("signing the CRL: {0}")]
    Crl(#[source] mtls_pki::Error),
}

/// A CRL signed from the inventory by [`Store::sign_crl`].
#[derive(Clone, Debug)]
pub struct SignedCrl {
    pub der: rustls_pki_types::CertificateRevocationListDer<'static>,
    pub number: u64,
    /// How many revoked certificates it lists.
    pub entries: usize,
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
}

impl Error {
    /// True when the failure is the database being unreachable (the caller should answer 503
    /// and may retry later), as opposed to a refusal about the request itself.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::Database { .. } | Error::Open { .. }
        )
    }
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Lifecycle state of an inventory entry at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Valid,
    Expired,
    Revoked,
}

/// A certificate to record.
#[derive(Clone, Debug)]
pub(crate) struct NewCertificate<'a> {
    pub serial: &'a Serial,
    /// Hex SHA-256 of the issuing CA's SubjectPublicKeyInfo: which CRL lists this serial.
    pub issuer_key: &'a str,
    pub subject: &'a str,
    pub sans: &'a [String],
    pub profile: &'a str,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub fingerprint: &'a str,
    pub pem: &'a str,
}

/// An owned `NewCertificate`, for the asynchronous [`Store`].
#[derive(Clone, Debug)]
pub struct CertificateToRecord {
    pub serial: Serial,
    pub issuer_key: String,
    pub subject: String,
    pub sans: Vec<String>,
    pub profile: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub fingerprint: String,
    pub pem: String,
    /// Its key's identity ([`mtls_pki::key::key_identity`]) when the caller has it at hand (a
    /// CA that just signed for a public key); else it is read from `pem`.
    pub key_id: Option<String>,
}

impl CertificateToRecord {
    /// The record of a certificate `issuer_key` just issued under `profile`.
    pub fn from_issued(issued: &mtls_pki::Issued, issuer_key: &str, profile: &str) -> Self {
        CertificateToRecord {
            serial: issued.serial.clone(),
            issuer_key: issuer_key.to_string(),
            subject: issued.subject.clone(),
            sans: issued.sans.iter().map(ToString::to_string).collect(),
            profile: profile.to_string(),
            not_before: issued.not_before,
            not_after: issued.not_after,
            fingerprint: mtls_pki::inspect::sha256_hex(&issued.der),
            pem: issued.pem(),
            key_id: None,
        }
    }

    pub(crate) fn borrowed(&self) -> NewCertificate<'_> {
        NewCertificate {
            serial: &self.serial,
            issuer_key: &self.issuer_key,
            subject: &self.subject,
            sans: &self.sans,
            profile: &self.profile,
            not_before: self.not_before,
            not_after: self.not_after,
            fingerprint: &self.fingerprint,
            pem: &self.pem,
        }
    }
}

/// Why a certificate is being recorded: audited with the record, in the same transaction.
#[derive(Clone, Debug)]
pub enum IssueKind {
    /// Issued by an operator (CLI) or an administrator.
    Direct,
    /// Enrollment: the token with this id is consumed in the same transaction; if it was used or
    /// expired meanwhile (another instance raced us) nothing is recorded.
    Enrollment { token_id: String },
    /// Renewal of the certificate with this serial: recorded only if that certificate is still
    /// unrevoked when the write commits (a revocation racing the renewal wins), and if fewer
    /// than `limit.max` certificates were renewed from it within `limit.window`
    /// ([`Error::RenewalRateLimited`] otherwise).
    Renewal {
        previous: Serial,
        limit: RenewalLimit,
    },
}

/// How often one certificate's renewal lineage may be renewed: at most `max` renewals within
/// any `window`, from whichever of its certificates. Renewing
/// from the same certificate more than once stays possible (a client whose answer was lost
/// retries with the certificate it still has), but a holder of a valid key cannot grow the
/// inventory, the CRL and the revocation lineages without bound, whether it renews from one
/// certificate or each time from the newest. Checked in the write transaction that records the renewal; a CA
/// asks [`Store::check_renewal`] first, so a renewal over the limit costs no signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenewalLimit {
    /// Most renewals of one lineage within `window`.
    pub max: u32,
    /// The rolling window.
    pub window: time::Duration,
}

impl RenewalLimit {
    /// Renewals issued after this (Unix seconds, exclusive) count against the limit at `now`.
    pub(crate) fn window_start(&self, now: OffsetDateTime) -> i64 {
        ts(now).saturating_sub(self.window.whole_seconds())
    }

    /// The refusal at `now`, given the issue time (Unix seconds) of the `max`-th most recent
    /// renewal in the window (see [`RENEWAL_SLOT_SQL`]): a renewal fits again once it leaves.
    /// Without it (`max` 0), every renewal in the window has left it by `now + window`.
    pub(crate) fn refusal(&self, serial: String, slot: Option<i64>, now: OffsetDateTime) -> Error {
        let w = self.window.whole_seconds();
        let frees_at = slot.unwrap_or(ts(now)).saturating_add(w);
        Error::RenewalRateLimited {
            serial,
            limit: *self,
            retry_after: time::Duration::seconds(frees_at.saturating_sub(ts(now)).max(1)),
        }
    }
}

/// A recorded certificate.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateRecord {
    pub serial: String,
    pub issuer_key: String,
    pub subject: String,
    pub sans: Vec<String>,
    pub profile: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub status: Status,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    pub revocation_reason: Option<String>,
    pub fingerprint: String,
    #[serde(skip)]
    pub pem: String,
}

impl CertificateRecord {
    pub(crate) fn status_at(
        revoked_at: Option<OffsetDateTime>,
        not_after: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Status {
        if revoked_at.is_some() {
            Status::Revoked
        } else if now > not_after {
            Status::Expired
        } else {
            Status::Valid
        }
    }

    /// The recorded revocation reason, parsed.
    pub fn reason(&self) -> Option<RevocationReason> {
        self.revocation_reason
            .as_deref()
            .and_then(|r| r.parse().ok())
    }
}

/// One revocation as the CA's feed publishes it.
#[derive(Clone, Debug)]
pub struct RevocationEvent {
    /// Position in the feed (the revocation epoch this revocation moved the counter to).
    pub seq: i64,
    /// SHA-256 (hex) of the issuing CA key's SPKI.
    pub issuer_key: String,
    /// Serial, time and reason.
    pub entry: RevokedEntry,
}

/// Which records a list query returns.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only certificates not revoked whose notAfter falls before this time (and not yet past).
    pub expiring_before: Option<OffsetDateTime>,
    /// Only revoked certificates.
    pub revoked_only: bool,
}

/// A new enrollment token. Only the hash of its secret is stored.
#[derive(Clone, Debug)]
pub struct NewToken {
    /// Public identifier (the part before the dot in the token string).
    pub id: String,
    /// Hex SHA-256 of the secret part.
    pub secret_hash: String,
    /// The common name the certificate must carry.
    pub name: String,
    /// The SANs the CSR may ask for (a subset is allowed).
    pub sans: Vec<String>,
    pub profile: String,
    pub expires_at: OffsetDateTime,
    pub created_by: String,
}

/// A stored enrollment token.
#[derive(Clone, Debug, Serialize)]
pub struct TokenRecord {
    pub id: String,
    #[serde(skip)]
    pub secret_hash: String,
    pub name: String,
    pub sans: Vec<String>,
    pub profile: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub used_at: Option<OffsetDateTime>,
    pub used_by_serial: Option<String>,
}

/// One audit-log entry.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub action: String,
    pub serial: Option<String>,
    pub actor: String,
    pub detail: String,
}

/// The subject recorded for a certificate known only from a published CRL's entry
/// ([`Store::reconcile`]).
pub(crate) const RESTORED_SUBJECT: &str =
    "(unknown: issued after the restored backup; known from the published CRL)";

/// A century after `t` (the expiry given to a revocation known only from a CRL, so that it
/// stays listed), or the latest date there is: `t` comes from a file.
pub(crate) fn far_after(t: OffsetDateTime) -> OffsetDateTime {
    t.checked_add(time::Duration::days(36_525))
        .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc())
}

pub(crate) fn ts(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

pub(crate) fn from_ts(v: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(v).map_err(|e| Error::Corrupt(e.to_string()))
}

pub(crate) fn sans_json(sans: &[String]) -> Result<String> {
    serde_json::to_string(sans).map_err(|e| Error::Corrupt(e.to_string()))
}

pub(crate) fn sans_from_json(s: &str) -> Result<Vec<String>> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(e.to_string()))
}

/// What a revocation changed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Revocation {
    /// The certificate revoked, as it is now.
    #[serde(flatten)]
    pub record: CertificateRecord,
    /// Serials revoked with it, from its renewal lineage. A revocation
    /// for `keyCompromise` reaches the certificates it renews that carry the same key (a
    /// renewal without `--rotate-key`), up to the first with another key, and every
    /// certificate renewed from any of them, directly or through other renewals: a renewal
    /// with a new key was still asked for with the compromised one. Any other reason but
    /// `superseded` (none given included) says the holder is no longer to be trusted: every
    /// unexpired certificate of the lineage goes, whatever its key, so that revoking the
    /// latest certificate does not leave its predecessor (valid for a third of its life
    /// after a renewal) in the holder's hands. `superseded` revokes only the certificate
    /// named.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also_revoked: Vec<String>,
}

/// The SubjectPublicKeyInfo of a stored certificate (`None` when it does not parse: a row
/// restored from a CRL entry has no certificate).
pub(crate) fn spki_of(pem: &str) -> Option<Vec<u8>> {
    let der = mtls_pki::pem_io::certificates(pem.as_bytes()).ok()?;
    let cert = mtls_pki::pem_io::parse_certificate(der.first()?).ok()?;
    Some(cert.tbs_certificate.subject_pki.raw.to_vec())
}

/// The identity of a stored certificate's key ([`mtls_pki::key::key_identity`]): how the
/// compromised keys (`compromised_keys`) are named, so that a key re-encoded (a compressed EC
/// point) or varied (another RSA exponent) is the same key. `None` for a record with no
/// readable certificate.
pub(crate) fn key_id_of(pem: &str) -> Option<String> {
    spki_of(pem).and_then(|spki| mtls_pki::key::key_identity(&spki))
}

/// The migration that fills `compromised_keys` from the keyCompromise revocations recorded
/// before it existed (once per inventory, both backends).
pub(crate) const COMPROMISED_KEYS_MIGRATION: &str = "compromised-keys-from-revocations";

/// The migration that fills `certificates.key_id` for certificates recorded before it.
pub(crate) const KEY_IDS_MIGRATION: &str = "key-ids-from-certificates";

/// How many certificates the inventory holds by status, and how many valid ones expire soon
/// (see [`Store::counts`](crate::Store::counts)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InventoryCounts {
    pub valid: u64,
    pub expired: u64,
    pub revoked: u64,
    /// For each window asked for: valid certificates whose notAfter falls within it and that
    /// no valid renewal supersedes (a renewed certificate running out is not a problem).
    pub expiring: Vec<u64>,
}

/// The counting statements, the same on both backends but for their placeholders: `now` is
/// the first parameter, the window's end the second.
pub(crate) const COUNT_BY_STATUS_SQL: &str =
    "SELECT COUNT(*) FILTER (WHERE revoked_at IS NULL AND not_after >= {now}),
            COUNT(*) FILTER (WHERE revoked_at IS NULL AND not_after < {now}),
            COUNT(*) FILTER (WHERE revoked_at IS NOT NULL)
     FROM certificates";
pub(crate) const COUNT_EXPIRING_SQL: &str = "SELECT COUNT(*) FROM certificates c
     WHERE c.revoked_at IS NULL AND c.not_after >= {now} AND c.not_after <= {end}
       AND NOT EXISTS (SELECT 1 FROM certificates r
                       WHERE r.renews = c.serial AND r.revoked_at IS NULL AND r.not_after > c.not_after)";

/// Most same-key ancestors one revocation follows up (a bound on a damaged lineage; a
/// certificate renewed daily for 27 years stays under it).
pub(crate) const MAX_RENEWAL_LINEAGE: usize = 10_000;

/// Whether a certificate (`?1`, SQLite) may still be renewed: it is unrevoked and nothing
/// renewed from it, directly or through other renewals, was revoked. Otherwise a holder whose
/// renewed certificate was revoked (privilegeWithdrawn, cessationOfOperation…) could renew
/// again from the older certificate it kept, which is still valid. (PostgreSQL: the same
/// condition inside `ISSUE_SQL`.)
pub(crate) const RENEWABLE_SQL: &str =
    "SELECT 1 FROM certificates WHERE serial = ?1 AND revoked_at IS NULL
  AND NOT EXISTS (
    WITH RECURSIVE d(serial) AS (
        SELECT serial FROM certificates WHERE renews = ?1
        UNION SELECT r.serial FROM certificates r JOIN d ON r.renews = d.serial
    )
    SELECT 1 FROM certificates x JOIN d ON x.serial = d.serial WHERE x.revoked_at IS NOT NULL
  )";

/// How many renewals the renewal lineage of `{serial}` had after `{since}` (Unix seconds): what
/// [`RenewalLimit`] counts. A lineage is the first certificate and every certificate renewed
/// from it, directly or through other renewals (column `lineage`: the first one's serial, on
/// every renewal; NULL on the first, which is its own). Counted per lineage, not per
/// certificate: renewing each time from the newest certificate would otherwise never reach the
/// limit. Placeholders replaced per backend. (PostgreSQL's write: the same count inside
/// `ISSUE_SQL`.)
pub(crate) const RECENT_RENEWALS_SQL: &str = "SELECT COUNT(*) FROM certificates
     WHERE lineage = (SELECT COALESCE(lineage, serial) FROM certificates WHERE serial = {serial})
       AND issued_at > {since}";

/// After a [`RenewalLimit`] refusal: the issue time of the `{nth}`-th most recent renewal from
/// `{serial}` after `{since}` (`{nth}` is the limit less one: an offset), the renewal whose
/// leaving the window lets one more in. Placeholders replaced per backend.
pub(crate) const RENEWAL_SLOT_SQL: &str = "SELECT issued_at FROM certificates
     WHERE lineage = (SELECT COALESCE(lineage, serial) FROM certificates WHERE serial = {serial})
       AND issued_at > {since}
     ORDER BY issued_at DESC LIMIT 1 OFFSET {nth}";

/// Which other certificates of its renewal lineage a revocation reaches (see
/// [`Revocation::also_revoked`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LineageScope {
    /// `keyCompromise`: the same-key ancestors (expired or not), up to the first with another
    /// key, and everything renewed from the first of them.
    SameKey,
    /// The holder is no longer trusted: every unexpired certificate of the lineage, up
    /// (whatever its key) and down.
    Holder,
}

impl LineageScope {
    /// The scope of a revocation for `reason`; `None`: the certificate alone (`superseded`).
    pub(crate) fn of(reason: Option<RevocationReason>) -> Option<Self> {
        match reason {
            Some(RevocationReason::KeyCompromise) => Some(LineageScope::SameKey),
            Some(RevocationReason::Superseded) => None,
            _ => Some(LineageScope::Holder),
        }
    }

    /// Whether the walk up the lineage stops at a certificate with another key.
    pub(crate) fn stops_at_other_keys(self) -> bool {
        self == LineageScope::SameKey
    }

    /// Whether a certificate of the lineage ending at `not_after` (Unix seconds) goes too.
    pub(crate) fn reaches(self, not_after: i64, now: OffsetDateTime) -> bool {
        self == LineageScope::SameKey || not_after >= now.unix_timestamp()
    }
}

/// The audit detail of a certificate revoked with `root` because of their renewal lineage.
pub(crate) fn lineage_revocation_detail(reason: Option<&str>, root: &str) -> String {
    format!(
        "{} (renewal lineage of {root})",
        reason.unwrap_or("unspecified")
    )
}

/// The serial a `renew` audit entry's detail names (see [`audit_detail_issue`]): what a
/// renewal renewed, for inventories recorded before the `renews` column.
pub(crate) fn renewed_in_audit(detail: &str) -> Option<String> {
    let (_, previous) = detail.rsplit_once(" renews ")?;
    previous.parse::<Serial>().ok().map(|s| s.to_string())
}

pub(crate) fn audit_detail_issue(kind: &IssueKind, cert: &NewCertificate<'_>) -> (String, String) {
    match kind {
        IssueKind::Direct => ("issue".into(), format!("{} {}", cert.profile, cert.subject)),
        IssueKind::Enrollment { token_id } => (
            "enroll".into(),
            format!("{} {} token {token_id}", cert.profile, cert.subject),
        ),
        IssueKind::Renewal { previous, .. } => (
            "renew".into(),
            format!("{} {} renews {previous}", cert.profile, cert.subject),
        ),
    }
}
