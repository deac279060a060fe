//! Issuing benchmarks, per key type in [`KeyAlgorithm::ALL`]:
//!
//! * `issue/keygen+issue/<alg>`: generate a key of that type and issue a client certificate
//!   for it from a P-256 intermediate CA (what `mtls issue` does);
//! * `issue/sign-csr/<alg>`: parse a pre-made CSR for a key of that type (PEM decoding and
//!   signature verification included) and issue a client certificate for its public key (what
//!   `mtls sign` does).
//!
//! RSA 3072/4096 key generation takes from a fraction of a second to several seconds (prime
//! search is random), so those benchmarks take few, single-iteration samples; look at the
//! median. Run with `cargo bench -p mtls-pki --bench issue`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration as StdDuration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode};
use mtls_pki::issue::{self, LeafRequest};
use mtls_pki::{csr, KeyAlgorithm, PrivateKey, Profile, San, Subject};
use time::{Duration, OffsetDateTime};

/// Criterion settings for one benchmark, by how slow one iteration is.
fn configure(group: &mut BenchmarkGroup<'_, WallTime>, alg: KeyAlgorithm, keygen: bool) {
    match alg {
        KeyAlgorithm::Rsa { bits } if keygen && bits >= 3072 => {
            // ~0.3 s (3072) to several seconds (4096) per iteration: 10 samples of 1 or 2.
            group
                .sampling_mode(SamplingMode::Flat)
                .sample_size(10)
                .warm_up_time(StdDuration::from_millis(500))
                .measurement_time(StdDuration::from_secs(5));
        }
        KeyAlgorithm::Rsa { .. } if keygen => {
            // RSA-2048: ~50-200 ms per iteration.
            group
                .sampling_mode(SamplingMode::Flat)
                .sample_size(20)
                .warm_up_time(StdDuration::from_secs(1))
                .measurement_time(StdDuration::from_secs(5));
        }
        _ => {
            group
                .sampling_mode(SamplingMode::Auto)
                .sample_size(50)
                .warm_up_time(StdDuration::from_secs(1))
                .measurement_time(StdDuration::from_secs(3));
        }
    }
}

fn issuing(c: &mut Criterion) {
    let now = OffsetDateTime::now_utc();
    let root = issue::new_root(
        &Subject::cn("Bench Root CA"),
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        now,
        Duration::days(3650),
    )
    .unwrap();
    let ca = issue::new_intermediate(
        &root,
        &Subject::cn("Bench Intermediate CA"),
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        now,
        Duration::days(1000),
        0,
    )
    .unwrap();
    let subject = Subject::cn("bench-client");
    let sans = vec![San::uri("spiffe://bench.example/ns/default/sa/client").unwrap()];
    let request = LeafRequest {
        profile: Profile::Client,
        subject: subject.clone(),
        sans: sans.clone(),
        lifetime: Duration::days(90),
        urls: Default::default(),
    };

    let mut group = c.benchmark_group("issue/keygen+issue");
    for alg in KeyAlgorithm::ALL {
        configure(&mut group, alg, true);
        group.bench_function(alg.to_string(), |b| {
            b.iter(|| {
                let key = PrivateKey::generate(black_box(alg)).unwrap();
                issue::issue_leaf(&ca, key.key_pair(), black_box(&request), now).unwrap()
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("issue/sign-csr");
    for alg in KeyAlgorithm::ALL {
        let key = PrivateKey::generate(alg).unwrap();
        let csr_pem = csr::create(&key, &subject, &sans).unwrap();
        configure(&mut group, alg, false);
        group.bench_function(alg.to_string(), |b| {
            b.iter(|| {
                let info = csr::parse(black_box(csr_pem.as_bytes())).unwrap();
                let request = LeafRequest {
                    profile: Profile::Client,
                    subject: info.subject,
                    sans: info.sans,
                    lifetime: Duration::days(90),
                    urls: Default::default(),
                };
                issue::issue_leaf(&ca, &info.public_key, &request, now).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, issuing);
criterion_main!(benches);
