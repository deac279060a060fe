//! CRL building benchmark: `build_crl` from a P-256 intermediate CA with 100 000 and 1 000 000
//! revoked entries (16-octet random serials, every tenth with a reason code), the sizes an
//! online CA reaches after years of short-lived certificates.
//!
//! Before measuring, each size is built once and its DER size printed. One iteration at 1M takes
//! seconds, so both sizes use 10 flat samples of one iteration. Run with
//! `cargo bench -p mtls-pki --bench crl`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration as StdDuration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use mtls_pki::issue;
use mtls_pki::revocation::{build_crl, RevocationReason, RevokedEntry};
use mtls_pki::{KeyAlgorithm, PrivateKey, Serial, Subject};
use time::{Duration, OffsetDateTime};

fn entries(n: usize, now: OffsetDateTime) -> Vec<RevokedEntry> {
    (0..n)
        .map(|i| RevokedEntry {
            serial: Serial::random().unwrap(),
            revoked_at: now - Duration::seconds(i as i64),
            reason: (i % 10 == 0).then_some(RevocationReason::KeyCompromise),
        })
        .collect()
}

fn crl(c: &mut Criterion) {
    let now = OffsetDateTime::now_utc();
    let root = issue::new_root(
        &Subject::cn("Bench Root CA"),
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        now - Duration::days(1),
        Duration::days(3650),
    )
    .unwrap();
    let ca = issue::new_intermediate(
        &root,
        &Subject::cn("Bench Intermediate CA"),
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        now - Duration::days(1),
        Duration::days(1000),
        0,
    )
    .unwrap();

    let mut group = c.benchmark_group("crl/build");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(StdDuration::from_millis(1))
        .measurement_time(StdDuration::from_secs(10));
    for n in [100_000usize, 1_000_000] {
        let list = entries(n, now);
        let start = Instant::now();
        let der = build_crl(&ca, 1, now, Duration::days(7), &list).unwrap();
        eprintln!(
            "crl/build/{n}: one build took {:.2?}, DER size {} bytes ({:.1} bytes/entry)",
            start.elapsed(),
            der.len(),
            der.len() as f64 / n as f64
        );
        group.bench_function(n.to_string(), |b| {
            b.iter(|| build_crl(&ca, 1, now, Duration::days(7), black_box(&list)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, crl);
criterion_main!(benches);
