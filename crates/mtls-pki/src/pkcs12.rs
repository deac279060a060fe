//! PKCS#12 export (key + chain) for browsers, Java keystores and Windows.
//!
//! Two profiles, chosen by name ([`Pkcs12Profile`]); both protect the file with
//! [`PKCS12_ITERATIONS`] key-derivation iterations and refuse an empty password:
//!
//! | | [`Modern`](Pkcs12Profile::Modern) (default) | [`Compat`](Pkcs12Profile::Compat) |
//! |---|---|---|
//! | key bag | PBES2: PBKDF2-HMAC-SHA256, AES-256-CBC | `pbeWithSHAAnd3-KeyTripleDES-CBC` (1.2.840.113549.1.12.1.3) |
//! | certificate bags | PBES2: PBKDF2-HMAC-SHA256, AES-256-CBC | `pbeWithSHAAnd3-KeyTripleDES-CBC` |
//! | integrity | HMAC-SHA256 MAC | HMAC-SHA1 MAC (PKCS#12 key derivation) |
//!
//! `Modern` is what OpenSSL 3 writes by default: `openssl pkcs12` reads it without `-legacy`,
//! and so do NSS (Firefox, Chrome on Linux), current Windows and Java 11+. `Compat` is the
//! RFC 7292 appendix C suite that macOS Keychain and Windows before 10 version 1709 (Server
//! 2016 and older) require. It encrypts the certificates with 3DES rather than the 40-bit RC2 that
//! `openssl pkcs12 -legacy` uses for them: every platform that takes the legacy suite takes
//! 3DES for certificates too, RC2-40 offers no protection at all, and OpenSSL 3 reads 3DES
//! without loading its legacy provider.

use rustls_pki_types::CertificateDer;

use crate::{Error, PrivateKey, Result};

/// Key-derivation iterations for the PKCS#12 encryption and MAC, in both profiles (OpenSSL 3
/// uses 2048; more is better against offline guessing and still fast). Java's keytool wrote
/// its legacy-algorithm files with 50,000 (encryption) and 100,000 (MAC) for years, and those
/// import on macOS and Windows.
pub const PKCS12_ITERATIONS: u32 = 100_000;

/// Which algorithms a PKCS#12 file is written with (see the [module](self) documentation for
/// the exact list).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Pkcs12Profile {
    /// AES-256-CBC with PBKDF2-HMAC-SHA256 for key and certificates, HMAC-SHA256 MAC: the
    /// OpenSSL 3 default, read by NSS, current Windows and Java 11+. The default.
    #[default]
    Modern,
    /// 3DES (`pbeWithSHAAnd3-KeyTripleDES-CBC`) for key and certificates, HMAC-SHA1 MAC: for
    /// macOS Keychain and older Windows, which cannot read the modern suite. Weaker
    /// algorithms, same iteration count; use it only where the importer requires it.
    Compat,
}

impl Pkcs12Profile {
    fn encryption(self) -> p12_keystore::EncryptionAlgorithm {
        match self {
            Pkcs12Profile::Modern => p12_keystore::EncryptionAlgorithm::PbeWithHmacSha256AndAes256,
            Pkcs12Profile::Compat => {
                p12_keystore::EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc
            }
        }
    }

    fn mac(self) -> p12_keystore::MacAlgorithm {
        match self {
            Pkcs12Profile::Modern => p12_keystore::MacAlgorithm::HmacSha256,
            Pkcs12Profile::Compat => p12_keystore::MacAlgorithm::HmacSha1,
        }
    }
}

/// Builds a PKCS#12 file holding `key` and `chain` (leaf first) under `password`, with the
/// algorithms of `profile`.
pub fn export(
    key: &PrivateKey,
    chain: &[CertificateDer<'_>],
    password: &str,
    friendly_name: &str,
    profile: Pkcs12Profile,
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
    // p12-keystore 0.4 keeps its own copy of the key: `PrivateKey::from_der` copies the PKCS#8
    // DER into a plain `Vec` (a private field, no `Zeroize`, no wiping `Drop`), which is freed
    // unwiped when `store` is dropped at the end of this function; nothing outside the crate
    // can reach it to wipe it. So it gets the key borrowed (no copy of ours in between), makes
    // that one copy, and the store lives no longer than this call. Encrypting the key bag
    // copies the key again inside `pkcs5` (Modern) or `cbc` (Compat), but into buffers that
    // end up holding the ciphertext. Not ours to wipe either: the 3DES key and IV that
    // p12-keystore derives from `password` for the Compat profile (plain `Vec`s).
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
        .encryption_algorithm(profile.encryption())
        .encryption_iterations(PKCS12_ITERATIONS)
        .mac_algorithm(profile.mac())
        .mac_iterations(PKCS12_ITERATIONS)
        .write()
        .map_err(p12_err)
}
