//! Revocation reasons and CRL encoding/decoding.

use std::fmt;
use std::str::FromStr;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use serde::Serialize;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::issue::CaCert;
use crate::serial::Serial;
pub use crate::signature::SignedParts;
use crate::{Error, Result};

/// Default CRL lifetime (nextUpdate − thisUpdate): 7 days.
pub const DEFAULT_CRL_DAYS: i64 = 7;

/// RFC 5280 CRLReason values mtls accepts (removeFromCRL is for delta CRLs and not offered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    CertificateHold,
    PrivilegeWithdrawn,
    AaCompromise,
}

impl RevocationReason {
    const NAMES: [(&'static str, RevocationReason); 9] = [
        ("unspecified", RevocationReason::Unspecified),
        ("keyCompromise", RevocationReason::KeyCompromise),
        ("cACompromise", RevocationReason::CaCompromise),
        ("affiliationChanged", RevocationReason::AffiliationChanged),
        ("superseded", RevocationReason::Superseded),
        (
            "cessationOfOperation",
            RevocationReason::CessationOfOperation,
        ),
        ("certificateHold", RevocationReason::CertificateHold),
        ("privilegeWithdrawn", RevocationReason::PrivilegeWithdrawn),
        ("aACompromise", RevocationReason::AaCompromise),
    ];

    fn to_rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            RevocationReason::Unspecified => R::Unspecified,
            RevocationReason::KeyCompromise => R::KeyCompromise,
            RevocationReason::CaCompromise => R::CaCompromise,
            RevocationReason::AffiliationChanged => R::AffiliationChanged,
            RevocationReason::Superseded => R::Superseded,
            RevocationReason::CessationOfOperation => R::CessationOfOperation,
            RevocationReason::CertificateHold => R::CertificateHold,
            RevocationReason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
            RevocationReason::AaCompromise => R::AaCompromise,
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::NAMES
            .iter()
            .find(|(_, r)| r == self)
            .map(|(n, _)| *n)
            .unwrap_or("unspecified");
        f.write_str(name)
    }
}

impl FromStr for RevocationReason {
    type Err = Error;
    /// Case-insensitive RFC 5280 names (`keyCompromise`, `key-compromise`, `key_compromise`).
    fn from_str(s: &str) -> Result<Self> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        Self::NAMES
            .iter()
            .find(|(n, _)| n.to_ascii_lowercase() == norm)
            .map(|(_, r)| *r)
            .ok_or_else(|| {
                Error::malformed(
                    "revocation reason",
                    format!(
                        "{s:?}; use one of {}",
                        Self::NAMES.map(|(n, _)| n).join(", ")
                    ),
                )
            })
    }
}

/// One revoked certificate, as listed in a CRL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedEntry {
    pub serial: Serial,
    pub revoked_at: OffsetDateTime,
    pub reason: Option<RevocationReason>,
}

/// Builds a CRL signed by `ca`, with a CRL number, thisUpdate/nextUpdate, AKI and reasons.
pub fn build_crl(
    ca: &CaCert,
    crl_number: u64,
    this_update: OffsetDateTime,
    lifetime: Duration,
    entries: &[RevokedEntry],
) -> Result<CertificateRevocationListDer<'static>> {
    ca.check_valid_at(this_update)?;
    if lifetime <= Duration::ZERO {
        return Err(Error::InvalidValidity(
            "the CRL lifetime must be positive".into(),
        ));
    }
    let this_update = this_update.replace_nanosecond(0).unwrap_or(this_update);
    let params = CertificateRevocationListParams {
        this_update,
        next_update: crate::issue::end_of(this_update, lifetime)?,
        crl_number: rcgen::SerialNumber::from_slice(&crl_number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: entries
            .iter()
            .map(|e| RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(e.serial.as_bytes()),
                revocation_time: e.revoked_at.replace_nanosecond(0).unwrap_or(e.revoked_at),
                reason_code: e.reason.map(RevocationReason::to_rcgen),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    // The AKI must equal the CA's SKI: take the issuer from the CA certificate.
    let crl = params.signed_by(ca.issuer())?;
    Ok(crl.der().clone())
}

/// The CRL that follows `previous` (a CRL of `ca`, verified here; `None` for the first):
/// its entries carried over, each certificate of `revoke` added (each must have been issued
/// by `ca`; one listed already keeps its first entry), the next CRL number. For a CA whose
/// key is kept offline (a root revoking an intermediate), where no inventory lists what was
/// revoked: the last CRL is the record.
pub fn extend_crl(
    ca: &CaCert,
    previous: Option<&[u8]>,
    revoke: &[CertificateDer<'_>],
    reason: Option<RevocationReason>,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<CertificateRevocationListDer<'static>> {
    let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.der())
        .map_err(|e| Error::malformed("certificate", e))?;
    let ca_name = ca_cert.subject().as_raw();
    let spki = ca_cert.public_key().raw;
    let not_ours = |what: String| Error::NotIssuedBy {
        what,
        issuer: ca.subject().to_string(),
    };
    // Issued by `ca`: its name as issuer and a signature its key verifies (with an algorithm
    // of SIGNATURE_ALGORITHMS, as everything mtls verifies).
    let issued = |issuer: &[u8], signed: &[u8], what: &'static str| -> Result<bool> {
        let (parts, _) = SignedParts::split(what, signed)?;
        Ok(issuer == ca_name && parts.verify(spki).is_ok())
    };
    let (mut entries, number) = match previous {
        None => (Vec::new(), 0),
        Some(der) => {
            let crl = parse_crl(der)?;
            if !issued(crl.issuer().as_raw(), der, "CRL")? {
                return Err(not_ours(format!(
                    "the previous CRL (issuer {})",
                    crl.issuer()
                )));
            }
            let number = crl
                .crl_number()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| Error::malformed("CRL", "no usable CRL number"))?;
            (crl_entries(der)?, number)
        }
    };
    for der in revoke {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| Error::malformed("certificate", e))?;
        let name = cert.subject().to_string();
        if der.as_ref() == ca.der().as_ref() {
            return Err(not_ours(format!("{name:?} (the CA itself)")));
        }
        if !issued(cert.issuer().as_raw(), der, "certificate")? {
            return Err(not_ours(format!("certificate {name:?}")));
        }
        let serial = Serial::from_be_bytes(cert.raw_serial());
        if !entries.iter().any(|e| e.serial == serial) {
            entries.push(RevokedEntry {
                serial,
                revoked_at: now,
                reason,
            });
        }
    }
    let number = number
        .checked_add(1)
        .ok_or_else(|| Error::malformed("CRL", "the CRL number cannot grow any further"))?;
    build_crl(ca, number, now, lifetime, &entries)
}

/// The entries of a DER CRL (serial, revocation time, reason), as [`build_crl`] wrote them.
/// Does not check the signature.
pub fn crl_entries(der: &[u8]) -> Result<Vec<RevokedEntry>> {
    let crl = parse_crl(der)?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|e| RevokedEntry {
            serial: Serial::from_be_bytes(e.raw_serial()),
            revoked_at: e.revocation_date.to_datetime(),
            // RFC 5280 CRLReason codes; 7 is unused, 8 is removeFromCRL (delta CRLs only).
            reason: e.reason_code().and_then(|(_, code)| match code.0 {
                0 => Some(RevocationReason::Unspecified),
                1 => Some(RevocationReason::KeyCompromise),
                2 => Some(RevocationReason::CaCompromise),
                3 => Some(RevocationReason::AffiliationChanged),
                4 => Some(RevocationReason::Superseded),
                5 => Some(RevocationReason::CessationOfOperation),
                6 => Some(RevocationReason::CertificateHold),
                9 => Some(RevocationReason::PrivilegeWithdrawn),
                10 => Some(RevocationReason::AaCompromise),
                _ => None,
            }),
        })
        .collect())
}

/// Splits a DER CRL into its signed parts and a copy of it without the revoked-certificates
/// list, which [`parse_crl`] reads cheaply: x509-parser materialises every entry (about 400
/// bytes each, half a gigabyte for a million), while the issuer, number, dates, scope and
/// signature are all a verifier needs from that parse (the entries are read one at a time by
/// the index that keeps them). The copy's own signature does not verify: use the
/// [`SignedParts`].
pub fn without_entries(der: &[u8]) -> Result<(Vec<u8>, SignedParts<'_>)> {
    use x509_parser::asn1_rs::{Any, FromDer as _, Sequence, Tag, ToDer as _};
    let bad = |e: &dyn std::fmt::Display| Error::malformed("CRL", e.to_string());
    let (signed, trailing) = SignedParts::split("CRL", der)?;
    if !trailing.is_empty() {
        return Err(bad(&"unexpected fields after the signature"));
    }
    let (_, tbs) = Any::from_der(signed.tbs()).map_err(|e| bad(&e))?;
    // The signature algorithm and value as received: they follow the TBS in the outer SEQUENCE.
    let (_, outer) = Any::from_der(der).map_err(|e| bad(&e))?;
    let after_tbs = outer
        .data
        .get(signed.tbs().len()..)
        .ok_or_else(|| bad(&"truncated"))?;
    // TBSCertList: version?, signature (SEQ), issuer (SEQ), thisUpdate, nextUpdate?,
    // revokedCertificates (SEQ)?, [0] extensions?: the third SEQUENCE is the list.
    let mut kept = Vec::with_capacity(1024);
    let mut fields = tbs.data;
    let mut sequences = 0;
    while !fields.is_empty() {
        let (next, field) = Any::from_der(fields).map_err(|e| bad(&e))?;
        let raw = fields
            .get(..fields.len() - next.len())
            .ok_or_else(|| bad(&"truncated"))?;
        let is_list = field.tag() == Tag::Sequence && {
            sequences += 1;
            sequences == 3
        };
        if !is_list {
            kept.extend_from_slice(raw);
        }
        fields = next;
    }
    let mut stub = Sequence::new(kept.into())
        .to_der_vec()
        .map_err(|e| bad(&e))?;
    stub.extend_from_slice(after_tbs);
    let stub = Sequence::new(stub.into())
        .to_der_vec()
        .map_err(|e| bad(&e))?;
    Ok((stub, signed))
}

/// Parses a DER CRL, refusing trailing bytes. Does not check the signature.
pub fn parse_crl(der: &[u8]) -> Result<CertificateRevocationList<'_>> {
    let (rest, crl) =
        CertificateRevocationList::from_der(der).map_err(|e| Error::malformed("CRL", e))?;
    if !rest.is_empty() {
        return Err(Error::malformed("CRL", "trailing bytes after the CRL"));
    }
    Ok(crl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_parse_in_common_spellings() {
        assert_eq!(
            "keyCompromise".parse::<RevocationReason>().unwrap(),
            RevocationReason::KeyCompromise
        );
        assert_eq!(
            "key-compromise".parse::<RevocationReason>().unwrap(),
            RevocationReason::KeyCompromise
        );
        assert_eq!(RevocationReason::CaCompromise.to_string(), "cACompromise");
        assert!("nope".parse::<RevocationReason>().is_err());
    }
}
