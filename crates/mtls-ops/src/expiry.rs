//! What `mtls monitor` exports: expiry and renewal state of certificate files, freshness of
//! CRL files, and how much of the CA inventory expires soon — as Prometheus families of the
//! project's one metrics page ([`mtls_serve::metrics`]).
//!
//! Alerting is meant to be on *renewal overdue* (the renewal point of
//! [`mtls_client::renewal::due_at`] passed a tenth of the lifetime ago and the file was not
//! replaced), not on raw days left: a 24-hour certificate renewed every 16 hours must not page
//! anyone, a 90-day one that missed its renewal by a week must.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mtls_serve::metrics::{Kind, Labels, Registry, Scraped, Unit};
use time::OffsetDateTime;

/// One certificate file's reading.
#[derive(Clone, Debug, PartialEq)]
pub struct CertReading {
    pub file: PathBuf,
    pub subject: String,
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// When the renewal daemon renews it: as the daemon recorded next to the file, else with
    /// the default threshold.
    pub renewal_due: OffsetDateTime,
    /// The renewal point passed more than a tenth of the lifetime ago.
    pub renewal_overdue: bool,
    /// What the renewal daemon (or `mtls renew`) recorded next to the file.
    pub renewal: Option<mtls_client::renewal::RenewalRecord>,
}

/// One CRL file's reading.
#[derive(Clone, Debug, PartialEq)]
pub struct CrlReading {
    pub file: PathBuf,
    pub issuer: String,
    pub next_update: Option<OffsetDateTime>,
    pub stale: bool,
}

/// A watched file and, when it could not be read or parsed, why.
#[derive(Clone, Debug, PartialEq)]
pub struct FileReading {
    pub file: PathBuf,
    pub error: Option<String>,
}

/// The readings of the watched files at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Readings {
    pub certs: Vec<CertReading>,
    pub crls: Vec<CrlReading>,
    /// Every watched file (and unreadable directory), read or not.
    pub files: Vec<FileReading>,
    /// Certificate files named themselves (not found in a directory).
    named: Vec<PathBuf>,
}

impl Readings {
    fn failed(&mut self, file: &Path, error: String) {
        self.files.push(FileReading {
            file: file.to_path_buf(),
            error: Some(error),
        });
    }

    fn read(&mut self, file: &Path) {
        self.files.push(FileReading {
            file: file.to_path_buf(),
            error: None,
        });
    }
}

/// Reads the leaf of certificate file `file` (its contents `bytes`) at `now`.
pub fn read_certificate(
    file: &Path,
    bytes: &[u8],
    now: OffsetDateTime,
) -> Result<CertReading, mtls_pki::Error> {
    let chain = mtls_pki::pem_io::certificates(bytes)?;
    let leaf = chain.first().ok_or(mtls_pki::Error::NotFound {
        what: "certificate",
    })?;
    let c = mtls_pki::pem_io::parse_certificate(leaf)?;
    let not_before = c.validity().not_before.to_datetime();
    let not_after = c.validity().not_after.to_datetime();
    let renewal = mtls_client::renewal::read_record(file);
    let due = renewal
        .as_ref()
        .and_then(|r| r.renew_at(not_after))
        .unwrap_or_else(|| {
            mtls_client::renewal::due_at(
                not_before,
                not_after,
                renewal.as_ref().and_then(|r| r.obtained_at(not_after)),
                mtls_client::renewal::Threshold::default(),
                0.0,
            )
        });
    Ok(CertReading {
        file: file.to_path_buf(),
        subject: c.subject().to_string(),
        serial: mtls_pki::Serial::from_be_bytes(c.raw_serial()).to_string(),
        not_before,
        not_after,
        renewal_due: due,
        renewal_overdue: now > mtls_client::renewal::overdue_after(due, not_before, not_after),
        renewal,
    })
}

/// Reads CRL file `file` (its contents `bytes`) at `now`.
pub fn read_crl(
    file: &Path,
    bytes: &[u8],
    now: OffsetDateTime,
) -> Result<CrlReading, mtls_pki::Error> {
    let crls = mtls_pki::pem_io::crls(bytes)?;
    let der = crls
        .first()
        .ok_or(mtls_pki::Error::NotFound { what: "CRL" })?;
    // Read on every scrape: the fields without the entries.
    let (head, _) = mtls_pki::revocation::without_entries(der.as_ref())?;
    let crl = mtls_pki::revocation::parse_crl(&head)?;
    let next_update = crl.next_update().map(|t| t.to_datetime());
    Ok(CrlReading {
        file: file.to_path_buf(),
        issuer: crl.issuer().to_string(),
        next_update,
        stale: next_update.is_none_or(|n| n < now),
    })
}

/// The readings of the certificate and CRL files under `paths` at `now` (directories walked two
/// levels deep; the CA's ledger, keys and the inventory are skipped; each file read once).
///
/// A file that cannot be read or parsed is a [`FileReading`] with its error, never silence:
/// its series would vanish and the alerts on them resolve. Files named in `paths` are read
/// whatever their name; in directories, `.pem`, `.crt`, `.cer`, `.der` and `.crl` files are,
/// and a PEM file holding neither a certificate nor a CRL (a key, a CSR) is passed over.
/// DER is told apart by parsing, not by the file's name.
pub fn readings(paths: &[PathBuf], now: OffsetDateTime) -> Readings {
    /// Directories already walked (device, inode): a link back up (`s -> .`) would otherwise
    /// multiply the walk by itself at each level.
    type Seen = std::collections::HashSet<(u64, u64)>;
    fn walk(p: &Path, depth: usize, now: OffsetDateTime, out: &mut Readings, seen: &mut Seen) {
        use std::os::unix::fs::MetadataExt;
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) => return out.failed(p, format!("cannot read: {e}")),
        };
        if meta.is_dir() {
            if depth > 2 || p.file_name().is_some_and(|n| n == "ledger") {
                return;
            }
            // Inside a watched directory, a link to a directory is not followed.
            let link =
                depth > 0 && std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
            if link || !seen.insert((meta.dev(), meta.ino())) {
                return;
            }
            let mut entries: Vec<PathBuf> = match std::fs::read_dir(p) {
                Ok(e) => e.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(e) => return out.failed(p, format!("cannot read the directory: {e}")),
            };
            entries.sort();
            for e in entries {
                walk(&e, depth + 1, now, out, seen);
            }
            return;
        }
        let named = depth == 0;
        let ext = p
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if !named && !matches!(ext.as_str(), "pem" | "crt" | "cer" | "der" | "crl") {
            return;
        }
        if !meta.is_file() {
            // A FIFO or a device would block the scrape or never end.
            return out.failed(p, "not a regular file".into());
        }
        if meta.len() > MAX_FILE_BYTES {
            return out.failed(p, format!("larger than {MAX_FILE_BYTES} bytes"));
        }
        // A combined file holds the key next to the chain: wiped when dropped, and searched
        // as bytes (a lossy UTF-8 copy would be a copy left unwiped).
        let bytes = match std::fs::read(p) {
            Ok(b) => mtls_pki::zeroize::Zeroizing::new(b),
            Err(e) => return out.failed(p, format!("cannot read: {e}")),
        };
        let pem = mtls_pki::pem_io::is_pem(&bytes);
        let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        let crl = pem && contains(b"-----BEGIN X509 CRL-----");
        let cert = pem && !crl && contains(b"-----BEGIN CERTIFICATE-----");
        if pem && !crl && !cert {
            if named {
                out.failed(p, "holds neither a certificate nor a CRL".into());
            }
            return;
        }
        if crl {
            match read_crl(p, &bytes, now) {
                Ok(r) => {
                    out.crls.push(r);
                    out.read(p);
                }
                Err(e) => out.failed(p, format!("not a valid CRL: {e}")),
            }
            return;
        }
        match read_certificate(p, &bytes, now) {
            Ok(r) => {
                out.read(p);
                out.certs.push(r);
                if named {
                    out.named.push(p.to_path_buf());
                }
            }
            Err(e) if cert => out.failed(p, format!("not a valid certificate: {e}")),
            // DER: a certificate or else a CRL.
            Err(cert_error) => match read_crl(p, &bytes, now) {
                Ok(r) => {
                    out.crls.push(r);
                    out.read(p);
                }
                Err(_) => out.failed(p, format!("neither a certificate nor a CRL: {cert_error}")),
            },
        }
    }
    let mut out = Readings::default();
    let mut seen = Seen::new();
    for p in paths {
        walk(p, 0, now, &mut out, &mut seen);
    }
    // A chain file and its leaf-only twin (NAME.chain.pem beside NAME.crt, as `mtls issue`
    // writes them) report the same certificate: the twin is kept. Only when it does hold
    // the same certificate (a renewal of one file leaves the other stale: both are then
    // watched) and the chain file was not named itself.
    let twin_of = |r: &CertReading| {
        let name = r.file.to_string_lossy();
        name.strip_suffix(".chain.pem")
            .map(|stem| PathBuf::from(format!("{stem}.crt")))
    };
    let duplicates: Vec<PathBuf> = out
        .certs
        .iter()
        .filter(|r| !out.named.contains(&r.file))
        .filter(|r| {
            twin_of(r).is_some_and(|twin| {
                out.certs
                    .iter()
                    .any(|t| t.file == twin && t.serial == r.serial)
            })
        })
        .map(|r| r.file.clone())
        .collect();
    out.certs.retain(|r| !duplicates.contains(&r.file));
    out
}

/// Largest file read (a CRL of a few million entries).
const MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;

/// Counts from the CA inventory, refreshed by the monitor in the background.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InventoryReading {
    /// Valid (not revoked, not expired) certificates expiring within 7 and 30 days, not
    /// counting those a valid renewal supersedes.
    pub expiring_7d: u64,
    pub expiring_30d: u64,
    /// Certificates by status (`valid`, `expired`, `revoked`).
    pub by_status: Vec<(String, u64)>,
    /// When it was read.
    pub read_at: Option<OffsetDateTime>,
}

/// Reads the inventory counts (counted by the database: the certificates are not read).
pub async fn read_inventory(
    store: &mtls_store::Store,
    now: OffsetDateTime,
) -> Result<InventoryReading, mtls_store::Error> {
    let c = store
        .counts(now, &[time::Duration::days(7), time::Duration::days(30)])
        .await?;
    let window = |i: usize| c.expiring.get(i).copied().unwrap_or(0);
    Ok(InventoryReading {
        expiring_7d: window(0),
        expiring_30d: window(1),
        by_status: vec![
            ("expired".to_string(), c.expired),
            ("revoked".to_string(), c.revoked),
            ("valid".to_string(), c.valid),
        ],
        read_at: Some(now),
    })
}

/// What the monitor watches.
#[derive(Debug, Default)]
pub struct Watched {
    /// Files and directories holding certificates and CRLs (read on every scrape).
    pub paths: Vec<PathBuf>,
    /// The last inventory reading, when `--inventory` is on.
    pub inventory: Mutex<Option<InventoryReading>>,
    /// Whether the inventory is watched (its families are exported even before a reading).
    pub inventory_watched: bool,
}

fn ts(t: OffsetDateTime) -> f64 {
    t.unix_timestamp() as f64
}

fn cert_labels(r: &CertReading) -> Labels {
    vec![
        ("file", r.file.display().to_string()),
        ("subject", r.subject.clone()),
        ("serial", r.serial.clone()),
    ]
}

/// Registers the monitor's families in `registry`.
pub fn register_metrics(registry: &mut Registry, watched: &Arc<Watched>) {
    // One reading of the files serves every family of a scrape (they are asked one after
    // the other): kept for a second.
    type Reading = (std::time::Instant, Arc<Readings>);
    let cache: Arc<Mutex<Option<Reading>>> = Arc::default();
    let read = {
        let w = watched.clone();
        move || -> Arc<Readings> {
            if let Ok(guard) = cache.lock() {
                if let Some((at, r)) = guard.as_ref() {
                    if at.elapsed() < std::time::Duration::from_secs(1) {
                        return r.clone();
                    }
                }
            }
            let r = Arc::new(readings(&w.paths, OffsetDateTime::now_utc()));
            if let Ok(mut guard) = cache.lock() {
                *guard = Some((std::time::Instant::now(), r.clone()));
            }
            r
        }
    };
    let certs = {
        let read = read.clone();
        move || -> Vec<CertReading> { read().certs.clone() }
    };
    let crls = {
        let read = read.clone();
        move || -> Vec<CrlReading> { read().crls.clone() }
    };
    Scraped::register(
        registry,
        "mtls_watched_file_error",
        "1 when a watched file cannot be read or parsed (its other series are missing: alert on this), 0 when it was read",
        None,
        Kind::Gauge,
        move || {
            read()
                .files
                .iter()
                .map(|f| {
                    (
                        vec![("file", f.file.display().to_string())],
                        if f.error.is_some() { 1.0 } else { 0.0 },
                    )
                })
                .collect()
        },
    );
    type Pick = fn(&CertReading) -> f64;
    let cert_series: [(&'static str, &'static str, Option<Unit>, Pick); 4] = [
        (
            "mtls_cert_not_after",
            "notAfter of the certificate in a watched file",
            Some(Unit::Seconds),
            |r| ts(r.not_after),
        ),
        (
            "mtls_cert_not_before",
            "notBefore of the certificate in a watched file",
            Some(Unit::Seconds),
            |r| ts(r.not_before),
        ),
        (
            "mtls_cert_renewal_due",
            "When the renewal daemon renews it (as it recorded next to the file; else at the default threshold, 2/3 of the lifetime)",
            Some(Unit::Seconds),
            |r| ts(r.renewal_due),
        ),
        (
            "mtls_cert_renewal_overdue",
            "1 when the renewal point passed more than a tenth of the lifetime ago and the file was not replaced: alert on this",
            None,
            |r| if r.renewal_overdue { 1.0 } else { 0.0 },
        ),
    ];
    for (name, help, unit, pick) in cert_series {
        let read = certs.clone();
        Scraped::register(registry, name, help, unit, Kind::Gauge, move || {
            read().iter().map(|r| (cert_labels(r), pick(r))).collect()
        });
    }
    type PickRecord = fn(&mtls_client::renewal::RenewalRecord) -> Option<i64>;
    let record_series: [(&'static str, &'static str, PickRecord); 2] = [
        (
            "mtls_cert_renewal_last_success",
            "Last successful renewal of the certificate in a watched file (from its renewal record)",
            |r| r.last_success,
        ),
        (
            "mtls_cert_renewal_last_failure",
            "Last failed renewal attempt of the certificate in a watched file (from its renewal record)",
            |r| r.last_failure,
        ),
    ];
    for (name, help, pick) in record_series {
        let read = certs.clone();
        Scraped::register(
            registry,
            name,
            help,
            Some(Unit::Seconds),
            Kind::Gauge,
            move || {
                read()
                    .iter()
                    .filter_map(|r| {
                        let t = r.renewal.as_ref().and_then(pick)?;
                        Some((cert_labels(r), t as f64))
                    })
                    .collect()
            },
        );
    }
    let read = crls.clone();
    Scraped::register(
        registry,
        "mtls_crl_next_update",
        "nextUpdate of the CRL in a watched file",
        Some(Unit::Seconds),
        Kind::Gauge,
        move || {
            read()
                .iter()
                .filter_map(|r| {
                    r.next_update.map(|n| {
                        (
                            vec![
                                ("file", r.file.display().to_string()),
                                ("issuer", r.issuer.clone()),
                            ],
                            ts(n),
                        )
                    })
                })
                .collect()
        },
    );
    let read = crls;
    Scraped::register(
        registry,
        "mtls_crl_stale",
        "1 when the CRL in a watched file is past its nextUpdate (verifiers refuse its clients)",
        None,
        Kind::Gauge,
        move || {
            read()
                .iter()
                .map(|r| {
                    (
                        vec![
                            ("file", r.file.display().to_string()),
                            ("issuer", r.issuer.clone()),
                        ],
                        if r.stale { 1.0 } else { 0.0 },
                    )
                })
                .collect()
        },
    );
    if watched.inventory_watched {
        let w = watched.clone();
        Scraped::register(
            registry,
            "mtls_inventory_expiring",
            "Valid certificates of the CA inventory expiring within the window",
            None,
            Kind::Gauge,
            move || {
                let Ok(guard) = w.inventory.lock() else {
                    return Vec::new();
                };
                let Some(r) = guard.as_ref() else {
                    return Vec::new();
                };
                vec![
                    (vec![("within", "7d".to_string())], r.expiring_7d as f64),
                    (vec![("within", "30d".to_string())], r.expiring_30d as f64),
                ]
            },
        );
        let w = watched.clone();
        Scraped::register(
            registry,
            "mtls_inventory_certificates",
            "Certificates of the CA inventory by status",
            None,
            Kind::Gauge,
            move || {
                let Ok(guard) = w.inventory.lock() else {
                    return Vec::new();
                };
                guard
                    .as_ref()
                    .map(|r| {
                        r.by_status
                            .iter()
                            .map(|(s, n)| (vec![("status", s.clone())], *n as f64))
                            .collect()
                    })
                    .unwrap_or_default()
            },
        );
        let w = watched.clone();
        Scraped::register(
            registry,
            "mtls_inventory_read",
            "When the inventory was last read",
            Some(Unit::Seconds),
            Kind::Gauge,
            move || {
                w.inventory
                    .lock()
                    .ok()
                    .and_then(|g| g.as_ref().and_then(|r| r.read_at))
                    .map(|t| vec![(Vec::new(), ts(t))])
                    .unwrap_or_default()
            },
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write_cert(path: &Path, der: &[u8]) {
        std::fs::write(path, mtls_pki::pem_io::encode("CERTIFICATE", der)).unwrap();
    }

    fn files(r: &Readings) -> Vec<String> {
        let mut v: Vec<String> = r
            .certs
            .iter()
            .map(|c| {
                c.file
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        v.sort();
        v
    }

    /// NAME.chain.pem beside NAME.crt is left out only when both hold the same certificate and
    /// the chain file was not named: a stale twin (one of the two renewed) leaves both
    /// watched, and a chain file named on the command line is always read.
    #[test]
    fn a_chain_file_is_left_out_only_for_a_twin_with_the_same_certificate() {
        let pki = mtls_test_util::TestPki::new("twins");
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let (a, b) = (pki.client("a"), pki.client("b"));
        write_cert(&dir.path().join("same.crt"), &a.cert.der);
        write_cert(&dir.path().join("same.chain.pem"), &a.cert.der);
        write_cert(&dir.path().join("drift.crt"), &a.cert.der);
        write_cert(&dir.path().join("drift.chain.pem"), &b.cert.der);
        let r = readings(&[dir.path().to_path_buf()], now);
        assert_eq!(
            files(&r),
            vec!["drift.chain.pem", "drift.crt", "same.crt"],
            "{r:?}"
        );
        let named = readings(&[dir.path().join("same.chain.pem")], now);
        assert_eq!(files(&named), vec!["same.chain.pem"]);
    }

    /// Links back up a watched directory (`s -> .`) are not followed: each file is read once
    /// and the walk ends.
    #[test]
    fn directory_links_are_not_followed() {
        let pki = mtls_test_util::TestPki::new("loops");
        let dir = tempfile::tempdir().unwrap();
        write_cert(&dir.path().join("one.crt"), &pki.client("one").cert.der);
        for i in 0..10 {
            std::os::unix::fs::symlink(".", dir.path().join(format!("s{i}"))).unwrap();
        }
        let r = readings(&[dir.path().to_path_buf()], OffsetDateTime::now_utc());
        assert_eq!(files(&r), vec!["one.crt"]);
    }
}
