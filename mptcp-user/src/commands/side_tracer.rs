//! `run --trace` and `upgrade --events`: the tracer next to an upgrade, as a child process of
//! ours running `mptcp-trace events` with filters that match the upgrade's scope. A child keeps
//! the two features independent (the upgrade is synchronous code, the tracer async) and is
//! exactly what a user would get by running both commands.

use std::{
    ffi::OsString,
    os::{fd::AsFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Where the tracer's lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout,
    /// For `run --trace`: CMD owns stdout.
    Stderr,
}

pub struct SideTracer {
    child: Child,
    ready: PathBuf,
}

impl SideTracer {
    /// Starts `mptcp-trace events [--json] FILTERS…` and waits until its programs are attached.
    pub fn start(filters: &[OsString], json: bool, output: Output) -> Result<SideTracer> {
        let exe = std::env::current_exe().context("locating the mptcp-trace binary")?;
        let ready = std::env::temp_dir().join(format!("mptcp-trace-side.{}", std::process::id()));
        let _ = std::fs::remove_file(&ready);
        let mut cmd = Command::new(exe);
        cmd.arg("events")
            .arg("--ready-file")
            .arg(&ready)
            .args(filters);
        if json {
            cmd.arg("--json");
        }
        if output == Output::Stderr {
            let err = std::io::stderr().as_fd().try_clone_to_owned()?;
            cmd.stdout(Stdio::from(err));
        }
        // Its own process group: Ctrl-C at the terminal is for CMD; we stop the tracer after.
        cmd.process_group(0);
        let mut child = cmd.spawn().context("starting the tracer")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            if let Some(status) = child.try_wait()? {
                bail!("the tracer exited before it was ready ({status})");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("the tracer was not ready within 60 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(SideTracer { child, ready })
    }

    /// Lets the last closes arrive, then stops the tracer as Ctrl-C would.
    pub fn stop(mut self, grace: Duration) {
        thread::sleep(grace);
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

impl Drop for SideTracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.ready);
    }
}
