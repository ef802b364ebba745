//! Helpers for the root integration tests: the tracer as a child process, the kernel's own
//! MPTCP event monitor as an oracle, and guards that clean up even when a test fails.
//!
//! Tests need root and a kernel with MPTCP and BTF. They never skip: without root they fail
//! with a message saying so.

pub mod joins;
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

pub use mptcp_user::{
    event::{Family, Kind, Protocol, Side},
    peer, testbed,
};

use mptcp_user::event::Data;

/// One NDJSON line as the tests read it: parsed (and so validated) as the tool's typed
/// [`mptcp_user::event::Event`], then laid flat so that assertions can name any field of any
/// kind. `raw` keeps the typed event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub event: Kind,
    pub time: String,
    pub ts_ns: u64,
    pub token: Option<String>,
    pub netns: Option<u32>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub protocol: Option<Protocol>,
    pub family: Option<Family>,
    pub saddr: Option<std::net::IpAddr>,
    pub sport: Option<u16>,
    pub daddr: Option<std::net::IpAddr>,
    pub dport: Option<u16>,
    pub side: Option<Side>,
    pub reason: Option<String>,
    pub duration_ns: Option<u64>,
    pub subflows_total: Option<u32>,
    pub ifindex: Option<u32>,
    pub ifname: Option<String>,
    pub local_id: Option<i32>,
    pub remote_id: Option<u8>,
    pub addr: Option<std::net::IpAddr>,
    pub port: Option<u16>,
    pub backup: Option<bool>,
    pub peer_backup: Option<bool>,
    pub join: Option<bool>,
    pub peer_token: Option<String>,
    pub error: Option<String>,
    pub reset_reason: Option<String>,
    pub reset_sent_reason: Option<String>,
    pub bytes_sent: Option<u64>,
    pub bytes_acked: Option<u64>,
    pub bytes_received: Option<u64>,
    pub retrans: Option<u32>,
    pub srtt_us: Option<u32>,
    pub count: Option<u64>,
    pub lost: Option<mptcp_user::event::Lost>,
    /// conn_diagnosis: its cause (detail and evidence are in `raw`).
    pub cause: Option<String>,
    pub raw: Option<mptcp_user::event::Event>,
}

impl Event {
    /// A conn_diagnosis's cause, detail and evidence.
    pub fn diagnosis(&self) -> Option<&mptcp_user::event::ConnDiagnosis> {
        match self.raw.as_ref().map(|r| &r.data) {
            Some(Data::ConnDiagnosis(c)) => Some(c),
            _ => None,
        }
    }
}

impl From<mptcp_user::event::Event> for Event {
    fn from(e: mptcp_user::event::Event) -> Self {
        let mut f = Event {
            event: e.kind(),
            time: e.time.clone(),
            ts_ns: e.ts_ns,
            token: None,
            netns: None,
            pid: None,
            comm: None,
            protocol: None,
            family: None,
            saddr: None,
            sport: None,
            daddr: None,
            dport: None,
            side: None,
            reason: None,
            duration_ns: None,
            subflows_total: None,
            ifindex: None,
            ifname: None,
            local_id: None,
            remote_id: None,
            addr: None,
            port: None,
            backup: None,
            peer_backup: None,
            join: None,
            peer_token: None,
            error: None,
            reset_reason: None,
            reset_sent_reason: None,
            bytes_sent: None,
            bytes_acked: None,
            bytes_received: None,
            retrans: None,
            srtt_us: None,
            count: None,
            lost: None,
            cause: None,
            raw: None,
        };
        if let Some(c) = e.conn() {
            f.token = c.token.map(|t| t.to_string());
            f.peer_token = c.peer_token.map(|t| t.to_string());
            f.netns = c.netns;
            f.pid = c.pid;
            f.comm.clone_from(&c.comm);
            f.protocol = c.protocol;
        }
        if let Some(t) = e.tuple() {
            f.family = Some(t.family);
            (f.saddr, f.sport, f.daddr, f.dport) =
                (Some(t.saddr), Some(t.sport), Some(t.daddr), Some(t.dport));
        }
        if let Some(sf) = e.subflow() {
            f.ifindex = sf.ifindex;
            f.ifname.clone_from(&sf.ifname);
            f.local_id = sf.local_id.map(i32::from);
            f.remote_id = Some(sf.remote_id);
            f.backup = Some(sf.backup);
            f.peer_backup = Some(sf.peer_backup);
            f.join = Some(sf.join);
        }
        match &e.data {
            Data::ConnCreated(d) => f.side = Some(d.side),
            Data::ConnFallback(d) => f.reason = Some(d.reason.clone()),
            Data::ConnClosed(d) => {
                f.duration_ns = d.duration_ns;
                f.subflows_total = Some(d.subflows_total);
            }
            Data::SubflowFailed(d) => {
                f.reason = Some(d.reason.clone());
                f.retrans = Some(d.retrans);
                f.error.clone_from(&d.cause.error);
                f.reset_reason.clone_from(&d.cause.reset_reason);
                f.reset_sent_reason.clone_from(&d.cause.reset_sent_reason);
            }
            Data::SubflowClosed(d) => {
                f.error.clone_from(&d.cause.error);
                f.reset_reason.clone_from(&d.cause.reset_reason);
                f.reset_sent_reason.clone_from(&d.cause.reset_sent_reason);
                f.reason = Some(d.reason.clone());
                f.bytes_sent = Some(d.bytes_sent);
                f.bytes_acked = Some(d.bytes_acked);
                f.bytes_received = Some(d.bytes_received);
                f.retrans = Some(d.retrans);
                f.srtt_us = Some(d.srtt_us);
            }
            Data::AddrAnnounced(a) | Data::AddrRemoved(a) => {
                f.family = a.family;
                f.remote_id = Some(a.remote_id);
                f.addr = a.addr;
                f.port = a.port;
            }
            Data::Lost(l) => {
                f.count = Some(l.count);
                f.lost = Some(l.clone());
            }
            Data::SocketUpgraded(u) => {
                f.pid = Some(u.pid);
                f.comm = Some(u.comm.clone());
                f.family = Some(u.family);
                f.reason.clone_from(&u.reason);
            }
            Data::SubflowStats(d) => {
                // The totals, as in subflow_closed; the deltas are in `raw`.
                f.bytes_sent = Some(d.bytes_sent);
                f.bytes_acked = Some(d.bytes_acked);
                f.bytes_received = Some(d.bytes_received);
                f.retrans = Some(d.retrans);
                f.srtt_us = Some(d.srtt_us);
            }
            Data::ConnExisting(d) => f.side = d.side,
            Data::ConnDiagnosis(d) => f.cause = Some(d.cause.clone()),
            Data::ConnEstablished(_) | Data::SubflowEstablished(_) => {}
        }
        f.raw = Some(e);
        f
    }
}

/// Fails the test (never skips) when not run as root.
pub fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "integration tests need root (they load eBPF programs and create network namespaces): \
         run them through `sudo cargo xtask test`"
    );
}

/// A tag that keeps namespace names unique across tests, runs and calls: the name, the process
/// id and a per-process counter (kept short: interface and namespace names are limited).
pub fn tag(name: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{name}-{}-{n}", std::process::id())
}

/// The seed's test bed (named after `tag(name)`) whose server announces its blue address to
/// its clients (ADD_ADDR, address id 5: a `signal` endpoint).
///
/// The server re-sends an ADD_ADDR the client has not echoed after 10 s instead of the
/// kernel's default 120 s (`net.mptcp.add_addr_timeout`): a 6.1 guest once saw no join to the
/// announced address within the tests' 60 s, and a lost announcement is repeated only after
/// that timeout. When the echo comes, nothing is re-sent, so the events stay as they were.
pub fn bed_announcing_blue(name: &str) -> testbed::TestBed {
    let bed = testbed::TestBed::create(&tag(name)).unwrap();
    testbed::sysctl(&bed.server, "net.mptcp.add_addr_timeout", "10").unwrap();
    testbed::add_endpoint(
        &bed.server,
        testbed::BLUE_SERVER_V4,
        Some("blue-server"),
        5,
        &["signal"],
    )
    .unwrap();
    bed
}

/// The `mptcp-trace` binary under test: `$MPTCP_TRACE_BIN`, else the workspace's build.
pub fn mptcp_trace_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MPTCP_TRACE_BIN") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/mptcp-trace");
    assert!(
        bin.exists(),
        "{} missing: build it with `cargo build -p mptcp-user` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// Output lines of a child process, collected on a background thread.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn collect(&self, r: impl Read + Send + 'static) -> thread::JoinHandle<()> {
        let lines = self.clone();
        thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                lines.0.lock().unwrap().push(line);
            }
        })
    }

    /// Collects the lines of `r` in the background.
    pub fn collect_from(&self, r: impl Read + Send + 'static) {
        let _ = self.collect(r);
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Kills the child when dropped (a failing test must not leave processes behind).
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// An `mptcp-trace` command running in the background, started with `--ready-file` and
/// waited for until every program is attached; its output collected line by line.
pub struct Background {
    child: ChildGuard,
    pub stdout: Lines,
    pub stderr: Lines,
    readers: Vec<thread::JoinHandle<()>>,
    ready: PathBuf,
}

impl Background {
    /// Starts `mptcp-trace <args> --ready-file F` and waits for F.
    pub fn start(args: &[&str]) -> Background {
        require_root();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let ready = std::env::temp_dir().join(format!(
            "mptcp-trace-ready-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&ready);
        let mut child = Command::new(mptcp_trace_bin())
            .args(args)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mptcp-trace");
        let (stdout, stderr) = (Lines::default(), Lines::default());
        let readers = vec![
            stdout.collect(child.stdout.take().unwrap()),
            stderr.collect(child.stderr.take().unwrap()),
        ];
        let mut t = Background {
            child: ChildGuard(child),
            stdout,
            stderr,
            readers,
            ready,
        };
        // Generous: the verifier is slow under qemu without KVM (the VM matrix).
        let started = Instant::now();
        let deadline = started + Duration::from_secs(180);
        while !t.ready.exists() {
            if let Ok(Some(status)) = t.child.0.try_wait() {
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "mptcp-trace {args:?} exited before it was ready ({status}):\n{}",
                    t.stderr.snapshot().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "mptcp-trace {args:?} not ready within 180 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
        // The start-up cost per kernel, in the guests' logs (the matrix's main cost).
        eprintln!(
            "mptcp-trace {} ready in {} ms",
            args.first().unwrap_or(&""),
            started.elapsed().as_millis()
        );
        t
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Stops it with `sig` and waits: its status; all of stdout and stderr are collected.
    pub fn stop_with(&mut self, sig: i32) -> std::process::ExitStatus {
        signal(&self.child.0, sig);
        let status = self.child.0.wait().expect("wait for mptcp-trace");
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let _ = std::fs::remove_file(&self.ready);
        status
    }
}

/// `mptcp-trace events --json` running in the background.
pub struct Tracer(Background);

/// What a tracer run produced.
pub struct Run {
    pub events: Vec<Event>,
    pub stderr: String,
    pub status: std::process::ExitStatus,
}

impl Run {
    /// Nothing was lost for want of room (ring buffer, maps, netlink): the one loss a kernel may
    /// impose is a program run it skipped (its recursion guard, seen rarely under qemu), and
    /// that is counted as such.
    pub fn assert_only_skipped_runs(&self) {
        assert!(
            self.stderr
                .contains("(ring buffer 0, map full 0, stale entries 0, skipped program runs ")
                && self.stderr.contains("netlink overruns 0)"),
            "{}",
            self.stderr
        );
        for l in self.events.iter().filter_map(|e| e.lost.as_ref()) {
            assert_eq!(l.count, l.recursion_misses.unwrap_or(0), "{}", self.stderr);
        }
    }
}

impl Tracer {
    /// Starts `mptcp-trace events --json <args>` and waits until every program is attached.
    pub fn start(args: &[&str]) -> Tracer {
        let mut all = vec!["events", "--json"];
        all.extend_from_slice(args);
        Tracer(Background::start(&all))
    }

    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Stops the tracer (SIGSTOP), as a loaded machine delays a reader: what happens meanwhile
    /// waits in its ring buffer and netlink sockets.
    pub fn freeze(&self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGSTOP) };
    }

    /// Lets a frozen tracer go on (SIGCONT).
    pub fn thaw(&self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGCONT) };
    }

    /// Its output lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.stdout.snapshot()
    }

    /// Events so far (parsed; a line that is not a valid event fails the test).
    pub fn events(&self) -> Vec<Event> {
        parse_events(&self.0.stdout.snapshot())
    }

    /// Waits until `pred` holds for the events so far.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&[Event]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events();
            if pred(&events) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; events so far:\n{}",
                self.0.stdout.snapshot().join("\n")
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the tracer with SIGINT (as Ctrl-C would) and returns what it printed.
    pub fn stop(mut self) -> Run {
        let status = self.0.stop_with(libc::SIGINT);
        Run {
            events: self.events(),
            stderr: self.0.stderr.snapshot().join("\n"),
            status,
        }
    }
}

/// Parses NDJSON lines; a line that does not validate against `mptcp-trace schema` or does
/// not parse as the typed event fails the test.
pub fn parse_events(lines: &[String]) -> Vec<Event> {
    static VALIDATOR: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let v = VALIDATOR.get_or_init(|| {
        jsonschema::options()
            .should_validate_formats(true)
            .build(&mptcp_user::event::json_schema())
            .expect("the schema compiles")
    });
    lines
        .iter()
        .map(|l| {
            let value: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line {l:?}: {e}"));
            if let Err(e) = v.validate(&value) {
                panic!("NDJSON line does not match the schema: {l}\n{e}");
            }
            serde_json::from_value::<mptcp_user::event::Event>(value)
                .unwrap_or_else(|e| panic!("bad NDJSON line {l:?}: {e}"))
                .into()
        })
        .collect()
}

/// One line of `ip mptcp monitor`: `[SF_ESTABLISHED] token=… saddr4=… sport=…`.
#[derive(Debug, Clone)]
pub struct PmEvent {
    pub kind: String,
    pub fields: HashMap<String, String>,
}

impl PmEvent {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    pub fn saddr(&self) -> Option<&str> {
        self.get("saddr4").or(self.get("saddr6"))
    }

    pub fn daddr(&self) -> Option<&str> {
        self.get("daddr4").or(self.get("daddr6"))
    }
}

pub fn parse_pm_line(line: &str) -> Option<PmEvent> {
    let line = line.trim();
    let close = line.find(']')?;
    let kind = line.get(1..close)?.trim().to_string();
    let fields = line[close + 1..]
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(PmEvent { kind, fields })
}

/// The kernel's MPTCP path-manager events in one namespace (`ip -n NS mptcp monitor`): the
/// independent oracle for our events.
pub struct Monitor {
    child: ChildGuard,
    lines: Lines,
    reader: Option<thread::JoinHandle<()>>,
}

impl Monitor {
    pub fn start(netns: &str) -> Monitor {
        let mut child = Command::new("ip")
            .args(["-n", netns, "mptcp", "monitor"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ip mptcp monitor");
        let lines = Lines::default();
        let reader = Some(lines.collect(child.stdout.take().unwrap()));
        // `ip mptcp monitor` has no ready signal: give it time to join the multicast group.
        thread::sleep(Duration::from_millis(300));
        Monitor {
            child: ChildGuard(child),
            lines,
            reader,
        }
    }

    pub fn events(&self) -> Vec<PmEvent> {
        self.lines
            .snapshot()
            .iter()
            .filter_map(|l| parse_pm_line(l))
            .collect()
    }

    pub fn stop(mut self) -> Vec<PmEvent> {
        signal(&self.child.0, libc::SIGTERM);
        let _ = self.child.0.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.events()
    }
}

/// The MPTcpExt counters of the named namespace (what `nstat -as MPTcpExt*` shows, without
/// the prefix): its /proc/net/netstat, read inside it (`ip netns exec NS cat`; the guests have
/// no nstat).
pub fn mptcp_ext(netns: &str) -> HashMap<String, u64> {
    proc_counters(netns, "/proc/net/netstat", "MPTcpExt:")
}

/// MPTCP sockets the kernel still holds in the named namespace, listeners aside (`ss -MHn`,
/// one line each): the oracle for a close not reported yet. A connection can outlive its
/// sockets' close() by seconds or more (unacknowledged DATA_FIN, `net.mptcp.close_timeout`);
/// the tracer reports its close only when the kernel has done it.
pub fn mptcp_sockets_open(netns: &str) -> Vec<String> {
    run("ip", &["netns", "exec", netns, "ss", "-MHn"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// One group of a /proc/net counters file (`netstat`, `snmp`: a names line and a values line
/// that start with `prefix`) of the named namespace, read inside it.
pub fn proc_counters(netns: &str, file: &str, prefix: &str) -> HashMap<String, u64> {
    let text = run("ip", &["netns", "exec", netns, "cat", file]);
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return HashMap::new();
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
        .collect()
}

/// The pid a shell wrote with `echo $$ > FILE` before `exec`ing the command under test (so it
/// is the command's own pid); the file is removed.
pub fn take_pid_file(path: &std::path::Path) -> u32 {
    let pid = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap();
    let _ = std::fs::remove_file(path);
    pid
}

/// The running kernel's (major, minor), from /proc/sys/kernel/osrelease.
pub fn kernel_version() -> (u32, u32) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut it = r
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap(), it.next().unwrap())
}

/// Runs a plain command and returns stdout; panics with stderr on failure.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A helper binary of this crate (`tests/src/bin/NAME.rs`): `$NAME_BIN` (upper case, `-` as
/// `_`, as the VM runner exports them), else cargo's build of it (test executables live in
/// `target/debug/deps`, binaries one level up).
pub fn helper_bin(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(var) {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/debug/deps")
        .join(name);
    assert!(
        bin.exists(),
        "{} missing: cargo builds it with the tests",
        bin.display()
    );
    bin
}

/// The `mptcp-peer` helper binary.
pub fn mptcp_peer_bin() -> PathBuf {
    helper_bin("mptcp-peer")
}

/// Ids of every loaded eBPF program.
pub fn loaded_program_ids() -> std::collections::HashSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

/// The `prog_id:` lines of fdinfo text (program and link descriptors carry one).
pub fn prog_ids_in_fdinfo(info: &str) -> Vec<u32> {
    info.lines()
        .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
        .collect()
}

/// Ids of the eBPF programs process `pid` holds through its descriptors (programs and links),
/// from /proc/PID/fdinfo: what that process, and no other, keeps loaded. Empty when the
/// process is gone or not readable.
pub fn prog_ids_held_by(pid: u32) -> std::collections::HashSet<u32> {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .flat_map(|info| prog_ids_in_fdinfo(&info))
        .collect()
}

/// Ids of the eBPF programs some live process holds through a descriptor.
pub fn prog_ids_held_by_any_process() -> std::collections::HashSet<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .flat_map(prog_ids_held_by)
        .collect()
}

/// The (at most 15-character) name of loaded program `id`.
pub fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
}

/// Events the tracer reported lost (the sum of its `lost` events): a counted loss, which a test
/// at high rates must tolerate — each missing event at most once — but never a silent one.
pub fn lost_count(events: &[Event]) -> usize {
    events
        .iter()
        .filter_map(|e| e.lost.as_ref())
        .map(|l| l.count as usize)
        .sum()
}

/// Runs a fix command line as a shell would: `A && B` runs B after A succeeded. (Not through
/// `sh -c`: the VM guests' busybox shell would run its own `ip` applet, not iproute2's.)
pub fn run_fix(cmd: &str) {
    for part in cmd.split(" && ") {
        let words: Vec<&str> = part.split_whitespace().collect();
        assert!(
            words
                .iter()
                .all(|w| !w.contains(['\'', '"', '$', '|', ';'])),
            "not a plain command line: {part}"
        );
        let out = Command::new(words[0]).args(&words[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "fix `{part}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The events of one network namespace, in output order.
pub fn events_in(events: &[Event], netns: u32) -> Vec<Event> {
    events
        .iter()
        .filter(|e| e.netns == Some(netns))
        .cloned()
        .collect()
}

/// One end of a healthy two-subflow MPTCP connection, from its creation to its close.
pub const TWO_SUBFLOWS: [Kind; 7] = [
    Kind::ConnCreated,
    Kind::ConnEstablished,
    Kind::SubflowEstablished,
    Kind::SubflowEstablished,
    Kind::SubflowClosed,
    Kind::SubflowClosed,
    Kind::ConnClosed,
];

pub fn kinds(events: &[Event]) -> Vec<Kind> {
    events.iter().map(|e| e.event).collect()
}

/// A `wait_for` predicate: at least `n` conn_closed in the namespace — or, once no event has
/// come for 2 s, fewer with a program run the kernel skipped (counted in `lost`; it may have
/// been a close) standing for each missing one. Linux 7.2's guest skipped dozens of runs in a
/// burst of joins; the test's own checks then decide whether the loss is accounted for,
/// instead of a wait that times out.
pub fn closed_in(netns: u32, n: usize) -> impl Fn(&[Event]) -> bool {
    move |ev: &[Event]| {
        let closed = ev
            .iter()
            .filter(|e| e.netns == Some(netns) && e.event == Kind::ConnClosed)
            .count();
        if closed >= n {
            return true;
        }
        let skipped: u64 = ev
            .iter()
            .filter_map(|e| e.lost.as_ref()?.recursion_misses)
            .sum();
        // Event stamps are CLOCK_MONOTONIC (bpf_ktime_get_ns), as is this.
        let now = {
            let mut t = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime with a valid pointer.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
            t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
        };
        let quiet = ev
            .iter()
            .filter(|e| e.lost.is_none())
            .map(|e| e.ts_ns)
            .max()
            .is_none_or(|last| now.saturating_sub(last) > 2_000_000_000);
        quiet && closed + skipped as usize >= n
    }
}

/// A server for `n` connections on `addr` in the test bed's server namespace; returns its
/// thread (what each connection received).
pub fn server(
    bed: &testbed::TestBed,
    addr: std::net::SocketAddr,
    proto: peer::Proto,
    n: usize,
) -> thread::JoinHandle<std::io::Result<Vec<u64>>> {
    let listener = testbed::in_netns(&bed.server, move || peer::listen(addr, proto))
        .unwrap()
        .expect("listen in server netns");
    thread::spawn(move || peer::serve(&listener, n))
}

/// SO_LINGER {on, 0}: closing the socket then aborts the connection (MP_FASTCLOSE and a RST
/// on each subflow) instead of an orderly close.
pub fn abort_on_close(s: &impl std::os::fd::AsRawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and option buffer.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(r, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// A detached tmux session on a server of its own (socket and session both named `name`),
/// 200x50, killed with its server on drop: how the tests drive the full-screen views.
pub struct Tmux(String);

impl Tmux {
    pub fn start(name: &str, command: &str) -> Tmux {
        let out = Command::new("tmux")
            .args(["-L", name, "new-session", "-d", "-s", name])
            .args(["-x", "200", "-y", "50", command])
            .stdin(Stdio::null())
            .output()
            .expect("tmux");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmux(name.to_string())
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.0])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen as text.
    pub fn capture(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &self.0])
    }

    /// The whole pane, scrolled-off history included, wrapped lines joined (`capture-pane
    /// -J -S -`): what a command printed, line by line.
    pub fn history(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-", "-t", &self.0])
    }

    /// A tmux format of the pane (`#{alternate_on}`, `#{cursor_flag}`, …).
    pub fn display(&self, format: &str) -> String {
        self.tmux(&["display-message", "-p", "-t", &self.0, format])
            .trim()
            .to_string()
    }

    pub fn keys(&self, keys: &str) {
        self.tmux(&["send-keys", "-t", &self.0, keys]);
    }

    /// Captures until `pred` holds or `timeout` passes; returns the last capture.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> (bool, String) {
        let start = std::time::Instant::now();
        loop {
            let screen = self.capture();
            if pred(&screen) {
                return (true, screen);
            }
            if start.elapsed() > timeout {
                return (false, screen);
            }
            thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
        // tmux leaves the server's socket file behind: remove it too (`-L NAME` is
        // `$TMUX_TMPDIR/tmux-UID/NAME`, /tmp by default).
        let dir = std::env::var_os("TMUX_TMPDIR").unwrap_or_else(|| "/tmp".into());
        // SAFETY: no preconditions.
        let uid = unsafe { libc::geteuid() };
        let _ = std::fs::remove_file(PathBuf::from(dir).join(format!("tmux-{uid}")).join(&self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_mptcp_monitor_lines() {
        let e = parse_pm_line(
            "[SF_ESTABLISHED] token=4e9baa70 remid=0 locid=1 saddr4=192.168.0.2 daddr4=10.0.0.1 \
             sport=57995 dport=4401 backup=0 ifindex=3",
        )
        .unwrap();
        assert_eq!(e.kind, "SF_ESTABLISHED");
        assert_eq!(e.get("token"), Some("4e9baa70"));
        assert_eq!(e.saddr(), Some("192.168.0.2"));
        assert_eq!(e.get("sport"), Some("57995"));
        let closed = parse_pm_line("[        CLOSED] token=db2d95f2").unwrap();
        assert_eq!(closed.kind, "CLOSED");
        assert!(parse_pm_line("garbage").is_none());
    }
}
