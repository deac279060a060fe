//! Following the online CA's revocation feed (`GET /v1/revocations`, a long poll over mTLS).
//!
//! A [`FeedSubscriber`] keeps a [`PushedRevocations`] set current: it seeds the set from the
//! CA's CRL (verified against the configured CA certificates, and naming the feed position it
//! covers), then asks for the revocations after its position, waiting on the CA until one
//! happens. After a disconnect it resumes from its position, on the next CA URL if several are
//! given (instances sharing one database serve the same sequence). A gap it cannot close — a
//! jump in the sequence, or a CA whose head is behind its position — makes it fetch the CRL
//! again. Every answer counts as contact: the set turns stale (and hard-fail listeners refuse)
//! only when the CA has not been heard from for `max_age`.

use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mtls_pki::Serial;
use mtls_serve::Shutdown;
use mtls_verify::{IssuerKey, PushedRevocations};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;

use crate::ca::{CaClient, FeedPage};
use crate::Error;

/// How long one request waits on the CA for a revocation.
pub const LONG_POLL: Duration = Duration::from_secs(20);
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What a subscriber has done, for metrics.
#[derive(Debug, Default)]
pub struct FeedStats {
    /// The last feed position applied (-1 before the first seed).
    pub position: AtomicI64,
    /// Revocations received from the feed (new or not).
    pub events: AtomicU64,
    /// CRL fetches that (re)seeded the set.
    pub resyncs: AtomicU64,
    /// Failed requests (transport errors, refusals, bad answers).
    pub errors: AtomicU64,
}

/// What changed in the set after one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedChange {
    /// Revocations new to the set.
    pub added: usize,
    /// The feed position now.
    pub position: i64,
}

/// Where a feed subscriber connects and what it trusts (the files a server already has).
#[derive(Clone, Debug)]
pub struct FeedFiles {
    /// `https://host:port` of the CA; instances sharing one database may be listed.
    pub urls: Vec<String>,
    /// CA bundles that verify the CA's server certificate.
    pub server_ca: Vec<std::path::PathBuf>,
    /// The certificate chain presented to the CA (it must allow it in `[revocation_feed]`).
    pub cert: std::path::PathBuf,
    /// Its key.
    pub key: std::path::PathBuf,
    /// The key's passphrase, for an encrypted key: its file, or the bytes the application
    /// already has (a passphrase from the environment or a prompt, which the caller asked for
    /// once for everything it builds with this key).
    pub passphrase: mtls_tls::Passphrase,
    /// CA bundles whose certificates may sign the CRLs behind the feed (the server's client
    /// CAs).
    pub crl_signers: Vec<std::path::PathBuf>,
    /// How long the set stays fresh without contact with the CA.
    pub max_age: Duration,
}

impl FeedFiles {
    /// A subscriber for these files and the set it fills (empty until its first seed). The
    /// client identity follows its files (a renewed certificate is used from the next
    /// connection on).
    pub fn subscriber(&self) -> Result<(FeedSubscriber, Arc<PushedRevocations>), Error> {
        let mut clients = Vec::new();
        for url in &self.urls {
            let mut b = crate::ClientBuilder::new()
                .timeout(LONG_POLL + Duration::from_secs(15))
                .connect_timeout(Duration::from_secs(5))
                .identity_files(&self.cert, &self.key)
                .passphrase(self.passphrase.clone());
            for p in &self.server_ca {
                b = b.ca_file(p);
            }
            clients.push(CaClient::from_builder(crate::ca::CaUrl::parse(url)?, b)?);
        }
        let signers = mtls_tls::load_certificates(&self.crl_signers)?;
        let set = Arc::new(PushedRevocations::new(self.max_age));
        Ok((FeedSubscriber::new(clients, signers, set.clone())?, set))
    }
}

/// Follows one CA's revocation feed into a shared set.
pub struct FeedSubscriber {
    clients: Vec<CaClient>,
    current: usize,
    ca: Vec<CertificateDer<'static>>,
    set: Arc<PushedRevocations>,
    stats: Arc<FeedStats>,
    position: Option<i64>,
    wait: Duration,
}

impl std::fmt::Debug for FeedSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedSubscriber")
            .field(
                "urls",
                &self
                    .clients
                    .iter()
                    .map(|c| c.url().to_string())
                    .collect::<Vec<_>>(),
            )
            .field("position", &self.position)
            .finish()
    }
}

impl FeedSubscriber {
    /// Follows the feed of the CA at `clients` (one per instance URL, tried in turn) into
    /// `set`; CRLs must be signed by a certificate of `ca`.
    pub fn new(
        clients: Vec<CaClient>,
        ca: Vec<CertificateDer<'static>>,
        set: Arc<PushedRevocations>,
    ) -> Result<Self, Error> {
        if clients.is_empty() {
            return Err(Error::Config("the revocation feed needs a CA URL".into()));
        }
        let stats = Arc::new(FeedStats::default());
        stats.position.store(-1, Ordering::Relaxed);
        Ok(FeedSubscriber {
            clients,
            current: 0,
            ca,
            set,
            stats,
            position: None,
            wait: LONG_POLL,
        })
    }

    /// Waits at most `wait` per request (default [`LONG_POLL`]; the clients' timeout must be
    /// longer).
    pub fn long_poll(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The subscriber's counters.
    pub fn stats(&self) -> Arc<FeedStats> {
        self.stats.clone()
    }

    fn client(&self) -> &CaClient {
        // Never empty (checked in `new`), so the index is in range.
        &self.clients[self.current % self.clients.len()]
    }

    /// Seeds the set from the CRL of the current CA and takes its position.
    pub async fn resync(&mut self) -> Result<FeedChange, Error> {
        let (der, seq) = self.client().crl().await?;
        let seq = seq.ok_or_else(|| {
            Error::Protocol("the CA's CRL does not name its revocation feed position".into())
        })?;
        let added = self
            .set
            .seed_from_crl(
                self.ca.clone(),
                &CertificateRevocationListDer::from(der.to_vec()),
                OffsetDateTime::now_utc(),
            )
            .map_err(|e| Error::Protocol(format!("the CA's CRL: {e}")))?;
        self.position = Some(seq);
        self.stats.position.store(seq, Ordering::Relaxed);
        self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
        Ok(FeedChange {
            added,
            position: seq,
        })
    }

    /// The first seed, waiting at most `limit`; failures are logged (the subscriber retries in
    /// [`FeedSubscriber::run`]) — until then a hard-fail server refuses clients that only the
    /// feed would vouch for.
    pub async fn seed_within(&mut self, limit: Duration) {
        match tokio::time::timeout(limit, self.resync()).await {
            Ok(Ok(c)) => {
                tracing::info!(
                    position = c.position,
                    revoked = self.set.len(),
                    "revocation feed seeded"
                )
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "revocation feed: first seed failed; retrying in the background")
            }
            Err(_) => {
                tracing::warn!(limit = ?limit, "revocation feed: the CA did not answer; retrying in the background")
            }
        }
    }

    /// One step: a resync when there is no position, else one long poll.
    pub async fn step(&mut self) -> Result<FeedChange, Error> {
        let Some(after) = self.position else {
            return self.resync().await;
        };
        let page = match self.client().revocations(after, self.wait).await {
            Err(Error::Refused { status: 409, .. }) => {
                tracing::warn!(url = %self.client().url(), after, "revocation feed gap (the CA is behind this position): fetching the CRL");
                return self.resync().await;
            }
            other => other?,
        };
        match self.apply(after, &page)? {
            Some(change) => Ok(change),
            None => {
                tracing::warn!(url = %self.client().url(), after, "revocation feed skipped a sequence number: fetching the CRL");
                self.resync().await
            }
        }
    }

    /// Applies a page that follows `after`; `None` when it does not follow on (a gap).
    fn apply(&mut self, after: i64, page: &FeedPage) -> Result<Option<FeedChange>, Error> {
        let mut expect = after;
        let mut batch: Vec<(IssuerKey, Serial)> = Vec::with_capacity(page.events.len());
        for e in &page.events {
            // (A position at the end of the numbers is a gap: it cannot be followed.)
            if expect.checked_add(1) != Some(e.seq) {
                return Ok(None);
            }
            expect = e.seq;
            let key = issuer_key_from_hex(&e.issuer_key)
                .ok_or_else(|| Error::Protocol(format!("feed event {}: bad issuer_key", e.seq)))?;
            let serial = Serial::from_str(&e.serial)
                .map_err(|err| Error::Protocol(format!("feed event {}: {err}", e.seq)))?;
            batch.push((key, serial));
        }
        // A CA behind us, or one ahead with nothing to show for it (no events up to its head:
        // a reconcile moved the counter without events): a gap. Taken as contact, the
        // position would never move and every poll would answer at once, in a tight loop.
        if page.head < after || (page.events.is_empty() && page.head > after) {
            return Ok(None);
        }
        let added = self.set.insert(batch.iter().map(|(k, s)| (*k, s)));
        self.set.touch(OffsetDateTime::now_utc());
        self.stats
            .events
            .fetch_add(page.events.len() as u64, Ordering::Relaxed);
        self.position = Some(expect);
        self.stats.position.store(expect, Ordering::Relaxed);
        Ok(Some(FeedChange {
            added,
            position: expect,
        }))
    }

    /// Follows the feed until `shutdown`, calling `changed` after every step that added
    /// revocations. Failures are logged and counted and retried with a growing pause (on the
    /// next CA URL); the position is kept, so nothing is missed.
    pub async fn run(mut self, changed: impl Fn(FeedChange) + Send, mut shutdown: Shutdown) {
        let mut retry = RETRY_FIRST;
        // The position of the last resync: a resync that lands there again made no progress
        // (a CA whose feed does not follow on from its own CRL), and is paused like a failure
        // rather than repeated at once (each one downloads the CRL).
        let mut last_resync: Option<i64> = None;
        loop {
            let resyncs = self.stats.resyncs.load(Ordering::Relaxed);
            let step = tokio::select! {
                s = self.step() => s,
                _ = shutdown.wait() => return,
            };
            match step {
                Ok(change) => {
                    if change.added > 0 {
                        changed(change);
                    }
                    if self.stats.resyncs.load(Ordering::Relaxed) == resyncs {
                        retry = RETRY_FIRST;
                        continue;
                    }
                    if last_resync.replace(change.position) != Some(change.position) {
                        retry = RETRY_FIRST;
                        continue;
                    }
                    tracing::warn!(url = %self.client().url(), position = change.position, "revocation feed: resynced to the same position again; pausing, then the next CA URL");
                    self.current = self.current.wrapping_add(1);
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = shutdown.wait() => return,
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(url = %self.client().url(), error = %e, "revocation feed request failed; retrying");
                    self.current = self.current.wrapping_add(1);
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = shutdown.wait() => return,
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

fn issuer_key_from_hex(s: &str) -> Option<IssuerKey> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::ca::{CaUrl, FeedEvent, FeedPage};

    fn subscriber() -> (FeedSubscriber, Arc<PushedRevocations>) {
        let pki = mtls_test_util::TestPki::new("feed");
        let client = CaClient::from_builder(
            CaUrl::parse("https://127.0.0.1:1").unwrap(),
            crate::ClientBuilder::new().ca_certificates(vec![pki.root_der()]),
        )
        .unwrap();
        let set = Arc::new(PushedRevocations::new(Duration::from_secs(60)));
        let sub = FeedSubscriber::new(vec![client], vec![pki.root_der()], set.clone()).unwrap();
        (sub, set)
    }

    fn event(seq: i64, serial: &str) -> FeedEvent {
        FeedEvent {
            seq,
            issuer_key: "ab".repeat(32),
            serial: serial.into(),
            revoked_at: OffsetDateTime::UNIX_EPOCH,
            reason: None,
        }
    }

    #[test]
    fn pages_must_follow_on_and_carry_well_formed_events() {
        let (mut sub, set) = subscriber();
        let page = |events: Vec<FeedEvent>, head| FeedPage { events, head };
        // Contiguous: applied, position moves.
        let c = sub
            .apply(4, &page(vec![event(5, "0a"), event(6, "0b")], 6))
            .unwrap()
            .unwrap();
        assert_eq!((c.added, c.position), (2, 6));
        assert_eq!(set.len(), 2);
        // A skipped sequence number, a repeat, or a CA behind us: a gap, nothing applied.
        assert!(sub
            .apply(6, &page(vec![event(8, "0c")], 8))
            .unwrap()
            .is_none());
        assert!(sub
            .apply(6, &page(vec![event(6, "0c")], 6))
            .unwrap()
            .is_none());
        assert!(sub.apply(6, &page(vec![], 3)).unwrap().is_none());
        // Ahead with no events to show: a gap too (not contact, which would poll in a loop).
        assert!(sub.apply(6, &page(vec![], 9)).unwrap().is_none());
        assert_eq!(set.len(), 2);
        // Malformed issuer key or serial: refused, nothing applied.
        let mut bad = event(7, "0d");
        bad.issuer_key = "zz".into();
        assert!(sub.apply(6, &page(vec![bad], 7)).is_err());
        assert!(sub.apply(6, &page(vec![event(7, "not hex")], 7)).is_err());
        assert_eq!(set.len(), 2);
        // An empty page at the head is contact, not a change.
        let c = sub.apply(6, &page(vec![], 6)).unwrap().unwrap();
        assert_eq!((c.added, c.position), (0, 6));
        // A CA claiming the last sequence number there is: a gap, not an overflow.
        assert!(sub
            .apply(i64::MAX, &page(vec![event(i64::MIN, "0e")], i64::MAX))
            .unwrap()
            .is_none());
    }
}
