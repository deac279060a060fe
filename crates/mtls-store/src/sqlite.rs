//! The SQLite backend: the statements, and the writer thread that group-commits the
//! [`crate::Store`]'s writes.

use std::path::Path;
use std::str::FromStr;

use mtls_pki::revocation::{RevocationReason, RevokedEntry};
use mtls_pki::Serial;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use time::OffsetDateTime;

use crate::batch::{fail_all, unavailable_all, Job, WriteOp, WriteResult, MAX_BATCH};
use crate::{
    audit_detail_issue, from_ts, sans_from_json, sans_json, ts, AuditEntry, CertificateRecord,
    Error, IssueKind, ListFilter, NewCertificate, NewToken, Result, Revocation, RevocationEvent,
    TokenRecord,
};

fn db(context: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |source| Error::Database { context, source }
}

/// A row whose key is taken (a serial or token id that exists): not any constraint, so that
/// another violation (a NOT NULL, a CHECK) is reported as what it is, not as a serial to draw
/// again.
fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
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
    fingerprint       TEXT NOT NULL,
    pem               TEXT NOT NULL,
    issued_at         INTEGER NOT NULL,
    revoked_at        INTEGER,
    revocation_reason TEXT
);
CREATE INDEX IF NOT EXISTS certificates_not_after ON certificates(not_after);
-- Only revoked rows are indexed: issuing touches no page of this index.
CREATE INDEX IF NOT EXISTS certificates_revoked ON certificates(issuer_key, serial)
    WHERE revoked_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS crl_numbers (
    issuer_key  TEXT PRIMARY KEY,
    last_number INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    action  TEXT NOT NULL,
    serial  TEXT,
    actor   TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id             TEXT PRIMARY KEY,
    secret_hash    TEXT NOT NULL,
    name           TEXT NOT NULL,
    sans           TEXT NOT NULL,
    profile        TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    created_by     TEXT NOT NULL,
    expires_at     INTEGER NOT NULL,
    used_at        INTEGER,
    used_by_serial TEXT
);
CREATE TABLE IF NOT EXISTS revocation_epoch (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL
);
INSERT OR IGNORE INTO revocation_epoch (id, epoch) VALUES (1, 0);
-- Keys revoked as compromised (crate::key_id_of): never certified again.
CREATE TABLE IF NOT EXISTS compromised_keys (
    spki_sha256 TEXT PRIMARY KEY,
    serial      TEXT NOT NULL,
    at          INTEGER NOT NULL
);
";

const COLUMNS: &str = "serial, issuer_key, subject, sans, profile, not_before, not_after, fingerprint, pem, issued_at, revoked_at, revocation_reason";

/// Opens (creating if needed, mode 0600) a connection with the durability settings we rely on.
pub(crate) fn open_connection(path: &Path) -> Result<Connection> {
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
    migrate(&conn).map_err(open_err)?;
    Ok(conn)
}

/// Columns added after the first release (inventories made by earlier versions gain them).
/// In one write transaction: two processes opening an old inventory at once (a CA restarting
/// beside a cron `mtls crl`) would otherwise both see a column missing and one fail adding it.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let added = add_columns(conn);
    conn.execute_batch(if added.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
    added?;
    backfill_renews(conn)?;
    backfill_key_ids(conn)?;
    backfill_compromised_keys(conn)
}

/// Key identities of the certificates recorded before the `key_id` column, once per
/// inventory (every certificate parsed once: at the first start of this version).
fn backfill_key_ids(conn: &Connection) -> rusqlite::Result<()> {
    once(conn, crate::KEY_IDS_MIGRATION, |conn| {
        let rows: Vec<(String, String)> = conn
            .prepare("SELECT serial, pem FROM certificates WHERE key_id IS NULL AND pem <> ''")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut update = conn.prepare("UPDATE certificates SET key_id = ?1 WHERE serial = ?2")?;
        for (serial, pem) in rows {
            if let Some(key) = crate::key_id_of(&pem) {
                update.execute(params![key, serial])?;
            }
        }
        Ok(())
    })
}

/// Runs `backfill` once per inventory: in a write transaction that also records the
/// migration `name`, so that of two processes opening the inventory at once one backfills and
/// the other waits for the write lock (busy timeout) and finds the mark.
fn once(
    conn: &Connection,
    name: &str,
    backfill: impl FnOnce(&Connection) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let done = |conn: &Connection| {
        conn.prepare_cached("SELECT 1 FROM migrations WHERE name = ?1")
            .and_then(|mut s| s.exists([name]))
    };
    if done(conn)? {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let backfilled = (|| {
        if done(conn)? {
            return Ok(());
        }
        backfill(conn)?;
        conn.execute("INSERT INTO migrations (name) VALUES (?1)", [name])?;
        Ok(())
    })();
    match backfilled {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn add_columns(conn: &Connection) -> rusqlite::Result<()> {
    let has_seq: i64 = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('certificates') WHERE name = 'revocation_seq'",
        [],
        |r| r.get(0),
    )?;
    if has_seq == 0 {
        conn.execute_batch("ALTER TABLE certificates ADD COLUMN revocation_seq INTEGER;")?;
    }
    let has_renews: i64 = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('certificates') WHERE name = 'renews'",
        [],
        |r| r.get(0),
    )?;
    if has_renews == 0 {
        conn.execute_batch("ALTER TABLE certificates ADD COLUMN renews TEXT;")?;
    }
    let has_lineage: i64 = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('certificates') WHERE name = 'lineage'",
        [],
        |r| r.get(0),
    )?;
    if has_lineage == 0 {
        // (Renewals recorded before it count from their own serial on: see RECENT_RENEWALS_SQL.)
        conn.execute_batch("ALTER TABLE certificates ADD COLUMN lineage TEXT;")?;
    }
    let has_key_id: i64 = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('certificates') WHERE name = 'key_id'",
        [],
        |r| r.get(0),
    )?;
    if has_key_id == 0 {
        // The key's identity (crate::key_id_of): a keyCompromise revocation finds every
        // certificate of the key. Filled for earlier rows by backfill_key_ids. Not indexed:
        // an index on a random key dirties one more page per certificate in every commit
        // (measured: about 11 % of the sign endpoint's throughput), for a search made only by
        // keyCompromise revocations, which scan the table instead (revoke_same_key).
        conn.execute_batch("ALTER TABLE certificates ADD COLUMN key_id TEXT;")?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS certificates_revocation_seq ON certificates(revocation_seq)
             WHERE revocation_seq IS NOT NULL;
         CREATE INDEX IF NOT EXISTS certificates_renews ON certificates(renews)
             WHERE renews IS NOT NULL;
         CREATE INDEX IF NOT EXISTS certificates_lineage ON certificates(lineage, issued_at)
             WHERE lineage IS NOT NULL;
         CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY);",
    )?;
    Ok(())
}

/// Renewals recorded before the `renews` column existed are read back from their audit entries
/// ("… renews SERIAL"), once per inventory, so a key-compromise revocation follows them too.
fn backfill_renews(conn: &Connection) -> rusqlite::Result<()> {
    once(conn, "renews-from-audit", |conn| {
        let renewals: Vec<(String, String)> = conn
            .prepare(
                "SELECT a.serial, a.detail FROM audit a JOIN certificates c ON c.serial = a.serial
                 WHERE a.action = 'renew' AND c.renews IS NULL",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut update = conn
            .prepare("UPDATE certificates SET renews = ?1 WHERE serial = ?2 AND renews IS NULL")?;
        for (serial, detail) in renewals {
            if let Some(previous) = crate::renewed_in_audit(&detail) {
                update.execute(params![previous, serial])?;
            }
        }
        Ok(())
    })
}

/// Keys revoked for keyCompromise before `compromised_keys` existed, once per inventory.
fn backfill_compromised_keys(conn: &Connection) -> rusqlite::Result<()> {
    once(conn, crate::COMPROMISED_KEYS_MIGRATION, |conn| {
        let revoked: Vec<(String, String, i64)> = conn
            .prepare(
                "SELECT serial, pem, revoked_at FROM certificates
                 WHERE revocation_reason = 'keyCompromise' AND revoked_at IS NOT NULL",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (serial, pem, at) in revoked {
            if let Some(key) = crate::key_id_of(&pem) {
                conn.execute(
                    "INSERT OR IGNORE INTO compromised_keys (spki_sha256, serial, at)
                     VALUES (?1, ?2, ?3)",
                    params![key, serial, at],
                )?;
            }
        }
        Ok(())
    })
}

/// Revokes every other unexpired certificate of the key of `serial` (revoked for
/// keyCompromise), whatever its lineage: the same CSR signed twice, a key enrolled again.
fn revoke_same_key(
    conn: &Connection,
    serial: &str,
    pem: &str,
    actor: &str,
    now: OffsetDateTime,
) -> Result<Vec<String>> {
    let Some(key) = crate::key_id_of(pem) else {
        return Ok(Vec::new());
    };
    let others: Vec<String> = conn
        .prepare_cached(
            "SELECT serial FROM certificates
             WHERE key_id = ?1 AND revoked_at IS NULL AND not_after > ?2 AND serial <> ?3",
        )
        .and_then(|mut st| {
            st.query_map(params![key, ts(now), serial], |r| r.get(0))?
                .collect()
        })
        .map_err(db("find certificates of the key"))?;
    let reason = RevocationReason::KeyCompromise.to_string();
    let detail = format!("keyCompromise (the key of {serial})");
    for other in &others {
        mark_revoked(conn, other, Some(&reason), actor, &detail, now)?;
    }
    Ok(others)
}

/// Notes the key of `serial` (revoked for keyCompromise) as compromised.
fn note_compromised(conn: &Connection, serial: &str, pem: &str, now: OffsetDateTime) -> Result<()> {
    let Some(key) = crate::key_id_of(pem) else {
        return Ok(());
    };
    conn.prepare_cached(
        "INSERT OR IGNORE INTO compromised_keys (spki_sha256, serial, at) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut st| st.execute(params![key, serial, ts(now)]))
    .map_err(db("note the compromised key"))?;
    Ok(())
}

/// Refuses a certificate for a key revoked as compromised.
fn check_key(conn: &Connection, key: Option<&str>) -> Result<()> {
    let Some(key) = key else {
        return Ok(());
    };
    let compromised: Option<String> = conn
        .prepare_cached("SELECT serial FROM compromised_keys WHERE spki_sha256 = ?1")
        .and_then(|mut st| st.query_row(params![key], |r| r.get(0)).optional())
        .map_err(db("check the key"))?;
    match compromised {
        Some(serial) => Err(Error::KeyCompromised { serial }),
        None => Ok(()),
    }
}

fn row(row: &rusqlite::Row<'_>, now: OffsetDateTime) -> Result<CertificateRecord> {
    let get_s = |i| row.get::<_, String>(i).map_err(db("read row"));
    let sans = sans_from_json(&get_s(3)?)?;
    let not_after = from_ts(row.get(6).map_err(db("read row"))?)?;
    let revoked_at: Option<i64> = row.get(10).map_err(db("read row"))?;
    let revoked_at = revoked_at.map(from_ts).transpose()?;
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
        status: CertificateRecord::status_at(revoked_at, not_after, now),
        revoked_at,
        revocation_reason: row.get(11).map_err(db("read row"))?,
    })
}

pub(crate) fn get(
    conn: &Connection,
    serial: &Serial,
    now: OffsetDateTime,
) -> Result<Option<CertificateRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM certificates WHERE serial = ?1");
    let mut stmt = conn.prepare_cached(&sql).map_err(db("prepare get"))?;
    let mut rows = stmt.query(params![serial.to_string()]).map_err(db("get"))?;
    match rows.next().map_err(db("get"))? {
        Some(r) => Ok(Some(row(r, now)?)),
        None => Ok(None),
    }
}

pub(crate) fn list(
    conn: &Connection,
    filter: &ListFilter,
    now: OffsetDateTime,
) -> Result<Vec<CertificateRecord>> {
    let mut sql = format!("SELECT {COLUMNS} FROM certificates WHERE 1=1");
    if filter.revoked_only {
        sql.push_str(" AND revoked_at IS NOT NULL");
    }
    if filter.expiring_before.is_some() {
        sql.push_str(" AND revoked_at IS NULL AND not_after >= ?1 AND not_after <= ?2");
    }
    sql.push_str(" ORDER BY not_after ASC, serial ASC");
    let mut stmt = conn.prepare(&sql).map_err(db("prepare list"))?;
    let mut rows = match filter.expiring_before {
        Some(t) => stmt.query(params![ts(now), ts(t)]),
        None => stmt.query([]),
    }
    .map_err(db("list"))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(db("list"))? {
        out.push(row(r, now)?);
    }
    Ok(out)
}

/// See [`crate::InventoryCounts`].
pub(crate) fn counts(
    conn: &Connection,
    now: OffsetDateTime,
    windows: &[time::Duration],
) -> Result<crate::InventoryCounts> {
    let sql = |t: &str| t.replace("{now}", "?1").replace("{end}", "?2");
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    let (valid, expired, revoked): (i64, i64, i64) = conn
        .query_row(&sql(crate::COUNT_BY_STATUS_SQL), params![ts(now)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(db("count certificates"))?;
    let mut expiring = Vec::with_capacity(windows.len());
    for w in windows {
        let c: i64 = conn
            .query_row(
                &sql(crate::COUNT_EXPIRING_SQL),
                params![ts(now), ts(now + *w)],
                |r| r.get(0),
            )
            .map_err(db("count expiring certificates"))?;
        expiring.push(n(c));
    }
    Ok(crate::InventoryCounts {
        valid: n(valid),
        expired: n(expired),
        revoked: n(revoked),
        expiring,
    })
}

pub(crate) fn revoked_entries(conn: &Connection, issuer_key: &str) -> Result<Vec<RevokedEntry>> {
    let mut stmt = conn
        .prepare_cached(
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
        out.push(revoked_entry(&serial, at, reason.as_deref())?);
    }
    Ok(out)
}

pub(crate) fn revoked_entry(serial: &str, at: i64, reason: Option<&str>) -> Result<RevokedEntry> {
    Ok(RevokedEntry {
        serial: Serial::from_str(serial).map_err(|e| Error::Corrupt(e.to_string()))?,
        revoked_at: from_ts(at)?,
        reason: reason
            .map(RevocationReason::from_str)
            .transpose()
            .map_err(|e| Error::Corrupt(e.to_string()))?,
    })
}

pub(crate) fn token(conn: &Connection, id: &str) -> Result<Option<TokenRecord>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, secret_hash, name, sans, profile, created_at, created_by, expires_at,
                    used_at, used_by_serial FROM tokens WHERE id = ?1",
        )
        .map_err(db("prepare token"))?;
    let mut rows = stmt.query(params![id]).map_err(db("token"))?;
    let Some(r) = rows.next().map_err(db("token"))? else {
        return Ok(None);
    };
    let g = |i| r.get::<_, String>(i).map_err(db("read token"));
    let gi = |i| r.get::<_, i64>(i).map_err(db("read token"));
    let used_at: Option<i64> = r.get(8).map_err(db("read token"))?;
    Ok(Some(TokenRecord {
        id: g(0)?,
        secret_hash: g(1)?,
        name: g(2)?,
        sans: sans_from_json(&g(3)?)?,
        profile: g(4)?,
        created_at: from_ts(gi(5)?)?,
        created_by: g(6)?,
        expires_at: from_ts(gi(7)?)?,
        used_at: used_at.map(from_ts).transpose()?,
        used_by_serial: r.get(9).map_err(db("read token"))?,
    }))
}

pub(crate) fn audit(conn: &Connection, limit: u32) -> Result<Vec<AuditEntry>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, at, action, serial, actor, detail FROM audit ORDER BY id DESC LIMIT ?1",
        )
        .map_err(db("prepare audit"))?;
    let mut rows = stmt.query(params![limit]).map_err(db("audit"))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(db("audit"))? {
        out.push(AuditEntry {
            id: r.get(0).map_err(db("read audit"))?,
            at: from_ts(r.get(1).map_err(db("read audit"))?)?,
            action: r.get(2).map_err(db("read audit"))?,
            serial: r.get(3).map_err(db("read audit"))?,
            actor: r.get(4).map_err(db("read audit"))?,
            detail: r.get(5).map_err(db("read audit"))?,
        });
    }
    Ok(out)
}

pub(crate) fn revocations_after(
    conn: &Connection,
    after: i64,
    limit: u32,
) -> Result<Vec<RevocationEvent>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT revocation_seq, serial, issuer_key, revoked_at, revocation_reason
             FROM certificates WHERE revocation_seq > ?1 ORDER BY revocation_seq LIMIT ?2",
        )
        .map_err(db("prepare revocation feed"))?;
    let mut rows = stmt
        .query(params![after, limit])
        .map_err(db("revocation feed"))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(db("revocation feed"))? {
        let serial: String = r.get(1).map_err(db("read row"))?;
        let at: i64 = r.get(3).map_err(db("read row"))?;
        let reason: Option<String> = r.get(4).map_err(db("read row"))?;
        out.push(RevocationEvent {
            seq: r.get(0).map_err(db("read row"))?,
            issuer_key: r.get(2).map_err(db("read row"))?,
            entry: revoked_entry(&serial, at, reason.as_deref())?,
        });
    }
    Ok(out)
}

pub(crate) fn revocation_epoch(conn: &Connection) -> Result<i64> {
    conn.query_row("SELECT epoch FROM revocation_epoch WHERE id = 1", [], |r| {
        r.get(0)
    })
    .map_err(db("read revocation epoch"))
}

fn insert_audit(
    conn: &Connection,
    now: OffsetDateTime,
    action: &str,
    serial: Option<&str>,
    actor: &str,
    detail: &str,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit (at, action, serial, actor, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| s.execute(params![ts(now), action, serial, actor, detail]))
    .map_err(db("insert audit"))?;
    Ok(())
}

fn issue(
    conn: &Connection,
    cert: &NewCertificate<'_>,
    key: Option<&str>,
    kind: &IssueKind,
    actor: &str,
    now: OffsetDateTime,
) -> Result<()> {
    check_key(conn, key)?;
    let serial = cert.serial.to_string();
    let sans = sans_json(cert.sans)?;
    let renews = match kind {
        IssueKind::Renewal { previous, .. } => Some(previous.to_string()),
        _ => None,
    };
    match kind {
        IssueKind::Enrollment { token_id } => consume_token(conn, token_id, &serial, now)?,
        IssueKind::Renewal { previous, limit } => {
            let previous = previous.to_string();
            check_renewable(conn, &previous)?;
            check_renewal_limit(conn, previous, limit, now)?;
        }
        IssueKind::Direct => {}
    }
    let inserted = conn
        .prepare_cached(
            "INSERT INTO certificates (serial, issuer_key, subject, sans, profile, not_before, not_after,
                                       fingerprint, pem, issued_at, renews, lineage, key_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11,
                     (SELECT COALESCE(lineage, serial) FROM certificates WHERE serial = ?11), ?12)",
        )
        .and_then(|mut s| {
            s.execute(params![
                serial,
                cert.issuer_key,
                cert.subject,
                sans,
                cert.profile,
                ts(cert.not_before),
                ts(cert.not_after),
                cert.fingerprint,
                cert.pem,
                ts(now),
                renews,
                key
            ])
        });
    match inserted {
        Ok(_) => {}
        Err(e) if is_constraint(&e) => return Err(Error::DuplicateSerial(serial)),
        Err(e) => return Err(db("insert certificate")(e)),
    }
    let (action, detail) = audit_detail_issue(kind, cert);
    insert_audit(conn, now, &action, Some(&serial), actor, &detail)
}

/// Refuses a renewal from `previous` that is revoked or has a revoked descendant
/// ([`crate::RENEWABLE_SQL`]): in the writer's transaction, and on a reader for the early
/// check of [`crate::Store::check_renewal`].
pub(crate) fn check_renewable(conn: &Connection, previous: &str) -> Result<()> {
    let live = conn
        .prepare_cached(crate::RENEWABLE_SQL)
        .and_then(|mut s| s.exists(params![previous]))
        .map_err(db("check the renewed certificate"))?;
    if !live {
        return Err(Error::NotRenewable(previous.to_string()));
    }
    Ok(())
}

/// Refuses a renewal from `previous` once `limit` is reached. Inside the writer's transaction
/// (which holds SQLite's write lock): renewals in flight at the same time are counted one after
/// the other, even from several processes, so the limit is never overshot. On a reader, the
/// early check of [`crate::Store::check_renewal`].
pub(crate) fn check_renewal_limit(
    conn: &Connection,
    previous: String,
    limit: &crate::RenewalLimit,
    now: OffsetDateTime,
) -> Result<()> {
    let since = limit.window_start(now);
    let sql = crate::RECENT_RENEWALS_SQL
        .replace("{serial}", "?1")
        .replace("{since}", "?2");
    let recent: i64 = conn
        .prepare_cached(&sql)
        .and_then(|mut s| s.query_row(params![previous, since], |r| r.get(0)))
        .map_err(db("count recent renewals"))?;
    if recent < i64::from(limit.max) {
        return Ok(());
    }
    let slot: Option<i64> = match limit.max.checked_sub(1) {
        None => None,
        Some(nth) => {
            let sql = crate::RENEWAL_SLOT_SQL
                .replace("{serial}", "?1")
                .replace("{since}", "?2")
                .replace("{nth}", "?3");
            conn.query_row(&sql, params![previous, since, nth], |r| r.get(0))
                .optional()
                .map_err(db("look up recent renewals"))?
        }
    };
    Err(limit.refusal(previous, slot, now))
}

fn consume_token(conn: &Connection, id: &str, serial: &str, now: OffsetDateTime) -> Result<()> {
    // The common case in one cached statement; the reason for a refusal is looked up after.
    let used = conn
        .prepare_cached(
            "UPDATE tokens SET used_at = ?1, used_by_serial = ?2
             WHERE id = ?3 AND used_at IS NULL AND expires_at > ?1",
        )
        .and_then(|mut s| s.execute(params![ts(now), serial, id]))
        .map_err(db("use token"))?;
    if used == 1 {
        return Ok(());
    }
    let current: Option<(Option<i64>, i64)> = conn
        .prepare_cached("SELECT used_at, expires_at FROM tokens WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(db("look up token"))?;
    match current {
        None => Err(Error::UnknownToken),
        Some((Some(at), _)) => Err(Error::TokenUsed {
            id: id.to_string(),
            at: from_ts(at)?,
        }),
        Some((None, exp)) => Err(Error::TokenExpired {
            id: id.to_string(),
            at: from_ts(exp)?,
        }),
    }
}

fn revoke(
    conn: &Connection,
    serial: &Serial,
    issuer_key: Option<&str>,
    reason: Option<RevocationReason>,
    actor: &str,
    now: OffsetDateTime,
) -> Result<Revocation> {
    let s = serial.to_string();
    let current: Option<(Option<i64>, String, Option<String>)> = conn
        .query_row(
            "SELECT revoked_at, issuer_key, revocation_reason FROM certificates WHERE serial = ?1",
            params![s],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(db("look up serial"))?;
    match current {
        None => return Err(Error::UnknownSerial(s)),
        Some((_, ik, _)) if issuer_key.is_some_and(|k| k != ik) => {
            return Err(Error::UnknownSerial(s))
        }
        // Found compromised after it was revoked for another reason (superseded, say): the
        // reason becomes keyCompromise (RFC 5280 5.3.1 allows that change), the key is never
        // certified again, and the certificates sharing it are revoked.
        Some((Some(_), _, old_reason))
            if reason == Some(RevocationReason::KeyCompromise)
                && old_reason.as_deref() != Some("keyCompromise") =>
        {
            let reason_s = RevocationReason::KeyCompromise.to_string();
            conn.execute(
                "UPDATE certificates SET revocation_reason = ?1 WHERE serial = ?2",
                params![reason_s, s],
            )
            .map_err(db("mark the key compromised"))?;
            insert_audit(
                conn,
                now,
                "revoke",
                Some(&s),
                actor,
                "reason now keyCompromise",
            )?;
            let record = get(conn, serial, now)?.ok_or(Error::UnknownSerial(s.clone()))?;
            note_compromised(conn, &s, &record.pem, now)?;
            let mut also_revoked = revoke_lineage(
                conn,
                &s,
                &record.pem,
                crate::LineageScope::SameKey,
                Some(&reason_s),
                actor,
                now,
            )?;
            also_revoked.extend(revoke_same_key(conn, &s, &record.pem, actor, now)?);
            return Ok(Revocation {
                record,
                also_revoked,
            });
        }
        Some((Some(at), _, _)) => {
            return Err(Error::AlreadyRevoked {
                serial: s,
                at: from_ts(at)?,
            })
        }
        Some((None, _, _)) => {}
    }
    let reason_s = reason.map(|r| r.to_string());
    let detail = reason_s.clone().unwrap_or_default();
    mark_revoked(conn, &s, reason_s.as_deref(), actor, &detail, now)?;
    let record = get(conn, serial, now)?.ok_or(Error::UnknownSerial(s.clone()))?;
    if reason == Some(RevocationReason::KeyCompromise) {
        note_compromised(conn, &s, &record.pem, now)?;
    }
    let mut also_revoked = match crate::LineageScope::of(reason) {
        Some(scope) => revoke_lineage(
            conn,
            &s,
            &record.pem,
            scope,
            reason_s.as_deref(),
            actor,
            now,
        )?,
        None => Vec::new(),
    };
    if reason == Some(RevocationReason::KeyCompromise) {
        also_revoked.extend(revoke_same_key(conn, &s, &record.pem, actor, now)?);
    }
    Ok(Revocation {
        record,
        also_revoked,
    })
}

/// See [`crate::Revocation::also_revoked`]: `serial` is revoked already.
#[allow(clippy::too_many_arguments)]
fn revoke_lineage(
    conn: &Connection,
    serial: &str,
    pem: &str,
    scope: crate::LineageScope,
    reason: Option<&str>,
    actor: &str,
    now: OffsetDateTime,
) -> Result<Vec<String>> {
    let detail = crate::lineage_revocation_detail(reason, serial);
    let mut revoked = Vec::new();
    // Up: the certificates it renews (with the same key, for a key compromise).
    let key = crate::spki_of(pem);
    let mut top = serial.to_string();
    for _ in 0..crate::MAX_RENEWAL_LINEAGE {
        let parent: Option<(String, String, Option<i64>, i64)> = conn
            .prepare_cached(
                "SELECT p.serial, p.pem, p.revoked_at, p.not_after FROM certificates c
                 JOIN certificates p ON p.serial = c.renews WHERE c.serial = ?1",
            )
            .and_then(|mut st| {
                st.query_row(params![top], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()
            })
            .map_err(db("find the renewed certificate"))?;
        let Some((parent, parent_pem, revoked_at, not_after)) = parent else {
            break;
        };
        if scope.stops_at_other_keys() && (key.is_none() || crate::spki_of(&parent_pem) != key) {
            break;
        }
        if revoked_at.is_none() && scope.reaches(not_after, now) {
            mark_revoked(conn, &parent, reason, actor, &detail, now)?;
            revoked.push(parent.clone());
        }
        top = parent;
    }
    // Down: everything renewed from the top one, directly or through other renewals.
    // However many there are: a revocation must not fail because someone holding the key
    // renewed many times. Each certificate is visited once (a lineage has no cycles, but a
    // damaged one must not loop).
    let mut seen = std::collections::HashSet::from([top.clone()]);
    let mut frontier = vec![top];
    while let Some(parent) = frontier.pop() {
        let children: Vec<(String, Option<i64>, i64)> = conn
            .prepare_cached(
                "SELECT serial, revoked_at, not_after FROM certificates WHERE renews = ?1",
            )
            .and_then(|mut st| {
                st.query_map(params![parent], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .map_err(db("find renewals"))?;
        for (child, revoked_at, not_after) in children {
            if revoked_at.is_none() && scope.reaches(not_after, now) {
                mark_revoked(conn, &child, reason, actor, &detail, now)?;
                revoked.push(child.clone());
            }
            if seen.insert(child.clone()) {
                frontier.push(child);
            }
        }
    }
    Ok(revoked)
}

/// Marks `serial` revoked with the next feed sequence number, and audits it.
fn mark_revoked(
    conn: &Connection,
    serial: &str,
    reason: Option<&str>,
    actor: &str,
    detail: &str,
    now: OffsetDateTime,
) -> Result<()> {
    conn.execute(
        "UPDATE revocation_epoch SET epoch = epoch + 1 WHERE id = 1",
        [],
    )
    .map_err(db("bump revocation epoch"))?;
    // The feed's sequence number: the epoch this revocation moved the counter to.
    let seq = revocation_epoch(conn)?;
    conn.execute(
        "UPDATE certificates SET revoked_at = ?1, revocation_reason = ?2, revocation_seq = ?3
         WHERE serial = ?4",
        params![ts(now), reason, seq, serial],
    )
    .map_err(db("revoke"))?;
    insert_audit(conn, now, "revoke", Some(serial), actor, detail)
}

fn create_token(conn: &Connection, t: &NewToken, now: OffsetDateTime) -> Result<()> {
    let r = conn.execute(
        "INSERT INTO tokens (id, secret_hash, name, sans, profile, created_at, created_by, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            t.id,
            t.secret_hash,
            t.name,
            sans_json(&t.sans)?,
            t.profile,
            ts(now),
            t.created_by,
            ts(t.expires_at)
        ],
    );
    match r {
        Ok(_) => {}
        Err(e) if is_constraint(&e) => return Err(Error::DuplicateToken(t.id.clone())),
        Err(e) => return Err(db("insert token")(e)),
    }
    insert_audit(
        conn,
        now,
        "token",
        None,
        &t.created_by,
        &format!(
            "token {} for {} ({}) expires {}",
            t.id, t.name, t.profile, t.expires_at
        ),
    )
}

fn next_crl_number(
    conn: &Connection,
    issuer_key: &str,
    actor: &str,
    now: OffsetDateTime,
) -> Result<u64> {
    let next = crl_number(conn, issuer_key)?
        .unwrap_or(0)
        .checked_add(1)
        .ok_or(Error::Corrupt("CRL number overflow".into()))?;
    let next = i64::try_from(next).map_err(|_| Error::Corrupt("CRL number overflow".into()))?;
    conn.execute(
        "INSERT INTO crl_numbers (issuer_key, last_number) VALUES (?1, ?2)
         ON CONFLICT(issuer_key) DO UPDATE SET last_number = excluded.last_number",
        params![issuer_key, next],
    )
    .map_err(db("write CRL number"))?;
    insert_audit(conn, now, "crl", None, actor, &format!("CRL number {next}"))?;
    u64::try_from(next).map_err(|_| Error::Corrupt("negative CRL number".into()))
}

/// The last CRL number allocated for `issuer_key`.
pub(crate) fn crl_number(conn: &Connection, issuer_key: &str) -> Result<Option<u64>> {
    let last: Option<i64> = conn
        .query_row(
            "SELECT last_number FROM crl_numbers WHERE issuer_key = ?1",
            params![issuer_key],
            |r| r.get(0),
        )
        .optional()
        .map_err(db("read CRL number"))?;
    last.map(|n| u64::try_from(n).map_err(|_| Error::Corrupt("negative CRL number".into())))
        .transpose()
}

/// See [`WriteOp::Reconcile`].
fn reconcile(
    conn: &Connection,
    issuer_key: &str,
    entries: &[mtls_pki::revocation::RevokedEntry],
    crl_number: u64,
    epoch: i64,
    actor: &str,
    now: OffsetDateTime,
) -> Result<u64> {
    // The epoch first: re-applied revocations get feed sequence numbers above every one a
    // subscriber may already have seen, so none is skipped as old.
    conn.execute(
        "UPDATE revocation_epoch SET epoch = MAX(epoch, ?1) WHERE id = 1",
        params![epoch],
    )
    .map_err(db("raise the revocation epoch"))?;
    let mut applied = 0u64;
    for e in entries {
        let s = e.serial.to_string();
        let current: Option<Option<i64>> = conn
            .query_row(
                "SELECT revoked_at FROM certificates WHERE serial = ?1",
                params![s],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("look up serial"))?;
        if matches!(current, Some(Some(_))) {
            continue;
        }
        conn.execute(
            "UPDATE revocation_epoch SET epoch = epoch + 1 WHERE id = 1",
            [],
        )
        .map_err(db("bump revocation epoch"))?;
        let seq = revocation_epoch(conn)?;
        let reason = e.reason.map(|r| r.to_string());
        let at = ts(e.revoked_at);
        if current.is_some() {
            conn.execute(
                "UPDATE certificates SET revoked_at = ?1, revocation_reason = ?2, revocation_seq = ?3
                 WHERE serial = ?4",
                params![at, reason, seq, s],
            )
            .map_err(db("re-apply a revocation"))?;
            if e.reason == Some(RevocationReason::KeyCompromise) {
                let pem: String = conn
                    .query_row(
                        "SELECT pem FROM certificates WHERE serial = ?1",
                        params![s],
                        |r| r.get(0),
                    )
                    .map_err(db("read the revoked certificate"))?;
                note_compromised(conn, &s, &pem, now)?;
            }
        } else {
            // Issued after the backup was taken: known only from the CRL entry.
            conn.execute(
                "INSERT INTO certificates (serial, issuer_key, subject, sans, profile, not_before,
                     not_after, fingerprint, pem, issued_at, revoked_at, revocation_reason,
                     revocation_seq)
                 VALUES (?1, ?2, ?3, '[]', 'unknown', ?4, ?5, ?6, '', ?4, ?4, ?7, ?8)",
                params![
                    s,
                    issuer_key,
                    crate::RESTORED_SUBJECT,
                    at,
                    ts(crate::far_after(e.revoked_at)),
                    format!("unknown:{s}"),
                    reason,
                    seq
                ],
            )
            .map_err(db("record a revocation known only from the CRL"))?;
        }
        applied += 1;
    }
    if !issuer_key.is_empty() {
        let n = i64::try_from(crl_number).map_err(|_| Error::Corrupt("CRL number".into()))?;
        conn.execute(
            "INSERT INTO crl_numbers (issuer_key, last_number) VALUES (?1, ?2)
             ON CONFLICT(issuer_key) DO UPDATE SET last_number = MAX(last_number, excluded.last_number)",
            params![issuer_key, n],
        )
        .map_err(db("raise the CRL number"))?;
    }
    insert_audit(
        conn,
        now,
        "reconcile",
        None,
        actor,
        &format!("{applied} revocations re-applied from published CRL {crl_number}"),
    )?;
    Ok(applied)
}

fn apply(conn: &Connection, op: &WriteOp, now: OffsetDateTime) -> Result<WriteResult> {
    match op {
        WriteOp::Issue {
            cert,
            key,
            kind,
            actor,
        } => issue(conn, &cert.borrowed(), key.as_deref(), kind, actor, now)
            .map(|()| WriteResult::Done),
        WriteOp::Revoke {
            serial,
            issuer_key,
            reason,
            actor,
        } => revoke(conn, serial, issuer_key.as_deref(), *reason, actor, now)
            .map(|r| WriteResult::Revoked(Box::new(r))),
        WriteOp::CreateToken { token } => {
            create_token(conn, token, now).map(|()| WriteResult::Done)
        }
        WriteOp::CrlSnapshot { issuer_key, actor } => {
            // Inside the writer's IMMEDIATE transaction: no revocation commits in between.
            let number = next_crl_number(conn, issuer_key, actor, now)?;
            Ok(WriteResult::Crl(number, revoked_entries(conn, issuer_key)?))
        }
        WriteOp::Reconcile {
            issuer_key,
            entries,
            crl_number,
            epoch,
            actor,
        } => reconcile(conn, issuer_key, entries, *crl_number, *epoch, actor, now)
            .map(WriteResult::Number),
    }
}

/// Runs a statement from the connection's cache (savepoints are issued for every operation:
/// parsing them each time showed up in profiles).
fn exec_cached(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
        .map_err(db("savepoint"))
}

/// Applies `ops` in one IMMEDIATE transaction, one savepoint each (none for a batch of one),
/// and commits once.
fn apply_batch(
    conn: &mut Connection,
    jobs: &[(&WriteOp, OffsetDateTime)],
) -> Vec<Result<WriteResult>> {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return unavailable_all(jobs.len(), "begin a transaction", &e.to_string()),
    };
    if let [(op, now)] = jobs {
        // Alone in its batch: the transaction is the savepoint.
        let r = apply(&tx, op, *now);
        if r.is_err() {
            return vec![r];
        }
        return match tx.commit() {
            Ok(()) => vec![r],
            Err(e) => vec![Err(Error::Unavailable {
                context: "commit",
                detail: e.to_string(),
            })],
        };
    }
    let mut results = Vec::with_capacity(jobs.len());
    for (op, now) in jobs {
        let r = exec_cached(&tx, "SAVEPOINT op").and_then(|()| apply(&tx, op, *now));
        let end = if r.is_ok() {
            exec_cached(&tx, "RELEASE op")
        } else {
            exec_cached(&tx, "ROLLBACK TO op").and_then(|()| exec_cached(&tx, "RELEASE op"))
        };
        // A savepoint that cannot be closed, or a transaction SQLite rolled back by itself (a
        // full disk, an I/O error): what came before is lost or in doubt, and each later
        // savepoint would commit on its own. Nothing of the batch is committed or reported
        // done (the transaction rolls back as it is dropped).
        if let Err(e) = end {
            return unavailable_all(jobs.len(), "close a savepoint", &e.to_string());
        }
        if tx.is_autocommit() {
            return unavailable_all(jobs.len(), "write", "SQLite rolled the transaction back");
        }
        results.push(r);
    }
    if let Err(e) = tx.commit() {
        fail_all(&mut results, "commit", &e.to_string());
    }
    results
}

/// The writer thread: drains queued jobs into batches until every sender is gone.
pub(crate) fn run_writer(mut conn: Connection, mut rx: tokio::sync::mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        // Let the threads that queue writes run first: when they share a core with this one
        // (a loaded or small machine), waking up straight away commits batches of one while
        // the other requests in flight queue up behind the fsync. Free when a core is idle.
        std::thread::yield_now();
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let ops: Vec<_> = jobs.iter().map(|j| (&j.op, j.now)).collect();
        let results = apply_batch(&mut conn, &ops);
        for (job, result) in jobs.drain(..).zip(results) {
            // The caller may have given up (timeout); its write stands either way.
            let _ = job.reply.send(result);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::{CertificateToRecord, Error, IssueKind, ListFilter, Location, Status, Store};
    use mtls_pki::revocation::RevocationReason;
    use mtls_pki::Serial;
    use time::OffsetDateTime;

    fn sample(serial: &Serial, fp: &str) -> CertificateToRecord {
        CertificateToRecord {
            serial: serial.clone(),
            issuer_key: "ik".into(),
            subject: "CN=a".into(),
            sans: vec![],
            profile: "client".into(),
            not_before: OffsetDateTime::UNIX_EPOCH,
            not_after: OffsetDateTime::UNIX_EPOCH + time::Duration::days(30),
            fingerprint: fp.into(),
            pem: "pem".into(),
            key_id: None,
        }
    }

    #[tokio::test]
    async fn revocations_get_feed_sequence_numbers_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let inv = Store::open(&Location::Sqlite(dir.path().join("inv.db")))
            .await
            .unwrap();
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
        let mut serials = Vec::new();
        for i in 0..5 {
            let s = Serial::random().unwrap();
            inv.record_issued(sample(&s, &format!("f{i}")), IssueKind::Direct, "t", now)
                .await
                .unwrap();
            serials.push(s);
        }
        assert!(inv.revocations_after(0, 10).await.unwrap().is_empty());
        for s in &serials {
            inv.revoke(s, None, Some(RevocationReason::KeyCompromise), "t", now)
                .await
                .unwrap();
        }
        // A refused revocation (already revoked) takes no sequence number.
        assert!(inv.revoke(&serials[0], None, None, "t", now).await.is_err());
        let all = inv.revocations_after(0, 10).await.unwrap();
        let seqs: Vec<i64> = all.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        let got: Vec<&Serial> = all.iter().map(|e| &e.entry.serial).collect();
        assert_eq!(got, serials.iter().collect::<Vec<_>>());
        assert_eq!(all[0].issuer_key, "ik");
        assert_eq!(all[0].entry.reason, Some(RevocationReason::KeyCompromise));
        assert_eq!(inv.revocation_epoch().await.unwrap(), 5);
        let page = inv.revocations_after(2, 2).await.unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert!(inv.revocations_after(5, 10).await.unwrap().is_empty());
    }

    /// Only a taken key is a duplicate serial (the CA draws another): any other constraint
    /// that refuses the row (here a trigger's) is an error of its own.
    #[tokio::test]
    async fn only_a_taken_serial_is_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inv.db");
        let inv = Store::open(&Location::Sqlite(path.clone())).await.unwrap();
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON certificates
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
        let s = Serial::random().unwrap();
        let e = inv
            .record_issued(sample(&s, "f"), IssueKind::Direct, "test", now)
            .await
            .unwrap_err();
        assert!(!matches!(e, Error::DuplicateSerial(_)), "{e:?}");
    }

    #[tokio::test]
    async fn record_list_revoke_and_crl_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::Sqlite(dir.path().join("inv.db"));
        let inv = Store::open(&location).await.unwrap();
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
        let s1 = Serial::random().unwrap();
        let direct = || IssueKind::Direct;
        inv.record_issued(sample(&s1, "f1"), direct(), "test", now)
            .await
            .unwrap();
        assert!(matches!(
            inv.record_issued(sample(&s1, "f2"), direct(), "test", now)
                .await,
            Err(Error::DuplicateSerial(_))
        ));
        let all = inv.list(&ListFilter::default(), now).await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].status, Status::Valid);
        let unknown = Serial::random().unwrap();
        assert!(matches!(
            inv.revoke(&unknown, None, None, "t", now).await,
            Err(Error::UnknownSerial(_))
        ));
        let r = inv
            .revoke(&s1, None, Some(RevocationReason::KeyCompromise), "t", now)
            .await
            .unwrap();
        assert_eq!(r.record.status, Status::Revoked);
        assert!(matches!(
            inv.revoke(&s1, None, None, "t", now).await,
            Err(Error::AlreadyRevoked { .. })
        ));
        assert_eq!(inv.revoked_entries("ik").await.unwrap().len(), 1);
        assert_eq!(inv.revocation_epoch().await.unwrap(), 1);
        assert_eq!(inv.next_crl_number("ik", "t", now).await.unwrap(), 1);
        assert_eq!(inv.next_crl_number("ik", "t", now).await.unwrap(), 2);
        drop(inv);
        let inv = Store::open(&location).await.unwrap();
        assert_eq!(inv.next_crl_number("ik", "t", now).await.unwrap(), 3);
        let actions: Vec<String> = inv
            .audit(10)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.action)
            .collect();
        assert_eq!(actions, ["crl", "crl", "crl", "revoke", "issue"]);
    }

    /// A list of the whole inventory runs beside the point reads, not in front of them: on a
    /// single-threaded runtime, a token lookup started while a 50,000-row list is under way
    /// answers before the list does (in place, the list held the thread until it finished).
    #[tokio::test(flavor = "current_thread")]
    async fn a_long_list_does_not_hold_up_point_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inv.db");
        let inv = Store::open(&Location::Sqlite(path.clone())).await.unwrap();
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
        {
            // Straight into the file: the writer's batching is not what is tested.
            let mut c = rusqlite::Connection::open(&path).unwrap();
            let tx = c.transaction().unwrap();
            let mut insert = tx
                .prepare(
                    "INSERT INTO certificates (serial, issuer_key, subject, sans, profile,
                         not_before, not_after, fingerprint, pem, issued_at)
                     VALUES (?1, 'ik', 'CN=a', '[]', 'client', 0, 9999999999, ?1, 'pem', 0)",
                )
                .unwrap();
            for i in 0..50_000u32 {
                insert.execute([format!("{i:040x}")]).unwrap();
            }
            drop(insert);
            tx.commit().unwrap();
        }
        let list = tokio::spawn({
            let inv = inv.clone();
            async move { inv.list(&ListFilter::default(), now).await }
        });
        // The list task runs now, up to its first await.
        tokio::task::yield_now().await;
        assert!(inv.token("nope").await.unwrap().is_none());
        assert!(!list.is_finished(), "the token lookup waited for the list");
        assert_eq!(list.await.unwrap().unwrap().len(), 50_000);
    }

    /// Consuming a token is one statement when it succeeds; each refusal keeps its own reason
    /// and records nothing.
    #[tokio::test]
    async fn token_refusals_keep_their_reason_and_record_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let inv = Store::open(&Location::Sqlite(dir.path().join("inv.db")))
            .await
            .unwrap();
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
        for (id, ttl) in [("live", 600), ("old", 60)] {
            let token = crate::NewToken {
                id: id.into(),
                secret_hash: "h".into(),
                name: "a".into(),
                sans: vec![],
                profile: "client".into(),
                expires_at: now + time::Duration::seconds(ttl),
                created_by: "test".into(),
            };
            inv.create_token(token, now).await.unwrap();
        }
        let enroll = |id: &str| IssueKind::Enrollment {
            token_id: id.into(),
        };
        let later = now + time::Duration::seconds(120);
        let s = || Serial::random().unwrap();
        inv.record_issued(sample(&s(), "f1"), enroll("live"), "t", later)
            .await
            .unwrap();
        let refused = [
            (enroll("live"), "used"),
            (enroll("old"), "expired"),
            (enroll("nope"), "unknown"),
        ];
        for (kind, why) in refused {
            let e = inv
                .record_issued(sample(&s(), "f2"), kind, "t", later)
                .await
                .unwrap_err();
            let ok = match why {
                "used" => matches!(e, Error::TokenUsed { .. }),
                "expired" => matches!(e, Error::TokenExpired { .. }),
                _ => matches!(e, Error::UnknownToken),
            };
            assert!(ok, "{why}: {e:?}");
        }
        let all = inv.list(&ListFilter::default(), later).await.unwrap();
        assert_eq!(all.len(), 1, "only the first enrollment is recorded");
        let old = inv.token("old").await.unwrap().unwrap();
        assert!(old.used_at.is_none(), "a refused token is not consumed");
    }
}
