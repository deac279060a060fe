//! Keeps a CRL file current from the CA's distribution point (`[[listener.crl_fetch]]`).
//!
//! Each fetch downloads the CRL over plain HTTP (as RFC 5280 distribution points are), checks it
//! the way a reload would (parses, signed by a CA of the listener's `client_ca`, CRL number) and
//! only then replaces the file atomically; the file watcher reloads it. A failed fetch leaves the
//! last good CRL in place — and when that one passes its nextUpdate, verification fails closed
//! (unless `allow_expired_crl`).

use std::path::Path;

use mtls_pki::files::{self, Visibility};
use rustls_pki_types::CertificateDer;

use crate::config::CrlFetchConfig;
use crate::Error;

pub(crate) fn roots(
    client_ca: &[std::path::PathBuf],
) -> Result<Vec<CertificateDer<'static>>, Error> {
    mtls_tls::load_certificates(client_ca).map_err(|e| Error::Load(e.to_string()))
}

/// [`mtls_client::crl::download`], its failures as this crate's errors.
async fn download(
    url: &str,
    roots: &[CertificateDer<'static>],
) -> Result<
    (
        Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
        mtls_verify::TrustState,
    ),
    Error,
> {
    mtls_client::crl::download(url, roots)
        .await
        .map_err(|e| match e {
            mtls_client::Error::Transport { url, detail } => {
                Error::Io(format!("fetching {url}: {detail}"))
            }
            other => Error::Load(other.to_string()),
        })
}

/// What a successful fetch found.
#[derive(Clone, Copy, Debug)]
pub struct Fetched {
    /// Whether the file changed.
    pub changed: bool,
    /// The earliest nextUpdate of the CRLs downloaded.
    pub next_update: Option<time::OffsetDateTime>,
}

/// Downloads, checks and (if it changed) installs the CRL.
pub async fn fetch_once(
    fetch: &CrlFetchConfig,
    client_ca: &[std::path::PathBuf],
) -> Result<Fetched, Error> {
    let roots = roots(client_ca)?;
    let (crls, fetched) = download(&fetch.url, &roots).await?;
    let next_update = fetched
        .crl_summaries()
        .iter()
        .filter_map(|s| s.next_update)
        .min();
    // The download is plain HTTP: a replayed CRL is correctly signed. Never go back in time.
    check_not_stale(
        &fetch.file,
        roots,
        &fetched,
        time::OffsetDateTime::now_utc(),
    )
    .map_err(|why| Error::Load(format!("CRL from {} not installed: {why}", fetch.url)))?;
    let pem: String = crls
        .iter()
        .map(|c| mtls_pki::pem_io::encode("X509 CRL", c))
        .collect();
    let changed = !std::fs::read(&fetch.file).is_ok_and(|old| old == pem.as_bytes());
    if changed {
        write(&fetch.file, pem.as_bytes())?;
    }
    Ok(Fetched {
        changed,
        next_update,
    })
}

/// How long to wait before the next fetch: `every`, but never so long that the CRL installed
/// (valid until `next_update`) expires first — three quarters of the time it has left, at
/// least a second. After `failures` failed fetches in a row: from 5 s doubling, within the same
/// bound (a minute when the installed CRL's date is unknown), and at most 30 s once it has
/// expired (every client is refused until a fetch succeeds: a CA back after an outage is seen
/// within seconds, not after `every`).
pub fn next_fetch_in(
    every: std::time::Duration,
    next_update: Option<time::OffsetDateTime>,
    failures: u32,
    now: time::OffsetDateTime,
) -> std::time::Duration {
    let second = std::time::Duration::from_secs(1);
    let expired = next_update.is_some_and(|n| n <= now);
    let before_expiry = next_update
        .map(|next| (next - now) * 3_i32 / 4_i32)
        .and_then(|left| std::time::Duration::try_from(left).ok());
    if failures > 0 {
        let backoff = std::time::Duration::from_secs(5)
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        let cap = match (expired, before_expiry) {
            (true, _) => std::time::Duration::from_secs(30),
            (false, Some(left)) => left.max(std::time::Duration::from_secs(5)),
            // Unknown (the first fetch failed: the CRL on disk may be about to expire): a
            // minute at most.
            (false, None) => std::time::Duration::from_secs(60),
        };
        return backoff.min(cap).min(every).max(second);
    }
    match before_expiry {
        Some(left) => every.min(left).max(second),
        // Expired already (or no date): soon.
        None if next_update.is_some() => second,
        None => every,
    }
}

/// Refuses a downloaded CRL set that is expired, or older than what `installed` holds for any
/// issuer (as a reload would), or that drops an issuer `installed` covers. An unreadable or
/// invalid installed file is simply replaced.
fn check_not_stale(
    installed: &Path,
    roots: Vec<CertificateDer<'static>>,
    fetched: &mtls_verify::TrustState,
    now: time::OffsetDateTime,
) -> Result<(), String> {
    for s in fetched.crl_summaries() {
        if let Some(next) = s.next_update.filter(|n| *n < now) {
            return Err(format!("the CRL of {} expired at {next}", s.issuer));
        }
    }
    let Ok(old) = std::fs::read(installed) else {
        return Ok(());
    };
    let Ok(old) = mtls_pki::pem_io::crls(&old) else {
        return Ok(());
    };
    let Ok(old) = mtls_verify::TrustState::new(0, roots, &old, Default::default()) else {
        return Ok(());
    };
    for o in old.crl_summaries() {
        if !fetched.crl_summaries().iter().any(|n| n.issuer == o.issuer) {
            return Err(format!("it no longer covers {}", o.issuer));
        }
    }
    // The same comparison as every reload's.
    fetched
        .check_not_older_than(&old)
        .map_err(|e| e.to_string())
}

fn write(path: &Path, data: &[u8]) -> Result<(), Error> {
    files::write_atomic(path, data, Visibility::Public, true)
        .map_err(|e| Error::Io(format!("{}: {e}", path.display())))
}

/// Refreshes until shutdown; errors are logged and counted, the previous CRL stays.
pub(crate) async fn fetch_loop(
    fetch: CrlFetchConfig,
    client_ca: Vec<std::path::PathBuf>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    mut shutdown: mtls_serve::Shutdown,
    first: &Result<Fetched, Error>,
) {
    // Scheduled from the fetch made at start.
    let (mut next_update, mut failures) = match first {
        Ok(f) => (f.next_update, 0u32),
        Err(_) => (None, 1u32),
    };
    loop {
        let wait = next_fetch_in(
            fetch.every,
            next_update,
            failures,
            time::OffsetDateTime::now_utc(),
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => return,
        }
        match fetch_once(&fetch, &client_ca).await {
            Ok(f) => {
                metrics.crl_fetch(true);
                failures = 0;
                next_update = f.next_update;
                if f.changed {
                    tracing::info!(url = %fetch.url, file = %fetch.file.display(), "installed a new CRL");
                }
            }
            Err(e) => {
                metrics.crl_fetch(false);
                failures = failures.saturating_add(1);
                tracing::warn!(url = %fetch.url, error = %e, "CRL fetch failed; keeping the previous CRL");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use mtls_pki::revocation::build_crl;

    /// The next fetch comes before the installed CRL expires (at three quarters of the time it
    /// has left) when `every` would be too late, and within seconds after a failure, backing
    /// off up to `every`.
    #[test]
    fn fetches_are_scheduled_before_expiry_and_retried_soon() {
        use std::time::Duration as D;
        let now = time::OffsetDateTime::now_utc();
        let hour = D::from_secs(3600);
        let in_ = |m: i64| Some(now + time::Duration::minutes(m));
        assert_eq!(next_fetch_in(hour, in_(40), 0, now), D::from_secs(30 * 60));
        assert_eq!(next_fetch_in(hour, in_(600), 0, now), hour);
        assert_eq!(next_fetch_in(hour, None, 0, now), hour);
        assert_eq!(next_fetch_in(hour, in_(-5), 0, now), D::from_secs(1));
        assert_eq!(next_fetch_in(hour, in_(40), 1, now), D::from_secs(5));
        assert_eq!(next_fetch_in(hour, in_(40), 2, now), D::from_secs(10));
        // Failing for long: never beyond the installed CRL's remaining life, and every 30 s
        // at most once it has expired.
        assert_eq!(next_fetch_in(hour, in_(40), 30, now), D::from_secs(30 * 60));
        assert_eq!(next_fetch_in(hour, in_(600), 30, now), hour);
        assert_eq!(next_fetch_in(hour, in_(-5), 30, now), D::from_secs(30));
        assert_eq!(next_fetch_in(hour, None, 30, now), D::from_secs(60));
        assert_eq!(
            next_fetch_in(D::from_secs(2), None, 3, now),
            D::from_secs(2)
        );
    }
    use mtls_test_util::TestPki;
    use std::time::Duration;

    /// Serves `body` once per request on 127.0.0.1 and returns the URL.
    async fn serve(body: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let body = body.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let body = body.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(body)),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        format!("http://{addr}/v1/crl")
    }

    #[tokio::test]
    async fn installs_verified_crls_and_refuses_foreign_ones() {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new("crl");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, pki.chain_pem()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let good = build_crl(&pki.intermediate, 1, now, time::Duration::days(1), &[]).unwrap();
        let file = dir.path().join("crl.pem");
        let fetch = CrlFetchConfig {
            url: serve(good.to_vec()).await,
            file: file.clone(),
            every: Duration::from_secs(60),
        };
        assert!(
            fetch_once(&fetch, std::slice::from_ref(&ca))
                .await
                .unwrap()
                .changed
        );
        let installed = std::fs::read(&file).unwrap();
        assert!(
            !fetch_once(&fetch, std::slice::from_ref(&ca))
                .await
                .unwrap()
                .changed,
            "unchanged"
        );

        // A CRL signed by another CA, or garbage, never replaces the good one.
        let other = TestPki::new("other");
        let foreign = build_crl(&other.intermediate, 9, now, time::Duration::days(1), &[]).unwrap();
        for body in [foreign.to_vec(), b"garbage".to_vec()] {
            let bad = CrlFetchConfig {
                url: serve(body).await,
                ..fetch.clone()
            };
            assert!(fetch_once(&bad, std::slice::from_ref(&ca)).await.is_err());
            assert_eq!(std::fs::read(&file).unwrap(), installed);
        }
        // Correctly signed but stale: an older CRL number (a replay) or an expired CRL.
        let older = build_crl(&pki.intermediate, 0, now, time::Duration::days(1), &[]).unwrap();
        let expired = build_crl(
            &pki.intermediate,
            5,
            now - time::Duration::days(2),
            time::Duration::days(1),
            &[],
        )
        .unwrap();
        for (body, why) in [(older, "older than"), (expired, "expired")] {
            let stale = CrlFetchConfig {
                url: serve(body.to_vec()).await,
                ..fetch.clone()
            };
            let e = fetch_once(&stale, std::slice::from_ref(&ca))
                .await
                .unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
            assert_eq!(std::fs::read(&file).unwrap(), installed);
        }
        // A newer one replaces it.
        let newer = build_crl(&pki.intermediate, 2, now, time::Duration::days(1), &[]).unwrap();
        let next = CrlFetchConfig {
            url: serve(newer.to_vec()).await,
            ..fetch.clone()
        };
        assert!(
            fetch_once(&next, std::slice::from_ref(&ca))
                .await
                .unwrap()
                .changed
        );
        let installed = std::fs::read(&file).unwrap();

        // An unreachable distribution point is an error, not an empty CRL.
        let dead = CrlFetchConfig {
            url: "http://127.0.0.1:9/v1/crl".into(),
            ..fetch.clone()
        };
        assert!(fetch_once(&dead, std::slice::from_ref(&ca)).await.is_err());
        assert_eq!(std::fs::read(&file).unwrap(), installed);
    }
}
