//! Ring-buffer records decoded into owned, typed requests.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::SystemTime,
};

use imds_monitor_common::{
    class::{InvalidReason, RequestClass, Verdict},
    event::{
        AF_INET, ExecEvent, Owner, RequestEvent, ResponseEvent, TaskEvent, attribution, exec_flag,
        kind,
    },
    http::{METHOD_CAP, PATH_CAP, flag},
};

use crate::{
    clock::BootClock,
    processes::{Exec, split_nul},
};

/// One ring-buffer record.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Request(Box<Request>),
    Response(Response),
    Exec(Exec),
    Fork { parent: u32, child: u32 },
    Exit { tgid: u32 },
}

/// The process that opened a request's connection, as the kernel saw it at connect().
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelOwner {
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: String,
    /// `socket` (a host process's packet) or `sequence` (forwarded, NATed).
    pub method: &'static str,
    /// The policy exception the kernel found for it (index + 1), 0 for none.
    pub exempt_rule: u32,
}

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
    pub owner: Option<KernelOwner>,
    /// Position on its connection; the response with the same index answers it.
    pub request_index: u16,
    /// Forwarded through this host (a container), not sent by a local socket.
    pub forwarded: bool,
    /// What the kernel did: `Dropped` in enforce mode, else `Allowed`.
    pub kernel_verdict: Verdict,
}

/// A response's status line, as it arrived at the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub time: SystemTime,
    pub status: u16,
    /// IP TTL / hop limit on arrival, before any forwarding to a container.
    pub ttl: u8,
    pub forwarded: bool,
    pub request_index: u16,
    /// The client and the endpoint, as in the request.
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub ifindex: u32,
    pub owner: Option<KernelOwner>,
}

fn ip_of(family: u8, a: [u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(a))
    }
}

fn owner_of(how: u8, owner: &Owner) -> Option<KernelOwner> {
    let method = match how {
        attribution::SOCKET => "socket",
        attribution::SEQUENCE => "sequence",
        _ => return None,
    };
    Some(KernelOwner {
        tgid: owner.tgid,
        tid: owner.pid,
        uid: owner.uid,
        gid: owner.gid,
        cgroup_id: owner.cgroup_id,
        comm: c_string(&owner.comm),
        method,
        exempt_rule: owner.exempt_rule,
    })
}

/// A NUL-terminated byte buffer as text.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Reads a `repr(C)` plain-old-data record from the start of `bytes`.
fn read_record<T: Copy>(bytes: &[u8]) -> Option<T> {
    // SAFETY: length checked; the record types are plain old data.
    (bytes.len() >= size_of::<T>()).then(|| unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// Decodes one ring-buffer record; `None` for an unknown kind or a short record.
pub fn decode(bytes: &[u8], clock: &BootClock) -> Option<Record> {
    match *bytes.first()? {
        kind::REQUEST => decode_request(bytes, clock).map(|r| Record::Request(Box::new(r))),
        kind::RESPONSE => {
            let raw: ResponseEvent = read_record(bytes)?;
            Some(Record::Response(Response {
                time: clock.wall_time(raw.boot_ns),
                status: raw.status,
                ttl: raw.ttl,
                forwarded: raw.forwarded != 0,
                request_index: raw.request_index,
                source: SocketAddr::new(ip_of(raw.family, raw.saddr), raw.sport),
                destination: SocketAddr::new(ip_of(raw.family, raw.daddr), raw.dport),
                ifindex: raw.ifindex,
                owner: owner_of(raw.attribution, &raw.owner),
            }))
        }
        kind::EXEC => {
            let raw: ExecEvent = read_record(bytes)?;
            let args_len = (raw.args_len as usize).min(raw.args.len());
            Some(Record::Exec(Exec {
                tgid: raw.tgid,
                uid: raw.uid,
                name: c_string(&raw.comm),
                filename: c_string(&raw.filename),
                args: split_nul(&raw.args[..args_len]),
                args_truncated: raw.flags
                    & (exec_flag::ARGS_TRUNCATED | exec_flag::ARGS_UNREADABLE)
                    != 0,
                cgroup_id: raw.cgroup_id,
            }))
        }
        kind::FORK => {
            let raw: TaskEvent = read_record(bytes)?;
            Some(Record::Fork {
                parent: raw.tgid,
                child: raw.child,
            })
        }
        kind::EXIT => {
            let raw: TaskEvent = read_record(bytes)?;
            Some(Record::Exit { tgid: raw.tgid })
        }
        _ => None,
    }
}

fn decode_request(bytes: &[u8], clock: &BootClock) -> Option<Request> {
    let raw: RequestEvent = read_record(bytes)?;
    let class = RequestClass::from_u8(raw.class)?;
    let method_len = (raw.method_len as usize).min(METHOD_CAP);
    let path_len = (raw.path_len as usize).min(PATH_CAP);
    let ip = |a: [u8; 16]| ip_of(raw.family, a);
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
        owner: owner_of(raw.attribution, &raw.owner),
        request_index: raw.request_index,
        forwarded: raw.forwarded != 0,
        kernel_verdict: Verdict::from_u8(raw.verdict),
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
        let Some(Record::Request(req)) = decode(bytes, &BootClock::now()) else {
            panic!("not a request");
        };
        assert_eq!(req.class, RequestClass::V2TokenPut);
        assert_eq!(req.owner, None, "no attribution recorded");
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
    fn decodes_exec_fork_and_exit() {
        let mut exec = ExecEvent {
            kind: kind::EXEC,
            flags: 0,
            argc: 2,
            args_len: 0,
            _pad: 0,
            tgid: 77,
            pid: 77,
            uid: 1000,
            gid: 1000,
            cgroup_id: 5,
            boot_ns: 1,
            comm: [0; 16],
            filename: [0; 256],
            args: [0; 1024],
        };
        exec.comm[..4].copy_from_slice(b"curl");
        exec.filename[..13].copy_from_slice(b"/usr/bin/curl");
        let args = b"curl\0-s\0";
        exec.args[..args.len()].copy_from_slice(args);
        exec.args_len = args.len() as u16;
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&exec as *const ExecEvent).cast::<u8>(),
                size_of::<ExecEvent>(),
            )
        };
        let Some(Record::Exec(e)) = decode(bytes, &BootClock::now()) else {
            panic!("not an exec");
        };
        assert_eq!(
            (e.tgid, e.name.as_str(), e.filename.as_str()),
            (77, "curl", "/usr/bin/curl")
        );
        assert_eq!(e.args, ["curl", "-s"]);
        let fork = TaskEvent {
            kind: kind::FORK,
            _pad: 0,
            _pad1: 0,
            tgid: 10,
            child: 11,
            _pad2: 0,
            boot_ns: 0,
        };
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&fork as *const TaskEvent).cast::<u8>(),
                size_of::<TaskEvent>(),
            )
        };
        assert_eq!(
            decode(bytes, &BootClock::now()),
            Some(Record::Fork {
                parent: 10,
                child: 11
            })
        );
        assert_eq!(decode(&[99, 0, 0], &BootClock::now()), None, "unknown kind");
        assert_eq!(decode(&bytes[..4], &BootClock::now()), None, "short record");
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
            match decode(bytes, &BootClock::now()) {
                Some(Record::Request(r)) => r.path,
                other => panic!("{other:?}"),
            },
            "/\u{fffd}\"x"
        );
    }
}
