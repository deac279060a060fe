//! Certificate serial numbers.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// A certificate serial number, kept as its minimal big-endian magnitude.
///
/// Displayed as lower-case hex without separators, which is also how the inventory stores it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// 126 random bits from the system CSPRNG (RFC 5280 allows 20 octets; CA/B asks for ≥ 64
    /// bits of entropy). The top byte is in 0x40..=0x7f so the DER INTEGER is always positive,
    /// 16 octets long and never needs a leading zero.
    pub fn random() -> Result<Self> {
        let mut b = [0u8; 16];
        aws_lc_rs::rand::fill(&mut b).map_err(|_| Error::Crypto("random serial"))?;
        b[0] = (b[0] & 0x3f) | 0x40;
        Ok(Serial(b.to_vec()))
    }

    /// From the big-endian bytes of a DER INTEGER (leading zero octets are dropped).
    pub fn from_be_bytes(bytes: &[u8]) -> Self {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let mut v = bytes[start..].to_vec();
        if v.is_empty() {
            v.push(0);
        }
        Serial(v)
    }

    /// Minimal big-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn to_rcgen(&self) -> rcgen::SerialNumber {
        rcgen::SerialNumber::from_slice(&self.0)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

impl FromStr for Serial {
    type Err = Error;
    /// Accepts hex with optional `0x` prefix and `:` separators, any case (`openssl x509 -serial`
    /// prints `serial=4A3F...`; `serial=` is accepted too).
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let t = t.strip_prefix("serial=").unwrap_or(t);
        let t = t.strip_prefix("0x").unwrap_or(t);
        let cleaned: String = t.chars().filter(|c| *c != ':').collect();
        if cleaned.is_empty() || cleaned.len() > 42 {
            return Err(Error::malformed(
                "serial number",
                format!("{s:?}: expected hex"),
            ));
        }
        let padded = if cleaned.len() % 2 == 1 {
            format!("0{cleaned}")
        } else {
            cleaned
        };
        let bytes = hex::decode(&padded)
            .map_err(|_| Error::malformed("serial number", format!("{s:?}: expected hex")))?;
        Ok(Serial::from_be_bytes(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_serials_are_positive_distinct_and_long() {
        let a = Serial::random().unwrap();
        let b = Serial::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_bytes().len(), 16);
        assert!(a.as_bytes()[0] & 0x80 == 0 && a.as_bytes()[0] != 0);
    }

    #[test]
    fn parses_openssl_forms() {
        let s: Serial = "serial=0A:BC".parse().unwrap();
        assert_eq!(s.to_string(), "0abc");
        assert_eq!("abc".parse::<Serial>().unwrap(), s);
        assert!("xyz".parse::<Serial>().is_err());
    }
}
