//! Describes PKI objects (certificates, CSRs, CRLs, keys) for people and for scripts.

use std::fmt::Write as _;

use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::issue::certificate_sans;
use crate::revocation::parse_crl;
use crate::{csr, key, pem_io, Error, PrivateKey, Result, Serial};

/// One described object.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Object {
    Certificate(Box<CertificateInfo>),
    Csr(CsrSummary),
    Crl(CrlInfo),
    PrivateKey(KeyInfo),
}

#[derive(Clone, Debug, Serialize)]
pub struct BasicConstraintsInfo {
    pub ca: bool,
    pub path_len: Option<u32>,
    pub critical: bool,
}

/// A CA's name constraints, each subtree as `dns:DOMAIN`, `ip:NETWORK/PREFIX` (other forms
/// as x509-parser shows them).
#[derive(Clone, Debug, Serialize)]
pub struct NameConstraintsInfo {
    pub permitted: Vec<String>,
    pub excluded: Vec<String>,
    pub critical: bool,
}

fn subtree_name(base: &x509_parser::extensions::GeneralName<'_>) -> String {
    use x509_parser::extensions::GeneralName as G;
    match base {
        G::DNSName(d) => format!("dns:{d}"),
        G::IPAddress(b) => {
            let (addr, mask) = b.split_at(b.len() / 2);
            let prefix: u32 = mask.iter().map(|m| m.count_ones()).sum();
            // A mask of `prefix` leading ones and nothing else.
            let mut left = prefix;
            let contiguous = mask.iter().all(|m| {
                let ones = left.min(8);
                left -= ones;
                *m == (0xff00_u16 >> ones) as u8
            });
            // Address and mask of the same family: 4 + 4 or 16 + 16 bytes.
            let addr = match (<[u8; 4]>::try_from(addr), <[u8; 16]>::try_from(addr)) {
                (Ok(a), _) if b.len() == 8 => Some(std::net::IpAddr::from(a)),
                (_, Ok(a)) if b.len() == 32 => Some(std::net::IpAddr::from(a)),
                _ => None,
            };
            match addr {
                Some(addr) if contiguous => format!("ip:{addr}/{prefix}"),
                _ => format!("ip:{} (invalid)", hex::encode(b)),
            }
        }
        G::RFC822Name(e) => format!("email:{e}"),
        G::URI(u) => format!("uri:{u}"),
        other => format!("{other:?}"),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CertificateInfo {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub days_left: i64,
    pub expired: bool,
    pub not_yet_valid: bool,
    pub sans: Vec<String>,
    pub key_usage: Vec<String>,
    pub extended_key_usage: Vec<String>,
    pub basic_constraints: Option<BasicConstraintsInfo>,
    /// The names a CA may certify (RFC 5280 name constraints).
    pub name_constraints: Option<NameConstraintsInfo>,
    pub sha256_fingerprint: String,
    pub spki_sha256: String,
    pub key_type: String,
    pub signature_algorithm: String,
    pub self_issued: bool,
    /// CRL Distribution Points (URIs).
    pub crl_distribution_points: Vec<String>,
    /// Authority Information Access: OCSP responders (URIs).
    pub ocsp: Vec<String>,
    /// Authority Information Access: where the issuer's certificate is (URIs).
    pub ca_issuers: Vec<String>,
    /// Authority Key Identifier (hex, colon-separated as openssl prints it).
    pub authority_key_id: Option<String>,
    /// Subject Key Identifier (hex, colon-separated).
    pub subject_key_id: Option<String>,
}

fn colon_hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn uri_of(name: &x509_parser::extensions::GeneralName<'_>) -> Option<String> {
    match name {
        x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
        _ => None,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CsrSummary {
    pub subject: String,
    pub sans: Vec<String>,
    pub key_type: String,
    pub requests_ca: bool,
    pub signature_valid: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct RevokedInfo {
    pub serial: String,
    pub revoked_at: String,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CrlInfo {
    pub issuer: String,
    pub crl_number: Option<String>,
    pub this_update: String,
    pub next_update: Option<String>,
    pub expired: bool,
    pub signature_algorithm: String,
    pub revoked: Vec<RevokedInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    pub key_type: String,
    pub encrypted: bool,
    /// SHA-256 of the public key's SubjectPublicKeyInfo (matches `spki_sha256` of its
    /// certificate); absent when the key is encrypted and no passphrase was given.
    pub spki_sha256: Option<String>,
}

fn rfc3339(t: OffsetDateTime) -> String {
    crate::rfc3339(&t)
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

/// Human name of a public key's type ("ECDSA P-256", "RSA 2048", "Ed25519").
pub fn key_type(spki: &SubjectPublicKeyInfo<'_>) -> String {
    if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 {
        return "Ed25519".into();
    }
    match spki.parsed() {
        Ok(PublicKey::EC(p)) => format!("ECDSA P-{}", p.key_size()),
        Ok(PublicKey::RSA(r)) => format!("RSA {}", r.key_size()),
        _ => spki.algorithm.algorithm.to_id_string(),
    }
}

/// Describes a parsed certificate at time `now`.
pub fn certificate_info(
    der: &[u8],
    cert: &X509Certificate<'_>,
    now: OffsetDateTime,
) -> CertificateInfo {
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    let mut key_usage = Vec::new();
    let mut eku = Vec::new();
    let mut bc = None;
    let mut nc = None;
    let (mut cdp, mut ocsp, mut ca_issuers) = (Vec::new(), Vec::new(), Vec::new());
    let (mut aki, mut ski) = (None, None);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::CRLDistributionPoints(points) => {
                for p in points.iter() {
                    if let Some(x509_parser::extensions::DistributionPointName::FullName(names)) =
                        &p.distribution_point
                    {
                        cdp.extend(names.iter().filter_map(uri_of));
                    }
                }
            }
            ParsedExtension::AuthorityInfoAccess(aia) => {
                for d in &aia.accessdescs {
                    let Some(uri) = uri_of(&d.access_location) else {
                        continue;
                    };
                    if d.access_method == x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_OCSP
                    {
                        ocsp.push(uri);
                    } else if d.access_method
                        == x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS
                    {
                        ca_issuers.push(uri);
                    }
                }
            }
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|k| colon_hex(k.0));
            }
            ParsedExtension::SubjectKeyIdentifier(k) => ski = Some(colon_hex(k.0)),
            ParsedExtension::KeyUsage(ku) => {
                key_usage = ku
                    .to_string()
                    .split(", ")
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
            }
            ParsedExtension::ExtendedKeyUsage(e) => {
                let pairs = [
                    (e.any, "anyExtendedKeyUsage"),
                    (e.server_auth, "serverAuth"),
                    (e.client_auth, "clientAuth"),
                    (e.code_signing, "codeSigning"),
                    (e.email_protection, "emailProtection"),
                    (e.time_stamping, "timeStamping"),
                    (e.ocsp_signing, "OCSPSigning"),
                ];
                eku = pairs
                    .iter()
                    .filter(|(b, _)| *b)
                    .map(|(_, n)| n.to_string())
                    .collect();
                eku.extend(e.other.iter().map(|o| o.to_id_string()));
            }
            ParsedExtension::NameConstraints(n) => {
                let names = |t: &Option<Vec<x509_parser::extensions::GeneralSubtree<'_>>>| {
                    t.iter().flatten().map(|s| subtree_name(&s.base)).collect()
                };
                nc = Some(NameConstraintsInfo {
                    permitted: names(&n.permitted_subtrees),
                    excluded: names(&n.excluded_subtrees),
                    critical: ext.critical,
                });
            }
            ParsedExtension::ParseError { .. }
                if ext.oid == x509_parser::oid_registry::OID_X509_EXT_NAME_CONSTRAINTS =>
            {
                nc = Some(NameConstraintsInfo {
                    permitted: vec!["(the extension does not parse)".into()],
                    excluded: Vec::new(),
                    critical: ext.critical,
                });
            }
            ParsedExtension::BasicConstraints(b) => {
                bc = Some(BasicConstraintsInfo {
                    ca: b.ca,
                    path_len: b.path_len_constraint,
                    critical: ext.critical,
                })
            }
            _ => {}
        }
    }
    CertificateInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: Serial::from_be_bytes(cert.raw_serial()).to_string(),
        not_before: rfc3339(not_before),
        not_after: rfc3339(not_after),
        days_left: (not_after - now).whole_days(),
        expired: now > not_after,
        not_yet_valid: now < not_before,
        sans: certificate_sans(cert)
            .iter()
            .map(ToString::to_string)
            .collect(),
        key_usage,
        extended_key_usage: eku,
        basic_constraints: bc,
        name_constraints: nc,
        sha256_fingerprint: sha256_hex(der),
        spki_sha256: sha256_hex(cert.public_key().raw),
        key_type: key_type(cert.public_key()),
        signature_algorithm: signature_name(&cert.signature_algorithm.algorithm),
        self_issued: cert.subject() == cert.issuer(),
        crl_distribution_points: cdp,
        ocsp,
        ca_issuers,
        authority_key_id: aki,
        subject_key_id: ski,
    }
}

fn signature_name(oid: &x509_parser::der_parser::oid::Oid<'_>) -> String {
    use x509_parser::oid_registry as o;
    let known = [
        (o::OID_SIG_ECDSA_WITH_SHA256, "ecdsa-with-SHA256"),
        (o::OID_SIG_ECDSA_WITH_SHA384, "ecdsa-with-SHA384"),
        (o::OID_SIG_ED25519, "Ed25519"),
        (o::OID_PKCS1_SHA256WITHRSA, "sha256WithRSAEncryption"),
        (o::OID_PKCS1_SHA384WITHRSA, "sha384WithRSAEncryption"),
        (o::OID_PKCS1_SHA512WITHRSA, "sha512WithRSAEncryption"),
        (o::OID_PKCS1_SHA1WITHRSA, "sha1WithRSAEncryption"),
        (o::OID_PKCS1_RSASSAPSS, "RSASSA-PSS"),
    ];
    known
        .iter()
        .find(|(k, _)| k == oid)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| oid.to_id_string())
}

fn describe_block(
    label: &str,
    der: &[u8],
    now: OffsetDateTime,
    passphrase: Option<&[u8]>,
) -> Result<Object> {
    match label {
        "CERTIFICATE" | "TRUSTED CERTIFICATE" => {
            let cert = pem_io::parse_certificate(der)?;
            Ok(Object::Certificate(Box::new(certificate_info(
                der, &cert, now,
            ))))
        }
        "X509 CRL" => describe_crl(der, now),
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => describe_csr(der),
        l if l.ends_with("PRIVATE KEY") => {
            // The key as PEM again (so its label says what it is): wiped when dropped.
            let pem = zeroize::Zeroizing::new(pem_io::encode(l, der));
            describe_key(pem.as_bytes(), passphrase)
        }
        "" => {
            if let Ok(cert) = pem_io::parse_certificate(der) {
                return Ok(Object::Certificate(Box::new(certificate_info(
                    der, &cert, now,
                ))));
            }
            if let Ok(o) = describe_crl(der, now) {
                return Ok(o);
            }
            if let Ok(o) = describe_csr(der) {
                return Ok(o);
            }
            describe_key(der, passphrase).map_err(|_| {
                Error::malformed("input", "DER is not a certificate, CRL, CSR or private key")
            })
        }
        other => Err(Error::malformed(
            "PEM",
            format!("unsupported block {other:?}"),
        )),
    }
}

/// Describes a private key given as PEM or DER; an encrypted key without a passphrase is
/// reported as encrypted, not decrypted.
fn describe_key(input: &[u8], passphrase: Option<&[u8]>) -> Result<Object> {
    let encrypted = key::is_encrypted(input);
    if encrypted && passphrase.is_none() {
        return Ok(Object::PrivateKey(KeyInfo {
            key_type: "encrypted (give a passphrase to see more)".into(),
            encrypted,
            spki_sha256: None,
        }));
    }
    let k = PrivateKey::from_pem_or_der(input, passphrase)?;
    Ok(Object::PrivateKey(KeyInfo {
        key_type: key_name(k.algorithm()),
        encrypted,
        spki_sha256: Some(sha256_hex(&k.public_key_spki())),
    }))
}

fn describe_csr(der: &[u8]) -> Result<Object> {
    let info = csr::parse(der)?;
    Ok(Object::Csr(CsrSummary {
        subject: info.subject_text,
        sans: info.sans.iter().map(ToString::to_string).collect(),
        key_type: key_name(info.public_key.key_algorithm()),
        requests_ca: info.requests_ca,
        signature_valid: true,
    }))
}

fn key_name(a: crate::KeyAlgorithm) -> String {
    match a {
        crate::KeyAlgorithm::EcdsaP256 => "ECDSA P-256".into(),
        crate::KeyAlgorithm::EcdsaP384 => "ECDSA P-384".into(),
        crate::KeyAlgorithm::Ed25519 => "Ed25519".into(),
        crate::KeyAlgorithm::Rsa { bits } => format!("RSA {bits}"),
    }
}

fn describe_crl(der: &[u8], now: OffsetDateTime) -> Result<Object> {
    let crl = parse_crl(der)?;
    let next = crl.next_update().map(|t| t.to_datetime());
    Ok(Object::Crl(CrlInfo {
        issuer: crl.issuer().to_string(),
        crl_number: crl.crl_number().map(|n| n.to_string()),
        this_update: rfc3339(crl.last_update().to_datetime()),
        next_update: next.map(rfc3339),
        expired: next.is_some_and(|n| now > n),
        signature_algorithm: signature_name(&crl.signature_algorithm.algorithm),
        revoked: crl
            .iter_revoked_certificates()
            .map(|r| RevokedInfo {
                serial: Serial::from_be_bytes(r.raw_serial()).to_string(),
                revoked_at: rfc3339(r.revocation_date.to_datetime()),
                reason: r.reason_code().map(|(_, rc)| rc.to_string()),
            })
            .collect(),
    }))
}

/// Describes every object in `input` (PEM with any number of blocks, or one DER object).
pub fn describe(
    input: &[u8],
    now: OffsetDateTime,
    passphrase: Option<&[u8]>,
) -> Result<Vec<Object>> {
    // Key files are described too: their blocks are wiped when dropped.
    pem_io::decode_secret(input)?
        .iter()
        .map(|b| describe_block(&b.label, &b.der, now, passphrase))
        .collect()
}

/// Renders a description as text for a terminal.
pub fn render(obj: &Object) -> String {
    let mut s = String::new();
    match obj {
        Object::Certificate(c) => {
            let status = if c.expired {
                "EXPIRED".to_string()
            } else if c.not_yet_valid {
                "NOT YET VALID".to_string()
            } else {
                format!("{} days left", c.days_left)
            };
            let _ = writeln!(s, "Certificate");
            let _ = writeln!(s, "  Subject:       {}", c.subject);
            let _ = writeln!(s, "  Issuer:        {}", c.issuer);
            let _ = writeln!(s, "  Serial:        {}", c.serial);
            let _ = writeln!(
                s,
                "  Valid:         {} to {} ({status})",
                c.not_before, c.not_after
            );
            if !c.sans.is_empty() {
                let _ = writeln!(s, "  SANs:          {}", c.sans.join(", "));
            }
            if let Some(bc) = &c.basic_constraints {
                let pl = bc
                    .path_len
                    .map(|p| format!(", pathlen:{p}"))
                    .unwrap_or_default();
                let crit = if bc.critical { " (critical)" } else { "" };
                let _ = writeln!(
                    s,
                    "  Basic constr.: CA:{}{pl}{crit}",
                    if bc.ca { "TRUE" } else { "FALSE" }
                );
            }
            if let Some(nc) = &c.name_constraints {
                let crit = if nc.critical { " (critical)" } else { "" };
                let list = |v: &[String]| {
                    if v.is_empty() {
                        "-".to_string()
                    } else {
                        v.join(", ")
                    }
                };
                let _ = writeln!(
                    s,
                    "  Name constr.:  permitted {}; excluded {}{crit}",
                    list(&nc.permitted),
                    list(&nc.excluded)
                );
            }
            if !c.key_usage.is_empty() {
                let _ = writeln!(s, "  Key usage:     {}", c.key_usage.join(", "));
            }
            if !c.extended_key_usage.is_empty() {
                let _ = writeln!(s, "  Ext. key use:  {}", c.extended_key_usage.join(", "));
            }
            if !c.crl_distribution_points.is_empty() {
                let _ = writeln!(
                    s,
                    "  CRL dist. pt.: {}",
                    c.crl_distribution_points.join(", ")
                );
            }
            if !c.ocsp.is_empty() {
                let _ = writeln!(s, "  OCSP:          {}", c.ocsp.join(", "));
            }
            if !c.ca_issuers.is_empty() {
                let _ = writeln!(s, "  CA issuers:    {}", c.ca_issuers.join(", "));
            }
            if let Some(k) = &c.authority_key_id {
                let _ = writeln!(s, "  Authority KID: {k}");
            }
            if let Some(k) = &c.subject_key_id {
                let _ = writeln!(s, "  Subject KID:   {k}");
            }
            let _ = writeln!(s, "  Key:           {}", c.key_type);
            let _ = writeln!(s, "  Signature:     {}", c.signature_algorithm);
            let _ = writeln!(s, "  SHA-256:       {}", c.sha256_fingerprint);
            let _ = writeln!(s, "  SPKI SHA-256:  {}", c.spki_sha256);
        }
        Object::Csr(c) => {
            let _ = writeln!(s, "Certificate signing request (signature verified)");
            let _ = writeln!(s, "  Subject:       {}", c.subject);
            if !c.sans.is_empty() {
                let _ = writeln!(s, "  SANs:          {}", c.sans.join(", "));
            }
            let _ = writeln!(s, "  Key:           {}", c.key_type);
            if c.requests_ca {
                let _ = writeln!(s, "  Requests CA:TRUE");
            }
        }
        Object::Crl(c) => {
            let _ = writeln!(s, "Certificate revocation list");
            let _ = writeln!(s, "  Issuer:        {}", c.issuer);
            if let Some(n) = &c.crl_number {
                let _ = writeln!(s, "  CRL number:    {n}");
            }
            let _ = writeln!(s, "  This update:   {}", c.this_update);
            let next = c.next_update.clone().unwrap_or_else(|| "(none)".into());
            let _ = writeln!(
                s,
                "  Next update:   {next}{}",
                if c.expired { " (EXPIRED)" } else { "" }
            );
            let _ = writeln!(s, "  Revoked:       {}", c.revoked.len());
            for r in &c.revoked {
                let reason = r.reason.clone().unwrap_or_else(|| "-".into());
                let _ = writeln!(s, "    {}  {}  {reason}", r.serial, r.revoked_at);
            }
        }
        Object::PrivateKey(k) => {
            let _ = writeln!(s, "Private key");
            let _ = writeln!(s, "  Type:          {}", k.key_type);
            let _ = writeln!(
                s,
                "  Encrypted:     {}",
                if k.encrypted { "yes" } else { "no" }
            );
            if let Some(h) = &k.spki_sha256 {
                let _ = writeln!(s, "  SPKI SHA-256:  {h}");
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IP subtrees are shown as networks only when they are 8 or 32 bytes with a contiguous
    /// mask; anything else is shown raw and marked, never guessed at.
    #[test]
    fn ip_subtrees_are_shown_as_networks_only_when_well_formed() {
        use x509_parser::extensions::GeneralName as G;
        let show = |b: &[u8]| subtree_name(&G::IPAddress(b));
        assert_eq!(show(&[10, 0, 0, 0, 255, 0, 0, 0]), "ip:10.0.0.0/8");
        assert_eq!(
            show(&[192, 168, 0, 0, 255, 255, 240, 0]),
            "ip:192.168.0.0/20"
        );
        assert_eq!(show(&[0; 8]), "ip:0.0.0.0/0");
        let mut v6 = [0u8; 32];
        v6[0] = 0xfd;
        v6[16] = 0xff;
        assert_eq!(show(&v6), "ip:fd00::/8");
        assert!(show(&[10, 0, 0, 0, 255, 0, 255, 0]).ends_with("(invalid)"));
        assert!(show(&[10, 0, 0, 0, 0, 255, 0, 0]).ends_with("(invalid)"));
        assert!(show(&[10, 0, 0, 0, 255, 0, 0, 0, 0]).ends_with("(invalid)"));
        assert!(show(&[]).ends_with("(invalid)"));
    }

    /// Keys are described from PEM (plain, encrypted with and without the passphrase) and DER,
    /// through the wiped decode and re-encoding.
    #[test]
    fn keys_are_described_from_pem_and_der() {
        let k = PrivateKey::generate(crate::KeyAlgorithm::EcdsaP256).unwrap();
        let spki = Some(sha256_hex(&k.public_key_spki()));
        let enc = k.to_encrypted_pem_with_iterations(b"pw", 1000).unwrap();
        let now = OffsetDateTime::now_utc();
        for (input, passphrase, encrypted, spki) in [
            (k.to_pem().as_bytes().to_vec(), None, false, &spki),
            (k.pkcs8_der().to_vec(), None, false, &spki),
            (enc.as_bytes().to_vec(), Some(&b"pw"[..]), true, &spki),
            (enc.as_bytes().to_vec(), None, true, &None),
        ] {
            let objects = describe(&input, now, passphrase).unwrap();
            let [Object::PrivateKey(info)] = &objects[..] else {
                panic!("one key expected: {}", objects.len());
            };
            assert_eq!(info.encrypted, encrypted);
            assert_eq!(&info.spki_sha256, spki);
        }
    }
}
