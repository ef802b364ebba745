//! The upgrade without BPF trampolines, for `run`: seccomp user notification on `socket()`.
//!
//! Before exec, CMD installs a seccomp filter (built by libseccomp in the parent, installed
//! with raw, async-signal-safe system calls in the child) whose only non-`ALLOW` action sends
//! `socket(AF_INET|AF_INET6, SOCK_STREAM[|SOCK_NONBLOCK|SOCK_CLOEXEC], 0|IPPROTO_TCP)` to a
//! listener (`SECCOMP_FILTER_FLAG_NEW_LISTENER`). The child passes the listener to the
//! supervisor ([`super::supervisor`]) over a `SOCK_SEQPACKET` socketpair with `SCM_RIGHTS`,
//! closes its own copy and execs CMD. Every other system call, and `socket()` with any other
//! family, type or protocol, is allowed by the filter itself and never leaves the kernel.
//!
//! The supervisor is a separate process (this binary, started again) that lives in the run's
//! cgroup, so the sockets it creates carry that cgroup like CMD's own would; it creates each
//! MPTCP socket in the caller's network namespace with the caller's credentials and installs it
//! in the caller with `SECCOMP_IOCTL_NOTIF_ADDFD`. Its records ([`Upgraded`]) come back to the
//! `run` process as JSON lines on the supervisor's stdout.
//!
//! The filter is inherited across fork and exec by everything CMD starts, and cannot be
//! removed by it.

use std::{
    ffi::CString,
    fs,
    io::{self, Read, Seek},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{ffi::OsStrExt, process::CommandExt},
    },
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use log::debug;
use serde::{Deserialize, Serialize};

use super::{reports::SupervisorFeed, UpgradeError};
use crate::event::Family;

/// The environment variable that turns this binary into the supervisor (value: log level).
pub const SUPERVISOR_ENV: &str = "MPTCP_TRACE_SECCOMP_SUPERVISOR";
/// Set (to "1") when the supervisor only counts: every socket stays TCP.
pub const COUNT_ONLY_ENV: &str = "MPTCP_TRACE_SECCOMP_COUNT_ONLY";
/// Set (to "1") to install sockets in two steps (ADDFD, then a response with the descriptor)
/// as on Linux 5.9–5.13 even where SECCOMP_ADDFD_FLAG_SEND exists: for the tests.
pub const TWO_STEP_ENV: &str = "MPTCP_TRACE_SECCOMP_TWO_STEP_ADDFD";
/// The descriptor on which the supervisor receives the listener.
pub const SUPERVISOR_FD: RawFd = 3;

/// Which upgrade method turned (or would have turned) a socket into MPTCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// `fmod_ret` on `update_socket_protocol`.
    Bpf,
    /// seccomp user notification on `socket()`.
    Seccomp,
}

impl Method {
    /// The name `--json` and the text output give it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Bpf => "bpf",
            Method::Seccomp => "seccomp",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Bpf => "bpf (fmod_ret on update_socket_protocol)",
            Method::Seccomp => "seccomp (user notification on socket())",
        })
    }
}

/// What became of one TCP `socket()` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// The caller got an MPTCP socket.
    Upgraded,
    /// The caller got the plain TCP socket it asked for, because an MPTCP socket could not be
    /// created in its network namespace: `errno` is what `socket(…, IPPROTO_MPTCP)` returned
    /// there (ENOPROTOOPT: `net.mptcp.enabled = 0`; EPROTONOSUPPORT: no MPTCP in the kernel).
    KeptTcp { errno: i32 },
    /// `--count-only`: it would have been upgraded; it stayed TCP.
    Counted,
    /// The MPTCP socket was made but could not be installed in the caller (e.g. EMFILE): the
    /// call failed with `errno`, as the kernel's own `socket()` would have.
    Failed { errno: i32 },
}

/// One TCP `socket()` call seen by the upgrade: the hook for `socket_upgraded` events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgraded {
    /// CLOCK_MONOTONIC nanoseconds when the supervisor received the call (before it made the
    /// socket, so before any event of that socket's connection).
    pub ts_ns: u64,
    /// The caller's process (thread group) id, in the `run` process's pid namespace.
    pub pid: u32,
    /// The calling thread.
    pub tid: u32,
    /// The calling thread's command name.
    pub comm: String,
    /// The caller's cgroup v2 id (inode of its cgroup directory; 0 when unknown).
    pub cgroup_id: u64,
    pub family: Family,
    /// The caller asked for SOCK_NONBLOCK / SOCK_CLOEXEC.
    pub nonblock: bool,
    pub cloexec: bool,
    pub method: Method,
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl std::fmt::Display for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fam = match self.family {
            Family::Ipv4 => "AF_INET",
            Family::Ipv6 => "AF_INET6",
        };
        write!(
            f,
            "socket({fam}, SOCK_STREAM) of pid {} ({}): ",
            self.pid, self.comm
        )?;
        match self.outcome {
            Outcome::Upgraded => write!(f, "upgraded to MPTCP"),
            Outcome::Counted => write!(f, "would be upgraded (--count-only), kept TCP"),
            Outcome::KeptTcp { errno } => write!(
                f,
                "kept TCP: MPTCP cannot be created in its network namespace ({}{})",
                errno_name(errno),
                if errno == libc::ENOPROTOOPT {
                    ": net.mptcp.enabled = 0 there"
                } else {
                    ""
                }
            ),
            Outcome::Failed { errno } => {
                write!(f, "failed: {}", io::Error::from_raw_os_error(errno))
            }
        }
    }
}

/// The errno's symbolic name where it has one, else its number.
pub fn errno_name(e: i32) -> String {
    crate::sys::errno::name(e).unwrap_or_else(|| format!("errno {e}"))
}

/// Sums of the supervisor's records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeccompCounts {
    pub upgraded: u64,
    pub kept_tcp: u64,
    pub counted: u64,
    pub failed: u64,
}

impl SeccompCounts {
    pub(super) fn add(&mut self, o: &Outcome) {
        match o {
            Outcome::Upgraded => self.upgraded += 1,
            Outcome::KeptTcp { .. } => self.kept_tcp += 1,
            Outcome::Counted => self.counted += 1,
            Outcome::Failed { .. } => self.failed += 1,
        }
    }
}

impl std::fmt::Display for SeccompCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TCP sockets seen {}, upgraded to MPTCP {}, kept TCP (no MPTCP in their namespace) {}",
            self.upgraded + self.kept_tcp + self.counted + self.failed,
            self.upgraded,
            self.kept_tcp
        )?;
        if self.counted > 0 {
            write!(f, ", counted only {}", self.counted)?;
        }
        if self.failed > 0 {
            write!(f, ", failed {}", self.failed)?;
        }
        Ok(())
    }
}

/// Why the seccomp method cannot run here.
fn unavailable(why: String) -> UpgradeError {
    UpgradeError::SeccompUnavailable(why)
}

/// Linux ≥ 5.9 (`SECCOMP_IOCTL_NOTIF_ADDFD`) with `SECCOMP_RET_USER_NOTIF` available.
pub fn preflight() -> Result<(), UpgradeError> {
    let release = super::osrelease();
    let mut it = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    if v < (5, 9) {
        return Err(unavailable(format!(
            "it needs Linux ≥ 5.9 (SECCOMP_IOCTL_NOTIF_ADDFD); this kernel is {release}"
        )));
    }
    let action: u32 = libc::SECCOMP_RET_USER_NOTIF;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    if r != 0 {
        return Err(unavailable(format!(
            "the kernel does not offer SECCOMP_RET_USER_NOTIF ({}; CONFIG_SECCOMP_FILTER=y needed)",
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// The compiled filter: classic BPF instructions, ready for `seccomp(2)`.
#[derive(Clone)]
pub struct Filter(Arc<Vec<libc::sock_filter>>);

impl Filter {
    /// Builds the filter with libseccomp and exports its BPF (installed later, in the child,
    /// without libseccomp: the child of a multi-threaded parent may not allocate).
    pub fn build() -> Result<Filter, UpgradeError> {
        let err = |e: libseccomp::error::SeccompError| unavailable(format!("libseccomp: {e}"));
        let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(err)?;
        // Foreign-ABI calls (a 32-bit program CMD starts) run untouched instead of killing it.
        ctx.set_act_badarch(ScmpAction::Allow).map_err(err)?;
        let socket = ScmpSyscall::from_name("socket").map_err(err)?;
        let int = ScmpCompareOp::MaskedEqual(0xffff_ffff);
        // SOCK_NONBLOCK and SOCK_CLOEXEC may be set; any other bit in `type` means "not a
        // plain stream socket" (or an invalid call the kernel must refuse itself).
        let flags = (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u32;
        let ty = ScmpCompareOp::MaskedEqual(u64::from(!flags));
        for family in [libc::AF_INET, libc::AF_INET6] {
            for proto in [0, libc::IPPROTO_TCP] {
                ctx.add_rule_conditional(
                    ScmpAction::Notify,
                    socket,
                    &[
                        ScmpArgCompare::new(0, int, family as u64),
                        ScmpArgCompare::new(1, ty, libc::SOCK_STREAM as u64),
                        ScmpArgCompare::new(2, int, proto as u64),
                    ],
                )
                .map_err(err)?;
            }
        }
        // SAFETY: memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"mptcp-trace-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(UpgradeError::io("memfd_create")(io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor we own.
        let mut file = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        ctx.export_bpf(&file).map_err(err)?;
        let mut bytes = Vec::new();
        file.rewind()
            .and_then(|()| file.read_to_end(&mut bytes))
            .map_err(UpgradeError::io("reading the exported seccomp filter"))?;
        let insns: Vec<libc::sock_filter> = bytes
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        if insns.is_empty() || insns.len() > u16::MAX as usize {
            return Err(unavailable(format!(
                "libseccomp exported {} bytes of filter",
                bytes.len()
            )));
        }
        debug!("seccomp filter: {} BPF instructions", insns.len());
        Ok(Filter(Arc::new(insns)))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Installs the filter in the calling process and returns the listener.
    ///
    /// Async-signal-safe (only system calls): callable between fork and exec. When the caller
    /// lacks CAP_SYS_ADMIN the kernel requires no_new_privs, which is then set (setuid programs
    /// CMD starts would then not gain privileges); as root it is left alone.
    pub fn install(&self) -> io::Result<RawFd> {
        let prog = libc::sock_fprog {
            len: self.0.len() as u16,
            filter: self.0.as_ptr() as *mut libc::sock_filter,
        };
        let load = || {
            // SAFETY: `prog` points to valid instructions for the duration of the call.
            unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                    &prog as *const libc::sock_fprog,
                )
            }
        };
        let mut fd = load();
        if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EACCES) {
            // SAFETY: plain prctl.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
            fd = load();
        }
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd as RawFd)
    }
}

/// Sends `fd` over the unix socket `sock` (one byte of data, the descriptor as SCM_RIGHTS).
/// Async-signal-safe.
pub fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    let mut byte = [b'L'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one descriptor (CMSG_SPACE(4) = 24 on 64-bit), aligned for cmsghdr.
    #[repr(C, align(8))]
    struct Buf([u8; 64]);
    let mut buf = Buf([0; 64]);
    // SAFETY: the header, iovec and control buffer outlive the call; CMSG_* stay in `buf`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = buf.0.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one descriptor sent by [`send_fd`]; `None` at end of file.
pub fn recv_fd(sock: RawFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    #[repr(C, align(8))]
    struct Buf([u8; 64]);
    let mut buf = Buf([0; 64]);
    // SAFETY: as in send_fd; the received descriptor is owned from here on.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = buf.0.as_mut_ptr().cast();
        msg.msg_controllen = buf.0.len() as _;
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(None);
        }
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_level != libc::SOL_SOCKET || (*c).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(io::Error::other("no descriptor in the message"));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
        Ok(Some(OwnedFd::from_raw_fd(fd)))
    }
}

/// Where the supervisor's records go.
pub enum Records {
    /// To this function, on a thread reading them as they come (`run`).
    Log(Box<dyn FnMut(&Upgraded) + Send>),
    /// To the tracing pipeline, which reads them itself ([`SeccompUpgrade::feed`]) so that
    /// they keep their place among the events (`run --trace`; see [`super::reports`]).
    Pipeline,
}

/// The `run` side of the seccomp method: the supervisor process, the reader of its records,
/// and what CMD's child needs before exec.
pub struct SeccompUpgrade {
    supervisor: Child,
    /// The thread logging the records ([`Records::Log`]).
    reader: Option<JoinHandle<SeccompCounts>>,
    /// The supervisor's stdout until the pipeline takes it ([`Records::Pipeline`]).
    stdout: Option<ChildStdout>,
    /// CMD's end of the socketpair to the supervisor (closed once CMD is spawned).
    cmd_end: Option<OwnedFd>,
    filter: Filter,
}

/// What CMD's pre-exec hook needs: plain values, usable after fork.
#[derive(Clone)]
pub struct ChildSetup {
    filter: Filter,
    sock: RawFd,
}

impl ChildSetup {
    /// Between fork and exec: install the filter, hand the listener to the supervisor, close
    /// it here (CMD must not hold its own listener). Async-signal-safe.
    pub fn run(&self) -> io::Result<()> {
        let listener = self.filter.install()?;
        let r = send_fd(self.sock, listener);
        // SAFETY: our descriptors, not used afterwards.
        unsafe {
            libc::close(listener);
            libc::close(self.sock);
        }
        r
    }
}

impl SeccompUpgrade {
    /// Starts the supervisor (this binary again, with [`SUPERVISOR_ENV`]) inside the cgroup
    /// whose `cgroup.procs` is `procs`. Its records go where `records` says.
    pub fn start(
        procs: &Path,
        count_only: bool,
        records: Records,
    ) -> Result<SeccompUpgrade, UpgradeError> {
        preflight()?;
        let filter = Filter::build()?;
        let mut fds = [0; 2];
        // SAFETY: valid array of two descriptors.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } != 0
        {
            return Err(UpgradeError::io("socketpair")(io::Error::last_os_error()));
        }
        // SAFETY: fresh descriptors we own.
        let (sup_end, cmd_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let procs = CString::new(procs.as_os_str().as_bytes()).expect("no NUL");
        let level = log::max_level().to_string();
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0("mptcp-trace-seccomp")
            .env(SUPERVISOR_ENV, level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if count_only {
            cmd.env(COUNT_ONLY_ENV, "1");
        }
        let sup_raw = sup_end.as_raw_fd();
        // SAFETY: only async-signal-safe calls (open, write, close, dup2, fcntl).
        unsafe {
            cmd.pre_exec(move || {
                join_cgroup(&procs)?;
                // Ctrl-C and hang-ups reach the whole foreground group; the supervisor stays
                // until the last process holding the filter is gone (see supervisor.rs).
                // Ignored from before exec, so that no early signal can kill it.
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                libc::signal(libc::SIGQUIT, libc::SIG_IGN);
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                if sup_raw == SUPERVISOR_FD {
                    if libc::fcntl(sup_raw, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(sup_raw, SUPERVISOR_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut supervisor = cmd
            .spawn()
            .map_err(UpgradeError::io("cannot start the seccomp supervisor"))?;
        drop(sup_end);
        debug!("seccomp supervisor: pid {}", supervisor.id());
        let stdout = supervisor.stdout.take().expect("piped");
        let (reader, stdout) = match records {
            Records::Log(on_record) => (
                Some(std::thread::spawn(move || {
                    super::reports::log_records(stdout, on_record)
                })),
                None,
            ),
            Records::Pipeline => (None, Some(stdout)),
        };
        Ok(SeccompUpgrade {
            supervisor,
            reader,
            stdout,
            cmd_end: Some(cmd_end),
            filter,
        })
    }

    /// With [`Records::Pipeline`]: the feed of the supervisor's records, once. Needs a tokio
    /// runtime with I/O.
    pub fn feed(&mut self) -> Option<io::Result<SupervisorFeed>> {
        self.stdout.take().map(SupervisorFeed::new)
    }

    /// What CMD's pre-exec hook runs ([`ChildSetup::run`]).
    pub fn child_setup(&self) -> ChildSetup {
        ChildSetup {
            filter: self.filter.clone(),
            sock: self.cmd_end.as_ref().expect("before spawned()").as_raw_fd(),
        }
    }

    /// CMD was started (or failed to start): our copy of its end goes, so the supervisor sees
    /// end of file if the listener never comes.
    pub fn spawned(&mut self) {
        self.cmd_end = None;
    }

    pub fn supervisor_pid(&self) -> u32 {
        self.supervisor.id()
    }

    /// Waits (at most `grace`) for the supervisor, which exits once no process holds the filter
    /// any more. Processes CMD left behind keep it alive: it then goes on serving them on its
    /// own and the counts are those so far.
    pub fn finish(mut self, grace: Duration) -> Option<SeccompCounts> {
        let deadline = Instant::now() + grace;
        loop {
            match self.supervisor.try_wait() {
                Ok(Some(st)) => {
                    if !st.success() {
                        log::warn!("the seccomp supervisor exited with {st}");
                    }
                    return self.reader.take().and_then(|r| r.join().ok());
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    log::warn!(
                        "processes the command left behind still hold the seccomp filter; the supervisor (pid {}) keeps serving them",
                        self.supervisor.id()
                    );
                    return None;
                }
            }
        }
    }
}

/// Writes "0" (the calling process) to a `cgroup.procs` file. Async-signal-safe.
pub fn join_cgroup(procs: &CString) -> io::Result<()> {
    // SAFETY: NUL-terminated path; plain system calls.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
        let err = io::Error::last_os_error();
        libc::close(fd);
        if ok {
            Ok(())
        } else {
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_as_json() {
        let u = Upgraded {
            ts_ns: 7,
            pid: 10,
            tid: 11,
            comm: "nc".into(),
            cgroup_id: 42,
            family: Family::Ipv6,
            nonblock: true,
            cloexec: false,
            method: Method::Seccomp,
            outcome: Outcome::KeptTcp {
                errno: libc::ENOPROTOOPT,
            },
        };
        let s = serde_json::to_string(&u).unwrap();
        assert!(s.contains(r#""outcome":"kept_tcp","errno":92"#), "{s}");
        assert_eq!(serde_json::from_str::<Upgraded>(&s).unwrap(), u);
        assert!(u.to_string().contains("net.mptcp.enabled = 0"));
    }

    #[test]
    fn the_filter_compiles() {
        let f = Filter::build().unwrap();
        assert!(f.len() > 4);
    }
}
