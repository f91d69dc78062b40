//! [`SharedConnection`]: the store's one multiplexed connection, rebuilt when Redis stops
//! answering on it.
//!
//! redis's `ConnectionManager` (and its cluster connection) reconnects after an I/O error, but not after timeouts:
//! a connection whose peer vanished without a reset (a half-open TCP connection behind a
//! lost NAT entry, a middlebox that lost the flow, a long partition) keeps every command
//! waiting until its timeout, for as long as TCP does not give up (minutes). Worse, if the
//! path swallowed commands rather than delaying them, the connection is out of step for
//! good when the path heals: replies are matched to requests in order, so each reply after
//! the heal goes to an older request that never got its own, and a request may receive
//! another command's reply.
//!
//! So the store counts timeouts in a row (a reply of any kind resets the count). On a
//! cluster a reply says nothing about the other nodes' connections (one node's link can go
//! half-open while the others answer), so there the store counts the timeouts within
//! [`CLUSTER_TIMEOUT_WINDOW`] instead, whatever was answered meanwhile. After
//! [`RECONNECT_AFTER_TIMEOUTS`] of them it drops the connection at once, so that no
//! command goes to it any more (commands fail fast with an unavailable store meanwhile,
//! and their callers retry as after any error), and builds a new one in the background,
//! retrying with backoff until Redis answers a `PING` on it. Each rebuild is counted in
//! `callworker_store_reconnects_total`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tracing::{info, warn};

use super::{Connection, RedisMode, RedisStore, RedisStoreOptions, open};
use crate::StoreError;
use crate::metrics as m;

/// Timeouts in a row after which the connection is dropped and rebuilt. Three, so that one
/// slow reply (a large recording, a Redis fork) does not cost a reconnect, while a dead
/// connection is replaced within about three response timeouts.
pub const RECONNECT_AFTER_TIMEOUTS: u32 = 3;
/// On a cluster: the window in which [`RECONNECT_AFTER_TIMEOUTS`] timeouts rebuild the
/// connection. Ten default response timeouts: a node that stops answering is replaced within
/// about three of them, and a timeout now and then (a slow reply) never adds up to three.
pub const CLUSTER_TIMEOUT_WINDOW: Duration = Duration::from_secs(5);
/// First and longest wait between two failed attempts to rebuild the connection.
const REBUILD_DELAY_MIN: Duration = Duration::from_millis(50);
const REBUILD_DELAY_MAX: Duration = Duration::from_secs(1);

/// A cheap handle on the current connection (clones share it).
#[derive(Clone)]
pub(super) struct SharedConnection {
    inner: Arc<Inner>,
}

struct Inner {
    /// What a rebuilt connection is opened from (one server or a cluster alike).
    options: RedisStoreOptions,
    /// Bound on opening a connection and on its first `PING`.
    connect_timeout: Duration,
    /// `None` while a rebuild runs: the old connection is not trusted any more.
    current: RwLock<Option<Connection>>,
    timeouts_in_row: AtomicU32,
    /// On a cluster, when the latest timeouts happened (at most [`RECONNECT_AFTER_TIMEOUTS`]);
    /// `None` on one server.
    cluster_timeouts: Option<Mutex<VecDeque<Instant>>>,
    rebuilding: AtomicBool,
    reconnects: AtomicU64,
    db: i64,
}

impl SharedConnection {
    /// Connects (bounded by `connect_timeout`).
    pub(super) async fn connect(
        options: RedisStoreOptions,
        connect_timeout: Duration,
    ) -> Result<SharedConnection, StoreError> {
        metrics::describe_counter!(m::STORE_RECONNECTS, "Store connections rebuilt after timeouts in a row");
        let conn = match tokio::time::timeout(connect_timeout, open(&options)).await {
            Ok(conn) => conn?,
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "redis: no connection within {connect_timeout:?}"
                )));
            }
        };
        let inner = Inner {
            connect_timeout,
            db: conn.get_db(),
            current: RwLock::new(Some(conn)),
            timeouts_in_row: AtomicU32::new(0),
            cluster_timeouts: (options.mode == RedisMode::Cluster).then(Mutex::default),
            rebuilding: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            options,
        };
        Ok(SharedConnection { inner: Arc::new(inner) })
    }

    /// A command was answered (with anything, errors included): the connection works (on a
    /// cluster: that node's connection; see [`CLUSTER_TIMEOUT_WINDOW`]).
    pub(super) fn answered(&self) {
        self.inner.timeouts_in_row.store(0, Ordering::Relaxed);
    }

    /// A command was not answered in time; after [`RECONNECT_AFTER_TIMEOUTS`] in a row (on a
    /// cluster: within [`CLUSTER_TIMEOUT_WINDOW`]) the connection is dropped and rebuilt.
    pub(super) fn timed_out(&self) {
        let counted = match &self.inner.cluster_timeouts {
            None => self.inner.timeouts_in_row.fetch_add(1, Ordering::Relaxed) + 1,
            Some(recent) => {
                let mut recent = recent.lock().unwrap_or_else(PoisonError::into_inner);
                let now = Instant::now();
                recent.retain(|at| now.duration_since(*at) < CLUSTER_TIMEOUT_WINDOW);
                if recent.len() == RECONNECT_AFTER_TIMEOUTS as usize {
                    recent.pop_front();
                }
                recent.push_back(now);
                recent.len() as u32
            }
        };
        if counted < RECONNECT_AFTER_TIMEOUTS || self.inner.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(recent) = &self.inner.cluster_timeouts {
            recent.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
        warn!(timeouts = counted, "redis stopped answering on its connection; reconnecting");
        // Dropped now, so no command waits on it (or is answered out of step) any more.
        *self.inner.current.write().unwrap_or_else(PoisonError::into_inner) = None;
        tokio::spawn(rebuild(Arc::downgrade(&self.inner)));
    }

    fn current(&self) -> Option<Connection> {
        self.inner.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Opens a new connection until one answers `PING`, then puts it in place.
async fn rebuild(inner: Weak<Inner>) {
    let mut delay = REBUILD_DELAY_MIN;
    loop {
        // Stop when the store is gone.
        let Some(strong) = inner.upgrade() else { return };
        let (options, limit) = (strong.options.clone(), strong.connect_timeout);
        let attempt = async {
            let mut conn = open(&options).await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(super::store_error)?;
            Ok::<_, StoreError>(conn)
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(conn)) => {
                *strong.current.write().unwrap_or_else(PoisonError::into_inner) = Some(conn);
                strong.timeouts_in_row.store(0, Ordering::Relaxed);
                strong.reconnects.fetch_add(1, Ordering::Relaxed);
                strong.rebuilding.store(false, Ordering::Release);
                metrics::counter!(m::STORE_RECONNECTS).increment(1);
                info!("redis connection rebuilt");
                return;
            }
            Ok(Err(e)) => warn!(error = %e, "redis reconnect failed; retrying"),
            Err(_) => warn!(timeout = ?limit, "redis reconnect timed out; retrying"),
        }
        drop(strong);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(REBUILD_DELAY_MAX);
    }
}

fn reconnecting() -> redis::RedisError {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "reconnecting to redis").into()
}

impl ConnectionLike for SharedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let current = self.current();
        Box::pin(async move {
            match current {
                Some(mut conn) => conn.req_packed_command(cmd).await,
                None => Err(reconnecting()),
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let current = self.current();
        Box::pin(async move {
            match current {
                Some(mut conn) => conn.req_packed_commands(pipeline, offset, count).await,
                None => Err(reconnecting()),
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.db
    }
}

impl RedisStore {
    /// Connections rebuilt after [`RECONNECT_AFTER_TIMEOUTS`] timeouts in a row, since
    /// this store was connected.
    pub fn reconnects(&self) -> u64 {
        self.conn.inner.reconnects.load(Ordering::Relaxed)
    }
}
