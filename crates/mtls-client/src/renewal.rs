//! The renewal daemon: when to renew, how to retry, how to replace files safely, what to run
//! afterwards, and what state to report.
//!
//! Files are replaced by atomic rename only after the new certificate has been received,
//! checked against the key and fsynced, so a reader sees the old pair or the new pair and the
//! old files stay in place until the new ones are complete. With the default (same key) only the
//! certificate file changes. Rotating the key changes two files, which no rename can do at once,
//! so it requires a combined file (certificate and key in one PEM, `--cert` = `--key`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mtls_pki::files::{self, Visibility};
use mtls_pki::issue::Subject;
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::ca::{CaClient, CaUrl, IssuedCertificate};
use crate::Error;

/// When a certificate is due.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// After this fraction of the lifetime (2/3 by default).
    Fraction(f64),
    /// This long before notAfter.
    Before(Duration),
}

impl Default for Threshold {
    fn default() -> Self {
        Threshold::Fraction(2.0 / 3.0)
    }
}

impl Threshold {
    /// Parses `2/3`, `0.75` or `75%`.
    pub fn parse_fraction(s: &str) -> Result<Threshold, String> {
        let s = s.trim();
        let v = if let Some((a, b)) = s.split_once('/') {
            let a: f64 = a
                .trim()
                .parse()
                .map_err(|_| format!("invalid fraction {s:?}"))?;
            let b: f64 = b
                .trim()
                .parse()
                .map_err(|_| format!("invalid fraction {s:?}"))?;
            a / b
        } else if let Some(p) = s.strip_suffix('%') {
            p.trim()
                .parse::<f64>()
                .map_err(|_| format!("invalid percentage {s:?}"))?
                / 100.0
        } else {
            s.parse().map_err(|_| format!("invalid fraction {s:?}"))?
        };
        if !(v > 0.0 && v < 1.0) {
            return Err(format!(
                "renewal point {s:?} must be strictly between 0 and 1"
            ));
        }
        Ok(Threshold::Fraction(v))
    }
}

/// When a certificate due for renewal at `due` counts as overdue: a tenth of its validity
/// later (the daemon retries with backoff meanwhile), never past its notAfter. The rule of
/// `mtls monitor`'s `mtls_cert_renewal_overdue`, which knows the holder's plan.
pub fn overdue_after(
    due: OffsetDateTime,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> OffsetDateTime {
    due.checked_add((not_after - not_before) / 10_i32)
        .map_or(not_after, |t| t.min(not_after))
}

/// When a certificate whose holder's renewal plan is unknown (a server looking at its
/// clients) counts as overdue: in the last tenth of its validity, which every renewal plan of
/// a fraction (`--renew-at`, 2/3 by default) has left by then. A 24-hour certificate renewed on
/// time never is; a `--renew-before` margin under a tenth of the validity is.
pub fn default_overdue_after(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> OffsetDateTime {
    not_after
        .checked_sub((not_after - not_before).max(Duration::ZERO) / 10_i32)
        .unwrap_or(not_before)
}

/// When to renew a certificate valid from `not_before` to `not_after` that its holder obtained
/// at `obtained` (`None` when unknown: a file someone else wrote).
///
/// The plan covers the part of the validity after the certificate was obtained, from
/// `max(not_before, obtained)` to `not_after` (its *usable lifetime*): CAs backdate notBefore
/// for clock skew (ours by 5 minutes), which for a short leaf is most of its validity, and a
/// point computed over the whole validity could fall before the certificate existed: renewed at
/// once, again and again.
///
/// `jitter` in [-1, 1] moves the point by up to 5% of the usable lifetime, and by at most half
/// the time between its start and the unjittered point, so a fleet issued together does not
/// renew together (with `Before`, only earlier) and no certificate is due as soon as it is
/// obtained. The result stays inside the validity window; a fraction stays out of the last
/// tenth of the usable lifetime; a `Before` margin is never eaten into, and one that covers the
/// whole usable lifetime renews at 2/3 of it.
pub fn due_at(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    obtained: Option<OffsetDateTime>,
    threshold: Threshold,
    jitter: f64,
) -> OffsetDateTime {
    // Written so that a window with notAfter before notBefore (unusable anyway) cannot panic.
    let start = match obtained {
        Some(at) if at > not_before => at.min(not_after).max(not_before),
        _ => not_before,
    };
    let lifetime = not_after - start;
    // A margin as long as the usable lifetime would make every new certificate due at once
    // (short leaves, or a CA that caps leaves at its own expiry): renew at 2/3 instead.
    let threshold = match threshold {
        Threshold::Before(d) if d >= lifetime => Threshold::Fraction(2.0 / 3.0),
        t => t,
    };
    let base = match threshold {
        Threshold::Fraction(f) => start + lifetime * f,
        Threshold::Before(d) => not_after - d,
    };
    let five_percent: Duration = lifetime * 0.05;
    let spread = five_percent.min((base - start) / 2_i32).max(Duration::ZERO);
    let jitter = jitter.clamp(-1.0, 1.0);
    let (j, latest) = match threshold {
        Threshold::Fraction(_) => (spread * jitter, not_after - lifetime / 10_i32),
        // The operator asked for a margin before expiry: never eat into it.
        Threshold::Before(_) => (spread * -jitter.abs(), not_after),
    };
    // (Checked: a certificate "valid until 9999-12-31" must not make this panic.)
    base.checked_add(j)
        .unwrap_or(latest)
        .clamp(start, latest.max(start))
}

/// Delay before retry `attempt` (1, 2, …): exponential from 1 s, at most 5 minutes and at most
/// a quarter of the time left, so retries get denser as expiry approaches.
pub fn backoff(attempt: u32, remaining: Duration) -> Duration {
    let exp = Duration::seconds(1i64 << attempt.min(12));
    let cap = Duration::minutes(5).min(remaining / 4_i32);
    exp.min(cap).max(Duration::seconds(1))
}

/// Whether a failed renewal may succeed if simply tried again soon: the CA or the network
/// was unavailable, or the CA asked to be asked later (`429`, e.g. `RATE_LIMITED`: too many
/// renewals from this certificate lately). Anything else (the CA refused, a local file is unusable, the renewed
/// certificate was refused after the CA issued it) repeats until someone acts, and each try
/// may cost the CA a certificate: those are retried far less often ([`backoff_after`]).
pub fn is_transient(e: &Error) -> bool {
    match e {
        Error::Transport { .. } | Error::Http(_) => true,
        Error::Refused { status, .. } => *status >= 500 || *status == 429,
        _ => false,
    }
}

/// Longest a CA's `Retry-After` holds a retry back: a CA (or a proxy in front of it) asking
/// for more is asked again after this.
pub const MAX_RETRY_AFTER: Duration = Duration::hours(6);

/// Delay before retry `attempt` after `e`: [`backoff`] for a transient failure; otherwise
/// from 15 minutes, doubling up to 6 hours, at most half the time left (but at least 5
/// minutes). Spread by up to ±10 % (`jitter` in [-1, 1]) so a fleet does not retry in step.
/// When the CA's answer said when to retry (`Retry-After`, e.g. with `429 RATE_LIMITED`), not
/// before then (up to [`MAX_RETRY_AFTER`]; spread by up to 10 % later): an earlier try is
/// refused again, and each costs the CA a signature.
pub fn backoff_after(e: &Error, attempt: u32, remaining: Duration, jitter: f64) -> Duration {
    let jitter = jitter.clamp(-1.0, 1.0);
    let base = if is_transient(e) {
        backoff(attempt, remaining)
    } else {
        let doubling = Duration::minutes(15) * (1i32 << attempt.saturating_sub(1).min(5));
        doubling
            .min(Duration::hours(6))
            .min(remaining / 2_i32)
            .max(Duration::minutes(5))
    };
    let delay = (base + base * (0.1 * jitter)).max(Duration::seconds(1));
    match e {
        Error::Refused {
            retry_after: Some(after),
            ..
        } => {
            let after = Duration::try_from(*after)
                .unwrap_or(MAX_RETRY_AFTER)
                .min(MAX_RETRY_AFTER);
            delay.max(after + after * (0.05 * (jitter + 1.0)))
        }
        _ => delay,
    }
}

/// A random jitter in [-1, 1] from the system CSPRNG.
pub fn random_jitter() -> f64 {
    let mut b = [0u8; 2];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.0;
    }
    (f64::from(u16::from_be_bytes(b)) / f64::from(u16::MAX)) * 2.0 - 1.0
}

/// One certificate the daemon keeps fresh.
#[derive(Clone, Debug)]
pub struct Watch {
    /// Leaf + intermediates (PEM); may also hold the key (combined file).
    pub cert: PathBuf,
    /// The private key (PEM or DER, possibly encrypted); the same path as `cert` for a combined
    /// file.
    pub key: PathBuf,
    /// The CA root (the server certificate of the CA is verified against it).
    pub root: PathBuf,
}

/// What to run after a renewal.
#[derive(Clone, Debug, Default)]
pub enum Hook {
    /// Run nothing (default).
    #[default]
    None,
    /// A shell command (`sh -c`).
    Exec(String),
    /// Send a signal (e.g. `HUP`) to the process whose pid is in the file.
    Signal {
        /// File holding the process id.
        pidfile: PathBuf,
        /// Signal name without the `SIG` prefix (e.g. `HUP`), as `kill -s` takes it.
        signal: String,
    },
}

impl Hook {
    /// Parses `PIDFILE:SIGNAL` (signal defaults to HUP).
    pub fn parse_signal(s: &str) -> Result<Hook, String> {
        let (pidfile, signal) = match s.rsplit_once(':') {
            Some((p, sig)) if !sig.is_empty() && sig.chars().all(|c| c.is_ascii_alphanumeric()) => {
                (p, sig)
            }
            _ => (s, "HUP"),
        };
        if pidfile.is_empty() {
            return Err("--signal needs PIDFILE[:SIGNAL]".into());
        }
        Ok(Hook::Signal {
            pidfile: PathBuf::from(pidfile),
            signal: signal.trim_start_matches("SIG").to_string(),
        })
    }

    /// Runs the hook; an error says what failed (the renewal itself stands).
    pub async fn run(&self) -> Result<(), String> {
        let mut cmd = match self {
            Hook::None => return Ok(()),
            Hook::Exec(c) => {
                let mut cmd = std::process::Command::new("sh");
                cmd.arg("-c").arg(c);
                cmd
            }
            Hook::Signal { pidfile, signal } => {
                let (owner, text) = read_pidfile(pidfile)?;
                // 0 would signal our own process group, 1 init, negative numbers whole groups.
                let pid = text
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|p| (2..=i32::MAX.unsigned_abs()).contains(p))
                    .ok_or_else(|| format!("{} does not hold a process id", pidfile.display()))?;
                check_pid_owner(pidfile, owner, pid)?;
                let mut cmd = std::process::Command::new("kill");
                cmd.arg("-s").arg(signal).arg(pid.to_string());
                cmd
            }
        };
        // A hook is someone else's program (and whatever it starts): it gets none of mtls's
        // secrets, only the rest of the environment.
        for var in SECRET_ENV {
            cmd.env_remove(var);
        }
        // The hook's output goes to our stderr (the daemon's log), not to pipes: a hook that
        // leaves a background process holding a pipe open would otherwise never be done.
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        // A group of its own: a hook that times out is killed with everything it started (a
        // hung `systemctl reload` under `sh -c`), not only its shell, so retries do not pile
        // up hung processes. Background processes of a hook that finishes are left running.
        // Not when run from a terminal: there the hook stays in the foreground group, so that
        // it can prompt (sudo) and Ctrl-C reaches it.
        let own_group = !std::io::IsTerminal::is_terminal(&std::io::stdin());
        if own_group {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        let mut child = cmd.spawn().map_err(|e| format!("running the hook: {e}"))?;
        let started = std::time::Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() >= hook_timeout() => {
                    if own_group {
                        let _ = rustix::process::kill_process_group(
                            rustix::process::Pid::from_child(&child),
                            rustix::process::Signal::KILL,
                        );
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "the hook did not finish within {} s and was killed",
                        hook_timeout().as_secs()
                    ));
                }
                Ok(None) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                Err(e) => return Err(format!("waiting for the hook: {e}")),
            }
        };
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "the hook exited with {status} (its output is in this log)"
            ))
        }
    }
}

/// Reads the pid file: a regular file, opened without following a link, whose owner (of
/// that very file, not of whatever the path names a moment later) is returned with its text.
fn read_pidfile(pidfile: &Path) -> Result<(u32, String), String> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let failed = |e: std::io::Error| format!("reading {}: {e}", pidfile.display());
    let fd = rustix::fs::openat(
        rustix::fs::CWD,
        pidfile,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| failed(e.into()))?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(failed)?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", pidfile.display()));
    }
    // A hard link to another user's file (possible where protected_hardlinks is off) would
    // lend this one that user's ownership.
    if meta.nlink() != 1 {
        return Err(format!(
            "{} has {} hard links: not trusted as a pid file",
            pidfile.display(),
            meta.nlink()
        ));
    }
    let mut text = String::new();
    (&file).take(64).read_to_string(&mut text).map_err(failed)?;
    Ok((meta.uid(), text))
}

/// A pid file owned by a user other than root may name only that user's processes (its real
/// or saved user, from `/proc/PID/status`, which also shows processes that are not
/// dumpable): a daemon running as root would otherwise send its signal to whatever process
/// the service's user writes there (a stale file, or a hostile one).
fn check_pid_owner(pidfile: &Path, owner: u32, pid: u32) -> Result<(), String> {
    if owner == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("process {pid} (from {}): {e}", pidfile.display()))?;
    let uids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|u| u.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // As the kernel decides whether a user may signal a process: the sender's user against the
    // target's real or saved user (the first and third of real, effective, saved, filesystem).
    if ![uids.first(), uids.get(2)].contains(&Some(&owner)) {
        return Err(format!(
            "{} belongs to uid {owner} but names process {pid} of uid {}: not signalled",
            pidfile.display(),
            uids.first().map_or("?".to_string(), u32::to_string)
        ));
    }
    Ok(())
}

/// Longest a post-renewal hook may run before it is killed (and reported as failed).
pub const HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// [`HOOK_TIMEOUT`], shortened for this crate's own tests.
fn hook_timeout() -> std::time::Duration {
    if cfg!(test) {
        std::time::Duration::from_secs(2)
    } else {
        HOOK_TIMEOUT
    }
}

/// Environment variables holding mtls's secrets (key, CA and PKCS#12 passphrases, an
/// enrollment token, a database URL that may carry a password), removed from a hook's
/// environment.
pub const SECRET_ENV: &[&str] = &[
    "MTLS_PASSPHRASE",
    "MTLS_CA_PASSPHRASE",
    "MTLS_P12_PASSWORD",
    "MTLS_TOKEN",
    "MTLS_DATABASE",
];

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The validity window of the certificate currently in `cert`.
pub fn current_validity(cert: &Path) -> Result<(OffsetDateTime, OffsetDateTime, String), Error> {
    // A combined file holds the key too: wiped when dropped.
    let pem = zeroize::Zeroizing::new(std::fs::read(cert).map_err(io(cert))?);
    let chain = mtls_pki::pem_io::certificates(&pem)?;
    let leaf = chain
        .first()
        .ok_or_else(|| Error::Config(format!("{}: no certificate", cert.display())))?;
    let parsed = mtls_pki::pem_io::parse_certificate(leaf)?;
    Ok((
        parsed.validity().not_before.to_datetime(),
        parsed.validity().not_after.to_datetime(),
        parsed.raw_serial_as_string(),
    ))
}

fn read_root(path: &Path) -> Result<CertificateDer<'static>, Error> {
    let pem = std::fs::read(path).map_err(io(path))?;
    mtls_pki::pem_io::certificates(&pem)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Config(format!("{}: no certificate", path.display())))
}

/// The PEM written for a certificate: leaf and intermediates (the root is left out: peers
/// already have it and sending it only costs bytes).
pub fn served_chain(
    issued: &IssuedCertificate,
    root: &CertificateDer<'_>,
) -> Result<String, Error> {
    let certs = mtls_pki::pem_io::certificates(issued.chain.as_bytes())?;
    Ok(certs
        .iter()
        .filter(|c| c.as_ref() != root.as_ref())
        .map(|c| mtls_pki::pem_io::encode("CERTIFICATE", c))
        .collect())
}

/// Whether two paths name one file (same device and inode, so links and different spellings of
/// one path count); paths that cannot be inspected are compared as written.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => a == b,
    }
}

fn holds_private_key(path: &Path) -> bool {
    // What is read and decoded is wiped when dropped: it is looked at because it may be a key.
    std::fs::read(path)
        .ok()
        .map(zeroize::Zeroizing::new)
        .and_then(|b| mtls_pki::pem_io::decode_secret(&b).ok())
        .is_some_and(|blocks| blocks.iter().any(|b| b.label.contains("PRIVATE KEY")))
}

/// The last renewal attempts of a certificate file, kept next to it (`CERT.renewal.json`) by
/// every renewal, so `mtls monitor` can export them without asking the daemon.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RenewalRecord {
    /// Unix seconds of the last successful renewal.
    pub last_success: Option<i64>,
    /// Unix seconds of the last failed attempt.
    pub last_failure: Option<i64>,
    /// What the last failure said.
    pub last_error: Option<String>,
    /// When the daemon renews the certificate in the file (Unix seconds, its own threshold and
    /// jitter), and the notAfter of the certificate this was computed for: a file replaced
    /// since has no schedule until the daemon reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// The certificate last obtained from the CA for this file (enrolled or renewed), and
    /// when: its renewal is planned from then, not from a notBefore the CA backdated (see
    /// [`due_at`]), also by a daemon started later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obtained: Option<Obtained>,
    /// A renewal replaced the certificate and the post-renewal hook has not succeeded since:
    /// the service may still be using the old certificate. The daemon runs the hook again
    /// (also after a restart) until it succeeds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hook_pending: bool,
}

/// When a certificate was obtained (see [`RenewalRecord::obtained`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Obtained {
    /// notAfter (Unix seconds) of the certificate obtained.
    pub not_after: i64,
    /// When it was obtained (Unix seconds).
    pub at: i64,
}

/// A renewal daemon's plan for one certificate (see [`RenewalRecord::schedule`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    /// notAfter (Unix seconds) of the certificate the plan is for.
    pub not_after: i64,
    /// When the daemon renews it (Unix seconds).
    pub renew_at: i64,
}

impl RenewalRecord {
    /// When the daemon renews the certificate whose notAfter is `not_after`, if it said so.
    pub fn renew_at(&self, not_after: OffsetDateTime) -> Option<OffsetDateTime> {
        let s = self.schedule?;
        if s.not_after != not_after.unix_timestamp() {
            return None;
        }
        OffsetDateTime::from_unix_timestamp(s.renew_at).ok()
    }

    /// When the certificate whose notAfter is `not_after` was obtained, if it was noted.
    pub fn obtained_at(&self, not_after: OffsetDateTime) -> Option<OffsetDateTime> {
        let o = self.obtained?;
        if o.not_after != not_after.unix_timestamp() {
            return None;
        }
        OffsetDateTime::from_unix_timestamp(o.at).ok()
    }
}

/// Where the [`RenewalRecord`] of `cert` is kept.
pub fn record_path(cert: &Path) -> PathBuf {
    let mut name = cert
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".renewal.json");
    cert.with_file_name(name)
}

/// The record of `cert`, if a renewal ever ran for it.
pub fn read_record(cert: &Path) -> Option<RenewalRecord> {
    serde_json::from_slice(&std::fs::read(record_path(cert)).ok()?).ok()
}

/// Notes an attempt in the record (best effort: a record that cannot be written is logged, it
/// never fails the renewal); a success, with the notAfter of the certificate obtained.
fn note_attempt(cert: &Path, outcome: Result<OffsetDateTime, &Error>, now: OffsetDateTime) {
    let mut r = read_record(cert).unwrap_or_default();
    match outcome {
        Ok(not_after) => {
            r.last_success = Some(now.unix_timestamp());
            r.obtained = Some(Obtained {
                not_after: not_after.unix_timestamp(),
                at: now.unix_timestamp(),
            });
        }
        Err(e) => {
            r.last_failure = Some(now.unix_timestamp());
            r.last_error = Some(e.to_string());
        }
    }
    write_record(cert, &r);
}

/// Notes in the record of `cert` that the certificate with notAfter `not_after` was obtained
/// at `at` (an enrollment; renewals note it themselves). Best effort, as every record write.
pub fn note_obtained(cert: &Path, not_after: OffsetDateTime, at: OffsetDateTime) {
    let mut r = read_record(cert).unwrap_or_default();
    r.obtained = Some(Obtained {
        not_after: not_after.unix_timestamp(),
        at: at.unix_timestamp(),
    });
    write_record(cert, &r);
}

/// Notes in the record when the daemon renews the certificate (notAfter `not_after`).
fn note_schedule(cert: &Path, not_after: OffsetDateTime, renew_at: OffsetDateTime) {
    let mut r = read_record(cert).unwrap_or_default();
    let schedule = Some(Schedule {
        not_after: not_after.unix_timestamp(),
        renew_at: renew_at.unix_timestamp(),
    });
    if r.schedule != schedule {
        r.schedule = schedule;
        write_record(cert, &r);
    }
}

/// Notes in the record of `cert` whether its post-renewal hook still has to succeed.
fn note_hook_pending(cert: &Path, pending: bool) {
    let mut r = read_record(cert).unwrap_or_default();
    if r.hook_pending != pending {
        r.hook_pending = pending;
        write_record(cert, &r);
    }
}

/// The longest pause between two runs of a failing post-renewal hook.
const HOOK_RETRY_MAX: Duration = Duration::minutes(5);

/// The post-renewal hook of one watched certificate while it has to run (after a renewal,
/// until it succeeds; retried from 5 s doubling up to 5 minutes).
#[derive(Debug, Default)]
struct PendingHook {
    at: Option<OffsetDateTime>,
    failures: u32,
}

impl PendingHook {
    /// Pending as the record of `cert` says (a daemon stopped before its hook succeeded).
    fn from_record(hook: &Hook, cert: &Path, now: OffsetDateTime) -> Self {
        let pending =
            !matches!(hook, Hook::None) && read_record(cert).is_some_and(|r| r.hook_pending);
        PendingHook {
            at: pending.then_some(now),
            failures: 0,
        }
    }

    /// A renewal is about to replace the certificate: recorded as pending before any file
    /// changes, so a crash while they are replaced (or before [`PendingHook::renewed`]) runs
    /// the hook after a restart, at worst once too often.
    fn before_renewal(&self, hook: &Hook, cert: &Path) {
        if !matches!(hook, Hook::None) && self.at.is_none() {
            note_hook_pending(cert, true);
        }
    }

    /// The renewal announced by [`PendingHook::before_renewal`] replaced nothing: pending only
    /// if it was before.
    fn renewal_failed(&self, hook: &Hook, cert: &Path) {
        if !matches!(hook, Hook::None) && self.at.is_none() {
            note_hook_pending(cert, false);
        }
    }

    /// The certificate was replaced: the hook is due now (recorded first, so that a crash
    /// before it succeeds is made up for after a restart).
    fn renewed(&mut self, hook: &Hook, cert: &Path, now: OffsetDateTime) {
        if !matches!(hook, Hook::None) {
            note_hook_pending(cert, true);
            *self = PendingHook {
                at: Some(now),
                failures: 0,
            };
        }
    }

    /// Runs the hook if it is due; `Some(outcome)` when it ran.
    async fn run_if_due(
        &mut self,
        hook: &Hook,
        cert: &Path,
        now: OffsetDateTime,
    ) -> Option<Result<(), String>> {
        if self.at.is_none_or(|at| now < at) {
            return None;
        }
        let outcome = hook.run().await;
        match &outcome {
            Ok(()) => {
                note_hook_pending(cert, false);
                *self = PendingHook::default();
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let wait = Duration::seconds(5 << self.failures.saturating_sub(1).min(6))
                    .min(HOOK_RETRY_MAX);
                self.at = Some(now + wait);
                tracing::error!(cert = %cert.display(), error = %e, retry_in = %mtls_serve::duration::format(wait.unsigned_abs()), "post-renewal hook failed; the service may still use the old certificate");
            }
        }
        Some(outcome)
    }
}

fn write_record(cert: &Path, r: &RenewalRecord) {
    let written = serde_json::to_vec(r)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            files::write_atomic(&record_path(cert), &b, Visibility::Public, true)
                .map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        tracing::warn!(cert = %cert.display(), error = %e, "cannot write the renewal record");
    }
}

/// Renews `w` now: authenticates with the current pair, writes the new one. Returns the new
/// certificate. The attempt is noted in the certificate's [`RenewalRecord`].
pub async fn renew_once(
    w: &Watch,
    url: &CaUrl,
    rotate_key: bool,
    passphrase: Option<&[u8]>,
    now: OffsetDateTime,
) -> Result<IssuedCertificate, Error> {
    let _one_at_a_time = lock_for_renewal(&w.cert).await?;
    let result = renew_now(w, url, rotate_key, passphrase, now).await;
    note_attempt(&w.cert, result.as_ref().map(|i| i.not_after), now);
    result
}

/// [`renew_once`] for a daemon that found the certificate ending at `seen_not_after` due: if
/// another process (a second daemon, a one-shot `mtls renew`) replaced it meanwhile, nothing
/// is renewed (`None`), and the caller looks at the new one.
pub async fn renew_if_unchanged(
    w: &Watch,
    url: &CaUrl,
    rotate_key: bool,
    passphrase: Option<&[u8]>,
    seen_not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<Option<IssuedCertificate>, Error> {
    let _one_at_a_time = lock_for_renewal(&w.cert).await?;
    if current_validity(&w.cert).is_ok_and(|(_, na, _)| na != seen_not_after) {
        return Ok(None);
    }
    let result = renew_now(w, url, rotate_key, passphrase, now).await;
    note_attempt(&w.cert, result.as_ref().map(|i| i.not_after), now);
    result.map(Some)
}

/// Renewals of one certificate file, one at a time across processes (an advisory lock on its
/// directory, as `mtls issue` takes for its outputs): two daemons watching one file would
/// otherwise both renew it and write its files and `CERT.renewal.json` over each other.
async fn lock_for_renewal(cert: &Path) -> Result<files::DirLock, Error> {
    let target = files::write_target(cert)?;
    let dir = target
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    // Waiting for another process's renewal (a CA round trip): off the async workers.
    tokio::task::spawn_blocking(move || files::lock_dir(&dir))
        .await
        .map_err(|e| Error::Config(format!("waiting for another renewal: {e}")))?
        .map_err(Error::from)
}

async fn renew_now(
    w: &Watch,
    url: &CaUrl,
    rotate_key: bool,
    passphrase: Option<&[u8]>,
    now: OffsetDateTime,
) -> Result<IssuedCertificate, Error> {
    // Resolved once, as every write resolves a symbolic link: the file it names is replaced
    // (what the other path may name too), the link kept.
    let cert_path = files::write_target(&w.cert)?;
    let key_path = files::write_target(&w.key)?;
    let combined = same_file(&cert_path, &key_path);
    if !combined && holds_private_key(&cert_path) {
        // Rewriting it with the chain alone would destroy the key.
        return Err(Error::Config(format!(
            "{} also holds a private key: pass the same file as --key",
            w.cert.display()
        )));
    }
    if rotate_key && !combined {
        return Err(Error::Config(
            "rotating the key replaces two files, which cannot be done atomically: use one combined file for certificate and key (--cert and --key the same path), or renew with the same key".into(),
        ));
    }
    let chain = mtls_pki::pem_io::certificates(&files::read_public(&cert_path)?)?;
    let old_leaf = chain.first().cloned();
    let key_bytes = files::read_secret(&key_path)?;
    let key = mtls_pki::PrivateKey::from_pem_or_der(&key_bytes, passphrase)?;
    let credential = mtls_tls::credential_from_parts(chain, &key, now).map_err(|detail| {
        Error::Config(format!(
            "{}: {detail} (an expired certificate cannot be renewed: enroll again with a new token)",
            w.cert.display()
        ))
    })?;
    let root = read_root(&w.root)?;
    let client = CaClient::new(url.clone(), &root, Some(&credential))?;
    let (issued, new_key) = if rotate_key {
        let new_key = mtls_pki::PrivateKey::generate(key.algorithm())?;
        let csr = mtls_pki::csr::create(&new_key, &Subject::cn(""), &[])?;
        (client.renew(Some(&csr)).await?, Some(new_key))
    } else {
        (client.renew(None).await?, None)
    };
    let out_key = new_key.as_ref().unwrap_or(&key);
    let chain_pem = served_chain(&issued, &root)?;
    // Check what we are about to install before touching any file.
    let new_chain = mtls_pki::pem_io::certificates(chain_pem.as_bytes())?;
    if let Some(old_leaf) = &old_leaf {
        same_identity_under(old_leaf, &new_chain, &root, now)
            .map_err(|d| Error::Protocol(format!("the renewed certificate is refused: {d}")))?;
    }
    if let (Some(old), Some(new)) = (
        old_leaf
            .as_ref()
            .and_then(|c| mtls_pki::pem_io::parse_certificate(c).ok()),
        new_chain
            .first()
            .and_then(|c| mtls_pki::pem_io::parse_certificate(c).ok()),
    ) {
        let (old_end, new_end) = (
            old.validity().not_after.to_datetime(),
            new.validity().not_after.to_datetime(),
        );
        if new_end <= old_end {
            // Taken (a lowered leaf lifetime is a renewal too), but said: if the CA cannot
            // issue past its own end, renewing again will not help.
            tracing::warn!(cert = %w.cert.display(), new_not_after = %mtls_pki::rfc3339(&new_end), old_not_after = %mtls_pki::rfc3339(&old_end), "the renewed certificate ends no later than the one it replaces (the CA's leaf lifetime, or its own end)");
        }
    }
    mtls_tls::credential_from_parts(new_chain, out_key, now)
        .map_err(|d| Error::Protocol(format!("the renewed certificate is unusable: {d}")))?;
    if combined {
        // A new key is stored as the old one was: encrypted only if it was (a passphrase in
        // the environment must not lock a service out of a key it reads in the clear).
        let was_encrypted = mtls_pki::pem_io::decode_secret(&key_bytes)?
            .iter()
            .any(|b| b.label == "ENCRYPTED PRIVATE KEY");
        let key_pem = match (&new_key, passphrase) {
            (Some(k), Some(p)) if was_encrypted => k.to_encrypted_pem(p)?,
            (Some(k), _) => k.to_pem(),
            (None, _) => {
                // Each block and its PEM are wiped when dropped, and the strings are joined
                // into one allocated once (growing a string leaves its old buffer unwiped).
                let parts: Vec<zeroize::Zeroizing<String>> =
                    mtls_pki::pem_io::decode_secret(&key_bytes)?
                        .iter()
                        .filter(|b| b.label.contains("PRIVATE KEY"))
                        .map(|b| {
                            zeroize::Zeroizing::new(mtls_pki::pem_io::encode(&b.label, &b.der))
                        })
                        .collect();
                let mut joined = zeroize::Zeroizing::new(String::with_capacity(
                    parts.iter().map(|p| p.len()).sum(),
                ));
                for p in &parts {
                    joined.push_str(p);
                }
                joined
            }
        };
        let mut bundle =
            zeroize::Zeroizing::new(String::with_capacity(chain_pem.len() + key_pem.len()));
        bundle.push_str(&chain_pem);
        bundle.push_str(&key_pem);
        files::write_atomic(&cert_path, bundle.as_bytes(), Visibility::Secret, true)?;
    } else {
        files::write_atomic(&cert_path, chain_pem.as_bytes(), Visibility::Public, true)?;
    }
    Ok(issued)
}

/// Whether `chain` (leaf first, then intermediates), as the CA returned it, was issued under the
/// pinned `root` and is valid at `now`: the check every certificate from the CA passes before
/// it is written, at enrollment ([`served_chain`] then this) and at renewal (through
/// `same_identity_under`). A CA that answers with a certificate peers trusting the root would
/// refuse must not leave one on disk.
pub fn chains_to_root(
    chain: &[CertificateDer<'static>],
    root: &CertificateDer<'static>,
    now: OffsetDateTime,
) -> std::result::Result<(), String> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err("the CA returned no certificate".into());
    };
    let verified = mtls_verify::verify(
        leaf,
        &mtls_verify::VerifyRequest {
            roots: std::slice::from_ref(root),
            intermediates,
            crls: &[],
            at: now,
            purpose: mtls_verify::Purpose::Any,
            name: None,
            crl_scope: Default::default(),
            allow_unknown_revocation: true,
            allow_expired_crl: false,
        },
    )
    .map_err(|e| e.to_string())?;
    if let Err(r) = verified {
        return Err(format!("it does not chain to the CA's root: {r}"));
    }
    Ok(())
}

/// Whether `new_chain` is a renewal of `old_leaf`: issued under the pinned `root` and valid at
/// `now` ([`chains_to_root`]), with the same subject, names and key usages (a CA that answered
/// with another identity, or one peers would refuse, must not replace a working certificate).
fn same_identity_under(
    old_leaf: &CertificateDer<'_>,
    new_chain: &[CertificateDer<'static>],
    root: &CertificateDer<'static>,
    now: OffsetDateTime,
) -> std::result::Result<(), String> {
    chains_to_root(new_chain, root, now)?;
    let Some(new_leaf) = new_chain.first() else {
        return Err("the CA returned no certificate".into());
    };
    let old = mtls_pki::pem_io::parse_certificate(old_leaf).map_err(|e| e.to_string())?;
    let new = mtls_pki::pem_io::parse_certificate(new_leaf).map_err(|e| e.to_string())?;
    if old.subject().as_raw() != new.subject().as_raw() {
        return Err(format!(
            "its subject {} is not the current {}",
            new.subject(),
            old.subject()
        ));
    }
    // subjectAltName and extendedKeyUsage, as encoded.
    for (oid, what) in [
        (
            x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME,
            "names",
        ),
        (
            x509_parser::oid_registry::OID_X509_EXT_EXTENDED_KEY_USAGE,
            "key usages",
        ),
    ] {
        let value = |c: &x509_parser::certificate::X509Certificate<'_>| {
            c.extensions()
                .iter()
                .find(|e| e.oid == oid)
                .map(|e| e.value.to_vec())
        };
        if value(&old) != value(&new) {
            return Err(format!("its {what} differ from the current certificate's"));
        }
    }
    // The current certificate sent back renews nothing: taken as a success each time, the
    // daemon would report renewals until it expired.
    if old.raw_serial() == new.raw_serial() {
        return Err("it is the current certificate (the same serial)".into());
    }
    Ok(())
}

/// What the daemon reports about one certificate.
#[derive(Clone, Debug, Default)]
pub struct WatchState {
    /// The certificate file's path, as displayed (the `cert` label of the metrics).
    pub cert: String,
    /// notAfter of the current certificate, once read.
    pub not_after: Option<OffsetDateTime>,
    /// Time of the last successful renewal.
    pub last_success: Option<OffsetDateTime>,
    /// Time of the last failed attempt (renewing or reading the certificate).
    pub last_failure: Option<OffsetDateTime>,
    /// The latest error (failed attempt, unreadable or expired certificate, failed hook);
    /// cleared by a renewal whose hook succeeds.
    pub last_error: Option<String>,
    /// When the next attempt is planned (`None` once the certificate has expired).
    pub next_attempt: Option<OffsetDateTime>,
    /// Successful renewals so far.
    pub renewals: u64,
    /// Failed attempts so far.
    pub failures: u64,
}

/// Shared state of all watched certificates (read by the metrics endpoint).
pub type States = Arc<Mutex<Vec<WatchState>>>;

/// Registers the daemon's metrics, read from `states` at scrape time: timestamps as gauges
/// (`mtls_renew_*_seconds`), renewals and failures as counters (`mtls_renew_*_total`).
pub fn register_metrics(registry: &mut mtls_serve::metrics::Registry, states: &States) {
    use mtls_serve::metrics::{Kind, Scraped, Unit};
    type Pick = fn(&WatchState) -> Option<f64>;
    let series: [(&'static str, &'static str, Option<Unit>, Kind, Pick); 6] = [
        (
            "mtls_renew_not_after",
            "notAfter of the current certificate",
            Some(Unit::Seconds),
            Kind::Gauge,
            |s| s.not_after.map(|t| t.unix_timestamp() as f64),
        ),
        (
            "mtls_renew_last_success",
            "Time of the last successful renewal",
            Some(Unit::Seconds),
            Kind::Gauge,
            |s| s.last_success.map(|t| t.unix_timestamp() as f64),
        ),
        (
            "mtls_renew_last_failure",
            "Time of the last failed attempt",
            Some(Unit::Seconds),
            Kind::Gauge,
            |s| s.last_failure.map(|t| t.unix_timestamp() as f64),
        ),
        (
            "mtls_renew_next_attempt",
            "Time of the next attempt",
            Some(Unit::Seconds),
            Kind::Gauge,
            |s| s.next_attempt.map(|t| t.unix_timestamp() as f64),
        ),
        (
            "mtls_renew_renewals",
            "Successful renewals",
            None,
            Kind::Counter,
            |s| Some(s.renewals as f64),
        ),
        (
            "mtls_renew_failures",
            "Failed attempts",
            None,
            Kind::Counter,
            |s| Some(s.failures as f64),
        ),
    ];
    for (name, help, unit, kind, pick) in series {
        let states = states.clone();
        Scraped::register(registry, name, help, unit, kind, move || {
            let Ok(states) = states.lock() else {
                return Vec::new();
            };
            states
                .iter()
                .filter_map(|s| pick(s).map(|v| (vec![("cert", s.cert.clone())], v)))
                .collect()
        });
    }
}

/// Daemon settings shared by every watched certificate.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// The online CA.
    pub url: CaUrl,
    /// When a certificate is due for renewal.
    pub threshold: Threshold,
    /// Generate a new key at each renewal (needs a combined certificate and key file).
    pub rotate_key: bool,
    /// What to run after each successful renewal.
    pub hook: Hook,
    /// Upper bound of one sleep: the files are re-read at least this often (they may have been
    /// replaced by hand).
    pub max_sleep: Duration,
}

fn update(states: &States, i: usize, f: impl FnOnce(&mut WatchState)) {
    if let Ok(mut s) = states.lock() {
        if let Some(st) = s.get_mut(i) {
            f(st);
        }
    }
}

/// Keeps `w` fresh forever (until the task is dropped).
pub async fn watch_forever(
    i: usize,
    w: Watch,
    opts: DaemonOptions,
    passphrase: Option<zeroize::Zeroizing<Vec<u8>>>,
    states: States,
) {
    let jitter = random_jitter();
    let mut attempt: u32 = 0;
    let mut retry_at: Option<OffsetDateTime> = None;
    let mut seen_not_after: Option<OffsetDateTime> = None;
    // notAfter of the last certificate this task obtained, and when: its schedule starts
    // then, not at a notBefore the CA backdated.
    let mut obtained: Option<(OffsetDateTime, OffsetDateTime)> = None;
    // The length of the back-off that set `retry_at`: a retry is never further away than that
    // (a clock corrected backwards since must not push it out by the correction).
    let mut retry_wait = Duration::ZERO;
    let mut hook = PendingHook::from_record(&opts.hook, &w.cert, OffsetDateTime::now_utc());
    loop {
        let now = OffsetDateTime::now_utc();
        if let Some(outcome) = hook.run_if_due(&opts.hook, &w.cert, now).await {
            update(&states, i, |s| {
                s.last_error = outcome.err().map(|e| format!("post-renewal hook: {e}"));
            });
        }
        let (nb, na) = match current_validity(&w.cert) {
            Ok((nb, na, _)) => (nb, na),
            Err(e) => {
                tracing::error!(cert = %w.cert.display(), error = %e, "cannot read the certificate");
                update(&states, i, |s| {
                    s.last_failure = Some(now);
                    s.last_error = Some(e.to_string());
                    s.failures += 1;
                    s.next_attempt = Some(now + Duration::seconds(30));
                });
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                continue;
            }
        };
        update(&states, i, |s| s.not_after = Some(na));
        if now > na {
            let msg = format!("the certificate expired at {na}; it cannot be renewed: enroll again with a new token");
            tracing::error!(cert = %w.cert.display(), "{msg}");
            update(&states, i, |s| {
                s.last_error = Some(msg);
                s.next_attempt = None;
            });
            // Wait for an operator to put a new certificate in place.
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            continue;
        }
        if seen_not_after.is_some_and(|seen| seen != na) {
            // Another certificate was put in place (by hand, or another daemon): a fresh
            // start, not the back-off of the one before.
            attempt = 0;
            retry_at = None;
        }
        seen_not_after = Some(na);
        // Obtained by this task, else as noted next to the file (an enrollment, an earlier
        // run); unknown for a file someone else wrote.
        let got = obtained
            .filter(|(not_after, _)| *not_after == na)
            .map(|(_, at)| at)
            .or_else(|| read_record(&w.cert).and_then(|r| r.obtained_at(na)));
        let planned = due_at(nb, na, got, opts.threshold, jitter);
        // For `mtls monitor`: its "renewal overdue" follows this daemon's threshold.
        note_schedule(&w.cert, na, planned);
        // A retry is never further from now than its back-off (kept, not recomputed at each
        // wake-up): a clock corrected backwards since must not push it out by the correction.
        retry_at = retry_at.map(|at| at.min(now + retry_wait));
        hook.at = hook.at.map(|at| at.min(now + HOOK_RETRY_MAX));
        let due = match &retry_at {
            Some(at) if attempt > 0 => *at,
            _ => planned,
        };
        if due > now {
            update(&states, i, |s| s.next_attempt = Some(due));
            tracing::info!(cert = %w.cert.display(), next_attempt = %mtls_pki::rfc3339(&due), not_after = %mtls_pki::rfc3339(&na), "waiting");
            // Woken earlier for a hook still to run.
            let wake = hook.at.map_or(due, |h| h.min(due));
            let wait = (wake - now).min(opts.max_sleep);
            tokio::time::sleep(std::time::Duration::from_millis(
                u64::try_from(wait.whole_milliseconds()).unwrap_or(0).max(1),
            ))
            .await;
            if OffsetDateTime::now_utc() < due || hook.at.is_some() {
                continue;
            }
        }
        let now = OffsetDateTime::now_utc();
        hook.before_renewal(&opts.hook, &w.cert);
        let renewed = match renew_if_unchanged(
            &w,
            &opts.url,
            opts.rotate_key,
            passphrase.as_ref().map(|p| p.as_slice()),
            na,
            now,
        )
        .await
        {
            Ok(Some(issued)) => Ok(issued),
            Ok(None) => {
                // Renewed by another process while this one waited: look at the new file.
                hook.renewal_failed(&opts.hook, &w.cert);
                tracing::info!(cert = %w.cert.display(), "replaced by another process meanwhile");
                continue;
            }
            Err(e) => Err(e),
        };
        if renewed.is_err() {
            hook.renewal_failed(&opts.hook, &w.cert);
        }
        match renewed {
            Ok(issued) => {
                attempt = 0;
                retry_at = None;
                // As written (the answer's JSON could round differently).
                obtained = current_validity(&w.cert)
                    .ok()
                    .map(|(_, not_after, _)| (not_after, now));
                tracing::info!(cert = %w.cert.display(), serial = %issued.serial, not_after = %mtls_pki::rfc3339(&issued.not_after), "renewed");
                hook.renewed(&opts.hook, &w.cert, now);
                let outcome = hook.run_if_due(&opts.hook, &w.cert, now).await;
                update(&states, i, |s| {
                    s.last_success = Some(now);
                    s.renewals += 1;
                    s.not_after = Some(issued.not_after);
                    s.last_error = outcome
                        .and_then(Result::err)
                        .map(|e| format!("post-renewal hook: {e}"));
                });
                // However short the certificate, do not hammer the CA.
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            Err(e) => {
                attempt = attempt.saturating_add(1);
                retry_wait = backoff_after(&e, attempt, na - now, random_jitter());
                let retry = now + retry_wait;
                retry_at = Some(retry);
                tracing::warn!(cert = %w.cert.display(), error = %e, next_attempt = %mtls_pki::rfc3339(&retry), "renewal failed");
                update(&states, i, |s| {
                    s.last_failure = Some(now);
                    s.failures += 1;
                    s.last_error = Some(e.to_string());
                    s.next_attempt = Some(retry);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The overdue points stay inside the validity, also for a certificate that "never
    /// expires" (notAfter 9999-12-31, RFC 5280) and an inverted window, without a panic.
    #[test]
    fn overdue_points_stay_inside_the_validity() {
        let nb = time::macros::datetime!(2026-01-01 0:00 UTC);
        let na = nb + Duration::days(100);
        assert_eq!(default_overdue_after(nb, na), nb + Duration::days(90));
        assert_eq!(
            overdue_after(nb + Duration::days(67), nb, na),
            nb + Duration::days(77)
        );
        assert_eq!(overdue_after(nb + Duration::days(95), nb, na), na);
        let forever = time::macros::datetime!(9999-12-31 23:59:59 UTC);
        assert!(default_overdue_after(nb, forever) < forever);
        assert_eq!(
            overdue_after(forever - Duration::days(1), nb, forever),
            forever
        );
        assert_eq!(default_overdue_after(na, nb), nb);
    }

    #[test]
    fn a_renewal_must_keep_the_identity_and_the_root() {
        let pki = mtls_test_util::TestPki::new("renew");
        let now = OffsetDateTime::now_utc();
        let chain = |leaf: &mtls_test_util::TestLeaf, pki: &mtls_test_util::TestPki| {
            vec![leaf.cert.der.clone(), pki.intermediate_der()]
        };
        let old = pki.client("app");
        let root = pki.root_der();
        let check =
            |new: &[CertificateDer<'static>]| same_identity_under(&old.cert.der, new, &root, now);
        // The same identity, newly issued: accepted.
        check(&chain(&pki.client("app"), &pki)).unwrap();
        // Another name, another profile, another CA, nothing at all: refused.
        let e = check(&chain(&pki.client("other"), &pki)).unwrap_err();
        assert!(e.contains("subject"), "{e}");
        let server = pki.leaf_at(
            mtls_pki::issue::Profile::Server,
            "app",
            &["app.example"],
            now,
            Duration::days(1),
        );
        let e = check(&chain(&server, &pki)).unwrap_err();
        assert!(e.contains("names") || e.contains("key usages"), "{e}");
        let elsewhere = mtls_test_util::TestPki::new("elsewhere");
        let e = check(&chain(&elsewhere.client("app"), &elsewhere)).unwrap_err();
        assert!(e.contains("root"), "{e}");
        assert!(check(&[]).is_err());
        // The current certificate sent back, or one ending no later: nothing was renewed.
        let e = check(&chain(&old, &pki)).unwrap_err();
        assert!(e.contains("same serial"), "{e}");
        // One ending sooner (the CA's leaf lifetime lowered) is a renewal all the same.
        let shorter = pki.leaf_at(
            mtls_pki::issue::Profile::Client,
            "app",
            &[],
            now,
            Duration::days(1),
        );
        check(&chain(&shorter, &pki)).unwrap();
    }

    /// A certificate valid until the last date there is (9999-12-31, "never expires"), a
    /// late fraction and the latest jitter: a date inside the window, not a panic.
    #[test]
    fn a_schedule_at_the_end_of_time_does_not_overflow() {
        let na = time::PrimitiveDateTime::MAX.assume_utc();
        let nb = na - Duration::days(3650);
        for jitter in [-1.0, 0.0, 1.0] {
            let t = due_at(nb, na, None, Threshold::Fraction(0.97), jitter);
            assert!(nb <= t && t <= na, "{t}");
        }
    }

    #[test]
    fn schedule() {
        let nb = OffsetDateTime::UNIX_EPOCH;
        let na = nb + Duration::days(90);
        let t = due_at(nb, na, None, Threshold::default(), 0.0);
        assert_eq!(t, nb + Duration::days(60));
        let early = due_at(nb, na, None, Threshold::default(), -1.0);
        let late = due_at(nb, na, None, Threshold::default(), 1.0);
        assert!(early < t && t < late);
        assert_eq!(late - early, Duration::days(9));
        assert_eq!(
            due_at(nb, na, None, Threshold::Before(Duration::days(30)), 0.0),
            nb + Duration::days(60)
        );
        // A margin is never shortened by jitter; a fraction never lands in the last tenth;
        // nothing is due before notBefore.
        assert_eq!(
            due_at(nb, na, None, Threshold::Before(Duration::hours(1)), 1.0),
            na - Duration::hours(1) - Duration::hours(108)
        );
        assert_eq!(
            due_at(nb, na, None, Threshold::Fraction(0.99), 0.0),
            nb + Duration::days(81)
        );
        // A margin longer than the certificate: renewed at 2/3, not at once (which would
        // renew every new certificate immediately, again and again).
        assert_eq!(
            due_at(nb, na, None, Threshold::Before(Duration::days(200)), 0.0),
            nb + Duration::days(60)
        );
        assert_eq!(
            due_at(nb, na, None, Threshold::Before(Duration::days(90)), 0.0),
            nb + Duration::days(60)
        );
        assert_eq!(
            due_at(nb, na, None, Threshold::Before(Duration::days(89)), 0.0),
            nb + Duration::days(1)
        );
        assert_eq!(
            Threshold::parse_fraction("2/3").unwrap(),
            Threshold::Fraction(2.0 / 3.0)
        );
        assert_eq!(
            Threshold::parse_fraction("75%").unwrap(),
            Threshold::Fraction(0.75)
        );
        assert!(Threshold::parse_fraction("1").is_err());
        assert!(Threshold::parse_fraction("x").is_err());
    }

    /// A 40-second leaf whose notBefore the CA backdated by 5 minutes (a 340-second validity),
    /// renewed 25 s before its end: planned over the 40 s after it was obtained, the jitter
    /// (at most 5% of those, 2 s) never puts the point before the certificate existed. Over the
    /// whole validity it could move it 17 s earlier, before issuance: due at once, forever.
    #[test]
    fn backdated_short_leaves_are_planned_from_when_they_were_obtained() {
        let issued = OffsetDateTime::UNIX_EPOCH + Duration::days(1);
        let (nb, na) = (
            issued - Duration::minutes(5),
            issued + Duration::seconds(40),
        );
        let got = Some(issued);
        let before = Threshold::Before(Duration::seconds(25));
        for jitter in [-1.0, -0.5, 0.0, 0.5, 1.0] {
            let t = due_at(nb, na, got, before, jitter);
            assert!(
                t >= na - Duration::seconds(27) && t <= na - Duration::seconds(25),
                "{jitter}: {}",
                na - t
            );
            let t = due_at(nb, na, got, Threshold::default(), jitter);
            let third = Duration::seconds(40) / 3_i32;
            assert!(
                (t - (na - third)).abs() <= Duration::seconds(2),
                "{jitter}: {}",
                na - t
            );
        }
        assert_eq!(
            due_at(nb, na, got, before, -1.0),
            na - Duration::seconds(27)
        );
        // Planned over the whole validity (the time obtained unknown), the same jitter lands
        // before issuance: what made the daemon renew every few seconds.
        assert!(due_at(nb, na, None, before, -1.0) < issued);
        assert!(due_at(nb, na, None, Threshold::default(), 0.0) < issued);
        // A margin longer than the 40 s obtained (though shorter than the 340 s of validity):
        // 2/3 of the 40 s, not at once.
        let t = due_at(nb, na, got, Threshold::Before(Duration::minutes(1)), -1.0);
        assert!(t > issued + Duration::seconds(24), "{}", t - issued);
        // A fraction stays out of the last tenth of the 40 s, not of the 340.
        assert_eq!(
            due_at(nb, na, got, Threshold::Fraction(0.99), 1.0),
            na - Duration::seconds(4)
        );
        // A margin leaving 1 s: the jitter takes at most half of it, never due at once.
        let t = due_at(nb, na, got, Threshold::Before(Duration::seconds(39)), -1.0);
        assert_eq!(t, issued + Duration::milliseconds(500));
        // Nonsense times stay inside the validity window.
        assert_eq!(
            due_at(
                nb,
                na,
                Some(nb - Duration::days(1)),
                Threshold::default(),
                0.0
            ),
            due_at(nb, na, None, Threshold::default(), 0.0)
        );
        assert_eq!(
            due_at(
                nb,
                na,
                Some(na + Duration::days(1)),
                Threshold::default(),
                -1.0
            ),
            na
        );
        assert_eq!(due_at(na, nb, got, before, -1.0), na);
    }

    #[test]
    fn retries_back_off_and_tighten() {
        let plenty = Duration::days(10);
        assert_eq!(backoff(1, plenty), Duration::seconds(2));
        assert_eq!(backoff(3, plenty), Duration::seconds(8));
        assert_eq!(backoff(30, plenty), Duration::minutes(5));
        assert_eq!(backoff(30, Duration::minutes(4)), Duration::minutes(1));
        assert_eq!(backoff(30, Duration::seconds(2)), Duration::seconds(1));
    }

    /// A CA or network that is down is retried as before; a refusal, an unusable local file or
    /// a renewed certificate refused after issuance (each try costs the CA a certificate) is
    /// retried from 15 minutes on, up to 6 hours, never closer than 5 minutes.
    #[test]
    fn lasting_failures_are_retried_far_less_often() {
        let plenty = Duration::days(60);
        let refused = |status: u16| Error::Refused {
            status,
            code: "X".into(),
            message: "no".into(),
            retry_after: None,
        };
        let down = Error::Transport {
            url: "https://ca".into(),
            detail: "connection refused".into(),
        };
        for e in [&down, &refused(503), &refused(429)] {
            assert!(is_transient(e), "{e}");
            assert_eq!(backoff_after(e, 1, plenty, 0.0), Duration::seconds(2));
        }
        let lasting = [
            refused(403),
            refused(400),
            Error::Protocol("the renewed certificate is refused: not yet valid".into()),
            Error::Config("key unreadable".into()),
        ];
        for e in &lasting {
            assert!(!is_transient(e), "{e}");
            assert_eq!(backoff_after(e, 1, plenty, 0.0), Duration::minutes(15));
            assert_eq!(backoff_after(e, 3, plenty, 0.0), Duration::hours(1));
            assert_eq!(backoff_after(e, 30, plenty, 0.0), Duration::hours(6));
            assert_eq!(
                backoff_after(e, 30, Duration::hours(1), 0.0),
                Duration::minutes(30)
            );
            assert_eq!(
                backoff_after(e, 30, Duration::minutes(2), 0.0),
                Duration::minutes(5)
            );
        }
        let spread = backoff_after(&lasting[0], 1, plenty, 1.0);
        assert_eq!(spread, Duration::minutes(15) + Duration::seconds(90));
    }

    /// A `429 RATE_LIMITED` is retried, but not before the CA's `Retry-After` (an earlier try
    /// would be refused again): spread only later, capped at 6 hours; a shorter `Retry-After`
    /// than the backoff changes nothing.
    #[test]
    fn retry_after_is_honoured() {
        let plenty = Duration::days(60);
        let limited = |secs: u64| Error::Refused {
            status: 429,
            code: "RATE_LIMITED".into(),
            message: "later".into(),
            retry_after: Some(std::time::Duration::from_secs(secs)),
        };
        let e = limited(1800);
        assert!(is_transient(&e));
        for (jitter, want) in [
            (-1.0, Duration::minutes(30)),
            (0.0, Duration::seconds(30 * 60 + 90)),
            (1.0, Duration::minutes(33)),
        ] {
            assert_eq!(backoff_after(&e, 1, plenty, jitter), want, "{jitter}");
        }
        assert_eq!(
            backoff_after(&limited(30 * 86_400), 1, plenty, -1.0),
            MAX_RETRY_AFTER
        );
        assert_eq!(
            backoff_after(&limited(1), 3, plenty, 0.0),
            Duration::seconds(8)
        );
    }

    /// A hook that failed after a renewal is recorded as pending and run again, after a back-off
    /// and also by a daemon restarted meanwhile, until it succeeds; then it is no longer pending.
    #[tokio::test]
    async fn a_failed_hook_is_run_again_until_it_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("svc.crt");
        let marker = dir.path().join("second-try");
        // Fails the first time, succeeds after.
        let hook = Hook::Exec(format!(
            "test -f {m} || {{ touch {m}; exit 1; }}",
            m = marker.display()
        ));
        let now = OffsetDateTime::now_utc();
        let mut pending = PendingHook::from_record(&hook, &cert, now);
        assert!(pending.at.is_none(), "nothing pending before a renewal");
        // A renewal that replaced nothing leaves nothing pending; one under way when the
        // daemon stopped (the files may have changed) leaves the hook pending.
        pending.before_renewal(&hook, &cert);
        pending.renewal_failed(&hook, &cert);
        assert!(PendingHook::from_record(&hook, &cert, now).at.is_none());
        pending.before_renewal(&hook, &cert);
        assert!(PendingHook::from_record(&hook, &cert, now).at.is_some());
        pending.renewed(&hook, &cert, now);
        assert!(pending
            .run_if_due(&hook, &cert, now)
            .await
            .unwrap()
            .is_err());
        assert!(read_record(&cert).unwrap().hook_pending);
        // Not again at once: after the back-off.
        assert!(pending.run_if_due(&hook, &cert, now).await.is_none());
        assert!(pending.at.unwrap() > now);
        // A daemon started meanwhile finds it pending and runs it now.
        let mut restarted = PendingHook::from_record(&hook, &cert, now);
        assert!(restarted
            .run_if_due(&hook, &cert, now)
            .await
            .unwrap()
            .is_ok());
        assert!(!read_record(&cert).unwrap().hook_pending);
        assert!(PendingHook::from_record(&hook, &cert, now).at.is_none());
        // Without a hook nothing is ever pending.
        let mut none = PendingHook::default();
        none.renewed(&Hook::None, &cert, now);
        assert!(none.at.is_none());
    }

    #[test]
    fn signal_hook_parsing() {
        assert!(
            matches!(Hook::parse_signal("/run/gw.pid:HUP").unwrap(), Hook::Signal { signal, .. } if signal == "HUP")
        );
        assert!(
            matches!(Hook::parse_signal("/run/gw.pid").unwrap(), Hook::Signal { signal, .. } if signal == "HUP")
        );
        assert!(Hook::parse_signal(":HUP").is_err());
    }

    /// A combined cert+key file is recognised however it is named (a symlink, another
    /// spelling); a cert file holding a key is never rewritten as a bare chain.
    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn combined_files_are_recognised_by_identity() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.pem");
        let key = mtls_pki::PrivateKey::generate(mtls_pki::KeyAlgorithm::EcdsaP256).unwrap();
        std::fs::write(&bundle, key.to_pem().as_bytes()).unwrap();
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(&bundle, &link).unwrap();
        let other = dir.path().join("sub/../bundle.pem");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(same_file(&bundle, &link) && same_file(&bundle, &other));
        assert!(!same_file(&bundle, &dir.path().join("missing.pem")));
        assert!(holds_private_key(&bundle));

        // --cert bundle --key <another file>: refused before anything is contacted or written.
        let separate = dir.path().join("key.pem");
        std::fs::write(&separate, key.to_pem().as_bytes()).unwrap();
        let before = std::fs::read(&bundle).unwrap();
        let w = Watch {
            cert: bundle.clone(),
            key: separate,
            root: dir.path().join("root.pem"),
        };
        let url = CaUrl::parse("https://127.0.0.1:9").unwrap();
        let e = renew_once(&w, &url, false, None, OffsetDateTime::now_utc())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("also holds a private key"), "{e}");
        assert_eq!(std::fs::read(&bundle).unwrap(), before);
    }

    /// Renewals of one file wait for each other (a second daemon, a one-shot run), and a
    /// daemon whose certificate was replaced while it waited renews nothing.
    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn renewals_of_one_file_wait_for_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let pki = mtls_test_util::TestPki::new("renew-lock");
        let leaf = pki.client("app");
        let cert = dir.path().join("cert.pem");
        std::fs::write(
            &cert,
            mtls_pki::pem_io::encode("CERTIFICATE", &leaf.cert.der),
        )
        .unwrap();
        let w = Watch {
            cert: cert.clone(),
            key: dir.path().join("key.pem"),
            root: dir.path().join("root.pem"),
        };
        // Nothing answers there: an attempt that gets as far as the CA fails quickly.
        let url = CaUrl::parse("https://127.0.0.1:9").unwrap();
        let now = OffsetDateTime::now_utc();
        let held = files::lock_dir(dir.path()).unwrap();
        let attempt = tokio::spawn({
            let (w, url) = (w.clone(), url.clone());
            async move { renew_once(&w, &url, false, None, now).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!attempt.is_finished(), "it waits for the other renewal");
        drop(held);
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), attempt)
            .await
            .unwrap()
            .unwrap();
        assert!(r.is_err(), "then goes on (and fails: no key, no CA)");
        // The file ends at another time than the daemon saw: renewed meanwhile, nothing done.
        let (_, na, _) = current_validity(&cert).unwrap();
        let skipped = renew_if_unchanged(&w, &url, false, None, na - Duration::hours(1), now)
            .await
            .unwrap();
        assert!(skipped.is_none());
        assert!(renew_if_unchanged(&w, &url, false, None, na, now)
            .await
            .is_err());
    }

    /// A hook that does not finish is killed with what it started, not only its shell.
    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn a_hook_that_hangs_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let hook = Hook::Exec(format!(
            "sleep 60 & echo $! > {}; sleep 60",
            pidfile.display()
        ));
        let e = hook.run().await.unwrap_err();
        assert!(e.contains("killed"), "{e}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // A zombie (killed, not yet reaped) counts as gone.
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| !stat.contains(") Z "))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(!alive(pid), "the hook's background child {pid} still runs");
    }

    /// Pids that would signal a process group, init or nothing are refused before `kill` runs;
    /// a hook leaving a background process behind is done when its shell is; a failing hook
    /// is reported.
    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn hooks_refuse_bad_pids_and_do_not_wait_for_background_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("app.pid");
        for bad in ["0", "1", "-1", "", "12ab", "99999999999"] {
            std::fs::write(&pidfile, bad).unwrap();
            let hook = Hook::Signal {
                pidfile: pidfile.clone(),
                signal: "HUP".into(),
            };
            let e = hook.run().await.unwrap_err();
            assert!(e.contains("does not hold a process id"), "{bad:?}: {e}");
        }
        // A pid file another user owns may name only that user's processes.
        if std::fs::metadata("/proc/self")
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.uid()
            })
            .ok()
            == Some(0)
        {
            let mut sleeper = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap();
            std::fs::write(&pidfile, sleeper.id().to_string()).unwrap();
            let hook = Hook::Signal {
                pidfile: pidfile.clone(),
                signal: "CONT".into(),
            };
            hook.run().await.unwrap();
            std::os::unix::fs::chown(&pidfile, Some(65534), Some(65534)).unwrap();
            let e = hook.run().await.unwrap_err();
            assert!(e.contains("not signalled"), "{e}");
            // Nor through a link to a file root owns.
            let rooted = dir.path().join("rooted.pid");
            std::fs::write(&rooted, sleeper.id().to_string()).unwrap();
            std::fs::remove_file(&pidfile).unwrap();
            std::os::unix::fs::symlink(&rooted, &pidfile).unwrap();
            let e = hook.run().await.unwrap_err();
            assert!(e.contains("reading"), "{e}");
            // Nor through a hard link to it.
            std::fs::remove_file(&pidfile).unwrap();
            std::fs::hard_link(&rooted, &pidfile).unwrap();
            let e = hook.run().await.unwrap_err();
            assert!(e.contains("hard links"), "{e}");
            let _ = sleeper.kill();
            let _ = sleeper.wait();
        }
        let started = std::time::Instant::now();
        Hook::Exec("sleep 30 & exit 0".into()).run().await.unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        let e = Hook::Exec("exit 3".into()).run().await.unwrap_err();
        assert!(e.contains("exit status: 3"), "{e}");
    }
}
