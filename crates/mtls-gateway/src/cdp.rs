//! CRLs from the certificates themselves (`crl_from_certificates = true`): the CRL Distribution
//! Points of the client CA certificates (at start) and of the client certificates seen (when
//! no source could give their status) are fetched, checked like CRL files, kept in the
//! listener's [`FetchedCrls`] and refreshed before their nextUpdate (at three quarters of the
//! remaining time, spread a little), each new CRL reaching the trust state through the one
//! reload. Bounded: [`MAX_URLS`] distribution points, the CRL fetch's size and time limits.

use std::sync::Arc;
use std::time::Duration;

use mtls_serve::reload::ReloadHandle;
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

/// When to fetch again a CRL valid until `next_update`: three quarters of the way, spread by
/// up to a tenth so listeners do not ask together; an hour when it has no nextUpdate.
fn refresh_at(now: OffsetDateTime, next_update: Option<OffsetDateTime>) -> OffsetDateTime {
    let Some(next) = next_update else {
        return now + time::Duration::hours(1);
    };
    let left = next - now;
    let spread = i32::try_from(now.nanosecond() % 100).unwrap_or(0);
    now + left * 3_i32 / 4_i32 - left * spread / 1000_i32
}

/// Fetches what `set` wants until `shutdown`; asks for a reload when a CRL changed.
pub async fn run(
    listener: Arc<str>,
    set: Arc<FetchedCrls>,
    client_ca: Vec<std::path::PathBuf>,
    reload: ReloadHandle,
    metrics: Arc<crate::metrics::Metrics>,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.wait() => return,
        }
        let now = OffsetDateTime::now_utc();
        let mut changed = false;
        for url in set.due(now) {
            let roots = match crate::crl_fetch::roots(&client_ca) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(listener = %listener, error = %e, "client CA bundle unreadable");
                    break;
                }
            };
            let fetched = tokio::select! {
                r = crate::crl_fetch::download(&url, &roots) => r,
                _ = shutdown.wait() => return,
            };
            let installed = fetched.and_then(|(crls, state)| {
                let summary = state.crl_summaries().first().cloned();
                let (Some(crl), Some(summary)) = (crls.into_iter().next(), summary) else {
                    return Err(crate::Error::Load(format!("{url}: no CRL")));
                };
                if summary.next_update.is_some_and(|n| now >= n) {
                    return Err(crate::Error::Load(format!("{url}: the CRL has expired")));
                }
                set.install(
                    &url,
                    crl,
                    summary.number,
                    refresh_at(now, summary.next_update),
                )
                .map_err(crate::Error::Load)
            });
            match installed {
                Ok(new) => {
                    metrics.crl_fetch(true);
                    if new {
                        tracing::info!(listener = %listener, %url, "CRL from a distribution point installed");
                    }
                    changed |= new;
                }
                Err(e) => {
                    metrics.crl_fetch(false);
                    tracing::warn!(listener = %listener, %url, error = %e, "CRL distribution point fetch failed");
                    set.failed(&url, now + RETRY);
                }
            }
        }
        if changed {
            reload.reload();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::refresh_at;
    use time::{Duration, OffsetDateTime};

    #[test]
    fn refreshes_before_next_update() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(100);
        for ns in [0, 50_000, 99] {
            let now = now.replace_nanosecond(ns).unwrap_or(now);
            let at = refresh_at(now, Some(now + Duration::hours(8)));
            assert!(
                at > now + Duration::hours(5) && at <= now + Duration::hours(6),
                "{at}"
            );
        }
        assert_eq!(refresh_at(now, None), now + Duration::hours(1));
    }
}
