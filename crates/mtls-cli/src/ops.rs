//! `mtls doctor` (audit files and configurations) and `mtls monitor` (expiry exporter).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use mtls_ops::doctor::{self, Options, Report, Severity};

use crate::util::out;
use crate::UsageError;

#[derive(Args)]
pub struct DoctorArgs {
    /// Certificate, key and CRL files, and directories (a PKI directory is also checked as a
    /// whole: key storage, CRL).
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// A gateway.toml or ca.toml to audit, with every file it names (repeatable).
    #[arg(long, value_name = "FILE")]
    config: Vec<PathBuf>,
    /// Report certificates expiring within this.
    #[arg(long, default_value = "30d", value_parser = crate::util::duration_arg)]
    expiring_within: time::Duration,
    /// Report leaf certificates valid for longer than this.
    #[arg(long, default_value = "398d", value_parser = crate::util::duration_arg)]
    max_leaf_validity: time::Duration,
    /// JSON output (schema: docs/doctor.schema.json).
    #[arg(long)]
    json: bool,
}

/// Exit code for warnings without errors (errors exit 1, a clean audit 0).
const WARNINGS_ONLY: u8 = 3;

pub fn doctor(a: DoctorArgs) -> Result<ExitCode> {
    if a.paths.is_empty() && a.config.is_empty() {
        return Err(
            UsageError("give files or directories to audit, or --config FILE".into()).into(),
        );
    }
    let options = Options {
        now: time::OffsetDateTime::now_utc(),
        expiry_warning: a.expiring_within,
        max_leaf_validity: a.max_leaf_validity,
    };
    let mut report = Report::default();
    for p in &a.paths {
        if !p.exists() {
            return Err(UsageError(format!("{}: no such file or directory", p.display())).into());
        }
    }
    doctor::audit_paths(&a.paths, &options, &mut report);
    for c in &a.config {
        let text = std::fs::read_to_string(c).with_context(|| c.display().to_string())?;
        // A gateway configuration has listeners; the CA's has none.
        let gateway = text
            .lines()
            .any(|l| l.trim_start().starts_with("[[listener"));
        let audited = if gateway {
            doctor::audit_gateway_config(c, &options, &mut report)
        } else {
            doctor::audit_ca_config(c, &options, &mut report)
        };
        audited.map_err(|e| UsageError(e.to_string()))?;
    }
    let (errors, warnings, info) = (
        report.count(Severity::Error),
        report.count(Severity::Warning),
        report.count(Severity::Info),
    );
    if a.json {
        let doc = serde_json::json!({
            "findings": report.findings,
            "summary": {"files": report.files_audited(), "errors": errors, "warnings": warnings, "info": info},
        });
        out(&format!("{doc}\n"))?;
    } else {
        let mut s = String::new();
        for f in &report.findings {
            let sev = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Info => "info",
            };
            s.push_str(&format!(
                "{sev}[{}] {}: {}\n  fix: {}\n",
                f.code,
                f.file.display(),
                f.message,
                f.fix
            ));
        }
        s.push_str(&format!(
            "{} file(s) audited: {errors} error(s), {warnings} warning(s), {info} note(s)\n",
            report.files_audited()
        ));
        out(&s)?;
    }
    Ok(match report.worst() {
        Some(Severity::Error) => ExitCode::FAILURE,
        Some(Severity::Warning) => ExitCode::from(WARNINGS_ONLY),
        _ => ExitCode::SUCCESS,
    })
}

#[derive(Args)]
pub struct MonitorArgs {
    /// Address of the Prometheus endpoint (/metrics).
    #[arg(long, value_parser = crate::util::listen_arg)]
    listen: SocketAddr,
    /// Certificate and CRL files (PEM or DER), and directories of them, read on every scrape;
    /// each must exist at start. A file that cannot be read or parsed is reported as
    /// mtls_watched_file_error 1.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Also count the CA inventory's certificates expiring within 7 and 30 days (read every
    /// 30 s).
    #[arg(long)]
    inventory: bool,
    #[command(flatten)]
    pub pki: crate::PkiArgs,
}

pub fn monitor(a: MonitorArgs, pki: &std::path::Path) -> Result<ExitCode> {
    if a.paths.is_empty() && !a.inventory {
        return Err(UsageError("give files or directories to watch, or --inventory".into()).into());
    }
    // A typo would otherwise watch nothing, and export nothing to alert on.
    for p in &a.paths {
        if !p.exists() {
            return Err(UsageError(format!("{}: no such file or directory", p.display())).into());
        }
    }
    let watched = Arc::new(mtls_ops::expiry::Watched {
        paths: a.paths.clone(),
        inventory: Default::default(),
        inventory_watched: a.inventory,
    });
    let dir = crate::pkidir::PkiDir::new(pki);
    let store_location = if a.inventory {
        let loc = dir.location_or(None)?;
        // The monitor creates nothing: a mistyped path would otherwise be a new, empty
        // inventory reporting nothing expiring, for ever.
        if let mtls_store::Location::Sqlite(path) = &loc {
            if !path.exists() {
                return Err(UsageError(format!(
                    "{}: no inventory there (the monitor reads one, it creates none)",
                    path.display()
                ))
                .into());
            }
        }
        Some(loc)
    } else {
        None
    };
    let ledger = dir.ledger();
    crate::serve::runtime()?.block_on(async move {
        if let Some(loc) = store_location {
            // Checked against what the CA published, as every command reading the inventory
            // is: a database restored from an older backup, or another one, is refused.
            let store = mtls_store::Store::open_with(&loc, crate::pkidir::pg_tls()?)
                .await
                .context("opening the inventory")?
                .with_ledger(ledger)
                .await
                .context("opening the inventory")?;
            let w = watched.clone();
            tokio::spawn(async move {
                loop {
                    let now = time::OffsetDateTime::now_utc();
                    match mtls_ops::expiry::read_inventory(&store, now).await {
                        Ok(r) => {
                            if let Ok(mut g) = w.inventory.lock() {
                                *g = Some(r);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "reading the inventory failed"),
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                }
            });
        }
        let mut registry = mtls_serve::metrics::Registry::default();
        mtls_ops::expiry::register_metrics(&mut registry, &watched);
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("binding {}", a.listen))?;
        eprintln!(
            "mtls monitor: metrics on http://{}/metrics",
            listener.local_addr()?
        );
        let (stop, shutdown) = mtls_serve::shutdown();
        let serving = tokio::spawn(mtls_serve::http::serve_metrics(
            listener,
            Arc::new(registry),
            shutdown,
        ));
        crate::serve::wait_for_stop().await;
        stop.trigger();
        let _ = serving.await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct ExplainArgs {
    /// The client's certificate, or its chain file (leaf first), PEM or DER.
    #[arg(value_name = "CERT")]
    cert: PathBuf,
    /// The gateway configuration whose decision to explain.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The listener (by name; needed when the configuration has several).
    #[arg(long, value_name = "NAME")]
    listener: Option<String>,
    /// The request path (route policies are chosen by it).
    #[arg(long, default_value = "/")]
    path: String,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// Exit 0 when the listener would let the client through, 1 when it would refuse it.
pub fn explain(a: ExplainArgs) -> Result<ExitCode> {
    let bytes = mtls_pki::files::read_input(&a.cert)?;
    let chain = mtls_pki::pem_io::certificates(&bytes)
        .map_err(|e| UsageError(format!("{}: {e}", a.cert.display())))?;
    if chain.is_empty() {
        return Err(UsageError(format!("{}: no certificate", a.cert.display())).into());
    }
    let cfg = mtls_gateway::GatewayConfig::from_file(&a.config)?;
    let l = mtls_gateway::explain::listener(&cfg, a.listener.as_deref())?;
    let e = crate::serve::runtime()?.block_on(mtls_gateway::explain::explain(
        &cfg,
        l,
        &chain,
        &a.path,
        time::OffsetDateTime::now_utc(),
    ))?;
    if a.json {
        out(&format!("{}\n", serde_json::to_string(&e)?))?;
    } else {
        use mtls_gateway::explain::Outcome;
        let mut s = format!("listener {:?}, path {}\n", e.listener, e.path);
        for c in &e.checks {
            let mark = match c.outcome {
                Outcome::Pass => "pass",
                Outcome::Fail => "FAIL",
                Outcome::NotReached => "not reached",
                Outcome::NotApplicable => "n/a",
            };
            s.push_str(&format!("  {:<34} {mark}", c.name));
            if let Some(code) = c.code {
                s.push_str(&format!(" ({code})"));
            }
            if !c.detail.is_empty() {
                s.push_str(&format!(": {}", c.detail));
            }
            s.push('\n');
        }
        match e.code {
            None => s.push_str(&format!("ALLOWED: {}\n", e.answer)),
            Some(code) => s.push_str(&format!("REFUSED ({code}): {}\n", e.answer)),
        }
        out(&s)?;
    }
    Ok(if e.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
