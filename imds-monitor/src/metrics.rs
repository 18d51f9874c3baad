//! `run --metrics ADDR`: Prometheus metrics over HTTP (`GET /metrics`).
//!
//! The event loop counts as it finalizes each record ([`Metrics::request`],
//! [`Metrics::finding`], ...), under one uncontended mutex; a scrape takes a
//! snapshot and encodes it with `prometheus-client`'s Prometheus text format
//! (version 0.0.4), which escapes label values (workload names come from
//! container labels and images). The server runs on the daemon's own
//! runtime. Without `--metrics` every call is a no-op.
//!
//! Cardinality is bounded: labels are the request class, the verdict, the
//! workload kind, the diagnostic id and the interface; no pid, address or
//! path. Per-workload series (`workload_requests_total`) exist for at most
//! `--metrics-top-workloads` workloads, the busiest ones; every other request
//! is counted in `workload="other"`. A workload gets a series when there is
//! a free one, or when it has made more than twice the requests of the
//! least busy workload that has one (which then loses its series: its counts
//! and later requests go to `other`). A series therefore counts from the
//! moment its workload got it; every counter only ever grows, and the
//! series always add up to every request counted.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    os::fd::{AsRawFd as _, BorrowedFd},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use imds_monitor_common::class::RequestClass;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{diagnose::Finding, enrich::Sender, event, output::queue::Queue, policy::Decision};

/// The default of `--metrics-top-workloads`.
pub const DEFAULT_TOP_WORKLOADS: u16 = 20;
/// Workloads whose totals are kept to rank them; beyond it a new workload's
/// requests count in `other` only (a host with more than this many distinct
/// workloads is rare; the memory stays bounded all the same).
const MAX_TRACKED: usize = 10_000;
/// Scrapes served at once; more connections are closed at once.
const MAX_CONNECTIONS: usize = 8;
/// A connection that sends no request head in this time is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection is kept longer than this.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// The workload label of the requests of workloads without their own series.
pub const OTHER: &str = "other";
/// `imds.workload.kind` of a request whose sender is unknown (as in
/// `imds-summary`).
const UNATTRIBUTED: &str = "unattributed";

/// The daemon's counters; a cheap handle, cloned into the server.
#[derive(Clone, Debug, Default)]
pub struct Metrics(Option<Arc<Shared>>);

#[derive(Debug)]
struct Shared {
    started: SystemTime,
    state: Mutex<State>,
    ring: OnceLock<RingWatch>,
    queue: OnceLock<Arc<Queue>>,
    /// The most bytes seen waiting in the ring buffer at a collection.
    ring_high_water: AtomicU64,
    /// The kernel's count of records it could not put in the ring buffer.
    kernel_lost: AtomicU64,
    policy_generation: AtomicU64,
    policy_rejected: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// (class, verdict, workload kind) -> requests.
    requests: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    /// Diagnostic id (`imds.diagnostic.id`) -> findings.
    diagnostics: BTreeMap<String, u64>,
    workloads: Workloads,
    interfaces: BTreeMap<String, bool>,
}

impl Metrics {
    /// Counting off: every call does nothing.
    pub fn disabled() -> Self {
        Self(None)
    }

    /// Counting on, with per-workload series for at most `top_workloads`.
    pub fn new(top_workloads: usize) -> Self {
        Self(Some(Arc::new(Shared {
            started: SystemTime::now(),
            state: Mutex::new(State {
                workloads: Workloads::new(top_workloads),
                ..State::default()
            }),
            ring: OnceLock::new(),
            queue: OnceLock::new(),
            ring_high_water: AtomicU64::new(0),
            kernel_lost: AtomicU64::new(0),
            policy_generation: AtomicU64::new(0),
            policy_rejected: AtomicU64::new(0),
        })))
    }

    fn state(&self) -> Option<std::sync::MutexGuard<'_, State>> {
        let shared = self.0.as_ref()?;
        Some(shared.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// An `imds-request` record was written: counted by class, verdict and
    /// the sender's workload (`imds.workload`, as `imds-summary` keys it).
    pub fn request(&self, request: &event::Request, sender: &Sender, decision: &Decision) {
        let Some(mut state) = self.state() else {
            return;
        };
        let class = request.class;
        let (kind, id) = match sender.workload_key() {
            Some((kind, id)) => (kind.as_str(), std::borrow::Cow::Borrowed(id)),
            None => (
                UNATTRIBUTED,
                std::borrow::Cow::Owned(request.source.ip().to_string()),
            ),
        };
        *state
            .requests
            .entry((class.as_str(), decision.verdict.as_str(), kind))
            .or_default() += 1;
        state.workloads.count(kind, &id, class);
    }

    /// A diagnosis record (`imds-v1-rejected`, ...) was written.
    pub fn finding(&self, finding: &Finding) {
        if let Some(mut state) = self.state() {
            let id = finding.action.trim_start_matches("imds-").replace('-', "_");
            *state.diagnostics.entry(id).or_default() += 1;
        }
    }

    /// The kernel's total of events lost to a full ring buffer.
    pub fn set_kernel_lost(&self, total: u64) {
        if let Some(shared) = &self.0 {
            shared.kernel_lost.fetch_max(total, Ordering::Relaxed);
        }
    }

    /// Whether the programs are attached to `interface` (1) or not (0).
    pub fn set_attached(&self, interface: &str, attached: bool) {
        if let Some(mut state) = self.state() {
            state.interfaces.insert(interface.to_owned(), attached);
        }
    }

    /// A SIGHUP reload put a new policy in force.
    pub fn policy_loaded(&self) {
        if let Some(shared) = &self.0 {
            shared.policy_generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A SIGHUP reload failed: the old policy stays.
    pub fn policy_rejected(&self) {
        if let Some(shared) = &self.0 {
            shared.policy_rejected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The output queue, for its fill and its losses at each scrape.
    pub fn watch_queue(&self, queue: Arc<Queue>) {
        if let Some(shared) = &self.0 {
            let _ = shared.queue.set(queue);
        }
    }

    /// The events ring buffer (its map's fd), for how many bytes wait in it.
    pub fn watch_ring(&self, ring: BorrowedFd<'_>) -> Result<()> {
        if let Some(shared) = &self.0 {
            let _ = shared.ring.set(RingWatch::new(ring)?);
        }
        Ok(())
    }

    /// Before each collection: the bytes waiting now, for the high-water mark.
    /// Collections are the only time the ring buffer empties, so the most
    /// seen just before them is its peak.
    pub fn sample_ring(&self) {
        if let Some(shared) = &self.0
            && let Some(ring) = shared.ring.get()
        {
            shared
                .ring_high_water
                .fetch_max(ring.used(), Ordering::Relaxed);
        }
    }
}

/// Per-workload counts, bounded to the `top` busiest workloads.
#[derive(Debug, Default)]
struct Workloads {
    top: usize,
    /// Total requests per workload (kind -> id -> total), to rank them.
    tracked: HashMap<&'static str, HashMap<Box<str>, Tracked>>,
    tracked_len: usize,
    slots: Vec<Slot>,
    /// Requests of workloads without a series, by class.
    other: [u64; RequestClass::COUNT],
}

#[derive(Debug, Default)]
struct Tracked {
    total: u64,
    slot: Option<usize>,
}

#[derive(Clone, Debug)]
struct Slot {
    kind: &'static str,
    id: Box<str>,
    /// The workload's total, mirrored for ranking.
    total: u64,
    /// Requests since it got this series, by class.
    counts: [u64; RequestClass::COUNT],
}

impl Workloads {
    fn new(top: usize) -> Self {
        Self {
            top,
            ..Self::default()
        }
    }

    fn count(&mut self, kind: &'static str, id: &str, class: RequestClass) {
        if self.top == 0 {
            return;
        }
        let class = class as usize;
        let room = self.tracked_len < MAX_TRACKED;
        let by_id = self.tracked.entry(kind).or_default();
        let tracked = match by_id.get_mut(id) {
            Some(tracked) => tracked,
            None if room => {
                self.tracked_len += 1;
                by_id.entry(id.into()).or_default()
            }
            None => {
                self.other[class] += 1;
                return;
            }
        };
        tracked.total += 1;
        let total = tracked.total;
        if let Some(i) = tracked.slot {
            let slot = &mut self.slots[i];
            slot.total = total;
            slot.counts[class] += 1;
            return;
        }
        let index = if self.slots.len() < self.top {
            self.slots.push(Slot {
                kind,
                id: id.into(),
                total,
                counts: [0; RequestClass::COUNT],
            });
            self.slots.len() - 1
        } else {
            let (i, least) = self
                .slots
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.total)
                .map(|(i, s)| (i, s.total))
                .unwrap_or_default();
            if total <= least.saturating_mul(2) {
                self.other[class] += 1;
                return;
            }
            let evicted = std::mem::replace(
                &mut self.slots[i],
                Slot {
                    kind,
                    id: id.into(),
                    total,
                    counts: [0; RequestClass::COUNT],
                },
            );
            // Its counts move to `other`: the series always add up to
            // every request counted, and `other` only grows.
            for (other, n) in self.other.iter_mut().zip(evicted.counts) {
                *other += n;
            }
            if let Some(t) = self
                .tracked
                .get_mut(evicted.kind)
                .and_then(|m| m.get_mut(&*evicted.id))
            {
                t.slot = None;
            }
            i
        };
        if let Some(t) = self.tracked.get_mut(kind).and_then(|m| m.get_mut(id)) {
            t.slot = Some(index);
        }
        self.slots[index].counts[class] += 1;
    }
}

/// The ring buffer's consumer and producer positions, mapped read-only
/// (the kernel allows any process holding the map's fd to map them so).
#[derive(Debug)]
struct RingWatch {
    base: *mut libc::c_void,
    page: usize,
    size: u64,
}

// SAFETY: the mapping is read-only and only read through atomics; it lives
// until Drop.
unsafe impl Send for RingWatch {}
unsafe impl Sync for RingWatch {}

impl RingWatch {
    fn new(fd: BorrowedFd<'_>) -> Result<Self> {
        let raw = fd.as_raw_fd();
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}"))
            .context("reading the ring buffer's fdinfo")?;
        let size = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("max_entries:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .context("the ring buffer's fdinfo has no max_entries")?;
        // SAFETY: sysconf has no preconditions.
        let page =
            usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).context("page size")?;
        // SAFETY: a new read-only shared mapping of the map's first two pages
        // (consumer and producer positions); checked for failure below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                raw,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            bail!(
                "mapping the ring buffer's positions: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self { base, page, size })
    }

    /// Bytes reserved by the kernel and not yet consumed (records and their
    /// 8-byte headers).
    fn used(&self) -> u64 {
        // SAFETY: both positions are u64s at the start of their pages, inside
        // the mapping, 8-byte aligned; the kernel updates them atomically.
        let (consumer, producer) = unsafe {
            let consumer = &*(self.base as *const AtomicU64);
            let producer = &*(self.base.cast::<u8>().add(self.page) as *const AtomicU64);
            (
                consumer.load(Ordering::Acquire),
                producer.load(Ordering::Acquire),
            )
        };
        producer.saturating_sub(consumer).min(self.size)
    }
}

impl Drop for RingWatch {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe {
            libc::munmap(self.base, 2 * self.page);
        }
    }
}

/// A snapshot of everything, taken under the lock, encoded after it.
struct Snapshot {
    requests: Vec<([&'static str; 3], u64)>,
    workloads: Vec<(&'static str, String, &'static str, u64)>,
    diagnostics: Vec<(String, u64)>,
    interfaces: Vec<(String, bool)>,
}

impl Shared {
    fn snapshot(&self) -> Snapshot {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut workloads = Vec::new();
        let mut slots = state.workloads.slots.clone();
        slots.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.id.cmp(&b.id)));
        for slot in &slots {
            for class in RequestClass::ALL {
                let n = slot.counts[class as usize];
                if n > 0 {
                    workloads.push((slot.kind, slot.id.to_string(), class.as_str(), n));
                }
            }
        }
        for class in RequestClass::ALL {
            let n = state.workloads.other[class as usize];
            if n > 0 {
                workloads.push((OTHER, OTHER.to_owned(), class.as_str(), n));
            }
        }
        Snapshot {
            requests: state
                .requests
                .iter()
                .map(|(&(c, v, k), &n)| ([c, v, k], n))
                .collect(),
            workloads,
            diagnostics: state
                .diagnostics
                .iter()
                .map(|(k, &n)| (k.clone(), n))
                .collect(),
            interfaces: state
                .interfaces
                .iter()
                .map(|(k, &v)| (k.clone(), v))
                .collect(),
        }
    }
}

/// Encodes the metrics at each scrape.
#[derive(Debug)]
struct Exporter(Arc<Shared>);

type Labels = Vec<(&'static str, String)>;

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let series: Vec<_> = series.into_iter().collect();
    if series.is_empty() {
        return Ok(());
    }
    let kind = ConstCounter::new(0u64).metric_type();
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, n) in &series {
        ConstCounter::new(*n).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: &Labels,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let mut metric = encoder.encode_descriptor(name, help, None, g.metric_type())?;
    if labels.is_empty() {
        g.encode(metric)
    } else {
        g.encode(metric.encode_family(labels)?)
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for Exporter {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shared = &self.0;
        let snap = shared.snapshot();
        let e = &mut encoder;
        gauge(
            e,
            "build_info",
            "The running version of imds-monitor (always 1).",
            &vec![("version", env!("CARGO_PKG_VERSION").to_owned())],
            1,
        )?;
        let started = shared
            .started
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        gauge(
            e,
            "start_time_seconds",
            "When the monitor started, in seconds since the Unix epoch.",
            &vec![],
            clamp(started),
        )?;
        counter_family(
            e,
            "requests",
            "IMDS requests (imds-request records) by imds.class, imds.verdict and imds.workload.kind.",
            snap.requests.iter().map(|([c, v, k], n)| {
                (
                    vec![
                        ("class", (*c).to_owned()),
                        ("verdict", (*v).to_owned()),
                        ("workload_kind", (*k).to_owned()),
                    ],
                    *n,
                )
            }),
        )?;
        counter_family(
            e,
            "workload_requests",
            "IMDS requests of the busiest workloads (imds.workload), by class, since each got its series; all others in workload=\"other\".",
            snap.workloads.iter().map(|(k, id, c, n)| {
                (
                    vec![
                        ("workload_kind", (*k).to_owned()),
                        ("workload", id.clone()),
                        ("class", (*c).to_owned()),
                    ],
                    *n,
                )
            }),
        )?;
        counter_family(
            e,
            "diagnostics",
            "Diagnosis records (imds-v1-rejected, imds-hop-limit, ...) by imds.diagnostic.id.",
            snap.diagnostics
                .iter()
                .map(|(k, n)| (vec![("kind", k.clone())], *n)),
        )?;
        let output = shared.queue.get().map(|q| (q.totals(), q.queued_bytes()));
        counter_family(
            e,
            "events_lost",
            "Events lost: stage=\"ring_buffer\" in the kernel (the ring buffer was full), stage=\"output\" in the output queue (the output was slow or failing).",
            [
                (
                    vec![("stage", "ring_buffer".to_owned())],
                    shared.kernel_lost.load(Ordering::Relaxed),
                ),
                (
                    vec![("stage", "output".to_owned())],
                    output.as_ref().map_or(0, |(t, _)| t.lost),
                ),
            ],
        )?;
        if let Some(ring) = shared.ring.get() {
            gauge(
                e,
                "ring_buffer_used_bytes",
                "Bytes waiting in the kernel's event ring buffer now (read at the scrape; the daemon empties it every 20 ms).",
                &vec![],
                clamp(ring.used()),
            )?;
            gauge(
                e,
                "ring_buffer_high_water_bytes",
                "The most bytes seen waiting in the event ring buffer just before a collection, since start.",
                &vec![],
                clamp(shared.ring_high_water.load(Ordering::Relaxed)),
            )?;
            gauge(
                e,
                "ring_buffer_size_bytes",
                "The size of the event ring buffer.",
                &vec![],
                clamp(ring.size),
            )?;
        }
        if let Some((totals, bytes)) = &output {
            gauge(
                e,
                "output_queue_bytes",
                "Bytes of events queued for the output (stdout or the file), not yet written.",
                &vec![],
                clamp(*bytes as u64),
            )?;
            gauge(
                e,
                "output_queue_high_water_bytes",
                "The most bytes ever queued for the output.",
                &vec![],
                clamp(totals.peak_bytes as u64),
            )?;
        }
        if !snap.interfaces.is_empty() {
            let g = ConstGauge::new(0i64);
            let mut family = e.encode_descriptor(
                "interface_attached",
                "Whether the programs are attached to the interface (1) or not (0).",
                None,
                g.metric_type(),
            )?;
            for (name, attached) in &snap.interfaces {
                let labels: Labels = vec![("interface", name.clone())];
                ConstGauge::new(i64::from(*attached)).encode(family.encode_family(&labels)?)?;
            }
        }
        gauge(
            e,
            "policy_generation",
            "Policies put in force by SIGHUP since start (0: the one loaded at start).",
            &vec![],
            clamp(shared.policy_generation.load(Ordering::Relaxed)),
        )?;
        counter_family(
            e,
            "policy_rejected",
            "SIGHUP reloads whose policy file was rejected (the old policy stayed).",
            [(vec![], shared.policy_rejected.load(Ordering::Relaxed))],
        )?;
        Ok(())
    }
}

/// The text served at `/metrics`.
fn render(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, registry) {
        log::warn!("encoding the metrics: {e}");
    }
    text
}

fn registry(shared: Arc<Shared>) -> Registry {
    let mut registry = Registry::with_prefix("imds_monitor");
    registry.register_collector(Box::new(Exporter(shared)));
    registry
}

/// Opens the `--metrics` listener (before anything is attached, so a port in
/// use fails the start with nothing changed).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("--metrics {addr}: cannot listen there (is another process using the port?)")
    })
}

/// Serves `GET /metrics` on `listener` in the background, on this runtime.
pub fn serve(listener: tokio::net::TcpListener, metrics: &Metrics) {
    let Some(shared) = metrics.0.clone() else {
        return;
    };
    let registry = Arc::new(registry(shared));
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    if let Ok(addr) = listener.local_addr() {
        log::info!("serving Prometheus metrics at http://{addr}/metrics");
    }
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: wait instead of spinning.
                    log::warn!("metrics: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                continue;
            };
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let response = respond(&registry, &req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                    log::debug!("metrics: connection: {e}");
                }
                drop(permit);
            });
        }
    });
}

fn respond(registry: &Registry, req: &Request<Incoming>) -> Response<String> {
    let reply = |status: StatusCode, body: &str| {
        let mut response = Response::new(body.to_owned());
        *response.status_mut() = status;
        response
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return response;
    }
    let mut response = Response::new(render(registry));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use imds_monitor_common::class::Verdict;

    fn text(metrics: &Metrics) -> String {
        render(&registry(Arc::clone(metrics.0.as_ref().unwrap())))
    }

    #[test]
    fn top_workloads_are_bounded_and_counters_only_grow() {
        let mut w = Workloads::new(2);
        let v1 = RequestClass::V1Get;
        w.count("unit", "a.service", v1);
        w.count("unit", "b.service", v1);
        // c: no free series; it needs more than twice the least busy's total.
        w.count("unit", "c.service", v1);
        w.count("unit", "c.service", v1);
        assert_eq!(w.slots.len(), 2);
        assert_eq!(w.other[v1 as usize], 2);
        w.count("unit", "c.service", v1);
        // c (3 > 2 x 1) took a's series; a's count and later requests
        // go to other.
        let ids: Vec<&str> = w.slots.iter().map(|s| &*s.id).collect();
        assert_eq!(ids, ["c.service", "b.service"]);
        assert_eq!(w.slots[0].counts[v1 as usize], 1);
        assert_eq!(w.other[v1 as usize], 3);
        w.count("unit", "a.service", v1);
        assert_eq!(w.other[v1 as usize], 4);
        let counted: u64 = w
            .slots
            .iter()
            .map(|s| s.counts.iter().sum::<u64>())
            .sum::<u64>()
            + w.other.iter().sum::<u64>();
        assert_eq!(counted, 6);
    }

    #[test]
    fn zero_top_workloads_means_no_per_workload_series() {
        let mut w = Workloads::new(0);
        w.count("unit", "a.service", RequestClass::V1Get);
        assert!(w.slots.is_empty());
        assert_eq!(w.other, [0; RequestClass::COUNT]);
    }

    #[test]
    fn label_values_are_escaped_and_names_prefixed() {
        let metrics = Metrics::new(5);
        {
            let mut state = metrics.state().unwrap();
            state
                .workloads
                .count("image", "evil\"name\\\nx", RequestClass::V1Get);
            state
                .requests
                .insert(("v1_get", Verdict::Alerted.as_str(), "image"), 1);
        }
        metrics.set_attached("eth0", true);
        metrics.policy_loaded();
        let text = text(&metrics);
        assert!(
            text.contains(
                r#"imds_monitor_workload_requests_total{workload_kind="image",workload="evil\"name\\\nx",class="v1_get"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"imds_monitor_requests_total{class="v1_get",verdict="alerted",workload_kind="image"} 1"#
        ));
        assert!(text.contains("imds_monitor_interface_attached{interface=\"eth0\"} 1"));
        assert!(text.contains("imds_monitor_policy_generation 1"));
        assert!(text.contains("# TYPE imds_monitor_requests_total counter"));
        assert!(text.contains("imds_monitor_build_info{version="));
        assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics");
    }

    #[test]
    fn disabled_metrics_do_nothing() {
        let m = Metrics::disabled();
        m.set_attached("eth0", true);
        m.policy_loaded();
        m.sample_ring();
        assert!(m.state().is_none());
    }
}
