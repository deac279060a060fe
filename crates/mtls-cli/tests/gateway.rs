//! The gateway against curl: accepted and rejected clients, policy, identity headers, attacks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::gw::{curl, http_args, Files, Gateway, Upstream};

#[test]
fn valid_client_reaches_upstream_with_identity() {
    let dir = tempfile::tempdir().unwrap();
    let f = Files::new(dir.path());
    let up = Upstream::start();
    let g = Gateway::start(&http_args(&f, &up, &["--allow-any-trusted"]));
    let c = f.client("client-app");
    let r = curl(&g, &f, Some(&c), "/api/secure", &[]);
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    let h = up.last();
    let xfcc: Vec<_> = h.iter().filter(|(k, _)| k == "x-forwarded-client-cert").collect();
    assert_eq!(xfcc.len(), 1);
    assert!(xfcc[0].1.contains("Subject=\"CN=client-app\""), "{xfcc:?}");
    assert!(h.iter().any(|(k, v)| k == "client-cert" && v.starts_with(':') && v.ends_with(':')));
}
