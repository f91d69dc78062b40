//! [`FaultProxy`]: a TCP proxy on a free loopback port that forwards to one upstream
//! (a Redis, typically) and injects network faults on command, for the chaos suite.
//!
//! Faults apply at once to every connection, existing and new:
//!
//! - **latency** per direction ([`FaultProxy::set_latency`]): each chunk is forwarded no
//!   earlier than its arrival plus the direction's latency, in order;
//! - **stall** ([`FaultProxy::stall`]): nothing is forwarded, sockets stay open; bytes pile
//!   up in the proxy's bounded queue, then in the kernel's buffers; [`FaultProxy::resume`]
//!   forwards them all, in order (a frozen middlebox or a GC pause on the path);
//! - **blackhole** ([`FaultProxy::blackhole`]): the proxy keeps reading and accepting but
//!   swallows every byte in both directions, so peers see no error and no answer, ever, for
//!   what they sent meanwhile; [`FaultProxy::heal`] lifts it, and later bytes flow again on
//!   the same connections (a middlebox that lost the flow's state);
//! - **reset** ([`FaultProxy::reset_all`]): every current connection is aborted with a TCP
//!   RST on both sides;
//! - **refuse** ([`FaultProxy::refuse_new`]): new connections are accepted and reset at
//!   once (the listener stays bound, so the port cannot be taken by someone else).
//!
//! The proxy runs on its own thread with its own single-threaded tokio runtime, so it keeps
//! working whatever the test's runtime does; dropping the [`FaultProxy`] stops it and
//! closes every connection.
//!
//! Bounds: each direction of each connection holds at most [`QUEUE_CHUNKS_MAX`] chunks of
//! at most [`CHUNK_BYTES_MAX`] bytes (plus the chunk being read and the one being written);
//! when that queue is full the proxy stops reading that direction (TCP backpressure) rather
//! than buffer more. Connections at once are bounded by
//! [`CONNECTIONS_MAX`]; beyond it new ones are reset (and counted as refused).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Largest chunk read from a socket at once.
pub const CHUNK_BYTES_MAX: usize = 16 * 1024;
/// Chunks queued per direction per connection (read, not yet forwarded) at most.
pub const QUEUE_CHUNKS_MAX: usize = 32;
/// Connections proxied at once at most; beyond it new connections are reset.
pub const CONNECTIONS_MAX: u64 = 1024;
/// Bound on connecting to the upstream for a new connection.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The faults in force. `Default` is a clean network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added to every chunk from the client to the upstream.
    pub latency_up: Duration,
    /// Added to every chunk from the upstream to the client.
    pub latency_down: Duration,
    /// Forward nothing (keep reading until the bounded queue is full).
    pub stalled: bool,
    /// Swallow every byte, both ways.
    pub blackholed: bool,
    /// Reset new connections at once.
    pub refusing: bool,
    /// Bumped by [`FaultProxy::reset_all`]: connections started before it are reset.
    reset_generation: u64,
}

/// What the proxy has done so far (monotonic counters, plus the connections open now).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted and forwarded to the upstream.
    pub connections_accepted: u64,
    /// Connections reset on arrival (refusing, upstream unreachable, or too many).
    pub connections_refused: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections aborted by [`FaultProxy::reset_all`].
    pub connections_reset: u64,
    /// Bytes read from clients / written to the upstream.
    pub bytes_read_up: u64,
    pub bytes_forwarded_up: u64,
    /// Bytes read from the upstream / written to clients.
    pub bytes_read_down: u64,
    pub bytes_forwarded_down: u64,
    /// Bytes swallowed by a blackhole, both ways.
    pub bytes_swallowed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    connections_open: AtomicU64,
    connections_reset: AtomicU64,
    bytes_read_up: AtomicU64,
    bytes_forwarded_up: AtomicU64,
    bytes_read_down: AtomicU64,
    bytes_forwarded_down: AtomicU64,
    bytes_swallowed: AtomicU64,
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

/// A fault-injecting TCP proxy (see the module docs). Stopped on drop.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    control: watch::Sender<Faults>,
    counters: Arc<Counters>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<FaultProxy> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind the proxy's port")?;
        std_listener.set_nonblocking(true).context("make the proxy's listener non-blocking")?;
        let addr = std_listener.local_addr()?;
        let (control, faults) = watch::channel(Faults::default());
        let counters = Arc::new(Counters::default());
        let (shutdown, shutdown_rx) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("build the proxy's runtime")?;
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("fault proxy: cannot register its listener: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = accept_loop(listener, upstream, faults, thread_counters) => {}
                        _ = shutdown_rx => {}
                    }
                });
                // Dropping the runtime drops every connection task, closing its sockets.
            })
            .context("spawn the proxy's thread")?;
        Ok(FaultProxy { addr, upstream, control, counters, shutdown: Some(shutdown), thread: Some(thread) })
    }

    /// Starts a proxy in front of a local port (e.g. a [`crate::RedisServer`]'s).
    pub fn to_local_port(port: u16) -> anyhow::Result<FaultProxy> {
        FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// `redis://127.0.0.1:<proxy port>`, for a proxy in front of Redis.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.addr.port())
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        *self.control.borrow()
    }

    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            connections_accepted: get(&c.connections_accepted),
            connections_refused: get(&c.connections_refused),
            connections_open: get(&c.connections_open),
            connections_reset: get(&c.connections_reset),
            bytes_read_up: get(&c.bytes_read_up),
            bytes_forwarded_up: get(&c.bytes_forwarded_up),
            bytes_read_down: get(&c.bytes_read_down),
            bytes_forwarded_down: get(&c.bytes_forwarded_down),
            bytes_swallowed: get(&c.bytes_swallowed),
        }
    }

    /// Adds `up` to every chunk towards the upstream and `down` to every chunk back.
    pub fn set_latency(&self, up: Duration, down: Duration) {
        self.control.send_modify(|f| {
            f.latency_up = up;
            f.latency_down = down;
        });
    }

    /// Stops forwarding, both ways, keeping every socket open.
    pub fn stall(&self) {
        self.control.send_modify(|f| f.stalled = true);
    }

    /// Forwards again what a [`FaultProxy::stall`] held, in order.
    pub fn resume(&self) {
        self.control.send_modify(|f| f.stalled = false);
    }

    /// Swallows every byte, both ways, until [`FaultProxy::heal`].
    pub fn blackhole(&self) {
        self.control.send_modify(|f| f.blackholed = true);
    }

    /// Resets new connections on arrival (`true`) or accepts them again (`false`).
    pub fn refuse_new(&self, refusing: bool) {
        self.control.send_modify(|f| f.refusing = refusing);
    }

    /// Aborts every current connection with a TCP RST on both sides.
    pub fn reset_all(&self) {
        self.control.send_modify(|f| f.reset_generation += 1);
    }

    /// Lifts every fault: no latency, no stall, no blackhole, no refusal.
    pub fn heal(&self) {
        self.control.send_modify(|f| {
            *f = Faults { reset_generation: f.reset_generation, ..Faults::default() };
        });
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    faults: watch::Receiver<Faults>,
    counters: Arc<Counters>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or similar: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let now = *faults.borrow();
        if now.refusing || counters.connections_open.load(Ordering::Relaxed) >= CONNECTIONS_MAX {
            abort(&client);
            add(&counters.connections_refused, 1);
            continue;
        }
        tokio::spawn(connection(client, upstream, faults.clone(), counters.clone(), now.reset_generation));
    }
}

/// Closes a socket with an RST when it is dropped.
fn abort(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut faults: watch::Receiver<Faults>,
    counters: Arc<Counters>,
    generation: u64,
) {
    let server = match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
        Ok(Ok(s)) => s,
        _ => {
            abort(&client);
            add(&counters.connections_refused, 1);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    add(&counters.connections_accepted, 1);
    add(&counters.connections_open, 1);
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let reset = {
        let up = pump(Direction::Up, &mut client_rd, &mut server_wr, faults.clone(), &counters);
        let down = pump(Direction::Down, &mut server_rd, &mut client_wr, faults.clone(), &counters);
        let reset = faults.wait_for(|f| f.reset_generation != generation);
        tokio::select! {
            _ = up => false,
            _ = down => false,
            changed = reset => changed.is_ok(),
        }
    };
    if reset {
        abort(client_rd.as_ref());
        abort(server_rd.as_ref());
        // A write half shuts its direction down (FIN) when dropped, which would show the
        // peer a clean close before the RST: let go of it without that.
        client_wr.forget();
        server_wr.forget();
        add(&counters.connections_reset, 1);
    }
    counters.connections_open.fetch_sub(1, Ordering::Relaxed);
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    /// Client → upstream.
    Up,
    /// Upstream → client.
    Down,
}

/// Forwards one direction until EOF or an error: a reader filling a bounded queue of
/// `(due, chunk)` and a writer delivering each chunk when it is due, unless stalled (it
/// waits) or blackholed (it swallows).
async fn pump(
    dir: Direction,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    faults: watch::Receiver<Faults>,
    counters: &Counters,
) {
    let (read_ctr, fwd_ctr) = match dir {
        Direction::Up => (&counters.bytes_read_up, &counters.bytes_forwarded_up),
        Direction::Down => (&counters.bytes_read_down, &counters.bytes_forwarded_down),
    };
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS_MAX);
    let mut writer_faults = faults.clone();
    // Owns `tx`: when it ends (EOF), the writer drains the queue and then finishes.
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_BYTES_MAX];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            add(read_ctr, n);
            let f = *faults.borrow();
            let latency = match dir {
                Direction::Up => f.latency_up,
                Direction::Down => f.latency_down,
            };
            // Waits while the queue is full: the bound is what stops the reading.
            if tx.send((Instant::now() + latency, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writer = async {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if writer_faults.wait_for(|f| !f.stalled).await.is_err() {
                return;
            }
            if writer_faults.borrow().blackholed {
                add(&counters.bytes_swallowed, chunk.len());
                continue;
            }
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
            add(fwd_ctr, chunk.len());
        }
        // The reader saw EOF and everything queued went out: pass the EOF on.
        let _ = wr.shutdown().await;
    };
    // The reader ends first on EOF; an error on the writer ends the direction at once.
    tokio::pin!(reader, writer);
    let mut reader_done = false;
    loop {
        tokio::select! {
            _ = &mut reader, if !reader_done => reader_done = true,
            _ = &mut writer => return,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An upstream that echoes every byte back on every connection.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    const WAIT: Duration = Duration::from_secs(10);

    async fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(WAIT, s.read_exact(&mut buf)).await.expect("bytes within the wait").unwrap();
        buf
    }

    /// Whether anything arrives on `s` within `window` (nothing may, by construction).
    async fn arrives_within(s: &mut TcpStream, window: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(window, s.read(&mut byte)).await, Ok(Ok(n)) if n > 0)
    }

    async fn poll_until(what: &str, mut pred: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !pred() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn forwards_both_ways_and_passes_eof_on() {
        let proxy = FaultProxy::start(echo_server().await).unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"hello proxy").await.unwrap();
        assert_eq!(read_exact(&mut s, 11).await, b"hello proxy");
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert!(rest.is_empty());
        let stats = proxy.stats();
        assert_eq!(
            (stats.connections_accepted, stats.bytes_forwarded_up, stats.bytes_forwarded_down),
            (1, 11, 11)
        );
        poll_until("the connection closes", || proxy.stats().connections_open == 0).await;
    }

    #[tokio::test]
    async fn latency_delays_each_direction() {
        let proxy = FaultProxy::start(echo_server().await).unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.set_latency(Duration::from_millis(150), Duration::from_millis(100));
        let started = Instant::now();
        s.write_all(b"x").await.unwrap();
        read_exact(&mut s, 1).await;
        // A lower bound only: a chunk is never forwarded before it is due.
        assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
        proxy.heal();
        s.write_all(b"y").await.unwrap();
        assert_eq!(read_exact(&mut s, 1).await, b"y");
    }

    #[tokio::test]
    async fn a_stall_holds_bytes_with_the_socket_open_and_resume_delivers_them_in_order() {
        let proxy = FaultProxy::start(echo_server().await).unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"a").await.unwrap();
        read_exact(&mut s, 1).await;
        proxy.stall();
        s.write_all(b"bcd").await.unwrap();
        assert!(!arrives_within(&mut s, Duration::from_millis(300)).await, "nothing passes a stall");
        proxy.resume();
        assert_eq!(read_exact(&mut s, 3).await, b"bcd");
        assert_eq!(proxy.stats().connections_reset, 0);
    }

    #[tokio::test]
    async fn a_stall_buffers_no_more_than_the_bound() {
        let proxy = FaultProxy::start(echo_server().await).unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.stall();
        // Write far more than the queue and the kernel's buffers hold; the writes block.
        let chunk = vec![7u8; 64 * 1024];
        let writing = async {
            for _ in 0..4096 {
                s.write_all(&chunk).await.unwrap();
            }
        };
        assert!(tokio::time::timeout(Duration::from_secs(1), writing).await.is_err(), "writes block");
        let stats = proxy.stats();
        let queued = stats.bytes_read_up - stats.bytes_forwarded_up;
        // The queue, plus one chunk in the reader's hands and one in the writer's.
        assert!(queued <= ((QUEUE_CHUNKS_MAX + 2) * CHUNK_BYTES_MAX) as u64, "{stats:?}");
        assert!(stats.bytes_read_up > 0, "{stats:?}");
    }

    #[tokio::test]
    async fn a_blackhole_swallows_bytes_for_good_and_keeps_the_connection() {
        let proxy = FaultProxy::start(echo_server().await).unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.blackhole();
        s.write_all(b"lost").await.unwrap();
        poll_until("the proxy reads the bytes", || proxy.stats().bytes_swallowed >= 4).await;
        // A connection made during the blackhole is accepted too, and answers nothing.
        let mut during = TcpStream::connect(proxy.addr()).await.unwrap();
        during.write_all(b"q").await.unwrap();
        assert!(!arrives_within(&mut during, Duration::from_millis(200)).await);
        proxy.heal();
        s.write_all(b"kept").await.unwrap();
        assert_eq!(read_exact(&mut s, 4).await, b"kept", "what was swallowed never comes");
        during.write_all(b"r").await.unwrap();
        assert_eq!(read_exact(&mut during, 1).await, b"r");
    }

    #[tokio::test]
    async fn reset_aborts_current_connections_only() {
        let proxy = FaultProxy::start(echo_server().await).unwrap();
        let mut old = TcpStream::connect(proxy.addr()).await.unwrap();
        old.write_all(b"1").await.unwrap();
        read_exact(&mut old, 1).await;
        proxy.reset_all();
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(WAIT, old.read(&mut buf)).await.unwrap();
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "an RST, not a clean close: {read:?}"
        );
        assert_eq!(proxy.stats().connections_reset, 1);
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        new.write_all(b"2").await.unwrap();
        assert_eq!(read_exact(&mut new, 1).await, b"2");
    }

    #[tokio::test]
    async fn refusing_resets_new_connections_and_spares_existing_ones() {
        let proxy = FaultProxy::start(echo_server().await).unwrap();
        let mut old = TcpStream::connect(proxy.addr()).await.unwrap();
        old.write_all(b"1").await.unwrap();
        read_exact(&mut old, 1).await;
        proxy.refuse_new(true);
        // The RST may come before `connect` returns, or on the first read.
        if let Ok(mut refused) = TcpStream::connect(proxy.addr()).await {
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(WAIT, refused.read(&mut buf)).await.unwrap();
            assert!(matches!(read, Err(_) | Ok(0)), "{read:?}");
        }
        poll_until("counted as refused", || proxy.stats().connections_refused == 1).await;
        old.write_all(b"2").await.unwrap();
        assert_eq!(read_exact(&mut old, 1).await, b"2");
        proxy.heal();
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        again.write_all(b"3").await.unwrap();
        assert_eq!(read_exact(&mut again, 1).await, b"3");
    }

    #[tokio::test]
    async fn an_unreachable_upstream_resets_the_client() {
        let free = crate::free_port();
        let proxy = FaultProxy::to_local_port(free).unwrap();
        if let Ok(mut s) = TcpStream::connect(proxy.addr()).await {
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap();
            assert!(matches!(read, Err(_) | Ok(0)), "{read:?}");
        }
        poll_until("counted as refused", || proxy.stats().connections_refused == 1).await;
    }
}
