//! The online CA from the command line: `ca serve`, `ca token`, `enroll`, `renew`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::Args;
use mtls_ca::authority::TokenRequest;
use mtls_ca::config::Config;
use mtls_client::ca::{CaClient, CaUrl};
use mtls_client::renewal::{self, DaemonOptions, Hook, Threshold, Watch, WatchState};
use mtls_pki::files::{self, Visibility};
use mtls_pki::issue::Subject;
use mtls_pki::{KeyAlgorithm, PrivateKey};
use mtls_store::Store;

use crate::pkidir::PkiDir;
use crate::serve::{runtime, wait_for_stop};
use crate::util::{deliver, fmt_time, now, out};
use crate::{CaKeyArgs, UsageError};

#[derive(Args)]
pub struct ServeArgs {
    /// The CA configuration file (TOML; see the README).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    ca_key: CaKeyArgs,
    #[command(flatten)]
    pub pki: crate::PkiArgs,
}

/// `pki_dir`: the PKI directory named by `--pki`/`MTLS_PKI_DIR`, which wins over the file's
/// `pki` (as `--database` wins over its `database`).
pub fn serve(a: ServeArgs, pki_dir: Option<&Path>) -> Result<ExitCode> {
    let text =
        std::fs::read_to_string(&a.config).with_context(|| a.config.display().to_string())?;
    let config =
        Config::parse(&text).map_err(|e| UsageError(format!("{}: {e}", a.config.display())))?;
    let mut settings = config.settings().map_err(|e| UsageError(e.to_string()))?;
    // Relative paths in the file are relative to the file.
    let base = a.config.parent().unwrap_or(Path::new("."));
    let pki = match pki_dir {
        Some(dir) => dir.to_path_buf(),
        None => base.join(&config.pki),
    };
    let dir = PkiDir::new(&pki);
    settings.root_crl = Some(match &config.root_crl {
        Some(p) => base.join(p),
        None => dir.root_crl(),
    });
    let issuer = dir.load_issuer(&a.ca_key.source())?;
    let root = dir.root_cert_der()?;
    // --database / MTLS_DATABASE override the file.
    let loc = dir.location_or(config.database.as_deref())?;
    let names = if config.server_names.is_empty() {
        vec!["localhost".to_string(), config.listen.ip().to_string()]
    } else {
        config.server_names.clone()
    };
    let ledger = dir.ledger();
    runtime()?.block_on(async move {
        let store = Store::open_with(&loc, crate::pkidir::pg_tls()?)
            .await
            .context("opening the inventory")?
            // A database restored from an older backup would publish a CRL numbered
            // backwards, without the revocations made since: refuse to start.
            .with_ledger(ledger)
            .await?;
        let ca = mtls_ca::Authority::new(
            mtls_ca::AuthorityParts {
                issuer,
                root,
                store,
                settings,
            },
            now(),
        )
        .await?;
        let fp = mtls_pki::inspect::sha256_hex(ca.root());
        let ca = Arc::new(ca);
        let running = mtls_ca::serve(
            ca,
            config.listen,
            config.publish_listen,
            config.metrics_listen,
            names,
        )
        .await?;
        eprintln!("mtls ca: listening on https://{}", running.addr);
        if let Some(p) = running.publish_addr {
            eprintln!("mtls ca: CRL and OCSP on http://{p}");
        }
        if let Some(m) = running.metrics_addr {
            eprintln!("mtls ca: metrics on http://{m}/metrics");
        }
        eprintln!("mtls ca: root fingerprint (for `mtls enroll --ca-fingerprint`): {fp}");
        wait_for_stop().await;
        running.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct TokenArgs {
    /// The common name of the certificate the token allows.
    #[arg(long)]
    name: String,
    /// SANs the certificate may carry (DNS name, IP, URI or e-mail; repeatable).
    #[arg(long)]
    san: Vec<String>,
    /// Certificate profile: client or server.
    #[arg(long, default_value = "client")]
    profile: String,
    /// How long the token stays usable.
    #[arg(long, default_value = "10m", value_parser = crate::util::duration_arg)]
    ttl: time::Duration,
    #[command(flatten)]
    pub pki: crate::PkiArgs,
}

pub fn token(pki: &Path, a: TokenArgs) -> Result<ExitCode> {
    let profile = a
        .profile
        .parse()
        .map_err(|e: mtls_pki::Error| UsageError(e.to_string()))?;
    let ttl = a.ttl;
    let dir = PkiDir::new(pki);
    let loc = dir.location_or(None)?;
    let ledger = dir.ledger();
    // Its certificate only (no key, no passphrase): a token is refused when the CA would
    // refuse what it allows.
    let issuer = dir.issuer_cert()?;
    let (token, expires) = runtime()?.block_on(async move {
        let store = Store::open_with(&loc, crate::pkidir::pg_tls()?)
            .await
            .context("opening the inventory")?
            // A token minted into a rolled-back inventory could be used twice.
            .with_ledger(ledger)
            .await?;
        mtls_ca::authority::mint_token(
            &store,
            &issuer,
            TokenRequest {
                name: a.name,
                sans: a.san,
                profile,
                ttl,
            },
            "cli",
            now(),
        )
        .await
        .map_err(|e| match e {
            mtls_ca::authority::MintError::Invalid(m) => anyhow::Error::new(UsageError(m)),
            e => e.into(),
        })
    })?;
    eprintln!("single-use token, valid until {}:", fmt_time(expires));
    deliver(
        &format!("{token}\n"),
        "token (minted, unused; it expires by itself)",
    )?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct EnrollArgs {
    /// The CA's URL (https://host:port).
    #[arg(long)]
    ca_url: String,
    /// SHA-256 fingerprint of the CA's root, as `mtls ca serve` prints it (hex; colons, case
    /// and a `sha256:` prefix as `openssl x509 -fingerprint` and `step` print it are fine).
    #[arg(long, value_name = "SHA256")]
    ca_fingerprint: mtls_pki::Fingerprint,
    /// File holding the one-time token from `mtls ca token` (owner-only, like a passphrase
    /// file; `-` reads it from standard input). Else $MTLS_TOKEN, else a prompt. The token is
    /// never taken as an argument: every local user can read a process's arguments.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Refused: a token given as an argument is readable by every local user (`ps`,
    /// /proc/PID/cmdline) while the key is generated, and kept in shell history.
    #[arg(long, hide = true, value_name = "TOKEN")]
    token: Option<String>,
    /// Output directory: key.pem (0600), cert.pem (leaf + intermediate), ca.crt (root).
    #[arg(long)]
    out: PathBuf,
    /// Key type: ecdsa-p256, ecdsa-p384, ed25519, rsa-2048, rsa-3072, rsa-4096.
    #[arg(long, default_value = "ecdsa-p256")]
    key_type: String,
    /// Extra SANs to ask for (must be allowed by the token; default: all the token allows).
    #[arg(long)]
    san: Vec<String>,
    /// Overwrite existing files in the output directory.
    #[arg(long)]
    force: bool,
}

/// The directories of a path that do not exist yet, removed again (deepest first, each only
/// if empty) when dropped before [`MadeDirs::keep`].
struct MadeDirs(Vec<PathBuf>);

impl MadeDirs {
    fn before_writing(dir: &Path) -> Self {
        MadeDirs(
            dir.ancestors()
                .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
                .map(Path::to_path_buf)
                .collect(),
        )
    }

    fn keep(&mut self) {
        self.0.clear();
    }
}

impl Drop for MadeDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
        }
    }
}

pub fn enroll(a: EnrollArgs) -> Result<ExitCode> {
    if a.token.is_some() {
        return Err(UsageError(
            "--token is not accepted: a token on the command line is readable by every local user (ps, /proc/PID/cmdline) and kept in shell history; pass it with --token-file FILE (owner-only; `-` for standard input) or MTLS_TOKEN, or type it at the prompt (this token was not used)".into(),
        )
        .into());
    }
    let url = CaUrl::parse(&a.ca_url).map_err(|e| UsageError(e.to_string()))?;
    let alg: KeyAlgorithm = a
        .key_type
        .parse()
        .map_err(|e: mtls_pki::Error| UsageError(e.to_string()))?;
    let (key_path, cert_path, root_path) = (
        a.out.join("key.pem"),
        a.out.join("cert.pem"),
        a.out.join("ca.crt"),
    );
    for p in [&key_path, &cert_path, &root_path] {
        files::check_writable(p, a.force)?;
    }
    let sans = a
        .san
        .iter()
        .map(|s| mtls_pki::San::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| UsageError(e.to_string()))?;
    // Read (or asked for) before the key is generated, which takes seconds for RSA.
    let token = crate::secrets::enrollment_token(a.token_file.as_deref())?;
    // The key is made here and never leaves this machine.
    let key = PrivateKey::generate(alg)?;
    let csr = mtls_pki::csr::create(&key, &Subject::cn(""), &sans)?;
    // Staged before the token is spent: an output that cannot be written (its directory a
    // file, not writable) is found while the token is still unused. Directories made for it
    // go again if the enrollment fails: a refused enrollment writes nothing.
    let mut made_dirs = MadeDirs::before_writing(&a.out);
    let staged_key = files::stage(
        &key_path,
        key.to_pem().as_bytes(),
        Visibility::Secret,
        a.force,
    )?;
    let obtained = time::OffsetDateTime::now_utc();
    let (root, issued) = runtime()?.block_on(async {
        let root = CaClient::fetch_pinned_root(&url, &a.ca_fingerprint).await?;
        let client = CaClient::new(url.clone(), &root, None)?;
        let issued = client.enroll(&token, &csr).await?;
        Ok::<_, mtls_client::Error>((root, issued))
    })?;
    let chain = renewal::served_chain(&issued, &root)?;
    let certs = mtls_pki::pem_io::certificates(chain.as_bytes())?;
    // The check renewals make: what the CA returned must lead to the root pinned by
    // --ca-fingerprint before anything is written.
    renewal::chains_to_root(&certs, &root, now())
        .map_err(|d| anyhow::anyhow!("the CA returned a certificate that is refused: {d}"))?;
    mtls_tls::credential_from_parts(certs, &key, now())
        .map_err(|d| anyhow::anyhow!("the CA returned an unusable certificate: {d}"))?;
    // All three written before any is put in place: a failure leaves the old set whole
    // (a new key beside the old certificate would serve nothing and renew nothing). From
    // here a failure is after the CA issued: said, with the serial.
    let issued_note = || {
        format!(
            "certificate {} was issued and the token used, but not installed",
            issued.serial
        )
    };
    let staged = [
        staged_key,
        files::stage(&cert_path, chain.as_bytes(), Visibility::Public, a.force)
            .with_context(issued_note)?,
        files::stage(
            &root_path,
            mtls_pki::pem_io::encode("CERTIFICATE", &root).as_bytes(),
            Visibility::Public,
            a.force,
        )
        .with_context(issued_note)?,
    ];
    for s in staged {
        s.install().with_context(issued_note)?;
    }
    made_dirs.keep();
    // A renewal daemon plans from now, not from the notBefore the CA backdated.
    renewal::note_obtained(&cert_path, issued.not_after, obtained);
    out(&format!(
        "enrolled: serial {} valid until {}\n  key  {}\n  cert {}\n  root {}\n",
        issued.serial,
        fmt_time(issued.not_after),
        key_path.display(),
        cert_path.display(),
        root_path.display()
    ))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct RenewArgs {
    /// Certificate file (leaf + intermediates); repeat with --key for several certificates.
    #[arg(long, required = true)]
    cert: Vec<PathBuf>,
    /// Key file for the --cert at the same position (may be the same combined file).
    #[arg(long, required = true)]
    key: Vec<PathBuf>,
    /// The CA's URL (https://host:port).
    #[arg(long)]
    ca_url: String,
    /// The CA root (default: ca.crt next to the first certificate, as `mtls enroll` writes it).
    #[arg(long)]
    ca_root: Option<PathBuf>,
    /// Keep running and renew each certificate when due.
    #[arg(long)]
    daemon: bool,
    /// Renew after this fraction of the lifetime (2/3, 0.75, 75%).
    #[arg(long, conflicts_with = "renew_before")]
    renew_at: Option<String>,
    /// Renew this long before expiry (30d, 12h, …).
    #[arg(long, value_parser = crate::util::duration_arg)]
    renew_before: Option<time::Duration>,
    /// Generate a new key at each renewal (needs --cert and --key to be one combined file).
    #[arg(long)]
    rotate_key: bool,
    /// Command to run after each renewal (sh -c). In daemon mode a failed hook is run again
    /// (from 5 s, backing off to 5 minutes; also after a restart) until it succeeds.
    #[arg(long, conflicts_with = "signal")]
    exec: Option<String>,
    /// Signal a process after each renewal: PIDFILE[:SIGNAL] (default HUP).
    #[arg(long)]
    signal: Option<String>,
    /// Serve the daemon's state as Prometheus metrics on this address (daemon mode).
    #[arg(long, value_parser = crate::util::listen_arg)]
    metrics_listen: Option<SocketAddr>,
    /// Passphrase file for encrypted keys (owner-only; else $MTLS_PASSPHRASE): read once at
    /// start, so a daemon need not keep it in its environment.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

pub fn renew(a: RenewArgs) -> Result<ExitCode> {
    if a.cert.len() != a.key.len() {
        return Err(UsageError("give one --key for each --cert".into()).into());
    }
    let url = CaUrl::parse(&a.ca_url).map_err(|e| UsageError(e.to_string()))?;
    let root = match &a.ca_root {
        Some(r) => r.clone(),
        None => a.cert[0].parent().unwrap_or(Path::new(".")).join("ca.crt"),
    };
    let threshold = match (&a.renew_at, &a.renew_before) {
        (Some(f), _) => Threshold::parse_fraction(f).map_err(UsageError)?,
        (None, Some(b)) => Threshold::Before(*b),
        (None, None) => Threshold::default(),
    };
    let hook = match (&a.exec, &a.signal) {
        (Some(c), _) => Hook::Exec(c.clone()),
        (None, Some(s)) => Hook::parse_signal(s).map_err(UsageError)?,
        (None, None) => Hook::None,
    };
    let watches: Vec<Watch> = a
        .cert
        .iter()
        .zip(&a.key)
        .map(|(c, k)| Watch {
            cert: c.clone(),
            key: k.clone(),
            root: root.clone(),
        })
        .collect();
    let passphrase = crate::secrets::Source {
        file: a.passphrase_file.as_deref(),
        env: "MTLS_PASSPHRASE",
        flag: "--passphrase-file",
        what: "key passphrase",
    }
    .supplied()?;
    if !a.daemon {
        return runtime()?.block_on(async {
            // Every certificate gets its chance, and the hook runs if any was replaced: the
            // service must reload what is already on disk even when another renewal failed.
            let mut renewed = 0;
            let mut failures = Vec::new();
            for w in &watches {
                match renewal::renew_once(
                    w,
                    &url,
                    a.rotate_key,
                    passphrase.as_ref().map(|p| p.as_slice()),
                    now(),
                )
                .await
                {
                    Ok(issued) => {
                        renewed += 1;
                        out(&format!(
                            "renewed {}: serial {} valid until {}\n",
                            w.cert.display(),
                            issued.serial,
                            fmt_time(issued.not_after)
                        ))?;
                    }
                    Err(e) => failures.push(
                        anyhow::Error::new(e).context(format!("renewing {}", w.cert.display())),
                    ),
                }
            }
            let hook = if renewed > 0 {
                hook.run().await
            } else {
                Ok(())
            };
            if failures.len() == 1 && hook.is_ok() {
                // One failure keeps its causes, and so its exit code (2 for a missing or
                // unreadable file, 1 for a refusal).
                if let Some(failure) = failures.pop() {
                    return Err(failure);
                }
            }
            if !failures.is_empty() {
                // Several: input errors (exit 2) only when every failure is one.
                let input = hook.is_ok() && failures.iter().all(crate::is_input_error);
                let mut lines: Vec<String> = failures
                    .iter()
                    .map(|e| mtls_client::ca::error_chain(e.as_ref()))
                    .collect();
                if let Err(e) = &hook {
                    lines.push(format!("the hook failed: {e}"));
                }
                if input {
                    return Err(UsageError(lines.join("\n")).into());
                }
                anyhow::bail!("{}", lines.join("\n"));
            }
            if let Err(e) = hook {
                anyhow::bail!("renewed, but the hook failed: {e}");
            }
            Ok(ExitCode::SUCCESS)
        });
    }
    let opts = DaemonOptions {
        url,
        threshold,
        rotate_key: a.rotate_key,
        hook,
        max_sleep: time::Duration::minutes(10),
    };
    let states: renewal::States = Arc::new(Mutex::new(
        watches
            .iter()
            .map(|w| WatchState {
                cert: w.cert.display().to_string(),
                ..Default::default()
            })
            .collect(),
    ));
    runtime()?.block_on(async move {
        if let Some(addr) = a.metrics_listen {
            let bound = serve_metrics(addr, states.clone()).await?;
            eprintln!("mtls renew: metrics on http://{bound}/metrics");
        }
        // Supervised: a watch never ends by itself, so one that does (a panic) stops the
        // daemon with an error for its supervisor to see, instead of that certificate quietly
        // no longer being renewed while the process and its metrics live on.
        let mut running = tokio::task::JoinSet::new();
        let mut names = std::collections::HashMap::new();
        for (i, w) in watches.into_iter().enumerate() {
            let cert = w.cert.display().to_string();
            let task = running.spawn(renewal::watch_forever(
                i,
                w,
                opts.clone(),
                passphrase.clone(),
                states.clone(),
            ));
            names.insert(task.id(), cert);
        }
        tokio::select! {
            () = wait_for_stop() => Ok(()),
            Some(ended) = running.join_next_with_id() => {
                let (id, how) = match &ended {
                    Ok((id, ())) => (*id, "ended"),
                    Err(e) => (e.id(), if e.is_panic() { "failed (a panic)" } else { "stopped" }),
                };
                let cert = names.get(&id).map_or("?", String::as_str);
                Err(anyhow::anyhow!(
                    "the renewal of {cert} {how}: exiting so that it is restarted"
                ))
            }
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn serve_metrics(addr: SocketAddr, states: renewal::States) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --metrics-listen {addr}"))?;
    let bound = listener.local_addr()?;
    let mut registry = mtls_serve::metrics::Registry::default();
    renewal::register_metrics(&mut registry, &states);
    // Runs until the process exits (the daemon has no drain).
    let (_never, shutdown) = mtls_serve::shutdown();
    tokio::spawn(async move {
        let _keep = _never;
        mtls_serve::http::serve_metrics(listener, Arc::new(registry), shutdown).await
    });
    Ok(bound)
}
