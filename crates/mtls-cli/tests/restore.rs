//! Restoring the CA's database from an older backup un-revokes nothing: the CA remembers what
//! it published (`<pki>/ledger`), refuses to publish from a database that is behind it
//! (`mtls crl`, `mtls ca serve`), and `mtls ca reconcile` re-applies the revocations of the
//! last published CRL. Checked at the gateway (CRL file), in OCSP and in the published CRL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::ca::{self, CaServer};
use common::gw::{self, Gateway, Upstream};
use common::Env;

/// A consistent copy of the SQLite inventory, as an operator's backup job makes it.
fn backup(env: &Env, to: &str) {
    let script = "import sqlite3, sys\nsrc = sqlite3.connect(sys.argv[1])\ndst = sqlite3.connect(sys.argv[2])\nsrc.backup(dst)\ndst.close()\nsrc.close()\n";
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(env.pki().join("inventory.db"))
        .arg(env.path(to))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn restore(env: &Env, from: &str) {
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(env.pki().join(format!("inventory.db{suffix}")));
    }
    std::fs::copy(env.path(from), env.pki().join("inventory.db")).unwrap();
}

fn crl_text(env: &Env) -> String {
    env.openssl(&["crl", "-in", &env.p("pki/crl.pem"), "-noout", "-text"])
        .ok()
        .stdout
}

#[test]
fn a_restored_backup_does_not_unrevoke_at_the_gateway_in_ocsp_or_in_the_crl() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "localhost", "127.0.0.1"])
        .ok();
    for c in ["a", "b"] {
        env.mtls(&["issue", "client", c]).ok();
    }
    env.mtls(&["crl"]).ok();
    backup(&env, "backup.db");

    // After the backup: a is revoked, c is issued and revoked, CRL #2 is published.
    env.mtls(&["issue", "client", "c"]).ok();
    for c in ["a", "c"] {
        env.mtls(&[
            "revoke",
            "--cert",
            &env.p(&format!("pki/issued/{c}.crt")),
            "--reason",
            "keyCompromise",
        ])
        .ok();
    }
    env.mtls(&["crl"]).ok();
    let published = crl_text(&env);
    assert!(
        published.contains("CRL Number: \n                2"),
        "{published}"
    );

    let pki = env.pki();
    let up = Upstream::start();
    let g = Gateway::start(&gw::trusting_args(
        &pki.join("issued/localhost.chain.pem"),
        &pki.join("issued/localhost.key"),
        &pki.join("ca-chain.pem"),
        &up,
        &["--crl", &env.p("pki/crl.pem")],
    ));
    let status = |c: &str| {
        gw::status_as(
            &g,
            &pki.join("root.crt"),
            &pki.join(format!("issued/{c}.chain.pem")),
            &pki.join(format!("issued/{c}.key")),
        )
    };
    assert_eq!(status("a"), 0, "a is revoked");
    assert_eq!(status("b"), 200);

    // The backup comes back.
    restore(&env, "backup.db");
    let refused = env.mtls(&["crl"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("restored") && refused.stderr.contains("mtls ca reconcile"),
        "{}",
        refused.stderr
    );
    assert_eq!(crl_text(&env), published, "the published CRL is untouched");
    let r = env.mtls(&["revoke", "--cert", &env.p("pki/issued/b.crt")]);
    assert_eq!(r.code, 1, "nothing is written to a rolled-back inventory");
    // No token either: one minted before the backup could be used twice.
    let r = env.mtls(&["ca", "token", "--name", "x"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("mtls ca reconcile"), "{}", r.stderr);
    // The online CA does not start on it either.
    let config = env.write(
        "ca.toml",
        format!(
            "listen = \"127.0.0.1:0\"\npublish_listen = \"127.0.0.1:{}\"\npki = \"pki\"\npublic_url = \"http://127.0.0.1:1\"\n",
            ca::free_port()
        )
        .as_bytes(),
    );
    let o = Command::new(gw::mtls_bin())
        .args(["ca", "serve", "--config", config.to_str().unwrap()])
        .env_remove("MTLS_PKI_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(stderr.contains("mtls ca reconcile"), "{stderr}");
    assert_eq!(status("a"), 0, "still refused at the gateway");

    // Told how to proceed: re-apply what was published.
    let r = env.mtls(&["ca", "reconcile"]).ok();
    assert!(
        r.stdout.contains("Re-applied 2 revocation(s)"),
        "{}",
        r.stdout
    );
    env.mtls(&["crl"]).ok();
    let text = crl_text(&env);
    assert!(text.contains("CRL Number: \n                3"), "{text}");
    for c in ["a", "c"] {
        let serial = ca::serial_of(&env, &env.pki().join(format!("issued/{c}.crt")));
        assert!(
            text.to_uppercase().contains(&serial.to_uppercase()),
            "{c} ({serial}) is in the new CRL: {text}"
        );
    }
    assert!(text.contains("Key Compromise"), "{text}");
    // The gateway reloads the new CRL: a and c stay refused, b works.
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status("a"), 0);
    assert_eq!(status("c"), 0);
    assert_eq!(status("b"), 200);
    assert!(start.elapsed() < Duration::from_secs(60));
    // OCSP says revoked.
    let server = CaServer::start(&env, "ca2", None, "");
    let issuer = env.pki().join("intermediate.crt");
    for c in ["a", "c"] {
        let answer = ca::ocsp(
            &env,
            &server,
            &issuer,
            &env.pki().join(format!("issued/{c}.crt")),
        );
        assert!(answer.contains(": revoked"), "{c}: {answer}");
    }
    let answer = ca::ocsp(&env, &server, &issuer, &env.pki().join("issued/b.crt"));
    assert!(answer.contains(": good"), "{answer}");
    // Reconciling again has nothing to do.
    let r = env.mtls(&["ca", "reconcile"]).ok();
    assert!(r.stdout.contains("nothing to do"), "{}", r.stdout);
}
