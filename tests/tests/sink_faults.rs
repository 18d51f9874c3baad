//! Output faults never stop the datapath: with a full disk, a reader of
//! stdout that stops reading, and a closed stdout, enforce mode still drops
//! every IMDSv1 request (the mock IMDS serves none), and the events that
//! could not be written are counted and reported in an `events-lost` record
//! once writing works again. A closed stdout (EPIPE) ends the daemon, with a
//! non-zero exit and a message, and leaves enforcement pinned.

use std::{
    fs,
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use imds_sandbox::{Monitor, PinsGuard, Place, Sandbox, action, imds_monitor_bin, pin_dir};
use serde_json::Value;

/// curl's exit code for "Recv failure: Connection reset by peer".
const CURL_RECV_ERROR: i32 = 56;

fn sandbox() -> Sandbox {
    Sandbox::builder().hop_limit(2).build().expect("sandbox")
}

/// A v1 GET is reset at once and never reaches IMDS.
fn assert_v1_blocked(sb: &Sandbox) {
    let before = sb.imds_log().len();
    let out = sb
        .curl(
            &Place::service("legacy"),
            &[
                "--max-time",
                "5",
                "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            ],
        )
        .expect("curl");
    assert_eq!(out.exit_code, Some(CURL_RECV_ERROR), "reset: {out:?}");
    assert_eq!(sb.imds_log().len(), before, "IMDS received no request");
}

/// Enough events to overflow a few KiB of pipe and queue: `n` IMDSv2 reads
/// (allowed), each an `imds-request` and an `imds-response` line.
fn v2_burst(sb: &Sandbox, n: u32) {
    let count = n.to_string();
    let out = sb
        .imds_client(
            &Place::service("agent"),
            &["--v2", "--count", &count, "--timeout-ms", "3000"],
        )
        .expect("imds-client");
    assert!(out.success(), "{out:?}");
}

/// No IMDSv1 request was ever served: everything IMDS saw carried a token
/// or was the token PUT.
fn assert_imds_served_no_v1(sb: &Sandbox) {
    let log = sb.imds_log();
    assert!(!log.is_empty(), "the v2 reads were served");
    assert!(
        log.iter().all(|r| r.token_present || r.method == "PUT"),
        "IMDSv1 reached IMDS: {log:#?}"
    );
}

fn output_losses(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| {
            action(e) == "events-lost"
                && e["event"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("output_"))
        })
        .collect()
}

/// Checks an output `events-lost` record and returns its count.
fn check_loss(record: &Value, reason: &str) -> u64 {
    assert_eq!(record["event"]["kind"], "alert", "{record:#}");
    assert_eq!(record["event"]["reason"], reason, "{record:#}");
    let lost = record["imds"]["lost_events"].as_u64().expect("a count");
    assert!(lost > 0, "{record:#}");
    let start = record["event"]["start"].as_str().expect("event.start");
    let end = record["event"]["end"].as_str().expect("event.end");
    assert!(start <= end, "{record:#}");
    lost
}

fn until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A tmpfs of `size` mounted on a new temp directory; unmounted and removed
/// on drop, also when the test fails.
struct Tmpfs {
    dir: PathBuf,
    mnt: PathBuf,
}

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("imds-sink-{name}-{}", std::process::id()));
        let mnt = dir.join("mnt");
        fs::create_dir_all(&mnt).expect("temp dir");
        let guard = Self { dir, mnt };
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&guard.mnt)
            .status()
            .expect("mount");
        assert!(status.success(), "mount tmpfs: {status}");
        guard
    }

    /// Writes zeros until the file system is full; returns the filler.
    fn fill(&self) -> PathBuf {
        let path = self.mnt.join("filler");
        let mut file = fs::File::create(&path).expect("filler");
        let chunk = [0u8; 4096];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {l:?}: {e}")))
        .collect()
}

#[test]
fn a_full_disk_loses_counted_events_and_enforcement_goes_on() {
    let sb = sandbox();
    let tmpfs = Tmpfs::mount("full", "1m");
    let path = tmpfs.mnt.join("logs/events.json");
    let path_str = path.to_string_lossy().into_owned();
    let monitor = Monitor::spawn(
        &sb,
        &Place::service("imds-monitor"),
        &[
            "--mode",
            "enforce",
            "--output",
            &path_str,
            "--output-queue-kib",
            "8",
        ],
    )
    .expect("spawn");
    until("monitor-started", Duration::from_secs(20), || {
        read_lines(&path)
            .iter()
            .any(|l| action(l) == "monitor-started")
            .then_some(())
    });

    let filler = tmpfs.fill();
    // The first events may still fit in the file's last page: send v1
    // requests until a write fails (each one dropped all the same).
    let warning = format!("cannot write events to {path_str}: no space left on device");
    let mut v1_sent = 0;
    while !monitor.stderr().contains(&warning) {
        assert!(v1_sent < 20, "no write failed: {}", monitor.stderr());
        assert_v1_blocked(&sb);
        v1_sent += 1;
        thread::sleep(Duration::from_millis(100));
    }
    v2_burst(&sb, 20);
    assert_v1_blocked(&sb);
    until("the queue-full warning", Duration::from_secs(10), || {
        monitor
            .stderr()
            .contains("the output queue (8 KiB) is full")
            .then_some(())
    });
    // Whatever did get written (a small record can fit in the last page of
    // the file) is whole lines: a failed write is cut back.
    read_lines(&path);

    // Space again: the loss is reported first, then the queued events.
    fs::remove_file(&filler).unwrap();
    let lines = until("events-lost", Duration::from_secs(10), || {
        let lines = read_lines(&path);
        (!output_losses(&lines).is_empty()).then_some(lines)
    });
    let record = output_losses(&lines)[0].clone();
    let lost = check_loss(&record, "output_error");
    assert!(
        record["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no space left on device")),
        "{record:#}"
    );
    assert_eq!(record["imds"]["output"], path_str.as_str());
    assert_v1_blocked(&sb);
    let stopped = monitor.stop_with(libc::SIGTERM).expect("stop");
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let lines = read_lines(&path);
    let last = lines.last().expect("lines");
    assert_eq!(action(last), "monitor-stopped", "{last:#}");
    let counters = &last["imds"]["counters"];
    let reported: u64 = output_losses(&lines)
        .iter()
        .map(|r| r["imds"]["lost_events"].as_u64().unwrap())
        .sum();
    assert!(reported >= lost);
    assert_eq!(counters["output_lost_events"], reported, "{last:#}");
    assert!(counters["output_write_errors"].as_u64().unwrap() >= 1);
    // Every v1 request was dropped in the kernel, including those whose
    // events were lost: the kernel's count says so.
    assert_eq!(counters["requests"]["v1_get"], v1_sent + 2, "{last:#}");
    let dropped = lines
        .iter()
        .filter(|l| l["imds"]["verdict"] == "dropped")
        .count();
    assert!(dropped >= 1, "the one after the fault at least");
    assert_imds_served_no_v1(&sb);
}

/// `imds-monitor run` started by the test itself, with stdout a pipe the
/// test reads when it wants to (or closes).
struct Daemon {
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
    _pins: PinsGuard,
}

impl Daemon {
    fn spawn(sb: &Sandbox, args: &[&str]) -> Self {
        let dir = pin_dir(sb);
        let pins = PinsGuard(dir.clone());
        let mut cmd = sb
            .command(&Place::service("imds-monitor"), imds_monitor_bin().unwrap())
            .unwrap();
        cmd.arg("run")
            .args(["--mode", "enforce", "--pin-dir"])
            .arg(&dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn imds-monitor");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let shared = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                shared
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut daemon = Self {
            child,
            stdout: Some(stdout),
            stderr,
            _pins: pins,
        };
        let first = daemon.read_event().expect("monitor-started");
        assert_eq!(action(&first), "monitor-started", "{}", daemon.stderr());
        daemon
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn read_event(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.stdout.as_mut()?.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("a whole JSON line")),
        }
    }

    /// Makes the stdout pipe one page small, so that a few events fill it.
    fn shrink_pipe(&self) {
        let fd = self.stdout.as_ref().unwrap().get_ref().as_raw_fd();
        // SAFETY: fcntl(2) on a pipe fd we own.
        let size = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, 4096) };
        assert!(
            size >= 4096,
            "F_SETPIPE_SZ: {}",
            std::io::Error::last_os_error()
        );
    }

    fn wait_stderr(&self, needle: &str) {
        until(needle, Duration::from_secs(10), || {
            self.stderr().contains(needle).then_some(())
        });
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        until("the daemon to exit", timeout, || {
            self.child.try_wait().unwrap()
        })
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn a_stalled_reader_fills_a_bounded_queue_and_the_loss_is_reported_when_it_reads_again() {
    let sb = sandbox();
    let mut daemon = Daemon::spawn(&sb, &["--output-queue-kib", "4"]);
    daemon.shrink_pipe();
    // The reader stalls: nothing is read from here on, until it resumes.
    assert_v1_blocked(&sb);
    v2_burst(&sb, 20);
    assert_v1_blocked(&sb);
    daemon.wait_stderr("the output queue (4 KiB) is full: stdout is not keeping up");
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "still running: {}",
        daemon.stderr()
    );

    // It reads again: queued events, the loss, then the rest.
    let mut events = Vec::new();
    while output_losses(&events).is_empty() {
        events.push(daemon.read_event().expect("events-lost before EOF"));
    }
    let lost = check_loss(output_losses(&events)[0], "output_blocked");
    assert_eq!(output_losses(&events)[0]["imds"]["output"], "stdout");
    assert_v1_blocked(&sb);
    daemon.signal(libc::SIGTERM);
    while let Some(event) = daemon.read_event() {
        events.push(event);
    }
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}: {}", daemon.stderr());
    let last = events.last().unwrap();
    assert_eq!(action(last), "monitor-stopped");
    let reported: u64 = output_losses(&events)
        .iter()
        .map(|r| r["imds"]["lost_events"].as_u64().unwrap())
        .sum();
    assert!(reported >= lost);
    assert_eq!(last["imds"]["counters"]["output_lost_events"], reported);
    assert_eq!(last["imds"]["counters"]["output_write_errors"], 0);
    assert_eq!(last["imds"]["counters"]["requests"]["v1_get"], 3);
    let written = events
        .iter()
        .filter(|e| action(e) == "imds-request")
        .count() as u64;
    assert_eq!(last["imds"]["counters"]["events_written"], written);
    assert_imds_served_no_v1(&sb);
}

#[test]
fn a_closed_stdout_ends_the_daemon_with_an_error_and_enforcement_stays() {
    let sb = sandbox();
    let mut daemon = Daemon::spawn(&sb, &[]);
    // The reader goes away.
    drop(daemon.stdout.take());
    assert_v1_blocked(&sb);
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "exits non-zero");
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("error: stdout was closed (EPIPE)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("enforcement stays in force, pinned in"),
        "{stderr}"
    );
    // No daemon, and IMDSv1 is still dropped (until `detach`, which the
    // pins guard runs).
    assert_v1_blocked(&sb);
    assert_v1_blocked(&sb);
    v2_burst(&sb, 1);
    assert_imds_served_no_v1(&sb);
    assert!(
        !matches!(fs::metadata(pin_dir(&sb)), Err(e) if e.kind() == ErrorKind::NotFound),
        "pins kept"
    );
}
