//! `mptcp-trace run -- CMD ARGS…`: a fresh cgroup under the cgroup2 root, the upgrade scoped to
//! it, CMD started inside it; the cgroup is removed afterwards and CMD's status is ours.
//!
//! Everything CMD starts stays in the cgroup and is upgraded too. Ctrl-C goes to CMD (the
//! terminal sends it to the whole foreground group) while `run` ignores it; SIGTERM and SIGHUP
//! are forwarded to CMD. With `--trace`, the same process traces exactly the run's cgroup
//! (the upgrade's scope, in the kernel) and prints on stderr, so CMD keeps stdout.

use std::{
    cell::RefCell,
    collections::HashSet,
    ffi::CString,
    fs,
    future::pending,
    io,
    os::unix::{ffi::OsStrExt, process::CommandExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use log::{debug, warn};

use crate::{
    cli::RunArgs,
    event::Kind,
    output::{self, Printer},
    select::Selector,
    sys::{
        cgroup::{self, Cgroup},
        signals::Stop,
    },
    trace::Pipeline,
    upgrade::{Upgrade, UpgradeError},
};

/// After CMD exits, how long `--trace` waits for its connections' last events.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

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
        return Err(UpgradeError::Io {
            what: "no cgroup v2 hierarchy is mounted, and mounting one failed".into(),
            source: e,
        });
    }
    Ok(dir)
}

impl RunCgroup {
    fn create() -> Result<RunCgroup, UpgradeError> {
        let (mount, own_mount) = match cgroup::mount() {
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
            // Background processes CMD left behind go back to the cgroup `run` itself lives in
            // (and out of the upgrade's scope) so the cgroup can go.
            let home = Cgroup::of_process(std::process::id())
                .map(|c| c.path)
                .unwrap_or_else(|_| self.mount.clone());
            let procs = fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace() {
                if attempt == 0 {
                    warn!(
                        "process {pid} outlived the command; moving it back to {}",
                        home.display()
                    );
                }
                let _ = fs::write(home.join("cgroup.procs"), pid);
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

pub async fn run(args: RunArgs) -> Result<ExitCode> {
    // Refuse before creating anything (a cgroup) when the privileges are missing.
    crate::upgrade::require_privileges()?;
    let cgroup = RunCgroup::create()?;
    let cg = Cgroup::resolve(&cgroup.path).map_err(|e| UpgradeError::Io {
        what: format!("the run's cgroup {}", cgroup.path.display()),
        source: io::Error::other(e),
    })?;
    let sel = Selector::for_cgroup(cg);
    let mut stop = Stop::install()?;
    let up = Upgrade::attach(sel.policy(args.count_only))?;
    debug!("run: upgrading {}", sel.describe());
    // The tracer is attached before CMD starts: its first connection is seen.
    let mut trace = if args.trace {
        Some((
            Pipeline::start(&sel)?,
            Printer::new(io::stderr(), args.json),
        ))
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
    let pid = child.id() as i32;
    // SAFETY: ignoring a signal; CMD (already started) keeps its own dispositions.
    unsafe { libc::signal(libc::SIGQUIT, libc::SIG_IGN) };
    let mut wait = tokio::task::spawn_blocking(move || child.wait());
    // Connections of CMD still open, so that the trace ends with their last events.
    let open: RefCell<HashSet<(Option<u32>, u64)>> = RefCell::default();
    let mut track = |e: &crate::event::Event| {
        let key = (e.netns(), e.ids().conn);
        match e.kind() {
            Kind::ConnCreated => {
                open.borrow_mut().insert(key);
            }
            Kind::ConnClosed => {
                open.borrow_mut().remove(&key);
            }
            _ => {}
        }
    };
    let status = loop {
        let forward = async {
            loop {
                let sig = stop.recv().await;
                // Ctrl-C reached CMD from the terminal already; TERM and HUP are passed on.
                if sig != libc::SIGINT {
                    // SAFETY: kill(2) on our own child.
                    unsafe { libc::kill(pid, sig) };
                }
            }
        };
        let traced = async {
            match &mut trace {
                Some((pipe, out)) => output::stream(pipe, out, pending(), &mut track).await,
                None => pending().await,
            }
        };
        tokio::select! {
            r = &mut wait => break r.context("waiting for the command")??,
            () = forward => {}
            r = traced => {
                r?;
                // The reader of stderr went away: CMD goes on, untraced.
                trace = None;
            }
        }
    };
    if let Some((mut pipe, mut out)) = trace {
        // Subflows close shortly after their process exits: wait for the last closes.
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        while !open.borrow().is_empty() {
            match tokio::time::timeout_at(deadline, pipe.next()).await {
                Ok(e) => {
                    let e = e?;
                    track(&e);
                    if !out.print(&e)? {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let (rest, totals) = pipe.finish();
        output::finish(&mut out, &rest, &mut track)?;
        eprintln!(
            "mptcp-trace: {} events shown, {}",
            out.printed,
            totals.describe()
        );
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
