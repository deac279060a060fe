//! Distinguished names compared attribute by attribute, not as display strings.
//!
//! `mtls inspect` prints a name as x509-parser does (`CN=Acme CA, O=Acme`, RDNs in encoded
//! order, `+` inside a multi-valued RDN) without escaping, so a certificate whose CN is
//! `Acme CA, O=Acme` prints exactly like one with two attributes. An allow-list compared on that
//! string could be met by a CA that only controls a CN value; this type compares the sequence
//! of (attribute type, value) pairs instead. Written forms escape `,`, `+` and `\` in values with
//! a backslash.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};
use x509_parser::x509::X509Name;

/// A distinguished name: RDNs in encoded order, each a list of (attribute type, value).
/// Attribute types compare case-insensitively (`CN`, `cn`), values exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistinguishedName(Vec<Vec<(String, String)>>);

impl DistinguishedName {
    /// The structure of a certificate's name (types as x509-parser abbreviates them, dotted
    /// OIDs otherwise; values that are not strings as upper-case hex of their encoding).
    pub(crate) fn of(name: &X509Name<'_>) -> Self {
        let registry = x509_parser::objects::oid_registry();
        DistinguishedName(
            name.iter()
                .map(|rdn| {
                    rdn.iter()
                        .map(|attr| {
                            let oid = attr.attr_type();
                            let ty = x509_parser::objects::oid2abbrev(oid, registry)
                                .map(str::to_string)
                                .unwrap_or_else(|_| oid.to_id_string());
                            let value = attr
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|_| hex::encode_upper(attr.attr_value().data));
                            (ty.to_ascii_lowercase(), value)
                        })
                        .collect()
                })
                .collect(),
        )
    }
}

impl FromStr for DistinguishedName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |m: &str| {
            format!("{s:?} is not a distinguished name: {m} (write it as `mtls inspect` prints it, e.g. \"CN=Acme Intermediate CA, O=Acme\"; escape , + and \\ in values with \\)")
        };
        let mut rdns = Vec::new();
        let mut rdn = Vec::new();
        // The attribute being read: its type once the first unescaped '=' is seen, and the
        // text read so far (escapes already resolved).
        let mut ty: Option<String> = None;
        let mut current = String::new();
        let finish_attr =
            |ty: &mut Option<String>, current: &mut String, rdn: &mut Vec<(String, String)>| {
                let t = ty.take().ok_or_else(|| bad("an attribute without '='"))?;
                let t = t.trim();
                if t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
                    return Err(bad("an attribute type must be a name or a dotted OID"));
                }
                rdn.push((
                    t.to_ascii_lowercase(),
                    std::mem::take(current).trim().to_string(),
                ));
                Ok(())
            };
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => current.push(chars.next().ok_or_else(|| bad("a trailing backslash"))?),
                '=' if ty.is_none() => ty = Some(std::mem::take(&mut current)),
                '+' => finish_attr(&mut ty, &mut current, &mut rdn)?,
                ',' => {
                    finish_attr(&mut ty, &mut current, &mut rdn)?;
                    rdns.push(std::mem::take(&mut rdn));
                }
                c => current.push(c),
            }
        }
        finish_attr(&mut ty, &mut current, &mut rdn)?;
        rdns.push(rdn);
        Ok(DistinguishedName(rdns))
    }
}

impl fmt::Display for DistinguishedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rdn) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            for (j, (ty, value)) in rdn.iter().enumerate() {
                if j > 0 {
                    f.write_str(" + ")?;
                }
                let ty = match ty.as_str() {
                    "emailaddress" => "emailAddress".to_string(),
                    t if t.contains('.') => t.to_string(),
                    t => t.to_ascii_uppercase(),
                };
                write!(f, "{ty}=")?;
                for c in value.chars() {
                    if matches!(c, ',' | '+' | '\\') {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for DistinguishedName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_inspect_form_and_escapes() {
        let n: DistinguishedName = "CN=Acme CA, O=Acme".parse().unwrap();
        assert_eq!(
            n.0,
            vec![
                vec![("cn".to_string(), "Acme CA".to_string())],
                vec![("o".to_string(), "Acme".to_string())]
            ]
        );
        let one: DistinguishedName = r"CN=Acme CA\, O=Acme".parse().unwrap();
        assert_eq!(
            one.0,
            vec![vec![("cn".to_string(), "Acme CA, O=Acme".to_string())]]
        );
        assert_ne!(n, one);
        assert_eq!(one.to_string(), r"CN=Acme CA\, O=Acme");
        let multi: DistinguishedName = "CN=a + OU=b, O=c".parse().unwrap();
        assert_eq!(multi.0.first().map(Vec::len), Some(2));
        assert_eq!(
            "cn=Acme CA, o=Acme".parse::<DistinguishedName>().unwrap(),
            n
        );
        let eq: DistinguishedName = r"CN=a=b\=c".parse().unwrap();
        assert_eq!(eq.0, vec![vec![("cn".to_string(), "a=b=c".to_string())]]);
        for bad in ["", "CN", "CN=a,", "=a", "C N=a", "CN=a\\"] {
            assert!(bad.parse::<DistinguishedName>().is_err(), "{bad:?}");
        }
    }
}
