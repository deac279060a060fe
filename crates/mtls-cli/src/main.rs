//! `mtls`: the command line of the mtls toolkit.
//!
//! This crate only parses arguments, sets up logging, reads passphrases and maps errors to exit
//! codes; the work is done by the library crates (`mtls-pki`, `mtls-store`, `mtls-verify`, `mtls-serve`,
//! `mtls-gateway`, `mtls-ca`, `mtls-client`).
//!
//! Exit codes, one rule for every command: 0 success (for `verify`: the certificate is valid);
//! 1 the operation failed (a refusal, an invalid certificate for `verify`, a network, server or
//! database failure); 2 the input is at fault (arguments, a file that is missing, unreadable,
//! malformed or not owner-only, a wrong or missing passphrase, a configuration that does not
//! parse or validate); 22 for `request --fail` on an HTTP status of 400 or more.
// The doc comments on argument structs are clap's help text, written for a terminal
// (`<pki>/issued`, `PIDFILE[:SIGNAL]`), not rustdoc markup.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, FromArgMatches, Parser, Subcommand};

mod ca;
mod client;
mod examples;
mod issuing;
mod lifecycle;
mod online;
mod ops;
mod pkidir;
mod reading;
mod reference;
mod secrets;
mod serve;
mod util;

/// Mutual TLS, end to end: build and operate a certificate hierarchy.
#[derive(Parser)]
#[command(name = "mtls", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pki: PkiArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create and manage the certificate authorities.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Issue a server or client certificate (key generated locally).
    #[command(subcommand)]
    Issue(issuing::IssueCommand),
    /// Create a private key and a certificate signing request.
    #[command(after_help = examples::CSR)]
    Csr(issuing::CsrArgs),
    /// Sign a CSR made elsewhere (openssl req, another tool) with a profile.
    #[command(after_help = examples::SIGN)]
    Sign(issuing::SignArgs),
    /// List issued certificates from the inventory.
    #[command(after_help = examples::LIST)]
    List(lifecycle::ListArgs),
    /// Revoke a certificate (then run `mtls crl` to publish).
    #[command(after_help = examples::REVOKE)]
    Revoke(lifecycle::RevokeArgs),
    /// Write a CRL signed by the issuing CA.
    #[command(after_help = examples::CRL)]
    Crl(lifecycle::CrlArgs),
    /// Describe certificates, chains, CSRs, CRLs and keys (PEM or DER).
    #[command(after_help = examples::INSPECT)]
    Inspect(reading::InspectArgs),
    /// Validate a certificate chain; exit 0 valid, 1 invalid, 2 usage/input error.
    #[command(after_help = examples::VERIFY)]
    Verify(reading::VerifyArgs),
    /// Export a key and chain to another format.
    #[command(subcommand)]
    Export(reading::ExportCommand),
    /// Run the mTLS gateway (HTTP reverse proxy or raw TCP).
    #[command(after_help = examples::GATEWAY)]
    Gateway(Box<serve::GatewayArgs>),
    /// Make an HTTPS request with a client certificate (curl-like).
    #[command(after_help = examples::REQUEST)]
    Request(client::RequestArgs),
    /// Accept plaintext locally and forward it over mTLS to a server.
    #[command(after_help = examples::TUNNEL)]
    Tunnel(client::TunnelArgs),
    /// Enroll with an online CA: one-time token, key generated here, root pinned.
    #[command(after_help = examples::ENROLL)]
    Enroll(online::EnrollArgs),
    /// Renew certificates through the online CA (once, or as a daemon).
    #[command(after_help = examples::RENEW)]
    Renew(Box<online::RenewArgs>),
    /// Create a demo PKI and serve the seed's /api/secure over mTLS.
    #[command(after_help = examples::QUICKSTART)]
    Quickstart(serve::QuickstartArgs),
    /// Audit certificate, key and CRL files, PKI directories and configurations: every problem
    /// with a code, a severity, the file and the fix. Exit 0 clean, 1 errors, 3 warnings only.
    #[command(after_help = examples::DOCTOR)]
    Doctor(ops::DoctorArgs),
    /// Why a client is (or would be) refused: the decision a gateway listener makes about a
    /// certificate and a path, check by check, with the gateway's reason codes. Exit 0
    /// allowed, 1 refused.
    #[command(after_help = examples::EXPLAIN)]
    Explain(ops::ExplainArgs),
    /// Export certificate expiry, renewal state, CRL freshness and the inventory's expiring
    /// certificates to Prometheus.
    #[command(after_help = examples::MONITOR)]
    Monitor(ops::MonitorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = examples::COMPLETIONS)]
    Completions(reference::CompletionsArgs),
    /// Write docs/cli.md, the man pages and completion files (for packagers).
    #[command(hide = true)]
    GenerateReference(reference::GenerateArgs),
}

/// Where the PKI directory and its inventory are: accepted before any command (`mtls --pki DIR
/// …`) and, for the commands that use them, after the command too, shown in their help only.
#[derive(Args, Clone, Default)]
#[command(next_help_heading = "PKI and inventory")]
pub struct PkiArgs {
    /// PKI directory holding the CA, its keys and the inventory [default: pki].
    #[arg(long, env = "MTLS_PKI_DIR", value_name = "DIR")]
    pki: Option<PathBuf>,
    /// Inventory database: a PostgreSQL URL (postgres://user@host/db) shared with online CA
    /// instances, or an SQLite path [default: inventory.db in the PKI directory].
    #[arg(long, env = "MTLS_DATABASE", value_name = "URL|PATH")]
    database: Option<String>,
    /// CA bundle that verifies the PostgreSQL server: the connection then requires TLS.
    #[arg(long, env = "MTLS_DATABASE_CA", value_name = "FILE")]
    database_ca: Option<PathBuf>,
    /// Client certificate chain for PostgreSQL `cert` authentication (with --database-key).
    #[arg(
        long,
        env = "MTLS_DATABASE_CERT",
        value_name = "FILE",
        requires = "database_ca"
    )]
    database_cert: Option<PathBuf>,
    /// Key of --database-cert (owner-only).
    #[arg(
        long,
        env = "MTLS_DATABASE_KEY",
        value_name = "FILE",
        requires = "database_cert"
    )]
    database_key: Option<PathBuf>,
}

impl PkiArgs {
    /// These options, each one given here winning over `outer` (given before the command).
    fn or(&self, outer: &PkiArgs) -> PkiArgs {
        PkiArgs {
            pki: self.pki.clone().or_else(|| outer.pki.clone()),
            database: self.database.clone().or_else(|| outer.database.clone()),
            database_ca: self
                .database_ca
                .clone()
                .or_else(|| outer.database_ca.clone()),
            database_cert: self
                .database_cert
                .clone()
                .or_else(|| outer.database_cert.clone()),
            database_key: self
                .database_key
                .clone()
                .or_else(|| outer.database_key.clone()),
        }
    }

    /// The PKI directory given (`--pki`, `MTLS_PKI_DIR`), if any.
    pub fn explicit_dir(&self) -> Option<&std::path::Path> {
        self.pki.as_deref()
    }

    /// The PKI directory: as given, else `pki`.
    pub fn dir(&self) -> PathBuf {
        self.pki.clone().unwrap_or_else(|| PathBuf::from("pki"))
    }
}

/// Options for writing a new private key.
#[derive(Args, Clone, Debug)]
pub struct NewKeyArgs {
    /// Key type: ecdsa-p256, ecdsa-p384, ed25519, rsa-2048, rsa-3072, rsa-4096.
    #[arg(long, default_value = "ecdsa-p256")]
    pub key_type: String,
    /// Encrypt the new private key (PKCS#8, PBKDF2-SHA256 + AES-256-CBC).
    #[arg(long)]
    pub encrypt: bool,
    /// File holding the passphrase for --encrypt (else $MTLS_PASSPHRASE, else a prompt).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Overwrite existing output files.
    #[arg(long)]
    pub force: bool,
}

/// Options for unlocking the CA key.
#[derive(Args, Clone, Debug)]
pub struct CaKeyArgs {
    /// File holding the passphrase of the CA key (else $MTLS_CA_PASSPHRASE, else a prompt).
    #[arg(long, value_name = "FILE")]
    pub ca_passphrase_file: Option<PathBuf>,
}

impl CaKeyArgs {
    pub fn source(&self) -> secrets::Source<'_> {
        secrets::Source {
            file: self.ca_passphrase_file.as_deref(),
            env: "MTLS_CA_PASSPHRASE",
            flag: "--ca-passphrase-file",
            what: "CA key passphrase",
        }
    }
}

/// Options for the root key's passphrase (unlocking it, or choosing it at `ca init
/// --encrypt`): never the intermediate's, which the online CA's host holds.
#[derive(Args, Clone, Debug)]
pub struct RootKeyArgs {
    /// File holding the passphrase of the root key (else $MTLS_ROOT_PASSPHRASE, else a
    /// prompt); with `ca init --encrypt`, it must differ from the intermediate's.
    #[arg(long, value_name = "FILE")]
    pub root_passphrase_file: Option<PathBuf>,
}

impl RootKeyArgs {
    pub fn source(&self) -> secrets::Source<'_> {
        secrets::Source {
            file: self.root_passphrase_file.as_deref(),
            env: "MTLS_ROOT_PASSPHRASE",
            flag: "--root-passphrase-file",
            what: "root key passphrase",
        }
    }
}

impl NewKeyArgs {
    pub fn source(&self) -> secrets::Source<'_> {
        secrets::Source {
            file: self.passphrase_file.as_deref(),
            env: "MTLS_PASSPHRASE",
            flag: "--passphrase-file",
            what: "new key passphrase",
        }
    }
}

/// An error in the user's input: exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);
impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

/// The command line as users see it: the clap definitions, with every required option marked
/// `[required]` in its help (clap shows that only in the usage line). `--help`, the man page,
/// completions and `docs/cli.md` all come from here.
pub(crate) fn command() -> clap::Command {
    fn mark(mut cmd: clap::Command) -> clap::Command {
        let required: Vec<clap::Id> = cmd
            .get_arguments()
            .filter(|a| a.is_required_set() && !a.is_positional())
            .map(|a| a.get_id().clone())
            .collect();
        for id in required {
            cmd = cmd.mut_arg(id, |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                a.help(format!("{help} [required]"))
            });
        }
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        for n in names {
            cmd = cmd.mut_subcommand(n, mark);
        }
        cmd
    }
    mark(<Cli as clap::CommandFactory>::command())
}

impl Command {
    /// The PKI options given after the command, for the commands that take them.
    fn pki_args(&self) -> Option<&PkiArgs> {
        match self {
            Command::Ca(c) => Some(c.pki_args()),
            Command::Issue(c) => Some(c.pki_args()),
            Command::Sign(a) => Some(&a.pki),
            Command::List(a) => Some(&a.pki),
            Command::Revoke(a) => Some(&a.pki),
            Command::Crl(a) => Some(&a.pki),
            Command::Monitor(a) => Some(&a.pki),
            _ => None,
        }
    }
}

pub(crate) fn run(cli: Cli) -> Result<ExitCode> {
    let given = match cli.command.pki_args() {
        Some(after) => after.or(&cli.pki),
        None => cli.pki.clone(),
    };
    let _ = pkidir::DATABASE.set(pkidir::Database {
        url: given.database.clone(),
        ca: given.database_ca.clone(),
        cert: given.database_cert.clone(),
        key: given.database_key.clone(),
    });
    let pki = given.dir();
    match cli.command {
        Command::Ca(c) => ca::run(&pki, given.explicit_dir(), c),
        Command::Issue(c) => issuing::issue(&pki, c),
        Command::Csr(a) => issuing::csr(a),
        Command::Sign(a) => issuing::sign(&pki, a),
        Command::List(a) => lifecycle::list(&pki, a),
        Command::Revoke(a) => lifecycle::revoke(&pki, a),
        Command::Crl(a) => lifecycle::crl(&pki, a),
        Command::Inspect(a) => reading::inspect(a),
        Command::Verify(a) => reading::verify(a),
        Command::Export(c) => reading::export(c),
        Command::Gateway(a) => serve::gateway(*a),
        Command::Request(a) => client::request(a),
        Command::Tunnel(a) => client::tunnel(a),
        Command::Quickstart(a) => serve::quickstart(a),
        Command::Completions(a) => reference::completions(a),
        Command::Doctor(a) => ops::doctor(a),
        Command::Explain(a) => ops::explain(a),
        Command::Monitor(a) => ops::monitor(a, &pki),
        Command::GenerateReference(a) => reference::generate(a),
        Command::Enroll(a) => online::enroll(a),
        Command::Renew(a) => online::renew(*a),
    }
}

/// The one exit-code rule: 2 when the user's input is at fault — arguments, a file that is
/// missing, unreadable, malformed or not owner-only, a wrong or missing passphrase, a
/// configuration that does not parse or validate; 1 when the operation itself failed (a
/// refusal, an invalid certificate for `verify`, a network, server or database failure).
pub(crate) fn is_input_error(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if cause.is::<UsageError>() {
            return true;
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            return io_input(e);
        }
        if let Some(e) = cause.downcast_ref::<mtls_pki::Error>() {
            return pki_input(e);
        }
        if let Some(e) = cause.downcast_ref::<mtls_tls::Error>() {
            return tls_input(e);
        }
        if let Some(e) = cause.downcast_ref::<mtls_serve::Error>() {
            return match e {
                mtls_serve::Error::Config(_) | mtls_serve::Error::Trust(_) => true,
                mtls_serve::Error::Tls(e) => tls_input(e),
                mtls_serve::Error::Pki(e) => pki_input(e),
                _ => false,
            };
        }
        if let Some(e) = cause.downcast_ref::<mtls_gateway::Error>() {
            return matches!(
                e,
                mtls_gateway::Error::Config(_) | mtls_gateway::Error::ConfigFile { .. }
            );
        }
        if let Some(e) = cause.downcast_ref::<mtls_ca::Error>() {
            return matches!(e, mtls_ca::Error::Config(_));
        }
        false
    })
}

fn io_input(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::NotFound | ErrorKind::PermissionDenied | ErrorKind::IsADirectory
    )
}

fn pki_input(e: &mtls_pki::Error) -> bool {
    match e {
        mtls_pki::Error::Io { source, .. } => io_input(source),
        mtls_pki::Error::Malformed { .. }
        | mtls_pki::Error::NotFound { .. }
        | mtls_pki::Error::InsecurePermissions { .. }
        | mtls_pki::Error::AlreadyExists { .. }
        | mtls_pki::Error::PassphraseRequired
        | mtls_pki::Error::WrongPassphrase => true,
        _ => false,
    }
}

fn tls_input(e: &mtls_tls::Error) -> bool {
    match e {
        mtls_tls::Error::Credential { .. } | mtls_tls::Error::NoRoots => true,
        mtls_tls::Error::Pki(e) => pki_input(e),
        _ => false,
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MTLS_LOG")
                // The renewal daemon's "renewed" and "waiting until" lines are what its
                // operator watches: shown by default.
                .unwrap_or_else(|_| "warn,mtls_client::renewal=info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs redirected to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // A closed stdout (`mtls list | head`) is not an error.
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            eprintln!("mtls: {}", mtls_client::ca::error_chain(err.as_ref()));
            if is_input_error(&err) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
