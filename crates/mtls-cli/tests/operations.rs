//! The operator's material checked against reality: the systemd units in `deploy/systemd` pass
//! `systemd-analyze verify` (and stay under an exposure score of 2.0 in `systemd-analyze
//! security`), the binary works under `MemoryDenyWriteExecute=` (the kernel's PR_SET_MDWE, the
//! same refusal of writable+executable memory), and the key-compromise procedure of
//! `docs/operations.md` runs as written: afterwards the gateway refuses the compromised
//! certificate and accepts the re-issued one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::gw::{self, Gateway, Upstream};
use common::Env;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The units, and the name each is checked under (the template as an instance too).
const UNITS: &[(&str, &str)] = &[
    ("mtls-gateway.service", "mtls-gateway.service"),
    ("mtls-ca.service", "mtls-ca.service"),
    ("mtls-renew@.service", "mtls-renew@.service"),
    ("mtls-renew@.service", "mtls-renew@gateway.service"),
];

/// Lines every unit must have (the hardening the deployment promises).
const REQUIRED: &[&str] = &[
    "User=mtls",
    "Group=mtls",
    "NoNewPrivileges=yes",
    "CapabilityBoundingSet=",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces=yes",
    "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes",
    "SystemCallFilter=@system-service",
    "UMask=0077",
];

/// Warnings `systemd-analyze verify` may print that are not about the units: the `mtls` user
/// and group are created at installation (deploy/systemd/README.md), not on a test machine
/// (systemd 252 does not look them up; other versions may say they do not exist). Any other
/// line on stderr fails the test. `unit` is the unit's path, left out of the comparison (its
/// name contains "mtls" too).
fn unavoidable(line: &str, unit: &Path) -> bool {
    let name = unit.file_name().unwrap().to_str().unwrap();
    let l = line
        .replace(unit.to_str().unwrap(), "")
        .replace(name, "")
        .to_ascii_lowercase();
    l.contains("mtls")
        && (l.contains("user") || l.contains("group"))
        && ["not exist", "not found", "unknown user", "unknown group"]
            .iter()
            .any(|w| l.contains(w))
}

fn tool_help(tool: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(tool).args(args).output().ok()?;
    Some(format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    ))
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let Some(version) = tool_help("systemd-analyze", &["--version"]) else {
        println!("skipped: systemd-analyze is not installed");
        return;
    };
    println!("{}", version.lines().next().unwrap_or_default());
    let help = tool_help("systemd-analyze", &["--help"]).unwrap_or_default();
    let src = repo_root().join("deploy/systemd");
    let dir = tempfile::tempdir().unwrap();
    let bin = gw::mtls_bin();
    let bin = bin.to_str().unwrap();
    for (file, name) in UNITS {
        let text = std::fs::read_to_string(src.join(file)).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for want in REQUIRED {
            assert!(lines.contains(want), "{file}: `{want}` is missing");
        }
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("ExecStart=/usr/local/bin/mtls ")),
            "{file}: ExecStart must run /usr/local/bin/mtls"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("ReadOnlyPaths=")),
            "{file}: the configuration and key directories must be read-only"
        );
        // verify checks that the binary exists: point ExecStart at the one under test.
        let path = dir.path().join(name);
        std::fs::write(&path, text.replace("/usr/local/bin/mtls", bin)).unwrap();
    }
    for (_, name) in UNITS {
        let path = dir.path().join(name);
        let mut cmd = Command::new("systemd-analyze");
        cmd.arg("verify");
        if help.contains("--man") {
            cmd.arg("--man=no");
        }
        let o = cmd.arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        println!("systemd-analyze verify {name}: {}", o.status);
        assert!(
            o.status.success(),
            "systemd-analyze verify {name} failed: {stderr}"
        );
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !unavoidable(l, &path))
            .collect();
        assert!(
            warnings.is_empty(),
            "systemd-analyze verify {name} warned:\n{}",
            warnings.join("\n")
        );
    }
    if !help.contains("--offline") {
        println!("skipped: this systemd-analyze has no `security --offline`");
        return;
    }
    for (_, name) in UNITS.iter().filter(|(_, n)| !n.ends_with("@.service")) {
        let o = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(dir.path().join(name))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let score: f64 = out
            .lines()
            .find_map(|l| l.split_once("Overall exposure level for "))
            .and_then(|(_, rest)| rest.split_once(": "))
            .and_then(|(_, v)| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no exposure level for {name}: {out}{}",
                    String::from_utf8_lossy(&o.stderr)
                )
            });
        println!("systemd-analyze security --offline=yes {name}: exposure {score}");
        assert!(score <= 2.0, "{name}: exposure {score} > 2.0\n{out}");
    }
}

/// Whether the ELF file asks for an executable stack (PT_GNU_STACK with PF_X, or no
/// PT_GNU_STACK at all): such a binary does not start under MemoryDenyWriteExecute=.
fn wants_executable_stack(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "a 64-bit ELF file");
    assert_eq!(elf[5], 1, "a little-endian ELF file");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    const PT_GNU_STACK: u32 = 0x6474_e551;
    const PF_X: u32 = 1;
    match (0..phnum)
        .map(|i| phoff + i * phentsize)
        .find(|&p| u32_at(p) == PT_GNU_STACK)
    {
        Some(p) => u32_at(p + 4) & PF_X != 0,
        None => true,
    }
}

/// Runs its arguments with PR_SET_MDWE (PR_MDWE_REFUSE_EXEC_GAIN): writable+executable
/// mappings are refused, as under MemoryDenyWriteExecute=; inherited across execve. Exits 77
/// when the kernel cannot (before Linux 6.3), 3 when the refusal does not hold.
const MDWE: &str = r#"
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit(3)
except OSError:
    pass
os.execv(sys.argv[1], sys.argv[1:])
"#;

fn mdwe(env: &Env, args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.current_dir(env.dir.path())
        .arg("-c")
        .arg(MDWE)
        .arg(gw::mtls_bin())
        .args(args)
        .env_remove("MTLS_PASSPHRASE")
        .env_remove("MTLS_CA_PASSPHRASE")
        .env_remove("MTLS_PKI_DIR")
        .env_remove("MTLS_DATABASE");
    c
}

#[track_caller]
fn run_mdwe(env: &Env, args: &[&str]) -> String {
    let o = mdwe(env, args).output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "mtls {args:?} under MDWE: {}\n{out}{err}",
        o.status
    );
    format!("{out}{err}")
}

/// A long-running `mtls` under MDWE, killed on drop.
struct Wrapped(Child);

impl Drop for Wrapped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `mtls ARGS` under MDWE and waits (at most 20 s) for the stderr lines starting with
/// each of `prefixes`; returns what follows each prefix.
fn start_mdwe(env: &Env, args: &[&str], prefixes: &[&str]) -> (Wrapped, Vec<String>) {
    let mut child = mdwe(env, args)
        .env("MTLS_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let child = Wrapped(child);
    let mut found: Vec<Option<String>> = vec![None; prefixes.len()];
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while found.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "mtls {args:?} under MDWE: {seen:?}");
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                for (i, p) in prefixes.iter().enumerate() {
                    if let Some((_, rest)) = line.split_once(p) {
                        found[i] = Some(rest.trim().to_string());
                    }
                }
                seen.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("mtls {args:?} exited under MDWE: {seen:?}")
            }
        }
    }
    (child, found.into_iter().map(Option::unwrap).collect())
}

#[test]
fn the_binary_runs_under_memory_deny_write_execute() {
    let elf = std::fs::read(gw::mtls_bin()).unwrap();
    assert!(
        !wants_executable_stack(&elf),
        "the mtls binary asks for an executable stack: MemoryDenyWriteExecute= would stop it"
    );
    let env = Env::new();
    let probe = mdwe(&env, &["--version"]).output();
    match probe.as_ref().map(|o| o.status.code()) {
        Err(e) => {
            println!("skipped: python3 is needed to set PR_SET_MDWE ({e})");
            return;
        }
        Ok(Some(77)) => {
            println!("skipped: this kernel has no PR_SET_MDWE (Linux 6.3+)");
            return;
        }
        Ok(Some(3)) => panic!("PR_SET_MDWE did not refuse a writable+executable mapping"),
        Ok(_) => {}
    }
    let pki = env.p("pki");
    // Keys, certificates, CRLs and verification (aws-lc) under MDWE.
    run_mdwe(&env, &["--pki", &pki, "ca", "init"]);
    run_mdwe(
        &env,
        &["--pki", &pki, "issue", "server", "localhost", "127.0.0.1"],
    );
    run_mdwe(&env, &["--pki", &pki, "issue", "client", "client-app"]);
    run_mdwe(&env, &["--pki", &pki, "crl"]);
    let verified = run_mdwe(
        &env,
        &[
            "verify",
            "--ca",
            &env.p("pki/root.crt"),
            "--crl",
            &env.p("pki/crl.pem"),
            "--purpose",
            "client",
            &env.p("pki/issued/client-app.chain.pem"),
        ],
    );
    assert!(verified.contains(": OK"), "{verified}");

    // The gateway unit's process: handshakes and proxying under MDWE, and a client under MDWE.
    let up = Upstream::start();
    let upstream = format!("http://{}", up.addr);
    let (_gateway, found) = start_mdwe(
        &env,
        &[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            &env.p("pki/issued/localhost.chain.pem"),
            "--key",
            &env.p("pki/issued/localhost.key"),
            "--client-ca",
            &env.p("pki/ca-chain.pem"),
            "--crl",
            &env.p("pki/crl.pem"),
            "--upstream",
            &upstream,
            "--allow-cn",
            "client-app",
        ],
        &["mtls gateway: listening on "],
    );
    let url = format!("https://{}/api/secure", found[0]);
    let body = run_mdwe(
        &env,
        &[
            "request",
            &url,
            "--cert",
            &env.p("pki/issued/client-app.chain.pem"),
            "--key",
            &env.p("pki/issued/client-app.key"),
            "--ca",
            &env.p("pki/root.crt"),
            "--fail",
        ],
    );
    assert!(body.contains("/api/secure"), "{body}");
    assert_eq!(up.count(), 1);

    // The CA unit's and the renewal daemon's processes: enrollment and renewal under MDWE.
    let config = env.write(
        "ca.toml",
        b"listen = \"127.0.0.1:0\"\npki = \"pki\"\nserver_names = [\"127.0.0.1\"]\n",
    );
    let (_ca, found) = start_mdwe(
        &env,
        &["ca", "serve", "--config", config.to_str().unwrap()],
        &["mtls ca: listening on https://", "--ca-fingerprint`): "],
    );
    let ca_url = format!("https://{}", found[0]);
    let token = env
        .mtls(&["ca", "token", "--name", "app"])
        .ok()
        .stdout
        .trim()
        .to_string();
    let token_file = env.write("token", token.as_bytes());
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    run_mdwe(
        &env,
        &[
            "enroll",
            "--ca-url",
            &ca_url,
            "--ca-fingerprint",
            &found[1],
            "--token-file",
            &env.p("token"),
            "--out",
            &env.p("id"),
        ],
    );
    let before = env.read("id/cert.pem");
    let renewed = run_mdwe(
        &env,
        &[
            "renew",
            "--cert",
            &env.p("id/cert.pem"),
            "--key",
            &env.p("id/key.pem"),
            "--ca-url",
            &ca_url,
        ],
    );
    assert!(renewed.contains("renewed"), "{renewed}");
    assert_ne!(env.read("id/cert.pem"), before);
}

/// The fenced block after `<!-- test: compromise -->` under "## Responding to a key compromise".
fn documented_procedure() -> String {
    let doc = std::fs::read_to_string(repo_root().join("docs/operations.md")).unwrap();
    let (_, section) = doc
        .split_once("\n## Responding to a key compromise\n")
        .expect("docs/operations.md has a section \"Responding to a key compromise\"");
    let section = section.split("\n## ").next().unwrap();
    let (_, marked) = section
        .split_once("<!-- test: compromise -->\n```sh\n")
        .expect("the procedure is a ```sh block right after <!-- test: compromise -->");
    let (block, _) = marked.split_once("\n```").expect("the block is closed");
    block.to_string()
}

fn serial_of(env: &Env, cert: &str) -> String {
    let r = env.mtls(&["inspect", "--json", cert]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v[0]["serial"].as_str().unwrap().to_string()
}

/// Polls `f` (at most `limit`) until it holds.
fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn compromise_response_procedure_works_as_documented() {
    let block = documented_procedure();
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "localhost", "127.0.0.1"])
        .ok();
    env.mtls(&["issue", "client", "client-app"]).ok();
    env.mtls(&["crl"]).ok();
    // The attacker's copy of the compromised certificate and key.
    std::fs::create_dir(env.path("stolen")).unwrap();
    for f in ["client-app.chain.pem", "client-app.key"] {
        std::fs::copy(
            env.path(&format!("pki/issued/{f}")),
            env.path(&format!("stolen/{f}")),
        )
        .unwrap();
    }
    let old_serial = serial_of(&env, &env.p("pki/issued/client-app.crt"));

    let up = Upstream::start();
    let mut args = gw::trusting_args(
        &env.path("pki/issued/localhost.chain.pem"),
        &env.path("pki/issued/localhost.key"),
        &env.path("pki/ca-chain.pem"),
        &up,
        &["--crl", &env.p("pki/crl.pem"), "--allow-cn", "client-app"],
    );
    args.retain(|a| a != "--allow-any-trusted");
    let g = Gateway::start(&args);
    let root = env.path("pki/root.crt");
    let stolen = |g: &Gateway| {
        gw::status_as(
            g,
            &root,
            &env.path("stolen/client-app.chain.pem"),
            &env.path("stolen/client-app.key"),
        )
    };
    assert_eq!(stolen(&g), 200, "client-app works before the compromise");

    // The documented block, as written, with `mtls` on PATH.
    std::fs::create_dir(env.path("bin")).unwrap();
    std::os::unix::fs::symlink(gw::mtls_bin(), env.path("bin/mtls")).unwrap();
    let script = env.write("procedure.sh", block.as_bytes());
    let path = format!(
        "{}:{}",
        env.p("bin"),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::fs::File::create(env.path("procedure.out")).unwrap();
    let err = std::fs::File::create(env.path("procedure.err")).unwrap();
    let mut child = Command::new("bash")
        .arg(&script)
        .current_dir(env.dir.path())
        .env("PATH", path)
        .env("NAME", "client-app")
        .env(
            "GATEWAY_URL",
            format!("https://127.0.0.1:{}/api/secure", g.port()),
        )
        .env("PUBLISH_CRL", r#"cp "$PKI/crl.pem" published-crl.pem"#)
        .env_remove("GATEWAY_CA")
        .env_remove("ISSUE_ARGS")
        .env_remove("MTLS_PKI_DIR")
        .env_remove("MTLS_DATABASE")
        .env_remove("MTLS_PASSPHRASE")
        .env_remove("MTLS_CA_PASSPHRASE")
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the procedure did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = String::from_utf8_lossy(&env.read("procedure.out")).into_owned();
    let stderr = String::from_utf8_lossy(&env.read("procedure.err")).into_owned();
    println!("{stdout}{stderr}");
    assert!(
        status.success(),
        "the documented procedure failed ({status}):\n{stdout}\n{stderr}"
    );
    // Both gateway checks of the block ran.
    assert!(
        stdout.contains("gateway refuses the compromised certificate"),
        "{stdout}"
    );
    assert!(
        stdout.contains("gateway accepts the new certificate"),
        "{stdout}"
    );
    assert_eq!(
        env.read("published-crl.pem"),
        env.read("pki/crl.pem"),
        "PUBLISH_CRL ran after the new CRL was written"
    );

    // The compromised certificate is refused by the gateway (handshake refused: 0)…
    within(Duration::from_secs(15), "the gateway refuses it", || {
        stolen(&g) == 0
    });
    // …and the CA says why.
    env.mtls(&[
        "verify",
        "--ca",
        &env.p("pki/root.crt"),
        "--crl",
        &env.p("pki/crl.pem"),
        "--purpose",
        "client",
        &env.p("stolen/client-app.chain.pem"),
    ])
    .fails(1, "revoked");
    let revoked = env.mtls(&["list", "--revoked", "--json"]).ok();
    let revoked: serde_json::Value = serde_json::from_str(&revoked.stdout).unwrap();
    let entry = revoked
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["serial"] == old_serial.as_str())
        .unwrap_or_else(|| panic!("{old_serial} is not listed as revoked: {revoked}"));
    assert!(
        entry["revocation_reason"]
            .as_str()
            .is_some_and(|r| r.eq_ignore_ascii_case("keyCompromise")),
        "{entry}"
    );

    // The re-issued certificate: a new serial and key, accepted.
    let new_serial = serial_of(&env, &env.p("pki/issued/client-app.crt"));
    assert_ne!(new_serial, old_serial);
    assert_ne!(
        env.read("pki/issued/client-app.key"),
        env.read("stolen/client-app.key")
    );
    assert_eq!(
        gw::status_as(
            &g,
            &root,
            &env.path("pki/issued/client-app.chain.pem"),
            &env.path("pki/issued/client-app.key"),
        ),
        200
    );
    // The procedure removed its own copy of the compromised key.
    let kept = std::fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("compromised-client-app-")
        })
        .expect("the procedure keeps the compromised certificate aside");
    assert!(kept.path().join("client-app.crt").exists());
    assert!(!kept.path().join("client-app.key").exists());
}
