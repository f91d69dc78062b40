//! Test support: start real callworker processes and redis-server (and, later, haproxy) on
//! free loopback ports, and stop them by PID. Used only as a dev-dependency.
//!
//! Every process started here is owned by a guard ([`Worker`], [`RedisServer`],
//! [`RedisCluster`]) whose `Drop` kills it (SIGKILL) and reaps it, so a failing or panicking
//! test leaves nothing running. [`TlsFiles`] makes a throwaway CA and server certificate
//! (with the `openssl` CLI) for a Redis that speaks only TLS. Logs go to `target/test-logs/`, and their path is printed when a process fails
//! to start.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
pub use rustix::process::Signal;
use rustix::process::{Pid, kill_process};

pub mod proxy;

/// Control-API key of tenant `default` (the tenant of calls created without one) that
/// every worker started here accepts. Workers are given only its SHA-256, as in production;
/// the keys are fixed so that every worker of one test (a fleet) accepts the same ones.
pub const TENANT_KEY: &str = "cwk_test-tenant-default-0000000000000000000000000";
/// Control-API key of a second tenant, `other` (cross-tenant tests).
pub const OTHER_TENANT_KEY: &str = "cwk_test-tenant-other-00000000000000000000000000";
/// Control-API key with the operator role (`/v1/admin/*`, `/v1/workers`, every tenant).
pub const OPERATOR_KEY: &str = "cwk_test-operator-000000000000000000000000000000";
/// The Twilio auth token every worker started here checks `X-Twilio-Signature` with; a
/// `TwilioSimulator` signs with it through `with_auth_token`.
pub const TWILIO_AUTH_TOKEN: &str = "test-twilio-auth-token-0123456789abcdef";

/// SHA-256 hex of an API key (what a worker's configuration holds).
pub fn key_sha256(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// `[auth] keys` (TOML inline array) holding the three test keys.
pub fn test_keys_toml() -> String {
    format!(
        "[{{id = \"test-default\", role = \"tenant\", tenant = \"default\", sha256 = \"{}\"}}, \
         {{id = \"test-other\", role = \"tenant\", tenant = \"other\", sha256 = \"{}\"}}, \
         {{id = \"test-operator\", role = \"operator\", sha256 = \"{}\"}}]",
        key_sha256(TENANT_KEY),
        key_sha256(OTHER_TENANT_KEY),
        key_sha256(OPERATOR_KEY)
    )
}

/// How long a worker may take to answer `/healthz` after start.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The workspace root (where `Cargo.toml`, `config/` and `target/` live).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the workspace root exists")
}

/// Path of a binary built in the same profile as the running test: tests run from
/// `target/<profile>/deps/`, binaries sit in `target/<profile>/`. `CALLWORKER_BIN_DIR`
/// overrides (e.g. to test release binaries).
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("CALLWORKER_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile_dir =
        exe.parent().and_then(Path::parent).expect("test binaries live in target/<profile>/deps");
    profile_dir.join(name)
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

fn logs_dir() -> PathBuf {
    let dir = workspace_root().join("target/test-logs");
    std::fs::create_dir_all(&dir).expect("create target/test-logs");
    dir
}

/// Sends a signal to a process by PID.
pub fn signal(pid: u32, sig: Signal) -> anyhow::Result<()> {
    let raw = i32::try_from(pid).context("pid fits i32")?;
    let pid = Pid::from_raw(raw).context("pid is positive")?;
    kill_process(pid, sig).with_context(|| format!("signal pid {raw}"))
}

/// How to start a worker.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// Name used for the log file.
    pub name: String,
    /// Extra environment variables, passed as given: `CALLWORKER_*` configuration (e.g.
    /// `("CALLWORKER_LIMITS__CALLS_MAX", "2")`) or process-level ones such as
    /// `_RJEM_MALLOC_CONF` (jemalloc's options, read at start; see `profiling.rs`).
    pub env: Vec<(String, String)>,
    /// A cgroup v1 memory cgroup directory to start the worker in (see [`MemoryCgroup`]):
    /// the worker joins it before `exec`, so everything it allocates is charged there.
    pub cgroup: Option<PathBuf>,
}

impl WorkerOptions {
    pub fn named(name: &str) -> WorkerOptions {
        WorkerOptions { name: name.to_owned(), env: Vec::new(), cgroup: None }
    }

    /// Starts the worker inside `cgroup` (a [`MemoryCgroup`]'s directory).
    pub fn in_cgroup(mut self, cgroup: &Path) -> WorkerOptions {
        self.cgroup = Some(cgroup.to_owned());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> WorkerOptions {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// A running `callworker` process. Killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Worker {
    child: Option<Child>,
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    pub log_path: PathBuf,
}

impl Worker {
    /// Starts a worker on a free port and waits until `/healthz` answers.
    pub async fn start(options: WorkerOptions) -> anyhow::Result<Worker> {
        let port = free_port();
        let base_url = format!("http://127.0.0.1:{port}");
        let name = if options.name.is_empty() { "worker".to_owned() } else { options.name.clone() };
        let log_path = logs_dir().join(format!("{name}-{port}.log"));
        let log = File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
        let bin = binary("callworker");
        let mut command = match &options.cgroup {
            // The shell joins the cgroup, then becomes the worker (same PID).
            Some(dir) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg("echo $$ > \"$1/cgroup.procs\" && exec \"$2\"").arg("sh").arg(dir).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CALLWORKER_CONFIG_DIR", workspace_root().join("config"))
            .env("CALLWORKER_SERVER__LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("CALLWORKER_SERVER__PUBLIC_URL", &base_url)
            .env("CALLWORKER_LOG__FILTER", "info,callworker_server=debug")
            // The test keys and Twilio token (options below may replace them).
            .env("CALLWORKER_AUTH__KEYS", test_keys_toml())
            .env("CALLWORKER_TWILIO__AUTH_TOKEN", TWILIO_AUTH_TOKEN)
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command.spawn().with_context(|| format!("spawn {} (build it first)", bin.display()))?;
        let mut worker = Worker { child: Some(child), port, base_url, log_path };
        worker.wait_healthy().await?;
        Ok(worker)
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait()? {
                bail!(
                    "worker exited during start ({status}); log: {}\n{}",
                    self.log_path.display(),
                    self.log_tail()
                );
            }
            if let Ok(r) = http.get(format!("{}/healthz", self.base_url)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "worker not healthy after {START_TIMEOUT:?}; log: {}\n{}",
                    self.log_path.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the worker's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process has exited (and how).
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }

    /// Sends a signal to the worker.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        signal(self.pid().context("worker already reaped")?, sig)
    }

    /// SIGTERM, then waits (bounded) for exit; returns the exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::TERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("worker did not exit within {timeout:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the worker binary to completion with `args` and extra env (e.g. `--check-config`),
/// returning its exit code and combined output.
pub fn run_worker_command(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(Option<i32>, String)> {
    let output = Command::new(binary("callworker"))
        .env_clear()
        .env("CALLWORKER_CONFIG_DIR", workspace_root().join("config"))
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run callworker")?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok((output.status.code(), text))
}

/// How long redis-server may take to answer `PING` after start (it replays its AOF first).
pub const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The redis-server binary: `redis-server` on `PATH`, else Debian's `/usr/bin/redis-server`.
fn redis_server_binary() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("redis-server")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin/redis-server")])
        .find(|p| p.is_file())
        .context("redis-server is not installed; install it with `apt-get install -y redis-server`")
}

/// A running `redis-server` on a free loopback port, persisting to an append-only file
/// (`appendfsync everysec`) in its own directory and never evicting
/// (`maxmemory-policy noeviction`), as production should. Killed (SIGKILL) and reaped on
/// drop; its directory is removed then unless the test is panicking (kept for a look).
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    log_path: PathBuf,
    /// Extra `--name value` arguments given at start, kept for `restart`.
    extra_args: Vec<String>,
    /// Set when the server speaks only TLS (`--port 0 --tls-port <port>`).
    tls: Option<TlsFiles>,
}

impl RedisServer {
    /// Starts redis-server on a free port and waits until it answers `PING`.
    pub async fn start() -> anyhow::Result<RedisServer> {
        RedisServer::start_with(&[]).await
    }

    /// Like [`RedisServer::start`], with extra config arguments (e.g. `["--maxmemory",
    /// "2mb"]`, or an ACL: `["--user", "default off", "--user", "app on >pw ~* +get"]`). A
    /// server whose default user is off counts as started when it answers `NOAUTH`.
    pub async fn start_with(extra_args: &[&str]) -> anyhow::Result<RedisServer> {
        RedisServer::start_on(free_port(), extra_args, None).await
    }

    /// A redis-server that speaks only TLS (no plain port), with the server certificate of
    /// `tls`; clients are not asked for certificates. [`RedisServer::url`] is `rediss://`.
    pub async fn start_tls(tls: &TlsFiles, extra_args: &[&str]) -> anyhow::Result<RedisServer> {
        RedisServer::start_on(free_port(), extra_args, Some(tls.clone())).await
    }

    async fn start_on(port: u16, extra_args: &[&str], tls: Option<TlsFiles>) -> anyhow::Result<RedisServer> {
        let dir = logs_dir().join(format!("redis-{port}-{}", std::process::id()));
        // A leftover from an earlier run would be replayed: start empty.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let log_path = dir.join("redis.log");
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            log_path,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            tls,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = redis_server_binary()?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("open {}", self.log_path.display()))?;
        let mut command = Command::new(&bin);
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some(tls) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string(), "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(&tls.server_cert)
                .arg("--tls-key-file")
                .arg(&tls.server_key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca_cert),
        };
        let child = command
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--maxmemory-policy", "noeviction", "--daemonize", "no", "--logfile", ""])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + REDIS_START_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait()? {
                self.child = None;
                bail!(
                    "redis-server exited during start ({status}); log: {}\n{}",
                    self.log_path.display(),
                    self.log_tail()
                );
            }
            let port = self.port;
            let tls = self.tls.clone();
            let pong = tokio::task::spawn_blocking(move || match tls {
                None => ping(port),
                Some(tls) => ping_tls(port, &tls),
            })
            .await
            .unwrap_or(false);
            if pong {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server not answering PING after {REDIS_START_TIMEOUT:?}; log: {}\n{}",
                    self.log_path.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its directory (AOF and log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Whether the process has exited (and how).
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        signal(self.pid().context("redis-server is not running")?, sig)
    }

    /// SIGSTOP: the server hangs with its sockets open (a stalled node).
    pub fn stop(&self) -> anyhow::Result<()> {
        self.signal(Signal::STOP)
    }

    /// SIGCONT after [`RedisServer::stop`].
    pub fn cont(&self) -> anyhow::Result<()> {
        self.signal(Signal::CONT)
    }

    /// SIGKILL and reap (a crash: whatever was not yet fsynced to the AOF is lost).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped process dies of SIGKILL too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts it again on the same port and directory, so
    /// it replays its AOF; waits until it answers `PING`.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Whether a Redis on `port` answers `PING` (blocking, bounded by short timeouts): `PONG`,
/// or `NOAUTH` from a server whose default user is off (it is up, and wants a login).
fn ping(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let timeout = Duration::from_millis(200);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(b"PING\r\n")?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply)?;
        Ok(&reply == b"+PONG\r\n" || &reply == b"-NOAUTH")
    };
    attempt().unwrap_or(false)
}

/// [`ping`] over TLS, through `redis-cli --tls` (blocking, bounded by its own timeout).
fn ping_tls(port: u16, tls: &TlsFiles) -> bool {
    let output = Command::new("redis-cli")
        .args(["--tls", "-h", "127.0.0.1", "-p", &port.to_string()])
        .arg("--cacert")
        .arg(&tls.ca_cert)
        .arg("PING")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    output.is_ok_and(|o| {
        let text = String::from_utf8_lossy(&o.stdout);
        text.trim() == "PONG" || text.starts_with("NOAUTH")
    })
}

/// Runs `redis-cli -p <port> <args>` (blocking) and returns its output; fails if redis-cli
/// cannot run or exits non-zero.
pub fn redis_cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run redis-cli (apt-get install -y redis-tools)")?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!("redis-cli {args:?} failed ({}): {text}", output.status);
    }
    Ok(text)
}

/// A throwaway CA and a server certificate it signed, for `127.0.0.1` and `localhost`,
/// made with the `openssl` CLI in a directory of the caller's choosing (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TlsFiles {
    /// Generates the CA (`ca.crt`) and the server's key and certificate (`server.key`,
    /// `server.crt`) in `dir`, valid for two days. P-256 keys, so generation is quick.
    pub fn generate(dir: &Path) -> anyhow::Result<TlsFiles> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let openssl = |args: &[&str]| -> anyhow::Result<()> {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdin(Stdio::null())
                .output()
                .context("run openssl (apt-get install -y openssl)")?;
            if !output.status.success() {
                bail!("openssl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
            }
            Ok(())
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        openssl(
            &[
                &["req", "-x509", "-days", "2", "-subj", "/CN=callworker test CA"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat(),
        )?;
        openssl(
            &[
                &["req", "-new", "-subj", "/CN=localhost"][..],
                &ec,
                &["-keyout", "server.key", "-out", "server.csr"],
            ]
            .concat(),
        )?;
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ])?;
        Ok(TlsFiles {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        })
    }
}

/// How long a new cluster may take to agree on its slots (`cluster_state:ok` everywhere).
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A free loopback port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port() -> u16 {
    for _ in 0..1_000 {
        let port = free_port();
        if port <= u16::MAX - 10_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port with a free cluster bus port after 1000 tries");
}

/// A local Redis Cluster of primaries (no replicas), each a [`RedisServer`] with
/// `cluster-enabled yes`, AOF on and `noeviction`, on a free port whose bus port
/// (+10000) is free too; the slots are spread by `redis-cli --cluster create`. Each node
/// can be killed, restarted (it rejoins from its `nodes.conf` and AOF) or stalled like a
/// [`RedisServer`]; all are killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `primaries` nodes (at least 3, as Redis requires), creates the cluster and
    /// waits until every node reports `cluster_state:ok`.
    pub async fn start(primaries: usize) -> anyhow::Result<RedisCluster> {
        if primaries < 3 {
            bail!("a Redis Cluster needs at least 3 primaries");
        }
        let mut nodes = Vec::with_capacity(primaries);
        for _ in 0..primaries {
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ];
            nodes.push(RedisServer::start_on(free_cluster_port(), &args, None).await?);
        }
        let cluster = RedisCluster { nodes };
        let addresses: Vec<String> =
            cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let port = cluster.nodes[0].port();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            redis_cli(port, &args)
        })
        .await
        .context("join redis-cli")?
        .context("redis-cli --cluster create")?;
        cluster.wait_ok().await?;
        Ok(cluster)
    }

    /// The seed URLs of every node, comma-separated (`store.redis_url` in cluster mode).
    pub fn seed_urls(&self) -> String {
        self.nodes.iter().map(RedisServer::url).collect::<Vec<_>>().join(",")
    }

    /// Waits (bounded by [`CLUSTER_READY_TIMEOUT`]) until every node reports
    /// `cluster_state:ok` with all 16384 slots served, e.g. after a node restarted.
    pub async fn wait_ok(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let ports: Vec<u16> = self.nodes.iter().map(RedisServer::port).collect();
        loop {
            let ports = ports.clone();
            let states = tokio::task::spawn_blocking(move || {
                ports
                    .iter()
                    .map(|p| redis_cli(*p, &["CLUSTER", "INFO"]).unwrap_or_default())
                    .collect::<Vec<_>>()
            })
            .await
            .context("join redis-cli")?;
            let ok =
                states.iter().all(|s| s.contains("cluster_state:ok") && s.contains("cluster_slots_ok:16384"));
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("cluster not ok after {CLUSTER_READY_TIMEOUT:?}: {states:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the node that serves `key`'s slot: the one that answers a read of it
    /// instead of redirecting with `MOVED`.
    pub fn node_for_key(&self, key: &str) -> anyhow::Result<usize> {
        for (i, node) in self.nodes.iter().enumerate() {
            let reply = redis_cli(node.port(), &["EXISTS", key])?;
            if !reply.contains("MOVED") {
                return Ok(i);
            }
        }
        bail!("no node serves the slot of {key:?}")
    }
}

/// A cgroup v1 memory cgroup made for one test (`/sys/fs/cgroup/memory/cw-test-…`), removed
/// on drop once its processes are gone. Needs root and a writable v1 memory hierarchy;
/// [`MemoryCgroup::create`] says why when it cannot.
#[derive(Debug)]
pub struct MemoryCgroup {
    pub dir: PathBuf,
}

impl MemoryCgroup {
    /// The v1 memory hierarchy's mount point.
    pub const ROOT: &'static str = "/sys/fs/cgroup/memory";

    pub fn create(name: &str) -> anyhow::Result<MemoryCgroup> {
        let root = Path::new(MemoryCgroup::ROOT);
        if !root.join("memory.usage_in_bytes").exists() {
            bail!("no cgroup v1 memory hierarchy at {}", root.display());
        }
        let dir = root.join(format!("cw-test-{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("create {} (needs root)", dir.display()))?;
        Ok(MemoryCgroup { dir })
    }

    /// Sets `memory.limit_in_bytes`.
    pub fn set_limit(&self, bytes: u64) -> anyhow::Result<()> {
        let file = self.dir.join("memory.limit_in_bytes");
        std::fs::write(&file, bytes.to_string()).with_context(|| format!("write {}", file.display()))
    }

    /// `memory.usage_in_bytes` − `total_inactive_file`: the working set.
    pub fn working_set(&self) -> anyhow::Result<u64> {
        let usage: u64 = std::fs::read_to_string(self.dir.join("memory.usage_in_bytes"))?.trim().parse()?;
        let stat = std::fs::read_to_string(self.dir.join("memory.stat"))?;
        let inactive = stat
            .lines()
            .find_map(|l| l.strip_prefix("total_inactive_file ").and_then(|v| v.trim().parse::<u64>().ok()))
            .unwrap_or(0);
        Ok(usage.saturating_sub(inactive))
    }

    /// Processes the kernel's OOM killer killed in this cgroup (`memory.oom_control`).
    pub fn oom_kills(&self) -> anyhow::Result<u64> {
        let text = std::fs::read_to_string(self.dir.join("memory.oom_control"))?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ").and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0))
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The processes must be gone (their guards are dropped first); retry briefly while
        // the kernel finishes uncharging.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("callworker-testkit: could not remove {}", self.dir.display());
    }
}
