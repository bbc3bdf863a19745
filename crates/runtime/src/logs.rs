//! Container logs in Docker's json-file format: one JSON object a line, with the text (ending in
//! its newline), the stream (`stdout` or `stderr`) and the time (RFC 3339 with nanoseconds).

use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

/// Longest line kept whole; longer output is cut into entries of this size, as Docker does.
const MAX_LINE: usize = 16 * 1024;

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The text, with its newline when it had one.
    pub log: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// When it was read (RFC 3339, nanoseconds).
    pub time: String,
}

/// The current time in RFC 3339 with nanoseconds, UTC.
pub fn rfc3339_nanos_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (y, mo, day, h, mi, s) = crate::image::civil(d.as_secs());
    format!(
        "{y:04}-{mo:02}-{day:02}T{h:02}:{mi:02}:{s:02}.{:09}Z",
        d.subsec_nanos()
    )
}

/// Turns chunks of a stream into complete entries.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Adds a chunk; returns the complete lines it finished.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            out.push(String::from_utf8_lossy(&line).into_owned());
        }
        while self.partial.len() >= MAX_LINE {
            let line: Vec<u8> = self.partial.drain(..MAX_LINE).collect();
            out.push(String::from_utf8_lossy(&line).into_owned());
        }
        out
    }

    /// What is left at the end of the stream (a last line without newline).
    pub fn finish(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| {
            let rest = std::mem::take(&mut self.partial);
            String::from_utf8_lossy(&rest).into_owned()
        })
    }
}

/// When a log file is rotated (json-file's `max-size` and `max-file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rotation {
    /// Rotate once the file reaches this many bytes (never when None).
    pub max_size: Option<u64>,
    /// Files kept, the current one included (1: the file is truncated instead).
    pub max_files: u32,
}

/// Appends entries to a log file, rotating it as `rotation` says.
#[derive(Debug)]
pub struct LogWriter {
    path: std::path::PathBuf,
    file: std::fs::File,
    size: u64,
    rotation: Rotation,
}

fn open_append(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// The rotated file `n` of a log (`container.log.1` is the newest).
pub fn rotated(path: &Path, n: u32) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    p.into()
}

impl LogWriter {
    /// Opens `path` for appending (creating it, mode 0640), never rotated.
    pub fn open(path: &Path) -> io::Result<LogWriter> {
        LogWriter::open_with(path, Rotation::default())
    }

    /// Opens `path` for appending, rotated as `rotation` says.
    pub fn open_with(path: &Path, rotation: Rotation) -> io::Result<LogWriter> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_owned(),
            file,
            size,
            rotation,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.rotation.max_files <= 1 {
            self.file.set_len(0)?;
        } else {
            for n in (1..self.rotation.max_files - 1).rev() {
                let from = rotated(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
            self.file = open_append(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }

    /// Writes lines of `stream`, all stamped now.
    pub fn write(&mut self, stream: &str, lines: &[String]) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let time = rfc3339_nanos_now();
        let mut buf = Vec::new();
        for l in lines {
            let e = LogEntry {
                log: l.clone(),
                stream: stream.to_owned(),
                time: time.clone(),
            };
            serde_json::to_writer(&mut buf, &e).expect("entry serializes");
            buf.push(b'\n');
            // Rotation is checked line by line, as Docker's json-file does, even when the
            // lines came in one read.
            if self
                .rotation
                .max_size
                .is_some_and(|m| self.size + buf.len() as u64 >= m)
            {
                self.file.write_all(&buf)?;
                buf.clear();
                self.rotate()?;
            }
        }
        self.file.write_all(&buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }
}

/// Reads the entries of a log file and of its rotated files, oldest first; `tail` keeps only
/// the last N.
pub fn read(path: &Path, tail: Option<usize>) -> io::Result<Vec<LogEntry>> {
    let mut files = Vec::new();
    let mut n = 1;
    while rotated(path, n).exists() {
        files.push(rotated(path, n));
        n += 1;
    }
    files.reverse();
    files.push(path.to_owned());
    let mut out = Vec::new();
    for p in files {
        let file = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in BufReader::new(file).lines() {
            let line = line?;
            if let Ok(e) = serde_json::from_str::<LogEntry>(&line) {
                out.push(e);
            }
        }
    }
    if let Some(n) = tail {
        let skip = out.len().saturating_sub(n);
        out.drain(..skip);
    }
    Ok(out)
}

/// Reads the complete entries written after byte `offset`; returns them and the offset just
/// past the last one (a line still being written is left for the next read).
pub fn read_from(path: &Path, offset: u64) -> io::Result<(Vec<LogEntry>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
        Err(e) => return Err(e),
    };
    // A file shorter than where the reader was has been rotated: start it over.
    let offset = if file.metadata()?.len() < offset {
        0
    } else {
        offset
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let entries = buf[..complete]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    Ok((entries, offset + complete as u64))
}

/// Everything a log holds, rotated files first, and the offset in the current file just past
/// what was read (for [`read_from`] to go on with).
pub fn read_all(path: &Path) -> io::Result<(Vec<LogEntry>, u64)> {
    let mut out = Vec::new();
    let mut n = 1;
    while rotated(path, n).exists() {
        n += 1;
    }
    for k in (1..n).rev() {
        let (entries, _) = read_from(&rotated(path, k), 0)?;
        out.extend(entries);
    }
    let (current, offset) = read_from(path, 0)?;
    out.extend(current);
    Ok((out, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_max_files_and_reads_in_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut w = LogWriter::open_with(
            &p,
            Rotation {
                max_size: Some(300),
                max_files: 3,
            },
        )
        .unwrap();
        for i in 0..20 {
            w.write("stdout", &[format!("line {i}\n")]).unwrap();
        }
        assert!(rotated(&p, 2).exists() && !rotated(&p, 3).exists());
        let all = read(&p, None).unwrap();
        let nums: Vec<u32> = all
            .iter()
            .map(|e| e.log.trim().trim_start_matches("line ").parse().unwrap())
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
        assert_eq!(*nums.last().unwrap(), 19);
        assert!(nums.len() < 20, "the oldest lines are gone");
        // One file: truncated in place.
        let q = d.path().join("one.log");
        let mut w = LogWriter::open_with(
            &q,
            Rotation {
                max_size: Some(100),
                max_files: 1,
            },
        )
        .unwrap();
        for i in 0..10 {
            w.write("stdout", &[format!("line {i}\n")]).unwrap();
        }
        assert!(!rotated(&q, 1).exists());
        assert!(std::fs::metadata(&q).unwrap().len() < 100);
    }

    #[test]
    fn lines_are_split_and_kept_in_order() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\nb"), ["a\n"]);
        assert_eq!(s.push(b"c\n\n"), ["bc\n", "\n"]);
        assert_eq!(s.push(b"tail"), Vec::<String>::new());
        assert_eq!(s.finish().as_deref(), Some("tail"));
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut w = LogWriter::open(&p).unwrap();
        w.write("stdout", &["1\n".into(), "2\n".into()]).unwrap();
        w.write("stderr", &["3\n".into()]).unwrap();
        let all = read(&p, None).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].stream, "stderr");
        assert!(all[0].time.ends_with('Z'));
        assert_eq!(read(&p, Some(1)).unwrap()[0].log, "3\n");
        let (first, at) = read_from(&p, 0).unwrap();
        assert_eq!(first.len(), 3);
        w.write("stdout", &["4\n".into()]).unwrap();
        let (next, _) = read_from(&p, at).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].log, "4\n");
    }
}
