//! Shared helpers for the CLI tests: a temporary PKI directory and command runners.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod ca;
pub mod conn;
pub mod gw;
pub mod https;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Waits (at most 15 s) for a line of `lines` (a child's output, collected as it comes) that
/// holds every one of `parts`, and returns it.
pub fn wait_for_line(
    lines: &std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    parts: &[&str],
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let found = lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .cloned();
        if let Some(line) = found {
            return line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line with {parts:?} in {:?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Parses a `/metrics` page with the Prometheus project's own Python parser
/// (`prometheus_client.parser`), which rejects what Prometheus would (a `# HELP` line with
/// labels, a bad sample line); returns the family names it found.
#[track_caller]
pub fn assert_prometheus_text(page: &str) -> Vec<String> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nfor f in p(sys.stdin.read()): print(f.name, f.type)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the Prometheus parser (pip install prometheus-client) refused the page: {}\n{page}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

pub struct Env {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
    #[track_caller]
    pub fn fails(self, code: i32, needle: &str) -> Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let all = format!("{}{}", self.stdout, self.stderr);
        assert!(
            all.contains(needle),
            "expected {needle:?} in output\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }
}

impl Env {
    pub fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn pki(&self) -> PathBuf {
        self.path("pki")
    }
    pub fn p(&self, rel: &str) -> String {
        self.path(rel).to_string_lossy().into_owned()
    }
    /// Runs `mtls --pki <tmp>/pki ARGS` in the temp dir with a clean passphrase environment.
    pub fn mtls(&self, args: &[&str]) -> Run {
        self.mtls_env(args, &[])
    }
    /// `mtls --pki <tmp>/pki ARGS`, in the temp dir, with a clean passphrase environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(gw::mtls_bin());
        c.current_dir(self.dir.path())
            .arg("--pki")
            .arg(self.pki())
            .args(args)
            .env_remove("MTLS_PASSPHRASE")
            .env_remove("MTLS_CA_PASSPHRASE")
            .env_remove("MTLS_P12_PASSWORD")
            .env_remove("MTLS_TOKEN")
            .env_remove("MTLS_PKI_DIR");
        c
    }
    pub fn mtls_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.command(args);
        for (k, v) in env {
            c.env(k, v);
        }
        Run::from(c.output().unwrap())
    }
    /// [`Env::mtls`] with `input` on standard input (a pipe).
    pub fn mtls_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        Run::from(child.wait_with_output().unwrap())
    }
    /// [`Env::mtls`] with standard output a pipe nobody reads (closed before anything is
    /// written: `mtls … | head -0`).
    pub fn mtls_stdout_closed(&self, args: &[&str]) -> Run {
        let mut child = self
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        Run::from(child.wait_with_output().unwrap())
    }
    pub fn openssl(&self, args: &[&str]) -> Run {
        Run::from(
            Command::new("openssl")
                .current_dir(self.dir.path())
                .args(args)
                .output()
                .expect("openssl must be installed"),
        )
    }
    pub fn write(&self, rel: &str, data: &[u8]) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, data).unwrap();
        p
    }
    /// Writes an owner-only file (passphrases: group- or world-readable ones are refused).
    pub fn write_secret(&self, rel: &str, data: &[u8]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.write(rel, data);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }
    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path(rel)).unwrap()
    }
    /// Files under `dir`, recursively, relative names sorted (to prove nothing was written).
    pub fn tree(&self) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let p = e.path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        let mut v = Vec::new();
        walk(self.dir.path(), self.dir.path(), &mut v);
        v.retain(|f| !f.contains("inventory.db-")); // SQLite WAL/SHM side files
        v.sort();
        v
    }
    pub fn inventory_count(&self) -> usize {
        let r = self.mtls(&["list", "--json"]).ok();
        serde_json::from_str::<serde_json::Value>(&r.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    }
}
