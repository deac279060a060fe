//! Root and intermediate CAs and leaf certificates, from profiles that are right by
//! construction.

use std::fmt;
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, CrlDistributionPoint, CustomExtension, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose, PublicKeyData,
};
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::ParsedExtension;

use crate::names::{NameConstraints, San};
use crate::pem_io;
use crate::serial::Serial;
use crate::{Error, PrivateKey, Result};

/// Backdating of `notBefore` so that peers with a slightly slow clock accept a new certificate.
pub const CLOCK_SKEW_BACKDATE: Duration = Duration::minutes(5);
/// Default lifetime of a root CA: 10 years.
pub const DEFAULT_ROOT_DAYS: i64 = 3650;
/// Default lifetime of an intermediate CA: 3 years.
pub const DEFAULT_INTERMEDIATE_DAYS: i64 = 1095;
/// Default lifetime of server and client certificates: 90 days (the seed's 365 days is longer
/// than modern practice; automate renewal instead).
pub const DEFAULT_LEAF_DAYS: i64 = 90;
/// Suggested lifetime of a delegated OCSP signing certificate: 30 days. It carries
/// id-pkix-ocsp-nocheck, so relying parties cannot check its revocation: keep it short and
/// rotate it.
pub const DEFAULT_OCSP_SIGNER_DAYS: i64 = 30;
/// Longest publication URL accepted (CRL distribution point, OCSP responder).
pub const MAX_URL_LEN: usize = 1024;

/// Subject distinguished name fields mtls sets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Subject {
    pub common_name: String,
    pub organization: Option<String>,
    pub organizational_unit: Option<String>,
    pub country: Option<String>,
}

impl Subject {
    /// A subject with only a common name.
    pub fn cn(cn: impl Into<String>) -> Self {
        Subject {
            common_name: cn.into(),
            ..Default::default()
        }
    }

    /// The fields mtls issues (CN, O, OU, C; the first of each) read from a name, as a CSR or
    /// a certificate carries it. A field that is not a string is refused.
    pub fn from_name(name: &x509_parser::x509::X509Name<'_>) -> Result<Self> {
        let get =
            |oid: &x509_parser::der_parser::oid::Oid<'_>, field: &str| -> Result<Option<String>> {
                match name.iter_by_oid(oid).next() {
                    None => Ok(None),
                    Some(attr) => {
                        attr.as_str()
                            .map(|s| Some(s.to_string()))
                            .map_err(|_| Error::InvalidName {
                                value: field.to_string(),
                                reason: "the subject attribute is not a string",
                            })
                    }
                }
            };
        use x509_parser::oid_registry as oids;
        Ok(Subject {
            common_name: get(&oids::OID_X509_COMMON_NAME, "CN")?.unwrap_or_default(),
            organization: get(&oids::OID_X509_ORGANIZATION_NAME, "O")?,
            organizational_unit: get(&oids::OID_X509_ORGANIZATIONAL_UNIT, "OU")?,
            country: get(&oids::OID_X509_COUNTRY_NAME, "C")?,
        })
    }

    /// Checks the fields as issuing would (1 to 64 characters, no control characters, a
    /// two-letter country), without issuing.
    pub fn check(&self) -> Result<()> {
        self.to_dn().map(|_| ())
    }

    pub(crate) fn to_dn(&self) -> Result<DistinguishedName> {
        let bad = |value: &str, reason| Error::InvalidName {
            value: value.into(),
            reason,
        };
        let check = |v: &str| -> Result<()> {
            if v.is_empty() || v.chars().count() > 64 {
                return Err(bad(v, "subject fields are 1 to 64 characters"));
            }
            if v.chars().any(|c| c.is_control()) {
                return Err(bad(
                    v,
                    "control characters are not allowed in subject fields",
                ));
            }
            Ok(())
        };
        let mut dn = DistinguishedName::new();
        if let Some(c) = &self.country {
            if c.len() != 2 || !c.chars().all(|ch| ch.is_ascii_uppercase()) {
                return Err(bad(c, "country is a two-letter upper-case ISO 3166 code"));
            }
            let p = rcgen::string::PrintableString::try_from(c.as_str())
                .map_err(|_| bad(c, "not printable"))?;
            dn.push(DnType::CountryName, DnValue::PrintableString(p));
        }
        if let Some(o) = &self.organization {
            check(o)?;
            dn.push(DnType::OrganizationName, o.as_str());
        }
        if let Some(ou) = &self.organizational_unit {
            check(ou)?;
            dn.push(DnType::OrganizationalUnitName, ou.as_str());
        }
        check(&self.common_name)?;
        dn.push(DnType::CommonName, self.common_name.as_str());
        Ok(dn)
    }
}

/// The two leaf profiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// TLS server: serverAuth EKU, at least one DNS or IP SAN.
    Server,
    /// TLS client: clientAuth EKU.
    Client,
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::Server => "server",
            Profile::Client => "client",
        })
    }
}

impl FromStr for Profile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "server" => Ok(Profile::Server),
            "client" => Ok(Profile::Client),
            _ => Err(Error::malformed(
                "profile",
                format!("{s:?} (use server or client)"),
            )),
        }
    }
}

/// The CA's key as rcgen's signer, shared with [`CaCert::key`] (one copy of the secret).
struct SharedKey(std::sync::Arc<PrivateKey>);

impl rcgen::PublicKeyData for SharedKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.key_pair().der_bytes()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen::PublicKeyData::algorithm(self.0.key_pair())
    }
}

impl rcgen::SigningKey for SharedKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        self.0.key_pair().sign(msg)
    }
}

/// Stands in for the CA's key in a dry run: the public half and algorithm are the CA's, and
/// "signing" returns an empty signature without touching the secret.
struct DryRunKey<'a>(&'a PrivateKey);

impl rcgen::PublicKeyData for DryRunKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.key_pair().der_bytes()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen::PublicKeyData::algorithm(self.0.key_pair())
    }
}

impl rcgen::SigningKey for DryRunKey<'_> {
    fn sign(&self, _msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        Ok(Vec::new())
    }
}

/// rcgen does not copy the CA's subject into the issuer field of what it signs: it re-encodes
/// it from a map keyed by attribute type, so a subject with a repeated type (`DC=com,
/// DC=example`, two `OU`s) or an encoding it does not reproduce gives certificates and CRLs
/// whose issuer is not the CA's subject, which never verify. Encode one throwaway certificate
/// (no signature is made) and compare its issuer with the CA's subject byte for byte, once per
/// CA: nothing is added per issued certificate.
fn check_issuer_name_round_trips(
    der: &CertificateDer<'_>,
    subject_raw: &[u8],
    subject: &str,
    key: &PrivateKey,
) -> Result<()> {
    let refused = |reason: String| Error::IssuerNameNotReproducible {
        subject: subject.to_owned(),
        reason,
    };
    let dry_run = Issuer::from_ca_cert_der(der, DryRunKey(key))
        .map_err(|e| refused(format!("the certificate library cannot read it ({e})")))?;
    let probe = CertificateParams::default()
        .signed_by(&DryRunKey(key), &dry_run)
        .map_err(|e| refused(format!("the certificate library cannot encode it ({e})")))?;
    let (_, probe) = x509_parser::parse_x509_certificate(probe.der()).map_err(|e| {
        refused(format!(
            "the certificate library encodes it unreadably ({e})"
        ))
    })?;
    if probe.issuer().as_raw() != subject_raw {
        return Err(refused(format!(
            "it would be written as {:?}; the certificate library keeps one value per attribute \
             type and its own string encodings, so a subject that repeats an attribute type \
             (two DC or OU values) or uses another encoding cannot be reproduced",
            probe.issuer().to_string()
        )));
    }
    Ok(())
}

/// A CA certificate with its private key, ready to sign.
pub struct CaCert {
    der: CertificateDer<'static>,
    key: std::sync::Arc<PrivateKey>,
    /// rcgen's view of the issuer (name, key identifier, key usages), parsed once: an online CA
    /// signs with it on every request.
    issuer: Issuer<'static, SharedKey>,
    subject: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// Its basicConstraints pathLenConstraint: how many CAs may follow it in a path.
    path_len: Option<u32>,
    /// Its name constraints, when it has any: what it issues is checked against them.
    name_constraints: Option<NameCheck>,
}

/// How a CA's name constraints are checked at issuance.
#[derive(Clone, Debug)]
enum NameCheck {
    /// With rustls-webpki under `anchor` (the CA's subject, key and name constraints), plus the
    /// DNS subtrees for a host-name CN.
    Dns {
        anchor: rustls_pki_types::TrustAnchor<'static>,
        permitted: Vec<String>,
        excluded: Vec<String>,
    },
    /// Nothing can be issued under them, for this reason (CRLs are still signed: revocation
    /// must never be blocked).
    Unusable(String),
}

impl std::fmt::Debug for CaCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaCert")
            .field("subject", &self.subject)
            .field("key", &self.key)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CaCert {
    /// Pairs a CA certificate with its key after checking that the certificate is a CA allowed
    /// to sign certificates and that the key belongs to it.
    pub fn new(der: CertificateDer<'static>, key: PrivateKey) -> Result<Self> {
        let cert = pem_io::parse_certificate(&der)?;
        let subject = cert.subject().to_string();
        let constraints = cert.basic_constraints().ok().flatten().map(|bc| bc.value);
        let is_ca = constraints.is_some_and(|bc| bc.ca);
        let path_len = constraints.and_then(|bc| bc.path_len_constraint);
        let name_constraints = name_check(&cert, &der);
        let can_sign = match cert.key_usage() {
            Ok(Some(ku)) => ku.value.key_cert_sign(),
            Ok(None) => true,
            Err(_) => false,
        };
        if !is_ca || !can_sign {
            return Err(Error::NotACa(subject));
        }
        if !key.matches_spki(cert.public_key().raw) {
            return Err(Error::KeyMismatch);
        }
        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();
        check_issuer_name_round_trips(&der, cert.subject().as_raw(), &subject, &key)?;
        let key = std::sync::Arc::new(key);
        let issuer = Issuer::from_ca_cert_der(&der, SharedKey(key.clone()))?;
        Ok(CaCert {
            der,
            key,
            issuer,
            subject,
            not_before,
            not_after,
            path_len,
            name_constraints,
        })
    }

    /// Loads a CA from PEM/DER certificate bytes (the first certificate) and a key.
    pub fn from_pem(cert: &[u8], key: PrivateKey) -> Result<Self> {
        let der = pem_io::certificates(cert)?
            .into_iter()
            .next()
            .ok_or(Error::NotFound {
                what: "certificate",
            })?;
        Self::new(der, key)
    }

    /// A stand-in for the CA of `der` when its key is not at hand: the same subject, validity
    /// and name constraints, a throwaway key, and an anchor that trusts that key. What
    /// [`issue_leaf`] refuses under it, it refuses under the real CA, for the same reason.
    fn stand_in(der: &CertificateDer<'static>) -> Result<Self> {
        let cert = pem_io::parse_certificate(der)?;
        let key = PrivateKey::generate(crate::KeyAlgorithm::EcdsaP256)?;
        let mut name_constraints = name_check(&cert, der);
        if let Some(NameCheck::Dns { anchor, .. }) = &mut name_constraints {
            let own = CertificateParams::default().self_signed(key.key_pair())?;
            let own = webpki::anchor_from_trusted_cert(own.der()).map_err(|e| {
                Error::IssuedUnverifiable {
                    issuer: cert.subject().to_string(),
                    detail: format!("{e:?}"),
                }
            })?;
            anchor.subject_public_key_info = own.to_owned().subject_public_key_info;
        }
        let key = std::sync::Arc::new(key);
        Ok(CaCert {
            der: der.clone(),
            issuer: Issuer::from_ca_cert_der(der, SharedKey(key.clone()))?,
            key,
            subject: cert.subject().to_string(),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            path_len: None,
            name_constraints,
        })
    }

    /// The certificate, DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The certificate, PEM.
    pub fn pem(&self) -> String {
        pem_io::encode("CERTIFICATE", &self.der)
    }

    /// The subject, as a string (`CN=…, O=…`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The CA's private key.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// End of the CA's validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, impl rcgen::SigningKey> {
        &self.issuer
    }

    /// Fails unless the CA can sign at `now`.
    pub fn check_valid_at(&self, now: OffsetDateTime) -> Result<()> {
        if now < self.not_before || now > self.not_after {
            return Err(Error::IssuerNotValid {
                subject: self.subject.clone(),
                now,
                not_before: self.not_before,
                not_after: self.not_after,
            });
        }
        Ok(())
    }

    /// Computes a validity window starting at `now` (backdated for clock skew, never before the
    /// CA's own notBefore) and capped at the CA's notAfter, so no certificate outlives its issuer.
    fn window(
        &self,
        now: OffsetDateTime,
        lifetime: Duration,
    ) -> Result<(OffsetDateTime, OffsetDateTime)> {
        self.check_valid_at(now)?;
        if lifetime <= Duration::ZERO {
            return Err(Error::InvalidValidity(
                "the lifetime must be positive".into(),
            ));
        }
        let not_before = (now - CLOCK_SKEW_BACKDATE).max(self.not_before);
        let not_after = end_of(now, lifetime)?.min(self.not_after);
        Ok((truncate(not_before), truncate(not_after)))
    }
}

/// `now + lifetime`, or a validity error when that is past the year 9999 (the last year X.509
/// and the time crate can express) instead of an overflow panic.
pub fn end_of(now: OffsetDateTime, lifetime: Duration) -> Result<OffsetDateTime> {
    now.checked_add(lifetime).ok_or_else(|| {
        Error::InvalidValidity(format!(
            "a lifetime of {} days from {} ends after the year 9999",
            lifetime.whole_days(),
            crate::rfc3339(&now)
        ))
    })
}

/// A lifetime of `days` days, refused when it is not positive or when, counted from `now`, it
/// ends after the year 9999 (checked arithmetic: a huge count is an error, not a panic).
pub fn lifetime_days(days: i64, now: OffsetDateTime) -> Result<Duration> {
    if days <= 0 {
        return Err(Error::InvalidValidity(format!(
            "{days} days: the lifetime must be a positive number of days"
        )));
    }
    let lifetime = days
        .checked_mul(86_400)
        .map(Duration::seconds)
        .ok_or_else(|| {
            Error::InvalidValidity(format!(
                "{days} days: the lifetime ends after the year 9999"
            ))
        })?;
    end_of(now, lifetime)?;
    Ok(lifetime)
}

/// X.509 times have second precision; drop the rest so what we record equals what we encode.
fn truncate(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

/// A freshly issued certificate.
#[derive(Clone, Debug)]
pub struct Issued {
    pub der: CertificateDer<'static>,
    pub serial: Serial,
    pub subject: String,
    pub sans: Vec<San>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Issued {
    /// PEM of the certificate.
    pub fn pem(&self) -> String {
        pem_io::encode("CERTIFICATE", &self.der)
    }
}

fn ca_params(
    subject: &Subject,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    constraints: BasicConstraints,
    serial: &Serial,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject.to_dn()?;
    params.not_before = truncate(not_before);
    params.not_after = truncate(not_after);
    params.serial_number = Some(serial.to_rcgen());
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    Ok(params)
}

/// Creates a self-signed root CA (CA:TRUE critical, keyCertSign + cRLSign, SKI).
pub fn new_root(
    subject: &Subject,
    key: PrivateKey,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<CaCert> {
    if lifetime <= Duration::ZERO {
        return Err(Error::InvalidValidity(
            "the lifetime must be positive".into(),
        ));
    }
    let not_after = end_of(now, lifetime)?;
    let serial = Serial::random()?;
    let params = ca_params(
        subject,
        now - CLOCK_SKEW_BACKDATE,
        not_after,
        BasicConstraints::Unconstrained,
        &serial,
    )?;
    let cert = params.self_signed(key.key_pair())?;
    CaCert::new(cert.der().clone(), key)
}

/// Creates an intermediate CA under `root` (pathLen 0 by default: it may sign only leaves).
pub fn new_intermediate(
    root: &CaCert,
    subject: &Subject,
    key: PrivateKey,
    now: OffsetDateTime,
    lifetime: Duration,
    path_len: u8,
) -> Result<CaCert> {
    new_constrained_intermediate(
        root,
        subject,
        key,
        now,
        lifetime,
        path_len,
        &NameConstraints::default(),
    )
}

/// [`new_intermediate`], limited to certifying the names `constraints` permits (a critical
/// name constraints extension; none when `constraints` is empty).
pub fn new_constrained_intermediate(
    root: &CaCert,
    subject: &Subject,
    key: PrivateKey,
    now: OffsetDateTime,
    lifetime: Duration,
    path_len: u8,
    constraints: &NameConstraints,
) -> Result<CaCert> {
    let profile = IntermediateProfile {
        path_len,
        constraints: constraints.clone(),
        root_crl_url: None,
    };
    new_profiled_intermediate(root, subject, key, now, lifetime, &profile)
}

/// What a new intermediate says beyond its name, key and lifetime.
#[derive(Clone, Debug, Default)]
pub struct IntermediateProfile {
    /// Its pathLenConstraint (0: it signs leaves only).
    pub path_len: u8,
    /// The names it may certify (none: any).
    pub constraints: NameConstraints,
    /// Where the root publishes the CRL that would revoke it (the online CA's
    /// `/v1/root-crl`): its CRL distribution point, so that verifiers following distribution
    /// points (`crl_from_certificates`, `openssl verify -crl_download`) learn of its
    /// revocation with nothing configured. `http://` only, as for leaves.
    pub root_crl_url: Option<String>,
}

/// A new intermediate signed by `root`, as `profile` says.
pub fn new_profiled_intermediate(
    root: &CaCert,
    subject: &Subject,
    key: PrivateKey,
    now: OffsetDateTime,
    lifetime: Duration,
    profile: &IntermediateProfile,
) -> Result<CaCert> {
    let IntermediateProfile {
        path_len,
        constraints,
        root_crl_url,
    } = profile;
    let path_len = *path_len;
    // A CA under an issuer whose pathLenConstraint it would exceed never validates.
    if let Some(max) = root.path_len.filter(|max| u32::from(path_len) >= *max) {
        return Err(Error::PathLenExceeded {
            issuer: root.subject().to_string(),
            path_len: max,
        });
    }
    let (not_before, not_after) = root.window(now, lifetime)?;
    let serial = Serial::random()?;
    let mut params = ca_params(
        subject,
        not_before,
        not_after,
        BasicConstraints::Constrained(path_len),
        &serial,
    )?;
    params.use_authority_key_identifier_extension = true;
    params.name_constraints = constraints.to_rcgen();
    PublicationUrls {
        crl: root_crl_url.clone(),
        ocsp: None,
    }
    .apply(&mut params)?;
    let cert = params.signed_by(key.key_pair(), root.issuer())?;
    CaCert::new(cert.der().clone(), key)
}

/// Where relying parties find revocation information for a leaf certificate. Both are
/// optional; the default publishes nothing.
///
/// Only `http://` URLs are accepted: RFC 5280 and RFC 5019 name HTTP for CRL and OCSP
/// retrieval, and fetching revocation data over `https://` would need a revocation check of
/// its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublicationUrls {
    /// CRL distribution point (the CRL Distribution Points extension, one fullName URI).
    pub crl: Option<String>,
    /// OCSP responder (the Authority Information Access extension, id-ad-ocsp).
    pub ocsp: Option<String>,
}

impl PublicationUrls {
    /// Checks both URLs: printable ASCII, `http://` with a host, at most [`MAX_URL_LEN`] bytes.
    pub fn check(&self) -> Result<()> {
        for url in [&self.crl, &self.ocsp].into_iter().flatten() {
            check_http_url(url)?;
        }
        Ok(())
    }

    /// Adds the extensions to `params`.
    fn apply(&self, params: &mut CertificateParams) -> Result<()> {
        let PublicationUrls { crl, ocsp } = self;
        if let Some(crl) = crl {
            check_http_url(crl)?;
            params.crl_distribution_points = vec![CrlDistributionPoint {
                uris: vec![crl.clone()],
            }];
        }
        if let Some(ocsp) = ocsp {
            check_http_url(ocsp)?;
            params.custom_extensions.push(aia_ocsp_extension(ocsp)?);
        }
        Ok(())
    }
}

fn check_http_url(url: &str) -> Result<()> {
    let bad = |reason| Error::InvalidUrl {
        value: url.into(),
        reason,
    };
    if url.len() > MAX_URL_LEN {
        return Err(bad("longer than 1024 bytes"));
    }
    if !url.is_ascii() || url.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return Err(bad("URLs must be printable ASCII without spaces"));
    }
    let rest = url
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
        .and_then(|_| url.get(7..))
        .ok_or(bad("only http:// URLs are published (RFC 5280, RFC 5019)"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains('@') {
        return Err(bad("the URL needs a host (and no user information)"));
    }
    Ok(())
}

/// OID arcs in the form rcgen takes.
fn oid_arcs(oid: &x509_cert::der::oid::ObjectIdentifier) -> Vec<u64> {
    oid.arcs().map(u64::from).collect()
}

/// The Authority Information Access extension with one id-ad-ocsp access description, encoded
/// by x509-cert (rcgen has no field for it).
fn aia_ocsp_extension(url: &str) -> Result<CustomExtension> {
    use x509_cert::der::asn1::Ia5String;
    use x509_cert::der::oid::{db::rfc5280::ID_AD_OCSP, AssociatedOid};
    use x509_cert::der::Encode;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::{AccessDescription, AuthorityInfoAccessSyntax};

    let location = Ia5String::new(url).map_err(|_| Error::InvalidUrl {
        value: url.into(),
        reason: "not IA5 (ASCII)",
    })?;
    let aia = AuthorityInfoAccessSyntax(vec![AccessDescription {
        access_method: ID_AD_OCSP,
        access_location: GeneralName::UniformResourceIdentifier(location),
    }]);
    let der = aia
        .to_der()
        .map_err(|e| Error::malformed("authority information access", e))?;
    // Non-critical (RFC 5280 4.2.2.1).
    Ok(CustomExtension::from_oid_content(
        &oid_arcs(&AuthorityInfoAccessSyntax::OID),
        der,
    ))
}

/// id-pkix-ocsp-nocheck (RFC 6960 4.2.2.2.1): value NULL, non-critical.
fn ocsp_nocheck_extension() -> Result<CustomExtension> {
    use x509_cert::der::asn1::Null;
    use x509_cert::der::oid::db::rfc6960::ID_PKIX_OCSP_NOCHECK;
    use x509_cert::der::Encode;
    let der = Null
        .to_der()
        .map_err(|e| Error::malformed("ocsp-nocheck extension", e))?;
    Ok(CustomExtension::from_oid_content(
        &oid_arcs(&ID_PKIX_OCSP_NOCHECK),
        der,
    ))
}

/// What a leaf certificate should say.
#[derive(Clone, Debug)]
pub struct LeafRequest {
    pub profile: Profile,
    pub subject: Subject,
    pub sans: Vec<San>,
    pub lifetime: Duration,
    /// CRL and OCSP URLs to publish in the certificate (default: none).
    pub urls: PublicationUrls,
}

impl LeafRequest {
    /// Enforces the profile's name rules and checks the publication URLs.
    pub fn check(&self) -> Result<()> {
        self.urls.check()?;
        // An X.509-SVID carries exactly one SPIFFE ID: with two, relying parties disagree on
        // which workload it is (or refuse it).
        let spiffe: Vec<&San> = self
            .sans
            .iter()
            .filter(|s| matches!(s, San::Uri(u) if u.get(..9).is_some_and(|p| p.eq_ignore_ascii_case("spiffe://"))))
            .collect();
        if let [_, second, ..] = spiffe.as_slice() {
            return Err(Error::InvalidName {
                value: second.to_string(),
                reason: "a certificate carries at most one SPIFFE ID",
            });
        }
        match self.profile {
            Profile::Server => {
                if !self
                    .sans
                    .iter()
                    .any(|s| matches!(s, San::Dns(_) | San::Ip(_)))
                {
                    return Err(Error::InvalidName {
                        value: self.subject.common_name.clone(),
                        reason: "a server certificate needs at least one DNS name or IP address",
                    });
                }
                if let Some(e) = self.sans.iter().find(|s| matches!(s, San::Email(_))) {
                    return Err(Error::InvalidName {
                        value: e.to_string(),
                        reason: "e-mail names are not allowed in server certificates",
                    });
                }
            }
            Profile::Client => {
                if let Some(w) = self
                    .sans
                    .iter()
                    .find(|s| matches!(s, San::Dns(d) if d.starts_with("*.")))
                {
                    return Err(Error::InvalidName {
                        value: w.to_string(),
                        reason: "wildcards are not allowed in client certificates",
                    });
                }
            }
        }
        Ok(())
    }
}

/// The subject of a certificate we just signed, as text (`CN=…`), in the same form as every
/// other subject in the inventory. Extensions are left unparsed: an online CA does this on
/// every request.
fn subject_of(der: &[u8]) -> Result<String> {
    use x509_parser::nom::Parser;
    let (_, cert) = x509_parser::certificate::X509CertificateParser::new()
        .with_deep_parse_extensions(false)
        .parse(der)
        .map_err(|e| Error::malformed("certificate", e))?;
    Ok(cert.subject().to_string())
}

/// Issues a leaf certificate for `public_key` from `ca`.
///
/// Always: a fresh random serial, CA:FALSE, AKI and SKI, digitalSignature (+ keyEncipherment
/// for RSA server keys), exactly one EKU from the profile. When `request.urls` says so, a CRL
/// distribution point and an Authority Information Access extension with the OCSP URL.
pub fn issue_leaf(
    ca: &CaCert,
    public_key: &impl PublicKeyData,
    request: &LeafRequest,
    now: OffsetDateTime,
) -> Result<Issued> {
    request.check()?;
    let (not_before, not_after) = ca.window(now, request.lifetime)?;
    let serial = Serial::random()?;
    let mut params = CertificateParams::default();
    let LeafRequest {
        profile,
        subject,
        sans,
        lifetime: _,
        urls,
    } = request;
    params.distinguished_name = subject.to_dn()?;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(serial.to_rcgen());
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.subject_alt_names = sans.iter().map(San::to_rcgen).collect::<Result<_>>()?;
    let rsa = public_key.algorithm() == &rcgen::PKCS_RSA_SHA256
        || public_key.algorithm() == &rcgen::PKCS_RSA_SHA384
        || public_key.algorithm() == &rcgen::PKCS_RSA_SHA512;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    match profile {
        Profile::Server => {
            if rsa {
                params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
            }
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        Profile::Client => {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    urls.apply(&mut params)?;
    let cert = params.signed_by(public_key, ca.issuer())?;
    let der = cert.der().clone();
    if let Some(NameCheck::Unusable(reason)) = &ca.name_constraints {
        return Err(Error::UnusableNameConstraints {
            subject: ca.subject().to_string(),
            reason: reason.clone(),
        });
    }
    if let Some(NameCheck::Dns {
        anchor,
        permitted,
        excluded,
    }) = &ca.name_constraints
    {
        check_name_constraints(ca, anchor, &der, *profile, sans, now)?;
        check_common_name(ca, permitted, excluded, subject, sans)?;
    }
    let subject = subject_of(&der)?;
    Ok(Issued {
        der,
        serial,
        subject,
        sans: sans.clone(),
        not_before,
        not_after,
    })
}

/// Refuses `request` when the CA of certificate `ca` would refuse to issue it at `now` (its name
/// constraints, its validity, the profile's rules), with the error [`issue_leaf`] would give,
/// without needing the CA's key: for what promises a certificate before one is signed (an
/// enrollment token), so that nothing is handed out that can only fail later.
pub fn check_issuable(
    ca: &CertificateDer<'static>,
    request: &LeafRequest,
    now: OffsetDateTime,
) -> Result<()> {
    let stand_in = CaCert::stand_in(ca)?;
    issue_leaf(&stand_in, stand_in.key.key_pair(), request, now).map(drop)
}

/// Refuses `der`, just signed by `ca`, when relying parties would refuse it for `ca`'s name
/// constraints: checked by the verifier they use (rustls-webpki, `ca` as the anchor), so the
/// rules are theirs. The certificate is then dropped, never returned or recorded.
fn check_name_constraints(
    ca: &CaCert,
    anchor: &rustls_pki_types::TrustAnchor<'static>,
    der: &CertificateDer<'static>,
    profile: Profile,
    sans: &[San],
    now: OffsetDateTime,
) -> Result<()> {
    let refused = |e: webpki::Error| Error::IssuedUnverifiable {
        issuer: ca.subject().to_string(),
        detail: format!("{e:?}"),
    };
    let leaf = webpki::EndEntityCert::try_from(der).map_err(refused)?;
    let secs = u64::try_from(now.unix_timestamp())
        .map_err(|_| Error::InvalidValidity("the clock is before 1970".into()))?;
    let time = rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
    let usage = match profile {
        Profile::Server => webpki::KeyUsage::server_auth(),
        Profile::Client => webpki::KeyUsage::client_auth(),
    };
    let anchors = [anchor.clone()];
    match leaf.verify_for_usage(
        crate::signature::SIGNATURE_ALGORITHMS,
        &anchors,
        &[],
        time,
        usage,
        None,
        None,
    ) {
        Ok(_) => Ok(()),
        // A name of the request webpki cannot read: the request's fault, not the CA's.
        Err(webpki::Error::MalformedDnsIdentifier) => Err(Error::InvalidName {
            value: sans
                .iter()
                .map(San::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            reason: "rustls-webpki cannot read one of these DNS names",
        }),
        Err(webpki::Error::NameConstraintViolation) => Err(Error::NameNotPermitted {
            issuer: ca.subject().to_string(),
            names: sans
                .iter()
                .map(San::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }),
        Err(e) => Err(refused(e)),
    }
}

/// How `cert`'s name constraints are checked at issuance, `None` without any. Unusable: a name
/// form rustls-webpki does not support (it refuses every certificate under a directoryName
/// constraint, and every URI or e-mail name under URI or e-mail ones), or an extension that
/// does not parse.
fn name_check(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    der: &CertificateDer<'static>,
) -> Option<NameCheck> {
    use x509_parser::extensions::GeneralName as G;
    let nc = match cert.name_constraints() {
        Ok(None) => return None,
        Ok(Some(nc)) => nc.value,
        Err(e) => {
            return Some(NameCheck::Unusable(format!(
                "its name constraints do not parse ({e})"
            )))
        }
    };
    let (mut permitted, mut excluded) = (Vec::new(), Vec::new());
    for (subtrees, out) in [
        (&nc.permitted_subtrees, &mut permitted),
        (&nc.excluded_subtrees, &mut excluded),
    ] {
        for s in subtrees.iter().flatten() {
            match &s.base {
                G::DNSName(d) => out.push(d.to_ascii_lowercase()),
                G::IPAddress(_) => {}
                other => {
                    return Some(NameCheck::Unusable(format!(
                        "its name constraints name {other:?}: only DNS and IP subtrees are \
                         supported by rustls-webpki, which every verifier of mtls uses"
                    )))
                }
            }
        }
    }
    match webpki::anchor_from_trusted_cert(der) {
        Ok(anchor) => Some(NameCheck::Dns {
            anchor: anchor.to_owned(),
            permitted,
            excluded,
        }),
        Err(e) => Some(NameCheck::Unusable(format!(
            "rustls-webpki cannot read it as a CA ({e:?})"
        ))),
    }
}

/// Whether `name` is covered by the DNS subtree `base` (RFC 5280 4.2.1.10: the name itself or
/// any name made by adding labels on the left).
fn dns_in_subtree(name: &str, base: &str) -> bool {
    let base = base.trim_start_matches('.');
    name == base || name.ends_with(&format!(".{base}")) || base.is_empty()
}

/// A certificate with no DNS SAN whose CN looks like a host name has that CN checked against
/// the DNS name constraints by OpenSSL (`NAME_CONSTRAINTS_check_CN`), though not by
/// rustls-webpki: refuse it when it falls outside, so that every relying party accepts what
/// mtls issues.
fn check_common_name(
    ca: &CaCert,
    permitted: &[String],
    excluded: &[String],
    subject: &Subject,
    sans: &[San],
) -> Result<()> {
    if sans.iter().any(|s| matches!(s, San::Dns(_))) {
        return Ok(());
    }
    let cn = subject.common_name.to_ascii_lowercase();
    let host_like = cn.contains('.')
        && cn.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !host_like {
        return Ok(());
    }
    let inside = permitted.is_empty() || permitted.iter().any(|b| dns_in_subtree(&cn, b));
    if inside && !excluded.iter().any(|b| dns_in_subtree(&cn, b)) {
        return Ok(());
    }
    Err(Error::NameNotPermitted {
        issuer: ca.subject().to_string(),
        names: format!(
            "CN={cn} (a host name: OpenSSL checks it when there is no DNS SAN; give a CN \
             inside the constraints, or one without dots)"
        ),
    })
}

/// Issues a delegated OCSP signing certificate for `public_key` from `ca` (RFC 6960 4.2.2.2).
///
/// Always: a fresh random serial, CA:FALSE, AKI and SKI, keyUsage digitalSignature, the single
/// EKU id-kp-OCSPSigning and id-pkix-ocsp-nocheck (relying parties do not check the signer's own
/// revocation status, so keep `lifetime` short: see [`DEFAULT_OCSP_SIGNER_DAYS`]). No SANs, no
/// publication URLs.
pub fn issue_ocsp_signer(
    ca: &CaCert,
    public_key: &impl PublicKeyData,
    subject: &Subject,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<Issued> {
    let (not_before, not_after) = ca.window(now, lifetime)?;
    let serial = Serial::random()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject.to_dn()?;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(serial.to_rcgen());
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
    params.custom_extensions = vec![ocsp_nocheck_extension()?];
    let cert = params.signed_by(public_key, ca.issuer())?;
    let der = cert.der().clone();
    let subject = subject_of(&der)?;
    Ok(Issued {
        der,
        serial,
        subject,
        sans: Vec::new(),
        not_before,
        not_after,
    })
}

/// Reads the SANs of a certificate into [`San`] values (unsupported kinds are skipped).
pub fn certificate_sans(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<San> {
    use x509_parser::extensions::GeneralName;
    let mut out = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for gn in &san.general_names {
                match gn {
                    GeneralName::DNSName(d) => out.push(San::Dns((*d).to_string())),
                    GeneralName::URI(u) => out.push(San::Uri((*u).to_string())),
                    GeneralName::RFC822Name(e) => out.push(San::Email((*e).to_string())),
                    GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            out.push(San::Ip(a.into()));
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            out.push(San::Ip(a.into()));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::names::NameSubtree;
    use crate::KeyAlgorithm;

    /// An X.509-SVID names one workload: a second SPIFFE ID is refused (another URI is not).
    #[test]
    fn at_most_one_spiffe_id() {
        let request = |uris: &[&str]| LeafRequest {
            profile: Profile::Client,
            subject: Subject::cn("w"),
            sans: uris.iter().map(|u| San::uri(u).unwrap()).collect(),
            lifetime: Duration::days(1),
            urls: PublicationUrls::default(),
        };
        request(&["spiffe://td/a", "https://example.com/x"])
            .check()
            .unwrap();
        let e = request(&["spiffe://td/a", "spiffe://td/admin"])
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("at most one SPIFFE ID"), "{e}");
    }

    fn key() -> PrivateKey {
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap()
    }

    fn constrained(now: OffsetDateTime) -> CaCert {
        let root = new_root(&Subject::cn("Root"), key(), now, Duration::days(30)).unwrap();
        let constraints = NameConstraints {
            permitted: vec![NameSubtree::parse("dns:svc.internal").unwrap()],
            excluded: vec![NameSubtree::parse("dns:admin.svc.internal").unwrap()],
        };
        new_constrained_intermediate(
            &root,
            &Subject::cn("Constrained"),
            key(),
            now,
            Duration::days(10),
            0,
            &constraints,
        )
        .unwrap()
    }

    fn client(cn: &str, sans: Vec<San>) -> LeafRequest {
        LeafRequest {
            profile: Profile::Client,
            subject: Subject::cn(cn),
            sans,
            lifetime: Duration::days(1),
            urls: PublicationUrls::default(),
        }
    }

    /// Without a DNS SAN, a host-name-like CN is held to the DNS constraints (OpenSSL checks it
    /// then); with one, or with a CN that is no host name, the CN is not.
    #[test]
    fn a_host_name_cn_without_dns_san_is_held_to_the_constraints() {
        let now = OffsetDateTime::now_utc();
        let ca = constrained(now);
        let spiffe = || vec![San::uri("spiffe://svc.internal/billing").unwrap()];
        let issue = |r: &LeafRequest| issue_leaf(&ca, key().key_pair(), r, now);
        // OpenSSL reads `_` as part of a host name too.
        for refused in [
            "billing.prod",
            "svc.internal.evil",
            "x.admin.svc.internal",
            "billing_prod.x",
        ] {
            let e = issue(&client(refused, spiffe())).unwrap_err();
            assert!(
                matches!(&e, Error::NameNotPermitted { names, .. } if names.contains(refused)),
                "{refused}: {e}"
            );
        }
        for accepted in ["billing", "billing.svc.internal", "billing_prod"] {
            issue(&client(accepted, spiffe())).unwrap();
        }
        // A DNS SAN inside: the CN is not the name relying parties check.
        issue(&client(
            "billing.prod",
            vec![San::dns("billing.svc.internal").unwrap()],
        ))
        .unwrap();
    }

    /// A CA whose name constraints use a form rustls-webpki refuses for every certificate
    /// (directoryName) issues nothing, with that reason rather than a misleading one, and
    /// still signs CRLs: revocation is never blocked.
    #[test]
    fn a_ca_with_directory_name_constraints_issues_nothing_but_signs_crls() {
        let now = OffsetDateTime::now_utc();
        let root = new_root(&Subject::cn("Root"), key(), now, Duration::days(30)).unwrap();
        let mut params = ca_params(
            &Subject::cn("By directory"),
            now,
            now + Duration::days(10),
            BasicConstraints::Constrained(0),
            &Serial::random().unwrap(),
        )
        .unwrap();
        params.name_constraints = Some(rcgen::NameConstraints {
            permitted_subtrees: vec![rcgen::GeneralSubtree::DirectoryName(
                Subject::cn("x").to_dn().unwrap(),
            )],
            excluded_subtrees: Vec::new(),
        });
        let k = key();
        let der = params
            .signed_by(k.key_pair(), root.issuer())
            .unwrap()
            .der()
            .clone();
        let ca = CaCert::new(der, k).unwrap();
        let e = issue_leaf(&ca, key().key_pair(), &client("worker", Vec::new()), now).unwrap_err();
        assert!(
            matches!(&e, Error::UnusableNameConstraints { reason, .. } if reason.contains("only DNS and IP")),
            "{e}"
        );
        crate::revocation::build_crl(&ca, 1, now, Duration::days(1), &[]).unwrap();
        // Without the key too (what an enrollment token is checked with).
        let e = check_issuable(ca.der(), &client("worker", Vec::new()), now).unwrap_err();
        assert!(matches!(e, Error::UnusableNameConstraints { .. }), "{e}");
    }

    /// `check_issuable`, which has only the CA certificate, decides as `issue_leaf` with the
    /// CA's key does, with the same error, for each reason.
    #[test]
    fn check_issuable_decides_as_issue_leaf_without_the_key() {
        let now = OffsetDateTime::now_utc();
        let ca = constrained(now);
        let server = |cn: &str, sans: &[&str]| LeafRequest {
            profile: Profile::Server,
            subject: Subject::cn(cn),
            sans: sans.iter().map(|s| San::parse(s).unwrap()).collect(),
            lifetime: Duration::days(1),
            urls: PublicationUrls::default(),
        };
        let spiffe = vec![San::uri("spiffe://svc.internal/billing").unwrap()];
        let cases = [
            (server("api", &["dns:api.svc.internal"]), "accepted"),
            (server("api", &["ip:10.0.0.1"]), "accepted"),
            (server("api", &["dns:api.other.example"]), "outside"),
            (server("api", &["dns:svc.internal.evil"]), "outside"),
            (server("api", &["dns:x.admin.svc.internal"]), "excluded"),
            (client("billing.prod", spiffe.clone()), "host-name CN"),
            (client("billing", spiffe), "accepted"),
            (server("api", &[]), "no server name"),
        ];
        for (request, why) in &cases {
            let with_key = issue_leaf(&ca, key().key_pair(), request, now).map(drop);
            let without = check_issuable(ca.der(), request, now);
            assert_eq!(
                format!("{with_key:?}"),
                format!("{without:?}"),
                "{why}: {:?}",
                request.sans
            );
            assert_eq!(without.is_ok(), *why == "accepted", "{why}: {without:?}");
        }
        let e = check_issuable(ca.der(), &cases[0].0, now + Duration::days(11)).unwrap_err();
        assert!(matches!(e, Error::IssuerNotValid { .. }), "{e}");
        // A CA without name constraints.
        let root = new_root(&Subject::cn("Root"), key(), now, Duration::days(30)).unwrap();
        check_issuable(root.der(), &server("api", &["dns:anything.example"]), now).unwrap();
    }
}
