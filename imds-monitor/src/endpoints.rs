//! The IMDS endpoints to watch: parsing `--endpoint` and the kernel's table.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Result, bail};
use imds_monitor_common::config::{Endpoints, MAX_V4_ENDPOINTS, MAX_V6_ENDPOINTS};

/// IMDS over IPv4 and IPv6 (Nitro).
pub const DEFAULTS: [&str; 2] = ["169.254.169.254:80", "[fd00:ec2::254]:80"];

/// `ADDR`, `ADDR:PORT` or `[V6ADDR]:PORT`; the port defaults to 80.
pub fn parse(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 80))
        .map_err(|_| {
            format!("`{s}` is not an address: use ADDR, ADDR:PORT or [V6ADDR]:PORT, e.g. 169.254.169.254 or [fd00:ec2::254]:80")
        })
}

pub fn defaults() -> Vec<SocketAddr> {
    DEFAULTS
        .iter()
        .map(|s| parse(s).expect("default endpoints parse"))
        .collect()
}

/// The kernel's fixed-size table; duplicates are dropped.
pub fn to_kernel(list: &[SocketAddr]) -> Result<Endpoints> {
    let mut table = Endpoints::empty();
    let mut seen = Vec::new();
    for addr in list {
        if seen.contains(addr) {
            continue;
        }
        seen.push(*addr);
        let port = addr.port().to_be();
        match addr.ip() {
            IpAddr::V4(ip) => {
                let i = table.v4_count as usize;
                if i == MAX_V4_ENDPOINTS {
                    bail!("at most {MAX_V4_ENDPOINTS} IPv4 endpoints can be watched");
                }
                table.v4_addrs[i] = u32::from_ne_bytes(ip.octets());
                table.v4_ports[i] = port;
                table.v4_count += 1;
            }
            IpAddr::V6(ip) => {
                let i = table.v6_count as usize;
                if i == MAX_V6_ENDPOINTS {
                    bail!("at most {MAX_V6_ENDPOINTS} IPv6 endpoints can be watched");
                }
                table.v6_addrs[i] = ip.octets();
                table.v6_ports[i] = port;
                table.v6_count += 1;
            }
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_users_type() {
        assert_eq!(
            parse("169.254.169.254").unwrap().to_string(),
            "169.254.169.254:80"
        );
        assert_eq!(
            parse("169.254.170.2:8080").unwrap().to_string(),
            "169.254.170.2:8080"
        );
        assert_eq!(
            parse("fd00:ec2::254").unwrap().to_string(),
            "[fd00:ec2::254]:80"
        );
        assert_eq!(
            parse("[fd00:ec2::23]:80").unwrap().to_string(),
            "[fd00:ec2::23]:80"
        );
        assert_eq!(
            parse("[fd00:ec2::23]").unwrap().to_string(),
            "[fd00:ec2::23]:80"
        );
        let err = parse("metadata.google.internal").unwrap_err();
        assert!(err.contains("not an address"), "{err}");
    }

    #[test]
    fn kernel_table_is_network_order_and_deduplicated() {
        let list = [
            parse("169.254.169.254").unwrap(),
            parse("169.254.169.254:80").unwrap(),
            parse("[fd00:ec2::254]:80").unwrap(),
        ];
        let t = to_kernel(&list).unwrap();
        assert_eq!(t.v4_count, 1);
        assert_eq!(t.v6_count, 1);
        assert_eq!(t.v4_addrs[0].to_ne_bytes(), [169, 254, 169, 254]);
        assert_eq!(t.v4_ports[0], 80u16.to_be());
    }

    #[test]
    fn too_many_endpoints_is_an_error() {
        let list: Vec<_> = (1..=9)
            .map(|i| parse(&format!("169.254.170.{i}")).unwrap())
            .collect();
        assert!(
            to_kernel(&list)
                .unwrap_err()
                .to_string()
                .contains("at most 8")
        );
    }
}
