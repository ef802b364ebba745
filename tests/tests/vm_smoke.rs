//! Smoke tests that prove the tracer end to end on whatever kernel runs them: the programs load
//! and attach, and one real two-path MPTCP transfer in the test bed shows up as events. They
//! run on the host with the rest of the suite and inside every `cargo xtask vm-test` guest,
//! where they are the first sign of a kernel the programs do not fit.
//!
//! Needs root. Time limits are generous: the guests run without KVM.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use mptcp_user::{
    event::{Event, Kind},
    peer::{self, Proto},
    testbed::{self, TestBed},
};

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const EVENTS_TIMEOUT: Duration = Duration::from_secs(60);

fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "vm_smoke needs root: run it through `sudo cargo xtask test` or `cargo xtask vm-test`"
    );
}

fn tracer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MPTCP_TRACE_BIN") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/mptcp-trace")
}

/// The tracer as a child process: stdout lines collected, stderr kept for the failure message,
/// interrupted and reaped on drop.
struct Tracer {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    ready: PathBuf,
}

impl Tracer {
    fn start(extra: &[&str]) -> Tracer {
        let ready = std::env::temp_dir().join(format!("vm-smoke-ready-{}", std::process::id()));
        let _ = std::fs::remove_file(&ready);
        let mut child = Command::new(tracer_bin())
            .args(["events", "--json", "--ready-file"])
            .arg(&ready)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", tracer_bin().display()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        for (pipe, sink) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                stdout.clone(),
            ),
            (Box::new(child.stderr.take().unwrap()), stderr.clone()),
        ] {
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        let mut tracer = Tracer {
            child,
            stdout,
            stderr,
            ready,
        };
        tracer.wait_ready();
        tracer
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        while !self.ready.exists() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "mptcp-trace exited ({status}) before attaching:\n{}",
                    self.stderr.lock().unwrap().join("\n")
                );
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "mptcp-trace not ready after {READY_TIMEOUT:?}:\n{}",
                self.stderr.lock().unwrap().join("\n")
            );
            thread::sleep(Duration::from_millis(100));
        }
        // Whatever the loader warned about (missing kernel features) is worth seeing in the log.
        let warnings = self.stderr.lock().unwrap().join("\n");
        if !warnings.is_empty() {
            eprintln!("mptcp-trace stderr at attach time:\n{warnings}");
        }
    }

    fn events(&self) -> Vec<Event> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON {l:?}: {e}")))
            .collect()
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let start = Instant::now();
        loop {
            let events = self.events();
            if pred(&events) {
                return events;
            }
            assert!(
                start.elapsed() < EVENTS_TIMEOUT,
                "no {what} after {EVENTS_TIMEOUT:?}; events:\n{}\nstderr:\n{}",
                self.stdout.lock().unwrap().join("\n"),
                self.stderr.lock().unwrap().join("\n")
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(&self.ready);
    }
}

#[test]
fn tracer_loads_attaches_and_exits_after_duration() {
    require_root();
    let start = Instant::now();
    let out = Command::new(tracer_bin())
        .args(["events", "--json", "--duration", "5"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tracer_bin().display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "mptcp-trace events --json --duration 5: {}, {:?}",
        out.status,
        start.elapsed()
    );
    if !stderr.is_empty() {
        eprintln!("stderr:\n{stderr}");
    }
    assert!(out.status.success(), "mptcp-trace failed:\n{stderr}");
}

#[test]
fn traces_a_two_path_transfer_in_the_test_bed() {
    require_root();
    let tag = format!("vmsmoke-{}", std::process::id());
    let bed = TestBed::create(&tag).expect("test bed");
    let netns = TestBed::netns_inode(&bed.client).unwrap();
    let tracer = Tracer::start(&["--netns", &bed.client]);

    let addr: SocketAddr = format!("{}:4321", testbed::RED_SERVER_V4).parse().unwrap();
    let listener = testbed::in_netns(&bed.server, move || peer::listen(addr, Proto::Mptcp))
        .unwrap()
        .expect("listen");
    let server = testbed::spawn_in_netns(&bed.server, move || peer::serve(&listener, 1)).unwrap();
    let plan = peer::Send {
        bytes: 1 << 20,
        warmup: Duration::from_millis(1500),
        spread: Duration::ZERO,
    };
    let acked = testbed::in_netns(&bed.client, move || peer::send(addr, Proto::Mptcp, plan))
        .unwrap()
        .expect("client transfer");
    assert_eq!(acked, 1 << 20);
    let served = server.join().unwrap().unwrap().expect("server");
    assert_eq!(served, vec![1 << 20]);

    let events = tracer.wait_for("conn_closed", |ev| {
        ev.iter().any(|e| e.event == Kind::ConnClosed)
    });
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    eprintln!("events: {kinds:?}");
    for kind in [
        Kind::ConnCreated,
        Kind::ConnEstablished,
        Kind::SubflowEstablished,
        Kind::SubflowClosed,
        Kind::ConnClosed,
    ] {
        assert!(
            events.iter().any(|e| e.event == kind),
            "no {} event in {kinds:?}",
            kind.as_str()
        );
    }
    assert!(
        events.iter().all(|e| e.netns == Some(netns)),
        "an event outside the client namespace ({netns}): {events:?}"
    );
    let subflows = events
        .iter()
        .filter(|e| e.event == Kind::SubflowEstablished)
        .count();
    assert_eq!(
        subflows, 2,
        "expected the initial and the blue MP_JOIN subflow: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.event == Kind::SubflowEstablished && e.join == Some(true)),
        "no MP_JOIN subflow: {events:?}"
    );
}
