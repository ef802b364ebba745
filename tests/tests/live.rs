//! End to end: the real `mptcp-trace` binary's live view in tmux during a transfer over the
//! seed's test bed, and `mptcp-trace demo --json` (normal end and SIGTERM). Root only; these
//! tests never skip: without root or tmux they fail saying so.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use integration_tests::{parse_events, tag, Event, Kind, Tmux};
use mptcp_user::{
    commands::demo::shape_paths,
    peer::{self, Proto},
    testbed::{self, TestBed},
};

fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests need root (eBPF, network namespaces); run them through `sudo cargo xtask test`"
    );
}

/// `$MPTCP_TRACE_BIN`, else `<target>/debug/mptcp-trace` with `$CARGO_TARGET_DIR` honoured.
fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MPTCP_TRACE_BIN") {
        return p.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|t| root.join(t))
        .unwrap_or_else(|| root.join("target"));
    let p = target.join("debug/mptcp-trace");
    assert!(
        p.exists(),
        "{} not found: build it first (cargo build -p mptcp-user) or set MPTCP_TRACE_BIN",
        p.display()
    );
    p
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

fn netns_list() -> String {
    String::from_utf8_lossy(&run("ip", &["netns", "list"]).stdout).into_owned()
}

fn netns_exists(name: &str) -> bool {
    netns_list()
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// A child process, ended and reaped on drop: SIGTERM first (the demo removes its namespaces
/// then), SIGKILL if it is still there 15 s later.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: plain syscall on our own, not yet reaped child.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The TX/s column of a subflow row whose local address starts with `local`.
fn tx_rate<'a>(screen: &'a str, local: &str) -> Option<&'a str> {
    screen
        .lines()
        .filter(|l| l.starts_with("  ├ ") || l.starts_with("  └ "))
        .find(|l| l[l.find(' ').unwrap()..].trim_start()[4..].starts_with(local))
        .and_then(|l| l.split_whitespace().find(|t| t.ends_with("/s")))
}

#[test]
fn live_view_shows_both_subflows_with_throughput_and_q_restores_the_terminal() {
    require_root();
    let tag = tag("live");
    let bed = TestBed::create(&tag).expect("test bed");
    shape_paths(&bed, 50).expect("shape the paths");
    let tmux = Tmux::start(
        &format!("mptcp-live-{}", std::process::id()),
        &format!(
            "{} live --netns {}; echo EXITED rc=$?; sleep 60",
            bin().display(),
            bed.client
        ),
    );
    // Loading and verifying the programs takes seconds in a qemu guest without KVM, more on a
    // busy host: the start is waited for generously, the measurements below are not.
    let (ready, screen) = tmux.wait_for(Duration::from_secs(90), |s| {
        s.contains("mptcp-trace  connections")
    });
    assert!(ready, "the live view did not start:\n{screen}");
    assert_eq!(tmux.display("#{alternate_on}"), "1", "alternate screen");

    let addr: SocketAddr = format!("{}:4321", testbed::RED_SERVER_V4).parse().unwrap();
    let listener = testbed::in_netns(&bed.server, || peer::listen(addr, Proto::Mptcp))
        .unwrap()
        .expect("listen");
    let server = thread::spawn(move || peer::serve(&listener, 1));
    let client_ns = bed.client.clone();
    let client = thread::spawn(move || {
        testbed::in_netns(&client_ns, || {
            peer::send(
                addr,
                Proto::Mptcp,
                peer::Send {
                    // Both 50 Mbit/s paths full for about 8 s.
                    bytes: 100_000_000,
                    warmup: Duration::from_secs(1),
                    spread: Duration::ZERO,
                },
            )
        })
    });

    let both = |s: &str| {
        [testbed::RED_CLIENT_V4, testbed::BLUE_CLIENT_V4]
            .iter()
            .all(|a| tx_rate(s, &format!("{a}:")).is_some_and(|r| r != "0B/s"))
    };
    let (seen, screen) = tmux.wait_for(Duration::from_secs(15), both);
    println!("{screen}");
    assert!(
        seen,
        "both client subflows with non-zero TX/s expected:\n{screen}"
    );
    assert!(screen.contains("red-client") && screen.contains("blue-client"));

    tmux.keys("q");
    let (exited, screen) = tmux.wait_for(Duration::from_secs(30), |s| s.contains("EXITED rc="));
    assert!(exited, "q did not end the live view:\n{screen}");
    assert!(screen.contains("EXITED rc=0"), "{screen}");
    assert_eq!(
        tmux.display("#{alternate_on}"),
        "0",
        "alternate screen left"
    );
    assert_eq!(tmux.display("#{cursor_flag}"), "1", "cursor shown again");
    assert!(
        !screen.contains("SUBFLOW LOCAL"),
        "the view is gone from the normal screen:\n{screen}"
    );

    let acked = client.join().unwrap().unwrap().expect("transfer");
    assert_eq!(acked, 100_000_000);
    server.join().unwrap().expect("server");
}

/// Reads the demo's stdout lines on a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn spawn_demo(secs: u64) -> ChildGuard {
    ChildGuard(
        Command::new(bin())
            .args(["demo", "--json", "--duration", &secs.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mptcp-trace demo"),
    )
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            start.elapsed() < timeout,
            "demo still running after {timeout:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

/// The demo left nothing: its namespaces are gone and its process too. (Other tests may run
/// their own beds meanwhile: only this demo's names count.)
fn assert_clean(pid: u32) {
    for side in ["client", "server"] {
        let name = format!("mptcp-{side}-demo{pid}");
        assert!(!netns_exists(&name), "namespace {name} left behind");
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "demo process {pid} still exists"
    );
}

#[test]
fn demo_json_emits_both_subflows_and_leaves_nothing_behind() {
    require_root();
    let mut demo = spawn_demo(5);
    let pid = demo.0.id();
    let lines = lines_of(&mut demo.0);
    let st = wait_exit(&mut demo.0, Duration::from_secs(40));
    let stderr = stderr_of(&mut demo.0);
    assert!(st.success(), "demo failed: {st}\n{stderr}");
    let events: Vec<Event> = parse_events(&lines.try_iter().collect::<Vec<_>>());
    let established: Vec<&Event> = events
        .iter()
        .filter(|e| e.event == Kind::SubflowEstablished)
        .collect();
    for (addr, join) in [
        (testbed::RED_CLIENT_V4, false),
        (testbed::BLUE_CLIENT_V4, true),
    ] {
        assert!(
            established
                .iter()
                .any(|e| e.saddr.map(|a| a.to_string()).as_deref() == Some(addr)
                    && e.join == Some(join)),
            "no subflow_established from {addr} (join={join}) in {established:#?}"
        );
    }
    // The demo says what it did: upgraded plain TCP sockets where the kernel allows the
    // upgrade, native MPTCP sockets where it refuses it (as on a locked-down host).
    assert!(
        stderr.contains("native MPTCP sockets") || stderr.contains("turns them into MPTCP"),
        "the demo must say how its sockets became MPTCP:\n{stderr}"
    );
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("connection "))
        .unwrap_or_else(|| panic!("no summary:\n{stderr}"));
    assert!(
        summary.contains("2 subflows")
            && summary.contains("red 10.0.0.2→10.0.0.1")
            && summary.contains("blue 192.168.0.2→10.0.0.1"),
        "{summary}"
    );
    assert_clean(pid);
}

#[test]
fn demo_cleans_up_after_sigterm() {
    require_root();
    let mut demo = spawn_demo(60);
    let pid = demo.0.id();
    let lines = lines_of(&mut demo.0);
    // Wait until traffic flows, then terminate.
    let start = Instant::now();
    loop {
        let l = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the demo printed no subflow_established within 30 s");
        if l.contains("\"subflow_established\"") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30));
    }
    assert!(
        netns_exists(&format!("mptcp-client-demo{pid}")),
        "the bed exists while the demo runs"
    );
    // SAFETY: plain syscall on our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let st = wait_exit(&mut demo.0, Duration::from_secs(15));
    let stderr = stderr_of(&mut demo.0);
    assert!(st.success(), "demo after SIGTERM: {st}\n{stderr}");
    assert_clean(pid);
}

/// Issue 16 item 9: the demo's live view ends with status 0 when the user quits (`q`) and when
/// it is terminated (SIGTERM), and leaves nothing behind either way.
#[test]
fn demo_live_view_exits_0_on_q_and_on_sigterm() {
    require_root();
    for how in ["q", "SIGTERM"] {
        let pid_file = std::env::temp_dir().join(format!("{}.pid", tag("demo-live")));
        let _ = std::fs::remove_file(&pid_file);
        // `exec`: the pid written is the demo's own.
        let tmux = Tmux::start(
            &format!("mptcp-demo-live-{}-{how}", std::process::id()),
            &format!(
                "sh -c 'echo $$ > {}; exec {} demo'; echo EXITED rc=$?; sleep 60",
                pid_file.display(),
                bin().display()
            ),
        );
        let (ready, screen) = tmux.wait_for(Duration::from_secs(60), |s| {
            s.contains("mptcp-trace  connections")
        });
        assert!(
            ready,
            "{how}: the demo's live view did not start:\n{screen}"
        );
        let pid = integration_tests::take_pid_file(&pid_file);
        if how == "q" {
            tmux.keys("q");
        } else {
            // SAFETY: kill(2) of the demo this test started.
            assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
        }
        let (exited, screen) = tmux.wait_for(Duration::from_secs(20), |s| s.contains("EXITED rc="));
        assert!(exited, "{how} did not end the demo:\n{screen}");
        assert!(screen.contains("EXITED rc=0"), "{how}:\n{screen}");
        assert_eq!(
            tmux.display("#{alternate_on}"),
            "0",
            "{how}: alternate screen left"
        );
        assert_eq!(
            tmux.display("#{cursor_flag}"),
            "1",
            "{how}: cursor shown again"
        );
        assert_clean(pid);
    }
}

/// `demo < /dev/null > pipe` in a new session (no controlling terminal, as from cron or a
/// container without a tty): no TUI drawn into the pipe and no "No such device or address":
/// it says why on stderr and streams NDJSON, as `--json` does, then cleans up.
#[test]
fn demo_without_a_terminal_streams_ndjson_and_says_so() {
    require_root();
    let mut demo = ChildGuard(
        Command::new("setsid")
            .arg(bin())
            .args(["demo", "--duration", "4"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn setsid mptcp-trace demo"),
    );
    let lines = lines_of(&mut demo.0);
    let st = wait_exit(&mut demo.0, Duration::from_secs(40));
    let stderr = stderr_of(&mut demo.0);
    assert!(st.success(), "demo failed: {st}\n{stderr}");
    assert!(
        stderr.contains("stdout is not a terminal: streaming NDJSON (as with --json)"),
        "{stderr}"
    );
    assert!(!stderr.contains("os error 6"), "{stderr}");
    let out: Vec<String> = lines.try_iter().collect();
    assert!(!out.is_empty(), "no NDJSON:\n{stderr}");
    for l in &out {
        assert!(
            l.starts_with("{\"v\":1,") && !l.contains('\x1b'),
            "not an NDJSON line: {l:?}"
        );
    }
    let events = parse_events(&out);
    assert!(
        events.iter().any(|e| e.event == Kind::SubflowEstablished),
        "{out:#?}"
    );
}

/// Every line is one NDJSON event (no escape sequence of a drawn view among them), and they
/// hold the demo's subflows.
fn assert_ndjson(out: &[String], context: &str) {
    assert!(!out.is_empty(), "no NDJSON:\n{context}");
    for l in out {
        assert!(
            l.starts_with("{\"v\":1,") && !l.contains('\x1b'),
            "not an NDJSON line: {l:?}\n{context}"
        );
    }
    let events = parse_events(out);
    assert!(
        events.iter().any(|e| e.event == Kind::SubflowEstablished),
        "{out:#?}"
    );
}

const NO_TERMINAL: &str = "stdout is not a terminal: streaming NDJSON (as with --json)";

/// `demo --duration 3 < /dev/null > FILE`: the file holds NDJSON lines only, stderr says why,
/// status 0, nothing left behind.
#[test]
fn demo_with_stdout_a_file_writes_ndjson_to_it_and_says_why() {
    require_root();
    let file = std::env::temp_dir().join(format!("{}.ndjson", tag("demo-file")));
    let mut demo = ChildGuard(
        Command::new(bin())
            .args(["demo", "--duration", "3"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&file).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mptcp-trace demo"),
    );
    let pid = demo.0.id();
    let st = wait_exit(&mut demo.0, Duration::from_secs(40));
    let stderr = stderr_of(&mut demo.0);
    assert!(st.success(), "demo failed: {st}\n{stderr}");
    assert!(stderr.contains(NO_TERMINAL), "{stderr}");
    let text = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(text.ends_with('\n'), "the last line is complete: {text:?}");
    assert_ndjson(
        &text.lines().map(str::to_string).collect::<Vec<_>>(),
        &stderr,
    );
    assert_clean(pid);
}

/// `demo --duration 3 | cat` typed in a real terminal (tmux): the pipe gets NDJSON lines, the
/// terminal gets the reason on stderr, the demo ends with status 0, and the terminal is as it
/// was: not in the alternate screen, cursor visible.
#[test]
fn demo_piped_to_cat_from_a_terminal_streams_ndjson_and_leaves_the_terminal_as_it_was() {
    require_root();
    let pid_file = std::env::temp_dir().join(format!("{}.pid", tag("demo-cat")));
    let _ = std::fs::remove_file(&pid_file);
    // `exec`: the pid written is the demo's own; its status is echoed into the pipe.
    let tmux = Tmux::start(
        &format!("mptcp-demo-cat-{}", std::process::id()),
        &format!(
            "{{ sh -c 'echo $$ > {}; exec {} demo --duration 3'; echo DEMO rc=$?; }} | cat; \
             echo EXITED; sleep 60",
            pid_file.display(),
            bin().display()
        ),
    );
    let (exited, screen) = tmux.wait_for(Duration::from_secs(60), |s| s.contains("EXITED"));
    assert!(exited, "the demo did not end:\n{screen}");
    let pid = integration_tests::take_pid_file(&pid_file);
    let all = tmux.history();
    assert!(all.contains("DEMO rc=0"), "{all}");
    assert!(all.contains(NO_TERMINAL), "{all}");
    let out: Vec<String> = all
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(str::to_string)
        .collect();
    assert_ndjson(&out, &all);
    assert_eq!(
        tmux.display("#{alternate_on}"),
        "0",
        "alternate screen left"
    );
    assert_eq!(
        tmux.display("#{cursor_flag}"),
        "1",
        "cursor hidden after exit"
    );
    assert_clean(pid);
}
