//! Ring-buffer records decoded into owned, typed requests.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::SystemTime,
};

use imds_monitor_common::{
    class::{InvalidReason, RequestClass},
    event::{AF_INET, RequestEvent, kind},
    http::{METHOD_CAP, PATH_CAP, flag},
};

use crate::clock::BootClock;

/// One classified request, as the kernel saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub time: SystemTime,
    pub class: RequestClass,
    pub reason: InvalidReason,
    /// Method as sent (case kept), lossily decoded.
    pub method: String,
    /// Path as sent, at most `PATH_CAP` bytes, lossily decoded.
    pub path: String,
    pub path_truncated: bool,
    pub flags: u16,
    pub token_ttl: Option<u32>,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub ifindex: u32,
    pub socket_cookie: u64,
}

/// Decodes one ring-buffer record; `None` for a record of another kind or size.
pub fn decode(bytes: &[u8], clock: &BootClock) -> Option<Request> {
    if bytes.len() < size_of::<RequestEvent>() || bytes[0] != kind::REQUEST {
        return None;
    }
    // SAFETY: length checked; RequestEvent is plain old data (any bits valid).
    let raw: RequestEvent = unsafe { bytes.as_ptr().cast::<RequestEvent>().read_unaligned() };
    let class = RequestClass::from_u8(raw.class)?;
    let method_len = (raw.method_len as usize).min(METHOD_CAP);
    let path_len = (raw.path_len as usize).min(PATH_CAP);
    let ip = |a: [u8; 16]| -> IpAddr {
        if raw.family == AF_INET {
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(a))
        }
    };
    Some(Request {
        time: clock.wall_time(raw.boot_ns),
        class,
        reason: InvalidReason::from_u8(raw.reason),
        method: String::from_utf8_lossy(&raw.method[..method_len]).into_owned(),
        path: String::from_utf8_lossy(&raw.path[..path_len]).into_owned(),
        path_truncated: raw.flags & flag::PATH_TRUNCATED != 0,
        flags: raw.flags,
        token_ttl: (class == RequestClass::V2TokenPut
            || raw.flags & flag::TTL != 0 && raw.flags & flag::TTL_NOT_NUMBER == 0)
            .then_some(raw.ttl),
        source: SocketAddr::new(ip(raw.saddr), raw.sport),
        destination: SocketAddr::new(ip(raw.daddr), raw.dport),
        ifindex: raw.ifindex,
        socket_cookie: raw.socket_cookie,
    })
}

/// What a path asks for, for `imds.path_category`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathCategory {
    Credentials,
    IdentityCredentials,
    UserData,
    Tags,
    Token,
    Metadata,
    Dynamic,
    Other,
}

impl PathCategory {
    /// Categorises `/latest/...` or a dated version (`/2021-07-15/...`, `/1.0/...`).
    pub fn of(path: &str) -> Self {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let Some(rest) = path.strip_prefix('/') else {
            return Self::Other;
        };
        let Some((version, rest)) = rest.split_once('/') else {
            return Self::Other;
        };
        let is_version = version == "latest"
            || (!version.is_empty()
                && version
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'-' || b == b'.'));
        if !is_version {
            return Self::Other;
        }
        let under = |prefix: &str| {
            rest.strip_prefix(prefix)
                .is_some_and(|tail| tail.is_empty() || tail.starts_with('/'))
        };
        if under("meta-data/iam/security-credentials") {
            Self::Credentials
        } else if under("meta-data/identity-credentials") {
            Self::IdentityCredentials
        } else if under("user-data") {
            Self::UserData
        } else if under("meta-data/tags") {
            Self::Tags
        } else if rest == "api/token" {
            Self::Token
        } else if under("meta-data") {
            Self::Metadata
        } else if under("dynamic") {
            Self::Dynamic
        } else {
            Self::Other
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Credentials => "credentials",
            Self::IdentityCredentials => "identity_credentials",
            Self::UserData => "user_data",
            Self::Tags => "tags",
            Self::Token => "token",
            Self::Metadata => "metadata",
            Self::Dynamic => "dynamic",
            Self::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_categories() {
        use PathCategory as P;
        #[rustfmt::skip]
        let cases = [
            ("/latest/meta-data/iam/security-credentials/", P::Credentials),
            ("/latest/meta-data/iam/security-credentials/web-role", P::Credentials),
            ("/2021-07-15/meta-data/iam/security-credentials/r", P::Credentials),
            ("/latest/meta-data/iam/info", P::Metadata),
            ("/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance", P::IdentityCredentials),
            ("/latest/user-data", P::UserData),
            ("/1.0/user-data", P::UserData),
            ("/latest/user-database", P::Other),
            ("/latest/meta-data/tags/instance/Name", P::Tags),
            ("/latest/api/token", P::Token),
            ("/latest/meta-data/", P::Metadata),
            ("/latest/meta-data/instance-id?x=1", P::Metadata),
            ("/latest/dynamic/instance-identity/document", P::Dynamic),
            ("/computeMetadata/v1/instance/id", P::Other),
            ("/", P::Other),
            ("", P::Other),
            ("latest/meta-data", P::Other),
        ];
        for (path, category) in cases {
            assert_eq!(PathCategory::of(path), category, "{path:?}");
        }
    }

    #[test]
    fn decodes_a_kernel_record() {
        let mut raw = RequestEvent::zeroed();
        raw.class = RequestClass::V2TokenPut as u8;
        raw.family = AF_INET;
        raw.saddr[..4].copy_from_slice(&[198, 18, 0, 10]);
        raw.daddr[..4].copy_from_slice(&[169, 254, 169, 254]);
        raw.sport = 40000;
        raw.dport = 80;
        raw.method[..3].copy_from_slice(b"PUT");
        raw.method_len = 3;
        let path = b"/latest/api/token";
        raw.path[..path.len()].copy_from_slice(path);
        raw.path_len = path.len() as u16;
        raw.flags = flag::TTL;
        raw.ttl = 21600;
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw as *const RequestEvent).cast::<u8>(),
                size_of::<RequestEvent>(),
            )
        };
        let req = decode(bytes, &BootClock::now()).unwrap();
        assert_eq!(req.class, RequestClass::V2TokenPut);
        assert_eq!(req.method, "PUT");
        assert_eq!(req.path, "/latest/api/token");
        assert_eq!(req.token_ttl, Some(21600));
        assert_eq!(req.source.to_string(), "198.18.0.10:40000");
        assert_eq!(req.destination.to_string(), "169.254.169.254:80");
        assert!(
            decode(&bytes[..10], &BootClock::now()).is_none(),
            "short record"
        );
    }

    #[test]
    fn non_utf8_path_is_replaced_not_dropped() {
        let mut raw = RequestEvent::zeroed();
        raw.family = AF_INET;
        raw.path[..4].copy_from_slice(b"/\xff\"x");
        raw.path_len = 4;
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw as *const RequestEvent).cast::<u8>(),
                size_of::<RequestEvent>(),
            )
        };
        assert_eq!(
            decode(bytes, &BootClock::now()).unwrap().path,
            "/\u{fffd}\"x"
        );
    }
}
