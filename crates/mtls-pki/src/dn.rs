//! Distinguished names as RFC 4514 strings, for headers that carry a subject to another
//! program (`X-Forwarded-Client-Cert`'s `Subject`): every special character in a value is
//! escaped, so a value such as `x, CN=admin` reads back as one value, never as another
//! attribute. (The human-readable form elsewhere in mtls, `O=Acme, CN=app`, escapes nothing
//! and is not for parsing.)

use x509_parser::asn1_rs::{Tag, ToDer as _};
use x509_parser::x509::X509Name;

/// `name` in RFC 4514 form: RDNs most specific first (the reverse of their order in the
/// certificate), separated by `,`; the attributes of a multi-valued RDN by `+`. Types by their
/// abbreviation (`CN`, `O`, `OU`, `C`, `L`, `ST`, `DC`, …) or dotted OID; string values
/// escaped (RFC 4514 2.4), other values as `#` and the hex of their DER.
pub fn to_rfc4514(name: &X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    let rdns: Vec<_> = name.iter().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = attr.attr_type();
            match x509_parser::objects::oid2abbrev(oid, registry) {
                Ok(abbrev) if abbrev.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                    out.push_str(abbrev)
                }
                _ => out.push_str(&oid.to_id_string()),
            }
            out.push('=');
            let value = attr.attr_value();
            let text = match value.tag() {
                Tag::Utf8String
                | Tag::PrintableString
                | Tag::Ia5String
                | Tag::TeletexString
                | Tag::VisibleString
                | Tag::NumericString => std::str::from_utf8(value.data).ok(),
                _ => None,
            };
            match text {
                Some(t) => escape_into(&mut out, t),
                None => {
                    out.push('#');
                    out.push_str(&hex::encode(value.to_der_vec().unwrap_or_default()));
                }
            }
        }
    }
    out
}

/// Appends `value` escaped as an RFC 4514 attribute value (2.4). Beyond what 2.4 requires,
/// every byte outside printable ASCII, and `%`, is written `\XX` (hex), which 2.4 allows: the
/// result is printable ASCII a header carries as it is, with no percent-encoding a reader
/// would have to undo (and that a value could fake: `x%2C CN=admin`).
fn escape_into(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            c if c == '%' || !(' '..='~').contains(&c) => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02X}"));
                }
            }
            _ => out.push(c),
        }
    }
}

/// The attributes of an RFC 4514 string, in its order, as (type, value) with the values
/// unescaped; `None` when it is not one (an unescaped special character, a bad escape, an
/// attribute without `=`). `#`-encoded values are returned as written.
pub fn parse_rfc4514(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    if s.is_empty() {
        return Some(out);
    }
    let mut chars = s.chars().peekable();
    loop {
        let mut kind = String::new();
        loop {
            match chars.next()? {
                '=' => break,
                c => kind.push(c),
            }
        }
        let mut bytes = Vec::new();
        let mut ended = false;
        while let Some(c) = chars.next() {
            match c {
                ',' | '+' => {
                    ended = true;
                    break;
                }
                '\\' => {
                    let e = chars.next()?;
                    if e.is_ascii_hexdigit() {
                        let low = chars.next()?;
                        let byte = u8::from_str_radix(&format!("{e}{low}"), 16).ok()?;
                        bytes.push(byte);
                    } else {
                        let mut buf = [0u8; 4];
                        bytes.extend_from_slice(e.encode_utf8(&mut buf).as_bytes());
                    }
                }
                '"' | ';' | '<' | '>' => return None,
                c => {
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        let kind = kind.trim().to_string();
        if kind.is_empty() {
            return None;
        }
        out.push((kind, String::from_utf8(bytes).ok()?));
        if !ended {
            return Some(out);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn name_of(dn: rcgen::DistinguishedName) -> Vec<u8> {
        let key = crate::PrivateKey::generate(crate::KeyAlgorithm::EcdsaP256).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = dn;
        p.self_signed(key.key_pair()).unwrap().der().to_vec()
    }

    /// A value holding `, CN=admin` (or any other special character) stays one value: the
    /// string reads back into exactly the certificate's attributes, most specific first.
    #[test]
    fn values_cannot_pose_as_other_attributes() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "x, CN=admin");
        dn.push(rcgen::DnType::OrganizationalUnitName, " #a+b;c<d>\"e\\ ");
        dn.push(rcgen::DnType::CommonName, "guest");
        let der = name_of(dn);
        let cert = crate::pem_io::parse_certificate(&der).unwrap();
        let s = to_rfc4514(cert.subject());
        assert_eq!(s, r#"CN=guest,OU=\ #a\+b\;c\<d\>\"e\\\ ,O=x\, CN=admin"#);
        assert_eq!(
            parse_rfc4514(&s).unwrap(),
            vec![
                ("CN".to_string(), "guest".to_string()),
                ("OU".to_string(), " #a+b;c<d>\"e\\ ".to_string()),
                ("O".to_string(), "x, CN=admin".to_string()),
            ]
        );
        assert_eq!(parse_rfc4514("CN=a\\2Cb").unwrap()[0].1, "a,b");
        // Non-ASCII, control characters and `%` as hex escapes: printable ASCII only, no
        // percent-encoding to undo (`x%2C CN=admin` stays one value whatever a reader does).
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "x%2C CN=admin");
        dn.push(rcgen::DnType::CommonName, "Ünï\r\n");
        let der = name_of(dn);
        let cert = crate::pem_io::parse_certificate(&der).unwrap();
        let s = to_rfc4514(cert.subject());
        assert_eq!(s, r"CN=\C3\9Cn\C3\AF\0D\0A,O=x\252C CN=admin");
        assert_eq!(
            parse_rfc4514(&s).unwrap(),
            vec![
                ("CN".to_string(), "Ünï\r\n".to_string()),
                ("O".to_string(), "x%2C CN=admin".to_string()),
            ]
        );
        assert_eq!(parse_rfc4514("CN=\\#x").unwrap()[0].1, "#x");
        for bad in ["CN=a\"b", "CN", "=a", "CN=a\\"] {
            assert!(parse_rfc4514(bad).is_none(), "{bad}");
        }
    }
}
