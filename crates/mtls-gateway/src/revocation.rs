//! A listener's revocation sources beyond its CRL files, built once and kept across reloads:
//! the online CA's feed (`[listener.revocation_feed]`, followed by `mtls_client::feed`), OCSP
//! checking of client certificates (`[listener.ocsp]`), CRLs from distribution points
//! (`crl_from_certificates`, followed by `mtls_client::crl`) and the decision counters; the tasks that
//! keep them current (each change wakes the listener's open connections to re-check) and their
//! metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mtls_client::feed::{FeedFiles, FeedStats, FeedSubscriber};
use mtls_client::ocsp_check::{OcspChecker, OcspOptions, OcspStats};
use mtls_serve::metrics::{Kind, Registry, Scraped, Unit};
use mtls_serve::reload::ReloadHandle;
use mtls_serve::Shutdown;
use mtls_verify::{PushedRevocations, RevocationSources};

use crate::config::{ListenerConfig, RevocationFeedConfig};
use crate::server::Shared;
use crate::Error;

/// A listener's sources and what keeps them current (started by [`spawn`]).
pub struct Sources {
    /// What every trust state of the listener consults.
    pub sources: RevocationSources,
    /// The feed subscriber's counters.
    pub feed_stats: Option<Arc<FeedStats>>,
    /// The OCSP checker's counters.
    pub ocsp_stats: Option<Arc<OcspStats>>,
    feed: Option<FeedSubscriber>,
    ocsp: Option<Arc<OcspChecker>>,
    ocsp_handle: Option<Arc<OcspChecker>>,
}

impl Sources {
    /// Builds the sources `cfg` asks for; the feed is seeded now (bounded).
    pub async fn build(cfg: &ListenerConfig) -> Result<Sources, Error> {
        let feed = match &cfg.revocation_feed {
            Some(f) => Some(subscriber(cfg, f).await?),
            None => None,
        };
        let ocsp = match &cfg.ocsp {
            Some(o) => Some(
                OcspChecker::new(OcspOptions {
                    responder: o.responder.clone(),
                    max_wait: o.max_wait,
                    nonce: o.nonce,
                    ..Default::default()
                })
                .map_err(|e| Error::Config(format!("listener {:?}: ocsp: {e}", cfg.name)))?,
            ),
            None => None,
        };
        Ok(Sources {
            sources: RevocationSources {
                pushed: feed.as_ref().map(|(_, set)| set.clone()),
                status: ocsp
                    .clone()
                    .map(|o| o as Arc<dyn mtls_verify::StatusSource>),
                decisions: Some(Arc::default()),
                fetched: cfg
                    .crl_from_certificates
                    .then(|| mtls_client::crl::fetched_crls(&cfg.client_ca)),
            },
            feed_stats: feed.as_ref().map(|(sub, _)| sub.stats()),
            ocsp_stats: ocsp.as_ref().map(|o| o.stats()),
            feed: feed.map(|(sub, _)| sub),
            ocsp_handle: ocsp.clone(),
            ocsp,
        })
    }

    /// The OCSP checker, if any (for its cache metrics).
    pub fn ocsp_checker(&self) -> Option<Arc<OcspChecker>> {
        self.ocsp_handle.clone()
    }

    /// Takes the tasks out: the feed subscriber and the OCSP checker, each waking `shared`'s
    /// open connections when what it knows changed.
    pub fn take_tasks(&mut self) -> (Option<FeedSubscriber>, Option<Arc<OcspChecker>>) {
        (self.feed.take(), self.ocsp.take())
    }
}

/// Starts what keeps a listener's sources current until `shutdown`: the feed, OCSP refreshes,
/// CRLs from distribution points (a new one asks `reload` for a reload).
pub fn spawn(
    shared: &Arc<Shared>,
    tasks: (Option<FeedSubscriber>, Option<Arc<OcspChecker>>),
    client_ca: Vec<std::path::PathBuf>,
    reload: &ReloadHandle,
    shutdown: &Shutdown,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut out = Vec::new();
    let (feed, ocsp) = tasks;
    if let Some(sub) = feed {
        let s = shared.clone();
        out.push(tokio::spawn(sub.run(
            move |change| {
                tracing::info!(listener = %s.name, new = change.added, position = change.position, "revocations from the CA's feed; re-checking open connections");
                // The trust state is the same object: wake open connections to re-check
                // against the grown set.
                s.generations.poke();
            },
            shutdown.clone(),
        )));
    }
    if let Some(c) = ocsp {
        let s = shared.clone();
        out.push(tokio::spawn(
            c.run(move || s.generations.poke(), shutdown.clone()),
        ));
    }
    if let Some(set) = &shared.sources.fetched {
        let (reload, metrics) = (reload.clone(), shared.metrics.clone());
        out.push(tokio::spawn(mtls_client::crl::follow_distribution_points(
            set.clone(),
            client_ca,
            move || reload.reload(),
            move |ok| metrics.crl_fetch(ok),
            shutdown.clone(),
        )));
    }
    out
}

/// Longest the gateway waits at start for the first seed (the CRL behind the feed).
const FIRST_SEED: Duration = Duration::from_secs(10);

/// The subscriber of `feed` for listener `cfg`, with its set seeded if the CA answers within
/// 10 seconds. A CA that does not answer does not stop the start: until the feed is seeded,
/// the leaf's status must come from a CRL (hard-fail refuses otherwise).
async fn subscriber(
    cfg: &ListenerConfig,
    feed: &RevocationFeedConfig,
) -> Result<(FeedSubscriber, Arc<PushedRevocations>), Error> {
    let bad = |m: String| Error::Config(format!("listener {:?}: revocation_feed: {m}", cfg.name));
    let certificate = feed
        .certificate
        .as_ref()
        .or(cfg.certificates.first())
        .ok_or_else(|| bad("no certificate to present to the CA".into()))?;
    let files = FeedFiles {
        urls: feed.urls.clone(),
        server_ca: if feed.ca.is_empty() {
            cfg.client_ca.clone()
        } else {
            feed.ca.clone()
        },
        cert: certificate.cert.clone(),
        key: certificate.key.clone(),
        passphrase: certificate
            .key_passphrase_file
            .clone()
            .map_or(mtls_tls::Passphrase::None, mtls_tls::Passphrase::File),
        // CRLs behind the feed are checked against the listener's client CAs, as CRL files are.
        crl_signers: cfg.client_ca.clone(),
        max_age: feed.max_age,
    };
    let (mut sub, set) = files.subscriber().map_err(|e| bad(e.to_string()))?;
    sub.seed_within(FIRST_SEED).await;
    Ok((sub, set))
}

/// Feed and OCSP-checking metrics per listener, read at scrape time.
pub fn register_metrics(registry: &mut Registry, shared: &[Arc<Shared>]) {
    type Pick = fn(&Shared) -> Option<f64>;
    let families: [(&'static str, &'static str, Option<Unit>, Kind, Pick); 11] = [
        (
            "mtls_ocsp_cached_answers",
            "Verified OCSP answers about client certificates held in the cache",
            None,
            Kind::Gauge,
            |s| s.ocsp.as_ref().map(|o| o.cached().0 as f64),
        ),
        (
            "mtls_ocsp_next_update",
            "Earliest nextUpdate among the cached OCSP answers",
            Some(Unit::Seconds),
            Kind::Gauge,
            |s| {
                let (_, next) = s.ocsp.as_ref()?.cached();
                next.map(|t| t.unix_timestamp() as f64)
            },
        ),
        (
            "mtls_ocsp_answers",
            "Verified OCSP answers about client certificates",
            None,
            Kind::Counter,
            |s| {
                s.ocsp_stats
                    .as_ref()
                    .map(|o| o.answers.load(Ordering::Relaxed) as f64)
            },
        ),
        (
            "mtls_ocsp_failures",
            "OCSP requests about client certificates that got no verified answer",
            None,
            Kind::Counter,
            |s| {
                s.ocsp_stats
                    .as_ref()
                    .map(|o| o.failures.load(Ordering::Relaxed) as f64)
            },
        ),
        (
            "mtls_ocsp_waits",
            "Handshakes and requests that waited for a first OCSP answer",
            None,
            Kind::Counter,
            |s| {
                s.ocsp_stats
                    .as_ref()
                    .map(|o| o.waits.load(Ordering::Relaxed) as f64)
            },
        ),
        (
            "mtls_revocation_feed_position",
            "Last revocation feed sequence number applied",
            None,
            Kind::Gauge,
            |s| {
                s.feed_stats
                    .as_ref()
                    .map(|f| f.position.load(Ordering::Relaxed) as f64)
            },
        ),
        (
            "mtls_revocation_feed_age",
            "Time since the CA's revocation feed last answered",
            Some(Unit::Seconds),
            Kind::Gauge,
            |s| {
                let p = s.sources.pushed.as_ref()?;
                Some(
                    p.age(time::OffsetDateTime::now_utc())
                        .map_or(f64::INFINITY, |a| a as f64),
                )
            },
        ),
        (
            "mtls_revocation_feed_revoked",
            "Revoked certificates known from the feed",
            None,
            Kind::Gauge,
            |s| s.sources.pushed.as_ref().map(|p| p.len() as f64),
        ),
        (
            "mtls_revocation_feed_events",
            "Revocations received from the feed",
            None,
            Kind::Counter,
            |s| {
                s.feed_stats
                    .as_ref()
                    .map(|f| f.events.load(Ordering::Relaxed) as f64)
            },
        ),
        (
            "mtls_revocation_feed_resyncs",
            "CRL fetches that (re)seeded the feed",
            None,
            Kind::Counter,
            |s| {
                s.feed_stats
                    .as_ref()
                    .map(|f| f.resyncs.load(Ordering::Relaxed) as f64)
            },
        ),
        (
            "mtls_revocation_feed_errors",
            "Failed revocation feed requests",
            None,
            Kind::Counter,
            |s| {
                s.feed_stats
                    .as_ref()
                    .map(|f| f.errors.load(Ordering::Relaxed) as f64)
            },
        ),
    ];
    let listeners = shared.to_vec();
    Scraped::register(
        registry,
        "mtls_revocation_decisions",
        "Revocation decisions about client certificates, by source and result",
        None,
        Kind::Counter,
        move || {
            listeners
                .iter()
                .filter_map(|s| s.sources.decisions.as_ref().map(|d| (s, d)))
                .flat_map(|(s, d)| {
                    d.counts().into_iter().map(|(source, result, n)| {
                        (
                            vec![
                                ("listener", s.name.to_string()),
                                ("source", source.label().to_string()),
                                ("result", result.label().to_string()),
                            ],
                            n as f64,
                        )
                    })
                })
                .collect()
        },
    );
    for (name, help, unit, kind, pick) in families {
        let shared = shared.to_vec();
        Scraped::register(registry, name, help, unit, kind, move || {
            shared
                .iter()
                .filter_map(|s| pick(s).map(|v| (vec![("listener", s.name.to_string())], v)))
                .collect()
        });
    }
}
