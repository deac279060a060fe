//! The root's CRL, as the offline root signed it (`mtls ca root-crl`), published beside the
//! CA's own: `GET /v1/root-crl` (DER) and `/v1/root-crl.pem`. The CA cannot sign it (the root
//! key is offline); it serves the file, read again whenever it changes, and only as long as it
//! is a CRL of the CA's root (signature checked) that does not go back in number: a file
//! replaced by something else keeps the last good CRL published, as a reload keeps the last
//! good state. Verifiers then fetch it like any distribution point (`[[listener.crl_fetch]]`),
//! so an intermediate the root revoked is refused within one fetch, without files to copy.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mtls_tls::FileStamps;
use mtls_verify::TrustState;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

/// Largest root CRL file read (a root revokes a handful of intermediates).
const MAX_BYTES: u64 = 1024 * 1024;

/// The root's CRL as served.
#[derive(Debug)]
pub struct PublishedRootCrl {
    pub der: bytes::Bytes,
    pub pem: bytes::Bytes,
    pub this_update: OffsetDateTime,
    pub next_update: Option<OffsetDateTime>,
}

struct Loaded {
    /// The file as last looked at (good or not: a bad file is reported once, not per request).
    stamps: FileStamps,
    /// What is served for it: the CRL it holds, the last good one when it holds none usable,
    /// or why there is none.
    served: Result<Arc<PublishedRootCrl>, Unavailable>,
    /// The verified state of the last good CRL, kept after a removal too: a CRL numbered
    /// lower is refused after it (a replay).
    highest: Option<Arc<TrustState>>,
}

/// The file the root's CRL is published from (see the module documentation).
pub(crate) struct RootCrl {
    path: Option<PathBuf>,
    root: CertificateDer<'static>,
    loaded: Mutex<Option<Loaded>>,
}

/// Why there is nothing to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// No file is configured, or there is none (yet).
    NotPublished,
    /// The file is not a usable CRL of the root and no good one was published before.
    Invalid(String),
}

impl RootCrl {
    pub(crate) fn new(path: Option<PathBuf>, root: CertificateDer<'static>) -> Self {
        RootCrl {
            path,
            root,
            loaded: Mutex::new(None),
        }
    }

    /// The CRL to serve now.
    pub(crate) fn current(&self) -> Result<Arc<PublishedRootCrl>, Unavailable> {
        let Some(path) = &self.path else {
            return Err(Unavailable::NotPublished);
        };
        let stamps = FileStamps::of(std::slice::from_ref(path));
        let mut loaded = self
            .loaded
            .lock()
            .map_err(|_| Unavailable::Invalid("poisoned".into()))?;
        if let Some(l) = loaded.as_ref().filter(|l| l.stamps == stamps) {
            return l.served.clone();
        }
        let (kept, highest) = loaded
            .take()
            .map_or((None, None), |l| (l.served.ok(), l.highest));
        let (served, highest) = if !path.exists() {
            // Removed: nothing is published any more.
            (Err(Unavailable::NotPublished), highest)
        } else {
            match self.read(path, highest.as_deref()) {
                Ok((crl, state)) => {
                    tracing::info!(file = %path.display(), "root CRL published");
                    (Ok(crl), Some(Arc::new(state)))
                }
                Err(why) => {
                    tracing::error!(file = %path.display(), error = %why, kept_previous = kept.is_some(), "root CRL not published");
                    (kept.ok_or(Unavailable::Invalid(why)), highest)
                }
            }
        };
        *loaded = Some(Loaded {
            stamps,
            served: served.clone(),
            highest,
        });
        served
    }

    fn read(
        &self,
        path: &std::path::Path,
        previous: Option<&TrustState>,
    ) -> Result<(Arc<PublishedRootCrl>, TrustState), String> {
        use std::io::Read;
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|e| e.to_string())?;
        if bytes.len() as u64 > MAX_BYTES {
            return Err(format!("larger than {MAX_BYTES} bytes"));
        }
        let crls = mtls_pki::pem_io::crls(&bytes).map_err(|e| e.to_string())?;
        let [crl] = crls.as_slice() else {
            return Err(format!("holds {} CRLs, not one", crls.len()));
        };
        // Signed by the root (checked as every verifier checks it when loading it).
        let state = TrustState::new(
            0,
            vec![self.root.clone()],
            std::slice::from_ref(crl),
            Default::default(),
        )
        .map_err(|e| format!("not a CRL of this CA's root: {e}"))?;
        if let Some(previous) = previous {
            state
                .check_not_older_than(previous)
                .map_err(|e| e.to_string())?;
        }
        let parsed = mtls_pki::revocation::parse_crl(crl).map_err(|e| e.to_string())?;
        let published = PublishedRootCrl {
            der: bytes::Bytes::copy_from_slice(crl),
            pem: mtls_pki::pem_io::encode("X509 CRL", crl).into(),
            this_update: parsed.last_update().to_datetime(),
            next_update: parsed.next_update().map(|t| t.to_datetime()),
        };
        Ok((Arc::new(published), state))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mtls_pki::revocation::{build_crl, RevokedEntry};

    /// Served while it is a CRL of the root; a file replaced by a lower number, another CA's
    /// CRL or garbage keeps the last good one; none before a good one is invalid; removed, it
    /// is no longer published.
    #[test]
    fn serves_the_roots_crl_and_keeps_the_last_good_one() {
        let pki = mtls_test_util::TestPki::new("root-crl");
        let other = mtls_test_util::TestPki::new("other");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root-crl.pem");
        let now = OffsetDateTime::now_utc();
        let crl = |ca: &mtls_pki::CaCert, number: u64, listed: &[RevokedEntry]| {
            mtls_pki::pem_io::encode(
                "X509 CRL",
                &build_crl(ca, number, now, time::Duration::days(30), listed).unwrap(),
            )
        };
        let write = |text: &str| {
            // A new inode each time, as an atomic replacement makes.
            let tmp = dir.path().join("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        };
        let served = RootCrl::new(Some(path.clone()), pki.root_der());
        assert_eq!(
            RootCrl::new(None, pki.root_der()).current().unwrap_err(),
            Unavailable::NotPublished
        );
        assert_eq!(served.current().unwrap_err(), Unavailable::NotPublished);

        write("not a CRL");
        assert!(matches!(
            served.current().unwrap_err(),
            Unavailable::Invalid(_)
        ));
        write(&crl(&other.root, 1, &[]));
        let Err(Unavailable::Invalid(why)) = served.current() else {
            panic!("another CA's CRL served");
        };
        assert!(why.contains("root"), "{why}");

        write(&crl(&pki.root, 2, &[]));
        let two = served.current().unwrap();
        assert_eq!(
            mtls_pki::revocation::parse_crl(&two.der)
                .unwrap()
                .crl_number()
                .map(|n| n.to_string()),
            Some("2".into())
        );
        for bad in [
            crl(&pki.root, 1, &[]),
            crl(&other.root, 3, &[]),
            "garbage".to_string(),
        ] {
            write(&bad);
            assert_eq!(served.current().unwrap().der, two.der, "kept");
        }
        write(&crl(&pki.root, 3, &[]));
        assert_ne!(served.current().unwrap().der, two.der);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(served.current().unwrap_err(), Unavailable::NotPublished);
        assert_eq!(served.current().unwrap_err(), Unavailable::NotPublished);
        // Put back with a lower number: a replay, refused although nothing was served since.
        write(&crl(&pki.root, 2, &[]));
        assert!(matches!(
            served.current().unwrap_err(),
            Unavailable::Invalid(_)
        ));
    }
}
