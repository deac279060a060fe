//! `mtls-store`: the inventory of every certificate a CA issued, its revocations, CRL numbers
//! and an audit log.
//!
//! What it does: keeps that state in an embedded SQLite database (WAL journal,
//! `synchronous=FULL`, so a returned `Ok` means the row is on disk) and answers the queries the
//! CLI and CRL generation need. What it does not do: signing, TLS, HTTP, or deciding policy.
//! Callers record a certificate *before* handing it out; a certificate that failed to record is
//! never returned.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::str::FromStr;

use mtls_pki::revocation::{RevocationReason, RevokedEntry};
use mtls_pki::Serial;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use time::OffsetDateTime;

/// Errors from the inventory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database failed; `context` says what we were doing.
    #[error("inventory database {context}: {source}")]
    Database {
        context: &'static str,
        source: rusqlite::Error,
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
    /// No certificate with that serial was issued by this CA.
    #[error("no certificate with serial {0} in the inventory")]
    UnknownSerial(String),
    /// The certificate is already revoked.
    #[error("certificate {serial} was already revoked at {at}")]
    AlreadyRevoked { serial: String, at: OffsetDateTime },
    /// A row holds a value this version cannot read.
    #[error("inventory row is corrupt: {0}")]
    Corrupt(String),
    /// The same serial was recorded twice (a CSPRNG failure or a replayed insert).
    #[error("serial {0} is already in the inventory")]
    DuplicateSerial(String),
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn db(context: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |source| Error::Database { context, source }
}

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
pub struct NewCertificate<'a> {
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

/// Which records [`Inventory::list`] returns.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only certificates not revoked whose notAfter falls before this time (and not yet past).
    pub expiring_before: Option<OffsetDateTime>,
    /// Only revoked certificates.
    pub revoked_only: bool,
}

/// The SQLite inventory.
pub struct Inventory {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS certificates (
    serial            TEXT PRIMARY KEY,
    issuer_key        TEXT NOT NULL,
    subject           TEXT NOT NULL,
    sans              TEXT NOT NULL,
    profile           TEXT NOT NULL,
    not_before        INTEGER NOT NULL,
    not_after         INTEGER NOT NULL,
    fingerprint       TEXT NOT NULL UNIQUE,
    pem               TEXT NOT NULL,
    issued_at         INTEGER NOT NULL,
    revoked_at        INTEGER,
    revocation_reason TEXT
);
CREATE INDEX IF NOT EXISTS certificates_not_after ON certificates(not_after);
CREATE INDEX IF NOT EXISTS certificates_issuer_revoked ON certificates(issuer_key, revoked_at);
CREATE TABLE IF NOT EXISTS crl_numbers (
    issuer_key  TEXT PRIMARY KEY,
    last_number INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    action  TEXT NOT NULL,
    serial  TEXT,
    actor   TEXT NOT NULL,
    detail  TEXT NOT NULL
);
";

fn ts(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn from_ts(v: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(v).map_err(|e| Error::Corrupt(e.to_string()))
}

impl Inventory {
    /// Opens (creating if needed) the inventory at `path`. A new file is created with mode 0600.
    pub fn open(path: &Path) -> Result<Self> {
        let open_err = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        // Create the file owner-only before SQLite opens it (it would use the umask).
        {
            use std::os::unix::fs::OpenOptionsExt;
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
            match created {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(Error::Create {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        Ok(Inventory { conn })
    }

    /// Records an issued certificate and its audit entry in one transaction.
    pub fn record_issued(
        &mut self,
        cert: &NewCertificate<'_>,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<()> {
        let serial = cert.serial.to_string();
        let sans = serde_json::to_string(cert.sans).map_err(|e| Error::Corrupt(e.to_string()))?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("begin"))?;
        let inserted = tx.execute(
            "INSERT INTO certificates (serial, issuer_key, subject, sans, profile, not_before, not_after,
                                       fingerprint, pem, issued_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                serial,
                cert.issuer_key,
                cert.subject,
                sans,
                cert.profile,
                ts(cert.not_before),
                ts(cert.not_after),
                cert.fingerprint,
                cert.pem,
                ts(now)
            ],
        );
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(Error::DuplicateSerial(serial));
            }
            Err(e) => return Err(db("insert certificate")(e)),
        }
        tx.execute(
            "INSERT INTO audit (at, action, serial, actor, detail) VALUES (?1, 'issue', ?2, ?3, ?4)",
            params![ts(now), serial, actor, format!("{} {}", cert.profile, cert.subject)],
        )
        .map_err(db("insert audit"))?;
        tx.commit().map_err(db("commit"))
    }

    fn row(row: &rusqlite::Row<'_>, now: OffsetDateTime) -> Result<CertificateRecord> {
        let get_s = |i| row.get::<_, String>(i).map_err(db("read row"));
        let sans: Vec<String> =
            serde_json::from_str(&get_s(3)?).map_err(|e| Error::Corrupt(e.to_string()))?;
        let not_after = from_ts(row.get(6).map_err(db("read row"))?)?;
        let revoked_at: Option<i64> = row.get(10).map_err(db("read row"))?;
        let revoked_at = revoked_at.map(from_ts).transpose()?;
        let status = if revoked_at.is_some() {
            Status::Revoked
        } else if now > not_after {
            Status::Expired
        } else {
            Status::Valid
        };
        Ok(CertificateRecord {
            serial: get_s(0)?,
            issuer_key: get_s(1)?,
            subject: get_s(2)?,
            sans,
            profile: get_s(4)?,
            not_before: from_ts(row.get(5).map_err(db("read row"))?)?,
            not_after,
            fingerprint: get_s(7)?,
            pem: get_s(8)?,
            status,
            revoked_at,
            revocation_reason: row.get(11).map_err(db("read row"))?,
        })
    }

    const COLUMNS: &'static str = "serial, issuer_key, subject, sans, profile, not_before, not_after, fingerprint, pem, issued_at, revoked_at, revocation_reason";

    /// One certificate by serial.
    pub fn get(&self, serial: &Serial, now: OffsetDateTime) -> Result<Option<CertificateRecord>> {
        let sql = format!(
            "SELECT {} FROM certificates WHERE serial = ?1",
            Self::COLUMNS
        );
        let mut stmt = self.conn.prepare(&sql).map_err(db("prepare get"))?;
        let mut rows = stmt.query(params![serial.to_string()]).map_err(db("get"))?;
        match rows.next().map_err(db("get"))? {
            Some(r) => Ok(Some(Self::row(r, now)?)),
            None => Ok(None),
        }
    }

    /// Certificates matching `filter`, soonest expiry first.
    pub fn list(&self, filter: &ListFilter, now: OffsetDateTime) -> Result<Vec<CertificateRecord>> {
        let mut sql = format!("SELECT {} FROM certificates WHERE 1=1", Self::COLUMNS);
        if filter.revoked_only {
            sql.push_str(" AND revoked_at IS NOT NULL");
        }
        if filter.expiring_before.is_some() {
            sql.push_str(" AND revoked_at IS NULL AND not_after >= ?1 AND not_after <= ?2");
        }
        sql.push_str(" ORDER BY not_after ASC, serial ASC");
        let mut stmt = self.conn.prepare(&sql).map_err(db("prepare list"))?;
        let mut rows = match filter.expiring_before {
            Some(t) => stmt.query(params![ts(now), ts(t)]),
            None => stmt.query([]),
        }
        .map_err(db("list"))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(db("list"))? {
            out.push(Self::row(r, now)?);
        }
        Ok(out)
    }

    /// Marks a certificate revoked (and audits it) in one transaction.
    pub fn revoke(
        &mut self,
        serial: &Serial,
        reason: Option<RevocationReason>,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<CertificateRecord> {
        let s = serial.to_string();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("begin"))?;
        let current: Option<Option<i64>> = tx
            .query_row(
                "SELECT revoked_at FROM certificates WHERE serial = ?1",
                params![s],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("look up serial"))?;
        match current {
            None => return Err(Error::UnknownSerial(s)),
            Some(Some(at)) => {
                return Err(Error::AlreadyRevoked {
                    serial: s,
                    at: from_ts(at)?,
                })
            }
            Some(None) => {}
        }
        tx.execute(
            "UPDATE certificates SET revoked_at = ?1, revocation_reason = ?2 WHERE serial = ?3",
            params![ts(now), reason.map(|r| r.to_string()), s],
        )
        .map_err(db("revoke"))?;
        tx.execute(
            "INSERT INTO audit (at, action, serial, actor, detail) VALUES (?1, 'revoke', ?2, ?3, ?4)",
            params![ts(now), s, actor, reason.map(|r| r.to_string()).unwrap_or_default()],
        )
        .map_err(db("insert audit"))?;
        tx.commit().map_err(db("commit"))?;
        self.get(serial, now)?
            .ok_or(Error::UnknownSerial(serial.to_string()))
    }

    /// Every revoked certificate issued by `issuer_key`, for a CRL.
    pub fn revoked_entries(&self, issuer_key: &str) -> Result<Vec<RevokedEntry>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT serial, revoked_at, revocation_reason FROM certificates
                 WHERE issuer_key = ?1 AND revoked_at IS NOT NULL ORDER BY serial",
            )
            .map_err(db("prepare revoked"))?;
        let mut rows = stmt.query(params![issuer_key]).map_err(db("revoked"))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(db("revoked"))? {
            let serial: String = r.get(0).map_err(db("read row"))?;
            let at: i64 = r.get(1).map_err(db("read row"))?;
            let reason: Option<String> = r.get(2).map_err(db("read row"))?;
            out.push(RevokedEntry {
                serial: Serial::from_str(&serial).map_err(|e| Error::Corrupt(e.to_string()))?,
                revoked_at: from_ts(at)?,
                reason: reason
                    .map(|r| RevocationReason::from_str(&r))
                    .transpose()
                    .map_err(|e| Error::Corrupt(e.to_string()))?,
            });
        }
        Ok(out)
    }

    /// Allocates the next CRL number for `issuer_key` (strictly increasing, durable before use).
    pub fn next_crl_number(
        &mut self,
        issuer_key: &str,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<u64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("begin"))?;
        let last: Option<i64> = tx
            .query_row(
                "SELECT last_number FROM crl_numbers WHERE issuer_key = ?1",
                params![issuer_key],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("read CRL number"))?;
        let next = last
            .unwrap_or(0)
            .checked_add(1)
            .ok_or(Error::Corrupt("CRL number overflow".into()))?;
        tx.execute(
            "INSERT INTO crl_numbers (issuer_key, last_number) VALUES (?1, ?2)
             ON CONFLICT(issuer_key) DO UPDATE SET last_number = excluded.last_number",
            params![issuer_key, next],
        )
        .map_err(db("write CRL number"))?;
        tx.execute(
            "INSERT INTO audit (at, action, serial, actor, detail) VALUES (?1, 'crl', NULL, ?2, ?3)",
            params![ts(now), actor, format!("CRL number {next}")],
        )
        .map_err(db("insert audit"))?;
        tx.commit().map_err(db("commit"))?;
        u64::try_from(next).map_err(|_| Error::Corrupt("negative CRL number".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(serial: &'a Serial, fp: &'a str) -> NewCertificate<'a> {
        NewCertificate {
            serial,
            issuer_key: "ik",
            subject: "CN=a",
            sans: &[],
            profile: "client",
            not_before: OffsetDateTime::UNIX_EPOCH,
            not_after: OffsetDateTime::UNIX_EPOCH + time::Duration::days(30),
            fingerprint: fp,
            pem: "pem",
        }
    }

    #[test]
    fn record_list_revoke_and_crl_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let mut inv = Inventory::open(&dir.path().join("inv.db")).unwrap();
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
        let s1 = Serial::random().unwrap();
        inv.record_issued(&sample(&s1, "f1"), "test", now).unwrap();
        assert!(matches!(
            inv.record_issued(&sample(&s1, "f2"), "test", now),
            Err(Error::DuplicateSerial(_))
        ));
        let all = inv.list(&ListFilter::default(), now).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].status, Status::Valid);
        let unknown = Serial::random().unwrap();
        assert!(matches!(
            inv.revoke(&unknown, None, "t", now),
            Err(Error::UnknownSerial(_))
        ));
        let r = inv
            .revoke(&s1, Some(RevocationReason::KeyCompromise), "t", now)
            .unwrap();
        assert_eq!(r.status, Status::Revoked);
        assert!(matches!(
            inv.revoke(&s1, None, "t", now),
            Err(Error::AlreadyRevoked { .. })
        ));
        assert_eq!(inv.revoked_entries("ik").unwrap().len(), 1);
        assert_eq!(inv.next_crl_number("ik", "t", now).unwrap(), 1);
        assert_eq!(inv.next_crl_number("ik", "t", now).unwrap(), 2);
        drop(inv);
        let mut inv = Inventory::open(&dir.path().join("inv.db")).unwrap();
        assert_eq!(inv.next_crl_number("ik", "t", now).unwrap(), 3);
    }
}
