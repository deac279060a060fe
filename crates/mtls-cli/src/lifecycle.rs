//! `mtls list`, `mtls revoke`, `mtls crl`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use mtls_pki::files::{self, Visibility};
use mtls_pki::revocation::{RevocationReason, DEFAULT_CRL_DAYS};
use mtls_pki::{pem_io, Serial};
use mtls_store::ListFilter;

use crate::pkidir::PkiDir;
use crate::util::{fmt_time, now, out};
use crate::{CaKeyArgs, UsageError};

#[derive(Args)]
pub struct ListArgs {
    /// Only certificates expiring within this duration (e.g. 30d), not yet expired or revoked.
    #[arg(long, value_name = "DURATION", value_parser = crate::util::duration_arg)]
    expiring: Option<time::Duration>,
    /// Only revoked certificates.
    #[arg(long)]
    revoked: bool,
    /// JSON output.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub pki: crate::PkiArgs,
}

pub fn list(pki: &Path, a: ListArgs) -> Result<ExitCode> {
    let dir = PkiDir::new(pki);
    let inventory = dir.open_inventory()?;
    let at = now();
    let filter = ListFilter {
        expiring_before: a.expiring.map(|d| at + d),
        revoked_only: a.revoked,
    };
    let rows = inventory.list(&filter, at)?;
    if a.json {
        out(&format!("{}\n", serde_json::to_string_pretty(&rows)?))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut s = format!(
        "{:<32}  {:<7}  {:<8}  {:<20}  {}\n",
        "SERIAL", "PROFILE", "STATUS", "NOT AFTER", "SUBJECT / NAMES"
    );
    for r in &rows {
        let names = if r.sans.is_empty() {
            String::new()
        } else {
            format!(" [{}]", r.sans.join(", "))
        };
        let status = serde_json::to_value(r.status)?
            .as_str()
            .unwrap_or("?")
            .to_string();
        s.push_str(&format!(
            "{:<32}  {:<7}  {:<8}  {:<20}  {}{names}\n",
            r.serial,
            r.profile,
            status,
            fmt_time(r.not_after),
            r.subject
        ));
    }
    s.push_str(&format!("{} certificate(s)\n", rows.len()));
    out(&s)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct RevokeArgs {
    /// Serial number (hex, as `mtls list` or `openssl x509 -serial` print it).
    #[arg(required_unless_present = "cert", conflicts_with = "cert")]
    serial: Option<String>,
    /// Revoke the certificate in this file instead (it must be the one this CA issued with
    /// its serial).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Reason: keyCompromise, superseded, cessationOfOperation, affiliationChanged, … Every
    /// reason but superseded (none given included) also revokes the holder's other unexpired
    /// certificates of the renewal lineage (keyCompromise: those with the same key, and
    /// everything renewed from them, and every other certificate of the key; the key is not
    /// certified again; on a certificate already revoked, the reason becomes keyCompromise);
    /// superseded revokes this one alone.
    #[arg(long, value_parser = crate::util::reason_arg)]
    reason: Option<RevocationReason>,
    #[command(flatten)]
    pub pki: crate::PkiArgs,
}

pub fn revoke(pki: &Path, a: RevokeArgs) -> Result<ExitCode> {
    // With --cert, the certificate itself (its fingerprint), not only its serial: a serial is
    // easy to copy into a certificate of one's own making.
    let (serial, fingerprint): (Serial, Option<String>) = match (&a.serial, &a.cert) {
        (Some(s), _) => (
            s.parse()
                .map_err(|e: mtls_pki::Error| UsageError(e.to_string()))?,
            None,
        ),
        (None, Some(path)) => {
            let certs = pem_io::certificates(&files::read_public(path)?)
                .with_context(|| format!("reading {}", path.display()))?;
            let first = certs
                .first()
                .ok_or_else(|| UsageError("no certificate in the file".into()))?;
            (
                Serial::from_be_bytes(pem_io::parse_certificate(first)?.raw_serial()),
                Some(mtls_pki::inspect::sha256_hex(first)),
            )
        }
        (None, None) => return Err(UsageError("give a SERIAL or --cert FILE".into()).into()),
    };
    let reason = a.reason;
    let dir = PkiDir::new(pki);
    let mut inventory = dir.open_inventory()?;
    if let (Some(fp), Some(path)) = (&fingerprint, &a.cert) {
        if let Some(record) = inventory.get(&serial, now())? {
            if &record.fingerprint != fp {
                return Err(UsageError(format!(
                    "{} is not the certificate this CA issued with serial {serial} ({}): \
                     another CA's, or one made to carry its serial; nothing revoked (revoke \
                     by serial if that certificate is the one meant)",
                    path.display(),
                    record.subject
                ))
                .into());
            }
        }
    }
    let rev = inventory.revoke(&serial, reason, "cli", now())?;
    let why = if reason == Some(RevocationReason::KeyCompromise) {
        "a certificate of the compromised key"
    } else {
        "the holder's other certificate in its renewal lineage (`--reason superseded` revokes one alone)"
    };
    let renewals: String = rev
        .also_revoked
        .iter()
        .map(|s| format!("Revoked {s} too: {why}\n"))
        .collect();
    out(&format!(
        "Revoked {} ({}){}\n{renewals}Run `mtls crl` to publish a new CRL.\n",
        rev.record.serial,
        rev.record.subject,
        reason.map(|r| format!(", reason {r}")).unwrap_or_default()
    ))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct CrlArgs {
    /// Output file (default: <pki>/crl.pem; overwritten: a CRL replaces its predecessor).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Days until nextUpdate.
    #[arg(long, default_value_t = DEFAULT_CRL_DAYS)]
    days: i64,
    /// Write DER instead of PEM.
    #[arg(long)]
    der: bool,
    #[command(flatten)]
    ca_key: CaKeyArgs,
    #[command(flatten)]
    pub pki: crate::PkiArgs,
}

pub fn crl(pki: &Path, a: CrlArgs) -> Result<ExitCode> {
    let lifetime = crate::util::days(a.days, "--days")?;
    let dir = PkiDir::new(pki);
    let path = a.out.clone().unwrap_or_else(|| dir.crl());
    // A CRL replaces its predecessor, and nothing else: `--out` naming a key (a slip of tab
    // completion) must not destroy it. Checked before a CRL number is taken.
    if path.exists() {
        let is_crl = files::read_input(&path)
            .ok()
            .is_some_and(|b| pem_io::crls(&b).is_ok());
        if !is_crl {
            return Err(UsageError(format!(
                "{} exists and is not a CRL: refusing to replace it (remove it first if it \
                 is meant to go)",
                path.display()
            ))
            .into());
        }
    }
    let mut inventory = dir.open_inventory()?;
    let ca = dir.load_issuer(&a.ca_key.source())?;
    let signed = inventory.sign_crl(&ca, now(), lifetime)?;
    let (crl, number) = (signed.der, signed.number);
    let bytes = if a.der {
        crl.to_vec()
    } else {
        pem_io::encode("X509 CRL", &crl).into_bytes()
    };
    files::write_atomic(&path, &bytes, Visibility::Public, true)?;
    out(&format!(
        "Wrote CRL #{number} with {} revoked certificate(s) to {} (next update {})\n",
        signed.entries,
        path.display(),
        fmt_time(signed.next_update)
    ))?;
    Ok(ExitCode::SUCCESS)
}
