//! Round trips of the `CallStore` operations a call's life makes, against a real
//! `redis-server` that this bench starts on a free port (callworker-testkit: AOF on,
//! `appendfsync everysec`, `noeviction`, as production should run it), against a local
//! three-primary Redis Cluster of such servers (`store_redis_cluster`), and against
//! `MemoryStore` for comparison.
//!
//! - `create_attach`: a new call stored, then taken over by a session (epoch 0 → 1).
//! - `checkpoint`: a 1.5 KB checkpoint plus 8 KB of recording (4 KB per track: half a
//!   second of 8 kHz μ-law each way), which also renews the lease. Each call takes
//!   [`CHECKPOINTS_PER_CALL`] of them and is then replaced (untimed), so recordings stay the
//!   size they have early in a call and Redis memory stays bounded.
//! - `renew`, `get` (the record with its checkpoint) and `end` (with a final checkpoint).
//! - `pipelined/checkpoint_x100_*`: one checkpoint for each of 100 calls, issued
//!   concurrently (one task per call, as each call's checkpoint writer is) or one after
//!   another; criterion reports checkpoints per second. `RedisStore` multiplexes every call
//!   on one connection, so the concurrent batch shows what cross-call pipelining buys.
//!
//! Only the named operation is timed (`iter_custom`); the setup a step needs (creating the
//! call to end, replacing a call whose recording has grown) is not. The runtime is a
//! two-thread tokio runtime, as the worker's on this machine.
//!
//! Run with `cargo bench -p callworker-benches --bench store` (`-- --quick` for a fast
//! pass). Needs `redis-server` (`apt-get install -y redis-server`); without it the bench
//! fails rather than skip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use callworker_call::{CallId, EndReason, Epoch, TenantId, WorkerId};
use callworker_store::memory::MemoryStore;
use callworker_store::redis_store::{RedisMode, RedisStore, RedisStoreOptions};
use callworker_store::{AttemptId, CallStore, Checkpoint, NewCall, RecordingChunk};
use callworker_testkit::{RedisCluster, RedisServer};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

/// Size of the checkpoint blob: a busy call's checkpoint is 1–2 KB.
const CHECKPOINT_BYTES: usize = 1_536;
/// Recording appended per checkpoint, per track.
const RECORDING_TRACK_CHUNK_BYTES: usize = 4_096;
/// Checkpoints a call takes before the bench replaces it (untimed).
const CHECKPOINTS_PER_CALL: u64 = 16;
/// Calls in a pipelined batch.
const BATCH_CALLS: usize = 100;
/// The worker's default lease (config/default.toml `lease_ms`).
const LEASE: Duration = Duration::from_secs(5);
/// How long Redis keeps ended calls: short, so the bench's ended calls and their
/// recordings leave Redis while it runs.
const ENDED_RETENTION: Duration = Duration::from_millis(200);
/// MemoryStore capacity: room for the live calls of any step; ended ones are evicted.
const MEMORY_CAPACITY: usize = 512;

/// What every operation writes, built once.
struct Payload {
    checkpoint: Bytes,
    recording: RecordingChunk,
}

impl Payload {
    fn new() -> Payload {
        let bytes = |n: usize, salt: usize| -> Bytes {
            (0..n).map(|i| ((i * 31 + salt) % 251) as u8).collect::<Vec<u8>>().into()
        };
        Payload {
            checkpoint: bytes(CHECKPOINT_BYTES, 0),
            recording: RecordingChunk {
                inbound: bytes(RECORDING_TRACK_CHUNK_BYTES, 1),
                outbound: bytes(RECORDING_TRACK_CHUNK_BYTES, 2),
            },
        }
    }

    fn checkpoint(&self, seq: u64) -> Checkpoint {
        Checkpoint { seq, blob: self.checkpoint.clone() }
    }
}

/// One store under test, with the call ids it hands out.
struct Bench {
    store: Arc<dyn CallStore>,
    payload: Arc<Payload>,
    tenant: TenantId,
    owner: WorkerId,
    next_call: u64,
}

/// A call this bench created and owns.
#[derive(Clone)]
struct LiveCall {
    id: CallId,
    epoch: Epoch,
    /// Sequence number of the last checkpoint written.
    seq: u64,
}

impl Bench {
    fn new(store: Arc<dyn CallStore>) -> Bench {
        Bench {
            store,
            payload: Arc::new(Payload::new()),
            tenant: TenantId::parse("bench").expect("valid tenant"),
            owner: WorkerId::parse("bench-worker").expect("valid worker id"),
            next_call: 0,
        }
    }

    fn next_id(&mut self) -> CallId {
        self.next_call += 1;
        CallId::parse(&format!("bench-{}-{}", std::process::id(), self.next_call)).expect("valid call id")
    }

    async fn create_attach(&mut self) -> LiveCall {
        let id = self.next_id();
        let new = NewCall {
            call_id: id.clone(),
            tenant: self.tenant.clone(),
            checkpoint: self.payload.checkpoint(1),
        };
        self.store.create(new).await.expect("create");
        let attempt = AttemptId(format!("a-{}", self.next_call));
        let attached = self.store.attach(&id, &attempt, &self.owner, Epoch(0), LEASE).await.expect("attach");
        LiveCall { id, epoch: attached.epoch, seq: 1 }
    }

    async fn checkpoint(&self, call: &mut LiveCall) {
        call.seq += 1;
        checkpoint(&*self.store, &self.payload, call).await;
    }

    async fn end(&self, call: &LiveCall) {
        let last = Some(self.payload.checkpoint(call.seq + 1));
        self.store
            .end(&call.id, call.epoch, EndReason::Completed, last, RecordingChunk::default())
            .await
            .expect("end");
    }

    /// `call` after one more checkpoint, replaced by a fresh call (untimed) once it has
    /// taken [`CHECKPOINTS_PER_CALL`].
    async fn rotate(&mut self, call: &mut LiveCall) {
        if call.seq > CHECKPOINTS_PER_CALL {
            self.end(call).await;
            *call = self.create_attach().await;
        }
    }
}

async fn checkpoint(store: &dyn CallStore, payload: &Payload, call: &LiveCall) {
    store
        .checkpoint(&call.id, call.epoch, payload.checkpoint(call.seq), payload.recording.clone(), LEASE)
        .await
        .expect("checkpoint");
}

fn bench_ops(c: &mut Criterion, rt: &Runtime, name: &str, store: Arc<dyn CallStore>) {
    let mut bench = Bench::new(store);
    let mut group = c.benchmark_group(format!("store_{name}"));

    group.bench_function("create_attach", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let call = bench.create_attach().await;
                    timed += start.elapsed();
                    bench.end(&call).await;
                }
                timed
            })
        })
    });

    let mut call = rt.block_on(bench.create_attach());
    group.throughput(Throughput::Bytes((CHECKPOINT_BYTES + 2 * RECORDING_TRACK_CHUNK_BYTES) as u64));
    group.bench_function("checkpoint_1.5k_rec_8k", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    bench.checkpoint(&mut call).await;
                    timed += start.elapsed();
                    bench.rotate(&mut call).await;
                }
                timed
            })
        })
    });
    group.throughput(Throughput::Elements(1));

    // A call with a checkpoint stored, renewed and read over and over.
    group.bench_function("renew", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    bench.store.renew(&call.id, call.epoch, LEASE).await.expect("renew");
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("get", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let record = bench.store.get(&call.id).await.expect("get");
                    std::hint::black_box(record);
                }
                start.elapsed()
            })
        })
    });

    group.bench_function("end", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let call = bench.create_attach().await;
                    let start = Instant::now();
                    bench.end(&call).await;
                    timed += start.elapsed();
                }
                timed
            })
        })
    });
    rt.block_on(bench.end(&call));
    group.finish();

    bench_pipelined(c, rt, name, &mut bench);
}

/// One checkpoint for each of [`BATCH_CALLS`] calls, concurrently and one by one.
fn bench_pipelined(c: &mut Criterion, rt: &Runtime, name: &str, bench: &mut Bench) {
    let mut calls = rt.block_on(async {
        let mut calls = Vec::with_capacity(BATCH_CALLS);
        for _ in 0..BATCH_CALLS {
            calls.push(bench.create_attach().await);
        }
        calls
    });
    let mut group = c.benchmark_group(format!("store_{name}_pipelined"));
    group.throughput(Throughput::Elements(BATCH_CALLS as u64));

    group.bench_function(format!("checkpoint_x{BATCH_CALLS}_concurrent"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    for call in &mut calls {
                        call.seq += 1;
                    }
                    let start = Instant::now();
                    let mut tasks = JoinSet::new();
                    for call in &calls {
                        let (store, payload, call) =
                            (bench.store.clone(), bench.payload.clone(), call.clone());
                        tasks.spawn(async move { checkpoint(&*store, &payload, &call).await });
                    }
                    while let Some(done) = tasks.join_next().await {
                        done.expect("checkpoint task");
                    }
                    timed += start.elapsed();
                    for call in &mut calls {
                        bench.rotate(call).await;
                    }
                }
                timed
            })
        })
    });

    group.bench_function(format!("checkpoint_x{BATCH_CALLS}_sequential"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    for call in &mut calls {
                        bench.checkpoint(call).await;
                    }
                    timed += start.elapsed();
                    for call in &mut calls {
                        bench.rotate(call).await;
                    }
                }
                timed
            })
        })
    });
    group.finish();
    rt.block_on(async {
        for call in &calls {
            bench.end(call).await;
        }
    });
}

fn bench_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the tokio runtime");

    // Fail loudly without redis-server: a skipped store bench would read as a pass.
    let server = rt.block_on(RedisServer::start()).unwrap_or_else(|e| {
        panic!("the store bench needs a local redis-server (apt-get install -y redis-server): {e:#}")
    });
    let options = RedisStoreOptions {
        namespace: "bench".to_owned(),
        ended_retention: ENDED_RETENTION,
        ..RedisStoreOptions::with_url(&server.url())
    };
    let redis: Arc<dyn CallStore> =
        Arc::new(rt.block_on(RedisStore::connect(options)).expect("connect to the bench's redis-server"));

    let cluster = rt.block_on(RedisCluster::start(3)).unwrap_or_else(|e| {
        panic!("the store bench needs redis-server and redis-cli (apt-get install -y redis-server): {e:#}")
    });
    let options = RedisStoreOptions {
        mode: RedisMode::Cluster,
        namespace: "bench".to_owned(),
        ended_retention: ENDED_RETENTION,
        ..RedisStoreOptions::with_url(&cluster.seed_urls())
    };
    let redis_cluster: Arc<dyn CallStore> =
        Arc::new(rt.block_on(RedisStore::connect(options)).expect("connect to the bench's redis cluster"));

    let memory: Arc<dyn CallStore> = Arc::new(MemoryStore::new(MEMORY_CAPACITY));
    bench_ops(c, &rt, "memory", memory);
    bench_ops(c, &rt, "redis", redis);
    bench_ops(c, &rt, "redis_cluster", redis_cluster);
    // Killed by PID and their directories removed when dropped.
    drop(server);
    drop(cluster);
}

criterion_group!(benches, bench_store);
criterion_main!(benches);
