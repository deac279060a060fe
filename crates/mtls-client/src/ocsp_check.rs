//! OCSP checking of client certificates for servers: [`OcspChecker`] is the
//! [`mtls_verify::StatusSource`] a trust state asks about a leaf. Verified answers are cached
//! until their nextUpdate and refreshed in the background at half their life for clients seen in
//! the last hour ([`OcspOptions::keep_unused`]; an answer already past its midpoint is asked
//! again by [`mtls_ocsp::VerifiedResponse::refresh_at`]'s back-off), so a handshake rarely waits; forgetting an
//! answer makes open connections verify again, so those still open are asked about again and
//! keep being refreshed (a revocation still cuts them); a client never seen before waits once, bounded by
//! `max_wait` (on a multi-threaded Tokio runtime, where the wait can block its thread; on a
//! single-threaded one its status stays unknown). A responder that is down answers "unknown" (hard-fail refuses) without making every
//! handshake wait again: failures are remembered for a few seconds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mtls_serve::Shutdown;
use mtls_verify::{SourceStatus, StatusQuery, StatusSource};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

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

/// OCSP answers about client certificates, verified and cached (see the module docs).
pub struct OcspChecker {
    client: reqwest::Client,
    options: OcspOptions,
    cache: Mutex<HashMap<Key, Entry>>,
    version: AtomicU64,
    stats: Arc<OcspStats>,
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
            client,
            options,
            cache: Mutex::new(HashMap::new()),
            version: AtomicU64::new(0),
            stats: Arc::default(),
        }))
    }

    /// The checker's counters.
    pub fn stats(&self) -> Arc<OcspStats> {
        self.stats.clone()
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
            earliest = Some(earliest.map_or(e.good_until, |t| t.min(e.good_until)));
        }
        (n, earliest)
    }

    /// Asks the responder about `cert` and turns the outcome into a cache entry.
    async fn ask(&self, cert: Vec<u8>, issuer: Vec<u8>, now: OffsetDateTime) -> Entry {
        let answer = fetch(
            &self.client,
            &CertificateDer::from(cert.as_slice()),
            &CertificateDer::from(issuer.as_slice()),
            self.options.responder.as_deref(),
            self.options.nonce,
            now,
        )
        .await;
        let failed = |why: String| Entry {
            cert: cert.clone(),
            issuer: issuer.clone(),
            status: SourceStatus::Unknown(why),
            good_until: now,
            refresh_at: now + FAILURE_HOLD,
            last_used: now,
        };
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
                    let due = cache
                        .iter()
                        .filter(|(_, e)| now >= e.refresh_at)
                        .map(|(k, e)| (k.clone(), e.cert.clone(), e.issuer.clone()))
                        .collect();
                    (due, cache.len() < before)
                }
                Err(_) => return,
            };
            // A connection admitted on a forgotten answer re-checks only when the version
            // moves: without this it would never be asked about (nor cut) again. Verifying
            // again asks the responder for the certificates still in use.
            let mut any = evicted;
            for (k, cert, issuer) in due {
                let mut entry = self.ask(cert, issuer, now).await;
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
                any |= self.store(k, entry);
            }
            if any {
                self.version.fetch_add(1, Ordering::AcqRel);
                changed();
            }
        }
    }
}

impl StatusSource for OcspChecker {
    fn status(&self, q: &StatusQuery<'_>, now: OffsetDateTime) -> SourceStatus {
        let k = key(q);
        if let Ok(mut cache) = self.cache.lock() {
            if let Some(e) = cache.get_mut(&k) {
                e.last_used = now;
                let current = now < e.good_until;
                match &e.status {
                    SourceStatus::Unknown(why) if now < e.refresh_at => {
                        return SourceStatus::Unknown(why.clone())
                    }
                    s if current && !matches!(s, SourceStatus::Unknown(_)) => return s.clone(),
                    _ => {}
                }
            }
        }
        // Not known (or expired): one bounded wait, where the runtime allows blocking this
        // thread; elsewhere a background fetch and "unknown" until it lands.
        let (cert, issuer) = (q.cert.to_vec(), q.issuer.to_vec());
        let rt = tokio::runtime::Handle::try_current().ok();
        if let Some(rt) =
            rt.filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        {
            self.stats.waits.fetch_add(1, Ordering::Relaxed);
            let entry = tokio::task::block_in_place(|| {
                rt.block_on(async {
                    tokio::time::timeout(self.options.max_wait, self.ask(cert, issuer, now)).await
                })
            });
            let entry = entry.unwrap_or_else(|_| Entry {
                cert: q.cert.to_vec(),
                issuer: q.issuer.to_vec(),
                status: SourceStatus::Unknown(format!(
                    "no OCSP answer within {:?}",
                    self.options.max_wait
                )),
                good_until: now,
                refresh_at: now + FAILURE_HOLD,
                last_used: now,
            });
            let status = entry.status.clone();
            if self.store(k, entry) {
                self.version.fetch_add(1, Ordering::AcqRel);
            }
            status
        } else {
            SourceStatus::Unknown(
                "OCSP needs a multi-threaded Tokio runtime to wait for an answer".into(),
            )
        }
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
    use mtls_test_util::TestPki;
    use mtls_verify::SourceStatus;
    use time::{Duration, OffsetDateTime};

    use super::{OcspChecker, OcspOptions};

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

    #[tokio::test]
    async fn an_answer_past_its_midpoint_is_not_asked_again_every_second() {
        let pki = TestPki::new("late");
        let leaf = pki.client("c");
        let issuer = IssuerInfo::from_der(pki.intermediate.der()).unwrap();
        let req = build_request(&issuer, &leaf.cert.serial, None).unwrap();
        let req = parse_request(&req, std::slice::from_ref(&issuer)).unwrap();
        let key = mtls_pki::PrivateKey::from_pem_or_der(pki.intermediate.key().pkcs8_der(), None)
            .unwrap();
        let responder = Responder::new(&issuer, pki.intermediate.der().to_vec(), key).unwrap();
        let now = OffsetDateTime::now_utc();
        // Pre-produced: signed 50 minutes ago for an hour, so 10 minutes are left.
        let next = now + Duration::minutes(10);
        let der = responder
            .sign(
                &req,
                &[CertStatus::Good],
                now - Duration::minutes(50),
                now - Duration::minutes(50),
                Some(next),
            )
            .unwrap();
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
}
