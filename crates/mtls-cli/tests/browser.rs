//! Browsers: `mtls export pkcs12` files imported into an NSS database (`certutil`, `pk12util`,
//! as Firefox and Chrome on Linux keep them), then headless Chromium fetching `/api/secure`
//! through `mtls gateway` with that identity, chosen by the `AutoSelectCertificateForUrls`
//! policy so no dialog is needed.
//!
//! `scripts/test.sh` installs Debian's `chromium` and `libnss3-tools`. Where they are missing,
//! the tests print `skipped: …` and pass; where the policy directory
//! (`/etc/chromium/policies/managed`) cannot be written (not root), the Chromium part is
//! skipped the same way after the NSS imports are checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::gw::{trusting_args, Gateway, Upstream};
use common::Env;

const P12_PASSWORD: &str = "correct horse battery staple";
const POLICY_DIR: &str = "/etc/chromium/policies/managed";
/// The longest any one Chromium run may take (a pending certificate dialog never ends).
const CHROMIUM_LIMIT: Duration = Duration::from_secs(60);
/// The longest certutil or pk12util may take.
const NSS_LIMIT: Duration = Duration::from_secs(30);

/// `Some(reason)` when a tool these tests drive is not installed.
fn missing_tools(tools: &[&str]) -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not installed (Debian: apt-get install chromium libnss3-tools; scripts/test.sh does it)",
            missing.join(", ")
        )
    })
}

/// What a bounded run produced; `status` is `None` when it was killed at the time limit.
struct Bounded {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Bounded {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

impl std::fmt::Display for Bounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Chromium logs a D-Bus complaint per service it cannot reach: leave those out.
        let stderr: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.contains("dbus"))
            .collect();
        let tail = &stderr[stderr.len().saturating_sub(30)..];
        write!(
            f,
            "status: {}\nstdout:\n{}\nstderr (last lines):\n{}",
            self.status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "killed at the time limit".into()),
            self.stdout,
            tail.join("\n")
        )
    }
}

/// Runs `cmd` in its own process group for at most `limit`; at the limit the whole group is
/// killed (Chromium's zygotes, renderers and crash handler with it).
fn run_bounded(cmd: &mut Command, limit: Duration) -> Bounded {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let reader = |mut r: Box<dyn Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            let _ = tx.send(v);
        });
        rx
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            // The child is not reaped yet, so its id is still this group's.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // A process that kept the pipes open must not hold the test: wait a little, then go on.
    let text = |rx: mpsc::Receiver<Vec<u8>>| {
        String::from_utf8_lossy(&rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default())
            .into_owned()
    };
    Bounded {
        status,
        stdout: text(out),
        stderr: text(err),
    }
}

/// A PKI made with the real binary: CA, `localhost` server, and the client identities
/// exported as PKCS#12 files.
struct Pki {
    env: Env,
    root: PathBuf,
    issuer_cn: String,
    password_file: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let env = Env::new();
        env.mtls(&["ca", "init"]).ok();
        env.mtls(&["issue", "server", "localhost", "127.0.0.1"])
            .ok();
        let password_file = env.write_secret("p12.pass", format!("{P12_PASSWORD}\n").as_bytes());
        let root = env.pki().join("root.crt");
        env.mtls(&["issue", "client", "client-app"]).ok();
        let leaf = std::fs::read(env.pki().join("issued/client-app.crt")).unwrap();
        let der = mtls_pki::pem_io::certificates(&leaf).unwrap().remove(0);
        let cert = mtls_pki::pem_io::parse_certificate(&der).unwrap();
        let issuer_cn = cert
            .issuer()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap()
            .to_string();
        Pki {
            env,
            root,
            issuer_cn,
            password_file,
        }
    }

    /// Issues `name` (unless done) and exports it with `extra` flags; returns the .p12 path.
    fn export(&self, name: &str, file: &str, extra: &[&str]) -> PathBuf {
        let issued = self.env.pki().join("issued");
        if !issued.join(format!("{name}.crt")).exists() {
            self.env.mtls(&["issue", "client", name]).ok();
        }
        let s = |p: PathBuf| p.to_string_lossy().into_owned();
        let cert = s(issued.join(format!("{name}.chain.pem")));
        let key = s(issued.join(format!("{name}.key")));
        let out = self.env.path(file);
        let (out_s, password) = (s(out.clone()), s(self.password_file.clone()));
        let mut args = vec![
            "export",
            "pkcs12",
            "--cert",
            &cert,
            "--key",
            &key,
            "--name",
            name,
            "--out",
            &out_s,
            "--password-file",
            &password,
        ];
        args.extend_from_slice(extra);
        let r = self.env.mtls(&args).ok();
        let algorithms = if extra.contains(&"--compat") {
            "3DES, HMAC-SHA1"
        } else {
            "AES-256, HMAC-SHA256"
        };
        assert!(r.stdout.contains(algorithms), "{}", r.stdout);
        out
    }

    /// A home directory with a new NSS database (`~/.pki/nssdb`, where Chromium looks) that
    /// trusts the mtls root for TLS servers.
    fn nss_home(&self, name: &str) -> NssHome {
        let home = self.env.path(name);
        let db = home.join(".pki/nssdb");
        std::fs::create_dir_all(&db).unwrap();
        let h = NssHome { home, db };
        let r = h.certutil(&["-N", "--empty-password"]);
        assert!(r.ok(), "certutil -N: {r}");
        let root = self.root.to_string_lossy().into_owned();
        let r = h.certutil(&["-A", "-n", "mtls root", "-t", "C,,", "-i", &root]);
        assert!(r.ok(), "certutil -A: {r}");
        h
    }
}

struct NssHome {
    home: PathBuf,
    db: PathBuf,
}

impl NssHome {
    fn sql_db(&self) -> String {
        format!("sql:{}", self.db.display())
    }

    fn certutil(&self, args: &[&str]) -> Bounded {
        run_bounded(
            Command::new("certutil")
                .args(["-d", &self.sql_db()])
                .args(args),
            NSS_LIMIT,
        )
    }

    fn pk12util_import(&self, p12: &Path, password: &str) -> Bounded {
        run_bounded(
            Command::new("pk12util").arg("-i").arg(p12).args([
                "-d",
                &self.sql_db(),
                "-W",
                password,
            ]),
            NSS_LIMIT,
        )
    }

    /// Imports `p12` and checks that NSS now holds the identity: certificate with user trust
    /// (`u,u,u`, i.e. it has its private key) and the key itself.
    fn import_identity(&self, p12: &Path, cn: &str) {
        let r = self.pk12util_import(p12, P12_PASSWORD);
        assert!(
            r.ok() && r.stdout.contains("PKCS12 IMPORT SUCCESSFUL"),
            "pk12util -i {}: {r}",
            p12.display()
        );
        let list = self.certutil(&["-L"]);
        assert!(list.ok(), "{list}");
        let line = list
            .stdout
            .lines()
            .find(|l| l.contains(&format!("CN={cn}")))
            .unwrap_or_else(|| panic!("no CN={cn} in the NSS database:\n{list}"));
        assert!(line.trim_end().ends_with("u,u,u"), "{line}");
        let keys = self.certutil(&["-K"]);
        assert!(keys.ok() && keys.stdout.contains(cn), "certutil -K: {keys}");
    }
}

/// A managed Chromium policy file, removed when dropped.
struct PolicyFile(PathBuf);

impl PolicyFile {
    /// Auto-selects, for `https://localhost:PORT`, the certificate issued by `issuer_cn`.
    fn write(port: u16, issuer_cn: &str) -> std::io::Result<Self> {
        let pattern = serde_json::json!({
            "pattern": format!("https://localhost:{port}"),
            "filter": {"ISSUER": {"CN": issuer_cn}},
        });
        let policy = serde_json::json!({"AutoSelectCertificateForUrls": [pattern.to_string()]});
        std::fs::create_dir_all(POLICY_DIR)?;
        let path = Path::new(POLICY_DIR).join(format!(
            "mtls-browser-test-{}-{port}.json",
            std::process::id()
        ));
        std::fs::write(&path, policy.to_string())?;
        Ok(PolicyFile(path))
    }
}

impl Drop for PolicyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `chromium --headless=new --dump-dom URL` with `home` as HOME (so its NSS database is the
/// one Chromium uses) and a fresh profile; returns the DOM and the run.
fn chromium_dump(home: &NssHome, url: &str) -> Bounded {
    let profile = home.home.join("chromium-profile");
    run_bounded(
        Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                // The gateway listens on 127.0.0.1 only: skip trying ::1 first.
                "--host-resolver-rules=MAP localhost 127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--dump-dom", url])
            .env("HOME", &home.home)
            .env("XDG_CONFIG_HOME", home.home.join(".config"))
            .env("XDG_CACHE_HOME", home.home.join(".cache")),
        CHROMIUM_LIMIT,
    )
}

/// The JSON document Chromium shows in its `<pre>` for a JSON or text response.
fn page_json(run: &Bounded) -> serde_json::Value {
    assert!(run.ok(), "chromium: {run}");
    let dom = &run.stdout;
    let text = dom
        .find("<pre")
        .and_then(|at| {
            let rest = &dom[at..];
            let start = rest.find('>')? + 1;
            let end = rest.find("</pre>")?;
            Some(&rest[start..end])
        })
        .unwrap_or_else(|| panic!("no <pre> in the page: {run}"));
    let text = text
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The `x-forwarded-client-cert` header the upstream echoed in the page.
fn forwarded_cert(page: &serde_json::Value) -> String {
    page["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| Some((h.get(0)?.as_str()?, h.get(1)?.as_str()?)))
        .find(|(k, _)| *k == "x-forwarded-client-cert")
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| panic!("no x-forwarded-client-cert in {page}"))
}

#[test]
fn nss_imports_default_and_compat_pkcs12_and_refuses_a_wrong_password() {
    if let Some(why) = missing_tools(&["pk12util", "certutil"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let pki = Pki::new();
    for (name, extra) in [("default", &[][..]), ("compat", &["--compat"][..])] {
        let p12 = pki.export("client-app", &format!("client-app-{name}.p12"), extra);
        let home = pki.nss_home(&format!("home-{name}"));
        let wrong = home.pk12util_import(&p12, "not the password");
        assert!(!wrong.ok(), "{name}: a wrong password imported: {wrong}");
        assert!(
            wrong.stderr.contains("SEC_ERROR_BAD_PASSWORD"),
            "{name}: {wrong}"
        );
        let keys = home.certutil(&["-K"]);
        assert!(!keys.stdout.contains("client-app"), "{name}: {keys}");
        home.import_identity(&p12, "client-app");
    }
}

#[test]
fn chromium_gets_api_secure_with_imported_pkcs12_and_the_refusal_without() {
    if let Some(why) = missing_tools(&["chromium", "pk12util", "certutil"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let pki = Pki::new();
    let issued = pki.env.pki().join("issued");
    let up = Upstream::start();
    let mut args = trusting_args(
        &issued.join("localhost.chain.pem"),
        &issued.join("localhost.key"),
        &pki.env.pki().join("ca-chain.pem"),
        &up,
        &["--client-auth", "optional", "--allow-cn", "client-app"],
    );
    // trusting_args admits every client the CA trusts; this gateway admits client-app only.
    args.retain(|a| a != "--allow-any-trusted");
    let g = Gateway::start(&args);
    let url = g.url("/api/secure");

    // The identities first, so a machine without the policy still checks the NSS imports.
    let default_p12 = pki.export("client-app", "client-app.p12", &[]);
    let compat_p12 = pki.export("client-app", "client-app-compat.p12", &["--compat"]);
    let other_p12 = pki.export("other-app", "other-app.p12", &[]);
    let with_default = pki.nss_home("home-default");
    with_default.import_identity(&default_p12, "client-app");
    let with_compat = pki.nss_home("home-compat");
    with_compat.import_identity(&compat_p12, "client-app");
    let with_other = pki.nss_home("home-other");
    with_other.import_identity(&other_p12, "other-app");
    let without = pki.nss_home("home-none");

    let _policy = match PolicyFile::write(g.port(), &pki.issuer_cn) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "skipped: the Chromium part: cannot write the auto-selection policy in \
                 {POLICY_DIR} ({e}); it needs root"
            );
            return;
        }
    };

    // With the identity (either profile): the upstream's answer, with client-app's identity.
    for (what, home) in [("default", &with_default), ("compat", &with_compat)] {
        let before = up.count();
        let run = chromium_dump(home, &url);
        let page = page_json(&run);
        assert_eq!(page["path"], "/api/secure", "{what}: {run}");
        let xfcc = forwarded_cert(&page);
        assert!(xfcc.contains("Subject=\"CN=client-app\""), "{what}: {xfcc}");
        // (Chromium may also ask for /favicon.ico.)
        assert!(
            up.count() > before,
            "{what}: the upstream saw nothing: {run}"
        );
    }

    // Without an identity: the gateway's refusal, and nothing reaches the upstream.
    let before = up.count();
    let run = chromium_dump(&without, &url);
    let page = page_json(&run);
    assert_eq!(page["error"]["code"], "NO_CLIENT_CERT", "{run}");
    // A trusted identity the policy does not name: refused as well.
    let run = chromium_dump(&with_other, &url);
    let page = page_json(&run);
    assert_eq!(page["error"]["code"], "INVALID_CERT", "{run}");
    assert_eq!(up.count(), before, "a refused browser reached the upstream");
}
