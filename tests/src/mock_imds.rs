//! A mock EC2 Instance Metadata Service that runs as threads of the test
//! process, inside the sandbox's IMDS network namespace.
//!
//! It follows the real service where a monitor can tell the difference: token
//! PUT rules (TTL header, dated path, `X-Forwarded-For`), token expiry,
//! `HttpTokens` optional/required with the XHTML 401 page, and the PUT
//! response hop limit, which is what breaks containers on EC2.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{setsockopt, sockopt};
use serde_json::json;

use crate::http::{Request, Response, parse_request};
use crate::netns::NetNs;
use crate::util::{base64, random_bytes, random_hex, rfc3339};

/// Header that carries an IMDSv2 token on reads.
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// Header that asks for a token's lifetime on the token PUT.
pub const TOKEN_TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
/// Largest token lifetime IMDS grants (6 hours).
pub const MAX_TOKEN_TTL_SECS: u32 = 21_600;

/// How often blocked threads look at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Idle keep-alive connections are closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a hop-limited response may stay unacknowledged before the
/// connection is considered cut off by the hop limit.
const HOP_LIMITED_ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// Instance metadata options and contents. Change them on a running mock with
/// [`MockImds::update_config`].
#[derive(Debug, Clone)]
pub struct ImdsConfig {
    /// `HttpPutResponseHopLimit`: IP TTL / hop limit of token PUT responses (1..=64).
    pub hop_limit: u8,
    /// `HttpTokens=required`: token-less reads get 401.
    pub tokens_required: bool,
    /// `HttpEndpoint=disabled` when false: every request gets 403.
    pub enabled: bool,
    /// Caps the real lifetime of issued tokens below the TTL they were asked
    /// for, so tests can see a token expire without waiting a whole second.
    pub token_ttl_max: Option<Duration>,
    pub instance_id: String,
    pub instance_type: String,
    pub ami_id: String,
    pub account_id: String,
    pub region: String,
    pub availability_zone: String,
    pub local_ipv4: String,
    /// Instance profile role; `None` means no role is attached (404s).
    pub role_name: Option<String>,
    /// `None` means no user data (404, as on EC2).
    pub user_data: Option<Vec<u8>>,
    /// `InstanceMetadataTags=enabled` with these tags; `None` means disabled.
    pub tags: Option<Vec<(String, String)>>,
}

impl Default for ImdsConfig {
    fn default() -> Self {
        Self {
            hop_limit: 1,
            tokens_required: false,
            enabled: true,
            token_ttl_max: None,
            instance_id: "i-0123456789abcdef0".to_owned(),
            instance_type: "m5.large".to_owned(),
            ami_id: "ami-0abcdef1234567890".to_owned(),
            account_id: "123456789012".to_owned(),
            region: "us-east-1".to_owned(),
            availability_zone: "us-east-1a".to_owned(),
            local_ipv4: crate::topology::HOST_V4.to_string(),
            role_name: Some("imds-sandbox-role".to_owned()),
            user_data: Some(b"#!/bin/bash\necho sandbox user-data\n".to_vec()),
            tags: Some(vec![
                ("Name".to_owned(), "imds-sandbox".to_owned()),
                ("team".to_owned(), "security".to_owned()),
            ]),
        }
    }
}

/// IP version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    V4,
    V6,
}

/// One request as the mock saw it. Token values are never kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsRequest {
    pub time: SystemTime,
    /// Connection number, unique within a mock; equal for requests that
    /// shared a keep-alive connection.
    pub connection: u64,
    pub peer: SocketAddr,
    /// The endpoint address the request was sent to.
    pub local: SocketAddr,
    pub ip_version: IpVersion,
    /// Empty when the request could not be parsed (then `status` is 400).
    pub method: String,
    /// Request target as sent, query included.
    pub path: String,
    /// Header names as sent, in order.
    pub header_names: Vec<String>,
    /// Whether an `X-aws-ec2-metadata-token` header was present.
    pub token_present: bool,
    /// Status code the mock answered with.
    pub status: u16,
    /// IP TTL / hop limit the answer was sent with, for token PUTs.
    pub hop_limit: Option<u8>,
}

/// Handle to the running mock; stops it on drop.
pub struct MockImds {
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    endpoints: Vec<SocketAddr>,
}

impl std::fmt::Debug for MockImds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockImds")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl MockImds {
    /// Starts the mock in `netns`. It serves IMDS on `imds_endpoints` and
    /// answers 404 to everything on `other_endpoints` (ECS, EKS Pod Identity).
    /// Returns once every listener is bound.
    pub fn start(
        netns: &NetNs,
        imds_endpoints: &[SocketAddr],
        other_endpoints: &[SocketAddr],
        config: ImdsConfig,
    ) -> Result<Self> {
        let state = Arc::new(State::new(
            config,
            imds_endpoints.iter().map(SocketAddr::ip).collect(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let endpoints: Vec<SocketAddr> = imds_endpoints
            .iter()
            .chain(other_endpoints)
            .copied()
            .collect();
        let netns_fd = netns.open()?;
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let acceptor = {
            let (state, stop, endpoints) = (state.clone(), stop.clone(), endpoints.clone());
            let netns_name = netns.name().to_owned();
            std::thread::Builder::new()
                .name("mock-imds".to_owned())
                .spawn(move || {
                    // setns changes only this thread; sockets it creates (and
                    // threads it spawns) live in the IMDS namespace.
                    let bound = setns(&netns_fd, CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("cannot enter network namespace {netns_name}"))
                        .and_then(|()| bind_all(&endpoints));
                    match bound {
                        Ok(listeners) => {
                            let _ = ready_tx.send(Ok(()));
                            accept_loop(&listeners, &state, &stop);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })
                .context("cannot spawn the mock IMDS thread")?
        };
        let mock = Self {
            state,
            stop,
            acceptor: Some(acceptor),
            endpoints,
        };
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the mock IMDS thread died while starting"))??;
        Ok(mock)
    }

    /// Addresses the mock listens on.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// A copy of the current configuration.
    pub fn config(&self) -> ImdsConfig {
        read_lock(&self.state.config).clone()
    }

    /// Changes the configuration for the requests that follow, like
    /// `aws ec2 modify-instance-metadata-options` does.
    pub fn update_config(&self, change: impl FnOnce(&mut ImdsConfig)) {
        let mut config = self.state.config.write().unwrap_or_else(|e| e.into_inner());
        change(&mut config);
    }

    /// Every request received so far, in the order they were answered.
    pub fn log(&self) -> Vec<ImdsRequest> {
        lock(&self.state.log).clone()
    }

    /// Forgets the logged requests (tokens stay valid).
    pub fn clear_log(&self) {
        lock(&self.state.log).clear();
    }

    /// Waits until `pred` holds for the log, or `timeout` passes; returns the
    /// last log seen either way.
    pub fn wait_for_log(
        &self,
        timeout: Duration,
        pred: impl Fn(&[ImdsRequest]) -> bool,
    ) -> Vec<ImdsRequest> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if pred(&log) || Instant::now() >= deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops accepting, closes every connection and joins the threads.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Drop for MockImds {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not hide the log from the test that asserts on it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn bind_all(endpoints: &[SocketAddr]) -> Result<Vec<TcpListener>> {
    endpoints
        .iter()
        .map(|addr| {
            let listener =
                TcpListener::bind(addr).with_context(|| format!("mock IMDS cannot bind {addr}"))?;
            listener
                .set_nonblocking(true)
                .with_context(|| format!("cannot make the {addr} listener non-blocking"))?;
            Ok(listener)
        })
        .collect()
}

fn accept_loop(listeners: &[TcpListener], state: &Arc<State>, stop: &Arc<AtomicBool>) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let mut fds: Vec<PollFd<'_>> = listeners
            .iter()
            .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
            .collect();
        let timeout = PollTimeout::try_from(POLL_INTERVAL).unwrap_or(PollTimeout::MAX);
        if poll(&mut fds, timeout).is_err() {
            continue; // EINTR
        }
        for listener in listeners {
            // Non-blocking: drain every pending connection, then poll again.
            while let Ok((stream, peer)) = listener.accept() {
                let (state, stop) = (state.clone(), stop.clone());
                let spawned = std::thread::Builder::new()
                    .name("mock-imds-conn".to_owned())
                    .spawn(move || serve_connection(stream, peer, &state, &stop));
                if let Ok(handle) = spawned {
                    connections.push(handle);
                }
            }
        }
        connections.retain(|h| !h.is_finished());
    }
    for handle in connections {
        let _ = handle.join();
    }
}

/// Sets the TTL / hop limit of a connection's outgoing packets.
fn set_hops(stream: &TcpStream, v6: bool, hops: i32) -> std::io::Result<()> {
    if v6 {
        setsockopt(stream, sockopt::Ipv6Ttl, &hops)?;
    } else {
        setsockopt(stream, sockopt::Ipv4Ttl, &hops)?;
    }
    Ok(())
}

fn get_hops(stream: &TcpStream, v6: bool) -> std::io::Result<i32> {
    let hops = if v6 {
        nix::sys::socket::getsockopt(stream, sockopt::Ipv6Ttl)?
    } else {
        nix::sys::socket::getsockopt(stream, sockopt::Ipv4Ttl)?
    };
    Ok(hops)
}

/// Bytes written to a TCP socket and not yet acknowledged by the peer.
fn unacked_bytes(stream: &TcpStream) -> std::io::Result<i32> {
    let mut pending: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one int through the pointer.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut pending) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(pending)
}

/// Writes hop-limited responses like IMDS does.
///
/// The TTL is read when a segment is (re)transmitted, not when it is written,
/// so it may only be restored once the peer has acknowledged every byte sent
/// under the low limit. If that never happens (the responses died a hop
/// early) the limit stays for the rest of the connection, so that
/// retransmissions cannot sneak past it.
struct HopLimiter {
    v6: bool,
    default_hops: i32,
}

impl HopLimiter {
    fn new(stream: &TcpStream, v6: bool) -> std::io::Result<Self> {
        Ok(Self {
            v6,
            default_hops: get_hops(stream, v6)?,
        })
    }

    fn write(
        &self,
        stream: &mut TcpStream,
        bytes: &[u8],
        hop_limit: Option<u8>,
        stop: &AtomicBool,
    ) -> std::io::Result<()> {
        let Some(limit) = hop_limit else {
            return stream.write_all(bytes);
        };
        set_hops(stream, self.v6, i32::from(limit))?;
        stream.write_all(bytes)?;
        let deadline = Instant::now() + HOP_LIMITED_ACK_TIMEOUT;
        while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
            if unacked_bytes(stream)? == 0 {
                set_hops(stream, self.v6, self.default_hops)?;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }
}

fn serve_connection(mut stream: TcpStream, peer: SocketAddr, state: &State, stop: &AtomicBool) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let connection = state.next_connection.fetch_add(1, Ordering::SeqCst);
    let v6 = local.is_ipv6();
    let is_imds = state.imds_addrs.contains(&local.ip());
    let Ok(hops) = HopLimiter::new(&stream, v6) else {
        return;
    };
    if stream.set_read_timeout(Some(POLL_INTERVAL)).is_err() {
        return;
    }
    let record = |method: &str, path: &str, names: Vec<String>, token: bool, reply: &Reply| {
        lock(&state.log).push(ImdsRequest {
            time: SystemTime::now(),
            connection,
            peer,
            local,
            ip_version: if v6 { IpVersion::V6 } else { IpVersion::V4 },
            method: method.to_owned(),
            path: path.to_owned(),
            header_names: names,
            token_present: token,
            status: reply.response.status,
            hop_limit: reply.hop_limit,
        });
    };

    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut last_activity = Instant::now();
    loop {
        // Answer every complete request already buffered, in order: this is
        // what makes pipelining work.
        loop {
            match parse_request(&buf) {
                Ok(Some((request, used))) => {
                    buf.drain(..used);
                    let reply = state.respond(&request, is_imds, Instant::now());
                    // Log before writing, so a client that saw the answer
                    // also finds its request in the log.
                    record(
                        &request.method,
                        &request.target,
                        request.headers.names(),
                        request.headers.contains(TOKEN_HEADER),
                        &reply,
                    );
                    let keep_alive = request.keep_alive();
                    let bytes = reply
                        .response
                        .to_bytes(request.method == "HEAD", keep_alive);
                    if hops
                        .write(&mut stream, &bytes, reply.hop_limit, stop)
                        .is_err()
                        || !keep_alive
                    {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    // Unframeable bytes: answer 400 and close, as there is no
                    // way to find where the next request would start.
                    let reply = Reply::from(error_page(400));
                    record("", "", Vec::new(), false, &reply);
                    let page = reply.response.to_bytes(false, false);
                    let _ = hops.write(&mut stream, &page, None, stop);
                    return;
                }
            }
        }
        if stop.load(Ordering::SeqCst) || last_activity.elapsed() > IDLE_TIMEOUT {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                last_activity = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The XHTML error page IMDS sends, e.g. titled `401 - Unauthorized`.
pub fn error_page(status: u16) -> Response {
    let title = format!("{status} - {}", crate::http::reason_phrase(status));
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n\
         <!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\
         \t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n\
         <html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n \
         <head>\n  <title>{title}</title>\n </head>\n \
         <body>\n  <h1>{title}</h1>\n </body>\n\
         </html>\n"
    );
    Response::new(status, "text/html", body)
}

/// What to send for one request.
#[derive(Debug)]
struct Reply {
    response: Response,
    /// `Some(limit)` for token PUT responses.
    hop_limit: Option<u8>,
}

impl From<Response> for Reply {
    fn from(response: Response) -> Self {
        Self {
            response,
            hop_limit: None,
        }
    }
}

/// Fake instance credentials, fixed for the life of one mock.
struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
}

struct State {
    config: RwLock<ImdsConfig>,
    /// Issued tokens and when they expire.
    tokens: Mutex<HashMap<String, Instant>>,
    log: Mutex<Vec<ImdsRequest>>,
    next_connection: AtomicU64,
    imds_addrs: Vec<IpAddr>,
    credentials: Credentials,
    started: SystemTime,
}

/// `latest`, `1.0` or a dated version such as `2021-07-15`.
fn is_version(segment: &str) -> bool {
    let dated = segment.len() == 10
        && segment.char_indices().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    segment == "latest" || segment == "1.0" || dated
}

/// Splits `/VERSION/REST` into (`VERSION`, `REST`); `REST` has no leading slash.
fn split_version(path: &str) -> Option<(&str, &str)> {
    let path = path.strip_prefix('/')?;
    let (version, rest) = path.split_once('/').unwrap_or((path, ""));
    is_version(version).then_some((version, rest))
}

fn text(body: impl Into<Vec<u8>>) -> Response {
    Response::new(200, "text/plain", body)
}

fn listing(entries: &[&str]) -> Response {
    text(entries.join("\n"))
}

impl State {
    fn new(config: ImdsConfig, imds_addrs: Vec<IpAddr>) -> Self {
        Self {
            config: RwLock::new(config),
            tokens: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            next_connection: AtomicU64::new(0),
            imds_addrs,
            credentials: Credentials {
                access_key_id: format!("ASIA{}", random_hex(8).to_ascii_uppercase()),
                secret_access_key: base64(&random_bytes(30)),
                session_token: base64(&random_bytes(300)),
            },
            started: SystemTime::now(),
        }
    }

    fn respond(&self, req: &Request, is_imds: bool, now: Instant) -> Reply {
        if !is_imds {
            return error_page(404).into();
        }
        let config = read_lock(&self.config);
        if !config.enabled {
            return error_page(403).into();
        }
        match req.method.as_str() {
            "PUT" => self.put(req, &config, now),
            "GET" | "HEAD" => match self.check_token(req, &config, now) {
                Some(denied) => denied.into(),
                None => self.read(req.path(), &config).into(),
            },
            _ => error_page(405).into(),
        }
    }

    fn put(&self, req: &Request, config: &ImdsConfig, now: Instant) -> Reply {
        let Some((version, "api/token")) = split_version(req.path()) else {
            return error_page(405).into();
        };
        // Dated token paths do not exist, and a forwarded PUT means a proxy
        // (the SSRF path IMDSv2 closes): both are refused.
        let response = if version != "latest" || req.headers.contains("x-forwarded-for") {
            error_page(403)
        } else {
            match req.headers.get(TOKEN_TTL_HEADER).map(str::parse::<u32>) {
                Some(Ok(ttl @ 1..=MAX_TOKEN_TTL_SECS)) => {
                    let token = base64(&random_bytes(42));
                    let mut lifetime = Duration::from_secs(u64::from(ttl));
                    if let Some(max) = config.token_ttl_max {
                        lifetime = lifetime.min(max);
                    }
                    let mut tokens = lock(&self.tokens);
                    tokens.retain(|_, expiry| *expiry > now);
                    tokens.insert(token.clone(), now + lifetime);
                    text(token).with_header(TOKEN_TTL_HEADER, ttl.to_string())
                }
                _ => error_page(400),
            }
        };
        Reply {
            response,
            hop_limit: Some(config.hop_limit),
        }
    }

    /// `Some(401)` when the request may not read metadata.
    fn check_token(&self, req: &Request, config: &ImdsConfig, now: Instant) -> Option<Response> {
        match req.headers.get(TOKEN_HEADER) {
            Some(token) => {
                let valid = lock(&self.tokens)
                    .get(token)
                    .is_some_and(|expiry| *expiry > now);
                (!valid).then(|| error_page(401))
            }
            None => config.tokens_required.then(|| error_page(401)),
        }
    }

    fn read(&self, path: &str, config: &ImdsConfig) -> Response {
        if path == "/" {
            return listing(&["1.0", "2007-01-19", "2021-03-23", "2021-07-15", "latest"]);
        }
        let Some((_, rest)) = split_version(path) else {
            return error_page(404);
        };
        let key = rest.trim_end_matches('/');
        self.lookup(key, config).unwrap_or_else(|| error_page(404))
    }

    fn lookup(&self, key: &str, c: &ImdsConfig) -> Option<Response> {
        let hostname = format!("ip-{}.ec2.internal", c.local_ipv4.replace('.', "-"));
        let response = match key {
            "" => {
                let mut entries = vec!["dynamic", "meta-data"];
                if c.user_data.is_some() {
                    entries.push("user-data");
                }
                listing(&entries)
            }
            "meta-data" => {
                let mut entries = vec![
                    "ami-id",
                    "hostname",
                    "identity-credentials/",
                    "instance-id",
                    "instance-type",
                    "local-hostname",
                    "local-ipv4",
                    "placement/",
                ];
                if c.role_name.is_some() {
                    entries.push("iam/");
                }
                if c.tags.is_some() {
                    entries.push("tags/");
                }
                entries.sort_unstable();
                listing(&entries)
            }
            "meta-data/ami-id" => text(c.ami_id.clone()),
            "meta-data/instance-id" => text(c.instance_id.clone()),
            "meta-data/instance-type" => text(c.instance_type.clone()),
            "meta-data/local-ipv4" => text(c.local_ipv4.clone()),
            "meta-data/hostname" | "meta-data/local-hostname" => text(hostname),
            "meta-data/placement" => listing(&["availability-zone", "region"]),
            "meta-data/placement/availability-zone" => text(c.availability_zone.clone()),
            "meta-data/placement/region" => text(c.region.clone()),
            "meta-data/iam" => {
                c.role_name.as_ref()?;
                listing(&["info", "security-credentials/"])
            }
            "meta-data/iam/info" => {
                let role = c.role_name.as_ref()?;
                let info = json!({
                    "Code": "Success",
                    "LastUpdated": rfc3339(self.started),
                    "InstanceProfileArn":
                        format!("arn:aws:iam::{}:instance-profile/{role}", c.account_id),
                    "InstanceProfileId": "AIPAMOCKINSTANCEPROFILE",
                });
                text(pretty(&info))
            }
            "meta-data/iam/security-credentials" => text(c.role_name.clone()?),
            "meta-data/identity-credentials" => listing(&["ec2/"]),
            "meta-data/identity-credentials/ec2" => listing(&["info", "security-credentials/"]),
            "meta-data/identity-credentials/ec2/security-credentials" => text("ec2-instance"),
            "meta-data/identity-credentials/ec2/security-credentials/ec2-instance" => {
                text(self.credentials_json())
            }
            "meta-data/tags" => {
                c.tags.as_ref()?;
                listing(&["instance"])
            }
            "meta-data/tags/instance" => {
                let keys: Vec<&str> = c.tags.as_ref()?.iter().map(|(k, _)| k.as_str()).collect();
                listing(&keys)
            }
            "user-data" => text(c.user_data.clone()?),
            "dynamic" => listing(&["instance-identity/"]),
            "dynamic/instance-identity" => listing(&["document", "pkcs7", "signature"]),
            "dynamic/instance-identity/document" => {
                let document = json!({
                    "accountId": c.account_id,
                    "architecture": "x86_64",
                    "availabilityZone": c.availability_zone,
                    "billingProducts": null,
                    "devpayProductCodes": null,
                    "marketplaceProductCodes": null,
                    "imageId": c.ami_id,
                    "instanceId": c.instance_id,
                    "instanceType": c.instance_type,
                    "kernelId": null,
                    "pendingTime": rfc3339(self.started),
                    "privateIp": c.local_ipv4,
                    "ramdiskId": null,
                    "region": c.region,
                    "version": "2017-09-30",
                });
                text(pretty(&document))
            }
            "dynamic/instance-identity/pkcs7" | "dynamic/instance-identity/signature" => {
                text(base64(b"imds-sandbox mock signature, not a real one"))
            }
            _ => {
                if let Some(role) = key.strip_prefix("meta-data/iam/security-credentials/") {
                    return (c.role_name.as_deref() == Some(role))
                        .then(|| text(self.credentials_json()));
                }
                if let Some(tag) = key.strip_prefix("meta-data/tags/instance/") {
                    let tags = c.tags.as_ref()?;
                    let value = tags.iter().find(|(k, _)| k == tag)?;
                    return Some(text(value.1.clone()));
                }
                return None;
            }
        };
        Some(response)
    }

    fn credentials_json(&self) -> String {
        let now = SystemTime::now();
        let creds = json!({
            "Code": "Success",
            "LastUpdated": rfc3339(now),
            "Type": "AWS-HMAC",
            "AccessKeyId": self.credentials.access_key_id,
            "SecretAccessKey": self.credentials.secret_access_key,
            "Token": self.credentials.session_token,
            "Expiration": rfc3339(now + Duration::from_secs(6 * 3600)),
        });
        pretty(&creds)
    }
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(config: ImdsConfig) -> State {
        State::new(config, vec![IpAddr::from([169, 254, 169, 254])])
    }

    fn request(raw: &str) -> Request {
        parse_request(raw.as_bytes())
            .expect("valid request")
            .expect("complete request")
            .0
    }

    fn get_token(s: &State, now: Instant) -> String {
        let put =
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n";
        let reply = s.respond(&request(put), true, now);
        assert_eq!(reply.response.status, 200);
        reply.response.body_text()
    }

    #[test]
    fn versions_are_recognised() {
        assert_eq!(
            split_version("/latest/meta-data/"),
            Some(("latest", "meta-data/"))
        );
        assert_eq!(
            split_version("/2021-07-15/user-data"),
            Some(("2021-07-15", "user-data"))
        );
        assert_eq!(split_version("/1.0"), Some(("1.0", "")));
        assert_eq!(split_version("/2021-7-15/x"), None);
        assert_eq!(split_version("/foo/x"), None);
        assert_eq!(split_version("latest/x"), None);
    }

    #[test]
    fn token_put_rules() {
        let s = state(ImdsConfig {
            hop_limit: 2,
            ..ImdsConfig::default()
        });
        let now = Instant::now();
        let status = |raw: &str| {
            let reply = s.respond(&request(raw), true, now);
            assert_eq!(
                reply.hop_limit,
                Some(2),
                "PUT responses carry the hop limit"
            );
            reply.response.status
        };
        let ok =
            "PUT /latest/api/token HTTP/1.1\r\nx-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n";
        assert_eq!(status(ok), 200);
        let missing = "PUT /latest/api/token HTTP/1.1\r\n\r\n";
        assert_eq!(status(missing), 400);
        // The token header is not the TTL header even though it is its prefix.
        let prefix_only = "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token: 5\r\n\r\n";
        assert_eq!(status(prefix_only), 400);
        for bad in ["0", "21601", "-1", "abc", ""] {
            let raw = format!(
                "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: {bad}\r\n\r\n"
            );
            assert_eq!(status(&raw), 400, "ttl {bad:?}");
        }
        let dated = "PUT /2021-03-23/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n";
        assert_eq!(status(dated), 403);
        let xff = "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n";
        assert_eq!(status(xff), 403);
    }

    #[test]
    fn tokens_optional_and_required() {
        let s = state(ImdsConfig::default());
        let now = Instant::now();
        let token = get_token(&s, now);
        assert_eq!(token.len(), 56);
        let v1 = request("GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n");
        assert_eq!(s.respond(&v1, true, now).response.status, 200);
        let bad = request(
            "GET /latest/meta-data/instance-id HTTP/1.1\r\nX-aws-ec2-metadata-token: nope\r\n\r\n",
        );
        assert_eq!(s.respond(&bad, true, now).response.status, 401);
        let v2 = request(&format!(
            "GET /latest/meta-data/instance-id HTTP/1.1\r\nx-aws-ec2-metadata-token: {token}\r\n\r\n"
        ));
        let reply = s.respond(&v2, true, now);
        assert_eq!(reply.response.status, 200);
        assert_eq!(reply.hop_limit, None);
        assert_eq!(reply.response.body_text(), "i-0123456789abcdef0");

        s.config.write().unwrap().tokens_required = true;
        let denied = s.respond(&v1, true, now).response;
        assert_eq!(denied.status, 401);
        assert!(
            denied
                .body_text()
                .contains("<title>401 - Unauthorized</title>")
        );
        assert_eq!(s.respond(&v2, true, now).response.status, 200);
    }

    #[test]
    fn tokens_expire() {
        let s = state(ImdsConfig::default());
        let now = Instant::now();
        let token = get_token(&s, now);
        let v2 = request(&format!(
            "GET /latest/meta-data/ HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"
        ));
        assert_eq!(
            s.respond(&v2, true, now + Duration::from_secs(59))
                .response
                .status,
            200
        );
        assert_eq!(
            s.respond(&v2, true, now + Duration::from_secs(60))
                .response
                .status,
            401
        );
    }

    #[test]
    fn token_ttl_max_caps_lifetime() {
        let cap = Duration::from_millis(100);
        let s = state(ImdsConfig {
            token_ttl_max: Some(cap),
            ..ImdsConfig::default()
        });
        let now = Instant::now();
        let token = get_token(&s, now);
        let v2 = request(&format!(
            "GET /latest/meta-data/ HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"
        ));
        assert_eq!(s.respond(&v2, true, now + cap / 2).response.status, 200);
        assert_eq!(s.respond(&v2, true, now + cap).response.status, 401);
    }

    #[test]
    fn routes_metadata_paths() {
        let s = state(ImdsConfig::default());
        let now = Instant::now();
        let get = |path: &str| {
            let r = s
                .respond(&request(&format!("GET {path} HTTP/1.1\r\n\r\n")), true, now)
                .response;
            (r.status, r.body_text())
        };
        assert_eq!(
            get("/latest/meta-data/instance-id").1,
            "i-0123456789abcdef0"
        );
        assert_eq!(get("/2021-07-15/meta-data/instance-id").0, 200);
        assert_eq!(get("/1.0/meta-data/instance-id").0, 200);
        assert!(get("/latest/meta-data/").1.contains("iam/"));
        assert_eq!(
            get("/latest/meta-data/iam/security-credentials/").1,
            "imds-sandbox-role"
        );
        let creds = get("/latest/meta-data/iam/security-credentials/imds-sandbox-role");
        let creds: serde_json::Value = serde_json::from_str(&creds.1).unwrap();
        assert!(creds["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));
        assert!(creds["SecretAccessKey"].is_string() && creds["Token"].is_string());
        assert_eq!(
            get("/latest/meta-data/iam/security-credentials/other").0,
            404
        );
        assert_eq!(get("/latest/meta-data/tags/instance").1, "Name\nteam");
        assert_eq!(get("/latest/meta-data/tags/instance/team").1, "security");
        assert_eq!(get("/latest/meta-data/tags/instance/nope").0, 404);
        assert!(get("/latest/user-data").1.starts_with("#!/bin/bash"));
        let doc = get("/latest/dynamic/instance-identity/document").1;
        let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(doc["instanceId"], "i-0123456789abcdef0");
        assert_eq!(get("/latest/nothing-here").0, 404);
        assert_eq!(get("/v9/meta-data/").0, 404);
        assert!(get("/").1.contains("latest"));
    }

    #[test]
    fn head_other_methods_and_other_endpoints() {
        let s = state(ImdsConfig::default());
        let now = Instant::now();
        let head = request("HEAD /latest/meta-data/instance-id HTTP/1.1\r\n\r\n");
        assert_eq!(s.respond(&head, true, now).response.status, 200);
        let post = request("POST /latest/meta-data/ HTTP/1.1\r\nContent-Length: 2\r\n\r\nab");
        assert_eq!(s.respond(&post, true, now).response.status, 405);
        let put = request("PUT /latest/meta-data/ HTTP/1.1\r\n\r\n");
        assert_eq!(s.respond(&put, true, now).response.status, 405);
        let get = request("GET /latest/meta-data/ HTTP/1.1\r\n\r\n");
        assert_eq!(s.respond(&get, false, now).response.status, 404);
        s.config.write().unwrap().enabled = false;
        assert_eq!(s.respond(&get, true, now).response.status, 403);
    }

    #[test]
    fn disabled_features_404() {
        let s = state(ImdsConfig {
            role_name: None,
            user_data: None,
            tags: None,
            ..ImdsConfig::default()
        });
        let now = Instant::now();
        for path in [
            "/latest/meta-data/iam/security-credentials/",
            "/latest/user-data",
            "/latest/meta-data/tags/instance",
        ] {
            let r = s.respond(&request(&format!("GET {path} HTTP/1.1\r\n\r\n")), true, now);
            assert_eq!(r.response.status, 404, "{path}");
        }
    }

    #[test]
    fn error_page_is_xhtml() {
        let page = error_page(401).body_text();
        assert!(page.starts_with("<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>"));
        assert!(page.contains("<title>401 - Unauthorized</title>"));
        assert!(page.contains("<h1>401 - Unauthorized</h1>"));
        assert_eq!(
            error_page(404).headers.get("content-type"),
            Some("text/html")
        );
    }
}
