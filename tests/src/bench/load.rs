//! Load generators. Every packet starts inside the sandbox: IMDS requests
//! from `imds-client` processes spawned into the host namespace, bulk TCP
//! from a thread that entered the host namespace, towards a sink in the IMDS
//! namespace. Nothing is sent from the machine's own namespace.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use imds_sandbox::client::in_sandbox_netns;
use imds_sandbox::topology::IMDS_GW_V4;
use imds_sandbox::{ClientOutput, NetNs, Place, Sandbox};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, setns};

/// Limit for connecting, each write and each read of the bulk traffic.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP server that reads and discards, on the IMDS namespace's side of the
/// host link (198.18.0.1): traffic to it leaves the host's `eth0` like any
/// non-IMDS traffic, so the classifier sees it and must let it pass cheaply.
pub struct TcpSink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl TcpSink {
    pub fn start(netns: &NetNs) -> Result<Self> {
        let fd = netns.open()?;
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<SocketAddr>>();
        let thread = {
            let (stop, received) = (stop.clone(), received.clone());
            std::thread::Builder::new()
                .name("bench-sink".to_owned())
                .spawn(move || {
                    // setns changes only this thread: the listener lives in
                    // the IMDS namespace.
                    let bound = setns(&fd, CloneFlags::CLONE_NEWNET)
                        .context("cannot enter the IMDS namespace")
                        .and_then(|()| {
                            let l = TcpListener::bind((IMDS_GW_V4, 0))?;
                            l.set_nonblocking(true)?;
                            Ok(l)
                        });
                    match bound {
                        Ok(listener) => {
                            let addr = listener.local_addr().map_err(Into::into);
                            let _ = ready_tx.send(addr);
                            serve(&listener, &stop, &received);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })
                .context("cannot spawn the sink thread")?
        };
        let addr = ready_rx
            .recv()
            .map_err(|_| anyhow!("the sink thread died while starting"))??;
        Ok(Self {
            addr,
            stop,
            received,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for TcpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts one connection at a time (the sender is sequential) and reads it
/// to the end; checks the stop flag every 50 ms.
fn serve(listener: &TcpListener, stop: &AtomicBool, received: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(50u8)).is_err() {
            continue; // EINTR
        }
        while let Ok((mut stream, _)) = listener.accept() {
            if stream.set_nonblocking(false).is_err()
                || stream.set_read_timeout(Some(IO_TIMEOUT)).is_err()
            {
                continue;
            }
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
    }
}

/// Bulk TCP shape: `connections` one after the other, each `writes` writes
/// of `write_size` bytes with `TCP_NODELAY`, so that most writes leave as a
/// segment of their own (packets of a typical size, not 64 KiB GSO bursts).
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    pub connections: usize,
    pub writes: usize,
    pub write_size: usize,
}

/// Sends `bulk` to the sink from a thread in the sandbox's host namespace;
/// returns the bytes sent.
pub fn send_bulk(sandbox: &Sandbox, sink: &TcpSink, bulk: Bulk) -> Result<u64> {
    let dest = sink.addr();
    // The sink is bound in the IMDS namespace; only ever aim there.
    ensure!(
        dest.ip() == IpAddr::V4(IMDS_GW_V4),
        "bulk traffic must go to the sandbox's {IMDS_GW_V4}, not {dest}"
    );
    sandbox.run_in_host_netns(move || -> Result<u64> {
        ensure!(
            in_sandbox_netns()?,
            "refusing to send bulk traffic outside a sandbox namespace"
        );
        let chunk = vec![0x5au8; bulk.write_size];
        let mut sent = 0u64;
        let mut rest = [0u8; 64];
        for _ in 0..bulk.connections {
            let mut s = TcpStream::connect_timeout(&dest, IO_TIMEOUT)
                .with_context(|| format!("cannot connect to the sink {dest}"))?;
            s.set_nodelay(true)?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            for _ in 0..bulk.writes {
                s.write_all(&chunk).context("writing to the sink")?;
                sent += chunk.len() as u64;
            }
            s.shutdown(std::net::Shutdown::Write)?;
            // Wait for the sink's close, so connections do not overlap.
            while s.read(&mut rest).context("waiting for the sink to close")? > 0 {}
        }
        Ok(sent)
    })?
}

/// What a set of `imds-client` processes did.
#[derive(Debug)]
pub struct ClientsRun {
    pub outputs: Vec<ClientOutput>,
    /// From spawning the first to the exit of the last.
    pub elapsed: Duration,
}

impl ClientsRun {
    /// One line per client that did not exit 0.
    pub fn failures(&self) -> Vec<String> {
        self.outputs
            .iter()
            .filter(|o| !o.success())
            .map(|o| {
                format!(
                    "exit {:?}: {}",
                    o.exit_code,
                    o.stderr.lines().last().unwrap_or_default()
                )
            })
            .collect()
    }

    /// Fails unless every client exited 0.
    pub fn check(self) -> Result<Self> {
        let failures = self.failures();
        if !failures.is_empty() {
            bail!("imds-client failed: {}", failures.join("; "));
        }
        Ok(self)
    }
}

/// Runs one `imds-client` per entry of `jobs`, all at once, at `place`.
pub fn run_clients(sandbox: &Sandbox, place: &Place, jobs: &[Vec<String>]) -> Result<ClientsRun> {
    let start = Instant::now();
    let outputs = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|args| {
                scope.spawn(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    sandbox.imds_client(place, &args)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("client thread panicked")))
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(ClientsRun {
        outputs,
        elapsed: start.elapsed(),
    })
}

/// Arguments of one client job.
pub fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}
