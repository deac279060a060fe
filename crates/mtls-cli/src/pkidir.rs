//! The PKI directory layout and loading of the issuing CA.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mtls_pki::{files, CaCert, PrivateKey};

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

    /// Opens the inventory, failing with a hint when the PKI was never initialised.
    pub fn open_inventory(&self) -> Result<mtls_store::Inventory> {
        if !self.intermediate_cert().exists() {
            anyhow::bail!(
                "no CA in {} (run `mtls ca init` first, or pass --pki DIR / set MTLS_PKI_DIR)",
                self.dir.display()
            );
        }
        Ok(mtls_store::Inventory::open(&self.inventory())?)
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

/// Loads a CA certificate and its (possibly encrypted) key.
pub fn load_ca(cert: &Path, key: &Path, passphrase: &Source<'_>) -> Result<CaCert> {
    if !cert.exists() {
        anyhow::bail!(
            "{} does not exist (run `mtls ca init` first?)",
            cert.display()
        );
    }
    let cert_bytes = files::read_public(cert)?;
    let key = load_key(key, passphrase)?;
    CaCert::from_pem(&cert_bytes, key).with_context(|| format!("loading CA {}", cert.display()))
}

/// Loads a private key, asking for a passphrase only if it is encrypted.
pub fn load_key(path: &Path, passphrase: &Source<'_>) -> Result<PrivateKey> {
    let bytes = files::read_secret(path)?;
    let pass = if mtls_pki::key::is_encrypted(&bytes) {
        passphrase.unlock()?
    } else {
        None
    };
    PrivateKey::from_pem_or_der(&bytes, pass.as_deref().map(|p| p.as_slice()))
        .with_context(|| format!("loading private key {}", path.display()))
}
