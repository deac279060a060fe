//! `mtls inspect`, `mtls verify`, `mtls export`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use mtls_pki::files::{self, Visibility};
use mtls_pki::{inspect as pki_inspect, pem_io};
use mtls_verify::{CrlScope, Purpose, VerifyRequest};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::pkidir::load_key;
use crate::secrets::Source;
use crate::util::{now, out, parse_time};
use crate::UsageError;

#[derive(Args)]
pub struct InspectArgs {
    /// File to describe (PEM with any number of blocks, or DER).
    file: PathBuf,
    /// JSON output.
    #[arg(long)]
    json: bool,
    /// Passphrase file for an encrypted key (else $MTLS_PASSPHRASE; encrypted keys are
    /// described without decrypting when neither is given).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

fn input_error(e: impl std::fmt::Display) -> anyhow::Error {
    UsageError(e.to_string()).into()
}

pub fn inspect(a: InspectArgs) -> Result<ExitCode> {
    // Often a key file: wiped when dropped.
    let bytes = files::read_input(&a.file).map_err(input_error)?;
    let source = Source {
        file: a.passphrase_file.as_deref(),
        env: "MTLS_PASSPHRASE",
        flag: "--passphrase-file",
        what: "key passphrase",
    };
    let pass = source.supplied()?;
    let objects = pki_inspect::describe(&bytes, now(), pass.as_deref().map(|p| p.as_slice()))
        .map_err(|e| input_error(format!("{}: {e}", a.file.display())))?;
    if a.json {
        out(&format!("{}\n", serde_json::to_string_pretty(&objects)?))?;
    } else {
        let text: Vec<String> = objects.iter().map(pki_inspect::render).collect();
        out(&text.join("\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Trusted root certificates (PEM bundle or DER).
    #[arg(long = "ca", required = true)]
    ca: Vec<PathBuf>,
    /// Untrusted intermediate certificates.
    #[arg(long)]
    untrusted: Vec<PathBuf>,
    /// CRLs to check revocation against (PEM or DER). With any CRL given, a certificate whose
    /// issuer has no CRL here is rejected (unknown status) unless --allow-unknown-revocation.
    #[arg(long)]
    crl: Vec<PathBuf>,
    /// Which certificates need a revocation status: leaf or chain.
    #[arg(long, default_value = "leaf")]
    crl_check: String,
    /// Loosening: accept an unknown revocation status.
    #[arg(long)]
    allow_unknown_revocation: bool,
    /// Loosening: accept CRLs past their nextUpdate.
    #[arg(long)]
    allow_expired_crl: bool,
    /// Validation time (RFC 3339 or @UNIX_SECONDS; default: now).
    #[arg(long)]
    at: Option<String>,
    /// Purpose: client (requires the clientAuth EKU), server, or any.
    #[arg(long, default_value = "any")]
    purpose: String,
    /// DNS name or IP address the certificate must be valid for.
    #[arg(long)]
    name: Option<String>,
    /// JSON output.
    #[arg(long)]
    json: bool,
    /// Also ask the leaf's OCSP responder (its AIA URL, or --ocsp-url). Revoked or unknown
    /// fails, and so does a responder that cannot be reached or answers wrongly (fail closed).
    #[arg(long)]
    ocsp: bool,
    /// OCSP responder to ask instead of the certificate's AIA URL (http://).
    #[arg(long, requires = "ocsp")]
    ocsp_url: Option<String>,
    /// The certificate to check; further certificates in the file are used as intermediates.
    cert: PathBuf,
}

/// Asks the leaf's OCSP responder: what it said when the answer is a verified "good",
/// `Err((code, reason))` otherwise.
fn check_ocsp(
    leaf: &CertificateDer<'_>,
    candidates: &[CertificateDer<'static>],
    url: Option<&str>,
    at: time::OffsetDateTime,
) -> Result<std::result::Result<String, (&'static str, String)>> {
    let fail = |code: &'static str, m: String| Ok(Err((code, m)));
    let parsed = pem_io::parse_certificate(leaf).map_err(input_error)?;
    // The issuer is the candidate whose key verifies the leaf (the chain was just validated).
    let Some(issuer) = candidates.iter().find(|c| {
        pem_io::parse_certificate(c).is_ok_and(|ic| mtls_pki::signature::issued_by(&parsed, &ic))
    }) else {
        return fail(
            "ocsp_no_issuer",
            "the issuer certificate is not among --ca/--untrusted".into(),
        );
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = rt.block_on(async {
        let client = mtls_client::ClientBuilder::new()
            .timeout(std::time::Duration::from_secs(20))
            .build_plain_http()?;
        anyhow::Ok(mtls_client::ocsp::fetch(&client, leaf, issuer, url, true, at).await)
    })?;
    let (verified, url) = match answer {
        Ok(a) => (a.verified, a.url),
        Err(mtls_client::ocsp::OcspError::NoResponder) => {
            return fail(
                "ocsp_no_url",
                "the certificate names no OCSP responder (give --ocsp-url)".into(),
            )
        }
        Err(e) => return fail(e.code(), e.to_string()),
    };
    match verified.status {
        mtls_ocsp::CertStatus::Good => Ok(Ok(format!(
            "good from {url} (signed, nonce echoed; thisUpdate {}, nextUpdate {})",
            crate::util::fmt_time(verified.this_update),
            mtls_pki::rfc3339_opt(&verified.next_update)
        ))),
        mtls_ocsp::CertStatus::Revoked { at, reason } => fail(
            "revoked",
            format!(
                "revoked at {}{} (OCSP)",
                crate::util::fmt_time(at),
                reason.map(|r| format!(", reason {r}")).unwrap_or_default()
            ),
        ),
        mtls_ocsp::CertStatus::Unknown => fail(
            "ocsp_unknown",
            format!("{url} does not know this certificate"),
        ),
    }
}

/// A certificate or CRL file, wiped when dropped (a combined file holds the key as well).
fn read_input(p: &std::path::Path) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    files::read_input(p).map_err(input_error)
}

fn certs_from(p: &std::path::Path) -> Result<Vec<CertificateDer<'static>>> {
    pem_io::certificates(&read_input(p)?).map_err(|e| input_error(format!("{}: {e}", p.display())))
}

pub fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let purpose: Purpose = a.purpose.parse().map_err(input_error)?;
    let crl_scope = match a.crl_check.as_str() {
        "leaf" => CrlScope::Leaf,
        "chain" => CrlScope::Chain,
        other => {
            return Err(input_error(format!(
                "--crl-check {other:?}: use leaf or chain"
            )))
        }
    };
    let at =
        a.at.as_deref()
            .map(parse_time)
            .transpose()?
            .unwrap_or_else(now);
    let mut roots = Vec::new();
    for p in &a.ca {
        roots.extend(certs_from(p)?);
    }
    let mut leaf_file = certs_from(&a.cert)?.into_iter();
    let leaf = leaf_file
        .next()
        .ok_or_else(|| input_error("no certificate to verify"))?;
    let mut intermediates: Vec<CertificateDer<'static>> = leaf_file.collect();
    for p in &a.untrusted {
        intermediates.extend(certs_from(p)?);
    }
    let mut crls: Vec<CertificateRevocationListDer<'static>> = Vec::new();
    for p in &a.crl {
        crls.extend(
            pem_io::crls(&read_input(p)?)
                .map_err(|e| input_error(format!("{}: {e}", p.display())))?,
        );
    }
    let req = VerifyRequest {
        roots: &roots,
        intermediates: &intermediates,
        crls: &crls,
        at,
        purpose,
        name: a.name.as_deref(),
        crl_scope,
        allow_unknown_revocation: a.allow_unknown_revocation,
        allow_expired_crl: a.allow_expired_crl,
    };
    let outcome = mtls_verify::verify(&leaf, &req).map_err(input_error)?;
    let mut ocsp_failure = None;
    let mut ocsp_said = None;
    if a.ocsp && outcome.is_ok() {
        let candidates: Vec<CertificateDer<'static>> =
            intermediates.iter().chain(&roots).cloned().collect();
        match check_ocsp(&leaf, &candidates, a.ocsp_url.as_deref(), at)? {
            Ok(said) => ocsp_said = Some(said),
            Err(f) => ocsp_failure = Some(f),
        }
    }
    if let Some((code, reason)) = ocsp_failure {
        if a.json {
            out(&format!(
                "{}\n",
                serde_json::json!({"valid": false, "code": code, "reason": reason})
            ))?;
        } else {
            out(&format!(
                "{}: INVALID ({code}): {reason}\n",
                a.cert.display()
            ))?;
        }
        return Ok(ExitCode::FAILURE);
    }
    match outcome {
        Ok(chain) => {
            // Say what was checked, so an OK is not read as more than it is.
            let mut checked = format!(
                "path to a trusted root, validity at {}, purpose {}",
                crate::util::fmt_time(at),
                a.purpose
            );
            if let Some(n) = &a.name {
                checked.push_str(&format!(", name {n}"));
            }
            let revocation = match (crls.is_empty(), &ocsp_said) {
                (true, None) => "not checked (no --crl, no --ocsp)".to_string(),
                (false, None) => format!("CRL ({} given, {} checked)", crls.len(), a.crl_check),
                (true, Some(o)) => format!("OCSP {o}"),
                (false, Some(o)) => format!(
                    "CRL ({} given, {} checked); OCSP {o}",
                    crls.len(),
                    a.crl_check
                ),
            };
            if a.json {
                out(&format!(
                    "{}\n",
                    serde_json::json!({"valid": true, "chain": chain.subjects, "checked": checked, "revocation": revocation})
                ))?;
            } else {
                out(&format!(
                    "{}: OK\n  checked:    {checked}\n  revocation: {revocation}\n{chain}",
                    a.cert.display()
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(rejection) => {
            if a.json {
                out(&format!(
                    "{}\n",
                    serde_json::json!({"valid": false, "code": rejection.code(), "reason": rejection.to_string()})
                ))?;
            } else {
                out(&format!(
                    "{}: INVALID ({}): {rejection}\n",
                    a.cert.display(),
                    rejection.code()
                ))?;
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

#[derive(Subcommand)]
pub enum ExportCommand {
    /// A PKCS#12 (.p12/.pfx) file with key and chain, for browsers and Java keystores.
    #[command(after_help = crate::examples::EXPORT_PKCS12)]
    Pkcs12(Pkcs12Args),
}

#[derive(Args)]
pub struct Pkcs12Args {
    /// Certificate (or chain file, leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// Private key.
    #[arg(long)]
    key: PathBuf,
    /// Additional chain certificates (e.g. the intermediate).
    #[arg(long)]
    chain: Vec<PathBuf>,
    /// Output file (written 0600).
    #[arg(long)]
    out: PathBuf,
    /// Friendly name (alias) of the entry.
    #[arg(long, default_value = "mtls")]
    name: String,
    /// File holding the PKCS#12 password (else $MTLS_P12_PASSWORD, else a prompt).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Passphrase file for an encrypted key (else $MTLS_PASSPHRASE, else a prompt).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Write the older algorithms (3DES for key and certificates, HMAC-SHA1 MAC) instead of
    /// the default AES-256 and HMAC-SHA256. Use it only for importers that cannot read the
    /// default: macOS Keychain (which Safari and Chrome on macOS use) and Windows before 10
    /// version 1709 (Server 2016 and older). Firefox, and Chrome on Linux, read the default.
    #[arg(long)]
    compat: bool,
    /// Overwrite the output file.
    #[arg(long)]
    force: bool,
}

pub fn export(cmd: ExportCommand) -> Result<ExitCode> {
    let ExportCommand::Pkcs12(a) = cmd;
    files::check_writable(&a.out, a.force)?;
    let mut chain = certs_from(&a.cert)?;
    for p in &a.chain {
        for c in certs_from(p)? {
            if !chain.contains(&c) {
                chain.push(c);
            }
        }
    }
    let key = load_key(
        &a.key,
        &Source {
            file: a.passphrase_file.as_deref(),
            env: "MTLS_PASSPHRASE",
            flag: "--passphrase-file",
            what: "key passphrase",
        },
    )?;
    let password = Source {
        file: a.password_file.as_deref(),
        env: "MTLS_P12_PASSWORD",
        flag: "--password-file",
        what: "PKCS#12 password",
    }
    .new_secret()?;
    // Checked before copying: a FromUtf8Error would drop its copy of the password unwiped.
    let password = zeroize::Zeroizing::new(
        std::str::from_utf8(&password)
            .context("the PKCS#12 password must be UTF-8")?
            .to_owned(),
    );
    let profile = if a.compat {
        mtls_pki::pkcs12::Pkcs12Profile::Compat
    } else {
        mtls_pki::pkcs12::Pkcs12Profile::Modern
    };
    let p12 = mtls_pki::pkcs12::export(&key, &chain, &password, &a.name, profile)?;
    files::write_atomic(&a.out, &p12, Visibility::Secret, a.force)?;
    out(&format!(
        "Wrote {} ({} certificate(s) and the key; {})\n",
        a.out.display(),
        chain.len(),
        match profile {
            mtls_pki::pkcs12::Pkcs12Profile::Modern => "AES-256, HMAC-SHA256",
            mtls_pki::pkcs12::Pkcs12Profile::Compat => "compat: 3DES, HMAC-SHA1",
        }
    ))?;
    Ok(ExitCode::SUCCESS)
}
