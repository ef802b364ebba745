//! Where a running tracer leaves its recent diagnoses for `mptcp-trace why`:
//! /run/mptcp-trace/why-PID.ndjson, the NDJSON events (schema 1) of the last diagnosed
//! connections. Root-only (directory 0700, file 0600: it names processes and addresses),
//! rewritten atomically (a temporary file renamed over it, so a reader never sees half of
//! it), removed when the pipeline ends. A file whose tracer died without removing it is
//! ignored by readers (its pid no longer runs `mptcp-trace`).

use std::{
    fs::{self, DirBuilder, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use crate::event::Event;

pub const DIR: &str = "/run/mptcp-trace";

pub struct WhyFile {
    path: PathBuf,
}

impl WhyFile {
    /// Creates the (empty) file of this process.
    pub fn create() -> io::Result<WhyFile> {
        Self::create_in(Path::new(DIR))
    }

    pub fn create_in(dir: &Path) -> io::Result<WhyFile> {
        DirBuilder::new().mode(0o700).recursive(true).create(dir)?;
        // Files of tracers that were killed (SIGKILL leaves no chance to remove them).
        sweep(dir, &is_tracer)?;
        let w = WhyFile {
            path: dir.join(format!("why-{}.ndjson", std::process::id())),
        };
        w.write(std::iter::empty())?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's content with `events`, one NDJSON line each.
    pub fn write<'a>(&self, events: impl Iterator<Item = &'a Event>) -> io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut w = BufWriter::new(f);
        for e in events {
            serde_json::to_writer(&mut w, e)?;
            w.write_all(b"\n")?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_data()?;
        fs::rename(&tmp, &self.path)
    }
}

impl Drop for WhyFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let _ = fs::remove_file(self.path.with_extension("tmp"));
    }
}

/// Removes the files (`why-PID.ndjson` and its `.tmp`) of pids that no longer run a tracer.
/// Each file is judged by its own pid: a tracer that is starting beside this one has only its
/// `.tmp` file for a moment, and must not lose it (or its first `.ndjson`) to this sweep.
fn sweep(dir: &Path, is_tracer: &dyn Fn(u32) -> bool) -> io::Result<()> {
    for e in fs::read_dir(dir)?.flatten() {
        if pid_of(&e.file_name()).is_some_and(|(pid, _)| !is_tracer(pid)) {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// The pid a tracer's file is named after (`why-PID.ndjson`, or its `why-PID.tmp`), and
/// whether it is the `.ndjson` readers read.
fn pid_of(name: &std::ffi::OsStr) -> Option<(u32, bool)> {
    let (pid, ext) = name.to_str()?.strip_prefix("why-")?.split_once('.')?;
    Some((pid.parse().ok()?, ext == "ndjson"))
}

/// Whether `pid` runs mptcp-trace (a tracer that died without cleaning up left a pid that runs
/// something else, or nothing).
fn is_tracer(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim().starts_with("mptcp-trace"))
}

/// The files of the tracers running now, with their pids.
pub fn running(dir: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(u32, PathBuf)> = rd
        .flatten()
        .filter_map(|e| match pid_of(&e.file_name())? {
            (pid, true) if is_tracer(pid) => Some((pid, e.path())),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_keeps_every_file_of_a_running_tracer_and_only_those() {
        let dir = std::env::temp_dir().join(format!("why-sweep-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // 111 is starting: only its temporary file exists (the race CI hit: the sweep judged
        // it by the `.ndjson` file it did not have yet, and removed it).
        let names = ["why-111.tmp", "why-222.ndjson", "why-333.ndjson", "other"];
        for n in names {
            fs::write(dir.join(n), "").unwrap();
        }
        sweep(&dir, &|pid| pid == 111 || pid == 333).unwrap();
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        left.sort();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(left, ["other", "why-111.tmp", "why-333.ndjson"]);
    }
}
