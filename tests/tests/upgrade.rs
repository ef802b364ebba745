//! The TCP→MPTCP upgrade (`mptcp-trace upgrade`, `mptcp-trace run`), end to end, on whatever
//! kernel runs the tests. Each test first decides from independent facts what this kernel must
//! do ([`expect`]): before Linux 6.6 there is no hook, and under kernel lockdown BPF trampolines
//! are refused — there the test asserts the refusal (message, exit status 2, nothing left
//! attached or pinned) instead of the upgrade. Nothing is ever skipped.
//!
//! The sockets are made by this very test binary, started again as a workload process
//! (`workload`, an ignored test the others run with `--ignored --exact`), so they are plain
//! `std::net` sockets of an unmodified program. Needs root.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{fd::AsRawFd, unix::fs::PermissionsExt, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    kernel_version, loaded_program_ids, mptcp_trace_bin, prog_ids_held_by,
    prog_ids_held_by_any_process, prog_ids_in_fdinfo, program_name, require_root, tag,
};
use mptcp_user::{
    peer::so_protocol,
    sys::cgroup::mount as cgroup2_mount,
    testbed::{self, TestBed},
};

const TCP: i32 = 6;
const MPTCP: i32 = 262;
const PIN_DIR: &str = "/sys/fs/bpf/mptcp-trace";
/// The program's name as the kernel lists it.
const PROG_NAME: &str = "mptcp_upgrade";
const TIMEOUT: Duration = Duration::from_secs(60);

/// What this kernel must do with the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Works,
    /// Linux < 6.6: no `update_socket_protocol`.
    HookMissing,
    /// Kernel lockdown is on: fentry/fmod_ret loads fail with EPERM.
    Refused,
}

/// The kernel's lockdown mode, read once per test process: tests run in parallel, and a
/// securityfs mount one test made must not be unmounted under another's read.
fn lockdown() -> String {
    static MODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MODE.get_or_init(|| {
        let file = Path::new("/sys/kernel/security/lockdown");
        let mut mounted = false;
        if !file.exists() {
            mounted = Command::new("mount")
                .args(["-t", "securityfs", "none", "/sys/kernel/security"])
                .status()
                .is_ok_and(|s| s.success());
        }
        let mode = fs::read_to_string(file);
        if mounted {
            let _ = Command::new("umount").arg("/sys/kernel/security").status();
        }
        // A kernel without the lockdown LSM has no such file: no lockdown.
        let mode = mode.unwrap_or_else(|_| "[none]".into());
        mode.split_whitespace()
            .find(|w| w.starts_with('['))
            .unwrap_or("[none]")
            .trim_matches(['[', ']'])
            .to_string()
    })
    .clone()
}

fn expect() -> Expect {
    require_root();
    let v = kernel_version();
    let e = if v < (6, 6) {
        Expect::HookMissing
    } else if lockdown() != "none" {
        Expect::Refused
    } else {
        Expect::Works
    };
    eprintln!("kernel {v:?}, lockdown {}: expecting {e:?}", lockdown());
    e
}

fn trace(args: &[&str]) -> Output {
    Command::new(mptcp_trace_bin())
        .args(args)
        .output()
        .expect("run mptcp-trace")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits (program release is deferred) until none of `ids` — programs one process held — is
/// loaded any more.
fn assert_programs_gone(ids: &HashSet<u32>, what: &str) {
    let start = Instant::now();
    loop {
        let left: Vec<u32> = loaded_program_ids().intersection(ids).copied().collect();
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: programs {left:?} are still loaded"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// For a process too short-lived to read its descriptors: waits until no upgrade program
/// loaded since `before` is left that no live process holds — one only a pin or a leaked
/// attachment keeps, which is what that process could have left. Others' upgrades are held
/// by their processes; others' pins cannot appear meanwhile (callers hold [`pin_path`]).
fn assert_no_orphan_program_since(before: &HashSet<u32>, what: &str) {
    let start = Instant::now();
    loop {
        let held = prog_ids_held_by_any_process();
        let orphans: Vec<u32> = loaded_program_ids()
            .difference(before)
            .filter(|id| !held.contains(id))
            .filter(|&&id| program_name(id).as_deref() == Some(PROG_NAME))
            .copied()
            .collect();
        if orphans.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: {PROG_NAME} programs {orphans:?} left loaded, held by no process"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Serialises the tests that create, plant, read or remove anything at the one global
/// [`PIN_DIR`]. A test that panicked while holding it leaves its guards' cleanup done, so a
/// poisoned lock is still good.
fn pin_path() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The program the link pinned in [`PIN_DIR`] runs, by id (the kernel's fdinfo of the opened
/// link), or `None` when nothing is pinned.
fn pinned_program_id() -> Option<u32> {
    let link =
        mptcp_user::upgrade::raw_bpf::obj_get(&Path::new(PIN_DIR).join("upgrade_link")).ok()?;
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", link.as_raw_fd())).unwrap();
    prog_ids_in_fdinfo(&info).first().copied()
}

/// The refusal this kernel must give for `args`: exit 2, the explanation, nothing left.
fn assert_refused(kind: Expect, args: &[&str]) {
    let _pins = pin_path();
    let before = loaded_program_ids();
    let o = trace(args);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {t}");
    match kind {
        Expect::HookMissing => assert!(t.contains("needs Linux ≥ 6.6"), "{t}"),
        Expect::Refused => {
            assert!(
                t.contains("refused to load the upgrade's BPF trampoline"),
                "{t}"
            );
            // What the kernel returned and what was checked, not a guess.
            assert!(t.contains("BPF_PROG_LOAD returned EPERM"), "{t}");
            assert!(t.contains("Checked:"), "{t}");
            let mode = lockdown();
            if mode == "none" {
                assert!(
                    t.contains("lockdown is off (none), so it is not the cause"),
                    "{t}"
                );
            } else {
                assert!(t.contains(&format!("lockdown is {mode}")), "{t}");
            }
            assert!(t.contains("mptcpize run"), "{t}");
        }
        Expect::Works => unreachable!(),
    }
    assert!(t.contains("tracing still works"), "{t}");
    // `upgrade` names what works on this kernel instead.
    if args[0] == "upgrade" {
        assert!(t.contains("mptcp-trace run -- CMD"), "{t}");
    }
    assert!(
        !Path::new(PIN_DIR).join("upgrade_link").exists(),
        "{PIN_DIR} has an upgrade after a refusal"
    );
    assert_no_orphan_program_since(&before, &format!("{args:?}"));
}

// ---------------------------------------------------------------------------------------------
// The workload: this binary, started again.

const ROLE: &str = "MPTCP_UPGRADE_TEST_ROLE";
const OUT: &str = "MPTCP_UPGRADE_TEST_OUT";
const COMM: &str = "MPTCP_UPGRADE_TEST_COMM";

/// `SOL_MPTCP`, `MPTCP_INFO`, `MPTCP_SUBFLOW_ADDRS` (linux/mptcp.h).
const SOL_MPTCP: i32 = 284;
const MPTCP_INFO: i32 = 1;
const MPTCP_SUBFLOW_ADDRS: i32 = 3;

/// Additional subflows of an MPTCP socket (`mptcp_info.mptcpi_subflows`).
fn extra_subflows(s: &impl AsRawFd) -> u8 {
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: valid fd and buffer.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            SOL_MPTCP,
            MPTCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r == 0 {
        info[0]
    } else {
        0
    }
}

/// Local IPv4 addresses of every subflow (`MPTCP_SUBFLOW_ADDRS`).
fn subflow_locals(s: &impl AsRawFd) -> Vec<String> {
    // struct mptcp_subflow_data (16 bytes) then struct mptcp_subflow_addrs (2 × 128 bytes).
    const ENTRY: usize = 256;
    let mut buf = vec![0u8; 16 + 8 * ENTRY];
    buf[0..4].copy_from_slice(&16u32.to_ne_bytes());
    buf[12..16].copy_from_slice(&(ENTRY as u32).to_ne_bytes());
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: valid fd and buffer.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            SOL_MPTCP,
            MPTCP_SUBFLOW_ADDRS,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return vec![];
    }
    let n = u32::from_ne_bytes(buf[4..8].try_into().unwrap()) as usize;
    (0..n.min(8))
        .filter_map(|i| {
            let e = &buf[16 + i * ENTRY..];
            (u16::from_ne_bytes([e[0], e[1]]) == libc::AF_INET as u16)
                .then(|| format!("{}.{}.{}.{}", e[4], e[5], e[6], e[7]))
        })
        .collect()
}

fn raw_socket(family: i32, ty: i32, proto: i32) -> i32 {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(family, ty, proto) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    fd
}

fn fd_protocol(fd: i32) -> i32 {
    struct Fd(i32);
    impl AsRawFd for Fd {
        fn as_raw_fd(&self) -> i32 {
            self.0
        }
    }
    so_protocol(&Fd(fd)).unwrap()
}

fn workload_sockets(out: &mut Vec<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    out.push(format!("listener={}", so_protocol(&listener).unwrap()));
    out.push(format!("client={}", so_protocol(&client).unwrap()));
    out.push(format!("accepted={}", so_protocol(&accepted).unwrap()));
    let fd = raw_socket(
        libc::AF_INET6,
        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        0,
    );
    out.push(format!("nonblock_cloexec_v6={}", fd_protocol(fd)));
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    out.push(format!("udp={}", so_protocol(&udp).unwrap()));
    let mut pair = [0i32; 2];
    // SAFETY: valid array of two descriptors.
    assert_eq!(
        unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) },
        0
    );
    out.push(format!("socketpair={}", fd_protocol(pair[0])));
    let unix = raw_socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
    out.push(format!("unix={}", fd_protocol(unix)));
    let raw = raw_socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP);
    out.push(format!("raw={}", fd_protocol(raw)));
}

/// Drops to uid/gid 65534 (no supplementary groups), listens on `addr` and waits until a
/// connection comes (the test reads the listener's owner and cgroup from sock_diag meanwhile).
fn workload_listen_as_nobody(addr: SocketAddr, out_path: &Path, out: &mut Vec<String>) {
    // SAFETY: plain system calls; this process is single-threaded here.
    unsafe {
        assert_eq!(libc::setgroups(0, std::ptr::null()), 0);
        assert_eq!(libc::setresgid(65534, 65534, 65534), 0);
        assert_eq!(libc::setresuid(65534, 65534, 65534), 0);
    }
    let listener = TcpListener::bind(addr).unwrap();
    out.push(format!("listener={}", so_protocol(&listener).unwrap()));
    fs::write(out_path.with_extension("listening"), "").unwrap();
    let _ = listener.accept().unwrap();
}

/// Serves one connection: reads to EOF, answers the byte count.
fn workload_server(addr: SocketAddr, out_path: &Path, out: &mut Vec<String>) {
    let listener = TcpListener::bind(addr).unwrap();
    out.push(format!("listener={}", so_protocol(&listener).unwrap()));
    fs::write(out_path.with_extension("listening"), "").unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    out.push(format!("accepted={}", so_protocol(&conn).unwrap()));
    let mut total = 0u64;
    let mut buf = [0u8; 65536];
    loop {
        match conn.read(&mut buf).unwrap() {
            0 => break,
            n => total += n as u64,
        }
    }
    conn.write_all(&total.to_be_bytes()).unwrap();
    out.push(format!("received={total}"));
}

/// Connects, waits for an extra subflow, sends, reports the subflows' local addresses.
fn workload_client(addr: SocketAddr, out: &mut Vec<String>) {
    let mut conn = TcpStream::connect(addr).unwrap();
    out.push(format!("client={}", so_protocol(&conn).unwrap()));
    // Some data first: the path manager adds subflows once the connection is fully
    // established, which a client that only waits may never be.
    conn.write_all(&[0x5a; 1000]).unwrap();
    let start = Instant::now();
    while extra_subflows(&conn) == 0 && start.elapsed() < Duration::from_secs(20) {
        thread::sleep(Duration::from_millis(100));
    }
    out.push(format!("extra_subflows={}", extra_subflows(&conn)));
    out.push(format!("locals={}", subflow_locals(&conn).join(",")));
    conn.write_all(&[0x5a; 99_000]).unwrap();
    let acked = mptcp_user::peer::finish(&mut conn).unwrap();
    out.push(format!("acked={acked}"));
}

/// Not a test: the process the other tests start (under `mptcp-trace run`, in a cgroup, with a
/// chosen command name) to create sockets. Does nothing when run directly.
#[test]
#[ignore = "workload process started by the other tests"]
fn workload() {
    let Some(role) = std::env::var_os(ROLE) else {
        return;
    };
    let out_path = PathBuf::from(std::env::var_os(OUT).expect("output file"));
    if let Some(comm) = std::env::var_os(COMM) {
        let c = std::ffi::CString::new(comm.into_encoded_bytes()).unwrap();
        // SAFETY: PR_SET_NAME with a NUL-terminated string names the calling thread.
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) };
    }
    let role = role.into_string().unwrap();
    let mut words = role.split_whitespace();
    let mut out = Vec::new();
    // What the process that started us (`mptcp-trace run`) holds: the test checks these
    // programs are gone once it exited.
    // SAFETY: plain syscall.
    let parent = unsafe { libc::getppid() } as u32;
    let mut progs: Vec<String> = prog_ids_held_by(parent)
        .iter()
        .map(u32::to_string)
        .collect();
    progs.sort();
    out.push(format!("parent_progs={}", progs.join(",")));
    // Named now, while the parent keeps them loaded.
    let held = prog_ids_held_by(parent);
    out.push(format!(
        "parent_upgrade_progs={}",
        upgrade_programs_in(&held)
    ));
    match words.next() {
        Some("sockets") => workload_sockets(&mut out),
        Some("server") => {
            workload_server(words.next().unwrap().parse().unwrap(), &out_path, &mut out)
        }
        Some("client") => workload_client(words.next().unwrap().parse().unwrap(), &mut out),
        Some("listen-as-nobody") => {
            workload_listen_as_nobody(words.next().unwrap().parse().unwrap(), &out_path, &mut out)
        }
        other => panic!("unknown role {other:?}"),
    }
    fs::write(&out_path, out.join("\n")).unwrap();
}

/// The command line that runs the workload `role`; `None` output until it finished.
fn workload_cmd(role: &str, out: &Path, comm: Option<&str>) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--ignored",
        "--exact",
        "workload",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE, role)
    .env(OUT, out)
    .stdout(Stdio::null());
    if let Some(comm) = comm {
        c.env(COMM, comm);
    }
    c
}

/// The kernel's MPTCP MIB counters (`MPTcpExt` in /proc/net/netstat) of a namespace.
fn mptcp_mib(ns: &str) -> HashMap<String, u64> {
    let text = testbed::in_netns(ns, || fs::read_to_string("/proc/thread-self/net/netstat"))
        .unwrap()
        .expect("netstat");
    let mut lines = text.lines().filter(|l| l.starts_with("MPTcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .map(|(n, v)| (n.to_string(), v.parse().unwrap()))
        .collect()
}

/// How much a counter grew between two readings.
fn grew(before: &HashMap<String, u64>, after: &HashMap<String, u64>, name: &str) -> u64 {
    after[name] - before.get(name).copied().unwrap_or(0)
}

/// Whether an ELF executable has no program interpreter (statically linked).
fn is_static_elf(path: &Path) -> bool {
    let b = fs::read(path).unwrap();
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) != PT_INTERP
    })
}

fn out_file(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("upgrade-{}.out", tag(name)));
    let _ = fs::remove_file(&p);
    p
}

fn parse(out: &Path) -> HashMap<String, String> {
    fs::read_to_string(out)
        .unwrap_or_else(|e| panic!("workload wrote no {}: {e}", out.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The programs the workload's parent held (see [`workload`]).
fn parent_progs(m: &HashMap<String, String>) -> HashSet<u32> {
    m.get("parent_progs")
        .unwrap_or_else(|| panic!("no parent_progs in {m:?}"))
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

/// How many of `ids` are upgrade programs.
fn upgrade_programs_in(ids: &HashSet<u32>) -> usize {
    ids.iter()
        .filter(|&&id| program_name(id).as_deref() == Some(PROG_NAME))
        .count()
}

fn proto(m: &HashMap<String, String>, key: &str) -> i32 {
    m.get(key)
        .unwrap_or_else(|| panic!("no {key} in {m:?}"))
        .parse()
        .unwrap()
}

/// Runs the socket workload directly (in this process's cgroup, with `comm`).
fn sockets_now(name: &str, comm: Option<&str>, cgroup: Option<&Path>) -> HashMap<String, String> {
    let out = out_file(name);
    let mut cmd = workload_cmd("sockets", &out, comm);
    if let Some(cg) = cgroup {
        let procs = std::ffi::CString::new(
            cg.join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: only async-signal-safe calls between fork and exec; "0" moves the writer.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
    }
    let st = cmd.status().unwrap();
    assert!(st.success(), "workload failed: {st}");
    let m = parse(&out);
    let _ = fs::remove_file(&out);
    m
}

// ---------------------------------------------------------------------------------------------
// A running `mptcp-trace upgrade`.

struct Upgrader {
    child: Child,
    ready: PathBuf,
    /// The programs this process holds once ready: what must be gone after it stopped.
    progs: HashSet<u32>,
}

impl Upgrader {
    fn start(args: &[&str]) -> Upgrader {
        Upgrader::try_start(args)
            .unwrap_or_else(|(st, e)| panic!("upgrade {args:?} exited with {st}: {e}"))
    }

    /// [`Upgrader::start`], or how the upgrade exited before it was ready (its status and
    /// stderr: a kernel's refusal, which the socket bench reports instead of a number).
    fn try_start(args: &[&str]) -> Result<Upgrader, (std::process::ExitStatus, String)> {
        let ready = std::env::temp_dir().join(format!("upgrade-ready-{}", tag("u")));
        let _ = fs::remove_file(&ready);
        let mut child = Command::new(mptcp_trace_bin())
            .arg("upgrade")
            .args(args)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !ready.exists() {
            if let Some(st) = child.try_wait().unwrap() {
                let mut e = String::new();
                child.stderr.take().unwrap().read_to_string(&mut e).unwrap();
                return Err((st, e));
            }
            assert!(start.elapsed() < TIMEOUT, "upgrade not ready");
            thread::sleep(Duration::from_millis(50));
        }
        let progs = prog_ids_held_by(child.id());
        assert_eq!(
            upgrade_programs_in(&progs),
            1,
            "upgrade {args:?} holds its program: {progs:?}"
        );
        Ok(Upgrader {
            child,
            ready,
            progs,
        })
    }

    fn signal(mut self, sig: i32) -> String {
        // SAFETY: plain syscall on our child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        let _ = fs::remove_file(&self.ready);
        if sig == libc::SIGINT {
            assert!(out.status.success(), "{}", text(&out));
        }
        text(&out)
    }
}

impl Drop for Upgrader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.ready);
    }
}

/// A test-owned cgroup (removed on drop).
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(name: &str) -> Cgroup {
        let p = cgroup2_mount().expect("cgroup2").join(tag(name));
        fs::create_dir_all(&p).unwrap();
        Cgroup(p)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let mut dirs: Vec<PathBuf> = fs::read_dir(&self.0)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        dirs.push(self.0.clone());
        for d in dirs {
            for _ in 0..50 {
                if fs::remove_dir(&d).is_ok() || !d.exists() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

/// `run --method METHOD` of the socket workload: TCP sockets become MPTCP, the rest stays.
fn run_sockets(name: &str, method: &str) {
    run_sockets_env(name, method, &[]);
}

fn run_sockets_env(name: &str, method: &str, env: &[(&str, &str)]) {
    let out = out_file(name);
    let mut cmd = Command::new(mptcp_trace_bin());
    cmd.envs(env.iter().copied());
    cmd.args(["run", "--method", method, "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "workload", "--nocapture"])
        .env(ROLE, "sockets")
        .env(OUT, &out)
        .stdout(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let run_pid = child.id();
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
    let m = parse(&out);
    let progs = parent_progs(&m);
    if method != "seccomp" && expect() == Expect::Works {
        assert_eq!(
            m.get("parent_upgrade_progs").map(String::as_str),
            Some("1"),
            "the run holds its upgrade: {m:?}"
        );
    }
    for key in ["listener", "client", "accepted", "nonblock_cloexec_v6"] {
        assert_eq!(proto(&m, key), MPTCP, "{key}: {m:?}");
    }
    assert_eq!(proto(&m, "udp"), libc::IPPROTO_UDP, "{m:?}");
    assert_eq!(proto(&m, "socketpair"), 0, "{m:?}");
    assert_eq!(proto(&m, "unix"), 0, "{m:?}");
    assert_eq!(
        proto(&m, "raw"),
        TCP,
        "a raw IPPROTO_TCP socket stays raw: {m:?}"
    );
    // Outside the run nothing changed, and nothing is left behind.
    assert_eq!(
        proto(&sockets_now(&format!("{name}-after"), None, None), "client"),
        TCP
    );
    assert_programs_gone(&progs, "run --method {method}");
    let cg = cgroup2_mount()
        .unwrap()
        .join(format!("mptcp-trace-run.{run_pid}"));
    assert!(!cg.exists(), "cgroup left: {}", cg.display());
}

/// `auto` works on every kernel the tests run on: bpf where the kernel allows it, else
/// seccomp.
#[test]
fn run_upgrades_std_sockets_but_not_udp_or_socketpair() {
    expect();
    run_sockets("run-sockets", "auto");
}

#[test]
fn run_seccomp_upgrades_tcp_only_not_udp_unix_raw_or_socketpair() {
    require_root();
    run_sockets("run-sockets-seccomp", "seccomp");
}

/// The two-step ADDFD of Linux 5.9–5.13 (install, then answer with the descriptor number),
/// forced on this kernel: the same sockets, the same flags.
#[test]
fn run_seccomp_two_step_addfd_as_on_5_9_to_5_13() {
    require_root();
    run_sockets_env(
        "run-sockets-2step",
        "seccomp",
        &[("MPTCP_TRACE_SECCOMP_TWO_STEP_ADDFD", "1")],
    );
}

#[test]
fn run_exits_with_the_command_status() {
    let kind = expect();
    // The orphan check below must not see a pin test's program.
    let _pins = pin_path();
    let before = loaded_program_ids();
    // CMD reports the programs its parent, the run, holds (fdinfo `prog_id:` lines, on
    // stderr): each must be gone once the run exited.
    let report = "grep -hs ^prog_id: /proc/$PPID/fdinfo/* >&2";
    let mut held = HashSet::new();
    for method in ["auto", "seccomp"] {
        let o = trace(&[
            "run",
            "--method",
            method,
            "--",
            "sh",
            "-c",
            &format!("{report}; exit 7"),
        ]);
        assert_eq!(o.status.code(), Some(7), "{method}: {}", text(&o));
        held.extend(prog_ids_in_fdinfo(&text(&o)));
        let o = trace(&[
            "run",
            "--method",
            method,
            "--",
            "sh",
            "-c",
            &format!("{report}; kill -KILL $$"),
        ]);
        assert_eq!(o.status.code(), Some(128 + 9), "{method}: {}", text(&o));
        held.extend(prog_ids_in_fdinfo(&text(&o)));
        // Not found: 127; found but not executable (a directory, a non-executable file): 126.
        let o = trace(&["run", "--method", method, "--", "/no/such/program"]);
        assert_eq!(o.status.code(), Some(127), "{method}: {}", text(&o));
        assert!(text(&o).contains("/no/such/program"), "{}", text(&o));
        for not_exec in ["/", "/proc/self/status"] {
            let o = trace(&["run", "--method", method, "--", not_exec]);
            assert_eq!(
                o.status.code(),
                Some(126),
                "{method} {not_exec}: {}",
                text(&o)
            );
        }
    }
    // mptcp-trace's own failures: 125 (a bad option, a method this kernel refuses).
    let o = trace(&["run", "--method", "bogus", "--", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    let o = trace(&["run", "--method"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    let o = trace(&["run"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    let o = trace(&[
        "run",
        "--method",
        "bpf",
        "--",
        "sh",
        "-c",
        &format!("{report}; true"),
    ]);
    match kind {
        Expect::Works => {
            assert!(o.status.success(), "{}", text(&o));
            // The run holds its upgrade (program and link descriptors), gone by now: the
            // ids, not names, are what can be checked after it exited.
            let ids = prog_ids_in_fdinfo(&text(&o));
            assert!(!ids.is_empty(), "{}", text(&o));
            held.extend(ids);
        }
        Expect::HookMissing => {
            assert_eq!(o.status.code(), Some(125), "{}", text(&o));
            assert!(text(&o).contains("needs Linux ≥ 6.6"), "{}", text(&o));
        }
        Expect::Refused => {
            assert_eq!(o.status.code(), Some(125), "{}", text(&o));
            assert!(
                text(&o).contains("BPF_PROG_LOAD returned EPERM"),
                "{}",
                text(&o)
            );
        }
    }
    // The other commands keep 2 for bad input.
    assert_eq!(trace(&["events", "--port", "x"]).status.code(), Some(2));
    assert_programs_gone(&held, "the runs");
    // The runs whose CMD never started (not found, not executable, refused) left none either.
    assert_no_orphan_program_since(&before, "the runs");
}

#[test]
fn run_client_and_server_join_a_second_subflow_over_blue() {
    expect();
    let bed = TestBed::create(&tag("upg")).expect("test bed");
    let port = 4400 + (std::process::id() % 500) as u16;
    let server_addr = format!("{}:{port}", testbed::RED_SERVER_V4);
    let (sout, cout) = (out_file("bed-server"), out_file("bed-client"));
    let _ = fs::remove_file(sout.with_extension("listening"));
    let run_in = |ns: &str, role: String, out: &Path, run_args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(mptcp_trace_bin())
            .arg("run")
            .args(run_args)
            .arg("--")
            .arg(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "workload", "--nocapture"])
            .env(ROLE, role)
            .env(OUT, out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut server = run_in(&bed.server, format!("server {server_addr}"), &sout, &[]);
    let start = Instant::now();
    while !sout.with_extension("listening").exists() {
        assert!(start.elapsed() < TIMEOUT, "server not listening");
        assert!(server.try_wait().unwrap().is_none(), "server exited");
        thread::sleep(Duration::from_millis(50));
    }
    // The client also traces its own connection (`run --trace`): events on stderr.
    // The server's receive-side counters: they exist on every kernel (the client's
    // MPCapableSYNTX/MPJoinSynTx only from 6.2), and only this connection runs in the bed.
    let mib_before = mptcp_mib(&bed.server);
    let client = run_in(
        &bed.client,
        format!("client {server_addr}"),
        &cout,
        &["--trace", "--json"],
    )
    .wait_with_output()
    .unwrap();
    let st = client.status;
    let stderr = String::from_utf8_lossy(&client.stderr);
    assert!(st.success(), "client: {st}\n{stderr}");
    let events: Vec<integration_tests::Event> = integration_tests::parse_events(
        &stderr
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(str::to_string)
            .collect::<Vec<_>>(),
    );
    let join = events
        .iter()
        .find(|e| e.event == integration_tests::Kind::SubflowEstablished && e.join == Some(true));
    assert!(
        join.is_some_and(
            |e| e.saddr.map(|a| a.to_string()).as_deref() == Some(testbed::BLUE_CLIENT_V4)
        ),
        "run --trace shows the upgraded connection's join over blue:\n{stderr}"
    );
    // The kernel's own MIB counters agree with our events: one MP_CAPABLE SYN per connection
    // we reported, one MP_JOIN SYN per join we reported.
    let mib_after = mptcp_mib(&bed.server);
    let count = |k: integration_tests::Kind, join: Option<bool>| {
        events
            .iter()
            .filter(|e| e.event == k && (join.is_none() || e.join == join))
            .count() as u64
    };
    assert_eq!(
        grew(&mib_before, &mib_after, "MPCapableSYNRX"),
        count(integration_tests::Kind::ConnCreated, None),
        "MPCapableSYNRX vs conn_created:\n{stderr}"
    );
    assert_eq!(
        grew(&mib_before, &mib_after, "MPJoinSynRx"),
        count(integration_tests::Kind::SubflowEstablished, Some(true)),
        "MPJoinSynRx vs joins:\n{stderr}"
    );
    // One socket_upgraded (outcome upgraded) per MP_CAPABLE SYN: the client makes one TCP
    // socket, and the run's method (bpf here, seccomp where trampolines are refused) says so.
    let ups = upgraded_events(&events);
    assert_eq!(
        ups.iter()
            .filter(|u| u.outcome == mptcp_user::event::UpgradeOutcome::Upgraded)
            .count() as u64,
        grew(&mib_before, &mib_after, "MPCapableSYNRX"),
        "socket_upgraded vs MPCapableSYNRX:\n{stderr}"
    );
    assert!(
        stderr.contains("0 lost"),
        "nothing lost, upgrade ring included:\n{stderr}"
    );
    assert!(server.wait().unwrap().success());
    let (s, c) = (parse(&sout), parse(&cout));
    assert_eq!(proto(&s, "listener"), MPTCP, "{s:?}");
    assert_eq!(proto(&s, "accepted"), MPTCP, "{s:?}");
    assert_eq!(proto(&c, "client"), MPTCP, "{c:?}");
    assert_eq!(s["received"], "100000");
    assert_eq!(c["acked"], "100000");
    assert!(proto(&c, "extra_subflows") >= 1, "no second subflow: {c:?}");
    assert!(
        c["locals"].split(',').any(|a| a == testbed::BLUE_CLIENT_V4),
        "no subflow from the blue address: {c:?}"
    );
    let mut runs = parent_progs(&s);
    runs.extend(parent_progs(&c));
    assert_programs_gone(&runs, "the runs of client and server");
}

/// What LD_PRELOAD (mptcpize) cannot do: a statically linked program is upgraded too.
#[test]
fn a_statically_linked_client_is_upgraded() {
    expect();
    let busybox = Path::new("/bin/busybox");
    assert!(
        is_static_elf(busybox),
        "busybox-static provides a static /bin/busybox"
    );
    let bed = TestBed::create(&tag("static")).expect("test bed");
    let port = 4900 + (std::process::id() % 90) as u16;
    let addr: SocketAddr = format!("{}:{port}", testbed::RED_SERVER_V4)
        .parse()
        .unwrap();
    let listener = testbed::in_netns(&bed.server, move || {
        mptcp_user::peer::listen(addr, mptcp_user::peer::Proto::Mptcp)
    })
    .unwrap()
    .expect("listen");
    let server = thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 6];
        c.read_exact(&mut buf).unwrap();
        buf
    });
    let before = mptcp_mib(&bed.server);
    let out = Command::new("ip")
        .args(["netns", "exec", &bed.client])
        .arg(mptcp_trace_bin())
        .args(["run", "--", "/bin/busybox", "sh", "-c"])
        // First the programs the run (the shell's parent) holds, on stderr.
        .arg(format!(
            "/bin/busybox grep -hs ^prog_id: /proc/$PPID/fdinfo/* >&2; \
             echo hello | /bin/busybox nc {} {port}",
            testbed::RED_SERVER_V4
        ))
        .output()
        .unwrap();
    // Fail rather than wait forever on the server when the run itself failed.
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(&server.join().unwrap(), b"hello\n", "{}", text(&out));
    let after = mptcp_mib(&bed.server);
    assert_eq!(
        grew(&before, &after, "MPCapableSYNRX"),
        1,
        "the server saw an MP_CAPABLE SYN from busybox nc: {}",
        text(&out)
    );
    let held = prog_ids_in_fdinfo(&text(&out)).into_iter().collect();
    assert_programs_gone(&held, "the run");
}

#[test]
fn cgroup_scope_covers_the_cgroup_and_below_only() {
    let kind = expect();
    let cg = Cgroup::new("upg-cg");
    let cg_arg = cg.0.to_str().unwrap().to_string();
    if kind != Expect::Works {
        return assert_refused(kind, &["upgrade", "--cgroup", &cg_arg]);
    }
    let child = cg.0.join("child");
    fs::create_dir(&child).unwrap();
    let up = Upgrader::start(&["--cgroup", &cg_arg]);
    assert_eq!(
        proto(&sockets_now("cg-in", None, Some(&cg.0)), "client"),
        MPTCP
    );
    assert_eq!(
        proto(&sockets_now("cg-below", None, Some(&child)), "client"),
        MPTCP
    );
    let outside = Cgroup::new("upg-cg-outside");
    assert_eq!(
        proto(&sockets_now("cg-out", None, Some(&outside.0)), "client"),
        TCP
    );
    assert_eq!(proto(&sockets_now("cg-self", None, None), "listener"), TCP);
    let progs = up.progs.clone();
    let report = up.signal(libc::SIGINT);
    // listener, client and the v6 socket of the two runs inside: 6 upgraded.
    assert!(
        report.contains("in scope 6, upgraded to MPTCP 6"),
        "{report}"
    );
    assert_programs_gone(&progs, "upgrade --cgroup");
}

#[test]
fn comm_scope_matches_any_of_the_names() {
    let kind = expect();
    if kind != Expect::Works {
        return assert_refused(kind, &["upgrade", "--comm", "upg-a", "--comm", "upg-b"]);
    }
    let up = Upgrader::start(&["--comm", "upg-a", "--comm", "upg-b"]);
    assert_eq!(
        proto(&sockets_now("comm-a", Some("upg-a"), None), "client"),
        MPTCP
    );
    assert_eq!(
        proto(&sockets_now("comm-b", Some("upg-b"), None), "listener"),
        MPTCP
    );
    assert_eq!(
        proto(&sockets_now("comm-c", Some("upg-c"), None), "client"),
        TCP
    );
    let progs = up.progs.clone();
    drop(up.signal(libc::SIGTERM));
    assert_programs_gone(&progs, "upgrade --comm");
}

#[test]
fn count_only_counts_and_changes_nothing() {
    let kind = expect();
    if kind != Expect::Works {
        return assert_refused(kind, &["upgrade", "--comm", "upg-count", "--count-only"]);
    }
    let up = Upgrader::start(&["--comm", "upg-count", "--count-only"]);
    let m = sockets_now("count", Some("upg-count"), None);
    for key in ["listener", "client", "nonblock_cloexec_v6"] {
        assert_eq!(proto(&m, key), TCP, "{key}: {m:?}");
    }
    let report = up.signal(libc::SIGINT);
    assert!(
        report.contains("in scope 3, upgraded to MPTCP 0"),
        "{report}"
    );
    let o = trace(&["run", "--count-only", "--", "true"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn sigkill_of_an_unpinned_upgrade_detaches_it() {
    let kind = expect();
    if kind != Expect::Works {
        return assert_refused(kind, &["upgrade", "--comm", "upg-kill"]);
    }
    let up = Upgrader::start(&["--comm", "upg-kill"]);
    assert_eq!(
        proto(&sockets_now("kill-1", Some("upg-kill"), None), "client"),
        MPTCP
    );
    let progs = up.progs.clone();
    up.signal(libc::SIGKILL);
    assert_programs_gone(&progs, "upgrade killed with SIGKILL");
    assert_eq!(
        proto(&sockets_now("kill-2", Some("upg-kill"), None), "client"),
        TCP
    );
}

#[test]
fn pinned_upgrade_survives_and_off_removes_it() {
    let kind = expect();
    if kind != Expect::Works {
        return assert_refused(kind, &["upgrade", "--comm", "upg-pin", "--pin"]);
    }
    let _pins = pin_path();
    let _cleanup = PinDirCleanup::new();
    let o = trace(&["upgrade", "--comm", "upg-pin", "--pin"]);
    assert!(o.status.success(), "{}", text(&o));
    let pinned = HashSet::from([pinned_program_id().expect("a pinned link")]);
    assert_eq!(upgrade_programs_in(&pinned), 1, "{pinned:?}");
    let mode = fs::metadata(PIN_DIR).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert_eq!(
        proto(&sockets_now("pin-1", Some("upg-pin"), None), "client"),
        MPTCP
    );
    // A second pin is refused and changes nothing.
    let again = trace(&["upgrade", "--all", "--pin"]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert_eq!(proto(&sockets_now("pin-2", None, None), "client"), TCP);
    let st = text(&trace(&["upgrade", "--status"]));
    assert!(st.contains("comm upg-pin"), "{st}");
    assert!(st.contains("upgraded to MPTCP 3"), "{st}");
    let off = trace(&["upgrade", "--off"]);
    assert!(off.status.success(), "{}", text(&off));
    assert!(!Path::new(PIN_DIR).join("upgrade_link").exists());
    assert_programs_gone(&pinned, "the pinned upgrade after --off");
    assert_eq!(
        proto(&sockets_now("pin-3", Some("upg-pin"), None), "client"),
        TCP
    );
    assert!(text(&trace(&["upgrade", "--status"])).contains("not pinned"));
}

#[test]
fn bad_scopes_and_disabled_mptcp_are_refused_with_status_2() {
    let kind = expect();
    let _pins = pin_path();
    let before = loaded_program_ids();
    for args in [
        &["upgrade", "--pid", "4294967294"][..],
        &["upgrade", "--cgroup", "/no/such/cgroup"],
        &["upgrade", "--comm", "a-name-longer-than-15"],
        &["upgrade"],
    ] {
        let o = trace(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
    }
    // net.mptcp.enabled=0 in the caller's network namespace.
    let ns = tag("upg-nomptcp");
    testbed::ip(&["netns", "add", &ns]).unwrap();
    let o = Command::new("ip")
        .args(["netns", "exec", &ns, "sh", "-c"])
        .arg(format!(
            "sysctl -q -w net.mptcp.enabled=0 && exec {} upgrade --all",
            mptcp_trace_bin().display()
        ))
        .output()
        .unwrap();
    let _ = testbed::ip(&["netns", "del", &ns]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    if kind == Expect::HookMissing {
        assert!(text(&o).contains("needs Linux ≥ 6.6"), "{}", text(&o));
    } else {
        assert!(text(&o).contains("net.mptcp.enabled = 0"), "{}", text(&o));
    }
    assert_no_orphan_program_since(&before, "the refused upgrades");
    assert!(!Path::new(PIN_DIR).join("upgrade_link").exists());
}

// ---------------------------------------------------------------------------------------------
// The pin directory: bpffs is world-writable when mounted without `mode=`, so anything at
// /sys/fs/bpf/mptcp-trace may have been planted by another user. Every test here holds
// [`pin_path`] and a [`PinDirCleanup`].

const BPFFS: &str = "/sys/fs/bpf";

fn bpffs_mounted() -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(4) == Some(&BPFFS) && l.split(" - ").nth(1).is_some_and(|t| t.starts_with("bpf "))
        })
}

/// Leaves the pin path as the test found it, even when the test fails: removes whatever is at
/// [`PIN_DIR`] (a link, not its target; a directory with its pins) and the staging directories
/// of `--pin` runs, the paths in `extra`, and unmounts the bpffs it mounted.
struct PinDirCleanup {
    mounted: bool,
    extra: Vec<PathBuf>,
}

impl PinDirCleanup {
    fn new() -> PinDirCleanup {
        assert!(
            fs::symlink_metadata(PIN_DIR).is_err(),
            "{PIN_DIR} exists before the test: remove it (`mptcp-trace upgrade --off`)"
        );
        PinDirCleanup {
            mounted: false,
            extra: vec![],
        }
    }

    /// A bpffs at /sys/fs/bpf as a plain `mount -t bpf` makes it (mode 1777), for planting.
    fn with_bpffs() -> PinDirCleanup {
        let mut c = PinDirCleanup::new();
        if !bpffs_mounted() {
            let st = Command::new("mount")
                .args(["-t", "bpf", "bpf", BPFFS])
                .status()
                .unwrap();
            assert!(st.success(), "mount bpffs: {st}");
            c.mounted = true;
        }
        c
    }

    /// A directory of uid 65534 in /tmp with the files `--off` would remove and one more,
    /// mode 0755: the target of a planted link.
    fn victim(&mut self, name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(tag(name));
        fs::create_dir(&d).unwrap();
        self.extra.push(d.clone());
        for f in ["upgrade_link", "upgrade_policy", "upgrade_counters", "keep"] {
            fs::write(d.join(f), "not yours").unwrap();
        }
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
        d
    }
}

/// Removes a bpffs directory's entries (pins, or empty directories) and the directory.
fn remove_bpffs_dir(d: &Path) {
    for e in fs::read_dir(d).into_iter().flatten().flatten() {
        let _ = fs::remove_file(e.path()).or_else(|_| fs::remove_dir(e.path()));
    }
    let _ = fs::remove_dir(d);
}

/// The `--pin` staging directories (`mptcp-trace-staging-*`) in the bpffs root.
fn staging_dirs() -> Vec<PathBuf> {
    fs::read_dir(BPFFS)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("mptcp-trace-staging-")
        })
        .map(|e| e.path())
        .collect()
}

impl Drop for PinDirCleanup {
    fn drop(&mut self) {
        match fs::symlink_metadata(PIN_DIR) {
            Ok(m) if m.file_type().is_dir() => remove_bpffs_dir(Path::new(PIN_DIR)),
            Ok(_) => {
                let _ = fs::remove_file(PIN_DIR);
            }
            Err(_) => {}
        }
        for d in staging_dirs() {
            remove_bpffs_dir(&d);
        }
        for p in &self.extra {
            let _ = fs::remove_dir_all(p);
        }
        if self.mounted {
            let _ = Command::new("umount").arg(BPFFS).status();
        }
    }
}

/// `args` must be refused because of what is at [`PIN_DIR`]: exit 2, one line naming the
/// path, the problem and the fix; nothing loaded, nothing pinned, nothing staged.
fn assert_pin_dir_refused(args: &[&str], problem: &str, fix: &str) {
    let before = loaded_program_ids();
    let o = trace(args);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {t}");
    assert!(
        t.contains(&format!("refusing {PIN_DIR}: ")),
        "{args:?}: {t}"
    );
    assert!(t.contains(problem), "{args:?}: {t}");
    assert!(t.contains(fix), "{args:?}: {t}");
    assert_eq!(t.trim_end().lines().count(), 1, "one line: {t}");
    assert_no_orphan_program_since(&before, &format!("{args:?}"));
    assert!(staging_dirs().is_empty(), "{:?}", staging_dirs());
}

const PIN_COMMANDS: [&[&str]; 3] = [
    &["upgrade", "--off"],
    &["upgrade", "--status"],
    &["upgrade", "--pin", "--all"],
];

/// A user's symbolic link at /sys/fs/bpf/mptcp-trace: root's `--off` must not delete the
/// files it points to, `--pin` must not chmod or fill it, `--status` must not read it.
#[test]
fn a_planted_pin_dir_symlink_is_refused_not_followed() {
    require_root();
    let _pins = pin_path();
    let mut cleanup = PinDirCleanup::with_bpffs();
    let victim = cleanup.victim("pin-victim");
    std::os::unix::fs::symlink(&victim, PIN_DIR).unwrap();
    std::os::unix::fs::lchown(PIN_DIR, Some(65534), Some(65534)).unwrap();
    for args in PIN_COMMANDS {
        assert_pin_dir_refused(
            args,
            &format!("it is a symbolic link (to {:?})", victim),
            &format!("remove the link (`rm {PIN_DIR}`)"),
        );
        for f in ["upgrade_link", "upgrade_policy", "upgrade_counters", "keep"] {
            assert!(
                victim.join(f).exists(),
                "{args:?} removed {f} from the target"
            );
        }
        let mode = fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "{args:?} changed the target's mode");
        assert!(
            fs::symlink_metadata(PIN_DIR)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{args:?} replaced the link"
        );
    }
}

/// A directory at /sys/fs/bpf/mptcp-trace that another user owns, or that others can write:
/// its owner could rename root's pins away. Refused, and left as it is.
#[test]
fn a_pin_dir_owned_by_another_user_or_writable_by_others_is_refused() {
    require_root();
    let _pins = pin_path();
    let _cleanup = PinDirCleanup::with_bpffs();
    fs::create_dir(PIN_DIR).unwrap();
    fs::set_permissions(PIN_DIR, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(PIN_DIR, Some(65534), Some(65534)).unwrap();
    let fix = format!("remove it (`rm -r {PIN_DIR}`)");
    for args in PIN_COMMANDS {
        assert_pin_dir_refused(args, "it is owned by uid 65534, not root", &fix);
        let m = fs::symlink_metadata(PIN_DIR).unwrap();
        assert_eq!(
            (
                std::os::unix::fs::MetadataExt::uid(&m),
                m.permissions().mode() & 0o7777
            ),
            (65534, 0o700),
            "{args:?} changed the directory"
        );
    }
    std::os::unix::fs::chown(PIN_DIR, Some(0), Some(0)).unwrap();
    fs::set_permissions(PIN_DIR, fs::Permissions::from_mode(0o777)).unwrap();
    for args in PIN_COMMANDS {
        assert_pin_dir_refused(args, "group or others can write it (mode 0777)", &fix);
        let mode = fs::metadata(PIN_DIR).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o777, "{args:?} changed the directory");
    }
}

/// Two `--pin` at once: exactly one wins and its pins stay (the loser removes only its own),
/// `--status` reports the winner, the winner's scope is upgraded and the loser's is not;
/// `--off` then removes it all. Several rounds, so that both reach the rename together.
#[test]
fn two_concurrent_pins_one_wins_and_its_pins_stay() {
    let kind = expect();
    if kind != Expect::Works {
        return assert_refused(kind, &["upgrade", "--all", "--pin"]);
    }
    let _pins = pin_path();
    let _cleanup = PinDirCleanup::new();
    for round in 0..3 {
        let comms = [format!("upg-race-a{round}"), format!("upg-race-b{round}")];
        let children: Vec<Child> = comms
            .iter()
            .map(|c| {
                Command::new(mptcp_trace_bin())
                    .args(["upgrade", "--comm", c, "--pin"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<Output> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let all: Vec<String> = outs.iter().map(text).collect();
        let won: Vec<usize> = (0..2).filter(|&i| outs[i].status.success()).collect();
        assert_eq!(won.len(), 1, "round {round}: exactly one pin wins: {all:?}");
        let (w, l) = (won[0], 1 - won[0]);
        assert_eq!(outs[l].status.code(), Some(2), "round {round}: {all:?}");
        assert!(all[l].contains("already pinned"), "round {round}: {all:?}");
        let pinned =
            HashSet::from([pinned_program_id()
                .unwrap_or_else(|| panic!("round {round}: nothing pinned: {all:?}"))]);
        assert_eq!(upgrade_programs_in(&pinned), 1, "{pinned:?}");
        let st = text(&trace(&["upgrade", "--status"]));
        assert!(st.contains(&format!("comm {}", comms[w])), "{st}");
        assert_eq!(
            proto(
                &sockets_now(&format!("race-w{round}"), Some(&comms[w]), None),
                "client"
            ),
            MPTCP
        );
        assert_eq!(
            proto(
                &sockets_now(&format!("race-l{round}"), Some(&comms[l]), None),
                "client"
            ),
            TCP,
            "the loser's upgrade is gone"
        );
        assert!(staging_dirs().is_empty(), "{:?}", staging_dirs());
        let off = trace(&["upgrade", "--off"]);
        assert!(
            text(&off).contains("removed the pinned upgrade"),
            "{}",
            text(&off)
        );
        assert_programs_gone(&pinned, "the pinned upgrade after --off");
        assert!(fs::symlink_metadata(PIN_DIR).is_err(), "{PIN_DIR} left");
        assert!(text(&trace(&["upgrade", "--status"])).contains("not pinned"));
    }
}

// ---------------------------------------------------------------------------------------------
// The seccomp method (`run --method seccomp`), on every kernel ≥ 5.9, judged by the kernel's
// own MPTcpExt counters and sock_diag, not by our output.

/// A C helper built by build.rs, written out once per test process.
fn helper(name: &str, bytes: &[u8], once: &'static std::sync::OnceLock<PathBuf>) -> PathBuf {
    once.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    })
    .clone()
}

/// The static Go-like client (tests/c/go-like-client.c).
fn go_like_client() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    helper(
        "go-like-client",
        include_bytes!(env!("GO_LIKE_CLIENT")),
        &PATH,
    )
}

/// Removes a file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A native MPTCP server (IPPROTO_MPTCP listener) in the bed's server namespace for one
/// connection: reads a line; with `join_from` (the server's counters before the client
/// started) it waits, at most 20 s, until the namespace's MPJoinSynRx grew, so the client stays
/// connected while the second subflow joins; then answers "bye" and closes. Returns the line.
fn join_server(
    bed: &TestBed,
    addr: SocketAddr,
    join_from: Option<HashMap<String, u64>>,
) -> thread::JoinHandle<String> {
    let listener = testbed::in_netns(&bed.server, move || {
        mptcp_user::peer::listen(addr, mptcp_user::peer::Proto::Mptcp)
    })
    .unwrap()
    .expect("listen");
    listener.set_nonblocking(true).unwrap();
    let ns = bed.server.clone();
    thread::spawn(move || {
        let start = Instant::now();
        let conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() > TIMEOUT {
                        return "no connection".into();
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&conn), &mut line).unwrap();
        if let Some(before) = join_from {
            let start = Instant::now();
            while grew(&before, &mptcp_mib(&ns), "MPJoinSynRx") == 0
                && start.elapsed() < Duration::from_secs(20)
            {
                thread::sleep(Duration::from_millis(100));
            }
        }
        (&conn).write_all(b"bye\n").unwrap();
        line
    })
}

/// `ip netns exec NS mptcp-trace -v run --method seccomp -- CMD…`, stdin/stdout/stderr piped
/// (`-v`: the run's record of each socket and its totals on stderr).
fn seccomp_run_in(ns: &str, cmd: &[&std::ffi::OsStr]) -> integration_tests::ChildGuard {
    integration_tests::ChildGuard(
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(mptcp_trace_bin())
            .args(["-v", "run", "--method", "seccomp", "--"])
            .args(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// The client's connection went MPTCP and joined the second path: the server namespace saw
/// one MP_CAPABLE SYN and at least one MP_JOIN SYN.
fn assert_joined(before: &HashMap<String, u64>, after: &HashMap<String, u64>, what: &str) {
    assert_eq!(
        grew(before, after, "MPCapableSYNRX"),
        1,
        "MP_CAPABLE SYNs at the server: {what}"
    );
    assert!(
        grew(before, after, "MPJoinSynRx") >= 1,
        "no MP_JOIN SYN at the server: {what}"
    );
}

/// Runs `busybox nc ADDR PORT` under the seccomp method in the client namespace against the
/// join server; returns what the run printed.
fn busybox_nc_joins(bed: &TestBed, addr: SocketAddr) {
    let before = mptcp_mib(&bed.server);
    let server = join_server(bed, addr, Some(before.clone()));
    let (ip, port) = (addr.ip().to_string(), addr.port().to_string());
    let mut run = seccomp_run_in(
        &bed.client,
        &[
            "/bin/busybox".as_ref(),
            "nc".as_ref(),
            ip.as_ref(),
            port.as_ref(),
        ],
    );
    let mut stdin = run.0.stdin.take().unwrap();
    stdin.write_all(b"hello\n").unwrap();
    let line = server.join().unwrap();
    // nc sees the server close; its stdin closes too.
    drop(stdin);
    let out = std::mem::replace(&mut run.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let t = text(&out);
    assert_eq!(line, "hello\n", "the server got nothing: {t}");
    assert!(out.status.success(), "{t}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("bye"), "{t}");
    assert_joined(&before, &mptcp_mib(&bed.server), &t);
}

#[test]
fn seccomp_static_busybox_nc_becomes_mptcp_and_joins_the_second_path() {
    require_root();
    assert!(
        is_static_elf(Path::new("/bin/busybox")),
        "busybox-static provides /bin/busybox"
    );
    let bed = TestBed::create(&tag("sc-nc")).expect("test bed");
    let port = 5000 + (std::process::id() % 400) as u16;
    busybox_nc_joins(
        &bed,
        format!("{}:{port}", testbed::RED_SERVER_V4)
            .parse()
            .unwrap(),
    );
}

#[test]
fn seccomp_ipv6_busybox_nc_becomes_mptcp_and_joins_the_second_path() {
    require_root();
    let bed = TestBed::create(&tag("sc-nc6")).expect("test bed");
    bed.use_ipv6_endpoint().unwrap();
    let port = 5400 + (std::process::id() % 400) as u16;
    busybox_nc_joins(
        &bed,
        format!("[{}]:{port}", testbed::RED_SERVER_V6)
            .parse()
            .unwrap(),
    );
}

/// Runs the Go-like client under the seccomp method; returns (the server's counters before,
/// the run's output). `enter_ns`: `run` starts in the host's namespace and CMD enters the
/// client's itself (`ip netns exec`), so the socket must follow the caller's namespace.
fn go_like_run(
    bed: &TestBed,
    addr: SocketAddr,
    join: bool,
    enter_ns: bool,
) -> (HashMap<String, u64>, Output) {
    let before = mptcp_mib(&bed.server);
    let server = join_server(bed, addr, join.then(|| before.clone()));
    let bin = go_like_client();
    assert!(is_static_elf(&bin), "the Go-like client is static");
    let (ip, port) = (addr.ip().to_string(), addr.port().to_string());
    let client_args = [bin.as_ref(), ip.as_ref(), port.as_ref(), "hello\n".as_ref()];
    let mut run = if enter_ns {
        let mut cmd: Vec<&std::ffi::OsStr> = vec![
            "ip".as_ref(),
            "netns".as_ref(),
            "exec".as_ref(),
            bed.client.as_ref(),
        ];
        cmd.extend(client_args);
        integration_tests::ChildGuard(
            Command::new(mptcp_trace_bin())
                .args(["-v", "run", "--method", "seccomp", "--"])
                .args(cmd)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    } else {
        seccomp_run_in(&bed.client, &client_args)
    };
    drop(run.0.stdin.take());
    let line = server.join().unwrap();
    let out = std::mem::replace(&mut run.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    assert_eq!(line, "hello\n", "{}", text(&out));
    (before, out)
}

#[test]
fn seccomp_go_like_nonblocking_cloexec_client_becomes_mptcp_and_joins() {
    require_root();
    let bed = TestBed::create(&tag("sc-go")).expect("test bed");
    let port = 5800 + (std::process::id() % 400) as u16;
    let addr = format!("{}:{port}", testbed::RED_SERVER_V4)
        .parse()
        .unwrap();
    let (before, out) = go_like_run(&bed, addr, true, false);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    // The caller's flags survived the replacement: O_NONBLOCK on the file, FD_CLOEXEC on
    // the descriptor.
    assert!(t.contains("protocol=262 nonblock=1 cloexec=1"), "{t}");
    assert!(t.contains("reply=bye"), "{t}");
    assert_joined(&before, &mptcp_mib(&bed.server), &t);
    // Our records agree with the kernel's one MP_CAPABLE SYN.
    assert!(
        t.contains(
            "TCP sockets seen 1, upgraded to MPTCP 1, kept TCP (no MPTCP in their namespace) 0"
        ),
        "{t}"
    );
}

/// CMD moves itself into another network namespace (`ip netns exec` inside the run): its
/// MPTCP socket is created there, not in the supervisor's namespace.
#[test]
fn seccomp_socket_follows_the_callers_network_namespace() {
    require_root();
    let bed = TestBed::create(&tag("sc-setns")).expect("test bed");
    let port = 7000 + (std::process::id() % 400) as u16;
    let addr = format!("{}:{port}", testbed::RED_SERVER_V4)
        .parse()
        .unwrap();
    let (before, out) = go_like_run(&bed, addr, true, true);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("protocol=262 nonblock=1 cloexec=1"), "{t}");
    assert_joined(&before, &mptcp_mib(&bed.server), &t);
}

/// The seed's test bed with `net.mptcp.enabled=0` in the client namespace.
fn bed_without_mptcp_on_the_client(name: &str) -> TestBed {
    let bed = TestBed::create(&tag(name)).expect("test bed");
    testbed::in_netns(&bed.client, || {
        fs::write("/proc/sys/net/mptcp/enabled", "0")
    })
    .unwrap()
    .unwrap();
    bed
}

#[test]
fn seccomp_keeps_tcp_where_mptcp_is_disabled_and_says_why() {
    require_root();
    let bed = bed_without_mptcp_on_the_client("sc-off");
    let port = 6200 + (std::process::id() % 400) as u16;
    let addr = format!("{}:{port}", testbed::RED_SERVER_V4)
        .parse()
        .unwrap();
    let (before, out) = go_like_run(&bed, addr, false, false);
    let t = text(&out);
    assert!(out.status.success(), "CMD still connects: {t}");
    assert!(t.contains("protocol=6 nonblock=1 cloexec=1"), "{t}");
    assert!(t.contains("reply=bye"), "{t}");
    assert!(t.contains("kept TCP") && t.contains("ENOPROTOOPT"), "{t}");
    assert!(t.contains("net.mptcp.enabled = 0"), "{t}");
    assert!(
        t.contains(
            "TCP sockets seen 1, upgraded to MPTCP 0, kept TCP (no MPTCP in their namespace) 1"
        ),
        "{t}"
    );
    assert_eq!(
        grew(&before, &mptcp_mib(&bed.server), "MPCapableSYNRX"),
        0,
        "an MP_CAPABLE SYN came from a namespace with MPTCP disabled: {t}"
    );
}

/// `run --trace --json --method seccomp -- go-like-client` in the client namespace against the
/// join server; returns the server's counters before, the output and the events it printed.
fn seccomp_trace_run(
    bed: &TestBed,
    addr: SocketAddr,
    join: bool,
) -> (HashMap<String, u64>, Output, Vec<integration_tests::Event>) {
    let before = mptcp_mib(&bed.server);
    let server = join_server(bed, addr, join.then(|| before.clone()));
    let (ip, port) = (addr.ip().to_string(), addr.port().to_string());
    let out = Command::new("ip")
        .args(["netns", "exec", &bed.client])
        .arg(mptcp_trace_bin())
        .args(["run", "--trace", "--json", "--method", "seccomp", "--"])
        .arg(go_like_client())
        .args([ip.as_str(), port.as_str(), "hello\n"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let line = server.join().unwrap();
    assert_eq!(line, "hello\n", "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let events = integration_tests::parse_events(
        &stderr
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(str::to_string)
            .collect::<Vec<_>>(),
    );
    (before, out, events)
}

/// The `socket_upgraded` events of a run, typed.
fn upgraded_events(events: &[integration_tests::Event]) -> Vec<mptcp_user::event::SocketUpgraded> {
    events
        .iter()
        .filter_map(|e| match e.raw.as_ref().map(|r| &r.data) {
            Some(mptcp_user::event::Data::SocketUpgraded(u)) => Some(u.clone()),
            _ => None,
        })
        .collect()
}

/// `run --trace` shows each socket the seccomp supervisor upgraded as `socket_upgraded`, in
/// time order before its connection's events; their number agrees with the kernel's
/// MP_CAPABLE SYNs at the server.
#[test]
fn seccomp_run_trace_shows_socket_upgraded_matching_the_kernels_counters() {
    require_root();
    let bed = TestBed::create(&tag("sc-ev")).expect("test bed");
    let port = 7400 + (std::process::id() % 400) as u16;
    let addr = format!("{}:{port}", testbed::RED_SERVER_V4)
        .parse()
        .unwrap();
    let (before, out, events) = seccomp_trace_run(&bed, addr, true);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("protocol=262 nonblock=1 cloexec=1"), "{t}");
    let after = mptcp_mib(&bed.server);
    assert_joined(&before, &after, &t);
    let ups = upgraded_events(&events);
    let upgraded = ups
        .iter()
        .filter(|u| u.outcome == mptcp_user::event::UpgradeOutcome::Upgraded)
        .count() as u64;
    assert_eq!(
        upgraded,
        grew(&before, &after, "MPCapableSYNRX"),
        "socket_upgraded (upgraded) vs the server's MPCapableSYNRX:\n{t}"
    );
    let u = &ups[0];
    assert_eq!(
        u.method,
        mptcp_user::upgrade::seccomp::Method::Seccomp,
        "{t}"
    );
    assert_eq!(u.family, integration_tests::Family::Ipv4, "{t}");
    assert!(u.nonblock && u.cloexec, "{t}");
    assert!(u.comm.starts_with("go-like-client"), "{t}");
    assert!(u.cgroup.is_some_and(|c| c > 1), "{t}");
    assert_eq!(u.reason, None, "{t}");
    // Before its connection, and from the same process.
    use integration_tests::Kind;
    let at = |k: Kind| events.iter().position(|e| e.event == k);
    let (up_at, created_at) = (at(Kind::SocketUpgraded), at(Kind::ConnCreated));
    assert!(
        up_at.is_some() && created_at.is_some() && up_at < created_at,
        "socket_upgraded comes before conn_created:\n{t}"
    );
    assert_eq!(events[created_at.unwrap()].pid, Some(u.pid), "{t}");
    // Nothing lost but a program run the kernel skipped (counted; seen once in the 7.2 guest,
    // whose BPF programs can be preempted).
    assert!(
        t.contains("ring buffer 0, map full 0, stale entries 0,")
            && t.contains("netlink overruns 0)"),
        "{t}"
    );
}

/// With the tracer stopped (as a loaded machine delays it) from before CMD's socket() until
/// its connection has closed, `socket_upgraded` still comes first, with its own time, once the
/// tracer runs again: the supervisor's records are read before any event is released. (When a
/// thread forwarded them, the record came after conn_created in the 6.1 guest.)
#[test]
fn seccomp_run_trace_keeps_socket_upgraded_first_when_the_tracer_is_late() {
    require_root();
    late_tracer_keeps_socket_upgraded_first("seccomp", 8200);
}

/// The same with the upgrade program, whose ring is read before any event is released.
#[test]
fn bpf_run_trace_keeps_socket_upgraded_first_when_the_tracer_is_late() {
    match expect() {
        Expect::Works => late_tracer_keeps_socket_upgraded_first("bpf", 8600),
        // Refused before CMD starts, with run's own status.
        _ => {
            let o = trace(&["run", "--trace", "--method", "bpf", "--", "true"]);
            assert_eq!(o.status.code(), Some(125), "{}", text(&o));
        }
    }
}

/// `run --trace --method METHOD` whose tracer is stopped from before CMD's socket() until its
/// connection closed: `socket_upgraded` comes first, placed by its own time.
fn late_tracer_keeps_socket_upgraded_first(method: &str, ports: u16) {
    let bed = TestBed::create(&tag("late")).expect("test bed");
    let port = ports + (std::process::id() % 400) as u16;
    let addr: SocketAddr = format!("{}:{port}", testbed::RED_SERVER_V4)
        .parse()
        .unwrap();
    let server = join_server(&bed, addr, None);
    let dir = std::env::temp_dir().join(tag("late"));
    fs::create_dir_all(&dir).unwrap();
    let _rm = RemoveDirOnDrop(dir.clone());
    let (started, go, done) = (dir.join("started"), dir.join("go"), dir.join("done"));
    // CMD says it runs, waits for the go, connects, and says when it is done.
    let script = r#"touch "$STARTED"; while [ ! -e "$GO" ]; do sleep 0.02; done; "$@"; s=$?; touch "$DONE"; exit $s"#;
    let child = Command::new("ip")
        .args(["netns", "exec", &bed.client])
        .arg(mptcp_trace_bin())
        .args(["run", "--trace", "--json", "--method", method, "--"])
        .args(["sh", "-c", script, "sh"])
        .arg(go_like_client())
        .args([&addr.ip().to_string(), &port.to_string(), "hello\n"])
        .env("STARTED", &started)
        .env("GO", &go)
        .env("DONE", &done)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut run = integration_tests::ChildGuard(child);
    let wait_file = |f: &Path| {
        let start = Instant::now();
        while !f.exists() {
            assert!(start.elapsed() < TIMEOUT, "{} never appeared", f.display());
            thread::sleep(Duration::from_millis(20));
        }
    };
    // CMD runs, so the tracer is attached: stop it (`ip netns exec` execs mptcp-trace).
    wait_file(&started);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(run.0.id() as i32, libc::SIGSTOP) };
    fs::write(&go, "").unwrap();
    wait_file(&done);
    let line = server.join().unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(run.0.id() as i32, libc::SIGCONT) };
    let start = Instant::now();
    let status = loop {
        if let Some(st) = run.0.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < TIMEOUT, "run did not end");
        thread::sleep(Duration::from_millis(50));
    };
    let mut t = String::new();
    run.0.stderr.take().unwrap().read_to_string(&mut t).unwrap();
    assert!(status.success(), "{t}");
    assert_eq!(line, "hello\n", "{t}");
    let events = integration_tests::parse_events(
        &t.lines()
            .filter(|l| l.starts_with('{'))
            .map(str::to_string)
            .collect::<Vec<_>>(),
    );
    use integration_tests::Kind;
    let at = |k: Kind| events.iter().position(|e| e.event == k);
    let (Some(up_at), Some(created_at)) = (at(Kind::SocketUpgraded), at(Kind::ConnCreated)) else {
        panic!("socket_upgraded and conn_created both shown:\n{t}");
    };
    assert!(
        up_at < created_at,
        "socket_upgraded comes before conn_created:\n{t}"
    );
    let (up, created) = (&events[up_at], &events[created_at]);
    assert_eq!(created.pid, up.pid, "{t}");
    // Placed by its own time, not stamped anew as a latecomer.
    assert!(up.ts_ns < created.ts_ns, "{t}");
    assert_eq!(upgraded_events(&events).len(), 1, "{t}");
}

/// `run --trace` whose stderr reader goes away still ends with CMD's status: its summary line
/// once panicked on the broken pipe (status 101).
#[test]
fn run_trace_with_its_reader_gone_ends_with_the_commands_status() {
    require_root();
    let mut child = Command::new(mptcp_trace_bin())
        .args(["run", "--trace", "--method", "seccomp", "--"])
        .args(["sh", "-c", "sleep 0.5; exit 3"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before anything is written.
    drop(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("run did not end");
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(3), "{status:?}");
}

/// Removes a directory and what it holds when dropped.
struct RemoveDirOnDrop(PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// With MPTCP disabled in the caller's namespace, `run --trace` says so in the event: kept_tcp,
/// reason ENOPROTOOPT, and the kernel saw no MP_CAPABLE SYN.
#[test]
fn seccomp_run_trace_says_why_a_socket_stayed_tcp() {
    require_root();
    let bed = bed_without_mptcp_on_the_client("sc-evoff");
    let port = 7800 + (std::process::id() % 400) as u16;
    let addr = format!("{}:{port}", testbed::RED_SERVER_V4)
        .parse()
        .unwrap();
    let (before, out, events) = seccomp_trace_run(&bed, addr, false);
    let t = text(&out);
    assert!(out.status.success(), "CMD still connects: {t}");
    assert!(t.contains("protocol=6 nonblock=1 cloexec=1"), "{t}");
    assert_eq!(
        grew(&before, &mptcp_mib(&bed.server), "MPCapableSYNRX"),
        0,
        "{t}"
    );
    let ups = upgraded_events(&events);
    assert_eq!(ups.len(), 1, "one TCP socket, one event:\n{t}");
    assert_eq!(
        ups[0].outcome,
        mptcp_user::event::UpgradeOutcome::KeptTcp,
        "{t}"
    );
    assert_eq!(ups[0].reason.as_deref(), Some("ENOPROTOOPT"), "{t}");
}

/// The socket carries the caller's identity, as the kernel reports it (sock_diag, what
/// `ss -e --cgroup` prints): owner uid 65534 after the caller dropped root, and the run's
/// cgroup. Meanwhile a process outside CMD's tree is untouched.
#[test]
fn seccomp_sockets_carry_the_callers_uid_and_cgroup() {
    require_root();
    let port = 6600 + (std::process::id() % 400) as u16;
    let addr = format!("127.0.0.1:{port}");
    let out = out_file("sc-nobody");
    let listening = RemoveOnDrop(out.with_extension("listening"));
    let _ = fs::remove_file(&listening.0);
    let mut run = integration_tests::ChildGuard(
        Command::new(mptcp_trace_bin())
            .args(["run", "--method", "seccomp", "--"])
            .arg(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "workload", "--nocapture"])
            .env(ROLE, format!("listen-as-nobody {addr}"))
            .env(OUT, &out)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while !listening.0.exists() {
        assert!(start.elapsed() < TIMEOUT, "workload not listening");
        assert!(run.0.try_wait().unwrap().is_none(), "run exited");
        thread::sleep(Duration::from_millis(50));
    }
    let ss = Command::new("ss")
        .args(["-Mlne", "--cgroup", &format!("sport = :{port}")])
        .output()
        .unwrap();
    let ss = String::from_utf8_lossy(&ss.stdout).to_string();
    // Outside CMD's tree, while the run is active: plain TCP.
    assert_eq!(proto(&sockets_now("sc-outside", None, None), "client"), TCP);
    let _ = TcpStream::connect(&addr).unwrap();
    let st = run.0.wait().unwrap();
    assert!(st.success(), "{st}");
    assert_eq!(proto(&parse(&out), "listener"), MPTCP);
    assert!(
        ss.contains(&format!("127.0.0.1:{port}")),
        "no MPTCP listener in ss -M: {ss}"
    );
    assert!(ss.contains("uid:65534"), "owner uid: {ss}");
    let cgroup = format!("cgroup:/mptcp-trace-run.{}", run.0.id());
    assert!(ss.contains(&cgroup), "{cgroup}: {ss}");
}

// ---------------------------------------------------------------------------------------------
// The socket() cost bench: the worker `cargo xtask bench` runs on the host and in the 6.12
// guest (xtask/src/bench/upgrade.rs reads its marker lines; the VM runner runs test
// executables, so the worker is a test).

/// One result line per variant: the marker, a space, a JSON object.
const SOCKET_BENCH_MARKER: &str = "MPTCP-TRACE-SOCKET-BENCH";
/// One line about the machine the worker ran on.
const SOCKET_BENCH_MACHINE_MARKER: &str = "MPTCP-TRACE-SOCKET-BENCH-MACHINE";
/// The `--comm` of the out-of-scope variant: a name no process of the bench has.
const OTHER_COMM: &str = "not-this-bench";

/// How a variant runs socket-bench.
enum Wrap {
    /// As it is.
    Plain,
    /// Under this command (`mptcpize run`, `mptcp-trace run …`).
    Under(Vec<String>),
    /// As it is, while `mptcp-trace upgrade ARGS` runs in the background.
    Upgrader(Vec<String>),
}

struct Variant {
    /// The key in xtask's JSON and tables.
    key: &'static str,
    wrap: Wrap,
}

/// What one variant gave over the rounds.
#[derive(Default)]
struct VariantResult {
    /// ns per socket()+close() and the SO_PROTOCOL of socket-bench's first socket, per round.
    rounds: Vec<(f64, i32)>,
    /// Why it could not run: a kernel's refusal line, or a missing tool. Set once: a refusal is
    /// the kernel's answer, not a fluke, so the later rounds skip the variant.
    refused: Option<String>,
    /// The background upgrader's counters when it stopped, per round.
    counters: Vec<String>,
}

fn socket_bench_variants() -> Vec<Variant> {
    let t = mptcp_trace_bin().to_string_lossy().into_owned();
    let run = |method: &str| {
        Wrap::Under(vec![
            t.clone(),
            "run".into(),
            "--method".into(),
            method.into(),
            "--".into(),
        ])
    };
    let up = |args: &[&str]| Wrap::Upgrader(args.iter().map(|a| a.to_string()).collect());
    vec![
        Variant {
            key: "none",
            wrap: Wrap::Plain,
        },
        Variant {
            key: "mptcpize_run",
            wrap: Wrap::Under(vec!["mptcpize".into(), "run".into()]),
        },
        Variant {
            key: "run_bpf",
            wrap: run("bpf"),
        },
        Variant {
            key: "upgrade_all",
            wrap: up(&["--all"]),
        },
        Variant {
            key: "upgrade_comm_in_scope",
            wrap: up(&["--comm", "socket-bench"]),
        },
        Variant {
            key: "upgrade_comm_out_of_scope",
            wrap: up(&["--comm", OTHER_COMM]),
        },
        Variant {
            key: "upgrade_all_count_only",
            wrap: up(&["--all", "--count-only"]),
        },
        Variant {
            key: "run_seccomp",
            wrap: run("seccomp"),
        },
    ]
}

/// The first line of a refusal worth quoting: mptcp-trace's own message, else stderr's first
/// line, else the exit status.
fn refusal_line(status: std::process::ExitStatus, stderr: &str) -> String {
    stderr
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("mptcp-trace:"))
        .or_else(|| stderr.lines().map(str::trim).find(|l| !l.is_empty()))
        .map_or_else(|| format!("failed ({status})"), str::to_string)
}

/// Runs socket-bench (under `prefix`): (ns per socket()+close(), SO_PROTOCOL), or why not.
fn socket_bench_once(prefix: &[String], bench: &Path, n: &str) -> Result<(f64, i32), String> {
    let mut argv: Vec<&std::ffi::OsStr> = prefix.iter().map(|a| a.as_ref()).collect();
    argv.push(bench.as_os_str());
    argv.push(n.as_ref());
    let o = match Command::new(argv[0]).args(&argv[1..]).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let place = if std::env::var_os("MPTCP_TRACE_VM").is_some() {
                "in the guest"
            } else {
                "on this machine"
            };
            return Err(format!(
                "not installed {place} ({} not found)",
                argv[0].to_string_lossy()
            ));
        }
        Err(e) => panic!("cannot run {argv:?}: {e}"),
    };
    let out = String::from_utf8_lossy(&o.stdout);
    let field = |k: &str| out.split_whitespace().find_map(|w| w.strip_prefix(k));
    match (field("ns_per_socket="), field("protocol=")) {
        (Some(ns), Some(p)) if o.status.success() => Ok((ns.parse().unwrap(), p.parse().unwrap())),
        _ => Err(refusal_line(o.status, &String::from_utf8_lossy(&o.stderr))),
    }
}

/// Runs socket-bench while `mptcp-trace upgrade ARGS` is attached (its ready file), then stops
/// the upgrade with SIGINT and checks its programs are gone: (the result, the upgrade's
/// counters line), or the upgrade's refusal.
fn socket_bench_with_upgrader(
    args: &[String],
    bench: &Path,
    n: &str,
) -> Result<((f64, i32), String), String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let up = Upgrader::try_start(&args).map_err(|(st, e)| refusal_line(st, &e))?;
    let result = socket_bench_once(&[], bench, n);
    let progs = up.progs.clone();
    let report = up.signal(libc::SIGINT);
    assert_programs_gone(&progs, &format!("upgrade {args:?}"));
    let counters = report
        .lines()
        .find(|l| l.contains("TCP sockets seen"))
        .map_or_else(String::new, |l| {
            l.trim().trim_start_matches("mptcp-trace: ").to_string()
        });
    Ok((result?, counters))
}

fn run_variant(v: &Variant, r: &mut VariantResult, bench: &Path, n: &str) {
    let got = match &v.wrap {
        Wrap::Plain => socket_bench_once(&[], bench, n),
        Wrap::Under(prefix) => socket_bench_once(prefix, bench, n),
        Wrap::Upgrader(args) => {
            socket_bench_with_upgrader(args, bench, n).map(|(res, counters)| {
                r.counters.push(counters);
                res
            })
        }
    };
    match got {
        Ok(res) => r.rounds.push(res),
        Err(why) => r.refused = Some(why),
    }
}

/// socket-bench, written out as `<dir>/socket-bench` so that its command name is
/// `socket-bench` (the in-scope `--comm`); the directory goes when dropped.
struct SocketBench(PathBuf);

impl SocketBench {
    fn write() -> SocketBench {
        let dir = std::env::temp_dir().join(format!("socket-bench.{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("socket-bench");
        fs::write(&bin, include_bytes!(env!("SOCKET_BENCH"))).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        SocketBench(bin)
    }
}

impl Drop for SocketBench {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// The CPU model, as /proc/cpuinfo names it.
fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            Some(
                l.strip_prefix("model name")?
                    .trim_start_matches([' ', '\t', ':'])
                    .to_string(),
            )
        })
        .unwrap_or_else(|| "?".into())
}

/// Not a test: the worker of `cargo xtask bench`'s upgrade part (run there on the host and in
/// the 6.12 guest; by hand: `SOCKET_BENCH_N=20000 SOCKET_BENCH_ROUNDS=5 cargo test -p
/// integration-tests --test upgrade -- --ignored --exact --nocapture bench_socket_cost`).
/// socket-bench (tests/c/socket-bench.c) creates and closes N TCP sockets under each upgrade
/// variant, in interleaved rounds; one marker line per variant gives every round's ns per
/// socket()+close() and SO_PROTOCOL, or the refusal that kept the variant from running.
#[test]
#[ignore = "benchmark, run by cargo xtask bench"]
fn bench_socket_cost() {
    require_root();
    let upgrade_link = Path::new(PIN_DIR).join("upgrade_link");
    assert!(
        !upgrade_link.exists(),
        "a pinned upgrade is attached (it would upgrade every variant's sockets): remove it with \
         `mptcp-trace upgrade --off` first"
    );
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.into());
    let n = env("SOCKET_BENCH_N", "20000");
    let rounds: usize = env("SOCKET_BENCH_ROUNDS", "5").parse().unwrap();
    let bench = SocketBench::write();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let cores = thread::available_parallelism().map_or(0, |c| c.get());
    println!(
        "{SOCKET_BENCH_MACHINE_MARKER} {}",
        serde_json::json!({
            "kernel": kernel.trim(),
            "cpu": cpu_model(),
            "cores": cores,
            "sockets_per_run": n.parse::<u64>().unwrap(),
            "rounds": rounds,
        })
    );
    let variants = socket_bench_variants();
    let mut results: Vec<VariantResult> =
        variants.iter().map(|_| VariantResult::default()).collect();
    for round in 0..rounds {
        for (v, r) in variants.iter().zip(&mut results) {
            if r.refused.is_some() {
                continue;
            }
            run_variant(v, r, &bench.0, &n);
            match (&r.refused, r.rounds.last()) {
                (Some(why), _) => eprintln!("round {round} {:<26} refused: {why}", v.key),
                (None, Some((ns, p))) => eprintln!(
                    "round {round} {:<26} SO_PROTOCOL {p:>3} {ns:>9.0} ns",
                    v.key
                ),
                (None, None) => unreachable!("a round gives a result or a refusal"),
            }
        }
    }
    for (v, r) in variants.iter().zip(&results) {
        println!(
            "{SOCKET_BENCH_MARKER} {}",
            serde_json::json!({
                "variant": v.key,
                "ns_per_socket": r.rounds.iter().map(|x| x.0).collect::<Vec<_>>(),
                "so_protocol": r.rounds.iter().map(|x| x.1).collect::<Vec<_>>(),
                "refused": r.refused,
                "upgrader_counters": r.counters,
            })
        );
    }
    // Nothing the bench started may stay attached: every upgrader's own programs were checked
    // as it stopped; `run --method bpf` holds its upgrade in its own process, gone with it.
    assert!(!upgrade_link.exists(), "the bench left a pinned upgrade");
    assert_no_orphan_program_since(&HashSet::new(), "the socket bench");
}

/// Ctrl-C reaches the whole foreground process group: the supervisor must outlive it, or the
/// sockets CMD opens while it shuts down would fail (ENOSYS).
#[test]
fn seccomp_supervisor_survives_a_sigint_to_the_process_group() {
    require_root();
    let out = out_file("sc-sigint");
    let exe = std::env::current_exe().unwrap();
    let st = Command::new(mptcp_trace_bin())
        .args(["run", "--method", "seccomp", "--", "sh", "-c"])
        .arg(format!(
            "trap '' INT; kill -INT 0; sleep 0.3; exec {} --ignored --exact workload --nocapture",
            exe.display()
        ))
        .env(ROLE, "sockets")
        .env(OUT, &out)
        .stdout(Stdio::null())
        // Its own process group, so the SIGINT does not reach the test harness.
        .process_group(0)
        .status()
        .unwrap();
    assert!(st.success(), "{st}");
    assert_eq!(proto(&parse(&out), "client"), MPTCP);
}

/// The eBPF program ids process `pid` holds, as its descriptors' fdinfo lists them (a program
/// fd, or a link fd naming the program it holds).
fn program_ids_of(pid: u32) -> std::collections::HashSet<u32> {
    fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|e| fs::read_to_string(e.ok()?.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Issue 16 item 7: `upgrade --events` traces in-process, so a SIGKILL takes the tracer's
/// programs with the upgrade's: every program id the process held is gone afterwards. Where
/// the upgrade is refused, the refusal comes before any tracing program is loaded.
#[test]
fn sigkill_of_upgrade_with_events_leaves_no_program() {
    let kind = expect();
    let args = ["upgrade", "--all", "--events"];
    if kind != Expect::Works {
        assert_refused(kind, &args);
        // The tracer is loaded only once the upgrade is attached: `-v` logs every attach.
        let o = trace(&[&["-v"][..], &args].concat());
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{t}");
        assert!(
            !t.contains("attached tp_btf/"),
            "tracing programs were loaded before the refusal: {t}"
        );
        return;
    }
    let up = Upgrader::start(&["--all", "--events"]);
    let held = program_ids_of(up.child.id());
    let names: HashMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| held.contains(&p.id()))
        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
        .collect();
    assert!(
        names.values().any(|n| n == PROG_NAME),
        "the upgrade program is not among {names:?}"
    );
    assert!(
        names.values().any(|n| n != PROG_NAME),
        "no tracing program among {names:?}"
    );
    up.signal(libc::SIGKILL);
    // Programs are freed after an RCU grace period, not at the last close.
    let start = Instant::now();
    loop {
        let left: Vec<_> = integration_tests::loaded_program_ids()
            .intersection(&held)
            .copied()
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "programs {left:?} of the killed upgrade are still loaded ({names:?})"
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !Path::new(PIN_DIR).join("upgrade_link").exists(),
        "an unpinned upgrade left a pin"
    );
}

/// Issue 16 item 15: a process CMD leaves behind goes back to the cgroup `run` was started
/// in — the caller's, here a test cgroup — not to the cgroup2 root, and the run's own cgroup
/// is removed.
#[test]
fn run_moves_what_cmd_leaves_behind_back_to_the_callers_cgroup() {
    require_root();
    let home = Cgroup::new("run-home");
    let procs = std::ffi::CString::new(
        home.0
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    let mut cmd = Command::new(mptcp_trace_bin());
    // The background sleep must not hold our stdout pipe open for 30 s.
    // Files, not pipes: the seccomp supervisor (auto's method where trampolines are refused)
    // keeps serving the sleep, and so holds its copies of them, after `run` exited.
    let out_path = out_file("run-home.out");
    let err_path = out_file("run-home.err");
    cmd.args([
        "run",
        "--",
        "sh",
        "-c",
        "sleep 30 >/dev/null 2>&1 & echo $!",
    ])
    .stdout(fs::File::create(&out_path).unwrap())
    .stderr(fs::File::create(&err_path).unwrap());
    // SAFETY: only open/write/close between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let r = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if r != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let run_pid = child.id();
    let status = child.wait().unwrap();
    let stderr = fs::read_to_string(&err_path).unwrap();
    assert!(status.success(), "{stderr}");
    let sleep: i32 = fs::read_to_string(&out_path)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    // The cgroup2 line ("0::PATH"; hybrid hosts list v1 hierarchies too).
    let cgroup_of = fs::read_to_string(format!("/proc/{sleep}/cgroup")).map(|s| {
        s.lines()
            .find(|l| l.starts_with("0::"))
            .unwrap_or_default()
            .to_string()
    });
    // SAFETY: kill(2) of the sleep this test started (through run), before any assertion.
    unsafe { libc::kill(sleep, libc::SIGKILL) };
    let rel = home.0.strip_prefix(cgroup2_mount().unwrap()).unwrap();
    assert_eq!(
        cgroup_of.unwrap(),
        format!("0::/{}", rel.display()),
        "the background sleep is not back in the caller's cgroup"
    );
    assert!(
        stderr.contains(&format!("process {sleep} outlived the command")),
        "{stderr}"
    );
    let own = cgroup2_mount()
        .unwrap()
        .join(format!("mptcp-trace-run.{run_pid}"));
    assert!(!own.exists(), "cgroup left: {}", own.display());
    // The sleep is reparented to init, which reaps it; then the test cgroup can go.
    let start = Instant::now();
    while Path::new(&format!("/proc/{sleep}")).exists() && start.elapsed() < TIMEOUT {
        thread::sleep(Duration::from_millis(20));
    }
}
