//! The README's shell commands run as written on a fresh PKI.
//!
//! Every command of every ```sh block of README.md is extracted at test time (`\` continuations
//! joined, trailing `# comments` dropped) and run, in README order, with `bash -c` in a fresh
//! temp directory, `mtls` on PATH being this build's binary and no `MTLS_*` variable inherited.
//! Each must exit 0. Servers (`mtls gateway`, `mtls ca serve`, `mtls renew --daemon`,
//! `mtls tunnel`) run in the background until the end, once they say they are up.
//!
//! What is not run literally is listed below, each with its reason: [`SKIPPED`] commands,
//! [`SUBSTITUTED`] placeholders, [`ENVIRONMENT`] variables and [`PREPARED`] files. Everything
//! else runs by default, and every entry must still match the README, so a new or changed
//! README command is run (or fails the test), never silently skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::ca::{curl, free_port};
use common::gw::Upstream;
use common::Env;

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");

/// A foreground command that takes longer than this fails the test.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// A background command that has not said it is up after this fails the test.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A README command that is not run.
struct Skip {
    /// Index of the ```sh block, counted from 0.
    block: usize,
    /// The command as extracted (continuations joined, comment dropped).
    command: &'static str,
    why: &'static str,
}

/// Each entry must match exactly one command of its block.
const SKIPPED: &[Skip] = &[
    Skip {
        block: 0,
        command: "cargo run --release --locked -p mtls-cli -- quickstart",
        why: "set-up: builds the release binary and serves the quickstart until stopped; \
              gateway_more.rs (quickstart_serves_and_its_printed_commands_work) runs the \
              quickstart and its printed commands",
    },
    Skip {
        block: 0,
        command: "bash scripts/test.sh",
        why: "set-up: installs the test peers and runs the whole suite, this test included",
    },
];

/// Where a substituted value comes from.
enum Value {
    /// Nothing: `to` is the whole replacement.
    None,
    /// A free 127.0.0.1 port, one per name, picked at the start.
    Port(&'static str),
    /// The address (`127.0.0.1:PORT`) of the echo upstream (`common::gw::Upstream`).
    Upstream,
    /// The serial of this certificate file, as `mtls inspect --json` gives it.
    Serial(&'static str),
    /// What the last README command starting with this printed on stdout, trimmed.
    StdoutOf(&'static str),
    /// The rest of the line on which the background command starting with this said it was up
    /// (its [`Daemon::ready`] line).
    ReadyLineOf(&'static str),
    /// A fresh PostgreSQL database when MTLS_TEST_POSTGRES_URL is set; else the line holding
    /// `from` is left out.
    Postgres,
}

/// A placeholder replaced before the command runs (or the file is written): `from`, where it
/// stands as a whole word, becomes `to` with `{}` replaced by the value. Every entry must be
/// used at least once.
struct Sub {
    /// `"sh"`: the ```sh commands; else the [`PREPARED`] file of that name.
    scope: &'static str,
    from: &'static str,
    to: &'static str,
    value: Value,
    why: &'static str,
}

const SH: &str = "sh";

const SUBSTITUTED: &[Sub] = &[
    Sub {
        scope: SH,
        from: "127.0.0.1:8443",
        to: "127.0.0.1:{}",
        value: Value::Port("gateway"),
        why: "a fixed port: a free one",
    },
    Sub {
        scope: SH,
        from: "127.0.0.1:8080",
        to: "{}",
        value: Value::Upstream,
        why: "the upstream the gateway fronts: the test's echo server",
    },
    Sub {
        scope: SH,
        from: "127.0.0.1:9090",
        to: "127.0.0.1:{}",
        value: Value::Port("gateway admin"),
        why: "a fixed port: a free one",
    },
    Sub {
        scope: SH,
        from: "5f3c…e1",
        to: "{}",
        value: Value::Serial("pki/issued/svc.crt"),
        why: "a serial, unknown in advance: that of the certificate `mtls sign` issued for \
              svc.csr (revoking client-app would fail the verify and gateway commands after it)",
    },
    Sub {
        scope: SH,
        from: "https://ca.example.com:9443",
        to: "https://localhost:{}",
        value: Value::Port("ca"),
        why: "a remote host: the `mtls ca serve` started above (ca.toml: listen, server_names)",
    },
    Sub {
        scope: SH,
        from: "--ca-fingerprint SHA256",
        to: "--ca-fingerprint {}",
        value: Value::ReadyLineOf("mtls ca serve"),
        why: "the root fingerprint, unknown in advance: as `mtls ca serve` printed it",
    },
    Sub {
        scope: SH,
        from: "--token-file token",
        to: "--token-file <(printf %s {})",
        value: Value::StdoutOf("mtls ca token"),
        why: "the token file, handed over from the CA host: a pipe carrying the token \
              `mtls ca token` printed",
    },
    Sub {
        scope: SH,
        from: "127.0.0.1:9300",
        to: "127.0.0.1:{}",
        value: Value::Port("renew metrics"),
        why: "a fixed port: a free one",
    },
    Sub {
        scope: SH,
        from: "127.0.0.1:9102",
        to: "127.0.0.1:{}",
        value: Value::Port("monitor"),
        why: "a fixed port: a free one",
    },
    Sub {
        scope: SH,
        from: "/media/offline/root.key",
        to: "pki/root.key",
        value: Value::None,
        why: "the root key's offline copy: in the test it is still where `mtls ca init` wrote it",
    },
    Sub {
        scope: "gateway.toml",
        from: "127.0.0.1:9090",
        to: "127.0.0.1:{}",
        value: Value::Port("gateway.toml admin"),
        why: "a fixed port: a free one (the gateway started from flags still has its own)",
    },
    Sub {
        scope: "gateway.toml",
        from: "0.0.0.0:8443",
        to: "127.0.0.1:{}",
        value: Value::Port("gateway.toml"),
        why: "all interfaces and a fixed port: loopback and a free one",
    },
    Sub {
        scope: "gateway.toml",
        from: "127.0.0.1:8080",
        to: "{}",
        value: Value::Upstream,
        why: "the upstream the gateway fronts: the test's echo server",
    },
    Sub {
        scope: "ca.toml",
        from: "0.0.0.0:9443",
        to: "127.0.0.1:{}",
        value: Value::Port("ca"),
        why: "all interfaces and a fixed port: loopback and a free one",
    },
    Sub {
        scope: "ca.toml",
        from: "0.0.0.0:9080",
        to: "127.0.0.1:{}",
        value: Value::Port("ca publish"),
        why: "all interfaces and a fixed port: loopback and a free one",
    },
    Sub {
        scope: "ca.toml",
        from: "http://ca.example.com:9080",
        to: "http://localhost:{}",
        value: Value::Port("ca publish"),
        why: "a remote host: the CA's own publish listener",
    },
    Sub {
        scope: "ca.toml",
        from: "[\"ca.example.com\"]",
        to: "[\"localhost\"]",
        value: Value::None,
        why: "a remote host: the CA is reached as localhost",
    },
    Sub {
        scope: "ca.toml",
        from: "postgres://mtls@db/mtls",
        to: "{}",
        value: Value::Postgres,
        why: "needs PostgreSQL: a fresh database of MTLS_TEST_POSTGRES_URL (scripts/pg.sh); \
              without it the line is left out and the CA uses its default, pki/inventory.db",
    },
];

/// A variable set for the README commands starting with `command` (`""`: all of them).
struct EnvVar {
    command: &'static str,
    var: &'static str,
    /// `None`: the fresh PostgreSQL database, and only when there is one.
    value: Option<&'static str>,
    why: &'static str,
}

/// Besides these, no `MTLS_*` variable of the test's environment reaches a command. Every entry
/// must be used (the PostgreSQL one when there is a database).
const ENVIRONMENT: &[EnvVar] = &[
    EnvVar {
        command: "mtls export pkcs12",
        var: "MTLS_P12_PASSWORD",
        value: Some("readme-test-p12-password"),
        why: "the command asks for the PKCS#12 password on a terminal, and the test has none",
    },
    EnvVar {
        command: "",
        var: "MTLS_DATABASE",
        value: None,
        why: "with PostgreSQL, every command shares the CA's inventory (the README: \"every \
              command takes the --database* options, so offline mtls issue/list/revoke/crl use \
              the shared inventory too\"), as `mtls ca token` must for `mtls ca serve`",
    },
];

/// Files README commands read that no README command writes: the test writes them from the
/// README's ```toml block whose first line is `# NAME`, with the [`SUBSTITUTED`] values.
const PREPARED: &[(&str, &str)] = &[
    (
        "gateway.toml",
        "read by `mtls gateway --config gateway.toml`",
    ),
    ("ca.toml", "read by `mtls ca serve --config ca.toml`"),
];

/// A README command that serves until stopped: started in the background, up once a stderr
/// line starts with `ready`, killed at the end.
struct Daemon {
    command: &'static str,
    /// Also required in the command (`""`: nothing more).
    with: &'static str,
    ready: &'static str,
}

const BACKGROUND: &[Daemon] = &[
    Daemon {
        command: "mtls gateway ",
        with: "",
        ready: "mtls gateway: listening on ",
    },
    Daemon {
        command: "mtls ca serve ",
        with: "",
        ready: "mtls ca: root fingerprint (for `mtls enroll --ca-fingerprint`): ",
    },
    Daemon {
        command: "mtls renew ",
        with: " --daemon",
        ready: "mtls renew: metrics on ",
    },
    Daemon {
        command: "mtls tunnel ",
        with: "",
        ready: "mtls tunnel: ",
    },
    Daemon {
        command: "mtls monitor ",
        with: "",
        ready: "mtls monitor: metrics on ",
    },
];

/// README commands whose documented result is a non-zero exit (a finding, a refusal), with why.
const EXPECTED_EXIT: &[(&str, i32, &str)] = &[
    (
        "mtls doctor pki ",
        3,
        "a fresh PKI's keys are unencrypted and the root key is online: warnings (exit 3)",
    ),
    (
        "mtls explain pki/issued/client-app.chain.pem ",
        1,
        "the README's gateway.toml lets only ops-admin into /admin: refused (exit 1)",
    ),
];

/// The commands of each ```sh block, in order: `\`-newline continuations joined, trailing
/// `# comments` (outside quotes) and blank lines dropped.
fn sh_blocks(readme: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    let mut pending = String::new();
    for (n, line) in readme.lines().enumerate() {
        let Some(commands) = current.as_mut() else {
            if line.trim_end() == "```sh" {
                current = Some(Vec::new());
            }
            continue;
        };
        if line.trim() == "```" {
            assert!(
                pending.is_empty(),
                "README.md:{n}: a `\\` continuation runs into the end of the block"
            );
            blocks.push(current.take().unwrap());
            continue;
        }
        pending.push_str(line);
        let (code, open_quote) = strip_comment(&pending);
        if let Some(head) = code.strip_suffix('\\') {
            // Bash drops the backslash and the newline, nothing else.
            pending = head.to_string();
            continue;
        }
        assert!(
            !open_quote,
            "README.md:{}: a quote left open: {pending}",
            n + 1
        );
        let code = code.trim().to_string();
        pending.clear();
        if !code.is_empty() {
            commands.push(code);
        }
    }
    assert!(current.is_none(), "README.md: an unterminated ```sh block");
    blocks
}

/// `line` without its trailing comment (a `#` starting a word outside quotes), trimmed at the
/// end, and whether a quote is still open at its end.
fn strip_comment(line: &str) -> (&str, bool) {
    let (mut single, mut double, mut escaped) = (false, false, false);
    let mut prev_blank = true;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
        } else if single {
            single = c != '\'';
        } else if c == '\\' {
            escaped = true;
        } else if double {
            double = c != '"';
        } else if c == '\'' {
            single = true;
        } else if c == '"' {
            double = true;
        } else if c == '#' && prev_blank {
            return (line[..i].trim_end(), false);
        }
        prev_blank = c.is_whitespace();
    }
    (line.trim_end(), single || double)
}

/// The ```toml block of `readme` whose first line is `# name` (then the end or a space).
fn toml_block(readme: &str, name: &str) -> String {
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim_end() != "```toml" {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let head = block.first().copied().unwrap_or_default();
        if head
            .strip_prefix("# ")
            .and_then(|h| h.strip_prefix(name))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
        {
            return block.join("\n") + "\n";
        }
    }
    panic!("README.md has no ```toml block starting `# {name}`")
}

/// Byte offsets where `from` stands in `text` as a whole word (no letter or digit either side).
fn word_matches(text: &str, from: &str) -> Vec<usize> {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    text.match_indices(from)
        .map(|(i, _)| i)
        .filter(|&i| {
            !word(text[..i].chars().next_back()) && !word(text[i + from.len()..].chars().next())
        })
        .collect()
}

/// A README command running in the background.
struct Background {
    command: String,
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout_file: PathBuf,
}

impl Background {
    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&self.stdout_file).unwrap_or_default(),
            self.stderr.lock().unwrap().join("\n")
        )
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The state of one run of the README.
struct Runner {
    env: Env,
    /// Holds the `mtls` symlink put first on PATH, and the commands' output files.
    bin: tempfile::TempDir,
    path: String,
    ports: HashMap<&'static str, u16>,
    upstream: Upstream,
    postgres: Option<String>,
    /// (README command, stdout) of every foreground command run, in order.
    outputs: Vec<(String, String)>,
    /// (README command, rest of its ready line) of every background command started.
    ready: Vec<(String, String)>,
    background: Vec<Background>,
    subs_used: Vec<usize>,
    env_used: Vec<usize>,
    runs: usize,
}

impl Runner {
    fn new() -> Runner {
        let env = Env::new();
        let bin = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mtls"), bin.path().join("mtls")).unwrap();
        let path = format!(
            "{}:{}",
            bin.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // Distinct free ports, one per name the substitutions use.
        let mut ports: HashMap<&'static str, u16> = HashMap::new();
        let mut taken = HashSet::new();
        for s in SUBSTITUTED {
            if let Value::Port(name) = s.value {
                if ports.contains_key(name) {
                    continue;
                }
                let port = (0..100)
                    .map(|_| free_port())
                    .find(|p| taken.insert(*p))
                    .expect("no distinct free port in 100 tries");
                ports.insert(name, port);
            }
        }
        let postgres =
            std::env::var_os("MTLS_TEST_POSTGRES_URL").map(|_| common::ca::fresh_pg_database());
        Runner {
            env,
            bin,
            path,
            ports,
            upstream: Upstream::start(),
            postgres,
            outputs: Vec::new(),
            ready: Vec::new(),
            background: Vec::new(),
            subs_used: vec![0; SUBSTITUTED.len()],
            env_used: vec![0; ENVIRONMENT.len()],
            runs: 0,
        }
    }

    fn work(&self) -> &Path {
        self.env.dir.path()
    }

    fn value(&self, v: &Value) -> Option<String> {
        Some(match v {
            Value::None => String::new(),
            Value::Port(name) => self.ports[name].to_string(),
            Value::Upstream => self.upstream.addr.to_string(),
            Value::Serial(file) => {
                let r = self.env.mtls(&["inspect", "--json", file]).ok();
                let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
                v[0]["serial"].as_str().expect("a serial").to_string()
            }
            Value::StdoutOf(prefix) => self
                .outputs
                .iter()
                .rev()
                .find(|(c, _)| c.starts_with(prefix))
                .unwrap_or_else(|| panic!("no README command `{prefix}…` has run yet"))
                .1
                .trim()
                .to_string(),
            Value::ReadyLineOf(prefix) => self
                .ready
                .iter()
                .rev()
                .find(|(c, _)| c.starts_with(prefix))
                .unwrap_or_else(|| panic!("no README command `{prefix}…` has started yet"))
                .1
                .trim()
                .to_string(),
            Value::Postgres => self.postgres.clone()?,
        })
    }

    /// `line` with the substitutions of `scope`; `None` when a line is to be left out.
    fn substitute(&mut self, scope: &str, line: &str) -> Option<String> {
        let mut out = line.to_string();
        for (i, s) in SUBSTITUTED.iter().enumerate() {
            if s.scope != scope || word_matches(&out, s.from).is_empty() {
                continue;
            }
            self.subs_used[i] += 1;
            let Some(value) = self.value(&s.value) else {
                eprintln!("  left out: {line}\n    ({})", s.why);
                return None;
            };
            let to = s.to.replace("{}", &value);
            // Replace from the end so earlier offsets stay valid.
            for at in word_matches(&out, s.from).into_iter().rev() {
                out.replace_range(at..at + s.from.len(), &to);
            }
        }
        Some(out)
    }

    /// Writes a [`PREPARED`] file from the README's ```toml block of that name.
    fn prepare(&mut self, readme: &str, name: &str) {
        let text: Vec<String> = toml_block(readme, name)
            .lines()
            .filter_map(|l| self.substitute(name, l))
            .collect();
        self.env.write(name, (text.join("\n") + "\n").as_bytes());
    }

    fn command(&mut self, readme_command: &str, line: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg("-c").arg(line).current_dir(self.work());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("MTLS_") {
                c.env_remove(k);
            }
        }
        c.env("PATH", &self.path);
        for (i, e) in ENVIRONMENT.iter().enumerate() {
            if !readme_command.starts_with(e.command) {
                continue;
            }
            let value = match e.value {
                Some(v) => v.to_string(),
                None => match &self.postgres {
                    Some(db) => db.clone(),
                    None => continue,
                },
            };
            self.env_used[i] += 1;
            if self.env_used[i] == 1 {
                eprintln!("  with {} ({})", e.var, e.why);
            }
            c.env(e.var, value);
        }
        c
    }

    fn out_file(&self, name: &str) -> PathBuf {
        self.bin.path().join(format!("{}.{name}", self.runs))
    }

    /// Runs a foreground command to its end (at most [`COMMAND_TIMEOUT`]); it must exit 0.
    fn run(&mut self, readme_command: &str, line: &str) {
        self.runs += 1;
        let (out, err) = (self.out_file("stdout"), self.out_file("stderr"));
        let mut child = self
            .command(readme_command, line)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = std::fs::read_to_string(&out).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        let show = || {
            format!(
                "README: {readme_command}\nran:    {line}\nstdout:\n{stdout}\nstderr:\n{stderr}"
            )
        };
        match status {
            None => panic!(
                "a README command did not finish within {COMMAND_TIMEOUT:?} (a server missing \
                 from BACKGROUND?)\n{}",
                show()
            ),
            Some(st) => {
                let expected = EXPECTED_EXIT
                    .iter()
                    .find(|(c, _, _)| readme_command.starts_with(c))
                    .map_or(0, |(_, code, _)| *code);
                if st.code() != Some(expected) {
                    panic!(
                        "a README command failed ({st}; expected exit {expected})\n{}",
                        show()
                    );
                }
            }
        }
        self.outputs.push((readme_command.to_string(), stdout));
    }

    /// Starts a background command and waits (at most [`READY_TIMEOUT`]) for its ready line;
    /// returns the rest of that line.
    fn start(&mut self, readme_command: &str, line: &str, daemon: &Daemon) -> String {
        self.runs += 1;
        let stdout_file = self.out_file("stdout");
        let mut child = self
            .command(readme_command, &format!("exec {line}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_file).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(l.clone());
                l2.lock().unwrap().push(l);
            }
        });
        let mut bg = Background {
            command: line.to_string(),
            child,
            stderr: lines,
            stdout_file,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut rest = None;
        while rest.is_none() && Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => rest = l.strip_prefix(daemon.ready).map(str::to_string),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(st) = bg.child.try_wait().unwrap() {
                        panic!(
                            "a README server exited ({st}) before it was up\nREADME: \
                             {readme_command}\nran:    {line}\n{}",
                            bg.output()
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = bg.child.wait().unwrap();
                    panic!(
                        "a README server exited ({st}) before it was up\nREADME: \
                         {readme_command}\nran:    {line}\n{}",
                        bg.output()
                    );
                }
            }
        }
        let rest = rest.unwrap_or_else(|| {
            panic!(
                "a README server did not print {:?} within {READY_TIMEOUT:?}\nREADME: \
                 {readme_command}\nran:    {line}\n{}",
                daemon.ready,
                bg.output()
            )
        });
        self.background.push(bg);
        self.ready.push((readme_command.to_string(), rest.clone()));
        rest
    }

    /// The README runs no client against its gateways: check each serves what it says, as the
    /// README's client `client-app` (policy: `allow_cn client-app`; gateway.toml also keeps
    /// `/admin` for SPIFFE ids under ns/ops).
    fn check_gateway(&self, readme_command: &str, addr: &str) {
        let port = addr.trim().rsplit(':').next().unwrap();
        let pki = self.work().join("pki");
        let p = |rel: &str| pki.join(rel).to_string_lossy().into_owned();
        let resolve = format!("api.example.com:{port}:127.0.0.1");
        let get = |path: &str, client: bool| {
            let url = format!("https://api.example.com:{port}{path}");
            let (root, chain, key) = (
                p("root.crt"),
                p("issued/client-app.chain.pem"),
                p("issued/client-app.key"),
            );
            let mut args = vec!["--cacert", root.as_str(), "--resolve", resolve.as_str()];
            if client {
                args.extend(["--cert", chain.as_str(), "--key", key.as_str()]);
            }
            args.push(url.as_str());
            curl(&args)
        };
        let before = self.upstream.count();
        let (status, body) = get("/api/secure", true);
        assert_eq!(status, 200, "{readme_command}: GET /api/secure: {body}");
        assert!(body.contains("CN=client-app"), "{readme_command}: {body}");
        assert_eq!(self.upstream.count(), before + 1);
        let (status, _) = get("/api/secure", false);
        assert_eq!(
            status, 0,
            "{readme_command}: no client certificate, yet {status}"
        );
        let admin = if readme_command.contains("--config gateway.toml") {
            403
        } else {
            200
        };
        let (status, body) = get("/admin/x", true);
        assert_eq!(status, admin, "{readme_command}: GET /admin/x: {body}");
        eprintln!("  checked: client-app gets 200 through {addr}, no certificate is refused");
    }
}

#[test]
fn readme_commands_run_as_written() {
    let started = Instant::now();
    let readme = std::fs::read_to_string(README).unwrap();
    let blocks = sh_blocks(&readme);
    assert!(blocks.len() >= 4, "README.md: ```sh blocks: {blocks:?}");
    let mut r = Runner::new();
    eprintln!(
        "README in {} ({}), mtls = {}",
        r.work().display(),
        match &r.postgres {
            Some(_) => "PostgreSQL inventory",
            None => "SQLite inventory: MTLS_TEST_POSTGRES_URL is not set",
        },
        env!("CARGO_BIN_EXE_mtls")
    );
    eprintln!("$ command -v mtls    (the test's own check: `mtls` is this build's binary)");
    r.run("command -v mtls", "command -v mtls");
    assert_eq!(
        r.outputs.pop().unwrap().1.trim(),
        r.bin.path().join("mtls").to_string_lossy()
    );
    for (name, why) in PREPARED {
        r.prepare(&readme, name);
        eprintln!("prepared {name} from the README's ```toml block ({why})");
    }
    let mut skipped = vec![0; SKIPPED.len()];
    let mut ran = 0;
    for (b, block) in blocks.iter().enumerate() {
        for cmd in block {
            if let Some(i) = SKIPPED
                .iter()
                .position(|s| s.block == b && s.command == cmd)
            {
                skipped[i] += 1;
                eprintln!("skipped: {cmd}\n  ({})", SKIPPED[i].why);
                continue;
            }
            let Some(line) = r.substitute(SH, cmd) else {
                continue;
            };
            eprintln!("$ {line}");
            ran += 1;
            match BACKGROUND
                .iter()
                .find(|d| cmd.starts_with(d.command) && cmd.contains(d.with))
            {
                Some(d) => {
                    let rest = r.start(cmd, &line, d);
                    eprintln!("  up: {}{rest}", d.ready);
                    if d.command == "mtls gateway " {
                        r.check_gateway(cmd, &rest);
                    }
                }
                None => r.run(cmd, &line),
            }
        }
    }
    // The servers are still up at the end, then stopped.
    for bg in &mut r.background {
        if let Some(st) = bg.child.try_wait().unwrap() {
            panic!(
                "a README server stopped ({st}): {}\n{}",
                bg.command,
                bg.output()
            );
        }
    }
    let n_background = r.background.len();
    r.background.clear();
    // Every table entry still matches the README.
    for (s, n) in SKIPPED.iter().zip(&skipped) {
        assert_eq!(
            *n, 1,
            "SKIPPED: `{}` matched {n} commands of ```sh block {}",
            s.command, s.block
        );
    }
    for (s, n) in SUBSTITUTED.iter().zip(&r.subs_used) {
        assert!(
            *n > 0,
            "SUBSTITUTED: `{}` is not in {} any more",
            s.from,
            s.scope
        );
    }
    for (e, n) in ENVIRONMENT.iter().zip(&r.env_used) {
        let wanted = e.value.is_some() || r.postgres.is_some();
        assert!(
            !wanted || *n > 0,
            "ENVIRONMENT: no command `{}…`",
            e.command
        );
    }
    eprintln!(
        "{ran} README commands ran ({n_background} in the background), {} skipped, in {:?}",
        SKIPPED.len(),
        started.elapsed()
    );
}

#[test]
fn extraction_joins_continuations_and_drops_comments_outside_quotes() {
    let md = "text\n```sh\n# only a comment\nmtls a --x 1   # comment\nmtls b 'it # stays' \"so # does\" x#y \\\n  --more \\\n  --last  # end\n\nmtls c --uri 'spiffe://e/*/x'\n```\n```toml\n# t.toml\nnot = \"sh\"\n```\n```sh\necho \\# kept\n```\n";
    assert_eq!(
        sh_blocks(md),
        vec![
            vec![
                "mtls a --x 1".to_string(),
                "mtls b 'it # stays' \"so # does\" x#y   --more   --last".to_string(),
                "mtls c --uri 'spiffe://e/*/x'".to_string(),
            ],
            vec!["echo \\# kept".to_string()],
        ]
    );
    assert_eq!(toml_block(md, "t.toml"), "# t.toml\nnot = \"sh\"\n");
    assert_eq!(word_matches("--token T --token To", "--token T"), vec![0]);
}
