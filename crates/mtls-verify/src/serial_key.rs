//! Serial numbers as fixed-size hash-set keys: a revocation index of a million entries then
//! holds no heap allocation per entry (a `Vec<u8>` each cost about 3× the memory).

/// Longest serial kept as is (RFC 5280 4.1.2.2 allows 20 octets; longer ones are hashed).
const MAX: usize = 20;

/// A serial number (big-endian, leading zeros stripped) as a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SerialKey {
    len: u8,
    bytes: [u8; MAX],
}

impl SerialKey {
    /// The key of `serial` (as [`mtls_pki::Serial::as_bytes`] gives it).
    pub(crate) fn new(serial: &[u8]) -> Self {
        let mut bytes = [0u8; MAX];
        match bytes.get_mut(..serial.len()) {
            Some(head) => {
                head.copy_from_slice(serial);
                SerialKey {
                    len: serial.len() as u8,
                    bytes,
                }
            }
            // Non-conforming, longer serials: their SHA-256, marked by a length no real
            // serial kept as is can have.
            None => {
                let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, serial);
                bytes.copy_from_slice(d.as_ref().get(..MAX).unwrap_or(&[0u8; MAX]));
                SerialKey {
                    len: u8::MAX,
                    bytes,
                }
            }
        }
    }

    /// The key of a serial as it appears in DER (leading zero octets are stripped first).
    pub(crate) fn from_der_integer(raw: &[u8]) -> Self {
        Self::new(mtls_pki::Serial::from_be_bytes(raw).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::SerialKey;

    #[test]
    fn keys_match_only_the_same_serial() {
        assert_eq!(SerialKey::new(&[1, 2, 3]), SerialKey::new(&[1, 2, 3]));
        assert_ne!(SerialKey::new(&[1, 2, 3]), SerialKey::new(&[1, 2, 3, 0]));
        assert_ne!(SerialKey::new(&[1, 2]), SerialKey::new(&[0, 1, 2]));
        assert_eq!(
            SerialKey::from_der_integer(&[0, 0x81]),
            SerialKey::new(&[0x81])
        );
        let long = [7u8; 25];
        assert_eq!(SerialKey::new(&long), SerialKey::new(&long));
        assert_ne!(SerialKey::new(&long), SerialKey::new(&[7u8; 20]));
        assert_ne!(SerialKey::new(&long), SerialKey::new(&[7u8; 26]));
    }
}
