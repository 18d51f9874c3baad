//! `run --kernel-log debug`: the kernel programs' debug lines (aya-log), on
//! the daemon's stderr, never on stdout with the events.
//!
//! The level is a global of the programs (aya-log's `AYA_LOG_LEVEL`, in
//! .rodata), set before the load: with `off` (the default) the verifier
//! skips every log call, so the programs cost what they cost without them.
//! The lines carry numbers only (class, verdict, reason, ports, pids; never
//! a path, header or token); [`names`] turns the codes into the names the
//! events use.

use std::{
    io::Write as _,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya_log::EbpfLogger;
use imds_monitor_common::class::{InvalidReason, RequestClass, Verdict};

/// What the kernel programs log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelLog {
    /// Nothing (the log calls are not even verified)
    #[default]
    Off,
    /// Each request's verdict, a full flow table, connections not
    /// followed, resets, owners not recorded
    Debug,
}

impl KernelLog {
    /// The value of aya-log's `AYA_LOG_LEVEL` global in the programs.
    pub fn level(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::Debug => aya_log::Level::Debug as u8,
        }
    }
}

/// How often the reader looks for a stop when no line comes.
const POLL: Duration = Duration::from_millis(200);

/// Reads the programs' log lines on a thread of its own until dropped.
pub struct Reader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    /// Takes the programs' log ring buffer (`AYA_LOGS`) from `ebpf` and
    /// prints its lines to stderr as they come.
    pub fn start(ebpf: &mut Ebpf) -> Result<Self> {
        let mut logger = EbpfLogger::init_with_logger(ebpf, Stderr)
            .context("reading the kernel programs' log (aya-log map AYA_LOGS)")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("kernel-log".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    let mut fd = libc::pollfd {
                        fd: logger.as_fd().as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; the fd lives as long as `logger`.
                    unsafe { libc::poll(&mut fd, 1, POLL.as_millis() as libc::c_int) };
                    logger.flush();
                }
                logger.flush();
            })
            .context("starting the kernel log thread")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes each record as one line to stderr, whatever `RUST_LOG` says
/// (`--kernel-log` is the switch): `[TIME DEBUG kernel:TARGET] MESSAGE`.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = format!(
            "[{} {} kernel:{}] {}\n",
            humantime::format_rfc3339_seconds(SystemTime::now()),
            record.level(),
            record.target(),
            names(&record.args().to_string()),
        );
        // One write per line: lines of other threads do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Connection events of the classifier's lines (`debug::Event` in the
/// kernel crate), by number.
const EVENTS: [&str; 4] = [
    "flow_table_full",
    "untracked_connection",
    "reset_sent",
    "reset_failed",
];

/// Maps of the `owner not recorded` lines, by number.
const MAPS: [&str; 2] = ["CONNECTS", "BY_SEQUENCE"];

/// `class=N`, `verdict=N` and `reason=N` of a kernel line with the names the
/// events use (`class=v1_get`, `verdict=dropped`, `reason=flow_table_full`),
/// and `event=N` and `map=N` with theirs.
pub fn names(message: &str) -> String {
    message
        .split(' ')
        .map(|word| {
            let Some((key, value)) = word.split_once('=') else {
                return word.to_owned();
            };
            let Ok(n) = value.parse::<u8>() else {
                return word.to_owned();
            };
            let name = match key {
                "class" => RequestClass::from_u8(n).map(RequestClass::as_str),
                "verdict" => (n <= Verdict::Dropped as u8).then(|| Verdict::from_u8(n).as_str()),
                "reason" => Some(InvalidReason::from_u8(n).as_str()),
                "event" => EVENTS.get(usize::from(n)).copied(),
                "map" => MAPS.get(usize::from(n)).copied(),
                _ => None,
            };
            match name {
                Some(name) => format!("{key}={name}"),
                None => word.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_become_the_events_names() {
        assert_eq!(
            names("request class=0 verdict=2 reason=0 sport=43210 ifindex=3 pid=77 request=0"),
            "request class=v1_get verdict=dropped reason=none sport=43210 ifindex=3 pid=77 request=0"
        );
        assert_eq!(
            names("request class=5 verdict=0 reason=17 sport=1"),
            "request class=incomplete verdict=allowed reason=flow_table_full sport=1"
        );
        assert_eq!(
            names("connection event=2 sport=5 ifindex=3"),
            "connection event=reset_sent sport=5 ifindex=3"
        );
        assert_eq!(
            names("owner not recorded map=0 error=-7 pid=9"),
            "owner not recorded map=CONNECTS error=-7 pid=9"
        );
        // Unknown codes and other words stay as they are.
        assert_eq!(
            names("class=99 verdict=7 reason= flow table full"),
            "class=99 verdict=7 reason= flow table full"
        );
    }

    #[test]
    fn levels_of_the_programs_global() {
        assert_eq!(KernelLog::Off.level(), 0);
        assert_eq!(KernelLog::Debug.level(), 4);
        assert_eq!(KernelLog::default(), KernelLog::Off);
    }
}
