//! `mtls issue`, `mtls csr`, `mtls sign`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use mtls_pki::files::{self, Visibility};
use mtls_pki::issue::{self, LeafRequest, DEFAULT_LEAF_DAYS};
use mtls_pki::{csr as pki_csr, CaCert, Issued, KeyAlgorithm, PrivateKey, Profile, San, Subject};
use time::Duration;

use crate::ca::{key_pem, SubjectArgs};
use crate::pkidir::PkiDir;
use crate::util::{file_stem, fmt_time, now, out};
use crate::{CaKeyArgs, NewKeyArgs, UsageError};

#[derive(Subcommand)]
pub enum IssueCommand {
    /// A TLS server certificate; every NAME (DNS name or IP address) becomes a SAN.
    #[command(after_help = crate::examples::ISSUE_SERVER)]
    Server(ServerArgs),
    /// A TLS client certificate with common name NAME.
    #[command(after_help = crate::examples::ISSUE_CLIENT)]
    Client(ClientArgs),
}

#[derive(Args)]
pub struct LeafArgs {
    #[command(flatten)]
    subject: SubjectArgs,
    /// Lifetime in days (capped at the intermediate's).
    #[arg(long, default_value_t = DEFAULT_LEAF_DAYS)]
    days: i64,
    /// Output directory (default: <pki>/issued).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    key: NewKeyArgs,
    #[command(flatten)]
    ca_key: CaKeyArgs,
    #[command(flatten)]
    pub pki: crate::PkiArgs,
}

#[derive(Args)]
pub struct ServerArgs {
    /// DNS names and IP addresses the server answers to.
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
    /// Additional URI SANs (e.g. spiffe://example.org/ns/prod/sa/api).
    #[arg(long)]
    uri: Vec<String>,
    /// Common name (default: the first NAME).
    #[arg(long)]
    cn: Option<String>,
    #[command(flatten)]
    pub leaf: LeafArgs,
}

#[derive(Args)]
pub struct ClientArgs {
    /// Client name, used as the common name.
    name: String,
    /// DNS SANs.
    #[arg(long)]
    dns: Vec<String>,
    /// IP address SANs.
    #[arg(long)]
    ip: Vec<String>,
    /// URI SANs (e.g. a SPIFFE ID).
    #[arg(long)]
    uri: Vec<String>,
    /// E-mail SANs.
    #[arg(long)]
    email: Vec<String>,
    #[command(flatten)]
    pub leaf: LeafArgs,
}

impl IssueCommand {
    pub fn pki_args(&self) -> &crate::PkiArgs {
        match self {
            IssueCommand::Server(a) => &a.leaf.pki,
            IssueCommand::Client(a) => &a.leaf.pki,
        }
    }
}

fn usage<T>(r: mtls_pki::Result<T>) -> Result<T> {
    r.map_err(|e| UsageError(e.to_string()).into())
}

/// Says so when the certificate ends before the lifetime asked for (the issuing CA expires
/// first): a silent cap surprises at renewal time.
fn note_if_capped(issued: &issue::Issued, request: &LeafRequest, at: time::OffsetDateTime) {
    // Backdating and rounding move the end by minutes, never by an hour.
    // Checked: a CA valid until 9999-12-31 leaves no room for the hour.
    let capped = match (
        issued.not_after.checked_add(Duration::hours(1)),
        at.checked_add(request.lifetime),
    ) {
        (Some(end), Some(asked)) => end < asked,
        _ => false,
    };
    if capped {
        eprintln!(
            "note: the certificate ends {}, when the issuing CA expires, not after the {} days asked for",
            crate::util::fmt_time(issued.not_after),
            request.lifetime.whole_days()
        );
    }
}

fn lifetime(days: i64) -> Result<Duration> {
    crate::util::days(days, "--days")
}

/// Where a leaf's three files go.
struct Outputs {
    cert: PathBuf,
    chain: PathBuf,
    key: Option<PathBuf>,
}

impl Outputs {
    fn in_dir(dir: &Path, stem: &str, with_key: bool) -> Self {
        Outputs {
            cert: dir.join(format!("{stem}.crt")),
            chain: dir.join(format!("{stem}.chain.pem")),
            key: with_key.then(|| dir.join(format!("{stem}.key"))),
        }
    }
    /// Checks that the outputs may be written, holding the lock of their directory until the
    /// returned guard is dropped (after they were written): see [`files::lock_dir`].
    fn check(&self, force: bool) -> Result<files::DirLock> {
        let dir = self.cert.parent().unwrap_or(Path::new("."));
        let lock = files::lock_dir(dir)?;
        for p in [Some(&self.cert), Some(&self.chain), self.key.as_ref()]
            .into_iter()
            .flatten()
        {
            files::check_writable(p, force)?;
        }
        Ok(lock)
    }
}

/// Records the certificate durably, then writes key, certificate and chain.
fn record_and_write(
    dir: &PkiDir,
    ca: &CaCert,
    issued: &Issued,
    profile: Profile,
    key_pem: Option<&str>,
    outputs: &Outputs,
    force: bool,
) -> Result<()> {
    let mut inventory = dir.open_inventory()?;
    let issuer_key = mtls_pki::inspect::sha256_hex(&ca.key().public_key_spki());
    let pem = issued.pem();
    // Every output written (not yet in place) before the certificate is recorded, and put in
    // place only after: a failure leaves the old files whole and, before the record, nothing
    // issued.
    let mut staged = Vec::new();
    if let (Some(k), Some(path)) = (key_pem, &outputs.key) {
        staged.push(files::stage(path, k.as_bytes(), Visibility::Secret, force)?);
    }
    staged.push(files::stage(
        &outputs.cert,
        pem.as_bytes(),
        Visibility::Public,
        force,
    )?);
    staged.push(files::stage(
        &outputs.chain,
        format!("{pem}{}", ca.pem()).as_bytes(),
        Visibility::Public,
        force,
    )?);
    inventory
        .record_issued(
            mtls_store::CertificateToRecord::from_issued(issued, &issuer_key, &profile.to_string()),
            "cli",
            now(),
        )
        .context("recording the certificate in the inventory (nothing was written)")?;
    for s in staged {
        // Recorded, and not (all) written: said with the serial, as a failure of its own
        // (exit 1), not as a refusal that changed nothing.
        s.install().map_err(|e| {
            anyhow::anyhow!(
                "certificate {} was recorded in the inventory but not written ({e}): revoke it \
                 (mtls revoke {} --reason superseded) and issue again",
                issued.serial,
                issued.serial
            )
        })?;
    }
    Ok(())
}

fn summary(issued: &Issued, profile: Profile, outputs: &Outputs) -> String {
    let mut s = format!(
        "Issued {profile} certificate {}\n  serial   {}\n  valid    {} to {}\n",
        issued.subject,
        issued.serial,
        fmt_time(issued.not_before),
        fmt_time(issued.not_after)
    );
    if !issued.sans.is_empty() {
        let names: Vec<String> = issued.sans.iter().map(ToString::to_string).collect();
        s.push_str(&format!("  names    {}\n", names.join(", ")));
    }
    s.push_str(&format!(
        "  cert     {}\n  chain    {}\n",
        outputs.cert.display(),
        outputs.chain.display()
    ));
    if let Some(k) = &outputs.key {
        s.push_str(&format!("  key      {}\n", k.display()));
    }
    s
}

pub fn issue(pki: &Path, cmd: IssueCommand) -> Result<ExitCode> {
    let (profile, cn, sans, leaf) = match cmd {
        IssueCommand::Server(a) => {
            let mut sans = Vec::new();
            for n in &a.names {
                sans.push(usage(San::parse(n).and_then(|s| match s {
                    San::Dns(_) | San::Ip(_) => Ok(s),
                    _ => San::dns(n),
                }))?);
            }
            for u in &a.uri {
                sans.push(usage(San::uri(u))?);
            }
            let cn = a.cn.clone().unwrap_or_else(|| a.names[0].clone());
            (Profile::Server, cn, sans, a.leaf)
        }
        IssueCommand::Client(a) => {
            let mut sans = Vec::new();
            for d in &a.dns {
                sans.push(usage(San::dns(d))?);
            }
            for i in &a.ip {
                sans.push(usage(San::ip(i))?);
            }
            for u in &a.uri {
                sans.push(usage(San::uri(u))?);
            }
            for e in &a.email {
                sans.push(usage(San::email(e))?);
            }
            (Profile::Client, a.name.clone(), sans, a.leaf)
        }
    };
    let dir = PkiDir::new(pki);
    let alg: KeyAlgorithm = usage(leaf.key.key_type.parse())?;
    let request = LeafRequest {
        profile,
        subject: leaf.subject.subject(&cn),
        sans,
        lifetime: lifetime(leaf.days)?,
        urls: Default::default(),
    };
    usage(request.check())?;
    let out_dir = leaf.out.clone().unwrap_or_else(|| dir.issued());
    let outputs = Outputs::in_dir(&out_dir, &file_stem(&cn), true);
    let _lock = outputs.check(leaf.key.force)?;
    let ca = dir.load_issuer(&leaf.ca_key.source())?;
    let passphrase = if leaf.key.encrypt {
        Some(leaf.key.source().new_secret()?)
    } else {
        None
    };
    let key = PrivateKey::generate(alg)?;
    let kp = key_pem(&key, &leaf.key, passphrase.as_deref().map(|p| p.as_slice()))?;
    let at = now();
    let issued = issue::issue_leaf(&ca, key.key_pair(), &request, at)?;
    note_if_capped(&issued, &request, at);
    record_and_write(
        &dir,
        &ca,
        &issued,
        profile,
        Some(&kp),
        &outputs,
        leaf.key.force,
    )?;
    out(&summary(&issued, profile, &outputs))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct CsrArgs {
    /// Common name.
    #[arg(long)]
    cn: String,
    /// SANs (DNS name, IP, URI with scheme://, e-mail; or prefixed dns:/ip:/uri:/email:).
    #[arg(long)]
    san: Vec<String>,
    #[command(flatten)]
    subject: SubjectArgs,
    /// Where to write the private key.
    #[arg(long)]
    key_out: PathBuf,
    /// Where to write the CSR.
    #[arg(long)]
    csr_out: PathBuf,
    #[command(flatten)]
    key: NewKeyArgs,
}

pub fn csr(a: CsrArgs) -> Result<ExitCode> {
    let alg: KeyAlgorithm = usage(a.key.key_type.parse())?;
    let sans = a
        .san
        .iter()
        .map(|s| usage(San::parse(s)))
        .collect::<Result<Vec<_>>>()?;
    files::check_writable(&a.key_out, a.key.force)?;
    files::check_writable(&a.csr_out, a.key.force)?;
    let passphrase = if a.key.encrypt {
        Some(a.key.source().new_secret()?)
    } else {
        None
    };
    let key = PrivateKey::generate(alg)?;
    let csr = usage(pki_csr::create(&key, &a.subject.subject(&a.cn), &sans))?;
    let kp = key_pem(&key, &a.key, passphrase.as_deref().map(|p| p.as_slice()))?;
    let staged = [
        files::stage(&a.key_out, kp.as_bytes(), Visibility::Secret, a.key.force)?,
        files::stage(&a.csr_out, csr.as_bytes(), Visibility::Public, a.key.force)?,
    ];
    for s in staged {
        s.install()?;
    }
    out(&format!(
        "Wrote key {} and CSR {}\n",
        a.key_out.display(),
        a.csr_out.display()
    ))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct SignArgs {
    /// The CSR (PEM or DER).
    #[arg(long)]
    csr: PathBuf,
    /// Profile: client or server.
    #[arg(long)]
    profile: String,
    /// Extra SANs to add to those in the CSR.
    #[arg(long)]
    san: Vec<String>,
    /// Lifetime in days (capped at the intermediate's).
    #[arg(long, default_value_t = DEFAULT_LEAF_DAYS)]
    days: i64,
    /// Output directory (default: <pki>/issued).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overwrite existing output files.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    ca_key: CaKeyArgs,
    #[command(flatten)]
    pub pki: crate::PkiArgs,
}

pub fn sign(pki: &Path, a: SignArgs) -> Result<ExitCode> {
    let profile: Profile = usage(a.profile.parse())?;
    let bytes = files::read_public(&a.csr)?;
    let info =
        pki_csr::parse(&bytes).with_context(|| format!("reading CSR {}", a.csr.display()))?;
    if info.requests_ca {
        anyhow::bail!("CSR refused: it asks for a CA certificate (basicConstraints CA:TRUE); mtls sign issues only leaf certificates");
    }
    let mut sans = info.sans.clone();
    for s in &a.san {
        let san = usage(San::parse(s))?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    let mut subject: Subject = info.subject.clone();
    if profile == Profile::Server && !sans.iter().any(|s| matches!(s, San::Dns(_) | San::Ip(_))) {
        // `openssl req -subj /CN=api.example.com` puts the name only in the CN: carry it over.
        if let Ok(s) = San::parse(&subject.common_name) {
            if matches!(s, San::Dns(_) | San::Ip(_)) {
                sans.push(s);
            }
        }
    }
    if subject.common_name.is_empty() {
        subject.common_name = match sans.first() {
            Some(San::Dns(d)) | Some(San::Uri(d)) | Some(San::Email(d)) => d.clone(),
            Some(San::Ip(ip)) => ip.to_string(),
            None => anyhow::bail!("CSR refused: it has neither a common name nor any SAN"),
        };
    }
    let request = LeafRequest {
        profile,
        subject,
        sans,
        lifetime: lifetime(a.days)?,
        urls: Default::default(),
    };
    request
        .check()
        .map_err(|e| anyhow::anyhow!("CSR refused for the {profile} profile: {e}"))?;
    let dir = PkiDir::new(pki);
    let out_dir = a.out.clone().unwrap_or_else(|| dir.issued());
    let outputs = Outputs::in_dir(&out_dir, &file_stem(&request.subject.common_name), false);
    let _lock = outputs.check(a.force)?;
    let ca = dir.load_issuer(&a.ca_key.source())?;
    let at = now();
    let issued = issue::issue_leaf(&ca, &info.public_key, &request, at)?;
    note_if_capped(&issued, &request, at);
    record_and_write(&dir, &ca, &issued, profile, None, &outputs, a.force)?;
    out(&summary(&issued, profile, &outputs))?;
    Ok(ExitCode::SUCCESS)
}
