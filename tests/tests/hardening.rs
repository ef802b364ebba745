//! What an unprivileged user on the same machine, a careless script or a signal can do to the
//! tracer, and what it must not achieve: forged or injected output, root writing through a
//! planted link, threads per namespace, bad input accepted, a stream that never ends.

use std::{
    fs,
    io::Read,
    net::SocketAddr,
    os::unix::fs::symlink,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    helper_bin, mptcp_trace_bin, peer, require_root, tag, testbed, ChildGuard, Kind, Tracer,
};
use mptcp_user::sys::{mountns, netns};
use peer::{Proto, Send};
use testbed::TestBed;

const WAIT: Duration = Duration::from_secs(60);

fn thread_ids_of(pid: u32) -> std::collections::BTreeSet<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The threads a process keeps: those alive in every sample over a second. The pipeline briefly
/// runs a scoped thread to read other namespaces' facts (setns must not move the main thread),
/// and tests running beside open connections that ask for them; in a slow guest such threads
/// follow one another for longer than a sample period, but never with the same thread id.
fn lasting_threads_of(pid: u32) -> usize {
    let mut kept = thread_ids_of(pid);
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(50));
        let now = thread_ids_of(pid);
        kept.retain(|t| now.contains(t));
    }
    kept.len()
}

fn fds_of(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(start.elapsed() < limit, "still running after {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A process's name (up to 15 bytes) reaches the terminal only escaped: it cannot clear the
/// screen, forge lines (LF) or overwrite fields (CR).
/// The tracer mounts only in a thread's own mount namespace (an empty tmpfs over
/// /sys/kernel/btf so that aya's loader parses nothing, securityfs for one read): the mount is
/// seen by that thread alone — not by the host, not by the process's other threads — and the
/// file it hides is there for everyone else meanwhile.
#[test]
fn a_private_mount_is_seen_by_its_thread_alone() {
    require_root();
    let hidden = std::path::Path::new("/sys/kernel/btf/vmlinux");
    // A tmpfs on /sys/kernel/btf, in mountinfo's fields (mount point, then the filesystem
    // type after the separator).
    let tmpfs_on_btf = |mountinfo: &str| {
        mountinfo.lines().any(|l| {
            l.split(' ').nth(4) == Some("/sys/kernel/btf")
                && l.split(" - ")
                    .nth(1)
                    .is_some_and(|t| t.starts_with("tmpfs "))
        })
    };
    let host = || fs::read_to_string("/proc/1/mountinfo").unwrap();
    let here = || fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
    assert!(hidden.exists(), "this kernel has no BTF to hide");
    assert!(!tmpfs_on_btf(&host()) && !tmpfs_on_btf(&here()));

    let (seen_tx, seen) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let mounter = thread::spawn(move || {
        mountns::with_mount(c"none", c"/sys/kernel/btf", c"tmpfs", move || {
            let mountinfo = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
            seen_tx.send((mountinfo, hidden.exists())).unwrap();
            released.recv().unwrap();
        })
    });
    let (inside, exists_inside) = seen.recv_timeout(WAIT).expect("the mount was made");
    assert!(tmpfs_on_btf(&inside), "{inside}");
    assert!(
        !exists_inside,
        "{} is still seen under the tmpfs",
        hidden.display()
    );
    // While it is mounted there: not on the host, not on this thread, the file still here.
    assert!(!tmpfs_on_btf(&host()), "{}", host());
    assert!(!tmpfs_on_btf(&here()), "{}", here());
    assert!(hidden.exists());
    release.send(()).unwrap();
    mounter.join().unwrap().expect("with_mount");
    assert!(!tmpfs_on_btf(&host()) && hidden.exists());
}

#[test]
fn control_characters_in_a_process_name_never_reach_the_terminal() {
    require_root();
    let bed = TestBed::create(&tag("inject")).unwrap();
    let ready = std::env::temp_dir().join(format!("{}.ready", tag("inject")));
    let mut child = ChildGuard(
        Command::new(mptcp_trace_bin())
            .args(["events", "--netns", &bed.client, "--ready-file"])
            .arg(&ready)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while !ready.exists() {
        assert!(start.elapsed() < WAIT, "tracer not ready");
        thread::sleep(Duration::from_millis(20));
    }
    let addr: SocketAddr = format!("{}:4321", testbed::RED_SERVER_V4).parse().unwrap();
    let listener = testbed::in_netns(&bed.server, move || peer::listen(addr, Proto::Mptcp))
        .unwrap()
        .unwrap();
    let srv = thread::spawn(move || peer::serve(&listener, 1));
    let client_ns = netns::named(&bed.client);
    thread::spawn(move || {
        let evil = c"\x1b[2J\x1b[31mX\rY\nFA";
        // SAFETY: naming this thread; the string is NUL-terminated and 15 bytes long.
        unsafe { libc::prctl(libc::PR_SET_NAME, evil.as_ptr()) };
        netns::run_in(&client_ns, || {
            peer::send(
                addr,
                Proto::Mptcp,
                Send {
                    bytes: 1000,
                    warmup: Duration::ZERO,
                    spread: Duration::ZERO,
                },
            )
        })
        .unwrap()
        .unwrap();
    })
    .join()
    .unwrap();
    srv.join().unwrap().unwrap();
    thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    let mut out = Vec::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    child.0.wait().unwrap();
    let _ = fs::remove_file(&ready);
    let text = String::from_utf8(out).unwrap();
    assert!(
        !text.contains('\x1b') && !text.contains('\r'),
        "a control character reached the terminal: {text:?}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 2, "{text}");
    for l in &lines[1..] {
        // Every line is an event line: a time, then a kind; none was forged by a LF. (A `lost`
        // line is one too: the 6.1 guest once counted a program run the kernel skipped.)
        let mut words = l.split_whitespace();
        let time = words.next().unwrap_or_default();
        let kind = words.next().unwrap_or_default();
        assert!(
            time.len() == 15
                && time.as_bytes()[2] == b':'
                && (kind.starts_with("conn_")
                    || kind.starts_with("subflow_")
                    || kind.starts_with("addr_")
                    || kind == "lost"),
            "not an event line: {l:?}"
        );
    }
    assert!(
        text.contains(r"comm=\x1b[2J\x1b[31mX\x0dY\x0aFA"),
        "the name is shown, escaped: {text}"
    );
}

/// Anyone with their own user and network namespace may broadcast on the MPTCP events group
/// there. The tracer takes only the kernel's messages (sender port id 0) and counts the rest.
#[test]
fn forged_path_manager_events_are_dropped_and_counted() {
    let tracer = Tracer::start(&[]);
    let forge = Command::new(helper_bin("pm-forge"))
        .args(["announce", "27", "deadbeef", "3"])
        .output()
        .unwrap();
    assert!(
        forge.status.success() && String::from_utf8_lossy(&forge.stdout).contains("sent 27"),
        "the forger could not send: {}",
        String::from_utf8_lossy(&forge.stderr)
    );
    thread::sleep(Duration::from_millis(500));
    let run = tracer.stop();
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        !run.events
            .iter()
            .any(|e| e.token.as_deref() == Some("deadbeef")
                || e.addr.map(|a| a.to_string()).as_deref() == Some("6.6.6.6")),
        "a forged announcement was shown: {:?}",
        run.events
    );
    assert!(
        run.stderr
            .contains("27 forged path-manager messages dropped"),
        "forgeries not counted: {}",
        run.stderr
    );
}

/// The path manager's events group carries every MPTCP event of a namespace (about six per
/// connection and end); the tracer wants only ADD_ADDR/RM_ADDR. With its reader stopped while
/// 100 connections come and go, the rest must not fill its netlink sockets and be reported as
/// lost (they did: "netlink overruns 1" in the 6.1 guest's 200-connection test).
#[test]
fn a_stalled_reader_overruns_no_netlink_socket_with_events_it_ignores() {
    require_root();
    const N: usize = 100;
    let bed = TestBed::create(&tag("stall")).unwrap();
    let cns = TestBed::netns_inode(&bed.client).unwrap();
    let tracer = Tracer::start(&[]);
    let addr: SocketAddr = "10.0.0.1:4341".parse().unwrap();
    let listener = testbed::in_netns(&bed.server, move || peer::listen(addr, Proto::Mptcp))
        .unwrap()
        .unwrap();
    let srv = thread::spawn(move || peer::serve(&listener, N));
    tracer.freeze();
    let plan = Send {
        bytes: 1000,
        warmup: Duration::ZERO,
        spread: Duration::ZERO,
    };
    let sent = testbed::in_netns(&bed.client, move || {
        (0..N)
            .map(|_| peer::send(addr, Proto::Mptcp, plan))
            .collect::<std::io::Result<Vec<u64>>>()
    })
    .unwrap()
    .unwrap();
    assert_eq!(sent, vec![1000; N]);
    assert_eq!(srv.join().unwrap().unwrap().len(), N);
    tracer.thaw();
    // Every connection is reported closed, or the kernel still holds it, or a program run
    // the kernel skipped (counted) took its close: the 7.2 guest skipped 10 runs here.
    let deadline = std::time::Instant::now() + WAIT;
    let (closed, open, skipped) = loop {
        let events = tracer.events();
        let closed = events
            .iter()
            .filter(|e| e.netns == Some(cns) && e.event == Kind::ConnClosed)
            .count();
        let skipped: u64 = events
            .iter()
            .filter_map(|e| e.lost.as_ref()?.recursion_misses)
            .sum();
        if closed >= N {
            break (closed, Vec::new(), skipped);
        }
        let open = integration_tests::mptcp_sockets_open(&bed.client);
        let accounted = closed + open.len() + skipped as usize;
        if accounted >= N || std::time::Instant::now() > deadline {
            break (closed, open, skipped);
        }
        thread::sleep(Duration::from_millis(500));
    };
    assert!(
        closed + open.len() + skipped as usize >= N,
        "{closed} conn_closed of {N}, {skipped} program runs skipped; the kernel holds {open:?}"
    );
    tracer.stop().assert_only_skipped_runs();
}

/// Namespaces cost a socket each, never a thread: an ordinary user can make thousands.
#[test]
fn many_network_namespaces_cost_no_threads() {
    let tracer = Tracer::start(&[]);
    let before = lasting_threads_of(tracer.pid());
    let fds_before = fds_of(tracer.pid());
    let idle: Vec<ChildGuard> = (0..60)
        .map(|_| {
            ChildGuard(
                Command::new(helper_bin("pm-forge"))
                    // Alive well past the tracer's start-up (15 s in a busy guest) and run;
                    // dropped (killed) at the end of the test.
                    .args(["idle", "120"])
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    // Two rescans (every 2 s) find them all.
    thread::sleep(Duration::from_secs(5));
    let during = lasting_threads_of(tracer.pid());
    let fds_during = fds_of(tracer.pid());
    drop(idle);
    let run = tracer.stop();
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        during, before,
        "the tracer grew from {before} to {during} threads with 60 more namespaces"
    );
    // And they are watched: a socket each, on the one epoll set (most of them: one may still
    // be starting, and tests running beside add and remove namespaces of their own).
    assert!(
        fds_during >= fds_before + 50,
        "the 60 namespaces are not watched: {fds_before} → {fds_during} descriptors"
    );
}

/// The namespace sockets never starve the process of descriptors: with a soft limit of 100
/// descriptors at most 50 namespaces are watched, and the rest are counted in the summary.
#[test]
fn namespaces_beyond_the_descriptor_budget_are_counted_not_watched() {
    require_root();
    let idle: Vec<ChildGuard> = (0..60)
        .map(|_| {
            ChildGuard(
                Command::new(helper_bin("pm-forge"))
                    // Alive well past the tracer's start-up (15 s in a busy guest) and run;
                    // dropped (killed) at the end of the test.
                    .args(["idle", "120"])
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    thread::sleep(Duration::from_secs(1));
    let out = Command::new("prlimit")
        .arg("--nofile=100:100")
        .arg(mptcp_trace_bin())
        .args(["events", "--json", "--duration", "3"])
        .output()
        .unwrap();
    drop(idle);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("network namespaces not watched (limit 50)"),
        "{stderr}"
    );
}

/// The ready file is checked before anything is loaded and never written through a link.
#[test]
fn a_bad_ready_file_is_refused_before_anything_is_attached() {
    require_root();
    let dir = std::env::temp_dir().join(tag("ready"));
    fs::create_dir_all(&dir).unwrap();
    let victim = dir.join("victim");
    fs::write(&victim, "precious\n").unwrap();
    symlink(&victim, dir.join("planted")).unwrap();
    for path in [
        dir.join("planted"),
        dir.join("no/such/dir/ready"),
        "/dev/full".into(),
        victim.clone(),
    ] {
        let out = Command::new(mptcp_trace_bin())
            .args(["-v", "events", "--duration", "1", "--ready-file"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", path.display());
        assert!(stderr.contains("--ready-file"), "{stderr}");
        assert!(
            !stderr.contains("attached"),
            "loaded before refusing: {stderr}"
        );
    }
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    fs::remove_dir_all(&dir).unwrap();
}

/// Each of these was accepted once (and traced everything); each is one line and status 2.
#[test]
fn malformed_selectors_are_refused_with_status_2() {
    require_root();
    let fake = std::env::temp_dir().join(tag("fakecg"));
    fs::create_dir_all(&fake).unwrap();
    fs::write(fake.join("cgroup.procs"), "").unwrap();
    // A thread id is not a process id.
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let t = thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        let _ = stop_rx.recv();
    });
    let tid = tid_rx.recv().unwrap().to_string();
    let fake_s = fake.display().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec!["--token", "+1"],
        vec!["--token", "0x0x1"],
        vec!["--netns", ""],
        vec!["--netns", "../../proc/1/ns/net"],
        vec!["--netns", "/etc/passwd"],
        vec!["--netns", "0"],
        vec!["--netns", "12345"],
        vec!["--cgroup", "../../../etc"],
        vec!["--cgroup", &fake_s],
        vec!["--pid", &tid],
        vec!["--comm", "sixteen-bytes-xx"],
    ];
    for args in cases {
        let out = Command::new(mptcp_trace_bin())
            .arg("events")
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} accepted: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
    stop_tx.send(()).unwrap();
    t.join().unwrap();
    fs::remove_dir_all(&fake).unwrap();
}

/// A bad `MPTCP_TRACE_RESCUE` is refused like a bad flag: one line, status 2.
#[test]
fn a_bad_rescue_override_is_refused_with_status_2() {
    require_root();
    let out = Command::new(mptcp_trace_bin())
        .args(["events", "--duration", "1"])
        .env("MPTCP_TRACE_RESCUE", "sometimes")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("MPTCP_TRACE_RESCUE=\"sometimes\""),
        "{stderr}"
    );
}

/// SIGHUP (a closed terminal) stops like SIGTERM: a summary, status 0.
#[test]
fn sighup_ends_events_with_a_summary() {
    let tracer = Tracer::start(&[]);
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGHUP) };
    let run = tracer.stop();
    assert!(run.status.success(), "{:?} {}", run.status, run.stderr);
    assert!(
        run.stderr.contains("events shown, 0 lost"),
        "{}",
        run.stderr
    );
}

/// `events | head -1` ends when head does, even when no event ever comes.
#[test]
fn a_closed_pipe_ends_events_without_traffic() {
    require_root();
    let quiet = TestBed::create(&tag("pipe")).unwrap();
    let mut child = ChildGuard(
        Command::new(mptcp_trace_bin())
            .args(["events", "--netns", &quiet.client])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdout = child.0.stdout.take().unwrap();
    let mut first = [0u8; 4];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"TIME", "the header comes first");
    drop(stdout);
    let st = wait_exit(&mut child.0, Duration::from_secs(10));
    assert!(st.success(), "{st}");
}

/// A demo killed with SIGKILL leaves its namespaces; the next demo removes them. SIGHUP ends a
/// demo cleanly.
#[test]
fn namespaces_of_a_killed_demo_are_removed_by_the_next_one() {
    require_root();
    let mut first = ChildGuard(
        Command::new(mptcp_trace_bin())
            .args(["demo", "--json", "--duration", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = first.0.id();
    let client = format!("mptcp-client-demo{pid}");
    let start = Instant::now();
    while !netns::named(&client).exists() {
        assert!(start.elapsed() < WAIT, "the first demo made no test bed");
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(500));
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(netns::named(&client).exists(), "SIGKILL left the test bed");
    let mut second = ChildGuard(
        Command::new(mptcp_trace_bin())
            .args(["demo", "--json", "--duration", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let second_pid = second.0.id();
    let start = Instant::now();
    // Both, one after the other (in name order).
    let server = format!("mptcp-server-demo{pid}");
    while netns::named(&client).exists() || netns::named(&server).exists() {
        assert!(
            start.elapsed() < WAIT,
            "the next demo did not remove {client} and {server}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    // SIGHUP: a clean end, its own namespaces removed.
    thread::sleep(Duration::from_secs(2));
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(second_pid as i32, libc::SIGHUP) };
    let st = wait_exit(&mut second.0, WAIT);
    assert!(st.success(), "demo after SIGHUP: {st}");
    for side in ["client", "server"] {
        assert!(!netns::named(&format!("mptcp-{side}-demo{second_pid}")).exists());
    }
}

/// A lost event is reported with its causes, and the summary always names every cause.
#[test]
fn the_summary_names_every_loss_cause() {
    // Every cause is named (the helper's pattern), and only a skipped run of the host's other
    // traffic could count.
    Tracer::start(&[]).stop().assert_only_skipped_runs();
}

/// `setpriv` running `mptcp-trace ARGS` as uid/gid 65534 with no supplementary groups and,
/// besides `caps` (setpriv names: `bpf`, `net_admin`…), no capabilities at all.
fn as_nobody(caps: &[&str], args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"]);
    if caps.is_empty() {
        c.args(["--inh-caps", "-all", "--ambient-caps", "-all"]);
    } else {
        let set = caps
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",");
        c.args(["--inh-caps", &set, "--ambient-caps", &set]);
    }
    c.arg(mptcp_trace_bin()).args(args);
    c
}

/// Without capabilities, each command says which ones it lacks in one line and exits with its
/// documented status before creating anything: no cgroup, no mount, no namespace.
#[test]
fn without_capabilities_each_command_names_them_and_creates_nothing() {
    require_root();
    for (args, status) in [
        (&["events", "--duration", "1"][..], 2),
        (&["run", "--", "true"][..], 125),
        (&["run", "--method", "bpf", "--", "true"][..], 125),
        (&["demo", "--json", "--duration", "1"][..], 2),
    ] {
        let child = as_nobody(&[], args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // setpriv execs mptcp-trace: the same process id.
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(status), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("missing: CAP_") && !stderr.contains("Permission denied"),
            "{args:?}: no capability named: {stderr}"
        );
        let cgroup2 = mptcp_user::sys::cgroup::mount().unwrap();
        for left in [
            cgroup2.join(format!("mptcp-trace-run.{pid}")),
            format!("/run/mptcp-trace-cgroup2.{pid}").into(),
            netns::named(&format!("mptcp-client-demo{pid}")),
            netns::named(&format!("mptcp-server-demo{pid}")),
        ] {
            assert!(!left.exists(), "{args:?} left {}", left.display());
        }
    }
    // What each names: tracing's three; run (auto: seccomp) the cgroup root's write access;
    // run --method bpf the upgrade's too.
    let line = |args: &[&str]| {
        String::from_utf8_lossy(&as_nobody(&[], args).output().unwrap().stderr).into_owned()
    };
    let events = line(&["events", "--duration", "1"]);
    assert!(
        events.contains("missing: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN)"),
        "{events}"
    );
    let run = line(&["run", "--", "true"]);
    assert!(run.contains("missing: CAP_DAC_OVERRIDE)"), "{run}");
    let bpf = line(&["run", "--method", "bpf", "--", "true"]);
    assert!(
        bpf.contains("missing: CAP_DAC_OVERRIDE, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)"),
        "{bpf}"
    );
}

/// Capabilities, not uid 0 (issue 9): an ordinary user granted CAP_BPF, CAP_PERFMON,
/// CAP_NET_ADMIN and CAP_SYS_ADMIN traces, and sees a connection made in a test bed. Without
/// CAP_SYS_ADMIN (the path manager's events are subscribed to inside each namespace: setns)
/// it is refused rather than silently missing those events.
#[test]
fn a_user_granted_the_tracing_capabilities_traces() {
    require_root();
    let out = as_nobody(
        &["bpf", "perfmon", "net_admin"],
        &["events", "--duration", "1"],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("(missing: CAP_SYS_ADMIN)"), "{stderr}");
    let bed = TestBed::create(&tag("caps")).unwrap();
    // /tmp: a directory the user may create its ready file in.
    let ready = std::env::temp_dir().join(format!("{}.ready", tag("caps")));
    let mut child = ChildGuard(
        as_nobody(
            &["bpf", "perfmon", "net_admin", "sys_admin"],
            &[
                "events",
                "--json",
                "--duration",
                "6",
                "--netns",
                &bed.client,
                "--ready-file",
            ],
        )
        .arg(&ready)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let start = Instant::now();
    while !ready.exists() {
        if let Some(st) = child.0.try_wait().unwrap() {
            let mut err = String::new();
            child
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("the tracer ended before it was ready: {st}: {err}");
        }
        assert!(start.elapsed() < WAIT, "tracer not ready");
        thread::sleep(Duration::from_millis(20));
    }
    let addr: SocketAddr = format!("{}:4361", testbed::RED_SERVER_V4).parse().unwrap();
    let listener = testbed::in_netns(&bed.server, move || peer::listen(addr, Proto::Mptcp))
        .unwrap()
        .unwrap();
    let srv = thread::spawn(move || peer::serve(&listener, 1));
    let plan = Send {
        bytes: 1000,
        warmup: Duration::ZERO,
        spread: Duration::ZERO,
    };
    testbed::in_netns(&bed.client, move || peer::send(addr, Proto::Mptcp, plan))
        .unwrap()
        .unwrap();
    srv.join().unwrap().unwrap();
    let mut out = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let st = wait_exit(&mut child.0, WAIT);
    let _ = fs::remove_file(&ready);
    assert!(st.success(), "{st}: {err}");
    assert!(err.contains("events shown, 0 lost"), "no summary: {err}");
    let events =
        integration_tests::parse_events(&out.lines().map(String::from).collect::<Vec<_>>());
    for kind in [Kind::ConnCreated, Kind::ConnClosed] {
        assert!(
            events
                .iter()
                .any(|e| e.event == kind && e.dport == Some(4361)),
            "no {kind:?} of the test connection: {out}"
        );
    }
}

/// `doctor`'s check of namespaces left by demos: its verdict on this test's names only (other
/// tests may run demos meanwhile).
fn stale_demo_check() -> mptcp_user::doctor::Check {
    let out = Command::new(mptcp_trace_bin())
        .args(["doctor", "--json", "--netns", "/proc/self/ns/net"])
        .output()
        .unwrap();
    let report: mptcp_user::doctor::Report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    report
        .checks
        .into_iter()
        .find(|c| c.name == "stale_demo_namespaces")
        .expect("doctor has the stale_demo_namespaces check")
}

fn bed_of(pid: u32) -> [String; 2] {
    ["client", "server"].map(|side| format!("mptcp-{side}-demo{pid}"))
}

/// Issue 16 item 8: namespaces of a demo killed with SIGKILL are reported by `doctor` with the
/// command that removes them, and those of a demo whose pid now belongs to another process
/// (pid reuse) too — by `doctor` and by the next `demo`, which removes them. A running demo's
/// namespaces are left alone.
#[test]
fn doctor_reports_namespaces_of_dead_demos_even_when_their_pid_was_reused() {
    require_root();
    let mut demo = ChildGuard(
        Command::new(mptcp_trace_bin())
            .args(["demo", "--json", "--duration", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let live = demo.0.id();
    let start = Instant::now();
    while !bed_of(live).iter().all(|n| netns::named(n).exists()) {
        assert!(start.elapsed() < WAIT, "the demo made no test bed");
        thread::sleep(Duration::from_millis(50));
    }
    // A "demo" whose pid is now a sleep: its namespaces look alive by pid alone.
    let mut reused = ChildGuard(Command::new("sleep").arg("120").spawn().unwrap());
    let fake = reused.0.id();
    for n in bed_of(fake) {
        mptcp_user::testbed::ip(&["netns", "add", &n]).unwrap();
    }
    let c = stale_demo_check();
    assert_eq!(c.status, mptcp_user::doctor::Status::Warn, "{c:?}");
    for n in bed_of(fake) {
        assert!(c.detail.contains(&n), "{n} not reported: {c:?}");
        assert!(
            c.fix
                .as_deref()
                .unwrap()
                .contains(&format!("ip netns del {n}")),
            "{c:?}"
        );
    }
    for n in bed_of(live) {
        assert!(
            !c.detail.contains(&n),
            "a running demo's {n} reported: {c:?}"
        );
    }

    // Killed: now its namespaces are reported too, and the fix removes every one.
    demo.0.kill().unwrap();
    demo.0.wait().unwrap();
    let c = stale_demo_check();
    for n in bed_of(live).iter().chain(&bed_of(fake)) {
        assert!(c.detail.contains(n.as_str()), "{n} not reported: {c:?}");
    }
    let fix = c.fix.unwrap();
    integration_tests::run_fix(&fix);
    let c = stale_demo_check();
    for n in bed_of(live).iter().chain(&bed_of(fake)) {
        assert!(!netns::named(n).exists(), "{n} still exists after {fix}");
        assert!(!c.detail.contains(n.as_str()), "{c:?}");
    }

    // The next demo removes a reused pid's namespaces itself.
    for n in bed_of(fake) {
        mptcp_user::testbed::ip(&["netns", "add", &n]).unwrap();
    }
    let out = Command::new(mptcp_trace_bin())
        .args(["demo", "--json", "--duration", "1"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in bed_of(fake) {
        assert!(!netns::named(&n).exists(), "the next demo left {n}");
    }
    reused.0.kill().unwrap();
    reused.0.wait().unwrap();
}
