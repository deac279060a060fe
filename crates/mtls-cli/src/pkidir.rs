//! The PKI directory layout and loading of the issuing CA.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use mtls_pki::revocation::RevocationReason;
use mtls_pki::{files, CaCert, PrivateKey, Serial};
use mtls_store::{CertificateRecord, ListFilter, Location, Store};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::secrets::Source;

/// Files in a PKI directory.
pub struct PkiDir {
    pub dir: PathBuf,
}

impl PkiDir {
    pub fn new(dir: &Path) -> Self {
        PkiDir {
            dir: dir.to_path_buf(),
        }
    }
    pub fn root_cert(&self) -> PathBuf {
        self.dir.join("root.crt")
    }
    /// The root's CRL (`mtls ca root-crl`), which `mtls ca serve` publishes.
    pub fn root_crl(&self) -> PathBuf {
        self.dir.join("root-crl.pem")
    }
    pub fn root_key(&self) -> PathBuf {
        self.dir.join("root.key")
    }
    pub fn intermediate_cert(&self) -> PathBuf {
        self.dir.join("intermediate.crt")
    }
    pub fn intermediate_key(&self) -> PathBuf {
        self.dir.join("intermediate.key")
    }
    /// Intermediate + root, for verifiers that want the whole CA chain in one file.
    pub fn ca_chain(&self) -> PathBuf {
        self.dir.join("ca-chain.pem")
    }
    pub fn inventory(&self) -> PathBuf {
        self.dir.join("inventory.db")
    }
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }
    pub fn issued(&self) -> PathBuf {
        self.dir.join("issued")
    }
    /// What this CA published (CRL numbers, the last CRL, the revocation epoch), kept outside
    /// the database to detect a restored older backup.
    pub fn ledger(&self) -> mtls_store::Ledger {
        mtls_store::Ledger::new(self.dir.join("ledger"))
    }

    /// Where the inventory is: `--database` / `MTLS_DATABASE` (a PostgreSQL URL shared with
    /// online CA instances, or a path), else `configured` (the CA's configuration file), else
    /// `inventory.db` in the PKI directory, which must then hold a CA.
    pub fn location_or(&self, configured: Option<&str>) -> Result<Location> {
        let global = DATABASE.get().and_then(|d| d.url.as_deref());
        match global.or(configured) {
            Some(d) => Ok(d
                .parse()
                .map_err(|e: mtls_store::Error| crate::UsageError(e.to_string()))?),
            None => {
                self.require_ca()?;
                Ok(Location::Sqlite(self.inventory()))
            }
        }
    }

    /// Fails with a hint when the PKI was never initialised.
    pub fn require_ca(&self) -> Result<()> {
        if !self.intermediate_cert().exists() {
            anyhow::bail!(
                "no CA in {} (run `mtls ca init` first, or pass --pki DIR / set MTLS_PKI_DIR)",
                self.dir.display()
            );
        }
        Ok(())
    }

    /// Opens the inventory, failing with a hint when the PKI was never initialised.
    pub fn open_inventory(&self) -> Result<Inventory> {
        let inv = self.open_inventory_unchecked()?;
        inv.rt.block_on(inv.store.check_published())?;
        Ok(inv)
    }

    /// The inventory without checking it against what this CA published (for `ca reconcile`).
    pub fn open_inventory_unchecked(&self) -> Result<Inventory> {
        self.require_ca()?;
        let location = self.location_or(None)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let store = rt
            .block_on(Store::open_with(&location, pg_tls()?))
            .context("opening the inventory")?
            .with_ledger_unchecked(self.ledger());
        Ok(Inventory { rt, store })
    }

    /// The certificate of the intermediate CA that signs leaves (no key).
    pub fn issuer_cert(&self) -> Result<CertificateDer<'static>> {
        self.require_ca()?;
        first_certificate(&self.intermediate_cert())
    }

    /// The root CA's certificate.
    pub fn root_cert_der(&self) -> Result<CertificateDer<'static>> {
        first_certificate(&self.root_cert())
    }

    /// Loads the intermediate CA that signs leaves and CRLs.
    pub fn load_issuer(&self, passphrase: &Source<'_>) -> Result<CaCert> {
        load_ca(
            &self.intermediate_cert(),
            &self.intermediate_key(),
            passphrase,
        )
    }
}

/// The first certificate of a PEM or DER file.
fn first_certificate(path: &Path) -> Result<CertificateDer<'static>> {
    let bytes = files::read_public(path)?;
    mtls_pki::pem_io::certificates(&bytes)
        .with_context(|| path.display().to_string())?
        .into_iter()
        .next()
        .with_context(|| format!("{} holds no certificate", path.display()))
}

/// Loads a CA certificate and its (possibly encrypted) key.
pub fn load_ca(cert: &Path, key: &Path, passphrase: &Source<'_>) -> Result<CaCert> {
    if !cert.exists() {
        return Err(crate::UsageError(format!(
            "{} does not exist (run `mtls ca init` first?)",
            cert.display()
        ))
        .into());
    }
    let cert_bytes = files::read_public(cert)?;
    let key = load_key(key, passphrase)?;
    CaCert::from_pem(&cert_bytes, key).with_context(|| format!("loading CA {}", cert.display()))
}

/// Loads a private key, asking for a passphrase only if it is encrypted.
pub fn load_key(path: &Path, passphrase: &Source<'_>) -> Result<PrivateKey> {
    let bytes = files::read_secret(path)?;
    let pass = if mtls_pki::key::is_encrypted(&bytes) {
        Some(
            passphrase
                .unlock()
                .with_context(|| format!("{} is encrypted", path.display()))?,
        )
    } else {
        None
    };
    PrivateKey::from_pem_or_der(&bytes, pass.as_deref().map(|p| p.as_slice()))
        .with_context(|| format!("loading private key {}", path.display()))
}

/// The global `--database*` options.
#[derive(Clone, Debug, Default)]
pub struct Database {
    pub url: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Set once by `main`.
pub static DATABASE: OnceLock<Database> = OnceLock::new();

/// TLS for the PostgreSQL connection, when `--database-ca` is given.
pub fn pg_tls() -> Result<Option<mtls_store::PgTls>> {
    let Some(db) = DATABASE.get() else {
        return Ok(None);
    };
    let Some(ca) = &db.ca else { return Ok(None) };
    let roots = mtls_pki::pem_io::certificates(&files::read_public(ca)?)
        .with_context(|| format!("reading {}", ca.display()))?;
    let credential = match (&db.cert, &db.key) {
        (Some(c), Some(k)) => Some(mtls_tls::load_credential(
            c,
            k,
            None,
            OffsetDateTime::now_utc(),
        )?),
        (None, None) => None,
        _ => anyhow::bail!("--database-cert and --database-key go together"),
    };
    let config = mtls_tls::client_config(&roots, credential.as_ref(), &[])?;
    Ok(Some(mtls_store::PgTls::new(std::sync::Arc::new(config))))
}

/// The inventory for the synchronous commands: the same [`Store`] the online CA uses, so an
/// offline `mtls issue` or `mtls revoke` lands in the shared PostgreSQL inventory too.
pub struct Inventory {
    rt: tokio::runtime::Runtime,
    store: Store,
}

impl Inventory {
    pub fn list(&self, filter: &ListFilter, at: OffsetDateTime) -> Result<Vec<CertificateRecord>> {
        Ok(self.rt.block_on(self.store.list(filter, at))?)
    }
    pub fn get(&self, serial: &Serial, at: OffsetDateTime) -> Result<Option<CertificateRecord>> {
        Ok(self.rt.block_on(self.store.get(serial, at))?)
    }
    pub fn revoke(
        &mut self,
        serial: &Serial,
        reason: Option<RevocationReason>,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<mtls_store::Revocation> {
        Ok(self
            .rt
            .block_on(self.store.revoke(serial, None, reason, actor, now))?)
    }
    pub fn reconcile(&mut self, now: OffsetDateTime) -> Result<mtls_store::Reconciled> {
        Ok(self.rt.block_on(self.store.reconcile("cli", now))?)
    }
    pub fn check_published(&self) -> Result<()> {
        Ok(self.rt.block_on(self.store.check_published())?)
    }
    pub fn sign_crl(
        &mut self,
        issuer: &mtls_pki::CaCert,
        at: OffsetDateTime,
        lifetime: time::Duration,
    ) -> Result<mtls_store::SignedCrl> {
        Ok(self
            .rt
            .block_on(self.store.sign_crl(issuer, "cli", at, lifetime))?)
    }
    pub fn record_issued(
        &mut self,
        cert: mtls_store::CertificateToRecord,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<(), mtls_store::Error> {
        self.rt.block_on(
            self.store
                .record_issued(cert, mtls_store::IssueKind::Direct, actor, now),
        )
    }
}
