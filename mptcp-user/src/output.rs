//! The one event writer (aligned text or NDJSON) and the one loop that streams a pipeline into
//! it, for every command that prints events: `events`, `demo --json`, `run --trace`,
//! `upgrade --events`.

use std::{
    fs::OpenOptions,
    future::Future,
    io::{self, Write},
    os::{
        fd::{AsRawFd, RawFd},
        unix::fs::OpenOptionsExt,
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::{event::Event, text, trace::Pipeline};

/// Writes events in the chosen format. A closed pipe ends the stream quietly (`Ok(false)`).
pub struct Printer<W: Write + AsRawFd> {
    out: io::BufWriter<W>,
    fd: RawFd,
    json: bool,
    pub printed: u64,
    /// Flush after every event (a terminal or a reader waiting for lines); otherwise the
    /// buffer is flushed when the pipeline has nothing more for the moment.
    eager: bool,
    /// The line being written, reused from line to line: text, or NDJSON (`ndjson::write`).
    line: String,
    json_line: Vec<u8>,
}

fn quiet_pipe(res: io::Result<()>) -> io::Result<bool> {
    match res {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}

impl<W: Write + AsRawFd> Printer<W> {
    pub fn new(out: W, json: bool) -> Self {
        let fd = out.as_raw_fd();
        // SAFETY: isatty only inspects the fd.
        let eager = unsafe { libc::isatty(fd) } == 1;
        Printer {
            out: io::BufWriter::with_capacity(64 << 10, out),
            fd,
            json,
            printed: 0,
            eager,
            line: String::new(),
            json_line: Vec::new(),
        }
    }

    /// The text header (nothing for NDJSON).
    pub fn header(&mut self) -> io::Result<bool> {
        if self.json {
            return Ok(true);
        }
        quiet_pipe(writeln!(self.out, "{}", text::HEADER))
    }

    pub fn print(&mut self, e: &Event) -> io::Result<bool> {
        let res = if self.json {
            self.json_line.clear();
            crate::ndjson::write(&mut self.json_line, e);
            self.json_line.push(b'\n');
            self.out.write_all(&self.json_line)
        } else {
            self.line.clear();
            text::line_into(&mut self.line, e);
            self.line.push('\n');
            self.out.write_all(self.line.as_bytes())
        };
        self.printed += 1;
        if self.eager {
            return Ok(quiet_pipe(res)? && self.flush()?);
        }
        quiet_pipe(res)
    }

    pub fn flush(&mut self) -> io::Result<bool> {
        quiet_pipe(self.out.flush())
    }

    /// Whether the reader went away (a pipe whose read end is closed polls as an error), so
    /// that `events | head -1` ends even when no event comes.
    pub fn reader_gone(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd,
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting.
        unsafe { libc::poll(&mut p, 1, 0) == 1 && p.revents & (libc::POLLERR | libc::POLLHUP) != 0 }
    }
}

/// Why a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The `until` future completed (a signal, the duration, the command's exit).
    Stopped,
    /// The reader closed the pipe.
    ReaderGone,
}

/// Streams `pipe` into `out` until `until` completes or the reader goes away; `each` sees every
/// event first (the demo's summary, `run`'s open connections).
pub async fn stream<W: Write + AsRawFd>(
    pipe: &mut Pipeline,
    out: &mut Printer<W>,
    until: impl Future<Output = ()>,
    mut each: impl FnMut(&Event),
) -> io::Result<End> {
    tokio::pin!(until);
    let mut check = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            e = pipe.next() => {
                let e = e?;
                each(&e);
                if !out.print(&e)? {
                    return Ok(End::ReaderGone);
                }
            }
            _ = &mut until => return Ok(End::Stopped),
            _ = check.tick() => {
                if !out.flush()? || out.reader_gone() {
                    return Ok(End::ReaderGone);
                }
            }
        }
    }
}

/// Prints what the pipeline still held when it stopped, then flushes.
pub fn finish<W: Write + AsRawFd>(
    out: &mut Printer<W>,
    events: &[Arc<Event>],
    mut each: impl FnMut(&Event),
) -> io::Result<()> {
    for e in events {
        each(e);
        if !out.print(e)? {
            return Ok(());
        }
    }
    out.flush().map(drop)
}

/// A file created once tracing (or the upgrade) is live, for scripts and tests. It is checked
/// before anything is loaded (bad input: exit 2, nothing attached) and created fresh, never
/// through a symbolic link, so it cannot be used to make root overwrite another file.
#[derive(Debug)]
pub struct ReadyFile(PathBuf);

#[derive(Debug, thiserror::Error)]
#[error("--ready-file {path}: {reason}")]
pub struct ReadyFileError {
    pub path: String,
    pub reason: String,
}

impl ReadyFile {
    /// `--ready-file`, when given, checked.
    pub fn from_arg(path: Option<&Path>) -> Result<Option<ReadyFile>, ReadyFileError> {
        path.map(ReadyFile::check).transpose()
    }

    pub fn check(path: &Path) -> Result<ReadyFile, ReadyFileError> {
        let bad = |reason: &str| ReadyFileError {
            path: path.display().to_string(),
            reason: reason.into(),
        };
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(bad("already exists (it is created fresh: remove it first)"));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        match std::fs::metadata(parent) {
            Ok(m) if m.is_dir() => Ok(ReadyFile(path.to_path_buf())),
            Ok(_) => Err(bad("its parent is not a directory")),
            Err(e) => Err(bad(&format!("its directory: {e}"))),
        }
    }

    /// Creates the file (exclusively, not following links).
    pub fn signal(&self) -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.0)?;
        f.write_all(b"ready\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_files_are_checked_before_and_created_fresh() {
        let dir = std::env::temp_dir().join(format!("mptcp-trace-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = ReadyFile::check(&dir.join("r")).unwrap();
        ok.signal().unwrap();
        assert!(ReadyFile::check(&dir.join("r")).is_err(), "exists now");
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
        assert!(
            ReadyFile::check(&dir.join("link")).is_err(),
            "a planted link"
        );
        assert!(ReadyFile::check(&dir.join("no/such/dir/r")).is_err());
        assert!(ReadyFile::check(Path::new("/dev/full")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
