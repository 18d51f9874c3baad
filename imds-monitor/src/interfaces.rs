//! Which interfaces to watch: the ones the kernel routes the endpoints through.
//!
//! Read from the main routing table over rtnetlink (an `RTM_GETROUTE` dump,
//! IPv4 and IPv6) instead of asking with a packet: nothing is ever sent to an
//! endpoint. Interface names come from an `RTM_GETLINK` dump, both of the
//! daemon's own network namespace (`/sys/class/net` and `/proc/net` may show
//! another one).

use std::{
    collections::HashMap,
    ffi::CStr,
    future::Future,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context as _, Result, anyhow, bail};
use futures_util::TryStreamExt as _;
use netlink_packet_route::{
    AddressFamily,
    link::LinkAttribute,
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
};
use rtnetlink::Handle;

/// One route of the main table: destination network, prefix length,
/// metric, and the interfaces (indexes) it leaves through (several for a
/// multipath route).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Route {
    dest: IpAddr,
    prefix: u8,
    metric: u32,
    oifs: Vec<u32>,
}

/// A route of the main table that sends packets out (unicast, with an
/// output interface); `None` for the rest (local, blackhole, unreachable,
/// prohibit, other tables, a nexthop object without an interface).
fn route_of(msg: &RouteMessage) -> Option<Route> {
    let header = &msg.header;
    if header.kind != RouteType::Unicast {
        return None;
    }
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let mut dest = None;
    let mut metric = 0;
    let mut oifs = Vec::new();
    for attribute in &msg.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dest = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dest = Some(IpAddr::V6(*a)),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Oif(i) => oifs.push(*i),
            RouteAttribute::MultiPath(hops) => oifs.extend(hops.iter().map(|h| h.interface_index)),
            _ => {}
        }
    }
    // A default route has no destination attribute.
    let dest = match (dest, header.address_family) {
        (Some(d), _) => d,
        (None, AddressFamily::Inet) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    oifs.retain(|i| *i != 0);
    (!oifs.is_empty()).then_some(Route {
        dest,
        prefix: header.destination_prefix_length,
        metric,
        oifs,
    })
}

fn matches(route: &Route, ip: IpAddr) -> bool {
    match (route.dest, ip) {
        (IpAddr::V4(dest), IpAddr::V4(ip)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(route.prefix.min(32)))
                .unwrap_or(0);
            u32::from(ip) & mask == u32::from(dest) & mask
        }
        (IpAddr::V6(dest), IpAddr::V6(ip)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(route.prefix.min(128)))
                .unwrap_or(0);
            u128::from(ip) & mask == u128::from(dest) & mask
        }
        _ => false,
    }
}

/// Longest prefix, then lowest metric, as the kernel's main table would pick.
fn best(routes: &[Route], ip: IpAddr) -> Option<&Route> {
    routes
        .iter()
        .filter(|r| matches(r, ip))
        .min_by_key(|r| (u8::MAX - r.prefix, r.metric))
}

/// The routes and interface names of this network namespace, read once.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    routes: Vec<Route>,
    names: HashMap<u32, String>,
}

impl Snapshot {
    /// Dumps the links and the IPv4 and IPv6 routes.
    pub async fn read(handle: &Handle) -> Result<Self> {
        let mut names = HashMap::new();
        let mut links = handle.link().get().execute();
        while let Some(link) = links
            .try_next()
            .await
            .context("dumping the links (RTM_GETLINK)")?
        {
            if let Some(name) = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }) {
                names.insert(link.header.index, name);
            }
        }
        let mut routes = Vec::new();
        for request in [
            rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let mut dump = handle.route().get(request).execute();
            while let Some(msg) = dump
                .try_next()
                .await
                .context("dumping the routing table (RTM_GETROUTE)")?
            {
                routes.extend(route_of(&msg));
            }
        }
        Ok(Self { routes, names })
    }

    /// Interface name of index `index` (`if<index>` if it is gone).
    fn name(&self, index: u32) -> String {
        self.names
            .get(&index)
            .cloned()
            .unwrap_or_else(|| format!("if{index}"))
    }

    /// Every interface, sorted by name.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.names.values().cloned().collect();
        names.sort();
        names
    }

    /// The interfaces each endpoint is routed through (empty: no route).
    /// Loopback is left out: a packet to a local address never reaches a
    /// NIC.
    pub fn routes_to(&self, endpoints: &[SocketAddr]) -> Vec<(SocketAddr, Vec<String>)> {
        endpoints
            .iter()
            .map(|ep| {
                let ifaces = best(&self.routes, ep.ip())
                    .map(|r| {
                        r.oifs
                            .iter()
                            .map(|i| self.name(*i))
                            .filter(|n| n != "lo")
                            .collect()
                    })
                    .unwrap_or_default();
                (*ep, ifaces)
            })
            .collect()
    }

    /// The interfaces routing to any endpoint, each once, in order.
    pub fn routed(&self, endpoints: &[SocketAddr]) -> Vec<String> {
        let mut chosen: Vec<String> = Vec::new();
        for (_, ifaces) in self.routes_to(endpoints) {
            for iface in ifaces {
                if !chosen.contains(&iface) {
                    chosen.push(iface);
                }
            }
        }
        chosen
    }
}

/// Runs `f` with a netlink handle on a thread of its own (with its own
/// runtime), so it can be called from synchronous code and from inside the
/// daemon's runtime alike. The thread is in the daemon's network namespace.
pub fn with_netlink<T, F, Fut>(f: F) -> Result<T>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .context("starting a runtime for netlink")?;
                runtime.block_on(async move {
                    let (connection, handle, _) =
                        rtnetlink::new_connection().context("opening a netlink socket")?;
                    let task = tokio::spawn(connection);
                    let result = f(handle).await;
                    task.abort();
                    result
                })
            })
            .join()
            .map_err(|_| anyhow!("the netlink thread panicked"))?
    })
}

/// The routing table and interface names, read over netlink.
pub fn snapshot() -> Result<Snapshot> {
    with_netlink(|handle| async move { Snapshot::read(&handle).await })
}

/// The interface each endpoint is routed through (None: no route).
pub fn routes_to(endpoints: &[SocketAddr]) -> Result<Vec<(SocketAddr, Option<String>)>> {
    Ok(snapshot()?
        .routes_to(endpoints)
        .into_iter()
        .map(|(ep, ifaces)| (ep, ifaces.into_iter().next()))
        .collect())
}

/// Interfaces to attach to: the user's, checked, or those routing to any endpoint.
pub fn choose(requested: &[String], endpoints: &[SocketAddr]) -> Result<Vec<String>> {
    let snapshot = snapshot().context("reading the routing table and interfaces over netlink")?;
    choose_from(&snapshot, requested, endpoints)
}

fn choose_from(
    snapshot: &Snapshot,
    requested: &[String],
    endpoints: &[SocketAddr],
) -> Result<Vec<String>> {
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
                    snapshot.names().join(", ")
                );
            }
            if !chosen.contains(name) {
                chosen.push(name.clone());
            }
        }
        return Ok(chosen);
    }
    for (endpoint, ifaces) in snapshot.routes_to(endpoints) {
        if ifaces.is_empty() {
            log::info!("{endpoint} has no route here; it is watched on the chosen interfaces");
        } else {
            log::info!("{endpoint} is routed through {}", ifaces.join(", "));
        }
    }
    let chosen = snapshot.routed(endpoints);
    if chosen.is_empty() {
        bail!(
            "no interface routes to {}; name one with --iface (interfaces here: {})",
            endpoints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            snapshot.names().join(", ")
        );
    }
    Ok(chosen)
}

pub fn index_of(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
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

    /// An interface was deleted or re-created: its index may name another
    /// interface from now on.
    pub fn forget(&mut self, index: u32) {
        self.0.remove(&index);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use netlink_packet_route::route::RouteNextHop;

    use super::*;

    /// A main-table route message as the kernel dumps it.
    fn msg(dest: Option<IpAddr>, prefix: u8, metric: Option<u32>, oif: u32) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = match dest {
            Some(IpAddr::V6(_)) => AddressFamily::Inet6,
            _ => AddressFamily::Inet,
        };
        m.header.destination_prefix_length = prefix;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.kind = RouteType::Unicast;
        match dest {
            Some(IpAddr::V4(a)) => m
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(a))),
            Some(IpAddr::V6(a)) => m
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet6(a))),
            None => {}
        }
        if let Some(p) = metric {
            m.attributes.push(RouteAttribute::Priority(p));
        }
        m.attributes.push(RouteAttribute::Oif(oif));
        m
    }

    fn v4(s: &str) -> Option<IpAddr> {
        Some(IpAddr::V4(s.parse::<Ipv4Addr>().unwrap()))
    }

    fn snapshot(messages: &[RouteMessage]) -> Snapshot {
        Snapshot {
            routes: messages.iter().filter_map(route_of).collect(),
            names: [
                (1, "lo"),
                (2, "eth0"),
                (3, "docker0"),
                (4, "ens6"),
                (5, "ens5"),
            ]
            .into_iter()
            .map(|(i, n)| (i, n.to_owned()))
            .collect(),
        }
    }

    fn pick(s: &Snapshot, ip: &str) -> Vec<String> {
        let ep = SocketAddr::new(ip.parse().unwrap(), 80);
        s.routes_to(&[ep]).remove(0).1
    }

    #[test]
    fn v4_longest_prefix_wins() {
        let mut down = msg(v4("169.254.169.254"), 32, None, 5);
        down.header.kind = RouteType::Unreachable;
        let s = snapshot(&[
            msg(None, 0, Some(100), 2),
            msg(v4("192.168.2.0"), 24, None, 2),
            msg(v4("172.17.0.0"), 16, None, 3),
            msg(v4("169.254.169.254"), 32, None, 4),
            down,
        ]);
        assert_eq!(
            pick(&s, "169.254.169.254"),
            ["ens6"],
            "host route beats default"
        );
        assert_eq!(pick(&s, "169.254.170.2"), ["eth0"], "default route");
        assert_eq!(pick(&s, "172.17.0.5"), ["docker0"]);
        assert!(pick(&s, "fd00:ec2::254").is_empty(), "no IPv6 route");
    }

    #[test]
    fn lowest_metric_wins_among_equal_prefixes() {
        let s = snapshot(&[msg(None, 0, Some(200), 5), msg(None, 0, Some(100), 2)]);
        assert_eq!(pick(&s, "169.254.169.254"), ["eth0"]);
    }

    #[test]
    fn v6_routes_skip_lo_and_pick_longest() {
        let ip: Option<IpAddr> = Some("fd00:ec2::254".parse::<Ipv6Addr>().unwrap().into());
        let default6 = Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let s = snapshot(&[
            msg(default6, 0, Some(1024), 2),
            msg(ip, 128, Some(1), 5),
            msg(
                Some("2001:db8::".parse::<Ipv6Addr>().unwrap().into()),
                64,
                None,
                1,
            ),
        ]);
        assert_eq!(pick(&s, "fd00:ec2::254"), ["ens5"]);
        assert_eq!(pick(&s, "2001:db9::1"), ["eth0"]);
        assert!(pick(&s, "2001:db8::1").is_empty(), "through lo: no NIC");
    }

    #[test]
    fn other_tables_and_kinds_are_left_out() {
        let mut local = msg(v4("169.254.169.254"), 32, None, 4);
        local.header.kind = RouteType::Local;
        let mut other_table = msg(v4("169.254.169.254"), 32, None, 4);
        other_table.header.table = 100;
        let mut big_table = msg(v4("169.254.169.254"), 32, None, 4);
        big_table.attributes.push(RouteAttribute::Table(1000));
        let s = snapshot(&[local, other_table, big_table, msg(None, 0, None, 2)]);
        assert_eq!(pick(&s, "169.254.169.254"), ["eth0"]);
    }

    #[test]
    fn multipath_routes_name_every_interface() {
        let mut m = msg(None, 0, None, 0);
        m.attributes
            .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
        m.attributes.push(RouteAttribute::MultiPath(
            [2, 5]
                .into_iter()
                .map(|i| {
                    let mut hop = RouteNextHop::default();
                    hop.interface_index = i;
                    hop
                })
                .collect(),
        ));
        let s = snapshot(&[m]);
        assert_eq!(pick(&s, "169.254.169.254"), ["eth0", "ens5"]);
        let eps: Vec<SocketAddr> = ["169.254.169.254:80", "169.254.170.2:80"]
            .iter()
            .map(|e| e.parse().unwrap())
            .collect();
        assert_eq!(s.routed(&eps), ["eth0", "ens5"], "each once");
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

    #[test]
    fn no_route_lists_the_interfaces() {
        let s = snapshot(&[msg(v4("10.0.0.0"), 8, None, 2)]);
        let err = choose_from(&s, &[], &["169.254.169.254:80".parse().unwrap()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no interface routes to 169.254.169.254:80; name one with --iface \
             (interfaces here: docker0, ens5, ens6, eth0, lo)"
        );
    }

    #[test]
    fn the_real_table_is_read_over_netlink() {
        // This namespace's own table (a dump reads; nothing is sent).
        let s = snapshot_real();
        assert!(s.names().iter().any(|n| n == "lo"), "{:?}", s.names());
    }

    fn snapshot_real() -> Snapshot {
        super::snapshot().expect("netlink dump")
    }
}
