//! A fleet for the end-to-end tests (included with `mod fleet;` after `mod common;`): a
//! real Redis (one server or a three-primary cluster) and real workers sharing it, with
//! short leases and a quick reaper; resilient native clients; and a stand-in for Twilio's
//! REST API that records what it is sent.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use callworker_client::api::{ControlApi, CreatedCall};
use callworker_client::resilient::{CallEvent, ResilientCall, ResilientConfig};
use callworker_testkit::{RedisCluster, RedisServer, TENANT_KEY, Worker, WorkerOptions};
use tokio::sync::mpsc;

use crate::common::PCMU_8K;

/// Where a fleet keeps its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One redis-server.
    Single,
    /// A Redis Cluster of three primaries.
    Cluster,
}

/// The fleet's Redis: one server or a cluster.
pub enum Redis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    pub async fn start(backend: Backend) -> Redis {
        match backend {
            Backend::Single => Redis::Single(RedisServer::start().await.unwrap()),
            Backend::Cluster => Redis::Cluster(RedisCluster::start(3).await.unwrap()),
        }
    }

    /// `store.redis_url` and `store.redis_mode` for the workers.
    pub fn store_settings(&self) -> (String, &'static str) {
        match self {
            Redis::Single(server) => (server.url(), "standalone"),
            Redis::Cluster(cluster) => (cluster.seed_urls(), "cluster"),
        }
    }

    /// A port to reach it with `redis-cli -c` (which follows a cluster's redirections).
    pub fn port(&self) -> u16 {
        match self {
            Redis::Single(server) => server.port(),
            Redis::Cluster(cluster) => cluster.nodes[0].port(),
        }
    }

    /// The server that holds a call's keys: the one server, or the call's cluster node.
    pub fn server_of(&mut self, call_id: &str) -> &mut RedisServer {
        match self {
            Redis::Single(server) => server,
            Redis::Cluster(cluster) => {
                let node = cluster.node_for_key(&format!("cw:call:{{{call_id}}}")).unwrap();
                &mut cluster.nodes[node]
            }
        }
    }

    /// Restarts a server killed through [`Redis::server_of`]; a cluster is then waited for
    /// until every node reports `cluster_state:ok` again.
    pub async fn restart(&mut self, port: u16) {
        match self {
            Redis::Single(server) => server.restart().await.unwrap(),
            Redis::Cluster(cluster) => {
                let node = cluster.nodes.iter_mut().find(|n| n.port() == port).unwrap();
                node.restart().await.unwrap();
                cluster.wait_ok().await.unwrap();
            }
        }
    }
}

/// A Redis and the workers sharing it (each process is killed by PID when dropped).
pub struct Fleet {
    pub redis: Redis,
    pub workers: Vec<Worker>,
}

/// Settings every fleet worker shares: Redis, short leases, a quick reaper.
pub fn fleet_options(name: &str, redis: &Redis, extra: &[(&str, &str)]) -> WorkerOptions {
    let (redis_url, redis_mode) = redis.store_settings();
    let mut options = WorkerOptions::named(name)
        .env("CALLWORKER_STORE__KIND", "redis")
        .env("CALLWORKER_STORE__REDIS_URL", &redis_url)
        .env("CALLWORKER_STORE__REDIS_MODE", redis_mode)
        .env("CALLWORKER_CHECKPOINT__INTERVAL_MS", "200")
        .env("CALLWORKER_CHECKPOINT__LEASE_MS", "1500")
        .env("CALLWORKER_RESUME__REAPER_INTERVAL_MS", "200")
        .env("CALLWORKER_RESUME__REAPER_GRACE_MS", "300")
        .env("CALLWORKER_RESUME__HEARTBEAT_INTERVAL_MS", "200");
    for (k, v) in extra {
        options = options.env(k, v);
    }
    options
}

impl Fleet {
    /// A fleet on one redis-server.
    pub async fn start(name: &str, workers: usize, extra: &[(&str, &str)]) -> Fleet {
        Fleet::start_on(Backend::Single, name, workers, extra).await
    }

    pub async fn start_on(backend: Backend, name: &str, workers: usize, extra: &[(&str, &str)]) -> Fleet {
        let redis = Redis::start(backend).await;
        let name = match backend {
            Backend::Single => name.to_owned(),
            Backend::Cluster => format!("{name}-cluster"),
        };
        let mut started = Vec::new();
        for i in 0..workers {
            let options = fleet_options(&format!("{name}-w{i}"), &redis, extra);
            started.push(Worker::start(options).await.unwrap());
        }
        Fleet { redis, workers: started }
    }

    pub fn api(&self, i: usize) -> ControlApi {
        ControlApi::new(&self.workers[i].base_url).with_key(TENANT_KEY)
    }

    /// Media URLs with worker `first` first, then the others.
    pub fn media_urls(&self, first: usize) -> Vec<String> {
        let mut order: Vec<usize> = vec![first];
        order.extend((0..self.workers.len()).filter(|&i| i != first));
        order.iter().map(|&i| format!("ws://127.0.0.1:{}/v1/media", self.workers[i].port)).collect()
    }

    /// The API of any worker still running other than `not`.
    pub fn other_api(&self, not: usize) -> ControlApi {
        self.api((0..self.workers.len()).find(|&i| i != not).unwrap())
    }
}

/// A resilient native client of `created`, rotating through `urls` when it reconnects.
pub async fn connect(urls: Vec<String>, created: &CreatedCall) -> (ResilientCall, mpsc::Receiver<CallEvent>) {
    ResilientCall::connect(
        urls,
        created.call_id(),
        &created.resume_token,
        PCMU_8K,
        ResilientConfig::default(),
    )
    .await
    .unwrap()
}

/// Drains events until `pred` matches one (bounded by `wait`); returns the events seen.
pub async fn until(
    events: &mut mpsc::Receiver<CallEvent>,
    wait: Duration,
    mut pred: impl FnMut(&CallEvent) -> bool,
) -> Vec<CallEvent> {
    let mut seen = Vec::new();
    let result = tokio::time::timeout(wait, async {
        while let Some(e) = events.recv().await {
            let hit = pred(&e);
            seen.push(e);
            if hit {
                return;
            }
        }
        panic!("event stream ended first: {:?}", seen.last());
    })
    .await;
    assert!(result.is_ok(), "timed out waiting; last events: {:?}", &seen[seen.len().saturating_sub(5)..]);
    seen
}

/// One HTTP request the REST recorder received.
#[derive(Debug)]
pub struct Recorded {
    pub request_line: String,
    pub authorization: Option<String>,
    pub body: String,
}

/// A stand-in for Twilio's REST API on a loopback port: records each request and answers
/// `200 {"status": "in-progress"}`, as Twilio does for a redirected live call.
pub async fn rest_recorder() -> (u16, mpsc::Receiver<Recorded>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_len, content_length) = loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0usize);
                        break (end + 4, len);
                    }
                };
                while buf.len() < head_len + content_length {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
                let recorded = Recorded {
                    request_line: head.lines().next().unwrap_or_default().to_owned(),
                    authorization: head.lines().find_map(|l| {
                        l.to_ascii_lowercase()
                            .starts_with("authorization:")
                            .then(|| l[14..].trim().to_owned())
                    }),
                    body: String::from_utf8_lossy(&buf[head_len..head_len + content_length]).into_owned(),
                };
                let body = r#"{"sid":"CA","status":"in-progress"}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = tx.send(recorded).await;
            });
        }
    });
    (port, rx)
}

/// `application/x-www-form-urlencoded` value decoding (`+` and `%XX`).
pub fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}
