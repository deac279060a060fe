//! PKCS#12 export (key + chain) for browsers, Java keystores and Windows.
//!
//! Written with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) and an HMAC-SHA256 MAC, the OpenSSL 3
//! defaults, so `openssl pkcs12` reads it without `-legacy`.

use rustls_pki_types::CertificateDer;

use crate::{Error, PrivateKey, Result};

/// Key-derivation iterations for the PKCS#12 encryption and MAC (OpenSSL 3 uses 2048; more is
/// better against offline guessing and still fast).
pub const PKCS12_ITERATIONS: u32 = 100_000;

/// Builds a PKCS#12 file holding `key` and `chain` (leaf first) under `password`.
pub fn export(
    key: &PrivateKey,
    chain: &[CertificateDer<'_>],
    password: &str,
    friendly_name: &str,
) -> Result<Vec<u8>> {
    let leaf = chain.first().ok_or(Error::NotFound {
        what: "certificate",
    })?;
    let leaf_parsed = crate::pem_io::parse_certificate(leaf)?;
    if !key.matches_spki(leaf_parsed.public_key().raw) {
        return Err(Error::KeyMismatch);
    }
    if password.is_empty() {
        return Err(Error::Pkcs12(
            "refusing to write a PKCS#12 file with an empty password".into(),
        ));
    }
    let p12_err = |e: p12_keystore::error::Error| Error::Pkcs12(e.to_string());
    let certs = chain
        .iter()
        .map(|c| p12_keystore::Certificate::from_der(c).map_err(p12_err))
        .collect::<Result<Vec<_>>>()?;
    let p12_key = p12_keystore::PrivateKey::from_der(key.pkcs8_der()).map_err(p12_err)?;
    // The local key ID ties the key bag to its certificate: use the SHA-256 of the leaf.
    let key_id = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf)
        .as_ref()
        .to_vec();
    let entry = p12_keystore::PrivateKeyChain::new(key_id, p12_key, certs);
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(
        friendly_name,
        p12_keystore::KeyStoreEntry::PrivateKeyChain(entry),
    );
    store
        .writer(password)
        .encryption_algorithm(p12_keystore::EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .encryption_iterations(PKCS12_ITERATIONS)
        .mac_algorithm(p12_keystore::MacAlgorithm::HmacSha256)
        .mac_iterations(PKCS12_ITERATIONS)
        .write()
        .map_err(p12_err)
}
