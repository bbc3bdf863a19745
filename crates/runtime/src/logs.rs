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
    /// Rotated files are gzipped (`container.log.1.gz`), as json-file's `compress`.
    pub compress: bool,
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
                for gz in [false, true] {
                    let from = with_gz(&rotated(&self.path, n), gz);
                    if from.exists() {
                        std::fs::rename(&from, with_gz(&rotated(&self.path, n + 1), gz))?;
                    }
                }
            }
            let first = rotated(&self.path, 1);
            std::fs::rename(&self.path, &first)?;
            self.file = open_append(&self.path)?;
            if self.rotation.compress {
                gzip_away(&first)?;
            }
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
    read_chunk(path, offset, usize::MAX).map(|(entries, next, _)| (entries, next))
}

/// The complete entries written after byte `offset` (a file shorter than that was rotated: from
/// its start), at most about `max` bytes of them (more only for one line longer than that); the
/// offset just past them, and true once the end of the file was reached.
pub fn read_chunk(path: &Path, offset: u64, max: usize) -> io::Result<(Vec<LogEntry>, u64, bool)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), offset, true)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let offset = if len < offset { 0 } else { offset };
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    (&mut file).take(max as u64).read_to_end(&mut buf)?;
    if !buf.contains(&b'\n') && offset + (buf.len() as u64) < len {
        // One line longer than `max`: take it whole.
        let mut rest = Vec::new();
        BufReader::new(&mut file).read_until(b'\n', &mut rest)?;
        buf.extend(rest);
    }
    let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let entries = buf[..complete]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    let next = offset + complete as u64;
    Ok((entries, next, next >= len))
}

/// The last `n` entries of a log (rotated files too when the current one has fewer), read from
/// the end: a long log is not read whole. Also the offset just past what was read in the
/// current file.
pub fn read_tail(path: &Path, n: usize) -> io::Result<(Vec<LogEntry>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    const BLOCK: u64 = 64 * 1024;
    let mut files = vec![path.to_owned()];
    let mut k = 1;
    while rotated(path, k).exists() {
        files.push(rotated(path, k));
        k += 1;
    }
    let mut out: Vec<LogEntry> = Vec::new();
    let current_end = complete_end(path)?;
    for p in &files {
        if out.len() >= n {
            break;
        }
        let mut file = match std::fs::File::open(p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        // Read blocks backwards until the data holds n + 1 line ends (or the file's start).
        let mut start = len;
        let mut buf: Vec<u8> = Vec::new();
        let want = n - out.len();
        while start > 0 && buf.iter().filter(|b| **b == b'\n').count() <= want {
            let from = start.saturating_sub(BLOCK);
            let mut block = vec![0u8; (start - from) as usize];
            file.seek(SeekFrom::Start(from))?;
            file.read_exact(&mut block)?;
            block.extend(buf);
            buf = block;
            start = from;
        }
        let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let mut lines: Vec<&[u8]> = buf[..complete]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        if start > 0 && !lines.is_empty() {
            lines.remove(0); // cut at the block's start: not a whole line
        }
        let entries: Vec<LogEntry> = lines
            .into_iter()
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect();
        let keep = entries.len().saturating_sub(want);
        let mut older: Vec<LogEntry> = entries.into_iter().skip(keep).collect();
        older.extend(out);
        out = older;
    }
    Ok((out, current_end))
}

/// The offset just past the last complete line of a file (0 for none).
fn complete_end(path: &Path) -> io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut end = file.metadata()?.len();
    while end > 0 {
        let from = end.saturating_sub(64 * 1024);
        let mut block = vec![0u8; (end - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut block)?;
        if let Some(i) = block.iter().rposition(|b| *b == b'\n') {
            return Ok(from + i as u64 + 1);
        }
        end = from;
    }
    Ok(0)
}

/// The entries of a log's rotated files (plain or gzipped), oldest first.
pub fn read_rotated(path: &Path) -> io::Result<Vec<LogEntry>> {
    let mut out = Vec::new();
    let mut n = 1;
    while rotated(path, n).exists() || with_gz(&rotated(path, n), true).exists() {
        n += 1;
    }
    for k in (1..n).rev() {
        let plain = rotated(path, k);
        if plain.exists() {
            out.extend(read_from(&plain, 0)?.0);
        } else {
            use std::io::Read;
            let mut text = Vec::new();
            flate2::read::GzDecoder::new(std::fs::File::open(with_gz(&plain, true))?)
                .read_to_end(&mut text)?;
            out.extend(
                text.split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .filter_map(|l| serde_json::from_slice::<LogEntry>(l).ok()),
            );
        }
    }
    Ok(out)
}

/// `path` with `.gz` added when `gz`.
fn with_gz(path: &Path, gz: bool) -> std::path::PathBuf {
    if !gz {
        return path.to_owned();
    }
    let mut p = path.as_os_str().to_owned();
    p.push(".gz");
    p.into()
}

/// Replaces a rotated file by its gzipped copy (written aside, then renamed).
fn gzip_away(path: &Path) -> io::Result<()> {
    let target = with_gz(path, true);
    let partial = with_gz(&target, false).with_extension("gz.partial");
    {
        let mut input = std::fs::File::open(path)?;
        let out = std::fs::File::create(&partial)?;
        let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        io::copy(&mut input, &mut enc)?;
        enc.finish()?.sync_all()?;
    }
    std::fs::rename(&partial, &target)?;
    std::fs::remove_file(path)
}

/// Everything a log holds, rotated files first, and the offset in the current file just past
/// what was read (for [`read_from`] to go on with).
pub fn read_all(path: &Path) -> io::Result<(Vec<LogEntry>, u64)> {
    let mut out = read_rotated(path)?;
    let (current, offset) = read_from(path, 0)?;
    out.extend(current);
    Ok((out, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_rotation_keeps_max_files_and_reads_across_them() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut w = LogWriter::open_with(
            &p,
            Rotation {
                max_size: Some(200),
                max_files: 3,
                compress: true,
            },
        )
        .unwrap();
        for i in 0..20 {
            w.write("stdout", &[format!("line {i}\n")]).unwrap();
        }
        assert!(with_gz(&rotated(&p, 1), true).exists());
        assert!(with_gz(&rotated(&p, 2), true).exists());
        assert!(!rotated(&p, 1).exists() && !with_gz(&rotated(&p, 3), true).exists());
        let (all, _) = read_all(&p).unwrap();
        let lines: Vec<usize> = all
            .iter()
            .map(|e| e.log.trim()["line ".len()..].parse().unwrap())
            .collect();
        // In order, ending with the last line, and only what three files hold.
        assert!(lines.windows(2).all(|w| w[1] == w[0] + 1), "{lines:?}");
        assert_eq!(*lines.last().unwrap(), 19);
        assert!(lines.len() < 20);
    }

    #[test]
    fn rotation_keeps_max_files_and_reads_in_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut w = LogWriter::open_with(
            &p,
            Rotation {
                max_size: Some(300),
                max_files: 3,
                compress: false,
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
                compress: false,
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

    #[test]
    fn tails_and_chunks_read_only_what_they_need() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut w = LogWriter::open_with(
            &p,
            Rotation {
                max_size: Some(200_000),
                max_files: 3,
                compress: false,
            },
        )
        .unwrap();
        for i in 0..5000 {
            w.write("stdout", &[format!("line {i}\n")]).unwrap();
        }
        assert!(rotated(&p, 1).exists(), "the test needs a rotated file");
        let all = read(&p, None).unwrap();
        for n in [0, 1, 3, 100, all.len(), all.len() + 10] {
            let (tail, at) = read_tail(&p, n).unwrap();
            let skip = all.len().saturating_sub(n);
            assert_eq!(tail, all[skip..].to_vec(), "tail {n}");
            assert_eq!(at, std::fs::metadata(&p).unwrap().len());
        }
        // The current file in chunks: the same entries, and the end is said once reached.
        let (whole, end) = read_from(&p, 0).unwrap();
        let (mut got, mut at, mut done) = (Vec::new(), 0, false);
        while !done {
            let (entries, next, eof) = read_chunk(&p, at, 4096).unwrap();
            got.extend(entries);
            at = next;
            done = eof;
        }
        assert_eq!(got, whole);
        assert_eq!(at, end);
    }
}
