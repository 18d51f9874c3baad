//! The thread that writes queued lines to the sink, so that a slow or
//! failing output never stalls the event loop (the kernel keeps classifying
//! and enforcing by itself; the daemon must keep reading its ring buffer).
//!
//! A write that fails (full disk, I/O error, a directory that cannot be made
//! again) is retried with backoff while the queue fills and then counts what
//! it drops. The first write that works again is an `events-lost` record
//! with the count and the time span; then the queued lines follow. A closed
//! stdout (EPIPE) is the one fault that stops the writer: the daemon exits.

use std::{
    sync::Arc,
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, Result};
use bytes::Bytes;

use super::{
    queue::{Backoff, Line, Loss, Queue},
    sink::{Sink, io_reason},
};

/// Most bytes per write(2).
const BATCH_BYTES: usize = 1 << 20;

/// Formats the `events-lost` record of a loss (with the total lost so far).
pub type LossRecord = Box<dyn Fn(&Loss, u64) -> Bytes + Send>;

/// Called from the writer thread when it stops for good (to wake the event loop).
pub type OnFatal = Box<dyn Fn() + Send>;

pub struct Writer {
    sink: Sink,
    queue: Arc<Queue>,
    record: LossRecord,
    on_fatal: OnFatal,
    backoff: Backoff,
    /// Total reported in `events-lost` records so far.
    reported: u64,
    /// The output's name, for messages.
    name: String,
}

impl Writer {
    pub fn new(sink: Sink, queue: Arc<Queue>, record: LossRecord, on_fatal: OnFatal) -> Self {
        let name = sink.name();
        Self {
            sink,
            queue,
            record,
            on_fatal,
            backoff: Backoff::new(),
            reported: 0,
            name,
        }
    }

    /// Runs [`Writer::run`] on its own thread.
    pub fn spawn(self) -> Result<JoinHandle<()>> {
        thread::Builder::new()
            .name("imds-output".into())
            .spawn(move || self.run())
            .context("starting the output thread")
    }

    /// Writes until the queue is closed and empty, or stdout is closed.
    pub fn run(mut self) {
        let mut batch = Vec::new();
        while let Some(work) = self.queue.next(BATCH_BYTES, &mut batch) {
            if work.reopen {
                self.reopen();
            }
            if self.write_until_done(&batch).is_err() {
                return;
            }
            if !batch.is_empty() {
                self.queue.written(&batch);
            }
            batch.clear();
        }
    }

    fn reopen(&mut self) {
        match self.sink.reopen() {
            Ok(()) => log::info!("SIGHUP: output reopened"),
            Err(e) => log::warn!("SIGHUP: kept the current output: {e:#}"),
        }
    }

    /// Writes any pending loss record, then `batch`, retrying with backoff
    /// until both are written. Err: stdout is closed, give up.
    fn write_until_done(&mut self, batch: &[Line]) -> Result<(), ()> {
        let mut record: Option<(Loss, Line)> = None;
        let mut failing = false;
        loop {
            if self.queue.take_reopen() {
                self.reopen();
            }
            // A loss is reported before anything else is written, but never
            // inside a line that a failed write left half done on stdout.
            if record.is_none()
                && !self.sink.mid_line()
                && let Some(loss) = self.queue.take_loss()
            {
                let total = self.reported + loss.count;
                let line = Line {
                    bytes: (self.record)(&loss, total),
                    request: false,
                };
                record = Some((loss, line));
            }
            let result = match &record {
                Some((_, line)) => self.sink.write_lines(std::slice::from_ref(line)),
                None => self.sink.write_lines(batch),
            };
            match result {
                Ok(()) => {
                    if failing {
                        failing = false;
                        self.backoff.reset();
                        log::info!("writing to {} works again", self.name);
                    }
                    match record.take() {
                        Some((loss, _)) => {
                            self.reported += loss.count;
                            self.queue.loss_reported();
                            log::warn!(
                                "{} could not be written to {} between {} and {}{}; \
                                 reported in an events-lost record",
                                super::ecs::events(loss.count),
                                self.name,
                                humantime::format_rfc3339_millis(loss.first),
                                humantime::format_rfc3339_millis(loss.last),
                                loss.error
                                    .as_ref()
                                    .map(|e| format!(" ({e})"))
                                    .unwrap_or_default(),
                            );
                        }
                        None => return Ok(()),
                    }
                }
                Err(err) if self.sink.is_closed(&err) => {
                    if let Some((loss, _)) = record.take() {
                        self.queue.restore_loss(loss);
                    }
                    self.queue.fail_for_good(
                        "stdout was closed (EPIPE): nothing reads the events any more".into(),
                    );
                    (self.on_fatal)();
                    return Err(());
                }
                Err(err) => {
                    let reason = io_reason(&err);
                    // The record is made again for the next attempt (with
                    // this error and whatever was lost meanwhile), unless
                    // stdout must resume inside it.
                    if !self.sink.mid_line()
                        && let Some((loss, _)) = record.take()
                    {
                        self.queue.restore_loss(loss);
                    }
                    if !failing {
                        failing = true;
                        log::warn!(
                            "cannot write events to {}: {reason}; the monitor keeps running \
                             (classifying and enforcing happen in the kernel), queues up to \
                             {} KiB, counts the events it cannot keep and retries with backoff",
                            self.name,
                            self.queue.capacity() / 1024,
                        );
                    }
                    self.queue.failed(reason);
                    let delay = if self.queue.is_closed() {
                        // Shutting down: keep trying, but the daemon's deadline decides.
                        Backoff::FIRST
                    } else {
                        self.backoff.next_delay()
                    };
                    self.queue.pause(delay);
                }
            }
        }
    }
}

/// Waits at most `timeout` for everything queued to be written.
pub fn flush(queue: &Queue, timeout: Duration) -> bool {
    queue.wait_idle(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::queue::Queue;
    use std::{
        fs,
        path::PathBuf,
        sync::atomic::{AtomicBool, Ordering},
        time::SystemTime,
    };

    use super::super::sink::Rotation;

    fn line(text: &str) -> Line {
        Line {
            bytes: Bytes::from(format!("{text}\n")),
            request: text.starts_with("req"),
        }
    }

    fn record() -> LossRecord {
        Box::new(|loss: &Loss, total: u64| {
            Bytes::from(format!(
                "lost {} total {total} {}\n",
                loss.count,
                loss.reason()
            ))
        })
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("imds-writer-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// A directory we can turn into a file, so that writes fail until it is
    /// a directory again: a write fault anyone can cause, without root.
    #[test]
    fn a_failing_output_counts_what_it_drops_and_reports_it_first_when_it_works_again() {
        let dir = temp_dir("fault");
        let path = dir.join("logs/events.json");
        let sink = Sink::open(
            Some(&path),
            Rotation {
                max_bytes: 1 << 20,
                keep: 2,
            },
        )
        .unwrap();
        let queue = Arc::new(Queue::new(16));
        let fatal = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&fatal);
        let writer = Writer::new(
            sink,
            Arc::clone(&queue),
            record(),
            Box::new(move || flag.store(true, Ordering::SeqCst)),
        )
        .spawn()
        .unwrap();
        queue.push([line("req1")], SystemTime::now());
        assert!(flush(&queue, Duration::from_secs(5)));
        // The fault: the directory becomes a file.
        fs::remove_dir_all(dir.join("logs")).unwrap();
        fs::write(dir.join("logs"), "").unwrap();
        queue.push([line("req2"), line("req3")], SystemTime::now());
        // Wait for the writer to fail at least once, then overflow the queue.
        for _ in 0..200 {
            if queue.fault().is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let fault = queue.fault().expect("the write failed");
        assert!(fault.contains("is not a directory"), "{fault}");
        let pushed = queue.push(
            [line("req4"), line("req5"), line("req6"), line("req7")],
            SystemTime::now(),
        );
        assert_eq!(pushed.lost, 3, "16 bytes hold req2..req4 (15 bytes)");
        assert!(!flush(&queue, Duration::from_millis(100)), "still failing");
        // Fixed: the queued lines and the loss come out, the loss first.
        fs::remove_file(dir.join("logs")).unwrap();
        assert!(flush(&queue, Duration::from_secs(10)));
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text, "lost 3 total 3 output_error\nreq2\nreq3\nreq4\n",
            "the directory was made again: a new file"
        );
        let totals = queue.totals();
        assert_eq!(totals.lost, 3);
        assert!(totals.write_errors >= 1);
        assert_eq!(totals.requests_written, 4);
        assert_eq!(totals.lines_written, 5, "4 lines and the record");
        queue.close();
        writer.join().unwrap();
        assert!(!fatal.load(Ordering::SeqCst));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_loss_while_the_output_only_lagged_is_reported_as_blocked() {
        let dir = temp_dir("blocked");
        let path = dir.join("events.json");
        let sink = Sink::open(
            Some(&path),
            Rotation {
                max_bytes: 1 << 20,
                keep: 2,
            },
        )
        .unwrap();
        let queue = Arc::new(Queue::new(5));
        // No writer yet: the queue fills as if nobody read.
        queue.push([line("req1"), line("req2")], SystemTime::now());
        let writer = Writer::new(sink, Arc::clone(&queue), record(), Box::new(|| {}))
            .spawn()
            .unwrap();
        assert!(flush(&queue, Duration::from_secs(5)));
        queue.close();
        writer.join().unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "lost 1 total 1 output_blocked\nreq1\n"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
