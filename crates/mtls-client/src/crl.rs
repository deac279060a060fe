//! CRLs over plain HTTP, as distribution points serve them: [`download`] (bounded in size and
//! time, checked like CRL files) is the one CRL download of mtls (the gateway's `crl_fetch` and
//! the following below); [`follow_distribution_points`] keeps a server's
//! [`FetchedCrls`] current (`crl_from_certificates`): the CRL Distribution Points of the client
//! CA certificates (at start) and of the client certificates seen (when no source could give
//! their status), refreshed before their nextUpdate (at three quarters of the remaining time,
//! spread a little). Bounded: [`MAX_URLS`] distribution points, [`MAX_CRL_BYTES`] and 60 s each.

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::Error;

/// Largest CRL accepted (a million entries is about 36 MB).
pub const MAX_CRL_BYTES: usize = 128 << 20;
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Downloads the CRL(s) at `url` and checks them as a server's reload would: parsed, signed by
/// a certificate of `roots`, a CRL number, no delta or partitioned CRL. Transport failures are
/// [`Error::Transport`], unusable CRLs [`Error::Protocol`].
pub async fn download(
    url: &str,
    roots: &[CertificateDer<'static>],
) -> Result<
    (
        Vec<CertificateRevocationListDer<'static>>,
        mtls_verify::TrustState,
    ),
    Error,
> {
    let client = crate::ClientBuilder::new()
        .timeout(FETCH_TIMEOUT)
        .build_plain_http()?;
    let transport = |detail: String| Error::Transport {
        url: url.to_string(),
        detail,
    };
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| transport(crate::ca::error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(transport(format!("HTTP {}", resp.status())));
    }
    let body = crate::body_limited(resp, MAX_CRL_BYTES)
        .await
        .map_err(|e| transport(e.to_string()))?;
    let crls = mtls_pki::pem_io::crls(&body)
        .map_err(|e| Error::Protocol(format!("CRL from {url}: {e}")))?;
    let state = mtls_verify::TrustState::new(0, roots.to_vec(), &crls, Default::default())
        .map_err(|e| Error::Protocol(format!("CRL from {url}: {e}")))?;
    Ok((crls, state))
}

use std::sync::Arc;
use std::time::Duration;

use mtls_serve::Shutdown;
use mtls_verify::FetchedCrls;
use time::OffsetDateTime;

/// Most distribution points followed per listener.
pub const MAX_URLS: usize = 64;
/// Pause before a failed distribution point is asked again.
const RETRY: time::Duration = time::Duration::seconds(30);

/// The set for a listener, wanting its client CAs' own distribution points already.
pub fn fetched_crls(client_ca: &[std::path::PathBuf]) -> Arc<FetchedCrls> {
    let set = Arc::new(FetchedCrls::new(MAX_URLS));
    if let Ok(cas) = mtls_tls::load_certificates(client_ca) {
        for ca in cas {
            set.want(&mtls_verify::crl_distribution_points(&ca));
        }
    }
    set
}

/// Longest a CRL from a distribution point is kept before it is asked for again, however long
/// it is valid: a CA publishes a revocation in its next CRL at once, and a root's CRL may be
/// valid for months (without this, an intermediate it revoked would be trusted for most of
/// them).
const MAX_REFRESH: time::Duration = time::Duration::hours(1);

/// When to fetch again a CRL valid until `next_update`: three quarters of the way (at most
/// [`MAX_REFRESH`]), spread by up to a tenth so listeners do not ask together; an hour when it
/// has no nextUpdate.
fn refresh_at(now: OffsetDateTime, next_update: Option<OffsetDateTime>) -> OffsetDateTime {
    let Some(next) = next_update else {
        return now + MAX_REFRESH;
    };
    let wait = ((next - now) * 3_i32 / 4_i32).min(MAX_REFRESH);
    let spread = i32::try_from(now.nanosecond() % 100).unwrap_or(0);
    now + wait - wait * spread / 1000_i32
}

/// Fetches once every distribution point of `set` that is due at `now` (the CRLs must be
/// signed by a certificate of `client_ca`), installing what verifies; `counted` is told each
/// fetch's success. Returns whether a CRL was installed or replaced, `None` when the client CA
/// bundle cannot be read. The follower runs this in a loop; `mtls explain` once.
pub async fn fetch_due(
    set: &FetchedCrls,
    client_ca: &[std::path::PathBuf],
    now: OffsetDateTime,
    counted: &(impl Fn(bool) + Send + Sync),
) -> Option<bool> {
    let mut any = false;
    for url in set.due(now) {
        let roots = match mtls_tls::load_certificates(client_ca) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "client CA bundle unreadable");
                return None;
            }
        };
        let installed = download(&url, &roots).await.and_then(|(crls, state)| {
            // One CRL per distribution point (RFC 5280): with several, the summary (from an
            // unordered index) need not be the one installed.
            let summary = state.crl_summaries().first().cloned();
            let mut crls = crls.into_iter();
            let (Some(crl), None, Some(summary)) = (crls.next(), crls.next(), summary) else {
                return Err(Error::Protocol(format!("{url}: expected exactly one CRL")));
            };
            if summary.next_update.is_some_and(|n| now >= n) {
                return Err(Error::Protocol(format!("{url}: the CRL has expired")));
            }
            set.install(
                &url,
                crl,
                summary.version,
                refresh_at(now, summary.next_update),
            )
            .map_err(Error::Protocol)
        });
        match installed {
            Ok(new) => {
                counted(true);
                if new {
                    tracing::info!(%url, "CRL from a distribution point installed");
                }
                any |= new;
            }
            Err(e) => {
                counted(false);
                tracing::warn!(%url, error = %e, "CRL distribution point fetch failed");
                set.failed(&url, now + RETRY);
            }
        }
    }
    Some(any)
}

/// Fetches what `set` wants until `shutdown` (the CRLs must be signed by a certificate of
/// `client_ca`); calls `changed` when a CRL was installed or replaced (load a new trust state
/// then) and `counted` with each fetch's success.
pub async fn follow_distribution_points(
    set: Arc<FetchedCrls>,
    client_ca: Vec<std::path::PathBuf>,
    changed: impl Fn() + Send,
    counted: impl Fn(bool) + Send + Sync,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.wait() => return,
        }
        let now = OffsetDateTime::now_utc();
        let fetched = tokio::select! {
            r = fetch_due(&set, &client_ca, now, &counted) => r,
            _ = shutdown.wait() => return,
        };
        if fetched == Some(true) {
            changed();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::refresh_at;
    use time::{Duration, OffsetDateTime};

    /// A distribution point answering with one CRL has it installed; one answering with two
    /// (which CRL the checks looked at would be a matter of chance) is refused.
    #[tokio::test]
    async fn a_distribution_point_must_serve_exactly_one_crl() {
        use std::io::{Read, Write};
        let pki = mtls_test_util::TestPki::new("dp");
        let now = OffsetDateTime::now_utc();
        let one =
            mtls_pki::revocation::build_crl(&pki.intermediate, 1, now, Duration::days(1), &[])
                .unwrap();
        let two =
            mtls_pki::revocation::build_crl(&pki.intermediate, 2, now, Duration::days(1), &[])
                .unwrap();
        let pem = |crls: &[&rustls_pki_types::CertificateRevocationListDer<'_>]| -> String {
            crls.iter()
                .map(|c| mtls_pki::pem_io::encode("X509 CRL", c))
                .collect()
        };
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, pki.chain_pem()).unwrap();
        for (body, installed) in [(pem(&[&one]), true), (pem(&[&one, &two]), false)] {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/crl", l.local_addr().unwrap());
            std::thread::spawn(move || {
                if let Some(Ok(mut s)) = l.incoming().next() {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
            let set = mtls_verify::FetchedCrls::new(4);
            set.want([&url]);
            let ok = std::sync::atomic::AtomicBool::new(false);
            let counted = |good: bool| ok.store(good, std::sync::atomic::Ordering::SeqCst);
            super::fetch_due(&set, std::slice::from_ref(&ca), now, &counted).await;
            assert_eq!(ok.load(std::sync::atomic::Ordering::SeqCst), installed);
            assert_eq!(set.crls().len(), usize::from(installed));
        }
    }

    /// Three quarters of the way to nextUpdate, at most an hour (a root's CRL valid for 90
    /// days is asked for again hourly), spread by up to a tenth.
    #[test]
    fn refreshes_before_next_update() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(100);
        for ns in [0, 50_000, 99] {
            let now = now.replace_nanosecond(ns).unwrap_or(now);
            let at = refresh_at(now, Some(now + Duration::minutes(40)));
            assert!(
                at > now + Duration::minutes(26) && at <= now + Duration::minutes(30),
                "{at}"
            );
            for long in [Duration::hours(8), Duration::days(90)] {
                let at = refresh_at(now, Some(now + long));
                assert!(
                    at > now + Duration::minutes(53) && at <= now + Duration::hours(1),
                    "{at}"
                );
            }
        }
        assert_eq!(refresh_at(now, None), now + Duration::hours(1));
    }
}
