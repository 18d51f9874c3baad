//! Where JSON lines go: stdout, or a file rotated by size and reopened on
//! SIGHUP (so logrotate's move-and-signal works too).
//!
//! A [`Sink`] only writes; faults are the writer's business (`writer.rs`):
//! a failed write leaves no torn line behind in a file (it is cut back to
//! where the batch began) and resumes where it stopped on stdout, so a retry
//! writes each line exactly once.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::{fd::AsFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};
use flate2::{Compression, write::GzEncoder};

use super::queue::Line;

#[derive(Clone, Copy, Debug)]
pub struct Rotation {
    pub max_bytes: u64,
    pub keep: usize,
}

pub enum Sink {
    Stdout(Stdout),
    File(FileSink),
}

/// stdout, written with write(2) directly (no buffer in between), so a
/// partial write is known to the byte.
#[derive(Debug, Default)]
pub struct Stdout {
    /// Bytes of the current batch already written by an attempt that failed.
    done: usize,
}

pub struct FileSink {
    path: PathBuf,
    rotation: Rotation,
    file: File,
    /// Bytes in the current file.
    size: u64,
    /// Device and inode of the file we write: the path is checked against
    /// them before each write, so a file (or directory) removed under us is
    /// made again instead of written into the void.
    id: (u64, u64),
}

impl Sink {
    /// Opens the output: stdout for `None`. A path that cannot be written
    /// is refused here, before anything is attached, with the reason.
    pub fn open(path: Option<&Path>, rotation: Rotation) -> Result<Self> {
        match path {
            None => Ok(Self::Stdout(Stdout::default())),
            Some(path) => Ok(Self::File(FileSink::open(path, rotation)?)),
        }
    }

    /// `-` for stdout, else the path: how the output is named in messages.
    pub fn name(&self) -> String {
        match self {
            Self::Stdout(_) => "stdout".into(),
            Self::File(f) => f.path.display().to_string(),
        }
    }

    /// Writes whole lines (each ends in a newline). On error, retrying with
    /// the same lines writes each exactly once.
    pub fn write_lines(&mut self, lines: &[Line]) -> io::Result<()> {
        match self {
            Self::Stdout(out) => out.write_lines(lines),
            Self::File(file) => file.write_lines(lines),
        }
    }

    /// Reopens the file by name (after logrotate moved it). On failure the
    /// old file stays in use and the error says why.
    pub fn reopen(&mut self) -> Result<()> {
        if let Self::File(file) = self {
            *file = FileSink::open(&file.path, file.rotation)?;
        }
        Ok(())
    }

    /// Whether `err` means that nothing written here can ever be read:
    /// stdout's reader is gone (EPIPE).
    pub fn is_closed(&self, err: &io::Error) -> bool {
        matches!(self, Self::Stdout(_)) && err.kind() == io::ErrorKind::BrokenPipe
    }

    /// After a failed write, whether the next write resumes inside a line
    /// (stdout only: a file is cut back to the last whole line).
    pub fn mid_line(&self) -> bool {
        matches!(self, Self::Stdout(out) if out.done > 0)
    }
}

impl Stdout {
    fn write_lines(&mut self, lines: &[Line]) -> io::Result<()> {
        let stdout = io::stdout();
        let fd = stdout.as_fd();
        let mut skip = self.done;
        for line in lines {
            let mut rest: &[u8] = &line.bytes;
            if skip >= rest.len() {
                skip -= rest.len();
                continue;
            }
            rest = &rest[skip..];
            skip = 0;
            while !rest.is_empty() {
                match nix::unistd::write(fd, rest) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.done += n;
                        rest = &rest[n..];
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.done = 0;
        Ok(())
    }
}

impl FileSink {
    fn open(path: &Path, rotation: Rotation) -> Result<Self> {
        check_output_path(path)?;
        if let Some(dir) = parent(path) {
            fs::create_dir_all(dir)
                .map_err(|e| refusal(path, &format!("creating {}", dir.display()), &e))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| refusal(path, "opening it for appending", &e))?;
        let meta = file
            .metadata()
            .map_err(|e| refusal(path, "reading its size", &e))?;
        if !meta.is_file() {
            bail!(
                "--output {}: not a regular file; name a file (e.g. /var/log/imds-monitor/events.json) or - for stdout",
                path.display()
            );
        }
        Ok(Self {
            path: path.to_owned(),
            rotation,
            file,
            size: meta.len(),
            id: (meta.dev(), meta.ino()),
        })
    }

    fn write_lines(&mut self, lines: &[Line]) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        self.follow_path()?;
        if self.size > self.rotation.max_bytes {
            self.rotate()?;
        }
        let start = self.size;
        let result = lines
            .iter()
            .try_for_each(|line| self.file.write_all(&line.bytes));
        match result {
            Ok(()) => {
                self.size += lines.iter().map(|l| l.bytes.len() as u64).sum::<u64>();
                Ok(())
            }
            Err(e) => {
                // No torn line: cut the file back to where this batch began.
                if let Err(cut) = self.file.set_len(start) {
                    log::warn!(
                        "{}: cutting a partly written batch back to {start} bytes: {cut}",
                        self.path.display()
                    );
                }
                Err(e)
            }
        }
    }

    /// Makes the file (and its directory) again if either was removed,
    /// and follows the path if another file took its place.
    fn follow_path(&mut self) -> io::Result<()> {
        let same = fs::metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.id)
            .unwrap_or(false);
        if same {
            return Ok(());
        }
        *self = Self::open(&self.path, self.rotation)
            .map_err(|e| io::Error::other(format!("{e:#}")))?;
        log::info!(
            "{} was removed or replaced: writing to {} again",
            self.path.display(),
            self.path.display()
        );
        Ok(())
    }

    /// `events.json` -> `.1` -> `.2.gz` ... `.KEEP.gz`; older ones are removed.
    fn rotate(&mut self) -> io::Result<()> {
        rotate_files(&self.path, self.rotation.keep)?;
        *self = Self::open(&self.path, self.rotation)
            .map_err(|e| io::Error::other(format!("{e:#}")))?;
        Ok(())
    }
}

fn parent(path: &Path) -> Option<&Path> {
    path.parent().filter(|d| !d.as_os_str().is_empty())
}

fn numbered(path: &Path, n: usize, gz: bool) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}{}", if gz { ".gz" } else { "" }));
    PathBuf::from(name)
}

/// Shifts the rotated files up by one, moves the current one to `.1` and
/// compresses `.2` (the newest rotated file stays plain). Every error is
/// returned: a failed compression leaves `.2` uncompressed, never a
/// truncated `.2.gz` in place of it.
fn rotate_files(path: &Path, keep: usize) -> io::Result<()> {
    for gz in [false, true] {
        remove_if_present(&numbered(path, keep, gz))?;
    }
    for n in (1..keep).rev() {
        for gz in [false, true] {
            let from = numbered(path, n, gz);
            if from.exists() {
                fs::rename(&from, numbered(path, n + 1, gz))?;
            }
        }
    }
    fs::rename(path, numbered(path, 1, false))?;
    let second = numbered(path, 2, false);
    if keep >= 2 && second.exists() {
        compress(&second, &numbered(path, 2, true))?;
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn compress(from: &Path, to: &Path) -> io::Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", to.display()));
    let result = (|| {
        let mut encoder = GzEncoder::new(File::create(&tmp)?, Compression::default());
        io::copy(&mut File::open(from)?, &mut encoder)?;
        encoder.finish()?.sync_all()?;
        fs::rename(&tmp, to)?;
        fs::remove_file(from)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Refuses an `--output` path whose directory part is not a directory,
/// naming the component at fault (`creating /dev/null: File exists` said
/// nothing about what was wrong).
fn check_output_path(path: &Path) -> Result<()> {
    if path.as_os_str().as_encoded_bytes().ends_with(b"/") || path.is_dir() {
        bail!(
            "--output {}: is a directory; name a file in it, e.g. {}",
            path.display(),
            path.join("events.json").display()
        );
    }
    let mut dir = parent(path);
    while let Some(d) = dir {
        match fs::metadata(d) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => bail!(
                "--output {}: {} is not a directory",
                path.display(),
                d.display()
            ),
            // Missing, or below a file: the culprit is further up.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                dir = parent(d)
            }
            // Permission and the like: opening says it with the path.
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// `--output PATH: WHAT: REASON`, the reason in words and with a hint.
fn refusal(path: &Path, what: &str, err: &io::Error) -> anyhow::Error {
    let hint = match err.kind() {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        io::ErrorKind::PermissionDenied if unsafe { libc::geteuid() } == 0 => {
            " (not even root may write there: choose another directory)"
        }
        io::ErrorKind::PermissionDenied => {
            " (run as root, or choose a directory this user can write)"
        }
        io::ErrorKind::ReadOnlyFilesystem => " (choose a writable file system)",
        io::ErrorKind::StorageFull => " (free space, or choose another file system)",
        _ => "",
    };
    anyhow::anyhow!(
        "--output {}: {what}: {}{hint}",
        path.display(),
        io_reason(err)
    )
}

/// An I/O error in words: `permission denied`, not `Permission denied (os error 13)`.
pub fn io_reason(err: &io::Error) -> String {
    let text = err.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("imds-sink-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn line(value: serde_json::Value) -> Line {
        let mut text = serde_json::to_vec(&value).unwrap();
        text.push(b'\n');
        Line {
            bytes: Bytes::from(text),
            request: false,
        }
    }

    fn rotation(max_bytes: u64, keep: usize) -> Rotation {
        Rotation { max_bytes, keep }
    }

    #[test]
    fn appends_rotates_by_size_and_keeps_lines_whole() {
        let dir = temp_dir("rotate");
        let path = dir.join("events.json");
        fs::create_dir_all(&dir).unwrap();
        fs::write(&path, "{\"old\":1}\n").unwrap();
        let mut sink = Sink::open(Some(&path), rotation(100, 3)).unwrap();
        for i in 0..20 {
            sink.write_lines(&[line(
                serde_json::json!({ "n": i, "pad": "xxxxxxxxxxxxxxxxxxxx" }),
            )])
            .unwrap();
        }
        let current = fs::read_to_string(&path).unwrap();
        assert!(current.ends_with('\n'));
        for line in current.lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("whole JSON line");
        }
        assert!(dir.join("events.json.1").exists(), "rotated once at least");
        assert!(dir.join("events.json.2.gz").exists(), "older ones gzipped");
        assert!(!dir.join("events.json.2").exists());
        assert!(
            !dir.join("events.json.4").exists() && !dir.join("events.json.4.gz").exists(),
            "keeps 3"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn reopen_follows_a_moved_file() {
        let dir = temp_dir("reopen");
        let path = dir.join("events.json");
        let mut sink = Sink::open(Some(&path), rotation(1 << 20, 2)).unwrap();
        sink.write_lines(&[line(serde_json::json!({"a": 1}))])
            .unwrap();
        fs::rename(&path, dir.join("moved.json")).unwrap();
        sink.reopen().unwrap();
        sink.write_lines(&[line(serde_json::json!({"b": 2}))])
            .unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"b\":2}\n");
        assert_eq!(
            fs::read_to_string(dir.join("moved.json")).unwrap(),
            "{\"a\":1}\n"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_removed_directory_is_made_again_and_nothing_is_lost() {
        let dir = temp_dir("vanished");
        let path = dir.join("logs/events.json");
        let mut sink = Sink::open(Some(&path), rotation(1 << 20, 2)).unwrap();
        sink.write_lines(&[line(serde_json::json!({"a": 1}))])
            .unwrap();
        fs::remove_dir_all(&dir).unwrap();
        sink.write_lines(&[line(serde_json::json!({"b": 2}))])
            .unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"b\":2}\n");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_directory_that_cannot_be_made_again_is_a_write_error() {
        let dir = temp_dir("blocked");
        let path = dir.join("logs/events.json");
        let mut sink = Sink::open(Some(&path), rotation(1 << 20, 2)).unwrap();
        fs::remove_dir_all(dir.join("logs")).unwrap();
        fs::write(dir.join("logs"), "a file where the directory was").unwrap();
        let err = sink
            .write_lines(&[line(serde_json::json!({"a": 1}))])
            .unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
        fs::remove_file(dir.join("logs")).unwrap();
        sink.write_lines(&[line(serde_json::json!({"b": 2}))])
            .unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"b\":2}\n");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn output_path_refusals_name_the_path_and_the_reason() {
        let err = |p: &str| {
            format!(
                "{:#}",
                Sink::open(Some(Path::new(p)), rotation(1, 1))
                    .err()
                    .unwrap()
            )
        };
        assert_eq!(
            err("/dev/null/events.json"),
            "--output /dev/null/events.json: /dev/null is not a directory"
        );
        assert_eq!(
            err("/dev/null/a/b/events.json"),
            "--output /dev/null/a/b/events.json: /dev/null is not a directory"
        );
        let e = err("/tmp");
        assert!(e.starts_with("--output /tmp: is a directory"), "{e}");
        let e = err("/proc/imds-monitor/x.json");
        assert!(
            e.starts_with("--output /proc/imds-monitor/x.json: creating /proc/imds-monitor: "),
            "{e}"
        );
        assert!(!e.contains("os error"), "{e}");
    }

    #[test]
    fn io_reasons_read_as_words() {
        let e = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(io_reason(&e), "permission denied");
        let e = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(io_reason(&e), "no space left on device");
    }
}
