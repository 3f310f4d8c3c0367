//! embed-store: get_many, exact search (f32 / f16 / int8), batch exact search (scan vs
//! GEMM on the CPU) and HNSW search.
//! `cargo bench --bench embed_store`; sizes are kept small enough for 2 cores.

use std::hint::black_box;
use std::sync::Arc;

use candle_core::Device;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mosaic::embed_store::hnsw::{Hnsw, HnswParams, Scratch};
use mosaic::embed_store::matrix::DeviceMatrix;
use mosaic::embed_store::search::Filter;
use mosaic::embed_store::{
    GenerationSpec, ItemId, Metric, RamDirectory, Snapshot, StorageType, Store,
};

const N: usize = 100_000;
const DIM: usize = 64;

fn data(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n * d)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn snapshot(storage: StorageType) -> Snapshot {
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("g", DIM, storage))
        .unwrap();
    let ids: Vec<ItemId> = (0..N as u64).map(ItemId).collect();
    w.put_many("g", &ids, &data(N, DIM, 1), None).unwrap();
    w.set_current("g").unwrap();
    w.commit().unwrap();
    store.snapshot().unwrap()
}

fn bench(c: &mut Criterion) {
    let f32_snap = snapshot(StorageType::F32);
    let ids: Vec<ItemId> = (0..1000u64)
        .map(|i| ItemId((i * 7919) % N as u64))
        .collect();
    let mut out = vec![0f32; ids.len() * DIM];
    let mut g = c.benchmark_group("get_many");
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function("1000 ids, 100k x 64 f32", |b| {
        b.iter(|| black_box(f32_snap.get_many(&ids, &mut out).unwrap()))
    });
    g.finish();

    let query = data(1, DIM, 9);
    let mut g = c.benchmark_group("exact_search_100k_x_64");
    g.throughput(Throughput::Elements(N as u64));
    for storage in [StorageType::F32, StorageType::F16, StorageType::Int8] {
        let snap = if storage == StorageType::F32 {
            f32_snap.clone()
        } else {
            snapshot(storage)
        };
        g.bench_function(format!("{storage:?} top10 IP"), |b| {
            b.iter(|| {
                black_box(
                    snap.search(&query, 10, Metric::InnerProduct, &Filter::none())
                        .unwrap(),
                )
            })
        });
    }
    g.finish();

    // A batch of 64 queries: 64 scans (in parallel) vs one GEMM per chunk on the CPU.
    let queries = data(64, DIM, 11);
    let matrix = DeviceMatrix::build(&f32_snap, Metric::InnerProduct, &Device::Cpu).unwrap();
    let mut g = c.benchmark_group("exact_batch64_100k_x_64");
    g.throughput(Throughput::Elements(64));
    g.bench_function("scan (search_batch)", |b| {
        b.iter(|| {
            black_box(
                f32_snap
                    .search_batch(&queries, 10, Metric::InnerProduct, &Filter::none())
                    .unwrap(),
            )
        })
    });
    g.bench_function("gemm (DeviceMatrix, cpu)", |b| {
        b.iter(|| {
            black_box(
                matrix
                    .search_batch(&f32_snap, &queries, 10, &Filter::none())
                    .unwrap(),
            )
        })
    });
    g.finish();

    let index = Hnsw::build(
        &f32_snap,
        Metric::InnerProduct,
        HnswParams {
            m: 16,
            ef_construction: 100,
            seed: 1,
        },
    )
    .unwrap();
    let mut scratch = Scratch::new(index.len());
    let mut g = c.benchmark_group("hnsw_search_100k_x_64");
    for ef in [16, 64, 256] {
        g.bench_function(format!("ef {ef} top10"), |b| {
            b.iter(|| {
                black_box(
                    index
                        .search(&f32_snap, &query, 10, ef, &Filter::none(), &mut scratch)
                        .unwrap(),
                )
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
