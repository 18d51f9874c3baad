//! Where events come from: files (plain, rotated, gzip-compressed) or stdin,
//! read line by line.

use std::{
    fmt,
    fs::File,
    io::{self, BufRead, BufReader, Read},
    path::PathBuf,
};

use flate2::read::MultiGzDecoder;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// One input named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    pub fn from_arg(arg: PathBuf) -> Self {
        if arg.as_os_str() == "-" {
            Self::Stdin
        } else {
            Self::File(arg)
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdin => f.write_str("stdin"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// An input that could not be opened or read to its end.
#[derive(Debug)]
pub struct ReadError {
    pub input: Input,
    pub error: io::Error,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot read {}: {}", self.input, self.error)
    }
}

/// Opens an input. Files are opened here, before any is read, so a typo in
/// the last name fails in a second rather than after gigabytes.
pub fn open(input: &Input) -> Result<Box<dyn Read>, ReadError> {
    match input {
        Input::Stdin => Ok(Box::new(io::stdin())),
        Input::File(path) => match File::open(path) {
            Ok(file) => Ok(Box::new(file)),
            Err(error) => Err(ReadError {
                input: input.clone(),
                error,
            }),
        },
    }
}

/// Decompresses what starts with the gzip magic bytes, whatever its name:
/// rotated files are renamed and piped archives have no name at all.
pub fn decompressed(mut raw: impl Read + 'static) -> io::Result<Box<dyn BufRead>> {
    let mut head = [0u8; 2];
    let mut len = 0;
    // A pipe may hand over one byte at a time.
    while len < head.len() {
        match raw.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let whole = io::Cursor::new(head[..len].to_vec()).chain(raw);
    Ok(if head[..len] == GZIP_MAGIC {
        // Multi-member: `cat a.gz b.gz` and some compressors write several.
        Box::new(BufReader::new(MultiGzDecoder::new(whole)))
    } else {
        Box::new(BufReader::with_capacity(1 << 16, whole))
    })
}

/// Calls `f` with each line (1-based number, bytes without the line end).
/// Bytes, not `str`: a line that is not UTF-8 is a malformed line, not a
/// read error.
pub fn for_each_line(mut reader: impl BufRead, mut f: impl FnMut(u64, &[u8])) -> io::Result<()> {
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        number += 1;
        let end = line
            .iter()
            .rposition(|b| !b"\r\n".contains(b))
            .map_or(0, |i| i + 1);
        f(number, &line[..end]);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use flate2::{Compression, write::GzEncoder};

    use super::*;

    fn lines_of(bytes: Vec<u8>) -> Vec<String> {
        let mut out = Vec::new();
        let reader = decompressed(io::Cursor::new(bytes)).unwrap();
        for_each_line(reader, |n, line| {
            out.push(format!("{n}:{}", String::from_utf8_lossy(line)))
        })
        .unwrap();
        out
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn plain_lines_lose_their_line_ends() {
        assert_eq!(
            lines_of(b"a\r\nb\n\nc".to_vec()),
            ["1:a", "2:b", "3:", "4:c"]
        );
    }

    #[test]
    fn gzip_is_found_by_magic_bytes() {
        assert_eq!(lines_of(gzip(b"x\ny\n")), ["1:x", "2:y"]);
    }

    #[test]
    fn concatenated_gzip_members_are_all_read() {
        let mut both = gzip(b"x\n");
        both.extend(gzip(b"y\n"));
        assert_eq!(lines_of(both), ["1:x", "2:y"]);
    }

    #[test]
    fn tiny_and_empty_inputs() {
        assert_eq!(lines_of(b"{".to_vec()), ["1:{"]);
        assert!(lines_of(Vec::new()).is_empty());
    }

    #[test]
    fn corrupt_gzip_is_a_read_error() {
        let mut bad = gzip(b"some events\n");
        let mid = bad.len() / 2;
        bad.truncate(mid);
        let reader = decompressed(io::Cursor::new(bad)).unwrap();
        assert!(for_each_line(reader, |_, _| {}).is_err());
    }

    #[test]
    fn dash_is_stdin() {
        assert_eq!(Input::from_arg("-".into()), Input::Stdin);
        assert_eq!(
            Input::from_arg("./-".into()).to_string(),
            "./-",
            "a file named - is still reachable"
        );
    }
}
