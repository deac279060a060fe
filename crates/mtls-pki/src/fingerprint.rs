//! SHA-256 fingerprints of certificates and public keys, as a type: parsed once, compared as
//! bytes, printed as lowercase hex.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// A SHA-256 digest identifying a certificate (of its DER) or a key (of its
/// SubjectPublicKeyInfo).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The SHA-256 of `der`.
    pub fn of(der: &[u8]) -> Self {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Fingerprint(out)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = Error;
    /// Accepts 64 hex digits in any case, with optional `:` separators (as `openssl x509
    /// -fingerprint` prints them) and an optional `sha256:` / `SHA256:` prefix (as `step` prints
    /// them). A SHA-1 fingerprint (Node's `cert.fingerprint`) is refused with where to find the
    /// SHA-256 one, and a key pin (`sha256//…`, see [`KeyPin`]) with where it belongs.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        if t.starts_with("sha256//") {
            return Err(Error::malformed(
                "SHA-256 fingerprint",
                format!(
                    "{s:?} is a key pin (curl's form: the SHA-256 of the public key, not of the \
                     certificate): pin keys with allow_spki or --pinned-pubkey, or give the \
                     certificate's SHA-256 here"
                ),
            ));
        }
        let t = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .or_else(|| t.strip_prefix("sha256 Fingerprint="))
            .or_else(|| t.strip_prefix("SHA256 Fingerprint="))
            .unwrap_or(t);
        let cleaned: String = t.chars().filter(|c| *c != ':').collect();
        if cleaned.len() == 40 && cleaned.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::malformed(
                "SHA-256 fingerprint",
                format!(
                    "{s:?} is a SHA-1 fingerprint (40 hex digits, as Node's cert.fingerprint \
                     gives): give the SHA-256 one (Node's cert.fingerprint256, `mtls inspect`, \
                     `openssl x509 -noout -fingerprint -sha256`)"
                ),
            ));
        }
        let bad = || {
            Error::malformed(
                "SHA-256 fingerprint",
                format!("{s:?}: expected 64 hex digits"),
            )
        };
        let bytes = hex::decode(&cleaned).map_err(|_| bad())?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Fingerprint(arr))
    }
}

/// The SHA-256 of a SubjectPublicKeyInfo as a key pin: written `sha256//BASE64` (curl's
/// `--pinnedpubkey`, HPKP) or, as `mtls inspect` prints `spki_sha256`, in hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyPin(pub Fingerprint);

impl KeyPin {
    /// The pin of this DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        KeyPin(Fingerprint::of(spki_der))
    }
}

impl fmt::Display for KeyPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use base64::Engine;
        write!(
            f,
            "sha256//{}",
            base64::engine::general_purpose::STANDARD.encode(self.0 .0)
        )
    }
}

impl fmt::Debug for KeyPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPin({self})")
    }
}

impl FromStr for KeyPin {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let Some(b64) = t.strip_prefix("sha256//") else {
            return t.parse().map(KeyPin);
        };
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(|b| KeyPin(Fingerprint(b)))
            .ok_or_else(|| {
                Error::malformed(
                    "key pin",
                    format!("{s:?}: sha256// takes the base64 of 32 bytes"),
                )
            })
    }
}

impl<'de> serde::Deserialize<'de> for KeyPin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_accepts_the_usual_spellings() {
        let f = Fingerprint::of(b"x");
        let hex = f.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex.parse::<Fingerprint>().unwrap(), f);
        let colons: String = hex
            .to_ascii_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(colons.parse::<Fingerprint>().unwrap(), f);
        assert_eq!(format!("sha256:{hex}").parse::<Fingerprint>().unwrap(), f);
        assert!("abcd".parse::<Fingerprint>().is_err());
        assert!(format!("{hex}00").parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
        // curl's --pinnedpubkey form is a key pin, read as one and refused as a fingerprint.
        let pin = KeyPin(f);
        assert!(pin.to_string().starts_with("sha256//"));
        assert_eq!(pin.to_string().parse::<KeyPin>().unwrap(), pin);
        assert_eq!(hex.parse::<KeyPin>().unwrap(), pin);
        assert!("sha256//AAAA".parse::<KeyPin>().is_err());
        let e = pin
            .to_string()
            .parse::<Fingerprint>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("key pin") && e.contains("allow_spki"), "{e}");
        // A SHA-1 fingerprint says what to give instead.
        let e = "AB:".repeat(19).to_string() + "AB";
        let e = e.parse::<Fingerprint>().unwrap_err().to_string();
        assert!(e.contains("SHA-1") && e.contains("fingerprint256"), "{e}");
    }
}
