//! Runs the real `imds-monitor` daemon inside a sandbox's EC2 host namespace
//! and collects the JSON lines it prints.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use crate::{Place, Sandbox};

/// Environment variable naming the daemon binary (set by `cargo xtask`).
pub const MONITOR_BIN_ENV: &str = "IMDS_MONITOR_BIN";

/// The `imds-monitor` binary: `$IMDS_MONITOR_BIN`, else the workspace's
/// `target/{debug,release}/imds-monitor` (`cargo test` builds the debug one).
pub fn imds_monitor_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(MONITOR_BIN_ENV) {
        return Ok(PathBuf::from(path));
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let candidates = [
        target.join(profile).join("imds-monitor"),
        target.join("debug/imds-monitor"),
        target.join("release/imds-monitor"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "imds-monitor not built (looked at {candidates:?}): run `cargo build -p imds-monitor` \
                 or set {MONITOR_BIN_ENV}"
            )
        })
}

/// Lines printed so far, shared with the reader thread.
#[derive(Default)]
struct Output {
    events: Vec<Value>,
    /// stdout lines that were not JSON objects (must stay empty).
    garbage: Vec<String>,
    closed: bool,
}

/// A running daemon. Dropping it kills the process and removes enforcement
/// it pinned (unless it was [`Monitor::kill`]ed: then a restart adopts it,
/// and a [`PinsGuard`] removes it).
pub struct Monitor {
    child: Child,
    output: Arc<(Mutex<Output>, Condvar)>,
    stderr: Arc<Mutex<String>>,
    pin_dir: Option<PathBuf>,
}

/// The bpffs directory enforce mode pins to, one per sandbox so parallel
/// tests never share state.
pub fn pin_dir(sandbox: &Sandbox) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/imds-sandbox-{}", sandbox.id()))
}

/// Removes pinned enforcement (`imds-monitor detach`) when dropped, also
/// when a test fails after killing a daemon.
pub struct PinsGuard(pub PathBuf);

impl Drop for PinsGuard {
    fn drop(&mut self) {
        detach(&self.0);
    }
}

fn detach(dir: &std::path::Path) {
    if !dir.exists() {
        return;
    }
    if let Ok(bin) = imds_monitor_bin() {
        let _ = std::process::Command::new(bin)
            .arg("detach")
            .arg("--pin-dir")
            .arg(dir)
            .stdout(Stdio::null())
            .status();
    }
}

/// What a stopped daemon left.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    pub events: Vec<Value>,
    pub garbage: Vec<String>,
    pub stderr: String,
}

impl Stopped {
    /// The `imds-request` events.
    pub fn requests(&self) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| action(e) == "imds-request")
            .collect()
    }

    /// The `imds-request` events whose request was dropped (reset).
    pub fn dropped(&self) -> Vec<&Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["imds"]["verdict"] == "dropped")
            .collect()
    }

    /// The last line, which must be `monitor-stopped`.
    pub fn stopped_event(&self) -> &Value {
        self.events.last().expect("monitor printed nothing")
    }
}

/// `event.action` of an event.
pub fn action(event: &Value) -> &str {
    event["event"]["action"].as_str().unwrap_or_default()
}

impl Monitor {
    /// Starts `imds-monitor run ARGS` in the host namespace, in the cgroup
    /// `system.slice/imds-monitor.service`, and waits for `monitor-started`.
    pub fn start(sandbox: &Sandbox, args: &[&str]) -> Result<Self> {
        Self::start_at(sandbox, &Place::service("imds-monitor"), args)
    }

    pub fn start_at(sandbox: &Sandbox, place: &Place, args: &[&str]) -> Result<Self> {
        let monitor = Self::spawn(sandbox, place, args)?;
        monitor
            .wait_for(Duration::from_secs(20), |events| {
                events.iter().any(|e| action(e) == "monitor-started")
            })
            .map_err(|e| anyhow!("{e}\nstderr:\n{}", monitor.stderr()))?;
        Ok(monitor)
    }

    /// Starts the daemon without waiting for anything (for `--output FILE`,
    /// where stdout stays empty).
    pub fn spawn(sandbox: &Sandbox, place: &Place, args: &[&str]) -> Result<Self> {
        let mut cmd = sandbox.command(place, imds_monitor_bin()?)?;
        let enforce = args.windows(2).any(|w| w == ["--mode", "enforce"]);
        let pin_dir = (enforce && !args.contains(&"--pin-dir")).then(|| pin_dir(sandbox));
        cmd.arg("run").args(args);
        if let Some(dir) = &pin_dir {
            cmd.arg("--pin-dir").arg(dir);
        }
        // With --persist the pins outlive this daemon on purpose: the test's
        // PinsGuard (or its own `detach`) removes them.
        let pin_dir = pin_dir.filter(|_| !args.contains(&"--persist"));
        Self::launch(cmd, pin_dir)
    }

    /// Starts `cmd run ARGS`, where `cmd` is a prepared command that ends by
    /// exec'ing the daemon with the arguments appended to it (a wrapper that
    /// sets up namespaces, as a container runtime would), and waits for
    /// `monitor-started`.
    pub fn start_command(mut cmd: std::process::Command, args: &[&str]) -> Result<Self> {
        cmd.arg("run").args(args);
        let monitor = Self::launch(cmd, None)?;
        monitor
            .wait_for(Duration::from_secs(20), |events| {
                events.iter().any(|e| action(e) == "monitor-started")
            })
            .map_err(|e| anyhow!("{e}\nstderr:\n{}", monitor.stderr()))?;
        Ok(monitor)
    }

    fn launch(mut cmd: std::process::Command, pin_dir: Option<PathBuf>) -> Result<Self> {
        cmd.env(
            "RUST_LOG",
            std::env::var("IMDS_MONITOR_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawning imds-monitor")?;
        let output = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let shared = Arc::clone(&output);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (lock, cvar) = &*shared;
                let mut out = lock.lock().expect("output lock");
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v.is_object() => out.events.push(v),
                    _ => out.garbage.push(line),
                }
                cvar.notify_all();
            }
            let (lock, cvar) = &*shared;
            lock.lock().expect("output lock").closed = true;
            cvar.notify_all();
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("piped stderr");
        let err_shared = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                err_shared
                    .lock()
                    .expect("stderr lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Ok(Self {
            child,
            output,
            stderr,
            pin_dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Every event printed so far.
    pub fn events(&self) -> Vec<Value> {
        self.output.0.lock().expect("output lock").events.clone()
    }

    /// The `monitor-started` event.
    pub fn started_event(&self) -> Value {
        self.events()
            .into_iter()
            .find(|e| action(e) == "monitor-started")
            .expect("waited for in start")
    }

    /// Waits until `done(events)` holds; fails after `timeout` or when the
    /// daemon's stdout closes first.
    pub fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        let timeout = timeout * crate::util::time_scale();
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.output;
        let mut out = lock.lock().expect("output lock");
        loop {
            if done(&out.events) {
                return Ok(out.events.clone());
            }
            if out.closed {
                bail!(
                    "imds-monitor exited before the expected events; it printed {} events",
                    out.events.len()
                );
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for events; got {:#?}",
                    out.events
                );
            }
            out = cvar
                .wait_timeout(out, deadline - now)
                .expect("output lock")
                .0;
        }
    }

    /// Waits until at least `n` `imds-request` events were printed.
    pub fn wait_for_requests(&self, n: usize) -> Result<Vec<Value>> {
        let events = self.wait_for(Duration::from_secs(10), |events| {
            events
                .iter()
                .filter(|e| action(e) == "imds-request")
                .count()
                >= n
        })?;
        Ok(events
            .into_iter()
            .filter(|e| action(e) == "imds-request")
            .collect())
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill");
        }
        Ok(())
    }

    /// SIGINT (or `signal`), then waits up to 10 s for a clean exit.
    pub fn stop_with(mut self, signal: libc::c_int) -> Result<Stopped> {
        self.signal(signal)?;
        let deadline = Instant::now() + Duration::from_secs(10) * crate::util::time_scale();
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                bail!(
                    "imds-monitor did not exit within 10 s of signal {signal}\nstderr:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        // Let the reader threads see EOF.
        let _ = self.wait_for(Duration::from_secs(5), |_| false);
        let out = self.output.0.lock().expect("output lock");
        Ok(Stopped {
            status,
            events: out.events.clone(),
            garbage: out.garbage.clone(),
            stderr: self.stderr(),
        })
    }

    /// SIGKILL, as an OOM killer or `kill -9` would: no cleanup runs.
    pub fn kill(mut self) -> Result<ExitStatus> {
        self.pin_dir = None;
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    pub fn stop(self) -> Result<Stopped> {
        self.stop_with(libc::SIGINT)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(dir) = &self.pin_dir {
            detach(dir);
        }
    }
}
