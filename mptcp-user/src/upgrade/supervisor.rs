//! The seccomp supervisor: this binary started again by `run` (see [`super::seccomp`]), inside
//! the run's cgroup. It receives the listener from CMD's child on fd 3, then answers each
//! notified `socket()`:
//!
//! 1. reads the caller's identity from `/proc/<tid>` (network namespace, uids, gids,
//!    supplementary groups, command name, cgroup), then checks `SECCOMP_IOCTL_NOTIF_ID_VALID`:
//!    if the caller died meanwhile (its tid may already be reused) the request is dropped
//!    unanswered;
//! 2. creates `socket(family, type, IPPROTO_MPTCP)` with the caller's type flags — in the
//!    caller's network namespace and with its credentials: directly when they are ours, else on
//!    a short-lived thread that `setns`es into the namespace and takes the caller's
//!    credentials (per-thread `setgroups`/`setresgid`/`setresuid`/`setfsuid` system calls);
//! 3. installs it in the caller with `SECCOMP_IOCTL_NOTIF_ADDFD` + `SECCOMP_ADDFD_FLAG_SEND`
//!    (≥ 5.14: installed and returned as the call's result in one step), or on 5.9–5.13 ADDFD
//!    then a response carrying the new descriptor number;
//! 4. when the MPTCP socket cannot be made (MPTCP disabled in that namespace), answers
//!    `SECCOMP_USER_NOTIF_FLAG_CONTINUE`: the kernel runs the caller's own `socket()` (TCP).
//!
//! Each call produces one [`Upgraded`] record, written as a JSON line on stdout; before it gives
//! a caller its MPTCP socket it says so (see [`super::reports`] for why). The supervisor exits
//! when no process holds the filter any more (POLLHUP on the listener).

use std::{
    ffi::CString,
    fs,
    io::{self, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::PathBuf,
    process::ExitCode,
};

use libseccomp::{notify_id_valid, ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags};
use log::{debug, warn};

use super::reports::Report;
use super::seccomp::{
    recv_fd, Method, Outcome, Upgraded, COUNT_ONLY_ENV, SUPERVISOR_ENV, SUPERVISOR_FD, TWO_STEP_ENV,
};
use crate::event::Family;

/// When this process was started as the supervisor, runs it and returns its exit status.
pub fn main_if_requested() -> Option<ExitCode> {
    let level = std::env::var(SUPERVISOR_ENV).ok()?;
    let level = level.parse().unwrap_or(log::LevelFilter::Warn);
    env_logger::Builder::new()
        .filter_level(level)
        .format_target(false)
        .format_timestamp(None)
        .init();
    // SAFETY: PR_SET_NAME with a NUL-terminated name of ≤ 15 bytes; ignoring signals.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"mptcp-seccomp".as_ptr());
        // Ctrl-C and a hang-up reach the whole foreground group: CMD decides what they mean,
        // and may still open sockets while it shuts down, so the supervisor stays until the
        // last process holding the filter is gone. (Were it killed, their TCP socket() calls
        // would fail with ENOSYS.)
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let count_only = std::env::var_os(COUNT_ONLY_ENV).is_some();
    Some(match serve(count_only) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mptcp-trace: seccomp supervisor: {e}");
            ExitCode::FAILURE
        }
    })
}

/// Who made the call: what the socket must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Creds {
    uid: [u32; 4],
    gid: [u32; 4],
    groups: Vec<u32>,
}

struct Caller {
    tid: u32,
    tgid: u32,
    comm: String,
    creds: Creds,
    netns_ino: u64,
    /// The caller's network namespace, opened only when it is not ours.
    netns: Option<OwnedFd>,
    cgroup_id: u64,
}

fn ids(line: &str) -> Vec<u32> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect()
}

fn parse_status(text: &str) -> io::Result<(u32, String, Creds)> {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| io::Error::other(format!("no {name} in status")))
    };
    let four = |v: Vec<u32>| -> io::Result<[u32; 4]> {
        v.try_into()
            .map_err(|_| io::Error::other("malformed id line"))
    };
    let tgid = ids(field("Tgid:")?).first().copied().unwrap_or(0);
    let comm = field("Name:")?
        .split_once('\t')
        .map(|(_, n)| n.to_string())
        .unwrap_or_default();
    let creds = Creds {
        uid: four(ids(field("Uid:")?))?,
        gid: four(ids(field("Gid:")?))?,
        groups: ids(field("Groups:")?),
    };
    Ok((tgid, comm, creds))
}

struct State {
    listener: OwnedFd,
    own_netns_ino: u64,
    own_creds: Creds,
    cgroup2: Option<PathBuf>,
    /// Cgroup ids by path (a cgroup's id is its directory's inode).
    cgroup_ids: std::collections::HashMap<String, u64>,
    count_only: bool,
    /// Whether SECCOMP_ADDFD_FLAG_SEND works (Linux ≥ 5.14); learned from the first ADDFD.
    addfd_send: bool,
}

fn serve(count_only: bool) -> io::Result<()> {
    // The listener, from CMD's child; end of file when it failed before installing the filter.
    let listener = recv_fd(SUPERVISOR_FD)?;
    // SAFETY: fd 3 is ours (inherited for this purpose) and not used again.
    unsafe { libc::close(SUPERVISOR_FD) };
    let Some(listener) = listener else {
        debug!("seccomp supervisor: no listener came (the command did not start)");
        return Ok(());
    };
    let own = fs::read_to_string("/proc/thread-self/status")?;
    let mut st = State {
        listener,
        own_netns_ino: fs::metadata("/proc/thread-self/ns/net")?.ino(),
        own_creds: parse_status(&own)?.2,
        cgroup2: crate::sys::cgroup::mount(),
        cgroup_ids: Default::default(),
        count_only,
        addfd_send: std::env::var_os(TWO_STEP_ENV).is_none(),
    };
    // Records are flushed before a caller is given its socket and whenever no request is
    // waiting.
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut timeout = 0;
    loop {
        let mut pfd = libc::pollfd {
            fd: st.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout) };
        if n == 0 {
            // The run process may be gone (killed); the upgrade goes on regardless.
            let _ = out.flush();
            timeout = -1;
            continue;
        }
        timeout = 0;
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if pfd.revents & libc::POLLIN != 0 {
            let req = match ScmpNotifReq::receive(st.listener.as_raw_fd()) {
                Ok(r) => r,
                // The caller was interrupted or died between poll and receive.
                Err(e) => {
                    debug!("seccomp: receive: {e}");
                    continue;
                }
            };
            if let Some(rec) = handle(&mut st, &req, &mut out) {
                log::trace!("seccomp: {rec}");
                let _ = Report::Record(rec).write(&mut out);
            }
        } else if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            debug!("seccomp supervisor: no process holds the filter any more");
            let _ = out.flush();
            return Ok(());
        }
    }
}

fn read_caller(st: &mut State, tid: u32) -> io::Result<Caller> {
    let status = fs::read_to_string(format!("/proc/{tid}/status"))?;
    let (tgid, comm, creds) = parse_status(&status)?;
    let ns_path = format!("/proc/{tid}/ns/net");
    let netns_ino = fs::metadata(&ns_path)?.ino();
    let netns = if netns_ino == st.own_netns_ino {
        None
    } else {
        let c = CString::new(ns_path).expect("no NUL");
        // SAFETY: NUL-terminated path.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The namespace opened must be the one whose inode was checked.
        if fs::File::from(fd.try_clone()?).metadata()?.ino() != netns_ino {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Some(fd)
    };
    let cgroup_id = fs::read_to_string(format!("/proc/{tid}/cgroup"))
        .ok()
        .and_then(|t| {
            let rel = t.lines().find_map(|l| l.strip_prefix("0::"))?.to_string();
            if let Some(id) = st.cgroup_ids.get(&rel) {
                return Some(*id);
            }
            let dir = st.cgroup2.as_ref()?.join(rel.trim_start_matches('/'));
            let id = fs::metadata(dir).ok()?.ino();
            if st.cgroup_ids.len() > 1024 {
                st.cgroup_ids.clear();
            }
            st.cgroup_ids.insert(rel, id);
            Some(id)
        })
        .unwrap_or(0);
    Ok(Caller {
        tid,
        tgid,
        comm,
        creds,
        netns_ino,
        netns,
        cgroup_id,
    })
}

fn respond_continue(st: &State, id: u64) {
    if let Err(e) = ScmpNotifResp::new_continue(id, ScmpNotifRespFlags::empty())
        .respond(st.listener.as_raw_fd())
    {
        debug!("seccomp: continue {id}: {e}");
    }
}

/// Answers one call; its record, if it has one. `out`: where the reports go.
fn handle(st: &mut State, req: &ScmpNotifReq, out: &mut impl Write) -> Option<Upgraded> {
    let ts_ns = crate::decode::monotonic_ns();
    let id = req.id;
    let [family, ty, _proto, ..] = req.data.args.map(|a| a as i32);
    let family_e = match family {
        libc::AF_INET => Family::Ipv4,
        libc::AF_INET6 => Family::Ipv6,
        _ => {
            // The filter only sends TCP sockets; anything else runs as asked.
            respond_continue(st, id);
            return None;
        }
    };
    let caller = read_caller(st, req.pid);
    // Everything about the caller was read from /proc/<tid>: it is only trustworthy if that
    // tid still is the caller now. A dead caller's request is never answered.
    if notify_id_valid(st.listener.as_raw_fd(), id).is_err() {
        debug!("seccomp: caller {} gone before its answer", req.pid);
        return None;
    }
    let mut rec = Upgraded {
        ts_ns,
        pid: req.pid,
        tid: req.pid,
        comm: String::new(),
        cgroup_id: 0,
        family: family_e,
        nonblock: ty & libc::SOCK_NONBLOCK != 0,
        cloexec: ty & libc::SOCK_CLOEXEC != 0,
        method: Method::Seccomp,
        outcome: Outcome::Upgraded,
    };
    let caller = match caller {
        Ok(c) => c,
        Err(e) => {
            warn!(
                "seccomp: cannot read the identity of tid {}: {e}; its socket stays TCP",
                req.pid
            );
            respond_continue(st, id);
            rec.outcome = Outcome::KeptTcp {
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            };
            return Some(rec);
        }
    };
    rec.pid = caller.tgid;
    rec.comm = caller.comm.clone();
    rec.cgroup_id = caller.cgroup_id;
    if st.count_only {
        respond_continue(st, id);
        rec.outcome = Outcome::Counted;
        return Some(rec);
    }
    let sock = if caller.netns.is_none() && caller.creds == st.own_creds {
        mptcp_socket(family, ty)
    } else {
        mptcp_socket_as(&caller, &st.own_creds, family, ty)
    };
    let sock = match sock {
        Ok(s) => s,
        Err(errno) => {
            respond_continue(st, id);
            rec.outcome = Outcome::KeptTcp { errno };
            return Some(rec);
        }
    };
    let newfd_flags = if rec.cloexec {
        libc::O_CLOEXEC as u32
    } else {
        0
    };
    // Said, and flushed, before the caller can use the socket: the tracer then holds the
    // socket's events until this record comes.
    let _ = Report::Answering { since: ts_ns }
        .write(out)
        .and_then(|()| out.flush());
    rec.outcome = match install(st, id, &sock, newfd_flags) {
        Ok(()) => Outcome::Upgraded,
        // Killed (or interrupted by a signal: it will call again) between ID_VALID and here.
        Err(libc::ENOENT) => {
            let _ = Report::Unanswered.write(out);
            return None;
        }
        Err(errno) => {
            let _ = ScmpNotifResp::new_error(id, -errno, ScmpNotifRespFlags::empty())
                .respond(st.listener.as_raw_fd());
            Outcome::Failed { errno }
        }
    };
    Some(rec)
}

/// `socket(family, type, IPPROTO_MPTCP)` here; the errno on failure.
fn mptcp_socket(family: i32, ty: i32) -> Result<OwnedFd, i32> {
    // Our copy is close-on-exec whatever the caller asked (that is its descriptor's flag).
    // SAFETY: plain system call.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, libc::IPPROTO_MPTCP) };
    if fd < 0 {
        return Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// [`mptcp_socket`] on a thread in the caller's network namespace with its credentials. The
/// thread ends right after, so the credentials it took die with it.
fn mptcp_socket_as(
    caller: &Caller,
    own_creds: &Creds,
    family: i32,
    ty: i32,
) -> Result<OwnedFd, i32> {
    let netns = caller.netns.as_ref().map(|fd| fd.as_raw_fd());
    let creds = (caller.creds != *own_creds).then(|| caller.creds.clone());
    debug!(
        "seccomp: creating tid {}'s socket in netns {} as uid {:?}",
        caller.tid, caller.netns_ino, caller.creds.uid
    );
    let last = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: these system calls change only the calling thread (raw syscalls, not
            // glibc's process-wide set*id wrappers); `netns` stays open during the call.
            unsafe {
                if let Some(ns) = netns {
                    if libc::setns(ns, libc::CLONE_NEWNET) != 0 {
                        return Err(last());
                    }
                }
                if let Some(c) = creds {
                    if libc::syscall(libc::SYS_setgroups, c.groups.len(), c.groups.as_ptr()) != 0
                        || libc::syscall(libc::SYS_setresgid, c.gid[0], c.gid[1], c.gid[2]) != 0
                        || libc::syscall(libc::SYS_setresuid, c.uid[0], c.uid[1], c.uid[2]) != 0
                    {
                        return Err(last());
                    }
                    libc::syscall(libc::SYS_setfsgid, c.gid[3]);
                    libc::syscall(libc::SYS_setfsuid, c.uid[3]);
                }
            }
            mptcp_socket(family, ty)
        })
        .join()
        .unwrap_or(Err(libc::EIO))
    })
}

fn addfd(st: &State, id: u64, sock: &OwnedFd, flags: u64, newfd_flags: u32) -> Result<i32, i32> {
    let req = libc::seccomp_notif_addfd {
        id,
        flags: flags as u32,
        srcfd: sock.as_raw_fd() as u32,
        newfd: 0,
        newfd_flags,
    };
    // SAFETY: the ioctl reads one seccomp_notif_addfd.
    let r = unsafe {
        libc::ioctl(
            st.listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ADDFD,
            &req as *const libc::seccomp_notif_addfd,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Ok(r)
    }
}

/// Installs `sock` in the caller as the result of its call.
fn install(st: &mut State, id: u64, sock: &OwnedFd, newfd_flags: u32) -> Result<(), i32> {
    if st.addfd_send {
        match addfd(st, id, sock, libc::SECCOMP_ADDFD_FLAG_SEND, newfd_flags) {
            Ok(_) => return Ok(()),
            // Linux < 5.14 knows no SECCOMP_ADDFD_FLAG_SEND.
            Err(libc::EINVAL) => {
                debug!("seccomp: no SECCOMP_ADDFD_FLAG_SEND, using ADDFD then a response");
                st.addfd_send = false;
            }
            Err(e) => return Err(e),
        }
    }
    let newfd = addfd(st, id, sock, 0, newfd_flags)?;
    ScmpNotifResp::new_val(id, newfd as i64, ScmpNotifRespFlags::empty())
        .respond(st.listener.as_raw_fd())
        .map_err(|e| {
            // The caller died or was interrupted; the descriptor went with it.
            debug!("seccomp: respond {id}: {e}");
            libc::ENOENT
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let text = "Name:\tnc\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t41\nPid:\t42\n\
                    Uid:\t1000\t1000\t1000\t1001\nGid:\t100\t100\t100\t100\nGroups:\t4 27 \n";
        let (tgid, comm, c) = parse_status(text).unwrap();
        assert_eq!((tgid, comm.as_str()), (41, "nc"));
        assert_eq!(c.uid, [1000, 1000, 1000, 1001]);
        assert_eq!(c.gid, [100; 4]);
        assert_eq!(c.groups, [4, 27]);
        let none =
            parse_status("Name:\tx\nTgid:\t1\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n")
                .unwrap();
        assert!(none.2.groups.is_empty());
    }
}
