//! The asynchronous inventory the online CA uses, over SQLite or PostgreSQL.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use mtls_pki::revocation::{RevocationReason, RevokedEntry};
use mtls_pki::Serial;
use rusqlite::Connection;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::batch::{Job, WriteOp, WriteResult, MAX_BATCH};
use crate::{
    postgres, sqlite, AuditEntry, CertificateRecord, CertificateToRecord, Error, IssueKind,
    ListFilter, NewToken, Result, RevocationEvent, TokenRecord,
};

/// CRLs [`Store::sign_crl`] builds before it gives up when, each time, another process sharing
/// the ledger recorded a later one first.
const MAX_CRL_ATTEMPTS: u32 = 16;

/// Where the inventory lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// An SQLite file (created 0600 if missing).
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` connection URL.
    Postgres(String),
}

impl FromStr for Location {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(Location::Postgres(s.to_string()))
        } else if s.is_empty() || s.contains("://") {
            // Only the scheme: a mistyped URL may carry a password.
            let shown = s
                .split_once("://")
                .map_or_else(String::new, |(scheme, _)| format!("{scheme}://…"));
            Err(Error::InvalidLocation(shown))
        } else {
            Ok(Location::Sqlite(PathBuf::from(s)))
        }
    }
}

enum Reader {
    Sqlite(SqliteReaders),
    Postgres(PgReaders),
}

/// As [`SqliteReaders`]: one pipelined connection for point lookups (a token, a certificate,
/// the feed), another for reads that scale with the inventory, so that a large `list` or CRL
/// does not queue every OCSP answer and enrollment behind it (and into its timeout).
struct PgReaders {
    point: postgres::Reader,
    bulk: postgres::Reader,
}

/// Two read connections: point lookups (a token, one certificate) run in place on `point`;
/// reads that scale with the inventory (the whole list, every revocation of a CA, the audit
/// log) run on a blocking thread with `bulk`, so a million-row `list` holds neither an async
/// worker nor the lock the next enrollment's token lookup needs.
struct SqliteReaders {
    point: Arc<Mutex<Connection>>,
    bulk: Arc<Mutex<Connection>>,
}

struct Inner {
    writer: mpsc::Sender<Job>,
    reader: Reader,
    /// The highest revocation epoch this process has read from the database: one lower later
    /// means the database went back in time under it (see [`Store::revocation_epoch`]).
    epoch_seen: std::sync::atomic::AtomicI64,
    /// Set while the database is behind `epoch_seen`: writes and certificate lookups refuse.
    behind: std::sync::atomic::AtomicBool,
}

/// A handle on the inventory; cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// What this CA published, kept outside the database (see [`crate::Ledger`]).
    ledger: Option<Arc<crate::Ledger>>,
}

/// What [`Store::reconcile`] re-applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Revocations the inventory had lost (re-applied from the last published CRLs).
    pub revocations: u64,
    /// The CRL numbers continue after these, by issuer key.
    pub crl_numbers: Vec<(String, u64)>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner.reader {
            Reader::Sqlite(_) => "Store(sqlite)",
            Reader::Postgres(_) => "Store(postgres)",
        })
    }
}

/// The database's revocation epoch read lower than seen before.
fn went_back(seen: i64, now: i64) -> Error {
    Error::RolledBack {
        detail: format!("its revocation counter went back from {seen} to {now} while this process was using it (a restore, or a failover to a standby that had not received every commit)"),
    }
}

fn blocking_failed(e: tokio::task::JoinError) -> Error {
    Error::Unavailable {
        context: "run a database task",
        detail: e.to_string(),
    }
}

impl Store {
    /// Opens the inventory, creating its schema. For PostgreSQL the database must be reachable
    /// now; later outages are reported per call as [`Error::Unavailable`].
    pub async fn open(location: &Location) -> Result<Store> {
        Self::open_with(location, None).await
    }

    /// Like [`Store::open`]; a PostgreSQL connection uses `tls` when given (required, verified).
    pub async fn open_with(location: &Location, tls: Option<crate::PgTls>) -> Result<Store> {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        let reader = match location {
            Location::Sqlite(path) => {
                let p = path.clone();
                let (w, r, b) = tokio::task::spawn_blocking(move || {
                    Ok::<_, Error>((
                        sqlite::open_connection(&p)?,
                        sqlite::open_connection(&p)?,
                        sqlite::open_connection(&p)?,
                    ))
                })
                .await
                .map_err(blocking_failed)??;
                std::thread::Builder::new()
                    .name("mtls-store-writer".into())
                    .spawn(move || sqlite::run_writer(w, rx))
                    .map_err(|e| Error::Unavailable {
                        context: "start the writer thread",
                        detail: e.to_string(),
                    })?;
                Reader::Sqlite(SqliteReaders {
                    point: Arc::new(Mutex::new(r)),
                    bulk: Arc::new(Mutex::new(b)),
                })
            }
            Location::Postgres(url) => {
                let target = postgres::PgTarget {
                    url: url.clone(),
                    tls,
                };
                let writer = postgres::connect(&target).await?;
                postgres::create_schema(&writer).await?;
                let reader = postgres::connect(&target).await?;
                tokio::spawn(postgres::run_writer(target.clone(), writer, rx));
                Reader::Postgres(PgReaders {
                    point: postgres::Reader::new(target.clone(), reader),
                    bulk: postgres::Reader::lazy(target),
                })
            }
        };
        Ok(Store {
            inner: Arc::new(Inner {
                writer: tx,
                reader,
                epoch_seen: std::sync::atomic::AtomicI64::new(i64::MIN),
                behind: std::sync::atomic::AtomicBool::new(false),
            }),
            ledger: None,
        })
    }

    /// Keeps `ledger` current with every CRL signed and every revocation committed through
    /// this store, and checks the database against it: [`Error::RolledBack`] when it is behind
    /// (restored from an older backup). Call [`Store::reconcile`] to recover.
    pub async fn with_ledger(mut self, ledger: crate::Ledger) -> Result<Store> {
        self.ledger = Some(Arc::new(ledger));
        self.check_published().await?;
        Ok(self)
    }

    /// [`Store::with_ledger`] without the check: for [`Store::reconcile`] itself.
    pub fn with_ledger_unchecked(mut self, ledger: crate::Ledger) -> Store {
        self.ledger = Some(Arc::new(ledger));
        self
    }

    /// Fails with [`Error::RolledBack`] when the database is behind the ledger.
    pub async fn check_published(&self) -> Result<()> {
        let Some(ledger) = &self.ledger else {
            return Ok(());
        };
        let marks = ledger.marks()?;
        let mut behind = Vec::new();
        for (issuer_key, published) in &marks.crl_numbers {
            let have = self.crl_number(issuer_key).await?.unwrap_or(0);
            if have < *published {
                behind.push(format!(
                    "CRL number {published} was published, the database is at {have}"
                ));
            }
        }
        let epoch = self.revocation_epoch().await?;
        if epoch < marks.revocation_epoch {
            behind.push(format!(
                "{} revocations were committed, the database counts {epoch}",
                marks.revocation_epoch
            ));
        }
        if behind.is_empty() {
            Ok(())
        } else {
            Err(Error::RolledBack {
                detail: behind.join("; "),
            })
        }
    }

    /// Brings a restored inventory level with what this CA published: every revocation the
    /// last published CRL of each issuer lists is re-applied (with its original time and
    /// reason; a certificate the backup does not know is recorded from the CRL entry), CRL
    /// numbers continue after the published ones, and the revocation epoch after the recorded
    /// one. Revocations committed after the last published CRL and not in it cannot be
    /// recovered from the ledger: revoke them again.
    pub async fn reconcile(&self, actor: &str, now: OffsetDateTime) -> Result<Reconciled> {
        let Some(ledger) = &self.ledger else {
            return Ok(Reconciled::default());
        };
        let marks = ledger.marks()?;
        let mut out = Reconciled::default();
        let mut epoch_applied = false;
        for (issuer_key, number) in &marks.crl_numbers {
            let entries = match ledger.last_crl(issuer_key)? {
                Some(der) => mtls_pki::revocation::crl_entries(&der).map_err(Error::Crl)?,
                None => Vec::new(),
            };
            let op = WriteOp::Reconcile {
                issuer_key: issuer_key.clone(),
                entries,
                crl_number: *number,
                epoch: marks.revocation_epoch,
                actor: actor.to_string(),
            };
            out.revocations += self.write(op, now).await?.into_number()?;
            out.crl_numbers.push((issuer_key.clone(), *number));
            epoch_applied = true;
        }
        if !epoch_applied && marks.revocation_epoch > 0 {
            let op = WriteOp::Reconcile {
                issuer_key: String::new(),
                entries: Vec::new(),
                crl_number: 0,
                epoch: marks.revocation_epoch,
                actor: actor.to_string(),
            };
            self.write(op, now).await?.into_number()?;
        }
        Ok(out)
    }

    /// The last CRL number allocated for `issuer_key`, if any.
    pub async fn crl_number(&self, issuer_key: &str) -> Result<Option<u64>> {
        match &self.inner.reader {
            Reader::Sqlite(c) => {
                let k = issuer_key.to_string();
                Self::read_sqlite(c, move |c| sqlite::crl_number(c, &k)).await
            }
            Reader::Postgres(r) => r.point.crl_number(issuer_key).await,
        }
    }

    async fn write(&self, op: WriteOp, now: OffsetDateTime) -> Result<WriteResult> {
        // Reconciling is how a database that went back is brought level again, and making
        // the lost revocations again is part of it (revocations only move the counter on).
        if !matches!(op, WriteOp::Reconcile { .. } | WriteOp::Revoke { .. }) {
            self.check_not_behind().await?;
        }
        let (reply, rx) = oneshot::channel();
        let gone = || Error::Unavailable {
            context: "queue a write",
            detail: "the writer stopped".into(),
        };
        self.inner
            .writer
            .send(Job { op, now, reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// SQLite point reads are a few microseconds: done in place (a `spawn_blocking` hop cost
    /// more than the query in the sign benchmark). WAL readers never wait for the writer.
    async fn read_sqlite<T: Send + 'static>(
        readers: &SqliteReaders,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        Self::locked(&readers.point, f)
    }

    /// Reads whose cost grows with the inventory: see [`SqliteReaders`].
    async fn read_sqlite_bulk<T: Send + 'static>(
        readers: &SqliteReaders,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = readers.bulk.clone();
        tokio::task::spawn_blocking(move || Self::locked(&conn, f))
            .await
            .map_err(blocking_failed)?
    }

    fn locked<T>(conn: &Mutex<Connection>, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let guard = conn.lock().map_err(|_| Error::Unavailable {
            context: "read",
            detail: "reader lock poisoned".into(),
        })?;
        f(&guard)
    }

    /// Records a certificate (consuming the enrollment token, if any) and its audit entry.
    /// `Ok` means committed; only then may the certificate be handed out. A certificate for a
    /// key revoked as compromised is refused ([`crate::Error::KeyCompromised`]).
    pub async fn record_issued(
        &self,
        cert: CertificateToRecord,
        kind: IssueKind,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<()> {
        let op = WriteOp::Issue {
            key: cert.key_id.clone().or_else(|| crate::key_id_of(&cert.pem)),
            cert,
            kind,
            actor: actor.to_string(),
        };
        self.write(op, now).await?.into_unit()
    }

    /// Refuses a renewal from `previous` that [`Store::record_issued`] would refuse now, with
    /// the same answer: [`Error::NotRenewable`] (revoked, or something renewed from it was) or
    /// [`Error::RenewalRateLimited`] (`limit` reached at `now`). Reads only, for a CA to ask
    /// before it signs (a certificate refused when recorded was signed for nothing). Not the
    /// authority: revocations and renewals being recorded at the same moment are not seen
    /// here, and `record_issued` checks again in its write transaction.
    pub async fn check_renewal(
        &self,
        previous: &Serial,
        limit: crate::RenewalLimit,
        now: OffsetDateTime,
    ) -> Result<()> {
        match &self.inner.reader {
            Reader::Sqlite(c) => {
                let previous = previous.to_string();
                Self::read_sqlite(c, move |c| {
                    sqlite::check_renewable(c, &previous)?;
                    sqlite::check_renewal_limit(c, previous, &limit, now)
                })
                .await
            }
            Reader::Postgres(r) => r.point.check_renewal(previous, &limit, now).await,
        }
    }

    /// Revokes a certificate; with `issuer_key`, only one issued by that CA key. For
    /// `keyCompromise`, the certificates renewed from it too (see [`crate::Revocation`]).
    pub async fn revoke(
        &self,
        serial: &Serial,
        issuer_key: Option<&str>,
        reason: Option<RevocationReason>,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<crate::Revocation> {
        let op = WriteOp::Revoke {
            serial: serial.clone(),
            issuer_key: issuer_key.map(str::to_string),
            reason,
            actor: actor.to_string(),
        };
        let revocation = self.write(op, now).await?.into_revocation()?;
        if let Some(ledger) = &self.ledger {
            // The revocation is committed: a ledger that cannot follow must not make it look
            // failed (a retry would meet "already revoked"). It only weakens restore detection.
            let recorded = match self.revocation_epoch().await {
                Ok(epoch) => ledger.record_epoch(epoch),
                Err(e) => Err(e),
            };
            if let Err(e) = recorded {
                tracing::warn!(serial = %serial, error = %e, "revoked, but the CA ledger was not updated");
            }
        }
        Ok(revocation)
    }

    /// Stores a new enrollment token (its secret only as a hash).
    pub async fn create_token(&self, token: NewToken, now: OffsetDateTime) -> Result<()> {
        self.write(WriteOp::CreateToken { token }, now)
            .await?
            .into_unit()
    }

    /// Allocates the next CRL number for `issuer_key` (strictly increasing across instances)
    /// with the revocations that CRL lists (see [`WriteOp::CrlSnapshot`]).
    async fn crl_snapshot(
        &self,
        issuer_key: &str,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<(u64, Vec<RevokedEntry>)> {
        let op = WriteOp::CrlSnapshot {
            issuer_key: issuer_key.to_string(),
            actor: actor.to_string(),
        };
        self.write(op, now).await?.into_crl()
    }

    /// Allocates the next CRL number for `issuer_key`: strictly increasing across instances.
    pub async fn next_crl_number(
        &self,
        issuer_key: &str,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<u64> {
        Ok(self.crl_snapshot(issuer_key, actor, now).await?.0)
    }

    /// One certificate by serial.
    pub async fn get(
        &self,
        serial: &Serial,
        now: OffsetDateTime,
    ) -> Result<Option<CertificateRecord>> {
        // An OCSP "good" from a database that lost revocations would be a lie.
        self.check_not_behind().await?;
        match &self.inner.reader {
            Reader::Sqlite(c) => {
                let serial = serial.clone();
                Self::read_sqlite(c, move |c| sqlite::get(c, &serial, now)).await
            }
            Reader::Postgres(r) => r.point.get(serial, now).await,
        }
    }

    /// Certificates matching `filter`, soonest expiry first.
    pub async fn list(
        &self,
        filter: &ListFilter,
        now: OffsetDateTime,
    ) -> Result<Vec<CertificateRecord>> {
        match &self.inner.reader {
            Reader::Sqlite(c) => {
                let filter = filter.clone();
                Self::read_sqlite_bulk(c, move |c| sqlite::list(c, &filter, now)).await
            }
            Reader::Postgres(r) => r.bulk.list(filter, now).await,
        }
    }

    /// Signs the CRL of `issuer`: every revocation recorded so far, under a CRL number that is
    /// allocated durably first (in the transaction that reads the revocations), so numbers only ever increase (across instances too) even if
    /// publishing fails afterwards. The one way CRLs are made from the inventory (`mtls crl` and
    /// the online CA).
    pub async fn sign_crl(
        &self,
        issuer: &mtls_pki::CaCert,
        actor: &str,
        now: OffsetDateTime,
        lifetime: time::Duration,
    ) -> Result<crate::SignedCrl> {
        let issuer_key = mtls_pki::inspect::sha256_hex(&issuer.key().public_key_spki());
        let this_update = now.replace_nanosecond(0).unwrap_or(now);
        // Before a CRL number is taken: a nextUpdate past the year 9999 is refused here.
        let next_update =
            mtls_pki::issue::end_of(this_update, lifetime).map_err(crate::Error::Crl)?;
        // Nor is one taken (with its audit row and, on PostgreSQL, the shared counter's lock)
        // when the CA cannot sign now: an expired CA would spend one on every CRL request.
        issuer
            .check_valid_at(this_update)
            .map_err(crate::Error::Crl)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Number and entries from one transaction: a CRL built at the same time elsewhere
            // never gets a higher number with fewer revocations.
            let (number, entries) = self.crl_snapshot(&issuer_key, actor, this_update).await?;
            let der =
                mtls_pki::revocation::build_crl(issuer, number, this_update, lifetime, &entries)
                    .map_err(crate::Error::Crl)?;
            if let Some(ledger) = &self.ledger {
                match ledger.record_crl(&issuer_key, number, &der) {
                    Ok(()) => {}
                    // Another process sharing the ledger (`mtls crl` beside `mtls ca serve`)
                    // allocated a later number and recorded it first: this CRL is late, not
                    // the database rolled back (that one would be at or below our number).
                    // Not published (it is older than the recorded one): build a fresh one.
                    Err(e @ Error::RolledBack { .. }) => {
                        let allocated = self.crl_number(&issuer_key).await?.unwrap_or(0);
                        if allocated > number && attempt < MAX_CRL_ATTEMPTS {
                            continue;
                        }
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok(crate::SignedCrl {
                der,
                number,
                entries: entries.len(),
                this_update,
                next_update,
            });
        }
    }

    /// Every revoked certificate of `issuer_key`, for a CRL.
    pub async fn revoked_entries(&self, issuer_key: &str) -> Result<Vec<RevokedEntry>> {
        match &self.inner.reader {
            Reader::Sqlite(c) => {
                let k = issuer_key.to_string();
                Self::read_sqlite_bulk(c, move |c| sqlite::revoked_entries(c, &k)).await
            }
            Reader::Postgres(r) => r.bulk.revoked_entries(issuer_key).await,
        }
    }

    /// An enrollment token by id.
    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        match &self.inner.reader {
            Reader::Sqlite(c) => {
                let id = id.to_string();
                Self::read_sqlite(c, move |c| sqlite::token(c, &id)).await
            }
            Reader::Postgres(r) => r.point.token(id).await,
        }
    }

    /// The most recent audit entries, newest first.
    pub async fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        match &self.inner.reader {
            Reader::Sqlite(c) => Self::read_sqlite_bulk(c, move |c| sqlite::audit(c, limit)).await,
            Reader::Postgres(r) => r.bulk.audit(limit).await,
        }
    }

    /// Revocations with a feed sequence number above `after`, in sequence order, at most
    /// `limit`. Sequence numbers are those of [`Store::revocation_epoch`]: the head of the feed
    /// is the current epoch (revocations recorded before the feed existed have none).
    pub async fn revocations_after(&self, after: i64, limit: u32) -> Result<Vec<RevocationEvent>> {
        match &self.inner.reader {
            Reader::Sqlite(c) => {
                Self::read_sqlite(c, move |c| sqlite::revocations_after(c, after, limit)).await
            }
            Reader::Postgres(r) => r.point.revocations_after(after, limit).await,
        }
    }

    /// Counts by status, and of valid certificates expiring within each of `windows` that no
    /// valid renewal supersedes, without reading the certificates themselves.
    pub async fn counts(
        &self,
        now: OffsetDateTime,
        windows: &[time::Duration],
    ) -> Result<crate::InventoryCounts> {
        match &self.inner.reader {
            Reader::Sqlite(c) => {
                let windows = windows.to_vec();
                Self::read_sqlite_bulk(c, move |c| sqlite::counts(c, now, &windows)).await
            }
            Reader::Postgres(r) => r.bulk.counts(now, windows).await,
        }
    }

    /// A counter bumped by every revocation, by any instance: a cached CRL is current while it
    /// has not moved. It never goes back: read lower than this process saw before, the
    /// database lost revocations under a running CA (a restore, a failover to a standby that
    /// missed commits), and [`Error::RolledBack`] is returned here and by every write and
    /// certificate lookup (an OCSP "good" for a certificate revoked since would be a lie) until
    /// it is level again ([`Store::reconcile`], the lost revocations made again) or the
    /// process restarts, taking the database as it is.
    pub async fn revocation_epoch(&self) -> Result<i64> {
        use std::sync::atomic::Ordering;
        // Compared with what was seen before this read began: reads running at once finish in
        // any order, and one that started before a revocation committed may end after one
        // that saw it; neither is a database that went back.
        let seen = self.inner.epoch_seen.load(Ordering::SeqCst);
        let epoch = match &self.inner.reader {
            Reader::Sqlite(c) => Self::read_sqlite(c, sqlite::revocation_epoch).await,
            Reader::Postgres(r) => r.point.revocation_epoch().await,
        }?;
        self.inner.epoch_seen.fetch_max(epoch, Ordering::SeqCst);
        if epoch < seen {
            if !self.inner.behind.swap(true, Ordering::SeqCst) {
                tracing::error!(
                    seen,
                    now = epoch,
                    "the inventory's revocation counter went back: refusing to answer from it"
                );
            }
            return Err(went_back(seen, epoch));
        }
        if self.inner.behind.swap(false, Ordering::SeqCst) {
            tracing::warn!(epoch, "the inventory's revocation counter is level again");
        }
        Ok(epoch)
    }

    /// Refuses while the database is behind; looked at again then (one indexed read), so the
    /// first request after it is level again is answered.
    async fn check_not_behind(&self) -> Result<()> {
        if self.inner.behind.load(std::sync::atomic::Ordering::SeqCst) {
            self.revocation_epoch().await?;
        }
        Ok(())
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        match &self.inner.reader {
            Reader::Sqlite(c) => {
                Self::read_sqlite(c, |c| sqlite::revocation_epoch(c).map(|_| ())).await
            }
            Reader::Postgres(r) => r.point.ping().await,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_mistyped_database_url_is_refused_without_echoing_it() {
        let e = "postgress://ca:s3cret@db/ca"
            .parse::<Location>()
            .unwrap_err();
        let shown = e.to_string();
        assert!(
            !shown.contains("s3cret") && shown.contains("postgress://"),
            "{shown}"
        );
        assert!(matches!(
            "".parse::<Location>(),
            Err(Error::InvalidLocation(_))
        ));
    }
}
