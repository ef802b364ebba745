//! `mptcp-trace run -- CMD ARGS…`: a fresh cgroup under the cgroup2 root, the upgrade scoped to
//! it, CMD started inside it; the cgroup is removed afterwards and CMD's status is ours.
//!
//! Two upgrade methods (`--method`): `bpf`, the fmod_ret program scoped to the cgroup, and
//! `seccomp` ([`crate::upgrade::seccomp`]), a seccomp filter CMD installs before exec whose
//! notifications a supervisor in the same cgroup answers with MPTCP sockets. `auto` takes bpf
//! where the kernel allows it. Exit statuses follow env(1): 125 our failure, 126 CMD cannot be
//! executed, 127 not found, else CMD's (128+N for signal N).
//!
//! Everything CMD starts stays in the cgroup and is upgraded too. Ctrl-C goes to CMD (the
//! terminal sends it to the whole foreground group) while `run` ignores it; SIGTERM and SIGHUP
//! are forwarded to CMD. With `--trace`, this process also traces exactly the run's cgroup
//! (in the kernel) and prints on stderr, so CMD keeps stdout.

use std::{
    cell::RefCell,
    collections::HashSet,
    ffi::CString,
    fs,
    io::{self, Write},
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
    cli::{RunArgs, RunMethod},
    event::{Event, Kind},
    output::{self, Printer},
    select::Selector,
    sys::cgroup::{self, Cgroup},
    trace::{Pipeline, UpgradeFeed},
    upgrade::{
        seccomp::{join_cgroup, Method, Outcome, Records, SeccompUpgrade, Upgraded},
        Upgrade, UpgradeError,
    },
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
    /// Our own helpers that may still be in the cgroup at the end (the seccomp supervisor
    /// serving processes CMD left behind): moved out without a warning.
    quiet_pids: Vec<String>,
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
            quiet_pids: Vec::new(),
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
                if attempt == 0 && !self.quiet_pids.iter().any(|p| p == pid) {
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

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// A flag shared with CMD's child (a MAP_SHARED page): set once everything before exec
/// succeeded, so a failed spawn tells "CMD cannot be executed" (126/127) from our own failure
/// (125).
struct ExecStage(usize);

impl ExecStage {
    fn new() -> Result<ExecStage> {
        // SAFETY: anonymous shared mapping of one page; unmapped on drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap");
        }
        Ok(ExecStage(p as usize))
    }

    fn flag(&self) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: the page is mapped, zeroed, aligned, and lives as long as self.
        unsafe { &*(self.0 as *const std::sync::atomic::AtomicU32) }
    }
}

impl Drop for ExecStage {
    fn drop(&mut self) {
        // SAFETY: our mapping.
        unsafe { libc::munmap(self.0 as *mut libc::c_void, 4096) };
    }
}

/// The upgrade method in force for this run.
enum Active {
    Bpf(Box<Upgrade>),
    Seccomp(SeccompUpgrade),
}

/// What `run` without `--trace` does with each socket record: `-v` shows every one; a socket
/// kept TCP is worth one warning.
fn log_record() -> Box<dyn FnMut(&Upgraded) + Send> {
    let mut warned = false;
    Box::new(move |u: &Upgraded| {
        if matches!(u.outcome, Outcome::KeptTcp { .. }) && !warned {
            warned = true;
            let _ = writeln!(io::stderr(), "mptcp-trace: {u}");
        } else {
            debug!("run: {u}");
        }
    })
}

/// How long `run --trace` keeps reading after CMD exited and its connections closed, for the
/// upgrade records still on their way (a `kept_tcp` socket has no connection to wait for).
const FEED_QUIET: Duration = Duration::from_millis(300);

/// Prints the run's events until CMD exits, then until its connections closed (at most
/// [`CLOSE_GRACE`]), then the summary.
async fn trace_until_exit(
    mut child: std::process::Child,
    mut pipe: Pipeline,
    mut out: Printer<io::Stderr>,
) -> Result<std::process::ExitStatus> {
    let mut wait = tokio::task::spawn_blocking(move || child.wait());
    let open: RefCell<HashSet<(Option<u32>, u64)>> = RefCell::default();
    let mut track = |e: &Event| {
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
    let mut printing = true;
    let status = loop {
        tokio::select! {
            r = &mut wait => break r.context("waiting for the command")??,
            r = async {
                if printing {
                    output::stream(&mut pipe, &mut out, std::future::pending(), &mut track).await
                } else {
                    // Nobody reads the events any more, but they are still taken: the seccomp
                    // supervisor's records come through the pipeline, and on a full pipe it
                    // would stop answering CMD's socket() calls.
                    loop {
                        pipe.next().await?;
                    }
                }
            } => {
                r?;
                // The reader of stderr went away: CMD goes on, untraced.
                printing = false;
            }
        }
    };
    if printing {
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
        // The supervisor writes a record after its answer, so CMD may be gone before its last
        // record was written, and processes it left behind may open more sockets: take what
        // arrives until the pipeline has been quiet a moment.
        while let Ok(e) = tokio::time::timeout(FEED_QUIET, pipe.next()).await {
            let e = e?;
            track(&e);
            if !out.print(&e)? {
                break;
            }
        }
    }
    let (rest, totals) = pipe.finish();
    if printing {
        output::finish(&mut out, &rest, &mut track)?;
    }
    // Not eprintln!: with the reader of stderr gone it panicked, and `run` exited 101 instead
    // of with CMD's status.
    let _ = writeln!(
        io::stderr(),
        "mptcp-trace: {} events shown, {}",
        out.printed,
        totals.describe()
    );
    Ok(status)
}

/// A short reason for auto's fallback line (the full one is `upgrade`'s refusal).
fn short_reason(e: &UpgradeError) -> String {
    match e {
        UpgradeError::HookMissing(v) => format!("Linux {v} has no update_socket_protocol hook"),
        UpgradeError::TrampolinesRefused(r) => format!(
            "the kernel refused the BPF trampoline: {} returned {}",
            r.op,
            crate::upgrade::seccomp::errno_name(r.errno)
        ),
        UpgradeError::MptcpDisabled => "net.mptcp.enabled = 0 here".into(),
        UpgradeError::Privileges(_) => {
            "the bpf method needs CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN".into()
        }
        other => other.to_string(),
    }
}

fn choose(args: &RunArgs, policy: Policy, procs: &Path) -> Result<Active> {
    let seccomp = || -> Result<Active> {
        // With `--trace`, the pipeline reads the records: each becomes a `socket_upgraded`.
        let records = match args.trace {
            true => Records::Pipeline,
            false => Records::Log(log_record()),
        };
        Ok(Active::Seccomp(SeccompUpgrade::start(
            procs,
            args.count_only,
            records,
        )?))
    };
    match args.method {
        RunMethod::Bpf => Ok(Active::Bpf(Box::new(Upgrade::attach(policy)?))),
        RunMethod::Seccomp => seccomp(),
        RunMethod::Auto => match Upgrade::attach(policy) {
            Ok(u) => Ok(Active::Bpf(Box::new(u))),
            Err(
                e @ (UpgradeError::Privileges(_)
                | UpgradeError::HookMissing(_)
                | UpgradeError::TrampolinesRefused(_)
                | UpgradeError::NoBtf(_)
                | UpgradeError::MptcpDisabled
                | UpgradeError::Rejected { .. }
                | UpgradeError::Attach(_)),
            ) => {
                debug!("run: bpf method unavailable: {e}");
                let s = seccomp()?;
                eprintln!(
                    "mptcp-trace: run: using the seccomp method ({}; `mptcp-trace upgrade` explains)",
                    short_reason(&e)
                );
                Ok(s)
            }
            Err(e) => Err(e.into()),
        },
    }
}

/// Refuses, naming the missing capabilities, before anything is created (a cgroup, a mount).
///
/// - The run's cgroup goes under the cgroup2 root, a root-owned directory, and CMD is moved in
///   through the root's `cgroup.procs`: write access there, which a user who does not own it
///   has only with CAP_DAC_OVERRIDE. Where no cgroup2 hierarchy is visible, mounting one needs
///   CAP_SYS_ADMIN.
/// - `bpf`: the upgrade's CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN.
/// - `seccomp`: nothing more (the filter needs no privilege once no_new_privs is set, and the
///   supervisor serves its own user's processes).
/// - `auto`: what seccomp needs; without the bpf method's capabilities it takes seccomp.
/// - `--trace`: tracing's ([`crate::loader::TRACING_CAPS`]).
fn check_privileges(args: &RunArgs) -> Result<(), UpgradeError> {
    use crate::sys::caps::{self, Cap};
    let mut needed = Vec::new();
    let mut add = |caps: &[Cap]| {
        for &c in caps {
            if !needed.contains(&c) {
                needed.push(c);
            }
        }
    };
    match cgroup::mount() {
        Some(m) if caps::can_write(&m) => {}
        Some(_) => add(&[Cap::DacOverride]),
        None => add(&[Cap::SysAdmin]),
    }
    if args.method == RunMethod::Bpf {
        add(crate::upgrade::UPGRADE_CAPS);
    }
    if args.trace {
        add(crate::loader::TRACING_CAPS);
    }
    let what = match args.method {
        RunMethod::Auto => "`run` (its cgroup under the cgroup2 root)",
        RunMethod::Bpf => "`run --method bpf` (its cgroup under the cgroup2 root, the upgrade)",
        RunMethod::Seccomp => "`run --method seccomp` (its cgroup under the cgroup2 root)",
    };
    caps::require(&needed, what).map_err(UpgradeError::Privileges)
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    check_privileges(&args)?;
    // Neither method can give CMD MPTCP on such a kernel: say so rather than run it as it was.
    if !crate::sys::mptcp::in_kernel() {
        return Err(UpgradeError::NoMptcp.into());
    }
    let mut cgroup = RunCgroup::create()?;
    let cg = Cgroup::resolve(&cgroup.path).map_err(|e| UpgradeError::Io {
        what: format!("the run's cgroup {}", cgroup.path.display()),
        source: io::Error::other(e),
    })?;
    let sel = Selector::for_cgroup(cg);
    let mut policy = sel.policy(args.count_only);
    // The program reports each socket only when `--trace` reads its ring.
    policy.events = args.trace as u32;
    let procs_path = cgroup.path.join("cgroup.procs");
    let mut active = choose(&args, policy, &procs_path)?;
    match &active {
        Active::Bpf(_) => debug!("run: method {}, upgrading {}", Method::Bpf, sel.describe()),
        Active::Seccomp(s) => {
            debug!("run: method {}", Method::Seccomp);
            cgroup.quiet_pids.push(s.supervisor_pid().to_string());
        }
    }
    // The tracer is attached before CMD starts, in this process: its first connection is seen.
    let tracer = if args.trace {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut pipe = rt.block_on(async { Pipeline::start(&sel) })?;
        // Registering the ring with the reactor needs the runtime.
        let _rt = rt.enter();
        match &mut active {
            Active::Seccomp(s) => {
                if let Some(f) = s.feed() {
                    pipe.attach_upgrades(UpgradeFeed::Seccomp(f?))?;
                }
            }
            Active::Bpf(up) => {
                if let Some(f) = up.event_feed() {
                    pipe.attach_upgrades(UpgradeFeed::Bpf(Box::new(f)))?;
                }
            }
        }
        drop(_rt);
        Some((rt, pipe, Printer::new(io::stderr(), args.json)))
    } else {
        None
    };

    let procs = CString::new(procs_path.as_os_str().as_bytes()).context("cgroup path")?;
    let (program, rest) = args.command.split_first().expect("clap requires CMD");
    let mut cmd = Command::new(program);
    cmd.args(rest);
    let stage = ExecStage::new()?;
    let stage_addr = stage.0;
    let setup = match &active {
        Active::Seccomp(s) => Some(s.child_setup()),
        Active::Bpf(_) => None,
    };
    // SAFETY: the closure only makes async-signal-safe calls (open, write, close, seccomp,
    // sendmsg, an atomic store) on memory prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            join_cgroup(&procs)?;
            if let Some(s) = &setup {
                s.run()?;
            }
            // CMD gets Ctrl-C as usual (an ignored disposition would survive exec).
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            (*(stage_addr as *const std::sync::atomic::AtomicU32)).store(1, Ordering::SeqCst);
            Ok(())
        });
    }
    // Ctrl-C goes to CMD (the terminal sends it to the whole foreground group); `run` ignores
    // it from before CMD exists, so that even a CMD that signals its group at once cannot
    // kill `run` first.
    // SAFETY: plain signal dispositions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let spawned = cmd.spawn();
    if let Active::Seccomp(s) = &mut active {
        s.spawned();
    }
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if stage.flag().load(Ordering::SeqCst) == 1 => {
            // Everything was in place; exec itself failed: env(1)'s 127 / 126.
            eprintln!(
                "mptcp-trace: cannot run {}: {e}",
                Path::new(program).display()
            );
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Ok(ExitCode::from(code));
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot prepare {} to run", Path::new(program).display()))
        }
    };
    CHILD.store(child.id() as i32, Ordering::Relaxed);
    // SAFETY: installing handlers; `forward` only calls kill.
    unsafe {
        libc::signal(libc::SIGTERM, forward as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, forward as *const () as libc::sighandler_t);
    }
    let status = match tracer {
        Some((rt, pipe, out)) => rt.block_on(trace_until_exit(child, pipe, out))?,
        None => child.wait().context("waiting for the command")?,
    };
    match active {
        Active::Bpf(up) => {
            debug!("run: {}", up.counts());
            drop(up);
        }
        Active::Seccomp(s) => {
            if let Some(c) = s.finish(Duration::from_secs(2)) {
                debug!("run: {c}");
            }
        }
    }
    drop(cgroup);
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128 + sig as u8,
        _ => 1,
    };
    Ok(ExitCode::from(code))
}
