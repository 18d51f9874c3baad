//! Runs imds-monitor in the sandbox with its events going to a file, as a
//! deployment feeding a SIEM would, and follows that file.
//!
//! Not `imds_sandbox::Monitor`: it reads the daemon's stdout through a pipe
//! and parses every line in this process. At thousands of events per second
//! on two cores that reader competes with the load, and when it falls behind
//! the full pipe stalls the daemon, which then loses events: the harness
//! would be measured, not the daemon.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use imds_sandbox::{Place, Sandbox, imds_monitor_bin};
use serde_json::Value;

/// How long start-up (loading and attaching the programs) may take.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the daemon may take to exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Marks an `imds-request` line (the daemon writes compact JSON).
const REQUEST_MARK: &[u8] = br#""action":"imds-request""#;

pub struct Daemon {
    child: Child,
    dir: PathBuf,
    tail: Tail,
    /// From the spawn to its `monitor-started` line (everything attached),
    /// to within the 5 ms this harness polls at.
    pub startup: Duration,
}

impl Daemon {
    /// Starts `imds-monitor run ARGS --output FILE` in the sandbox host's
    /// namespace (cgroup `system.slice/imds-monitor.service`) and waits for
    /// its `monitor-started` line.
    pub fn start(sandbox: &Sandbox, args: &[&str]) -> Result<Self> {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "imds-bench-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let events = dir.join("events.json");
        let stderr = File::create(dir.join("stderr.log"))?;
        let mut cmd = sandbox.command(&Place::service("imds-monitor"), imds_monitor_bin()?)?;
        // Attribution follows the sandbox's workloads only: the mock IMDS
        // runs as threads of this process (a thread per connection), which
        // on EC2 is off the host; following it would charge the daemon for
        // fork and exit events a real host does not have.
        cmd.arg("run")
            .args(args)
            .arg("--cgroup")
            .arg(sandbox.root_cgroup().path())
            .arg("--output")
            .arg(&events)
            // No rotation during a run: the tail follows one file.
            .args(["--rotate-mib", "100000"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let spawned = Instant::now();
        let child = cmd.spawn().context("spawning imds-monitor")?;
        let mut daemon = Self {
            child,
            tail: Tail::new(events),
            dir,
            startup: Duration::ZERO,
        };
        let deadline = spawned + START_TIMEOUT;
        loop {
            daemon.tail.read_new()?;
            if daemon.tail.first.is_some() {
                daemon.startup = spawned.elapsed();
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "imds-monitor exited with {status} while starting:\n{}",
                    daemon.stderr()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "imds-monitor did not start within {START_TIMEOUT:?}:\n{}",
                    daemon.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `monitor-started` event.
    pub fn started(&self) -> Result<Value> {
        let line = self.tail.first.as_deref().unwrap_or_default();
        serde_json::from_slice(line).context("the first line is not JSON")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Waits until `n` `imds-request` lines were written, at most `timeout`.
    pub fn wait_for_requests(&mut self, n: u64, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            self.tail.read_new()?;
            if self.tail.requests >= n {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGINT, waits for a clean exit, and returns the last line, which
    /// must be `monitor-stopped`.
    pub fn stop(mut self) -> Result<Value> {
        self.stop_inner()
    }

    /// [`Daemon::stop`], then `read` with the last line and the events
    /// file, before the file is removed.
    pub fn stop_then<R>(mut self, read: impl FnOnce(&Value, &Path) -> Result<R>) -> Result<R> {
        let last = self.stop_inner()?;
        read(&last, &self.tail.path)
    }

    fn stop_inner(&mut self) -> Result<Value> {
        // SAFETY: kill(2) on our own child's pid.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill");
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                bail!("imds-monitor did not exit within {STOP_TIMEOUT:?} of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            bail!("imds-monitor exited with {status}:\n{}", self.stderr());
        }
        self.tail.read_new()?;
        let last = self.tail.last.as_deref().unwrap_or_default();
        serde_json::from_slice(last).context("the last line is not JSON")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Follows a growing NDJSON file: reads only what was appended since the
/// last call, so polling it costs little even when it holds many events.
struct Tail {
    path: PathBuf,
    pos: u64,
    partial: Vec<u8>,
    first: Option<Vec<u8>>,
    last: Option<Vec<u8>>,
    requests: u64,
}

impl Tail {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            pos: 0,
            partial: Vec::new(),
            first: None,
            last: None,
            requests: 0,
        }
    }

    fn read_new(&mut self) -> Result<()> {
        let Some(mut file) = open_if_exists(&self.path)? else {
            return Ok(());
        };
        file.seek(SeekFrom::Start(self.pos))?;
        // A MiB at a time: after a long load the file holds gigabytes.
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            self.pos += n as u64;
            self.partial.extend_from_slice(&chunk[..n]);
            self.take_lines();
        }
    }

    /// Counts the complete lines of `partial` and keeps the rest.
    fn take_lines(&mut self) {
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        let mut last = None;
        for line in complete.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if self.first.is_none() {
                self.first = Some(line.to_vec());
            }
            if line.windows(REQUEST_MARK.len()).any(|w| w == REQUEST_MARK) {
                self.requests += 1;
            }
            last = Some(line);
        }
        if let Some(line) = last {
            self.last = Some(line.to_vec());
        }
    }
}

fn open_if_exists(path: &Path) -> Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot open {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tail_counts_requests_across_partial_writes() {
        let dir = std::env::temp_dir().join(format!("imds-bench-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.json");
        let mut tail = Tail::new(path.clone());
        tail.read_new().unwrap(); // no file yet
        let mut f = File::create(&path).unwrap();
        f.write_all(
            b"{\"event\":{\"action\":\"monitor-started\"}}\n{\"event\":{\"action\":\"imds-req",
        )
        .unwrap();
        tail.read_new().unwrap();
        assert_eq!(tail.requests, 0);
        f.write_all(b"uest\"}}\n{\"event\":{\"action\":\"monitor-stopped\"}}\n")
            .unwrap();
        tail.read_new().unwrap();
        assert_eq!(tail.requests, 1);
        assert!(
            tail.first
                .as_deref()
                .unwrap()
                .ends_with(b"monitor-started\"}}")
        );
        assert!(
            tail.last
                .as_deref()
                .unwrap()
                .ends_with(b"monitor-stopped\"}}")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
