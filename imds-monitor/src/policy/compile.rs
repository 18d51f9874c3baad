//! A policy in the kernel's terms: the action per class, and the exceptions
//! as map keys and per-kind bits (`config::ExemptBits`, `config::needs`),
//! including the cgroups and processes that exist when it is loaded. The
//! kernel then decides at connect() and at packet time, with no round trip
//! to the daemon (see imds-monitor-ebpf/src/exempt.rs).

use std::{collections::HashMap, fs, path::Path};

use anyhow::{Result, bail};
use imds_monitor_common::{
    class::RequestClass,
    config::{
        EXEMPT_CONTAINER_ID_CAP, EXEMPT_LEAF_CAP, EXEMPT_PATH_CAP, ExemptBits, MAX_EXCEPTIONS,
        action, needs,
    },
};

use super::{
    Mode,
    decide::WorkloadFacts,
    model::{Action, Matcher, Policy},
};
use crate::{cgroups, runtime::ContainerMeta, workload::Workload};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Kernel action per class: DROP only in enforce mode.
    pub actions: [u8; 8],
    pub needs: [u64; needs::COUNT as usize],
    /// Existing cgroups the exceptions cover, by id.
    pub cgroups: HashMap<u64, ExemptBits>,
    /// Keys the kernel matches new cgroups and execs against.
    pub paths: HashMap<[u8; EXEMPT_PATH_CAP], ExemptBits>,
    pub leaves: HashMap<[u8; EXEMPT_LEAF_CAP], ExemptBits>,
    pub containers: HashMap<[u8; EXEMPT_CONTAINER_ID_CAP], ExemptBits>,
    pub execs: HashMap<[u8; EXEMPT_PATH_CAP], u64>,
    /// Running processes the executable exceptions cover.
    pub processes: HashMap<u32, u64>,
}

fn key<const N: usize>(s: &str, what: &str) -> Result<[u8; N]> {
    let bytes = s.as_bytes();
    if bytes.len() >= N {
        bail!(
            "{what} `{s}` is longer than the {} bytes the kernel matches",
            N - 1
        );
    }
    let mut out = [0u8; N];
    out[..bytes.len()].copy_from_slice(bytes);
    Ok(out)
}

/// The same program under the names a path may take on merged-/usr systems.
fn executable_aliases(exe: &str) -> Vec<String> {
    let mut names = vec![exe.to_owned()];
    if let Ok(real) = fs::canonicalize(exe) {
        names.push(real.to_string_lossy().into_owned());
    }
    for (a, b) in [("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/")] {
        for name in names.clone() {
            if let Some(rest) = name.strip_prefix(a) {
                names.push(format!("{b}{rest}"));
            } else if let Some(rest) = name.strip_prefix(b) {
                names.push(format!("{a}{rest}"));
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

pub fn compile(policy: &Policy, mode: Mode, cgroup_root: &Path) -> Result<Compiled> {
    if policy.exceptions.len() > MAX_EXCEPTIONS {
        bail!("at most {MAX_EXCEPTIONS} exceptions can be enforced in the kernel");
    }
    let mut c = Compiled::default();
    for class in RequestClass::ALL {
        let drops = mode == Mode::Enforce && policy.action(class) == Action::Drop;
        c.actions[class as usize] = if drops { action::DROP } else { action::PASS };
    }
    // The hierarchy and /proc are read only for the kinds of matcher in use:
    // with no exceptions (the default) a start reads neither.
    let uses = |kind: fn(&Matcher) -> bool| {
        policy
            .exceptions
            .iter()
            .any(|e| e.matchers.iter().any(kind))
    };
    let cgroups = if uses(|m| !matches!(m, Matcher::Executable(_))) {
        cgroups::walk(cgroup_root)
    } else {
        Vec::new()
    };
    let workloads: Vec<(u64, &str, Workload)> = cgroups
        .iter()
        .map(|(id, path)| (*id, path.as_str(), Workload::from_cgroup_path(path)))
        .collect();
    // What each existing cgroup says about its workload, in the terms
    // exceptions match (the same Matcher::matches as everywhere).
    let cgroup_facts: Vec<(u64, WorkloadFacts<'_>)> = workloads
        .iter()
        .map(|(id, path, w)| {
            (
                *id,
                WorkloadFacts {
                    cgroup_path: Some(path),
                    container_id: w.container_id.as_deref(),
                    systemd_unit: w.systemd_unit.as_deref(),
                    executable: None,
                    container: None,
                },
            )
        })
        .collect();
    let executables: Vec<(u32, String)> = if !uses(|m| matches!(m, Matcher::Executable(_))) {
        Vec::new()
    } else {
        procfs::process::all_processes()
            .map(|all| {
                all.flatten()
                    .filter_map(|p| {
                        let pid = u32::try_from(p.pid()).ok()?;
                        let exe = p.exe().ok()?;
                        Some((pid, exe.to_string_lossy().into_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    for (i, exception) in policy.exceptions.iter().enumerate() {
        let bit = 1u64 << i;
        c.needs[needs::DEFINED as usize] |= bit;
        // Matchers on what the runtime tells (image, Kubernetes, ECS) are
        // the container kind's: the daemon sets the bit on a container's
        // cgroup once it has resolved it and all of them (and a
        // container_id beside them) match (`runtime_bits`).
        if exception.matchers.iter().any(Matcher::is_runtime) {
            c.needs[needs::CONTAINER_ID as usize] |= bit;
        }
        for matcher in &exception.matchers {
            if matcher.is_runtime()
                || (matches!(matcher, Matcher::ContainerId(_))
                    && exception.matchers.iter().any(Matcher::is_runtime))
            {
                continue;
            }
            match matcher {
                Matcher::CgroupPrefix(prefix) => {
                    c.needs[needs::CGROUP_PREFIX as usize] |= bit;
                    let k = key::<EXEMPT_PATH_CAP>(prefix, "cgroup_prefix")?;
                    c.paths.entry(k).or_default().cgroup_prefix |= bit;
                    for (id, facts) in &cgroup_facts {
                        if matcher.matches(facts) {
                            c.cgroups.entry(*id).or_default().cgroup_prefix |= bit;
                        }
                    }
                }
                Matcher::ContainerId(id_prefix) => {
                    c.needs[needs::CONTAINER_ID as usize] |= bit;
                    let short: String = id_prefix
                        .to_ascii_lowercase()
                        .chars()
                        .take(EXEMPT_CONTAINER_ID_CAP)
                        .collect();
                    let mut k = [0u8; EXEMPT_CONTAINER_ID_CAP];
                    k[..short.len()].copy_from_slice(short.as_bytes());
                    c.containers.entry(k).or_default().container_id |= bit;
                    for (id, facts) in &cgroup_facts {
                        if matcher.matches(facts) {
                            c.cgroups.entry(*id).or_default().container_id |= bit;
                        }
                    }
                }
                Matcher::SystemdUnit(unit) => {
                    c.needs[needs::SYSTEMD_UNIT as usize] |= bit;
                    let k = key::<EXEMPT_LEAF_CAP>(unit, "systemd_unit")?;
                    c.leaves.entry(k).or_default().systemd_unit |= bit;
                    for (id, facts) in &cgroup_facts {
                        if matcher.matches(facts) {
                            c.cgroups.entry(*id).or_default().systemd_unit |= bit;
                        }
                    }
                }
                Matcher::Image(_)
                | Matcher::K8sNamespace(_)
                | Matcher::K8sOwner(_)
                | Matcher::EcsTaskFamily(_) => {}
                Matcher::Executable(exe) => {
                    c.needs[needs::EXECUTABLE as usize] |= bit;
                    let names = executable_aliases(exe);
                    for name in &names {
                        *c.execs
                            .entry(key::<EXEMPT_PATH_CAP>(name, "executable")?)
                            .or_default() |= bit;
                    }
                    for (pid, running) in &executables {
                        let facts = WorkloadFacts {
                            executable: Some(running),
                            ..WorkloadFacts::default()
                        };
                        if names.iter().any(|n| n == running) || matcher.matches(&facts) {
                            *c.processes.entry(*pid).or_default() |= bit;
                        }
                    }
                }
            }
        }
    }
    Ok(c)
}

/// The exceptions (bits) a resolved container satisfies through its runtime
/// matchers: all of the exception's container-kind matchers (the runtime
/// ones and a `container_id`) match. Written on the container's cgroups as
/// `container_id` bits, beside what `compile` wrote.
pub fn runtime_bits(policy: &Policy, container_id: &str, meta: &ContainerMeta) -> u64 {
    let facts = WorkloadFacts {
        container_id: Some(container_id),
        container: Some(meta),
        ..WorkloadFacts::default()
    };
    let mut bits = 0;
    for (i, exception) in policy.exceptions.iter().enumerate().take(MAX_EXCEPTIONS) {
        if !exception.matchers.iter().any(Matcher::is_runtime) {
            continue;
        }
        let all = exception
            .matchers
            .iter()
            .filter(|m| m.is_runtime() || matches!(m, Matcher::ContainerId(_)))
            .all(|m| m.matches(&facts));
        if all {
            bits |= 1 << i;
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse::parse;

    #[test]
    fn exceptions_become_keys_bits_and_needs() {
        let policy = parse(
            r#"
[actions]
v1_get = "drop"

[[exception]]
name = "backup"
cgroup_prefix = "/system.slice/backup.service"

[[exception]]
name = "vendor"
container_id = "4F9C1A2B3C4D5E"
executable = "/usr/bin/true"
"#,
        )
        .unwrap();
        let root = std::env::temp_dir().join(format!("imds-compile-{}", std::process::id()));
        let backup = root.join("system.slice/backup.service/sub");
        fs::create_dir_all(&backup).unwrap();
        let c = compile(&policy, Mode::Enforce, &root).unwrap();
        assert_eq!(c.actions[RequestClass::V1Get as usize], action::DROP);
        assert_eq!(c.actions[RequestClass::V2Get as usize], action::PASS);
        assert_eq!(c.needs[needs::DEFINED as usize], 0b11);
        assert_eq!(c.needs[needs::CGROUP_PREFIX as usize], 0b01);
        assert_eq!(c.needs[needs::CONTAINER_ID as usize], 0b10);
        assert_eq!(c.needs[needs::EXECUTABLE as usize], 0b10);
        // The unit's cgroup and its sub-cgroup exist: both are covered.
        let covered = c
            .cgroups
            .values()
            .filter(|b| b.cgroup_prefix == 0b01)
            .count();
        assert_eq!(covered, 2);
        assert!(
            c.paths
                .contains_key(&key::<EXEMPT_PATH_CAP>("/system.slice/backup.service", "").unwrap())
        );
        assert!(
            c.containers.contains_key(b"4f9c1a2b3c4d"),
            "lower case, 12 digits"
        );
        assert!(
            c.execs
                .contains_key(&key::<EXEMPT_PATH_CAP>("/bin/true", "").unwrap()),
            "merged /usr alias"
        );
        // Alert mode drops nothing in the kernel: it only marks would_drop.
        let alert = compile(&policy, Mode::Alert, &root).unwrap();
        assert!(alert.actions.iter().all(|a| *a == action::PASS));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn runtime_matchers_are_the_container_kind_set_by_the_daemon() {
        use crate::runtime::{Image, Kubernetes};
        let policy = parse(
            r#"
[[exception]]
name = "payments"
k8s_namespace = "shop"
k8s_owner = "Deployment/payments"

[[exception]]
name = "api-image"
image = "docker.io/library/payments-api:1.4"
container_id = "4f9c1a2b3c4d"

[[exception]]
name = "by-id"
container_id = "4f9c1a2b3c4d"
"#,
        )
        .unwrap();
        let root = std::env::temp_dir().join(format!("imds-compile-rt-{}", std::process::id()));
        fs::create_dir_all(&root).unwrap();
        let c = compile(&policy, Mode::Enforce, &root).unwrap();
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(c.needs[needs::CONTAINER_ID as usize], 0b111);
        // Only the plain container_id exception is matched by the kernel's
        // mkdir hook; the one beside an image waits for the daemon.
        assert_eq!(c.containers[b"4f9c1a2b3c4d"].container_id, 0b100);
        let meta = ContainerMeta {
            image: Some(Image::parse("payments-api:1.4")),
            kubernetes: Some(Kubernetes {
                namespace: "shop".into(),
                pod_name: "payments-7d9f8b6c5-x2x4q".into(),
                owner_kind: "Deployment".into(),
                owner_name: "payments".into(),
                ..Kubernetes::default()
            }),
            ..ContainerMeta::default()
        };
        let id = "4f9c1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";
        assert_eq!(runtime_bits(&policy, id, &meta), 0b011);
        let other = "aaaa1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";
        assert_eq!(runtime_bits(&policy, other, &meta), 0b001);
        let redeployed = ContainerMeta {
            image: Some(Image::parse("payments-api:1.5")),
            ..meta.clone()
        };
        assert_eq!(runtime_bits(&policy, id, &redeployed), 0b001);
    }
}
