//! `mtls ca …`: create the root and intermediate CAs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use mtls_pki::files::{self, Visibility};
use mtls_pki::issue::{self, DEFAULT_INTERMEDIATE_DAYS, DEFAULT_ROOT_DAYS};
use mtls_pki::{CaCert, KeyAlgorithm, PrivateKey, Subject};

use crate::pkidir::{load_ca, PkiDir};
use crate::util::{days, fmt_time, now, out};
use crate::{NewKeyArgs, UsageError};

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create a root CA and an intermediate CA signed by it in the PKI directory.
    #[command(after_help = crate::examples::CA_INIT)]
    Init(InitArgs),
    /// Create a new intermediate signed by a root whose key is kept elsewhere (offline).
    #[command(after_help = crate::examples::CA_INTERMEDIATE)]
    Intermediate(IntermediateArgs),
    /// Run the online CA (HTTPS API, CRL and OCSP) from a configuration file.
    #[command(after_help = crate::examples::CA_SERVE)]
    Serve(crate::online::ServeArgs),
    /// Print a single-use enrollment token bound to a name, SANs and a profile.
    #[command(after_help = crate::examples::CA_TOKEN)]
    Token(crate::online::TokenArgs),
    /// After restoring the inventory from a backup: re-apply the revocations of the last
    /// published CRLs and continue CRL numbers after the published ones.
    #[command(after_help = crate::examples::CA_RECONCILE)]
    Reconcile(ReconcileArgs),
    /// Sign the root's CRL (with its offline key), revoking intermediates with --revoke: the
    /// CRL written last is carried forward. Give it to verifiers beside the intermediate's
    /// CRL (the root must be in their CA bundle).
    #[command(after_help = crate::examples::CA_ROOT_CRL)]
    RootCrl(RootCrlArgs),
}

#[derive(Args)]
pub struct RootCrlArgs {
    /// The root CA certificate.
    #[arg(long)]
    root_cert: PathBuf,
    /// The root CA key (e.g. on removable media).
    #[arg(long)]
    root_key: PathBuf,
    /// A certificate the root signed (an intermediate) to revoke; repeat for several.
    #[arg(long, value_name = "CERT")]
    revoke: Vec<PathBuf>,
    /// Revocation reason for --revoke (keyCompromise, cACompromise, superseded, …).
    #[arg(long, requires = "revoke", value_parser = crate::util::reason_arg)]
    reason: Option<mtls_pki::revocation::RevocationReason>,
    /// Days until nextUpdate. Sign again before then: verifiers refuse an expired CRL.
    #[arg(long, default_value_t = ROOT_CRL_DAYS)]
    days: i64,
    /// Output file (default: <pki>/root-crl.pem, which `mtls ca serve` publishes at
    /// /v1/root-crl); the CRL already there is carried forward.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    root_pass: crate::RootKeyArgs,
    #[command(flatten)]
    pub pki: crate::PkiArgs,
}

#[derive(Args)]
pub struct SubjectArgs {
    /// Organization (O).
    #[arg(long = "org", short = 'o')]
    pub organization: Option<String>,
    /// Organizational unit (OU).
    #[arg(long = "ou")]
    pub organizational_unit: Option<String>,
    /// Two-letter country code (C).
    #[arg(long = "country", short = 'c')]
    pub country: Option<String>,
}

impl SubjectArgs {
    pub fn subject(&self, cn: &str) -> Subject {
        Subject {
            common_name: cn.to_string(),
            organization: self.organization.clone(),
            organizational_unit: self.organizational_unit.clone(),
            country: self.country.clone(),
        }
    }
}

/// Name constraints of a new intermediate.
#[derive(Args)]
pub struct ConstraintArgs {
    /// The intermediate may certify only DNS names under these domains and addresses in these
    /// networks (`dns:DOMAIN`, `ip:NETWORK/PREFIX`; repeatable; per name form: a form not
    /// listed, such as URIs, stays unconstrained). Relying parties refuse other DNS names and
    /// addresses it signs, so a stolen intermediate key cannot impersonate other servers (client
    /// identities by CN, OU, URI or e-mail are not limited).
    #[arg(long = "permit", value_name = "NAME", value_parser = mtls_pki::NameSubtree::parse)]
    permit: Vec<mtls_pki::NameSubtree>,
    /// The intermediate may not certify DNS names under these domains or addresses in these
    /// networks (`dns:DOMAIN`, `ip:NETWORK/PREFIX`; repeatable).
    #[arg(long = "exclude", value_name = "NAME", value_parser = mtls_pki::NameSubtree::parse)]
    exclude: Vec<mtls_pki::NameSubtree>,
}

impl ConstraintArgs {
    fn constraints(&self) -> mtls_pki::NameConstraints {
        mtls_pki::NameConstraints {
            permitted: self.permit.clone(),
            excluded: self.exclude.clone(),
        }
    }
}

/// Where the root's CRL is published, for the intermediate's CRL distribution point.
fn root_crl_url_arg(s: &str) -> std::result::Result<String, String> {
    mtls_pki::issue::PublicationUrls {
        crl: Some(s.to_string()),
        ocsp: None,
    }
    .check()
    .map(|()| s.to_string())
    .map_err(|e| e.to_string())
}

#[derive(Args)]
pub struct InitArgs {
    /// Common name of the root CA.
    #[arg(long, default_value = "mtls Root CA")]
    root_cn: String,
    /// Common name of the intermediate CA.
    #[arg(long, default_value = "mtls Intermediate CA")]
    intermediate_cn: String,
    #[command(flatten)]
    subject: SubjectArgs,
    /// Lifetime of the root CA in days.
    #[arg(long, default_value_t = DEFAULT_ROOT_DAYS)]
    root_days: i64,
    /// Lifetime of the intermediate CA in days (capped at the root's).
    #[arg(long, default_value_t = DEFAULT_INTERMEDIATE_DAYS)]
    intermediate_days: i64,
    #[command(flatten)]
    constraints: ConstraintArgs,
    #[command(flatten)]
    root_pass: crate::RootKeyArgs,
    /// Where the root's CRL will be published (the online CA's
    /// http://HOST:PORT/v1/root-crl), written into the intermediate as its CRL distribution
    /// point: verifiers that follow distribution points then learn of its revocation by the
    /// root with nothing configured.
    #[arg(long, value_name = "URL", value_parser = root_crl_url_arg)]
    root_crl_url: Option<String>,
    #[command(flatten)]
    key: NewKeyArgs,
    #[command(flatten)]
    pub pki: crate::PkiArgs,
}

#[derive(Args)]
pub struct IntermediateArgs {
    /// The root CA certificate.
    #[arg(long)]
    root_cert: PathBuf,
    /// The root CA key (e.g. on removable media).
    #[arg(long)]
    root_key: PathBuf,
    /// Common name of the new intermediate.
    #[arg(long, default_value = "mtls Intermediate CA")]
    cn: String,
    #[command(flatten)]
    subject: SubjectArgs,
    /// Lifetime in days (capped at the root's).
    #[arg(long, default_value_t = DEFAULT_INTERMEDIATE_DAYS)]
    days: i64,
    #[command(flatten)]
    constraints: ConstraintArgs,
    /// Where the root's CRL is published (the online CA's http://HOST:PORT/v1/root-crl),
    /// written into the intermediate as its CRL distribution point.
    #[arg(long, value_name = "URL", value_parser = root_crl_url_arg)]
    root_crl_url: Option<String>,
    /// Replace a name-constrained intermediate with one without constraints (a replacement
    /// that gives no --permit/--exclude is refused otherwise: a rotation must not drop them
    /// unnoticed).
    #[arg(long, conflicts_with_all = ["permit", "exclude"])]
    no_name_constraints: bool,
    #[command(flatten)]
    key: NewKeyArgs,
    #[command(flatten)]
    root_pass: crate::RootKeyArgs,
    #[command(flatten)]
    pub pki: crate::PkiArgs,
}

impl CaCommand {
    pub fn pki_args(&self) -> &crate::PkiArgs {
        match self {
            CaCommand::Init(a) => &a.pki,
            CaCommand::Intermediate(a) => &a.pki,
            CaCommand::Serve(a) => &a.pki,
            CaCommand::Token(a) => &a.pki,
            CaCommand::Reconcile(a) => &a.pki,
            CaCommand::RootCrl(a) => &a.pki,
        }
    }
}

/// `explicit` is the PKI directory the user named (`--pki`, `MTLS_PKI_DIR`): `ca serve` uses
/// it instead of its configuration file's `pki`.
pub fn run(pki: &Path, explicit: Option<&Path>, cmd: CaCommand) -> Result<ExitCode> {
    match cmd {
        CaCommand::Init(a) => init(pki, a),
        CaCommand::Intermediate(a) => intermediate(pki, a),
        CaCommand::Serve(a) => crate::online::serve(a, explicit),
        CaCommand::Token(a) => crate::online::token(pki, a),
        CaCommand::Reconcile(_) => reconcile(pki),
        CaCommand::RootCrl(a) => root_crl(pki, a),
    }
}

/// `mtls ca root-crl`.
fn root_crl(pki: &Path, a: RootCrlArgs) -> Result<ExitCode> {
    use mtls_pki::revocation::extend_crl;
    if !(1..=3650).contains(&a.days) {
        return Err(UsageError("--days must be between 1 and 3650".into()).into());
    }
    let out_path = a.out.clone().unwrap_or_else(|| PkiDir::new(pki).root_crl());
    let mut revoke = Vec::new();
    for path in &a.revoke {
        let certs = mtls_pki::pem_io::certificates(&files::read_public(path)?)
            .with_context(|| path.display().to_string())?;
        let first = certs
            .into_iter()
            .next()
            .ok_or_else(|| UsageError(format!("{}: no certificate", path.display())))?;
        revoke.push(first);
    }
    // The CRL there is the record of what the root revoked: one that cannot be read is not
    // silently replaced by a CRL that forgets it.
    let previous = match std::fs::read(&out_path) {
        Ok(bytes) => Some(
            mtls_pki::pem_io::crls(&bytes)
                .ok()
                .and_then(|c| c.into_iter().next())
                .ok_or_else(|| {
                    UsageError(format!(
                        "{} holds no CRL: move it away to start a new one",
                        out_path.display()
                    ))
                })?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", out_path.display())),
    };
    let root: CaCert = load_ca(&a.root_cert, &a.root_key, &a.root_pass.source())?;
    let crl = extend_crl(
        &root,
        previous.as_ref().map(|c| c.as_ref()),
        &revoke,
        a.reason,
        now(),
        time::Duration::days(a.days),
    )
    .map_err(|e| match e {
        e @ mtls_pki::Error::NotIssuedBy { .. } => anyhow::Error::new(UsageError(e.to_string())),
        e => e.into(),
    })?;
    let entries = mtls_pki::revocation::crl_entries(&crl)?.len();
    files::write_atomic(
        &out_path,
        mtls_pki::pem_io::encode("X509 CRL", &crl).as_bytes(),
        Visibility::Public,
        true,
    )?;
    out(&format!(
        "Wrote {} signed by {} ({entries} revoked, valid for {} days)\n",
        out_path.display(),
        root.subject(),
        a.days
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Serialises a key, encrypted when asked.
pub fn key_pem(
    key: &PrivateKey,
    args: &NewKeyArgs,
    passphrase: Option<&[u8]>,
) -> Result<zeroize::Zeroizing<String>> {
    match (args.encrypt, passphrase) {
        (true, Some(p)) => Ok(key.to_encrypted_pem(p)?),
        _ => Ok(key.to_pem()),
    }
}

fn key_type(args: &NewKeyArgs) -> Result<KeyAlgorithm> {
    args.key_type
        .parse::<KeyAlgorithm>()
        .map_err(|e| UsageError(e.to_string()).into())
}

#[derive(Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub pki: crate::PkiArgs,
}

fn reconcile(pki: &Path) -> Result<ExitCode> {
    let dir = PkiDir::new(pki);
    let mut inv = dir.open_inventory_unchecked()?;
    if inv.check_published().is_ok() {
        out("The inventory is level with what this CA published: nothing to do.\n")?;
        return Ok(ExitCode::SUCCESS);
    }
    let done = inv.reconcile(now())?;
    inv.check_published()?;
    let mut s = format!(
        "Re-applied {} revocation(s) from the last published CRL(s).\n",
        done.revocations
    );
    for (issuer, n) in &done.crl_numbers {
        s.push_str(&format!(
            "CRLs of issuer key {}… continue after number {n}.\n",
            issuer.get(..16).unwrap_or(issuer)
        ));
    }
    s.push_str(
        "Revocations made after the last published CRL are not in it: revoke them again. Then publish with `mtls crl` (or start `mtls ca serve`).\n",
    );
    out(&s)?;
    Ok(ExitCode::SUCCESS)
}

/// `ca init` over a PKI directory whose ledger records what an earlier CA published, with an
/// inventory behind it (deleted or restored): refused before any key is written.
fn refuse_behind_ledger(dir: &PkiDir) -> Result<()> {
    if dir.ledger().marks()? == mtls_store::Marks::default() || !dir.intermediate_cert().exists() {
        return Ok(());
    }
    let inv = dir.open_inventory_unchecked()?;
    if let Err(e) = inv.check_published() {
        return Err(UsageError(format!(
            "{e:#}\n(this PKI directory's ledger, {}, records what the CA here already published; to start a new CA in this directory instead, move the ledger aside first)",
            dir.dir.join("ledger").display()
        ))
        .into());
    }
    Ok(())
}

fn init(pki: &Path, a: InitArgs) -> Result<ExitCode> {
    let dir = PkiDir::new(pki);
    let alg = key_type(&a.key)?;
    let root_days = days(a.root_days, "--root-days")?;
    let inter_days = days(a.intermediate_days, "--intermediate-days")?;
    let outputs = [
        dir.root_cert(),
        dir.root_key(),
        dir.intermediate_cert(),
        dir.intermediate_key(),
        dir.ca_chain(),
    ];
    for p in &outputs {
        files::check_writable(p, a.key.force)?;
    }
    refuse_behind_ledger(&dir)?;
    // Two passphrases: the intermediate's is given to the online CA (`mtls ca serve`), the
    // root's stays offline with its key; one for both would unlock the root wherever the CA
    // runs.
    let (passphrase, root_passphrase) = if a.key.encrypt {
        let intermediate = a.key.source().new_secret()?;
        let root = a.root_pass.source().new_secret()?;
        if *intermediate == *root {
            return Err(UsageError(
                "the root key's passphrase must differ from the intermediate's: the \
                 intermediate's is given to the online CA, the root's stays offline with its key"
                    .into(),
            )
            .into());
        }
        (Some(intermediate), Some(root))
    } else {
        (None, None)
    };
    let at = now();
    let root = issue::new_root(
        &a.subject.subject(&a.root_cn),
        PrivateKey::generate(alg)?,
        at,
        root_days,
    )?;
    let inter = issue::new_profiled_intermediate(
        &root,
        &a.subject.subject(&a.intermediate_cn),
        PrivateKey::generate(alg)?,
        at,
        inter_days,
        &issue::IntermediateProfile {
            path_len: 0,
            constraints: a.constraints.constraints(),
            root_crl_url: a.root_crl_url.clone(),
        },
    )?;
    std::fs::create_dir_all(&dir.dir).with_context(|| format!("creating {}", dir.dir.display()))?;
    let pass = passphrase.as_deref().map(|p| p.as_slice());
    // Every file is written (staged) before any is put in place: a failure (disk full, a path
    // that cannot be replaced) leaves the old CA files as they were. Keys first.
    let mut staged = vec![
        files::stage(
            &dir.root_key(),
            key_pem(
                root.key(),
                &a.key,
                root_passphrase.as_deref().map(|p| p.as_slice()),
            )?
            .as_bytes(),
            Visibility::Secret,
            a.key.force,
        )?,
        files::stage(
            &dir.root_cert(),
            root.pem().as_bytes(),
            Visibility::Public,
            a.key.force,
        )?,
    ];
    staged.extend(stage_intermediate(&dir, &inter, &root, &a.key, pass)?);
    if a.root_crl_url.is_some() {
        staged.extend(stage_first_root_crl(&dir, &root, a.key.force)?);
    }
    for s in staged {
        s.install()?;
    }
    // Create the inventory now so permissions and schema exist before the first issuance.
    dir.open_inventory()?;
    out(&format!(
        "Created root CA          {} (until {})\n\
         Created intermediate CA  {} (until {})\n\
         in {}\n\n\
         Trust anchor for verifiers: {}\n\
         Keep the root key offline: move {} to secure storage; `mtls ca intermediate --root-key …`\n\
         signs a new intermediate later. Issue certificates with `mtls issue server|client …`.\n",
        root.subject(),
        fmt_time(root.not_after()),
        inter.subject(),
        fmt_time(inter.not_after()),
        dir.dir.display(),
        dir.root_cert().display(),
        dir.root_key().display(),
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// The root's first CRL (empty, valid [`ROOT_CRL_DAYS`]), staged at `<pki>/root-crl.pem`
/// unless one is there already (with `replace`, replaced): an intermediate naming where the
/// root publishes its CRL (`--root-crl-url`) is refused by verifiers following that point
/// until there is one to fetch, so it is written with the intermediate, not left for later.
fn stage_first_root_crl(
    dir: &PkiDir,
    root: &CaCert,
    replace: bool,
) -> Result<Option<files::Staged>> {
    if dir.root_crl().exists() && !replace {
        return Ok(None);
    }
    let crl = mtls_pki::revocation::extend_crl(
        root,
        None,
        &[],
        None,
        now(),
        time::Duration::days(ROOT_CRL_DAYS),
    )?;
    Ok(Some(files::stage(
        &dir.root_crl(),
        mtls_pki::pem_io::encode("X509 CRL", &crl).as_bytes(),
        Visibility::Public,
        replace,
    )?))
}

/// How long a root CRL is valid by default (`mtls ca root-crl --days`): sign it again before.
const ROOT_CRL_DAYS: i64 = 90;

/// Stages the intermediate's key, certificate and the CA chain (intermediate + root): written
/// beside their paths, put in place by the caller once everything is written.
fn stage_intermediate(
    dir: &PkiDir,
    inter: &CaCert,
    root: &CaCert,
    key_args: &NewKeyArgs,
    pass: Option<&[u8]>,
) -> Result<Vec<files::Staged>> {
    let force = key_args.force;
    Ok(vec![
        files::stage(
            &dir.intermediate_key(),
            key_pem(inter.key(), key_args, pass)?.as_bytes(),
            Visibility::Secret,
            force,
        )?,
        files::stage(
            &dir.intermediate_cert(),
            inter.pem().as_bytes(),
            Visibility::Public,
            force,
        )?,
        files::stage(
            &dir.ca_chain(),
            format!("{}{}", inter.pem(), root.pem()).as_bytes(),
            Visibility::Public,
            force,
        )?,
    ])
}

/// Refuses to replace an intermediate that has name constraints with one that has none, unless
/// asked (`--no-name-constraints`): following the rotation steps without its `--permit` flags
/// would otherwise give a stolen key of the new intermediate every name again. The message
/// gives the flags that keep them.
fn refuse_dropping_constraints(dir: &PkiDir) -> Result<()> {
    let path = dir.intermediate_cert();
    // None to replace, or one that does not read as a certificate: nothing to keep.
    if !path.exists() {
        return Ok(());
    }
    let Ok(der) = dir.issuer_cert() else {
        return Ok(());
    };
    let Ok(cert) = mtls_pki::pem_io::parse_certificate(&der) else {
        return Ok(());
    };
    let Some(nc) = mtls_pki::inspect::certificate_info(&der, &cert, now()).name_constraints else {
        return Ok(());
    };
    let flags: Vec<String> = nc
        .permitted
        .iter()
        .map(|n| format!("--permit {n}"))
        .chain(nc.excluded.iter().map(|n| format!("--exclude {n}")))
        .collect();
    Err(UsageError(format!(
        "{} has name constraints and the new intermediate would have none: give them again \
         ({}), or pass --no-name-constraints to drop them",
        path.display(),
        flags.join(" ")
    ))
    .into())
}

fn intermediate(pki: &Path, a: IntermediateArgs) -> Result<ExitCode> {
    let dir = PkiDir::new(pki);
    let alg = key_type(&a.key)?;
    let lifetime = days(a.days, "--days")?;
    for p in [
        dir.intermediate_cert(),
        dir.intermediate_key(),
        dir.ca_chain(),
    ] {
        files::check_writable(&p, a.key.force)?;
    }
    let constraints = a.constraints.constraints();
    if constraints.is_empty() && !a.no_name_constraints {
        refuse_dropping_constraints(&dir)?;
    }
    let root: CaCert = load_ca(&a.root_cert, &a.root_key, &a.root_pass.source())?;
    // `root.crt` is the trust anchor clients are given: one left by another root (an earlier
    // `ca init`, a root rotated offline) made every chain of the new intermediate fail to
    // verify. Replaced with --force, refused otherwise, before anything is written.
    let root_differs = match std::fs::read(dir.root_cert()) {
        Ok(bytes) => {
            let first = mtls_pki::pem_io::certificates(&bytes)
                .ok()
                .and_then(|c| c.into_iter().next());
            first.as_ref() != Some(root.der())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.root_cert().display())),
    };
    if root_differs {
        files::check_writable(&dir.root_cert(), a.key.force).with_context(|| {
            format!(
                "{} is not the certificate of --root-cert {} (another root CA's?); --force replaces it",
                dir.root_cert().display(),
                a.root_cert.display()
            )
        })?;
    }
    let passphrase = if a.key.encrypt {
        let p = a.key.source().new_secret()?;
        // Not the root's: the intermediate's is given to the online CA (see `init`). Tried on
        // the root key itself, so a root made with one passphrase for both is caught too.
        let root_key = files::read_secret(&a.root_key)?;
        if mtls_pki::key::is_encrypted(&root_key)
            && mtls_pki::PrivateKey::from_pem_or_der(&root_key, Some(&p)).is_ok()
        {
            return Err(UsageError(
                "the new intermediate's passphrase opens the root key: give it one of its own \
                 (the intermediate's is given to the online CA, the root's stays offline)"
                    .into(),
            )
            .into());
        }
        Some(p)
    } else {
        None
    };
    let inter = issue::new_profiled_intermediate(
        &root,
        &a.subject.subject(&a.cn),
        PrivateKey::generate(alg)?,
        now(),
        lifetime,
        &issue::IntermediateProfile {
            path_len: 0,
            constraints,
            root_crl_url: a.root_crl_url.clone(),
        },
    )?;
    let pass = passphrase.as_deref().map(|p| p.as_slice());
    // Before any key is written: a rolled-back inventory is refused now, not halfway.
    if dir.inventory().exists() {
        dir.open_inventory()?;
    }
    let mut staged = stage_intermediate(&dir, &inter, &root, &a.key, pass)?;
    if a.root_crl_url.is_some() {
        staged.extend(stage_first_root_crl(&dir, &root, false)?);
    }
    if root_differs || !dir.root_cert().exists() {
        staged.push(files::stage(
            &dir.root_cert(),
            root.pem().as_bytes(),
            Visibility::Public,
            root_differs,
        )?);
    }
    for s in staged {
        s.install()?;
    }
    dir.open_inventory()?;
    out(&format!(
        "Created intermediate CA {} (until {}) signed by {}\n",
        inter.subject(),
        fmt_time(inter.not_after()),
        root.subject()
    ))?;
    Ok(ExitCode::SUCCESS)
}
