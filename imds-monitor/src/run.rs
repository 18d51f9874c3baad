//! `imds-monitor run`: attach, stream events until SIGINT/SIGTERM, detach.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{MapData, RingBuf};
use bytes::{BufMut as _, BytesMut};
use imds_monitor_common::class::Verdict;
use netlink_packet_route::RouteNetlinkMessage;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    cgroups::{self, CgroupPaths},
    cli::RunArgs,
    clock::BootClock,
    diagnose::Diagnoser,
    endpoints,
    enrich::Enricher,
    event::{self, Record, Response},
    interfaces::{self, NameCache},
    kernel::{Kernel, LoadOptions, Pins},
    links::{self, Change, KernelAttacher, LinkWatcher},
    metrics::Metrics,
    output::{
        ecs::{self, RunInfo},
        queue::{Line, Queue},
        sink::{Rotation, Sink},
        traffic,
        writer::{self, Writer},
    },
    policy::{
        Mode,
        compile::{compile, runtime_bits},
        model::Policy,
        parse,
    },
    processes::ProcessCache,
    runtime::{self, Resolver},
    stats,
    tick::Tick,
};

/// Records handled per wake-up before the sink is written and signals polled.
const BATCH: usize = 4096;
/// How often queued events are collected: a busy host costs a wake-up per
/// 20 ms, not per request; events reach the output at most this much later.
const COALESCE: Duration = Duration::from_millis(20);
/// How long a stop waits for the output to take what is queued.
const STOP_FLUSH: Duration = Duration::from_secs(3);

pub fn run(args: RunArgs) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run_until_signal(args))
}

async fn run_until_signal(args: RunArgs) -> Result<()> {
    let endpoints = if args.endpoints.is_empty() {
        endpoints::defaults()
    } else {
        args.endpoints.clone()
    };
    let table = endpoints::to_kernel(&endpoints)?;
    let ifaces = interfaces::choose(&args.ifaces, &endpoints)?;
    if args.persist && args.mode != Mode::Enforce {
        bail!("--persist keeps enforcement in place: it needs --mode enforce");
    }
    if args.policy.is_some() && args.mode == Mode::Monitor {
        bail!("--policy needs --mode enforce (drop as it says) or --mode alert (a dry run)");
    }
    // A bad policy fails here, before anything is attached.
    let policy = match &args.policy {
        Some(path) => parse::load(path).map_err(|e| anyhow!("{e}"))?,
        None => Policy::default(),
    };
    let cgroup_root = cgroups::cgroup2_mount()?;
    let watched = cgroups::subtree(&cgroup_root, args.cgroup.as_deref())?;
    // Open the output before attaching: a bad path fails with nothing attached.
    let rotation = Rotation {
        max_bytes: args.rotate_mib.saturating_mul(1 << 20),
        keep: args.rotate_keep as usize,
    };
    let sink = Sink::open(args.output_path().as_deref(), rotation)?;
    // Likewise the metrics port: one in use fails the start, nothing attached.
    let metrics_listener = match args.metrics {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let metrics = match args.metrics {
        Some(_) => Metrics::new(args.metrics_top_workloads.into()),
        None => Metrics::disabled(),
    };
    // Registered before attaching, so a signal during start-up still stops us cleanly.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;

    // Enforce mode pins its state, and adopts what a killed predecessor left.
    let pins = if args.mode == Mode::Enforce {
        Some(Pins::open(&args.pin_dir)?)
    } else {
        None
    };
    let adopted = pins.as_ref().is_some_and(Pins::has_links);
    let mut kernel = Kernel::load(&LoadOptions {
        endpoints: &table,
        watched: args.cgroup.is_some().then_some(&watched),
        pins: pins.clone(),
        flow_entries: Some(args.flow_table_entries),
        kernel_log: args.kernel_log,
    })?;
    if args.kernel_log == crate::kernel_log::KernelLog::Debug {
        kernel.read_kernel_log()?;
    }
    kernel.persist = args.persist;
    if adopted {
        log::info!(
            "adopting the enforcement pinned in {}",
            args.pin_dir.display()
        );
    }
    // The policy before attaching: no request is judged without it.
    kernel.apply_policy(&compile(&policy, args.mode, &cgroup_root)?)?;
    // Attribution first: every connection made once requests are watched has an owner.
    kernel.attach_attribution(&watched.dir)?;
    // Link (and route) events from before the first attach on (see links).
    let mut links = subscribe_links(&args, &endpoints, &mut kernel);
    for iface in &ifaces {
        if args.baseline_passthrough {
            kernel.attach_passthrough(iface, args.attach)?;
        }
        kernel.attach_egress(iface, args.attach)?;
        kernel.attach_ingress(iface, args.attach)?;
    }
    if let Some(watcher) = &mut links {
        for iface in &ifaces {
            let index = interfaces::index_of(iface).unwrap_or(0);
            watcher.tracker.track(iface, index, true);
        }
    }
    // SAFETY: the ring buffer owns its fd and keeps it open while AsyncFd owns it.
    let mut events =
        unsafe { AsyncFd::register(kernel.take_events()?) }.context("polling the ring buffer")?;
    if let Err(e) = metrics.watch_ring(std::os::fd::AsFd::as_fd(events.get_ref())) {
        log::warn!("--metrics: the ring buffer's fill will not be reported: {e:#}");
    }
    let stats_map = kernel.take_stats()?;
    let mut info = RunInfo {
        host_name: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        mode: args.mode,
        interfaces: kernel.interfaces(),
        endpoints,
        attach_method: kernel.method,
        degraded: kernel.degraded.clone(),
        cgroup: watched.path.clone(),
        pinned: pins.map(|p| (p.dir, adopted)),
    };
    // Seeded after the tracepoints are attached: no process falls in between.
    let processes = ProcessCache::seeded();
    log::info!("process cache seeded with {} processes", processes.len());
    // From here on the event loop only queues lines; a thread writes them,
    // so a slow or failing output never stops it (see output::writer).
    let queue = Arc::new(Queue::new(
        usize::try_from(args.output_queue_kib.saturating_mul(1024)).unwrap_or(usize::MAX),
    ));
    let output_name = sink.name();
    let writer_fatal = Arc::new(tokio::sync::Notify::new());
    let record = {
        let info = info.clone();
        let output_name = output_name.clone();
        Box::new(move |loss: &_, total| {
            let mut line = serde_json::to_vec(&ecs::output_lost(&info, &output_name, loss, total))
                .unwrap_or_default();
            line.push(b'\n');
            line.into()
        })
    };
    let notify = Arc::clone(&writer_fatal);
    let writer_thread = Writer::new(
        sink,
        Arc::clone(&queue),
        record,
        Box::new(move || notify.notify_one()),
    )
    .spawn()?;
    let mut out = Output {
        queue: Arc::clone(&queue),
        buf: BytesMut::new(),
        lines: Vec::new(),
        name: output_name,
    };
    out.push(&ecs::started(&info), false)?;
    out.send();
    log::info!(
        "watching {} on {} ({}), mode {}",
        info.endpoints
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        info.interfaces.join(", "),
        info.attach_method,
        info.mode.as_str()
    );

    let sockets = runtime::Sockets {
        docker: args.docker_socket.clone(),
        containerd: args.containerd_socket.clone(),
        crio: args.crio_socket.clone(),
    };
    let (resolver, mut answers) = Resolver::new(sockets, !args.no_runtime_metadata);
    metrics.watch_queue(Arc::clone(&queue));
    for iface in &info.interfaces {
        metrics.set_attached(iface, true);
    }
    if let Some(listener) = metrics_listener {
        crate::metrics::serve(listener, &metrics);
    }
    let mut writer = EventWriter {
        metrics,
        names: NameCache::default(),
        enricher: Enricher::new(processes, CgroupPaths::new(cgroup_root.clone()), resolver),
        policy,
        diagnoser: Diagnoser::default(),
    };
    // The containers running now are looked up at once, in the background.
    writer.learn_containers();
    let mut sweep = tokio::time::interval(Duration::from_secs(30));
    let mut poll = Tick::every(COALESCE)?;
    let mut summary = tokio::time::interval_at(
        tokio::time::Instant::now() + args.summary_interval,
        args.summary_interval,
    );
    let mut lost_reported = 0;
    let mut lost_check = tokio::time::interval(Duration::from_secs(1));
    // Interfaces that are down or gone already say so now.
    on_links(
        &mut links,
        None,
        &mut kernel,
        &args,
        &mut info,
        &mut writer,
        &mut out,
    )
    .await?;
    let stdout_closed = loop {
        tokio::select! {
            batch = next_links(&mut links) => {
                on_links(&mut links, Some(batch), &mut kernel, &args, &mut info, &mut writer, &mut out).await?;
            }
            // The kernel wakes us only for a backlog (BPF_RB_NO_WAKEUP
            // otherwise): events are collected every 20 ms, one push a batch.
            tick = poll.tick() => {
                tick?;
                writer.drain_all(events.get_mut(), &info, &mut out)?;
            }
            ready = events.readable_mut() => {
                let mut ready = ready?;
                writer.drain_all(ready.get_inner_mut(), &info, &mut out)?;
                ready.clear_ready();
            }
            _ = sigint.recv() => break false,
            _ = sigterm.recv() => break false,
            // The output thread stopped for good: stdout was closed.
            _ = writer_fatal.notified() => break true,
            _ = sighup.recv() => {
                queue.request_reopen();
                if let Some(path) = &args.policy {
                    // Queued events were judged under the old policy: queue
                    // them first, while their rule names still mean that.
                    writer.drain_all(events.get_mut(), &info, &mut out)?;
                    let event = reload_policy(path, args.mode, &cgroup_root, &mut kernel, &mut writer);
                    match &event {
                        Ok(_) => writer.metrics.policy_loaded(),
                        Err(_) => writer.metrics.policy_rejected(),
                    }
                    out.push(&ecs::policy_reload(&info, path, event), false)?;
                    out.send();
                }
            }
            _ = sweep.tick() => {
                writer.enricher.processes.sweep();
                match kernel.sweep_flows(FLOW_IDLE) {
                    Ok(0) => {}
                    Ok(n) => log::debug!("removed {n} idle connections from the flow table"),
                    Err(e) => log::warn!("sweeping the flow table: {e:#}"),
                }
                // A container whose start was not seen (see Record::Exec).
                writer.learn_containers();
                // Link events a netlink overrun lost, failed attaches again.
                on_links(&mut links, None, &mut kernel, &args, &mut info, &mut writer, &mut out).await?;
            }
            Some(answer) = answers.recv() => {
                // A container's runtime metadata arrived: policy exceptions
                // on its image, pod or task now cover its cgroups.
                let id = answer.container_id.clone();
                if let Some((cgroups, meta)) = writer.enricher.runtime.complete(answer) {
                    let bits = runtime_bits(&writer.policy, &id, &meta);
                    for cgroup in cgroups.into_iter().filter(|_| bits != 0) {
                        if let Err(e) = kernel.exempt_container_cgroup(cgroup, bits) {
                            log::warn!("container {id}: {e:#}");
                        }
                    }
                }
            }
            _ = summary.tick() => {
                let counts = writer.diagnoser.take_summary();
                out.push(&ecs::summary(args.summary_interval, &counts, &info), false)?;
                out.send();
            }
            _ = lost_check.tick() => {
                // Fallback candidates whose token PUT got no answer in time.
                for finding in writer.diagnoser.decide_due(SystemTime::now()) {
                    let interface = writer.names.name(finding.request.ifindex);
                    out.push(&traffic::finding(&finding, interface, &info), false)?;
                    writer.metrics.finding(&finding);
                }
                let lost = stats::read(&stats_map)?.lost_events;
                writer.metrics.set_kernel_lost(lost);
                if lost > lost_reported {
                    out.push(&ecs::lost(&info, lost - lost_reported, lost), false)?;
                    out.send();
                    lost_reported = lost;
                }
            }
        }
    };

    if stdout_closed {
        return Err(stdout_closed_error(&mut kernel, &info, &queue));
    }
    kernel.detach_all();
    // Detached: nothing new arrives; what is queued still gets written,
    // and the fallback candidates whose wait is over are decided.
    writer.drain_all(events.get_mut(), &info, &mut out)?;
    for finding in writer.diagnoser.decide_due(SystemTime::now()) {
        let interface = writer.names.name(finding.request.ifindex);
        out.push(&traffic::finding(&finding, interface, &info), false)?;
    }
    let totals = stats::read(&stats_map)?;
    let output = queue.totals();
    // Every request line queued before monitor-stopped is written before it.
    let printed = output.requests_written + output.requests_queued;
    out.push(
        &ecs::with_cache_sizes(
            ecs::stopped(
                &info,
                &totals,
                printed,
                writer.enricher.partial_count,
                writer.diagnoser.dropped_candidates(),
                &output,
            ),
            writer.enricher.processes.len(),
            writer.enricher.cgroups.entries(),
        ),
        false,
    )?;
    out.send_always();
    queue.close();
    log::info!("detached from {}", info.interfaces.join(", "));
    if !writer::flush(&queue, STOP_FLUSH) {
        let output = queue.totals();
        let why = queue
            .fatal()
            .or_else(|| queue.fault())
            .unwrap_or_else(|| "it was not read".into());
        bail!(
            "stopped, but the last events and monitor-stopped could not be written to {} \
             within {}s ({why}); {} events were lost in this run",
            out.name,
            STOP_FLUSH.as_secs(),
            output.lost
        );
    }
    let _ = writer_thread.join();
    if output.lost > 0 {
        log::warn!(
            "{} events could not be written to {} in this run (each loss is in an events-lost record)",
            output.lost,
            out.name
        );
    }
    Ok(())
}

/// stdout was closed (EPIPE): the one output fault that ends the daemon, as
/// a crash would. In enforce mode enforcement stays pinned, so that no
/// IMDSv1 request gets through because of it: a restarted daemon adopts it
/// with no gap (`imds-monitor detach` removes it).
fn stdout_closed_error(kernel: &mut Kernel, info: &RunInfo, queue: &Queue) -> anyhow::Error {
    let enforcing = info.pinned.as_ref().map(|(dir, _)| dir.clone());
    if enforcing.is_some() {
        kernel.persist = true;
    }
    kernel.detach_all();
    let output = queue.totals();
    let kept = match enforcing {
        Some(dir) => format!(
            "; enforcement stays in force, pinned in {} (a restarted daemon adopts it; \
             `imds-monitor detach` removes it)",
            dir.display()
        ),
        None => String::new(),
    };
    anyhow!(
        "stdout was closed (EPIPE): the reader of the events went away; stopping after \
         {} written{kept}",
        ecs::events(output.lines_written)
    )
}

/// Subscribes to link (and, without `--iface`, route) events; without
/// them the daemon runs on and says so in `imds.degraded`.
fn subscribe_links(
    args: &RunArgs,
    endpoints: &[std::net::SocketAddr],
    kernel: &mut Kernel,
) -> Option<LinkWatcher> {
    match LinkWatcher::subscribe(args.ifaces.is_empty(), endpoints) {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            log::warn!("{e:#}: interfaces are not followed");
            kernel.degraded.push(links::NOT_FOLLOWED);
            None
        }
    }
}

/// The next batch of link and route events (never, without a subscription).
async fn next_links(links: &mut Option<LinkWatcher>) -> Vec<RouteNetlinkMessage> {
    match links {
        Some(watcher) => watcher.next_batch().await,
        None => std::future::pending().await,
    }
}

/// Link and route events (`batch`), or a fresh look at every link (`None`):
/// each change of a watched interface is a record (`interface-down`,
/// `interface-up`, `interface-attached`, `interface-attach-failed`), and an
/// interface that appears again is attached to (see links).
async fn on_links(
    links: &mut Option<LinkWatcher>,
    batch: Option<Vec<RouteNetlinkMessage>>,
    kernel: &mut Kernel,
    args: &RunArgs,
    info: &mut RunInfo,
    writer: &mut EventWriter,
    out: &mut Output,
) -> Result<()> {
    let Some(watcher) = links else {
        return Ok(());
    };
    let mut attacher = KernelAttacher {
        kernel,
        mode: args.attach,
        passthrough: args.baseline_passthrough,
    };
    let changes = match batch {
        Some(batch) => watcher.on_batch(batch, &mut attacher).await,
        None => watcher.resync(&mut attacher).await,
    };
    if changes.is_empty() {
        return Ok(());
    }
    info.interfaces = kernel.interfaces();
    for change in &changes {
        let link = change.link();
        match change {
            Change::Down { deleted: true, .. } => {
                log::warn!("{} (index {}) was deleted", link.name, link.index);
                writer.names.forget(link.index);
            }
            Change::Down { .. } => log::warn!("{} (index {}) is down", link.name, link.index),
            Change::Up { .. } => log::info!("{} (index {}) is up", link.name, link.index),
            Change::Attached { .. } => {
                log::info!("attached to {} (index {})", link.name, link.index)
            }
            Change::AttachFailed { error, .. } => {
                log::warn!("attaching to {} (index {}): {error}", link.name, link.index)
            }
        }
        writer.metrics.set_attached(&link.name, change.attached());
        out.push(&ecs::link_change(info, change), false)?;
    }
    out.send();
    Ok(())
}

/// A flow-table entry idle this long belongs to a connection that vanished
/// unseen: removed. A keep-alive connection quiet for longer is followed
/// again from its next request line.
const FLOW_IDLE: Duration = Duration::from_secs(60);

/// `imds-monitor detach`: ends enforcement left pinned by `--persist` or a
/// killed daemon.
pub fn detach(pin_dir: &Path) -> Result<()> {
    // Kernels before 6.6 keep persisted enforcement as clsact filters (in
    // this network namespace), newer ones as pinned links.
    let mut removed = crate::kernel::remove_netlink_filters();
    if !pin_dir.exists() && removed.is_empty() {
        println!("nothing to detach: {} does not exist", pin_dir.display());
        return Ok(());
    }
    if pin_dir.exists() {
        removed.extend(
            Pins {
                dir: pin_dir.to_owned(),
            }
            .remove()?,
        );
    }
    if removed.is_empty() {
        println!("nothing to detach in {}", pin_dir.display());
    } else {
        println!("detached: {}", removed.join(", "));
    }
    Ok(())
}

/// SIGHUP: a new policy replaces the old one in the kernel, or, if the file
/// is bad, the old one stays in force (enforcement never lapses).
fn reload_policy(
    path: &Path,
    mode: Mode,
    cgroup_root: &Path,
    kernel: &mut Kernel,
    writer: &mut EventWriter,
) -> Result<usize, String> {
    let policy = parse::load(path).map_err(|e| e.to_string())?;
    let mut compiled = compile(&policy, mode, cgroup_root).map_err(|e| format!("{e:#}"))?;
    // The containers already resolved, under the new exceptions.
    for (id, cgroups, meta) in writer.enricher.runtime.resolved() {
        let bits = runtime_bits(&policy, &id, &meta);
        for cgroup in cgroups.into_iter().filter(|_| bits != 0) {
            compiled.cgroups.entry(cgroup).or_default().container_id |= bits;
        }
    }
    kernel
        .apply_policy(&compiled)
        .map_err(|e| format!("{e:#}"))?;
    let exceptions = policy.exceptions.len();
    writer.policy = policy;
    log::info!(
        "SIGHUP: policy {} reloaded ({exceptions} exceptions)",
        path.display()
    );
    Ok(exceptions)
}

/// Turns ring-buffer records into JSON lines, a batch per write; process
/// records update the cache that names the senders of later requests.
struct EventWriter {
    names: NameCache,
    enricher: Enricher,
    /// The policy in force, for naming the rule that decided.
    policy: Policy,
    diagnoser: Diagnoser,
    /// `--metrics`: counts each record as it is written (a no-op without).
    metrics: Metrics,
}

/// The event loop's end of the output: JSON lines cut from one buffer and
/// pushed to the queue a batch at a time. Never waits for the output.
struct Output {
    queue: Arc<Queue>,
    buf: BytesMut,
    lines: Vec<Line>,
    /// stdout or the file, for messages.
    name: String,
}

impl Output {
    /// Appends `doc` as one JSON line to the batch.
    fn push(&mut self, doc: &impl serde::Serialize, request: bool) -> Result<()> {
        let mut w = (&mut self.buf).writer();
        serde_json::to_writer(&mut w, doc)?;
        self.buf.put_u8(b'\n');
        self.lines.push(Line {
            bytes: self.buf.split().freeze(),
            request,
        });
        Ok(())
    }

    /// Queues the batch; what does not fit is counted as lost.
    fn send(&mut self) {
        if self.lines.is_empty() {
            return;
        }
        let pushed = self.queue.push(self.lines.drain(..), SystemTime::now());
        if pushed.overflow_began {
            let why = match self.queue.fault() {
                Some(error) => format!("writing fails ({error})"),
                None => "it is not read fast enough".into(),
            };
            log::warn!(
                "the output queue ({} KiB) is full: {} is not keeping up, {why}; \
                 events are counted and dropped until it does, then reported in an \
                 events-lost record",
                self.queue.capacity() / 1024,
                self.name
            );
        }
    }

    /// Queues the batch even beyond the queue's size (monitor-stopped).
    fn send_always(&mut self) {
        for line in self.lines.drain(..) {
            self.queue.push_always(line);
        }
    }
}

impl EventWriter {
    /// Looks up every container whose cgroup exists and is not known yet.
    fn learn_containers(&mut self) {
        for (_, path) in self.enricher.cgroups.all() {
            self.enricher.learn_cgroup(&path);
        }
    }

    /// Handles up to [`BATCH`] records; returns how many it handled.
    fn drain(
        &mut self,
        ring: &mut RingBuf<MapData>,
        info: &RunInfo,
        out: &mut Output,
    ) -> Result<usize> {
        let clock = BootClock::now();
        self.metrics.sample_ring();
        let mut handled = 0;
        while handled < BATCH {
            let Some(record) = ring.next() else {
                break;
            };
            handled += 1;
            let decoded = event::decode(&record, &clock);
            drop(record);
            let request = match decoded {
                Some(Record::Request(request)) => request,
                Some(Record::Response(response)) => {
                    self.on_response(&response, info, out)?;
                    continue;
                }
                Some(Record::Exec(exec)) => {
                    // The OCI runtime exec'ing a container's process: the
                    // container is new (or being exec'ed into); look it up
                    // now, so exceptions on its image cover it soon.
                    let tgid = exec.tgid;
                    let before = self.enricher.processes.peek(tgid);
                    let by_runtime = before.is_some_and(crate::processes::is_oci_runtime);
                    log::debug!(
                        "exec {tgid} {} (was {:?})",
                        exec.filename,
                        before.map(|p| (&p.name, &p.executable))
                    );
                    self.enricher.forget(tgid);
                    let cgroup_id = exec.cgroup_id;
                    self.enricher.processes.on_exec(exec);
                    if by_runtime {
                        self.enricher.container_started(cgroup_id);
                    }
                    continue;
                }
                Some(Record::Fork { parent, child }) => {
                    self.enricher.processes.on_fork(parent, child);
                    continue;
                }
                Some(Record::Exit { tgid }) => {
                    self.enricher.forget(tgid);
                    self.enricher.processes.on_exit(tgid);
                    continue;
                }
                None => {
                    log::debug!("skipped an unknown record");
                    continue;
                }
            };
            let sender = self.enricher.sender(&request);
            let interface = self.names.name(request.ifindex);
            let exception = request
                .owner
                .as_ref()
                .and_then(|o| o.exempt_rule.checked_sub(1))
                .map(|i| i as usize);
            let dropped = request.kernel_verdict == Verdict::Dropped;
            let decision = info.mode.decide(
                &self.policy,
                request.class,
                request.reason,
                exception,
                dropped,
            );
            out.push(
                &traffic::request(&request, &sender, &decision, interface, info),
                true,
            )?;
            self.metrics.request(&request, &sender, &decision);
            for finding in self.diagnoser.on_request(&request, &sender, Instant::now()) {
                out.push(&traffic::finding(&finding, interface, info), false)?;
                self.metrics.finding(&finding);
            }
        }
        out.send();
        Ok(handled)
    }

    /// Handles everything queued, a batch per write.
    fn drain_all(
        &mut self,
        ring: &mut RingBuf<MapData>,
        info: &RunInfo,
        out: &mut Output,
    ) -> Result<()> {
        while self.drain(ring, info, out)? == BATCH {}
        Ok(())
    }

    /// A response: `imds-response` (joined to its request) and any findings.
    fn on_response(&mut self, response: &Response, info: &RunInfo, out: &mut Output) -> Result<()> {
        let (joined, findings) = self.diagnoser.on_response(response);
        let Some((request, sender)) = joined else {
            // Its request was not seen (or is long gone): nothing to join.
            return Ok(());
        };
        let interface = self.names.name(response.ifindex);
        out.push(
            &traffic::response(response, &request, &sender, interface, info),
            false,
        )?;
        for finding in findings {
            out.push(&traffic::finding(&finding, interface, info), false)?;
            self.metrics.finding(&finding);
        }
        Ok(())
    }
}
