//! A server's files for the reload tests: certificates of a [`TestPki`] (chains with its
//! intermediate), their keys and the CA bundle (intermediate and root), written owner-only,
//! and the [`ServerFiles`] naming them.
#![allow(clippy::unwrap_used, dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mtls_serve::tls::{CertificateFiles, ClientAuth, ServerFiles};
use mtls_test_util::TestPki;

/// Writes `data` to `dir/name`, owner-only.
pub fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// One server certificate per name (`s0.pem`/`s0.key`, `s1.pem`/`s1.key`, …), the CA bundle
/// `ca.pem`, and the files of a server requiring client certificates with `crl`.
pub fn server_files(dir: &Path, pki: &TestPki, names: &[&str], crl: Vec<PathBuf>) -> ServerFiles {
    let enc = |der: &[u8]| mtls_pki::pem_io::encode("CERTIFICATE", der);
    let certificates = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let server = pki.server(&[name]);
            let chain = format!("{}{}", enc(&server.cert.der), enc(&pki.intermediate_der()));
            CertificateFiles {
                cert: write(dir, &format!("s{i}.pem"), chain.as_bytes()),
                key: write(dir, &format!("s{i}.key"), server.key.to_pem().as_bytes()),
                key_passphrase_file: None,
            }
        })
        .collect();
    let bundle = format!("{}{}", enc(&pki.intermediate_der()), enc(&pki.root_der()));
    ServerFiles {
        certificates,
        client_ca: vec![write(dir, "ca.pem", bundle.as_bytes())],
        crl,
        client_auth: ClientAuth::Required,
        revocation: Default::default(),
        alpn: vec![b"http/1.1".to_vec()],
        resumption: Default::default(),
    }
}
