//! A running `mtls ca serve`, PostgreSQL helpers and curl/openssl wrappers for the CA tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::{Env, Run};

/// A port free right now on 127.0.0.1 (for URLs that must be known before the server starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct CaServer {
    child: Child,
    pub addr: SocketAddr,
    pub publish_port: u16,
    /// `metrics_listen`: `/metrics` and `/healthz`.
    pub metrics_port: u16,
    pub fingerprint: String,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub config: PathBuf,
}

impl CaServer {
    /// Writes `<name>.toml` in the env dir and starts the CA on it.
    pub fn start(env: &Env, name: &str, database: Option<&str>, extra: &str) -> CaServer {
        Self::start_on(env, name, database, extra, 0, free_port())
    }

    pub fn start_on(
        env: &Env,
        name: &str,
        database: Option<&str>,
        extra: &str,
        port: u16,
        publish_port: u16,
    ) -> CaServer {
        Self::start_full(env, name, database, extra, port, publish_port, &[])
    }

    /// Also sets environment variables `vars` for the server process.
    pub fn start_full(
        env: &Env,
        name: &str,
        database: Option<&str>,
        extra: &str,
        port: u16,
        publish_port: u16,
        vars: &[(&str, String)],
    ) -> CaServer {
        let db = database
            .map(|d| format!("database = \"{d}\"\n"))
            .unwrap_or_default();
        let metrics_port = free_port();
        let toml = format!(
            "listen = \"127.0.0.1:{port}\"\npublish_listen = \"127.0.0.1:{publish_port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\npki = \"pki\"\npublic_url = \"http://127.0.0.1:{publish_port}\"\nserver_names = [\"localhost\", \"127.0.0.1\"]\n{db}{extra}\n[admins]\nallow_cn = [\"ca-admin\"]\n"
        );
        let config = env.write(&format!("{name}.toml"), toml.as_bytes());
        let mut child = Command::new(super::gw::mtls_bin())
            .args(["ca", "serve", "--config"])
            .arg(&config)
            .env("MTLS_LOG", "info")
            .env_remove("MTLS_CA_PASSPHRASE")
            .env_remove("MTLS_DATABASE")
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                l2.lock().unwrap().push(line);
            }
        });
        let (mut addr, mut fp) = (None, None);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline && (addr.is_none() || fp.is_none()) {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("mtls ca: listening on https://") {
                        addr = a.trim().parse().ok();
                    }
                    if let Some((_, f)) = line.split_once("--ca-fingerprint`): ") {
                        fp = Some(f.trim().to_string());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(st)) = child.try_wait() {
                        panic!("CA exited with {st}: {:?}", lines.lock().unwrap());
                    }
                }
                Err(_) => break,
            }
        }
        CaServer {
            child,
            addr: addr.unwrap_or_else(|| panic!("CA did not start: {:?}", lines.lock().unwrap())),
            publish_port,
            metrics_port,
            fingerprint: fp.unwrap(),
            stderr: lines,
            config,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }
    pub fn publish(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.publish_port)
    }
    pub fn metrics(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.metrics_port)
    }
    /// SIGTERM, then the exit status (panics if it does not stop within 10 s).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                std::mem::forget(self);
                return st;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mtls ca serve ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }
}

impl Drop for CaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl` with the CA root; returns (status, body).
pub fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Mints a token with the CLI.
pub fn token(env: &Env, name: &str, extra: &[&str], database: Option<&str>) -> String {
    let mut args = vec!["ca", "token", "--name", name];
    args.extend_from_slice(extra);
    if let Some(d) = database {
        args.extend_from_slice(&["--database", d]);
    }
    env.mtls(&args).ok().stdout.trim().to_string()
}

/// `mtls enroll` with `token` in `MTLS_TOKEN` (never an argument).
pub fn enroll(env: &Env, ca: &CaServer, token: &str, out: &str, extra: &[&str]) -> Run {
    let url = ca.url();
    let mut args = vec![
        "enroll",
        "--ca-url",
        &url,
        "--ca-fingerprint",
        &ca.fingerprint,
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    env.mtls_env(&args, &[("MTLS_TOKEN", token)])
}

/// The leaf's serial as openssl prints it (upper-case hex).
pub fn serial_of(env: &Env, cert: &Path) -> String {
    let r = env
        .openssl(&["x509", "-noout", "-serial", "-in", cert.to_str().unwrap()])
        .ok();
    r.stdout.trim().trim_start_matches("serial=").to_string()
}

/// `openssl ocsp` against the CA's responder; returns all output.
pub fn ocsp(env: &Env, ca: &CaServer, issuer: &Path, cert: &Path) -> String {
    let r = env.openssl(&[
        "ocsp",
        "-issuer",
        issuer.to_str().unwrap(),
        "-cert",
        cert.to_str().unwrap(),
        "-url",
        &ca.publish("/ocsp"),
        "-CAfile",
        env.pki().join("root.crt").to_str().unwrap(),
        "-timeout",
        "20",
    ]);
    format!("{}{}", r.stdout, r.stderr)
}

/// A database of its own on the shared test cluster (`scripts/pg.sh`).
pub fn fresh_pg_database() -> String {
    mtls_test_util::fresh_postgres_database()
}

pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A PostgreSQL cluster of a test's own (so the test may stop and start it).
pub struct PgCluster {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
}

fn as_pg(cmd: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    }
}

impl PgCluster {
    pub fn start(parent: &Path) -> PgCluster {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .find(|p| p.join("initdb").exists())
            .expect("PostgreSQL server binaries (scripts/pg.sh installs them)");
        let dir = parent.join("pgdata");
        std::fs::create_dir_all(&dir).unwrap();
        // The cluster runs as postgres: let it into the test's temp dirs.
        let _ = Command::new("chmod").arg("755").arg(parent).status();
        let _ = Command::new("chown").args(["postgres"]).arg(&dir).status();
        let st = as_pg(&bin.join("initdb"))
            .args(["-U", "postgres", "--auth=trust", "-D"])
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        let c = PgCluster {
            dir,
            port: free_port(),
            bin,
        };
        c.up();
        c
    }
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Like [`PgCluster::start`], with TLS on and only TLS connections with a client certificate
    /// (`hostssl … cert`, CN = user) allowed over TCP.
    pub fn start_tls(
        parent: &Path,
        server_chain: &Path,
        server_key: &Path,
        client_ca: &Path,
    ) -> PgCluster {
        let c = Self::start(parent);
        c.down();
        for (src, name) in [
            (server_chain, "server.crt"),
            (server_key, "server.key"),
            (client_ca, "root.crt"),
        ] {
            std::fs::copy(src, c.dir.join(name)).unwrap();
            let _ = Command::new("chown")
                .arg("postgres")
                .arg(c.dir.join(name))
                .status();
        }
        let _ = Command::new("chmod")
            .arg("600")
            .arg(c.dir.join("server.key"))
            .status();
        let mut conf = std::fs::read_to_string(c.dir.join("postgresql.conf")).unwrap();
        conf.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'\n");
        std::fs::write(c.dir.join("postgresql.conf"), conf).unwrap();
        std::fs::write(
            c.dir.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 cert\n",
        )
        .unwrap();
        c.up();
        c
    }
    pub fn up(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}",
            self.port,
            self.dir.display()
        );
        let st = as_pg(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.dir)
            .args(["-l"])
            .arg(self.dir.join("log"))
            .args(["-w", "-o", &opts, "start"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    }
    pub fn down(&self) {
        let st = as_pg(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = as_pg(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
