//! Both backends through the public `Store`: SQLite in a temporary directory, PostgreSQL on a
//! real server (`MTLS_TEST_POSTGRES_URL`, started by `scripts/test.sh` through `scripts/pg.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mtls_pki::revocation::RevocationReason;
use mtls_pki::Serial;
use mtls_store::{
    CertificateToRecord, Error, IssueKind, ListFilter, Location, RenewalLimit, Status, Store,
};
use time::OffsetDateTime;

/// The online CA's default renewal limit: 10 renewals from one certificate per hour.
const LIMIT: RenewalLimit = RenewalLimit {
    max: 10,
    window: time::Duration::HOUR,
};

fn cert(subject: &str) -> CertificateToRecord {
    let serial = Serial::random().unwrap();
    CertificateToRecord {
        fingerprint: serial.to_string(),
        serial,
        issuer_key: "ik".into(),
        subject: subject.into(),
        sans: vec![],
        profile: "client".into(),
        not_before: OffsetDateTime::UNIX_EPOCH,
        not_after: OffsetDateTime::UNIX_EPOCH + time::Duration::days(30),
        pem: "pem".into(),
        key_id: None,
    }
}

/// A statement the server rejects (here: a NUL byte, which PostgreSQL text cannot hold) aborts
/// the whole transaction of its batch, and PostgreSQL answers a later `COMMIT` by rolling back
/// without an error. The other certificates queued in that batch must still be recorded, and
/// every write reported as done must be in the inventory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_statement_does_not_lose_the_rest_of_its_batch() {
    let store = Store::open(&Location::Postgres(
        mtls_test_util::fresh_postgres_database(),
    ))
    .await
    .unwrap();
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    let mut reported = Vec::new();
    for round in 0..6 {
        let mut certs: Vec<CertificateToRecord> =
            (0..24).map(|i| cert(&format!("CN=r{round}-{i}"))).collect();
        // The faulty one at a different place each round.
        certs.insert(round * 4, cert("CN=bad\0byte"));
        let results = futures_util::future::join_all(
            certs
                .iter()
                .map(|c| store.record_issued(c.clone(), IssueKind::Direct, "test", now)),
        )
        .await;
        for (c, r) in certs.iter().zip(results) {
            if c.subject.contains('\0') {
                assert!(r.is_err(), "the faulty record was accepted");
            } else {
                r.unwrap_or_else(|e| panic!("{}: {e}", c.subject));
                reported.push(c.serial.to_string());
            }
        }
    }
    let stored: std::collections::HashSet<String> = store
        .list(&ListFilter::default(), now)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.serial)
        .collect();
    let missing: Vec<_> = reported.iter().filter(|s| !stored.contains(*s)).collect();
    assert!(
        missing.is_empty(),
        "reported recorded but missing: {missing:?}"
    );
    assert_eq!(stored.len(), 6 * 24);
}

/// Opening an inventory whose schema is current runs no DDL: `ALTER TABLE … IF NOT EXISTS`
/// takes the table's heaviest lock even when there is nothing to do, so every start of a CA
/// instance or CLI command queued behind any running statement (here a transaction holding
/// the lightest lock, as any reader does) and every other instance queued behind it. (The
/// server's default isolation is SERIALIZABLE here: writes still work, each transaction
/// setting READ COMMITTED itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_current_inventory_waits_for_no_table_lock() {
    let url = mtls_test_util::fresh_postgres_database();
    drop(Store::open(&Location::Postgres(url.clone())).await.unwrap());
    let (reader, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let db = url.rsplit('/').next().unwrap();
    reader
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET default_transaction_isolation = 'serializable';
             BEGIN; LOCK TABLE certificates IN ACCESS SHARE MODE;"
        ))
        .await
        .unwrap();
    let store = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        Store::open(&Location::Postgres(url)),
    )
    .await
    .expect("opened without waiting for the reader's lock")
    .unwrap();
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    store
        .record_issued(cert("CN=after"), IssueKind::Direct, "test", now)
        .await
        .unwrap();
    reader.batch_execute("COMMIT").await.unwrap();
}

/// A read that scales with the inventory (here the audit log, held up by a lock another
/// session holds) does not hold up point lookups (a certificate, as for OCSP) queued behind it
/// on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_bulk_read_does_not_hold_up_point_lookups() {
    let url = mtls_test_util::fresh_postgres_database();
    let store = Store::open(&Location::Postgres(url.clone())).await.unwrap();
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    let c = cert("CN=point");
    store
        .record_issued(c.clone(), IssueKind::Direct, "test", now)
        .await
        .unwrap();
    let (locker, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; LOCK TABLE audit IN ACCESS EXCLUSIVE MODE;")
        .await
        .unwrap();
    let bulk = {
        let store = store.clone();
        tokio::spawn(async move { store.audit(10).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let found = tokio::time::timeout(std::time::Duration::from_secs(3), store.get(&c.serial, now))
        .await
        .expect("the lookup waited behind the audit read")
        .unwrap();
    assert!(found.is_some());
    locker.batch_execute("COMMIT").await.unwrap();
    assert!(!bulk.await.unwrap().unwrap().is_empty());
}

/// Two instances sharing PostgreSQL: one revokes a renewal (D, renewed from P) while the other
/// renews P. Whichever takes P first, the other sees its outcome: a renewal waiting behind the
/// revocation is refused (its check runs after the wait), and a revocation waits for a renewal
/// of P in flight (it locks what the revoked certificate was renewed from). Here "the other
/// instance" is a session doing what each does, held open at the point that matters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_and_a_revocation_of_its_lineage_on_two_instances_see_each_other() {
    let url = mtls_test_util::fresh_postgres_database();
    let store = Store::open(&Location::Postgres(url.clone())).await.unwrap();
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    let renew = |c: &CertificateToRecord| IssueKind::Renewal {
        previous: c.serial.clone(),
        limit: LIMIT,
    };
    let (p, d) = (cert("CN=p"), cert("CN=p"));
    store
        .record_issued(p.clone(), IssueKind::Direct, "t", now)
        .await
        .unwrap();
    store
        .record_issued(d.clone(), renew(&p), "t", now)
        .await
        .unwrap();
    let (other, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);

    // The other instance revokes D (locking P, as a revocation now does), not yet committed.
    other
        .batch_execute(&format!(
            "BEGIN;
             UPDATE certificates SET revoked_at = 1 WHERE serial = '{}';
             SELECT 1 FROM certificates WHERE serial = '{}' FOR UPDATE;",
            d.serial, p.serial
        ))
        .await
        .unwrap();
    let renewal = {
        let (store, r) = (store.clone(), cert("CN=p"));
        let kind = renew(&p);
        tokio::spawn(async move { store.record_issued(r, kind, "t", now).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !renewal.is_finished(),
        "the renewal waits for the revocation"
    );
    other.batch_execute("COMMIT").await.unwrap();
    let err = renewal.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::NotRenewable(_)), "{err}");

    // The other way round: a renewal of Q in flight elsewhere (Q locked), then a revocation of
    // E (renewed from Q) here waits for it.
    let (q, e) = (cert("CN=q"), cert("CN=q"));
    store
        .record_issued(q.clone(), IssueKind::Direct, "t", now)
        .await
        .unwrap();
    store
        .record_issued(e.clone(), renew(&q), "t", now)
        .await
        .unwrap();
    other
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM certificates WHERE serial = '{}' FOR UPDATE;",
            q.serial
        ))
        .await
        .unwrap();
    let revocation = {
        let store = store.clone();
        let serial = e.serial.clone();
        tokio::spawn(async move { store.revoke(&serial, None, None, "t", now).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !revocation.is_finished(),
        "the revocation waits for the renewal in flight"
    );
    other.batch_execute("COMMIT").await.unwrap();
    revocation.await.unwrap().unwrap();
}

/// A renewal is recorded only while the certificate it renews is unrevoked at commit time: a
/// revocation that lands between the CA's check and the write wins.
async fn renewal_of_a_revoked_certificate_is_refused(location: Location) {
    let store = Store::open(&location).await.unwrap();
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    let (revoked, live) = (cert("CN=a"), cert("CN=b"));
    for c in [&revoked, &live] {
        store
            .record_issued(c.clone(), IssueKind::Direct, "test", now)
            .await
            .unwrap();
    }
    store
        .revoke(
            &revoked.serial,
            None,
            Some(RevocationReason::KeyCompromise),
            "test",
            now,
        )
        .await
        .unwrap();
    let renew = |c: &CertificateToRecord| IssueKind::Renewal {
        previous: c.serial.clone(),
        limit: LIMIT,
    };
    let refused = store
        .record_issued(cert("CN=a"), renew(&revoked), "test", now)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::NotRenewable(s) if *s == revoked.serial.to_string()),
        "{refused:?}"
    );
    // The early check (before a CA signs) answers the same, and passes a live certificate.
    let early = store
        .check_renewal(&revoked.serial, LIMIT, now)
        .await
        .unwrap_err();
    assert!(matches!(&early, Error::NotRenewable(_)), "{early:?}");
    store.check_renewal(&live.serial, LIMIT, now).await.unwrap();
    let unknown = cert("CN=c");
    assert!(matches!(
        store
            .record_issued(cert("CN=c"), renew(&unknown), "test", now)
            .await,
        Err(Error::NotRenewable(_))
    ));
    store
        .record_issued(cert("CN=b"), renew(&live), "test", now)
        .await
        .unwrap();
    let all = store.list(&ListFilter::default(), now).await.unwrap();
    assert_eq!(all.len(), 3, "two originals and one renewal");
}

#[tokio::test]
async fn renewal_of_a_revoked_certificate_is_refused_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    renewal_of_a_revoked_certificate_is_refused(Location::Sqlite(dir.path().join("inv.db"))).await;
}

#[tokio::test]
async fn renewal_of_a_revoked_certificate_is_refused_on_postgres() {
    renewal_of_a_revoked_certificate_is_refused(Location::Postgres(
        mtls_test_util::fresh_postgres_database(),
    ))
    .await;
}

/// At most `max` certificates renewed from one certificate within the window: one more is
/// refused (`RenewalRateLimited`, saying when one fits again) and records nothing; a renewal
/// from another certificate (the one just renewed, the usual next step) is not affected; once
/// the oldest renewal has left the window, the certificate renews again.
async fn renewals_from_one_certificate_are_limited(location: Location) {
    let store = Store::open(&location).await.unwrap();
    let t0 = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    let minutes = |m: i64| t0 + time::Duration::minutes(m);
    let limit = RenewalLimit {
        max: 3,
        window: time::Duration::HOUR,
    };
    let renew = |c: &CertificateToRecord| IssueKind::Renewal {
        previous: c.serial.clone(),
        limit,
    };
    let a = cert("CN=a");
    store
        .record_issued(a.clone(), IssueKind::Direct, "t", t0)
        .await
        .unwrap();
    // Three renewals from a, ten minutes apart (a client retrying after lost answers).
    let mut renewed = Vec::new();
    for m in [0, 10, 20] {
        let r = cert("CN=a");
        store
            .record_issued(r.clone(), renew(&a), "t", minutes(m))
            .await
            .unwrap();
        renewed.push(r);
    }
    let limited = |e: Error| match e {
        Error::RenewalRateLimited {
            serial,
            limit: l,
            retry_after,
        } => {
            assert_eq!((serial, l), (a.serial.to_string(), limit));
            retry_after
        }
        other => panic!("{other:?}"),
    };
    // The early check (a read, before the CA signs) gives the answer recording gives.
    let early = |at: OffsetDateTime| {
        let (store, serial) = (store.clone(), a.serial.clone());
        async move { store.check_renewal(&serial, limit, at).await }
    };
    // A fourth: refused until the first (at 0) leaves the window, at 60.
    assert_eq!(
        limited(early(minutes(30)).await.unwrap_err()),
        time::Duration::minutes(30)
    );
    let e = store
        .record_issued(cert("CN=a"), renew(&a), "t", minutes(30))
        .await
        .unwrap_err();
    assert_eq!(limited(e), time::Duration::minutes(30));
    let recorded = |n: usize| {
        let store = store.clone();
        async move {
            let all = store
                .list(&ListFilter::default(), minutes(30))
                .await
                .unwrap();
            assert_eq!(all.len(), n, "certificates");
            assert_eq!(store.audit(100).await.unwrap().len(), n, "audit entries");
        }
    };
    recorded(4).await;
    // From the newest certificate of the lineage: refused too (the limit is per lineage, or
    // renewing each time from the newest would never reach it), and said of that one.
    let e = store
        .check_renewal(&renewed[2].serial, limit, minutes(30))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::RenewalRateLimited { serial, retry_after, .. }
            if *serial == renewed[2].serial.to_string() && *retry_after == time::Duration::minutes(30)),
        "{e:?}"
    );
    let e = store
        .record_issued(cert("CN=a"), renew(&renewed[2]), "t", minutes(30))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::RenewalRateLimited { .. }), "{e:?}");
    recorded(4).await;
    // A second before the first renewal leaves the window: refused; then accepted.
    let almost = minutes(60) - time::Duration::SECOND;
    assert_eq!(
        limited(early(almost).await.unwrap_err()),
        time::Duration::SECOND
    );
    let e = store
        .record_issued(cert("CN=a"), renew(&a), "t", almost)
        .await
        .unwrap_err();
    assert_eq!(limited(e), time::Duration::SECOND);
    early(minutes(60)).await.unwrap();
    let newest = cert("CN=a");
    store
        .record_issued(newest.clone(), renew(&a), "t", minutes(60))
        .await
        .unwrap();
    // And full again (10, 20 and 60 in the window): until 10 leaves it, at 70, from any
    // certificate of the lineage.
    assert_eq!(
        limited(early(minutes(60)).await.unwrap_err()),
        time::Duration::minutes(10)
    );
    let e = store
        .record_issued(cert("CN=a"), renew(&newest), "t", minutes(60))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::RenewalRateLimited { .. }), "{e:?}");
    // The check only reads: nothing was recorded by it.
    recorded(5).await;
    // Another lineage has its own count.
    let b = cert("CN=b");
    store
        .record_issued(b.clone(), IssueKind::Direct, "t", minutes(60))
        .await
        .unwrap();
    store
        .record_issued(cert("CN=b"), renew(&b), "t", minutes(60))
        .await
        .unwrap();
}

/// Renewing each time from the newest certificate (a chain a → b → c …) counts against one
/// limit: the lineage's, whatever certificate a renewal starts from.
async fn chained_renewals_share_their_lineage_s_limit(location: Location) {
    let store = Store::open(&location).await.unwrap();
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    let limit = RenewalLimit {
        max: 3,
        window: time::Duration::HOUR,
    };
    let mut current = cert("CN=chain");
    store
        .record_issued(current.clone(), IssueKind::Direct, "t", now)
        .await
        .unwrap();
    for i in 0..3 {
        let next = cert("CN=chain");
        let kind = IssueKind::Renewal {
            previous: current.serial.clone(),
            limit,
        };
        store
            .record_issued(next.clone(), kind, "t", now + time::Duration::minutes(i))
            .await
            .unwrap();
        current = next;
    }
    let kind = IssueKind::Renewal {
        previous: current.serial.clone(),
        limit,
    };
    let e = store
        .record_issued(
            cert("CN=chain"),
            kind,
            "t",
            now + time::Duration::minutes(5),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::RenewalRateLimited { .. }), "{e:?}");
}

#[tokio::test]
async fn chained_renewals_share_their_lineage_s_limit_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    chained_renewals_share_their_lineage_s_limit(Location::Sqlite(dir.path().join("inv.db"))).await;
}

#[tokio::test]
async fn chained_renewals_share_their_lineage_s_limit_on_postgres() {
    chained_renewals_share_their_lineage_s_limit(Location::Postgres(
        mtls_test_util::fresh_postgres_database(),
    ))
    .await;
}

#[tokio::test]
async fn renewals_from_one_certificate_are_limited_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    renewals_from_one_certificate_are_limited(Location::Sqlite(dir.path().join("inv.db"))).await;
}

#[tokio::test]
async fn renewals_from_one_certificate_are_limited_on_postgres() {
    renewals_from_one_certificate_are_limited(Location::Postgres(
        mtls_test_util::fresh_postgres_database(),
    ))
    .await;
}

/// Renewals from one certificate queued together (one batch, one transaction) are counted
/// one after the other: exactly `max` of them are recorded, the rest refused.
async fn renewals_in_one_batch_are_counted_one_by_one(location: Location) {
    let store = Store::open(&location).await.unwrap();
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    let a = cert("CN=a");
    store
        .record_issued(a.clone(), IssueKind::Direct, "t", now)
        .await
        .unwrap();
    let limit = RenewalLimit {
        max: 5,
        window: time::Duration::HOUR,
    };
    let results = futures_util::future::join_all((0..40).map(|_| {
        store.record_issued(
            cert("CN=a"),
            IssueKind::Renewal {
                previous: a.serial.clone(),
                limit,
            },
            "t",
            now,
        )
    }))
    .await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(accepted, 5, "{results:?}");
    for r in results.into_iter().filter_map(Result::err) {
        assert!(matches!(r, Error::RenewalRateLimited { .. }), "{r:?}");
    }
    let all = store.list(&ListFilter::default(), now).await.unwrap();
    assert_eq!(all.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_in_one_batch_are_counted_one_by_one_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    renewals_in_one_batch_are_counted_one_by_one(Location::Sqlite(dir.path().join("inv.db"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_in_one_batch_are_counted_one_by_one_on_postgres() {
    renewals_in_one_batch_are_counted_one_by_one(Location::Postgres(
        mtls_test_util::fresh_postgres_database(),
    ))
    .await;
}

/// Renewals of one lineage sent to two CA instances at once are counted across both: the
/// limit holds for the lineage, not per instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_on_two_instances_share_the_lineage_s_limit() {
    let url = mtls_test_util::fresh_postgres_database();
    let one = Store::open(&Location::Postgres(url.clone())).await.unwrap();
    let two = Store::open(&Location::Postgres(url)).await.unwrap();
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    let limit = RenewalLimit {
        max: 5,
        window: time::Duration::HOUR,
    };
    for round in 0..3 {
        let a = cert("CN=a");
        one.record_issued(a.clone(), IssueKind::Direct, "t", now)
            .await
            .unwrap();
        let results = futures_util::future::join_all((0..40).map(|i| {
            let store = if i % 2 == 0 { &one } else { &two };
            store.record_issued(
                cert("CN=a"),
                IssueKind::Renewal {
                    previous: a.serial.clone(),
                    limit,
                },
                "t",
                now,
            )
        }))
        .await;
        let accepted = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(accepted, 5, "round {round}: {results:?}");
    }
}

/// A key-compromise revocation reaches every certificate renewed from the compromised one
/// (a chain a → b → c, and a second renewal of a), each with a feed sequence number and an
/// audit entry, but not an unrelated certificate or one already revoked; `superseded` revokes
/// only the certificate named.
async fn key_compromise_reaches_renewals(location: Location) {
    let store = Store::open(&location).await.unwrap();
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    let renew = |c: &CertificateToRecord| IssueKind::Renewal {
        previous: c.serial.clone(),
        limit: LIMIT,
    };
    let record = |c: &CertificateToRecord, kind| {
        let store = store.clone();
        let c = c.clone();
        async move { store.record_issued(c, kind, "test", now).await.unwrap() }
    };
    let (a, b, c, a2, done, other) = (
        cert("CN=a"),
        cert("CN=a"),
        cert("CN=a"),
        cert("CN=a"),
        cert("CN=a"),
        cert("CN=o"),
    );
    record(&a, IssueKind::Direct).await;
    record(&b, renew(&a)).await;
    record(&c, renew(&b)).await;
    record(&a2, renew(&a)).await;
    record(&done, renew(&c)).await;
    record(&other, IssueKind::Direct).await;
    store
        .revoke(
            &done.serial,
            None,
            Some(RevocationReason::Superseded),
            "t",
            now,
        )
        .await
        .unwrap();
    // Another reason: only the certificate named.
    let superseded = store
        .revoke(
            &b.serial,
            None,
            Some(RevocationReason::Superseded),
            "t",
            now,
        )
        .await
        .unwrap();
    assert!(superseded.also_revoked.is_empty());
    let status = |s: &CertificateToRecord| {
        let store = store.clone();
        let serial = s.serial.clone();
        async move { store.get(&serial, now).await.unwrap().unwrap().status }
    };
    assert_eq!(status(&c).await, Status::Valid);
    let compromised = store
        .revoke(
            &a.serial,
            None,
            Some(RevocationReason::KeyCompromise),
            "admin",
            now,
        )
        .await
        .unwrap();
    let mut got = compromised.also_revoked.clone();
    got.sort();
    let mut want = vec![c.serial.to_string(), a2.serial.to_string()];
    want.sort();
    assert_eq!(got, want, "b and done were revoked before");
    for s in [&a, &b, &c, &a2, &done] {
        assert_eq!(status(s).await, Status::Revoked);
    }
    assert_eq!(status(&other).await, Status::Valid);
    let feed = store.revocations_after(0, 100).await.unwrap();
    assert_eq!(
        feed.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "one sequence number each"
    );
    let c_entry = feed.iter().find(|e| e.entry.serial == c.serial).unwrap();
    assert_eq!(c_entry.entry.reason, Some(RevocationReason::KeyCompromise));
    let audit = store.audit(20).await.unwrap();
    let c_audit = audit
        .iter()
        .find(|e| e.action == "revoke" && e.serial.as_deref() == Some(&c.serial.to_string()))
        .unwrap();
    assert_eq!(c_audit.actor, "admin");
    assert!(
        c_audit
            .detail
            .contains(&format!("renewal lineage of {}", a.serial)),
        "{}",
        c_audit.detail
    );
}

/// Any reason but `superseded` and `keyCompromise` (none given included) distrusts the holder:
/// every unexpired certificate of the lineage goes, up and down, whatever its key, so that
/// offboarding through the latest serial does not leave its predecessor (valid for a third
/// of its life after a renewal) working, and revoking an older one leaves no renewal of it
/// renewable; an expired ancestor is left as it is (nothing to add to the CRL).
async fn revoking_for_the_holder_reaches_the_unexpired_lineage(location: Location) {
    let store = Store::open(&location).await.unwrap();
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    let renew = |c: &CertificateToRecord| IssueKind::Renewal {
        previous: c.serial.clone(),
        limit: LIMIT,
    };
    let record = |c: &CertificateToRecord, kind| {
        let store = store.clone();
        let c = c.clone();
        async move { store.record_issued(c, kind, "test", now).await.unwrap() }
    };
    let status = |s: &CertificateToRecord| {
        let store = store.clone();
        let serial = s.serial.clone();
        async move { store.get(&serial, now).await.unwrap().unwrap().status }
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let mut old = cert("CN=h");
    old.not_after = OffsetDateTime::UNIX_EPOCH + time::Duration::hours(12);
    let (a, b, c, a2, other) = (
        cert("CN=h"),
        cert("CN=h"),
        cert("CN=h"),
        cert("CN=h"),
        cert("CN=o"),
    );
    record(&old, IssueKind::Direct).await;
    record(&a, renew(&old)).await;
    record(&b, renew(&a)).await;
    record(&c, renew(&b)).await;
    record(&a2, renew(&a)).await;
    record(&other, IssueKind::Direct).await;
    let r = store
        .revoke(
            &b.serial,
            None,
            Some(RevocationReason::PrivilegeWithdrawn),
            "admin",
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        sorted(r.also_revoked.clone()),
        sorted([&a, &c, &a2].iter().map(|x| x.serial.to_string()).collect())
    );
    assert_eq!(status(&old).await, Status::Expired, "expired: left alone");
    assert_eq!(status(&other).await, Status::Valid);

    // No reason given: an older certificate revoked takes its renewals with it.
    let (x, y) = (cert("CN=x"), cert("CN=x"));
    record(&x, IssueKind::Direct).await;
    record(&y, renew(&x)).await;
    let r = store
        .revoke(&x.serial, None, None, "admin", now)
        .await
        .unwrap();
    assert_eq!(r.also_revoked, vec![y.serial.to_string()]);
    let e = store
        .record_issued(cert("CN=x"), renew(&y), "test", now)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotRenewable(_)), "{e}");

    // `superseded`: that certificate alone.
    let (z, w) = (cert("CN=z"), cert("CN=z"));
    record(&z, IssueKind::Direct).await;
    record(&w, renew(&z)).await;
    let r = store
        .revoke(
            &z.serial,
            None,
            Some(RevocationReason::Superseded),
            "admin",
            now,
        )
        .await
        .unwrap();
    assert!(r.also_revoked.is_empty());
    assert_eq!(status(&w).await, Status::Valid);
}

#[tokio::test]
async fn revoking_for_the_holder_reaches_the_unexpired_lineage_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    revoking_for_the_holder_reaches_the_unexpired_lineage(Location::Sqlite(
        dir.path().join("inv.db"),
    ))
    .await;
}

#[tokio::test]
async fn revoking_for_the_holder_reaches_the_unexpired_lineage_on_postgres() {
    revoking_for_the_holder_reaches_the_unexpired_lineage(Location::Postgres(
        mtls_test_util::fresh_postgres_database(),
    ))
    .await;
}

/// A record of a real certificate for `key` (the lineage walk compares keys).
fn real(pki: &mtls_test_util::TestPki, key: &mtls_pki::PrivateKey) -> CertificateToRecord {
    use mtls_pki::issue::{issue_leaf, LeafRequest, Profile};
    let now = OffsetDateTime::now_utc();
    let req = LeafRequest {
        profile: Profile::Client,
        subject: mtls_pki::Subject::cn("svc"),
        sans: vec![],
        lifetime: time::Duration::days(30),
        urls: Default::default(),
    };
    let issued = issue_leaf(&pki.intermediate, key.key_pair(), &req, now).unwrap();
    CertificateToRecord {
        fingerprint: issued.serial.to_string(),
        serial: issued.serial.clone(),
        issuer_key: "ik".into(),
        subject: "CN=svc".into(),
        sans: vec![],
        profile: "client".into(),
        not_before: issued.not_before,
        not_after: issued.not_after,
        pem: issued.pem(),
        key_id: None,
    }
}

/// Revoking a renewal for key compromise also revokes the certificates it renews with the
/// same key, and everything renewed from the first of those; a certificate further up with
/// another key stays valid. Lineage: g (key 0) → p (key 1) → t (key 1) → d (key 2), and
/// p → s (key 1); t is compromised.
async fn key_compromise_reaches_same_key_ancestors(location: Location) {
    use mtls_pki::{KeyAlgorithm, PrivateKey};
    let store = Store::open(&location).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let pki = mtls_test_util::TestPki::new("lineage");
    let keys: Vec<PrivateKey> = (0..3)
        .map(|_| PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap())
        .collect();
    let (g, p, t, d, s) = (
        real(&pki, &keys[0]),
        real(&pki, &keys[1]),
        real(&pki, &keys[1]),
        real(&pki, &keys[2]),
        real(&pki, &keys[1]),
    );
    let renew = |c: &CertificateToRecord| IssueKind::Renewal {
        previous: c.serial.clone(),
        limit: LIMIT,
    };
    for (c, kind) in [
        (&g, IssueKind::Direct),
        (&p, renew(&g)),
        (&t, renew(&p)),
        (&d, renew(&t)),
        (&s, renew(&p)),
    ] {
        store
            .record_issued(c.clone(), kind, "test", now)
            .await
            .unwrap();
    }
    let r = store
        .revoke(
            &t.serial,
            None,
            Some(RevocationReason::KeyCompromise),
            "t",
            now,
        )
        .await
        .unwrap();
    let mut got = r.also_revoked.clone();
    got.sort();
    let mut want: Vec<String> = [&p, &d, &s].iter().map(|c| c.serial.to_string()).collect();
    want.sort();
    assert_eq!(got, want);
    let g_now = store.get(&g.serial, now).await.unwrap().unwrap();
    assert_eq!(g_now.status, Status::Valid, "another key further up");
}

#[tokio::test]
async fn key_compromise_reaches_same_key_ancestors_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    key_compromise_reaches_same_key_ancestors(Location::Sqlite(dir.path().join("inv.db"))).await;
}

#[tokio::test]
async fn key_compromise_reaches_same_key_ancestors_on_postgres() {
    key_compromise_reaches_same_key_ancestors(Location::Postgres(
        mtls_test_util::fresh_postgres_database(),
    ))
    .await;
}

/// The monitor's counts come from the database: by status, and expiring soon without the
/// certificates a valid renewal supersedes (a renewed certificate running out is no news).
async fn counts_leave_out_superseded_certificates(location: Location) {
    let store = Store::open(&location).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let days = |d: i64| now + time::Duration::days(d);
    let with_end = |end: OffsetDateTime| {
        let mut c = cert("CN=x");
        c.not_before = now - time::Duration::days(100);
        c.not_after = end;
        c
    };
    let renew = |c: &CertificateToRecord| IssueKind::Renewal {
        previous: c.serial.clone(),
        limit: LIMIT,
    };
    let (a, b, c, d, e, f) = (
        with_end(days(3)),
        with_end(days(90)),
        with_end(days(3)),
        with_end(days(90)),
        with_end(days(-1)),
        with_end(days(20)),
    );
    for (x, kind) in [
        (&a, IssueKind::Direct),
        (&b, renew(&a)),
        (&c, IssueKind::Direct),
        (&d, renew(&c)),
        (&e, IssueKind::Direct),
        (&f, IssueKind::Direct),
    ] {
        store
            .record_issued(x.clone(), kind, "test", now)
            .await
            .unwrap();
    }
    // c's renewal alone is revoked (superseded: any other reason would take c too): c is
    // still the one in use, and runs out.
    store
        .revoke(
            &d.serial,
            None,
            Some(RevocationReason::Superseded),
            "test",
            now,
        )
        .await
        .unwrap();
    let counts = store
        .counts(now, &[time::Duration::days(7), time::Duration::days(30)])
        .await
        .unwrap();
    assert_eq!(
        counts,
        mtls_store::InventoryCounts {
            valid: 4,
            expired: 1,
            revoked: 1,
            expiring: vec![1, 2],
        }
    );
}

#[tokio::test]
async fn counts_leave_out_superseded_certificates_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    counts_leave_out_superseded_certificates(Location::Sqlite(dir.path().join("inv.db"))).await;
}

#[tokio::test]
async fn counts_leave_out_superseded_certificates_on_postgres() {
    counts_leave_out_superseded_certificates(Location::Postgres(
        mtls_test_util::fresh_postgres_database(),
    ))
    .await;
}

#[tokio::test]
async fn key_compromise_reaches_renewals_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    key_compromise_reaches_renewals(Location::Sqlite(dir.path().join("inv.db"))).await;
}

#[tokio::test]
async fn key_compromise_reaches_renewals_on_postgres() {
    key_compromise_reaches_renewals(Location::Postgres(mtls_test_util::fresh_postgres_database()))
        .await;
}

/// Two CA instances on one PostgreSQL database revoking at the same time: the feed's sequence
/// numbers are 1..n without a gap or a repeat, each revocation has exactly one, and both
/// instances read the same feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_revocations_on_two_instances_form_one_feed_sequence() {
    let url = mtls_test_util::fresh_postgres_database();
    let a = Store::open(&Location::Postgres(url.clone())).await.unwrap();
    let b = Store::open(&Location::Postgres(url)).await.unwrap();
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    let certs: Vec<CertificateToRecord> = (0..40).map(|i| cert(&format!("CN=c{i}"))).collect();
    for c in &certs {
        a.record_issued(c.clone(), IssueKind::Direct, "test", now)
            .await
            .unwrap();
    }
    let revokes = certs.iter().enumerate().map(|(i, c)| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let serial = c.serial.clone();
        async move { store.revoke(&serial, None, None, "test", now).await }
    });
    for r in futures_util::future::join_all(revokes).await {
        r.unwrap();
    }
    let from_a = a.revocations_after(0, 1000).await.unwrap();
    let from_b = b.revocations_after(0, 1000).await.unwrap();
    let seqs: Vec<i64> = from_a.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<i64>>());
    assert_eq!(
        seqs,
        from_b.iter().map(|e| e.seq).collect::<Vec<_>>(),
        "both instances serve the same sequence"
    );
    let mut serials: Vec<String> = from_a.iter().map(|e| e.entry.serial.to_string()).collect();
    serials.sort();
    let mut expected: Vec<String> = certs.iter().map(|c| c.serial.to_string()).collect();
    expected.sort();
    assert_eq!(serials, expected);
    assert_eq!(b.revocation_epoch().await.unwrap(), 40);
}

/// A database restored from an older backup (here: an empty one) is behind the CA's ledger:
/// refused until reconciled; reconciling re-applies the published CRL's revocations (recording
/// a certificate the database never saw) and CRL numbers continue after the published one.
async fn a_restored_database_is_refused_until_reconciled(before: Location, restored: Location) {
    let pki = mtls_test_util::TestPki::new("restore");
    let issuer_key = mtls_pki::inspect::sha256_hex(&pki.intermediate.key().public_key_spki());
    let dir = tempfile::tempdir().unwrap();
    let ledger = || mtls_store::Ledger::new(dir.path().join("ledger"));
    let now = OffsetDateTime::now_utc();
    let store = Store::open(&before)
        .await
        .unwrap()
        .with_ledger(ledger())
        .await
        .unwrap();
    let mut c = cert("CN=revoked-after-backup");
    c.issuer_key = issuer_key.clone();
    store
        .record_issued(c.clone(), IssueKind::Direct, "test", now)
        .await
        .unwrap();
    store
        .revoke(
            &c.serial,
            None,
            Some(RevocationReason::KeyCompromise),
            "test",
            now,
        )
        .await
        .unwrap();
    let first = store
        .sign_crl(&pki.intermediate, "test", now, time::Duration::days(1))
        .await
        .unwrap();
    assert_eq!((first.number, first.entries), (1, 1));

    let behind = Store::open(&restored).await.unwrap();
    let e = behind.clone().with_ledger(ledger()).await.unwrap_err();
    assert!(matches!(e, Error::RolledBack { .. }), "{e}");
    let behind = behind.with_ledger_unchecked(ledger());
    // Publishing from it without reconciling is refused: its next CRL number is behind.
    let e = behind
        .sign_crl(&pki.intermediate, "test", now, time::Duration::days(1))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::RolledBack { .. }), "{e}");
    let done = behind.reconcile("test", now).await.unwrap();
    assert_eq!(done.revocations, 1);
    // The re-applied revocation is numbered above what the feed already served (epoch 1).
    let events = behind.revocations_after(1, 10).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.entry.serial == c.serial && e.seq > 1),
        "{events:?}"
    );
    behind.check_published().await.unwrap();
    let next = behind
        .sign_crl(&pki.intermediate, "test", now, time::Duration::days(1))
        .await
        .unwrap();
    // Numbers continue after the published 1 (the refused attempt allocated 1 again).
    assert_eq!((next.number, next.entries), (2, 1));
    let listed = mtls_pki::revocation::crl_entries(&next.der).unwrap();
    assert_eq!(listed[0].serial, c.serial);
    assert_eq!(listed[0].reason, Some(RevocationReason::KeyCompromise));
    // Nothing left to do, and the feed's sequence did not go backwards.
    assert_eq!(behind.reconcile("test", now).await.unwrap().revocations, 0);
    assert!(behind.revocation_epoch().await.unwrap() >= 1);
}

#[tokio::test]
async fn a_restored_database_is_refused_until_reconciled_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_restored_database_is_refused_until_reconciled(
        Location::Sqlite(dir.path().join("a.db")),
        Location::Sqlite(dir.path().join("b.db")),
    )
    .await;
}

#[tokio::test]
async fn a_restored_database_is_refused_until_reconciled_on_postgres() {
    a_restored_database_is_refused_until_reconciled(
        Location::Postgres(mtls_test_util::fresh_postgres_database()),
        Location::Postgres(mtls_test_util::fresh_postgres_database()),
    )
    .await;
}

/// Reconciling a restored database re-applies a revocation of E (renewed from Q) while another
/// instance is renewing Q: like `revoke`, it waits for that renewal (it locks what E was renewed
/// from), so one of the two sees the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciling_waits_for_a_renewal_of_the_lineage_in_flight() {
    let pki = mtls_test_util::TestPki::new("reconcile-lineage");
    let issuer_key = mtls_pki::inspect::sha256_hex(&pki.intermediate.key().public_key_spki());
    let dir = tempfile::tempdir().unwrap();
    let ledger = || mtls_store::Ledger::new(dir.path().join("ledger"));
    let now = OffsetDateTime::now_utc();
    let (mut q, mut e) = (cert("CN=q"), cert("CN=q"));
    q.issuer_key = issuer_key.clone();
    e.issuer_key = issuer_key.clone();
    let renewal_of_q = || IssueKind::Renewal {
        previous: q.serial.clone(),
        limit: LIMIT,
    };
    let record_both = |store: Store| {
        let (q, e, kind) = (q.clone(), e.clone(), renewal_of_q());
        async move {
            store
                .record_issued(q, IssueKind::Direct, "t", now)
                .await
                .unwrap();
            store.record_issued(e, kind, "t", now).await.unwrap();
        }
    };
    // The live database: E revoked and published in a CRL.
    let live = Store::open(&Location::Postgres(
        mtls_test_util::fresh_postgres_database(),
    ))
    .await
    .unwrap()
    .with_ledger(ledger())
    .await
    .unwrap();
    record_both(live.clone()).await;
    live.revoke(&e.serial, None, None, "t", now).await.unwrap();
    live.sign_crl(&pki.intermediate, "t", now, time::Duration::days(1))
        .await
        .unwrap();
    // The backup: Q and E, E not yet revoked.
    let url = mtls_test_util::fresh_postgres_database();
    let restored = Store::open(&Location::Postgres(url.clone())).await.unwrap();
    record_both(restored.clone()).await;
    let restored = restored.with_ledger_unchecked(ledger());

    let (other, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    other
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM certificates WHERE serial = '{}' FOR UPDATE;",
            q.serial
        ))
        .await
        .unwrap();
    let reconciling = {
        let restored = restored.clone();
        tokio::spawn(async move { restored.reconcile("t", now).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !reconciling.is_finished(),
        "reconciling waits for the renewal in flight"
    );
    other.batch_execute("COMMIT").await.unwrap();
    assert_eq!(reconciling.await.unwrap().unwrap().revocations, 1);
    let err = restored
        .record_issued(cert("CN=q"), renewal_of_q(), "t", now)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotRenewable(_)), "{err}");
}

/// Two instances building CRLs while revocations land (from either instance): whatever the
/// interleaving, a CRL with a higher number lists every revocation a lower-numbered one lists
/// (verifiers keep the highest number and refuse lower ones as replays).
async fn a_higher_crl_number_never_lists_fewer_revocations(location: Location) {
    let pki = mtls_test_util::TestPki::new("crl-race");
    let issuer_key = mtls_pki::inspect::sha256_hex(&pki.intermediate.key().public_key_spki());
    let issuer = std::sync::Arc::new(pki.intermediate);
    let a = Store::open(&location).await.unwrap();
    let b = Store::open(&location).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let certs: Vec<CertificateToRecord> = (0..30)
        .map(|i| {
            let mut c = cert(&format!("CN=c{i}"));
            c.issuer_key = issuer_key.clone();
            c
        })
        .collect();
    for c in &certs {
        a.record_issued(c.clone(), IssueKind::Direct, "test", now)
            .await
            .unwrap();
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let builders: Vec<_> = [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .map(|store| {
            let (issuer, done) = (issuer.clone(), done.clone());
            tokio::spawn(async move {
                let mut crls = Vec::new();
                // Bounded: at most 200 CRLs per builder.
                for _ in 0..200 {
                    let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                    let crl = store
                        .sign_crl(&issuer, "test", now, time::Duration::days(1))
                        .await
                        .unwrap();
                    let listed: std::collections::BTreeSet<String> =
                        mtls_pki::revocation::crl_entries(&crl.der)
                            .unwrap()
                            .into_iter()
                            .map(|e| e.serial.to_string())
                            .collect();
                    crls.push((crl.number, listed));
                    if finished {
                        break;
                    }
                }
                crls
            })
        })
        .collect();
    for (i, c) in certs.iter().enumerate() {
        let store = if i % 2 == 0 { &a } else { &b };
        store
            .revoke(&c.serial, None, None, "test", now)
            .await
            .unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut crls = Vec::new();
    for b in builders {
        crls.extend(b.await.unwrap());
    }
    // And one built after every revocation.
    let last = a
        .sign_crl(&issuer, "test", now, time::Duration::days(1))
        .await
        .unwrap();
    let listed = mtls_pki::revocation::crl_entries(&last.der).unwrap();
    assert_eq!(listed.len(), certs.len());
    crls.push((
        last.number,
        listed.into_iter().map(|e| e.serial.to_string()).collect(),
    ));
    crls.sort_by_key(|(n, _)| *n);
    for pair in crls.windows(2) {
        let ((n1, s1), (n2, s2)) = (&pair[0], &pair[1]);
        assert!(n1 < n2, "CRL number {n1} allocated twice");
        assert!(
            s1.is_subset(s2),
            "CRL {n2} lists {} revocations but misses some of CRL {n1}'s {}",
            s2.len(),
            s1.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_crl_number_never_lists_fewer_revocations_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_higher_crl_number_never_lists_fewer_revocations(Location::Sqlite(dir.path().join("c.db")))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_crl_number_never_lists_fewer_revocations_on_postgres() {
    a_higher_crl_number_never_lists_fewer_revocations(Location::Postgres(
        mtls_test_util::fresh_postgres_database(),
    ))
    .await;
}

/// Two processes on one host (`mtls crl` beside `mtls ca serve`) share the CA's ledger: one
/// may allocate CRL number n, the other n + 1 and record it first. The first is late, not
/// rolled back: it must not fail with `RolledBack` (and must not publish a CRL older than the
/// one recorded); a database really behind the ledger is still refused (see
/// `a_restored_database_is_refused_until_reconciled`).
async fn crl_builders_sharing_a_ledger_see_no_false_rollback(location: Location) {
    let pki = mtls_test_util::TestPki::new("crl-ledger");
    let issuer = std::sync::Arc::new(pki.intermediate);
    let dir = tempfile::tempdir().unwrap();
    let ledger = || mtls_store::Ledger::new(dir.path().join("ledger"));
    let a = Store::open(&location)
        .await
        .unwrap()
        .with_ledger(ledger())
        .await
        .unwrap();
    let b = Store::open(&location)
        .await
        .unwrap()
        .with_ledger(ledger())
        .await
        .unwrap();
    let now = OffsetDateTime::now_utc();
    let builders: Vec<_> = [a.clone(), b.clone(), a, b]
        .into_iter()
        .map(|store| {
            let issuer = issuer.clone();
            tokio::spawn(async move {
                let mut numbers = Vec::new();
                // Bounded: 60 CRLs per builder.
                for _ in 0..60 {
                    let crl = store
                        .sign_crl(&issuer, "test", now, time::Duration::days(1))
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    numbers.push((crl.number, crl.der));
                }
                numbers
            })
        })
        .collect();
    let mut numbers = Vec::new();
    for b in builders {
        numbers.extend(b.await.unwrap());
    }
    numbers.sort_by_key(|(n, _)| *n);
    numbers.dedup_by_key(|(n, _)| *n);
    assert_eq!(numbers.len(), 240, "every CRL returned has its own number");
    // The ledger keeps the newest CRL and its number.
    let issuer_key = mtls_pki::inspect::sha256_hex(&issuer.key().public_key_spki());
    let (last_number, last_der) = numbers.last().unwrap();
    let marks = ledger().marks().unwrap();
    assert_eq!(marks.crl_numbers.get(&issuer_key), Some(last_number));
    assert_eq!(
        ledger().last_crl(&issuer_key).unwrap().as_deref(),
        Some(last_der.as_ref())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_builders_sharing_a_ledger_see_no_false_rollback_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    crl_builders_sharing_a_ledger_see_no_false_rollback(Location::Sqlite(dir.path().join("c.db")))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_builders_sharing_a_ledger_see_no_false_rollback_on_postgres() {
    crl_builders_sharing_a_ledger_see_no_false_rollback(Location::Postgres(
        mtls_test_util::fresh_postgres_database(),
    ))
    .await;
}

/// Renewals recorded before the `renews` column existed (their `renews` empty) are read back
/// from the audit log when the inventory is opened, once, so a key-compromise revocation
/// follows them too.
async fn renewals_from_before_the_lineage_column_are_followed(
    location: Location,
    forget_lineage: impl Fn(),
) {
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    let (a, b, c, other) = (cert("CN=a"), cert("CN=a"), cert("CN=a"), cert("CN=o"));
    {
        let store = Store::open(&location).await.unwrap();
        let renew = |c: &CertificateToRecord| IssueKind::Renewal {
            previous: c.serial.clone(),
            limit: LIMIT,
        };
        for (cert, kind) in [
            (&a, IssueKind::Direct),
            (&b, renew(&a)),
            (&c, renew(&b)),
            (&other, IssueKind::Direct),
        ] {
            store
                .record_issued(cert.clone(), kind, "test", now)
                .await
                .unwrap();
        }
    }
    // As an inventory of the version before the column (and before the backfill) left it.
    forget_lineage();
    let store = Store::open(&location).await.unwrap();
    let r = store
        .revoke(
            &a.serial,
            None,
            Some(RevocationReason::KeyCompromise),
            "admin",
            now,
        )
        .await
        .unwrap();
    let mut got = r.also_revoked.clone();
    got.sort();
    let mut want = vec![b.serial.to_string(), c.serial.to_string()];
    want.sort();
    assert_eq!(got, want);
    let o = store.get(&other.serial, now).await.unwrap().unwrap();
    assert_eq!(o.status, Status::Valid);
}

const FORGET_LINEAGE: &str =
    "UPDATE certificates SET renews = NULL; DELETE FROM migrations WHERE name = 'renews-from-audit' OR name LIKE 'schema-%';";

#[tokio::test]
async fn renewals_from_before_the_lineage_column_are_followed_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inv.db");
    let p = path.clone();
    renewals_from_before_the_lineage_column_are_followed(Location::Sqlite(path), move || {
        let conn = rusqlite::Connection::open(&p).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        conn.execute_batch(FORGET_LINEAGE).unwrap();
    })
    .await;
}

#[tokio::test]
async fn renewals_from_before_the_lineage_column_are_followed_on_postgres() {
    let url = mtls_test_util::fresh_postgres_database();
    let u = url.clone();
    renewals_from_before_the_lineage_column_are_followed(Location::Postgres(url), move || {
        let out = std::process::Command::new("psql")
            .args([u.as_str(), "-v", "ON_ERROR_STOP=1", "-c", FORGET_LINEAGE])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await;
}

/// Once a renewal is revoked (for any reason), the certificate it renewed cannot be renewed
/// again, though it is still valid itself; a renewal whose renewals are all valid can (a lost
/// answer retried).
async fn no_renewal_from_before_a_revoked_renewal(location: Location) {
    let store = Store::open(&location).await.unwrap();
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    let renew = |c: &CertificateToRecord| IssueKind::Renewal {
        previous: c.serial.clone(),
        limit: LIMIT,
    };
    let (a, b, b2, c, d) = (
        cert("CN=a"),
        cert("CN=a"),
        cert("CN=a"),
        cert("CN=a"),
        cert("CN=a"),
    );
    for (x, kind) in [
        (&a, IssueKind::Direct),
        (&b, renew(&a)),
        (&b2, renew(&a)),
        (&c, renew(&b)),
    ] {
        store
            .record_issued(x.clone(), kind, "t", now)
            .await
            .unwrap();
    }
    // Superseded: c alone is revoked (any other reason revokes the lineage: see
    // `revoking_for_the_holder_reaches_the_unexpired_lineage`), yet a and b may not be
    // renewed again.
    store
        .revoke(
            &c.serial,
            None,
            Some(RevocationReason::Superseded),
            "admin",
            now,
        )
        .await
        .unwrap();
    for from in [&a, &b] {
        let err = store
            .record_issued(cert("CN=a"), renew(from), "t", now)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotRenewable(_)), "{err}");
    }
    // Not affected: the other branch.
    store
        .record_issued(d.clone(), renew(&b2), "t", now)
        .await
        .unwrap();
}

#[tokio::test]
async fn no_renewal_from_before_a_revoked_renewal_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    no_renewal_from_before_a_revoked_renewal(Location::Sqlite(dir.path().join("inv.db"))).await;
}

#[tokio::test]
async fn no_renewal_from_before_a_revoked_renewal_on_postgres() {
    no_renewal_from_before_a_revoked_renewal(Location::Postgres(
        mtls_test_util::fresh_postgres_database(),
    ))
    .await;
}

/// A key-compromise revocation reaches every renewal however many there are: a key thief who
/// renewed 10,001 times made it fail (and revoke nothing) when the walk had a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_compromise_reaches_any_number_of_renewals() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Location::Sqlite(dir.path().join("inv.db")))
        .await
        .unwrap();
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    let a = cert("CN=a");
    store
        .record_issued(a.clone(), IssueKind::Direct, "t", now)
        .await
        .unwrap();
    let n = 10_001;
    let renewals: Vec<CertificateToRecord> = (0..n).map(|_| cert("CN=a")).collect();
    for chunk in renewals.chunks(500) {
        futures_util::future::join_all(chunk.iter().map(|c| {
            store.record_issued(
                c.clone(),
                IssueKind::Renewal {
                    previous: a.serial.clone(),
                    // As high as a CA may be configured (or an inventory from before the limit).
                    limit: RenewalLimit {
                        max: u32::MAX,
                        window: time::Duration::HOUR,
                    },
                },
                "thief",
                now,
            )
        }))
        .await
        .into_iter()
        .for_each(|r| r.unwrap());
    }
    let r = store
        .revoke(
            &a.serial,
            None,
            Some(RevocationReason::KeyCompromise),
            "admin",
            now,
        )
        .await
        .unwrap();
    assert_eq!(r.also_revoked.len(), n);
}

/// Two processes opening an inventory of an earlier version at the same moment (a CA
/// restarting beside a cron `mtls crl`) both open it: the columns it lacks are added once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_openers_of_an_old_inventory_both_open_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inv.db");
    drop(Store::open(&Location::Sqlite(path.clone())).await.unwrap());
    for round in 0..20 {
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "DROP INDEX certificates_renews; ALTER TABLE certificates DROP COLUMN renews;
                 DROP INDEX certificates_revocation_seq;
                 ALTER TABLE certificates DROP COLUMN revocation_seq;",
            )
            .unwrap();
        }
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let openers: Vec<_> = (0..2)
            .map(|_| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    barrier.wait();
                    rt.block_on(Store::open(&Location::Sqlite(path))).map(drop)
                })
            })
            .collect();
        for o in openers {
            o.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
}

/// A key revoked as compromised is never certified again: not by enrollment (the token is
/// left unused), not directly, not after a restart; another key is, and a key whose
/// certificate was revoked for another reason is too.
async fn a_compromised_key_is_never_certified_again(location: Location) {
    use mtls_pki::{KeyAlgorithm, PrivateKey};
    let store = Store::open(&location).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let pki = mtls_test_util::TestPki::new("compromise");
    let key = |_| PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let (stolen, retired, fresh) = (key(0), key(1), key(2));
    let first = real(&pki, &stolen);
    // The same key certified again in another lineage (the same CSR signed twice).
    let twin = real(&pki, &stolen);
    let old = real(&pki, &retired);
    for c in [&first, &twin, &old] {
        store
            .record_issued(c.clone(), IssueKind::Direct, "test", now)
            .await
            .unwrap();
    }
    let r = store
        .revoke(
            &first.serial,
            None,
            Some(RevocationReason::KeyCompromise),
            "t",
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        r.also_revoked,
        [twin.serial.to_string()],
        "every certificate of the key"
    );
    store
        .revoke(
            &old.serial,
            None,
            Some(RevocationReason::Superseded),
            "t",
            now,
        )
        .await
        .unwrap();
    store
        .create_token(
            mtls_store::NewToken {
                id: "tok".into(),
                secret_hash: "00".into(),
                name: "svc".into(),
                sans: vec![],
                profile: "client".into(),
                expires_at: now + time::Duration::hours(1),
                created_by: "test".into(),
            },
            now,
        )
        .await
        .unwrap();
    let enroll = || IssueKind::Enrollment {
        token_id: "tok".into(),
    };
    let again = real(&pki, &stolen);
    match store
        .record_issued(again.clone(), enroll(), "test", now)
        .await
    {
        Err(Error::KeyCompromised { serial }) => assert_eq!(serial, first.serial.to_string()),
        other => panic!("a compromised key was certified: {other:?}"),
    }
    assert!(store.get(&again.serial, now).await.unwrap().is_none());
    match store
        .record_issued(real(&pki, &stolen), IssueKind::Direct, "test", now)
        .await
    {
        Err(Error::KeyCompromised { .. }) => {}
        other => panic!("a compromised key was certified: {other:?}"),
    }
    // The token was not spent on the refusal: a new key enrolls with it.
    store
        .record_issued(real(&pki, &fresh), enroll(), "test", now)
        .await
        .unwrap();
    // Superseded is no statement about the key.
    let again = real(&pki, &retired);
    store
        .record_issued(again.clone(), IssueKind::Direct, "test", now)
        .await
        .unwrap();
    // Found compromised later: the revoked certificate's reason becomes keyCompromise, the
    // key's other certificates are revoked and the key is not certified again.
    let r = store
        .revoke(
            &old.serial,
            None,
            Some(RevocationReason::KeyCompromise),
            "t",
            now,
        )
        .await
        .unwrap();
    assert_eq!(r.record.revocation_reason.as_deref(), Some("keyCompromise"));
    assert_eq!(r.also_revoked, [again.serial.to_string()]);
    assert!(matches!(
        store
            .record_issued(real(&pki, &retired), IssueKind::Direct, "test", now)
            .await,
        Err(Error::KeyCompromised { .. })
    ));
    // Said twice: already revoked.
    assert!(matches!(
        store
            .revoke(
                &old.serial,
                None,
                Some(RevocationReason::KeyCompromise),
                "t",
                now
            )
            .await,
        Err(Error::AlreadyRevoked { .. })
    ));
    drop(store);
    let reopened = Store::open(&location).await.unwrap();
    assert!(matches!(
        reopened
            .record_issued(real(&pki, &stolen), IssueKind::Direct, "test", now)
            .await,
        Err(Error::KeyCompromised { .. })
    ));
}

#[tokio::test]
async fn a_compromised_key_is_never_certified_again_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_compromised_key_is_never_certified_again(Location::Sqlite(dir.path().join("inv.db"))).await;
}

#[tokio::test]
async fn a_compromised_key_is_never_certified_again_on_postgres() {
    a_compromised_key_is_never_certified_again(Location::Postgres(
        mtls_test_util::fresh_postgres_database(),
    ))
    .await;
}

/// Inventories from before the compromised-keys list learn the keys of their earlier
/// keyCompromise revocations when opened (here: the list and its migration mark removed, as
/// an older version left them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earlier_key_compromise_revocations_are_learnt_on_upgrade() {
    use mtls_pki::{KeyAlgorithm, PrivateKey};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inv.db");
    let url = mtls_test_util::fresh_postgres_database();
    let pki = mtls_test_util::TestPki::new("upgrade");
    let stolen = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let now = OffsetDateTime::now_utc();
    let leaked = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let (one, two) = (real(&pki, &leaked), real(&pki, &leaked));
    for location in [
        Location::Sqlite(path.clone()),
        Location::Postgres(url.clone()),
    ] {
        let store = Store::open(&location).await.unwrap();
        let first = real(&pki, &stolen);
        for c in [&first, &one, &two] {
            store
                .record_issued(c.clone(), IssueKind::Direct, "test", now)
                .await
                .unwrap();
        }
        store
            .revoke(
                &first.serial,
                None,
                Some(RevocationReason::KeyCompromise),
                "t",
                now,
            )
            .await
            .unwrap();
    }
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TABLE compromised_keys; UPDATE certificates SET key_id = NULL;
             DELETE FROM migrations WHERE name IN
                 ('compromised-keys-from-revocations', 'key-ids-from-certificates');",
        )
        .unwrap();
    }
    {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        // As a version before the list: neither the table nor any mark of its schema.
        client
            .batch_execute(
                "DROP TABLE compromised_keys; UPDATE certificates SET key_id = NULL;
                 DELETE FROM migrations;",
            )
            .await
            .unwrap();
    }
    for location in [
        Location::Sqlite(path.clone()),
        Location::Postgres(url.clone()),
    ] {
        let store = Store::open(&location).await.unwrap();
        assert!(
            matches!(
                store
                    .record_issued(real(&pki, &stolen), IssueKind::Direct, "test", now)
                    .await,
                Err(Error::KeyCompromised { .. })
            ),
            "{location:?}"
        );
        // Certificates recorded before the key identities: found by their key all the same.
        let r = store
            .revoke(
                &one.serial,
                None,
                Some(RevocationReason::KeyCompromise),
                "t",
                now,
            )
            .await
            .unwrap();
        assert_eq!(r.also_revoked, [two.serial.to_string()], "{location:?}");
    }
}

/// A database whose revocation counter goes back under a running store (a restore, a failover
/// that lost commits) is refused for writes and certificate lookups until it is level again
/// (revocations are still taken: they are how it gets level); a store opened afresh takes it
/// as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_back_is_refused_until_level() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inv.db");
    let url = mtls_test_util::fresh_postgres_database();
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    for location in [
        Location::Sqlite(path.clone()),
        Location::Postgres(url.clone()),
    ] {
        let store = Store::open(&location).await.unwrap();
        let a = cert("CN=a");
        store
            .record_issued(a.clone(), IssueKind::Direct, "t", now)
            .await
            .unwrap();
        store.revoke(&a.serial, None, None, "t", now).await.unwrap();
        assert_eq!(store.revocation_epoch().await.unwrap(), 1);
        let set_epoch = |epoch: i64| {
            let (path, url, location) = (path.clone(), url.clone(), location.clone());
            async move {
                let sql = format!(
                    "UPDATE revocation_epoch SET epoch = {epoch}; UPDATE certificates SET revoked_at = NULL WHERE {epoch} = 0"
                );
                match location {
                    Location::Sqlite(_) => rusqlite::Connection::open(&path)
                        .unwrap()
                        .execute_batch(&sql)
                        .unwrap(),
                    _ => {
                        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                            .await
                            .unwrap();
                        tokio::spawn(conn);
                        c.batch_execute(&sql).await.unwrap();
                    }
                }
            }
        };
        set_epoch(0).await;
        assert!(matches!(
            store.revocation_epoch().await,
            Err(Error::RolledBack { .. })
        ));
        assert!(matches!(
            store.get(&a.serial, now).await,
            Err(Error::RolledBack { .. })
        ));
        assert!(matches!(
            store
                .record_issued(cert("CN=b"), IssueKind::Direct, "t", now)
                .await,
            Err(Error::RolledBack { .. })
        ));
        // Opened afresh (a restart): the database as it is.
        let fresh = Store::open(&location).await.unwrap();
        assert_eq!(fresh.revocation_epoch().await.unwrap(), 0);
        assert!(fresh.get(&a.serial, now).await.unwrap().is_some());
        // The lost revocation made again, through this very store (revocations are not
        // refused: they only move the counter on): level again, answered.
        store.revoke(&a.serial, None, None, "t", now).await.unwrap();
        assert!(store.get(&a.serial, now).await.unwrap().is_some());
        let _ = set_epoch;
        store
            .record_issued(cert("CN=c"), IssueKind::Direct, "t", now)
            .await
            .unwrap();
    }
}

/// Reads of the revocation counter running at the same time as revocations finish in any
/// order; none of them is taken for a database that went back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_a_moving_counter_are_not_a_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let url = mtls_test_util::fresh_postgres_database();
    let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    for location in [
        Location::Sqlite(dir.path().join("inv.db")),
        Location::Postgres(url.clone()),
    ] {
        let store = Store::open(&location).await.unwrap();
        let certs: Vec<_> = (0..20).map(|i| cert(&format!("CN=c{i}"))).collect();
        for c in &certs {
            store
                .record_issued(c.clone(), IssueKind::Direct, "t", now)
                .await
                .unwrap();
        }
        let readers = (0..8).map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    store.revocation_epoch().await?;
                    tokio::task::yield_now().await;
                }
                Ok::<(), Error>(())
            })
        });
        let readers: Vec<_> = readers.collect();
        for c in &certs {
            store.revoke(&c.serial, None, None, "t", now).await.unwrap();
        }
        for r in readers {
            r.await.unwrap().unwrap();
        }
        assert_eq!(store.revocation_epoch().await.unwrap(), 20);
    }
}
