//! The store contract against [`RedisStore`] on a real three-primary Redis Cluster (started
//! here through the testkit), plus what only a cluster has: calls spread over the nodes,
//! `CROSSSLOT` refusals (which the contract would meet if a script or a pipeline touched
//! two slots), a node killed and restarted under a running store, and nodes that lost
//! their scripts.

// Helper functions are not `#[test]`s, so clippy's test exemption misses them.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use callworker_call::{CallId, Epoch, TenantId, WorkerId};
use callworker_store::redis_store::{RedisMode, RedisStore, RedisStoreOptions};
use callworker_store::{
    AttemptId, CallStore, Checkpoint, CheckpointAck, ListQuery, NewCall, RecordingChunk, StoreError, contract,
};
use callworker_testkit::{RedisCluster, redis_cli};

static NAMESPACE: AtomicU64 = AtomicU64::new(0);

fn options(cluster: &RedisCluster) -> RedisStoreOptions {
    RedisStoreOptions {
        mode: RedisMode::Cluster,
        namespace: format!("c{}", NAMESPACE.fetch_add(1, Ordering::Relaxed)),
        recording_track_bytes_max: contract::RECORDING_TRACK_BYTES_MAX,
        webhooks: contract::webhook_subscriptions(),
        webhook_call_events_max: contract::WEBHOOK_CALL_EVENTS_MAX,
        webhook_dead_letters_max: contract::WEBHOOK_DEAD_LETTERS_MAX,
        ..RedisStoreOptions::with_url(&cluster.seed_urls())
    }
}

async fn start() -> RedisCluster {
    RedisCluster::start(3)
        .await
        .expect("start a 3-node redis cluster (apt-get install -y redis-server redis-tools)")
}

fn checkpoint(seq: u64) -> Checkpoint {
    Checkpoint { seq, blob: Bytes::from(format!("checkpoint {seq}")) }
}

async fn create_attached(store: &RedisStore, name: &str) -> (CallId, Epoch) {
    let call = CallId::parse(name).unwrap();
    let new = NewCall {
        call_id: call.clone(),
        tenant: TenantId::parse("acme").unwrap(),
        checkpoint: checkpoint(0),
    };
    store.create(new).await.unwrap();
    let worker = WorkerId::parse("w1").unwrap();
    let attached = store
        .attach(&call, &AttemptId(format!("a-{name}")), &worker, Epoch::ZERO, Duration::from_secs(30))
        .await
        .unwrap();
    (call, attached.epoch)
}

/// Keys in a node's own slots.
fn dbsize(cluster: &RedisCluster, node: usize) -> u64 {
    redis_cli(cluster.nodes[node].port(), &["DBSIZE"]).unwrap().trim().parse().unwrap()
}

/// The whole contract on a cluster: every script and every multi-key command the store
/// sends would be refused with `CROSSSLOT` (or `MOVED` without end) if its keys spanned
/// slots, so passing it shows that each touches one slot. The calls it creates land on
/// every node, so this is not one node answering everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_meets_the_contract_on_a_cluster() {
    let cluster = start().await;
    contract::run_all(|| async { RedisStore::connect(options(&cluster)).await.unwrap() }).await;
    for node in 0..cluster.nodes.len() {
        assert!(dbsize(&cluster, node) > 0, "node {node} holds some of the calls");
    }
}

/// The negative control for the test above: a cluster does refuse a script whose keys span
/// two slots, so a store script that did would have failed the contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_refuses_a_script_across_two_slots() {
    let cluster = start().await;
    let node = cluster.node_for_key("cw:call:{a}").unwrap();
    let port = cluster.nodes[node].port();
    let reply = redis_cli(port, &["EVAL", "return 1", "2", "cw:call:{a}", "cw:call:{b}"]).unwrap();
    assert!(reply.contains("CROSSSLOT"), "{reply}");
    let same_slot = redis_cli(port, &["EVAL", "return 1", "2", "cw:call:{a}", "cw:call:{a}:rec:in"]).unwrap();
    assert_eq!(same_slot.trim(), "1");
}

/// Retries `op` while it is unavailable (the cluster connection refreshes its slot map and
/// reconnects in the background), bounded.
async fn until_ok<T>(what: &str, mut op: impl AsyncFnMut() -> Result<T, StoreError>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(StoreError::Unavailable(e)) if Instant::now() < deadline => {
                eprintln!("{what}: still unavailable: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// The node holding a call is killed and restarted: the same store finds it again, the
/// node's AOF kept the call, and its empty script cache is refilled on demand (`NOSCRIPT`
/// → `EVAL` on that node), while calls on the other nodes were served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_is_found_again_and_reloads_its_scripts() {
    let mut cluster = start().await;
    let store = RedisStore::connect(options(&cluster)).await.unwrap();
    let lease = Duration::from_secs(30);
    // Calls until one lives on another node than the first.
    let (call, epoch) = create_attached(&store, "restart-0").await;
    let home = cluster.node_for_key(&store.call_keys(&call)[0]).unwrap();
    let mut other = None;
    for n in 1..64 {
        let (c, e) = create_attached(&store, &format!("restart-{n}")).await;
        if cluster.node_for_key(&store.call_keys(&c)[0]).unwrap() != home {
            other = Some((c, e));
            break;
        }
    }
    let (other, other_epoch) = other.expect("64 calls do not all hash to one node");
    store.checkpoint(&call, epoch, checkpoint(1), RecordingChunk::default(), lease).await.unwrap();
    // appendfsync everysec: give the AOF its fsync before the crash.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    cluster.nodes[home].kill();
    let down = store.checkpoint(&call, epoch, checkpoint(2), RecordingChunk::default(), lease).await;
    assert!(matches!(down, Err(StoreError::Unavailable(_))), "while its node is down: {down:?}");
    // The other node still serves its call (until the cluster marks the dead node failed).
    let served = store.checkpoint(&other, other_epoch, checkpoint(1), RecordingChunk::default(), lease).await;
    assert!(matches!(served, Ok(CheckpointAck::Applied) | Err(StoreError::Unavailable(_))), "{served:?}");

    cluster.nodes[home].restart().await.unwrap();
    cluster.wait_ok().await.unwrap();
    let ack = until_ok("checkpoint after the node restarted", async || {
        store.checkpoint(&call, epoch, checkpoint(2), RecordingChunk::default(), lease).await
    })
    .await;
    assert_eq!(ack, CheckpointAck::Applied, "the same store, not rebuilt, writes again");
    let record = store.get(&call).await.unwrap();
    assert_eq!(
        (record.epoch, record.checkpoint),
        (epoch, Some(checkpoint(2))),
        "the node's AOF kept the call"
    );

    // Every node forgets every script: each reloads what it runs, on demand.
    for node in &cluster.nodes {
        redis_cli(node.port(), &["SCRIPT", "FLUSH"]).unwrap();
    }
    let ack = store.checkpoint(&other, other_epoch, checkpoint(2), RecordingChunk::default(), lease).await;
    assert_eq!(ack, Ok(CheckpointAck::Applied));
    let page = store.list(&ListQuery { tenant: None, status: None, cursor: None, limit: 100 }).await.unwrap();
    assert!(page.records.len() >= 2, "list reads calls across the nodes: {}", page.records.len());
    assert!(store.expired_leases(Duration::ZERO, 10).await.unwrap().is_empty());
}

/// A call's slot is migrated to another node under a running store (as a resharding does,
/// by hand: `SETSLOT IMPORTING/MIGRATING`, `MIGRATE` of its keys, `SETSLOT NODE` on every
/// node): the store's next write meets `MOVED`, follows it, and the call carries on there
/// with its epoch, checkpoint and recording.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_slot_moves_is_followed_to_its_new_node() {
    let cluster = start().await;
    let store = RedisStore::connect(options(&cluster)).await.unwrap();
    let lease = Duration::from_secs(30);
    let (call, epoch) = create_attached(&store, "moving").await;
    let audio = RecordingChunk { inbound: Bytes::from_static(b"before"), outbound: Bytes::new() };
    store.checkpoint(&call, epoch, checkpoint(1), audio, lease).await.unwrap();

    let keys = store.call_keys(&call);
    let from = cluster.node_for_key(&keys[0]).unwrap();
    let to = (from + 1) % cluster.nodes.len();
    let port = |i: usize| cluster.nodes[i].port();
    let cli = |i: usize, args: &[&str]| redis_cli(port(i), args).unwrap().trim().to_owned();
    let slot = cli(from, &["CLUSTER", "KEYSLOT", &keys[0]]);
    let from_id = cli(from, &["CLUSTER", "MYID"]);
    let to_id = cli(to, &["CLUSTER", "MYID"]);
    cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    let to_port = port(to).to_string();
    let mut migrate = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
    migrate.extend(keys.iter().map(String::as_str));
    assert_eq!(cli(from, &migrate), "OK");
    for i in 0..cluster.nodes.len() {
        cli(i, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
    }
    assert_eq!(cluster.node_for_key(&keys[0]).unwrap(), to, "the slot moved");

    let audio = RecordingChunk { inbound: Bytes::from_static(b"+after"), outbound: Bytes::new() };
    let ack = until_ok("checkpoint after the move", async || {
        store.checkpoint(&call, epoch, checkpoint(2), audio.clone(), lease).await
    })
    .await;
    assert_eq!(ack, CheckpointAck::Applied);
    let record = store.get(&call).await.unwrap();
    assert_eq!((record.epoch, record.checkpoint), (epoch, Some(checkpoint(2))));
    assert_eq!(store.recording(&call).await.unwrap().inbound, Bytes::from_static(b"before+after"));
}

/// `calls` of each command in `INFO commandstats`, summed over the nodes.
fn command_calls(cluster: &RedisCluster) -> std::collections::HashMap<String, u64> {
    let mut calls = std::collections::HashMap::new();
    for node in &cluster.nodes {
        let info = redis_cli(node.port(), &["INFO", "commandstats"]).unwrap();
        for line in info.lines() {
            let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
                continue;
            };
            let n: u64 = rest.split(',').find_map(|kv| kv.strip_prefix("calls=")).unwrap().parse().unwrap();
            *calls.entry(name.to_owned()).or_default() += n;
        }
    }
    calls
}

/// On a cluster too, a checkpoint is about one command, and a script's text is sent at
/// most once per node that lacks it (`EVAL` after `NOSCRIPT`), not once per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_loaded_once_per_node_and_a_checkpoint_is_one_command() {
    let cluster = start().await;
    let store = RedisStore::connect(options(&cluster)).await.unwrap();
    let lease = Duration::from_secs(30);
    let mut calls = Vec::new();
    for n in 0..12 {
        calls.push(create_attached(&store, &format!("cost-{n}")).await);
    }
    let before = command_calls(&cluster);
    let rounds = 10u64;
    for seq in 1..=rounds {
        for (call, epoch) in &calls {
            store.checkpoint(call, *epoch, checkpoint(seq), RecordingChunk::default(), lease).await.unwrap();
        }
    }
    let after = command_calls(&cluster);
    let delta = |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    let checkpoints = rounds * calls.len() as u64;
    eprintln!(
        "{checkpoints} checkpoints on 3 nodes: evalsha {} eval {} noscript-loads {} zadd {}",
        delta("evalsha"),
        delta("eval"),
        delta("script|load"),
        delta("zadd")
    );
    assert!(
        delta("eval") <= cluster.nodes.len() as u64,
        "the checkpoint script is sent at most once per node"
    );
    assert!(delta("evalsha") + delta("eval") <= checkpoints + cluster.nodes.len() as u64);
    assert!(delta("evalsha") >= checkpoints - cluster.nodes.len() as u64);
}

/// The documented ACL user, plus `ACL_COMMANDS_CLUSTER`, is enough on a cluster too: the
/// contract passes as that user on every node, and no node refused anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_user_is_enough_on_a_cluster() {
    use callworker_store::redis_store::{ACL_COMMANDS, ACL_COMMANDS_CLUSTER};
    let cluster = start().await;
    let mut setuser = vec!["ACL", "SETUSER", "callworker", "on", ">s3cret-pw", "resetkeys", "~acl:*"];
    setuser.extend(["resetchannels", "-@all"]);
    setuser.extend(ACL_COMMANDS.split_whitespace().chain(ACL_COMMANDS_CLUSTER.split_whitespace()));
    for node in &cluster.nodes {
        assert_eq!(redis_cli(node.port(), &setuser).unwrap().trim(), "OK");
    }
    let urls: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("redis://callworker:s3cret-pw@127.0.0.1:{}", n.port()))
        .collect();
    let options = || RedisStoreOptions {
        mode: RedisMode::Cluster,
        namespace: "acl".to_owned(),
        recording_track_bytes_max: contract::RECORDING_TRACK_BYTES_MAX,
        webhooks: contract::webhook_subscriptions(),
        webhook_call_events_max: contract::WEBHOOK_CALL_EVENTS_MAX,
        webhook_dead_letters_max: contract::WEBHOOK_DEAD_LETTERS_MAX,
        ..RedisStoreOptions::with_url(&urls.join(","))
    };
    contract::run_all(|| async { RedisStore::connect(options()).await.unwrap() }).await;
    for node in &cluster.nodes {
        let log = redis_cli(node.port(), &["ACL", "LOG"]).unwrap();
        assert!(log.trim().is_empty(), "node {} refused: {log}", node.port());
    }
}

/// A stalled node (SIGSTOP) makes its calls' writes unavailable within the response
/// timeout, not longer; once it continues, the retried write goes through (or was applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_is_unavailable_until_it_continues() {
    let cluster = start().await;
    let store = RedisStore::connect(options(&cluster)).await.unwrap();
    let lease = Duration::from_secs(30);
    let (call, epoch) = create_attached(&store, "stall").await;
    let node = cluster.node_for_key(&store.call_keys(&call)[0]).unwrap();
    cluster.nodes[node].stop().unwrap();
    let started = Instant::now();
    let stalled = store.checkpoint(&call, epoch, checkpoint(1), RecordingChunk::default(), lease).await;
    let waited = started.elapsed();
    cluster.nodes[node].cont().unwrap();
    assert!(matches!(stalled, Err(StoreError::Unavailable(_))), "{stalled:?}");
    assert!(waited < Duration::from_secs(5), "bounded by the response timeout: {waited:?}");
    let retry = until_ok("checkpoint after SIGCONT", async || {
        store.checkpoint(&call, epoch, checkpoint(1), RecordingChunk::default(), lease).await
    })
    .await;
    assert!(
        matches!(retry, CheckpointAck::Applied | CheckpointAck::Duplicate { stored_seq: 1 }),
        "{retry:?}"
    );
}
