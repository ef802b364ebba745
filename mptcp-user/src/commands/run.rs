//! `mptcp-trace run -- CMD ARGS…`: a fresh cgroup under the cgroup2 root, the upgrade scoped to
//! it, CMD started inside it; the cgroup is removed afterwards and CMD's status is ours.
//!
//! Everything CMD starts stays in the cgroup and is upgraded too. Ctrl-C goes to CMD (the
//! terminal sends it to the whole foreground group) while `run` ignores it; SIGTERM and SIGHUP
//! are forwarded to CMD.

use std::{
    ffi::{CString, OsString},
    fs,
    os::unix::{ffi::OsStrExt, process::CommandExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::atomic::{AtomicI32, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use log::{debug, warn};
use mptcp_common::upgrade::Policy;

use crate::{
    cli::RunArgs,
    commands::side_tracer::{Output, SideTracer},
    filter::cgroup2_mount,
    upgrade::{
        policy::{CgroupRef, PolicyExt},
        Upgrade, UpgradeError,
    },
};

/// The cgroup made for CMD; removed on drop (leftover processes are moved out first).
struct RunCgroup {
    path: PathBuf,
    mount: PathBuf,
    /// Our own mount of the cgroup2 hierarchy, when none was visible (`ip netns exec` mounts a
    /// fresh /sys without it); unmounted on drop.
    own_mount: bool,
}

/// Mounts the cgroup2 hierarchy on a private directory under /run.
fn mount_cgroup2() -> Result<PathBuf, UpgradeError> {
    let dir = PathBuf::from(format!("/run/mptcp-trace-cgroup2.{}", std::process::id()));
    let io = |what: &str| {
        let what = format!("{what} {}", dir.display());
        move |source| UpgradeError::Io { what, source }
    };
    fs::create_dir_all(&dir).map_err(io("cannot create"))?;
    let target = CString::new(dir.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        let _ = fs::remove_dir(&dir);
        debug!("mounting cgroup2 on {}: {e}", dir.display());
        return Err(UpgradeError::NoCgroup2);
    }
    Ok(dir)
}

impl RunCgroup {
    fn create() -> Result<RunCgroup, UpgradeError> {
        let (mount, own_mount) = match cgroup2_mount() {
            Some(m) => (m, false),
            None => (mount_cgroup2()?, true),
        };
        let path = mount.join(format!("mptcp-trace-run.{}", std::process::id()));
        let mut cg = RunCgroup {
            path,
            mount,
            own_mount,
        };
        if let Err(source) = fs::create_dir(&cg.path) {
            cg.unmount();
            return Err(UpgradeError::Io {
                what: format!("cannot create cgroup {}", cg.path.display()),
                source,
            });
        }
        Ok(cg)
    }

    fn unmount(&mut self) {
        if std::mem::take(&mut self.own_mount) {
            if let Ok(c) = CString::new(self.mount.as_os_str().as_bytes()) {
                // SAFETY: NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
            let _ = fs::remove_dir(&self.mount);
        }
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        self.remove();
        self.unmount();
    }
}

impl RunCgroup {
    fn remove(&mut self) {
        // The kernel may need a moment to notice the last member is gone.
        for attempt in 0..100 {
            // Background processes CMD left behind go back to the root cgroup (and out of the
            // upgrade's scope) so the cgroup can go.
            let procs = fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace() {
                if attempt == 0 {
                    warn!("process {pid} outlived the command; moving it out of the run's cgroup");
                }
                let _ = fs::write(self.mount.join("cgroup.procs"), pid);
            }
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if attempt == 99 => {
                    warn!("cannot remove cgroup {}: {e}", self.path.display())
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let cgroup = RunCgroup::create()?;
    let cg = CgroupRef::resolve(&cgroup.path)?;
    let mut policy = Policy::NONE;
    policy.set_cgroup(&cg);
    policy.count_only = args.count_only as u32;
    let up = Upgrade::attach(policy)?;
    debug!("run: upgrading {}", policy.describe());
    let tracer = if args.trace {
        let filter = [
            OsString::from("--cgroup"),
            cgroup.path.clone().into_os_string(),
        ];
        Some(SideTracer::start(&filter, args.json, Output::Stderr)?)
    } else {
        None
    };

    let procs = CString::new(cgroup.path.join("cgroup.procs").as_os_str().as_bytes())
        .context("cgroup path")?;
    let (program, rest) = args.command.split_first().expect("clap requires CMD");
    let mut cmd = Command::new(program);
    cmd.args(rest);
    // SAFETY: the closure only makes async-signal-safe calls (open, write, close) on memory
    // prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0": the writing process itself.
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if ok {
                Ok(())
            } else {
                Err(err)
            }
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", Path::new(program).display()))?;
    CHILD.store(child.id() as i32, Ordering::Relaxed);
    // SAFETY: installing handlers; `forward` only calls kill.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, forward as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, forward as *const () as libc::sighandler_t);
    }
    let status = child.wait().context("waiting for the command")?;
    if let Some(t) = tracer {
        // Subflows close shortly after their process exits.
        t.stop(Duration::from_millis(1500));
    }
    debug!("run: {}", up.counts());
    drop(up);
    drop(cgroup);
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128 + sig as u8,
        _ => 1,
    };
    Ok(ExitCode::from(code))
}
