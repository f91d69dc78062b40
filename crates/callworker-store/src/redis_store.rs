//! [`RedisStore`]: the [`CallStore`] shared by every worker, on Redis.
//!
//! Every write that could race with another worker is one Lua script (`lua/*.lua`, each
//! prefixed with `lua/prelude.lua`) that checks the epoch and writes atomically, on keys of
//! one call only, so each script runs on one Redis Cluster slot. Script times come from
//! Redis `TIME`, so every [`UnixMillis`] this store returns is on the Redis clock.
//!
//! # Key layout
//!
//! Per call, all with the call's hash tag `{<call_id>}`:
//! - `<ns>:call:{<id>}`: HASH `tenant`, `status` (`created`|`active`|`ended`), `epoch`,
//!   `owner`, `attempt`, `lease_until`, `end_reason`, `created`, `updated`, `ckpt_seq`,
//!   `ckpt` (bytes), `idx` (the score last written to the lease index), `truncated`,
//!   `rec_in_len` / `rec_out_len` (the tracks' lengths, so an append needs no STRLEN).
//! - `<ns>:call:{<id>}:rec:in`, `…:rec:out`: STRING, the recorded tracks (APPEND), each at
//!   most `recording_track_bytes_max` bytes.
//! - `<ns>:call:{<id>}:outbox`: LIST, the call's undelivered webhook bodies, oldest first
//!   ([`crate::outbox`]), at most `webhook_call_events_max` (+ the end's two). The hash keeps
//!   the tenant's event mask at creation (`hooks`), the failed attempts of the oldest event
//!   (`ob_attempts`) and the events dropped for the bound (`ob_dropped`).
//!
//! A live call's keys carry a safety TTL (`live_ttl`, refreshed about every 3/4 lease while
//! the call is written); an ended call's keys live `ended_retention` more.
//!
//! Global indexes, all with the hash tag `{idx}` (one slot):
//! - `<ns>:{idx}:leases`: ZSET call id → lease score, the reaper's index. The score is never
//!   above the call's real lease (a lower one is safe: [`CallStore::expired_leases`]
//!   re-checks every candidate against its hash and corrects or drops stale entries).
//! - `<ns>:{idx}:calls`: ZSET, every score 0, member `<created ms, 16 digits>:<call id>`,
//!   so lexicographic order is creation order; list cursors are members. Members whose call
//!   expired are pruned when [`CallStore::list`] meets them.
//! - `<ns>:{idx}:tenant:<tenant>:live`: ZSET call id → created ms, the calls of a tenant that
//!   may be live ([`CallStore::live_calls_of`]). Added at create; members whose call ended or
//!   expired are pruned lazily: two random members are checked on every create (so the set
//!   stays within about twice the tenant's live calls), and every member when a count reaches
//!   its bound.
//! - `<ns>:{idx}:workers`: ZSET worker id → lapse time, and `<ns>:{idx}:worker:<id>`: HASH
//!   `info` (JSON [`WorkerInfo`]), `heartbeat_at`, with the heartbeat's TTL.
//! - `<ns>:{idx}:outbox`: ZSET call id → when its webhooks are due (0: now), or when the
//!   current claim on it lapses. A call's script that leaves its outbox non-empty answers
//!   the outbox's length, and the caller then adds the call (`ZADD NX`, so a backoff or a
//!   claim is never moved). A worker that dies between the two leaves the call out; the
//!   next script on the call repairs that, and after an end the lease index does: the
//!   caller removes an ended call from the lease index only *after* indexing its outbox,
//!   and the reaper's re-check indexes the outbox of every ended call it meets there.
//! - `<ns>:{idx}:webhooks:dead`: LIST of dead letters (JSON [`crate::outbox::DeadLetter`]),
//!   newest first, at most `webhook_dead_letters_max`.
//!
//! Index updates are separate commands, issued after the script only when it asks for them.
//!
//! # Commands per call-second
//!
//! A checkpoint is one `EVALSHA`. The lease index is not rewritten on every checkpoint: the
//! script rewrites the hash's `idx` and asks for one `ZADD` only when the index would fall
//! within a quarter lease of now (or above a lease that shrank), i.e. about once per 3/4
//! lease. With a 5 s lease and a checkpoint every 750 ms that is 1.33 + 0.27 ≈ 1.6 commands
//! per call-second (every 500 ms: 2 + 0.27); `tests/redis_contract.rs` measures the cost
//! per checkpoint with `INFO commandstats`.
//!
//! # Failures
//!
//! A timeout or an I/O error is [`StoreError::Unavailable`]: an *unknown outcome*, since the
//! write may have been applied. Every script is idempotent on retry (checkpoint by `seq`,
//! attach by [`AttemptId`], end and expire by epoch), so the caller retries as it is. Redis
//! refusing a write for memory (`OOM`, with `maxmemory-policy noeviction`) is
//! [`StoreError::Full`]. The connection reconnects in the background after a dropped
//! connection, and [`reconnect`] rebuilds it after timeouts in a row (a half-open
//! connection); the store itself is never rebuilt.
//!
//! # One server or a cluster
//!
//! [`RedisMode::Standalone`] talks to one server through a [`ConnectionManager`];
//! [`RedisMode::Cluster`] to a Redis Cluster through the redis crate's cluster connection,
//! which learns the slot map from the seed nodes (`CLUSTER SLOTS`), follows `MOVED` and `ASK`
//! and reconnects to a restarted node. Both sit behind one private `Connection` that the
//! rest of this file uses alike, so no command or script is written twice. Two rules keep
//! the code valid on a cluster:
//!
//! - A script names every key it touches in `KEYS`, and all of them share one hash tag, so
//!   `EVALSHA` is routed by its first key to the one node that holds them all (a test checks
//!   the Lua source, and the contract suite runs on a real cluster, which would answer
//!   `CROSSSLOT` otherwise).
//! - A pipeline only ever holds commands on one slot (`{idx}` index maintenance, one call's
//!   recording). Reads that visit many calls (`list`, the reaper's re-check) are sent as
//!   concurrent single commands instead; on one server they are pipelined on the socket
//!   all the same.
//!
//! Scripts are sent by `EVALSHA`. A node that answers `NOSCRIPT` (restarted, flushed, or
//! new in the cluster) gets the same call once as `EVAL` with the script's text, routed by
//! the same key, which also caches the script on that node: each node loads each script on
//! demand, and no node's absence stops the others from loading theirs.
//!
//! # TLS
//!
//! `rediss://` URLs use rustls. The server's certificate is verified against the system's
//! roots, or only against the PEM CA file of [`RedisStoreOptions::tls_ca_file`] for a
//! private CA.
//!
//! # No `WAIT` after a takeover
//!
//! A takeover is not followed by `WAIT`. Without replicas it would return at once and prove
//! nothing. With replicas, `WAIT` still does not make a write survive a failover (Redis
//! replication is asynchronous, and a promoted replica may lack writes `WAIT` saw
//! acknowledged), while it would add a replica round trip to every resume. Deployments with
//! replicas bound the loss on the primary instead (`min-replicas-to-write`,
//! `min-replicas-max-lag`; docs/operations.md), and a lost takeover is harmless: the
//! epoch is then the older one, and the next takeover is a compare-and-set against it.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use callworker_call::{CallId, EndReason, Epoch, TenantId, UnixMillis, WorkerId};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind,
    TlsCertificates, ToRedisArgs, Value,
};
use tracing::warn;

use crate::memory::RECORDING_TRACK_BYTES_MAX;
use crate::outbox::{
    DEFAULT_CALL_EVENTS_MAX, DEFAULT_DEAD_LETTERS_MAX, DeadLetter, OutboxClaim, OutboxEvent, PendingEvent,
    Settle, Subscriptions,
};
use crate::{
    Attached, AttemptId, CallRecord, CallStore, Checkpoint, CheckpointAck, ExpireAction, LIST_LIMIT_MAX,
    LeaseObservation, ListPage, ListQuery, NewCall, RecordStatus, Recording, RecordingChunk, StoreError,
    WorkerInfo,
};

/// Default bound on an ordinary write or read (the redis crate's own default).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// Default bound on a takeover or a reap: rarer, and worth waiting for through a short stall.
pub const DEFAULT_TAKEOVER_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time an ended call (and its recording) stays readable.
pub const DEFAULT_ENDED_RETENTION: Duration = Duration::from_secs(3600);
/// Default safety TTL of a live call's keys, refreshed by its writes.
pub const DEFAULT_LIVE_TTL: Duration = Duration::from_secs(6 * 3600);
/// Default key prefix.
pub const DEFAULT_NAMESPACE: &str = "cw";

/// Index members a [`CallStore::list`] call examines at most. A filter that matches
/// nothing in that many calls answers a page without records but with a cursor, so that a
/// request's work stays bounded however large the index is.
pub const LIST_SCAN_MAX: usize = 10_000;
/// Index members read per round trip while listing.
/// Members of a tenant's live set checked (and pruned when ended) on every create.
const TENANT_PRUNE_SAMPLE: usize = 2;
/// Members read per round trip when a tenant's live set is pruned whole.
const TENANT_PRUNE_BATCH: usize = 500;
const LIST_BATCH: usize = 128;
/// Rounds of scan → re-check → correct that one [`CallStore::expired_leases`] runs at most.
const EXPIRED_ROUNDS_MAX: usize = 4;
/// Workers [`CallStore::workers`] returns at most.
pub const WORKERS_MAX: usize = 10_000;

const PRELUDE: &str = include_str!("../lua/prelude.lua");

/// The commands the store sends, directly or from its scripts: the least a Redis ACL user
/// for callworker needs (docs/operations.md gives the full `ACL SETUSER` line; a test runs
/// the store contract as a user with exactly these). `EVAL` is how a node that lacks a
/// script gets it, so `SCRIPT` is not needed.
pub const ACL_COMMANDS: &str = "+ping +time +eval +evalsha +exists +get +strlen +append +del +pexpire \
     +hget +hmget +hgetall +hset +hincrby +hdel +zadd +zrem +zrange +zremrangebyscore +zcard +zrandmember \
     +zscore +llen +lindex +lrange +rpush +lpush +lpop +ltrim";
/// What a cluster user needs beyond [`ACL_COMMANDS`]: the client reads the slot map.
pub const ACL_COMMANDS_CLUSTER: &str = "+cluster|slots";

/// Whether [`RedisStoreOptions::url`] names one Redis server or a Redis Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisMode {
    /// One server (a primary, perhaps with replicas behind it): one URL.
    #[default]
    Standalone,
    /// A Redis Cluster: one or more seed nodes, separated by commas; the others are found
    /// from the cluster's slot map.
    Cluster,
}

pub mod reconnect;

/// How to reach Redis and how long to keep things there.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisStoreOptions {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS. In
    /// [`RedisMode::Cluster`], a comma-separated list of seed nodes (same credentials).
    pub url: String,
    /// One server or a cluster.
    pub mode: RedisMode,
    /// For `rediss://`: a PEM file of the CA certificates to trust instead of the system's
    /// roots (a private CA). `None`: the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Prefix of every key, so several deployments can share a Redis.
    pub namespace: String,
    /// Bound on checkpoints, renewals, ends and reads. Past it the answer is
    /// [`StoreError::Unavailable`] (unknown outcome; the write may still apply).
    pub response_timeout: Duration,
    /// Bound on attach (takeover), the reaper's calls and `connect`.
    pub takeover_timeout: Duration,
    /// How long an ended call and its recording stay.
    pub ended_retention: Duration,
    /// Safety TTL on a live call's keys (refreshed by its writes), so a call that nobody
    /// ends and the reaper never sees does not stay forever.
    pub live_ttl: Duration,
    /// Most bytes recorded per track per call; beyond it audio is left out and the
    /// recording marked truncated.
    pub recording_track_bytes_max: usize,
    /// Which tenants' calls keep which webhook events ([`crate::outbox`]).
    pub webhooks: Subscriptions,
    /// Undelivered webhook events per call; beyond it the call's timeline events are
    /// dropped and counted (the end's two are always kept).
    pub webhook_call_events_max: usize,
    /// Dead letters kept; beyond it the oldest is dropped.
    pub webhook_dead_letters_max: usize,
}

impl Default for RedisStoreOptions {
    fn default() -> RedisStoreOptions {
        RedisStoreOptions {
            url: "redis://127.0.0.1:6379".to_owned(),
            mode: RedisMode::Standalone,
            tls_ca_file: None,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            takeover_timeout: DEFAULT_TAKEOVER_TIMEOUT,
            ended_retention: DEFAULT_ENDED_RETENTION,
            live_ttl: DEFAULT_LIVE_TTL,
            recording_track_bytes_max: RECORDING_TRACK_BYTES_MAX,
            webhooks: Subscriptions::default(),
            webhook_call_events_max: DEFAULT_CALL_EVENTS_MAX,
            webhook_dead_letters_max: DEFAULT_DEAD_LETTERS_MAX,
        }
    }
}

impl RedisStoreOptions {
    /// The defaults, at `url`.
    pub fn with_url(url: &str) -> RedisStoreOptions {
        RedisStoreOptions { url: url.to_owned(), ..RedisStoreOptions::default() }
    }
}

impl fmt::Debug for RedisStoreOptions {
    /// Leaves the URL out: it may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreOptions")
            .field("mode", &self.mode)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("namespace", &self.namespace)
            .field("response_timeout", &self.response_timeout)
            .field("takeover_timeout", &self.takeover_timeout)
            .field("ended_retention", &self.ended_retention)
            .field("live_ttl", &self.live_ttl)
            .field("recording_track_bytes_max", &self.recording_track_bytes_max)
            .field("webhooks", &self.webhooks)
            .field("webhook_call_events_max", &self.webhook_call_events_max)
            .field("webhook_dead_letters_max", &self.webhook_dead_letters_max)
            .finish_non_exhaustive()
    }
}

/// One script: prelude + body, and its SHA1 for `EVALSHA`.
struct LuaScript {
    code: String,
    hash: String,
}

impl LuaScript {
    fn new(body: &str) -> LuaScript {
        let code = format!("{PRELUDE}\n{body}");
        let hash = redis::Script::new(&code).get_hash().to_owned();
        LuaScript { code, hash }
    }

    fn prepare(&self) -> Invocation<'_> {
        Invocation { script: self, keys: Vec::new(), args: Vec::new() }
    }
}

/// A script call being built: its keys (`KEYS`) and arguments (`ARGV`).
struct Invocation<'a> {
    script: &'a LuaScript,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Invocation<'_> {
    fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// `EVALSHA <sha> …`, or `EVAL <text> …` (which also caches the script on the node).
    /// Both are routed by their first key on a cluster.
    fn command(&self, verb: &str, script: &str) -> Cmd {
        let mut cmd = redis::cmd(verb);
        cmd.arg(script).arg(self.keys.len()).arg(&self.keys).arg(&self.args);
        cmd
    }

    /// `EVALSHA`; on `NOSCRIPT` (the node lost or never had the script), `EVAL` once on the
    /// same node.
    async fn invoke<T: FromRedisValue>(&self, conn: &mut impl ConnectionLike) -> RedisResult<T> {
        match self.command("EVALSHA", &self.script.hash).query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.command("EVAL", &self.script.code).query_async(conn).await
            }
            other => other,
        }
    }
}

/// The scripts, sent by `EVALSHA` (by `EVAL` where a node answers `NOSCRIPT`).
struct Scripts {
    create: LuaScript,
    attach: LuaScript,
    checkpoint: LuaScript,
    renew: LuaScript,
    end: LuaScript,
    expire: LuaScript,
    scan_leases: LuaScript,
    heartbeat: LuaScript,
    workers: LuaScript,
    outbox: LuaScript,
    outbox_index: LuaScript,
}

impl Scripts {
    fn load() -> Scripts {
        Scripts {
            create: LuaScript::new(include_str!("../lua/create.lua")),
            attach: LuaScript::new(include_str!("../lua/attach.lua")),
            checkpoint: LuaScript::new(include_str!("../lua/checkpoint.lua")),
            renew: LuaScript::new(include_str!("../lua/renew.lua")),
            end: LuaScript::new(include_str!("../lua/end.lua")),
            expire: LuaScript::new(include_str!("../lua/expire.lua")),
            scan_leases: LuaScript::new(include_str!("../lua/scan_leases.lua")),
            heartbeat: LuaScript::new(include_str!("../lua/heartbeat.lua")),
            workers: LuaScript::new(include_str!("../lua/workers.lua")),
            outbox: LuaScript::new(include_str!("../lua/outbox.lua")),
            outbox_index: LuaScript::new(include_str!("../lua/outbox_index.lua")),
        }
    }
}

/// Key names (see the module docs).
#[derive(Debug, Clone)]
struct Keys {
    namespace: String,
    leases: String,
    calls: String,
    workers: String,
    outbox: String,
    dead_letters: String,
}

impl Keys {
    fn new(namespace: &str) -> Keys {
        Keys {
            namespace: namespace.to_owned(),
            leases: format!("{namespace}:{{idx}}:leases"),
            calls: format!("{namespace}:{{idx}}:calls"),
            workers: format!("{namespace}:{{idx}}:workers"),
            outbox: format!("{namespace}:{{idx}}:outbox"),
            dead_letters: format!("{namespace}:{{idx}}:webhooks:dead"),
        }
    }

    fn call(&self, id: &CallId) -> String {
        format!("{}:call:{{{id}}}", self.namespace)
    }

    /// The call hash and its two recording tracks: `KEYS[1..3]` of every call script.
    fn call_keys(&self, id: &CallId) -> [String; 3] {
        let call = self.call(id);
        let rec_in = format!("{call}:rec:in");
        let rec_out = format!("{call}:rec:out");
        [call, rec_in, rec_out]
    }

    /// The call's webhook outbox: `KEYS[4]` of every call script.
    fn call_outbox(&self, id: &CallId) -> String {
        format!("{}:outbox", self.call(id))
    }

    fn tenant_live(&self, tenant: &TenantId) -> String {
        format!("{}:{{idx}}:tenant:{}:live", self.namespace, tenant.as_str())
    }

    fn worker(&self, id: &str) -> String {
        format!("{}:{{idx}}:worker:{id}", self.namespace)
    }
}

/// Counts webhook events a script had no room for in a call's outbox.
fn count_dropped(dropped: i64) {
    if dropped > 0 {
        metrics::counter!(crate::metrics::WEBHOOK_EVENTS_DROPPED).increment(dropped.unsigned_abs());
    }
}

/// The member of the calls index: lexicographic order is creation order.
fn calls_member(created_ms: u64, id: &CallId) -> String {
    format!("{created_ms:016}:{id}")
}

/// The list cursors this store hands out and accepts (calls-index members), as a regular
/// expression: the control API's OpenAPI document states it.
pub const LIST_CURSOR_PATTERN: &str = "^[0-9]{16}:[A-Za-z0-9_-]{1,64}$";

/// The call id of a calls-index member (also a list cursor), if it is one.
fn parse_calls_member(member: &str) -> Option<CallId> {
    let (created, id) = member.split_once(':')?;
    if created.len() != 16 || !created.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    CallId::parse(id).ok()
}

/// The connection to one server or to a cluster; everything else in this file is written
/// once against it.
#[derive(Clone)]
enum Connection {
    /// Reconnects in the background after a dropped connection.
    Standalone(ConnectionManager),
    /// One multiplexed connection per node, reconnected as needed; follows the slot map.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Standalone(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Standalone(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// A [`CallStore`] on one Redis server or a Redis Cluster (see the module docs).
#[derive(Clone)]
pub struct RedisStore {
    /// One multiplexed connection (per node) for every call of the worker (clones share
    /// it), so concurrent calls' commands are pipelined on one socket; rebuilt after
    /// timeouts in a row.
    conn: reconnect::SharedConnection,
    keys: Keys,
    options: RedisStoreOptions,
    scripts: std::sync::Arc<Scripts>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore").field("options", &self.options).finish_non_exhaustive()
    }
}

/// Maps a redis error: out of memory is `Full`, anything else is `Unavailable`.
fn store_error(e: RedisError) -> StoreError {
    let text = e.to_string();
    if e.code() == Some("OOM") || text.contains("OOM command not allowed") {
        // Redis does not say how many calls it holds; 0 stands for "unknown".
        return StoreError::Full(0);
    }
    StoreError::Unavailable(format!("redis: {text}"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unexpected(what: &str, reply: &impl fmt::Debug) -> StoreError {
    StoreError::Unavailable(format!("unexpected reply from redis to {what}: {reply:?}"))
}

fn value_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn value_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

/// A script's reply: `{tag, values…}`.
struct Reply {
    what: &'static str,
    items: Vec<Value>,
}

impl Reply {
    fn new(what: &'static str, value: Value) -> Result<Reply, StoreError> {
        match value {
            Value::Array(items) if !items.is_empty() => Ok(Reply { what, items }),
            other => Err(unexpected(what, &other)),
        }
    }

    fn tag(&self) -> String {
        self.items.first().and_then(value_string).unwrap_or_default()
    }

    fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.items.get(i).and_then(value_i64).ok_or_else(|| unexpected(self.what, &self.items))
    }

    fn u64(&self, i: usize) -> Result<u64, StoreError> {
        u64::try_from(self.int(i)?).map_err(|_| unexpected(self.what, &self.items))
    }

    /// The refusals every call script shares: `NOTFOUND`, `ENDED`, `FENCED`, `STALE`.
    fn refusal(&self) -> StoreError {
        match self.tag().as_str() {
            "NOTFOUND" => StoreError::NotFound,
            "ENDED" => {
                // An ended call always stores its reason; the fallback is never used.
                let reason = self
                    .items
                    .get(1)
                    .and_then(value_string)
                    .and_then(|r| EndReason::parse(&r))
                    .unwrap_or(EndReason::InternalError);
                StoreError::Ended { reason }
            }
            "FENCED" => match self.u64(1) {
                Ok(current) => StoreError::Fenced { current: Epoch(current) },
                Err(e) => e,
            },
            "STALE" => match self.u64(1) {
                Ok(current) => StoreError::Stale { current: Epoch(current) },
                Err(e) => e,
            },
            _ => unexpected(self.what, &self.items),
        }
    }
}

/// A flat `field, value, …` array (HGETALL inside a script) as a map.
fn fields_from_flat(value: Value) -> Option<HashMap<String, Vec<u8>>> {
    let Value::Array(items) = value else { return None };
    let mut fields = HashMap::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let key = value_string(&k)?;
        let Value::BulkString(bytes) = v else { return None };
        fields.insert(key, bytes);
    }
    Some(fields)
}

fn corrupt(id: &CallId, field: &str) -> StoreError {
    StoreError::Unavailable(format!("call {id}: stored field {field:?} is missing or malformed"))
}

fn field_str<'a>(fields: &'a HashMap<String, Vec<u8>>, name: &str) -> Option<&'a str> {
    fields.get(name).and_then(|b| std::str::from_utf8(b).ok()).filter(|s| !s.is_empty())
}

fn field_u64(fields: &HashMap<String, Vec<u8>>, name: &str) -> Option<u64> {
    field_str(fields, name).and_then(|s| s.parse().ok())
}

fn parse_status(s: &str) -> Option<RecordStatus> {
    match s {
        "created" => Some(RecordStatus::Created),
        "active" => Some(RecordStatus::Active),
        "ended" => Some(RecordStatus::Ended),
        _ => None,
    }
}

/// A call record from its hash fields.
fn record_from_fields(id: &CallId, mut fields: HashMap<String, Vec<u8>>) -> Result<CallRecord, StoreError> {
    let tenant = field_str(&fields, "tenant")
        .and_then(|t| TenantId::parse(t).ok())
        .ok_or_else(|| corrupt(id, "tenant"))?;
    let status = field_str(&fields, "status").and_then(parse_status).ok_or_else(|| corrupt(id, "status"))?;
    let epoch = field_u64(&fields, "epoch").ok_or_else(|| corrupt(id, "epoch"))?;
    let owner = match field_str(&fields, "owner") {
        Some(o) => Some(WorkerId::parse(o).map_err(|_| corrupt(id, "owner"))?),
        None => None,
    };
    let lease_until = field_u64(&fields, "lease_until").map(UnixMillis);
    let end_reason = match field_str(&fields, "end_reason") {
        Some(r) => Some(EndReason::parse(r).ok_or_else(|| corrupt(id, "end_reason"))?),
        None => None,
    };
    let created_at = field_u64(&fields, "created").map(UnixMillis).ok_or_else(|| corrupt(id, "created"))?;
    let updated_at = field_u64(&fields, "updated").map(UnixMillis).ok_or_else(|| corrupt(id, "updated"))?;
    let checkpoint = field_u64(&fields, "ckpt_seq")
        .map(|seq| Checkpoint { seq, blob: Bytes::from(fields.remove("ckpt").unwrap_or_default()) });
    Ok(CallRecord {
        call_id: id.clone(),
        tenant,
        status,
        epoch: Epoch(epoch),
        owner,
        lease_until,
        end_reason,
        created_at,
        updated_at,
        checkpoint,
    })
}

/// The seed URLs of `options.url`: exactly one for a standalone server.
fn seed_urls(options: &RedisStoreOptions) -> Result<Vec<&str>, StoreError> {
    let urls: Vec<&str> = options.url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
    match (options.mode, urls.len()) {
        (_, 0) => Err(StoreError::Invalid("redis url: none given".into())),
        (RedisMode::Standalone, n) if n > 1 => {
            Err(StoreError::Invalid("redis url: several URLs are only for cluster mode".into()))
        }
        _ => Ok(urls),
    }
}

/// The private CA to trust for `rediss://`, read from `tls_ca_file`.
fn tls_certificates(options: &RedisStoreOptions) -> Result<Option<TlsCertificates>, StoreError> {
    let Some(path) = &options.tls_ca_file else { return Ok(None) };
    let pem = std::fs::read(path)
        .map_err(|e| StoreError::Invalid(format!("redis CA file {}: {e}", path.display())))?;
    Ok(Some(TlsCertificates { client_tls: None, root_cert: Some(pem) }))
}

/// Opens the connection `options` describe (one server or a cluster).
async fn open(options: &RedisStoreOptions) -> Result<Connection, StoreError> {
    let urls = seed_urls(options)?;
    let certificates = tls_certificates(options)?;
    if urls.iter().any(|u| u.starts_with("rediss://")) {
        // rustls is built with ring only; make it the process default explicitly (an error
        // only means a provider is already installed).
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let bad_url = |e: RedisError| StoreError::Invalid(format!("redis url: {e}"));
    match options.mode {
        RedisMode::Standalone => {
            let url = urls[0];
            let client = match certificates {
                Some(certs) => redis::Client::build_with_tls(url, certs),
                None => redis::Client::open(url),
            }
            .map_err(bad_url)?;
            // The crate's own response timeout is only a backstop (each operation is bounded
            // by ours); reconnects back off from 50 ms to at most 1 s so a restarted Redis is
            // found again quickly.
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(options.takeover_timeout))
                .set_connection_timeout(Some(options.takeover_timeout))
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(1))
                .set_number_of_retries(6);
            let conn = ConnectionManager::new_with_config(client, config).await.map_err(store_error)?;
            Ok(Connection::Standalone(conn))
        }
        RedisMode::Cluster => {
            // The same backstops per node; a request that meets a moved slot or a dropped
            // node is retried (after a topology refresh) within our own bound.
            let mut builder = ClusterClientBuilder::new(urls)
                .connection_timeout(options.takeover_timeout)
                .response_timeout(options.takeover_timeout)
                .min_retry_wait(50)
                .max_retry_wait(1_000);
            if let Some(certs) = certificates {
                builder = builder.certs(certs);
            }
            let client = builder.build().map_err(bad_url)?;
            let conn = client.get_async_connection().await.map_err(store_error)?;
            Ok(Connection::Cluster(conn))
        }
    }
}

impl RedisStore {
    /// Connects (failing fast with [`StoreError::Unavailable`] if Redis does not answer a
    /// `PING` within `takeover_timeout`; on a cluster, every primary must answer) and
    /// returns the store.
    pub async fn connect(options: RedisStoreOptions) -> Result<RedisStore, StoreError> {
        if options.namespace.is_empty() || options.namespace.contains(['{', '}']) {
            return Err(StoreError::Invalid("namespace must be non-empty and free of '{' and '}'".into()));
        }
        for (name, d) in [
            ("response_timeout", options.response_timeout),
            ("takeover_timeout", options.takeover_timeout),
            ("ended_retention", options.ended_retention),
            ("live_ttl", options.live_ttl),
        ] {
            if millis(d) == 0 {
                return Err(StoreError::Invalid(format!("{name} must be at least 1 ms")));
            }
        }
        let conn = reconnect::SharedConnection::connect(options.clone(), options.takeover_timeout).await?;
        let store = RedisStore {
            conn,
            keys: Keys::new(&options.namespace),
            options,
            scripts: std::sync::Arc::new(Scripts::load()),
        };
        store.ping().await?;
        Ok(store)
    }

    /// Whether Redis answers, within the response timeout (for readiness checks).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(self.options.response_timeout, async move {
            let pong: String = redis::cmd("PING").query_async(&mut conn).await.map_err(store_error)?;
            if pong == "PONG" { Ok(()) } else { Err(unexpected("PING", &pong)) }
        })
        .await
    }

    pub fn options(&self) -> &RedisStoreOptions {
        &self.options
    }

    /// The keys one call occupies: its hash and its two recording tracks.
    pub fn call_keys(&self, call_id: &CallId) -> [String; 3] {
        self.keys.call_keys(call_id)
    }

    /// The global index keys: leases, calls, workers.
    pub fn index_keys(&self) -> [String; 3] {
        [self.keys.leases.clone(), self.keys.calls.clone(), self.keys.workers.clone()]
    }

    /// Removes the members of a tenant's live set whose call ended or expired: `sample`
    /// random ones, or all of them (in batches). Returns how many live members remain among
    /// those checked.
    async fn prune_tenant_live(&self, key: &str, sample: Option<usize>) -> Result<usize, StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(self.options.response_timeout * 4, async move {
            let mut live = 0;
            let mut cursor = 0usize;
            loop {
                let members: Vec<String> = match sample {
                    Some(n) => redis::cmd("ZRANDMEMBER").arg(key).arg(n).query_async(&mut conn).await,
                    None => {
                        redis::cmd("ZRANGE")
                            .arg(key)
                            .arg(cursor)
                            .arg(cursor + TENANT_PRUNE_BATCH - 1)
                            .query_async(&mut conn)
                            .await
                    }
                }
                .map_err(store_error)?;
                if members.is_empty() {
                    return Ok(live);
                }
                let ids: Vec<Option<CallId>> = members.iter().map(|m| CallId::parse(m).ok()).collect();
                // One command per call: each call's hash is in its own slot.
                let reads = ids
                    .iter()
                    .map(|id| {
                        let hash = id.as_ref().map(|id| self.keys.call(id)).unwrap_or_default();
                        let mut read = redis::cmd("HGET");
                        read.arg(hash).arg("status");
                        read
                    })
                    .collect();
                let statuses: Vec<Option<String>> = self.query_each(reads).await?;
                let mut gone = redis::pipe();
                let mut removed = 0usize;
                for (member, status) in members.iter().zip(&statuses) {
                    match status.as_deref() {
                        Some("created" | "active") => live += 1,
                        _ => {
                            gone.cmd("ZREM").arg(key).arg(member).ignore();
                            removed += 1;
                        }
                    }
                }
                if removed > 0 {
                    gone.query_async::<()>(&mut conn).await.map_err(store_error)?;
                }
                if sample.is_some() || members.len() < TENANT_PRUNE_BATCH {
                    return Ok(live);
                }
                cursor += members.len() - removed;
            }
        })
        .await
    }

    /// Runs `fut` within `limit`; past it the outcome is unknown.
    async fn bounded<T>(
        &self,
        limit: Duration,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(limit, fut).await {
            Ok(result) => {
                if !matches!(result, Err(StoreError::Unavailable(_))) {
                    self.conn.answered();
                }
                result
            }
            Err(_) => {
                self.conn.timed_out();
                Err(StoreError::Unavailable(format!("redis did not answer within {limit:?}")))
            }
        }
    }

    /// Runs a prepared script within `limit`.
    async fn run(
        &self,
        what: &'static str,
        invocation: Invocation<'_>,
        limit: Duration,
    ) -> Result<Reply, StoreError> {
        let mut conn = self.conn.clone();
        let value = self
            .bounded(limit, async { invocation.invoke::<Value>(&mut conn).await.map_err(store_error) })
            .await?;
        Reply::new(what, value)
    }

    /// Runs one command per call, concurrently, in order of `commands`. Each call's keys
    /// live in their own slot, so a cluster cannot take these as one pipeline; on one
    /// server they share the socket and are pipelined all the same.
    async fn query_each<T: FromRedisValue>(&self, commands: Vec<Cmd>) -> Result<Vec<T>, StoreError> {
        let replies = commands.into_iter().map(|cmd| {
            let mut conn = self.conn.clone();
            async move { cmd.query_async::<T>(&mut conn).await.map_err(store_error) }
        });
        futures_util::future::try_join_all(replies).await
    }

    /// A call script's invocation with the call's four keys (hash, tracks, outbox).
    fn invocation<'a>(&self, script: &'a LuaScript, call_id: &CallId) -> Invocation<'a> {
        let mut invocation = script.prepare();
        for key in self.keys.call_keys(call_id) {
            invocation.key(key);
        }
        invocation.key(self.keys.call_outbox(call_id));
        invocation
    }

    /// Appends webhook events as `ARGV` groups of five (see `argv_events` in the prelude).
    fn event_args(invocation: &mut Invocation<'_>, events: &[OutboxEvent]) {
        for e in events {
            invocation
                .arg(e.kind.as_str())
                .arg(e.kind.bit())
                .arg(e.id.as_str())
                .arg(e.at.0)
                .arg(e.data.as_str());
        }
    }

    /// Puts a call whose outbox a script left non-empty (`len > 0`) in the outbox index,
    /// due now unless it is already there (a backoff or a claim is never moved). Best
    /// effort: a call left out is put back by its next script, or after its end by the
    /// reaper (see the module docs).
    async fn index_outbox(&self, call_id: &CallId, len: i64) {
        if len <= 0 {
            return;
        }
        let mut conn = self.conn.clone();
        let zadd = redis::cmd("ZADD").arg(&self.keys.outbox).arg("NX").arg(0).arg(call_id.as_str()).clone();
        let result = self
            .bounded(self.options.response_timeout, async {
                zadd.query_async::<i64>(&mut conn).await.map_err(store_error)
            })
            .await;
        if let Err(e) = result {
            warn!(call_id = %call_id, error = %e, "outbox index update failed; it will be repaired");
        }
    }

    /// Indexes a call's outbox if it holds events (reads its length first): for an end
    /// whose reply was lost, and for ended calls the reaper meets in the lease index.
    async fn repair_outbox(&self, call_id: &CallId) {
        let mut conn = self.conn.clone();
        let key = self.keys.call_outbox(call_id);
        let len = self
            .bounded(self.options.response_timeout, async {
                redis::cmd("LLEN").arg(&key).query_async::<i64>(&mut conn).await.map_err(store_error)
            })
            .await;
        match len {
            Ok(len) => self.index_outbox(call_id, len).await,
            Err(e) => warn!(call_id = %call_id, error = %e, "outbox length unreadable; it will be repaired"),
        }
    }

    /// Runs the index-slot outbox script.
    async fn outbox_index_op(&self, args: &[&dyn ToRedisArgsDyn]) -> Result<Value, StoreError> {
        let mut invocation = self.scripts.outbox_index.prepare();
        invocation.key(&self.keys.outbox).key(&self.keys.dead_letters);
        for a in args {
            a.push_to(&mut invocation);
        }
        let mut conn = self.conn.clone();
        self.bounded(self.options.response_timeout, async {
            invocation.invoke::<Value>(&mut conn).await.map_err(store_error)
        })
        .await
    }

    /// Runs the call-slot outbox script (`head` or a settle).
    async fn outbox_call_op(&self, call_id: &CallId, op: &str, body: &[u8]) -> Result<Reply, StoreError> {
        let mut invocation = self.invocation(&self.scripts.outbox, call_id);
        invocation.arg(op).arg(body);
        self.run("outbox", invocation, self.options.response_timeout).await
    }

    /// Releases a claim whose call has no event left: removes the call from the index if
    /// the claim is still current, then re-reads the outbox, so that an event appended
    /// between the last read and the removal (whose writer found the call still indexed)
    /// is indexed again.
    async fn release_empty(&self, claim: &OutboxClaim) -> Result<(), StoreError> {
        self.outbox_index_op(&[&"release", &claim.call_id.as_str(), &claim.token, &"remove"]).await?;
        self.repair_outbox(&claim.call_id).await;
        Ok(())
    }

    /// Writes a call's lease-index score when a script asked for it (`score > 0`). Best
    /// effort: a failed write leaves the index below the lease, which is safe (the reaper
    /// re-checks and corrects it).
    async fn index_lease(&self, call_id: &CallId, score: i64) {
        if score <= 0 {
            return;
        }
        let mut conn = self.conn.clone();
        let zadd = redis::cmd("ZADD").arg(&self.keys.leases).arg(score).arg(call_id.as_str()).clone();
        let result = self
            .bounded(self.options.response_timeout, async {
                zadd.query_async::<i64>(&mut conn).await.map_err(store_error)
            })
            .await;
        if let Err(e) = result {
            warn!(call_id = %call_id, error = %e, "lease index update failed; the reaper will correct it");
        }
    }

    /// Drops a call from the lease index (it ended or is gone). Best effort: an ended call
    /// left in the index is dropped by the next reaper pass that meets it.
    async fn unindex_lease(&self, call_id: &CallId) {
        let mut conn = self.conn.clone();
        let zrem = redis::cmd("ZREM").arg(&self.keys.leases).arg(call_id.as_str()).clone();
        let result = self
            .bounded(self.options.response_timeout, async {
                zrem.query_async::<i64>(&mut conn).await.map_err(store_error)
            })
            .await;
        if let Err(e) = result {
            warn!(call_id = %call_id, error = %e, "lease index removal failed; the reaper will drop it");
        }
    }

    /// Re-checks reaper candidates against their hashes: returns the live overdue ones and
    /// corrects (`ZADD` the real lease) or drops (`ZREM`) the others.
    async fn recheck_candidates(
        &self,
        ids: &[CallId],
        now: u64,
        overdue_ms: u64,
    ) -> Result<Vec<LeaseObservation>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let reads = ids
            .iter()
            .map(|id| {
                let mut read = redis::cmd("HMGET");
                read.arg(self.keys.call(id)).arg(&["status", "epoch", "lease_until", "created"]);
                read
            })
            .collect();
        type Fields = (Option<String>, Option<u64>, Option<u64>, Option<u64>);
        let rows: Vec<Fields> = self.query_each(reads).await?;
        let mut fix = redis::pipe();
        let mut fixes = 0;
        let mut found = Vec::new();
        for (id, (status, epoch, lease_until, created)) in ids.iter().zip(rows) {
            let status = status.as_deref().and_then(parse_status);
            let (Some(status), Some(epoch), Some(lease)) = (status, epoch, lease_until.or(created)) else {
                // Gone (expired) or unreadable: nothing to reap.
                fix.cmd("ZREM").arg(&self.keys.leases).arg(id.as_str()).ignore();
                fixes += 1;
                continue;
            };
            if status == RecordStatus::Ended {
                // Its end may have been cut short before it indexed the outbox.
                self.repair_outbox(id).await;
                fix.cmd("ZREM").arg(&self.keys.leases).arg(id.as_str()).ignore();
                fixes += 1;
            } else if lease.saturating_add(overdue_ms) <= now {
                found.push(LeaseObservation {
                    call_id: id.clone(),
                    epoch: Epoch(epoch),
                    status,
                    lease_until: UnixMillis(lease),
                    observed_at: UnixMillis(now),
                });
            } else {
                // Live: the index lagged behind the lease. Raise it to the real lease, which
                // is safe even if the lease moves again meanwhile (it only moves later,
                // unless an owner shrinks it, and then its own script rewrites the index).
                fix.cmd("ZADD").arg(&self.keys.leases).arg(lease).arg(id.as_str()).ignore();
                fixes += 1;
            }
        }
        if fixes > 0 {
            fix.query_async::<()>(&mut conn).await.map_err(store_error)?;
        }
        Ok(found)
    }
}

#[async_trait]
impl CallStore for RedisStore {
    async fn create(&self, call: NewCall) -> Result<(), StoreError> {
        let id = call.call_id;
        let mut invocation = self.invocation(&self.scripts.create, &id);
        invocation
            .arg(call.tenant.as_str())
            .arg(call.checkpoint.seq)
            .arg(&call.checkpoint.blob[..])
            .arg(millis(self.options.live_ttl))
            .arg(self.options.webhooks.mask(&call.tenant));
        let reply = self.run("create", invocation, self.options.response_timeout).await?;
        let (created, status) = match reply.tag().as_str() {
            "OK" => (reply.u64(1)?, RecordStatus::Created),
            "EXISTS" => {
                let status = reply.items.get(2).and_then(value_string);
                (reply.u64(1)?, status.as_deref().and_then(parse_status).unwrap_or(RecordStatus::Ended))
            }
            _ => return Err(reply.refusal()),
        };
        // Index the call; for an existing call this repairs the indexes a create whose reply
        // was lost may have left out (NX: never move an existing entry).
        let mut conn = self.conn.clone();
        let mut index = redis::pipe();
        index.cmd("ZADD").arg(&self.keys.calls).arg("NX").arg(0).arg(calls_member(created, &id)).ignore();
        if status != RecordStatus::Ended {
            index.cmd("ZADD").arg(&self.keys.leases).arg("NX").arg(created).arg(id.as_str()).ignore();
            index
                .cmd("ZADD")
                .arg(self.keys.tenant_live(&call.tenant))
                .arg("NX")
                .arg(created)
                .arg(id.as_str())
                .ignore();
        }
        let indexed = self
            .bounded(self.options.response_timeout, async {
                index.query_async::<()>(&mut conn).await.map_err(store_error)
            })
            .await;
        match (reply.tag().as_str(), indexed) {
            ("EXISTS", _) => Err(StoreError::AlreadyExists),
            // Stored but maybe not indexed: an unknown outcome, like a timeout. The retry
            // answers AlreadyExists and repairs the indexes.
            (_, Err(e)) => Err(e),
            (_, Ok(())) => {
                // Keep the tenant's live set near its live calls: check two random members.
                // Best effort: a failure leaves stale members for the next prune.
                let key = self.keys.tenant_live(&call.tenant);
                let _ = self.prune_tenant_live(&key, Some(TENANT_PRUNE_SAMPLE)).await;
                Ok(())
            }
        }
    }

    async fn attach(
        &self,
        call_id: &CallId,
        attempt: &AttemptId,
        owner: &WorkerId,
        expected_epoch: Epoch,
        lease: Duration,
    ) -> Result<Attached, StoreError> {
        let mut invocation = self.invocation(&self.scripts.attach, call_id);
        invocation
            .arg(attempt.0.as_str())
            .arg(expected_epoch.0)
            .arg(owner.as_str())
            .arg(millis(lease))
            .arg(millis(self.options.live_ttl));
        let reply = self.run("attach", invocation, self.options.takeover_timeout).await?;
        if reply.tag() != "OK" {
            return Err(reply.refusal());
        }
        let epoch = Epoch(reply.u64(1)?);
        let score = reply.int(2)?;
        let fields = reply.items.get(3).cloned().and_then(fields_from_flat);
        let record = record_from_fields(call_id, fields.ok_or_else(|| unexpected("attach", &reply.items))?)?;
        self.index_lease(call_id, score).await;
        Ok(Attached { epoch, record })
    }

    async fn checkpoint_with_events(
        &self,
        call_id: &CallId,
        epoch: Epoch,
        checkpoint: Checkpoint,
        recording: RecordingChunk,
        events: &[OutboxEvent],
        lease: Duration,
    ) -> Result<CheckpointAck, StoreError> {
        let mut invocation = self.invocation(&self.scripts.checkpoint, call_id);
        invocation
            .arg(epoch.0)
            .arg(checkpoint.seq)
            .arg(&checkpoint.blob[..])
            .arg(millis(lease))
            .arg(millis(self.options.live_ttl))
            .arg(self.options.recording_track_bytes_max)
            .arg(&recording.inbound[..])
            .arg(&recording.outbound[..])
            .arg(call_id.as_str())
            .arg(self.options.webhook_call_events_max);
        Self::event_args(&mut invocation, events);
        let reply = self.run("checkpoint", invocation, self.options.response_timeout).await?;
        let ack = match reply.tag().as_str() {
            "OK" => CheckpointAck::Applied,
            "DUP" => CheckpointAck::Duplicate { stored_seq: reply.u64(1)? },
            _ => return Err(reply.refusal()),
        };
        self.index_lease(call_id, reply.int(2)?).await;
        self.index_outbox(call_id, reply.int(3)?).await;
        count_dropped(reply.int(4)?);
        Ok(ack)
    }

    async fn renew(&self, call_id: &CallId, epoch: Epoch, lease: Duration) -> Result<(), StoreError> {
        let mut invocation = self.invocation(&self.scripts.renew, call_id);
        invocation.arg(epoch.0).arg(millis(lease)).arg(millis(self.options.live_ttl));
        let reply = self.run("renew", invocation, self.options.response_timeout).await?;
        if reply.tag() != "OK" {
            return Err(reply.refusal());
        }
        self.index_lease(call_id, reply.int(1)?).await;
        Ok(())
    }

    async fn end_with_events(
        &self,
        call_id: &CallId,
        epoch: Epoch,
        reason: EndReason,
        final_checkpoint: Option<Checkpoint>,
        recording: RecordingChunk,
        events: &[OutboxEvent],
    ) -> Result<Epoch, StoreError> {
        let (has_final, seq, blob) = match &final_checkpoint {
            Some(c) => ("1", c.seq, &c.blob[..]),
            None => ("0", 0, &[][..]),
        };
        let mut invocation = self.invocation(&self.scripts.end, call_id);
        invocation
            .arg(epoch.0)
            .arg(reason.as_str())
            .arg(has_final)
            .arg(seq)
            .arg(blob)
            .arg(millis(self.options.ended_retention))
            .arg(self.options.recording_track_bytes_max)
            .arg(&recording.inbound[..])
            .arg(&recording.outbound[..])
            .arg(call_id.as_str())
            .arg(self.options.webhook_call_events_max);
        Self::event_args(&mut invocation, events);
        let reply = self.run("end", invocation, self.options.response_timeout).await?;
        match reply.tag().as_str() {
            "OK" => {
                let ended = Epoch(reply.u64(1)?);
                // The outbox first: while the call is in the lease index, the reaper
                // repairs a missing outbox entry (module docs).
                self.index_outbox(call_id, reply.int(2)?).await;
                self.unindex_lease(call_id).await;
                count_dropped(reply.int(3)?);
                Ok(ended)
            }
            tag => {
                if tag == "ENDED" {
                    // Maybe our own end whose reply was lost: finish its index updates.
                    self.repair_outbox(call_id).await;
                    self.unindex_lease(call_id).await;
                }
                Err(reply.refusal())
            }
        }
    }

    async fn get(&self, call_id: &CallId) -> Result<CallRecord, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.keys.call(call_id);
        let fields: HashMap<String, Vec<u8>> = self
            .bounded(self.options.response_timeout, async {
                redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await.map_err(store_error)
            })
            .await?;
        if fields.is_empty() {
            return Err(StoreError::NotFound);
        }
        record_from_fields(call_id, fields)
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        if !(1..=LIST_LIMIT_MAX).contains(&query.limit) {
            return Err(StoreError::Invalid(format!(
                "limit {} is outside 1..={LIST_LIMIT_MAX}",
                query.limit
            )));
        }
        let mut start = match &query.cursor {
            Some(cursor) => {
                parse_calls_member(cursor)
                    .ok_or_else(|| StoreError::Invalid("malformed list cursor".into()))?;
                format!("({cursor}")
            }
            None => "-".to_owned(),
        };
        let mut conn = self.conn.clone();
        self.bounded(self.options.response_timeout, async move {
            let mut records = Vec::with_capacity(query.limit.min(64));
            let mut last_member: Option<String> = None;
            let mut scanned = 0;
            let mut gone = Vec::new();
            let next_cursor = 'scan: loop {
                let members: Vec<String> = redis::cmd("ZRANGE")
                    .arg(&self.keys.calls)
                    .arg(&start)
                    .arg("+")
                    .arg("BYLEX")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(LIST_BATCH)
                    .query_async(&mut conn)
                    .await
                    .map_err(store_error)?;
                let Some(last) = members.last() else { break None };
                start = format!("({last}");
                let ids: Vec<Option<CallId>> = members.iter().map(|m| parse_calls_member(m)).collect();
                let reads = ids
                    .iter()
                    .map(|id| {
                        // A foreign member reads an empty hash (a key in the index's own slot,
                        // where nothing else lives) and is pruned like an expired call.
                        let key = match id {
                            Some(id) => self.keys.call(id),
                            None => format!("{}:{{idx}}:none", self.keys.namespace),
                        };
                        let mut read = redis::cmd("HGETALL");
                        read.arg(key);
                        read
                    })
                    .collect();
                let rows: Vec<HashMap<String, Vec<u8>>> = self.query_each(reads).await?;
                for ((member, id), fields) in members.iter().zip(ids).zip(rows) {
                    let Some(id) = id.filter(|_| !fields.is_empty()) else {
                        gone.push(member.clone());
                        continue;
                    };
                    let record = record_from_fields(&id, fields)?;
                    let matches = query.tenant.as_ref().is_none_or(|t| &record.tenant == t)
                        && query.status.is_none_or(|s| record.status == s);
                    if !matches {
                        continue;
                    }
                    if records.len() == query.limit {
                        // Another match exists: the page ends at the last record returned.
                        break 'scan last_member;
                    }
                    records.push(record);
                    last_member = Some(member.clone());
                }
                scanned += members.len();
                if members.len() < LIST_BATCH {
                    break None;
                }
                if scanned >= LIST_SCAN_MAX {
                    // Bounded work per request: resume from the last member examined.
                    break Some(start.trim_start_matches('(').to_owned());
                }
            };
            if !gone.is_empty() {
                redis::cmd("ZREM")
                    .arg(&self.keys.calls)
                    .arg(&gone)
                    .query_async::<i64>(&mut conn)
                    .await
                    .map_err(store_error)?;
            }
            Ok(ListPage { records, next_cursor })
        })
        .await
    }

    async fn live_calls_of(&self, tenant: &TenantId, bound: usize) -> Result<usize, StoreError> {
        let key = self.keys.tenant_live(tenant);
        let mut conn = self.conn.clone();
        let members: usize = self
            .bounded(self.options.response_timeout, async {
                redis::cmd("ZCARD").arg(&key).query_async(&mut conn).await.map_err(store_error)
            })
            .await?;
        if members < bound {
            // Stale members only make the count higher: below the bound it is good enough.
            return Ok(members);
        }
        self.prune_tenant_live(&key, None).await
    }

    async fn recording(&self, call_id: &CallId) -> Result<Recording, StoreError> {
        let [call, rec_in, rec_out] = self.keys.call_keys(call_id);
        let mut conn = self.conn.clone();
        let mut read = redis::pipe();
        read.cmd("EXISTS").arg(&call).cmd("HGET").arg(&call).arg("truncated").cmd("GET").arg(&rec_in);
        read.cmd("GET").arg(&rec_out);
        type Row = (i64, Option<String>, Option<Vec<u8>>, Option<Vec<u8>>);
        let (exists, truncated, inbound, outbound): Row = self
            .bounded(self.options.response_timeout, async {
                read.query_async(&mut conn).await.map_err(store_error)
            })
            .await?;
        if exists == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(Recording {
            inbound: Bytes::from(inbound.unwrap_or_default()),
            outbound: Bytes::from(outbound.unwrap_or_default()),
            truncated: truncated.as_deref() == Some("1"),
        })
    }

    async fn expired_leases(
        &self,
        overdue: Duration,
        limit: usize,
    ) -> Result<Vec<LeaseObservation>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let overdue_ms = millis(overdue);
        self.bounded(self.options.takeover_timeout, async {
            let mut found: Vec<LeaseObservation> = Vec::new();
            for _ in 0..EXPIRED_ROUNDS_MAX {
                // Candidates already returned stay in the index; skip past them. Corrected
                // and dropped ones have left the range.
                let want = limit - found.len();
                let mut invocation = self.scripts.scan_leases.prepare();
                invocation.key(&self.keys.leases).arg(overdue_ms).arg(found.len()).arg(want);
                let mut conn = self.conn.clone();
                let value: Value = invocation.invoke(&mut conn).await.map_err(store_error)?;
                let reply = Reply::new("scan_leases", value)?;
                let now = reply.u64(0)?;
                let Some(Value::Array(pairs)) = reply.items.get(1) else {
                    return Err(unexpected("scan_leases", &reply.items));
                };
                let members: Vec<String> = pairs.iter().step_by(2).filter_map(value_string).collect();
                let mut ids = Vec::with_capacity(members.len());
                let mut foreign = Vec::new();
                for member in &members {
                    match CallId::parse(member) {
                        Ok(id) => ids.push(id),
                        Err(_) => foreign.push(member.clone()),
                    }
                }
                if !foreign.is_empty() {
                    redis::cmd("ZREM")
                        .arg(&self.keys.leases)
                        .arg(&foreign)
                        .query_async::<i64>(&mut conn)
                        .await
                        .map_err(store_error)?;
                }
                found.extend(self.recheck_candidates(&ids, now, overdue_ms).await?);
                if members.len() < want || found.len() >= limit {
                    break;
                }
            }
            found.sort_by(|a, b| a.lease_until.cmp(&b.lease_until).then_with(|| a.call_id.cmp(&b.call_id)));
            found.truncate(limit);
            Ok(found)
        })
        .await
    }

    async fn expire(&self, observed: &LeaseObservation, action: ExpireAction) -> Result<Epoch, StoreError> {
        let call_id = &observed.call_id;
        let (kind, reason, extend_ms) = match action {
            ExpireAction::End(reason) => ("end", reason.as_str(), 0),
            ExpireAction::Extend(by) => ("extend", "", millis(by)),
        };
        let mut invocation = self.invocation(&self.scripts.expire, call_id);
        invocation
            .arg(observed.epoch.0)
            .arg(observed.lease_until.0)
            .arg(kind)
            .arg(reason)
            .arg(extend_ms)
            .arg(millis(self.options.ended_retention))
            .arg(millis(self.options.live_ttl))
            .arg(call_id.as_str());
        let reply = self.run("expire", invocation, self.options.takeover_timeout).await?;
        match reply.tag().as_str() {
            "OK" => {
                let epoch = Epoch(reply.u64(1)?);
                self.index_outbox(call_id, reply.int(3)?).await;
                match reply.int(2)? {
                    0 => self.unindex_lease(call_id).await,
                    lease_until => self.index_lease(call_id, lease_until).await,
                }
                Ok(epoch)
            }
            tag => {
                if tag == "ENDED" || tag == "NOTFOUND" {
                    self.unindex_lease(call_id).await;
                }
                Err(reply.refusal())
            }
        }
    }

    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> Result<(), StoreError> {
        let info = serde_json::to_string(worker)
            .map_err(|e| StoreError::Invalid(format!("worker info does not encode: {e}")))?;
        let mut invocation = self.scripts.heartbeat.prepare();
        invocation
            .key(&self.keys.workers)
            .key(self.keys.worker(worker.worker_id.as_str()))
            .arg(worker.worker_id.as_str())
            .arg(info)
            .arg(millis(ttl).max(1));
        let mut conn = self.conn.clone();
        self.bounded(self.options.response_timeout, async {
            invocation.invoke::<i64>(&mut conn).await.map_err(store_error)
        })
        .await?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(self.options.response_timeout, async {
            let mut invocation = self.scripts.workers.prepare();
            invocation.key(&self.keys.workers).arg(WORKERS_MAX);
            let ids: Vec<String> = invocation.invoke(&mut conn).await.map_err(store_error)?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut read = redis::pipe();
            for id in &ids {
                read.cmd("HMGET").arg(self.keys.worker(id)).arg(&["info", "heartbeat_at"]);
            }
            let rows: Vec<(Option<String>, Option<u64>)> =
                read.query_async(&mut conn).await.map_err(store_error)?;
            let mut workers = Vec::with_capacity(rows.len());
            for (id, (info, heartbeat_at)) in ids.iter().zip(rows) {
                let (Some(info), Some(heartbeat_at)) = (info, heartbeat_at) else {
                    continue; // Lapsed between the two reads.
                };
                match serde_json::from_str::<WorkerInfo>(&info) {
                    Ok(mut worker) => {
                        worker.heartbeat_at = UnixMillis(heartbeat_at);
                        workers.push(worker);
                    }
                    Err(e) => warn!(worker_id = %id, error = %e, "unreadable worker entry skipped"),
                }
            }
            workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
            Ok(workers)
        })
        .await
    }

    async fn deregister(&self, worker_id: &WorkerId) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut remove = redis::pipe();
        remove.cmd("ZREM").arg(&self.keys.workers).arg(worker_id.as_str()).ignore();
        remove.cmd("DEL").arg(self.keys.worker(worker_id.as_str())).ignore();
        self.bounded(self.options.response_timeout, async {
            remove.query_async::<()>(&mut conn).await.map_err(store_error)
        })
        .await
    }

    async fn outbox_claim(&self, limit: usize, lease: Duration) -> Result<Vec<OutboxClaim>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let value = self.outbox_index_op(&[&"claim", &limit, &millis(lease).max(1)]).await?;
        let reply = Reply::new("outbox_index", value)?;
        let token = reply.u64(0)?;
        let Some(Value::Array(ids)) = reply.items.get(1) else {
            return Err(unexpected("outbox_index", &reply.items));
        };
        let mut claims = Vec::with_capacity(ids.len());
        for member in ids.iter().filter_map(value_string) {
            match CallId::parse(&member) {
                Ok(call_id) => claims.push(OutboxClaim { call_id, token }),
                Err(_) => {
                    // Not ours: drop it so it is not claimed again.
                    let mut conn = self.conn.clone();
                    let _ = redis::cmd("ZREM")
                        .arg(&self.keys.outbox)
                        .arg(&member)
                        .query_async::<i64>(&mut conn)
                        .await;
                }
            }
        }
        Ok(claims)
    }

    async fn outbox_head(&self, claim: &OutboxClaim) -> Result<Option<PendingEvent>, StoreError> {
        let reply = self.outbox_call_op(&claim.call_id, "head", b"").await?;
        match reply.items.first() {
            Some(Value::BulkString(body)) => {
                let attempts = u32::try_from(reply.u64(1)?).unwrap_or(u32::MAX);
                Ok(Some(PendingEvent { body: Bytes::from(body.clone()), attempts }))
            }
            Some(Value::Nil) => {
                self.release_empty(claim).await?;
                Ok(None)
            }
            _ => Err(unexpected("outbox", &reply.items)),
        }
    }

    async fn outbox_settle(
        &self,
        claim: &OutboxClaim,
        event: &PendingEvent,
        settle: Settle,
    ) -> Result<(), StoreError> {
        match settle {
            Settle::Delivered => {
                self.outbox_call_op(&claim.call_id, "delivered", &event.body).await?;
            }
            Settle::Retry { after } => {
                let reply = self.outbox_call_op(&claim.call_id, "retry", &event.body).await?;
                if reply.int(0)? == 1 {
                    let delay = millis(after);
                    self.outbox_index_op(&[&"release", &claim.call_id.as_str(), &claim.token, &delay])
                        .await?;
                }
            }
            Settle::Dead { reason, attempts } => {
                if reason.is_empty() || !reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                    return Err(StoreError::Invalid(format!(
                        "dead-letter reason {reason:?} is not snake_case"
                    )));
                }
                // The dead letter first: a worker that dies in between leaves the event in
                // the outbox, to be retried (and dead-lettered again), never lost.
                self.outbox_index_op(&[
                    &"dead",
                    &&event.body[..],
                    &reason.as_str(),
                    &attempts,
                    &self.options.webhook_dead_letters_max.max(1),
                ])
                .await?;
                self.outbox_call_op(&claim.call_id, "dead", &event.body).await?;
            }
        }
        Ok(())
    }

    async fn outbox_yield(&self, claim: &OutboxClaim) -> Result<(), StoreError> {
        self.outbox_index_op(&[&"release", &claim.call_id.as_str(), &claim.token, &0u64]).await?;
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let rows: Vec<Vec<u8>> = self
            .bounded(self.options.response_timeout, async {
                redis::cmd("LRANGE")
                    .arg(&self.keys.dead_letters)
                    .arg(0)
                    .arg(limit - 1)
                    .query_async(&mut conn)
                    .await
                    .map_err(store_error)
            })
            .await?;
        let mut letters = Vec::with_capacity(rows.len());
        for row in rows {
            match serde_json::from_slice::<DeadLetter>(&row) {
                Ok(letter) => letters.push(letter),
                Err(e) => warn!(error = %e, "unreadable dead letter skipped"),
            }
        }
        Ok(letters)
    }

    async fn outbox_calls(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(self.options.response_timeout, async {
            redis::cmd("ZCARD").arg(&self.keys.outbox).query_async(&mut conn).await.map_err(store_error)
        })
        .await
    }
}

/// An argument of [`RedisStore::outbox_index_op`], of any type the redis crate can send.
trait ToRedisArgsDyn: Sync {
    fn push_to(&self, invocation: &mut Invocation<'_>);
}

impl<T: ToRedisArgs + Sync> ToRedisArgsDyn for T {
    fn push_to(&self, invocation: &mut Invocation<'_>) {
        invocation.arg(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPTS: [(&str, &str); 12] = [
        ("prelude", PRELUDE),
        ("create", include_str!("../lua/create.lua")),
        ("attach", include_str!("../lua/attach.lua")),
        ("checkpoint", include_str!("../lua/checkpoint.lua")),
        ("renew", include_str!("../lua/renew.lua")),
        ("end", include_str!("../lua/end.lua")),
        ("expire", include_str!("../lua/expire.lua")),
        ("scan_leases", include_str!("../lua/scan_leases.lua")),
        ("heartbeat", include_str!("../lua/heartbeat.lua")),
        ("workers", include_str!("../lua/workers.lua")),
        ("outbox", include_str!("../lua/outbox.lua")),
        ("outbox_index", include_str!("../lua/outbox_index.lua")),
    ];

    /// Every `redis.call` in a script names its key as `KEYS[n]` (the prelude's helpers take
    /// `key`, which their callers pass from `KEYS`), never a name built in Lua: a key the
    /// script does not declare could live in another slot of a cluster. `TIME` has no key.
    #[test]
    fn every_script_touches_only_its_declared_keys() {
        for (name, code) in SCRIPTS {
            for call in code.split("redis.call(").skip(1) {
                // The command is the first (quoted) argument, the key the second.
                let command = call.split('\'').nth(1).unwrap_or_default();
                if command == "TIME" {
                    continue;
                }
                let key = call.split([',', ')']).nth(1).unwrap_or_default().trim();
                let declared = key.starts_with("KEYS[") || (name == "prelude" && key == "key");
                assert!(declared, "{name}.lua: {command} on {key:?}, not a KEYS entry");
                let command = command.to_ascii_lowercase();
                assert!(
                    ACL_COMMANDS.split_whitespace().any(|c| c == format!("+{command}")),
                    "{name}.lua: {command} missing from ACL_COMMANDS"
                );
            }
        }
    }

    /// The ACL line operators copy is the one the tests prove sufficient.
    #[test]
    fn the_documented_acl_line_has_exactly_these_commands() {
        let docs = include_str!("../../../docs/operations.md");
        let line = docs.lines().find(|l| l.starts_with("ACL SETUSER callworker ")).expect("the ACL line");
        let documented: Vec<&str> = line.split_whitespace().filter(|w| w.starts_with('+')).collect();
        assert_eq!(documented, ACL_COMMANDS.split_whitespace().collect::<Vec<_>>(), "{line}");
        assert!(docs.contains(ACL_COMMANDS_CLUSTER));
    }

    #[test]
    fn every_key_of_a_call_carries_its_hash_tag() {
        let keys = Keys::new("cw");
        let id = CallId::parse("c-1").expect("valid");
        assert_eq!(keys.call_keys(&id), ["cw:call:{c-1}", "cw:call:{c-1}:rec:in", "cw:call:{c-1}:rec:out"]);
        assert_eq!(keys.leases, "cw:{idx}:leases");
        assert_eq!(keys.worker("w1"), "cw:{idx}:worker:w1");
        assert_eq!(keys.call_outbox(&id), "cw:call:{c-1}:outbox");
        assert_eq!(
            (keys.outbox.as_str(), keys.dead_letters.as_str()),
            ("cw:{idx}:outbox", "cw:{idx}:webhooks:dead")
        );
    }

    #[test]
    fn calls_members_sort_by_creation_and_parse_back() {
        let a = CallId::parse("zzz").expect("valid");
        let b = CallId::parse("aaa").expect("valid");
        assert!(calls_member(999, &a) < calls_member(1_000, &b));
        assert_eq!(parse_calls_member(&calls_member(1_723_000_000_000, &a)), Some(a));
        for bad in ["", "12:abc", "000000000000000x:abc", "0000000000000001:", "0000000000000001:a b", "abc"]
        {
            assert_eq!(parse_calls_member(bad), None, "{bad:?}");
        }
    }
}
