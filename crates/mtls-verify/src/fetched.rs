//! CRLs fetched from the distribution points the certificates name (`crl_from_certificates`).
//!
//! A server's trust states record here the CRL Distribution Point URLs of certificates whose
//! status no source could give ([`FetchedCrls::want`]), bounded in number; a fetcher (I/O lives
//! elsewhere) downloads, verifies and [`install`](FetchedCrls::install)s them, and the next
//! trust state built includes them in its CRL index, exactly like CRL files.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};

use rustls_pki_types::CertificateRevocationListDer;
use time::OffsetDateTime;

/// One installed CRL.
struct Installed {
    der: CertificateRevocationListDer<'static>,
    version: crate::CrlVersion,
    refresh_at: OffsetDateTime,
}

/// Distribution points wanted and the CRLs fetched from them.
pub struct FetchedCrls {
    installed: RwLock<HashMap<String, Installed>>,
    wanted: Mutex<HashSet<String>>,
    /// Failed URLs are not asked again before then.
    retry_at: Mutex<HashMap<String, OffsetDateTime>>,
    max_urls: usize,
}

impl std::fmt::Debug for FetchedCrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchedCrls")
            .field("wanted", &self.wanted.lock().map(|w| w.len()).unwrap_or(0))
            .finish_non_exhaustive()
    }
}

impl FetchedCrls {
    /// Follows at most `max_urls` distribution points.
    pub fn new(max_urls: usize) -> Self {
        FetchedCrls {
            installed: RwLock::new(HashMap::new()),
            wanted: Mutex::new(HashSet::new()),
            retry_at: Mutex::new(HashMap::new()),
            max_urls,
        }
    }

    /// Asks for the CRLs at `uris` (`http://` only; beyond the bound, ignored).
    pub fn want<'a>(&self, uris: impl IntoIterator<Item = &'a String>) {
        if let Ok(mut w) = self.wanted.lock() {
            for u in uris {
                if w.len() >= self.max_urls {
                    break;
                }
                if u.starts_with("http://") && !w.contains(u) {
                    w.insert(u.clone());
                }
            }
        }
    }

    /// The URLs to fetch at `now`: wanted and never fetched, or due for a refresh, and not in
    /// their pause after a failure.
    pub fn due(&self, now: OffsetDateTime) -> Vec<String> {
        let wanted: Vec<String> = match self.wanted.lock() {
            Ok(w) => w.iter().cloned().collect(),
            Err(_) => return Vec::new(),
        };
        let installed = self.installed.read().ok();
        let retry = self.retry_at.lock().ok();
        wanted
            .into_iter()
            .filter(|u| {
                installed
                    .as_ref()
                    .and_then(|i| i.get(u))
                    .is_none_or(|i| now >= i.refresh_at)
            })
            .filter(|u| {
                retry
                    .as_ref()
                    .and_then(|r| r.get(u))
                    .is_none_or(|t| now >= *t)
            })
            .collect()
    }

    /// Records a failed fetch of `url`: not asked again before `until`.
    pub fn failed(&self, url: &str, until: OffsetDateTime) {
        if let Ok(mut r) = self.retry_at.lock() {
            r.insert(url.to_string(), until);
        }
    }

    /// Installs the verified CRL `der` from `url` (of `version`), refreshed from `refresh_at`
    /// on. A CRL older than the installed one (a replay) is refused here already; the next
    /// trust state would refuse it too ([`crate::TrustState::check_not_older_than`]). Returns
    /// whether anything changed.
    pub fn install(
        &self,
        url: &str,
        der: CertificateRevocationListDer<'static>,
        version: crate::CrlVersion,
        refresh_at: OffsetDateTime,
    ) -> Result<bool, String> {
        let Ok(mut installed) = self.installed.write() else {
            return Err("internal error".into());
        };
        if let Some(old) = installed.get_mut(url) {
            if version < old.version {
                return Err(format!(
                    "{url}: older than the installed CRL ({version} < {}): a replay?",
                    old.version
                ));
            }
            if old.der.as_ref() == der.as_ref() {
                old.refresh_at = refresh_at;
                return Ok(false);
            }
        }
        installed.insert(
            url.to_string(),
            Installed {
                der,
                version,
                refresh_at,
            },
        );
        if let Ok(mut r) = self.retry_at.lock() {
            r.remove(url);
        }
        Ok(true)
    }

    /// Every installed CRL.
    pub fn crls(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.installed
            .read()
            .map(|i| i.values().map(|c| c.der.clone()).collect())
            .unwrap_or_default()
    }

    /// Number of distribution points wanted and of CRLs installed.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.wanted.lock().map(|w| w.len()).unwrap_or(0),
            self.installed.read().map(|i| i.len()).unwrap_or(0),
        )
    }
}
