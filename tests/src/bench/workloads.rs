//! Issue 14, items 3 and 4: many workloads at once, and a soak with churn.
//!
//! `workloads`: 50 concurrent workloads (`imds-bench worker` processes):
//! host services in cgroups of their own and processes in NATed containers
//! (Docker and Kubernetes cgroup naming, one routed hop behind the host),
//! half with a new connection per request, half keep-alive, IMDSv1 GETs
//! and IMDSv2 pairs, at a total rate for a while. Every request the mock
//! served must be exactly one event naming the pid and cgroup that sent it
//! (see [`super::verify`]); the ring buffer's and the output queue's
//! high-water marks and the events lost are read.
//!
//! `soak`: a steady 200 req/s while a container (a cgroup named as Docker
//! names one, with a process in it that makes a request) is created and
//! destroyed every second and short-lived processes come and go; the
//! daemon's RSS and its maps' entries are sampled and must stay bounded,
//! and no event may name a pid that sent nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use imds_sandbox::cgroup::Cgroup;
use imds_sandbox::{ContainerSpec, Place, Sandbox};

use super::bpfmaps::{self, RingSampler};
use super::daemon::Daemon;
use super::phases::{CATCH_UP, DaemonCounters, MONITOR_ARGS};
use super::procfs::{self, CpuSample};
use super::verify::{self, Expect, Verification};
use super::worker::{WORKER_ARG, WorkerSummary};

/// Workloads in the `workloads` phase.
pub const WORKLOADS: u32 = 50;
/// Containers they share (the other half run on the host).
const CONTAINERS: usize = 12;
/// How often the ring buffer's fill is sampled.
const RING_PERIOD: Duration = Duration::from_millis(1);
/// Every Nth operation of a workload is an IMDSv2 pair.
const V2_EVERY: &str = "4";
/// A worker that has not exited this long after its end is killed.
const WORKER_GRACE: Duration = Duration::from_secs(30);
/// conntrack's TIME_WAIT in the sandbox host's namespace (see `build`).
const CONNTRACK_TIME_WAIT_SECS: &str = "2";

/// One rate of the `workloads` phase.
#[derive(Debug, Clone)]
pub struct LoadRun {
    pub target: u32,
    pub duration: Duration,
    pub workloads: u32,
    pub host_workloads: u32,
    pub keep_alive_workloads: u32,
    /// Requests the mock served per second of the workers' run.
    pub achieved: f64,
    pub elapsed: Duration,
    pub verification: Verification,
    pub counters: DaemonCounters,
    /// Most bytes waiting in the ring buffer (sampled), and its size.
    pub ring_peak: u64,
    pub ring_size: u64,
    pub ring_samples: u64,
    pub cpu_percent: f64,
    pub peak_rss: u64,
    /// Requests that got no answer, summed over workers, and one reason.
    pub worker_failures: u64,
    pub worker_error: Option<String>,
    pub caught_up: bool,
}

/// The sandbox of both phases: containers behind the host, hop limit 2
/// (token PUT answers must reach them), and a short conntrack TIME_WAIT in
/// the host's namespace: thousands of NATed connections a second would
/// otherwise fill the machine's conntrack table within a minute.
pub fn build(containers: usize) -> Result<Sandbox> {
    let specs: Vec<ContainerSpec> = (0..containers)
        .map(|i| {
            if i % 2 == 0 {
                ContainerSpec::docker()
            } else {
                ContainerSpec::kubernetes()
            }
        })
        .collect();
    let sandbox = Sandbox::builder()
        .hop_limit(2)
        .containers(&specs)
        .build()
        .context("building the sandbox")?;
    if let Err(e) = sandbox.host_netns().sysctl(
        "net.netfilter.nf_conntrack_tcp_timeout_time_wait",
        CONNTRACK_TIME_WAIT_SECS,
    ) {
        eprintln!("imds-bench: cannot shorten conntrack's TIME_WAIT ({e:#}); going on");
    }
    Ok(sandbox)
}

pub fn containers_needed() -> usize {
    CONTAINERS
}

/// Where workload `i` of the `workloads` phase runs, and whether it keeps
/// its connection: even workloads in containers, odd on the host; every
/// other pair keep-alive, so each kind has both connection shapes.
fn placement(sandbox: &Sandbox, i: u32) -> Result<(Place, Expect, bool)> {
    let keep_alive = (i / 2) % 2 == 1;
    if i.is_multiple_of(2) {
        let c = sandbox.container((i as usize / 2) % sandbox.containers().len());
        Ok((
            Place::Container(c.index()),
            Expect {
                cgroup: c.cgroup().rel().to_owned(),
                container: Some(c.id().to_owned()),
            },
            keep_alive,
        ))
    } else {
        let place = Place::service(&format!("bench-w{i}"));
        let cgroup = sandbox.cgroup(&place)?;
        Ok((
            place,
            Expect {
                cgroup: cgroup.rel().to_owned(),
                container: None,
            },
            keep_alive,
        ))
    }
}

fn worker_command(sandbox: &Sandbox, place: &Place) -> Result<Command> {
    let exe = std::env::current_exe().context("cannot find imds-bench's own executable")?;
    let mut cmd = sandbox.command(place, exe)?;
    cmd.arg(WORKER_ARG);
    Ok(cmd)
}

fn spawn(mut cmd: Command) -> Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot spawn an imds-bench worker")
}

/// Waits for a worker (killing it past `deadline`) and reads its summary.
fn collect(child: Child, deadline: Instant) -> Result<WorkerSummary> {
    let pid = child.id();
    let mut child = child;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    WorkerSummary::parse(&stdout).with_context(|| {
        format!(
            "worker {pid} ({}) printed no summary: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// `target` req/s from [`WORKLOADS`] workers for `duration`, against a
/// fresh daemon.
pub fn load(sandbox: &Sandbox, target: u32, duration: Duration) -> Result<LoadRun> {
    let mut daemon = Daemon::start(sandbox, &MONITOR_ARGS).context("starting imds-monitor")?;
    let pid = daemon.pid();
    let maps = bpfmaps::daemon_maps(pid)?;
    sandbox.imds().clear_log();
    let per_worker = format!("{:.3}", f64::from(target) / f64::from(WORKLOADS));
    let duration_ms = duration.as_millis().to_string();

    let mut expect = HashMap::new();
    let mut commands = Vec::new();
    let (mut host, mut keep) = (0, 0);
    for i in 0..WORKLOADS {
        let (place, want, keep_alive) = placement(sandbox, i)?;
        host += u32::from(want.container.is_none());
        keep += u32::from(keep_alive);
        expect.insert(i, want);
        let mut cmd = worker_command(sandbox, &place)?;
        cmd.args(["--id", &i.to_string(), "--rate", &per_worker])
            .args(["--duration-ms", &duration_ms, "--v2-every", V2_EVERY]);
        if keep_alive {
            cmd.arg("--keep-alive");
        }
        commands.push(cmd);
    }

    let ring = RingSampler::start(&maps, RING_PERIOD)?;
    let cpu_start = CpuSample::take(pid)?;
    let started = Instant::now();
    let children = commands
        .into_iter()
        .map(spawn)
        .collect::<Result<Vec<_>>>()?;
    let deadline = started + duration + WORKER_GRACE;
    let summaries = children
        .into_iter()
        .map(|c| collect(c, deadline))
        .collect::<Result<Vec<_>>>()?;
    let elapsed = started.elapsed();
    let log = sandbox.imds_log();
    sandbox.imds().clear_log();
    let caught_up = daemon.wait_for_requests(log.len() as u64, CATCH_UP)?;
    let cpu_end = CpuSample::take(pid)?;
    let (ring_peak, ring_samples) = ring.finish();
    let peak_rss = procfs::vm_bytes(pid, "VmHWM")?;
    let (cpu_percent, _) = cpu_end.percent_since(&cpu_start);
    let senders: HashSet<u32> = summaries.iter().map(|s| s.pid).collect();
    let (counters, verification) = daemon.stop_then(|last, events| {
        Ok((
            DaemonCounters::of(last)?,
            verify::verify(&log, events, &expect, &senders)?,
        ))
    })?;
    Ok(LoadRun {
        target,
        duration,
        workloads: WORKLOADS,
        host_workloads: host,
        keep_alive_workloads: keep,
        achieved: served_rate(&log),
        elapsed,
        verification,
        counters,
        ring_peak,
        ring_size: maps
            .get(bpfmaps::RING)
            .map_or(0, |m| u64::from(m.max_entries)),
        ring_samples,
        cpu_percent,
        peak_rss,
        worker_failures: summaries.iter().map(|s| s.failed).sum(),
        worker_error: summaries
            .iter()
            .find(|s| !s.last_error.is_empty())
            .map(|s| s.last_error.clone()),
        caught_up,
    })
}

/// Requests per second the mock served, from its first to its last request
/// (not counting the workers' start and exit).
fn served_rate(log: &[imds_sandbox::mock_imds::ImdsRequest]) -> f64 {
    let (Some(first), Some(last)) = (log.first(), log.last()) else {
        return 0.0;
    };
    let span = last
        .time
        .duration_since(first.time)
        .unwrap_or_default()
        .as_secs_f64();
    if span <= 0.0 {
        return 0.0;
    }
    (log.len() - 1) as f64 / span
}

// ---------------------------------------------------------------------- soak

/// Shape of the soak.
#[derive(Debug, Clone)]
pub struct SoakPlan {
    pub duration: Duration,
    pub rate: u32,
    /// Steady workloads sharing `rate` (half in containers).
    pub workloads: u32,
    /// Short-lived processes started per second.
    pub process_rate: u32,
    /// RSS growth is measured from here to the end.
    pub warm_up: Duration,
    /// How often RSS and the maps are sampled.
    pub sample_every: Duration,
}

impl SoakPlan {
    pub fn new(duration: Duration) -> Self {
        Self {
            duration,
            rate: 200,
            workloads: 8,
            process_rate: 50,
            // 60 s, or a third of a shorter run.
            warm_up: Duration::from_secs(60).min(duration / 3),
            sample_every: Duration::from_secs(5),
        }
    }
}

/// One sample of the daemon during the soak.
#[derive(Debug, Clone)]
pub struct SoakSample {
    pub at: Duration,
    pub rss: u64,
    /// Entries per watched map.
    pub maps: BTreeMap<String, u64>,
    pub containers: u64,
    pub processes: u64,
}

#[derive(Debug, Clone)]
pub struct SoakRun {
    pub plan: SoakPlan,
    pub elapsed: Duration,
    pub achieved: f64,
    pub samples: Vec<SoakSample>,
    /// Sizes of the watched maps, and which are LRU maps.
    pub map_sizes: BTreeMap<String, u32>,
    pub lru_maps: HashSet<String>,
    /// Containers created and destroyed, short-lived processes run.
    pub containers: u64,
    pub container_failures: u64,
    pub processes: u64,
    /// Processes on the whole machine when the daemon stopped (its
    /// process cache follows every process, not only the sandbox's).
    pub machine_processes: usize,
    pub verification: Verification,
    pub counters: DaemonCounters,
    pub peak_rss: u64,
    pub cpu_percent: f64,
    pub worker_failures: u64,
    pub worker_error: Option<String>,
}

impl SoakRun {
    /// The first sample at or after the warm-up.
    pub fn warm(&self) -> Option<&SoakSample> {
        self.samples.iter().find(|s| s.at >= self.plan.warm_up)
    }

    pub fn last(&self) -> Option<&SoakSample> {
        self.samples.last()
    }

    /// RSS at the end minus RSS after the warm-up.
    pub fn rss_growth(&self) -> Option<i64> {
        Some(self.last()?.rss as i64 - self.warm()?.rss as i64)
    }

    /// Per map: (after warm-up, largest after warm-up, at the end).
    pub fn map_rows(&self) -> Vec<(String, u64, u64, u64)> {
        let Some(warm) = self.warm() else {
            return Vec::new();
        };
        let last = self.last().unwrap_or(warm);
        warm.maps
            .iter()
            .map(|(name, w)| {
                let peak = self
                    .samples
                    .iter()
                    .filter(|s| s.at >= warm.at)
                    .filter_map(|s| s.maps.get(name).copied())
                    .max()
                    .unwrap_or(*w);
                (
                    name.clone(),
                    *w,
                    peak,
                    last.maps.get(name).copied().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Whether every hash map that only its owner empties (not LRU) stayed
    /// on a plateau after the warm-up: its largest count after it is within
    /// 25 % (+ 256 entries) of its count then.
    pub fn maps_bounded(&self) -> bool {
        self.map_rows()
            .iter()
            .filter(|(name, ..)| !self.lru_maps.contains(name))
            .all(|(_, warm, peak, _)| *peak <= warm + warm / 4 + 256)
    }

    /// LRU maps that kept growing after the warm-up: (name, entries added
    /// per second, seconds until full at that pace from the end).
    pub fn growing_lru(&self) -> Vec<(String, f64, Option<f64>)> {
        let (Some(warm), Some(last)) = (self.warm(), self.last()) else {
            return Vec::new();
        };
        let span = last.at.saturating_sub(warm.at).as_secs_f64();
        self.map_rows()
            .into_iter()
            .filter(|(name, ..)| self.lru_maps.contains(name))
            .filter(|(_, warm_n, _, end_n)| end_n > warm_n && span > 0.0)
            .map(|(name, warm_n, _, end_n)| {
                let rate = (end_n - warm_n) as f64 / span;
                let size = f64::from(self.map_sizes.get(&name).copied().unwrap_or(0));
                let left = (size - end_n as f64).max(0.0);
                (name, rate, (rate > 0.0).then(|| left / rate))
            })
            .collect()
    }
}

/// A command whose child joins `cgroup` (its `cgroup.procs`, opened here)
/// and the network namespace `netns` before exec, as Sandbox::command does
/// for a place: for the soak's short-lived containers, whose cgroups are
/// not places of the sandbox.
fn command_in(procs: OwnedFd, netns: OwnedFd, program: &PathBuf) -> Command {
    let mut cmd = Command::new(program);
    let hook = move || -> std::io::Result<()> {
        // SAFETY: write(2) and setns(2) on fds the closure owns, from a
        // static buffer: async-signal-safe, as required after fork.
        unsafe {
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(hook);
    }
    cmd
}

/// What the container churner did.
#[derive(Default)]
struct Churned {
    containers: u64,
    failures: u64,
    summaries: Vec<WorkerSummary>,
    expect: HashMap<u32, Expect>,
    last_error: Option<String>,
}

/// Every second until `end`: a cgroup named like a Docker container's, a
/// worker in it (in container 0's network namespace, behind the NAT) that
/// makes one request, then the cgroup removed again.
fn churn_containers(
    sandbox: &Sandbox,
    end: Instant,
    stop: &AtomicBool,
    count: &AtomicU64,
) -> Result<Churned> {
    let exe = std::env::current_exe().context("cannot find imds-bench's own executable")?;
    let netns = sandbox.container(0).netns();
    let mut out = Churned::default();
    let mut n: u32 = 0;
    let mut next = Instant::now();
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += Duration::from_secs(1);
        let id = 100_000 + n;
        n += 1;
        let container_id = random_hex64(n);
        let cgroup = sandbox
            .root_cgroup()
            .child(&format!("system.slice/docker-{container_id}.scope"))?;
        std::fs::create_dir_all(cgroup.path())
            .with_context(|| format!("cannot create {}", cgroup.path().display()))?;
        let result = (|| -> Result<WorkerSummary> {
            let mut cmd = command_in(cgroup.open_procs()?, netns.open()?, &exe);
            cmd.arg(WORKER_ARG)
                .args(["--id", &id.to_string(), "--max-ops", "1", "--rate", "100"])
                .args(["--duration-ms", "5000"])
                // Odd containers make an IMDSv2 pair, even ones a v1 GET.
                .args(["--v2-every", if n % 2 == 1 { "1" } else { "0" }]);
            let child = spawn(cmd)?;
            collect(child, Instant::now() + Duration::from_secs(10))
        })();
        match result {
            Ok(s) => {
                if s.failed > 0 {
                    out.failures += 1;
                    out.last_error = Some(s.last_error.clone());
                }
                out.expect.insert(
                    id,
                    Expect {
                        cgroup: cgroup.rel().to_owned(),
                        container: Some(container_id.clone()),
                    },
                );
                out.summaries.push(s);
            }
            Err(e) => {
                out.failures += 1;
                out.last_error = Some(format!("{e:#}"));
            }
        }
        remove_cgroup(&cgroup);
        out.containers += 1;
        count.store(out.containers, Ordering::Relaxed);
    }
    Ok(out)
}

/// rmdir once the exited worker has left it (a few ms after its reaping).
fn remove_cgroup(cgroup: &Cgroup) {
    for _ in 0..200 {
        match std::fs::remove_dir(cgroup.path()) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => {
                let _ = cgroup.kill();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    eprintln!(
        "imds-bench: cannot remove {} (the sandbox's teardown will)",
        cgroup.path().display()
    );
}

/// 64 hex digits, different for every `n` and every run.
fn random_hex64(n: u32) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut x = (nanos as u64) ^ (u64::from(n) << 32) ^ u64::from(std::process::id());
    let mut s = String::with_capacity(64);
    for _ in 0..4 {
        // splitmix64
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        s.push_str(&format!("{z:016x}"));
    }
    s
}

/// `process_rate` short-lived processes a second (`/bin/true`) in a host
/// service of the sandbox until `end`; returns how many ran.
fn churn_processes(
    sandbox: &Sandbox,
    rate: u32,
    end: Instant,
    stop: &AtomicBool,
    count: &AtomicU64,
) -> Result<u64> {
    let place = Place::service("bench-churn");
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut next = Instant::now();
    let mut n = 0;
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += interval;
        let status = sandbox
            .command(&place, "/bin/true")?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run /bin/true")?;
        if !status.success() {
            bail!("/bin/true exited with {status}");
        }
        n += 1;
        count.store(n, Ordering::Relaxed);
    }
    Ok(n)
}

/// The soak: see the module's documentation.
pub fn soak(sandbox: &Sandbox, plan: &SoakPlan) -> Result<SoakRun> {
    let mut daemon = Daemon::start(sandbox, &MONITOR_ARGS).context("starting imds-monitor")?;
    let pid = daemon.pid();
    let maps = bpfmaps::daemon_maps(pid)?;
    let watched: Vec<&bpfmaps::DaemonMap> = bpfmaps::WATCHED
        .iter()
        .filter_map(|name| maps.get(*name))
        .collect();
    sandbox.imds().clear_log();
    let per_worker = format!("{:.3}", f64::from(plan.rate) / f64::from(plan.workloads));
    let duration_ms = plan.duration.as_millis().to_string();
    let mut expect = HashMap::new();
    let mut commands = Vec::new();
    for i in 0..plan.workloads {
        let (place, want, keep_alive) = placement(sandbox, i)?;
        // Container 0's network namespace is the churner's; steady
        // container workloads use the others.
        let place = match place {
            Place::Container(0) => Place::Container(1),
            p => p,
        };
        let want = match &place {
            Place::Container(c) => Expect {
                cgroup: sandbox.container(*c).cgroup().rel().to_owned(),
                container: Some(sandbox.container(*c).id().to_owned()),
            },
            _ => want,
        };
        expect.insert(i, want);
        let mut cmd = worker_command(sandbox, &place)?;
        cmd.args(["--id", &i.to_string(), "--rate", &per_worker])
            .args(["--duration-ms", &duration_ms, "--v2-every", V2_EVERY]);
        if keep_alive {
            cmd.arg("--keep-alive");
        }
        commands.push(cmd);
    }

    let cpu_start = CpuSample::take(pid)?;
    let started = Instant::now();
    let end = started + plan.duration;
    let stop = AtomicBool::new(false);
    let (containers_now, processes_now) = (AtomicU64::new(0), AtomicU64::new(0));
    let children = commands
        .into_iter()
        .map(spawn)
        .collect::<Result<Vec<_>>>()?;
    let mut samples = Vec::new();
    let (churned, processes, summaries) = std::thread::scope(|scope| -> Result<_> {
        let containers = scope.spawn(|| churn_containers(sandbox, end, &stop, &containers_now));
        let processes =
            scope.spawn(|| churn_processes(sandbox, plan.process_rate, end, &stop, &processes_now));
        let sampled = (|| -> Result<()> {
            let mut next = started;
            while next <= end {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                next += plan.sample_every;
                let mut entries = BTreeMap::new();
                for m in &watched {
                    entries.insert(m.name.clone(), m.entries()?);
                }
                samples.push(SoakSample {
                    at: started.elapsed(),
                    rss: procfs::vm_bytes(pid, "VmRSS")?,
                    maps: entries,
                    containers: containers_now.load(Ordering::Relaxed),
                    processes: processes_now.load(Ordering::Relaxed),
                });
                if let Some(s) = samples.last() {
                    eprintln!(
                        "imds-bench: soak {:>4.0} s: RSS {:.1} MiB, {} containers, {} processes, maps {:?}",
                        s.at.as_secs_f64(),
                        s.rss as f64 / f64::from(1u32 << 20),
                        s.containers,
                        s.processes,
                        s.maps
                    );
                }
            }
            Ok(())
        })();
        if sampled.is_err() {
            stop.store(true, Ordering::SeqCst);
        }
        let churned = containers
            .join()
            .map_err(|_| anyhow::anyhow!("churner panicked"))?;
        let processes = processes
            .join()
            .map_err(|_| anyhow::anyhow!("process churner panicked"))?;
        sampled?;
        let deadline = Instant::now() + WORKER_GRACE;
        let summaries = children
            .into_iter()
            .map(|c| collect(c, deadline))
            .collect::<Result<Vec<_>>>()?;
        Ok((churned?, processes?, summaries))
    })?;
    let elapsed = started.elapsed();
    let log = sandbox.imds_log();
    sandbox.imds().clear_log();
    daemon.wait_for_requests(log.len() as u64, CATCH_UP)?;
    let cpu_end = CpuSample::take(pid)?;
    let (cpu_percent, _) = cpu_end.percent_since(&cpu_start);
    let peak_rss = procfs::vm_bytes(pid, "VmHWM")?;
    expect.extend(churned.expect.clone());
    let senders: HashSet<u32> = summaries
        .iter()
        .chain(&churned.summaries)
        .map(|s| s.pid)
        .collect();
    let map_sizes = watched
        .iter()
        .map(|m| (m.name.clone(), m.max_entries))
        .collect();
    let lru_maps = watched
        .iter()
        .filter(|m| m.lru)
        .map(|m| m.name.clone())
        .collect();
    let machine_processes = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count()
        })
        .unwrap_or(0);
    let (counters, verification) = daemon.stop_then(|last, events| {
        Ok((
            DaemonCounters::of(last)?,
            verify::verify(&log, events, &expect, &senders)?,
        ))
    })?;
    let all = summaries.iter().chain(&churned.summaries);
    Ok(SoakRun {
        plan: plan.clone(),
        elapsed,
        achieved: served_rate(&log),
        samples,
        map_sizes,
        lru_maps,
        containers: churned.containers,
        container_failures: churned.failures,
        processes,
        machine_processes,
        verification,
        counters,
        peak_rss,
        cpu_percent,
        worker_failures: all.clone().map(|s| s.failed).sum(),
        worker_error: all
            .clone()
            .find(|s| !s.last_error.is_empty())
            .map(|s| s.last_error.clone())
            .or(churned.last_error),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_look_like_dockers() {
        let a = random_hex64(1);
        let b = random_hex64(2);
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn maps_bounded_reads_the_samples() {
        let sample = |at: u64, flows: u64| SoakSample {
            at: Duration::from_secs(at),
            rss: 10 << 20,
            maps: BTreeMap::from([("FLOWS".to_owned(), flows)]),
            containers: 0,
            processes: 0,
        };
        let mut run = SoakRun {
            plan: SoakPlan::new(Duration::from_secs(180)),
            elapsed: Duration::from_secs(180),
            achieved: 200.0,
            samples: vec![sample(0, 0), sample(60, 1000), sample(180, 1100)],
            map_sizes: BTreeMap::from([("FLOWS".to_owned(), 16384)]),
            lru_maps: HashSet::new(),
            containers: 0,
            container_failures: 0,
            processes: 0,
            machine_processes: 0,
            verification: Verification::default(),
            counters: DaemonCounters::default(),
            peak_rss: 0,
            cpu_percent: 0.0,
            worker_failures: 0,
            worker_error: None,
        };
        assert!(run.maps_bounded());
        assert_eq!(run.rss_growth(), Some(0));
        run.samples.push(sample(185, 5000));
        assert!(!run.maps_bounded());
    }
}
