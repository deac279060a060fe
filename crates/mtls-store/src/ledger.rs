//! What this CA has published, kept beside its keys and outside the database: the highest CRL
//! number per issuer, the last CRL itself, and the highest revocation epoch. A database
//! restored from an older backup is behind this record; the CA then refuses to publish (a CRL
//! number going backwards, revocations forgotten) until [`crate::Store::reconcile`] re-applies
//! what the last CRL listed.
//!
//! Writes are atomic (temporary file, fsync, rename) and serialised by an exclusive lock on
//! `<dir>/.lock`, so several processes on one host (`mtls crl` next to `mtls ca serve`) never
//! lose each other's marks; every mark only ever grows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The published-state record of one CA (a directory, usually `<pki>/ledger`).
#[derive(Clone, Debug)]
pub struct Ledger {
    dir: PathBuf,
}

/// The marks the database must not be behind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks {
    /// Highest CRL number published, by issuer key (SHA-256 of the SPKI, hex).
    #[serde(default)]
    pub crl_numbers: BTreeMap<String, u64>,
    /// Highest revocation epoch (feed sequence number) this CA has seen committed.
    #[serde(default)]
    pub revocation_epoch: i64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Ledger {
        path: path.to_path_buf(),
        detail: source.to_string(),
    }
}

impl Ledger {
    /// The ledger in `dir` (created on the first record).
    pub fn new(dir: impl Into<PathBuf>) -> Ledger {
        Ledger { dir: dir.into() }
    }

    fn marks_path(&self) -> PathBuf {
        self.dir.join("published.json")
    }

    fn crl_path(&self, issuer_key: &str) -> PathBuf {
        self.dir.join(format!("crl-{issuer_key}.der"))
    }

    /// The recorded marks (none yet: all zero).
    pub fn marks(&self) -> Result<Marks> {
        let path = self.marks_path();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Ledger {
                path,
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Marks::default()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Reads the marks, lets `f` change them (or refuse), writes them back: all under the
    /// ledger's lock (released when the lock file closes).
    fn update(&self, f: impl FnOnce(&mut Marks) -> Result<()>) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let lock_path = self.dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        let mut marks = self.marks()?;
        let before = marks.clone();
        f(&mut marks)?;
        if marks == before {
            return Ok(());
        }
        let path = self.marks_path();
        let text = serde_json::to_vec_pretty(&marks).map_err(|e| Error::Ledger {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        self.write(&path, &text)
    }

    fn write(&self, path: &Path, data: &[u8]) -> Result<()> {
        mtls_pki::files::write_atomic(path, data, mtls_pki::files::Visibility::Public, true)
            .map_err(|e| Error::Ledger {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })
    }

    /// A CRL numbered `number` was signed: keep it and raise the issuer's mark. A number at or
    /// below the mark is refused (the CRL must not be published): either the database went
    /// back in time under a running CA, or another process sharing this ledger recorded a
    /// later CRL first ([`crate::Store::sign_crl`] tells the two apart and builds a fresh CRL
    /// in the second case).
    pub fn record_crl(&self, issuer_key: &str, number: u64, der: &[u8]) -> Result<()> {
        self.update(|m| {
            let mark = m.crl_numbers.entry(issuer_key.to_string()).or_default();
            if *mark >= number {
                return Err(Error::RolledBack {
                    detail: format!(
                        "CRL number {mark} was published, the database allocated {number}"
                    ),
                });
            }
            // The CRL first: a mark never names a CRL that is not kept.
            self.write(&self.crl_path(issuer_key), der)?;
            *mark = number;
            Ok(())
        })
    }

    /// Revocations were committed up to `epoch`.
    pub fn record_epoch(&self, epoch: i64) -> Result<()> {
        self.update(|m| {
            m.revocation_epoch = m.revocation_epoch.max(epoch);
            Ok(())
        })
    }

    /// The last CRL recorded for `issuer_key`.
    pub fn last_crl(&self, issuer_key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.crl_path(issuer_key);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }
}
