//! The audit behind `mtls doctor`: each problem found in certificate, key and CRL files, PKI
//! directories and configuration files, with a stable code, a severity, the file and the fix.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mtls_pki::zeroize::Zeroizing;
use serde::Serialize;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::public_key::PublicKey;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing to fix.
    Info,
    /// Fix it before it causes an outage or weakens the setup.
    Warning,
    /// Broken or insecure now.
    Error,
}

/// One problem: a stable `code` (documented in the README, never reused), the file, what is
/// wrong and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: &'static str,
    pub severity: Severity,
    /// Written as displayed: a file name that is not UTF-8 must not stop the report.
    #[serde(serialize_with = "display_path")]
    pub file: PathBuf,
    pub message: String,
    pub fix: String,
}

fn display_path<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&p.display())
}

/// Every code the doctor can report, with its severity (the README's table).
pub const CODES: &[(&str, Severity)] = &[
    ("key_permissions", Severity::Error),
    ("ca_key_unencrypted", Severity::Warning),
    ("root_key_online", Severity::Warning),
    ("chain_incomplete", Severity::Warning),
    ("chain_out_of_order", Severity::Error),
    ("key_mismatch", Severity::Error),
    ("expired", Severity::Error),
    ("not_yet_valid", Severity::Warning),
    ("expiring_soon", Severity::Warning),
    ("weak_key", Severity::Error),
    ("weak_signature", Severity::Error),
    ("server_without_san", Severity::Error),
    ("leaf_without_eku", Severity::Warning),
    ("leaf_is_ca", Severity::Error),
    ("self_signed_leaf", Severity::Error),
    ("issued_by_root", Severity::Warning),
    ("validity_too_long", Severity::Warning),
    ("crl_stale", Severity::Error),
    ("crl_missing", Severity::Warning),
    ("crl_file_missing", Severity::Error),
    ("client_verification_optional", Severity::Warning),
    ("allows_any_trusted", Severity::Info),
    ("revocation_soft_fail", Severity::Warning),
    ("revocation_not_configured", Severity::Warning),
    ("client_ca_public_roots", Severity::Error),
    ("unreadable", Severity::Error),
    ("key_unchecked", Severity::Info),
    ("not_audited", Severity::Info),
];

fn severity_of(code: &str) -> Severity {
    CODES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, s)| *s)
        .unwrap_or(Severity::Error)
}

/// Thresholds of the audit.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The audit's clock.
    pub now: OffsetDateTime,
    /// Certificates expiring within this are reported (`expiring_soon`; default 30 days) once
    /// past the point a renewal daemon would have replaced them (2/3 of their lifetime).
    pub expiry_warning: Duration,
    /// Leaf certificates valid for longer than this are reported (`validity_too_long`;
    /// default 398 days, the CA/Browser Forum's limit for server certificates).
    pub max_leaf_validity: Duration,
}

impl Options {
    /// The defaults at `now`.
    pub fn at(now: OffsetDateTime) -> Options {
        Options {
            now,
            expiry_warning: Duration::days(30),
            max_leaf_validity: Duration::days(398),
        }
    }
}

/// Why a configuration file could not be audited at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Gateway(#[from] mtls_gateway::Error),
    #[error("{}: configuration: {detail}", path.display())]
    CaConfig { path: PathBuf, detail: String },
}

/// The findings of one audit, in the order found (files in path order).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    #[serde(skip)]
    seen: BTreeSet<(String, PathBuf)>,
    /// Keys a configuration names that mtls cannot load: reported `unreadable`, which says all
    /// that their file's own `key_unchecked` note would.
    #[serde(skip)]
    unloadable_keys: BTreeSet<PathBuf>,
    /// Every file read and audited (a clean report over no file at all is not a clean bill).
    #[serde(skip)]
    audited: BTreeSet<PathBuf>,
}

impl Report {
    fn add(&mut self, code: &'static str, file: &Path, message: String, fix: impl Into<String>) {
        // One finding per problem: a configured key mtls cannot load is an error, and the
        // note that its file could not be checked would say the same again.
        if code == "key_unchecked" && self.unloadable_keys.contains(file) {
            return;
        }
        // The same finding once (a file audited on its own and again through a configuration).
        if !self
            .seen
            .insert((format!("{code}\u{0}{message}"), file.to_path_buf()))
        {
            return;
        }
        self.findings.push(Finding {
            code,
            severity: severity_of(code),
            file: file.to_path_buf(),
            message,
            fix: fix.into(),
        });
    }

    /// A key the configuration names that mtls cannot load (the server would not start): an
    /// `unreadable` error that replaces the key file's own `key_unchecked` note, whether that
    /// note came first (the file audited on its own, or as the configured key) or comes later.
    fn add_unloadable_configured_key(&mut self, key: &Path, message: String, fix: &str) {
        self.unloadable_keys.insert(key.to_path_buf());
        self.findings
            .retain(|f| !(f.code == "key_unchecked" && f.file == key));
        self.add("unreadable", key, message, fix);
    }

    /// How many findings of `severity`.
    pub fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }

    /// How many files were audited (each once).
    pub fn files_audited(&self) -> usize {
        self.audited.len()
    }

    /// The worst severity found.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }
}

/// Audits files and directories (a directory holding `root.crt` or `intermediate.crt` is also
/// checked as a PKI directory; others are walked).
pub fn audit_paths(paths: &[PathBuf], options: &Options, report: &mut Report) {
    for p in paths {
        if p.is_dir() {
            audit_dir(p, options, report, 0);
        } else {
            audit_file(p, options, report);
        }
    }
}

/// How deep below a directory named on the command line files are looked for.
const MAX_DEPTH: usize = 4;

fn audit_dir(dir: &Path, options: &Options, report: &mut Report, depth: usize) {
    if depth > MAX_DEPTH {
        report.add(
            "not_audited",
            dir,
            format!(
                "more than {MAX_DEPTH} directories below the one given: its files were not audited"
            ),
            "name this directory on the command line to audit it",
        );
        return;
    }
    if dir.join("intermediate.crt").exists() || dir.join("root.crt").exists() {
        audit_pki_dir(dir, report);
    }
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(e) => e.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            report.add(
                "unreadable",
                dir,
                format!("cannot read the directory: {e}"),
                "check the path and its permissions",
            );
            return;
        }
    };
    entries.sort();
    for p in entries {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.as_deref().is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        if p.is_dir() {
            // The CA's ledger holds copies of published CRLs, not files anyone serves. A link
            // to a directory is not followed: one back up (`s -> .`) multiplied the audit by
            // itself at each level.
            let link = std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink());
            if name.as_deref() != Some("ledger") && !link {
                audit_dir(&p, options, report, depth + 1);
            }
        } else if is_pki_file(&p) {
            audit_file(&p, options, report);
        }
    }
}

fn is_pki_file(p: &Path) -> bool {
    let ext = p
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    matches!(
        ext.as_str(),
        "pem" | "crt" | "cer" | "der" | "key" | "crl" | "p8" | "pk8"
    )
}

/// A PKI directory made by `mtls ca init`: where the keys are and whether a CRL exists.
fn audit_pki_dir(dir: &Path, report: &mut Report) {
    let root_key = dir.join("root.key");
    if root_key.exists() && dir.join("intermediate.key").exists() {
        report.add(
            "root_key_online",
            &root_key,
            "the root key is kept next to the intermediate that signs every day".into(),
            "move root.key to offline storage (removable media, an HSM); `mtls ca intermediate --root-key …` uses it when a new intermediate is needed",
        );
    }
    for name in ["root.key", "intermediate.key"] {
        let key = dir.join(name);
        // Wiped when dropped, like every key file read here.
        if let Ok(bytes) = std::fs::read(&key).map(Zeroizing::new) {
            if !mtls_pki::key::is_encrypted(&bytes) {
                report.add(
                    "ca_key_unencrypted",
                    &key,
                    "the CA key is stored unencrypted".into(),
                    "create the CA with `mtls ca init --encrypt` (or re-encrypt the key) and give the passphrase with --ca-passphrase-file",
                );
            }
        }
    }
    let crl = dir.join("crl.pem");
    if dir.join("intermediate.crt").exists() && !crl.exists() {
        report.add(
            "crl_missing",
            &crl,
            "the PKI has no CRL: verifiers that check revocation have nothing to load".into(),
            "run `mtls crl` now and before every nextUpdate (or serve it from `mtls ca serve`)",
        );
    }
}

/// The file's bytes, wiped when dropped: the file may be a private key.
fn read_or_report(p: &Path, report: &mut Report) -> Option<Zeroizing<Vec<u8>>> {
    // A FIFO or a device named like a certificate would hang the audit or never end.
    if std::fs::metadata(p).is_ok_and(|m| !m.is_file()) {
        report.add(
            "unreadable",
            p,
            "not a regular file".into(),
            "point the check at certificate, key and CRL files",
        );
        return None;
    }
    // Bounded (and wiped): a huge file given by mistake is reported, not read into memory.
    match mtls_pki::files::read_input(p) {
        Ok(b) => Some(b),
        Err(e) => {
            report.add(
                "unreadable",
                p,
                format!("cannot read: {e}"),
                "check the path and its permissions",
            );
            None
        }
    }
}

/// Audits one file: a private key, a certificate or chain, or a CRL (PEM or DER).
pub fn audit_file(p: &Path, options: &Options, report: &mut Report) {
    audit_file_keyed(p, options, report, None);
}

/// The key a certificate is checked against: the one a configuration pairs it with (and the
/// passphrase that opens it), else `NAME.key` next to it.
type PairedKey<'a> = Option<(&'a Path, Option<&'a [u8]>)>;

fn audit_file_keyed(p: &Path, options: &Options, report: &mut Report, key: PairedKey<'_>) {
    let Some(bytes) = read_or_report(p, report) else {
        return;
    };
    report.audited.insert(p.to_path_buf());
    // Searched as bytes: a lossy UTF-8 copy of a DER key would be a copy left unwiped.
    let contains = |needle: &str| contains_bytes(&bytes, needle);
    let is_key = contains("PRIVATE KEY-----")
        || (!mtls_pki::pem_io::is_pem(&bytes)
            && p.extension()
                .is_some_and(|e| e == "key" || e == "p8" || e == "pk8"));
    if is_key {
        audit_key(p, &bytes, report);
        // A combined file (certificate chain and key) is audited as a chain too.
        if !contains("-----BEGIN CERTIFICATE-----") {
            return;
        }
    }
    if contains("-----BEGIN X509 CRL-----") || p.extension().is_some_and(|e| e == "crl") {
        match mtls_pki::pem_io::crls(&bytes) {
            Ok(crls) => {
                for crl in crls {
                    audit_crl(p, &crl, options, report);
                }
            }
            // A CRL nobody can parse revokes nothing: verifiers that load it fail or, worse,
            // run without it.
            Err(e) => report.add(
                "unreadable",
                p,
                format!("not a valid CRL: {e}"),
                "publish a new one with `mtls crl` (or fetch it again) and replace the file",
            ),
        }
        return;
    }
    match mtls_pki::pem_io::certificates(&bytes) {
        // A combined file (chain and key) is checked against its own key.
        Ok(chain) if !chain.is_empty() => {
            let own: PairedKey<'_> = (is_key && key.is_none()).then_some((p, None));
            audit_chain(p, &chain, options, report, key.or(own))
        }
        // A DER file that is not a certificate may be a CRL.
        _ => match mtls_pki::pem_io::crls(&bytes) {
            Ok(crls) => {
                for crl in crls {
                    audit_crl(p, &crl, options, report);
                }
            }
            Err(e) => report.add(
                "unreadable",
                p,
                format!("not a certificate, key or CRL: {e}"),
                "replace it with the PEM or DER file it should be",
            ),
        },
    }
}

/// Whether `needle` occurs in `haystack` (what `String::from_utf8_lossy(haystack)
/// .contains(needle)` says for an ASCII needle, without the copy).
fn contains_bytes(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn audit_key(p: &Path, bytes: &[u8], report: &mut Report) {
    // Without a passphrase an encrypted key is checked as far as its structure (a truncated
    // one is malformed); that it matches its certificate is reported where it is checked.
    match mtls_pki::PrivateKey::from_pem_or_der(bytes, None) {
        Ok(_) | Err(mtls_pki::Error::PassphraseRequired) => {}
        // A key type mtls does not load (RSA under 2048 bits, another curve) may serve others.
        Err(e @ mtls_pki::Error::UnsupportedKey(_)) => report.add(
            "key_unchecked",
            p,
            format!("mtls cannot load this key, so it was not checked: {e}"),
            "check it with `openssl pkey -noout -in FILE`; mtls uses ECDSA P-256/P-384, Ed25519 and RSA ≥ 2048",
        ),
        Err(e) => report.add(
            "unreadable",
            p,
            format!("not a usable private key: {e}"),
            "restore the key from its backup, or issue a new certificate with a new key",
        ),
    }
    if let Ok(meta) = std::fs::metadata(p) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            report.add(
                "key_permissions",
                p,
                format!("the private key is readable by group or others (mode {mode:03o})"),
                format!("chmod 600 {}", p.display()),
            );
        }
    }
}

fn audit_crl(
    p: &Path,
    crl: &rustls_pki_types::CertificateRevocationListDer<'_>,
    options: &Options,
    report: &mut Report,
) {
    let parsed = mtls_pki::revocation::without_entries(crl.as_ref()).and_then(|(head, _)| {
        mtls_pki::revocation::parse_crl(&head).map(|c| c.next_update().map(|n| n.to_datetime()))
    });
    let next_update = match parsed {
        Ok(n) => n,
        Err(e) => {
            report.add(
                "unreadable",
                p,
                format!("not a valid CRL: {e}"),
                "publish a new one with `mtls crl` (or fetch it again) and replace the file",
            );
            return;
        }
    };
    match next_update {
        Some(next) if next < options.now => report.add(
            "crl_stale",
            p,
            format!(
                "the CRL is past its nextUpdate ({}): strict verifiers refuse every client it covers",
                mtls_pki::rfc3339(&next)
            ),
            "publish a new one with `mtls crl` (schedule it well before nextUpdate), or let the gateway fetch it (--crl-url)",
        ),
        None => report.add(
            "crl_stale",
            p,
            "the CRL has no nextUpdate: nobody can tell whether it is current".into(),
            "publish CRLs with a nextUpdate (`mtls crl --days N`)",
        ),
        _ => {}
    }
}

// These classify certificates (is it a root, which one issued which) for advice, so they use
// x509-parser's wider algorithm set on purpose: an old SHA-1 root is still a root, and a
// SHA-1 signature is reported by its own finding (`weak_signature`). Verification itself uses
// `mtls_pki::signature`.
fn is_self_signed(c: &X509Certificate<'_>) -> bool {
    c.subject().as_raw() == c.issuer().as_raw() && c.verify_signature(None).is_ok()
}

fn issued(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    child.issuer().as_raw() == parent.subject().as_raw()
        && child.verify_signature(Some(parent.public_key())).is_ok()
}

fn is_ca(c: &X509Certificate<'_>) -> bool {
    c.basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|b| b.value.ca)
}

fn audit_chain(
    p: &Path,
    chain: &[rustls_pki_types::CertificateDer<'static>],
    options: &Options,
    report: &mut Report,
    key: PairedKey<'_>,
) {
    let parsed: Vec<X509Certificate<'_>> = chain
        .iter()
        .filter_map(|c| mtls_pki::pem_io::parse_certificate(c).ok())
        .collect();
    let Some(leaf) = parsed.first() else {
        return;
    };
    // Order: each certificate issued by the next.
    for pair in parsed.windows(2) {
        if let [child, parent] = pair {
            if !issued(child, parent) {
                report.add(
                    "chain_out_of_order",
                    p,
                    format!(
                        "{} is not issued by the certificate after it ({})",
                        child.subject(),
                        parent.subject()
                    ),
                    "order the file leaf first, then each issuer (`cat leaf.crt intermediate.crt > chain.pem`)",
                );
            }
        }
    }
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let meant_as_chain = name.contains("chain") || parsed.len() > 1;
    if let Some(last) = parsed.last() {
        if meant_as_chain && !is_ca(leaf) && !is_self_signed(last) && parsed.len() == 1 {
            report.add(
                "chain_incomplete",
                p,
                format!(
                    "the chain file holds only the leaf; its issuer {} is missing",
                    leaf.issuer()
                ),
                "serve the chain file (leaf + intermediate), e.g. pki/issued/NAME.chain.pem",
            );
        }
    }
    for c in &parsed {
        audit_certificate(p, c, options, report);
    }
    audit_leaf(p, leaf, parsed.get(1), options, report);
    match key {
        Some((key, passphrase)) => check_key_match(p, leaf, key, passphrase, true, report),
        None => audit_sibling_key(p, leaf, report),
    }
}

fn audit_certificate(p: &Path, c: &X509Certificate<'_>, options: &Options, report: &mut Report) {
    let not_after = c.validity().not_after.to_datetime();
    let not_before = c.validity().not_before.to_datetime();
    if not_after < options.now {
        report.add(
            "expired",
            p,
            format!(
                "{} expired at {}",
                c.subject(),
                mtls_pki::rfc3339(&not_after)
            ),
            "renew it (`mtls renew`, or issue a new one) and replace the file",
        );
    } else if not_after - options.now < options.expiry_warning
        // A certificate a renewal daemon watches is replaced at its renewal point (2/3 of the
        // lifetime): only one still in place after that point is a problem. A 24-hour
        // certificate is always "expiring within 30 days" and is fine until it is 16 hours old.
        && options.now
            >= mtls_client::renewal::due_at(
                not_before,
                not_after,
                mtls_client::renewal::read_record(p).and_then(|r| r.obtained_at(not_after)),
                mtls_client::renewal::Threshold::default(),
                0.0,
            )
    {
        report.add(
            "expiring_soon",
            p,
            format!(
                "{} expires at {} ({} days left)",
                c.subject(),
                mtls_pki::rfc3339(&not_after),
                (not_after - options.now).whole_days()
            ),
            "renew it now, and let `mtls renew --daemon` renew it from now on",
        );
    }
    if not_before > options.now {
        report.add(
            "not_yet_valid",
            p,
            format!(
                "{} is not valid before {}",
                c.subject(),
                mtls_pki::rfc3339(&not_before)
            ),
            "check the issuing machine's clock",
        );
    }
    if let Ok(PublicKey::RSA(rsa)) = c.public_key().parsed() {
        let bits = rsa.key_size();
        if bits < 2048 {
            report.add(
                "weak_key",
                p,
                format!("{} has a {bits}-bit RSA key", c.subject()),
                "issue a new certificate with an ECDSA P-256 key (the default) or RSA ≥ 2048",
            );
        }
    }
    let sig = c.signature_algorithm.algorithm.to_id_string();
    let weak = [
        "1.2.840.113549.1.1.5", // sha1WithRSAEncryption
        "1.2.840.113549.1.1.4", // md5WithRSAEncryption
        "1.2.840.10045.4.1",    // ecdsa-with-SHA1
        "1.2.840.10040.4.3",    // dsa-with-sha1
        "1.3.14.3.2.29",        // sha1WithRSASignature (OIW)
    ];
    if weak.contains(&sig.as_str()) && !is_self_signed(c) {
        report.add(
            "weak_signature",
            p,
            format!("{} is signed with SHA-1 or MD5", c.subject()),
            "re-issue it: mtls signs with SHA-256 or better",
        );
    }
}

fn audit_leaf(
    p: &Path,
    leaf: &X509Certificate<'_>,
    issuer_in_file: Option<&X509Certificate<'_>>,
    options: &Options,
    report: &mut Report,
) {
    let eku = leaf.extended_key_usage().ok().flatten().map(|e| e.value);
    let server = eku.as_ref().is_some_and(|e| e.server_auth);
    let client = eku.as_ref().is_some_and(|e| e.client_auth);
    if is_ca(leaf) {
        if server || client {
            report.add(
                "leaf_is_ca",
                p,
                format!(
                    "{} is a CA certificate (CA:TRUE) used for TLS authentication",
                    leaf.subject()
                ),
                "issue the server or client a leaf certificate (`mtls issue server|client`); keep CA certificates for signing",
            );
        }
        return;
    }
    if is_self_signed(leaf) {
        report.add(
            "self_signed_leaf",
            p,
            format!(
                "{} is self-signed: every verifier must trust it individually, and it cannot be revoked",
                leaf.subject()
            ),
            "issue it from your CA (`mtls issue server|client`)",
        );
    }
    if eku.is_none() {
        report.add(
            "leaf_without_eku",
            p,
            format!(
                "{} has no extended key usage: it can act as a server and a client",
                leaf.subject()
            ),
            "issue it with a profile (`mtls issue server` or `mtls issue client`)",
        );
    }
    if server && mtls_pki::issue::certificate_sans(leaf).is_empty() {
        report.add(
            "server_without_san",
            p,
            format!(
                "{} is a server certificate without subjectAltName: clients ignore the CN and refuse it",
                leaf.subject()
            ),
            "re-issue it with its DNS names and IPs as SANs (`mtls issue server NAME…`)",
        );
    }
    if let Some(issuer) = issuer_in_file {
        if issued(leaf, issuer) && is_self_signed(issuer) {
            report.add(
                "issued_by_root",
                p,
                format!(
                    "{} is issued directly by the root {}",
                    leaf.subject(),
                    issuer.subject()
                ),
                "issue leaves from an intermediate (`mtls ca init` makes one) and keep the root offline",
            );
        }
    }
    let lifetime =
        leaf.validity().not_after.to_datetime() - leaf.validity().not_before.to_datetime();
    if lifetime > options.max_leaf_validity {
        report.add(
            "validity_too_long",
            p,
            format!(
                "{} is valid for {} days (policy: at most {})",
                leaf.subject(),
                lifetime.whole_days(),
                options.max_leaf_validity.whole_days()
            ),
            "issue shorter-lived certificates (`--days`) and renew them automatically (`mtls renew --daemon`)",
        );
    }
}

/// `NAME.crt` / `NAME.chain.pem` next to `NAME.key`: the key must match the certificate.
fn audit_sibling_key(p: &Path, leaf: &X509Certificate<'_>, report: &mut Report) {
    let Some(name) = p.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let stem = name
        .strip_suffix(".chain.pem")
        .or_else(|| name.strip_suffix(".crt"))
        .or_else(|| name.strip_suffix(".pem"));
    let Some(stem) = stem else {
        return;
    };
    // `mtls enroll` writes cert.pem beside key.pem; `mtls issue` NAME.crt beside NAME.key.
    let key_path = if name == "cert.pem" {
        p.with_file_name("key.pem")
    } else {
        p.with_file_name(format!("{stem}.key"))
    };
    if key_path.exists() {
        check_key_match(p, leaf, &key_path, None, false, report);
    }
}

/// Whether the key in `key_path` is the one of certificate `leaf` (in `p`); a key that cannot
/// be read or parsed is a finding of its own, never a pass. `configured`: a configuration
/// names the key for mtls to load, so a key mtls cannot load (an algorithm or encryption it
/// does not support) is an error, not a note: that server would not start.
fn check_key_match(
    p: &Path,
    leaf: &X509Certificate<'_>,
    key_path: &Path,
    passphrase: Option<&[u8]>,
    configured: bool,
    report: &mut Report,
) {
    let Some(bytes) = read_or_report(key_path, report) else {
        return;
    };
    let key = match mtls_pki::PrivateKey::from_pem_or_der(&bytes, passphrase) {
        Ok(k) => k,
        Err(mtls_pki::Error::PassphraseRequired) => {
            report.add(
                "key_unchecked",
                p,
                format!(
                    "the key {} is encrypted: whether it matches the certificate was not checked",
                    key_path.display()
                ),
                "audit through the configuration that names the key's passphrase file (`mtls doctor --config`)",
            );
            return;
        }
        Err(e @ mtls_pki::Error::UnsupportedKey(_)) if configured => {
            report.add_unloadable_configured_key(
                key_path,
                format!("mtls cannot load this key, which the configuration names: {e}"),
                "convert the key as the message says, or issue a new certificate with a new key",
            );
            return;
        }
        Err(e @ mtls_pki::Error::UnsupportedKey(_)) => {
            report.add(
                "key_unchecked",
                p,
                format!(
                    "mtls cannot load the key {} ({e}): whether it matches the certificate was not checked",
                    key_path.display()
                ),
                "compare them with `openssl x509 -noout -pubkey` and `openssl pkey -pubout`",
            );
            return;
        }
        Err(e) => {
            report.add(
                "unreadable",
                key_path,
                format!("not a usable private key: {e}"),
                "restore the key from its backup, or issue a new certificate with a new key",
            );
            return;
        }
    };
    if !key.matches_spki(leaf.public_key().raw) {
        report.add(
            "key_mismatch",
            p,
            format!(
                "the certificate does not match its key {}",
                key_path.display()
            ),
            "put the matching certificate and key side by side (a renewal may have replaced only one)",
        );
    }
}

/// Audits a gateway configuration file and every file it names.
pub fn audit_gateway_config(
    path: &Path,
    options: &Options,
    report: &mut Report,
) -> Result<(), Error> {
    let cfg = mtls_gateway::GatewayConfig::from_file(path)?;
    for l in &cfg.listeners {
        let at = |what: &str| format!("listener {:?}: {what}", l.name);
        if l.client_auth == mtls_gateway::config::ClientAuth::Optional {
            report.add(
                "client_verification_optional",
                path,
                at("client_auth = \"optional\": the TLS handshake admits clients without a valid certificate (the gateway answers 401/403 itself)"),
                "use client_auth = \"required\" unless browsers must see the JSON error page",
            );
        }
        if l.policy.allow_any_trusted {
            report.add(
                "allows_any_trusted",
                path,
                at("allow_any_trusted = true: every certificate the client CA bundle trusts is allowed"),
                "list the identities instead (allow_cn, allow_uri, allow_fingerprint, …) unless the CA issues to these clients only",
            );
        }
        let has_revocation = !l.crl.is_empty()
            || !l.crl_fetch.is_empty()
            || l.revocation_feed.is_some()
            || l.ocsp.is_some()
            || l.crl_from_certificates;
        if !has_revocation {
            report.add(
                "revocation_not_configured",
                path,
                at("no CRL, CRL fetch, revocation feed or OCSP: a revoked client keeps working until its certificate expires"),
                "add --revocation-feed https://ca:9443 (seconds) or crl/crl_fetch, or ocsp",
            );
        } else if l.revocation_policy == mtls_gateway::config::RevocationPolicy::SoftFail
            || l.allow_unknown_revocation
            || l.allow_expired_crl
        {
            report.add(
                "revocation_soft_fail",
                path,
                at("revocation is soft-fail: a client whose status is unknown (stale CRL, silent feed, responder down) is admitted"),
                "use revocation_policy = \"hard-fail\" (the default) once the revocation sources are reliable",
            );
        }
        // The listener's own CRLs, then the upstream's: each missing one with its own advice.
        // Missing, the gateway does not start (an error), unless a crl_fetch keeps that file
        // (it fetches before loading).
        let fetched = |crl: &PathBuf| l.crl_fetch.iter().any(|f| &f.file == crl);
        let crls = [
            (
                &l.crl,
                "the configured CRL file does not exist: the gateway does not start",
                "run `mtls crl` (or point crl_fetch at the CA's /v1/crl)",
            ),
            (
                &l.upstream_crl,
                "the upstream_crl file does not exist: the gateway does not start",
                "publish the upstream's CRL there (its CA's `mtls crl`, or a copy of /v1/crl)",
            ),
        ];
        for (files, missing, hint) in crls {
            for crl in files {
                if crl.exists() {
                    audit_file(crl, options, report);
                } else if fetched(crl) {
                    report.add(
                        "crl_missing",
                        crl,
                        at("the CRL file does not exist yet: the gateway fetches it at start"),
                        "make sure the distribution point answers (the gateway does not start without it)",
                    );
                } else {
                    report.add("crl_file_missing", crl, at(missing), hint);
                }
            }
        }
        // Every file the listener loads: an expired intermediate in a CA bundle or an expired
        // feed client certificate breaks the gateway as surely as its own certificate does.
        for bundle in &l.client_ca {
            if let Some(certs) = audit_bundle(bundle, options, report) {
                audit_client_ca(bundle, &certs, report, &at);
            }
        }
        for bundle in &l.upstream_ca {
            audit_bundle(bundle, options, report);
        }
        for c in &l.certificates {
            audit_pair(c, options, report);
        }
        if let Some(c) = &l.upstream_certificate {
            audit_pair(c, options, report);
        }
        if let Some(feed) = &l.revocation_feed {
            for bundle in &feed.ca {
                audit_bundle(bundle, options, report);
            }
            if let Some(c) = &feed.certificate {
                audit_pair(c, options, report);
            }
        }
    }
    Ok(())
}

/// A CA bundle: each certificate on its own (expiry, key, signature), in no particular order.
fn audit_bundle(
    bundle: &Path,
    options: &Options,
    report: &mut Report,
) -> Option<Vec<rustls_pki_types::CertificateDer<'static>>> {
    let bytes = read_or_report(bundle, report)?;
    let certs = match mtls_pki::pem_io::certificates(&bytes) {
        Ok(c) => c,
        Err(e) => {
            report.add(
                "unreadable",
                bundle,
                format!("not a certificate bundle: {e}"),
                "replace it with the PEM bundle of the CA certificates it should hold",
            );
            return None;
        }
    };
    for c in &certs {
        if let Ok(parsed) = mtls_pki::pem_io::parse_certificate(c) {
            audit_certificate(bundle, &parsed, options, report);
        }
    }
    Some(certs)
}

/// A certificate and key the configuration pairs: each file, and that they belong together
/// (an encrypted key is opened with its configured passphrase file).
fn audit_pair(c: &mtls_gateway::config::CertificateConfig, options: &Options, report: &mut Report) {
    audit_file(&c.key, options, report);
    let passphrase = match &c.key_passphrase_file {
        None => None,
        Some(f) => match mtls_pki::files::read_passphrase_file(f) {
            Ok(p) => Some(p),
            Err(e) => {
                report.add(
                    "unreadable",
                    f,
                    format!("cannot read the key's passphrase file: {e}"),
                    "check the path and its permissions (owner-only)",
                );
                audit_file(&c.cert, options, report);
                return;
            }
        },
    };
    let key = Some((c.key.as_path(), passphrase.as_deref().map(|p| p.as_slice())));
    audit_file_keyed(&c.cert, options, report, key);
}

/// A client CA bundle that trusts a public root store lets anyone with a public certificate in.
fn audit_client_ca(
    bundle: &Path,
    certs: &[rustls_pki_types::CertificateDer<'static>],
    report: &mut Report,
    at: &dyn Fn(&str) -> String,
) {
    let roots = certs
        .iter()
        .filter_map(|c| mtls_pki::pem_io::parse_certificate(c).ok())
        .filter(is_self_signed)
        .count();
    let system = bundle.starts_with("/etc/ssl") || bundle.starts_with("/usr/share/ca-certificates");
    if roots > 5 || system {
        report.add(
            "client_ca_public_roots",
            bundle,
            at(&format!(
                "the client CA bundle holds {roots} roots (a public root store?): anyone with a certificate from a public CA would be trusted as a client"
            )),
            "trust only your own CA for clients (client_ca = [\"pki/ca-chain.pem\"])",
        );
    }
}

/// Audits the online CA's configuration file and its PKI directory.
pub fn audit_ca_config(path: &Path, options: &Options, report: &mut Report) -> Result<(), Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let config = mtls_ca::config::Config::parse(&text).map_err(|e| Error::CaConfig {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let settings = config.settings().map_err(|e| Error::CaConfig {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    if settings.leaf_lifetime > options.max_leaf_validity {
        report.add(
            "validity_too_long",
            path,
            format!(
                "leaf_lifetime is {} days (policy: at most {})",
                settings.leaf_lifetime.whole_days(),
                options.max_leaf_validity.whole_days()
            ),
            "shorten leaf_lifetime and let clients renew with `mtls renew --daemon`",
        );
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let pki = base.join(&config.pki);
    if pki.is_dir() {
        audit_dir(&pki, options, report, 0);
    } else {
        report.add(
            "unreadable",
            &pki,
            "the PKI directory the configuration names is not a directory: `mtls ca serve` \
             does not start"
                .into(),
            "fix `pki` in the configuration (relative to the file), or create the CA there \
             with `mtls ca init`",
        );
    }
    Ok(())
}
