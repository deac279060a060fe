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

/// Downloads, checks and (if it changed) installs the CRL. Returns whether the file changed.
pub async fn fetch_once(
    fetch: &CrlFetchConfig,
    client_ca: &[std::path::PathBuf],
) -> Result<bool, Error> {
    let roots = roots(client_ca)?;
    let (crls, fetched) = download(&fetch.url, &roots).await?;
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
    if std::fs::read(&fetch.file).is_ok_and(|old| old == pem.as_bytes()) {
        return Ok(false);
    }
    write(&fetch.file, pem.as_bytes())?;
    Ok(true)
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
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(fetch.every) => {}
            _ = shutdown.wait() => return,
        }
        match fetch_once(&fetch, &client_ca).await {
            Ok(changed) => {
                metrics.crl_fetch(true);
                if changed {
                    tracing::info!(url = %fetch.url, file = %fetch.file.display(), "installed a new CRL");
                }
            }
            Err(e) => {
                metrics.crl_fetch(false);
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
        std::fs::write(
            &ca,
            format!(
                "{}{}",
                mtls_pki::pem_io::encode("CERTIFICATE", &pki.intermediate_der()),
                mtls_pki::pem_io::encode("CERTIFICATE", &pki.root_der())
            ),
        )
        .unwrap();
        let now = time::OffsetDateTime::now_utc();
        let good = build_crl(&pki.intermediate, 1, now, time::Duration::days(1), &[]).unwrap();
        let file = dir.path().join("crl.pem");
        let fetch = CrlFetchConfig {
            url: serve(good.to_vec()).await,
            file: file.clone(),
            every: Duration::from_secs(60),
        };
        assert!(fetch_once(&fetch, std::slice::from_ref(&ca)).await.unwrap());
        let installed = std::fs::read(&file).unwrap();
        assert!(
            !fetch_once(&fetch, std::slice::from_ref(&ca)).await.unwrap(),
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
        assert!(fetch_once(&next, std::slice::from_ref(&ca)).await.unwrap());
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
