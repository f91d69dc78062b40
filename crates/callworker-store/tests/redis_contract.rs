//! The store contract against [`RedisStore`] on a real `redis-server` (started here on a free
//! port through the testkit), plus what only Redis has: scripts lost from the script cache,
//! a server killed and restarted or stalled, memory refusals, the key layout, the lease
//! index's self-correction and the command cost of a checkpoint.

// Helper functions are not `#[test]`s, so clippy's test exemption misses them.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use callworker_call::{CallId, EndReason, Epoch, TenantId, WorkerId};
use callworker_store::redis_store::reconnect::RECONNECT_AFTER_TIMEOUTS;
use callworker_store::redis_store::{RedisStore, RedisStoreOptions};
use callworker_store::{
    AttemptId, CallStore, Checkpoint, CheckpointAck, ListQuery, NewCall, RecordingChunk, StoreError, contract,
};
use callworker_testkit::RedisServer;
use callworker_testkit::proxy::FaultProxy;
use redis::aio::MultiplexedConnection;

static NAMESPACE: AtomicU64 = AtomicU64::new(0);

/// Options for a store on `server` in a namespace of its own.
fn options(server: &RedisServer) -> RedisStoreOptions {
    RedisStoreOptions {
        namespace: format!("t{}", NAMESPACE.fetch_add(1, Ordering::Relaxed)),
        recording_track_bytes_max: contract::RECORDING_TRACK_BYTES_MAX,
        webhooks: contract::webhook_subscriptions(),
        webhook_call_events_max: contract::WEBHOOK_CALL_EVENTS_MAX,
        webhook_dead_letters_max: contract::WEBHOOK_DEAD_LETTERS_MAX,
        ..RedisStoreOptions::with_url(&server.url())
    }
}

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(options(server)).await.unwrap()
}

async fn start() -> RedisServer {
    RedisServer::start().await.expect("start redis-server (apt-get install -y redis-server)")
}

/// A plain connection for looking behind the store's back.
async fn raw(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

fn id(name: &str) -> CallId {
    CallId::parse(name).unwrap()
}

fn checkpoint(seq: u64) -> Checkpoint {
    Checkpoint { seq, blob: Bytes::from(format!("checkpoint {seq}")) }
}

async fn create_attached(store: &RedisStore, name: &str, lease: Duration) -> (CallId, Epoch) {
    let call = id(name);
    let new = NewCall {
        call_id: call.clone(),
        tenant: TenantId::parse("acme").unwrap(),
        checkpoint: checkpoint(0),
    };
    store.create(new).await.unwrap();
    let worker = WorkerId::parse("w1").unwrap();
    let epoch = store
        .attach(&call, &AttemptId(format!("a-{name}")), &worker, Epoch::ZERO, lease)
        .await
        .unwrap()
        .epoch;
    (call, epoch)
}

#[tokio::test]
async fn redis_store_meets_the_contract() {
    let server = start().await;
    contract::run_all(|| store(&server)).await;
}

#[tokio::test]
async fn connect_fails_fast_when_redis_is_unreachable() {
    let port = callworker_testkit::free_port();
    let options = RedisStoreOptions {
        takeover_timeout: Duration::from_millis(500),
        ..RedisStoreOptions::with_url(&format!("redis://127.0.0.1:{port}"))
    };
    let started = Instant::now();
    let result = RedisStore::connect(options).await;
    assert!(matches!(result, Err(StoreError::Unavailable(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by the takeover timeout");
    let bad = RedisStore::connect(RedisStoreOptions::with_url("not a url")).await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))), "{bad:?}");
}

#[tokio::test]
async fn scripts_survive_a_script_flush() {
    let server = start().await;
    let store = store(&server).await;
    let (call, epoch) = create_attached(&store, "flush", Duration::from_secs(5)).await;
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut raw(&server).await).await.unwrap();
    let ack = store
        .checkpoint(&call, epoch, checkpoint(1), RecordingChunk::default(), Duration::from_secs(5))
        .await;
    assert_eq!(ack, Ok(CheckpointAck::Applied), "NOSCRIPT loads the script again");
    assert_eq!(store.get(&call).await.unwrap().checkpoint, Some(checkpoint(1)));
}

/// Retries `op` until it succeeds (the connection manager reconnects in the background).
async fn until_ok<T>(what: &str, mut op: impl AsyncFnMut() -> Result<T, StoreError>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(StoreError::Unavailable(e)) if Instant::now() < deadline => {
                eprintln!("{what}: still unavailable: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

#[tokio::test]
async fn a_killed_and_restarted_redis_is_unavailable_then_serves_again() {
    let mut server = start().await;
    let store = store(&server).await;
    let lease = Duration::from_secs(5);
    let (call, epoch) = create_attached(&store, "restart", lease).await;
    let ack = store.checkpoint(&call, epoch, checkpoint(1), RecordingChunk::default(), lease).await;
    assert_eq!(ack, Ok(CheckpointAck::Applied));
    // appendfsync everysec: give the AOF its fsync before the crash.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    server.kill();
    for seq in [2, 2, 2] {
        let down = store.checkpoint(&call, epoch, checkpoint(seq), RecordingChunk::default(), lease).await;
        assert!(matches!(down, Err(StoreError::Unavailable(_))), "while down: {down:?}");
    }
    assert!(matches!(store.get(&call).await, Err(StoreError::Unavailable(_))));

    server.restart().await.unwrap();
    // The same store, not rebuilt: the retried write (same seq) goes through.
    let ack = until_ok("checkpoint after restart", async || {
        store.checkpoint(&call, epoch, checkpoint(2), RecordingChunk::default(), lease).await
    })
    .await;
    assert_eq!(ack, CheckpointAck::Applied);
    let record = store.get(&call).await.unwrap();
    assert_eq!((record.epoch, record.checkpoint), (epoch, Some(checkpoint(2))), "the AOF kept the call");
}

#[tokio::test]
async fn a_stalled_redis_is_unavailable_until_it_continues() {
    let server = start().await;
    let store = store(&server).await;
    let lease = Duration::from_secs(5);
    let (call, epoch) = create_attached(&store, "stall", lease).await;
    server.stop().unwrap();
    let stalled = store.checkpoint(&call, epoch, checkpoint(1), RecordingChunk::default(), lease).await;
    server.cont().unwrap();
    assert!(matches!(stalled, Err(StoreError::Unavailable(_))), "{stalled:?}");
    // The stalled write may have applied after all (unknown outcome): a retry is safe.
    let retry = until_ok("checkpoint after SIGCONT", async || {
        store.checkpoint(&call, epoch, checkpoint(1), RecordingChunk::default(), lease).await
    })
    .await;
    assert!(
        matches!(retry, CheckpointAck::Applied | CheckpointAck::Duplicate { stored_seq: 1 }),
        "{retry:?}"
    );
    assert_eq!(store.get(&call).await.unwrap().checkpoint, Some(checkpoint(1)));
}

/// A half-open connection: the path swallows what is sent (no error, no answer), then
/// heals. The multiplexed connection would stay out of step for good (each reply matched
/// to an older request that never reached Redis), and redis's connection manager does not
/// reconnect on timeouts. After `RECONNECT_AFTER_TIMEOUTS` timeouts in a row the store
/// rebuilds its connection, and every reply answers its own request again.
#[tokio::test]
async fn a_half_open_connection_is_rebuilt_after_timeouts_in_a_row() {
    let server = start().await;
    let proxy = FaultProxy::to_local_port(server.port()).unwrap();
    let options = RedisStoreOptions {
        url: proxy.redis_url(),
        response_timeout: Duration::from_millis(200),
        ..options(&server)
    };
    let store = RedisStore::connect(options).await.unwrap();
    let lease = Duration::from_secs(30);
    let (a, epoch_a) = create_attached(&store, "halfopen-a", lease).await;
    let (b, _) = create_attached(&store, "halfopen-b", lease).await;
    proxy.blackhole();
    for _ in 0..RECONNECT_AFTER_TIMEOUTS {
        let lost = store.checkpoint(&a, epoch_a, checkpoint(1), RecordingChunk::default(), lease).await;
        assert!(matches!(lost, Err(StoreError::Unavailable(_))), "{lost:?}");
    }
    assert_eq!(store.reconnects(), 0, "no connection answers through a blackhole");
    proxy.heal();
    let ack = until_ok("checkpoint after the heal", async || {
        store.checkpoint(&a, epoch_a, checkpoint(2), RecordingChunk::default(), lease).await
    })
    .await;
    assert_eq!(ack, CheckpointAck::Applied);
    assert_eq!(store.reconnects(), 1);
    // Replies match their requests: each call reads as itself.
    for _ in 0..5 {
        assert_eq!(store.get(&b).await.unwrap().call_id, b);
        assert_eq!(store.get(&a).await.unwrap().checkpoint, Some(checkpoint(2)));
    }
}

#[tokio::test]
async fn redis_out_of_memory_is_full() {
    let server = RedisServer::start_with(&["--maxmemory", "3mb"]).await.unwrap();
    let store = store(&server).await;
    let blob = Bytes::from(vec![7u8; 64 * 1024]);
    for n in 0..200 {
        let new = NewCall {
            call_id: id(&format!("big-{n}")),
            tenant: TenantId::parse("acme").unwrap(),
            checkpoint: Checkpoint { seq: 0, blob: blob.clone() },
        };
        match store.create(new).await {
            Ok(()) => continue,
            Err(StoreError::Full(_)) => return,
            Err(e) => panic!("create {n}: {e}"),
        }
    }
    panic!("200 calls of 64 KiB fit in a 3 MB Redis");
}

/// Every key in the store's namespace, with its TTL in ms.
async fn keys_with_ttl(server: &RedisServer, namespace: &str) -> HashMap<String, i64> {
    let mut conn = raw(server).await;
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{namespace}:*")).query_async(&mut conn).await.unwrap();
    let mut out = HashMap::new();
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.unwrap();
        out.insert(key, ttl);
    }
    out
}

#[tokio::test]
async fn every_key_of_a_call_carries_its_hash_tag() {
    let server = start().await;
    let options = options(&server);
    let namespace = options.namespace.clone();
    let store = RedisStore::connect(options).await.unwrap();
    let lease = Duration::from_secs(5);
    let (call, epoch) = create_attached(&store, "layout", lease).await;
    let audio = RecordingChunk { inbound: Bytes::from_static(b"in"), outbound: Bytes::from_static(b"out") };
    store.checkpoint(&call, epoch, checkpoint(1), audio, lease).await.unwrap();
    let worker = callworker_store::WorkerInfo {
        worker_id: WorkerId::parse("w1").unwrap(),
        address: "127.0.0.1:1".into(),
        version: "t".into(),
        live_calls: 1,
        governor_level: "normal".into(),
        started_at: callworker_call::UnixMillis(1),
        heartbeat_at: callworker_call::UnixMillis(0),
    };
    store.heartbeat(&worker, Duration::from_secs(60)).await.unwrap();

    let keys = keys_with_ttl(&server, &namespace).await;
    let call_keys: Vec<&String> = keys.keys().filter(|k| k.contains("{layout}")).collect();
    assert_eq!(call_keys.len(), 3, "hash + two tracks: {keys:?}");
    for key in store.call_keys(&call) {
        assert!(key.contains("{layout}"), "{key}");
        let ttl = keys.get(&key).copied();
        assert!(ttl.is_some_and(|t| t > 0), "{key} exists with the live TTL: {ttl:?}");
    }
    for (key, ttl) in &keys {
        assert!(key.contains("{layout}") || key.contains("{idx}"), "every key is tagged: {key}");
        if key.contains("{idx}") && !key.contains(":worker:") {
            assert_eq!(*ttl, -1, "indexes never expire: {key}");
        }
    }

    store.end(&call, epoch, EndReason::Completed, None, RecordingChunk::default()).await.unwrap();
    let keys = keys_with_ttl(&server, &namespace).await;
    for key in store.call_keys(&call) {
        let ttl = keys.get(&key).copied().unwrap_or(-2);
        assert!(ttl > 0 && ttl <= 3_600_000, "{key} lives ended_retention after the end: {ttl}");
    }
}

async fn zscore(conn: &mut MultiplexedConnection, key: &str, member: &str) -> Option<u64> {
    redis::cmd("ZSCORE")
        .arg(key)
        .arg(member)
        .query_async::<Option<f64>>(conn)
        .await
        .unwrap()
        .map(|s| s as u64)
}

#[tokio::test]
async fn the_lease_index_is_never_above_the_lease_and_corrects_itself() {
    let server = start().await;
    let store = store(&server).await;
    let [leases, calls, _] = store.index_keys();
    let mut conn = raw(&server).await;

    // A lease that shrinks lowers the index at once.
    let (call, epoch) = create_attached(&store, "shrink", Duration::from_secs(600)).await;
    let long = store.get(&call).await.unwrap().lease_until.unwrap().0;
    assert_eq!(zscore(&mut conn, &leases, "shrink").await, Some(long));
    store
        .checkpoint(&call, epoch, checkpoint(1), RecordingChunk::default(), Duration::from_secs(1))
        .await
        .unwrap();
    let short = store.get(&call).await.unwrap().lease_until.unwrap().0;
    assert_eq!(zscore(&mut conn, &leases, "shrink").await, Some(short));

    // A live call whose index lags is corrected, not reported.
    let _: () = redis::cmd("ZADD").arg(&leases).arg(0).arg("shrink").query_async(&mut conn).await.unwrap();
    let seen = store.expired_leases(Duration::ZERO, 100).await.unwrap();
    assert!(seen.iter().all(|o| o.call_id != call), "{seen:?}");
    assert_eq!(zscore(&mut conn, &leases, "shrink").await, Some(short), "raised to the real lease");

    // Ended and vanished calls met in the index are dropped from it.
    store.end(&call, epoch, EndReason::Completed, None, RecordingChunk::default()).await.unwrap();
    let (gone, _) = create_attached(&store, "gone", Duration::from_secs(600)).await;
    for member in ["shrink", "gone"] {
        let _: () = redis::cmd("ZADD").arg(&leases).arg(0).arg(member).query_async(&mut conn).await.unwrap();
    }
    let _: () =
        redis::cmd("DEL").arg(store.call_keys(&gone)[0].as_str()).query_async(&mut conn).await.unwrap();
    assert!(store.expired_leases(Duration::ZERO, 100).await.unwrap().is_empty());
    assert_eq!(zscore(&mut conn, &leases, "shrink").await, None);
    assert_eq!(zscore(&mut conn, &leases, "gone").await, None);

    // list prunes the vanished call from the calls index.
    let page = store.list(&ListQuery { tenant: None, status: None, cursor: None, limit: 10 }).await.unwrap();
    assert_eq!(page.records.iter().map(|r| r.call_id.as_str()).collect::<Vec<_>>(), ["shrink"]);
    let members: Vec<String> =
        redis::cmd("ZRANGE").arg(&calls).arg(0).arg(-1).query_async(&mut conn).await.unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    assert!(members[0].ends_with(":shrink"));
}

/// `calls` of each command in `INFO commandstats`.
async fn command_calls(conn: &mut MultiplexedConnection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

#[tokio::test]
async fn a_checkpoint_costs_about_one_command() {
    let server = start().await;
    // Room for every chunk below, so that each checkpoint appends to both tracks.
    let store =
        RedisStore::connect(RedisStoreOptions { recording_track_bytes_max: 1 << 20, ..options(&server) })
            .await
            .unwrap();
    let mut conn = raw(&server).await;
    // Sped up: 16 checkpoints per lease (production: 5 s lease, a checkpoint every 500-750 ms,
    // 7-10 per lease: a refresh every ~5-7.5 checkpoints, 1.13-1.2 commands each). Sleeps
    // that overshoot on a busy machine only lower the ratio of checkpoints per refresh.
    let lease = Duration::from_millis(160);
    let interval = Duration::from_millis(10);
    let (call, epoch) = create_attached(&store, "cost", lease).await;
    let before = command_calls(&mut conn).await;
    let checkpoints = 100u64;
    let audio = RecordingChunk { inbound: Bytes::from(vec![1u8; 16]), outbound: Bytes::from(vec![2u8; 16]) };
    for seq in 1..=checkpoints {
        store.checkpoint(&call, epoch, checkpoint(seq), audio.clone(), lease).await.unwrap();
        tokio::time::sleep(interval).await;
    }
    let after = command_calls(&mut conn).await;
    let delta = |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    // Sent by the store (commands inside scripts are counted separately by Redis).
    let sent = delta("evalsha") + delta("eval") + delta("zadd") + delta("script|load");
    let per_checkpoint = sent as f64 / checkpoints as f64;
    eprintln!(
        "{checkpoints} checkpoints: evalsha {} zadd {} -> {per_checkpoint:.2} commands per checkpoint",
        delta("evalsha"),
        delta("zadd")
    );
    assert!(delta("zadd") >= 1, "the index is refreshed while the call runs");
    assert!(per_checkpoint <= 1.3, "{per_checkpoint:.2} commands per checkpoint");
    // Run inside the script, and counted by Redis as commands too: TIME, HMGET, HSET and one
    // APPEND per track; the tracks' lengths live in the hash (no STRLEN) and their TTLs are
    // refreshed with the index (no PEXPIRE per append).
    let inside: u64 = ["time", "hmget", "hset", "append", "strlen", "pexpire"].iter().map(|c| delta(c)).sum();
    let inside_per_checkpoint = inside as f64 / checkpoints as f64;
    eprintln!(
        "inside the scripts: {inside_per_checkpoint:.2} commands per checkpoint (strlen {}, pexpire {}, append {})",
        delta("strlen"),
        delta("pexpire"),
        delta("append")
    );
    assert_eq!(delta("strlen"), 0, "track lengths come from the hash");
    assert_eq!(delta("append"), 2 * checkpoints, "one APPEND per track per checkpoint");
    assert!(
        inside_per_checkpoint <= 5.6,
        "{inside_per_checkpoint:.2} commands inside each checkpoint script"
    );
}

/// The whole contract as a least-privilege ACL user: the default user is off, and the
/// `callworker` user may run only [`ACL_COMMANDS`](callworker_store::redis_store::ACL_COMMANDS)
/// on the keys of its namespace. So that list is enough, and the store touches no key
/// outside `<namespace>:*`; the user really is confined (the negative checks at the end).
#[tokio::test]
async fn redis_store_meets_the_contract_as_a_least_privilege_acl_user() {
    use callworker_store::redis_store::ACL_COMMANDS;
    let mut args = vec!["--user", "default", "off", "--user", "admin", "on", ">admin-pw", "~*", "+@all"];
    args.extend([
        "--user",
        "callworker",
        "on",
        ">s3cret-pw",
        "resetkeys",
        "~acl:*",
        "resetchannels",
        "-@all",
    ]);
    args.extend(ACL_COMMANDS.split_whitespace());
    let server = RedisServer::start_with(&args).await.unwrap();
    let url = format!("redis://callworker:s3cret-pw@127.0.0.1:{}", server.port());
    let options = || RedisStoreOptions {
        namespace: "acl".to_owned(),
        recording_track_bytes_max: contract::RECORDING_TRACK_BYTES_MAX,
        webhooks: contract::webhook_subscriptions(),
        webhook_call_events_max: contract::WEBHOOK_CALL_EVENTS_MAX,
        webhook_dead_letters_max: contract::WEBHOOK_DEAD_LETTERS_MAX,
        ..RedisStoreOptions::with_url(&url)
    };
    contract::run_all(|| async { RedisStore::connect(options()).await.unwrap() }).await;
    // Nothing was refused, not even a best-effort command whose failure is only logged.
    let admin = format!("redis://admin:admin-pw@127.0.0.1:{}", server.port());
    let mut admin = redis::Client::open(admin).unwrap().get_multiplexed_async_connection().await.unwrap();
    let denied: Vec<redis::Value> = redis::cmd("ACL").arg("LOG").query_async(&mut admin).await.unwrap();
    assert!(denied.is_empty(), "ACL LOG: {denied:?}");

    // The same user outside its namespace, or running anything else, is refused.
    let outside = RedisStore::connect(RedisStoreOptions { namespace: "other".to_owned(), ..options() }).await;
    let outside = outside.unwrap();
    let refused = outside.get(&id("c-1")).await;
    assert!(
        matches!(&refused, Err(StoreError::Unavailable(e)) if e.contains("no permissions")),
        "{refused:?}"
    );
    let mut conn =
        redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let flush = redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await;
    assert!(flush.is_err_and(|e| e.to_string().contains("no permissions")));
    let anonymous = RedisStore::connect(RedisStoreOptions::with_url(&server.url())).await;
    assert!(anonymous.is_err(), "the default user is off");
    let denied: Vec<redis::Value> = redis::cmd("ACL").arg("LOG").query_async(&mut admin).await.unwrap();
    assert!(denied.len() >= 2, "the ACL LOG does record refusals: {denied:?}");
}

/// `rediss://` against a redis-server that speaks only TLS, with a certificate from a CA
/// made for this test: trusted through `tls_ca_file`, the store meets the contract; without
/// it (the system's roots), the certificate is refused.
#[tokio::test]
async fn redis_store_meets_the_contract_over_tls_with_a_private_ca() {
    let dir = callworker_testkit::workspace_root()
        .join(format!("target/test-logs/tls-store-{}", std::process::id()));
    let tls = callworker_testkit::TlsFiles::generate(&dir).unwrap();
    let server = match callworker_testkit::RedisServer::start_tls(&tls, &[]).await {
        Ok(server) => server,
        Err(e) if !redis_server_has_tls() => {
            eprintln!("SKIPPED: this redis-server was built without TLS (BUILD_TLS=no): {e:#}");
            return;
        }
        Err(e) => panic!("start a TLS redis-server: {e:#}"),
    };
    assert!(server.url().starts_with("rediss://"));
    let options = || RedisStoreOptions { tls_ca_file: Some(tls.ca_cert.clone()), ..options(&server) };
    contract::run_all(|| async { RedisStore::connect(options()).await.unwrap() }).await;

    let untrusted = RedisStore::connect(RedisStoreOptions { tls_ca_file: None, ..options() }).await;
    let error = untrusted.expect_err("a certificate from an unknown CA is refused");
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    let missing =
        RedisStore::connect(RedisStoreOptions { tls_ca_file: Some(dir.join("no-such-ca.pem")), ..options() })
            .await;
    assert!(matches!(missing, Err(StoreError::Invalid(_))), "{missing:?}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether the installed redis-server was built with TLS: such a build links libssl
/// (Debian's does, `BUILD_TLS=yes`). Consulted only when a TLS server failed to start.
fn redis_server_has_tls() -> bool {
    let path = std::process::Command::new("sh").args(["-c", "command -v redis-server"]).output();
    let Some(path) = path.ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()) else {
        return false;
    };
    let ldd = std::process::Command::new("ldd").arg(path).output();
    ldd.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("libssl"))
}
