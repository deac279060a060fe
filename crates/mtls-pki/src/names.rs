//! Subject alternative names, parsed and validated once (parse, don't validate).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rcgen::string::Ia5String;
use rcgen::SanType;
use serde::Serialize;

use crate::{Error, Result};

/// A subject alternative name mtls issues.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum San {
    /// A DNS name, lower-case, optionally with a leading `*.` wildcard label.
    Dns(String),
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A URI with a scheme, such as a SPIFFE ID (`spiffe://trust.domain/workload`).
    Uri(String),
    /// An RFC 822 e-mail address.
    Email(String),
}

impl San {
    /// Parses `dns:`, `ip:`, `uri:` or `email:` prefixed values, or guesses from the shape:
    /// an IP address, anything with `://` is a URI, anything with `@` an e-mail, else DNS.
    pub fn parse(s: &str) -> Result<Self> {
        let (kind, value) = match s.split_once(':') {
            Some((k, v))
                if ["dns", "ip", "uri", "email"].contains(&k.to_ascii_lowercase().as_str()) =>
            {
                (Some(k.to_ascii_lowercase()), v)
            }
            _ => (None, s),
        };
        match kind.as_deref() {
            Some("dns") => Self::dns(value),
            Some("ip") => Self::ip(value),
            Some("uri") => Self::uri(value),
            Some("email") => Self::email(value),
            _ => {
                if let Ok(ip) = value.parse::<IpAddr>() {
                    Ok(San::Ip(ip))
                } else if value.contains("://") {
                    Self::uri(value)
                } else if value.contains('@') {
                    Self::email(value)
                } else {
                    Self::dns(value)
                }
            }
        }
    }

    /// A validated DNS name.
    pub fn dns(value: &str) -> Result<Self> {
        let lower = value.to_ascii_lowercase();
        validate_dns(&lower, true).map_err(|reason| Error::InvalidName {
            value: value.into(),
            reason,
        })?;
        // The root's dot is not part of a certificate's name (verifiers refuse it there).
        Ok(San::Dns(
            lower.strip_suffix('.').unwrap_or(&lower).to_string(),
        ))
    }

    /// A validated IP address.
    pub fn ip(value: &str) -> Result<Self> {
        value.parse().map(San::Ip).map_err(|_| Error::InvalidName {
            value: value.into(),
            reason: "not an IPv4 or IPv6 address",
        })
    }

    /// A validated absolute URI (SPIFFE IDs get the SPIFFE rules).
    pub fn uri(value: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidName {
            value: value.into(),
            reason,
        };
        if !value.is_ascii() || value.chars().any(|c| c.is_ascii_control() || c == ' ') {
            return Err(bad("URIs must be printable ASCII without spaces"));
        }
        let (scheme, rest) = value.split_once("://").ok_or(bad("missing scheme://"))?;
        if scheme.is_empty()
            || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err(bad("invalid scheme"));
        }
        if scheme.eq_ignore_ascii_case("spiffe") {
            let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
            validate_dns(domain, false).map_err(|_| bad("invalid SPIFFE trust domain"))?;
            if domain.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(bad("SPIFFE trust domains are lower-case"));
            }
            // SPIFFE ID (spec 2.2): a workload's ID has a path; its segments are letters,
            // digits, `.`, `-`, `_`, none empty, none `.` or `..` (a relying party that
            // normalised `a/../admin` would read another ID). No query or fragment.
            if path.is_empty() {
                return Err(bad("a SPIFFE ID names a workload: it needs a path"));
            }
            if value.contains(['?', '#'])
                || path.split('/').any(|segment| {
                    segment.is_empty()
                        || segment == "."
                        || segment == ".."
                        || !segment
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
                })
            {
                return Err(bad(
                    "invalid SPIFFE path (segments of letters, digits, '.', '-', '_'; none empty, '.' or '..')",
                ));
            }
        } else if rest.is_empty() {
            return Err(bad("empty authority/path"));
        }
        Ok(San::Uri(value.into()))
    }

    /// A validated e-mail address.
    pub fn email(value: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidName {
            value: value.into(),
            reason,
        };
        let (local, domain) = value.rsplit_once('@').ok_or(bad("missing @"))?;
        if local.is_empty()
            || local.len() > 64
            || !local.is_ascii()
            || local
                .chars()
                .any(|c| c.is_ascii_control() || c == ' ' || c == '@')
        {
            return Err(bad("invalid local part"));
        }
        validate_dns(&domain.to_ascii_lowercase(), false).map_err(|_| bad("invalid domain"))?;
        Ok(San::Email(value.into()))
    }

    pub(crate) fn to_rcgen(&self) -> Result<SanType> {
        let ia5 = |s: &str| {
            Ia5String::try_from(s).map_err(|_| Error::InvalidName {
                value: s.into(),
                reason: "not IA5 (ASCII)",
            })
        };
        Ok(match self {
            San::Dns(d) => SanType::DnsName(ia5(d)?),
            San::Ip(ip) => SanType::IpAddress(*ip),
            San::Uri(u) => SanType::URI(ia5(u)?),
            San::Email(e) => SanType::Rfc822Name(ia5(e)?),
        })
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(v) => write!(f, "DNS:{v}"),
            San::Ip(v) => write!(f, "IP:{v}"),
            San::Uri(v) => write!(f, "URI:{v}"),
            San::Email(v) => write!(f, "email:{v}"),
        }
    }
}

impl FromStr for San {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        San::parse(s)
    }
}

/// Checks a lower-case DNS name (RFC 1035 preferred syntax; `*.` allowed when `wildcard`).
pub(crate) fn validate_dns(name: &str, wildcard: bool) -> std::result::Result<(), &'static str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err("DNS names are 1 to 253 characters");
    }
    let body = match name.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        Some(_) => return Err("wildcards are not allowed here"),
        None => name,
    };
    if body.is_empty() {
        return Err("a wildcard needs a domain");
    }
    if body.len() < name.len() && !body.contains('.') {
        // `*.com` would match every name under a top-level domain (CA/Browser Forum
        // Baseline Requirements 3.2.2.6).
        return Err("a wildcard needs a domain of at least two labels (*.example.com, not *.com)");
    }
    for label in body.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each label is 1 to 63 characters");
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err("labels hold only letters, digits and hyphens");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("labels cannot start or end with a hyphen");
        }
    }
    // As rustls-webpki: `10.0.0.1` is an address, and a name ending in digits looks like one.
    if body
        .rsplit('.')
        .next()
        .is_some_and(|last| last.chars().all(|c| c.is_ascii_digit()))
    {
        return Err("the last label cannot be all digits (an IP address is not a DNS name)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Networks are accepted only as ADDRESS/PREFIX with no host bits, at every prefix length.
    #[test]
    fn name_subtrees_parse_at_the_edges() {
        let ip = |s: &str| NameSubtree::parse(s).map(|n| n.to_string());
        for ok in [
            "ip:0.0.0.0/0",
            "ip:10.0.0.0/8",
            "ip:10.0.0.1/32",
            "ip:::/0",
            "ip:fd00::/8",
            "ip:fd00::1/128",
        ] {
            assert_eq!(ip(ok).unwrap(), ok);
        }
        for bad in [
            "ip:10.0.0.1/8",
            "ip:0.0.0.1/0",
            "ip:fd00::1/8",
            "ip:10.0.0.0/33",
            "ip:fd00::/129",
            "ip:10.0.0.0",
            "ip:10.0.0.0/x",
        ] {
            assert!(NameSubtree::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            NameSubtree::parse("SVC.Internal").unwrap(),
            NameSubtree::Dns("svc.internal".into())
        );
        assert_eq!(
            NameSubtree::parse("10.0.0.0/8").unwrap().to_string(),
            "ip:10.0.0.0/8"
        );
        assert!(NameSubtree::parse("dns:.svc.internal").is_err());
        assert!(NameSubtree::parse("dns:*.svc.internal").is_err());
        // An address is not a DNS subtree (webpki refuses such a constraint, leaving every
        // address unconstrained): refused whichever way it is written.
        for bad in ["10.0.0.1", "fd00::1", "dns:10.0.0.0", "dns:svc.123"] {
            assert!(NameSubtree::parse(bad).is_err(), "{bad}");
        }
        let e = NameSubtree::parse("10.0.0.1").unwrap_err().to_string();
        assert!(e.contains("ip:ADDRESS/32"), "{e}");
    }

    /// DNS names as verifiers read them: the root's trailing dot dropped, a last label of
    /// digits refused (an address, or a name webpki refuses).
    #[test]
    fn dns_names_are_stored_as_verifiers_read_them() {
        assert_eq!(
            San::dns("API.svc.internal.").unwrap(),
            San::Dns("api.svc.internal".into())
        );
        assert_eq!(
            San::parse("dns:api.svc.internal.").unwrap(),
            San::parse("api.svc.internal").unwrap()
        );
        for bad in ["host.123", "dns:10.0.0.1", "1.2.3.4.5"] {
            assert!(San::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            San::parse("10.0.0.1").unwrap(),
            San::Ip([10, 0, 0, 1].into())
        );
        San::dns("a1.b2.c3x").unwrap();
    }

    #[test]
    fn guesses_kinds() {
        assert_eq!(
            San::parse("API.example.com").unwrap(),
            San::Dns("api.example.com".into())
        );
        assert_eq!(
            San::parse("127.0.0.1").unwrap(),
            San::Ip("127.0.0.1".parse().unwrap())
        );
        assert_eq!(San::parse("::1").unwrap(), San::Ip("::1".parse().unwrap()));
        assert!(matches!(
            San::parse("spiffe://prod.example/ns/a/sa/b").unwrap(),
            San::Uri(_)
        ));
        assert!(matches!(
            San::parse("ops@example.com").unwrap(),
            San::Email(_)
        ));
        assert!(matches!(
            San::parse("dns:*.example.com").unwrap(),
            San::Dns(_)
        ));
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "-a.example.com",
            "a..b",
            "exa mple.com",
            "a\r\nb.com",
            "spiffe://Prod/x",
            "spiffe://prod.example/a//b",
            "spiffe://prod.example",
            "spiffe://prod.example/",
            "spiffe://prod.example/a/../admin",
            "spiffe://prod.example/./a",
            "spiffe://prod.example/a:b@c",
            "spiffe://prod.example/%41",
            "spiffe://prod.example/a?x=1",
            "uri:nocolon",
            "@example.com",
            "*.*.example.com",
            "dns:*.com",
            "*.com.",
            "ip:999.1.1.1",
        ] {
            assert!(San::parse(bad).is_err(), "{bad} accepted");
        }
    }
}

/// One subtree of a name constraint: the DNS names under a domain, or the addresses of an IP
/// network. The two name forms every verifier of mtls (rustls-webpki) enforces; it refuses
/// certificates under URI or e-mail constraints, so those are not offered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameSubtree {
    /// The domain and every name under it (`example.com` covers `example.com` and
    /// `a.example.com`, not `badexample.com`).
    Dns(String),
    /// The addresses of a network (`10.0.0.0/8`, `fd00::/8`).
    Ip {
        /// The network's address (host bits zero).
        network: IpAddr,
        /// The prefix length.
        prefix: u8,
    },
}

impl NameSubtree {
    /// Parses `dns:DOMAIN` or `ip:NETWORK/PREFIX`, or guesses from the shape (a `/` makes a
    /// network).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidName {
            value: s.into(),
            reason,
        };
        let (kind, value) = match s.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("dns") || k.eq_ignore_ascii_case("ip") => {
                (Some(k.to_ascii_lowercase()), v)
            }
            _ => (None, s),
        };
        let ip = match kind.as_deref() {
            Some("ip") => true,
            Some(_) => false,
            None => value.contains('/'),
        };
        if !ip && kind.is_none() && value.parse::<IpAddr>().is_ok() {
            return Err(bad(
                "an address alone is not a network: write ip:ADDRESS/32 (or /128 for IPv6)",
            ));
        }
        if !ip {
            let lower = value.to_ascii_lowercase();
            if lower.starts_with('.') {
                return Err(bad(
                    "write the domain without a leading dot: it covers the names under it",
                ));
            }
            validate_dns(&lower, false).map_err(bad)?;
            return Ok(NameSubtree::Dns(lower.trim_end_matches('.').to_string()));
        }
        let (addr, prefix) = value.split_once('/').ok_or(bad(
            "an IP network is written ADDRESS/PREFIX, e.g. 10.0.0.0/8",
        ))?;
        let network: IpAddr = addr
            .parse()
            .map_err(|_| bad("not an IPv4 or IPv6 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("the prefix is a number"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(bad("the prefix is longer than the address"));
        }
        let host_bits_zero = match network {
            IpAddr::V4(a) => u32::from(a).checked_shl(u32::from(prefix)).unwrap_or(0) == 0,
            IpAddr::V6(a) => u128::from(a).checked_shl(u32::from(prefix)).unwrap_or(0) == 0,
        };
        if !host_bits_zero {
            return Err(bad(
                "the address has bits set beyond the prefix: give the network's address",
            ));
        }
        Ok(NameSubtree::Ip { network, prefix })
    }

    pub(crate) fn to_rcgen(&self) -> rcgen::GeneralSubtree {
        match self {
            NameSubtree::Dns(d) => rcgen::GeneralSubtree::DnsName(d.clone()),
            NameSubtree::Ip { network, prefix } => rcgen::GeneralSubtree::IpAddress(
                rcgen::CidrSubnet::from_addr_prefix(*network, *prefix),
            ),
        }
    }
}

impl fmt::Display for NameSubtree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameSubtree::Dns(d) => write!(f, "dns:{d}"),
            NameSubtree::Ip { network, prefix } => write!(f, "ip:{network}/{prefix}"),
        }
    }
}

impl FromStr for NameSubtree {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// The names a CA may certify (RFC 5280 name constraints, marked critical): a certificate
/// under it whose DNS or IP names fall outside `permitted` (for a form `permitted` lists), or
/// inside `excluded`, is refused by relying parties, and not issued by mtls. Name forms that
/// neither list names (URIs such as SPIFFE IDs, e-mail addresses) are not constrained.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameConstraints {
    /// Subtrees the names must fall in (per name form).
    pub permitted: Vec<NameSubtree>,
    /// Subtrees no name may fall in.
    pub excluded: Vec<NameSubtree>,
}

impl NameConstraints {
    /// Whether nothing is constrained.
    pub fn is_empty(&self) -> bool {
        self.permitted.is_empty() && self.excluded.is_empty()
    }

    pub(crate) fn to_rcgen(&self) -> Option<rcgen::NameConstraints> {
        (!self.is_empty()).then(|| rcgen::NameConstraints {
            permitted_subtrees: self.permitted.iter().map(NameSubtree::to_rcgen).collect(),
            excluded_subtrees: self.excluded.iter().map(NameSubtree::to_rcgen).collect(),
        })
    }
}
