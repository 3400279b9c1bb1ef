//! Settlement throughput into Postgres on one hot SKU: the batched settler against the same
//! settler applying one event per transaction, side by side in one run.
//!
//! `cargo bench --bench settlement` (needs Redis and Postgres; see the README).

mod support;

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flashgate::settler::{Settler, SettlerSettings};

const HOLDS_PER_ITERATION: u64 = 2_000;

fn settlement(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let Some(env) = runtime.block_on(support::BenchEnv::connect("settle", 100_000_000, None))
    else {
        return;
    };
    let mut group = c.benchmark_group("settlement");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(HOLDS_PER_ITERATION));
    for (name, batch_size) in [("batched_500", 500), ("per_event_transaction", 1)] {
        let settler = Settler::new(
            env.gate.clone(),
            env.store.clone(),
            SettlerSettings {
                batch_size,
                ..SettlerSettings::default()
            },
        );
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(async {
                    let mut settling = Duration::ZERO;
                    for _ in 0..iterations {
                        // Untimed: the gate admits a burst; only settling it is measured.
                        env.make_holds(HOLDS_PER_ITERATION, 64).await;
                        let start = Instant::now();
                        let applied = settler.drain(&env.sku).await.expect("drain");
                        settling += start.elapsed();
                        assert_eq!(applied as u64, HOLDS_PER_ITERATION);
                    }
                    settling
                })
            })
        });
    }
    group.finish();
    runtime.block_on(env.cleanup());
}

criterion_group!(benches, settlement);
criterion_main!(benches);
