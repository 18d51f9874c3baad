//! The sandbox: namespaces, cgroups and the mock IMDS, torn down on drop.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cgroup::{Cgroup, cgroup2_mount};
use crate::mock_imds::{ImdsConfig, ImdsRequest, MockImds};
use crate::netns::NetNs;
use crate::spawn::{Place, enter_in_child};
use crate::topology;
use crate::util::{is_root, random_hex, random_uuid};

/// Prefix of every sandbox's namespace names: `imdssb-<pid>-<n>-<rand>-<role>`.
pub const NETNS_PREFIX: &str = "imdssb-";
/// Prefix of every sandbox's root cgroup: `imds-sandbox-<pid>-<n>-<rand>`.
pub const CGROUP_PREFIX: &str = "imds-sandbox-";

/// Default `--max-time` given to curl when the caller sets none.
const CURL_MAX_TIME_SECS: &str = "10";
/// Marker that separates curl's body from the status it writes out.
const CURL_STATUS_MARKER: &str = "\n--imds-sandbox-status:";
/// How long teardown waits for killed workloads to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// How Kubernetes classes a pod; it decides the pod's cgroup parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PodQos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// Which container runtime (and so which cgroup naming) a container mimics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// Docker with the systemd cgroup driver: `system.slice/docker-<id>.scope`.
    Docker,
    /// containerd under a kubelet with the systemd driver:
    /// `kubepods.slice/[kubepods-<qos>.slice/]kubepods-[<qos>-]pod<uid>.slice/cri-containerd-<id>.scope`.
    Kubernetes(PodQos),
}

/// What container to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub runtime: Runtime,
}

impl ContainerSpec {
    pub fn docker() -> Self {
        Self {
            runtime: Runtime::Docker,
        }
    }

    /// A containerd container of a best-effort Kubernetes pod.
    pub fn kubernetes() -> Self {
        Self::kubernetes_with_qos(PodQos::BestEffort)
    }

    pub fn kubernetes_with_qos(qos: PodQos) -> Self {
        Self {
            runtime: Runtime::Kubernetes(qos),
        }
    }
}

/// A container of a running sandbox.
#[derive(Debug, Clone)]
pub struct Container {
    index: usize,
    runtime: Runtime,
    id: String,
    pod_uid: Option<String>,
    netns: NetNs,
    cgroup: Cgroup,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
}

impl Container {
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    /// Container id: 64 lower-case hex digits, as Docker and containerd use.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Pod uid (dashed UUID) for Kubernetes containers.
    pub fn pod_uid(&self) -> Option<&str> {
        self.pod_uid.as_deref()
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// The container's cgroup; [`Cgroup::path`] is absolute, [`Cgroup::rel`]
    /// is relative to the cgroup2 root as `/proc/<pid>/cgroup` shows it.
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }

    /// Name of the container's veth peer on the host (a `docker0` port).
    pub fn host_veth(&self) -> String {
        topology::host_veth(self.index)
    }
}

/// Cgroup of a container below the sandbox root, named as its runtime would.
fn container_cgroup(runtime: Runtime, id: &str, pod_uid: Option<&str>) -> String {
    match runtime {
        Runtime::Docker => format!("system.slice/docker-{id}.scope"),
        Runtime::Kubernetes(qos) => {
            // systemd unit names cannot hold '-' inside a component, so the
            // kubelet writes the pod uid with underscores.
            let uid = pod_uid.unwrap_or_default().replace('-', "_");
            let pod_slice = match qos {
                PodQos::Guaranteed => format!("kubepods-pod{uid}.slice"),
                PodQos::Burstable => {
                    format!("kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice")
                }
                PodQos::BestEffort => {
                    format!("kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice")
                }
            };
            format!("kubepods.slice/{pod_slice}/cri-containerd-{id}.scope")
        }
    }
}

/// What curl did, from [`Sandbox::curl`].
#[derive(Debug, Clone)]
pub struct CurlOutput {
    /// curl's exit code (28 = timed out); `None` if killed by a signal.
    pub exit_code: Option<i32>,
    /// HTTP status (of the last URL if there were several), `None` when no
    /// response arrived.
    pub status: Option<u16>,
    pub body: String,
    pub stderr: String,
}

impl CurlOutput {
    /// curl gave up after `--max-time` (exit code 28).
    pub fn timed_out(&self) -> bool {
        self.exit_code == Some(28)
    }
}

/// What `imds-client` did, from [`Sandbox::imds_client`].
#[derive(Debug, Clone)]
pub struct ClientOutput {
    /// 0 ok, 1 error, 2 timeout, 3 token refused (see `imds-client --help`).
    pub exit_code: Option<i32>,
    /// Status codes of the responses, in order.
    pub statuses: Vec<u16>,
    pub stderr: String,
}

impl ClientOutput {
    pub fn timed_out(&self) -> bool {
        self.exit_code == Some(crate::client::EXIT_TIMEOUT)
    }

    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Builds a [`Sandbox`].
#[derive(Debug, Clone, Default)]
pub struct SandboxBuilder {
    config: ImdsConfig,
    containers: Vec<ContainerSpec>,
}

impl SandboxBuilder {
    /// `HttpPutResponseHopLimit` (1..=64, default 1 as on EC2).
    pub fn hop_limit(mut self, hops: u8) -> Self {
        self.config.hop_limit = hops;
        self
    }

    /// `HttpTokens=required` when true (default optional).
    pub fn tokens_required(mut self, required: bool) -> Self {
        self.config.tokens_required = required;
        self
    }

    /// Caps the real lifetime of issued tokens (see [`ImdsConfig::token_ttl_max`]).
    pub fn token_ttl_max(mut self, max: Duration) -> Self {
        self.config.token_ttl_max = Some(max);
        self
    }

    /// Replaces the whole mock configuration.
    pub fn imds_config(mut self, config: ImdsConfig) -> Self {
        self.config = config;
        self
    }

    /// Adjusts the mock configuration in place.
    pub fn configure_imds(mut self, change: impl FnOnce(&mut ImdsConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// Adds containers (in order: container `i` is `specs[i]` after any added before).
    pub fn containers(mut self, specs: &[ContainerSpec]) -> Self {
        self.containers.extend_from_slice(specs);
        self
    }

    pub fn container(mut self, spec: ContainerSpec) -> Self {
        self.containers.push(spec);
        self
    }

    /// Creates everything. Whatever was created is removed again if a step fails.
    ///
    /// # Panics
    /// When not running as root: namespaces, cgroups and nftables need it.
    pub fn build(self) -> Result<Sandbox> {
        assert!(
            is_root(),
            "imds-sandbox needs root (network namespaces, cgroups, nftables); run the tests as root"
        );
        if !(1..=64).contains(&self.config.hop_limit) {
            bail!("hop limit {} is outside 1..=64", self.config.hop_limit);
        }
        if self.containers.len() > topology::MAX_CONTAINERS {
            bail!(
                "at most {} containers per sandbox",
                topology::MAX_CONTAINERS
            );
        }
        clean_stale_once();

        let id = unique_id();
        // Everything created is recorded in `res` first, so an early return
        // drops it and tears the partial sandbox down.
        let mut res = Resources::default();
        let root_cgroup = Cgroup::create(&format!("{CGROUP_PREFIX}{id}"))?;
        res.cgroup = Some(root_cgroup.clone());
        let host = res.add_netns(&format!("{NETNS_PREFIX}{id}-host"))?;
        let imds_ns = res.add_netns(&format!("{NETNS_PREFIX}{id}-imds"))?;

        let mut containers = Vec::with_capacity(self.containers.len());
        for (index, spec) in self.containers.iter().enumerate() {
            let netns = res.add_netns(&format!("{NETNS_PREFIX}{id}-c{index}"))?;
            let container_id = random_hex(32);
            let pod_uid = matches!(spec.runtime, Runtime::Kubernetes(_)).then(random_uuid);
            let rel = container_cgroup(spec.runtime, &container_id, pod_uid.as_deref());
            let cgroup = root_cgroup.child(&rel)?;
            std::fs::create_dir_all(cgroup.path())
                .with_context(|| format!("cannot create cgroup {}", cgroup.path().display()))?;
            containers.push(Container {
                index,
                runtime: spec.runtime,
                id: container_id,
                pod_uid,
                netns,
                cgroup,
                ipv4: topology::container_v4(index),
                ipv6: topology::container_v6(index),
            });
        }

        let container_ns: Vec<&NetNs> = containers.iter().map(|c| &c.netns).collect();
        topology::configure(&host, &imds_ns, &container_ns)?;
        res.mock = Some(MockImds::start(
            &imds_ns,
            &topology::imds_endpoints(),
            &topology::other_endpoints(),
            self.config,
        )?);

        Ok(Sandbox {
            id,
            host,
            imds_ns,
            containers,
            root_cgroup,
            res,
        })
    }
}

/// An EC2-like host with containers and a mock IMDS, in network namespaces
/// and cgroups of its own. Dropping it kills its workloads and removes
/// everything, also when a test panics.
#[derive(Debug)]
pub struct Sandbox {
    id: String,
    host: NetNs,
    imds_ns: NetNs,
    containers: Vec<Container>,
    root_cgroup: Cgroup,
    res: Resources,
}

impl Sandbox {
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// Unique id of this sandbox (`<pid>-<counter>-<random>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The EC2 host namespace, where the monitor runs.
    pub fn host_netns(&self) -> &NetNs {
        &self.host
    }

    /// `/run/netns/<host namespace>`: open it and `setns` to enter the host.
    pub fn host_netns_path(&self) -> &Path {
        self.host.path()
    }

    /// The namespace the mock IMDS serves from.
    pub fn imds_netns(&self) -> &NetNs {
        &self.imds_ns
    }

    /// The host's uplink towards IMDS, where the monitor attaches TC.
    pub fn host_ifname(&self) -> &str {
        topology::HOST_IFNAME
    }

    /// The Docker-like bridge in the host namespace.
    pub fn bridge_ifname(&self) -> &str {
        topology::BRIDGE_IFNAME
    }

    pub fn containers(&self) -> &[Container] {
        &self.containers
    }

    /// Container `index`.
    ///
    /// # Panics
    /// If there is no such container.
    pub fn container(&self, index: usize) -> &Container {
        self.containers.get(index).unwrap_or_else(|| {
            panic!(
                "sandbox has {} containers, no container {index}",
                self.containers.len()
            )
        })
    }

    /// The sandbox's root cgroup; every workload's cgroup is below it.
    pub fn root_cgroup(&self) -> &Cgroup {
        &self.root_cgroup
    }

    /// Names of all network namespaces of this sandbox.
    pub fn netns_names(&self) -> Vec<String> {
        self.res
            .netns
            .iter()
            .map(|ns| ns.name().to_owned())
            .collect()
    }

    /// The running mock IMDS (log, configuration changes).
    pub fn imds(&self) -> &MockImds {
        self.res
            .mock
            .as_ref()
            .expect("the mock IMDS runs for the sandbox's whole life")
    }

    /// Every request the mock IMDS received so far.
    pub fn imds_log(&self) -> Vec<ImdsRequest> {
        self.imds().log()
    }

    /// The namespace of a place.
    pub fn netns(&self, place: &Place) -> Result<&NetNs> {
        match place {
            Place::HostRoot | Place::Host(_) => Ok(&self.host),
            Place::Container(i) => Ok(&self.get_container(*i)?.netns),
        }
    }

    /// The cgroup of a place; host cgroups are created on first use.
    pub fn cgroup(&self, place: &Place) -> Result<Cgroup> {
        match place {
            Place::HostRoot => Ok(self.root_cgroup.clone()),
            Place::Host(rel) => {
                let cgroup = self.root_cgroup.child(rel)?;
                std::fs::create_dir_all(cgroup.path())
                    .with_context(|| format!("cannot create cgroup {}", cgroup.path().display()))?;
                Ok(cgroup)
            }
            Place::Container(i) => Ok(self.get_container(*i)?.cgroup.clone()),
        }
    }

    fn get_container(&self, index: usize) -> Result<&Container> {
        self.containers.get(index).with_context(|| {
            format!(
                "sandbox has {} containers, no container {index}",
                self.containers.len()
            )
        })
    }

    /// A command whose child joins the place's cgroup and network namespace
    /// before exec. The caller adds arguments, stdio and spawns.
    pub fn command(&self, place: &Place, program: impl AsRef<OsStr>) -> Result<Command> {
        let procs = self.cgroup(place)?.open_procs()?;
        let netns = self.netns(place)?.open()?;
        let mut cmd = Command::new(program);
        enter_in_child(&mut cmd, Some(procs), netns);
        Ok(cmd)
    }

    /// [`Sandbox::command`] for a host workload in cgroup `cgroup_rel`
    /// (relative to the sandbox root, e.g. `system.slice/app.service`).
    pub fn host_command(&self, cgroup_rel: &str, program: impl AsRef<OsStr>) -> Result<Command> {
        self.command(&Place::Host(cgroup_rel.to_owned()), program)
    }

    /// [`Sandbox::command`] for a workload in container `index`.
    pub fn container_command(&self, index: usize, program: impl AsRef<OsStr>) -> Result<Command> {
        self.command(&Place::Container(index), program)
    }

    /// Runs `f` on a thread inside the host namespace (in the test process's
    /// cgroup). Sockets it opens belong to the host namespace.
    pub fn run_in_host_netns<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        self.host.run(f)
    }

    /// Runs curl at `place` and waits for it. Adds `-sS -g --noproxy '*'`,
    /// a `--max-time` of 10 s unless `args` has one, and a `--write-out`
    /// that yields [`CurlOutput::status`] (so `args` must not use `-w`).
    pub fn curl(&self, place: &Place, args: &[&str]) -> Result<CurlOutput> {
        let mut cmd = self.command(place, "curl")?;
        cmd.args(["-sS", "-g", "--noproxy", "*"]);
        if !args.iter().any(|a| *a == "--max-time" || *a == "-m") {
            cmd.args(["--max-time", CURL_MAX_TIME_SECS]);
        }
        cmd.args(args)
            .arg("--write-out")
            .arg(format!("{CURL_STATUS_MARKER}%{{http_code}}"));
        let output = run_workload(&mut cmd, "curl")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let (body, status) = stdout
            .rsplit_once(CURL_STATUS_MARKER)
            .unwrap_or((&stdout, "000"));
        Ok(CurlOutput {
            exit_code: output.status.code(),
            status: status.trim().parse().ok().filter(|s| *s != 0),
            body: body.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs the `imds-client` binary (see [`crate::client::imds_client_bin`])
    /// at `place` and waits for it.
    pub fn imds_client(&self, place: &Place, args: &[&str]) -> Result<ClientOutput> {
        let bin = crate::client::imds_client_bin()?;
        let mut cmd = self.command(place, &bin)?;
        cmd.args(args);
        let output = run_workload(&mut cmd, "imds-client")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let statuses = stdout
            .lines()
            .map(|l| {
                l.trim()
                    .parse()
                    .with_context(|| format!("bad imds-client line {l:?}"))
            })
            .collect::<Result<_>>()?;
        Ok(ClientOutput {
            exit_code: output.status.code(),
            statuses,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Makes the IMDS namespace drop the first data segment of the next TCP
    /// connection to port 80, exactly once, so the client retransmits it: the
    /// host's egress then sees that segment twice. Re-arming resets the count.
    pub fn drop_next_data_segment(&self) -> Result<()> {
        topology::arm_segment_drop(&self.imds_ns)
    }

    /// Segments dropped since [`Sandbox::drop_next_data_segment`] (0 or 1).
    pub fn dropped_segments(&self) -> Result<u64> {
        topology::dropped_segments(&self.imds_ns)
    }
}

fn run_workload(cmd: &mut Command, what: &str) -> Result<Output> {
    cmd.stdin(std::process::Stdio::null());
    cmd.output()
        .with_context(|| format!("cannot run {what} in the sandbox"))
}

/// Everything a sandbox created; dropping it removes all of it.
#[derive(Debug, Default)]
struct Resources {
    mock: Option<MockImds>,
    cgroup: Option<Cgroup>,
    netns: Vec<NetNs>,
}

impl Resources {
    fn add_netns(&mut self, name: &str) -> Result<NetNs> {
        let ns = NetNs::create(name)?;
        self.netns.push(ns.clone());
        Ok(ns)
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        // Workloads first: they may hold sockets to the mock.
        if let Some(cgroup) = self.cgroup.take()
            && let Err(e) = cgroup.destroy(KILL_TIMEOUT)
        {
            eprintln!("imds-sandbox: teardown: {e:#}");
        }
        if let Some(mut mock) = self.mock.take() {
            mock.stop();
        }
        for ns in self.netns.drain(..).rev() {
            if let Err(e) = ns.delete() {
                eprintln!("imds-sandbox: teardown: {e:#}");
            }
        }
    }
}

fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{}-{n}-{}", std::process::id(), random_hex(2))
}

/// The pid embedded in a sandbox name after `prefix`, if the name is one.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

fn clean_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = clean_stale() {
            eprintln!("imds-sandbox: cleaning stale sandboxes: {e:#}");
        }
    });
}

/// Removes the namespaces and cgroups of sandboxes whose process is gone
/// (killed before its drop guards ran). Returns how many items were removed.
/// Called once per process by [`SandboxBuilder::build`].
pub fn clean_stale() -> Result<usize> {
    let dead = |pid: u32| !Path::new(&format!("/proc/{pid}")).exists();
    let mut removed = 0;
    let cgroup_root = cgroup2_mount()?;
    for entry in std::fs::read_dir(cgroup_root)
        .with_context(|| format!("cannot list {}", cgroup_root.display()))?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if owner_pid(&name, CGROUP_PREFIX).is_some_and(dead) {
            Cgroup::from_rel(&name)?.destroy(KILL_TIMEOUT)?;
            removed += 1;
        }
    }
    for name in NetNs::list()? {
        if owner_pid(&name, NETNS_PREFIX).is_some_and(dead) {
            NetNs::from_name(&name).delete()?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_cgroups_follow_runtime_naming() {
        let id = "ab".repeat(32);
        let uid = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
        assert_eq!(
            container_cgroup(Runtime::Docker, &id, None),
            format!("system.slice/docker-{id}.scope")
        );
        assert_eq!(
            container_cgroup(Runtime::Kubernetes(PodQos::BestEffort), &id, Some(uid)),
            format!(
                "kubepods.slice/kubepods-besteffort.slice/\
                 kubepods-besteffort-pod0f1e2d3c_4b5a_4978_8695_a4b3c2d1e0f9.slice/\
                 cri-containerd-{id}.scope"
            )
        );
        assert_eq!(
            container_cgroup(Runtime::Kubernetes(PodQos::Guaranteed), &id, Some(uid)),
            format!(
                "kubepods.slice/kubepods-pod0f1e2d3c_4b5a_4978_8695_a4b3c2d1e0f9.slice/\
                 cri-containerd-{id}.scope"
            )
        );
    }

    #[test]
    fn owner_pid_parses_sandbox_names() {
        assert_eq!(owner_pid("imdssb-123-0-ab12-host", NETNS_PREFIX), Some(123));
        assert_eq!(owner_pid("imds-sandbox-9-4-ffff", CGROUP_PREFIX), Some(9));
        assert_eq!(owner_pid("imdssb-x-host", NETNS_PREFIX), None);
        assert_eq!(owner_pid("other", NETNS_PREFIX), None);
    }

    #[test]
    fn unique_ids_differ() {
        assert_ne!(unique_id(), unique_id());
    }
}
