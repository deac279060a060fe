//! Loading trust material from files, and noticing when those files change.
//!
//! [`FileStamps`] is the change detector every reloader uses (servers poll it, clients check it
//! before each new connection). It follows symlinks, so a Kubernetes secret update (a swap of
//! the `..data` symlink) is seen like an in-place rewrite.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::{Error, Result};

/// What a set of files looks like now: modification time, size and inode of each target
/// (`None` for a file that cannot be read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStamps(Vec<Option<(SystemTime, u64, u64)>>);

impl FileStamps {
    /// Stamps that match no set of files (but an empty one): compared with them, any
    /// watched file counts as changed.
    pub fn unknown() -> Self {
        FileStamps(Vec::new())
    }

    pub fn of(paths: &[PathBuf]) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamps(
            paths
                .iter()
                .map(|p| {
                    std::fs::metadata(p).ok().map(|m| {
                        (
                            m.modified().unwrap_or(std::time::UNIX_EPOCH),
                            m.len(),
                            m.ino(),
                        )
                    })
                })
                .collect(),
        )
    }
}

fn credential_error(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::Credential {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// Every certificate in the PEM or DER files `paths` (CA bundles), in order.
pub fn load_certificates(paths: &[PathBuf]) -> Result<Vec<CertificateDer<'static>>> {
    let mut out = Vec::new();
    for p in paths {
        let bytes = mtls_pki::files::read_public(p)?;
        out.extend(mtls_pki::pem_io::certificates(&bytes).map_err(|e| credential_error(p, e))?);
    }
    Ok(out)
}

/// Every CRL in the PEM or DER files `paths`, in order.
pub fn load_crls(paths: &[PathBuf]) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let mut out = Vec::new();
    for p in paths {
        let bytes = match std::fs::read(p) {
            Ok(b) => b,
            // A new PKI has no CRL yet: say how to make one.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(credential_error(
                p,
                "no such file (write the CRL with `mtls crl`, or give no CRL until there is one)",
            )),
            Err(e) => return Err(credential_error(p, e)),
        };
        out.extend(mtls_pki::pem_io::crls(&bytes).map_err(|e| credential_error(p, e))?);
    }
    Ok(out)
}
