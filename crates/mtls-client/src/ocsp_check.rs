//! OCSP checking of client certificates for servers: [`OcspChecker`] is the
//! [`mtls_verify::StatusSource`] a trust state asks about a leaf. Verified answers are cached
//! until their nextUpdate and refreshed in the background at half their life for clients seen in
//! the last hour ([`OcspOptions::keep_unused`]; an answer already past its midpoint is asked
//! again by [`mtls_ocsp::VerifiedResponse::refresh_at`]'s back-off), so a handshake rarely waits; forgetting an
//! answer makes open connections verify again, so those still open are asked about again and
//! keep being refreshed (a revocation still cuts them); a client never seen before waits once, bounded by
//! `max_wait`. A responder that is down answers "unknown" (hard-fail refuses) without making every
//! handshake wait again: failures are remembered for a few seconds.
//!
//! Requests are made on the checker's own thread (started at the first request, with its own
//! small current-thread Tokio runtime, ended when the checker is dropped), so the wait works the
//! same on a multi-threaded runtime, a current-thread one and outside any runtime: the
//! handshake's thread blocks for at most `max_wait` (on a current-thread runtime that is the
//! whole runtime; on a multi-threaded one the worker hands its other tasks off first).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mtls_serve::Shutdown;
use mtls_verify::{SourceStatus, StatusQuery, StatusSource};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::ocsp::{fetch, OcspError};

/// Most certificates whose answers are cached.
const CAPACITY: usize = 100_000;
/// A failed answer is not asked again (nor waited for) for this long.
const FAILURE_HOLD: time::Duration = time::Duration::seconds(5);
/// Unused answers are forgotten in sweeps this far apart at most (sooner when `keep_unused` is
/// shorter): each sweep that forgets one wakes every open connection.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Default of [`OcspOptions::keep_unused`].
const KEEP_UNUSED: Duration = Duration::from_secs(3600);

/// Where to ask and how.
#[derive(Clone, Debug)]
pub struct OcspOptions {
    /// Ask this responder instead of the one in the certificate's AIA.
    pub responder: Option<String>,
    /// Longest a handshake waits for the first answer about a certificate.
    pub max_wait: Duration,
    /// Send a nonce the answer must echo.
    pub nonce: bool,
    /// Answers about certificates no handshake or re-check asked about for this long are no
    /// longer refreshed, and forgotten (default 1 h). Forgetting one makes the open
    /// connections verify again: a connection still open asks again, so its certificate keeps
    /// being checked for as long as it stays open.
    pub keep_unused: Duration,
}

impl Default for OcspOptions {
    fn default() -> Self {
        OcspOptions {
            responder: None,
            max_wait: Duration::from_secs(2),
            nonce: false,
            keep_unused: KEEP_UNUSED,
        }
    }
}

/// (SHA-256 of the issuer's key, serial): no hashing on the handshake path.
type Key = (mtls_verify::IssuerKey, Vec<u8>);

/// An answer to refresh: its key, the certificate and its issuer (DER).
type Due = (Key, Vec<u8>, Vec<u8>);

struct Entry {
    cert: Vec<u8>,
    issuer: Vec<u8>,
    status: SourceStatus,
    /// The answer may be used until then (nextUpdate).
    good_until: OffsetDateTime,
    /// Asked again from then on.
    refresh_at: OffsetDateTime,
    last_used: OffsetDateTime,
}

impl Entry {
    /// No answer, for `why`: "unknown", not asked again for [`FAILURE_HOLD`].
    fn failed(cert: Vec<u8>, issuer: Vec<u8>, now: OffsetDateTime, why: String) -> Entry {
        Entry {
            cert,
            issuer,
            status: SourceStatus::Unknown(why),
            good_until: now,
            refresh_at: now + FAILURE_HOLD,
            last_used: now,
        }
    }
}

/// Counters of the checker, for metrics.
#[derive(Debug, Default)]
pub struct OcspStats {
    /// Verified answers received.
    pub answers: AtomicU64,
    /// Failed requests (unreachable, invalid answers).
    pub failures: AtomicU64,
    /// Handshakes that waited for a first answer.
    pub waits: AtomicU64,
}

/// What a request needs, shared by the checker and its fetch thread (the thread does not hold
/// the checker, so dropping the checker ends the thread).
struct Asker {
    client: reqwest::Client,
    responder: Option<String>,
    nonce: bool,
    stats: Arc<OcspStats>,
}

/// A request for the fetch thread, and where its answer goes.
struct Job {
    cert: Vec<u8>,
    issuer: Vec<u8>,
    now: OffsetDateTime,
    reply: Reply,
}

enum Reply {
    /// A handshake blocked on the channel for at most this long; the request is dropped then
    /// (the handshake has given up on it).
    Waiting(std::sync::mpsc::Sender<Entry>, Duration),
    /// The refresh loop.
    Refresh(oneshot::Sender<Entry>),
}

/// OCSP answers about client certificates, verified and cached (see the module docs).
pub struct OcspChecker {
    asker: Arc<Asker>,
    options: OcspOptions,
    /// Requests to the fetch thread: `None` until the first one starts it.
    jobs: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    cache: Mutex<HashMap<Key, Entry>>,
    version: AtomicU64,
}

impl std::fmt::Debug for OcspChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OcspChecker")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn key(q: &StatusQuery<'_>) -> Key {
    (*q.issuer_key, q.serial.to_vec())
}

impl OcspChecker {
    /// A checker (drive its refreshes with [`OcspChecker::run`]).
    pub fn new(options: OcspOptions) -> Result<Arc<Self>, crate::Error> {
        if let Some(r) = &options.responder {
            if !r.starts_with("http://") {
                return Err(crate::Error::Config(format!(
                    "OCSP responder {r:?}: only http:// responders are supported"
                )));
            }
        }
        let client = crate::ClientBuilder::new()
            .timeout(options.max_wait.max(Duration::from_secs(5)))
            .build_plain_http()?;
        Ok(Arc::new(OcspChecker {
            asker: Arc::new(Asker {
                client,
                responder: options.responder.clone(),
                nonce: options.nonce,
                stats: Arc::default(),
            }),
            options,
            jobs: Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            version: AtomicU64::new(0),
        }))
    }

    /// The checker's counters.
    pub fn stats(&self) -> Arc<OcspStats> {
        self.asker.stats.clone()
    }

    /// How many verified answers are cached, and the earliest nextUpdate among them.
    pub fn cached(&self) -> (usize, Option<OffsetDateTime>) {
        let Ok(cache) = self.cache.lock() else {
            return (0, None);
        };
        let answers = cache
            .values()
            .filter(|e| !matches!(e.status, SourceStatus::Unknown(_)));
        let (mut n, mut earliest) = (0, None::<OffsetDateTime>);
        for e in answers {
            n += 1;
            // A revocation is kept past its answer's nextUpdate (see `status`): not an answer
            // going stale.
            if !matches!(e.status, SourceStatus::Revoked) {
                earliest = Some(earliest.map_or(e.good_until, |t| t.min(e.good_until)));
            }
        }
        (n, earliest)
    }

    /// Asks the responder about `cert` on the fetch thread. Every request is made there: the
    /// HTTP client's pooled connections then live on a runtime that is always running, never on
    /// a caller's that may be blocked waiting for an answer.
    async fn ask(&self, cert: Vec<u8>, issuer: Vec<u8>, now: OffsetDateTime) -> Entry {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            cert: cert.clone(),
            issuer: issuer.clone(),
            now,
            reply: Reply::Refresh(tx),
        };
        let why = match self.submit(job) {
            Ok(()) => match rx.await {
                Ok(entry) => return entry,
                Err(_) => "the OCSP request thread stopped".to_string(),
            },
            Err(why) => why,
        };
        Entry::failed(cert, issuer, now, why)
    }

    /// Hands `job` to the fetch thread, starting it if it is not running.
    fn submit(&self, job: Job) -> Result<(), String> {
        let mut jobs = self
            .jobs
            .lock()
            .map_err(|_| "the OCSP checker's state is poisoned".to_string())?;
        let job = match jobs.as_ref() {
            Some(tx) => match tx.send(job) {
                Ok(()) => return Ok(()),
                // The thread ended (it could not build its runtime): start another.
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        start_fetch_thread(self.asker.clone(), rx)
            .map_err(|e| format!("cannot start the OCSP request thread: {e}"))?;
        tx.send(job)
            .map_err(|_| "the OCSP request thread stopped".to_string())?;
        *jobs = Some(tx);
        Ok(())
    }

    /// Stores `entry`; returns whether the status it gives differs from what was stored.
    fn store(&self, k: Key, entry: Entry) -> bool {
        let Ok(mut cache) = self.cache.lock() else {
            return false;
        };
        let mut evicted = false;
        if cache.len() >= CAPACITY && !cache.contains_key(&k) {
            let cutoff = entry.last_used - time::Duration::minutes(10);
            let before = cache.len();
            cache.retain(|_, e| e.last_used > cutoff);
            // Open connections whose answers went must verify again (see `run`).
            evicted = cache.len() < before;
            if cache.len() >= CAPACITY {
                return false;
            }
        }
        // A verified revocation is never replaced (see `status`): not by a later answer from
        // a handshake's wait or a refresh that raced it.
        if cache
            .get(&k)
            .is_some_and(|old| matches!(old.status, SourceStatus::Revoked))
        {
            return evicted;
        }
        let changed = cache.get(&k).is_some_and(|old| old.status != entry.status);
        cache.insert(k, entry);
        changed || evicted
    }

    /// Refreshes answers at half their life for clients seen lately, forgets the others, and
    /// drops answers that expired without a replacement; calls `changed` when a status some
    /// connection may have relied on changed, or was forgotten. Runs until `shutdown`.
    pub async fn run(self: Arc<Self>, changed: impl Fn() + Send, mut shutdown: Shutdown) {
        let keep_unused =
            time::Duration::try_from(self.options.keep_unused).unwrap_or(time::Duration::MAX);
        // Forgetting wakes every open connection to re-check (see below): done in sweeps, at
        // most once a minute, not each second some client crosses `keep_unused`.
        let sweep_every = self.options.keep_unused.min(SWEEP_EVERY);
        let mut last_sweep = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait() => return,
            }
            let now = OffsetDateTime::now_utc();
            let sweep = last_sweep.elapsed() >= sweep_every;
            if sweep {
                last_sweep = tokio::time::Instant::now();
            }
            let (due, evicted): (Vec<Due>, bool) = match self.cache.lock() {
                Ok(mut cache) => {
                    let before = cache.len();
                    if sweep {
                        cache.retain(|_, e| now - e.last_used < keep_unused);
                    }
                    // Revoked answers are not asked again (see `status`).
                    let due = cache
                        .iter()
                        .filter(|(_, e)| {
                            now >= e.refresh_at && !matches!(e.status, SourceStatus::Revoked)
                        })
                        .map(|(k, e)| (k.clone(), e.cert.clone(), e.issuer.clone()))
                        .collect();
                    (due, cache.len() < before)
                }
                Err(_) => return,
            };
            // A connection admitted on a forgotten answer re-checks only when the version
            // moves: without this it would never be asked about (nor cut) again. Verifying
            // again asks the responder for the certificates still in use.
            if evicted {
                self.version.fetch_add(1, Ordering::AcqRel);
                changed();
            }
            // Asked together (up to REFRESH_CONCURRENCY at a time) and each answer taken as it
            // comes: one slow or unreachable responder does not hold up the others, and a
            // revocation found cuts the connections it concerns at once, not after the sweep.
            let mut due = due.into_iter();
            let mut asking = tokio::task::JoinSet::new();
            // A revocation wakes the connections at once; other changes together, at most
            // once a second (not once per answer, nor only at the end of a long sweep).
            let mut changed_meanwhile = false;
            let mut last_wake = tokio::time::Instant::now();
            loop {
                if changed_meanwhile && last_wake.elapsed() >= Duration::from_secs(1) {
                    self.version.fetch_add(1, Ordering::AcqRel);
                    changed();
                    changed_meanwhile = false;
                    last_wake = tokio::time::Instant::now();
                }
                while asking.len() < REFRESH_CONCURRENCY {
                    let Some((k, cert, issuer)) = due.next() else {
                        break;
                    };
                    let me = self.clone();
                    // Asked now, not at the sweep's start (earlier asks may have waited long).
                    let now = OffsetDateTime::now_utc();
                    asking.spawn(async move { (k, me.ask(cert, issuer, now).await) });
                }
                let Some(done) = asking.join_next().await else {
                    break;
                };
                let Ok((k, mut entry)) = done else {
                    continue;
                };
                let now = OffsetDateTime::now_utc();
                if matches!(entry.status, SourceStatus::Unknown(_)) {
                    // Held from when the failure came back, not from when it was asked (a
                    // timeout as long as the hold would make it due again at once).
                    entry.good_until = now;
                    entry.refresh_at = now + FAILURE_HOLD;
                }
                if let Ok(cache) = self.cache.lock() {
                    if let Some(old) = cache.get(&k) {
                        entry.last_used = old.last_used;
                        // A failed refresh keeps a verified answer until its nextUpdate.
                        if matches!(entry.status, SourceStatus::Unknown(_)) && now < old.good_until
                        {
                            entry.status = old.status.clone();
                            entry.good_until = old.good_until;
                        }
                    }
                }
                let revoked = matches!(entry.status, SourceStatus::Revoked);
                if self.store(k, entry) {
                    if revoked {
                        self.version.fetch_add(1, Ordering::AcqRel);
                        changed();
                        last_wake = tokio::time::Instant::now();
                    } else {
                        changed_meanwhile = true;
                    }
                }
            }
            if changed_meanwhile {
                self.version.fetch_add(1, Ordering::AcqRel);
                changed();
            }
        }
    }
}

/// Most OCSP refreshes in flight at once.
const REFRESH_CONCURRENCY: usize = 32;

impl Asker {
    /// Asks the responder about `cert` and turns the outcome into a cache entry.
    async fn ask(&self, cert: Vec<u8>, issuer: Vec<u8>, now: OffsetDateTime) -> Entry {
        let answer = fetch(
            &self.client,
            &CertificateDer::from(cert.as_slice()),
            &CertificateDer::from(issuer.as_slice()),
            self.responder.as_deref(),
            self.nonce,
            now,
        )
        .await;
        let failed = |why: String| Entry::failed(cert.clone(), issuer.clone(), now, why);
        match answer {
            Ok(a) => {
                self.stats.answers.fetch_add(1, Ordering::Relaxed);
                let v = a.verified;
                let good_until = v.current_until;
                let status = match v.status {
                    mtls_ocsp::CertStatus::Good => SourceStatus::Good,
                    mtls_ocsp::CertStatus::Revoked { .. } => SourceStatus::Revoked,
                    mtls_ocsp::CertStatus::Unknown => {
                        return failed(format!("{} does not know this certificate", a.url))
                    }
                };
                // The rule the stapler shares: past the midpoint it backs off instead of
                // asking again every second for every client.
                let refresh_at = v.refresh_at(now);
                Entry {
                    cert: cert.clone(),
                    issuer: issuer.clone(),
                    status,
                    good_until,
                    refresh_at,
                    last_used: now,
                }
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(code = e.code(), error = %e, "OCSP check of a client certificate failed");
                failed(match e {
                    OcspError::NoResponder => "the certificate names no OCSP responder".to_string(),
                    other => other.to_string(),
                })
            }
        }
    }

    /// Runs `job` and sends its answer (unless its waiter has given up).
    async fn answer(self: Arc<Self>, job: Job) {
        let ask = self.ask(job.cert, job.issuer, job.now);
        match job.reply {
            Reply::Waiting(tx, max_wait) => {
                if let Ok(entry) = tokio::time::timeout(max_wait, ask).await {
                    let _ = tx.send(entry);
                }
            }
            Reply::Refresh(tx) => {
                let _ = tx.send(ask.await);
            }
        }
    }
}

/// Starts the fetch thread: each job becomes a task of the thread's own current-thread
/// runtime, until `jobs` closes (the checker was dropped) and the runtime ends with it.
fn start_fetch_thread(
    asker: Arc<Asker>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("mtls-ocsp".into())
        .spawn(move || {
            // Built (and dropped) on this thread: a runtime cannot be dropped inside a
            // caller's async context.
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    // The jobs go with `jobs`: their waiters get "unknown".
                    tracing::error!(error = %e, "OCSP: cannot build the runtime of the request thread");
                    return;
                }
            };
            rt.block_on(async move {
                while let Some(job) = jobs.recv().await {
                    tokio::spawn(asker.clone().answer(job));
                }
            });
        })
        .map(drop)
}

impl StatusSource for OcspChecker {
    fn status(&self, q: &StatusQuery<'_>, now: OffsetDateTime) -> SourceStatus {
        let k = key(q);
        if let Ok(mut cache) = self.cache.lock() {
            if let Some(e) = cache.get_mut(&k) {
                e.last_used = now;
                let current = now < e.good_until;
                match &e.status {
                    // A verified revocation is for good (no certificateHold here): an answer
                    // past its nextUpdate, or a responder down since, does not take it back.
                    SourceStatus::Revoked => return SourceStatus::Revoked,
                    SourceStatus::Unknown(why) if now < e.refresh_at => {
                        return SourceStatus::Unknown(why.clone())
                    }
                    s if current && !matches!(s, SourceStatus::Unknown(_)) => return s.clone(),
                    _ => {}
                }
            }
        }
        // Not known (or expired): one bounded wait for an answer asked on the fetch thread.
        self.asker.stats.waits.fetch_add(1, Ordering::Relaxed);
        let max_wait = self.options.max_wait;
        let (tx, rx) = std::sync::mpsc::channel();
        let job = Job {
            cert: q.cert.to_vec(),
            issuer: q.issuer.to_vec(),
            now,
            reply: Reply::Waiting(tx, max_wait),
        };
        let answer = self.submit(job).and_then(|()| {
            let wait = || rx.recv_timeout(max_wait);
            // A worker of a multi-threaded runtime hands its other tasks off first; elsewhere
            // (a current-thread runtime, no runtime) the thread just blocks, as bounded.
            let multi_thread = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            let got = if multi_thread {
                tokio::task::block_in_place(wait)
            } else {
                wait()
            };
            got.map_err(|_| format!("no OCSP answer within {max_wait:?}"))
        });
        let entry = answer
            .unwrap_or_else(|why| Entry::failed(q.cert.to_vec(), q.issuer.to_vec(), now, why));
        let status = entry.status.clone();
        if self.store(k, entry) {
            self.version.fetch_add(1, Ordering::AcqRel);
        }
        status
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use mtls_ocsp::{build_request, parse_request, CertStatus, IssuerInfo, Responder};
    use mtls_test_util::{TestLeaf, TestPki};
    use mtls_verify::{SourceStatus, StatusQuery, StatusSource};
    use time::{Duration, OffsetDateTime};

    use super::{OcspChecker, OcspOptions};
    use crate::ocsp::tests::openssl_responder;

    /// Answers every request with `body`, counting them; returns its URL.
    fn responder_answering(body: Vec<u8>, asked: Arc<AtomicU64>) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                asked.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 8192];
                let _ = s.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&body);
            }
        });
        format!("http://{addr}/ocsp")
    }

    /// An answer about `leaf` signed by its issuing CA: `status`, produced at `at`, valid
    /// until `next`.
    fn signed_answer(
        pki: &TestPki,
        leaf: &TestLeaf,
        status: CertStatus,
        at: OffsetDateTime,
        next: OffsetDateTime,
    ) -> Vec<u8> {
        let issuer = IssuerInfo::from_der(pki.intermediate.der()).unwrap();
        let req = build_request(&issuer, &leaf.cert.serial, None).unwrap();
        let req = parse_request(&req, std::slice::from_ref(&issuer)).unwrap();
        let key = mtls_pki::PrivateKey::from_pem_or_der(pki.intermediate.key().pkcs8_der(), None)
            .unwrap();
        let responder = Responder::new(&issuer, pki.intermediate.der().to_vec(), key).unwrap();
        responder.sign(&req, &[status], at, at, Some(next)).unwrap()
    }

    #[tokio::test]
    async fn an_answer_past_its_midpoint_is_not_asked_again_every_second() {
        let pki = TestPki::new("late");
        let leaf = pki.client("c");
        let now = OffsetDateTime::now_utc();
        // Pre-produced: signed 50 minutes ago for an hour, so 10 minutes are left.
        let der = signed_answer(
            &pki,
            &leaf,
            CertStatus::Good,
            now - Duration::minutes(50),
            now + Duration::minutes(10),
        );
        let asked = Arc::new(AtomicU64::new(0));
        let url = responder_answering(der, asked.clone());
        let checker = OcspChecker::new(OcspOptions {
            responder: Some(url),
            ..OcspOptions::default()
        })
        .unwrap();
        let entry = checker
            .ask(leaf.cert.der.to_vec(), pki.intermediate.der().to_vec(), now)
            .await;
        assert_eq!(entry.status, SourceStatus::Good);
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // A quarter of the 10 minutes left (not a second from now), still before they end.
        let wait = entry.refresh_at - now;
        assert!(
            wait > Duration::minutes(2) && wait <= Duration::seconds(150),
            "{wait}"
        );
        assert!(entry.refresh_at < entry.good_until);
    }

    /// A "revoked" answer outlives its nextUpdate: asked later, when the responder only has
    /// that now-expired answer (or none), the checker still says revoked, not unknown (which
    /// soft-fail would admit).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoked_answer_stays_revoked_after_its_next_update() {
        let pki = TestPki::new("sticky");
        let leaf = pki.client("c");
        let now = OffsetDateTime::now_utc();
        let der = signed_answer(
            &pki,
            &leaf,
            CertStatus::Revoked {
                at: now - Duration::minutes(5),
                reason: None,
            },
            now - Duration::minutes(5),
            now + Duration::minutes(10),
        );
        let asked = Arc::new(AtomicU64::new(0));
        let url = responder_answering(der, asked.clone());
        let checker = OcspChecker::new(OcspOptions {
            responder: Some(url),
            max_wait: std::time::Duration::from_secs(20),
            ..OcspOptions::default()
        })
        .unwrap();
        let issuer_der = pki.intermediate_der();
        let issuer_key = mtls_verify::issuer_key_of(&pki.intermediate.key().public_key_spki());
        let q = StatusQuery {
            cert: &leaf.cert.der,
            issuer: &issuer_der,
            issuer_key: &issuer_key,
            serial: leaf.cert.serial.as_bytes(),
        };
        assert_eq!(checker.status(&q, now), SourceStatus::Revoked);
        assert_eq!(
            checker.status(&q, now + Duration::hours(1)),
            SourceStatus::Revoked
        );
        // Not asked again: the responder saw one request.
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // Nor counted as an answer going stale.
        assert_eq!(checker.cached(), (1, None));
    }

    /// What a trust state asks about `leaf` (issued by `pki`'s intermediate) now.
    fn status_of(checker: &OcspChecker, pki: &TestPki, leaf: &TestLeaf) -> SourceStatus {
        let issuer = pki.intermediate_der();
        let issuer_key = mtls_verify::issuer_key_of(&pki.intermediate.key().public_key_spki());
        let q = StatusQuery {
            cert: &leaf.cert.der,
            issuer: &issuer,
            issuer_key: &issuer_key,
            serial: leaf.cert.serial.as_bytes(),
        };
        checker.status(&q, OffsetDateTime::now_utc())
    }

    /// A checker asking `openssl ocsp` about a good and a revoked client, each never seen
    /// before (so each waits, at most `max_wait`, for its first answer) gets "good" for one
    /// and "revoked" for the other, on whatever runtime (or none) the caller runs.
    fn first_answers_arrive() {
        let pki = TestPki::new("first");
        let (good, revoked) = (pki.client("good"), pki.client("revoked"));
        let responder = openssl_responder(&pki, &[&good], &[&revoked]);
        let checker = OcspChecker::new(OcspOptions {
            responder: Some(responder.url.clone()),
            // Generous: the bound, not an expectation.
            max_wait: std::time::Duration::from_secs(20),
            ..OcspOptions::default()
        })
        .unwrap();
        assert_eq!(status_of(&checker, &pki, &good), SourceStatus::Good);
        assert_eq!(status_of(&checker, &pki, &revoked), SourceStatus::Revoked);
        // Cached: asked again, nothing is fetched.
        assert_eq!(status_of(&checker, &pki, &good), SourceStatus::Good);
        let stats = checker.stats();
        assert_eq!(stats.waits.load(Ordering::Relaxed), 2);
        assert_eq!(stats.answers.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_checker_on_a_current_thread_runtime_waits_for_first_answers() {
        first_answers_arrive();
    }

    #[test]
    fn a_checker_outside_any_runtime_waits_for_first_answers() {
        first_answers_arrive();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checker_on_a_multi_thread_runtime_waits_for_first_answers() {
        first_answers_arrive();
    }
}
