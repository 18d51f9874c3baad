//! Where JSON lines go: stdout, or a file rotated by size and reopened on
//! SIGHUP (so logrotate's move-and-signal works too).

use std::{
    fs::{self, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use file_rotate::{ContentLimit, FileRotate, compression::Compression, suffix::AppendCount};
use serde_json::Value;

#[derive(Clone, Copy, Debug)]
pub struct Rotation {
    pub max_bytes: usize,
    pub keep: usize,
}

pub enum Sink {
    Stdout(io::Stdout),
    File {
        path: PathBuf,
        rotation: Rotation,
        file: Box<FileRotate<AppendCount>>,
    },
}

impl Sink {
    pub fn open(path: Option<&Path>, rotation: Rotation) -> Result<Self> {
        match path {
            None => Ok(Self::Stdout(io::stdout())),
            Some(path) => Ok(Self::File {
                path: path.to_owned(),
                rotation,
                file: Box::new(open_rotating(path, rotation)?),
            }),
        }
    }

    /// Writes a batch of whole lines in one write, so rotation never splits a line.
    pub fn write_batch(&mut self, lines: &[u8]) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        match self {
            Self::Stdout(out) => {
                let mut out = out.lock();
                out.write_all(lines)?;
                out.flush()
            }
            Self::File { file, .. } => {
                file.write_all(lines)?;
                file.flush()
            }
        }
    }

    pub fn write_value(&mut self, value: &Value) -> io::Result<()> {
        let mut line = serde_json::to_vec(value)?;
        line.push(b'\n');
        self.write_batch(&line)
    }

    /// Reopens the file by name (after logrotate moved it). On failure the old
    /// file stays in use and the error says why.
    pub fn reopen(&mut self) -> Result<()> {
        if let Self::File {
            path,
            rotation,
            file,
        } = self
        {
            **file = open_rotating(path, *rotation)?;
        }
        Ok(())
    }
}

/// Opens (creating) the file and its directory first, with errors that name
/// the path; file-rotate itself would panic or drop writes silently.
fn open_rotating(path: &Path, rotation: Rotation) -> Result<FileRotate<AppendCount>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("opening {} for appending", path.display()))?;
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    Ok(FileRotate::new(
        path,
        AppendCount::new(rotation.keep),
        ContentLimit::BytesSurpassed(rotation.max_bytes),
        Compression::OnRotate(1),
        Some(options),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("imds-sink-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn appends_rotates_by_size_and_keeps_lines_whole() {
        let dir = temp_dir("rotate");
        let path = dir.join("events.json");
        fs::create_dir_all(&dir).unwrap();
        fs::write(&path, "{\"old\":1}\n").unwrap();
        let mut sink = Sink::open(
            Some(&path),
            Rotation {
                max_bytes: 100,
                keep: 3,
            },
        )
        .unwrap();
        for i in 0..20 {
            sink.write_value(&serde_json::json!({ "n": i, "pad": "xxxxxxxxxxxxxxxxxxxx" }))
                .unwrap();
        }
        let current = fs::read_to_string(&path).unwrap();
        assert!(current.ends_with('\n'));
        for line in current.lines() {
            serde_json::from_str::<Value>(line).expect("whole JSON line");
        }
        assert!(dir.join("events.json.1").exists(), "rotated once at least");
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
        let mut sink = Sink::open(
            Some(&path),
            Rotation {
                max_bytes: 1 << 20,
                keep: 2,
            },
        )
        .unwrap();
        sink.write_value(&serde_json::json!({"a": 1})).unwrap();
        fs::rename(&path, dir.join("moved.json")).unwrap();
        sink.reopen().unwrap();
        sink.write_value(&serde_json::json!({"b": 2})).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"b\":2}\n");
        assert_eq!(
            fs::read_to_string(dir.join("moved.json")).unwrap(),
            "{\"a\":1}\n"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn unwritable_path_is_a_clear_error() {
        let err = Sink::open(
            Some(Path::new("/proc/imds-monitor/x.json")),
            Rotation {
                max_bytes: 1,
                keep: 1,
            },
        )
        .err()
        .unwrap();
        assert!(format!("{err:#}").contains("/proc/imds-monitor"), "{err:#}");
    }
}
