//! Addresses and wiring of the EC2-like topology.
//!
//! ```text
//!  container i netns            EC2 host netns                     IMDS netns
//!  eth0 198.51.100.(2+i) ── veth<i> ─ docker0 198.51.100.1
//!       2001:db8:2::(2+i)             2001:db8:2::1
//!                                    eth0 198.18.0.10  ──────────── eth0 198.18.0.1
//!                                         2001:db8:1::10                 2001:db8:1::1
//!                                    (forwarding, masquerade)            169.254.169.254/32
//!                                                                        fd00:ec2::254/128 ...
//! ```
//!
//! A container's packets cross one routed hop (the host), so a token PUT
//! response sent with IP TTL / hop limit 1 dies on the host, exactly as on EC2.
//! Nothing here touches the machine's own network namespace.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result};

use crate::netns::NetNs;

/// IPv4 IMDS endpoint.
pub const IMDS_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// IPv6 IMDS endpoint (Nitro).
pub const IMDS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
/// ECS task credentials endpoint (answers 404 here).
pub const ECS_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 2);
/// EKS Pod Identity agent endpoints (answer 404 here).
pub const EKS_POD_IDENTITY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 23);
pub const EKS_POD_IDENTITY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23);

/// The IMDS namespace's side of the host link (the host's gateway).
pub const IMDS_GW_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const IMDS_GW_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The EC2 host's primary address (on its `eth0`).
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
/// The Docker bridge's addresses (containers' gateway).
pub const BRIDGE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const BRIDGE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);

/// Interface names, the same in every sandbox (each lives in its own namespace).
pub const HOST_IFNAME: &str = "eth0";
pub const BRIDGE_IFNAME: &str = "docker0";
pub const CONTAINER_IFNAME: &str = "eth0";

/// Most containers one sandbox can hold (the bridge's /24 minus gateway etc.).
pub const MAX_CONTAINERS: usize = 200;

/// Address of container `index` on the bridge.
pub fn container_v4(index: usize) -> Ipv4Addr {
    let host = u8::try_from(index + 2).expect("container index fits the /24");
    Ipv4Addr::new(198, 51, 100, host)
}

pub fn container_v6(index: usize) -> Ipv6Addr {
    let host = u16::try_from(index + 2).expect("container index fits the /64");
    Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, host)
}

/// The host-side name of container `index`'s veth.
pub fn host_veth(index: usize) -> String {
    format!("veth{index}")
}

/// Endpoints where the mock serves IMDS.
pub fn imds_endpoints() -> Vec<SocketAddr> {
    vec![
        SocketAddr::from((IMDS_V4, 80)),
        SocketAddr::from((IMDS_V6, 80)),
    ]
}

/// Other link-local credential endpoints that exist but are not IMDS.
pub fn other_endpoints() -> Vec<SocketAddr> {
    vec![
        SocketAddr::from((ECS_V4, 80)),
        SocketAddr::from((EKS_POD_IDENTITY_V4, 80)),
        SocketAddr::from((EKS_POD_IDENTITY_V6, 80)),
    ]
}

/// Sysctls that must be in place before interfaces are created.
fn prepare_namespace(ns: &NetNs) -> Result<()> {
    // DAD would keep new IPv6 addresses tentative (unusable) for ~2 s; `nodad`
    // covers the addresses we add, these cover link-local ones.
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    Ok(())
}

/// Wires the host, IMDS and container namespaces, which must already exist
/// and be empty.
/// `ip` commands that wire the IMDS side's eth0: the gateway and endpoint
/// addresses, and the routes back (also for a test that re-creates the link).
pub fn imds_link_commands() -> Vec<String> {
    vec![
        format!("addr add {IMDS_GW_V4}/24 dev eth0"),
        format!("addr add {IMDS_GW_V6}/64 dev eth0 nodad"),
        format!("addr add {IMDS_V4}/32 dev eth0"),
        format!("addr add {ECS_V4}/32 dev eth0"),
        format!("addr add {EKS_POD_IDENTITY_V4}/32 dev eth0"),
        format!("addr add {IMDS_V6}/128 dev eth0 nodad"),
        format!("addr add {EKS_POD_IDENTITY_V6}/128 dev eth0 nodad"),
        "link set eth0 up".to_owned(),
        // Container traffic is masqueraded to the host's address, but routes
        // back keep things working if a test removes the masquerade.
        format!("route add 198.51.100.0/24 via {HOST_V4} dev eth0"),
        format!("route add 2001:db8:2::/64 via {HOST_V6} dev eth0"),
    ]
}

pub(crate) fn configure(host: &NetNs, imds: &NetNs, containers: &[&NetNs]) -> Result<()> {
    for ns in [host, imds].into_iter().chain(containers.iter().copied()) {
        prepare_namespace(ns)?;
    }
    host.sysctl("net.ipv4.ip_forward", "1")?;
    host.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    host.sysctl("net.ipv6.conf.default.forwarding", "1")?;

    // Veths are created from the host side straight into their peers'
    // namespaces, so no interface ever exists in the machine's namespace.
    let mut cmds = vec![
        "link set lo up".to_owned(),
        format!(
            "link add {HOST_IFNAME} type veth peer name eth0 netns {}",
            imds.name()
        ),
        format!("link add {BRIDGE_IFNAME} type bridge"),
    ];
    for (i, ns) in containers.iter().enumerate() {
        let veth = host_veth(i);
        cmds.push(format!(
            "link add {veth} type veth peer name {CONTAINER_IFNAME} netns {}",
            ns.name()
        ));
        cmds.push(format!("link set {veth} master {BRIDGE_IFNAME}"));
        cmds.push(format!("link set {veth} up"));
    }
    cmds.extend([
        format!("addr add {HOST_V4}/24 dev {HOST_IFNAME}"),
        format!("addr add {HOST_V6}/64 dev {HOST_IFNAME} nodad"),
        format!("link set {HOST_IFNAME} up"),
        format!("addr add {BRIDGE_V4}/24 dev {BRIDGE_IFNAME}"),
        format!("addr add {BRIDGE_V6}/64 dev {BRIDGE_IFNAME} nodad"),
        format!("link set {BRIDGE_IFNAME} up"),
        format!("route add default via {IMDS_GW_V4} dev {HOST_IFNAME}"),
        format!("route add ::/0 via {IMDS_GW_V6} dev {HOST_IFNAME}"),
    ]);
    host.ip_batch(&cmds)
        .context("cannot wire the host namespace")?;

    let mut cmds = vec!["link set lo up".to_owned()];
    cmds.extend(imds_link_commands());
    imds.ip_batch(&cmds)
        .context("cannot wire the IMDS namespace")?;

    for (i, ns) in containers.iter().enumerate() {
        let cmds = [
            "link set lo up".to_owned(),
            format!("addr add {}/24 dev {CONTAINER_IFNAME}", container_v4(i)),
            format!(
                "addr add {}/64 dev {CONTAINER_IFNAME} nodad",
                container_v6(i)
            ),
            format!("link set {CONTAINER_IFNAME} up"),
            format!("route add default via {BRIDGE_V4} dev {CONTAINER_IFNAME}"),
            format!("route add ::/0 via {BRIDGE_V6} dev {CONTAINER_IFNAME}"),
        ];
        ns.ip_batch(&cmds)
            .with_context(|| format!("cannot wire container {i}"))?;
    }

    // Like Docker: container traffic leaves the host with the host's address.
    host.nft(&format!(
        "table inet imds_sandbox_nat {{
            chain postrouting {{
                type nat hook postrouting priority srcnat; policy accept;
                oifname \"{HOST_IFNAME}\" ip saddr 198.51.100.0/24 masquerade
                oifname \"{HOST_IFNAME}\" ip6 saddr 2001:db8:2::/64 masquerade
            }}
        }}"
    ))
    .context("cannot install the host's masquerade rules")?;
    Ok(())
}

const DROP_TABLE: &str = "imds_sandbox_drop";

/// Makes `imds` drop the first data segment of the next TCP connection to
/// port 80, once, so the client retransmits it.
///
/// The third packet the client sends on a connection (SYN, ACK, first data)
/// is matched with conntrack's packet counter; a one-element set is emptied
/// by the matching packet itself, which makes the drop happen exactly once.
pub(crate) fn arm_segment_drop(imds: &NetNs) -> Result<()> {
    imds.nft(&format!(
        "table inet {DROP_TABLE} {{}}
        delete table inet {DROP_TABLE}
        table inet {DROP_TABLE} {{
            set armed {{ type inet_service; flags dynamic; elements = {{ 80 }}; }}
            counter dropped {{}}
            chain input {{
                type filter hook input priority filter; policy accept;
                tcp dport @armed ct original packets 3 delete @armed {{ tcp dport }} counter name \"dropped\" drop
            }}
        }}"
    ))
    .context("cannot install the segment drop rule")
}

/// How many segments the rule of [`arm_segment_drop`] has dropped (0 if it
/// was never armed).
pub(crate) fn dropped_segments(imds: &NetNs) -> Result<u64> {
    let listing = imds.nft_query(&["list", "tables"])?;
    if !listing
        .lines()
        .any(|l| l.trim() == format!("table inet {DROP_TABLE}"))
    {
        return Ok(0);
    }
    let text = imds.nft_query(&["list", "counter", "inet", DROP_TABLE, "dropped"])?;
    let packets = text
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .context("no packet count in the nft counter listing")?;
    packets
        .parse()
        .with_context(|| format!("bad packet count {packets:?}"))
}
