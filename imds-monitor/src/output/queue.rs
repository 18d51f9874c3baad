//! The bounded queue between the event loop and the thread that writes.
//!
//! The event loop only appends whole lines here and never waits: when the
//! output is slow (a SIEM forwarder that stalls reading stdout) or failing
//! (a full disk), the queue fills up to its byte limit and every further line
//! is dropped and counted, with the time span of the loss. The writer thread
//! reports that loss in one `events-lost` record as soon as writing works
//! again. Lines are [`Bytes`]: cut from one buffer per batch, not copied.

use std::{
    collections::VecDeque,
    sync::{Condvar, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;

/// One JSON line, newline included.
#[derive(Clone, Debug)]
pub struct Line {
    pub bytes: Bytes,
    /// An `imds-request` line (counted in monitor-stopped's `events_written`).
    pub request: bool,
}

/// Events that could not be written, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss {
    pub count: u64,
    /// When the first and the last of them were produced.
    pub first: SystemTime,
    pub last: SystemTime,
    /// The last write error while they were lost; `None` when the output
    /// only did not keep up (a reader that stopped reading).
    pub error: Option<String>,
}

impl Loss {
    fn add(&mut self, count: u64, at: SystemTime, error: Option<&String>) {
        self.count += count;
        self.first = self.first.min(at);
        self.last = self.last.max(at);
        if let Some(e) = error {
            self.error = Some(e.clone());
        }
    }

    /// Merges `other` (a loss whose record could not be written) back in.
    fn merge(&mut self, other: Loss) {
        self.count += other.count;
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
        if self.error.is_none() {
            self.error = other.error;
        }
    }

    /// `event.reason` of its `events-lost` record.
    pub fn reason(&self) -> &'static str {
        if self.error.is_some() {
            "output_error"
        } else {
            "output_blocked"
        }
    }
}

/// Totals for monitor-stopped and the logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Lines written, and of those `imds-request` lines.
    pub lines_written: u64,
    pub requests_written: u64,
    /// `imds-request` lines queued but not yet written.
    pub requests_queued: u64,
    /// Lines dropped because the queue was full.
    pub lost: u64,
    /// Failed write attempts (each retry counts).
    pub write_errors: u64,
    /// The most bytes ever queued (written lines leave the queue).
    pub peak_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    lines: VecDeque<Line>,
    /// Bytes queued, including the batch the writer is writing.
    bytes: usize,
    /// Lines the writer has taken and not yet written.
    in_flight: bool,
    /// Lost and not yet reported in an `events-lost` record.
    pending_loss: Option<Loss>,
    /// The writer holds a loss whose record it has not written yet.
    loss_in_flight: bool,
    /// The writer's last error while writing fails; cleared on success.
    fault: Option<String>,
    /// The queue overflowed and nobody was told yet (the event loop logs it once).
    overflow_logged: bool,
    totals: Totals,
    reopen: bool,
    closed: bool,
    /// A fault that ends the daemon (stdout closed): the writer has stopped.
    fatal: Option<String>,
}

#[derive(Debug)]
pub struct Queue {
    capacity: usize,
    state: Mutex<State>,
    /// Wakes the writer: lines, reopen, close.
    work: Condvar,
    /// Wakes whoever waits for the queue to empty.
    idle: Condvar,
}

/// What the event loop learns from a push.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    pub lost: u64,
    /// This push began an overflow: say so once.
    pub overflow_began: bool,
}

impl Queue {
    /// A queue of at most `capacity` bytes of lines. One line is always
    /// accepted into an empty queue, however long, so that no line is
    /// too big ever to be written.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            state: Mutex::default(),
            work: Condvar::new(),
            idle: Condvar::new(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere never leaves the state half-updated: every
        // change below is a few assignments.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends whole lines; those that do not fit are dropped and counted
    /// as lost at `now`. Never blocks on the output.
    pub fn push(&self, lines: impl IntoIterator<Item = Line>, now: SystemTime) -> Pushed {
        self.push_inner(lines, now, false)
    }

    /// Appends even beyond the capacity (the monitor-stopped record).
    pub fn push_always(&self, line: Line) {
        self.push_inner([line], SystemTime::now(), true);
    }

    fn push_inner(
        &self,
        lines: impl IntoIterator<Item = Line>,
        now: SystemTime,
        always: bool,
    ) -> Pushed {
        let mut pushed = Pushed::default();
        let mut added = false;
        let mut state = self.lock();
        let state = &mut *state;
        for line in lines {
            let len = line.bytes.len();
            let fits = state.bytes == 0 || state.bytes + len <= self.capacity;
            if state.fatal.is_none() && (always || fits) {
                state.bytes += len;
                state.totals.peak_bytes = state.totals.peak_bytes.max(state.bytes);
                if line.request {
                    state.totals.requests_queued += 1;
                }
                state.lines.push_back(line);
                added = true;
            } else {
                pushed.lost += 1;
                state.totals.lost += 1;
                match &mut state.pending_loss {
                    Some(loss) => loss.add(1, now, state.fault.as_ref()),
                    None => {
                        state.pending_loss = Some(Loss {
                            count: 1,
                            first: now,
                            last: now,
                            error: state.fault.clone(),
                        })
                    }
                }
            }
        }
        if pushed.lost > 0 && !state.overflow_logged {
            state.overflow_logged = true;
            pushed.overflow_began = true;
        }
        if added {
            self.work.notify_one();
        }
        pushed
    }

    pub fn totals(&self) -> Totals {
        self.lock().totals.clone()
    }

    /// Bytes queued now, the batch being written included (`--metrics`).
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The write error while writing fails, if it does now.
    pub fn fault(&self) -> Option<String> {
        self.lock().fault.clone()
    }

    /// The fault that stopped the writer (stdout closed), if any.
    pub fn fatal(&self) -> Option<String> {
        self.lock().fatal.clone()
    }

    /// Asks the writer to reopen the output (SIGHUP).
    pub fn request_reopen(&self) {
        self.lock().reopen = true;
        self.work.notify_one();
    }

    /// No more lines will come: the writer exits once the queue is empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.work.notify_one();
    }

    /// Waits until every queued line is written (true), or the writer
    /// stopped for good, or `timeout` passed (false).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if state.fatal.is_some() {
                return false;
            }
            if state.lines.is_empty()
                && !state.in_flight
                && !state.loss_in_flight
                && state.pending_loss.is_none()
            {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .idle
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    // The writer's side.

    /// Blocks until there is work: lines (up to about `max_bytes` of them,
    /// at least one), a loss to report, or a reopen; `None` once closed and
    /// empty.
    pub(super) fn next(&self, max_bytes: usize, batch: &mut Vec<Line>) -> Option<Work> {
        let mut state = self.lock();
        loop {
            let reopen = std::mem::take(&mut state.reopen);
            if !state.lines.is_empty() || reopen || state.pending_loss.is_some() {
                let mut bytes = 0;
                while let Some(line) = state.lines.front() {
                    if !batch.is_empty() && bytes + line.bytes.len() > max_bytes {
                        break;
                    }
                    bytes += line.bytes.len();
                    batch.extend(state.lines.pop_front());
                }
                state.in_flight = !batch.is_empty();
                return Some(Work { reopen });
            }
            if state.closed {
                return None;
            }
            state = self.work.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The loss to report now, if any; the caller writes its record or
    /// gives it back with [`Queue::restore_loss`].
    pub(super) fn take_loss(&self) -> Option<Loss> {
        let mut state = self.lock();
        let loss = state.pending_loss.take();
        state.loss_in_flight = loss.is_some();
        loss
    }

    pub(super) fn restore_loss(&self, loss: Loss) {
        let mut state = self.lock();
        state.loss_in_flight = false;
        match &mut state.pending_loss {
            Some(pending) => pending.merge(loss),
            None => state.pending_loss = Some(loss),
        }
    }

    /// A write failed with `error`: later losses say so.
    pub(super) fn failed(&self, error: String) {
        let mut state = self.lock();
        state.totals.write_errors += 1;
        if let Some(loss) = &mut state.pending_loss {
            loss.error = Some(error.clone());
        }
        state.fault = Some(error);
    }

    /// `batch` (taken by [`Queue::next`]) is written.
    pub(super) fn written(&self, batch: &[Line]) {
        let mut state = self.lock();
        state.fault = None;
        for line in batch {
            state.bytes -= line.bytes.len();
            state.totals.lines_written += 1;
            if line.request {
                state.totals.requests_written += 1;
                state.totals.requests_queued -= 1;
            }
        }
        state.in_flight = false;
        if state.lines.is_empty() && !state.loss_in_flight && state.pending_loss.is_none() {
            // Caught up: a new overflow is news again.
            state.overflow_logged = false;
            self.idle.notify_all();
        }
    }

    /// The loss record was written.
    pub(super) fn loss_reported(&self) {
        let mut state = self.lock();
        state.fault = None;
        state.loss_in_flight = false;
        state.totals.lines_written += 1;
        if state.lines.is_empty() && !state.in_flight && state.pending_loss.is_none() {
            state.overflow_logged = false;
            self.idle.notify_all();
        }
    }

    /// The writer stopped for good (stdout closed).
    pub(super) fn fail_for_good(&self, error: String) {
        let mut state = self.lock();
        state.fatal = Some(error);
        self.idle.notify_all();
    }

    /// Sleeps for `backoff`, or less if the queue is closed or a reopen is
    /// asked for (both are reasons to try again at once).
    pub(super) fn pause(&self, backoff: Duration) {
        let deadline = Instant::now() + backoff;
        let mut state = self.lock();
        while !state.closed && !state.reopen {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            state = self
                .work
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Whether the queue is closed (shutdown: retries get shorter).
    pub(super) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Takes a pending reopen request (between retries).
    pub(super) fn take_reopen(&self) -> bool {
        std::mem::take(&mut self.lock().reopen)
    }
}

/// What [`Queue::next`] handed the writer besides lines.
#[derive(Debug)]
pub(super) struct Work {
    pub reopen: bool,
}

/// Retry delays after write errors: 50 ms doubling up to 2 s; back to the
/// start after a success.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(50);
    pub const MAX: Duration = Duration::from_secs(2);

    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The delay before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, request: bool) -> Line {
        Line {
            bytes: Bytes::from(format!("{text}\n")),
            request,
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_full_queue_drops_and_counts_with_the_time_span() {
        let q = Queue::new(10);
        // 6 bytes each: the first fits, the second would make 12 > 10.
        let p = q.push([line("aaaaa", true), line("bbbbb", true)], at(1));
        assert_eq!(
            p,
            Pushed {
                lost: 1,
                overflow_began: true
            }
        );
        let p = q.push([line("ccccc", false)], at(5));
        assert_eq!(
            p,
            Pushed {
                lost: 1,
                overflow_began: false
            },
            "said once per overflow"
        );
        let loss = q.take_loss().expect("loss");
        assert_eq!(loss.count, 2);
        assert_eq!((loss.first, loss.last), (at(1), at(5)));
        assert_eq!(loss.reason(), "output_blocked");
        let t = q.totals();
        assert_eq!((t.lost, t.requests_queued, t.peak_bytes), (2, 1, 6));
    }

    #[test]
    fn an_empty_queue_takes_a_line_longer_than_its_capacity() {
        let q = Queue::new(4);
        assert_eq!(q.push([line("a long line", false)], at(1)).lost, 0);
        assert_eq!(q.push([line("x", false)], at(1)).lost, 1);
    }

    #[test]
    fn losses_during_a_write_fault_carry_the_error() {
        let q = Queue::new(6);
        q.push([line("aaaaa", false)], at(1));
        q.failed("No space left on device (os error 28)".into());
        q.push([line("bbbbb", false)], at(2));
        let loss = q.take_loss().unwrap();
        assert_eq!(loss.reason(), "output_error");
        assert!(loss.error.unwrap().contains("No space"));
        assert_eq!(q.totals().write_errors, 1);
    }

    #[test]
    fn a_loss_whose_record_failed_is_merged_back() {
        let q = Queue::new(1);
        q.push([line("a", false), line("b", false)], at(3));
        let first = q.take_loss().unwrap();
        q.push([line("c", false)], at(7));
        q.restore_loss(first);
        let loss = q.take_loss().unwrap();
        assert_eq!((loss.count, loss.first, loss.last), (2, at(3), at(7)));
        assert!(q.take_loss().is_none());
    }

    #[test]
    fn writing_frees_room_and_counts_requests() {
        let q = Queue::new(12);
        q.push([line("aaaaa", true), line("bbbbb", false)], at(1));
        let mut batch = Vec::new();
        let work = q.next(1 << 20, &mut batch).unwrap();
        assert!(!work.reopen);
        assert_eq!(batch.len(), 2);
        assert_eq!(
            q.push([line("ccccc", false)], at(1)).lost,
            1,
            "lines being written still take room"
        );
        q.written(&batch);
        let t = q.totals();
        assert_eq!(
            (t.lines_written, t.requests_written, t.requests_queued),
            (2, 1, 0)
        );
        assert_eq!(q.push([line("ddddd", false)], at(1)).lost, 0);
    }

    #[test]
    fn batches_are_cut_by_bytes_but_hold_at_least_one_line() {
        let q = Queue::new(1 << 20);
        q.push((0..10).map(|_| line("123456789", false)), at(1));
        let mut batch = Vec::new();
        q.next(25, &mut batch).unwrap();
        assert_eq!(batch.len(), 2);
        batch.clear();
        q.next(1, &mut batch).unwrap();
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn a_closed_empty_queue_ends_the_writer_and_idle_waits_end() {
        let q = Queue::new(100);
        assert!(q.wait_idle(Duration::ZERO));
        q.push([line("a", false)], at(1));
        assert!(!q.wait_idle(Duration::from_millis(10)), "nobody writes");
        q.close();
        let mut batch = Vec::new();
        assert!(q.next(100, &mut batch).is_some(), "drains before ending");
        q.written(&batch);
        batch.clear();
        assert!(q.next(100, &mut batch).is_none());
        assert!(q.wait_idle(Duration::ZERO));
    }

    #[test]
    fn after_a_fatal_fault_nothing_is_queued() {
        let q = Queue::new(100);
        q.fail_for_good("stdout closed".into());
        assert_eq!(q.push([line("a", false)], at(1)).lost, 1);
        assert!(!q.wait_idle(Duration::from_secs(5)), "returns at once");
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<_> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(b.next_delay(), Backoff::FIRST);
    }
}
