//! x509-limbo conformance harness for `mtls verify`.
//!
//! Runs every case of `conformance/x509-limbo-subset.json` through the `mtls` binary and compares
//! the exit code with the case's `expected_result`. Known divergences are listed, one per line
//! with a reason, in `conformance/limbo-exceptions.txt`; the test fails on a divergence that is not
//! listed there and on a listed case that now behaves as expected (a stale exception). See
//! `conformance/README.md` for how the case fields are mapped to `mtls verify` options.
//!
//! `cargo test -p mtls-cli --test limbo -- --nocapture` shows the summary; set `LIMBO_VERBOSE=1`
//! to print the outcome of every case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const DATA: &str = "../../conformance/x509-limbo-subset.json";
const EXCEPTIONS: &str = "../../conformance/limbo-exceptions.txt";
const THREADS: usize = 4;

fn conformance_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// One limbo test case, reduced to what the harness needs.
struct Case {
    id: String,
    description: String,
    expect_success: bool,
    plan: Plan,
}

enum Plan {
    Run(Invocation),
    Skip(String),
}

/// What to write to disk and which options to pass to `mtls verify`.
struct Invocation {
    trusted: Vec<String>,
    untrusted: Vec<String>,
    leaf: String,
    crls: Vec<String>,
    at: Option<String>,
    purpose: &'static str,
    name: Option<String>,
    /// Set when the case names a peer we cannot pass to `--name` (e.g. RFC822).
    name_note: Option<String>,
}

/// What `mtls verify` said.
enum Outcome {
    /// Exit 0.
    Valid,
    /// Exit 1, with the rejection code and reason.
    Invalid { code: String, reason: String },
    /// Exit 2: we could not use the input. Counts as FAILURE.
    InputError(String),
    /// Any other exit (signal, panic, ...). Never matches an expected result.
    Crashed(String),
}

impl Outcome {
    fn matches(&self, expect_success: bool) -> bool {
        match self {
            Outcome::Valid => expect_success,
            Outcome::Invalid { .. } | Outcome::InputError(_) => !expect_success,
            Outcome::Crashed(_) => false,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Valid => write!(f, "exit 0 (valid)"),
            Outcome::Invalid { code, reason } => {
                write!(f, "exit 1 (invalid) code={code} reason={reason}")
            }
            Outcome::InputError(msg) => write!(f, "exit 2 (input-error) {msg}"),
            Outcome::Crashed(msg) => write!(f, "crashed: {msg}"),
        }
    }
}

fn strings(v: &Value, field: &str, id: &str) -> Vec<String> {
    match &v[field] {
        Value::Null => Vec::new(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .unwrap_or_else(|| panic!("{id}: {field} holds a non-string"))
                    .to_string()
            })
            .collect(),
        other => panic!("{id}: {field} is not a list: {other}"),
    }
}

/// A DNS or IP peer name we can pass to `--name`, or a note saying why we cannot.
fn peer_name(name: &Value) -> Result<String, String> {
    let kind = name["kind"].as_str().unwrap_or("?");
    let value = name["value"].as_str().unwrap_or("?");
    match kind {
        "DNS" | "IP" => Ok(value.to_string()),
        _ => Err(format!(
            "{kind} peer name {value:?} not checked (--name takes DNS or IP)"
        )),
    }
}

fn parse_case(v: &Value) -> Case {
    let id = v["id"].as_str().expect("case without id").to_string();
    let description = v["description"].as_str().unwrap_or("").to_string();
    let expect_success = match v["expected_result"].as_str() {
        Some("SUCCESS") => true,
        Some("FAILURE") => false,
        other => panic!("{id}: unknown expected_result {other:?}"),
    };
    let untrusted = strings(v, "untrusted_intermediates", &id);

    // Constraints `mtls verify` has no option for. A case is skipped only when its outcome could
    // depend on the constraint.
    let sig_algs = strings(v, "signature_algorithms", &id);
    let key_usage = strings(v, "key_usage", &id);
    let skip = if !sig_algs.is_empty() {
        Some(format!(
            "signature_algorithms {sig_algs:?} not expressible (no --sig-alg option)"
        ))
    } else if !key_usage.is_empty() {
        Some(format!(
            "key_usage {key_usage:?} required of the leaf, not expressible (no --key-usage option)"
        ))
    } else {
        match v["max_chain_depth"].as_u64() {
            // The path's intermediates can only come from the untrusted set, so a limit of at
            // least that many certificates cannot bind and the case runs unchanged.
            Some(depth) if (depth as usize) < untrusted.len() => Some(format!(
                "max_chain_depth {depth} with {} intermediates offered, not expressible (no depth option)",
                untrusted.len()
            )),
            _ => None,
        }
    };
    if let Some(reason) = skip {
        return Case {
            id,
            description,
            expect_success,
            plan: Plan::Skip(reason),
        };
    }

    let kind = v["validation_kind"].as_str().unwrap_or("?");
    let (mut purpose, name, name_note) = match kind {
        "SERVER" => match &v["expected_peer_name"] {
            Value::Null => ("server", None, None),
            n => match peer_name(n) {
                Ok(n) => ("server", Some(n), None),
                Err(note) => ("server", None, Some(note)),
            },
        },
        "CLIENT" => {
            let names = match &v["expected_peer_names"] {
                Value::Array(a) => a.clone(),
                _ => Vec::new(),
            };
            let usable: Vec<Result<String, String>> = names.iter().map(peer_name).collect();
            match usable.iter().find_map(|n| n.as_ref().ok()) {
                Some(n) => ("client", Some(n.clone()), None),
                None => ("client", None, usable.into_iter().find_map(|n| n.err())),
            }
        }
        other => panic!("{id}: unknown validation_kind {other:?}"),
    };
    let ekus = strings(v, "extended_key_usage", &id);
    if !ekus.is_empty() {
        purpose = if ekus.iter().any(|e| e == "serverAuth") {
            "server"
        } else if ekus.iter().any(|e| e == "clientAuth") {
            "client"
        } else {
            "any"
        };
    }
    let leaf = v["peer_certificate"]
        .as_str()
        .unwrap_or_else(|| panic!("{id}: no peer_certificate"))
        .to_string();
    let at = v["validation_time"].as_str().map(str::to_string);
    Case {
        id: id.clone(),
        description,
        expect_success,
        plan: Plan::Run(Invocation {
            trusted: strings(v, "trusted_certs", &id),
            untrusted,
            leaf,
            crls: strings(v, "crls", &id),
            at,
            purpose,
            name,
            name_note,
        }),
    }
}

fn pem_file(dir: &Path, file: &str, blocks: &[String]) -> PathBuf {
    let mut text = String::new();
    for b in blocks {
        text.push_str(b);
        if !b.ends_with('\n') {
            text.push('\n');
        }
    }
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write PEM file");
    path
}

fn run(bin: &Path, inv: &Invocation) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(bin);
    cmd.arg("verify").arg("--json");
    cmd.arg("--ca")
        .arg(pem_file(dir.path(), "roots.pem", &inv.trusted));
    if !inv.untrusted.is_empty() {
        cmd.arg("--untrusted")
            .arg(pem_file(dir.path(), "inter.pem", &inv.untrusted));
    }
    for (i, crl) in inv.crls.iter().enumerate() {
        cmd.arg("--crl").arg(pem_file(
            dir.path(),
            &format!("crl{i}.pem"),
            std::slice::from_ref(crl),
        ));
    }
    if !inv.crls.is_empty() {
        // Strict on purpose: no --allow-unknown-revocation (see conformance/README.md).
        cmd.args(["--crl-check", "leaf"]);
    }
    if let Some(at) = &inv.at {
        cmd.args(["--at", at]);
    }
    cmd.args(["--purpose", inv.purpose]);
    if let Some(name) = &inv.name {
        cmd.args(["--name", name]);
    }
    cmd.arg(pem_file(
        dir.path(),
        "leaf.pem",
        std::slice::from_ref(&inv.leaf),
    ));
    cmd.env_remove("MTLS_LOG");
    let out = cmd.output().expect("run mtls");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) => Outcome::Valid,
        Some(1) => {
            let json: Option<Value> = serde_json::from_str(&stdout).ok();
            match json {
                Some(j) => Outcome::Invalid {
                    code: j["code"].as_str().unwrap_or("?").to_string(),
                    reason: j["reason"].as_str().unwrap_or("?").to_string(),
                },
                // exit 1 without the JSON verdict: an error outside the verifier.
                None => Outcome::Invalid {
                    code: "?".into(),
                    reason: format!("no JSON verdict; stderr: {stderr}"),
                },
            }
        }
        Some(2) => Outcome::InputError(stderr),
        Some(c) => Outcome::Crashed(format!("exit {c}; stderr: {stderr}")),
        None => Outcome::Crashed(format!("killed by a signal; stderr: {stderr}")),
    }
}

/// `id -> reason` from the exceptions file, plus format problems.
fn read_exceptions(path: &Path) -> (BTreeMap<String, String>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut map = BTreeMap::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('\t') {
            Some((id, reason)) if !id.trim().is_empty() && !reason.trim().is_empty() => {
                if map
                    .insert(id.trim().to_string(), reason.trim().to_string())
                    .is_some()
                {
                    problems.push(format!("line {n}: {} is listed twice", id.trim()));
                }
            }
            _ => problems.push(format!(
                "line {n}: expected `<case id><TAB><reason>`, got {line:?}"
            )),
        }
    }
    (map, problems)
}

fn first_sentence(s: &str) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let end = flat.find(". ").map(|i| i + 1).unwrap_or(flat.len());
    flat.chars().take(end.min(160)).collect()
}

#[test]
fn x509_limbo() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_mtls"));
    let data_path = conformance_path(DATA);
    let data: Value = serde_json::from_slice(
        &std::fs::read(&data_path).unwrap_or_else(|e| panic!("{}: {e}", data_path.display())),
    )
    .expect("limbo JSON");
    assert_eq!(
        data["version"].as_u64(),
        Some(1),
        "unexpected limbo data version"
    );
    let cases: Vec<Case> = data["testcases"]
        .as_array()
        .expect("testcases")
        .iter()
        .map(parse_case)
        .collect();
    let ids: BTreeSet<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), cases.len(), "duplicate case ids in the data");

    // Run the cases in THREADS threads over interleaved slices of the list.
    let runnable: Vec<&Case> = cases
        .iter()
        .filter(|c| matches!(c.plan, Plan::Run(_)))
        .collect();
    let mut outcomes: BTreeMap<&str, Outcome> = BTreeMap::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let mine: Vec<&Case> = runnable.iter().skip(t).step_by(THREADS).copied().collect();
                let bin = &bin;
                s.spawn(move || {
                    mine.into_iter()
                        .map(|c| match &c.plan {
                            Plan::Run(inv) => (c.id.as_str(), run(bin, inv)),
                            Plan::Skip(_) => unreachable!(),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            outcomes.extend(h.join().expect("worker thread panicked"));
        }
    });

    let (exceptions, mut problems) = read_exceptions(&conformance_path(EXCEPTIONS));
    let verbose = std::env::var_os("LIMBO_VERBOSE").is_some();
    let (mut pass, mut known, mut input_errors) = (0, 0, 0);
    let mut skipped = Vec::new();
    let mut no_name = Vec::new();
    let mut new = Vec::new();
    let mut stale = Vec::new();
    for case in &cases {
        let expected = if case.expect_success {
            "SUCCESS"
        } else {
            "FAILURE"
        };
        let inv = match &case.plan {
            Plan::Skip(reason) => {
                skipped.push(format!("{}: {reason}", case.id));
                if exceptions.contains_key(&case.id) {
                    problems.push(format!(
                        "{} is skipped but listed in the exceptions file",
                        case.id
                    ));
                }
                continue;
            }
            Plan::Run(inv) => inv,
        };
        if let Some(note) = &inv.name_note {
            no_name.push(format!("{}: {note}", case.id));
        }
        let outcome = &outcomes[case.id.as_str()];
        if matches!(outcome, Outcome::InputError(_)) {
            input_errors += 1;
        }
        let ok = outcome.matches(case.expect_success);
        if verbose {
            let tag = match (ok, exceptions.contains_key(&case.id)) {
                (true, false) => "pass",
                (true, true) => "STALE",
                (false, true) => "known",
                (false, false) => "NEW",
            };
            eprintln!("  {tag:5} {}: expected {expected}, {outcome}", case.id);
        }
        match (ok, exceptions.get(&case.id)) {
            (true, None) => pass += 1,
            (true, Some(reason)) => stale.push(format!(
                "{}: now matches expected {expected} ({outcome}); delete its line from \
                 conformance/limbo-exceptions.txt (was: {reason})",
                case.id
            )),
            (false, Some(_)) => known += 1,
            (false, None) => new.push(format!(
                "{}: expected {expected}, got {outcome}\n      about: {}\n      to accept it, add to conformance/limbo-exceptions.txt: {}<TAB><reason>",
                case.id,
                first_sentence(&case.description),
                case.id
            )),
        }
    }
    for id in exceptions.keys() {
        if !ids.contains(id.as_str()) {
            problems.push(format!(
                "{id} is in the exceptions file but not in the data set; delete its line"
            ));
        }
    }

    eprintln!(
        "limbo: {} cases, {pass} pass, {known} known exceptions, {} skipped, {} new divergences, \
         {} stale exceptions ({input_errors} input-error)",
        cases.len(),
        skipped.len(),
        new.len(),
        stale.len()
    );
    for s in &skipped {
        eprintln!("  skipped {s}");
    }
    for n in &no_name {
        eprintln!("  no name check {n}");
    }
    for d in &new {
        eprintln!("  NEW DIVERGENCE {d}");
    }
    for s in &stale {
        eprintln!("  STALE EXCEPTION {s}");
    }
    for p in &problems {
        eprintln!("  EXCEPTIONS FILE {p}");
    }
    assert!(
        new.is_empty() && stale.is_empty() && problems.is_empty(),
        "limbo: {} new divergence(s), {} stale exception(s), {} exceptions-file problem(s); see above \
         (run with --nocapture)",
        new.len(),
        stale.len(),
        problems.len()
    );
}
