//! EC2-like sandbox for testing imds-monitor without EC2.
//!
//! A [`Sandbox`] is a set of network namespaces wired like an EC2 instance:
//! an IMDS namespace serving a [mock IMDS](mock_imds) on 169.254.169.254 and
//! fd00:ec2::254, the EC2 host namespace (where the monitor runs and attaches
//! to `eth0`), and containers behind a `docker0` bridge one routed hop away.
//! Workloads run in cgroups named like systemd, Docker and Kubernetes name
//! them, below a per-sandbox root cgroup. Everything is removed on drop.
//!
//! ```no_run
//! use imds_sandbox::{ContainerSpec, Place, Sandbox};
//!
//! let sandbox = Sandbox::builder()
//!     .hop_limit(2)
//!     .containers(&[ContainerSpec::docker()])
//!     .build()?;
//! let out = sandbox.curl(&Place::Container(0), &["http://169.254.169.254/latest/meta-data/"])?;
//! assert_eq!(out.status, Some(200));
//! assert_eq!(sandbox.imds_log().len(), 1);
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Nothing here sends a packet from the machine's own network namespace: all
//! traffic starts in a sandbox namespace, and sandbox namespaces are linked
//! only to each other. `imds-client` refuses to run anywhere else.
//!
//! Requirements: root, a mounted cgroup2 file system, Linux 5.14+
//! (`cgroup.kill`), and `ip` (iproute2), `nft` and `curl` on `PATH`.

pub mod artifacts;
pub mod bpf_run;
pub mod cgroup;
pub mod client;
pub mod daemonset;
pub mod http;
pub mod mock_imds;
pub mod monitor;
pub mod netns;
pub mod runtimes;
mod sandbox;
mod spawn;
pub mod topology;
mod util;

pub use cgroup::{Cgroup, cgroup_of_pid, cgroup2_mount};
pub use client::imds_client_bin;
pub use mock_imds::{ImdsConfig, ImdsRequest, IpVersion, MockImds};
pub use monitor::{Monitor, PinsGuard, Stopped, action, imds_monitor_bin, pin_dir};
pub use netns::NetNs;
pub use sandbox::{
    CGROUP_PREFIX, ClientOutput, Container, ContainerSpec, CurlOutput, NETNS_PREFIX, PodQos,
    Runtime, Sandbox, SandboxBuilder, clean_stale,
};
pub use spawn::Place;
pub use util::{is_root, time_scale};
