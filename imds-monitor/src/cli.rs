//! Command line: every flag a user can meet, with examples in `--help`.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{endpoints, policy::Mode};

const EXAMPLES: &str = "\
Examples:
  # Watch IMDS traffic and print one JSON line per request
  sudo imds-monitor run

  # Alert on IMDSv1 and write to a rotating file for the SIEM
  sudo imds-monitor run --mode alert --output /var/log/imds-monitor/events.json

  # Also watch the ECS task credentials endpoint, on a chosen interface
  sudo imds-monitor run --iface ens5 --endpoint 169.254.169.254 --endpoint 169.254.170.2:80

  # Why was a request dropped? The kernel's own debug lines on stderr
  sudo imds-monitor run --mode enforce --kernel-log debug 2>&1 >/dev/null | grep kernel:";

/// The migration workflow, for the top-level help.
const WORKFLOW: &str = "\
Workflow:
  sudo imds-monitor check                 # can this host run it? how to fix what is missing
  sudo imds-monitor run --mode alert --output /var/log/imds-monitor/events.json
  imds-monitor report /var/log/imds-monitor/events.json*   # who still uses IMDSv1; safe to require v2?

Events and fields: docs/events.md";

#[derive(Debug, Parser)]
#[command(
    name = "imds-monitor",
    version,
    about = "Finds, per process and container, what still uses IMDSv1 on an EC2 host",
    after_help = WORKFLOW
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once at start")]
pub enum Command {
    /// Attach to the host's interfaces and stream one JSON line per IMDS request
    #[command(after_help = EXAMPLES)]
    Run(RunArgs),
    /// Read the events (NDJSON, rotated or gzipped) and say which workloads
    /// still use IMDSv1 and whether HttpTokens=required is safe
    Report(crate::report::ReportArgs),
    /// Check that this host can run the monitor, and say how to fix what is missing
    Check(crate::check::CheckArgs),
    /// Remove enforcement left in place by `run --mode enforce --persist` (or a killed daemon)
    Detach(DetachArgs),
    /// Work with enforce-mode policy files (docs/policy.md)
    Policy(crate::policy::PolicyArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Read options from a TOML file (the packages install
    /// /etc/imds-monitor/config.toml): each key a long option below, e.g.
    /// `mode = "alert"`, `output = "/var/log/imds-monitor/events.json"`,
    /// `iface = ["ens5"]`. Options on the command line win
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Interface to watch (repeatable). Default: the interfaces that route to
    /// the endpoints; forwarded container traffic leaves through them too.
    #[arg(long = "iface", value_name = "NAME")]
    pub ifaces: Vec<String>,

    /// monitor: report every request; alert: also mark IMDSv1 requests as
    /// alerts (and `imds.would_drop`); enforce: drop IMDSv1 requests in the
    /// kernel and reset the client's connection
    #[arg(long, value_enum, default_value_t = Mode::Monitor)]
    pub mode: Mode,

    /// Policy file (docs/policy.md): an action per class and exceptions. With
    /// --mode enforce it drops what it says; with --mode alert it marks what
    /// enforce would drop (imds.would_drop). Re-read on SIGHUP; a bad file keeps
    /// the old policy. Without it, enforce drops every IMDSv1 request
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// Enforce mode: on SIGINT/SIGTERM leave the programs attached (pinned in
    /// bpffs), so IMDSv1 stays blocked with no daemon; `imds-monitor detach`
    /// removes it. Enforcement always survives SIGKILL; a restarted daemon
    /// adopts it with no gap
    #[arg(long)]
    pub persist: bool,

    /// bpffs directory for enforce mode's pinned maps and links
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR, hide = true)]
    pub pin_dir: PathBuf,

    /// Where to write events: `-` for stdout, or a file (appended, rotated by size,
    /// reopened on SIGHUP for logrotate)
    #[arg(long, short, value_name = "-|PATH", default_value = "-")]
    pub output: String,

    /// Endpoint to watch, `ADDR`, `ADDR:PORT` or `[V6ADDR]:PORT` (repeatable; port 80
    /// if omitted). Default: 169.254.169.254:80 and [fd00:ec2::254]:80
    #[arg(long = "endpoint", value_name = "ADDR[:PORT]", value_parser = endpoints::parse)]
    pub endpoints: Vec<SocketAddr>,

    /// Attribute processes in this cgroup v2 subtree only (a directory under the
    /// cgroup2 mount, absolute or relative to it, e.g. /system.slice).
    /// Default: the whole hierarchy
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// How often to write `imds-summary` (per-workload counts since the last one)
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_interval)]
    pub summary_interval: std::time::Duration,

    /// Rotate the output file when it grows past this many MiB
    #[arg(long, value_name = "MIB", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub rotate_mib: u64,

    /// Bytes of events held in memory while the output is slow or failing (a
    /// stalled reader of stdout, a full disk); beyond it events are counted
    /// and reported in an `events-lost` record once writing works again
    #[arg(long, value_name = "KIB", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u64).range(4..=4 * 1024 * 1024))]
    pub output_queue_kib: u64,

    /// Connections to IMDS the classifier follows at once (its flow table).
    /// While it is full a new connection is not followed, and so not let
    /// through in enforce mode (reported as incomplete, flow_table_full);
    /// entries idle for a minute are removed. The default suits any host
    /// IMDS's own rate limit allows
    #[arg(long, value_name = "N", default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub flow_table_entries: u32,

    /// Rotated files to keep (gzip-compressed, except the newest)
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub rotate_keep: u64,

    /// Docker Engine API socket, for container names, images and ECS labels
    #[arg(long, value_name = "PATH", default_value = "/var/run/docker.sock")]
    pub docker_socket: PathBuf,

    /// containerd socket (gRPC), for Kubernetes (namespace k8s.io) containers
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd_socket: PathBuf,

    /// CRI-O socket, for Kubernetes containers run by CRI-O
    #[arg(long, value_name = "PATH", default_value = "/var/run/crio/crio.sock")]
    pub crio_socket: PathBuf,

    /// Do not ask the container runtimes for metadata (events then carry
    /// what the cgroup path says: container and pod ids)
    #[arg(long)]
    pub no_runtime_metadata: bool,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464):
    /// requests by class, verdict and workload kind, diagnostics, events lost,
    /// buffer use, attached interfaces, policy reloads (README, "Metrics")
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_metrics_addr)]
    pub metrics: Option<SocketAddr>,

    /// With --metrics: per-workload series for at most this many of the
    /// busiest workloads, the rest in workload="other"; 0: none
    #[arg(long, value_name = "N", default_value_t = crate::metrics::DEFAULT_TOP_WORKLOADS, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub metrics_top_workloads: u16,

    /// Also attach an empty TC program to the same interfaces, first, as the
    /// benchmark's baseline (cargo xtask bench)
    #[arg(long, hide = true)]
    pub baseline_passthrough: bool,

    /// How to attach to TC: tcx (kernel >= 6.6), netlink (clsact), or auto
    #[arg(long, value_enum, default_value_t = crate::kernel::AttachMode::Auto, hide = true)]
    pub attach: crate::kernel::AttachMode,

    /// Debug lines of the kernel programs on stderr (never stdout): each
    /// request's class, verdict and reason code with its port, interface
    /// and pid, a full flow table, connections not followed, resets sent.
    /// No path, header or token. `off` costs the verifier nothing
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = crate::kernel_log::KernelLog::Off)]
    pub kernel_log: crate::kernel_log::KernelLog,
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 30s, 5m, 1h)"))?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!("`{s}` is shorter than 1s"));
    }
    Ok(d)
}

fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("`{s}` is not an address and port to listen on (e.g. 127.0.0.1:9464 or [::1]:9464)")
    })
}

/// Where enforce mode pins its state.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/imds-monitor";

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// bpffs directory of the pinned maps and links
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR, hide = true)]
    pub pin_dir: PathBuf,
}

impl RunArgs {
    pub fn output_path(&self) -> Option<PathBuf> {
        (self.output != "-").then(|| PathBuf::from(&self.output))
    }
}
