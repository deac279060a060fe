//! `mtls doctor`: a PKI seeded with each problem reports exactly those findings by code, a
//! clean PKI reports none; `--json` validated against docs/doctor.schema.json by Python's
//! `jsonschema`; exit codes 0 (clean), 1 (errors), 3 (warnings only), 2 (bad input).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::Env;
use mtls_pki::pem_io;
use mtls_pki::Profile;
use mtls_test_util::TestPki;
use time::{Duration, OffsetDateTime};

const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/doctor.schema.json");

/// Runs `mtls doctor --json ARGS`: exit code and the (code, file name) pairs, after checking
/// the output against the schema.
fn doctor(env: &Env, args: &[&str]) -> (i32, BTreeSet<(String, String)>) {
    let (code, findings) = doctor_findings(env, args);
    (code, findings.into_iter().collect())
}

/// [`doctor`], with every finding in the order reported (a problem reported twice shows twice).
fn doctor_findings(env: &Env, args: &[&str]) -> (i32, Vec<(String, String)>) {
    let mut all = vec!["doctor", "--json"];
    all.extend(args);
    let r = env.mtls(&all);
    let script = "import json, sys, jsonschema\nschema = json.load(open(sys.argv[1]))\njsonschema.validate(json.loads(sys.stdin.read()), schema)\n";
    let mut child = Command::new("python3")
        .args(["-c", script, SCHEMA])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), r.stdout.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "schema: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        r.stdout
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let found = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let file = f["file"].as_str().unwrap();
            let name = Path::new(file)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (f["code"].as_str().unwrap().to_string(), name)
        })
        .collect();
    (r.code, found)
}

fn set(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    pairs
        .iter()
        .map(|(c, f)| (c.to_string(), f.to_string()))
        .collect()
}

#[test]
fn the_schema_lists_every_code_the_doctor_has() {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(SCHEMA).unwrap()).unwrap();
    let listed: BTreeSet<String> = schema["properties"]["findings"]["items"]["properties"]["code"]
        ["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let codes: BTreeSet<String> = mtls_ops::doctor::CODES
        .iter()
        .map(|(c, _)| c.to_string())
        .collect();
    assert_eq!(listed, codes);
}

#[test]
fn a_clean_pki_reports_nothing_and_a_default_one_its_key_storage() {
    let env = Env::new();
    let pass = env.write_secret("ca.pass", b"correct horse battery\n");
    let pass = pass.to_str().unwrap();
    let root_pass = env.write_secret("root.pass", b"a staple for the root\n");
    env.mtls(&[
        "ca",
        "init",
        "--encrypt",
        "--passphrase-file",
        pass,
        "--root-passphrase-file",
        root_pass.to_str().unwrap(),
    ])
    .ok();
    // The root key goes offline, as `ca init` advises.
    std::fs::rename(env.pki().join("root.key"), env.path("root.key.offline")).unwrap();
    env.mtls(&["issue", "server", "localhost", "--ca-passphrase-file", pass])
        .ok();
    env.mtls(&["issue", "client", "app", "--ca-passphrase-file", pass])
        .ok();
    env.mtls(&["crl", "--ca-passphrase-file", pass]).ok();
    let (code, found) = doctor(&env, &[&env.p("pki")]);
    // The encrypted intermediate key cannot be matched without its passphrase: a note.
    assert_eq!(found, set(&[("key_unchecked", "intermediate.crt")]));
    assert_eq!(code, 0);

    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "client", "app"]).ok();
    let (code, found) = doctor(&env, &[&env.p("pki")]);
    assert_eq!(
        found,
        set(&[
            ("ca_key_unencrypted", "root.key"),
            ("ca_key_unencrypted", "intermediate.key"),
            ("root_key_online", "root.key"),
            ("crl_missing", "crl.pem"),
        ])
    );
    assert_eq!(code, 3, "warnings only");
}

fn write_pem(env: &Env, name: &str, label: &str, ders: &[&[u8]]) -> String {
    let text: String = ders.iter().map(|d| pem_io::encode(label, d)).collect();
    let p = env.write(name, text.as_bytes());
    p.to_string_lossy().into_owned()
}

fn openssl(env: &Env, args: &[&str]) {
    env.openssl(args).ok();
}

/// Each problem of the issue, in a file (or directory) of its own, reports exactly its codes.
#[test]
fn each_seeded_problem_is_reported_by_its_code() {
    let env = Env::new();
    let pki = TestPki::new("doctor");
    let now = OffsetDateTime::now_utc();
    let inter = pki.intermediate.der().to_vec();
    let leaf_at = |cn: &str, profile: Profile, at: OffsetDateTime, days: i64| {
        pki.leaf_at(
            profile,
            cn,
            &[&format!("{cn}.example")],
            at,
            Duration::days(days),
        )
    };
    let mut expected: Vec<(&str, &str)> = Vec::new();
    let mut files: Vec<String> = Vec::new();

    // A key readable by others.
    let open = leaf_at("open", Profile::Client, now, 90);
    let key = env.write("open.key", open.key.to_pem().as_bytes());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    files.push(key.to_string_lossy().into_owned());
    expected.push(("key_permissions", "open.key"));

    // A chain file holding only its leaf; a chain in the wrong order.
    let a = leaf_at("a", Profile::Server, now, 90);
    files.push(write_pem(
        &env,
        "a.chain.pem",
        "CERTIFICATE",
        &[&a.cert.der],
    ));
    expected.push(("chain_incomplete", "a.chain.pem"));
    files.push(write_pem(
        &env,
        "b-chain.pem",
        "CERTIFICATE",
        &[&inter, &a.cert.der],
    ));
    expected.push(("chain_out_of_order", "b-chain.pem"));

    // A certificate next to a key that is not its own.
    let c = leaf_at("c", Profile::Client, now, 90);
    files.push(write_pem(&env, "c.crt", "CERTIFICATE", &[&c.cert.der]));
    env.write_secret("c.key", open.key.to_pem().as_bytes());
    expected.push(("key_mismatch", "c.crt"));

    // Expired, not yet valid, expiring soon, valid too long.
    let old = leaf_at("old", Profile::Client, now - Duration::days(100), 30);
    files.push(write_pem(&env, "old.crt", "CERTIFICATE", &[&old.cert.der]));
    expected.push(("expired", "old.crt"));
    let later = leaf_at("later", Profile::Client, now + Duration::days(5), 30);
    files.push(write_pem(
        &env,
        "later.crt",
        "CERTIFICATE",
        &[&later.cert.der],
    ));
    expected.push(("not_yet_valid", "later.crt"));
    let soon = leaf_at("soon", Profile::Client, now - Duration::days(25), 30);
    files.push(write_pem(
        &env,
        "soon.crt",
        "CERTIFICATE",
        &[&soon.cert.der],
    ));
    expected.push(("expiring_soon", "soon.crt"));
    // A two-day certificate issued an hour ago: a renewal daemon's business, not a finding.
    let short = leaf_at("short", Profile::Client, now - Duration::hours(1), 2);
    files.push(write_pem(
        &env,
        "short.crt",
        "CERTIFICATE",
        &[&short.cert.der],
    ));
    let long = leaf_at("long", Profile::Client, now, 800);
    files.push(write_pem(
        &env,
        "long.crt",
        "CERTIFICATE",
        &[&long.cert.der],
    ));
    expected.push(("validity_too_long", "long.crt"));

    // A stale CRL.
    let stale = mtls_pki::revocation::build_crl(
        &pki.intermediate,
        1,
        now - Duration::days(10),
        Duration::days(1),
        &[],
    )
    .unwrap();
    files.push(write_pem(&env, "stale.crl", "X509 CRL", &[stale.as_ref()]));
    expected.push(("crl_stale", "stale.crl"));

    // Certificates made with openssl, each with one defect, signed by an openssl CA.
    let cnf = env.write(
        "x.cnf",
        b"[req]\ndistinguished_name=dn\n[dn]\n\
[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n\
[server_nosan]\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n\
[noeku]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nsubjectAltName=DNS:noeku.example\n\
[caleaf]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,digitalSignature,keyCertSign\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:caleaf.example\n\
[leaf]\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\nsubjectAltName=DNS:leaf.example\n",
    );
    let cnf = cnf.to_str().unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let req_x509 = |out: &str, key: &str, subj: &str, ext: &str, extra: &[&str]| {
        let mut args = vec!["req", "-x509"];
        args.extend(extra);
        args.extend([
            "-subj",
            subj,
            "-keyout",
            key,
            "-out",
            out,
            "-days",
            "90",
            "-config",
            cnf,
            "-extensions",
            ext,
        ]);
        openssl(&env, &args);
    };
    req_x509("ossl-ca.crt", "ossl-ca.key", "/CN=openssl CA", "ca", &ec);
    req_x509("selfsigned.crt", "selfsigned.key", "/CN=self", "leaf", &ec);
    files.push(env.p("selfsigned.crt"));
    expected.push(("self_signed_leaf", "selfsigned.crt"));
    let sign = |name: &str, ext: &str, digest: &str, key_args: &[&str]| {
        let mut args = vec!["req", "-new"];
        args.extend(key_args);
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        args.extend([
            "-subj", "/CN=x", "-keyout", &key, "-out", &csr, "-config", cnf,
        ]);
        openssl(&env, &args);
        let out = format!("{name}.crt");
        openssl(
            &env,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ossl-ca.crt",
                "-CAkey",
                "ossl-ca.key",
                "-days",
                "90",
                digest,
                "-extfile",
                cnf,
                "-extensions",
                ext,
                "-out",
                &out,
                "-set_serial",
                "0x1234",
            ],
        );
        env.p(&out)
    };
    files.push(sign("nosan", "server_nosan", "-sha256", &ec));
    expected.push(("server_without_san", "nosan.crt"));
    files.push(sign("noeku", "noeku", "-sha256", &ec));
    expected.push(("leaf_without_eku", "noeku.crt"));
    files.push(sign("caleaf", "caleaf", "-sha256", &ec));
    expected.push(("leaf_is_ca", "caleaf.crt"));
    files.push(sign("sha1", "leaf", "-sha1", &ec));
    expected.push(("weak_signature", "sha1.crt"));
    files.push(sign(
        "rsa1024",
        "leaf",
        "-sha256",
        &["-newkey", "rsa:1024", "-nodes"],
    ));
    expected.push(("weak_key", "rsa1024.crt"));
    // mtls does not load RSA-1024 keys: the match with its key is left unchecked, and said so.
    expected.push(("key_unchecked", "rsa1024.crt"));
    // A leaf issued by the root itself, served with it.
    let byroot = env.read("noeku.crt");
    let mut chain = byroot.clone();
    chain.extend(env.read("ossl-ca.crt"));
    let with_root = env.write("byroot.chain.pem", &chain);
    files.push(with_root.to_string_lossy().into_owned());
    expected.push(("leaf_without_eku", "byroot.chain.pem"));
    expected.push(("issued_by_root", "byroot.chain.pem"));

    // Malformed input: a truncated PEM certificate and random bytes.
    files.push(
        env.write(
            "garbage.pem",
            b"-----BEGIN CERTIFICATE-----\nMIIB!!!\n-----END CERTIFICATE-----\n",
        )
        .to_string_lossy()
        .into_owned(),
    );
    expected.push(("unreadable", "garbage.pem"));
    files.push(
        env.write("random.der", &[0x30, 0x82, 0xff, 0xff, 0x01, 0x02])
            .to_string_lossy()
            .into_owned(),
    );
    expected.push(("unreadable", "random.der"));
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let (code, found) = doctor(&env, &args);
    assert_eq!(found, set(&expected));
    assert_eq!(code, 1, "errors exit 1");
}

#[test]
fn configurations_are_audited_with_the_files_they_name() {
    let env = Env::new();
    env.mtls(&["ca", "init"]).ok();
    env.mtls(&["issue", "server", "localhost"]).ok();
    env.mtls(&["crl"]).ok();
    let p = |rel: &str| env.p(&format!("pki/{rel}"));
    // Six self-signed roots in the client CA bundle: a public root store.
    let mut bundle = String::new();
    for i in 0..6 {
        let root = TestPki::new(&format!("public{i}"));
        bundle.push_str(&pem_io::encode("CERTIFICATE", &root.root_der()));
    }
    let public = env.write("public-roots.pem", bundle.as_bytes());
    let listener = |name: &str, extra: &str, ca: &str| {
        format!(
            "[[listener]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:1\"\nclient_ca = [\"{ca}\"]\n{extra}\n[listener.policy]\nallow_any_trusted = true\n[[listener.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
            p("issued/localhost.chain.pem"),
            p("issued/localhost.key")
        )
    };
    let config = format!(
        "{}{}{}",
        listener("open", "client_auth = \"optional\"", &p("ca-chain.pem")),
        listener(
            "soft",
            &format!(
                "crl = [\"{}\"]\nrevocation_policy = \"soft-fail\"",
                p("crl.pem")
            ),
            &p("ca-chain.pem")
        ),
        listener(
            "public",
            &format!("crl = [\"{}\"]", p("crl.pem")),
            public.to_str().unwrap()
        ),
    );
    let gw = env.write("gateway.toml", config.as_bytes());
    let (code, found) = doctor(&env, &["--config", gw.to_str().unwrap()]);
    assert_eq!(
        found,
        set(&[
            ("client_verification_optional", "gateway.toml"),
            ("allows_any_trusted", "gateway.toml"),
            ("revocation_not_configured", "gateway.toml"),
            ("revocation_soft_fail", "gateway.toml"),
            ("client_ca_public_roots", "public-roots.pem"),
        ])
    );
    assert_eq!(code, 1);

    // The CA's configuration: its leaf lifetime, and its PKI directory.
    let ca = env.write(
        "ca.toml",
        b"listen = \"127.0.0.1:0\"\npki = \"pki\"\nleaf_lifetime = \"800d\"\n",
    );
    let (code, found) = doctor(&env, &["--config", ca.to_str().unwrap()]);
    assert_eq!(
        found,
        set(&[
            ("validity_too_long", "ca.toml"),
            ("ca_key_unencrypted", "root.key"),
            ("ca_key_unencrypted", "intermediate.key"),
            ("root_key_online", "root.key"),
        ])
    );
    assert_eq!(code, 3);
    // What keeps a service from starting is an error: a CA configuration naming no PKI
    // directory; a listener's CRL file that is missing (but one a crl_fetch keeps, which the
    // gateway fetches first, is a warning).
    let ca = env.write(
        "ca-typo.toml",
        b"listen = \"127.0.0.1:0\"\npki = \"pkki\"\n",
    );
    let (code, found) = doctor(&env, &["--config", ca.to_str().unwrap()]);
    assert_eq!(found, set(&[("unreadable", "pkki")]));
    assert_eq!(code, 1);
    let missing = env.p("missing-crl.pem");
    let fetched = env.p("fetched-crl.pem");
    let config = listener(
        "crl",
        &format!(
            "crl = [\"{missing}\", \"{fetched}\"]\n[[listener.crl_fetch]]\nurl = \"http://127.0.0.1:1/v1/crl\"\nfile = \"{fetched}\""
        ),
        &p("ca-chain.pem"),
    );
    let gw = env.write("gateway-crl.toml", config.as_bytes());
    let (code, found) = doctor(&env, &["--config", gw.to_str().unwrap()]);
    assert!(
        found.contains(&(
            "crl_file_missing".to_string(),
            "missing-crl.pem".to_string()
        )),
        "{found:?}"
    );
    assert!(
        found.contains(&("crl_missing".to_string(), "fetched-crl.pem".to_string())),
        "{found:?}"
    );
    assert_eq!(code, 1);
}

#[test]
fn bad_input_exits_2_and_text_output_names_code_file_and_fix() {
    let env = Env::new();
    env.mtls(&["doctor", "nope"]).fails(2, "nope");
    env.mtls(&["doctor"]).fails(2, "--config");
    let bad = env.write("bad.toml", b"[[listener]]\nbogus = 1\n");
    env.mtls(&["doctor", "--config", bad.to_str().unwrap()])
        .fails(2, "bad.toml");
    env.mtls(&["ca", "init"]).ok();
    let r = env.mtls(&["doctor", &env.p("pki")]);
    assert_eq!(r.code, 3);
    assert!(
        r.stdout.contains("warning[root_key_online]") && r.stdout.contains("fix: move root.key"),
        "{}",
        r.stdout
    );
}

/// A file that cannot be parsed is an error, never a pass: a truncated CRL (PEM, and DER named
/// `.crl`), a truncated key on its own and next to its certificate; the intact files are clean.
#[test]
fn truncated_crls_and_keys_are_errors_and_intact_ones_clean() {
    let env = Env::new();
    let pki = TestPki::new("truncated");
    let now = OffsetDateTime::now_utc();
    let leaf = pki.leaf_at(Profile::Client, "app", &[], now, Duration::days(90));
    let crl =
        mtls_pki::revocation::build_crl(&pki.intermediate, 1, now, Duration::days(7), &[]).unwrap();
    let key_pem = leaf.key.to_pem();
    let good = [
        write_pem(&env, "good.crl", "X509 CRL", &[crl.as_ref()]),
        env.write("good-der.crl", crl.as_ref())
            .to_string_lossy()
            .into_owned(),
        write_pem(&env, "app.crt", "CERTIFICATE", &[&leaf.cert.der]),
        env.write_secret("app.key", key_pem.as_bytes())
            .to_string_lossy()
            .into_owned(),
    ];
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let (code, found) = doctor(&env, &good);
    assert_eq!(found, set(&[]));
    assert_eq!(code, 0);

    // The same files cut short.
    let crl_der = crl.as_ref();
    let cut_crl = &crl_der[..crl_der.len() - 20];
    let key_der = leaf.key.pkcs8_der();
    let cut_key = &key_der[..key_der.len() - 10];
    std::fs::create_dir(env.path("cut")).unwrap();
    let bad = [
        write_pem(&env, "cut/bad.crl", "X509 CRL", &[cut_crl]),
        env.write("cut/bad-der.crl", cut_crl)
            .to_string_lossy()
            .into_owned(),
        write_pem(&env, "cut/app.crt", "CERTIFICATE", &[&leaf.cert.der]),
    ];
    let cut_pem = pem_io::encode("PRIVATE KEY", cut_key);
    let key = env.write_secret("cut/app.key", cut_pem.as_bytes());
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    let (code, found) = doctor(&env, &bad);
    assert_eq!(
        found,
        set(&[
            ("unreadable", "bad.crl"),
            ("unreadable", "bad-der.crl"),
            // Found through the certificate next to it.
            ("unreadable", "app.key"),
        ])
    );
    assert_eq!(code, 1, "errors exit 1");
    let (code, found) = doctor(&env, &[key.to_str().unwrap()]);
    assert_eq!(found, set(&[("unreadable", "app.key")]));
    assert_eq!(code, 1);
    // An encrypted key cut short is malformed too, not merely locked.
    let enc = leaf
        .key
        .to_encrypted_pem_with_iterations(b"pw", 1000)
        .unwrap();
    let blocks = pem_io::decode(enc.as_bytes()).unwrap();
    let der = &blocks[0].der;
    let cut = pem_io::encode("ENCRYPTED PRIVATE KEY", &der[..der.len() - 10]);
    let enc_cut = env.write_secret("enc-cut.key", cut.as_bytes());
    let enc_ok = env.write_secret("enc.key", enc.as_bytes());
    let (code, found) = doctor(&env, &[enc_cut.to_str().unwrap(), enc_ok.to_str().unwrap()]);
    assert_eq!(found, set(&[("unreadable", "enc-cut.key")]));
    assert_eq!(code, 1);
}

/// Every certificate and key a listener names is audited: an expired intermediate in the
/// client CA bundle, an expired revocation-feed client certificate, an upstream client
/// certificate paired with another key; an encrypted key with its passphrase file is matched.
#[test]
fn a_gateway_configuration_audits_every_certificate_and_key_it_names() {
    let env = Env::new();
    let pki = TestPki::new("gwfiles");
    let now = OffsetDateTime::now_utc();
    let old_inter = mtls_pki::issue::new_intermediate(
        &pki.root,
        &mtls_pki::Subject::cn("old Intermediate CA"),
        mtls_pki::PrivateKey::generate(mtls_pki::KeyAlgorithm::EcdsaP256).unwrap(),
        now - Duration::days(300),
        Duration::days(30),
        0,
    )
    .unwrap();
    let bundle = write_pem(
        &env,
        "bundle.pem",
        "CERTIFICATE",
        &[old_inter.der(), &pki.root_der()],
    );
    let good_bundle = write_pem(&env, "good-bundle.pem", "CERTIFICATE", &[&pki.root_der()]);
    let server = pki.leaf_at(
        Profile::Server,
        "gw.example",
        &["gw.example"],
        now,
        Duration::days(90),
    );
    let server_pem = write_pem(&env, "server.pem", "CERTIFICATE", &[&server.cert.der]);
    // Encrypted, with its passphrase file: the match is checked, not left as a note.
    let enc = server
        .key
        .to_encrypted_pem_with_iterations(b"pw", 1000)
        .unwrap();
    let server_key = env.write_secret("server.key", enc.as_bytes());
    let pass = env.write_secret("server.pass", b"pw\n");
    let feed = pki.leaf_at(
        Profile::Client,
        "feed",
        &[],
        now - Duration::days(60),
        Duration::days(30),
    );
    let feed_pem = write_pem(&env, "feed-client.pem", "CERTIFICATE", &[&feed.cert.der]);
    let feed_key = env.write_secret("feed-client-key.pem", feed.key.to_pem().as_bytes());
    let up = pki.leaf_at(Profile::Client, "up", &[], now, Duration::days(90));
    let up_pem = write_pem(&env, "upstream-client.pem", "CERTIFICATE", &[&up.cert.der]);
    let other_key = env.write_secret("other-key.pem", feed.key.to_pem().as_bytes());
    let config = |client_ca: &str| {
        format!(
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nupstream = \"https://127.0.0.1:1\"\n\
upstream_ca = [\"{good_bundle}\"]\nclient_ca = [\"{client_ca}\"]\n\
[listener.upstream_certificate]\ncert = \"{up_pem}\"\nkey = \"{}\"\n\
[listener.policy]\nallow_cn = [\"app\"]\n\
[listener.revocation_feed]\nurls = [\"https://127.0.0.1:2\"]\nca = [\"{good_bundle}\"]\n\
[listener.revocation_feed.certificate]\ncert = \"{feed_pem}\"\nkey = \"{}\"\n\
[[listener.certificate]]\ncert = \"{server_pem}\"\nkey = \"{}\"\nkey_passphrase_file = \"{}\"\n",
            other_key.display(),
            feed_key.display(),
            server_key.display(),
            pass.display(),
        )
    };
    let gw = env.write("gateway.toml", config(&bundle).as_bytes());
    let (code, found) = doctor(&env, &["--config", gw.to_str().unwrap()]);
    assert_eq!(
        found,
        set(&[
            ("expired", "bundle.pem"),
            ("expired", "feed-client.pem"),
            ("key_mismatch", "upstream-client.pem"),
        ])
    );
    assert_eq!(code, 1);
    // With those fixed, the configuration is clean.
    std::fs::write(&other_key, up.key.to_pem().as_bytes()).unwrap();
    let fresh = pki.leaf_at(Profile::Client, "feed", &[], now, Duration::days(30));
    std::fs::write(&feed_pem, pem_io::encode("CERTIFICATE", &fresh.cert.der)).unwrap();
    std::fs::write(&feed_key, fresh.key.to_pem().as_bytes()).unwrap();
    let gw = env.write("gateway.toml", config(&good_bundle).as_bytes());
    let (code, found) = doctor(&env, &["--config", gw.to_str().unwrap()]);
    assert_eq!(found, set(&[]));
    assert_eq!(code, 0);
}

/// A key the configuration names that mtls cannot load (encrypted with PBKDF2-HMAC-SHA1, the
/// default of OpenSSL 1.0 and BouncyCastle) is an error of the configuration, which would not
/// start, not an informational "unchecked" note; the same key audited as a file alone stays a
/// note. One finding per problem: the configured key is reported once, as `unreadable`, not
/// also with its file's `key_unchecked` note (which `--config` used to print too), whichever
/// way the key is reached.
#[test]
fn a_configured_key_mtls_cannot_load_is_an_error() {
    let env = Env::new();
    let pki = TestPki::new("gwkey");
    let now = OffsetDateTime::now_utc();
    let server = pki.leaf_at(
        Profile::Server,
        "gw.example",
        &["gw.example"],
        now,
        Duration::days(90),
    );
    let server_pem = write_pem(&env, "server.pem", "CERTIFICATE", &[&server.cert.der]);
    let bundle = write_pem(&env, "bundle.pem", "CERTIFICATE", &[&pki.root_der()]);
    env.write_secret("plain.key", server.key.to_pem().as_bytes());
    let pass = env.write_secret("server.pass", b"pw\n");
    env.openssl(&[
        "pkcs8",
        "-topk8",
        "-in",
        &env.p("plain.key"),
        "-passout",
        "pass:pw",
        "-v2",
        "aes-256-cbc",
        "-v2prf",
        "hmacWithSHA1",
        "-out",
        &env.p("server.key"),
    ])
    .ok();
    std::fs::set_permissions(
        env.path("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::remove_file(env.path("plain.key")).unwrap();
    let gw = env.write(
        "gateway.toml",
        format!(
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:1\"\n\
client_ca = [\"{}\"]\n[listener.policy]\nallow_cn = [\"app\"]\n\
[[listener.certificate]]\ncert = \"{}\"\nkey = \"{}\"\nkey_passphrase_file = \"{}\"\n",
            bundle,
            server_pem,
            env.p("server.key"),
            pass.display(),
        )
        .as_bytes(),
    );
    let about_key = |found: &[(String, String)]| -> Vec<(String, String)> {
        found
            .iter()
            .filter(|(_, file)| file == "server.key")
            .cloned()
            .collect()
    };
    let unreadable = vec![("unreadable".to_string(), "server.key".to_string())];
    let (code, found) = doctor_findings(&env, &["--config", gw.to_str().unwrap()]);
    assert_eq!(about_key(&found), unreadable, "{found:?}");
    assert_eq!(code, 1);
    // Named on the command line as well as by the configuration: still once.
    let (code, found) = doctor_findings(
        &env,
        &[&env.p("server.key"), "--config", gw.to_str().unwrap()],
    );
    assert_eq!(about_key(&found), unreadable, "{found:?}");
    assert_eq!(code, 1);
    // Alone, the key is a file mtls cannot check: a note.
    let (code, found) = doctor_findings(&env, &[&env.p("server.key")]);
    assert_eq!(
        about_key(&found),
        vec![("key_unchecked".to_string(), "server.key".to_string())],
        "{found:?}"
    );
    assert_eq!(code, 0);
}

/// A file name that is not UTF-8 is reported (as displayed) in the JSON output, not a panic.
#[test]
fn json_output_survives_file_names_that_are_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    std::fs::create_dir(env.path("odd")).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"bad\xff.pem");
    std::fs::write(env.path("odd").join(name), b"not a certificate").unwrap();
    let (code, found) = doctor(&env, &[&env.p("odd")]);
    assert_eq!(found, set(&[("unreadable", "bad\u{fffd}.pem")]));
    assert_eq!(code, 1);
}

/// A FIFO named like a certificate would hang the audit: it is reported, not read.
#[test]
fn a_file_that_is_not_a_regular_file_is_reported_not_read() {
    let env = Env::new();
    let fifo = env.path("pipe.crt");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (code, found) = doctor(&env, &[fifo.to_str().unwrap()]);
    assert_eq!(found, set(&[("unreadable", "pipe.crt")]));
    assert_eq!(code, 1);
}

/// Links to directories are not followed: ten links back up (`sN -> .`) beside an expired
/// certificate give one finding, not one per path through them (11,111 before).
#[test]
fn directory_links_do_not_multiply_the_audit() {
    let env = Env::new();
    let pki = TestPki::new("doctor-loops");
    let now = OffsetDateTime::now_utc();
    let old = pki.leaf_at(
        Profile::Client,
        "old",
        &[],
        now - Duration::days(100),
        Duration::days(30),
    );
    let dir = env.path("watched");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("old.crt"),
        mtls_pki::pem_io::encode("CERTIFICATE", &old.cert.der),
    )
    .unwrap();
    for i in 0..10 {
        std::os::unix::fs::symlink(".", dir.join(format!("s{i}"))).unwrap();
    }
    let (_, findings) = doctor_findings(&env, &[dir.to_str().unwrap()]);
    let expired = findings
        .iter()
        .filter(|(code, _)| code == "expired")
        .count();
    assert_eq!(expired, 1, "{findings:?}");
}

/// A key that is not the certificate's is found in the layouts mtls writes besides
/// NAME.crt/NAME.key: `mtls enroll`'s cert.pem beside key.pem, and a combined file (chain and
/// key, as `mtls renew --rotate-key` needs it); matching ones give no finding.
#[test]
fn mismatched_keys_are_found_in_enroll_and_combined_layouts() {
    let env = Env::new();
    let pki = TestPki::new("doctor-layouts");
    let (a, b) = (pki.client("a"), pki.client("b"));
    let inter = pki.intermediate.der().to_vec();
    let chain = |leaf: &[u8]| {
        format!(
            "{}{}",
            pem_io::encode("CERTIFICATE", leaf),
            pem_io::encode("CERTIFICATE", &inter)
        )
    };
    for (dir, key) in [("enr-bad", &b.key), ("enr-good", &a.key)] {
        std::fs::create_dir_all(env.path(dir)).unwrap();
        env.write(&format!("{dir}/cert.pem"), chain(&a.cert.der).as_bytes());
        env.write_secret(&format!("{dir}/key.pem"), key.to_pem().as_bytes());
    }
    for (name, key) in [("comb-bad.pem", &b.key), ("comb-good.pem", &a.key)] {
        env.write_secret(
            name,
            format!("{}{}", chain(&a.cert.der), key.to_pem().as_str()).as_bytes(),
        );
    }
    let mismatches = |args: &[&str]| {
        let (_, found) = doctor_findings(&env, args);
        found
            .into_iter()
            .filter(|(code, _)| code == "key_mismatch")
            .map(|(_, file)| file)
            .collect::<Vec<_>>()
    };
    assert_eq!(mismatches(&[&env.p("enr-bad")]), vec!["cert.pem"]);
    assert!(mismatches(&[&env.p("enr-good")]).is_empty());
    assert_eq!(mismatches(&[&env.p("comb-bad.pem")]), vec!["comb-bad.pem"]);
    assert!(mismatches(&[&env.p("comb-good.pem")]).is_empty());
}

/// The summary says how many files were audited (an audit of nothing is not a clean bill),
/// and a directory too deep to be walked is named, not passed over in silence.
#[test]
fn the_summary_counts_files_and_names_directories_not_audited() {
    let env = Env::new();
    let pki = TestPki::new("doctor-count");
    let leaf = pki.client("counted");
    let top = env.path("top");
    let deep = top.join("a/b/c/d/e/f");
    std::fs::create_dir_all(&deep).unwrap();
    let pem = mtls_pki::pem_io::encode("CERTIFICATE", &leaf.cert.der);
    std::fs::write(top.join("one.crt"), &pem).unwrap();
    std::fs::write(top.join("a/two.crt"), &pem).unwrap();
    std::fs::write(top.join("notes.txt"), "not a certificate").unwrap();
    std::fs::write(deep.join("hidden.crt"), &pem).unwrap();
    let r = env.mtls(&["doctor", "--json", top.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["summary"]["files"], 2, "{}", r.stdout);
    let (_, findings) = doctor(&env, &[top.to_str().unwrap()]);
    assert!(
        findings.contains(&("not_audited".to_string(), "e".to_string())),
        "{findings:?}"
    );
    let text = env.mtls(&["doctor", top.to_str().unwrap()]).stdout;
    assert!(text.contains("2 file(s) audited"), "{text}");
}
