//! Which interfaces to watch: the ones the kernel routes the endpoints through.
//!
//! Read from /proc/net/route and /proc/net/ipv6_route (main routing tables)
//! instead of asking with a packet: nothing is ever sent to an endpoint.

use std::{
    collections::HashMap,
    ffi::CStr,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use anyhow::{Context as _, Result, bail};

const RTF_UP: u32 = 0x1;
const RTF_REJECT: u32 = 0x200;

/// One route: destination network, prefix length, metric, interface.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Route<A> {
    dest: A,
    prefix: u8,
    metric: u32,
    iface: String,
}

/// Parses /proc/net/route (addresses are little-endian hex on x86 and arm64).
fn parse_v4_routes(table: &str) -> Vec<Route<Ipv4Addr>> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let hex = |s: &str| u32::from_str_radix(s, 16).ok();
            let flags = hex(f[3])?;
            if flags & RTF_UP == 0 || flags & RTF_REJECT != 0 {
                return None;
            }
            let dest = Ipv4Addr::from(u32::from_be(hex(f[1])?));
            let mask = u32::from_be(hex(f[7])?);
            Some(Route {
                dest,
                prefix: mask.count_ones() as u8,
                metric: f[6].parse().ok()?,
                iface: f[0].to_owned(),
            })
        })
        .collect()
}

/// Parses /proc/net/ipv6_route (32-hex-digit addresses, hex fields).
fn parse_v6_routes(table: &str) -> Vec<Route<Ipv6Addr>> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[9] == "lo" {
                return None;
            }
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            if flags & RTF_UP == 0 || flags & RTF_REJECT != 0 {
                return None;
            }
            Some(Route {
                dest: Ipv6Addr::from(u128::from_str_radix(f[0], 16).ok()?),
                prefix: u8::from_str_radix(f[1], 16).ok()?,
                metric: u32::from_str_radix(f[5], 16).ok()?,
                iface: f[9].to_owned(),
            })
        })
        .collect()
}

fn v4_matches(route: &Route<Ipv4Addr>, ip: Ipv4Addr) -> bool {
    let mask = u32::MAX.checked_shl(32 - route.prefix as u32).unwrap_or(0);
    u32::from(ip) & mask == u32::from(route.dest) & mask
}

fn v6_matches(route: &Route<Ipv6Addr>, ip: Ipv6Addr) -> bool {
    let mask = u128::MAX
        .checked_shl(128 - route.prefix as u32)
        .unwrap_or(0);
    u128::from(ip) & mask == u128::from(route.dest) & mask
}

/// Longest prefix, then lowest metric, as the kernel's main table would pick.
fn best<A>(routes: &[Route<A>], matches: impl Fn(&Route<A>) -> bool) -> Option<&Route<A>> {
    routes
        .iter()
        .filter(|r| matches(r))
        .min_by_key(|r| (u8::MAX - r.prefix, r.metric))
}

/// The interface each endpoint is routed through (None: no route).
pub fn routes_to(endpoints: &[SocketAddr]) -> Result<Vec<(SocketAddr, Option<String>)>> {
    let v4 = parse_v4_routes(&fs::read_to_string("/proc/net/route").unwrap_or_default());
    let v6 = parse_v6_routes(&fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default());
    Ok(endpoints
        .iter()
        .map(|ep| {
            let iface = match ep.ip() {
                IpAddr::V4(ip) => best(&v4, |r| v4_matches(r, ip)).map(|r| r.iface.clone()),
                IpAddr::V6(ip) => best(&v6, |r| v6_matches(r, ip)).map(|r| r.iface.clone()),
            };
            (*ep, iface)
        })
        .collect())
}

/// Interfaces to attach to: the user's, checked, or those routing to any endpoint.
pub fn choose(requested: &[String], endpoints: &[SocketAddr]) -> Result<Vec<String>> {
    if !requested.is_empty() {
        let mut chosen = Vec::new();
        for name in requested {
            if index_of(name).is_none() {
                let why = if name.len() >= libc::IF_NAMESIZE {
                    format!(
                        "no such interface (names have at most {} bytes)",
                        libc::IF_NAMESIZE - 1
                    )
                } else {
                    "no such interface".to_owned()
                };
                bail!(
                    "--iface {name}: {why}; interfaces here: {}",
                    all_names().join(", ")
                );
            }
            if !chosen.contains(name) {
                chosen.push(name.clone());
            }
        }
        return Ok(chosen);
    }
    let mut chosen: Vec<String> = Vec::new();
    for (endpoint, iface) in routes_to(endpoints).context("reading the routing table")? {
        match iface {
            Some(iface) => {
                log::info!("{endpoint} is routed through {iface}");
                if !chosen.contains(&iface) {
                    chosen.push(iface);
                }
            }
            None => {
                log::info!("{endpoint} has no route here; it is watched on the chosen interfaces")
            }
        }
    }
    if chosen.is_empty() {
        bail!(
            "no interface routes to {}; name one with --iface (interfaces here: {})",
            endpoints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            all_names().join(", ")
        );
    }
    Ok(chosen)
}

pub fn index_of(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

fn all_names() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Interface names by index, looked up once each.
#[derive(Debug, Default)]
pub struct NameCache(HashMap<u32, String>);

impl NameCache {
    pub fn name(&mut self, index: u32) -> &str {
        self.0.entry(index).or_insert_with(|| {
            let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
            // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
            let ptr = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
            if ptr.is_null() {
                format!("if{index}")
            } else {
                // SAFETY: on success buf holds a NUL-terminated name.
                unsafe { CStr::from_ptr(buf.as_ptr()) }
                    .to_string_lossy()
                    .into_owned()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
ens6\tFEA9FEA9\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
down0\tFEA9FEA9\t00000000\t0000\t0\t0\t0\tFFFFFFFF\t0\t0\t0
";

    #[test]
    fn v4_longest_prefix_wins() {
        let routes = parse_v4_routes(V4);
        let pick = |ip: &str| {
            best(&routes, |r| v4_matches(r, ip.parse().unwrap())).map(|r| r.iface.as_str())
        };
        assert_eq!(
            pick("169.254.169.254"),
            Some("ens6"),
            "host route beats default"
        );
        assert_eq!(pick("169.254.170.2"), Some("eth0"), "default route");
        assert_eq!(pick("172.17.0.5"), Some("docker0"));
    }

    #[test]
    fn v6_routes_skip_lo_and_pick_longest() {
        let table = "\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0
fd000ec2000000000000000000000254 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000001 00000000 00000001 ens5
fd000ec2000000000000000000000254 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000001 00000000 80200001 lo
";
        let routes = parse_v6_routes(table);
        assert_eq!(routes.len(), 2);
        let ip: Ipv6Addr = "fd00:ec2::254".parse().unwrap();
        assert_eq!(best(&routes, |r| v6_matches(r, ip)).unwrap().iface, "ens5");
        let other: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            best(&routes, |r| v6_matches(r, other)).unwrap().iface,
            "eth0"
        );
    }

    #[test]
    fn unknown_interface_is_named_in_the_error() {
        let err = choose(&["no-such-if0".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--iface no-such-if0: no such interface; interfaces here: "),
            "{err}"
        );
        assert!(err.contains("lo"), "lists the ones there are: {err}");
        let err = choose(&["a-name-far-too-long-for-linux".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 15 bytes"), "{err}");
    }
}
