//! `mtls monitor`: its `/metrics` page, parsed by the Prometheus project's parser, carries
//! expiry and renewal state of certificate files (an overdue one flagged, a fresh one not),
//! CRL freshness and the inventory's expiring certificates; the shipped alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), and every monitor
//! metric they use exists on the page.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use mtls_pki::{pem_io, Profile};
use time::OffsetDateTime;

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/prometheus");

struct Monitor(std::process::Child, String);

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(env: &Env, args: &[&str]) -> Monitor {
    let mut child = Command::new(common::gw::mtls_bin())
        .args(["--pki", &env.p("pki"), "monitor", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let url = loop {
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        if let Some(u) = line.strip_prefix("mtls monitor: metrics on ") {
            break u.trim().to_string();
        }
    };
    Monitor(child, url)
}

fn value(page: &str, prefix: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_monitor_exports_expiry_renewal_state_crl_freshness_and_the_inventory() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "client", "fresh"]).ok();
    env.mtls(&["issue", "client", "week", "--days", "5"]).ok();
    env.mtls(&["crl"]).ok();
    // A certificate whose renewal point (day 60 of 90) passed 20 days ago.
    let pki = mtls_test_util::TestPki::new("monitor");
    let now = OffsetDateTime::now_utc();
    let late = pki.leaf_at(
        Profile::Client,
        "late",
        &[],
        now - time::Duration::days(80),
        time::Duration::days(90),
    );
    std::fs::create_dir(env.path("watched")).unwrap();
    env.write(
        "watched/late.crt",
        pem_io::encode("CERTIFICATE", &late.cert.der).as_bytes(),
    );
    // What a renewal daemon records next to a certificate it renews.
    let record = mtls_client::renewal::RenewalRecord {
        last_success: Some(now.unix_timestamp() - 3600),
        last_failure: Some(now.unix_timestamp() - 60),
        last_error: Some("the CA is unreachable".into()),
        schedule: None,
        obtained: None,
        hook_pending: false,
    };
    env.write(
        "watched/late.crt.renewal.json",
        serde_json::to_string(&record).unwrap().as_bytes(),
    );
    // Day 40 of 90: not due at the default threshold (day 60), but its daemon renews 70 days
    // before the end (day 20) and said so: overdue since day 29.
    let early_start = now - time::Duration::days(40);
    let early = pki.leaf_at(
        Profile::Client,
        "early",
        &[],
        early_start,
        time::Duration::days(90),
    );
    let early_end = early_start + time::Duration::days(90);
    // The same, with a plan the daemon made for another certificate: the default applies.
    let replaced = pki.leaf_at(
        Profile::Client,
        "replaced",
        &[],
        early_start,
        time::Duration::days(90),
    );
    for (name, leaf, plan_for) in [
        ("early", &early, early_end),
        ("replaced", &replaced, early_end - time::Duration::days(1)),
    ] {
        env.write(
            &format!("watched/{name}.crt"),
            pem_io::encode("CERTIFICATE", &leaf.cert.der).as_bytes(),
        );
        let record = mtls_client::renewal::RenewalRecord {
            schedule: Some(mtls_client::renewal::Schedule {
                not_after: plan_for.unix_timestamp(),
                renew_at: (early_start + time::Duration::days(20)).unix_timestamp(),
            }),
            ..Default::default()
        };
        env.write(
            &format!("watched/{name}.crt.renewal.json"),
            serde_json::to_string(&record).unwrap().as_bytes(),
        );
    }
    let m = start(
        &env,
        &[
            &env.p("pki/issued"),
            &env.p("watched"),
            &env.p("pki/crl.pem"),
            "--inventory",
        ],
    );
    // The inventory is read in the background: wait (bounded) for its first reading.
    let start = Instant::now();
    let page = loop {
        let (status, page) = common::ca::curl(&[&m.1]);
        assert_eq!(status, 200);
        if page.contains("mtls_inventory_expiring{") {
            break page;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{page}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let families = common::assert_prometheus_text(&page);
    for f in [
        "mtls_cert_not_after_seconds gauge",
        "mtls_cert_not_before_seconds gauge",
        "mtls_cert_renewal_due_seconds gauge",
        "mtls_cert_renewal_overdue gauge",
        "mtls_crl_next_update_seconds gauge",
        "mtls_crl_stale gauge",
        "mtls_inventory_expiring gauge",
        "mtls_inventory_certificates gauge",
        "mtls_inventory_read_seconds gauge",
        "mtls_cert_renewal_last_success_seconds gauge",
        "mtls_cert_renewal_last_failure_seconds gauge",
    ] {
        assert!(
            families.contains(&f.to_string()),
            "{f}: {families:?}\n{page}"
        );
    }
    let late_file = env.p("watched/late.crt");
    let fresh_file = env.p("pki/issued/fresh.crt");
    assert_eq!(
        value(
            &page,
            &format!("mtls_cert_renewal_last_failure_seconds{{file=\"{late_file}\"")
        ),
        Some((now.unix_timestamp() - 60) as f64),
        "{page}"
    );
    assert_eq!(
        value(
            &page,
            &format!("mtls_cert_renewal_last_success_seconds{{file=\"{late_file}\"")
        ),
        Some((now.unix_timestamp() - 3600) as f64),
        "{page}"
    );
    assert_eq!(
        value(
            &page,
            &format!("mtls_cert_renewal_overdue{{file=\"{late_file}\"")
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        value(
            &page,
            &format!("mtls_cert_renewal_overdue{{file=\"{fresh_file}\"")
        ),
        Some(0.0),
        "{page}"
    );
    for (name, overdue) in [("early", 1.0), ("replaced", 0.0)] {
        let file = env.p(&format!("watched/{name}.crt"));
        assert_eq!(
            value(
                &page,
                &format!("mtls_cert_renewal_overdue{{file=\"{file}\"")
            ),
            Some(overdue),
            "{name}: {page}"
        );
    }
    let not_after = value(
        &page,
        &format!("mtls_cert_not_after_seconds{{file=\"{fresh_file}\""),
    )
    .unwrap();
    let expected = (now + time::Duration::days(90)).unix_timestamp() as f64;
    assert!(
        (not_after - expected).abs() < 600.0,
        "{not_after} vs {expected}"
    );
    // The chain file of the same certificate is not reported twice (only read, and found
    // readable).
    assert!(
        !page
            .lines()
            .any(|l| l.starts_with("mtls_cert_") && l.contains("fresh.chain.pem")),
        "{page}"
    );
    let chain_file = env.p("pki/issued/fresh.chain.pem");
    assert_eq!(
        value(
            &page,
            &format!("mtls_watched_file_error{{file=\"{chain_file}\"}}")
        ),
        Some(0.0),
        "{page}"
    );
    assert_eq!(value(&page, "mtls_crl_stale{"), Some(0.0), "{page}");
    assert_eq!(
        value(&page, "mtls_inventory_expiring{within=\"7d\"}"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        value(&page, "mtls_inventory_expiring{within=\"30d\"}"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        value(&page, "mtls_inventory_certificates{status=\"valid\"}"),
        Some(2.0),
        "{page}"
    );

    // The alert rules use these families, and promtool accepts them and their unit tests.
    let rules = std::fs::read_to_string(format!("{RULES}/mtls-alerts.yml")).unwrap();
    let mut names: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            w.starts_with("mtls_cert_")
                || w.starts_with("mtls_crl_")
                || w.starts_with("mtls_inventory_")
                || w.starts_with("mtls_watched_")
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(!names.is_empty());
    for n in names {
        assert!(
            families.iter().any(|f| f.split(' ').next() == Some(n)),
            "the rules use {n}, which the monitor does not export"
        );
    }
    if Command::new("promtool").arg("--version").output().is_err() {
        println!("skipped promtool: not installed (Debian's prometheus package has it)");
        return;
    }
    for args in [
        ["check", "rules", "mtls-alerts.yml"],
        ["test", "rules", "mtls-alerts.test.yml"],
    ] {
        let o = Command::new("promtool")
            .args(args)
            .current_dir(RULES)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Runs `mtls monitor` with `args` and returns its exit status and standard error once it
/// stops (a monitor that starts anyway serves until killed: bounded at 20 s, then a failure).
fn monitor_refusing(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(common::gw::mtls_bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the monitor started with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

#[test]
fn the_monitor_needs_something_to_watch() {
    let env = Env::new();
    env.mtls(&["monitor", "--listen", "127.0.0.1:0"])
        .fails(2, "--inventory");
    // A path that does not exist is refused at start, not watched as nothing.
    let pki = env.p("pki");
    let nope = env.p("nope.crt");
    let args: &[&str] = &["--pki", &pki, "monitor", "--listen", "127.0.0.1:0", &nope];
    let (status, stderr) = monitor_refusing(args);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nope.crt: no such file"), "{stderr}");
    // Nor a mistyped inventory: the monitor reads one, it creates none (an empty new one
    // would report nothing expiring, for ever).
    env.mtls(&["ca", "init"]).ok();
    let typo = env.p("pki/inventroy.db");
    let args: &[&str] = &[
        "--pki",
        &pki,
        "monitor",
        "--listen",
        "127.0.0.1:0",
        "--inventory",
        "--database",
        &typo,
    ];
    let (status, stderr) = monitor_refusing(args);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no inventory there"), "{stderr}");
    assert!(
        !std::path::Path::new(&typo).exists(),
        "the monitor created {typo}"
    );
}

/// A file the monitor cannot read or parse is reported as `mtls_watched_file_error 1` (its
/// other series are missing); readable ones as 0. DER certificates and CRLs are read whatever
/// their name; a key in a watched directory is passed over.
#[test]
fn unreadable_files_are_reported_and_der_files_read() {
    let env = Env::new();
    let pki = mtls_test_util::TestPki::new("monitor-der");
    let now = OffsetDateTime::now_utc();
    let leaf = pki.leaf_at(Profile::Client, "der", &[], now, time::Duration::days(90));
    let crl =
        mtls_pki::revocation::build_crl(&pki.intermediate, 1, now, time::Duration::days(7), &[])
            .unwrap();
    std::fs::create_dir(env.path("w")).unwrap();
    env.write("w/leaf.der", &leaf.cert.der);
    env.write("w/intermediate.crl", crl.as_ref());
    env.write(
        "w/good.pem",
        pem_io::encode("CERTIFICATE", &leaf.cert.der).as_bytes(),
    );
    let der = &leaf.cert.der;
    env.write(
        "w/corrupt.crt",
        pem_io::encode("CERTIFICATE", &der[..der.len() - 20]).as_bytes(),
    );
    env.write("w/app.key.pem", leaf.key.to_pem().as_bytes());
    // A FIFO named like a certificate would block every scrape: an error, not a read.
    let fifo = std::process::Command::new("mkfifo")
        .arg(env.path("w/pipe.pem"))
        .status()
        .unwrap();
    assert!(fifo.success());
    let named = env.write("named.crt", &crl.as_ref()[..40]);
    let m = start(&env, &[&env.p("w"), named.to_str().unwrap()]);
    let (status, page) = common::ca::curl(&[&m.1]);
    assert_eq!(status, 200);
    let families = common::assert_prometheus_text(&page);
    assert!(
        families.contains(&"mtls_watched_file_error gauge".to_string()),
        "{families:?}"
    );
    let error = |f: &str| {
        value(
            &page,
            &format!("mtls_watched_file_error{{file=\"{}\"}}", env.p(f)),
        )
    };
    assert_eq!(error("w/corrupt.crt"), Some(1.0), "{page}");
    assert_eq!(error("named.crt"), Some(1.0), "{page}");
    assert_eq!(error("w/leaf.der"), Some(0.0), "{page}");
    assert_eq!(error("w/intermediate.crl"), Some(0.0), "{page}");
    assert_eq!(error("w/good.pem"), Some(0.0), "{page}");
    assert_eq!(error("w/pipe.pem"), Some(1.0), "{page}");
    assert!(!page.contains("app.key.pem"), "{page}");
    let corrupt = env.p("w/corrupt.crt");
    assert!(
        !page.contains(&format!("mtls_cert_not_after_seconds{{file=\"{corrupt}\"")),
        "{page}"
    );
    let der_file = env.p("w/leaf.der");
    let crl_file = env.p("w/intermediate.crl");
    assert!(
        value(
            &page,
            &format!("mtls_cert_not_after_seconds{{file=\"{der_file}\"")
        )
        .is_some(),
        "{page}"
    );
    assert_eq!(
        value(&page, &format!("mtls_crl_stale{{file=\"{crl_file}\"")),
        Some(0.0),
        "{page}"
    );
    // A watched file that goes away is an error, not a vanished series.
    std::fs::remove_file(env.path("w/good.pem")).unwrap();
    std::fs::remove_file(&named).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let (_, page) = common::ca::curl(&[&m.1]);
    let error = |f: &str| {
        value(
            &page,
            &format!("mtls_watched_file_error{{file=\"{}\"}}", env.p(f)),
        )
    };
    assert_eq!(error("named.crt"), Some(1.0), "{page}");
    // A file gone from a watched directory is no longer watched.
    assert_eq!(error("w/good.pem"), None, "{page}");
}

/// `mtls monitor --help` and `mtls explain --help` each describe their own command.
#[test]
fn monitor_and_explain_help_describe_their_own_command() {
    let env = Env::new();
    let monitor = env.mtls(&["monitor", "--help"]).ok().stdout;
    assert!(
        monitor.starts_with("Export certificate expiry"),
        "{monitor}"
    );
    let explain = env.mtls(&["explain", "--help"]).ok().stdout;
    assert!(explain.starts_with("Why a client is"), "{explain}");
    assert!(!explain.contains("Prometheus"), "{explain}");
}
