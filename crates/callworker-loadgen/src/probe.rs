//! Samples of the machine under test: a server process's CPU time and RSS from `/proc`, and
//! Redis's `INFO` / `DBSIZE` over a raw RESP connection (only callworker-store may use the
//! redis crate, tests/architecture.rs).

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Clock ticks per second of `/proc/<pid>/stat` times. USER_HZ is 100 on every Linux
/// architecture this runs on (the kernel ABI fixes it, whatever CONFIG_HZ is).
const CLOCK_TICKS_PER_S: f64 = 100.0;
/// Time allowed for one Redis sample (connect, two commands, replies).
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest `INFO` reply accepted.
const REDIS_INFO_BYTES_MAX: usize = 256 * 1024;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub at: Instant,
    /// utime + stime of every thread, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
}

impl ProcSample {
    /// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
    pub fn read(pid: u32) -> anyhow::Result<ProcSample> {
        let at = Instant::now();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("read /proc/{pid}/stat"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("read /proc/{pid}/status"))?;
        Ok(ProcSample { at, cpu_ticks: parse_cpu_ticks(&stat)?, rss_bytes: parse_rss_bytes(&status)? })
    }

    /// Cores used on average between `earlier` and `self` (1.0 = one core busy).
    pub fn cores_since(&self, earlier: &ProcSample) -> f64 {
        let wall_s = self.at.saturating_duration_since(earlier.at).as_secs_f64();
        if wall_s <= 0.0 {
            return 0.0;
        }
        self.cpu_ticks.saturating_sub(earlier.cpu_ticks) as f64 / CLOCK_TICKS_PER_S / wall_s
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field
/// 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    let Some(close) = stat.rfind(')') else { bail!("/proc stat line without `)`") };
    let mut fields = stat[close + 1..].split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th and stime the 13th.
    let utime: u64 = fields.nth(11).context("stat has no utime")?.parse().context("parse utime")?;
    let stime: u64 = fields.next().context("stat has no stime")?.parse().context("parse stime")?;
    Ok(utime + stime)
}

/// `VmRSS` of a `/proc/<pid>/status`, in bytes.
pub fn parse_rss_bytes(status: &str) -> anyhow::Result<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("status has no VmRSS")?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .context("parse VmRSS")?;
    Ok(kib * 1024)
}

/// Busy CPU time of the whole machine, from the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy)]
pub struct MachineSample {
    pub at: Instant,
    /// Every state but idle and iowait, in clock ticks, summed over CPUs.
    pub busy_ticks: u64,
}

impl MachineSample {
    pub fn read() -> anyhow::Result<MachineSample> {
        let at = Instant::now();
        let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
        Ok(MachineSample { at, busy_ticks: parse_busy_ticks(&stat)? })
    }

    /// Cores busy on average between `earlier` and `self`.
    pub fn cores_since(&self, earlier: &MachineSample) -> f64 {
        let wall_s = self.at.saturating_duration_since(earlier.at).as_secs_f64();
        if wall_s <= 0.0 {
            return 0.0;
        }
        self.busy_ticks.saturating_sub(earlier.busy_ticks) as f64 / CLOCK_TICKS_PER_S / wall_s
    }
}

/// user + nice + system + irq + softirq + steal of the aggregate `cpu` line (guest time is
/// already inside user and nice).
pub fn parse_busy_ticks(stat: &str) -> anyhow::Result<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu ")).context("/proc/stat has no cpu line")?;
    let v: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|f| f.parse().unwrap_or(0)).collect();
    if v.len() < 8 {
        bail!("/proc/stat cpu line has {} fields", v.len());
    }
    Ok(v[0] + v[1] + v[2] + v[5] + v[6] + v[7])
}

/// One reading of Redis.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RedisSample {
    #[serde(skip)]
    pub at: Option<Instant>,
    pub instantaneous_ops_per_sec: u64,
    pub used_memory_bytes: u64,
    pub total_commands_processed: u64,
    pub keys: u64,
}

impl RedisSample {
    /// `INFO` and `DBSIZE` from the Redis on `127.0.0.1:port`.
    pub async fn read(port: u16) -> anyhow::Result<RedisSample> {
        tokio::time::timeout(REDIS_TIMEOUT, Self::read_unbounded(port))
            .await
            .map_err(|_| anyhow::anyhow!("redis on port {port} did not answer within {REDIS_TIMEOUT:?}"))?
    }

    async fn read_unbounded(port: u16) -> anyhow::Result<RedisSample> {
        let at = Instant::now();
        let mut socket = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connect to redis :{port}"))?;
        socket.write_all(b"INFO\r\nDBSIZE\r\n").await.context("send INFO")?;
        let mut reader = BufReader::new(socket);
        let mut line = String::new();
        reader.read_line(&mut line).await.context("read INFO header")?;
        let len: usize = line
            .trim_end()
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unexpected INFO reply `{}`", line.trim_end()))?;
        if len > REDIS_INFO_BYTES_MAX {
            bail!("INFO reply of {len} bytes");
        }
        let mut info = vec![0u8; len + 2];
        reader.read_exact(&mut info).await.context("read INFO")?;
        line.clear();
        reader.read_line(&mut line).await.context("read DBSIZE")?;
        let keys: u64 = line
            .trim_end()
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unexpected DBSIZE reply `{}`", line.trim_end()))?;
        let info = String::from_utf8_lossy(&info);
        Ok(RedisSample {
            at: Some(at),
            instantaneous_ops_per_sec: info_field(&info, "instantaneous_ops_per_sec")?,
            used_memory_bytes: info_field(&info, "used_memory")?,
            total_commands_processed: info_field(&info, "total_commands_processed")?,
            keys,
        })
    }
}

/// A numeric `name:value` line of an `INFO` reply.
pub fn info_field(info: &str, name: &str) -> anyhow::Result<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("INFO has no numeric `{name}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_and_status() {
        let stat = "1234 (call worker) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 9 0 100 1000 50";
        assert_eq!(parse_cpu_ticks(stat).unwrap(), 325);
        assert!(parse_cpu_ticks("garbage").is_err());
        let status = "Name:\tcallworker\nVmPeak:\t  9000 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(parse_rss_bytes(status).unwrap(), 2048 * 1024);
        assert!(parse_rss_bytes("Name: x\n").is_err());
        let stat = "cpu  100 10 50 900 5 1 2 3 0 0\ncpu0 50 5 25 450 2 0 1 1 0 0\n";
        assert_eq!(parse_busy_ticks(stat).unwrap(), 166);
        assert!(parse_busy_ticks("intr 1 2\n").is_err());
    }

    #[test]
    fn reads_this_process_and_info_fields() {
        let s = ProcSample::read(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
        let info = "# Stats\r\ntotal_commands_processed:42\r\ninstantaneous_ops_per_sec:7\r\nused_memory:1000\r\nused_memory_human:1K\r\n";
        assert_eq!(info_field(info, "total_commands_processed").unwrap(), 42);
        assert_eq!(info_field(info, "used_memory").unwrap(), 1000);
        assert_eq!(info_field(info, "instantaneous_ops_per_sec").unwrap(), 7);
        assert!(info_field(info, "keys").is_err());
    }
}
