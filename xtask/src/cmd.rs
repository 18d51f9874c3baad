//! Running commands: print each step as `$ cmd args` before it runs, stream
//! its output, and turn a failure into an error that carries the exit code.

use std::ffi::OsStr;
use std::fmt;
use std::io::{self, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::atomic::{AtomicBool, Ordering};

/// A command that exited unsuccessfully. `main` exits with `code`, so the exit
/// code of a failing step is the exit code of `cargo xtask`.
#[derive(Debug)]
pub struct Failed {
    pub what: String,
    pub code: i32,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed with exit code {}", self.what, self.code)
    }
}

impl std::error::Error for Failed {}

/// Exit with this code without printing anything more: the failure has
/// already been reported.
#[derive(Debug)]
pub struct Silent(pub i32);

impl fmt::Display for Silent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for Silent {}

/// The exit code a shell would report for `status`: the code, or 128 + signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Quotes `s` for a POSIX shell when it needs it, so printed commands can be
/// copied and pasted.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `Command` as a shell line: explicitly set environment variables first,
/// then the program and its arguments. PATH is left out: [`cargo`] only
/// appends the cargo home's bin directory to it.
pub fn display(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter(|(k, _)| *k != "PATH")
        .filter_map(|(k, v)| {
            v.map(|v| {
                format!(
                    "{}={}",
                    k.to_string_lossy(),
                    shell_quote(&v.to_string_lossy())
                )
            })
        })
        .collect();
    parts.push(shell_quote(&cmd.get_program().to_string_lossy()));
    parts.extend(cmd.get_args().map(|a| shell_quote(&a.to_string_lossy())));
    parts.join(" ")
}

/// Prints the command line the way a user would type it.
pub fn announce(cmd: &Command) {
    let mut line = format!("$ {}", display(cmd));
    let here = std::env::current_dir().ok();
    if let Some(dir) = cmd
        .get_current_dir()
        .filter(|d| Some(*d) != here.as_deref())
    {
        line.push_str(&format!("    (in {})", dir.display()));
    }
    // stderr: the stdout of `demo --json` and `run` stays the program's own.
    eprintln!("{line}");
    let _ = io::stdout().flush();
}

/// Prints `cmd`, runs it with inherited stdio and returns its exit status.
pub fn status(cmd: &mut Command) -> anyhow::Result<ExitStatus> {
    announce(cmd);
    let status = cmd
        .status()
        .map_err(|e| spawn_error(cmd.get_program(), e))?;
    Ok(status)
}

/// Prints `cmd`, runs it and fails (keeping its exit code) unless it succeeds.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = status(cmd)?;
    check(cmd, status)
}

/// Turns an unsuccessful `status` of `cmd` into [`Failed`].
pub fn check(cmd: &Command, status: ExitStatus) -> anyhow::Result<()> {
    if status.success() {
        Ok(())
    } else {
        Err(Failed {
            what: display(cmd),
            code: exit_code(status),
        }
        .into())
    }
}

/// Runs `cmd` silently (a probe, not a step) and returns its output, or
/// `None` when the program cannot be started at all.
pub fn probe(cmd: &mut Command) -> Option<Output> {
    cmd.stdin(std::process::Stdio::null()).output().ok()
}

/// Stdout of a silent probe when it exits successfully.
pub fn probe_stdout(cmd: &mut Command) -> Option<String> {
    probe(cmd)
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn spawn_error(program: &OsStr, e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::NotFound {
        anyhow::anyhow!(
            "`{}` not found in PATH; run `cargo xtask setup` or install it",
            program.to_string_lossy()
        )
    } else {
        anyhow::anyhow!("cannot start `{}`: {e}", program.to_string_lossy())
    }
}

/// The first executable named `name` in `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C goes to the whole foreground process group: let the child handle
/// it and exit, and report the child's exit code, instead of dying first and
/// leaving the child behind. A handler (unlike SIG_IGN) is reset by exec, so
/// children still get the default behaviour.
pub fn install_sigint_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe;
    // the sigaction struct is fully initialised before use.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigint as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
}

/// Whether Ctrl-C was pressed since start; loops that wait check it.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The cargo workspace root (parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// `cargo`, run from the workspace root. If the cargo home's bin directory
/// (where `cargo install` put bpf-linker) is not in PATH, it is appended, so
/// aya-build finds bpf-linker.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    let bin = crate::setup::cargo_home().join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    if bin.is_dir() && !std::env::split_paths(&path).any(|p| p == bin) {
        let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        dirs.push(bin);
        if let Ok(joined) = std::env::join_paths(dirs) {
            cmd.env("PATH", joined);
        }
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--features"), "--features");
        assert_eq!(shell_quote("llvm-22"), "llvm-22");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn display_shows_env_then_args() {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "curl"]);
        assert_eq!(
            display(&cmd),
            "DEBIAN_FRONTEND=noninteractive apt-get install -y curl"
        );
    }

    #[test]
    fn failed_keeps_exit_code() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 7"]);
        let status = cmd.status().unwrap();
        let err = check(&cmd, status).unwrap_err();
        let failed = err.downcast_ref::<Failed>().unwrap();
        assert_eq!(failed.code, 7);
    }
}
