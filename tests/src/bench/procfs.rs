//! What /proc says about a process (CPU time, peak RSS) and the machine.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// CPU time a process has used (all threads, user + system), at one moment.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    ticks: u64,
    at: Instant,
}

impl CpuSample {
    pub fn take(pid: u32) -> Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
        Ok(Self {
            ticks: utime_plus_stime(&stat)?,
            at: Instant::now(),
        })
    }

    /// CPU used between `earlier` and `self` as a percentage of one core,
    /// and the wall time it was spread over.
    pub fn percent_since(&self, earlier: &Self) -> (f64, Duration) {
        let wall = self.at.duration_since(earlier.at);
        let cpu = self.ticks.saturating_sub(earlier.ticks) as f64 / clock_ticks_per_sec();
        (100.0 * cpu / wall.as_secs_f64().max(1e-9), wall)
    }
}

/// Fields 14 and 15 of /proc/<pid>/stat. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn utime_plus_stime(stat: &str) -> Result<u64> {
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    // `after` starts at field 3 (state): utime is field 14, index 11.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("short /proc/<pid>/stat")?
            .parse()
            .context("bad /proc/<pid>/stat field")
    };
    Ok(field(11)? + field(12)?)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// The whole machine's idle time (first line of /proc/stat), at one moment:
/// shows how busy the shared cores were around the daemon.
///
/// Busy time is the wall time of every CPU minus idle time. The busy
/// counters of /proc/stat are sampled on the timer tick, which stops while a
/// CPU idles (NO_HZ), so short bursts of work between idle periods (exactly
/// this benchmark's load) are mostly missed; idle time is kept to the
/// nanosecond.
///
/// On a VM, time the hypervisor gave to other guests (steal) counts as busy
/// here; it is also kept apart, as it says how shared the host was.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    idle_ticks: u64,
    steal_ticks: u64,
    at: Instant,
}

impl MachineCpu {
    pub fn take() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
        let (idle_ticks, steal_ticks) = parse_idle_and_steal_ticks(&stat)?;
        Ok(Self {
            idle_ticks,
            steal_ticks,
            at: Instant::now(),
        })
    }

    /// Busy time between `earlier` and `self`, as a percentage of one core
    /// (so up to 100 × the number of CPUs).
    pub fn percent_since(&self, earlier: &Self, cpus: usize) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let idle =
            self.idle_ticks.saturating_sub(earlier.idle_ticks) as f64 / clock_ticks_per_sec();
        (100.0 * (cpus as f64 * wall - idle) / wall).clamp(0.0, 100.0 * cpus as f64)
    }

    /// Stolen time between `earlier` and `self`, as a percentage of one core.
    pub fn stolen_percent_since(&self, earlier: &Self, cpus: usize) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let steal =
            self.steal_ticks.saturating_sub(earlier.steal_ticks) as f64 / clock_ticks_per_sec();
        (100.0 * steal / wall).clamp(0.0, 100.0 * cpus as f64)
    }
}

/// idle + iowait, and steal, of `cpu  user nice system idle iowait irq
/// softirq steal ...` (steal 0 when a kernel does not report it).
fn parse_idle_and_steal_ticks(stat: &str) -> Result<(u64, u64)> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().context("bad /proc/stat field"))
        .collect::<Result<_>>()?;
    if v.len() < 5 {
        bail!("short cpu line in /proc/stat: {line:?}");
    }
    Ok((v[3] + v[4], v.get(7).copied().unwrap_or(0)))
}

/// A `Vm*` line of /proc/<pid>/status in bytes, e.g. `VmHWM` (peak RSS).
pub fn vm_bytes(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    parse_vm(&status, key)
}

fn parse_vm(status: &str, key: &str) -> Result<u64> {
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix(key).and_then(|r| r.strip_prefix(':')) {
            let kib: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("bad {key} line {line:?}"))?;
            return Ok(kib * 1024);
        }
    }
    bail!("no {key} in /proc/<pid>/status")
}

/// The 1, 5 and 15 minute load averages, e.g. `0.12 0.30 0.25`: whether
/// something else kept the cores busy when the run started.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The machine the figures come from.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        Self {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            model,
            kernel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let stat = "42 (tokio (rt) x) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 4 0";
        assert_eq!(utime_plus_stime(stat).unwrap(), 10);
    }

    #[test]
    fn idle_is_idle_plus_iowait_and_steal_is_the_eighth_field() {
        let stat = "cpu  10 0 10 70 10 0 0 3 5 0\ncpu0 1 2 3 4 5 6 7 8\n";
        assert_eq!(parse_idle_and_steal_ticks(stat).unwrap(), (80, 3));
        assert_eq!(
            parse_idle_and_steal_ticks("cpu  1 2 3 4 5\n").unwrap(),
            (9, 0)
        );
        assert!(parse_idle_and_steal_ticks("cpu0 1 2 3 4 5\n").is_err());
    }

    #[test]
    fn vm_lines_are_read_in_bytes() {
        let status = "Name:\timds-monitor\nVmPeak:\t  20000 kB\nVmHWM:\t    9000 kB\n";
        assert_eq!(parse_vm(status, "VmHWM").unwrap(), 9000 * 1024);
        assert!(parse_vm(status, "VmRSS").is_err());
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        CpuSample::take(pid).unwrap();
        assert!(vm_bytes(pid, "VmHWM").unwrap() > 0);
    }
}
