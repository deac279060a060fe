//! Authorization policy: which verified identities may pass.
//!
//! Semantics: a peer is allowed when it matches **any** `allow_*` entry (CN, OU, DNS SAN, URI
//! SAN, e-mail SAN, certificate fingerprint, SPKI fingerprint), or when `allow_any_trusted` is
//! set. With `match = "all"` ([`PolicyMatch::All`]) it must instead match an entry of **every**
//! list that has entries: `allow_cn` with `allow_fingerprint` pins each name to certificates,
//! as the fingerprint-and-CN check of the usual Node.js guides does (`allow_any_trusted` is
//! refused there by [`Policy::validate`]: it would make the other lists look binding).
//! `allow_issuer`, when non-empty, is an additional requirement (AND) either way: the peer's
//! issuer DN must be one of the listed ones; `allow_issuer_spki` likewise for the key of the
//! CA that signed it (which another CA of the bundle cannot take, as it can a name). An empty policy allows nobody (fail closed).
//!
//! Patterns for DNS names: `*` matches exactly one label (`*.example.com`). Patterns for URIs
//! (SPIFFE IDs): `*` matches one path segment, `**` matches one or more segments
//! (`spiffe://prod.example/ns/*/sa/**`). Everything else is an exact, case-sensitive match
//! (DNS and fingerprints case-insensitive).

use mtls_pki::Fingerprint;
use serde::Deserialize;

use crate::peer::VerifiedPeer;
use crate::DistinguishedName;

/// How the `allow_*` lists of a [`Policy`] combine.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PolicyMatch {
    /// An entry of any list admits (the default).
    #[default]
    Any,
    /// Every list with entries must have one that matches.
    All,
}

impl std::str::FromStr for PolicyMatch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "any" => Ok(PolicyMatch::Any),
            "all" => Ok(PolicyMatch::All),
            other => Err(format!("{other:?}: use any or all")),
        }
    }
}

/// An authorization policy. See the module docs for the matching rules.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub allow_any_trusted: bool,
    /// How the `allow_*` lists combine (TOML key `match`).
    #[serde(default, rename = "match")]
    pub matching: PolicyMatch,
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
    /// SHA-256 of the SubjectPublicKeyInfo (hex as above, or a key pin `sha256//BASE64`).
    #[serde(default)]
    pub allow_spki: Vec<mtls_pki::KeyPin>,
    /// Issuer DNs as printed by `mtls inspect` (e.g. `O=Acme, CN=Acme Intermediate CA`),
    /// compared attribute by attribute ([`DistinguishedName`]), not as strings.
    #[serde(default)]
    pub allow_issuer: Vec<DistinguishedName>,
    /// Keys of the issuing CA (SHA-256 of the SubjectPublicKeyInfo of the certificate that
    /// signed the client's, in the validated path; hex or `sha256//BASE64`): like
    /// `allow_issuer` a requirement (AND), but one another CA of the bundle cannot meet by
    /// taking the same name.
    #[serde(default)]
    pub allow_issuer_spki: Vec<mtls_pki::KeyPin>,
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

    /// True when no client can ever pass: no `allow_*` rule that admits anyone (the
    /// `allow_issuer` and `allow_issuer_spki` lists only narrow the others).
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

    /// Refuses combinations that do not mean what they seem to: `allow_any_trusted` with
    /// `match = "all"` (every trusted client would pass the lists it seems to narrow), and
    /// `match = "all"` with no list to combine.
    pub fn validate(&self) -> Result<(), String> {
        if self.matching == PolicyMatch::All {
            if self.allow_any_trusted {
                return Err(
                    "allow_any_trusted (--allow-any-trusted) admits every trusted client: it \
                     cannot be combined with match = \"all\" (--match all); list what each \
                     client must match instead"
                        .into(),
                );
            }
            if self.allows_nobody() {
                return Err(
                    "match = \"all\" (--match all) needs allow_* lists (--allow-* options) to \
                     combine"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// Decides whether `peer` may pass; the error is a short reason for the log and the 403.
    pub fn check(&self, peer: &VerifiedPeer) -> Result<(), String> {
        if !self.allow_issuer.is_empty()
            && !self.allow_issuer.iter().any(|i| i == peer.issuer_name())
        {
            return Err(format!("issuer {:?} is not allowed", peer.issuer()));
        }
        if !self.allow_issuer_spki.is_empty()
            && !peer
                .issuer_spki_fingerprint()
                .is_some_and(|k| self.allow_issuer_spki.iter().any(|p| p.0 == *k))
        {
            return Err(format!(
                "issuer {:?} is not allowed: its key is not in allow_issuer_spki",
                peer.issuer()
            ));
        }
        let cn = peer.common_name();
        let who = || {
            cn.map(|c| format!("CN={c}"))
                .unwrap_or_else(|| peer.subject().to_string())
        };
        if self.allow_any_trusted {
            return match self.matching {
                PolicyMatch::Any => Ok(()),
                // Refused by `validate`; whoever skipped it gets no one admitted.
                PolicyMatch::All => {
                    Err("allow_any_trusted cannot be combined with match = \"all\"".into())
                }
            };
        }
        // Each list with entries, and whether one of them matches (evaluated lazily).
        let lists: [(&str, bool, &dyn Fn() -> bool); 7] = [
            ("allow_cn", !self.allow_cn.is_empty(), &|| {
                self.allow_cn.iter().any(|c| Some(c.as_str()) == cn)
            }),
            ("allow_ou", !self.allow_ou.is_empty(), &|| {
                self.allow_ou
                    .iter()
                    .any(|o| peer.organizational_units().contains(o))
            }),
            ("allow_dns", !self.allow_dns.is_empty(), &|| {
                self.allow_dns
                    .iter()
                    .any(|p| peer.dns_names().iter().any(|d| dns_match(p, d)))
            }),
            ("allow_uri", !self.allow_uri.is_empty(), &|| {
                self.allow_uri
                    .iter()
                    .any(|p| peer.uris().iter().any(|u| uri_match(p, u)))
            }),
            ("allow_email", !self.allow_email.is_empty(), &|| {
                self.allow_email
                    .iter()
                    .any(|e| peer.emails().iter().any(|m| m.eq_ignore_ascii_case(e)))
            }),
            (
                "allow_fingerprint",
                !self.allow_fingerprint.is_empty(),
                &|| {
                    self.allow_fingerprint
                        .iter()
                        .any(|f| f == peer.fingerprint())
                },
            ),
            ("allow_spki", !self.allow_spki.is_empty(), &|| {
                self.allow_spki
                    .iter()
                    .any(|f| f.0 == *peer.spki_fingerprint())
            }),
        ];
        let mut configured = lists.iter().filter(|(_, set, _)| *set).peekable();
        if configured.peek().is_none() && self.is_empty() {
            return Err("no client is allowed by the (empty) policy".into());
        }
        match self.matching {
            PolicyMatch::Any => {
                if configured.any(|(_, _, matches)| matches()) {
                    Ok(())
                } else {
                    Err(format!(
                        "certificate {} is not allowed by the policy",
                        who()
                    ))
                }
            }
            PolicyMatch::All => match configured.find(|(_, _, matches)| !matches()) {
                // No list at all (only allow_issuer): nothing admits.
                None if self.allows_nobody() => Err(format!(
                    "certificate {} is not allowed by the policy",
                    who()
                )),
                None => Ok(()),
                Some((list, _, _)) => Err(format!(
                    "certificate {} is not allowed by the policy: nothing in {list} matches it \
                     (match = \"all\")",
                    who()
                )),
            },
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
