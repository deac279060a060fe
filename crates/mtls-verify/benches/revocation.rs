//! Client-chain verification cost with CRLs of growing size: mtls's TrustState (CRL verified once
//! at load, revoked serials in a hash set, validated paths cached) against rustls-webpki's own
//! CRL handling (every CRL re-parsed and its signature re-verified on every verification).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mtls_pki::revocation::{build_crl, RevokedEntry};
use mtls_pki::Serial;
use mtls_test_util::TestPki;
use mtls_verify::{RevocationOptions, TrustState};
use rustls_pki_types::{CertificateRevocationListDer, UnixTime};
use time::{Duration, OffsetDateTime};

fn crl_with(pki: &TestPki, n: usize) -> CertificateRevocationListDer<'static> {
    let now = OffsetDateTime::now_utc();
    let entries: Vec<RevokedEntry> = (0..n)
        .map(|_| RevokedEntry {
            serial: Serial::random().unwrap(),
            revoked_at: now,
            reason: None,
        })
        .collect();
    build_crl(&pki.intermediate, 1, now, Duration::days(1), &entries).unwrap()
}

fn bench(c: &mut Criterion) {
    let pki = TestPki::new("bench");
    let client = pki.client("client");
    let inter = [pki.intermediate_der()];
    let roots = vec![pki.root_der(), pki.intermediate_der()];
    let mut g = c.benchmark_group("verify_client");
    g.sample_size(20);
    for n in [0usize, 10_000, 100_000, 1_000_000] {
        let crl = crl_with(&pki, n);
        let state = TrustState::new(
            1,
            roots.clone(),
            std::slice::from_ref(&crl),
            RevocationOptions::default(),
        )
        .unwrap();
        g.bench_with_input(BenchmarkId::new("mtls-cached", n), &n, |b, _| {
            b.iter(|| {
                state
                    .verify_client(
                        black_box(&client.cert.der),
                        &inter,
                        OffsetDateTime::now_utc(),
                    )
                    .unwrap()
            })
        });
        g.bench_with_input(BenchmarkId::new("mtls-uncached", n), &n, |b, _| {
            // A fresh state per iteration would measure CRL loading; instead measure a cache miss
            // by verifying a different (never seen) certificate each time.
            b.iter_batched(
                || pki.client("fresh"),
                |leaf| {
                    state
                        .verify_client(&leaf.cert.der, &inter, OffsetDateTime::now_utc())
                        .unwrap()
                },
                criterion::BatchSize::SmallInput,
            )
        });
        let owned = webpki::OwnedCertRevocationList::from_der(&crl).unwrap();
        let crls = [webpki::CertRevocationList::from(owned)];
        let crl_refs: Vec<&webpki::CertRevocationList<'_>> = crls.iter().collect();
        let anchors = vec![webpki::anchor_from_trusted_cert(&roots[0])
            .unwrap()
            .to_owned()];
        g.bench_with_input(BenchmarkId::new("webpki-crl", n), &n, |b, _| {
            b.iter(|| {
                let ee = webpki::EndEntityCert::try_from(&client.cert.der).unwrap();
                let rev = webpki::RevocationOptionsBuilder::new(&crl_refs)
                    .unwrap()
                    .with_depth(webpki::RevocationCheckDepth::EndEntity)
                    .build();
                ee.verify_for_usage(
                    mtls_verify::SIGNATURE_ALGORITHMS,
                    &anchors,
                    &inter,
                    UnixTime::now(),
                    webpki::KeyUsage::client_auth(),
                    Some(rev),
                    None,
                )
                .map(|_| ())
                .unwrap()
            })
        });
    }
    g.finish();
    let mut load = c.benchmark_group("load_crl");
    load.sample_size(10);
    for n in [100_000usize, 1_000_000] {
        let crl = crl_with(&pki, n);
        load.bench_with_input(BenchmarkId::new("TrustState::new", n), &n, |b, _| {
            b.iter(|| {
                TrustState::new(
                    1,
                    roots.clone(),
                    std::slice::from_ref(&crl),
                    RevocationOptions::default(),
                )
                .unwrap()
            })
        });
    }
    load.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
