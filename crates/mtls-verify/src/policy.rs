//! Authorization policy: which verified identities may pass.
//!
//! Semantics: a peer is allowed when it matches **any** `allow_*` entry (CN, OU, DNS SAN, URI
//! SAN, e-mail SAN, certificate fingerprint, SPKI fingerprint), or when `allow_any_trusted` is
//! set. `allow_issuer`, when non-empty, is an additional requirement (AND): the peer's issuer DN
//! must be one of the listed ones. An empty policy allows nobody (fail closed).
//!
//! Patterns for DNS names: `*` matches exactly one label (`*.example.com`). Patterns for URIs
//! (SPIFFE IDs): `*` matches one path segment, `**` matches one or more segments
//! (`spiffe://prod.example/ns/*/sa/**`). Everything else is an exact, case-sensitive match
//! (DNS and fingerprints case-insensitive).

use mtls_pki::Fingerprint;
use serde::Deserialize;

use crate::peer::VerifiedPeer;
use crate::DistinguishedName;

/// An authorization policy. See the module docs for the matching rules.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub allow_any_trusted: bool,
    #[serde(default)]
    pub allow_cn: Vec<String>,
    #[serde(default)]
    pub allow_ou: Vec<String>,
    #[serde(default)]
    pub allow_dns: Vec<String>,
    #[serde(default)]
    pub allow_uri: Vec<String>,
    #[serde(default)]
    pub allow_email: Vec<String>,
    /// SHA-256 of the certificate (hex, colons and a `sha256:` prefix allowed; a malformed
    /// one is a configuration error, not a rule that never matches).
    #[serde(default)]
    pub allow_fingerprint: Vec<Fingerprint>,
    /// SHA-256 of the SubjectPublicKeyInfo (same syntax).
    #[serde(default)]
    pub allow_spki: Vec<Fingerprint>,
    /// Issuer DNs as printed by `mtls inspect` (e.g. `O=Acme, CN=Acme Intermediate CA`),
    /// compared attribute by attribute ([`DistinguishedName`]), not as strings.
    #[serde(default)]
    pub allow_issuer: Vec<DistinguishedName>,
}

fn dns_match(pattern: &str, name: &str) -> bool {
    let p = pattern.to_ascii_lowercase();
    let n = name.to_ascii_lowercase();
    match p.strip_prefix("*.") {
        Some(rest) => n
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        None => p == n,
    }
}

/// Glob over `/`-separated segments: `*` one segment, `**` one or more.
pub fn uri_match(pattern: &str, uri: &str) -> bool {
    fn go(p: &[&str], u: &[&str]) -> bool {
        match (p.first(), u.first()) {
            (None, None) => true,
            (Some(&"**"), Some(_)) => (1..=u.len()).any(|k| go(&p[1..], &u[k..])),
            (Some(&"*"), Some(seg)) => !seg.is_empty() && go(&p[1..], &u[1..]),
            (Some(ps), Some(us)) => ps == us && go(&p[1..], &u[1..]),
            _ => false,
        }
    }
    let (Some((ps, prest)), Some((us, urest))) = (pattern.split_once("://"), uri.split_once("://"))
    else {
        return pattern == uri;
    };
    if !ps.eq_ignore_ascii_case(us) {
        return false;
    }
    let p: Vec<&str> = prest.split('/').collect();
    let u: Vec<&str> = urest.split('/').collect();
    go(&p, &u)
}

impl Policy {
    /// True when nothing is configured at all.
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// True when no client can ever pass: no `allow_*` rule that admits anyone (an
    /// `allow_issuer` list only narrows the others).
    pub fn allows_nobody(&self) -> bool {
        !self.allow_any_trusted
            && self.allow_cn.is_empty()
            && self.allow_ou.is_empty()
            && self.allow_dns.is_empty()
            && self.allow_uri.is_empty()
            && self.allow_email.is_empty()
            && self.allow_fingerprint.is_empty()
            && self.allow_spki.is_empty()
    }

    /// Decides whether `peer` may pass; the error is a short reason for the log and the 403.
    pub fn check(&self, peer: &VerifiedPeer) -> Result<(), String> {
        if !self.allow_issuer.is_empty()
            && !self.allow_issuer.iter().any(|i| i == peer.issuer_name())
        {
            return Err(format!("issuer {:?} is not allowed", peer.issuer()));
        }
        if self.allow_any_trusted {
            return Ok(());
        }
        let cn = peer.common_name();
        let allowed = self.allow_cn.iter().any(|c| Some(c.as_str()) == cn)
            || self
                .allow_ou
                .iter()
                .any(|o| peer.organizational_units().contains(o))
            || self
                .allow_dns
                .iter()
                .any(|p| peer.dns_names().iter().any(|d| dns_match(p, d)))
            || self
                .allow_uri
                .iter()
                .any(|p| peer.uris().iter().any(|u| uri_match(p, u)))
            || self
                .allow_email
                .iter()
                .any(|e| peer.emails().iter().any(|m| m.eq_ignore_ascii_case(e)))
            || self
                .allow_fingerprint
                .iter()
                .any(|f| f == peer.fingerprint())
            || self.allow_spki.iter().any(|f| f == peer.spki_fingerprint());
        if allowed {
            Ok(())
        } else if self.is_empty() {
            Err("no client is allowed by the (empty) policy".into())
        } else {
            Err(format!(
                "certificate {} is not allowed by the policy",
                cn.map(|c| format!("CN={c}"))
                    .unwrap_or_else(|| peer.subject().to_string())
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_globs() {
        assert!(uri_match("spiffe://a/ns/*/sa/b", "spiffe://a/ns/prod/sa/b"));
        assert!(!uri_match(
            "spiffe://a/ns/*/sa/b",
            "spiffe://a/ns/prod/x/sa/b"
        ));
        assert!(uri_match("spiffe://a/ns/**", "spiffe://a/ns/prod/x/sa/b"));
        assert!(!uri_match("spiffe://a/ns/**", "spiffe://a/ns"));
        assert!(!uri_match("spiffe://a/ns/*", "spiffe://b/ns/x"));
        assert!(uri_match("spiffe://a/x", "spiffe://a/x"));
    }

    #[test]
    fn dns_wildcards_cover_one_label() {
        assert!(dns_match("*.example.com", "api.example.com"));
        assert!(!dns_match("*.example.com", "a.b.example.com"));
        assert!(!dns_match("*.example.com", "example.com"));
        assert!(dns_match("API.example.com", "api.example.com"));
    }
}
