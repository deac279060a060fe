//! The PostgreSQL backend, for several CA instances sharing one inventory.
//!
//! Uniqueness and ordering come from the database, not from the instance: serials are a primary
//! key, a token is consumed by a conditional `UPDATE` (its row lock makes a racing instance wait,
//! then find it used), certificates are locked (`FOR UPDATE`) before a revocation, and CRL numbers
//! are incremented by one atomic upsert. Every statement has a deadline, so a database that went away
//! turns into [`Error::Unavailable`] instead of a hung request; connections are re-established on
//! the next use.

use std::sync::Arc;
use std::time::Duration;

use mtls_pki::revocation::{RevocationReason, RevokedEntry};
use mtls_pki::Serial;
use std::collections::HashMap;
use time::OffsetDateTime;
use tokio::sync::{mpsc, Mutex};
use tokio_postgres::error::SqlState;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

use crate::batch::{fail_all, unavailable_all, Job, WriteOp, WriteResult, MAX_BATCH};
use crate::{
    audit_detail_issue, from_ts, sans_from_json, sans_json, sqlite::revoked_entry, ts, AuditEntry,
    CertificateRecord, CertificateToRecord, Error, IssueKind, ListFilter, NewToken, Result,
    RevocationEvent, TokenRecord,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long creating or upgrading the schema may take (see `create_schema`).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(600);
/// How every write transaction starts. READ COMMITTED is what they are written for (a fresh
/// snapshot per statement, locked rows re-read), whatever the server's default. The server
/// ends what waits or runs too long, before this side's own deadline
/// ([`STATEMENT_TIMEOUT`]): a lock wait behind another instance is then an error of that one
/// statement (its savepoint is rolled back, the rest of the batch goes on) rather than a
/// dropped connection failing the whole batch. `SET LOCAL`, per transaction: session settings
/// would not follow a transaction-pooling proxy (pgbouncer) and would leak to its other
/// clients.
/// A server (or role, or database) configured with `synchronous_commit = off` would answer a
/// `COMMIT` before the write is on disk: a certificate handed out, a revocation acknowledged,
/// then lost in a crash. Raised to `on` for these transactions; any stronger setting
/// (`remote_write`, `remote_apply`, for a synchronous standby) is kept.
macro_rules! begin_sql {
    () => {
        "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '10s'; \
         SET LOCAL statement_timeout = '13s'; \
         SELECT set_config('synchronous_commit', 'on', true) \
             WHERE current_setting('synchronous_commit') = 'off'"
    };
}
const BEGIN: &str = begin_sql!();
/// Rolls back and starts again (a batch of one whose statement failed).
const ROLLBACK_BEGIN: &str = concat!("ROLLBACK; ", begin_sql!());

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS certificates (
    serial            TEXT PRIMARY KEY,
    issuer_key        TEXT NOT NULL,
    subject           TEXT NOT NULL,
    sans              TEXT NOT NULL,
    profile           TEXT NOT NULL,
    not_before        BIGINT NOT NULL,
    not_after         BIGINT NOT NULL,
    fingerprint       TEXT NOT NULL UNIQUE,
    pem               TEXT NOT NULL,
    issued_at         BIGINT NOT NULL,
    revoked_at        BIGINT,
    revocation_reason TEXT
);
CREATE INDEX IF NOT EXISTS certificates_not_after ON certificates(not_after);
CREATE INDEX IF NOT EXISTS certificates_issuer_revoked ON certificates(issuer_key, revoked_at);
CREATE TABLE IF NOT EXISTS crl_numbers (
    issuer_key  TEXT PRIMARY KEY,
    last_number BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id      BIGSERIAL PRIMARY KEY,
    at      BIGINT NOT NULL,
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
    created_at     BIGINT NOT NULL,
    created_by     TEXT NOT NULL,
    expires_at     BIGINT NOT NULL,
    used_at        BIGINT,
    used_by_serial TEXT
);
CREATE TABLE IF NOT EXISTS revocation_epoch (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL
);
INSERT INTO revocation_epoch (id, epoch) VALUES (1, 0) ON CONFLICT DO NOTHING;
-- The revocation feed's sequence: the epoch a revocation moved the counter to. The epoch row is
-- locked until the revoking transaction commits, so sequence numbers commit in order.
ALTER TABLE certificates ADD COLUMN IF NOT EXISTS revocation_seq BIGINT;
CREATE INDEX IF NOT EXISTS certificates_revocation_seq ON certificates(revocation_seq)
    WHERE revocation_seq IS NOT NULL;
-- The certificate a renewal renewed: a key-compromise revocation follows it.
ALTER TABLE certificates ADD COLUMN IF NOT EXISTS renews TEXT;
CREATE INDEX IF NOT EXISTS certificates_renews ON certificates(renews) WHERE renews IS NOT NULL;
-- The first certificate of a renewal's lineage: the renewal limit counts per lineage.
ALTER TABLE certificates ADD COLUMN IF NOT EXISTS lineage TEXT;
CREATE INDEX IF NOT EXISTS certificates_lineage ON certificates(lineage, issued_at)
    WHERE lineage IS NOT NULL;
-- Renewals recorded before that column: read back from their audit entries (detail ending in
-- ' renews SERIAL', see audit_detail_issue), once per inventory (the mark's insert gates the
-- update).
CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY);
-- The key's identity (crate::key_id_of): a keyCompromise revocation finds every certificate
-- of the key. Filled for earlier rows by backfill_key_ids. Indexed here (inventories shared
-- by several instances are the large ones; SQLite scans instead: see its add_columns).
ALTER TABLE certificates ADD COLUMN IF NOT EXISTS key_id TEXT;
CREATE INDEX IF NOT EXISTS certificates_key_id ON certificates(key_id) WHERE key_id IS NOT NULL;
-- Keys revoked as compromised (crate::key_id_of): never certified again. Filled from earlier
-- keyCompromise revocations by create_schema (the key is read from the PEM, in Rust).
CREATE TABLE IF NOT EXISTS compromised_keys (
    spki_sha256 TEXT PRIMARY KEY,
    serial      TEXT NOT NULL,
    at          BIGINT NOT NULL
);
WITH mark AS (
    INSERT INTO migrations (name) VALUES ('renews-from-audit') ON CONFLICT DO NOTHING RETURNING name
)
UPDATE certificates c SET renews = substring(a.detail from ' renews ([0-9a-f]+)$')
    FROM audit a, mark
    WHERE a.action = 'renew' AND a.serial = c.serial AND c.renews IS NULL
      AND a.detail ~ ' renews [0-9a-f]+$';
";

/// The mark the schema above leaves once applied, from its text (any change to it makes a new
/// mark, so the change is applied): opening an inventory that has it runs no DDL, which would
/// take `certificates`' heaviest lock (behind every running statement, ahead of every other
/// instance's) and its ownership, at every start of every instance and CLI command.
fn schema_mark() -> String {
    let hash = mtls_pki::inspect::sha256_hex(SCHEMA.as_bytes());
    format!("schema-{}", hash.get(..16).unwrap_or(&hash))
}

const COLUMNS: &str = "serial, issuer_key, subject, sans, profile, not_before, not_after, fingerprint, pem, issued_at, revoked_at, revocation_reason";

/// The error and its causes ("error performing TLS handshake: invalid peer certificate: …").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn unavailable(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |e| Error::Unavailable {
        context,
        detail: with_causes(&e),
    }
}

async fn deadline<T>(
    context: &'static str,
    f: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, f).await {
        Ok(r) => r.map_err(unavailable(context)),
        Err(_) => Err(Error::Unavailable {
            context,
            detail: "timed out".into(),
        }),
    }
}

/// Connects and creates the schema (serialised by an advisory lock: instances may start at once).
/// Where and how to connect.
#[derive(Clone, Debug)]
pub(crate) struct PgTarget {
    pub url: String,
    /// With TLS the connection requires it (`sslmode=require` semantics plus verification of the
    /// server certificate); without, it is plaintext (loopback or a unix socket).
    pub tls: Option<crate::PgTls>,
}

fn timed_out() -> Error {
    Error::Unavailable {
        context: "connect",
        detail: "timed out".into(),
    }
}

pub(crate) async fn connect(target: &PgTarget) -> Result<Client> {
    let mut config: tokio_postgres::Config = target
        .url
        .parse()
        .map_err(|e: tokio_postgres::Error| Error::InvalidLocation(e.to_string()))?;
    // A primary that went silent (failover, partition) must show as a closed connection
    // within seconds, so that the next use reconnects: TCP's own defaults take 15 minutes of
    // retransmissions, keepalives two hours. What the URL sets is kept.
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(STATEMENT_TIMEOUT);
    }
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(Duration::from_secs(30));
        config.keepalives_interval(Duration::from_secs(10));
        config.keepalives_retries(3);
    }
    match &target.tls {
        None => connect_with(&config, NoTls).await,
        Some(tls) => {
            // No fallback to plaintext once TLS is configured.
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            connect_with(&config, tls.clone()).await
        }
    }
}

async fn connect_with<T>(config: &tokio_postgres::Config, tls: T) -> Result<Client>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tls))
        .await
        .map_err(|_| timed_out())?
        .map_err(unavailable("connect"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// A connection and its prepared statements: `query(&str)` would prepare the statement again
/// on every call, doubling the round trips.
pub(crate) struct Conn {
    client: Client,
    statements: std::sync::Mutex<HashMap<String, Statement>>,
    /// A statement on it ran out of time: the server may still be running (or waiting on a
    /// lock for) it, and every later statement of this pipelined connection would queue behind
    /// it. Replaced at the next use.
    abandoned: std::sync::atomic::AtomicBool,
}

impl Conn {
    pub(crate) fn new(client: Client) -> Self {
        Conn {
            client,
            statements: std::sync::Mutex::new(HashMap::new()),
            abandoned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed() || self.abandoned.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`deadline`] for a statement on this connection, which is given up after a timeout.
    async fn timed<T>(
        &self,
        context: &'static str,
        f: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        let r = deadline(context, f).await;
        if matches!(&r, Err(Error::Unavailable { detail, .. }) if detail == "timed out") {
            self.abandoned
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    async fn prepared(&self, sql: &str) -> std::result::Result<Statement, tokio_postgres::Error> {
        if let Some(st) = self
            .statements
            .lock()
            .ok()
            .and_then(|m| m.get(sql).cloned())
        {
            return Ok(st);
        }
        let st = self.client.prepare(sql).await?;
        if let Ok(mut m) = self.statements.lock() {
            m.insert(sql.to_string(), st.clone());
        }
        Ok(st)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
        let st = self.prepared(sql).await?;
        self.client.query(&st, params).await
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Option<Row>, tokio_postgres::Error> {
        let st = self.prepared(sql).await?;
        self.client.query_opt(&st, params).await
    }

    async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Row, tokio_postgres::Error> {
        let st = self.prepared(sql).await?;
        self.client.query_one(&st, params).await
    }

    async fn batch_execute(&self, sql: &str) -> std::result::Result<(), tokio_postgres::Error> {
        self.client.batch_execute(sql).await
    }
}

pub(crate) async fn create_schema(client: &Client) -> Result<()> {
    let mark = schema_mark();
    // (Two statements: one naming a table that does not exist yet fails when planned.)
    let has_marks = deadline(
        "read the schema version",
        client.query_one("SELECT to_regclass('migrations') IS NOT NULL", &[]),
    )
    .await?;
    if has_marks.try_get::<_, bool>(0).unwrap_or(false) {
        let current = deadline(
            "read the schema version",
            client.query_opt("SELECT 1 FROM migrations WHERE name = $1", &[&mark]),
        )
        .await?;
        if current.is_some() {
            return Ok(());
        }
    }
    let created = async {
        // Longer than a request's limits: on a large inventory an upgrade's index builds and
        // backfills take minutes, and a migration cut at 13 s would roll back at every start,
        // for ever. An instance starting meanwhile waits for that migration (the advisory
        // lock) as long; table lock waits stay short (other instances' statements would queue
        // behind a waiting exclusive lock).
        migration_step(
            "create the schema",
            client.batch_execute(&format!(
                "BEGIN; SET LOCAL statement_timeout = '{}s';
                 SET LOCAL lock_timeout = '{}s'; SELECT pg_advisory_xact_lock(7306926041);
                 SET LOCAL lock_timeout = '10s'; {SCHEMA}",
                MIGRATION_TIMEOUT.as_secs() - 5,
                // Another instance's migration is waited for as long as it may take.
                MIGRATION_TIMEOUT.as_secs() - 10
            )),
        )
        .await?;
        backfill_key_ids(client).await?;
        backfill_compromised_keys(client).await?;
        deadline(
            "create the schema",
            client.batch_execute(&format!(
                "INSERT INTO migrations (name) VALUES ('{mark}') ON CONFLICT DO NOTHING; COMMIT;"
            )),
        )
        .await
    }
    .await;
    if created.is_err() {
        let _ = deadline("roll back", client.batch_execute("ROLLBACK")).await;
    }
    created
}

/// A statement of a schema upgrade, under [`MIGRATION_TIMEOUT`] rather than a request's limit.
async fn migration_step<T>(
    context: &'static str,
    f: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    match tokio::time::timeout(MIGRATION_TIMEOUT, f).await {
        Ok(r) => r.map_err(unavailable(context)),
        Err(_) => Err(Error::Unavailable {
            context,
            detail: "timed out".into(),
        }),
    }
}

/// Marks the migration `name` done, in `create_schema`'s transaction; whether it was not
/// before (then the caller runs it, and the mark commits with its work).
async fn first_time(client: &Client, name: &str) -> Result<bool> {
    let marked = migration_step(
        "mark a migration",
        client.query_opt(
            "INSERT INTO migrations (name) VALUES ($1) ON CONFLICT DO NOTHING RETURNING name",
            &[&name],
        ),
    )
    .await?;
    Ok(marked.is_some())
}

/// Key identities of the certificates recorded before the `key_id` column: once per
/// inventory, in `create_schema`'s transaction, in chunks (one statement per 10,000).
async fn backfill_key_ids(client: &Client) -> Result<()> {
    if !first_time(client, crate::KEY_IDS_MIGRATION).await? {
        return Ok(());
    }
    let rows = migration_step(
        "read the certificates",
        client.query(
            "SELECT serial, pem FROM certificates WHERE key_id IS NULL AND pem <> ''",
            &[],
        ),
    )
    .await?;
    let corrupt = |e: tokio_postgres::Error| Error::Corrupt(e.to_string());
    let mut ids: Vec<(String, String)> = Vec::with_capacity(rows.len());
    for row in rows {
        let serial: String = row.try_get(0).map_err(corrupt)?;
        let pem: String = row.try_get(1).map_err(corrupt)?;
        if let Some(key) = crate::key_id_of(&pem) {
            ids.push((serial, key));
        }
    }
    for chunk in ids.chunks(10_000) {
        let (serials, keys): (Vec<&str>, Vec<&str>) =
            chunk.iter().map(|(s, k)| (s.as_str(), k.as_str())).unzip();
        migration_step(
            "record key identities",
            client.execute(
                "UPDATE certificates c SET key_id = v.k
                 FROM unnest($1::text[], $2::text[]) AS v(s, k) WHERE c.serial = v.s",
                &[&serials, &keys],
            ),
        )
        .await?;
    }
    Ok(())
}

/// Keys revoked for keyCompromise before `compromised_keys` existed: once per inventory, in
/// `create_schema`'s transaction (its mark's insert gates it).
async fn backfill_compromised_keys(client: &Client) -> Result<()> {
    if !first_time(client, crate::COMPROMISED_KEYS_MIGRATION).await? {
        return Ok(());
    }
    let rows = migration_step(
        "read keyCompromise revocations",
        client.query(
            "SELECT serial, pem, revoked_at FROM certificates
             WHERE revocation_reason = 'keyCompromise' AND revoked_at IS NOT NULL",
            &[],
        ),
    )
    .await?;
    for row in rows {
        let corrupt = |e: tokio_postgres::Error| Error::Corrupt(e.to_string());
        let serial: String = row.try_get(0).map_err(corrupt)?;
        let pem: String = row.try_get(1).map_err(corrupt)?;
        let at: i64 = row.try_get(2).map_err(corrupt)?;
        if let Some(key) = crate::key_id_of(&pem) {
            migration_step(
                "note a compromised key",
                client.execute(
                    "INSERT INTO compromised_keys (spki_sha256, serial, at) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                    &[&key, &serial, &at],
                ),
            )
            .await?;
        }
    }
    Ok(())
}

/// Revokes every other unexpired certificate of the key of `serial` (revoked for
/// keyCompromise), whatever its lineage (as the SQLite backend does).
async fn revoke_same_key(
    c: &Conn,
    serial: &str,
    pem: &str,
    actor: &str,
    now: OffsetDateTime,
) -> std::result::Result<Vec<String>, OpError> {
    let Some(key) = crate::key_id_of(pem) else {
        return Ok(Vec::new());
    };
    let rows = q(
        c,
        "find certificates of the key",
        "SELECT serial FROM certificates
         WHERE key_id = $1 AND revoked_at IS NULL AND not_after > $2 AND serial <> $3
         ORDER BY serial FOR UPDATE",
        &[&key, &ts(now), &serial],
    )
    .await?;
    let reason = RevocationReason::KeyCompromise.to_string();
    let detail = format!("keyCompromise (the key of {serial})");
    let mut revoked = Vec::with_capacity(rows.len());
    for row in rows {
        let other: String = row
            .try_get(0)
            .map_err(|e| OpError::Refused(Error::Corrupt(e.to_string())))?;
        mark_revoked(c, &other, Some(&reason), actor, &detail, now).await?;
        revoked.push(other);
    }
    Ok(revoked)
}

/// Notes the key of `serial` (revoked for keyCompromise) as compromised.
async fn note_compromised(
    c: &Conn,
    serial: &str,
    pem: &str,
    now: OffsetDateTime,
) -> std::result::Result<(), OpError> {
    let Some(key) = crate::key_id_of(pem) else {
        return Ok(());
    };
    q(
        c,
        "note the compromised key",
        "INSERT INTO compromised_keys (spki_sha256, serial, at) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
        &[&key, &serial, &ts(now)],
    )
    .await
    .map(|_| ())
}

fn record(row: &Row, now: OffsetDateTime) -> Result<CertificateRecord> {
    let g = |i: usize| -> Result<String> {
        row.try_get::<_, String>(i)
            .map_err(|e| Error::Corrupt(e.to_string()))
    };
    let gi = |i: usize| -> Result<Option<i64>> {
        row.try_get::<_, Option<i64>>(i)
            .map_err(|e| Error::Corrupt(e.to_string()))
    };
    let req = |v: Option<i64>| v.ok_or_else(|| Error::Corrupt("NULL timestamp".into()));
    let not_after = from_ts(req(gi(6)?)?)?;
    let revoked_at = gi(10)?.map(from_ts).transpose()?;
    Ok(CertificateRecord {
        serial: g(0)?,
        issuer_key: g(1)?,
        subject: g(2)?,
        sans: sans_from_json(&g(3)?)?,
        profile: g(4)?,
        not_before: from_ts(req(gi(5)?)?)?,
        not_after,
        fingerprint: g(7)?,
        pem: g(8)?,
        status: CertificateRecord::status_at(revoked_at, not_after, now),
        revoked_at,
        revocation_reason: row.try_get(11).map_err(|e| Error::Corrupt(e.to_string()))?,
    })
}

/// The read side: one shared, pipelined connection, re-established when it breaks.
pub(crate) struct Reader {
    target: PgTarget,
    client: Mutex<Option<Arc<Conn>>>,
}

impl Reader {
    pub(crate) fn new(target: PgTarget, client: Client) -> Self {
        Reader {
            target,
            client: Mutex::new(Some(Arc::new(Conn::new(client)))),
        }
    }

    /// A reader that connects on first use.
    pub(crate) fn lazy(target: PgTarget) -> Self {
        Reader {
            target,
            client: Mutex::new(None),
        }
    }

    async fn client(&self) -> Result<Arc<Conn>> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        *guard = None;
        let c = Arc::new(Conn::new(connect(&self.target).await?));
        *guard = Some(c.clone());
        Ok(c)
    }

    pub(crate) async fn get(
        &self,
        serial: &Serial,
        now: OffsetDateTime,
    ) -> Result<Option<CertificateRecord>> {
        let c = self.client().await?;
        let sql = format!("SELECT {COLUMNS} FROM certificates WHERE serial = $1");
        let row = c
            .timed(
                "look up a certificate",
                c.query_opt(&sql, &[&serial.to_string()]),
            )
            .await?;
        row.map(|r| record(&r, now)).transpose()
    }

    pub(crate) async fn list(
        &self,
        filter: &ListFilter,
        now: OffsetDateTime,
    ) -> Result<Vec<CertificateRecord>> {
        let c = self.client().await?;
        let mut sql = format!("SELECT {COLUMNS} FROM certificates WHERE TRUE");
        if filter.revoked_only {
            sql.push_str(" AND revoked_at IS NOT NULL");
        }
        let rows = match filter.expiring_before {
            Some(t) => {
                sql.push_str(" AND revoked_at IS NULL AND not_after >= $1 AND not_after <= $2 ORDER BY not_after, serial");
                c.timed("list", c.query(&sql, &[&ts(now), &ts(t)])).await?
            }
            None => {
                sql.push_str(" ORDER BY not_after, serial");
                c.timed("list", c.query(&sql, &[])).await?
            }
        };
        rows.iter().map(|r| record(r, now)).collect()
    }

    /// See [`crate::Store::check_renewal`].
    pub(crate) async fn check_renewal(
        &self,
        previous: &Serial,
        limit: &crate::RenewalLimit,
        now: OffsetDateTime,
    ) -> Result<()> {
        let c = self.client().await?;
        let previous = previous.to_string();
        // The condition ISSUE_SQL applies in the write, as SQLite's writer reads it.
        let renewable = c
            .timed(
                "check the renewed certificate",
                c.query_opt(&crate::RENEWABLE_SQL.replace("?1", "$1"), &[&previous]),
            )
            .await?;
        if renewable.is_none() {
            return Err(Error::NotRenewable(previous));
        }
        let since = limit.window_start(now);
        let corrupt = |e: tokio_postgres::Error| Error::Corrupt(e.to_string());
        let sql = crate::RECENT_RENEWALS_SQL
            .replace("{serial}", "$1")
            .replace("{since}", "$2");
        let row = c
            .timed(
                "count recent renewals",
                c.query_one(&sql, &[&previous, &since]),
            )
            .await?;
        let recent: i64 = row.try_get(0).map_err(corrupt)?;
        if recent < i64::from(limit.max) {
            return Ok(());
        }
        // The same lookup as the write's refusal, for the same Retry-After.
        let slot = renewal_slot(&c, &previous, limit, now)
            .await
            .map_err(OpError::into_error)?;
        Err(limit.refusal(previous, slot, now))
    }

    /// See [`crate::InventoryCounts`].
    pub(crate) async fn counts(
        &self,
        now: OffsetDateTime,
        windows: &[time::Duration],
    ) -> Result<crate::InventoryCounts> {
        let c = self.client().await?;
        let sql = |t: &str| t.replace("{now}", "$1").replace("{end}", "$2");
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        let corrupt = |e: tokio_postgres::Error| Error::Corrupt(e.to_string());
        let row = c
            .timed(
                "count certificates",
                c.query_one(&sql(crate::COUNT_BY_STATUS_SQL), &[&ts(now)]),
            )
            .await?;
        let (valid, expired, revoked): (i64, i64, i64) = (
            row.try_get(0).map_err(corrupt)?,
            row.try_get(1).map_err(corrupt)?,
            row.try_get(2).map_err(corrupt)?,
        );
        let mut expiring = Vec::with_capacity(windows.len());
        for w in windows {
            let row = c
                .timed(
                    "count expiring certificates",
                    c.query_one(&sql(crate::COUNT_EXPIRING_SQL), &[&ts(now), &ts(now + *w)]),
                )
                .await?;
            expiring.push(n(row.try_get(0).map_err(corrupt)?));
        }
        Ok(crate::InventoryCounts {
            valid: n(valid),
            expired: n(expired),
            revoked: n(revoked),
            expiring,
        })
    }

    pub(crate) async fn revoked_entries(&self, issuer_key: &str) -> Result<Vec<RevokedEntry>> {
        let c = self.client().await?;
        let rows = c
            .timed(
                "list revocations",
                c.query(
                    "SELECT serial, revoked_at, revocation_reason FROM certificates
                 WHERE issuer_key = $1 AND revoked_at IS NOT NULL ORDER BY serial",
                    &[&issuer_key],
                ),
            )
            .await?;
        revoked_rows(&rows)
    }

    pub(crate) async fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        let c = self.client().await?;
        let row = c.timed(
            "look up a token",
            c.query_opt(
                "SELECT id, secret_hash, name, sans, profile, created_at, created_by, expires_at,
                        used_at, used_by_serial FROM tokens WHERE id = $1",
                &[&id],
            ),
        )
        .await?;
        let Some(r) = row else { return Ok(None) };
        let corrupt = |e: tokio_postgres::Error| Error::Corrupt(e.to_string());
        let used_at: Option<i64> = r.try_get(8).map_err(corrupt)?;
        Ok(Some(TokenRecord {
            id: r.try_get(0).map_err(corrupt)?,
            secret_hash: r.try_get(1).map_err(corrupt)?,
            name: r.try_get(2).map_err(corrupt)?,
            sans: sans_from_json(&r.try_get::<_, String>(3).map_err(corrupt)?)?,
            profile: r.try_get(4).map_err(corrupt)?,
            created_at: from_ts(r.try_get(5).map_err(corrupt)?)?,
            created_by: r.try_get(6).map_err(corrupt)?,
            expires_at: from_ts(r.try_get(7).map_err(corrupt)?)?,
            used_at: used_at.map(from_ts).transpose()?,
            used_by_serial: r.try_get(9).map_err(corrupt)?,
        }))
    }

    pub(crate) async fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        let c = self.client().await?;
        let rows = c.timed(
            "read the audit log",
            c.query(
                "SELECT id, at, action, serial, actor, detail FROM audit ORDER BY id DESC LIMIT $1",
                &[&i64::from(limit)],
            ),
        )
        .await?;
        let corrupt = |e: tokio_postgres::Error| Error::Corrupt(e.to_string());
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get(0).map_err(corrupt)?,
                    at: from_ts(r.try_get(1).map_err(corrupt)?)?,
                    action: r.try_get(2).map_err(corrupt)?,
                    serial: r.try_get(3).map_err(corrupt)?,
                    actor: r.try_get(4).map_err(corrupt)?,
                    detail: r.try_get(5).map_err(corrupt)?,
                })
            })
            .collect()
    }

    pub(crate) async fn revocations_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<RevocationEvent>> {
        let c = self.client().await?;
        let rows = c
            .timed(
                "read the revocation feed",
                c.query(
                    "SELECT revocation_seq, serial, issuer_key, revoked_at, revocation_reason
                 FROM certificates WHERE revocation_seq > $1 ORDER BY revocation_seq LIMIT $2",
                    &[&after, &i64::from(limit)],
                ),
            )
            .await?;
        let corrupt = |e: tokio_postgres::Error| Error::Corrupt(e.to_string());
        rows.iter()
            .map(|r| {
                let serial: String = r.try_get(1).map_err(corrupt)?;
                let at: i64 = r.try_get(3).map_err(corrupt)?;
                let reason: Option<String> = r.try_get(4).map_err(corrupt)?;
                Ok(RevocationEvent {
                    seq: r.try_get(0).map_err(corrupt)?,
                    issuer_key: r.try_get(2).map_err(corrupt)?,
                    entry: revoked_entry(&serial, at, reason.as_deref())?,
                })
            })
            .collect()
    }

    pub(crate) async fn revocation_epoch(&self) -> Result<i64> {
        let c = self.client().await?;
        let row = c
            .timed(
                "read the revocation epoch",
                c.query_one("SELECT epoch FROM revocation_epoch WHERE id = 1", &[]),
            )
            .await?;
        row.try_get(0).map_err(|e| Error::Corrupt(e.to_string()))
    }

    pub(crate) async fn crl_number(&self, issuer_key: &str) -> Result<Option<u64>> {
        let c = self.client().await?;
        let rows = c
            .timed(
                "read the CRL number",
                c.query(
                    "SELECT last_number FROM crl_numbers WHERE issuer_key = $1",
                    &[&issuer_key],
                ),
            )
            .await?;
        match rows.first() {
            None => Ok(None),
            Some(r) => {
                let n: i64 = r.try_get(0).map_err(|e| Error::Corrupt(e.to_string()))?;
                u64::try_from(n)
                    .map(Some)
                    .map_err(|_| Error::Corrupt("negative CRL number".into()))
            }
        }
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        let c = self.client().await?;
        c.timed("ping", c.batch_execute("SELECT 1")).await
    }
}

/// An operation failed on its own (its savepoint is rolled back) or broke the transaction.
enum OpError {
    /// Refused by our own checks (zero rows, a used token…): the transaction is intact.
    Refused(Error),
    /// The server rejected a statement: the transaction is aborted up to the last savepoint
    /// (and a later `COMMIT` would silently roll everything back).
    Statement(Error),
    /// A unique constraint refused the row.
    Unique(Error),
    /// Deadlock or serialization failure: roll back to the savepoint and try the op again.
    Retry(Error),
    Broken(Error),
}

impl OpError {
    fn into_error(self) -> Error {
        match self {
            OpError::Refused(e)
            | OpError::Statement(e)
            | OpError::Unique(e)
            | OpError::Retry(e)
            | OpError::Broken(e) => e,
        }
    }
}

fn classify(context: &'static str, e: tokio_postgres::Error) -> OpError {
    let code = e.code().cloned();
    let err = unavailable(context)(e);
    match code {
        Some(c)
            if c == SqlState::T_R_DEADLOCK_DETECTED || c == SqlState::T_R_SERIALIZATION_FAILURE =>
        {
            OpError::Retry(err)
        }
        Some(c) if c == SqlState::UNIQUE_VIOLATION => OpError::Unique(err),
        Some(_) => OpError::Statement(err),
        None => OpError::Broken(err),
    }
}

/// `serial, revoked_at, revocation_reason` rows as CRL entries.
fn revoked_rows(rows: &[Row]) -> Result<Vec<RevokedEntry>> {
    rows.iter()
        .map(|r| {
            let serial: String = r.try_get(0).map_err(|e| Error::Corrupt(e.to_string()))?;
            let at: i64 = r.try_get(1).map_err(|e| Error::Corrupt(e.to_string()))?;
            let reason: Option<String> = r.try_get(2).map_err(|e| Error::Corrupt(e.to_string()))?;
            revoked_entry(&serial, at, reason.as_deref())
        })
        .collect()
}

async fn q(
    c: &Conn,
    context: &'static str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> std::result::Result<Vec<Row>, OpError> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, c.query(sql, params)).await {
        Ok(r) => r.map_err(|e| classify(context, e)),
        Err(_) => Err(OpError::Broken(Error::Unavailable {
            context,
            detail: "timed out".into(),
        })),
    }
}

async fn audit_insert(
    c: &Conn,
    now: OffsetDateTime,
    action: &str,
    serial: Option<&str>,
    actor: &str,
    detail: &str,
) -> std::result::Result<(), OpError> {
    q(
        c,
        "insert audit",
        "INSERT INTO audit (at, action, serial, actor, detail) VALUES ($1, $2, $3, $4, $5)",
        &[&ts(now), &action, &serial, &actor, &detail],
    )
    .await
    .map(|_| ())
}

async fn revoke(
    c: &Conn,
    serial: &Serial,
    issuer_key: Option<&str>,
    reason: Option<RevocationReason>,
    actor: &str,
    now: OffsetDateTime,
) -> std::result::Result<WriteResult, OpError> {
    let s = serial.to_string();
    let refused = |e: Error| OpError::Refused(e);
    let rows = q(
        c,
        "lock the certificate",
        &format!("SELECT {COLUMNS} FROM certificates WHERE serial = $1 FOR UPDATE"),
        &[&s],
    )
    .await?;
    let Some(row) = rows.first() else {
        return Err(refused(Error::UnknownSerial(s)));
    };
    let current = record(row, now).map_err(refused)?;
    if issuer_key.is_some_and(|k| k != current.issuer_key) {
        return Err(refused(Error::UnknownSerial(s)));
    }
    if let Some(at) = current.revoked_at {
        // Found compromised after it was revoked for another reason: the reason becomes
        // keyCompromise (RFC 5280 5.3.1), the key is never certified again, and the
        // certificates sharing it are revoked (as in the SQLite backend).
        if reason == Some(RevocationReason::KeyCompromise)
            && current.revocation_reason.as_deref() != Some("keyCompromise")
        {
            lock_ancestors(c, &s).await?;
            let reason_s = RevocationReason::KeyCompromise.to_string();
            q(
                c,
                "mark the key compromised",
                "UPDATE certificates SET revocation_reason = $1 WHERE serial = $2",
                &[&reason_s, &s],
            )
            .await?;
            audit_insert(
                c,
                now,
                "revoke",
                Some(&s),
                actor,
                "reason now keyCompromise",
            )
            .await?;
            note_compromised(c, &s, &current.pem, now).await?;
            let mut also_revoked = revoke_lineage(
                c,
                &s,
                &current.pem,
                crate::LineageScope::SameKey,
                Some(&reason_s),
                actor,
                now,
            )
            .await?;
            also_revoked.extend(revoke_same_key(c, &s, &current.pem, actor, now).await?);
            let mut rec = current;
            rec.revocation_reason = Some(reason_s);
            return Ok(WriteResult::Revoked(Box::new(crate::Revocation {
                record: rec,
                also_revoked,
            })));
        }
        return Err(refused(Error::AlreadyRevoked { serial: s, at }));
    }
    lock_ancestors(c, &s).await?;
    let reason_s = reason.map(|r| r.to_string());
    let detail = reason_s.clone().unwrap_or_default();
    mark_revoked(c, &s, reason_s.as_deref(), actor, &detail, now).await?;
    if reason == Some(RevocationReason::KeyCompromise) {
        note_compromised(c, &s, &current.pem, now).await?;
    }
    let mut also_revoked = match crate::LineageScope::of(reason) {
        Some(scope) => {
            revoke_lineage(c, &s, &current.pem, scope, reason_s.as_deref(), actor, now).await?
        }
        None => Vec::new(),
    };
    if reason == Some(RevocationReason::KeyCompromise) {
        also_revoked.extend(revoke_same_key(c, &s, &current.pem, actor, now).await?);
    }
    let mut rec = current;
    rec.revoked_at = Some(now);
    rec.revocation_reason = reason_s;
    rec.status = crate::Status::Revoked;
    Ok(WriteResult::Revoked(Box::new(crate::Revocation {
        record: rec,
        also_revoked,
    })))
}

/// Locks (FOR UPDATE, in serial order) every certificate `serial` was renewed from, directly
/// or through other renewals: none of them may be renewed once this revocation commits (see
/// [`crate::RENEWABLE_SQL`]), and a renewal of one takes its lock before it checks (see
/// `issue`). Whichever comes first, the other sees its outcome.
async fn lock_ancestors(c: &Conn, serial: &str) -> std::result::Result<(), OpError> {
    q(
        c,
        "lock the renewed certificates",
        "WITH RECURSIVE a(serial) AS (
             SELECT renews FROM certificates WHERE serial = $1 AND renews IS NOT NULL
             UNION SELECT c.renews FROM certificates c JOIN a ON c.serial = a.serial
                 WHERE c.renews IS NOT NULL
         )
         SELECT 1 FROM certificates WHERE serial IN (SELECT serial FROM a)
         ORDER BY serial FOR UPDATE",
        &[&serial],
    )
    .await
    .map(|_| ())
}

/// Marks `serial` (locked by the caller) revoked with the next feed sequence number, and
/// audits it.
async fn mark_revoked(
    c: &Conn,
    serial: &str,
    reason: Option<&str>,
    actor: &str,
    detail: &str,
    now: OffsetDateTime,
) -> std::result::Result<(), OpError> {
    // The epoch first: its row lock orders concurrent revocations of every instance, so the
    // sequence number it yields commits in order (the feed never skips a late commit).
    let epoch = q(
        c,
        "bump the revocation epoch",
        "UPDATE revocation_epoch SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch",
        &[],
    )
    .await?;
    let seq: i64 = epoch
        .first()
        .ok_or_else(|| OpError::Refused(Error::Corrupt("no revocation epoch row".into())))?
        .try_get(0)
        .map_err(|e| OpError::Refused(Error::Corrupt(e.to_string())))?;
    q(
        c,
        "revoke",
        "UPDATE certificates SET revoked_at = $1, revocation_reason = $2, revocation_seq = $3
         WHERE serial = $4",
        &[&ts(now), &reason, &seq, &serial],
    )
    .await?;
    audit_insert(c, now, "revoke", Some(serial), actor, detail).await
}

/// See [`crate::Revocation::also_revoked`]: `serial` is revoked (and locked) already. Each
/// row is locked FOR UPDATE before it is read: a renewal of it in flight on another instance
/// (which holds it FOR SHARE) commits first and is found, or waits and is then refused as the
/// renewal of a revoked certificate.
#[allow(clippy::too_many_arguments)]
async fn revoke_lineage(
    c: &Conn,
    serial: &str,
    pem: &str,
    scope: crate::LineageScope,
    reason: Option<&str>,
    actor: &str,
    now: OffsetDateTime,
) -> std::result::Result<Vec<String>, OpError> {
    let corrupt = |e: tokio_postgres::Error| OpError::Refused(Error::Corrupt(e.to_string()));
    let detail = crate::lineage_revocation_detail(reason, serial);
    let mut revoked = Vec::new();
    // Up: the certificates it renews (with the same key, for a key compromise).
    let key = crate::spki_of(pem);
    let mut top = serial.to_string();
    for _ in 0..crate::MAX_RENEWAL_LINEAGE {
        let rows = q(
            c,
            "find the renewed certificate",
            "SELECT p.serial, p.pem, p.revoked_at, p.not_after FROM certificates c
             JOIN certificates p ON p.serial = c.renews WHERE c.serial = $1 FOR UPDATE OF p",
            &[&top],
        )
        .await?;
        let Some(row) = rows.first() else {
            break;
        };
        let parent: String = row.try_get(0).map_err(corrupt)?;
        let parent_pem: String = row.try_get(1).map_err(corrupt)?;
        let revoked_at: Option<i64> = row.try_get(2).map_err(corrupt)?;
        let not_after: i64 = row.try_get(3).map_err(corrupt)?;
        if scope.stops_at_other_keys() && (key.is_none() || crate::spki_of(&parent_pem) != key) {
            break;
        }
        if revoked_at.is_none() && scope.reaches(not_after, now) {
            mark_revoked(c, &parent, reason, actor, &detail, now).await?;
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
        let rows = q(
            c,
            "find renewals",
            "SELECT serial, revoked_at, not_after FROM certificates WHERE renews = $1 FOR UPDATE",
            &[&parent],
        )
        .await?;
        for row in rows {
            let child: String = row.try_get(0).map_err(corrupt)?;
            let revoked_at: Option<i64> = row.try_get(1).map_err(corrupt)?;
            let not_after: i64 = row.try_get(2).map_err(corrupt)?;
            if revoked_at.is_none() && scope.reaches(not_after, now) {
                mark_revoked(c, &child, reason, actor, &detail, now).await?;
                revoked.push(child.clone());
            }
            if seen.insert(child.clone()) {
                frontier.push(child);
            }
        }
    }
    Ok(revoked)
}

async fn create_token(
    c: &Conn,
    t: &NewToken,
    now: OffsetDateTime,
) -> std::result::Result<WriteResult, OpError> {
    let sans = sans_json(&t.sans).map_err(OpError::Refused)?;
    let r = q(
        c,
        "insert the token",
        "INSERT INTO tokens (id, secret_hash, name, sans, profile, created_at, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &t.id,
            &t.secret_hash,
            &t.name,
            &sans,
            &t.profile,
            &ts(now),
            &t.created_by,
            &ts(t.expires_at),
        ],
    )
    .await;
    match r {
        Ok(_) => {}
        Err(OpError::Unique(_)) => {
            return Err(OpError::Refused(Error::DuplicateToken(t.id.clone())))
        }
        Err(e) => return Err(e),
    }
    audit_insert(
        c,
        now,
        "token",
        None,
        &t.created_by,
        &format!(
            "token {} for {} ({}) expires {}",
            t.id, t.name, t.profile, t.expires_at
        ),
    )
    .await?;
    Ok(WriteResult::Done)
}

/// See [`WriteOp::CrlSnapshot`]. Every revocation updates the epoch row: holding it, the
/// revocations committed so far are all visible (READ COMMITTED reads each statement afresh)
/// and none can commit before this transaction does.
async fn crl_snapshot(
    c: &Conn,
    issuer_key: &str,
    actor: &str,
    now: OffsetDateTime,
) -> std::result::Result<WriteResult, OpError> {
    q(
        c,
        "order the CRL against revocations",
        "SELECT epoch FROM revocation_epoch WHERE id = 1 FOR UPDATE",
        &[],
    )
    .await?;
    let number = next_crl_number(c, issuer_key, actor, now).await?;
    let rows = q(
        c,
        "list revocations",
        "SELECT serial, revoked_at, revocation_reason FROM certificates
         WHERE issuer_key = $1 AND revoked_at IS NOT NULL ORDER BY serial",
        &[&issuer_key],
    )
    .await?;
    let entries = revoked_rows(&rows).map_err(OpError::Refused)?;
    Ok(WriteResult::Crl(number, entries))
}

async fn next_crl_number(
    c: &Conn,
    issuer_key: &str,
    actor: &str,
    now: OffsetDateTime,
) -> std::result::Result<u64, OpError> {
    let rows = q(
        c,
        "allocate a CRL number",
        "INSERT INTO crl_numbers (issuer_key, last_number) VALUES ($1, 1)
         ON CONFLICT (issuer_key) DO UPDATE SET last_number = crl_numbers.last_number + 1
         RETURNING last_number",
        &[&issuer_key],
    )
    .await?;
    let n: i64 = rows
        .first()
        .ok_or_else(|| OpError::Refused(Error::Corrupt("no CRL number returned".into())))?
        .try_get(0)
        .map_err(|e| OpError::Refused(Error::Corrupt(e.to_string())))?;
    audit_insert(c, now, "crl", None, actor, &format!("CRL number {n}")).await?;
    u64::try_from(n).map_err(|_| OpError::Refused(Error::Corrupt("negative CRL number".into())))
}

/// See [`WriteOp::Reconcile`].
async fn reconcile(
    c: &Conn,
    issuer_key: &str,
    entries: &[mtls_pki::revocation::RevokedEntry],
    crl_number: u64,
    epoch: i64,
    actor: &str,
    now: OffsetDateTime,
) -> std::result::Result<WriteResult, OpError> {
    let corrupt = |m: String| OpError::Refused(Error::Corrupt(m));
    // The epoch first: re-applied revocations get feed sequence numbers above every one a
    // subscriber may already have seen, so none is skipped as old.
    q(
        c,
        "raise the revocation epoch",
        "UPDATE revocation_epoch SET epoch = GREATEST(epoch, $1) WHERE id = 1",
        &[&epoch],
    )
    .await?;
    let mut applied = 0u64;
    for e in entries {
        let s = e.serial.to_string();
        let rows = q(
            c,
            "lock the certificate",
            "SELECT revoked_at FROM certificates WHERE serial = $1 FOR UPDATE",
            &[&s],
        )
        .await?;
        let current: Option<Option<i64>> = match rows.first() {
            None => None,
            Some(r) => Some(r.try_get(0).map_err(|e| corrupt(e.to_string()))?),
        };
        if matches!(current, Some(Some(_))) {
            continue;
        }
        // As `revoke` does: a renewal of what this one was renewed from, in flight on another
        // instance, is waited for, and one that comes later sees this revocation.
        lock_ancestors(c, &s).await?;
        let bumped = q(
            c,
            "bump the revocation epoch",
            "UPDATE revocation_epoch SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch",
            &[],
        )
        .await?;
        let seq: i64 = bumped
            .first()
            .ok_or_else(|| corrupt("no revocation epoch row".into()))?
            .try_get(0)
            .map_err(|e| corrupt(e.to_string()))?;
        let reason = e.reason.map(|r| r.to_string());
        let at = ts(e.revoked_at);
        if current.is_some() {
            q(
                c,
                "re-apply a revocation",
                "UPDATE certificates SET revoked_at = $1, revocation_reason = $2, revocation_seq = $3
                 WHERE serial = $4",
                &[&at, &reason, &seq, &s],
            )
            .await?;
            if e.reason == Some(RevocationReason::KeyCompromise) {
                let rows = q(
                    c,
                    "read the revoked certificate",
                    "SELECT pem FROM certificates WHERE serial = $1",
                    &[&s],
                )
                .await?;
                if let Some(pem) = rows.first().and_then(|r| r.try_get::<_, String>(0).ok()) {
                    note_compromised(c, &s, &pem, now).await?;
                }
            }
        } else {
            // No expiry is known: a century, so it stays listed (and revoked).
            let far: i64 = ts(crate::far_after(e.revoked_at));
            let fingerprint = format!("unknown:{s}");
            q(
                c,
                "record a revocation known only from the CRL",
                "INSERT INTO certificates (serial, issuer_key, subject, sans, profile, not_before,
                     not_after, fingerprint, pem, issued_at, revoked_at, revocation_reason,
                     revocation_seq)
                 VALUES ($1, $2, $3, '[]', 'unknown', $4, $5, $6, '', $4, $4, $7, $8)",
                &[
                    &s,
                    &issuer_key,
                    &crate::RESTORED_SUBJECT,
                    &at,
                    &far,
                    &fingerprint,
                    &reason,
                    &seq,
                ],
            )
            .await?;
        }
        applied += 1;
    }
    if !issuer_key.is_empty() {
        let n = i64::try_from(crl_number).map_err(|_| corrupt("CRL number".into()))?;
        q(
            c,
            "raise the CRL number",
            "INSERT INTO crl_numbers (issuer_key, last_number) VALUES ($1, $2)
             ON CONFLICT (issuer_key) DO UPDATE
             SET last_number = GREATEST(crl_numbers.last_number, EXCLUDED.last_number)",
            &[&issuer_key, &n],
        )
        .await?;
    }
    audit_insert(
        c,
        now,
        "reconcile",
        None,
        actor,
        &format!("{applied} revocations re-applied from published CRL {crl_number}"),
    )
    .await?;
    Ok(WriteResult::Number(applied))
}

async fn apply(
    c: &Conn,
    op: &WriteOp,
    now: OffsetDateTime,
) -> std::result::Result<WriteResult, OpError> {
    match op {
        WriteOp::Issue {
            cert,
            key,
            kind,
            actor,
        } => issue(c, cert, key.as_deref(), kind, actor, now).await,
        WriteOp::Revoke {
            serial,
            issuer_key,
            reason,
            actor,
        } => revoke(c, serial, issuer_key.as_deref(), *reason, actor, now).await,
        WriteOp::CreateToken { token } => create_token(c, token, now).await,
        WriteOp::CrlSnapshot { issuer_key, actor } => crl_snapshot(c, issuer_key, actor, now).await,
        WriteOp::Reconcile {
            issuer_key,
            entries,
            crl_number,
            epoch,
            actor,
        } => reconcile(c, issuer_key, entries, *crl_number, *epoch, actor, now).await,
    }
}

async fn exec(c: &Conn, context: &'static str, sql: &str) -> std::result::Result<(), OpError> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, c.batch_execute(sql)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(OpError::Broken(unavailable(context)(e))),
        Err(_) => Err(OpError::Broken(Error::Unavailable {
            context,
            detail: "timed out".into(),
        })),
    }
}

/// One transaction for the whole batch; returns false when the connection is unusable.
async fn apply_batch(c: &Conn, jobs: &[Job]) -> (Vec<Result<WriteResult>>, bool) {
    let mut results: Vec<Result<WriteResult>> = Vec::with_capacity(jobs.len());
    if let Err(e) = exec(c, "begin a transaction", BEGIN).await {
        let detail = e.into_error().to_string();
        return (
            unavailable_all(jobs.len(), "begin a transaction", &detail),
            false,
        );
    }
    // Alone in its batch, an operation needs no savepoint: the transaction is one.
    let single = jobs.len() == 1;
    let (savepoint, release, rollback) = if single {
        ("", "", ROLLBACK_BEGIN)
    } else {
        (
            "SAVEPOINT op",
            "RELEASE SAVEPOINT op",
            "ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op",
        )
    };
    for job in jobs {
        let mut attempts = 0;
        let outcome = loop {
            attempts += 1;
            if !single {
                if let Err(e) = exec(c, "savepoint", savepoint).await {
                    break Err(e);
                }
            }
            match apply(c, &job.op, job.now).await {
                Ok(r) if single => break Ok(r),
                Ok(r) => match exec(c, "release savepoint", release).await {
                    Ok(()) => break Ok(r),
                    Err(e) => break Err(e),
                },
                Err(OpError::Broken(e)) => break Err(OpError::Broken(e)),
                Err(other) => {
                    if let Err(e) = exec(c, "roll back the operation", rollback).await {
                        break Err(e);
                    }
                    match other {
                        OpError::Retry(_) if attempts < 4 => continue,
                        OpError::Retry(e)
                        | OpError::Refused(e)
                        | OpError::Statement(e)
                        | OpError::Unique(e) => break Err(OpError::Refused(e)),
                        OpError::Broken(e) => break Err(OpError::Broken(e)),
                    }
                }
            }
        };
        match outcome {
            Ok(r) => results.push(Ok(r)),
            Err(OpError::Refused(e)) => results.push(Err(e)),
            Err(
                OpError::Broken(e) | OpError::Retry(e) | OpError::Statement(e) | OpError::Unique(e),
            ) => {
                // The connection or transaction is gone: nothing in this batch committed.
                let detail = e.to_string();
                results.push(Err(e));
                let rest = jobs.len().saturating_sub(results.len());
                results.extend(unavailable_all(rest, "run the transaction", &detail));
                fail_all(&mut results, "run the transaction", &detail);
                let _ = exec(c, "roll back", "ROLLBACK").await;
                return (results, false);
            }
        }
    }
    match exec(c, "commit", "COMMIT").await {
        Ok(()) => (results, true),
        Err(e) => {
            fail_all(&mut results, "commit", &e.into_error().to_string());
            (results, false)
        }
    }
}

/// One statement per issuance: consumes the token (if any), inserts the certificate and its
/// audit row. Refusals are not errors (zero rows), so a batch needs no savepoints and its
/// statements can be pipelined. The token `UPDATE … WHERE used_at IS NULL` takes the row lock: a
/// second instance racing on the same token waits, then finds it used.
const ISSUE_SQL: &str = "
WITH bad AS (
    -- A key revoked as compromised: nothing is recorded, and the token stays unused.
    SELECT serial FROM compromised_keys WHERE spki_sha256 = $18
), tok AS (
    UPDATE tokens SET used_at = $10, used_by_serial = $1
    WHERE id = $11 AND used_at IS NULL AND expires_at > $10 AND NOT EXISTS (SELECT 1 FROM bad)
    RETURNING id
), prev AS (
    -- A renewal: the renewed certificate must still be unrevoked, and nothing renewed from
    -- it revoked (see RENEWABLE_SQL). FOR SHARE waits for a revocation in flight (which
    -- locks the row FOR UPDATE) and then sees its outcome.
    SELECT serial FROM certificates WHERE serial = $15 AND revoked_at IS NULL
      AND NOT EXISTS (
        WITH RECURSIVE d(serial) AS (
            SELECT serial FROM certificates WHERE renews = $15
            UNION SELECT r.serial FROM certificates r JOIN d ON r.renews = d.serial
        )
        SELECT 1 FROM certificates x JOIN d ON x.serial = d.serial WHERE x.revoked_at IS NOT NULL
      )
    FOR SHARE
), recent AS (
    -- The renewal limit (RenewalLimit): renewals of its lineage after $16, fewer than
    -- $17. Counted in this statement's snapshot, taken after the lineage's advisory lock (see
    -- `issue`): it holds every renewal of the lineage committed, by any instance.
    SELECT count(*) AS n FROM certificates
    WHERE lineage = (SELECT COALESCE(lineage, serial) FROM certificates WHERE serial = $15)
      AND issued_at > $16
), cert AS (
    INSERT INTO certificates (serial, issuer_key, subject, sans, profile, not_before, not_after,
                              fingerprint, pem, issued_at, renews, lineage, key_id)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $15,
           (SELECT COALESCE(lineage, serial) FROM certificates WHERE serial = $15), $18
    WHERE ($11::text IS NULL OR EXISTS (SELECT 1 FROM tok))
      AND ($15::text IS NULL OR (EXISTS (SELECT 1 FROM prev) AND (SELECT n FROM recent) < $17))
      AND NOT EXISTS (SELECT 1 FROM bad)
    ON CONFLICT DO NOTHING
    RETURNING serial
), aud AS (
    INSERT INTO audit (at, action, serial, actor, detail)
    SELECT $10, $12, serial, $13, $14 FROM cert
)
SELECT (SELECT count(*) FROM tok), (SELECT count(*) FROM cert), (SELECT count(*) FROM prev),
       (SELECT n FROM recent), (SELECT serial FROM bad LIMIT 1)";

/// Records one issuance with [`ISSUE_SQL`] (alone, in a savepoint, or pipelined with others).
async fn issue(
    c: &Conn,
    cert: &CertificateToRecord,
    key: Option<&str>,
    kind: &IssueKind,
    actor: &str,
    now: OffsetDateTime,
) -> std::result::Result<WriteResult, OpError> {
    let serial = cert.serial.to_string();
    let sans = sans_json(&cert.sans).map_err(OpError::Refused)?;
    let token: Option<&str> = match kind {
        IssueKind::Enrollment { token_id } => Some(token_id),
        _ => None,
    };
    let previous: Option<String> = match kind {
        IssueKind::Renewal { previous, .. } => Some(previous.to_string()),
        _ => None,
    };
    let limit = match kind {
        IssueKind::Renewal { limit, .. } => Some(*limit),
        _ => None,
    };
    let (since, max) = limit.map_or((0, 0), |l| (l.window_start(now), i64::from(l.max)));
    let (action, detail) = audit_detail_issue(kind, &cert.borrowed());
    if let Some(previous) = &previous {
        // The renewed certificate locked first, in a statement of its own: a revocation of
        // anything renewed from it locks it too (FOR UPDATE, see `lock_ancestors`), so this
        // waits for one in flight, and ISSUE_SQL (a later statement: a later snapshot) then
        // sees it. Checked in one statement, the revocation of a renewal committing meanwhile
        // would be missed. FOR SHARE: renewals of one certificate do not wait for each other.
        q(
            c,
            "lock the renewed certificate",
            "SELECT 1 FROM certificates WHERE serial = $1 FOR SHARE",
            &[previous],
        )
        .await?;
        // The lineage's renewals, one transaction at a time across instances (an advisory
        // lock on the lineage, held to commit): ISSUE_SQL, a later statement, then counts
        // every renewal another instance committed meanwhile, so the limit holds for the
        // lineage rather than per instance. (Deadlocks between batches are retried.)
        q(
            c,
            "lock the renewal lineage",
            "SELECT pg_advisory_xact_lock(hashtextextended(
                 'lineage:' || COALESCE((SELECT lineage FROM certificates WHERE serial = $1), $1), 0))",
            &[previous],
        )
        .await?;
    }
    let rows = q(
        c,
        "record the certificate",
        ISSUE_SQL,
        &[
            &serial,
            &cert.issuer_key,
            &cert.subject,
            &sans,
            &cert.profile,
            &ts(cert.not_before),
            &ts(cert.not_after),
            &cert.fingerprint,
            &cert.pem,
            &ts(now),
            &token,
            &action,
            &actor,
            &detail,
            &previous,
            &since,
            &max,
            &key,
        ],
    )
    .await?;
    let count = |i| {
        rows.first()
            .and_then(|r| r.try_get::<_, i64>(i).ok())
            .unwrap_or(0)
    };
    let (consumed, inserted, live_previous, recent) = (count(0), count(1), count(2), count(3));
    if inserted == 1 {
        return Ok(WriteResult::Done);
    }
    // (A keyCompromise revocation committing on another instance at this moment is not seen:
    // its certificates' own revocations stand.)
    if let Some(compromised) = rows
        .first()
        .and_then(|r| r.try_get::<_, Option<String>>(4).ok())
        .flatten()
    {
        return Err(OpError::Refused(Error::KeyCompromised {
            serial: compromised,
        }));
    }
    if let Some(previous) = previous {
        if live_previous == 0 {
            return Err(OpError::Refused(Error::NotRenewable(previous)));
        }
        if let Some(limit) = limit.filter(|l| recent >= i64::from(l.max)) {
            let slot = renewal_slot(c, &previous, &limit, now).await?;
            return Err(OpError::Refused(limit.refusal(previous, slot, now)));
        }
    }
    match token {
        Some(id) if consumed == 0 => Err(OpError::Refused(token_refusal(c, id).await?)),
        Some(id) => {
            // The token was consumed but the serial collided: give the token back.
            q(
                c,
                "release the token",
                "UPDATE tokens SET used_at = NULL, used_by_serial = NULL
                 WHERE id = $1 AND used_by_serial = $2",
                &[&id, &serial],
            )
            .await?;
            Err(OpError::Refused(Error::DuplicateSerial(serial)))
        }
        None => Err(OpError::Refused(Error::DuplicateSerial(serial))),
    }
}

/// See [`crate::RENEWAL_SLOT_SQL`].
async fn renewal_slot(
    c: &Conn,
    previous: &str,
    limit: &crate::RenewalLimit,
    now: OffsetDateTime,
) -> std::result::Result<Option<i64>, OpError> {
    let Some(nth) = limit.max.checked_sub(1) else {
        return Ok(None);
    };
    let sql = crate::RENEWAL_SLOT_SQL
        .replace("{serial}", "$1")
        .replace("{since}", "$2")
        .replace("{nth}", "$3");
    let rows = q(
        c,
        "look up recent renewals",
        &sql,
        &[&previous, &limit.window_start(now), &i64::from(nth)],
    )
    .await?;
    Ok(rows.first().and_then(|r| r.try_get::<_, i64>(0).ok()))
}

/// Why a token could not be consumed.
async fn token_refusal(c: &Conn, id: &str) -> std::result::Result<Error, OpError> {
    let rows = q(
        c,
        "look up the token",
        "SELECT used_at, expires_at FROM tokens WHERE id = $1",
        &[&id],
    )
    .await?;
    let Some(row) = rows.first() else {
        return Ok(Error::UnknownToken);
    };
    let corrupt = |e: tokio_postgres::Error| OpError::Refused(Error::Corrupt(e.to_string()));
    let used: Option<i64> = row.try_get(0).map_err(corrupt)?;
    let exp: i64 = row.try_get(1).map_err(corrupt)?;
    Ok(match used {
        Some(at) => Error::TokenUsed {
            id: id.to_string(),
            at: from_ts(at).map_err(OpError::Refused)?,
        },
        None => Error::TokenExpired {
            id: id.to_string(),
            at: from_ts(exp).map_err(OpError::Refused)?,
        },
    })
}

/// A batch of issuances only: one transaction, statements pipelined on the connection, one
/// commit. Deadlocks with another instance retry the whole batch (nothing was committed). If
/// the server rejected any statement, the transaction is aborted for every job in it (a
/// `COMMIT` would report success and roll back): it is rolled back and the batch is run again
/// one savepoint per job, so only the faulty job fails.
async fn apply_issue_batch(c: &Conn, jobs: &[Job]) -> (Vec<Result<WriteResult>>, bool) {
    for attempt in 1..=3 {
        if let Err(e) = exec(c, "begin a transaction", BEGIN).await {
            let detail = e.into_error().to_string();
            return (
                unavailable_all(jobs.len(), "begin a transaction", &detail),
                false,
            );
        }
        let outcomes =
            futures_util::future::join_all(jobs.iter().map(|j| apply(c, &j.op, j.now))).await;
        let retry = outcomes.iter().any(|o| matches!(o, Err(OpError::Retry(_))));
        let aborted = outcomes
            .iter()
            .any(|o| matches!(o, Err(OpError::Statement(_) | OpError::Unique(_))));
        let broken = outcomes.iter().find_map(|o| match o {
            Err(OpError::Broken(e)) => Some(e.to_string()),
            _ => None,
        });
        if retry || aborted || broken.is_some() {
            let rolled_back = exec(c, "roll back", "ROLLBACK").await.is_ok();
            if broken.is_none() && rolled_back {
                if retry && attempt < 3 {
                    continue;
                }
                // Deadlocked three times over: one savepoint per job, so a conflict fails (or
                // retries) that job alone rather than all of them.
                if aborted || retry {
                    return apply_batch(c, jobs).await;
                }
            }
            let detail = broken.unwrap_or_else(|| "deadlock with another instance".into());
            return (
                unavailable_all(jobs.len(), "record certificates", &detail),
                rolled_back,
            );
        }
        let mut results: Vec<Result<WriteResult>> = outcomes
            .into_iter()
            .map(|o| o.map_err(OpError::into_error))
            .collect();
        return match exec(c, "commit", "COMMIT").await {
            Ok(()) => (results, true),
            Err(e) => {
                fail_all(&mut results, "commit", &e.into_error().to_string());
                (results, false)
            }
        };
    }
    (Vec::new(), false)
}

/// The writer task: one connection of its own, batches of queued jobs, reconnects after failure.
pub(crate) async fn run_writer(target: PgTarget, first: Client, mut rx: mpsc::Receiver<Job>) {
    let mut client = Some(Conn::new(first));
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(j) = rx.recv().await {
        jobs.push(j);
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        // Why the database is unreachable, for every write it fails (a wrong password, a
        // refused certificate, a host that does not answer are fixed differently).
        let mut unreachable = String::from("the database is unreachable");
        if client.as_ref().is_none_or(Conn::is_closed) {
            client = match connect(&target).await {
                Ok(c) => Some(Conn::new(c)),
                Err(e) => {
                    unreachable = format!("the database is unreachable: {e}");
                    None
                }
            };
        }
        let results = match client.as_ref() {
            Some(c) => {
                let only_issues = jobs.iter().all(|j| matches!(j.op, WriteOp::Issue { .. }));
                let (results, healthy) = if only_issues {
                    apply_issue_batch(c, &jobs).await
                } else {
                    apply_batch(c, &jobs).await
                };
                if !healthy {
                    client = None;
                }
                results
            }
            None => unavailable_all(jobs.len(), "connect", &unreachable),
        };
        for (job, result) in jobs.drain(..).zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    async fn show(c: &tokio_postgres::Client) -> String {
        c.query_one("SHOW synchronous_commit", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    }

    /// Every write transaction commits durably, whatever the database's default, and keeps a
    /// stronger setting.
    #[tokio::test]
    async fn writes_commit_synchronously_whatever_the_server_default() {
        let url = mtls_test_util::fresh_postgres_database();
        let connect = || async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
        };
        let db = url.rsplit('/').next().unwrap().to_string();
        connect()
            .await
            .batch_execute(&format!("ALTER DATABASE {db} SET synchronous_commit = off"))
            .await
            .unwrap();
        let c = connect().await;
        assert_eq!(show(&c).await, "off");
        c.batch_execute(super::BEGIN).await.unwrap();
        assert_eq!(show(&c).await, "on");
        c.batch_execute("ROLLBACK").await.unwrap();
        c.batch_execute("SET synchronous_commit = remote_apply")
            .await
            .unwrap();
        c.batch_execute(super::BEGIN).await.unwrap();
        assert_eq!(show(&c).await, "remote_apply");
        c.batch_execute("ROLLBACK").await.unwrap();
    }
}
