//! One-time enrollment tokens: `<id>.<secret>`.
//!
//! The id is public and indexes the stored row; only the SHA-256 of the secret is stored, and it
//! is compared in constant time. 256 bits of secret make guessing pointless; the id alone
//! reveals nothing.

use base64::Engine;
use zeroize::Zeroizing;

/// A freshly generated token: `token` is shown once to the operator and never stored.
pub struct GeneratedToken {
    pub id: String,
    pub secret_hash: String,
    pub token: Zeroizing<String>,
}

fn random(n: usize) -> Result<Vec<u8>, mtls_pki::Error> {
    let mut b = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| mtls_pki::Error::Crypto("random token"))?;
    Ok(b)
}

fn hash(secret: &str) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

/// Generates a token from the system CSPRNG.
pub fn generate() -> Result<GeneratedToken, mtls_pki::Error> {
    let id = hex::encode(random(8)?);
    let secret =
        Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random(32)?));
    Ok(GeneratedToken {
        secret_hash: hex::encode(hash(&secret)),
        token: Zeroizing::new(format!("{id}.{}", secret.as_str())),
        id,
    })
}

/// Splits a presented token into id and secret, refusing anything not shaped like ours.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.trim().split_once('.')?;
    let ok_id = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let ok_secret = (16..=128).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (ok_id && ok_secret).then_some((id, secret))
}

/// Whether `secret` hashes to `stored_hash_hex`, compared in constant time.
pub fn secret_matches(secret: &str, stored_hash_hex: &str) -> bool {
    let Ok(stored) = hex::decode(stored_hash_hex) else {
        return false;
    };
    aws_lc_rs::constant_time::verify_slices_are_equal(&hash(secret), &stored).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let t = generate().unwrap();
        let (id, secret) = split(&t.token).unwrap();
        assert_eq!(id, t.id);
        assert!(secret_matches(secret, &t.secret_hash));
        assert!(!secret_matches("x", &t.secret_hash));
        assert!(!secret_matches(secret, "zz"));
        let mut flipped = t.token.to_string();
        flipped.pop();
        flipped.push('A');
        let (_, s2) = split(&flipped).unwrap();
        assert!(s2 == secret || !secret_matches(s2, &t.secret_hash));
        assert!(split("nodot").is_none());
        assert!(split("0123456789abcdef.short").is_none());
        assert!(split("xyz.0123456789abcdefghij").is_none());
    }
}
